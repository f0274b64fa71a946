//! Remote builders (agents): enrollment, revocation, admission, connection and heartbeat
//! state.
//!
//! Revoking an agent marks its name revoked and records its key in `revoked_keys` (migration
//! 006). The name stays refused until an operator admits it again ([`StatusDb::admit_agent`]);
//! the key stays refused for good. What a connecting agent may do is decided elsewhere (the
//! enrolment code in `reconcilers`), from the [`AgentCredentials`] read here.

use std::collections::BTreeMap;
use std::fmt;

use reconix_spec::names::{AttrPath, BuilderName, StorePath, System, Timestamp};
use reconix_spec::{Builders, Offer};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::error::{QueryExt, Result};
use crate::row::{get, non_negative, parse};
use crate::types::{EvaluationId, JobId};
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

/// Whether a builder takes builds, as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BuilderState {
    /// It takes builds: the local builder with slots, or a connected agent heard from within
    /// `heartbeat-timeout`.
    Ready,
    /// The local builder with `max-jobs: 0`.
    Disabled,
    /// A connected agent whose last heartbeat (or connection, before its first heartbeat) is
    /// older than `heartbeat-timeout`.
    Unresponsive,
    /// An enrolled agent that is not connected.
    Disconnected,
    /// An agent whose name was revoked: refused, whatever key or token it presents, until an
    /// operator admits it again.
    Revoked,
    /// An agent admitted again by an operator after a revocation, whose enrolled key is still
    /// the revoked one: it must enrol with a new key and the token.
    Admitted,
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

impl BuilderState {
    /// Returns its JSON spelling, e.g. `unresponsive`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Disabled => "disabled",
            Self::Unresponsive => "unresponsive",
            Self::Disconnected => "disconnected",
            Self::Revoked => "revoked",
            Self::Admitted => "admitted",
        }
    }
}

impl fmt::Display for BuilderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for BuilderState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One builder as the JSON API and the CLI show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuilderView {
    /// `local` or the agent's name.
    pub name: String,
    /// Local machine or agent.
    pub kind: BuilderKind,
    /// Whether it takes builds.
    pub state: BuilderState,
    /// The systems it is used for (an agent's offer capped by its `builders.remote` entry).
    pub systems: Vec<String>,
    /// The features it is used for (capped likewise).
    pub features: Vec<String>,
    /// How many builds run on it at once at most (capped likewise).
    pub max_jobs: u32,
    /// How many builds are `running` on it.
    pub running: u32,
    /// `running / max_jobs`; 0 when `max_jobs` is 0.
    pub load: f64,
    /// The builds `running` on it, oldest first.
    pub running_builds: Vec<RunningBuild>,
    /// An agent's last heartbeat.
    pub last_heartbeat_at: Option<Timestamp>,
    /// When an agent's current connection was made; `None` while disconnected (and for local).
    pub connected_at: Option<Timestamp>,
    /// When an agent's name was revoked, while it is.
    pub revoked_at: Option<Timestamp>,
    /// Who revoked it.
    pub revoked_by: Option<String>,
    /// When an operator last admitted it again after a revocation.
    pub admitted_at: Option<Timestamp>,
    /// Who admitted it.
    pub admitted_by: Option<String>,
    /// An agent's key fingerprint; `None` for local.
    pub key_fingerprint: Option<String>,
}

/// Returns the builders as operators see them: the local builder of the spec, then every
/// enrolled agent by name, each with its state at `now`, its offer capped by the spec and the
/// builds `running` on it (from [`StatusDb::running_builds`]). Running builds on a builder that
/// is neither local nor enrolled are not shown.
pub fn builder_views(
    spec_builders: &Builders,
    mut agents: Vec<AgentRow>,
    mut running: BTreeMap<String, Vec<RunningBuild>>,
    now: Timestamp,
) -> Vec<BuilderView> {
    let load = |running: u32, max_jobs: u32| {
        if max_jobs == 0 {
            0.0
        } else {
            f64::from(running) / f64::from(max_jobs)
        }
    };
    let count = |builds: &[RunningBuild]| u32::try_from(builds.len()).unwrap_or(u32::MAX);
    let local = &spec_builders.local;
    let local_builds = running.remove(BuilderName::LOCAL).unwrap_or_default();
    let local_running = count(&local_builds);
    let mut out = vec![BuilderView {
        name: BuilderName::LOCAL.to_owned(),
        kind: BuilderKind::Local,
        state: if local.max_jobs == 0 {
            BuilderState::Disabled
        } else {
            BuilderState::Ready
        },
        systems: local.systems.iter().map(ToString::to_string).collect(),
        features: local.features.clone(),
        max_jobs: local.max_jobs,
        running: local_running,
        load: load(local_running, local.max_jobs),
        running_builds: local_builds,
        last_heartbeat_at: None,
        connected_at: None,
        revoked_at: None,
        revoked_by: None,
        admitted_at: None,
        admitted_by: None,
        key_fingerprint: None,
    }];
    agents.sort_by(|a, b| a.name.cmp(&b.name));
    let timeout = spec_builders.heartbeat_timeout.to_std();
    for agent in agents {
        let state = match (agent.revoked_at, agent.key_revoked, agent.connected_at) {
            (Some(_), _, _) => BuilderState::Revoked,
            (None, true, _) => BuilderState::Admitted,
            (None, false, None) => BuilderState::Disconnected,
            (None, false, Some(connected)) => {
                // A heartbeat older than the connection belongs to an earlier one.
                let seen = agent
                    .last_heartbeat_at
                    .map_or(connected, |h| h.max(connected));
                if now.since(seen) <= timeout {
                    BuilderState::Ready
                } else {
                    BuilderState::Unresponsive
                }
            }
        };
        let entry = BuilderName::new(agent.name.as_str())
            .ok()
            .and_then(|name| spec_builders.remote.get(&name));
        let (systems, features, max_jobs) = match entry {
            Some(entry) => {
                let capped = entry.cap(&Offer {
                    systems: agent
                        .systems
                        .iter()
                        .filter_map(|s| System::new(s.as_str()).ok())
                        .collect(),
                    features: agent.features,
                    max_jobs: agent.max_jobs,
                });
                (
                    capped.systems.iter().map(ToString::to_string).collect(),
                    capped.features,
                    capped.max_jobs,
                )
            }
            None => (agent.systems, agent.features, agent.max_jobs),
        };
        let builds = running.remove(&agent.name).unwrap_or_default();
        let n = count(&builds);
        out.push(BuilderView {
            state,
            kind: BuilderKind::Agent,
            systems,
            features,
            max_jobs,
            running: n,
            load: load(n, max_jobs),
            running_builds: builds,
            last_heartbeat_at: agent.last_heartbeat_at,
            connected_at: agent.connected_at,
            revoked_at: agent.revoked_at,
            revoked_by: agent.revoked_by,
            admitted_at: agent.admitted_at,
            admitted_by: agent.admitted_by,
            key_fingerprint: Some(agent.key_fingerprint),
            name: agent.name,
        });
    }
    out
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
            .prepare_cached(
                "SELECT COALESCE(b.builder, 'local'), b.drv_path, b.started_at, b.attempts, \
                 j.id, j.evaluation_id, j.attr \
                 FROM builds b LEFT JOIN jobs j ON j.drv_path = b.drv_path \
                 AND j.state IN ('queued', 'building') \
                 WHERE b.state = 'running' \
                 ORDER BY 1, b.started_at, b.drv_path, j.id",
            )
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
        assert_eq!(rows[0].systems, systems);
        assert!(!rows[0].key_revoked);
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

    mod views {
        use std::time::Duration;

        use reconix_spec::{BuilderName, RemoteBuilder, System};

        use super::*;
        use crate::testing::{building_eval, drv, job};
        use crate::{BuildState, JobState};

        const TIMEOUT: i64 = 30;

        fn builders() -> Builders {
            Builders {
                heartbeat_timeout: Duration::from_secs(TIMEOUT.unsigned_abs()).into(),
                ..Builders::default()
            }
        }

        fn strings(items: &[&str]) -> Vec<String> {
            items.iter().map(|s| (*s).to_owned()).collect()
        }

        fn agent(name: &str) -> AgentRow {
            AgentRow {
                name: name.to_owned(),
                key_fingerprint: format!("SHA256:{name}"),
                systems: strings(&["aarch64-linux", "x86_64-linux"]),
                features: strings(&["kvm", "big-parallel"]),
                max_jobs: 4,
                enrolled_at: T0,
                revoked_at: None,
                connected_at: Some(T0),
                last_heartbeat_at: Some(at(10_000)),
                running: 0,
                revoked_by: None,
                admitted_at: None,
                admitted_by: None,
                key_revoked: false,
            }
        }

        fn running_build(n: u64) -> RunningBuild {
            RunningBuild {
                drv_path: drv(n),
                started_at: Some(T0),
                attempts: 1,
                jobs: Vec::new(),
            }
        }

        fn view<'v>(views: &'v [BuilderView], name: &str) -> &'v BuilderView {
            views.iter().find(|v| v.name == name).unwrap()
        }

        #[test]
        fn the_local_builder_should_come_first_with_the_spec_offer_and_its_builds() {
            let running = BTreeMap::from([(
                "local".to_owned(),
                vec![running_build(1), running_build(2), running_build(3)],
            )]);
            let views = builder_views(&builders(), vec![agent("b"), agent("a")], running, T0);
            let names: Vec<_> = views.iter().map(|v| v.name.as_str()).collect();
            assert_eq!(names, ["local", "a", "b"]);
            let local = &views[0];
            assert_eq!(
                (local.kind, local.state, local.max_jobs, local.running),
                (BuilderKind::Local, BuilderState::Ready, 2, 3)
            );
            assert!((local.load - 1.5).abs() < f64::EPSILON);
            assert_eq!(local.systems, ["x86_64-linux"]);
            assert_eq!(local.running_builds.len(), 3);
            assert_eq!(
                (local.key_fingerprint.as_deref(), local.connected_at),
                (None, None)
            );
        }

        #[test]
        fn a_local_builder_without_slots_should_be_disabled_with_no_load() {
            let mut spec = builders();
            spec.local.max_jobs = 0;
            let views = builder_views(&spec, Vec::new(), BTreeMap::new(), T0);
            assert_eq!(views.len(), 1);
            assert_eq!(views[0].state, BuilderState::Disabled);
            assert!(views[0].load.abs() < f64::EPSILON);
        }

        #[test]
        fn an_agent_heard_from_within_the_timeout_should_be_ready() {
            let now = at(10_000 + TIMEOUT * 1000);
            let views = builder_views(&builders(), vec![agent("a")], BTreeMap::new(), now);
            let a = view(&views, "a");
            assert_eq!((a.kind, a.state), (BuilderKind::Agent, BuilderState::Ready));
            assert_eq!(a.key_fingerprint.as_deref(), Some("SHA256:a"));
            assert_eq!(a.last_heartbeat_at, Some(at(10_000)));
        }

        #[test]
        fn an_agent_silent_past_the_timeout_should_be_unresponsive() {
            let now = at(10_001 + TIMEOUT * 1000);
            let views = builder_views(&builders(), vec![agent("a")], BTreeMap::new(), now);
            assert_eq!(view(&views, "a").state, BuilderState::Unresponsive);
        }

        #[test]
        fn an_agent_without_heartbeat_should_be_judged_by_its_connection_time() {
            let mut fresh = agent("a");
            fresh.last_heartbeat_at = None;
            fresh.connected_at = Some(at(50_000));
            // A heartbeat from an earlier connection does not make it unresponsive either.
            let mut reconnected = agent("b");
            reconnected.last_heartbeat_at = Some(T0);
            reconnected.connected_at = Some(at(50_000));
            let mut stale = agent("c");
            stale.last_heartbeat_at = None;
            let views = builder_views(
                &builders(),
                vec![fresh, reconnected, stale],
                BTreeMap::new(),
                at(60_000),
            );
            assert_eq!(view(&views, "a").state, BuilderState::Ready);
            assert_eq!(view(&views, "b").state, BuilderState::Ready);
            assert_eq!(view(&views, "c").state, BuilderState::Unresponsive);
        }

        #[test]
        fn disconnected_and_revoked_agents_should_say_so() {
            let mut gone = agent("a");
            gone.connected_at = None;
            let mut revoked = agent("b");
            revoked.revoked_at = Some(at(1));
            let views = builder_views(&builders(), vec![gone, revoked], BTreeMap::new(), at(1));
            assert_eq!(view(&views, "a").state, BuilderState::Disconnected);
            let b = view(&views, "b");
            assert_eq!(
                (b.state, b.revoked_at),
                (BuilderState::Revoked, Some(at(1)))
            );
        }

        #[test]
        fn an_admitted_agent_with_its_revoked_key_should_be_admitted_until_it_enrols_anew() {
            let mut waiting = agent("a");
            waiting.key_revoked = true;
            waiting.connected_at = None;
            waiting.admitted_at = Some(at(5));
            waiting.admitted_by = Some("alice".to_owned());
            let mut back = agent("b");
            back.admitted_at = Some(at(5));
            let views = builder_views(
                &builders(),
                vec![waiting, back],
                BTreeMap::new(),
                at(10_000),
            );
            let a = view(&views, "a");
            assert_eq!(
                (a.state, a.admitted_at, a.admitted_by.as_deref()),
                (BuilderState::Admitted, Some(at(5)), Some("alice"))
            );
            assert_eq!(view(&views, "b").state, BuilderState::Ready);
        }

        #[test]
        fn a_remote_entry_should_cap_an_agents_offer_and_load() {
            let mut spec = builders();
            spec.remote.insert(
                BuilderName::new("a").unwrap(),
                RemoteBuilder {
                    systems: vec![System::new("aarch64-linux").unwrap()],
                    features: strings(&["big-parallel", "nixos-test"]),
                    max_jobs: 2,
                },
            );
            let running = BTreeMap::from([
                ("a".to_owned(), vec![running_build(1)]),
                ("b".to_owned(), vec![running_build(2)]),
            ]);
            let views = builder_views(&spec, vec![agent("a"), agent("b")], running, at(10_000));
            let a = view(&views, "a");
            assert_eq!(a.systems, ["aarch64-linux"]);
            assert_eq!(a.features, ["big-parallel"]);
            assert_eq!((a.max_jobs, a.running), (2, 1));
            assert!((a.load - 0.5).abs() < f64::EPSILON);
            // Without an entry, the agent's own offer.
            let b = view(&views, "b");
            assert_eq!(b.systems, ["aarch64-linux", "x86_64-linux"]);
            assert_eq!(b.features, ["kvm", "big-parallel"]);
            assert_eq!(b.max_jobs, 4);
            assert!((b.load - 0.25).abs() < f64::EPSILON);
            // A drained agent has no load.
            spec.remote
                .get_mut(&BuilderName::new("a").unwrap())
                .unwrap()
                .max_jobs = 0;
            let views = builder_views(&spec, vec![agent("a")], BTreeMap::new(), at(10_000));
            assert_eq!(view(&views, "a").max_jobs, 0);
            assert!(view(&views, "a").load.abs() < f64::EPSILON);
        }

        #[test]
        fn the_json_should_use_snake_case_fields_and_kebab_case_values() {
            let views = builder_views(&builders(), vec![agent("a")], BTreeMap::new(), at(10_000));
            let json = serde_json::to_value(&views).unwrap();
            assert_eq!(json[0]["kind"], "local");
            assert_eq!(json[1]["state"], "ready");
            for field in [
                "name",
                "connected_at",
                "last_heartbeat_at",
                "revoked_at",
                "revoked_by",
                "admitted_at",
                "admitted_by",
                "key_fingerprint",
                "running_builds",
                "max_jobs",
            ] {
                assert!(json[1].get(field).is_some(), "{field} missing: {json}");
            }
            for state in [
                BuilderState::Ready,
                BuilderState::Disabled,
                BuilderState::Unresponsive,
                BuilderState::Disconnected,
                BuilderState::Revoked,
                BuilderState::Admitted,
            ] {
                assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
            }
            for kind in [BuilderKind::Local, BuilderKind::Agent] {
                assert_eq!(serde_json::to_value(kind).unwrap(), kind.to_string());
            }
            let back: Vec<BuilderView> = serde_json::from_value(json).unwrap();
            assert_eq!(back, views);
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
}
