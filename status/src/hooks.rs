//! The hook the daemon set per repository (`hooks`) and the signature failures naming it.

use reconix_spec::names::{RepoKey, Timestamp};
use rusqlite::params;

use crate::StatusDb;
use crate::error::{QueryExt, Result};
use crate::row::{get, non_negative, to_i64};
use crate::types::RepoId;

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

impl StatusDb {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{T0, at, repo_key};

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
}
