//! Table-driven tests of the `builds` plan.

use reconix_spec::{AttrPath, RepoKey, System};
use reconix_status::{Build, BuildId, BuildState, SchedDep};

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

fn local_builder() -> BuilderName {
    BuilderName::local()
}

/// The recorded build of a job's drv, as the database returns it.
fn build_row(state: BuildState, error: Option<String>, builder: Option<BuilderName>) -> Build {
    Build {
        id: BuildId(1),
        drv_path: drv(0),
        builder,
        state,
        exit_code: None,
        error,
        log_path: None,
        log_size_bytes: None,
        log_updated_at: None,
        attempts: 0,
        queued_at: Timestamp(0),
        started_at: None,
        finished_at: None,
        closure_size_bytes: None,
        retry_at: None,
        waits: 0,
        failed_with_output: false,
        release_name: None,
    }
}

struct J(SchedJob);

impl J {
    fn new(id: i64, drv_n: u32) -> Self {
        Self(SchedJob {
            id: JobId(id),
            evaluation_id: EvaluationId(1),
            repo: RepoKey::parse("here/demo").unwrap(),
            attr: AttrPath::new(format!("packages.x86_64-linux.p{id}")).unwrap(),
            drv_path: drv(drv_n),
            system: System::new("x86_64-linux").unwrap(),
            required_features: Vec::new(),
            state: JobState::Queued,
            deps: Vec::new(),
            build: None,
            meta: reconix_spec::JobMeta::default(),
        })
    }
    fn dep(mut self, id: i64, state: JobState) -> Self {
        self.0.deps.push(SchedDep {
            attr: AttrPath::new(format!("packages.x86_64-linux.p{id}")).unwrap(),
            id: JobId(id),
            state,
            has_output: false,
        });
        self
    }
    /// Depends on job `id` in `state` whose drv's outputs exist (its build failed with output).
    fn dep_with_output(mut self, id: i64, state: JobState) -> Self {
        self = self.dep(id, state);
        if let Some(dep) = self.0.deps.last_mut() {
            dep.has_output = true;
        }
        self
    }
    /// Its build succeeded for Nix but an output has `nix-support/failed`.
    fn failed_with_output(mut self) -> Self {
        self.0.build = Some(Build {
            failed_with_output: true,
            ..build_row(
                BuildState::Succeeded,
                Some(reconix_status::FAILED_WITH_OUTPUT.to_owned()),
                None,
            )
        });
        self
    }
    fn meta(mut self, meta: reconix_spec::JobMeta) -> Self {
        self.0.meta = meta;
        self
    }
    fn build(mut self, state: BuildState) -> Self {
        self.0.build = Some(Build {
            attempts: u32::from(state != BuildState::Queued),
            ..build_row(
                state,
                (state == BuildState::Failed).then(|| "boom".to_owned()),
                None,
            )
        });
        self
    }
    /// Requeued after a transient failure on `builder`.
    fn requeued_from(mut self, builder: &str) -> Self {
        self.0.state = JobState::Building;
        self.0.build = Some(Build {
            attempts: 1,
            ..build_row(
                BuildState::Queued,
                Some(format!("agent {builder}: connection lost")),
                Some(BuilderName::new(builder).unwrap()),
            )
        });
        self
    }
    /// Requeued to wait for room on a full disk until `retry_at` (ms), its `waits`-th wait.
    fn waiting_until(mut self, retry_at: i64, waits: u32) -> Self {
        self.0.state = JobState::Building;
        self.0.build = Some(Build {
            retry_at: Some(Timestamp(retry_at)),
            waits,
            ..build_row(
                BuildState::Queued,
                Some("waiting: state directory full: cannot write x.log".to_owned()),
                Some(local_builder()),
            )
        });
        self
    }
    fn features(mut self, f: &[&str]) -> Self {
        self.0.required_features = f.iter().map(|s| (*s).to_owned()).collect();
        self
    }
    fn state(mut self, state: JobState) -> Self {
        self.0.state = state;
        self
    }
    fn system(mut self, s: &str) -> Self {
        self.0.system = System::new(s).unwrap();
        self
    }
}

fn observed(jobs: Vec<J>, running: &[u32]) -> Observed {
    Observed {
        jobs: jobs.into_iter().map(|j| j.0).collect(),
        running: running.iter().map(|n| (drv(*n), local_builder())).collect(),
        agents: Vec::new(),
        finishable: Vec::new(),
    }
}

/// A connected agent seen at time 0 (the plans below run at time 0 unless they say otherwise).
fn agent(name: &str, systems: &[&str], features: &[&str], max_jobs: u32) -> AgentSlot {
    AgentSlot {
        name: BuilderName::new(name).unwrap(),
        offer: Offer {
            systems: systems.iter().map(|s| System::new(*s).unwrap()).collect(),
            features: features.iter().map(|s| (*s).to_owned()).collect(),
            max_jobs,
        },
        revoked: false,
        connected: true,
        last_seen: Some(Timestamp(0)),
    }
}

/// Where each drv was dispatched: (drv number by path, builder).
fn placed(p: &Plan<Step>) -> Vec<(StorePath, String)> {
    p.steps
        .iter()
        .filter_map(|s| match s {
            Step::Dispatch(d) => Some((d.drv_path.clone(), d.builder.to_string())),
            _ => None,
        })
        .collect()
}

fn run(o: &Observed, max_jobs: u32) -> Plan<Step> {
    plan(&Placement, &spec(max_jobs), o, Timestamp(0))
}

fn dispatched(p: &Plan<Step>) -> Vec<StorePath> {
    p.steps
        .iter()
        .filter_map(|s| match s {
            Step::Dispatch(d) => Some(d.drv_path.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn the_one_key_should_show_as_all() {
    assert_eq!(Placement.to_string(), "all");
}

#[test]
fn ready_job_should_be_dispatched_with_its_root_and_timeouts() {
    let p = run(&observed(vec![J::new(7, 1)], &[]), 2);
    assert_eq!(
        p.steps,
        vec![Step::Dispatch(Dispatch {
            drv_path: drv(1),
            builder: local_builder(),
            jobs: vec![JobId(7)],
            gc_root: "/state/gcroots/here/demo/1/packages.x86_64-linux.p7".into(),
            timeout: Duration::from_secs(3600),
            max_silent: Duration::from_secs(300),
        })]
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
    assert!(matches!(&p.steps[0], Step::Dispatch(d) if d.jobs == [JobId(1), JobId(2)]));
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

#[test]
fn drvs_should_go_to_the_least_loaded_capable_builder() {
    let mut o = observed((1..=6).map(|n| J::new(i64::from(n), n)).collect(), &[]);
    o.agents = vec![
        agent("a1", &["x86_64-linux"], &[], 2),
        agent("a2", &["x86_64-linux"], &[], 4),
    ];
    let p = run(&o, 1);
    let b = |n: u32, builder: &str| (drv(n), builder.to_owned());
    // local 0/1, a1 0/2, a2 0/4: ties go to the first listed (local, then by name), then
    // the lowest running / max-jobs.
    assert_eq!(
        placed(&p),
        vec![
            b(1, "local"),
            b(2, "a1"),
            b(3, "a2"),
            b(4, "a2"),
            b(5, "a1"),
            b(6, "a2"),
        ]
    );
}

#[test]
fn required_features_and_systems_should_pick_the_builder() {
    let mut o = observed(
        vec![
            J::new(1, 1).features(&["kvm"]),
            J::new(2, 2).system("aarch64-linux"),
            J::new(3, 3).features(&["kvm", "big-parallel"]),
        ],
        &[],
    );
    o.agents = vec![
        agent("arm", &["aarch64-linux"], &[], 2),
        agent("vm", &["x86_64-linux"], &["kvm", "big-parallel"], 2),
    ];
    let p = run(&o, 2);
    assert_eq!(
        placed(&p),
        vec![
            (drv(1), "vm".to_owned()),
            (drv(2), "arm".to_owned()),
            (drv(3), "vm".to_owned())
        ]
    );
}

#[test]
fn a_job_no_known_builder_can_build_should_wait_when_agents_can_enrol() {
    let mut spec = spec(2);
    spec.builders.enrollment = Some(reconix_spec::Enrollment::new(
        "127.0.0.1:7000".parse().unwrap(),
        reconix_spec::SecretFile::new("/run/token"),
    ));
    let o = observed(vec![J::new(1, 1).features(&["kvm"])], &[]);
    let p = plan(&Placement, &spec, &o, Timestamp(0));
    assert!(p.steps.is_empty(), "{p:?}");
    // Without enrollment nothing could ever build it.
    let p = run(&o, 2);
    assert!(matches!(
        &p.steps[..],
        [Step::SetJobState { state: JobState::Failed, error: Some(e), .. }] if e == "no builder for `x86_64-linux` with kvm"
    ));
}

#[test]
fn an_agent_with_a_late_heartbeat_or_disconnected_should_get_nothing() {
    let mut o = observed(vec![J::new(1, 1), J::new(2, 2)], &[]);
    let mut late = agent("late", &["x86_64-linux"], &[], 4);
    late.last_seen = Some(Timestamp(0));
    let mut gone = agent("gone", &["x86_64-linux"], &[], 4);
    gone.connected = false;
    o.agents = vec![late, gone];
    // 31 s later: past the default 30 s heartbeat timeout.
    let p = plan(&Placement, &spec(0), &o, Timestamp(31_000));
    assert!(placed(&p).is_empty(), "{p:?}");
    // 10 s later `late` is fine, and the plan looks again when its deadline passes.
    let p = plan(&Placement, &spec(0), &o, Timestamp(10_000));
    assert_eq!(placed(&p).len(), 2);
    assert_eq!(p.then, Action::requeue(Duration::from_millis(20_001)));
}

#[test]
fn a_requeued_build_should_prefer_another_builder_and_its_jobs_wait_again() {
    let mut o = observed(vec![J::new(1, 1).requeued_from("a1")], &[]);
    o.agents = vec![
        agent("a1", &["x86_64-linux"], &[], 4),
        agent("a2", &["x86_64-linux"], &[], 1),
    ];
    let p = run(&o, 0);
    assert!(
        matches!(&p.steps[..], [Step::SetJobState { job: JobId(1), state: JobState::Queued, error: Some(e) }] if e.contains("connection lost")),
        "{p:?}"
    );
    o.jobs[0].state = JobState::Queued;
    let p = run(&o, 0);
    assert_eq!(placed(&p), vec![(drv(1), "a2".to_owned())]);
    // a2 busy: wait for it rather than go back to a1.
    o.running.insert(drv(9), BuilderName::new("a2").unwrap());
    o.jobs.push(J::new(9, 9).state(JobState::Building).0);
    let p = run(&o, 0);
    assert!(placed(&p).is_empty(), "{p:?}");
    // a1 is the only one left: it gets the retry.
    o.agents.pop();
    let p = run(&o, 0);
    assert_eq!(placed(&p), vec![(drv(1), "a1".to_owned())], "{p:?}");
}

#[test]
fn a_build_waiting_for_room_should_show_why_and_be_dispatched_only_after_its_time() {
    let mut o = observed(
        vec![J::new(1, 1).waiting_until(4_000, 3), J::new(2, 2)],
        &[],
    );
    let p = run(&o, 4);
    assert!(
        matches!(&p.steps[..], [Step::SetJobState { job: JobId(1), state: JobState::Queued, error: Some(e) }, Step::Dispatch(_)] if e.starts_with("waiting: state directory full")),
        "the job says why it waits: {p:?}"
    );
    o.jobs[0].state = JobState::Queued;
    let p = run(&o, 4);
    assert_eq!(dispatched(&p), vec![drv(2)], "not before its time");
    assert_eq!(
        p.then,
        Action::requeue(Duration::from_millis(4_001)),
        "the plan looks again when the wait is over"
    );
    let p = plan(&Placement, &spec(4), &o, Timestamp(4_000));
    assert_eq!(dispatched(&p), vec![drv(1), drv(2)], "its time has come");
}

#[test]
fn a_spec_entry_should_cap_an_agent() {
    let mut spec = spec(0);
    spec.builders.remote.insert(
        BuilderName::new("a1").unwrap(),
        reconix_spec::RemoteBuilder {
            systems: vec![System::x86_64_linux()],
            features: Vec::new(),
            max_jobs: 1,
        },
    );
    let mut o = observed(vec![J::new(1, 1), J::new(2, 2)], &[]);
    o.agents = vec![agent("a1", &["x86_64-linux"], &[], 8)];
    let p = plan(&Placement, &spec, &o, Timestamp(0));
    assert_eq!(placed(&p), vec![(drv(1), "a1".to_owned())]);
}

#[test]
fn transient_failures_should_be_retried_up_to_the_limit_and_real_ones_never() {
    use super::apply::{Ended, Verdict, verdict};
    let waits: Vec<u64> = (0..7)
        .map(|w| super::apply::wait_backoff(w).as_secs())
        .collect();
    assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30], "1 s doubling to 30 s");
    let full = || Ended::Waiting("waiting: state directory full: cannot write x.log".to_owned());
    let wait = || Verdict::Wait("waiting: state directory full: cannot write x.log".to_owned());
    assert_eq!(verdict(full(), 1, 2), wait());
    assert_eq!(
        verdict(full(), 3, 0),
        wait(),
        "a wait never uses up attempts"
    );
    let lost = || Ended::Transient("agent a1: connection lost".to_owned());
    let retry = || Verdict::Retry("agent a1: connection lost".to_owned());
    assert_eq!(verdict(lost(), 1, 2), retry());
    assert_eq!(verdict(lost(), 2, 2), retry());
    assert_eq!(
        verdict(lost(), 3, 2),
        Verdict::Finish {
            state: BuildState::Failed,
            exit_code: None,
            error: Some("gave up after 3 attempts: agent a1: connection lost".to_owned())
        }
    );
    let failed = Ended::Result {
        state: BuildState::Failed,
        exit_code: Some(1),
        error: Some("builder failed".to_owned()),
    };
    assert_eq!(
        verdict(failed, 1, 2),
        Verdict::Finish {
            state: BuildState::Failed,
            exit_code: Some(1),
            error: Some("builder failed".to_owned())
        }
    );
}

#[test]
fn a_build_that_failed_with_output_should_fail_its_jobs_with_the_reason() {
    let p = run(&observed(vec![J::new(1, 1).failed_with_output()], &[]), 2);
    assert_eq!(
        p.steps,
        vec![Step::SetJobState {
            job: JobId(1),
            state: JobState::Failed,
            error: Some("failed with output (nix-support/failed)".to_owned()),
        }]
    );
    let ok = run(
        &observed(vec![J::new(1, 1).build(BuildState::Succeeded)], &[]),
        2,
    );
    assert!(
        matches!(
            &ok.steps[..],
            [Step::SetJobState {
                state: JobState::Succeeded,
                error: None,
                ..
            }]
        ),
        "{ok:?}"
    );
}

#[test]
fn a_dependency_that_failed_with_output_should_not_gate_its_dependents() {
    // Its outputs exist: the dependent builds, whether the dependency's job is already
    // `failed` or not yet moved on.
    for state in [JobState::Failed, JobState::Queued] {
        let p = run(
            &observed(vec![J::new(2, 2).dep_with_output(1, state)], &[]),
            2,
        );
        assert_eq!(dispatched(&p), [drv(2)], "{state:?}: {p:?}");
    }
    // A plain failure still gates.
    let p = run(
        &observed(vec![J::new(2, 2).dep(1, JobState::Failed)], &[]),
        2,
    );
    assert!(dispatched(&p).is_empty(), "{p:?}");
}

#[test]
fn meta_timeout_and_max_silent_should_replace_the_repository_s() {
    let meta = reconix_spec::JobMeta {
        timeout: Some(7),
        max_silent: Some(3),
        ..reconix_spec::JobMeta::default()
    };
    let p = run(&observed(vec![J::new(1, 1).meta(meta)], &[]), 2);
    let [Step::Dispatch(d)] = &p.steps[..] else {
        panic!("{p:?}");
    };
    assert_eq!(
        (d.timeout, d.max_silent),
        (Duration::from_secs(7), Duration::from_secs(3))
    );
    // Without meta, the repository's (1h, 5m).
    let p = run(&observed(vec![J::new(1, 1)], &[]), 2);
    let [Step::Dispatch(d)] = &p.steps[..] else {
        panic!("{p:?}");
    };
    assert_eq!(
        (d.timeout, d.max_silent),
        (Duration::from_secs(3600), Duration::from_secs(300))
    );
}

#[test]
fn a_higher_scheduling_priority_should_be_dispatched_first() {
    let priority = |n| reconix_spec::JobMeta {
        scheduling_priority: Some(n),
        ..reconix_spec::JobMeta::default()
    };
    let jobs = || {
        vec![
            J::new(1, 1).meta(priority(50)),
            J::new(2, 2),
            J::new(3, 3).meta(priority(200)),
            J::new(4, 4).meta(priority(200)),
        ]
    };
    // One slot: the highest priority, oldest first among equals.
    assert_eq!(dispatched(&run(&observed(jobs(), &[]), 1)), [drv(3)]);
    // Room for all: every one, highest first, the default (100) above 50.
    assert_eq!(
        dispatched(&run(&observed(jobs(), &[]), 4)),
        [drv(3), drv(4), drv(2), drv(1)]
    );
}

#[test]
fn outputs_that_say_failed_should_make_a_failure_with_output_keeping_products() {
    use super::apply::{Ended, Verdict, built_outputs, verdict};
    let report = reconix_nixcli::OutputsReport {
        failed: true,
        products: vec![reconix_nixcli::ProductLine {
            kind: "file".to_owned(),
            subtype: "binary-dist".to_owned(),
            path: "/nix/store/x/a".to_owned(),
            default_path: None,
        }],
        rejected_products: vec!["junk".to_owned()],
        release_name: Some("x-1".to_owned()),
    };
    let outputs = built_outputs(report);
    assert!(outputs.failed);
    assert_eq!(outputs.release_name.as_deref(), Some("x-1"));
    assert_eq!(outputs.products.len(), 1);
    assert_eq!(outputs.products[0].path, "/nix/store/x/a");
    let ended = Ended::Built {
        exit_code: Some(0),
        outputs: outputs.clone(),
    };
    let v = verdict(ended, 1, 2);
    assert_eq!(
        v,
        Verdict::Built {
            exit_code: Some(0),
            outputs
        }
    );
    let plain = built_outputs(reconix_nixcli::OutputsReport::default());
    assert!(!plain.failed && plain.products.is_empty() && plain.release_name.is_none());
}

#[test]
fn consecutive_job_state_changes_should_be_applied_as_one_step() {
    let set = |job: i64, state: JobState| Step::SetJobState {
        job: JobId(job),
        state,
        error: None,
    };
    let cancel = Step::Cancel { drv_path: drv(9) };
    let steps = vec![
        cancel.clone(),
        set(1, JobState::DependencyFailed),
        set(2, JobState::DependencyFailed),
        set(3, JobState::Failed),
        cancel.clone(),
        set(4, JobState::Building),
    ];
    let change = |job: i64, state: JobState| JobChange {
        job: JobId(job),
        state,
        error: None,
    };
    assert_eq!(
        coalesce(steps),
        vec![
            cancel.clone(),
            Step::SetJobStates {
                changes: vec![
                    change(1, JobState::DependencyFailed),
                    change(2, JobState::DependencyFailed),
                    change(3, JobState::Failed),
                ]
            },
            cancel,
            set(4, JobState::Building),
        ]
    );
    assert_eq!(coalesce(Vec::new()), Vec::new());
}
