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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reconix_nixcli::{BuildRequest, BuildStatus, Nix};
use reconix_spec::{BuilderName, RepoKey, Spec, StorePath, System, Timestamp};
use reconix_status::{BuildState, EvaluationId, JobId, JobState};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::context::{Ctx, Ports};
use crate::gcroots::root_link;
use crate::runtime::{Action, Plan, Reconciler};
use crate::{Error, Result};

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

fn is_bad(state: JobState) -> bool {
    matches!(
        state,
        JobState::Failed | JobState::DependencyFailed | JobState::Cancelled | JobState::EvalFailed
    )
}

/// Plans the `builds` loop (pure).
pub fn plan(key: &BuilderName, desired: &Spec, observed: &Observed, now: Timestamp) -> Plan<Step> {
    let _ = (key, now);
    let local = &desired.builders.local;
    let mut steps = Vec::new();

    let needed: BTreeSet<&StorePath> = observed.jobs.iter().map(|j| &j.drv_path).collect();
    let cancels: Vec<&StorePath> = observed
        .running
        .iter()
        .filter(|d| !needed.contains(d))
        .collect();
    steps.extend(cancels.iter().map(|d| Step::Cancel {
        drv_path: (*d).clone(),
    }));

    // drv → its waiting jobs, in first-seen (oldest evaluation first) order.
    let mut dispatch: Vec<(&StorePath, Vec<&SchedJob>)> = Vec::new();
    let mut index: HashMap<&StorePath, usize> = HashMap::new();
    for job in &observed.jobs {
        let set = |state: JobState, error: Option<String>| Step::SetJobState {
            job: job.id,
            state,
            error,
        };
        if let Some((_, dep, dep_state)) = job.deps.iter().find(|(_, _, s)| is_bad(*s)) {
            steps.push(set(
                JobState::DependencyFailed,
                Some(format!("dependency {dep} {}", dep_state.as_str())),
            ));
            continue;
        }
        if let Some(system) = &job.system
            && !local.systems.contains(system)
        {
            steps.push(set(
                JobState::Failed,
                Some(format!("no builder for system `{system}`")),
            ));
            continue;
        }
        let running_here = observed.running.contains(&job.drv_path);
        match &job.build {
            Some((BuildState::Succeeded, _)) => steps.push(set(JobState::Succeeded, None)),
            Some((BuildState::Failed | BuildState::TimedOut, error)) => {
                steps.push(set(JobState::Failed, error.clone()));
            }
            _ if running_here && job.state == JobState::Queued => {
                steps.push(set(JobState::Building, None));
            }
            _ if running_here => {}
            // Never built, queued, cancelled earlier, or `running` in a previous process.
            _ if job.deps.iter().all(|(_, _, s)| *s == JobState::Succeeded) => {
                let i = *index.entry(&job.drv_path).or_insert_with(|| {
                    dispatch.push((&job.drv_path, Vec::new()));
                    dispatch.len() - 1
                });
                dispatch[i].1.push(job);
            }
            _ => {}
        }
    }

    let busy = observed.running.len() - cancels.len();
    let free = usize::try_from(local.max_jobs)
        .unwrap_or(usize::MAX)
        .saturating_sub(busy);
    for (drv, jobs) in dispatch.into_iter().take(free) {
        let first = jobs[0];
        let (timeout, max_silent) = desired.repo(&first.repo).map_or(
            (Duration::from_secs(3 * 3600), Duration::from_secs(3600)),
            |(_, r)| (r.timeout.to_std(), r.max_silent.to_std()),
        );
        steps.push(Step::Dispatch {
            drv_path: drv.clone(),
            jobs: jobs.iter().map(|j| j.id).collect(),
            gc_root: root_link(
                &desired.state_dir,
                &first.repo,
                first.evaluation,
                &first.attr,
                "out",
            ),
            timeout,
            max_silent,
        });
    }

    steps.extend(
        observed
            .finishable
            .iter()
            .map(|&evaluation| Step::FinishEvaluation { evaluation }),
    );

    // A job that changed state can unblock its dependents or finish its evaluation: look again
    // right away. Otherwise wait for a build to end or an evaluation to arrive.
    let then = if steps.iter().any(|s| matches!(s, Step::SetJobState { .. })) {
        Action::requeue(Duration::ZERO)
    } else {
        Action::requeue(Duration::from_secs(60))
    };
    Plan { steps, then }
}

/// The builds this process is running, by drv path.
#[derive(Debug, Default, Clone)]
pub struct RunningBuilds {
    inner: Arc<Mutex<BTreeMap<StorePath, CancellationToken>>>,
}

impl RunningBuilds {
    /// Returns the drvs being built.
    pub fn drvs(&self) -> BTreeSet<StorePath> {
        self.lock().keys().cloned().collect()
    }

    /// Registers a build; returns its cancellation token, or `None` when it already runs.
    fn start(&self, drv: &StorePath) -> Option<CancellationToken> {
        let mut map = self.lock();
        if map.contains_key(drv) {
            return None;
        }
        let token = CancellationToken::new();
        map.insert(drv.clone(), token.clone());
        Some(token)
    }

    fn cancel(&self, drv: &StorePath) {
        if let Some(token) = self.lock().get(drv) {
            token.cancel();
        }
    }

    fn finish(&self, drv: &StorePath) {
        self.lock().remove(drv);
    }

    /// Cancels every running build (daemon shutdown).
    pub fn cancel_all(&self) {
        for token in self.lock().values() {
            token.cancel();
        }
    }

    /// Returns how many builds are running.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Returns true when no build is running.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<StorePath, CancellationToken>> {
        // A poisoned lock only means a panic elsewhere while holding it; the map stays usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
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
            } => dispatch(key, cx, drv_path, jobs, gc_root, timeout, max_silent).await,
        }
    }
}

async fn dispatch<P: Ports>(
    key: &BuilderName,
    cx: &Ctx<P>,
    drv_path: StorePath,
    jobs: Vec<JobId>,
    gc_root: PathBuf,
    timeout: Duration,
    max_silent: Duration,
) -> Result<()> {
    let Some(cancel) = cx.running.start(&drv_path) else {
        return Ok(());
    };
    let log_file = cx
        .state_dir()
        .join("logs")
        .join(format!("{}.log", drv_path.name()));
    let (drv, builder, log) = (drv_path.clone(), key.clone(), log_file.clone());
    let recorded = cx
        .status
        .call(move |db| {
            let now = Timestamp::now();
            // A drv whose build already succeeded or failed is never built again (applying a
            // step twice must end in the same state); the next plan moves its jobs on.
            if db.build_by_drv(&drv)?.is_some_and(|b| b.state.is_final()) {
                return Ok(false);
            }
            db.upsert_build(&drv, Some(&builder), BuildState::Running, now)?;
            // Known from the start, so the log can be read while the build runs.
            db.record_build_log(&drv, &log, 0, now)?;
            for job in &jobs {
                db.set_job_state(*job, JobState::Building, None, now)?;
            }
            Ok(true)
        })
        .await;
    match recorded {
        Ok(true) => {}
        Ok(false) => {
            cx.running.finish(&drv_path);
            cx.wakers.builds();
            return Ok(());
        }
        Err(err) => {
            cx.running.finish(&drv_path);
            return Err(err.into());
        }
    }
    info!(drv = %drv_path, "build started");
    let request = BuildRequest {
        drv_path: drv_path.clone(),
        gc_root: Some(gc_root),
        timeout: Some(timeout),
        max_silent: Some(max_silent),
        log_file,
    };
    let (nix, status, running, wakers) = (
        cx.ports.nix().clone(),
        cx.status.clone(),
        cx.running.clone(),
        cx.wakers.clone(),
    );
    tokio::spawn(async move {
        let outcome = nix.realise(request, cancel).await;
        let (state, exit_code, error) = match outcome {
            Ok(o) => {
                let state = match o.status {
                    BuildStatus::Succeeded => BuildState::Succeeded,
                    BuildStatus::Failed | BuildStatus::Error => BuildState::Failed,
                    BuildStatus::TimedOut => BuildState::TimedOut,
                    BuildStatus::Cancelled => BuildState::Cancelled,
                };
                (state, o.exit_code, o.message)
            }
            Err(err) => (BuildState::Failed, None, Some(err.to_string())),
        };
        info!(drv = %drv_path, state = state.as_str(), "build ended");
        let drv = drv_path.clone();
        // Record first, then leave the running set (see the module docs).
        let recorded = status
            .call(move |db| {
                db.finish_build(
                    &drv,
                    state,
                    exit_code,
                    error.as_deref(),
                    None,
                    Timestamp::now(),
                )
            })
            .await;
        if let Err(err) = recorded {
            warn!(drv = %drv_path, error = %err, "could not record build result; it will run again");
        }
        running.finish(&drv_path);
        wakers.builds();
        if state == BuildState::Succeeded {
            wakers.gcroots();
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(max_jobs: u32) -> Spec {
        reconix_spec::parse(
            &format!(
                "state-dir: /state\nforges:\n  here:\n    kind: local\n    repos:\n      demo:\n        path: /srv/demo\n        timeout: 1h\n        max-silent: 5m\nbuilders:\n  local:\n    max-jobs: {max_jobs}\n"
            ),
            std::path::Path::new("t.yaml"),
        )
        .unwrap()
    }

    fn drv(n: u32) -> StorePath {
        StorePath::new(format!("/nix/store/{n:0>32}-job{n}.drv")).unwrap()
    }

    struct J(SchedJob);

    impl J {
        fn new(id: i64, drv_n: u32) -> Self {
            Self(SchedJob {
                id: JobId(id),
                evaluation: EvaluationId(1),
                repo: RepoKey::parse("here/demo").unwrap(),
                attr: format!("packages.x86_64-linux.p{id}"),
                drv_path: drv(drv_n),
                system: Some(System::new("x86_64-linux").unwrap()),
                state: JobState::Queued,
                deps: Vec::new(),
                build: None,
            })
        }
        fn dep(mut self, id: i64, state: JobState) -> Self {
            self.0
                .deps
                .push((JobId(id), format!("packages.x86_64-linux.p{id}"), state));
            self
        }
        fn build(mut self, state: BuildState) -> Self {
            self.0.build = Some((
                state,
                (state == BuildState::Failed).then(|| "boom".to_owned()),
            ));
            self
        }
        fn state(mut self, state: JobState) -> Self {
            self.0.state = state;
            self
        }
        fn system(mut self, s: &str) -> Self {
            self.0.system = Some(System::new(s).unwrap());
            self
        }
    }

    fn observed(jobs: Vec<J>, running: &[u32]) -> Observed {
        Observed {
            jobs: jobs.into_iter().map(|j| j.0).collect(),
            running: running.iter().map(|n| drv(*n)).collect(),
            finishable: Vec::new(),
        }
    }

    fn run(o: &Observed, max_jobs: u32) -> Plan<Step> {
        plan(&local_builder(), &spec(max_jobs), o, Timestamp(0))
    }

    fn dispatched(p: &Plan<Step>) -> Vec<StorePath> {
        p.steps
            .iter()
            .filter_map(|s| match s {
                Step::Dispatch { drv_path, .. } => Some(drv_path.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn local_builder_name_should_be_valid() {
        assert_eq!(local_builder().as_str(), "local");
    }

    #[test]
    fn ready_job_should_be_dispatched_with_its_root_and_timeouts() {
        let p = run(&observed(vec![J::new(7, 1)], &[]), 2);
        assert_eq!(
            p.steps,
            vec![Step::Dispatch {
                drv_path: drv(1),
                jobs: vec![JobId(7)],
                gc_root: "/state/gcroots/here/demo/1/packages.x86_64-linux.p7".into(),
                timeout: Duration::from_secs(3600),
                max_silent: Duration::from_secs(300),
            }]
        );
    }

    #[test]
    fn job_with_unfinished_dependency_should_wait() {
        let p = run(
            &observed(vec![J::new(2, 2).dep(1, JobState::Building)], &[]),
            2,
        );
        assert!(p.steps.is_empty(), "{p:?}");
    }

    #[test]
    fn job_with_failed_dependency_should_become_dependency_failed() {
        for bad in [
            JobState::Failed,
            JobState::DependencyFailed,
            JobState::Cancelled,
        ] {
            let p = run(&observed(vec![J::new(2, 2).dep(1, bad)], &[]), 2);
            assert!(
                matches!(
                    &p.steps[..],
                    [Step::SetJobState {
                        job: JobId(2),
                        state: JobState::DependencyFailed,
                        ..
                    }]
                ),
                "{bad:?}: {p:?}"
            );
            assert_eq!(p.then, Action::requeue(Duration::ZERO));
        }
    }

    #[test]
    fn identical_drvs_should_be_built_once() {
        let p = run(&observed(vec![J::new(1, 5), J::new(2, 5)], &[]), 2);
        assert_eq!(dispatched(&p), vec![drv(5)]);
        assert!(
            matches!(&p.steps[0], Step::Dispatch { jobs, .. } if jobs == &[JobId(1), JobId(2)])
        );
    }

    #[test]
    fn dispatch_should_respect_max_jobs_counting_running_builds() {
        let jobs = vec![
            J::new(1, 1),
            J::new(2, 2),
            J::new(3, 3),
            J::new(4, 4).state(JobState::Building),
        ];
        let p = run(&observed(jobs, &[4]), 2);
        assert_eq!(dispatched(&p), vec![drv(1)]);
        let p = run(&observed(vec![J::new(1, 1), J::new(2, 2)], &[]), 0);
        assert!(
            dispatched(&p).is_empty(),
            "max-jobs 0 disables local builds"
        );
    }

    #[test]
    fn finished_builds_should_set_job_states() {
        let jobs = vec![
            J::new(1, 1)
                .state(JobState::Building)
                .build(BuildState::Succeeded),
            J::new(2, 2).build(BuildState::Failed),
            J::new(3, 3).build(BuildState::TimedOut),
        ];
        let p = run(&observed(jobs, &[]), 2);
        let states: Vec<_> = p
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::SetJobState { job, state, .. } => Some((job.0, *state)),
                _ => None,
            })
            .collect();
        assert_eq!(
            states,
            vec![
                (1, JobState::Succeeded),
                (2, JobState::Failed),
                (3, JobState::Failed)
            ]
        );
    }

    #[test]
    fn job_joining_a_running_build_should_be_marked_building_not_dispatched() {
        let p = run(
            &observed(vec![J::new(9, 3).build(BuildState::Running)], &[3]),
            2,
        );
        assert_eq!(
            p.steps,
            vec![Step::SetJobState {
                job: JobId(9),
                state: JobState::Building,
                error: None
            }]
        );
    }

    #[test]
    fn build_left_running_by_a_dead_process_should_be_dispatched_again() {
        let p = run(
            &observed(
                vec![
                    J::new(1, 1)
                        .state(JobState::Building)
                        .build(BuildState::Running),
                ],
                &[],
            ),
            2,
        );
        assert_eq!(dispatched(&p), vec![drv(1)]);
    }

    #[test]
    fn cancelled_build_should_be_dispatched_again_when_a_live_job_needs_it() {
        let p = run(
            &observed(vec![J::new(1, 1).build(BuildState::Cancelled)], &[]),
            2,
        );
        assert_eq!(dispatched(&p), vec![drv(1)]);
    }

    #[test]
    fn running_build_no_live_job_needs_should_be_cancelled_and_free_its_slot() {
        let p = run(&observed(vec![J::new(1, 1), J::new(2, 2)], &[7]), 2);
        assert_eq!(p.steps[0], Step::Cancel { drv_path: drv(7) });
        assert_eq!(dispatched(&p), vec![drv(1), drv(2)]);
    }

    #[test]
    fn job_for_an_unbuildable_system_should_fail_with_a_reason() {
        let p = run(
            &observed(vec![J::new(1, 1).system("aarch64-darwin")], &[]),
            2,
        );
        assert!(matches!(
            &p.steps[..],
            [Step::SetJobState { state: JobState::Failed, error: Some(e), .. }] if e.contains("aarch64-darwin")
        ));
    }

    #[test]
    fn evaluation_with_all_jobs_done_should_be_finished() {
        let mut o = observed(vec![], &[]);
        o.finishable = vec![EvaluationId(4)];
        let p = run(&o, 2);
        assert_eq!(
            p.steps,
            vec![Step::FinishEvaluation {
                evaluation: EvaluationId(4)
            }]
        );
    }
}
