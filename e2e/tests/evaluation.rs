//! Evaluation at scale through the daemon with real Nix: jobs stream into builds while the
//! evaluation runs (never before a job in their closure is seen), progress shows, and a
//! superseded or timed-out evaluation leaves no evaluator process behind.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use reconix_e2e::{DEADLINE, DaemonConfig, GitRepo, TestDaemon, jobs_by_attr, salt, sh_flake};
use serde_json::Value;

const P: &str = "packages.x86_64-linux.";

/// `spin n` costs about n × 0.1 s of evaluation, when the derivation using it is instantiated.
const SPIN: &str = "spin = n: builtins.foldl' (x: _: x + builtins.foldl' (a: b: a + b) 0 (builtins.genList (i: i) 1000000)) 0 (builtins.genList (i: i) n);";

/// A daemon on `repo` with 2 evaluator workers, `extra` added to the repository's settings.
fn daemon(repo: &GitRepo, extra: &str) -> Result<TestDaemon> {
    TestDaemon::start(&DaemonConfig {
        spec: format!(
            "state-dir: {{state_dir}}\n\
             evaluation:\n  workers: 2\n\
             forges:\n  here:\n    kind: local\n    poll-interval: 1s\n    repos:\n      demo:\n        path: {}\n        branches: [main]\n{extra}\
             builders:\n  local:\n    max-jobs: 2\n",
            repo.path().display()
        ),
    })
}

/// The pids of the daemon's evaluator workers (their command lines name a chunk file
/// `reconix-eval-<daemon pid>-…`).
fn workers_of(d: &TestDaemon) -> Vec<u32> {
    let Some(pid) = d.pid() else {
        return Vec::new();
    };
    let tag = format!("reconix-eval-{pid}-");
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&tag))
        })
        .collect()
}

/// Waits until the daemon runs no evaluator.
fn wait_no_workers(d: &TestDaemon) -> Result<()> {
    d.wait_for("no evaluator process left", DEADLINE, |d| {
        Ok(workers_of(d).is_empty().then_some(()))
    })
}

fn ms(v: &Value) -> Option<i64> {
    v.as_i64()
}

#[test]
fn jobs_should_build_while_the_evaluation_runs_but_never_before_a_job_they_need_is_seen()
-> Result<()> {
    let repo = GitRepo::new()?;
    // Two workers share the four attributes in name order: [a-early, a-user] and
    // [m-slow, z-last]. `a-user` needs `z-last`, evaluated only after `m-slow`'s ~20 s.
    let outputs = r#"packages.x86_64-linux = {
        inherit z-last;
        a-early = mk "a-early" "echo early > $out";
        a-user = mk "a-user" "cat ${z-last} > $out";
        m-slow = mk "m-slow" "echo ${toString (spin 200)} > $out";
      };"#;
    let lets = format!("{SPIN}\n      z-last = mk \"z-last\" \"echo z > $out\";");
    let rev = repo.commit_flake(&sh_flake(&salt(), &lets, outputs), "streaming")?;
    let d = daemon(&repo, "")?;
    // `a-early` is built while the evaluation still runs, and progress shows.
    let (detail, early) = d.wait_for("a-early built during the evaluation", DEADLINE, |d| {
        let Some(detail) = d.evaluation_of(&rev)? else {
            return Ok(None);
        };
        let jobs = jobs_by_attr(&detail)?;
        let Some(early) = jobs.get(&format!("{P}a-early")) else {
            return Ok(None);
        };
        ensure!(
            detail["state"] == "evaluating" || early["state"] != "succeeded",
            "the evaluation ended before a-early was seen built: {detail:#}"
        );
        Ok((early["state"] == "succeeded").then(|| (detail.clone(), early.clone())))
    })?;
    assert_eq!(detail["state"], "evaluating", "{detail:#}");
    let progress = &detail["progress"];
    assert!(
        progress["attributes"] == 4 && progress["evaluated"].as_u64().is_some_and(|n| n < 4),
        "{detail:#}"
    );
    let id = detail["id"].clone();
    let page = d.get_text(&format!("/evaluations/{id}"))?;
    assert!(
        page.contains("of 4 attributes") && page.contains("<progress"),
        "{page}"
    );
    assert_eq!(early["build"]["state"], "succeeded");
    // `a-user` was seen (same worker as a-early), but its build has not started.
    let jobs = jobs_by_attr(&detail)?;
    if let Some(user) = jobs.get(&format!("{P}a-user")) {
        assert!(
            user["build"].is_null() || user["build"]["started_at"].is_null(),
            "a-user started before z-last was seen: {user:#}"
        );
    }
    let detail = d.wait_evaluation(&rev, "finished")?;
    let jobs = jobs_by_attr(&detail)?;
    for name in ["a-early", "a-user", "m-slow", "z-last"] {
        let job = &jobs[&format!("{P}{name}")];
        ensure!(job["state"] == "succeeded", "{name}: {job:#}");
    }
    // The edge: a-user built after z-last, whatever the order they were evaluated in.
    let user = d.get_json(&format!(
        "/api/v1/jobs/{}",
        jobs[&format!("{P}a-user")]["id"]
    ))?;
    let z = d.get_json(&format!(
        "/api/v1/jobs/{}",
        jobs[&format!("{P}z-last")]["id"]
    ))?;
    let (started, finished) = (
        ms(&user["build"]["started_at"]).context("a-user never started")?,
        ms(&z["build"]["finished_at"]).context("z-last never finished")?,
    );
    assert!(
        started >= finished,
        "a-user started at {started}, z-last finished at {finished}"
    );
    wait_no_workers(&d)
}

#[test]
fn a_superseded_or_timed_out_evaluation_should_leave_no_evaluator_running() -> Result<()> {
    let repo = GitRepo::new()?;
    // `forever` would evaluate for hours.
    let slow = r#"packages.x86_64-linux = {
        quick = mk "quick" "echo q > $out";
        forever = mk "forever" "echo ${toString (spin 100000)} > $out";
      };"#;
    let first = repo.commit_flake(&sh_flake(&salt(), SPIN, slow), "slow")?;
    let d = daemon(&repo, "        eval-timeout: 30s\n")?;
    d.wait_for("an evaluator working on the first commit", DEADLINE, |d| {
        Ok(!workers_of(d).is_empty()).map(|running| running.then_some(()))
    })?;
    // A new push supersedes the running evaluation: its evaluators stop within seconds.
    let fast = r#"packages.x86_64-linux.quick = mk "quick" "echo q > $out";"#;
    let started = Instant::now();
    let second = repo.commit_flake(&sh_flake(&salt(), SPIN, fast), "fast")?;
    d.wait_evaluation(&first, "superseded")?;
    wait_no_workers(&d)?;
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "the superseded evaluation's workers lived on"
    );
    d.wait_evaluation(&second, "finished")?;

    // The repository's eval-timeout (30 s) ends an evaluation that runs longer: failed, with
    // what it had found, and no evaluator left.
    let third = repo.commit_flake(&sh_flake(&salt(), SPIN, slow), "slow again")?;
    let detail = d.wait_for("the evaluation to time out", DEADLINE, |d| {
        let Some(detail) = d.evaluation_of(&third)? else {
            return Ok(None);
        };
        Ok((detail["state"] == "failed").then_some(detail))
    })?;
    let error = detail["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("evaluation timed out after 30s:")
            && error.contains("of 2 attributes evaluated"),
        "{detail:#}"
    );
    wait_no_workers(&d)?;
    let jobs = jobs_by_attr(&detail)?;
    assert!(
        jobs.contains_key(&format!("{P}quick")),
        "the job found before the timeout was dropped: {detail:#}"
    );
    Ok(())
}
