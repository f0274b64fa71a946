//! `FakeNix`: a scripted, in-memory [`Nix`] for tests of the code above this crate.
//!
//! Evaluations are scripted per flake reference and builds per derivation; every call is
//! recorded. A build can be *held*: its `realise` then waits (still honouring cancellation)
//! until the test releases it, so the "building" state can be observed deterministically.
//!
//! Evaluations stream as the real one does: `Listed`, then the scripted jobs as one batch, or
//! the batches scripted with [`FakeNix::set_evaluation_stream`]. An evaluation can be held too
//! ([`FakeNix::hold_evaluation`]): after its events it waits for
//! [`FakeNix::release_evaluation`], and an evaluation future dropped before it returned (a
//! timeout, a supersede: what kills the real evaluator processes) is recorded, see
//! [`FakeNix::dropped_evaluations`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use reconix_spec::names::StorePath;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::fs::create_parent;
use crate::port::{
    BuildOutcome, BuildRequest, BuildStatus, EvalEvent, EvalJob, EvalOutcome, EvalRequest, Nix,
    OutputsReport, PathSize, StreamedJob,
};
use crate::serve::{BuildSettings, RemoteBuildOutcome, RemoteBuildStatus, ServeClient};
use crate::{Error, Result};

/// One call made to a [`FakeNix`], in the order they were made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// [`Nix::evaluate`].
    Evaluate(EvalRequest),
    /// [`Nix::realise`] (recorded when it starts).
    Realise(BuildRequest),
    /// [`Nix::add_root`].
    AddRoot {
        /// The root link.
        link: PathBuf,
        /// The rooted path.
        path: StorePath,
    },
    /// [`Nix::is_valid`].
    IsValid(Vec<StorePath>),
    /// [`Nix::build_remote`] (the derivation).
    BuildRemote(StorePath),
    /// [`Nix::closure`].
    Closure(Vec<StorePath>),
    /// [`Nix::copy_to`].
    CopyTo {
        /// The cache URL.
        to: String,
        /// The paths asked for.
        paths: Vec<StorePath>,
    },
    /// [`Nix::collect_garbage`].
    CollectGarbage,
    /// [`Nix::inspect_outputs`].
    InspectOutputs(Vec<StorePath>),
    /// [`Nix::version`].
    Version,
}

/// A scripted evaluation result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeEvaluation {
    /// The evaluation succeeds with these jobs.
    Jobs(Vec<EvalJob>),
    /// The flake as a whole fails ([`Error::FlakeEval`] with this message).
    FlakeError(String),
}

/// A scripted [`Nix`]. Cheap to clone; clones share their state.
///
/// Defaults: an unscripted evaluation fails as a broken flake; an unscripted build succeeds
/// with the outputs any scripted job gives its derivation; succeeded outputs become valid.
#[derive(Debug, Clone, Default)]
pub struct FakeNix {
    state: Arc<Mutex<State>>,
    /// Woken on every recorded call.
    called: Arc<Notify>,
}

#[derive(Debug, Default)]
struct State {
    evaluations: HashMap<String, FakeEvaluation>,
    builds: HashMap<StorePath, BuildOutcome>,
    remote_builds: HashMap<StorePath, RemoteBuildOutcome>,
    logs: HashMap<StorePath, String>,
    gates: HashMap<StorePath, watch::Sender<bool>>,
    valid: HashSet<StorePath>,
    calls: Vec<Call>,
    version: Option<String>,
    sizes: HashMap<StorePath, PathSize>,
    /// URL prefix → the error copies to it fail with.
    copy_failures: HashMap<String, String>,
    /// URL → paths copied there (closures included).
    copied: HashMap<String, BTreeSet<StorePath>>,
    /// Output path → what its `nix-support/` says.
    reports: HashMap<StorePath, OutputsReport>,
    /// Flake reference → the batches its evaluation streams instead of one batch of all jobs.
    streams: HashMap<String, Vec<Vec<StreamedJob>>>,
    /// Flake reference → the gate its evaluation waits at after streaming.
    evaluation_gates: HashMap<String, watch::Sender<bool>>,
    /// Flake references of evaluations whose future was dropped before it returned.
    dropped: Vec<String>,
}

impl State {
    /// The closure of `paths` as scripted by [`FakeNix::set_path_size`].
    fn closure(&self, paths: &[StorePath]) -> Result<BTreeMap<StorePath, PathSize>> {
        let mut closure = BTreeMap::new();
        let mut stack = paths.to_vec();
        while let Some(path) = stack.pop() {
            if closure.contains_key(&path) {
                continue;
            }
            if !self.valid.contains(&path) && !self.sizes.contains_key(&path) {
                return Err(Error::InvalidPath {
                    path: path.to_string(),
                });
            }
            let size = self.sizes.get(&path).cloned().unwrap_or_default();
            stack.extend(size.references.iter().cloned());
            closure.insert(path, size);
        }
        Ok(closure)
    }
}

impl FakeNix {
    /// Creates a fake with nothing scripted.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock has failed already; keep going.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, call: Call) {
        self.state().calls.push(call);
        self.called.notify_waiters();
    }

    /// Scripts the result of evaluating `flake_ref` (replacing any earlier script).
    pub fn set_evaluation(&self, flake_ref: impl Into<String>, evaluation: FakeEvaluation) {
        self.state()
            .evaluations
            .insert(flake_ref.into(), evaluation);
    }

    /// Scripts the outcome of building `drv` (replacing any earlier script).
    pub fn set_build(&self, drv: StorePath, outcome: BuildOutcome) {
        self.state().builds.insert(drv, outcome);
    }

    /// Scripts the outcome of building `drv` remotely (replacing any earlier script); an
    /// unscripted remote build is an error, since the fake cannot build anything. The client
    /// passed to [`Nix::build_remote`] is not used.
    pub fn set_remote_build(&self, drv: StorePath, outcome: RemoteBuildOutcome) {
        self.state().remote_builds.insert(drv, outcome);
    }

    /// Scripts the text written to the log file when `drv` is built.
    pub fn set_log(&self, drv: StorePath, text: impl Into<String>) {
        self.state().logs.insert(drv, text.into());
    }

    /// Scripts what [`Nix::closure`] says about `path` (unscripted valid paths have size 0
    /// and no references).
    pub fn set_path_size(&self, path: StorePath, size: PathSize) {
        self.state().sizes.insert(path, size);
    }

    /// Makes [`Nix::copy_to`] fail with `message` for URLs starting with `prefix` (`None`
    /// lets them succeed again).
    pub fn set_copy_failure(&self, prefix: impl Into<String>, message: Option<String>) {
        let mut state = self.state();
        match message {
            Some(m) => state.copy_failures.insert(prefix.into(), m),
            None => state.copy_failures.remove(&prefix.into()),
        };
    }

    /// Returns the paths copied to `to` so far (closures included).
    pub fn copied(&self, to: &str) -> BTreeSet<StorePath> {
        self.state().copied.get(to).cloned().unwrap_or_default()
    }

    /// Scripts the batches the evaluation of `flake_ref` streams (`Listed` still counts the
    /// jobs scripted with [`set_evaluation`](Self::set_evaluation), which stay the outcome).
    pub fn set_evaluation_stream(
        &self,
        flake_ref: impl Into<String>,
        batches: Vec<Vec<StreamedJob>>,
    ) {
        self.state().streams.insert(flake_ref.into(), batches);
    }

    /// Makes evaluations of `flake_ref` wait, once they have streamed their events, until
    /// [`release_evaluation`](Self::release_evaluation) is called.
    pub fn hold_evaluation(&self, flake_ref: impl Into<String>) {
        self.state()
            .evaluation_gates
            .insert(flake_ref.into(), watch::channel(false).0);
    }

    /// Lets held evaluations of `flake_ref` (current and future) return.
    pub fn release_evaluation(&self, flake_ref: &str) {
        if let Some(gate) = self.state().evaluation_gates.get(flake_ref) {
            gate.send_replace(true);
        }
    }

    /// Returns the flake references of the evaluations whose future was dropped before it
    /// returned, in order.
    pub fn dropped_evaluations(&self) -> Vec<String> {
        self.state().dropped.clone()
    }

    /// Waits until an evaluation of `flake_ref` has been dropped (including before the call).
    pub async fn wait_for_dropped_evaluation(&self, flake_ref: &str) {
        loop {
            let notified = self.called.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.state().dropped.iter().any(|f| f == flake_ref) {
                return;
            }
            notified.await;
        }
    }

    /// Makes builds of `drv` wait in `realise` until [`release`](Self::release) is called.
    pub fn hold(&self, drv: StorePath) {
        self.state().gates.insert(drv, watch::channel(false).0);
    }

    /// Lets held builds of `drv` (current and future) finish.
    pub fn release(&self, drv: &StorePath) {
        if let Some(gate) = self.state().gates.get(drv) {
            gate.send_replace(true);
        }
    }

    /// Marks store paths as valid for [`Nix::is_valid`].
    pub fn set_valid(&self, paths: impl IntoIterator<Item = StorePath>) {
        self.state().valid.extend(paths);
    }

    /// Sets what [`Nix::version`] returns (default `2.8.0`).
    pub fn set_version(&self, version: impl Into<String>) {
        self.state().version = Some(version.into());
    }

    /// Returns every call made so far.
    pub fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    /// Returns the derivations `realise` was called with, in order.
    pub fn realised(&self) -> Vec<StorePath> {
        self.state()
            .calls
            .iter()
            .filter_map(|c| match c {
                Call::Realise(req) => Some(req.drv_path.clone()),
                _ => None,
            })
            .collect()
    }

    /// Waits until a recorded call matches `predicate` (including calls made before).
    pub async fn wait_for_call(&self, predicate: impl Fn(&Call) -> bool) {
        loop {
            // Register interest before checking, so that a call recorded in between still
            // wakes us (`notify_waiters` only wakes registered waiters).
            let notified = self.called.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.state().calls.iter().any(&predicate) {
                return;
            }
            notified.await;
        }
    }

    /// Scripts what [`Nix::inspect_outputs`] finds in `output` (by default: nothing).
    pub fn set_outputs_report(&self, output: StorePath, report: OutputsReport) {
        self.state().reports.insert(output, report);
    }

    /// Waits until `realise` has been called for `drv`.
    pub async fn wait_for_realise(&self, drv: &StorePath) {
        self.wait_for_call(|c| matches!(c, Call::Realise(req) if &req.drv_path == drv))
            .await;
    }

    fn default_outcome(&self, drv: &StorePath) -> BuildOutcome {
        let state = self.state();
        let outputs = state
            .evaluations
            .values()
            .filter_map(|e| match e {
                FakeEvaluation::Jobs(jobs) => Some(jobs),
                FakeEvaluation::FlakeError(_) => None,
            })
            .flatten()
            .filter_map(|j| j.result.as_ref().ok())
            .find(|d| &d.drv_path == drv)
            .map(|d| d.outputs.clone().into())
            .unwrap_or_default();
        BuildOutcome {
            status: BuildStatus::Succeeded,
            exit_code: Some(0),
            message: None,
            outputs,
        }
    }
}

impl Nix for FakeNix {
    /// Reports `Listed` with the number of scripted jobs, then the scripted batches or else
    /// the jobs as one batch (each buildable when it has no dependency and is no aggregate),
    /// waits while the evaluation is held, then returns the jobs.
    async fn evaluate_streaming(
        &self,
        req: EvalRequest,
        events: tokio::sync::mpsc::UnboundedSender<EvalEvent>,
    ) -> Result<EvalOutcome> {
        let flake_ref = req.flake_ref.clone();
        self.record(Call::Evaluate(req));
        let mut guard = DropGuard {
            nix: self.clone(),
            flake_ref: Some(flake_ref.clone()),
        };
        let (scripted, stream, gate) = {
            let state = self.state();
            (
                state.evaluations.get(&flake_ref).cloned(),
                state.streams.get(&flake_ref).cloned(),
                state
                    .evaluation_gates
                    .get(&flake_ref)
                    .map(watch::Sender::subscribe),
            )
        };
        let result = match scripted {
            Some(FakeEvaluation::Jobs(jobs)) => {
                let _ = events.send(EvalEvent::Listed {
                    attributes: jobs.len(),
                });
                let batches = stream.unwrap_or_else(|| {
                    vec![
                        jobs.iter()
                            .map(|job| StreamedJob {
                                buildable: job.result.as_ref().is_ok_and(|d| {
                                    d.deps.is_empty()
                                        && d.constituents.is_none()
                                        && d.skipped.is_none()
                                }),
                                job: job.clone(),
                            })
                            .collect(),
                    ]
                });
                for batch in batches {
                    let _ = events.send(EvalEvent::Evaluated(batch));
                }
                Ok(EvalOutcome {
                    jobs,
                    duration: Duration::ZERO,
                    nix_calls: 0,
                    flake_outputs: Vec::new(),
                })
            }
            Some(FakeEvaluation::FlakeError(message)) => Err(Error::FlakeEval { message }),
            None => Err(Error::FlakeEval {
                message: format!("FakeNix: no evaluation scripted for {flake_ref}"),
            }),
        };
        if let Some(mut gate) = gate {
            // An error means the gate was dropped: nothing can release it any more.
            let _ = gate.wait_for(|open| *open).await;
        }
        guard.flake_ref = None;
        result
    }

    async fn realise(&self, req: BuildRequest, cancel: CancellationToken) -> Result<BuildOutcome> {
        let drv = req.drv_path.clone();
        let log_file = req.log_file.clone();
        self.record(Call::Realise(req));
        let gate = self.state().gates.get(&drv).map(watch::Sender::subscribe);
        if let Some(mut gate) = gate {
            tokio::select! {
                () = cancel.cancelled() => return Ok(cancelled()),
                // An error means the gate was dropped: nothing can release it any more.
                _ = gate.wait_for(|open| *open) => {}
            }
        }
        if cancel.is_cancelled() {
            return Ok(cancelled());
        }
        let scripted = self.state().builds.get(&drv).cloned();
        let outcome = scripted.unwrap_or_else(|| self.default_outcome(&drv));
        let log = self
            .state()
            .logs
            .get(&drv)
            .cloned()
            .unwrap_or_else(|| format!("FakeNix: building {drv}\n"));
        create_parent(&log_file).await?;
        tokio::fs::write(&log_file, log)
            .await
            .map_err(|source| Error::Io {
                path: log_file,
                source,
            })?;
        if outcome.status == BuildStatus::Succeeded {
            self.state().valid.extend(outcome.outputs.values().cloned());
        }
        Ok(outcome)
    }

    async fn add_root(&self, link: &Path, path: &StorePath) -> Result<()> {
        self.record(Call::AddRoot {
            link: link.to_owned(),
            path: path.clone(),
        });
        // Like the real thing, leave a symlink to the store path (dangling here).
        create_parent(link).await?;
        let io = |source| Error::Io {
            path: link.to_owned(),
            source,
        };
        match tokio::fs::read_link(link).await {
            Ok(target) if target == Path::new(path.as_str()) => return Ok(()),
            Ok(_) => tokio::fs::remove_file(link).await.map_err(io)?,
            Err(_) => {}
        }
        tokio::fs::symlink(path.as_str(), link).await.map_err(io)
    }

    async fn is_valid(&self, paths: &[StorePath]) -> Result<Vec<bool>> {
        self.record(Call::IsValid(paths.to_vec()));
        let state = self.state();
        Ok(paths.iter().map(|p| state.valid.contains(p)).collect())
    }

    async fn build_remote<R, W>(
        &self,
        _client: &mut ServeClient<R, W>,
        drv_path: &StorePath,
        _settings: &BuildSettings,
        gc_root: Option<&Path>,
    ) -> Result<RemoteBuildOutcome>
    where
        R: AsyncRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send,
    {
        self.record(Call::BuildRemote(drv_path.clone()));
        let scripted = {
            let mut state = self.state();
            let scripted = state.remote_builds.get(drv_path).cloned();
            if let Some(outcome) = &scripted
                && outcome.status == RemoteBuildStatus::Built
            {
                state.valid.extend(outcome.outputs.values().cloned());
            }
            scripted
        };
        let Some(outcome) = scripted else {
            return Err(Error::Command {
                command: format!("FakeNix::build_remote {drv_path}"),
                status: "unsupported".to_owned(),
                message: format!("FakeNix cannot build remotely: nothing scripted for {drv_path}"),
            });
        };
        if let Some(root) = gc_root
            && outcome.status == RemoteBuildStatus::Built
        {
            for (name, path) in &outcome.outputs {
                self.add_root(&crate::output_link(root, name), path).await?;
            }
        }
        Ok(outcome)
    }

    async fn closure(&self, paths: &[StorePath]) -> Result<BTreeMap<StorePath, PathSize>> {
        self.record(Call::Closure(paths.to_vec()));
        self.state().closure(paths)
    }

    async fn copy_to(&self, to: &str, paths: &[StorePath], closure: bool) -> Result<()> {
        self.record(Call::CopyTo {
            to: to.to_owned(),
            paths: paths.to_vec(),
        });
        let mut state = self.state();
        let copied: Vec<StorePath> = if closure {
            state.closure(paths)?.into_keys().collect()
        } else {
            paths.to_vec()
        };
        if let Some((_, message)) = state
            .copy_failures
            .iter()
            .find(|(p, _)| to.starts_with(p.as_str()))
        {
            return Err(Error::Command {
                command: format!("FakeNix::copy_to {to}"),
                status: "exit code 1".to_owned(),
                message: message.clone(),
            });
        }
        state
            .copied
            .entry(to.to_owned())
            .or_default()
            .extend(copied);
        Ok(())
    }

    async fn collect_garbage(&self) -> Result<()> {
        self.record(Call::CollectGarbage);
        Ok(())
    }

    async fn inspect_outputs(&self, outputs: &[StorePath]) -> Result<OutputsReport> {
        self.record(Call::InspectOutputs(outputs.to_vec()));
        let state = self.state();
        let mut report = OutputsReport::default();
        for scripted in outputs.iter().filter_map(|o| state.reports.get(o)) {
            report.failed |= scripted.failed;
            report.products.extend(scripted.products.iter().cloned());
            report
                .rejected_products
                .extend(scripted.rejected_products.iter().cloned());
            if report.release_name.is_none() {
                report.release_name.clone_from(&scripted.release_name);
            }
        }
        Ok(report)
    }

    async fn version(&self) -> Result<String> {
        self.record(Call::Version);
        Ok(self
            .state()
            .version
            .clone()
            .unwrap_or_else(|| "2.8.0".to_owned()))
    }
}

/// Records the evaluation of `flake_ref` as dropped unless it returned (`flake_ref` taken).
struct DropGuard {
    nix: FakeNix,
    flake_ref: Option<String>,
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        if let Some(flake_ref) = self.flake_ref.take() {
            self.nix.state().dropped.push(flake_ref);
            self.nix.called.notify_waiters();
        }
    }
}

fn cancelled() -> BuildOutcome {
    BuildOutcome {
        status: BuildStatus::Cancelled,
        exit_code: None,
        message: Some("build cancelled".to_owned()),
        outputs: BTreeMap::new(),
    }
}
