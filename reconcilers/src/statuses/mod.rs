//! The `statuses` loop: every commit the daemon evaluates carries forge statuses equal to the
//! observed state of its evaluation and jobs.
//!
//! Key: a repository on a hosted forge. Observed: its evaluations whose statuses are not settled
//! yet (with their jobs), its open pull requests, and what was last posted on their commits —
//! rows as stored. [`plan`](plan::plan) makes every decision: which pull requests are untrusted
//! and wait for a trusted push, which dependency failed, the desired statuses, the differences
//! batched per commit (`statuses.debounce`), and which evaluations are settled — never looked at
//! again — once terminal with everything they should show posted. `apply` only calls the forge
//! and records what it posted.
//!
//! Modules, leaves first: `inputs` (settings and the plan's view of a repository), `describe`
//! (what one status says), `summary` (the collapsed summary's counts and markdown), `plan`.

mod describe;
mod inputs;
pub mod plan;
mod summary;

use std::collections::BTreeSet;

use reconix_forge::{CheckRunSpec, Forge as _, StatusState};
use reconix_spec::{RepoKey, Spec, Timestamp};
use reconix_status::PostedStatus;
use tracing::debug;

pub use self::inputs::{EvalInput, Inputs, JobInput, Settings, UntrustedPr};
pub use self::plan::{Observed, ObservedEvaluation, Step, plan, posted_state, settings};
use crate::context::{Ctx, Ports};
use crate::forge_clients::{gate, record_api_error};
use crate::runtime::{Plan, Reconciler};
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

impl<P: Ports> Reconciler for Statuses<P> {
    const NAME: &'static str = "statuses";
    type Spec = Spec;
    type Context = Ctx<P>;
    type Key = RepoKey;
    type Observed = Observed;
    type Step = Step;
    type Error = Error;

    async fn keys(&self, spec: &Spec, _cx: &Ctx<P>) -> Result<Vec<RepoKey>> {
        Ok(spec.hosted_repos().map(|(key, _, _)| key).collect())
    }

    async fn observe(&self, key: &RepoKey, spec: &Spec, cx: &Ctx<P>) -> Result<Observed> {
        let gate = gate(&cx.status, &key.forge, Timestamp::now()).await?;
        // Other loops wake this one for every repository; a local forge has no statuses.
        let hosted = spec.forges.get(&key.forge).is_some_and(|f| f.is_hosted());
        if !hosted {
            return Ok(Observed::empty(gate));
        }
        let k = key.clone();
        let observed = cx
            .status
            .call(move |db| {
                let Some(repo) = db.repo_id(&k)? else {
                    return Ok(Observed::empty(gate));
                };
                let mut evaluations = Vec::new();
                for id in db.unsettled_evaluations(repo)? {
                    let Some(evaluation) = db.evaluation(id)? else {
                        continue;
                    };
                    let superseded_by_rev = match evaluation.superseded_by {
                        Some(by) => db.evaluation(by)?.map(|b| b.rev),
                        None => None,
                    };
                    let jobs = db.jobs_of_evaluation(id)?;
                    evaluations.push(ObservedEvaluation {
                        evaluation,
                        superseded_by_rev,
                        jobs,
                    });
                }
                let pull_requests = db.open_pull_requests(repo)?;
                // Every commit a status may be wanted on; the plan ignores the rows of the
                // others (e.g. trusted pull requests not evaluated yet).
                let shas: Vec<String> = evaluations
                    .iter()
                    .map(|e| e.evaluation.rev.clone())
                    .chain(pull_requests.iter().map(|p| p.head_sha.clone()))
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let posted = db.posted_statuses(repo, &shas)?;
                Ok(Observed {
                    gate,
                    evaluations,
                    pull_requests,
                    posted,
                })
            })
            .await?;
        Ok(observed)
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
                    state: posted_state(status.state),
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
        state: posted_state(state),
        description: spec.output.as_ref().map(|o| o.title.clone()),
        target_url: spec.details_url.clone(),
        check_run_id: None,
        posted_at: Timestamp::now(),
    }
}
