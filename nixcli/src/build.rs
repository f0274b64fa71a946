//! `NixCli::realise`: one `nix-store --realise` process per build.
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
//! The process runs in its own process group. On cancellation the group gets `SIGTERM` (Nix
//! then stops its builder, whose sandbox is in another session, and cleans up: measured at
//! under 10 ms), and `SIGKILL` after a grace period if it is still there.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use reconix_spec::names::StorePath;
use rustix::process::{Pid, Signal, kill_process_group};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::Child;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::cli::{NixCli, command_line, create_parent, os_args, spawn_error, status_text};
use crate::parse::aterm::parse_derivation;
use crate::parse::exit::classify_realise_exit;
use crate::parse::log::{LogLine, parse_log_line};
use crate::port::{BuildOutcome, BuildRequest, BuildStatus};
use crate::{Error, Result};

/// How long to keep reading output after `nix-store` exited (a process it started could hold
/// the pipes open).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Builds `req.drv_path` (see the module docs).
pub(crate) async fn realise(
    cli: &NixCli,
    req: BuildRequest,
    cancel: CancellationToken,
) -> Result<BuildOutcome> {
    let started = Instant::now();
    create_parent(&req.log_file).await?;
    if let Some(root) = &req.gc_root {
        create_parent(root).await?;
    }
    let mut log = Log {
        file: tokio::fs::File::create(&req.log_file)
            .await
            .map_err(|source| Error::Io {
                path: req.log_file.clone(),
                source,
            })?,
        path: req.log_file.clone(),
        first_error: None,
    };

    if cancel.is_cancelled() {
        log.text("reconix: build cancelled before it started")
            .await?;
        log.flush().await?;
        return Ok(BuildOutcome {
            status: BuildStatus::Cancelled,
            exit_code: None,
            message: Some("build cancelled".to_owned()),
            outputs: BTreeMap::new(),
        });
    }

    let program = &cli.config.nix_store;
    let args = realise_args(&req, cli.config.max_jobs);
    let mut child = cli
        .command(program, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so that cancelling can signal everything it started.
        .process_group(0)
        .spawn()
        .map_err(|source| spawn_error(program, source))?;
    let group = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(Pid::from_raw);

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
                break terminate(&mut child, group, cli.config.kill_grace).await;
            }
            status = child.wait() => break status,
            Some(line) = lines.recv() => log.line(&line).await?,
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
            log.line(&line).await?;
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
        drv_outputs(&req.drv_path, &cli.physical(&req.drv_path)).await?
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
        args.extend(os_args(["--timeout".to_owned(), whole_seconds(timeout)]));
    }
    if let Some(silent) = req.max_silent {
        args.extend(os_args([
            "--max-silent-time".to_owned(),
            whole_seconds(silent),
        ]));
    }
    if let Some(n) = max_jobs {
        args.extend(os_args(["--option", "max-jobs", &n.to_string()]));
    }
    args
}

/// Rounds up to whole seconds, at least 1 (Nix reads 0 as "no limit").
fn whole_seconds(d: Duration) -> String {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1).to_string()
}

/// Sends `signal` to the process group, ignoring errors (it may be gone already).
fn signal_group(group: Option<Pid>, signal: Signal) {
    if let Some(group) = group {
        let _ = kill_process_group(group, signal);
    }
}

async fn terminate(
    child: &mut Child,
    group: Option<Pid>,
    grace: Duration,
) -> std::io::Result<ExitStatus> {
    signal_group(group, Signal::TERM);
    if let Ok(status) = tokio::time::timeout(grace, child.wait()).await {
        return status;
    }
    signal_group(group, Signal::KILL);
    child.kill().await?;
    child.wait().await
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

/// The build log file.
struct Log {
    file: tokio::fs::File,
    path: std::path::PathBuf,
    first_error: Option<String>,
}

impl Log {
    async fn line(&mut self, raw: &[u8]) -> Result<()> {
        match parse_log_line(&String::from_utf8_lossy(raw)) {
            LogLine::Text(text) => self.text(&text).await,
            LogLine::Error { text, message } => {
                self.first_error.get_or_insert(message);
                self.text(&text).await
            }
            LogLine::Nothing => Ok(()),
        }
    }

    async fn text(&mut self, text: &str) -> Result<()> {
        let mut bytes = Vec::with_capacity(text.len() + 1);
        bytes.extend_from_slice(text.as_bytes());
        bytes.push(b'\n');
        self.file
            .write_all(&bytes)
            .await
            .map_err(|source| Error::Io {
                path: self.path.clone(),
                source,
            })
    }

    async fn flush(&mut self) -> Result<()> {
        self.file.flush().await.map_err(|source| Error::Io {
            path: self.path.clone(),
            source,
        })
    }
}

/// Reads the output paths of a derivation from its `.drv` file.
async fn drv_outputs(drv_path: &StorePath, file: &Path) -> Result<BTreeMap<String, StorePath>> {
    let text = tokio::fs::read(file)
        .await
        .map_err(|source| Error::DrvRead {
            path: drv_path.to_string(),
            source,
        })?;
    let drv = parse_derivation(&text).map_err(|source| Error::DrvParse {
        path: drv_path.to_string(),
        source,
    })?;
    // Content-addressed outputs have no path in the .drv; they are not reported.
    Ok(drv
        .outputs
        .into_iter()
        .filter_map(|(name, path)| path.map(|p| (name, p)))
        .collect())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

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

    #[tokio::test]
    async fn realise_should_not_start_nix_when_already_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let cli = NixCli::new().with_nix_store_program("/nonexistent/nix-store");
        let req = BuildRequest {
            log_file: dir.path().join("logs/a.log"),
            ..request()
        };
        let cancel = CancellationToken::new();
        cancel.cancel();
        let outcome = realise(&cli, req.clone(), cancel).await.unwrap();
        assert_eq!(outcome.status, BuildStatus::Cancelled);
        assert!(
            std::fs::read_to_string(&req.log_file)
                .unwrap()
                .contains("cancelled")
        );
    }

    #[tokio::test]
    async fn realise_should_say_how_to_install_nix_when_nix_store_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let cli = NixCli::new().with_nix_store_program("/nonexistent/nix-store");
        let req = BuildRequest {
            log_file: dir.path().join("a.log"),
            gc_root: Some(dir.path().join("roots/a")),
            ..request()
        };
        let err = realise(&cli, req, CancellationToken::new())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NixNotFound { .. }), "{err:?}");
    }

    #[test]
    fn whole_seconds_should_round_up_and_never_be_zero() {
        assert_eq!(whole_seconds(Duration::from_secs(3)), "3");
        assert_eq!(whole_seconds(Duration::from_millis(3001)), "4");
        assert_eq!(whole_seconds(Duration::ZERO), "1");
    }
}
