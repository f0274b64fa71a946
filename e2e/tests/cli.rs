//! The CLI verbs that need a daemon or a state directory: `status`, `plan`, `demo`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use reconix_e2e::{GitRepo, TestDaemon, local_spec, reconix_bin, require_nix, run, salt};
use serde_json::Value;

const FLAKE: &str = r#"{
  outputs = { self }: {
    packages.x86_64-linux.hello = derivation {
      name = "hello"; system = "x86_64-linux"; salt = "@SALT@";
      builder = "/bin/sh"; args = [ "-c" "echo hello > $out" ];
    };
  };
}
"#;

fn plan_json(d: &TestDaemon) -> Result<Value> {
    let out = run(Command::new(reconix_bin()?)
        .args(["plan", "--output", "json", "--spec"])
        .arg(d.spec_path())
        .arg("--nix-store")
        .arg(d.store()))?;
    Ok(serde_json::from_str(&out)?)
}

fn steps_of<'a>(plan: &'a Value, loop_name: &str) -> Vec<&'a Value> {
    plan.as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["loop"] == loop_name)
        .flat_map(|l| l["keys"].as_array().into_iter().flatten())
        .flat_map(|k| k["steps"].as_array().into_iter().flatten())
        .collect()
}

#[test]
fn status_and_plan_should_describe_a_running_daemon() -> Result<()> {
    let repo = GitRepo::new()?;
    let rev = repo.commit_flake(&FLAKE.replace("@SALT@", &salt()), "init")?;
    let d = TestDaemon::start(&local_spec(repo.path(), 2))?;
    d.wait_evaluation(&rev, "finished")?;

    // `status` talks to the API: JSON for scripts, tables for people.
    let json: Value = serde_json::from_str(&run(Command::new(reconix_bin()?).args([
        "status",
        "--output",
        "json",
        "--server",
        d.url(),
    ]))?)?;
    assert_eq!(json["evaluations"][0]["rev"], rev.as_str());
    assert_eq!(json["job_counts"]["succeeded"], 1);
    let loops: Vec<&str> = json["loops"]
        .as_array()
        .context("loops")?
        .iter()
        .filter_map(|l| l["name"].as_str())
        .collect();
    for name in ["builds", "evaluations", "gcroots"] {
        assert!(loops.contains(&name), "{name} missing from {loops:?}");
    }
    // A healthy local setup: no loop fails (the forge loops have nothing to do for a local forge).
    let failing: Vec<&Value> = json["loops"]
        .as_array()
        .context("loops")?
        .iter()
        .filter(|l| !l["last_error"].is_null())
        .collect();
    assert!(failing.is_empty(), "failing loops: {failing:?}");
    let table = run(Command::new(reconix_bin()?).args(["status", "--server", d.url()]))?;
    assert!(
        table.contains("LOOPS") && table.contains("here/demo"),
        "{table}"
    );

    // kubectl-like verbs over the API.
    let cli = |args: &[&str]| -> Result<String> {
        run(Command::new(reconix_bin()?)
            .args(args)
            .args(["--server", d.url()]))
    };
    let evals: Value = serde_json::from_str(&cli(&["get", "evaluations", "-o", "json"])?)?;
    let id = evals[0]["id"].as_i64().context("evaluation id")?;
    let table = cli(&["get", "evaluations"])?;
    assert!(
        table.starts_with("ID") && table.contains(&rev[..12]),
        "{table}"
    );
    let jobs: Value = serde_json::from_str(&cli(&[
        "get",
        "jobs",
        "--evaluation",
        &id.to_string(),
        "-o",
        "json",
    ])?)?;
    let job = &jobs[0];
    assert_eq!(job["attr"], "packages.x86_64-linux.hello", "{jobs}");
    let table = cli(&["get", "jobs", "-e", &id.to_string(), "--state", "succeeded"])?;
    assert!(table.contains("packages.x86_64-linux.hello"), "{table}");
    let table = cli(&["get", "jobs", "-e", &id.to_string(), "--state", "failed"])?;
    assert!(!table.contains("hello"), "{table}");
    let described = cli(&["describe", "evaluation", &id.to_string()])?;
    assert!(
        described.contains(&rev) && described.contains("1 succeeded"),
        "{described}"
    );
    let job_id = job["id"].to_string();
    let log = cli(&["logs", &job_id])?;
    let followed = cli(&["logs", "--follow", &job_id])?;
    assert_eq!(
        log, followed,
        "a finished job's log, followed, ends at once"
    );
    let builders = cli(&["get", "builders"])?;
    assert!(builders.contains("local"), "{builders}");
    let err = Command::new(reconix_bin()?)
        .args(["describe", "evaluation", "999999", "--server", d.url()])
        .output()?;
    assert!(!err.status.success());
    assert!(
        String::from_utf8_lossy(&err.stderr).contains("404"),
        "{}",
        String::from_utf8_lossy(&err.stderr)
    );
    // `status --watch` redraws in place: home + clear, then the view, again and again.
    let mut watch = Command::new(reconix_bin()?)
        .args([
            "status",
            "--watch",
            "--interval",
            "100ms",
            "--server",
            d.url(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stdout = watch.stdout.take().context("stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = std::io::Read::read(&mut stdout, &mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&seen);
            if text.matches("\x1b[H\x1b[2JLOOPS").count() >= 2 {
                let _ = tx.send(text.into_owned());
                break;
            }
        }
    });
    let redrawn = rx.recv_timeout(Duration::from_secs(60));
    let _ = watch.kill();
    let _ = watch.wait();
    let redrawn = redrawn.context("status --watch did not redraw twice within 60 s")?;
    assert!(redrawn.contains("here/demo"), "{redrawn}");

    let bash = run(Command::new(reconix_bin()?).args(["completions", "bash"]))?;
    assert!(bash.contains("describe") && bash.contains("logs"), "{bash}");

    // Converged: `plan` has nothing to do for evaluations and GC roots.
    let plan = plan_json(&d)?;
    assert!(steps_of(&plan, "evaluations").is_empty(), "{plan:#}");
    assert!(steps_of(&plan, "gcroots").is_empty(), "{plan:#}");
    Ok(())
}

#[test]
fn plan_should_print_steps_without_applying_them() -> Result<()> {
    require_nix()?;
    let repo = GitRepo::new()?;
    let rev = repo.commit_flake(&FLAKE.replace("@SALT@", &salt()), "init")?;
    let tmp = tempfile::tempdir()?;
    let state = tmp.path().join("state");
    let spec = tmp.path().join("spec.yaml");
    std::fs::write(
        &spec,
        local_spec(repo.path(), 2)
            .spec
            .replace("{state_dir}", &state.display().to_string()),
    )?;
    let out = run(Command::new(reconix_bin()?)
        .args(["plan", "--output", "json", "--spec"])
        .arg(&spec))?;
    let plan: Value = serde_json::from_str(&out)?;
    let steps = steps_of(&plan, "evaluations");
    assert_eq!(steps.len(), 1, "{plan:#}");
    assert_eq!(steps[0]["step"], "start-evaluation");
    assert_eq!(steps[0]["rev"], rev.as_str());
    assert!(
        !state.join("reconix.db").exists(),
        "plan must not create the database"
    );

    let table = run(Command::new(reconix_bin()?)
        .args(["plan", "--spec"])
        .arg(&spec))?;
    assert!(table.contains("here/demo: start-evaluation"), "{table}");
    Ok(())
}

#[test]
fn demo_should_build_the_sample_flake_and_serve_its_page() -> Result<()> {
    require_nix()?;
    let tmp = tempfile::tempdir()?;
    let mut child = Command::new(reconix_bin()?)
        .args(["demo", "--listen", "127.0.0.1:0", "--dir"])
        .arg(tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut url = None;
    let mut seen = Vec::new();
    let finished = loop {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(180)) else {
            let _ = child.kill();
            bail!("demo stopped talking; it said:\n{}", seen.join("\n"));
        };
        if let Some(u) = line.trim().strip_prefix("status page:") {
            url = Some(u.trim().trim_end_matches('/').to_owned());
        }
        seen.push(line.clone());
        if line.starts_with("first evaluation") {
            break line;
        }
    };
    let url = url.context("demo printed no status page URL")?;
    let page = reconix_e2e::http_get(&format!("{url}/"));
    let _ = child.kill();
    let _ = child.wait();
    assert!(finished.contains("finished"), "{finished}");
    assert!(
        seen.iter().any(|l| l.contains("jobs done")),
        "no progress line: {seen:?}"
    );
    let page = page?;
    assert!(page.contains("checks.x86_64-linux.lint"), "{page}");
    assert!(page.contains("packages.x86_64-linux.greeting"), "{page}");
    assert!(tmp.path().join("repo/flake.nix").exists());
    assert!(tmp.path().join("reconix.yaml").exists());
    Ok(())
}
