//! `NixCli`: the real [`Nix`], running the `nix` and `nix-store` programs.
//!
//! The front door, on top of the crate's module graph: it holds the settings
//! ([`Config`](crate::config::Config)), the build mode and the pool of build channels, and hands
//! each request to the module that does it (`crate::eval`, `crate::build`, `crate::roots`,
//! `crate::paths`). Nothing below uses it.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reconix_spec::names::StorePath;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::build::{BuildMode, BuildPool, OpenError};
use crate::config::Config;
use crate::fs::create_parent;
use crate::port::{
    BuildOutcome, BuildRequest, EvalEvent, EvalOutcome, EvalRequest, Nix, OutputsReport, PathSize,
};
use crate::process::{command_line, os_args};
use crate::roots;
use crate::serve::{BuildSettings, RemoteBuildOutcome, ServeClient};
use crate::workers::EvalPool;
use crate::{Error, Result};

/// Runs the real Nix programs (written against Nix 2.8; see `nix-lab.md`).
///
/// Cheap to clone. Builds go through a pool of long-lived `nix-store --serve --write` channels
/// by default ([`BuildMode`]); clones share the pool, and the `with_*` builders start a new one.
/// Every other invocation is a process, logged at debug level with its duration.
#[derive(Debug, Clone)]
pub struct NixCli {
    pub(crate) config: Arc<Config>,
    build_mode: BuildMode,
    pub(crate) pool: Arc<BuildPool>,
    /// The evaluator workers and their memory budget, shared by every evaluation.
    eval_pool: Arc<EvalPool>,
}

impl Default for NixCli {
    fn default() -> Self {
        Self::new()
    }
}

impl NixCli {
    /// Creates a runner using `nix` and `nix-store` from `PATH`, evaluating at most 2 processes
    /// at a time and building on channels ([`BuildMode::Channel`]) with `max-jobs = 1`.
    pub fn new() -> Self {
        Self {
            config: Arc::new(Config::default()),
            build_mode: BuildMode::default(),
            pool: Arc::default(),
            eval_pool: Arc::new(EvalPool::new(2, 2 << 30)),
        }
    }

    fn with_config(self, change: impl FnOnce(&mut Config)) -> Self {
        let mut config = Arc::unwrap_or_clone(self.config);
        change(&mut config);
        // Channels started with the old settings (program, store, max-jobs…) must not serve
        // the new ones.
        Self {
            config: Arc::new(config),
            build_mode: self.build_mode,
            pool: Arc::default(),
            eval_pool: self.eval_pool,
        }
    }

    /// Returns a runner that starts `program` instead of `nix`.
    #[must_use]
    pub fn with_nix_program(self, program: impl Into<PathBuf>) -> Self {
        let program = program.into();
        self.with_config(|c| c.nix = program)
    }

    /// Returns a runner that starts `program` instead of `nix-store`.
    #[must_use]
    pub fn with_nix_store_program(self, program: impl Into<PathBuf>) -> Self {
        let program = program.into();
        self.with_config(|c| c.nix_store = program)
    }

    /// Returns a runner that sets the environment variable `key` to `value` for every Nix
    /// process (e.g. `NIX_REMOTE`, `NIX_CONFIG`); the rest of the environment is inherited.
    #[must_use]
    pub fn with_env(self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        let pair = (key.into(), value.into());
        self.with_config(|c| c.env.push(pair))
    }

    /// Returns a runner that runs at most `n` (at least 1) evaluation processes at a time,
    /// each of up to 2 GiB (see [`with_eval_workers`](Self::with_eval_workers)).
    #[must_use]
    pub fn with_eval_parallelism(self, n: usize) -> Self {
        self.with_eval_workers(n, 2 << 30)
    }

    /// Returns a runner whose evaluations share at most `workers` (at least 1) evaluator
    /// processes of `max_memory` bytes each, `workers × max_memory` being their budget
    /// together (`evaluation.workers`, `evaluation.max-memory`).
    #[must_use]
    pub fn with_eval_workers(self, workers: usize, max_memory: u64) -> Self {
        Self {
            eval_pool: Arc::new(EvalPool::new(workers, max_memory)),
            ..self.with_config(|c| c.eval_parallelism = workers.max(1))
        }
    }

    /// Returns the evaluator pool (its budget, and the peak memory its workers used).
    pub fn eval_pool(&self) -> &EvalPool {
        &self.eval_pool
    }

    /// Returns a runner that passes `--option max-jobs N` to each build (`None`: use
    /// `nix.conf`). The default, 1, makes one reconix build slot one Nix build at a time.
    #[must_use]
    pub fn with_max_jobs(self, max_jobs: Option<u32>) -> Self {
        self.with_config(|c| c.max_jobs = max_jobs)
    }

    /// Returns a runner that, when a build is cancelled, waits this long after `SIGTERM`
    /// before sending `SIGKILL` to the build's process group.
    #[must_use]
    pub fn with_kill_grace(self, grace: Duration) -> Self {
        self.with_config(|c| c.kill_grace = grace)
    }

    /// Returns a runner that passes `--store STORE` to every Nix command: a chroot store
    /// directory (`/var/lib/ci-store`, whose paths are still `/nix/store/…` but live below it)
    /// or a store URL. Evaluation, builds, roots and GC then all happen in that store.
    #[must_use]
    pub fn with_store(self, store: impl Into<OsString>) -> Self {
        let store = store.into();
        self.with_config(|c| c.store = Some(store))
    }

    /// Returns a runner that builds in `mode`: on pooled `nix-store --serve` channels (the
    /// default) or with one `nix-store --realise` per build.
    #[must_use]
    pub fn with_build_mode(self, mode: BuildMode) -> Self {
        // Like every other setting, a new mode starts a new pool.
        Self {
            build_mode: mode,
            ..self.with_config(|_| {})
        }
    }

    /// Returns the binary caches Nix substitutes from (`substituters` of `nix show-config`),
    /// as seen with this runner's store and environment.
    ///
    /// # Errors
    /// Returns an error when Nix cannot run or prints something that is not its config.
    pub async fn substituters(&self) -> Result<Vec<String>> {
        let args = os_args(["show-config", "--json"]);
        let stdout = self.config.run_ok(&self.config.nix, &args).await?;
        parse_substituters(&stdout).map_err(|reason| Error::Output {
            command: command_line(&self.config.nix, &args),
            reason,
        })
    }

    /// Returns the build mode that fits this Nix: [`BuildMode::Channel`] when no substituter
    /// is configured, [`BuildMode::Process`] otherwise, because serve-protocol channels never
    /// substitute and would build from source what a cache could supply.
    ///
    /// # Errors
    /// See [`substituters`](Self::substituters).
    pub async fn suitable_build_mode(&self) -> Result<BuildMode> {
        Ok(if self.substituters().await?.is_empty() {
            BuildMode::Channel
        } else {
            BuildMode::Process
        })
    }
}

impl Nix for NixCli {
    async fn evaluate_streaming(
        &self,
        req: EvalRequest,
        events: tokio::sync::mpsc::UnboundedSender<EvalEvent>,
    ) -> Result<EvalOutcome> {
        crate::eval::evaluate(&self.config, &self.eval_pool, req, events).await
    }

    async fn realise(&self, req: BuildRequest, cancel: CancellationToken) -> Result<BuildOutcome> {
        crate::build::realise(&self.config, &self.pool, self.build_mode, req, cancel).await
    }

    async fn add_root(&self, link: &Path, path: &StorePath) -> Result<()> {
        create_parent(link).await?;
        if roots::auto_dir(&self.config).is_none() {
            return roots::add_root_with_nix_store(&self.config, link, path).await;
        }
        // The path must be valid and stay so until the root exists: a channel's query with
        // `lock` gives it a temporary root (honoured by a collection already under way).
        let mut channel = self
            .pool
            .acquire(&self.config)
            .await
            .map_err(OpenError::into_error)?;
        let valid = channel
            .query_valid(&[path.as_str()], true)
            .await
            .map_err(|source| Error::Serve {
                message: "cannot query path validity".to_owned(),
                source,
            })?;
        let result = if valid.iter().any(|v| v == path.as_str()) {
            roots::register(&self.config, vec![(link.to_owned(), path.clone())]).await
        } else {
            Err(Error::InvalidPath {
                path: path.to_string(),
            })
        };
        self.pool.release(channel);
        result
    }

    async fn is_valid(&self, paths: &[StorePath]) -> Result<Vec<bool>> {
        crate::paths::is_valid(&self.config, paths).await
    }

    async fn build_remote<R, W>(
        &self,
        client: &mut ServeClient<R, W>,
        drv_path: &StorePath,
        settings: &BuildSettings,
        gc_root: Option<&Path>,
    ) -> Result<RemoteBuildOutcome>
    where
        R: AsyncRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send,
    {
        build_remote(client, self, drv_path, settings, gc_root).await
    }

    async fn closure(&self, paths: &[StorePath]) -> Result<BTreeMap<StorePath, PathSize>> {
        if self.build_mode == BuildMode::Channel
            && !paths.is_empty()
            && let Some(closure) = self.closure_on_channel(paths).await
        {
            return Ok(closure);
        }
        crate::paths::closure(&self.config, paths).await
    }

    async fn copy_to(&self, to: &str, paths: &[StorePath], closure: bool) -> Result<()> {
        crate::paths::copy_to(&self.config, to, paths, closure).await
    }

    async fn collect_garbage(&self) -> Result<()> {
        // Idle channels hold temporary roots on everything they built: close them first.
        self.pool.close_idle().await;
        self.config
            .run_ok(&self.config.nix_store, &os_args(["--gc"]))
            .await
            .map(drop)
    }

    async fn inspect_outputs(&self, outputs: &[StorePath]) -> Result<OutputsReport> {
        crate::outputs::inspect_outputs(&self.config, outputs).await
    }

    async fn version(&self) -> Result<String> {
        let args = os_args(["--version"]);
        let stdout = self.config.run_ok(&self.config.nix, &args).await?;
        // `nix (Nix) 2.8.0`
        stdout
            .split_whitespace()
            .last()
            .map(str::to_owned)
            .ok_or_else(|| Error::Output {
                command: command_line(&self.config.nix, &args),
                reason: "empty version".to_owned(),
            })
    }
}

impl NixCli {
    /// The closure of `paths` asked on a pooled build channel (two queries, no process), or
    /// `None` when that did not work (no channel, or it failed: an invalid path ends
    /// `nix-store --serve`), for `nix path-info` to answer in its own words.
    async fn closure_on_channel(
        &self,
        paths: &[StorePath],
    ) -> Option<BTreeMap<StorePath, PathSize>> {
        let mut channel = self.pool.acquire(&self.config).await.ok()?;
        let names: Vec<&str> = paths.iter().map(StorePath::as_str).collect();
        match channel.closure_infos(&names).await {
            Ok(infos) => {
                self.pool.release(channel);
                crate::paths::closure_of_infos(paths, infos)
            }
            Err(err) => {
                debug!(%err, "cannot ask a build channel for a closure");
                None
            }
        }
    }
}

/// Builds `drv_path`, a derivation valid in `local`'s store, on the store behind `client`, and
/// copies its outputs back into `local`'s store, where their closure is then complete (see
/// `crate::build::remote` for the steps). Input derivations need not be built locally: those
/// that are not are built on the builder too. Build failures and timeouts are outcomes, after
/// which the connection can be reused.
///
/// With `gc_root`, the outputs are rooted under it as a channel build's are
/// ([`output_link`](crate::output_link)): before anything is copied back when the roots can be
/// written directly; else (`nix-store --add-root`, which needs valid paths) right after. The
/// rooted outputs are then checked: Nix 2.8's collector can take a path imported while it
/// runs even with a root to it, and such an output is copied again (an error after 3 tries).
/// Without `gc_root`, they get no root. `client`'s reader should be buffered (the outputs
/// arrive through it). The future is `Send` when `R` and `W` are (they need not be `Sync`).
///
/// # Errors
/// [`Error::Command`] or [`Error::Output`] when a local Nix command fails or prints something
/// unexpected (such as a derivation with floating content-addressed outputs, which is not
/// supported); [`Error::Serve`] when the connection fails, the builder refuses an import (it
/// then exits: its stderr says why) or sends something malformed or not asked for (such as a
/// path in the outputs' closure that no derivation of the closure produces);
/// [`Error::InvalidPath`] when the builder does not send an output it built. After an error
/// the connection may be out of step and must be dropped.
pub async fn build_remote<R, W>(
    client: &mut ServeClient<R, W>,
    local: &NixCli,
    drv_path: &StorePath,
    settings: &BuildSettings,
    gc_root: Option<&Path>,
) -> Result<RemoteBuildOutcome>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    crate::build::remote::build_remote(client, &local.config, drv_path, settings, gc_root).await
}

/// Reads `substituters` out of `nix show-config --json`.
fn parse_substituters(json: &str) -> std::result::Result<Vec<String>, String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let value = v
        .get("substituters")
        .and_then(|s| s.get("value"))
        .ok_or("no `substituters` setting")?;
    let list = value.as_array().ok_or("`substituters` is not a list")?;
    list.iter()
        .map(|s| {
            s.as_str()
                .map(str::to_owned)
                .ok_or_else(|| "a substituter is not a string".to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substituters_should_be_read_from_show_config() {
        let json = r#"{"substituters":{"aliases":["binary-caches"],"defaultValue":["https://cache.nixos.org/"],"value":["https://cache.nixos.org/","file:///c"]},"cores":{"value":0}}"#;
        assert_eq!(
            parse_substituters(json).unwrap(),
            ["https://cache.nixos.org/", "file:///c"]
        );
        assert_eq!(
            parse_substituters(r#"{"substituters":{"value":[]}}"#).unwrap(),
            Vec::<String>::new()
        );
        assert!(parse_substituters(r#"{"cores":{"value":0}}"#).is_err());
        assert!(parse_substituters("error: nope").is_err());
    }

    #[test]
    fn builders_should_replace_only_the_setting_they_name() {
        let cli = NixCli::new()
            .with_nix_program("/opt/nix")
            .with_env("NIX_REMOTE", "daemon")
            .with_eval_parallelism(0)
            .with_max_jobs(None);
        assert_eq!(cli.config.nix, Path::new("/opt/nix"));
        assert_eq!(cli.config.nix_store, Path::new("nix-store"));
        assert_eq!(cli.config.eval_parallelism, 1);
        assert_eq!(cli.config.max_jobs, None);
        assert_eq!(cli.config.env.len(), 1);
    }

    #[tokio::test]
    async fn version_should_say_how_to_install_nix_when_it_is_missing() {
        let cli = NixCli::new().with_nix_program("/nonexistent/nix");
        let err = cli.version().await.unwrap_err();
        assert!(matches!(err, Error::NixNotFound { .. }), "{err:?}");
        assert!(err.to_string().contains("scripts/install-nix.sh"), "{err}");
    }

    #[tokio::test]
    async fn is_valid_should_not_run_nix_for_an_empty_list() {
        let cli = NixCli::new().with_nix_store_program("/nonexistent/nix-store");
        assert_eq!(cli.is_valid(&[]).await.unwrap(), Vec::<bool>::new());
    }
}
