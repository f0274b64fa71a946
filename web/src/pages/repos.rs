//! `/repos/{forge}/{repo}` (branches, open pull requests, evaluations) and
//! `/repos/{forge}/{repo}/pulls/{number}` (a pull request against its base branch).
//!
//! Repository names contain `/` (`owner/name`, GitLab groups), so both pages share one
//! wildcard route and the path is split here: a rest ending in `/pulls/<number>` is a pull
//! request. (A GitLab group literally named `pulls` with a numeric project would be shadowed.)

use askama::Template;
use axum::extract::{Path, State};
use axum::response::Html;
use reconix_spec::{RepoKey, Timestamp};
use reconix_status::pages::JobOutcome;

use super::compare::{OutcomeChange, PullComparison, compare_evaluations};
use reconix_status::{Evaluation, EvaluationId, EvaluationState};

use super::{EvalRow, PageError, render, short, time};
use crate::AppState;

/// How many evaluations the repository page lists.
const EVALUATIONS: u32 = 50;

/// What the wildcard part of the path names.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    Repo(RepoKey),
    Pull(RepoKey, u64),
}

fn target(forge: &str, rest: &str) -> Option<Target> {
    let rest = rest.trim_end_matches('/');
    if let Some((repo, number)) = rest.rsplit_once("/pulls/")
        && let Ok(number) = number.parse::<u64>()
    {
        return RepoKey::parse(&format!("{forge}/{repo}"))
            .ok()
            .map(|key| Target::Pull(key, number));
    }
    RepoKey::parse(&format!("{forge}/{rest}"))
        .ok()
        .map(Target::Repo)
}

pub(super) async fn page(
    State(st): State<AppState>,
    Path((forge, rest)): Path<(String, String)>,
) -> Result<Html<String>, PageError> {
    match target(&forge, &rest).ok_or(PageError::NotFound("repository"))? {
        Target::Repo(key) => repo_page(st, key).await,
        Target::Pull(key, number) => pull_page(st, key, number).await,
    }
}

/// A link to an evaluation with its state.
struct EvalLink {
    href: String,
    id: i64,
    state: &'static str,
}

impl EvalLink {
    fn new(id: EvaluationId, state: EvaluationState) -> Self {
        Self {
            href: format!("/evaluations/{id}"),
            id: id.0,
            state: state.as_str(),
        }
    }
}

struct HeadRow {
    name: String,
    rev: String,
    observed: String,
    evaluation: Option<EvalLink>,
}

struct PullRow {
    number: u64,
    href: String,
    head_ref: String,
    base_ref: String,
    author: String,
    head: String,
    from_fork: bool,
    evaluation: Option<EvalLink>,
}

#[derive(Template)]
#[template(path = "repo.html")]
struct RepoPage {
    repo: String,
    default_branch: String,
    heads: Vec<HeadRow>,
    pulls: Vec<PullRow>,
    evaluations: Vec<EvalRow>,
}

async fn repo_page(st: AppState, key: RepoKey) -> Result<Html<String>, PageError> {
    let k = key.clone();
    let (default_branch, heads, pulls, evaluations) = st
        .status
        .call(move |db| {
            let Some(repo) = db.repo_id(&k)? else {
                return Ok(None);
            };
            let mut heads = Vec::new();
            for head in db.refs(repo)? {
                let eval = db.evaluation_of(repo, &head.name, &head.rev)?;
                heads.push((head, eval));
            }
            let mut pulls = Vec::new();
            for pr in db.open_pull_requests(repo)? {
                let eval = db
                    .pull_request_evaluation(repo, pr.number, &pr.head_sha)?
                    .map(|e| (e.id, e.state));
                pulls.push((pr, eval));
            }
            Ok(Some((
                db.default_branch(repo)?,
                heads,
                pulls,
                db.repo_evaluations(repo, EVALUATIONS)?,
            )))
        })
        .await?
        .ok_or(PageError::NotFound("repository"))?;
    let now = Timestamp::now();
    let base = super::repo_href(&key);
    let page = RepoPage {
        repo: key.to_string(),
        default_branch: default_branch.unwrap_or_default(),
        heads: heads
            .into_iter()
            .map(|(h, e)| HeadRow {
                rev: short(&h.rev).to_owned(),
                observed: time(Some(h.observed_at)),
                evaluation: e.map(|(id, state)| EvalLink::new(id, state)),
                name: h.name,
            })
            .collect(),
        pulls: pulls
            .into_iter()
            .map(|(p, e)| PullRow {
                href: format!("{base}/pulls/{}", p.number),
                number: p.number,
                head: short(&p.head_sha).to_owned(),
                author: p.author.unwrap_or_default(),
                from_fork: p.from_fork,
                evaluation: e.map(|(id, state)| EvalLink::new(id, state)),
                head_ref: p.head_ref,
                base_ref: p.base_ref,
            })
            .collect(),
        evaluations: evaluations.iter().map(|e| EvalRow::new(e, now)).collect(),
    };
    render(&page)
}

/// An attribute in a comparison, linked to its job(s).
struct Compared {
    attr: String,
    base_href: String,
    base_state: &'static str,
    head_href: String,
    head_state: &'static str,
}

impl Compared {
    fn change(c: &OutcomeChange) -> Self {
        Self {
            attr: c.head.attr.to_string(),
            base_href: format!("/jobs/{}", c.base.id),
            base_state: c.base.state.as_str(),
            head_href: format!("/jobs/{}", c.head.id),
            head_state: c.head.state.as_str(),
        }
    }

    fn one(j: &JobOutcome) -> Self {
        Self {
            attr: j.attr.to_string(),
            base_href: String::new(),
            base_state: "",
            head_href: format!("/jobs/{}", j.id),
            head_state: j.state.as_str(),
        }
    }
}

/// One titled list of a comparison.
struct Section {
    title: &'static str,
    class: &'static str,
    /// Whether rows have a base job (false for new and removed attributes).
    both: bool,
    rows: Vec<Compared>,
}

struct EvalInfo {
    href: String,
    id: i64,
    rev: String,
    state: &'static str,
}

impl EvalInfo {
    fn new(e: &Evaluation) -> Self {
        Self {
            href: format!("/evaluations/{}", e.id),
            id: e.id.0,
            rev: short(&e.rev).to_owned(),
            state: e.state.as_str(),
        }
    }
}

#[derive(Template)]
#[template(path = "pull.html")]
struct PullPage {
    repo: String,
    repo_href: String,
    number: u64,
    open: bool,
    head_ref: String,
    base_ref: String,
    head_sha: String,
    author: String,
    head: Option<EvalInfo>,
    base: Option<EvalInfo>,
    /// The head's evaluation is of an older commit than the pull request's head.
    stale: bool,
    unfinished: u64,
    sections: Vec<Section>,
}

fn sections(cmp: &PullComparison) -> Vec<Section> {
    vec![
        Section {
            title: "Newly failing",
            class: "failed",
            both: true,
            rows: cmp.newly_failing.iter().map(Compared::change).collect(),
        },
        Section {
            title: "Still failing",
            class: "dependency-failed",
            both: true,
            rows: cmp.still_failing.iter().map(Compared::change).collect(),
        },
        Section {
            title: "Fixed",
            class: "succeeded",
            both: true,
            rows: cmp.fixed.iter().map(Compared::change).collect(),
        },
        Section {
            title: "New jobs",
            class: "queued",
            both: false,
            rows: cmp.new_jobs.iter().map(Compared::one).collect(),
        },
        Section {
            title: "Removed jobs",
            class: "cancelled",
            both: false,
            rows: cmp.removed.iter().map(Compared::one).collect(),
        },
    ]
}

async fn pull_page(st: AppState, key: RepoKey, number: u64) -> Result<Html<String>, PageError> {
    let k = key.clone();
    let (pr, head, base, cmp) = st
        .status
        .call(move |db| {
            let Some(repo) = db.repo_id(&k)? else {
                return Ok(None);
            };
            let Some(pr) = db.pull_request(repo, number)? else {
                return Ok(None);
            };
            let head = db.pull_request_evaluation(repo, number, &pr.head_sha)?;
            let base = db.latest_finished_evaluation(repo, &pr.base_ref)?;
            let cmp = match (&head, &base) {
                (Some(h), Some(b)) => Some(compare_evaluations(
                    &db.job_outcomes(b.id)?,
                    &db.job_outcomes(h.id)?,
                )),
                _ => None,
            };
            Ok(Some((pr, head, base, cmp)))
        })
        .await?
        .ok_or(PageError::NotFound("pull request"))?;
    let page = PullPage {
        repo: key.to_string(),
        repo_href: super::repo_href(&key),
        number,
        open: pr.open,
        stale: head.as_ref().is_some_and(|h| h.rev != pr.head_sha),
        head: head.as_ref().map(EvalInfo::new),
        base: base.as_ref().map(EvalInfo::new),
        unfinished: cmp.as_ref().map_or(0, |c| c.unfinished),
        sections: cmp.as_ref().map(sections).unwrap_or_default(),
        head_sha: short(&pr.head_sha).to_owned(),
        author: pr.author.unwrap_or_default(),
        head_ref: pr.head_ref,
        base_ref: pr.base_ref,
    };
    render(&page)
}

#[cfg(test)]
mod tests {
    use reconix_spec::RepoKey;

    use super::{Target, target};

    #[test]
    fn the_wildcard_should_split_into_repo_or_pull_request() {
        let key = |s| RepoKey::parse(s).unwrap();
        assert_eq!(target("gh", "o/r"), Some(Target::Repo(key("gh/o/r"))));
        assert_eq!(
            target("here", "demo/"),
            Some(Target::Repo(key("here/demo")))
        );
        assert_eq!(
            target("gl", "group/sub/p/pulls/12"),
            Some(Target::Pull(key("gl/group/sub/p"), 12))
        );
        assert_eq!(
            target("gh", "o/pulls/x"),
            Some(Target::Repo(key("gh/o/pulls/x")))
        );
        assert_eq!(target("gh", "../etc"), None);
        assert_eq!(target("gh", "/pulls/3"), None);
    }
}
