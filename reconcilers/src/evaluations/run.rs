//! One running evaluation, as a task of its own: it streams what Nix reports into the status
//! database, ends at its timeout, and stops at once when cancelled.
//!
//! The task owns the future of [`Nix::evaluate_streaming`]; returning from [`Run::run`]
//! drops it, which kills every evaluator process it started (`kill_on_drop`). That is how
//! both the timeout and a supersede stop the evaluation: no process outlives its task.
//!
//! Events are coalesced: the task drains every event queued, writes them in one transaction,
//! then lets [`WRITE_INTERVAL`] pass before the next write, so a flood of events costs a few
//! writes a second however many attributes arrive. The final outcome is recorded as before
//! and is authoritative (complete dependencies, aggregates resolved); the status database
//! merges it with what was streamed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use reconix_nixcli::{EvalEvent, EvalRequest, Nix};
use reconix_spec::{RepoKey, Timestamp};
use reconix_status::{EvaluationId, EvaluationState, JobState, NewStreamedJob, Status};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::record::{new_job, new_jobs, no_jobs_message};
use crate::Result;
use crate::context::Wakers;

/// The least time between two writes of streamed events of one evaluation.
pub const WRITE_INTERVAL: Duration = Duration::from_millis(200);

/// The builds loop is woken at most this often while an evaluation streams buildable jobs.
const BUILDS_WAKE_EVERY: Duration = Duration::from_secs(1);

/// The evaluations this process runs, by id, each with the token that stops it. Cheap to
/// clone; clones share the set.
#[derive(Debug, Default, Clone)]
pub struct RunningEvaluations {
    inner: Arc<Mutex<HashMap<EvaluationId, CancellationToken>>>,
}

impl RunningEvaluations {
    /// Returns the ids of the evaluations running.
    pub fn ids(&self) -> HashSet<EvaluationId> {
        self.lock().keys().copied().collect()
    }

    /// Registers evaluation `id`; returns its token, or `None` when it already runs.
    pub(super) fn start(&self, id: EvaluationId) -> Option<CancellationToken> {
        let mut map = self.lock();
        if map.contains_key(&id) {
            return None;
        }
        let token = CancellationToken::new();
        map.insert(id, token.clone());
        Some(token)
    }

    /// Stops evaluation `id` if it runs (its task ends at its next await).
    pub(super) fn stop(&self, id: EvaluationId) {
        if let Some(token) = self.lock().get(&id) {
            token.cancel();
        }
    }

    /// Stops every running evaluation (the loop is going away).
    pub(super) fn stop_all(&self) {
        for token in self.lock().values() {
            token.cancel();
        }
    }

    fn finish(&self, id: EvaluationId) {
        self.lock().remove(&id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<EvaluationId, CancellationToken>> {
        // A poisoned lock only means a panic elsewhere while holding it; the map stays usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Everything one evaluation task needs, owned (it outlives the reconcile that started it).
#[derive(Debug)]
pub(super) struct Run<N> {
    pub id: EvaluationId,
    pub key: RepoKey,
    pub request: EvalRequest,
    pub repo: reconix_spec::Repo,
    pub timeout: reconix_spec::Duration,
    pub nix: N,
    pub status: Status,
    pub wakers: Wakers,
    pub running: RunningEvaluations,
    pub cancel: CancellationToken,
}

/// What the task remembers between writes.
#[derive(Debug, Default)]
struct Seen {
    /// When the builds loop was last woken for buildable jobs, and whether buildable jobs
    /// arrived since: it is woken at most every [`BUILDS_WAKE_EVERY`] (each wake reads every
    /// unfinished job, so waking it at each write of a large evaluation would cost the
    /// evaluators the CPU they need).
    builds_woken: Option<Instant>,
    builds_pending: bool,
}

impl<N: Nix> Run<N> {
    /// Runs the evaluation to its end (recorded), its timeout, or its cancellation, then
    /// leaves the running set. An error (the database, Nix that cannot be run) leaves the row
    /// `evaluating`: the loop's next run starts it again.
    pub(super) async fn run(self) {
        let (id, key) = (self.id, self.key.clone());
        let (running, wakers) = (self.running.clone(), self.wakers.clone());
        let result = self.evaluate().await;
        running.finish(id);
        match result {
            // The loop may now supersede the evaluation this one replaces (see `plan`).
            Ok(()) => wakers.evaluations(key),
            // Not woken: the loop's next regular run starts it again, so a Nix that cannot
            // be run is not retried in a tight loop.
            Err(err) => {
                warn!(repo = %key, evaluation = %id, error = %err, "evaluation failed to run");
            }
        }
    }

    async fn evaluate(self) -> Result<()> {
        let (events, mut rx) = mpsc::unbounded_channel();
        // Boxed so that the timeout can drop it (and kill its processes) before writing.
        let mut evaluation = Box::pin(self.nix.evaluate_streaming(self.request.clone(), events));
        let deadline = tokio::time::sleep(self.timeout.to_std());
        tokio::pin!(deadline);
        let throttle = tokio::time::sleep_until(Instant::now());
        tokio::pin!(throttle);
        let mut seen = Seen::default();
        let mut events_open = true;
        let outcome = loop {
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => {
                    info!(repo = %self.key, evaluation = %self.id, "evaluation stopped");
                    return Ok(());
                }
                () = &mut deadline => {
                    // Drop the evaluation first: its processes die now, not after the writes.
                    drop(evaluation);
                    let pending = drain(&mut rx, None);
                    self.write(pending, &mut seen).await?;
                    return self.time_out().await;
                }
                outcome = &mut evaluation => break outcome,
                () = &mut throttle, if !throttle.is_elapsed() => {}
                // Buildable jobs held back by the wake limit: wake the builds loop when due,
                // even if no more events come for a while (a slow attribute).
                () = tokio::time::sleep_until(
                    seen.builds_woken.map_or_else(Instant::now, |t| t + BUILDS_WAKE_EVERY)
                ), if seen.builds_pending => {
                    seen.builds_pending = false;
                    seen.builds_woken = Some(Instant::now());
                    self.wakers.builds();
                }
                first = rx.recv(), if events_open && throttle.is_elapsed() => {
                    let Some(first) = first else {
                        events_open = false;
                        continue;
                    };
                    let batch = drain(&mut rx, Some(first));
                    self.write(batch, &mut seen).await?;
                    throttle.as_mut().reset(Instant::now() + WRITE_INTERVAL);
                }
            }
        };
        self.finish(outcome).await
    }

    /// Writes streamed events in one transaction; wakes the builds loop when a job may be
    /// built now. A batch the database refuses is logged and skipped: the final result
    /// records every job anyway.
    async fn write(&self, events: Vec<EvalEvent>, seen: &mut Seen) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut listed = None;
        // By attribute, the last report winning: the database refuses a batch naming one
        // attribute twice.
        let mut jobs: BTreeMap<reconix_spec::AttrPath, NewStreamedJob> = BTreeMap::new();
        for event in events {
            match event {
                EvalEvent::Listed { attributes } => listed = Some(attributes),
                EvalEvent::Evaluated(batch) => {
                    for s in batch {
                        jobs.insert(
                            s.job.attr.clone(),
                            NewStreamedJob {
                                job: new_job(s.job),
                                buildable: s.buildable,
                            },
                        );
                    }
                }
            }
        }
        let buildable = jobs
            .values()
            .any(|s| s.buildable && s.job.state == JobState::Queued);
        let jobs: Vec<NewStreamedJob> = jobs.into_values().collect();
        let id = self.id;
        let written = self
            .status
            .call(move |db| {
                if let Some(n) = listed {
                    db.record_evaluation_listed(id, u64::try_from(n).unwrap_or(u64::MAX))?;
                }
                if jobs.is_empty() {
                    return Ok(true);
                }
                db.record_streamed_jobs(id, &jobs, Timestamp::now())
            })
            .await;
        match written {
            // The loop's select wakes the builds loop: at once when due, else when it is.
            Ok(true) => seen.builds_pending |= buildable,
            Ok(false) => {}
            Err(err @ reconix_status::Error::Invalid { .. }) => {
                warn!(repo = %self.key, evaluation = %id, error = %err, "streamed jobs refused");
            }
            Err(err) => return Err(err.into()),
        }
        Ok(())
    }

    /// Ends the evaluation `failed` with a message naming how far it got (as recorded),
    /// keeping its jobs.
    async fn time_out(&self) -> Result<()> {
        let (id, timeout) = (self.id, self.timeout);
        let message = self
            .status
            .call(move |db| {
                let progress = db.evaluation_progress(id)?;
                let message = format!(
                    "evaluation timed out after {timeout}: {} of {} attributes evaluated \
                     (evaluation.timeout / eval-timeout)",
                    progress.map_or(0, |p| p.evaluated),
                    progress.map_or_else(|| "?".to_owned(), |p| p.attributes.to_string())
                );
                db.time_out_evaluation(id, &message, Timestamp::now())?;
                Ok(message)
            })
            .await?;
        warn!(repo = %self.key, evaluation = %self.id, error = %message, "evaluation timed out");
        self.wakers.builds();
        self.wakers.statuses(self.key.clone());
        Ok(())
    }

    /// Records the final outcome, as the evaluation loop always did.
    async fn finish(
        &self,
        outcome: reconix_nixcli::Result<reconix_nixcli::EvalOutcome>,
    ) -> Result<()> {
        let id = self.id;
        let key = &self.key;
        match outcome {
            Ok(outcome) => {
                let reconix_nixcli::EvalOutcome {
                    jobs,
                    duration,
                    nix_calls,
                    flake_outputs,
                } = outcome;
                let jobs = new_jobs(jobs);
                let (total, failed) = (
                    jobs.len(),
                    jobs.iter()
                        .filter(|j| j.state == JobState::EvalFailed)
                        .count(),
                );
                let nothing = no_jobs_message(&self.repo, &jobs, &flake_outputs);
                if let Some(message) = &nothing {
                    warn!(repo = %key, evaluation = %id, error = %message, "evaluation found no jobs");
                }
                self.status
                    .call(move |db| match nothing {
                        Some(message) => {
                            db.record_evaluation_without_jobs(id, &jobs, &message, Timestamp::now())
                        }
                        None => db.record_evaluation_result(id, &jobs, Timestamp::now()),
                    })
                    .await?;
                info!(
                    repo = %key, evaluation = %id, jobs = total, eval_failed = failed,
                    elapsed_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
                    nix_calls, "evaluation recorded"
                );
                self.wakers.builds();
            }
            Err(reconix_nixcli::Error::FlakeEval { message }) => {
                warn!(repo = %key, evaluation = %id, error = %message, "evaluation failed");
                self.status
                    .call(move |db| {
                        db.set_evaluation_state(
                            id,
                            EvaluationState::Failed,
                            Some(&message),
                            Timestamp::now(),
                        )
                    })
                    .await?;
            }
            Err(err) => return Err(err.into()),
        }
        self.wakers.statuses(key.clone());
        Ok(())
    }
}

/// Returns `first` (if any) and every event queued behind it.
fn drain(rx: &mut mpsc::UnboundedReceiver<EvalEvent>, first: Option<EvalEvent>) -> Vec<EvalEvent> {
    let mut events: Vec<EvalEvent> = first.into_iter().collect();
    while let Ok(event) = rx.try_recv() {
        events.push(event);
    }
    events
}
