//! `/jobs/{id}`: a job, its build, its dependencies, a reproduce command and its log with
//! ANSI colours as HTML. While the job is unfinished the page refreshes itself without
//! JavaScript, or streams the rest of the log from `/jobs/{id}/log/stream` with it.

use askama::Template;
use axum::extract::{Path, State};
use axum::response::Html;
use reconix_spec::Timestamp;
use reconix_status::pages::{JobGroup, JobRef};
use reconix_status::{JobId, JobState};

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
    dependencies: Vec<DepLink>,
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
        }),
        dependencies: data.dependencies.iter().map(DepLink::new).collect(),
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
