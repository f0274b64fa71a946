//! Evaluations and their state machine: `queued → evaluating → building → finished`, or
//! `failed` / `superseded`.
//!
//! Terminal states are sticky: a write that would leave one is ignored and reported as "no
//! change" rather than an error, because two loops can race to end the same evaluation (the
//! builds loop finishing it while the evaluations loop supersedes it) and the first one wins.

use reconix_spec::names::Timestamp;
use rusqlite::{OptionalExtension, Transaction, params};

use crate::StatusDb;
use crate::error::{Error, QueryExt, Result};
use crate::row::{EVALUATION_COLUMNS, parse, parse_evaluation};
use crate::types::{Evaluation, EvaluationId, EvaluationState, JobState, RepoId};

impl StatusDb {
    /// Creates the evaluation of `(repo, ref_name, rev)` in state `queued`, or finds the
    /// existing one; returns its id and whether it was inserted now.
    ///
    /// An existing evaluation is returned unchanged, whatever its state and `flake_ref`.
    ///
    /// # Errors
    /// Returns [`Error::Query`] when SQLite fails, e.g. because `repo` does not exist.
    pub fn insert_evaluation(
        &mut self,
        repo: RepoId,
        ref_name: &str,
        rev: &str,
        flake_ref: &str,
        now: Timestamp,
    ) -> Result<(EvaluationId, bool)> {
        const OP: &str = "insert_evaluation";
        let tx = self.write(OP)?;
        let inserted = tx
            .prepare_cached(
                "INSERT INTO evaluations (repo_id, ref, rev, flake_ref, state, created_at) \
                 VALUES (?1, ?2, ?3, ?4, 'queued', ?5) \
                 ON CONFLICT (repo_id, ref, rev) DO NOTHING",
            )
            .and_then(|mut stmt| stmt.execute(params![repo.0, ref_name, rev, flake_ref, now.0]))
            .op(OP)?
            > 0;
        let id = if inserted {
            tx.last_insert_rowid()
        } else {
            tx.prepare_cached(
                "SELECT id FROM evaluations WHERE repo_id = ?1 AND ref = ?2 AND rev = ?3",
            )
            .and_then(|mut stmt| stmt.query_row(params![repo.0, ref_name, rev], |r| r.get(0)))
            .op(OP)?
        };
        tx.commit().op(OP)?;
        Ok((EvaluationId(id), inserted))
    }

    /// Returns the evaluation `id`, if it exists.
    ///
    /// # Errors
    /// Returns [`Error::Query`] when SQLite fails and [`Error::Corrupt`] for a malformed row.
    pub fn evaluation(&self, id: EvaluationId) -> Result<Option<Evaluation>> {
        Ok(self
            .select_evaluations("evaluation", "e.id = ?1", [id.0])?
            .pop())
    }

    /// Returns every evaluation of `repo`, oldest first.
    ///
    /// # Errors
    /// Returns [`Error::Query`] when SQLite fails and [`Error::Corrupt`] for a malformed row.
    pub fn evaluations_for_repo(&self, repo: RepoId) -> Result<Vec<Evaluation>> {
        self.select_evaluations("evaluations_for_repo", "e.repo_id = ?1", [repo.0])
    }

    /// Returns every evaluation in `state`, oldest first.
    ///
    /// # Errors
    /// Returns [`Error::Query`] when SQLite fails and [`Error::Corrupt`] for a malformed row.
    pub fn evaluations_in_state(&self, state: EvaluationState) -> Result<Vec<Evaluation>> {
        self.select_evaluations("evaluations_in_state", "e.state = ?1", [state.as_str()])
    }

    fn select_evaluations(
        &self,
        op: &'static str,
        filter: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<Evaluation>> {
        let sql = format!(
            "SELECT {EVALUATION_COLUMNS} FROM evaluations e JOIN repos r ON r.id = e.repo_id \
             WHERE {filter} ORDER BY e.id"
        );
        let mut stmt = self.conn.prepare_cached(&sql).op(op)?;
        let mut rows = stmt.query(params).op(op)?;
        let mut evaluations = Vec::new();
        while let Some(row) = rows.next().op(op)? {
            evaluations.push(parse_evaluation(row, op)?);
        }
        Ok(evaluations)
    }

    /// Moves evaluation `id` to `state` with `error`; returns true when its state changed.
    ///
    /// Entering `evaluating` sets `started_at`; entering a terminal state sets `finished_at`.
    /// Entering `failed` or `superseded` also cancels its unfinished jobs, in the same
    /// transaction. Setting the current state again, or any state once terminal, changes
    /// nothing and returns false.
    ///
    /// # Errors
    /// Returns [`Error::NotFound`] for an unknown id, [`Error::Invalid`] when asked to enter
    /// `finished` while a job is unfinished (use
    /// [`finish_evaluation_if_done`](Self::finish_evaluation_if_done)), and [`Error::Query`]
    /// when SQLite fails.
    pub fn set_evaluation_state(
        &mut self,
        id: EvaluationId,
        state: EvaluationState,
        error: Option<&str>,
        now: Timestamp,
    ) -> Result<bool> {
        const OP: &str = "set_evaluation_state";
        let tx = self.write(OP)?;
        let current = evaluation_state(&tx, id, OP)?;
        if current == state || current.is_terminal() {
            return Ok(false);
        }
        if state == EvaluationState::Finished && unfinished_jobs(&tx, id, OP)? > 0 {
            return Err(Error::Invalid {
                op: OP,
                reason: format!("evaluation {id} still has unfinished jobs"),
            });
        }
        let started_at = (state == EvaluationState::Evaluating).then_some(now.0);
        let finished_at = state.is_terminal().then_some(now.0);
        tx.prepare_cached(
            "UPDATE evaluations SET state = ?2, error = ?3, \
             started_at = coalesce(?4, started_at), finished_at = coalesce(?5, finished_at) \
             WHERE id = ?1",
        )
        .and_then(|mut stmt| {
            stmt.execute(params![
                id.0,
                state.as_str(),
                error,
                started_at,
                finished_at
            ])
        })
        .op(OP)?;
        if matches!(state, EvaluationState::Failed | EvaluationState::Superseded) {
            cancel_jobs(&tx, id, now, OP)?;
        }
        tx.commit().op(OP)?;
        Ok(true)
    }

    /// Marks evaluation `id` as superseded by `by` and cancels its unfinished jobs, in one
    /// transaction; returns false (changing nothing) when `id` had already ended.
    ///
    /// # Errors
    /// Returns [`Error::NotFound`] when either evaluation is unknown, [`Error::Invalid`] when
    /// `id == by`, and [`Error::Query`] when SQLite fails.
    pub fn supersede_evaluation(
        &mut self,
        id: EvaluationId,
        by: EvaluationId,
        now: Timestamp,
    ) -> Result<bool> {
        const OP: &str = "supersede_evaluation";
        if id == by {
            return Err(Error::Invalid {
                op: OP,
                reason: format!("evaluation {id} cannot supersede itself"),
            });
        }
        let tx = self.write(OP)?;
        evaluation_state(&tx, by, OP)?;
        if evaluation_state(&tx, id, OP)?.is_terminal() {
            return Ok(false);
        }
        tx.prepare_cached(
            "UPDATE evaluations SET state = 'superseded', superseded_by = ?2, finished_at = ?3 \
             WHERE id = ?1",
        )
        .and_then(|mut stmt| stmt.execute(params![id.0, by.0, now.0]))
        .op(OP)?;
        cancel_jobs(&tx, id, now, OP)?;
        tx.commit().op(OP)?;
        Ok(true)
    }

    /// Moves evaluation `id` from `building` to `finished` when every job is terminal;
    /// returns true when it did.
    ///
    /// # Errors
    /// Returns [`Error::Query`] when SQLite fails.
    pub fn finish_evaluation_if_done(&mut self, id: EvaluationId, now: Timestamp) -> Result<bool> {
        let changed = self
            .conn
            .prepare_cached(&format!(
                "UPDATE evaluations SET state = 'finished', finished_at = ?2 \
                 WHERE id = ?1 AND state = 'building' AND NOT EXISTS ( \
                     SELECT 1 FROM jobs WHERE evaluation_id = ?1 AND state IN {})",
                JobState::unfinished_sql()
            ))
            .and_then(|mut stmt| stmt.execute(params![id.0, now.0]))
            .op("finish_evaluation_if_done")?;
        Ok(changed > 0)
    }

    /// Returns the evaluations in state `building` whose jobs are all in a terminal state, oldest
    /// first: the ones [`finish_evaluation_if_done`](Self::finish_evaluation_if_done) would finish.
    ///
    /// # Errors
    /// Returns [`Error::Query`] when SQLite fails.
    pub fn finishable_evaluations(&self) -> Result<Vec<EvaluationId>> {
        self.evaluation_ids(
            "finishable_evaluations",
            &format!(
                "e.state = 'building' AND NOT EXISTS (SELECT 1 FROM jobs j \
                 WHERE j.evaluation_id = e.id AND j.state IN {})",
                JobState::unfinished_sql()
            ),
            [],
        )
    }

    /// Returns the ids of the evaluations `e` that match `filter`, oldest first.
    pub(crate) fn evaluation_ids(
        &self,
        op: &'static str,
        filter: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<EvaluationId>> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT e.id FROM evaluations e WHERE {filter} ORDER BY e.id"
            ))
            .op(op)?;
        let ids = stmt
            .query_map(params, |r| r.get::<_, i64>(0))
            .op(op)?
            .collect::<rusqlite::Result<Vec<i64>>>()
            .op(op)?;
        Ok(ids.into_iter().map(EvaluationId).collect())
    }

    /// Cancels the `queued` and `building` jobs of evaluation `id`; returns how many.
    ///
    /// [`supersede_evaluation`](Self::supersede_evaluation) already does this; the method is
    /// for an evaluation that ended with jobs left, one that timed out: a push or an operator
    /// cancels them, and it keeps its state and message.
    ///
    /// # Errors
    /// Returns [`Error::Query`] when SQLite fails.
    pub fn cancel_evaluation_jobs(&mut self, id: EvaluationId, now: Timestamp) -> Result<u64> {
        const OP: &str = "cancel_evaluation_jobs";
        let tx = self.write(OP)?;
        let n = cancel_jobs(&tx, id, now, OP)?;
        tx.commit().op(OP)?;
        Ok(n)
    }
}

/// Returns the state of evaluation `id` inside `tx`.
pub(crate) fn evaluation_state(
    tx: &Transaction<'_>,
    id: EvaluationId,
    op: &'static str,
) -> Result<EvaluationState> {
    let state: String = tx
        .prepare_cached("SELECT state FROM evaluations WHERE id = ?1")
        .and_then(|mut stmt| stmt.query_row([id.0], |r| r.get(0)).optional())
        .op(op)?
        .ok_or_else(|| Error::NotFound {
            what: "evaluation",
            key: id.to_string(),
        })?;
    parse("evaluations", "state", state)
}

pub(crate) fn unfinished_jobs(
    tx: &Transaction<'_>,
    id: EvaluationId,
    op: &'static str,
) -> Result<i64> {
    tx.prepare_cached(&format!(
        "SELECT count(*) FROM jobs WHERE evaluation_id = ?1 AND state IN {}",
        JobState::unfinished_sql()
    ))
    .and_then(|mut stmt| stmt.query_row([id.0], |r| r.get(0)))
    .op(op)
}

/// Cancels every unfinished job of evaluation `id`; returns how many.
pub(crate) fn cancel_jobs(
    tx: &Transaction<'_>,
    id: EvaluationId,
    now: Timestamp,
    op: &'static str,
) -> Result<u64> {
    let n = tx
        .prepare_cached(&format!(
            "UPDATE jobs SET state = 'cancelled', finished_at = ?2 \
             WHERE evaluation_id = ?1 AND state IN {}",
            JobState::unfinished_sql()
        ))
        .and_then(|mut stmt| stmt.execute(params![id.0, now.0]))
        .op(op)?;
    Ok(u64::try_from(n).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use crate::testing::{T0, at, building_eval, eval, job, repo_key};
    use crate::{Error, EvaluationId, EvaluationState, JobState, StatusDb};

    #[test]
    fn inserting_the_same_evaluation_twice_should_return_the_first_id() {
        let mut db = StatusDb::open_memory().unwrap();
        let repo = db.upsert_repo(&repo_key("gh/a/b")).unwrap();
        let (a, inserted) = db
            .insert_evaluation(repo, "refs/heads/main", "aaa", "git+file:///x?rev=aaa", T0)
            .unwrap();
        assert!(inserted);
        let (b, inserted) = db
            .insert_evaluation(repo, "refs/heads/main", "aaa", "other", at(1))
            .unwrap();
        assert!(!inserted);
        assert_eq!(a, b);
        let e = db.evaluation(a).unwrap().unwrap();
        assert_eq!(e.flake_ref, "git+file:///x?rev=aaa");
        assert_eq!(e.state, EvaluationState::Queued);
        assert_eq!(e.repo.to_string(), "gh/a/b");
        assert_eq!((e.ref_name.as_str(), e.created_at), ("refs/heads/main", T0));
        let (c, inserted) = db
            .insert_evaluation(repo, "refs/heads/dev", "aaa", "x", at(2))
            .unwrap();
        assert!(inserted);
        assert_ne!(a, c);
        let ids: Vec<_> = db
            .evaluations_for_repo(repo)
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(ids, [a, c]);
    }

    #[test]
    fn evaluation_should_return_none_for_an_unknown_id() {
        let db = StatusDb::open_memory().unwrap();
        assert_eq!(db.evaluation(EvaluationId(99)).unwrap(), None);
    }

    #[test]
    fn an_evaluation_row_with_an_unknown_state_should_be_reported_as_corrupt() {
        let mut db = StatusDb::open_memory().unwrap();
        let (_, id) = eval(&mut db, "aaa");
        // The CHECK constraint forbids this; disable it to simulate a damaged file.
        db.conn
            .pragma_update(None, "ignore_check_constraints", true)
            .unwrap();
        db.conn
            .execute("UPDATE evaluations SET state = 'exploded'", [])
            .unwrap();
        let err = db.evaluation(id).unwrap_err();
        assert!(
            matches!(&err, Error::Corrupt { table: "evaluations", column: "state", value, .. } if value == "exploded"),
            "{err:?}"
        );
    }

    #[test]
    fn set_evaluation_state_should_stamp_start_and_finish_times() {
        let mut db = StatusDb::open_memory().unwrap();
        let (_, id) = eval(&mut db, "aaa");
        assert!(
            db.set_evaluation_state(id, EvaluationState::Evaluating, None, at(1))
                .unwrap()
        );
        assert!(
            !db.set_evaluation_state(id, EvaluationState::Evaluating, None, at(2))
                .unwrap()
        );
        let e = db.evaluation(id).unwrap().unwrap();
        assert_eq!(
            (e.state, e.started_at, e.finished_at),
            (EvaluationState::Evaluating, Some(at(1)), None)
        );
        assert!(
            db.set_evaluation_state(id, EvaluationState::Failed, Some("no flake.nix"), at(3))
                .unwrap()
        );
        let e = db.evaluation(id).unwrap().unwrap();
        assert_eq!(e.state, EvaluationState::Failed);
        assert_eq!(e.error.as_deref(), Some("no flake.nix"));
        assert_eq!(e.finished_at, Some(at(3)));
        assert_eq!(
            db.evaluations_in_state(EvaluationState::Failed)
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn a_terminal_evaluation_state_should_be_sticky() {
        let mut db = StatusDb::open_memory().unwrap();
        let (_, id) = eval(&mut db, "aaa");
        db.set_evaluation_state(id, EvaluationState::Failed, Some("x"), at(1))
            .unwrap();
        assert!(
            !db.set_evaluation_state(id, EvaluationState::Evaluating, None, at(2))
                .unwrap()
        );
        let e = db.evaluation(id).unwrap().unwrap();
        assert_eq!(
            (e.state, e.finished_at),
            (EvaluationState::Failed, Some(at(1)))
        );
    }

    #[test]
    fn set_evaluation_state_should_reject_an_unknown_id_and_premature_finish() {
        let mut db = StatusDb::open_memory().unwrap();
        let err = db
            .set_evaluation_state(EvaluationId(5), EvaluationState::Evaluating, None, T0)
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::NotFound {
                    what: "evaluation",
                    ..
                }
            ),
            "{err:?}"
        );
        let id = building_eval(&mut db, "aaa", &[job(1, "a")]);
        let err = db
            .set_evaluation_state(id, EvaluationState::Finished, None, T0)
            .unwrap_err();
        assert!(matches!(err, Error::Invalid { .. }), "{err:?}");
    }

    #[test]
    fn superseding_an_evaluation_should_cancel_its_unfinished_jobs() {
        let mut db = StatusDb::open_memory().unwrap();
        let old = building_eval(&mut db, "aaa", &[job(1, "a"), job(2, "b"), job(3, "c")]);
        let jobs = db.jobs_of_evaluation(old).unwrap();
        db.set_job_state(jobs[0].id, JobState::Succeeded, None, at(2))
            .unwrap();
        db.set_job_state(jobs[1].id, JobState::Building, None, at(2))
            .unwrap();
        let (_, new) = eval(&mut db, "bbb");

        assert!(db.supersede_evaluation(old, new, at(3)).unwrap());
        let e = db.evaluation(old).unwrap().unwrap();
        assert_eq!(e.state, EvaluationState::Superseded);
        assert_eq!(e.superseded_by, Some(new));
        assert_eq!(e.finished_at, Some(at(3)));
        let states: Vec<_> = db
            .jobs_of_evaluation(old)
            .unwrap()
            .iter()
            .map(|j| j.state)
            .collect();
        assert_eq!(
            states,
            [
                JobState::Succeeded,
                JobState::Cancelled,
                JobState::Cancelled
            ]
        );
        assert!(!db.supersede_evaluation(old, new, at(4)).unwrap());
    }

    #[test]
    fn superseding_should_leave_a_finished_evaluation_alone() {
        let mut db = StatusDb::open_memory().unwrap();
        let old = building_eval(&mut db, "aaa", &[]);
        assert_eq!(
            db.evaluation(old).unwrap().unwrap().state,
            EvaluationState::Finished
        );
        let (_, new) = eval(&mut db, "bbb");
        assert!(!db.supersede_evaluation(old, new, at(3)).unwrap());
        assert!(matches!(
            db.supersede_evaluation(new, new, at(3)),
            Err(Error::Invalid { .. })
        ));
        assert!(matches!(
            db.supersede_evaluation(new, EvaluationId(77), at(3)),
            Err(Error::NotFound { .. })
        ));
    }

    #[test]
    fn finish_evaluation_if_done_should_wait_for_every_job() {
        let mut db = StatusDb::open_memory().unwrap();
        let id = building_eval(&mut db, "aaa", &[job(1, "a"), job(2, "b")]);
        let jobs = db.jobs_of_evaluation(id).unwrap();
        db.set_job_state(jobs[0].id, JobState::Succeeded, None, at(2))
            .unwrap();
        assert!(db.finishable_evaluations().unwrap().is_empty());
        assert!(!db.finish_evaluation_if_done(id, at(3)).unwrap());
        db.set_job_state(jobs[1].id, JobState::Failed, Some("exit 1"), at(4))
            .unwrap();
        assert_eq!(db.finishable_evaluations().unwrap(), vec![id]);
        assert!(db.finish_evaluation_if_done(id, at(5)).unwrap());
        assert!(db.finishable_evaluations().unwrap().is_empty());
        assert!(!db.finish_evaluation_if_done(id, at(6)).unwrap());
        let e = db.evaluation(id).unwrap().unwrap();
        assert_eq!(
            (e.state, e.finished_at),
            (EvaluationState::Finished, Some(at(5)))
        );
    }

    #[test]
    fn cancel_evaluation_jobs_should_cancel_only_unfinished_jobs() {
        let mut db = StatusDb::open_memory().unwrap();
        let id = building_eval(&mut db, "aaa", &[job(1, "a"), job(2, "b")]);
        let jobs = db.jobs_of_evaluation(id).unwrap();
        db.set_job_state(jobs[0].id, JobState::Succeeded, None, at(2))
            .unwrap();
        assert_eq!(db.cancel_evaluation_jobs(id, at(3)).unwrap(), 1);
        assert_eq!(db.cancel_evaluation_jobs(id, at(4)).unwrap(), 0);
        let b = &db.jobs_of_evaluation(id).unwrap()[1];
        assert_eq!((b.state, b.finished_at), (JobState::Cancelled, Some(at(3))));
    }
}
