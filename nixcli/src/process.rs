//! Process handling for every module that starts Nix: arguments, running a command to
//! completion ([`output`]), what a finished process said ([`Finished`], and the one rule for the
//! message of a failed process, [`failure_message`]), spawn errors, and stopping a process group.
//!
//! A leaf: it uses only [`crate::error`] and the pure stderr parsers of [`crate::parse`]. How a
//! command is built for the configured Nix (program, `--store`, environment) is
//! `crate::config`'s business.

use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process_group};
use tokio::process::{Child, Command};
use tracing::debug;

use crate::error::{Error, Result};
use crate::parse::stderr::{first_error_line, last_line};

/// The capacity [`widen_pipe`] asks for: Linux's default limit for unprivileged processes
/// (`/proc/sys/fs/pipe-max-size`).
const WIDE_PIPE: usize = 1 << 20;

/// Gives the pipe behind `fd` 1 MiB of buffer instead of Linux's default 64 KiB, so that a
/// stream of archives crosses it in fewer, larger writes and reads, with fewer wake-ups of the
/// process at the other end (best effort: a pipe that cannot be widened stays as it is).
pub fn widen_pipe(fd: impl std::os::fd::AsFd) {
    if let Err(err) = rustix::pipe::fcntl_setpipe_size(fd, WIDE_PIPE) {
        debug!(%err, "cannot widen a pipe");
    }
}

/// Returns `args` as owned OS strings.
pub(crate) fn os_args<I, S>(args: I) -> Vec<OsString>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    args.into_iter().map(|a| a.as_ref().to_owned()).collect()
}

/// Renders a command line for logs and errors (long arguments such as the evaluation
/// expressions are shortened).
pub(crate) fn command_line(program: &Path, args: &[OsString]) -> String {
    let mut line = program.display().to_string();
    for arg in args {
        let arg = arg.to_string_lossy();
        line.push(' ');
        if arg.len() > 80 {
            let cut = (0..=80)
                .rev()
                .find(|&i| arg.is_char_boundary(i))
                .unwrap_or(0);
            line.push_str(&arg[..cut]);
            line.push('…');
        } else {
            line.push_str(&arg);
        }
    }
    line
}

/// Returns an exit status as text: `exit code 1`, `signal 9`.
pub(crate) fn status_text(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => "unknown status".to_owned(),
    }
}

/// Returns the error for a `program` that could not be started: [`Error::NixNotFound`] (whose
/// message says how to install Nix) when it does not exist, else [`Error::Spawn`].
pub(crate) fn spawn_error(program: &Path, source: std::io::Error) -> Error {
    if source.kind() == std::io::ErrorKind::NotFound {
        Error::NixNotFound {
            program: program.to_owned(),
            source,
        }
    } else {
        Error::Spawn {
            program: program.to_owned(),
            source,
        }
    }
}

/// Returns the message of a failed Nix process from its stderr: the first `error:` line
/// (without the prefix), else the last non-blank line; `None` when it printed nothing.
///
/// The one rule for what a failure says, used for [`Finished::message`], the build channels and
/// the helper processes of remote builds.
pub(crate) fn failure_message(stderr: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(stderr);
    first_error_line(&text).or_else(|| last_line(&text))
}

/// A finished Nix process.
#[derive(Debug)]
pub(crate) struct Finished {
    /// The command line, for logs and errors ([`command_line`]).
    pub(crate) command: String,
    pub(crate) code: Option<i32>,
    /// The exit status as text ([`status_text`]).
    pub(crate) status: String,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Finished {
    /// Returns what `program` run with `args` ended with.
    pub(crate) fn new(
        program: &Path,
        args: &[OsString],
        status: ExitStatus,
        stdout: &[u8],
        stderr: &[u8],
    ) -> Self {
        Self {
            command: command_line(program, args),
            code: status.code(),
            status: status_text(status),
            stdout: String::from_utf8_lossy(stdout).into_owned(),
            stderr: String::from_utf8_lossy(stderr).into_owned(),
        }
    }

    /// Returns whether the process exited with status 0.
    pub(crate) fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Returns the message of the failure ([`failure_message`]), else the exit status.
    pub(crate) fn message(&self) -> String {
        failure_message(self.stderr.as_bytes())
            .unwrap_or_else(|| format!("nix exited with {}", self.status))
    }

    /// Returns the [`Error::Command`] this process failed with.
    pub(crate) fn into_error(self) -> Error {
        Error::Command {
            message: self.message(),
            command: self.command,
            status: self.status,
        }
    }

    /// Returns stdout when the process succeeded, else an [`Error::Command`].
    pub(crate) fn into_success(self) -> Result<String> {
        if self.success() {
            Ok(self.stdout)
        } else {
            Err(self.into_error())
        }
    }
}

/// Runs `cmd` (`program` with `args`) to completion, capturing stdout and stderr, and logs it at
/// debug level with its duration.
pub(crate) async fn output(
    mut cmd: Command,
    program: &Path,
    args: &[OsString],
) -> Result<Finished> {
    let started = Instant::now();
    let output = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .map_err(|source| spawn_error(program, source))?;
    let finished = Finished::new(program, args, output.status, &output.stdout, &output.stderr);
    debug!(
        command = %finished.command,
        status = %finished.status,
        duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "ran nix"
    );
    Ok(finished)
}

/// Sends `signal` to the process group, ignoring errors (it may be gone already).
pub(crate) fn signal_group(group: Option<Pid>, signal: Signal) {
    if let Some(group) = group {
        let _ = kill_process_group(group, signal);
    }
}

/// Returns the process group id of a child started with `process_group(0)`.
pub(crate) fn group_of(child: &Child) -> Option<Pid> {
    child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .and_then(Pid::from_raw)
}

/// Stops a child and its process group: `SIGTERM` (Nix then stops its builder, whose sandbox
/// is in another session, and cleans up: measured at under 10 ms), `SIGKILL` after `grace`.
pub(crate) async fn terminate(
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

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    #[test]
    fn command_line_should_shorten_long_arguments_on_a_char_boundary() {
        let long = format!("{}é{}", "x".repeat(79), "y".repeat(50));
        let line = command_line(Path::new("nix"), &os_args(["eval", long.as_str()]));
        assert_eq!(line, format!("nix eval {}…", "x".repeat(79)));
    }

    #[test]
    fn failure_message_should_prefer_the_error_line() {
        assert_eq!(
            failure_message(b"warning: x\nerror: \x1b[31mbad store\x1b[0m\nmore\n").as_deref(),
            Some("bad store")
        );
        assert_eq!(failure_message(b"one\ntwo\n").as_deref(), Some("two"));
        assert_eq!(failure_message(b""), None);
    }

    #[test]
    fn finished_message_should_fall_back_to_the_exit_status_when_stderr_is_empty() {
        let args = os_args(["--import"]);
        let silent = Finished::new(
            Path::new("nix-store"),
            &args,
            ExitStatus::from_raw(1 << 8),
            b"",
            b"",
        );
        assert!(!silent.success());
        assert_eq!(silent.message(), "nix exited with exit code 1");
        let killed = Finished::new(
            Path::new("nix-store"),
            &args,
            ExitStatus::from_raw(9),
            b"",
            b"copying...\n",
        );
        assert_eq!(killed.message(), "copying...");
        let Error::Command {
            command, status, ..
        } = killed.into_error()
        else {
            panic!("not a command error")
        };
        assert_eq!(
            (command.as_str(), status.as_str()),
            ("nix-store --import", "signal 9")
        );
    }
}
