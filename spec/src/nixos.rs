//! NixOS module options generated from the spec's JSON Schema (`nix/options.nix`).
//!
//! The schema is the single source of the spec's shape; this turns it into Nix source: a
//! function of nixpkgs' `lib` returning `options` (one `mkOption` per spec key, typed with
//! `lib.types`) and `secretKeys` (the keys whose values are secret files, which the module passes
//! to the service through systemd's `LoadCredential`).
//!
//! Every option defaults to `null`, meaning "not set: reconix's own default applies" (the
//! default is quoted in the description), except the keys the schema requires. The rendering
//! (`nix/render.nix`) drops nulls, so a rendered spec holds exactly what the user set.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde_json::Value;

use crate::names::nix_string;

/// The header of the generated file.
const HEADER: &str = "# Generated from docs/spec.schema.json by `reconix schema --nixos-options`; do not edit.\n\
# `make test` fails when it is stale (spec/tests/schema.rs); RECONIX_BLESS=1 rewrites it.\n";

/// Returns the text of `nix/options.nix` for `schema` (as [`crate::json_schema`] returns it).
pub fn nixos_options(schema: &Value) -> String {
    let empty = serde_json::Map::new();
    let generator = Gen {
        defs: schema
            .get("$defs")
            .and_then(Value::as_object)
            .unwrap_or(&empty),
    };
    let defs = Some(generator.defs);
    let mut out = String::from(HEADER);
    out.push_str("{ lib }:\nlet\n  inherit (lib) mkOption types;\n");
    let mut secret_keys = BTreeSet::new();
    collect_secret_keys(schema, &mut secret_keys);
    if let Some(defs) = defs {
        for (name, def) in defs {
            collect_secret_keys(def, &mut secret_keys);
            if is_object(def) {
                let _ = write!(
                    out,
                    "  {name} = types.submodule {{\n    options = {};\n  }};\n",
                    generator.options(def, 2)
                );
            }
        }
    }
    out.push_str("in\n{\n");
    out.push_str("  # Keys whose values are files holding secrets.\n  secretKeys = [");
    for key in &secret_keys {
        let _ = write!(out, " {}", nix_string(key));
    }
    out.push_str(" ];\n");
    let _ = writeln!(out, "  options = {};", generator.options(schema, 1));
    out.push_str("}\n");
    out
}

/// Returns whether `def` is an object with named properties (a submodule).
fn is_object(def: &Value) -> bool {
    def.get("properties").is_some_and(Value::is_object)
}

/// Adds the names of the properties of `def` whose type is a `SecretFile` (possibly nullable).
fn collect_secret_keys(def: &Value, keys: &mut BTreeSet<String>) {
    let Some(props) = def.get("properties").and_then(Value::as_object) else {
        return;
    };
    for (name, prop) in props {
        let refs_secret =
            |v: &Value| v.get("$ref").and_then(Value::as_str) == Some("#/$defs/SecretFile");
        let nullable_secret = prop
            .get("anyOf")
            .and_then(Value::as_array)
            .is_some_and(|alts| alts.iter().any(refs_secret));
        if refs_secret(prop) || nullable_secret {
            keys.insert(name.clone());
        }
    }
}

/// The generator, with the schema's `$defs` at hand to resolve references.
struct Gen<'a> {
    defs: &'a serde_json::Map<String, Value>,
}

impl Gen<'_> {
    /// Returns the `{ name = mkOption {…}; … }` set of the properties of `def`, indented `depth`
    /// levels (two spaces each).
    fn options(&self, def: &Value, depth: usize) -> String {
        let pad = "  ".repeat(depth + 1);
        let end = "  ".repeat(depth);
        let required: BTreeSet<&str> = def
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let Some(props) = def.get("properties").and_then(Value::as_object) else {
            return "{ }".to_owned();
        };
        let mut out = String::from("{\n");
        for (name, prop) in props {
            let is_required = required.contains(name.as_str());
            let ty = self.nix_type(prop);
            let ty = if is_required {
                ty
            } else {
                format!("types.nullOr ({ty})")
            };
            let mut description = prop
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if let Some(default) = prop.get("default") {
                let _ = write!(description, "\n\nreconix's default: `{default}`.");
            }
            let _ = write!(
                out,
                "{pad}{} = mkOption {{\n{pad}  type = {ty};\n",
                nix_attr_name(name)
            );
            if !is_required {
                let _ = writeln!(out, "{pad}  default = null;");
            }
            let _ = write!(
                out,
                "{pad}  description = {};\n{pad}}};\n",
                nix_string(description.trim())
            );
        }
        out.push_str(&end);
        out.push('}');
        out
    }

    /// Returns the `lib.types` expression for a property schema.
    fn nix_type(&self, prop: &Value) -> String {
        if let Some(r) = prop.get("$ref").and_then(Value::as_str) {
            return self.def_type(r);
        }
        if let Some(alts) = prop.get("anyOf").and_then(Value::as_array) {
            let non_null: Vec<&Value> = alts
                .iter()
                .filter(|a| a.get("type").and_then(Value::as_str) != Some("null"))
                .collect();
            return match non_null.as_slice() {
                [one] => self.nix_type(one),
                _ => "types.anything".to_owned(),
            };
        }
        if let Some(consts) = enum_values(prop) {
            return format!("types.enum [ {} ]", consts.join(" "));
        }
        let kind = match prop.get("type") {
            Some(Value::String(t)) => t.as_str(),
            // `["string", "null"]`: nullability is added by the caller.
            Some(Value::Array(ts)) => ts
                .iter()
                .filter_map(Value::as_str)
                .find(|t| *t != "null")
                .unwrap_or("null"),
            _ => "",
        };
        match kind {
            "string" => "types.str".to_owned(),
            "boolean" => "types.bool".to_owned(),
            "integer" => {
                if prop
                    .get("minimum")
                    .and_then(Value::as_f64)
                    .is_some_and(|m| m >= 0.0)
                {
                    "types.ints.unsigned".to_owned()
                } else {
                    "types.int".to_owned()
                }
            }
            "number" => "types.number".to_owned(),
            "array" => format!(
                "types.listOf ({})",
                prop.get("items")
                    .map_or_else(|| "types.anything".to_owned(), |i| self.nix_type(i))
            ),
            "object" => match prop.get("additionalProperties") {
                Some(inner @ Value::Object(_)) => {
                    format!("types.attrsOf ({})", self.nix_type(inner))
                }
                _ if is_object(prop) => {
                    format!("types.submodule {{ options = {}; }}", self.options(prop, 0))
                }
                _ => "types.attrsOf types.anything".to_owned(),
            },
            _ => "types.anything".to_owned(),
        }
    }

    /// Returns the type of `#/$defs/<name>`: the submodule bound to that name in the
    /// generated `let` for objects, otherwise the definition's own type.
    fn def_type(&self, reference: &str) -> String {
        let name = reference.trim_start_matches("#/$defs/");
        match self.defs.get(name) {
            Some(def) if is_object(def) => name.to_owned(),
            Some(def) => self.nix_type(def),
            None => "types.anything".to_owned(),
        }
    }
}

/// Returns the quoted constants of an enum-like schema (`oneOf`/`enum` of string constants).
fn enum_values(prop: &Value) -> Option<Vec<String>> {
    if let Some(values) = prop.get("enum").and_then(Value::as_array) {
        return values.iter().map(|v| v.as_str().map(nix_string)).collect();
    }
    let alts = prop.get("oneOf").and_then(Value::as_array)?;
    alts.iter()
        .map(|a| a.get("const").and_then(Value::as_str).map(nix_string))
        .collect()
}

/// Returns `name` as a Nix attribute name, quoted unless it is a plain identifier.
fn nix_attr_name(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '\''));
    if plain {
        name.to_owned()
    } else {
        nix_string(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nix_string_should_escape_quotes_backslashes_newlines_and_interpolation() {
        assert_eq!(
            nix_string("a \"b\" \\ ${x} $y\nz"),
            "\"a \\\"b\\\" \\\\ \\${x} $y\\nz\""
        );
    }

    #[test]
    fn nix_attr_name_should_quote_only_what_needs_it() {
        assert_eq!(nix_attr_name("state-dir"), "state-dir");
        assert_eq!(nix_attr_name("x86_64-linux"), "x86_64-linux");
        assert_eq!(nix_attr_name("1st"), "\"1st\"");
        assert_eq!(nix_attr_name("a.b"), "\"a.b\"");
    }

    #[test]
    fn generate_should_type_every_key_and_list_the_secret_keys() {
        let text = nixos_options(&crate::json_schema());
        for needle in [
            "  state-dir = mkOption",
            "secretKeys = [ \"api-token-file\"",
            "\"signing-key-file\"",
            "\"s3-credentials-file\"",
            "    forges = mkOption {\n      type = types.nullOr (types.attrsOf (Forge));",
            "    caches = mkOption {\n      type = types.nullOr (types.listOf (Cache));",
            "types.enum [ \"github\" \"gitlab\" \"gitea\"",
            "      push-url = mkOption {\n        type = types.str;\n        description",
        ] {
            assert!(text.contains(needle), "no {needle:?} in\n{text}");
        }
    }
}
