//! Tests of the REST clients against a local axum server on 127.0.0.1:0 that serves canned
//! answers shaped like the official schema subsets (`tests/fixtures/rest/`, see its
//! PROVENANCE.md) and records every request it receives.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions fail loudly"
)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use reconix_forge::{
    ApiError, CheckConclusion, CheckOutput, CheckRunSpec, CheckStatus, CommitStatus, Forge,
    GiteaClient, GithubClient, GitlabClient, HookEvent, HookSpec, Permission, RetryPolicy,
    StatusState,
};
use reconix_spec::{RepoName, Secret};
use serde_json::{Value, json};

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    /// Path and query, exactly as sent (percent-encoding kept).
    target: String,
    headers: HeaderMap,
    body: Option<Value>,
}

impl Recorded {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One canned answer.
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

impl Reply {
    fn json(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

type Responder = dyn Fn(&Recorded, usize) -> Reply + Send + Sync;

#[derive(Clone)]
struct ServerState {
    calls: Arc<Mutex<Vec<Recorded>>>,
    responder: Arc<Responder>,
}

/// The running test server: its origin (`http://127.0.0.1:port`) and the recorded requests.
struct Server {
    origin: String,
    calls: Arc<Mutex<Vec<Recorded>>>,
}

impl Server {
    fn calls(&self) -> Vec<Recorded> {
        self.calls.lock().unwrap().clone()
    }
}

async fn record(
    State(state): State<ServerState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let recorded = Recorded {
        method: method.to_string(),
        target: uri
            .path_and_query()
            .map_or_else(|| uri.path().to_owned(), ToString::to_string),
        headers,
        body: serde_json::from_slice(&body).ok(),
    };
    let index = {
        let mut calls = state.calls.lock().unwrap();
        calls.push(recorded.clone());
        calls.len() - 1
    };
    let reply = (state.responder)(&recorded, index);
    let mut response = (
        StatusCode::from_u16(reply.status).unwrap(),
        [("content-type", "application/json")],
        reply.body,
    )
        .into_response();
    for (name, value) in reply.headers {
        response.headers_mut().append(name, value.parse().unwrap());
    }
    response
}

/// Starts a server whose answers come from `responder(origin)`: the responder is built once the
/// port is known, so that it can write absolute `Link` URLs.
async fn serve<F, R>(make: F) -> Server
where
    F: FnOnce(String) -> R,
    R: Fn(&Recorded, usize) -> Reply + Send + Sync + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let calls = Arc::new(Mutex::new(Vec::new()));
    let state = ServerState {
        calls: Arc::clone(&calls),
        responder: Arc::new(make(origin.clone())),
    };
    let app = Router::new().fallback(record).with_state(state);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Server { origin, calls }
}

fn fixture(path: &str) -> String {
    let full = format!("{}/tests/fixtures/rest/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|err| panic!("{full}: {err}"))
}

/// Short delays so that retry tests finish at once; the attempt count stays the default 4.
fn fast() -> RetryPolicy {
    RetryPolicy {
        min_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(2),
        request_timeout: Duration::from_secs(5),
        ..RetryPolicy::default()
    }
}

fn token() -> Secret {
    Secret::new("tok-123")
}

fn repo(name: &str) -> RepoName {
    RepoName::new(name).unwrap()
}

fn hook_spec() -> HookSpec {
    HookSpec {
        url: "https://ci.example.com/webhooks/gh".to_owned(),
        secret: Secret::new("hook-secret"),
        events: vec![HookEvent::Push, HookEvent::PullRequest],
    }
}

fn status(state: StatusState) -> CommitStatus {
    CommitStatus {
        state,
        context: "reconix/eval".to_owned(),
        description: Some("evaluating".to_owned()),
        target_url: Some("https://ci.example.com/jobs/1".to_owned()),
    }
}

async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), future)
        .await
        .unwrap()
}

const ALL_STATES: [StatusState; 6] = [
    StatusState::Pending,
    StatusState::Running,
    StatusState::Success,
    StatusState::Failure,
    StatusState::Error,
    StatusState::Cancelled,
];

// ---------------------------------------------------------------------------------------------
// GitHub

fn github(server: &Server) -> GithubClient {
    GithubClient::with_retry_policy(&server.origin, &token(), fast()).unwrap()
}

#[tokio::test]
async fn github_hooks_should_be_listed_created_patched_and_deleted() {
    let server = serve(|_| {
        |req: &Recorded, _| match (req.method.as_str(), req.target.as_str()) {
            ("GET", "/repos/octocat/Hello-World/hooks?per_page=100") => {
                Reply::json(200, fixture("github/hooks.json"))
            }
            ("POST", "/repos/octocat/Hello-World/hooks") => {
                Reply::json(201, fixture("github/hook.json"))
            }
            ("PATCH", "/repos/octocat/Hello-World/hooks/12345678") => {
                Reply::json(200, fixture("github/hook.json"))
            }
            ("DELETE", "/repos/octocat/Hello-World/hooks/12345678") => Reply::json(204, ""),
            _ => Reply::json(404, r#"{"message":"Not Found"}"#),
        }
    })
    .await;
    let client = github(&server);
    let r = repo("octocat/Hello-World");

    let hooks = within(client.list_hooks(&r)).await.unwrap();
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0].id, 12_345_678);
    assert_eq!(hooks[0].url, "https://example.com/webhook");
    assert_eq!(hooks[0].events, [HookEvent::Push, HookEvent::PullRequest]);
    assert!(hooks[0].active);
    assert_eq!(hooks[0].content_type.as_deref(), Some("json"));

    let created = within(client.create_hook(&r, &hook_spec())).await.unwrap();
    assert_eq!(created.id, 12_345_678);
    within(client.patch_hook(&r, 12_345_678, &hook_spec()))
        .await
        .unwrap();
    within(client.delete_hook(&r, 12_345_678)).await.unwrap();

    let calls = server.calls();
    assert_eq!(calls.len(), 4);
    for call in &calls {
        assert_eq!(call.header("authorization"), Some("Bearer tok-123"));
    }
    let config = json!({
        "url": "https://ci.example.com/webhooks/gh",
        "content_type": "json",
        "secret": "hook-secret",
        "insecure_ssl": "0",
    });
    assert_eq!(
        calls[1].body,
        Some(json!({
            "name": "web",
            "active": true,
            "events": ["push", "pull_request"],
            "config": config,
        }))
    );
    assert_eq!(calls[2].method, "PATCH");
    assert_eq!(
        calls[2].body,
        Some(json!({"active": true, "events": ["push", "pull_request"], "config": config}))
    );
    assert_eq!(calls[3].method, "DELETE");
}

#[tokio::test]
async fn github_branches_should_follow_link_next_to_the_last_page() {
    let server = serve(|origin| {
        move |req: &Recorded, _| match req.target.as_str() {
            "/repos/octocat/Hello-World/branches?per_page=100" => {
                Reply::json(200, fixture("github/branches.json")).header(
                    "link",
                    format!(
                        "<{origin}/repos/octocat/Hello-World/branches?per_page=100&page=2>; rel=\"next\", \
                         <{origin}/repos/octocat/Hello-World/branches?per_page=100&page=2>; rel=\"last\""
                    ),
                )
            }
            "/repos/octocat/Hello-World/branches?per_page=100&page=2" => Reply::json(
                200,
                r#"[{"name":"dev","commit":{"sha":"0000000000000000000000000000000000000001","url":"x"},"protected":false}]"#,
            ),
            _ => Reply::json(404, "{}"),
        }
    })
    .await;
    let branches = within(github(&server).branches(&repo("octocat/Hello-World")))
        .await
        .unwrap();
    let names: Vec<_> = branches.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["master", "dev"]);
    assert_eq!(branches[0].sha, "c5b97d5ae6c19d5c5df71a34c7fbeeda2479ccbc");
    assert_eq!(server.calls().len(), 2);
}

#[tokio::test]
async fn github_should_refuse_a_pagination_link_to_another_host() {
    let server = serve(|_| {
        |_: &Recorded, _| {
            Reply::json(200, fixture("github/branches.json"))
                .header("link", "<https://evil.example/steal?page=2>; rel=\"next\"")
        }
    })
    .await;
    let err = within(github(&server).branches(&repo("octocat/Hello-World")))
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::ForeignLink { .. }), "{err:?}");
    assert_eq!(server.calls().len(), 1);
}

#[tokio::test]
async fn github_pulls_and_repository_should_decode_the_official_examples() {
    let server = serve(|_| {
        |req: &Recorded, _| match req.target.as_str() {
            "/repos/octocat/Hello-World/pulls?state=open&per_page=100" => {
                Reply::json(200, fixture("github/pulls.json"))
            }
            "/repos/octocat/Hello-World" => Reply::json(200, fixture("github/repository.json")),
            _ => Reply::json(404, "{}"),
        }
    })
    .await;
    let client = github(&server);
    let r = repo("octocat/Hello-World");
    let pulls = within(client.open_pull_requests(&r)).await.unwrap();
    assert_eq!(pulls.len(), 1);
    assert_eq!(pulls[0].number, 1347);
    assert_eq!(
        pulls[0].head_sha,
        "6dcb09b5b57875f334f61aebed695e2e4193db5e"
    );
    assert_eq!(pulls[0].head_ref, "new-topic");
    assert_eq!(pulls[0].base_ref, "master");
    assert_eq!(pulls[0].author, "octocat");
    assert!(!pulls[0].from_fork);
    let info = within(client.repository(&r)).await.unwrap();
    assert_eq!(info.default_branch.as_deref(), Some("master"));
}

#[tokio::test]
async fn github_permission_should_be_normalised() {
    let example: Value = serde_json::from_str(&fixture("github/permission.json")).unwrap();
    let server = serve(move |_| {
        move |req: &Recorded, _| {
            let user = req
                .target
                .strip_prefix("/repos/octocat/Hello-World/collaborators/")
                .and_then(|rest| rest.strip_suffix("/permission"))
                .unwrap_or_default();
            if user == "ghost" {
                return Reply::json(404, r#"{"message":"Not Found"}"#);
            }
            let mut body = example.clone();
            body["permission"] = json!(user);
            Reply::json(200, body.to_string())
        }
    })
    .await;
    let client = github(&server);
    let r = repo("octocat/Hello-World");
    for (level, expected) in [
        ("admin", Permission::Admin),
        ("maintain", Permission::Write),
        ("write", Permission::Write),
        ("triage", Permission::Read),
        ("read", Permission::Read),
        ("none", Permission::None),
        ("ghost", Permission::None),
    ] {
        let got = within(client.permission(&r, level)).await.unwrap();
        assert_eq!(got, expected, "{level}");
    }
    assert!(Permission::Write.can_write() && !Permission::Read.can_write());
}

#[tokio::test]
async fn github_create_status_should_post_the_mapped_state() {
    let server = serve(|_| |_: &Recorded, _| Reply::json(201, fixture("github/status.json"))).await;
    let client = github(&server);
    let r = repo("octocat/Hello-World");
    let sha = "6dcb09b5b57875f334f61aebed695e2e4193db5e";
    for state in ALL_STATES {
        within(client.create_status(&r, sha, &status(state)))
            .await
            .unwrap();
    }
    let calls = server.calls();
    let states: Vec<_> = calls
        .iter()
        .map(|c| c.body.as_ref().unwrap()["state"].clone())
        .collect();
    assert_eq!(
        states,
        ["pending", "pending", "success", "failure", "error", "error"]
    );
    assert_eq!(calls[0].method, "POST");
    assert_eq!(
        calls[0].target,
        format!("/repos/octocat/Hello-World/statuses/{sha}")
    );
    assert_eq!(
        calls[0].body,
        Some(json!({
            "state": "pending",
            "context": "reconix/eval",
            "description": "evaluating",
            "target_url": "https://ci.example.com/jobs/1",
        }))
    );
}

#[tokio::test]
async fn github_check_runs_should_be_created_and_updated() {
    let server =
        serve(|_| |_: &Recorded, _| Reply::json(201, fixture("github/check-run.json"))).await;
    let client = github(&server);
    let r = repo("github/hello-world");
    let mut spec = CheckRunSpec {
        name: "reconix".to_owned(),
        head_sha: "ce587453ced02b1526dfb4cb910479d431683101".to_owned(),
        status: CheckStatus::InProgress,
        conclusion: None,
        details_url: None,
        output: Some(CheckOutput {
            title: "3 of 10 jobs done".to_owned(),
            summary: "| state | count |\n|---|---|\n| success | 3 |".to_owned(),
        }),
    };
    let run = within(client.create_check_run(&r, &spec)).await.unwrap();
    assert_eq!(run.id, 4);
    spec.status = CheckStatus::Completed;
    spec.conclusion = Some(CheckConclusion::Failure);
    within(client.update_check_run(&r, run.id, &spec))
        .await
        .unwrap();
    let calls = server.calls();
    assert_eq!(calls[0].method, "POST");
    assert_eq!(calls[0].target, "/repos/github/hello-world/check-runs");
    assert_eq!(
        calls[0].body,
        Some(json!({
            "name": "reconix",
            "head_sha": "ce587453ced02b1526dfb4cb910479d431683101",
            "status": "in_progress",
            "output": {"title": "3 of 10 jobs done", "summary": "| state | count |\n|---|---|\n| success | 3 |"},
        }))
    );
    assert_eq!(calls[1].method, "PATCH");
    assert_eq!(calls[1].target, "/repos/github/hello-world/check-runs/4");
    let body = calls[1].body.as_ref().unwrap();
    assert_eq!(body["status"], "completed");
    assert_eq!(body["conclusion"], "failure");
}

#[tokio::test]
async fn unauthorized_should_be_its_own_error_and_never_retried() {
    let server =
        serve(|_| |_: &Recorded, _| Reply::json(401, r#"{"message":"Bad credentials"}"#)).await;
    let err = within(github(&server).repository(&repo("o/r")))
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Unauthorized { .. }), "{err:?}");
    assert!(!err.to_string().contains("tok-123"));
    assert_eq!(server.calls().len(), 1);
}

#[tokio::test]
async fn too_many_requests_should_report_retry_after_without_retrying() {
    let server = serve(|_| {
        |_: &Recorded, _| Reply::json(429, r#"{"message":"slow down"}"#).header("retry-after", "30")
    })
    .await;
    let err = within(github(&server).branches(&repo("o/r")))
        .await
        .unwrap_err();
    match err {
        ApiError::RateLimited { retry_after } => assert_eq!(retry_after, Duration::from_secs(30)),
        other => panic!("expected RateLimited, got {other:?}"),
    }
    assert_eq!(server.calls().len(), 1);
}

#[tokio::test]
async fn github_exhausted_quota_should_wait_until_the_reset() {
    let reset = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 120;
    let server = serve(move |_| {
        move |_: &Recorded, _| {
            Reply::json(403, r#"{"message":"API rate limit exceeded"}"#)
                .header("x-ratelimit-remaining", "0")
                .header("x-ratelimit-reset", reset.to_string())
        }
    })
    .await;
    let err = within(github(&server).repository(&repo("o/r")))
        .await
        .unwrap_err();
    match err {
        ApiError::RateLimited { retry_after } => {
            assert!(
                (115..=120).contains(&retry_after.as_secs()),
                "{retry_after:?}"
            );
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    assert_eq!(server.calls().len(), 1);
}

#[tokio::test]
async fn forbidden_without_rate_limit_should_be_refused() {
    let server = serve(|_| |_: &Recorded, _| Reply::json(403, r#"{"message":"Forbidden"}"#)).await;
    let err = within(github(&server).repository(&repo("o/r")))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ApiError::Refused { status: 403, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn server_errors_should_be_retried_until_success() {
    let server = serve(|_| {
        |_: &Recorded, n| {
            if n < 2 {
                Reply::json(500, r#"{"message":"oops"}"#)
            } else {
                Reply::json(200, fixture("github/repository.json"))
            }
        }
    })
    .await;
    let info = within(github(&server).repository(&repo("octocat/Hello-World")))
        .await
        .unwrap();
    assert_eq!(info.default_branch.as_deref(), Some("master"));
    assert_eq!(server.calls().len(), 3);
}

#[tokio::test]
async fn server_errors_should_give_up_after_four_attempts() {
    let server = serve(|_| |_: &Recorded, _| Reply::json(503, "unavailable")).await;
    let err = within(github(&server).repository(&repo("o/r")))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ApiError::Server { status: 503, .. }),
        "{err:?}"
    );
    assert_eq!(server.calls().len(), 4);
}

#[tokio::test]
async fn malformed_json_should_be_a_decode_error() {
    let server = serve(|_| {
        |req: &Recorded, _| {
            if req.target.contains("hooks") {
                Reply::json(200, r#"[{"id": "not a number", "config": {}}]"#)
            } else {
                Reply::json(200, r#"{"default_branch": "#)
            }
        }
    })
    .await;
    let client = github(&server);
    let err = within(client.repository(&repo("o/r"))).await.unwrap_err();
    assert!(matches!(err, ApiError::Decode { .. }), "{err:?}");
    let err = within(client.list_hooks(&repo("o/r"))).await.unwrap_err();
    assert!(matches!(err, ApiError::Decode { .. }), "{err:?}");
}

#[tokio::test]
async fn an_unreachable_forge_should_be_a_transport_error_after_retries() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let client = GithubClient::with_retry_policy(&origin, &token(), fast()).unwrap();
    let err = within(client.repository(&repo("o/r"))).await.unwrap_err();
    assert!(matches!(err, ApiError::Transport { .. }), "{err:?}");
}

#[tokio::test]
async fn a_request_that_times_out_should_be_retried() {
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = Arc::clone(&calls);
    let app = Router::new().fallback(move || {
        let seen = Arc::clone(&seen);
        async move {
            // The first answer comes long after the client's 200 ms timeout.
            if seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            fixture("github/repository.json")
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let policy = RetryPolicy {
        request_timeout: Duration::from_millis(200),
        ..fast()
    };
    let client = GithubClient::with_retry_policy(&origin, &token(), policy).unwrap();
    let info = within(client.repository(&repo("o/r"))).await.unwrap();
    assert_eq!(info.default_branch.as_deref(), Some("master"));
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[test]
fn secrets_should_not_appear_in_debug_output() {
    let shown = format!("{:?}", hook_spec());
    assert!(!shown.contains("hook-secret"), "{shown}");
    let client = GithubClient::new("https://api.github.com", &token()).unwrap();
    let shown = format!("{client:?}");
    assert!(!shown.contains("tok-123"), "{shown}");
    let client = GitlabClient::new("https://gitlab.com/api/v4", &token()).unwrap();
    assert!(!format!("{client:?}").contains("tok-123"));
    let client = GiteaClient::new("https://codeberg.org/api/v1", &token()).unwrap();
    assert!(!format!("{client:?}").contains("tok-123"));
}

// ---------------------------------------------------------------------------------------------
// GitLab

fn gitlab(server: &Server) -> GitlabClient {
    GitlabClient::with_retry_policy(&format!("{}/api/v4", server.origin), &token(), fast()).unwrap()
}

const GL_PROJECT: &str = "/api/v4/projects/group%2Fsub%2Fname";

#[tokio::test]
async fn gitlab_hooks_should_address_the_project_by_encoded_path() {
    let server = serve(|_| {
        |req: &Recorded, _| {
            let Some(rest) = req.target.strip_prefix(GL_PROJECT) else {
                return Reply::json(404, "{}");
            };
            match (req.method.as_str(), rest) {
                ("GET", "/hooks?per_page=100") => Reply::json(200, fixture("gitlab/hooks.json")),
                ("POST", "/hooks") => Reply::json(201, fixture("gitlab/hook.json")),
                ("PUT", "/hooks/1") => Reply::json(200, fixture("gitlab/hook.json")),
                ("DELETE", "/hooks/1") => Reply::json(204, ""),
                _ => Reply::json(404, "{}"),
            }
        }
    })
    .await;
    let client = gitlab(&server);
    let r = repo("group/sub/name");
    let hooks = within(client.list_hooks(&r)).await.unwrap();
    assert_eq!(hooks[0].id, 1);
    assert_eq!(hooks[0].url, "http://example.com/hook");
    assert_eq!(hooks[0].events, [HookEvent::Push, HookEvent::PullRequest]);
    assert!(hooks[0].active);
    within(client.create_hook(&r, &hook_spec())).await.unwrap();
    within(client.patch_hook(&r, 1, &hook_spec()))
        .await
        .unwrap();
    within(client.delete_hook(&r, 1)).await.unwrap();

    let calls = server.calls();
    assert_eq!(calls.len(), 4);
    for call in &calls {
        assert_eq!(call.header("private-token"), Some("tok-123"));
        assert_eq!(call.header("authorization"), None);
    }
    let body = json!({
        "url": "https://ci.example.com/webhooks/gh",
        "token": "hook-secret",
        "push_events": true,
        "tag_push_events": true,
        "merge_requests_events": true,
        "enable_ssl_verification": true,
    });
    assert_eq!(calls[1].method, "POST");
    assert_eq!(calls[1].body.as_ref(), Some(&body));
    assert_eq!(calls[2].method, "PUT");
    assert_eq!(calls[2].body.as_ref(), Some(&body));
    assert_eq!(calls[3].method, "DELETE");
}

#[tokio::test]
async fn gitlab_branches_should_follow_x_next_page() {
    let server = serve(|_| {
        |req: &Recorded, _| match req.target.strip_prefix(GL_PROJECT) {
            Some("/repository/branches?per_page=100") => {
                Reply::json(200, fixture("gitlab/branches.json")).header("x-next-page", "2")
            }
            Some("/repository/branches?per_page=100&page=2") => Reply::json(
                200,
                r#"[{"name":"dev","commit":{"id":"0000000000000000000000000000000000000002"}}]"#,
            )
            .header("x-next-page", ""),
            _ => Reply::json(404, "{}"),
        }
    })
    .await;
    let branches = within(gitlab(&server).branches(&repo("group/sub/name")))
        .await
        .unwrap();
    let names: Vec<_> = branches.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["main", "dev"]);
    assert_eq!(branches[0].sha, "7b5c3cc8be40ee161ae89a06bba6229da1032a0c");
    assert_eq!(server.calls().len(), 2);
}

#[tokio::test]
async fn gitlab_merge_requests_and_project_should_be_normalised() {
    let server = serve(|_| {
        |req: &Recorded, _| match req.target.strip_prefix(GL_PROJECT) {
            Some("/merge_requests?state=opened&per_page=100") => {
                Reply::json(200, fixture("gitlab/merge_requests.json"))
            }
            Some("") => Reply::json(200, fixture("gitlab/project.json")),
            _ => Reply::json(404, "{}"),
        }
    })
    .await;
    let client = gitlab(&server);
    let r = repo("group/sub/name");
    let mrs = within(client.open_pull_requests(&r)).await.unwrap();
    assert_eq!(mrs.len(), 1);
    assert_eq!(mrs[0].number, 1);
    assert_eq!(mrs[0].head_ref, "test1");
    assert_eq!(mrs[0].base_ref, "main");
    assert_eq!(mrs[0].author, "admin");
    assert!(mrs[0].from_fork, "source project 2 differs from target 3");
    let info = within(client.repository(&r)).await.unwrap();
    assert_eq!(info.default_branch.as_deref(), Some("main"));
}

#[tokio::test]
async fn gitlab_permission_should_map_access_levels() {
    let member: Value = serde_json::from_str(&fixture("gitlab/member.json")).unwrap();
    let server = serve(move |_| {
        move |req: &Recorded, _| {
            if let Some(name) = req.target.strip_prefix("/api/v4/users?username=") {
                if name == "nobody" {
                    return Reply::json(200, "[]");
                }
                let level: u32 = name.trim_start_matches("level").parse().unwrap_or(0);
                return Reply::json(
                    200,
                    json!([{"id": level, "username": name, "state": "active"}]).to_string(),
                );
            }
            match req
                .target
                .strip_prefix(&format!("{GL_PROJECT}/members/all/"))
            {
                Some("0") => Reply::json(404, r#"{"message":"404 Not found"}"#),
                Some(id) => {
                    let mut body = member.clone();
                    body["access_level"] = json!(id.parse::<u32>().unwrap());
                    Reply::json(200, body.to_string())
                }
                None => Reply::json(404, "{}"),
            }
        }
    })
    .await;
    let client = gitlab(&server);
    let r = repo("group/sub/name");
    for (user, expected) in [
        ("level50", Permission::Admin),
        ("level40", Permission::Admin),
        ("level30", Permission::Write),
        ("level20", Permission::Read),
        ("level10", Permission::Read),
        ("level5", Permission::None),
        ("outsider", Permission::None),
        ("nobody", Permission::None),
    ] {
        let got = within(client.permission(&r, user)).await.unwrap();
        assert_eq!(got, expected, "{user}");
    }
}

#[tokio::test]
async fn gitlab_create_status_should_post_the_mapped_state() {
    let server = serve(|_| |_: &Recorded, _| Reply::json(201, fixture("gitlab/status.json"))).await;
    let client = gitlab(&server);
    let sha = "18f3e63d05582537db6d183d9d557be09e1f90c8";
    for state in ALL_STATES {
        within(client.create_status(&repo("group/sub/name"), sha, &status(state)))
            .await
            .unwrap();
    }
    let calls = server.calls();
    let states: Vec<_> = calls
        .iter()
        .map(|c| c.body.as_ref().unwrap()["state"].clone())
        .collect();
    assert_eq!(
        states,
        [
            "pending", "running", "success", "failed", "failed", "canceled"
        ]
    );
    assert_eq!(calls[0].target, format!("{GL_PROJECT}/statuses/{sha}"));
    assert_eq!(calls[0].body.as_ref().unwrap()["name"], "reconix/eval");
}

#[tokio::test]
async fn gitlab_rate_limit_reset_should_be_honoured() {
    let reset = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 60;
    let server = serve(move |_| {
        move |_: &Recorded, _| {
            Reply::json(429, r#"{"message":"Retry later"}"#)
                .header("ratelimit-remaining", "0")
                .header("ratelimit-reset", reset.to_string())
        }
    })
    .await;
    let err = within(gitlab(&server).branches(&repo("group/sub/name")))
        .await
        .unwrap_err();
    match err {
        ApiError::RateLimited { retry_after } => {
            assert!(
                (55..=60).contains(&retry_after.as_secs()),
                "{retry_after:?}"
            );
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    assert_eq!(server.calls().len(), 1);
}

#[tokio::test]
async fn gitlab_unauthorized_and_retries_should_behave_as_github() {
    let server = serve(|_| {
        |req: &Recorded, n| {
            if req.target.contains("hooks") {
                Reply::json(401, r#"{"message":"401 Unauthorized"}"#)
            } else if n < 3 {
                Reply::json(502, "bad gateway")
            } else {
                Reply::json(200, fixture("gitlab/project.json"))
            }
        }
    })
    .await;
    let client = gitlab(&server);
    let r = repo("group/sub/name");
    let err = within(client.list_hooks(&r)).await.unwrap_err();
    assert!(matches!(err, ApiError::Unauthorized { .. }), "{err:?}");
    assert_eq!(server.calls().len(), 1);
    within(client.repository(&r)).await.unwrap();
    assert_eq!(server.calls().len(), 4);
}

#[tokio::test]
async fn check_runs_should_be_unsupported_outside_github() {
    let server = serve(|_| |_: &Recorded, _| Reply::json(500, "{}")).await;
    let spec = CheckRunSpec {
        name: "reconix".to_owned(),
        head_sha: "abc".to_owned(),
        status: CheckStatus::Queued,
        conclusion: None,
        details_url: None,
        output: None,
    };
    let r = repo("group/name");
    let err = within(gitlab(&server).create_check_run(&r, &spec))
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Unsupported { .. }), "{err:?}");
    let err = within(gitea(&server).update_check_run(&r, 1, &spec))
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Unsupported { .. }), "{err:?}");
    assert!(server.calls().is_empty());
}

#[tokio::test]
async fn gitlab_malformed_json_should_be_a_decode_error() {
    let server = serve(|_| |_: &Recorded, _| Reply::json(200, "<html>oops</html>")).await;
    let err = within(gitlab(&server).open_pull_requests(&repo("g/n")))
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Decode { .. }), "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// Gitea / Forgejo

fn gitea(server: &Server) -> GiteaClient {
    GiteaClient::with_retry_policy(&format!("{}/api/v1", server.origin), &token(), fast()).unwrap()
}

#[tokio::test]
async fn gitea_hooks_should_be_listed_created_patched_and_deleted() {
    let server = serve(|_| {
        |req: &Recorded, _| match (req.method.as_str(), req.target.as_str()) {
            ("GET", "/api/v1/repos/owner/repo/hooks?limit=50") => {
                Reply::json(200, fixture("gitea/hooks.json"))
            }
            ("POST", "/api/v1/repos/owner/repo/hooks") => {
                Reply::json(201, fixture("gitea/hook.json"))
            }
            ("PATCH", "/api/v1/repos/owner/repo/hooks/7") => {
                Reply::json(200, fixture("gitea/hook.json"))
            }
            ("DELETE", "/api/v1/repos/owner/repo/hooks/7") => Reply::json(204, ""),
            _ => Reply::json(404, "{}"),
        }
    })
    .await;
    let client = gitea(&server);
    let r = repo("owner/repo");
    let hooks = within(client.list_hooks(&r)).await.unwrap();
    assert_eq!(hooks[0].id, 7);
    assert_eq!(hooks[0].url, "https://ci.example.com/webhooks/gitea");
    assert_eq!(hooks[0].events, [HookEvent::Push, HookEvent::PullRequest]);
    within(client.create_hook(&r, &hook_spec())).await.unwrap();
    within(client.patch_hook(&r, 7, &hook_spec()))
        .await
        .unwrap();
    within(client.delete_hook(&r, 7)).await.unwrap();
    let calls = server.calls();
    assert_eq!(calls.len(), 4);
    for call in &calls {
        assert_eq!(call.header("authorization"), Some("token tok-123"));
    }
    let config = json!({
        "url": "https://ci.example.com/webhooks/gh",
        "content_type": "json",
        "secret": "hook-secret",
    });
    assert_eq!(
        calls[1].body,
        Some(json!({
            "type": "gitea",
            "active": true,
            "events": ["push", "pull_request"],
            "config": config,
        }))
    );
    assert_eq!(
        calls[2].body,
        Some(json!({"active": true, "events": ["push", "pull_request"], "config": config}))
    );
}

#[tokio::test]
async fn gitea_lists_should_follow_link_next() {
    let server = serve(|origin| {
        move |req: &Recorded, _| match req.target.as_str() {
            "/api/v1/repos/owner/repo/pulls?state=open&limit=50" => {
                Reply::json(200, fixture("gitea/pulls.json")).header(
                    "link",
                    format!(
                        "<{origin}/api/v1/repos/owner/repo/pulls?state=open&limit=50&page=2>; rel=\"next\""
                    ),
                )
            }
            "/api/v1/repos/owner/repo/pulls?state=open&limit=50&page=2" => Reply::json(200, "[]"),
            "/api/v1/repos/owner/repo/branches?limit=50" => {
                Reply::json(200, fixture("gitea/branches.json"))
            }
            "/api/v1/repos/owner/repo" => Reply::json(200, fixture("gitea/repository.json")),
            _ => Reply::json(404, "{}"),
        }
    })
    .await;
    let client = gitea(&server);
    let r = repo("owner/repo");
    let pulls = within(client.open_pull_requests(&r)).await.unwrap();
    assert_eq!(pulls.len(), 1);
    assert_eq!(pulls[0].number, 5);
    assert_eq!(
        pulls[0].head_sha,
        "2222222222222222222222222222222222222222"
    );
    assert_eq!(pulls[0].author, "alice");
    assert!(pulls[0].from_fork);
    assert_eq!(server.calls().len(), 2);
    let branches = within(client.branches(&r)).await.unwrap();
    assert_eq!(branches[0].sha, "1111111111111111111111111111111111111111");
    let info = within(client.repository(&r)).await.unwrap();
    assert_eq!(info.default_branch.as_deref(), Some("main"));
}

#[tokio::test]
async fn gitea_permission_should_be_normalised() {
    let example: Value = serde_json::from_str(&fixture("gitea/permission.json")).unwrap();
    let server = serve(move |_| {
        move |req: &Recorded, _| {
            let user = req
                .target
                .strip_prefix("/api/v1/repos/owner/repo/collaborators/")
                .and_then(|rest| rest.strip_suffix("/permission"))
                .unwrap_or_default();
            if user == "ghost" {
                return Reply::json(404, r#"{"message":"user does not exist"}"#);
            }
            let mut body = example.clone();
            body["permission"] = json!(user);
            Reply::json(200, body.to_string())
        }
    })
    .await;
    let client = gitea(&server);
    let r = repo("owner/repo");
    for (level, expected) in [
        ("owner", Permission::Admin),
        ("admin", Permission::Admin),
        ("write", Permission::Write),
        ("read", Permission::Read),
        ("none", Permission::None),
        ("ghost", Permission::None),
    ] {
        let got = within(client.permission(&r, level)).await.unwrap();
        assert_eq!(got, expected, "{level}");
    }
}

#[tokio::test]
async fn gitea_create_status_should_post_the_mapped_state() {
    let server = serve(|_| |_: &Recorded, _| Reply::json(201, fixture("gitea/status.json"))).await;
    let client = gitea(&server);
    for state in ALL_STATES {
        within(client.create_status(&repo("owner/repo"), "abc", &status(state)))
            .await
            .unwrap();
    }
    let calls = server.calls();
    let states: Vec<_> = calls
        .iter()
        .map(|c| c.body.as_ref().unwrap()["state"].clone())
        .collect();
    assert_eq!(
        states,
        [
            "pending", "pending", "success", "failure", "error", "warning"
        ]
    );
    assert_eq!(calls[0].target, "/api/v1/repos/owner/repo/statuses/abc");
    assert_eq!(calls[0].body.as_ref().unwrap()["context"], "reconix/eval");
}

#[tokio::test]
async fn gitea_errors_should_be_classified() {
    let server = serve(|_| {
        |req: &Recorded, n| match req.target.as_str() {
            "/api/v1/repos/owner/unauth" => Reply::json(401, "{}"),
            "/api/v1/repos/owner/limited" => Reply::json(429, "{}").header("retry-after", "7"),
            "/api/v1/repos/owner/garbage" => Reply::json(200, "{\"default_branch\": 42}"),
            _ if n < 5 => Reply::json(500, "{}"),
            _ => Reply::json(200, fixture("gitea/repository.json")),
        }
    })
    .await;
    let client = gitea(&server);
    let err = within(client.repository(&repo("owner/unauth")))
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Unauthorized { .. }), "{err:?}");
    let err = within(client.repository(&repo("owner/limited")))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ApiError::RateLimited { retry_after } if retry_after == Duration::from_secs(7)),
        "{err:?}"
    );
    let err = within(client.repository(&repo("owner/garbage")))
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Decode { .. }), "{err:?}");
    assert_eq!(server.calls().len(), 3);
    within(client.repository(&repo("owner/repo")))
        .await
        .unwrap();
    assert_eq!(server.calls().len(), 6, "two 500s, then success");
}
