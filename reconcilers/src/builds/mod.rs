//! The `builds` loop: every job of a live evaluation is built once, DAG-gated, within capacity.
//!
//! Key: a builder (`local` for now). Observed: the unfinished jobs of live evaluations with their
//! dependencies' states and the build of their drv, plus the builds this process is running.
//! Steps: dispatch a drv, cancel a running build nobody needs any more, move a job to the state
//! its build (or a failed dependency) implies, and close evaluations whose jobs are all done.
//!
//! Builds are keyed by drv path, so a drv shared by several jobs (or by several evaluations) is
//! built once. A running build is a task owned by [`RunningBuilds`]; it writes its result to the
//! database *before* leaving the running set, so a plan never sees a finished build as lost.
//! After a restart the running set is empty and a build row still marked `running` is simply
//! dispatched again: Nix finds outputs that were completed and does not rebuild them.

mod apply;
mod plan;
mod running;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use reconix_spec::{BuilderName, RepoKey, Spec, StorePath, System, Timestamp};
use reconix_status::{BuildState, EvaluationId, JobId, JobState};
use serde::Serialize;
use tracing::info;

use crate::context::{Ctx, Ports};
use crate::runtime::{Plan, Reconciler};
use crate::{Error, Result};

pub use plan::plan;
pub use running::RunningBuilds;

/// The `builds` reconciler.
#[derive(Debug, Default)]
pub struct Builds<P>(std::marker::PhantomData<fn() -> P>);

impl<P> Builds<P> {
    /// Creates the reconciler.
    pub fn new() -> Self {
        Self(std::marker::PhantomData)
    }
}

/// The builder key this loop reconciles for local builds.
pub fn local_builder() -> BuilderName {
    BuilderName::local()
}

/// An unfinished job as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedJob {
    /// The job.
    pub id: JobId,
    /// Its evaluation.
    pub evaluation: EvaluationId,
    /// Its repository (for timeouts and GC-root paths).
    pub repo: RepoKey,
    /// Its attribute path.
    pub attr: String,
    /// The drv to build.
    pub drv_path: StorePath,
    /// The drv's system.
    pub system: Option<System>,
    /// `queued` or `building`.
    pub state: JobState,
    /// The jobs it depends on: id, attribute path and state.
    pub deps: Vec<(JobId, String, JobState)>,
    /// The recorded build of its drv, if any: state and error message.
    pub build: Option<(BuildState, Option<String>)>,
}

/// What `observe` saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Unfinished jobs of live evaluations, oldest evaluation first.
    pub jobs: Vec<SchedJob>,
    /// Drvs this process is building right now.
    pub running: BTreeSet<StorePath>,
    /// Evaluations in state `building` whose jobs are all in a terminal state.
    pub finishable: Vec<EvaluationId>,
}

/// One step of the `builds` loop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
    /// Starts building `drv_path` for `jobs`.
    Dispatch {
        /// The drv to realise.
        drv_path: StorePath,
        /// The jobs waiting for it.
        jobs: Vec<JobId>,
        /// The indirect GC root `nix-store --add-root` creates for the first job.
        gc_root: PathBuf,
        /// Build timeout.
        timeout: Duration,
        /// Maximum time without log output.
        max_silent: Duration,
    },
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
    /// Marks an evaluation whose jobs are all done as finished.
    FinishEvaluation {
        /// The evaluation.
        evaluation: EvaluationId,
    },
}

impl<P: Ports> Reconciler for Builds<P> {
    const NAME: &'static str = "builds";
    type Spec = Spec;
    type Context = Ctx<P>;
    type Key = BuilderName;
    type Observed = Observed;
    type Step = Step;
    type Error = Error;

    async fn keys(&self, _spec: &Spec, _cx: &Ctx<P>) -> Result<Vec<BuilderName>> {
        Ok(vec![local_builder()])
    }

    async fn observe(&self, _key: &BuilderName, _spec: &Spec, cx: &Ctx<P>) -> Result<Observed> {
        // The running set is read BEFORE the database. A build task records its result and only
        // then leaves the set, so a drv missing from this snapshot has its final state in the
        // rows read next. The other order could see a `running` row for a build that has just
        // ended and dispatch it again.
        let running = cx.running.drvs();
        let (jobs, finishable) = cx
            .status
            .call(|db| Ok((db.schedulable_jobs()?, db.finishable_evaluations()?)))
            .await?;
        let jobs = jobs
            .into_iter()
            .map(|j| SchedJob {
                id: j.id,
                evaluation: j.evaluation_id,
                repo: j.repo,
                attr: j.attr.into_string(),
                drv_path: j.drv_path,
                system: Some(j.system),
                state: j.state,
                deps: j
                    .deps
                    .into_iter()
                    .map(|d| (d.id, d.attr.into_string(), d.state))
                    .collect(),
                build: j.build.map(|b| (b.state, b.error)),
            })
            .collect();
        Ok(Observed {
            jobs,
            running,
            finishable,
        })
    }

    fn plan(key: &BuilderName, desired: &Spec, observed: &Observed, now: Timestamp) -> Plan<Step> {
        plan(key, desired, observed, now)
    }

    async fn apply(&self, key: &BuilderName, step: Step, cx: &Ctx<P>) -> Result<()> {
        match step {
            Step::SetJobState { job, state, error } => {
                cx.status
                    .call(move |db| {
                        db.set_job_state(job, state, error.as_deref(), Timestamp::now())
                    })
                    .await?;
                if state == JobState::Succeeded {
                    cx.wakers.gcroots();
                }
                cx.wakers.all_statuses();
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
            Step::Dispatch {
                drv_path,
                jobs,
                gc_root,
                timeout,
                max_silent,
            } => apply::dispatch(key, cx, drv_path, jobs, gc_root, timeout, max_silent).await,
        }
    }
}
