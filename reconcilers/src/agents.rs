//! Enrolment of remote builders and the registry of connected agents.
//!
//! The daemon accepts agents on `builders.enrollment.listen` ([`run_enrollment`]). A connecting
//! agent whose key is enrolled under its name (and not revoked) is admitted; any other must
//! present the enrollment token, and is then enrolled with its key. A wrong or missing token is
//! refused and nothing is recorded. Admitted connections live in [`Agents`] until they drop;
//! each heartbeat is recorded and wakes the `builders` loop, which disconnects a revoked agent
//! or one whose heartbeats stopped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use reconix_agent::coordinator::{AgentConn, Listener, Pending, token_matches};
use reconix_agent::protocol::Refusal;
use reconix_spec::{Spec, Timestamp};
use reconix_status::{AgentAdmission, AgentHello, Status};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::Wakers;
use crate::forges::read_secret;

/// The connected, admitted agents by name.
#[derive(Debug, Clone, Default)]
pub struct Agents {
    inner: Arc<Mutex<HashMap<String, Arc<AgentConn>>>>,
}

impl Agents {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<AgentConn>>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns the connection of agent `name`, if it is connected.
    pub fn get(&self, name: &str) -> Option<Arc<AgentConn>> {
        self.lock().get(name).cloned()
    }

    /// Returns the names of the connected agents, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.lock().keys().cloned().collect();
        names.sort();
        names
    }

    /// Registers a connection; returns the one it replaces (the same agent reconnected).
    fn insert(&self, conn: Arc<AgentConn>) -> Option<Arc<AgentConn>> {
        self.lock().insert(conn.name().to_string(), conn)
    }

    /// Forgets `conn` unless a newer connection of the same agent replaced it.
    fn remove(&self, conn: &Arc<AgentConn>) {
        let mut map = self.lock();
        if map
            .get(conn.name().as_str())
            .is_some_and(|c| Arc::ptr_eq(c, conn))
        {
            map.remove(conn.name().as_str());
        }
    }
}

/// What an agent offers, as recorded in the `agents` table.
#[derive(Debug, Clone)]
struct Offer {
    name: String,
    fingerprint: String,
    systems: Vec<String>,
    features: Vec<String>,
    max_jobs: u32,
}

impl Offer {
    fn hello(&self) -> AgentHello<'_> {
        AgentHello {
            name: &self.name,
            key_fingerprint: &self.fingerprint,
            systems: &self.systems,
            features: &self.features,
            max_jobs: self.max_jobs,
        }
    }
}

/// Why a connecting agent was refused.
fn admit_error(pending: &Pending) -> String {
    format!(
        "agent {} ({}) presented no valid enrollment token",
        pending.hello().name,
        pending.agent_key_fingerprint()
    )
}

/// Accepts agents until `shutdown`.
pub async fn run_enrollment(
    listener: Listener,
    spec: watch::Receiver<Arc<Spec>>,
    status: Status,
    agents: Agents,
    wakers: Wakers,
    shutdown: CancellationToken,
) {
    loop {
        let pending = tokio::select! {
            () = shutdown.cancelled() => return,
            p = listener.accept() => p,
        };
        let pending = match pending {
            Ok(p) => p,
            Err(reconix_agent::Error::ListenerClosed) => {
                warn!("the enrollment listener stopped");
                return;
            }
            // Port scanners and silent or garbled peers: the listener already dropped (and
            // logged) them.
            Err(_) => continue,
        };
        let spec = Arc::clone(&spec.borrow());
        if let Err(err) = admit(pending, &spec, &status, &agents, &wakers).await {
            warn!(error = %err, "could not admit an agent");
        }
    }
}

async fn admit(
    pending: Pending,
    spec: &Spec,
    status: &Status,
    agents: &Agents,
    wakers: &Wakers,
) -> crate::Result<()> {
    let hello = pending.hello().clone();
    let offer = Offer {
        name: hello.name.to_string(),
        fingerprint: pending.agent_key_fingerprint().to_string(),
        systems: hello.systems.iter().map(ToString::to_string).collect(),
        features: hello.features.clone(),
        max_jobs: hello.max_jobs,
    };
    let name = offer.name.clone();
    let o = offer.clone();
    let admission = status
        .call(move |db| db.agent_admission(&o.name, &o.fingerprint))
        .await?;
    if admission == AgentAdmission::NeedsToken {
        let expected = match &spec.builders.enrollment {
            Some(e) => read_secret(&e.token_file, "enrollment token")?,
            None => {
                pending.reject(Refusal::EnrollmentClosed, "enrollment is not configured");
                return Ok(());
            }
        };
        let valid = hello
            .token
            .as_ref()
            .is_some_and(|t| token_matches(expected.expose().trim(), t.expose().trim()));
        if !valid {
            let reason = admit_error(&pending);
            warn!(reason = %reason, "agent refused");
            // In the background: a refused agent never holds up the next one.
            pending.reject(Refusal::BadToken, &reason);
            return Ok(());
        }
        let o = offer.clone();
        status
            .call(move |db| db.enroll_agent(&o.hello(), Timestamp::now()))
            .await?;
        info!(agent = %name, key = %offer.fingerprint, "agent enrolled");
    }
    let conn = Arc::new(pending.accept());
    let o = offer.clone();
    status
        .call(move |db| db.set_agent_connected(&o.hello(), true, Timestamp::now()))
        .await?;
    info!(agent = %name, peer = %conn.peer(), "agent connected");
    if let Some(old) = agents.insert(Arc::clone(&conn)) {
        // The same agent reconnected: its old connection goes, without holding up the next
        // agent in line.
        tokio::spawn(async move { old.disconnect().await });
    }
    wakers.builds();
    tokio::spawn(watch_agent(
        conn,
        offer,
        status.clone(),
        agents.clone(),
        wakers.clone(),
    ));
    Ok(())
}

/// Records heartbeats until the connection drops; each one wakes the `builders` loop, which
/// disconnects a revoked or silent agent.
async fn watch_agent(
    conn: Arc<AgentConn>,
    offer: Offer,
    status: Status,
    agents: Agents,
    wakers: Wakers,
) {
    let name = conn.name().clone();
    let mut beats = conn.heartbeats();
    let closed = conn.closed();
    tokio::pin!(closed);
    wakers.builders(name.clone());
    loop {
        tokio::select! {
            () = &mut closed => break,
            changed = beats.changed() => {
                if changed.is_err() {
                    break;
                }
                let running = beats.borrow_and_update().as_ref().map_or(0, |h| h.running);
                let n = name.to_string();
                let recorded = status
                    .call(move |db| db.record_heartbeat(&n, running, Timestamp::now()))
                    .await;
                if let Err(err) = recorded {
                    warn!(agent = %name, error = %err, "could not record a heartbeat");
                }
                wakers.builders(name.clone());
            }
        }
    }
    agents.remove(&conn);
    let recorded = status
        .call(move |db| db.set_agent_connected(&offer.hello(), false, Timestamp::now()))
        .await;
    if let Err(err) = recorded {
        warn!(agent = %name, error = %err, "could not record a disconnect");
    }
    info!(agent = %name, "agent disconnected");
    wakers.builds();
}
