//! The Gitea/Forgejo REST client (Gitea, Forgejo, Codeberg; `api-url` ends in `/api/v1`),
//! shaped on the official swagger description. The API mirrors GitHub's paths, with its own
//! hook body (`type` and a string map `config`), `limit` for page size and `commit.id` for
//! branch heads.

use reconix_spec::{RepoName, Secret};
use reqwest::Method;
use reqwest::header::AUTHORIZATION;
use serde::{Deserialize, Serialize};

use crate::api::{
    ApiError, ApiResult, Branch, CommitStatus, Forge, Hook, HookEvent, HookSpec, Permission,
    PullRequest, RepoInfo, StatusState,
};
use crate::http::{Http, RateLimitHeaders, RetryPolicy, encode_segment, repo_path};

/// A client for one Gitea or Forgejo API, authenticated with `Authorization: token <token>`.
#[derive(Debug, Clone)]
pub struct GiteaClient {
    http: Http,
}

impl GiteaClient {
    /// Creates a client for `api_url` (e.g. `https://codeberg.org/api/v1`) with the default
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
        let auth = format!("token {}", token.expose());
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
        // Gitea may expand `pull_request` into its sub-events when it reports a hook.
        let mut events: Vec<HookEvent> = dto
            .events
            .iter()
            .filter_map(|e| match e.as_str() {
                "push" => Some(HookEvent::Push),
                e if e.starts_with("pull_request") => Some(HookEvent::PullRequest),
                _ => None,
            })
            .collect();
        events.sort();
        events.dedup();
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
    /// `CreateHookOption.type` is required; `EditHookOption` has none.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    active: bool,
    events: Vec<&'static str>,
    config: HookConfigBody<'a>,
}

#[derive(Serialize)]
struct HookConfigBody<'a> {
    url: &'a str,
    content_type: &'static str,
    secret: &'a str,
}

fn hook_body(spec: &HookSpec, create: bool) -> HookBody<'_> {
    HookBody {
        kind: create.then_some("gitea"),
        active: true,
        events: spec.events.iter().map(|e| event_name(*e)).collect(),
        config: HookConfigBody {
            url: &spec.url,
            content_type: "json",
            secret: spec.secret.expose(),
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
    id: String,
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

impl Forge for GiteaClient {
    async fn list_hooks(&self, repo: &RepoName) -> ApiResult<Vec<Hook>> {
        let path = format!("/repos/{}/hooks?limit=50", repo_path(repo));
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
        let path = format!("/repos/{}/branches?limit=50", repo_path(repo));
        let branches: Vec<BranchDto> = self.http.get_all(&path).await?;
        Ok(branches
            .into_iter()
            .map(|b| Branch {
                name: b.name,
                sha: b.commit.id,
            })
            .collect())
    }

    async fn open_pull_requests(&self, repo: &RepoName) -> ApiResult<Vec<PullRequest>> {
        let path = format!("/repos/{}/pulls?state=open&limit=50", repo_path(repo));
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
}
