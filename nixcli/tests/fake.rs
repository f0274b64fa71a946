//! `FakeNix`: scripted results, recorded calls and held builds.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers: clippy's allow-*-in-tests only covers #[test] functions"
)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use reconix_nixcli::serve::RemoteBuildTimings;
use reconix_nixcli::{
    BuildOutcome, BuildRequest, BuildSettings, BuildStatus, Call, Error, EvalJob, EvalRequest,
    FakeEvaluation, FakeNix, JobDrv, Nix, RemoteBuildOutcome, RemoteBuildStatus, ServeClient,
};
use reconix_spec::names::{AttrPath, StorePath, System};
use tokio::io::{DuplexStream, ReadHalf, WriteHalf};
use tokio_util::sync::CancellationToken;

const DRV: &str = "/nix/store/7xbvbdqxbqxqnzg56mmd7l9bbrb4c534-a.drv";
const OUT: &str = "/nix/store/3ncc6v3x1g25lwynspd1xxbxknmpi33x-a";

fn sp(s: &str) -> StorePath {
    StorePath::new(s).unwrap()
}

fn job() -> EvalJob {
    EvalJob {
        attr: AttrPath::new("packages.x86_64-linux.a").unwrap(),
        name: "a".to_owned(),
        system: Some(System::new("x86_64-linux").unwrap()),
        result: Ok(JobDrv {
            drv_path: sp(DRV),
            outputs: reconix_spec::Outputs::from([("out".to_owned(), sp(OUT))]),
            deps: vec![],
            required_features: vec![],
            constituents: None,
            meta: reconix_spec::JobMeta::default(),
            skipped: None,
        }),
    }
}

fn eval_request(flake_ref: &str) -> EvalRequest {
    EvalRequest {
        flake_ref: flake_ref.to_owned(),
        systems: vec![System::new("x86_64-linux").unwrap()],
        roots: reconix_spec::Repo::default().job_roots(),
        allow_import_from_derivation: false,
    }
}

fn build_request(dir: &Path) -> BuildRequest {
    BuildRequest {
        drv_path: sp(DRV),
        gc_root: None,
        timeout: None,
        max_silent: None,
        log_file: dir.join("logs/a.log"),
    }
}

async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(1), f)
        .await
        .expect("timed out")
}

#[tokio::test]
async fn evaluate_should_return_the_scripted_jobs_and_record_the_request() {
    let nix = FakeNix::new();
    nix.set_evaluation("git+file:///r?rev=1", FakeEvaluation::Jobs(vec![job()]));
    nix.set_evaluation(
        "git+file:///r?rev=2",
        FakeEvaluation::FlakeError("syntax error".to_owned()),
    );

    let outcome = nix
        .evaluate(eval_request("git+file:///r?rev=1"))
        .await
        .unwrap();
    assert_eq!(outcome.jobs, [job()]);
    let err = nix
        .evaluate(eval_request("git+file:///r?rev=2"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::FlakeEval { message } if message == "syntax error"));
    let err = nix
        .evaluate(eval_request("git+file:///other"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::FlakeEval { .. }));
    assert_eq!(
        nix.calls(),
        [
            Call::Evaluate(eval_request("git+file:///r?rev=1")),
            Call::Evaluate(eval_request("git+file:///r?rev=2")),
            Call::Evaluate(eval_request("git+file:///other")),
        ]
    );
}

#[tokio::test]
async fn realise_should_default_to_success_with_the_evaluated_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let nix = FakeNix::new();
    nix.set_evaluation("f", FakeEvaluation::Jobs(vec![job()]));
    assert_eq!(nix.is_valid(&[sp(OUT)]).await.unwrap(), [false]);

    let outcome = nix
        .realise(build_request(dir.path()), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(outcome.status, BuildStatus::Succeeded);
    assert_eq!(outcome.outputs["out"], sp(OUT));
    assert_eq!(nix.is_valid(&[sp(OUT)]).await.unwrap(), [true]);
    let log = std::fs::read_to_string(dir.path().join("logs/a.log")).unwrap();
    assert!(log.contains(DRV));
    assert_eq!(nix.realised(), [sp(DRV)]);
}

#[tokio::test]
async fn realise_should_return_the_scripted_outcome_and_log() {
    let dir = tempfile::tempdir().unwrap();
    let nix = FakeNix::new();
    let failed = BuildOutcome {
        status: BuildStatus::Failed,
        exit_code: Some(100),
        message: Some("builder failed with exit code 3".to_owned()),
        outputs: BTreeMap::new(),
    };
    nix.set_build(sp(DRV), failed.clone());
    nix.set_log(sp(DRV), "about to fail\n");
    let outcome = nix
        .realise(build_request(dir.path()), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(outcome, failed);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("logs/a.log")).unwrap(),
        "about to fail\n"
    );
}

#[tokio::test]
async fn realise_should_wait_while_held_until_released() {
    let dir = tempfile::tempdir().unwrap();
    let nix = FakeNix::new();
    nix.hold(sp(DRV));
    let build = tokio::spawn({
        let (nix, req) = (nix.clone(), build_request(dir.path()));
        async move { nix.realise(req, CancellationToken::new()).await }
    });
    within(nix.wait_for_realise(&sp(DRV))).await;
    tokio::task::yield_now().await;
    assert!(!build.is_finished(), "a held build must not finish");

    nix.release(&sp(DRV));
    let outcome = within(build).await.unwrap().unwrap();
    assert_eq!(outcome.status, BuildStatus::Succeeded);
}

#[tokio::test]
async fn realise_should_be_cancellable_while_held() {
    let dir = tempfile::tempdir().unwrap();
    let nix = FakeNix::new();
    nix.hold(sp(DRV));
    let cancel = CancellationToken::new();
    let build = tokio::spawn({
        let (nix, req, cancel) = (nix.clone(), build_request(dir.path()), cancel.clone());
        async move { nix.realise(req, cancel).await }
    });
    within(nix.wait_for_realise(&sp(DRV))).await;
    cancel.cancel();
    let outcome = within(build).await.unwrap().unwrap();
    assert_eq!(outcome.status, BuildStatus::Cancelled);
}

#[tokio::test]
async fn add_root_should_leave_a_symlink_and_be_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let nix = FakeNix::new();
    let link = dir.path().join("gcroots/r/1/a");
    nix.add_root(&link, &sp(OUT)).await.unwrap();
    nix.add_root(&link, &sp(OUT)).await.unwrap();
    assert_eq!(std::fs::read_link(&link).unwrap(), Path::new(OUT));
    nix.add_root(&link, &sp(DRV)).await.unwrap();
    assert_eq!(std::fs::read_link(&link).unwrap(), Path::new(DRV));
    assert_eq!(nix.calls().len(), 3);
}

#[tokio::test]
async fn version_and_collect_garbage_should_be_recorded() {
    let nix = FakeNix::new();
    assert_eq!(nix.version().await.unwrap(), "2.8.0");
    nix.set_version("2.18.1");
    assert_eq!(nix.version().await.unwrap(), "2.18.1");
    nix.collect_garbage().await.unwrap();
    assert_eq!(
        nix.calls(),
        [Call::Version, Call::Version, Call::CollectGarbage]
    );
}

/// A client over a pipe to a server that only answers the handshake (the fake never uses it).
async fn idle_client() -> ServeClient<ReadHalf<DuplexStream>, WriteHalf<DuplexStream>> {
    use reconix_nixcli::serve::wire::{SERVE_MAGIC_2, put_u64};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (client_end, mut server_end) = tokio::io::duplex(1 << 10);
    tokio::spawn(async move {
        let mut hello = [0u8; 8];
        server_end.read_exact(&mut hello).await.unwrap();
        let mut reply = Vec::new();
        put_u64(&mut reply, SERVE_MAGIC_2);
        put_u64(&mut reply, 0x207);
        server_end.write_all(&reply).await.unwrap();
        // Holds the pipe open until the client goes.
        let _ = server_end.read_to_end(&mut Vec::new()).await;
    });
    let (r, w) = tokio::io::split(client_end);
    within(ServeClient::handshake(r, w)).await.unwrap()
}

#[tokio::test]
async fn build_remote_should_refuse_unscripted_builds_and_return_scripted_outcomes() {
    let nix = FakeNix::new();
    let mut client = idle_client().await;
    let settings = BuildSettings::default();

    let err = within(nix.build_remote(&mut client, &sp(DRV), &settings, None))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("cannot build remotely"), "{err}");

    let outcome = RemoteBuildOutcome {
        status: RemoteBuildStatus::Built,
        outputs: BTreeMap::from([("out".to_owned(), sp(OUT))]),
        copied_to_remote: vec![],
        copied_back: vec![sp(OUT)],
        times_built: 1,
        timings: RemoteBuildTimings::default(),
    };
    nix.set_remote_build(sp(DRV), outcome.clone());
    let got = within(nix.build_remote(&mut client, &sp(DRV), &settings, None))
        .await
        .unwrap();
    assert_eq!(got, outcome);
    assert_eq!(within(nix.is_valid(&[sp(OUT)])).await.unwrap(), [true]);
    assert_eq!(
        nix.calls()
            .into_iter()
            .filter(|c| matches!(c, Call::BuildRemote(d) if *d == sp(DRV)))
            .count(),
        2
    );
}

#[tokio::test]
async fn a_held_evaluation_should_stream_its_batches_and_wait_until_released() {
    use reconix_nixcli::{EvalEvent, StreamedJob};
    let nix = FakeNix::new();
    nix.set_evaluation("f", FakeEvaluation::Jobs(vec![job(), job()]));
    let first = StreamedJob {
        job: job(),
        buildable: true,
    };
    nix.set_evaluation_stream("f", vec![vec![first.clone()]]);
    nix.hold_evaluation("f");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let running = tokio::spawn({
        let nix = nix.clone();
        async move { nix.evaluate_streaming(eval_request("f"), tx).await }
    });
    assert_eq!(
        within(rx.recv()).await,
        Some(EvalEvent::Listed { attributes: 2 })
    );
    assert_eq!(
        within(rx.recv()).await,
        Some(EvalEvent::Evaluated(vec![first]))
    );
    assert!(!running.is_finished());
    nix.release_evaluation("f");
    let outcome = within(running).await.unwrap().unwrap();
    assert_eq!(outcome.jobs.len(), 2);
    assert!(nix.dropped_evaluations().is_empty());
}

#[tokio::test]
async fn a_dropped_evaluation_should_be_recorded() {
    let nix = FakeNix::new();
    nix.set_evaluation("f", FakeEvaluation::Jobs(vec![job()]));
    nix.hold_evaluation("f");
    let running = tokio::spawn({
        let nix = nix.clone();
        async move { nix.evaluate(eval_request("f")).await }
    });
    within(nix.wait_for_call(|c| matches!(c, Call::Evaluate(_)))).await;
    running.abort();
    within(nix.wait_for_dropped_evaluation("f")).await;
    assert_eq!(nix.dropped_evaluations(), ["f"]);
}
