//! A fake forge for tests: one real HTTP server on `127.0.0.1:0` that emulates the parts of
//! GitHub (Enterprise layout, `/api/v3`), GitLab (`/api/v4`) or Gitea/Forgejo (`/api/v1`) that
//! reconix's REST clients call, serves the repositories' git data over smart HTTP (through
//! `git http-backend`), and sends webhook deliveries built from the forges' real example
//! payloads.
//!
//! Every request body the fake receives and every JSON answer it sends is validated against the
//! forge's official schema (subsets extracted into `schemas/`, see `schemas/PROVENANCE.md`); a
//! request that does not validate is refused with 422, and every violation is kept for
//! [`FakeForge::assert_no_violations`].
//!
//! State lives behind one `std::sync::Mutex` that is never held across an `.await`, so every
//! method can be called from async tests.
//!
//! ```no_run
//! # async fn demo(bare_repo: &std::path::Path, head: &str) -> std::io::Result<()> {
//! use reconix_fakeforge::{FakeForge, FakePermission, FakePr, ForgeKind, PrAction};
//!
//! let forge = FakeForge::start(ForgeKind::Github).await?;
//! forge.add_repo("org/app", bare_repo, "main");
//! forge.set_permission("org/app", "alice", FakePermission::Write);
//! // Point the daemon at forge.api_url() with forge.token(); it fetches forge.clone_url("org/app").
//! let number = forge.open_pull_request(
//!     "org/app",
//!     FakePr {
//!         number: 0,
//!         author: "alice".into(),
//!         head_ref: "feature".into(),
//!         head_sha: head.into(),
//!         base_ref: "main".into(),
//!         from_fork: false,
//!     },
//! );
//! // Once the daemon created its hook:
//! let sent = forge.deliver_pull_request("org/app", number, PrAction::Opened).await;
//! assert!(sent.iter().all(|d| d.status == 200));
//! forge.assert_no_violations();
//! # Ok(())
//! # }
//! ```

mod deliver;
mod git;
mod reply;
mod rest;
mod schema;
mod server;
mod state;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use axum::http::Method;
pub use reconix_spec::ForgeKind;

use crate::state::{PrState, RepoState, State};

/// A handle to a running fake forge; cloning it is cheap and every clone sees the same state.
/// The server stops when the runtime that started it shuts down.
#[derive(Debug, Clone)]
pub struct FakeForge {
    inner: Arc<Inner>,
}

/// What the server's handlers share with the handle.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) kind: ForgeKind,
    pub(crate) addr: SocketAddr,
    pub(crate) state: Mutex<State>,
    pub(crate) http: reqwest::Client,
}

impl Inner {
    /// Locks the state. A poisoned lock (a panicking test thread) still yields the data: the
    /// fake's state stays consistent between statements.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn web_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn api_url(&self) -> String {
        let version = match self.kind {
            ForgeKind::Gitlab => "v4",
            ForgeKind::Gitea => "v1",
            ForgeKind::Github | ForgeKind::Local => "v3",
        };
        format!("{}/api/{version}", self.web_url())
    }
}

/// A user's permission on a repository, mapped to each forge's vocabulary: GitHub
/// `admin`/`write`/`read`/`none`, GitLab access level 50/30/20 or 404 for `None`, Gitea
/// `admin`/`write`/`read`/`none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FakePermission {
    /// Not a collaborator (the default for unknown users).
    #[default]
    None,
    /// May read.
    Read,
    /// May push.
    Write,
    /// Administers the repository (GitLab: owner).
    Admin,
}

/// A pull (merge) request to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakePr {
    /// The number (GitLab: `iid`); 0 picks the next free one.
    pub number: u64,
    /// The author's login.
    pub author: String,
    /// The source branch.
    pub head_ref: String,
    /// The head commit, which must exist in the bare repository.
    pub head_sha: String,
    /// The target branch.
    pub base_ref: String,
    /// True when the head lives in the author's fork.
    pub from_fork: bool,
}

/// A webhook as the fake stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeHook {
    /// The forge's id (ignored by [`FakeForge::add_hook`], which assigns one).
    pub id: u64,
    /// Where deliveries go.
    pub url: String,
    /// Normalised event names: `push`, `pull_request`.
    pub events: Vec<String>,
    /// Whether deliveries are sent.
    pub active: bool,
    /// `json` or `form` (GitLab: always `json`).
    pub content_type: String,
    /// The secret deliveries are signed with (GitLab: sent as `X-Gitlab-Token`).
    pub secret: Option<String>,
}

/// A commit status as posted, with the forge's raw state string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeStatus {
    /// The context (GitLab: `name`).
    pub context: String,
    /// The raw state, e.g. `pending`, `failed` (GitLab), `warning` (Gitea).
    pub state: String,
    /// The description.
    pub description: Option<String>,
    /// The link.
    pub target_url: Option<String>,
}

/// A GitHub check run in its current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeCheckRun {
    /// GitHub's id.
    pub id: u64,
    /// The check's name.
    pub name: String,
    /// The commit.
    pub head_sha: String,
    /// `queued`, `in_progress` or `completed`.
    pub status: String,
    /// The conclusion once completed.
    pub conclusion: Option<String>,
    /// The details link.
    pub details_url: Option<String>,
    /// The output's title.
    pub output_title: Option<String>,
    /// The output's summary.
    pub output_summary: Option<String>,
    /// How many times it was updated (PATCH) after creation.
    pub updates: u32,
}

/// One request the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The HTTP method.
    pub method: Method,
    /// The path with its query, as sent (percent-encoding kept).
    pub path: String,
    /// The status the fake answered.
    pub status: u16,
    /// When the request arrived.
    pub time: Instant,
}

/// A fault to inject into matching API or git requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// Only requests with this method (any when `None`).
    pub method: Option<Method>,
    /// Only requests whose path (with query) contains this (any when `None`).
    pub path_contains: Option<String>,
    /// What happens.
    pub kind: FaultKind,
    /// How many matching requests it affects; each one consumes one.
    pub times: usize,
}

impl Fault {
    /// A fault on every request for `times` requests.
    pub fn new(kind: FaultKind, times: usize) -> Self {
        Self {
            method: None,
            path_contains: None,
            kind,
            times,
        }
    }

    /// Restricts the fault to requests with `method`.
    #[must_use]
    pub fn method(mut self, method: Method) -> Self {
        self.method = Some(method);
        self
    }

    /// Restricts the fault to requests whose path contains `needle`.
    #[must_use]
    pub fn path_contains(mut self, needle: impl Into<String>) -> Self {
        self.path_contains = Some(needle.into());
        self
    }
}

/// What an injected fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Answer this status with a plain-text body (e.g. 401, 502).
    Status(u16),
    /// Answer 429 with `Retry-After`.
    RateLimited {
        /// The `Retry-After` value in seconds.
        retry_after_secs: u64,
    },
    /// Hold the request this long (longer than the client's timeout), then answer 504.
    Timeout(Duration),
}

/// A pull request event to deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrAction {
    /// Opened.
    Opened,
    /// New commits (GitHub `synchronize`, Gitea `synchronized`, GitLab `update` with `oldrev`).
    Synchronize,
    /// Closed without merging.
    Closed,
    /// Reopened.
    Reopened,
}

/// One webhook delivery the fake sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The hook it was sent for.
    pub hook_id: u64,
    /// Where it was sent.
    pub url: String,
    /// The delivery id header's value.
    pub delivery_id: String,
    /// Every header sent, in order.
    pub headers: Vec<(String, String)>,
    /// The exact body.
    pub body: Vec<u8>,
    /// The receiver's status; 0 when the request failed (connection refused, timeout).
    pub status: u16,
}

impl Delivery {
    /// Returns the first header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl FakeForge {
    /// Starts a fake `kind` forge (`github`, `gitlab` or `gitea`) on `127.0.0.1:0`.
    ///
    /// # Errors
    /// Fails when the kind is `local`, the port cannot be bound, or the HTTP client for
    /// deliveries cannot be built.
    pub async fn start(kind: ForgeKind) -> std::io::Result<Self> {
        if kind.is_local() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a local forge has no server to fake",
            ));
        }
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(std::io::Error::other)?;
        let inner = Arc::new(Inner {
            kind,
            addr,
            state: Mutex::new(State::new(random_token())),
            http,
        });
        let app = server::router(inner.clone());
        tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::error!(error = %err, "fake forge server stopped");
            }
        });
        Ok(Self { inner })
    }

    /// Returns the kind this fake emulates.
    pub fn kind(&self) -> ForgeKind {
        self.inner.kind
    }

    /// Returns the API base: `http://ADDR/api/v3` (GitHub Enterprise layout), `/api/v4`
    /// (GitLab) or `/api/v1` (Gitea).
    pub fn api_url(&self) -> String {
        self.inner.api_url()
    }

    /// Returns `http://ADDR`.
    pub fn web_url(&self) -> String {
        self.inner.web_url()
    }

    /// Returns the token the API accepts now (random per start).
    pub fn token(&self) -> String {
        self.inner.lock().token.clone()
    }

    /// Rotates the accepted token; the old one then gets 401.
    pub fn set_token(&self, token: &str) {
        token.clone_into(&mut self.inner.lock().token);
    }

    /// Caps the page size of every list (forges cap it too: GitHub and GitLab at 100, Gitea
    /// at 50), so that tests can exercise pagination with few items.
    pub fn set_max_per_page(&self, max: usize) {
        self.inner.lock().max_per_page = max.max(1);
    }

    /// Adds a repository `owner/name` (GitLab: `group/…/name`) whose git data is the bare
    /// repository `git_dir`; its branches are read live with `git for-each-ref`.
    pub fn add_repo(&self, name: &str, git_dir: &Path, default_branch: &str) {
        let mut state = self.inner.lock();
        state.next_repo_id += 1;
        let id = state.next_repo_id;
        state.repos.insert(
            name.to_owned(),
            RepoState::new(id, name, git_dir, default_branch),
        );
    }

    /// Returns `http://ADDR/owner/name.git`, the URL to fetch the repository from.
    pub fn clone_url(&self, name: &str) -> String {
        format!("{}/{name}.git", self.web_url())
    }

    /// Sets `user`'s permission on `repo`.
    pub fn set_permission(&self, repo: &str, user: &str, level: FakePermission) {
        let mut state = self.inner.lock();
        state.user_id(user);
        if let Some(r) = state.repo_mut(repo) {
            r.permissions.insert(user.to_ascii_lowercase(), level);
        }
    }

    /// Opens a pull (merge) request and points `refs/pull/N/head` (GitHub, Gitea) or
    /// `refs/merge-requests/N/head` (GitLab) at its head in the bare repository. Returns its
    /// number (0 when the repository is unknown).
    pub fn open_pull_request(&self, repo: &str, pr: FakePr) -> u64 {
        let (git_dir, number, sha) = {
            let mut state = self.inner.lock();
            state.user_id(&pr.author);
            let Some(r) = state.repo_mut(repo) else {
                return 0;
            };
            let number = if pr.number == 0 {
                r.prs.keys().max().map_or(1, |n| n + 1)
            } else {
                pr.number
            };
            let sha = pr.head_sha.clone();
            r.prs.insert(
                number,
                PrState {
                    pr: FakePr { number, ..pr },
                    open: true,
                    previous_sha: None,
                },
            );
            (r.git_dir.clone(), number, sha)
        };
        self.move_pr_ref(&git_dir, number, &sha);
        number
    }

    /// Moves an open pull request's head (and its ref) to `head_sha`.
    pub fn update_pull_request(&self, repo: &str, number: u64, head_sha: &str) {
        let git_dir = {
            let mut state = self.inner.lock();
            let Some(r) = state.repo_mut(repo) else {
                return;
            };
            let git_dir = r.git_dir.clone();
            let Some(pr) = r.prs.get_mut(&number) else {
                return;
            };
            pr.previous_sha = Some(std::mem::replace(&mut pr.pr.head_sha, head_sha.to_owned()));
            git_dir
        };
        self.move_pr_ref(&git_dir, number, head_sha);
    }

    /// Closes a pull request; it no longer appears among the open ones.
    pub fn close_pull_request(&self, repo: &str, number: u64) {
        let mut state = self.inner.lock();
        if let Some(pr) = state.repo_mut(repo).and_then(|r| r.prs.get_mut(&number)) {
            pr.open = false;
        }
    }

    /// Reopens a closed pull request.
    pub fn reopen_pull_request(&self, repo: &str, number: u64) {
        let mut state = self.inner.lock();
        if let Some(pr) = state.repo_mut(repo).and_then(|r| r.prs.get_mut(&number)) {
            pr.open = true;
        }
    }

    fn move_pr_ref(&self, git_dir: &Path, number: u64, sha: &str) {
        let name = match self.inner.kind {
            ForgeKind::Gitlab => format!("refs/merge-requests/{number}/head"),
            ForgeKind::Github | ForgeKind::Gitea | ForgeKind::Local => {
                format!("refs/pull/{number}/head")
            }
        };
        if let Err(err) = git::update_ref(git_dir, &name, sha) {
            tracing::warn!(error = %err, git_ref = name, "cannot move the pull request ref");
        }
    }

    /// Returns the repository's hooks, secrets included.
    pub fn hooks(&self, repo: &str) -> Vec<FakeHook> {
        let state = self.inner.lock();
        state
            .repo(repo)
            .map(|r| r.hooks.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Adds a hook behind the daemon's back (e.g. someone else's); returns its new id.
    pub fn add_hook(&self, repo: &str, hook: FakeHook) -> u64 {
        let mut state = self.inner.lock();
        state.next_hook_id += 1;
        let id = state.next_hook_id;
        if let Some(r) = state.repo_mut(repo) {
            r.hooks.insert(id, FakeHook { id, ..hook });
        }
        id
    }

    /// Changes a hook behind the daemon's back (drift injection). `f` runs under the state's
    /// lock: it must not call the fake.
    pub fn tamper_hook(&self, repo: &str, id: u64, f: impl FnOnce(&mut FakeHook)) {
        let mut state = self.inner.lock();
        if let Some(hook) = state.repo_mut(repo).and_then(|r| r.hooks.get_mut(&id)) {
            f(hook);
            hook.id = id;
        }
    }

    /// Returns the newest status per context posted on `sha`, in order of first appearance.
    pub fn statuses(&self, repo: &str, sha: &str) -> Vec<FakeStatus> {
        let mut newest: Vec<FakeStatus> = Vec::new();
        for status in self.status_history(repo, sha) {
            match newest.iter_mut().find(|s| s.context == status.context) {
                Some(slot) => *slot = status,
                None => newest.push(status),
            }
        }
        newest
    }

    /// Returns every status posted on `sha`, in order.
    pub fn status_history(&self, repo: &str, sha: &str) -> Vec<FakeStatus> {
        let state = self.inner.lock();
        state
            .repo(repo)
            .map(|r| {
                r.statuses
                    .iter()
                    .filter(|(s, _)| s.eq_ignore_ascii_case(sha))
                    .map(|(_, status)| status.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Returns the repository's GitHub check runs in their current state.
    pub fn check_runs(&self, repo: &str) -> Vec<FakeCheckRun> {
        let state = self.inner.lock();
        state
            .repo(repo)
            .map(|r| r.check_runs.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Returns every request received so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.inner.lock().calls.clone()
    }

    /// Injects a fault into the next `fault.times` matching requests.
    pub fn inject(&self, fault: Fault) {
        self.inner.lock().faults.push(fault);
    }

    /// Returns every request or response that did not validate against the schemas.
    pub fn schema_violations(&self) -> Vec<String> {
        self.inner.lock().violations.clone()
    }

    /// Panics, listing them, when any request or response did not validate.
    #[allow(
        clippy::panic,
        reason = "a test assertion: failing loudly is its purpose, and no daemon path calls it"
    )]
    pub fn assert_no_violations(&self) {
        let violations = self.schema_violations();
        if !violations.is_empty() {
            panic!(
                "{} schema violation(s) on the fake {} forge:\n{}",
                violations.len(),
                self.inner.kind,
                violations.join("\n")
            );
        }
    }

    /// Delivers a push of `git_ref` from `before` to `after` to every active hook of `repo`
    /// that subscribes to pushes, and returns what was sent.
    pub async fn deliver_push(
        &self,
        repo: &str,
        git_ref: &str,
        before: &str,
        after: &str,
    ) -> Vec<Delivery> {
        deliver::push(&self.inner, repo, git_ref, before, after).await
    }

    /// Delivers a pull request event for PR `number` (as the fake knows it now) to every
    /// active hook of `repo` that subscribes to pull requests.
    pub async fn deliver_pull_request(
        &self,
        repo: &str,
        number: u64,
        action: PrAction,
    ) -> Vec<Delivery> {
        deliver::pull_request(&self.inner, repo, number, action).await
    }

    /// Delivers GitHub's `ping` event to one hook (GitHub sends it when a hook is created).
    /// Returns `None` outside GitHub or for an unknown hook.
    pub async fn deliver_ping(&self, repo: &str, hook_id: u64) -> Option<Delivery> {
        deliver::ping(&self.inner, repo, hook_id).await
    }

    /// Sends a delivery again, byte for byte with the same headers (same delivery id), and
    /// returns the receiver's status (0 when the request failed).
    pub async fn redeliver(&self, delivery: &Delivery) -> u16 {
        deliver::send(&self.inner, delivery).await
    }
}

/// A random 40-hex-digit token.
fn random_token() -> String {
    format!(
        "fake_{:016x}{:016x}{:08x}",
        random_u64(),
        random_u64(),
        random_u64() as u32
    )
}

/// A random number from the standard library's per-instance hasher keys (no RNG crate needed
/// for test tokens and delivery ids).
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    RandomState::new().hash_one((n, nanos))
}

/// A random version-4 UUID, as forges use for delivery ids.
pub(crate) fn uuid_v4() -> String {
    let hi = random_u64();
    let lo = random_u64();
    let hi = (hi & 0xffff_ffff_ffff_0fff) | 0x0000_0000_0000_4000;
    let lo = (lo & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        lo >> 48,
        lo & 0xffff_ffff_ffff
    )
}
