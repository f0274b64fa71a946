//! Indirect GC roots written directly, without starting `nix-store` (one process per root
//! costs ~25 ms of CPU, see `crate::build`).
//!
//! An indirect root is what `nix-store --add-root LINK --indirect` makes (Nix 2.8,
//! `LocalFSStore::addPermRoot`): `LINK` is a symlink to the store path, and a symlink in the
//! store's `nix/var/nix/gcroots/auto/` points at `LINK`. The collector follows both, so deleting
//! `LINK` releases the root, and the collector then removes the dangling registration itself.
//! Nix names the registration after a SHA-1 of the link path; reconix uses its own stable name,
//! `reconix-<FNV-1a-128 of the link path, hex>`, so registering the same link again rewrites the
//! same file.
//!
//! Both symlinks are written atomically (a symlink to a temporary name in the same directory,
//! then a rename), the link first: a registration whose link does not exist yet would be removed
//! as stale by a collector running in between.
//!
//! This works for the stores whose state directory is on this machine: the default store
//! (`/nix/var/nix`) and chroot stores (`--store /dir` → `/dir/nix/var/nix`). For any other store
//! URL, and when the state directory is not writable (a non-root user of the Nix daemon),
//! [`register`] falls back to `nix-store --add-root`.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use reconix_spec::names::{STORE_DIR, StorePath};
use tracing::debug;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::process::os_args;

/// Returns the GC-root link of the output `output` of a build rooted at `root`, as
/// `nix-store --add-root ROOT` names it: `ROOT` for `out` and `ROOT-<output>` for every other
/// output (verified with Nix 2.8).
///
/// The only place reconix forms these names: channel builds and the daemon's remote builds root
/// their outputs under them (process-mode builds get the same names from `nix-store --add-root`
/// itself), and the `gcroots` loop deletes every link under its directory whose name it does not
/// form here, so a second spelling would delete live roots and add them again.
pub fn output_link(root: &Path, output: &str) -> PathBuf {
    if output == "out" {
        root.to_owned()
    } else {
        let mut link = root.as_os_str().to_owned();
        link.push("-");
        link.push(output);
        PathBuf::from(link)
    }
}

/// Returns the links of a build's outputs ([`output_link`]) with the paths they keep alive.
pub(crate) fn output_links<'a>(
    root: &Path,
    outputs: impl IntoIterator<Item = (&'a String, &'a StorePath)>,
) -> Vec<(PathBuf, StorePath)> {
    outputs
        .into_iter()
        .map(|(name, path)| (output_link(root, name), path.clone()))
        .collect()
}

/// Returns the `gcroots/auto` directory of the store `config` uses, or `None` when that store's
/// state is not a local directory (a store URL other than `daemon`/`local`/`auto`).
///
/// The store is `--store` (`NixCli::with_store`), else `NIX_REMOTE` (from `with_env`, then the
/// environment), else the default; the default state directory honours `NIX_STATE_DIR`.
pub(crate) fn auto_dir(cli: &Config) -> Option<PathBuf> {
    let store = cli.effective_store();
    match store.as_deref().map(OsStr::as_bytes) {
        None | Some(b"auto" | b"daemon" | b"local") => {
            let state = cli
                .env_var("NIX_STATE_DIR")
                .map_or_else(|| PathBuf::from("/nix/var/nix"), PathBuf::from);
            Some(state.join("gcroots/auto"))
        }
        Some(_) => store
            .as_deref()
            .map(Path::new)
            .filter(|s| s.is_absolute())
            .map(|root| root.join("nix/var/nix/gcroots/auto")),
    }
}

/// Returns the file name of the registration of `link` (an absolute path) in `gcroots/auto`.
pub(crate) fn registration_name(link: &Path) -> String {
    format!("reconix-{:032x}", fnv1a_128(link.as_os_str().as_bytes()))
}

/// FNV-1a with 128-bit state: stable across versions and machines, unlike `std`'s hashers.
fn fnv1a_128(bytes: &[u8]) -> u128 {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    bytes.iter().fold(OFFSET, |hash, &b| {
        (hash ^ u128::from(b)).wrapping_mul(PRIME)
    })
}

/// Makes each link an indirect GC root of its store path (the paths must be valid, and kept
/// alive by the caller until this returns), creating parent directories.
///
/// # Errors
/// [`Error::Io`] when a link or registration cannot be written, or a link exists and is not a
/// symlink into the store (Nix refuses to clobber those too); the errors of `nix-store` on the
/// fallback path.
pub(crate) async fn register(cli: &Config, links: Vec<(PathBuf, StorePath)>) -> Result<()> {
    if links.is_empty() || register_direct(cli, links.clone()).await? {
        return Ok(());
    }
    for (link, path) in links {
        add_root_with_nix_store(cli, &link, &path).await?;
    }
    Ok(())
}

/// Writes the links and their registrations directly, in one pass on a blocking thread, when
/// the store's state directory is on this machine and writable; returns false (nothing done)
/// when it is not. The paths need not be valid yet: a collector ignores a root whose path is
/// not valid, and keeps it once the path has arrived (though Nix 2.8 can still delete a path
/// imported while a collection runs: `build_remote` checks its outputs afterwards).
///
/// # Errors
/// [`Error::Io`] when a link or registration cannot be written for another reason than
/// permissions, or a link exists and is not a symlink into the store.
pub(crate) async fn register_direct(
    cli: &Config,
    links: Vec<(PathBuf, StorePath)>,
) -> Result<bool> {
    let Some(auto) = auto_dir(cli) else {
        return Ok(false);
    };
    let written = tokio::task::spawn_blocking(move || {
        links
            .iter()
            .try_for_each(|(link, path)| add_indirect_root(&auto, link, path))
    })
    .await
    .map_err(Error::Task)?;
    match written {
        Ok(()) => Ok(true),
        Err(Error::Io { path, source }) if source.kind() == io::ErrorKind::PermissionDenied => {
            debug!(path = %path.display(), "gc roots not writable here, asking nix-store");
            Ok(false)
        }
        Err(err) => Err(err),
    }
}

/// Registers one root by running `nix-store --add-root LINK --indirect --realise PATH`.
pub(crate) async fn add_root_with_nix_store(
    cli: &Config,
    link: &Path,
    path: &StorePath,
) -> Result<()> {
    let mut args = os_args(["--add-root"]);
    args.push(link.as_os_str().to_owned());
    args.extend(os_args(["--indirect", "--realise", path.as_str()]));
    cli.run_ok(&cli.nix_store, &args).await.map(drop)
}

/// Points `link` at `target` and registers it in `auto` (blocking IO).
fn add_indirect_root(auto: &Path, link: &Path, target: &StorePath) -> Result<()> {
    let io_error = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io { path, source }
    };
    let link = std::path::absolute(link).map_err(io_error(link))?;
    let target = Path::new(target.as_str());
    match std::fs::symlink_metadata(&link) {
        Ok(meta) => {
            let into_store = meta.is_symlink()
                && std::fs::read_link(&link)
                    .is_ok_and(|t| t.as_os_str().as_bytes().starts_with(STORE_DIR.as_bytes()));
            if !into_store {
                return Err(Error::Io {
                    path: link,
                    source: io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "exists and is not a symlink into the Nix store",
                    ),
                });
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(Error::Io { path: link, source }),
    }
    if let Some(parent) = link.parent() {
        std::fs::create_dir_all(parent).map_err(io_error(parent))?;
    }
    replace_symlink(target, &link).map_err(io_error(&link))?;
    std::fs::create_dir_all(auto).map_err(io_error(auto))?;
    let registration = auto.join(registration_name(&link));
    replace_symlink(&link, &registration).map_err(io_error(&registration))
}

/// The name prefix of the temporary symlink a root is written as before it is renamed into
/// place. Whoever walks root directories must leave such entries alone: removing one between
/// its creation and the rename fails the root's registration.
pub const TEMPORARY_ROOT_PREFIX: &str = ".reconix-root-";

/// Makes `link` a symlink to `target`, atomically replacing whatever symlink was there; does
/// nothing when it already points there.
fn replace_symlink(target: &Path, link: &Path) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    if std::fs::read_link(link).is_ok_and(|t| t == target) {
        return Ok(());
    }
    let dir = link.parent().unwrap_or(Path::new("/"));
    let tmp = dir.join(format!(
        "{TEMPORARY_ROOT_PREFIX}{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::os::unix::fs::symlink(target, &tmp)?;
    std::fs::rename(&tmp, link).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const OUT: &str = "/nix/store/7xbvbdqxbqxqnzg56mmd7l9bbrb4c534-a";

    fn store_path(s: &str) -> StorePath {
        StorePath::new(s).unwrap()
    }

    #[test]
    fn fnv1a_128_should_match_the_reference_vectors() {
        assert_eq!(fnv1a_128(b""), 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d);
        assert_eq!(fnv1a_128(b"a"), 0xd228_cb69_6f1a_8caf_7891_2b70_4e4a_8964);
    }

    #[test]
    fn registration_name_should_be_stable_and_differ_per_link() {
        assert_eq!(
            registration_name(Path::new("/tmp/roots/a")),
            "reconix-0c93ffc0f071fc813cebc28b69405595"
        );
        assert_ne!(
            registration_name(Path::new("/tmp/roots/a")),
            registration_name(Path::new("/tmp/roots/b"))
        );
    }

    #[test]
    fn output_links_should_name_out_bare_and_others_with_a_dash_suffix() {
        let outputs: BTreeMap<String, StorePath> = [
            ("out".to_owned(), store_path(OUT)),
            (
                "dev".to_owned(),
                store_path("/nix/store/7xbvbdqxbqxqnzg56mmd7l9bbrb4c534-a-dev"),
            ),
        ]
        .into();
        let links: Vec<PathBuf> = output_links(Path::new("/r/job"), &outputs)
            .into_iter()
            .map(|(l, _)| l)
            .collect();
        assert_eq!(
            links,
            [PathBuf::from("/r/job-dev"), PathBuf::from("/r/job")]
        );
    }

    #[test]
    fn output_link_should_name_out_bare_and_others_with_a_dash_suffix() {
        let root = Path::new("/s/gcroots/gl/group%2Fproj/3/packages.x86_64-linux.hello");
        assert_eq!(output_link(root, "out"), root);
        assert_eq!(
            output_link(root, "dev"),
            Path::new("/s/gcroots/gl/group%2Fproj/3/packages.x86_64-linux.hello-dev")
        );
        // An output named like a suffix is still a suffix: `out` alone is special.
        assert_eq!(
            output_link(root, "out-bin"),
            Path::new(&format!("{}-out-bin", root.display()))
        );
    }

    #[test]
    fn auto_dir_should_follow_the_store_setting() {
        let nix = crate::NixCli::new()
            .with_env("NIX_REMOTE", "")
            .with_env("NIX_STATE_DIR", "");
        let auto_dir = |nix: &crate::NixCli| auto_dir(&nix.config);
        assert_eq!(
            auto_dir(&nix),
            Some(PathBuf::from("/nix/var/nix/gcroots/auto"))
        );
        assert_eq!(
            auto_dir(&nix.clone().with_store("/var/lib/ci-store")),
            Some(PathBuf::from("/var/lib/ci-store/nix/var/nix/gcroots/auto"))
        );
        assert_eq!(auto_dir(&nix.clone().with_store("daemon")), auto_dir(&nix));
        assert_eq!(auto_dir(&nix.clone().with_store("ssh-ng://builder")), None);
        assert_eq!(auto_dir(&nix.clone().with_store("local?root=/x")), None);
        assert_eq!(
            auto_dir(&nix.clone().with_env("NIX_REMOTE", "/srv/store")),
            Some(PathBuf::from("/srv/store/nix/var/nix/gcroots/auto"))
        );
        assert_eq!(
            auto_dir(&nix.with_env("NIX_STATE_DIR", "/state")),
            Some(PathBuf::from("/state/gcroots/auto"))
        );
    }

    #[test]
    fn add_indirect_root_should_write_the_link_and_its_registration_idempotently() {
        let dir = tempfile::tempdir().unwrap();
        let auto = dir.path().join("state/gcroots/auto");
        let link = dir.path().join("roots/deep/job");
        add_indirect_root(&auto, &link, &store_path(OUT)).unwrap();
        add_indirect_root(&auto, &link, &store_path(OUT)).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new(OUT));
        let registrations: Vec<_> = std::fs::read_dir(&auto).unwrap().flatten().collect();
        assert_eq!(registrations.len(), 1);
        assert_eq!(
            registrations[0].file_name().to_string_lossy(),
            registration_name(&link)
        );
        assert_eq!(std::fs::read_link(registrations[0].path()).unwrap(), link);
        // No temporary names are left behind.
        assert_eq!(
            std::fs::read_dir(link.parent().unwrap()).unwrap().count(),
            1
        );
    }

    #[test]
    fn add_indirect_root_should_repoint_a_link_to_another_store_path() {
        let dir = tempfile::tempdir().unwrap();
        let auto = dir.path().join("auto");
        let link = dir.path().join("job");
        let other = "/nix/store/00000000000000000000000000000000-old";
        std::os::unix::fs::symlink(other, &link).unwrap();
        add_indirect_root(&auto, &link, &store_path(OUT)).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new(OUT));
    }

    #[test]
    fn add_indirect_root_should_refuse_to_clobber_a_file_or_a_foreign_link() {
        let dir = tempfile::tempdir().unwrap();
        let auto = dir.path().join("auto");
        let file = dir.path().join("file");
        std::fs::write(&file, "keep me").unwrap();
        let foreign = dir.path().join("foreign");
        std::os::unix::fs::symlink("/etc/hostname", &foreign).unwrap();
        for link in [&file, &foreign] {
            let err = add_indirect_root(&auto, link, &store_path(OUT)).unwrap_err();
            assert!(matches!(err, Error::Io { .. }), "{err:?}");
        }
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
        assert!(!auto.exists(), "nothing registered");
    }
}
