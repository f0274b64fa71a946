//! `reconix schema`: prints the spec's JSON Schema (the source of docs/spec.schema.json).

use std::process::ExitCode;

/// Prints the schema as pretty JSON on stdout.
pub(crate) fn run() -> anyhow::Result<ExitCode> {
    println!(
        "{}",
        serde_json::to_string_pretty(&reconix_spec::json_schema())?
    );
    Ok(ExitCode::SUCCESS)
}
