//! [`ForgeClient`]: the client for whichever kind a forge in the spec is, behind one type.

use reconix_spec::{ForgeKind, RepoName, Secret};

use crate::api::{
    ApiError, ApiResult, Branch, CheckRun, CheckRunSpec, CommitStatus, Forge, Hook, HookSpec,
    Permission, PullRequest, RepoInfo,
};
use crate::{GiteaClient, GithubClient, GitlabClient, RetryPolicy};

/// A REST client for one forge of any hosted kind.
#[derive(Debug, Clone)]
pub enum ForgeClient {
    /// GitHub or GitHub Enterprise Server.
    Github(GithubClient),
    /// GitLab.
    Gitlab(GitlabClient),
    /// Gitea or Forgejo.
    Gitea(GiteaClient),
}

impl ForgeClient {
    /// Creates the client for a forge of `kind` at `api_url`.
    ///
    /// # Errors
    /// Returns [`ApiError::Unsupported`] for `local` forges (they have no API) and
    /// [`ApiError::Build`] when the client cannot be built.
    pub fn new(
        kind: ForgeKind,
        api_url: &str,
        token: &Secret,
        policy: RetryPolicy,
    ) -> ApiResult<Self> {
        Ok(match kind {
            ForgeKind::Github => {
                Self::Github(GithubClient::with_retry_policy(api_url, token, policy)?)
            }
            ForgeKind::Gitlab => {
                Self::Gitlab(GitlabClient::with_retry_policy(api_url, token, policy)?)
            }
            ForgeKind::Gitea => {
                Self::Gitea(GiteaClient::with_retry_policy(api_url, token, policy)?)
            }
            ForgeKind::Local => {
                return Err(ApiError::Unsupported {
                    operation: "REST calls to local forges",
                });
            }
        })
    }
}

/// Forwards a call to the client of the forge's kind.
macro_rules! each {
    ($self:ident, $c:ident => $call:expr) => {
        match $self {
            ForgeClient::Github($c) => $call.await,
            ForgeClient::Gitlab($c) => $call.await,
            ForgeClient::Gitea($c) => $call.await,
        }
    };
}

impl Forge for ForgeClient {
    async fn list_hooks(&self, repo: &RepoName) -> ApiResult<Vec<Hook>> {
        each!(self, c => c.list_hooks(repo))
    }

    async fn create_hook(&self, repo: &RepoName, spec: &HookSpec) -> ApiResult<Hook> {
        each!(self, c => c.create_hook(repo, spec))
    }

    async fn patch_hook(&self, repo: &RepoName, id: u64, spec: &HookSpec) -> ApiResult<Hook> {
        each!(self, c => c.patch_hook(repo, id, spec))
    }

    async fn delete_hook(&self, repo: &RepoName, id: u64) -> ApiResult<()> {
        each!(self, c => c.delete_hook(repo, id))
    }

    async fn repository(&self, repo: &RepoName) -> ApiResult<RepoInfo> {
        each!(self, c => c.repository(repo))
    }

    async fn branches(&self, repo: &RepoName) -> ApiResult<Vec<Branch>> {
        each!(self, c => c.branches(repo))
    }

    async fn open_pull_requests(&self, repo: &RepoName) -> ApiResult<Vec<PullRequest>> {
        each!(self, c => c.open_pull_requests(repo))
    }

    async fn permission(&self, repo: &RepoName, user: &str) -> ApiResult<Permission> {
        each!(self, c => c.permission(repo, user))
    }

    async fn create_status(
        &self,
        repo: &RepoName,
        sha: &str,
        status: &CommitStatus,
    ) -> ApiResult<()> {
        each!(self, c => c.create_status(repo, sha, status))
    }

    async fn create_check_run(&self, repo: &RepoName, spec: &CheckRunSpec) -> ApiResult<CheckRun> {
        each!(self, c => c.create_check_run(repo, spec))
    }

    async fn update_check_run(
        &self,
        repo: &RepoName,
        id: u64,
        spec: &CheckRunSpec,
    ) -> ApiResult<CheckRun> {
        each!(self, c => c.update_check_run(repo, id, spec))
    }
}

/// Returns the ref under which a forge exposes a pull request's head:
/// `refs/merge-requests/N/head` on GitLab, `refs/pull/N/head` elsewhere.
pub fn pull_request_ref(kind: ForgeKind, number: u64) -> String {
    match kind {
        ForgeKind::Gitlab => format!("refs/merge-requests/{number}/head"),
        _ => format!("refs/pull/{number}/head"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_request_refs_should_follow_each_forge() {
        assert_eq!(pull_request_ref(ForgeKind::Github, 7), "refs/pull/7/head");
        assert_eq!(pull_request_ref(ForgeKind::Gitea, 7), "refs/pull/7/head");
        assert_eq!(
            pull_request_ref(ForgeKind::Gitlab, 7),
            "refs/merge-requests/7/head"
        );
    }

    #[test]
    fn local_forges_should_have_no_client() {
        let err = ForgeClient::new(
            ForgeKind::Local,
            "http://x",
            &Secret::new("t".to_owned()),
            RetryPolicy::default(),
        )
        .unwrap_err();
        assert!(matches!(err, ApiError::Unsupported { .. }), "{err}");
    }
}
