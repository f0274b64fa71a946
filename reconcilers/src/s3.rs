//! Uploading a Nix binary cache to S3 (Debian's Nix 2.8 has no S3 store).
//!
//! [`S3Url`] parses Nix's `s3://BUCKET?region=R&endpoint=HOST:PORT&scheme=http` URLs;
//! [`S3Bucket::upload_cache_dir`] uploads a `file://` cache directory written by `nix copy`:
//! for every narinfo the bucket lacks, its NAR first and then the narinfo, so a reader never
//! finds a narinfo whose NAR is missing. Requests are presigned with SigV4 by `rusty-s3` and sent
//! with `reqwest`; errors name the object and S3's answer, never credentials or signatures.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

/// How long a presigned request stays valid.
const SIGNED_FOR: Duration = Duration::from_secs(15 * 60);
/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Why talking to S3 failed.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// The cache URL is not a usable `s3://` URL.
    #[error("bad S3 URL `{url}`: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The credentials file cannot be used.
    #[error("S3 credentials file {path}: {reason}")]
    Credentials {
        /// The file.
        path: PathBuf,
        /// What is wrong (never a value from the file).
        reason: String,
    },
    /// A request could not be sent or answered.
    #[error("{method} {key}: {reason}")]
    Request {
        /// The HTTP method.
        method: &'static str,
        /// The object key.
        key: String,
        /// What happened.
        reason: String,
    },
    /// A local file of the staged cache could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A parsed `s3://` cache URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    /// The bucket's name.
    pub bucket: String,
    /// The region (default `us-east-1`).
    pub region: String,
    /// The endpoint, e.g. `http://127.0.0.1:9000`; `None` for AWS.
    pub endpoint: Option<String>,
}

impl S3Url {
    /// Parses Nix's S3 store URL syntax: `s3://BUCKET` with optional `region`, `endpoint`
    /// (`HOST:PORT`, or a full `http(s)://` URL) and `scheme` (`https` unless `http`) query
    /// parameters.
    ///
    /// # Errors
    /// [`S3Error::Url`] for another scheme, an empty bucket or an unknown parameter.
    pub fn parse(url: &str) -> Result<Self, S3Error> {
        let bad = |reason: &str| S3Error::Url {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("it does not start with s3://"))?;
        let (bucket, query) = rest.split_once('?').unwrap_or((rest, ""));
        let bucket = bucket.trim_end_matches('/');
        if bucket.is_empty() || bucket.contains('/') {
            return Err(bad("it names no bucket (s3://BUCKET?region=…)"));
        }
        let (mut region, mut endpoint, mut scheme) = (None, None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "region" => region = Some(value.to_owned()),
                "endpoint" => endpoint = Some(value.to_owned()),
                "scheme" => scheme = Some(value.to_owned()),
                // Nix's own S3 options that change nothing for an upload.
                "profile" | "compression" | "parallel-compression" => {}
                other => return Err(bad(&format!("unknown parameter `{other}`"))),
            }
        }
        let scheme = scheme.unwrap_or_else(|| "https".to_owned());
        if scheme != "http" && scheme != "https" {
            return Err(bad("scheme must be http or https"));
        }
        let endpoint = endpoint.map(|e| {
            if e.starts_with("http://") || e.starts_with("https://") {
                e
            } else {
                format!("{scheme}://{e}")
            }
        });
        Ok(Self {
            bucket: bucket.to_owned(),
            region: region.unwrap_or_else(|| "us-east-1".to_owned()),
            endpoint,
        })
    }
}

/// Reads `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN` when present)
/// from a `KEY=value` file (systemd `EnvironmentFile` syntax: comments, `export `, quotes).
///
/// # Errors
/// [`S3Error::Credentials`] naming the file and what is missing, never a value.
pub fn credentials_from_file(path: &Path) -> Result<Credentials, S3Error> {
    let bad = |reason: String| S3Error::Credentials {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.kind().to_string()))?;
    let (mut key, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        let line = line.strip_prefix("export ").unwrap_or(line);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value)
            .to_owned();
        match name.trim() {
            "AWS_ACCESS_KEY_ID" => key = Some(value),
            "AWS_SECRET_ACCESS_KEY" => secret = Some(value),
            "AWS_SESSION_TOKEN" => token = Some(value),
            _ => {}
        }
    }
    let key = key.ok_or_else(|| bad("no AWS_ACCESS_KEY_ID line".to_owned()))?;
    let secret = secret.ok_or_else(|| bad("no AWS_SECRET_ACCESS_KEY line".to_owned()))?;
    Ok(match token {
        Some(token) => Credentials::new_with_token(key, secret, token),
        None => Credentials::new(key, secret),
    })
}

/// One bucket with its credentials.
#[derive(Debug)]
pub struct S3Bucket {
    bucket: Bucket,
    credentials: Credentials,
    http: reqwest::Client,
}

/// What [`S3Bucket::upload_cache_dir`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UploadReport {
    /// Narinfos uploaded (with their NARs).
    pub uploaded: usize,
    /// Narinfos the bucket already had.
    pub skipped: usize,
}

impl S3Bucket {
    /// Returns the bucket of `url`.
    ///
    /// # Errors
    /// [`S3Error::Url`] when the endpoint is not a usable URL.
    pub fn new(url: &S3Url, credentials: Credentials) -> Result<Self, S3Error> {
        let bad = |reason: String| S3Error::Url {
            url: format!("s3://{}", url.bucket),
            reason,
        };
        let (endpoint, style) = match &url.endpoint {
            Some(e) => (e.clone(), UrlStyle::Path),
            None => (
                format!("https://s3.{}.amazonaws.com", url.region),
                UrlStyle::VirtualHost,
            ),
        };
        let endpoint = url::Url::parse(&endpoint).map_err(|e| bad(e.to_string()))?;
        let bucket = Bucket::new(endpoint, style, url.bucket.clone(), url.region.clone())
            .map_err(|e| bad(e.to_string()))?;
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            bucket,
            credentials,
            http,
        })
    }

    /// Returns whether the bucket has `key` (HEAD: 200 yes, 404 no).
    ///
    /// # Errors
    /// [`S3Error::Request`] for any other answer or a transport failure.
    pub async fn exists(&self, key: &str) -> Result<bool, S3Error> {
        let url = self
            .bucket
            .head_object(Some(&self.credentials), key)
            .sign(SIGNED_FOR);
        let resp = self
            .http
            .head(url)
            .send()
            .await
            .map_err(|e| request_error("HEAD", key, e))?;
        match resp.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            status => Err(S3Error::Request {
                method: "HEAD",
                key: key.to_owned(),
                reason: format!("HTTP {status}"),
            }),
        }
    }

    /// Uploads `body` as `key`.
    ///
    /// # Errors
    /// [`S3Error::Request`] with S3's status and error code when it refuses.
    pub async fn put(&self, key: &str, body: Vec<u8>, content_type: &str) -> Result<(), S3Error> {
        let url = self
            .bucket
            .put_object(Some(&self.credentials), key)
            .sign(SIGNED_FOR);
        let resp = self
            .http
            .put(url)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await
            .map_err(|e| request_error("PUT", key, e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let text = resp.text().await.unwrap_or_default();
        Err(S3Error::Request {
            method: "PUT",
            key: key.to_owned(),
            reason: format!("HTTP {}{}", status.as_u16(), s3_code(&text)),
        })
    }

    /// Uploads what the bucket lacks of the binary cache in `dir` (written by
    /// `nix copy --to file://DIR`): each missing narinfo after its NAR, then `nix-cache-info`.
    ///
    /// # Errors
    /// The first failing request or unreadable file; what was uploaded stays (every object is
    /// complete, and narinfos only follow their NARs).
    pub async fn upload_cache_dir(&self, dir: &Path) -> Result<UploadReport, S3Error> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| S3Error::Io { path, source }
        };
        let mut narinfos = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let path = entry.map_err(io(dir))?.path();
            if path.extension().is_some_and(|e| e == "narinfo") {
                narinfos.push(path);
            }
        }
        narinfos.sort();
        let mut report = UploadReport::default();
        for path in narinfos {
            let Some(key) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                continue;
            };
            if self.exists(&key).await? {
                report.skipped += 1;
                continue;
            }
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            if let Some(nar) = narinfo_url(&text)
                && !self.exists(nar).await?
            {
                let nar_path = dir.join(nar);
                let body = tokio::fs::read(&nar_path).await.map_err(io(&nar_path))?;
                self.put(nar, body, "application/x-nix-nar").await?;
            }
            self.put(&key, text.into_bytes(), "text/x-nix-narinfo")
                .await?;
            report.uploaded += 1;
        }
        let info = "nix-cache-info";
        if !self.exists(info).await? {
            let path = dir.join(info);
            let body = std::fs::read(&path).map_err(io(&path))?;
            self.put(info, body, "text/x-nix-cache-info").await?;
        }
        Ok(report)
    }
}

/// Returns the `URL:` of a narinfo (the NAR's key, e.g. `nar/1abc….nar.xz`), when it is a
/// relative key without `..`.
pub fn narinfo_url(narinfo: &str) -> Option<&str> {
    narinfo
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .map(str::trim)
        .filter(|u| !u.is_empty() && !u.starts_with('/') && !u.contains("..") && !u.contains("://"))
}

/// Returns `: <Code>` from an S3 XML error body, or nothing.
fn s3_code(body: &str) -> String {
    body.split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
        .map(|(code, _)| format!(": {code}"))
        .unwrap_or_default()
}

/// A transport error without the (presigned) URL.
fn request_error(method: &'static str, key: &str, err: reqwest::Error) -> S3Error {
    let reason = if err.is_timeout() {
        "timed out".to_owned()
    } else if err.is_connect() {
        "cannot connect".to_owned()
    } else {
        err.without_url().to_string()
    };
    S3Error::Request {
        method,
        key: key.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_should_read_nix_style_urls() {
        assert_eq!(
            S3Url::parse("s3://cache?region=eu-west-1").unwrap(),
            S3Url {
                bucket: "cache".to_owned(),
                region: "eu-west-1".to_owned(),
                endpoint: None
            }
        );
        let local = S3Url::parse("s3://c?endpoint=127.0.0.1:9000&scheme=http").unwrap();
        assert_eq!(local.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(local.region, "us-east-1");
        let full = S3Url::parse("s3://c?endpoint=https://minio.example.org").unwrap();
        assert_eq!(full.endpoint.as_deref(), Some("https://minio.example.org"));
        for bad in [
            "s3://",
            "s3://?region=x",
            "http://c",
            "s3://c?bogus=1",
            "s3://a/b",
            "s3://c?scheme=ftp",
        ] {
            assert!(S3Url::parse(bad).is_err(), "{bad}");
        }
        assert!(
            S3Url::parse("s3://c?bogus=1")
                .unwrap_err()
                .to_string()
                .contains("unknown parameter `bogus`")
        );
    }

    #[test]
    fn credentials_should_be_read_without_ever_showing_a_value() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s3");
        std::fs::write(
            &file,
            "# keys\nexport AWS_ACCESS_KEY_ID=\"AKIDEXAMPLE\"\nAWS_SECRET_ACCESS_KEY='very-secret'\n",
        )
        .unwrap();
        let creds = credentials_from_file(&file).unwrap();
        assert_eq!(creds.key(), "AKIDEXAMPLE");
        assert_eq!(creds.secret(), "very-secret");
        assert!(!format!("{creds:?}").contains("very-secret"));

        std::fs::write(&file, "AWS_ACCESS_KEY_ID=only-the-key\n").unwrap();
        let err = credentials_from_file(&file).unwrap_err().to_string();
        assert!(err.contains("no AWS_SECRET_ACCESS_KEY line"), "{err}");
        assert!(!err.contains("only-the-key"), "{err}");
        assert!(credentials_from_file(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn narinfo_url_should_take_a_relative_key_only() {
        assert_eq!(
            narinfo_url("StorePath: /nix/store/x\nURL: nar/1abc.nar.xz\nCompression: xz\n"),
            Some("nar/1abc.nar.xz")
        );
        assert_eq!(narinfo_url("URL: ../etc/passwd\n"), None);
        assert_eq!(narinfo_url("URL: https://elsewhere/x\n"), None);
        assert_eq!(narinfo_url("StorePath: /nix/store/x\n"), None);
    }

    #[test]
    fn s3_code_should_pick_the_error_code() {
        assert_eq!(
            s3_code("<Error><Code>AccessDenied</Code><Message>no</Message></Error>"),
            ": AccessDenied"
        );
        assert_eq!(s3_code("gateway timeout"), "");
    }

    #[tokio::test]
    async fn a_closed_port_should_fail_fast_with_a_clear_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = S3Url::parse(&format!("s3://b?endpoint=127.0.0.1:{port}&scheme=http")).unwrap();
        let bucket = S3Bucket::new(&url, Credentials::new("k", "s")).unwrap();
        let err = bucket.exists("x.narinfo").await.unwrap_err().to_string();
        assert_eq!(err, "HEAD x.narinfo: cannot connect");
    }
}
