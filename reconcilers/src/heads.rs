//! The `heads` loop: the database knows every hosted repository's branch heads, default branch
//! and open pull requests, and whether each pull request's author is trusted.
//!
//! Key: a repository on a hosted forge. Webhooks write heads as they arrive; this loop resyncs
//! them from the forge's API every `poll-interval`, so a lost delivery is caught within one
//! interval, and looks up the permission of pull request authors whose [`Trust`] is unknown
//! (the PR trust gate). Observed: the API's view and the database's. Steps: record what
//! differs.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use reconix_forge::api::PullRequest;
use reconix_forge::{Branch, Forge as _};
use reconix_spec::{RepoKey, Spec, Timestamp};
use reconix_status::{PullRequestRow, PullRequestUpdate};
use serde::Serialize;
use tracing::info;

use crate::context::{Ctx, Ports};
use crate::forge_clients::{Gate, gate, record_api_error};
use crate::runtime::{Action, Plan, Reconciler};
use crate::trust::Trust;
use crate::{Error, Result};

/// The `heads` reconciler.
#[derive(Debug, Default)]
pub struct Heads<P>(std::marker::PhantomData<fn() -> P>);

impl<P> Heads<P> {
    /// Creates the reconciler.
    pub fn new() -> Self {
        Self(std::marker::PhantomData)
    }
}

/// What the forge's API says about a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// The default branch.
    pub default_branch: Option<String>,
    /// Every branch and its head.
    pub branches: Vec<Branch>,
    /// The open pull requests (empty when the repo does not build them).
    pub pull_requests: Vec<PullRequest>,
}

/// What `observe` saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Whether the forge may be called.
    pub gate: Gate,
    /// The API's view; `None` when the forge may not be called or the repo left the spec.
    pub remote: Option<Remote>,
    /// The default branch recorded in the database.
    pub default_branch: Option<String>,
    /// Branch heads recorded in the database (`refs/heads/…` → sha).
    pub heads: BTreeMap<String, String>,
    /// Open pull requests recorded in the database.
    pub pull_requests: Vec<PullRequestRow>,
}

/// One step of the `heads` loop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
    /// Records the default branch.
    SetDefaultBranch {
        /// The branch, `None` for an empty repository.
        branch: Option<String>,
    },
    /// Records a branch head.
    RecordHead {
        /// The full ref.
        git_ref: String,
        /// The commit.
        sha: String,
    },
    /// Forgets a branch that is gone or no longer built.
    RemoveHead {
        /// The full ref.
        git_ref: String,
    },
    /// Records an open pull request.
    UpsertPullRequest {
        /// Its number.
        number: u64,
        /// Its head commit.
        head_sha: String,
        /// Its source branch.
        head_ref: String,
        /// Its target branch.
        base_ref: String,
        /// Its author.
        author: String,
        /// Whether it comes from a fork.
        from_fork: bool,
    },
    /// Marks every recorded open pull request not in `open` closed.
    ClosePullRequests {
        /// The numbers still open.
        open: Vec<u64>,
    },
    /// Looks up whether the author may write, for the PR trust gate.
    CheckTrust {
        /// The pull request.
        number: u64,
        /// The head the answer is for.
        head_sha: String,
        /// The author to look up.
        author: String,
    },
}

/// Returns true when the spec builds branch `name` given the default branch (also the branch
/// filter of the `evaluations` loop).
pub(crate) fn builds_branch(repo: &reconix_spec::Repo, name: &str, default: Option<&str>) -> bool {
    if repo.follows_default_branch() {
        default == Some(name)
    } else {
        repo.matches_branch(name)
    }
}

/// Plans the `heads` loop for one repository (pure).
pub fn plan(key: &RepoKey, desired: &Spec, observed: &Observed, now: Timestamp) -> Plan<Step> {
    let _ = now;
    let Some((forge, repo)) = desired.repo(key) else {
        return Plan {
            steps: Vec::new(),
            then: Action::await_change(),
        };
    };
    let poll = forge.poll_interval.to_std();
    let remote = match (observed.gate, &observed.remote) {
        (Gate::Wait(d), _) => {
            return Plan {
                steps: Vec::new(),
                then: Action::requeue(d),
            };
        }
        // Paused: the `forges` loop probes and wakes every loop when the token works again.
        (Gate::Paused, _) | (Gate::Open, None) => {
            return Plan {
                steps: Vec::new(),
                then: Action::requeue(poll),
            };
        }
        (Gate::Open, Some(remote)) => remote,
    };
    let mut steps = Vec::new();
    if remote.default_branch != observed.default_branch {
        steps.push(Step::SetDefaultBranch {
            branch: remote.default_branch.clone(),
        });
    }
    let default = remote.default_branch.as_deref();
    let wanted: BTreeMap<String, &str> = remote
        .branches
        .iter()
        .filter(|b| builds_branch(repo, &b.name, default))
        .map(|b| (format!("refs/heads/{}", b.name), b.sha.as_str()))
        .collect();
    for (git_ref, sha) in &wanted {
        if observed.heads.get(git_ref).map(String::as_str) != Some(*sha) {
            steps.push(Step::RecordHead {
                git_ref: git_ref.clone(),
                sha: (*sha).to_owned(),
            });
        }
    }
    for git_ref in observed.heads.keys() {
        if git_ref.starts_with("refs/heads/") && !wanted.contains_key(git_ref) {
            steps.push(Step::RemoveHead {
                git_ref: git_ref.clone(),
            });
        }
    }
    if repo.pull_requests {
        let recorded: BTreeMap<u64, &PullRequestRow> = observed
            .pull_requests
            .iter()
            .map(|p| (p.number, p))
            .collect();
        for pr in &remote.pull_requests {
            let row = recorded.get(&pr.number);
            let same = row.is_some_and(|r| {
                r.head_sha == pr.head_sha
                    && r.head_ref == pr.head_ref
                    && r.base_ref == pr.base_ref
                    && r.from_fork == pr.from_fork
                    && r.author.as_deref() == Some(pr.author.as_str())
            });
            if !same {
                steps.push(Step::UpsertPullRequest {
                    number: pr.number,
                    head_sha: pr.head_sha.clone(),
                    head_ref: pr.head_ref.clone(),
                    base_ref: pr.base_ref.clone(),
                    author: pr.author.clone(),
                    from_fork: pr.from_fork,
                });
            }
            // A looked-up permission holds for the recorded head and author only.
            let can_write = row.filter(|_| same).and_then(|r| r.author_can_write);
            if Trust::of(Some(&pr.author), can_write, &repo.allowlist) == Trust::Unknown {
                steps.push(Step::CheckTrust {
                    number: pr.number,
                    head_sha: pr.head_sha.clone(),
                    author: pr.author.clone(),
                });
            }
        }
        let open: BTreeSet<u64> = remote.pull_requests.iter().map(|p| p.number).collect();
        if recorded.keys().any(|n| !open.contains(n)) {
            steps.push(Step::ClosePullRequests {
                open: open.into_iter().collect(),
            });
        }
    } else if !observed.pull_requests.is_empty() {
        steps.push(Step::ClosePullRequests { open: Vec::new() });
    }
    Plan {
        steps,
        then: Action::requeue(poll),
    }
}

impl<P: Ports> Reconciler for Heads<P> {
    const NAME: &'static str = "heads";
    type Spec = Spec;
    type Context = Ctx<P>;
    type Key = RepoKey;
    type Observed = Observed;
    type Step = Step;
    type Error = Error;

    async fn keys(&self, spec: &Spec, _cx: &Ctx<P>) -> Result<Vec<RepoKey>> {
        Ok(spec.hosted_repos().map(|(key, _, _)| key).collect())
    }

    async fn observe(&self, key: &RepoKey, spec: &Spec, cx: &Ctx<P>) -> Result<Observed> {
        let k = key.clone();
        let (default_branch, heads, pull_requests) = cx
            .status
            .call(move |db| match db.repo_id(&k)? {
                Some(repo) => Ok((
                    db.default_branch(repo)?,
                    db.refs(repo)?
                        .into_iter()
                        .map(|r| (r.name, r.rev))
                        .collect(),
                    db.open_pull_requests(repo)?,
                )),
                None => Ok((None, BTreeMap::new(), Vec::new())),
            })
            .await?;
        let gate = gate(&cx.status, &key.forge, Timestamp::now()).await?;
        let mut observed = Observed {
            gate,
            remote: None,
            default_branch,
            heads,
            pull_requests,
        };
        let Some((forge, repo)) = spec.repo(key) else {
            return Ok(observed);
        };
        if gate != Gate::Open {
            return Ok(observed);
        }
        let client = cx.forges.client(&key.forge, forge)?;
        let name = &key.repo;
        let fetched = async {
            let info = client.repository(name).await?;
            let branches = client.branches(name).await?;
            let pull_requests = if repo.pull_requests {
                client.open_pull_requests(name).await?
            } else {
                Vec::new()
            };
            Ok(Remote {
                default_branch: info.default_branch,
                branches,
                pull_requests,
            })
        }
        .await;
        match fetched {
            Ok(remote) => observed.remote = Some(remote),
            Err(err) => return Err(record_api_error(&cx.status, &key.forge, err).await),
        }
        Ok(observed)
    }

    fn plan(key: &RepoKey, desired: &Spec, observed: &Observed, now: Timestamp) -> Plan<Step> {
        plan(key, desired, observed, now)
    }

    async fn apply(&self, key: &RepoKey, step: Step, cx: &Ctx<P>) -> Result<()> {
        let k = key.clone();
        let now = Timestamp::now();
        match step {
            Step::CheckTrust {
                number,
                head_sha,
                author,
            } => {
                let client = cx.forges.for_repo(&cx.spec(), key)?;
                let permission = match client.permission(&key.repo, &author).await {
                    Ok(p) => p,
                    Err(err) => return Err(record_api_error(&cx.status, &key.forge, err).await),
                };
                let can_write = permission.can_write();
                info!(repo = %key, pr = number, %author, ?permission, trusted = can_write, "pull request author looked up");
                cx.status
                    .call(move |db| {
                        let repo = db.upsert_repo(&k)?;
                        db.set_pull_request_trust(repo, number, &head_sha, can_write, now)
                    })
                    .await?;
            }
            step => {
                cx.status
                    .call(move |db| {
                        let repo = db.upsert_repo(&k)?;
                        match step {
                            Step::SetDefaultBranch { branch } => {
                                db.set_default_branch(repo, branch.as_deref())
                            }
                            Step::RecordHead { git_ref, sha } => {
                                db.record_ref(repo, &git_ref, &sha, now).map(drop)
                            }
                            Step::RemoveHead { git_ref } => db.remove_ref(repo, &git_ref).map(drop),
                            Step::UpsertPullRequest {
                                number,
                                head_sha,
                                head_ref,
                                base_ref,
                                author,
                                from_fork,
                            } => db
                                .upsert_pull_request(
                                    repo,
                                    &PullRequestUpdate {
                                        number,
                                        head_sha,
                                        head_ref,
                                        base_ref,
                                        author: Some(author),
                                        from_fork,
                                        open: true,
                                    },
                                    now,
                                )
                                .map(drop),
                            Step::ClosePullRequests { open } => {
                                db.close_pull_requests_except(repo, &open).map(drop)
                            }
                            Step::CheckTrust { .. } => Ok(()),
                        }
                    })
                    .await?;
            }
        }
        cx.wakers.evaluations(key.clone());
        cx.wakers.statuses(key.clone());
        Ok(())
    }
}

/// How long to wait before polling a forge again after an error: the default backoff, but at
/// most a minute, so a flaky forge is not left alone for long.
pub fn retry_after_error(failures: u32) -> Duration {
    crate::runtime::default_backoff(failures)
        .requeue_after()
        .unwrap_or(Duration::from_secs(60))
        .min(Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(repo_yaml: &str) -> Spec {
        let yaml = format!(
            "external-url: https://ci.example\nforges:\n  gh:\n    kind: github\n    token-file: /t\n    webhook-secret-file: /s\n    poll-interval: 1m\n    repos:\n      a/b:\n{repo_yaml}"
        );
        reconix_spec::parse(&yaml, std::path::Path::new("t.yaml")).unwrap()
    }

    fn key() -> RepoKey {
        RepoKey::parse("gh/a/b").unwrap()
    }

    fn branch(name: &str, sha: &str) -> Branch {
        Branch {
            name: name.to_owned(),
            sha: sha.to_owned(),
        }
    }

    fn pr(number: u64, sha: &str, author: &str) -> PullRequest {
        PullRequest {
            number,
            head_sha: sha.to_owned(),
            head_ref: "feature".to_owned(),
            base_ref: "main".to_owned(),
            author: author.to_owned(),
            from_fork: false,
        }
    }

    fn row(number: u64, sha: &str, author: &str, trust: Option<bool>) -> PullRequestRow {
        PullRequestRow {
            from_fork: false,
            ..crate::testing::pull_request(number, sha, author, trust)
        }
    }

    fn observed(remote: Remote) -> Observed {
        Observed {
            gate: Gate::Open,
            remote: Some(remote),
            default_branch: Some("main".to_owned()),
            heads: BTreeMap::new(),
            pull_requests: Vec::new(),
        }
    }

    #[test]
    fn the_default_branch_should_be_the_only_one_built_without_globs() {
        let o = observed(Remote {
            default_branch: Some("main".to_owned()),
            branches: vec![branch("main", "aaa"), branch("dev", "bbb")],
            pull_requests: Vec::new(),
        });
        let p = plan(
            &key(),
            &spec("        pull-requests: false\n"),
            &o,
            Timestamp(0),
        );
        assert_eq!(
            p.steps,
            [Step::RecordHead {
                git_ref: "refs/heads/main".to_owned(),
                sha: "aaa".to_owned()
            }]
        );
        assert_eq!(p.then, Action::requeue(Duration::from_secs(60)));
    }

    #[test]
    fn a_lost_push_should_be_caught_and_a_gone_branch_removed() {
        let mut o = observed(Remote {
            default_branch: Some("main".to_owned()),
            branches: vec![branch("main", "ccc"), branch("release/1", "ddd")],
            pull_requests: Vec::new(),
        });
        o.heads
            .insert("refs/heads/main".to_owned(), "aaa".to_owned());
        o.heads
            .insert("refs/heads/old".to_owned(), "eee".to_owned());
        let p = plan(
            &key(),
            &spec("        branches: [main, release/*]\n"),
            &o,
            Timestamp(0),
        );
        assert_eq!(
            p.steps,
            [
                Step::RecordHead {
                    git_ref: "refs/heads/main".to_owned(),
                    sha: "ccc".to_owned()
                },
                Step::RecordHead {
                    git_ref: "refs/heads/release/1".to_owned(),
                    sha: "ddd".to_owned()
                },
                Step::RemoveHead {
                    git_ref: "refs/heads/old".to_owned()
                },
            ]
        );
    }

    #[test]
    fn pull_requests_should_be_recorded_and_their_authors_looked_up_unless_allowlisted() {
        let o = observed(Remote {
            default_branch: Some("main".to_owned()),
            branches: Vec::new(),
            pull_requests: vec![pr(1, "aaa", "mallory"), pr(2, "bbb", "renovate")],
        });
        let p = plan(
            &key(),
            &spec("        allowlist: [renovate]\n"),
            &o,
            Timestamp(0),
        );
        let kinds: Vec<_> = p
            .steps
            .iter()
            .map(|s| match s {
                Step::UpsertPullRequest { number, .. } => format!("upsert {number}"),
                Step::CheckTrust { number, .. } => format!("trust {number}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(kinds, ["upsert 1", "trust 1", "upsert 2"]);
    }

    #[test]
    fn known_trust_should_not_be_looked_up_again_until_the_head_moves() {
        let mut o = observed(Remote {
            default_branch: Some("main".to_owned()),
            branches: Vec::new(),
            pull_requests: vec![pr(1, "aaa", "mallory")],
        });
        o.pull_requests = vec![row(1, "aaa", "mallory", Some(false))];
        assert!(
            plan(&key(), &spec("        {}\n"), &o, Timestamp(0))
                .steps
                .is_empty()
        );
        o.remote.as_mut().unwrap().pull_requests = vec![pr(1, "fff", "mallory")];
        let p = plan(&key(), &spec("        {}\n"), &o, Timestamp(0));
        assert!(
            matches!(&p.steps[..], [Step::UpsertPullRequest { .. }, Step::CheckTrust { head_sha, .. }] if head_sha == "fff")
        );
    }

    #[test]
    fn closed_pull_requests_should_be_closed() {
        let mut o = observed(Remote {
            default_branch: Some("main".to_owned()),
            branches: Vec::new(),
            pull_requests: Vec::new(),
        });
        o.pull_requests = vec![row(4, "aaa", "alice", Some(true))];
        let p = plan(&key(), &spec("        {}\n"), &o, Timestamp(0));
        assert_eq!(p.steps, [Step::ClosePullRequests { open: Vec::new() }]);
    }

    #[test]
    fn a_held_back_forge_should_not_be_planned_for() {
        let mut o = observed(Remote {
            default_branch: Some("dev".to_owned()),
            branches: Vec::new(),
            pull_requests: Vec::new(),
        });
        o.gate = Gate::Wait(Duration::from_secs(7));
        let p = plan(&key(), &spec("        {}\n"), &o, Timestamp(0));
        assert!(p.steps.is_empty());
        assert_eq!(p.then, Action::requeue(Duration::from_secs(7)));
        o.gate = Gate::Paused;
        assert!(
            plan(&key(), &spec("        {}\n"), &o, Timestamp(0))
                .steps
                .is_empty()
        );
    }
}
