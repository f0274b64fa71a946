//! Drift (`drift`): differences a loop found between desired and observed state.

use reconix_spec::names::Timestamp;
use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use crate::StatusDb;
use crate::error::{QueryExt, Result};
use crate::row::get;

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

impl StatusDb {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{T0, at};

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
}
