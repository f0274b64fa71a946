//! Observed state of hosted forges: webhook deliveries, pull requests, the hooks the daemon set,
//! drift, the statuses it posted and whether a forge may be called.

use reconix_spec::names::{ForgeName, RepoKey, Timestamp};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::error::{QueryExt, Result};
use crate::row::{get, non_negative, parse};
use crate::types::{EvaluationId, RepoId};
use crate::{Error, StatusDb};

/// A verified, parsed delivery to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    /// The forge it came to (its name in the spec).
    pub forge: ForgeName,
    /// The forge's delivery id (`X-GitHub-Delivery`, `X-Gitlab-Event-UUID`, `X-Gitea-Delivery`).
    pub delivery_id: Option<String>,
    /// The normalised event kind: `push`, `pull_request`, `ping` or `ignored`.
    pub event: &'static str,
    /// The repository the payload names, if any.
    pub repo: Option<String>,
    /// The ref it is about (`refs/heads/main`, `refs/pull/3/head`).
    pub git_ref: Option<String>,
    /// The commit it is about.
    pub sha: Option<String>,
}

/// What a delivery changes in the observed state, decided by the caller from the event and the
/// spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryEffect {
    /// Nothing (a ping, an ignored event, a repository or branch that is not built).
    Nothing,
    /// A branch moved to `sha`, or was deleted.
    Head {
        /// The repository.
        repo: RepoKey,
        /// The full ref name.
        git_ref: String,
        /// The new head; `None` when the branch was deleted.
        sha: Option<String>,
    },
    /// A pull request was opened, updated, closed or reopened.
    PullRequest {
        /// The repository.
        repo: RepoKey,
        /// Its state as the delivery describes it.
        pr: PullRequestUpdate,
    },
}

/// What recording a delivery did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryOutcome {
    /// The same delivery id was recorded before: nothing changed.
    Duplicate,
    /// A push of a commit already evaluated for that ref: recorded, nothing to do.
    Coalesced,
    /// The head (or pull request) was already known as the delivery says.
    Unchanged,
    /// A new head or pull request state: the loops have work.
    NewHead,
    /// An event with nothing to do.
    Ignored,
}

impl DeliveryOutcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Duplicate => "duplicate",
            Self::Coalesced => "coalesced",
            Self::Unchanged => "unchanged",
            Self::NewHead => "new-head",
            Self::Ignored => "ignored",
        }
    }
}

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

/// The hook the `webhooks` loop set on a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookRow {
    /// The forge's id of the hook.
    pub hook_id: u64,
    /// The URL it was set to deliver to.
    pub url: String,
    /// A fingerprint of the secret it was given (never the secret).
    pub secret_fingerprint: String,
    /// When it was created or last patched.
    pub set_at: Timestamp,
    /// Deliveries naming this repository that failed signature verification since `set_at`.
    pub signature_failures: u64,
}

/// A drift to record: what a loop found different from the desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDrift<'a> {
    /// The loop that found it (`webhooks`, …).
    pub loop_name: &'a str,
    /// What drifted, e.g. `github/acme/widgets hook 7`.
    pub subject: &'a str,
    /// Which field: `url`, `events`, `secret`, `active`, `content-type`, `missing`, `duplicate`,
    /// `stale`.
    pub field: &'a str,
    /// The desired value, when it may be shown.
    pub desired: Option<&'a str>,
    /// The observed value, when it may be shown.
    pub observed: Option<&'a str>,
}

/// Identifies a row of `drift`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct DriftId(pub i64);

/// A drift row, as the API serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DriftRow {
    /// Its id.
    pub id: DriftId,
    /// The loop that found it.
    #[serde(rename = "loop")]
    pub loop_name: String,
    /// What drifted.
    pub subject: String,
    /// Which field.
    pub field: String,
    /// The desired value, when it may be shown.
    pub desired: Option<String>,
    /// The observed value, when it may be shown.
    pub observed: Option<String>,
    /// When it was found.
    pub found_at: Timestamp,
    /// When it was repaired; `None` while open.
    pub repaired_at: Option<Timestamp>,
    /// Why the last repair failed, if it did.
    pub error: Option<String>,
}

/// A status the `statuses` loop posted (or a check run it created or updated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostedStatus {
    /// The commit.
    pub sha: String,
    /// The context (check run: its name).
    pub context: String,
    /// The state in reconix's vocabulary: `pending`, `running`, `success`, `failure`, `error`,
    /// `cancelled`.
    pub state: String,
    /// The description.
    pub description: Option<String>,
    /// The link.
    pub target_url: Option<String>,
    /// The check run's id, for check runs.
    pub check_run_id: Option<u64>,
    /// When it was posted.
    pub posted_at: Timestamp,
}

/// Whether a forge may be called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForgeHealthState {
    /// Calls go through.
    Ok,
    /// The forge rejected the token (401): no calls but the permission probe until it works.
    Paused,
    /// Rate limited until `until`.
    RateLimited,
}

impl ForgeHealthState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Paused => "paused",
            Self::RateLimited => "rate-limited",
        }
    }
}

impl std::str::FromStr for ForgeHealthState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ok" => Ok(Self::Ok),
            "paused" => Ok(Self::Paused),
            "rate-limited" => Ok(Self::RateLimited),
            other => Err(format!("unknown forge health `{other}`")),
        }
    }
}

/// A forge's health row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ForgeHealth {
    /// The forge's name in the spec.
    pub forge: String,
    /// Its state.
    pub state: ForgeHealthState,
    /// Why it is not ok.
    pub reason: Option<String>,
    /// Since when it is in this state.
    pub since: Timestamp,
    /// For `rate-limited`: when calls may resume.
    pub until: Option<Timestamp>,
}

impl ForgeHealth {
    /// Returns true when calls may be made at `now` (ok, or a rate limit that has passed).
    pub fn allows_calls(&self, now: Timestamp) -> bool {
        match self.state {
            ForgeHealthState::Ok => true,
            ForgeHealthState::Paused => false,
            ForgeHealthState::RateLimited => self.until.is_none_or(|until| now >= until),
        }
    }
}

fn to_i64(value: u64, what: &'static str) -> Result<i64> {
    i64::try_from(value).map_err(|_| Error::Invalid {
        op: "forges",
        reason: format!("{what} {value} is out of range"),
    })
}

impl StatusDb {
    /// Records a delivery and applies its effect in one transaction.
    ///
    /// A delivery id seen before is a [`DeliveryOutcome::Duplicate`] and changes nothing. A push
    /// whose sha was already evaluated for that ref is [`DeliveryOutcome::Coalesced`]. The
    /// repository row is created when it is new (the caller checked it is in the spec).
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn record_delivery(
        &mut self,
        delivery: &NewDelivery,
        effect: &DeliveryEffect,
        now: Timestamp,
    ) -> Result<DeliveryOutcome> {
        const OP: &str = "record_delivery";
        let tx = self.write(OP)?;
        let outcome = record_one(&tx, delivery, effect, now)?;
        tx.commit().op(OP)?;
        Ok(outcome)
    }

    /// Records several deliveries, in order, in one transaction (one commit for the batch: the
    /// intake's group commit). Each delivery is applied inside its own savepoint, so one that
    /// fails is rolled back alone and reported in its slot; the others are kept.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when the transaction itself cannot start or commit; then
    /// nothing of the batch is recorded.
    pub fn record_deliveries(
        &mut self,
        batch: &[(NewDelivery, DeliveryEffect)],
        now: Timestamp,
    ) -> Result<Vec<Result<DeliveryOutcome>>> {
        const OP: &str = "record_deliveries";
        let mut tx = self.write(OP)?;
        let mut outcomes = Vec::with_capacity(batch.len());
        for (delivery, effect) in batch {
            let sp = tx.savepoint().op(OP)?;
            match record_one(&sp, delivery, effect, now) {
                Ok(outcome) => {
                    sp.commit().op(OP)?;
                    outcomes.push(Ok(outcome));
                }
                // Dropping the savepoint rolls back this delivery only.
                Err(err) => outcomes.push(Err(err)),
            }
        }
        tx.commit().op(OP)?;
        Ok(outcomes)
    }

    /// Counts recorded deliveries by result (for the API and tests).
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn delivery_counts(&self) -> Result<Vec<(String, u64)>> {
        const OP: &str = "delivery_counts";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT result, count(*) FROM webhook_deliveries GROUP BY result ORDER BY result",
            )
            .op(OP)?;
        let mut rows = stmt.query([]).op(OP)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().op(OP)? {
            out.push((
                get(row, 0, OP)?,
                non_negative("webhook_deliveries", "count", get(row, 1, OP)?)?,
            ));
        }
        Ok(out)
    }

    /// Records the default branch a forge reports for `repo`.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn set_default_branch(&mut self, repo: RepoId, branch: Option<&str>) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE repos SET default_branch = ?2 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![repo.0, branch]))
            .op("set_default_branch")?;
        Ok(())
    }

    /// Returns the default branch recorded for `repo`.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn default_branch(&self, repo: RepoId) -> Result<Option<String>> {
        self.conn
            .prepare_cached("SELECT default_branch FROM repos WHERE id = ?1")
            .and_then(|mut s| s.query_row([repo.0], |r| r.get(0)).optional())
            .op("default_branch")
            .map(Option::flatten)
    }

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

    /// Records the hook the `webhooks` loop created or patched on `repo`; resets the count of
    /// signature failures.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn record_hook(
        &mut self,
        repo: RepoId,
        hook_id: u64,
        url: &str,
        secret_fingerprint: &str,
        now: Timestamp,
    ) -> Result<()> {
        let id = to_i64(hook_id, "hook id")?;
        self.conn
            .prepare_cached(
                "INSERT INTO hooks (repo_id, hook_id, url, secret_fingerprint, set_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (repo_id) DO UPDATE SET \
                 hook_id = excluded.hook_id, url = excluded.url, \
                 secret_fingerprint = excluded.secret_fingerprint, set_at = excluded.set_at, \
                 signature_failures = 0, last_signature_failure_at = NULL",
            )
            .and_then(|mut s| s.execute(params![repo.0, id, url, secret_fingerprint, now.0]))
            .op("record_hook")?;
        Ok(())
    }

    /// Returns the hook recorded for `repo`.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn hook(&self, repo: RepoId) -> Result<Option<HookRow>> {
        const OP: &str = "hook";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT hook_id, url, secret_fingerprint, set_at, signature_failures \
                 FROM hooks WHERE repo_id = ?1",
            )
            .op(OP)?;
        let mut rows = stmt.query([repo.0]).op(OP)?;
        let Some(row) = rows.next().op(OP)? else {
            return Ok(None);
        };
        Ok(Some(HookRow {
            hook_id: non_negative("hooks", "hook_id", get(row, 0, OP)?)?,
            url: get(row, 1, OP)?,
            secret_fingerprint: get(row, 2, OP)?,
            set_at: Timestamp(get(row, 3, OP)?),
            signature_failures: non_negative("hooks", "signature_failures", get(row, 4, OP)?)?,
        }))
    }

    /// Forgets the hook of `repo` (it was deleted).
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn forget_hook(&mut self, repo: RepoId) -> Result<()> {
        self.conn
            .prepare_cached("DELETE FROM hooks WHERE repo_id = ?1")
            .and_then(|mut s| s.execute([repo.0]))
            .op("forget_hook")?;
        Ok(())
    }

    /// Counts a delivery naming `repo` whose signature did not verify; returns true when the
    /// repository has a recorded hook (and so the count was kept).
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn record_signature_failure(&mut self, repo: &RepoKey, now: Timestamp) -> Result<bool> {
        let changed = self
            .conn
            .prepare_cached(
                "UPDATE hooks SET signature_failures = signature_failures + 1, \
                 last_signature_failure_at = ?3 WHERE repo_id = \
                 (SELECT id FROM repos WHERE forge = ?1 AND name = ?2)",
            )
            .and_then(|mut s| s.execute(params![repo.forge.as_str(), repo.repo.as_str(), now.0]))
            .op("record_signature_failure")?;
        Ok(changed > 0)
    }

    /// Records a drift, or returns the open one with the same loop, subject and field.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn record_drift(&mut self, drift: &NewDrift<'_>, now: Timestamp) -> Result<DriftId> {
        const OP: &str = "record_drift";
        let tx = self.write(OP)?;
        let open: Option<i64> = tx
            .prepare_cached(
                "SELECT id FROM drift WHERE loop = ?1 AND subject = ?2 AND field = ?3 \
                 AND repaired_at IS NULL",
            )
            .and_then(|mut s| {
                s.query_row(params![drift.loop_name, drift.subject, drift.field], |r| {
                    r.get(0)
                })
                .optional()
            })
            .op(OP)?;
        let id = match open {
            Some(id) => id,
            None => tx
                .prepare_cached(
                    "INSERT INTO drift (loop, subject, field, desired, observed, found_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id",
                )
                .and_then(|mut s| {
                    s.query_row(
                        params![
                            drift.loop_name,
                            drift.subject,
                            drift.field,
                            drift.desired,
                            drift.observed,
                            now.0
                        ],
                        |r| r.get(0),
                    )
                })
                .op(OP)?,
        };
        tx.commit().op(OP)?;
        Ok(DriftId(id))
    }

    /// Marks a drift repaired (`error` = `None`) or records why the repair failed.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn finish_drift(&mut self, id: DriftId, error: Option<&str>, now: Timestamp) -> Result<()> {
        let sql = if error.is_none() {
            "UPDATE drift SET repaired_at = ?2, error = NULL WHERE id = ?1"
        } else {
            "UPDATE drift SET error = ?3 WHERE id = ?1 AND ?2 IS NOT NULL"
        };
        self.conn
            .prepare_cached(sql)
            .and_then(|mut s| {
                if let Some(e) = error {
                    s.execute(params![id.0, now.0, e])
                } else {
                    s.execute(params![id.0, now.0])
                }
            })
            .op("finish_drift")?;
        Ok(())
    }

    /// Returns the newest drift rows, newest first.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn drifts(&self, limit: u32) -> Result<Vec<DriftRow>> {
        const OP: &str = "drifts";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, loop, subject, field, desired, observed, found_at, repaired_at, \
                 error FROM drift ORDER BY id DESC LIMIT ?1",
            )
            .op(OP)?;
        let mut rows = stmt.query([limit]).op(OP)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().op(OP)? {
            out.push(DriftRow {
                id: DriftId(get(row, 0, OP)?),
                loop_name: get(row, 1, OP)?,
                subject: get(row, 2, OP)?,
                field: get(row, 3, OP)?,
                desired: get(row, 4, OP)?,
                observed: get(row, 5, OP)?,
                found_at: Timestamp(get(row, 6, OP)?),
                repaired_at: get::<Option<i64>>(row, 7, OP)?.map(Timestamp),
                error: get(row, 8, OP)?,
            });
        }
        Ok(out)
    }

    /// Records a posted status (or check run), replacing the previous one for its context.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails (e.g. an unknown state).
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
                    status.state,
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
    /// Returns [`crate::Error::Query`] when SQLite fails.
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
                    state: get(row, 2, OP)?,
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

    /// Records a forge's health; moving to `ok` clears the reason and `until`.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn set_forge_health(
        &mut self,
        forge: &ForgeName,
        state: ForgeHealthState,
        reason: Option<&str>,
        until: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO forge_health (forge, state, reason, since, until) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (forge) DO UPDATE SET \
                 since = CASE WHEN state = excluded.state THEN since ELSE excluded.since END, \
                 state = excluded.state, reason = excluded.reason, until = excluded.until",
            )
            .and_then(|mut s| {
                s.execute(params![
                    forge.as_str(),
                    state.as_str(),
                    reason,
                    now.0,
                    until.map(|t| t.0)
                ])
            })
            .op("set_forge_health")?;
        Ok(())
    }

    /// Returns the health of every forge that has a row, by name.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails and [`crate::Error::Corrupt`] for an
    /// unknown state.
    pub fn forge_healths(&self) -> Result<Vec<ForgeHealth>> {
        const OP: &str = "forge_healths";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT forge, state, reason, since, until FROM forge_health ORDER BY forge",
            )
            .op(OP)?;
        let mut rows = stmt.query([]).op(OP)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().op(OP)? {
            out.push(ForgeHealth {
                forge: get(row, 0, OP)?,
                state: parse("forge_health", "state", get(row, 1, OP)?)?,
                reason: get(row, 2, OP)?,
                since: Timestamp(get(row, 3, OP)?),
                until: get::<Option<i64>>(row, 4, OP)?.map(Timestamp),
            });
        }
        Ok(out)
    }

    /// Returns one forge's health; a forge without a row is ok.
    ///
    /// # Errors
    /// As [`StatusDb::forge_healths`].
    pub fn forge_health(&self, forge: &ForgeName) -> Result<Option<ForgeHealth>> {
        Ok(self
            .forge_healths()?
            .into_iter()
            .find(|h| h.forge == forge.as_str()))
    }
}

/// Records one delivery and applies its effect on `tx` (a transaction or savepoint).
fn record_one(
    tx: &Connection,
    delivery: &NewDelivery,
    effect: &DeliveryEffect,
    now: Timestamp,
) -> Result<DeliveryOutcome> {
    const OP: &str = "record_delivery";
    if let Some(id) = &delivery.delivery_id {
        let seen: Option<i64> = tx
            .prepare_cached(
                "SELECT id FROM webhook_deliveries WHERE forge = ?1 AND delivery_id = ?2",
            )
            .and_then(|mut s| {
                s.query_row(params![delivery.forge.as_str(), id], |r| r.get(0))
                    .optional()
            })
            .op(OP)?;
        if seen.is_some() {
            return Ok(DeliveryOutcome::Duplicate);
        }
    }
    let outcome = apply_effect(tx, effect, now)?;
    tx.prepare_cached(
        "INSERT INTO webhook_deliveries \
         (forge, delivery_id, event, repo, ref, sha, result, received_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .and_then(|mut s| {
        s.execute(params![
            delivery.forge.as_str(),
            delivery.delivery_id,
            delivery.event,
            delivery.repo,
            delivery.git_ref,
            delivery.sha,
            outcome.as_str(),
            now.0
        ])
    })
    .op(OP)?;
    Ok(outcome)
}

fn repo_id_tx(tx: &Connection, key: &RepoKey) -> Result<RepoId> {
    const OP: &str = "record_delivery";
    tx.prepare_cached(
        "INSERT INTO repos (forge, name) VALUES (?1, ?2) ON CONFLICT (forge, name) \
         DO UPDATE SET forge = excluded.forge RETURNING id",
    )
    .and_then(|mut s| s.query_row(params![key.forge.as_str(), key.repo.as_str()], |r| r.get(0)))
    .op(OP)
    .map(RepoId)
}

fn apply_effect(
    tx: &Connection,
    effect: &DeliveryEffect,
    now: Timestamp,
) -> Result<DeliveryOutcome> {
    const OP: &str = "record_delivery";
    match effect {
        DeliveryEffect::Nothing => Ok(DeliveryOutcome::Ignored),
        DeliveryEffect::Head {
            repo,
            git_ref,
            sha: None,
        } => {
            let repo = repo_id_tx(tx, repo)?;
            let removed = tx
                .prepare_cached("DELETE FROM refs WHERE repo_id = ?1 AND name = ?2")
                .and_then(|mut s| s.execute(params![repo.0, git_ref]))
                .op(OP)?;
            Ok(if removed > 0 {
                DeliveryOutcome::NewHead
            } else {
                DeliveryOutcome::Unchanged
            })
        }
        DeliveryEffect::Head {
            repo,
            git_ref,
            sha: Some(sha),
        } => {
            let repo = repo_id_tx(tx, repo)?;
            let evaluated: Option<i64> = tx
                .prepare_cached(
                    "SELECT id FROM evaluations WHERE repo_id = ?1 AND ref = ?2 AND rev = ?3",
                )
                .and_then(|mut s| {
                    s.query_row(params![repo.0, git_ref, sha], |r| r.get(0))
                        .optional()
                })
                .op(OP)?;
            let changed = tx
                .prepare_cached(
                    "INSERT INTO refs (repo_id, name, rev, observed_at) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (repo_id, name) DO UPDATE \
                     SET rev = excluded.rev, observed_at = excluded.observed_at \
                     WHERE rev <> excluded.rev",
                )
                .and_then(|mut s| s.execute(params![repo.0, git_ref, sha, now.0]))
                .op(OP)?;
            Ok(match (evaluated, changed) {
                (Some(_), _) => DeliveryOutcome::Coalesced,
                (None, 0) => DeliveryOutcome::Unchanged,
                (None, _) => DeliveryOutcome::NewHead,
            })
        }
        DeliveryEffect::PullRequest { repo, pr } => {
            let repo = repo_id_tx(tx, repo)?;
            Ok(if upsert_pr(tx, repo, pr, now)? {
                DeliveryOutcome::NewHead
            } else {
                DeliveryOutcome::Unchanged
            })
        }
    }
}

fn upsert_pr(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{T0, at, repo_key};

    fn delivery(id: Option<&str>) -> NewDelivery {
        NewDelivery {
            forge: ForgeName::new("gh").unwrap(),
            delivery_id: id.map(str::to_owned),
            event: "push",
            repo: Some("a/b".to_owned()),
            git_ref: Some("refs/heads/main".to_owned()),
            sha: Some("aaa".to_owned()),
        }
    }

    fn head(sha: Option<&str>) -> DeliveryEffect {
        DeliveryEffect::Head {
            repo: repo_key("gh/a/b"),
            git_ref: "refs/heads/main".to_owned(),
            sha: sha.map(str::to_owned),
        }
    }

    fn pr(sha: &str, open: bool) -> PullRequestUpdate {
        PullRequestUpdate {
            number: 3,
            head_sha: sha.to_owned(),
            head_ref: "feature".to_owned(),
            base_ref: "main".to_owned(),
            author: Some("alice".to_owned()),
            from_fork: true,
            open,
        }
    }

    #[test]
    fn a_redelivery_should_be_a_duplicate_and_change_nothing() {
        let mut db = StatusDb::open_memory().unwrap();
        let d = delivery(Some("uuid-1"));
        assert_eq!(
            db.record_delivery(&d, &head(Some("aaa")), T0).unwrap(),
            DeliveryOutcome::NewHead
        );
        assert_eq!(
            db.record_delivery(&d, &head(Some("bbb")), at(1)).unwrap(),
            DeliveryOutcome::Duplicate
        );
        let repo = db.repo_id(&repo_key("gh/a/b")).unwrap().unwrap();
        assert_eq!(db.refs(repo).unwrap()[0].rev, "aaa");
        assert_eq!(db.delivery_counts().unwrap(), [("new-head".to_owned(), 1)]);
    }

    #[test]
    fn a_batch_should_coalesce_within_itself_and_isolate_a_failing_delivery() {
        let mut db = StatusDb::open_memory().unwrap();
        let bad = DeliveryEffect::PullRequest {
            repo: repo_key("gh/a/b"),
            pr: PullRequestUpdate {
                number: u64::MAX,
                ..pr("ccc", true)
            },
        };
        let batch = vec![
            (delivery(Some("1")), head(Some("aaa"))),
            (delivery(Some("1")), head(Some("bbb"))),
            (delivery(Some("2")), bad),
            (delivery(Some("3")), head(Some("ddd"))),
        ];
        let out = db.record_deliveries(&batch, T0).unwrap();
        assert_eq!(out[0].as_ref().unwrap(), &DeliveryOutcome::NewHead);
        assert_eq!(out[1].as_ref().unwrap(), &DeliveryOutcome::Duplicate);
        assert!(out[2].is_err(), "{:?}", out[2]);
        assert_eq!(out[3].as_ref().unwrap(), &DeliveryOutcome::NewHead);
        let repo = db.repo_id(&repo_key("gh/a/b")).unwrap().unwrap();
        assert_eq!(db.refs(repo).unwrap()[0].rev, "ddd");
        assert_eq!(db.delivery_counts().unwrap(), [("new-head".to_owned(), 2)]);
        assert!(db.open_pull_requests(repo).unwrap().is_empty());
    }

    #[test]
    fn a_push_of_an_evaluated_sha_should_be_coalesced() {
        let mut db = StatusDb::open_memory().unwrap();
        let repo = db.upsert_repo(&repo_key("gh/a/b")).unwrap();
        db.insert_evaluation(repo, "refs/heads/main", "aaa", "f", T0)
            .unwrap();
        assert_eq!(
            db.record_delivery(&delivery(Some("1")), &head(Some("aaa")), T0)
                .unwrap(),
            DeliveryOutcome::Coalesced
        );
        assert_eq!(
            db.record_delivery(&delivery(Some("2")), &head(Some("aaa")), T0)
                .unwrap(),
            DeliveryOutcome::Coalesced
        );
        assert_eq!(
            db.record_delivery(&delivery(None), &head(Some("bbb")), T0)
                .unwrap(),
            DeliveryOutcome::NewHead
        );
        assert_eq!(
            db.record_delivery(&delivery(None), &head(Some("bbb")), T0)
                .unwrap(),
            DeliveryOutcome::Unchanged
        );
        assert_eq!(
            db.record_delivery(&delivery(None), &head(None), T0)
                .unwrap(),
            DeliveryOutcome::NewHead
        );
        assert!(db.refs(repo).unwrap().is_empty());
    }

    #[test]
    fn a_new_pull_request_head_should_clear_the_author_trust() {
        let mut db = StatusDb::open_memory().unwrap();
        let repo = db.upsert_repo(&repo_key("gh/a/b")).unwrap();
        assert!(db.upsert_pull_request(repo, &pr("aaa", true), T0).unwrap());
        assert!(!db.upsert_pull_request(repo, &pr("aaa", true), T0).unwrap());
        assert!(db.set_pull_request_trust(repo, 3, "aaa", true, T0).unwrap());
        assert!(
            !db.set_pull_request_trust(repo, 3, "stale", false, T0)
                .unwrap()
        );
        assert_eq!(
            db.open_pull_requests(repo).unwrap()[0].author_can_write,
            Some(true)
        );
        assert!(db.upsert_pull_request(repo, &pr("bbb", true), T0).unwrap());
        let row = &db.open_pull_requests(repo).unwrap()[0];
        assert_eq!((row.head_sha.as_str(), row.author_can_write), ("bbb", None));
        assert_eq!(db.close_pull_requests_except(repo, &[]).unwrap(), 1);
        assert!(db.open_pull_requests(repo).unwrap().is_empty());
    }

    #[test]
    fn an_open_drift_should_be_reused_until_repaired() {
        let mut db = StatusDb::open_memory().unwrap();
        let d = NewDrift {
            loop_name: "webhooks",
            subject: "gh/a/b hook 1",
            field: "url",
            desired: Some("https://x/webhooks/gh"),
            observed: Some("https://evil"),
        };
        let a = db.record_drift(&d, T0).unwrap();
        assert_eq!(db.record_drift(&d, at(1)).unwrap(), a);
        db.finish_drift(a, Some("boom"), at(2)).unwrap();
        assert_eq!(db.drifts(10).unwrap()[0].error.as_deref(), Some("boom"));
        db.finish_drift(a, None, at(3)).unwrap();
        let b = db.record_drift(&d, at(4)).unwrap();
        assert_ne!(a, b);
        let rows = db.drifts(10).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].repaired_at, Some(at(3)));
        assert_eq!(rows[1].error, None);
    }

    #[test]
    fn hooks_should_count_signature_failures_until_set_again() {
        let mut db = StatusDb::open_memory().unwrap();
        let key = repo_key("gh/a/b");
        assert!(!db.record_signature_failure(&key, T0).unwrap());
        let repo = db.upsert_repo(&key).unwrap();
        db.record_hook(repo, 7, "https://x/webhooks/gh", "fp", T0)
            .unwrap();
        assert!(db.record_signature_failure(&key, T0).unwrap());
        assert_eq!(db.hook(repo).unwrap().unwrap().signature_failures, 1);
        db.record_hook(repo, 7, "https://x/webhooks/gh", "fp2", at(1))
            .unwrap();
        let hook = db.hook(repo).unwrap().unwrap();
        assert_eq!(
            (hook.signature_failures, hook.secret_fingerprint.as_str()),
            (0, "fp2")
        );
        db.forget_hook(repo).unwrap();
        assert_eq!(db.hook(repo).unwrap(), None);
    }

    #[test]
    fn posted_statuses_should_keep_the_check_run_id_and_the_last_state() {
        let mut db = StatusDb::open_memory().unwrap();
        let repo = db.upsert_repo(&repo_key("gh/a/b")).unwrap();
        let mut s = PostedStatus {
            sha: "aaa".to_owned(),
            context: "ci/summary".to_owned(),
            state: "running".to_owned(),
            description: Some("1/2".to_owned()),
            target_url: None,
            check_run_id: Some(42),
            posted_at: T0,
        };
        db.record_posted_status(repo, &s).unwrap();
        s.state = "success".to_owned();
        s.check_run_id = None;
        s.posted_at = at(5);
        db.record_posted_status(repo, &s).unwrap();
        let rows = db.posted_statuses(repo, &["aaa".to_owned()]).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (
                rows[0].state.as_str(),
                rows[0].check_run_id,
                rows[0].posted_at
            ),
            ("success", Some(42), at(5))
        );
        s.state = "bogus".to_owned();
        assert!(db.record_posted_status(repo, &s).is_err());
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

    #[test]
    fn forge_health_should_keep_since_while_the_state_holds() {
        let mut db = StatusDb::open_memory().unwrap();
        let gh = ForgeName::new("gh").unwrap();
        assert_eq!(db.forge_health(&gh).unwrap(), None);
        db.set_forge_health(&gh, ForgeHealthState::Paused, Some("401"), None, T0)
            .unwrap();
        db.set_forge_health(
            &gh,
            ForgeHealthState::Paused,
            Some("401 again"),
            None,
            at(9),
        )
        .unwrap();
        let h = db.forge_health(&gh).unwrap().unwrap();
        assert_eq!((h.state, h.since), (ForgeHealthState::Paused, T0));
        assert!(!h.allows_calls(at(10)));
        db.set_forge_health(
            &gh,
            ForgeHealthState::RateLimited,
            None,
            Some(at(100)),
            at(10),
        )
        .unwrap();
        let h = db.forge_health(&gh).unwrap().unwrap();
        assert!(!h.allows_calls(at(99)));
        assert!(h.allows_calls(at(100)));
        assert_eq!(h.since, at(10));
    }
}
