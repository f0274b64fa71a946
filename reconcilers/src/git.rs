//! Branch heads of a `local` forge repository, read with `git for-each-ref`.
//!
//! Hosted forges' code is fetched into a bare mirror per repository ([`fetch_into_mirror`]);
//! Nix then evaluates `git+file://<mirror>?ref=…&rev=…`.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

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
/// `cache` spares the `git` processes when the refs have not changed since its last read (see
/// [`HeadsCache`]).
///
/// # Errors
/// Returns [`Error::Git`] when git cannot run or the path is not a repository.
pub async fn branch_heads(
    cache: &HeadsCache,
    path: &Path,
    wanted: Option<&(dyn Fn(&str) -> bool + Sync)>,
) -> Result<Vec<Head>> {
    let dir = path.to_owned();
    let print = tokio::task::spawn_blocking(move || refs_fingerprint(&dir, SystemTime::now()))
        .await
        .ok()
        .flatten();
    let cached = print.as_ref().and_then(|p| cache.get(path, p));
    let read = match cached {
        Some(read) => read,
        None => {
            let out = git(
                path,
                &[
                    "for-each-ref",
                    "--format=%(refname) %(objectname)",
                    "refs/heads/",
                ],
            )
            .await?;
            let read = Read {
                heads: parse_for_each_ref(&out),
                default: default_branch(path).await.ok(),
            };
            if let Some(print) = print {
                cache.put(path, print, read.clone());
            }
            read
        }
    };
    let mut heads = read.heads;
    match wanted {
        Some(wanted) => heads.retain(|h| wanted(h.git_ref.trim_start_matches("refs/heads/"))),
        None => {
            let default = match read.default {
                Some(default) => default,
                // Detached or unreadable HEAD: asked again, for git's own words.
                None => default_branch(path).await?,
            };
            heads.retain(|h| h.git_ref.trim_start_matches("refs/heads/") == default);
        }
    }
    Ok(heads)
}

/// What one read of a repository's refs found: every branch head, and the default branch.
#[derive(Debug, Clone)]
struct Read {
    heads: Vec<Head>,
    default: Option<String>,
}

/// The last [`branch_heads`] read of each local repository, with the fingerprint of its refs
/// then: a `local` forge polled every 100 ms would otherwise start two `git` processes per
/// poll (some 4 ms of CPU) to learn that nothing moved.
#[derive(Debug, Default)]
pub struct HeadsCache {
    reads: Mutex<HashMap<PathBuf, (Fingerprint, Read)>>,
}

impl HeadsCache {
    fn get(&self, path: &Path, print: &Fingerprint) -> Option<Read> {
        let reads = self.reads.lock().unwrap_or_else(PoisonError::into_inner);
        reads
            .get(path)
            .filter(|(p, _)| p == print)
            .map(|(_, read)| read.clone())
    }

    fn put(&self, path: &Path, print: Fingerprint, read: Read) {
        let mut reads = self.reads.lock().unwrap_or_else(PoisonError::into_inner);
        reads.insert(path.to_owned(), (print, read));
    }
}

/// What the files that hold a repository's branch heads look like: `HEAD`, `packed-refs` and
/// everything under `refs/heads/`, each with its inode, size, and modification and change
/// times in nanoseconds. git updates a ref by renaming a new file over it (a new inode and
/// times) and rewrites `packed-refs` whole, so any move of a branch changes this.
type Fingerprint = Vec<(PathBuf, u64, u64, i128, i128)>;

/// Files changed this recently are not trusted to show a later change in their times (git's
/// "racy git" rule, for file systems with coarse timestamps).
const RACY: Duration = Duration::from_secs(2);

/// Returns the fingerprint of the refs of the repository at `path` (a work tree with a `.git`
/// directory, or a bare repository), or `None` when it cannot be trusted: another layout (a
/// linked work tree, reftable), an unreadable file, or a file changed within [`RACY`] of `now`.
fn refs_fingerprint(path: &Path, now: SystemTime) -> Option<Fingerprint> {
    let dotgit = path.join(".git");
    let gitdir = if dotgit.is_dir() {
        dotgit
    } else {
        path.to_owned()
    };
    if gitdir.join("commondir").exists() || gitdir.join("reftable").exists() {
        return None;
    }
    let recent = now.checked_sub(RACY)?;
    let mut print = Fingerprint::new();
    let mut add = |file: &Path, meta: &std::fs::Metadata| -> Option<()> {
        if meta.modified().ok()? > recent {
            return None;
        }
        let nanos = |secs: i64, ns: i64| i128::from(secs) * 1_000_000_000 + i128::from(ns);
        print.push((
            file.strip_prefix(&gitdir).ok()?.to_owned(),
            meta.ino(),
            meta.len(),
            nanos(meta.mtime(), meta.mtime_nsec()),
            nanos(meta.ctime(), meta.ctime_nsec()),
        ));
        Some(())
    };
    for name in ["HEAD", "packed-refs"] {
        let file = gitdir.join(name);
        match std::fs::symlink_metadata(&file) {
            Ok(meta) => add(&file, &meta)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && name == "packed-refs" => {}
            Err(_) => return None,
        }
    }
    let mut dirs = vec![gitdir.join("refs/heads")];
    while let Some(dir) = dirs.pop() {
        add(&dir, &std::fs::symlink_metadata(&dir).ok()?)?;
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
            .ok()?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()
            .ok()?;
        entries.sort();
        for entry in entries {
            let meta = std::fs::symlink_metadata(&entry).ok()?;
            if meta.is_dir() {
                dirs.push(entry);
            } else {
                add(&entry, &meta)?;
            }
        }
    }
    Some(print)
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

    /// Moves the modification time of everything under `dir` 10 s back, out of the racy window.
    fn age(dir: &Path) {
        let past = SystemTime::now() - Duration::from_secs(10);
        let mut stack = vec![dir.to_owned()];
        while let Some(path) = stack.pop() {
            if path.is_dir() {
                stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            }
            let file = std::fs::File::open(&path).unwrap();
            file.set_times(std::fs::FileTimes::new().set_modified(past))
                .unwrap();
        }
    }

    #[tokio::test]
    async fn heads_should_be_read_again_exactly_when_a_branch_moved_or_went() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("repo");
        std::fs::create_dir(&repo).unwrap();
        sh(&repo, &["init", "-q"]);
        sh(&repo, &["commit", "-q", "--allow-empty", "-m", "one"]);
        sh(&repo, &["branch", "feature"]);
        let now = SystemTime::now;
        // Just written: racy, so not trusted.
        assert_eq!(refs_fingerprint(&repo, now()), None);
        age(&repo.join(".git"));
        let first = refs_fingerprint(&repo, now()).unwrap();
        assert_eq!(refs_fingerprint(&repo, now()).as_ref(), Some(&first));

        let cache = HeadsCache::default();
        let all = |_: &str| true;
        let heads = branch_heads(&cache, &repo, Some(&all)).await.unwrap();
        assert_eq!(heads.len(), 2);
        // A cached read: even a repository git cannot read any more gives the same answer.
        let config = repo.join(".git/config");
        let saved = std::fs::read(&config).unwrap();
        std::fs::write(&config, "not a config").unwrap();
        assert_eq!(
            branch_heads(&cache, &repo, Some(&all)).await.unwrap(),
            heads
        );
        std::fs::write(&config, saved).unwrap();

        // A new commit on main: a new fingerprint, and the new head.
        sh(&repo, &["commit", "-q", "--allow-empty", "-m", "two"]);
        age(&repo.join(".git"));
        let second = refs_fingerprint(&repo, now()).unwrap();
        assert_ne!(second, first);
        let moved = branch_heads(&cache, &repo, None).await.unwrap();
        assert_eq!(moved.len(), 1);
        assert_eq!(moved[0].rev, sh(&repo, &["rev-parse", "main"]));
        assert_ne!(
            moved[0].rev,
            heads
                .iter()
                .find(|h| h.git_ref == "refs/heads/main")
                .unwrap()
                .rev
        );

        // A deleted branch, and packed refs.
        sh(&repo, &["branch", "-D", "-q", "feature"]);
        age(&repo.join(".git"));
        assert_ne!(refs_fingerprint(&repo, now()).unwrap(), second);
        assert_eq!(
            branch_heads(&cache, &repo, Some(&all)).await.unwrap().len(),
            1
        );
        sh(&repo, &["branch", "packed"]);
        sh(&repo, &["pack-refs", "--all"]);
        age(&repo.join(".git"));
        let heads = branch_heads(&cache, &repo, Some(&all)).await.unwrap();
        assert_eq!(heads.len(), 2, "{heads:?}");
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
