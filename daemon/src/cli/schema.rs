//! `reconix schema`: prints the spec's JSON Schema (the source of docs/spec.schema.json), or
//! with `--nixos-options` the NixOS module options generated from it (nix/options.nix), or with
//! `--markdown` the configuration reference (docs/configuration.md).

use std::process::ExitCode;

/// Prints the schema as pretty JSON, or the generated Nix options, on stdout.
pub(crate) fn run(nixos_options: bool, markdown: bool) -> anyhow::Result<ExitCode> {
    let schema = reconix_spec::json_schema();
    if nixos_options {
        print!("{}", reconix_spec::nixos_options(&schema));
    } else if markdown {
        print!("{}", reconix_spec::markdown_reference(&schema));
    } else {
        println!("{}", serde_json::to_string_pretty(&schema)?);
    }
    Ok(ExitCode::SUCCESS)
}
