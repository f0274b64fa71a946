//! Evaluations recorded while they run: how many attributes are listed and evaluated, the
//! jobs batch by batch as their attributes are evaluated, and the end of an evaluation that
//! ran out of time.
//!
//! The buildable rule lives here and in [`StatusDb::schedulable_jobs`]: a job streamed while
//! its evaluation is `evaluating` is stored with `buildable = 0` unless Nix said it may be
//! built now *and* every dependency it names is already a recorded job; only buildable jobs of
//! a running evaluation are scheduled. A dependency not recorded yet cannot be an edge (there
//! is no row to point at), so the job waits for the final result, whose edges are complete
//! ([`StatusDb::record_evaluation_result`] makes every job buildable).

use rusqlite::params;

use reconix_spec::names::Timestamp;

use crate::StatusDb;
use crate::error::{QueryExt, Result};
use crate::evaluations::evaluation_state;
use crate::jobs::{index_new_jobs, job_by_attr, write_job};
use crate::row::get;
use crate::types::{EvaluationId, JobState, NewStreamedJob, RepoId};
use crate::views::EvaluationProgress;

impl StatusDb {
    /// Records that evaluation `id` listed `attributes` attributes to evaluate; returns false
    /// (changing nothing) once it has ended.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn record_evaluation_listed(&mut self, id: EvaluationId, attributes: u64) -> Result<bool> {
        let changed = self
            .conn
            .prepare_cached(
                "UPDATE evaluations SET attributes = ?2 \
                 WHERE id = ?1 AND state IN ('queued', 'evaluating')",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![id.0, i64::try_from(attributes).unwrap_or(i64::MAX)])
            })
            .op("record_evaluation_listed")?;
        Ok(changed > 0)
    }

    /// Records jobs of evaluation `id` while it is still `queued` or `evaluating`, in one
    /// transaction; returns false (changing nothing) once it has ended or was recorded.
    ///
    /// A job whose attribute is already recorded keeps its id (and its state once building
    /// or ended), as in [`record_evaluation_result`](Self::record_evaluation_result). Edges to
    /// dependencies already recorded (before, or in this batch) are added; a job naming a
    /// dependency not recorded yet is stored not buildable, whatever `buildable` says.
    /// Constituents of aggregates are left to the final result. `evaluated` becomes the number
    /// of jobs recorded.
    ///
    /// # Errors
    /// Returns [`crate::Error::NotFound`] for an unknown evaluation, [`crate::Error::Invalid`]
    /// as [`record_evaluation_result`](Self::record_evaluation_result) for malformed jobs, and
    /// [`crate::Error::Query`] when SQLite fails.
    pub fn record_streamed_jobs(
        &mut self,
        id: EvaluationId,
        jobs: &[NewStreamedJob],
        now: Timestamp,
    ) -> Result<bool> {
        const OP: &str = "record_streamed_jobs";
        let index = index_new_jobs(jobs.iter().map(|s| &s.job), OP)?;
        let tx = self.write(OP)?;
        if !evaluation_state(&tx, id, OP)?.is_evaluating() {
            return Ok(false);
        }
        // The ids of earlier recorded dependencies, or None for one not recorded yet.
        let mut earlier = Vec::with_capacity(jobs.len());
        for (i, s) in jobs.iter().enumerate() {
            let mut deps = Vec::with_capacity(s.job.deps.len());
            for dep in &s.job.deps {
                deps.push(match index.get(dep) {
                    Some(&d) if d == i => None,
                    Some(_) => Some(None),
                    None => job_by_attr(&tx, id, dep, OP)?.map(|(row, _)| Some(row)),
                });
            }
            earlier.push(deps);
        }
        let mut ids = Vec::with_capacity(jobs.len());
        for (s, deps) in jobs.iter().zip(&earlier) {
            let known = deps.iter().all(Option::is_some);
            let old = job_by_attr(&tx, id, &s.job.attr, OP)?;
            ids.push(write_job(
                &tx,
                id,
                &s.job,
                s.buildable && known,
                old,
                now,
                OP,
            )?);
        }
        {
            let mut insert_dep = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO job_deps (job_id, dep_job_id) VALUES (?1, ?2)",
                )
                .op(OP)?;
            for ((s, deps), job) in jobs.iter().zip(&earlier).zip(&ids) {
                for (dep, found) in s.job.deps.iter().zip(deps) {
                    let target = match found {
                        Some(Some(row)) => Some(*row),
                        Some(None) => index.get(dep).map(|&d| ids[d]),
                        None => None,
                    };
                    if let Some(target) = target {
                        insert_dep.execute([*job, target]).op(OP)?;
                    }
                }
            }
        }
        tx.execute(
            "UPDATE evaluations SET evaluated = \
             (SELECT count(*) FROM jobs WHERE evaluation_id = ?1) WHERE id = ?1",
            [id.0],
        )
        .op(OP)?;
        tx.commit().op(OP)?;
        Ok(true)
    }

    /// Ends evaluation `id`, which ran out of time, `failed` with `message`, keeping the jobs
    /// it recorded: the buildable ones stay queued (and may still be built, see
    /// [`schedulable_jobs`](Self::schedulable_jobs)) until a push supersedes the evaluation or
    /// an operator cancels it ([`cancel_evaluation_jobs`](Self::cancel_evaluation_jobs)), the
    /// others are cancelled, since their dependencies will never be known. Returns false
    /// (changing nothing) once it has ended.
    ///
    /// # Errors
    /// Returns [`crate::Error::NotFound`] for an unknown evaluation and [`crate::Error::Query`]
    /// when SQLite fails.
    pub fn time_out_evaluation(
        &mut self,
        id: EvaluationId,
        message: &str,
        now: Timestamp,
    ) -> Result<bool> {
        const OP: &str = "time_out_evaluation";
        let tx = self.write(OP)?;
        if !evaluation_state(&tx, id, OP)?.is_evaluating() {
            return Ok(false);
        }
        tx.execute(
            "UPDATE evaluations SET state = 'failed', error = ?2, finished_at = ?3, \
             started_at = coalesce(started_at, ?3) WHERE id = ?1",
            params![id.0, message, now.0],
        )
        .op(OP)?;
        tx.execute(
            &format!(
                "UPDATE jobs SET state = 'cancelled', finished_at = ?2 \
                 WHERE evaluation_id = ?1 AND NOT buildable AND state IN {}",
                JobState::unfinished_sql()
            ),
            params![id.0, now.0],
        )
        .op(OP)?;
        tx.commit().op(OP)?;
        Ok(true)
    }

    /// Returns the evaluations of `repo` that timed out (`failed`) with jobs left to build,
    /// oldest first. They are still live: a push supersedes them and an operator may cancel
    /// them ([`cancel_evaluation_jobs`](Self::cancel_evaluation_jobs)).
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn timed_out_evaluations_building(&self, repo: RepoId) -> Result<Vec<EvaluationId>> {
        const OP: &str = "timed_out_evaluations_building";
        self.evaluation_ids(
            OP,
            &format!(
                "e.repo_id = ?1 AND e.state = 'failed' AND EXISTS (SELECT 1 FROM jobs j \
                 WHERE j.evaluation_id = e.id AND j.state IN {})",
                JobState::unfinished_sql()
            ),
            [repo.0],
        )
    }

    /// Returns how far evaluation `id` got: `None` when it is unknown or listed nothing yet.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn evaluation_progress(&self, id: EvaluationId) -> Result<Option<EvaluationProgress>> {
        const OP: &str = "evaluation_progress";
        let mut stmt = self
            .conn
            .prepare_cached("SELECT attributes, evaluated FROM evaluations WHERE id = ?1")
            .op(OP)?;
        let mut rows = stmt.query([id.0]).op(OP)?;
        match rows.next().op(OP)? {
            Some(row) => Ok(EvaluationProgress::from_columns(
                get(row, 0, OP)?,
                get(row, 1, OP)?,
            )),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::{at, eval, job, with_deps};
    use crate::views::EvaluationProgress;
    use crate::{EvaluationId, EvaluationState, JobState, NewJob, NewStreamedJob, StatusDb};

    fn streamed(job: NewJob, buildable: bool) -> NewStreamedJob {
        NewStreamedJob { job, buildable }
    }

    fn evaluating(db: &mut StatusDb) -> EvaluationId {
        let (_, id) = eval(db, "aaa");
        db.set_evaluation_state(id, EvaluationState::Evaluating, None, at(1))
            .unwrap();
        id
    }

    fn scheduled(db: &StatusDb) -> Vec<String> {
        db.schedulable_jobs()
            .unwrap()
            .iter()
            .map(|j| j.attr.as_str().rsplit('.').next().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn streamed_jobs_should_be_recorded_while_evaluating_and_only_buildable_ones_scheduled() {
        let mut db = StatusDb::open_memory().unwrap();
        let id = evaluating(&mut db);
        assert!(db.record_evaluation_listed(id, 4).unwrap());
        assert!(
            db.record_streamed_jobs(
                id,
                &[streamed(job(1, "lib"), true), streamed(job(2, "vm"), false)],
                at(2)
            )
            .unwrap()
        );
        // `app` names `lib` (recorded) and `late` (not yet): it must wait for the end.
        let batch = [
            streamed(with_deps(job(3, "tool"), &["lib"]), true),
            streamed(with_deps(job(4, "app"), &["lib", "late"]), true),
        ];
        assert!(db.record_streamed_jobs(id, &batch, at(3)).unwrap());
        let e = db.evaluation(id).unwrap().unwrap();
        assert_eq!(e.state, EvaluationState::Evaluating);
        let jobs = db.jobs_of_evaluation(id).unwrap();
        assert_eq!(jobs.len(), 4);
        assert_eq!(jobs[2].deps, [jobs[0].id]);
        assert_eq!(
            jobs[3].deps,
            [jobs[0].id],
            "only the edge to a recorded job"
        );
        assert_eq!(scheduled(&db), ["lib", "tool"]);
        assert_eq!(
            db.evaluation_progress(id).unwrap(),
            Some(EvaluationProgress {
                evaluated: 4,
                attributes: 4
            })
        );
    }

    #[test]
    fn the_final_result_should_keep_the_ids_and_states_of_streamed_jobs_already_built() {
        let mut db = StatusDb::open_memory().unwrap();
        let id = evaluating(&mut db);
        let batch = [
            streamed(job(1, "lib"), true),
            streamed(job(2, "running"), true),
            streamed(job(3, "waiting"), false),
            streamed(job(9, "vanished"), true),
        ];
        db.record_streamed_jobs(id, &batch, at(2)).unwrap();
        let before = db.jobs_of_evaluation(id).unwrap();
        db.set_job_state(before[0].id, JobState::Succeeded, None, at(3))
            .unwrap();
        db.set_job_state(before[1].id, JobState::Building, None, at(3))
            .unwrap();
        let result = [
            job(1, "lib"),
            job(2, "running"),
            with_deps(job(3, "waiting"), &["lib"]),
            job(4, "new"),
        ];
        assert!(db.record_evaluation_result(id, &result, at(4)).unwrap());
        let after = db.jobs_of_evaluation(id).unwrap();
        let ids: Vec<_> = after.iter().map(|j| j.id).collect();
        assert_eq!(&ids[..3], [before[0].id, before[1].id, before[2].id]);
        let states: Vec<_> = after.iter().map(|j| j.state).collect();
        assert_eq!(
            states,
            [
                JobState::Succeeded,
                JobState::Building,
                JobState::Queued,
                JobState::Queued
            ]
        );
        assert_eq!(after[2].deps, [before[0].id]);
        assert!(!after.iter().any(|j| j.attr.as_str().ends_with("vanished")));
        assert_eq!(
            db.evaluation(id).unwrap().unwrap().state,
            EvaluationState::Building
        );
        assert_eq!(scheduled(&db), ["running", "waiting", "new"]);
        assert_eq!(db.evaluation_progress(id).unwrap(), None, "never listed");
    }

    #[test]
    fn a_final_result_whose_jobs_were_all_built_while_streaming_should_finish_at_once() {
        let mut db = StatusDb::open_memory().unwrap();
        let id = evaluating(&mut db);
        db.record_streamed_jobs(id, &[streamed(job(1, "a"), true)], at(2))
            .unwrap();
        let a = db.jobs_of_evaluation(id).unwrap()[0].id;
        db.set_job_state(a, JobState::Succeeded, None, at(3))
            .unwrap();
        assert!(
            db.record_evaluation_result(id, &[job(1, "a")], at(4))
                .unwrap()
        );
        let e = db.evaluation(id).unwrap().unwrap();
        assert_eq!(
            (e.state, e.finished_at),
            (EvaluationState::Finished, Some(at(4)))
        );
    }

    #[test]
    fn streaming_into_an_ended_evaluation_should_change_nothing() {
        let mut db = StatusDb::open_memory().unwrap();
        let id = evaluating(&mut db);
        let (_, newer) = eval(&mut db, "bbb");
        db.supersede_evaluation(id, newer, at(2)).unwrap();
        assert!(!db.record_evaluation_listed(id, 3).unwrap());
        assert!(
            !db.record_streamed_jobs(id, &[streamed(job(1, "a"), true)], at(3))
                .unwrap()
        );
        assert!(db.jobs_of_evaluation(id).unwrap().is_empty());
        assert!(!db.time_out_evaluation(id, "late", at(4)).unwrap());
    }

    #[test]
    fn a_timed_out_evaluation_should_fail_keep_its_jobs_and_build_only_the_buildable_ones() {
        let mut db = StatusDb::open_memory().unwrap();
        let id = evaluating(&mut db);
        db.record_evaluation_listed(id, 10).unwrap();
        let batch = [
            streamed(job(1, "done"), true),
            streamed(job(2, "ready"), true),
            streamed(job(3, "unsure"), false),
        ];
        db.record_streamed_jobs(id, &batch, at(2)).unwrap();
        let jobs = db.jobs_of_evaluation(id).unwrap();
        db.set_job_state(jobs[0].id, JobState::Succeeded, None, at(3))
            .unwrap();
        assert!(
            db.time_out_evaluation(id, "evaluation timed out", at(4))
                .unwrap()
        );
        assert!(!db.time_out_evaluation(id, "again", at(5)).unwrap());
        let e = db.evaluation(id).unwrap().unwrap();
        assert_eq!(
            (e.state, e.error.as_deref(), e.finished_at),
            (
                EvaluationState::Failed,
                Some("evaluation timed out"),
                Some(at(4))
            )
        );
        let states: Vec<_> = db
            .jobs_of_evaluation(id)
            .unwrap()
            .iter()
            .map(|j| j.state)
            .collect();
        assert_eq!(
            states,
            [JobState::Succeeded, JobState::Queued, JobState::Cancelled]
        );
        assert_eq!(scheduled(&db), ["ready"]);
        assert!(
            !db.record_evaluation_result(id, &[job(1, "done")], at(6))
                .unwrap()
        );
    }

    #[test]
    fn the_jobs_a_timed_out_evaluation_left_to_build_should_be_cancelled_on_request() {
        let mut db = StatusDb::open_memory().unwrap();
        let id = evaluating(&mut db);
        let repo = db.evaluation(id).unwrap().unwrap().repo_id;
        db.record_streamed_jobs(id, &[streamed(job(1, "ready"), true)], at(2))
            .unwrap();
        db.time_out_evaluation(id, "evaluation timed out", at(4))
            .unwrap();
        assert_eq!(db.timed_out_evaluations_building(repo).unwrap(), [id]);

        assert_eq!(db.cancel_evaluation_jobs(id, at(5)).unwrap(), 1);
        assert!(scheduled(&db).is_empty());
        assert!(db.timed_out_evaluations_building(repo).unwrap().is_empty());
        let e = db.evaluation(id).unwrap().unwrap();
        assert_eq!(
            (e.state, e.error.as_deref()),
            (EvaluationState::Failed, Some("evaluation timed out"))
        );
        assert_eq!(db.cancel_evaluation_jobs(id, at(6)).unwrap(), 0);
    }

    #[test]
    fn cancelling_a_timed_out_evaluation_should_cancel_what_it_left_to_build() {
        let mut db = StatusDb::open_memory().unwrap();
        let id = evaluating(&mut db);
        db.record_streamed_jobs(id, &[streamed(job(1, "ready"), true)], at(2))
            .unwrap();
        db.time_out_evaluation(id, "evaluation timed out", at(3))
            .unwrap();
        let done = db.cancel_evaluation(id, at(4)).unwrap();
        assert_eq!(
            (done.state, done.cancelled_jobs),
            (EvaluationState::Failed, 1)
        );
        assert!(scheduled(&db).is_empty());
        let e = db.evaluation(id).unwrap().unwrap();
        assert_eq!(e.error.as_deref(), Some("evaluation timed out"));
        let err = db.cancel_evaluation(id, at(5)).unwrap_err();
        assert!(
            matches!(&err, crate::Error::Invalid { reason, .. } if reason.contains("already failed")),
            "{err:?}"
        );
    }

    #[test]
    fn progress_should_reach_the_summaries_the_detail_and_the_page() {
        let mut db = StatusDb::open_memory().unwrap();
        let id = evaluating(&mut db);
        assert_eq!(db.evaluation_list(10).unwrap()[0].progress, None);
        db.record_evaluation_listed(id, 3).unwrap();
        db.record_streamed_jobs(id, &[streamed(job(1, "a"), true)], at(2))
            .unwrap();
        let one_of_three = EvaluationProgress {
            evaluated: 1,
            attributes: 3,
        };
        let expected = Some(one_of_three);
        assert_eq!(db.evaluation_list(10).unwrap()[0].progress, expected);
        let detail = db.evaluation_detail(id).unwrap().unwrap();
        assert_eq!(detail.summary.progress, expected);
        let json = serde_json::to_value(&detail).unwrap();
        assert_eq!(
            json["progress"],
            serde_json::json!({"evaluated": 1, "attributes": 3})
        );
        assert_eq!(
            db.evaluation_jobs_page(id, 10, 0)
                .unwrap()
                .unwrap()
                .progress,
            expected
        );
        assert_eq!(one_of_three.percent(), 33);
    }
}
