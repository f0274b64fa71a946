//! Building: `NixCli::realise` builds one derivation here, in one of two [`BuildMode`]s
//! ([`channel`] on pooled `nix-store --serve` processes, [`pool`]; or [`process`], one
//! `nix-store --realise` each), and [`remote`] builds one on a store that does not share the
//! local one, over the serve protocol. [`exit`] reads what Nix's exit status says about a build.
//!
//! **Why channels.** Starting `nix-store` costs about 25 ms of CPU per process (loading the
//! store, settings, the database). Measured on 2 cores with 200 trivial derivations: already
//! *valid* ones took 2.5 s through `xargs -P2 nix-store --realise` (nothing but process start-up),
//! while *building* all 200 in one process took 3.9 s, and a process per build came to about
//! 1.8× raw `nix build` (`nix-lab.md`, addendum). The product target is 1.15× raw Nix. So by
//! default builds go through long-lived channels: `nix-store --serve --write` processes, one
//! build at a time each, spoken to with the serve protocol ([`crate::serve`], the same client a
//! remote builder over SSH will use), kept in a pool and reused ([`pool`]). A build then
//! costs a protocol round trip, not a process. Channels also replace Nix's build hook, which
//! Nix would otherwise start for every serve command ([`pool`] explains).
//!
//! Measured with `examples/realise_throughput.rs` (200 fresh trivial derivations, 2 concurrent
//! callers, 2 cores, median of 5 rounds; one raw `nix-store --realise` of all 200 with
//! `max-jobs 2` took 3.7 s wall and 3.7 s CPU): channels 2.25 s wall (0.61×) and 3.2 s CPU
//! (0.86×); a process per build 6.8 s wall (1.84×) and 11.4 s CPU (3.1×). Two channels beat the
//! single raw process because that one coordinates every build from one thread.
//!
//! The old way, one `nix-store --realise` per build ([`process`]), stays available as
//! [`BuildMode::Process`] for comparison; both pass the same tests. Differences:
//!
//! - **Log.** Process mode renders Nix's `internal-json` log, including its own lines
//!   (`building '…'...`); a channel's log is what the serve process prints at its fixed
//!   `lvlError` verbosity: the builders' output, errors about dependencies, then the reply's
//!   error message, which reconix appends.
//! - **Substitution.** A serve-protocol build turns substitution off (`getBuildSettings` sets
//!   `useSubstitutes = false`), so a channel builds missing dependencies instead of fetching
//!   them from a binary cache. Use process mode where dependencies must be substituted.
//! - **Nix's own log store.** The serve process does not keep build logs (`keepLog = false`),
//!   so `nix log DRV` has nothing for channel builds; reconix's log file is the record.
//! - **Remote builders.** Channels never hand builds to Nix's own remote builders (the
//!   `builders` setting): reconix distributes builds itself.
//! - **Temporary roots.** A serve process holds a temporary GC root on everything it built
//!   until it exits, so an unrooted output stays alive while its channel lives. Channels retire
//!   after a bounded number of builds, and `collect_garbage` closes the idle ones first.

mod channel;
pub(crate) mod exit;
mod pool;
mod process;
pub(crate) mod remote;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reconix_spec::names::StorePath;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

pub(crate) use self::pool::{BuildPool, OpenError};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::fs::create_parent;
use crate::parse::aterm::{Derivation, DrvParseError, parse_derivation};
use crate::parse::log::{LogLine, parse_log_line};
use crate::port::{BuildOutcome, BuildRequest, BuildStatus};

/// How [`NixCli::realise`](crate::Nix::realise) runs a build (see the module docs of
/// `crate::build` for the trade-offs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BuildMode {
    /// Through a pool of long-lived `nix-store --serve --write` processes, one build at a time
    /// each: no process start-up per build. Dependencies are built, never substituted, and
    /// always on this machine (Nix's `builders` are not used).
    #[default]
    Channel,
    /// One `nix-store --realise` process per build, as Nix's own CLI does: ~40 ms of CPU more
    /// per build (Nix's start-up, and its build hook's), but dependencies are substituted from
    /// the configured caches and Nix's `builders` are used.
    Process,
}

/// Builds `req.drv_path` in `mode`, on a channel of `pool` for [`BuildMode::Channel`].
pub(crate) async fn realise(
    cli: &Config,
    pool: &BuildPool,
    mode: BuildMode,
    req: BuildRequest,
    cancel: CancellationToken,
) -> Result<BuildOutcome> {
    create_parent(&req.log_file).await?;
    if let Some(root) = &req.gc_root {
        create_parent(root).await?;
    }
    let mut log = Log::create(&req.log_file).await?;
    if cancel.is_cancelled() {
        log.text("reconix: build cancelled before it started")
            .await?;
        log.flush().await?;
        return Ok(cancelled());
    }
    match mode {
        BuildMode::Channel => channel::realise(cli, pool, &req, log, cancel).await,
        BuildMode::Process => process::realise(cli, &req, log, cancel).await,
    }
}

/// The outcome of a cancelled build.
fn cancelled() -> BuildOutcome {
    BuildOutcome {
        status: BuildStatus::Cancelled,
        exit_code: None,
        message: Some("build cancelled".to_owned()),
        outputs: BTreeMap::new(),
    }
}

/// Rounds up to whole seconds, at least 1 (Nix reads 0 as "no limit").
fn whole_seconds(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

/// Reads and parses a `.drv` file (below the chroot store's root when there is one).
async fn read_derivation(cli: &Config, drv_path: &StorePath) -> Result<Derivation> {
    read_drv_with(cli, drv_path, parse_derivation).await
}

/// Reads a `.drv` file (below the chroot store's root when there is one) and parses it with
/// `parse`.
async fn read_drv_with<T>(
    cli: &Config,
    drv_path: &StorePath,
    parse: impl FnOnce(&[u8]) -> std::result::Result<T, DrvParseError>,
) -> Result<T> {
    let text = tokio::fs::read(cli.physical(drv_path))
        .await
        .map_err(|source| Error::DrvRead {
            path: drv_path.to_string(),
            source,
        })?;
    parse(&text).map_err(|source| Error::DrvParse {
        path: drv_path.to_string(),
        source,
    })
}

/// Returns the outputs of a derivation that have a path (content-addressed outputs have none
/// in the `.drv` and are not reported).
fn known_outputs(drv: &Derivation) -> BTreeMap<String, StorePath> {
    drv.outputs
        .iter()
        .filter_map(|(name, path)| path.clone().map(|p| (name.clone(), p)))
        .collect()
}

/// The build log file.
pub(crate) struct Log {
    file: tokio::fs::File,
    path: PathBuf,
    /// The first `error:` message seen in `internal-json` lines (process mode).
    first_error: Option<String>,
}

impl Log {
    /// Creates (truncates) the log file.
    pub(crate) async fn create(path: &Path) -> Result<Self> {
        let file = tokio::fs::File::create(path)
            .await
            .map_err(|source| Error::Io {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self {
            file,
            path: path.to_owned(),
            first_error: None,
        })
    }

    /// Writes the plain text of one `internal-json` stderr line.
    async fn json_line(&mut self, raw: &[u8]) -> Result<()> {
        match parse_log_line(&String::from_utf8_lossy(raw)) {
            LogLine::Text(text) => self.text(&text).await,
            LogLine::Error { text, message } => {
                self.first_error.get_or_insert(message);
                self.text(&text).await
            }
            LogLine::Nothing => Ok(()),
        }
    }

    /// Writes one line of text.
    async fn text(&mut self, text: &str) -> Result<()> {
        let mut bytes = Vec::with_capacity(text.len() + 1);
        bytes.extend_from_slice(text.as_bytes());
        bytes.push(b'\n');
        self.bytes(&bytes).await
    }

    /// Writes bytes as they are (whole lines, newlines included).
    pub(crate) async fn bytes(&mut self, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all(bytes)
            .await
            .map_err(|source| Error::Io {
                path: self.path.clone(),
                source,
            })
    }

    pub(crate) async fn flush(&mut self) -> Result<()> {
        self.file.flush().await.map_err(|source| Error::Io {
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NixCli;

    fn request(log_file: PathBuf) -> BuildRequest {
        BuildRequest {
            drv_path: StorePath::new("/nix/store/7xbvbdqxbqxqnzg56mmd7l9bbrb4c534-a.drv").unwrap(),
            gc_root: None,
            timeout: None,
            max_silent: None,
            log_file,
        }
    }

    #[test]
    fn whole_seconds_should_round_up_and_never_be_zero() {
        assert_eq!(whole_seconds(Duration::from_secs(3)), 3);
        assert_eq!(whole_seconds(Duration::from_millis(3001)), 4);
        assert_eq!(whole_seconds(Duration::ZERO), 1);
    }

    #[tokio::test]
    async fn realise_should_not_start_nix_when_already_cancelled_in_either_mode() {
        for mode in [BuildMode::Channel, BuildMode::Process] {
            let dir = tempfile::tempdir().unwrap();
            let cli = NixCli::new()
                .with_nix_store_program("/nonexistent/nix-store")
                .with_build_mode(mode);
            let req = request(dir.path().join("logs/a.log"));
            let cancel = CancellationToken::new();
            cancel.cancel();
            let outcome = realise(&cli.config, &cli.pool, mode, req.clone(), cancel)
                .await
                .unwrap();
            assert_eq!(outcome.status, BuildStatus::Cancelled, "{mode:?}");
            let log = std::fs::read_to_string(&req.log_file).unwrap();
            assert!(log.contains("cancelled"), "{mode:?}: {log}");
        }
    }

    #[tokio::test]
    async fn realise_should_say_how_to_install_nix_when_nix_store_is_missing_in_either_mode() {
        for mode in [BuildMode::Channel, BuildMode::Process] {
            let dir = tempfile::tempdir().unwrap();
            let cli = NixCli::new()
                .with_nix_store_program("/nonexistent/nix-store")
                .with_build_mode(mode);
            let req = BuildRequest {
                gc_root: Some(dir.path().join("roots/a")),
                ..request(dir.path().join("a.log"))
            };
            let err = realise(&cli.config, &cli.pool, mode, req, CancellationToken::new())
                .await
                .unwrap_err();
            assert!(
                matches!(err, Error::NixNotFound { .. }),
                "{mode:?}: {err:?}"
            );
        }
    }
}
