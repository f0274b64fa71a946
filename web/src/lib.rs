//! HTTP surface of the daemon: the JSON API (`/api/v1/…`) and a plain status page at `/`.
//!
//! Everything here is read-only; handlers only read the status database through its views.
//! Entry point: [`router`], which takes its state as an argument (axum's testing pattern).

mod error;
mod page;

use std::path::PathBuf;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use reconix_status::views::{EvaluationDetail, EvaluationSummary, LoopSummary, StatusOverview};
use reconix_status::{EvaluationId, JobId, Status};
use serde::Deserialize;

pub use error::ApiError;

/// Shared state of every handler.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The observed-state database.
    pub status: Status,
}

impl AppState {
    /// Creates the state from a status handle.
    pub fn new(status: Status) -> Self {
        Self { status }
    }
}

/// Returns the daemon's HTTP router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/api/v1/status", get(overview))
        .route("/api/v1/evaluations", get(evaluations))
        .route("/api/v1/evaluations/{id}", get(evaluation))
        .route("/api/v1/jobs/{id}/log", get(job_log))
        .route("/api/v1/loops", get(loops))
        .with_state(state)
}

/// Serves the router on `listener` until `shutdown` completes, then finishes in-flight requests.
///
/// # Errors
/// Returns the I/O error that stopped the server.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Query parameters of list endpoints.
#[derive(Debug, Deserialize)]
struct ListQuery {
    /// How many rows at most (default 50, at most 1000).
    limit: Option<u32>,
}

impl ListQuery {
    fn limit(&self) -> u32 {
        self.limit.unwrap_or(50).clamp(1, 1000)
    }
}

async fn evaluations(
    State(st): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<EvaluationSummary>>, ApiError> {
    let limit = q.limit();
    Ok(Json(
        st.status.call(move |db| db.evaluation_list(limit)).await?,
    ))
}

async fn evaluation(
    State(st): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<EvaluationDetail>, ApiError> {
    st.status
        .call(move |db| db.evaluation_detail(EvaluationId(id)))
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound("evaluation"))
}

async fn loops(State(st): State<AppState>) -> Result<Json<Vec<LoopSummary>>, ApiError> {
    Ok(Json(st.status.call(|db| db.loop_list()).await?))
}

async fn overview(State(st): State<AppState>) -> Result<Json<StatusOverview>, ApiError> {
    Ok(Json(st.status.call(|db| db.overview(10)).await?))
}

async fn job_log(State(st): State<AppState>, Path(id): Path<i64>) -> Result<Response, ApiError> {
    let path: Option<PathBuf> = st.status.call(move |db| db.job_log_path(JobId(id))).await?;
    let path = path.ok_or(ApiError::NotFound("log"))?;
    let body = match tokio::fs::read(&path).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApiError::NotFound("log"));
        }
        Err(e) => return Err(ApiError::Internal(e.to_string())),
    };
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
}

async fn index(State(st): State<AppState>) -> Result<Html<String>, ApiError> {
    let (list, latest, loops) = st
        .status
        .call(|db| {
            let list = db.evaluation_list(20)?;
            let latest = match list.first() {
                Some(e) => db.evaluation_detail(e.id)?,
                None => None,
            };
            Ok((list, latest, db.loop_list()?))
        })
        .await?;
    Ok(Html(page::render(&list, latest.as_ref(), &loops)))
}

#[cfg(test)]
mod tests;
