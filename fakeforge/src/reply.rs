//! Plain-text replies, shared by the REST emulation (`server.rs`) and git over HTTP (`git.rs`).

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// A `text/plain` reply with `text` and a newline.
pub(crate) fn plain(status: StatusCode, text: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from(format!("{text}\n")),
    )
        .into_response()
}
