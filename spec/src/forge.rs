//! Forges (`forges.<name>`) and their repositories (`forges.<name>.repos.<repo>`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{AttrPath, Duration, RepoName, SecretFile, System};

/// A source of repositories: a hosted forge reached over its API, or `local` git checkouts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Forge {
    /// Which forge software this is.
    pub kind: ForgeKind,
    /// Base URL of the REST API. Defaults to `https://api.github.com` for github and
    /// `https://gitlab.com/api/v4` for gitlab; required for gitea (e.g.
    /// `https://codeberg.org/api/v1`); not allowed for local.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    /// Base URL of the web interface, used for links. Defaults to `https://github.com`,
    /// `https://gitlab.com`, or for gitea the api-url without `/api/v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_url: Option<String>,
    /// File holding the API token. Required for every kind except local.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<SecretFile>,
    /// File holding the secret that signs this forge's webhooks. Required for every kind except
    /// local.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret_file: Option<SecretFile>,
    /// How often branch heads are polled: the only trigger for local forges, a safety net for
    /// missed webhooks otherwise.
    #[serde(default = "default_poll_interval")]
    pub poll_interval: Duration,
    /// The repositories to build, by name: `owner/name` (GitLab: `group/…/name`) on hosted
    /// forges, any name for local ones.
    #[serde(default)]
    pub repos: BTreeMap<RepoName, Repo>,
}

fn default_poll_interval() -> Duration {
    Duration::from_secs(30)
}

impl Forge {
    /// Returns true for a hosted forge (GitHub, GitLab, Gitea): one with an API, webhooks and
    /// commit statuses, unlike `local` checkouts.
    pub fn is_hosted(&self) -> bool {
        self.kind != ForgeKind::Local
    }

    /// Returns the API base URL: the configured one or the kind's default.
    pub fn api_url_or_default(&self) -> Option<&str> {
        self.api_url.as_deref().or(self.kind.default_api_url())
    }

    /// Returns the web base URL without a trailing `/`: the configured one, the kind's default,
    /// or for gitea the API URL without its `/api/v1` suffix.
    pub fn web_url_or_default(&self) -> Option<String> {
        let url = match (&self.web_url, self.kind) {
            (Some(url), _) => url.clone(),
            (None, ForgeKind::Github) => "https://github.com".to_owned(),
            (None, ForgeKind::Gitlab) => {
                let api = self.api_url_or_default()?.trim_end_matches('/');
                api.strip_suffix("/api/v4").unwrap_or(api).to_owned()
            }
            (None, ForgeKind::Gitea) => {
                let api = self.api_url.as_deref()?.trim_end_matches('/');
                api.strip_suffix("/api/v1").unwrap_or(api).to_owned()
            }
            (None, ForgeKind::Local) => return None,
        };
        Some(url.trim_end_matches('/').to_owned())
    }
}

/// The software behind a forge, which decides its API and webhook format.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ForgeKind {
    /// GitHub or GitHub Enterprise Server.
    Github,
    /// GitLab, hosted or self-managed.
    Gitlab,
    /// Gitea or Forgejo (including Codeberg).
    Gitea,
    /// Git checkouts on the daemon's machine, polled; no API, no webhooks, no commit statuses.
    Local,
}

impl ForgeKind {
    /// Returns the kind as written in the spec (`github`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Github => "github",
            Self::Gitlab => "gitlab",
            Self::Gitea => "gitea",
            Self::Local => "local",
        }
    }

    /// Returns the API URL used when `api-url` is not given, if the kind has one.
    pub fn default_api_url(self) -> Option<&'static str> {
        match self {
            Self::Github => Some("https://api.github.com"),
            Self::Gitlab => Some("https://gitlab.com/api/v4"),
            Self::Gitea | Self::Local => None,
        }
    }

    /// Returns true for `local`, the kind without API, tokens or webhooks.
    pub fn is_local(self) -> bool {
        self == Self::Local
    }

    /// Returns true when the forge treats `Owner/Repo` and `owner/repo` as the same repository.
    pub fn has_case_insensitive_names(self) -> bool {
        matches!(self, Self::Github | Self::Gitea)
    }
}

impl fmt::Display for ForgeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One repository to build and what to build of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Repo {
    /// The git checkout to build, for local forges only (where it is required). A relative path
    /// is resolved against the spec file's directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Globs over short branch names (`main`, `release/*`); `*` does not cross `/`. Empty means
    /// the repository's default branch.
    pub branches: Vec<String>,
    /// Whether pull (merge) requests are built.
    pub pull_requests: bool,
    /// Users whose pull requests are built without checking their permission on the repository.
    pub allowlist: Vec<String>,
    /// Systems whose outputs are built.
    pub systems: Vec<System>,
    /// Where the jobs are: flake output paths. The categories `packages`, `checks`,
    /// `devShells` (`<category>.<system>.<name>` for each of `systems`; a nested set is walked
    /// when marked `recurseForDerivations = true`) and `nixosConfigurations` (each
    /// configuration's `config.system.build.toplevel`) keep their meaning. Any other path
    /// (`hydraJobs`, `ci.reconix`, `herculesCI.onPush.default.outputs`, a quoted
    /// `'hydraJobs."x/y"'`) is walked as a tree, as Hydra does: every attribute set is
    /// descended into, derivations are jobs, `null` is skipped and any other value is an
    /// eval-failed job; under `legacyPackages` (walked for each of `systems`) only sets marked
    /// `recurseForDerivations` are descended into and other values are skipped. In a walked
    /// tree a job's system is its derivation's `system`; jobs for other systems than `systems`
    /// are recorded as `skipped`.
    pub attributes: Vec<AttrPath>,
    /// Overrides which sets are descended into: `all` (every set) or `marked` (only sets with
    /// `recurseForDerivations = true`). Default: `marked` for the categories and
    /// `legacyPackages`, `all` for other paths.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recurse: Option<Recurse>,
    /// Longest time one build may take before it is stopped.
    pub timeout: Duration,
    /// Longest time one build may go without output before it is stopped.
    pub max_silent: Duration,
    /// Longest time one evaluation may take; overrides `evaluation.timeout`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_timeout: Option<Duration>,
}

impl Default for Repo {
    fn default() -> Self {
        Self {
            path: None,
            branches: Vec::new(),
            pull_requests: true,
            allowlist: Vec::new(),
            systems: vec![System::x86_64_linux()],
            attributes: AttrKind::ALL.iter().map(|k| k.path()).collect(),
            recurse: None,
            timeout: Duration::from_secs(3 * 60 * 60),
            max_silent: Duration::from_secs(60 * 60),
            eval_timeout: None,
        }
    }
}

/// How branch globs match: case-sensitively, and `*`, `?` and `[…]` never match `/`, so
/// `release/*` matches `release/1.0` but not `release/1.0/hotfix`.
pub(crate) const BRANCH_MATCH: glob::MatchOptions = glob::MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: false,
};

impl Repo {
    /// Returns how long one evaluation of this repository may take: its `eval-timeout`, else
    /// `default` (the spec's `evaluation.timeout`).
    pub fn eval_timeout_or(&self, default: Duration) -> Duration {
        self.eval_timeout.unwrap_or(default)
    }

    /// Returns true when `branch` matches one of the `branches` globs.
    ///
    /// `branch` is a short name such as `main` or `release/1.0`; a full `refs/heads/…` name is
    /// shortened first. Wildcards do not cross `/` (`release/*` does not match `release/1/x`).
    /// When `branches` is empty this returns false: the repo follows its default branch, which
    /// only the forge or the checkout knows (see [`Repo::follows_default_branch`]).
    pub fn matches_branch(&self, branch: &str) -> bool {
        let branch = branch.strip_prefix("refs/heads/").unwrap_or(branch);
        self.branches.iter().any(|glob| {
            glob::Pattern::new(glob).is_ok_and(|p| p.matches_with(branch, BRANCH_MATCH))
        })
    }

    /// Returns true when no `branches` are given, so only the default branch is built.
    pub fn follows_default_branch(&self) -> bool {
        self.branches.is_empty()
    }
}

/// Which attribute sets a walk descends into (`recurse`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Recurse {
    /// Every attribute set (`nix-eval-jobs --force-recurse`, `hydra-eval-jobs`).
    All,
    /// Only sets marked `recurseForDerivations = true` (nixpkgs' convention).
    Marked,
}

impl Recurse {
    /// Returns the value as written in the spec.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Marked => "marked",
        }
    }
}

/// How the value at a job root is turned into jobs ([`Repo::job_roots`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Walk {
    /// `nixosConfigurations`: each configuration's `config.system.build.toplevel` is a job.
    NixosConfigurations,
    /// `packages`, `checks`, `devShells`: `<root>.<system>.<name>` for each repo system. A set
    /// that is not a derivation is descended into as `recurse` says; a set that is not is an
    /// eval-failed job whose message says how to include it. The system is the one in the path.
    Category {
        /// Which sets are descended into.
        recurse: Recurse,
    },
    /// Any other path, walked Hydra-style. Under `Recurse::Marked` values that are neither
    /// derivations nor marked sets are skipped silently (nixpkgs' convention); under
    /// `Recurse::All` they are eval-failed jobs naming their type. `null` is always skipped,
    /// and so are functions named `override`/`overrideDerivation` (the helpers `callPackage`
    /// adds). The system is the derivation's.
    Tree {
        /// True for `legacyPackages`: its next level is taken from the repo's systems.
        per_system: bool,
        /// Which sets are descended into.
        recurse: Recurse,
    },
}

/// One place in a flake where jobs are found, with how it is walked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRoot {
    /// The flake output path.
    pub path: AttrPath,
    /// How its value is turned into jobs.
    pub walk: Walk,
}

impl Repo {
    /// Returns the job roots of `attributes` and how each is walked: the one rule deciding
    /// what a root name means (categories, `legacyPackages`, any other path) and the default
    /// of `recurse`.
    pub fn job_roots(&self) -> Vec<JobRoot> {
        self.attributes
            .iter()
            .map(|path| {
                let names = path.names();
                let walk = match (AttrKind::of(path), names.first().map(String::as_str)) {
                    (Some(AttrKind::NixosConfigurations), _) => Walk::NixosConfigurations,
                    (Some(_), _) => Walk::Category {
                        recurse: self.recurse.unwrap_or(Recurse::Marked),
                    },
                    (None, Some("legacyPackages")) => Walk::Tree {
                        per_system: names.len() == 1,
                        recurse: self.recurse.unwrap_or(Recurse::Marked),
                    },
                    (None, _) => Walk::Tree {
                        per_system: false,
                        recurse: self.recurse.unwrap_or(Recurse::All),
                    },
                };
                JobRoot {
                    path: path.clone(),
                    walk,
                }
            })
            .collect()
    }
}

/// A category of flake outputs whose meaning reconix knows (see [`Repo::attributes`]).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum AttrKind {
    /// `packages.<system>.<name>`.
    Packages,
    /// `checks.<system>.<name>`.
    Checks,
    /// `devShells.<system>.<name>`.
    DevShells,
    /// `nixosConfigurations.<name>`, built as `config.system.build.toplevel`.
    NixosConfigurations,
}

impl AttrKind {
    /// Every kind, in the order they are evaluated.
    pub const ALL: [Self; 4] = [
        Self::Packages,
        Self::Checks,
        Self::DevShells,
        Self::NixosConfigurations,
    ];

    /// Returns the flake output name (`packages`, `devShells`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Packages => "packages",
            Self::Checks => "checks",
            Self::DevShells => "devShells",
            Self::NixosConfigurations => "nixosConfigurations",
        }
    }

    /// Returns the category a job root names, if it is one of the four (a one-name path).
    pub fn of(path: &AttrPath) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|kind| path.as_str() == kind.as_str())
    }

    /// Returns the category's name as a job root.
    pub fn path(self) -> AttrPath {
        AttrPath::from_name(self.as_str())
    }

    /// Returns true when the output is keyed by system first (`packages.<system>.<name>`);
    /// `nixosConfigurations` is not.
    pub fn is_per_system(self) -> bool {
        !matches!(self, Self::NixosConfigurations)
    }
}

impl fmt::Display for AttrKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(branches: &[&str]) -> Repo {
        Repo {
            branches: branches.iter().map(|b| (*b).to_owned()).collect(),
            ..Repo::default()
        }
    }

    #[test]
    fn matches_branch_should_not_let_wildcards_cross_slashes() {
        let r = repo(&["main", "release/*"]);
        assert!(r.matches_branch("main"));
        assert!(r.matches_branch("refs/heads/main"));
        assert!(r.matches_branch("release/1.0"));
        assert!(!r.matches_branch("release/1.0/hotfix"));
        assert!(!r.matches_branch("Main"));
        assert!(!r.matches_branch("feature"));
    }

    #[test]
    fn matches_branch_should_match_nothing_when_following_the_default_branch() {
        let r = repo(&[]);
        assert!(r.follows_default_branch());
        assert!(!r.matches_branch("main"));
    }

    #[test]
    fn attr_kind_should_name_the_flake_output() {
        let names: Vec<_> = AttrKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            ["packages", "checks", "devShells", "nixosConfigurations"]
        );
        for kind in AttrKind::ALL {
            let yaml = serde_yaml::to_string(&kind).unwrap();
            assert_eq!(yaml.trim(), kind.as_str());
        }
    }

    fn roots(yaml: &str) -> Vec<(String, Walk)> {
        let repo: Repo = serde_yaml::from_str(yaml).unwrap();
        repo.job_roots()
            .into_iter()
            .map(|r| (r.path.to_string(), r.walk))
            .collect()
    }

    #[test]
    fn job_roots_should_keep_the_categories_and_walk_any_other_path() {
        let marked = Recurse::Marked;
        assert_eq!(
            roots(
                "attributes: [packages, nixosConfigurations, hydraJobs, 'herculesCI.onPush.default.outputs', legacyPackages, legacyPackages.x86_64-linux.python3Packages, 'ci.\"a/b\"']"
            ),
            [
                ("packages".to_owned(), Walk::Category { recurse: marked }),
                ("nixosConfigurations".to_owned(), Walk::NixosConfigurations),
                (
                    "hydraJobs".to_owned(),
                    Walk::Tree {
                        per_system: false,
                        recurse: Recurse::All
                    }
                ),
                (
                    "herculesCI.onPush.default.outputs".to_owned(),
                    Walk::Tree {
                        per_system: false,
                        recurse: Recurse::All
                    }
                ),
                (
                    "legacyPackages".to_owned(),
                    Walk::Tree {
                        per_system: true,
                        recurse: marked
                    }
                ),
                (
                    "legacyPackages.x86_64-linux.python3Packages".to_owned(),
                    Walk::Tree {
                        per_system: false,
                        recurse: marked
                    }
                ),
                (
                    "ci.\"a/b\"".to_owned(),
                    Walk::Tree {
                        per_system: false,
                        recurse: Recurse::All
                    }
                ),
            ]
        );
    }

    #[test]
    fn recurse_should_override_the_default_of_every_root() {
        assert_eq!(
            roots("attributes: [checks, hydraJobs, legacyPackages]\nrecurse: all"),
            [
                (
                    "checks".to_owned(),
                    Walk::Category {
                        recurse: Recurse::All
                    }
                ),
                (
                    "hydraJobs".to_owned(),
                    Walk::Tree {
                        per_system: false,
                        recurse: Recurse::All
                    }
                ),
                (
                    "legacyPackages".to_owned(),
                    Walk::Tree {
                        per_system: true,
                        recurse: Recurse::All
                    }
                ),
            ]
        );
        assert_eq!(
            roots("attributes: [hydraJobs]\nrecurse: marked"),
            [(
                "hydraJobs".to_owned(),
                Walk::Tree {
                    per_system: false,
                    recurse: Recurse::Marked
                }
            )]
        );
    }

    #[test]
    fn attributes_should_refuse_a_path_nix_could_not_name() {
        let err = serde_yaml::from_str::<Repo>("attributes: [hydraJobs.a/b]").unwrap_err();
        assert!(err.to_string().contains("must be quoted"), "{err}");
    }

    #[test]
    fn web_url_should_default_per_kind() {
        let forge = |kind, api: Option<&str>| Forge {
            kind,
            api_url: api.map(str::to_owned),
            web_url: None,
            token_file: None,
            webhook_secret_file: None,
            poll_interval: default_poll_interval(),
            repos: BTreeMap::new(),
        };
        let github = forge(ForgeKind::Github, None);
        assert_eq!(github.api_url_or_default(), Some("https://api.github.com"));
        assert_eq!(
            github.web_url_or_default().as_deref(),
            Some("https://github.com")
        );
        let gitea = forge(ForgeKind::Gitea, Some("https://codeberg.org/api/v1/"));
        assert_eq!(
            gitea.web_url_or_default().as_deref(),
            Some("https://codeberg.org")
        );
        let gitlab = forge(ForgeKind::Gitlab, Some("https://git.example.org/api/v4"));
        assert_eq!(
            gitlab.web_url_or_default().as_deref(),
            Some("https://git.example.org")
        );
    }
}
