//! The `builders` loop: only live, enrolled agents stay connected.
//!
//! Key: a connected agent. Observed: whether it is still connected, its last sign of life
//! (heartbeat, or the connection itself before the first heartbeat), its key and what the
//! state database says about its name and key. Step: disconnect it — when the enrolment rule
//! ([`crate::agents::admission`]) would no longer admit it (its key or name was revoked, or its
//! key replaced; it is told why) or when it sent no heartbeat for
//! `builders.heartbeat-timeout` ([`reconix_spec::Builders::liveness`], the rule placement and
//! the builders' views use too). Disconnecting ends its serve channels, so the
//! builds running there end as transient failures and the `builds` loop requeues them on other
//! builders.
//!
//! Every heartbeat wakes this loop for its agent; otherwise it looks again when the heartbeat
//! deadline passes.

use std::time::Duration;

use reconix_agent::protocol::Refusal;
use reconix_spec::{BuilderName, Liveness, Spec, Timestamp};
use reconix_status::AgentCredentials;
use serde::Serialize;
use tracing::{info, warn};

use crate::agents::{Admission, Token, admission, refusal_message};
use crate::context::{Ctx, Ports};
use crate::runtime::{Action, Plan, Reconciler};
use crate::{Error, Result};

/// The `builders` reconciler.
#[derive(Debug, Default)]
pub struct BuildersLoop<P>(std::marker::PhantomData<fn() -> P>);

impl<P> BuildersLoop<P> {
    /// Creates the reconciler.
    pub fn new() -> Self {
        Self(std::marker::PhantomData)
    }
}

/// What `observe` saw of one agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Whether it is connected now.
    pub connected: bool,
    /// Its last sign of life.
    pub last_seen: Option<Timestamp>,
    /// The fingerprint of the key it connected with.
    pub key: String,
    /// What the state database says about its name and key.
    pub credentials: AgentCredentials,
}

/// One step of the `builders` loop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
    /// Drops the agent's connection.
    Disconnect {
        /// Why.
        reason: String,
        /// What the agent is told, when it is no longer admitted (a silent agent is told
        /// nothing and reconnects at once).
        #[serde(skip_serializing_if = "Option::is_none")]
        refusal: Option<Refusal>,
    },
}

/// Plans the `builders` loop for one agent (pure).
pub fn plan(key: &BuilderName, desired: &Spec, observed: &Observed, now: Timestamp) -> Plan<Step> {
    if !observed.connected {
        return Plan {
            steps: Vec::new(),
            then: Action::await_change(),
        };
    }
    // A connected agent stays only while its key alone would admit it (the token was checked
    // once, at enrolment).
    let refusal = match admission(&observed.credentials, &observed.key, || Token::Missing) {
        Admission::Known => None,
        Admission::Refuse(refusal) => Some(refusal),
        // Unreachable without a token; refusing is the safe reading.
        Admission::Enrol | Admission::Defer => Some(Refusal::BadToken),
    };
    if let Some(refusal) = refusal {
        return Plan {
            steps: vec![Step::Disconnect {
                reason: refusal_message(refusal, key.as_str(), &observed.key),
                refusal: Some(refusal),
            }],
            then: Action::await_change(),
        };
    }
    match desired.builders.liveness(now, observed.last_seen) {
        Liveness::Alive { left } => Plan {
            steps: Vec::new(),
            then: Action::requeue(left + Duration::from_millis(1)),
        },
        Liveness::Silent { quiet } => {
            let timeout = desired.builders.heartbeat_timeout.to_std();
            Plan {
                steps: vec![Step::Disconnect {
                    reason: format!(
                        "no heartbeat for {}s (heartbeat-timeout {}s)",
                        quiet.unwrap_or(timeout).as_secs(),
                        timeout.as_secs()
                    ),
                    refusal: None,
                }],
                then: Action::await_change(),
            }
        }
    }
}

impl<P: Ports> Reconciler for BuildersLoop<P> {
    const NAME: &'static str = "builders";
    type Spec = Spec;
    type Context = Ctx<P>;
    type Key = BuilderName;
    type Observed = Observed;
    type Step = Step;
    type Error = Error;

    async fn keys(&self, _spec: &Spec, cx: &Ctx<P>) -> Result<Vec<BuilderName>> {
        Ok(cx.agents.names())
    }

    async fn observe(&self, key: &BuilderName, _spec: &Spec, cx: &Ctx<P>) -> Result<Observed> {
        let Some(conn) = cx.agents.get(key).filter(|c| !c.is_closed()) else {
            return Ok(Observed {
                connected: false,
                last_seen: None,
                key: String::new(),
                credentials: AgentCredentials::default(),
            });
        };
        let (name, fingerprint) = (key.clone(), conn.fingerprint().to_string());
        let fp = fingerprint.clone();
        let (row, credentials) = cx
            .status
            .call(move |db| {
                let row = db.agents()?.into_iter().find(|a| a.name == name);
                Ok((row, db.agent_credentials(name.as_str(), &fp)?))
            })
            .await?;
        Ok(Observed {
            connected: true,
            last_seen: row.and_then(|r| r.last_seen()),
            key: fingerprint,
            credentials,
        })
    }

    fn plan(key: &BuilderName, desired: &Spec, observed: &Observed, now: Timestamp) -> Plan<Step> {
        plan(key, desired, observed, now)
    }

    async fn apply(&self, key: &BuilderName, step: Step, cx: &Ctx<P>) -> Result<()> {
        let Step::Disconnect { reason, refusal } = step;
        if let Some(conn) = cx.agents.get(key) {
            warn!(agent = %key, %reason, "disconnecting agent");
            match refusal {
                Some(refusal) => conn.refuse(refusal, &reason).await,
                None => conn.disconnect().await,
            }
            info!(agent = %key, "agent disconnected; its builds will be requeued");
        }
        cx.wakers.builds();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        reconix_spec::parse(
            "builders:\n  heartbeat-timeout: 10s\n",
            std::path::Path::new("t.yaml"),
        )
        .unwrap()
    }

    fn key() -> BuilderName {
        BuilderName::new("a1").unwrap()
    }

    const KEY: &str = "SHA256:k1";

    fn observed(last_seen_ms: Option<i64>, credentials: AgentCredentials) -> Observed {
        Observed {
            connected: true,
            last_seen: last_seen_ms.map(Timestamp),
            key: KEY.to_owned(),
            credentials,
        }
    }

    fn enrolled() -> AgentCredentials {
        AgentCredentials {
            enrolled_key: Some(KEY.to_owned()),
            ..AgentCredentials::default()
        }
    }

    #[test]
    fn a_live_agent_should_be_looked_at_again_when_its_heartbeat_is_due() {
        let p = plan(
            &key(),
            &spec(),
            &observed(Some(1_000), enrolled()),
            Timestamp(4_000),
        );
        assert!(p.steps.is_empty());
        assert_eq!(
            p.then,
            Action::requeue(Duration::from_millis(7_001)),
            "10 s timeout, 3 s quiet"
        );
    }

    #[test]
    fn a_silent_agent_should_be_disconnected() {
        let p = plan(
            &key(),
            &spec(),
            &observed(Some(1_000), enrolled()),
            Timestamp(11_000),
        );
        assert!(
            matches!(&p.steps[..], [Step::Disconnect { reason, refusal: None }] if reason.starts_with("no heartbeat for 10s")),
            "{:?}",
            p.steps
        );
    }

    #[test]
    fn a_revoked_agent_should_be_told_and_disconnected_at_once() {
        let key_revoked = AgentCredentials {
            name_revoked_at: Some(Timestamp(1_200)),
            key_revoked_at: Some(Timestamp(1_200)),
            ..enrolled()
        };
        // Its key was replaced (another agent enrolled under its name with the token).
        let replaced = AgentCredentials {
            enrolled_key: Some("SHA256:k2".to_owned()),
            ..AgentCredentials::default()
        };
        for (credentials, expected) in [
            (key_revoked, Refusal::KeyRevoked),
            (replaced, Refusal::BadToken),
        ] {
            let p = plan(
                &key(),
                &spec(),
                &observed(Some(1_000), credentials),
                Timestamp(1_500),
            );
            assert!(
                matches!(&p.steps[..], [Step::Disconnect { refusal: Some(r), .. }] if *r == expected),
                "{:?}",
                p.steps
            );
        }
    }

    #[test]
    fn a_disconnected_agent_should_need_nothing() {
        let o = Observed {
            connected: false,
            ..observed(Some(0), AgentCredentials::default())
        };
        let p = plan(&key(), &spec(), &o, Timestamp(100_000));
        assert!(p.steps.is_empty());
    }
}
