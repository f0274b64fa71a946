//! Golden tests: the files generated from the spec's JSON Schema are checked in as generated,
//! byte for byte: `docs/spec.schema.json`, `nix/options.nix` (the NixOS module's options) and
//! `docs/configuration.md` (the configuration reference).
//!
//! `RECONIX_BLESS=1 cargo test -p reconix-spec --test schema` rewrites them.

#![allow(
    clippy::unwrap_used,
    reason = "test helper: allow-unwrap-in-tests covers only #[test] fns"
)]

use std::path::Path;

/// Asserts that `rel` (from the repository root) holds `generated`, byte for byte; with
/// `RECONIX_BLESS=1` it writes it instead.
fn golden(rel: &str, generated: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    if std::env::var_os("RECONIX_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, generated).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "{rel} is stale: run `RECONIX_BLESS=1 cargo test -p reconix-spec --test schema`"
    );
}

#[test]
fn checked_in_schema_should_match_the_generated_one() {
    let schema = serde_json::to_string_pretty(&reconix_spec::json_schema()).unwrap() + "\n";
    golden("docs/spec.schema.json", &schema);
}

#[test]
fn checked_in_nixos_options_should_match_the_generated_ones() {
    golden(
        "nix/options.nix",
        &reconix_spec::nixos_options(&reconix_spec::json_schema()),
    );
}

#[test]
fn checked_in_configuration_reference_should_match_the_generated_one() {
    golden(
        "docs/configuration.md",
        &reconix_spec::markdown_reference(&reconix_spec::json_schema()),
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
