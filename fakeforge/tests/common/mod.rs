//! Shared test helpers: bare git repositories made with the `git` CLI, fast retry policies and
//! a deadline around every await.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reconix_forge::RetryPolicy;
use reconix_spec::{RepoName, Secret};
use tempfile::TempDir;

/// A temporary directory holding a bare repository `repo.git` and a `home` for git.
pub(crate) struct TestRepo {
    pub(crate) dir: TempDir,
    pub(crate) git_dir: PathBuf,
    pub(crate) home: PathBuf,
}

impl TestRepo {
    /// Creates a bare repository whose `main` has one commit.
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        std::fs::create_dir(&home).unwrap();
        let git_dir = dir.path().join("repo.git");
        let repo = Self { dir, git_dir, home };
        repo.git(
            repo.dir.path(),
            &["init", "--quiet", "--bare", "-b", "main", "repo.git"],
        );
        let sha = repo.commit(None, "initial");
        repo.git_in_repo(&["update-ref", "refs/heads/main", &sha]);
        repo
    }

    /// Runs git with an isolated configuration in `cwd` and returns its trimmed stdout.
    pub(crate) fn git(&self, cwd: &Path, args: &[&str]) -> String {
        git_isolated(&self.home, cwd, args)
    }

    pub(crate) fn git_in_repo(&self, args: &[&str]) -> String {
        let mut all = vec!["--git-dir", self.git_dir.to_str().unwrap()];
        all.extend_from_slice(args);
        self.git(self.dir.path(), &all)
    }

    /// Creates a commit (empty tree) on top of `parent` without touching any ref.
    pub(crate) fn commit(&self, parent: Option<&str>, message: &str) -> String {
        let tree = self.git_in_repo(&["hash-object", "-t", "tree", "-w", "/dev/null"]);
        let mut args = vec![
            "-c",
            "user.name=Fake Forge",
            "-c",
            "user.email=fake@example.invalid",
            "commit-tree",
            &tree,
            "-m",
            message,
        ];
        if let Some(parent) = parent {
            args.extend_from_slice(&["-p", parent]);
        }
        self.git_in_repo(&args)
    }

    /// Creates branch `name` at a new commit on top of main; returns its sha.
    pub(crate) fn branch(&self, name: &str) -> String {
        let main = self.head("main");
        let sha = self.commit(Some(&main), name);
        self.git_in_repo(&["update-ref", &format!("refs/heads/{name}"), &sha]);
        sha
    }

    pub(crate) fn head(&self, branch: &str) -> String {
        self.git_in_repo(&["rev-parse", &format!("refs/heads/{branch}")])
    }
}

pub(crate) fn git_isolated(home: &Path, cwd: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args(args)
        .current_dir(cwd)
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// Retries quickly so that fault tests take milliseconds.
pub(crate) fn fast() -> RetryPolicy {
    RetryPolicy {
        min_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(2),
        request_timeout: Duration::from_secs(5),
        ..RetryPolicy::default()
    }
}

pub(crate) fn secret(s: &str) -> Secret {
    Secret::new(s)
}

pub(crate) fn repo_name(name: &str) -> RepoName {
    RepoName::new(name).unwrap()
}

/// Awaits `f`, failing the test after 20 s instead of hanging.
pub(crate) async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .expect("timed out")
}
