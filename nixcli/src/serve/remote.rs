//! [`build_remote`]: what Nix's `build-remote` hook does, over a [`ServeClient`] to a store
//! that does not share the local one (another machine, or in tests a chroot store).
//!
//! 1. **Inputs** (local): read the derivation (`nix show-derivation`), take its input sources
//!    and the outputs it uses of its input derivations, which must be valid locally, and their
//!    closure (`nix-store -qR`, which prints references before referrers).
//! 2. **Copy to the builder**: ask which of the closure it lacks (`cmdQueryValidPaths` with
//!    `lock`, so that it keeps them while the connection lasts) and send those
//!    (`nix-store --export` piped into `cmdImportPaths`, in chunks that keep the `-qR` order, so
//!    that references always arrive first). The serve protocol does not check signatures.
//! 3. **Build** with `cmdBuildDerivation`: the `.drv` files are not copied; like `build-remote`,
//!    the whole input closure goes in `inputSrcs`.
//! 4. **Copy back**: the outputs not valid locally are exported by the builder
//!    (`cmdExportPaths`, references first) and piped into a local `nix-store --import` (which,
//!    in Nix 2.8, does not check signatures either). Their references are outputs or inputs,
//!    already local. The export stream is walked as it goes: only the paths asked for can reach
//!    the local store.
//!
//! The build log is the server's stderr, which belongs to the transport (the child's stderr
//! pipe, or an SSH channel's extended data), so the caller reads it there.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use reconix_spec::names::StorePath;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, BufReader};
use tokio::process::Child;
use tracing::debug;

use super::ServeError;
use super::client::ServeClient;
use super::wire::{BasicDerivation, BuildResultStatus, BuildSettings, DerivationOutput};
use crate::cli::{command_line, os_args, spawn_error, status_text};
use crate::pool::stderr_message;
use crate::{Error, Nix, NixCli, Result};

/// How many paths one local `nix-store --export` gets (keeps argv small).
const EXPORT_CHUNK: usize = 1000;
/// How much of a helper process's stdout or stderr is kept.
const OUTPUT_CAP: usize = 1 << 20;

/// How a remote build ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteBuildStatus {
    /// The outputs were built (or were valid already) and are now valid locally.
    Built,
    /// The build failed; nothing was copied back.
    Failed {
        /// Nix's status for it.
        status: BuildResultStatus,
        /// Nix's message without colour codes, e.g. `builder for '/nix/store/…-x.drv' failed
        /// with exit code 7`.
        message: String,
    },
    /// The build exceeded `buildTimeout` or `maxSilentTime`; nothing was copied back.
    TimedOut {
        /// Nix's message, e.g. `… timed out after 2 seconds`.
        message: String,
    },
}

/// How long each phase of a remote build took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RemoteBuildTimings {
    /// Reading the derivation and computing its input closure locally.
    pub inputs: Duration,
    /// Asking the builder what it lacks and sending it.
    pub copy_to_remote: Duration,
    /// The build itself, as seen from the client.
    pub build: Duration,
    /// Copying the outputs' closure back (zero when the build failed).
    pub copy_back: Duration,
}

/// What [`build_remote`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteBuildOutcome {
    /// How the build ended.
    pub status: RemoteBuildStatus,
    /// The derivation's outputs, name → path; all valid locally when the status is
    /// [`RemoteBuildStatus::Built`].
    pub outputs: BTreeMap<String, StorePath>,
    /// The paths sent to the builder, in the order sent (references first).
    pub copied_to_remote: Vec<StorePath>,
    /// The outputs copied back from the builder, in the order received.
    pub copied_back: Vec<StorePath>,
    /// How many times the builder built the derivation (0 when its outputs were valid there).
    pub times_built: u64,
    /// Time per phase.
    pub timings: RemoteBuildTimings,
}

/// Builds `drv_path`, a derivation valid in `local`'s store whose input derivations are built
/// there, on the store behind `client`, and copies its outputs back into `local`'s store, where
/// their closure is then complete (see the module documentation for the steps). Build failures
/// and timeouts are outcomes, after which the connection can be reused.
///
/// The imported outputs get no GC root: the caller should add one before a collection could
/// run. `client`'s reader should be buffered (the outputs arrive through it).
///
/// # Errors
/// [`Error::InvalidPath`] when an input is not valid locally; [`Error::Command`] or
/// [`Error::Output`] when a local Nix command fails or prints something unexpected (such as a
/// derivation with floating content-addressed outputs, which is not supported);
/// [`Error::Serve`] when the connection fails, the builder refuses an import (it then exits:
/// its stderr says why) or sends something malformed or not asked for. After an error the
/// connection may be out of step and must be dropped.
pub async fn build_remote<R, W>(
    client: &mut ServeClient<R, W>,
    local: &NixCli,
    drv_path: &StorePath,
    settings: &BuildSettings,
) -> Result<RemoteBuildOutcome>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut timings = RemoteBuildTimings::default();

    let started = Instant::now();
    let (drv, outputs, closure) = inputs(local, drv_path).await?;
    timings.inputs = started.elapsed();

    let started = Instant::now();
    let valid: HashSet<String> = client
        .query_valid_paths(&closure, true, false)
        .await
        .map_err(serve_error("cannot ask the builder which inputs it has"))?
        .into_iter()
        .collect();
    let missing: Vec<&str> = closure
        .iter()
        .map(String::as_str)
        .filter(|p| !valid.contains(*p))
        .collect();
    let mut copied_to_remote = Vec::new();
    for chunk in missing.chunks(EXPORT_CHUNK) {
        copied_to_remote.extend(export_to(client, local, chunk).await?);
    }
    timings.copy_to_remote = started.elapsed();

    let started = Instant::now();
    let result = client
        .build_derivation(drv_path.as_str(), &drv, settings)
        .await
        .map_err(serve_error("the builder failed while building"))?;
    timings.build = started.elapsed();
    debug!(
        drv = %drv_path,
        status = ?result.status,
        sent = copied_to_remote.len(),
        build_ms = millis(timings.build),
        "remote build finished"
    );

    let mut outcome = RemoteBuildOutcome {
        status: RemoteBuildStatus::Built,
        outputs,
        copied_to_remote,
        copied_back: Vec::new(),
        times_built: result.times_built,
        timings,
    };
    match result.status {
        status if status.is_success() => {}
        BuildResultStatus::TimedOut => {
            outcome.status = RemoteBuildStatus::TimedOut {
                message: result.error_msg,
            };
            return Ok(outcome);
        }
        status => {
            outcome.status = RemoteBuildStatus::Failed {
                status,
                message: result.error_msg,
            };
            return Ok(outcome);
        }
    }

    let started = Instant::now();
    let output_paths: Vec<StorePath> = outcome.outputs.values().cloned().collect();
    outcome.copied_back = copy_back(client, local, &output_paths).await?;
    outcome.timings.copy_back = started.elapsed();
    Ok(outcome)
}

/// A derivation as `nix show-derivation` prints it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ShownDerivation {
    outputs: BTreeMap<String, ShownOutput>,
    input_srcs: Vec<String>,
    input_drvs: BTreeMap<String, Vec<String>>,
    system: String,
    builder: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ShownOutput {
    path: Option<String>,
    hash_algo: Option<String>,
    hash: Option<String>,
}

/// Returns the derivation to send, its outputs and its input closure (references first).
async fn inputs(
    local: &NixCli,
    drv_path: &StorePath,
) -> Result<(BasicDerivation, BTreeMap<String, StorePath>, Vec<String>)> {
    let mut shown = show_derivations(local, &[drv_path.as_str()]).await?;
    let top = shown
        .remove(drv_path.as_str())
        .ok_or_else(|| output_error(local, drv_path.as_str(), "the derivation is missing"))?;

    let mut inputs: Vec<String> = top.input_srcs.clone();
    if !top.input_drvs.is_empty() {
        let names: Vec<&str> = top.input_drvs.keys().map(String::as_str).collect();
        let input_drvs = show_derivations(local, &names).await?;
        for (input, wanted) in &top.input_drvs {
            let shown = input_drvs
                .get(input)
                .ok_or_else(|| output_error(local, input, "an input derivation is missing"))?;
            for name in wanted {
                let path = shown
                    .outputs
                    .get(name)
                    .and_then(|o| o.path.clone())
                    .ok_or_else(|| {
                        output_error(local, input, "an input has no output path (floating CA)")
                    })?;
                inputs.push(path);
            }
        }
    }
    let inputs = store_paths(local, inputs)?;
    let valid = local.is_valid(&inputs).await?;
    if let Some((path, _)) = inputs.iter().zip(valid).find(|(_, v)| !v) {
        return Err(Error::InvalidPath {
            path: path.to_string(),
        });
    }
    let closure = if inputs.is_empty() {
        Vec::new()
    } else {
        let mut args = os_args(["--query", "--requisites"]);
        args.extend(inputs.iter().map(|p| OsString::from(p.as_str())));
        let stdout = local.run_ok(&local.config.nix_store, &args).await?;
        stdout.lines().map(str::to_owned).collect()
    };

    let mut outputs = BTreeMap::new();
    let mut drv_outputs = Vec::new();
    for (name, output) in top.outputs {
        let path = output.path.ok_or_else(|| {
            output_error(
                local,
                drv_path.as_str(),
                "floating CA outputs are not supported",
            )
        })?;
        let store_path = StorePath::new(&path)
            .map_err(|e| output_error(local, drv_path.as_str(), &e.to_string()))?;
        outputs.insert(name.clone(), store_path);
        drv_outputs.push(DerivationOutput {
            name,
            path,
            hash_algo: output.hash_algo.unwrap_or_default(),
            hash: output.hash.unwrap_or_default(),
        });
    }
    let drv = BasicDerivation {
        outputs: drv_outputs,
        input_srcs: closure.clone(),
        platform: top.system,
        builder: top.builder,
        args: top.args,
        env: top.env.into_iter().collect(),
    };
    Ok((drv, outputs, closure))
}

fn show_args(paths: &[&str]) -> Vec<OsString> {
    let mut args = os_args([
        "--extra-experimental-features",
        "nix-command",
        "show-derivation",
    ]);
    args.extend(paths.iter().map(OsString::from));
    args
}

async fn show_derivations(
    local: &NixCli,
    paths: &[&str],
) -> Result<BTreeMap<String, ShownDerivation>> {
    let args = show_args(paths);
    let stdout = local.run_ok(&local.config.nix, &args).await?;
    serde_json::from_str(&stdout).map_err(|e| Error::Output {
        command: command_line(&local.config.nix, &args),
        reason: e.to_string(),
    })
}

fn output_error(local: &NixCli, path: &str, reason: &str) -> Error {
    Error::Output {
        command: command_line(&local.config.nix, &show_args(&[path])),
        reason: format!("{path}: {reason}"),
    }
}

fn store_paths(local: &NixCli, paths: Vec<String>) -> Result<Vec<StorePath>> {
    paths
        .into_iter()
        .map(|p| StorePath::new(&p).map_err(|e| output_error(local, &p, &e.to_string())))
        .collect()
}

/// Sends `paths` (valid locally, references first or already on the builder) to the builder:
/// a local `nix-store --export` piped into `cmdImportPaths`.
async fn export_to<R, W>(
    client: &mut ServeClient<R, W>,
    local: &NixCli,
    paths: &[&str],
) -> Result<Vec<StorePath>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let program = &local.config.nix_store;
    let mut args = os_args(["--export"]);
    args.extend(paths.iter().map(OsString::from));
    let mut child = local
        .command(program, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| spawn_error(program, source))?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(no_pipes(program));
    };
    let stderr = tokio::spawn(read_capped(stderr));
    let mut export = BufReader::new(stdout);
    let imported = client.import_paths(&mut export).await;
    // Dropping the pipe stops an export the builder no longer reads.
    drop(export);
    if imported.is_err() {
        let _ = child.start_kill();
    }
    let finished = wait(&mut child, program, &args, stderr).await?;
    match imported {
        Ok(paths) if finished.code == Some(0) => Ok(paths),
        // The export failed on its own (it was not killed): its message says why.
        _ if finished.code.is_some_and(|c| c != 0) => Err(finished.into_error()),
        Ok(_) => Err(finished.into_error()),
        Err(source) => Err(Error::Serve {
            message: "cannot copy the inputs to the builder".to_owned(),
            source,
        }),
    }
}

/// Copies the `outputs` that are not valid locally from the builder into the local store;
/// returns the paths copied.
///
/// Only the outputs are asked for, as Nix's `build-remote` does: what they reference is either
/// one of them or in the input closure, which came from the local store. Asking the builder for
/// the closure instead would let a dishonest one add any path it likes to the local store (the
/// import checks no signatures), such as the future output of another derivation.
async fn copy_back<R, W>(
    client: &mut ServeClient<R, W>,
    local: &NixCli,
    outputs: &[StorePath],
) -> Result<Vec<StorePath>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let valid = local.is_valid(outputs).await?;
    let missing: Vec<&str> = outputs
        .iter()
        .zip(valid)
        .filter(|(_, v)| !v)
        .map(|(p, _)| p.as_str())
        .collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }

    let program = &local.config.nix_store;
    let args = os_args(["--import"]);
    let mut child = local
        .command(program, &args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| spawn_error(program, source))?;
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(no_pipes(program));
    };
    // Drained so that the import never blocks on a full pipe (it prints each path).
    let stdout = tokio::spawn(read_capped(stdout));
    let stderr = tokio::spawn(read_capped(stderr));
    let exported = client.export_paths(&missing, &mut stdin).await;
    // End of input: the import finishes, or drops a path whose record was cut short.
    drop(stdin);
    let finished = wait(&mut child, program, &args, stderr).await?;
    let _ = stdout.await;
    match exported {
        // The import stopped reading: its own message says why.
        Err(ServeError::Archive(super::NarError::Write(_))) => Err(finished.into_error()),
        Err(source) => Err(Error::Serve {
            message: "cannot copy the outputs back from the builder".to_owned(),
            source,
        }),
        Ok(_) if finished.code != Some(0) => Err(finished.into_error()),
        Ok(paths) => {
            // The import succeeded, so what it read is valid; an output the builder left out
            // (it does not have it) is not.
            match missing
                .iter()
                .find(|m| !paths.iter().any(|p| p.as_str() == **m))
            {
                Some(absent) => Err(Error::InvalidPath {
                    path: (*absent).to_owned(),
                }),
                None => Ok(paths),
            }
        }
    }
}

/// A finished helper process.
struct Finished {
    command: String,
    code: Option<i32>,
    status: String,
    stderr: Vec<u8>,
}

impl Finished {
    fn into_error(self) -> Error {
        Error::Command {
            message: stderr_message(&self.stderr)
                .unwrap_or_else(|| format!("nix-store exited with {}", self.status)),
            command: self.command,
            status: self.status,
        }
    }
}

async fn wait(
    child: &mut Child,
    program: &Path,
    args: &[OsString],
    stderr: tokio::task::JoinHandle<Vec<u8>>,
) -> Result<Finished> {
    let status = child.wait().await.map_err(|source| Error::Spawn {
        program: program.to_owned(),
        source,
    })?;
    let stderr = stderr.await.map_err(Error::Task)?;
    Ok(Finished {
        command: command_line(program, args),
        code: status.code(),
        status: status_text(status),
        stderr,
    })
}

/// Reads `pipe` to its end, keeping the first [`OUTPUT_CAP`] bytes.
async fn read_capped<P: AsyncRead + Unpin>(mut pipe: P) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut chunk = vec![0u8; 8192];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = OUTPUT_CAP.saturating_sub(kept.len()).min(n);
                kept.extend_from_slice(&chunk[..room]);
            }
        }
    }
}

fn no_pipes(program: &Path) -> Error {
    Error::Spawn {
        program: program.to_owned(),
        source: std::io::Error::other("the child's pipes are missing"),
    }
}

fn serve_error(message: &'static str) -> impl FnOnce(ServeError) -> Error {
    move |source| Error::Serve {
        message: message.to_owned(),
        source,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
