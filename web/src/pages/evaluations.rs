//! `/evaluations/{id}?page=N`: an evaluation's jobs grouped by state, failures first,
//! [`PAGE_SIZE`] jobs a page, cut in SQL (see `reconix_status::pages`).

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::Html;
use reconix_spec::Timestamp;
use reconix_status::EvaluationId;
use reconix_status::pages::{EvaluationJobsPage, JobGroup, PageJob};
use serde::Deserialize;

use super::{PageError, duration, render, repo_href, reproduce, short, size, time};
use crate::AppState;

/// How many jobs one page shows.
pub(super) const PAGE_SIZE: u32 = 200;

#[derive(Debug, Deserialize)]
pub(super) struct PageQuery {
    /// The 1-based page number (default 1).
    page: Option<u64>,
}

struct DepLink {
    href: String,
    attr: String,
    state: &'static str,
}

struct JobRow {
    href: String,
    attr: String,
    system: String,
    state: &'static str,
    error: String,
    started: String,
    finished: String,
    took: String,
    closure: String,
    builder: String,
    attempts: String,
    reproduce: String,
    failed_dependency: Option<DepLink>,
    log: bool,
}

impl JobRow {
    fn new(j: &PageJob, flake_ref: &str, now: Timestamp) -> Self {
        Self {
            href: format!("/jobs/{}", j.id),
            attr: j.attr.to_string(),
            system: j
                .system
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            state: j.group.as_str(),
            error: j.error.clone().unwrap_or_default(),
            started: time(j.started_at),
            finished: time(j.finished_at),
            took: duration(j.started_at, j.finished_at, now),
            closure: size(j.build.as_ref().and_then(|b| b.closure_size_bytes)),
            builder: j
                .build
                .as_ref()
                .and_then(|b| b.builder.as_ref())
                .map(ToString::to_string)
                .unwrap_or_default(),
            attempts: j
                .build
                .as_ref()
                .map(|b| b.attempts.to_string())
                .unwrap_or_default(),
            reproduce: reproduce(flake_ref, &j.attr),
            failed_dependency: j.failed_dependency.as_ref().map(|d| DepLink {
                href: format!("/jobs/{}", d.id),
                attr: d.attr.to_string(),
                state: d.state.as_str(),
            }),
            log: j.log_available,
        }
    }
}

/// The jobs of one group on this page.
struct Section {
    name: &'static str,
    total: u64,
    rows: Vec<JobRow>,
}

/// A group's count over the whole evaluation, linked to the page where the group starts.
struct GroupCount {
    name: &'static str,
    n: u64,
    href: String,
}

#[derive(Template)]
#[template(path = "evaluation.html")]
struct EvaluationPage {
    id: i64,
    repo: String,
    repo_href: String,
    ref_name: String,
    rev: String,
    state: &'static str,
    flake_ref: String,
    error: Option<String>,
    superseded_by: Option<i64>,
    created: String,
    took: String,
    live: bool,
    /// While evaluating with its attributes listed: evaluated, listed, percent.
    progress: Option<(u64, u64, u64)>,
    total: u64,
    groups: Vec<GroupCount>,
    sections: Vec<Section>,
    page: u64,
    pages: u64,
    first: u64,
    last: u64,
    prev: Option<String>,
    next: Option<String>,
}

pub(super) async fn page(
    State(st): State<AppState>,
    Path(id): Path<i64>,
    Query(q): Query<PageQuery>,
) -> Result<Html<String>, PageError> {
    let page = q.page.unwrap_or(1);
    if page == 0 {
        return Err(PageError::NotFound("page"));
    }
    let offset = (page - 1).saturating_mul(u64::from(PAGE_SIZE));
    let data = st
        .status
        .call(move |db| db.evaluation_jobs_page(EvaluationId(id), PAGE_SIZE, offset))
        .await?
        .ok_or(PageError::NotFound("evaluation"))?;
    let view = build(&data, page, Timestamp::now()).ok_or(PageError::NotFound("page"))?;
    render(&view)
}

/// Builds page `page` of `data`; `None` when the evaluation has fewer pages.
fn build(data: &EvaluationJobsPage, page: u64, now: Timestamp) -> Option<EvaluationPage> {
    let size = u64::from(PAGE_SIZE);
    let pages = data.total.div_ceil(size).max(1);
    if page > pages {
        return None;
    }
    let e = &data.evaluation;
    let href = |p: u64| format!("/evaluations/{}?page={p}", e.id);
    let mut start = 0;
    let groups = JobGroup::ALL
        .iter()
        .filter_map(|g| {
            let n = *data.groups.get(g)?;
            let count = GroupCount {
                name: g.as_str(),
                n,
                href: format!("{}#{}", href(start / size + 1), g.as_str()),
            };
            start += n;
            Some(count)
        })
        .collect();
    let mut sections: Vec<Section> = Vec::new();
    for j in &data.jobs {
        let row = JobRow::new(j, &e.flake_ref, now);
        match sections.last_mut() {
            Some(s) if s.name == j.group.as_str() => s.rows.push(row),
            _ => sections.push(Section {
                name: j.group.as_str(),
                total: data.groups.get(&j.group).copied().unwrap_or(0),
                rows: vec![row],
            }),
        }
    }
    let first = (page - 1) * size;
    let shown = u64::try_from(data.jobs.len()).unwrap_or(0);
    Some(EvaluationPage {
        id: e.id.0,
        repo: e.repo.to_string(),
        repo_href: repo_href(&e.repo),
        ref_name: e.ref_name.clone(),
        rev: short(&e.rev).to_owned(),
        state: e.state.as_str(),
        flake_ref: e.flake_ref.clone(),
        error: e.error.clone(),
        superseded_by: e.superseded_by.map(|s| s.0),
        created: time(Some(e.created_at)),
        took: duration(e.started_at, e.finished_at, now),
        live: !e.state.is_terminal(),
        progress: data
            .progress
            .filter(|_| e.state == reconix_status::EvaluationState::Evaluating)
            .map(|p| (p.evaluated, p.attributes, p.percent())),
        total: data.total,
        groups,
        sections,
        page,
        pages,
        first: if shown == 0 { 0 } else { first + 1 },
        last: first + shown,
        prev: (page > 1).then(|| href(page - 1)),
        next: (page < pages).then(|| href(page + 1)),
    })
}
