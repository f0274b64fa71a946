//! The loops' error type, and the [`ErrorKind`]s the runtime's error policy decides on
//! (`runtime::error_backoff`): transient, storage, forge unauthorised, rate-limited, invalid spec.

use std::path::PathBuf;
use std::time::Duration;

use reconix_forge::ApiError;

/// An error of a reconcile loop.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The status database failed.
    #[error("status database")]
    Status(#[from] reconix_status::Error),
    /// Nix could not be run or gave an unusable answer.
    #[error("nix")]
    Nix(#[from] reconix_nixcli::Error),
    /// git could not read a local repository.
    #[error("git in {path}: {message}")]
    Git {
        /// The repository.
        path: PathBuf,
        /// What git said.
        message: String,
    },
    /// A filesystem operation failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A forge's API failed.
    #[error("forge {forge}")]
    Forge {
        /// The forge's name in the spec.
        forge: String,
        /// What the client reported.
        #[source]
        source: reconix_forge::ApiError,
    },
    /// A push to a binary cache failed (recorded per path, retried with backoff).
    #[error("pushing to cache {cache}: {message}")]
    CachePush {
        /// The cache's push-url.
        cache: String,
        /// What failed.
        message: String,
    },
    /// The spec does not allow what the loop was asked to do.
    #[error("{key}: {message}")]
    Config {
        /// The key being reconciled.
        key: String,
        /// What is wrong.
        message: String,
    },
}

impl Error {
    /// Returns a [`Error::Config`] for `key`.
    pub fn config(key: impl std::fmt::Display, message: impl Into<String>) -> Self {
        Self::Config {
            key: key.to_string(),
            message: message.into(),
        }
    }
}

/// What kind of failure an error is: what the error policy (`runtime::error_backoff`) decides
/// the retry on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Likely to pass by itself (a busy database, a network error, a forge's 5xx, a failed
    /// evaluation): retry soon, backing off.
    Transient,
    /// This machine's disk is full or failing ([`is_storage_trouble`]): retry within seconds of
    /// space returning.
    Storage,
    /// A forge rejected the token (401). The `forges` loop has paused the forge and wakes the
    /// loops that call it once the token works again; retrying meanwhile only adds 401s.
    Unauthorized,
    /// A forge's rate limit is exhausted until `retry_after` from now.
    RateLimited {
        /// How long the forge asked to wait.
        retry_after: Duration,
    },
    /// The spec does not allow what the loop was asked to do: only a spec change helps.
    InvalidSpec,
}

impl ErrorKind {
    /// Returns the kind of `err`: that of the first [`Error`] in its chain of causes, else
    /// [`ErrorKind::Storage`] for storage trouble, else [`ErrorKind::Transient`].
    pub fn of(err: &(dyn std::error::Error + 'static)) -> Self {
        let mut next = Some(err);
        while let Some(e) = next {
            if let Some(e) = e.downcast_ref::<Error>() {
                return e.kind();
            }
            next = e.source();
        }
        if is_storage_trouble(err) {
            Self::Storage
        } else {
            Self::Transient
        }
    }
}

impl Error {
    /// Returns what kind of failure this is; storage trouble anywhere in the chain of causes
    /// comes first (a full disk is a full disk, whichever call met it).
    pub fn kind(&self) -> ErrorKind {
        if is_storage_trouble(self) {
            return ErrorKind::Storage;
        }
        match self {
            Self::Forge {
                source: ApiError::Unauthorized { .. },
                ..
            } => ErrorKind::Unauthorized,
            Self::Forge {
                source: ApiError::RateLimited { retry_after },
                ..
            } => ErrorKind::RateLimited {
                retry_after: *retry_after,
            },
            Self::Config { .. } => ErrorKind::InvalidSpec,
            Self::Status(_)
            | Self::Nix(_)
            | Self::Git { .. }
            | Self::Io { .. }
            | Self::Forge { .. }
            | Self::CachePush { .. } => ErrorKind::Transient,
        }
    }
}

/// Returns whether `err` or one of its causes says that this machine's disk is full or failing
/// (SQLite's `SQLITE_FULL`/`SQLITE_IOERR`, or `ENOSPC`, `EDQUOT`, `EIO`): trouble that passes
/// when space returns, so a loop meeting it retries soon instead of backing off for minutes.
pub fn is_storage_trouble(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if e.downcast_ref::<reconix_status::Error>()
            .is_some_and(reconix_status::Error::is_storage_full)
            || e.downcast_ref::<reconix_nixcli::Error>()
                .is_some_and(reconix_nixcli::Error::is_storage_full)
            || e.downcast_ref::<std::io::Error>()
                .is_some_and(reconix_nixcli::is_storage_error)
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// The loops' result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_anywhere_in_the_chain_should_be_storage_trouble() {
        let full = Error::Io {
            context: "writing a GC root".to_owned(),
            source: std::io::Error::from_raw_os_error(28),
        };
        assert!(is_storage_trouble(&full));
        let nix = Error::Nix(reconix_nixcli::Error::Io {
            path: "/state/logs/x.log".into(),
            source: std::io::Error::from_raw_os_error(28),
        });
        assert!(is_storage_trouble(&nix));
        let denied = Error::Io {
            context: "writing a GC root".to_owned(),
            source: std::io::Error::from_raw_os_error(13),
        };
        assert!(!is_storage_trouble(&denied));
        assert!(!is_storage_trouble(&Error::config("k", "bad")));
    }

    fn forge(source: ApiError) -> Error {
        Error::Forge {
            forge: "gh".to_owned(),
            source,
        }
    }

    #[test]
    fn errors_should_be_classified_by_what_helps_them_pass() {
        let unauthorized = forge(ApiError::Unauthorized {
            method: "GET".to_owned(),
            path: "/repos/a/b".to_owned(),
        });
        assert_eq!(unauthorized.kind(), ErrorKind::Unauthorized);
        let limited = forge(ApiError::RateLimited {
            retry_after: Duration::from_secs(90),
        });
        assert_eq!(
            limited.kind(),
            ErrorKind::RateLimited {
                retry_after: Duration::from_secs(90)
            }
        );
        assert_eq!(
            Error::config("gh/a/b", "forge left the spec").kind(),
            ErrorKind::InvalidSpec
        );
        let server = forge(ApiError::Server {
            status: 502,
            method: "GET".to_owned(),
            path: "/".to_owned(),
        });
        assert_eq!(server.kind(), ErrorKind::Transient);
        let git = Error::Git {
            path: "/repo".into(),
            message: "locked".to_owned(),
        };
        assert_eq!(git.kind(), ErrorKind::Transient);
        let denied = Error::Io {
            context: "writing a GC root".to_owned(),
            source: std::io::Error::from_raw_os_error(13),
        };
        assert_eq!(denied.kind(), ErrorKind::Transient);
    }

    #[test]
    fn storage_trouble_should_be_its_own_kind_whichever_call_met_it() {
        let full = Error::Io {
            context: "writing a GC root".to_owned(),
            source: std::io::Error::from_raw_os_error(28),
        };
        assert_eq!(full.kind(), ErrorKind::Storage);
        let nix = Error::Nix(reconix_nixcli::Error::Io {
            path: "/state/logs/x.log".into(),
            source: std::io::Error::from_raw_os_error(28),
        });
        assert_eq!(nix.kind(), ErrorKind::Storage);
    }

    #[test]
    fn the_kind_of_any_error_should_come_from_the_loop_error_in_its_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] Error);
        let wrapped = Outer(Error::config("k", "bad"));
        assert_eq!(ErrorKind::of(&wrapped), ErrorKind::InvalidSpec);
        // Errors of other types (the runtime's tests use their own) are transient unless
        // they say the disk is full.
        let other = std::io::Error::other("disk on fire");
        assert_eq!(ErrorKind::of(&other), ErrorKind::Transient);
        let full = std::io::Error::from_raw_os_error(28);
        assert_eq!(ErrorKind::of(&full), ErrorKind::Storage);
    }
}
