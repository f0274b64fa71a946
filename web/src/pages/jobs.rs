//! `/jobs/{id}`: a job, its build, its dependencies, a reproduce command and its log with
//! ANSI colours as HTML. While the job is unfinished the page refreshes itself without
//! JavaScript, or streams the rest of the log from `/jobs/{id}/log/stream` with it.

use askama::Template;
use axum::extract::{Path, State};
use axum::response::Html;
use reconix_spec::Timestamp;
use reconix_status::pages::{JobGroup, JobRef};
use reconix_status::{Constituent, JobId, JobState};

use super::ansi::AnsiHtml;
use super::log_stream::{LOG_PAGE_LIMIT, read_tail};
use super::{PageError, duration, render, repo_href, reproduce, short, size, time};
use crate::AppState;

struct DepLink {
    href: String,
    attr: String,
    state: &'static str,
}

impl DepLink {
    fn new(d: &JobRef) -> Self {
        Self {
            href: format!("/jobs/{}", d.id),
            attr: d.attr.to_string(),
            state: d.state.as_str(),
        }
    }
}

/// One constituent of an aggregate job: a link to a job of the evaluation, or (no `href`) a
/// derivation that is no job.
struct ConstituentLink {
    href: String,
    name: String,
    state: &'static str,
}

impl ConstituentLink {
    fn new(c: &Constituent) -> Self {
        match c {
            Constituent::Job { id, attr, state } => Self {
                href: format!("/jobs/{id}"),
                name: attr.to_string(),
                state: state.as_str(),
            },
            Constituent::Derivation { drv_path } => Self {
                href: String::new(),
                name: drv_path.to_string(),
                state: "",
            },
        }
    }
}

struct BuildInfo {
    state: &'static str,
    builder: String,
    attempts: u32,
    exit_code: String,
    started: String,
    finished: String,
    took: String,
    closure: String,
    error: String,
    /// Its outputs exist but say the build failed (`nix-support/failed`).
    failed_with_output: bool,
}

/// One build product as the page lists it.
struct ProductLink {
    kind: String,
    subtype: String,
    path: String,
    href: String,
}

/// What the page shows of the log.
enum LogView {
    /// No log recorded (yet).
    None,
    /// A log was recorded but its file is gone (log retention).
    Gone,
    /// The log as HTML; `truncated` when only its tail is shown.
    Shown { html: String, truncated: bool },
}

#[derive(Template)]
#[template(path = "job.html")]
struct JobPage {
    id: i64,
    attr: String,
    name: String,
    state: &'static str,
    system: String,
    drv_path: String,
    outputs: Vec<(String, String)>,
    error: Option<String>,
    evaluation_id: i64,
    evaluation_href: String,
    repo: String,
    repo_href: String,
    ref_name: String,
    rev: String,
    created: String,
    started: String,
    finished: String,
    took: String,
    build: Option<BuildInfo>,
    /// `nix-support/hydra-release-name` of its build's outputs.
    release_name: String,
    products: Vec<ProductLink>,
    description: String,
    homepage: String,
    license: String,
    maintainers: String,
    /// `meta.timeout`, `meta.maxSilent` and `meta.schedulingPriority`, as set.
    meta_settings: String,
    dependencies: Vec<DepLink>,
    /// For an aggregate job: its constituents.
    constituents: Option<Vec<ConstituentLink>>,
    failed_dependency: Option<DepLink>,
    reproduce: String,
    log: LogView,
    log_limit_mib: u64,
    /// The job is not terminal: the log may grow.
    live: bool,
    /// The stream of the rest of the log, from where the page's copy ends.
    stream_href: String,
}

/// Returns the dependency to blame for a `dependency-failed` job: one that failed itself if
/// there is one, else one that is `dependency-failed` or `cancelled` too.
fn blame(deps: &[JobRef]) -> Option<&JobRef> {
    deps.iter()
        .filter(|d| d.state.is_terminal() && d.state != JobState::Succeeded)
        .min_by_key(|d| {
            (
                d.state == JobState::DependencyFailed,
                d.state == JobState::Cancelled,
            )
        })
}

pub(super) async fn page(
    State(st): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Html<String>, PageError> {
    let data = st
        .status
        .call(move |db| db.job_page(JobId(id)))
        .await?
        .ok_or(PageError::NotFound("job"))?;
    let now = Timestamp::now();
    let (job, eval, build) = (&data.job, &data.evaluation, data.build.as_ref());
    let live = !job.state.is_terminal();
    let (log, offset) = match build.and_then(|b| b.log_path.as_deref()) {
        None => (LogView::None, 0),
        Some(path) => match read_tail(path, LOG_PAGE_LIMIT, live).await {
            Ok(Some(tail)) => {
                let html = AnsiHtml::convert(&String::from_utf8_lossy(&tail.bytes));
                (
                    LogView::Shown {
                        html,
                        truncated: tail.truncated,
                    },
                    tail.end,
                )
            }
            Ok(None) => (LogView::Gone, 0),
            Err(err) => {
                tracing::warn!(job = id, error = %err, "cannot read a build log");
                (LogView::Gone, 0)
            }
        },
    };
    let page = JobPage {
        id,
        attr: job.attr.to_string(),
        name: job.name.clone(),
        state: JobGroup::of(job.state, build.map(|b| b.state)).as_str(),
        system: job
            .system
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        drv_path: job
            .drv_path
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        outputs: job
            .outputs
            .iter()
            .map(|(name, path)| (name.clone(), path.to_string()))
            .collect(),
        error: job.error.clone(),
        evaluation_id: eval.id.0,
        evaluation_href: format!("/evaluations/{}", eval.id),
        repo: eval.repo.to_string(),
        repo_href: repo_href(&eval.repo),
        ref_name: eval.ref_name.clone(),
        rev: short(&eval.rev).to_owned(),
        created: time(Some(job.created_at)),
        started: time(job.started_at),
        finished: time(job.finished_at),
        took: duration(job.started_at, job.finished_at, now),
        build: build.map(|b| BuildInfo {
            state: b.state.as_str(),
            builder: b
                .builder
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            attempts: b.attempts,
            exit_code: b.exit_code.map(|c| c.to_string()).unwrap_or_default(),
            started: time(b.started_at),
            finished: time(b.finished_at),
            took: duration(b.started_at, b.finished_at, now),
            closure: size(b.closure_size_bytes),
            error: b.error.clone().unwrap_or_default(),
            failed_with_output: b.failed_with_output,
        }),
        release_name: build
            .and_then(|b| b.release_name.clone())
            .unwrap_or_default(),
        products: data
            .products
            .iter()
            .enumerate()
            .map(|(n, p)| ProductLink {
                kind: p.kind.clone(),
                subtype: p.subtype.clone(),
                path: p.path.clone(),
                href: format!("/api/v1/jobs/{id}/products/{n}"),
            })
            .collect(),
        description: data.meta.description.clone().unwrap_or_default(),
        homepage: data
            .meta
            .homepage
            .clone()
            // Only web links become links: a build chooses this text.
            .filter(|h| h.starts_with("https://") || h.starts_with("http://"))
            .unwrap_or_default(),
        license: data.meta.license.join(", "),
        maintainers: data.meta.maintainers.join(", "),
        meta_settings: meta_settings(&data.meta),
        dependencies: data.dependencies.iter().map(DepLink::new).collect(),
        constituents: job
            .constituents
            .as_ref()
            .map(|list| list.iter().map(ConstituentLink::new).collect()),
        failed_dependency: (job.state == JobState::DependencyFailed)
            .then(|| blame(&data.dependencies).map(DepLink::new))
            .flatten(),
        reproduce: reproduce(&eval.flake_ref, &job.attr),
        log,
        log_limit_mib: LOG_PAGE_LIMIT >> 20,
        live,
        stream_href: format!("/jobs/{id}/log/stream?offset={offset}"),
    };
    render(&page)
}

/// Describes the meta fields that change how the job is built, e.g. `timeout 5 s, priority 200`.
fn meta_settings(meta: &reconix_spec::JobMeta) -> String {
    let mut parts = Vec::new();
    if let Some(t) = meta.timeout {
        parts.push(format!("timeout {t} s"));
    }
    if let Some(t) = meta.max_silent {
        parts.push(format!("max-silent {t} s"));
    }
    if let Some(p) = meta.scheduling_priority {
        parts.push(format!("priority {p}"));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use reconix_spec::AttrPath;
    use reconix_status::pages::JobRef;
    use reconix_status::{JobId, JobState};

    use super::blame;

    #[test]
    fn blame_should_prefer_a_dependency_that_failed_itself() {
        let dep = |id, state| JobRef {
            id: JobId(id),
            attr: AttrPath::new(format!("a{id}")).unwrap(),
            state,
        };
        let deps = [
            dep(1, JobState::Succeeded),
            dep(2, JobState::DependencyFailed),
            dep(3, JobState::Failed),
            dep(4, JobState::EvalFailed),
        ];
        assert_eq!(blame(&deps).map(|d| d.id), Some(JobId(3)));
        assert_eq!(blame(&deps[..2]).map(|d| d.id), Some(JobId(2)));
        assert_eq!(blame(&deps[..1]), None);
    }
}
