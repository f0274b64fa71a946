//! Router tests of the job endpoints and the authenticated mutations, through
//! `router(state).oneshot(..)`.

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use reconix_spec::{AttrPath, RepoKey, SecretFile, Spec, StorePath, System, Timestamp};
use reconix_status::views::JobFilter;
use reconix_status::{BuildState, EvaluationId, JobId, JobState, NewJob, Status, StatusDb};
use serde_json::{Value, json};
use tokio::sync::watch;
use tower::ServiceExt;

use crate::{AppState, Wake, router};

const TOKEN: &str = "s3cret-token";

fn drv(n: u32, name: &str) -> StorePath {
    StorePath::new(format!("/nix/store/{n:0>32}-{name}.drv")).unwrap()
}

fn job(n: u32, name: &str, deps: &[&str]) -> NewJob {
    let attr = |name: &str| AttrPath::new(format!("packages.x86_64-linux.{name}")).unwrap();
    NewJob {
        attr: attr(name),
        name: name.to_owned(),
        system: Some(System::new("x86_64-linux").unwrap()),
        drv_path: Some(drv(n, name)),
        outputs: reconix_spec::Outputs::new(),
        deps: deps.iter().map(|d| attr(d)).collect(),
        required_features: Vec::new(),
        state: JobState::Queued,
        error: None,
        constituents: None,
        meta: reconix_spec::JobMeta::default(),
    }
}

/// A test daemon: the state, its ids, the wakes it received and its temporary directory.
struct Fixture {
    state: AppState,
    /// A finished evaluation: `lib` failed (with a log), `app` (needs lib) dependency-failed,
    /// `doc` succeeded.
    finished: EvaluationId,
    /// A building evaluation with one queued job `x`.
    building: EvaluationId,
    /// lib, app, doc, x.
    jobs: [JobId; 4],
    wakes: Arc<Mutex<Vec<Wake>>>,
    spec: watch::Sender<Arc<Spec>>,
    dir: tempfile::TempDir,
}

impl Fixture {
    /// With the token file `TOKEN` configured when `token` is true.
    fn new(token: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("lib.log");
        std::fs::write(&log, "building lib\nerror: boom\n").unwrap();
        let mut db = StatusDb::open_memory().unwrap();
        let repo = db
            .upsert_repo(&RepoKey::parse("here/demo").unwrap())
            .unwrap();
        let t = Timestamp(1);
        let (finished, _) = db
            .insert_evaluation(repo, "refs/heads/main", &"a".repeat(40), "git+file:///r", t)
            .unwrap();
        db.record_evaluation_result(
            finished,
            &[
                job(1, "lib", &[]),
                job(2, "app", &["lib"]),
                job(3, "doc", &[]),
            ],
            t,
        )
        .unwrap();
        let ids: Vec<JobId> = db
            .jobs_of_evaluation(finished)
            .unwrap()
            .iter()
            .map(|j| j.id)
            .collect();
        db.upsert_build(&drv(1, "lib"), None, BuildState::Running, t)
            .unwrap();
        db.finish_build(
            &drv(1, "lib"),
            BuildState::Failed,
            Some(1),
            Some("exit 1"),
            Some(&log),
            t,
        )
        .unwrap();
        db.set_job_state(ids[0], JobState::Failed, Some("exit 1"), t)
            .unwrap();
        db.set_job_state(ids[1], JobState::DependencyFailed, Some("dep"), t)
            .unwrap();
        db.set_job_state(ids[2], JobState::Succeeded, None, t)
            .unwrap();
        assert!(db.finish_evaluation_if_done(finished, t).unwrap());
        let (building, _) = db
            .insert_evaluation(repo, "refs/heads/dev", &"b".repeat(40), "git+file:///r", t)
            .unwrap();
        db.record_evaluation_result(building, &[job(4, "x", &[])], t)
            .unwrap();
        let x = db.jobs_of_evaluation(building).unwrap()[0].id;

        let mut spec = Spec::default();
        if token {
            let file = dir.path().join("api-token");
            std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
            spec.api_token_file = Some(SecretFile::new(file));
        }
        let (tx, rx) = watch::channel(Arc::new(spec));
        let wakes = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&wakes);
        let state = AppState::new(Status::new(db))
            .with_spec(rx)
            .with_wake(Arc::new(move |w| sink.lock().unwrap().push(w)));
        Self {
            state,
            finished,
            building,
            jobs: [ids[0], ids[1], ids[2], x],
            wakes,
            spec: tx,
            dir,
        }
    }

    fn wakes(&self) -> Vec<Wake> {
        std::mem::take(&mut *self.wakes.lock().unwrap())
    }

    /// Everything the mutations could change, to show that a refused one changed nothing.
    async fn snapshot(&self) -> Value {
        self.state
            .status
            .call(|db| {
                let jobs = db.job_list(JobFilter {
                    limit: 100,
                    ..JobFilter::default()
                })?;
                let evaluations = db.evaluation_list(100)?;
                let build = db.build_by_drv(&drv(1, "lib"))?.map(|b| b.state);
                Ok(json!({ "jobs": jobs, "evaluations": evaluations, "build": build }))
            })
            .await
            .unwrap()
    }
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

async fn send(state: &AppState, request: Request<Body>) -> Answer {
    let resp = router(state.clone()).oneshot(request).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    Answer {
        status,
        headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

async fn get(state: &AppState, uri: &str) -> Answer {
    send(state, Request::get(uri).body(Body::empty()).unwrap()).await
}

async fn post(state: &AppState, uri: &str, authorization: Option<&str>) -> Answer {
    let mut request = Request::post(uri);
    if let Some(value) = authorization {
        request = request.header(header::AUTHORIZATION, value);
    }
    send(state, request.body(Body::empty()).unwrap()).await
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

#[tokio::test]
async fn job_should_be_its_view_with_the_evaluation_id() {
    let f = Fixture::new(false);
    let a = get(&f.state, &format!("/api/v1/jobs/{}", f.jobs[0].0)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    let v = a.json();
    assert_eq!(v["id"], f.jobs[0].0);
    assert_eq!(v["evaluation_id"], f.finished.0);
    assert_eq!(v["attr"], "packages.x86_64-linux.lib");
    assert_eq!(v["state"], "failed");
    assert_eq!(v["error"], "exit 1");
    assert_eq!(v["build"]["state"], "failed");
    assert_eq!(v["log_available"], true);
    let app = get(&f.state, &format!("/api/v1/jobs/{}", f.jobs[1].0))
        .await
        .json();
    assert_eq!(app["deps"], json!([f.jobs[0].0]));
    assert_eq!(app["build"], Value::Null);
    let a = get(&f.state, "/api/v1/jobs/999").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.json(), json!({ "error": "job not found" }));
}

#[tokio::test]
async fn jobs_should_filter_by_evaluation_and_state_and_page_in_id_order() {
    let f = Fixture::new(false);
    let ids = |a: Answer| -> Vec<i64> {
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        a.json()
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_i64().unwrap())
            .collect()
    };
    let all: Vec<i64> = f.jobs.iter().map(|j| j.0).collect();
    assert_eq!(ids(get(&f.state, "/api/v1/jobs").await), all);
    let uri = format!("/api/v1/jobs?evaluation={}", f.finished.0);
    assert_eq!(ids(get(&f.state, &uri).await), all[..3]);
    assert_eq!(
        ids(get(&f.state, "/api/v1/jobs?state=dependency-failed").await),
        [all[1]]
    );
    let uri = format!("/api/v1/jobs?evaluation={}&state=queued", f.finished.0);
    assert!(ids(get(&f.state, &uri).await).is_empty());
    assert_eq!(
        ids(get(&f.state, "/api/v1/jobs?limit=2&offset=1").await),
        all[1..3]
    );
    let v = get(&f.state, "/api/v1/jobs?limit=1").await.json();
    assert_eq!(v[0]["evaluation_id"], f.finished.0);
    assert_eq!(
        get(&f.state, "/api/v1/jobs?state=exploded").await.status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn job_log_with_an_offset_should_serve_the_rest_with_size_and_completeness() {
    let f = Fixture::new(false);
    let lib = f.jobs[0].0;
    let whole = "building lib\nerror: boom\n";
    let size = whole.len().to_string();

    let a = get(&f.state, &format!("/api/v1/jobs/{lib}/log")).await;
    assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, whole));
    assert_eq!(a.header("x-reconix-log-size"), Some(size.as_str()));
    assert_eq!(a.header("x-reconix-log-complete"), Some("true"));
    assert_eq!(a.header("content-type"), Some("text/plain; charset=utf-8"));

    let a = get(&f.state, &format!("/api/v1/jobs/{lib}/log?offset=13")).await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (StatusCode::OK, "error: boom\n")
    );
    assert_eq!(a.header("x-reconix-log-size"), Some(size.as_str()));
    for offset in [whole.len(), 1000] {
        let a = get(&f.state, &format!("/api/v1/jobs/{lib}/log?offset={offset}")).await;
        assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, ""));
        assert_eq!(a.header("x-reconix-log-size"), Some(size.as_str()));
        assert_eq!(a.header("x-reconix-log-complete"), Some("true"));
    }

    // A queued job has no log yet: 404 as before without an offset, an empty tail with one.
    let x = f.jobs[3].0;
    assert_eq!(
        get(&f.state, &format!("/api/v1/jobs/{x}/log")).await.status,
        StatusCode::NOT_FOUND
    );
    let a = get(&f.state, &format!("/api/v1/jobs/{x}/log?offset=0")).await;
    assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, ""));
    assert_eq!(a.header("x-reconix-log-size"), Some("0"));
    assert_eq!(a.header("x-reconix-log-complete"), Some("false"));
    assert_eq!(
        get(&f.state, "/api/v1/jobs/999/log?offset=0").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn mutations_without_the_right_token_should_be_401_and_change_nothing() {
    let configured = Fixture::new(true);
    let unconfigured = Fixture::new(false);
    let missing_file = Fixture::new(true);
    std::fs::remove_file(missing_file.dir.path().join("api-token")).unwrap();
    let wrong = "Bearer not-the-token".to_owned();
    let basic = format!("Basic {TOKEN}");
    let right = bearer();
    let cases: [(&Fixture, Option<&str>, &str); 6] = [
        (&configured, None, "missing bearer token"),
        (&configured, Some(&wrong), "invalid bearer token"),
        (&configured, Some(&basic), "missing bearer token"),
        (&configured, Some("Bearer "), "missing bearer token"),
        (&unconfigured, Some(&right), "no api-token-file"),
        (&missing_file, Some(&right), "unavailable"),
    ];
    for (f, authorization, reason) in cases {
        let before = f.snapshot().await;
        for uri in [
            format!("/api/v1/jobs/{}/rebuild", f.jobs[0].0),
            format!("/api/v1/evaluations/{}/cancel", f.building.0),
            format!("/api/v1/evaluations/{}/rerun", f.finished.0),
            // Even an unknown id: a refused request learns nothing about it.
            "/api/v1/jobs/999/rebuild".to_owned(),
        ] {
            let a = post(&f.state, &uri, authorization).await;
            assert_eq!(
                a.status,
                StatusCode::UNAUTHORIZED,
                "{uri} {authorization:?}"
            );
            assert_eq!(
                a.header("www-authenticate"),
                Some("Bearer realm=\"reconix\"")
            );
            let error = a.json()["error"].as_str().unwrap().to_owned();
            assert!(error.contains(reason), "{uri}: {error}");
            assert!(!a.body.contains(TOKEN), "{}", a.body);
        }
        assert_eq!(f.snapshot().await, before);
        assert!(f.wakes().is_empty());
    }
}

#[tokio::test]
async fn rebuild_with_the_token_should_requeue_the_job_its_dependents_and_its_build() {
    let f = Fixture::new(true);
    let [lib, app, _, _] = f.jobs;
    let a = post(
        &f.state,
        &format!("/api/v1/jobs/{}/rebuild", lib.0),
        Some(&bearer()),
    )
    .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    assert_eq!(
        a.json(),
        json!({
            "job": lib.0,
            "evaluation": f.finished.0,
            "requeued": [lib.0, app.0],
            "builds_reset": [drv(1, "lib").as_str()],
        })
    );
    let repo = RepoKey::parse("here/demo").unwrap();
    assert_eq!(f.wakes(), [Wake::Builds, Wake::Statuses(repo)]);
    let v = get(&f.state, &format!("/api/v1/evaluations/{}", f.finished.0))
        .await
        .json();
    assert_eq!(v["state"], "building");
    let states: Vec<&str> = v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["queued", "queued", "succeeded"]);
    assert_eq!(v["jobs"][0]["build"]["state"], "queued");

    // Now queued, it cannot be rebuilt again: 409, nothing changes, nobody is woken.
    let before = f.snapshot().await;
    let a = post(
        &f.state,
        &format!("/api/v1/jobs/{}/rebuild", lib.0),
        Some(&bearer()),
    )
    .await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.body);
    assert!(a.json()["error"].as_str().unwrap().contains("queued"));
    assert_eq!(f.snapshot().await, before);
    assert!(f.wakes().is_empty());
    let a = post(&f.state, "/api/v1/jobs/999/rebuild", Some(&bearer())).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn cancel_with_the_token_should_cancel_unfinished_jobs_and_end_the_evaluation() {
    let f = Fixture::new(true);
    let uri = format!("/api/v1/evaluations/{}/cancel", f.building.0);
    let a = post(&f.state, &uri, Some(&bearer())).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    assert_eq!(
        a.json(),
        json!({ "evaluation": f.building.0, "state": "finished", "cancelled_jobs": 1 })
    );
    let repo = RepoKey::parse("here/demo").unwrap();
    assert_eq!(
        f.wakes(),
        [
            Wake::Builds,
            Wake::Evaluations(repo.clone()),
            Wake::Statuses(repo)
        ]
    );
    let v = get(&f.state, &format!("/api/v1/evaluations/{}", f.building.0))
        .await
        .json();
    assert_eq!(v["state"], "finished");
    assert_eq!(v["error"], reconix_status::CANCELLED_ERROR);
    assert_eq!(v["jobs"][0]["state"], "cancelled");

    let a = post(&f.state, &uri, Some(&bearer())).await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.body);
    assert!(f.wakes().is_empty());
    let a = post(&f.state, "/api/v1/evaluations/999/cancel", Some(&bearer())).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn rerun_with_the_token_should_replace_the_evaluation_with_a_queued_one() {
    let f = Fixture::new(true);
    let uri = format!("/api/v1/evaluations/{}/rerun", f.finished.0);
    let a = post(&f.state, &uri, Some(&bearer())).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    let v = a.json();
    assert_eq!(v["replaces"], f.finished.0);
    let new = v["evaluation"].as_i64().unwrap();
    assert!(new > f.building.0, "{v}");
    assert_eq!(v.as_object().unwrap().len(), 2, "{v}");
    let repo = RepoKey::parse("here/demo").unwrap();
    assert_eq!(
        f.wakes(),
        [Wake::Evaluations(repo.clone()), Wake::Statuses(repo)]
    );
    let e = get(&f.state, &format!("/api/v1/evaluations/{new}"))
        .await
        .json();
    assert_eq!(
        (&e["state"], &e["ref"], &e["rev"]),
        (
            &json!("queued"),
            &json!("refs/heads/main"),
            &json!("a".repeat(40))
        )
    );
    assert_eq!(
        get(&f.state, &format!("/api/v1/evaluations/{}", f.finished.0))
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    // A building evaluation must be cancelled first.
    let uri = format!("/api/v1/evaluations/{}/rerun", f.building.0);
    let a = post(&f.state, &uri, Some(&bearer())).await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.body);
    assert!(
        a.json()["error"]
            .as_str()
            .unwrap()
            .contains("cancel it first")
    );
    assert!(f.wakes().is_empty());
}

#[tokio::test]
async fn a_rotated_token_file_should_take_effect_at_once() {
    let f = Fixture::new(true);
    std::fs::write(f.dir.path().join("api-token"), "  rotated \n").unwrap();
    let uri = format!("/api/v1/evaluations/{}/cancel", f.building.0);
    assert_eq!(
        post(&f.state, &uri, Some(&bearer())).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        post(&f.state, &uri, Some("Bearer rotated")).await.status,
        StatusCode::ACCEPTED
    );
    // The spec can also drop the file altogether.
    f.spec.send_replace(Arc::new(Spec::default()));
    let uri = format!("/api/v1/jobs/{}/rebuild", f.jobs[0].0);
    assert_eq!(
        post(&f.state, &uri, Some("Bearer rotated")).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn an_empty_token_file_should_refuse_everything() {
    let f = Fixture::new(true);
    std::fs::write(f.dir.path().join("api-token"), "\n").unwrap();
    let uri = format!("/api/v1/evaluations/{}/cancel", f.building.0);
    for authorization in [None, Some("Bearer "), Some("Bearer x")] {
        assert_eq!(
            post(&f.state, &uri, authorization).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
}

#[tokio::test]
async fn pages_and_reads_should_need_no_token() {
    let f = Fixture::new(true);
    for uri in [
        "/".to_owned(),
        "/api/v1/jobs".to_owned(),
        format!("/api/v1/jobs/{}", f.jobs[0].0),
        format!("/api/v1/jobs/{}/log", f.jobs[0].0),
        format!("/api/v1/evaluations/{}", f.finished.0),
    ] {
        let a = get(&f.state, &uri).await;
        assert_eq!(a.status, StatusCode::OK, "{uri}: {}", a.body);
    }
}
