//! The loops' error type: an enum so `error_policy` can tell transient from permanent failures.

use std::path::PathBuf;

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
}
