//! GitLab (gitlab.com and self-managed) webhooks: the plain shared secret in `X-Gitlab-Token`
//! (there is no HMAC) and the `Push Hook`, `Tag Push Hook` and `Merge Request Hook` payloads.
//!
//! The REST client is [`GitlabClient`] (module `client`).

use serde::Deserialize;

use reconix_spec::Secret;

use crate::event::{Event, Headers, Ignored, Payload, PullRequest, PullRequestAction, Push};
use crate::{Error, Result, verify as sig};

mod client;
pub use client::GitlabClient;

/// The header carrying the webhook's secret token in clear.
pub const TOKEN_HEADER: &str = "X-Gitlab-Token";
/// The event name header (`Push Hook`, `Merge Request Hook`, …).
pub const EVENT_HEADER: &str = "X-Gitlab-Event";
/// Delivery id headers, best first: `Idempotency-Key` is generated once per delivery and kept
/// on retries, which is what coalescing needs; `X-Gitlab-Event-UUID` identifies the event.
pub const DELIVERY_HEADERS: [&str; 2] = ["Idempotency-Key", "X-Gitlab-Event-UUID"];

/// Checks `X-Gitlab-Token` against `secret` in constant time.
///
/// # Errors
/// Returns [`Error::MissingSignature`] or [`Error::SignatureMismatch`].
pub fn verify(headers: &Headers, secret: &Secret) -> Result<()> {
    let header = TOKEN_HEADER;
    let token = headers
        .first_of(&[header])
        .ok_or(Error::MissingSignature { header })?;
    sig::check_token(secret, token, header)
}

/// Parses a delivery by its `X-Gitlab-Event` header. Merge request actions that change no
/// state the CI tracks (`approved`, `unapproved`, …) and other events are [`Payload::Ignored`].
///
/// # Errors
/// Returns [`Error::MissingEventHeader`], [`Error::MalformedPayload`] (not JSON, or a known
/// event without a required field) or [`Error::InvalidField`].
pub fn parse(headers: &Headers, body: &[u8]) -> Result<Event> {
    let event = headers
        .first_of(&[EVENT_HEADER])
        .ok_or(Error::MissingEventHeader {
            header: EVENT_HEADER,
        })?;
    let delivery = headers.first_of(&DELIVERY_HEADERS).map(str::to_owned);
    let (payload, repo) = match event {
        // A tag push has the same shape as a branch push; `ref` tells them apart.
        "Push Hook" | "Tag Push Hook" => {
            let p: PushPayload = crate::event::from_json(event, body)?;
            let push = Push::new(event, p.git_ref, p.before, p.after, None, None)?;
            (Payload::Push(push), Some(p.project.path_with_namespace))
        }
        "Merge Request Hook" => {
            let p: MergeRequestPayload = crate::event::from_json(event, body)?;
            (
                merge_request(event, &p)?,
                Some(p.project.path_with_namespace),
            )
        }
        other => {
            crate::event::from_json::<serde::de::IgnoredAny>(other, body)?;
            let ignored = Ignored {
                event: other.to_owned(),
                action: None,
            };
            (Payload::Ignored(ignored), None)
        }
    };
    Ok(Event {
        payload,
        repo,
        delivery,
    })
}

fn merge_request(event: &str, p: &MergeRequestPayload) -> Result<Payload> {
    let mr = &p.object_attributes;
    let action = match mr.action.as_deref() {
        Some("open") => PullRequestAction::Opened,
        // GitLab sends `oldrev` only when the update brought new commits.
        Some("update") if mr.oldrev.is_some() => PullRequestAction::Updated,
        Some("update") => PullRequestAction::Edited,
        Some("reopen") => PullRequestAction::Reopened,
        Some("close") => PullRequestAction::Closed,
        Some("merge") => PullRequestAction::Merged,
        other => {
            return Ok(Payload::Ignored(Ignored {
                event: event.to_owned(),
                action: other.map(str::to_owned),
            }));
        }
    };
    let from_fork = match (mr.source_project_id, mr.target_project_id) {
        (Some(source), Some(target)) => Some(source != target),
        _ => None,
    };
    let head_sha = crate::event::optional_object_id(
        event,
        "object_attributes.last_commit.id",
        mr.last_commit.as_ref().map(|c| c.id.as_str()),
    )?;
    Ok(Payload::PullRequest(PullRequest {
        number: mr.iid,
        action,
        head_sha,
        head_ref: mr.source_branch.clone(),
        base_ref: mr.target_branch.clone(),
        // The payload's `user` is whoever triggered the event, not the author (who is only
        // `author_id`), so the author's login is unknown here.
        author: None,
        from_fork,
    }))
}

// Subsets of the payloads; serde skips every other field.

#[derive(Debug, Deserialize)]
struct Project {
    path_with_namespace: String,
}

#[derive(Debug, Deserialize)]
struct PushPayload {
    #[serde(rename = "ref")]
    git_ref: String,
    before: String,
    after: String,
    project: Project,
}

#[derive(Debug, Deserialize)]
struct MergeRequestPayload {
    project: Project,
    object_attributes: MergeRequest,
}

#[derive(Debug, Deserialize)]
struct MergeRequest {
    iid: u64,
    action: Option<String>,
    oldrev: Option<String>,
    source_branch: Option<String>,
    target_branch: Option<String>,
    source_project_id: Option<u64>,
    target_project_id: Option<u64>,
    last_commit: Option<Commit>,
}

#[derive(Debug, Deserialize)]
struct Commit {
    id: String,
}
