//! Job-level dependencies from derivation files.
//!
//! A job depends on the jobs whose derivation is reached *first* when walking its `inputDrvs`
//! transitively: the walk stops at a derivation that belongs to a job (gating is transitive
//! anyway), so with `c → b → a` all jobs, `c` depends on `b` only. Jobs that share a derivation
//! (`default = c`) are one node: reaching it yields all of them, and a job never depends on
//! itself or on its aliases.

use indexmap::IndexSet;

use reconix_spec::names::{AttrPath, StorePath};

use std::path::Path;

use crate::parse::aterm::{Derivation, parse_derivation};
use crate::{Error, Result};

/// Computes the dependencies of each job: `jobs` are (attribute, derivation) pairs; `load`
/// returns the input derivations of a derivation (the jobs' own and every non-job derivation
/// the walk passes through, each asked at most once). The result is parallel to `jobs`; each
/// list is sorted and has no duplicates.
///
/// Derivations are numbered as they are first met (each path is held once), the jobs' own
/// first, so that "is a job's" is a comparison; a derivation's inputs are dropped once the
/// job derivations first reached below it are known. At 50,000 jobs this walk is the peak of
/// an evaluation's memory in the daemon.
///
/// # Errors
/// Returns the first error of `load`.
pub fn job_deps<E>(
    jobs: &[(&AttrPath, &StorePath)],
    mut load: impl FnMut(&StorePath) -> Result<Vec<StorePath>, E>,
) -> Result<Vec<Vec<AttrPath>>, E> {
    let mut walker = Walker::default();
    // The jobs of each job derivation (aliases share one), by the derivation's number.
    let mut jobs_of: Vec<Vec<usize>> = Vec::new();
    let mut starts = Vec::with_capacity(jobs.len());
    for (i, (_, drv)) in jobs.iter().enumerate() {
        let id = walker.intern((*drv).clone());
        if id == jobs_of.len() {
            jobs_of.push(Vec::new());
        }
        jobs_of[id].push(i);
        starts.push(id);
    }
    walker.job_drvs = jobs_of.len();
    let mut result = Vec::with_capacity(jobs.len());
    for start in starts {
        let reached = walker.reach_from(start, &mut load)?;
        let mut deps: Vec<&AttrPath> = reached
            .iter()
            .filter(|&&d| d as usize != start)
            .flat_map(|&d| &jobs_of[d as usize])
            .map(|&j| jobs[j].0)
            .collect();
        deps.sort_unstable();
        deps.dedup();
        result.push(deps.into_iter().cloned().collect());
    }
    Ok(result)
}

#[derive(Default)]
struct Walker {
    /// Every derivation met, numbered in the order met; `0..job_drvs` are the jobs'.
    paths: IndexSet<StorePath>,
    job_drvs: usize,
    /// Input derivations of each derivation loaded and not yet expanded.
    inputs: Vec<Option<Box<[u32]>>>,
    /// For each derivation expanded: the job derivations first reached below it, sorted.
    reach: Vec<Option<Box<[u32]>>>,
}

impl Walker {
    fn intern(&mut self, path: StorePath) -> usize {
        let (id, _) = self.paths.insert_full(path);
        if id == self.inputs.len() {
            self.inputs.push(None);
            self.reach.push(None);
        }
        id
    }

    fn is_job(&self, id: u32) -> bool {
        (id as usize) < self.job_drvs
    }

    /// Returns the job derivations first reached from `start`'s inputs (memoised, iterative so
    /// that deep chains cannot overflow the stack).
    fn reach_from<E>(
        &mut self,
        start: usize,
        load: &mut impl FnMut(&StorePath) -> Result<Vec<StorePath>, E>,
    ) -> Result<Box<[u32]>, E> {
        let mut stack = vec![(start, false)];
        while let Some((drv, expanded)) = stack.pop() {
            if self.reach[drv].is_some() {
                continue;
            }
            if self.inputs[drv].is_none() {
                let loaded = match self.paths.get_index(drv) {
                    Some(path) => load(path)?,
                    None => Vec::new(),
                };
                let ids: Box<[u32]> = loaded
                    .into_iter()
                    .map(|p| u32::try_from(self.intern(p)).unwrap_or(u32::MAX))
                    .collect();
                self.inputs[drv] = Some(ids);
            }
            if expanded {
                let inputs = self.inputs[drv].take().unwrap_or_default();
                let mut reached = Vec::new();
                for &input in &inputs {
                    if self.is_job(input) {
                        reached.push(input);
                    } else if let Some(below) = &self.reach[input as usize] {
                        reached.extend_from_slice(below);
                    }
                }
                reached.sort_unstable();
                reached.dedup();
                self.reach[drv] = Some(reached.into_boxed_slice());
            } else {
                stack.push((drv, true));
                if let Some(inputs) = &self.inputs[drv] {
                    stack.extend(
                        inputs
                            .iter()
                            .filter(|&&i| !self.is_job(i) && self.reach[i as usize].is_none())
                            .map(|&i| (i as usize, false)),
                    );
                }
            }
        }
        Ok(self.reach[start].clone().unwrap_or_default())
    }
}

/// Reads and parses the derivation `path`, whose file is `file` (below a chroot store's
/// directory, or the path itself).
pub(crate) fn read_derivation(path: &StorePath, file: &Path) -> Result<Derivation> {
    let text = std::fs::read(file).map_err(|source| Error::DrvRead {
        path: path.to_string(),
        source,
    })?;
    parse_derivation(&text).map_err(|source| Error::DrvParse {
        path: path.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    fn drv(n: &str) -> StorePath {
        StorePath::new(format!("/nix/store/{:0>32}-{n}.drv", n.len())).unwrap()
    }

    fn attr(a: &str) -> AttrPath {
        AttrPath::new(a).unwrap()
    }

    /// An in-memory store: derivation → its input derivations.
    fn store(edges: &[(&str, &[&str])]) -> HashMap<StorePath, Vec<StorePath>> {
        edges
            .iter()
            .map(|(d, inputs)| (drv(d), inputs.iter().map(|i| drv(i)).collect()))
            .collect()
    }

    fn deps_of(
        edges: &[(&str, &[&str])],
        jobs: &[(&str, &str)],
    ) -> (Vec<Vec<String>>, Vec<StorePath>) {
        let store = store(edges);
        let jobs: Vec<_> = jobs.iter().map(|(a, d)| (attr(a), drv(d))).collect();
        let jobs: Vec<_> = jobs.iter().map(|(a, d)| (a, d)).collect();
        let mut loaded = Vec::new();
        let deps = job_deps(&jobs, |p| {
            loaded.push(p.clone());
            store.get(p).cloned().ok_or("missing")
        })
        .unwrap();
        let deps = deps
            .into_iter()
            .map(|d| d.into_iter().map(AttrPath::into_string).collect())
            .collect();
        (deps, loaded)
    }

    #[test]
    fn job_deps_should_stop_at_the_first_job_reached() {
        let (deps, _) = deps_of(
            &[("a", &[]), ("b", &["a"]), ("c", &["b"])],
            &[("p.a", "a"), ("p.b", "b"), ("p.c", "c")],
        );
        assert_eq!(deps, [vec![], vec!["p.a"], vec!["p.b"]]);
    }

    #[test]
    fn job_deps_should_walk_through_derivations_that_are_not_jobs() {
        // c → lib → a, and c → b → a; lib is not a job.
        let (deps, loaded) = deps_of(
            &[
                ("a", &[]),
                ("lib", &["a", "src"]),
                ("src", &[]),
                ("c", &["lib"]),
            ],
            &[("p.a", "a"), ("p.c", "c")],
        );
        assert_eq!(deps, [vec![], vec!["p.a"]]);
        // Every derivation is read once.
        assert_eq!(loaded.len(), 4);
    }

    #[test]
    fn job_deps_should_list_every_alias_of_a_shared_derivation_but_never_the_job_itself() {
        let (deps, _) = deps_of(
            &[("b", &[]), ("c", &["b"]), ("top", &["c"])],
            &[
                ("p.b", "b"),
                ("p.c", "c"),
                ("p.default", "c"),
                ("nixos.top", "top"),
            ],
        );
        assert_eq!(
            deps,
            [vec![], vec!["p.b"], vec!["p.b"], vec!["p.c", "p.default"]]
        );
    }

    #[test]
    fn job_deps_should_memoise_shared_subgraphs() {
        // A diamond below two jobs: the shared part is read once.
        let (deps, loaded) = deps_of(
            &[
                ("x", &["m1", "m2"]),
                ("y", &["m1"]),
                ("m1", &["leaf"]),
                ("m2", &["leaf"]),
                ("leaf", &[]),
            ],
            &[("j.x", "x"), ("j.y", "y"), ("j.leaf", "leaf")],
        );
        assert_eq!(deps, [vec!["j.leaf"], vec!["j.leaf"], vec![]]);
        let unique: HashSet<_> = loaded.iter().collect();
        assert_eq!(unique.len(), loaded.len());
    }

    #[test]
    fn job_deps_should_survive_long_chains() {
        let names: Vec<String> = (0..20_000).map(|i| format!("d{i}")).collect();
        let store: HashMap<StorePath, Vec<StorePath>> = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                (
                    drv(n),
                    names.get(i + 1).map(|next| drv(next)).into_iter().collect(),
                )
            })
            .collect();
        let (top, bottom) = (attr("top"), attr("bottom"));
        let (first, last) = (drv("d0"), drv(&names[names.len() - 1]));
        let jobs = [(&top, &first), (&bottom, &last)];
        let deps = job_deps(&jobs, |p| store.get(p).cloned().ok_or("missing")).unwrap();
        assert_eq!(deps, [vec![attr("bottom")], vec![]]);
    }

    #[test]
    fn job_deps_should_return_the_loader_error() {
        let (a, d) = (attr("p.a"), drv("a"));
        assert_eq!(job_deps(&[(&a, &d)], |_| Err("boom")), Err("boom"));
    }
}
