//! Helpers shared by the real-Nix test binaries (`real_nix`, `remote_build`, `workers`,
//! `aggregates`).

#![allow(
    dead_code,
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test helpers: each test binary uses a subset; clippy's allow-*-in-tests only covers #[test] functions"
)]

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What a test says when Nix is missing: these tests never skip.
pub(crate) const NIX_MISSING: &str = "nix not found: run `make test` (which installs Nix via scripts/install-nix.sh) or scripts/install-nix.sh";

/// The longest one Nix step may take before a test fails.
pub(crate) const STEP: Duration = Duration::from_secs(60);

/// Fails loudly when Nix is not installed.
pub(crate) fn require_nix() {
    let ok = Command::new("nix-store")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(ok, "{NIX_MISSING}");
}

/// Returns a salt unique to this moment, process and call, so derivations are always new.
pub(crate) fn salt() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{nanos}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Awaits `f`, failing the test after [`STEP`].
pub(crate) async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, f)
        .await
        .expect("nix took too long")
}

/// Runs `git args` in `dir` and returns its standard output; fails the test when git fails.
pub(crate) fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Commits `flake` as `flake.nix` of a new git repository in a temporary directory named
/// `prefix…`; returns the directory and the locked flake reference of that commit.
pub(crate) fn commit_flake(flake: &str, prefix: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    std::fs::write(dir.path().join("flake.nix"), flake).unwrap();
    git(dir.path(), &["init", "-q", "-b", "main"]);
    git(dir.path(), &["add", "flake.nix"]);
    git(
        dir.path(),
        &[
            "-c",
            "user.name=reconix",
            "-c",
            "user.email=reconix@example.invalid",
            "commit",
            "-qm",
            "test flake",
        ],
    );
    let rev = git(dir.path(), &["rev-parse", "HEAD"]);
    let flake_ref = format!(
        "git+file://{}?ref=refs/heads/main&rev={}",
        dir.path().display(),
        rev.trim()
    );
    (dir, flake_ref)
}

/// The jobs of an evaluation by their attribute path as Nix prints it.
pub(crate) fn by_attr(
    outcome: reconix_nixcli::EvalOutcome,
) -> std::collections::BTreeMap<String, reconix_nixcli::EvalJob> {
    outcome
        .jobs
        .into_iter()
        .map(|j| (j.attr.to_string(), j))
        .collect()
}

/// Runs `nix.collect_garbage()` back to back until `stop` is cancelled; the task returns how
/// many collections finished.
pub(crate) fn collect_until(
    nix: reconix_nixcli::NixCli,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<u32> {
    use reconix_nixcli::Nix;
    tokio::spawn(async move {
        let mut runs = 0u32;
        while !stop.is_cancelled() {
            nix.collect_garbage().await.unwrap();
            runs += 1;
        }
        runs
    })
}
