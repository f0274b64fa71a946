//! The error type of this crate.

use std::path::PathBuf;

use crate::parse::aterm::DrvParseError;

/// Says how to get Nix when it is missing; part of [`Error::NixNotFound`].
const INSTALL_HINT: &str =
    "install it with scripts/install-nix.sh (or run `make test`, which does)";

/// Errors from running Nix or reading what it produced.
///
/// A job that fails to evaluate or build is *not* an error: it is reported in
/// [`EvalJob::result`](crate::EvalJob::result) or [`BuildOutcome`](crate::BuildOutcome).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The Nix program is not installed (or not on `PATH`).
    #[error("nix not found: `{program}` could not be started: {INSTALL_HINT}")]
    NixNotFound {
        /// The program that was looked for.
        program: PathBuf,
        /// The error from `exec`.
        #[source]
        source: std::io::Error,
    },
    /// A Nix program could not be started for another reason.
    #[error("cannot start `{program}`")]
    Spawn {
        /// The program that was started.
        program: PathBuf,
        /// The error from `exec`.
        #[source]
        source: std::io::Error,
    },
    /// The flake as a whole could not be evaluated (missing `flake.nix`, syntax error, fetch
    /// failure, unlocked ref…), so no job can be listed.
    #[error("flake evaluation failed: {message}")]
    FlakeEval {
        /// The first `error:` line of Nix's stderr, without the `error: ` prefix.
        message: String,
    },
    /// A Nix command exited unsuccessfully where success was expected.
    #[error("`{command}` failed ({status}): {message}")]
    Command {
        /// The command line, for the log.
        command: String,
        /// The exit status as text (`exit code 1`, `signal 9`).
        status: String,
        /// The first `error:` line of its stderr, or its last stderr line.
        message: String,
    },
    /// A Nix command succeeded but printed something this crate cannot understand.
    #[error("cannot parse the output of `{command}`: {reason}")]
    Output {
        /// The command line, for the log.
        command: String,
        /// What was wrong.
        reason: String,
    },
    /// A `.drv` file could not be read.
    #[error("cannot read derivation {path}")]
    DrvRead {
        /// The derivation's path.
        path: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// A store path's files could not be read to be sent to a builder (or changed meanwhile).
    #[error("cannot read store path {path}")]
    StoreRead {
        /// The store path.
        path: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// A `.drv` file could not be parsed.
    #[error("cannot parse derivation {path}")]
    DrvParse {
        /// The derivation's path.
        path: String,
        /// What was wrong.
        #[source]
        source: DrvParseError,
    },
    /// A local file (build log, GC-root directory) could not be written.
    #[error("cannot write {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// A `nix-store --serve` channel could not be opened or broke during a command.
    #[error("`nix-store --serve` failed: {message}")]
    Serve {
        /// The first `error:` line of its stderr, or what was being done.
        message: String,
        /// The protocol error.
        #[source]
        source: crate::serve::ServeError,
    },
    /// A store path that must be valid (present in the store) is not.
    #[error("path '{path}' is not valid")]
    InvalidPath {
        /// The store path.
        path: String,
    },
    /// A background task of this crate panicked or was aborted.
    #[error("internal task failed")]
    Task(#[source] tokio::task::JoinError),
}

impl Error {
    /// Returns whether this is a local file that could not be written because the disk is full
    /// or failing ([`is_storage_error`]): trouble of the machine, not of the build.
    pub fn is_storage_full(&self) -> bool {
        matches!(self, Self::Io { source, .. } if is_storage_error(source))
    }
}

/// Returns whether `err` means the disk is full or failing: `ENOSPC`, `EDQUOT` or `EIO`. Such
/// errors pass when space returns (or the disk is replaced), so work that met one waits and is
/// tried again instead of failing.
pub fn is_storage_error(err: &std::io::Error) -> bool {
    // EIO has no `ErrorKind` of its own; 5 is its number on Linux, the only supported system.
    const EIO: i32 = 5;
    matches!(
        err.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    ) || err.raw_os_error() == Some(EIO)
}

/// Returns whether a message Nix printed says its disk is full (`No space left on device`,
/// `Disk quota exceeded`): Nix reports its own IO errors only as text.
pub fn is_storage_message(message: &str) -> bool {
    message.contains("No space left on device") || message.contains("Disk quota exceeded")
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_and_failing_disks_should_be_storage_errors_and_nothing_else() {
        let full = std::io::Error::from_raw_os_error(28);
        let quota = std::io::Error::from_raw_os_error(122);
        let eio = std::io::Error::from_raw_os_error(5);
        let denied = std::io::Error::from_raw_os_error(13);
        assert!(is_storage_error(&full) && is_storage_error(&quota) && is_storage_error(&eio));
        assert!(!is_storage_error(&denied));
        let io = |source| Error::Io {
            path: PathBuf::from("/state/logs/x.log"),
            source,
        };
        assert!(io(full).is_storage_full());
        assert!(!io(denied).is_storage_full());
        assert!(is_storage_message(
            "error: writing to file: No space left on device"
        ));
        assert!(!is_storage_message("builder for '/nix/store/x.drv' failed"));
    }
}
