//! `reconix-bench intake`: webhook intake throughput and latency.
//!
//! The real router (`reconix_web::serve`) runs on 127.0.0.1 with a file-backed status database
//! (`StatusDb::open(.., OpenMode::ReadWrite)`: WAL, `synchronous=NORMAL`, as the daemon opens
//! it) and one GitHub forge. The client sends N deliveries of GitHub's real `push` payload
//! (`forge/tests/fixtures/github/push.json`), each with its own delivery id and `after` sha and
//! signed again, over C keep-alive connections. Every delivery is therefore a new head: verify,
//! parse, one SQLite write transaction and one wake. All bodies and signatures are built before
//! the clock starts. The baseline is the same requests to an axum handler that only reads the
//! body and answers 202: what HTTP alone costs on this machine.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use reconix_spec::{Secret, Spec};
use reconix_status::{Checkpointer, OpenMode, Status, StatusDb};
use reconix_web::{AppState, Wake};
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};

/// GitHub's push example (octokit/webhooks.js), byte for byte.
const PUSH: &[u8] = include_bytes!("../../../../forge/tests/fixtures/github/push.json");
/// The `after` of [`PUSH`], replaced in every delivery.
const PUSH_AFTER: &str = "\"after\":\"0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c\"";
const SECRET: &str = "reconix bench webhook secret";
/// Deliveries sent before each measured run, untimed (connections, page cache, statements).
const WARMUP: usize = 1_000;

/// The targets the mission sets for the intake.
pub(crate) const TARGET_PER_SEC: f64 = 5_000.0;
pub(crate) const TARGET_P99_MS: f64 = 5.0;

/// Settings of the intake benchmark.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) deliveries: usize,
    pub(crate) concurrency: usize,
    pub(crate) runs: usize,
}

/// One measured run against one server.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    pub(crate) server: &'static str,
    pub(crate) run: usize,
    pub(crate) per_sec: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
}

impl Sample {
    fn new(
        server: &'static str,
        run: usize,
        elapsed: Duration,
        mut latencies: Vec<Duration>,
    ) -> Self {
        latencies.sort_unstable();
        let pct = |p: f64| {
            // Nearest rank.
            let rank = ((p / 100.0) * latencies.len() as f64).ceil() as usize;
            latencies
                .get(rank.saturating_sub(1))
                .map_or(f64::NAN, |d| super::ms(*d))
        };
        Self {
            server,
            run,
            per_sec: latencies.len() as f64 / elapsed.as_secs_f64(),
            p50_ms: pct(50.0),
            p99_ms: pct(99.0),
            max_ms: latencies.last().map_or(f64::NAN, |d| super::ms(*d)),
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "server": self.server, "run": self.run, "deliveries_per_s": self.per_sec,
            "p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "max_ms": self.max_ms,
        })
    }
}

/// What the benchmark produced.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) settings: Settings,
    pub(crate) samples: Vec<Sample>,
    pub(crate) parts: Parts,
}

/// One prepared delivery.
struct Delivery {
    id: String,
    signature: String,
    body: Bytes,
}

/// Builds `n` deliveries whose ids and `after` shas are unique to `batch`.
fn deliveries(batch: usize, n: usize) -> Result<Vec<Delivery>> {
    let text = std::str::from_utf8(PUSH).context("push.json is not UTF-8")?;
    ensure!(
        text.matches(PUSH_AFTER).count() == 1,
        "push.json no longer has exactly one {PUSH_AFTER}"
    );
    let secret = Secret::new(SECRET);
    Ok((0..n)
        .map(|i| {
            let sha = format!("{:08x}{:032x}", batch, i + 1);
            let body = text.replacen(PUSH_AFTER, &format!("\"after\":\"{sha}\""), 1);
            let signature = format!(
                "sha256={}",
                reconix_forge::verify::hmac_sha256_hex(&secret, body.as_bytes())
            );
            Delivery {
                id: format!("bench-{batch}-{i}"),
                signature,
                body: Bytes::from(body),
            }
        })
        .collect())
}

/// What one delivery costs in each step of the intake, measured alone on one thread (µs per
/// delivery): HMAC verification, parsing, and `record_delivery` on a file-backed database.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Parts {
    pub(crate) verify_us: f64,
    pub(crate) parse_us: f64,
    pub(crate) record_us: f64,
    /// The slowest 1 % of `record_delivery` calls start here (µs).
    pub(crate) record_p99_us: f64,
    /// The slowest `record_delivery` call (µs).
    pub(crate) record_max_us: f64,
    /// `record_delivery` calls over 1 ms (SQLite's WAL auto-checkpoint runs inside a commit).
    pub(crate) record_over_1ms: usize,
}

/// Measures [`Parts`] over `n` deliveries.
fn parts(dir: &std::path::Path, n: usize) -> Result<Parts> {
    use reconix_status::{DeliveryEffect, NewDelivery};
    let list = deliveries(0, n)?;
    let secret = Secret::new(SECRET);
    let kind = reconix_spec::ForgeKind::Github;
    let headers: Vec<reconix_forge::Headers> = list
        .iter()
        .map(|d| {
            reconix_forge::Headers::new()
                .with("X-GitHub-Event", "push")
                .with("X-GitHub-Delivery", d.id.clone())
                .with("X-Hub-Signature-256", d.signature.clone())
        })
        .collect();
    let per = |t: Instant| t.elapsed().as_secs_f64() * 1e6 / n as f64;
    let t = Instant::now();
    for (d, h) in list.iter().zip(&headers) {
        reconix_forge::verify(kind, h, &d.body, &secret)?;
    }
    let verify_us = per(t);
    let t = Instant::now();
    let mut events = Vec::with_capacity(n);
    for (d, h) in list.iter().zip(&headers) {
        events.push(reconix_forge::parse(kind, h, &d.body)?);
    }
    let parse_us = per(t);
    let mut db = StatusDb::open(dir.join("parts.db"), OpenMode::ReadWrite)?;
    let forge = reconix_spec::ForgeName::new("github")?;
    let repo = reconix_spec::RepoKey::parse("github/baxterthehacker/public-repo")?;
    let rows: Vec<(NewDelivery, DeliveryEffect)> = events
        .into_iter()
        .map(|e| {
            let reconix_forge::Payload::Push(p) = e.payload else {
                anyhow::bail!("not a push");
            };
            Ok((
                NewDelivery {
                    forge: forge.clone(),
                    delivery_id: e.delivery,
                    event: "push",
                    repo: e.repo,
                    git_ref: Some(p.git_ref.clone()),
                    sha: Some(p.after.clone()),
                },
                DeliveryEffect::Head {
                    repo: repo.clone(),
                    git_ref: p.git_ref,
                    sha: Some(p.after),
                },
            ))
        })
        .collect::<Result<_>>()?;
    let t = Instant::now();
    let mut each = Vec::with_capacity(n);
    for (d, e) in &rows {
        let t = Instant::now();
        db.record_delivery(d, e, reconix_spec::Timestamp::now())?;
        each.push(t.elapsed());
    }
    let record_us = per(t);
    each.sort_unstable();
    let us = |d: Option<&Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e6);
    Ok(Parts {
        verify_us,
        parse_us,
        record_us,
        record_p99_us: us(each.get(n * 99 / 100)),
        record_max_us: us(each.last()),
        record_over_1ms: each.iter().filter(|d| d.as_micros() > 1000).count(),
    })
}

/// A server under test, on its own runtime (its own threads, as the daemon would be).
struct Server {
    url: String,
    shutdown: Option<oneshot::Sender<()>>,
    runtime: tokio::runtime::Runtime,
    /// The intake's status handle and wake count; `None` for the baseline.
    intake: Option<(Status, Arc<AtomicUsize>)>,
}

impl Server {
    fn start(
        router: Option<axum::Router>,
        intake: Option<(AppState, Arc<AtomicUsize>)>,
    ) -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("bench-server")
            .build()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = rx.await;
        };
        let status = intake
            .as_ref()
            .map(|(st, wakes)| (st.status.clone(), Arc::clone(wakes)));
        match (router, intake) {
            (_, Some((state, _))) => {
                runtime.spawn(reconix_web::serve(listener, state, shutdown));
            }
            (Some(router), None) => {
                runtime.spawn(async move {
                    axum::serve(listener, router)
                        .with_graceful_shutdown(shutdown)
                        .await
                });
            }
            (None, None) => anyhow::bail!("no server to start"),
        }
        Ok(Self {
            url: format!("http://{addr}/webhooks/github"),
            shutdown: Some(tx),
            runtime,
            intake: status,
        })
    }

    fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.runtime.shutdown_timeout(Duration::from_secs(5));
    }
}

/// The baseline: read the body, answer 202.
fn baseline_router() -> axum::Router {
    axum::Router::new().route(
        "/webhooks/{forge}",
        axum::routing::post(|body: Bytes| async move {
            drop(body);
            StatusCode::ACCEPTED
        })
        .layer(DefaultBodyLimit::max(32 << 20)),
    )
}

/// Starts the real intake with a file-backed database in `dir`.
fn intake_server(dir: &std::path::Path) -> Result<Server> {
    let secret_file = dir.join("github-webhook-secret");
    std::fs::write(&secret_file, format!("{SECRET}\n"))?;
    let spec = format!(
        "state-dir: {state}\nexternal-url: https://ci.example.org\nforges:\n  github:\n    kind: github\n    token-file: {token}\n    webhook-secret-file: {secret}\n    repos:\n      baxterthehacker/public-repo:\n        branches: [changes]\n",
        state = dir.display(),
        token = dir.join("github-token").display(),
        secret = secret_file.display(),
    );
    let spec: Spec = reconix_spec::parse(&spec, &dir.join("spec.yaml"))
        .map_err(|e| anyhow::anyhow!("bench spec rejected: {e}"))?;
    let db_path = dir.join("status.db");
    let db = StatusDb::open(&db_path, OpenMode::ReadWrite)?;
    let (_spec_tx, spec_rx) = watch::channel(Arc::new(spec));
    let wakes = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&wakes);
    let state = AppState::new(Status::new(db)).with_intake(
        spec_rx,
        Arc::new(move |w: Wake| {
            if matches!(w, Wake::Head(_)) {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }),
    );
    let server = Server::start(None, Some((state, wakes)))?;
    // As the daemon does: the WAL is checkpointed from a second connection every second.
    let checkpointer = Checkpointer::open(&db_path)?;
    server
        .runtime
        .spawn(checkpointer.run_until(Duration::from_secs(1), std::future::pending()));
    Ok(server)
}

/// Sends every delivery over `concurrency` connections; returns the wall time and each
/// request's latency (send to the whole answer read).
async fn blast(
    url: &str,
    concurrency: usize,
    deliveries: Arc<Vec<Delivery>>,
    expect: StatusCode,
) -> Result<(Duration, Vec<Duration>)> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(concurrency)
        .tcp_nodelay(true)
        .build()?;
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (client, next, deliveries, url) = (
            client.clone(),
            Arc::clone(&next),
            Arc::clone(&deliveries),
            url.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(deliveries.len() / concurrency + 1);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(d) = deliveries.get(i) else { break };
                let t0 = Instant::now();
                let resp = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("X-GitHub-Event", "push")
                    .header("X-GitHub-Delivery", &d.id)
                    .header("X-Hub-Signature-256", &d.signature)
                    .body(d.body.clone())
                    .send()
                    .await?;
                let status = resp.status();
                let body = resp.bytes().await?;
                latencies.push(t0.elapsed());
                ensure!(
                    status.as_u16() == expect.as_u16(),
                    "delivery {} answered {status}: {}",
                    d.id,
                    String::from_utf8_lossy(&body)
                );
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Vec::with_capacity(deliveries.len());
    for task in tasks {
        all.extend(task.await??);
    }
    Ok((start.elapsed(), all))
}

/// Runs the benchmark: for each run, the baseline and the intake (alternating which goes
/// first), each after an untimed warm-up.
pub(crate) fn run(settings: Settings) -> Result<Report> {
    // One client thread (the forge's side, as one sender process), so that the client does not
    // add two more busy threads to the server's two workers on a two-core machine.
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let dir = tempfile::Builder::new()
        .prefix("reconix-bench-intake")
        .tempdir()?;
    let parts = parts(dir.path(), settings.deliveries)?;
    eprintln!("[bench] intake: one thread, per delivery: {parts:?}");
    let intake = intake_server(dir.path())?;
    let baseline = Server::start(Some(baseline_router()), None)?;
    let mut samples = Vec::new();
    let mut batch = 0;
    let mut expected_heads = 0;
    for run in 1..=settings.runs {
        let order: [&'static str; 2] = if run % 2 == 1 {
            ["baseline", "intake"]
        } else {
            ["intake", "baseline"]
        };
        for server in order {
            let target = if server == "intake" {
                &intake
            } else {
                &baseline
            };
            batch += 1;
            let warmup = Arc::new(deliveries(batch, WARMUP)?);
            batch += 1;
            let measured = Arc::new(deliveries(batch, settings.deliveries)?);
            eprintln!(
                "[bench] intake: run {run}, {server}: {} deliveries over {} connections",
                settings.deliveries, settings.concurrency
            );
            client.block_on(blast(
                &target.url,
                settings.concurrency,
                warmup,
                StatusCode::ACCEPTED,
            ))?;
            let (elapsed, latencies) = client.block_on(blast(
                &target.url,
                settings.concurrency,
                measured,
                StatusCode::ACCEPTED,
            ))?;
            ensure!(latencies.len() == settings.deliveries, "lost answers");
            let name = if server == "intake" {
                expected_heads += WARMUP + settings.deliveries;
                "reconix intake"
            } else {
                "baseline (axum, read body, 202)"
            };
            let sample = Sample::new(name, run, elapsed, latencies);
            eprintln!(
                "[bench]   {:.0} deliveries/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                sample.per_sec, sample.p50_ms, sample.p99_ms, sample.max_ms
            );
            samples.push(sample);
        }
    }
    // Every delivery must have been recorded as a new head and woken the evaluations loop.
    if let Some((status, wakes)) = &intake.intake {
        let counts = intake
            .runtime
            .block_on(status.call(|db| db.delivery_counts()))?;
        ensure!(
            counts == [("new-head".to_owned(), expected_heads as u64)],
            "expected {expected_heads} new heads in the database, found {counts:?}"
        );
        let woken = wakes.load(Ordering::Relaxed);
        ensure!(
            woken == expected_heads,
            "expected {expected_heads} wakes, got {woken}"
        );
    }
    intake.stop();
    baseline.stop();
    Ok(Report {
        settings,
        samples,
        parts,
    })
}

/// Returns the median of one server's `field` over its runs.
fn median_of(samples: &[Sample], server: &str, field: impl Fn(&Sample) -> f64) -> f64 {
    let v: Vec<f64> = samples
        .iter()
        .filter(|s| s.server == server)
        .map(field)
        .collect();
    super::report::median(&v)
}

impl Report {
    /// Renders the results as Markdown: every run, then the verdict on the medians.
    pub(crate) fn text(&self) -> String {
        use std::fmt::Write as _;
        let s = self.settings;
        let mut out = format!(
            "## Webhook intake\n\n{} signed GitHub push deliveries per run ({} bytes each, distinct ids and `after` shas, \
             each preceded by {WARMUP} untimed), {} concurrent keep-alive connections, {} runs.\n\n\
             | server | run | deliveries/s | p50 | p99 | max |\n|---|---|---|---|---|---|\n",
            s.deliveries,
            PUSH.len(),
            s.concurrency,
            s.runs
        );
        for x in &self.samples {
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms |",
                x.server, x.run, x.per_sec, x.p50_ms, x.p99_ms, x.max_ms
            );
        }
        let rate = median_of(&self.samples, "reconix intake", |x| x.per_sec);
        let p99 = median_of(&self.samples, "reconix intake", |x| x.p99_ms);
        let base = median_of(&self.samples, "baseline (axum, read body, 202)", |x| {
            x.per_sec
        });
        let met = |ok: bool| if ok { "met" } else { "**not met**" };
        let _ = writeln!(
            out,
            "\nMedian over runs: reconix {rate:.0} deliveries/s (target ≥ {TARGET_PER_SEC:.0}: {}), \
             p99 {p99:.2} ms (target < {TARGET_P99_MS:.0} ms: {}); baseline {base:.0}/s, so the intake \
             runs at {:.0}% of raw HTTP.",
            met(rate >= TARGET_PER_SEC),
            met(p99 < TARGET_P99_MS),
            100.0 * rate / base
        );
        let p = self.parts;
        let _ = writeln!(
            out,
            "\nThe same steps alone on one thread, per delivery ({} deliveries): verify {:.1} µs, \
             parse {:.1} µs, `record_delivery` (file-backed, WAL) {:.1} µs on average, p99 {:.0} µs, \
             slowest {:.1} ms, {} calls over 1 ms.",
            s.deliveries,
            p.verify_us,
            p.parse_us,
            p.record_us,
            p.record_p99_us,
            p.record_max_us / 1000.0,
            p.record_over_1ms
        );
        out
    }

    /// Renders the results as JSON.
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "deliveries": self.settings.deliveries,
            "concurrency": self.settings.concurrency,
            "runs": self.settings.runs,
            "warmup": WARMUP,
            "body_bytes": PUSH.len(),
            "target_deliveries_per_s": TARGET_PER_SEC,
            "target_p99_ms": TARGET_P99_MS,
            "samples": self.samples.iter().map(Sample::to_json).collect::<Vec<_>>(),
            "single_thread_us": {
                "verify": self.parts.verify_us,
                "parse": self.parts.parse_us,
                "record_delivery": self.parts.record_us,
                "record_delivery_p99": self.parts.record_p99_us,
                "record_delivery_max": self.parts.record_max_us,
                "record_delivery_over_1ms": self.parts.record_over_1ms,
            },
        })
    }
}
