//! How a pull request's evaluation compares with its base branch's, attribute by attribute: the
//! view logic of the pull request page (the rows come from `reconix_status`).

use std::collections::{HashMap, HashSet};

use reconix_spec::names::AttrPath;
use reconix_status::JobState;
use reconix_status::pages::JobOutcome;
use serde::Serialize;

/// One attribute present in both evaluations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct OutcomeChange {
    /// The job in the base branch's evaluation.
    pub base: JobOutcome,
    /// The job in the pull request's evaluation.
    pub head: JobOutcome,
}

/// How a pull request's evaluation compares with its base branch's, attribute by attribute.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub(crate) struct PullComparison {
    /// Failing in the pull request, not failing on the base branch.
    pub newly_failing: Vec<OutcomeChange>,
    /// Failing in both.
    pub still_failing: Vec<OutcomeChange>,
    /// Failing on the base branch, succeeded in the pull request.
    pub fixed: Vec<OutcomeChange>,
    /// Attributes the base branch does not have, in any state.
    pub new_jobs: Vec<JobOutcome>,
    /// Attributes the pull request no longer has.
    pub removed: Vec<JobOutcome>,
    /// Jobs of the pull request that are not terminal yet: the comparison is not final.
    pub unfinished: u64,
}

/// Compares the jobs of a pull request's evaluation (`head`) with those of its base branch's
/// (`base`) by attribute path. Each list in the result is sorted by attribute.
///
/// A `cancelled` or unfinished job counts as neither failing nor fixed.
pub(crate) fn compare_evaluations(base: &[JobOutcome], head: &[JobOutcome]) -> PullComparison {
    let base_by_attr: HashMap<&AttrPath, &JobOutcome> = base.iter().map(|j| (&j.attr, j)).collect();
    let mut out = PullComparison::default();
    let mut head_sorted: Vec<&JobOutcome> = head.iter().collect();
    head_sorted.sort_by(|a, b| a.attr.cmp(&b.attr));
    for h in head_sorted {
        if !h.state.is_terminal() {
            out.unfinished += 1;
        }
        let Some(b) = base_by_attr.get(&h.attr) else {
            out.new_jobs.push(h.clone());
            continue;
        };
        let change = || OutcomeChange {
            base: (*b).clone(),
            head: h.clone(),
        };
        match (b.state.is_failing(), h.state.is_failing()) {
            (false, true) => out.newly_failing.push(change()),
            (true, true) => out.still_failing.push(change()),
            (true, false) if h.state == JobState::Succeeded => out.fixed.push(change()),
            _ => {}
        }
    }
    let head_attrs: HashSet<&AttrPath> = head.iter().map(|j| &j.attr).collect();
    out.removed = base
        .iter()
        .filter(|b| !head_attrs.contains(&b.attr))
        .cloned()
        .collect();
    out.removed.sort_by(|a, b| a.attr.cmp(&b.attr));
    out
}

#[cfg(test)]
mod tests {
    use reconix_status::JobId;

    use super::*;

    fn attr(s: &str) -> AttrPath {
        s.parse().unwrap()
    }

    fn outcome(id: i64, name: &str, state: JobState) -> JobOutcome {
        JobOutcome {
            id: JobId(id),
            attr: attr(name),
            state,
        }
    }

    #[test]
    fn compare_should_sort_attrs_into_newly_failing_still_failing_fixed_new_and_removed() {
        use JobState::*;
        let base = [
            outcome(1, "a", Succeeded),
            outcome(2, "b", Failed),
            outcome(3, "c", EvalFailed),
            outcome(4, "d", Succeeded),
            outcome(5, "gone", Succeeded),
            outcome(6, "e", Cancelled),
            outcome(7, "f", Failed),
        ];
        let head = [
            outcome(11, "a", DependencyFailed),
            outcome(12, "b", Failed),
            outcome(13, "c", Succeeded),
            outcome(14, "d", Succeeded),
            outcome(15, "new", EvalFailed),
            outcome(16, "e", Failed),
            outcome(17, "f", Building),
        ];
        let cmp = compare_evaluations(&base, &head);
        let attrs = |v: &[OutcomeChange]| -> Vec<String> {
            v.iter().map(|c| c.head.attr.to_string()).collect()
        };
        assert_eq!(attrs(&cmp.newly_failing), ["a", "e"]);
        assert_eq!(cmp.newly_failing[0].base.id, JobId(1));
        assert_eq!(cmp.newly_failing[0].head.id, JobId(11));
        assert_eq!(attrs(&cmp.still_failing), ["b"]);
        assert_eq!(attrs(&cmp.fixed), ["c"]);
        assert_eq!(
            cmp.new_jobs,
            [outcome(15, "new", EvalFailed)],
            "a new attribute is new, whatever its state"
        );
        assert_eq!(cmp.removed, [outcome(5, "gone", Succeeded)]);
        // `f` is still building: neither fixed nor failing, but counted as unfinished.
        assert_eq!(cmp.unfinished, 1);
    }

    #[test]
    fn compare_of_identical_evaluations_should_report_only_still_failing() {
        let jobs = [
            outcome(1, "a", JobState::Succeeded),
            outcome(2, "b", JobState::Failed),
        ];
        let cmp = compare_evaluations(&jobs, &jobs);
        assert!(cmp.newly_failing.is_empty() && cmp.fixed.is_empty());
        assert!(cmp.new_jobs.is_empty() && cmp.removed.is_empty());
        assert_eq!(cmp.still_failing.len(), 1);
    }
}
