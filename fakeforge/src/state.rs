//! The fake's state: repositories with their hooks, pull requests, permissions, statuses and
//! check runs, plus the call log, pending faults and schema violations.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::{Call, FakeCheckRun, FakeHook, FakePermission, FakePr, FakeStatus, Fault};

/// The page size used when a forge caps nothing smaller.
const DEFAULT_MAX_PER_PAGE: usize = 100;

#[derive(Debug)]
pub(crate) struct State {
    pub(crate) token: String,
    pub(crate) repos: BTreeMap<String, RepoState>,
    /// GitLab needs numeric user ids: every user the fake hears of gets one.
    pub(crate) users: BTreeMap<String, u64>,
    pub(crate) next_repo_id: u64,
    pub(crate) next_hook_id: u64,
    pub(crate) next_status_id: u64,
    pub(crate) next_check_run_id: u64,
    pub(crate) max_per_page: usize,
    pub(crate) calls: Vec<Call>,
    pub(crate) faults: Vec<Fault>,
    pub(crate) violations: Vec<String>,
}

#[derive(Debug)]
pub(crate) struct RepoState {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) git_dir: PathBuf,
    pub(crate) default_branch: String,
    pub(crate) hooks: BTreeMap<u64, FakeHook>,
    pub(crate) prs: BTreeMap<u64, PrState>,
    /// Lowercased login → level.
    pub(crate) permissions: HashMap<String, FakePermission>,
    /// (sha, status) in posting order.
    pub(crate) statuses: Vec<(String, FakeStatus)>,
    pub(crate) check_runs: BTreeMap<u64, FakeCheckRun>,
}

#[derive(Debug, Clone)]
pub(crate) struct PrState {
    pub(crate) pr: FakePr,
    pub(crate) open: bool,
    /// The head before the last update, for `synchronize` payloads.
    pub(crate) previous_sha: Option<String>,
}

impl State {
    pub(crate) fn new(token: String) -> Self {
        Self {
            token,
            repos: BTreeMap::new(),
            users: BTreeMap::new(),
            next_repo_id: 0,
            next_hook_id: 0,
            next_status_id: 0,
            next_check_run_id: 0,
            max_per_page: DEFAULT_MAX_PER_PAGE,
            calls: Vec::new(),
            faults: Vec::new(),
            violations: Vec::new(),
        }
    }

    /// Finds a repository by name; GitHub and Gitea names are case-insensitive.
    pub(crate) fn repo(&self, name: &str) -> Option<&RepoState> {
        self.repos.get(name).or_else(|| {
            self.repos
                .values()
                .find(|r| r.name.eq_ignore_ascii_case(name))
        })
    }

    pub(crate) fn repo_mut(&mut self, name: &str) -> Option<&mut RepoState> {
        let key = self
            .repos
            .keys()
            .find(|k| k.eq_ignore_ascii_case(name))
            .cloned()?;
        self.repos.get_mut(&key)
    }

    /// Returns the user's numeric id, assigning one on first sight.
    pub(crate) fn user_id(&mut self, login: &str) -> u64 {
        let key = login.to_ascii_lowercase();
        let next = self.users.len() as u64 + 100;
        *self.users.entry(key).or_insert(next)
    }

    /// Finds the first pending fault matching the request and consumes one use of it.
    pub(crate) fn take_fault(&mut self, method: &str, path: &str) -> Option<crate::FaultKind> {
        let index = self.faults.iter().position(|f| {
            f.times > 0
                && f.method.as_ref().is_none_or(|m| m.as_str() == method)
                && f.path_contains
                    .as_deref()
                    .is_none_or(|needle| path.contains(needle))
        })?;
        let fault = &mut self.faults[index];
        fault.times -= 1;
        let kind = fault.kind;
        if fault.times == 0 {
            self.faults.remove(index);
        }
        Some(kind)
    }
}

impl RepoState {
    pub(crate) fn new(id: u64, name: &str, git_dir: &Path, default_branch: &str) -> Self {
        Self {
            id,
            name: name.to_owned(),
            git_dir: git_dir.to_owned(),
            default_branch: default_branch.to_owned(),
            hooks: BTreeMap::new(),
            prs: BTreeMap::new(),
            permissions: HashMap::new(),
            statuses: Vec::new(),
            check_runs: BTreeMap::new(),
        }
    }

    pub(crate) fn permission(&self, user: &str) -> FakePermission {
        self.permissions
            .get(&user.to_ascii_lowercase())
            .copied()
            .unwrap_or_default()
    }

    /// Returns `(owner, name)`: everything before the last `/`, and the rest.
    pub(crate) fn owner_and_name(&self) -> (&str, &str) {
        self.name.rsplit_once('/').unwrap_or(("", &self.name))
    }
}
