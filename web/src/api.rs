//! The job endpoints of the JSON API and its mutations.
//!
//! Reads: `GET /api/v1/jobs/{id}`, `GET /api/v1/jobs?evaluation=&state=&limit=&offset=` and
//! `GET /api/v1/jobs/{id}/log[?offset=N]`. Mutations, which need the bearer token
//! ([`Authorized`]): `POST /api/v1/jobs/{id}/rebuild`, `POST /api/v1/evaluations/{id}/cancel`
//! and `POST /api/v1/evaluations/{id}/rerun`. A mutation is one status transaction (see
//! `reconix_status::mutations`) followed by [`Wake`]s for the loops that now have work; it
//! answers 202 because those loops do the work later.

use std::fmt;
use std::io::SeekFrom;
use std::path::Path as FsPath;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use reconix_spec::Timestamp;
use reconix_status::views::{JobDetail, JobFilter, JobLog};
use reconix_status::{EvaluationId, JobId, JobState, StatusDb};
use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::auth::Authorized;
use crate::webhooks::WakeFn;
use crate::{ApiError, AppState, Wake};

/// The current size of the log file, in bytes (where the next `?offset=` should start).
const LOG_SIZE: HeaderName = HeaderName::from_static("x-reconix-log-size");
/// `true` once the job is terminal: the log will not grow any more.
const LOG_COMPLETE: HeaderName = HeaderName::from_static("x-reconix-log-complete");

/// The routes of this module.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/jobs", get(jobs))
        .route("/api/v1/jobs/{id}", get(job))
        .route("/api/v1/jobs/{id}/log", get(job_log))
        .route("/api/v1/jobs/{id}/rebuild", post(rebuild))
        .route("/api/v1/evaluations/{id}/cancel", post(cancel))
        .route("/api/v1/evaluations/{id}/rerun", post(rerun))
}

/// The daemon's wake callback, if it gave one; mutations call it after committing.
#[derive(Clone, Default)]
pub(crate) struct Waker(Option<WakeFn>);

impl Waker {
    pub(crate) fn new(wake: WakeFn) -> Self {
        Self(Some(wake))
    }

    /// Calls the callback with each of `wakes`.
    fn wake(&self, wakes: impl IntoIterator<Item = Wake>) {
        if let Some(wake) = &self.0 {
            wakes.into_iter().for_each(|w| wake(w));
        }
    }
}

impl fmt::Debug for Waker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A closure cannot be printed; whether there is one is what matters.
        f.debug_tuple("Waker").field(&self.0.is_some()).finish()
    }
}

/// An error of a mutation: a refused request (409) or any API error.
#[derive(Debug)]
enum MutationError {
    /// The request contradicts the current state, e.g. rebuilding a job that is still queued.
    Conflict(String),
    /// Anything else, answered as [`ApiError`] answers it.
    Api(ApiError),
}

impl From<reconix_status::Error> for MutationError {
    fn from(err: reconix_status::Error) -> Self {
        match err {
            reconix_status::Error::NotFound { what, .. } => Self::Api(ApiError::NotFound(what)),
            // The mutations return `Invalid` only for requests the current state refuses; the
            // reason names ids and states, never anything secret.
            reconix_status::Error::Invalid { reason, .. } => Self::Conflict(reason),
            err => Self::Api(err.into()),
        }
    }
}

impl IntoResponse for MutationError {
    fn into_response(self) -> Response {
        match self {
            Self::Conflict(reason) => {
                (StatusCode::CONFLICT, Json(json!({ "error": reason }))).into_response()
            }
            Self::Api(err) => err.into_response(),
        }
    }
}

/// Query parameters of `GET /api/v1/jobs`.
#[derive(Debug, Deserialize)]
struct JobsQuery {
    /// Only the jobs of this evaluation.
    evaluation: Option<i64>,
    /// Only the jobs in this state (kebab-case, e.g. `dependency-failed`).
    state: Option<JobState>,
    /// How many jobs at most (default 50, at most 1000).
    limit: Option<u32>,
    /// How many matching jobs to skip first.
    offset: Option<u64>,
}

async fn jobs(
    State(st): State<AppState>,
    Query(q): Query<JobsQuery>,
) -> Result<Json<Vec<JobDetail>>, ApiError> {
    let filter = JobFilter {
        evaluation: q.evaluation.map(EvaluationId),
        state: q.state,
        limit: q.limit.unwrap_or(50).clamp(1, 1000),
        offset: q.offset.unwrap_or(0),
    };
    Ok(Json(st.status.call(move |db| db.job_list(filter)).await?))
}

async fn job(State(st): State<AppState>, Path(id): Path<i64>) -> Result<Json<JobDetail>, ApiError> {
    st.status
        .call(move |db| db.job_view(JobId(id)))
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound("job"))
}

/// Query parameters of `GET /api/v1/jobs/{id}/log`.
#[derive(Debug, Deserialize)]
struct LogQuery {
    /// Serve the log from this byte on.
    offset: Option<u64>,
}

/// `GET /api/v1/jobs/{id}/log`: the whole log (404 while there is none), or with `?offset=N`
/// the bytes from N on (empty past the end, or while the job has no log yet). Both carry the
/// log's size and whether it is complete in headers, so a follower asks again from the size.
async fn job_log(
    State(st): State<AppState>,
    Path(id): Path<i64>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
    // Read before the file: a job that is terminal now has written its whole log.
    let log: JobLog = st
        .status
        .call(move |db| db.job_log(JobId(id)))
        .await?
        .ok_or(ApiError::NotFound("job"))?;
    let read = match &log.path {
        Some(path) => read_from(path, q.offset.unwrap_or(0)).await?,
        None => None,
    };
    let (body, size) = match (read, q.offset) {
        (Some(read), _) => read,
        // Without an offset, a missing log stays a 404 (the endpoint's first behaviour).
        (None, None) => return Err(ApiError::NotFound("log")),
        (None, Some(_)) => (Vec::new(), 0),
    };
    let complete = if log.complete { "true" } else { "false" };
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            ),
            (LOG_SIZE, HeaderValue::from(size)),
            (LOG_COMPLETE, HeaderValue::from_static(complete)),
        ],
        body,
    )
        .into_response())
}

/// Reads `path` from byte `offset` on; returns the bytes and the file's size as read, or
/// `None` when the file does not exist.
async fn read_from(path: &FsPath, offset: u64) -> Result<Option<(Vec<u8>, u64)>, ApiError> {
    let io = |e: std::io::Error| ApiError::Internal(format!("log {}: {e}", path.display()));
    let mut file = match tokio::fs::File::open(path).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let len = file.metadata().await.map_err(io)?.len();
    if offset >= len {
        return Ok(Some((Vec::new(), len)));
    }
    file.seek(SeekFrom::Start(offset)).await.map_err(io)?;
    let mut body = Vec::new();
    file.read_to_end(&mut body).await.map_err(io)?;
    // The file may have grown since `len`: the size is what this answer covers, so that the
    // next request starts right after it.
    let size = offset.saturating_add(u64::try_from(body.len()).unwrap_or(u64::MAX));
    Ok(Some((body, size)))
}

/// `POST /api/v1/jobs/{id}/rebuild`.
async fn rebuild(
    _: Authorized,
    State(st): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Response, MutationError> {
    mutate(
        &st,
        move |db| db.rebuild_job(JobId(id), Timestamp::now()),
        |done| {
            tracing::info!(job = %done.job, evaluation = %done.evaluation, requeued = done.requeued.len(), "job rebuild requested");
            let body = json!({
                "job": done.job,
                "evaluation": done.evaluation,
                "requeued": done.requeued,
                "builds_reset": done.builds_reset,
            });
            ([Wake::Builds, Wake::Statuses(done.repo)], body)
        },
    )
    .await
}

/// `POST /api/v1/evaluations/{id}/cancel`.
async fn cancel(
    _: Authorized,
    State(st): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Response, MutationError> {
    mutate(
        &st,
        move |db| db.cancel_evaluation(EvaluationId(id), Timestamp::now()),
        |done| {
            tracing::info!(evaluation = %done.evaluation, cancelled_jobs = done.cancelled_jobs, "evaluation cancelled");
            let body = json!({
                "evaluation": done.evaluation,
                "state": done.state,
                "cancelled_jobs": done.cancelled_jobs,
            });
            // The builds loop stops the running builds no live job needs any more; the
            // evaluations loop stops the evaluator of an evaluation still running.
            (
                [
                    Wake::Builds,
                    Wake::Evaluations(done.repo.clone()),
                    Wake::Statuses(done.repo),
                ],
                body,
            )
        },
    )
    .await
}

/// `POST /api/v1/evaluations/{id}/rerun`.
async fn rerun(
    _: Authorized,
    State(st): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Response, MutationError> {
    mutate(
        &st,
        move |db| db.rerun_evaluation(EvaluationId(id), Timestamp::now()),
        |done| {
            tracing::info!(evaluation = %done.evaluation, replaces = %done.replaces, "evaluation re-run requested");
            let body = json!({
                "evaluation": done.evaluation,
                "replaces": done.replaces,
            });
            (
                [Wake::Evaluations(done.repo.clone()), Wake::Statuses(done.repo)],
                body,
            )
        },
    )
    .await
}

/// Runs the mutation `apply` (one status transaction), then `outcome` on what it did: the
/// outcome logs it and names the loops to wake and the JSON body, answered with 202.
async fn mutate<T, W>(
    st: &AppState,
    apply: impl FnOnce(&mut StatusDb) -> reconix_status::Result<T> + Send + 'static,
    outcome: impl FnOnce(T) -> (W, serde_json::Value),
) -> Result<Response, MutationError>
where
    T: Send + 'static,
    W: IntoIterator<Item = Wake>,
{
    let done = st.status.call(apply).await?;
    let (wakes, body) = outcome(done);
    st.wake.wake(wakes);
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

#[cfg(test)]
#[path = "api_tests.rs"]
mod tests;
