//! Errors of loading a spec: every problem found, each with its file, line and column.

use std::path::PathBuf;

/// One problem in a spec file, displayed as `FILE:LINE:COL: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {message}", .file.display(), position(*.line, *.col))]
pub struct SpecError {
    /// The spec file, as the caller named it.
    pub file: PathBuf,
    /// 1-based line, or 0 when the problem has no position (the file could not be read).
    pub line: usize,
    /// 1-based column, or 0 when the problem has no position.
    pub col: usize,
    /// What is wrong, lowercase and without a trailing period.
    pub message: String,
}

fn position(line: usize, col: usize) -> String {
    if line == 0 {
        String::new()
    } else {
        format!(":{line}:{col}")
    }
}

/// Every problem found in a spec, in file order; never empty. Displays one problem per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", lines(.0))]
pub struct SpecErrors(Vec<SpecError>);

fn lines(errors: &[SpecError]) -> String {
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

impl SpecErrors {
    /// Wraps the problems found, sorting them by position.
    pub(crate) fn new(mut errors: Vec<SpecError>) -> Self {
        errors.sort_by_key(|e| (e.line, e.col));
        Self(errors)
    }

    /// Returns the problems.
    pub fn as_slice(&self) -> &[SpecError] {
        &self.0
    }

    /// Returns an iterator over the problems.
    pub fn iter(&self) -> std::slice::Iter<'_, SpecError> {
        self.0.iter()
    }

    /// Returns how many problems were found.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Returns true when there are no problems (a `SpecErrors` returned by this crate always has
    /// at least one).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Returns the problems as a vector.
    pub fn into_vec(self) -> Vec<SpecError> {
        self.0
    }
}

impl IntoIterator for SpecErrors {
    type Item = SpecError;
    type IntoIter = std::vec::IntoIter<SpecError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a SpecErrors {
    type Item = &'a SpecError;
    type IntoIter = std::slice::Iter<'a, SpecError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// The result of loading a spec.
pub type Result<T, E = SpecErrors> = std::result::Result<T, E>;
