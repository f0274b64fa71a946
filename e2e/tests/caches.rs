//! End to end: the `caches` loop signs and pushes every succeeded output to a `file://` cache
//! and an `http://` cache (one that is down at first), and a fresh store substitutes from each
//! with the right public key only.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use reconix_e2e::{DEADLINE, DaemonConfig, GitRepo, TestDaemon, jobs_by_attr, local_spec, salt};
use serde_json::Value;

const P: &str = "packages.x86_64-linux.";

/// `a`; `c` links to `b`, which is not a job: it reaches the caches as part of c's closure.
fn flake(salt: &str) -> String {
    r#"{
  outputs = { self }:
    let
      system = "x86_64-linux";
      mk = name: script: derivation {
        inherit name system;
        salt = "@SALT@";
        builder = "/bin/sh";
        args = [ "-c" script ];
      };
      a = mk "a" "echo a-content > $out";
      b = mk "b" "echo b-content > $out";
      c = mk "c" "mkdir $out; ln -s ${b} $out/b";
    in {
      packages.${system} = { inherit a c; };
    };
}
"#
    .replace("@SALT@", salt)
}

/// A PUT-accepting binary cache over HTTP, like the one in nix-lab.md appendix E: GET and HEAD
/// serve files of `root`, PUT writes them. Runs on its own thread until the process ends.
fn serve_http_cache(listener: std::net::TcpListener, root: PathBuf) -> Result<()> {
    use axum::body::Bytes;
    use axum::http::{Method, StatusCode, Uri};
    listener.set_nonblocking(true)?;
    let root = Arc::new(root);
    let handler = move |method: Method, uri: Uri, body: Bytes| {
        let root = Arc::clone(&root);
        async move {
            let rel = uri.path().trim_start_matches('/');
            if rel.is_empty() || rel.split('/').any(|p| p == ".." || p.is_empty()) {
                return (StatusCode::BAD_REQUEST, Vec::new());
            }
            let path = root.join(rel);
            match method {
                Method::PUT => {
                    let written = path
                        .parent()
                        .map_or(Ok(()), std::fs::create_dir_all)
                        .and_then(|()| std::fs::write(&path, &body));
                    match written {
                        Ok(()) => (StatusCode::CREATED, Vec::new()),
                        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, Vec::new()),
                    }
                }
                Method::GET | Method::HEAD => match std::fs::read(&path) {
                    Ok(data) => (StatusCode::OK, data),
                    Err(_) => (StatusCode::NOT_FOUND, Vec::new()),
                },
                _ => (StatusCode::METHOD_NOT_ALLOWED, Vec::new()),
            }
        }
    };
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                return;
            };
            let app = axum::Router::new().fallback(handler);
            let _ = axum::serve(listener, app).await;
        });
    });
    Ok(())
}

/// Generates a signing key pair named `name`; returns (secret key file, public key).
fn key_pair(dir: &Path, name: &str) -> Result<(PathBuf, String)> {
    let nix = |args: &[&str], stdin: Option<&Path>| -> Result<String> {
        let mut cmd = Command::new("nix");
        cmd.args(["--extra-experimental-features", "nix-command"])
            .args(args);
        if let Some(file) = stdin {
            cmd.stdin(std::fs::File::open(file)?);
        }
        let out = cmd.output()?;
        ensure!(
            out.status.success(),
            "nix {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    };
    let secret = dir.join(format!("{name}.sk"));
    std::fs::write(
        &secret,
        nix(&["key", "generate-secret", "--key-name", name], None)?,
    )?;
    let public = nix(&["key", "convert-secret-to-public"], Some(&secret))?;
    Ok((secret, public.trim().to_owned()))
}

/// Realises `path` into a fresh chroot store from `substituter`, trusting `key`; returns
/// whether it worked and what Nix said.
fn substitute(store: &Path, path: &str, substituter: &str, key: &str) -> Result<(bool, String)> {
    let out = Command::new("nix-store")
        .arg("--store")
        .arg(store)
        .args(["--realise", path, "--option", "substituters", substituter])
        .args(["--option", "trusted-public-keys", key])
        .args(["--option", "narinfo-cache-negative-ttl", "0"])
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Returns the cache entry of `/api/v1/caches` whose push-url is `url`.
fn cache_of(d: &TestDaemon, url: &str) -> Result<Value> {
    d.get_json("/api/v1/caches")?
        .as_array()
        .context("caches is not an array")?
        .iter()
        .find(|c| c["push_url"] == url)
        .cloned()
        .with_context(|| format!("no cache {url}"))
}

#[test]
fn caches_should_receive_signed_outputs_even_when_one_comes_up_late() -> Result<()> {
    let repo = GitRepo::new()?;
    let rev = repo.commit_flake(&flake(&salt()), "first")?;
    let dir = tempfile::Builder::new()
        .prefix("reconix-caches")
        .tempdir()?;
    let (secret, public) = key_pair(dir.path(), "e2e-cache-1")?;
    let file_cache = dir.path().join("file-cache");
    let file_url = format!("file://{}", file_cache.display());
    // The HTTP cache's port was free a moment ago; nothing answers on it yet.
    let http_addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let http_url = format!("http://{http_addr}/cache");
    let base = local_spec(repo.path(), 2);
    let config = DaemonConfig {
        spec: format!(
            "{}caches:\n  - push-url: {file_url}\n    public-key: {public}\n    signing-key-file: {}\n  \
             - push-url: {http_url}\n    public-key: {public}\n    signing-key-file: {}\n",
            base.spec,
            secret.display(),
            secret.display()
        ),
    };
    let d = TestDaemon::start(&config)?;
    let detail = d.wait_evaluation(&rev, "finished")?;
    let jobs = jobs_by_attr(&detail)?;
    let out = |attr: &str| -> Result<String> {
        Ok(jobs[&format!("{P}{attr}")]["outputs"]["out"]
            .as_str()
            .context("no output")?
            .to_owned())
    };
    let (a_out, c_out) = (out("a")?, out("c")?);

    // The file cache gets both outputs; the closed port makes the HTTP pushes fail, which is
    // recorded and shown, and changes no job.
    let file = d.wait_for("both outputs pushed to the file cache", DEADLINE, |d| {
        let c = cache_of(d, &file_url)?;
        Ok((c["pushes"]["pushed"] == 2).then_some(c))
    })?;
    assert_eq!(file["pushes"]["failed"], 0, "{file}");
    let down = d.wait_for("the HTTP cache's failure", DEADLINE, |d| {
        let c = cache_of(d, &http_url)?;
        Ok((c["pushes"]["failed"] == 2).then_some(c))
    })?;
    assert!(
        down["pushes"]["last_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{down}"
    );
    assert!(
        !down.to_string().contains(&secret.display().to_string()),
        "{down}"
    );
    let again = d.evaluation_of(&rev)?.context("evaluation")?;
    assert_eq!(
        again["state"], "finished",
        "a cache failure changed the evaluation"
    );
    for job in jobs_by_attr(&again)?.values() {
        assert_eq!(job["state"], "succeeded", "{job}");
    }
    let page = d.get_text("/cache")?;
    assert!(page.contains(&public) && page.contains(&http_url), "{page}");

    // The HTTP cache comes up: the retry (with backoff) fills it.
    let listener = std::net::TcpListener::bind(http_addr)
        .with_context(|| format!("taking back {http_addr}"))?;
    serve_http_cache(listener, dir.path().join("http-cache"))?;
    let up = d.wait_for("both outputs pushed to the HTTP cache", DEADLINE, |d| {
        let c = cache_of(d, &http_url)?;
        Ok((c["pushes"]["pushed"] == 2).then_some(c))
    })?;
    assert_eq!(up["pushes"]["failed"], 0, "{up}");
    assert_eq!(up["pushes"]["last_error"], Value::Null, "{up}");

    // Each cache is signed: a fresh store takes c (with b, its closure) with the right key,
    // and refuses it with another.
    let (_, other_key) = key_pair(dir.path(), "e2e-cache-1")?;
    for (n, url) in [&file_url, &http_url].into_iter().enumerate() {
        let fresh = dir.path().join(format!("fresh-{n}"));
        let (ok, said) = substitute(&fresh, &c_out, url, &public)?;
        ensure!(ok, "substituting from {url}: {said}");
        let b = std::fs::read_link(fresh.join(c_out.trim_start_matches('/')).join("b"))?;
        ensure!(
            fresh
                .join(b.to_string_lossy().trim_start_matches('/'))
                .exists(),
            "c's closure did not come along from {url}"
        );
        let (ok, _) = substitute(&fresh, &a_out, url, &public)?;
        ensure!(ok, "a from {url}");
        let (ok, said) = substitute(
            &dir.path().join(format!("wrong-{n}")),
            &c_out,
            url,
            &other_key,
        )?;
        ensure!(
            !ok && said.contains("is not signed by any of the keys"),
            "{url} with a wrong key: {said}"
        );
    }
    Ok(())
}

/// moto's S3 server on a free loopback port, killed when dropped.
struct Moto {
    child: std::process::Child,
    port: u16,
    venv: PathBuf,
}

impl Moto {
    /// Starts `moto_server` from `make moto`'s virtualenv and waits until it answers.
    fn start() -> Result<Self> {
        let venv = PathBuf::from(
            std::env::var_os("RECONIX_MOTO_VENV").unwrap_or_else(|| "/opt/reconix-moto".into()),
        );
        let server = venv.join("bin/moto_server");
        ensure!(
            server.exists(),
            "{} is missing: run `make moto` (scripts/install-moto.sh)",
            server.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(&server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let moto = Self { child, port, venv };
        let deadline = std::time::Instant::now() + DEADLINE;
        while reconix_e2e::http_get(&format!("{}/", moto.endpoint())).is_err() {
            ensure!(
                std::time::Instant::now() < deadline,
                "moto_server did not answer on port {port}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Ok(moto)
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates `bucket`, readable by anyone (so Nix can substitute from it over plain HTTP).
    fn public_bucket(&self, bucket: &str) -> Result<()> {
        let script = format!(
            r#"import boto3, json
s3 = boto3.client("s3", endpoint_url="{}", region_name="us-east-1",
                  aws_access_key_id="testing", aws_secret_access_key="testing")
s3.create_bucket(Bucket="{bucket}")
s3.put_bucket_policy(Bucket="{bucket}", Policy=json.dumps({{"Version": "2012-10-17",
  "Statement": [{{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                 "Resource": "arn:aws:s3:::{bucket}/*"}}]}}))
"#,
            self.endpoint()
        );
        let out = Command::new(self.venv.join("bin/python"))
            .args(["-c", &script])
            .output()?;
        ensure!(
            out.status.success(),
            "creating the bucket: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn s3_cache_should_receive_signed_outputs_that_a_fresh_store_substitutes() -> Result<()> {
    let moto = Moto::start()?;
    moto.public_bucket("nix-cache")?;
    let repo = GitRepo::new()?;
    let rev = repo.commit_flake(&flake(&salt()), "first")?;
    let dir = tempfile::Builder::new().prefix("reconix-s3").tempdir()?;
    let (secret, public) = key_pair(dir.path(), "e2e-s3-1")?;
    let credentials = dir.path().join("s3-credentials");
    std::fs::write(
        &credentials,
        "AWS_ACCESS_KEY_ID=testing\nAWS_SECRET_ACCESS_KEY=testing\n",
    )?;
    let s3_url = format!(
        "s3://nix-cache?endpoint=127.0.0.1:{}&scheme=http&region=us-east-1",
        moto.port
    );
    let base = local_spec(repo.path(), 2);
    let config = DaemonConfig {
        spec: format!(
            "{}caches:\n  - push-url: \"{s3_url}\"\n    public-url: {}/nix-cache\n    public-key: {public}\n    \
             signing-key-file: {}\n    s3-credentials-file: {}\n",
            base.spec,
            moto.endpoint(),
            secret.display(),
            credentials.display()
        ),
    };
    let d = TestDaemon::start(&config)?;
    let detail = d.wait_evaluation(&rev, "finished")?;
    let jobs = jobs_by_attr(&detail)?;
    let c_out = jobs[&format!("{P}c")]["outputs"]["out"]
        .as_str()
        .context("no output")?
        .to_owned();
    let pushed = d.wait_for("both outputs pushed to S3", DEADLINE, |d| {
        let c = cache_of(d, &s3_url)?;
        ensure!(c["pushes"]["failed"] == 0, "S3 push failed: {c}");
        Ok((c["pushes"]["pushed"] == 2).then_some(c))
    })?;
    assert_eq!(pushed["kind"], "s3", "{pushed}");

    // The bucket is a binary cache: c and its closure come from it into a fresh store with
    // the right key only.
    let bucket = format!("{}/nix-cache", moto.endpoint());
    let info = reconix_e2e::http_get(&format!("{bucket}/nix-cache-info"))?;
    assert!(info.contains("StoreDir: /nix/store"), "{info}");
    let fresh = dir.path().join("fresh");
    let (ok, said) = substitute(&fresh, &c_out, &bucket, &public)?;
    ensure!(ok, "substituting from S3: {said}");
    let (_, other_key) = key_pair(dir.path(), "e2e-s3-1")?;
    let (ok, said) = substitute(&dir.path().join("wrong"), &c_out, &bucket, &other_key)?;
    ensure!(
        !ok && said.contains("is not signed by any of the keys"),
        "S3 with a wrong key: {said}"
    );
    // The staging directory is gone once the upload is done.
    let staging = d.state_dir().join("caches/staging");
    ensure!(
        std::fs::read_dir(&staging).map_or(true, |mut e| e.next().is_none()),
        "staging left behind in {}",
        staging.display()
    );
    Ok(())
}
