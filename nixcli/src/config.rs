//! [`Config`]: the settings of a [`NixCli`](crate::NixCli) that every module below it needs:
//! which programs to start, with which environment and store, and with which limits; how a
//! command is built from them; and where that store keeps its files.
//!
//! The modules that start Nix take a `&Config`, never the `NixCli` front door, so that
//! `crate::cli` stays on top of the module graph.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use reconix_spec::names::StorePath;
use tokio::process::Command;

use crate::error::Result;
use crate::process::{Finished, output};

/// The settings of the Nix processes a `NixCli` starts.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) nix: PathBuf,
    pub(crate) nix_store: PathBuf,
    pub(crate) env: Vec<(OsString, OsString)>,
    pub(crate) eval_parallelism: usize,
    pub(crate) max_jobs: Option<u32>,
    pub(crate) kill_grace: Duration,
    pub(crate) store: Option<OsString>,
}

impl Default for Config {
    /// Returns `nix` and `nix-store` from `PATH`, at most 2 evaluation processes at a time and
    /// `max-jobs = 1`.
    fn default() -> Self {
        Self {
            nix: PathBuf::from("nix"),
            nix_store: PathBuf::from("nix-store"),
            env: Vec::new(),
            eval_parallelism: 2,
            max_jobs: Some(1),
            kill_grace: Duration::from_secs(5),
            store: None,
        }
    }
}

impl Config {
    /// Builds a command for `program` with the configured store and environment and no stdin.
    pub(crate) fn command(&self, program: &Path, args: &[OsString]) -> Command {
        let mut cmd = Command::new(program);
        // `--store` is a global setting flag: it goes before the subcommand for `nix` and is
        // accepted in any position by `nix-store`.
        if let Some(store) = &self.store {
            cmd.arg("--store").arg(store);
        }
        cmd.args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            // Dropping the future (a cancelled evaluation) must not leave Nix running.
            .kill_on_drop(true);
        cmd
    }

    /// Runs a command to completion, capturing stdout and stderr.
    pub(crate) async fn run(&self, program: &Path, args: &[OsString]) -> Result<Finished> {
        output(self.command(program, args), program, args).await
    }

    /// Runs a command that must succeed and returns its stdout.
    pub(crate) async fn run_ok(&self, program: &Path, args: &[OsString]) -> Result<String> {
        self.run(program, args).await?.into_success()
    }

    /// Returns the value of the environment variable `key` as Nix processes see it (set with
    /// `NixCli::with_env`, else inherited), when not empty.
    pub(crate) fn env_var(&self, key: &str) -> Option<OsString> {
        self.env
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var_os(key))
            .filter(|v| !v.is_empty())
    }

    /// Returns the store Nix processes use: `--store`, else `NIX_REMOTE`, else `None` (Nix's
    /// default, `auto`).
    pub(crate) fn effective_store(&self) -> Option<OsString> {
        self.store.clone().or_else(|| self.env_var("NIX_REMOTE"))
    }

    /// Returns where a store path's file really is: below the chroot store's root when
    /// `NixCli::with_store` named a directory, else the path itself.
    pub(crate) fn physical(&self, path: &StorePath) -> PathBuf {
        match &self.store {
            Some(store) if Path::new(store).is_absolute() => {
                Path::new(store).join(path.as_str().trim_start_matches('/'))
            }
            _ => PathBuf::from(path.as_str()),
        }
    }

    /// Returns true when [`physical`](Self::physical) is where store paths really are: the
    /// store is a directory given with `NixCli::with_store`, or the default one (`auto`,
    /// `daemon`, `local`, or none named here or in `NIX_REMOTE`).
    pub(crate) fn physical_is_exact(&self) -> bool {
        let default = |s: &OsString| matches!(s.to_str(), Some("auto" | "daemon" | "local"));
        match &self.store {
            Some(store) => Path::new(store).is_absolute() || default(store),
            None => self.effective_store().is_none_or(|s| default(&s)),
        }
    }
}
