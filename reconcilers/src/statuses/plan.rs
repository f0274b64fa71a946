//! The pure plan of the `statuses` loop: which forge commit statuses (and GitHub check runs)
//! every evaluated commit should carry, diffed against what was last posted and batched per
//! commit by a debounce window, and which evaluations are settled.
//!
//! [`plan`] is the loop's whole decision. From the rows as stored ([`Observed`]) it derives the
//! [`Inputs`] — which open pull requests are untrusted ([`Trust`]) and, for each
//! `dependency-failed` job, which dependency failed — then [`desired`] says what each commit
//! should show, and [`plan_inputs`] keeps the entries that differ from what was posted,
//! withholds a commit's entries while its debounce window is open, and settles the terminal
//! evaluations whose commits show everything. Each commit is planned on its own: nothing about
//! one sha depends on another sha's evaluations or rows.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use reconix_forge::{
    CheckConclusion, CheckOutput, CheckRunSpec, CheckStatus, CommitStatus, StatusState,
};
use reconix_spec::{ForgeKind, RepoKey, Spec, Timestamp};
use reconix_status::{
    Evaluation, EvaluationId, EvaluationState, Job, JobState, PostedState, PostedStatus,
    PullRequestRow,
};
use serde::Serialize;

use super::describe::{evaluation_status, job_status, truncate};
use super::inputs::{EvalInput, Inputs, JobInput, Settings, UntrustedPr};
use super::summary::{self, Counts};
use crate::forge_clients::Gate;
use crate::runtime::{Action, Plan};
use crate::trust::Trust;

/// The context name (after `<prefix>/`) of the evaluation's own status.
const EVAL_CONTEXT: &str = "eval";

/// The context name (after `<prefix>/`) of a collapsed evaluation's rolling summary.
const SUMMARY_CONTEXT: &str = "summary";

/// What `observe` saw for one repository: rows as the database has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Whether the forge may be called.
    pub gate: Gate,
    /// The evaluations whose statuses are not settled yet, oldest first.
    pub evaluations: Vec<ObservedEvaluation>,
    /// The open pull requests, trusted or not.
    pub pull_requests: Vec<PullRequestRow>,
    /// What was last posted on the commits of the evaluations and pull requests.
    pub posted: Vec<PostedStatus>,
}

impl Observed {
    /// Returns an observation with nothing in it behind `gate`.
    pub fn empty(gate: Gate) -> Self {
        Self {
            gate,
            evaluations: Vec::new(),
            pull_requests: Vec::new(),
            posted: Vec::new(),
        }
    }
}

/// One unsettled evaluation as stored, with its jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedEvaluation {
    /// The evaluation row.
    pub evaluation: Evaluation,
    /// The rev of the evaluation that superseded it, when that one is still stored.
    pub superseded_by_rev: Option<String>,
    /// Its jobs, in id order.
    pub jobs: Vec<Job>,
}

/// Returns the loop's settings for forge kind `kind` under `spec`.
pub fn settings(spec: &Spec, kind: ForgeKind) -> Settings {
    Settings {
        context_prefix: spec.statuses.context_prefix.clone(),
        collapse_threshold: usize::try_from(spec.statuses.collapse_threshold).unwrap_or(usize::MAX),
        debounce: spec.statuses.debounce.to_std(),
        check_runs: kind == ForgeKind::Github,
        external_url: spec
            .external_url
            .as_deref()
            .unwrap_or("")
            .trim_end_matches('/')
            .to_owned(),
    }
}

/// Plans the `statuses` loop for one repository (pure): nothing while the forge may not be
/// called, else the steps of [`plan_inputs`] over the [`inputs`] derived from `observed`.
pub fn plan(key: &RepoKey, desired: &Spec, observed: &Observed, now: Timestamp) -> Plan<Step> {
    let Some((forge, repo)) = desired.repo(key) else {
        return Plan {
            steps: Vec::new(),
            then: Action::await_change(),
        };
    };
    match observed.gate {
        Gate::Wait(d) => {
            return Plan {
                steps: Vec::new(),
                then: Action::requeue(d),
            };
        }
        Gate::Paused => {
            return Plan {
                steps: Vec::new(),
                then: Action::await_change(),
            };
        }
        Gate::Open => {}
    }
    let planned = plan_inputs(
        &settings(desired, forge.kind),
        &inputs(observed, &repo.allowlist),
        now,
    );
    Plan {
        steps: planned.steps,
        then: planned
            .wake_after
            .map_or(Action::await_change(), Action::requeue),
    }
}

/// Derives what the plan works from: every observed evaluation with, for each
/// `dependency-failed` job, the attribute of its first dependency (in id order) that did not
/// succeed; and every open pull request whose author is [`Trust::Untrusted`] under `allowlist`
/// on a commit no observed evaluation is for.
pub fn inputs(observed: &Observed, allowlist: &[String]) -> Inputs {
    let evaluations: Vec<EvalInput> = observed.evaluations.iter().map(eval_input).collect();
    let evaluated: BTreeSet<&str> = evaluations.iter().map(|e| e.sha.as_str()).collect();
    let untrusted = observed
        .pull_requests
        .iter()
        .filter(|p| {
            Trust::of_row(p, allowlist) == Trust::Untrusted
                && !evaluated.contains(p.head_sha.as_str())
        })
        .map(|p| UntrustedPr {
            sha: p.head_sha.clone(),
            number: p.number,
            author: p.author.clone().unwrap_or_default(),
        })
        .collect();
    Inputs {
        evaluations,
        untrusted,
        posted: observed.posted.clone(),
    }
}

/// Returns the plan's view of one observed evaluation (see [`inputs`]).
fn eval_input(observed: &ObservedEvaluation) -> EvalInput {
    let e = &observed.evaluation;
    let by_id: HashMap<_, _> = observed
        .jobs
        .iter()
        .map(|j| (j.id, (j.attr.as_str(), j.state)))
        .collect();
    let failed_dependency = |j: &Job| {
        j.deps.iter().find_map(|d| {
            by_id
                .get(d)
                .and_then(|(attr, state)| (*state != JobState::Succeeded).then_some(*attr))
        })
    };
    EvalInput {
        id: e.id,
        sha: e.rev.clone(),
        git_ref: e.ref_name.clone(),
        state: e.state,
        error: e.error.clone(),
        superseded_by_rev: observed.superseded_by_rev.clone(),
        jobs: observed
            .jobs
            .iter()
            .map(|j| JobInput {
                id: j.id,
                attr: j.attr.to_string(),
                state: j.state,
                error: j.error.clone(),
                failed_dependency: (j.state == JobState::DependencyFailed)
                    .then(|| failed_dependency(j).map(str::to_owned))
                    .flatten(),
            })
            .collect(),
    }
}

/// Returns the state recorded for a posted status: the forge's [`StatusState`] and the stored
/// [`PostedState`] name the same six states.
pub fn posted_state(state: StatusState) -> PostedState {
    match state {
        StatusState::Pending => PostedState::Pending,
        StatusState::Running => PostedState::Running,
        StatusState::Success => PostedState::Success,
        StatusState::Failure => PostedState::Failure,
        StatusState::Error => PostedState::Error,
        StatusState::Cancelled => PostedState::Cancelled,
    }
}

/// One call to the forge, or the end of an evaluation's statuses. The apply side records
/// `(state, description, target_url)` (and the check run id) as a [`PostedStatus`] row once a
/// call succeeds, so the next plan sees it as posted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
    /// Posts a commit status.
    Post {
        /// The commit.
        sha: String,
        /// The status.
        status: CommitStatus,
    },
    /// Creates a check run; the apply side records the returned id.
    CreateCheckRun {
        /// The commit.
        sha: String,
        /// The context to record it under (equal to the check's name).
        context: String,
        /// The state to record.
        state: StatusState,
        /// The check run; its output title is the description to record, its details URL the
        /// target URL.
        spec: CheckRunSpec,
    },
    /// Updates an existing check run.
    UpdateCheckRun {
        /// The commit.
        sha: String,
        /// The context to record it under (equal to the check's name).
        context: String,
        /// The state to record.
        state: StatusState,
        /// The check run's id, from the posted row.
        id: u64,
        /// The check run; its output title is the description to record, its details URL the
        /// target URL.
        spec: CheckRunSpec,
    },
    /// Marks an evaluation's statuses final: the loop no longer observes it.
    Settle {
        /// The evaluation.
        evaluation: EvaluationId,
    },
}

/// The steps of one pass over the [`Inputs`] and when to look again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusPlan {
    /// The calls to make, by sha, then eval context, summary, and attributes in order; then the
    /// evaluations to settle, in the order observed.
    pub steps: Vec<Step>,
    /// The earliest time a debounced commit may post again, when one is waiting.
    pub wake_after: Option<Duration>,
}

/// How a desired entry reaches the forge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DesiredKind {
    /// As a commit status.
    Status,
    /// As a GitHub check run (the collapsed summary with `check_runs`).
    CheckRun {
        /// The check run to create or update.
        spec: CheckRunSpec,
    },
}

/// What one `(sha, context)` should show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// The commit.
    pub sha: String,
    /// The full context.
    pub context: String,
    /// The state.
    pub state: StatusState,
    /// The description, at most 140 characters.
    pub description: Option<String>,
    /// The link.
    pub target_url: Option<String>,
    /// Status or check run.
    pub kind: DesiredKind,
}

impl Desired {
    /// Returns true when `posted` already shows this entry: state, description and target URL
    /// for a status; state and description for a check run (its body follows the counts that
    /// the description carries).
    pub fn is_posted(&self, posted: Option<&PostedStatus>) -> bool {
        let Some(p) = posted else {
            return false;
        };
        let state = p.state == posted_state(self.state);
        match self.kind {
            DesiredKind::Status => {
                state && p.description == self.description && p.target_url == self.target_url
            }
            DesiredKind::CheckRun { .. } => state && p.description == self.description,
        }
    }

    /// Returns the call that makes the forge show this entry: a check run is updated when
    /// `posted` carries its id, created otherwise.
    fn into_step(self, posted: Option<&PostedStatus>) -> Step {
        match self.kind {
            DesiredKind::Status => Step::Post {
                sha: self.sha,
                status: CommitStatus {
                    state: self.state,
                    context: self.context,
                    description: self.description,
                    target_url: self.target_url,
                },
            },
            DesiredKind::CheckRun { spec } => match posted.and_then(|p| p.check_run_id) {
                Some(id) => Step::UpdateCheckRun {
                    sha: self.sha,
                    context: self.context,
                    state: self.state,
                    id,
                    spec,
                },
                None => Step::CreateCheckRun {
                    sha: self.sha,
                    context: self.context,
                    state: self.state,
                    spec,
                },
            },
        }
    }
}

/// Who speaks for a commit.
enum Speaker<'a> {
    /// The evaluation with the highest id among those of the commit.
    Evaluation(&'a EvalInput),
    /// An untrusted pull request (lowest number) on a commit nobody evaluated.
    Untrusted(&'a UntrustedPr),
}

/// Returns what every commit should show, by sha, then the eval context, the summary (when
/// collapsed) and the job contexts sorted by attribute.
///
/// A commit shows its highest-id evaluation; a commit without evaluation but with an
/// untrusted pull request shows a pending `<prefix>/eval` saying who may not write.
pub fn desired(settings: &Settings, observed: &Inputs) -> Vec<Desired> {
    let mut speakers: BTreeMap<&str, Speaker<'_>> = BTreeMap::new();
    for eval in &observed.evaluations {
        let newer = match speakers.get(eval.sha.as_str()) {
            Some(Speaker::Evaluation(current)) => eval.id > current.id,
            Some(Speaker::Untrusted(_)) | None => true,
        };
        if newer {
            speakers.insert(&eval.sha, Speaker::Evaluation(eval));
        }
    }
    for pr in &observed.untrusted {
        let first = match speakers.get(pr.sha.as_str()) {
            Some(Speaker::Evaluation(_)) => false,
            Some(Speaker::Untrusted(current)) => pr.number < current.number,
            None => true,
        };
        if first {
            speakers.insert(&pr.sha, Speaker::Untrusted(pr));
        }
    }

    let mut out = Vec::new();
    for (sha, speaker) in speakers {
        match speaker {
            Speaker::Evaluation(eval) => evaluation_desired(settings, eval, &mut out),
            Speaker::Untrusted(pr) => out.push(Desired {
                sha: sha.to_owned(),
                context: settings.context(EVAL_CONTEXT),
                state: StatusState::Pending,
                description: Some(truncate(format!(
                    "waiting for a trusted push: {} may not write to this repository",
                    pr.author
                ))),
                // Forges expect a link on every status (GitHub documents it as a string); the
                // daemon's page says which pull requests wait and why.
                target_url: Some(format!("{}/", settings.external_url)),
                kind: DesiredKind::Status,
            }),
        }
    }
    out
}

/// Plans one pass over the [`Inputs`]: the [`desired`] entries that differ from
/// [`Inputs::posted`], except for commits whose debounce window is still open; then a
/// [`Step::Settle`] for every terminal evaluation whose commit shows everything it should.
///
/// A commit's window opens at the newest `posted_at` among its rows and lasts
/// [`Settings::debounce`]; a commit never posted before posts at once. While a window holds back
/// differences, [`StatusPlan::wake_after`] is the shortest remaining wait. A commit that still
/// differs (posted now or held back) settles none of its evaluations.
pub fn plan_inputs(settings: &Settings, observed: &Inputs, now: Timestamp) -> StatusPlan {
    let mut posted: BTreeMap<(&str, &str), &PostedStatus> = BTreeMap::new();
    let mut last: BTreeMap<&str, Timestamp> = BTreeMap::new();
    for row in &observed.posted {
        let slot = posted
            .entry((row.sha.as_str(), row.context.as_str()))
            .or_insert(row);
        if row.posted_at > slot.posted_at {
            *slot = row;
        }
        let newest = last.entry(row.sha.as_str()).or_insert(row.posted_at);
        *newest = (*newest).max(row.posted_at);
    }
    let posted_row = |d: &Desired| posted.get(&(d.sha.as_str(), d.context.as_str())).copied();

    let mut steps = Vec::new();
    let mut wake_after: Option<Duration> = None;
    let mut unsettled: BTreeSet<&str> = BTreeSet::new();
    let all = desired(settings, observed);
    // `desired` groups entries by sha, so each chunk is one commit.
    for commit in all.chunk_by(|a, b| a.sha == b.sha) {
        let changed: Vec<&Desired> = commit
            .iter()
            .filter(|d| !d.is_posted(posted_row(d)))
            .collect();
        let Some(first) = changed.first() else {
            continue;
        };
        unsettled.insert(first.sha.as_str());
        if let Some(last) = last.get(first.sha.as_str()) {
            let open = last.plus(settings.debounce);
            if now < open {
                let wait = open.since(now);
                wake_after = Some(wake_after.map_or(wait, |w| w.min(wait)));
                continue;
            }
        }
        steps.extend(
            changed
                .into_iter()
                .map(|d| d.clone().into_step(posted_row(d))),
        );
    }
    steps.extend(
        observed
            .evaluations
            .iter()
            .filter(|e| e.state.is_terminal() && !unsettled.contains(e.sha.as_str()))
            .map(|e| Step::Settle { evaluation: e.id }),
    );
    StatusPlan { steps, wake_after }
}

/// Pushes the entries of one evaluation's commit.
fn evaluation_desired(settings: &Settings, eval: &EvalInput, out: &mut Vec<Desired>) {
    let eval_url = settings.evaluation_url(eval.id);
    let (state, description) = evaluation_status(eval);
    out.push(Desired {
        sha: eval.sha.clone(),
        context: settings.context(EVAL_CONTEXT),
        state,
        description: Some(description),
        target_url: Some(eval_url.clone()),
        kind: DesiredKind::Status,
    });

    if eval.jobs.len() > settings.collapse_threshold {
        out.push(summary_desired(settings, eval, eval_url));
        return;
    }
    let mut jobs: Vec<&JobInput> = eval.jobs.iter().collect();
    jobs.sort_by(|a, b| a.attr.cmp(&b.attr).then(a.id.cmp(&b.id)));
    for job in jobs {
        let (state, description) = job_status(eval, job);
        out.push(Desired {
            sha: eval.sha.clone(),
            context: settings.context(&job.attr),
            state,
            description: Some(description),
            target_url: Some(settings.job_url(job.id)),
            kind: DesiredKind::Status,
        });
    }
}

/// Returns the rolling summary of a collapsed evaluation.
fn summary_desired(settings: &Settings, eval: &EvalInput, eval_url: String) -> Desired {
    let counts = Counts::of(&eval.jobs);
    let state = summary_state(eval, &counts);
    let description = truncate(counts.description());
    let context = settings.context(SUMMARY_CONTEXT);
    let kind = if settings.check_runs {
        let (status, conclusion) = check_status(state);
        DesiredKind::CheckRun {
            spec: CheckRunSpec {
                name: context.clone(),
                head_sha: eval.sha.clone(),
                status,
                conclusion,
                details_url: Some(eval_url.clone()),
                output: Some(CheckOutput {
                    title: description.clone(),
                    summary: summary::markdown(settings, eval),
                }),
            },
        }
    } else {
        DesiredKind::Status
    };
    Desired {
        sha: eval.sha.clone(),
        context,
        state,
        description: Some(description),
        target_url: Some(eval_url),
        kind,
    }
}

/// Returns the state of the rolling summary: running while jobs are queued or building
/// (pending when all are queued), then failure, cancelled, or success.
fn summary_state(eval: &EvalInput, counts: &Counts) -> StatusState {
    if counts.total > 0 && counts.queued == counts.total {
        StatusState::Pending
    } else if counts.queued + counts.running > 0 {
        StatusState::Running
    } else if counts.failing() > 0 {
        StatusState::Failure
    } else if eval.state == EvaluationState::Superseded || counts.cancelled > 0 {
        StatusState::Cancelled
    } else {
        StatusState::Success
    }
}

/// Maps a status state to a check run's status and conclusion.
fn check_status(state: StatusState) -> (CheckStatus, Option<CheckConclusion>) {
    match state {
        StatusState::Pending => (CheckStatus::Queued, None),
        StatusState::Running => (CheckStatus::InProgress, None),
        StatusState::Success => (CheckStatus::Completed, Some(CheckConclusion::Success)),
        StatusState::Failure => (CheckStatus::Completed, Some(CheckConclusion::Failure)),
        // The summary never reports `Error`; should it, "failure" keeps the check red, as
        // GitHub shows an `error` commit status.
        StatusState::Error => (CheckStatus::Completed, Some(CheckConclusion::Failure)),
        StatusState::Cancelled => (CheckStatus::Completed, Some(CheckConclusion::Cancelled)),
    }
}

#[cfg(test)]
mod tests {
    use reconix_status::JobId;

    use super::*;

    const SHA_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const SHA_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const NEXT: &str = "0123456789abcdef0123456789abcdef01234567";

    fn settings() -> Settings {
        Settings {
            context_prefix: "reconix".to_owned(),
            collapse_threshold: 3,
            debounce: Duration::from_secs(10),
            check_runs: false,
            external_url: "https://ci.example.org".to_owned(),
        }
    }

    fn github() -> Settings {
        Settings {
            check_runs: true,
            ..settings()
        }
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp(secs * 1_000)
    }

    impl EvalInput {
        fn test(id: i64, sha: &str) -> Self {
            Self {
                id: EvaluationId(id),
                sha: sha.to_owned(),
                git_ref: "refs/heads/main".to_owned(),
                state: EvaluationState::Building,
                error: None,
                superseded_by_rev: None,
                jobs: Vec::new(),
            }
        }

        fn state(mut self, state: EvaluationState) -> Self {
            self.state = state;
            self
        }

        fn error(mut self, error: &str) -> Self {
            self.error = Some(error.to_owned());
            self
        }

        fn superseded_by(mut self, rev: Option<&str>) -> Self {
            self.state = EvaluationState::Superseded;
            self.superseded_by_rev = rev.map(str::to_owned);
            self
        }

        fn job(mut self, job: JobInput) -> Self {
            self.jobs.push(job);
            self
        }

        /// Adds `n` jobs `pkg-00000`… with ids from 1, all in `state`.
        fn jobs(mut self, n: usize, state: JobState) -> Self {
            for i in 0..n {
                let id = self.jobs.len() as i64 + 1;
                self.jobs
                    .push(JobInput::test(id, &format!("pkg-{i:05}")).state(state));
            }
            self
        }
    }

    impl JobInput {
        fn test(id: i64, attr: &str) -> Self {
            Self {
                id: JobId(id),
                attr: attr.to_owned(),
                state: JobState::Queued,
                error: None,
                failed_dependency: None,
            }
        }

        fn state(mut self, state: JobState) -> Self {
            self.state = state;
            self
        }

        fn error(mut self, error: &str) -> Self {
            self.error = Some(error.to_owned());
            self
        }

        fn failed_dependency(mut self, attr: &str) -> Self {
            self.state = JobState::DependencyFailed;
            self.failed_dependency = Some(attr.to_owned());
            self
        }
    }

    fn observed(evaluations: Vec<EvalInput>) -> Inputs {
        Inputs {
            evaluations,
            ..Inputs::default()
        }
    }

    /// Records every desired entry as posted at `at`, as the apply side would.
    fn posted_all(settings: &Settings, observed: &Inputs, at: Timestamp) -> Vec<PostedStatus> {
        desired(settings, observed)
            .into_iter()
            .map(|d| PostedStatus {
                check_run_id: matches!(d.kind, DesiredKind::CheckRun { .. }).then_some(99),
                sha: d.sha,
                context: d.context,
                state: posted_state(d.state),
                description: d.description,
                target_url: d.target_url,
                posted_at: at,
            })
            .collect()
    }

    /// Applies steps to the posted rows as the apply side would; check runs get ids from 1000.
    fn apply(steps: &[Step], posted: &mut Vec<PostedStatus>, now: Timestamp) {
        for step in steps {
            let (sha, context, state, description, target_url, id) = match step {
                Step::Settle { .. } => continue,
                Step::Post { sha, status } => (
                    sha,
                    &status.context,
                    status.state,
                    status.description.clone(),
                    status.target_url.clone(),
                    None,
                ),
                Step::CreateCheckRun {
                    sha,
                    context,
                    state,
                    spec,
                } => (
                    sha,
                    context,
                    *state,
                    spec.output.as_ref().map(|o| o.title.clone()),
                    spec.details_url.clone(),
                    Some(1000 + posted.len() as u64),
                ),
                Step::UpdateCheckRun {
                    sha,
                    context,
                    state,
                    id,
                    spec,
                } => (
                    sha,
                    context,
                    *state,
                    spec.output.as_ref().map(|o| o.title.clone()),
                    spec.details_url.clone(),
                    Some(*id),
                ),
            };
            posted.retain(|p| !(p.sha == *sha && p.context == *context));
            posted.push(PostedStatus {
                sha: sha.clone(),
                context: context.clone(),
                state: posted_state(state),
                description,
                target_url,
                check_run_id: id,
                posted_at: now,
            });
        }
    }

    fn statuses(plan: &StatusPlan) -> Vec<(&str, &str, StatusState, &str)> {
        plan.steps
            .iter()
            .map(|s| match s {
                Step::Post { sha, status } => (
                    sha.as_str(),
                    status.context.as_str(),
                    status.state,
                    status.description.as_deref().unwrap_or(""),
                ),
                other => panic!("expected a status, got {other:?}"),
            })
            .collect()
    }

    fn only_status(settings: &Settings, eval: EvalInput, context: &str) -> CommitStatus {
        let plan = plan_inputs(settings, &observed(vec![eval]), at(0));
        plan.steps
            .into_iter()
            .find_map(|s| match s {
                Step::Post { status, .. } if status.context == context => Some(status),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no status for {context}"))
    }

    fn job_post(job: JobInput) -> CommitStatus {
        only_status(
            &settings(),
            EvalInput::test(1, SHA_A).job(job),
            "reconix/x.y",
        )
    }

    fn eval_post(eval: EvalInput) -> (StatusState, String) {
        let status = only_status(&settings(), eval, "reconix/eval");
        (status.state, status.description.unwrap_or_default())
    }

    #[test]
    fn each_job_state_should_map_to_its_status() {
        let cases = [
            (JobInput::test(5, "x.y"), StatusState::Pending, "queued"),
            (
                JobInput::test(5, "x.y").state(JobState::Building),
                StatusState::Running,
                "building",
            ),
            (
                JobInput::test(5, "x.y").state(JobState::Succeeded),
                StatusState::Success,
                "built",
            ),
            (
                JobInput::test(5, "x.y").state(JobState::Failed),
                StatusState::Failure,
                "build failed",
            ),
            (
                JobInput::test(5, "x.y")
                    .state(JobState::Failed)
                    .error("\n  error: builder failed\nlog tail"),
                StatusState::Failure,
                "build failed: error: builder failed",
            ),
            (
                JobInput::test(5, "x.y").failed_dependency("a.b"),
                StatusState::Failure,
                "dependency failed: a.b",
            ),
            (
                JobInput::test(5, "x.y").state(JobState::DependencyFailed),
                StatusState::Failure,
                "dependency failed",
            ),
            (
                JobInput::test(5, "x.y")
                    .state(JobState::EvalFailed)
                    .error("error: attribute missing\nat foo.nix:1"),
                StatusState::Failure,
                "evaluation failed: error: attribute missing",
            ),
            (
                JobInput::test(5, "x.y").state(JobState::EvalFailed),
                StatusState::Failure,
                "evaluation failed",
            ),
            (
                JobInput::test(5, "x.y").state(JobState::Cancelled),
                StatusState::Cancelled,
                "cancelled",
            ),
            (
                JobInput::test(5, "x.y").state(JobState::Skipped).error(
                    "skipped: its system aarch64-linux is not one of this repository's systems",
                ),
                StatusState::Success,
                "skipped: its system aarch64-linux is not one of this repository's systems",
            ),
        ];
        for (job, state, description) in cases {
            let status = job_post(job.clone());
            assert_eq!(status.state, state, "{job:?}");
            assert_eq!(status.description.as_deref(), Some(description), "{job:?}");
            assert_eq!(
                status.target_url.as_deref(),
                Some("https://ci.example.org/jobs/5")
            );
        }
    }

    #[test]
    fn cancelled_job_of_superseded_evaluation_should_say_by_what() {
        let eval = EvalInput::test(1, SHA_A)
            .superseded_by(Some(NEXT))
            .job(JobInput::test(5, "x.y").state(JobState::Cancelled));
        let status = only_status(&settings(), eval.clone(), "reconix/x.y");
        assert_eq!(status.state, StatusState::Cancelled);
        assert_eq!(
            status.description.as_deref(),
            Some("superseded by 01234567")
        );

        let eval = EvalInput {
            superseded_by_rev: None,
            ..eval
        };
        let status = only_status(&settings(), eval, "reconix/x.y");
        assert_eq!(status.description.as_deref(), Some("superseded"));
    }

    #[test]
    fn each_evaluation_state_should_map_to_its_status() {
        let e = || EvalInput::test(3, SHA_A);
        let cases = [
            (
                e().state(EvaluationState::Queued),
                StatusState::Pending,
                "queued",
            ),
            (
                e().state(EvaluationState::Evaluating),
                StatusState::Running,
                "evaluating",
            ),
            (
                e().jobs(2, JobState::Queued),
                StatusState::Success,
                "2 jobs",
            ),
            (
                e().state(EvaluationState::Finished)
                    .jobs(1, JobState::Succeeded),
                StatusState::Success,
                "1 job",
            ),
            (
                e().state(EvaluationState::Finished)
                    .jobs(1, JobState::Succeeded)
                    .jobs(2, JobState::EvalFailed),
                StatusState::Success,
                "3 jobs, 2 failed to evaluate",
            ),
            (
                e().state(EvaluationState::Failed)
                    .error("error: flake.nix:3: syntax error\n   at line 3"),
                StatusState::Failure,
                "evaluation failed: error: flake.nix:3: syntax error",
            ),
            (
                e().state(EvaluationState::Failed),
                StatusState::Failure,
                "evaluation failed",
            ),
            (
                e().superseded_by(Some(NEXT)),
                StatusState::Cancelled,
                "superseded by 01234567",
            ),
            (
                e().superseded_by(None),
                StatusState::Cancelled,
                "superseded",
            ),
        ];
        for (eval, state, description) in cases {
            assert_eq!(
                eval_post(eval.clone()),
                (state, description.to_owned()),
                "{eval:?}"
            );
        }
        let status = only_status(&settings(), e(), "reconix/eval");
        assert_eq!(
            status.target_url.as_deref(),
            Some("https://ci.example.org/evaluations/3")
        );
    }

    #[test]
    fn evaluation_at_the_threshold_should_post_one_status_per_job() {
        let eval = EvalInput::test(1, SHA_A).jobs(3, JobState::Queued);
        let plan = plan_inputs(&settings(), &observed(vec![eval]), at(0));
        let contexts: Vec<&str> = statuses(&plan).iter().map(|s| s.1).collect();
        assert_eq!(
            contexts,
            [
                "reconix/eval",
                "reconix/pkg-00000",
                "reconix/pkg-00001",
                "reconix/pkg-00002"
            ]
        );
    }

    #[test]
    fn evaluation_above_the_threshold_should_collapse_into_a_summary() {
        let eval = EvalInput::test(1, SHA_A)
            .jobs(2, JobState::Succeeded)
            .jobs(1, JobState::Failed)
            .jobs(1, JobState::Building);
        let plan = plan_inputs(&settings(), &observed(vec![eval]), at(0));
        assert_eq!(
            statuses(&plan),
            [
                (SHA_A, "reconix/eval", StatusState::Success, "4 jobs"),
                (
                    SHA_A,
                    "reconix/summary",
                    StatusState::Running,
                    "2/4 built, 1 failed, 1 running"
                ),
            ]
        );
        let Step::Post { status, .. } = &plan.steps[1] else {
            panic!("expected a status");
        };
        assert_eq!(
            status.target_url.as_deref(),
            Some("https://ci.example.org/evaluations/1")
        );
    }

    #[test]
    fn summary_state_should_follow_the_jobs() {
        let e = || EvalInput::test(1, SHA_A);
        let cases = [
            (e().jobs(4, JobState::Queued), StatusState::Pending),
            (
                e().jobs(3, JobState::Queued).jobs(1, JobState::Succeeded),
                StatusState::Running,
            ),
            (
                e().jobs(3, JobState::Failed).jobs(1, JobState::Building),
                StatusState::Running,
            ),
            (
                e().jobs(3, JobState::Succeeded).jobs(1, JobState::Failed),
                StatusState::Failure,
            ),
            (
                e().jobs(3, JobState::Succeeded)
                    .jobs(1, JobState::DependencyFailed),
                StatusState::Failure,
            ),
            (
                e().jobs(3, JobState::Succeeded)
                    .jobs(1, JobState::EvalFailed),
                StatusState::Failure,
            ),
            (
                e().jobs(3, JobState::Cancelled).jobs(1, JobState::Failed),
                StatusState::Failure,
            ),
            (
                e().jobs(3, JobState::Succeeded)
                    .jobs(1, JobState::Cancelled),
                StatusState::Cancelled,
            ),
            (
                e().superseded_by(Some(NEXT)).jobs(4, JobState::Succeeded),
                StatusState::Cancelled,
            ),
            (e().jobs(4, JobState::Succeeded), StatusState::Success),
        ];
        for (eval, state) in cases {
            let status = only_status(&settings(), eval.clone(), "reconix/summary");
            assert_eq!(status.state, state, "{eval:?}");
        }
    }

    #[test]
    fn collapsed_summary_on_github_should_create_a_check_run() {
        let eval = EvalInput::test(1, SHA_A)
            .jobs(3, JobState::Succeeded)
            .job(JobInput::test(9, "broken").state(JobState::Failed));
        let plan = plan_inputs(&github(), &observed(vec![eval]), at(0));
        assert_eq!(plan.steps.len(), 2);
        assert!(
            matches!(&plan.steps[0], Step::Post { status, .. } if status.context == "reconix/eval")
        );
        let Step::CreateCheckRun {
            sha,
            context,
            state,
            spec,
        } = &plan.steps[1]
        else {
            panic!("expected a check run, got {:?}", plan.steps[1]);
        };
        assert_eq!(sha, SHA_A);
        assert_eq!(context, "reconix/summary");
        assert_eq!(*state, StatusState::Failure);
        assert_eq!(spec.name, "reconix/summary");
        assert_eq!(spec.head_sha, SHA_A);
        assert_eq!(spec.status, CheckStatus::Completed);
        assert_eq!(spec.conclusion, Some(CheckConclusion::Failure));
        assert_eq!(
            spec.details_url.as_deref(),
            Some("https://ci.example.org/evaluations/1")
        );
        let output = spec.output.as_ref().unwrap();
        assert_eq!(output.title, "3/4 built, 1 failed");
        assert!(
            output
                .summary
                .contains("[broken](https://ci.example.org/jobs/9): build failed")
        );
    }

    #[test]
    fn check_status_should_map_every_state() {
        assert_eq!(
            check_status(StatusState::Pending),
            (CheckStatus::Queued, None)
        );
        assert_eq!(
            check_status(StatusState::Running),
            (CheckStatus::InProgress, None)
        );
        assert_eq!(
            check_status(StatusState::Success),
            (CheckStatus::Completed, Some(CheckConclusion::Success))
        );
        assert_eq!(
            check_status(StatusState::Cancelled),
            (CheckStatus::Completed, Some(CheckConclusion::Cancelled))
        );
    }

    #[test]
    fn changed_summary_with_a_known_check_run_should_update_it() {
        let s = github();
        let before = observed(vec![EvalInput::test(1, SHA_A).jobs(4, JobState::Queued)]);
        let mut after = observed(vec![
            EvalInput::test(1, SHA_A)
                .jobs(3, JobState::Queued)
                .jobs(1, JobState::Building),
        ]);
        after.posted = posted_all(&s, &before, at(0));
        let plan = plan_inputs(&s, &after, at(60));
        let [
            Step::UpdateCheckRun {
                sha,
                context,
                state,
                id,
                spec,
            },
        ] = plan.steps.as_slice()
        else {
            panic!("expected one update, got {:?}", plan.steps);
        };
        assert_eq!((sha.as_str(), context.as_str()), (SHA_A, "reconix/summary"));
        assert_eq!(*id, 99);
        assert_eq!(*state, StatusState::Running);
        assert_eq!(spec.status, CheckStatus::InProgress);
        assert_eq!(
            spec.output.as_ref().map(|o| o.title.as_str()),
            Some("0/4 built, 1 running, 3 queued")
        );
    }

    #[test]
    fn summary_posted_as_a_status_should_get_a_new_check_run() {
        let s = github();
        let eval = EvalInput::test(1, SHA_A).jobs(4, JobState::Queued);
        let mut obs = observed(vec![eval.clone()]);
        obs.posted = posted_all(&settings(), &obs, at(0));
        obs.evaluations = vec![EvalInput {
            jobs: eval
                .jobs
                .iter()
                .cloned()
                .map(|j| j.state(JobState::Succeeded))
                .collect(),
            ..eval
        }];
        let plan = plan_inputs(&s, &obs, at(60));
        assert!(
            matches!(plan.steps.as_slice(), [Step::CreateCheckRun { .. }]),
            "{:?}",
            plan.steps
        );
    }

    #[test]
    fn unchanged_statuses_should_plan_no_steps() {
        for s in [settings(), github()] {
            let mut obs = observed(vec![
                EvalInput::test(1, SHA_A).jobs(2, JobState::Succeeded),
                EvalInput::test(2, SHA_B).jobs(9, JobState::Building),
            ]);
            obs.posted = posted_all(&s, &obs, at(0));
            assert_eq!(
                plan_inputs(&s, &obs, at(100)),
                StatusPlan {
                    steps: Vec::new(),
                    wake_after: None
                }
            );
        }
    }

    #[test]
    fn check_run_should_be_compared_by_state_and_description_only() {
        let s = github();
        let mut obs = observed(vec![EvalInput::test(1, SHA_A).jobs(4, JobState::Queued)]);
        obs.posted = posted_all(&s, &obs, at(0));
        for p in &mut obs.posted {
            if p.context == "reconix/summary" {
                p.target_url = None;
            }
        }
        assert!(plan_inputs(&s, &obs, at(100)).steps.is_empty());
    }

    #[test]
    fn changed_target_url_should_be_posted_again() {
        let s = settings();
        let mut obs = observed(vec![EvalInput::test(1, SHA_A)]);
        obs.posted = posted_all(&s, &obs, at(0));
        obs.posted[0].target_url = Some("https://old.example.org/evaluations/1".to_owned());
        assert_eq!(plan_inputs(&s, &obs, at(100)).steps.len(), 1);
    }

    #[test]
    fn first_post_of_a_commit_should_be_immediate() {
        let plan = plan_inputs(
            &settings(),
            &observed(vec![
                EvalInput::test(1, SHA_A).state(EvaluationState::Queued),
            ]),
            at(0),
        );
        assert_eq!(
            statuses(&plan),
            [(SHA_A, "reconix/eval", StatusState::Pending, "queued")]
        );
        assert_eq!(plan.wake_after, None);
    }

    #[test]
    fn change_within_the_debounce_window_should_wait_for_its_end() {
        let s = settings();
        let before = observed(vec![
            EvalInput::test(1, SHA_A).state(EvaluationState::Queued),
        ]);
        let mut obs = observed(vec![
            EvalInput::test(1, SHA_A).state(EvaluationState::Evaluating),
        ]);
        obs.posted = posted_all(&s, &before, at(100));
        let plan = plan_inputs(&s, &obs, Timestamp(103_500));
        assert!(plan.steps.is_empty());
        assert_eq!(plan.wake_after, Some(Duration::from_millis(6_500)));
    }

    #[test]
    fn change_after_the_debounce_window_should_be_posted() {
        let s = settings();
        let before = observed(vec![
            EvalInput::test(1, SHA_A).state(EvaluationState::Queued),
        ]);
        let mut obs = observed(vec![
            EvalInput::test(1, SHA_A).state(EvaluationState::Evaluating),
        ]);
        obs.posted = posted_all(&s, &before, at(100));
        let plan = plan_inputs(&s, &obs, at(110));
        assert_eq!(
            statuses(&plan),
            [(SHA_A, "reconix/eval", StatusState::Running, "evaluating")]
        );
        assert_eq!(plan.wake_after, None);
    }

    #[test]
    fn debounce_should_use_the_newest_post_of_the_commit_and_the_shortest_wait() {
        let s = settings();
        let before = observed(vec![
            EvalInput::test(1, SHA_A).state(EvaluationState::Queued),
            EvalInput::test(2, SHA_B).state(EvaluationState::Queued),
            EvalInput::test(3, "cccccccccccccccccccccccccccccccccccccccc")
                .state(EvaluationState::Queued),
        ]);
        let mut obs = before.clone();
        for e in &mut obs.evaluations {
            e.state = EvaluationState::Evaluating;
        }
        obs.posted = posted_all(&s, &before, at(100));
        // SHA_A: rows at 96 and 98; the newer one sets the window (ends at 108, wait 4 s).
        obs.posted.push(PostedStatus {
            context: "reconix/other".to_owned(),
            posted_at: at(98),
            ..obs.posted[0].clone()
        });
        obs.posted[0].posted_at = at(96);
        // SHA_B: window ended at 100, so it posts; the third sha's ends at 110 (wait 6 s).
        obs.posted[1].posted_at = at(90);
        let plan = plan_inputs(&s, &obs, at(104));
        assert_eq!(
            statuses(&plan),
            [(SHA_B, "reconix/eval", StatusState::Running, "evaluating")]
        );
        assert_eq!(plan.wake_after, Some(Duration::from_secs(4)));
    }

    #[test]
    fn untrusted_pull_request_should_wait_for_a_trusted_push() {
        let mut obs = observed(vec![
            EvalInput::test(1, SHA_B).state(EvaluationState::Queued),
        ]);
        obs.untrusted = vec![
            UntrustedPr {
                sha: SHA_A.to_owned(),
                number: 12,
                author: "mallory".to_owned(),
            },
            // Its commit is evaluated (e.g. also pushed to a branch): the evaluation speaks.
            UntrustedPr {
                sha: SHA_B.to_owned(),
                number: 13,
                author: "eve".to_owned(),
            },
        ];
        let plan = plan_inputs(&settings(), &obs, at(0));
        assert_eq!(
            plan.steps,
            [
                Step::Post {
                    sha: SHA_A.to_owned(),
                    status: CommitStatus {
                        state: StatusState::Pending,
                        context: "reconix/eval".to_owned(),
                        description: Some(
                            "waiting for a trusted push: mallory may not write to this repository"
                                .to_owned()
                        ),
                        target_url: Some("https://ci.example.org/".to_owned()),
                    },
                },
                Step::Post {
                    sha: SHA_B.to_owned(),
                    status: CommitStatus {
                        state: StatusState::Pending,
                        context: "reconix/eval".to_owned(),
                        description: Some("queued".to_owned()),
                        target_url: Some("https://ci.example.org/evaluations/1".to_owned()),
                    },
                },
            ]
        );
    }

    #[test]
    fn highest_evaluation_id_should_speak_for_a_commit() {
        let branch = EvalInput::test(7, SHA_A).jobs(1, JobState::Succeeded);
        let pr = EvalInput {
            git_ref: "refs/pull/4/head".to_owned(),
            ..EvalInput::test(9, SHA_A).jobs(1, JobState::Failed)
        };
        for evaluations in [
            vec![branch.clone(), pr.clone()],
            vec![pr.clone(), branch.clone()],
        ] {
            let plan = plan_inputs(&settings(), &observed(evaluations), at(0));
            let Step::Post { status, .. } = &plan.steps[0] else {
                panic!("expected a status");
            };
            assert_eq!(
                status.target_url.as_deref(),
                Some("https://ci.example.org/evaluations/9")
            );
            assert_eq!(plan.steps.len(), 2);
            assert!(matches!(
                &plan.steps[1],
                Step::Post { status, .. } if status.state == StatusState::Failure
            ));
        }
    }

    #[test]
    fn steps_should_be_ordered_by_sha_then_eval_then_attr() {
        let obs = observed(vec![
            EvalInput::test(2, SHA_B)
                .job(JobInput::test(1, "z"))
                .job(JobInput::test(2, "a")),
            EvalInput::test(1, SHA_A).job(JobInput::test(3, "m")),
        ]);
        let plan = plan_inputs(&settings(), &obs, at(0));
        let order: Vec<(&str, &str)> = statuses(&plan).iter().map(|s| (s.0, s.1)).collect();
        assert_eq!(
            order,
            [
                (SHA_A, "reconix/eval"),
                (SHA_A, "reconix/m"),
                (SHA_B, "reconix/eval"),
                (SHA_B, "reconix/a"),
                (SHA_B, "reconix/z"),
            ]
        );
    }

    #[test]
    fn commits_should_be_planned_independently() {
        let s = settings();
        let a = EvalInput::test(1, SHA_A).jobs(2, JobState::Building);
        let b = EvalInput::test(2, SHA_B).jobs(5, JobState::Failed);
        let alone = plan_inputs(&s, &observed(vec![a.clone()]), at(0));
        let together = plan_inputs(&s, &observed(vec![a, b]), at(0));
        let of_a: Vec<&Step> = together
            .steps
            .iter()
            .filter(|st| matches!(st, Step::Post { sha, .. } if sha == SHA_A))
            .collect();
        assert_eq!(of_a, alone.steps.iter().collect::<Vec<_>>());
    }

    #[test]
    fn descriptions_should_never_exceed_140_characters() {
        let long = "é🦀x".repeat(200);
        let obs = Inputs {
            evaluations: vec![
                EvalInput::test(1, SHA_A)
                    .state(EvaluationState::Failed)
                    .error(&long),
                EvalInput::test(2, SHA_B)
                    .job(JobInput::test(1, "a").state(JobState::Failed).error(&long))
                    .job(JobInput::test(2, "b").failed_dependency(&long))
                    .job(
                        JobInput::test(3, "c")
                            .state(JobState::EvalFailed)
                            .error(&long),
                    ),
                EvalInput::test(3, "cccccccccccccccccccccccccccccccccccccccc")
                    .superseded_by(Some(&long))
                    .job(JobInput::test(4, "d").state(JobState::Cancelled)),
                EvalInput::test(4, "dddddddddddddddddddddddddddddddddddddddd")
                    .jobs(10, JobState::Failed),
            ],
            untrusted: vec![UntrustedPr {
                sha: "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee".to_owned(),
                number: 1,
                author: long.clone(),
            }],
            posted: Vec::new(),
        };
        for s in [settings(), github()] {
            let all = desired(&s, &obs);
            assert_eq!(all.len(), 10);
            for d in all {
                let text = d.description.unwrap_or_default();
                assert!(
                    text.chars().count() <= 140,
                    "{} chars: {text}",
                    text.chars().count()
                );
                if let DesiredKind::CheckRun { spec } = d.kind {
                    assert_eq!(spec.output.map(|o| o.title), Some(text));
                }
            }
        }
        assert_eq!(truncate("x".repeat(141)), format!("{}…", "x".repeat(139)));
        assert_eq!(truncate("x".repeat(140)), "x".repeat(140));
    }

    #[test]
    fn collapsed_evaluation_of_10000_jobs_should_post_at_most_2_calls_per_window() {
        const JOBS: usize = 10_000;
        const WINDOWS: i64 = 20;
        const TICKS: i64 = 10; // one plan per second; debounce is 10 seconds
        let s = Settings {
            collapse_threshold: 100,
            ..github()
        };
        let mut eval = EvalInput::test(1, SHA_A).state(EvaluationState::Queued);
        let mut posted: Vec<PostedStatus> = Vec::new();
        let mut calls_per_window = Vec::new();
        let mut started = 0;

        for window in 0..WINDOWS {
            let mut calls = 0;
            for tick in 0..TICKS {
                let now = at(window * TICKS + tick);
                match (window, tick) {
                    (0, 3) => eval.state = EvaluationState::Evaluating,
                    (1, 0) => {
                        eval.state = EvaluationState::Building;
                        eval = eval.jobs(JOBS, JobState::Queued);
                    }
                    _ if window >= 1 => {
                        // Each tick, 60 queued jobs start and earlier ones finish; every
                        // 97th job fails, every 89th finished one depends on a failure.
                        for _ in 0..60 {
                            if started < JOBS {
                                eval.jobs[started].state = JobState::Building;
                                started += 1;
                            }
                        }
                        for (i, job) in eval.jobs.iter_mut().enumerate() {
                            if job.state == JobState::Building && i + 90 < started {
                                job.state = if i % 97 == 0 {
                                    JobState::Failed
                                } else if i % 89 == 0 {
                                    JobState::DependencyFailed
                                } else {
                                    JobState::Succeeded
                                };
                            }
                        }
                    }
                    _ => {}
                }
                let obs = Inputs {
                    evaluations: vec![eval.clone()],
                    untrusted: Vec::new(),
                    posted: posted.clone(),
                };
                let plan = plan_inputs(&s, &obs, now);
                calls += plan.steps.len();
                if let Some(wake) = plan.wake_after {
                    assert!(wake <= s.debounce && wake > Duration::ZERO);
                }
                apply(&plan.steps, &mut posted, now);
            }
            calls_per_window.push(calls);
        }
        // The summary really rolls: nearly every window carries an update.
        assert!(
            calls_per_window.iter().sum::<usize>() >= 15,
            "{calls_per_window:?}"
        );
        assert!(
            calls_per_window.iter().all(|&c| c <= 2),
            "{calls_per_window:?}"
        );
        assert!(calls_per_window.iter().all(|&c| c <= 5));

        // Finish everything; after one more window the final statuses are posted, then nothing.
        for (i, job) in eval.jobs.iter_mut().enumerate() {
            if !job.state.is_terminal() {
                job.state = if i % 97 == 0 {
                    JobState::Failed
                } else {
                    JobState::Succeeded
                };
            }
        }
        eval.state = EvaluationState::Finished;
        let end = at(WINDOWS * TICKS + 10);
        let obs = |posted: &[PostedStatus]| Inputs {
            evaluations: vec![eval.clone()],
            untrusted: Vec::new(),
            posted: posted.to_vec(),
        };
        let last = plan_inputs(&s, &obs(&posted), end);
        assert!(last.steps.len() <= 2);
        apply(&last.steps, &mut posted, end);
        // Nothing left to post: the finished evaluation is settled.
        assert_eq!(
            plan_inputs(&s, &obs(&posted), end.plus(s.debounce)).steps,
            [Step::Settle {
                evaluation: EvaluationId(1)
            }]
        );

        let failing = Counts::of(&eval.jobs).failing();
        let summary = posted
            .iter()
            .find(|p| p.context == "reconix/summary")
            .unwrap();
        assert_eq!(summary.state, PostedState::Failure);
        assert_eq!(
            summary.description.as_deref(),
            Some(format!("{}/10000 built, {failing} failed", JOBS - failing).as_str())
        );
        assert!(summary.check_run_id.is_some());
        let eval_status = posted.iter().find(|p| p.context == "reconix/eval").unwrap();
        assert_eq!(eval_status.state, PostedState::Success);
        assert_eq!(eval_status.description.as_deref(), Some("10000 jobs"));
        assert_eq!(posted.len(), 2, "no per-job statuses in collapsed mode");
        // One check run, created once and then updated.
        assert!(posted.iter().filter(|p| p.check_run_id.is_some()).count() == 1);
    }

    #[test]
    fn untrusted_commit_with_several_pull_requests_should_name_the_lowest_numbered_author() {
        let obs = Inputs {
            untrusted: vec![
                UntrustedPr {
                    sha: SHA_A.to_owned(),
                    number: 20,
                    author: "eve".to_owned(),
                },
                UntrustedPr {
                    sha: SHA_A.to_owned(),
                    number: 3,
                    author: "mallory".to_owned(),
                },
            ],
            ..Inputs::default()
        };
        let all = desired(&settings(), &obs);
        assert_eq!(all.len(), 1);
        assert_eq!(
            all[0].description.as_deref(),
            Some("waiting for a trusted push: mallory may not write to this repository")
        );
    }

    /// Tests of [`plan`] itself: the gate, and the decisions made on the observed rows.
    mod observed_rows {

        use reconix_spec::AttrPath;
        use reconix_status::{Evaluation, Job, RepoId};

        use super::*;
        use crate::testing::pull_request as pr;

        fn spec(repo_yaml: &str) -> Spec {
            let yaml = format!(
                "external-url: https://ci.example.org\nforges:\n  gh:\n    kind: gitea\n    api-url: https://git.example.org/api/v1\n    token-file: /t\n    webhook-secret-file: /s\n    repos:\n      a/b:\n{repo_yaml}"
            );
            reconix_spec::parse(&yaml, std::path::Path::new("t.yaml")).unwrap()
        }

        fn key() -> RepoKey {
            RepoKey::parse("gh/a/b").unwrap()
        }

        fn evaluation(id: i64, sha: &str, state: EvaluationState) -> ObservedEvaluation {
            ObservedEvaluation {
                evaluation: Evaluation {
                    id: EvaluationId(id),
                    repo_id: RepoId(1),
                    repo: key(),
                    ref_name: "refs/heads/main".to_owned(),
                    rev: sha.to_owned(),
                    flake_ref: "git+file:///m".to_owned(),
                    state,
                    error: None,
                    created_at: Timestamp(0),
                    started_at: None,
                    finished_at: None,
                    superseded_by: None,
                },
                superseded_by_rev: None,
                jobs: Vec::new(),
            }
        }

        fn job(id: i64, attr: &str, state: JobState, deps: &[i64]) -> Job {
            Job {
                id: JobId(id),
                evaluation_id: EvaluationId(1),
                attr: AttrPath::new(attr.to_owned()).unwrap(),
                name: attr.to_owned(),
                system: None,
                drv_path: None,
                outputs: reconix_spec::Outputs::new(),
                deps: deps.iter().map(|d| JobId(*d)).collect(),
                state,
                error: None,
                created_at: Timestamp(0),
                started_at: None,
                finished_at: None,
                constituents: None,
            }
        }

        fn observed(
            evaluations: Vec<ObservedEvaluation>,
            pull_requests: Vec<PullRequestRow>,
        ) -> Observed {
            Observed {
                evaluations,
                pull_requests,
                ..Observed::empty(Gate::Open)
            }
        }

        fn eval_contexts(plan: &Plan<Step>) -> Vec<(&str, Option<&str>)> {
            plan.steps
                .iter()
                .filter_map(|s| match s {
                    Step::Post { sha, status } if status.context == "reconix/eval" => {
                        Some((sha.as_str(), status.description.as_deref()))
                    }
                    _ => None,
                })
                .collect()
        }

        #[test]
        fn only_untrusted_pull_requests_should_wait_for_a_trusted_push() {
            let obs = observed(
                vec![evaluation(1, SHA_B, EvaluationState::Queued)],
                vec![
                    pr(1, SHA_A, "mallory", Some(false)),
                    // Evaluated commit: its evaluation speaks.
                    pr(2, SHA_B, "eve", Some(false)),
                    pr(
                        3,
                        "cccccccccccccccccccccccccccccccccccccccc",
                        "alice",
                        Some(true),
                    ),
                    pr(4, "dddddddddddddddddddddddddddddddddddddddd", "bob", None),
                    pr(
                        5,
                        "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee",
                        "renovate",
                        Some(false),
                    ),
                ],
            );
            let p = plan(
                &key(),
                &spec("        allowlist: [renovate]\n"),
                &obs,
                at(0),
            );
            assert_eq!(
                eval_contexts(&p),
                [
                    (
                        SHA_A,
                        Some(
                            "waiting for a trusted push: mallory may not write to this repository"
                        )
                    ),
                    (SHA_B, Some("queued")),
                ]
            );
        }

        #[test]
        fn dependency_failed_job_should_name_its_first_dependency_that_did_not_succeed() {
            let mut e = evaluation(1, SHA_A, EvaluationState::Building);
            e.jobs = vec![
                job(1, "ok", JobState::Succeeded, &[]),
                job(2, "broken", JobState::Failed, &[]),
                job(3, "also", JobState::DependencyFailed, &[1, 2]),
                job(4, "after", JobState::DependencyFailed, &[3, 2]),
                // Its dependency is not stored any more: no name to give.
                job(5, "orphan", JobState::DependencyFailed, &[99]),
            ];
            let inputs = inputs(&observed(vec![e], Vec::new()), &[]);
            let failed: Vec<(&str, Option<&str>)> = inputs.evaluations[0]
                .jobs
                .iter()
                .map(|j| (j.attr.as_str(), j.failed_dependency.as_deref()))
                .collect();
            assert_eq!(
                failed,
                [
                    ("ok", None),
                    ("broken", None),
                    ("also", Some("broken")),
                    ("after", Some("also")),
                    ("orphan", None),
                ]
            );
        }

        #[test]
        fn terminal_evaluation_should_settle_once_its_commit_shows_everything() {
            let s = spec("");
            let settings = super::super::settings(&s, ForgeKind::Gitea);
            let mut obs = observed(
                vec![
                    evaluation(1, SHA_A, EvaluationState::Finished),
                    evaluation(2, SHA_B, EvaluationState::Building),
                ],
                Vec::new(),
            );
            // Nothing posted yet: the finished evaluation's status goes out first.
            let first = plan(&key(), &s, &obs, at(0));
            assert!(
                !first
                    .steps
                    .iter()
                    .any(|st| matches!(st, Step::Settle { .. }))
            );
            obs.posted = posted_all(&settings, &inputs(&obs, &[]), at(0));
            let then = plan(&key(), &s, &obs, at(100));
            assert_eq!(
                then.steps,
                [Step::Settle {
                    evaluation: EvaluationId(1)
                }]
            );
            assert_eq!(then.then, Action::await_change());
        }

        #[test]
        fn older_terminal_evaluation_should_settle_when_a_newer_one_speaks_for_its_commit() {
            let s = spec("");
            let settings = super::super::settings(&s, ForgeKind::Gitea);
            let mut obs = observed(
                vec![
                    evaluation(1, SHA_A, EvaluationState::Superseded),
                    evaluation(2, SHA_A, EvaluationState::Building),
                ],
                Vec::new(),
            );
            obs.posted = posted_all(&settings, &inputs(&obs, &[]), at(0));
            assert_eq!(
                plan(&key(), &s, &obs, at(100)).steps,
                [Step::Settle {
                    evaluation: EvaluationId(1)
                }]
            );
        }

        #[test]
        fn debounced_commit_should_not_settle() {
            let s = spec("");
            let settings = super::super::settings(&s, ForgeKind::Gitea);
            let before = observed(
                vec![evaluation(1, SHA_A, EvaluationState::Evaluating)],
                Vec::new(),
            );
            let mut obs = observed(
                vec![evaluation(1, SHA_A, EvaluationState::Failed)],
                Vec::new(),
            );
            obs.posted = posted_all(&settings, &inputs(&before, &[]), at(100));
            // The eval status changed while the window is open: nothing posted, nothing settled.
            let p = plan(&key(), &s, &obs, at(101));
            assert!(p.steps.is_empty(), "{:?}", p.steps);
            assert_eq!(
                p.then,
                Action::requeue(settings.debounce - Duration::from_secs(1))
            );
        }

        #[test]
        fn closed_gate_should_plan_nothing() {
            let mut obs = observed(
                vec![evaluation(1, SHA_A, EvaluationState::Queued)],
                Vec::new(),
            );
            obs.gate = Gate::Wait(Duration::from_secs(7));
            let p = plan(&key(), &spec(""), &obs, at(0));
            assert!(p.steps.is_empty());
            assert_eq!(p.then, Action::requeue(Duration::from_secs(7)));
            obs.gate = Gate::Paused;
            let p = plan(&key(), &spec(""), &obs, at(0));
            assert!(p.steps.is_empty());
            assert_eq!(p.then, Action::await_change());
        }

        #[test]
        fn repository_gone_from_the_spec_should_plan_nothing() {
            let obs = observed(
                vec![evaluation(1, SHA_A, EvaluationState::Queued)],
                Vec::new(),
            );
            let other = RepoKey::parse("gh/c/d").unwrap();
            let p = plan(&other, &spec(""), &obs, at(0));
            assert!(p.steps.is_empty());
            assert_eq!(p.then, Action::await_change());
        }

        #[test]
        fn every_forge_state_should_be_recorded_under_its_own_name() {
            let all = [
                StatusState::Pending,
                StatusState::Running,
                StatusState::Success,
                StatusState::Failure,
                StatusState::Error,
                StatusState::Cancelled,
            ];
            let recorded: Vec<PostedState> = all.iter().map(|s| posted_state(*s)).collect();
            assert_eq!(recorded, PostedState::ALL);
            for s in all {
                assert_eq!(
                    serde_json::to_value(s).unwrap(),
                    posted_state(s).as_str(),
                    "{s:?}"
                );
            }
        }
    }
}
