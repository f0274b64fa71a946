//! Table-driven tests of the `builds` plan.

use super::*;
use crate::runtime::Action;

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
    assert!(matches!(&p.steps[0], Step::Dispatch { jobs, .. } if jobs == &[JobId(1), JobId(2)]));
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
