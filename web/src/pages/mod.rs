//! The server-rendered HTML pages: overview, repository, pull request, evaluation, job (with a
//! live log over server-sent events), builders, drift and binary caches.
//!
//! Templates are askama files under `web/templates/`, compiled into the binary and escaped by
//! default; handlers turn status rows into small display structs (strings already formatted)
//! so the templates hold no logic beyond loops and conditions. Everything works without
//! JavaScript: pages that change refresh themselves, and `live-log.js` only streams a building
//! job's log instead of reloading the page.

mod ansi;
mod builders;
pub(crate) mod cache;
mod compare;
mod evaluations;
mod jobs;
mod log_stream;
mod overview;
mod repos;

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use askama::Template;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use reconix_spec::{AttrPath, RepoKey, Timestamp};
use reconix_status::JobState;
use reconix_status::views::EvaluationSummary;
use tracing::error;

use crate::AppState;

/// Returns the routes of the pages, the live log stream and their static files.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(overview::page))
        .route("/builders", get(builders::builders_page))
        .route("/drift", get(builders::drift_page))
        .route("/cache", get(cache::page))
        // Repository names contain `/`, so the rest of the path is split by hand (see `repos`).
        .route("/repos/{forge}/{*rest}", get(repos::page))
        .route("/evaluations/{id}", get(evaluations::page))
        .route("/jobs/{id}", get(jobs::page))
        .route("/jobs/{id}/log/stream", get(log_stream::stream))
        .route("/static/reconix.css", get(css))
        .route("/static/live-log.js", get(live_log_js))
}

async fn css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../../static/reconix.css"),
    )
}

async fn live_log_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../../static/live-log.js"),
    )
}

/// An error answered by a page handler, as an HTML page.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PageError {
    /// The requested thing does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The status database failed.
    #[error("status database: {0}")]
    Status(#[from] reconix_status::Error),
    /// A template failed to render.
    #[error("template: {0}")]
    Render(#[from] askama::Error),
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    title: &'a str,
    message: String,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (code, title, message) = match &self {
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "Not found", self.to_string()),
            Self::Status(_) | Self::Render(_) => {
                // The full error goes to the log; the page says only that it failed.
                error!(error = %self, "page request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal error",
                    "internal error (see the daemon log)".to_owned(),
                )
            }
        };
        match (ErrorPage { title, message }).render() {
            Ok(body) => (code, Html(body)).into_response(),
            Err(_) => (code, title).into_response(),
        }
    }
}

/// Renders a template into a response.
fn render(page: &impl Template) -> Result<Html<String>, PageError> {
    Ok(Html(page.render()?))
}

/// Returns `t` as `2024-05-01 12:34:56` (UTC), or an empty string.
fn time(t: Option<Timestamp>) -> String {
    let Some(t) = t else {
        return String::new();
    };
    let Ok(ms) = u64::try_from(t.0) else {
        return t.0.to_string();
    };
    let text = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms));
    text.to_string().replace('T', " ").replace('Z', "")
}

/// Returns how long something ran from `start` to `end` (or to `now` while it runs), e.g.
/// `1m 5s`; empty when it never started.
/// Formats a byte count for people: `812 B`, `4.2 KiB`, `1.5 GiB`; empty when unknown.
fn size(bytes: Option<u64>) -> String {
    let Some(bytes) = bytes else {
        return String::new();
    };
    let units = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    #[allow(clippy::cast_precision_loss, reason = "one decimal is shown")]
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", units[unit])
}

fn duration(start: Option<Timestamp>, end: Option<Timestamp>, now: Timestamp) -> String {
    let Some(start) = start else {
        return String::new();
    };
    let secs = end.unwrap_or(now).since(start).as_secs();
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// Returns the first 12 characters of a commit id.
fn short(rev: &str) -> &str {
    rev.get(..12).unwrap_or(rev)
}

/// Returns the page of a repository.
fn repo_href(repo: &RepoKey) -> String {
    format!("/repos/{}/{}", repo.forge, repo.repo)
}

/// Quotes `s` for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Returns the command that builds (or, for an eval-failed job, evaluates) a job locally: the
/// job name as the flake reference's fragment ([`AttrPath::to_flake_fragment`]: quoted names
/// kept, `%` and `#` encoded), quoted for the shell.
fn reproduce(flake_ref: &str, attr: &AttrPath) -> String {
    format!(
        "nix build {}",
        shell_quote(&format!("{flake_ref}#{}", attr.to_flake_fragment()))
    )
}

/// A job-count badge.
struct Count {
    class: &'static str,
    n: u64,
}

/// One evaluation as a row of a list.
struct EvalRow {
    id: i64,
    repo: String,
    repo_href: String,
    ref_name: String,
    rev: String,
    state: &'static str,
    counts: Vec<Count>,
    created: String,
    took: String,
}

impl EvalRow {
    fn new(e: &EvaluationSummary, now: Timestamp) -> Self {
        Self {
            id: e.id.0,
            repo: e.repo.to_string(),
            repo_href: repo_href(&e.repo),
            ref_name: e.ref_name.clone(),
            rev: short(&e.rev).to_owned(),
            state: e.state.as_str(),
            counts: counts(&e.job_counts),
            created: time(Some(e.created_at)),
            took: duration(e.started_at, e.finished_at, now),
        }
    }
}

fn counts(map: &BTreeMap<JobState, u64>) -> Vec<Count> {
    map.iter()
        .map(|(state, n)| Count {
            class: state.as_str(),
            n: *n,
        })
        .collect()
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod helper_tests {
    use reconix_spec::Timestamp;

    use super::{duration, reproduce, shell_quote, size, time};
    use reconix_spec::AttrPath;

    #[test]
    fn sizes_should_be_readable() {
        assert_eq!(size(None), "");
        assert_eq!(size(Some(812)), "812 B");
        assert_eq!(size(Some(4300)), "4.2 KiB");
        assert_eq!(size(Some(3 << 20)), "3.0 MiB");
        assert_eq!(size(Some(1_610_612_736)), "1.5 GiB");
    }

    #[test]
    fn times_and_durations_should_be_readable() {
        assert_eq!(
            time(Some(Timestamp(1_700_000_000_000))),
            "2023-11-14 22:13:20"
        );
        assert_eq!(time(None), "");
        let now = Timestamp(100_000);
        assert_eq!(
            duration(Some(Timestamp(0)), Some(Timestamp(65_000)), now),
            "1m 5s"
        );
        assert_eq!(duration(Some(Timestamp(40_000)), None, now), "1m");
        assert_eq!(duration(None, None, now), "");
    }

    #[test]
    fn reproduce_should_quote_for_the_shell() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        let attr = |s: &str| AttrPath::new(s).unwrap();
        assert_eq!(
            reproduce(
                "git+https://x/r?rev=abc",
                &attr("packages.x86_64-linux.hello")
            ),
            "nix build 'git+https://x/r?rev=abc#packages.x86_64-linux.hello'"
        );
        assert_eq!(
            reproduce(
                "git+https://x/r?rev=abc",
                &AttrPath::from_names(&["hydraJobs", "it's", "foo/bar", "p%q"]).unwrap()
            ),
            r#"nix build 'git+https://x/r?rev=abc#hydraJobs.it'\''s."foo/bar"."p%25q"'"#
        );
    }
}
