//! Prometheus metrics: the registry the daemon records into ([`Metrics`]), the state counts read
//! from the database at scrape time ([`StatusDb::state_counts`]) and the readiness of the loops.
//!
//! Recording is cheap and synchronous (atomics behind `prometheus-client` families), so loops,
//! the controller's report callback and the webhook intake call it inline. Gauges that describe
//! the database (evaluations, jobs and builds by state, queue depth) are not kept in memory:
//! they are counted with one `GROUP BY` per table when `/metrics` is scraped, so they can never
//! drift from the rows.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use reconix_spec::{ForgeKind, Timestamp};

use crate::error::{QueryExt, Result};
use crate::row::{get, non_negative, parse};
use crate::{BuildState, BuilderKind, EvaluationState, JobState, LoopHealth, StatusDb};

/// The `Content-Type` of [`Metrics::encode`]'s output (Prometheus negotiates it by default).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Bucket bounds of build durations, in seconds: a second to four hours.
const BUILD_BUCKETS: [f64; 13] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0,
];
/// Bucket bounds of one reconcile, in seconds: a millisecond (a no-op plan) to five minutes (an
/// evaluation of a large flake).
const RECONCILE_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0,
];

fn build_histogram() -> Histogram {
    Histogram::new(BUILD_BUCKETS)
}

fn reconcile_histogram() -> Histogram {
    Histogram::new(RECONCILE_BUCKETS)
}

/// A histogram family whose members share one bucket layout.
type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoopLabels {
    r#loop: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    builder: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

/// Where the daemon's time around one build attempt goes (`reconix_build_phase_duration_seconds`):
/// the cost report of `reconix-bench --only build` reads these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildPhase {
    /// Recording the start (the build row, its log, its jobs `building`) before Nix is asked.
    Start,
    /// The build itself, as Nix runs it (locally or on an agent), outputs copied back.
    Build,
    /// Reading what the outputs say in `nix-support/` (products, failed-with-output).
    Outputs,
    /// Recording the end (the build row, its jobs, its outputs).
    Record,
    /// Measuring the outputs' closure size, after the build has left the running set.
    Closure,
}

impl BuildPhase {
    /// Returns the phase's label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Build => "build",
            Self::Outputs => "outputs",
            Self::Record => "record",
            Self::Closure => "closure",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ForgeCallLabels {
    forge: String,
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ForgeLabels {
    forge: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    forge: String,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: &'static str,
}

/// How one call to a forge's REST API ended, as the `outcome` label of
/// `reconix_forge_api_calls_total` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForgeCallOutcome {
    /// The forge answered with success.
    Ok,
    /// The forge rejected the token (401).
    Unauthorized,
    /// The forge rate-limited the call.
    RateLimited,
    /// Any other failure: 404, 5xx after retries, a refused body, transport errors.
    Error,
}

impl ForgeCallOutcome {
    /// Returns the label value: `ok`, `unauthorized`, `rate-limited` or `error`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Unauthorized => "unauthorized",
            Self::RateLimited => "rate-limited",
            Self::Error => "error",
        }
    }
}

/// What a registered loop has shown of itself since the process started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listing {
    /// No listing finished yet, or the last one found keys: ready once a run is recorded.
    Pending,
    /// A listing found nothing to reconcile, so no run will be recorded: ready as it is.
    Empty,
}

/// The daemon's metrics registry; cheap to clone, every clone records into the same registry.
///
/// `Metrics::default()` is a working registry too, so code that is not wired to the daemon's
/// (tests, `reconix plan`) records into one nobody scrapes.
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Inner>,
}

/// How long after the last full-disk error the alarm stays up.
pub const STORAGE_ALARM: std::time::Duration = std::time::Duration::from_secs(60);

struct Inner {
    registry: Registry,
    /// When this registry was created: loop health rows older than this are from an earlier run
    /// of the daemon and do not make it ready.
    started: Timestamp,
    builds: Histograms<BuildLabels>,
    build_phases: Histograms<PhaseLabels>,
    reconciles: Family<LoopLabels, Counter>,
    errors: Family<LoopLabels, Counter>,
    latency: Histograms<LoopLabels>,
    keys: Family<LoopLabels, Gauge>,
    forge_calls: Family<ForgeCallLabels, Counter>,
    rate_limits: Family<ForgeLabels, Counter>,
    rate_limit_seconds: Family<ForgeLabels, Counter<f64, AtomicU64>>,
    deliveries: Family<DeliveryLabels, Counter>,
    /// Times work met a full or failing state directory.
    storage_full: Counter,
    /// When that last happened (ms since the epoch; 0: never).
    storage_full_at: std::sync::atomic::AtomicI64,
    loops: Mutex<BTreeMap<&'static str, Listing>>,
}

impl Default for Inner {
    fn default() -> Self {
        let builds = Histograms::<BuildLabels>::new_with_constructor(build_histogram);
        let build_phases = Histograms::<PhaseLabels>::new_with_constructor(reconcile_histogram);
        let reconciles = Family::<LoopLabels, Counter>::default();
        let errors = Family::<LoopLabels, Counter>::default();
        let latency = Histograms::<LoopLabels>::new_with_constructor(reconcile_histogram);
        let keys = Family::<LoopLabels, Gauge>::default();
        let forge_calls = Family::<ForgeCallLabels, Counter>::default();
        let rate_limits = Family::<ForgeLabels, Counter>::default();
        let rate_limit_seconds = Family::<ForgeLabels, Counter<f64, AtomicU64>>::default();
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        let storage_full = Counter::default();
        let mut registry = Registry::default();
        registry.register(
            "reconix_build_duration_seconds",
            "Duration of build attempts by builder kind (local, agent) and result",
            builds.clone(),
        );
        registry.register(
            "reconix_build_phase_duration_seconds",
            "Time the daemon spends in each phase of a build attempt (start, build, outputs, record, closure)",
            build_phases.clone(),
        );
        registry.register(
            "reconix_loop_reconciles",
            "Reconciles finished by each loop",
            reconciles.clone(),
        );
        registry.register(
            "reconix_loop_errors",
            "Reconciles of each loop that ended in an error",
            errors.clone(),
        );
        registry.register(
            "reconix_loop_reconcile_duration_seconds",
            "Duration of one reconcile (observe, plan, apply) by loop",
            latency.clone(),
        );
        registry.register(
            "reconix_loop_keys",
            "Keys each loop found at its last listing",
            keys.clone(),
        );
        registry.register(
            "reconix_forge_api_calls",
            "Calls to forge REST APIs by forge, forge kind and outcome",
            forge_calls.clone(),
        );
        registry.register(
            "reconix_forge_rate_limit_waits",
            "Times a forge rate-limited reconix and made it wait",
            rate_limits.clone(),
        );
        registry.register(
            "reconix_forge_rate_limit_wait_seconds",
            "Seconds forges asked reconix to wait after rate-limiting it",
            rate_limit_seconds.clone(),
        );
        registry.register(
            "reconix_webhook_deliveries",
            "Webhook deliveries received by forge and intake result",
            deliveries.clone(),
        );
        registry.register(
            "reconix_storage_full_errors",
            "Times a build, a loop or the intake met a full or failing state directory",
            storage_full.clone(),
        );
        Self {
            registry,
            started: Timestamp::now(),
            builds,
            build_phases,
            reconciles,
            errors,
            latency,
            keys,
            forge_calls,
            rate_limits,
            rate_limit_seconds,
            deliveries,
            storage_full,
            storage_full_at: std::sync::atomic::AtomicI64::new(0),
            loops: Mutex::default(),
        }
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("started", &self.inner.started)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// Creates an empty registry; readiness counts loop runs recorded from now on.
    pub fn new() -> Self {
        Self::default()
    }

    fn loops(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, Listing>> {
        // The critical sections only insert into a map; a panic there leaves it consistent.
        self.inner
            .loops
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that work met a full or failing state directory at `now` (a build that now waits,
    /// a loop's failed write, a delivery answered 503).
    pub fn record_storage_full(&self, now: Timestamp) {
        self.inner.storage_full.inc();
        self.inner
            .storage_full_at
            .fetch_max(now.0, std::sync::atomic::Ordering::Relaxed);
    }

    /// Returns when work last met a full or failing state directory, if that was less than
    /// [`STORAGE_ALARM`] before `now`: the pages and `reconix status` then say so first.
    pub fn storage_full_since(&self, now: Timestamp) -> Option<Timestamp> {
        let at = self
            .inner
            .storage_full_at
            .load(std::sync::atomic::Ordering::Relaxed);
        (at > 0 && now.since(Timestamp(at)) < STORAGE_ALARM).then_some(Timestamp(at))
    }

    /// Declares loop `name`: its counters appear (at zero) before its first run, and `/readyz`
    /// waits for it (see [`Metrics::pending_loops`]).
    pub fn register_loop(&self, name: &'static str) {
        let labels = LoopLabels { r#loop: name };
        // Creating the members is the point: the guards they return are dropped at once.
        drop(self.inner.reconciles.get_or_create(&labels));
        drop(self.inner.errors.get_or_create(&labels));
        drop(self.inner.latency.get_or_create(&labels));
        self.loops().entry(name).or_insert(Listing::Pending);
    }

    /// Records that loop `name` listed `keys` keys to reconcile. A loop that finds none is
    /// ready without a run.
    pub fn record_listing(&self, name: &'static str, keys: usize) {
        let labels = LoopLabels { r#loop: name };
        self.inner
            .keys
            .get_or_create(&labels)
            .set(i64::try_from(keys).unwrap_or(i64::MAX));
        if keys == 0 {
            self.loops().insert(name, Listing::Empty);
        }
    }

    /// Records one finished reconcile of loop `name` that took `duration`; `outcome` is the
    /// error message on failure.
    pub fn record_reconcile(
        &self,
        name: &'static str,
        duration: Duration,
        outcome: Result<(), &str>,
    ) {
        let labels = LoopLabels { r#loop: name };
        self.inner.reconciles.get_or_create(&labels).inc();
        if outcome.is_err() {
            self.inner.errors.get_or_create(&labels).inc();
        }
        self.inner
            .latency
            .get_or_create(&labels)
            .observe(duration.as_secs_f64());
    }

    /// Records a build attempt on a `builder` of that kind that took `duration` and ended in
    /// `result`; `None` when the builder failed (not the build) and the attempt was requeued.
    pub fn record_build(
        &self,
        builder: BuilderKind,
        result: Option<BuildState>,
        duration: Duration,
    ) {
        let labels = BuildLabels {
            builder: builder.as_str(),
            result: result.map_or("requeued", BuildState::as_str),
        };
        self.inner
            .builds
            .get_or_create(&labels)
            .observe(duration.as_secs_f64());
    }

    /// Records that one build attempt spent `duration` in `phase`.
    pub fn record_build_phase(&self, phase: BuildPhase, duration: Duration) {
        let labels = PhaseLabels {
            phase: phase.as_str(),
        };
        self.inner
            .build_phases
            .get_or_create(&labels)
            .observe(duration.as_secs_f64());
    }

    /// Records one call to the REST API of `forge` (its name in the spec), of that `kind`.
    pub fn record_forge_call(&self, forge: &str, kind: ForgeKind, outcome: ForgeCallOutcome) {
        let labels = ForgeCallLabels {
            forge: forge.to_owned(),
            kind: kind.as_str(),
            outcome: outcome.as_str(),
        };
        self.inner.forge_calls.get_or_create(&labels).inc();
    }

    /// Records that `forge` rate-limited reconix and asked it to wait `wait`.
    pub fn record_rate_limit(&self, forge: &str, wait: Duration) {
        let labels = ForgeLabels {
            forge: forge.to_owned(),
        };
        self.inner.rate_limits.get_or_create(&labels).inc();
        self.inner
            .rate_limit_seconds
            .get_or_create(&labels)
            .inc_by(wait.as_secs_f64());
    }

    /// Records one webhook delivery and what the intake answered (`new-head`, `duplicate`,
    /// `unauthorized`, …). `forge` is `None` when the URL named no forge of the spec: the path
    /// comes from the sender and must not grow the label set.
    pub fn record_webhook_delivery(&self, forge: Option<&str>, result: &'static str) {
        let labels = DeliveryLabels {
            forge: forge.unwrap_or_default().to_owned(),
            result,
        };
        self.inner.deliveries.get_or_create(&labels).inc();
    }

    /// Returns the registered loops that are not ready: no run of theirs is in `healths` since
    /// this registry was created, and their last listing was not empty. Empty once every loop
    /// has run (or has nothing to run).
    pub fn pending_loops(&self, healths: &[LoopHealth]) -> Vec<&'static str> {
        let started = self.inner.started;
        self.loops()
            .iter()
            .filter(|&(name, listing)| {
                *listing == Listing::Pending
                    && !healths
                        .iter()
                        .any(|h| h.name == *name && h.last_run_at.is_some_and(|t| t >= started))
            })
            .map(|(name, _)| *name)
            .collect()
    }

    /// Returns the whole exposition in the OpenMetrics text format: everything recorded, then
    /// the database gauges of `counts`, then `# EOF`.
    ///
    /// # Errors
    /// Returns [`fmt::Error`] when a metric cannot be encoded (it is written to a `String`, so
    /// only an encoder bug can cause one).
    pub fn encode(&self, counts: &StateCounts) -> Result<String, fmt::Error> {
        let mut out = String::new();
        encode_registry(&mut out, &self.inner.registry)?;
        encode_registry(&mut out, &counts.registry())?;
        encode_eof(&mut out)?;
        Ok(out)
    }
}

/// How many evaluations, jobs and builds are in each state; every state is listed, with 0 when
/// no row is in it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateCounts {
    /// Evaluations by state.
    pub evaluations: Vec<(EvaluationState, u64)>,
    /// Jobs by state.
    pub jobs: Vec<(JobState, u64)>,
    /// Builds (one per drv) by state.
    pub builds: Vec<(BuildState, u64)>,
}

impl StateCounts {
    /// Returns how many jobs are in `state`.
    pub fn jobs_in(&self, state: JobState) -> u64 {
        count_of(&self.jobs, state)
    }

    /// Returns how many builds are in `state`.
    pub fn builds_in(&self, state: BuildState) -> u64 {
        count_of(&self.builds, state)
    }

    /// Returns a registry holding the counts as gauges, built for one scrape.
    fn registry(&self) -> Registry {
        let mut registry = Registry::default();
        let gauges = |counts: Vec<(&'static str, u64)>| {
            let family = Family::<StateLabels, Gauge>::default();
            for (state, n) in counts {
                family
                    .get_or_create(&StateLabels { state })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            family
        };
        registry.register(
            "reconix_evaluations",
            "Evaluations in the database by state",
            gauges(labelled(&self.evaluations, EvaluationState::as_str)),
        );
        registry.register(
            "reconix_jobs",
            "Jobs in the database by state",
            gauges(labelled(&self.jobs, JobState::as_str)),
        );
        registry.register(
            "reconix_builds",
            "Builds in the database by state",
            gauges(labelled(&self.builds, BuildState::as_str)),
        );
        let queue = Family::<QueueLabels, Gauge>::default();
        for (name, n) in [
            ("jobs", self.jobs_in(JobState::Queued)),
            ("builds", self.builds_in(BuildState::Queued)),
        ] {
            queue
                .get_or_create(&QueueLabels { queue: name })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        registry.register(
            "reconix_queue_depth",
            "Queued jobs (waiting for dependencies or a builder) and queued builds",
            queue,
        );
        registry
    }
}

fn count_of<S: PartialEq + Copy>(counts: &[(S, u64)], state: S) -> u64 {
    counts
        .iter()
        .find(|(s, _)| *s == state)
        .map_or(0, |(_, n)| *n)
}

fn labelled<S: Copy>(counts: &[(S, u64)], name: fn(S) -> &'static str) -> Vec<(&'static str, u64)> {
    counts.iter().map(|&(s, n)| (name(s), n)).collect()
}

impl StatusDb {
    /// Counts evaluations, jobs and builds by state: one `GROUP BY` over each table's state
    /// index, cheap enough for every scrape.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails and [`crate::Error::Corrupt`] for an
    /// unknown state.
    pub fn state_counts(&self) -> Result<StateCounts> {
        Ok(StateCounts {
            evaluations: self.count_by_state(
                "evaluations",
                "SELECT state, count(*) FROM evaluations GROUP BY state",
                EvaluationState::ALL,
            )?,
            jobs: self.count_by_state(
                "jobs",
                "SELECT state, count(*) FROM jobs GROUP BY state",
                JobState::ALL,
            )?,
            builds: self.count_by_state(
                "builds",
                "SELECT state, count(*) FROM builds GROUP BY state",
                BuildState::ALL,
            )?,
        })
    }

    fn count_by_state<S>(
        &self,
        table: &'static str,
        sql: &'static str,
        all: &[S],
    ) -> Result<Vec<(S, u64)>>
    where
        S: FromStr + Copy + PartialEq,
        S::Err: fmt::Display,
    {
        const OP: &str = "state_counts";
        let mut counts: Vec<(S, u64)> = all.iter().map(|&s| (s, 0)).collect();
        let mut stmt = self.conn.prepare_cached(sql).op(OP)?;
        let mut rows = stmt.query([]).op(OP)?;
        while let Some(row) = rows.next().op(OP)? {
            let state: S = parse(table, "state", get(row, 0, OP)?)?;
            let n: u64 = non_negative(table, "count", get(row, 1, OP)?)?;
            if let Some(slot) = counts.iter_mut().find(|(s, _)| *s == state) {
                slot.1 = n;
            }
        }
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{T0, building_eval, drv, eval, job};
    use crate::{JobId, StatusDb};

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn state_counts_should_list_every_state_with_zeros() {
        let mut db = StatusDb::open_memory().unwrap();
        let counts = db.state_counts().unwrap();
        assert_eq!(counts.jobs.len(), JobState::ALL.len());
        assert!(counts.jobs.iter().all(|(_, n)| *n == 0));

        eval(&mut db, &"a".repeat(40));
        building_eval(
            &mut db,
            &"b".repeat(40),
            &[job(1, "x"), job(2, "y"), job(3, "z")],
        );
        db.set_job_state(JobId(1), JobState::Failed, Some("boom"), T0)
            .unwrap();
        db.upsert_build(&drv(2), None, BuildState::Queued, T0)
            .unwrap();
        let counts = db.state_counts().unwrap();
        assert_eq!(count_of(&counts.evaluations, EvaluationState::Queued), 1);
        assert_eq!(count_of(&counts.evaluations, EvaluationState::Building), 1);
        assert_eq!(counts.jobs_in(JobState::Queued), 2);
        assert_eq!(counts.jobs_in(JobState::Failed), 1);
        assert_eq!(counts.builds_in(BuildState::Queued), 1);
        assert_eq!(counts.builds_in(BuildState::Running), 0);
    }

    #[test]
    fn encode_should_expose_recorded_values_and_end_with_eof() {
        let m = Metrics::new();
        m.register_loop("gcroots");
        m.record_reconcile("builds", Duration::from_millis(20), Ok(()));
        m.record_reconcile("builds", Duration::from_secs(2), Err("boom"));
        m.record_build(
            BuilderKind::Local,
            Some(BuildState::Succeeded),
            Duration::from_secs(12),
        );
        m.record_build(BuilderKind::Agent, None, Duration::from_secs(3));
        m.record_build_phase(BuildPhase::Record, Duration::from_millis(250));
        m.record_build_phase(BuildPhase::Record, Duration::from_millis(250));
        m.record_forge_call("gh", ForgeKind::Github, ForgeCallOutcome::Ok);
        m.record_forge_call("gh", ForgeKind::Github, ForgeCallOutcome::Ok);
        m.record_forge_call("gh", ForgeKind::Github, ForgeCallOutcome::RateLimited);
        m.record_rate_limit("gh", Duration::from_secs(60));
        m.record_webhook_delivery(Some("gh"), "duplicate");
        m.record_webhook_delivery(None, "unknown-forge");
        let counts = StateCounts {
            jobs: vec![(JobState::Queued, 4), (JobState::Failed, 2)],
            ..StateCounts::default()
        };
        let text = m.encode(&counts).unwrap();
        for expected in [
            r#"reconix_loop_reconciles_total{loop="builds"} 2"#,
            r#"reconix_loop_errors_total{loop="builds"} 1"#,
            r#"reconix_loop_reconciles_total{loop="gcroots"} 0"#,
            r#"reconix_loop_reconcile_duration_seconds_count{loop="builds"} 2"#,
            r#"reconix_build_duration_seconds_sum{builder="local",result="succeeded"} 12.0"#,
            r#"reconix_build_duration_seconds_count{builder="agent",result="requeued"} 1"#,
            r#"reconix_build_phase_duration_seconds_sum{phase="record"} 0.5"#,
            r#"reconix_build_phase_duration_seconds_count{phase="record"} 2"#,
            r#"reconix_forge_api_calls_total{forge="gh",kind="github",outcome="ok"} 2"#,
            r#"reconix_forge_api_calls_total{forge="gh",kind="github",outcome="rate-limited"} 1"#,
            r#"reconix_forge_rate_limit_waits_total{forge="gh"} 1"#,
            r#"reconix_forge_rate_limit_wait_seconds_total{forge="gh"} 60.0"#,
            r#"reconix_webhook_deliveries_total{forge="gh",result="duplicate"} 1"#,
            r#"reconix_webhook_deliveries_total{forge="",result="unknown-forge"} 1"#,
            r#"reconix_jobs{state="failed"} 2"#,
            r#"reconix_queue_depth{queue="jobs"} 4"#,
            r#"reconix_queue_depth{queue="builds"} 0"#,
        ] {
            assert!(
                text.lines().any(|l| l == expected),
                "{expected} missing in:\n{text}"
            );
        }
        assert!(
            line(
                &text,
                r#"reconix_build_duration_seconds_bucket{le="15.0",builder="local",result="succeeded"}"#
            )
            .is_some_and(|l| l.ends_with(" 1")),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn clones_should_record_into_one_registry() {
        let m = Metrics::new();
        m.clone()
            .record_reconcile("heads", Duration::ZERO, Err("x"));
        let text = m.encode(&StateCounts::default()).unwrap();
        assert!(
            text.contains(r#"reconix_loop_errors_total{loop="heads"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn a_full_state_directory_should_raise_the_alarm_for_a_minute_and_count() {
        let m = Metrics::new();
        let t = Timestamp(1_000_000);
        assert_eq!(m.storage_full_since(t), None);
        m.record_storage_full(t);
        m.record_storage_full(Timestamp(t.0 - 5));
        assert_eq!(
            m.storage_full_since(t.plus(Duration::from_secs(59))),
            Some(t)
        );
        assert_eq!(m.storage_full_since(t.plus(STORAGE_ALARM)), None);
        let text = m.encode(&StateCounts::default()).unwrap();
        assert!(
            text.contains("reconix_storage_full_errors_total 2"),
            "{text}"
        );
    }

    fn health(name: &str, last_run_at: Option<Timestamp>) -> LoopHealth {
        LoopHealth {
            name: name.to_owned(),
            runs: 1,
            last_run_at,
            last_success_at: None,
            last_error: None,
            consecutive_failures: 0,
            next_run_at: None,
        }
    }

    #[test]
    fn loops_should_be_pending_until_they_run_or_find_nothing_to_do() {
        let m = Metrics::new();
        assert!(m.pending_loops(&[]).is_empty());
        for name in ["builds", "evaluations", "heads"] {
            m.register_loop(name);
        }
        // A row from an earlier run of the daemon does not count.
        let stale = [health("builds", Some(T0)), health("evaluations", None)];
        assert_eq!(
            m.pending_loops(&stale),
            vec!["builds", "evaluations", "heads"]
        );
        let now = Timestamp::now();
        m.record_listing("heads", 0);
        assert_eq!(
            m.pending_loops(&[health("builds", Some(now))]),
            vec!["evaluations"]
        );
        assert!(
            m.pending_loops(&[
                health("builds", Some(now)),
                health("evaluations", Some(now))
            ])
            .is_empty()
        );
    }
}
