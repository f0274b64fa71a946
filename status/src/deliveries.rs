//! Webhook deliveries (`webhook_deliveries`): each verified delivery and what it did, applied in
//! the same transaction as its effect on `refs` or `pull_requests`.

use reconix_spec::names::{ForgeName, RepoKey, Timestamp};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use crate::StatusDb;
use crate::error::{QueryExt, Result};
use crate::pull_requests::{PullRequestUpdate, upsert_pr};
use crate::row::{get, non_negative};
use crate::types::RepoId;

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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{T0, at, pull_request, repo_key};

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
                ..pull_request("ccc", true)
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
}
