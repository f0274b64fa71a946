//! Helpers shared by the real-Nix test binaries (`real_nix`, `remote_build`).

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
