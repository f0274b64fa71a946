//! Repositories and their observed ref heads.

use reconix_spec::names::{RepoKey, Timestamp};
use rusqlite::{OptionalExtension, params};

use crate::StatusDb;
use crate::error::{QueryExt, Result};
use crate::row::{get, parse_repo_key};
use crate::types::{RefHead, Repo, RepoId};

impl StatusDb {
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

    /// Returns the id of the repository `key`, creating its row when it is new.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn upsert_repo(&mut self, key: &RepoKey) -> Result<RepoId> {
        const OP: &str = "upsert_repo";
        if let Some(id) = self.repo_id(key)? {
            return Ok(id);
        }
        self.conn
            .prepare_cached(
                "INSERT INTO repos (forge, name) VALUES (?1, ?2) ON CONFLICT (forge, name) \
                 DO UPDATE SET forge = excluded.forge RETURNING id",
            )
            .and_then(|mut stmt| {
                stmt.query_row(params![key.forge.as_str(), key.repo.as_str()], |r| r.get(0))
            })
            .op(OP)
            .map(RepoId)
    }

    /// Returns the id of the repository `key`, if it has a row.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn repo_id(&self, key: &RepoKey) -> Result<Option<RepoId>> {
        self.conn
            .prepare_cached("SELECT id FROM repos WHERE forge = ?1 AND name = ?2")
            .and_then(|mut stmt| {
                stmt.query_row(params![key.forge.as_str(), key.repo.as_str()], |r| r.get(0))
                    .optional()
            })
            .op("repo_id")
            .map(|id| id.map(RepoId))
    }

    /// Returns every repository, ordered by key.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails and [`crate::Error::Corrupt`] when a
    /// stored name is not a valid forge or repo name.
    pub fn repos(&self) -> Result<Vec<Repo>> {
        const OP: &str = "repos";
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, forge, name FROM repos ORDER BY forge, name")
            .op(OP)?;
        let mut rows = stmt.query([]).op(OP)?;
        let mut repos = Vec::new();
        while let Some(row) = rows.next().op(OP)? {
            repos.push(Repo {
                id: RepoId(get(row, 0, OP)?),
                key: parse_repo_key(get(row, 1, OP)?, get(row, 2, OP)?)?,
            });
        }
        Ok(repos)
    }

    /// Records that `ref_name` of `repo` points to `rev`; returns true when that is new (the
    /// ref was unknown or pointed elsewhere).
    ///
    /// `observed_at` is when the ref was first seen at `rev`: seeing the same head again
    /// writes nothing, so polling an unchanged repository costs no write.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails, e.g. because `repo` does not exist.
    pub fn record_ref(
        &mut self,
        repo: RepoId,
        ref_name: &str,
        rev: &str,
        now: Timestamp,
    ) -> Result<bool> {
        let changed = self
            .conn
            .prepare_cached(
                "INSERT INTO refs (repo_id, name, rev, observed_at) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (repo_id, name) DO UPDATE \
                 SET rev = excluded.rev, observed_at = excluded.observed_at \
                 WHERE rev <> excluded.rev",
            )
            .and_then(|mut stmt| stmt.execute(params![repo.0, ref_name, rev, now.0]))
            .op("record_ref")?;
        Ok(changed > 0)
    }

    /// Forgets `ref_name` of `repo` (the branch was deleted); returns true when it was known.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn remove_ref(&mut self, repo: RepoId, ref_name: &str) -> Result<bool> {
        let removed = self
            .conn
            .prepare_cached("DELETE FROM refs WHERE repo_id = ?1 AND name = ?2")
            .and_then(|mut stmt| stmt.execute(params![repo.0, ref_name]))
            .op("remove_ref")?;
        Ok(removed > 0)
    }

    /// Returns the observed heads of `repo`, ordered by ref name.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn refs(&self, repo: RepoId) -> Result<Vec<RefHead>> {
        const OP: &str = "refs";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT name, rev, observed_at FROM refs WHERE repo_id = ?1 ORDER BY name",
            )
            .op(OP)?;
        let mut rows = stmt.query([repo.0]).op(OP)?;
        let mut refs = Vec::new();
        while let Some(row) = rows.next().op(OP)? {
            refs.push(RefHead {
                repo_id: repo,
                name: get(row, 0, OP)?,
                rev: get(row, 1, OP)?,
                observed_at: Timestamp(get(row, 2, OP)?),
            });
        }
        Ok(refs)
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::{T0, at, repo_key};
    use crate::{Error, StatusDb};

    #[test]
    fn upserting_a_repo_twice_should_return_the_same_id() {
        let mut db = StatusDb::open_memory().unwrap();
        let a = db.upsert_repo(&repo_key("gh/NixOS/nixpkgs")).unwrap();
        let b = db.upsert_repo(&repo_key("gh/NixOS/nixpkgs")).unwrap();
        let c = db.upsert_repo(&repo_key("gl/NixOS/nixpkgs")).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(db.repo_id(&repo_key("gh/NixOS/nixpkgs")).unwrap(), Some(a));
        assert_eq!(db.repo_id(&repo_key("gh/none/x")).unwrap(), None);
    }

    #[test]
    fn repos_should_list_keys_in_order() {
        let mut db = StatusDb::open_memory().unwrap();
        db.upsert_repo(&repo_key("local/demo")).unwrap();
        db.upsert_repo(&repo_key("gh/a/b")).unwrap();
        let keys: Vec<_> = db
            .repos()
            .unwrap()
            .into_iter()
            .map(|r| r.key.to_string())
            .collect();
        assert_eq!(keys, ["gh/a/b", "local/demo"]);
    }

    #[test]
    fn a_repo_row_with_an_invalid_name_should_be_reported_as_corrupt() {
        let db = StatusDb::open_memory().unwrap();
        db.conn
            .execute(
                "INSERT INTO repos (forge, name) VALUES ('gh', '../etc')",
                [],
            )
            .unwrap();
        let err = db.repos().unwrap_err();
        assert!(
            matches!(
                err,
                Error::Corrupt {
                    table: "repos",
                    column: "name",
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn record_ref_should_report_only_new_heads_and_keep_the_first_observation_time() {
        let mut db = StatusDb::open_memory().unwrap();
        let repo = db.upsert_repo(&repo_key("gh/a/b")).unwrap();
        assert!(db.record_ref(repo, "refs/heads/main", "aaa", T0).unwrap());
        assert!(
            !db.record_ref(repo, "refs/heads/main", "aaa", at(5))
                .unwrap()
        );
        assert_eq!(db.refs(repo).unwrap()[0].observed_at, T0);
        assert!(
            db.record_ref(repo, "refs/heads/main", "bbb", at(9))
                .unwrap()
        );
        assert!(db.record_ref(repo, "refs/heads/dev", "ccc", at(9)).unwrap());
        let refs = db.refs(repo).unwrap();
        assert_eq!(refs.len(), 2);
        assert_eq!(
            (refs[0].name.as_str(), refs[0].rev.as_str()),
            ("refs/heads/dev", "ccc")
        );
        assert_eq!((refs[1].rev.as_str(), refs[1].observed_at), ("bbb", at(9)));
    }

    #[test]
    fn remove_ref_should_forget_a_deleted_branch() {
        let mut db = StatusDb::open_memory().unwrap();
        let repo = db.upsert_repo(&repo_key("gh/a/b")).unwrap();
        db.record_ref(repo, "refs/heads/x", "aaa", T0).unwrap();
        assert!(db.remove_ref(repo, "refs/heads/x").unwrap());
        assert!(!db.remove_ref(repo, "refs/heads/x").unwrap());
        assert!(db.refs(repo).unwrap().is_empty());
    }
}
