//! [`BuildMode::Process`](super::BuildMode::Process): one `nix-store --realise` process per build.
//!
//! The command is
//! `nix-store --log-format internal-json --realise DRV [--add-root ROOT --indirect]
//! [--timeout S] [--max-silent-time S] [--option max-jobs N]`:
//!
//! - `nix-store`, not `nix build`: its exit code says what happened (100 build failure, 101
//!   timeout, 1 anything else; `nix build` says 1 for all of them).
//! - The JSON log format lets Nix's own `error:` messages be told apart from builder output; the
//!   log file still gets the plain text (see [`crate::parse::log`]), written line by line as it
//!   arrives so that it can be tailed.
//! - `--add-root ROOT --indirect` roots `out` at `ROOT` and every other output at
//!   `ROOT-<output>` (verified with Nix 2.8: outputs `out dev doc` give `ROOT`, `ROOT-dev`,
//!   `ROOT-doc`; outputs `bin lib` give `ROOT-bin`, `ROOT-lib`).
//! - No `--keep-going`: a job is one derivation, so the first failure decides its outcome;
//!   failing fast frees the build slot sooner, and dependencies already built stay valid.
//! - `max-jobs` defaults to 1 so that one reconix build slot is one Nix build at a time.
//!
//! The process runs in its own process group. On cancellation the group gets `SIGTERM`, and
//! `SIGKILL` after a grace period if it is still there (see `crate::process::terminate`).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rustix::process::Signal;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::exit::classify_realise_exit;
use super::{Log, known_outputs, read_derivation, whole_seconds};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::port::{BuildOutcome, BuildRequest, BuildStatus};
use crate::process::{
    command_line, group_of, os_args, signal_group, spawn_error, status_text, terminate,
};

/// How long to keep reading output after `nix-store` exited (a process it started could hold
/// the pipes open).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Builds `req.drv_path` with its own `nix-store --realise` (see the module docs).
pub(super) async fn realise(
    cli: &Config,
    req: &BuildRequest,
    mut log: Log,
    cancel: CancellationToken,
) -> Result<BuildOutcome> {
    let started = Instant::now();
    let program = &cli.nix_store;
    let args = realise_args(req, cli.max_jobs);
    let mut child = cli
        .command(program, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so that cancelling can signal everything it started.
        .process_group(0)
        .spawn()
        .map_err(|source| spawn_error(program, source))?;
    let group = group_of(&child);

    let (tx, mut lines) = mpsc::unbounded_channel();
    let mut readers = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        readers.push(tokio::spawn(read_lines(stdout, tx.clone())));
    }
    if let Some(stderr) = child.stderr.take() {
        readers.push(tokio::spawn(read_lines(stderr, tx)));
    }

    let mut cancelled = false;
    let exit = loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => {
                cancelled = true;
                break terminate(&mut child, group, cli.kill_grace).await;
            }
            status = child.wait() => break status,
            Some(line) = lines.recv() => log.json_line(&line).await?,
        }
    };
    // Whatever is left in its group (normally nothing) goes too. The group id cannot have been
    // reused while any member of the group is alive, and an empty group just gives ESRCH.
    signal_group(group, Signal::KILL);
    let exit = exit.map_err(|source| Error::Spawn {
        program: program.clone(),
        source,
    })?;

    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while let Some(line) = lines.recv().await {
            log.json_line(&line).await?;
        }
        Ok::<_, Error>(())
    })
    .await;
    for reader in readers {
        reader.abort();
    }
    if let Ok(result) = drained {
        result?;
    }

    let code = exit.code();
    let (status, message) = if cancelled {
        log.text("reconix: build cancelled").await?;
        (BuildStatus::Cancelled, Some("build cancelled".to_owned()))
    } else {
        let status = classify_realise_exit(code);
        let message = match status {
            BuildStatus::Succeeded => None,
            _ => Some(
                log.first_error
                    .take()
                    .unwrap_or_else(|| format!("nix-store exited with {}", status_text(exit))),
            ),
        };
        (status, message)
    };
    log.flush().await?;

    let outputs = if status == BuildStatus::Succeeded {
        known_outputs(&read_derivation(cli, &req.drv_path).await?)
    } else {
        BTreeMap::new()
    };
    debug!(
        command = %command_line(program, &args),
        status = ?status,
        exit = %status_text(exit),
        duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "ran nix-store --realise"
    );
    Ok(BuildOutcome {
        status,
        exit_code: code,
        message,
        outputs,
    })
}

fn realise_args(req: &BuildRequest, max_jobs: Option<u32>) -> Vec<OsString> {
    let mut args = os_args([
        "--log-format",
        "internal-json",
        "--realise",
        req.drv_path.as_str(),
    ]);
    if let Some(root) = &req.gc_root {
        args.push("--add-root".into());
        args.push(root.as_os_str().to_owned());
        args.push("--indirect".into());
    }
    if let Some(timeout) = req.timeout {
        args.extend(os_args([
            "--timeout".to_owned(),
            whole_seconds(timeout).to_string(),
        ]));
    }
    if let Some(silent) = req.max_silent {
        args.extend(os_args([
            "--max-silent-time".to_owned(),
            whole_seconds(silent).to_string(),
        ]));
    }
    if let Some(n) = max_jobs {
        args.extend(os_args(["--option", "max-jobs", &n.to_string()]));
    }
    args
}

/// Sends each line of `stream` (without its newline) until EOF or until the receiver is gone.
async fn read_lines(stream: impl AsyncRead + Unpin, tx: mpsc::UnboundedSender<Vec<u8>>) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = Vec::new();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if line.last() == Some(&b'\n') {
                    line.pop();
                }
                if tx.send(line).is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use reconix_spec::names::StorePath;

    use super::*;

    fn request() -> BuildRequest {
        BuildRequest {
            drv_path: StorePath::new("/nix/store/7xbvbdqxbqxqnzg56mmd7l9bbrb4c534-a.drv").unwrap(),
            gc_root: Some(PathBuf::from("/roots/a")),
            timeout: Some(Duration::from_millis(1500)),
            max_silent: Some(Duration::ZERO),
            log_file: PathBuf::from("/logs/a.log"),
        }
    }

    #[test]
    fn realise_args_should_pass_roots_limits_and_max_jobs() {
        let args: Vec<String> = realise_args(&request(), Some(1))
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args.join(" "),
            "--log-format internal-json --realise /nix/store/7xbvbdqxbqxqnzg56mmd7l9bbrb4c534-a.drv \
             --add-root /roots/a --indirect --timeout 2 --max-silent-time 1 --option max-jobs 1"
        );
    }

    #[test]
    fn realise_args_should_leave_out_what_is_not_requested() {
        let req = BuildRequest {
            gc_root: None,
            timeout: None,
            max_silent: None,
            ..request()
        };
        assert_eq!(realise_args(&req, None).len(), 4);
    }
}
