//! Gitea, Forgejo and Codeberg webhooks: bare hex HMAC-SHA256 of the raw body in
//! `X-Gitea-Signature` or `X-Forgejo-Signature` (Forgejo sends both, with the same value) and
//! the `push` and `pull_request` payloads.
//!
//! The REST client is [`GiteaClient`] (module `client`).

use serde::Deserialize;

use reconix_spec::Secret;

use crate::event::{Event, Headers, Ignored, Payload, PullRequest, PullRequestAction, Push};
use crate::{Error, Result, verify as sig};

mod client;
pub use client::GiteaClient;

/// The signature headers, either of which is accepted.
pub const SIGNATURE_HEADERS: [&str; 2] = ["X-Gitea-Signature", "X-Forgejo-Signature"];
/// The event name headers (`push`, `pull_request`, …), either of which is accepted.
pub const EVENT_HEADERS: [&str; 2] = ["X-Gitea-Event", "X-Forgejo-Event"];
/// The delivery id headers (the hook task's UUID), either of which is accepted.
pub const DELIVERY_HEADERS: [&str; 2] = ["X-Gitea-Delivery", "X-Forgejo-Delivery"];

const SIGNATURE_NAMES: &str = "X-Gitea-Signature or X-Forgejo-Signature";
const EVENT_NAMES: &str = "X-Gitea-Event or X-Forgejo-Event";

/// Checks `X-Gitea-Signature` (or `X-Forgejo-Signature`) against the HMAC-SHA256 of `body`
/// keyed with `secret`. An empty header counts as missing: Gitea sends the headers empty when
/// the hook has no secret.
///
/// # Errors
/// Returns [`Error::MissingSignature`], [`Error::MalformedSignature`] (not 64 hex digits) or
/// [`Error::SignatureMismatch`].
pub fn verify(headers: &Headers, body: &[u8], secret: &Secret) -> Result<()> {
    let (header, value) = SIGNATURE_HEADERS
        .iter()
        .find_map(|&name| headers.first_of(&[name]).map(|value| (name, value)))
        .ok_or(Error::MissingSignature {
            header: SIGNATURE_NAMES,
        })?;
    sig::check_hmac_sha256_hex(secret, body, value, header)
}

/// Parses a delivery by its `X-Gitea-Event` (or `X-Forgejo-Event`) header. Pull request
/// actions that change nothing the CI builds (`label_updated`, `assigned`, …) and other events
/// are [`Payload::Ignored`].
///
/// # Errors
/// Returns [`Error::MissingEventHeader`], [`Error::MalformedPayload`] (not JSON, or a known
/// event without a required field) or [`Error::InvalidField`].
pub fn parse(headers: &Headers, body: &[u8]) -> Result<Event> {
    let event = headers
        .first_of(&EVENT_HEADERS)
        .ok_or(Error::MissingEventHeader {
            header: EVENT_NAMES,
        })?;
    let delivery = headers.first_of(&DELIVERY_HEADERS).map(str::to_owned);
    let (payload, repo) = match event {
        "push" => {
            let p: PushPayload = crate::event::from_json(event, body)?;
            let push = Push::new(event, p.git_ref, p.before, p.after, None, None)?;
            (Payload::Push(push), Some(p.repository.full_name))
        }
        "pull_request" => {
            let p: PullRequestPayload = crate::event::from_json(event, body)?;
            (pull_request(event, &p)?, Some(p.repository.full_name))
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

fn pull_request(event: &str, p: &PullRequestPayload) -> Result<Payload> {
    let pr = &p.pull_request;
    let action = match (p.action.as_str(), pr.merged) {
        ("opened", _) => PullRequestAction::Opened,
        ("synchronized", _) => PullRequestAction::Updated,
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
    let from_fork = match (&pr.head.repo, &pr.base.repo) {
        (Some(head), Some(base)) => Some(head.full_name != base.full_name),
        _ => match (pr.head.repo_id, pr.base.repo_id) {
            (Some(head), Some(base)) => Some(head != base),
            _ => None,
        },
    };
    let head_sha =
        crate::event::optional_object_id(event, "pull_request.head.sha", pr.head.sha.as_deref())?;
    Ok(Payload::PullRequest(PullRequest {
        number: p.number,
        action,
        head_sha,
        head_ref: pr.head.git_ref.clone(),
        base_ref: pr.base.git_ref.clone(),
        author: pr.user.as_ref().map(|u| u.login.clone()),
        from_fork,
    }))
}

// Subsets of the payloads (Gitea's `modules/structs/hook.go`); serde skips every other field.

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
    git_ref: Option<String>,
    sha: Option<String>,
    repo_id: Option<u64>,
    repo: Option<Repository>,
}

#[derive(Debug, Deserialize)]
struct User {
    login: String,
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    // No upstream publishes a Gitea/Forgejo pull_request example, so this one is written from
    // the field inventory of `PullRequestPayload` and the API `PullRequest` (Gitea v1.26.3),
    // keeping only the fields the parser reads plus a few it must skip.
    fn payload(action: &str, merged: bool, head_repo: &str) -> Vec<u8> {
        let sha = "4b5b8b9f1cf5c4c0e8ba4f4a2d5d9c7c4c0a1b2e";
        let head_id = if head_repo == "org/app" { 1 } else { 3 };
        let body = json!({
            "action": action,
            "number": 7,
            "pull_request": {
                "id": 70, "number": 7, "state": "open", "merged": merged,
                "user": {"id": 2, "login": "alice", "full_name": "Alice"},
                "head": {"label": "feature", "ref": "feature", "sha": sha, "repo_id": head_id,
                          "repo": {"id": head_id, "full_name": head_repo}},
                "base": {"label": "main", "ref": "main", "sha": sha, "repo_id": 1,
                          "repo": {"id": 1, "full_name": "org/app"}},
            },
            "repository": {"id": 1, "full_name": "org/app"},
            "sender": {"id": 2, "login": "alice"},
        });
        serde_json::to_vec(&body).unwrap()
    }

    fn normalise(action: &str, merged: bool, head_repo: &str) -> Value {
        let headers = Headers::new().with("X-Forgejo-Event", "pull_request");
        let event = parse(&headers, &payload(action, merged, head_repo)).unwrap();
        serde_json::to_value(event).unwrap()
    }

    #[test]
    fn pull_request_should_normalise_every_field() {
        assert_eq!(
            normalise("opened", false, "org/app"),
            json!({
                "kind": "pull_request",
                "repo": "org/app",
                "number": 7,
                "action": "opened",
                "head_sha": "4b5b8b9f1cf5c4c0e8ba4f4a2d5d9c7c4c0a1b2e",
                "head_ref": "feature",
                "base_ref": "main",
                "author": "alice",
                "from_fork": false,
                "delivery": null,
            })
        );
    }

    #[test]
    fn pull_request_should_map_every_action() {
        for (raw, merged, action) in [
            ("synchronized", false, "updated"),
            ("edited", false, "edited"),
            ("reopened", false, "reopened"),
            ("closed", false, "closed"),
            ("closed", true, "merged"),
        ] {
            assert_eq!(normalise(raw, merged, "org/app")["action"], action, "{raw}");
        }
        let ignored = normalise("label_updated", false, "org/app");
        assert_eq!(ignored["kind"], "ignored");
        assert_eq!(ignored["action"], "label_updated");
    }

    #[test]
    fn pull_request_from_another_repository_should_be_from_a_fork() {
        assert_eq!(normalise("opened", false, "mallory/app")["from_fork"], true);
    }
}
