//! The markdown summary of a collapsed evaluation: the body of the `<prefix>/summary` check run.
//!
//! GitHub rejects a check run whose `output.summary` is longer than 65,535 characters, and a
//! rejected update leaves the previous (stale) summary on the commit. So the list of failing
//! attributes stops before that cap and ends with a count of what was left out.

use reconix_status::JobState;

use super::describe::job_status;
use super::inputs::{EvalInput, JobInput, Settings};

/// GitHub's cap on a check run's `output.summary`, in characters.
pub(crate) const MAX_SUMMARY_LEN: usize = 65_535;

/// Room kept free below [`MAX_SUMMARY_LEN`], so a miscount by a forge (e.g. counting UTF-16
/// units) cannot push a summary over the cap. Lengths are counted in bytes, which is already
/// at least the number of characters.
const SAFETY_MARGIN: usize = 256;

/// How many jobs of an evaluation are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Jobs whose drv was built.
    pub(crate) succeeded: usize,
    /// Jobs whose drv failed to build.
    pub(crate) failed: usize,
    /// Jobs that will not build because a dependency failed.
    pub(crate) dependency_failed: usize,
    /// Attributes that failed to evaluate.
    pub(crate) eval_failed: usize,
    /// Jobs being built.
    pub(crate) running: usize,
    /// Jobs waiting for dependencies or a builder.
    pub(crate) queued: usize,
    /// Jobs cancelled before they were built.
    pub(crate) cancelled: usize,
    /// Jobs not built on purpose (a system the repository does not build).
    pub(crate) skipped: usize,
    /// All jobs.
    pub(crate) total: usize,
}

impl Counts {
    /// Counts the jobs of one evaluation by state.
    pub(crate) fn of(jobs: &[JobInput]) -> Self {
        let mut counts = Self {
            total: jobs.len(),
            ..Self::default()
        };
        for job in jobs {
            *counts.slot(job.state) += 1;
        }
        counts
    }

    /// Returns the counter of the jobs in `state`.
    fn slot(&mut self, state: JobState) -> &mut usize {
        match state {
            JobState::Queued => &mut self.queued,
            JobState::Building => &mut self.running,
            JobState::Succeeded => &mut self.succeeded,
            JobState::Failed => &mut self.failed,
            JobState::DependencyFailed => &mut self.dependency_failed,
            JobState::Cancelled => &mut self.cancelled,
            JobState::EvalFailed => &mut self.eval_failed,
            JobState::Skipped => &mut self.skipped,
        }
    }

    /// Returns the number of jobs that failed in any way: those in a state
    /// [`JobState::is_failing`] names (build, dependency, evaluation).
    pub(crate) fn failing(&self) -> usize {
        let mut counts = *self;
        JobState::ALL
            .iter()
            .filter(|s| s.is_failing())
            .map(|s| *counts.slot(*s))
            .sum()
    }

    /// Returns the one-line description of the rolling summary, e.g.
    /// `9950/10000 built, 3 failed, 47 running`. Zero counts other than `built` are left out.
    ///
    /// Every count appears, so any change of a job's state changes the description; the plan
    /// compares check runs by state and description only.
    pub(crate) fn description(&self) -> String {
        let mut text = format!("{}/{} built", self.succeeded, self.total);
        for (n, label) in [
            (self.failing(), "failed"),
            (self.running, "running"),
            (self.queued, "queued"),
            (self.cancelled, "cancelled"),
            (self.skipped, "skipped"),
        ] {
            if n > 0 {
                text.push_str(&format!(", {n} {label}"));
            }
        }
        text
    }
}

/// Returns the markdown summary of a collapsed evaluation: a heading, a table of counts and a
/// "Failing" section linking every failing attribute (sorted by attribute) to its job page with
/// its one-line error.
///
/// The result is at most [`MAX_SUMMARY_LEN`] bytes (hence characters): when the failing list
/// would not fit, it ends with `… and N more failing attributes: <evaluation url>`.
pub(crate) fn markdown(settings: &Settings, evaluation: &EvalInput) -> String {
    let counts = Counts::of(&evaluation.jobs);
    let eval_url = settings.evaluation_url(evaluation.id);
    let mut out = format!(
        "## {}: evaluation {}\n\nCommit {} on {} · [evaluation page]({eval_url})\n\n",
        escape(&settings.context_prefix),
        evaluation.id,
        escape(&evaluation.sha),
        escape(&evaluation.git_ref),
    );
    out.push_str("| state | jobs |\n| --- | ---: |\n");
    for (label, n) in [
        ("succeeded", counts.succeeded),
        ("failed", counts.failed),
        ("dependency failed", counts.dependency_failed),
        ("evaluation failed", counts.eval_failed),
        ("running", counts.running),
        ("queued", counts.queued),
        ("cancelled", counts.cancelled),
        ("**total**", counts.total),
    ] {
        out.push_str(&format!("| {label} | {n} |\n"));
    }

    let mut failing: Vec<&JobInput> = evaluation
        .jobs
        .iter()
        .filter(|j| j.state.is_failing())
        .collect();
    if failing.is_empty() {
        return cap(out);
    }
    failing.sort_by(|a, b| a.attr.cmp(&b.attr).then(a.id.cmp(&b.id)));
    out.push_str(&format!("\n### Failing ({})\n\n", failing.len()));

    // The footer is sized for the largest count it could carry, so it always fits once reserved.
    let reserve = more_line(failing.len(), &eval_url).len() + SAFETY_MARGIN;
    for (i, job) in failing.iter().enumerate() {
        let (_, description) = job_status(evaluation, job);
        let line = format!(
            "- [{}]({}): {}\n",
            escape(&job.attr),
            settings.job_url(job.id),
            escape(&description),
        );
        if out.len() + line.len() + reserve > MAX_SUMMARY_LEN {
            out.push_str(&more_line(failing.len() - i, &eval_url));
            break;
        }
        out.push_str(&line);
    }
    cap(out)
}

/// Returns the line that ends a failing list cut short.
fn more_line(more: usize, eval_url: &str) -> String {
    format!("\n… and {more} more failing attributes: {eval_url}\n")
}

/// Cuts `text` to [`MAX_SUMMARY_LEN`] bytes on a char boundary. Only a pathological heading
/// (e.g. a huge `external_url`) gets here; the failing list stops earlier on its own.
fn cap(mut text: String) -> String {
    if text.len() > MAX_SUMMARY_LEN {
        let end = (0..=MAX_SUMMARY_LEN)
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        text.truncate(end);
    }
    text
}

/// Escapes text for inline markdown: characters that would open links, code, emphasis, HTML or
/// table cells get a backslash, and control characters (newlines) become spaces, so an
/// attribute or an error can never break a link, the table or the list.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' | '`' | '*' | '_' | '~' | '[' | ']' | '(' | ')' | '<' | '>' | '|' | '&' | '#'
            | '!' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use reconix_status::{EvaluationId, EvaluationState, JobId};

    use super::*;

    fn settings() -> Settings {
        Settings {
            context_prefix: "reconix".to_owned(),
            collapse_threshold: 10,
            debounce: std::time::Duration::from_secs(10),
            check_runs: true,
            external_url: "https://ci.example.org".to_owned(),
        }
    }

    fn job(id: i64, attr: &str, state: JobState, error: Option<&str>) -> JobInput {
        JobInput {
            id: JobId(id),
            attr: attr.to_owned(),
            state,
            error: error.map(str::to_owned),
            failed_dependency: None,
        }
    }

    fn evaluation(jobs: Vec<JobInput>) -> EvalInput {
        EvalInput {
            id: EvaluationId(7),
            sha: "a".repeat(40),
            git_ref: "refs/heads/main".to_owned(),
            state: EvaluationState::Building,
            error: None,
            superseded_by_rev: None,
            jobs,
        }
    }

    #[test]
    fn counts_should_tally_every_state() {
        let jobs: Vec<JobInput> = JobState::ALL
            .iter()
            .enumerate()
            .map(|(i, s)| job(i as i64, &format!("a{i}"), *s, None))
            .collect();
        let c = Counts::of(&jobs);
        assert_eq!(
            c,
            Counts {
                succeeded: 1,
                failed: 1,
                dependency_failed: 1,
                eval_failed: 1,
                running: 1,
                queued: 1,
                cancelled: 1,
                skipped: 1,
                total: 8,
            }
        );
        assert_eq!(c.failing(), 3);
        assert_eq!(
            c.description(),
            "1/8 built, 3 failed, 1 running, 1 queued, 1 cancelled, 1 skipped"
        );
    }

    #[test]
    fn markdown_should_have_heading_table_and_sorted_failing_links() {
        let mut dep = job(3, "b.dep", JobState::DependencyFailed, None);
        dep.failed_dependency = Some("c.broken".to_owned());
        let eval = evaluation(vec![
            job(1, "z.ok", JobState::Succeeded, None),
            job(
                4,
                "c.broken",
                JobState::Failed,
                Some("builder said no\nmore"),
            ),
            dep,
            job(
                2,
                "a.eval",
                JobState::EvalFailed,
                Some("error: undefined variable"),
            ),
            job(5, "d.run", JobState::Building, None),
        ]);
        let md = markdown(&settings(), &eval);
        assert!(md.starts_with("## reconix: evaluation 7\n"), "{md}");
        assert!(md.contains("[evaluation page](https://ci.example.org/evaluations/7)"));
        assert!(md.contains("| succeeded | 1 |\n"));
        assert!(md.contains("| failed | 1 |\n"));
        assert!(md.contains("| dependency failed | 1 |\n"));
        assert!(md.contains("| evaluation failed | 1 |\n"));
        assert!(md.contains("| running | 1 |\n"));
        assert!(md.contains("| queued | 0 |\n"));
        assert!(md.contains("| cancelled | 0 |\n"));
        assert!(md.contains("| **total** | 5 |\n"));
        let failing = md.split("### Failing (3)\n\n").nth(1).unwrap();
        assert_eq!(
            failing,
            "- [a.eval](https://ci.example.org/jobs/2): evaluation failed: error: undefined variable\n\
             - [b.dep](https://ci.example.org/jobs/3): dependency failed: c.broken\n\
             - [c.broken](https://ci.example.org/jobs/4): build failed: builder said no\n"
        );
        assert!(!md.contains("z.ok"));
    }

    #[test]
    fn markdown_without_failures_should_have_no_failing_section() {
        let md = markdown(
            &settings(),
            &evaluation(vec![job(1, "x", JobState::Succeeded, None)]),
        );
        assert!(!md.contains("Failing"));
    }

    #[test]
    fn escape_should_neutralise_link_table_code_and_html_characters() {
        assert_eq!(
            escape("a|b[c](d)<e>`f`\ng\\h"),
            "a\\|b\\[c\\]\\(d\\)\\<e\\>\\`f\\` g\\\\h"
        );
    }

    #[test]
    fn markdown_should_escape_attrs_and_errors() {
        let eval = evaluation(vec![job(
            1,
            "evil](https://x)|`<b>",
            JobState::Failed,
            Some("bad | [link](y) <script> `code`"),
        )]);
        let md = markdown(&settings(), &eval);
        let line = md.lines().last().unwrap();
        assert_eq!(
            line,
            "- [evil\\]\\(https://x\\)\\|\\`\\<b\\>](https://ci.example.org/jobs/1): \
             build failed: bad \\| \\[link\\]\\(y\\) \\<script\\> \\`code\\`"
        );
    }

    #[test]
    fn markdown_with_10000_failures_should_stay_under_the_cap_and_name_them_in_order() {
        let jobs: Vec<JobInput> = (0..10_000)
            .map(|i| {
                job(
                    i,
                    &format!("packages.x86_64-linux.pkg-{i:05}"),
                    JobState::Failed,
                    Some("builder for '/nix/store/…-pkg.drv' failed with exit code 1 | <see log>"),
                )
            })
            .collect();
        let md = markdown(&settings(), &evaluation(jobs));
        assert!(md.len() <= MAX_SUMMARY_LEN, "{} bytes", md.len());
        assert!(md.chars().count() <= MAX_SUMMARY_LEN);
        assert!(md.contains("### Failing (10000)"));

        let named: Vec<&str> = md.lines().filter(|l| l.starts_with("- [")).collect();
        assert!(named.len() > 100, "only {} named", named.len());
        assert!(named.len() < 10_000);
        for (i, line) in named.iter().enumerate() {
            assert!(
                line.starts_with(&format!(
                    "- [packages.x86\\_64-linux.pkg-{i:05}](https://ci.example.org/jobs/{i}): build failed: "
                )),
                "{line}"
            );
            assert!(line.contains("\\| \\<see log\\>"), "{line}");
        }
        let more = 10_000 - named.len();
        assert!(md.ends_with(&format!(
            "\n… and {more} more failing attributes: https://ci.example.org/evaluations/7\n"
        )));
        // The cut is close to the cap, not far below it.
        assert!(md.len() > MAX_SUMMARY_LEN - 1_000, "{} bytes", md.len());
    }

    #[test]
    fn markdown_should_fit_every_failure_when_they_fit() {
        let jobs: Vec<JobInput> = (0..100)
            .map(|i| job(i, &format!("p{i:03}"), JobState::EvalFailed, None))
            .collect();
        let md = markdown(&settings(), &evaluation(jobs));
        assert_eq!(md.lines().filter(|l| l.starts_with("- [")).count(), 100);
        assert!(!md.contains("more failing attributes"));
    }

    #[test]
    fn markdown_should_be_capped_even_with_a_huge_heading() {
        let mut s = settings();
        s.external_url = format!("https://{}", "é".repeat(40_000));
        let jobs = vec![job(1, "x", JobState::Failed, None)];
        let md = markdown(&s, &evaluation(jobs));
        assert!(md.len() <= MAX_SUMMARY_LEN);
    }
}
