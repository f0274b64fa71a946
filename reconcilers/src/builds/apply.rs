//! Starting a build: record it, then run it (locally, or on an agent over its serve channel) as
//! a task that records its result before it leaves the running set (see the module docs of
//! `builds`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reconix_agent::coordinator::AgentConn;
use reconix_nixcli::serve::{BuildSettings, RemoteBuildStatus, ServeClient};
use reconix_nixcli::{BuildRequest, BuildStatus, Nix, OutputsReport};
use reconix_spec::{BuilderName, StorePath, Timestamp};
use reconix_status::{
    BuildPhase, BuildProduct, BuildState, BuilderKind, BuiltOutputs, FAILED_WITH_OUTPUT, JobState,
    Metrics, Requeue, Status,
};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::Result;
use crate::context::{Ctx, Ports};

use super::Dispatch as Attempt;

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Ended {
    /// The build reached a result of its own: succeeded, failed, timed out or was cancelled.
    Result {
        state: BuildState,
        exit_code: Option<i32>,
        error: Option<String>,
    },
    /// The build succeeded as far as Nix goes (its outputs are valid, and rooted), with what
    /// its outputs say about it in `nix-support/`: `outputs.failed` makes it a failure with
    /// output.
    Built {
        exit_code: Option<i32>,
        outputs: BuiltOutputs,
    },
    /// The builder, not the build, failed (connection lost, agent gone, store trouble).
    Transient(String),
    /// This machine's disk is full or failing (the state directory, or Nix's store): the build
    /// waits for room without its attempt counting.
    Waiting(String),
}

impl Ended {
    /// Returns a transient failure for `reason`, or a wait when the reason is a full disk as
    /// Nix words it (it reports its own IO errors only as text).
    fn transient(reason: String) -> Self {
        if reconix_nixcli::is_storage_message(&reason) {
            Self::Waiting(format!("waiting: Nix store full: {reason}"))
        } else {
            Self::Transient(reason)
        }
    }

    /// Returns the end of an attempt that could not write `what` in the state directory:
    /// a wait when the disk is full or failing, a transient failure otherwise.
    fn local_io(what: &str, err: &std::io::Error) -> Self {
        if reconix_nixcli::is_storage_error(err) {
            Self::Waiting(format!("waiting: state directory full: {what}: {err}"))
        } else {
            Self::Transient(format!("{what}: {err}"))
        }
    }

    /// Returns the end of an attempt whose Nix call failed with `err`.
    fn nix_error(context: &str, err: &reconix_nixcli::Error) -> Self {
        let reason = format!("{context}{}", crate::runtime::error_chain(err));
        if err.is_storage_full() {
            Self::Waiting(format!("waiting: state directory full: {reason}"))
        } else {
            Self::transient(reason)
        }
    }
}

/// Returns what is recorded for outputs whose `nix-support/` reads as `report`: the build
/// fails with output when any has `nix-support/failed` (the message is
/// [`reconix_status::FAILED_WITH_OUTPUT`]), and its products and release name are kept either
/// way.
pub(super) fn built_outputs(report: OutputsReport) -> BuiltOutputs {
    BuiltOutputs {
        failed: report.failed,
        release_name: report.release_name,
        products: report
            .products
            .into_iter()
            .map(|p| BuildProduct {
                kind: p.kind,
                subtype: p.subtype,
                path: p.path,
                default_path: p.default_path,
            })
            .collect(),
    }
}

/// Returns the outputs of a build in the order their `nix-support/` is read: `out` first (its
/// release name wins), then by name.
fn outputs_in_order(outputs: &BTreeMap<String, StorePath>) -> Vec<StorePath> {
    let mut ordered: Vec<(&String, &StorePath)> = outputs.iter().collect();
    ordered.sort_by_key(|(name, _)| name.as_str() != "out");
    ordered.into_iter().map(|(_, path)| path.clone()).collect()
}

/// Ends an attempt whose build succeeded for Nix: reads what its outputs say in
/// `nix-support/` (a failure to read them is a transient failure: the result is not known).
async fn built<N: Nix>(
    nix: &N,
    metrics: &Metrics,
    exit_code: Option<i32>,
    outputs: &BTreeMap<String, StorePath>,
) -> Ended {
    let began = tokio::time::Instant::now();
    let inspected = nix.inspect_outputs(&outputs_in_order(outputs)).await;
    metrics.record_build_phase(BuildPhase::Outputs, began.elapsed());
    match inspected {
        Ok(report) => {
            if !report.rejected_products.is_empty() {
                warn!(lines = ?report.rejected_products, "ignoring malformed lines of nix-support/hydra-build-products");
            }
            Ended::Built {
                exit_code,
                outputs: built_outputs(report),
            }
        }
        Err(err) => Ended::nix_error("cannot read the outputs' nix-support: ", &err),
    }
}

/// Returns how long a build waits for room after its `waits`-th wait in a row: 1 s doubling up
/// to 30 s, so it resumes soon after space returns without spinning while the disk is full.
pub(super) fn wait_backoff(waits: u32) -> Duration {
    crate::runtime::doubling(
        waits.saturating_add(1),
        Duration::from_secs(1),
        Duration::from_secs(30),
    )
}

/// What is recorded for an attempt that ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    /// The build's result, final for this attempt.
    Finish {
        state: BuildState,
        exit_code: Option<i32>,
        error: Option<String>,
    },
    /// The build succeeded for Nix, with what its outputs say.
    Built {
        exit_code: Option<i32>,
        outputs: BuiltOutputs,
    },
    /// Requeued after a transient failure (the attempt counts), with the reason.
    Retry(String),
    /// Requeued to wait for room on a full disk (the attempt does not count), with the reason.
    Wait(String),
}

impl Verdict {
    /// Returns the recorded result's state, when there is one (for the metrics).
    fn state(&self) -> Option<BuildState> {
        match self {
            Self::Finish { state, .. } => Some(*state),
            // A failure with output counts as a failure.
            Self::Built { outputs, .. } if outputs.failed => Some(BuildState::Failed),
            Self::Built { .. } => Some(BuildState::Succeeded),
            Self::Retry(_) | Self::Wait(_) => None,
        }
    }
}

/// What to record for `ended` after attempt number `attempts` (1-based), with `retries` more
/// attempts allowed after transient failures.
pub(super) fn verdict(ended: Ended, attempts: u32, retries: u32) -> Verdict {
    match ended {
        Ended::Result {
            state,
            exit_code,
            error,
        } => Verdict::Finish {
            state,
            exit_code,
            error,
        },
        Ended::Built { exit_code, outputs } => Verdict::Built { exit_code, outputs },
        // A wait never uses up attempts: it is requeued whatever the count.
        Ended::Waiting(reason) => Verdict::Wait(reason),
        Ended::Transient(reason) if attempts <= retries => Verdict::Retry(reason),
        Ended::Transient(reason) => Verdict::Finish {
            state: BuildState::Failed,
            exit_code: None,
            error: Some(format!(
                "gave up after {attempts} attempt{}: {reason}",
                if attempts == 1 { "" } else { "s" }
            )),
        },
    }
}

pub(super) async fn dispatch<P: Ports>(cx: &Ctx<P>, attempt: Attempt) -> Result<()> {
    let began = tokio::time::Instant::now();
    let drv_path = attempt.drv_path.clone();
    let Some(cancel) = cx.running.start(&drv_path, &attempt.builder) else {
        return Ok(());
    };
    // An agent that left since the plan: nothing is recorded, the next plan places it again.
    let conn = if attempt.builder.is_local() {
        None
    } else {
        match cx.agents.get(&attempt.builder) {
            Some(conn) if !conn.is_closed() => Some(conn),
            _ => {
                cx.running.finish(&drv_path);
                cx.wakers.builds();
                return Ok(());
            }
        }
    };
    let log_file = cx
        .state_dir()
        .join("logs")
        // The hash keeps builds of same-named derivations (every commit's `hello.drv`) apart.
        .join(format!("{}-{}.log", drv_path.hash_part(), drv_path.name()));
    let (drv, builder, log, jobs) = (
        drv_path.clone(),
        attempt.builder.clone(),
        log_file.clone(),
        attempt.jobs.clone(),
    );
    let recorded = cx
        .status
        .call(move |db| {
            let now = Timestamp::now();
            // A drv whose build already succeeded or failed is never built again (applying a
            // step twice must end in the same state); the next plan moves its jobs on.
            if db.build_by_drv(&drv)?.is_some_and(|b| b.state.is_final()) {
                return Ok(None);
            }
            db.upsert_build(&drv, Some(&builder), BuildState::Running, now)?;
            // Known from the start, so the log can be read while the build runs.
            db.record_build_log(&drv, &log, 0, now)?;
            for job in &jobs {
                db.set_job_state(*job, JobState::Building, None, now)?;
            }
            Ok(db.build_by_drv(&drv)?.map(|b| (b.attempts, b.waits)))
        })
        .await;
    let (attempts, waits) = match recorded {
        Ok(Some(counts)) => counts,
        Ok(None) => {
            cx.running.finish(&drv_path);
            cx.wakers.builds();
            return Ok(());
        }
        Err(err) => {
            cx.running.finish(&drv_path);
            return Err(err.into());
        }
    };
    cx.metrics
        .record_build_phase(BuildPhase::Start, began.elapsed());
    cx.wakers.all_statuses();
    info!(drv = %drv_path, builder = %attempt.builder, attempt = attempts, "build started");
    let retries = cx.spec().builders.transient_retries;
    let (nix, status, running, wakers, metrics) = (
        cx.ports.nix().clone(),
        cx.status.clone(),
        cx.running.clone(),
        cx.wakers.clone(),
        cx.metrics.clone(),
    );
    let (closures, tasks) = (cx.closures.clone(), cx.tasks.clone());
    cx.tasks.spawn(async move {
        let since = tokio::time::Instant::now();
        let (ended, kind) = match conn {
            None => (
                build_locally(&nix, &metrics, &attempt, log_file, cancel).await,
                BuilderKind::Local,
            ),
            Some(conn) => (
                build_on_agent(&nix, &metrics, &conn, &attempt, &log_file, cancel).await,
                BuilderKind::Agent,
            ),
        };
        metrics.record_build_phase(BuildPhase::Build, since.elapsed());
        let (drv, builder) = (attempt.drv_path.clone(), attempt.builder.clone());
        let outcome = verdict(ended, attempts, retries);
        metrics.record_build(kind, outcome.state(), since.elapsed());
        match &outcome {
            Verdict::Finish { state, error, .. } => {
                info!(drv = %drv, builder = %builder, state = state.as_str(), error = error.as_deref().unwrap_or(""), "build ended");
            }
            Verdict::Built { outputs, .. } => {
                let error = if outputs.failed { FAILED_WITH_OUTPUT } else { "" };
                info!(drv = %drv, builder = %builder, state = "succeeded", error, products = outputs.products.len(), "build ended");
            }
            Verdict::Retry(reason) => {
                warn!(drv = %drv, builder = %builder, attempt = attempts, %reason, "build interrupted: requeued");
            }
            Verdict::Wait(reason) => {
                metrics.record_storage_full(Timestamp::now());
                warn!(drv = %drv, builder = %builder, waits = waits + 1, %reason, "build waits for room on a full disk");
            }
        }
        // A failure with output has outputs too: their size is worth showing.
        let succeeded = matches!(outcome, Verdict::Built { .. });
        let retry_at = Timestamp::now().plus(wait_backoff(waits));
        let recording = tokio::time::Instant::now();
        record(&status, drv.clone(), builder, outcome, retry_at).await;
        metrics.record_build_phase(BuildPhase::Record, recording.elapsed());
        // Record first, then leave the running set (see the module docs).
        running.finish(&drv);
        wakers.builds();
        wakers.all_statuses();
        // `gcroots` and the caches are woken when the builds loop moves the jobs on. Closure
        // sizes are measured in batches, off this path: the next build does not wait for them.
        if succeeded {
            closures.measure(drv, &nix, &status, &metrics, &tasks);
        }
    });
    Ok(())
}

/// Records an attempt's end: its result, the requeue, or the wait (until `retry_at`). While the
/// database is full this is tried again with backoff: the build stays in the running set
/// meanwhile, so it is neither dispatched again nor lost.
async fn record(
    status: &Status,
    drv: StorePath,
    builder: BuilderName,
    outcome: Verdict,
    retry_at: Timestamp,
) {
    let mut tries = 0u32;
    loop {
        let (d, b, o) = (drv.clone(), builder.clone(), outcome.clone());
        let recorded = status
            .call(move |db| {
                let now = Timestamp::now();
                match o {
                    Verdict::Finish {
                        state,
                        exit_code,
                        error,
                    } => db
                        .finish_build(&d, state, exit_code, error.as_deref(), None, now)
                        .map(drop),
                    Verdict::Built { exit_code, outputs } => {
                        db.finish_built(&d, exit_code, &outputs, now).map(drop)
                    }
                    Verdict::Wait(reason) => db
                        .requeue_build(&d, &b, &reason, Requeue::Wait { retry_at }, now)
                        .map(drop),
                    Verdict::Retry(reason) => db
                        .requeue_build(&d, &b, &reason, Requeue::Retry, now)
                        .map(drop),
                }
            })
            .await;
        match recorded {
            Ok(()) => return,
            Err(err) if err.is_storage_full() => {
                tries += 1;
                if tries == 1 {
                    warn!(drv = %drv, error = %err, "cannot record the build's end: the state directory is full; trying again");
                }
                tokio::time::sleep(wait_backoff(tries)).await;
            }
            Err(err) => {
                warn!(drv = %drv, error = %err, "could not record build result; it will run again");
                return;
            }
        }
    }
}

async fn build_locally<N: Nix>(
    nix: &N,
    metrics: &Metrics,
    attempt: &Attempt,
    log_file: PathBuf,
    cancel: CancellationToken,
) -> Ended {
    let request = BuildRequest {
        drv_path: attempt.drv_path.clone(),
        gc_root: Some(attempt.gc_root.clone()),
        timeout: Some(attempt.timeout),
        max_silent: Some(attempt.max_silent),
        log_file,
    };
    match nix.realise(request, cancel).await {
        Ok(o) => {
            let state = match o.status {
                BuildStatus::Succeeded => {
                    return built(nix, metrics, o.exit_code, &o.outputs).await;
                }
                BuildStatus::Failed => BuildState::Failed,
                BuildStatus::TimedOut => BuildState::TimedOut,
                BuildStatus::Cancelled => BuildState::Cancelled,
                // Nix itself failed (store trouble, a missing drv, killed): worth another try.
                BuildStatus::Error => {
                    return Ended::transient(o.message.unwrap_or_else(|| "nix failed".to_owned()));
                }
            };
            Ended::Result {
                state,
                exit_code: o.exit_code,
                error: o.message,
            }
        }
        Err(err) => Ended::nix_error("", &err),
    }
}

/// Builds on an agent: a serve channel on its connection, the input closure sent, the build
/// run there, the outputs copied back and rooted here; the channel's stderr is the log.
async fn build_on_agent<N: Nix>(
    nix: &N,
    metrics: &Metrics,
    conn: &Arc<AgentConn>,
    attempt: &Attempt,
    log_file: &Path,
    cancel: CancellationToken,
) -> Ended {
    let agent = conn.name().to_string();
    let channel = match conn.open_serve().await {
        Ok(c) => c,
        Err(err) => return Ended::Transient(format!("agent {agent}: {err}")),
    };
    if let Some(dir) = log_file.parent()
        && let Err(err) = tokio::fs::create_dir_all(dir).await
    {
        return Ended::local_io(&format!("cannot create {}", dir.display()), &err);
    }
    let cannot_write = || format!("cannot write {}", log_file.display());
    let mut log = match tokio::fs::File::create(log_file).await {
        Ok(f) => f,
        Err(err) => return Ended::local_io(&cannot_write(), &err),
    };
    let header = format!("reconix: building on agent {agent}\n");
    if let Err(err) = log.write_all(header.as_bytes()).await {
        return Ended::local_io(&cannot_write(), &err);
    }
    // The log must be read while the build runs (the connection multiplexes every channel).
    let mut stderr = channel.log;
    let mut copier = tokio::spawn(async move {
        let copied = tokio::io::copy(&mut stderr, &mut log).await;
        let _ = log.flush().await;
        copied
    });
    let handshake =
        ServeClient::handshake(tokio::io::BufReader::new(channel.reader), channel.writer).await;
    let mut client = match handshake {
        Ok(c) => c,
        Err(e) => {
            // Dropping the log too closes the channel.
            copier.abort();
            return Ended::Transient(format!("agent {agent}: serve handshake: {e}"));
        }
    };
    let settings = BuildSettings {
        max_silent_time: attempt.max_silent.as_secs(),
        build_timeout: attempt.timeout.as_secs(),
        max_log_size: 0,
    };
    let outcome = tokio::select! {
        o = nix.build_remote(&mut client, &attempt.drv_path, &settings, Some(&attempt.gc_root)) => o,
        () = cancel.cancelled() => {
            copier.abort();
            return Ended::Result { state: BuildState::Cancelled, exit_code: None, error: Some("cancelled".to_owned()) };
        }
    };
    // EOF on its stdin ends `nix-store --serve` on the agent, which ends the log; the channel
    // closes once every part of it is dropped (the slot on the agent is then free again).
    let (_, mut writer) = client.into_inner();
    let _ = writer.shutdown().await;
    drop(writer);
    if tokio::time::timeout(Duration::from_secs(10), &mut copier)
        .await
        .is_err()
    {
        copier.abort();
        warn!(drv = %attempt.drv_path, "the build log did not end after the build");
    }
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => return Ended::nix_error(&format!("agent {agent}: "), &e),
    };
    match outcome.status {
        // Rooted by `build_remote`, before a collection could take them.
        RemoteBuildStatus::Built => built(nix, metrics, None, &outcome.outputs).await,
        RemoteBuildStatus::Failed { status, message } if status.is_transient() => {
            Ended::Transient(format!("agent {agent}: {message}"))
        }
        RemoteBuildStatus::Failed { message, .. } => Ended::Result {
            state: BuildState::Failed,
            exit_code: None,
            error: Some(message),
        },
        RemoteBuildStatus::TimedOut { message } => Ended::Result {
            state: BuildState::TimedOut,
            exit_code: None,
            error: Some(message),
        },
    }
}
