//! The `statuses` loop: every commit the daemon evaluates carries forge statuses equal to the
//! observed state of its evaluation and jobs.
//!
//! Key: a repository on a hosted forge. Observed: its evaluations whose statuses are not settled
//! yet (with their jobs), its open pull requests waiting for a trusted push, and what was last
//! posted per commit and context. [`plan`](plan::plan) derives the desired statuses, keeps the
//! differences and batches them per commit (`statuses.debounce`). An evaluation is settled —
//! never looked at again — once it is terminal and everything it should show was posted.

pub mod plan;
mod summary;

use std::collections::{BTreeSet, HashMap};

use reconix_forge::{CheckRunSpec, CommitStatus, Forge as _, StatusState};
use reconix_spec::{ForgeKind, RepoKey, Spec, Timestamp};
use reconix_status::{EvaluationId, EvaluationState, JobState, PostedStatus};
use serde::Serialize;
use tracing::debug;

use self::plan::{EvalInput, JobInput, Posted, Settings, UntrustedPr};
use crate::context::{Ctx, Ports};
use crate::forge_clients::{Gate, gate, record_api_error};
use crate::runtime::{Action, Plan, Reconciler};
use crate::{Error, Result};

/// The `statuses` reconciler.
#[derive(Debug, Default)]
pub struct Statuses<P>(std::marker::PhantomData<fn() -> P>);

impl<P> Statuses<P> {
    /// Creates the reconciler.
    pub fn new() -> Self {
        Self(std::marker::PhantomData)
    }
}

/// What `observe` saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Whether the forge may be called.
    pub gate: Gate,
    /// The inputs of the pure plan.
    pub inputs: plan::Observed,
}

/// One step of the `statuses` loop.
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
    /// Creates a GitHub check run.
    CreateCheckRun {
        /// The commit.
        sha: String,
        /// Its name (recorded as the context).
        context: String,
        /// Its state in reconix's vocabulary.
        state: StatusState,
        /// What to send.
        spec: CheckRunSpec,
    },
    /// Updates a GitHub check run.
    UpdateCheckRun {
        /// The commit.
        sha: String,
        /// Its name.
        context: String,
        /// Its state in reconix's vocabulary.
        state: StatusState,
        /// The check run's id.
        id: u64,
        /// What to send.
        spec: CheckRunSpec,
    },
    /// Marks an evaluation's statuses final.
    Settle {
        /// The evaluation.
        evaluation: EvaluationId,
    },
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

fn state_text(state: StatusState) -> &'static str {
    match state {
        StatusState::Pending => "pending",
        StatusState::Running => "running",
        StatusState::Success => "success",
        StatusState::Failure => "failure",
        StatusState::Error => "error",
        StatusState::Cancelled => "cancelled",
    }
}

fn parse_state(text: &str) -> Option<StatusState> {
    Some(match text {
        "pending" => StatusState::Pending,
        "running" => StatusState::Running,
        "success" => StatusState::Success,
        "failure" => StatusState::Failure,
        "error" => StatusState::Error,
        "cancelled" => StatusState::Cancelled,
        _ => return None,
    })
}

fn is_terminal(state: EvaluationState) -> bool {
    matches!(
        state,
        EvaluationState::Finished | EvaluationState::Failed | EvaluationState::Superseded
    )
}

/// Plans the `statuses` loop for one repository (pure).
pub fn plan(key: &RepoKey, desired: &Spec, observed: &Observed, now: Timestamp) -> Plan<Step> {
    let Some((forge, _)) = desired.repo(key) else {
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
    let settings = settings(desired, forge.kind);
    let planned = plan::plan(&settings, &observed.inputs, now);
    let mut busy: BTreeSet<&str> = BTreeSet::new();
    let mut steps: Vec<Step> = planned
        .steps
        .into_iter()
        .map(|s| match s {
            plan::Step::Post { sha, status } => Step::Post { sha, status },
            plan::Step::CreateCheckRun {
                sha,
                context,
                state,
                spec,
            } => Step::CreateCheckRun {
                sha,
                context,
                state,
                spec,
            },
            plan::Step::UpdateCheckRun {
                sha,
                context,
                state,
                id,
                spec,
            } => Step::UpdateCheckRun {
                sha,
                context,
                state,
                id,
                spec,
            },
        })
        .collect();
    // A commit still differing (posted now or held by the debounce) is not settled.
    let pending: BTreeSet<String> = plan::desired(&settings, &observed.inputs)
        .into_iter()
        .filter(|d| {
            let posted = observed
                .inputs
                .posted
                .iter()
                .find(|p| p.sha == d.sha && p.context == d.context);
            !d.is_posted(posted)
        })
        .map(|d| d.sha)
        .collect();
    busy.extend(pending.iter().map(String::as_str));
    let settle: Vec<Step> = observed
        .inputs
        .evaluations
        .iter()
        .filter(|e| is_terminal(e.state) && !busy.contains(e.sha.as_str()))
        .map(|e| Step::Settle { evaluation: e.id })
        .collect();
    steps.extend(settle);
    Plan {
        steps,
        then: planned
            .wake_after
            .map_or(Action::await_change(), Action::requeue),
    }
}

impl<P: Ports> Reconciler for Statuses<P> {
    const NAME: &'static str = "statuses";
    type Spec = Spec;
    type Context = Ctx<P>;
    type Key = RepoKey;
    type Observed = Observed;
    type Step = Step;
    type Error = Error;

    async fn keys(&self, spec: &Spec, _cx: &Ctx<P>) -> Result<Vec<RepoKey>> {
        Ok(spec
            .repos()
            .filter(|(_, forge, _)| forge.kind != ForgeKind::Local)
            .map(|(key, _, _)| key)
            .collect())
    }

    async fn observe(&self, key: &RepoKey, spec: &Spec, cx: &Ctx<P>) -> Result<Observed> {
        let gate = gate(&cx.status, &key.forge, Timestamp::now()).await?;
        // Other loops wake this one for every repository; a local forge has no statuses.
        let hosted = spec
            .forges
            .get(&key.forge)
            .is_some_and(|f| f.kind != ForgeKind::Local);
        if !hosted {
            return Ok(Observed {
                gate,
                inputs: plan::Observed::default(),
            });
        }
        let allowlist: Vec<String> = spec
            .repo(key)
            .map(|(_, r)| r.allowlist.clone())
            .unwrap_or_default();
        let k = key.clone();
        let inputs = cx
            .status
            .call(move |db| {
                let Some(repo) = db.repo_id(&k)? else {
                    return Ok(plan::Observed::default());
                };
                let mut evaluations = Vec::new();
                for id in db.unsettled_evaluations(repo)? {
                    let Some(e) = db.evaluation(id)? else {
                        continue;
                    };
                    let superseded_by_rev = match e.superseded_by {
                        Some(by) => db.evaluation(by)?.map(|b| b.rev),
                        None => None,
                    };
                    let jobs = db.jobs_of_evaluation(id)?;
                    let by_id: HashMap<_, _> = jobs
                        .iter()
                        .map(|j| (j.id, (j.attr.as_str(), j.state)))
                        .collect();
                    let jobs = jobs
                        .iter()
                        .map(|j| JobInput {
                            id: j.id,
                            attr: j.attr.to_string(),
                            state: j.state,
                            error: j.error.clone(),
                            failed_dependency: (j.state == JobState::DependencyFailed)
                                .then(|| {
                                    j.deps.iter().find_map(|d| {
                                        by_id.get(d).and_then(|(attr, state)| {
                                            (*state != JobState::Succeeded)
                                                .then(|| (*attr).to_owned())
                                        })
                                    })
                                })
                                .flatten(),
                        })
                        .collect();
                    evaluations.push(EvalInput {
                        id: e.id,
                        sha: e.rev,
                        git_ref: e.ref_name,
                        state: e.state,
                        error: e.error,
                        superseded_by_rev,
                        jobs,
                    });
                }
                let evaluated: BTreeSet<String> =
                    evaluations.iter().map(|e| e.sha.clone()).collect();
                let untrusted: Vec<UntrustedPr> = db
                    .open_pull_requests(repo)?
                    .into_iter()
                    .filter(|p| {
                        p.author_can_write == Some(false)
                            && !p.author.as_ref().is_some_and(|a| allowlist.contains(a))
                            && !evaluated.contains(&p.head_sha)
                    })
                    .map(|p| UntrustedPr {
                        sha: p.head_sha,
                        number: p.number,
                        author: p.author.unwrap_or_default(),
                    })
                    .collect();
                let shas: Vec<String> = evaluated
                    .into_iter()
                    .chain(untrusted.iter().map(|u| u.sha.clone()))
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let posted = db
                    .posted_statuses(repo, &shas)?
                    .into_iter()
                    .filter_map(|p| {
                        Some(Posted {
                            state: parse_state(&p.state)?,
                            sha: p.sha,
                            context: p.context,
                            description: p.description,
                            target_url: p.target_url,
                            check_run_id: p.check_run_id,
                            posted_at: p.posted_at,
                        })
                    })
                    .collect();
                Ok(plan::Observed {
                    evaluations,
                    untrusted,
                    posted,
                })
            })
            .await?;
        Ok(Observed { gate, inputs })
    }

    fn plan(key: &RepoKey, desired: &Spec, observed: &Observed, now: Timestamp) -> Plan<Step> {
        plan(key, desired, observed, now)
    }

    async fn apply(&self, key: &RepoKey, step: Step, cx: &Ctx<P>) -> Result<()> {
        if let Step::Settle { evaluation } = step {
            cx.status
                .call(move |db| db.settle_statuses(evaluation, Timestamp::now()))
                .await?;
            return Ok(());
        }
        let client = cx.forges.for_repo(&cx.spec(), key)?;
        let (record, result) = match step {
            Step::Post { sha, status } => {
                let result = client.create_status(&key.repo, &sha, &status).await;
                let record = PostedStatus {
                    sha,
                    context: status.context,
                    state: state_text(status.state).to_owned(),
                    description: status.description,
                    target_url: status.target_url,
                    check_run_id: None,
                    posted_at: Timestamp::now(),
                };
                (record, result.map(|()| None))
            }
            Step::CreateCheckRun {
                sha,
                context,
                state,
                spec,
            } => {
                let result = client.create_check_run(&key.repo, &spec).await;
                (
                    check_record(sha, context, state, &spec),
                    result.map(|r| Some(r.id)),
                )
            }
            Step::UpdateCheckRun {
                sha,
                context,
                state,
                id,
                spec,
            } => {
                let result = client.update_check_run(&key.repo, id, &spec).await;
                (
                    check_record(sha, context, state, &spec),
                    result.map(|r| Some(r.id)),
                )
            }
            Step::Settle { .. } => return Ok(()),
        };
        let check_run_id = match result {
            Ok(id) => id,
            Err(err) => return Err(record_api_error(&cx.status, &key.forge, err).await),
        };
        debug!(repo = %key, sha = %record.sha, context = %record.context, state = %record.state, "status posted");
        let k = key.clone();
        cx.status
            .call(move |db| {
                let repo = db.upsert_repo(&k)?;
                db.record_posted_status(
                    repo,
                    &PostedStatus {
                        check_run_id,
                        ..record
                    },
                )
            })
            .await?;
        Ok(())
    }
}

fn check_record(
    sha: String,
    context: String,
    state: StatusState,
    spec: &CheckRunSpec,
) -> PostedStatus {
    PostedStatus {
        sha,
        context,
        state: state_text(state).to_owned(),
        description: spec.output.as_ref().map(|o| o.title.clone()),
        target_url: spec.details_url.clone(),
        check_run_id: None,
        posted_at: Timestamp::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_should_round_trip_through_the_database_text() {
        for s in [
            StatusState::Pending,
            StatusState::Running,
            StatusState::Success,
            StatusState::Failure,
            StatusState::Error,
            StatusState::Cancelled,
        ] {
            assert_eq!(parse_state(state_text(s)), Some(s));
        }
        assert_eq!(parse_state("bogus"), None);
    }
}
