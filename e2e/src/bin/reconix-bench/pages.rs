//! `reconix-bench pages`: how fast the status pages answer for an evaluation of 10,000 jobs.
//!
//! The real router (`reconix_web::serve`) runs on 127.0.0.1 over a file-backed status database
//! (as the daemon opens it) seeded with one evaluation of `--page-jobs` jobs, 1 in 10 failed
//! with a dependent in `dependency-failed`. One keep-alive client GETs each page `--page-requests`
//! times after a warm-up: the first, a middle and the last page of the evaluation (200 jobs a
//! page, failures first), the overview `/`, and the whole evaluation as JSON
//! (`/api/v1/evaluations/{id}`) for comparison. Times are from request to the last body byte.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use reconix_spec::{AttrPath, RepoKey, StorePath, System, Timestamp};
use reconix_status::{BuildState, JobState, NewJob, OpenMode, Status, StatusDb};
use reconix_web::AppState;
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// The mission's target for one page of a 10,000-job evaluation.
pub(crate) const TARGET_MS: f64 = 100.0;
/// Jobs per evaluation page (`web/src/pages`).
const PER_PAGE: usize = 200;

/// Settings of the pages benchmark.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) jobs: usize,
    pub(crate) requests: usize,
}

/// Timings of one URL.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    pub(crate) what: String,
    pub(crate) path: String,
    pub(crate) bytes: usize,
    pub(crate) min_ms: f64,
    pub(crate) median_ms: f64,
    pub(crate) p95_ms: f64,
}

/// What the benchmark measured.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    pub(crate) settings: Settings,
    pub(crate) seed_secs: f64,
    pub(crate) samples: Vec<Sample>,
}

fn seed(path: &Path, n: usize) -> Result<i64> {
    let mut db = StatusDb::open(path, OpenMode::ReadWrite)?;
    let repo = db.upsert_repo(&RepoKey::parse("here/big")?)?;
    let t = Timestamp::now();
    let (id, _) = db.insert_evaluation(
        repo,
        "refs/heads/main",
        &"e".repeat(40),
        "git+file:///srv/big?rev=eeee",
        t,
    )?;
    let system = System::new("x86_64-linux")?;
    let store = |i: usize, name: &str| StorePath::new(format!("/nix/store/{i:0>32}-{name}"));
    let attr = |i: usize| AttrPath::new(format!("packages.x86_64-linux.p{i:05}"));
    let mut jobs = Vec::with_capacity(n);
    for i in 0..n {
        let deps = if i % 10 == 1 {
            vec![attr(i - 1)?]
        } else {
            Vec::new()
        };
        jobs.push(NewJob {
            attr: attr(i)?,
            name: format!("p{i:05}"),
            system: Some(system.clone()),
            drv_path: Some(store(i, &format!("p{i:05}.drv"))?),
            outputs: [("out".to_owned(), store(i + 1_000_000, &format!("p{i:05}"))?)].into(),
            deps,
            required_features: Vec::new(),
            state: JobState::Queued,
            error: None,
            constituents: None,
            meta: reconix_spec::JobMeta::default(),
        });
    }
    db.record_evaluation_result(id, &jobs, t)?;
    for (i, job) in db.jobs_of_evaluation(id)?.into_iter().enumerate() {
        let drv = job.drv_path.context("seeded job without drv")?;
        let (state, error) = match i % 10 {
            0 => (JobState::Failed, Some("builder failed with exit code 1")),
            1 => (JobState::DependencyFailed, Some("dependency failed")),
            _ => (JobState::Succeeded, None),
        };
        if state != JobState::DependencyFailed {
            let build = if state == JobState::Failed {
                BuildState::Failed
            } else {
                BuildState::Succeeded
            };
            db.upsert_build(&drv, None, BuildState::Running, t)?;
            db.finish_build(
                &drv,
                build,
                Some(0),
                error,
                Some(Path::new("/var/log/x")),
                t,
            )?;
        }
        db.set_job_state(job.id, state, error, t)?;
    }
    db.finish_evaluation_if_done(id, t)?;
    Ok(id.0)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

/// Runs the benchmark.
pub(crate) fn run(settings: Settings) -> Result<Report> {
    ensure!(
        settings.jobs >= PER_PAGE,
        "--page-jobs must be at least {PER_PAGE}"
    );
    let dir = tempfile::Builder::new()
        .prefix("reconix-bench-pages")
        .tempdir()?;
    let db_path = dir.path().join("reconix.db");
    progress!("pages: seeding an evaluation of {} jobs", settings.jobs);
    let started = Instant::now();
    let id = seed(&db_path, settings.jobs)?;
    let seed_secs = started.elapsed().as_secs_f64();
    let last = settings.jobs.div_ceil(PER_PAGE);
    let urls = [
        ("evaluation page 1", format!("/evaluations/{id}?page=1")),
        (
            "evaluation page (middle)",
            format!("/evaluations/{id}?page={}", last / 2),
        ),
        (
            "evaluation page (last)",
            format!("/evaluations/{id}?page={last}"),
        ),
        ("overview /", "/".to_owned()),
        (
            "API: whole evaluation as JSON",
            format!("/api/v1/evaluations/{id}"),
        ),
    ];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let samples = rt.block_on(async {
        let status = Status::new(StatusDb::open(&db_path, OpenMode::ReadWrite)?);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(reconix_web::serve(listener, AppState::new(status), async {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::new();
        let mut samples = Vec::new();
        for (what, path) in &urls {
            let url = format!("http://{addr}{path}");
            let mut times = Vec::with_capacity(settings.requests);
            let mut bytes = 0;
            for i in 0..settings.requests + 3 {
                let t = Instant::now();
                let resp = client.get(&url).send().await?;
                ensure!(resp.status().is_success(), "GET {path}: {}", resp.status());
                let body = resp.bytes().await?;
                if i >= 3 {
                    times.push(t.elapsed());
                }
                bytes = body.len();
            }
            times.sort();
            let sample = Sample {
                what: (*what).to_owned(),
                path: path.clone(),
                bytes,
                min_ms: percentile(&times, 0.0),
                median_ms: percentile(&times, 0.5),
                p95_ms: percentile(&times, 0.95),
            };
            progress!("pages: {what}: median {:.1} ms", sample.median_ms);
            samples.push(sample);
        }
        let _ = stop.send(());
        server.await.context("server task")??;
        Ok::<_, anyhow::Error>(samples)
    })?;
    Ok(Report {
        settings,
        seed_secs,
        samples,
    })
}

impl Report {
    /// The markdown section of the results.
    pub(crate) fn text(&self) -> String {
        let mut out = format!(
            "## Status pages\n\nOne evaluation of {} jobs (1 in 10 failed, each with a dependency-failed dependent), seeded in {:.1} s; {} requests per URL after 3 warm-up requests, one keep-alive client.\n\n| page | path | body | min | median | p95 |\n|---|---|---|---|---|---|\n",
            self.settings.jobs, self.seed_secs, self.settings.requests
        );
        for s in &self.samples {
            out.push_str(&format!(
                "| {} | `{}` | {} KiB | {:.1} ms | {:.1} ms | {:.1} ms |\n",
                s.what,
                s.path,
                s.bytes / 1024,
                s.min_ms,
                s.median_ms,
                s.p95_ms
            ));
        }
        let worst = self
            .samples
            .iter()
            .filter(|s| s.path.starts_with("/evaluations/"))
            .map(|s| s.median_ms)
            .fold(0.0, f64::max);
        out.push_str(&format!(
            "\nSlowest evaluation page median {worst:.1} ms (target < {TARGET_MS} ms: {}).\n",
            if worst < TARGET_MS { "met" } else { "NOT met" }
        ));
        out
    }

    /// The results as JSON.
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "jobs": self.settings.jobs,
            "requests": self.settings.requests,
            "seed_secs": self.seed_secs,
            "target_ms": TARGET_MS,
            "samples": self.samples.iter().map(|s| json!({
                "what": s.what, "path": s.path, "bytes": s.bytes,
                "min_ms": s.min_ms, "median_ms": s.median_ms, "p95_ms": s.p95_ms,
            })).collect::<Vec<_>>(),
        })
    }
}
