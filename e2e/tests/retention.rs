//! End to end: the `retention` loop purges old evaluations (rows, GC roots, logs) by age and
//! keep-last, then by size, and with `collect-garbage` the store loses exactly their outputs.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use reconix_e2e::{DEADLINE, GitRepo, TestDaemon, jobs_by_attr, local_spec, salt};
use serde_json::Value;

/// One package whose output differs with every salt: each commit roots a new path.
fn flake(salt: &str) -> String {
    r#"{
  outputs = { self }: {
    packages.x86_64-linux.pkg = derivation {
      name = "pkg";
      system = "x86_64-linux";
      salt = "@SALT@";
      builder = "/bin/sh";
      args = [ "-c" "echo building-pkg; echo @SALT@ > $out" ];
    };
  };
}
"#
    .replace("@SALT@", salt)
}

/// What one evaluation left behind.
struct Eval {
    id: i64,
    out: String,
    log: String,
}

/// Commits a new version and waits until it is built; returns its evaluation.
fn commit_and_build(d: &TestDaemon, repo: &GitRepo, n: u32) -> Result<Eval> {
    let rev = repo.commit_flake(&flake(&format!("{}-{n}", salt())), &format!("v{n}"))?;
    let detail = d.wait_evaluation(&rev, "finished")?;
    let jobs = jobs_by_attr(&detail)?;
    let job = &jobs["packages.x86_64-linux.pkg"];
    ensure!(job["state"] == "succeeded", "{job}");
    let drv = job["drv_path"].as_str().context("drv")?;
    let base = drv.trim_start_matches("/nix/store/");
    Ok(Eval {
        id: detail["id"].as_i64().context("id")?,
        out: job["outputs"]["out"].as_str().context("out")?.to_owned(),
        log: d
            .state_dir()
            .join("logs")
            .join(format!("{base}.log"))
            .to_string_lossy()
            .into_owned(),
    })
}

fn evaluation_ids(d: &TestDaemon) -> Result<BTreeSet<i64>> {
    Ok(d.evaluations()?
        .iter()
        .filter_map(|e| e["id"].as_i64())
        .collect())
}

fn root_dir(d: &TestDaemon, id: i64) -> std::path::PathBuf {
    d.state_dir().join(format!("gcroots/here/demo/{id}"))
}

fn valid(d: &TestDaemon, path: &str) -> bool {
    d.nix_store(&["--check-validity", path]).is_ok()
}

/// Rewrites the spec's retention section and reloads it (SIGHUP).
fn set_retention(d: &TestDaemon, retention: &str) -> Result<()> {
    let text = std::fs::read_to_string(d.spec_path())?;
    let kept = text.split("retention:").next().unwrap_or(&text).to_owned();
    std::fs::write(d.spec_path(), format!("{kept}retention:\n{retention}"))?;
    d.signal("HUP")
}

fn wait_purged(d: &TestDaemon, gone: &[&Eval], kept: &[&Eval]) -> Result<()> {
    // A purge is one step but not one instant: rows, then the root directory, then the logs.
    d.wait_for("the purge", DEADLINE, |d| {
        let ids = evaluation_ids(d)?;
        Ok((gone.iter().all(|e| !ids.contains(&e.id))
            && gone.iter().all(|e| !root_dir(d, e.id).exists())
            && gone.iter().all(|e| !Path::new(&e.log).exists()))
        .then_some(()))
    })?;
    let ids = evaluation_ids(d)?;
    for e in kept {
        ensure!(ids.contains(&e.id), "evaluation {} was purged", e.id);
        ensure!(
            root_dir(d, e.id).exists(),
            "evaluation {}'s roots are gone",
            e.id
        );
        ensure!(
            Path::new(&e.log).exists(),
            "evaluation {}'s log is gone",
            e.id
        );
    }
    for e in gone {
        let status = d.get_json(&format!("/api/v1/evaluations/{}", e.id));
        ensure!(
            status.is_err(),
            "evaluation {} still answers: {status:?}",
            e.id
        );
    }
    Ok(())
}

#[test]
fn retention_should_purge_by_age_keep_last_and_size_and_gc_the_purged_outputs() -> Result<()> {
    let repo = GitRepo::new()?;
    let config = local_spec(repo.path(), 2);
    let d = TestDaemon::start(&config)?;
    let e1 = commit_and_build(&d, &repo, 1)?;
    let e2 = commit_and_build(&d, &repo, 2)?;
    let e3 = commit_and_build(&d, &repo, 3)?;
    for e in [&e1, &e2, &e3] {
        ensure!(
            valid(&d, &e.out) && Path::new(&e.log).exists(),
            "{} not built",
            e.out
        );
    }
    // The GC roots are in place before retention changes anything.
    d.wait_for("three evaluations rooted", DEADLINE, |d| {
        Ok([&e1, &e2, &e3]
            .iter()
            .all(|e| root_dir(d, e.id).exists())
            .then_some(()))
    })?;

    // 1. Age and keep-last: everything is older than 1 s, but main keeps its newest two.
    set_retention(
        &d,
        "  max-age: 1s\n  keep-last: 2\n  collect-garbage: true\n",
    )?;
    wait_purged(&d, &[&e1], &[&e2, &e3])?;
    d.wait_for("e1's output collected", DEADLINE, |d| {
        Ok((!valid(d, &e1.out)).then_some(()))
    })?;
    ensure!(
        valid(&d, &e2.out) && valid(&d, &e3.out),
        "a kept output was collected"
    );

    // 2. Size: the rooted closures must fit in 1 byte; main's newest (and latest successful)
    // evaluation stays whatever its size, the older one goes.
    set_retention(
        &d,
        "  max-age: 30 days\n  keep-last: 1\n  max-size: 1 B\n  collect-garbage: true\n",
    )?;
    wait_purged(&d, &[&e2], &[&e3])?;
    d.wait_for("e2's output collected", DEADLINE, |d| {
        Ok((!valid(d, &e2.out)).then_some(()))
    })?;
    ensure!(valid(&d, &e3.out), "the kept output was collected");

    // 3. Logs: the kept evaluation stays, but its build's log is older than 1 s.
    set_retention(&d, "  max-age: 30 days\n  keep-last: 1\n  logs: 1s\n")?;
    d.wait_for("e3's log deleted", DEADLINE, |_| {
        Ok((!Path::new(&e3.log).exists()).then_some(()))
    })?;
    ensure!(evaluation_ids(&d)?.contains(&e3.id) && valid(&d, &e3.out));
    let detail = d.get_json(&format!("/api/v1/evaluations/{}", e3.id))?;
    let job = &jobs_by_attr(&detail)?["packages.x86_64-linux.pkg"];
    d.wait_for("the log recorded as gone", DEADLINE, |d| {
        let job = d.get_json(&format!("/api/v1/jobs/{}", job["id"]))?;
        Ok((job["log_available"] == false).then_some(()))
    })?;

    // `reconix plan` now shows retention in sync.
    let loops: Value = d.get_json("/api/v1/loops")?;
    ensure!(
        loops.to_string().contains("retention"),
        "no retention loop in {loops}"
    );
    Ok(())
}
