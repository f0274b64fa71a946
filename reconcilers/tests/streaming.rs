//! Evaluations streamed into builds, under the real runtime with `FakeNix` and a real git
//! repository: jobs recorded while the evaluation runs, buildable ones built before it ends,
//! the timeout, and a new push stopping the running evaluation. Waits poll the status
//! database with a deadline; the fake holds evaluations to observe them mid-way.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test helpers")]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reconix_nixcli::{EvalJob, FakeEvaluation, FakeNix, StreamedJob};
use reconix_reconcilers::builds::Builds;
use reconix_reconcilers::evaluations::Evaluations;
use reconix_reconcilers::runtime::Controller;
use reconix_reconcilers::{Ctx, LivePorts};
use reconix_spec::RepoKey;
use reconix_status::{EvaluationId, EvaluationState, JobState, Status, StatusDb};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

mod common;
use common::{git, job, path};

type TestCtx = Ctx<LivePorts<FakeNix>>;

fn streamed(job: &EvalJob, buildable: bool) -> StreamedJob {
    StreamedJob {
        job: job.clone(),
        buildable,
    }
}

struct World {
    _tmp: tempfile::TempDir,
    repo: PathBuf,
    nix: FakeNix,
    ctx: Arc<TestCtx>,
    stop: CancellationToken,
    run: Option<JoinHandle<((), ())>>,
}

impl World {
    /// A local repository with one commit, and the evaluations and builds loops running
    /// (`extra` is added to the spec).
    fn start(extra: &str, script: impl FnOnce(&FakeNix, &str)) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("repo");
        std::fs::create_dir(&repo).unwrap();
        git(&repo, &["init", "-q", "-b", "main"]);
        let nix = FakeNix::new();
        let w0 = Self::commit_in(&repo, "one");
        script(&nix, &w0);
        let yaml = format!(
            "state-dir: {}\n{extra}forges:\n  here:\n    kind: local\n    poll-interval: 1h\n    repos:\n      demo:\n        path: {}\n        branches: [main]\nbuilders:\n  local:\n    max-jobs: 2\n",
            tmp.path().join("state").display(),
            repo.display()
        );
        let spec = Arc::new(reconix_spec::parse(&yaml, Path::new("/t/spec.yaml")).unwrap());
        let (tx, rx) = tokio::sync::watch::channel(spec);
        std::mem::forget(tx); // the spec never changes in these tests
        let status = Status::new(StatusDb::open_memory().unwrap());
        let ctx = Arc::new(Ctx::new(LivePorts::new(nix.clone()), status, rx.clone()));
        let controller = |r| Controller::new(Arc::new(r), Arc::clone(&ctx), rx.clone());
        let (e, b) = (controller(Evaluations::new()), {
            Controller::new(Arc::new(Builds::new()), Arc::clone(&ctx), rx.clone())
        });
        let (bh, eh) = (b.handle(), e.handle());
        let gcroots = Controller::new(
            Arc::new(reconix_reconcilers::gcroots::GcRoots::new()),
            Arc::clone(&ctx),
            rx.clone(),
        );
        ctx.wakers.set(bh, gcroots.handle(), eh);
        let stop = CancellationToken::new();
        let run = tokio::spawn({
            let stop = stop.clone();
            async move { tokio::join!(e.run(stop.clone()), b.run(stop)) }
        });
        Self {
            _tmp: tmp,
            repo,
            nix,
            ctx,
            stop,
            run: Some(run),
        }
    }

    fn commit_in(repo: &Path, content: &str) -> String {
        std::fs::write(
            repo.join("flake.nix"),
            format!("{{ outputs = _: {{ }}; }} # {content}"),
        )
        .unwrap();
        git(repo, &["add", "."]);
        git(repo, &["commit", "-qm", content]);
        let rev = git(repo, &["rev-parse", "HEAD"]);
        format!(
            "git+file://{}?ref=refs/heads/main&rev={rev}",
            repo.display()
        )
    }

    /// Commits a new head whose evaluation gives `jobs` and wakes the loop, as a push does
    /// (the poll interval is an hour).
    fn push(&self, jobs: Vec<EvalJob>) {
        let head = Self::commit_in(&self.repo, "two");
        self.nix.set_evaluation(&head, FakeEvaluation::Jobs(jobs));
        self.ctx
            .wakers
            .evaluations(RepoKey::parse("here/demo").unwrap());
    }

    /// Returns evaluation `id` as recorded.
    async fn evaluation(&self, id: i64) -> reconix_status::Evaluation {
        self.ctx
            .status
            .call(move |db| db.evaluation(EvaluationId(id)))
            .await
            .unwrap()
            .unwrap()
    }

    /// Polls `f` against the database (see [`common::until`]).
    async fn until<T: Send + 'static>(
        &self,
        what: &str,
        f: impl Fn(&mut StatusDb) -> reconix_status::Result<Option<T>> + Send + Sync + Clone + 'static,
    ) -> T {
        common::until(&self.ctx.status, what, f).await
    }

    async fn stop(mut self) {
        self.stop.cancel();
        if let Some(run) = self.run.take() {
            tokio::time::timeout(Duration::from_secs(10), run)
                .await
                .unwrap()
                .unwrap();
        }
    }
}

fn in_state(
    id: i64,
    state: EvaluationState,
) -> impl Fn(&mut StatusDb) -> reconix_status::Result<Option<()>> + Send + Sync + Clone + 'static {
    move |db| {
        Ok(db
            .evaluation(EvaluationId(id))?
            .filter(|e| e.state == state)
            .map(drop))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buildable_streamed_job_should_be_built_before_the_evaluation_ends_and_keep_its_id() {
    let (lib, app) = (job("lib", 1, &[]), job("app", 2, &["lib"]));
    let w = World::start("", |nix, flake| {
        nix.set_evaluation(flake, FakeEvaluation::Jobs(vec![lib.clone(), app.clone()]));
        nix.set_evaluation_stream(
            flake,
            vec![vec![streamed(&lib, true), streamed(&app, false)]],
        );
        nix.hold_evaluation(flake);
    });
    // `lib` is built and succeeds while the evaluation is still held mid-way.
    let jobs = w
        .until("lib built while evaluating", |db| {
            let e = db.evaluation(EvaluationId(1))?;
            let jobs = db.jobs_of_evaluation(EvaluationId(1))?;
            Ok((e.is_some_and(|e| e.state == EvaluationState::Evaluating)
                && jobs
                    .iter()
                    .any(|j| j.name == "lib" && j.state == JobState::Succeeded))
            .then_some(jobs))
        })
        .await;
    assert_eq!(jobs.len(), 2, "both jobs are visible while evaluating");
    let progress = w
        .ctx
        .status
        .call(|db| db.evaluation_progress(EvaluationId(1)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((progress.evaluated, progress.attributes), (2, 2));
    assert_eq!(
        w.nix.realised(),
        [path(1, "lib.drv")],
        "app is not built yet"
    );

    let flake = w.nix.calls().iter().find_map(|c| match c {
        reconix_nixcli::Call::Evaluate(r) => Some(r.flake_ref.clone()),
        _ => None,
    });
    w.nix.release_evaluation(&flake.unwrap());
    w.until("finished", in_state(1, EvaluationState::Finished))
        .await;
    let after = w
        .ctx
        .status
        .call(|db| db.jobs_of_evaluation(EvaluationId(1)))
        .await
        .unwrap();
    assert_eq!(after[0].id, jobs[0].id);
    assert_eq!(after[0].state, JobState::Succeeded);
    assert_eq!(after[1].state, JobState::Succeeded);
    assert_eq!(w.nix.realised(), [path(1, "lib.drv"), path(2, "app.drv")]);
    // Each of the two builds went through every phase of the cost report once, and their
    // closures were measured (in one batch or two: after they left the running set).
    let metrics = w.ctx.metrics.clone();
    w.until("both closures measured", move |db| {
        let text = metrics
            .encode(&reconix_status::StateCounts::default())
            .unwrap();
        let counted = |phase: &str, n: &str| {
            text.lines().any(|l| {
                l == format!(r#"reconix_build_phase_duration_seconds_count{{phase="{phase}"}} {n}"#)
            })
        };
        let sized = [path(1, "lib.drv"), path(2, "app.drv")].iter().all(|d| {
            db.build_by_drv(d)
                .ok()
                .flatten()
                .is_some_and(|b| b.closure_size_bytes.is_some())
        });
        Ok((["start", "build", "outputs", "record"]
            .iter()
            .all(|p| counted(p, "2"))
            && (counted("closure", "1") || counted("closure", "2"))
            && sized)
            .then_some(()))
    })
    .await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_evaluation_should_fail_with_how_far_it_got_and_keep_its_jobs() {
    let (a, b) = (job("a", 1, &[]), job("b", 2, &[]));
    let mut flake_ref = String::new();
    let w = World::start("evaluation:\n  timeout: 1s\n", |nix, flake| {
        nix.set_evaluation(flake, FakeEvaluation::Jobs(vec![a.clone(), b.clone()]));
        nix.set_evaluation_stream(flake, vec![vec![streamed(&a, true)]]);
        nix.hold_evaluation(flake);
        flake_ref = flake.to_owned();
    });
    w.until("timed out", in_state(1, EvaluationState::Failed))
        .await;
    tokio::time::timeout(
        Duration::from_secs(10),
        w.nix.wait_for_dropped_evaluation(&flake_ref),
    )
    .await
    .expect("the timed-out evaluation is dropped");
    let e = w.evaluation(1).await;
    assert_eq!(
        e.error.as_deref(),
        Some(
            "evaluation timed out after 1s: 1 of 2 attributes evaluated \
             (evaluation.timeout / eval-timeout)"
        )
    );
    // The job found before the timeout stays, and is built.
    w.until("a built", |db| {
        let jobs = db.jobs_of_evaluation(EvaluationId(1))?;
        Ok((jobs.len() == 1 && jobs[0].state == JobState::Succeeded).then_some(()))
    })
    .await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_should_cancel_the_jobs_a_timed_out_evaluation_left_building() {
    let (a, b) = (job("a", 1, &[]), job("b", 2, &[]));
    let drv_a = a.result.as_ref().unwrap().drv_path.clone();
    let mut flake_ref = String::new();
    let w = World::start("evaluation:\n  timeout: 1s\n", |nix, flake| {
        nix.set_evaluation(flake, FakeEvaluation::Jobs(vec![a.clone(), b.clone()]));
        nix.set_evaluation_stream(flake, vec![vec![streamed(&a, true)]]);
        nix.hold_evaluation(flake);
        nix.hold(drv_a.clone());
        flake_ref = flake.to_owned();
    });
    w.until("timed out", in_state(1, EvaluationState::Failed))
        .await;
    tokio::time::timeout(Duration::from_secs(10), w.nix.wait_for_realise(&drv_a))
        .await
        .expect("the job found before the timeout is being built");
    w.push(vec![job("c", 3, &[])]);
    w.until(
        "the new head finished",
        in_state(2, EvaluationState::Finished),
    )
    .await;
    w.until("a cancelled", |db| {
        let jobs = db.jobs_of_evaluation(EvaluationId(1))?;
        Ok((jobs.len() == 1 && jobs[0].state == JobState::Cancelled).then_some(()))
    })
    .await;
    let e = w.evaluation(1).await;
    assert_eq!(e.state, EvaluationState::Failed, "it keeps its timeout");
    assert!(e.error.unwrap().starts_with("evaluation timed out"));
    w.nix.release(&drv_a);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_push_should_stop_the_running_evaluation_and_evaluate_the_new_head() {
    let mut first = String::new();
    let w = World::start("", |nix, flake| {
        nix.set_evaluation(flake, FakeEvaluation::Jobs(vec![job("a", 1, &[])]));
        // Nothing streamed: the old evaluation is stopped before any of its jobs is known.
        nix.set_evaluation_stream(flake, Vec::new());
        nix.hold_evaluation(flake);
        first = flake.to_owned();
    });
    w.until("evaluating", in_state(1, EvaluationState::Evaluating))
        .await;
    w.push(vec![job("b", 2, &[])]);
    // Any drop proves the wake worked (the poll interval is an hour); 10 s holds under load.
    tokio::time::timeout(
        Duration::from_secs(10),
        w.nix.wait_for_dropped_evaluation(&first),
    )
    .await
    .expect("the superseded evaluation is stopped after the wake");
    w.until("superseded", in_state(1, EvaluationState::Superseded))
        .await;
    w.until(
        "the new head finished",
        in_state(2, EvaluationState::Finished),
    )
    .await;
    let e = w.evaluation(1).await;
    assert_eq!(e.superseded_by, Some(EvaluationId(2)));
    assert_eq!(w.nix.realised(), [path(2, "b.drv")]);
    w.stop().await;
}
