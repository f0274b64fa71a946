//! End-to-end harness: runs the real `reconix` binary against real Nix.
//!
//! Each test gets a [`TestDaemon`] (the binary on port 0 with its own state directory and its own
//! chroot Nix store, so garbage collection in one test cannot touch another test's paths) and a
//! [`GitRepo`] holding a flake. The daemon is killed when the guard drops.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use std::collections::BTreeMap;

use serde_json::Value;

/// Returns the path of the `reconix` binary built alongside this test.
///
/// `RECONIX_BIN` overrides it. Otherwise the binary is looked up next to the test executable
/// (`target/<profile>/reconix`), which `cargo test --workspace` builds.
pub fn reconix_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("RECONIX_BIN") {
        return Ok(PathBuf::from(p));
    }
    sibling_bin("reconix")
}

/// Returns the path of the `reconix-agent` binary built alongside this test
/// (`RECONIX_AGENT_BIN` overrides it).
pub fn agent_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("RECONIX_AGENT_BIN") {
        return Ok(PathBuf::from(p));
    }
    sibling_bin("reconix-agent")
}

fn sibling_bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test>-<hash> → target/<profile>/reconix
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable has no parent directory")?;
    let bin = profile_dir.join(name);
    ensure!(
        bin.exists(),
        "{} not found: build it with `cargo build --workspace` (make test does)",
        bin.display()
    );
    Ok(bin)
}

/// Fails with install instructions when `nix` is not on PATH.
pub fn require_nix() -> Result<()> {
    let ok = Command::new("nix")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    ensure!(
        ok,
        "nix not found: run `make test` (it installs Nix through scripts/install-nix.sh) \
         or `sudo bash scripts/install-nix.sh`"
    );
    Ok(())
}

/// Fails with install instructions when Debian's `chromium` is not on PATH (the browser test
/// needs it; it never skips).
pub fn require_chromium() -> Result<()> {
    let ok = Command::new("chromium")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success());
    ensure!(
        ok,
        "chromium not found: run `make test` (it installs Chromium through \
         scripts/install-chromium.sh) or `sudo bash scripts/install-chromium.sh`"
    );
    Ok(())
}

/// Runs a command and returns its stdout, failing with its stderr on a non-zero exit.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A git repository in a temporary directory.
#[derive(Debug)]
pub struct GitRepo {
    dir: tempfile::TempDir,
}

impl GitRepo {
    /// Creates an empty repository whose default branch is `main`.
    pub fn new() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("reconix-e2e-repo")
            .tempdir()?;
        let repo = Self { dir };
        repo.git(&["init", "-q", "-b", "main"])?;
        Ok(repo)
    }

    /// Returns the working tree path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs git in the repository.
    pub fn git(&self, args: &[&str]) -> Result<String> {
        run(Command::new("git")
            .arg("-C")
            .arg(self.path())
            .args([
                "-c",
                "user.name=e2e",
                "-c",
                "user.email=e2e@example.invalid",
            ])
            .args(args))
    }

    /// Writes `flake.nix` and commits it; returns the new commit's sha.
    pub fn commit_flake(&self, flake: &str, message: &str) -> Result<String> {
        std::fs::write(self.path().join("flake.nix"), flake)?;
        self.git(&["add", "-A"])?;
        self.git(&["commit", "-q", "-m", message])?;
        Ok(self.git(&["rev-parse", "HEAD"])?.trim().to_owned())
    }
}

/// A running `reconix serve` with its own state directory and Nix store.
#[derive(Debug)]
pub struct TestDaemon {
    child: Option<Child>,
    url: String,
    state_dir: PathBuf,
    store: PathBuf,
    spec_path: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    stderr_log: PathBuf,
}

/// What a [`TestDaemon`] is started with.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The spec's YAML, with `{state_dir}` replaced by the daemon's state directory,
    /// `{port}` by a free loopback port the daemon then listens on (for `external-url`, which
    /// must be known before the daemon starts) and `{enroll_port}` by another free port (for
    /// `builders.enrollment.listen`).
    pub spec: String,
}

/// Returns a loopback port that was free a moment ago.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl TestDaemon {
    /// Starts a daemon with a fresh state directory and Nix store.
    pub fn start(config: &DaemonConfig) -> Result<Self> {
        require_nix()?;
        let tmp = tempfile::Builder::new().prefix("reconix-e2e").tempdir()?;
        let root = tmp.path().to_owned();
        let mut d = Self::spawn(&root, config, &[])?;
        d._tmp = Some(tmp);
        Ok(d)
    }

    /// Starts a daemon with extra environment variables (e.g. `RECONIX_LOG_FORMAT=json`).
    pub fn start_with_env(config: &DaemonConfig, env: &[(&str, &str)]) -> Result<Self> {
        require_nix()?;
        let tmp = tempfile::Builder::new().prefix("reconix-e2e").tempdir()?;
        let root = tmp.path().to_owned();
        let mut d = Self::spawn(&root, config, env)?;
        d._tmp = Some(tmp);
        Ok(d)
    }

    /// Starts a daemon through `launcher` (a command that runs the rest of its arguments, e.g.
    /// `prlimit --nofile=1024:1024 --`).
    pub fn start_under(config: &DaemonConfig, launcher: &[&str]) -> Result<Self> {
        require_nix()?;
        let tmp = tempfile::Builder::new().prefix("reconix-e2e").tempdir()?;
        let root = tmp.path().to_owned();
        let mut d = Self::spawn_under(&root, config, &[], launcher)?;
        d._tmp = Some(tmp);
        Ok(d)
    }

    /// Starts a daemon on an existing root (state dir + store), e.g. after [`Self::kill9`].
    pub fn restart(&mut self, config: &DaemonConfig) -> Result<()> {
        self.kill9()?;
        let root = self
            .state_dir
            .parent()
            .context("state dir has no parent")?
            .to_owned();
        let mut fresh = Self::spawn(&root, config, &[])?;
        self.child = fresh.child.take();
        self.url = std::mem::take(&mut fresh.url);
        self.stderr_log = std::mem::take(&mut fresh.stderr_log);
        Ok(())
    }

    fn spawn(root: &Path, config: &DaemonConfig, env: &[(&str, &str)]) -> Result<Self> {
        Self::spawn_under(root, config, env, &[])
    }

    fn spawn_under(
        root: &Path,
        config: &DaemonConfig,
        env: &[(&str, &str)],
        launcher: &[&str],
    ) -> Result<Self> {
        let state_dir = root.join("state");
        let store = root.join("store");
        std::fs::create_dir_all(&state_dir)?;
        let spec_path = root.join("spec.yaml");
        let mut spec = config
            .spec
            .replace("{state_dir}", &state_dir.display().to_string());
        let mut listen = "127.0.0.1:0".to_owned();
        if spec.contains("{port}") {
            let port = free_port()?.to_string();
            spec = spec.replace("{port}", &port);
            listen = format!("127.0.0.1:{port}");
        }
        if spec.contains("{enroll_port}") {
            spec = spec.replace("{enroll_port}", &free_port()?.to_string());
        }
        std::fs::write(&spec_path, spec)?;
        let stderr_log = root.join(format!("daemon-{}.log", unique_suffix()));
        let mut command = match launcher.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(reconix_bin()?);
                c
            }
            None => Command::new(reconix_bin()?),
        };
        let mut child = command
            .args(["serve", "--listen", &listen, "--spec"])
            .arg(&spec_path)
            .arg("--nix-store")
            .arg(&store)
            .env("RUST_LOG", "info,reconix=debug")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_log)?)
            .spawn()
            .context("spawning reconix serve")?;
        let stdout = child.stdout.take().context("no stdout")?;
        // The daemon prints `listening on http://ADDR` once its socket is bound: our readiness signal.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("listening on ") {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let Ok(url) = rx.recv_timeout(Duration::from_secs(60)) else {
            let _ = child.kill();
            let log = std::fs::read_to_string(&stderr_log).unwrap_or_default();
            bail!("daemon did not report its address within 60 s; its log:\n{log}");
        };
        Ok(Self {
            child: Some(child),
            url,
            state_dir,
            store,
            spec_path,
            _tmp: None,
            stderr_log,
        })
    }

    /// Returns the base URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Returns the daemon's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Returns the daemon's state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Returns the chroot store directory the daemon builds in (`--store` for nix commands).
    pub fn store(&self) -> &Path {
        &self.store
    }

    /// Returns the spec file path.
    pub fn spec_path(&self) -> &Path {
        &self.spec_path
    }

    /// Returns what the daemon logged so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// Sends a signal (`HUP`, `TERM`, …) to the daemon.
    pub fn signal(&self, name: &str) -> Result<()> {
        let pid = self.child.as_ref().context("daemon not running")?.id();
        run(Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string()))?;
        Ok(())
    }

    /// Waits up to `deadline` for the daemon to exit and returns its exit code.
    pub fn wait_exit(&mut self, deadline: Duration) -> Result<Option<i32>> {
        let mut child = self.child.take().context("daemon not running")?;
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status.code());
            }
            if start.elapsed() > deadline {
                let _ = child.kill();
                bail!("daemon did not exit within {deadline:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the daemon with SIGKILL and waits for it.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// GETs a JSON document from the API.
    pub fn get_json(&self, path: &str) -> Result<Value> {
        let url = format!("{}{path}", self.url);
        let resp = blocking_get(&url)?;
        serde_json::from_str(&resp).with_context(|| format!("GET {url}: not JSON: {resp}"))
    }

    /// GETs a text document from the API.
    pub fn get_text(&self, path: &str) -> Result<String> {
        blocking_get(&format!("{}{path}", self.url))
    }

    /// Polls `f` every 100 ms until it returns `Some`, failing after `deadline` with the daemon log.
    pub fn wait_for<T>(
        &self,
        what: &str,
        deadline: Duration,
        mut f: impl FnMut(&Self) -> Result<Option<T>>,
    ) -> Result<T> {
        let start = Instant::now();
        let mut last_err = None;
        loop {
            match f(self) {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(e) => last_err = Some(e),
            }
            if start.elapsed() > deadline {
                bail!(
                    "timed out after {deadline:?} waiting for {what} (last error: {last_err:?}); daemon log:\n{}",
                    tail(&self.log(), 60)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs a nix-store command against the daemon's store.
    pub fn nix_store(&self, args: &[&str]) -> Result<String> {
        run(Command::new("nix-store")
            .arg("--store")
            .arg(&self.store)
            .args(args))
    }

    /// Runs `nix --store <the daemon's store> --extra-experimental-features nix-command ARGS`
    /// and returns its stdout.
    pub fn nix(&self, args: &[&str]) -> Result<String> {
        run(Command::new("nix")
            .arg("--store")
            .arg(&self.store)
            .args(["--extra-experimental-features", "nix-command"])
            .args(args))
    }
}

/// A running `reconix-agent`, killed when dropped.
#[derive(Debug)]
pub struct AgentProcess {
    child: Child,
    dir: PathBuf,
}

impl AgentProcess {
    /// Starts `reconix-agent --name NAME` with state dir `dir` (its token file is `dir/token`,
    /// its log `dir/agent.log`), heartbeats every second, and `extra` arguments.
    pub fn start(coordinator: &str, dir: &Path, name: &str, extra: &[&str]) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(dir.join("agent.log"))?;
        let child = Command::new(agent_bin()?)
            .args([
                "--coordinator",
                coordinator,
                "--name",
                name,
                "--heartbeat",
                "1",
            ])
            .arg("--state-dir")
            .arg(dir)
            .arg("--token-file")
            .arg(dir.join("token"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawning reconix-agent")?;
        Ok(Self {
            child,
            dir: dir.to_owned(),
        })
    }

    /// Sends a signal (`KILL`, `STOP`, `CONT`, …) to the agent.
    pub fn signal(&self, name: &str) -> Result<()> {
        run(Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string()))?;
        Ok(())
    }

    /// Returns what the agent logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// Stops the agent (SIGKILL) and waits for it.
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads the enrollment address from the daemon's spec (written from `{enroll_port}`).
pub fn enroll_addr(d: &TestDaemon) -> Result<String> {
    let spec = std::fs::read_to_string(d.spec_path())?;
    spec.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("listen: 127.0.0.1:")
                .map(|p| format!("127.0.0.1:{p}"))
        })
        .context("no enrollment listen address in the spec")
}

/// What the API helpers below poll for: a deadline generous enough for a loaded 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(180);

impl TestDaemon {
    /// Lists the evaluations (newest first).
    pub fn evaluations(&self) -> Result<Vec<Value>> {
        Ok(self
            .get_json("/api/v1/evaluations")?
            .as_array()
            .context("evaluations is not an array")?
            .clone())
    }

    /// Returns the detail document (with jobs) of the evaluation of `rev`, once it exists.
    pub fn evaluation_of(&self, rev: &str) -> Result<Option<Value>> {
        let Some(e) = self.evaluations()?.into_iter().find(|e| e["rev"] == rev) else {
            return Ok(None);
        };
        Ok(Some(
            self.get_json(&format!("/api/v1/evaluations/{}", e["id"]))?,
        ))
    }

    /// Waits until the evaluation of `rev` is in `state` and returns its detail document.
    pub fn wait_evaluation(&self, rev: &str, state: &str) -> Result<Value> {
        self.wait_for(
            &format!("evaluation of {rev} to be {state}"),
            DEADLINE,
            |d| {
                let Some(detail) = d.evaluation_of(rev)? else {
                    return Ok(None);
                };
                ensure!(
                    detail["state"] == state || detail["state"] != "failed",
                    "evaluation failed: {detail}"
                );
                Ok((detail["state"] == state).then_some(detail))
            },
        )
    }
}

/// Returns a flake whose outputs are `outputs` (Nix attribute bindings), with `mk name script`
/// in scope: a derivation built by busybox's `/bin/sh` running `script`, salted with `salt`
/// so that every test run builds afresh. `lets` adds bindings next to `mk`.
pub fn sh_flake(salt: &str, lets: &str, outputs: &str) -> String {
    format!(
        r#"{{
  outputs = {{ self }}:
    let
      mk = name: script: derivation {{
        inherit name;
        system = "x86_64-linux";
        salt = "{salt}";
        builder = "/bin/sh";
        args = [ "-c" script ];
      }};
      {lets}
    in {{
      {outputs}
    }};
}}
"#
    )
}

/// Returns a local-forge spec for the repository at `repo`, polled every second.
pub fn local_spec(repo: &Path, max_jobs: u32) -> DaemonConfig {
    DaemonConfig {
        spec: format!(
            "state-dir: {{state_dir}}\n\
             forges:\n  here:\n    kind: local\n    poll-interval: 1s\n    repos:\n      demo:\n        path: {}\n        branches: [main]\n\
             builders:\n  local:\n    max-jobs: {max_jobs}\n",
            repo.display()
        ),
    }
}

/// Indexes an evaluation's jobs by attribute path.
pub fn jobs_by_attr(detail: &Value) -> Result<BTreeMap<String, Value>> {
    Ok(detail["jobs"]
        .as_array()
        .context("jobs")?
        .iter()
        .map(|j| (j["attr"].as_str().unwrap_or_default().to_owned(), j.clone()))
        .collect())
}

/// Returns a salt unique to this moment and process, so test derivations are always new.
pub fn salt() -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{n}-{}", std::process::id())
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn unique_suffix() -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{n:x}")
}

/// Returns the last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// GETs `url` (plain HTTP on loopback) and returns the body of a 200 answer.
pub fn http_get(url: &str) -> Result<String> {
    blocking_get(url)
}

/// Sends `METHOD url` with an empty body (and `Authorization: Bearer TOKEN` when `bearer` is
/// given) and returns the status code and body, whatever the status.
pub fn http_request(method: &str, url: &str, bearer: Option<&str>) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let rest = url
        .strip_prefix("http://")
        .context("only http:// URLs are supported")?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let mut s = std::net::TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let auth = bearer.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{method} {url}: no status in {head}"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn blocking_get(url: &str) -> Result<String> {
    // A tiny HTTP/1.1 GET over loopback keeps this crate free of an HTTP client runtime.
    use std::io::{Read, Write};
    let rest = url
        .strip_prefix("http://")
        .context("only http:// URLs are supported")?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let mut s = std::net::TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    ensure!(status == "200", "GET {url}: status {status}: {body}");
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok(dechunk(body));
    }
    Ok(body.to_owned())
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Lists every symlink below `dir` (GC-root links, for instance); none when `dir` is missing.
pub fn links_below(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let ft = entry.file_type()?;
        if ft.is_symlink() {
            out.push(entry.path());
        } else if ft.is_dir() {
            out.extend(links_below(&entry.path())?);
        }
    }
    Ok(out)
}
