//! The error type of the status crate.

use std::path::PathBuf;

/// Describes a failure of the status database, with the operation or row it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database file could not be opened or configured.
    #[error("cannot open status database {}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// Migrating the schema to the version this build expects failed.
    #[error("cannot migrate status database {}", path.display())]
    Migrate {
        /// The database file (`:memory:` for in-memory databases).
        path: PathBuf,
        /// The migration error.
        #[source]
        source: rusqlite_migration::Error,
    },
    /// A database opened read-only is not at the schema version this build expects.
    #[error(
        "status database {} has schema version {found}, this build expects {expected}",
        path.display()
    )]
    SchemaVersion {
        /// The database file.
        path: PathBuf,
        /// The version found in the file (0 for an empty file).
        found: usize,
        /// [`crate::SCHEMA_VERSION`].
        expected: usize,
    },
    /// A statement failed.
    #[error("status query `{op}` failed")]
    Query {
        /// The operation that ran the statement, e.g. `insert_evaluation`.
        op: &'static str,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// A stored value could not be parsed into its type.
    #[error("corrupt value `{value}` in {table}.{column}: {reason}")]
    Corrupt {
        /// The table holding the value.
        table: &'static str,
        /// The column holding the value.
        column: &'static str,
        /// The stored value as text.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The caller asked for something the data model does not allow.
    #[error("invalid argument to `{op}`: {reason}")]
    Invalid {
        /// The operation that rejected its arguments.
        op: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A row the operation needs does not exist.
    #[error("{what} {key} not found")]
    NotFound {
        /// The kind of row, e.g. `evaluation`.
        what: &'static str,
        /// Its key as text.
        key: String,
    },
    /// The blocking task running a [`crate::Status::call`] closure panicked or was cancelled.
    #[error("status database task failed")]
    Join(#[source] tokio::task::JoinError),
}

/// The result type of the status crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches the operation name to SQLite errors.
pub(crate) trait QueryExt<T> {
    /// Wraps an SQLite error into [`Error::Query`] naming `op`.
    fn op(self, op: &'static str) -> Result<T>;
}

impl<T> QueryExt<T> for rusqlite::Result<T> {
    fn op(self, op: &'static str) -> Result<T> {
        self.map_err(|source| Error::Query { op, source })
    }
}
