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

impl Error {
    /// Returns whether the database failed for want of room or because its disk failed
    /// (`SQLITE_FULL`, `SQLITE_IOERR`): the state directory is full or broken, not the request.
    /// Such errors pass when space returns, so callers wait and retry instead of failing work.
    pub fn is_storage_full(&self) -> bool {
        let (Self::Open { source, .. } | Self::Query { source, .. }) = self else {
            return false;
        };
        matches!(
            source.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DiskFull | rusqlite::ErrorCode::SystemIoFailure)
        )
    }
}

impl Error {
    /// Returns an equivalent error for another caller of the same failed batch (errors cannot be
    /// cloned): an SQLite failure keeps its code, so [`is_storage_full`](Self::is_storage_full)
    /// answers the same; anything else becomes [`Error::Invalid`] carrying its message.
    pub fn replicate(&self, op: &'static str) -> Self {
        match self {
            Self::Open {
                source: rusqlite::Error::SqliteFailure(code, message),
                ..
            }
            | Self::Query {
                source: rusqlite::Error::SqliteFailure(code, message),
                ..
            } => Self::Query {
                op,
                source: rusqlite::Error::SqliteFailure(*code, message.clone()),
            },
            other => Self::Invalid {
                op,
                reason: other.to_string(),
            },
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn query(code: std::ffi::c_int) -> Error {
        Error::Query {
            op: "test",
            source: rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None),
        }
    }

    #[test]
    fn a_full_or_failing_disk_should_be_storage_trouble_and_nothing_else() {
        assert!(query(rusqlite::ffi::SQLITE_FULL).is_storage_full());
        assert!(query(rusqlite::ffi::SQLITE_IOERR_WRITE).is_storage_full());
        assert!(!query(rusqlite::ffi::SQLITE_CONSTRAINT).is_storage_full());
        assert!(!query(rusqlite::ffi::SQLITE_BUSY).is_storage_full());
        let not_found = Error::NotFound {
            what: "job",
            key: "1".to_owned(),
        };
        assert!(!not_found.is_storage_full());
    }

    #[test]
    fn a_replicated_error_should_keep_its_sqlite_code() {
        let copy = query(rusqlite::ffi::SQLITE_FULL).replicate("batch");
        assert!(copy.is_storage_full());
        assert!(matches!(copy, Error::Query { op: "batch", .. }));
        let other = Error::NotFound {
            what: "job",
            key: "1".to_owned(),
        }
        .replicate("batch");
        assert!(
            matches!(other, Error::Invalid { op: "batch", ref reason } if reason == "job 1 not found")
        );
    }
}
