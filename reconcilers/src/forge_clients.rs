//! What the hosted-forge loops share: a client per forge built from the spec (token read from
//! its file) that counts its calls in the metrics, a guard that turns 401 and rate limits into
//! forge health, and naming helpers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use reconix_forge::api::{
    ApiResult, Branch, CheckRun, CheckRunSpec, CommitStatus, Hook, HookSpec, Permission,
    PullRequest, RepoInfo,
};
use reconix_forge::{ApiError, Forge as ForgeApi, ForgeClient, RetryPolicy};
use reconix_spec::{Forge, ForgeKind, ForgeName, RepoName, Secret, Spec, Timestamp};
use reconix_status::{ForgeCallOutcome, ForgeHealthState, Metrics, Status};
use sha2::{Digest, Sha256};
use tracing::warn;

use crate::{Error, Result};

/// Builds and caches one REST client per forge; a changed token file or API URL makes a new one.
#[derive(Debug, Clone, Default)]
pub struct ForgeClients {
    policy: Option<RetryPolicy>,
    cache: Arc<Mutex<HashMap<ForgeName, Cached>>>,
    metrics: Metrics,
}

#[derive(Debug)]
struct Cached {
    api_url: String,
    token_fingerprint: String,
    client: MeteredClient,
}

impl ForgeClients {
    /// Creates a registry whose clients use `policy` (the default policy when `None`).
    pub fn new(policy: Option<RetryPolicy>) -> Self {
        Self {
            policy,
            cache: Arc::default(),
            metrics: Metrics::default(),
        }
    }

    /// Makes the clients count their calls and the rate limits they meet in `metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Returns the client of forge `name`, reading its token file.
    ///
    /// # Errors
    /// Returns [`Error::Config`] when the forge has no API URL or token file, [`Error::Io`] when
    /// the token file cannot be read, and [`Error::Forge`] when the client cannot be built.
    pub fn client(&self, name: &ForgeName, forge: &Forge) -> Result<MeteredClient> {
        let config = |message: &str| Error::Config {
            key: name.to_string(),
            message: message.to_owned(),
        };
        let api_url = forge
            .api_url_or_default()
            .ok_or_else(|| config("the forge has no api-url"))?;
        let token_file = forge
            .token_file
            .as_ref()
            .ok_or_else(|| config("the forge has no token-file"))?;
        let token = read_secret(token_file, "token")?;
        let token_fingerprint = fingerprint("token", &token);
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = cache.get(name)
            && c.api_url == api_url
            && c.token_fingerprint == token_fingerprint
        {
            return Ok(c.client.clone());
        }
        let client = ForgeClient::new(forge.kind, api_url, &token, self.policy.unwrap_or_default())
            .map_err(|source| Error::Forge {
                forge: name.to_string(),
                source,
            })?;
        let client = MeteredClient {
            inner: client,
            forge: name.clone(),
            kind: forge.kind,
            metrics: self.metrics.clone(),
        };
        cache.insert(
            name.clone(),
            Cached {
                api_url: api_url.to_owned(),
                token_fingerprint,
                client: client.clone(),
            },
        );
        Ok(client)
    }
}

/// Reads a secret from its file; the error names the file (never its content).
///
/// # Errors
/// Returns [`Error::Io`] when the file cannot be read.
pub fn read_secret(file: &reconix_spec::SecretFile, what: &str) -> Result<Secret> {
    file.read().map_err(|source| Error::Io {
        context: format!("reading {what} file {}", file.path().display()),
        source,
    })
}

/// Reads the webhook secret of a forge.
///
/// # Errors
/// Returns [`Error::Config`] when the forge has no `webhook-secret-file` and [`Error::Io`] when
/// it cannot be read.
pub fn webhook_secret(name: &ForgeName, forge: &Forge) -> Result<Secret> {
    let file = forge
        .webhook_secret_file
        .as_ref()
        .ok_or_else(|| Error::config(name, "the forge has no webhook-secret-file"))?;
    read_secret(file, "webhook secret")
}

impl ForgeClients {
    /// Returns the client of the forge that hosts `repo` under `spec`.
    ///
    /// # Errors
    /// As [`ForgeClients::client`]; [`Error::Config`] when the forge left the spec.
    pub fn for_repo(&self, spec: &Spec, repo: &reconix_spec::RepoKey) -> Result<MeteredClient> {
        let forge = spec
            .forges
            .get(&repo.forge)
            .ok_or_else(|| Error::config(repo, "forge left the spec"))?;
        self.client(&repo.forge, forge)
    }
}

/// A forge's REST client that counts every call by outcome, and every rate limit with the wait
/// it imposes, in the daemon's metrics (`reconix_forge_api_calls_total`,
/// `reconix_forge_rate_limit_waits_total`, `reconix_forge_rate_limit_wait_seconds_total`).
#[derive(Debug, Clone)]
pub struct MeteredClient {
    inner: ForgeClient,
    forge: ForgeName,
    kind: ForgeKind,
    metrics: Metrics,
}

impl MeteredClient {
    /// Counts the call that returned `result`, then returns it unchanged.
    fn counted<T>(&self, result: ApiResult<T>) -> ApiResult<T> {
        let outcome = match &result {
            Ok(_) => ForgeCallOutcome::Ok,
            Err(ApiError::Unauthorized { .. }) => ForgeCallOutcome::Unauthorized,
            Err(ApiError::RateLimited { retry_after }) => {
                self.metrics
                    .record_rate_limit(self.forge.as_str(), *retry_after);
                ForgeCallOutcome::RateLimited
            }
            // Refused before any request was sent (check runs off GitHub): not an API call.
            Err(ApiError::Unsupported { .. }) => return result,
            Err(_) => ForgeCallOutcome::Error,
        };
        self.metrics
            .record_forge_call(self.forge.as_str(), self.kind, outcome);
        result
    }
}

impl ForgeApi for MeteredClient {
    async fn list_hooks(&self, repo: &RepoName) -> ApiResult<Vec<Hook>> {
        self.counted(self.inner.list_hooks(repo).await)
    }

    async fn create_hook(&self, repo: &RepoName, spec: &HookSpec) -> ApiResult<Hook> {
        self.counted(self.inner.create_hook(repo, spec).await)
    }

    async fn patch_hook(&self, repo: &RepoName, id: u64, spec: &HookSpec) -> ApiResult<Hook> {
        self.counted(self.inner.patch_hook(repo, id, spec).await)
    }

    async fn delete_hook(&self, repo: &RepoName, id: u64) -> ApiResult<()> {
        self.counted(self.inner.delete_hook(repo, id).await)
    }

    async fn repository(&self, repo: &RepoName) -> ApiResult<RepoInfo> {
        self.counted(self.inner.repository(repo).await)
    }

    async fn branches(&self, repo: &RepoName) -> ApiResult<Vec<Branch>> {
        self.counted(self.inner.branches(repo).await)
    }

    async fn open_pull_requests(&self, repo: &RepoName) -> ApiResult<Vec<PullRequest>> {
        self.counted(self.inner.open_pull_requests(repo).await)
    }

    async fn permission(&self, repo: &RepoName, user: &str) -> ApiResult<Permission> {
        self.counted(self.inner.permission(repo, user).await)
    }

    async fn create_status(
        &self,
        repo: &RepoName,
        sha: &str,
        status: &CommitStatus,
    ) -> ApiResult<()> {
        self.counted(self.inner.create_status(repo, sha, status).await)
    }

    async fn create_check_run(&self, repo: &RepoName, spec: &CheckRunSpec) -> ApiResult<CheckRun> {
        self.counted(self.inner.create_check_run(repo, spec).await)
    }

    async fn update_check_run(
        &self,
        repo: &RepoName,
        id: u64,
        spec: &CheckRunSpec,
    ) -> ApiResult<CheckRun> {
        self.counted(self.inner.update_check_run(repo, id, spec).await)
    }
}

/// Returns a short fingerprint of a secret for change detection: the first 16 hex digits of
/// SHA-256 over a purpose label and the secret. Stored and compared, never shown.
pub fn fingerprint(purpose: &str, secret: &Secret) -> String {
    let mut h = Sha256::new();
    h.update(b"reconix ");
    h.update(purpose.as_bytes());
    h.update([0]);
    h.update(secret.expose().as_bytes());
    hex::encode(&h.finalize()[..8])
}

/// Returns where forge `name` delivers webhooks: `<external-url>/webhooks/<name>`.
pub fn webhook_url(spec: &Spec, name: &ForgeName) -> Option<String> {
    spec.external_url
        .as_deref()
        .map(|u| format!("{}/webhooks/{name}", u.trim_end_matches('/')))
}

/// Records what an API error says about the forge's health: 401 pauses it, a rate limit makes
/// it wait. Returns the error wrapped for the loop.
pub async fn record_api_error(status: &Status, name: &ForgeName, err: ApiError) -> Error {
    let now = Timestamp::now();
    let health = match &err {
        ApiError::Unauthorized { .. } => Some((
            ForgeHealthState::Paused,
            Some("the forge rejected the token (401); calls are paused until it is accepted again"),
            None,
        )),
        ApiError::RateLimited { retry_after } => Some((
            ForgeHealthState::RateLimited,
            Some("rate limited by the forge"),
            Some(now.plus(*retry_after)),
        )),
        _ => None,
    };
    if let Some((state, reason, until)) = health {
        warn!(forge = %name, error = %err, state = ?state, "forge calls held back");
        let n = name.clone();
        let reason = reason.map(str::to_owned);
        if let Err(e) = status
            .call(move |db| db.set_forge_health(&n, state, reason.as_deref(), until, now))
            .await
        {
            warn!(forge = %name, error = %e, "could not record forge health");
        }
    }
    Error::Forge {
        forge: name.to_string(),
        source: err,
    }
}

/// Whether a forge may be called now, and if not, how long to wait (`None`: until a probe
/// succeeds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Calls go through.
    Open,
    /// The forge is paused (401): only the probe calls it.
    Paused,
    /// Rate limited for this long.
    Wait(Duration),
}

/// Reads forge `name`'s health and says whether it may be called at `now`.
///
/// # Errors
/// Returns [`Error::Status`] when the database fails.
pub async fn gate(status: &Status, name: &ForgeName, now: Timestamp) -> Result<Gate> {
    let n = name.clone();
    let health = status.call(move |db| db.forge_health(&n)).await?;
    Ok(match health {
        None => Gate::Open,
        Some(h) => match h.state {
            ForgeHealthState::Ok => Gate::Open,
            ForgeHealthState::Paused => Gate::Paused,
            ForgeHealthState::RateLimited => match h.until {
                Some(until) if until > now => Gate::Wait(until.since(now)),
                _ => Gate::Open,
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_should_differ_by_purpose_and_secret_and_hide_it() {
        let a = fingerprint("hook", &Secret::new("s3cret"));
        assert_eq!(a.len(), 16);
        assert!(!a.contains("s3cret"));
        assert_eq!(a, fingerprint("hook", &Secret::new("s3cret")));
        assert_ne!(a, fingerprint("token", &Secret::new("s3cret")));
        assert_ne!(a, fingerprint("hook", &Secret::new("other")));
    }

    #[tokio::test]
    async fn clients_should_count_calls_by_outcome_and_rate_limit_waits() {
        use reconix_fakeforge::{FakeForge, Fault, FaultKind};

        let fake = FakeForge::start(ForgeKind::Github).await.unwrap();
        let tmp = tempfile::tempdir().unwrap();
        fake.add_repo("acme/widgets", tmp.path(), "main");
        std::fs::write(tmp.path().join("token"), fake.token()).unwrap();
        let yaml = format!(
            "external-url: https://ci.example\nforges:\n  hub:\n    kind: github\n\
             \x20   api-url: {api}\n    token-file: {dir}/token\n\
             \x20   webhook-secret-file: {dir}/token\n    repos:\n      acme/widgets: {{}}\n",
            api = fake.api_url(),
            dir = tmp.path().display(),
        );
        let spec = reconix_spec::parse(&yaml, std::path::Path::new("/t/spec.yaml")).unwrap();
        let hub = ForgeName::new("hub").unwrap();
        let metrics = Metrics::new();
        let policy = RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        };
        let clients = ForgeClients::new(Some(policy)).with_metrics(metrics.clone());
        let client = clients.client(&hub, &spec.forges[&hub]).unwrap();
        let repo = RepoName::new("acme/widgets").unwrap();

        client.list_hooks(&repo).await.unwrap();
        fake.inject(Fault::new(FaultKind::Status(401), 1));
        assert!(client.list_hooks(&repo).await.is_err());
        fake.inject(Fault::new(
            FaultKind::RateLimited {
                retry_after_secs: 7,
            },
            1,
        ));
        assert!(client.list_hooks(&repo).await.is_err());
        fake.inject(Fault::new(FaultKind::Status(422), 1));
        assert!(client.list_hooks(&repo).await.is_err());

        let text = metrics
            .encode(&reconix_status::StateCounts::default())
            .unwrap();
        for outcome in ["ok", "unauthorized", "rate-limited", "error"] {
            let expected = format!(
                r#"reconix_forge_api_calls_total{{forge="hub",kind="github",outcome="{outcome}"}} 1"#
            );
            assert!(
                text.lines().any(|l| l == expected),
                "{expected} missing:\n{text}"
            );
        }
        for expected in [
            r#"reconix_forge_rate_limit_waits_total{forge="hub"} 1"#,
            r#"reconix_forge_rate_limit_wait_seconds_total{forge="hub"} 7.0"#,
        ] {
            assert!(
                text.lines().any(|l| l == expected),
                "{expected} missing:\n{text}"
            );
        }
    }

    #[tokio::test]
    async fn a_401_should_pause_and_a_rate_limit_should_wait() {
        let status = Status::new(reconix_status::StatusDb::open_memory().unwrap());
        let gh = ForgeName::new("gh").unwrap();
        assert_eq!(
            gate(&status, &gh, Timestamp::now()).await.unwrap(),
            Gate::Open
        );
        let err = ApiError::RateLimited {
            retry_after: Duration::from_secs(60),
        };
        record_api_error(&status, &gh, err).await;
        assert!(matches!(
            gate(&status, &gh, Timestamp::now()).await.unwrap(),
            Gate::Wait(d) if d > Duration::from_secs(50)
        ));
        let err = ApiError::Unauthorized {
            method: "GET".to_owned(),
            path: "/x".to_owned(),
        };
        let e = record_api_error(&status, &gh, err).await;
        assert!(matches!(e, Error::Forge { .. }));
        assert_eq!(
            gate(&status, &gh, Timestamp::now()).await.unwrap(),
            Gate::Paused
        );
    }
}
