//! Golden test: `docs/configuration.md` is the reference generated from the schema.
//!
//! `RECONIX_BLESS=1 cargo test -p reconix-spec --test reference` rewrites the file.

use std::path::Path;

#[test]
fn checked_in_configuration_reference_should_match_the_generated_one() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
    let generated = reconix_spec::markdown_reference(&reconix_spec::json_schema());
    if std::env::var_os("RECONIX_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "docs/configuration.md is stale: run `RECONIX_BLESS=1 cargo test -p reconix-spec --test reference`"
    );
}
