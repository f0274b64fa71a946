//! Commit statuses the daemon posted (`posted_statuses`), and the evaluations whose statuses are
//! settled.

use std::fmt;
use std::str::FromStr;

use reconix_spec::names::Timestamp;
use rusqlite::params;
use serde::{Deserialize, Serialize};

use crate::StatusDb;
use crate::error::{QueryExt, Result};
use crate::row::{get, non_negative, parse, to_i64};
use crate::types::{EvaluationId, ParseStateError, RepoId, state_enum};

state_enum!(
    /// Says what a posted status (or check run) showed, in reconix's vocabulary; the forge
    /// client maps it to each forge's own.
    PostedState, "posted status state",
    terminal: [Success, Failure, Error, Cancelled],
    {
        /// Waiting to start.
        Pending => "pending",
        /// Running.
        Running => "running",
        /// Finished successfully.
        Success => "success",
        /// Finished, and the code is at fault.
        Failure => "failure",
        /// Could not finish for reasons outside the code.
        Error => "error",
        /// Stopped before finishing, e.g. superseded.
        Cancelled => "cancelled",
    }
);

/// A status the `statuses` loop posted (or a check run it created or updated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostedStatus {
    /// The commit.
    pub sha: String,
    /// The context (check run: its name).
    pub context: String,
    /// The state posted.
    pub state: PostedState,
    /// The description.
    pub description: Option<String>,
    /// The link.
    pub target_url: Option<String>,
    /// The check run's id, for check runs.
    pub check_run_id: Option<u64>,
    /// When it was posted.
    pub posted_at: Timestamp,
}

impl StatusDb {
    /// Records a posted status (or check run), replacing the previous one for its context.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn record_posted_status(&mut self, repo: RepoId, status: &PostedStatus) -> Result<()> {
        let check_run = status
            .check_run_id
            .map(|id| to_i64(id, "check run id"))
            .transpose()?;
        self.conn
            .prepare_cached(
                "INSERT INTO posted_statuses (repo_id, sha, context, state, description, \
                 target_url, check_run_id, posted_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                 ON CONFLICT (repo_id, sha, context) DO UPDATE SET state = excluded.state, \
                 description = excluded.description, target_url = excluded.target_url, \
                 check_run_id = coalesce(excluded.check_run_id, check_run_id), \
                 posted_at = excluded.posted_at",
            )
            .and_then(|mut s| {
                s.execute(params![
                    repo.0,
                    status.sha,
                    status.context,
                    status.state.as_str(),
                    status.description,
                    status.target_url,
                    check_run,
                    status.posted_at.0
                ])
            })
            .op("record_posted_status")?;
        Ok(())
    }

    /// Returns what was posted on the given commits of `repo`.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails and [`crate::Error::Corrupt`] for a
    /// row whose state is not a [`PostedState`].
    pub fn posted_statuses(&self, repo: RepoId, shas: &[String]) -> Result<Vec<PostedStatus>> {
        const OP: &str = "posted_statuses";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT sha, context, state, description, target_url, check_run_id, posted_at \
                 FROM posted_statuses WHERE repo_id = ?1 AND sha = ?2 ORDER BY context",
            )
            .op(OP)?;
        let mut out = Vec::new();
        for sha in shas {
            let mut rows = stmt.query(params![repo.0, sha]).op(OP)?;
            while let Some(row) = rows.next().op(OP)? {
                out.push(PostedStatus {
                    sha: get(row, 0, OP)?,
                    context: get(row, 1, OP)?,
                    state: parse("posted_statuses", "state", get(row, 2, OP)?)?,
                    description: get(row, 3, OP)?,
                    target_url: get(row, 4, OP)?,
                    check_run_id: get::<Option<i64>>(row, 5, OP)?
                        .map(|v| non_negative("posted_statuses", "check_run_id", v))
                        .transpose()?,
                    posted_at: Timestamp(get(row, 6, OP)?),
                });
            }
        }
        Ok(out)
    }

    /// Returns the evaluations of `repo` whose statuses are not settled yet, oldest first.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn unsettled_evaluations(&self, repo: RepoId) -> Result<Vec<EvaluationId>> {
        const OP: &str = "unsettled_evaluations";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT e.id FROM evaluations e LEFT JOIN settled_statuses s \
                 ON s.evaluation_id = e.id WHERE e.repo_id = ?1 AND s.evaluation_id IS NULL \
                 ORDER BY e.id",
            )
            .op(OP)?;
        let rows = stmt.query_map([repo.0], |r| r.get(0)).op(OP)?;
        let ids: Vec<i64> = rows.collect::<rusqlite::Result<_>>().op(OP)?;
        Ok(ids.into_iter().map(EvaluationId).collect())
    }

    /// Marks the statuses of an evaluation final on the forge.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn settle_statuses(&mut self, evaluation: EvaluationId, now: Timestamp) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO settled_statuses (evaluation_id, settled_at) VALUES (?1, ?2) \
                 ON CONFLICT DO NOTHING",
            )
            .and_then(|mut s| s.execute(params![evaluation.0, now.0]))
            .op("settle_statuses")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{T0, at, repo_key};

    #[test]
    fn posted_statuses_should_keep_the_check_run_id_and_the_last_state() {
        let mut db = StatusDb::open_memory().unwrap();
        let repo = db.upsert_repo(&repo_key("gh/a/b")).unwrap();
        let mut s = PostedStatus {
            sha: "aaa".to_owned(),
            context: "ci/summary".to_owned(),
            state: PostedState::Running,
            description: Some("1/2".to_owned()),
            target_url: None,
            check_run_id: Some(42),
            posted_at: T0,
        };
        db.record_posted_status(repo, &s).unwrap();
        s.state = PostedState::Success;
        s.check_run_id = None;
        s.posted_at = at(5);
        db.record_posted_status(repo, &s).unwrap();
        let rows = db.posted_statuses(repo, &["aaa".to_owned()]).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].state, rows[0].check_run_id, rows[0].posted_at),
            (PostedState::Success, Some(42), at(5))
        );
        // The table's CHECK still refuses states outside the enum.
        let bogus = db.conn.execute(
            "INSERT INTO posted_statuses (repo_id, sha, context, state, posted_at) \
             VALUES (?1, 'aaa', 'ci/x', 'bogus', 0)",
            [repo.0],
        );
        assert!(bogus.is_err());
    }

    #[test]
    fn every_posted_state_should_be_stored_and_read_back() {
        let mut db = StatusDb::open_memory().unwrap();
        let repo = db.upsert_repo(&repo_key("gh/a/b")).unwrap();
        for (i, state) in PostedState::ALL.iter().enumerate() {
            let s = PostedStatus {
                sha: "aaa".to_owned(),
                context: format!("ci/{i}"),
                state: *state,
                description: None,
                target_url: None,
                check_run_id: None,
                posted_at: T0,
            };
            db.record_posted_status(repo, &s).unwrap();
        }
        let states: Vec<PostedState> = db
            .posted_statuses(repo, &["aaa".to_owned()])
            .unwrap()
            .into_iter()
            .map(|p| p.state)
            .collect();
        assert_eq!(states, PostedState::ALL);
    }

    #[test]
    fn posted_status_with_an_unknown_state_should_be_reported_corrupt() {
        let db = StatusDb::open_memory().unwrap();
        // The CHECK constraint keeps such rows out; an older or hand-edited database could
        // still hold one, and it must surface instead of being dropped.
        db.conn
            .execute_batch(
                "PRAGMA ignore_check_constraints = ON; \
                 INSERT INTO repos (id, forge, name) VALUES (1, 'gh', 'a/b'); \
                 INSERT INTO posted_statuses (repo_id, sha, context, state, posted_at) \
                 VALUES (1, 'aaa', 'ci/x', 'done', 0);",
            )
            .unwrap();
        let err = db
            .posted_statuses(RepoId(1), &["aaa".to_owned()])
            .unwrap_err();
        assert!(
            matches!(
                &err,
                crate::Error::Corrupt { table: "posted_statuses", column: "state", value, .. }
                    if value == "done"
            ),
            "{err:?}"
        );
    }

    #[test]
    fn settled_evaluations_should_drop_out_of_the_unsettled_list() {
        let mut db = StatusDb::open_memory().unwrap();
        let repo = db.upsert_repo(&repo_key("gh/a/b")).unwrap();
        let (a, _) = db
            .insert_evaluation(repo, "refs/heads/main", "aaa", "f", T0)
            .unwrap();
        let (b, _) = db
            .insert_evaluation(repo, "refs/heads/main", "bbb", "f", T0)
            .unwrap();
        assert_eq!(db.unsettled_evaluations(repo).unwrap(), [a, b]);
        db.settle_statuses(a, T0).unwrap();
        db.settle_statuses(a, T0).unwrap();
        assert_eq!(db.unsettled_evaluations(repo).unwrap(), [b]);
    }
}
