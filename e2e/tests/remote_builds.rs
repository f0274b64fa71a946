//! Remote builds end to end: the real daemon builds nothing itself (`local.max-jobs: 0`); two
//! real `reconix-agent`s on loopback, each with its own chroot store, do. Checks that outputs
//! are built on the agents, arrive valid in the daemon's store and have retrievable logs; that a
//! real failure is not retried; that a build failing with output (`nix-support/failed`) on an
//! agent is failed, kept and rooted here; that a build whose agent is killed, or stops answering
//! (SIGSTOP: heartbeats stop), finishes on the other agent; and that a peer sending garbage to
//! the enrollment port is dropped while the daemon keeps working.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use reconix_e2e::{
    AgentProcess, DEADLINE, DaemonConfig, GitRepo, TestDaemon, enroll_addr, jobs_by_attr, salt,
};
use serde_json::Value;

const P: &str = "packages.x86_64-linux.";

/// The flake: `a`; `b` reads `a` (a job dependency, so `a`'s output is sent to whichever agent
/// builds `b`); `c` uses `inter`, a derivation that is not a job and is never built by the
/// daemon, and links to it; `a` prints in green; `fail` exits 3; `tested` fails with output
/// (`nix-support/failed`, as nixpkgs' `succeedOnFailure` leaves it) and `usesTested` reads it;
/// `extra` lists more packages (`slow` ones sleep).
fn flake(salt: &str, extra: &str) -> String {
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
      slow = name: mk name "echo slow-start; sleep 12; echo ${name} > $out";
      a = mk "a" "printf '\\033[32mbuilding-a\\033[0m\\n'; echo a-content > $out";
      b = mk "b" "echo building-b; read x < ${a}; echo \"b-uses-$x\" > $out";
      inter = mk "inter" "echo building-inter; echo inter-content > $out";
      c = mk "c" "echo building-c; mkdir $out; read x < ${inter}; echo \"c-uses-$x\" > $out/c; ln -s ${inter} $out/inter";
      fail = mk "fail" "echo about-to-fail; exit 3";
      tested = mk "tested" "mkdir -p $out/nix-support; echo report > $out/report.html; echo 1 > $out/nix-support/failed; echo \"file binary-dist $out/report.html\" > $out/nix-support/hydra-build-products";
      usesTested = mk "uses-tested" "cat ${tested}/report.html > $out";
    in {
      packages.${system} = { inherit a b c fail tested usesTested; @EXTRA@ };
    };
}
"#
    .replace("@SALT@", salt)
    .replace("@EXTRA@", extra)
}

struct Lab {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    repo: GitRepo,
    daemon: TestDaemon,
    coordinator: String,
    salt: String,
}

impl Lab {
    fn start() -> Result<Self> {
        let tmp = tempfile::Builder::new()
            .prefix("reconix-e2e-remote")
            .tempdir()?;
        let root = tmp.path().to_owned();
        let token = root.join("enrollment-token");
        std::fs::write(&token, "remote-builds-token\n")?;
        let repo = GitRepo::new()?;
        let salt = salt();
        repo.commit_flake(&flake(&salt, ""), "base")?;
        let daemon = TestDaemon::start(&DaemonConfig {
            spec: format!(
                "state-dir: {{state_dir}}\n\
                 forges:\n  here:\n    kind: local\n    poll-interval: 1s\n    repos:\n      demo:\n        path: {}\n        branches: [main]\n\
                 builders:\n  local:\n    max-jobs: 0\n  enrollment:\n    listen: 127.0.0.1:{{enroll_port}}\n    token-file: {}\n  heartbeat-timeout: 4s\n  transient-retries: 2\n",
                repo.path().display(),
                token.display()
            ),
        })?;
        let coordinator = enroll_addr(&daemon)?;
        Ok(Self {
            _tmp: tmp,
            root,
            repo,
            daemon,
            coordinator,
            salt,
        })
    }

    fn store(&self, agent: &str) -> PathBuf {
        self.root.join(format!("{agent}-store"))
    }

    fn agent(&self, name: &str) -> Result<AgentProcess> {
        let dir = self.root.join(name);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("token"), "remote-builds-token")?;
        let store = self.store(name);
        AgentProcess::start(
            &self.coordinator,
            &dir,
            name,
            &["--max-jobs", "2", "--store", &store.display().to_string()],
        )
    }

    fn commit(&self, extra: &str, message: &str) -> Result<String> {
        self.repo.commit_flake(&flake(&self.salt, extra), message)
    }

    /// Waits for both agents to be connected (the API's builders list).
    fn wait_ready(&self, names: &[&str]) -> Result<()> {
        self.daemon
            .wait_for("the agents to be ready", DEADLINE, |d| {
                let builders = d.get_json("/api/v1/builders")?;
                let ready = names.iter().all(|n| {
                    builders
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|b| b["name"] == *n && b["state"] == "ready")
                });
                Ok(ready.then_some(()))
            })
    }
}

/// Returns whether `path` is valid in the chroot store `store`.
fn valid_in(store: &Path, path: &str) -> bool {
    Command::new("nix-store")
        .arg("--store")
        .arg(store)
        .args(["--check-validity", path])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn out_path(job: &Value) -> Result<String> {
    job["outputs"]["out"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no out path: {job}"))
}

fn builder_of(job: &Value) -> String {
    job["build"]["builder"]
        .as_str()
        .unwrap_or("<none>")
        .to_owned()
}

/// Waits until the job `attr` of `rev` runs on an agent whose log shows the build started;
/// returns that agent's name.
fn wait_running(lab: &Lab, rev: &str, attr: &str) -> Result<String> {
    lab.daemon
        .wait_for(&format!("{attr} to run on an agent"), DEADLINE, |d| {
            let Some(detail) = d.evaluation_of(rev)? else {
                return Ok(None);
            };
            let jobs = jobs_by_attr(&detail)?;
            let job = jobs
                .get(attr)
                .with_context(|| format!("no such job in {detail}"))?;
            if job["state"] != "building" || job["build"]["state"] != "running" {
                bail!("not running yet: {job}");
            }
            let log = d.get_text(&format!("/api/v1/jobs/{}/log", job["id"]))?;
            Ok(log.contains("slow-start").then(|| builder_of(job)))
        })
}

#[test]
fn agents_should_build_everything_and_take_over_when_one_dies() -> Result<()> {
    let lab = Lab::start()?;
    let mut agents = [
        ("a1", Some(lab.agent("a1")?)),
        ("a2", Some(lab.agent("a2")?)),
    ];
    lab.wait_ready(&["a1", "a2"])?;
    let d = &lab.daemon;

    // 1. Everything is built on the agents and arrives here, logs included.
    let rev = lab.repo.git(&["rev-parse", "HEAD"])?.trim().to_owned();
    let detail = d.wait_evaluation(&rev, "finished")?;
    let jobs = jobs_by_attr(&detail)?;
    for name in ["a", "b", "c"] {
        let job = &jobs[&format!("{P}{name}")];
        ensure!(job["state"] == "succeeded", "{name}: {job}");
        let builder = builder_of(job);
        ensure!(
            builder == "a1" || builder == "a2",
            "{name} was built on {builder}, not on an agent"
        );
        let out = out_path(job)?;
        ensure!(
            valid_in(&lab.store(&builder), &out),
            "{name}'s output is not valid in {builder}'s store"
        );
        d.nix_store(&["--verify-path", &out])
            .with_context(|| format!("{name}'s output is not valid here"))?;
        let log = d.get_text(&format!("/api/v1/jobs/{}/log", job["id"]))?;
        ensure!(
            log.contains(&format!("reconix: building on agent {builder}"))
                && log.contains(&format!("building-{name}")),
            "{name}'s log: {log}"
        );
        // The builder's colours survive the agent's serve process and the SSH link.
        ensure!(
            name != "a" || log.contains("\u{1b}[32mbuilding-a\u{1b}[0m\n"),
            "a's log lost its colour: {log:?}"
        );
    }
    // c links to `inter`, which only an agent built: its output came back with c's closure.
    let c_out = out_path(&jobs[&format!("{P}c")])?;
    let closure = d.nix_store(&["--query", "--requisites", &c_out])?;
    let inter = closure
        .lines()
        .find(|p| p.ends_with("-inter"))
        .with_context(|| format!("inter is not in c's closure: {closure}"))?;
    d.nix_store(&["--verify-path", inter])?;
    // A real failure is not retried.
    let fail = &jobs[&format!("{P}fail")];
    ensure!(
        fail["state"] == "failed" && fail["build"]["attempts"] == 1,
        "{fail}\n{}",
        d.log()
            .lines()
            .filter(|l| l.contains("requeue") || l.contains("WARN") || l.contains("ERROR"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    ensure!(
        fail["error"].as_str().is_some_and(|e| e.contains("exit")),
        "{fail}"
    );

    // A build that fails with output on an agent: failed, once, with the reason; its output
    // came back, is rooted here, gates nothing, and its product downloads from the daemon.
    let tested = &jobs[&format!("{P}tested")];
    ensure!(
        tested["state"] == "failed"
            && tested["error"] == "failed with output (nix-support/failed)"
            && tested["build"]["failed_with_output"] == true
            && tested["build"]["attempts"] == 1,
        "{tested}"
    );
    let builder = builder_of(tested);
    ensure!(
        builder == "a1" || builder == "a2",
        "tested was built on {builder}"
    );
    let out = out_path(tested)?;
    d.nix_store(&["--verify-path", &out])?;
    let links = reconix_e2e::links_below(&d.state_dir().join("gcroots"))?;
    ensure!(
        links
            .iter()
            .any(|l| std::fs::read_link(l).is_ok_and(|t| t == Path::new(&out))),
        "tested's output is not rooted: {links:?}"
    );
    let uses = &jobs[&format!("{P}usesTested")];
    ensure!(uses["state"] == "succeeded", "{uses}");
    let (code, body) = reconix_e2e::http_request(
        "GET",
        &format!("{}/api/v1/jobs/{}/products/0", d.url(), tested["id"]),
        None,
    )?;
    ensure!((code, body.as_str()) == (200, "report\n"), "{code}: {body}");

    // 2. An agent killed mid-build: the build finishes on the other one.
    let rev = lab.commit(r#"slow1 = slow "slow1";"#, "slow1")?;
    let first = wait_running(&lab, &rev, &format!("{P}slow1"))?;
    let other = if first == "a1" { "a2" } else { "a1" };
    let victim = agents
        .iter_mut()
        .find(|(name, _)| *name == first)
        .and_then(|(_, agent)| agent.take())
        .with_context(|| format!("slow1 went to {first}"))?;
    victim.signal("KILL")?;
    drop(victim);
    let detail = d.wait_evaluation(&rev, "finished")?;
    let slow = &jobs_by_attr(&detail)?[&format!("{P}slow1")];
    ensure!(slow["state"] == "succeeded", "{slow}");
    ensure!(
        builder_of(slow) == other,
        "slow1 finished on {}",
        builder_of(slow)
    );
    ensure!(slow["build"]["attempts"] == 2, "{slow}");
    d.nix_store(&["--verify-path", &out_path(slow)?])?;

    Ok(())
}

/// Sends garbage to the enrollment port and returns once the daemon closed the connection.
fn garbage(addr: &str) -> Result<()> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")?;
    s.write_all(&[0xff; 4096])?;
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
            Err(e) => bail!("the daemon did not drop a peer sending garbage: {e}"),
        }
    }
}

#[test]
fn a_silent_agent_should_lose_its_build_and_garbage_should_not_hurt() -> Result<()> {
    let lab = Lab::start()?;
    let a1 = lab.agent("a1")?;
    let a2 = lab.agent("a2")?;
    lab.wait_ready(&["a1", "a2"])?;
    let d = &lab.daemon;
    let rev = lab.repo.git(&["rev-parse", "HEAD"])?.trim().to_owned();
    d.wait_evaluation(&rev, "finished")?;

    // A peer speaking garbage is dropped; the daemon carries on.
    garbage(&lab.coordinator)?;

    // An agent that stops answering (SIGSTOP: no heartbeats, the socket stays open) is
    // disconnected after heartbeat-timeout and its build finishes on the other agent.
    let rev = lab.commit(r#"slow2 = slow "slow2";"#, "slow2")?;
    let first = wait_running(&lab, &rev, &format!("{P}slow2"))?;
    let (stopped, other) = match first.as_str() {
        "a1" => (&a1, "a2"),
        "a2" => (&a2, "a1"),
        other => bail!("slow2 went to {other}"),
    };
    stopped.signal("STOP")?;
    let detail = d.wait_evaluation(&rev, "finished")?;
    let slow = &jobs_by_attr(&detail)?[&format!("{P}slow2")];
    let log = d.log();
    stopped.signal("CONT")?;
    ensure!(slow["state"] == "succeeded", "{slow}");
    ensure!(
        builder_of(slow) == other,
        "slow2 finished on {}",
        builder_of(slow)
    );
    ensure!(
        log.contains("no heartbeat for"),
        "the silent agent was not disconnected for missing heartbeats"
    );
    ensure!(
        d.get_text("/healthz")? == "ok\n",
        "the daemon stopped answering"
    );
    Ok(())
}
