//! The real REST clients of reconix-forge against the fake, for each forge kind: hooks CRUD
//! with the secret masked on read, branches over several pages, open pull requests,
//! permissions, statuses with the raw state strings, check runs, auth, rate limits, retries
//! and schema validation.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions fail loudly"
)]

mod common;

use std::time::Duration;

use common::{TestRepo, fast, repo_name, secret, within};
use reconix_fakeforge::{FakeForge, FakeHook, FakePermission, FakePr, Fault, FaultKind, Method};
use reconix_forge::{
    ApiError, CheckConclusion, CheckOutput, CheckRunSpec, CheckStatus, CommitStatus, Forge,
    GiteaClient, GithubClient, GitlabClient, HookEvent, HookSpec, Permission, RetryPolicy,
    StatusState,
};
use reconix_spec::ForgeKind;
use serde_json::Value;

fn name_for(kind: ForgeKind) -> &'static str {
    match kind {
        ForgeKind::Gitlab => "group/sub/app",
        _ => "org/app",
    }
}

fn github(fake: &FakeForge, token: &str, policy: RetryPolicy) -> GithubClient {
    GithubClient::with_retry_policy(&fake.api_url(), &secret(token), policy).unwrap()
}

fn gitlab(fake: &FakeForge, token: &str, policy: RetryPolicy) -> GitlabClient {
    GitlabClient::with_retry_policy(&fake.api_url(), &secret(token), policy).unwrap()
}

fn gitea(fake: &FakeForge, token: &str, policy: RetryPolicy) -> GiteaClient {
    GiteaClient::with_retry_policy(&fake.api_url(), &secret(token), policy).unwrap()
}

/// A raw authenticated request, the way the kind's client authenticates.
fn raw(fake: &FakeForge, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
    let url = format!("{}{path}", fake.api_url());
    let request = reqwest::Client::new().request(method, url);
    match fake.kind() {
        ForgeKind::Gitlab => request.header("PRIVATE-TOKEN", fake.token()),
        ForgeKind::Gitea => request.header("Authorization", format!("token {}", fake.token())),
        _ => request.header("Authorization", format!("Bearer {}", fake.token())),
    }
}

fn hooks_path(kind: ForgeKind, name: &str) -> String {
    match kind {
        ForgeKind::Gitlab => format!("/projects/{}/hooks", name.replace('/', "%2F")),
        _ => format!("/repos/{name}/hooks"),
    }
}

struct Setup {
    fake: FakeForge,
    repo: TestRepo,
    name: &'static str,
    shas: Vec<(String, String)>,
}

async fn setup(kind: ForgeKind) -> Setup {
    let repo = TestRepo::new();
    let mut shas = vec![("main".to_owned(), repo.head("main"))];
    for branch in ["feature-a", "feature-b", "feature-c", "feature-d"] {
        shas.push((branch.to_owned(), repo.branch(branch)));
    }
    shas.sort();
    let fake = FakeForge::start(kind).await.unwrap();
    // Two per page: five branches take three pages.
    fake.set_max_per_page(2);
    let name = name_for(kind);
    fake.add_repo(name, &repo.git_dir, "main");
    Setup {
        fake,
        repo,
        name,
        shas,
    }
}

/// Everything the `Forge` trait offers, through the real client.
async fn exercise<F: Forge>(s: &Setup, client: &F) {
    let fake = &s.fake;
    let kind = fake.kind();
    let repo = repo_name(s.name);

    // Repository and branches (several pages).
    let info = within(client.repository(&repo)).await.unwrap();
    assert_eq!(info.default_branch.as_deref(), Some("main"));
    let branches = within(client.branches(&repo)).await.unwrap();
    let mut got: Vec<(String, String)> = branches.into_iter().map(|b| (b.name, b.sha)).collect();
    got.sort();
    assert_eq!(got, s.shas);
    let branch_pages = fake
        .calls()
        .iter()
        .filter(|c| c.path.contains("branches") && c.status == 200)
        .count();
    assert_eq!(branch_pages, 3, "{kind}: five branches, two per page");

    // Hooks: create, read back (secret masked), list over pages, patch, delete.
    let spec = HookSpec {
        url: "http://127.0.0.1:9/webhooks/fake".to_owned(),
        secret: secret("s3cret"),
        events: vec![HookEvent::Push, HookEvent::PullRequest],
    };
    let hook = within(client.create_hook(&repo, &spec)).await.unwrap();
    assert_eq!(hook.url, spec.url);
    assert_eq!(hook.events, vec![HookEvent::Push, HookEvent::PullRequest]);
    assert!(hook.active);
    assert_eq!(hook.content_type.as_deref(), Some("json"));
    let stored = fake.hooks(s.name);
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].secret.as_deref(), Some("s3cret"));
    assert_eq!(stored[0].events, vec!["push", "pull_request"]);

    let body: Value = raw(fake, reqwest::Method::GET, &hooks_path(kind, s.name))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = body.to_string();
    assert!(!text.contains("s3cret"), "{kind} leaks the secret: {text}");
    if kind == ForgeKind::Github {
        assert_eq!(body[0]["config"]["secret"], "********");
    }

    for n in 0..2 {
        fake.add_hook(
            s.name,
            FakeHook {
                id: 0,
                url: format!("http://example.invalid/other/{n}"),
                events: vec!["push".to_owned()],
                active: true,
                content_type: "json".to_owned(),
                secret: None,
            },
        );
    }
    let hooks = within(client.list_hooks(&repo)).await.unwrap();
    assert_eq!(hooks.len(), 3, "{kind}: three hooks over two pages");
    assert_eq!(hooks[0].id, hook.id);

    let patched_spec = HookSpec {
        url: "http://127.0.0.1:9/webhooks/moved".to_owned(),
        secret: secret("rotated"),
        events: vec![HookEvent::Push],
    };
    let patched = within(client.patch_hook(&repo, hook.id, &patched_spec))
        .await
        .unwrap();
    assert_eq!(patched.id, hook.id);
    assert_eq!(patched.url, patched_spec.url);
    assert_eq!(patched.events, vec![HookEvent::Push]);
    let stored = fake
        .hooks(s.name)
        .into_iter()
        .find(|h| h.id == hook.id)
        .unwrap();
    assert_eq!(stored.secret.as_deref(), Some("rotated"));
    within(client.delete_hook(&repo, hook.id)).await.unwrap();
    assert_eq!(fake.hooks(s.name).len(), 2);
    let again = within(client.delete_hook(&repo, hook.id)).await;
    assert!(matches!(again, Err(ApiError::NotFound { .. })), "{again:?}");

    // Open pull requests: one from a branch, one from a fork, one closed.
    let head = s.repo.head("feature-a");
    let pr = |number, author: &str, from_fork| FakePr {
        number,
        author: author.to_owned(),
        head_ref: "feature-a".to_owned(),
        head_sha: head.clone(),
        base_ref: "main".to_owned(),
        from_fork,
    };
    assert_eq!(fake.open_pull_request(s.name, pr(1, "alice", false)), 1);
    assert_eq!(fake.open_pull_request(s.name, pr(2, "mallory", true)), 2);
    assert_eq!(fake.open_pull_request(s.name, pr(3, "bob", false)), 3);
    fake.close_pull_request(s.name, 3);
    let mut open = within(client.open_pull_requests(&repo)).await.unwrap();
    open.sort_by_key(|p| p.number);
    assert_eq!(open.len(), 2);
    assert_eq!(
        (open[0].number, open[0].author.as_str(), open[0].from_fork),
        (1, "alice", false)
    );
    assert_eq!(
        (open[1].number, open[1].author.as_str(), open[1].from_fork),
        (2, "mallory", true)
    );
    assert_eq!(open[0].head_sha, head);
    assert_eq!(open[0].head_ref, "feature-a");
    assert_eq!(open[0].base_ref, "main");

    // Permissions.
    fake.set_permission(s.name, "alice", FakePermission::Write);
    fake.set_permission(s.name, "bob", FakePermission::Admin);
    fake.set_permission(s.name, "carol", FakePermission::Read);
    fake.set_permission(s.name, "mallory", FakePermission::None);
    for (user, expected) in [
        ("alice", Permission::Write),
        ("bob", Permission::Admin),
        ("carol", Permission::Read),
        ("mallory", Permission::None),
        ("stranger", Permission::None),
    ] {
        let got = within(client.permission(&repo, user)).await.unwrap();
        assert_eq!(got, expected, "{kind}: {user}");
    }

    // Statuses, recorded with the forge's own state strings.
    let sha = s.repo.head("main");
    let states = [
        StatusState::Pending,
        StatusState::Running,
        StatusState::Success,
        StatusState::Failure,
        StatusState::Error,
        StatusState::Cancelled,
    ];
    for state in states {
        let status = CommitStatus {
            context: "reconix/eval".to_owned(),
            state,
            description: Some(format!("{state:?}")),
            target_url: Some("http://127.0.0.1:9/jobs/1".to_owned()),
        };
        within(client.create_status(&repo, &sha, &status))
            .await
            .unwrap();
    }
    let raw_states: Vec<String> = fake
        .status_history(s.name, &sha)
        .into_iter()
        .map(|st| st.state)
        .collect();
    let expected: &[&str] = match kind {
        ForgeKind::Github => &["pending", "pending", "success", "failure", "error", "error"],
        ForgeKind::Gitlab => &[
            "pending", "running", "success", "failed", "failed", "canceled",
        ],
        _ => &[
            "pending", "pending", "success", "failure", "error", "warning",
        ],
    };
    assert_eq!(raw_states, expected);
    let newest = fake.statuses(s.name, &sha);
    assert_eq!(newest.len(), 1);
    assert_eq!(newest[0].context, "reconix/eval");
    assert_eq!(newest[0].description.as_deref(), Some("Cancelled"));
    assert_eq!(
        newest[0].target_url.as_deref(),
        Some("http://127.0.0.1:9/jobs/1")
    );

    // Unknown repository.
    let missing = within(client.repository(&repo_name("nobody/nothing"))).await;
    assert!(
        matches!(missing, Err(ApiError::NotFound { .. })),
        "{missing:?}"
    );
}

/// Auth, rate limits, retries and schema checks, which do not depend on the operation.
async fn faults<F: Forge>(s: &Setup, make: impl Fn(&str) -> F) {
    let fake = &s.fake;
    let kind = fake.kind();
    let repo = repo_name(s.name);

    let wrong = make("not-the-token");
    let err = within(wrong.repository(&repo)).await.unwrap_err();
    assert!(
        matches!(err, ApiError::Unauthorized { .. }),
        "{kind}: {err:?}"
    );

    // Rotation: the old token gets 401, the new one works.
    let old = make(&fake.token());
    fake.set_token("rotated-token");
    let err = within(old.repository(&repo)).await.unwrap_err();
    assert!(
        matches!(err, ApiError::Unauthorized { .. }),
        "{kind}: {err:?}"
    );
    let client = make("rotated-token");
    within(client.repository(&repo)).await.unwrap();

    fake.inject(Fault::new(
        FaultKind::RateLimited {
            retry_after_secs: 7,
        },
        1,
    ));
    let err = within(client.repository(&repo)).await.unwrap_err();
    match err {
        ApiError::RateLimited { retry_after } => {
            assert_eq!(retry_after, Duration::from_secs(7));
        }
        other => panic!("{kind}: expected a rate limit, got {other:?}"),
    }

    fake.inject(
        Fault::new(FaultKind::Status(502), 1)
            .method(Method::GET)
            .path_contains("branches"),
    );
    let before = fake.calls().len();
    let branches = within(client.branches(&repo)).await.unwrap();
    assert_eq!(branches.len(), 5);
    let statuses: Vec<u16> = fake.calls()[before..].iter().map(|c| c.status).collect();
    assert_eq!(
        statuses,
        vec![502, 200, 200, 200],
        "{kind}: one retry, then three pages"
    );

    fake.assert_no_violations();

    // A body that does not match the schema is refused and recorded.
    let invalid = match kind {
        ForgeKind::Gitlab => serde_json::json!({"push_events": "yes"}),
        ForgeKind::Gitea => serde_json::json!({"type": "gitea", "config": {"url": 5}}),
        _ => serde_json::json!({"config": {"url": "http://x"}, "events": "push"}),
    };
    let response = raw(fake, reqwest::Method::POST, &hooks_path(kind, s.name))
        .json(&invalid)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 422);
    let violations = fake.schema_violations();
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(violations[0].starts_with("request POST"), "{violations:?}");
}

#[tokio::test]
async fn github_rest_should_serve_the_client() {
    let s = setup(ForgeKind::Github).await;
    let client = github(&s.fake, &s.fake.token(), fast());
    exercise(&s, &client).await;

    // Check runs: create, update, read back.
    let repo = repo_name(s.name);
    let sha = s.repo.head("main");
    let mut spec = CheckRunSpec {
        name: "reconix: x86_64-linux.hello".to_owned(),
        head_sha: sha.clone(),
        status: CheckStatus::InProgress,
        conclusion: None,
        details_url: Some("http://127.0.0.1:9/jobs/1".to_owned()),
        output: None,
    };
    let run = within(client.create_check_run(&repo, &spec)).await.unwrap();
    spec.status = CheckStatus::Completed;
    spec.conclusion = Some(CheckConclusion::Success);
    spec.output = Some(CheckOutput {
        title: "built".to_owned(),
        summary: "1 derivation".to_owned(),
    });
    let updated = within(client.update_check_run(&repo, run.id, &spec))
        .await
        .unwrap();
    assert_eq!(updated.id, run.id);
    let runs = s.fake.check_runs(s.name);
    assert_eq!(runs.len(), 1);
    let r = &runs[0];
    assert_eq!((r.id, r.head_sha.as_str()), (run.id, sha.as_str()));
    assert_eq!(r.status, "completed");
    assert_eq!(r.conclusion.as_deref(), Some("success"));
    assert_eq!(r.output_title.as_deref(), Some("built"));
    assert_eq!(r.output_summary.as_deref(), Some("1 derivation"));
    assert_eq!(r.updates, 1);

    let fake = s.fake.clone();
    faults(&s, |token| github(&fake, token, fast())).await;
}

#[tokio::test]
async fn gitlab_rest_should_serve_the_client() {
    let s = setup(ForgeKind::Gitlab).await;
    let client = gitlab(&s.fake, &s.fake.token(), fast());
    exercise(&s, &client).await;
    let fake = s.fake.clone();
    faults(&s, |token| gitlab(&fake, token, fast())).await;
}

#[tokio::test]
async fn gitea_rest_should_serve_the_client() {
    let s = setup(ForgeKind::Gitea).await;
    let client = gitea(&s.fake, &s.fake.token(), fast());
    exercise(&s, &client).await;
    let fake = s.fake.clone();
    faults(&s, |token| gitea(&fake, token, fast())).await;
}

#[tokio::test]
async fn a_held_response_should_time_out_and_the_retry_succeed() {
    let s = setup(ForgeKind::Github).await;
    let policy = RetryPolicy {
        request_timeout: Duration::from_millis(200),
        ..fast()
    };
    let client = github(&s.fake, &s.fake.token(), policy);
    s.fake
        .inject(Fault::new(FaultKind::Timeout(Duration::from_millis(600)), 1).method(Method::GET));
    let info = within(client.repository(&repo_name(s.name))).await.unwrap();
    assert_eq!(info.default_branch.as_deref(), Some("main"));
    let statuses: Vec<u16> = s.fake.calls().iter().map(|c| c.status).collect();
    assert_eq!(statuses, vec![504, 200]);
    s.fake.assert_no_violations();
}

#[tokio::test]
async fn missing_token_should_get_the_forge_error_body() {
    for kind in [ForgeKind::Github, ForgeKind::Gitlab, ForgeKind::Gitea] {
        let s = setup(kind).await;
        let url = format!("{}{}", s.fake.api_url(), hooks_path(kind, s.name));
        let response = reqwest::get(&url).await.unwrap();
        assert_eq!(response.status().as_u16(), 401, "{kind}");
        let body: Value = response.json().await.unwrap();
        assert!(body["message"].is_string(), "{kind}: {body}");
    }
}

#[tokio::test]
async fn assert_no_violations_should_panic_with_the_list() {
    let s = setup(ForgeKind::Github).await;
    let response = raw(
        &s.fake,
        reqwest::Method::POST,
        "/repos/org/app/statuses/abc",
    )
    .json(&serde_json::json!({"state": "running"}))
    .send()
    .await
    .unwrap();
    assert_eq!(response.status().as_u16(), 422);
    let fake = s.fake.clone();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        fake.assert_no_violations()
    }));
    let message = *result.unwrap_err().downcast::<String>().unwrap();
    assert!(message.contains("statuses"), "{message}");
}
