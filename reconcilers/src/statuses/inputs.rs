//! The plan's view of one repository: the loop's [`Settings`] and the evaluations, jobs and
//! untrusted pull requests that commits speak for, once the plan has decided which pull
//! requests are untrusted and which dependency failed (`plan::inputs`).
//!
//! A leaf of the `statuses` modules: `describe`, `summary` and `plan` build on it.

use std::time::Duration;

use reconix_status::{EvaluationId, EvaluationState, JobId, JobState, PostedStatus};

/// How the loop is configured for one forge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The first part of every context, e.g. `reconix`: contexts are `<prefix>/<attr>`,
    /// `<prefix>/eval` and `<prefix>/summary`.
    pub context_prefix: String,
    /// An evaluation with more jobs than this gets one rolling summary instead of one status
    /// per job.
    pub collapse_threshold: usize,
    /// The batching window per commit: after a post on a commit, its next changes wait until
    /// this much time has passed.
    pub debounce: Duration,
    /// True on GitHub: the collapsed summary is a check run (with a markdown body), not a
    /// commit status.
    pub check_runs: bool,
    /// The daemon's base URL, without a trailing slash.
    pub external_url: String,
}

impl Settings {
    /// Returns the page of an evaluation, `<external_url>/evaluations/<id>`.
    pub fn evaluation_url(&self, id: EvaluationId) -> String {
        format!("{}/evaluations/{id}", self.external_url)
    }

    /// Returns the page of a job, `<external_url>/jobs/<id>`.
    pub fn job_url(&self, id: JobId) -> String {
        format!("{}/jobs/{id}", self.external_url)
    }

    /// Returns the full context `<prefix>/<name>`.
    pub fn context(&self, name: &str) -> String {
        format!("{}/{name}", self.context_prefix)
    }
}

/// What the plan works from for one repository, derived from the observed rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs {
    /// Evaluations whose commits may need statuses.
    pub evaluations: Vec<EvalInput>,
    /// Open pull requests whose author is not trusted, on commits nobody evaluated.
    pub untrusted: Vec<UntrustedPr>,
    /// What was last posted per `(sha, context)`.
    pub posted: Vec<PostedStatus>,
}

/// One evaluation and its jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalInput {
    /// Its id; the highest id speaks for a commit evaluated on several refs.
    pub id: EvaluationId,
    /// The evaluated commit.
    pub sha: String,
    /// The ref it was evaluated for, e.g. `refs/heads/main`.
    pub git_ref: String,
    /// Where it stands.
    pub state: EvaluationState,
    /// Why the evaluation as a whole failed, when it did.
    pub error: Option<String>,
    /// The commit that superseded it, when it is superseded and that commit is known.
    pub superseded_by_rev: Option<String>,
    /// Its jobs.
    pub jobs: Vec<JobInput>,
}

/// One job of an evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobInput {
    /// Its id.
    pub id: JobId,
    /// Its attribute path, the last part of its context.
    pub attr: String,
    /// Where it stands.
    pub state: JobState,
    /// Its build or evaluation error, when there is one.
    pub error: Option<String>,
    /// The attribute of a failed dependency, for `dependency-failed` jobs.
    pub failed_dependency: Option<String>,
}

/// An open pull request that is not evaluated because its author is not trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UntrustedPr {
    /// Its head commit.
    pub sha: String,
    /// Its number.
    pub number: u64,
    /// Its author's login.
    pub author: String,
}
