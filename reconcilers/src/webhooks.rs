//! The `webhooks` loop: every built repository on a hosted forge has exactly one hook pointing
//! at `<external-url>/webhooks/<forge>`, with the needed events, JSON content, the configured
//! secret, active; repositories that left the spec have none of ours.
//!
//! Key: a repository. Observed: the repository's hooks (API), the hook this loop last set and a
//! fingerprint of the secret it set (database; forges never read a secret back), and how many
//! deliveries failed signature checks since (a secret changed on the forge shows up there).
//! Steps: create, patch or delete hooks. Other hooks are never touched. Every difference found
//! is recorded as drift, with when it was repaired.

use std::collections::BTreeSet;

use reconix_forge::{Forge as _, Hook, HookEvent, HookSpec};
use reconix_spec::{RepoKey, Spec, Timestamp};
use reconix_status::{HookRow, NewDrift};
use serde::Serialize;
use tracing::info;

use crate::context::{Ctx, Ports};
use crate::forge_clients::{
    Gate, fingerprint, gate, record_api_error, webhook_secret, webhook_url,
};
use crate::runtime::{Action, Plan, Reconciler};
use crate::{Error, Result};

/// The purpose label of hook secret fingerprints.
const HOOK_SECRET: &str = "hook secret";

/// The `webhooks` reconciler.
#[derive(Debug, Default)]
pub struct Webhooks<P>(std::marker::PhantomData<fn() -> P>);

impl<P> Webhooks<P> {
    /// Creates the reconciler.
    pub fn new() -> Self {
        Self(std::marker::PhantomData)
    }
}

/// What `observe` saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Whether the forge may be called.
    pub gate: Gate,
    /// The repository's hooks; `None` when the forge may not be called.
    pub hooks: Option<Vec<Hook>>,
    /// The hook this loop last set.
    pub recorded: Option<HookRow>,
    /// The fingerprint of the secret the spec wants now; `None` when the repo left the spec.
    pub secret_fingerprint: Option<String>,
}

/// A field of a hook that differs from the desired one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// `url`, `events`, `active`, `content-type` or `secret`.
    pub field: &'static str,
    /// The desired value (never a secret).
    pub desired: Option<String>,
    /// The observed value (never a secret).
    pub observed: Option<String>,
}

/// One step of the `webhooks` loop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
    /// Creates the hook.
    Create {
        /// Whether a hook set before has vanished (recorded as drift).
        vanished: Option<u64>,
    },
    /// Patches the hook: every field is set, the differences are recorded.
    Patch {
        /// The hook's id.
        id: u64,
        /// What differed.
        differences: Vec<Difference>,
    },
    /// Deletes a hook of ours: a duplicate, or the repository left the spec.
    Delete {
        /// The hook's id.
        id: u64,
        /// `duplicate` or `stale`.
        reason: &'static str,
    },
    /// Records the hook as ours (it already matches; e.g. the database was lost).
    Adopt {
        /// The hook's id.
        id: u64,
    },
}

/// The events a repository's hook must deliver.
pub fn wanted_events(repo: &reconix_spec::Repo) -> Vec<HookEvent> {
    if repo.pull_requests {
        vec![HookEvent::Push, HookEvent::PullRequest]
    } else {
        vec![HookEvent::Push]
    }
}

fn events_text(events: &[HookEvent]) -> String {
    let set: BTreeSet<&str> = events
        .iter()
        .map(|e| match e {
            HookEvent::Push => "push",
            HookEvent::PullRequest => "pull_request",
        })
        .collect();
    set.into_iter().collect::<Vec<_>>().join(",")
}

/// Plans the `webhooks` loop for one repository (pure).
pub fn plan(key: &RepoKey, desired: &Spec, observed: &Observed, now: Timestamp) -> Plan<Step> {
    let _ = now;
    let idle = |then| Plan {
        steps: Vec::new(),
        then,
    };
    let Some(url) = webhook_url(desired, &key.forge) else {
        return idle(Action::await_change());
    };
    // Hooks are looked at again every poll interval: drift made on the forge sends no event.
    let poll = desired
        .forges
        .get(&key.forge)
        .map_or(Action::await_change(), |f| {
            Action::requeue(f.poll_interval.to_std())
        });
    let hooks = match (observed.gate, &observed.hooks) {
        (Gate::Wait(d), _) => return idle(Action::requeue(d)),
        (Gate::Paused, _) | (Gate::Open, None) => return idle(poll),
        (Gate::Open, Some(hooks)) => hooks,
    };
    let recorded_id = observed.recorded.as_ref().map(|r| r.hook_id);
    // Ours: the one we recorded (whatever its URL now says) and any pointing at our URL.
    let mut ours: Vec<&Hook> = hooks
        .iter()
        .filter(|h| Some(h.id) == recorded_id || h.url == url)
        .collect();
    ours.sort_by_key(|h| (Some(h.id) != recorded_id, h.id));
    let repo = desired.repo(key).map(|(_, r)| r);
    let mut steps = Vec::new();
    let Some((repo, secret)) = repo.zip(observed.secret_fingerprint.as_ref()) else {
        steps.extend(ours.iter().map(|h| Step::Delete {
            id: h.id,
            reason: "stale",
        }));
        return Plan {
            steps,
            then: Action::await_change(),
        };
    };
    let Some((keep, extra)) = ours.split_first() else {
        steps.push(Step::Create {
            vanished: recorded_id,
        });
        return Plan { steps, then: poll };
    };
    steps.extend(extra.iter().map(|h| Step::Delete {
        id: h.id,
        reason: "duplicate",
    }));
    let mut differences = Vec::new();
    if keep.url != url {
        differences.push(Difference {
            field: "url",
            desired: Some(url.clone()),
            observed: Some(keep.url.clone()),
        });
    }
    let events = wanted_events(repo);
    if events_text(&keep.events) != events_text(&events) {
        differences.push(Difference {
            field: "events",
            desired: Some(events_text(&events)),
            observed: Some(events_text(&keep.events)),
        });
    }
    if !keep.active {
        differences.push(Difference {
            field: "active",
            desired: Some("true".to_owned()),
            observed: Some("false".to_owned()),
        });
    }
    if let Some(ct) = &keep.content_type
        && ct != "json"
    {
        differences.push(Difference {
            field: "content-type",
            desired: Some("json".to_owned()),
            observed: Some(ct.clone()),
        });
    }
    let secret_differs = match &observed.recorded {
        Some(r) if r.hook_id == keep.id => (r.secret_fingerprint != *secret)
            .then_some("the spec's secret changed")
            .or((r.signature_failures > 0).then_some("deliveries fail signature verification")),
        // Not set by us (or the database was lost): its secret is unknown, so set it.
        _ => Some("unknown"),
    };
    if let Some(why) = secret_differs {
        differences.push(Difference {
            field: "secret",
            desired: None,
            observed: Some(why.to_owned()),
        });
    }
    if !differences.is_empty() {
        steps.push(Step::Patch {
            id: keep.id,
            differences,
        });
    } else if recorded_id != Some(keep.id) {
        steps.push(Step::Adopt { id: keep.id });
    }
    Plan { steps, then: poll }
}

impl<P: Ports> Reconciler for Webhooks<P> {
    const NAME: &'static str = "webhooks";
    type Spec = Spec;
    type Context = Ctx<P>;
    type Key = RepoKey;
    type Observed = Observed;
    type Step = Step;
    type Error = Error;

    async fn keys(&self, spec: &Spec, cx: &Ctx<P>) -> Result<Vec<RepoKey>> {
        let mut keys: BTreeSet<RepoKey> = spec.hosted_repos().map(|(key, _, _)| key).collect();
        // Repositories that left the spec but still have our hook, on forges still configured.
        let hosted: Vec<_> = spec.hosted_forges().cloned().collect();
        let with_hooks = cx
            .status
            .call(move |db| {
                let mut out = Vec::new();
                for repo in db.repos()? {
                    if hosted.contains(&repo.key.forge) && db.hook(repo.id)?.is_some() {
                        out.push(repo.key);
                    }
                }
                Ok(out)
            })
            .await?;
        keys.extend(with_hooks);
        Ok(keys.into_iter().collect())
    }

    async fn observe(&self, key: &RepoKey, spec: &Spec, cx: &Ctx<P>) -> Result<Observed> {
        let k = key.clone();
        let recorded = cx
            .status
            .call(move |db| match db.repo_id(&k)? {
                Some(repo) => db.hook(repo),
                None => Ok(None),
            })
            .await?;
        let secret_fingerprint = match spec.repo(key) {
            Some((forge, _)) => Some(fingerprint(
                HOOK_SECRET,
                &webhook_secret(&key.forge, forge)?,
            )),
            None => None,
        };
        let gate = gate(&cx.status, &key.forge, Timestamp::now()).await?;
        let mut observed = Observed {
            gate,
            hooks: None,
            recorded,
            secret_fingerprint,
        };
        let Some(forge) = spec.forges.get(&key.forge) else {
            return Ok(observed);
        };
        if gate == Gate::Open {
            let client = cx.forges.client(&key.forge, forge)?;
            match client.list_hooks(&key.repo).await {
                Ok(hooks) => observed.hooks = Some(hooks),
                Err(err) => return Err(record_api_error(&cx.status, &key.forge, err).await),
            }
        }
        Ok(observed)
    }

    fn plan(key: &RepoKey, desired: &Spec, observed: &Observed, now: Timestamp) -> Plan<Step> {
        plan(key, desired, observed, now)
    }

    async fn apply(&self, key: &RepoKey, step: Step, cx: &Ctx<P>) -> Result<()> {
        let spec = cx.spec();
        let forge = spec
            .forges
            .get(&key.forge)
            .ok_or_else(|| Error::config(key, "forge left the spec"))?;
        let client = cx.forges.client(&key.forge, forge)?;
        let subject = |id: Option<u64>| match id {
            Some(id) => format!("{key} hook {id}"),
            None => format!("{key} hook"),
        };
        let hook_spec = || -> Result<(HookSpec, String)> {
            let (_, repo) = spec
                .repo(key)
                .ok_or_else(|| Error::config(key, "repo left the spec"))?;
            let url = webhook_url(&spec, &key.forge).ok_or_else(|| Error::Config {
                key: key.to_string(),
                message: "external-url is not set".to_owned(),
            })?;
            let secret = webhook_secret(&key.forge, forge)?;
            let fp = fingerprint(HOOK_SECRET, &secret);
            Ok((
                HookSpec {
                    url,
                    secret,
                    events: wanted_events(repo),
                },
                fp,
            ))
        };
        let now = Timestamp::now();
        let (drifts, result) = match step {
            Step::Create { vanished } => {
                let (spec, fp) = hook_spec()?;
                let drifts = vec![(
                    subject(vanished),
                    Difference {
                        field: "missing",
                        desired: Some(spec.url.clone()),
                        observed: vanished.map(|id| format!("hook {id} is gone")),
                    },
                )];
                let created = client.create_hook(&key.repo, &spec).await;
                let result = match created {
                    Ok(hook) => {
                        info!(repo = %key, hook = hook.id, "webhook created");
                        self.record(cx, key, Some((hook.id, spec.url, fp))).await
                    }
                    Err(e) => Err(e),
                };
                (drifts, result)
            }
            Step::Patch { id, differences } => {
                let (spec, fp) = hook_spec()?;
                let drifts = differences
                    .into_iter()
                    .map(|d| (subject(Some(id)), d))
                    .collect();
                let result = match client.patch_hook(&key.repo, id, &spec).await {
                    Ok(_) => {
                        info!(repo = %key, hook = id, "webhook patched");
                        self.record(cx, key, Some((id, spec.url, fp))).await
                    }
                    Err(e) => Err(e),
                };
                (drifts, result)
            }
            Step::Delete { id, reason } => {
                let drifts = vec![(
                    subject(Some(id)),
                    Difference {
                        field: reason,
                        desired: None,
                        observed: Some(format!("hook {id}")),
                    },
                )];
                let result = match client.delete_hook(&key.repo, id).await {
                    Ok(()) | Err(reconix_forge::ApiError::NotFound { .. }) => {
                        info!(repo = %key, hook = id, reason, "webhook deleted");
                        let recorded = self.recorded_id(cx, key).await?;
                        if recorded == Some(id) {
                            self.record(cx, key, None).await
                        } else {
                            Ok(Ok(()))
                        }
                    }
                    Err(e) => Err(e),
                };
                (drifts, result)
            }
            Step::Adopt { id } => {
                let (spec, fp) = hook_spec()?;
                let result = self.record(cx, key, Some((id, spec.url, fp))).await;
                (Vec::new(), result)
            }
        };
        let error = match &result {
            Ok(_) => None,
            Err(e) => Some(e.to_string()),
        };
        let err_for_db = error.clone();
        cx.status
            .call(move |db| {
                for (subject, d) in &drifts {
                    let id = db.record_drift(
                        &NewDrift {
                            loop_name: "webhooks",
                            subject,
                            field: d.field,
                            desired: d.desired.as_deref(),
                            observed: d.observed.as_deref(),
                        },
                        now,
                    )?;
                    db.finish_drift(id, err_for_db.as_deref(), Timestamp::now())?;
                }
                Ok(())
            })
            .await?;
        match result {
            Ok(inner) => inner,
            Err(err) => Err(record_api_error(&cx.status, &key.forge, err).await),
        }
    }
}

impl<P: Ports> Webhooks<P> {
    async fn recorded_id(&self, cx: &Ctx<P>, key: &RepoKey) -> Result<Option<u64>> {
        let k = key.clone();
        Ok(cx
            .status
            .call(move |db| match db.repo_id(&k)? {
                Some(repo) => Ok(db.hook(repo)?.map(|h| h.hook_id)),
                None => Ok(None),
            })
            .await?)
    }

    /// Records (or forgets, with `None`) the hook set on `key`. The outer result is the API's,
    /// already successful here; the inner one the database's.
    async fn record(
        &self,
        cx: &Ctx<P>,
        key: &RepoKey,
        hook: Option<(u64, String, String)>,
    ) -> std::result::Result<Result<()>, reconix_forge::ApiError> {
        let k = key.clone();
        Ok(cx
            .status
            .call(move |db| {
                let repo = db.upsert_repo(&k)?;
                match hook {
                    Some((id, url, fp)) => db.record_hook(repo, id, &url, &fp, Timestamp::now()),
                    None => db.forget_hook(repo),
                }
            })
            .await
            .map_err(Error::from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(repos: &str) -> Spec {
        let yaml = format!(
            "external-url: https://ci.example/\nforges:\n  gh:\n    kind: github\n    token-file: /t\n    webhook-secret-file: /s\n    repos:\n{repos}"
        );
        reconix_spec::parse(&yaml, std::path::Path::new("t.yaml")).unwrap()
    }

    fn key() -> RepoKey {
        RepoKey::parse("gh/a/b").unwrap()
    }

    const URL: &str = "https://ci.example/webhooks/gh";

    fn hook(id: u64, url: &str) -> Hook {
        Hook {
            id,
            url: url.to_owned(),
            events: vec![HookEvent::Push, HookEvent::PullRequest],
            active: true,
            content_type: Some("json".to_owned()),
        }
    }

    fn recorded(id: u64, fp: &str) -> HookRow {
        HookRow {
            hook_id: id,
            url: URL.to_owned(),
            secret_fingerprint: fp.to_owned(),
            set_at: Timestamp(0),
            signature_failures: 0,
        }
    }

    fn observed(hooks: Vec<Hook>, rec: Option<HookRow>) -> Observed {
        Observed {
            gate: Gate::Open,
            hooks: Some(hooks),
            recorded: rec,
            secret_fingerprint: Some("fp".to_owned()),
        }
    }

    fn steps(o: &Observed) -> Vec<Step> {
        plan(&key(), &spec("      a/b: {}\n"), o, Timestamp(0)).steps
    }

    #[test]
    fn a_repo_without_our_hook_should_get_one_and_others_be_left_alone() {
        let o = observed(vec![hook(1, "https://other.example/hook")], None);
        assert_eq!(steps(&o), [Step::Create { vanished: None }]);
    }

    #[test]
    fn a_matching_hook_we_set_should_need_nothing() {
        let o = observed(vec![hook(5, URL)], Some(recorded(5, "fp")));
        assert!(steps(&o).is_empty());
    }

    #[test]
    fn a_matching_hook_we_did_not_record_should_get_its_secret_set() {
        let o = observed(vec![hook(5, URL)], None);
        assert!(
            matches!(&steps(&o)[..], [Step::Patch { id: 5, differences }] if differences[0].field == "secret")
        );
    }

    #[test]
    fn a_changed_url_should_be_patched_with_its_drift() {
        let o = observed(
            vec![hook(5, "https://evil.example/x")],
            Some(recorded(5, "fp")),
        );
        assert_eq!(
            steps(&o),
            [Step::Patch {
                id: 5,
                differences: vec![Difference {
                    field: "url",
                    desired: Some(URL.to_owned()),
                    observed: Some("https://evil.example/x".to_owned()),
                }]
            }]
        );
    }

    #[test]
    fn events_active_and_content_type_should_be_checked() {
        let mut h = hook(5, URL);
        h.events = vec![HookEvent::Push];
        h.active = false;
        h.content_type = Some("form".to_owned());
        let o = observed(vec![h], Some(recorded(5, "fp")));
        let fields: Vec<_> = match &steps(&o)[..] {
            [Step::Patch { differences, .. }] => differences.iter().map(|d| d.field).collect(),
            other => panic!("{other:?}"),
        };
        assert_eq!(fields, ["events", "active", "content-type"]);
    }

    #[test]
    fn a_changed_secret_or_failing_signatures_should_patch_the_secret() {
        let o = observed(vec![hook(5, URL)], Some(recorded(5, "old")));
        assert!(
            matches!(&steps(&o)[..], [Step::Patch { differences, .. }] if differences[0].field == "secret")
        );
        let mut rec = recorded(5, "fp");
        rec.signature_failures = 2;
        let o = observed(vec![hook(5, URL)], Some(rec));
        assert!(matches!(&steps(&o)[..], [Step::Patch { differences, .. }]
            if differences[0].observed.as_deref() == Some("deliveries fail signature verification")));
    }

    #[test]
    fn duplicates_should_be_deleted_keeping_the_recorded_one() {
        let o = observed(
            vec![hook(3, URL), hook(5, URL), hook(9, "https://x/other")],
            Some(recorded(5, "fp")),
        );
        assert_eq!(
            steps(&o),
            [Step::Delete {
                id: 3,
                reason: "duplicate"
            }]
        );
    }

    #[test]
    fn a_vanished_hook_should_be_created_again_as_drift() {
        let o = observed(vec![], Some(recorded(5, "fp")));
        assert_eq!(steps(&o), [Step::Create { vanished: Some(5) }]);
    }

    #[test]
    fn a_repo_that_left_the_spec_should_lose_only_our_hooks() {
        let mut o = observed(
            vec![hook(5, URL), hook(6, "https://x/other")],
            Some(recorded(5, "fp")),
        );
        o.secret_fingerprint = None;
        let p = plan(&key(), &spec("      c/d: {}\n"), &o, Timestamp(0));
        assert_eq!(
            p.steps,
            [Step::Delete {
                id: 5,
                reason: "stale"
            }]
        );
    }

    #[test]
    fn a_repo_without_pull_requests_should_not_ask_for_their_events() {
        let o = observed(vec![hook(5, URL)], Some(recorded(5, "fp")));
        let p = plan(
            &key(),
            &spec("      a/b:\n        pull-requests: false\n"),
            &o,
            Timestamp(0),
        );
        assert!(
            matches!(&p.steps[..], [Step::Patch { differences, .. }] if differences[0].field == "events")
        );
    }

    #[test]
    fn a_held_back_forge_should_not_be_called() {
        let mut o = observed(vec![], None);
        o.gate = Gate::Paused;
        assert!(steps(&o).is_empty());
    }
}
