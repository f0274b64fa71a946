//! Semantic validation: the rules a spec must follow beyond its types, each reported against the
//! key path it is about so that [`crate::parse`] can point at the right line.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::{CacheKind, Duration, ForgeKind, RepoKey, SecretFile, Spec, System};

/// One semantic problem in a spec: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Keys and list indices (as decimal strings) from the top of the spec to the offending
    /// value, e.g. `["forges", "here", "repos", "demo", "path"]`. When the value is missing,
    /// the path still names it, and locating it falls back to the enclosing mapping.
    pub path: Vec<String>,
    /// What is wrong, lowercase and without a trailing period.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path.join("."), self.message)
        }
    }
}

/// A key path under construction.
#[derive(Clone, Default)]
struct At(Vec<String>);

impl At {
    fn k(&self, key: impl fmt::Display) -> Self {
        let mut path = self.0.clone();
        path.push(key.to_string());
        Self(path)
    }
}

#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn report(&mut self, at: &At, message: impl Into<String>) {
        self.problems.push(Problem {
            path: at.0.clone(),
            message: message.into(),
        });
    }

    fn absolute(&mut self, at: &At, key: &str, path: &Path) {
        if !path.is_absolute() {
            self.report(
                at,
                format!(
                    "{key} `{}` must be an absolute path (relative paths are resolved only when \
                     the spec is loaded from a file)",
                    path.display()
                ),
            );
        }
    }

    fn secret(&mut self, at: &At, key: &str, file: Option<&SecretFile>) {
        if let Some(file) = file {
            self.absolute(&at.k(key), key, file.path());
        }
    }

    fn positive(&mut self, at: &At, key: &str, value: Duration) {
        if value.is_zero() {
            self.report(&at.k(key), format!("{key} must be longer than zero"));
        }
    }

    fn systems(&mut self, at: &At, systems: &[System]) {
        if systems.is_empty() {
            self.report(
                &at.k("systems"),
                "systems is empty: list at least one, such as `x86_64-linux`",
            );
        }
    }

    fn http_url(&mut self, at: &At, key: &str, url: Option<&str>) {
        if let Some(url) = url
            && !is_http_url(url)
        {
            self.report(
                &at.k(key),
                format!("{key} `{url}` must be an http:// or https:// url"),
            );
        }
    }
}

impl Spec {
    /// Checks the rules that types cannot express and returns every problem found (empty when
    /// the spec is valid).
    ///
    /// Existence of files is not checked: secret files and checkouts may appear later, and the
    /// loops report them when they are missing.
    pub fn validate(&self) -> Vec<Problem> {
        let mut c = Checker::default();
        let root = At::default();
        c.absolute(&root.k("state-dir"), "state-dir", &self.state_dir);
        self.check_external_url(&mut c, &root);
        self.check_http(&mut c, &root.k("http"));
        self.check_evaluation(&mut c, &root.k("evaluation"));
        c.secret(&root, "api-token-file", self.api_token_file.as_ref());
        self.check_forges(&mut c, &root);
        self.check_duplicate_repos(&mut c);
        self.check_builders(&mut c, &root.k("builders"));
        self.check_caches(&mut c, &root.k("caches"));
        if self.statuses.context_prefix.trim().is_empty() {
            c.report(
                &root.k("statuses").k("context-prefix"),
                "context-prefix must not be empty",
            );
        }
        c.problems
    }

    fn check_http(&self, c: &mut Checker, at: &At) {
        let http = &self.http;
        for (key, value) in [
            ("header-timeout", http.header_timeout),
            ("body-timeout", http.body_timeout),
            ("idle-timeout", http.idle_timeout),
        ] {
            if value.to_std().is_zero() {
                c.report(&at.k(key), format!("{key} must be longer than 0s"));
            }
        }
        if http.max_connections < 16 {
            c.report(
                &at.k("max-connections"),
                "max-connections must be at least 16",
            );
        }
    }

    fn check_evaluation(&self, c: &mut Checker, at: &At) {
        let evaluation = &self.evaluation;
        if evaluation.workers == Some(0) {
            c.report(&at.k("workers"), "workers must be at least 1");
        }
        if evaluation.max_memory.0 < 64 << 20 {
            c.report(
                &at.k("max-memory"),
                "max-memory must be at least 64 MiB (one evaluator needs that much to start)",
            );
        }
        c.positive(at, "timeout", evaluation.timeout);
    }

    fn check_external_url(&self, c: &mut Checker, root: &At) {
        let hosted = self.forges.iter().find(|(_, forge)| !forge.kind.is_local());
        match (&self.external_url, hosted) {
            (Some(url), _) => c.http_url(root, "external-url", Some(url)),
            (None, Some((name, forge))) => c.report(
                &root.k("external-url"),
                format!(
                    "external-url is required: forge `{name}` ({}) sends webhooks to it and \
                     links to it from commit statuses",
                    forge.kind
                ),
            ),
            (None, None) => {}
        }
    }

    fn check_forges(&self, c: &mut Checker, root: &At) {
        for (name, forge) in &self.forges {
            let at = root.k("forges").k(name);
            c.positive(&at, "poll-interval", forge.poll_interval);
            if forge.kind.is_local() {
                for (key, given) in [
                    ("token-file", forge.token_file.is_some()),
                    ("webhook-secret-file", forge.webhook_secret_file.is_some()),
                    ("api-url", forge.api_url.is_some()),
                    ("web-url", forge.web_url.is_some()),
                ] {
                    if given {
                        c.report(
                            &at.k(key),
                            format!(
                                "local forge `{name}` takes no {key}: it reads checkouts on disk \
                                 and has no api"
                            ),
                        );
                    }
                }
            } else {
                for (key, given) in [
                    ("token-file", forge.token_file.is_some()),
                    ("webhook-secret-file", forge.webhook_secret_file.is_some()),
                ] {
                    if !given {
                        c.report(
                            &at.k(key),
                            format!("{} forge `{name}` needs a {key}", forge.kind),
                        );
                    }
                }
                c.secret(&at, "token-file", forge.token_file.as_ref());
                c.secret(
                    &at,
                    "webhook-secret-file",
                    forge.webhook_secret_file.as_ref(),
                );
                if forge.api_url_or_default().is_none() {
                    c.report(
                        &at.k("api-url"),
                        format!(
                            "gitea forge `{name}` needs an api-url, such as \
                             `https://codeberg.org/api/v1`: gitea has no default"
                        ),
                    );
                }
                c.http_url(&at, "api-url", forge.api_url.as_deref());
                c.http_url(&at, "web-url", forge.web_url.as_deref());
            }
            for (repo_name, repo) in &forge.repos {
                let at = at.k("repos").k(repo_name);
                match (&repo.path, forge.kind) {
                    (None, ForgeKind::Local) => c.report(
                        &at.k("path"),
                        format!("repo `{name}/{repo_name}` of local forge `{name}` needs a path"),
                    ),
                    (Some(path), ForgeKind::Local) => c.absolute(&at.k("path"), "path", path),
                    (Some(_), kind) => c.report(
                        &at.k("path"),
                        format!("path is only for local forges, and `{name}` is a {kind} forge"),
                    ),
                    (None, _) => {}
                }
                if let Some(message) = hosted_repo_name_problem(forge.kind, repo_name.as_str()) {
                    c.report(&at, message);
                }
                for (i, glob) in repo.branches.iter().enumerate() {
                    if let Some(message) = branch_glob_problem(glob) {
                        c.report(&at.k("branches").k(i), message);
                    }
                }
                c.systems(&at, &repo.systems);
                if repo.attributes.is_empty() {
                    c.report(
                        &at.k("attributes"),
                        "attributes is empty: nothing would be built (omit it to build all four)",
                    );
                }
                c.positive(&at, "timeout", repo.timeout);
                c.positive(&at, "max-silent", repo.max_silent);
                if let Some(t) = repo.eval_timeout {
                    c.positive(&at, "eval-timeout", t);
                }
            }
        }
    }

    /// Reports a repo configured twice: two local repos with one checkout, the same name under
    /// two forges that are the same server, or names differing only in case where the forge
    /// ignores case. Building one repository twice would race on its commit statuses.
    fn check_duplicate_repos(&self, c: &mut Checker) {
        let mut by_path: HashMap<&Path, RepoKey> = HashMap::new();
        let mut by_name: HashMap<(ForgeKind, String, String), RepoKey> = HashMap::new();
        for (key, forge, repo) in self.repos() {
            let at = At::default()
                .k("forges")
                .k(&key.forge)
                .k("repos")
                .k(&key.repo);
            if forge.kind.is_local() {
                let Some(path) = repo.path.as_deref() else {
                    continue;
                };
                if let Some(first) = by_path.get(path) {
                    c.report(
                        &at.k("path"),
                        format!(
                            "path `{}` is also the checkout of repo `{first}`",
                            path.display()
                        ),
                    );
                } else {
                    by_path.insert(path, key);
                }
                continue;
            }
            let Some(api) = forge.api_url_or_default() else {
                continue;
            };
            let api = api.trim_end_matches('/').to_ascii_lowercase();
            let name = if forge.kind.has_case_insensitive_names() {
                key.repo.as_str().to_lowercase()
            } else {
                key.repo.as_str().to_owned()
            };
            let slot = (forge.kind, api, name);
            match by_name.get(&slot) {
                Some(first) if first.forge == key.forge => c.report(
                    &at,
                    format!(
                        "repo `{}` differs from `{}` only in case, and {} ignores case in \
                         repository names",
                        key.repo, first.repo, forge.kind
                    ),
                ),
                Some(first) => c.report(
                    &at,
                    format!(
                        "repo `{key}` is the same repository as `{first}`: both forges are {} at \
                         the same api-url",
                        forge.kind
                    ),
                ),
                None => {
                    by_name.insert(slot, key);
                }
            }
        }
    }

    fn check_builders(&self, c: &mut Checker, at: &At) {
        c.systems(&at.k("local"), &self.builders.local.systems);
        if self.builders.heartbeat_timeout.to_std() < std::time::Duration::from_secs(1) {
            c.report(
                &at.k("heartbeat-timeout"),
                "heartbeat-timeout must be at least 1s (agents send a heartbeat every few seconds)",
            );
        }
        if let Some(enrollment) = &self.builders.enrollment {
            let at = at.k("enrollment");
            c.secret(&at, "token-file", Some(&enrollment.token_file));
            let timeout = enrollment.handshake_timeout.to_std();
            if timeout < std::time::Duration::from_secs(1)
                || timeout > std::time::Duration::from_secs(60)
            {
                c.report(
                    &at.k("handshake-timeout"),
                    "handshake-timeout must be between 1s and 60s (a handshake takes milliseconds; \
                     idle peers hold a connection for this long)",
                );
            }
            if enrollment.max_pending_per_source == 0 {
                c.report(
                    &at.k("max-pending-per-source"),
                    "max-pending-per-source must be at least 1",
                );
            }
        }
        for (name, builder) in &self.builders.remote {
            let at = at.k("remote").k(name);
            if name.is_local() {
                c.report(
                    &at,
                    "builder name `local` is reserved for the daemon's own machine: configure it \
                     under `builders.local`, or pick another name",
                );
            }
            c.systems(&at, &builder.systems);
        }
    }

    fn check_caches(&self, c: &mut Checker, at: &At) {
        for (i, cache) in self.caches.iter().enumerate() {
            let at = at.k(i);
            let url = &cache.push_url;
            if cache.kind().is_none() {
                c.report(
                    &at.k("push-url"),
                    format!(
                        "push-url `{url}` of cache {i} has an unsupported scheme: use file://, \
                         http://, https:// or s3://"
                    ),
                );
            }
            if let Some(public) = &cache.public_url
                && CacheKind::of_url(public).is_none()
            {
                c.report(
                    &at.k("public-url"),
                    format!(
                        "public-url `{public}` has an unsupported scheme: use file://, http://, \
                         https:// or s3://"
                    ),
                );
            }
            match &cache.public_key {
                None => c.report(
                    &at.k("public-key"),
                    format!(
                        "cache `{url}` has no public-key: add the public half of its \
                         signing-key-file (`nix key convert-secret-to-public`)"
                    ),
                ),
                Some(key) => {
                    if let Some(reason) = public_key_problem(key) {
                        c.report(
                            &at.k("public-key"),
                            format!("public-key of cache `{url}` {reason}"),
                        );
                    }
                }
            }
            c.secret(&at, "signing-key-file", Some(&cache.signing_key_file));
            c.secret(
                &at,
                "s3-credentials-file",
                cache.s3_credentials_file.as_ref(),
            );
            match (cache.kind(), &cache.s3_credentials_file) {
                (Some(CacheKind::S3), None) => c.report(
                    &at.k("s3-credentials-file"),
                    format!(
                        "cache `{url}` is an S3 bucket but has no s3-credentials-file: name a file \
                         with AWS_ACCESS_KEY_ID=… and AWS_SECRET_ACCESS_KEY=… lines"
                    ),
                ),
                (Some(CacheKind::File | CacheKind::Http), Some(_)) => c.report(
                    &at.k("s3-credentials-file"),
                    format!(
                        "cache `{url}` is not an S3 bucket: s3-credentials-file is only for s3://"
                    ),
                ),
                _ => {}
            }
            let Some(repos) = &cache.repos else { continue };
            if repos.is_empty() {
                c.report(
                    &at.k("repos"),
                    format!(
                        "repos of cache `{url}` is empty: omit it to push every repo, or remove \
                         the cache"
                    ),
                );
            }
            for (j, key) in repos.iter().enumerate() {
                let at = at.k("repos").k(j);
                match self.forges.get(&key.forge) {
                    None => c.report(
                        &at,
                        format!("unknown forge `{}` in repo reference `{key}`", key.forge),
                    ),
                    Some(forge) if !forge.repos.contains_key(&key.repo) => c.report(
                        &at,
                        format!(
                            "unknown repo `{}` in forge `{}` (repo reference `{key}`)",
                            key.repo, key.forge
                        ),
                    ),
                    Some(_) => {}
                }
            }
        }
    }

    /// Makes relative repo paths and secret files absolute by joining them to `base`, the
    /// directory of the spec file.
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        };
        for forge in self.forges.values_mut() {
            for file in [&mut forge.token_file, &mut forge.webhook_secret_file]
                .into_iter()
                .flatten()
            {
                resolve(file.path_mut());
            }
            for repo in forge.repos.values_mut() {
                if let Some(path) = &mut repo.path {
                    resolve(path);
                }
            }
        }
        if let Some(enrollment) = &mut self.builders.enrollment {
            resolve(enrollment.token_file.path_mut());
        }
        for cache in &mut self.caches {
            resolve(cache.signing_key_file.path_mut());
            if let Some(file) = &mut cache.s3_credentials_file {
                resolve(file.path_mut());
            }
        }
    }
}

fn is_http_url(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    !host.is_empty() && !url.contains(char::is_whitespace)
}

/// Checks that a hosted repo name has the shape its forge uses: `owner/name` on GitHub and
/// Gitea, `group/…/name` on GitLab.
fn hosted_repo_name_problem(kind: ForgeKind, name: &str) -> Option<String> {
    let slashes = name.matches('/').count();
    match kind {
        ForgeKind::Github | ForgeKind::Gitea if slashes != 1 => Some(format!(
            "{kind} repo names look like `owner/name`, not `{name}`"
        )),
        ForgeKind::Gitlab if slashes == 0 => Some(format!(
            "gitlab repo names look like `group/name` or `group/subgroup/name`, not `{name}`"
        )),
        _ => None,
    }
}

/// Checks one `branches` entry: it must be a valid glob and could match a git branch name
/// (git-check-ref-format), or it would silently match nothing.
fn branch_glob_problem(glob: &str) -> Option<String> {
    if glob.is_empty() {
        return Some("branch glob is empty".to_owned());
    }
    if glob.starts_with("refs/") {
        return Some(format!(
            "branch glob `{glob}` starts with `refs/`: globs match short names such as `main` \
             or `release/*`"
        ));
    }
    if let Some(bad) = glob
        .chars()
        .find(|&ch| ch.is_whitespace() || ch.is_control() || "~^:\\".contains(ch))
    {
        return Some(format!(
            "branch glob `{glob}` contains {bad:?}, which git forbids in branch names"
        ));
    }
    for bad in ["..", "@{", "//"] {
        if glob.contains(bad) {
            return Some(format!(
                "branch glob `{glob}` contains `{bad}`, which git forbids in branch names"
            ));
        }
    }
    if glob.starts_with(['/', '-', '.']) || glob.ends_with(['/', '.']) || glob.ends_with(".lock") {
        return Some(format!(
            "branch glob `{glob}` can never match a branch: git names do not start with `/`, \
             `-` or `.`, nor end with `/`, `.` or `.lock`"
        ));
    }
    match glob::Pattern::new(glob) {
        Ok(_) => None,
        Err(err) => Some(format!(
            "branch glob `{glob}` is not a valid glob: {}",
            err.msg
        )),
    }
}

/// Checks the `name:base64` shape of a Nix public key, whose key part is a 32-byte ed25519 key.
fn public_key_problem(key: &str) -> Option<&'static str> {
    let Some((name, data)) = key.split_once(':') else {
        return Some("must look like `name:base64`, such as `cache.example.org-1:6NCH…=`");
    };
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Some("has an empty or malformed name before `:`");
    }
    let digits = data.trim_end_matches('=');
    let valid = digits
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
    if !valid || data.len() - digits.len() > 2 || digits.len() * 6 / 8 != 32 {
        return Some("is not a base64-encoded 32-byte key");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_glob_problem_should_accept_ordinary_globs() {
        for ok in ["main", "release/*", "feature-[a-z]*", "v?.x", "**"] {
            assert_eq!(branch_glob_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "a b",
            "x~1",
            "a^",
            "a:b",
            "a..b",
            "refs/heads/main",
            "[",
            "a/",
            "x.lock",
        ] {
            assert!(branch_glob_problem(bad).is_some(), "{bad} accepted");
        }
    }

    #[test]
    fn public_key_problem_should_accept_a_real_nix_key() {
        let real = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";
        assert_eq!(public_key_problem(real), None);
        for bad in [
            "nocolon",
            ":6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=",
            "k:short",
            "k:6NCH!!",
        ] {
            assert!(public_key_problem(bad).is_some(), "{bad} accepted");
        }
    }

    #[test]
    fn is_http_url_should_need_a_scheme_and_a_host() {
        assert!(is_http_url("https://ci.example.org"));
        assert!(is_http_url("http://localhost:8080/ci/"));
        for bad in ["ci.example.org", "https://", "ftp://x", "https:// x"] {
            assert!(!is_http_url(bad), "{bad} accepted");
        }
    }
}
