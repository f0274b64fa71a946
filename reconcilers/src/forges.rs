//! The `forges` loop: a forge that rejected the token (401) is paused — no loop calls it — and
//! this loop probes it with a permission lookup until the token works again, then resumes every
//! loop that calls forges. An expired rate limit is cleared the same way.
//!
//! Key: a hosted forge. Observed: its health row. Steps: probe, or clear an expired rate limit.

use std::time::Duration;

use reconix_forge::{ApiError, Forge as _};
use reconix_spec::{ForgeName, Spec, Timestamp};
use reconix_status::{ForgeHealth, ForgeHealthState};
use serde::Serialize;
use tracing::{info, warn};

use crate::context::{Ctx, Ports};
use crate::forge_clients::record_api_error;
use crate::runtime::{Action, Plan, Reconciler};
use crate::{Error, Result};

/// The user whose permission the probe looks up. Any name works: a user without access (or
/// without an account) is `none`, which is still an accepted token's answer.
const PROBE_USER: &str = "reconix-probe";

/// The longest time between two probes of a paused forge.
const MAX_PROBE_INTERVAL: Duration = Duration::from_secs(60);

/// The `forges` reconciler.
#[derive(Debug, Default)]
pub struct ForgeHealthLoop<P>(std::marker::PhantomData<fn() -> P>);

impl<P> ForgeHealthLoop<P> {
    /// Creates the reconciler.
    pub fn new() -> Self {
        Self(std::marker::PhantomData)
    }
}

/// One step of the `forges` loop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
    /// Looks up a permission on one of the forge's repositories; success resumes the forge.
    Probe,
    /// Marks an expired rate limit over.
    Clear,
}

/// Plans the `forges` loop for one forge (pure).
pub fn plan(
    key: &ForgeName,
    desired: &Spec,
    observed: &Option<ForgeHealth>,
    now: Timestamp,
) -> Plan<Step> {
    let Some(forge) = desired.forges.get(key) else {
        return Plan {
            steps: Vec::new(),
            then: Action::await_change(),
        };
    };
    let probe_every = forge.poll_interval.to_std().min(MAX_PROBE_INTERVAL);
    match observed {
        Some(h) if h.state == ForgeHealthState::Paused => Plan {
            steps: vec![Step::Probe],
            then: Action::requeue(probe_every),
        },
        Some(h) if h.state == ForgeHealthState::RateLimited => match h.until {
            Some(until) if until > now => Plan {
                steps: Vec::new(),
                then: Action::requeue(until.since(now)),
            },
            _ => Plan {
                steps: vec![Step::Clear],
                then: Action::await_change(),
            },
        },
        // Healthy: look again every poll interval (one database read), to notice a pause.
        _ => Plan {
            steps: Vec::new(),
            then: Action::requeue(probe_every),
        },
    }
}

impl<P: Ports> Reconciler for ForgeHealthLoop<P> {
    const NAME: &'static str = "forges";
    type Spec = Spec;
    type Context = Ctx<P>;
    type Key = ForgeName;
    type Observed = Option<ForgeHealth>;
    type Step = Step;
    type Error = Error;

    async fn keys(&self, spec: &Spec, _cx: &Ctx<P>) -> Result<Vec<ForgeName>> {
        Ok(spec.hosted_forges().cloned().collect())
    }

    async fn observe(
        &self,
        key: &ForgeName,
        _spec: &Spec,
        cx: &Ctx<P>,
    ) -> Result<Option<ForgeHealth>> {
        let k = key.clone();
        Ok(cx.status.call(move |db| db.forge_health(&k)).await?)
    }

    fn plan(
        key: &ForgeName,
        desired: &Spec,
        observed: &Option<ForgeHealth>,
        now: Timestamp,
    ) -> Plan<Step> {
        plan(key, desired, observed, now)
    }

    async fn apply(&self, key: &ForgeName, step: Step, cx: &Ctx<P>) -> Result<()> {
        if step == Step::Probe {
            let spec = cx.spec();
            let forge = spec
                .forges
                .get(key)
                .ok_or_else(|| Error::config(key, "forge left the spec"))?;
            let Some(repo) = forge.repos.keys().next() else {
                return Ok(());
            };
            // A token file that cannot be read keeps the forge paused; the error says why.
            let client = cx.forges.client(key, forge)?;
            match client.permission(repo, PROBE_USER).await {
                Ok(_) => info!(forge = %key, "forge accepts the token again: resuming"),
                Err(err @ ApiError::Unauthorized { .. }) => {
                    warn!(forge = %key, "forge still rejects the token: staying paused");
                    drop(record_api_error(&cx.status, key, err).await);
                    return Ok(());
                }
                Err(err) => return Err(record_api_error(&cx.status, key, err).await),
            }
        }
        let k = key.clone();
        cx.status
            .call(move |db| {
                db.set_forge_health(&k, ForgeHealthState::Ok, None, None, Timestamp::now())
            })
            .await?;
        cx.wakers.forge_loops();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        reconix_spec::parse(
            "external-url: https://ci.example\nforges:\n  gh:\n    kind: github\n    token-file: /t\n    webhook-secret-file: /s\n    poll-interval: 5s\n    repos:\n      a/b: {}\n",
            std::path::Path::new("t.yaml"),
        )
        .unwrap()
    }

    fn health(state: ForgeHealthState, until: Option<i64>) -> Option<ForgeHealth> {
        Some(ForgeHealth {
            forge: "gh".to_owned(),
            state,
            reason: None,
            since: Timestamp(0),
            until: until.map(Timestamp),
        })
    }

    fn gh() -> ForgeName {
        ForgeName::new("gh").unwrap()
    }

    #[test]
    fn a_paused_forge_should_be_probed_every_poll_interval() {
        let p = plan(
            &gh(),
            &spec(),
            &health(ForgeHealthState::Paused, None),
            Timestamp(0),
        );
        assert_eq!(p.steps, [Step::Probe]);
        assert_eq!(p.then, Action::requeue(Duration::from_secs(5)));
    }

    #[test]
    fn a_rate_limit_should_be_cleared_once_over() {
        let h = health(ForgeHealthState::RateLimited, Some(10_000));
        let p = plan(&gh(), &spec(), &h, Timestamp(4_000));
        assert!(p.steps.is_empty());
        assert_eq!(p.then, Action::requeue(Duration::from_secs(6)));
        let p = plan(&gh(), &spec(), &h, Timestamp(10_000));
        assert_eq!(p.steps, [Step::Clear]);
    }

    #[test]
    fn a_healthy_forge_should_need_nothing() {
        for h in [None, health(ForgeHealthState::Ok, None)] {
            let p = plan(&gh(), &spec(), &h, Timestamp(0));
            assert!(p.steps.is_empty());
            assert_eq!(p.then, Action::requeue(Duration::from_secs(5)));
        }
    }
}
