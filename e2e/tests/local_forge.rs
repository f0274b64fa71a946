//! End to end with a `local` forge: a git repository on disk, the real daemon, real Nix.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result};
use reconix_e2e::{DEADLINE, GitRepo, TestDaemon, jobs_by_attr, links_below, local_spec, salt};
use serde_json::Value;

/// The test flake: no inputs, a dependency chain a → b → c, slow packages, a failing package with
/// a dependent, a failing check, an attribute that throws and one that aborts (tryEval cannot
/// catch `abort`, so the evaluator must bisect), a devShell and a NixOS toplevel.
fn flake(salt: &str, c_variant: &str, slow_secs: u32) -> String {
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
      a = mk "a" "echo building-a; echo a-content > $out";
      b = mk "b" "echo building-b; read x < ${a}; echo \"b-uses-$x\" > $out";
      c = mk "c" "mkdir -p $out/bin; echo @C@ > $out/bin/c; ln -s ${b} $out/b-link";
      slow = n: mk "slow-${toString n}" "echo slow-start; sleep @SLOW@; echo slow-${toString n} > $out";
      failing = mk "failing" "echo 'about to fail' >&2; exit 3";
    in {
      packages.${system} = {
        inherit a b c failing;
        default = c;
        slow1 = slow 1; slow2 = slow 2; slow3 = slow 3; slow4 = slow 4;
        afterFailing = mk "after-failing" "cat ${failing} > $out";
        evalError = throw "intentional eval error";
        abortMe = abort "hard abort here";
      };
      checks.${system} = {
        a-ok = mk "check-a" "test \"$(cat ${a})\" = a-content && echo ok > $out";
        fails = mk "check-fails" "echo 'check failed on purpose' >&2; exit 1";
      };
      devShells.${system}.default = mk "devshell" "echo shell > $out";
      nixosConfigurations.demo = {
        config.system.build.toplevel = mk "nixos-system-demo" "mkdir -p $out; echo ${c} > $out/c-path";
      };
    };
}
"#
    .replace("@SALT@", salt)
    .replace("@C@", c_variant)
    .replace("@SLOW@", &slow_secs.to_string())
}

fn state_of(jobs: &BTreeMap<String, Value>, attr: &str) -> String {
    jobs.get(attr)
        .and_then(|j| j["state"].as_str())
        .unwrap_or("<missing>")
        .to_owned()
}

const P: &str = "packages.x86_64-linux.";
const NIXOS: &str = "nixosConfigurations.demo.config.system.build.toplevel";

#[test]
fn local_flake_should_be_evaluated_built_rooted_and_rebuilt_incrementally() -> Result<()> {
    let repo = GitRepo::new()?;
    let salt = salt();
    let rev1 = repo.commit_flake(&flake(&salt, "c-one", 1), "first")?;
    let d = TestDaemon::start(&local_spec(repo.path(), 2))?;

    let detail = d.wait_evaluation(&rev1, "finished")?;
    let jobs = jobs_by_attr(&detail)?;
    let expected = [
        (format!("{P}a"), "succeeded"),
        (format!("{P}b"), "succeeded"),
        (format!("{P}c"), "succeeded"),
        (format!("{P}default"), "succeeded"),
        (format!("{P}slow1"), "succeeded"),
        (format!("{P}failing"), "failed"),
        (format!("{P}afterFailing"), "dependency-failed"),
        (format!("{P}evalError"), "eval-failed"),
        (format!("{P}abortMe"), "eval-failed"),
        ("checks.x86_64-linux.a-ok".to_owned(), "succeeded"),
        ("checks.x86_64-linux.fails".to_owned(), "failed"),
        ("devShells.x86_64-linux.default".to_owned(), "succeeded"),
        (NIXOS.to_owned(), "succeeded"),
    ];
    for (attr, state) in &expected {
        assert_eq!(state_of(&jobs, attr), *state, "state of {attr}: {detail:#}");
    }
    assert_eq!(jobs.len(), 16, "unexpected job set: {:?}", jobs.keys());

    // Each evaluation error is attached to its own attribute only.
    let err = |a: &str| {
        jobs[&format!("{P}{a}")]["error"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    assert!(
        err("evalError").contains("intentional eval error"),
        "{}",
        err("evalError")
    );
    assert!(
        err("abortMe").contains("hard abort here"),
        "{}",
        err("abortMe")
    );
    assert_eq!(
        err("afterFailing"),
        "dependency packages.x86_64-linux.failing failed"
    );
    for (attr, job) in &jobs {
        if job["state"] == "succeeded" {
            assert!(job["error"].is_null(), "{attr} has an error: {job}");
        }
        if job["state"] != "eval-failed" {
            assert!(
                job["drv_path"]
                    .as_str()
                    .is_some_and(|p| p.ends_with(".drv")),
                "{attr}"
            );
        }
    }

    // The dependent package was built after its dependency.
    let a = &jobs[&format!("{P}a")];
    let b = &jobs[&format!("{P}b")];
    assert!(
        b["deps"].as_array().is_some_and(|d| d.contains(&a["id"])),
        "b must depend on a: {b}"
    );
    assert!(
        b["build"]["started_at"].as_i64() >= a["build"]["finished_at"].as_i64(),
        "b started before a finished: a={a} b={b}"
    );

    // A succeeded build records its outputs' closure size, as `nix path-info -S` reports it.
    let c_out = jobs[&format!("{P}c")]["outputs"]["out"]
        .as_str()
        .context("c has no output")?
        .to_owned();
    let c_id = jobs[&format!("{P}c")]["id"].clone();
    let recorded = d.wait_for("c's closure size", DEADLINE, |_| {
        let job = d.get_json(&format!("/api/v1/jobs/{c_id}"))?;
        Ok(job["build"]["closure_size_bytes"].as_u64())
    })?;
    let info: Value = serde_json::from_str(&d.nix(&["path-info", "--json", "-S", &c_out])?)?;
    assert_eq!(Some(recorded), info[0]["closureSize"].as_u64(), "{info}");
    assert!(recorded > 0);

    // The failing check's log is retrievable through the API.
    let fails = &jobs["checks.x86_64-linux.fails"];
    let log = d.get_text(&format!("/api/v1/jobs/{}/log", fails["id"]))?;
    assert!(log.contains("check failed on purpose"), "log: {log}");

    // GC roots exist for exactly the succeeded jobs, and a GC keeps their outputs.
    let roots_dir = d.state_dir().join("gcroots");
    let rooted = d.wait_for("gc roots of every succeeded job", DEADLINE, |_| {
        let links = links_below(&roots_dir)?;
        let rooted: BTreeSet<String> = links
            .iter()
            .filter_map(|l| l.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        let want: BTreeSet<String> = jobs
            .iter()
            .filter(|(_, j)| j["state"] == "succeeded")
            .map(|(attr, _)| attr.clone())
            .collect();
        Ok((rooted == want).then_some(links))
    })?;
    d.nix_store(&["--gc"])?;
    for link in &rooted {
        let target = std::fs::read_link(link)?;
        d.nix_store(&["--check-validity", &target.to_string_lossy()])
            .with_context(|| format!("{} lost its output after GC", link.display()))?;
    }
    let failing_out = jobs[&format!("{P}failing")]["outputs"]["out"]
        .as_str()
        .context("failing has an out path")?
        .to_owned();
    assert!(
        d.nix_store(&["--check-validity", &failing_out]).is_err(),
        "the failing job has no output"
    );

    // A second commit changes only `c`: a new evaluation that reuses every unchanged build.
    let rev2 = repo.commit_flake(&flake(&salt, "c-two", 1), "second")?;
    let detail2 = d.wait_evaluation(&rev2, "finished")?;
    let jobs2 = jobs_by_attr(&detail2)?;
    assert_ne!(detail["id"], detail2["id"]);
    for (attr, j2) in &jobs2 {
        let j1 = &jobs[attr];
        if j1["drv_path"] == j2["drv_path"] && !j1["drv_path"].is_null() {
            assert_eq!(
                j1["build"]["id"], j2["build"]["id"],
                "{attr} was built again"
            );
            if !j1["build"].is_null() && j2["build"]["attempts"] != 1 {
                let log = d.log();
                let why: Vec<&str> = log
                    .lines()
                    .filter(|l| l.contains("requeue") || l.contains("WARN") || l.contains("ERROR"))
                    .collect();
                panic!("{attr} was built again: {j2}\n{}", why.join("\n"));
            }
            assert_eq!(j1["state"], j2["state"], "{attr}");
        }
    }
    for changed in [format!("{P}c"), NIXOS.to_owned()] {
        assert_ne!(
            jobs[&changed]["drv_path"], jobs2[&changed]["drv_path"],
            "{changed}"
        );
        assert_eq!(state_of(&jobs2, &changed), "succeeded");
    }
    Ok(())
}

#[test]
fn daemon_killed_during_builds_should_converge_after_restart_without_rebuilding() -> Result<()> {
    let repo = GitRepo::new()?;
    let rev = repo.commit_flake(&flake(&salt(), "c", 3), "slow")?;
    let cfg = local_spec(repo.path(), 2);
    let mut d = TestDaemon::start(&cfg)?;

    // Kill -9 once some jobs are finished and others are still building.
    let before = d.wait_for("some jobs finished and some building", DEADLINE, |d| {
        let Some(detail) = d.evaluation_of(&rev)? else {
            return Ok(None);
        };
        let jobs = jobs_by_attr(&detail)?;
        let building = jobs.values().any(|j| j["state"] == "building");
        let done = jobs.values().any(|j| j["state"] == "succeeded");
        Ok((building && done).then_some(jobs))
    })?;
    d.kill9()?;

    d.restart(&cfg)?;
    let detail = d.wait_evaluation(&rev, "finished")?;
    let after = jobs_by_attr(&detail)?;
    assert_eq!(state_of(&after, &format!("{P}slow4")), "succeeded");
    assert_eq!(state_of(&after, &format!("{P}failing")), "failed");
    assert_eq!(
        state_of(&after, &format!("{P}afterFailing")),
        "dependency-failed"
    );
    for (attr, j) in &before {
        if j["state"] == "succeeded" {
            let a = &after[attr];
            assert_eq!(a["state"], "succeeded", "{attr}");
            assert_eq!(a["build"]["id"], j["build"]["id"], "{attr}");
            assert_eq!(a["build"]["attempts"], 1, "{attr} rebuilt: {a}");
            assert_eq!(
                a["build"]["finished_at"], j["build"]["finished_at"],
                "{attr} rebuilt"
            );
        }
    }
    // Exactly one evaluation: the restart did not evaluate the same commit twice.
    assert_eq!(d.evaluations()?.len(), 1);
    Ok(())
}
