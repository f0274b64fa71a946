//! Router tests: requests through `router(state).oneshot(..)`, no server (axum's testing example).

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use reconix_spec::{AttrPath, RepoKey, StorePath, System, Timestamp};
use reconix_status::{BuildState, EvaluationId, JobState, NewJob, Status, StatusDb};
use serde_json::Value;
use tower::ServiceExt;

use crate::{AppState, router};

fn drv(n: u32, name: &str) -> StorePath {
    StorePath::new(format!("/nix/store/{n:0>32}-{name}.drv")).unwrap()
}

fn job(n: u32, name: &str, state: JobState, error: Option<&str>) -> NewJob {
    NewJob {
        attr: AttrPath::new(format!("packages.x86_64-linux.{name}")).unwrap(),
        name: name.to_owned(),
        system: Some(System::new("x86_64-linux").unwrap()),
        drv_path: (state != JobState::EvalFailed).then(|| drv(n, name)),
        outputs: BTreeMap::new(),
        deps: Vec::new(),
        state,
        error: error.map(str::to_owned),
    }
}

/// A database with one evaluation: a built job with a log, and a job whose evaluation failed.
fn state(log: &std::path::Path) -> (AppState, EvaluationId) {
    let mut db = StatusDb::open_memory().unwrap();
    let repo = db
        .upsert_repo(&RepoKey::parse("here/demo").unwrap())
        .unwrap();
    let t = Timestamp(1);
    let (id, _) = db
        .insert_evaluation(repo, "refs/heads/main", &"a".repeat(40), "git+file:///r", t)
        .unwrap();
    db.record_evaluation_result(
        id,
        &[
            job(1, "hello", JobState::Queued, None),
            job(
                2,
                "broken",
                JobState::EvalFailed,
                Some("intentional <b>error</b>"),
            ),
        ],
        t,
    )
    .unwrap();
    db.upsert_build(&drv(1, "hello"), None, BuildState::Running, t)
        .unwrap();
    db.finish_build(
        &drv(1, "hello"),
        BuildState::Succeeded,
        Some(0),
        None,
        Some(log),
        t,
    )
    .unwrap();
    db.record_loop_run("builds", Err("nix exploded"), None, t)
        .unwrap();
    (AppState::new(Status::new(db)), id)
}

async fn get(state: &AppState, uri: &str) -> (StatusCode, String) {
    let resp = router(state.clone())
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn evaluations_should_list_id_repo_ref_rev_and_state() {
    let tmp = tempfile_path("log");
    let (st, id) = state(&tmp);
    let (code, body) = get(&st, "/api/v1/evaluations").await;
    assert_eq!(code, StatusCode::OK);
    let v: Value = serde_json::from_str(&body).unwrap();
    let e = &v[0];
    assert_eq!(e["id"], id.0);
    assert_eq!(e["repo"], "here/demo");
    assert_eq!(e["ref"], "refs/heads/main");
    assert_eq!(e["rev"], "a".repeat(40));
    assert_eq!(e["state"], "building");
}

#[tokio::test]
async fn evaluation_detail_should_carry_jobs_with_states_and_errors() {
    let tmp = tempfile_path("log");
    let (st, id) = state(&tmp);
    let (code, body) = get(&st, &format!("/api/v1/evaluations/{}", id.0)).await;
    assert_eq!(code, StatusCode::OK);
    let v: Value = serde_json::from_str(&body).unwrap();
    let jobs = v["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[0]["attr"], "packages.x86_64-linux.hello");
    assert!(
        jobs[0]["drv_path"]
            .as_str()
            .unwrap()
            .ends_with("-hello.drv")
    );
    assert_eq!(jobs[0]["system"], "x86_64-linux");
    assert_eq!(jobs[0]["build"]["state"], "succeeded");
    assert_eq!(jobs[1]["state"], "eval-failed");
    assert_eq!(jobs[1]["error"], "intentional <b>error</b>");
    assert_eq!(
        get(&st, "/api/v1/evaluations/999").await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn job_log_should_be_served_as_text_and_missing_logs_should_be_404() {
    let tmp = tempfile_path("log");
    std::fs::write(&tmp, "building hello\nok\n").unwrap();
    let (st, id) = state(&tmp);
    let detail: Value =
        serde_json::from_str(&get(&st, &format!("/api/v1/evaluations/{}", id.0)).await.1).unwrap();
    let hello = detail["jobs"][0]["id"].as_i64().unwrap();
    let broken = detail["jobs"][1]["id"].as_i64().unwrap();
    let (code, body) = get(&st, &format!("/api/v1/jobs/{hello}/log")).await;
    assert_eq!(
        (code, body.as_str()),
        (StatusCode::OK, "building hello\nok\n")
    );
    assert_eq!(
        get(&st, &format!("/api/v1/jobs/{broken}/log")).await.0,
        StatusCode::NOT_FOUND
    );
    std::fs::remove_file(&tmp).unwrap();
    assert_eq!(
        get(&st, &format!("/api/v1/jobs/{hello}/log")).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn loops_and_overview_should_report_loop_health() {
    let (st, _) = state(&tempfile_path("log"));
    let (_, body) = get(&st, "/api/v1/loops").await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v[0]["name"], "builds");
    assert_eq!(v[0]["consecutive_failures"], 1);
    assert_eq!(v[0]["last_error"], "nix exploded");
    let (_, body) = get(&st, "/api/v1/status").await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["job_counts"]["eval-failed"], 1);
    assert_eq!(v["evaluations"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn page_should_list_evaluations_and_escape_errors() {
    let (st, _) = state(&tempfile_path("log"));
    let (code, body) = get(&st, "/").await;
    assert_eq!(code, StatusCode::OK);
    assert!(body.contains("here/demo"), "{body}");
    assert!(body.contains("packages.x86_64-linux.hello"), "{body}");
    assert!(
        body.contains("intentional &lt;b&gt;error&lt;/b&gt;"),
        "{body}"
    );
    assert!(!body.contains("<b>error</b>"));
}

fn tempfile_path(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "reconix-web-test-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}
