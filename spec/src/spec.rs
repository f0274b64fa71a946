//! The top of the spec: [`Spec`] and the accessors the loops use to walk it.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    Builders, Cache, Evaluation, Forge, ForgeName, Http, Repo, RepoKey, Retention, SecretFile,
    Statuses,
};

/// The desired state of one reconix daemon: what to build, where, and what to keep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Spec {
    /// Directory for the database, build logs and GC roots.
    pub state_dir: PathBuf,
    /// Address of the HTTP server: status page, JSON API and webhooks.
    pub listen: SocketAddr,
    /// Timeouts and the connection cap of the HTTP server.
    pub http: Http,
    /// Public base URL of this daemon (`https://ci.example.org`): the webhook target and the
    /// link in commit statuses. Required when any forge is not `local`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_url: Option<String>,
    /// File holding the bearer token that mutations (rebuild a job, cancel or re-run an
    /// evaluation) must present. Without it every mutation is refused; pages and the read API
    /// never need it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_token_file: Option<SecretFile>,
    /// Evaluator processes: how many at once, their memory, how long an evaluation may take.
    pub evaluation: Evaluation,
    /// Forges by name; each lists the repositories to build.
    pub forges: BTreeMap<ForgeName, Forge>,
    /// Machines that run builds.
    pub builders: Builders,
    /// Binary caches that build results are pushed to.
    pub caches: Vec<Cache>,
    /// How long results and logs are kept.
    pub retention: Retention,
    /// How results are reported to forges.
    pub statuses: Statuses,
}

impl Default for Spec {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/var/lib/reconix"),
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
            http: Http::default(),
            external_url: None,
            api_token_file: None,
            evaluation: Evaluation::default(),
            forges: BTreeMap::new(),
            builders: Builders::default(),
            caches: Vec::new(),
            retention: Retention::default(),
            statuses: Statuses::default(),
        }
    }
}

impl Spec {
    /// Returns every configured repo with its key and forge, ordered by forge then repo name.
    pub fn repos(&self) -> impl Iterator<Item = (RepoKey, &Forge, &Repo)> + '_ {
        self.forges.iter().flat_map(|(forge_name, forge)| {
            forge.repos.iter().map(move |(repo_name, repo)| {
                (
                    RepoKey::new(forge_name.clone(), repo_name.clone()),
                    forge,
                    repo,
                )
            })
        })
    }

    /// Returns every repo of a hosted forge ([`Forge::is_hosted`]), as [`Spec::repos`] does.
    pub fn hosted_repos(&self) -> impl Iterator<Item = (RepoKey, &Forge, &Repo)> + '_ {
        self.repos().filter(|(_, forge, _)| forge.is_hosted())
    }

    /// Returns the names of the hosted forges ([`Forge::is_hosted`]).
    pub fn hosted_forges(&self) -> impl Iterator<Item = &ForgeName> + '_ {
        self.forges
            .iter()
            .filter(|(_, f)| f.is_hosted())
            .map(|(n, _)| n)
    }

    /// Returns the repo named by `key` and its forge, if the spec has it.
    pub fn repo(&self, key: &RepoKey) -> Option<(&Forge, &Repo)> {
        let forge = self.forges.get(&key.forge)?;
        Some((forge, forge.repos.get(&key.repo)?))
    }

    /// Returns the caches that builds of `repo` are pushed to.
    pub fn caches_for<'a>(&'a self, repo: &'a RepoKey) -> impl Iterator<Item = &'a Cache> + 'a {
        self.caches
            .iter()
            .filter(move |cache| cache.applies_to(repo))
    }
}
