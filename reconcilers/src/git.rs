//! Branch heads of a `local` forge repository, read with `git for-each-ref`.
//!
//! Hosted forges' code is fetched into a bare mirror per repository ([`fetch_into_mirror`]);
//! Nix then evaluates `git+file://<mirror>?ref=…&rev=…`.

use std::path::Path;

use tokio::process::Command;

use crate::{Error, Result};

/// A branch head: the full ref name and the commit it points at.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Head {
    /// The full ref name, e.g. `refs/heads/main`.
    pub git_ref: String,
    /// The 40-hex commit sha.
    pub rev: String,
}

/// Reads the heads of the branches of the repository at `path` that `wanted` accepts (given the
/// short branch name, e.g. `main` or `release/1.0`). With `wanted = None`, only the default branch
/// (where HEAD points) is returned.
///
/// # Errors
/// Returns [`Error::Git`] when git cannot run or the path is not a repository.
pub async fn branch_heads(
    path: &Path,
    wanted: Option<&(dyn Fn(&str) -> bool + Sync)>,
) -> Result<Vec<Head>> {
    let out = git(
        path,
        &[
            "for-each-ref",
            "--format=%(refname) %(objectname)",
            "refs/heads/",
        ],
    )
    .await?;
    let mut heads = parse_for_each_ref(&out);
    match wanted {
        Some(wanted) => heads.retain(|h| wanted(h.git_ref.trim_start_matches("refs/heads/"))),
        None => {
            let default = default_branch(path).await?;
            heads.retain(|h| h.git_ref.trim_start_matches("refs/heads/") == default);
        }
    }
    Ok(heads)
}

/// Returns the short name of the branch HEAD points at (the repository's default branch).
///
/// # Errors
/// Returns [`Error::Git`] when HEAD is detached or git fails.
pub async fn default_branch(path: &Path) -> Result<String> {
    let out = git(path, &["symbolic-ref", "-q", "HEAD"]).await?;
    Ok(out.trim().trim_start_matches("refs/heads/").to_owned())
}

/// Parses `git for-each-ref --format='%(refname) %(objectname)'` output.
pub fn parse_for_each_ref(out: &str) -> Vec<Head> {
    out.lines()
        .filter_map(|line| {
            let (git_ref, rev) = line.trim().rsplit_once(' ')?;
            (rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit())).then(|| Head {
                git_ref: git_ref.to_owned(),
                rev: rev.to_owned(),
            })
        })
        .collect()
}

/// Credentials for fetching over HTTP: sent as a Basic `Authorization` header through git's
/// environment-provided config, so the token appears neither in argv nor in the URL (and so in
/// no error message).
#[derive(Debug, Clone)]
pub struct FetchAuth {
    /// The Basic-auth user the forge expects with a token: `x-access-token` (GitHub), `oauth2`
    /// (GitLab), anything (Gitea).
    pub user: &'static str,
    /// The token.
    pub token: reconix_spec::Secret,
}

impl FetchAuth {
    /// Returns the credentials a forge of `kind` expects with an API token.
    pub fn for_kind(kind: reconix_spec::ForgeKind, token: reconix_spec::Secret) -> Self {
        let user = match kind {
            reconix_spec::ForgeKind::Gitlab => "oauth2",
            reconix_spec::ForgeKind::Github => "x-access-token",
            _ => "reconix",
        };
        Self { user, token }
    }
}

/// Fetches `git_ref` from `url` into the bare mirror at `mirror` (created when missing) and
/// checks that `rev` is there.
///
/// The ref is fetched under its own name (`+refs/pull/3/head:refs/pull/3/head`), forced, without
/// tags. Nothing from the fetched repository is executed: no hooks run in a bare fetch.
///
/// # Errors
/// Returns [`Error::Git`] when git fails or `rev` is not in the mirror after the fetch (the ref
/// moved on meanwhile).
pub async fn fetch_into_mirror(
    mirror: &Path,
    url: &str,
    auth: Option<&FetchAuth>,
    git_ref: &str,
    rev: &str,
) -> Result<()> {
    if !mirror.join("HEAD").exists() {
        tokio::fs::create_dir_all(mirror)
            .await
            .map_err(|source| Error::Io {
                context: format!("creating mirror {}", mirror.display()),
                source,
            })?;
        git(mirror, &["init", "--bare", "-q"]).await?;
    }
    if !rev.bytes().all(|b| b.is_ascii_hexdigit()) || git_ref.starts_with('-') {
        return Err(Error::Git {
            path: mirror.to_owned(),
            message: format!("refusing to fetch ref {git_ref:?} at rev {rev:?}"),
        });
    }
    let refspec = format!("+{git_ref}:{git_ref}");
    let mut cmd = Command::new("git");
    cmd.arg("-C")
        .arg(mirror)
        .args(["-c", "safe.directory=*"])
        .args(["fetch", "--no-tags", "--quiet", "--", url, &refspec])
        .env("GIT_TERMINAL_PROMPT", "0")
        .kill_on_drop(true);
    if let Some(auth) = auth {
        use base64::Engine as _;
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            auth.user,
            auth.token.expose()
        ));
        cmd.env("GIT_CONFIG_COUNT", "1")
            .env("GIT_CONFIG_KEY_0", "http.extraHeader")
            .env(
                "GIT_CONFIG_VALUE_0",
                format!("Authorization: Basic {basic}"),
            );
    }
    let out = cmd.output().await.map_err(|source| Error::Git {
        path: mirror.to_owned(),
        message: source.to_string(),
    })?;
    if !out.status.success() {
        return Err(Error::Git {
            path: mirror.to_owned(),
            message: format!(
                "fetching {git_ref} from {url}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    git(mirror, &["cat-file", "-e", &format!("{rev}^{{commit}}")])
        .await
        .map_err(|_| Error::Git {
            path: mirror.to_owned(),
            message: format!("commit {rev} is not on {git_ref} any more"),
        })?;
    Ok(())
}

async fn git(path: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(path)
        // A checkout owned by another user must not make git refuse to read it.
        .args(["-c", "safe.directory=*"])
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| Error::Git {
            path: path.to_owned(),
            message: source.to_string(),
        })?;
    if !out.status.success() {
        return Err(Error::Git {
            path: path.to_owned(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn for_each_ref_output_should_parse_into_heads() {
        let out = "refs/heads/main 0123456789abcdef0123456789abcdef01234567\n\
                   refs/heads/release/1.0 89abcdef0123456789abcdef0123456789abcdef\n\
                   garbage\n";
        let heads = parse_for_each_ref(out);
        assert_eq!(heads.len(), 2);
        assert_eq!(heads[1].git_ref, "refs/heads/release/1.0");
    }

    fn sh(dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    #[tokio::test]
    async fn a_pull_request_ref_should_be_fetched_into_a_new_mirror() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).unwrap();
        sh(&src, &["init", "-q"]);
        sh(&src, &["commit", "-q", "--allow-empty", "-m", "one"]);
        let rev = sh(&src, &["rev-parse", "HEAD"]);
        sh(&src, &["update-ref", "refs/pull/3/head", &rev]);
        let mirror = tmp.path().join("mirrors/gh/a%2Fb.git");
        let url = format!("file://{}", src.display());
        fetch_into_mirror(&mirror, &url, None, "refs/pull/3/head", &rev)
            .await
            .unwrap();
        assert_eq!(sh(&mirror, &["rev-parse", "refs/pull/3/head"]), rev);
        // A second fetch reuses the mirror; an unknown commit is reported, not ignored.
        let err = fetch_into_mirror(&mirror, &url, None, "refs/pull/3/head", &"0".repeat(40))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("is not on refs/pull/3/head"),
            "{err}"
        );
        let err = fetch_into_mirror(&mirror, &url, None, "--upload-pack=x", &rev)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("refusing"), "{err}");
    }
}
