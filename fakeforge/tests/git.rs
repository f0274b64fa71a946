//! Git over smart HTTP: `git fetch` of branches and pull request refs through `clone_url`,
//! anonymously and with the token, for a GitHub-style and a GitLab group path.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions fail loudly"
)]

mod common;

use std::path::Path;
use std::process::Command;

use common::TestRepo;
use reconix_fakeforge::{FakeForge, FakePr};
use reconix_spec::ForgeKind;

/// Runs `git` in `cwd` with an isolated configuration; returns (success, stdout, stderr).
fn git(home: &Path, cwd: &Path, args: &[&str]) -> (bool, String, String) {
    let output = Command::new("git")
        .args(args)
        .current_dir(cwd)
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    )
}

fn base64(bytes: &[u8]) -> String {
    use base64::prelude::{BASE64_STANDARD, Engine as _};
    BASE64_STANDARD.encode(bytes)
}

async fn fetch_pull_request_ref(kind: ForgeKind, name: &'static str, pr_ref: &'static str) {
    let repo = TestRepo::new();
    let head = repo.branch("feature");
    let fake = FakeForge::start(kind).await.unwrap();
    fake.add_repo(name, &repo.git_dir, "main");
    let number = fake.open_pull_request(
        name,
        FakePr {
            number: 1,
            author: "alice".to_owned(),
            head_ref: "feature".to_owned(),
            head_sha: head.clone(),
            base_ref: "main".to_owned(),
            from_fork: true,
        },
    );
    assert_eq!(number, 1);

    let work = repo.dir.path().join("work");
    let home = repo.home.clone();
    let url = fake.clone_url(name);
    let refspec = format!("{pr_ref}:{pr_ref}");
    let expected = head.clone();
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir(&work).unwrap();
        assert!(git(&home, &work, &["init", "--quiet"]).0);
        // Anonymous.
        let (ok, _, err) = git(&home, &work, &["fetch", "--quiet", &url, &refspec]);
        assert!(ok, "{err}");
        let (_, sha, _) = git(
            &home,
            &work,
            &["rev-parse", &format!("{pr_ref}^{{commit}}")],
        );
        assert_eq!(sha, expected);
        let (ok, _, err) = git(&home, &work, &["fetch", "--quiet", &url, "main:main"]);
        assert!(ok, "{err}");
    })
    .await
    .unwrap();

    // The PR moves: the ref follows, and a fetch with the token (Basic auth) sees it.
    let main = repo.head("main");
    let newer = repo.commit(Some(&head), "second");
    fake.update_pull_request(name, 1, &newer);
    let work = repo.dir.path().join("work");
    let home = repo.home.clone();
    let url = fake.clone_url(name);
    let refspec = format!("+{pr_ref}:{pr_ref}");
    let good = format!(
        "http.extraHeader=Authorization: Basic {}",
        base64(format!("oauth2:{}", fake.token()).as_bytes())
    );
    let bad = format!(
        "http.extraHeader=Authorization: Basic {}",
        base64(b"oauth2:wrong")
    );
    tokio::task::spawn_blocking(move || {
        let (ok, _, err) = git(
            &home,
            &work,
            &["-c", &good, "fetch", "--quiet", &url, &refspec],
        );
        assert!(ok, "{err}");
        let (_, sha, _) = git(
            &home,
            &work,
            &["rev-parse", &format!("{pr_ref}^{{commit}}")],
        );
        assert_eq!(sha, newer);
        let (_, sha, _) = git(&home, &work, &["rev-parse", "main"]);
        assert_eq!(sha, main);
        let (ok, _, _) = git(
            &home,
            &work,
            &["-c", &bad, "fetch", "--quiet", &url, &refspec],
        );
        assert!(!ok, "a wrong token must be refused");
    })
    .await
    .unwrap();

    let calls = fake.calls();
    assert!(
        calls
            .iter()
            .any(|c| c.path.contains("info/refs?service=git-upload-pack") && c.status == 200),
        "{calls:?}"
    );
    assert!(
        calls
            .iter()
            .any(|c| c.path.ends_with("/git-upload-pack") && c.status == 200)
    );
    assert!(calls.iter().any(|c| c.status == 401));
}

#[tokio::test]
async fn github_pull_ref_should_be_fetchable() {
    fetch_pull_request_ref(ForgeKind::Github, "org/app", "refs/pull/1/head").await;
}

#[tokio::test]
async fn gitlab_merge_request_ref_should_be_fetchable_under_a_group_path() {
    fetch_pull_request_ref(
        ForgeKind::Gitlab,
        "group/sub/app",
        "refs/merge-requests/1/head",
    )
    .await;
}

#[tokio::test]
async fn gitea_pull_ref_should_be_fetchable() {
    fetch_pull_request_ref(ForgeKind::Gitea, "org/app", "refs/pull/1/head").await;
}

#[tokio::test]
async fn unknown_repository_should_be_not_found() {
    let fake = FakeForge::start(ForgeKind::Github).await.unwrap();
    let url = format!(
        "{}/info/refs?service=git-upload-pack",
        fake.clone_url("nobody/nothing")
    );
    assert_eq!(reqwest::get(&url).await.unwrap().status().as_u16(), 404);
}
