//! Job-level dependencies from derivation files.
//!
//! A job depends on the jobs whose derivation is reached *first* when walking its `inputDrvs`
//! transitively: the walk stops at a derivation that belongs to a job (gating is transitive
//! anyway), so with `c → b → a` all jobs, `c` depends on `b` only. Jobs that share a derivation
//! (`default = c`) are one node: reaching it yields all of them, and a job never depends on
//! itself or on its aliases.

use std::collections::{BTreeSet, HashMap, HashSet};

use reconix_spec::names::{AttrPath, StorePath};

use std::path::Path;

use crate::parse::aterm::{Derivation, parse_derivation};
use crate::{Error, Result};

/// Computes the dependencies of each job: `jobs` are (attribute, derivation) pairs; `load`
/// returns the input derivations of a derivation (the jobs' own and every non-job derivation
/// the walk passes through, each asked at most once). The result is parallel to `jobs`; each list is sorted and has no duplicates.
///
/// # Errors
/// Returns the first error of `load`.
pub fn job_deps<E>(
    jobs: &[(AttrPath, StorePath)],
    mut load: impl FnMut(&StorePath) -> Result<Vec<StorePath>, E>,
) -> Result<Vec<Vec<AttrPath>>, E> {
    let mut by_drv: HashMap<&StorePath, BTreeSet<&AttrPath>> = HashMap::new();
    for (attr, drv) in jobs {
        by_drv.entry(drv).or_default().insert(attr);
    }
    let mut walker = Walker {
        job_drvs: by_drv.keys().copied().collect(),
        inputs: HashMap::new(),
        reach: HashMap::new(),
    };
    let mut result = Vec::with_capacity(jobs.len());
    for (_, drv) in jobs {
        let reached = walker.reach_from(drv, &mut load)?;
        let deps: BTreeSet<AttrPath> = reached
            .iter()
            .filter(|d| *d != drv)
            .flat_map(|d| by_drv.get(d).into_iter().flatten())
            .map(|a| (*a).clone())
            .collect();
        result.push(deps.into_iter().collect());
    }
    Ok(result)
}

struct Walker<'a> {
    job_drvs: HashSet<&'a StorePath>,
    /// Input derivations of every derivation loaded so far.
    inputs: HashMap<StorePath, Vec<StorePath>>,
    /// For each derivation walked: the job derivations first reached below it, sorted (a
    /// vector: most hold one or two, and a set's node would cost hundreds of bytes each).
    reach: HashMap<StorePath, Vec<StorePath>>,
}

impl Walker<'_> {
    /// Returns the job derivations first reached from `start`'s inputs (memoised, iterative so
    /// that deep chains cannot overflow the stack).
    fn reach_from<E>(
        &mut self,
        start: &StorePath,
        load: &mut impl FnMut(&StorePath) -> Result<Vec<StorePath>, E>,
    ) -> Result<Vec<StorePath>, E> {
        let mut stack = vec![(start.clone(), false)];
        while let Some((drv, expanded)) = stack.pop() {
            if self.reach.contains_key(&drv) {
                continue;
            }
            if !self.inputs.contains_key(&drv) {
                let inputs = load(&drv)?;
                self.inputs.insert(drv.clone(), inputs);
            }
            let inputs = self.inputs.get(&drv).map(Vec::as_slice).unwrap_or_default();
            if expanded {
                let mut reached = Vec::new();
                for input in inputs {
                    if self.job_drvs.contains(input) {
                        reached.push(input.clone());
                    } else if let Some(below) = self.reach.get(input) {
                        reached.extend(below.iter().cloned());
                    }
                }
                reached.sort_unstable();
                reached.dedup();
                reached.shrink_to_fit();
                self.reach.insert(drv, reached);
            } else {
                let pending: Vec<StorePath> = inputs
                    .iter()
                    .filter(|i| !self.job_drvs.contains(i) && !self.reach.contains_key(*i))
                    .cloned()
                    .collect();
                stack.push((drv, true));
                stack.extend(pending.into_iter().map(|i| (i, false)));
            }
        }
        Ok(self.reach.get(start).cloned().unwrap_or_default())
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
        let jobs = [
            (attr("top"), drv("d0")),
            (attr("bottom"), drv(&names[names.len() - 1])),
        ];
        let deps = job_deps(&jobs, |p| store.get(p).cloned().ok_or("missing")).unwrap();
        assert_eq!(deps, [vec![attr("bottom")], vec![]]);
    }

    #[test]
    fn job_deps_should_return_the_loader_error() {
        let jobs = [(attr("p.a"), drv("a"))];
        assert_eq!(job_deps(&jobs, |_| Err("boom")), Err("boom"));
    }
}
