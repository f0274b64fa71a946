//! GitHub and GitHub Enterprise Server webhooks: `X-Hub-Signature-256` (`sha256=` + hex
//! HMAC-SHA256 of the raw body) and the `push`, `pull_request` and `ping` payloads.
//!
//! The REST client is [`GithubClient`] (module `client`).

use serde::Deserialize;

use reconix_spec::Secret;

use crate::event::{Event, Headers, Ignored, Payload, Ping, PullRequest, PullRequestAction, Push};
use crate::{Error, Result, verify as sig};

mod client;
pub use client::GithubClient;

/// The signature header.
pub const SIGNATURE_HEADER: &str = "X-Hub-Signature-256";
/// The event name header (`push`, `pull_request`, `ping`, …).
pub const EVENT_HEADER: &str = "X-GitHub-Event";
/// The delivery id header (a GUID, the same on redelivery).
pub const DELIVERY_HEADER: &str = "X-GitHub-Delivery";

/// Checks `X-Hub-Signature-256` against the HMAC-SHA256 of `body` keyed with `secret`.
///
/// # Errors
/// Returns [`Error::MissingSignature`], [`Error::MalformedSignature`] (no `sha256=` prefix, or
/// not 64 hex digits) or [`Error::SignatureMismatch`].
pub fn verify(headers: &Headers, body: &[u8], secret: &Secret) -> Result<()> {
    let header = SIGNATURE_HEADER;
    let value = headers
        .first_of(&[header])
        .ok_or(Error::MissingSignature { header })?;
    let hex = value
        .strip_prefix("sha256=")
        .ok_or(Error::MalformedSignature { header })?;
    sig::check_hmac_sha256_hex(secret, body, hex, header)
}

/// Parses a delivery by its `X-GitHub-Event` header; events other than `push`,
/// `pull_request` and `ping`, and pull request actions that change nothing the CI builds
/// (`labeled`, `assigned`, …), are [`Payload::Ignored`].
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
    let delivery = headers.first_of(&[DELIVERY_HEADER]).map(str::to_owned);
    let (payload, repo) = match event {
        "push" => {
            let p: PushPayload = crate::event::from_json(event, body)?;
            let push = Push::new(event, p.git_ref, p.before, p.after, p.created, p.forced)?;
            (Payload::Push(push), Some(p.repository.full_name))
        }
        "pull_request" => {
            let p: PullRequestPayload = crate::event::from_json(event, body)?;
            (pull_request(event, &p)?, Some(p.repository.full_name))
        }
        "ping" => {
            let p: PingPayload = crate::event::from_json(event, body)?;
            (
                Payload::Ping(Ping { hook_id: p.hook_id }),
                p.repository.map(|r| r.full_name),
            )
        }
        other => {
            // Still insist on JSON: a body that is not JSON is a broken delivery, whatever
            // its event.
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

fn pull_request(event: &str, p: &PullRequestPayload) -> Result<Payload> {
    let action = match (p.action.as_str(), p.pull_request.merged) {
        ("opened", _) => PullRequestAction::Opened,
        ("synchronize", _) => PullRequestAction::Updated,
        ("edited", _) => PullRequestAction::Edited,
        ("reopened", _) => PullRequestAction::Reopened,
        ("closed", Some(true)) => PullRequestAction::Merged,
        ("closed", _) => PullRequestAction::Closed,
        (other, _) => {
            return Ok(Payload::Ignored(Ignored {
                event: event.to_owned(),
                action: Some(other.to_owned()),
            }));
        }
    };
    let pr = &p.pull_request;
    // `head.repo` is null once the fork was deleted; then the origin is unknown.
    let from_fork = pr
        .head
        .repo
        .as_ref()
        .map(|head| head.full_name != p.repository.full_name);
    let head_sha = crate::event::optional_object_id(
        event,
        "pull_request.head.sha",
        Some(pr.head.sha.as_str()),
    )?;
    Ok(Payload::PullRequest(PullRequest {
        number: p.number,
        action,
        head_sha,
        head_ref: Some(pr.head.git_ref.clone()),
        base_ref: Some(pr.base.git_ref.clone()),
        author: pr.user.as_ref().map(|u| u.login.clone()),
        from_fork,
    }))
}

// The payload subsets below name only what the CI reads; serde skips every other field, so
// payloads may grow without breaking the parser.

#[derive(Debug, Deserialize)]
struct Repository {
    full_name: String,
}

#[derive(Debug, Deserialize)]
struct PushPayload {
    #[serde(rename = "ref")]
    git_ref: String,
    before: String,
    after: String,
    created: Option<bool>,
    forced: Option<bool>,
    repository: Repository,
}

#[derive(Debug, Deserialize)]
struct PullRequestPayload {
    action: String,
    number: u64,
    pull_request: PullRequestBody,
    repository: Repository,
}

#[derive(Debug, Deserialize)]
struct PullRequestBody {
    head: Branch,
    base: Branch,
    user: Option<User>,
    merged: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct Branch {
    #[serde(rename = "ref")]
    git_ref: String,
    sha: String,
    repo: Option<Repository>,
}

#[derive(Debug, Deserialize)]
struct User {
    login: String,
}

#[derive(Debug, Deserialize)]
struct PingPayload {
    hook_id: Option<u64>,
    repository: Option<Repository>,
}
