//! `reconix check SPEC`: validates a spec file offline.

use std::path::Path;
use std::process::ExitCode;

/// Prints every error of the spec at `path` to stderr; exit code 0 when valid, 1 otherwise.
pub(crate) fn run(path: &Path) -> ExitCode {
    match reconix_spec::load(path) {
        Ok(spec) => {
            let repos = spec.repos().count();
            println!(
                "{}: ok ({} forge(s), {repos} repo(s))",
                path.display(),
                spec.forges.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::FAILURE
        }
    }
}
