//! Binary caches that build results are signed and pushed to (`caches`).

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{RepoKey, SecretFile};

/// A binary cache that successful build outputs are signed and pushed to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Cache {
    /// Where outputs are uploaded: `file:///srv/cache`, `https://…` (HTTP PUT) or
    /// `s3://bucket?region=…` (uploaded and signed by reconix itself).
    pub push_url: String,
    /// The URL clients substitute from, when it differs from push-url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// The cache's public key, `name:base64`, as `nix key convert-secret-to-public` prints it.
    /// Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// File holding the secret signing key (`nix key generate-secret`).
    pub signing_key_file: SecretFile,
    /// For `s3://` caches only: a file with the bucket's credentials as `KEY=value` lines,
    /// `AWS_ACCESS_KEY_ID=…` and `AWS_SECRET_ACCESS_KEY=…` (a systemd `EnvironmentFile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_credentials_file: Option<SecretFile>,
    /// Only these repos (`<forge>/<repo>`) push here; omitted means every repo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repos: Option<Vec<RepoKey>>,
}

impl Cache {
    /// Returns the kind of store behind push-url, or `None` for an unsupported scheme.
    pub fn kind(&self) -> Option<CacheKind> {
        CacheKind::of_url(&self.push_url)
    }

    /// Returns the URL clients substitute from: public-url, else push-url.
    pub fn substituter_url(&self) -> &str {
        self.public_url.as_deref().unwrap_or(&self.push_url)
    }

    /// Returns true when builds of `repo` are pushed to this cache.
    pub fn applies_to(&self, repo: &RepoKey) -> bool {
        self.repos.as_ref().is_none_or(|repos| repos.contains(repo))
    }
}

/// The kind of store a cache URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheKind {
    /// A local directory, `file://`.
    File,
    /// An HTTP binary cache that accepts PUT, `http://` or `https://`.
    Http,
    /// An S3 bucket, `s3://`.
    S3,
}

impl CacheKind {
    /// Returns the kind for a URL's scheme, or `None` when the scheme is not supported.
    pub fn of_url(url: &str) -> Option<Self> {
        let (scheme, rest) = url.split_once("://")?;
        if rest.is_empty() {
            return None;
        }
        match scheme {
            "file" => Some(Self::File),
            "http" | "https" => Some(Self::Http),
            "s3" => Some(Self::S3),
            _ => None,
        }
    }
}

impl fmt::Display for CacheKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::File => "file",
            Self::Http => "http",
            Self::S3 => "s3",
        })
    }
}
