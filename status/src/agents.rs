//! Remote builders (agents): enrollment, revocation, admission, connection and heartbeat
//! state.
//!
//! Revoking an agent marks its name revoked and records its key in `revoked_keys` (migration
//! 006). The name stays refused until an operator admits it again ([`StatusDb::admit_agent`]);
//! the key stays refused for good. What a connecting agent may do is decided elsewhere (the
//! enrolment code in `reconcilers`), from the [`AgentCredentials`] read here.
//!
//! Rows come out typed ([`AgentRow`]: a [`BuilderName`], an [`Offer`] of systems): a row
//! that does not parse is an [`Error::Corrupt`] naming its column, never skipped. How the
//! builders look to operators (`builder_views`) is built from these rows in `reconix-web`.

use std::collections::BTreeMap;
use std::fmt;

use reconix_spec::Offer;
use reconix_spec::names::{AttrPath, BuilderName, StorePath, Timestamp};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::error::{QueryExt, Result};
use crate::row::{get, non_negative, parse};
use crate::types::{EvaluationId, JobId, JobState};
use crate::{Error, StatusDb};

/// An enrolled agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentRow {
    /// Its name (unique).
    pub name: BuilderName,
    /// The SHA-256 fingerprint of its key (`SHA256:…`).
    pub key_fingerprint: String,
    /// What it offers, as it said itself (before the caps of a `builders.remote` entry, see
    /// [`reconix_spec::Builders::agent_offer`]): systems, features (`kvm`, `big-parallel`, …)
    /// and how many builds it runs at once.
    pub offer: Offer,
    /// When it enrolled (last time).
    pub enrolled_at: Timestamp,
    /// When its name was revoked; `None` unless it is revoked now.
    pub revoked_at: Option<Timestamp>,
    /// Who revoked it (an OS user name, or `operator`).
    pub revoked_by: Option<String>,
    /// When an operator last admitted it again after a revocation.
    pub admitted_at: Option<Timestamp>,
    /// Who admitted it.
    pub admitted_by: Option<String>,
    /// Whether its key (`key_fingerprint`) is a revoked one: after an admission, until the
    /// agent enrols with a new key.
    pub key_revoked: bool,
    /// When its current connection was made; `None` while disconnected.
    pub connected_at: Option<Timestamp>,
    /// Its last heartbeat.
    pub last_heartbeat_at: Option<Timestamp>,
    /// How many builds it reported running in its last heartbeat.
    pub running: u32,
}

impl AgentRow {
    /// Returns its last sign of life: its last heartbeat, or its connection when that is later
    /// (a heartbeat older than the connection belongs to an earlier one, and an agent is given
    /// its whole `heartbeat-timeout` from connecting). This is the time
    /// [`reconix_spec::Builders::liveness`] judges.
    pub fn last_seen(&self) -> Option<Timestamp> {
        self.last_heartbeat_at.max(self.connected_at)
    }
}

/// What an agent said about itself when it connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentHello<'a> {
    /// Its name.
    pub name: &'a str,
    /// The fingerprint of the key it authenticated with.
    pub key_fingerprint: &'a str,
    /// Its systems.
    pub systems: &'a [String],
    /// Its features.
    pub features: &'a [String],
    /// Its build slots.
    pub max_jobs: u32,
}

/// What the state database knows about a connecting agent's name and key: the facts the
/// admission decision is made from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AgentCredentials {
    /// The key enrolled under the name, when the name is enrolled.
    pub enrolled_key: Option<String>,
    /// When the name was revoked, while it is.
    pub name_revoked_at: Option<Timestamp>,
    /// When the presented key was revoked, if it ever was.
    pub key_revoked_at: Option<Timestamp>,
}

const COLUMNS: &str = "a.name, a.key_fingerprint, a.systems, a.features, a.max_jobs, \
                       a.enrolled_at, a.revoked_at, a.connected_at, a.last_heartbeat_at, \
                       a.running, a.revoked_by, a.admitted_at, a.admitted_by, \
                       EXISTS (SELECT 1 FROM revoked_keys r WHERE r.key_fingerprint = a.key_fingerprint)";

/// Parses a JSON list column (`systems`, `features`) into its items, each validated.
fn parse_list<T: serde::de::DeserializeOwned>(
    column: &'static str,
    text: String,
) -> Result<Vec<T>> {
    serde_json::from_str(&text).map_err(|e| Error::Corrupt {
        table: "agents",
        column,
        reason: e.to_string(),
        value: text,
    })
}

fn parse_row(row: &rusqlite::Row<'_>, op: &'static str) -> Result<AgentRow> {
    Ok(AgentRow {
        name: parse("agents", "name", get(row, 0, op)?)?,
        key_fingerprint: get(row, 1, op)?,
        offer: Offer {
            systems: parse_list("systems", get(row, 2, op)?)?,
            features: parse_list("features", get(row, 3, op)?)?,
            max_jobs: non_negative("agents", "max_jobs", get(row, 4, op)?)?,
        },
        enrolled_at: Timestamp(get(row, 5, op)?),
        revoked_at: get::<Option<i64>>(row, 6, op)?.map(Timestamp),
        connected_at: get::<Option<i64>>(row, 7, op)?.map(Timestamp),
        last_heartbeat_at: get::<Option<i64>>(row, 8, op)?.map(Timestamp),
        running: non_negative("agents", "running", get(row, 9, op)?)?,
        revoked_by: get(row, 10, op)?,
        admitted_at: get::<Option<i64>>(row, 11, op)?.map(Timestamp),
        admitted_by: get(row, 12, op)?,
        key_revoked: get(row, 13, op)?,
    })
}

fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".to_owned())
}

impl StatusDb {
    /// Returns what is known about an agent connecting as `name` with key `fingerprint`.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn agent_credentials(&self, name: &str, fingerprint: &str) -> Result<AgentCredentials> {
        const OP: &str = "agent_credentials";
        let enrolled: Option<(String, Option<i64>)> = self
            .conn
            .prepare_cached("SELECT key_fingerprint, revoked_at FROM agents WHERE name = ?1")
            .and_then(|mut s| {
                s.query_row(params![name], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .op(OP)?;
        let key_revoked_at: Option<i64> = self
            .conn
            .prepare_cached("SELECT revoked_at FROM revoked_keys WHERE key_fingerprint = ?1")
            .and_then(|mut s| s.query_row(params![fingerprint], |r| r.get(0)).optional())
            .op(OP)?;
        let (enrolled_key, name_revoked_at) = match enrolled {
            Some((key, revoked)) => (Some(key), revoked.map(Timestamp)),
            None => (None, None),
        };
        Ok(AgentCredentials {
            enrolled_key,
            name_revoked_at,
            key_revoked_at: key_revoked_at.map(Timestamp),
        })
    }

    /// Enrols an agent (after the admission decision allowed it): records or replaces its key.
    /// Another agent's row holding the same key loses it (a key names one agent). A revocation
    /// of the name is left as it is: only [`admit_agent`](Self::admit_agent) lifts it.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn enroll_agent(&mut self, hello: &AgentHello<'_>, now: Timestamp) -> Result<()> {
        const OP: &str = "enroll_agent";
        let tx = self.write(OP)?;
        tx.prepare_cached("DELETE FROM agents WHERE key_fingerprint = ?1 AND name <> ?2")
            .and_then(|mut s| s.execute(params![hello.key_fingerprint, hello.name]))
            .op(OP)?;
        tx.prepare_cached(
            "INSERT INTO agents (name, key_fingerprint, systems, features, max_jobs, enrolled_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (name) DO UPDATE SET \
             key_fingerprint = excluded.key_fingerprint, systems = excluded.systems, \
             features = excluded.features, max_jobs = excluded.max_jobs, \
             enrolled_at = excluded.enrolled_at",
        )
        .and_then(|mut s| {
            s.execute(params![
                hello.name,
                hello.key_fingerprint,
                json_list(hello.systems),
                json_list(hello.features),
                hello.max_jobs,
                now.0
            ])
        })
        .op(OP)?;
        tx.commit().op(OP)?;
        Ok(())
    }

    /// Records that a known agent connected (refreshing what it offers) or disconnected.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn set_agent_connected(
        &mut self,
        hello: &AgentHello<'_>,
        connected: bool,
        now: Timestamp,
    ) -> Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE agents SET connected_at = ?2, systems = ?3, features = ?4, max_jobs = ?5, \
                 running = CASE WHEN ?2 IS NULL THEN 0 ELSE running END WHERE name = ?1",
            )
            .and_then(|mut s| {
                s.execute(params![
                    hello.name,
                    connected.then_some(now.0),
                    json_list(hello.systems),
                    json_list(hello.features),
                    hello.max_jobs
                ])
            })
            .op("set_agent_connected")?;
        Ok(())
    }

    /// Records a heartbeat.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn record_heartbeat(&mut self, name: &str, running: u32, now: Timestamp) -> Result<()> {
        self.conn
            .prepare_cached(
                "UPDATE agents SET last_heartbeat_at = ?2, running = ?3 WHERE name = ?1",
            )
            .and_then(|mut s| s.execute(params![name, now.0, running]))
            .op("record_heartbeat")?;
        Ok(())
    }

    /// Revokes agent `name`: the name is refused until [`admit_agent`](Self::admit_agent), and
    /// its current key for good. Records when and by whom. Returns false when no such agent
    /// is enrolled or it is already revoked.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn revoke_agent(&mut self, name: &str, now: Timestamp, by: &str) -> Result<bool> {
        const OP: &str = "revoke_agent";
        let tx = self.write(OP)?;
        let changed = tx
            .prepare_cached(
                "UPDATE agents SET revoked_at = ?2, revoked_by = ?3 \
                 WHERE name = ?1 AND revoked_at IS NULL",
            )
            .and_then(|mut s| s.execute(params![name, now.0, by]))
            .op(OP)?;
        if changed > 0 {
            // A key revoked earlier keeps its first record.
            tx.prepare_cached(
                "INSERT INTO revoked_keys (key_fingerprint, name, revoked_at, revoked_by) \
                 SELECT key_fingerprint, name, ?2, ?3 FROM agents WHERE name = ?1 \
                 ON CONFLICT (key_fingerprint) DO NOTHING",
            )
            .and_then(|mut s| s.execute(params![name, now.0, by]))
            .op(OP)?;
        }
        tx.commit().op(OP)?;
        Ok(changed > 0)
    }

    /// Admits a revoked agent's name again, recording when and by whom: an agent may enrol
    /// under it again with the token and a key that was never revoked. Returns false when no
    /// agent of that name is revoked.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn admit_agent(&mut self, name: &str, now: Timestamp, by: &str) -> Result<bool> {
        let changed = self
            .conn
            .prepare_cached(
                "UPDATE agents SET revoked_at = NULL, revoked_by = NULL, admitted_at = ?2, \
                 admitted_by = ?3 WHERE name = ?1 AND revoked_at IS NOT NULL",
            )
            .and_then(|mut s| s.execute(params![name, now.0, by]))
            .op("admit_agent")?;
        Ok(changed > 0)
    }

    /// Returns every enrolled agent, by name.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails and [`crate::Error::Corrupt`] for a
    /// malformed row.
    pub fn agents(&self) -> Result<Vec<AgentRow>> {
        const OP: &str = "agents";
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM agents a ORDER BY a.name"))
            .op(OP)?;
        let mut rows = stmt.query([]).op(OP)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().op(OP)? {
            out.push(parse_row(row, OP)?);
        }
        Ok(out)
    }
}

/// A job waiting on a running build: unfinished (`queued` or `building`) and with its drv.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningJob {
    /// The job.
    pub id: JobId,
    /// Its evaluation.
    pub evaluation_id: EvaluationId,
    /// Its attribute path.
    pub attr: AttrPath,
}

/// A build in state `running`, with the jobs waiting on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningBuild {
    /// The derivation being built.
    pub drv_path: StorePath,
    /// When it entered `running`.
    pub started_at: Option<Timestamp>,
    /// How many times it entered `running`.
    pub attempts: u32,
    /// The unfinished jobs with this drv, by id.
    pub jobs: Vec<RunningJob>,
}

/// What kind of machine a builder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BuilderKind {
    /// The daemon's own machine (`builders.local`).
    Local,
    /// An enrolled remote builder.
    Agent,
}

impl BuilderKind {
    /// Returns its JSON spelling: `local` or `agent`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Agent => "agent",
        }
    }
}

impl fmt::Display for BuilderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl StatusDb {
    /// Returns the builds in state `running` grouped by builder name (a build recorded without
    /// a builder counts as `local`), oldest first, each with the unfinished (`queued` or
    /// `building`) jobs waiting on it.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails and [`crate::Error::Corrupt`] for a
    /// malformed row.
    pub fn running_builds(&self) -> Result<BTreeMap<String, Vec<RunningBuild>>> {
        const OP: &str = "running_builds";
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT COALESCE(b.builder, 'local'), b.drv_path, b.started_at, b.attempts, \
                 j.id, j.evaluation_id, j.attr \
                 FROM builds b LEFT JOIN jobs j ON j.drv_path = b.drv_path \
                 AND j.state IN {} \
                 WHERE b.state = 'running' \
                 ORDER BY 1, b.started_at, b.drv_path, j.id",
                JobState::unfinished_sql()
            ))
            .op(OP)?;
        let mut rows = stmt.query([]).op(OP)?;
        let mut out: BTreeMap<String, Vec<RunningBuild>> = BTreeMap::new();
        while let Some(row) = rows.next().op(OP)? {
            let builder: String = get(row, 0, OP)?;
            let drv_path: StorePath = parse("builds", "drv_path", get(row, 1, OP)?)?;
            let builds = out.entry(builder).or_default();
            // Rows of one build are adjacent (ordered by drv path within a builder).
            if !matches!(builds.last(), Some(last) if last.drv_path == drv_path) {
                builds.push(RunningBuild {
                    drv_path,
                    started_at: get::<Option<i64>>(row, 2, OP)?.map(Timestamp),
                    attempts: non_negative("builds", "attempts", get(row, 3, OP)?)?,
                    jobs: Vec::new(),
                });
            }
            let (Some(id), Some(build)) = (get::<Option<i64>>(row, 4, OP)?, builds.last_mut())
            else {
                continue;
            };
            build.jobs.push(RunningJob {
                id: JobId(id),
                evaluation_id: EvaluationId(get(row, 5, OP)?),
                attr: parse("jobs", "attr", get(row, 6, OP)?)?,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use reconix_spec::names::{BuilderName, System};

    use super::*;
    use crate::testing::{T0, at, building_eval, drv, job};
    use crate::{BuildState, JobState};

    fn hello<'a>(name: &'a str, key: &'a str, systems: &'a [String]) -> AgentHello<'a> {
        AgentHello {
            name,
            key_fingerprint: key,
            systems,
            features: &[],
            max_jobs: 2,
        }
    }

    fn credentials(db: &StatusDb, name: &str, key: &str) -> AgentCredentials {
        db.agent_credentials(name, key).unwrap()
    }

    #[test]
    fn credentials_should_say_which_key_a_name_has() {
        let mut db = StatusDb::open_memory().unwrap();
        let systems = vec!["x86_64-linux".to_owned()];
        assert_eq!(
            credentials(&db, "a1", "SHA256:k1"),
            AgentCredentials::default()
        );
        db.enroll_agent(&hello("a1", "SHA256:k1", &systems), T0)
            .unwrap();
        let enrolled = AgentCredentials {
            enrolled_key: Some("SHA256:k1".to_owned()),
            ..AgentCredentials::default()
        };
        assert_eq!(credentials(&db, "a1", "SHA256:k1"), enrolled);
        // Another key asking for the name sees the enrolled key; the name decides nothing else.
        assert_eq!(credentials(&db, "a1", "SHA256:k2"), enrolled);
        assert_eq!(
            credentials(&db, "a2", "SHA256:k1"),
            AgentCredentials::default()
        );
        let rows = db.agents().unwrap();
        assert_eq!(rows[0].offer.systems, [System::x86_64_linux()]);
        assert!(!rows[0].key_revoked);
    }

    #[test]
    fn an_agent_row_that_does_not_parse_should_be_reported_as_corrupt() {
        for (column, value) in [
            ("name", "not a name"),
            ("systems", "[\"not a system\"]"),
            ("systems", "x86_64-linux"),
            ("features", "{}"),
        ] {
            let mut db = StatusDb::open_memory().unwrap();
            db.enroll_agent(&hello("a1", "SHA256:k1", &[]), T0).unwrap();
            db.conn
                .execute(&format!("UPDATE agents SET {column} = ?1"), [value])
                .unwrap();
            let err = db.agents().unwrap_err();
            assert!(
                matches!(err, Error::Corrupt { table: "agents", column: c, .. } if c == column),
                "{column} = {value}: {err:?}"
            );
        }
    }

    #[test]
    fn revoking_should_refuse_the_name_until_admitted_and_the_key_for_good() {
        let mut db = StatusDb::open_memory().unwrap();
        db.enroll_agent(&hello("a1", "SHA256:k1", &[]), T0).unwrap();
        assert!(db.revoke_agent("a1", at(1), "alice").unwrap());
        assert!(!db.revoke_agent("a1", at(2), "alice").unwrap());
        assert!(!db.revoke_agent("nobody", at(2), "alice").unwrap());
        let revoked = credentials(&db, "a1", "SHA256:k1");
        assert_eq!(
            (revoked.name_revoked_at, revoked.key_revoked_at),
            (Some(at(1)), Some(at(1)))
        );
        let row = &db.agents().unwrap()[0];
        assert_eq!(
            (row.revoked_at, row.revoked_by.as_deref(), row.key_revoked),
            (Some(at(1)), Some("alice"), true)
        );

        // Enrolling (say a token came with a new key, before the admission rule was checked)
        // does not lift the revocation of the name.
        db.enroll_agent(&hello("a1", "SHA256:k2", &[]), at(3))
            .unwrap();
        assert_eq!(
            credentials(&db, "a1", "SHA256:k2").name_revoked_at,
            Some(at(1))
        );

        // Admitting lifts the name's revocation and records who; the first key stays revoked.
        assert!(db.admit_agent("a1", at(4), "bob").unwrap());
        assert!(!db.admit_agent("a1", at(5), "bob").unwrap());
        assert!(!db.admit_agent("nobody", at(5), "bob").unwrap());
        let row = &db.agents().unwrap()[0];
        assert_eq!(
            (
                row.revoked_at,
                row.admitted_at,
                row.admitted_by.as_deref(),
                row.key_revoked
            ),
            (None, Some(at(4)), Some("bob"), false)
        );
        assert_eq!(
            credentials(&db, "a1", "SHA256:k1").key_revoked_at,
            Some(at(1))
        );
        let fresh = credentials(&db, "a1", "SHA256:k2");
        assert_eq!((fresh.name_revoked_at, fresh.key_revoked_at), (None, None));
        // The revoked key is refused under any name.
        assert_eq!(
            credentials(&db, "elsewhere", "SHA256:k1").key_revoked_at,
            Some(at(1))
        );
    }

    #[test]
    fn an_admitted_agent_should_show_its_revoked_key_until_it_enrols_anew() {
        let mut db = StatusDb::open_memory().unwrap();
        db.enroll_agent(&hello("a1", "SHA256:k1", &[]), T0).unwrap();
        db.revoke_agent("a1", at(1), "alice").unwrap();
        db.admit_agent("a1", at(2), "alice").unwrap();
        assert!(db.agents().unwrap()[0].key_revoked);
        db.enroll_agent(&hello("a1", "SHA256:k2", &[]), at(3))
            .unwrap();
        let row = &db.agents().unwrap()[0];
        assert_eq!(
            (row.key_fingerprint.as_str(), row.key_revoked),
            ("SHA256:k2", false)
        );
        // Revoking again records the new key too, and keeps the first record of the old one.
        db.revoke_agent("a1", at(4), "carol").unwrap();
        assert_eq!(
            credentials(&db, "a1", "SHA256:k2").key_revoked_at,
            Some(at(4))
        );
        assert_eq!(
            credentials(&db, "a1", "SHA256:k1").key_revoked_at,
            Some(at(1))
        );
    }

    #[test]
    fn migration_006_should_keep_revoked_agents_revoked_and_their_keys_refused() {
        use rusqlite::Connection;

        let mut conn = Connection::open_in_memory().unwrap();
        crate::db::MIGRATIONS.to_version(&mut conn, 5).unwrap();
        conn.execute_batch(
            "INSERT INTO agents (name, key_fingerprint, max_jobs, enrolled_at, revoked_at) \
             VALUES ('gone', 'SHA256:old', 1, 0, 7), ('ok', 'SHA256:ok', 1, 0, NULL);",
        )
        .unwrap();
        crate::db::MIGRATIONS.to_version(&mut conn, 6).unwrap();
        let db = StatusDb { conn };
        let gone = credentials(&db, "gone", "SHA256:old");
        assert_eq!(
            (gone.name_revoked_at, gone.key_revoked_at),
            (Some(Timestamp(7)), Some(Timestamp(7)))
        );
        let ok = credentials(&db, "ok", "SHA256:ok");
        assert_eq!((ok.name_revoked_at, ok.key_revoked_at), (None, None));
        let rows = db.agents().unwrap();
        let states: Vec<_> = rows
            .iter()
            .map(|r| (r.name.as_str(), r.key_revoked, r.admitted_at))
            .collect();
        assert_eq!(states, [("gone", true, None), ("ok", false, None)]);
    }

    #[test]
    fn a_key_should_name_one_agent() {
        let mut db = StatusDb::open_memory().unwrap();
        db.enroll_agent(&hello("old", "SHA256:k", &[]), T0).unwrap();
        db.enroll_agent(&hello("new", "SHA256:k", &[]), at(1))
            .unwrap();
        let names: Vec<_> = db
            .agents()
            .unwrap()
            .into_iter()
            .map(|a| a.name.into_string())
            .collect();
        assert_eq!(names, ["new"]);
    }

    #[test]
    fn connections_and_heartbeats_should_be_recorded() {
        let mut db = StatusDb::open_memory().unwrap();
        let h = hello("a1", "SHA256:k1", &[]);
        db.enroll_agent(&h, T0).unwrap();
        db.set_agent_connected(&h, true, at(1)).unwrap();
        db.record_heartbeat("a1", 2, at(5)).unwrap();
        let row = &db.agents().unwrap()[0];
        assert_eq!(
            (row.connected_at, row.last_heartbeat_at, row.running),
            (Some(at(1)), Some(at(5)), 2)
        );
        db.set_agent_connected(&h, false, at(9)).unwrap();
        let row = &db.agents().unwrap()[0];
        assert_eq!((row.connected_at, row.running), (None, 0));
    }

    #[test]
    fn running_builds_should_group_by_builder_with_their_unfinished_jobs() {
        let mut db = StatusDb::open_memory().unwrap();
        let e1 = building_eval(&mut db, "r1", &[job(1, "a"), job(2, "b"), job(3, "c")]);
        let e2 = building_eval(&mut db, "r2", &[job(1, "a")]);
        let jobs = db.jobs_of_evaluation(e1).unwrap();
        let later = db.jobs_of_evaluation(e2).unwrap();
        let arm = BuilderName::new("arm").unwrap();
        db.upsert_build(&drv(2), Some(&arm), BuildState::Running, at(3))
            .unwrap();
        db.upsert_build(&drv(1), Some(&arm), BuildState::Running, at(2))
            .unwrap();
        db.upsert_build(&drv(3), None, BuildState::Running, at(2))
            .unwrap();
        // The job of the first evaluation was cancelled: only the second one waits.
        db.set_job_state(jobs[0].id, JobState::Cancelled, None, at(4))
            .unwrap();
        // A queued build is not running.
        db.upsert_build(&drv(4), Some(&arm), BuildState::Queued, at(2))
            .unwrap();

        let running = db.running_builds().unwrap();
        assert_eq!(running.keys().collect::<Vec<_>>(), ["arm", "local"]);
        let on_arm = &running["arm"];
        assert_eq!(
            on_arm.iter().map(|b| &b.drv_path).collect::<Vec<_>>(),
            [&drv(1), &drv(2)]
        );
        assert_eq!((on_arm[0].started_at, on_arm[0].attempts), (Some(at(2)), 1));
        assert_eq!(
            on_arm[0].jobs,
            [RunningJob {
                id: later[0].id,
                evaluation_id: e2,
                attr: later[0].attr.clone(),
            }]
        );
        assert_eq!(on_arm[1].jobs.len(), 1);
        assert_eq!(on_arm[1].jobs[0].id, jobs[1].id);
        assert_eq!(running["local"][0].drv_path, drv(3));
        assert_eq!(running["local"][0].jobs[0].evaluation_id, e1);
    }
}
