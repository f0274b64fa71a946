//! The `gcroots` loop: exactly the succeeded jobs of retained evaluations are GC roots.
//!
//! Key: a repository. Desired: one link per output of every succeeded job,
//! `<state-dir>/gcroots/<forge>/<repo>/<eval>/<attr>` (`<attr>-<output>` for outputs other than
//! `out`), registered with Nix as an indirect root. Observed: the links on disk. Steps: add a
//! missing or wrong link, remove a link nothing wants.
//!
//! This loop deletes, so it fails closed: when the walk of the links directory is incomplete
//! (any read error), it plans additions only. Deleting a root because a directory could not be
//! read would let `nix-store --gc` delete outputs that are still wanted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use reconix_nixcli::Nix;
use reconix_spec::{RepoKey, Spec, StorePath, Timestamp};
use reconix_status::{EvaluationId, JobId};
use serde::Serialize;
use tracing::{debug, warn};

use crate::context::{Ctx, Ports};
use crate::runtime::{Action, Plan, Reconciler};
use crate::{Error, Result};

/// The `gcroots` reconciler.
#[derive(Debug, Default)]
pub struct GcRoots<P>(std::marker::PhantomData<fn() -> P>);

impl<P> GcRoots<P> {
    /// Creates the reconciler.
    pub fn new() -> Self {
        Self(std::marker::PhantomData)
    }
}

/// Returns the directory holding a repository's roots: `<state>/gcroots/<forge>/<repo>`.
///
/// A `/` in the repo name is written `%2F`, so a repo `a/b` and a GitLab subgroup project
/// `a/b/c` never share a directory (this loop deletes whatever it finds under its own).
pub fn repo_root_dir(state_dir: &Path, repo: &RepoKey) -> PathBuf {
    state_dir
        .join("gcroots")
        .join(repo.forge.as_str())
        .join(repo.repo.as_str().replace('/', "%2F"))
}

/// Returns the root link of one output of one job: `<repo dir>/<eval>/<attr>` (with `%` and
/// `/` in the job name percent-encoded, so it is one file name) named for the output by
/// [`reconix_nixcli::output_link`], the one place these names are formed.
pub fn root_link(
    state_dir: &Path,
    repo: &RepoKey,
    evaluation: EvaluationId,
    attr: &str,
    output: &str,
) -> PathBuf {
    // A job name may hold `/` (`hydraJobs."foo/bar"`): as a path it would make directories, or
    // with `..` climb out of the evaluation's. `%` is encoded first so no two names share a link.
    let file = attr.replace('%', "%25").replace('/', "%2F");
    let root = repo_root_dir(state_dir, repo)
        .join(evaluation.to_string())
        .join(file);
    reconix_nixcli::output_link(&root, output)
}

/// A succeeded job's outputs, as the loop needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootedJob {
    /// The job.
    pub job: JobId,
    /// Its evaluation.
    pub evaluation: EvaluationId,
    /// Its attribute path.
    pub attr: String,
    /// Output name → store path.
    pub outputs: reconix_spec::Outputs,
}

/// What `observe` saw for one repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Succeeded jobs of the repository's retained evaluations.
    pub jobs: Vec<RootedJob>,
    /// Links found on disk and their targets.
    pub links: BTreeMap<PathBuf, PathBuf>,
    /// The repository's evaluations that are not finished: their builds root outputs before
    /// their jobs are recorded as succeeded, so their links are left alone until they finish.
    pub unfinished: BTreeSet<EvaluationId>,
    /// False when some part of the links directory could not be read.
    pub complete: bool,
}

/// One step of the `gcroots` loop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
    /// Creates (or repoints) an indirect root.
    AddRoot {
        /// The job it belongs to.
        job: JobId,
        /// The link.
        link: PathBuf,
        /// The output it keeps alive.
        path: StorePath,
        /// The output's name.
        output: String,
    },
    /// Deletes a root nothing wants any more.
    RemoveRoot {
        /// The link.
        link: PathBuf,
    },
}

/// Plans the `gcroots` loop for one repository (pure).
pub fn plan(key: &RepoKey, desired: &Spec, observed: &Observed, now: Timestamp) -> Plan<Step> {
    let _ = now;
    let mut want: BTreeMap<PathBuf, (JobId, &StorePath, &str)> = BTreeMap::new();
    for job in &observed.jobs {
        for (output, path) in &job.outputs {
            let link = root_link(&desired.state_dir, key, job.evaluation, &job.attr, output);
            want.insert(link, (job.job, path, output));
        }
    }
    let mut steps: Vec<Step> = want
        .iter()
        .filter(|(link, (_, path, _))| {
            observed.links.get(*link).map(PathBuf::as_path) != Some(Path::new(path.as_str()))
        })
        .map(|(link, (job, path, output))| Step::AddRoot {
            job: *job,
            link: link.clone(),
            path: (*path).clone(),
            output: (*output).to_owned(),
        })
        .collect();
    if observed.complete {
        steps.extend(
            observed
                .links
                .keys()
                .filter(|l| !want.contains_key(*l))
                .filter(|l| evaluation_of_link(l).is_none_or(|e| !observed.unfinished.contains(&e)))
                .map(|link| Step::RemoveRoot { link: link.clone() }),
        );
    }
    Plan {
        steps,
        then: Action::requeue(Duration::from_secs(300)),
    }
}

/// Returns the evaluation whose directory holds `link` (`<repo dir>/<eval>/<link>`).
fn evaluation_of_link(link: &Path) -> Option<EvaluationId> {
    link.parent()?
        .file_name()?
        .to_str()?
        .parse()
        .ok()
        .map(EvaluationId)
}

/// Collects the symlinks two levels below `dir` (`<eval>/<link>`) and their targets.
///
/// Returns the links and whether the walk was complete. A missing `dir` is complete and empty.
fn walk_links(dir: &Path) -> (BTreeMap<PathBuf, PathBuf>, bool) {
    let mut links = BTreeMap::new();
    let mut complete = true;
    let evals = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (links, true),
        Err(e) => {
            warn!(dir = %dir.display(), error = %e, "cannot read gc roots directory");
            return (links, false);
        }
    };
    for eval in evals {
        let Ok(eval) = eval else {
            complete = false;
            continue;
        };
        let Ok(entries) = std::fs::read_dir(eval.path()) else {
            complete = false;
            continue;
        };
        for entry in entries {
            let Ok(entry) = entry else {
                complete = false;
                continue;
            };
            // A root being written (renamed into place in a moment) is not ours to judge.
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(reconix_nixcli::TEMPORARY_ROOT_PREFIX)
            {
                continue;
            }
            match std::fs::read_link(entry.path()) {
                Ok(target) => {
                    links.insert(entry.path(), target);
                }
                Err(_) => complete = false,
            }
        }
    }
    (links, complete)
}

impl<P: Ports> Reconciler for GcRoots<P> {
    const NAME: &'static str = "gcroots";
    type Spec = Spec;
    type Context = Ctx<P>;
    type Key = RepoKey;
    type Observed = Observed;
    type Step = Step;
    type Error = Error;

    async fn keys(&self, spec: &Spec, cx: &Ctx<P>) -> Result<Vec<RepoKey>> {
        // Repos that left the spec keep their roots until `retention` purges their evaluations.
        let mut keys: Vec<RepoKey> = cx
            .status
            .call(|db| Ok(db.repos()?.into_iter().map(|r| r.key).collect::<Vec<_>>()))
            .await?;
        keys.extend(spec.repos().map(|(k, _, _)| k));
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    async fn observe(&self, key: &RepoKey, spec: &Spec, cx: &Ctx<P>) -> Result<Observed> {
        let k = key.clone();
        let (rows, unfinished) = cx
            .status
            .call(move |db| match db.repo_id(&k)? {
                Some(repo) => Ok((
                    db.succeeded_jobs_for_rooting(repo)?,
                    db.unfinished_evaluations(repo)?,
                )),
                None => Ok((Vec::new(), Vec::new())),
            })
            .await?;
        let dir = repo_root_dir(&spec.state_dir, key);
        let (links, complete) = tokio::task::spawn_blocking(move || walk_links(&dir))
            .await
            .map_err(|e| Error::Io {
                context: "walking gc roots".to_owned(),
                source: std::io::Error::other(e),
            })?;
        Ok(Observed {
            jobs: rows
                .into_iter()
                .map(|(job, evaluation)| RootedJob {
                    job: job.id,
                    evaluation,
                    attr: job.attr.into_string(),
                    outputs: job.outputs,
                })
                .collect(),
            links,
            unfinished: unfinished.into_iter().collect(),
            complete,
        })
    }

    fn plan(key: &RepoKey, desired: &Spec, observed: &Observed, now: Timestamp) -> Plan<Step> {
        plan(key, desired, observed, now)
    }

    async fn apply(&self, _key: &RepoKey, step: Step, cx: &Ctx<P>) -> Result<()> {
        match step {
            Step::AddRoot {
                job,
                link,
                path,
                output,
            } => {
                // The job may have been purged since it was observed: look again under the
                // lock `retention` purges under, so a purged evaluation is never rooted again.
                let _roots = cx.roots.lock().await;
                let keeps = cx.status.call(move |db| db.job_keeps_outputs(job)).await?;
                if !keeps {
                    debug!(link = %link.display(), "not rooting a job that is gone");
                    return Ok(());
                }
                debug!(link = %link.display(), path = %path, "adding gc root");
                cx.ports.nix().add_root(&link, &path).await?;
                cx.status
                    .call(move |db| db.insert_gc_root(job, &link, &output, Timestamp::now()))
                    .await?;
                Ok(())
            }
            Step::RemoveRoot { link } => {
                debug!(link = %link.display(), "removing gc root");
                match tokio::fs::remove_file(&link).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(Error::Io {
                            context: format!("removing {}", link.display()),
                            source,
                        });
                    }
                }
                // The evaluation's directory goes with its last root (it fails, harmlessly,
                // while other roots remain).
                if let Some(dir) = link.parent() {
                    let _ = tokio::fs::remove_dir(dir).await;
                }
                cx.status.call(move |db| db.delete_gc_root(&link)).await?;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        reconix_spec::parse(
            "state-dir: /s\nforges:\n  gl:\n    kind: local\n    repos:\n      group/proj:\n        path: /srv/p\n",
            Path::new("t.yaml"),
        )
        .unwrap()
    }

    fn key() -> RepoKey {
        RepoKey::parse("gl/group/proj").unwrap()
    }

    fn out(n: u32) -> StorePath {
        StorePath::new(format!("/nix/store/{n:0>32}-out{n}")).unwrap()
    }

    fn job(id: i64, outputs: &[(&str, u32)]) -> RootedJob {
        RootedJob {
            job: JobId(id),
            evaluation: EvaluationId(3),
            attr: format!("packages.x86_64-linux.p{id}"),
            outputs: outputs
                .iter()
                .map(|(o, n)| ((*o).to_owned(), out(*n)))
                .collect(),
        }
    }

    fn link(id: i64, suffix: &str) -> PathBuf {
        PathBuf::from(format!(
            "/s/gcroots/gl/group%2Fproj/3/packages.x86_64-linux.p{id}{suffix}"
        ))
    }

    #[test]
    fn root_path_should_encode_the_repo_slash() {
        assert_eq!(
            root_link(
                Path::new("/s"),
                &key(),
                EvaluationId(3),
                "checks.x.y",
                "dev"
            ),
            PathBuf::from("/s/gcroots/gl/group%2Fproj/3/checks.x.y-dev")
        );
    }

    #[test]
    fn root_path_should_keep_a_job_name_with_slashes_in_one_file() {
        let link = root_link(
            Path::new("/s"),
            &key(),
            EvaluationId(3),
            r#"hydraJobs."../../x/%2F".a"#,
            "out",
        );
        assert_eq!(
            link,
            PathBuf::from(r#"/s/gcroots/gl/group%2Fproj/3/hydraJobs."..%2F..%2Fx%2F%252F".a"#)
        );
        assert_eq!(
            link.parent(),
            Some(Path::new("/s/gcroots/gl/group%2Fproj/3"))
        );
    }

    #[test]
    fn succeeded_job_without_link_should_get_one_root_per_output() {
        let o = Observed {
            jobs: vec![job(1, &[("out", 1), ("dev", 2)])],
            links: BTreeMap::new(),
            unfinished: BTreeSet::new(),
            complete: true,
        };
        let p = plan(&key(), &spec(), &o, Timestamp(0));
        assert_eq!(
            p.steps,
            vec![
                Step::AddRoot {
                    job: JobId(1),
                    link: link(1, ""),
                    path: out(1),
                    output: "out".into()
                },
                Step::AddRoot {
                    job: JobId(1),
                    link: link(1, "-dev"),
                    path: out(2),
                    output: "dev".into()
                },
            ]
        );
    }

    #[test]
    fn correct_links_should_need_nothing_and_wrong_targets_should_be_repointed() {
        let mut links = BTreeMap::new();
        links.insert(link(1, ""), PathBuf::from(out(1).as_str()));
        links.insert(link(2, ""), PathBuf::from(out(9).as_str()));
        let o = Observed {
            jobs: vec![job(1, &[("out", 1)]), job(2, &[("out", 2)])],
            links,
            unfinished: BTreeSet::new(),
            complete: true,
        };
        let p = plan(&key(), &spec(), &o, Timestamp(0));
        assert_eq!(
            p.steps,
            vec![Step::AddRoot {
                job: JobId(2),
                link: link(2, ""),
                path: out(2),
                output: "out".into()
            }]
        );
    }

    #[test]
    fn link_nothing_wants_should_be_removed() {
        let mut links = BTreeMap::new();
        links.insert(link(5, ""), PathBuf::from(out(5).as_str()));
        let o = Observed {
            jobs: vec![],
            links,
            unfinished: BTreeSet::new(),
            complete: true,
        };
        let p = plan(&key(), &spec(), &o, Timestamp(0));
        assert_eq!(p.steps, vec![Step::RemoveRoot { link: link(5, "") }]);
    }

    #[test]
    fn links_of_an_unfinished_evaluation_should_be_left_to_its_builds() {
        // A build roots its outputs before its job is recorded as succeeded.
        let mut links = BTreeMap::new();
        links.insert(link(5, ""), PathBuf::from(out(5).as_str()));
        let o = Observed {
            jobs: vec![],
            links,
            unfinished: BTreeSet::from([EvaluationId(3)]),
            complete: true,
        };
        let p = plan(&key(), &spec(), &o, Timestamp(0));
        assert_eq!(p.steps, vec![], "removed once the evaluation finished");
    }

    #[test]
    fn incomplete_observation_should_withhold_removals() {
        let mut links = BTreeMap::new();
        links.insert(link(5, ""), PathBuf::from(out(5).as_str()));
        let o = Observed {
            jobs: vec![job(1, &[("out", 1)])],
            links,
            unfinished: BTreeSet::new(),
            complete: false,
        };
        let p = plan(&key(), &spec(), &o, Timestamp(0));
        assert!(
            p.steps.iter().all(|s| matches!(s, Step::AddRoot { .. })),
            "{p:?}"
        );
        assert_eq!(p.steps.len(), 1);
    }

    #[test]
    fn walk_should_report_links_and_a_missing_dir_as_complete() {
        let tmp = tempfile::tempdir().unwrap();
        let (links, complete) = walk_links(&tmp.path().join("nope"));
        assert!(links.is_empty() && complete);
        std::fs::create_dir_all(tmp.path().join("3")).unwrap();
        std::os::unix::fs::symlink("/nix/store/x", tmp.path().join("3/a")).unwrap();
        // A root being written right now is left out.
        let writing = format!("3/{}42-1", reconix_nixcli::TEMPORARY_ROOT_PREFIX);
        std::os::unix::fs::symlink("/nix/store/y", tmp.path().join(writing)).unwrap();
        let (links, complete) = walk_links(tmp.path());
        assert!(complete);
        assert_eq!(
            links.get(&tmp.path().join("3/a")),
            Some(&PathBuf::from("/nix/store/x"))
        );
        assert_eq!(links.len(), 1, "{links:?}");
    }
}
