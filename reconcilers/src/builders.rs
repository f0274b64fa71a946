//! The `builders` loop: only live, enrolled agents stay connected.
//!
//! Key: a connected agent. Observed: whether it is still connected, its last sign of life
//! (heartbeat, or the connection itself before the first heartbeat) and whether its key is still
//! enrolled. Step: disconnect it — when it was revoked (or its key replaced) or when it sent no
//! heartbeat for `builders.heartbeat-timeout`. Disconnecting ends its serve channels, so the
//! builds running there end as transient failures and the `builds` loop requeues them on other
//! builders.
//!
//! Every heartbeat wakes this loop for its agent; otherwise it looks again when the heartbeat
//! deadline passes.

use std::time::Duration;

use reconix_spec::{BuilderName, Spec, Timestamp};
use reconix_status::AgentAdmission;
use serde::Serialize;
use tracing::{info, warn};

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
    /// Whether its key is enrolled under its name and not revoked.
    pub admitted: bool,
}

/// One step of the `builders` loop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
    /// Drops the agent's connection.
    Disconnect {
        /// Why.
        reason: String,
    },
}

/// Plans the `builders` loop for one agent (pure).
pub fn plan(_key: &BuilderName, desired: &Spec, observed: &Observed, now: Timestamp) -> Plan<Step> {
    if !observed.connected {
        return Plan {
            steps: Vec::new(),
            then: Action::await_change(),
        };
    }
    if !observed.admitted {
        return Plan {
            steps: vec![Step::Disconnect {
                reason: "its key was revoked".to_owned(),
            }],
            then: Action::await_change(),
        };
    }
    let timeout = desired.builders.heartbeat_timeout.to_std();
    let quiet = observed.last_seen.map_or(timeout, |seen| now.since(seen));
    if quiet >= timeout {
        return Plan {
            steps: vec![Step::Disconnect {
                reason: format!(
                    "no heartbeat for {}s (heartbeat-timeout {}s)",
                    quiet.as_secs(),
                    timeout.as_secs()
                ),
            }],
            then: Action::await_change(),
        };
    }
    Plan {
        steps: Vec::new(),
        then: Action::requeue(timeout - quiet + Duration::from_millis(1)),
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
        Ok(cx
            .agents
            .names()
            .iter()
            .filter_map(|n| BuilderName::new(n).ok())
            .collect())
    }

    async fn observe(&self, key: &BuilderName, _spec: &Spec, cx: &Ctx<P>) -> Result<Observed> {
        let Some(conn) = cx.agents.get(key.as_str()).filter(|c| !c.is_closed()) else {
            return Ok(Observed {
                connected: false,
                last_seen: None,
                admitted: false,
            });
        };
        let (name, fingerprint) = (key.to_string(), conn.fingerprint().to_string());
        let (row, admission) = cx
            .status
            .call(move |db| {
                let row = db.agents()?.into_iter().find(|a| a.name == name);
                Ok((row, db.agent_admission(&name, &fingerprint)?))
            })
            .await?;
        Ok(Observed {
            connected: true,
            last_seen: row.and_then(|r| r.last_heartbeat_at.max(r.connected_at)),
            admitted: admission == AgentAdmission::Known,
        })
    }

    fn plan(key: &BuilderName, desired: &Spec, observed: &Observed, now: Timestamp) -> Plan<Step> {
        plan(key, desired, observed, now)
    }

    async fn apply(&self, key: &BuilderName, step: Step, cx: &Ctx<P>) -> Result<()> {
        let Step::Disconnect { reason } = step;
        if let Some(conn) = cx.agents.get(key.as_str()) {
            warn!(agent = %key, %reason, "disconnecting agent");
            conn.disconnect().await;
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

    fn observed(last_seen_ms: Option<i64>, admitted: bool) -> Observed {
        Observed {
            connected: true,
            last_seen: last_seen_ms.map(Timestamp),
            admitted,
        }
    }

    #[test]
    fn a_live_agent_should_be_looked_at_again_when_its_heartbeat_is_due() {
        let p = plan(
            &key(),
            &spec(),
            &observed(Some(1_000), true),
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
            &observed(Some(1_000), true),
            Timestamp(11_000),
        );
        assert!(
            matches!(&p.steps[..], [Step::Disconnect { reason }] if reason.starts_with("no heartbeat for 10s")),
            "{:?}",
            p.steps
        );
    }

    #[test]
    fn a_revoked_agent_should_be_disconnected_at_once() {
        let p = plan(
            &key(),
            &spec(),
            &observed(Some(1_000), false),
            Timestamp(1_500),
        );
        assert_eq!(
            p.steps,
            [Step::Disconnect {
                reason: "its key was revoked".to_owned()
            }]
        );
    }

    #[test]
    fn a_disconnected_agent_should_need_nothing() {
        let o = Observed {
            connected: false,
            last_seen: Some(Timestamp(0)),
            admitted: false,
        };
        let p = plan(&key(), &spec(), &o, Timestamp(100_000));
        assert!(p.steps.is_empty());
    }
}
