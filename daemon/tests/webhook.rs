//! `reconix webhook inspect`, run as the real binary on every payload fixture of the forge
//! crate, signed, tampered with and malformed.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: allow-*-in-tests covers only #[test] fns"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The secret the Gitea vectors in `forge/tests/fixtures/gitea/signature-vectors.json` use.
const TEST_SECRET: &str = "reconix test secret";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../forge/tests/fixtures")
}

fn inspect(kind: &str, extra: &[&str], headers: &[&str], body: &Path) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_reconix"));
    command.args(["webhook", "inspect", "--forge-kind", kind]);
    command.args(extra);
    for header in headers {
        command.args(["--header", header]);
    }
    command.arg(body).output().expect("reconix runs")
}

fn stdout_json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(
        text.lines().count(),
        1,
        "one JSON object on one line: {text}"
    );
    serde_json::from_str(&text).unwrap()
}

/// The forge kind, event header and expected `kind` of every payload fixture.
fn expectation(kind: &str, file: &str) -> (&'static str, &'static str) {
    match (kind, file) {
        ("github", "push.json" | "push.new-branch.json") => ("X-GitHub-Event: push", "push"),
        (
            "github",
            "pull_request.opened.json"
            | "pull_request.synchronize.json"
            | "pull_request.closed.json",
        ) => ("X-GitHub-Event: pull_request", "pull_request"),
        ("github", "ping.json" | "ping.with-app_id.json") => ("X-GitHub-Event: ping", "ping"),
        ("github", "installation.created.json") => ("X-GitHub-Event: installation", "ignored"),
        ("gitlab", "push_hook.json") => ("X-Gitlab-Event: Push Hook", "push"),
        ("gitlab", "merge_request_hook.json") => {
            ("X-Gitlab-Event: Merge Request Hook", "pull_request")
        }
        ("gitea", "push.gitea-docs.json") => ("X-Gitea-Event: push", "push"),
        _ => panic!("fixture {kind}/{file} has no expectation here: add one"),
    }
}

#[test]
fn inspect_should_print_the_event_of_every_payload_fixture() {
    let mut seen = 0;
    for kind in ["github", "gitlab", "gitea"] {
        for entry in std::fs::read_dir(fixtures().join(kind)).unwrap() {
            let path = entry.unwrap().path();
            let file = path.file_name().unwrap().to_str().unwrap().to_owned();
            if !file.ends_with(".json") || file.contains("signature") {
                continue;
            }
            let (header, expected) = expectation(kind, &file);
            let event = stdout_json(&inspect(kind, &[], &[header], &path));
            assert_eq!(event["kind"], expected, "{kind}/{file}");
            if expected != "ignored" {
                assert!(event["repo"].is_string(), "{kind}/{file}: {event}");
            }
            seen += 1;
        }
    }
    assert_eq!(seen, 11);
}

#[test]
fn inspect_should_carry_the_delivery_header() {
    let body = fixtures().join("github/push.json");
    let headers = [
        "x-github-event: push",
        "X-GitHub-Delivery: 72d3162e-cc78-11e3-81ab-4c9367dc0958",
    ];
    let event = stdout_json(&inspect("github", &[], &headers, &body));
    assert_eq!(event["delivery"], "72d3162e-cc78-11e3-81ab-4c9367dc0958");
    assert_eq!(event["after"], "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c");
}

fn secret_file(dir: &Path) -> PathBuf {
    let path = dir.join("secret");
    std::fs::write(&path, format!("{TEST_SECRET}\n")).unwrap();
    path
}

#[test]
fn inspect_should_accept_signed_deliveries_of_every_kind() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path());
    let secret = secret.to_str().unwrap();
    let github = fixtures().join("github/push.json");
    let sig = "ef9836f3831731eb1f2a34274872716a3dcb30b7d82470f63233443e52c5febe";
    let github_sig = format!("X-Hub-Signature-256: sha256={sig}");
    let headers = ["X-GitHub-Event: push", github_sig.as_str()];
    let event = stdout_json(&inspect(
        "github",
        &["--secret-file", secret],
        &headers,
        &github,
    ));
    assert_eq!(event["repo"], "baxterthehacker/public-repo");

    let gitea = fixtures().join("gitea/push.gitea-docs.json");
    let sig =
        "X-Forgejo-Signature: 2a8e8f7bf66bb60b63576273dd77aba91f1c89c0b46a0ab269b5af0451a640fc";
    let headers = ["X-Forgejo-Event: push", sig];
    let event = stdout_json(&inspect(
        "gitea",
        &["--secret-file", secret],
        &headers,
        &gitea,
    ));
    assert_eq!(event["repo"], "gitea/webhooks");

    let gitlab = fixtures().join("gitlab/push_hook.json");
    let token = format!("X-Gitlab-Token: {TEST_SECRET}");
    let headers = ["X-Gitlab-Event: Push Hook", token.as_str()];
    let event = stdout_json(&inspect(
        "gitlab",
        &["--secret-file", secret],
        &headers,
        &gitlab,
    ));
    assert_eq!(event["repo"], "mike/diaspora");
}

#[test]
fn inspect_should_exit_2_on_a_tampered_body_without_printing_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path());
    let mut body = std::fs::read(fixtures().join("gitea/push.gitea-docs.json")).unwrap();
    body[0] ^= 0x01;
    let tampered = dir.path().join("tampered.json");
    std::fs::write(&tampered, body).unwrap();
    let sig = "X-Gitea-Signature: 2a8e8f7bf66bb60b63576273dd77aba91f1c89c0b46a0ab269b5af0451a640fc";
    let out = inspect(
        "gitea",
        &["--secret-file", secret.to_str().unwrap()],
        &["X-Gitea-Event: push", sig],
        &tampered,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("does not match"), "{stderr}");
    assert!(!stderr.contains(TEST_SECRET), "{stderr}");
}

#[test]
fn inspect_should_exit_2_on_a_wrong_token_or_a_missing_signature_header() {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path());
    let secret = secret.to_str().unwrap();
    let gitlab = fixtures().join("gitlab/push_hook.json");
    let headers = ["X-Gitlab-Event: Push Hook", "X-Gitlab-Token: guess"];
    let out = inspect("gitlab", &["--secret-file", secret], &headers, &gitlab);
    assert_eq!(out.status.code(), Some(2));
    let github = fixtures().join("github/push.json");
    let out = inspect(
        "github",
        &["--secret-file", secret],
        &["X-GitHub-Event: push"],
        &github,
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("missing signature header X-Hub-Signature-256"),
        "{stderr}"
    );
}

#[test]
fn inspect_should_not_check_the_signature_without_a_secret_file() {
    let github = fixtures().join("github/push.json");
    let headers = ["X-GitHub-Event: push", "X-Hub-Signature-256: sha256=00"];
    stdout_json(&inspect("github", &[], &headers, &github));
}

#[test]
fn inspect_should_exit_1_with_a_clear_message_on_malformed_json() {
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("broken.json");
    std::fs::write(&body, "{\"ref\": \"refs/heads/main\",").unwrap();
    for (kind, header) in [
        ("github", "X-GitHub-Event: push"),
        ("gitlab", "X-Gitlab-Event: Merge Request Hook"),
        ("gitea", "X-Gitea-Event: push"),
    ] {
        let out = inspect(kind, &[], &[header], &body);
        assert_eq!(out.status.code(), Some(1), "{kind}");
        assert!(out.stdout.is_empty());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("malformed") && stderr.contains("payload"),
            "{stderr}"
        );
    }
}

#[test]
fn inspect_should_exit_1_without_an_event_header() {
    let out = inspect(
        "gitea",
        &[],
        &[],
        &fixtures().join("gitea/push.gitea-docs.json"),
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("missing event header"), "{stderr}");
}
