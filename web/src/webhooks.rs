//! The webhook intake, `POST /webhooks/{forge}`: verify, parse, record, wake. It makes no
//! decisions beyond mapping the event onto the spec ([`classify`]); the loops do the rest.
//!
//! Per delivery the handler holds no lock across an await and reads no file (the secrets are
//! cached per spec generation). Deliveries are recorded by one recorder task, in arrival order:
//! it takes whatever has queued up and records it in one `status.call`, answering each
//! delivery as soon as its own transaction has committed. Under load this replaces a blocking
//! thread and a contended lock per delivery with one per batch, and keeps the order fair
//! (a mutex hands itself to whichever thread wins, which is what made the latency tail long).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use reconix_forge::{Event, Headers, Payload, PullRequestAction};
use reconix_spec::{Forge, ForgeName, Repo, RepoKey, Secret, Spec, Timestamp};
use reconix_status::{DeliveryEffect, DeliveryOutcome, NewDelivery, PullRequestUpdate, Status};
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, warn};

use crate::{ApiError, AppState};

/// The largest delivery body accepted; GitHub caps payloads at 25 MB.
pub(crate) const BODY_LIMIT: usize = 32 << 20;

/// Deliveries waiting for the recorder at most; further ones wait for room (backpressure).
const RECORDER_QUEUE: usize = 4096;
/// Deliveries recorded in one `status.call` at most, so other database users get their turn.
const RECORDER_BATCH: usize = 256;

/// The shortest time between two [`Wake::SignatureFailure`] of one repository.
const SIGNATURE_WAKE_INTERVAL: Duration = Duration::from_secs(10);

/// What the intake tells the daemon after recording a delivery, so that the right loop runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wake {
    /// A branch the repository builds moved (or was deleted): the `evaluations` loop has work.
    Head(RepoKey),
    /// A pull request was opened, updated, closed or reopened.
    PullRequest(RepoKey),
    /// A delivery naming this repository failed signature verification: its hook's secret may
    /// have drifted, which the `webhooks` loop repairs. At most once per repository per 10 s.
    SignatureFailure(RepoKey),
    /// An API mutation requeued jobs or cancelled an evaluation: the `builds` loop has work
    /// (dispatch them, or stop builds no live job needs).
    Builds,
    /// An API mutation queued an evaluation of this repository.
    Evaluations(RepoKey),
    /// An API mutation changed what this repository's commit statuses should say.
    Statuses(RepoKey),
}

/// The callback that receives [`Wake`]s; it must return quickly (poke a `Notify`, send on a
/// channel).
pub(crate) type WakeFn = Arc<dyn Fn(Wake) + Send + Sync>;

/// What the intake needs besides the database: the current spec, the wake callback and caches.
pub(crate) struct Intake {
    status: Status,
    spec: watch::Receiver<Arc<Spec>>,
    wake: WakeFn,
    secrets: Mutex<SecretCache>,
    /// When each repository last caused a [`Wake::SignatureFailure`].
    signature_wakes: Mutex<HashMap<RepoKey, Instant>>,
    /// The recorder's queue, started by the first delivery (inside the runtime).
    recorder: OnceLock<mpsc::Sender<Pending>>,
}

/// A delivery waiting for the recorder, and where its outcome goes.
struct Pending {
    delivery: NewDelivery,
    effect: DeliveryEffect,
    reply: oneshot::Sender<reconix_status::Result<DeliveryOutcome>>,
}

impl fmt::Debug for Intake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secrets and the callback are left out: the one must not be printed, the other
        // cannot be.
        let forges: Vec<String> = self
            .spec
            .borrow()
            .forges
            .keys()
            .map(ToString::to_string)
            .collect();
        f.debug_struct("Intake")
            .field("forges", &forges)
            .finish_non_exhaustive()
    }
}

/// The webhook secrets read for one spec generation, by forge.
#[derive(Default)]
struct SecretCache {
    generation: Option<Arc<Spec>>,
    secrets: HashMap<ForgeName, Arc<Secret>>,
}

impl Intake {
    pub(crate) fn new(status: Status, spec: watch::Receiver<Arc<Spec>>, wake: WakeFn) -> Self {
        Self {
            status,
            spec,
            wake,
            secrets: Mutex::new(SecretCache::default()),
            signature_wakes: Mutex::new(HashMap::new()),
            recorder: OnceLock::new(),
        }
    }

    /// Records a delivery through the recorder task (spawned on `tasks` by the first delivery);
    /// directly when the recorder is gone (its runtime shut down while this state lives on).
    async fn record(
        &self,
        tasks: &TaskTracker,
        delivery: NewDelivery,
        effect: DeliveryEffect,
    ) -> Result<DeliveryOutcome, ApiError> {
        let queue = self.recorder.get_or_init(|| {
            let (tx, rx) = mpsc::channel(RECORDER_QUEUE);
            tasks.spawn(record_loop(self.status.clone(), rx));
            tx
        });
        let (reply, outcome) = oneshot::channel();
        let pending = Pending {
            delivery,
            effect,
            reply,
        };
        match queue.send(pending).await {
            Ok(()) => Ok(outcome
                .await
                .map_err(|_| ApiError::Internal("the delivery recorder stopped".to_owned()))??),
            Err(mpsc::error::SendError(p)) => Ok(self
                .status
                .call(move |db| db.record_delivery(&p.delivery, &p.effect, Timestamp::now()))
                .await?),
        }
    }

    /// Returns the current spec.
    pub(crate) fn spec(&self) -> Arc<Spec> {
        Arc::clone(&self.spec.borrow())
    }

    /// Returns `forge`'s webhook secret, read from its file once per spec generation.
    async fn secret(
        &self,
        spec: &Arc<Spec>,
        name: &ForgeName,
        forge: &Forge,
    ) -> Result<Arc<Secret>, ApiError> {
        {
            let mut cache = self.secrets.lock().unwrap_or_else(PoisonError::into_inner);
            if !cache
                .generation
                .as_ref()
                .is_some_and(|g| Arc::ptr_eq(g, spec))
            {
                cache.generation = Some(Arc::clone(spec));
                cache.secrets.clear();
            }
            if let Some(secret) = cache.secrets.get(name) {
                return Ok(Arc::clone(secret));
            }
        }
        self.reload_secret(spec, name, forge).await
    }

    /// Reads `forge`'s webhook secret file and caches it for `spec`'s generation.
    async fn reload_secret(
        &self,
        spec: &Arc<Spec>,
        name: &ForgeName,
        forge: &Forge,
    ) -> Result<Arc<Secret>, ApiError> {
        let file = forge.webhook_secret_file.clone().ok_or_else(|| {
            ApiError::Internal(format!("forge {name} has no webhook-secret-file"))
        })?;
        let path = file.path().to_owned();
        let secret = tokio::task::spawn_blocking(move || file.read())
            .await
            .map_err(|e| ApiError::Internal(format!("reading a webhook secret: {e}")))?
            .map_err(|source| ApiError::SecretFile { path, source })?;
        let secret = Arc::new(secret);
        let mut cache = self.secrets.lock().unwrap_or_else(PoisonError::into_inner);
        if cache
            .generation
            .as_ref()
            .is_some_and(|g| Arc::ptr_eq(g, spec))
        {
            cache.secrets.insert(name.clone(), Arc::clone(&secret));
        }
        Ok(secret)
    }

    /// Returns true (and notes the time) when `repo` may cause a signature-failure wake now.
    fn signature_wake_due(&self, repo: &RepoKey) -> bool {
        let now = Instant::now();
        let mut last = self
            .signature_wakes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Only spec repositories get here, so the map stays small; drop stale entries anyway.
        last.retain(|_, at| now.duration_since(*at) < SIGNATURE_WAKE_INTERVAL);
        if last.contains_key(repo) {
            return false;
        }
        last.insert(repo.clone(), now);
        true
    }
}

/// Records queued deliveries in arrival order, a batch per `status.call` and per transaction
/// (group commit: one commit for everything queued meanwhile), then answers each. Ends when
/// every sender is gone.
async fn record_loop(status: Status, mut queue: mpsc::Receiver<Pending>) {
    let mut batch = Vec::with_capacity(RECORDER_BATCH);
    while queue.recv_many(&mut batch, RECORDER_BATCH).await > 0 {
        let pending = std::mem::take(&mut batch);
        let done = status
            .call(move |db| {
                let items: Vec<_> = pending
                    .iter()
                    .map(|p| (p.delivery.clone(), p.effect.clone()))
                    .collect();
                match db.record_deliveries(&items, Timestamp::now()) {
                    Ok(outcomes) => {
                        for (p, outcome) in pending.into_iter().zip(outcomes) {
                            // The request may have been cancelled (client gone); its row stays.
                            let _ = p.reply.send(outcome);
                        }
                    }
                    Err(err) => {
                        // The batch's transaction failed as a whole: nothing was recorded. Each
                        // request gets the same error (a full disk stays a full disk: 503).
                        for p in pending {
                            let _ = p.reply.send(Err(err.replicate("record_deliveries")));
                        }
                    }
                }
                Ok(())
            })
            .await;
        if let Err(err) = done {
            // Only a panic gets here; its batch's requests see the recorder as stopped.
            error!(error = %err, "webhook delivery recorder failed");
        }
    }
}

/// A delivery mapped onto the spec: the row to record and what it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Classified {
    pub(crate) delivery: NewDelivery,
    pub(crate) effect: DeliveryEffect,
}

/// Returns the spec repository of `forge` named `name`, with its canonical key. GitHub and
/// Gitea names match case-insensitively (`Owner/Repo` is `owner/repo` there).
pub(crate) fn find_repo<'a>(
    forge_name: &ForgeName,
    forge: &'a Forge,
    name: &str,
) -> Option<(RepoKey, &'a Repo)> {
    let insensitive = forge.kind.has_case_insensitive_names();
    let (repo_name, repo) = forge
        .repos
        .iter()
        .find(|(n, _)| n.as_str() == name)
        .or_else(|| {
            insensitive
                .then(|| {
                    forge
                        .repos
                        .iter()
                        .find(|(n, _)| n.as_str().eq_ignore_ascii_case(name))
                })
                .flatten()
        })?;
    Some((RepoKey::new(forge_name.clone(), repo_name.clone()), repo))
}

/// Maps a verified, parsed delivery onto the spec: which row to record and which effect it has
/// (pure: no IO, no clock).
pub(crate) fn classify(forge_name: &ForgeName, forge: &Forge, event: &Event) -> Classified {
    let repo = event
        .repo
        .as_deref()
        .and_then(|name| find_repo(forge_name, forge, name));
    let (kind, git_ref, sha, effect) = match &event.payload {
        Payload::Push(push) => {
            let sha = (!push.deleted).then(|| push.after.clone());
            let effect = match (&repo, push.git_ref.strip_prefix("refs/heads/")) {
                // Every branch of a repository that follows its default branch is recorded:
                // only the forge knows which one is the default, and the evaluations loop
                // filters by it.
                (Some((key, repo)), Some(branch))
                    if !push.tag
                        && (repo.follows_default_branch() || repo.matches_branch(branch)) =>
                {
                    DeliveryEffect::Head {
                        repo: key.clone(),
                        git_ref: push.git_ref.clone(),
                        sha: sha.clone(),
                    }
                }
                _ => DeliveryEffect::Nothing,
            };
            ("push", Some(push.git_ref.clone()), sha, effect)
        }
        Payload::PullRequest(pr) => {
            let git_ref = reconix_forge::pull_request_ref(forge.kind, pr.number);
            let effect = match (&repo, &pr.head_sha) {
                (Some((key, repo)), Some(head_sha)) if repo.pull_requests => {
                    DeliveryEffect::PullRequest {
                        repo: key.clone(),
                        pr: PullRequestUpdate {
                            number: pr.number,
                            head_sha: head_sha.clone(),
                            head_ref: pr.head_ref.clone().unwrap_or_default(),
                            base_ref: pr.base_ref.clone().unwrap_or_default(),
                            author: pr.author.clone(),
                            // Unknown origin (GitHub: the fork was deleted) counts as a fork,
                            // so the author's permission is checked before anything is built.
                            from_fork: pr.from_fork.unwrap_or(true),
                            open: !matches!(
                                pr.action,
                                PullRequestAction::Closed | PullRequestAction::Merged
                            ),
                        },
                    }
                }
                _ => DeliveryEffect::Nothing,
            };
            ("pull_request", Some(git_ref), pr.head_sha.clone(), effect)
        }
        Payload::Ping(_) => ("ping", None, None, DeliveryEffect::Nothing),
        Payload::Ignored(_) => ("ignored", None, None, DeliveryEffect::Nothing),
    };
    Classified {
        delivery: NewDelivery {
            forge: forge_name.clone(),
            delivery_id: event.delivery.clone(),
            event: kind,
            repo: event.repo.clone(),
            git_ref,
            sha,
        },
        effect,
    }
}

/// Returns the wake an effect calls for when recording it finds a new head (only then).
fn wake_for_new_head(effect: &DeliveryEffect) -> Option<Wake> {
    match effect {
        DeliveryEffect::Head { repo, .. } => Some(Wake::Head(repo.clone())),
        DeliveryEffect::PullRequest { repo, .. } => Some(Wake::PullRequest(repo.clone())),
        DeliveryEffect::Nothing => None,
    }
}

/// Converts axum's headers; values that are not UTF-8 are skipped (no forge sends them).
fn forge_headers(headers: &HeaderMap) -> Headers {
    headers
        .iter()
        .filter_map(|(name, value)| {
            std::str::from_utf8(value.as_bytes())
                .ok()
                .map(|value| (name.as_str(), value))
        })
        .collect()
}

/// Answers 413 at once when a delivery announces a `Content-Length` above [`BODY_LIMIT`],
/// without waiting for a body that may never come (the connection then closes).
pub(crate) async fn refuse_oversized(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let length = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match length {
        Some(length) if length > BODY_LIMIT as u64 => ApiError::TooLarge {
            length,
            limit: BODY_LIMIT,
        }
        .into_response(),
        _ => next.run(request).await,
    }
}

/// `POST /webhooks/{forge}`: answers what recording the delivery did (202, 200 for a duplicate)
/// and counts the answer in the metrics.
pub(crate) async fn receive(
    State(st): State<AppState>,
    Path(forge_name): Path<String>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let peer = crate::peer_of(&extensions);
    let delivered = deliver(&st, peer, &forge_name, &headers, &body).await;
    crate::metrics::count_delivery(&st.metrics, &forge_name, &delivered);
    if let Err(ApiError::Status(err)) = &delivered
        && err.is_storage_full()
    {
        st.metrics.record_storage_full(Timestamp::now());
    }
    let outcome = delivered?;
    let code = match outcome {
        DeliveryOutcome::Duplicate => StatusCode::OK,
        _ => StatusCode::ACCEPTED,
    };
    Ok((code, Json(json!({ "result": outcome }))).into_response())
}

/// Verifies, parses and records one delivery, then wakes the loops it gave work to.
async fn deliver(
    st: &AppState,
    peer: Option<std::net::SocketAddr>,
    forge_name: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<DeliveryOutcome, ApiError> {
    let no_forge = || ApiError::NoForge(forge_name.to_owned());
    let intake = st.intake.as_ref().ok_or_else(no_forge)?;
    let spec = intake.spec();
    let (name, forge) = spec
        .forges
        .iter()
        .find(|(name, forge)| name.as_str() == forge_name && !forge.kind.is_local())
        .ok_or_else(no_forge)?;
    let kind = forge.kind;
    let headers = forge_headers(headers);

    let secret = intake.secret(&spec, name, forge).await?;
    if let Err(err) = reconix_forge::verify(kind, &headers, body, &secret) {
        // The secret file may have been rotated since it was read: read it once more.
        let retried = match err {
            reconix_forge::Error::SignatureMismatch { .. } => {
                let fresh = intake.reload_secret(&spec, name, forge).await?;
                *fresh != *secret && reconix_forge::verify(kind, &headers, body, &fresh).is_ok()
            }
            _ => false,
        };
        if !retried {
            st.log_refusal(peer, "webhook delivery", &format!("forge {name}: {err}"));
            signature_failure(&st.status, intake, name, forge, &headers, body).await;
            return Err(ApiError::Signature(err));
        }
    }

    let event = reconix_forge::parse(kind, &headers, body).map_err(ApiError::Payload)?;
    let Classified { delivery, effect } = classify(name, forge, &event);
    let wake = wake_for_new_head(&effect);
    let outcome = intake.record(&st.tasks, delivery, effect).await?;
    debug!(forge = %name, delivery = ?event.delivery, ?outcome, "webhook delivery recorded");
    if let (DeliveryOutcome::NewHead, Some(wake)) = (outcome, wake) {
        (intake.wake)(wake);
    }
    Ok(outcome)
}

/// Best effort after a failed verification: when the unverified body names a spec repository,
/// count the failure on its hook and wake the `webhooks` loop (rate-limited), which repairs a
/// hook whose secret drifted. The delivery itself is not recorded.
async fn signature_failure(
    status: &Status,
    intake: &Intake,
    name: &ForgeName,
    forge: &Forge,
    headers: &Headers,
    body: &[u8],
) {
    let Ok(event) = reconix_forge::parse(forge.kind, headers, body) else {
        return;
    };
    let Some((key, _)) = event
        .repo
        .as_deref()
        .and_then(|repo| find_repo(name, forge, repo))
    else {
        return;
    };
    let k = key.clone();
    if let Err(err) = status
        .call(move |db| db.record_signature_failure(&k, Timestamp::now()))
        .await
    {
        warn!(repo = %key, error = %err, "cannot record a signature failure");
    }
    if intake.signature_wake_due(&key) {
        (intake.wake)(Wake::SignatureFailure(key));
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use reconix_forge::{Ignored, Ping, PullRequest, Push};

    use super::*;

    const SPEC: &str = "\
external-url: https://ci.example.org
forges:
  gh:
    kind: github
    token-file: /run/t
    webhook-secret-file: /run/s
    repos:
      Acme/Widgets:
        branches: [main, release/*]
      acme/default: {}
      acme/no-prs:
        pull-requests: false
  gl:
    kind: gitlab
    token-file: /run/t
    webhook-secret-file: /run/s
    repos:
      Group/App: {}
";

    fn spec() -> Spec {
        reconix_spec::parse(SPEC, Path::new("/t.yaml")).unwrap()
    }

    fn classify_in(forge: &str, repo: &str, payload: Payload) -> Classified {
        let spec = spec();
        let name = ForgeName::new(forge).unwrap();
        let event = Event {
            payload,
            repo: Some(repo.to_owned()),
            delivery: Some("d1".to_owned()),
        };
        classify(&name, &spec.forges[&name], &event)
    }

    fn push(git_ref: &str, after: &str) -> Payload {
        Payload::Push(
            Push::new(
                "push",
                git_ref.to_owned(),
                "1".repeat(40),
                after.to_owned(),
                None,
                None,
            )
            .unwrap(),
        )
    }

    fn pr(action: PullRequestAction, head_sha: Option<&str>) -> Payload {
        Payload::PullRequest(PullRequest {
            number: 7,
            action,
            head_sha: head_sha.map(str::to_owned),
            head_ref: Some("feature".to_owned()),
            base_ref: Some("main".to_owned()),
            author: Some("alice".to_owned()),
            from_fork: None,
        })
    }

    fn key(s: &str) -> RepoKey {
        RepoKey::parse(s).unwrap()
    }

    #[test]
    fn push_to_a_built_branch_should_be_a_head_under_the_spec_spelling() {
        let c = classify_in(
            "gh",
            "acme/widgets",
            push("refs/heads/release/1", &"a".repeat(40)),
        );
        assert_eq!(
            c.effect,
            DeliveryEffect::Head {
                repo: key("gh/Acme/Widgets"),
                git_ref: "refs/heads/release/1".to_owned(),
                sha: Some("a".repeat(40)),
            }
        );
        assert_eq!(
            c.delivery,
            NewDelivery {
                forge: ForgeName::new("gh").unwrap(),
                delivery_id: Some("d1".to_owned()),
                event: "push",
                repo: Some("acme/widgets".to_owned()),
                git_ref: Some("refs/heads/release/1".to_owned()),
                sha: Some("a".repeat(40)),
            }
        );
    }

    #[test]
    fn push_to_an_unbuilt_branch_a_tag_or_an_unknown_repo_should_be_nothing() {
        let sha = "a".repeat(40);
        for c in [
            classify_in("gh", "Acme/Widgets", push("refs/heads/feature", &sha)),
            classify_in("gh", "Acme/Widgets", push("refs/tags/v1", &sha)),
            classify_in("gh", "acme/default", push("refs/tags/v1", &sha)),
            classify_in("gh", "acme/other", push("refs/heads/main", &sha)),
        ] {
            assert_eq!(c.effect, DeliveryEffect::Nothing);
            assert_eq!(c.delivery.event, "push");
        }
    }

    #[test]
    fn gitlab_names_should_match_case_sensitively() {
        let sha = "a".repeat(40);
        let c = classify_in("gl", "group/app", push("refs/heads/main", &sha));
        assert_eq!(c.effect, DeliveryEffect::Nothing);
        let c = classify_in("gl", "Group/App", push("refs/heads/main", &sha));
        assert!(matches!(c.effect, DeliveryEffect::Head { .. }));
    }

    #[test]
    fn push_to_a_repo_following_its_default_branch_should_record_every_branch() {
        let c = classify_in(
            "gh",
            "acme/default",
            push("refs/heads/anything", &"b".repeat(40)),
        );
        assert!(matches!(c.effect, DeliveryEffect::Head { .. }));
    }

    #[test]
    fn deleted_branch_should_be_a_head_without_sha() {
        let c = classify_in(
            "gh",
            "acme/default",
            push("refs/heads/gone", &"0".repeat(40)),
        );
        assert_eq!(
            c.effect,
            DeliveryEffect::Head {
                repo: key("gh/acme/default"),
                git_ref: "refs/heads/gone".to_owned(),
                sha: None,
            }
        );
        assert_eq!(c.delivery.sha, None);
    }

    #[test]
    fn pull_request_should_be_open_until_closed_or_merged() {
        let sha = "c".repeat(40);
        for (action, open) in [
            (PullRequestAction::Opened, true),
            (PullRequestAction::Updated, true),
            (PullRequestAction::Edited, true),
            (PullRequestAction::Reopened, true),
            (PullRequestAction::Closed, false),
            (PullRequestAction::Merged, false),
        ] {
            let c = classify_in("gh", "ACME/DEFAULT", pr(action, Some(&sha)));
            assert_eq!(
                c.effect,
                DeliveryEffect::PullRequest {
                    repo: key("gh/acme/default"),
                    pr: PullRequestUpdate {
                        number: 7,
                        head_sha: sha.clone(),
                        head_ref: "feature".to_owned(),
                        base_ref: "main".to_owned(),
                        author: Some("alice".to_owned()),
                        from_fork: true,
                        open,
                    },
                },
                "{action:?}"
            );
            assert_eq!(c.delivery.event, "pull_request");
            assert_eq!(c.delivery.git_ref.as_deref(), Some("refs/pull/7/head"));
        }
    }

    #[test]
    fn pull_request_without_head_or_with_prs_off_should_be_nothing() {
        let c = classify_in("gh", "acme/default", pr(PullRequestAction::Opened, None));
        assert_eq!(c.effect, DeliveryEffect::Nothing);
        let sha = "c".repeat(40);
        let c = classify_in(
            "gh",
            "acme/no-prs",
            pr(PullRequestAction::Opened, Some(&sha)),
        );
        assert_eq!(c.effect, DeliveryEffect::Nothing);
        let c = classify_in("gl", "Group/App", pr(PullRequestAction::Opened, Some(&sha)));
        assert_eq!(
            c.delivery.git_ref.as_deref(),
            Some("refs/merge-requests/7/head")
        );
    }

    #[test]
    fn ping_and_ignored_events_should_be_nothing() {
        let c = classify_in(
            "gh",
            "acme/default",
            Payload::Ping(Ping { hook_id: Some(1) }),
        );
        assert_eq!(
            (c.delivery.event, c.effect),
            ("ping", DeliveryEffect::Nothing)
        );
        let ignored = Payload::Ignored(Ignored {
            event: "installation".to_owned(),
            action: None,
        });
        let c = classify_in("gh", "acme/default", ignored);
        assert_eq!(
            (c.delivery.event, c.effect),
            ("ignored", DeliveryEffect::Nothing)
        );
    }

    #[test]
    fn wake_should_name_the_loop_the_effect_concerns() {
        let head = DeliveryEffect::Head {
            repo: key("gh/a/b"),
            git_ref: "refs/heads/main".to_owned(),
            sha: None,
        };
        assert_eq!(wake_for_new_head(&head), Some(Wake::Head(key("gh/a/b"))));
        let sha = "c".repeat(40);
        let c = classify_in(
            "gh",
            "acme/default",
            pr(PullRequestAction::Opened, Some(&sha)),
        );
        assert_eq!(
            wake_for_new_head(&c.effect),
            Some(Wake::PullRequest(key("gh/acme/default")))
        );
        assert_eq!(wake_for_new_head(&DeliveryEffect::Nothing), None);
    }
}
