//! `/builders` (the local builder and every agent, with what runs on them) and `/drift` (what
//! the loops found different from the spec, and whether they repaired it).

use askama::Template;
use axum::extract::{Query, State};
use axum::response::Html;
use reconix_spec::{Builders, Timestamp};

use super::{PageError, render, time};
use crate::{AppState, BuilderView, ListQuery, builder_views};

/// A job waiting on a running build, linked.
pub(super) struct JobLink {
    pub(super) href: String,
    pub(super) attr: String,
}

/// A running build on a builder.
pub(super) struct RunningRow {
    pub(super) drv: String,
    pub(super) started: String,
    pub(super) attempts: u32,
    pub(super) jobs: Vec<JobLink>,
}

/// One builder as the overview and `/builders` show it.
pub(super) struct BuilderRow {
    pub(super) name: String,
    pub(super) kind: &'static str,
    pub(super) state: &'static str,
    pub(super) systems: String,
    pub(super) features: String,
    pub(super) max_jobs: u32,
    pub(super) running: u32,
    pub(super) load_percent: u32,
    pub(super) heartbeat: String,
    pub(super) connected: String,
    pub(super) fingerprint: String,
    pub(super) builds: Vec<RunningRow>,
}

impl BuilderRow {
    pub(super) fn new(b: &BuilderView) -> Self {
        Self {
            name: b.name.clone(),
            kind: b.kind.as_str(),
            state: b.state.as_str(),
            systems: b.systems.join(", "),
            features: b.features.join(", "),
            max_jobs: b.max_jobs,
            running: b.running,
            // `load` is in 0..=1 (more only when the spec shrank under running builds).
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "a rounded, clamped percentage"
            )]
            load_percent: (b.load * 100.0).round().clamp(0.0, 10_000.0) as u32,
            heartbeat: time(b.last_heartbeat_at),
            connected: time(b.connected_at),
            fingerprint: b.key_fingerprint.clone().unwrap_or_default(),
            builds: b
                .running_builds
                .iter()
                .map(|r| RunningRow {
                    drv: r.drv_path.to_string(),
                    started: time(r.started_at),
                    attempts: r.attempts,
                    jobs: r
                        .jobs
                        .iter()
                        .map(|j| JobLink {
                            href: format!("/jobs/{}", j.id),
                            attr: j.attr.to_string(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

#[derive(Template)]
#[template(path = "builders.html")]
struct BuildersPage {
    builders: Vec<BuilderRow>,
}

pub(super) async fn builders_page(State(st): State<AppState>) -> Result<Html<String>, PageError> {
    let (agents, running) = st
        .status
        .call(|db| Ok((db.agents()?, db.running_builds()?)))
        .await?;
    let now = Timestamp::now();
    let spec = st.spec();
    let fallback = Builders::default();
    let spec_builders = spec.as_deref().map_or(&fallback, |s| &s.builders);
    let builders = builder_views(spec_builders, agents, running, now)
        .iter()
        .map(BuilderRow::new)
        .collect();
    render(&BuildersPage { builders })
}

struct DriftRowView {
    loop_name: String,
    subject: String,
    field: String,
    desired: String,
    observed: String,
    found: String,
    repaired: String,
    open: bool,
    error: String,
}

#[derive(Template)]
#[template(path = "drift.html")]
struct DriftPage {
    rows: Vec<DriftRowView>,
    open: usize,
}

pub(super) async fn drift_page(
    State(st): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Html<String>, PageError> {
    let limit = q.limit.map_or(200, |_| q.limit());
    let drifts = st.status.call(move |db| db.drifts(limit)).await?;
    let rows: Vec<DriftRowView> = drifts
        .into_iter()
        .map(|d| DriftRowView {
            open: d.repaired_at.is_none(),
            loop_name: d.loop_name,
            subject: d.subject,
            field: d.field,
            // A secret's value is never recorded, only that it differed.
            desired: d.desired.unwrap_or_else(|| "(not shown)".to_owned()),
            observed: d.observed.unwrap_or_else(|| "(not shown)".to_owned()),
            found: time(Some(d.found_at)),
            repaired: time(d.repaired_at),
            error: d.error.unwrap_or_default(),
        })
        .collect();
    let open = rows.iter().filter(|r| r.open).count();
    render(&DriftPage { rows, open })
}
