//! The `Nix` port: what the reconcilers may ask of Nix, and the request/outcome types.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reconix_spec::JobMeta;
use reconix_spec::JobRoot;
use reconix_spec::names::{AttrPath, StorePath, System};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::Result;
use crate::parse::outputs::ProductLine;
use crate::serve::{BuildSettings, RemoteBuildOutcome, ServeClient};

/// Everything reconix asks of Nix. [`NixCli`](crate::NixCli) is the real implementation.
pub trait Nix: Send + Sync + 'static {
    /// Evaluates the jobs of a flake: every attribute of the requested output categories for the
    /// requested systems, each to a derivation or to its own error message.
    ///
    /// # Errors
    /// [`Error::FlakeEval`](crate::Error::FlakeEval) when the flake as a whole cannot be
    /// evaluated (no job can even be listed); other variants when Nix cannot be run or its
    /// output cannot be understood. A broken *attribute* is not an error: it is a job whose
    /// `result` is `Err(message)`.
    fn evaluate(&self, req: EvalRequest) -> impl Future<Output = Result<EvalOutcome>> + Send {
        let (events, _) = tokio::sync::mpsc::unbounded_channel();
        self.evaluate_streaming(req, events)
    }

    /// Evaluates as [`evaluate`](Self::evaluate) does, reporting on `events` while it runs:
    /// first how many attributes were listed, then the jobs as their attributes are evaluated
    /// ([`EvalEvent`]). The outcome returned at the end is authoritative (complete
    /// dependencies, aggregates resolved). Dropping the future stops every evaluator process
    /// it started. A closed `events` receiver is not an error.
    ///
    /// # Errors
    /// As [`evaluate`](Self::evaluate).
    fn evaluate_streaming(
        &self,
        req: EvalRequest,
        events: tokio::sync::mpsc::UnboundedSender<EvalEvent>,
    ) -> impl Future<Output = Result<EvalOutcome>> + Send;

    /// Builds one derivation, writing Nix's output to `req.log_file` as it arrives, until it
    /// finishes, times out or `cancel` fires.
    ///
    /// # Errors
    /// Only when the build cannot be started or its log cannot be written; a failed build is a
    /// [`BuildOutcome`] with [`BuildStatus::Failed`] (or another status).
    fn realise(
        &self,
        req: BuildRequest,
        cancel: CancellationToken,
    ) -> impl Future<Output = Result<BuildOutcome>> + Send;

    /// Registers `link` as an indirect GC root for the (already valid) store path `path`,
    /// creating its parent directories. Registering the same link again is harmless.
    ///
    /// # Errors
    /// [`Error::InvalidPath`](crate::Error::InvalidPath) when `path` is not valid; other
    /// variants when the link or its registration cannot be written, or Nix refuses.
    fn add_root(&self, link: &Path, path: &StorePath) -> impl Future<Output = Result<()>> + Send;

    /// Returns, for each of `paths` in order, whether it is valid (present) in the store.
    ///
    /// # Errors
    /// When Nix cannot be run or fails.
    fn is_valid(&self, paths: &[StorePath]) -> impl Future<Output = Result<Vec<bool>>> + Send;

    /// Deletes every store path that is not reachable from a GC root.
    ///
    /// # Errors
    /// When Nix cannot be run or fails.
    fn collect_garbage(&self) -> impl Future<Output = Result<()>> + Send;

    /// Builds `drv_path` on the store behind `client` (see [`crate::build_remote`]) and
    /// copies its outputs into this store, rooted under `gc_root` when given.
    ///
    /// # Errors
    /// As [`crate::build_remote`]: a failed or timed-out build is an outcome, not an
    /// error, and after an error the connection must be dropped.
    fn build_remote<R, W>(
        &self,
        client: &mut ServeClient<R, W>,
        drv_path: &StorePath,
        settings: &BuildSettings,
        gc_root: Option<&Path>,
    ) -> impl Future<Output = Result<RemoteBuildOutcome>> + Send
    where
        R: AsyncRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send;

    /// Returns every path of the closure of `paths` (which must be valid and not `.drv` files)
    /// with its NAR size and references: enough for [`closure_size`] of any subset. `NixCli`
    /// asks a pooled build channel (`cmdQueryClosure`, `cmdQueryPathInfos`) in channel mode,
    /// else (or when the channel cannot answer) runs `nix path-info --json --recursive`.
    ///
    /// # Errors
    /// When Nix cannot be run, a path is not valid, or the output cannot be understood.
    fn closure(
        &self,
        paths: &[StorePath],
    ) -> impl Future<Output = Result<BTreeMap<StorePath, PathSize>>> + Send;

    /// Copies `paths` (with `closure`, and their closures) to the binary cache `to`, a Nix
    /// store URL such as
    /// `file:///srv/cache?secret-key=/run/keys/cache` or `http://host/cache?secret-key=…`
    /// (Nix signs with the `secret-key` parameter). Nix asks the cache first and uploads only
    /// what it lacks; its local narinfo cache is bypassed, so a cache that lost paths is filled
    /// again.
    ///
    /// # Errors
    /// When Nix cannot be run or the copy fails (the cache is unreachable, refuses an upload…).
    fn copy_to(
        &self,
        to: &str,
        paths: &[StorePath],
        closure: bool,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Reads what the (valid) `outputs` of a build say about it in `nix-support/`, Hydra's
    /// conventions: whether any has a `failed` file (nixpkgs' `succeedOnFailure`), the lines of
    /// their `hydra-build-products` and the `hydra-release-name`.
    ///
    /// # Errors
    /// [`Error::StoreRead`](crate::Error::StoreRead) when a file exists but cannot be read (or
    /// is larger than a products list can sensibly be).
    fn inspect_outputs(
        &self,
        outputs: &[StorePath],
    ) -> impl Future<Output = Result<OutputsReport>> + Send;

    /// Returns Nix's version number, e.g. `2.8.0`; the daemon calls it at start to fail early
    /// when Nix is missing.
    ///
    /// # Errors
    /// [`Error::NixNotFound`](crate::Error::NixNotFound) (whose message says how to install Nix)
    /// when `nix` cannot be started.
    fn version(&self) -> impl Future<Output = Result<String>> + Send;
}

/// What the store knows about one valid path: its size and what it refers to.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PathSize {
    /// The size of its NAR serialisation in bytes (what `nix path-info -s` prints).
    pub nar_size: u64,
    /// The store paths it refers to (possibly itself).
    pub references: Vec<StorePath>,
}

/// Returns the total NAR size of the union of the closures of `roots` within `closure` (as
/// [`Nix::closure`] returns it): each path counted once, however many roots reach it. Paths
/// missing from `closure` count as 0 and are not followed.
pub fn closure_size(closure: &BTreeMap<StorePath, PathSize>, roots: &[StorePath]) -> u64 {
    let mut seen = std::collections::HashSet::new();
    let mut stack: Vec<&StorePath> = roots.iter().collect();
    let mut total = 0u64;
    while let Some(path) = stack.pop() {
        if !seen.insert(path) {
            continue;
        }
        if let Some(info) = closure.get(path) {
            total = total.saturating_add(info.nar_size);
            stack.extend(info.references.iter().filter(|r| !seen.contains(r)));
        }
    }
    total
}

/// What a build's outputs say about it in `nix-support/` ([`Nix::inspect_outputs`]).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OutputsReport {
    /// Some output has `nix-support/failed`: the builder succeeded but says the build failed
    /// (nixpkgs' `succeedOnFailure`, test drivers), and kept its output for inspection.
    pub failed: bool,
    /// The products listed in the outputs' `nix-support/hydra-build-products`, in the order
    /// the outputs were given, then file order.
    pub products: Vec<ProductLine>,
    /// Lines of those files that are not products (Hydra skips them too).
    pub rejected_products: Vec<String>,
    /// The first line of the first given output's `nix-support/hydra-release-name` that has
    /// one.
    pub release_name: Option<String>,
}

/// What to evaluate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalRequest {
    /// A *locked* flake reference, e.g. `git+file:///src/x?ref=refs/heads/main&rev=<40 hex>`:
    /// evaluation runs in pure mode, where `builtins.getFlake` refuses unlocked references.
    pub flake_ref: String,
    /// The systems whose per-system outputs (`packages.<system>.*`, …) are jobs; jobs of a
    /// walked tree for other systems are skipped ([`JobDrv::skipped`]).
    pub systems: Vec<System>,
    /// Where the jobs are and how each place is walked ([`reconix_spec::Repo::job_roots`]).
    pub roots: Vec<JobRoot>,
    /// Whether evaluation may build derivations to import from them (Nix's
    /// `allow-import-from-derivation`); when false an attribute that needs it is an
    /// eval-failed job with Nix's message.
    #[serde(default)]
    pub allow_import_from_derivation: bool,
}

/// What an evaluation reports while it runs ([`Nix::evaluate_streaming`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvalEvent {
    /// The job roots are listed: this many attributes are to be evaluated (each becomes a
    /// job, or several when a listed part of the tree fails as a whole).
    Listed {
        /// The number of attributes listed.
        attributes: usize,
    },
    /// Some attributes are evaluated, in no particular order.
    Evaluated(Vec<StreamedJob>),
}

/// A job reported while its evaluation still runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamedJob {
    /// The job as known so far: its `deps` name only jobs reported before it (or in the same
    /// event); an aggregate's constituents are resolved only in the final outcome.
    pub job: EvalJob,
    /// True when the job may be built before the evaluation ends: its closure holds no
    /// derivation that could belong to a job not reported yet (each derivation in it is a
    /// reported job's own, or its outputs are already valid), so building it now builds no
    /// other job's derivation behind that job's back. Eval-failed and skipped jobs and
    /// aggregates never are; every job becomes buildable when the evaluation ends.
    pub buildable: bool,
}

/// The result of a successful evaluation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalOutcome {
    /// One entry per listed attribute, in the order Nix listed them (category, system, name).
    pub jobs: Vec<EvalJob>,
    /// How long the whole evaluation took.
    pub duration: Duration,
    /// How many `nix` processes were run.
    pub nix_calls: u32,
    /// The flake's top-level outputs (`hydraJobs`, `lib`, …), looked up only when the
    /// evaluation found no job at all (for a message saying which `attributes` to set); empty
    /// otherwise.
    #[serde(default)]
    pub flake_outputs: Vec<String>,
}

/// One attribute of an evaluation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalJob {
    /// The full attribute path, e.g. `packages.x86_64-linux.hello`.
    pub attr: AttrPath,
    /// The derivation's `name` attribute (the attribute name when evaluation failed).
    pub name: String,
    /// The derivation's system; for a failed attribute, the system in its path (if any).
    pub system: Option<System>,
    /// The derivation, or the attribute's own error message.
    pub result: Result<JobDrv, String>,
}

/// The derivation of a successfully evaluated job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobDrv {
    /// The `.drv` path (the file exists: evaluation wrote it).
    pub drv_path: StorePath,
    /// Output name → output path.
    pub outputs: reconix_spec::Outputs,
    /// The jobs of the same evaluation whose derivation is reached first when walking this
    /// job's `inputDrvs` (the walk stops at jobs). Jobs sharing one derivation are all listed.
    pub deps: Vec<AttrPath>,
    /// The system features a builder must have to build the derivation itself
    /// (`requiredSystemFeatures`, e.g. `kvm`): sorted, no duplicates, usually empty.
    #[serde(default)]
    pub required_features: Vec<String>,
    /// Why the job is not built, when it is not: a job of a walked tree whose derivation's
    /// system is not one of the requested systems. Such jobs are left out of every `deps`.
    #[serde(default)]
    pub skipped: Option<String>,
    /// What reconix uses of the derivation's `meta` (per-job limits, priority, description…).
    #[serde(default)]
    pub meta: JobMeta,
    /// For an aggregate job (Hydra's `_hydraAggregate = true`): its constituents, resolved.
    /// Every constituent job is in `deps` too, so the aggregate builds only after all of them
    /// succeeded. `None` for any other job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constituents: Option<Vec<Constituent>>,
}

/// One resolved constituent of an aggregate job.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Constituent {
    /// A job of the same evaluation (named, matched by a glob, or whose derivation was given).
    Job(AttrPath),
    /// A derivation that is no job of the evaluation. As in Hydra it is not an error: it is
    /// shown, and built only if the aggregate's own derivation needs it.
    Derivation(StorePath),
}

/// What to build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildRequest {
    /// The derivation to realise; all its outputs are built.
    pub drv_path: StorePath,
    /// The indirect GC root to register for the outputs: `<root>` for `out` and
    /// `<root>-<output>` for every other output (that is how `nix-store --add-root` names them).
    /// Parent directories are created.
    pub gc_root: Option<PathBuf>,
    /// Fails the build (as [`BuildStatus::TimedOut`]) after this long (whole seconds, rounded up).
    pub timeout: Option<Duration>,
    /// Fails the build (as [`BuildStatus::TimedOut`]) after this long without output.
    pub max_silent: Option<Duration>,
    /// Where Nix's output goes, line by line as it arrives (the file is truncated first and
    /// its parent directories are created).
    pub log_file: PathBuf,
}

/// How a build ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BuildStatus {
    /// Every output is valid.
    Succeeded,
    /// A builder (this derivation's or a dependency's) failed.
    Failed,
    /// The build hit its `timeout` or `max_silent` limit.
    TimedOut,
    /// The build was cancelled through its token.
    Cancelled,
    /// Nix failed for another reason (missing `.drv`, store trouble, killed by a signal…).
    Error,
}

/// The result of a build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildOutcome {
    /// How it ended.
    pub status: BuildStatus,
    /// The exit code of `nix-store --realise` (`None` when it was killed by a signal), or in
    /// [`BuildMode::Channel`](crate::BuildMode::Channel) the status of the serve reply, which
    /// is the code `nix-store --realise` would have exited with (0, 100, 101, 1…).
    pub exit_code: Option<i32>,
    /// The first error Nix reported, without the `error: ` prefix.
    pub message: Option<String>,
    /// Output name → path, filled when the build succeeded.
    pub outputs: BTreeMap<String, StorePath>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(name: &str) -> StorePath {
        StorePath::new(format!("/nix/store/{}-{name}", "a".repeat(32))).unwrap()
    }

    #[test]
    fn closure_size_should_count_shared_and_self_references_once() {
        let closure: BTreeMap<StorePath, PathSize> = [
            ("lib", 100, vec!["lib"]),
            ("a", 10, vec!["lib", "a"]),
            ("b", 20, vec!["lib"]),
            ("c", 5, vec!["b", "gone"]),
        ]
        .into_iter()
        .map(|(name, nar_size, refs)| {
            let references = refs.into_iter().map(path).collect();
            (
                path(name),
                PathSize {
                    nar_size,
                    references,
                },
            )
        })
        .collect();
        assert_eq!(closure_size(&closure, &[path("a")]), 110);
        assert_eq!(closure_size(&closure, &[path("a"), path("b")]), 130);
        assert_eq!(closure_size(&closure, &[path("c")]), 125);
        assert_eq!(closure_size(&closure, &[path("c"), path("c")]), 125);
        assert_eq!(closure_size(&closure, &[]), 0);
        assert_eq!(closure_size(&closure, &[path("unknown")]), 0);
    }
}
