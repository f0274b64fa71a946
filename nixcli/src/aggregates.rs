//! Aggregate jobs (Hydra's `_hydraAggregate = true; constituents = [ … ]`): resolving their
//! constituents against the other jobs of the evaluation. Pure: data in, data out.
//!
//! - A derivation constituent is every job with that derivation; a derivation that is no job is
//!   kept as [`Constituent::Derivation`] and is not an error (Hydra only warns about it).
//! - A string is a job name: the full attribute path (`checks.x86_64-linux.a`), or a path
//!   relative to the aggregate's top-level output (`tests.a` for an aggregate under
//!   `hydraJobs`, as Hydra names jobs). Failing that, a string with `*`, `?` or `[` is a glob
//!   (the `glob` crate's syntax; `*` also matches `.`) over the same two spellings of every
//!   other job's name.
//! - A name that matches no job, a glob that matches nothing, or an invalid glob makes the
//!   aggregate eval-failed, naming every such constituent.
//! - Constituent jobs become dependencies of the aggregate, so it builds (and succeeds) only
//!   after all of them succeeded, and is `dependency-failed` otherwise. A cycle (an aggregate
//!   naming itself, two aggregates naming each other, or a constituent whose derivation needs
//!   the aggregate) would leave every job on it waiting forever: each aggregate on a cycle is
//!   made eval-failed with the cycle in its message; the jobs depending on it are then blocked
//!   as usual, and every other job builds.

use std::collections::{BTreeSet, HashMap, VecDeque};

use reconix_spec::names::{AttrPath, StorePath};

use crate::parse::eval::RawConstituent;
use crate::port::{Constituent, EvalJob};

/// Resolves the constituents of every aggregate among `jobs` (see the module docs). `raw` is
/// parallel to `jobs`: the constituents `jobs.nix` printed for an aggregate, `None` for any
/// other job. Returns the jobs in the same order: each aggregate with its
/// [`JobDrv::constituents`](crate::JobDrv::constituents) filled and its constituent jobs added
/// to its deps, or eval-failed; the other jobs as they were.
pub(crate) fn resolve(mut jobs: Vec<EvalJob>, raw: &[Option<Vec<RawConstituent>>]) -> Vec<EvalJob> {
    let resolved: Vec<Option<Result<Vec<Constituent>, String>>> = {
        let index = Index::new(&jobs);
        raw.iter()
            .enumerate()
            .map(|(i, raw)| {
                let raw = raw.as_ref()?;
                jobs.get(i)?.result.as_ref().ok()?;
                Some(index.resolve(i, raw))
            })
            .collect()
    };
    let cycles = cycles(&jobs, &resolved);
    // A skipped job (its system is not built here) never succeeds, so an aggregate waiting on
    // one would wait forever: it fails, naming the constituent.
    let skipped: HashMap<AttrPath, String> = jobs
        .iter()
        .filter_map(|j| {
            let why = j.result.as_ref().ok()?.skipped.as_ref()?;
            Some((j.attr.clone(), why.clone()))
        })
        .collect();
    for ((job, resolved), cycle) in jobs.iter_mut().zip(resolved).zip(cycles) {
        let Some(resolved) = resolved else { continue };
        let resolved = match cycle {
            Some(cycle) => Err(format!(
                "aggregate constituents form a cycle: {}",
                cycle.join(" -> ")
            )),
            None => resolved,
        };
        let aggregate_skipped = job.result.as_ref().is_ok_and(|drv| drv.skipped.is_some());
        let resolved = resolved.and_then(|constituents| {
            let never = constituents.iter().find_map(|c| match c {
                Constituent::Job(attr) if !aggregate_skipped => {
                    skipped.get(attr).map(|why| (attr, why))
                }
                _ => None,
            });
            match never {
                Some((attr, why)) => Err(format!("constituent `{attr}` is skipped: {why}")),
                None => Ok(constituents),
            }
        });
        match (resolved, &mut job.result) {
            (Ok(constituents), Ok(drv)) => {
                let deps: BTreeSet<AttrPath> = drv
                    .deps
                    .drain(..)
                    .chain(constituents.iter().filter_map(|c| match c {
                        Constituent::Job(attr) => Some(attr.clone()),
                        Constituent::Derivation(_) => None,
                    }))
                    .collect();
                drv.deps = deps.into_iter().collect();
                drv.constituents = Some(constituents);
            }
            (Err(message), result) => *result = Err(message),
            (Ok(_), Err(_)) => {}
        }
    }
    jobs
}

/// The jobs by name and by derivation.
struct Index<'a> {
    jobs: &'a [EvalJob],
    by_attr: HashMap<&'a str, usize>,
    by_drv: HashMap<&'a StorePath, Vec<usize>>,
}

impl<'a> Index<'a> {
    fn new(jobs: &'a [EvalJob]) -> Self {
        let mut by_drv: HashMap<&StorePath, Vec<usize>> = HashMap::new();
        for (i, job) in jobs.iter().enumerate() {
            if let Ok(drv) = &job.result {
                by_drv.entry(&drv.drv_path).or_default().push(i);
            }
        }
        Self {
            jobs,
            by_attr: jobs
                .iter()
                .enumerate()
                .map(|(i, j)| (j.attr.as_str(), i))
                .collect(),
            by_drv,
        }
    }

    fn attr(&self, i: usize) -> Option<&'a AttrPath> {
        self.jobs.get(i).map(|j| &j.attr)
    }

    /// Resolves the constituents of aggregate `at`: the constituents in the order written
    /// (each once), or every problem found.
    fn resolve(&self, at: usize, raw: &[RawConstituent]) -> Result<Vec<Constituent>, String> {
        let root = self.attr(at).and_then(|a| top_level(a.as_str()));
        let mut out: Vec<Constituent> = Vec::new();
        let mut problems: Vec<String> = Vec::new();
        let mut push = |c: Constituent| {
            if !out.contains(&c) {
                out.push(c);
            }
        };
        for constituent in raw {
            match constituent {
                RawConstituent::DrvPath(drv) => {
                    let jobs: Vec<usize> = self
                        .by_drv
                        .get(drv)
                        .into_iter()
                        .flatten()
                        .copied()
                        .filter(|&j| j != at)
                        .collect();
                    if jobs.is_empty() {
                        push(Constituent::Derivation(drv.clone()));
                    }
                    for attr in jobs.into_iter().filter_map(|j| self.attr(j)) {
                        push(Constituent::Job(attr.clone()));
                    }
                }
                RawConstituent::Name(name) => {
                    let relative = root.map(|r| format!("{r}.{name}"));
                    let exact = self
                        .by_attr
                        .get(name.as_str())
                        .or_else(|| relative.as_deref().and_then(|name| self.by_attr.get(name)));
                    match exact {
                        Some(&j) if j == at => {
                            problems.push(format!("constituent `{name}` is the aggregate itself"));
                        }
                        Some(&j) => {
                            if let Some(attr) = self.attr(j) {
                                push(Constituent::Job(attr.clone()));
                            }
                        }
                        None if name.contains(['*', '?', '[']) => match glob::Pattern::new(name) {
                            Ok(pattern) => {
                                let matched = self.glob(at, root, &pattern);
                                if matched.is_empty() {
                                    problems
                                        .push(format!("constituent glob `{name}` matches no job"));
                                }
                                for attr in matched {
                                    push(Constituent::Job(attr.clone()));
                                }
                            }
                            Err(e) => {
                                problems.push(format!("constituent glob `{name}` is invalid: {e}"))
                            }
                        },
                        None => problems.push(format!("constituent `{name}` matches no job")),
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(format!("aggregate job: {}", problems.join("; ")))
        }
    }

    /// Returns the jobs other than `at` whose name, or name relative to `root`, matches
    /// `pattern`, in evaluation order.
    fn glob(&self, at: usize, root: Option<&str>, pattern: &glob::Pattern) -> Vec<&'a AttrPath> {
        self.jobs
            .iter()
            .enumerate()
            .filter(|&(j, job)| {
                let name = job.attr.as_str();
                let relative = root.and_then(|r| name.strip_prefix(r)?.strip_prefix('.'));
                j != at && (pattern.matches(name) || relative.is_some_and(|n| pattern.matches(n)))
            })
            .map(|(_, job)| &job.attr)
            .collect()
    }
}

/// Returns the first component of a job name (its top-level flake output), unless it is quoted.
fn top_level(attr: &str) -> Option<&str> {
    let (first, _) = attr.split_once('.')?;
    (!first.starts_with('"')).then_some(first)
}

/// Returns, for each job, the cycle through it (its names, from it back to it) when it is an
/// aggregate that resolved and lies on a cycle of the job graph (dependencies and constituent
/// jobs together); `None` otherwise.
///
/// One breadth-first search per aggregate: O(aggregates × (jobs + edges)), cheap since
/// aggregates are few. Every cycle passes through a constituent edge (derivations cannot form
/// cycles), so failing every aggregate on a cycle removes them all.
fn cycles(
    jobs: &[EvalJob],
    resolved: &[Option<Result<Vec<Constituent>, String>>],
) -> Vec<Option<Vec<String>>> {
    let by_attr: HashMap<&AttrPath, usize> =
        jobs.iter().enumerate().map(|(i, j)| (&j.attr, i)).collect();
    let edges: Vec<Vec<usize>> = jobs
        .iter()
        .zip(resolved)
        .map(|(job, resolved)| {
            let deps = job
                .result
                .as_ref()
                .map(|d| d.deps.as_slice())
                .unwrap_or_default();
            let constituents = match resolved {
                Some(Ok(constituents)) => constituents.as_slice(),
                Some(Err(_)) | None => &[],
            };
            deps.iter()
                .chain(constituents.iter().filter_map(|c| match c {
                    Constituent::Job(attr) => Some(attr),
                    Constituent::Derivation(_) => None,
                }))
                .filter_map(|a| by_attr.get(a).copied())
                .collect()
        })
        .collect();
    let name = |i: usize| jobs.get(i).map(|j| j.attr.to_string()).unwrap_or_default();
    resolved
        .iter()
        .enumerate()
        .map(|(start, resolved)| {
            if !matches!(resolved, Some(Ok(_))) {
                return None;
            }
            let path = cycle_through(&edges, start)?;
            Some(path.into_iter().map(name).collect())
        })
        .collect()
}

/// Returns a shortest cycle from `start` back to it, as the nodes visited (`start` first and
/// last), if there is one.
fn cycle_through(edges: &[Vec<usize>], start: usize) -> Option<Vec<usize>> {
    let mut parent: HashMap<usize, usize> = HashMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        for &next in edges.get(node).map(Vec::as_slice).unwrap_or_default() {
            if next == start {
                let mut back = vec![start];
                let mut at = node;
                while at != start {
                    back.push(at);
                    at = *parent.get(&at)?;
                }
                back.push(start);
                back.reverse();
                return Some(back);
            }
            if let std::collections::hash_map::Entry::Vacant(e) = parent.entry(next) {
                e.insert(node);
                queue.push_back(next);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {

    use reconix_spec::names::System;

    use super::*;
    use crate::JobDrv;

    fn drv(name: &str) -> StorePath {
        StorePath::new(format!("/nix/store/{:0>32}-{name}.drv", name.len())).unwrap()
    }

    /// A job with a derivation named after its last component and the given deps.
    fn job(attr: &str, deps: &[&str]) -> EvalJob {
        let name = attr.rsplit('.').next().unwrap();
        EvalJob {
            attr: AttrPath::new(attr).unwrap(),
            name: name.to_owned(),
            system: Some(System::new("x86_64-linux").unwrap()),
            result: Ok(JobDrv {
                drv_path: drv(name),
                outputs: reconix_spec::Outputs::new(),
                deps: deps.iter().map(|d| AttrPath::new(*d).unwrap()).collect(),
                required_features: Vec::new(),
                constituents: None,
                meta: reconix_spec::JobMeta::default(),
                skipped: None,
            }),
        }
    }

    fn failed(attr: &str) -> EvalJob {
        EvalJob {
            result: Err("boom".to_owned()),
            ..job(attr, &[])
        }
    }

    fn name(n: &str) -> RawConstituent {
        RawConstituent::Name(n.to_owned())
    }

    /// Resolves `jobs`, where `aggregates` gives the raw constituents of some of them by attr.
    fn run(jobs: Vec<EvalJob>, aggregates: &[(&str, Vec<RawConstituent>)]) -> Vec<EvalJob> {
        let raw: Vec<_> = jobs
            .iter()
            .map(|j| {
                aggregates
                    .iter()
                    .find(|(a, _)| *a == j.attr.as_str())
                    .map(|(_, r)| r.clone())
            })
            .collect();
        resolve(jobs, &raw)
    }

    fn find<'a>(jobs: &'a [EvalJob], attr: &str) -> &'a EvalJob {
        jobs.iter().find(|j| j.attr.as_str() == attr).unwrap()
    }

    fn deps(jobs: &[EvalJob], attr: &str) -> Vec<String> {
        let drv = find(jobs, attr).result.as_ref().unwrap();
        drv.deps.iter().map(ToString::to_string).collect()
    }

    fn constituents(jobs: &[EvalJob], attr: &str) -> Vec<Constituent> {
        let drv = find(jobs, attr).result.as_ref().unwrap();
        drv.constituents.clone().unwrap()
    }

    fn error<'a>(jobs: &'a [EvalJob], attr: &str) -> &'a str {
        find(jobs, attr).result.as_ref().unwrap_err()
    }

    fn job_c(attr: &str) -> Constituent {
        Constituent::Job(AttrPath::new(attr).unwrap())
    }

    const A: &str = "checks.x86_64-linux.a";
    const B: &str = "checks.x86_64-linux.b";
    const AGG: &str = "checks.x86_64-linux.agg";

    #[test]
    fn derivation_constituents_should_become_every_job_with_that_derivation() {
        let jobs = vec![
            job(A, &[]),
            job("packages.x86_64-linux.a", &[]),
            job(B, &[]),
            job(AGG, &[B]),
        ];
        let out = run(
            jobs,
            &[(
                AGG,
                vec![
                    RawConstituent::DrvPath(drv("a")),
                    RawConstituent::DrvPath(drv("b")),
                ],
            )],
        );
        assert_eq!(
            constituents(&out, AGG),
            [job_c(A), job_c("packages.x86_64-linux.a"), job_c(B)]
        );
        // The dependency the derivation walk found stays, once.
        assert_eq!(deps(&out, AGG), [A, B, "packages.x86_64-linux.a"]);
        assert_eq!(find(&out, A).result.as_ref().unwrap().constituents, None);
    }

    #[test]
    fn a_skipped_constituent_should_fail_the_aggregate_instead_of_holding_it_forever() {
        let mut other = job("checks.aarch64-linux.a", &[]);
        if let Ok(drv) = &mut other.result {
            drv.skipped = Some("system aarch64-linux is not built here".to_owned());
        }
        let out = run(
            vec![job(A, &[]), other, job(AGG, &[])],
            &[(AGG, vec![name(A), name("checks.aarch64-linux.a")])],
        );
        assert_eq!(
            error(&out, AGG),
            "constituent `checks.aarch64-linux.a` is skipped: system aarch64-linux is not built here"
        );
        assert!(find(&out, A).result.is_ok(), "the other jobs stay");
    }

    #[test]
    fn derivation_constituent_that_is_no_job_should_be_kept_without_a_dependency() {
        let out = run(
            vec![job(A, &[]), job(AGG, &[])],
            &[(AGG, vec![RawConstituent::DrvPath(drv("elsewhere"))])],
        );
        assert_eq!(
            constituents(&out, AGG),
            [Constituent::Derivation(drv("elsewhere"))]
        );
        assert!(deps(&out, AGG).is_empty());
    }

    #[test]
    fn names_should_match_full_job_names_or_names_relative_to_the_aggregates_output() {
        let jobs = vec![
            job("hydraJobs.tests.x.x86_64-linux", &[]),
            job(A, &[]),
            job("hydraJobs.release", &[]),
        ];
        let out = run(
            jobs,
            &[(
                "hydraJobs.release",
                vec![name("tests.x.x86_64-linux"), name(A)],
            )],
        );
        assert_eq!(
            constituents(&out, "hydraJobs.release"),
            [job_c("hydraJobs.tests.x.x86_64-linux"), job_c(A)]
        );
        assert_eq!(
            deps(&out, "hydraJobs.release"),
            [A, "hydraJobs.tests.x.x86_64-linux"]
        );
    }

    #[test]
    fn globs_should_match_every_other_job_and_eval_failed_jobs_too() {
        let jobs = vec![
            job(A, &[]),
            failed(B),
            job("packages.x86_64-linux.a", &[]),
            job(AGG, &[]),
        ];
        let out = run(jobs, &[(AGG, vec![name("checks.*")])]);
        // Not the aggregate itself; the eval-failed job is a dependency, so it blocks the
        // aggregate like any failed constituent.
        assert_eq!(constituents(&out, AGG), [job_c(A), job_c(B)]);
        assert_eq!(deps(&out, AGG), [A, B]);
    }

    #[test]
    fn globs_should_match_names_relative_to_the_aggregates_output() {
        let jobs = vec![
            job("hydraJobs.tests.x", &[]),
            job("hydraJobs.tests.y", &[]),
            job("hydraJobs.release", &[]),
        ];
        let out = run(jobs, &[("hydraJobs.release", vec![name("tests.*")])]);
        assert_eq!(
            constituents(&out, "hydraJobs.release"),
            [job_c("hydraJobs.tests.x"), job_c("hydraJobs.tests.y")]
        );
    }

    #[test]
    fn unknown_names_and_empty_globs_should_fail_the_aggregate_naming_each() {
        let jobs = vec![job(A, &[]), job(AGG, &[]), job(B, &[])];
        let out = run(
            jobs,
            &[(
                AGG,
                vec![
                    name(A),
                    name("checks.x86_64-linux.nope"),
                    name("tests.*"),
                    name("["),
                ],
            )],
        );
        let message = error(&out, AGG);
        assert!(
            message.contains("constituent `checks.x86_64-linux.nope` matches no job"),
            "{message}"
        );
        assert!(
            message.contains("constituent glob `tests.*` matches no job"),
            "{message}"
        );
        assert!(
            message.contains("constituent glob `[` is invalid"),
            "{message}"
        );
        assert!(!message.contains(&format!("`{A}`")), "{message}");
        // The other jobs are untouched.
        assert!(find(&out, A).result.is_ok() && find(&out, B).result.is_ok());
    }

    #[test]
    fn an_aggregate_naming_itself_should_fail() {
        let out = run(vec![job(AGG, &[])], &[(AGG, vec![name(AGG)])]);
        assert!(error(&out, AGG).contains("is the aggregate itself"));
        // A glob never matches the aggregate itself.
        let out = run(
            vec![job(AGG, &[]), job(A, &[])],
            &[(AGG, vec![name("checks.*")])],
        );
        assert_eq!(constituents(&out, AGG), [job_c(A)]);
    }

    #[test]
    fn aggregates_naming_each_other_should_both_fail_with_the_cycle() {
        let c = "checks.x86_64-linux.c";
        let jobs = vec![job(A, &[]), job(AGG, &[]), job(B, &[]), job(c, &[])];
        let out = run(
            jobs,
            &[
                (AGG, vec![name(B), name(A)]),
                (B, vec![name(AGG)]),
                (c, vec![name(AGG)]),
            ],
        );
        assert_eq!(
            error(&out, AGG),
            format!("aggregate constituents form a cycle: {AGG} -> {B} -> {AGG}")
        );
        assert_eq!(
            error(&out, B),
            format!("aggregate constituents form a cycle: {B} -> {AGG} -> {B}")
        );
        // An aggregate of a job on the cycle is not on it: it resolves, and the failed aggregate
        // it depends on blocks it.
        assert_eq!(constituents(&out, c), [job_c(AGG)]);
        assert!(find(&out, A).result.is_ok());
    }

    #[test]
    fn a_constituent_whose_derivation_needs_the_aggregate_should_make_a_cycle() {
        // b's derivation depends on agg's; agg names b.
        let jobs = vec![job(AGG, &[]), job(B, &[AGG])];
        let out = run(jobs, &[(AGG, vec![name(B)])]);
        assert_eq!(
            error(&out, AGG),
            format!("aggregate constituents form a cycle: {AGG} -> {B} -> {AGG}")
        );
        assert_eq!(deps(&out, B), [AGG]);
    }

    #[test]
    fn an_empty_aggregate_should_have_no_constituents() {
        let out = run(vec![job(AGG, &[])], &[(AGG, vec![])]);
        assert_eq!(constituents(&out, AGG), []);
    }

    #[test]
    fn an_aggregate_that_failed_to_evaluate_should_stay_failed() {
        let out = run(vec![failed(AGG)], &[(AGG, vec![name("x")])]);
        assert_eq!(error(&out, AGG), "boom");
    }
}
