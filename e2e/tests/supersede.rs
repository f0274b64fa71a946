//! A new commit supersedes an unfinished evaluation: its running builds stop, except those a
//! live evaluation needs too.

use std::time::{Duration, Instant};

use anyhow::Result;
use reconix_e2e::{DEADLINE, GitRepo, TestDaemon, jobs_by_attr, local_spec, salt};

const P: &str = "packages.x86_64-linux.";

/// `shared` is identical in both commits; `only` differs, and sleeps far longer than the test
/// may take, so the second evaluation can only finish in time if `only`'s build was cancelled.
fn flake(salt: &str, variant: &str) -> String {
    r#"{
  outputs = { self }:
    let
      mk = name: script: derivation {
        inherit name;
        system = "x86_64-linux";
        salt = "@SALT@";
        builder = "/bin/sh";
        args = [ "-c" script ];
      };
    in {
      packages.x86_64-linux = {
        shared = mk "shared" "echo shared-start; sleep 4; echo shared > $out";
        only = mk "only-@V@" "echo only-start; sleep @SLEEP@; echo @V@ > $out";
      };
    };
}
"#
    .replace("@SALT@", salt)
    .replace("@V@", variant)
    .replace("@SLEEP@", if variant == "one" { "600" } else { "1" })
}

#[test]
fn new_commit_should_supersede_and_cancel_builds_no_live_evaluation_needs() -> Result<()> {
    let repo = GitRepo::new()?;
    let salt = salt();
    let rev1 = repo.commit_flake(&flake(&salt, "one"), "one")?;
    let d = TestDaemon::start(&local_spec(repo.path(), 2))?;

    // Both builds of the first commit are running (two slots, two jobs).
    d.wait_for("both builds of the first commit running", DEADLINE, |d| {
        let Some(detail) = d.evaluation_of(&rev1)? else {
            return Ok(None);
        };
        let jobs = jobs_by_attr(&detail)?;
        Ok(jobs
            .values()
            .all(|j| j["build"]["state"] == "running")
            .then_some(()))
    })?;

    let committed = Instant::now();
    let rev2 = repo.commit_flake(&flake(&salt, "two"), "two")?;
    let second = d.wait_evaluation(&rev2, "finished")?;
    assert!(
        committed.elapsed() < Duration::from_secs(120),
        "the second evaluation waited for a build that should have been cancelled"
    );

    let first = d
        .evaluation_of(&rev1)?
        .expect("first evaluation still listed");
    assert_eq!(first["state"], "superseded", "{first:#}");
    assert_eq!(first["superseded_by"], second["id"]);
    let (j1, j2) = (jobs_by_attr(&first)?, jobs_by_attr(&second)?);
    let only = &j1[&format!("{P}only")];
    assert_eq!(only["state"], "cancelled", "{only}");
    assert_eq!(only["build"]["state"], "cancelled", "{only}");

    // The shared drv kept building for the second evaluation: one attempt, not restarted.
    let (s1, s2) = (&j1[&format!("{P}shared")], &j2[&format!("{P}shared")]);
    assert_eq!(s1["drv_path"], s2["drv_path"]);
    assert_eq!(s2["state"], "succeeded", "{s2}");
    assert_eq!(
        s2["build"]["attempts"], 1,
        "shared build was restarted: {s2}"
    );
    assert_eq!(j2[&format!("{P}only")]["state"], "succeeded");
    Ok(())
}
