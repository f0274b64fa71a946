//! Webhook intake tests: real forge payloads (the forge crate's fixtures), signed with the
//! test secret, sent through `router(state).oneshot(..)` into an in-memory database.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures_util::StreamExt;
use reconix_spec::{ForgeKind, ForgeName, RepoKey, Secret, Spec, Timestamp};
use reconix_status::{ForgeHealthState, NewDrift, RefHead, Status, StatusDb};
use serde_json::Value;
use tokio::sync::watch;
use tower::ServiceExt;

use crate::{AppState, Wake, router};

const SECRET: &str = "It's a Secret to Everybody";

macro_rules! fixture {
    ($path:literal) => {
        include_bytes!(concat!("../../forge/tests/fixtures/", $path))
    };
}

const GITHUB_PUSH: &[u8] = fixture!("github/push.json");
const GITHUB_PR_OPENED: &[u8] = fixture!("github/pull_request.opened.json");
const GITHUB_PR_CLOSED: &[u8] = fixture!("github/pull_request.closed.json");
const GITHUB_PING: &[u8] = fixture!("github/ping.json");
const GITHUB_INSTALLATION: &[u8] = fixture!("github/installation.created.json");
const GITLAB_PUSH: &[u8] = fixture!("gitlab/push_hook.json");
const GITLAB_MR: &[u8] = fixture!("gitlab/merge_request_hook.json");
const GITEA_PUSH: &[u8] = fixture!("gitea/push.gitea-docs.json");

/// One forge kind under test: its spec forge, headers, and its push fixture's facts.
#[derive(Debug, Clone, Copy)]
struct Kind {
    kind: ForgeKind,
    forge: &'static str,
    event_header: &'static str,
    delivery_header: &'static str,
    push_event: &'static str,
    pr_event: &'static str,
    push: &'static [u8],
    /// The spec repository the push fixture names.
    push_repo: &'static str,
    push_ref: &'static str,
    push_sha: &'static str,
}

const GITHUB: Kind = Kind {
    kind: ForgeKind::Github,
    forge: "gh",
    event_header: "X-GitHub-Event",
    delivery_header: "X-GitHub-Delivery",
    push_event: "push",
    pr_event: "pull_request",
    push: GITHUB_PUSH,
    // The payload says `baxterthehacker/public-repo`: the spec's spelling is the one recorded.
    push_repo: "gh/BaxterTheHacker/Public-Repo",
    push_ref: "refs/heads/changes",
    push_sha: "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c",
};

const GITLAB: Kind = Kind {
    kind: ForgeKind::Gitlab,
    forge: "gl",
    event_header: "X-Gitlab-Event",
    delivery_header: "X-Gitlab-Event-UUID",
    push_event: "Push Hook",
    pr_event: "Merge Request Hook",
    push: GITLAB_PUSH,
    push_repo: "gl/mike/diaspora",
    push_ref: "refs/heads/master",
    push_sha: "da1560886d4f094c3e6c9ef40349f7d38b5d27d7",
};

const GITEA: Kind = Kind {
    kind: ForgeKind::Gitea,
    forge: "gt",
    event_header: "X-Gitea-Event",
    delivery_header: "X-Gitea-Delivery",
    push_event: "push",
    pr_event: "pull_request",
    push: GITEA_PUSH,
    push_repo: "gt/gitea/webhooks",
    push_ref: "refs/heads/develop",
    push_sha: "bffeb74224043ba2feb48d137756c8a9331c449a",
};

const KINDS: [Kind; 3] = [GITHUB, GITLAB, GITEA];

/// The spec: each hosted forge lists its fixtures' repositories, spelled as the spec's owner
/// would (GitHub's in another case than the payload, to check the canonical spelling is used).
fn spec_yaml(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "\
external-url: https://ci.example.org
forges:
  gh:
    kind: github
    token-file: {d}/token
    webhook-secret-file: {d}/gh-secret
    repos:
      BaxterTheHacker/Public-Repo:
        branches: [changes]
      Codertocat/Hello-World: {{}}
  gl:
    kind: gitlab
    token-file: {d}/token
    webhook-secret-file: {d}/gl-secret
    repos:
      mike/diaspora:
        branches: [master]
      gitlabhq/gitlab-test: {{}}
  gt:
    kind: gitea
    api-url: https://gitea.example.org/api/v1
    token-file: {d}/token
    webhook-secret-file: {d}/gt-secret
    repos:
      gitea/webhooks:
        branches: [develop]
      Codertocat/Hello-World: {{}}
  here:
    kind: local
    repos:
      demo:
        path: /srv/demo
        branches: [main]
"
    )
}

/// A router state with an intake, its wakes, and the directory holding the secrets.
struct Harness {
    state: AppState,
    wakes: Arc<Mutex<Vec<Wake>>>,
    spec_tx: watch::Sender<Arc<Spec>>,
    dir: tempfile::TempDir,
}

impl Harness {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for forge in ["gh", "gl", "gt"] {
            std::fs::write(
                dir.path().join(format!("{forge}-secret")),
                format!("{SECRET}\n"),
            )
            .unwrap();
        }
        Self::with_dir(dir)
    }

    fn with_dir(dir: tempfile::TempDir) -> Self {
        let spec = reconix_spec::parse(&spec_yaml(dir.path()), Path::new("t.yaml"))
            .unwrap_or_else(|e| panic!("{e}"));
        let (spec_tx, spec_rx) = watch::channel(Arc::new(spec));
        let wakes = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&wakes);
        let state = AppState::new(Status::new(StatusDb::open_memory().unwrap()))
            .with_intake(spec_rx, Arc::new(move |w| sink.lock().unwrap().push(w)));
        Self {
            state,
            wakes,
            spec_tx,
            dir,
        }
    }

    fn secret_path(&self, k: Kind) -> PathBuf {
        self.dir.path().join(format!("{}-secret", k.forge))
    }

    fn wakes(&self) -> Vec<Wake> {
        self.wakes.lock().unwrap().clone()
    }

    async fn send(&self, req: Request<Body>) -> (StatusCode, Value) {
        let resp = router(self.state.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
        (status, json)
    }

    async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut StatusDb) -> reconix_status::Result<T> + Send + 'static,
    ) -> T {
        self.state.status.call(f).await.unwrap()
    }

    async fn refs(&self, repo: &str) -> Vec<RefHead> {
        let key = key(repo);
        self.db(move |db| match db.repo_id(&key)? {
            Some(id) => db.refs(id),
            None => Ok(Vec::new()),
        })
        .await
    }

    async fn delivery_counts(&self) -> Vec<(String, u64)> {
        self.db(|db| db.delivery_counts()).await
    }
}

fn key(s: &str) -> RepoKey {
    RepoKey::parse(s).unwrap()
}

fn sign(kind: ForgeKind, body: &[u8], secret: &str) -> (&'static str, String) {
    let hex = reconix_forge::verify::hmac_sha256_hex(&Secret::new(secret), body);
    match kind {
        ForgeKind::Github => ("X-Hub-Signature-256", format!("sha256={hex}")),
        ForgeKind::Gitlab => ("X-Gitlab-Token", secret.to_owned()),
        ForgeKind::Gitea | ForgeKind::Local => ("X-Gitea-Signature", hex),
    }
}

/// A delivery to `k`'s forge, signed with `secret` (unsigned when `None`).
fn request(k: Kind, event: &str, id: &str, body: &[u8], secret: Option<&str>) -> Request<Body> {
    let mut req = Request::post(format!("/webhooks/{}", k.forge))
        .header("content-type", "application/json")
        .header(k.event_header, event)
        .header(k.delivery_header, id);
    if let Some(secret) = secret {
        let (name, value) = sign(k.kind, body, secret);
        req = req.header(name, value);
    }
    req.body(Body::from(body.to_vec())).unwrap()
}

fn signed(k: Kind, event: &str, id: &str, body: &[u8]) -> Request<Body> {
    request(k, event, id, body, Some(SECRET))
}

/// Returns the fixture with `change` applied to its JSON.
fn edit(body: &[u8], change: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(body).unwrap();
    change(&mut v);
    serde_json::to_vec(&v).unwrap()
}

/// Reads a response's JSON body.
async fn json_body(resp: axum::response::Response) -> Value {
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    serde_json::from_slice(&body).unwrap()
}

fn result(r: &str) -> Value {
    serde_json::json!({ "result": r })
}

#[tokio::test]
async fn valid_push_should_record_the_head_and_wake_once_and_a_redelivery_should_be_a_duplicate() {
    for k in KINDS {
        let h = Harness::new();
        let (code, body) = h.send(signed(k, k.push_event, "d-1", k.push)).await;
        assert_eq!(
            (code, body),
            (StatusCode::ACCEPTED, result("new-head")),
            "{k:?}"
        );
        let refs = h.refs(k.push_repo).await;
        assert_eq!(refs.len(), 1, "{k:?}");
        assert_eq!(
            (refs[0].name.as_str(), refs[0].rev.as_str()),
            (k.push_ref, k.push_sha)
        );
        assert_eq!(h.wakes(), [Wake::Head(key(k.push_repo))], "{k:?}");

        let (code, body) = h.send(signed(k, k.push_event, "d-1", k.push)).await;
        assert_eq!((code, body), (StatusCode::OK, result("duplicate")), "{k:?}");
        assert_eq!(h.wakes().len(), 1, "{k:?}");
        assert_eq!(
            h.delivery_counts().await,
            [("new-head".to_owned(), 1)],
            "{k:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn bad_signature_should_be_401_store_nothing_and_wake_the_webhooks_loop_at_most_every_10s() {
    for k in KINDS {
        let h = Harness::new();
        let repo = key(k.push_repo);
        let r = repo.clone();
        let id = h
            .db(move |db| {
                let id = db.upsert_repo(&r)?;
                db.record_hook(
                    id,
                    7,
                    "https://ci.example.org/webhooks/x",
                    "fp",
                    Timestamp(1),
                )?;
                Ok(id)
            })
            .await;
        let bad = || request(k, k.push_event, "d-1", k.push, Some("not the secret"));
        let (code, body) = h.send(bad()).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED, "{k:?}");
        let message = body["error"].as_str().unwrap();
        assert!(message.contains("does not match"), "{k:?}: {message}");
        assert!(!message.contains(SECRET) && !message.contains("not the secret"));
        assert!(h.delivery_counts().await.is_empty(), "{k:?}");
        assert!(h.refs(k.push_repo).await.is_empty(), "{k:?}");
        assert_eq!(h.wakes(), [Wake::SignatureFailure(repo.clone())], "{k:?}");

        // A flood of bad deliveries is counted but wakes the loop only once per 10 s.
        assert_eq!(h.send(bad()).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(h.wakes().len(), 1, "{k:?}");
        let failures = h
            .db(move |db| Ok(db.hook(id)?.map(|h| h.signature_failures)))
            .await;
        assert_eq!(failures, Some(2), "{k:?}");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(h.send(bad()).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(
            h.wakes(),
            [
                Wake::SignatureFailure(repo.clone()),
                Wake::SignatureFailure(repo)
            ],
            "{k:?}"
        );
    }
}

#[tokio::test]
async fn bad_signature_should_wake_even_without_a_hook_row() {
    let h = Harness::new();
    let req = request(GITHUB, "push", "d-1", GITHUB_PUSH, Some("wrong"));
    assert_eq!(h.send(req).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(h.wakes(), [Wake::SignatureFailure(key(GITHUB.push_repo))]);
}

#[tokio::test]
async fn bad_signature_for_a_repo_not_in_the_spec_should_wake_nothing() {
    let h = Harness::new();
    let req = request(GITHUB, "ping", "d-1", GITHUB_PING, Some("wrong"));
    assert_eq!(h.send(req).await.0, StatusCode::UNAUTHORIZED);
    assert!(h.wakes().is_empty());
}

#[tokio::test]
async fn missing_signature_should_be_401() {
    for k in KINDS {
        let h = Harness::new();
        let (code, body) = h.send(request(k, k.push_event, "d-1", k.push, None)).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED, "{k:?}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .starts_with("missing signature header"),
            "{body}"
        );
        assert!(h.delivery_counts().await.is_empty());
    }
}

#[tokio::test]
async fn malformed_json_with_a_valid_signature_should_be_400() {
    for k in KINDS {
        let h = Harness::new();
        let (code, body) = h.send(signed(k, k.push_event, "d-1", b"{\"ref\": ")).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{k:?}");
        assert!(
            body["error"].as_str().unwrap().starts_with("malformed"),
            "{body}"
        );
        assert!(h.delivery_counts().await.is_empty());
        assert!(h.wakes().is_empty());
    }
}

#[tokio::test]
async fn unknown_events_and_pings_should_be_accepted_as_ignored() {
    for k in KINDS {
        let h = Harness::new();
        let (code, body) = h
            .send(signed(k, "installation", "d-1", GITHUB_INSTALLATION))
            .await;
        assert_eq!(
            (code, body),
            (StatusCode::ACCEPTED, result("ignored")),
            "{k:?}"
        );
        let (code, body) = h.send(signed(k, "ping", "d-2", GITHUB_PING)).await;
        assert_eq!(
            (code, body),
            (StatusCode::ACCEPTED, result("ignored")),
            "{k:?}"
        );
        assert_eq!(h.delivery_counts().await, [("ignored".to_owned(), 2)]);
        assert!(h.wakes().is_empty());
    }
}

#[tokio::test]
async fn push_to_a_repo_not_in_the_spec_or_a_tag_should_be_ignored() {
    for k in KINDS {
        let h = Harness::new();
        let elsewhere = edit(k.push, |v| match k.kind {
            ForgeKind::Gitlab => v["project"]["path_with_namespace"] = "someone/else".into(),
            _ => v["repository"]["full_name"] = "someone/else".into(),
        });
        let tag = edit(k.push, |v| v["ref"] = "refs/tags/v1.0".into());
        for (id, body) in [("d-1", elsewhere), ("d-2", tag)] {
            let (code, json) = h.send(signed(k, k.push_event, id, &body)).await;
            assert_eq!(
                (code, json),
                (StatusCode::ACCEPTED, result("ignored")),
                "{k:?} {id}"
            );
        }
        assert!(h.refs(k.push_repo).await.is_empty());
        assert!(h.wakes().is_empty());
    }
}

#[tokio::test]
async fn push_to_a_branch_the_repo_does_not_build_should_be_ignored() {
    let h = Harness::new();
    let body = edit(GITHUB_PUSH, |v| v["ref"] = "refs/heads/feature".into());
    let (code, json) = h.send(signed(GITHUB, "push", "d-1", &body)).await;
    assert_eq!((code, json), (StatusCode::ACCEPTED, result("ignored")));
    assert!(h.wakes().is_empty());
}

#[tokio::test]
async fn unknown_or_local_forge_or_no_intake_should_be_404() {
    let h = Harness::new();
    for forge in ["nope", "here"] {
        let req = Request::post(format!("/webhooks/{forge}"))
            .header("X-GitHub-Event", "push")
            .body(Body::from(GITHUB_PUSH))
            .unwrap();
        let (code, body) = h.send(req).await;
        assert_eq!(code, StatusCode::NOT_FOUND);
        assert_eq!(body["error"], format!("no forge named `{forge}`"));
    }
    let plain = AppState::new(Status::new(StatusDb::open_memory().unwrap()));
    let resp = router(plain)
        .oneshot(signed(GITHUB, "push", "d-1", GITHUB_PUSH))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn body_over_32_mib_should_be_413() {
    let h = Harness::new();
    let mut body = GITHUB_PUSH.to_vec();
    body.resize((32 << 20) + 1, b' ');
    let (code, _) = h.send(signed(GITHUB, "push", "d-1", &body)).await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE);
    // Exactly the limit is fine (trailing whitespace is valid JSON).
    body.truncate(32 << 20);
    let (code, json) = h.send(signed(GITHUB, "push", "d-2", &body)).await;
    assert_eq!((code, json), (StatusCode::ACCEPTED, result("new-head")));
}

#[tokio::test]
async fn an_announced_body_over_the_limit_should_be_413_before_the_body_arrives() {
    let h = Harness::new();
    // Two bytes, then nothing: the answer must not wait for the rest.
    let stalled = futures_util::stream::iter([Ok::<_, std::io::Error>(
        axum::body::Bytes::from_static(b"{}"),
    )])
    .chain(futures_util::stream::pending());
    let req = Request::post("/webhooks/gh")
        .header("content-length", "41943040")
        .header("X-GitHub-Event", "push")
        .body(Body::from_stream(stalled))
        .unwrap();
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        router(h.state.clone()).oneshot(req),
    )
    .await
    .expect("answered without the body")
    .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(resp.headers()["connection"], "close");
    let json = json_body(resp).await;
    assert_eq!(
        json["error"],
        "the body of 41943040 bytes is larger than the limit of 33554432 bytes"
    );
    assert!(h.delivery_counts().await.is_empty(), "nothing recorded");
}

#[tokio::test]
async fn a_full_state_directory_should_be_503_with_retry_after_and_other_database_errors_500() {
    use axum::response::IntoResponse;
    let sqlite = |code| {
        crate::ApiError::Status(reconix_status::Error::Query {
            op: "record_deliveries",
            source: rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None),
        })
    };
    let resp = sqlite(rusqlite::ffi::SQLITE_FULL).into_response();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "30");
    let json = json_body(resp).await;
    assert_eq!(
        json["error"],
        "the daemon's state directory is full; retry later"
    );
    let resp = sqlite(rusqlite::ffi::SQLITE_CORRUPT).into_response();
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(resp.headers().get("retry-after").is_none());
}

#[tokio::test]
async fn paths_and_methods_no_route_takes_should_answer_json_errors() {
    let h = Harness::new();
    for path in ["/webhooks/", "/webhooks/gh/extra", "/api/v1/nope", "/nope"] {
        let req = Request::post(path).body(Body::empty()).unwrap();
        let (code, json) = h.send(req).await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(json["error"], format!("no such endpoint: {path}"), "{path}");
    }
    let resp = router(h.state.clone())
        .oneshot(Request::get("/webhooks/gh").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()["allow"], "POST");
    let json = json_body(resp).await;
    assert_eq!(json["error"], "method GET is not allowed on /webhooks/gh");
}

/// The pull request fixtures of each kind, opened and closed, and the spec repository they
/// name. Gitea has no upstream pull request example; its payload has GitHub's shape (the
/// fields the parser reads are the same), so GitHub's fixtures are sent with Gitea headers.
fn pull_requests(k: Kind) -> (Vec<u8>, Vec<u8>, RepoKey, u64) {
    match k.kind {
        ForgeKind::Gitlab => (
            GITLAB_MR.to_vec(),
            edit(GITLAB_MR, |v| {
                v["object_attributes"]["action"] = "close".into()
            }),
            key("gl/gitlabhq/gitlab-test"),
            1,
        ),
        _ => (
            GITHUB_PR_OPENED.to_vec(),
            GITHUB_PR_CLOSED.to_vec(),
            key(&format!("{}/Codertocat/Hello-World", k.forge)),
            2,
        ),
    }
}

#[tokio::test]
async fn pull_request_opened_then_closed_should_update_the_row_and_wake() {
    for k in KINDS {
        let h = Harness::new();
        let (opened, closed, repo, number) = pull_requests(k);
        let (code, body) = h.send(signed(k, k.pr_event, "d-1", &opened)).await;
        assert_eq!(
            (code, body),
            (StatusCode::ACCEPTED, result("new-head")),
            "{k:?}"
        );
        assert_eq!(h.wakes(), [Wake::PullRequest(repo.clone())], "{k:?}");
        let r = repo.clone();
        let open = h
            .db(move |db| match db.repo_id(&r)? {
                Some(id) => db.open_pull_requests(id),
                None => Ok(Vec::new()),
            })
            .await;
        assert_eq!(open.len(), 1, "{k:?}");
        assert_eq!((open[0].number, open[0].open), (number, true), "{k:?}");

        let (code, body) = h.send(signed(k, k.pr_event, "d-2", &closed)).await;
        assert_eq!(
            (code, body),
            (StatusCode::ACCEPTED, result("new-head")),
            "{k:?}"
        );
        let r = repo.clone();
        let open = h
            .db(move |db| match db.repo_id(&r)? {
                Some(id) => db.open_pull_requests(id),
                None => Ok(Vec::new()),
            })
            .await;
        assert!(open.is_empty(), "{k:?}: {open:?}");
        assert_eq!(h.wakes().len(), 2, "{k:?}");
    }
}

#[tokio::test]
async fn push_of_an_evaluated_sha_should_be_coalesced_without_a_wake() {
    for k in KINDS {
        let h = Harness::new();
        let repo = key(k.push_repo);
        h.db(move |db| {
            let id = db.upsert_repo(&repo)?;
            db.insert_evaluation(id, k.push_ref, k.push_sha, "git+https://x", Timestamp(1))?;
            Ok(())
        })
        .await;
        let (code, body) = h.send(signed(k, k.push_event, "d-1", k.push)).await;
        assert_eq!(
            (code, body),
            (StatusCode::ACCEPTED, result("coalesced")),
            "{k:?}"
        );
        assert!(h.wakes().is_empty(), "{k:?}");
    }
}

#[tokio::test]
async fn rotated_secret_file_should_be_picked_up_without_a_reload() {
    let h = Harness::new();
    assert_eq!(
        h.send(signed(GITHUB, "push", "d-1", GITHUB_PUSH)).await.0,
        StatusCode::ACCEPTED
    );
    std::fs::write(h.secret_path(GITHUB), "rotated\n").unwrap();
    let body = edit(GITHUB_PUSH, |v| v["after"] = "a".repeat(40).into());
    let req = request(GITHUB, "push", "d-2", &body, Some("rotated"));
    let (code, json) = h.send(req).await;
    assert_eq!((code, json), (StatusCode::ACCEPTED, result("new-head")));
    // The old secret no longer verifies.
    assert_eq!(
        h.send(signed(GITHUB, "push", "d-3", GITHUB_PUSH)).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_new_spec_generation_should_read_the_secrets_again() {
    let h = Harness::new();
    assert_eq!(
        h.send(signed(GITLAB, "Push Hook", "d-1", GITLAB_PUSH))
            .await
            .0,
        StatusCode::ACCEPTED
    );
    // GitLab's token is compared, not an HMAC: a mismatch re-reads the file anyway, so remove
    // the file and check a new generation fails to read it.
    std::fs::remove_file(h.secret_path(GITLAB)).unwrap();
    let same = (*h.spec_tx.borrow()).as_ref().clone();
    h.spec_tx.send(Arc::new(same)).unwrap();
    let (code, body) = h
        .send(signed(GITLAB, "Push Hook", "d-2", GITLAB_PUSH))
        .await;
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR);
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains(&h.secret_path(GITLAB).display().to_string()),
        "{message}"
    );
}

#[tokio::test]
async fn unreadable_secret_file_should_be_500_naming_the_file_but_not_its_contents() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gh-secret"), [0xff, 0xfe, b'x']).unwrap();
    let h = Harness::with_dir(dir);
    for k in [GITHUB, GITEA] {
        let (code, body) = h.send(signed(k, k.push_event, "d-1", k.push)).await;
        assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR, "{k:?}");
        let message = body["error"].as_str().unwrap();
        assert!(
            message.starts_with(&format!(
                "cannot read the webhook secret file {}",
                h.secret_path(k).display()
            )),
            "{message}"
        );
        assert!(!message.contains("\u{fffd}x"), "{message}");
    }
    assert!(h.delivery_counts().await.is_empty());
}

#[tokio::test]
async fn drift_and_forges_should_answer_json_and_the_page_should_show_a_paused_forge() {
    let h = Harness::new();
    h.db(|db| {
        let gh = ForgeName::new("gh").unwrap();
        db.set_forge_health(
            &gh,
            ForgeHealthState::Paused,
            Some("the forge rejected the token <b>401</b>"),
            None,
            Timestamp(5),
        )?;
        let gone = ForgeName::new("old").unwrap();
        db.set_forge_health(
            &gone,
            ForgeHealthState::RateLimited,
            None,
            Some(Timestamp(9)),
            Timestamp(5),
        )?;
        db.record_drift(
            &NewDrift {
                loop_name: "webhooks",
                subject: "gh/Codertocat/Hello-World hook 7",
                field: "url",
                desired: Some("https://ci.example.org/webhooks/gh"),
                observed: Some("https://elsewhere"),
            },
            Timestamp(6),
        )?;
        Ok(())
    })
    .await;

    let get = |uri: &str| Request::get(uri).body(Body::empty()).unwrap();
    let (code, drift) = h.send(get("/api/v1/drift?limit=10")).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(drift[0]["loop"], "webhooks");
    assert_eq!(drift[0]["field"], "url");
    assert_eq!(drift[0]["repaired_at"], Value::Null);

    let (code, forges) = h.send(get("/api/v1/forges")).await;
    assert_eq!(code, StatusCode::OK);
    let by_name = |name: &str| {
        forges
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["forge"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {forges}"))
    };
    let gh = by_name("gh");
    assert_eq!(gh["kind"], "github");
    assert_eq!(gh["state"], "paused");
    assert_eq!(gh["paused"], true);
    assert_eq!(gh["since"], 5);
    assert_eq!(gh["reason"], "the forge rejected the token <b>401</b>");
    let gl = by_name("gl");
    assert_eq!(gl["kind"], "gitlab");
    assert_eq!(gl["state"], "ok");
    assert_eq!(gl["paused"], false);
    assert_eq!(gl["since"], Value::Null);
    let old = by_name("old");
    assert_eq!(old["state"], "rate-limited");
    assert_eq!(old["until"], 9);
    assert_eq!(old.get("kind"), None);

    let resp = router(h.state.clone()).oneshot(get("/")).await.unwrap();
    let page = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let page = String::from_utf8(page.to_vec()).unwrap();
    let banner = "forge gh is PAUSED: the forge rejected the token &#60;b&#62;401&#60;/b&#62;</p>";
    let at = page.find(banner).unwrap_or_else(|| panic!("{page}"));
    assert!(at < page.find("<h2>Evaluations</h2>").unwrap());
    assert!(!page.contains("<b>401</b>"));
}

#[tokio::test]
async fn app_state_debug_should_not_show_secrets() {
    let h = Harness::new();
    h.send(signed(GITHUB, "push", "d-1", GITHUB_PUSH)).await;
    let debug = format!("{:?}", h.state);
    assert!(debug.contains("Intake"), "{debug}");
    assert!(!debug.contains(SECRET));
}
