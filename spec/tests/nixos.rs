//! Golden test: `nix/options.nix` is the NixOS options generated from the schema, byte for byte.
//!
//! `RECONIX_BLESS=1 cargo test -p reconix-spec --test nixos` rewrites the file.

use std::path::Path;

#[test]
fn checked_in_nixos_options_should_match_the_generated_ones() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../nix/options.nix");
    let generated = reconix_spec::nixos_options(&reconix_spec::json_schema());
    if std::env::var_os("RECONIX_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "nix/options.nix is stale: run `RECONIX_BLESS=1 cargo test -p reconix-spec --test nixos`"
    );
}
