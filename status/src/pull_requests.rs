//! Pull requests (`pull_requests`) as the forge reported them, with their authors' trust.

use reconix_spec::names::Timestamp;
use rusqlite::{Connection, params};
use serde::Serialize;

use crate::StatusDb;
use crate::error::{QueryExt, Result};
use crate::row::{get, non_negative, to_i64};
use crate::types::RepoId;

/// A pull request as a delivery or the API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequestUpdate {
    /// Its number (GitLab: `iid`).
    pub number: u64,
    /// The head commit.
    pub head_sha: String,
    /// The source branch.
    pub head_ref: String,
    /// The target branch.
    pub base_ref: String,
    /// The author's login, when known.
    pub author: Option<String>,
    /// Whether the head lives in another repository.
    pub from_fork: bool,
    /// Whether it is open.
    pub open: bool,
}

/// A pull request row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PullRequestRow {
    /// Its number.
    pub number: u64,
    /// The head commit.
    pub head_sha: String,
    /// The source branch.
    pub head_ref: String,
    /// The target branch.
    pub base_ref: String,
    /// The author's login, when known.
    pub author: Option<String>,
    /// Whether the head lives in another repository.
    pub from_fork: bool,
    /// Whether it is open.
    pub open: bool,
    /// Whether the author may write to the repository, looked up for the current head; `None`
    /// until looked up.
    pub author_can_write: Option<bool>,
    /// When it was last seen changed.
    pub observed_at: Timestamp,
}

pub(crate) fn upsert_pr(
    tx: &Connection,
    repo: RepoId,
    pr: &PullRequestUpdate,
    now: Timestamp,
) -> Result<bool> {
    let n = to_i64(pr.number, "pull request number")?;
    let changed = tx
        .prepare_cached(
            "INSERT INTO pull_requests (repo_id, number, head_sha, head_ref, base_ref, author, \
             from_fork, open, observed_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
             ON CONFLICT (repo_id, number) DO UPDATE SET \
             author_can_write = CASE WHEN head_sha = excluded.head_sha \
                 AND author IS excluded.author THEN author_can_write ELSE NULL END, \
             permission_checked_at = CASE WHEN head_sha = excluded.head_sha \
                 AND author IS excluded.author THEN permission_checked_at ELSE NULL END, \
             head_sha = excluded.head_sha, head_ref = excluded.head_ref, \
             base_ref = excluded.base_ref, author = coalesce(excluded.author, author), \
             from_fork = excluded.from_fork, open = excluded.open, \
             observed_at = excluded.observed_at \
             WHERE head_sha <> excluded.head_sha OR open <> excluded.open \
                OR base_ref <> excluded.base_ref OR head_ref <> excluded.head_ref \
                OR from_fork <> excluded.from_fork \
                OR (excluded.author IS NOT NULL AND author IS NOT excluded.author)",
        )
        .and_then(|mut s| {
            s.execute(params![
                repo.0,
                n,
                pr.head_sha,
                pr.head_ref,
                pr.base_ref,
                pr.author,
                i64::from(pr.from_fork),
                i64::from(pr.open),
                now.0
            ])
        })
        .op("upsert_pull_request")?;
    Ok(changed > 0)
}

impl StatusDb {
    /// Records a pull request as the API or a delivery reports it; returns true when something
    /// changed. A new head clears the author's permission, so trust is looked up again.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn upsert_pull_request(
        &mut self,
        repo: RepoId,
        pr: &PullRequestUpdate,
        now: Timestamp,
    ) -> Result<bool> {
        let tx = self.write("upsert_pull_request")?;
        let changed = upsert_pr(&tx, repo, pr, now)?;
        tx.commit().op("upsert_pull_request")?;
        Ok(changed)
    }

    /// Marks open pull requests of `repo` that are not in `open` as closed (a resync found them
    /// gone); returns how many.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn close_pull_requests_except(&mut self, repo: RepoId, open: &[u64]) -> Result<usize> {
        const OP: &str = "close_pull_requests_except";
        let tx = self.write(OP)?;
        let numbers: Vec<i64> = {
            let mut stmt = tx
                .prepare_cached("SELECT number FROM pull_requests WHERE repo_id = ?1 AND open = 1")
                .op(OP)?;
            let rows = stmt.query_map([repo.0], |r| r.get(0)).op(OP)?;
            rows.collect::<rusqlite::Result<_>>().op(OP)?
        };
        let mut closed = 0;
        for n in numbers {
            if open.iter().any(|o| i64::try_from(*o).is_ok_and(|o| o == n)) {
                continue;
            }
            tx.prepare_cached(
                "UPDATE pull_requests SET open = 0 WHERE repo_id = ?1 AND number = ?2",
            )
            .and_then(|mut s| s.execute(params![repo.0, n]))
            .op(OP)?;
            closed += 1;
        }
        tx.commit().op(OP)?;
        Ok(closed)
    }

    /// Returns the open pull requests of `repo`, by number.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn open_pull_requests(&self, repo: RepoId) -> Result<Vec<PullRequestRow>> {
        self.query_pull_requests(
            "open_pull_requests",
            "WHERE repo_id = ?1 AND open = 1 ORDER BY number",
            [repo.0],
        )
    }

    /// Selects the pull requests that `selection` (the `WHERE`/`ORDER BY` of a `SELECT … FROM
    /// pull_requests`, with `params` bound to it) picks.
    pub(crate) fn query_pull_requests<P: rusqlite::Params>(
        &self,
        op: &'static str,
        selection: &str,
        params: P,
    ) -> Result<Vec<PullRequestRow>> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT number, head_sha, head_ref, base_ref, author, from_fork, open, \
                 author_can_write, observed_at FROM pull_requests {selection}"
            ))
            .op(op)?;
        let mut rows = stmt.query(params).op(op)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().op(op)? {
            out.push(PullRequestRow {
                number: non_negative("pull_requests", "number", get(row, 0, op)?)?,
                head_sha: get(row, 1, op)?,
                head_ref: get(row, 2, op)?,
                base_ref: get(row, 3, op)?,
                author: get(row, 4, op)?,
                from_fork: get::<i64>(row, 5, op)? != 0,
                open: get::<i64>(row, 6, op)? != 0,
                author_can_write: get::<Option<i64>>(row, 7, op)?.map(|v| v != 0),
                observed_at: Timestamp(get(row, 8, op)?),
            });
        }
        Ok(out)
    }

    /// Records whether the author of pull request `number` may write, as looked up for
    /// `head_sha`; ignored when the head moved meanwhile. Returns true when recorded.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn set_pull_request_trust(
        &mut self,
        repo: RepoId,
        number: u64,
        head_sha: &str,
        can_write: bool,
        now: Timestamp,
    ) -> Result<bool> {
        let n = to_i64(number, "pull request number")?;
        let changed = self
            .conn
            .prepare_cached(
                "UPDATE pull_requests SET author_can_write = ?4, permission_checked_at = ?5 \
                 WHERE repo_id = ?1 AND number = ?2 AND head_sha = ?3",
            )
            .and_then(|mut s| s.execute(params![repo.0, n, head_sha, i64::from(can_write), now.0]))
            .op("set_pull_request_trust")?;
        Ok(changed > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{T0, pull_request, repo_key};

    #[test]
    fn a_new_pull_request_head_should_clear_the_author_trust() {
        let mut db = StatusDb::open_memory().unwrap();
        let repo = db.upsert_repo(&repo_key("gh/a/b")).unwrap();
        assert!(
            db.upsert_pull_request(repo, &pull_request("aaa", true), T0)
                .unwrap()
        );
        assert!(
            !db.upsert_pull_request(repo, &pull_request("aaa", true), T0)
                .unwrap()
        );
        assert!(db.set_pull_request_trust(repo, 3, "aaa", true, T0).unwrap());
        assert!(
            !db.set_pull_request_trust(repo, 3, "stale", false, T0)
                .unwrap()
        );
        assert_eq!(
            db.open_pull_requests(repo).unwrap()[0].author_can_write,
            Some(true)
        );
        assert!(
            db.upsert_pull_request(repo, &pull_request("bbb", true), T0)
                .unwrap()
        );
        let row = &db.open_pull_requests(repo).unwrap()[0];
        assert_eq!((row.head_sha.as_str(), row.author_can_write), ("bbb", None));
        assert_eq!(db.close_pull_requests_except(repo, &[]).unwrap(), 1);
        assert!(db.open_pull_requests(repo).unwrap().is_empty());
    }
}
