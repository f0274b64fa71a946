//! Reading a spec: YAML to [`Spec`], then semantic validation, with every problem located at
//! its line and column in the file.

use std::path::Path;

use crate::Spec;
use crate::error::{Result, SpecError, SpecErrors};
use crate::locate::KeyIndex;

/// Keys that people write when they mean the `-file` variant: the spec never holds secrets.
const SECRET_KEYS: [(&str, &str); 4] = [
    ("token", "token-file"),
    ("webhook-secret", "webhook-secret-file"),
    ("signing-key", "signing-key-file"),
    ("secret-key", "signing-key-file"),
];

/// Reads, parses and validates the spec file at `path`.
///
/// Relative repo paths and secret files in it are resolved against the file's directory.
///
/// # Errors
/// Returns every problem found: an unreadable file, a YAML or type error, duplicate keys, or
/// the semantic problems of [`Spec::validate`].
pub fn load(path: &Path) -> Result<Spec> {
    let text = std::fs::read_to_string(path).map_err(|err| {
        SpecErrors::new(vec![SpecError {
            file: path.to_path_buf(),
            line: 0,
            col: 0,
            message: format!("cannot read the spec file: {err}"),
        }])
    })?;
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    parse_in(&text, path, absolute.parent())
}

/// Parses and validates spec `text`; `file` names it in errors.
///
/// Relative repo paths and secret files are resolved against `file`'s directory when that is
/// absolute; otherwise they stay relative and are reported as problems.
///
/// # Errors
/// Returns every problem found, as [`load`] does.
pub fn parse(text: &str, file: &Path) -> Result<Spec> {
    parse_in(text, file, file.parent().filter(|dir| dir.is_absolute()))
}

fn parse_in(text: &str, file: &Path, base: Option<&Path>) -> Result<Spec> {
    let at = |line, col, message| SpecError {
        file: file.to_path_buf(),
        line,
        col,
        message,
    };
    // A full parse first, so that a syntax error is reported as such and not hidden behind
    // the first type error serde meets on its way to it.
    if let Err(err) = serde_yaml::from_str::<serde::de::IgnoredAny>(text) {
        return Err(SpecErrors::new(vec![yaml_error(file, &err)]));
    }
    // serde keeps the last of two equal map keys; a repeated forge or repo would vanish.
    let index = KeyIndex::build(text);
    if !index.duplicates.is_empty() {
        let errors = index.duplicates.iter().map(|dup| {
            let message = format!(
                "duplicate key `{}` (first given at line {})",
                dup.key, dup.first.line
            );
            at(dup.at.line, dup.at.col, message)
        });
        return Err(SpecErrors::new(errors.collect()));
    }
    let mut spec = serde_yaml::from_str::<Spec>(text)
        .map_err(|err| SpecErrors::new(vec![yaml_error(file, &err)]))?;
    if let Some(base) = base {
        spec.resolve_paths(base);
    }
    let problems = spec.validate();
    if problems.is_empty() {
        return Ok(spec);
    }
    let errors = problems
        .into_iter()
        .map(|problem| {
            let pos = index.locate(&problem.path);
            at(pos.line, pos.col, problem.message)
        })
        .collect();
    Err(SpecErrors::new(errors))
}

/// Converts a serde_yaml error: its message without the trailing location (shown as
/// `LINE:COL` instead), plus a hint when a secret was written inline.
fn yaml_error(file: &Path, err: &serde_yaml::Error) -> SpecError {
    let (line, col) = err.location().map_or((0, 0), |l| (l.line(), l.column()));
    let mut message = err.to_string();
    if let Some(loc) = err.location() {
        let suffix = format!(" at line {} column {}", loc.line(), loc.column());
        message = message.replacen(&suffix, "", 1);
    }
    let unknown = message
        .split_once("unknown field `")
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(field, _)| field);
    if let Some((_, file_key)) = SECRET_KEYS.iter().find(|(key, _)| Some(*key) == unknown) {
        message.push_str(&format!("; secrets are given as files: use `{file_key}`"));
    }
    SpecError {
        file: file.to_path_buf(),
        line,
        col,
        message,
    }
}
