//! The normalised webhook event every forge's delivery is parsed into, and the delivery's
//! headers. Serialised as one JSON object with snake_case keys; a field the payload lacks is
//! `null`, never guessed.

use serde::Serialize;

use crate::{Error, Result};

/// The 40 zeros a forge sends as `before` of a created ref and `after` of a deleted one.
const ZERO_SHA1: &str = "0000000000000000000000000000000000000000";

/// A delivery's HTTP headers. Names compare case-insensitively, as in HTTP.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    /// Returns an empty header list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a header; earlier headers of the same name win in [`Headers::get`].
    #[must_use]
    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.insert(name, value);
        self
    }

    /// Adds a header; earlier headers of the same name win in [`Headers::get`].
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.push((name.into(), value.into()));
    }

    /// Returns the value of the first header called `name` (any case), trimmed.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    }

    /// Returns the first non-empty value among `names`, in order.
    pub fn first_of(&self, names: &[&str]) -> Option<&str> {
        names
            .iter()
            .filter_map(|name| self.get(name))
            .find(|value| !value.is_empty())
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

/// One webhook delivery, normalised across forges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// `kind` and the fields of that kind.
    #[serde(flatten)]
    pub payload: Payload,
    /// The repository as `owner/name` (GitLab: `path_with_namespace`, which may have more
    /// segments); `null` when the payload names none (e.g. an ignored installation event).
    pub repo: Option<String>,
    /// The forge's delivery id from the headers, the key for coalescing redeliveries.
    pub delivery: Option<String>,
}

/// What happened, by kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Payload {
    /// Commits were pushed to a branch or tag, or one was created or deleted.
    Push(Push),
    /// A pull (merge) request was opened, updated, closed, …
    PullRequest(PullRequest),
    /// The forge tests the hook (GitHub `ping`).
    Ping(Ping),
    /// Anything the CI does not act on.
    Ignored(Ignored),
}

/// A push to one ref.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Push {
    /// The full ref, e.g. `refs/heads/main` or `refs/tags/v1`.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// The commit the ref pointed to before (zeros when created).
    pub before: String,
    /// The commit the ref points to now (zeros when deleted).
    pub after: String,
    /// Whether the ref was created: the payload's `created`, or else `before` is all zeros.
    pub created: bool,
    /// Whether the ref was deleted (`after` is all zeros).
    pub deleted: bool,
    /// Whether the push was forced; `null` when the forge does not say (GitLab, Gitea).
    pub forced: Option<bool>,
    /// Whether the ref is a tag (`refs/tags/…`).
    pub tag: bool,
}

impl Push {
    /// Builds a push from the payload's fields, checking that the commit ids are hex and
    /// deriving `deleted` and `tag` (and `created` when the payload lacks it).
    ///
    /// # Errors
    /// Returns [`Error::InvalidField`] when `before` or `after` is not a 40- or 64-digit
    /// lowercase hex object id.
    pub fn new(
        event: &str,
        git_ref: String,
        before: String,
        after: String,
        created: Option<bool>,
        forced: Option<bool>,
    ) -> Result<Self> {
        check_object_id(event, "before", &before)?;
        check_object_id(event, "after", &after)?;
        Ok(Self {
            tag: git_ref.starts_with("refs/tags/"),
            git_ref,
            created: created.unwrap_or_else(|| is_zero(&before)),
            deleted: is_zero(&after),
            forced,
            before,
            after,
        })
    }
}

/// A change to a pull request (GitLab: merge request).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PullRequest {
    /// The number within the repository (GitLab: `iid`).
    pub number: u64,
    /// What happened to it.
    pub action: PullRequestAction,
    /// The commit at the head of the source branch.
    pub head_sha: Option<String>,
    /// The source branch (short name).
    pub head_ref: Option<String>,
    /// The target branch (short name).
    pub base_ref: Option<String>,
    /// The author's login; `null` when the payload only names the actor (GitLab).
    pub author: Option<String>,
    /// Whether the source branch lives in another repository; `null` when unknown.
    pub from_fork: Option<bool>,
}

/// What happened to a pull request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PullRequestAction {
    /// It was opened.
    Opened,
    /// New commits were pushed to it (GitHub `synchronize`, GitLab `update` with `oldrev`,
    /// Gitea `synchronized`).
    Updated,
    /// Its title, description, … changed, but not its commits.
    Edited,
    /// It was reopened.
    Reopened,
    /// It was closed without merging.
    Closed,
    /// It was merged.
    Merged,
}

/// A hook test delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ping {
    /// The id of the hook being tested, when the payload has it.
    pub hook_id: Option<u64>,
}

/// A delivery the CI does not act on, with enough to say why in a log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Ignored {
    /// The event header's value.
    pub event: String,
    /// The payload's action, when a known event was ignored because of it.
    pub action: Option<String>,
}

/// Returns whether `sha` is the all-zeros object id.
fn is_zero(sha: &str) -> bool {
    sha == ZERO_SHA1 || (!sha.is_empty() && sha.bytes().all(|b| b == b'0'))
}

fn check_object_id(event: &str, field: &'static str, sha: &str) -> Result<()> {
    let hex = sha
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if hex && matches!(sha.len(), 40 | 64) {
        Ok(())
    } else {
        Err(Error::InvalidField {
            event: event.to_owned(),
            field,
            reason: format!("{sha:?} is not a 40- or 64-digit lowercase hex object id"),
        })
    }
}

/// Returns `sha` when it is a commit id, for fields that may be absent (a PR's head).
pub(crate) fn optional_object_id(
    event: &str,
    field: &'static str,
    sha: Option<&str>,
) -> Result<Option<String>> {
    sha.map(|sha| check_object_id(event, field, sha).map(|()| sha.to_owned()))
        .transpose()
}

/// Deserialises a payload, mapping serde's error to [`Error::MalformedPayload`].
pub(crate) fn from_json<'a, T: serde::Deserialize<'a>>(event: &str, body: &'a [u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|source| Error::MalformedPayload {
        event: event.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_should_match_names_in_any_case() {
        let headers = Headers::new().with("X-GitHub-Event", " push ");
        assert_eq!(headers.get("x-github-event"), Some("push"));
        assert_eq!(headers.get("X-GITHUB-EVENT"), Some("push"));
        assert_eq!(headers.get("x-github-delivery"), None);
    }

    #[test]
    fn headers_first_of_should_skip_empty_values() {
        let headers = Headers::new()
            .with("X-Gitea-Signature", "")
            .with("X-Forgejo-Signature", "ab");
        assert_eq!(
            headers.first_of(&["X-Gitea-Signature", "X-Forgejo-Signature"]),
            Some("ab")
        );
    }

    #[test]
    fn push_should_derive_deleted_tag_and_missing_created() {
        let push = Push::new(
            "push",
            "refs/tags/v1".into(),
            ZERO_SHA1.into(),
            "a".repeat(40),
            None,
            None,
        )
        .unwrap();
        assert!(push.tag && push.created && !push.deleted);
        let push = Push::new(
            "push",
            "refs/heads/x".into(),
            "b".repeat(64),
            ZERO_SHA1.into(),
            Some(false),
            Some(false),
        )
        .unwrap();
        assert!(!push.tag && !push.created && push.deleted);
    }

    #[test]
    fn push_should_reject_a_commit_id_that_is_not_hex() {
        let err = Push::new(
            "push",
            "refs/heads/x".into(),
            "main".into(),
            ZERO_SHA1.into(),
            None,
            None,
        )
        .unwrap_err();
        assert!(matches!(
            err,
            Error::InvalidField {
                field: "before",
                ..
            }
        ));
    }

    #[test]
    fn event_should_serialise_kind_and_snake_case_keys() {
        let event = Event {
            payload: Payload::Ping(Ping { hook_id: Some(7) }),
            repo: None,
            delivery: Some("d".into()),
        };
        assert_eq!(
            serde_json::to_value(&event).unwrap(),
            serde_json::json!({"kind": "ping", "hook_id": 7, "repo": null, "delivery": "d"})
        );
    }
}
