//! The three loops together under the real runtime, with `FakeNix` recording every call and a
//! real git repository as the `local` forge. Waits poll the status database with a deadline.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test helpers")]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reconix_nixcli::{BuildOutcome, BuildStatus, Call, EvalJob, FakeEvaluation, FakeNix};
use reconix_reconcilers::builds::{Builds, Placement, Step as BuildStep};
use reconix_reconcilers::evaluations::Evaluations;
use reconix_reconcilers::gcroots::GcRoots;
use reconix_reconcilers::runtime::{Controller, Reconciler};
use reconix_reconcilers::{Ctx, LivePorts};
use reconix_spec::{BuilderName, Spec};
use reconix_status::{EvaluationState, JobState, Status, StatusDb};
use tokio_util::sync::CancellationToken;

mod common;
use common::{git, job, path};

type TestCtx = Ctx<LivePorts<FakeNix>>;

struct World {
    _tmp: tempfile::TempDir,
    nix: FakeNix,
    ctx: Arc<TestCtx>,
    spec: tokio::sync::watch::Receiver<Arc<Spec>>,
    flake_ref: String,
}

fn world() -> World {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("flake.nix"), "{ outputs = _: { }; }").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-qm", "init"]);
    let rev = git(&repo, &["rev-parse", "HEAD"]);
    let yaml = format!(
        "state-dir: {}\nforges:\n  here:\n    kind: local\n    poll-interval: 1s\n    repos:\n      demo:\n        path: {}\n        branches: [main]\nbuilders:\n  local:\n    max-jobs: 2\n",
        tmp.path().join("state").display(),
        repo.display()
    );
    let spec = Arc::new(reconix_spec::parse(&yaml, Path::new("/t/spec.yaml")).unwrap());
    let (_tx, rx) = tokio::sync::watch::channel(spec);
    std::mem::forget(_tx); // the spec never changes in these tests
    let nix = FakeNix::new();
    let status = Status::new(StatusDb::open_memory().unwrap());
    let ctx = Arc::new(Ctx::new(LivePorts::new(nix.clone()), status, rx.clone()));
    World {
        flake_ref: format!(
            "git+file://{}?ref=refs/heads/main&rev={rev}",
            repo.display()
        ),
        _tmp: tmp,
        nix,
        ctx,
        spec: rx,
    }
}

fn controller<R>(r: R, w: &World) -> Controller<R>
where
    R: Reconciler<Spec = Spec, Context = TestCtx>,
{
    Controller::new(Arc::new(r), Arc::clone(&w.ctx), w.spec.clone())
}

/// Polls `f` against `w`'s database (see [`common::until`]).
async fn until<T: Send + 'static>(
    w: &World,
    what: &str,
    f: impl Fn(&mut StatusDb) -> reconix_status::Result<Option<T>> + Send + Sync + Clone + 'static,
) -> T {
    common::until(&w.ctx.status, what, f).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loops_should_evaluate_gate_build_and_root_a_commit() {
    let w = world();
    let (a, b) = (job("a", 1, &[]), job("b", 2, &["a"]));
    let (bad, after) = (job("bad", 3, &[]), job("after", 4, &["bad"]));
    let broken = EvalJob {
        result: Err("boom".to_owned()),
        ..job("broken", 5, &[])
    };
    w.nix.set_evaluation(
        &w.flake_ref,
        FakeEvaluation::Jobs(vec![a, b, bad, after, broken]),
    );
    w.nix.set_build(
        path(3, "bad.drv"),
        BuildOutcome {
            status: BuildStatus::Failed,
            exit_code: Some(100),
            message: Some("builder failed".to_owned()),
            outputs: BTreeMap::new(),
        },
    );
    w.nix.hold(path(1, "a.drv"));

    let (e, b_, g) = (
        controller(Evaluations::new(), &w),
        controller(Builds::new(), &w),
        controller(GcRoots::new(), &w),
    );
    w.ctx.wakers.set(b_.handle(), g.handle(), e.handle());
    let stop = CancellationToken::new();
    let run = tokio::spawn({
        let stop = stop.clone();
        async move { tokio::join!(e.run(stop.clone()), b_.run(stop.clone()), g.run(stop)) }
    });

    // While `a` is held, `b` (which depends on it) is not dispatched.
    w.nix.wait_for_realise(&path(1, "a.drv")).await;
    until(&w, "a building", |db| {
        let jobs = db.jobs_of_evaluation(reconix_status::EvaluationId(1))?;
        Ok(jobs
            .iter()
            .any(|j| j.name == "a" && j.state == JobState::Building)
            .then_some(()))
    })
    .await;
    assert!(
        !w.nix.realised().contains(&path(2, "b.drv")),
        "b ran before a finished"
    );
    w.nix.release(&path(1, "a.drv"));

    let jobs = until(&w, "evaluation finished", |db| {
        let e = db.evaluation(reconix_status::EvaluationId(1))?;
        if e.is_some_and(|e| e.state == EvaluationState::Finished) {
            return Ok(Some(
                db.jobs_of_evaluation(reconix_status::EvaluationId(1))?,
            ));
        }
        Ok(None)
    })
    .await;
    let state = |name: &str| jobs.iter().find(|j| j.name == name).unwrap().state;
    assert_eq!(state("a"), JobState::Succeeded);
    assert_eq!(state("b"), JobState::Succeeded);
    assert_eq!(state("bad"), JobState::Failed);
    assert_eq!(state("after"), JobState::DependencyFailed);
    assert_eq!(state("broken"), JobState::EvalFailed);

    // Each drv was realised once; the dependent of a failure never was.
    let mut realised = w.nix.realised();
    realised.sort();
    assert_eq!(
        realised,
        [path(1, "a.drv"), path(2, "b.drv"), path(3, "bad.drv")]
    );

    // Both succeeded jobs end up rooted by the gcroots loop (the fake writes real links).
    let roots = w.ctx.state_dir().join("gcroots/here/demo/1");
    until(&w, "roots of a and b", {
        let roots = roots.clone();
        move |_| {
            // The links point into a store that does not exist: look at the links themselves.
            let link = |n: &str| std::fs::symlink_metadata(roots.join(n)).is_ok();
            Ok((link("packages.x86_64-linux.a") && link("packages.x86_64-linux.b")).then_some(()))
        }
    })
    .await;
    assert!(std::fs::symlink_metadata(roots.join("packages.x86_64-linux.bad")).is_err());

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn dispatch_of_a_drv_whose_build_already_ended_should_do_nothing() {
    let w = world();
    let drv = path(1, "a.drv");
    w.ctx
        .status
        .call({
            let drv = drv.clone();
            move |db| {
                db.finish_build(
                    &drv,
                    reconix_status::BuildState::Failed,
                    Some(100),
                    None,
                    None,
                    reconix_spec::Timestamp(1),
                )
                .map(drop)
            }
        })
        .await
        .unwrap();
    let step = BuildStep::Dispatch(reconix_reconcilers::builds::Dispatch {
        drv_path: drv,
        builder: BuilderName::local(),
        jobs: Vec::new(),
        gc_root: w.ctx.state_dir().join("r"),
        timeout: Duration::from_secs(60),
        max_silent: Duration::from_secs(60),
    });
    Builds::new()
        .apply(&Placement, step.clone(), &w.ctx)
        .await
        .unwrap();
    Builds::new().apply(&Placement, step, &w.ctx).await.unwrap();
    assert!(w.nix.calls().iter().all(|c| !matches!(c, Call::Realise(_))));
    assert!(w.ctx.running.is_empty());
}

#[tokio::test]
async fn a_root_for_a_job_purged_since_it_was_planned_should_not_be_added() {
    use reconix_reconcilers::gcroots::Step as RootStep;
    let w = world();
    let key = reconix_spec::RepoKey::parse("here/demo").unwrap();
    // A job the plan saw, purged by retention before the step runs: it no longer exists.
    let step = RootStep::AddRoot {
        job: reconix_status::JobId(42),
        link: w
            .ctx
            .state_dir()
            .join("gcroots/here/demo/7/packages.x86_64-linux.a"),
        path: path(101, "a"),
        output: "out".to_owned(),
    };
    GcRoots::new().apply(&key, step, &w.ctx).await.unwrap();
    assert!(
        w.nix
            .calls()
            .iter()
            .all(|c| !matches!(c, Call::AddRoot { .. })),
        "{:?}",
        w.nix.calls()
    );
    assert!(!w.ctx.state_dir().join("gcroots/here/demo/7").exists());
}
