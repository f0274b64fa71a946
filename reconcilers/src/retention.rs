//! The `retention` loop: only the evaluations the spec's `retention` keeps hold GC roots, logs
//! and rows.
//!
//! One key (`all`): `max-size` is about every rooted closure together. Observed: every
//! evaluation (repository, ref, age, state, rooted outputs), the refs that are watched (a spec
//! branch of a repository still in the spec, or an open pull request), and for `max-size` the
//! closure of every rooted output with its NAR sizes. Steps: purge an evaluation subtree (its
//! rows, the builds no other evaluation uses and their logs, its GC-root directory); then, when
//! `retention.collect-garbage` is set, `nix-store --gc`. Separately, the logs of builds that
//! finished longer ago than `retention.logs` are deleted (the build stays, without a log).
//!
//! Never purged: the `keep-last` newest evaluations of each ref, the latest successful
//! evaluation of every watched ref, and evaluations still running. Purged: older than
//! `max-age`; then, while the rooted closures together exceed `max-size`, the oldest remaining.
//! This loop deletes, so it fails closed: an observation that is incomplete (Nix could not
//! measure the closures) plans no purge at all.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use reconix_nixcli::{Nix, PathSize, closure_size};
use reconix_spec::{RepoKey, Spec, StorePath, Timestamp};
use reconix_status::{EvaluationId, RetentionEval};
use serde::Serialize;
use tracing::{info, warn};

use crate::context::{Ctx, Ports};
use crate::gcroots::repo_root_dir;
use crate::runtime::{Action, Plan, Reconciler};
use crate::{Error, Result};

/// The loop's only key.
pub const KEY: &str = "all";
/// How often retention looks again when nothing wakes it.
pub const RECHECK: Duration = Duration::from_secs(10 * 60);

/// The `retention` reconciler.
#[derive(Debug, Default)]
pub struct Retention<P>(std::marker::PhantomData<fn() -> P>);

impl<P> Retention<P> {
    /// Creates the reconciler.
    pub fn new() -> Self {
        Self(std::marker::PhantomData)
    }
}

/// What `observe` saw.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    /// Every evaluation, oldest first.
    pub evaluations: Vec<RetentionEval>,
    /// The watched refs: `(repository, ref)`.
    pub watched: BTreeSet<(RepoKey, String)>,
    /// The closure of every rooted output (only read when `max-size` is set).
    pub closure: BTreeMap<StorePath, PathSize>,
    /// Why the observation is incomplete, when it is: then nothing is purged.
    pub incomplete: Option<String>,
    /// Builds whose log is older than `retention.logs`: drv and log file.
    pub expired_logs: Vec<(StorePath, std::path::PathBuf)>,
    /// When the oldest log that is not expired yet finished.
    pub next_log: Option<Timestamp>,
}

/// One step of the `retention` loop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
    /// Deletes an evaluation subtree.
    Purge {
        /// The evaluation.
        evaluation: EvaluationId,
        /// Its repository.
        repo: RepoKey,
        /// Why.
        reason: String,
    },
    /// Deletes a build log older than `retention.logs`.
    DeleteLog {
        /// The build's derivation.
        drv: StorePath,
        /// The log file.
        path: std::path::PathBuf,
    },
    /// Runs `nix-store --gc`.
    CollectGarbage,
}

/// Plans the `retention` loop (pure).
pub fn plan(desired: &Spec, observed: &Observed, now: Timestamp) -> Plan<Step> {
    let then = Action::requeue(RECHECK);
    if let Some(reason) = &observed.incomplete {
        warn!(%reason, "retention: incomplete observation, nothing purged");
        return Plan {
            steps: Vec::new(),
            then,
        };
    }
    let r = &desired.retention;
    let evals = &observed.evaluations;
    let protected = protected(evals, &observed.watched, r.keep_last);
    let max_age_ms = i64::try_from(r.max_age.to_std().as_millis()).unwrap_or(i64::MAX);
    let mut purged: BTreeMap<EvaluationId, String> = BTreeMap::new();
    for e in evals {
        if !protected.contains(&e.id) && now.0.saturating_sub(e.created_at.0) > max_age_ms {
            purged.insert(e.id, format!("older than max-age {}", r.max_age));
        }
    }
    if let Some(max) = r.max_size {
        let limit = max.0;
        let size = |purged: &BTreeMap<EvaluationId, String>| {
            let roots: Vec<StorePath> = evals
                .iter()
                .filter(|e| !purged.contains_key(&e.id))
                .flat_map(|e| e.outputs.iter().cloned())
                .collect();
            closure_size(&observed.closure, &roots)
        };
        let mut current = size(&purged);
        // Oldest first: `evaluations` is ordered by creation.
        for e in evals {
            if current <= limit {
                break;
            }
            if protected.contains(&e.id) || purged.contains_key(&e.id) {
                continue;
            }
            purged.insert(e.id, format!("rooted closures exceed max-size {max}"));
            current = size(&purged);
        }
    }
    // Look again when the next evaluation ages out or the next log expires.
    let ms = |t: i64| Duration::from_millis(u64::try_from(t.max(0)).unwrap_or(0));
    let logs_ms = i64::try_from(r.logs.to_std().as_millis()).unwrap_or(i64::MAX);
    let next_age_out = evals
        .iter()
        .filter(|e| !protected.contains(&e.id) && !purged.contains_key(&e.id))
        .map(|e| e.created_at.0.saturating_add(max_age_ms))
        .min();
    let next_log = observed.next_log.map(|t| t.0.saturating_add(logs_ms));
    let then = [next_age_out, next_log]
        .into_iter()
        .flatten()
        // A millisecond past the deadline, so it has passed when the loop looks again.
        .map(|at| ms(at.saturating_sub(now.0).saturating_add(1)))
        .chain([RECHECK])
        .min()
        .map_or(then, Action::requeue);
    let mut steps: Vec<Step> = evals
        .iter()
        .filter_map(|e| {
            purged.get(&e.id).map(|reason| Step::Purge {
                evaluation: e.id,
                repo: e.repo.clone(),
                reason: reason.clone(),
            })
        })
        .collect();
    if r.collect_garbage && !steps.is_empty() {
        steps.push(Step::CollectGarbage);
    }
    steps.extend(
        observed
            .expired_logs
            .iter()
            .map(|(drv, path)| Step::DeleteLog {
                drv: drv.clone(),
                path: path.clone(),
            }),
    );
    Plan { steps, then }
}

/// Returns the evaluations retention never purges: still running, among the `keep_last`
/// newest of their ref, or the latest successful one of a watched ref.
fn protected(
    evals: &[RetentionEval],
    watched: &BTreeSet<(RepoKey, String)>,
    keep_last: u32,
) -> BTreeSet<EvaluationId> {
    let mut by_ref: HashMap<(&RepoKey, &str), Vec<&RetentionEval>> = HashMap::new();
    for e in evals {
        by_ref
            .entry((&e.repo, e.git_ref.as_str()))
            .or_default()
            .push(e);
    }
    let mut keep = BTreeSet::new();
    for ((repo, git_ref), list) in by_ref {
        // `evals` is oldest first, so each list is too.
        let n = usize::try_from(keep_last).unwrap_or(usize::MAX);
        keep.extend(list.iter().rev().take(n).map(|e| e.id));
        if watched.contains(&(repo.clone(), git_ref.to_owned()))
            && let Some(latest) = list.iter().rev().find(|e| e.is_successful())
        {
            keep.insert(latest.id);
        }
        keep.extend(list.iter().filter(|e| !e.state.is_terminal()).map(|e| e.id));
    }
    keep
}

impl<P: Ports> Reconciler for Retention<P> {
    const NAME: &'static str = "retention";
    type Spec = Spec;
    type Context = Ctx<P>;
    type Key = String;
    type Observed = Observed;
    type Step = Step;
    type Error = Error;

    async fn keys(&self, _spec: &Spec, _cx: &Ctx<P>) -> Result<Vec<String>> {
        Ok(vec![KEY.to_owned()])
    }

    async fn observe(&self, _key: &String, spec: &Spec, cx: &Ctx<P>) -> Result<Observed> {
        let logs_before = Timestamp::now().0.saturating_sub(
            i64::try_from(spec.retention.logs.to_std().as_millis()).unwrap_or(i64::MAX),
        );
        let (evaluations, open_prs, expired_logs, next_log) = cx
            .status
            .call(move |db| {
                Ok((
                    db.retention_evaluations()?,
                    db.all_open_pull_requests()?,
                    db.expired_logs(Timestamp(logs_before))?,
                    db.oldest_log_since(Timestamp(logs_before))?,
                ))
            })
            .await?;
        let mut watched = BTreeSet::new();
        for e in &evaluations {
            let Some(repo) = spec
                .forges
                .get(&e.repo.forge)
                .and_then(|f| f.repos.get(&e.repo.repo))
            else {
                continue;
            };
            if let Some(branch) = e.git_ref.strip_prefix("refs/heads/")
                && (repo.follows_default_branch() || repo.matches_branch(branch))
            {
                watched.insert((e.repo.clone(), e.git_ref.clone()));
            }
        }
        for (repo, number) in open_prs {
            if let Some(forge) = spec.forges.get(&repo.forge) {
                let git_ref = reconix_forge::pull_request_ref(forge.kind, number);
                watched.insert((repo, git_ref));
            }
        }
        let mut observed = Observed {
            evaluations,
            watched,
            expired_logs,
            next_log,
            ..Observed::default()
        };
        if spec.retention.max_size.is_some() {
            let roots: Vec<StorePath> = observed
                .evaluations
                .iter()
                .flat_map(|e| e.outputs.iter().cloned())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            if !roots.is_empty() {
                match cx.ports.nix().closure(&roots).await {
                    Ok(closure) => observed.closure = closure,
                    Err(err) => {
                        observed.incomplete = Some(format!("cannot measure closures: {err}"));
                    }
                }
            }
        }
        Ok(observed)
    }

    fn plan(_key: &String, desired: &Spec, observed: &Observed, now: Timestamp) -> Plan<Step> {
        plan(desired, observed, now)
    }

    async fn apply(&self, _key: &String, step: Step, cx: &Ctx<P>) -> Result<()> {
        match step {
            Step::Purge {
                evaluation,
                repo,
                reason,
            } => {
                info!(evaluation = %evaluation, repo = %repo, %reason, "purging evaluation");
                // Rows and roots go together, under the lock `gcroots` adds roots under.
                let roots = cx.roots.lock().await;
                let logs = cx
                    .status
                    .call(move |db| db.purge_evaluation(evaluation))
                    .await?;
                let dir = repo_root_dir(&cx.state_dir(), &repo).join(evaluation.to_string());
                let removed = tokio::fs::remove_dir_all(&dir).await;
                drop(roots);
                match removed {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(Error::Io {
                            context: format!("removing GC roots {}", dir.display()),
                            source,
                        });
                    }
                }
                for log in logs {
                    if let Err(e) = tokio::fs::remove_file(&log).await
                        && e.kind() != std::io::ErrorKind::NotFound
                    {
                        warn!(log = %log.display(), error = %e, "could not delete a purged build's log");
                    }
                }
                cx.wakers.gcroots();
                Ok(())
            }
            Step::DeleteLog { drv, path } => {
                match tokio::fs::remove_file(&path).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(Error::Io {
                            context: format!("deleting the log {}", path.display()),
                            source,
                        });
                    }
                }
                cx.status.call(move |db| db.forget_build_log(&drv)).await?;
                Ok(())
            }
            Step::CollectGarbage => {
                info!("collecting garbage after a purge");
                cx.ports.nix().collect_garbage().await?;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use reconix_status::EvaluationState;

    use super::*;

    fn path(n: u64) -> StorePath {
        StorePath::new(format!("/nix/store/{n:0>32}-p{n}")).unwrap()
    }

    fn repo() -> RepoKey {
        RepoKey::parse("here/demo").unwrap()
    }

    const DAY: i64 = 24 * 3600 * 1000;

    /// Evaluation `id` of `git_ref`, created `days_ago`, finished and green, rooting `outputs`.
    fn eval(id: i64, git_ref: &str, days_ago: i64, outputs: &[u64]) -> RetentionEval {
        RetentionEval {
            id: EvaluationId(id),
            repo: repo(),
            git_ref: git_ref.to_owned(),
            created_at: Timestamp(100 * DAY - days_ago * DAY),
            state: EvaluationState::Finished,
            jobs: 1,
            succeeded: 1,
            outputs: outputs.iter().map(|n| path(*n)).collect(),
        }
    }

    fn spec(retention: &str) -> Spec {
        let text = format!(
            "forges:\n  here:\n    kind: local\n    repos:\n      demo: {{path: /src/demo, branches: [main]}}\nretention:\n{retention}"
        );
        reconix_spec::parse(&text, std::path::Path::new("/etc/reconix/spec.yaml")).unwrap()
    }

    fn purged(plan: &Plan<Step>) -> Vec<i64> {
        plan.steps
            .iter()
            .filter_map(|s| match s {
                Step::Purge { evaluation, .. } => Some(evaluation.0),
                Step::CollectGarbage | Step::DeleteLog { .. } => None,
            })
            .collect()
    }

    fn main_watched() -> BTreeSet<(RepoKey, String)> {
        BTreeSet::from([(repo(), "refs/heads/main".to_owned())])
    }

    const NOW: Timestamp = Timestamp(100 * DAY);

    #[test]
    fn plan_should_purge_by_age_beyond_keep_last_per_ref() {
        let observed = Observed {
            evaluations: vec![
                eval(1, "refs/heads/main", 40, &[1]),
                eval(2, "refs/heads/main", 35, &[2]),
                eval(3, "refs/heads/old", 50, &[3]),
                eval(4, "refs/heads/main", 31, &[4]),
                eval(5, "refs/heads/main", 1, &[5]),
            ],
            watched: main_watched(),
            ..Observed::default()
        };
        let plan = plan(
            &spec("  max-age: 30 days\n  keep-last: 2\n"),
            &observed,
            NOW,
        );
        // 4 and 5 are main's newest two; 3 is the only (so newest) of its ref.
        assert_eq!(purged(&plan), [1, 2]);
        assert!(matches!(&plan.steps[0], Step::Purge { reason, .. } if reason.contains("max-age")));
        assert_eq!(plan.then, Action::requeue(RECHECK));
        let none = super::plan(
            &spec("  max-age: 60 days\n  keep-last: 1\n"),
            &observed,
            NOW,
        );
        assert!(none.steps.is_empty());
    }

    #[test]
    fn plan_should_keep_the_latest_successful_evaluation_of_a_watched_ref() {
        let mut failing = eval(3, "refs/heads/main", 33, &[]);
        failing.succeeded = 0;
        let mut running = eval(4, "refs/heads/main", 32, &[]);
        running.state = EvaluationState::Building;
        let pr = "refs/pull/7/head";
        let observed = Observed {
            evaluations: vec![
                eval(1, "refs/heads/main", 40, &[1]),
                eval(2, "refs/heads/main", 35, &[2]),
                failing,
                running,
                eval(5, pr, 40, &[5]),
                eval(6, "refs/pull/8/head", 40, &[6]),
            ],
            watched: BTreeSet::from([
                (repo(), "refs/heads/main".to_owned()),
                (repo(), pr.to_owned()),
            ]),
            ..Observed::default()
        };
        let plan = plan(
            &spec("  max-age: 30 days\n  keep-last: 0\n"),
            &observed,
            NOW,
        );
        // 2: main's latest green one; 4: still running; 5: the open PR's latest green one.
        // 6 belongs to a closed PR: purged like the rest.
        assert_eq!(purged(&plan), [1, 3, 6]);
    }

    #[test]
    fn plan_should_purge_oldest_first_until_the_shared_closures_fit_max_size() {
        // 1 and 2 share `lib` (1000 bytes): purging 1 alone frees only its own 100.
        let lib = PathSize {
            nar_size: 1000,
            references: vec![],
        };
        let own = |n: u64| {
            (
                path(n),
                PathSize {
                    nar_size: 100,
                    references: vec![path(99)],
                },
            )
        };
        let closure: BTreeMap<StorePath, PathSize> = [(path(99), lib), own(1), own(2), own(3)]
            .into_iter()
            .collect();
        let observed = Observed {
            evaluations: vec![
                eval(1, "refs/heads/main", 3, &[1]),
                eval(2, "refs/heads/main", 2, &[2]),
                eval(3, "refs/heads/main", 1, &[3]),
            ],
            watched: main_watched(),
            closure,
            incomplete: None,
            expired_logs: Vec::new(),
            next_log: None,
        };
        // Everything: 1300 bytes. Under 1250 needs one purge; under 1150 two; 3 is kept.
        let size = |limit: &str| {
            purged(&plan(
                &spec(&format!(
                    "  max-age: 30 days\n  keep-last: 1\n  max-size: {limit}\n"
                )),
                &observed,
                NOW,
            ))
        };
        assert_eq!(size("1300 B"), Vec::<i64>::new());
        assert_eq!(size("1250 B"), [1]);
        assert_eq!(size("1150 B"), [1, 2]);
        assert_eq!(
            size("10 B"),
            [1, 2],
            "the newest evaluation stays whatever its size"
        );
    }

    #[test]
    fn plan_should_purge_nothing_from_an_incomplete_observation() {
        let observed = Observed {
            evaluations: vec![eval(1, "refs/heads/x", 400, &[1])],
            incomplete: Some("cannot measure closures".to_owned()),
            ..Observed::default()
        };
        assert!(
            plan(&spec("  keep-last: 0\n"), &observed, NOW)
                .steps
                .is_empty()
        );
    }

    #[test]
    fn plan_should_delete_expired_logs_even_when_nothing_is_purged() {
        let observed = Observed {
            expired_logs: vec![(path(7), std::path::PathBuf::from("/logs/x.log"))],
            ..Observed::default()
        };
        let plan = plan(
            &spec(
                "  logs: 1 day
",
            ),
            &observed,
            NOW,
        );
        assert_eq!(
            plan.steps,
            [Step::DeleteLog {
                drv: path(7),
                path: std::path::PathBuf::from("/logs/x.log")
            }]
        );
    }

    #[test]
    fn plan_should_collect_garbage_after_purging_when_asked() {
        let observed = Observed {
            evaluations: vec![
                eval(1, "refs/heads/x", 400, &[1]),
                eval(2, "refs/heads/x", 1, &[2]),
            ],
            ..Observed::default()
        };
        let with = plan(
            &spec("  keep-last: 1\n  collect-garbage: true\n"),
            &observed,
            NOW,
        );
        assert_eq!(with.steps.last(), Some(&Step::CollectGarbage));
        assert_eq!(purged(&with), [1]);
        let without = plan(&spec("  keep-last: 1\n"), &observed, NOW);
        assert!(!without.steps.contains(&Step::CollectGarbage));
        let nothing = plan(
            &spec("  keep-last: 5\n  collect-garbage: true\n"),
            &observed,
            NOW,
        );
        assert!(nothing.steps.is_empty());
    }
}
