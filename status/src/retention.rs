//! What the `retention` loop reads (every evaluation with its rooted outputs, the open pull
//! requests) and the purge of one evaluation subtree.

use std::collections::BTreeMap;
use std::path::PathBuf;

use reconix_spec::names::{RepoKey, StorePath, Timestamp};
use rusqlite::params;

use crate::StatusDb;
use crate::error::{QueryExt, Result};
use crate::row::{get, non_negative, parse, parse_repo_key};
use crate::types::{EvaluationId, EvaluationState};

/// One evaluation as the `retention` loop sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionEval {
    /// The evaluation.
    pub id: EvaluationId,
    /// Its repository.
    pub repo: RepoKey,
    /// Its ref (`refs/heads/main`, `refs/pull/3/head`, …).
    pub git_ref: String,
    /// When it was created.
    pub created_at: Timestamp,
    /// Where it stands.
    pub state: EvaluationState,
    /// How many jobs it has.
    pub jobs: u32,
    /// How many of them succeeded.
    pub succeeded: u32,
    /// The outputs of its succeeded jobs (what its GC roots hold), sorted.
    pub outputs: Vec<StorePath>,
}

impl RetentionEval {
    /// Returns true when it finished and every job succeeded.
    pub fn is_successful(&self) -> bool {
        self.state == EvaluationState::Finished && self.succeeded == self.jobs
    }
}

impl StatusDb {
    /// Returns every evaluation, oldest first, with its job counts and rooted outputs.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails and [`crate::Error::Corrupt`] for a
    /// malformed row.
    pub fn retention_evaluations(&self) -> Result<Vec<RetentionEval>> {
        const OP: &str = "retention_evaluations";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT e.id, r.forge, r.name, e.ref, e.created_at, e.state, \
                 (SELECT count(*) FROM jobs j WHERE j.evaluation_id = e.id), \
                 (SELECT count(*) FROM jobs j WHERE j.evaluation_id = e.id \
                  AND j.state = 'succeeded') \
                 FROM evaluations e JOIN repos r ON r.id = e.repo_id ORDER BY e.created_at, e.id",
            )
            .op(OP)?;
        let mut rows = stmt.query([]).op(OP)?;
        let mut evals = Vec::new();
        while let Some(row) = rows.next().op(OP)? {
            evals.push(RetentionEval {
                id: EvaluationId(get(row, 0, OP)?),
                repo: parse_repo_key(get(row, 1, OP)?, get(row, 2, OP)?)?,
                git_ref: get(row, 3, OP)?,
                created_at: Timestamp(get(row, 4, OP)?),
                state: parse("evaluations", "state", get(row, 5, OP)?)?,
                jobs: non_negative("jobs", "id", get(row, 6, OP)?)?,
                succeeded: non_negative("jobs", "state", get(row, 7, OP)?)?,
                outputs: Vec::new(),
            });
        }
        let mut outputs: BTreeMap<i64, Vec<StorePath>> = BTreeMap::new();
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT DISTINCT j.evaluation_id, o.value FROM jobs j, json_each(j.outputs) o \
                 WHERE j.state = 'succeeded' ORDER BY j.evaluation_id, o.value",
            )
            .op(OP)?;
        let mut rows = stmt.query([]).op(OP)?;
        while let Some(row) = rows.next().op(OP)? {
            outputs.entry(get(row, 0, OP)?).or_default().push(parse(
                "jobs",
                "outputs",
                get(row, 1, OP)?,
            )?);
        }
        for eval in &mut evals {
            eval.outputs = outputs.remove(&eval.id.0).unwrap_or_default();
        }
        Ok(evals)
    }

    /// Returns the open pull requests: repository and number.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn all_open_pull_requests(&self) -> Result<Vec<(RepoKey, u64)>> {
        const OP: &str = "all_open_pull_requests";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT r.forge, r.name, p.number FROM pull_requests p \
                 JOIN repos r ON r.id = p.repo_id WHERE p.open = 1 ORDER BY r.forge, r.name, p.number",
            )
            .op(OP)?;
        let mut rows = stmt.query([]).op(OP)?;
        let mut prs = Vec::new();
        while let Some(row) = rows.next().op(OP)? {
            prs.push((
                parse_repo_key(get(row, 0, OP)?, get(row, 1, OP)?)?,
                non_negative("pull_requests", "number", get(row, 2, OP)?)?,
            ));
        }
        Ok(prs)
    }

    /// Returns the builds whose log is still recorded and which finished before `before`: drv
    /// and log file, oldest first.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails and [`crate::Error::Corrupt`] for a
    /// malformed path.
    pub fn expired_logs(&self, before: Timestamp) -> Result<Vec<(StorePath, PathBuf)>> {
        const OP: &str = "expired_logs";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT drv_path, log_path FROM builds WHERE log_path IS NOT NULL \
                 AND finished_at IS NOT NULL AND finished_at < ?1 ORDER BY finished_at",
            )
            .op(OP)?;
        let mut rows = stmt.query([before.0]).op(OP)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().op(OP)? {
            out.push((
                parse("builds", "drv_path", get(row, 0, OP)?)?,
                PathBuf::from(get::<String>(row, 1, OP)?),
            ));
        }
        Ok(out)
    }

    /// Returns when the oldest build log that is not expired at `before` finished (its expiry
    /// is that plus the retention time), if any.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn oldest_log_since(&self, before: Timestamp) -> Result<Option<Timestamp>> {
        const OP: &str = "oldest_log_since";
        self.conn
            .query_row(
                "SELECT min(finished_at) FROM builds WHERE log_path IS NOT NULL \
                 AND finished_at IS NOT NULL AND finished_at >= ?1",
                [before.0],
                |r| r.get::<_, Option<i64>>(0),
            )
            .op(OP)
            .map(|t| t.map(Timestamp))
    }

    /// Records that the log of the build of `drv` was deleted (the pages then offer none).
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn forget_build_log(&mut self, drv: &StorePath) -> Result<()> {
        const OP: &str = "forget_build_log";
        self.conn
            .execute(
                "UPDATE builds SET log_path = NULL, log_size_bytes = NULL WHERE drv_path = ?1",
                [drv.as_str()],
            )
            .op(OP)
            .map(drop)
    }

    /// Deletes evaluation `id` with its jobs and GC-root rows, and every build no remaining job
    /// uses; returns the log files of those builds (to delete from disk). Purging an evaluation
    /// that is gone already returns nothing.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn purge_evaluation(&mut self, id: EvaluationId) -> Result<Vec<PathBuf>> {
        const OP: &str = "purge_evaluation";
        let tx = self.write(OP)?;
        let drvs: Vec<String> = {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT DISTINCT drv_path FROM jobs \
                     WHERE evaluation_id = ?1 AND drv_path IS NOT NULL",
                )
                .op(OP)?;
            let rows = stmt.query_map([id.0], |r| r.get::<_, String>(0)).op(OP)?;
            rows.collect::<rusqlite::Result<_>>().op(OP)?
        };
        tx.execute("DELETE FROM evaluations WHERE id = ?1", [id.0])
            .op(OP)?;
        let mut logs = Vec::new();
        {
            let mut orphan = tx
                .prepare_cached(
                    "DELETE FROM builds WHERE drv_path = ?1 AND NOT EXISTS \
                     (SELECT 1 FROM jobs WHERE jobs.drv_path = ?1) RETURNING log_path",
                )
                .op(OP)?;
            for drv in &drvs {
                let mut rows = orphan.query(params![drv]).op(OP)?;
                while let Some(row) = rows.next().op(OP)? {
                    if let Some(path) = get::<Option<String>>(row, 0, OP)? {
                        logs.push(PathBuf::from(path));
                    }
                }
            }
        }
        tx.commit().op(OP)?;
        Ok(logs)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::testing::{at, building_eval, drv, job};
    use crate::{BuildState, JobState};

    #[test]
    fn retention_evaluations_should_list_jobs_counts_and_rooted_outputs() {
        let mut db = StatusDb::open_memory().unwrap();
        let id = building_eval(&mut db, "r1", &[job(1, "a"), job(2, "b")]);
        let jobs = db.jobs_of_evaluation(id).unwrap();
        db.set_job_state(jobs[0].id, JobState::Succeeded, None, at(2))
            .unwrap();
        let evals = db.retention_evaluations().unwrap();
        assert_eq!(evals.len(), 1);
        let e = &evals[0];
        assert_eq!(
            (e.id, e.git_ref.as_str(), e.jobs, e.succeeded),
            (id, "refs/heads/main", 2, 1)
        );
        assert_eq!(e.outputs, [jobs[0].outputs.get("out").unwrap().clone()]);
        assert!(!e.is_successful());
        assert!(db.all_open_pull_requests().unwrap().is_empty());
    }

    #[test]
    fn purge_evaluation_should_keep_builds_another_evaluation_uses() {
        let mut db = StatusDb::open_memory().unwrap();
        let old = building_eval(&mut db, "r1", &[job(1, "shared"), job(2, "old-only")]);
        let new = building_eval(&mut db, "r2", &[job(1, "shared")]);
        for (n, log) in [(1, "/logs/shared"), (2, "/logs/old-only")] {
            db.upsert_build(&drv(n), None, BuildState::Running, at(1))
                .unwrap();
            db.finish_build(
                &drv(n),
                BuildState::Succeeded,
                Some(0),
                None,
                Some(Path::new(log)),
                at(2),
            )
            .unwrap();
        }
        let logs = db.purge_evaluation(old).unwrap();
        assert_eq!(logs, [PathBuf::from("/logs/old-only")]);
        assert!(db.build_by_drv(&drv(1)).unwrap().is_some());
        assert!(db.build_by_drv(&drv(2)).unwrap().is_none());
        let left: Vec<EvaluationId> = db
            .retention_evaluations()
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(left, [new]);
        // Purging again changes nothing.
        assert!(db.purge_evaluation(old).unwrap().is_empty());
    }

    #[test]
    fn expired_logs_should_list_finished_builds_until_their_log_is_forgotten() {
        let mut db = StatusDb::open_memory().unwrap();
        building_eval(&mut db, "r1", &[job(1, "a"), job(2, "b")]);
        db.upsert_build(&drv(1), None, BuildState::Running, at(1))
            .unwrap();
        db.finish_build(
            &drv(1),
            BuildState::Failed,
            Some(1),
            None,
            Some(Path::new("/logs/a")),
            at(10),
        )
        .unwrap();
        db.upsert_build(&drv(2), None, BuildState::Running, at(1))
            .unwrap();
        db.record_build_log(&drv(2), Path::new("/logs/b"), 5, at(2))
            .unwrap();
        assert!(db.expired_logs(at(10)).unwrap().is_empty());
        assert_eq!(db.oldest_log_since(at(10)).unwrap(), Some(at(10)));
        assert_eq!(db.oldest_log_since(at(11)).unwrap(), None);
        // The running build's log is never expired.
        assert_eq!(
            db.expired_logs(at(11)).unwrap(),
            [(drv(1), PathBuf::from("/logs/a"))]
        );
        db.forget_build_log(&drv(1)).unwrap();
        assert!(db.expired_logs(at(11)).unwrap().is_empty());
        assert_eq!(db.build_by_drv(&drv(1)).unwrap().unwrap().log_path, None);
    }
}
