//! What every loop's `observe` and `apply` get: the ports, the status database, the current spec,
//! the running builds and handles to wake other loops.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use reconix_nixcli::Nix;
use reconix_spec::{BuilderName, RepoKey, Spec};
use reconix_status::Status;
use tokio::sync::watch;

use crate::builds::RunningBuilds;
use crate::runtime::Handle;

/// The bundle of ports (one trait per boundary) the loops are generic over.
pub trait Ports: Send + Sync + 'static {
    /// The Nix implementation.
    type Nix: Nix + Clone;
    /// Returns the Nix port.
    fn nix(&self) -> &Self::Nix;
}

/// The production ports: real Nix.
#[derive(Debug, Clone)]
pub struct LivePorts<N> {
    nix: N,
}

impl<N> LivePorts<N> {
    /// Bundles the given port implementations.
    pub fn new(nix: N) -> Self {
        Self { nix }
    }
}

impl<N: Nix + Clone> Ports for LivePorts<N> {
    type Nix = N;
    fn nix(&self) -> &N {
        &self.nix
    }
}

/// The context shared by all loops.
#[derive(Debug)]
pub struct Ctx<P> {
    /// The ports.
    pub ports: P,
    /// The observed-state database.
    pub status: Status,
    /// The current spec (the reloader publishes new ones).
    pub spec: watch::Receiver<Arc<Spec>>,
    /// Builds this process runs.
    pub running: RunningBuilds,
    /// Handles to wake loops when something they observe changed.
    pub wakers: Wakers,
}

impl<P> Ctx<P> {
    /// Creates a context with no running builds and unset wakers.
    pub fn new(ports: P, status: Status, spec: watch::Receiver<Arc<Spec>>) -> Self {
        Self {
            ports,
            status,
            spec,
            running: RunningBuilds::default(),
            wakers: Wakers::default(),
        }
    }

    /// Returns the current spec.
    pub fn spec(&self) -> Arc<Spec> {
        Arc::clone(&self.spec.borrow())
    }

    /// Returns the current state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.spec.borrow().state_dir.clone()
    }
}

/// Handles to wake loops, set once the controllers exist (they need the context first).
///
/// Waking is level-triggered: the woken loop re-observes everything, it is never told why.
#[derive(Debug, Default, Clone)]
pub struct Wakers {
    inner: Arc<OnceLock<WakerSet>>,
}

#[derive(Debug)]
struct WakerSet {
    builds: Handle<BuilderName>,
    gcroots: Handle<RepoKey>,
    evaluations: Handle<RepoKey>,
}

impl Wakers {
    /// Installs the handles; later calls are ignored.
    pub fn set(
        &self,
        builds: Handle<BuilderName>,
        gcroots: Handle<RepoKey>,
        evaluations: Handle<RepoKey>,
    ) {
        let _ = self.inner.set(WakerSet {
            builds,
            gcroots,
            evaluations,
        });
    }

    /// Wakes the `builds` loop.
    pub fn builds(&self) {
        if let Some(w) = self.inner.get() {
            w.builds.trigger_all();
        }
    }

    /// Wakes the `gcroots` loop for every repository.
    pub fn gcroots(&self) {
        if let Some(w) = self.inner.get() {
            w.gcroots.trigger_all();
        }
    }

    /// Wakes the `evaluations` loop for one repository.
    pub fn evaluations(&self, repo: RepoKey) {
        if let Some(w) = self.inner.get() {
            w.evaluations.trigger(repo);
        }
    }
}
