//! Loop health: one row per reconcile loop, updated after every run.

use reconix_spec::names::Timestamp;
use rusqlite::params;

use crate::StatusDb;
use crate::error::{QueryExt, Result};
use crate::row::{get, non_negative};
use crate::types::LoopHealth;

impl StatusDb {
    /// Records one run of loop `name` that ended at `now` with `outcome` (the error message on
    /// failure), and when it plans to run next.
    ///
    /// A success resets `consecutive_failures` and keeps `last_error` for the status page; a
    /// failure increments `consecutive_failures` and replaces `last_error`.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn record_loop_run(
        &mut self,
        name: &str,
        outcome: Result<(), &str>,
        next_run: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<()> {
        let (success_at, error, failures) = match outcome {
            Ok(()) => (Some(now.0), None, 0_i64),
            Err(e) => (None, Some(e), 1),
        };
        self.conn
            .prepare_cached(
                "INSERT INTO loops (name, runs, last_run_at, last_success_at, last_error, \
                 consecutive_failures, next_run_at) VALUES (?1, 1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT (name) DO UPDATE SET runs = runs + 1, \
                 last_run_at = excluded.last_run_at, \
                 last_success_at = coalesce(excluded.last_success_at, last_success_at), \
                 last_error = coalesce(excluded.last_error, last_error), \
                 consecutive_failures = CASE WHEN excluded.last_error IS NULL THEN 0 \
                     ELSE consecutive_failures + 1 END, \
                 next_run_at = excluded.next_run_at",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    name,
                    now.0,
                    success_at,
                    error,
                    failures,
                    next_run.map(|t| t.0)
                ])
            })
            .op("record_loop_run")?;
        Ok(())
    }

    /// Returns the health of every loop that has run, ordered by name.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails and [`crate::Error::Corrupt`] for a
    /// negative counter.
    pub fn loops(&self) -> Result<Vec<LoopHealth>> {
        const OP: &str = "loops";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT name, runs, last_run_at, last_success_at, last_error, \
                 consecutive_failures, next_run_at FROM loops ORDER BY name",
            )
            .op(OP)?;
        let mut rows = stmt.query([]).op(OP)?;
        let mut loops = Vec::new();
        while let Some(row) = rows.next().op(OP)? {
            loops.push(LoopHealth {
                name: get(row, 0, OP)?,
                runs: non_negative("loops", "runs", get(row, 1, OP)?)?,
                last_run_at: get::<Option<i64>>(row, 2, OP)?.map(Timestamp),
                last_success_at: get::<Option<i64>>(row, 3, OP)?.map(Timestamp),
                last_error: get(row, 4, OP)?,
                consecutive_failures: non_negative(
                    "loops",
                    "consecutive_failures",
                    get(row, 5, OP)?,
                )?,
                next_run_at: get::<Option<i64>>(row, 6, OP)?.map(Timestamp),
            });
        }
        Ok(loops)
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::{T0, at};
    use crate::{LoopHealth, StatusDb};

    #[test]
    fn record_loop_run_should_count_runs_and_consecutive_failures() {
        let mut db = StatusDb::open_memory().unwrap();
        db.record_loop_run("builds", Ok(()), Some(at(10)), T0)
            .unwrap();
        db.record_loop_run(
            "builds",
            Err("ssh: connection refused"),
            Some(at(20)),
            at(1),
        )
        .unwrap();
        db.record_loop_run("builds", Err("ssh: timeout"), None, at(2))
            .unwrap();
        db.record_loop_run("evaluations", Err("boom"), None, at(2))
            .unwrap();
        let loops = db.loops().unwrap();
        assert_eq!(
            loops[0],
            LoopHealth {
                name: "builds".to_owned(),
                runs: 3,
                last_run_at: Some(at(2)),
                last_success_at: Some(T0),
                last_error: Some("ssh: timeout".to_owned()),
                consecutive_failures: 2,
                next_run_at: None,
            }
        );
        assert_eq!(
            (loops[1].name.as_str(), loops[1].last_success_at),
            ("evaluations", None)
        );
        assert_eq!(loops[1].consecutive_failures, 1);

        db.record_loop_run("builds", Ok(()), Some(at(30)), at(3))
            .unwrap();
        let builds = &db.loops().unwrap()[0];
        assert_eq!((builds.runs, builds.consecutive_failures), (4, 0));
        assert_eq!(
            (builds.last_success_at, builds.next_run_at),
            (Some(at(3)), Some(at(30)))
        );
        assert_eq!(builds.last_error.as_deref(), Some("ssh: timeout"));
    }
}
