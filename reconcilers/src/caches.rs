//! The `caches` loop: every output of every succeeded job is in every binary cache of the spec
//! that takes its repository.
//!
//! Key: a cache's push-url. Observed: the output paths of succeeded jobs that have no `pushed`
//! record for the cache ([`CacheBacklog`]), less those whose last push failed and whose retry
//! time has not come. Step: push a batch of them.
//!
//! - `file://` and `http(s)://` caches are written by `nix copy --to URL?secret-key=FILE`
//!   ([`Nix::copy_to`]): Nix signs each path with the cache's key, asks the cache which paths it
//!   already has (its local narinfo cache bypassed) and uploads the rest, closures included.
//! - `s3://` caches: Debian's Nix 2.8 has no S3 store, so reconix asks the bucket for the
//!   narinfo of every path of the closure, stages the missing ones (and only those) with
//!   `nix copy --no-recursive --to file://STAGING?secret-key=FILE`, uploads the staged NARs and
//!   then their narinfos with SigV4-signed requests (`reconix-s3`), and removes the staging
//!   directory.
//!
//! A failed push is logged, recorded per path with the error and a retry time (backoff doubling
//! from [`FIRST_RETRY`] up to [`MAX_RETRY`]), shown by the API and the `/cache` page, and makes
//! the reconcile fail (so the loop's health shows it). It never touches the jobs: a cache that
//! is down does not fail a build, and it is filled once it is back.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reconix_nixcli::Nix;
use reconix_spec::{Cache, CacheKind, Spec, StorePath, Timestamp};
use reconix_status::CacheBacklog;
use serde::Serialize;
use tracing::{info, warn};

use crate::context::{Ctx, Ports};
use crate::runtime::{Action, Plan, Reconciler};
use crate::s3::{S3Bucket, S3Url, credentials_from_file};
use crate::{Error, Result};

/// How many paths one push step takes.
pub const BATCH: usize = 500;
/// The delay before the first retry of a failed push.
pub const FIRST_RETRY: Duration = Duration::from_secs(2);
/// The longest delay between retries of a failed push.
pub const MAX_RETRY: Duration = Duration::from_secs(10 * 60);

/// The `caches` reconciler.
#[derive(Debug, Default)]
pub struct Caches<P>(std::marker::PhantomData<fn() -> P>);

impl<P> Caches<P> {
    /// Creates the reconciler.
    pub fn new() -> Self {
        Self(std::marker::PhantomData)
    }
}

/// What `observe` saw for one cache.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    /// What the cache still needs.
    pub backlog: CacheBacklog,
}

/// One step of the `caches` loop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Step {
    /// Uploads these paths (and what the cache lacks of their closures).
    Push {
        /// The paths.
        paths: Vec<StorePath>,
    },
}

/// Returns the delay before retrying a push that failed `attempts` times in a row.
pub fn retry_delay(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    FIRST_RETRY.saturating_mul(1 << doublings).min(MAX_RETRY)
}

/// Plans the `caches` loop for one cache (pure).
pub fn plan(key: &str, desired: &Spec, observed: &Observed, now: Timestamp) -> Plan<Step> {
    let retry = observed
        .backlog
        .next_retry
        .map_or_else(Action::await_change, |at| {
            Action::requeue(Duration::from_millis(
                u64::try_from(at.0.saturating_sub(now.0)).unwrap_or(0),
            ))
        });
    if !desired.caches.iter().any(|c| c.push_url == key) {
        return Plan {
            steps: Vec::new(),
            then: Action::await_change(),
        };
    }
    Plan {
        steps: observed
            .backlog
            .due
            .chunks(BATCH)
            .map(|paths| Step::Push {
                paths: paths.to_vec(),
            })
            .collect(),
        then: retry,
    }
}

/// Returns `url` with Nix's `secret-key` parameter naming `key_file`.
fn with_secret_key(url: &str, key_file: &Path) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}secret-key={}", key_file.display())
}

impl<P: Ports> Reconciler for Caches<P> {
    const NAME: &'static str = "caches";
    type Spec = Spec;
    type Context = Ctx<P>;
    type Key = String;
    type Observed = Observed;
    type Step = Step;
    type Error = Error;

    async fn keys(&self, spec: &Spec, _cx: &Ctx<P>) -> Result<Vec<String>> {
        Ok(spec.caches.iter().map(|c| c.push_url.clone()).collect())
    }

    async fn observe(&self, key: &String, spec: &Spec, cx: &Ctx<P>) -> Result<Observed> {
        let Some(cache) = spec.caches.iter().find(|c| &c.push_url == key).cloned() else {
            return Ok(Observed::default());
        };
        let key = key.clone();
        let backlog = cx
            .status
            .call(move |db| db.cache_backlog(&key, |repo| cache.applies_to(repo), Timestamp::now()))
            .await?;
        Ok(Observed { backlog })
    }

    fn plan(key: &String, desired: &Spec, observed: &Observed, now: Timestamp) -> Plan<Step> {
        plan(key, desired, observed, now)
    }

    async fn apply(&self, key: &String, step: Step, cx: &Ctx<P>) -> Result<()> {
        let Step::Push { paths } = step;
        let spec = cx.spec();
        let Some(cache) = spec.caches.iter().find(|c| &c.push_url == key) else {
            return Ok(());
        };
        let pushed = push(cx, cache, &paths).await;
        let (url, now) = (key.clone(), Timestamp::now());
        match pushed {
            Ok(()) => {
                info!(cache = %url, paths = paths.len(), "pushed to cache");
                cx.status
                    .call(move |db| db.record_cache_pushed(&url, &paths, now))
                    .await?;
                Ok(())
            }
            Err(message) => {
                warn!(cache = %url, paths = paths.len(), error = %message, "push to cache failed; will retry");
                let (u, m) = (url.clone(), message.clone());
                let attempts = cx
                    .status
                    .call(move |db| db.record_cache_failure(&u, &paths, &m, now, retry_delay))
                    .await?;
                Err(Error::CachePush {
                    cache: url,
                    message: format!("{message} (attempt {attempts})"),
                })
            }
        }
    }
}

/// Pushes `paths` (with their closures) to `cache`; the error is a message for the log and the
/// API, without secrets.
async fn push<P: Ports>(
    cx: &Ctx<P>,
    cache: &Cache,
    paths: &[StorePath],
) -> std::result::Result<(), String> {
    let nix = cx.ports.nix();
    let pushed = match cache.kind() {
        Some(CacheKind::File | CacheKind::Http) => {
            let url = with_secret_key(&cache.push_url, cache.signing_key_file.path());
            nix.copy_to(&url, paths, true)
                .await
                .map_err(|e| error_chain(&e))
        }
        Some(CacheKind::S3) => push_s3(cx, cache, paths).await,
        None => Err(format!("unsupported cache URL {}", cache.push_url)),
    };
    // Nix's messages quote its command line: keep where the signing key lives out of the API.
    let key = cache.signing_key_file.path().display().to_string();
    pushed.map_err(|message| message.replace(&key, "<signing-key-file>"))
}

/// Pushes to an S3 bucket through a staging `file://` cache (see the module docs).
async fn push_s3<P: Ports>(
    cx: &Ctx<P>,
    cache: &Cache,
    paths: &[StorePath],
) -> std::result::Result<(), String> {
    let url = S3Url::parse(&cache.push_url).map_err(|e| error_chain(&e))?;
    let Some(credentials_file) = &cache.s3_credentials_file else {
        return Err("no s3-credentials-file".to_owned());
    };
    let credentials =
        credentials_from_file(credentials_file.path()).map_err(|e| error_chain(&e))?;
    let bucket = S3Bucket::new(&url, credentials).map_err(|e| error_chain(&e))?;
    let nix = cx.ports.nix();
    let closure = nix.closure(paths).await.map_err(|e| error_chain(&e))?;
    let mut missing = Vec::new();
    for path in closure.keys() {
        let narinfo = format!("{}.narinfo", path.hash_part());
        if !bucket.exists(&narinfo).await.map_err(|e| error_chain(&e))? {
            missing.push(path.clone());
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let staging = staging_dir(&cx.state_dir(), &cache.push_url);
    let staged = async {
        remove_dir(&staging).await?;
        let to = with_secret_key(
            &format!("file://{}", staging.display()),
            cache.signing_key_file.path(),
        );
        nix.copy_to(&to, &missing, false)
            .await
            .map_err(|e| error_chain(&e))?;
        bucket
            .upload_cache_dir(&staging)
            .await
            .map_err(|e| error_chain(&e))
            .map(drop)
    }
    .await;
    let cleaned = remove_dir(&staging).await;
    staged.and(cleaned)
}

/// Returns the staging directory of an S3 cache: `<state>/caches/staging/<hash of its url>`.
fn staging_dir(state_dir: &Path, url: &str) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    url.hash(&mut h);
    state_dir
        .join("caches")
        .join("staging")
        .join(format!("{:016x}", h.finish()))
}

async fn remove_dir(dir: &Path) -> std::result::Result<(), String> {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("removing {}: {e}", dir.display())),
    }
}

/// Joins an error and its sources into one line.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(n: usize) -> StorePath {
        StorePath::new(format!("/nix/store/{n:0>32}-p{n}")).unwrap()
    }

    fn spec_with(url: &str) -> Spec {
        let text = format!(
            "state-dir: /var/lib/reconix\nforges:\n  local:\n    kind: local\n    repos:\n      r: {{path: /src/r}}\n\
             caches:\n  - push-url: {url}\n    public-key: k-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=\n    signing-key-file: /run/key\n"
        );
        reconix_spec::parse(&text, Path::new("/etc/reconix/spec.yaml")).unwrap()
    }

    #[test]
    fn plan_should_push_the_due_paths_in_batches_then_wait_for_the_next_retry() {
        let url = "file:///srv/cache";
        let spec = spec_with(url);
        let due: Vec<StorePath> = (0..BATCH + 1).map(path).collect();
        let observed = Observed {
            backlog: CacheBacklog {
                due: due.clone(),
                next_retry: Some(Timestamp(10_000)),
            },
        };
        let plan = plan(url, &spec, &observed, Timestamp(4_000));
        assert_eq!(
            plan.steps,
            [
                Step::Push {
                    paths: due[..BATCH].to_vec()
                },
                Step::Push {
                    paths: due[BATCH..].to_vec()
                }
            ]
        );
        assert_eq!(plan.then, Action::requeue(Duration::from_secs(6)));
    }

    #[test]
    fn plan_should_do_nothing_for_a_cache_that_left_the_spec_or_has_nothing_due() {
        let spec = spec_with("file:///srv/cache");
        let observed = Observed {
            backlog: CacheBacklog {
                due: vec![path(1)],
                next_retry: None,
            },
        };
        let gone = plan("http://gone", &spec, &observed, Timestamp(0));
        assert!(gone.steps.is_empty());
        let idle = plan(
            "file:///srv/cache",
            &spec,
            &Observed::default(),
            Timestamp(0),
        );
        assert!(idle.steps.is_empty());
        assert_eq!(idle.then, Action::await_change());
    }

    #[test]
    fn retry_delay_should_double_from_two_seconds_up_to_ten_minutes() {
        assert_eq!(retry_delay(1), Duration::from_secs(2));
        assert_eq!(retry_delay(2), Duration::from_secs(4));
        assert_eq!(retry_delay(5), Duration::from_secs(32));
        assert_eq!(retry_delay(30), MAX_RETRY);
        assert_eq!(retry_delay(u32::MAX), MAX_RETRY);
    }

    #[test]
    fn with_secret_key_should_add_the_parameter_to_any_url() {
        let key = Path::new("/run/key");
        assert_eq!(
            with_secret_key("file:///srv/cache", key),
            "file:///srv/cache?secret-key=/run/key"
        );
        assert_eq!(
            with_secret_key("http://h/c?compression=zstd", key),
            "http://h/c?compression=zstd&secret-key=/run/key"
        );
    }
}
