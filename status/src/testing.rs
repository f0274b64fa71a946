//! Fixtures shared by the unit tests of this crate.

use reconix_spec::names::{AttrPath, RepoKey, StorePath, System, Timestamp};

use crate::{EvaluationId, JobState, NewJob, RepoId, StatusDb};

/// An arbitrary start time for tests.
pub(crate) const T0: Timestamp = Timestamp(1_700_000_000_000);

/// Returns `T0` moved forward by `ms` milliseconds.
pub(crate) fn at(ms: i64) -> Timestamp {
    Timestamp(T0.0 + ms)
}

pub(crate) fn repo_key(s: &str) -> RepoKey {
    RepoKey::parse(s).unwrap()
}

pub(crate) fn attr(s: &str) -> AttrPath {
    AttrPath::new(s).unwrap()
}

pub(crate) fn system() -> System {
    System::new("x86_64-linux").unwrap()
}

/// Returns a valid store path whose hash encodes `n`, named `<name>`.
pub(crate) fn store_path(n: u64, name: &str) -> StorePath {
    const ALPHABET: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
    let mut hash = [b'0'; 32];
    let mut n = n;
    for slot in hash.iter_mut().rev() {
        *slot = ALPHABET[usize::try_from(n % 32).unwrap()];
        n /= 32;
    }
    StorePath::new(format!(
        "/nix/store/{}-{name}",
        std::str::from_utf8(&hash).unwrap()
    ))
    .unwrap()
}

pub(crate) fn drv(n: u64) -> StorePath {
    store_path(n, &format!("job-{n}.drv"))
}

/// A queued job `packages.x86_64-linux.<name>` whose drv is `drv(n)`, with one `out` output.
pub(crate) fn job(n: u64, name: &str) -> NewJob {
    NewJob {
        attr: attr(&format!("packages.x86_64-linux.{name}")),
        name: name.to_owned(),
        system: Some(system()),
        drv_path: Some(drv(n)),
        outputs: reconix_spec::Outputs::from([("out".to_owned(), store_path(n + 1_000_000, name))]),
        deps: Vec::new(),
        required_features: Vec::new(),
        state: JobState::Queued,
        error: None,
        constituents: None,
        meta: reconix_spec::JobMeta::default(),
    }
}

/// Returns `job` depending on the jobs named `deps`.
pub(crate) fn with_deps(mut job: NewJob, deps: &[&str]) -> NewJob {
    job.deps = deps
        .iter()
        .map(|d| attr(&format!("packages.x86_64-linux.{d}")))
        .collect();
    job
}

/// An eval-failed job `packages.x86_64-linux.<name>`.
pub(crate) fn failed_job(name: &str, error: &str) -> NewJob {
    NewJob {
        attr: attr(&format!("packages.x86_64-linux.{name}")),
        name: name.to_owned(),
        system: None,
        drv_path: None,
        outputs: reconix_spec::Outputs::new(),
        deps: Vec::new(),
        required_features: Vec::new(),
        state: JobState::EvalFailed,
        error: Some(error.to_owned()),
        constituents: None,
        meta: reconix_spec::JobMeta::default(),
    }
}

/// Creates repo `gh/o/r` and a queued evaluation of `rev` on `refs/heads/main`.
pub(crate) fn eval(db: &mut StatusDb, rev: &str) -> (RepoId, EvaluationId) {
    let repo = db.upsert_repo(&repo_key("gh/o/r")).unwrap();
    let (id, _) = db
        .insert_evaluation(
            repo,
            "refs/heads/main",
            rev,
            &format!("git+file:///r?rev={rev}"),
            T0,
        )
        .unwrap();
    (repo, id)
}

/// Creates an evaluation whose result `jobs` is recorded (state `building`).
pub(crate) fn building_eval(db: &mut StatusDb, rev: &str, jobs: &[NewJob]) -> EvaluationId {
    let (_, id) = eval(db, rev);
    assert!(db.record_evaluation_result(id, jobs, at(1)).unwrap());
    id
}

/// Pull request 3 of `alice`, from a fork, at `sha`.
pub(crate) fn pull_request(sha: &str, open: bool) -> crate::PullRequestUpdate {
    crate::PullRequestUpdate {
        number: 3,
        head_sha: sha.to_owned(),
        head_ref: "feature".to_owned(),
        base_ref: "main".to_owned(),
        author: Some("alice".to_owned()),
        from_fork: true,
        open,
    }
}
