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

use reconix_nixcli::{
    BuildOutcome, BuildRequest, BuildStatus, Call, Error, EvalJob, EvalRequest, FakeEvaluation,
    FakeNix, JobDrv, Nix,
};
use reconix_spec::names::{AttrPath, StorePath, System};
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
            outputs: BTreeMap::from([("out".to_owned(), sp(OUT))]),
            deps: vec![],
        }),
    }
}

fn eval_request(flake_ref: &str) -> EvalRequest {
    EvalRequest {
        flake_ref: flake_ref.to_owned(),
        systems: vec![System::new("x86_64-linux").unwrap()],
        attributes: vec!["packages".to_owned()],
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
