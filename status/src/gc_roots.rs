//! GC roots: which links the gcroots loop registered for the outputs of succeeded jobs.

use std::path::{Path, PathBuf};

use reconix_spec::names::Timestamp;
use rusqlite::params;

use crate::StatusDb;
use crate::error::{QueryExt, Result};
use crate::row::{get, parse, path_text};
use crate::types::{EvaluationId, EvaluationState, GcRoot, Job, JobId, KEEPS_OUTPUTS_SQL, RepoId};

impl StatusDb {
    /// Returns the jobs whose outputs are kept (the succeeded ones, and the failed ones whose
    /// build failed with output) of every (not purged) evaluation of `repo`, whatever the
    /// evaluation's state, with their evaluation ids, in job id order: exactly what should be
    /// rooted.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails and [`crate::Error::Corrupt`] for a
    /// malformed row.
    pub fn succeeded_jobs_for_rooting(&self, repo: RepoId) -> Result<Vec<(Job, EvaluationId)>> {
        let jobs = self.select_jobs(
            "succeeded_jobs_for_rooting",
            &format!("e.repo_id = ?1 AND {KEEPS_OUTPUTS_SQL}"),
            [repo.0],
        )?;
        Ok(jobs
            .into_iter()
            .map(|job| {
                let eval = job.evaluation_id;
                (job, eval)
            })
            .collect())
    }

    /// Returns whether job `id` exists and its outputs are kept (see
    /// [`succeeded_jobs_for_rooting`](Self::succeeded_jobs_for_rooting)).
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn job_keeps_outputs(&self, id: JobId) -> Result<bool> {
        const OP: &str = "job_keeps_outputs";
        self.conn
            .prepare_cached(&format!(
                "SELECT EXISTS (SELECT 1 FROM jobs j WHERE j.id = ?1 AND {KEEPS_OUTPUTS_SQL})"
            ))
            .and_then(|mut stmt| stmt.query_row([id.0], |r| r.get(0)))
            .op(OP)
    }

    /// Returns the evaluations of `repo` that are not finished (their builds may still be
    /// writing roots), ordered by id.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails and [`crate::Error::Corrupt`] for a
    /// malformed state.
    pub fn unfinished_evaluations(&self, repo: RepoId) -> Result<Vec<EvaluationId>> {
        const OP: &str = "unfinished_evaluations";
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, state FROM evaluations WHERE repo_id = ?1 ORDER BY id")
            .op(OP)?;
        let mut rows = stmt.query([repo.0]).op(OP)?;
        let mut ids = Vec::new();
        while let Some(row) = rows.next().op(OP)? {
            let state: EvaluationState = parse("evaluations", "state", get(row, 1, OP)?)?;
            if !state.is_terminal() {
                ids.push(EvaluationId(get(row, 0, OP)?));
            }
        }
        Ok(ids)
    }

    /// Returns the GC roots recorded for jobs of `repo`, ordered by path.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn gc_roots(&self, repo: RepoId) -> Result<Vec<GcRoot>> {
        const OP: &str = "gc_roots";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT g.job_id, j.evaluation_id, g.path, g.output, g.created_at \
                 FROM gc_roots g JOIN jobs j ON j.id = g.job_id \
                 JOIN evaluations e ON e.id = j.evaluation_id \
                 WHERE e.repo_id = ?1 ORDER BY g.path",
            )
            .op(OP)?;
        let mut rows = stmt.query([repo.0]).op(OP)?;
        let mut roots = Vec::new();
        while let Some(row) = rows.next().op(OP)? {
            roots.push(GcRoot {
                job_id: JobId(get(row, 0, OP)?),
                evaluation_id: EvaluationId(get(row, 1, OP)?),
                path: PathBuf::from(get::<String>(row, 2, OP)?),
                output: get(row, 3, OP)?,
                created_at: Timestamp(get(row, 4, OP)?),
            });
        }
        Ok(roots)
    }

    /// Records the GC root `path` for `output` of `job`; returns false when `path` was
    /// already recorded (the row is left as it was, so registering twice is harmless).
    ///
    /// # Errors
    /// Returns [`crate::Error::Invalid`] when `path` is not UTF-8 and [`crate::Error::Query`]
    /// when SQLite fails, e.g. because `job` does not exist.
    pub fn insert_gc_root(
        &mut self,
        job: JobId,
        path: &Path,
        output: &str,
        now: Timestamp,
    ) -> Result<bool> {
        const OP: &str = "insert_gc_root";
        let path = path_text(OP, path)?;
        let n = self
            .conn
            .prepare_cached(
                "INSERT INTO gc_roots (job_id, path, output, created_at) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (path) DO NOTHING",
            )
            .and_then(|mut stmt| stmt.execute(params![job.0, path, output, now.0]))
            .op(OP)?;
        Ok(n > 0)
    }

    /// Forgets the GC root `path`; returns true when it was recorded.
    ///
    /// # Errors
    /// Returns [`crate::Error::Invalid`] when `path` is not UTF-8 and [`crate::Error::Query`]
    /// when SQLite fails.
    pub fn delete_gc_root(&mut self, path: &Path) -> Result<bool> {
        const OP: &str = "delete_gc_root";
        let path = path_text(OP, path)?;
        let n = self
            .conn
            .prepare_cached("DELETE FROM gc_roots WHERE path = ?1")
            .and_then(|mut stmt| stmt.execute([path]))
            .op(OP)?;
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::testing::{T0, at, building_eval, eval, job, repo_key};
    use crate::{JobState, StatusDb};

    #[test]
    fn succeeded_jobs_for_rooting_should_cover_every_evaluation_of_the_repo() {
        let mut db = StatusDb::open_memory().unwrap();
        let first = building_eval(&mut db, "aaa", &[job(1, "a"), job(2, "b")]);
        let jobs = db.jobs_of_evaluation(first).unwrap();
        db.set_job_state(jobs[0].id, JobState::Succeeded, None, at(2))
            .unwrap();
        db.set_job_state(jobs[1].id, JobState::Failed, None, at(2))
            .unwrap();
        let (repo, second) = eval(&mut db, "bbb");
        db.record_evaluation_result(second, &[job(3, "a")], at(3))
            .unwrap();
        let j3 = db.jobs_of_evaluation(second).unwrap()[0].id;
        db.set_job_state(j3, JobState::Succeeded, None, at(4))
            .unwrap();
        // Another repository's successes are not ours to root.
        let other = db.upsert_repo(&repo_key("gh/x/y")).unwrap();
        let (e, _) = db
            .insert_evaluation(other, "refs/heads/main", "ccc", "f", T0)
            .unwrap();
        db.record_evaluation_result(e, &[job(5, "z")], T0).unwrap();
        let z = db.jobs_of_evaluation(e).unwrap()[0].id;
        db.set_job_state(z, JobState::Succeeded, None, T0).unwrap();

        let rooted: Vec<_> = db
            .succeeded_jobs_for_rooting(repo)
            .unwrap()
            .into_iter()
            .map(|(j, e)| (j.id, e))
            .collect();
        assert_eq!(rooted, [(jobs[0].id, first), (j3, second)]);
    }

    #[test]
    fn gc_roots_should_be_recorded_once_per_path_and_deletable() {
        let mut db = StatusDb::open_memory().unwrap();
        let id = building_eval(&mut db, "aaa", &[job(1, "a")]);
        let j = db.jobs_of_evaluation(id).unwrap()[0].id;
        let repo = db.repo_id(&repo_key("gh/o/r")).unwrap().unwrap();
        let path = Path::new("/var/lib/reconix/gcroots/gh/o/r/1/packages.x86_64-linux.a");
        assert!(db.insert_gc_root(j, path, "out", at(1)).unwrap());
        assert!(!db.insert_gc_root(j, path, "out", at(2)).unwrap());
        let roots = db.gc_roots(repo).unwrap();
        assert_eq!(roots.len(), 1);
        assert_eq!((roots[0].job_id, roots[0].evaluation_id), (j, id));
        assert_eq!(
            (roots[0].path.as_path(), roots[0].output.as_str()),
            (path, "out")
        );
        assert_eq!(roots[0].created_at, at(1));
        assert!(db.delete_gc_root(path).unwrap());
        assert!(!db.delete_gc_root(path).unwrap());
        assert!(db.gc_roots(repo).unwrap().is_empty());
    }

    #[test]
    fn purging_an_evaluation_should_remove_its_whole_subtree() {
        let mut db = StatusDb::open_memory().unwrap();
        let id = building_eval(
            &mut db,
            "aaa",
            &[job(1, "a"), crate::testing::with_deps(job(2, "b"), &["a"])],
        );
        let j = db.jobs_of_evaluation(id).unwrap()[0].id;
        db.insert_gc_root(j, Path::new("/r/1/a"), "out", at(1))
            .unwrap();
        db.conn
            .execute("DELETE FROM evaluations WHERE id = ?1", [id.0])
            .unwrap();
        for table in ["jobs", "job_deps", "gc_roots"] {
            let n: i64 = db
                .conn
                .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
                .unwrap();
            assert_eq!(n, 0, "{table}");
        }
    }

    #[test]
    fn jobs_whose_build_failed_with_output_should_be_rooted_and_plain_failures_not() {
        let mut db = StatusDb::open_memory().unwrap();
        let (repo, _) = eval(&mut db, "aaa");
        db.conn.execute("DELETE FROM evaluations", []).unwrap();
        let e = building_eval(
            &mut db,
            "bbb",
            &[job(1, "kept"), job(2, "broken"), job(3, "ok")],
        );
        let jobs = db.jobs_of_evaluation(e).unwrap();
        let kept = crate::BuiltOutputs {
            failed: true,
            ..crate::BuiltOutputs::default()
        };
        db.finish_built(jobs[0].drv_path.as_ref().unwrap(), Some(0), &kept, at(2))
            .unwrap();
        db.finish_build(
            jobs[1].drv_path.as_ref().unwrap(),
            crate::BuildState::Failed,
            Some(100),
            Some("boom"),
            None,
            at(2),
        )
        .unwrap();
        db.finish_built(
            jobs[2].drv_path.as_ref().unwrap(),
            Some(0),
            &crate::BuiltOutputs::default(),
            at(2),
        )
        .unwrap();
        for (i, state) in [JobState::Failed, JobState::Failed, JobState::Succeeded]
            .into_iter()
            .enumerate()
        {
            db.set_job_state(jobs[i].id, state, None, at(3)).unwrap();
        }
        let rooted: Vec<_> = db
            .succeeded_jobs_for_rooting(repo)
            .unwrap()
            .into_iter()
            .map(|(j, _)| j.name)
            .collect();
        assert_eq!(rooted, ["kept", "ok"]);
        assert!(db.job_keeps_outputs(jobs[0].id).unwrap());
        assert!(!db.job_keeps_outputs(jobs[1].id).unwrap());
        assert!(db.job_keeps_outputs(jobs[2].id).unwrap());
        assert!(!db.job_keeps_outputs(crate::JobId(99)).unwrap());
    }
}
