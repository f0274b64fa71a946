//! Builds: one realisation per drv path, shared by every job with that drv.

use std::path::Path;

use reconix_spec::names::{BuilderName, StorePath, Timestamp};
use rusqlite::{OptionalExtension, params};

use crate::StatusDb;
use crate::error::{Error, QueryExt, Result};
use crate::row::{BUILD_COLUMNS, get, parse, parse_build, path_text};
use crate::types::{Build, BuildId, BuildProduct, BuildState, BuiltOutputs, FAILED_WITH_OUTPUT};

/// How a running build goes back to the queue ([`StatusDb::requeue_build`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeue {
    /// Retried after a transient failure of its builder: the attempt counts.
    Retry,
    /// Waits for room on a full disk until `retry_at`: the attempt does not count.
    Wait {
        /// When it may be dispatched again.
        retry_at: Timestamp,
    },
}

impl StatusDb {
    /// Records that the build of `drv` is `queued` or `running` on `builder`; returns its id.
    ///
    /// Creates the row when the drv was never built. Entering `running` increments `attempts`
    /// and sets `started_at`; entering `queued` again (requeue after a builder died, or a retry
    /// of a `timed-out`/`cancelled` build) resets `queued_at`. Either clears the previous
    /// attempt's exit code, error and finish time. Re-applying the current state only updates
    /// the builder, so a step applied twice counts one attempt.
    ///
    /// # Errors
    /// Returns [`Error::Invalid`] when `state` is terminal or the build is already `succeeded`
    /// or `failed` (final for the drv: it must be reused, not rebuilt), and [`Error::Query`]
    /// when SQLite fails.
    pub fn upsert_build(
        &mut self,
        drv: &StorePath,
        builder: Option<&BuilderName>,
        state: BuildState,
        now: Timestamp,
    ) -> Result<BuildId> {
        const OP: &str = "upsert_build";
        if state.is_terminal() {
            return Err(Error::Invalid {
                op: OP,
                reason: format!("{state} is terminal; use finish_build"),
            });
        }
        let builder = builder.map(BuilderName::as_str);
        let running = state == BuildState::Running;
        let tx = self.write(OP)?;
        let existing: Option<(i64, String)> = tx
            .prepare_cached("SELECT id, state FROM builds WHERE drv_path = ?1")
            .and_then(|mut stmt| {
                stmt.query_row([drv.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .op(OP)?;
        let id = match existing {
            None => {
                tx.prepare_cached(
                    "INSERT INTO builds (drv_path, builder, state, attempts, queued_at, \
                     started_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .and_then(|mut stmt| {
                    stmt.execute(params![
                        drv.as_str(),
                        builder,
                        state.as_str(),
                        i64::from(running),
                        now.0,
                        running.then_some(now.0),
                    ])
                })
                .op(OP)?;
                tx.last_insert_rowid()
            }
            Some((id, current)) => {
                let current: BuildState = parse("builds", "state", current)?;
                if current.is_final() {
                    return Err(Error::Invalid {
                        op: OP,
                        reason: format!("build of {drv} already {current}"),
                    });
                }
                let sql = if current == state {
                    "UPDATE builds SET builder = ?2 WHERE id = ?1"
                } else if running {
                    "UPDATE builds SET state = 'running', builder = ?2, attempts = attempts + 1, \
                     started_at = ?3, finished_at = NULL, exit_code = NULL, error = NULL, \
                     retry_at = NULL WHERE id = ?1"
                } else {
                    "UPDATE builds SET state = 'queued', builder = ?2, queued_at = ?3, \
                     started_at = NULL, finished_at = NULL, exit_code = NULL, error = NULL \
                     WHERE id = ?1"
                };
                let params = if current == state {
                    tx.prepare_cached(sql)
                        .and_then(|mut stmt| stmt.execute(params![id, builder]))
                } else {
                    tx.prepare_cached(sql)
                        .and_then(|mut stmt| stmt.execute(params![id, builder, now.0]))
                };
                params.op(OP)?;
                id
            }
        };
        tx.commit().op(OP)?;
        Ok(BuildId(id))
    }

    /// Puts the running build of `drv` back in the queue; returns false (changing nothing)
    /// unless the build is `running` on `builder`, so a late report of an attempt that was
    /// already superseded cannot disturb the current one. `reason` is kept as its error.
    ///
    /// - [`Requeue::Retry`], after a transient failure on `builder` (connection lost, builder
    ///   gone): the attempt counts and `builder` is kept as the one to avoid next time.
    /// - [`Requeue::Wait`], when this machine's disk, not the build nor the builder, failed (the
    ///   state directory or the store is full or failing): the attempt does not count
    ///   (`attempts` is taken back), `waits` grows, and it is not dispatched before `retry_at`.
    ///
    /// # Errors
    /// Returns [`Error::Query`] when SQLite fails.
    pub fn requeue_build(
        &mut self,
        drv: &StorePath,
        builder: &BuilderName,
        reason: &str,
        requeue: Requeue,
        now: Timestamp,
    ) -> Result<bool> {
        let (attempts, waits, retry_at) = match requeue {
            Requeue::Retry => (0, 0, None),
            Requeue::Wait { retry_at } => (1, 1, Some(retry_at.0)),
        };
        let n = self
            .conn
            .prepare_cached(
                "UPDATE builds SET state = 'queued', error = ?3, queued_at = ?4, \
                 started_at = NULL, finished_at = NULL, exit_code = NULL, \
                 attempts = max(attempts - ?5, 0), waits = waits + ?6, retry_at = ?7 \
                 WHERE drv_path = ?1 AND builder = ?2 AND state = 'running'",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    drv.as_str(),
                    builder.as_str(),
                    reason,
                    now.0,
                    attempts,
                    waits,
                    retry_at
                ])
            })
            .op("requeue_build")?;
        Ok(n > 0)
    }

    /// Records that the build of `drv` ended in terminal `state`; returns its id.
    ///
    /// Creates the row when the drv was never dispatched (e.g. its outputs were already
    /// valid), with zero attempts. A `log_path` of `None` keeps the one recorded earlier.
    /// Applying the same outcome twice leaves the same row.
    ///
    /// # Errors
    /// Returns [`Error::Invalid`] when `state` is not terminal or `log_path` is not UTF-8, and
    /// [`Error::Query`] when SQLite fails.
    pub fn finish_build(
        &mut self,
        drv: &StorePath,
        state: BuildState,
        exit_code: Option<i32>,
        error: Option<&str>,
        log_path: Option<&Path>,
        now: Timestamp,
    ) -> Result<BuildId> {
        const OP: &str = "finish_build";
        if !state.is_terminal() {
            return Err(Error::Invalid {
                op: OP,
                reason: format!("{state} is not terminal; use upsert_build"),
            });
        }
        let log_path = log_path.map(|p| path_text(OP, p)).transpose()?;
        self.conn
            .prepare_cached(
                "INSERT INTO builds (drv_path, state, exit_code, error, log_path, attempts, \
                 queued_at, finished_at) VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, ?6) \
                 ON CONFLICT (drv_path) DO UPDATE SET state = excluded.state, \
                 exit_code = excluded.exit_code, error = excluded.error, \
                 log_path = coalesce(excluded.log_path, log_path), \
                 finished_at = excluded.finished_at, retry_at = NULL, waits = 0 \
                 RETURNING id",
            )
            .and_then(|mut stmt| {
                stmt.query_row(
                    params![
                        drv.as_str(),
                        state.as_str(),
                        exit_code,
                        error,
                        log_path,
                        now.0
                    ],
                    |r| r.get(0),
                )
            })
            .op(OP)
            .map(BuildId)
    }

    /// Records that the build of `drv` succeeded as far as Nix goes (its outputs are valid)
    /// with what its outputs say in `nix-support/`, in one transaction; returns its id.
    ///
    /// When an output has `nix-support/failed` the build keeps state `succeeded` (the outputs
    /// exist: they are rooted and dependents may use them) with `failed_with_output` set and
    /// [`FAILED_WITH_OUTPUT`] as its error; the builds loop then fails its jobs. The products
    /// replace any recorded before. Like [`finish_build`](Self::finish_build), it creates the
    /// row when there is none.
    ///
    /// # Errors
    /// Returns [`Error::Query`] when SQLite fails.
    pub fn finish_built(
        &mut self,
        drv: &StorePath,
        exit_code: Option<i32>,
        outputs: &BuiltOutputs,
        now: Timestamp,
    ) -> Result<BuildId> {
        const OP: &str = "finish_built";
        let tx = self.write(OP)?;
        let id: i64 = tx
            .prepare_cached(
                "INSERT INTO builds (drv_path, state, exit_code, error, attempts, queued_at, \
                 finished_at, failed_with_output, release_name) \
                 VALUES (?1, 'succeeded', ?2, ?3, 0, ?4, ?4, ?5, ?6) \
                 ON CONFLICT (drv_path) DO UPDATE SET state = excluded.state, \
                 exit_code = excluded.exit_code, error = excluded.error, \
                 finished_at = excluded.finished_at, retry_at = NULL, waits = 0, \
                 failed_with_output = excluded.failed_with_output, \
                 release_name = excluded.release_name \
                 RETURNING id",
            )
            .and_then(|mut stmt| {
                stmt.query_row(
                    params![
                        drv.as_str(),
                        exit_code,
                        outputs.failed.then_some(FAILED_WITH_OUTPUT),
                        now.0,
                        outputs.failed,
                        outputs.release_name,
                    ],
                    |r| r.get(0),
                )
            })
            .op(OP)?;
        tx.execute("DELETE FROM build_products WHERE build_id = ?1", [id])
            .op(OP)?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO build_products (build_id, position, kind, subtype, path, \
                     default_path) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .op(OP)?;
            for (position, p) in outputs.products.iter().enumerate() {
                insert
                    .execute(params![
                        id,
                        i64::try_from(position).unwrap_or(i64::MAX),
                        p.kind,
                        p.subtype,
                        p.path,
                        p.default_path
                    ])
                    .op(OP)?;
            }
        }
        tx.commit().op(OP)?;
        Ok(BuildId(id))
    }

    /// Returns the build products recorded for the build of `drv`, in file order (none when
    /// it has no build).
    ///
    /// # Errors
    /// Returns [`Error::Query`] when SQLite fails.
    pub fn build_products(&self, drv: &StorePath) -> Result<Vec<BuildProduct>> {
        const OP: &str = "build_products";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT p.kind, p.subtype, p.path, p.default_path FROM build_products p \
                 JOIN builds b ON b.id = p.build_id WHERE b.drv_path = ?1 ORDER BY p.position",
            )
            .op(OP)?;
        let mut rows = stmt.query([drv.as_str()]).op(OP)?;
        let mut products = Vec::new();
        while let Some(row) = rows.next().op(OP)? {
            products.push(BuildProduct {
                kind: get(row, 0, OP)?,
                subtype: get(row, 1, OP)?,
                path: get(row, 2, OP)?,
                default_path: get(row, 3, OP)?,
            });
        }
        Ok(products)
    }

    /// Records the closure size of the outputs of the (succeeded) build of `drv`.
    ///
    /// # Errors
    /// Returns [`Error::NotFound`] when `drv` has no build and [`Error::Query`] when SQLite
    /// fails.
    pub fn record_closure_size(&mut self, drv: &StorePath, bytes: u64) -> Result<()> {
        const OP: &str = "record_closure_size";
        let n = self
            .conn
            .prepare_cached("UPDATE builds SET closure_size_bytes = ?2 WHERE drv_path = ?1")
            .and_then(|mut stmt| {
                stmt.execute(params![
                    drv.as_str(),
                    i64::try_from(bytes).unwrap_or(i64::MAX)
                ])
            })
            .op(OP)?;
        if n == 0 {
            return Err(Error::NotFound {
                what: "build",
                key: drv.to_string(),
            });
        }
        Ok(())
    }

    /// Records the log file of the build of `drv` and its current size (while it grows, or
    /// after it was compressed or truncated by log retention).
    ///
    /// # Errors
    /// Returns [`Error::NotFound`] when `drv` has no build, [`Error::Invalid`] when `path` is
    /// not UTF-8, and [`Error::Query`] when SQLite fails.
    pub fn record_build_log(
        &mut self,
        drv: &StorePath,
        path: &Path,
        size_bytes: u64,
        now: Timestamp,
    ) -> Result<()> {
        const OP: &str = "record_build_log";
        let path = path_text(OP, path)?;
        let size = i64::try_from(size_bytes).unwrap_or(i64::MAX);
        let n = self
            .conn
            .prepare_cached(
                "UPDATE builds SET log_path = ?2, log_size_bytes = ?3, log_updated_at = ?4 \
                 WHERE drv_path = ?1",
            )
            .and_then(|mut stmt| stmt.execute(params![drv.as_str(), path, size, now.0]))
            .op(OP)?;
        if n == 0 {
            return Err(Error::NotFound {
                what: "build of",
                key: drv.to_string(),
            });
        }
        Ok(())
    }

    /// Returns the build of `drv`, if there is one.
    ///
    /// # Errors
    /// Returns [`Error::Query`] when SQLite fails and [`Error::Corrupt`] for a malformed row.
    pub fn build_by_drv(&self, drv: &StorePath) -> Result<Option<Build>> {
        Ok(self
            .select_builds("build_by_drv", "b.drv_path = ?1", [drv.as_str()])?
            .pop())
    }

    /// Returns every build in `state`, oldest first.
    ///
    /// # Errors
    /// Returns [`Error::Query`] when SQLite fails and [`Error::Corrupt`] for a malformed row.
    pub fn builds_in_state(&self, state: BuildState) -> Result<Vec<Build>> {
        self.select_builds("builds_in_state", "b.state = ?1", [state.as_str()])
    }

    fn select_builds(
        &self,
        op: &'static str,
        filter: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<Build>> {
        let sql = format!("SELECT {BUILD_COLUMNS} FROM builds b WHERE {filter} ORDER BY b.id");
        let mut stmt = self.conn.prepare_cached(&sql).op(op)?;
        let mut rows = stmt.query(params).op(op)?;
        let mut builds = Vec::new();
        while let Some(row) = rows.next().op(op)? {
            // The id column is NOT NULL, so a parsed row is always `Some`.
            builds.extend(parse_build(row, 0, op)?);
        }
        Ok(builds)
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use reconix_spec::names::BuilderName;

    use super::Requeue;
    use crate::testing::{T0, at, drv};
    use crate::{BuildState, Error, StatusDb};

    fn local() -> BuilderName {
        BuilderName::new("local").unwrap()
    }

    #[test]
    fn upsert_build_should_count_one_attempt_per_move_to_running() {
        let mut db = StatusDb::open_memory().unwrap();
        let b = local();
        let id = db
            .upsert_build(&drv(1), Some(&b), BuildState::Queued, T0)
            .unwrap();
        let build = db.build_by_drv(&drv(1)).unwrap().unwrap();
        assert_eq!(
            (build.id, build.state, build.attempts),
            (id, BuildState::Queued, 0)
        );
        assert_eq!((build.queued_at, build.started_at), (T0, None));

        assert_eq!(
            db.upsert_build(&drv(1), Some(&b), BuildState::Running, at(1))
                .unwrap(),
            id
        );
        assert_eq!(
            db.upsert_build(&drv(1), Some(&b), BuildState::Running, at(2))
                .unwrap(),
            id
        );
        let build = db.build_by_drv(&drv(1)).unwrap().unwrap();
        assert_eq!((build.attempts, build.started_at), (1, Some(at(1))));
        assert_eq!(build.builder, Some(b.clone()));

        // The builder died: requeue, then run again elsewhere.
        db.upsert_build(&drv(1), None, BuildState::Queued, at(3))
            .unwrap();
        let build = db.build_by_drv(&drv(1)).unwrap().unwrap();
        assert_eq!(
            (build.state, build.builder, build.queued_at),
            (BuildState::Queued, None, at(3))
        );
        db.upsert_build(&drv(1), Some(&b), BuildState::Running, at(4))
            .unwrap();
        assert_eq!(db.build_by_drv(&drv(1)).unwrap().unwrap().attempts, 2);
    }

    fn wait(ms: i64) -> Requeue {
        Requeue::Wait { retry_at: at(ms) }
    }

    #[test]
    fn a_waiting_build_should_not_count_the_attempt_and_wait_with_a_growing_count() {
        let mut db = StatusDb::open_memory().unwrap();
        db.upsert_build(&drv(1), Some(&local()), BuildState::Running, T0)
            .unwrap();
        // Another builder's late report changes nothing.
        let a1 = BuilderName::new("a1").unwrap();
        assert!(
            !db.requeue_build(&drv(1), &a1, "waiting", wait(9), at(1))
                .unwrap()
        );
        let reason = "waiting: state directory full: cannot write x.log";
        assert!(
            db.requeue_build(&drv(1), &local(), reason, wait(5), at(1))
                .unwrap()
        );
        let build = db.build_by_drv(&drv(1)).unwrap().unwrap();
        assert_eq!(
            (build.state, build.attempts, build.waits, build.retry_at),
            (BuildState::Queued, 0, 1, Some(at(5)))
        );
        assert_eq!(build.error.as_deref(), Some(reason));
        // Dispatched again: the wait is over, the count of waits stays for the backoff.
        db.upsert_build(&drv(1), Some(&local()), BuildState::Running, at(5))
            .unwrap();
        assert!(
            db.requeue_build(&drv(1), &local(), reason, wait(8), at(6))
                .unwrap()
        );
        db.upsert_build(&drv(1), Some(&local()), BuildState::Running, at(8))
            .unwrap();
        let build = db.build_by_drv(&drv(1)).unwrap().unwrap();
        assert_eq!((build.attempts, build.waits, build.retry_at), (1, 2, None));
        // Its result resets the count.
        db.finish_build(&drv(1), BuildState::Succeeded, Some(0), None, None, at(9))
            .unwrap();
        let build = db.build_by_drv(&drv(1)).unwrap().unwrap();
        assert_eq!((build.attempts, build.waits), (1, 0));
    }

    #[test]
    fn requeue_build_should_keep_the_attempt_reason_and_builder_of_the_running_build_only() {
        let mut db = StatusDb::open_memory().unwrap();
        let a1 = BuilderName::new("a1").unwrap();
        db.upsert_build(&drv(1), Some(&a1), BuildState::Running, T0)
            .unwrap();
        // Another builder's late report changes nothing.
        assert!(
            !db.requeue_build(&drv(1), &local(), "lost", Requeue::Retry, at(1))
                .unwrap()
        );
        assert!(
            db.requeue_build(
                &drv(1),
                &a1,
                "agent a1 lost the connection",
                Requeue::Retry,
                at(2)
            )
            .unwrap()
        );
        let build = db.build_by_drv(&drv(1)).unwrap().unwrap();
        assert_eq!(
            (
                build.state,
                build.attempts,
                build.builder.as_ref(),
                build.queued_at
            ),
            (BuildState::Queued, 1, Some(&a1), at(2))
        );
        assert_eq!(build.error.as_deref(), Some("agent a1 lost the connection"));
        assert_eq!(build.started_at, None);
        // Only a running build can be requeued.
        assert!(
            !db.requeue_build(&drv(1), &a1, "again", Requeue::Retry, at(3))
                .unwrap()
        );
        db.upsert_build(&drv(1), Some(&local()), BuildState::Running, at(4))
            .unwrap();
        let build = db.build_by_drv(&drv(1)).unwrap().unwrap();
        assert_eq!((build.attempts, build.error), (2, None));
    }

    #[test]
    fn inserting_a_build_directly_as_running_should_count_one_attempt() {
        let mut db = StatusDb::open_memory().unwrap();
        db.upsert_build(&drv(1), Some(&local()), BuildState::Running, T0)
            .unwrap();
        let build = db.build_by_drv(&drv(1)).unwrap().unwrap();
        assert_eq!(
            (build.state, build.attempts, build.started_at),
            (BuildState::Running, 1, Some(T0))
        );
    }

    #[test]
    fn finish_build_should_record_the_outcome_and_block_rebuilding_a_final_result() {
        let mut db = StatusDb::open_memory().unwrap();
        let id = db
            .upsert_build(&drv(1), Some(&local()), BuildState::Running, T0)
            .unwrap();
        let log = PathBuf::from("/var/lib/reconix/logs/1.log");
        let same = db
            .finish_build(
                &drv(1),
                BuildState::Failed,
                Some(1),
                Some("builder failed"),
                Some(&log),
                at(5),
            )
            .unwrap();
        assert_eq!(same, id);
        let build = db.build_by_drv(&drv(1)).unwrap().unwrap();
        assert_eq!(build.state, BuildState::Failed);
        assert_eq!(
            (build.exit_code, build.error.as_deref()),
            (Some(1), Some("builder failed"))
        );
        assert_eq!(
            (build.log_path, build.finished_at),
            (Some(log), Some(at(5)))
        );
        let err = db
            .upsert_build(&drv(1), Some(&local()), BuildState::Running, at(6))
            .unwrap_err();
        assert!(matches!(err, Error::Invalid { .. }), "{err:?}");
    }

    #[test]
    fn a_timed_out_build_should_be_retried_with_a_clean_slate() {
        let mut db = StatusDb::open_memory().unwrap();
        db.upsert_build(&drv(1), Some(&local()), BuildState::Running, T0)
            .unwrap();
        db.finish_build(
            &drv(1),
            BuildState::TimedOut,
            None,
            Some("max-silent"),
            None,
            at(1),
        )
        .unwrap();
        db.upsert_build(&drv(1), Some(&local()), BuildState::Running, at(2))
            .unwrap();
        let build = db.build_by_drv(&drv(1)).unwrap().unwrap();
        assert_eq!((build.state, build.attempts), (BuildState::Running, 2));
        assert_eq!((build.error, build.finished_at), (None, None));
    }

    #[test]
    fn finish_build_should_create_the_row_for_a_drv_never_dispatched() {
        let mut db = StatusDb::open_memory().unwrap();
        db.finish_build(&drv(2), BuildState::Succeeded, Some(0), None, None, T0)
            .unwrap();
        let build = db.build_by_drv(&drv(2)).unwrap().unwrap();
        assert_eq!(
            (build.state, build.attempts, build.builder),
            (BuildState::Succeeded, 0, None)
        );
        assert_eq!(db.build_by_drv(&drv(3)).unwrap(), None);
    }

    #[test]
    fn build_writes_should_reject_the_wrong_kind_of_state() {
        let mut db = StatusDb::open_memory().unwrap();
        assert!(matches!(
            db.upsert_build(&drv(1), None, BuildState::Succeeded, T0),
            Err(Error::Invalid { .. })
        ));
        assert!(matches!(
            db.finish_build(&drv(1), BuildState::Running, None, None, None, T0),
            Err(Error::Invalid { .. })
        ));
    }

    #[test]
    fn record_build_log_should_update_the_log_columns() {
        let mut db = StatusDb::open_memory().unwrap();
        let path = Path::new("/logs/a.log");
        assert!(matches!(
            db.record_build_log(&drv(1), path, 10, T0),
            Err(Error::NotFound { .. })
        ));
        db.upsert_build(&drv(1), None, BuildState::Running, T0)
            .unwrap();
        db.record_build_log(&drv(1), path, 4096, at(1)).unwrap();
        db.finish_build(&drv(1), BuildState::Succeeded, Some(0), None, None, at(2))
            .unwrap();
        let build = db.build_by_drv(&drv(1)).unwrap().unwrap();
        assert_eq!(build.log_path.as_deref(), Some(path));
        assert_eq!(
            (build.log_size_bytes, build.log_updated_at),
            (Some(4096), Some(at(1)))
        );
    }

    #[test]
    fn builds_in_state_should_filter_by_state() {
        let mut db = StatusDb::open_memory().unwrap();
        db.upsert_build(&drv(1), None, BuildState::Running, T0)
            .unwrap();
        db.upsert_build(&drv(2), None, BuildState::Queued, T0)
            .unwrap();
        db.upsert_build(&drv(3), None, BuildState::Running, T0)
            .unwrap();
        let running: Vec<_> = db
            .builds_in_state(BuildState::Running)
            .unwrap()
            .into_iter()
            .map(|b| b.drv_path)
            .collect();
        assert_eq!(running, [drv(1), drv(3)]);
    }

    #[test]
    fn a_build_row_with_a_bad_builder_name_should_be_reported_as_corrupt() {
        let mut db = StatusDb::open_memory().unwrap();
        db.upsert_build(&drv(1), None, BuildState::Running, T0)
            .unwrap();
        db.conn
            .execute("UPDATE builds SET builder = 'a b'", [])
            .unwrap();
        let err = db.build_by_drv(&drv(1)).unwrap_err();
        assert!(
            matches!(
                err,
                Error::Corrupt {
                    table: "builds",
                    column: "builder",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    fn product(path: &str) -> crate::BuildProduct {
        crate::BuildProduct {
            kind: "file".to_owned(),
            subtype: "binary-dist".to_owned(),
            path: path.to_owned(),
            default_path: None,
        }
    }

    #[test]
    fn finish_built_should_record_failed_output_release_name_and_products_at_once() {
        let mut db = StatusDb::open_memory().unwrap();
        db.upsert_build(&drv(1), None, BuildState::Running, T0)
            .unwrap();
        let outputs = crate::BuiltOutputs {
            failed: true,
            release_name: Some("hello-1.0".to_owned()),
            products: vec![product("/nix/store/a"), product("/nix/store/b c")],
        };
        db.finish_built(&drv(1), Some(0), &outputs, at(2)).unwrap();
        let build = db.build_by_drv(&drv(1)).unwrap().unwrap();
        assert_eq!(build.state, BuildState::Succeeded, "the outputs exist");
        assert!(build.failed_with_output);
        assert_eq!(build.error.as_deref(), Some(crate::FAILED_WITH_OUTPUT));
        assert_eq!(build.release_name.as_deref(), Some("hello-1.0"));
        assert_eq!(db.build_products(&drv(1)).unwrap(), outputs.products);

        // Recording again replaces, never appends; a plain success has no error.
        let plain = crate::BuiltOutputs {
            products: vec![product("/nix/store/z")],
            ..crate::BuiltOutputs::default()
        };
        db.finish_built(&drv(1), Some(0), &plain, at(3)).unwrap();
        let build = db.build_by_drv(&drv(1)).unwrap().unwrap();
        assert!(!build.failed_with_output);
        assert_eq!((build.error, build.release_name), (None, None));
        assert_eq!(db.build_products(&drv(1)).unwrap(), plain.products);
        assert!(db.build_products(&drv(2)).unwrap().is_empty());
    }
}
