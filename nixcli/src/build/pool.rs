//! Build channels and their pool, for [`BuildMode::Channel`](crate::BuildMode::Channel).
//!
//! A [`BuildChannel`] is one `nix-store --serve --write --option max-jobs 1` process (through
//! `Config::command`, so `--store` applies) in its own process group, after the serve-protocol
//! handshake. It runs one build at a time.
//!
//! **Logs.** The serve process prints build output on its *stderr*, outside the protocol, in
//! Nix's `internal-json` format, which (unlike the plain format on a pipe) keeps the builder's
//! colour codes; [`render_lines`] turns each line back into the text Nix would print. While a
//! build's reply is awaited on stdout, stderr is copied into that build's log file as it
//! arrives. Nix writes every log byte of a build to stderr (with `write(2)`, unbuffered)
//! before it writes the reply to stdout, so once the reply has been read, whatever that build
//! printed is already in the stderr pipe: reading stderr until a zero-timeout `poll(2)` finds
//! nothing readable captures all of it, and none of it can spill into the next build's log. Any
//! stray output between builds is drained (and logged at debug level) before the next command.
//!
//! **Build hook.** Nix consults its build hook (`build-remote`, for the `builders` setting) once
//! per `Worker`, and the serve protocol makes a new `Worker` for every command: so every channel
//! build started Nix's `build-remote`, a full Nix program costing ~20 ms of CPU, only for it to
//! answer `decline-permanently` when no remote builder is configured. That doubled the CPU cost
//! of a trivial build (200 builds on one channel: 8.5 s of CPU, against 4.4 s for one
//! `nix-store --realise` of all 200). So channels whose builds run in the `nix-store` process
//! itself get `--option build-hook` pointing at [`DECLINE_HOOK`], a 3-line shell script written
//! once per pool to a private temporary directory: the same answer for ~1 ms. Channel builds
//! therefore never go to Nix's own remote builders (reconix has its own); when the script cannot
//! be written, channels keep Nix's hook. Even the script costs a fork and exec per build
//! (~2 ms), so a derivation whose inputs are all valid goes by `cmdBuildDerivation` instead
//! ([`BuildCommand::Derivation`]), for which Nix never asks the hook.
//!
//! **Pool.** [`BuildPool`] lives in `NixCli` (shared by its clones). Channels are opened on
//! demand, go back to an idle list after a build (at most [`MAX_IDLE`] are kept; the daemon
//! limits concurrency itself) and retire after [`MAX_USES`] commands, because a serve process
//! keeps a temporary GC root on everything it built until it exits. A channel found dead when
//! taken from the idle list is discarded; one that breaks, is cancelled or whose build could not
//! be logged is killed (its whole process group) and never returned.

use std::ffi::OsStr;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::process::{Pid, Signal};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::Log;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::parse::log::render_lines;
use crate::process::{failure_message, group_of, os_args, signal_group, spawn_error, terminate};
use crate::serve::wire::{BasicDerivation, BuildResult, BuildResultStatus, ServedPathInfo};
use crate::serve::{BuildPathsReply, BuildSettings, ServeClient, ServeError};

/// How many idle channels the pool keeps; more are closed when returned.
pub(crate) const MAX_IDLE: usize = 8;
/// How many commands a channel runs before it is closed (bounding the temporary GC roots its
/// process holds).
pub(crate) const MAX_USES: u32 = 64;
/// How long `nix-store --serve` may take to answer the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one read may take once `poll(2)` said stderr is readable (it should not wait at
/// all; this only guards against a surprise).
const DRAIN_STEP: Duration = Duration::from_secs(1);
/// How long to read stderr to its end after the process stopped (a process it started could
/// hold the pipe open).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a broken channel's process gets to exit by itself before it is killed.
const EXIT_PATIENCE: Duration = Duration::from_secs(1);
/// The build hook of channels (see the module docs). Nix writes its settings and then a request
/// to the hook's stdin before reading the answer from its stderr; `exec cat` keeps stdin open
/// until Nix closes it (a hook that exited at once could make those writes fail with `EPIPE`).
pub(crate) const DECLINE_HOOK: &str =
    "#!/bin/sh\necho '# decline-permanently' >&2\nexec cat > /dev/null\n";

/// One `nix-store --serve --write` process, ready for a command.
pub(crate) struct BuildChannel {
    child: Child,
    group: Option<Pid>,
    client: ServeClient<ChildStdout, ChildStdin>,
    stderr: Stderr,
    uses: u32,
    /// The process was waited for: its pid (and so its group id) may be reused.
    reaped: bool,
}

/// Why a channel could not be opened.
pub(crate) enum OpenError {
    /// The program could not be started.
    Spawn(Error),
    /// It started but did not complete the handshake (e.g. a bad `--store`).
    Handshake {
        error: ServeError,
        exit: Option<ExitStatus>,
        /// What it printed on stderr.
        stderr: Vec<u8>,
    },
}

impl OpenError {
    /// Returns the message: the first `error:` line of stderr, else the protocol error.
    pub(crate) fn message(&self) -> String {
        match self {
            Self::Spawn(err) => err.to_string(),
            Self::Handshake { error, stderr, .. } => failure_message(stderr)
                .unwrap_or_else(|| format!("nix-store --serve failed: {error}")),
        }
    }

    /// Converts into the crate's error.
    pub(crate) fn into_error(self) -> Error {
        let message = self.message();
        match self {
            Self::Spawn(err) => err,
            Self::Handshake { error, .. } => Error::Serve {
                message,
                source: error,
            },
        }
    }
}

/// What a channel is asked to build.
pub(crate) enum BuildCommand<'a> {
    /// `cmdBuildPaths` of `drv!out,…`: builds the inputs that are missing too.
    Paths(&'a str),
    /// `cmdBuildDerivation` of a derivation whose inputs are all valid: Nix then never asks its
    /// build hook, which it does once per `cmdBuildPaths` (see the module docs).
    Derivation {
        drv_path: &'a str,
        drv: &'a BasicDerivation,
    },
}

/// Returns what `nix-store --realise` would have said of a `cmdBuildDerivation` result, as
/// `cmdBuildPaths` replies: built, or Nix's exit status (100 failed, 101 timed out, 1 for a
/// failure that is not the builder's) and message.
fn reply_of_result(result: BuildResult) -> BuildPathsReply {
    let status = match result.status {
        status if status.is_success() => return BuildPathsReply::Built,
        BuildResultStatus::TimedOut => 101,
        BuildResultStatus::TransientFailure
        | BuildResultStatus::MiscFailure
        | BuildResultStatus::Unknown(_) => 1,
        _ => 100,
    };
    BuildPathsReply::Failed {
        status,
        message: result.error_msg,
    }
}

/// How a build on a channel ended.
pub(crate) enum Ended {
    /// Nix replied; the channel can be reused.
    Replied(BuildPathsReply),
    /// The build was cancelled and the channel's processes stopped.
    Cancelled,
    /// The channel broke (its process died, or the protocol went out of step) and was stopped.
    Broken {
        /// Whether the command was sent: when not, nothing was started and a retry is safe.
        sent: bool,
        error: ServeError,
        exit: Option<ExitStatus>,
        /// What the process printed on stderr after the failure.
        stderr: Vec<u8>,
    },
}

impl BuildChannel {
    /// Starts `nix-store --serve --write` (with `hook` as its build hook, when given) and
    /// performs the handshake.
    async fn open(cli: &Config, hook: Option<&Path>) -> Result<Self, OpenError> {
        let program = &cli.nix_store;
        // Nix strips colour codes from builder output on a plain stderr that is not a terminal;
        // its JSON log keeps them (see the module docs).
        let mut args = os_args(["--log-format", "internal-json", "--serve", "--write"]);
        if let Some(n) = cli.max_jobs {
            args.extend(os_args(["--option", "max-jobs", &n.to_string()]));
        }
        if let Some(hook) = hook {
            args.extend(os_args(["--option", "build-hook"]));
            args.push(hook.as_os_str().to_owned());
        }
        let mut child = cli
            .command(program, &args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group, so that cancelling can signal everything it started.
            .process_group(0)
            .spawn()
            .map_err(|source| OpenError::Spawn(spawn_error(program, source)))?;
        let group = group_of(&child);
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            // Unreachable with piped stdio; the child is killed on drop.
            return Err(OpenError::Spawn(Error::Spawn {
                program: program.clone(),
                source: io::Error::other("the child has no pipes"),
            }));
        };
        let mut stderr = Stderr::new(stderr);
        let handshake =
            tokio::time::timeout(HANDSHAKE_TIMEOUT, ServeClient::handshake(stdout, stdin))
                .await
                .unwrap_or_else(|_| {
                    Err(ServeError::Io(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no handshake within 30 s",
                    )))
                });
        match handshake {
            Ok(client) => {
                debug!(pid = ?child.id(), "opened a build channel");
                Ok(Self {
                    child,
                    group,
                    client,
                    stderr,
                    uses: 0,
                    reaped: false,
                })
            }
            Err(error) => {
                let exit = stop(&mut child, group).await;
                let stderr = stderr.read_to_end().await;
                Err(OpenError::Handshake {
                    error,
                    exit,
                    stderr,
                })
            }
        }
    }

    /// Returns how many builds this channel has served (or started).
    pub(crate) fn uses(&self) -> u32 {
        self.uses
    }

    /// Returns whether the process is still running (it may have died while idle).
    fn is_alive(&mut self) -> bool {
        !self.stderr.closed && matches!(self.child.try_wait(), Ok(None))
    }

    /// Builds what `command` names, copying the build's output to `log` as it arrives.
    ///
    /// # Errors
    /// Only when the log cannot be written; the channel must then be dropped (which kills it).
    pub(crate) async fn build(
        &mut self,
        command: &BuildCommand<'_>,
        settings: &BuildSettings,
        log: &mut Log,
        cancel: &CancellationToken,
        grace: Duration,
    ) -> Result<Ended> {
        self.uses += 1;
        let stray = self.stderr.read_ready().await;
        if !stray.is_empty() {
            debug!(output = %String::from_utf8_lossy(&stray), "build channel printed between builds");
        }
        let sent = match command {
            BuildCommand::Paths(target) => self.client.send_build_paths(&[target], settings).await,
            BuildCommand::Derivation { drv_path, drv } => {
                self.client
                    .send_build_derivation(drv_path, drv, settings)
                    .await
            }
        };
        if let Err(error) = sent {
            let (exit, _) = self.shut_down().await;
            return Ok(Ended::Broken {
                sent: false,
                error,
                exit,
                stderr: Vec::new(),
            });
        }

        let reply = {
            let Self { client, stderr, .. } = &mut *self;
            let reply = async {
                match command {
                    BuildCommand::Paths(_) => client.read_build_paths_reply().await,
                    BuildCommand::Derivation { .. } => client
                        .read_build_derivation_reply()
                        .await
                        .map(reply_of_result),
                }
            };
            tokio::pin!(reply);
            loop {
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => break None,
                    reply = &mut reply => break Some(reply),
                    lines = stderr.read_lines(), if !stderr.closed => match lines {
                        Ok(Some(lines)) => {
                            if !lines.is_empty() {
                                log.bytes(&lines).await?;
                            }
                        }
                        // Its stderr is gone: the process is dying, and the reply read will say so.
                        Ok(None) | Err(_) => stderr.closed = true,
                    },
                }
            }
        };

        match reply {
            Some(Ok(reply)) => {
                // Everything this build printed is in the pipe by now (see the module docs).
                let rest = self.stderr.read_ready().await;
                log.bytes(&rest).await?;
                Ok(Ended::Replied(reply))
            }
            Some(Err(error)) => {
                let (exit, rest) = self.shut_down().await;
                log.bytes(&rest).await?;
                Ok(Ended::Broken {
                    sent: true,
                    error,
                    exit,
                    stderr: rest,
                })
            }
            None => {
                let exit = terminate(&mut self.child, self.group, grace).await;
                self.reaped = exit.is_ok();
                // Whatever is left in its group goes too. The group id cannot have been reused
                // while any member of the group is alive, and an empty group just gives ESRCH.
                signal_group(self.group, Signal::KILL);
                let rest = self.stderr.read_to_end().await;
                log.bytes(&rest).await?;
                Ok(Ended::Cancelled)
            }
        }
    }

    /// Returns which of `paths` are valid; with `lock`, the process keeps a temporary GC root on
    /// them for as long as it runs.
    pub(crate) async fn query_valid(
        &mut self,
        paths: &[&str],
        lock: bool,
    ) -> Result<Vec<String>, ServeError> {
        self.uses += 1;
        self.client.query_valid_paths(paths, lock, false).await
    }

    /// Returns the closure of `paths` with each path's info (`cmdQueryClosure`, then
    /// `cmdQueryPathInfos`): what `nix path-info --json --recursive` says, without a process.
    pub(crate) async fn closure_infos(
        &mut self,
        paths: &[&str],
    ) -> Result<Vec<ServedPathInfo>, ServeError> {
        self.uses += 1;
        let closure = self.client.query_closure(paths, false).await?;
        self.client.query_path_infos(&closure).await
    }

    /// Stops a broken channel's process: it gets [`EXIT_PATIENCE`] to exit (it normally has
    /// already), then its group is killed. Returns its exit status and the rest of its stderr.
    async fn shut_down(&mut self) -> (Option<ExitStatus>, Vec<u8>) {
        let exit = stop(&mut self.child, self.group).await;
        self.reaped = exit.is_some();
        (exit, self.stderr.read_to_end().await)
    }

    /// Kills the process group and waits for the process (so that its temporary GC roots are
    /// released before a collection).
    async fn close(mut self) {
        signal_group(self.group, Signal::KILL);
        if let Ok(Ok(_)) = tokio::time::timeout(EXIT_PATIENCE, self.child.wait()).await {
            self.reaped = true;
        }
    }
}

impl Drop for BuildChannel {
    fn drop(&mut self) {
        // An unreaped child still holds its pid, so the group id is still its own.
        if !self.reaped && matches!(self.child.try_wait(), Ok(None)) {
            signal_group(self.group, Signal::KILL);
        }
    }
}

/// Returns whether builds run inside the `nix-store` process `cli` starts (a local or chroot
/// store) rather than in a daemon, which has its own hook setting and may not see our files.
fn builds_in_process(cli: &Config) -> bool {
    match cli.effective_store().as_deref() {
        Some(store) if Path::new(store).is_absolute() => true,
        Some(store) if store == "local" => true,
        // `auto` is the local store for root, the daemon for anyone else.
        None => rustix::process::geteuid().is_root(),
        Some(store) => store == OsStr::new("auto") && rustix::process::geteuid().is_root(),
    }
}

/// A private temporary directory holding [`DECLINE_HOOK`], removed when dropped.
struct HookFile {
    dir: PathBuf,
}

impl HookFile {
    const NAME: &'static str = "decline-build-hook";

    const PREFIX: &'static str = "reconix-hook-";

    /// Writes the hook to a new directory of `base` that only this user can enter, after
    /// removing those left by processes that are gone (killed before they could clean up).
    fn create(base: &Path) -> io::Result<Self> {
        remove_stale_hooks(base);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        for attempt in 0..16 {
            let dir = base.join(format!(
                "{}{}-{nanos}-{attempt}",
                Self::PREFIX,
                std::process::id()
            ));
            // `create` (not `create_all`) fails on anything already there, symlinks included.
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
            let hook = Self { dir };
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o700)
                .open(hook.path())?;
            file.write_all(DECLINE_HOOK.as_bytes())?;
            return Ok(hook);
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "no free name for the build hook directory",
        ))
    }

    fn path(&self) -> PathBuf {
        self.dir.join(Self::NAME)
    }
}

/// Removes this user's hook directories in `base` whose process no longer exists.
fn remove_stale_hooks(base: &Path) {
    use std::os::unix::fs::MetadataExt;
    // Without /proc nothing can be known about other processes: leave everything.
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    let me = rustix::process::geteuid().as_raw();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(HookFile::PREFIX))
            .and_then(|rest| rest.split('-').next())
            .filter(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let ours =
            std::fs::symlink_metadata(entry.path()).is_ok_and(|m| m.is_dir() && m.uid() == me);
        if ours && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl Drop for HookFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits up to [`EXIT_PATIENCE`] for the child to exit, then kills its group and waits.
async fn stop(child: &mut Child, group: Option<Pid>) -> Option<ExitStatus> {
    if let Ok(Ok(status)) = tokio::time::timeout(EXIT_PATIENCE, child.wait()).await {
        return Some(status);
    }
    signal_group(group, Signal::KILL);
    let _ = child.start_kill();
    tokio::time::timeout(EXIT_PATIENCE, child.wait())
        .await
        .ok()
        .and_then(Result::ok)
}

/// The serve process's stderr, read in whole lines.
struct Stderr {
    pipe: ChildStderr,
    /// The start of a line whose newline has not arrived yet.
    partial: Vec<u8>,
    chunk: Box<[u8]>,
    closed: bool,
}

impl Stderr {
    fn new(pipe: ChildStderr) -> Self {
        Self {
            pipe,
            partial: Vec::new(),
            chunk: vec![0; 16 * 1024].into_boxed_slice(),
            closed: false,
        }
    }

    /// Waits for output and returns the complete lines it finished (maybe none); `None` at end
    /// of file. Cancel-safe: nothing is consumed unless the read completes.
    async fn read_lines(&mut self) -> io::Result<Option<Vec<u8>>> {
        let n = self.pipe.read(&mut self.chunk).await?;
        if n == 0 {
            self.closed = true;
            return Ok(None);
        }
        Ok(Some(render_lines(&complete_lines(
            &mut self.partial,
            &self.chunk[..n],
        ))))
    }

    /// Returns whether a read would not block: there is data, or the writer is gone.
    fn readable_now(&self) -> bool {
        let mut fds = [PollFd::new(&self.pipe, PollFlags::IN)];
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        match poll(&mut fds, Some(&zero)) {
            Ok(n) => n > 0 && !fds[0].revents().is_empty(),
            // Cannot tell: reading would block forever if there were nothing.
            Err(_) => false,
        }
    }

    /// Returns everything readable right now, ending with a newline (an unfinished line is
    /// ended: it belongs to whatever printed it before now).
    async fn read_ready(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while !self.closed && self.readable_now() {
            match tokio::time::timeout(DRAIN_STEP, self.read_lines()).await {
                Ok(Ok(Some(lines))) => out.extend_from_slice(&lines),
                Ok(Ok(None) | Err(_)) => self.closed = true,
                Err(_) => break,
            }
        }
        out.append(&mut self.take_partial());
        out
    }

    /// Reads to end of file (the process has stopped), for at most [`DRAIN_TIMEOUT`].
    async fn read_to_end(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while !self.closed {
                match self.read_lines().await {
                    Ok(Some(lines)) => out.extend_from_slice(&lines),
                    Ok(None) | Err(_) => self.closed = true,
                }
            }
        })
        .await;
        out.append(&mut self.take_partial());
        out
    }

    fn take_partial(&mut self) -> Vec<u8> {
        let mut rest = std::mem::take(&mut self.partial);
        if !rest.is_empty() {
            rest.push(b'\n');
        }
        render_lines(&rest)
    }
}

/// Appends `chunk` to `partial` and takes back every complete line (newlines included), leaving
/// the unfinished last line in `partial`.
fn complete_lines(partial: &mut Vec<u8>, chunk: &[u8]) -> Vec<u8> {
    match chunk.iter().rposition(|&b| b == b'\n') {
        None => {
            partial.extend_from_slice(chunk);
            Vec::new()
        }
        Some(end) => {
            let mut lines = std::mem::take(partial);
            lines.extend_from_slice(&chunk[..=end]);
            partial.extend_from_slice(&chunk[end + 1..]);
            lines
        }
    }
}

/// Idle build channels, shared by the clones of one `NixCli`.
#[derive(Default)]
pub(crate) struct BuildPool {
    idle: Mutex<Vec<BuildChannel>>,
    /// Written at the first channel; `None` when it could not be.
    hook: OnceLock<Option<HookFile>>,
}

impl std::fmt::Debug for BuildPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildPool")
            .field("idle", &self.idle().len())
            .finish()
    }
}

impl BuildPool {
    fn idle(&self) -> MutexGuard<'_, Vec<BuildChannel>> {
        // A panic while holding the lock cannot leave the list inconsistent.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns the path of the decline hook, writing it on first use.
    fn decline_hook(&self) -> Option<PathBuf> {
        self.hook
            .get_or_init(|| {
                HookFile::create(&std::env::temp_dir())
                    .inspect_err(
                        |e| warn!(error = %e, "cannot write the build hook, keeping Nix's"),
                    )
                    .ok()
            })
            .as_ref()
            .map(HookFile::path)
    }

    /// Opens a new channel, with the decline hook when its builds run in its own process.
    async fn open(&self, cli: &Config) -> Result<BuildChannel, OpenError> {
        let hook = if builds_in_process(cli) {
            self.decline_hook()
        } else {
            None
        };
        BuildChannel::open(cli, hook.as_deref()).await
    }

    /// Returns an idle channel that is still alive, or opens a new one.
    pub(crate) async fn acquire(&self, cli: &Config) -> Result<BuildChannel, OpenError> {
        loop {
            let idle = self.idle().pop();
            let Some(mut channel) = idle else {
                return self.open(cli).await;
            };
            if channel.is_alive() {
                return Ok(channel);
            }
            debug!(pid = ?channel.child.id(), "discarding a build channel that died while idle");
        }
    }

    /// Returns a healthy channel to the idle list, or closes it when it is worn out or the list
    /// is full.
    pub(crate) fn release(&self, channel: BuildChannel) {
        if channel.uses >= MAX_USES {
            debug!(uses = channel.uses, "retiring a build channel");
            return;
        }
        let mut idle = self.idle();
        if idle.len() < MAX_IDLE {
            idle.push(channel);
        } else {
            drop(idle);
            drop(channel);
        }
    }

    /// Closes every idle channel and waits for their processes to exit.
    pub(crate) async fn close_idle(&self) {
        let channels = std::mem::take(&mut *self.idle());
        for channel in channels {
            channel.close().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NixCli;

    #[test]
    fn complete_lines_should_hold_back_an_unfinished_line() {
        let mut partial = Vec::new();
        assert_eq!(complete_lines(&mut partial, b"one\ntw"), b"one\n");
        assert_eq!(partial, b"tw");
        assert_eq!(complete_lines(&mut partial, b"o"), b"");
        assert_eq!(
            complete_lines(&mut partial, b"\nthree\nfo"),
            b"two\nthree\n"
        );
        assert_eq!(partial, b"fo");
        assert_eq!(complete_lines(&mut partial, b"ur\n"), b"four\n");
        assert!(partial.is_empty());
    }

    #[test]
    fn hook_file_should_answer_decline_permanently_and_vanish_when_dropped() {
        let base = tempfile::tempdir().unwrap();
        let hook = HookFile::create(base.path()).unwrap();
        let out = std::process::Command::new(hook.path())
            .arg("0") // Nix passes its verbosity
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(out.stderr, b"# decline-permanently\n");
        let mode = std::fs::metadata(&hook.dir).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o700
        );
        let dir = hook.dir.clone();
        drop(hook);
        assert!(!dir.exists());
    }

    #[test]
    fn hook_file_should_remove_the_hooks_of_processes_that_are_gone() {
        let base = tempfile::tempdir().unwrap();
        // pid_max is at most 2^22, so this pid cannot exist.
        let stale = base.path().join("reconix-hook-99999999-1-0");
        let live = base
            .path()
            .join(format!("reconix-hook-{}-1-0", std::process::id()));
        let other = base.path().join("reconix-hook-notes");
        for dir in [&stale, &live, &other] {
            std::fs::create_dir(dir).unwrap();
        }
        let hook = HookFile::create(base.path()).unwrap();
        assert!(!stale.exists());
        assert!(live.exists() && other.exists() && hook.dir.exists());
    }

    #[test]
    fn builds_in_process_should_hold_for_local_and_chroot_stores_only() {
        let cli = NixCli::new().with_env("NIX_REMOTE", "");
        let builds_in_process = |cli: &NixCli| builds_in_process(&cli.config);
        assert!(builds_in_process(
            &cli.clone().with_store("/var/lib/ci-store")
        ));
        assert!(builds_in_process(&cli.clone().with_store("local")));
        assert!(!builds_in_process(&cli.clone().with_store("daemon")));
        assert!(!builds_in_process(
            &cli.clone().with_store("ssh-ng://builder")
        ));
        assert_eq!(
            builds_in_process(&cli),
            rustix::process::geteuid().is_root()
        );
    }

    /// A fake `nix-store` that answers the handshake, then prints `count` numbered lines on
    /// stderr right before each build reply, and `stray` between builds.
    fn fake_nix_store(dir: &std::path::Path) -> std::path::PathBuf {
        let script = dir.join("nix-store");
        std::fs::write(
            &script,
            r#"#!/bin/sh
# handshake: magic in (8), magic 2 + version out, client version in (8)
head -c 8 > /dev/null
printf '\313\356\122\124\000\000\000\000\007\002\000\000\000\000\000\000'
head -c 8 > /dev/null
build=0
while :; do
  # cmdBuildPaths with one path of 32 bytes: 8 + 8 + 8 + 32 + 6 * 8 = 104 bytes
  [ "$(head -c 104 | wc -c)" -eq 104 ] || exit 0
  build=$((build + 1))
  i=0
  while [ $i -lt 2000 ]; do echo "build-$build-line-$i" >&2; i=$((i + 1)); done
  printf '\000\000\000\000\000\000\000\000'
done
"#,
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        script
    }

    #[tokio::test]
    async fn build_should_capture_each_builds_stderr_exactly_into_its_own_log() {
        let dir = tempfile::tempdir().unwrap();
        let cli = NixCli::new().with_nix_store_program(fake_nix_store(dir.path()));
        let mut channel = match cli.pool.open(&cli.config).await {
            Ok(channel) => channel,
            Err(err) => panic!("{}", err.message()),
        };
        let target = "/nix/store/aaaaaaaaaaaaaaaaa.drv";
        assert_eq!(
            target.len(),
            32,
            "the fake server reads 104 bytes per command"
        );
        for build in 1..=3 {
            let path = dir.path().join(format!("{build}.log"));
            let mut log = Log::create(&path).await.unwrap();
            let ended = channel
                .build(
                    &BuildCommand::Paths(target),
                    &BuildSettings::default(),
                    &mut log,
                    &CancellationToken::new(),
                    Duration::from_secs(1),
                )
                .await
                .unwrap();
            assert!(matches!(ended, Ended::Replied(BuildPathsReply::Built)));
            log.flush().await.unwrap();
            let text = std::fs::read_to_string(&path).unwrap();
            let expected: String = (0..2000)
                .map(|i| format!("build-{build}-line-{i}\n"))
                .collect();
            assert!(text == expected, "build {build}: {} bytes", text.len());
        }
        assert!(channel.is_alive());
        assert_eq!(channel.uses, 3);
    }

    #[tokio::test]
    async fn open_should_report_the_error_of_a_server_that_exits_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("nix-store");
        std::fs::write(&script, "#!/bin/sh\necho 'error: bad store' >&2\nexit 1\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let cli = NixCli::new().with_nix_store_program(&script);
        let Err(err) = cli.pool.open(&cli.config).await else {
            panic!("opened a channel to a dead server")
        };
        assert_eq!(err.message(), "bad store");
        assert!(matches!(
            err,
            OpenError::Handshake { exit: Some(status), .. } if status.code() == Some(1)
        ));
    }

    #[tokio::test]
    async fn acquire_should_discard_a_channel_that_died_while_idle() {
        let dir = tempfile::tempdir().unwrap();
        let cli = NixCli::new().with_nix_store_program(fake_nix_store(dir.path()));
        let Ok(mut channel) = cli.pool.acquire(&cli.config).await else {
            panic!("no channel")
        };
        let first = channel.child.id();
        signal_group(channel.group, Signal::KILL);
        channel.child.wait().await.unwrap();
        cli.pool.release(channel);
        let Ok(mut second) = cli.pool.acquire(&cli.config).await else {
            panic!("no channel")
        };
        assert_ne!(second.child.id(), first);
        assert!(second.is_alive());
        cli.pool.release(second);
        let Ok(third) = cli.pool.acquire(&cli.config).await else {
            panic!("no channel")
        };
        assert_eq!(third.uses, 0);
        cli.pool.release(third);
        assert_eq!(cli.pool.idle().len(), 1);
        cli.pool.close_idle().await;
        assert_eq!(cli.pool.idle().len(), 0);
    }
}
