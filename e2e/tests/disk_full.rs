//! A full disk is transient: the daemon's state directory is a small tmpfs (mounted and removed
//! by this test) that is filled while builds run. Builds that meet it wait (their jobs say
//! `waiting: …`) instead of using up their attempts, a delivery meanwhile is answered 503 with
//! `Retry-After` (never 500), and once space returns every job ends in its true state with one
//! attempt each.
//!
//! Mounting needs root, as `make test` runs; the test fails (never skips) without it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use reconix_e2e::{DEADLINE, DaemonConfig, GitRepo, TestDaemon, jobs_by_attr, run, salt, sh_flake};
use reconix_spec::Secret;
use serde_json::Value;

const SECRET: &str = "a webhook secret";
const OK_JOBS: usize = 12;

/// Twelve jobs that take a second each, a failing one and its dependent.
fn flake(salt: &str) -> String {
    let oks: String = (1..=OK_JOBS)
        .map(|n| format!("ok{n} = mk \"ok{n}\" \"echo building-{n}; sleep 1; echo {n} > $out\";\n"))
        .collect();
    sh_flake(
        salt,
        r#"failing = mk "failing" "echo 'fails on purpose' >&2; exit 3";"#,
        &format!(
            r#"packages.x86_64-linux = {{
        {oks}
        inherit failing;
        afterFailing = mk "after-failing" "cat ${{failing}} > $out";
      }};"#
        ),
    )
}

/// A tmpfs mounted for the test's lifetime (unmounted on drop).
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Result<Self> {
        std::fs::create_dir_all(path)?;
        run(Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(path))
        .context(
            "mounting a tmpfs for the state directory failed: this test needs root (run it \
             through `make test` as root)",
        )?;
        Ok(Self {
            path: path.to_owned(),
        })
    }

    /// Writes zeros until the file system refuses: 1 MiB at a time, then smaller.
    fn fill(&self) -> Result<PathBuf> {
        let path = self.path.join("filler");
        let mut file = std::fs::File::create(&path)?;
        for chunk in [1 << 20, 4096, 1] {
            let zeros = vec![0u8; chunk];
            loop {
                match file.write_all(&zeros).and_then(|()| file.sync_all()) {
                    Ok(()) => {}
                    Err(err) if err.raw_os_error() == Some(28) => break,
                    Err(err) => bail!("filling {}: {err}", self.path.display()),
                }
            }
        }
        Ok(path)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn spec(state_dir: &Path, repo: &Path, secrets: &Path) -> DaemonConfig {
    DaemonConfig {
        spec: format!(
            "\
state-dir: {state}
external-url: http://127.0.0.1:{{port}}
forges:
  here:
    kind: local
    poll-interval: 1s
    repos:
      demo:
        path: {repo}
        branches: [main]
  gh:
    kind: github
    # Only for the intake: nothing listens there.
    api-url: http://127.0.0.1:9
    token-file: {secrets}/token
    webhook-secret-file: {secrets}/secret
    repos:
      acme/widgets: {{}}
builders:
  local:
    max-jobs: 2
",
            state = state_dir.display(),
            repo = repo.display(),
            secrets = secrets.display(),
        ),
    }
}

/// Sends a signed `ping` delivery with id `id`; returns the status code and whether the answer
/// carried `Retry-After`.
fn deliver(url: &str, id: &str) -> Result<(u16, bool)> {
    let addr = url.strip_prefix("http://").context("url")?;
    let body = br#"{"zen":"Design for failure.","hook_id":1}"#;
    let hex = reconix_forge::verify::hmac_sha256_hex(&Secret::new(SECRET), body);
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "POST /webhooks/gh HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nX-GitHub-Event: ping\r\nX-GitHub-Delivery: {id}\r\n\
         X-Hub-Signature-256: sha256={hex}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)?;
    let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status in {text:?}"))?;
    Ok((code, text.contains("\r\nretry-after: ")))
}

fn jobs(d: &TestDaemon, rev: &str) -> Result<Vec<Value>> {
    Ok(d.evaluation_of(rev)?
        .map(|e| e["jobs"].as_array().cloned().unwrap_or_default())
        .unwrap_or_default())
}

#[test]
fn a_full_state_directory_should_make_builds_wait_and_every_job_end_in_its_true_state() -> Result<()>
{
    // The state directory on a small tmpfs, its logs on a smaller one of their own: the logs
    // fill first (builds wait, and the database still has room to say so), then the rest (the
    // database too: deliveries are refused).
    let root = tempfile::Builder::new()
        .prefix("reconix-e2e-full")
        .tempdir()?;
    let state_dir = root.path().join("state");
    let state = Tmpfs::mount(&state_dir, "16m")?;
    let logs = Tmpfs::mount(&state_dir.join("logs"), "1m")?;
    let secrets = tempfile::tempdir()?;
    std::fs::write(secrets.path().join("token"), "a token\n")?;
    std::fs::write(secrets.path().join("secret"), format!("{SECRET}\n"))?;
    let repo = GitRepo::new()?;
    let rev = repo.commit_flake(&flake(&salt()), "jobs")?;
    let d = TestDaemon::start(&spec(&state_dir, repo.path(), secrets.path()))?;
    ensure!(
        deliver(d.url(), "before")?.0 == 202,
        "the intake works before"
    );

    // Fill the logs' disk as soon as the first build runs: most jobs are still queued.
    d.wait_for("a build to start", DEADLINE, |d| {
        Ok(jobs(d, &rev)?
            .iter()
            .any(|j| j["state"] == "building")
            .then_some(()))
    })?;
    let logs_filler = logs.fill()?;
    let waiting = d.wait_for("a job waiting for room", DEADLINE, |d| {
        Ok(jobs(d, &rev)?.into_iter().find(|j| {
            j["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("waiting: state directory full: "))
        }))
    })?;
    eprintln!("{}: {}", waiting["attr"], waiting["error"]);

    // Then the database's disk: deliveries are refused with 503 and Retry-After once the
    // database cannot grow (it may take a few more into room it had); never 500.
    let state_filler = state.fill()?;
    let mut refused = None;
    for n in 0..20_000 {
        let id = format!("while-full-{n}");
        let (code, retry_after) = deliver(d.url(), &id)?;
        match code {
            202 => {}
            503 => {
                ensure!(retry_after, "a 503 says when to retry");
                refused = Some(id);
                break;
            }
            other => bail!(
                "a delivery while the disk is full got {other}; daemon log:\n{}",
                d.log()
            ),
        }
    }
    let refused = refused.context("the database never ran out of room")?;
    let overview = d.get_json("/api/v1/status")?;
    ensure!(
        overview["storage_full_at"].is_i64(),
        "the status says the state directory is full: {overview}"
    );
    ensure!(
        d.get_text("/")?.contains("the state directory is FULL"),
        "the overview page says so first"
    );
    ensure!(
        !jobs(&d, &rev)?.iter().any(|j| j["error"]
            .as_str()
            .is_some_and(|e| e.contains("gave up after"))),
        "no job gives up while the disk is full"
    );

    // Space returns: everything resumes by itself.
    std::fs::remove_file(&state_filler)?;
    std::fs::remove_file(&logs_filler)?;
    let detail = d.wait_evaluation(&rev, "finished")?;
    let jobs = jobs_by_attr(&detail)?;
    let p = "packages.x86_64-linux.";
    for n in 1..=OK_JOBS {
        let job = &jobs[&format!("{p}ok{n}")];
        ensure!(job["state"] == "succeeded", "ok{n}: {job}");
        ensure!(job["build"]["attempts"] == 1, "ok{n} built once: {job}");
    }
    let failing = &jobs[&format!("{p}failing")];
    ensure!(failing["state"] == "failed", "failing: {failing}");
    ensure!(failing["build"]["attempts"] == 1, "failing: {failing}");
    let after = &jobs[&format!("{p}afterFailing")];
    ensure!(
        after["state"] == "dependency-failed",
        "afterFailing: {after}"
    );
    // The forge's redelivery is recorded now.
    ensure!(
        deliver(d.url(), &refused)?.0 == 202,
        "the redelivery is accepted"
    );
    // The daemon stops before the file systems go.
    drop(d);
    drop(logs);
    drop(state);
    Ok(())
}
