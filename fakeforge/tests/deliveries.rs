//! Webhook deliveries from the fake to a tiny receiver: the received bytes verify with the
//! hook's secret and parse with reconix-forge into the expected normalised events, for each
//! forge kind; redelivery repeats the delivery id; a tampered secret breaks verification.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions fail loudly"
)]

mod common;

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use common::{TestRepo, fast, repo_name, secret, within};
use reconix_fakeforge::{Delivery, FakeForge, FakeHook, FakePr, PrAction};
use reconix_forge::{
    Event, Forge, GiteaClient, GithubClient, GitlabClient, Headers, HookEvent, HookSpec, Payload,
    PullRequestAction,
};
use reconix_spec::ForgeKind;

type Received = Arc<Mutex<Vec<(Headers, Vec<u8>)>>>;

async fn receive(
    State(received): State<Received>,
    headers: HeaderMap,
    body: Bytes,
) -> &'static str {
    let headers: Headers = headers
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap().to_owned()))
        .collect();
    received.lock().unwrap().push((headers, body.to_vec()));
    "ok"
}

/// Starts a receiver on 127.0.0.1:0; returns its URL and what it received.
async fn receiver() -> (String, Received) {
    let received = Received::default();
    let app = Router::new().fallback(receive).with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/webhooks/fake", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

async fn create_hook(fake: &FakeForge, name: &str, spec: &HookSpec) -> u64 {
    let token = secret(&fake.token());
    let api = fake.api_url();
    let repo = repo_name(name);
    let hook = match fake.kind() {
        ForgeKind::Github => {
            let c = GithubClient::with_retry_policy(&api, &token, fast()).unwrap();
            within(c.create_hook(&repo, spec)).await
        }
        ForgeKind::Gitlab => {
            let c = GitlabClient::with_retry_policy(&api, &token, fast()).unwrap();
            within(c.create_hook(&repo, spec)).await
        }
        _ => {
            let c = GiteaClient::with_retry_policy(&api, &token, fast()).unwrap();
            within(c.create_hook(&repo, spec)).await
        }
    };
    hook.unwrap().id
}

/// Checks that the receiver got exactly the delivery's bytes, that they verify with `key` and
/// returns the parsed event.
fn check(kind: ForgeKind, delivery: &Delivery, received: &(Headers, Vec<u8>), key: &str) -> Event {
    assert_eq!(delivery.status, 200);
    assert_eq!(received.1, delivery.body);
    reconix_forge::verify(kind, &received.0, &received.1, &secret(key))
        .unwrap_or_else(|e| panic!("{kind}: {e}"));
    let event = reconix_forge::parse(kind, &received.0, &received.1).unwrap();
    assert_eq!(
        event.delivery.as_deref(),
        Some(delivery.delivery_id.as_str())
    );
    event
}

async fn deliveries(kind: ForgeKind, name: &str) {
    let repo = TestRepo::new();
    let main = repo.head("main");
    let head = repo.branch("feature");
    let fake = FakeForge::start(kind).await.unwrap();
    fake.add_repo(name, &repo.git_dir, "main");
    let (url, received) = receiver().await;
    let spec = HookSpec {
        url: url.clone(),
        secret: secret("hook secret"),
        events: vec![HookEvent::Push, HookEvent::PullRequest],
    };
    let hook_id = create_hook(&fake, name, &spec).await;
    // Hooks that must not receive: someone else's inactive one, and a push-only one for PRs.
    fake.add_hook(
        name,
        FakeHook {
            id: 0,
            url: url.clone(),
            events: vec!["push".to_owned(), "pull_request".to_owned()],
            active: false,
            content_type: "json".to_owned(),
            secret: None,
        },
    );

    // Push.
    let next = repo.commit(Some(&main), "next");
    let sent = within(fake.deliver_push(name, "refs/heads/main", &main, &next)).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].hook_id, hook_id);
    let got = received.lock().unwrap().last().cloned().unwrap();
    let event = check(kind, &sent[0], &got, "hook secret");
    assert_eq!(event.repo.as_deref(), Some(name));
    let Payload::Push(push) = &event.payload else {
        panic!("{kind}: not a push: {event:?}");
    };
    assert_eq!(push.git_ref, "refs/heads/main");
    assert_eq!(
        (push.before.as_str(), push.after.as_str()),
        (main.as_str(), next.as_str())
    );
    assert!(!push.created && !push.deleted && !push.tag);

    // Pull request: opened from a fork, synchronised, closed, reopened.
    fake.open_pull_request(
        name,
        FakePr {
            number: 7,
            author: "alice".to_owned(),
            head_ref: "feature".to_owned(),
            head_sha: head.clone(),
            base_ref: "main".to_owned(),
            from_fork: true,
        },
    );
    let newer = repo.commit(Some(&head), "newer");
    for (action, expected, sha) in [
        (PrAction::Opened, PullRequestAction::Opened, head.clone()),
        (
            PrAction::Synchronize,
            PullRequestAction::Updated,
            newer.clone(),
        ),
        (PrAction::Closed, PullRequestAction::Closed, newer.clone()),
        (
            PrAction::Reopened,
            PullRequestAction::Reopened,
            newer.clone(),
        ),
    ] {
        if action == PrAction::Synchronize {
            fake.update_pull_request(name, 7, &newer);
        }
        let sent = within(fake.deliver_pull_request(name, 7, action)).await;
        assert_eq!(sent.len(), 1, "{kind} {action:?}");
        let got = received.lock().unwrap().last().cloned().unwrap();
        let event = check(kind, &sent[0], &got, "hook secret");
        assert_eq!(event.repo.as_deref(), Some(name));
        let Payload::PullRequest(pr) = &event.payload else {
            panic!("{kind}: not a pull request: {event:?}");
        };
        assert_eq!(pr.number, 7);
        assert_eq!(pr.action, expected, "{kind} {action:?}");
        assert_eq!(pr.head_sha.as_deref(), Some(sha.as_str()));
        assert_eq!(pr.head_ref.as_deref(), Some("feature"));
        assert_eq!(pr.base_ref.as_deref(), Some("main"));
        assert_eq!(pr.from_fork, Some(true), "{kind} {action:?}");
        // GitLab's payload names the user who acted, not the author.
        let author = (kind != ForgeKind::Gitlab).then_some("alice");
        assert_eq!(pr.author.as_deref(), author);
    }

    // A branch PR is not from a fork.
    fake.open_pull_request(
        name,
        FakePr {
            number: 8,
            author: "bob".to_owned(),
            head_ref: "feature".to_owned(),
            head_sha: head.clone(),
            base_ref: "main".to_owned(),
            from_fork: false,
        },
    );
    let sent = within(fake.deliver_pull_request(name, 8, PrAction::Opened)).await;
    let got = received.lock().unwrap().last().cloned().unwrap();
    let event = check(kind, &sent[0], &got, "hook secret");
    let Payload::PullRequest(pr) = &event.payload else {
        panic!("{kind}: not a pull request: {event:?}");
    };
    assert_eq!(pr.from_fork, Some(false));

    // Redelivery: same bytes, same headers, same id.
    let count = received.lock().unwrap().len();
    assert_eq!(within(fake.redeliver(&sent[0])).await, 200);
    let again = received.lock().unwrap().last().cloned().unwrap();
    assert_eq!(received.lock().unwrap().len(), count + 1);
    assert_eq!(again.1, got.1);
    assert_eq!(again.0, got.0);

    // Drift: a tampered secret signs deliveries the daemon must reject.
    fake.tamper_hook(name, hook_id, |h| {
        h.secret = Some("someone else's".to_owned())
    });
    let sent = within(fake.deliver_push(name, "refs/heads/main", &main, &next)).await;
    let got = received.lock().unwrap().last().cloned().unwrap();
    assert!(reconix_forge::verify(kind, &got.0, &got.1, &secret("hook secret")).is_err());
    assert_eq!(sent.len(), 1);

    // Only pushes: no pull request deliveries.
    fake.tamper_hook(name, hook_id, |h| h.events = vec!["push".to_owned()]);
    assert!(
        within(fake.deliver_pull_request(name, 7, PrAction::Opened))
            .await
            .is_empty()
    );
    fake.assert_no_violations();
}

#[tokio::test]
async fn github_deliveries_should_verify_and_parse() {
    deliveries(ForgeKind::Github, "org/app").await;
}

#[tokio::test]
async fn gitlab_deliveries_should_verify_and_parse() {
    deliveries(ForgeKind::Gitlab, "group/sub/app").await;
}

#[tokio::test]
async fn gitea_deliveries_should_verify_and_parse() {
    deliveries(ForgeKind::Gitea, "org/app").await;
}

#[tokio::test]
async fn deliveries_should_carry_each_forge_headers() {
    let (url, _received) = receiver().await;
    for (kind, name, expected) in [
        (
            ForgeKind::Github,
            "org/app",
            &[
                "X-GitHub-Event",
                "X-GitHub-Delivery",
                "X-Hub-Signature-256",
                "X-GitHub-Hook-ID",
            ][..],
        ),
        (
            ForgeKind::Gitlab,
            "g/app",
            &[
                "X-Gitlab-Event",
                "X-Gitlab-Token",
                "X-Gitlab-Event-UUID",
                "Idempotency-Key",
            ][..],
        ),
        (
            ForgeKind::Gitea,
            "org/app",
            &[
                "X-Gitea-Event",
                "X-Gitea-Delivery",
                "X-Gitea-Signature",
                "X-Forgejo-Event",
                "X-Forgejo-Delivery",
                "X-Forgejo-Signature",
            ][..],
        ),
    ] {
        let repo = TestRepo::new();
        let main = repo.head("main");
        let fake = FakeForge::start(kind).await.unwrap();
        fake.add_repo(name, &repo.git_dir, "main");
        fake.add_hook(
            name,
            FakeHook {
                id: 0,
                url: url.clone(),
                events: vec!["push".to_owned()],
                active: true,
                content_type: "json".to_owned(),
                secret: Some("k".to_owned()),
            },
        );
        let sent = within(fake.deliver_push(name, "refs/heads/main", &main, &main)).await;
        for header in expected {
            assert!(sent[0].header(header).is_some(), "{kind}: {header}");
        }
        match kind {
            ForgeKind::Github => {
                assert!(
                    sent[0]
                        .header("X-Hub-Signature-256")
                        .unwrap()
                        .starts_with("sha256=")
                );
            }
            ForgeKind::Gitlab => {
                assert_eq!(sent[0].header("X-Gitlab-Event"), Some("Push Hook"));
                assert_eq!(sent[0].header("X-Gitlab-Token"), Some("k"));
            }
            _ => {
                let sig = sent[0].header("X-Gitea-Signature").unwrap();
                assert_eq!(sig.len(), 64);
                assert_eq!(sent[0].header("X-Forgejo-Signature"), Some(sig));
            }
        }
        if kind == ForgeKind::Github {
            let ping = within(fake.deliver_ping(name, sent[0].hook_id))
                .await
                .unwrap();
            let headers: Headers = ping.headers.iter().cloned().collect();
            let event = reconix_forge::parse(kind, &headers, &ping.body).unwrap();
            assert!(matches!(event.payload, Payload::Ping(_)), "{event:?}");
        }
    }
}
