//! Evaluation at scale (issue 16): throughput of the evaluator pool against raw Nix run in
//! parallel by hand, and the memory budget under attributes that need hundreds of MB.
//!
//! - `evalscale N`: a flake of N attributes that each cost about 1 ms of evaluation
//!   ([`spin_flake`]). reconix with `evaluation.workers: 2`, commit seen → jobs recorded,
//!   against (a) one bulk `nix eval` and (b) the raw limit of this machine: two `nix eval`
//!   processes each evaluating one half ([`HALF_EXPR`]), started together. Target ≤ 1.15× (b).
//! - `evalstream N`: the same flake with building on: from commit seen to the first job
//!   recorded and to the first build started, as fractions of the whole evaluation (target
//!   ≤ 10%).
//! - `evalingest N`: a chain flake of N attributes (p_i needs p_(i/10)): the daemon's peak RSS,
//!   the time from the last attribute evaluated (progress complete, polled) to every job
//!   recorded, and the latency of `/evaluations/{id}` at that size (targets < 150 MB, ≤ 1 s,
//!   p50 < 100 ms).
//! - `evalmem`: 40 attributes of about 400 MB each plus one of about 4 GiB, with `workers: 2,
//!   max-memory: 1 GiB`: the evaluators' resident memory summed (sampled every 50 ms from
//!   `/proc`), the daemon's peak RSS, and whether all 40 became jobs and the fat one the memory
//!   error.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use reconix_e2e::{GitRepo, TestDaemon};
use serde_json::{Value, json};

use crate::report::{Row, median};
use crate::{
    API_POLL, FORGE_POLL, Opts, Outcome, flakes, job_count, launch, ms, poll_evaluation,
    poll_evaluation_every, raw_store, recorded_line, settle, timed_nix, timestamp_ms, unique,
};

/// How often `evalscale` polls the API: its measurement comes from the daemon's timestamps.
pub(crate) const GENTLE_POLL: Duration = Duration::from_millis(250);

/// `builtins.genList` length that makes one attribute cost about 1 ms of evaluation here.
const SPIN: usize = 3000;

/// A flake of `n` independent packages `p0 … p{n-1}`, each spending about 1 ms of evaluation
/// (a fold over [`SPIN`] numbers) on one of its attributes.
pub(crate) fn spin_flake(n: usize, salt: &str) -> String {
    r#"{
  description = "reconix benchmark: @N@ packages of about 1 ms of evaluation each";
  outputs = { self }:
    let
      system = "x86_64-linux";
      work = i: builtins.foldl' (a: b: a + b) i (builtins.genList (k: k) @SPIN@);
      mk = i: derivation {
        name = "p${toString i}";
        inherit system;
        salt = "@SALT@";
        work = toString (work i);
        builder = "/bin/sh";
        args = [ "-c" "echo > $out" ];
      };
      pkgs = builtins.listToAttrs (builtins.genList (i: { name = "p${toString i}"; value = mk i; }) @N@);
    in { packages.${system} = pkgs; };
}
"#
    .replace("@N@", &n.to_string())
    .replace("@SPIN@", &SPIN.to_string())
    .replace("@SALT@", salt)
}

/// A flake of 40 packages `m0 … m39` whose evaluation holds about 400 MB each, and `huge`,
/// about 4 GiB.
pub(crate) fn fat_flake(salt: &str) -> String {
    r#"{
  outputs = { self }:
    let
      system = "x86_64-linux";
      mk = name: script: derivation { inherit name system; salt = "@SALT@"; builder = "/bin/sh"; args = [ "-c" script ]; };
      fat = name: n: let big = builtins.genList (i: toString i) n; in builtins.deepSeq big (mk name "echo ${toString (builtins.length big)} > $out");
      ms = builtins.listToAttrs (builtins.genList (i: { name = "m${toString i}"; value = fat "m${toString i}" 2200000; }) 40);
    in { packages.${system} = ms // { huge = fat "huge" 23000000; }; };
}
"#
    .replace("@SALT@", salt)
}

/// The raw evaluation of one half (`half` 0 or 1) of a flake's packages, as the bulk jobs
/// expression evaluates each.
pub(crate) const HALF_EXPR: &str = r#"flake: half:
let
  sys = "x86_64-linux";
  job = v:
    let
      info = {
        drvPath = v.drvPath; name = v.name; system = v.system;
        outputs = builtins.listToAttrs (map (o: { name = o; value = v.${o}.outPath; }) (v.outputs or [ "out" ]));
      };
      r = builtins.tryEval (if (v.type or null) == "derivation" then builtins.deepSeq info info else { error = "not a derivation"; });
    in if r.success then r.value else { error = "evaluation failed (throw/assert)"; };
  pkgs = flake.packages.${sys};
  names = builtins.attrNames pkgs;
  n = builtins.length names;
  from = if half == 0 then 0 else n / 2;
  count = if half == 0 then n / 2 else n - n / 2;
in map (i: job pkgs.${builtins.elemAt names (from + i)}) (builtins.genList (i: i) count)"#;

fn half_args(store: &Path, flake_ref: &str, half: usize) -> Vec<OsString> {
    let expr = format!("(({HALF_EXPR}) (builtins.getFlake \"{flake_ref}\") {half})");
    vec![
        "--store".into(),
        store.into(),
        "eval".into(),
        "--json".into(),
        "--expr".into(),
        expr.into(),
    ]
}

/// A checkout of generated flakes.
struct Repo {
    repo: GitRepo,
    commits: usize,
}

impl Repo {
    fn new() -> Result<Self> {
        Ok(Self {
            repo: GitRepo::new()?,
            commits: 0,
        })
    }

    fn commit(&mut self, flake: impl Fn(&str) -> String) -> Result<String> {
        self.commits += 1;
        let salt = format!("scale-{}-{}", self.commits, unique());
        std::fs::write(self.repo.path().join("flake.nix"), flake(&salt))?;
        self.repo.git(&["add", "-A"])?;
        self.repo.git(&["commit", "-q", "-m", &salt])?;
        Ok(self.repo.git(&["rev-parse", "HEAD"])?.trim().to_owned())
    }
}

/// A daemon watching `repo`, building nothing, with `evaluation` as its evaluation section.
fn daemon(repo: &Repo, evaluation: &str) -> Result<TestDaemon> {
    let spec = format!(
        "{}evaluation:\n{evaluation}",
        flakes::daemon_spec(repo.repo.path(), FORGE_POLL, 0)
    );
    launch(spec)
}

/// Runs the two halves of the raw evaluation at once; returns the wall time of both.
fn raw_halves(store: &Path, flake_ref: &str) -> Result<Duration> {
    let start = Instant::now();
    let children: Vec<std::process::Child> = (0..2)
        .map(|half| {
            Command::new("nix")
                .args(half_args(store, flake_ref, half))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .context("spawning a raw half evaluation")
        })
        .collect::<Result<_>>()?;
    for child in children {
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "a raw half evaluation failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(start.elapsed())
}

/// `evalscale n`: see the module docs.
pub(crate) fn throughput(n: usize, opts: &Opts) -> Result<Outcome> {
    progress!("evalscale {n}: setting up (daemon with evaluation.workers 2, building off)");
    let mut ours = Repo::new()?;
    let mut raw = Repo::new()?;
    let store_dir = raw_store()?;
    let store = store_dir.path().join("store");
    let d = daemon(&ours, "  workers: 2\n")?;
    // Warm-up on both sides.
    let rev = ours.commit(|s| spin_flake(10, s))?;
    poll_evaluation(&d, &rev, |s| s != "queued" && s != "evaluating")?;
    let rev = raw.commit(|s| spin_flake(10, s))?;
    timed_nix(
        &flakes::raw_eval_args(&store, &flakes::flake_ref(raw.repo.path(), &rev)),
        "warm-up",
    )?;
    settle(opts.idle_wait);
    let (mut server, mut bulk, mut halves) = (vec![], vec![], vec![]);
    let mut commands = (String::new(), String::new());
    for run in 0..opts.runs {
        let rev = ours.commit(|s| spin_flake(n, s))?;
        // Measured by the daemon's own timestamps: polled gently, not to load it.
        let (summary, _) = poll_evaluation_every(
            &d,
            &rev,
            |s| s != "queued" && s != "evaluating",
            GENTLE_POLL,
        )?;
        let id = summary["id"].as_i64().context("evaluation id")?;
        let (recorded, _) = recorded_line(&d, id)?;
        let created = timestamp_ms(&summary, "created_at")?;
        ensure!(
            job_count(&summary, None) == n as u64 && job_count(&summary, Some("eval-failed")) == 0,
            "evaluation {id} recorded the wrong jobs: {summary}"
        );
        server.push(recorded - created);
        settle(opts.idle_wait);
        let rev = raw.commit(|s| spin_flake(n, s))?;
        let flake_ref = flakes::flake_ref(raw.repo.path(), &rev);
        let (t, _) = timed_nix(&flakes::raw_eval_args(&store, &flake_ref), "raw bulk eval")?;
        bulk.push(ms(t));
        settle(opts.idle_wait);
        let rev = raw.commit(|s| spin_flake(n, s))?;
        let flake_ref = flakes::flake_ref(raw.repo.path(), &rev);
        let t = raw_halves(&store, &flake_ref)?;
        halves.push(ms(t));
        commands = (
            flakes::raw_eval_display(&store, &flake_ref),
            format!(
                "nix --store {} eval --json --expr \"((${{HALF}}) (builtins.getFlake \\\"{flake_ref}\\\") 0)\" & (… 1) & wait",
                store.display()
            ),
        );
        progress!(
            "evalscale {n} run {}: reconix {:.2} s, raw bulk {:.2} s, raw two halves {:.2} s",
            run + 1,
            server[run] / 1000.0,
            bulk[run] / 1000.0,
            halves[run] / 1000.0
        );
        settle(opts.idle_wait);
    }
    drop(d);
    let rows = vec![
        Row {
            kind: "evalscale",
            n,
            metric: "workers 2: commit seen → jobs recorded, vs two raw halves at once",
            reconix_ms: server.clone(),
            raw_ms: halves.clone(),
            target: Some(1.15),
        },
        Row {
            kind: "evalscale",
            n,
            metric: "workers 2: commit seen → jobs recorded, vs one raw bulk eval",
            reconix_ms: server.clone(),
            raw_ms: bulk.clone(),
            target: None,
        },
    ];
    Ok(Outcome {
        rows,
        command: format!("{}; halves: {}", commands.0, commands.1),
        details: json!({
            "benchmark": "evalscale", "packages": n, "reconix_ms": server,
            "raw_bulk_ms": bulk, "raw_halves_ms": halves, "half_expr": HALF_EXPR,
        }),
        note: format!(
            "evalscale {n}: each attribute ~1 ms (foldl' over {SPIN} numbers); reconix median {:.2} s, raw bulk {:.2} s, raw halves {:.2} s",
            median(&server) / 1000.0,
            median(&bulk) / 1000.0,
            median(&halves) / 1000.0
        ),
    })
}

/// Polls the evaluation summaries (cheap at any size) until `done` returns a value for the
/// one of `rev`.
fn poll_summary<T>(
    d: &TestDaemon,
    rev: &str,
    mut done: impl FnMut(&Value) -> Option<T>,
) -> Result<T> {
    let start = Instant::now();
    loop {
        let list = d.get_json("/api/v1/evaluations?limit=5")?;
        if let Some(e) = list
            .as_array()
            .and_then(|a| a.iter().find(|e| e["rev"] == rev))
        {
            ensure!(e["state"] != "failed", "the evaluation failed: {e}");
            if let Some(v) = done(e) {
                return Ok(v);
            }
        }
        ensure!(
            start.elapsed() < Duration::from_secs(1800),
            "timed out waiting on the evaluation of {rev}"
        );
        sleep(API_POLL);
    }
}

/// `evalstream n`: see the module docs.
pub(crate) fn streaming(n: usize, opts: &Opts) -> Result<Outcome> {
    progress!("evalstream {n}: a daemon per run with evaluation.workers 2 and max-jobs 2");
    let (mut first_job, mut first_build, mut whole) = (vec![], vec![], vec![]);
    for run in 0..opts.runs {
        // A fresh daemon each run: the 20,000 builds of the last run must not hold the builders.
        let mut ours = Repo::new()?;
        let spec = format!(
            "{}evaluation:\n  workers: 2\n",
            flakes::daemon_spec(ours.repo.path(), FORGE_POLL, 2)
        );
        let d = launch(spec)?;
        let rev = ours.commit(|s| spin_flake(10, s))?;
        poll_evaluation(&d, &rev, |s| s == "finished")?;
        settle(opts.idle_wait);
        let rev = ours.commit(|s| spin_flake(n, s))?;
        let job_seen = poll_summary(&d, &rev, |e| {
            (e["progress"]["evaluated"].as_u64().unwrap_or(0) > 0
                || e["state"] != "evaluating" && e["state"] != "queued")
                .then(Instant::now)
        })?;
        let build_seen = poll_summary(&d, &rev, |e| {
            let started = ["building", "succeeded", "failed"]
                .iter()
                .any(|s| e["job_counts"][*s].as_u64().unwrap_or(0) > 0);
            started.then(Instant::now)
        })?;
        let (summary, _) = poll_evaluation(&d, &rev, |s| s != "queued" && s != "evaluating")?;
        let id = summary["id"].as_i64().context("evaluation id")?;
        let (recorded, _) = recorded_line(&d, id)?;
        let created = timestamp_ms(&summary, "created_at")?;
        // Instants to the epoch through one common moment.
        let (now, now_epoch) = (Instant::now(), crate::epoch_ms());
        let epoch = |t: Instant| now_epoch - ms(now.duration_since(t));
        let total = recorded - created;
        first_job.push(epoch(job_seen) - created);
        first_build.push(epoch(build_seen) - created);
        whole.push(total);
        progress!(
            "evalstream {n} run {}: first job {:.2} s, first build {:.2} s, evaluation {:.2} s",
            run + 1,
            first_job[run] / 1000.0,
            first_build[run] / 1000.0,
            total / 1000.0
        );
        // Its 20,000 builds end with the daemon: only the start counts.
        drop(d);
    }
    let frac = |v: &[f64]| median(v) / median(&whole);
    Ok(Outcome {
        rows: Vec::new(),
        command: "reconix only (raw Nix reports nothing before it ends)".to_owned(),
        details: json!({
            "benchmark": "evalstream", "packages": n, "first_job_ms": first_job,
            "first_build_ms": first_build, "evaluation_ms": whole,
        }),
        note: format!(
            "evalstream {n}: first job recorded after {:.2} s = {:.1}% of the evaluation ({:.2} s), first build started after {:.2} s = {:.1}% (target ≤ 10%; commit seen → polled every {} ms)",
            median(&first_job) / 1000.0,
            100.0 * frac(&first_job),
            median(&whole) / 1000.0,
            median(&first_build) / 1000.0,
            100.0 * frac(&first_build),
            API_POLL.as_millis()
        ),
    })
}

/// `evalingest n`: see the module docs.
pub(crate) fn ingest(n: usize, opts: &Opts) -> Result<Outcome> {
    progress!("evalingest {n}: daemon with evaluation.workers 2, building off");
    let mut ours = Repo::new()?;
    let d = daemon(&ours, "  workers: 2\n")?;
    let pid = d.pid().context("the daemon has no pid")?;
    settle(opts.idle_wait);
    let rev = ours.commit(|s| flakes::chain_flake(n, s))?;
    let evaluated = poll_summary(&d, &rev, |e| {
        let p = &e["progress"];
        let all = p["attributes"]
            .as_u64()
            .is_some_and(|m| m > 0 && p["evaluated"] == p["attributes"]);
        (all || e["state"] != "evaluating" && e["state"] != "queued").then(crate::epoch_ms)
    })?;
    let (summary, _) = poll_evaluation(&d, &rev, |s| s != "queued" && s != "evaluating")?;
    let id = summary["id"].as_i64().context("evaluation id")?;
    let (recorded, _) = recorded_line(&d, id)?;
    ensure!(
        job_count(&summary, None) == n as u64,
        "evaluation {id} recorded the wrong jobs: {summary}"
    );
    let tail_ms = (recorded - evaluated).max(0.0);
    let mut latencies = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        d.get_text(&format!("/evaluations/{id}"))?;
        latencies.push(ms(t.elapsed()));
    }
    let rss = vm_hwm(pid);
    progress!(
        "evalingest {n}: daemon peak RSS {:.0} MiB, last attribute → all recorded {:.0} ms, /evaluations/{id} p50 {:.0} ms",
        rss as f64 / 1048576.0,
        tail_ms,
        median(&latencies)
    );
    Ok(Outcome {
        rows: Vec::new(),
        command: "reconix only".to_owned(),
        details: json!({
            "benchmark": "evalingest", "packages": n, "daemon_peak_rss_bytes": rss,
            "last_attribute_to_recorded_ms": tail_ms, "page_ms": latencies,
        }),
        note: format!(
            "evalingest {n}: daemon peak RSS {:.0} MiB (target < 150 MB); last attribute evaluated (progress polled every {} ms) → every job recorded {:.0} ms (target ≤ 1 s); `/evaluations/{id}` p50 {:.0} ms over 30 GETs (target < 100 ms)",
            rss as f64 / 1048576.0,
            API_POLL.as_millis(),
            tail_ms,
            median(&latencies)
        ),
    })
}

/// Sums the resident memory of the daemon's evaluator workers (their command lines name a
/// chunk file `reconix-eval-<daemon pid>-…`); returns (sum, daemon RSS).
fn evaluator_rss(daemon_pid: u32) -> (u64, u64) {
    let tag = format!("reconix-eval-{daemon_pid}-");
    let rss = |pid: &str| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .map_or(0, |kib| kib * 1024)
    };
    let mut sum = 0;
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let name = e.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            if std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&tag))
            {
                sum += rss(pid);
            }
        }
    }
    (sum, rss(&daemon_pid.to_string()))
}

/// Returns the peak resident memory (`VmHWM`) of process `pid`, in bytes (0 when unknown).
fn vm_hwm(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// `evalmem`: see the module docs.
pub(crate) fn memory(opts: &Opts) -> Result<Outcome> {
    progress!("evalmem: 40 × ~400 MB + one ~4 GiB attribute, workers 2, max-memory 1 GiB");
    let mut ours = Repo::new()?;
    let d = daemon(&ours, "  workers: 2\n  max-memory: 1 GiB\n")?;
    let pid = d.pid().context("the daemon has no pid")?;
    settle(opts.idle_wait);
    let budget: u64 = 2 << 30;
    let rev = ours.commit(fat_flake)?;
    let start = Instant::now();
    let (mut peak, mut daemon_peak, mut samples) = (0_u64, 0_u64, 0_u64);
    let summary = loop {
        let (sum, own) = evaluator_rss(pid);
        peak = peak.max(sum);
        daemon_peak = daemon_peak.max(own);
        samples += 1;
        if let Some(e) = d.evaluation_of(&rev)? {
            let state = e["state"].as_str().unwrap_or_default().to_owned();
            if state != "queued" && state != "evaluating" {
                break e;
            }
        }
        if start.elapsed() > Duration::from_secs(1800) {
            bail!("evalmem: the evaluation did not end within 30 minutes");
        }
        sleep(Duration::from_millis(50).max(API_POLL));
    };
    let took = start.elapsed();
    // The kernel's own peak of the daemon's RSS, beyond what the samples saw.
    daemon_peak = daemon_peak.max(vm_hwm(pid));
    let jobs = reconix_e2e::jobs_by_attr(&summary)?;
    let ok = (0..40)
        .filter(|i| jobs[&format!("packages.x86_64-linux.m{i}")]["state"] != "eval-failed")
        .count();
    let huge = &jobs["packages.x86_64-linux.huge"];
    let huge_error = huge["error"].as_str().unwrap_or_default().to_owned();
    let over = peak as f64 / budget as f64;
    progress!(
        "evalmem: {ok}/40 jobs, huge: {huge_error}; evaluators' peak {:.0} MiB of a {:.0} MiB budget ({:.2}×), daemon peak RSS {:.0} MiB, {:.1} s, {samples} samples",
        peak as f64 / 1048576.0,
        budget as f64 / 1048576.0,
        over,
        daemon_peak as f64 / 1048576.0,
        took.as_secs_f64()
    );
    Ok(Outcome {
        rows: Vec::new(),
        command: "reconix only (raw Nix has no memory budget to compare with)".to_owned(),
        details: json!({
            "benchmark": "evalmem", "jobs_ok": ok, "huge_error": huge_error,
            "evaluators_peak_bytes": peak, "budget_bytes": budget, "peak_over_budget": over,
            "daemon_peak_rss_bytes": daemon_peak, "seconds": took.as_secs_f64(),
            "samples": samples, "huge_state": huge["state"].clone(),
            "job_counts": summary.get("job_counts").cloned().unwrap_or(Value::Null),
        }),
        note: format!(
            "evalmem: {ok} of 40 ~400 MB attributes became jobs; the ~4 GiB one: {}; evaluators' sampled peak {:.0} MiB = {over:.2}× the 2 GiB budget (target ≤ 1.10×); daemon peak RSS {:.0} MiB (target < 100 MiB); {:.0} s",
            if huge_error.is_empty() {
                "NOT eval-failed".to_owned()
            } else {
                huge_error.clone()
            },
            peak as f64 / 1048576.0,
            daemon_peak as f64 / 1048576.0,
            took.as_secs_f64()
        ),
    })
}
