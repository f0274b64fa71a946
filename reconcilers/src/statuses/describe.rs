//! What a status says: the state and description of an evaluation's `<prefix>/eval` context
//! and of each job's context (also the lines of the markdown summary), cut to the forges' cap.

use reconix_forge::StatusState;
use reconix_status::{EvaluationState, JobState};

use super::inputs::{EvalInput, JobInput};

/// GitHub's cap on a status description, in characters (the other forges allow more).
const MAX_DESCRIPTION_CHARS: usize = 140;

/// Returns the state and description of `<prefix>/eval`.
pub(crate) fn evaluation_status(eval: &EvalInput) -> (StatusState, String) {
    let (state, description) = match eval.state {
        EvaluationState::Queued => (StatusState::Pending, "queued".to_owned()),
        EvaluationState::Evaluating => (StatusState::Running, "evaluating".to_owned()),
        EvaluationState::Building | EvaluationState::Finished => {
            let n = eval.jobs.len();
            let mut text = format!("{n} job{}", if n == 1 { "" } else { "s" });
            let eval_failed = eval
                .jobs
                .iter()
                .filter(|j| j.state == JobState::EvalFailed)
                .count();
            if eval_failed > 0 {
                text.push_str(&format!(", {eval_failed} failed to evaluate"));
            }
            (StatusState::Success, text)
        }
        EvaluationState::Failed => (
            StatusState::Failure,
            with_detail(
                "evaluation failed",
                eval.error.as_deref().and_then(first_line),
            ),
        ),
        EvaluationState::Superseded => (StatusState::Cancelled, superseded(eval)),
    };
    (state, truncate(description))
}

/// Returns the state and description of one job's context (also the line of a failing job in
/// the markdown summary).
pub(crate) fn job_status(eval: &EvalInput, job: &JobInput) -> (StatusState, String) {
    let error = job.error.as_deref().and_then(first_line);
    let (state, description) = match job.state {
        JobState::Queued => (StatusState::Pending, "queued".to_owned()),
        JobState::Building => (StatusState::Running, "building".to_owned()),
        JobState::Succeeded => (StatusState::Success, "built".to_owned()),
        JobState::Failed => (StatusState::Failure, with_detail("build failed", error)),
        JobState::DependencyFailed => (
            StatusState::Failure,
            with_detail(
                "dependency failed",
                job.failed_dependency.as_deref().and_then(first_line),
            ),
        ),
        JobState::EvalFailed => (
            StatusState::Failure,
            with_detail("evaluation failed", error),
        ),
        JobState::Cancelled if eval.state == EvaluationState::Superseded => {
            (StatusState::Cancelled, superseded(eval))
        }
        JobState::Cancelled => (StatusState::Cancelled, "cancelled".to_owned()),
        // Never a failure: a skipped job is not this repository's to build. Success, as
        // GitHub counts a skipped check run, so a required context does not wait forever; the
        // description says it was not built.
        JobState::Skipped => (
            StatusState::Success,
            error.map_or_else(|| "skipped".to_owned(), str::to_owned),
        ),
    };
    (state, truncate(description))
}

/// Returns `superseded by <first 8 characters of the rev>`, or `superseded`.
fn superseded(eval: &EvalInput) -> String {
    match eval.superseded_by_rev.as_deref().map(str::trim) {
        Some(rev) if !rev.is_empty() => {
            let short: String = rev.chars().take(8).collect();
            format!("superseded by {short}")
        }
        _ => "superseded".to_owned(),
    }
}

/// Returns `<what>: <detail>`, or `<what>` without detail.
fn with_detail(what: &str, detail: Option<&str>) -> String {
    match detail {
        Some(detail) => format!("{what}: {detail}"),
        None => what.to_owned(),
    }
}

/// Returns the first non-blank line of `text`, trimmed; `None` when all of it is blank.
fn first_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).find(|l| !l.is_empty())
}

/// Cuts a description to [`MAX_DESCRIPTION_CHARS`] characters, ending with `…` when cut. GitHub
/// rejects longer descriptions, which would leave a stale status on the commit.
pub(crate) fn truncate(text: String) -> String {
    if text.chars().count() <= MAX_DESCRIPTION_CHARS {
        return text;
    }
    let mut cut: String = text.chars().take(MAX_DESCRIPTION_CHARS - 1).collect();
    cut.push('…');
    cut
}
