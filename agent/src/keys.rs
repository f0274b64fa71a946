//! Persistent ed25519 keys in OpenSSH format, and the fingerprints that name them.
//!
//! Both sides keep one key each in their state directory: the agent's is its SSH host key and
//! identity (`agent_ed25519`), the coordinator's authenticates it to agents
//! (`coordinator_ed25519`). Files are written atomically with mode 0600 and refused when other
//! users can read them, as OpenSSH does.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, HashAlg, PrivateKey, PublicKey};

use crate::{Error, Result};

pub use russh::keys::ssh_key::Fingerprint;

/// Returns the SHA-256 fingerprint of `key`, displayed as `SHA256:<base64>` like `ssh-keygen -l`.
pub fn fingerprint(key: &PublicKey) -> Fingerprint {
    key.fingerprint(HashAlg::Sha256)
}

/// Parses a `SHA256:<base64>` fingerprint, as printed by `ssh-keygen -l` and by reconix.
///
/// # Errors
/// [`Error::BadFingerprint`] when `text` is not a SHA-256 fingerprint.
pub fn parse_fingerprint(text: &str) -> Result<Fingerprint> {
    match text.trim().parse::<Fingerprint>() {
        Ok(fp @ Fingerprint::Sha256(_)) => Ok(fp),
        _ => Err(Error::BadFingerprint(text.to_owned())),
    }
}

/// Loads the ed25519 key at `path`, or generates one and stores it there (mode 0600, OpenSSH
/// format) when the file does not exist. The parent directory is created with mode 0700.
///
/// # Errors
/// When the file cannot be read or written, is accessible by other users, or holds no valid key.
pub fn load_or_create_key(path: &Path) -> Result<PrivateKey> {
    match fs::metadata(path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(Error::KeyPermissions {
                    path: path.to_owned(),
                    mode,
                });
            }
            let text = fs::read_to_string(path).map_err(|source| key_file(path, source))?;
            PrivateKey::from_openssh(text.as_bytes()).map_err(Error::Key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                ensure_dir(dir)?;
            }
            let key =
                PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).map_err(Error::Key)?;
            let text = key.to_openssh(LineEnding::LF).map_err(Error::Key)?;
            write_atomic(path, text.as_bytes(), 0o600)?;
            Ok(key)
        }
        Err(source) => Err(key_file(path, source)),
    }
}

/// Creates `dir` (and its parents) with mode 0700 when missing.
pub(crate) fn ensure_dir(dir: &Path) -> Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| Error::StateDir {
            path: dir.to_owned(),
            source,
        })
}

/// Writes `bytes` to `path` through a temporary file and a rename, so that a crash never leaves
/// a half-written key behind.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let write = || -> std::io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // `mode` only applies to new files: a stale temporary file keeps its old bits.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|source| key_file(path, source))
}

fn key_file(path: &Path, source: std::io::Error) -> Error {
    Error::KeyFile {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_or_create_key_should_persist_one_key_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/key");
        let first = load_or_create_key(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let second = load_or_create_key(&path).unwrap();
        assert_eq!(
            fingerprint(first.public_key()),
            fingerprint(second.public_key())
        );
        assert!(
            fs::read_to_string(&path)
                .unwrap()
                .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----")
        );
    }

    #[test]
    fn load_or_create_key_should_refuse_a_world_readable_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        load_or_create_key(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load_or_create_key(&path),
            Err(Error::KeyPermissions { mode: 0o644, .. })
        ));
    }

    #[test]
    fn parse_fingerprint_should_round_trip_and_refuse_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let key = load_or_create_key(&dir.path().join("key")).unwrap();
        let fp = fingerprint(key.public_key());
        assert_eq!(parse_fingerprint(&fp.to_string()).unwrap(), fp);
        assert!(fp.to_string().starts_with("SHA256:"));
        for bad in ["", "SHA256:", "MD5:aa:bb", "hello"] {
            assert!(parse_fingerprint(bad).is_err(), "{bad} accepted");
        }
    }
}
