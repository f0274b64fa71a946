//! The HTTP front: one fallback handler that records every request, applies injected faults
//! and hands the request to the git or REST side.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;

use crate::reply::plain;
use crate::{Call, FaultKind, Inner, git, rest};

/// The largest request body accepted (git uploads of tests are small).
const MAX_BODY: usize = 64 * 1024 * 1024;

pub(crate) fn router(inner: Arc<Inner>) -> Router {
    Router::new().fallback(handle).with_state(inner)
}

async fn handle(State(inner): State<Arc<Inner>>, request: Request) -> Response {
    let time = Instant::now();
    let method = request.method().clone();
    let uri = request.uri().clone();
    let target = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_owned(), ToString::to_string);
    let headers = request.headers().clone();
    let fault = inner.lock().take_fault(method.as_str(), &target);
    if let Some(FaultKind::Timeout(_)) = fault {
        // The client gives up before the answer, which drops this future: record it now.
        inner.lock().calls.push(Call {
            method: method.clone(),
            path: target.clone(),
            status: StatusCode::GATEWAY_TIMEOUT.as_u16(),
            time,
        });
    }
    let response = match axum::body::to_bytes(request.into_body(), MAX_BODY).await {
        Err(_) => plain(StatusCode::BAD_REQUEST, "unreadable request body"),
        Ok(_) if fault.is_some() => match fault {
            Some(kind) => fault_response(kind).await,
            None => plain(StatusCode::INTERNAL_SERVER_ERROR, "no fault"),
        },
        Ok(body) => {
            let path = uri.path();
            let query = uri.query().unwrap_or("");
            if git::is_git_path(path) {
                git::serve(&inner, &method, path, query, &headers, body).await
            } else {
                rest::serve(&inner, &method, path, query, &headers, &body).await
            }
        }
    };
    if !matches!(fault, Some(FaultKind::Timeout(_))) {
        inner.lock().calls.push(Call {
            method,
            path: target,
            status: response.status().as_u16(),
            time,
        });
    }
    response
}

async fn fault_response(kind: FaultKind) -> Response {
    match kind {
        FaultKind::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let reason = status.canonical_reason().unwrap_or("injected fault");
            plain(status, reason)
        }
        FaultKind::RateLimited { retry_after_secs } => {
            let mut response = plain(StatusCode::TOO_MANY_REQUESTS, "rate limited");
            if let Ok(value) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            response
        }
        FaultKind::Timeout(hold) => {
            tokio::time::sleep(hold).await;
            plain(StatusCode::GATEWAY_TIMEOUT, "gateway timeout")
        }
    }
}
