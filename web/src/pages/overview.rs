//! `/`: paused forges first, then forge health, loop health, builders, repositories and the
//! newest evaluations.

use askama::Template;
use axum::extract::State;
use axum::response::Html;
use reconix_spec::{Builders, Timestamp};
use reconix_status::ForgeHealthState;

use super::builders::BuilderRow;
use super::{EvalRow, PageError, render, repo_href, time};
use crate::{AppState, builder_views, forge_views};

/// How many evaluations the overview lists.
const EVALUATIONS: u32 = 25;
/// How many jobs of the newest evaluation the overview shows, failures first.
const LATEST_JOBS: u32 = 20;

struct PausedForge {
    forge: String,
    reason: String,
}

struct ForgeRow {
    name: String,
    kind: &'static str,
    state: &'static str,
    reason: String,
    since: String,
    until: String,
}

struct LoopRow {
    name: String,
    healthy: bool,
    runs: u64,
    failures: u32,
    last_run: String,
    next_run: String,
    last_error: String,
}

/// A job of the newest evaluation.
struct LatestJob {
    href: String,
    attr: String,
    state: &'static str,
    error: String,
}

/// The newest evaluation and its first jobs, failures first.
struct Latest {
    id: i64,
    state: &'static str,
    error: Option<String>,
    total: u64,
    jobs: Vec<LatestJob>,
}

struct RepoLink {
    key: String,
    href: String,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    /// When the daemon last met a full state directory (within the alarm's minute).
    storage_full: Option<String>,
    /// Why the spec file was rejected, while the previous spec stays in force.
    spec_error: Option<String>,
    paused: Vec<PausedForge>,
    forges: Vec<ForgeRow>,
    loops: Vec<LoopRow>,
    builders: Vec<BuilderRow>,
    repos: Vec<RepoLink>,
    evaluations: Vec<EvalRow>,
    latest: Option<Latest>,
}

pub(super) async fn page(State(st): State<AppState>) -> Result<Html<String>, PageError> {
    let (evaluations, latest, loops, healths, agents, running, repos) = st
        .status
        .call(|db| {
            let evaluations = db.evaluation_list(EVALUATIONS)?;
            let latest = match evaluations.first() {
                Some(e) => db.evaluation_jobs_page(e.id, LATEST_JOBS, 0)?,
                None => None,
            };
            Ok((
                evaluations,
                latest,
                db.loop_list()?,
                db.forge_healths()?,
                db.agents()?,
                db.running_builds()?,
                db.repos()?,
            ))
        })
        .await?;
    let now = Timestamp::now();
    let spec = st.spec();
    let fallback = Builders::default();
    let spec_builders = spec.as_deref().map_or(&fallback, |s| &s.builders);
    let forges = forge_views(spec.as_deref(), healths);
    let page = OverviewPage {
        storage_full: st.metrics.storage_full_since(now).map(|at| time(Some(at))),
        spec_error: st.spec_error(),
        // A paused forge gets no commit statuses and no hook repairs: the page says so first.
        paused: forges
            .iter()
            .filter(|f| f.paused)
            .map(|f| PausedForge {
                forge: f.forge.clone(),
                reason: f
                    .reason
                    .clone()
                    .unwrap_or_else(|| "the forge rejected the token".to_owned()),
            })
            .collect(),
        forges: forges
            .into_iter()
            .map(|f| ForgeRow {
                kind: f.kind.map_or("", |k| k.as_str()),
                state: match f.state {
                    ForgeHealthState::Ok => "ok",
                    ForgeHealthState::Paused => "paused",
                    ForgeHealthState::RateLimited => "rate-limited",
                },
                reason: f.reason.unwrap_or_default(),
                since: time(f.since),
                until: time(f.until),
                name: f.forge,
            })
            .collect(),
        loops: loops
            .into_iter()
            .map(|l| LoopRow {
                healthy: l.healthy,
                runs: l.runs,
                failures: l.consecutive_failures,
                last_run: time(l.last_run_at),
                next_run: time(l.next_run_at),
                last_error: l.last_error.unwrap_or_default(),
                name: l.name,
            })
            .collect(),
        builders: builder_views(spec_builders, agents, running, now)
            .iter()
            .map(BuilderRow::new)
            .collect(),
        repos: repos
            .iter()
            .map(|r| RepoLink {
                key: r.key.to_string(),
                href: repo_href(&r.key),
            })
            .collect(),
        evaluations: evaluations.iter().map(|e| EvalRow::new(e, now)).collect(),
        latest: latest.map(|l| Latest {
            id: l.evaluation.id.0,
            state: l.evaluation.state.as_str(),
            error: l.evaluation.error,
            total: l.total,
            jobs: l
                .jobs
                .into_iter()
                .map(|j| LatestJob {
                    href: format!("/jobs/{}", j.id),
                    attr: j.attr.to_string(),
                    state: j.group.as_str(),
                    error: j.error.unwrap_or_default(),
                })
                .collect(),
        }),
    };
    render(&page)
}
