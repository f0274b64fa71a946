//! What every loop's `observe` and `apply` get: the ports, the status database, the current spec,
//! the running builds and handles to wake other loops.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use reconix_nixcli::Nix;
use reconix_spec::{BuilderName, RepoKey, Spec};
use reconix_status::{Metrics, Status};
use tokio::sync::watch;

use crate::connected::Agents;
use crate::forge_clients::ForgeClients;
use crate::running::{Placement, RunningBuilds};
use crate::runtime::{Handle, Tasks};

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
    /// REST clients of the hosted forges.
    pub forges: ForgeClients,
    /// The connected remote builders.
    pub agents: Agents,
    /// Where builds record their durations (forge clients get a clone, see
    /// [`Ctx::with_metrics`]).
    pub metrics: Metrics,
    /// Held while an evaluation's GC roots are added (`gcroots`) or the evaluation is purged
    /// with its roots (`retention`): otherwise `gcroots`, having read a job just before the
    /// purge, could root it again just after, and a garbage collection would keep an output
    /// that retention released.
    pub roots: Arc<tokio::sync::Mutex<()>>,
    /// Tasks spawned outside the controllers (running builds); shutdown waits for them.
    pub tasks: Tasks,
    /// Succeeded builds whose closure size is still to be measured (in batches).
    pub closures: crate::closures::ClosureQueue,
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
            forges: ForgeClients::default(),
            agents: Agents::default(),
            metrics: Metrics::default(),
            roots: Arc::default(),
            tasks: Tasks::new(),
            closures: crate::closures::ClosureQueue::default(),
        }
    }

    /// Records into `metrics` (the registry `/metrics` serves) instead of an unscraped one:
    /// build durations, and the forge clients' calls and rate limits.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.forges = self.forges.with_metrics(metrics.clone());
        self.metrics = metrics;
        self
    }

    /// Replaces the forge client registry (tests use short retry delays).
    #[must_use]
    pub fn with_forge_clients(mut self, forges: ForgeClients) -> Self {
        self.forges = forges.with_metrics(self.metrics.clone());
        self
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

/// How long [`Wakers::gcroots_soon`] gathers wakes.
pub(crate) const GCROOTS_SETTLE: Duration = Duration::from_secs(1);

/// Handles to wake loops, set once the controllers exist (they need the context first).
///
/// Waking is level-triggered: the woken loop re-observes everything, it is never told why.
#[derive(Debug, Default, Clone)]
pub struct Wakers {
    inner: Arc<OnceLock<WakerSet>>,
    /// A delayed wake of the `gcroots` loop is scheduled ([`Wakers::gcroots_soon`]).
    gcroots_scheduled: Arc<AtomicBool>,
}

/// The handles [`Wakers`] holds.
#[derive(Debug)]
pub struct WakerSet {
    /// The `builds` loop.
    pub builds: Handle<Placement>,
    /// The `gcroots` loop.
    pub gcroots: Handle<RepoKey>,
    /// The `evaluations` loop.
    pub evaluations: Handle<RepoKey>,
    /// The `heads` loop (hosted forges only).
    pub heads: Option<Handle<RepoKey>>,
    /// The `statuses` loop (hosted forges only).
    pub statuses: Option<Handle<RepoKey>>,
    /// The `webhooks` loop (hosted forges only).
    pub webhooks: Option<Handle<RepoKey>>,
    /// The `builders` loop (remote builders only).
    pub builders: Option<Handle<BuilderName>>,
    /// The `caches` loop (keyed by push-url).
    pub caches: Option<Handle<String>>,
}

impl Wakers {
    /// Installs the handles of the core loops; later calls are ignored.
    pub fn set(
        &self,
        builds: Handle<Placement>,
        gcroots: Handle<RepoKey>,
        evaluations: Handle<RepoKey>,
    ) {
        self.set_all(WakerSet {
            builds,
            gcroots,
            evaluations,
            heads: None,
            statuses: None,
            webhooks: None,
            builders: None,
            caches: None,
        });
    }

    /// Installs every handle; later calls are ignored.
    pub fn set_all(&self, set: WakerSet) {
        let _ = self.inner.set(set);
    }

    /// Wakes the `statuses` loop for one repository.
    pub fn statuses(&self, repo: RepoKey) {
        if let Some(h) = self.inner.get().and_then(|w| w.statuses.as_ref()) {
            h.trigger(repo);
        }
    }

    /// Wakes the `statuses` loop for every repository.
    pub fn all_statuses(&self) {
        if let Some(h) = self.inner.get().and_then(|w| w.statuses.as_ref()) {
            h.trigger_all();
        }
    }

    /// Wakes the `heads` loop for one repository.
    pub fn heads(&self, repo: RepoKey) {
        if let Some(h) = self.inner.get().and_then(|w| w.heads.as_ref()) {
            h.trigger(repo);
        }
    }

    /// Wakes the `webhooks` loop for one repository.
    pub fn webhooks(&self, repo: RepoKey) {
        if let Some(h) = self.inner.get().and_then(|w| w.webhooks.as_ref()) {
            h.trigger(repo);
        }
    }

    /// Wakes every loop that calls forges, for every repository (a paused forge resumed).
    pub fn forge_loops(&self) {
        if let Some(w) = self.inner.get() {
            for h in [&w.heads, &w.statuses, &w.webhooks].into_iter().flatten() {
                h.trigger_all();
            }
        }
    }

    /// Wakes the `caches` loop for every cache.
    pub fn caches(&self) {
        if let Some(h) = self.inner.get().and_then(|w| w.caches.as_ref()) {
            h.trigger_all();
        }
    }

    /// Wakes the `builders` loop for one agent.
    pub fn builders(&self, agent: BuilderName) {
        if let Some(h) = self.inner.get().and_then(|w| w.builders.as_ref()) {
            h.trigger(agent);
        }
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

    /// Wakes the `gcroots` loop once a second (`GCROOTS_SETTLE`) from now, however often it is called
    /// meanwhile: for builds that end one after another (each roots its own outputs as it
    /// ends, so the loop only records them and roots the other jobs sharing them), a walk of
    /// every root per build would compete with the builds for nothing.
    pub fn gcroots_soon(&self) {
        if self.gcroots_scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(GCROOTS_SETTLE).await;
            this.gcroots_scheduled.store(false, Ordering::Release);
            this.gcroots();
        });
    }

    /// Wakes the `evaluations` loop for one repository.
    pub fn evaluations(&self, repo: RepoKey) {
        if let Some(w) = self.inner.get() {
            w.evaluations.trigger(repo);
        }
    }
}
