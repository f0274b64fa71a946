//! Enrolment of remote builders and the registry of connected agents.
//!
//! The daemon accepts agents on `builders.enrollment.listen` ([`run_enrollment`]) and decides
//! each one with [`admission`] (pure; its table is in the tests):
//!
//! 1. a revoked key is refused for good, whatever token comes with it;
//! 2. a revoked name is refused with any key until an operator runs
//!    `reconix builders admit NAME`;
//! 3. the key enrolled under the name is admitted (the token is not looked at, so rotating it
//!    does not touch enrolled agents);
//! 4. any other key must present the enrollment token, read from `token-file` for every such
//!    agent (so writing a new token rotates it), and is then enrolled under the name. A token
//!    file that exists but cannot be read now (out of file descriptors) defers the decision:
//!    the agent is dropped without a verdict and dials again within a second.
//!
//! A refused agent is told why on its control channel, in the background: refusals never hold
//! up the agents behind them. Nothing is recorded for it. Admitted connections live in
//! [`Agents`] (the registry in `connected`, which `Ctx` holds) until they drop; each heartbeat is recorded and wakes the `builders` loop, which
//! disconnects an agent that [`admission`] would no longer admit, or whose heartbeats stopped.

use std::sync::Arc;

use reconix_agent::coordinator::{AgentConn, Listener, Pending, token_matches};
use reconix_agent::protocol::Refusal;
use reconix_spec::{Secret, Spec, Timestamp};
use reconix_status::{AgentCredentials, AgentHello, Status};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::Wakers;
pub use crate::connected::Agents;

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

/// What the enrolment token presented by an agent is worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Token {
    /// It matches the token file.
    Valid,
    /// None was sent.
    Missing,
    /// It does not match (or the token file does not exist).
    Wrong,
    /// The token file exists but cannot be read now (say the daemon is out of file
    /// descriptors): the agent is neither refused nor admitted.
    Unavailable,
    /// Enrolment is not configured: there is no token to match.
    NotConfigured,
}

/// What to do with a connecting agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "admission", content = "reason")]
pub enum Admission {
    /// Its key is the one enrolled under its name: admit it.
    Known,
    /// A new key with a valid token: enrol it under the name (replacing an older key), then
    /// admit it.
    Enrol,
    /// Refuse it.
    Refuse(Refusal),
    /// Decide later: drop the connection without a verdict, so that the agent dials again
    /// soon (the token file could not be read).
    Defer,
}

/// Decides whether an agent presenting `key` under a name with `credentials` may work (pure).
/// The order matters: revocations win over everything, a known key needs no token. `token`
/// is asked only when the token matters, so that known agents never depend on the token file.
pub fn admission(
    credentials: &AgentCredentials,
    key: &str,
    token: impl FnOnce() -> Token,
) -> Admission {
    if credentials.key_revoked_at.is_some() {
        return Admission::Refuse(Refusal::KeyRevoked);
    }
    if credentials.name_revoked_at.is_some() {
        return Admission::Refuse(Refusal::NameRevoked);
    }
    if credentials.enrolled_key.as_deref() == Some(key) {
        return Admission::Known;
    }
    match token() {
        Token::Valid => Admission::Enrol,
        Token::Missing | Token::Wrong => Admission::Refuse(Refusal::BadToken),
        Token::Unavailable => Admission::Defer,
        Token::NotConfigured => Admission::Refuse(Refusal::EnrollmentClosed),
    }
}

/// Returns what a connected agent presenting `key` is told when it is refused (it logs the
/// message) and what the daemon logs.
pub fn refusal_message(refusal: Refusal, name: &str, key: &str) -> String {
    match refusal {
        Refusal::KeyRevoked => format!("the key {key} of agent {name} was revoked"),
        Refusal::NameRevoked => {
            format!("agent {name} was revoked; `reconix builders admit {name}` lets it enrol again")
        }
        Refusal::BadToken => {
            format!("agent {name} ({key}) presented no valid enrollment token")
        }
        Refusal::EnrollmentClosed => "enrollment is not configured".to_owned(),
        Refusal::Other => format!("agent {name} ({key}) is refused"),
    }
}

/// Checks the token an agent presented against the token file, read now (so that a new token
/// takes effect at the next agent that needs one).
fn check_token(spec: &Spec, presented: Option<&Secret>) -> Token {
    let Some(enrollment) = &spec.builders.enrollment else {
        return Token::NotConfigured;
    };
    let Some(presented) = presented else {
        return Token::Missing;
    };
    let path = enrollment.token_file.path().display();
    match enrollment.token_file.read() {
        Ok(expected) if token_matches(expected.expose().trim(), presented.expose().trim()) => {
            Token::Valid
        }
        Ok(_) => Token::Wrong,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            warn!(%path, "the enrollment token file does not exist; refusing agents that need a token");
            Token::Wrong
        }
        Err(err) => {
            warn!(%path, error = %err, "cannot read the enrollment token file; agents that need a token will try again");
            Token::Unavailable
        }
    }
}

/// Accepts agents until `shutdown`. Each one is decided in turn; nothing in here waits on an
/// agent (refusals and replaced connections finish in the background).
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
    let (n, fp) = (offer.name.clone(), offer.fingerprint.clone());
    let credentials = status.call(move |db| db.agent_credentials(&n, &fp)).await?;
    let token = || check_token(spec, hello.token.as_ref());
    match admission(&credentials, &offer.fingerprint, token) {
        Admission::Refuse(refusal) => {
            let message = refusal_message(refusal, &name, &offer.fingerprint);
            warn!(agent = %name, key = %offer.fingerprint, peer = %pending.peer(), %refusal, reason = %message, "agent refused");
            pending.reject(refusal, &message);
            return Ok(());
        }
        Admission::Enrol => {
            let o = offer.clone();
            status
                .call(move |db| db.enroll_agent(&o.hello(), Timestamp::now()))
                .await?;
            info!(agent = %name, key = %offer.fingerprint, "agent enrolled");
        }
        Admission::Defer => {
            // Dropping it disconnects without a verdict: the agent dials again within a second.
            drop(pending);
            return Ok(());
        }
        Admission::Known => {}
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
    // A connection replaced by a newer one of the same agent leaves the record to it.
    if agents.remove(&conn) {
        let recorded = status
            .call(move |db| db.set_agent_connected(&offer.hello(), false, Timestamp::now()))
            .await;
        if let Err(err) = recorded {
            warn!(agent = %name, error = %err, "could not record a disconnect");
        }
    }
    info!(agent = %name, "agent disconnected");
    wakers.builds();
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "SHA256:key";
    const OTHER: &str = "SHA256:other";

    fn enrolled(key: &str) -> AgentCredentials {
        AgentCredentials {
            enrolled_key: Some(key.to_owned()),
            ..AgentCredentials::default()
        }
    }

    fn name_revoked(key: &str) -> AgentCredentials {
        AgentCredentials {
            name_revoked_at: Some(Timestamp(1)),
            ..enrolled(key)
        }
    }

    fn key_revoked(c: AgentCredentials) -> AgentCredentials {
        AgentCredentials {
            key_revoked_at: Some(Timestamp(1)),
            ..c
        }
    }

    #[test]
    fn admission_should_follow_its_table() {
        use Admission::{Enrol, Known, Refuse};
        use Token::{Missing, NotConfigured, Unavailable, Valid, Wrong};
        let unknown = AgentCredentials::default();
        // (what the database says, the key presented, the token) → decision
        let table = [
            // A new name: the token decides.
            (unknown.clone(), KEY, Valid, Enrol),
            (unknown.clone(), KEY, Missing, Refuse(Refusal::BadToken)),
            (unknown.clone(), KEY, Wrong, Refuse(Refusal::BadToken)),
            (
                unknown.clone(),
                KEY,
                NotConfigured,
                Refuse(Refusal::EnrollmentClosed),
            ),
            // The token file cannot be read now: neither refused nor enrolled.
            (unknown.clone(), KEY, Unavailable, Admission::Defer),
            (enrolled(KEY), KEY, Unavailable, Known),
            // The enrolled key needs no token: rotating it leaves enrolled agents alone.
            (enrolled(KEY), KEY, Valid, Known),
            (enrolled(KEY), KEY, Wrong, Known),
            (enrolled(KEY), KEY, Missing, Known),
            (enrolled(KEY), KEY, NotConfigured, Known),
            // Another key for an enrolled name: the token decides (and replaces the key).
            (enrolled(OTHER), KEY, Valid, Enrol),
            (enrolled(OTHER), KEY, Wrong, Refuse(Refusal::BadToken)),
            // A revoked name: refused with any key and any token, until admitted.
            (name_revoked(KEY), KEY, Valid, Refuse(Refusal::NameRevoked)),
            (
                name_revoked(OTHER),
                KEY,
                Valid,
                Refuse(Refusal::NameRevoked),
            ),
            (
                name_revoked(OTHER),
                KEY,
                Missing,
                Refuse(Refusal::NameRevoked),
            ),
            // A revoked key: refused for good, under any name, even after the admission.
            (
                key_revoked(enrolled(KEY)),
                KEY,
                Valid,
                Refuse(Refusal::KeyRevoked),
            ),
            (
                key_revoked(unknown.clone()),
                KEY,
                Valid,
                Refuse(Refusal::KeyRevoked),
            ),
            (
                key_revoked(enrolled(OTHER)),
                KEY,
                Valid,
                Refuse(Refusal::KeyRevoked),
            ),
            (
                key_revoked(name_revoked(KEY)),
                KEY,
                Valid,
                Refuse(Refusal::KeyRevoked),
            ),
        ];
        for (credentials, key, token, expected) in table {
            assert_eq!(
                admission(&credentials, key, || token),
                expected,
                "{credentials:?} {key} {token:?}"
            );
        }
    }

    #[test]
    fn a_known_or_revoked_agent_should_never_need_the_token_file() {
        let asked = std::cell::Cell::new(false);
        let token = || {
            asked.set(true);
            Token::Wrong
        };
        assert_eq!(admission(&enrolled(KEY), KEY, token), Admission::Known);
        assert_eq!(
            admission(&name_revoked(OTHER), KEY, token),
            Admission::Refuse(Refusal::NameRevoked)
        );
        assert!(!asked.get());
        admission(&enrolled(OTHER), KEY, token);
        assert!(asked.get());
    }

    #[test]
    fn refusal_messages_should_name_the_agent_and_what_to_do() {
        let m = refusal_message(Refusal::NameRevoked, "arm1", KEY);
        assert!(m.contains("reconix builders admit arm1"), "{m}");
        let m = refusal_message(Refusal::KeyRevoked, "arm1", KEY);
        assert!(m.contains(KEY) && m.contains("revoked"), "{m}");
        let m = refusal_message(Refusal::BadToken, "arm1", KEY);
        assert!(m.contains("no valid enrollment token"), "{m}");
    }

    #[test]
    fn the_token_file_should_be_read_at_every_check() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "first\n").unwrap();
        let mut spec = Spec::default();
        spec.builders.enrollment = Some(reconix_spec::Enrollment::new(
            "127.0.0.1:0".parse().unwrap(),
            reconix_spec::SecretFile::new(&file),
        ));
        let first = Secret::new("first");
        let second = Secret::new("second");
        assert_eq!(check_token(&spec, Some(&first)), Token::Valid);
        assert_eq!(check_token(&spec, Some(&second)), Token::Wrong);
        assert_eq!(check_token(&spec, None), Token::Missing);
        // Rotated: the old token is refused at once, the new one accepted.
        std::fs::write(&file, "second\n").unwrap();
        assert_eq!(check_token(&spec, Some(&first)), Token::Wrong);
        assert_eq!(check_token(&spec, Some(&second)), Token::Valid);
        // Gone: nobody needing a token gets in.
        std::fs::remove_file(&file).unwrap();
        assert_eq!(check_token(&spec, Some(&second)), Token::Wrong);
        // There but unreadable (here a directory; in life, out of file descriptors): later.
        std::fs::create_dir(&file).unwrap();
        assert_eq!(check_token(&spec, Some(&second)), Token::Unavailable);
        spec.builders.enrollment = None;
        assert_eq!(check_token(&spec, Some(&second)), Token::NotConfigured);
    }
}
