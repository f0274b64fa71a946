//! API errors: logged in full, answered sanitized (attic's `ServerError`).

use std::path::PathBuf;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tracing::error;

/// An error answered by an API handler.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The requested thing does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A webhook was sent to a forge the spec does not have (or a `local` one, or the daemon
    /// runs without an intake).
    #[error("no forge named `{0}`")]
    NoForge(String),
    /// A webhook delivery's signature did not verify: answered 401 with the reason, which
    /// names only the header (never the secret nor the signature).
    #[error("webhook signature rejected")]
    Signature(#[source] reconix_forge::Error),
    /// A verified webhook delivery could not be understood: answered 400.
    #[error("webhook payload rejected")]
    Payload(#[source] reconix_forge::Error),
    /// A forge's webhook secret file could not be read. The answer names the file, never its
    /// contents.
    #[error("cannot read the webhook secret file {}", path.display())]
    SecretFile {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// No route has this path.
    #[error("no such endpoint: {0}")]
    NoRoute(String),
    /// The path exists but does not take this method.
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed {
        /// The method asked for.
        method: String,
        /// The path.
        path: String,
    },
    /// A request body announced as larger than the endpoint takes (in bytes).
    #[error("the body of {length} bytes is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The announced `Content-Length`.
        length: u64,
        /// The endpoint's limit.
        limit: usize,
    },
    /// The request names something the daemon refuses to serve (a build product outside its
    /// job's outputs): answered 403 with the reason.
    #[error("{0}")]
    Forbidden(String),
    /// The request is well-formed but asks for something that cannot be served as asked
    /// (a directory product): answered 400 with the reason.
    #[error("{0}")]
    BadRequest(String),
    /// The status database failed.
    #[error("status database: {0}")]
    Status(#[from] reconix_status::Error),
    /// Anything else that went wrong on our side.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Seconds a client should wait before retrying while the state directory is full.
const RETRY_AFTER_FULL: &str = "30";

/// Returns `err` followed by its causes, `: `-separated.
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, message) = match &self {
            Self::NotFound(_) | Self::NoForge(_) | Self::NoRoute(_) => {
                (StatusCode::NOT_FOUND, self.to_string())
            }
            Self::MethodNotAllowed { .. } => (StatusCode::METHOD_NOT_ALLOWED, self.to_string()),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, self.to_string()),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, self.to_string()),
            Self::TooLarge { .. } => {
                // The body is not read: the connection closes after the answer.
                let mut response = (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    Json(json!({ "error": self.to_string() })),
                )
                    .into_response();
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                return response;
            }
            Self::Status(err) if err.is_storage_full() => {
                // The state directory is full: the forge redelivers later, nothing was stored.
                error!(error = %chain(&self), "api request failed: the state directory is full");
                let mut response = (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(json!({ "error": "the daemon's state directory is full; retry later" })),
                )
                    .into_response();
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_static(RETRY_AFTER_FULL),
                );
                return response;
            }
            Self::Signature(err) => (StatusCode::UNAUTHORIZED, err.to_string()),
            // The cause (serde's line and column) helps whoever configured the hook.
            Self::Payload(err) => (StatusCode::BAD_REQUEST, chain(err)),
            Self::SecretFile { .. } => {
                // The path and the IO error; `SecretFile::read` never puts contents in it.
                let message = chain(&self);
                error!(error = %message, "webhook intake cannot read its secret");
                (StatusCode::INTERNAL_SERVER_ERROR, message)
            }
            Self::Status(_) | Self::Internal(_) => {
                // The full error goes to the log; the client learns only that it failed.
                error!(error = %self, "api request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error (see the daemon log)".to_owned(),
                )
            }
        };
        (code, Json(json!({ "error": message }))).into_response()
    }
}
