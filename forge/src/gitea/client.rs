//! The Gitea/Forgejo REST client (Gitea, Forgejo, Codeberg; `api-url` ends in `/api/v1`),
//! shaped on the official swagger description. The API mirrors GitHub's paths, with its own
//! hook body (`type` and a string map `config`), `limit` for page size and `commit.id` for
//! branch heads.

use reconix_spec::{RepoName, Secret};
use reqwest::header::AUTHORIZATION;

use crate::api::{
    ApiResult, Branch, CommitStatus, Forge, Hook, HookEvent, HookSpec, Permission, PullRequest,
    RepoInfo, StatusState,
};
use crate::http::{Http, RateLimitHeaders, RetryPolicy};
use crate::repos_api::{Dialect, RepoApi};

/// A client for one Gitea or Forgejo API, authenticated with `Authorization: token <token>`.
#[derive(Debug, Clone)]
pub struct GiteaClient {
    api: RepoApi,
}

impl GiteaClient {
    /// Creates a client for `api_url` (e.g. `https://codeberg.org/api/v1`) with the default
    /// [`RetryPolicy`].
    ///
    /// # Errors
    /// Returns [`ApiError::Build`](crate::api::ApiError::Build) when the token cannot be sent in a header.
    pub fn new(api_url: &str, token: &Secret) -> ApiResult<Self> {
        Self::with_retry_policy(api_url, token, RetryPolicy::default())
    }

    /// Creates a client with an explicit retry policy (tests shorten the delays).
    ///
    /// # Errors
    /// Returns [`ApiError::Build`](crate::api::ApiError::Build) when the token cannot be sent in a header.
    pub fn with_retry_policy(
        api_url: &str,
        token: &Secret,
        policy: RetryPolicy,
    ) -> ApiResult<Self> {
        let auth = format!("token {}", token.expose());
        let http = Http::new(
            api_url,
            AUTHORIZATION,
            &auth,
            policy,
            RateLimitHeaders::XRateLimit,
        )?;
        Ok(Self {
            api: RepoApi::new(http, &DIALECT),
        })
    }
}

/// Returns Gitea's event name for a hook event; `pull_request` covers every pull request
/// sub-event (`pull_request_sync` included).
fn event_name(event: HookEvent) -> &'static str {
    match event {
        HookEvent::Push => "push",
        HookEvent::PullRequest => "pull_request",
    }
}

/// Maps the daemon's states onto Gitea's (`pending`, `success`, `error`, `failure`,
/// `warning`). Gitea has no running state, so running is `pending`; a cancelled job is neither
/// a success nor the code's failure, so it is `warning`, which Gitea shows as such without
/// marking the commit failed.
pub(crate) fn status_state(state: StatusState) -> &'static str {
    match state {
        StatusState::Pending | StatusState::Running => "pending",
        StatusState::Success => "success",
        StatusState::Failure => "failure",
        StatusState::Error => "error",
        StatusState::Cancelled => "warning",
    }
}

/// Maps Gitea's collaborator permission (`none`, `read`, `write`, `admin`, `owner`); unknown
/// values are `None`, failing closed for the trust gate.
pub(crate) fn permission_level(permission: &str) -> Permission {
    match permission {
        "admin" | "owner" => Permission::Admin,
        "write" => Permission::Write,
        "read" => Permission::Read,
        _ => Permission::None,
    }
}

/// Gitea may report a `pull_request` subscription as its sub-events (`pull_request_sync`, …).
fn hook_event(name: &str) -> Option<HookEvent> {
    match name {
        "push" => Some(HookEvent::Push),
        n if n.starts_with("pull_request") => Some(HookEvent::PullRequest),
        _ => None,
    }
}

/// How Gitea differs from GitHub's API: page size as `limit`, `type` on hook creation.
static DIALECT: Dialect = Dialect {
    page: "limit=50",
    event_name,
    hook_event,
    status_state,
    permission_level,
    create_name: None,
    create_type: Some("gitea"),
    insecure_ssl: None,
};

impl Forge for GiteaClient {
    async fn list_hooks(&self, repo: &RepoName) -> ApiResult<Vec<Hook>> {
        self.api.list_hooks(repo).await
    }

    async fn create_hook(&self, repo: &RepoName, spec: &HookSpec) -> ApiResult<Hook> {
        self.api.create_hook(repo, spec).await
    }

    async fn patch_hook(&self, repo: &RepoName, id: u64, spec: &HookSpec) -> ApiResult<Hook> {
        self.api.patch_hook(repo, id, spec).await
    }

    async fn delete_hook(&self, repo: &RepoName, id: u64) -> ApiResult<()> {
        self.api.delete_hook(repo, id).await
    }

    async fn repository(&self, repo: &RepoName) -> ApiResult<RepoInfo> {
        self.api.repository(repo).await
    }

    async fn branches(&self, repo: &RepoName) -> ApiResult<Vec<Branch>> {
        self.api.branches(repo).await
    }

    async fn open_pull_requests(&self, repo: &RepoName) -> ApiResult<Vec<PullRequest>> {
        self.api.open_pull_requests(repo).await
    }

    async fn permission(&self, repo: &RepoName, user: &str) -> ApiResult<Permission> {
        self.api.permission(repo, user).await
    }

    async fn create_status(
        &self,
        repo: &RepoName,
        sha: &str,
        status: &CommitStatus,
    ) -> ApiResult<()> {
        self.api.create_status(repo, sha, status).await
    }
}
