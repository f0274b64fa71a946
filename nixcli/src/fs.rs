//! Local files written beside Nix's: the parent directories of build logs and GC-root links.

use std::path::Path;

use crate::error::{Error, Result};

/// Creates the parent directory of `path`, if it has one.
pub(crate) async fn create_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => tokio::fs::create_dir_all(parent)
            .await
            .map_err(|source| Error::Io {
                path: parent.to_owned(),
                source,
            }),
        _ => Ok(()),
    }
}
