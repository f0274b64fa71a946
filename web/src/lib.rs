//! HTTP surface of the daemon: the JSON API (`/api/v1/…`), a plain status page at `/` and the
//! webhook intake (`POST /webhooks/{forge}`).
//!
//! The API and the page read the status database through its views; the API's few mutations
//! (rebuild, cancel, re-run) need the bearer token of `api-token-file`. The intake verifies,
//! parses and records deliveries, then calls the daemon's wake callback ([`Wake`]); it decides
//! nothing else. Entry point: [`router`], which takes its state as an argument (axum's testing
//! pattern).

mod api;
mod auth;
mod builders;
mod error;
mod metrics;
mod pages;
mod products;
mod ratelimit;
mod server;
mod webhooks;

use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::routing::{get, post};
use reconix_spec::{Builders, ForgeKind, Spec, Timestamp};
use reconix_status::views::{EvaluationDetail, EvaluationSummary, LoopSummary, StatusOverview};
use reconix_status::{DriftRow, EvaluationId, ForgeHealth, ForgeHealthState, Status};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

pub use builders::{BuilderState, BuilderView, builder_views};
pub use error::ApiError;
pub use pages::cache::CacheView;
pub use server::{ServerConfig, bind, connection_cap};
pub use webhooks::Wake;

/// Shared state of every handler.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The observed-state database.
    pub status: Status,
    /// The webhook intake; without it `POST /webhooks/{forge}` answers 404.
    intake: Option<Arc<webhooks::Intake>>,
    /// The current spec, when the daemon gave one.
    spec: Option<watch::Receiver<Arc<Spec>>>,
    /// The registry `/metrics` serves and `/readyz` asks which loops have run.
    metrics: reconix_status::Metrics,
    /// Told which loops have work after an API mutation.
    wake: api::Waker,
    /// Keeps refused requests (bad tokens, bad signatures) to one log line per source a minute.
    refusals: Arc<ratelimit::LogLimiter>,
    /// Why the spec file was last rejected (the daemon keeps the previous spec meanwhile).
    spec_error: Option<watch::Receiver<Option<String>>>,
    /// Where background tasks (the webhook recorder) are spawned, so the daemon's shutdown
    /// waits for them.
    tasks: TaskTracker,
    /// Where store paths are on this machine: `/`, or a chroot store's directory. Build
    /// products are read below it.
    store_root: PathBuf,
}

impl AppState {
    /// Creates the state from a status handle, without a webhook intake.
    pub fn new(status: Status) -> Self {
        Self {
            status,
            intake: None,
            spec: None,
            metrics: reconix_status::Metrics::default(),
            wake: api::Waker::default(),
            refusals: Arc::default(),
            spec_error: None,
            tasks: TaskTracker::new(),
            store_root: PathBuf::from("/"),
        }
    }

    /// Reads build products below `root` instead of `/`: the directory of the chroot store
    /// the daemon's Nix uses (`--nix-store DIR`).
    #[must_use]
    pub fn with_store_root(mut self, root: impl Into<PathBuf>) -> Self {
        self.store_root = root.into();
        self
    }

    /// Returns where store paths are on this machine.
    fn store_root(&self) -> PathBuf {
        self.store_root.clone()
    }

    /// Spawns background tasks (the webhook recorder) on `tasks`, which the daemon waits for at
    /// shutdown, instead of a tracker of its own.
    #[must_use]
    pub fn with_tasks(mut self, tasks: TaskTracker) -> Self {
        self.tasks = tasks;
        self
    }

    /// Shows the spec reloader's last rejection (`None` after a good reload) on the overview
    /// page and in `/api/v1/status`: a rejected spec must be loud, not only logged.
    #[must_use]
    pub fn with_spec_errors(mut self, errors: watch::Receiver<Option<String>>) -> Self {
        self.spec_error = Some(errors);
        self
    }

    /// Returns why the spec file was last rejected, while the previous spec stays in force.
    fn spec_error(&self) -> Option<String> {
        self.spec_error.as_ref().and_then(|rx| rx.borrow().clone())
    }

    /// Sets the callback that API mutations (rebuild, cancel, re-run) call with the loops they
    /// gave work to; [`with_intake`](Self::with_intake) sets the same one. It must return quickly.
    #[must_use]
    pub fn with_wake(mut self, wake: Arc<dyn Fn(Wake) + Send + Sync>) -> Self {
        self.wake = api::Waker::new(wake);
        self
    }

    /// Serves `metrics` at `/metrics` (with the database's state counts) and counts webhook
    /// deliveries in it; `/readyz` waits for the loops registered in it.
    #[must_use]
    pub fn with_metrics(mut self, metrics: reconix_status::Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Gives the handlers the current spec (forges, builders, the API token file).
    #[must_use]
    pub fn with_spec(mut self, spec: watch::Receiver<Arc<Spec>>) -> Self {
        self.spec = Some(spec);
        self
    }

    /// Enables the webhook intake: deliveries are checked against the current `spec` (its
    /// forges, their secrets and repositories), recorded, and `wake` is called with what a
    /// recorded delivery changed. `wake` runs on the request's task and must return quickly; API
    /// mutations call it too.
    #[must_use]
    pub fn with_intake(
        mut self,
        spec: watch::Receiver<Arc<Spec>>,
        wake: Arc<dyn Fn(Wake) + Send + Sync>,
    ) -> Self {
        self.wake = api::Waker::new(Arc::clone(&wake));
        let intake = webhooks::Intake::new(self.status.clone(), spec.clone(), wake);
        self.intake = Some(Arc::new(intake));
        self.spec = Some(spec);
        self
    }

    /// Returns the current spec, when the daemon gave one.
    fn spec(&self) -> Option<Arc<Spec>> {
        self.spec.as_ref().map(|rx| Arc::clone(&rx.borrow()))
    }

    /// Logs a refused request from `source`, at most once a minute per source (with how many
    /// were left out), so that a client cannot flood the log.
    fn log_refusal(&self, source: Option<std::net::SocketAddr>, what: &str, reason: &str) {
        let source = source.map_or_else(|| "unknown".to_owned(), |addr| addr.ip().to_string());
        let key = format!("{what} {source}");
        if let Some(suppressed) = self.refusals.check(&key, std::time::Instant::now()) {
            tracing::warn!(%source, reason, suppressed, "{what} refused");
        }
    }
}

/// Returns the peer address the server put into the request (absent in router tests).
fn peer_of(extensions: &axum::http::Extensions) -> Option<std::net::SocketAddr> {
    extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0)
}

/// Returns the daemon's HTTP router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/api/v1/status", get(overview))
        .route("/api/v1/evaluations", get(evaluations))
        .route("/api/v1/evaluations/{id}", get(evaluation))
        .route("/api/v1/loops", get(loops))
        .route("/api/v1/drift", get(drift))
        .route("/api/v1/forges", get(forges))
        .route("/api/v1/builders", get(builders))
        .route("/api/v1/caches", get(pages::cache::api))
        .route("/api/v1/jobs/{id}/products/{n}", get(products::download))
        .route(
            "/api/v1/jobs/{id}/products/{n}/{*file}",
            get(products::download_within),
        )
        .route(
            "/webhooks/{forge}",
            post(webhooks::receive)
                .layer(DefaultBodyLimit::max(webhooks::BODY_LIMIT))
                .layer(axum::middleware::from_fn(webhooks::refuse_oversized)),
        )
        .merge(api::routes())
        .merge(metrics::routes())
        .merge(pages::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Answers a path no route has, in the API's JSON error shape.
async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NoRoute(uri.path().to_owned())
}

/// Answers a method the path does not take, in the API's JSON error shape (axum adds `Allow`).
async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}

/// Serves the router on `listener` until `shutdown` completes, then finishes in-flight requests
/// (for a few seconds), with the spec's `http` limits and no open-file limit known.
///
/// # Errors
/// Returns the I/O error that stopped the server.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, state, ServerConfig { fd_limit: None }, shutdown).await
}

/// Serves the router as [`serve`] does, capping connections below `config.fd_limit`. The
/// spec's `http` section (timeouts, `max-connections`) is read again at every connection, so a
/// reload applies to new connections at once.
///
/// # Errors
/// Returns the I/O error that stopped the server.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    state: AppState,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let spec = state.spec.clone();
    let limits = move || {
        spec.as_ref()
            .map(|rx| rx.borrow().http.clone())
            .unwrap_or_default()
    };
    server::run(listener, router(state), limits, config, shutdown).await
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

async fn drift(
    State(st): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<DriftRow>>, ApiError> {
    let limit = q.limit();
    Ok(Json(st.status.call(move |db| db.drifts(limit)).await?))
}

/// A forge's health as the API and the page show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct ForgeView {
    /// The forge's name in the spec.
    forge: String,
    /// Its kind, when the spec is known (and still has the forge).
    #[serde(skip_serializing_if = "Option::is_none")]
    kind: Option<ForgeKind>,
    /// Whether it may be called.
    state: ForgeHealthState,
    /// True when the forge rejected the token: nothing is reported to it until that is fixed.
    paused: bool,
    /// Why it is not ok.
    reason: Option<String>,
    /// Since when it is in this state; `None` for a forge that was never anything but ok.
    since: Option<Timestamp>,
    /// For `rate-limited`: when calls may resume.
    until: Option<Timestamp>,
}

/// Joins the health rows with the spec's forges: every forge of the spec (ok when it has no
/// row), then the rows of forges no longer in the spec.
fn forge_views(spec: Option<&Spec>, healths: Vec<ForgeHealth>) -> Vec<ForgeView> {
    let view = |h: ForgeHealth, kind| ForgeView {
        paused: h.state == ForgeHealthState::Paused,
        forge: h.forge,
        kind,
        state: h.state,
        reason: h.reason,
        since: Some(h.since),
        until: h.until,
    };
    let mut healths: Vec<Option<ForgeHealth>> = healths.into_iter().map(Some).collect();
    let mut out = Vec::new();
    for (name, forge) in spec.iter().flat_map(|s| s.forges.iter()) {
        let row = healths
            .iter_mut()
            .find(|h| h.as_ref().is_some_and(|h| h.forge == name.as_str()))
            .and_then(Option::take);
        out.push(match row {
            Some(h) => view(h, Some(forge.kind)),
            None => ForgeView {
                forge: name.to_string(),
                kind: Some(forge.kind),
                state: ForgeHealthState::Ok,
                paused: false,
                reason: None,
                since: None,
                until: None,
            },
        });
    }
    out.extend(healths.into_iter().flatten().map(|h| view(h, None)));
    out
}

async fn forges(State(st): State<AppState>) -> Result<Json<Vec<ForgeView>>, ApiError> {
    let healths = st.status.call(|db| db.forge_healths()).await?;
    Ok(Json(forge_views(st.spec().as_deref(), healths)))
}

/// The local builder and every enrolled agent, with state, capped offer, load and running builds.
async fn builders(State(st): State<AppState>) -> Result<Json<Vec<BuilderView>>, ApiError> {
    let (agents, running) = st
        .status
        .call(|db| Ok((db.agents()?, db.running_builds()?)))
        .await?;
    let spec = st.spec();
    let fallback = Builders::default();
    let spec_builders = spec.as_deref().map_or(&fallback, |s| &s.builders);
    Ok(Json(builder_views(
        spec_builders,
        agents,
        running,
        Timestamp::now(),
    )))
}

async fn overview(State(st): State<AppState>) -> Result<Json<StatusOverview>, ApiError> {
    let mut overview = st.status.call(|db| db.overview(10)).await?;
    overview.storage_full_at = st.metrics.storage_full_since(Timestamp::now());
    overview.spec_error = st.spec_error();
    Ok(Json(overview))
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod webhook_tests;
