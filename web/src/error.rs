//! API errors: logged in full, answered sanitized (attic's `ServerError`).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tracing::error;

/// An error answered by an API handler.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The requested thing does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The status database failed.
    #[error("status database: {0}")]
    Status(#[from] reconix_status::Error),
    /// Anything else that went wrong on our side.
    #[error("internal error: {0}")]
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, message) = match &self {
            Self::NotFound(_) => (StatusCode::NOT_FOUND, self.to_string()),
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
