//! `Nix::inspect_outputs`: reads Hydra's `nix-support/` conventions in a build's outputs (see
//! [`crate::parse::outputs`] for the file formats).
//!
//! The files are read directly below the store (the chroot store's root when there is one), as
//! `.drv` files are: no Nix process is needed to read a valid path.

use std::path::Path;

use reconix_spec::names::StorePath;

use crate::config::Config;
use crate::parse::outputs::{parse_build_products, parse_release_name};
use crate::port::OutputsReport;
use crate::{Error, Result};

/// The most a `hydra-build-products` or `hydra-release-name` file is read: larger ones are an
/// error, not a list of products (Hydra's own lists are a few lines).
const MAX_FILE: u64 = 1 << 20;

/// Reads `nix-support/{failed,hydra-build-products,hydra-release-name}` of each output.
pub(crate) async fn inspect_outputs(cli: &Config, outputs: &[StorePath]) -> Result<OutputsReport> {
    let mut report = OutputsReport::default();
    for output in outputs {
        let support = cli.physical(output).join("nix-support");
        // `symlink_metadata`: a `failed` that is a dangling symlink still says so.
        if tokio::fs::symlink_metadata(support.join("failed"))
            .await
            .is_ok()
        {
            report.failed = true;
        }
        if let Some(text) = read_small(output, &support.join("hydra-build-products")).await? {
            let parsed = parse_build_products(&text);
            report.products.extend(parsed.products);
            report.rejected_products.extend(parsed.rejected);
        }
        if report.release_name.is_none()
            && let Some(text) = read_small(output, &support.join("hydra-release-name")).await?
        {
            report.release_name = parse_release_name(&text);
        }
    }
    Ok(report)
}

/// Reads a small text file of an output; `None` when it does not exist (or the output is not
/// a directory).
async fn read_small(output: &StorePath, file: &Path) -> Result<Option<String>> {
    let error = |source| Error::StoreRead {
        path: output.to_string(),
        source,
    };
    let meta = match tokio::fs::metadata(file).await {
        Ok(meta) => meta,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(error(e)),
    };
    if meta.len() > MAX_FILE {
        return Err(error(std::io::Error::other(format!(
            "{} is larger than {MAX_FILE} bytes",
            file.display()
        ))));
    }
    let bytes = tokio::fs::read(file).await.map_err(error)?;
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config whose "store" is a temporary directory holding two outputs.
    fn store() -> (tempfile::TempDir, Config, StorePath, StorePath) {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::NixCli::new()
            .with_store(dir.path())
            .config
            .as_ref()
            .clone();
        let out = StorePath::new(format!("/nix/store/{}-x", "a".repeat(32))).unwrap();
        let doc = StorePath::new(format!("/nix/store/{}-x-doc", "b".repeat(32))).unwrap();
        (dir, config, out, doc)
    }

    fn write(config: &Config, output: &StorePath, file: &str, text: &str) {
        let path = config.physical(output).join("nix-support").join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[tokio::test]
    async fn outputs_without_nix_support_should_report_nothing() {
        let (_dir, config, out, doc) = store();
        std::fs::create_dir_all(config.physical(&out)).unwrap();
        // A file output (no directory at all) is fine too.
        std::fs::create_dir_all(config.physical(&doc).parent().unwrap()).unwrap();
        std::fs::write(config.physical(&doc), "plain").unwrap();
        let report = inspect_outputs(&config, &[out, doc]).await.unwrap();
        assert_eq!(report, OutputsReport::default());
    }

    #[tokio::test]
    async fn every_output_should_be_read_for_failed_products_and_release_name() {
        let (_dir, config, out, doc) = store();
        write(&config, &out, "hydra-release-name", "x-1.0\n");
        write(
            &config,
            &out,
            "hydra-build-products",
            "file binary-dist /nix/store/x/a\nbad\n",
        );
        write(&config, &doc, "failed", "");
        write(
            &config,
            &doc,
            "hydra-build-products",
            "doc manual /nix/store/y index.html\n",
        );
        write(&config, &doc, "hydra-release-name", "ignored\n");
        let report = inspect_outputs(&config, &[out, doc]).await.unwrap();
        assert!(report.failed);
        assert_eq!(report.release_name.as_deref(), Some("x-1.0"));
        let kinds: Vec<_> = report.products.iter().map(|p| p.kind.as_str()).collect();
        assert_eq!(kinds, ["file", "doc"]);
        assert_eq!(report.rejected_products, ["bad"]);
    }
}
