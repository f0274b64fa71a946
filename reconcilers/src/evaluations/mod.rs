//! The `evaluations` loop: the newest head of every watched branch (and trusted pull request)
//! has an evaluation.
//!
//! Key: a repository. Observed: the branch heads — for `local` forges read from the git
//! checkout; for hosted forges those that webhooks and the `heads` loop recorded in the
//! database — the open pull requests recorded for hosted forges, and the repository's
//! evaluations. The plan adds the head of every pull request whose author is trusted
//! ([`Trust`]) to the branch heads. Steps: evaluate a head that has no finished evaluation yet
//! (hosted code is first fetched into a bare mirror, pull requests through the forge's PR ref),
//! and supersede an unfinished evaluation whose branch or pull request moved on or vanished
//! (cancel-on-push).
//!
//! `StartEvaluation` creates the row (idempotent on repo, ref and rev), moves it to
//! `evaluating` and starts the evaluation as a task of its own ([`run`]), tracked in the
//! loop's [`RunningEvaluations`] with a cancellation token, and returns: the loop is free
//! again at once, so a new push is planned while the old head still evaluates. The task
//! records what Nix streams (how many attributes are listed, the jobs as they are evaluated,
//! buildable ones waking the builds loop), then the final result; it ends the evaluation
//! `failed` when the timeout (`evaluation.timeout`, a repository's `eval-timeout`) passes.
//!
//! Supersede kills at once: `Supersede` (and `StopEvaluation`, for a running evaluation whose
//! row ended otherwise, e.g. cancelled through the API) cancel the task's token; the task then
//! returns from its next await, which drops the evaluation future and with it every evaluator
//! process. Observe reports which evaluations run in this process, so the plan neither starts
//! a running one again nor leaves a stopped one unfinished. A daemon killed mid-evaluation
//! evaluates again on restart: the row is still `queued` or `evaluating` with no task, which
//! this plan treats as "not done"; jobs it had streamed keep their ids. When the loop itself
//! goes away (shutdown), its running evaluations are stopped the same way.
//!
//! An evaluation that already reached `building` is superseded only once its successor on the
//! same ref has been evaluated (or the ref vanished): until then no job of the successor is
//! known, and superseding would make the builds loop cancel builds both commits share. The
//! same holds for an evaluation that timed out with jobs left to build: it stays `failed`, and
//! superseding it cancels those jobs.

use std::collections::BTreeMap;
use std::time::Duration;

use reconix_nixcli::EvalRequest;
use reconix_spec::{RepoKey, Spec, Timestamp};
use reconix_status::{EvaluationId, EvaluationState, PullRequestRow};
use serde::Serialize;
use tracing::info;

use crate::context::{Ctx, Ports};
use crate::git::{self, Head};
use crate::heads::builds_branch;
use crate::runtime::{Action, Plan, Reconciler};
use crate::trust::Trust;
use crate::{Error, Result};

mod record;
mod run;

pub use record::no_jobs_message;
pub use run::{RunningEvaluations, WRITE_INTERVAL};

/// The `evaluations` reconciler, with the evaluations it runs.
#[derive(Debug)]
pub struct Evaluations<P> {
    running: RunningEvaluations,
    heads: git::HeadsCache,
    ports: std::marker::PhantomData<fn() -> P>,
}

impl<P> Default for Evaluations<P> {
    fn default() -> Self {
        Self {
            running: RunningEvaluations::default(),
            heads: git::HeadsCache::default(),
            ports: std::marker::PhantomData,
        }
    }
}

impl<P> Evaluations<P> {
    /// Creates the reconciler.
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns the evaluations this reconciler runs (tests watch them).
    pub fn running(&self) -> &RunningEvaluations {
        &self.running
    }
}

impl<P> Drop for Evaluations<P> {
    /// Stops the running evaluations: the loop is gone (shutdown), and a row left
    /// `evaluating` is evaluated again at the next start.
    fn drop(&mut self) {
        self.running.stop_all();
    }
}

/// What `observe` saw for one repository.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// Whether the repository is still in the spec.
    pub in_spec: bool,
    /// The local checkout path, or for hosted forges the mirror (for building flake references).
    pub path: Option<std::path::PathBuf>,
    /// For hosted forges: the URL the mirror is fetched from.
    pub fetch_url: Option<String>,
    /// Heads of the branches the spec asks for.
    pub heads: Vec<Head>,
    /// For hosted forges: the open pull requests as recorded, trusted or not.
    pub pull_requests: Vec<PullRequestRow>,
    /// Evaluations of this repository, oldest first.
    pub evaluations: Vec<ObservedEvaluation>,
}

/// The part of an evaluation row this loop looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedEvaluation {
    /// Its id.
    pub id: EvaluationId,
    /// The full ref name, e.g. `refs/heads/main`.
    pub git_ref: String,
    /// The commit.
    pub rev: String,
    /// Its state.
    pub state: EvaluationState,
    /// Whether this process is running it (its task is alive).
    pub running: bool,
    /// Whether it timed out (`failed`) with jobs still to build: those build on, and a new
    /// push supersedes it as it would a `building` one (its jobs are cancelled).
    pub timed_out_building: bool,
}

impl ObservedEvaluation {
    /// Whether it is still `queued` or `evaluating`.
    fn evaluating(&self) -> bool {
        self.state.is_evaluating()
    }

    /// Whether it has jobs to build: `building`, or timed out with some left.
    fn building(&self) -> bool {
        self.state == EvaluationState::Building || self.timed_out_building
    }
}

/// One step of the `evaluations` loop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
    /// Creates (if needed) and runs the evaluation of `rev` on `git_ref`.
    StartEvaluation {
        /// The full ref name.
        git_ref: String,
        /// The commit to evaluate.
        rev: String,
        /// The flake reference handed to Nix.
        flake_ref: String,
        /// For hosted forges: fetch the ref from this URL into the mirror first.
        fetch_url: Option<String>,
    },
    /// Marks an unfinished evaluation superseded, cancels its unfinished jobs and stops it
    /// if it runs.
    Supersede {
        /// The evaluation that lost its branch head.
        evaluation: EvaluationId,
        /// The newer evaluation's commit on the same ref, if the ref still exists.
        by_rev: Option<String>,
    },
    /// Stops a running evaluation whose row has ended by other means (cancelled through the
    /// API): its evaluator processes are killed.
    StopEvaluation {
        /// The evaluation.
        evaluation: EvaluationId,
    },
}

/// Returns the flake reference Nix evaluates for a commit of a local repository.
///
/// Nix 2.8 reads a non-bare checkout in place, so any commit in its object database works; `ref`
/// is passed too because bare mirrors need it (nix-lab §2).
///
/// Nix percent-decodes the path, so `%` (mirrors encode `/` in repo names as `%2F`), spaces,
/// `?` and `#` are percent-encoded.
pub fn local_flake_ref(path: &std::path::Path, git_ref: &str, rev: &str) -> String {
    let mut encoded = String::new();
    for c in path.display().to_string().chars() {
        match c {
            '%' => encoded.push_str("%25"),
            ' ' => encoded.push_str("%20"),
            '?' => encoded.push_str("%3F"),
            '#' => encoded.push_str("%23"),
            c => encoded.push(c),
        }
    }
    format!("git+file://{encoded}?ref={git_ref}&rev={rev}")
}

/// Returns the heads to evaluate: the observed branch heads, then the head of every open pull
/// request whose author is trusted, when the repository builds pull requests.
fn heads(key: &RepoKey, desired: &Spec, observed: &Observed) -> Vec<Head> {
    let mut heads = observed.heads.clone();
    if let Some((forge, repo)) = desired.repo(key).filter(|(_, repo)| repo.pull_requests) {
        heads.extend(
            observed
                .pull_requests
                .iter()
                .filter(|p| Trust::of_row(p, &repo.allowlist) == Trust::Trusted)
                .map(|p| Head {
                    git_ref: reconix_forge::pull_request_ref(forge.kind, p.number),
                    rev: p.head_sha.clone(),
                }),
        );
    }
    heads
}

/// Plans the `evaluations` loop for one repository (pure).
pub fn plan(key: &RepoKey, desired: &Spec, observed: &Observed, now: Timestamp) -> Plan<Step> {
    let _ = now;
    let poll = desired
        .forges
        .get(&key.forge)
        .map_or(Duration::from_secs(30), |f| f.poll_interval.to_std());
    let Some(path) = observed.path.as_deref().filter(|_| observed.in_spec) else {
        // Gone from the spec: nothing to start. Cleanup of its data belongs to `retention`.
        return Plan {
            steps: Vec::new(),
            then: Action::await_change(),
        };
    };
    let all_heads = heads(key, desired, observed);
    let heads: BTreeMap<&str, &str> = all_heads
        .iter()
        .map(|h| (h.git_ref.as_str(), h.rev.as_str()))
        .collect();
    // New heads are evaluated before old evaluations are superseded: superseding cancels the
    // old jobs, and the builds loop then cancels every running build no live job needs. Were the
    // old evaluation superseded first, a build both commits share would be cancelled and redone.
    let mut steps = Vec::new();
    for head in &all_heads {
        let done = observed.evaluations.iter().any(|e| {
            e.git_ref == head.git_ref && e.rev == head.rev && (e.running || !e.evaluating())
        });
        if !done {
            steps.push(Step::StartEvaluation {
                git_ref: head.git_ref.clone(),
                rev: head.rev.clone(),
                flake_ref: local_flake_ref(path, &head.git_ref, &head.rev),
                fetch_url: observed.fetch_url.clone(),
            });
        }
    }
    for e in observed
        .evaluations
        .iter()
        .filter(|e| e.evaluating() || e.building())
    {
        match heads.get(e.git_ref.as_str()) {
            Some(head) if *head == e.rev => {}
            // Its jobs keep building until the successor's jobs are known (module docs).
            Some(head)
                if e.building()
                    && !observed
                        .evaluations
                        .iter()
                        .any(|n| n.git_ref == e.git_ref && n.rev == *head && !n.evaluating()) => {}
            head => steps.push(Step::Supersede {
                evaluation: e.id,
                by_rev: head.map(|h| (*h).to_owned()),
            }),
        }
    }
    for e in observed.evaluations.iter().filter(|e| {
        e.running
            && matches!(
                e.state,
                EvaluationState::Failed | EvaluationState::Superseded
            )
    }) {
        steps.push(Step::StopEvaluation { evaluation: e.id });
    }
    Plan {
        steps,
        then: Action::requeue(poll),
    }
}

impl<P: Ports> Reconciler for Evaluations<P> {
    const NAME: &'static str = "evaluations";
    type Spec = Spec;
    type Context = Ctx<P>;
    type Key = RepoKey;
    type Observed = Observed;
    type Step = Step;
    type Error = Error;

    async fn keys(&self, spec: &Spec, _cx: &Ctx<P>) -> Result<Vec<RepoKey>> {
        Ok(spec.repos().map(|(key, _, _)| key).collect())
    }

    async fn observe(&self, key: &RepoKey, spec: &Spec, cx: &Ctx<P>) -> Result<Observed> {
        let repo_cfg = spec.repo(key);
        let mut fetch_url = None;
        let mut pull_requests = Vec::new();
        let (heads, path) = match repo_cfg {
            Some((forge, repo)) if forge.is_hosted() => {
                fetch_url = forge
                    .web_url_or_default()
                    .map(|web| format!("{web}/{}.git", key.repo));
                let (heads, prs) = hosted_heads(key, repo, cx).await?;
                pull_requests = prs;
                (heads, Some(mirror_path(&spec.state_dir, key)))
            }
            Some((_, repo)) => {
                let path = repo.path.clone().ok_or_else(|| Error::Config {
                    key: key.to_string(),
                    message: "local repo has no path".to_owned(),
                })?;
                let matches = |b: &str| repo.matches_branch(b);
                let wanted: Option<&(dyn Fn(&str) -> bool + Sync)> =
                    (!repo.branches.is_empty()).then_some(&matches);
                let heads = git::branch_heads(&self.heads, &path, wanted).await?;
                (heads, Some(path))
            }
            None => (Vec::new(), None),
        };
        // Taken before the rows: a task leaves the running set only after its last write, so
        // a row read as `evaluating` with no task here really has none.
        let running = self.running.ids();
        // Read-only: `reconix plan` observes through a read-only database.
        let k = key.clone();
        let (evaluations, timed_out) = cx
            .status
            .call(move |db| match db.repo_id(&k)? {
                Some(repo) => Ok((
                    db.evaluations_for_repo(repo)?,
                    db.timed_out_evaluations_building(repo)?,
                )),
                None => Ok((Vec::new(), Vec::new())),
            })
            .await?;
        Ok(Observed {
            in_spec: repo_cfg.is_some(),
            path,
            fetch_url,
            heads,
            pull_requests,
            evaluations: evaluations
                .into_iter()
                .map(|e| ObservedEvaluation {
                    id: e.id,
                    git_ref: e.ref_name,
                    rev: e.rev,
                    state: e.state,
                    running: running.contains(&e.id),
                    timed_out_building: timed_out.contains(&e.id),
                })
                .collect(),
        })
    }

    fn plan(key: &RepoKey, desired: &Spec, observed: &Observed, now: Timestamp) -> Plan<Step> {
        plan(key, desired, observed, now)
    }

    async fn apply(&self, key: &RepoKey, step: Step, cx: &Ctx<P>) -> Result<()> {
        match step {
            Step::Supersede { evaluation, by_rev } => {
                let k = key.clone();
                cx.status
                    .call(move |db| {
                        let now = Timestamp::now();
                        let repo = db.upsert_repo(&k)?;
                        let by = by_rev.and_then(|rev| {
                            db.evaluations_for_repo(repo)
                                .ok()?
                                .into_iter()
                                .rev()
                                .find(|e| e.rev == rev)
                                .map(|e| e.id)
                        });
                        // Both calls cancel the evaluation's unfinished jobs in the same
                        // transaction; a branch that vanished has no successor to name. One
                        // that timed out stays `failed`: only the jobs it left are cancelled.
                        let superseded = match by {
                            Some(by) => db.supersede_evaluation(evaluation, by, now),
                            None => db.set_evaluation_state(
                                evaluation,
                                EvaluationState::Superseded,
                                None,
                                now,
                            ),
                        }?;
                        if !superseded {
                            db.cancel_evaluation_jobs(evaluation, now)?;
                        }
                        Ok(())
                    })
                    .await?;
                self.running.stop(evaluation);
                info!(repo = %key, evaluation = %evaluation, "evaluation superseded");
                cx.wakers.builds();
                cx.wakers.statuses(key.clone());
                Ok(())
            }
            Step::StartEvaluation {
                git_ref,
                rev,
                flake_ref,
                fetch_url,
            } => {
                if let Some(url) = fetch_url {
                    fetch(key, &url, &git_ref, &rev, cx).await?;
                }
                start_evaluation(key, git_ref, rev, flake_ref, &self.running, cx).await
            }
            Step::StopEvaluation { evaluation } => {
                self.running.stop(evaluation);
                info!(repo = %key, evaluation = %evaluation, "evaluation stopped");
                Ok(())
            }
        }
    }
}

/// Returns the bare mirror of a hosted repository: `<state-dir>/mirrors/<forge>/<repo>.git`,
/// with `/` in the repo name (owner/name, GitLab groups) encoded as `%2F`.
pub fn mirror_path(state_dir: &std::path::Path, key: &RepoKey) -> std::path::PathBuf {
    state_dir
        .join("mirrors")
        .join(key.forge.as_str())
        .join(format!("{}.git", key.repo.as_str().replace('/', "%2F")))
}

/// Reads the heads of a hosted repository from the database: the built branches, and the open
/// pull requests as recorded (the plan decides which are trusted).
async fn hosted_heads<P: Ports>(
    key: &RepoKey,
    repo: &reconix_spec::Repo,
    cx: &Ctx<P>,
) -> Result<(Vec<Head>, Vec<PullRequestRow>)> {
    let k = key.clone();
    let (default_branch, refs, prs) = cx
        .status
        .call(move |db| match db.repo_id(&k)? {
            Some(id) => Ok((
                db.default_branch(id)?,
                db.refs(id)?,
                db.open_pull_requests(id)?,
            )),
            None => Ok((None, Vec::new(), Vec::new())),
        })
        .await?;
    let heads: Vec<Head> = refs
        .into_iter()
        .filter(|r| {
            r.name
                .strip_prefix("refs/heads/")
                .is_some_and(|b| builds_branch(repo, b, default_branch.as_deref()))
        })
        .map(|r| Head {
            git_ref: r.name,
            rev: r.rev,
        })
        .collect();
    Ok((heads, prs))
}

/// Fetches `git_ref` of a hosted repository into its mirror, authenticated with the forge's
/// token.
async fn fetch<P: Ports>(
    key: &RepoKey,
    url: &str,
    git_ref: &str,
    rev: &str,
    cx: &Ctx<P>,
) -> Result<()> {
    let spec = cx.spec();
    let forge = spec
        .forges
        .get(&key.forge)
        .ok_or_else(|| Error::config(key, "forge left the spec"))?;
    let auth = match &forge.token_file {
        Some(file) => Some(git::FetchAuth::for_kind(
            forge.kind,
            crate::forge_clients::read_secret(file, "token")?,
        )),
        None => None,
    };
    let mirror = mirror_path(&spec.state_dir, key);
    info!(repo = %key, %git_ref, %rev, "fetching");
    git::fetch_into_mirror(&mirror, url, auth.as_ref(), git_ref, rev).await
}

/// Creates the evaluation of `rev` (or finds it), moves it to `evaluating` and starts its task
/// ([`run`]) unless it runs already; returns without waiting for it.
async fn start_evaluation<P: Ports>(
    key: &RepoKey,
    git_ref: String,
    rev: String,
    flake_ref: String,
    running: &RunningEvaluations,
    cx: &Ctx<P>,
) -> Result<()> {
    let spec = cx.spec();
    let (_, repo_cfg) = spec
        .repo(key)
        .ok_or_else(|| Error::config(key, "repo left the spec"))?;
    let request = EvalRequest {
        flake_ref: flake_ref.clone(),
        systems: repo_cfg.systems.clone(),
        roots: repo_cfg.job_roots(),
        allow_import_from_derivation: spec.evaluation.allow_import_from_derivation,
    };
    let k = key.clone();
    let (r, f) = (git_ref.clone(), flake_ref.clone());
    let id = cx
        .status
        .call(move |db| {
            let now = Timestamp::now();
            let repo = db.upsert_repo(&k)?;
            db.record_ref(repo, &r, &rev, now)?;
            let (id, _) = db.insert_evaluation(repo, &r, &rev, &f, now)?;
            // Planned from an older observation, the evaluation may have been recorded since:
            // it is never evaluated again.
            let state = db.evaluation(id)?.map(|e| e.state);
            if !state.is_some_and(EvaluationState::is_evaluating) {
                return Ok(None);
            }
            db.set_evaluation_state(id, EvaluationState::Evaluating, None, now)?;
            Ok(Some(id))
        })
        .await?;
    let Some(id) = id else {
        return Ok(());
    };
    let Some(cancel) = running.start(id) else {
        // Planned from an observation taken before the task started: it runs already.
        return Ok(());
    };
    info!(repo = %key, evaluation = %id, flake = %flake_ref, "evaluating");
    cx.wakers.statuses(key.clone());
    let task = run::Run {
        id,
        key: key.clone(),
        request,
        repo: repo_cfg.clone(),
        timeout: repo_cfg.eval_timeout_or(spec.evaluation.timeout),
        nix: cx.ports.nix().clone(),
        status: cx.status.clone(),
        wakers: cx.wakers.clone(),
        running: running.clone(),
        cancel,
    };
    cx.tasks.spawn(task.run());
    Ok(())
}

#[cfg(test)]
mod tests {
    use reconix_spec::AttrPath;
    use reconix_status::{JobState, NewJob};

    use super::*;

    fn spec() -> Spec {
        reconix_spec::parse(
            "forges:\n  here:\n    kind: local\n    poll-interval: 5s\n    repos:\n      demo:\n        path: /srv/demo\n        branches: [main]\n",
            std::path::Path::new("test.yaml"),
        )
        .unwrap()
    }

    fn key() -> RepoKey {
        RepoKey::parse("here/demo").unwrap()
    }

    fn head(rev: &str) -> Head {
        Head {
            git_ref: "refs/heads/main".to_owned(),
            rev: rev.to_owned(),
        }
    }

    fn eval(id: i64, rev: &str, state: EvaluationState) -> ObservedEvaluation {
        ObservedEvaluation {
            id: EvaluationId(id),
            git_ref: "refs/heads/main".to_owned(),
            rev: rev.to_owned(),
            state,
            running: false,
            timed_out_building: false,
        }
    }

    fn observed(heads: Vec<Head>, evaluations: Vec<ObservedEvaluation>) -> Observed {
        Observed {
            in_spec: true,
            path: Some("/srv/demo".into()),
            fetch_url: None,
            heads,
            pull_requests: Vec::new(),
            evaluations,
        }
    }

    #[test]
    fn new_head_should_start_an_evaluation_and_poll_again() {
        let p = plan(
            &key(),
            &spec(),
            &observed(vec![head("aaa")], vec![]),
            Timestamp(0),
        );
        assert_eq!(
            p.steps,
            vec![Step::StartEvaluation {
                git_ref: "refs/heads/main".into(),
                rev: "aaa".into(),
                flake_ref: "git+file:///srv/demo?ref=refs/heads/main&rev=aaa".into(),
                fetch_url: None,
            }]
        );
        assert_eq!(p.then, Action::requeue(Duration::from_secs(5)));
    }

    #[test]
    fn evaluated_head_should_need_nothing() {
        for state in [
            EvaluationState::Building,
            EvaluationState::Finished,
            EvaluationState::Failed,
        ] {
            let o = observed(vec![head("aaa")], vec![eval(1, "aaa", state)]);
            assert!(
                plan(&key(), &spec(), &o, Timestamp(0)).steps.is_empty(),
                "{state:?}"
            );
        }
    }

    #[test]
    fn interrupted_evaluation_should_be_started_again() {
        for state in [EvaluationState::Queued, EvaluationState::Evaluating] {
            let o = observed(vec![head("aaa")], vec![eval(1, "aaa", state)]);
            let p = plan(&key(), &spec(), &o, Timestamp(0));
            assert!(
                matches!(&p.steps[..], [Step::StartEvaluation { rev, .. }] if rev == "aaa"),
                "{state:?}: {p:?}"
            );
        }
    }

    #[test]
    fn moved_head_should_evaluate_the_new_head_before_superseding_the_old_one() {
        // The old evaluation keeps building while the new head is evaluated…
        let o = observed(
            vec![head("bbb")],
            vec![eval(1, "aaa", EvaluationState::Building)],
        );
        let p = plan(&key(), &spec(), &o, Timestamp(0));
        assert!(matches!(&p.steps[..], [Step::StartEvaluation { rev, .. }] if rev == "bbb"));
        let o = observed(
            vec![head("bbb")],
            vec![
                eval(1, "aaa", EvaluationState::Building),
                ObservedEvaluation {
                    running: true,
                    ..eval(2, "bbb", EvaluationState::Evaluating)
                },
            ],
        );
        assert!(plan(&key(), &spec(), &o, Timestamp(0)).steps.is_empty());
        // …and is superseded once the new one's jobs are known.
        let o = observed(
            vec![head("bbb")],
            vec![
                eval(1, "aaa", EvaluationState::Building),
                eval(2, "bbb", EvaluationState::Building),
            ],
        );
        let p = plan(&key(), &spec(), &o, Timestamp(0));
        assert_eq!(
            p.steps,
            vec![Step::Supersede {
                evaluation: EvaluationId(1),
                by_rev: Some("bbb".into())
            }]
        );
    }

    #[test]
    fn a_moved_head_should_supersede_a_running_evaluation_at_once() {
        let o = observed(
            vec![head("bbb")],
            vec![ObservedEvaluation {
                running: true,
                ..eval(1, "aaa", EvaluationState::Evaluating)
            }],
        );
        let p = plan(&key(), &spec(), &o, Timestamp(0));
        assert!(matches!(&p.steps[0], Step::StartEvaluation { rev, .. } if rev == "bbb"));
        assert_eq!(
            p.steps[1],
            Step::Supersede {
                evaluation: EvaluationId(1),
                by_rev: Some("bbb".into())
            }
        );
    }

    #[test]
    fn a_running_evaluation_should_not_be_started_again() {
        let o = observed(
            vec![head("aaa")],
            vec![ObservedEvaluation {
                running: true,
                ..eval(1, "aaa", EvaluationState::Evaluating)
            }],
        );
        assert!(plan(&key(), &spec(), &o, Timestamp(0)).steps.is_empty());
    }

    #[test]
    fn a_running_evaluation_whose_row_ended_should_be_stopped() {
        for state in [EvaluationState::Failed, EvaluationState::Superseded] {
            let o = observed(
                vec![head("aaa")],
                vec![ObservedEvaluation {
                    running: true,
                    ..eval(1, "aaa", state)
                }],
            );
            assert_eq!(
                plan(&key(), &spec(), &o, Timestamp(0)).steps,
                [Step::StopEvaluation {
                    evaluation: EvaluationId(1)
                }],
                "{state:?}"
            );
        }
    }

    #[test]
    fn finished_evaluation_should_not_be_superseded() {
        let o = observed(
            vec![head("bbb")],
            vec![eval(1, "aaa", EvaluationState::Finished)],
        );
        let p = plan(&key(), &spec(), &o, Timestamp(0));
        assert_eq!(p.steps.len(), 1);
        assert!(matches!(&p.steps[0], Step::StartEvaluation { .. }));
    }

    #[test]
    fn a_timed_out_evaluation_with_jobs_left_should_be_superseded_like_a_building_one() {
        let timed_out = ObservedEvaluation {
            timed_out_building: true,
            ..eval(1, "aaa", EvaluationState::Failed)
        };
        // Its head unchanged: nothing to do, its jobs build on.
        let o = observed(vec![head("aaa")], vec![timed_out.clone()]);
        assert!(plan(&key(), &spec(), &o, Timestamp(0)).steps.is_empty());
        // A push: the new head is evaluated first…
        let o = observed(vec![head("bbb")], vec![timed_out.clone()]);
        let p = plan(&key(), &spec(), &o, Timestamp(0));
        assert!(matches!(&p.steps[..], [Step::StartEvaluation { rev, .. }] if rev == "bbb"));
        // …then its jobs are cancelled.
        let o = observed(
            vec![head("bbb")],
            vec![timed_out, eval(2, "bbb", EvaluationState::Building)],
        );
        assert_eq!(
            plan(&key(), &spec(), &o, Timestamp(0)).steps,
            vec![Step::Supersede {
                evaluation: EvaluationId(1),
                by_rev: Some("bbb".into())
            }]
        );
        // One with nothing left to build is left alone.
        let o = observed(
            vec![head("bbb")],
            vec![
                eval(1, "aaa", EvaluationState::Failed),
                eval(2, "bbb", EvaluationState::Building),
            ],
        );
        assert!(plan(&key(), &spec(), &o, Timestamp(0)).steps.is_empty());
    }

    #[test]
    fn deleted_branch_should_supersede_without_a_successor() {
        let o = observed(vec![], vec![eval(1, "aaa", EvaluationState::Building)]);
        let p = plan(&key(), &spec(), &o, Timestamp(0));
        assert_eq!(
            p.steps,
            vec![Step::Supersede {
                evaluation: EvaluationId(1),
                by_rev: None
            }]
        );
    }

    #[test]
    fn hosted_heads_should_be_fetched_into_the_mirror_first() {
        let mut o = observed(vec![head("aaa")], vec![]);
        o.path = Some(mirror_path(
            std::path::Path::new("/var/lib/reconix"),
            &RepoKey::parse("gh/a/b").unwrap(),
        ));
        o.fetch_url = Some("https://github.com/a/b.git".to_owned());
        let p = plan(&key(), &spec(), &o, Timestamp(0));
        assert_eq!(
            p.steps,
            vec![Step::StartEvaluation {
                git_ref: "refs/heads/main".into(),
                rev: "aaa".into(),
                flake_ref:
                    "git+file:///var/lib/reconix/mirrors/gh/a%252Fb.git?ref=refs/heads/main&rev=aaa"
                        .into(),
                fetch_url: Some("https://github.com/a/b.git".into()),
            }]
        );
    }

    #[test]
    fn repo_gone_from_spec_should_plan_nothing() {
        let mut o = observed(vec![head("aaa")], vec![]);
        o.in_spec = false;
        let p = plan(&key(), &spec(), &o, Timestamp(0));
        assert!(p.steps.is_empty());
        assert_eq!(p.then, Action::await_change());
    }

    fn new_job(attr: &str, state: JobState) -> NewJob {
        NewJob {
            attr: AttrPath::new(attr).unwrap(),
            name: attr.to_owned(),
            system: None,
            drv_path: None,
            outputs: reconix_spec::Outputs::new(),
            deps: Vec::new(),
            required_features: Vec::new(),
            state,
            error: None,
            constituents: None,
            meta: reconix_spec::JobMeta::default(),
        }
    }

    #[test]
    fn no_jobs_should_fail_with_the_outputs_and_the_attributes_to_set() {
        let spec = spec();
        let (_, repo) = spec.repo(&key()).unwrap();
        let outputs: Vec<String> = ["hydraJobs", "lib", "overlays"].map(str::to_owned).to_vec();
        assert_eq!(
            no_jobs_message(repo, &[], &outputs).as_deref(),
            Some(
                "no jobs under packages, checks, devShells, nixosConfigurations for x86_64-linux; \
                 this flake has: hydraJobs, lib, overlays — set `attributes: [hydraJobs]`"
            )
        );
        let message = no_jobs_message(repo, &[], &["lib".to_owned()]).unwrap();
        assert!(message.ends_with("set `attributes` to the flake output paths that hold the jobs"));
        let skipped = [new_job("hydraJobs.a.aarch64-linux", JobState::Skipped)];
        let message = no_jobs_message(repo, &skipped, &[]).unwrap();
        assert!(message.contains("1 skipped"), "{message}");
        // One job to build or one eval-failed job is enough to say something.
        for state in [JobState::Queued, JobState::EvalFailed] {
            let jobs = [new_job("packages.x86_64-linux.a", state)];
            assert_eq!(no_jobs_message(repo, &jobs, &outputs), None, "{state}");
        }
    }

    use crate::testing::pull_request as pr;

    fn hosted_spec(repo_yaml: &str) -> Spec {
        let yaml = format!(
            "external-url: https://ci.example.org\nforges:\n  gl:\n    kind: gitlab\n    token-file: /t\n    webhook-secret-file: /s\n    poll-interval: 1m\n    repos:\n      a/b:\n{repo_yaml}"
        );
        reconix_spec::parse(&yaml, std::path::Path::new("t.yaml")).unwrap()
    }

    fn started(p: &Plan<Step>) -> Vec<(&str, &str)> {
        p.steps
            .iter()
            .filter_map(|s| match s {
                Step::StartEvaluation { git_ref, rev, .. } => {
                    Some((git_ref.as_str(), rev.as_str()))
                }
                Step::Supersede { .. } | Step::StopEvaluation { .. } => None,
            })
            .collect()
    }

    #[test]
    fn only_trusted_pull_requests_should_be_evaluated_through_their_ref() {
        let key = RepoKey::parse("gl/a/b").unwrap();
        let mut o = observed(vec![head("aaa")], vec![]);
        o.pull_requests = vec![
            pr(1, "p01", "alice", Some(true)),
            pr(2, "p02", "mallory", Some(false)),
            pr(3, "p03", "bob", None),
            pr(4, "p04", "renovate", Some(false)),
        ];
        let p = plan(
            &key,
            &hosted_spec("        allowlist: [renovate]\n"),
            &o,
            Timestamp(0),
        );
        assert_eq!(
            started(&p),
            [
                ("refs/heads/main", "aaa"),
                ("refs/merge-requests/1/head", "p01"),
                ("refs/merge-requests/4/head", "p04"),
            ]
        );
    }

    #[test]
    fn pull_request_whose_author_lost_trust_should_be_superseded() {
        let key = RepoKey::parse("gl/a/b").unwrap();
        let mut o = observed(
            vec![],
            vec![ObservedEvaluation {
                git_ref: "refs/merge-requests/2/head".to_owned(),
                ..eval(1, "p02", EvaluationState::Building)
            }],
        );
        o.pull_requests = vec![pr(2, "p02", "mallory", Some(false))];
        let p = plan(&key, &hosted_spec(""), &o, Timestamp(0));
        assert_eq!(
            p.steps,
            [Step::Supersede {
                evaluation: EvaluationId(1),
                by_rev: None
            }]
        );
    }

    #[test]
    fn pull_requests_should_not_be_evaluated_when_the_repo_does_not_build_them() {
        let key = RepoKey::parse("gl/a/b").unwrap();
        let mut o = observed(vec![], vec![]);
        o.pull_requests = vec![pr(1, "p01", "alice", Some(true))];
        let p = plan(
            &key,
            &hosted_spec("        pull-requests: false\n"),
            &o,
            Timestamp(0),
        );
        assert!(p.steps.is_empty(), "{:?}", p.steps);
    }
}
