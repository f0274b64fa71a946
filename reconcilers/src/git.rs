//! Branch heads of a `local` forge repository, read with `git for-each-ref`.
//!
//! This is the `local` forge's whole API surface for now; hosted forges get their own clients.

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
}
