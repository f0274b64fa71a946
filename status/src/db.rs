//! Opening the database (pragmas, migrations) and the async [`Status`] handle.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};
use rusqlite_migration::{M, Migrations, SchemaVersion};

use crate::error::{Error, QueryExt, Result};

/// The migrations, one numbered file each; append new ones, never edit released ones.
const MIGRATION_LIST: &[M<'static>] = &[
    M::up(include_str!("../migrations/001_initial.sql")).foreign_key_check(),
    M::up(include_str!("../migrations/002_forges.sql")).foreign_key_check(),
    M::up(include_str!("../migrations/003_agents.sql")).foreign_key_check(),
    M::up(include_str!("../migrations/004_scheduling.sql")).foreign_key_check(),
    M::up(include_str!("../migrations/005_caches.sql")).foreign_key_check(),
    M::up(include_str!("../migrations/006_revocations.sql")).foreign_key_check(),
    M::up(include_str!("../migrations/007_waiting.sql")).foreign_key_check(),
    M::up(include_str!("../migrations/008_skipped.sql")).foreign_key_check(),
    M::up(include_str!("../migrations/009_aggregates.sql")).foreign_key_check(),
    M::up(include_str!("../migrations/010_outcomes.sql")).foreign_key_check(),
    M::up(include_str!("../migrations/011_streaming.sql")).foreign_key_check(),
];

pub(crate) const MIGRATIONS: Migrations<'static> = Migrations::from_slice(MIGRATION_LIST);

/// The schema version this build migrates to (the number of migration files).
pub const SCHEMA_VERSION: usize = MIGRATION_LIST.len();

/// How long a statement waits for another connection's lock before failing with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The WAL size (in pages) at which a commit checkpoints by itself. The daemon checkpoints from
/// a second connection every second ([`Checkpointer`]), off the write path: SQLite's automatic
/// checkpoint runs inside the commit that crosses the threshold and fsyncs, which stalls every
/// request queued behind that one connection (a p99 of ~6 ms in the intake benchmark). This
/// value is only the safety valve when no checkpointer runs (about 40 MiB of WAL).
const WAL_AUTOCHECKPOINT_PAGES: i64 = 10_000;

/// Says whether [`StatusDb::open`] may write to the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Creates the file if needed and migrates it to [`SCHEMA_VERSION`].
    ReadWrite,
    /// Opens an existing file without changing it; it must already be at [`SCHEMA_VERSION`].
    ReadOnly,
}

/// A synchronous connection to the status database; all queries are methods on it.
#[derive(Debug)]
pub struct StatusDb {
    pub(crate) conn: Connection,
}

impl StatusDb {
    /// Opens the database file at `path`, applying the pragmas and, in
    /// [`OpenMode::ReadWrite`], every pending migration.
    ///
    /// # Errors
    /// Returns [`Error::Open`] when SQLite cannot open or configure the file,
    /// [`Error::Migrate`] when a migration fails (for instance because the file was written by a
    /// newer build), and [`Error::SchemaVersion`] when a read-only file is not at
    /// [`SCHEMA_VERSION`].
    pub fn open(path: impl AsRef<Path>, mode: OpenMode) -> Result<Self> {
        let path = path.as_ref();
        let open_err = |source| Error::Open {
            path: path.to_owned(),
            source,
        };
        let flags = match mode {
            OpenMode::ReadWrite => OpenFlags::default(),
            OpenMode::ReadOnly => {
                OpenFlags::SQLITE_OPEN_READ_ONLY
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX
                    | OpenFlags::SQLITE_OPEN_URI
            }
        };
        let mut conn = Connection::open_with_flags(path, flags).map_err(open_err)?;
        if mode == OpenMode::ReadWrite {
            // WAL lets readers (the CLI, a second daemon process) proceed while the daemon
            // writes; it is a property of the file, so only a writer sets it.
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| {
                row.get::<_, String>(0)
            })
            .map_err(open_err)?;
            conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)
                .map_err(open_err)?;
        }
        configure(&conn).map_err(open_err)?;
        match mode {
            OpenMode::ReadWrite => migrate(&mut conn, path)?,
            OpenMode::ReadOnly => {
                let found = match MIGRATIONS.current_version(&conn) {
                    Ok(SchemaVersion::Inside(v) | SchemaVersion::Outside(v)) => v.get(),
                    Ok(SchemaVersion::NoneSet) => 0,
                    Err(source) => {
                        return Err(Error::Migrate {
                            path: path.to_owned(),
                            source,
                        });
                    }
                };
                if found != SCHEMA_VERSION {
                    return Err(Error::SchemaVersion {
                        path: path.to_owned(),
                        found,
                        expected: SCHEMA_VERSION,
                    });
                }
            }
        }
        Ok(Self { conn })
    }

    /// Opens a fresh, migrated in-memory database (tests, `reconix demo`).
    ///
    /// # Errors
    /// Returns [`Error::Open`] or [`Error::Migrate`] when SQLite fails, which should not happen.
    pub fn open_memory() -> Result<Self> {
        let path = Path::new(":memory:");
        let open_err = |source| Error::Open {
            path: path.to_owned(),
            source,
        };
        let mut conn = Connection::open_in_memory().map_err(open_err)?;
        configure(&conn).map_err(open_err)?;
        migrate(&mut conn, path)?;
        Ok(Self { conn })
    }

    /// Returns the schema version recorded in the database.
    ///
    /// # Errors
    /// Returns [`Error::Query`] when the version cannot be read.
    pub fn schema_version(&self) -> Result<usize> {
        let v: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .op("schema_version")?;
        crate::row::non_negative("pragma", "user_version", v)
    }

    /// Starts a write transaction. `IMMEDIATE` takes the write lock up front, so a transaction
    /// that reads then writes cannot fail half-way with `SQLITE_BUSY` when another connection
    /// writes concurrently.
    pub(crate) fn write(&mut self, op: &'static str) -> Result<Transaction<'_>> {
        self.conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .op(op)
    }

    /// Starts a read transaction, so multi-statement reads see one snapshot. It is "unchecked"
    /// only in that nesting is detected at run time; no method calls another inside one.
    pub(crate) fn read(&self, op: &'static str) -> Result<Transaction<'_>> {
        self.conn.unchecked_transaction().op(op)
    }
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(BUSY_TIMEOUT)
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<()> {
    MIGRATIONS.to_latest(conn).map_err(|source| Error::Migrate {
        path: PathBuf::from(path),
        source,
    })
}

/// Checkpoints the WAL of a database file from its own connection, so that the writer's commits
/// never pay for it.
#[derive(Debug)]
pub struct Checkpointer {
    conn: Connection,
}

impl Checkpointer {
    /// Opens a second connection to the database file at `path` (already opened read-write).
    ///
    /// # Errors
    /// Returns [`Error::Open`] when SQLite cannot open the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let conn = Connection::open(path).map_err(|source| Error::Open {
            path: path.to_owned(),
            source,
        })?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|source| Error::Open {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self { conn })
    }

    /// Copies what it can of the WAL into the database without waiting for readers or writers
    /// (`PRAGMA wal_checkpoint(PASSIVE)`); returns the WAL's size and the frames copied.
    ///
    /// # Errors
    /// Returns [`Error::Query`] when SQLite fails.
    pub fn checkpoint(&self) -> Result<(i64, i64)> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
            })
            .op("checkpoint")
    }

    /// Checkpoints every `every` until `stop` completes.
    pub async fn run_until(self, every: Duration, stop: impl Future<Output = ()>) {
        let this = Arc::new(Mutex::new(self));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        let mut warned = None;
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = tick.tick() => {}
            }
            let this = Arc::clone(&this);
            let done = tokio::task::spawn_blocking(move || {
                this.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .checkpoint()
            })
            .await;
            // A full disk fails every checkpoint until space returns: say so once a minute.
            match done {
                Ok(Err(err)) => {
                    let due = warned.is_none_or(|at: tokio::time::Instant| {
                        at.elapsed() >= Duration::from_secs(60)
                    });
                    if due {
                        tracing::warn!(error = %err, "WAL checkpoint failed; SQLite's own will run later");
                        warned = Some(tokio::time::Instant::now());
                    }
                }
                Ok(Ok(_)) if warned.take().is_some() => {
                    tracing::info!("WAL checkpoints work again");
                }
                _ => {}
            }
        }
    }
}

/// A cloneable, thread-safe handle to one [`StatusDb`] for async code.
///
/// Every [`call`](Self::call) runs on tokio's blocking pool and takes the connection's lock for
/// the duration of its closure, so calls are serialized; reads wait behind a long write. That is
/// deliberate: one connection keeps the write path simple, and the largest write (recording a
/// 10,000-job evaluation) takes a fraction of a second.
#[derive(Debug, Clone)]
pub struct Status {
    db: Arc<Mutex<StatusDb>>,
}

impl Status {
    /// Wraps an open database.
    pub fn new(db: StatusDb) -> Self {
        Self {
            db: Arc::new(Mutex::new(db)),
        }
    }

    /// Runs `f` with exclusive access to the database on a blocking thread and returns its
    /// result.
    ///
    /// # Errors
    /// Returns what `f` returns, or [`Error::Join`] when `f` panicked.
    pub async fn call<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&mut StatusDb) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || {
            // A panic inside an earlier closure poisons the mutex, but the connection is still
            // consistent: its open transaction was rolled back when the panic dropped it.
            let mut db = db.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut db)
        })
        .await
        .map_err(Error::Join)?
    }
}

impl From<StatusDb> for Status {
    fn from(db: StatusDb) -> Self {
        Self::new(db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{T0, repo_key};

    #[test]
    fn the_handle_and_errors_should_be_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<Status>();
        assert_send_sync::<Error>();
    }

    #[test]
    fn the_checkpointer_should_move_the_wal_into_the_database_off_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut db = StatusDb::open(&path, OpenMode::ReadWrite).unwrap();
        let auto: i64 = db
            .conn
            .query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
            .unwrap();
        assert_eq!(auto, WAL_AUTOCHECKPOINT_PAGES);
        for n in 0..200 {
            db.upsert_repo(&crate::testing::repo_key(&format!("gh/o/r{n}")))
                .unwrap();
        }
        let checkpointer = Checkpointer::open(&path).unwrap();
        let (wal, copied) = checkpointer.checkpoint().unwrap();
        assert!(wal > 0 && copied == wal, "wal {wal}, copied {copied}");
        // Nothing new: nothing to copy, and the writer carries on.
        db.upsert_repo(&crate::testing::repo_key("gh/o/last"))
            .unwrap();
        assert_eq!(db.repos().unwrap().len(), 201);
    }

    #[test]
    fn migrations_should_validate() {
        MIGRATIONS.validate().unwrap();
    }

    #[test]
    fn a_fresh_memory_database_should_be_at_the_latest_schema_version() {
        let db = StatusDb::open_memory().unwrap();
        assert_eq!(db.schema_version().unwrap(), SCHEMA_VERSION);
        let fk: i64 = db
            .conn
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(fk, 1);
    }

    #[test]
    fn each_migration_should_apply_on_top_of_the_previous_version() {
        let mut conn = Connection::open_in_memory().unwrap();
        for version in 0..=SCHEMA_VERSION {
            MIGRATIONS.to_version(&mut conn, version).unwrap();
            let v: i64 = conn
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .unwrap();
            assert_eq!(usize::try_from(v).unwrap(), version);
        }
        // The final schema is usable through the normal API.
        let mut db = StatusDb { conn };
        db.upsert_repo(&repo_key("gh/a/b")).unwrap();
    }

    #[test]
    fn migration_011_should_make_existing_jobs_buildable_and_leave_progress_unknown() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "foreign_keys", "ON").unwrap();
        MIGRATIONS.to_version(&mut conn, 10).unwrap();
        conn.execute_batch(
            "INSERT INTO repos (id, forge, name) VALUES (1, 'gh', 'a/b');
             INSERT INTO evaluations (id, repo_id, ref, rev, flake_ref, state, created_at)
                 VALUES (1, 1, 'refs/heads/main', 'abc', 'git+file:///x', 'building', 0);
             INSERT INTO jobs (id, evaluation_id, attr, name, system, drv_path, state, created_at)
                 VALUES (1, 1, 'packages.x86_64-linux.a', 'a', 'x86_64-linux',
                         '/nix/store/00000000000000000000000000000000-a.drv', 'queued', 0);",
        )
        .unwrap();
        MIGRATIONS.to_version(&mut conn, 11).unwrap();
        let db = StatusDb { conn };
        assert_eq!(db.schedulable_jobs().unwrap().len(), 1);
        assert_eq!(
            db.evaluation_progress(crate::EvaluationId(1)).unwrap(),
            None
        );
    }

    #[test]
    fn migration_008_should_keep_jobs_their_deps_and_roots_and_accept_skipped() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "foreign_keys", "ON").unwrap();
        MIGRATIONS.to_version(&mut conn, 7).unwrap();
        conn.execute_batch(
            "INSERT INTO repos (id, forge, name) VALUES (1, 'gh', 'a/b');
             INSERT INTO evaluations (id, repo_id, ref, rev, flake_ref, created_at)
                 VALUES (1, 1, 'refs/heads/main', 'abc', 'git+file:///x', 0);
             INSERT INTO jobs (id, evaluation_id, attr, name, system, drv_path, state, created_at,
                               required_features)
                 VALUES (1, 1, 'packages.x86_64-linux.a', 'a', 'x86_64-linux', '/nix/store/a.drv',
                         'succeeded', 0, '[\"kvm\"]'),
                        (2, 1, 'packages.x86_64-linux.b', 'b', 'x86_64-linux', '/nix/store/b.drv',
                         'queued', 0, '[]');
             INSERT INTO job_deps (job_id, dep_job_id) VALUES (2, 1);
             INSERT INTO gc_roots (job_id, path, output, created_at) VALUES (1, '/r/a', 'out', 0);",
        )
        .unwrap();
        MIGRATIONS.to_version(&mut conn, 8).unwrap();
        let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
        assert_eq!(count("SELECT count(*) FROM jobs"), 2);
        assert_eq!(
            count("SELECT count(*) FROM job_deps WHERE job_id = 2 AND dep_job_id = 1"),
            1
        );
        assert_eq!(count("SELECT count(*) FROM gc_roots WHERE job_id = 1"), 1);
        assert_eq!(
            count("SELECT count(*) FROM jobs WHERE required_features = '[\"kvm\"]'"),
            1
        );
        conn.execute(
            "INSERT INTO jobs (evaluation_id, attr, name, system, drv_path, state, created_at)
             VALUES (1, 'hydraJobs.a.aarch64-linux', 'a', 'aarch64-linux', '/nix/store/c.drv',
                     'skipped', 0)",
            [],
        )
        .unwrap();
        // The cascade still works on the rebuilt table.
        conn.execute("DELETE FROM evaluations", []).unwrap();
        assert_eq!(
            count("SELECT count(*) FROM job_deps") + count("SELECT count(*) FROM gc_roots"),
            0
        );
    }

    #[test]
    fn a_database_file_should_keep_its_data_across_close_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.sqlite");
        let key = repo_key("gh/NixOS/nixpkgs");
        let (repo, eval) = {
            let mut db = StatusDb::open(&path, OpenMode::ReadWrite).unwrap();
            let mode: String = db
                .conn
                .query_row("PRAGMA journal_mode", [], |r| r.get(0))
                .unwrap();
            assert_eq!(mode, "wal");
            let repo = db.upsert_repo(&key).unwrap();
            let (eval, _) = db
                .insert_evaluation(repo, "refs/heads/main", "abc", "git+file:///x", T0)
                .unwrap();
            (repo, eval)
        };
        let db = StatusDb::open(&path, OpenMode::ReadWrite).unwrap();
        assert_eq!(db.repo_id(&key).unwrap(), Some(repo));
        assert_eq!(db.evaluation(eval).unwrap().unwrap().rev, "abc");

        let mut ro = StatusDb::open(&path, OpenMode::ReadOnly).unwrap();
        assert_eq!(ro.repos().unwrap().len(), 1);
        assert!(matches!(
            ro.upsert_repo(&repo_key("gh/other/repo")),
            Err(Error::Query { .. })
        ));
    }

    #[test]
    fn opening_an_unmigrated_file_read_only_should_fail_with_the_versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.sqlite");
        Connection::open(&path).unwrap();
        let err = StatusDb::open(&path, OpenMode::ReadOnly).unwrap_err();
        assert!(
            matches!(
                err,
                Error::SchemaVersion {
                    found: 0,
                    expected: SCHEMA_VERSION,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn opening_a_missing_file_read_only_should_fail() {
        let dir = tempfile::tempdir().unwrap();
        let err = StatusDb::open(dir.path().join("nope.sqlite"), OpenMode::ReadOnly).unwrap_err();
        assert!(matches!(err, Error::Open { .. }), "{err:?}");
    }

    #[test]
    fn a_file_from_a_newer_build_should_be_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("future.sqlite");
        drop(StatusDb::open(&path, OpenMode::ReadWrite).unwrap());
        Connection::open(&path)
            .unwrap()
            .pragma_update(
                None,
                "user_version",
                i64::try_from(SCHEMA_VERSION).unwrap() + 1,
            )
            .unwrap();
        let err = StatusDb::open(&path, OpenMode::ReadWrite).unwrap_err();
        assert!(matches!(err, Error::Migrate { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn status_call_should_run_closures_against_the_shared_database() {
        let status = Status::new(StatusDb::open_memory().unwrap());
        let other = status.clone();
        let id = status
            .call(|db| db.upsert_repo(&repo_key("gh/a/b")))
            .await
            .unwrap();
        let found = other
            .call(|db| db.repo_id(&repo_key("gh/a/b")))
            .await
            .unwrap();
        assert_eq!(found, Some(id));
    }

    #[tokio::test]
    async fn a_panicking_closure_should_surface_as_a_join_error_and_leave_the_handle_usable() {
        let status = Status::new(StatusDb::open_memory().unwrap());
        let err = status
            .call(|_db| -> Result<()> { panic!("boom") })
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Join(_)));
        assert!(status.call(|db| db.repos()).await.unwrap().is_empty());
    }
}
