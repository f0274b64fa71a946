//! Validation of request bodies and JSON answers against the forges' schema subsets in
//! `schemas/` (see `schemas/PROVENANCE.md`), compiled once per kind with `boon`.

use std::collections::HashMap;
use std::sync::OnceLock;

use boon::{Compiler, Draft, SchemaIndex, Schemas};
use reconix_spec::ForgeKind;
use serde_json::{Map, Value, json};

const GITHUB: &str = include_str!("../schemas/github.json");
const GITLAB: &str = include_str!("../schemas/gitlab.json");
const GITEA: &str = include_str!("../schemas/gitea.json");

/// The compiled schemas of one forge.
pub(crate) struct Compiled {
    schemas: Schemas,
    /// `"<METHOD> <path template> request"` or `"… <status>"` → compiled schema.
    slots: HashMap<String, SchemaIndex>,
    /// The operations and the slots they have, to tell "no schema" from "unknown operation".
    operations: HashMap<String, Vec<String>>,
    /// GitHub's `components.examples`, the templates of its answers.
    examples: Map<String, Value>,
    /// The definitions as extracted, to reshape payloads to a forge's field names.
    definitions: Map<String, Value>,
    /// Why compilation failed, if it did (reported as a violation on every use).
    error: Option<String>,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("slots", &self.slots.len())
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

/// Returns the compiled schemas of `kind` (GitHub's for `local`, which never serves).
pub(crate) fn compiled(kind: ForgeKind) -> &'static Compiled {
    static GH: OnceLock<Compiled> = OnceLock::new();
    static GL: OnceLock<Compiled> = OnceLock::new();
    static GT: OnceLock<Compiled> = OnceLock::new();
    match kind {
        ForgeKind::Gitlab => GL.get_or_init(|| compile("gitlab", GITLAB)),
        ForgeKind::Gitea => GT.get_or_init(|| compile("gitea", GITEA)),
        ForgeKind::Github | ForgeKind::Local => GH.get_or_init(|| compile("github", GITHUB)),
    }
}

fn compile(name: &str, text: &str) -> Compiled {
    let mut out = Compiled {
        schemas: Schemas::new(),
        slots: HashMap::new(),
        operations: HashMap::new(),
        examples: Map::new(),
        definitions: Map::new(),
        error: None,
    };
    if let Err(err) = compile_into(name, text, &mut out) {
        out.error = Some(format!("the {name} schemas do not compile: {err}"));
    }
    out
}

fn compile_into(name: &str, text: &str, out: &mut Compiled) -> Result<(), String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if let Some(Value::Object(examples)) = doc.get("examples") {
        out.examples = examples.clone();
    }
    if let Some(Value::Object(definitions)) = doc.get("definitions") {
        out.definitions = definitions.clone();
    }
    // Re-shape into one document whose schemas sit at `#/slots/<n>`, so that pointers need no
    // escaping, while every `$ref` (`#/definitions/X`) still resolves in the same document.
    let mut slots = Vec::new();
    let mut keys = Vec::new();
    let operations = doc
        .get("operations")
        .and_then(Value::as_object)
        .ok_or("no operations")?;
    for (op, entry) in operations {
        let mut names = Vec::new();
        if let Some(schema) = entry.get("request").filter(|s| !s.is_null()) {
            names.push("request".to_owned());
            keys.push(format!("{op} request"));
            slots.push(schema.clone());
        }
        if let Some(responses) = entry.get("responses").and_then(Value::as_object) {
            for (status, schema) in responses {
                if !schema.is_null() {
                    names.push(status.clone());
                    keys.push(format!("{op} {status}"));
                    slots.push(schema.clone());
                }
            }
        }
        out.operations.insert(op.clone(), names);
    }
    let bundle = json!({
        "definitions": doc.get("definitions").cloned().unwrap_or(Value::Null),
        "slots": slots,
    });
    let url = format!("urn:reconix-fakeforge:{name}");
    let mut compiler = Compiler::new();
    compiler.set_default_draft(Draft::V7);
    compiler
        .add_resource(&url, bundle)
        .map_err(|e| e.to_string())?;
    for (n, key) in keys.into_iter().enumerate() {
        let index = compiler
            .compile(&format!("{url}#/slots/{n}"), &mut out.schemas)
            .map_err(|e| format!("{key}: {e}"))?;
        out.slots.insert(key, index);
    }
    Ok(())
}

impl Compiled {
    /// Returns true when the operation has a request-body schema.
    pub(crate) fn has_request(&self, op: &str) -> bool {
        self.slots.contains_key(&format!("{op} request"))
    }

    /// Validates `value` against the operation's `slot` (`request` or a status); no schema for
    /// the slot means nothing to check. Returns every error found, one per line.
    pub(crate) fn validate(&self, op: &str, slot: &str, value: &Value) -> Result<(), String> {
        if let Some(err) = &self.error {
            return Err(err.clone());
        }
        if !self.operations.contains_key(op) {
            return Err(format!("{op}: not an operation of the schema subset"));
        }
        let Some(index) = self.slots.get(&format!("{op} {slot}")) else {
            return Ok(());
        };
        self.schemas
            .validate(value, *index)
            .map_err(|err| format!("{err}").replace('\n', " "))
    }

    /// Reshapes `value` to a definition: keeps only the properties the definition has, and
    /// reshapes nested objects (and arrays of them) whose property schema is a `$ref` to
    /// another definition. Values that are not objects are kept as they are.
    pub(crate) fn reshape(&self, value: &Value, definition: &str) -> Value {
        let Some(properties) = self
            .definitions
            .get(definition)
            .and_then(|d| d.get("properties"))
            .and_then(Value::as_object)
        else {
            return value.clone();
        };
        let Value::Object(map) = value else {
            return value.clone();
        };
        let target = |schema: &Value| {
            schema
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix("#/definitions/"))
                .map(str::to_owned)
        };
        map.iter()
            .filter_map(|(key, item)| {
                let schema = properties.get(key)?;
                let reshaped = match (target(schema), schema.get("items").and_then(target), item) {
                    (Some(def), _, _) => self.reshape(item, &def),
                    (None, Some(def), Value::Array(items)) => {
                        Value::Array(items.iter().map(|i| self.reshape(i, &def)).collect())
                    }
                    _ => item.clone(),
                };
                Some((key.clone(), reshaped))
            })
            .collect()
    }

    /// Returns a copy of one of GitHub's `components.examples`.
    pub(crate) fn example(&self, name: &str) -> Value {
        self.examples.get(name).cloned().unwrap_or(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_should_compile() {
        for kind in [ForgeKind::Github, ForgeKind::Gitlab, ForgeKind::Gitea] {
            let compiled = compiled(kind);
            assert_eq!(compiled.error, None, "{kind}");
            assert!(!compiled.slots.is_empty(), "{kind}");
        }
    }

    #[test]
    fn validate_should_reject_answers_that_break_the_schema() {
        let github = compiled(ForgeKind::Github);
        let op = "POST /repos/{owner}/{repo}/hooks";
        assert!(github.validate(op, "201", &json!({"id": "x"})).is_err());
        assert!(github.validate(op, "201", &github.example("hook")).is_ok());
        let gitea = compiled(ForgeKind::Gitea);
        let op = "GET /repos/{owner}/{repo}/branches";
        assert!(gitea.validate(op, "200", &json!([{"name": 5}])).is_err());
        assert!(
            gitea
                .validate(op, "200", &json!([{"name": "main"}]))
                .is_ok()
        );
        let gitlab = compiled(ForgeKind::Gitlab);
        let op = "POST /projects/{id}/statuses/{sha}";
        assert!(
            gitlab
                .validate(op, "request", &json!({"state": "error"}))
                .is_err()
        );
        assert!(
            gitlab
                .validate(op, "request", &json!({"state": "failed"}))
                .is_ok()
        );
        assert!(github.validate("GET /nowhere", "200", &json!({})).is_err());
    }
}
