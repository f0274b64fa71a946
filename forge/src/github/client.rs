//! The GitHub REST client (github.com and GitHub Enterprise Server through `api-url`), shaped
//! on the official OpenAPI description (`/repos/{owner}/{repo}/...`).

use reconix_spec::{RepoName, Secret};
use reqwest::Method;
use reqwest::header::AUTHORIZATION;
use serde::{Deserialize, Serialize};

use crate::api::{
    ApiError, ApiResult, Branch, CheckConclusion, CheckRun, CheckRunSpec, CheckStatus,
    CommitStatus, Forge, Hook, HookEvent, HookSpec, Permission, PullRequest, RepoInfo, StatusState,
};
use crate::http::{Http, RateLimitHeaders, RetryPolicy, encode_segment, repo_path};

/// A client for one GitHub API, authenticated with `Authorization: Bearer <token>`.
#[derive(Debug, Clone)]
pub struct GithubClient {
    http: Http,
}

impl GithubClient {
    /// Creates a client for `api_url` (e.g. `https://api.github.com`) with the default
    /// [`RetryPolicy`].
    ///
    /// # Errors
    /// Returns [`ApiError::Build`] when the token cannot be sent in a header.
    pub fn new(api_url: &str, token: &Secret) -> ApiResult<Self> {
        Self::with_retry_policy(api_url, token, RetryPolicy::default())
    }

    /// Creates a client with an explicit retry policy (tests shorten the delays).
    ///
    /// # Errors
    /// Returns [`ApiError::Build`] when the token cannot be sent in a header.
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
        Ok(Self { http })
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

#[derive(Deserialize)]
struct HookDto {
    id: u64,
    #[serde(default)]
    active: bool,
    #[serde(default)]
    events: Vec<String>,
    #[serde(default)]
    config: HookConfigDto,
}

#[derive(Deserialize, Default)]
struct HookConfigDto {
    url: Option<String>,
    content_type: Option<String>,
}

impl From<HookDto> for Hook {
    fn from(dto: HookDto) -> Self {
        let events = dto
            .events
            .iter()
            .filter_map(|e| match e.as_str() {
                "push" => Some(HookEvent::Push),
                "pull_request" => Some(HookEvent::PullRequest),
                _ => None,
            })
            .collect();
        Self {
            id: dto.id,
            url: dto.config.url.unwrap_or_default(),
            events,
            active: dto.active,
            content_type: dto.config.content_type,
        }
    }
}

#[derive(Serialize)]
struct HookBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'static str>,
    active: bool,
    events: Vec<&'static str>,
    config: HookConfigBody<'a>,
}

#[derive(Serialize)]
struct HookConfigBody<'a> {
    url: &'a str,
    content_type: &'static str,
    secret: &'a str,
    insecure_ssl: &'static str,
}

fn hook_body(spec: &HookSpec, create: bool) -> HookBody<'_> {
    HookBody {
        // `name` is only accepted on create, and only as `web`.
        name: create.then_some("web"),
        active: true,
        events: spec.events.iter().map(|e| event_name(*e)).collect(),
        config: HookConfigBody {
            url: &spec.url,
            content_type: "json",
            secret: spec.secret.expose(),
            insecure_ssl: "0",
        },
    }
}

#[derive(Deserialize)]
struct RepoDto {
    default_branch: Option<String>,
}

#[derive(Deserialize)]
struct BranchDto {
    name: String,
    commit: CommitDto,
}

#[derive(Deserialize)]
struct CommitDto {
    sha: String,
}

#[derive(Deserialize)]
struct PullDto {
    number: u64,
    head: PullEndDto,
    base: PullEndDto,
    user: Option<UserDto>,
}

#[derive(Deserialize)]
struct PullEndDto {
    #[serde(rename = "ref")]
    git_ref: String,
    sha: String,
    repo: Option<RepoRefDto>,
}

#[derive(Deserialize)]
struct RepoRefDto {
    full_name: String,
}

#[derive(Deserialize)]
struct UserDto {
    login: String,
}

#[derive(Deserialize)]
struct PermissionDto {
    permission: String,
}

#[derive(Serialize)]
struct StatusBody<'a> {
    state: &'static str,
    context: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_url: Option<&'a str>,
}

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
        let path = format!("/repos/{}/hooks?per_page=100", repo_path(repo));
        let hooks: Vec<HookDto> = self.http.get_all(&path).await?;
        Ok(hooks.into_iter().map(Hook::from).collect())
    }

    async fn create_hook(&self, repo: &RepoName, spec: &HookSpec) -> ApiResult<Hook> {
        let path = format!("/repos/{}/hooks", repo_path(repo));
        let hook: HookDto = self
            .http
            .send_json(Method::POST, &path, &hook_body(spec, true))
            .await?;
        Ok(hook.into())
    }

    async fn patch_hook(&self, repo: &RepoName, id: u64, spec: &HookSpec) -> ApiResult<Hook> {
        let path = format!("/repos/{}/hooks/{id}", repo_path(repo));
        let hook: HookDto = self
            .http
            .send_json(Method::PATCH, &path, &hook_body(spec, false))
            .await?;
        Ok(hook.into())
    }

    async fn delete_hook(&self, repo: &RepoName, id: u64) -> ApiResult<()> {
        let path = format!("/repos/{}/hooks/{id}", repo_path(repo));
        self.http.delete(&path).await
    }

    async fn repository(&self, repo: &RepoName) -> ApiResult<RepoInfo> {
        let path = format!("/repos/{}", repo_path(repo));
        let dto: RepoDto = self.http.get(&path).await?;
        Ok(RepoInfo {
            default_branch: dto.default_branch.filter(|b| !b.is_empty()),
        })
    }

    async fn branches(&self, repo: &RepoName) -> ApiResult<Vec<Branch>> {
        let path = format!("/repos/{}/branches?per_page=100", repo_path(repo));
        let branches: Vec<BranchDto> = self.http.get_all(&path).await?;
        Ok(branches
            .into_iter()
            .map(|b| Branch {
                name: b.name,
                sha: b.commit.sha,
            })
            .collect())
    }

    async fn open_pull_requests(&self, repo: &RepoName) -> ApiResult<Vec<PullRequest>> {
        let path = format!("/repos/{}/pulls?state=open&per_page=100", repo_path(repo));
        let pulls: Vec<PullDto> = self.http.get_all(&path).await?;
        Ok(pulls
            .into_iter()
            .map(|p| {
                // A deleted fork leaves `head.repo` null: treat it as a fork (untrusted code).
                let from_fork = match (&p.head.repo, &p.base.repo) {
                    (Some(head), Some(base)) => {
                        !head.full_name.eq_ignore_ascii_case(&base.full_name)
                    }
                    _ => true,
                };
                PullRequest {
                    number: p.number,
                    head_sha: p.head.sha,
                    head_ref: p.head.git_ref,
                    base_ref: p.base.git_ref,
                    author: p.user.map(|u| u.login).unwrap_or_default(),
                    from_fork,
                }
            })
            .collect())
    }

    async fn permission(&self, repo: &RepoName, user: &str) -> ApiResult<Permission> {
        let path = format!(
            "/repos/{}/collaborators/{}/permission",
            repo_path(repo),
            encode_segment(user)
        );
        match self.http.get::<PermissionDto>(&path).await {
            Ok(dto) => Ok(permission_level(&dto.permission)),
            Err(ApiError::NotFound { .. }) => Ok(Permission::None),
            Err(err) => Err(err),
        }
    }

    async fn create_status(
        &self,
        repo: &RepoName,
        sha: &str,
        status: &CommitStatus,
    ) -> ApiResult<()> {
        let path = format!(
            "/repos/{}/statuses/{}",
            repo_path(repo),
            encode_segment(sha)
        );
        let body = StatusBody {
            state: status_state(status.state),
            context: &status.context,
            description: status.description.as_deref(),
            target_url: status.target_url.as_deref(),
        };
        self.http
            .send_json_no_answer(Method::POST, &path, &body)
            .await
    }

    async fn create_check_run(&self, repo: &RepoName, spec: &CheckRunSpec) -> ApiResult<CheckRun> {
        let path = format!("/repos/{}/check-runs", repo_path(repo));
        let dto: CheckRunDto = self
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
            .http
            .send_json(Method::PATCH, &path, &check_run_body(spec))
            .await?;
        Ok(CheckRun { id: dto.id })
    }
}
