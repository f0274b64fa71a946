//! Reading a spec: YAML to [`Spec`], then semantic validation, with every problem located at
//! its line and column in the file.
//!
//! The order matters: the size and encoding checks (`limits.rs`) and the first pass over the
//! events (`scan.rs`) run before yaml_serde sees the text, because yaml_serde is the parser
//! that a hostile shape makes slow or large.

use std::path::Path;

use crate::Spec;
use crate::error::{Result, SpecError, SpecErrors};
use crate::limits;
use crate::locate::KeyIndex;
use crate::refusal::{Refusal, RefusalKind};
use crate::scan::scan;

/// Keys that people write when they mean the `-file` variant: the spec never holds secrets.
const SECRET_KEYS: [(&str, &str); 4] = [
    ("token", "token-file"),
    ("webhook-secret", "webhook-secret-file"),
    ("signing-key", "signing-key-file"),
    ("secret-key", "signing-key-file"),
];

/// Reads, parses and validates the spec file at `path`.
///
/// Relative repo paths and secret files in it are resolved against the file's directory. A
/// UTF-8 byte-order mark at the start is ignored.
///
/// # Errors
/// Returns every problem found: an unreadable file, a file over [`MAX_SPEC_BYTES`] or not
/// UTF-8, an empty spec, nesting deeper than [`MAX_SPEC_DEPTH`], more than [`MAX_SPEC_NODES`]
/// nodes, more than one YAML document, a YAML or type error, duplicate keys, or the semantic
/// problems of [`Spec::validate`].
///
/// [`MAX_SPEC_BYTES`]: crate::MAX_SPEC_BYTES
/// [`MAX_SPEC_DEPTH`]: crate::MAX_SPEC_DEPTH
/// [`MAX_SPEC_NODES`]: crate::MAX_SPEC_NODES
pub fn load(path: &Path) -> Result<Spec> {
    read(path).map(|(spec, _)| spec)
}

/// Reads the spec file at `path` to replace `current`, the spec in force, as the daemon's
/// spec reloader does.
///
/// It loads the file as [`load`] does, and also refuses a spec without any repository while
/// `current` has one, unless the file says so explicitly with `forges: {}`. An editor that
/// saves in two steps, or a deployment that truncates the file before writing it, can leave an
/// empty or half-written spec for a moment; taken as desired state it would stop building
/// every repository. A spec that means "build nothing" writes `forges: {}`, which a truncated
/// file never looks like.
///
/// # Errors
/// Returns every problem [`load`] finds, or the refusal of a spec that would drop every
/// repository.
pub fn reload(path: &Path, current: &Spec) -> Result<Spec> {
    let (spec, index) = read(path)?;
    let running = current.repos().count();
    if running == 0 || spec.repos().next().is_some() || index.is_empty_mapping("forges") {
        return Ok(spec);
    }
    let at = index.locate(&["forges".to_owned()]);
    Err(SpecErrors::new(vec![SpecError {
        file: path.to_path_buf(),
        line: at.line,
        col: at.col,
        message: format!(
            "the spec has no repository while the running one has {running}; the running spec \
             stays in force (to stop building every repository, write `forges: {{}}`)"
        ),
    }]))
}

/// Parses and validates spec `text`; `file` names it in errors.
///
/// Relative repo paths and secret files are resolved against `file`'s directory when that is
/// absolute; otherwise they stay relative and are reported as problems.
///
/// # Errors
/// Returns every problem found, as [`load`] does.
pub fn parse(text: &str, file: &Path) -> Result<Spec> {
    let at = |refusal| SpecErrors::new(vec![refused(file, refusal)]);
    let text = limits::check_text(text).map_err(at)?;
    parse_in(text, file, file.parent().filter(|dir| dir.is_absolute())).map(|(spec, _)| spec)
}

/// Reads and parses the file at `path`; returns the spec and where its keys are.
fn read(path: &Path) -> Result<(Spec, KeyIndex)> {
    let at = |refusal| SpecErrors::new(vec![refused(path, refusal)]);
    let text = limits::read(path)
        .map_err(|err| {
            SpecErrors::new(vec![SpecError {
                file: path.to_path_buf(),
                line: 0,
                col: 0,
                message: format!("cannot read the spec file: {err}"),
            }])
        })?
        .map_err(at)?;
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    parse_in(&text, path, absolute.parent())
}

fn parse_in(text: &str, file: &Path, base: Option<&Path>) -> Result<(Spec, KeyIndex)> {
    let at = |line, col, message| SpecError {
        file: file.to_path_buf(),
        line,
        col,
        message,
    };
    // Before any other parser: it refuses what would make libyaml slow or large, and finds
    // where every key is.
    let index = match scan(text) {
        Ok(index) => index,
        Err(refusal) if refusal.kind == RefusalKind::Syntax => {
            return Err(SpecErrors::new(vec![syntax_error(text, file, refusal)]));
        }
        Err(refusal) => return Err(SpecErrors::new(vec![refused(file, refusal)])),
    };
    // A full parse first, so that a syntax error is reported as such and not hidden behind
    // the first type error serde meets on its way to it.
    if let Err(err) = serde_yaml::from_str::<serde::de::IgnoredAny>(text) {
        return Err(SpecErrors::new(vec![yaml_error(file, &err)]));
    }
    // serde keeps the last of two equal map keys; a repeated forge or repo would vanish.
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
        return Ok((spec, index));
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

/// The longest line that libyaml may read past saphyr's syntax error (see [`syntax_error`]).
const SYNTAX_LINE_MAX: usize = 4096;

/// Words a syntax error that saphyr found.
///
/// libyaml's messages are the ones people know ("did not find expected ',' or ']'"), so
/// libyaml reads the text up to the end of the line saphyr failed on: saphyr has checked the
/// limits on everything before, so that prefix is cheap for it. When libyaml finds an error
/// there (and not merely the end of the cut text), that is the error; otherwise it is
/// saphyr's. libyaml never reads the whole text, which past the error nobody has checked.
fn syntax_error(text: &str, file: &Path, refusal: Refusal) -> SpecError {
    let line_start = match refusal.at.line {
        0 | 1 => Some(0),
        line => text.match_indices('\n').nth(line - 2).map(|(at, _)| at + 1),
    };
    let cut = line_start.and_then(|start| {
        let end = text[start..]
            .find('\n')
            .map_or(text.len(), |end| start + end + 1);
        (end - start <= SYNTAX_LINE_MAX).then_some(end)
    });
    // An error past that line is only the end of the cut text, unless nothing was cut.
    let within = |line| line <= refusal.at.line || cut == Some(text.len());
    if let Some(cut) = cut
        && let Err(err) = serde_yaml::from_str::<serde::de::IgnoredAny>(&text[..cut])
        && err.location().is_some_and(|loc| within(loc.line()))
    {
        return yaml_error(file, &err);
    }
    refused(file, refusal)
}

fn refused(file: &Path, refusal: Refusal) -> SpecError {
    SpecError {
        file: file.to_path_buf(),
        line: refusal.at.line,
        col: refusal.at.col,
        message: refusal.message,
    }
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    const REPO: &str =
        "forges:\n  here:\n    kind: local\n    repos:\n      demo:\n        path: /srv/demo\n";

    /// Writes `bytes` as `spec.yaml` in a new directory (kept alive by the returned guard).
    fn file(bytes: impl AsRef<[u8]>) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spec.yaml");
        std::fs::write(&path, bytes).unwrap();
        (dir, path)
    }

    /// Returns the only error as `LINE:COL: message`.
    #[track_caller]
    fn only_error(result: Result<Spec>) -> String {
        let errors = result.expect_err("spec accepted").into_vec();
        assert_eq!(errors.len(), 1, "{errors:#?}");
        let error = &errors[0];
        format!("{}:{}: {}", error.line, error.col, error.message)
    }

    #[track_caller]
    fn assert_refused(result: Result<Spec>, position: &str, needle: &str) {
        let error = only_error(result);
        assert!(
            error.starts_with(&format!("{position}: ")) && error.contains(needle),
            "expected `{position}: …{needle}…`, got `{error}`"
        );
    }

    fn running() -> Spec {
        parse(REPO, Path::new("/etc/reconix/spec.yaml")).unwrap()
    }

    #[test]
    fn empty_file_should_be_refused_at_its_start() {
        let (_dir, path) = file("");
        assert_refused(load(&path), "1:1", "the spec is empty");
        let shown = load(&path).unwrap_err().to_string();
        assert!(
            shown.starts_with(&format!("{}:1:1: the spec is empty", path.display())),
            "{shown}"
        );
    }

    #[test]
    fn whitespace_only_file_should_be_refused_as_empty() {
        let (_dir, path) = file(" \n\t\n   \n");
        assert_refused(load(&path), "1:1", "the spec is empty");
    }

    #[test]
    fn comments_only_file_should_be_refused_as_empty() {
        let (_dir, path) = file("# reconix spec\n\n  # nothing yet\n");
        assert_refused(load(&path), "1:1", "the spec is empty");
        let (_dir, path) = file("---\n# nothing yet\n");
        assert_refused(load(&path), "1:1", "the spec is empty");
    }

    #[test]
    fn empty_mapping_should_be_a_valid_spec_for_load() {
        let (_dir, path) = file("{}\n");
        assert_eq!(load(&path).unwrap().repos().count(), 0);
    }

    #[test]
    fn reload_should_refuse_an_empty_mapping_while_repos_are_running() {
        let (_dir, path) = file("{}\n");
        let error = only_error(reload(&path, &running()));
        assert_eq!(
            error,
            "1:1: the spec has no repository while the running one has 1; the running spec \
             stays in force (to stop building every repository, write `forges: {}`)"
        );
    }

    #[test]
    fn reload_should_accept_forges_written_as_an_empty_mapping() {
        let (_dir, path) = file("state-dir: /var/lib/reconix\nforges: {}\n");
        let spec = reload(&path, &running()).unwrap();
        assert!(spec.forges.is_empty());
    }

    #[test]
    fn reload_should_refuse_a_truncated_spec_without_repos() {
        // What an editor's or a deployment's half-written file looks like: the forge is there,
        // its repos are not (yet).
        let (_dir, path) = file("forges:\n  here:\n    kind: local\n");
        assert_refused(
            reload(&path, &running()),
            "1:1",
            "the spec has no repository while the running one has 1",
        );
        let (_dir, path) = file("state-dir: /var/lib/reconix\nforges:\n");
        assert_refused(reload(&path, &running()), "2:1", "write `forges: {}`");
        let (_dir, path) = file("forges: {here: {kind: local, repos: {}}}\n");
        assert_refused(reload(&path, &running()), "1:1", "the running one has 1");
    }

    #[test]
    fn reload_should_accept_a_spec_without_repos_when_none_are_running() {
        let (_dir, path) = file("forges:\n  here:\n    kind: local\n");
        let current = parse("{}", Path::new("/etc/reconix/spec.yaml")).unwrap();
        assert_eq!(reload(&path, &current).unwrap().repos().count(), 0);
        let (_dir, path) = file("{}\n");
        assert_eq!(reload(&path, &current).unwrap().repos().count(), 0);
    }

    #[test]
    fn reload_should_accept_a_spec_with_repos_and_report_load_errors() {
        let (_dir, path) = file(REPO);
        assert_eq!(reload(&path, &running()).unwrap().repos().count(), 1);
        let (_dir, path) = file("");
        assert_refused(reload(&path, &running()), "1:1", "the spec is empty");
    }

    #[test]
    fn non_utf8_byte_should_be_located() {
        let (_dir, path) = file(b"forges: {}\nlisten: \xff127.0.0.1:80\n");
        assert_refused(
            load(&path),
            "2:9",
            "the spec is not valid UTF-8: byte 0xff cannot appear here",
        );
        // The column counts characters, as the YAML parsers' columns do.
        let (_dir, path) = file(
            "# é\nstate-dir: /srv/é\u{1F600}"
                .bytes()
                .chain([0xc3])
                .collect::<Vec<_>>(),
        );
        assert_refused(load(&path), "2:19", "byte 0xc3");
    }

    #[test]
    fn leading_byte_order_mark_should_be_ignored() {
        let text = format!("\u{feff}state-dir: /srv/ci\n{REPO}");
        let (_dir, path) = file(&text);
        let spec = load(&path).unwrap();
        assert_eq!(spec.state_dir, Path::new("/srv/ci"));
        assert_eq!(parse(&text, Path::new("/etc/r/spec.yaml")).unwrap(), spec);
    }

    #[test]
    fn positions_after_a_byte_order_mark_should_not_count_it() {
        let (_dir, path) = file("\u{feff}listen: x\n");
        assert_refused(load(&path), "1:9", "invalid socket address");
        let (_dir, path) = file(b"\xef\xbb\xbfa\xff");
        assert_refused(load(&path), "1:2", "not valid UTF-8");
    }

    #[test]
    fn second_document_should_be_located_at_its_start() {
        let text = format!("{REPO}---\n{REPO}");
        assert_refused(
            parse(&text, Path::new("/etc/r/spec.yaml")),
            "7:1",
            "a second YAML document starts here; a spec is a single document",
        );
        let text = format!("{REPO}...\nlisten: 127.0.0.1:80\n");
        assert_refused(
            parse(&text, Path::new("/etc/r/spec.yaml")),
            "8:1",
            "a second YAML document",
        );
        let text = format!("---\n{REPO}--- {{}}\n");
        assert_refused(
            parse(&text, Path::new("/etc/r/spec.yaml")),
            "8:1",
            "a second YAML document",
        );
    }

    #[test]
    fn unreadable_file_should_be_an_error_without_a_position() {
        let dir = tempfile::tempdir().unwrap();
        let error = only_error(load(&dir.path().join("missing.yaml")));
        assert!(
            error.starts_with("0:0: cannot read the spec file"),
            "{error}"
        );
    }
}
