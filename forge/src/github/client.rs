//! The GitHub REST client (github.com and GitHub Enterprise Server through `api-url`), shaped
//! on the official OpenAPI description (`/repos/{owner}/{repo}/...`).

use reconix_spec::{RepoName, Secret};
use reqwest::Method;
use reqwest::header::AUTHORIZATION;
use serde::{Deserialize, Serialize};

use crate::api::{
    ApiResult, Branch, CheckConclusion, CheckRun, CheckRunSpec, CheckStatus, CommitStatus, Forge,
    Hook, HookEvent, HookSpec, Permission, PullRequest, RepoInfo, StatusState,
};
use crate::http::{Http, RateLimitHeaders, RetryPolicy, repo_path};
use crate::repos_api::{Dialect, RepoApi};

/// A client for one GitHub API, authenticated with `Authorization: Bearer <token>`.
#[derive(Debug, Clone)]
pub struct GithubClient {
    api: RepoApi,
}

impl GithubClient {
    /// Creates a client for `api_url` (e.g. `https://api.github.com`) with the default
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
        let auth = format!("Bearer {}", token.expose());
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

/// Returns GitHub's event name for a hook event.
fn event_name(event: HookEvent) -> &'static str {
    match event {
        HookEvent::Push => "push",
        HookEvent::PullRequest => "pull_request",
    }
}

/// Maps the daemon's states onto GitHub's four. GitHub has no running state, so running is
/// `pending`; it has no cancelled state, and a cancelled job is not the code's fault, so
/// cancelled is `error` (GitHub: "something went wrong" rather than "the change is bad").
pub(crate) fn status_state(state: StatusState) -> &'static str {
    match state {
        StatusState::Pending | StatusState::Running => "pending",
        StatusState::Success => "success",
        StatusState::Failure => "failure",
        StatusState::Error | StatusState::Cancelled => "error",
    }
}

/// Maps GitHub's collaborator permission (`admin`, `maintain`, `write`, `triage`, `read`,
/// `none`); unknown values are `None`, failing closed for the trust gate.
pub(crate) fn permission_level(permission: &str) -> Permission {
    match permission {
        "admin" => Permission::Admin,
        "maintain" | "write" => Permission::Write,
        "triage" | "read" => Permission::Read,
        _ => Permission::None,
    }
}

/// GitHub reports exactly the events a hook subscribes to; `pull_request_review` and the like
/// are other events, not pull requests.
fn hook_event(name: &str) -> Option<HookEvent> {
    match name {
        "push" => Some(HookEvent::Push),
        "pull_request" => Some(HookEvent::PullRequest),
        _ => None,
    }
}

/// GitHub's side of the shared API: `per_page`, `name: web` on creation, `insecure_ssl: "0"`.
static DIALECT: Dialect = Dialect {
    page: "per_page=100",
    event_name,
    hook_event,
    status_state,
    permission_level,
    create_name: Some("web"),
    create_type: None,
    insecure_ssl: Some("0"),
};

#[derive(Serialize)]
struct CheckRunBody<'a> {
    name: &'a str,
    head_sha: &'a str,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    conclusion: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    details_url: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<CheckOutputBody<'a>>,
}

#[derive(Serialize)]
struct CheckOutputBody<'a> {
    title: &'a str,
    summary: &'a str,
}

#[derive(Deserialize)]
struct CheckRunDto {
    id: u64,
}

fn check_run_body(spec: &CheckRunSpec) -> CheckRunBody<'_> {
    CheckRunBody {
        name: &spec.name,
        head_sha: &spec.head_sha,
        status: match spec.status {
            CheckStatus::Queued => "queued",
            CheckStatus::InProgress => "in_progress",
            CheckStatus::Completed => "completed",
        },
        conclusion: spec.conclusion.map(|c| match c {
            CheckConclusion::Success => "success",
            CheckConclusion::Failure => "failure",
            CheckConclusion::Cancelled => "cancelled",
            CheckConclusion::Neutral => "neutral",
            CheckConclusion::Skipped => "skipped",
            CheckConclusion::TimedOut => "timed_out",
        }),
        details_url: spec.details_url.as_deref(),
        output: spec.output.as_ref().map(|o| CheckOutputBody {
            title: &o.title,
            summary: &o.summary,
        }),
    }
}

impl Forge for GithubClient {
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

    async fn create_check_run(&self, repo: &RepoName, spec: &CheckRunSpec) -> ApiResult<CheckRun> {
        let path = format!("/repos/{}/check-runs", repo_path(repo));
        let dto: CheckRunDto = self
            .api
            .http
            .send_json(Method::POST, &path, &check_run_body(spec))
            .await?;
        Ok(CheckRun { id: dto.id })
    }

    async fn update_check_run(
        &self,
        repo: &RepoName,
        id: u64,
        spec: &CheckRunSpec,
    ) -> ApiResult<CheckRun> {
        let path = format!("/repos/{}/check-runs/{id}", repo_path(repo));
        let dto: CheckRunDto = self
            .api
            .http
            .send_json(Method::PATCH, &path, &check_run_body(spec))
            .await?;
        Ok(CheckRun { id: dto.id })
    }
}
