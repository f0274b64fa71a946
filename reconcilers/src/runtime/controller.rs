//! [`Controller`]: drives one [`Reconciler`] with the runtime guarantees.
//!
//! One task owns all scheduling state (a [`Scheduler`], failure counters, in-flight set) and
//! reacts to: finished reconciles, [`Handle`] triggers, spec changes, the resync timer and the
//! next due time. Reconciles run as tasks of a `JoinSet`, so a panicking one is counted as a
//! failure instead of taking the loop down.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::Hash;
use std::mem;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use reconix_spec::Timestamp;
use tokio::sync::{Notify, watch};
use tokio::task::{Id, JoinError, JoinHandle, JoinSet};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, trace, warn};

use super::action::{Action, Plan, default_backoff};
use super::clock::Clock;
use super::reconciler::Reconciler;
use super::scheduler::Scheduler;

/// How often every key is re-listed and run when nothing else happens.
const DEFAULT_RESYNC: Duration = Duration::from_secs(5 * 60);
/// How many different keys may be reconciled at once by default.
const DEFAULT_CONCURRENCY: usize = 8;

/// Describes one finished reconcile; the daemon persists it as loop health and counts it in its
/// metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunReport {
    /// The loop's [`Reconciler::NAME`].
    pub loop_name: &'static str,
    /// The reconciled key, displayed.
    pub key: String,
    /// When the reconcile started (the `now` its plan saw).
    pub started: Timestamp,
    /// How long observe, plan and apply took.
    pub duration: Duration,
    /// `Ok` when every step succeeded, else the error with its causes (`a: b: c`).
    pub outcome: Result<(), String>,
    /// How many steps were applied successfully.
    pub steps_applied: usize,
    /// Whether the error was a full or failing disk ([`crate::is_storage_trouble`]).
    pub storage_trouble: bool,
    /// Consecutive failures of this key including this run (0 after a success).
    pub failures: u32,
    /// When the key runs next, from now; `None` while it awaits a change.
    pub next_run: Option<Duration>,
}

type ReportFn = Arc<dyn Fn(&RunReport) + Send + Sync>;
type ListedFn = Arc<dyn Fn(usize) + Send + Sync>;

/// Runs a [`Reconciler`]: schedules its keys and reconciles them until shutdown.
///
/// Guarantees (as kube-runtime's `applier`): at most one reconcile per key at a time; requests
/// for a key are deduplicated with the earliest time winning, and requests during a run become
/// exactly one follow-up run; different keys run concurrently up to [`Self::concurrency`];
/// every key is re-listed and run every [`Self::resync_every`] and whenever the spec changes;
/// memory is one entry per key.
pub struct Controller<R: Reconciler> {
    reconciler: Arc<R>,
    context: Arc<R::Context>,
    spec: watch::Receiver<Arc<R::Spec>>,
    resync: Duration,
    concurrency: usize,
    on_report: Option<ReportFn>,
    on_listed: Option<ListedFn>,
    clock: Clock,
    requests: Arc<Requests<R::Key>>,
}

impl<R: Reconciler> fmt::Debug for Controller<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Controller")
            .field("loop", &R::NAME)
            .field("resync", &self.resync)
            .field("concurrency", &self.concurrency)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl<R: Reconciler> Controller<R> {
    /// Returns a controller for `reconciler`, reading the desired state from `spec`.
    pub fn new(
        reconciler: Arc<R>,
        context: Arc<R::Context>,
        spec: watch::Receiver<Arc<R::Spec>>,
    ) -> Self {
        Self {
            reconciler,
            context,
            spec,
            resync: DEFAULT_RESYNC,
            concurrency: DEFAULT_CONCURRENCY,
            on_report: None,
            on_listed: None,
            clock: Clock::system(),
            requests: Arc::new(Requests {
                pending: Mutex::new(Pending {
                    keys: HashSet::new(),
                    all: false,
                }),
                notify: Notify::new(),
            }),
        }
    }

    /// Sets how often every key is re-listed and run (default 5 min).
    #[must_use]
    pub fn resync_every(mut self, interval: Duration) -> Self {
        // `interval_at` panics on a zero period; a zero resync would also be a busy loop.
        self.resync = interval.max(Duration::from_millis(1));
        self
    }

    /// Sets how many different keys may be reconciled at once (default 8, at least 1).
    #[must_use]
    pub fn concurrency(mut self, limit: usize) -> Self {
        self.concurrency = limit.max(1);
        self
    }

    /// Sets a callback run after every reconcile, on the controller's task: it must not block.
    #[must_use]
    pub fn on_report(mut self, report: impl Fn(&RunReport) + Send + Sync + 'static) -> Self {
        self.on_report = Some(Arc::new(report));
        self
    }

    /// Sets a callback run after every successful listing of the keys, with how many were
    /// listed, on the controller's task: it must not block. A loop that lists no key never
    /// reconciles, so this is how it shows that it is alive (the daemon's `/readyz`).
    #[must_use]
    pub fn on_listed(mut self, listed: impl Fn(usize) + Send + Sync + 'static) -> Self {
        self.on_listed = Some(Arc::new(listed));
        self
    }

    /// Sets the clock that gives `plan` its `now` (default [`Clock::system`]).
    #[must_use]
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Returns a handle that asks this controller for runs.
    pub fn handle(&self) -> Handle<R::Key> {
        Handle {
            requests: Arc::clone(&self.requests),
        }
    }

    /// Reconciles until `shutdown` is cancelled.
    ///
    /// It lists every key at once, then runs keys as they come due. On cancellation it starts
    /// nothing new; in-flight reconciles finish the step they are applying and skip the rest
    /// (steps are restart-safe, the next start plans them again). It returns once they are done.
    pub async fn run(self, shutdown: CancellationToken) {
        let Controller {
            reconciler,
            context,
            mut spec,
            resync,
            concurrency,
            on_report,
            on_listed,
            clock,
            requests,
        } = self;
        // The first listing below covers the current spec.
        spec.mark_unchanged();
        let mut spec_open = true;
        let mut resync_timer = tokio::time::interval_at(Instant::now() + resync, resync);
        resync_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut runner = Runner {
            reconciler,
            context,
            spec,
            concurrency,
            on_report,
            on_listed,
            clock,
            shutdown: shutdown.clone(),
            scheduler: Scheduler::new(),
            failures: HashMap::new(),
            tasks: JoinSet::new(),
            in_flight: HashMap::new(),
            listing: None,
            relist: true,
        };
        debug!(loop = R::NAME, "controller started");
        loop {
            runner.start_listing();
            runner.start_due();
            let wake = runner.next_wake();
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(joined) = runner.tasks.join_next_with_id(), if !runner.tasks.is_empty() => {
                    runner.finish(joined);
                }
                () = requests.notify.notified() => runner.take_requests(&requests),
                changed = runner.spec.changed(), if spec_open => match changed {
                    Ok(()) => {
                        info!(loop = R::NAME, "spec changed, running every key");
                        runner.spec.borrow_and_update();
                        runner.relist = true;
                    }
                    // The sender is gone: the spec can no longer change, keep the last one.
                    Err(_) => spec_open = false,
                },
                listed = wait(&mut runner.listing), if runner.listing.is_some() => {
                    runner.finish_listing(listed);
                }
                _ = resync_timer.tick() => runner.relist = true,
                () = tokio::time::sleep_until(wake.unwrap_or_else(Instant::now)), if wake.is_some() => {}
            }
        }
        runner.drain().await;
        debug!(loop = R::NAME, "controller stopped");
    }
}

/// Asks a [`Controller`] for runs; cheap to clone, usable from any thread, never blocks.
///
/// Requests are deduplicated: memory is one entry per key however often it is triggered.
pub struct Handle<K> {
    requests: Arc<Requests<K>>,
}

impl<K> Clone for Handle<K> {
    fn clone(&self) -> Self {
        Self {
            requests: Arc::clone(&self.requests),
        }
    }
}

impl<K> fmt::Debug for Handle<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle").finish_non_exhaustive()
    }
}

impl<K: Eq + Hash> Handle<K> {
    /// Asks for `key` to be reconciled as soon as possible (after its current run, if any).
    pub fn trigger(&self, key: K) {
        self.requests.lock().keys.insert(key);
        self.requests.notify.notify_one();
    }

    /// Asks for every key to be listed again and reconciled as soon as possible.
    pub fn trigger_all(&self) {
        self.requests.lock().all = true;
        self.requests.notify.notify_one();
    }
}

/// Triggers waiting for the controller task, shared with every [`Handle`].
struct Requests<K> {
    pending: Mutex<Pending<K>>,
    notify: Notify,
}

struct Pending<K> {
    keys: HashSet<K>,
    all: bool,
}

impl<K> Requests<K> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending<K>> {
        // The critical sections only insert into a set; a panic there leaves it consistent.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What a `keys()` task returns.
type Listed<R> = Result<Vec<<R as Reconciler>::Key>, <R as Reconciler>::Error>;

/// What a reconcile task returns.
struct Reconciled<E> {
    steps_applied: usize,
    result: Result<Action, E>,
}

/// A reconcile task that has been spawned and not yet joined.
struct InFlight<K> {
    key: K,
    started: Timestamp,
    since: Instant,
}

/// The controller task's state.
struct Runner<R: Reconciler> {
    reconciler: Arc<R>,
    context: Arc<R::Context>,
    spec: watch::Receiver<Arc<R::Spec>>,
    concurrency: usize,
    on_report: Option<ReportFn>,
    on_listed: Option<ListedFn>,
    clock: Clock,
    shutdown: CancellationToken,
    scheduler: Scheduler<R::Key>,
    failures: HashMap<R::Key, u32>,
    tasks: JoinSet<Reconciled<R::Error>>,
    in_flight: HashMap<Id, InFlight<R::Key>>,
    listing: Option<JoinHandle<Listed<R>>>,
    /// Set when every key should be listed again; a listing already running is not restarted,
    /// so this stays set and a new one starts after it (the spec may have changed meanwhile).
    relist: bool,
}

impl<R: Reconciler> Runner<R> {
    fn start_listing(&mut self) {
        if !self.relist || self.listing.is_some() {
            return;
        }
        self.relist = false;
        let reconciler = Arc::clone(&self.reconciler);
        let context = Arc::clone(&self.context);
        let spec = Arc::clone(&self.spec.borrow());
        let span = info_span!("keys", loop = R::NAME);
        self.listing = Some(tokio::spawn(
            async move { reconciler.keys(&spec, &context).await }.instrument(span),
        ));
    }

    fn finish_listing(&mut self, listed: Result<Listed<R>, JoinError>) {
        self.listing = None;
        match listed {
            Ok(Ok(keys)) => {
                debug!(loop = R::NAME, keys = keys.len(), "listed keys");
                if let Some(listed) = &self.on_listed {
                    listed(keys.len());
                }
                let now = Instant::now();
                for key in keys {
                    self.scheduler.schedule(key, now);
                }
            }
            Ok(Err(err)) => warn!(
                loop = R::NAME,
                error = %error_chain(&err),
                "listing keys failed, retrying at the next resync"
            ),
            Err(err) => error!(
                loop = R::NAME,
                error = %err,
                "listing keys panicked, retrying at the next resync"
            ),
        }
    }

    fn take_requests(&mut self, requests: &Requests<R::Key>) {
        let (keys, all) = {
            let mut pending = requests.lock();
            (
                mem::take(&mut pending.keys),
                mem::replace(&mut pending.all, false),
            )
        };
        let now = Instant::now();
        for key in keys {
            self.scheduler.schedule(key, now);
        }
        self.relist |= all;
    }

    fn start_due(&mut self) {
        let now = Instant::now();
        while self.tasks.len() < self.concurrency {
            let Some(key) = self.scheduler.pop_due(now) else {
                break;
            };
            let started = self.clock.now();
            let span = info_span!("reconcile", loop = R::NAME, key = %key);
            let task = reconcile(
                Arc::clone(&self.reconciler),
                Arc::clone(&self.context),
                Arc::clone(&self.spec.borrow()),
                key.clone(),
                started,
                self.shutdown.clone(),
            );
            let id = self.tasks.spawn(task.instrument(span)).id();
            let since = Instant::now();
            self.in_flight.insert(
                id,
                InFlight {
                    key,
                    started,
                    since,
                },
            );
        }
    }

    /// Returns when the next queued key is due, if a slot is free to run it.
    fn next_wake(&self) -> Option<Instant> {
        if self.tasks.len() < self.concurrency {
            self.scheduler.next_due()
        } else {
            None
        }
    }

    fn finish(&mut self, joined: Result<(Id, Reconciled<R::Error>), JoinError>) {
        let (id, reconciled) = match joined {
            Ok((id, reconciled)) => (id, Ok(reconciled)),
            Err(err) => (err.id(), Err(err)),
        };
        let Some(InFlight {
            key,
            started,
            since,
        }) = self.in_flight.remove(&id)
        else {
            // Every spawned task is recorded before the loop can join it.
            error!(loop = R::NAME, "joined a reconcile that was never started");
            return;
        };
        let span = info_span!("reconcile", loop = R::NAME, key = %key);
        let _entered = span.enter();
        let mut storage_trouble = false;
        let (steps_applied, action, outcome) = match reconciled {
            Ok(Reconciled {
                steps_applied,
                result: Ok(action),
            }) => {
                self.failures.remove(&key);
                debug!(steps_applied, then = %action, "reconciled");
                (steps_applied, action, Ok(()))
            }
            Ok(Reconciled {
                steps_applied,
                result: Err(err),
            }) => {
                let failures = self.count_failure(&key);
                let action = R::error_policy(&err, failures);
                let message = error_chain(&err);
                storage_trouble = crate::is_storage_trouble(&err);
                warn!(
                    loop = R::NAME,
                    key = %key,
                    error = %message,
                    failures,
                    then = %action,
                    "reconcile failed"
                );
                (steps_applied, action, Err(message))
            }
            Err(err) => {
                let failures = self.count_failure(&key);
                let action = default_backoff(failures);
                let message = format!("reconcile panicked: {err}");
                error!(loop = R::NAME, key = %key, error = %message, failures, then = %action, "reconcile failed");
                (0, action, Err(message))
            }
        };
        let now = Instant::now();
        let next = self
            .scheduler
            .finish(&key, action.requeue_after().map(|d| now + d));
        if let Some(report) = &self.on_report {
            report(&RunReport {
                loop_name: R::NAME,
                key: key.to_string(),
                started,
                duration: now.saturating_duration_since(since),
                outcome,
                steps_applied,
                storage_trouble,
                failures: self.failures.get(&key).copied().unwrap_or(0),
                next_run: next.map(|at| at.saturating_duration_since(now)),
            });
        }
    }

    fn count_failure(&mut self, key: &R::Key) -> u32 {
        let failures = self.failures.entry(key.clone()).or_insert(0);
        *failures = failures.saturating_add(1);
        *failures
    }

    /// Waits for in-flight reconciles after shutdown, reporting each.
    async fn drain(mut self) {
        if let Some(listing) = self.listing.take() {
            listing.abort();
        }
        if !self.tasks.is_empty() {
            info!(
                loop = R::NAME,
                in_flight = self.tasks.len(),
                "shutting down, waiting for in-flight reconciles"
            );
        }
        while let Some(joined) = self.tasks.join_next_with_id().await {
            self.finish(joined);
        }
    }
}

/// Awaits the listing task, or forever when there is none (the `select!` guard disables it).
async fn wait<T>(listing: &mut Option<JoinHandle<T>>) -> Result<T, JoinError> {
    match listing {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}

/// One reconcile: observe, plan, then apply the steps in order until one fails.
async fn reconcile<R: Reconciler>(
    reconciler: Arc<R>,
    context: Arc<R::Context>,
    spec: Arc<R::Spec>,
    key: R::Key,
    now: Timestamp,
    shutdown: CancellationToken,
) -> Reconciled<R::Error> {
    let observed = match reconciler.observe(&key, &spec, &context).await {
        Ok(observed) => observed,
        Err(err) => {
            return Reconciled {
                steps_applied: 0,
                result: Err(err),
            };
        }
    };
    let Plan { steps, then } = R::plan(&key, &spec, &observed, now);
    // Observed state can be large (thousands of jobs): only at trace level.
    trace!(?observed, "observed");
    debug!(steps = steps.len(), then = %then, "planned");
    drop(observed);
    let steps = R::coalesce(steps);
    let planned = steps.len();
    let mut steps_applied = 0;
    for step in steps {
        if shutdown.is_cancelled() {
            info!(
                skipped = planned - steps_applied,
                "shutting down, leaving the remaining steps to the next start"
            );
            break;
        }
        debug!(?step, "applying step");
        if let Err(err) = reconciler.apply(&key, step, &context).await {
            return Reconciled {
                steps_applied,
                result: Err(err),
            };
        }
        steps_applied += 1;
    }
    Reconciled {
        steps_applied,
        result: Ok(then),
    }
}

/// Returns `err` followed by its sources, `outer: inner: root`.
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
