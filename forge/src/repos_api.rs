//! The REST surface GitHub and Gitea/Forgejo share: `/repos/{owner}/{repo}/…` with the same
//! hooks, branches, pulls, collaborator-permission and statuses endpoints and nearly the same
//! JSON. Gitea copied GitHub's API; what differs is collected in a [`Dialect`], so the calls and
//! their DTOs exist once.

use reqwest::Method;
use serde::{Deserialize, Serialize};

use crate::api::{
    ApiError, ApiResult, Branch, CommitStatus, Hook, HookEvent, HookSpec, Permission, PullRequest,
    RepoInfo, StatusState,
};
use crate::http::{Http, encode_segment, repo_path};
use reconix_spec::RepoName;

/// What one GitHub-shaped API does its own way.
#[derive(Debug)]
pub(crate) struct Dialect {
    /// The query parameter asking for the largest page (`per_page=100`, `limit=50`).
    pub(crate) page: &'static str,
    /// The hook event name sent for an event.
    pub(crate) event_name: fn(HookEvent) -> &'static str,
    /// The event an event name reported in a hook stands for, if any.
    pub(crate) hook_event: fn(&str) -> Option<HookEvent>,
    /// The commit-status state sent for a normalised state.
    pub(crate) status_state: fn(StatusState) -> &'static str,
    /// The normalised level of a collaborator permission string.
    pub(crate) permission_level: fn(&str) -> Permission,
    /// `name` sent when creating a hook (GitHub: `web`).
    pub(crate) create_name: Option<&'static str>,
    /// `type` sent when creating a hook (Gitea: `gitea`).
    pub(crate) create_type: Option<&'static str>,
    /// `config.insecure_ssl` sent with every hook (GitHub: `"0"`).
    pub(crate) insecure_ssl: Option<&'static str>,
}

/// A GitHub-shaped API spoken in one dialect.
#[derive(Debug, Clone)]
pub(crate) struct RepoApi {
    pub(crate) http: Http,
    dialect: &'static Dialect,
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

#[derive(Serialize)]
struct HookBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'static str>,
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
    #[serde(skip_serializing_if = "Option::is_none")]
    insecure_ssl: Option<&'static str>,
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
    /// GitHub calls the branch head `sha`, Gitea `id`.
    #[serde(alias = "id")]
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

impl RepoApi {
    /// Speaks `dialect` over `http`.
    pub(crate) fn new(http: Http, dialect: &'static Dialect) -> Self {
        Self { http, dialect }
    }

    fn hook(&self, dto: HookDto) -> Hook {
        // A forge may report one subscribed event as several sub-events.
        let mut events: Vec<HookEvent> = dto
            .events
            .iter()
            .filter_map(|e| (self.dialect.hook_event)(e))
            .collect();
        events.sort();
        events.dedup();
        Hook {
            id: dto.id,
            url: dto.config.url.unwrap_or_default(),
            events,
            active: dto.active,
            content_type: dto.config.content_type,
        }
    }

    fn hook_body<'a>(&self, spec: &'a HookSpec, create: bool) -> HookBody<'a> {
        let d = self.dialect;
        HookBody {
            name: d.create_name.filter(|_| create),
            kind: d.create_type.filter(|_| create),
            active: true,
            events: spec.events.iter().map(|e| (d.event_name)(*e)).collect(),
            config: HookConfigBody {
                url: &spec.url,
                content_type: "json",
                secret: spec.secret.expose(),
                insecure_ssl: d.insecure_ssl,
            },
        }
    }

    pub(crate) async fn list_hooks(&self, repo: &RepoName) -> ApiResult<Vec<Hook>> {
        let path = format!("/repos/{}/hooks?{}", repo_path(repo), self.dialect.page);
        let hooks: Vec<HookDto> = self.http.get_all(&path).await?;
        Ok(hooks.into_iter().map(|h| self.hook(h)).collect())
    }

    pub(crate) async fn create_hook(&self, repo: &RepoName, spec: &HookSpec) -> ApiResult<Hook> {
        let path = format!("/repos/{}/hooks", repo_path(repo));
        let body = self.hook_body(spec, true);
        let hook: HookDto = self.http.send_json(Method::POST, &path, &body).await?;
        Ok(self.hook(hook))
    }

    pub(crate) async fn patch_hook(
        &self,
        repo: &RepoName,
        id: u64,
        spec: &HookSpec,
    ) -> ApiResult<Hook> {
        let path = format!("/repos/{}/hooks/{id}", repo_path(repo));
        let body = self.hook_body(spec, false);
        let hook: HookDto = self.http.send_json(Method::PATCH, &path, &body).await?;
        Ok(self.hook(hook))
    }

    pub(crate) async fn delete_hook(&self, repo: &RepoName, id: u64) -> ApiResult<()> {
        let path = format!("/repos/{}/hooks/{id}", repo_path(repo));
        self.http.delete(&path).await
    }

    pub(crate) async fn repository(&self, repo: &RepoName) -> ApiResult<RepoInfo> {
        let path = format!("/repos/{}", repo_path(repo));
        let dto: RepoDto = self.http.get(&path).await?;
        Ok(RepoInfo {
            // An empty repository has none: GitHub sends null, Gitea an empty string.
            default_branch: dto.default_branch.filter(|b| !b.is_empty()),
        })
    }

    pub(crate) async fn branches(&self, repo: &RepoName) -> ApiResult<Vec<Branch>> {
        let path = format!("/repos/{}/branches?{}", repo_path(repo), self.dialect.page);
        let branches: Vec<BranchDto> = self.http.get_all(&path).await?;
        Ok(branches
            .into_iter()
            .map(|b| Branch {
                name: b.name,
                sha: b.commit.sha,
            })
            .collect())
    }

    pub(crate) async fn open_pull_requests(&self, repo: &RepoName) -> ApiResult<Vec<PullRequest>> {
        let path = format!(
            "/repos/{}/pulls?state=open&{}",
            repo_path(repo),
            self.dialect.page
        );
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

    pub(crate) async fn permission(&self, repo: &RepoName, user: &str) -> ApiResult<Permission> {
        let path = format!(
            "/repos/{}/collaborators/{}/permission",
            repo_path(repo),
            encode_segment(user)
        );
        match self.http.get::<PermissionDto>(&path).await {
            Ok(dto) => Ok((self.dialect.permission_level)(&dto.permission)),
            Err(ApiError::NotFound { .. }) => Ok(Permission::None),
            Err(err) => Err(err),
        }
    }

    pub(crate) async fn create_status(
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
            state: (self.dialect.status_state)(status.state),
            context: &status.context,
            description: status.description.as_deref(),
            target_url: status.target_url.as_deref(),
        };
        self.http
            .send_json_no_answer(Method::POST, &path, &body)
            .await
    }
}
