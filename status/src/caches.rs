//! Binary-cache pushes: which outputs of succeeded jobs each cache still lacks, and what the
//! `caches` loop did with them.

use std::collections::BTreeSet;

use reconix_spec::names::{ForgeName, RepoKey, RepoName, StorePath, Timestamp};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::StatusDb;
use crate::error::{QueryExt, Result};
use crate::row::{get, non_negative, parse};

/// What one cache still needs, as [`StatusDb::cache_backlog`] reads it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CacheBacklog {
    /// Output paths of succeeded jobs (of the repos the cache takes) that were never pushed
    /// and are due: never tried, or failed with a retry time that has come. Sorted.
    pub due: Vec<StorePath>,
    /// The earliest retry time of a failed push that is not due yet.
    pub next_retry: Option<Timestamp>,
}

/// The pushes to one cache, for the API and the status pages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachePushSummary {
    /// The cache's push-url.
    pub cache: String,
    /// How many paths were pushed.
    pub pushed: u64,
    /// How many paths failed their last push (they are retried with backoff).
    pub failed: u64,
    /// When the last successful push was recorded.
    pub last_pushed_at: Option<Timestamp>,
    /// The most recent failure, when any path is failing.
    pub last_error: Option<String>,
}

impl StatusDb {
    /// Returns what `cache` still needs: the output paths of every succeeded job of a repo
    /// `applies` accepts that have no `pushed` record for it, keeping back those whose last
    /// push failed and whose retry time is after `now`.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails and [`crate::Error::Corrupt`] for a
    /// malformed row.
    pub fn cache_backlog(
        &self,
        cache: &str,
        applies: impl Fn(&RepoKey) -> bool,
        now: Timestamp,
    ) -> Result<CacheBacklog> {
        const OP: &str = "cache_backlog";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT DISTINCT r.forge, r.name, o.value, p.retry_at \
                 FROM jobs j JOIN evaluations e ON e.id = j.evaluation_id \
                 JOIN repos r ON r.id = e.repo_id, json_each(j.outputs) o \
                 LEFT JOIN cache_pushes p ON p.cache = ?1 AND p.store_path = o.value \
                 WHERE j.state = 'succeeded' AND (p.state IS NULL OR p.state = 'failed')",
            )
            .op(OP)?;
        let mut rows = stmt.query([cache]).op(OP)?;
        let mut due = BTreeSet::new();
        let mut next_retry: Option<Timestamp> = None;
        while let Some(row) = rows.next().op(OP)? {
            let repo = RepoKey::new(
                parse::<ForgeName>("repos", "forge", get(row, 0, OP)?)?,
                parse::<RepoName>("repos", "name", get(row, 1, OP)?)?,
            );
            if !applies(&repo) {
                continue;
            }
            let path: StorePath = parse("jobs", "outputs", get(row, 2, OP)?)?;
            match get::<Option<i64>>(row, 3, OP)?.map(Timestamp) {
                Some(retry) if retry > now => {
                    next_retry = Some(next_retry.map_or(retry, |n| n.min(retry)));
                }
                _ => {
                    due.insert(path);
                }
            }
        }
        Ok(CacheBacklog {
            due: due.into_iter().collect(),
            next_retry,
        })
    }

    /// Records that `paths` are now in `cache`.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn record_cache_pushed(
        &mut self,
        cache: &str,
        paths: &[StorePath],
        now: Timestamp,
    ) -> Result<()> {
        const OP: &str = "record_cache_pushed";
        let tx = self.write(OP)?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO cache_pushes (cache, store_path, state, attempts, updated_at) \
                     VALUES (?1, ?2, 'pushed', 1, ?3) \
                     ON CONFLICT (cache, store_path) DO UPDATE SET state = 'pushed', \
                     attempts = attempts + 1, error = NULL, retry_at = NULL, \
                     updated_at = excluded.updated_at",
                )
                .op(OP)?;
            for path in paths {
                stmt.execute(params![cache, path.as_str(), now.0]).op(OP)?;
            }
        }
        tx.commit().op(OP)
    }

    /// Records that pushing `paths` to `cache` failed with `error`; each path may be tried
    /// again once `retry(attempts)` has passed, where `attempts` counts this failure too.
    /// Returns the largest attempt count among `paths`.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn record_cache_failure(
        &mut self,
        cache: &str,
        paths: &[StorePath],
        error: &str,
        now: Timestamp,
        retry: impl Fn(u32) -> std::time::Duration,
    ) -> Result<u32> {
        const OP: &str = "record_cache_failure";
        let tx = self.write(OP)?;
        let mut most = 0;
        {
            let mut read = tx
                .prepare_cached(
                    "SELECT attempts FROM cache_pushes WHERE cache = ?1 AND store_path = ?2",
                )
                .op(OP)?;
            let mut write = tx
                .prepare_cached(
                    "INSERT INTO cache_pushes \
                     (cache, store_path, state, attempts, error, updated_at, retry_at) \
                     VALUES (?1, ?2, 'failed', ?3, ?4, ?5, ?6) \
                     ON CONFLICT (cache, store_path) DO UPDATE SET state = 'failed', \
                     attempts = excluded.attempts, error = excluded.error, \
                     updated_at = excluded.updated_at, retry_at = excluded.retry_at",
                )
                .op(OP)?;
            for path in paths {
                let before: i64 = read
                    .query_row(params![cache, path.as_str()], |r| r.get(0))
                    .optional()
                    .op(OP)?
                    .unwrap_or(0);
                let attempts = u32::try_from(before).unwrap_or(u32::MAX).saturating_add(1);
                most = most.max(attempts);
                let delay = i64::try_from(retry(attempts).as_millis()).unwrap_or(i64::MAX);
                write
                    .execute(params![
                        cache,
                        path.as_str(),
                        attempts,
                        error,
                        now.0,
                        now.0.saturating_add(delay)
                    ])
                    .op(OP)?;
            }
        }
        tx.commit().op(OP)?;
        Ok(most)
    }

    /// Returns a summary of the pushes to each cache in `caches`, in that order (caches with
    /// no record yet count zero).
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn cache_push_summaries(&self, caches: &[String]) -> Result<Vec<CachePushSummary>> {
        const OP: &str = "cache_push_summaries";
        let mut counts = self
            .conn
            .prepare_cached(
                "SELECT count(*) FILTER (WHERE state = 'pushed'), \
                 count(*) FILTER (WHERE state = 'failed'), \
                 max(updated_at) FILTER (WHERE state = 'pushed') \
                 FROM cache_pushes WHERE cache = ?1",
            )
            .op(OP)?;
        let mut last_error = self
            .conn
            .prepare_cached(
                "SELECT error FROM cache_pushes WHERE cache = ?1 AND state = 'failed' \
                 ORDER BY updated_at DESC LIMIT 1",
            )
            .op(OP)?;
        let mut out = Vec::with_capacity(caches.len());
        for cache in caches {
            let (pushed, failed, last): (i64, i64, Option<i64>) = counts
                .query_row([cache], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .op(OP)?;
            let error: Option<Option<String>> = last_error
                .query_row([cache], |r| r.get(0))
                .optional()
                .op(OP)?;
            out.push(CachePushSummary {
                cache: cache.clone(),
                pushed: non_negative("cache_pushes", "state", pushed)?,
                failed: non_negative("cache_pushes", "state", failed)?,
                last_pushed_at: last.map(Timestamp),
                last_error: error.flatten(),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::JobState;
    use crate::testing::{at, building_eval, drv, job, repo_key};

    const CACHE: &str = "file:///srv/cache";

    fn db() -> StatusDb {
        StatusDb::open_memory().unwrap()
    }

    /// Two jobs, `a` succeeded and `b` still queued; returns a's output.
    fn one_success(db: &mut StatusDb) -> StorePath {
        let eval = building_eval(db, "r1", &[job(1, "a"), job(2, "b")]);
        let jobs = db.jobs_of_evaluation(eval).unwrap();
        db.set_job_state(jobs[0].id, JobState::Succeeded, None, at(2))
            .unwrap();
        jobs[0].outputs.get("out").unwrap().clone()
    }

    #[test]
    fn cache_backlog_should_list_unpushed_outputs_of_succeeded_jobs_of_applicable_repos() {
        let mut db = db();
        let out = one_success(&mut db);
        let all = |_: &RepoKey| true;
        let backlog = db.cache_backlog(CACHE, all, at(3)).unwrap();
        assert_eq!(backlog.due, std::slice::from_ref(&out));
        assert_eq!(backlog.next_retry, None);
        // Another repo's cache does not want it.
        let other = |r: &RepoKey| *r == repo_key("gh/other/repo");
        assert!(
            db.cache_backlog(CACHE, other, at(3))
                .unwrap()
                .due
                .is_empty()
        );

        db.record_cache_pushed(CACHE, std::slice::from_ref(&out), at(4))
            .unwrap();
        assert!(db.cache_backlog(CACHE, all, at(5)).unwrap().due.is_empty());
        // Another cache still needs it.
        assert_eq!(
            db.cache_backlog("http://other", all, at(5)).unwrap().due,
            [out]
        );
    }

    #[test]
    fn outputs_of_a_build_that_failed_with_output_should_not_be_pushed() {
        let mut db = db();
        let eval = building_eval(&mut db, "r1", &[job(1, "a")]);
        let jobs = db.jobs_of_evaluation(eval).unwrap();
        let outputs = crate::BuiltOutputs {
            failed: true,
            ..crate::BuiltOutputs::default()
        };
        db.finish_built(&drv(1), Some(0), &outputs, at(2)).unwrap();
        db.set_job_state(
            jobs[0].id,
            JobState::Failed,
            Some("failed with output"),
            at(2),
        )
        .unwrap();
        let backlog = db.cache_backlog(CACHE, |_: &RepoKey| true, at(3)).unwrap();
        assert!(backlog.due.is_empty(), "{:?}", backlog.due);
        // Its outputs are kept and rooted all the same.
        let repo = db.repos().unwrap()[0].id;
        assert_eq!(db.succeeded_jobs_for_rooting(repo).unwrap().len(), 1);
    }

    #[test]
    fn failed_pushes_should_wait_for_their_retry_time_with_growing_backoff() {
        let mut db = db();
        let out = one_success(&mut db);
        let all = |_: &RepoKey| true;
        let backoff = |n: u32| Duration::from_secs(10 * u64::from(n));
        let paths = std::slice::from_ref(&out);
        assert_eq!(
            db.record_cache_failure(CACHE, paths, "connection refused", at(0), backoff)
                .unwrap(),
            1
        );
        let backlog = db.cache_backlog(CACHE, all, at(9_999)).unwrap();
        assert!(backlog.due.is_empty());
        assert_eq!(backlog.next_retry, Some(at(10_000)));
        assert_eq!(db.cache_backlog(CACHE, all, at(10_000)).unwrap().due, paths);
        assert_eq!(
            db.record_cache_failure(CACHE, paths, "still down", at(10_000), backoff)
                .unwrap(),
            2
        );
        assert_eq!(
            db.cache_backlog(CACHE, all, at(10_000)).unwrap().next_retry,
            Some(at(30_000))
        );
        let summary = &db.cache_push_summaries(&[CACHE.to_owned()]).unwrap()[0];
        assert_eq!((summary.pushed, summary.failed), (0, 1));
        assert_eq!(summary.last_error.as_deref(), Some("still down"));

        db.record_cache_pushed(CACHE, paths, at(40_000)).unwrap();
        let summary = &db.cache_push_summaries(&[CACHE.to_owned()]).unwrap()[0];
        assert_eq!((summary.pushed, summary.failed), (1, 0));
        assert_eq!(summary.last_error, None);
        assert_eq!(summary.last_pushed_at, Some(at(40_000)));
        let backlog = db.cache_backlog(CACHE, all, at(50_000)).unwrap();
        assert_eq!(backlog, CacheBacklog::default());
    }

    #[test]
    fn cache_push_summaries_should_count_zero_for_an_unknown_cache() {
        let db = db();
        let summary = db.cache_push_summaries(&["s3://b".to_owned()]).unwrap();
        assert_eq!(
            summary,
            [CachePushSummary {
                cache: "s3://b".to_owned(),
                pushed: 0,
                failed: 0,
                last_pushed_at: None,
                last_error: None,
            }]
        );
    }
}
