//! The configuration reference (`docs/configuration.md`), generated from the JSON Schema so that
//! it always says what the code accepts.

use std::fmt::Write as _;

use serde_json::{Map, Value};

/// Returns the Markdown reference of every key of the spec described by `schema`.
pub fn markdown_reference(schema: &Value) -> String {
    let empty = Map::new();
    let defs = schema
        .get("$defs")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let mut out = String::from(
        "# Configuration reference\n\n\
         <!-- Generated from docs/spec.schema.json by `reconix schema --markdown`; do not edit.\n     \
         `make test` fails when it is stale (spec/tests/schema.rs). -->\n\n\
         The spec is one YAML file (`reconix serve --spec FILE`, or `services.reconix.settings` on\n\
         NixOS). Keys are kebab-case; unknown keys are errors; durations are written like `30s`,\n\
         `12h` or `30 days`, sizes like `50 GiB`. Files named `*-file` hold secrets and are read\n\
         when needed, never logged. `reconix check FILE` reports every error with its line and\n\
         column. Annotated examples: `examples/`.\n\n## Top level\n\n",
    );
    table(&mut out, schema, defs);
    for (name, def) in defs {
        if def.get("properties").is_some() {
            let _ = write!(out, "\n## {name}\n\n");
            if let Some(d) = def.get("description").and_then(Value::as_str) {
                let _ = write!(out, "{}\n\n", one_line(d));
            }
            table(&mut out, def, defs);
        }
    }
    out
}

/// Appends the table of the properties of `def`.
fn table(out: &mut String, def: &Value, defs: &Map<String, Value>) {
    let required: Vec<&str> = def
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    out.push_str("| key | type | default | description |\n|---|---|---|---|\n");
    let Some(props) = def.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (key, prop) in props {
        let default = match prop.get("default") {
            Some(v) => format!("`{v}`"),
            None if required.contains(&key.as_str()) => "required".to_owned(),
            None => "unset".to_owned(),
        };
        let description = prop
            .get("description")
            .and_then(Value::as_str)
            .map(one_line)
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "| `{key}` | {} | {} | {} |",
            type_name(prop, defs),
            cell(&default),
            cell(&description)
        );
    }
}

/// Returns a readable type, linking object definitions to their section.
fn type_name(prop: &Value, defs: &Map<String, Value>) -> String {
    if let Some(r) = prop.get("$ref").and_then(Value::as_str) {
        let name = r.trim_start_matches("#/$defs/");
        return match defs.get(name) {
            Some(def) if def.get("properties").is_some() => {
                format!("[{name}](#{})", name.to_lowercase())
            }
            Some(_) => match name {
                "SecretFile" => "path of a secret file".to_owned(),
                "Duration" => "duration".to_owned(),
                "ByteSize" => "size".to_owned(),
                "RepoKey" => "`forge/repo`".to_owned(),
                "System" => "Nix system".to_owned(),
                _ => type_name(&defs[name], defs),
            },
            None => name.to_owned(),
        };
    }
    if let Some(alts) = prop.get("anyOf").and_then(Value::as_array) {
        let names: Vec<String> = alts
            .iter()
            .filter(|a| a.get("type").and_then(Value::as_str) != Some("null"))
            .map(|a| type_name(a, defs))
            .collect();
        return names.join(" or ");
    }
    if let Some(alts) = prop.get("oneOf").and_then(Value::as_array) {
        let consts: Vec<String> = alts
            .iter()
            .filter_map(|a| a.get("const").and_then(Value::as_str))
            .map(|c| format!("`{c}`"))
            .collect();
        return format!("one of {}", consts.join(", "));
    }
    match prop.get("type") {
        Some(Value::String(t)) if t == "array" => format!(
            "list of {}",
            prop.get("items")
                .map_or_else(|| "values".to_owned(), |i| type_name(i, defs))
        ),
        Some(Value::String(t)) if t == "object" => match prop.get("additionalProperties") {
            Some(v @ Value::Object(_)) => format!("map of name to {}", type_name(v, defs)),
            _ => "object".to_owned(),
        },
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "value".to_owned(),
    }
}

/// Joins the lines of a doc comment into one paragraph.
fn one_line(text: &str) -> String {
    text.split('\n')
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Escapes a table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_reference_should_document_every_section_with_types_and_defaults() {
        let text = markdown_reference(&crate::json_schema());
        for needle in [
            "## Top level",
            "| `state-dir` | string | `\"/var/lib/reconix\"` |",
            "| `forges` | map of name to [Forge](#forge) |",
            "## Cache",
            "| `push-url` | string | required |",
            "| `signing-key-file` | path of a secret file | required |",
            "| `kind` | one of `github`, `gitlab`, `gitea`, `local` | required |",
            "## Retention",
        ] {
            assert!(text.contains(needle), "no {needle:?} in\n{text}");
        }
    }
}
