//! Router tests: requests through `router(state).oneshot(..)`, no server (axum's testing example).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use reconix_spec::{
    AttrPath, BuilderName, RemoteBuilder, RepoKey, Spec, StorePath, System, Timestamp,
};
use reconix_status::{AgentHello, BuildState, EvaluationId, JobState, NewJob, Status, StatusDb};
use serde_json::Value;
use tokio::sync::watch;
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
        outputs: reconix_spec::Outputs::new(),
        deps: Vec::new(),
        required_features: Vec::new(),
        state,
        error: error.map(str::to_owned),
        constituents: None,
        meta: reconix_spec::JobMeta::default(),
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
        body.contains("intentional &#60;b&#62;error&#60;/b&#62;"),
        "{body}"
    );
    assert!(!body.contains("<b>error</b>"));
}

/// A database with agent `arm` (connected, heartbeat now, one build running `hello`), agent
/// `old` (revoked, disconnected), and a spec capping `arm` at one slot for `aarch64-linux`.
fn builders_state(now: Timestamp) -> AppState {
    let mut db = StatusDb::open_memory().unwrap();
    let repo = db
        .upsert_repo(&RepoKey::parse("here/demo").unwrap())
        .unwrap();
    let (id, _) = db
        .insert_evaluation(
            repo,
            "refs/heads/main",
            &"a".repeat(40),
            "git+file:///r",
            now,
        )
        .unwrap();
    db.record_evaluation_result(id, &[job(1, "hello", JobState::Queued, None)], now)
        .unwrap();
    let systems = vec!["aarch64-linux".to_owned(), "x86_64-linux".to_owned()];
    let features = vec!["kvm".to_owned()];
    for name in ["arm", "old"] {
        let key = format!("SHA256:{name}");
        let hello = AgentHello {
            name,
            key_fingerprint: &key,
            systems: &systems,
            features: &features,
            max_jobs: 4,
        };
        db.enroll_agent(&hello, now).unwrap();
        if name == "arm" {
            db.set_agent_connected(&hello, true, now).unwrap();
            db.record_heartbeat(name, 1, now).unwrap();
        }
    }
    assert!(db.revoke_agent("old", now, "alice").unwrap());
    let arm = BuilderName::new("arm").unwrap();
    db.upsert_build(&drv(1, "hello"), Some(&arm), BuildState::Running, now)
        .unwrap();
    let mut spec = Spec::default();
    spec.builders.local.max_jobs = 0;
    spec.builders.remote.insert(
        arm,
        RemoteBuilder {
            systems: vec![System::new("aarch64-linux").unwrap()],
            features: vec!["kvm".to_owned()],
            max_jobs: 1,
        },
    );
    let (_tx, rx) = watch::channel(Arc::new(spec));
    AppState::new(Status::new(db)).with_intake(rx, Arc::new(|_| {}))
}

#[tokio::test]
async fn builders_should_show_state_load_running_jobs_and_heartbeat() {
    let now = Timestamp::now();
    let st = builders_state(now);
    let (code, body) = get(&st, "/api/v1/builders").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let names: Vec<_> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["local", "arm", "old"]);
    let (local, arm, old) = (&v[0], &v[1], &v[2]);
    assert_eq!(
        (&local["kind"], &local["state"]),
        (&"local".into(), &"disabled".into())
    );
    assert_eq!(local["key_fingerprint"], Value::Null);
    assert_eq!(
        (&arm["kind"], &arm["state"]),
        (&"agent".into(), &"ready".into())
    );
    assert_eq!(arm["systems"], serde_json::json!(["aarch64-linux"]));
    assert_eq!((&arm["max_jobs"], &arm["running"]), (&1.into(), &1.into()));
    assert_eq!(arm["load"], 1.0);
    assert_eq!(arm["last_heartbeat_at"], now.0);
    assert_eq!(arm["connected_at"], now.0);
    assert_eq!(arm["revoked_at"], Value::Null);
    assert_eq!(arm["key_fingerprint"], "SHA256:arm");
    let build = &arm["running_builds"][0];
    assert_eq!(build["drv_path"], drv(1, "hello").as_str());
    assert_eq!(build["attempts"], 1);
    assert_eq!(build["jobs"][0]["attr"], "packages.x86_64-linux.hello");
    assert_eq!(
        (&old["state"], &old["revoked_at"]),
        (&"revoked".into(), &now.0.into())
    );
    assert_eq!(old["connected_at"], Value::Null);
    assert_eq!(old["load"], 0.0);
}

#[tokio::test]
async fn builders_without_a_spec_should_use_the_default_local_builder() {
    let st = AppState::new(Status::new(StatusDb::open_memory().unwrap()));
    let (code, body) = get(&st, "/api/v1/builders").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(
        (&v[0]["name"], &v[0]["state"]),
        (&"local".into(), &"ready".into())
    );
    assert_eq!(
        (&v[0]["max_jobs"], &v[0]["running"]),
        (&2.into(), &0.into())
    );
    assert_eq!(v[0]["running_builds"], serde_json::json!([]));
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

/// Two caches in the spec; the first has one pushed path and one failing.
fn caches_state() -> AppState {
    let text = "state-dir: /var/lib/reconix
forges:
  here:
    kind: local
    repos:
      demo: {path: /src/demo}
caches:
  - push-url: file:///srv/cache
    public-url: https://cache.example.org
    public-key: cache.example.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=
    signing-key-file: /run/key
  - push-url: http://127.0.0.1:1/c
    public-key: other-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=
    signing-key-file: /run/key
    repos: [here/demo]
";
    let spec = reconix_spec::parse(text, std::path::Path::new("/etc/reconix/spec.yaml")).unwrap();
    let mut db = StatusDb::open_memory().unwrap();
    let t = Timestamp(1_000);
    let out = |n: u32| StorePath::new(format!("/nix/store/{n:0>32}-out")).unwrap();
    db.record_cache_pushed("file:///srv/cache", &[out(1)], t)
        .unwrap();
    db.record_cache_failure(
        "file:///srv/cache",
        &[out(2)],
        "error: cannot write <b>there</b>",
        t,
        |_| std::time::Duration::from_secs(2),
    )
    .unwrap();
    let (_tx, rx) = watch::channel(Arc::new(spec));
    AppState::new(Status::new(db)).with_spec(rx)
}

#[tokio::test]
async fn caches_api_should_show_each_cache_with_its_pushes() {
    let (code, body) = get(&caches_state(), "/api/v1/caches").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v[0]["push_url"], "file:///srv/cache");
    assert_eq!(v[0]["substituter"], "https://cache.example.org");
    assert_eq!(v[0]["kind"], "file");
    assert_eq!(v[0]["repos"], Value::Null);
    assert_eq!(v[0]["pushes"]["pushed"], 1);
    assert_eq!(v[0]["pushes"]["failed"], 1);
    assert_eq!(
        v[0]["pushes"]["last_error"],
        "error: cannot write <b>there</b>"
    );
    assert_eq!(v[1]["substituter"], "http://127.0.0.1:1/c");
    assert_eq!(v[1]["repos"], serde_json::json!(["here/demo"]));
    assert_eq!(v[1]["pushes"]["pushed"], 0);
    // The signing key's path is not shown.
    assert!(!body.contains("/run/key"), "{body}");
}

#[tokio::test]
async fn cache_page_should_give_snippets_with_every_public_url_and_key() {
    let (code, body) = get(&caches_state(), "/cache").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    for needle in [
        "extra-substituters = [ &#34;https://cache.example.org&#34; &#34;http://127.0.0.1:1/c&#34; ];",
        "nix.settings = {",
        "extra-substituters = https://cache.example.org http://127.0.0.1:1/c",
        "extra-trusted-public-keys = cache.example.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY= other-1:",
        "error: cannot write &#60;b&#62;there&#60;/b&#62;",
    ] {
        assert!(body.contains(needle), "no {needle:?} in {body}");
    }
    assert!(!body.contains("/run/key"));
    // Without caches the page says how to add one.
    let (_, empty) = get(
        &AppState::new(Status::new(StatusDb::open_memory().unwrap())),
        "/cache",
    )
    .await;
    assert!(empty.contains("No cache in the spec"), "{empty}");
}
