//! The `builds` loop: every job of a live evaluation is built once, DAG-gated, on a builder
//! that can build it, within capacity.
//!
//! Key: one, [`Placement`] (shown as `all`): placement is global, across the local builder and
//! the connected agents. Observed, as the database has them: the unfinished jobs of live
//! evaluations with their dependencies' states and the build of their drv
//! ([`reconix_status::SchedJob`]; a row that does not parse fails the observation with
//! [`reconix_status::Error::Corrupt`] instead of being skipped), the builds this process is
//! running (and where), and the enrolled agents with their offer, revocation and last sign of
//! life. Steps: dispatch a drv to a
//! builder, cancel a running build nobody needs any more, move a job to the state its build (or a
//! failed dependency) implies, and close evaluations whose jobs are all done.
//!
//! **Placement.** A drv goes to a builder offering its system and every feature it requires
//! (`requiredSystemFeatures`), with a free slot, least loaded first (running / max-jobs; the
//! local builder wins ties). An agent is usable while it is unrevoked, connected and alive
//! ([`reconix_spec::Builders::liveness`]: heard from within `builders.heartbeat-timeout`, the
//! rule the `builders` loop disconnects by); a `builders.remote` entry caps what it offers
//! ([`reconix_spec::Builders::agent_offer`]).
//! A drv no known builder can build fails at once when no agent can enrol (no
//! `builders.enrollment`); otherwise it waits for one.
//!
//! **Transient failures.** A build that could not run for reasons of its builder (connection
//! lost, agent gone, store trouble) is requeued, up to `builders.transient-retries` more times,
//! preferably on another builder; then it fails with the last reason. A build that failed by
//! itself is never retried.
//!
//! **A full disk waits.** A build that met a full or failing disk here (its log or GC root in
//! the state directory, or Nix's store says `No space left on device`) is not a failure of the
//! build nor of a builder: it is requeued without counting the attempt, its jobs show
//! `waiting: …` as their error, and it is dispatched again after a backoff (1 s doubling to
//! 30 s), so it resumes by itself once space returns. A result that cannot be recorded because
//! the database is full is recorded again with backoff before the build leaves the running set.
//!
//! Builds are keyed by drv path, so a drv shared by several jobs (or by several evaluations) is
//! built once. A running build is a task owned by [`RunningBuilds`] (in `running`, a leaf
//! module `Ctx` names too); it writes its result to the
//! database *before* leaving the running set, so a plan never sees a finished build as lost.
//! After a restart the running set is empty and a build row still marked `running` is simply
//! dispatched again: Nix finds outputs that were completed and does not rebuild them.

mod apply;
mod plan;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use reconix_spec::{BuilderName, Offer, Spec, StorePath, Timestamp};
use reconix_status::{EvaluationId, JobId, JobState, SchedJob};
use serde::Serialize;
use tracing::info;

use crate::context::{Ctx, Ports};
use crate::runtime::{Plan, Reconciler};
use crate::{Error, Result};

pub use crate::running::{Placement, RunningBuilds};
pub use plan::plan;

/// The `builds` reconciler.
#[derive(Debug, Default)]
pub struct Builds<P>(std::marker::PhantomData<fn() -> P>);

impl<P> Builds<P> {
    /// Creates the reconciler.
    pub fn new() -> Self {
        Self(std::marker::PhantomData)
    }
}

/// An enrolled agent as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSlot {
    /// Its name.
    pub name: BuilderName,
    /// What it offers (before the spec's caps).
    pub offer: Offer,
    /// Whether its name is revoked (it gets nothing, and the `builders` loop disconnects it).
    pub revoked: bool,
    /// Whether it is connected now.
    pub connected: bool,
    /// Its last sign of life: the last heartbeat, or the connection when none came yet.
    pub last_seen: Option<Timestamp>,
}

/// What `observe` saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Unfinished jobs of live evaluations, oldest evaluation first.
    pub jobs: Vec<SchedJob>,
    /// Drvs this process is building right now, with their builder.
    pub running: BTreeMap<StorePath, BuilderName>,
    /// The enrolled agents.
    pub agents: Vec<AgentSlot>,
    /// Evaluations in state `building` whose jobs are all in a terminal state.
    pub finishable: Vec<EvaluationId>,
}

/// Starts building `drv_path` for `jobs` on `builder` (one attempt).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Dispatch {
    /// The drv to realise.
    pub drv_path: StorePath,
    /// Where: `local` or an agent's name.
    pub builder: BuilderName,
    /// The jobs waiting for it.
    pub jobs: Vec<JobId>,
    /// The indirect GC root of the first job's outputs (`<root>` for `out`, `<root>-<name>`
    /// for the others).
    pub gc_root: PathBuf,
    /// Build timeout.
    pub timeout: Duration,
    /// Maximum time without log output.
    pub max_silent: Duration,
}

/// One step of the `builds` loop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
    /// Starts building a drv on a builder.
    Dispatch(Dispatch),
    /// Stops a running build that no live job needs any more.
    Cancel {
        /// The drv being built.
        drv_path: StorePath,
    },
    /// Moves a job to the state its build or its dependencies imply.
    SetJobState {
        /// The job.
        job: JobId,
        /// Its new state.
        state: JobState,
        /// The reason, for failures.
        error: Option<String>,
    },
    /// Several [`Step::SetJobState`]s in one transaction: what [`Builds::coalesce`] makes of
    /// consecutive ones (a failed dependency can fail thousands of jobs at once).
    SetJobStates {
        /// The jobs, their new states and reasons, in order.
        changes: Vec<JobChange>,
    },
    /// Marks an evaluation whose jobs are all done as finished.
    FinishEvaluation {
        /// The evaluation.
        evaluation: EvaluationId,
    },
}

/// One job state change of [`Step::SetJobStates`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobChange {
    /// The job.
    pub job: JobId,
    /// Its new state.
    pub state: JobState,
    /// The reason, for failures.
    pub error: Option<String>,
}

/// Merges each run of two or more consecutive [`Step::SetJobState`]s into one
/// [`Step::SetJobStates`], keeping the order of everything else.
pub(crate) fn coalesce(steps: Vec<Step>) -> Vec<Step> {
    let mut out: Vec<Step> = Vec::with_capacity(steps.len());
    let mut run: Vec<JobChange> = Vec::new();
    let flush = |run: &mut Vec<JobChange>, out: &mut Vec<Step>| match run.len() {
        0 => {}
        1 => {
            if let Some(JobChange { job, state, error }) = run.pop() {
                out.push(Step::SetJobState { job, state, error });
            }
        }
        _ => out.push(Step::SetJobStates {
            changes: std::mem::take(run),
        }),
    };
    for step in steps {
        match step {
            Step::SetJobState { job, state, error } => run.push(JobChange { job, state, error }),
            other => {
                flush(&mut run, &mut out);
                out.push(other);
            }
        }
    }
    flush(&mut run, &mut out);
    out
}

/// Wakes the loops that follow jobs entering `states`: `gcroots` (soon: see [`Wakers::gcroots_soon`](crate::context::Wakers::gcroots_soon)) for outputs to record (a job
/// that failed with output keeps its outputs rooted too), `caches` for succeeded jobs' outputs
/// to push (they are in the cache backlog from now on), and the statuses.
fn wake_after<P: Ports>(cx: &Ctx<P>, states: &[JobState]) {
    if states
        .iter()
        .any(|s| matches!(s, JobState::Succeeded | JobState::Failed))
    {
        cx.wakers.gcroots_soon();
    }
    if states.contains(&JobState::Succeeded) {
        cx.wakers.caches();
    }
    cx.wakers.all_statuses();
}

impl<P: Ports> Reconciler for Builds<P> {
    const NAME: &'static str = "builds";
    type Spec = Spec;
    type Context = Ctx<P>;
    type Key = Placement;
    type Observed = Observed;
    type Step = Step;
    type Error = Error;

    async fn keys(&self, _spec: &Spec, _cx: &Ctx<P>) -> Result<Vec<Placement>> {
        Ok(vec![Placement])
    }

    async fn observe(&self, _key: &Placement, _spec: &Spec, cx: &Ctx<P>) -> Result<Observed> {
        // The running set is read BEFORE the database. A build task records its result and only
        // then leaves the set, so a drv missing from this snapshot has its final state in the
        // rows read next. The other order could see a `running` row for a build that has just
        // ended and dispatch it again.
        let running = cx.running.drvs();
        let (jobs, finishable, agents) = cx
            .status
            .call(|db| {
                Ok((
                    db.schedulable_jobs()?,
                    db.finishable_evaluations()?,
                    db.agents()?,
                ))
            })
            .await?;
        let agents = agents
            .into_iter()
            .map(|a| {
                let open = cx.agents.get(&a.name).is_some_and(|c| !c.is_closed());
                AgentSlot {
                    connected: open && a.connected_at.is_some(),
                    last_seen: a.last_seen(),
                    revoked: a.revoked_at.is_some(),
                    name: a.name,
                    offer: a.offer,
                }
            })
            .collect();
        Ok(Observed {
            jobs,
            running,
            agents,
            finishable,
        })
    }

    fn plan(key: &Placement, desired: &Spec, observed: &Observed, now: Timestamp) -> Plan<Step> {
        plan(key, desired, observed, now)
    }

    fn coalesce(steps: Vec<Step>) -> Vec<Step> {
        coalesce(steps)
    }

    async fn apply(&self, _key: &Placement, step: Step, cx: &Ctx<P>) -> Result<()> {
        match step {
            Step::SetJobStates { changes } => {
                let states: Vec<JobState> = changes.iter().map(|c| c.state).collect();
                cx.status
                    .call(move |db| {
                        let changes: Vec<(JobId, JobState, Option<&str>)> = changes
                            .iter()
                            .map(|c| (c.job, c.state, c.error.as_deref()))
                            .collect();
                        db.set_job_states(&changes, Timestamp::now())
                    })
                    .await?;
                wake_after(cx, &states);
                Ok(())
            }
            Step::SetJobState { job, state, error } => {
                cx.status
                    .call(move |db| {
                        db.set_job_state(job, state, error.as_deref(), Timestamp::now())
                    })
                    .await?;
                wake_after(cx, &[state]);
                Ok(())
            }
            Step::FinishEvaluation { evaluation } => {
                let done = cx
                    .status
                    .call(move |db| db.finish_evaluation_if_done(evaluation, Timestamp::now()))
                    .await?;
                if done {
                    info!(evaluation = %evaluation, "evaluation finished");
                    cx.wakers.gcroots();
                    cx.wakers.all_statuses();
                }
                Ok(())
            }
            Step::Cancel { drv_path } => {
                info!(drv = %drv_path, "cancelling build no live job needs");
                cx.running.cancel(&drv_path);
                Ok(())
            }
            Step::Dispatch(attempt) => apply::dispatch(cx, attempt).await,
        }
    }
}
