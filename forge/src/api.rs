//! The REST port: [`Forge`], the operations the daemon needs from a forge's API, with
//! normalised types so that loops never see a forge's own vocabulary.
//!
//! Each kind has a client ([`crate::GithubClient`], [`crate::GitlabClient`],
//! [`crate::GiteaClient`]) that maps these types to the forge's endpoints and back.

use std::future::Future;
use std::time::Duration;

use reconix_spec::{RepoName, Secret};

/// The result type of the REST clients.
pub type ApiResult<T> = std::result::Result<T, ApiError>;

/// Why a call to a forge's API failed. Messages never contain the token nor a hook's secret.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The forge answered 401: the token is missing, wrong, expired or revoked. Never retried:
    /// the caller pauses all calls to this forge until the token works again.
    #[error("unauthorized: the forge rejected the token for {method} {path}")]
    Unauthorized {
        /// The HTTP method of the call.
        method: String,
        /// The path of the call, without the base URL.
        path: String,
    },
    /// The forge answered 403 or 429 with a rate limit; the caller waits `retry_after` before
    /// calling again. Not retried inside the client.
    #[error("rate limited: retry after {}s", retry_after.as_secs())]
    RateLimited {
        /// How long to wait, from `Retry-After` or the rate-limit reset time.
        retry_after: Duration,
    },
    /// The forge answered 404: the repository, hook, user or member does not exist (or the
    /// token may not see it).
    #[error("not found: {method} {path}")]
    NotFound {
        /// The HTTP method of the call.
        method: String,
        /// The path of the call, without the base URL.
        path: String,
    },
    /// The forge kept answering 5xx after the retries.
    #[error("server error {status} for {method} {path}")]
    Server {
        /// The last status received.
        status: u16,
        /// The HTTP method of the call.
        method: String,
        /// The path of the call, without the base URL.
        path: String,
    },
    /// The forge refused the request with another 4xx status (e.g. 403 without a rate limit,
    /// or 422 for a body it does not accept).
    #[error("request refused with status {status} for {method} {path}")]
    Refused {
        /// The status received.
        status: u16,
        /// The HTTP method of the call.
        method: String,
        /// The path of the call, without the base URL.
        path: String,
    },
    /// The forge could not be reached, or did not answer in time, after the retries.
    #[error("transport error for {method} {path}")]
    Transport {
        /// The HTTP method of the call.
        method: String,
        /// The path of the call, without the base URL.
        path: String,
        /// What went wrong underneath.
        #[source]
        source: reqwest::Error,
    },
    /// The forge's answer is not the JSON this client expects.
    #[error("undecodable answer for {method} {path}")]
    Decode {
        /// The HTTP method of the call.
        method: String,
        /// The path of the call, without the base URL.
        path: String,
        /// What serde found wrong.
        #[source]
        source: serde_json::Error,
    },
    /// A `Link` header pointed outside the API's base URL; following it would send the token
    /// to another host.
    #[error("refusing to follow a pagination link outside the api url for {path}")]
    ForeignLink {
        /// The path of the call that returned the link.
        path: String,
    },
    /// The client could not be built (e.g. the base URL or token cannot go into a request).
    #[error("cannot build the http client: {reason}")]
    Build {
        /// What is wrong.
        reason: String,
    },
    /// The operation does not exist on this forge kind (check runs outside GitHub).
    #[error("{operation} are not supported by this forge kind")]
    Unsupported {
        /// The operation that was called.
        operation: &'static str,
    },
}

impl ApiError {
    /// Returns true for the errors a client retries itself: 5xx and transport failures.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Server { .. } | Self::Transport { .. })
    }
}

/// The events a hook delivers, in the daemon's vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookEvent {
    /// Branch and tag pushes (GitLab: `push_events` and `tag_push_events`).
    Push,
    /// Pull (merge) request changes (GitLab: `merge_requests_events`).
    PullRequest,
}

/// The hook the daemon wants on a repository.
#[derive(Debug, Clone)]
pub struct HookSpec {
    /// Where the forge delivers, `<external-url>/webhooks/<forge-name>`.
    pub url: String,
    /// The secret that signs deliveries; shown as `<redacted>` by `Debug`.
    pub secret: Secret,
    /// The events to deliver.
    pub events: Vec<HookEvent>,
}

/// A hook as the forge reports it. The secret is never read back (forges mask it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// The forge's id of the hook.
    pub id: u64,
    /// Where the hook delivers.
    pub url: String,
    /// The events it delivers that the daemon knows; others are dropped.
    pub events: Vec<HookEvent>,
    /// Whether the forge sends deliveries.
    pub active: bool,
    /// The payload content type (`json`, `form`) when the forge reports one.
    pub content_type: Option<String>,
}

/// What the daemon needs to know about a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoInfo {
    /// The default branch, e.g. `main`; `None` for an empty repository (GitLab reports null,
    /// Gitea an empty string).
    pub default_branch: Option<String>,
}

/// A branch and its head commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branch {
    /// The branch name, without `refs/heads/`.
    pub name: String,
    /// The head commit id (40 hex digits).
    pub sha: String,
}

/// An open pull (merge) request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    /// The number shown by the forge (GitLab: the merge request's `iid`).
    pub number: u64,
    /// The head commit id.
    pub head_sha: String,
    /// The source branch name.
    pub head_ref: String,
    /// The target branch name.
    pub base_ref: String,
    /// The author's login (GitLab: username).
    pub author: String,
    /// True when the head lives in another repository (or its repository was deleted).
    pub from_fork: bool,
}

/// A user's permission on a repository, normalised across forges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    /// No access, or not a member.
    None,
    /// May read (GitHub read/triage; GitLab access level below 30).
    Read,
    /// May push (GitHub write/maintain; GitLab developer/maintainer; Gitea write).
    Write,
    /// Administers the repository (GitHub admin; GitLab owner; Gitea admin/owner).
    Admin,
}

impl Permission {
    /// Returns true for write or higher, the level the PR trust gate requires.
    pub fn can_write(self) -> bool {
        self >= Self::Write
    }
}

/// The state of a commit status in the daemon's vocabulary; each client maps it to its forge's.
///
/// | state | GitHub | GitLab | Gitea/Forgejo |
/// |---|---|---|---|
/// | `Pending` | `pending` | `pending` | `pending` |
/// | `Running` | `pending` (no running state) | `running` | `pending` (no running state) |
/// | `Success` | `success` | `success` | `success` |
/// | `Failure` | `failure` | `failed` | `failure` |
/// | `Error` | `error` | `failed` (no error state) | `error` |
/// | `Cancelled` | `error` (not the code's fault) | `canceled` | `warning` (neither pass nor fail) |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StatusState {
    /// Waiting to start.
    Pending,
    /// Running.
    Running,
    /// Finished successfully.
    Success,
    /// Finished, and the code is at fault (build or evaluation failed).
    Failure,
    /// Could not finish for reasons outside the code (infrastructure).
    Error,
    /// Stopped before finishing, e.g. superseded by a newer push.
    Cancelled,
}

/// A commit status to post.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct CommitStatus {
    /// The state.
    pub state: StatusState,
    /// The context (GitLab: `name`), e.g. `reconix/packages.x86_64-linux.hello`.
    pub context: String,
    /// A one-line description.
    pub description: Option<String>,
    /// A link to the job's page.
    pub target_url: Option<String>,
}

/// The status of a GitHub check run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckStatus {
    /// Not started.
    Queued,
    /// Running.
    InProgress,
    /// Finished; a [`CheckConclusion`] is then required.
    Completed,
}

/// The conclusion of a completed GitHub check run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckConclusion {
    /// Everything passed.
    Success,
    /// Something failed.
    Failure,
    /// Stopped before the end.
    Cancelled,
    /// Finished without a verdict.
    Neutral,
    /// Did not run.
    Skipped,
    /// Took too long.
    TimedOut,
}

/// The output shown on a check run's page.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct CheckOutput {
    /// The title.
    pub title: String,
    /// The summary, in markdown (at most 65,535 characters on GitHub).
    pub summary: String,
}

/// A GitHub check run to create or update.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct CheckRunSpec {
    /// The check's name.
    pub name: String,
    /// The commit it reports on.
    pub head_sha: String,
    /// Its status.
    pub status: CheckStatus,
    /// Its conclusion, required when completed.
    pub conclusion: Option<CheckConclusion>,
    /// A link to the details.
    pub details_url: Option<String>,
    /// Its output.
    pub output: Option<CheckOutput>,
}

/// A GitHub check run as created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRun {
    /// GitHub's id of the check run, used to update it.
    pub id: u64,
}

/// The REST operations the daemon needs from a forge (STYLE §4: a port, generic, no `dyn`).
///
/// Every method may fail with [`ApiError::Unauthorized`], [`ApiError::RateLimited`],
/// [`ApiError::NotFound`], [`ApiError::Server`], [`ApiError::Transport`] or
/// [`ApiError::Decode`]; 5xx and transport errors are retried inside before they are returned.
pub trait Forge: Send + Sync + 'static {
    /// Lists the repository's hooks (all pages).
    fn list_hooks(&self, repo: &RepoName) -> impl Future<Output = ApiResult<Vec<Hook>>> + Send;

    /// Creates an active JSON hook.
    fn create_hook(
        &self,
        repo: &RepoName,
        spec: &HookSpec,
    ) -> impl Future<Output = ApiResult<Hook>> + Send;

    /// Replaces a hook's URL, secret and events, and makes it active with JSON content.
    fn patch_hook(
        &self,
        repo: &RepoName,
        id: u64,
        spec: &HookSpec,
    ) -> impl Future<Output = ApiResult<Hook>> + Send;

    /// Deletes a hook.
    fn delete_hook(&self, repo: &RepoName, id: u64) -> impl Future<Output = ApiResult<()>> + Send;

    /// Returns the repository's default branch.
    fn repository(&self, repo: &RepoName) -> impl Future<Output = ApiResult<RepoInfo>> + Send;

    /// Lists the repository's branches and their heads (all pages).
    fn branches(&self, repo: &RepoName) -> impl Future<Output = ApiResult<Vec<Branch>>> + Send;

    /// Lists the open pull (merge) requests (all pages).
    fn open_pull_requests(
        &self,
        repo: &RepoName,
    ) -> impl Future<Output = ApiResult<Vec<PullRequest>>> + Send;

    /// Returns a user's permission on the repository; an unknown user or non-member is
    /// [`Permission::None`], not an error.
    fn permission(
        &self,
        repo: &RepoName,
        user: &str,
    ) -> impl Future<Output = ApiResult<Permission>> + Send;

    /// Posts a commit status on `sha`, with the state mapped to the forge's vocabulary.
    fn create_status(
        &self,
        repo: &RepoName,
        sha: &str,
        status: &CommitStatus,
    ) -> impl Future<Output = ApiResult<()>> + Send;

    /// Creates a check run (GitHub only; others return [`ApiError::Unsupported`]).
    fn create_check_run(
        &self,
        repo: &RepoName,
        spec: &CheckRunSpec,
    ) -> impl Future<Output = ApiResult<CheckRun>> + Send {
        let _ = (repo, spec);
        async {
            Err(ApiError::Unsupported {
                operation: "check runs",
            })
        }
    }

    /// Updates a check run (GitHub only; others return [`ApiError::Unsupported`]).
    fn update_check_run(
        &self,
        repo: &RepoName,
        id: u64,
        spec: &CheckRunSpec,
    ) -> impl Future<Output = ApiResult<CheckRun>> + Send {
        let _ = (repo, id, spec);
        async {
            Err(ApiError::Unsupported {
                operation: "check runs",
            })
        }
    }
}
