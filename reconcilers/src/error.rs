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

/// The loops' result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
