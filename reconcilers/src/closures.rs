//! Closure sizes of succeeded builds, measured in batches off the build path.
//!
//! A build that succeeded is queued here after it has left the running set. One task at a
//! time measures what is queued, `BATCH_WINDOW` (a second) after the first of a batch arrived: the
//! outputs of every queued build with one [`Nix::closure`] query (their closures' union: two
//! questions on a pooled build channel, or one `nix path-info --json --recursive` when builds
//! run as processes), each build's size summed from that, and all sizes recorded in one
//! transaction. Builds that succeed meanwhile join the batch or wait for the next, so a busy
//! builder costs one query per batch, not one per build, and no build waits for its size. When
//! the query fails (an output gone), each build of the batch is measured alone. The task ends
//! when the queue is empty (nothing outlives the work, and shutdown does not wait for an idle
//! loop).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use reconix_nixcli::{Nix, closure_size};
use reconix_spec::StorePath;
use reconix_status::{BuildPhase, Metrics, Status};
use tracing::warn;

use crate::Error;
use crate::runtime::Tasks;

/// The most builds one query measures: keeps the command line small.
const MAX_BATCH: usize = 256;

/// How long a batch waits for more builds to join it before it is measured: a batch then
/// holds every build that ended within a second (a `nix path-info` process costs some 25 ms
/// of CPU that builds on a busy machine would otherwise get; a channel's answer well under
/// 1 ms). A size appears on the pages up to this much later; no build waits for it.
const BATCH_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

/// Builds waiting for their closure size, and whether a task is measuring.
#[derive(Debug, Clone, Default)]
pub struct ClosureQueue {
    state: Arc<Mutex<Queued>>,
}

#[derive(Debug, Default)]
struct Queued {
    drvs: Vec<StorePath>,
    measuring: bool,
}

impl ClosureQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queued> {
        // The critical sections only push, take or flip a flag: a panic leaves it consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `drv`, whose build succeeded, and starts a measuring task unless one runs.
    pub fn measure<N: Nix + Clone>(
        &self,
        drv: StorePath,
        nix: &N,
        status: &Status,
        metrics: &Metrics,
        tasks: &Tasks,
    ) {
        {
            let mut queued = self.lock();
            queued.drvs.push(drv);
            if queued.measuring {
                return;
            }
            queued.measuring = true;
        }
        let (queue, nix, status, metrics) =
            (self.clone(), nix.clone(), status.clone(), metrics.clone());
        tasks.spawn(async move {
            loop {
                tokio::time::sleep(BATCH_WINDOW).await;
                let Some(batch) = queue.next_batch() else {
                    break;
                };
                let began = tokio::time::Instant::now();
                if let Err(err) = measure_batch(&nix, &status, batch.clone()).await {
                    // One output gone (or unreadable) fails the whole query: measure each
                    // build alone, so that only its own size is missing.
                    if batch.len() > 1 {
                        for drv in batch {
                            if let Err(err) = measure_batch(&nix, &status, vec![drv.clone()]).await {
                                warn!(drv = %drv, error = %err, "could not measure the closure of the build's outputs");
                            }
                        }
                    } else {
                        warn!(drvs = ?batch, error = %err, "could not measure the closure of the build's outputs");
                    }
                }
                metrics.record_build_phase(BuildPhase::Closure, began.elapsed());
            }
        });
    }

    /// Takes up to [`MAX_BATCH`] queued builds; `None` (and the task ends) when none is left.
    fn next_batch(&self) -> Option<Vec<StorePath>> {
        let mut queued = self.lock();
        if queued.drvs.is_empty() {
            queued.measuring = false;
            return None;
        }
        let n = queued.drvs.len().min(MAX_BATCH);
        Some(queued.drvs.drain(..n).collect())
    }
}

/// Measures and records the closure sizes of `drvs`' outputs with one query. A failure is
/// returned for the caller to log: the size is information, not part of a build's result.
async fn measure_batch<N: Nix>(
    nix: &N,
    status: &Status,
    drvs: Vec<StorePath>,
) -> Result<(), Error> {
    let outputs: Vec<(StorePath, Vec<StorePath>)> = status
        .call(move |db| {
            drvs.into_iter()
                .map(|d| db.outputs_of_drv(&d).map(|o| (d, o)))
                .collect()
        })
        .await?;
    let mut all: Vec<StorePath> = outputs.iter().flat_map(|(_, o)| o.clone()).collect();
    all.sort();
    all.dedup();
    if all.is_empty() {
        return Ok(());
    }
    let closure = nix.closure(&all).await?;
    let sizes = sizes(&closure, outputs);
    status
        .call(move |db| {
            for (drv, bytes) in &sizes {
                match db.record_closure_size(drv, *bytes) {
                    // Purged since it succeeded: nothing to show the size on.
                    Ok(()) | Err(reconix_status::Error::NotFound { .. }) => {}
                    Err(err) => return Err(err),
                }
            }
            Ok(())
        })
        .await?;
    Ok(())
}

/// Each build's closure size, from the closure of all their outputs together.
fn sizes(
    closure: &BTreeMap<StorePath, reconix_nixcli::PathSize>,
    outputs: Vec<(StorePath, Vec<StorePath>)>,
) -> Vec<(StorePath, u64)> {
    outputs
        .into_iter()
        .filter(|(_, o)| !o.is_empty())
        .map(|(drv, o)| {
            let bytes = closure_size(closure, &o);
            (drv, bytes)
        })
        .collect()
}
