//! The GitLab REST client (gitlab.com and self-managed; `api-url` ends in `/api/v4`), shaped
//! on the official API docs. Projects are addressed by their URL-encoded path
//! (`/projects/group%2Fsub%2Fname`), hooks have one boolean per event, and the token goes in
//! `PRIVATE-TOKEN`.

use reconix_spec::{RepoName, Secret};
use reqwest::Method;
use reqwest::header::HeaderName;
use serde::{Deserialize, Serialize};

use crate::api::{
    ApiError, ApiResult, Branch, CommitStatus, Forge, Hook, HookEvent, HookSpec, Permission,
    PullRequest, RepoInfo, StatusState,
};
use crate::http::{Http, RateLimitHeaders, RetryPolicy, encode_segment};

/// A client for one GitLab API, authenticated with `PRIVATE-TOKEN: <token>`.
#[derive(Debug, Clone)]
pub struct GitlabClient {
    http: Http,
}

impl GitlabClient {
    /// Creates a client for `api_url` (e.g. `https://gitlab.com/api/v4`) with the default
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
        let http = Http::new(
            api_url,
            HeaderName::from_static("private-token"),
            token.expose(),
            policy,
            RateLimitHeaders::RateLimit,
        )?;
        Ok(Self { http })
    }
}

/// Returns `/projects/<url-encoded path>`.
fn project(repo: &RepoName) -> String {
    format!("/projects/{}", encode_segment(repo.as_str()))
}

/// Maps the daemon's states onto GitLab's (`pending`, `running`, `success`, `failed`,
/// `canceled`). GitLab has no error state, and an infrastructure error still means the commit
/// did not pass, so error is `failed`.
pub(crate) fn status_state(state: StatusState) -> &'static str {
    match state {
        StatusState::Pending => "pending",
        StatusState::Running => "running",
        StatusState::Success => "success",
        StatusState::Failure | StatusState::Error => "failed",
        StatusState::Cancelled => "canceled",
    }
}

/// Maps a GitLab access level: 40 (maintainer) and above administer the project, 30
/// (developer) may push, 10 to 29 (guest, planner, reporter) may read, below is no access.
pub(crate) fn permission_level(access_level: u32) -> Permission {
    match access_level {
        40.. => Permission::Admin,
        30..=39 => Permission::Write,
        10..=29 => Permission::Read,
        _ => Permission::None,
    }
}

#[derive(Deserialize)]
struct HookDto {
    id: u64,
    #[serde(default)]
    url: String,
    #[serde(default)]
    push_events: bool,
    #[serde(default)]
    merge_requests_events: bool,
    /// `executable`, `temporarily_disabled` or `disabled`; absent on older GitLab.
    alert_status: Option<String>,
}

impl From<HookDto> for Hook {
    fn from(dto: HookDto) -> Self {
        let mut events = Vec::new();
        if dto.push_events {
            events.push(HookEvent::Push);
        }
        if dto.merge_requests_events {
            events.push(HookEvent::PullRequest);
        }
        Self {
            id: dto.id,
            url: dto.url,
            events,
            active: dto
                .alert_status
                .as_deref()
                .is_none_or(|s| s == "executable"),
            // GitLab always delivers JSON.
            content_type: Some("json".to_owned()),
        }
    }
}

#[derive(Serialize)]
struct HookBody<'a> {
    url: &'a str,
    /// Always sent: GitLab drops the token when the URL changes.
    token: &'a str,
    push_events: bool,
    tag_push_events: bool,
    merge_requests_events: bool,
    enable_ssl_verification: bool,
}

fn hook_body(spec: &HookSpec) -> HookBody<'_> {
    let push = spec.events.contains(&HookEvent::Push);
    HookBody {
        url: &spec.url,
        token: spec.secret.expose(),
        push_events: push,
        // Tags come with pushes in the daemon's vocabulary.
        tag_push_events: push,
        merge_requests_events: spec.events.contains(&HookEvent::PullRequest),
        enable_ssl_verification: true,
    }
}

#[derive(Deserialize)]
struct ProjectDto {
    /// Null for an empty project.
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
struct MergeRequestDto {
    iid: u64,
    sha: String,
    source_branch: String,
    target_branch: String,
    author: Option<UserDto>,
    source_project_id: Option<u64>,
    target_project_id: Option<u64>,
}

#[derive(Deserialize)]
struct UserDto {
    username: String,
}

#[derive(Deserialize)]
struct UserIdDto {
    id: u64,
    username: String,
}

#[derive(Deserialize)]
struct MemberDto {
    access_level: u32,
}

#[derive(Serialize)]
struct StatusBody<'a> {
    state: &'static str,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_url: Option<&'a str>,
}

impl Forge for GitlabClient {
    async fn list_hooks(&self, repo: &RepoName) -> ApiResult<Vec<Hook>> {
        let path = format!("{}/hooks?per_page=100", project(repo));
        let hooks: Vec<HookDto> = self.http.get_all(&path).await?;
        Ok(hooks.into_iter().map(Hook::from).collect())
    }

    async fn create_hook(&self, repo: &RepoName, spec: &HookSpec) -> ApiResult<Hook> {
        let path = format!("{}/hooks", project(repo));
        let hook: HookDto = self
            .http
            .send_json(Method::POST, &path, &hook_body(spec))
            .await?;
        Ok(hook.into())
    }

    async fn patch_hook(&self, repo: &RepoName, id: u64, spec: &HookSpec) -> ApiResult<Hook> {
        let path = format!("{}/hooks/{id}", project(repo));
        let hook: HookDto = self
            .http
            .send_json(Method::PUT, &path, &hook_body(spec))
            .await?;
        Ok(hook.into())
    }

    async fn delete_hook(&self, repo: &RepoName, id: u64) -> ApiResult<()> {
        let path = format!("{}/hooks/{id}", project(repo));
        self.http.delete(&path).await
    }

    async fn repository(&self, repo: &RepoName) -> ApiResult<RepoInfo> {
        let dto: ProjectDto = self.http.get(&project(repo)).await?;
        Ok(RepoInfo {
            default_branch: dto.default_branch.filter(|b| !b.is_empty()),
        })
    }

    async fn branches(&self, repo: &RepoName) -> ApiResult<Vec<Branch>> {
        let path = format!("{}/repository/branches?per_page=100", project(repo));
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
        let path = format!("{}/merge_requests?state=opened&per_page=100", project(repo));
        let requests: Vec<MergeRequestDto> = self.http.get_all(&path).await?;
        Ok(requests
            .into_iter()
            .map(|mr| PullRequest {
                number: mr.iid,
                head_sha: mr.sha,
                head_ref: mr.source_branch,
                base_ref: mr.target_branch,
                author: mr.author.map(|a| a.username).unwrap_or_default(),
                // Unknown project ids count as a fork: untrusted until shown otherwise.
                from_fork: match (mr.source_project_id, mr.target_project_id) {
                    (Some(source), Some(target)) => source != target,
                    _ => true,
                },
            })
            .collect())
    }

    async fn permission(&self, repo: &RepoName, user: &str) -> ApiResult<Permission> {
        // The members endpoint takes a numeric user id, so look the username up first.
        let path = format!("/users?username={}", encode_segment(user));
        let users: Vec<UserIdDto> = self.http.get(&path).await?;
        let Some(found) = users
            .into_iter()
            .find(|u| u.username.eq_ignore_ascii_case(user))
        else {
            return Ok(Permission::None);
        };
        // `members/all` includes inherited (group) and invited members.
        let path = format!("{}/members/all/{}", project(repo), found.id);
        match self.http.get::<MemberDto>(&path).await {
            Ok(member) => Ok(permission_level(member.access_level)),
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
        let path = format!("{}/statuses/{}", project(repo), encode_segment(sha));
        let body = StatusBody {
            state: status_state(status.state),
            name: &status.context,
            description: status.description.as_deref(),
            target_url: status.target_url.as_deref(),
        };
        self.http
            .send_json_no_answer(Method::POST, &path, &body)
            .await
    }
}
