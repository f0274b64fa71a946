//! Golden test: `docs/spec.schema.json` is the generated JSON Schema, byte for byte.
//!
//! `RECONIX_BLESS=1 cargo test -p reconix-spec --test schema` rewrites the file.

use std::path::Path;

#[test]
fn checked_in_schema_should_match_the_generated_one() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/spec.schema.json");
    let generated = serde_json::to_string_pretty(&reconix_spec::json_schema()).unwrap() + "\n";
    if std::env::var_os("RECONIX_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "docs/spec.schema.json is stale: run `RECONIX_BLESS=1 cargo test -p reconix-spec --test schema`"
    );
}

#[test]
fn schema_should_describe_fields_and_defaults_from_the_types() {
    let schema = reconix_spec::json_schema();
    let listen = &schema["properties"]["listen"];
    assert_eq!(listen["default"], "127.0.0.1:8080");
    assert!(
        listen["description"]
            .as_str()
            .unwrap()
            .starts_with("Address")
    );
    assert_eq!(schema["additionalProperties"], false);
    let repo = &schema["$defs"]["Repo"]["properties"];
    assert_eq!(repo["timeout"]["default"], "3h");
    assert_eq!(
        repo["attributes"]["default"],
        serde_json::json!(["packages", "checks", "devShells", "nixosConfigurations"])
    );
}
