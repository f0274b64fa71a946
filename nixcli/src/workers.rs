//! The evaluator worker pool: `nix eval` processes that evaluate shares ("chunks") of an
//! evaluation's attributes and hand each result back as soon as it is evaluated, under one
//! memory budget shared by every evaluation of the daemon.
//!
//! **Protocol.** A worker is one `nix eval` of [`worker_expr`]: it reads its chunk (the flake
//! reference, the attribute paths and whether errors are caught) from a JSON file fetched with
//! a locked `builtins.fetchTree` (allowed in pure evaluation, and free of the 128 KiB limit of
//! one command-line argument), forces the flake, traces a *ready* line, then evaluates the
//! attributes in order and traces each result as one line `trace: <marker>{"i":…,"r":…}` on
//! stderr. `builtins.trace` writes at once, so results stream while the process runs; the
//! marker holds a random part, so a flake's own `builtins.trace` cannot forge a result.
//! Because attributes are evaluated in order, when a worker dies the attribute it was on is
//! exactly the first one not reported: an uncatchable error (`abort`, a type error) costs that
//! attribute, whose message is the process's stderr, and the rest of the chunk runs again in a
//! new worker.
//!
//! **Memory.** Every running worker samples its resident memory (`/proc/<pid>/statm`)
//! about every 200 ms, every 50 ms once the pool uses three quarters of its budget
//! or the worker three quarters of `max-memory` (less overshoot between two samples), and at
//! each 8th result (each result near the limits). [`EvalPool`] admits a new worker only while
//! the sum of the samples plus the estimated need of the new chunk (its start-up size plus the
//! observed growth per attribute, both decayed averages) fits the budget (`workers ×
//! max-memory`), or when nothing runs at all. When the sum exceeds the budget anyway, the
//! largest worker is killed; the attribute it was on becomes a *suspect* and its other
//! attributes are queued again. A suspect is evaluated alone, with the pool otherwise idle:
//! if it exceeds the budget then, it is an eval-failed job ("evaluation needs more than …").
//! A worker killed by anyone else (the kernel's OOM killer) is handled the same way. A worker
//! whose memory passes `max-memory` between two attributes is restarted (killed, its
//! remaining attributes queued again), as nix-eval-jobs does.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::config::Config;
use crate::parse::eval::{AttrNames, RawJob, parse_result};
use crate::process::{failure_message, spawn_error, status_text};
use crate::{Error, Result};

const JOBS_NIX: &str = include_str!("expr/jobs.nix");

/// How often a running worker samples its memory near the limits; [`SAMPLES_FAR`] times
/// less often otherwise (200 ms).
const SAMPLE_NEAR: Duration = Duration::from_millis(50);

/// See [`SAMPLE_NEAR`].
const SAMPLES_FAR: u32 = 4;

/// The weight of a new observation in the decayed estimates.
const DECAY: f64 = 0.2;

/// About how long one chunk should take to evaluate: what an evaluation waits at most for a
/// busy pool, against the start-up of one more worker (tens of milliseconds).
const CHUNK_SECONDS: f64 = 5.0;

/// The size of a chunk before the time per attribute is known.
const FIRST_CHUNK: usize = 100;

/// How much of a worker's stderr (besides results) is kept for its failure message.
const STDERR_KEPT: usize = 64 * 1024;

/// Attributes evaluated by one worker: `(index, attribute path)` pairs, the index being the
/// caller's.
#[derive(Debug, Clone)]
pub(crate) struct Chunk {
    pub(crate) targets: Vec<(usize, AttrNames)>,
    /// Evaluate each attribute under `tryEval` (a caught error is reported as
    /// [`RawJob::Failed`]); otherwise the first error ends the worker with its message.
    pub(crate) catch: bool,
    /// Run alone, with the pool otherwise idle: for a suspect of using too much memory.
    pub(crate) alone: bool,
}

/// How a worker ended. `unreported` are the indices of its chunk it did not report, in order:
/// the first of them is the attribute it was on, unless it ended [`Ended::Done`].
#[derive(Debug)]
pub(crate) struct WorkerEnd {
    pub(crate) unreported: Vec<usize>,
    pub(crate) how: Ended,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Every attribute was reported.
    Done,
    /// Died of an error while evaluating the first unreported attribute; its message.
    Failed(String),
    /// Died before it was ready (the flake itself failed): the message.
    NotReady(String),
    /// Stopped between two attributes: its memory passed `max-memory`.
    Restarted,
    /// Killed because the pool's memory passed the budget; `alone` when nothing else ran.
    OverBudget { alone: bool },
    /// Killed by someone else (a signal reconix did not send): the status text.
    Killed(String),
}

/// Why the pool killed a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KillReason {
    OverBudget,
    Restart,
}

#[derive(Debug)]
struct Running {
    rss: u64,
    kill: CancellationToken,
    reason: Option<KillReason>,
}

#[derive(Debug, Default)]
struct PoolState {
    running: BTreeMap<u64, Running>,
    /// A worker runs alone: no other is admitted.
    exclusive: bool,
    /// Workers waiting to run alone: no other is admitted meanwhile, so they cannot starve.
    alone_waiting: usize,
    /// Decayed estimate of a worker's memory once ready, before any attribute.
    start_rss: Option<f64>,
    /// Decayed estimate of the memory one attribute adds.
    growth: Option<f64>,
    /// Decayed estimate of the evaluation time of one attribute, in seconds.
    seconds_per_attribute: Option<f64>,
}

impl PoolState {
    fn used(&self) -> u64 {
        self.running.values().map(|r| r.rss).sum()
    }
}

/// The evaluator processes of a daemon, shared by all its evaluations (see the module docs).
#[derive(Debug)]
pub struct EvalPool {
    workers: usize,
    max_memory: u64,
    /// Fair (first come, first served) admission of workers, at most `workers` at once.
    slots: Semaphore,
    state: Mutex<PoolState>,
    /// Signalled whenever a worker ends or memory is sampled.
    changed: Notify,
    next_id: AtomicU64,
    /// The largest sum of sampled worker memory seen (for benchmarks and tests).
    peak: AtomicU64,
    /// Workers restarted for passing `max-memory` between two attributes (for tests).
    restarts: AtomicU64,
}

impl EvalPool {
    /// Returns a pool of at most `workers` processes (at least 1) of `max_memory` bytes each.
    pub fn new(workers: usize, max_memory: u64) -> Self {
        let workers = workers.max(1);
        Self {
            workers,
            max_memory,
            slots: Semaphore::new(workers),
            state: Mutex::new(PoolState::default()),
            changed: Notify::new(),
            next_id: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
        }
    }

    /// Returns how many workers run at most at once.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Returns the memory one worker may use (bytes).
    pub fn max_memory(&self) -> u64 {
        self.max_memory
    }

    /// Returns the budget of all workers together: `workers × max_memory` (bytes).
    pub fn budget(&self) -> u64 {
        self.max_memory
            .saturating_mul(u64::try_from(self.workers).unwrap_or(u64::MAX))
    }

    /// Returns the largest sum of the workers' sampled memory seen so far (bytes).
    pub fn peak_memory(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// Returns how many workers were restarted for passing `max-memory` between two attributes.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    fn state(&self) -> MutexGuard<'_, PoolState> {
        // A panic while holding the lock cannot leave the counters inconsistent in a way that
        // matters more than stopping evaluations would: go on with the data.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Returns how many attributes a new chunk should hold at most: about
    /// [`CHUNK_SECONDS`] of evaluation by the estimate of the time per attribute
    /// ([`FIRST_CHUNK`] before anything is known), so that an evaluation waiting for a worker
    /// waits no longer than that; and no more than keeps a worker below `max-memory` by the
    /// memory estimates. At least 1.
    pub(crate) fn chunk_cap(&self) -> usize {
        let state = self.state();
        let by_time = match state.seconds_per_attribute {
            Some(secs) if secs > 0.0 => (CHUNK_SECONDS / secs) as usize,
            Some(_) => usize::MAX,
            None => FIRST_CHUNK,
        };
        let by_memory = match (state.start_rss, state.growth) {
            (Some(start), Some(growth)) if growth >= 1.0 => {
                let room = (self.max_memory as f64 - start).max(0.0);
                (room / growth) as usize
            }
            _ => usize::MAX,
        };
        by_time.min(by_memory).max(1)
    }

    /// Returns the estimated memory of a new worker evaluating `attributes` attributes.
    fn estimate(state: &PoolState, attributes: usize, max_memory: u64) -> u64 {
        let start = state.start_rss.unwrap_or(0.0);
        let growth = state.growth.unwrap_or(0.0);
        let estimate = start + growth * attributes as f64;
        (estimate as u64).min(max_memory)
    }

    /// Waits until a worker for `chunk` may start; registers it and returns its id and kill
    /// token.
    async fn admit(&self, chunk: &Chunk) -> (u64, CancellationToken) {
        /// Counts a worker waiting to run alone, until it is admitted or its future dropped.
        struct Waiting<'a>(Option<&'a EvalPool>);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                if let Some(pool) = self.0 {
                    let mut state = pool.state();
                    state.alone_waiting = state.alone_waiting.saturating_sub(1);
                    drop(state);
                    pool.changed.notify_waiters();
                }
            }
        }
        let _waiting = Waiting(chunk.alone.then(|| {
            self.state().alone_waiting += 1;
            self
        }));
        loop {
            let changed = self.changed.notified();
            {
                let mut state = self.state();
                let fits = if chunk.alone {
                    state.running.is_empty()
                } else {
                    !state.exclusive
                        && state.alone_waiting == 0
                        && (state.running.is_empty()
                            || state.used().saturating_add(Self::estimate(
                                &state,
                                chunk.targets.len(),
                                self.max_memory,
                            )) <= self.budget())
                };
                if fits {
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    let kill = CancellationToken::new();
                    state.running.insert(
                        id,
                        Running {
                            rss: 0,
                            kill: kill.clone(),
                            reason: None,
                        },
                    );
                    if chunk.alone {
                        state.exclusive = true;
                    }
                    return (id, kill);
                }
            }
            changed.await;
        }
    }

    /// Records worker `id`'s memory; when the pool is over budget, kills the largest worker.
    fn sample(&self, id: u64, rss: u64) {
        let mut state = self.state();
        if let Some(r) = state.running.get_mut(&id) {
            r.rss = rss;
        }
        let used = state.used();
        self.peak.fetch_max(used, Ordering::Relaxed);
        if used > self.budget()
            && let Some((_, largest)) = state
                .running
                .iter_mut()
                .filter(|(_, r)| r.reason.is_none())
                .max_by_key(|(_, r)| r.rss)
        {
            debug!(
                used,
                budget = self.budget(),
                "evaluators over budget; killing the largest"
            );
            largest.reason = Some(KillReason::OverBudget);
            largest.kill.cancel();
        }
        drop(state);
        self.changed.notify_waiters();
    }

    /// Whether memory should be sampled often: the pool uses three quarters of its budget,
    /// or a worker of `rss` three quarters of `max-memory`.
    fn near_limits(&self, rss: u64) -> bool {
        rss >= self.max_memory / 4 * 3 || self.state().used() >= self.budget() / 4 * 3
    }

    fn learn_time_if_unknown(&self, seconds_per_attribute: f64) {
        let mut state = self.state();
        if state.seconds_per_attribute.is_none() {
            state.seconds_per_attribute = Some(seconds_per_attribute);
        }
    }

    fn learn_time(&self, seconds_per_attribute: f64) {
        let mut state = self.state();
        state.seconds_per_attribute = Some(
            state
                .seconds_per_attribute
                .map_or(seconds_per_attribute, |old| {
                    old + DECAY * (seconds_per_attribute - old)
                }),
        );
    }

    fn learn(&self, start: Option<u64>, growth: Option<u64>) {
        let decay = |old: Option<f64>, new: u64| {
            let new = new as f64;
            Some(old.map_or(new, |old| old + DECAY * (new - old)))
        };
        let mut state = self.state();
        if let Some(start) = start {
            state.start_rss = decay(state.start_rss, start);
        }
        if let Some(growth) = growth {
            state.growth = decay(state.growth, growth);
        }
    }

    fn restart(&self, id: u64) {
        let mut state = self.state();
        if let Some(r) = state.running.get_mut(&id)
            && r.reason.is_none()
        {
            r.reason = Some(KillReason::Restart);
            r.kill.cancel();
            self.restarts.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn leave(&self, id: u64, alone: bool) -> Option<KillReason> {
        let mut state = self.state();
        let reason = state.running.remove(&id).and_then(|r| r.reason);
        if alone {
            state.exclusive = false;
        }
        drop(state);
        self.changed.notify_waiters();
        reason
    }

    /// Runs one worker over `chunk` of the flake `flake_ref`, handing each result to
    /// `on_result` as it arrives. `options` are extra `--option name value` pairs for Nix.
    ///
    /// # Errors
    /// When the worker cannot be started or its chunk file cannot be written. How the worker
    /// itself ended (even killed) is in the [`WorkerEnd`].
    pub(crate) async fn run(
        &self,
        cli: &Config,
        flake_ref: &str,
        options: &[(&str, &str)],
        chunk: Chunk,
        mut on_result: impl FnMut(usize, RawJob),
    ) -> Result<WorkerEnd> {
        let _slot = self.slots.acquire().await.map_err(|_| Error::Output {
            command: "evaluator pool".to_owned(),
            reason: "the pool is closed".to_owned(),
        })?;
        let (id, kill) = self.admit(&chunk).await;
        let guard = Leave {
            pool: self,
            id,
            alone: chunk.alone,
            done: false,
        };
        let marker = format!("reconix-{:016x}:", rand_u64());
        let file = ChunkFile::write(flake_ref, &chunk)?;
        let mut args: Vec<OsString> = vec!["eval".into(), "--json".into()];
        for (name, value) in COMMON_OPTIONS.iter().chain(options) {
            args.extend(["--option".into(), (*name).into(), (*value).into()]);
        }
        args.push("--expr".into());
        args.push(worker_expr(&file.path, &file.nar_hash, &marker).into());
        let mut cmd = cli.command(&cli.nix, &args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| spawn_error(&cli.nix, e))?;
        let pid = child.id();
        let mut stdout = child.stdout.take();
        let drain = tokio::spawn(async move {
            let mut sink = Vec::new();
            if let Some(out) = stdout.as_mut() {
                let _ = out.read_to_end(&mut sink).await;
            }
        });
        let mut lines = child.stderr.take().map(|e| BufReader::new(e).lines());
        let mut pending: std::collections::VecDeque<usize> =
            chunk.targets.iter().map(|(i, _)| *i).collect();
        let mut ready = false;
        let mut other = String::new();
        // Memory once ready, and the results reported since: the growth per attribute is
        // learnt as an average over the worker's life (one attribute's step is lumpy: the
        // garbage collector grows its heap in large steps).
        let mut ready_rss: Option<u64> = None;
        let mut ready_at = Instant::now();
        let mut first_at: Option<Instant> = None;
        let mut reported = 0_u64;
        // The latest memory read, by a result or by the sampling.
        let mut last_rss = 0_u64;
        let mut tick = tokio::time::interval(SAMPLE_NEAR);
        let mut ticks = 0_u32;
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut killed = false;
        loop {
            tokio::select! {
                line = async {
                    match lines.as_mut() {
                        Some(l) => l.next_line().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let Ok(Some(line)) = line else {
                        lines = None;
                        continue;
                    };
                    let Some(message) = line.strip_prefix("trace: ").and_then(|l| l.strip_prefix(&marker)) else {
                        if other.len() < STDERR_KEPT {
                            other.push_str(&line);
                            other.push('\n');
                        }
                        continue;
                    };
                    if message == "ready" {
                        let rss = pid.and_then(rss_of);
                        ready = true;
                        debug!(worker = id, start_ms = ready_at.elapsed().as_millis(), rss, "evaluator ready");
                        ready_at = Instant::now();
                        self.learn(rss, None);
                        ready_rss = rss;
                        other.clear();
                        continue;
                    }
                    let Some((index, result)) = parse_result(message) else {
                        continue;
                    };
                    if let Some(pos) = pending.iter().position(|i| *i == index) {
                        pending.remove(pos);
                    }
                    other.clear();
                    on_result(index, result);
                    reported += 1;
                    // Memory is read at every 8th result, at each one near the limits, and by
                    // the sampling: reading it at each of 20,000 results costs the daemon more
                    // than it tells.
                    let rss = if reported % 8 == 1 || self.near_limits(last_rss) {
                        pid.and_then(rss_of)
                    } else {
                        None
                    };
                    // The time per attribute, learnt every 16 results from the first one on:
                    // the first carries one-time costs (the flake's shared values) and alone
                    // would make the next chunks too small. It is used only while nothing
                    // better is known.
                    match first_at {
                        None => {
                            first_at = Some(Instant::now());
                            self.learn_time_if_unknown(ready_at.elapsed().as_secs_f64());
                        }
                        Some(first) if reported % 16 == 1 => {
                            self.learn_time(first.elapsed().as_secs_f64() / (reported - 1) as f64);
                        }
                        Some(_) => {}
                    }
                    if let Some(rss) = rss {
                        // Learnt every 64 results: enough to size chunks.
                        if reported % 64 == 1
                            && let Some(before) = ready_rss
                        {
                            self.learn(None, Some(rss.saturating_sub(before) / reported));
                        }
                        self.sample(id, rss);
                        last_rss = rss;
                    }
                    // Between two attributes: past `max-memory` by the latest read, restart.
                    if last_rss > self.max_memory && !pending.is_empty() && !chunk.alone {
                        self.restart(id);
                    }
                }
                _ = tick.tick() => {
                    ticks = ticks.wrapping_add(1);
                    if !ticks.is_multiple_of(SAMPLES_FAR) && !self.near_limits(last_rss) {
                        continue;
                    }
                    if let Some(rss) = pid.and_then(rss_of) {
                        self.sample(id, rss);
                        last_rss = rss;
                    }
                }
                () = kill.cancelled(), if !killed => {
                    killed = true;
                    let _ = child.start_kill();
                }
                status = child.wait(), if lines.is_none() => {
                    let status = status.map_err(|e| spawn_error(&cli.nix, e))?;
                    drain.abort();
                    let mut guard = guard;
                    guard.done = true;
                    let reason = self.leave(id, chunk.alone);
                    let unreported: Vec<usize> = pending.into_iter().collect();
                    let how = match reason {
                        Some(KillReason::Restart) => Ended::Restarted,
                        Some(KillReason::OverBudget) => Ended::OverBudget { alone: chunk.alone },
                        None if status.success() && unreported.is_empty() => Ended::Done,
                        None => {
                            use std::os::unix::process::ExitStatusExt;
                            let message = failure_message(other.as_bytes())
                                .unwrap_or_else(|| format!("the evaluator ended with {}", status_text(status)));
                            if status.signal().is_some() {
                                Ended::Killed(status_text(status))
                            } else if !ready {
                                Ended::NotReady(message)
                            } else {
                                Ended::Failed(message)
                            }
                        }
                    };
                    return Ok(WorkerEnd { unreported, how });
                }
            }
        }
    }
}

/// Unregisters a worker whose future was dropped (a cancelled evaluation): its process is
/// killed by `kill_on_drop`.
struct Leave<'a> {
    pool: &'a EvalPool,
    id: u64,
    alone: bool,
    done: bool,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.pool.leave(self.id, self.alone);
        }
    }
}

/// Options of every evaluation process (workers and `crate::eval`'s listing): a flake's
/// `nixConfig` never applies, no eval cache, pure evaluation.
pub(crate) const COMMON_OPTIONS: [(&str, &str); 3] = [
    ("accept-flake-config", "false"),
    ("eval-cache", "false"),
    ("pure-eval", "true"),
];

/// Returns the resident memory of process `pid` in bytes, when it can be read
/// (`/proc/<pid>/statm`, the cheapest place: its second field, in pages).
fn rss_of(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * rustix::param::page_size() as u64)
}

/// A random number for the result marker (not secret: it only keeps a flake's own traces from
/// being read as results by accident or on purpose).
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// A worker's chunk, written as JSON to a temporary file that the worker fetches by its NAR
/// hash; removed when dropped.
struct ChunkFile {
    path: PathBuf,
    nar_hash: String,
}

impl ChunkFile {
    fn write(flake_ref: &str, chunk: &Chunk) -> Result<Self> {
        let targets: Vec<serde_json::Value> = chunk
            .targets
            .iter()
            .map(|(i, path)| serde_json::json!({ "i": i, "path": path }))
            .collect();
        let json = serde_json::json!({
            "flake": flake_ref,
            "catch": chunk.catch,
            "targets": targets,
        })
        .to_string();
        let path = std::env::temp_dir().join(format!(
            "reconix-eval-{}-{:016x}.json",
            std::process::id(),
            rand_u64()
        ));
        std::fs::write(&path, &json).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        Ok(Self {
            path,
            nar_hash: nar_hash_of_file(json.as_bytes()),
        })
    }
}

impl Drop for ChunkFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Returns the NAR hash (`sha256-<base64>`, as `fetchTree` takes it) of a regular,
/// non-executable file holding `contents`.
pub(crate) fn nar_hash_of_file(contents: &[u8]) -> String {
    use crate::serve::wire::put_bytes;
    // The NAR (the wire's framing: length, bytes, padding), built whole: a chunk is small.
    let mut nar = Vec::with_capacity(contents.len() + 128);
    for token in [
        &b"nix-archive-1"[..],
        b"(",
        b"type",
        b"regular",
        b"contents",
    ] {
        put_bytes(&mut nar, token);
    }
    put_bytes(&mut nar, contents);
    put_bytes(&mut nar, b")");
    use base64::Engine;
    format!(
        "sha256-{}",
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&nar))
    )
}

/// Returns the expression of a worker (see the module docs).
fn worker_expr(file: &Path, nar_hash: &str, marker: &str) -> String {
    let quote = |s: &str| {
        serde_json::Value::String(s.to_owned())
            .to_string()
            .replace('$', "\\$")
    };
    format!(
        "let chunk = builtins.fromJSON (builtins.readFile (builtins.fetchTree {{ type = \"path\"; path = {}; narHash = {}; }}).outPath); \
         flake = builtins.getFlake chunk.flake; \
         run = ({JOBS_NIX}) {{ inherit (chunk) catch; }} flake; \
         report = msg: builtins.trace ({} + msg) null; \
         in builtins.seq flake (builtins.seq (report \"ready\") (builtins.foldl' \
         (n: t: builtins.seq (report (builtins.toJSON {{ i = t.i; r = run t.path; }})) (n + 1)) 0 chunk.targets))",
        quote(&file.display().to_string()),
        quote(nar_hash),
        quote(marker),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nar_hash_of_a_file_should_be_nix_s() {
        // `nix-store --add` of a file holding `["a","b"]\n`, hashed by `nix hash to-sri`.
        assert_eq!(
            nar_hash_of_file(b"[\"a\",\"b\"]\n"),
            "sha256-PxlN6PZlvbhrA7SFyVFrJfgqCpRJtkRrlsWXI59qd2M="
        );
    }

    #[test]
    fn the_resident_memory_of_a_process_should_be_read_in_bytes() {
        let own = rss_of(std::process::id()).unwrap();
        assert!(own > 1 << 20 && own < 16 << 30, "{own}");
        assert_eq!(rss_of(u32::MAX), None);
    }

    #[test]
    fn admission_should_keep_the_estimated_sum_within_the_budget() {
        let pool = EvalPool::new(2, 1000);
        let chunk = |n: usize| Chunk {
            targets: (0..n).map(|i| (i, vec![format!("a{i}")])).collect(),
            catch: true,
            alone: false,
        };
        pool.learn(Some(300), Some(10));
        let state = pool.state();
        assert_eq!(EvalPool::estimate(&state, 20, 1000), 500);
        assert_eq!(EvalPool::estimate(&state, 200, 1000), 1000);
        drop(state);
        assert_eq!(pool.chunk_cap(), 70);
        // One worker at 1500 of the 2000 budget: a chunk estimated at 500 fits, 600 does not.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (id, _) = pool.admit(&chunk(20)).await;
            pool.sample(id, 1500);
            let fits = {
                let s = pool.state();
                s.used() + EvalPool::estimate(&s, 20, 1000) <= pool.budget()
            };
            assert!(fits);
            let more = {
                let s = pool.state();
                s.used() + EvalPool::estimate(&s, 30, 1000) <= pool.budget()
            };
            assert!(!more);
            assert_eq!(pool.peak_memory(), 1500);
        });
    }

    #[test]
    fn the_largest_worker_should_be_killed_when_the_budget_is_exceeded() {
        let pool = EvalPool::new(2, 1000);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let chunk = Chunk {
                targets: vec![(0, vec!["a".to_owned()])],
                catch: true,
                alone: false,
            };
            let (small, small_kill) = pool.admit(&chunk).await;
            let (big, big_kill) = pool.admit(&chunk).await;
            // 900 + 1000 fits the budget of 2 × 1000; 900 + 1200 does not.
            pool.sample(small, 900);
            pool.sample(big, 1000);
            assert!(!big_kill.is_cancelled());
            pool.sample(big, 1200);
            assert!(big_kill.is_cancelled());
            assert!(!small_kill.is_cancelled());
            assert_eq!(pool.leave(big, false), Some(KillReason::OverBudget));
            assert_eq!(pool.leave(small, false), None);
        });
    }
}
