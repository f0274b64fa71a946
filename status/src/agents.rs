//! Remote builders (agents): enrollment, revocation, connection and heartbeat state.

use reconix_spec::names::Timestamp;
use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use crate::error::{QueryExt, Result};
use crate::row::{get, non_negative};
use crate::{Error, StatusDb};

/// An enrolled agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentRow {
    /// Its name (unique).
    pub name: String,
    /// The SHA-256 fingerprint of its key (`SHA256:…`).
    pub key_fingerprint: String,
    /// The systems it builds for.
    pub systems: Vec<String>,
    /// The features it offers (`kvm`, `big-parallel`, …).
    pub features: Vec<String>,
    /// How many builds it runs at once.
    pub max_jobs: u32,
    /// When it enrolled (last time).
    pub enrolled_at: Timestamp,
    /// When it was revoked; `None` while its key is accepted.
    pub revoked_at: Option<Timestamp>,
    /// When its current connection was made; `None` while disconnected.
    pub connected_at: Option<Timestamp>,
    /// Its last heartbeat.
    pub last_heartbeat_at: Option<Timestamp>,
    /// How many builds it reported running in its last heartbeat.
    pub running: u32,
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

/// Whether a connecting agent may work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentAdmission {
    /// Its key is enrolled under its name and not revoked.
    Known,
    /// Unknown, revoked or with another key: it must present a valid enrollment token.
    NeedsToken,
}

const COLUMNS: &str = "name, key_fingerprint, systems, features, max_jobs, enrolled_at, \
                       revoked_at, connected_at, last_heartbeat_at, running";

fn parse_row(row: &rusqlite::Row<'_>, op: &'static str) -> Result<AgentRow> {
    let list = |idx: usize, column: &'static str| -> Result<Vec<String>> {
        let text: String = get(row, idx, op)?;
        serde_json::from_str(&text).map_err(|e| Error::Corrupt {
            table: "agents",
            column,
            value: text.clone(),
            reason: e.to_string(),
        })
    };
    Ok(AgentRow {
        name: get(row, 0, op)?,
        key_fingerprint: get(row, 1, op)?,
        systems: list(2, "systems")?,
        features: list(3, "features")?,
        max_jobs: non_negative("agents", "max_jobs", get(row, 4, op)?)?,
        enrolled_at: Timestamp(get(row, 5, op)?),
        revoked_at: get::<Option<i64>>(row, 6, op)?.map(Timestamp),
        connected_at: get::<Option<i64>>(row, 7, op)?.map(Timestamp),
        last_heartbeat_at: get::<Option<i64>>(row, 8, op)?.map(Timestamp),
        running: non_negative("agents", "running", get(row, 9, op)?)?,
    })
}

fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".to_owned())
}

impl StatusDb {
    /// Says whether an agent connecting as `name` with key `fingerprint` is already enrolled.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn agent_admission(&self, name: &str, fingerprint: &str) -> Result<AgentAdmission> {
        let known: Option<i64> = self
            .conn
            .prepare_cached(
                "SELECT 1 FROM agents WHERE name = ?1 AND key_fingerprint = ?2 \
                 AND revoked_at IS NULL",
            )
            .and_then(|mut s| {
                s.query_row(params![name, fingerprint], |r| r.get(0))
                    .optional()
            })
            .op("agent_admission")?;
        Ok(if known.is_some() {
            AgentAdmission::Known
        } else {
            AgentAdmission::NeedsToken
        })
    }

    /// Enrols an agent (after its token was checked): records or replaces its key and clears a
    /// revocation. Another agent's row holding the same key loses it (a key names one agent).
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
             enrolled_at = excluded.enrolled_at, revoked_at = NULL",
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

    /// Revokes an agent's key; returns false when no such agent is enrolled.
    ///
    /// # Errors
    /// Returns [`crate::Error::Query`] when SQLite fails.
    pub fn revoke_agent(&mut self, name: &str, now: Timestamp) -> Result<bool> {
        let changed = self
            .conn
            .prepare_cached(
                "UPDATE agents SET revoked_at = ?2 WHERE name = ?1 AND revoked_at IS NULL",
            )
            .and_then(|mut s| s.execute(params![name, now.0]))
            .op("revoke_agent")?;
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
            .prepare_cached(&format!("SELECT {COLUMNS} FROM agents ORDER BY name"))
            .op(OP)?;
        let mut rows = stmt.query([]).op(OP)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().op(OP)? {
            out.push(parse_row(row, OP)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{T0, at};

    fn hello<'a>(name: &'a str, key: &'a str, systems: &'a [String]) -> AgentHello<'a> {
        AgentHello {
            name,
            key_fingerprint: key,
            systems,
            features: &[],
            max_jobs: 2,
        }
    }

    #[test]
    fn an_enrolled_agent_should_be_known_by_name_and_key_until_revoked() {
        let mut db = StatusDb::open_memory().unwrap();
        let systems = vec!["x86_64-linux".to_owned()];
        assert_eq!(
            db.agent_admission("a1", "SHA256:k1").unwrap(),
            AgentAdmission::NeedsToken
        );
        db.enroll_agent(&hello("a1", "SHA256:k1", &systems), T0)
            .unwrap();
        assert_eq!(
            db.agent_admission("a1", "SHA256:k1").unwrap(),
            AgentAdmission::Known
        );
        // The same name with another key, or the key under another name, is not known.
        assert_eq!(
            db.agent_admission("a1", "SHA256:k2").unwrap(),
            AgentAdmission::NeedsToken
        );
        assert_eq!(
            db.agent_admission("a2", "SHA256:k1").unwrap(),
            AgentAdmission::NeedsToken
        );
        assert!(db.revoke_agent("a1", at(1)).unwrap());
        assert!(!db.revoke_agent("a1", at(2)).unwrap());
        assert!(!db.revoke_agent("nobody", at(2)).unwrap());
        assert_eq!(
            db.agent_admission("a1", "SHA256:k1").unwrap(),
            AgentAdmission::NeedsToken
        );
        // Enrolling again (a valid token) lifts the revocation.
        db.enroll_agent(&hello("a1", "SHA256:k1", &systems), at(3))
            .unwrap();
        let rows = db.agents().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].revoked_at, rows[0].enrolled_at), (None, at(3)));
        assert_eq!(rows[0].systems, systems);
    }

    #[test]
    fn a_key_should_name_one_agent() {
        let mut db = StatusDb::open_memory().unwrap();
        db.enroll_agent(&hello("old", "SHA256:k", &[]), T0).unwrap();
        db.enroll_agent(&hello("new", "SHA256:k", &[]), at(1))
            .unwrap();
        let names: Vec<_> = db.agents().unwrap().into_iter().map(|a| a.name).collect();
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
}
