//! Forges (GitHub, GitLab, Gitea/Forgejo): webhook signature verification and parsing of
//! deliveries into one normalised [`Event`] (pure code: no IO, no async), and REST clients
//! behind the [`Forge`] port.
//!
//! A delivery is checked in two steps, so that the caller decides what to do with each failure
//! (the intake answers 401 to a [`ErrorClass::Signature`] error and 400 to a
//! [`ErrorClass::Payload`] one; `reconix webhook inspect` exits 2 and 1):
//! [`verify()`] checks the signature over the raw body, then [`parse()`] reads the event header
//! and the JSON payload.
//!
//! The REST side is the [`Forge`] port ([`api`]) with one client per kind: [`GithubClient`],
//! [`GitlabClient`] and [`GiteaClient`]. They share the HTTP machinery (retries, rate limits,
//! pagination) and differ only in endpoints and vocabulary. An open pull request from the API is
//! [`api::PullRequest`], not the webhook event's [`PullRequest`].

pub mod api;
mod client;
pub mod event;
pub mod gitea;
pub mod github;
pub mod gitlab;
mod http;
mod repos_api;
pub mod verify;

pub use api::{
    ApiError, ApiResult, Branch, CheckConclusion, CheckOutput, CheckRun, CheckRunSpec, CheckStatus,
    CommitStatus, Forge, Hook, HookEvent, HookSpec, Permission, RepoInfo, StatusState,
};
pub use client::{ForgeClient, pull_request_ref};
pub use event::{Event, Headers, Ignored, Payload, Ping, PullRequest, PullRequestAction, Push};
pub use gitea::GiteaClient;
pub use github::GithubClient;
pub use gitlab::GitlabClient;
pub use http::RetryPolicy;

use reconix_spec::{ForgeKind, Secret};

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a delivery was rejected. Messages never contain the secret nor the signature's value.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The delivery carries no signature (or token) header although a secret is configured.
    #[error("missing signature header {header}")]
    MissingSignature {
        /// The header (or headers) that was looked for.
        header: &'static str,
    },
    /// The signature header is not of the form the forge sends (e.g. not 64 hex digits).
    #[error("malformed signature in header {header}")]
    MalformedSignature {
        /// The header that holds the malformed value.
        header: &'static str,
    },
    /// The signature (or token) does not match the body and the configured secret.
    #[error("signature in header {header} does not match")]
    SignatureMismatch {
        /// The header whose value did not match.
        header: &'static str,
    },
    /// The delivery has no event header, so its payload cannot be interpreted.
    #[error("missing event header {header}")]
    MissingEventHeader {
        /// The header (or headers) that was looked for.
        header: &'static str,
    },
    /// The body is not JSON, or a known event lacks a required field.
    #[error("malformed {event} payload")]
    MalformedPayload {
        /// The event named by the event header.
        event: String,
        /// What serde found wrong.
        #[source]
        source: serde_json::Error,
    },
    /// A field is present but its value is unusable (e.g. a commit id that is not hex).
    #[error("invalid {field} in {event} payload: {reason}")]
    InvalidField {
        /// The event named by the event header.
        event: String,
        /// The JSON path of the field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The forge kind has no webhooks (a `local` forge).
    #[error("forge kind {kind} has no webhooks")]
    NoWebhooks {
        /// The kind that was given.
        kind: &'static str,
    },
}

/// The two families of [`Error`], which callers answer differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The delivery is not proven to come from the forge: answer 401, store nothing.
    Signature,
    /// The delivery is authentic (or unchecked) but cannot be understood: answer 400.
    Payload,
}

impl Error {
    /// Returns the family of this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::MissingSignature { .. }
            | Self::MalformedSignature { .. }
            | Self::SignatureMismatch { .. } => ErrorClass::Signature,
            Self::MissingEventHeader { .. }
            | Self::MalformedPayload { .. }
            | Self::InvalidField { .. }
            | Self::NoWebhooks { .. } => ErrorClass::Payload,
        }
    }
}

/// Checks a delivery's signature over its raw `body` with the forge kind's scheme.
///
/// # Errors
/// Returns [`Error::MissingSignature`], [`Error::MalformedSignature`] or
/// [`Error::SignatureMismatch`]; [`Error::NoWebhooks`] for a `local` forge.
pub fn verify(kind: ForgeKind, headers: &Headers, body: &[u8], secret: &Secret) -> Result<()> {
    match kind {
        ForgeKind::Github => github::verify(headers, body, secret),
        ForgeKind::Gitlab => gitlab::verify(headers, secret),
        ForgeKind::Gitea => gitea::verify(headers, body, secret),
        ForgeKind::Local => Err(Error::NoWebhooks {
            kind: kind.as_str(),
        }),
    }
}

/// Parses a delivery into the normalised [`Event`]; it does not check the signature.
///
/// # Errors
/// Returns [`Error::MissingEventHeader`], [`Error::MalformedPayload`] or
/// [`Error::InvalidField`]; [`Error::NoWebhooks`] for a `local` forge.
pub fn parse(kind: ForgeKind, headers: &Headers, body: &[u8]) -> Result<Event> {
    match kind {
        ForgeKind::Github => github::parse(headers, body),
        ForgeKind::Gitlab => gitlab::parse(headers, body),
        ForgeKind::Gitea => gitea::parse(headers, body),
        ForgeKind::Local => Err(Error::NoWebhooks {
            kind: kind.as_str(),
        }),
    }
}
