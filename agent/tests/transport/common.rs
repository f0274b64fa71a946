//! Helpers: a coordinator on 127.0.0.1:0, an agent task, deadlines.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reconix_agent::agent::{Agent, AgentConfig, Backoff};
use reconix_agent::coordinator::{CoordinatorKey, Limits, Listener, Pending};
use reconix_spec::BuilderName;
use tempfile::TempDir;
use tokio_util::sync::{CancellationToken, DropGuard};

/// How long any single wait in these tests may take.
pub(crate) const DEADLINE: Duration = Duration::from_secs(20);

pub(crate) struct Coordinator {
    _dir: TempDir,
    pub(crate) key: CoordinatorKey,
    pub(crate) listener: Listener,
}

impl Coordinator {
    pub(crate) async fn start() -> Self {
        Self::with_limits(Limits::default()).await
    }

    pub(crate) async fn with_limits(limits: Limits) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = CoordinatorKey::load_or_create(dir.path()).unwrap();
        let listener = Listener::bind("127.0.0.1:0".parse().unwrap(), &key, limits)
            .await
            .unwrap();
        Self {
            _dir: dir,
            key,
            listener,
        }
    }

    pub(crate) fn addr(&self) -> String {
        self.listener.local_addr().to_string()
    }

    /// Returns the next handshake result, failing the test after [`DEADLINE`].
    pub(crate) async fn next(&self) -> reconix_agent::Result<Pending> {
        tokio::time::timeout(DEADLINE, self.listener.accept())
            .await
            .expect("no agent handshake within the deadline")
    }

    /// Returns the next successful handshake.
    pub(crate) async fn pending(&self) -> Pending {
        self.next().await.expect("agent handshake failed")
    }

    /// Returns the next successful handshake, skipping failed ones (silent peers timing out
    /// or displaced), failing the test after [`DEADLINE`].
    pub(crate) async fn next_agent(&self) -> Pending {
        let agent = async {
            loop {
                if let Ok(pending) = self.listener.accept().await {
                    return pending;
                }
            }
        };
        tokio::time::timeout(DEADLINE, agent)
            .await
            .expect("no agent handshake within the deadline")
    }
}

/// A fast-retrying agent configuration for `coordinator` with its state in `state_dir`.
pub(crate) fn agent_config(coordinator: &Coordinator, state_dir: &Path) -> AgentConfig {
    AgentConfig {
        backoff: Backoff {
            min: Duration::from_millis(50),
            max: Duration::from_millis(500),
            jitter: false,
        },
        refused_backoff: Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_millis(1000),
            jitter: false,
        },
        ..AgentConfig::new(
            coordinator.addr(),
            state_dir,
            BuilderName::new("builder-1").unwrap(),
        )
    }
}

/// An agent running on a task; stopped when dropped.
pub(crate) struct RunningAgent {
    pub(crate) fingerprint: String,
    _stop: DropGuard,
}

pub(crate) fn spawn_agent(config: AgentConfig) -> RunningAgent {
    let agent = Agent::new(config).unwrap();
    let fingerprint = agent.fingerprint().to_string();
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move { agent.run(token).await });
    RunningAgent {
        fingerprint,
        _stop: stop.drop_guard(),
    }
}

/// Fails with installation advice when Nix is missing (STYLE §7: never skip silently).
pub(crate) fn require_nix() {
    let found = std::process::Command::new("nix-store")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "nix-store not found: these tests need Nix (run `make test`, which installs it, or see \
         docs on installing Nix)"
    );
}

/// A chroot store under `dir` (nix-lab §5): a second, separate store on this machine.
pub(crate) fn chroot_store(dir: &Path) -> PathBuf {
    dir.join("store")
}

/// Polls `check` until it holds, failing after [`DEADLINE`].
pub(crate) async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
