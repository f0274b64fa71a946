//! Job sets as users already write them, through the daemon: a Hydra `hydraJobs` flake ends
//! with the job states Hydra would give, and a flake with no job where reconix looks ends
//! `failed` with a hint instead of looking green.

use anyhow::{Context, Result};
use reconix_e2e::{DaemonConfig, GitRepo, TestDaemon, jobs_by_attr, salt, sh_flake};

/// A local-forge spec for the repository at `repo` whose jobs are under `attributes`.
fn spec(repo: &GitRepo, attributes: Option<&str>) -> DaemonConfig {
    let attributes = attributes
        .map(|a| format!("        attributes: {a}\n"))
        .unwrap_or_default();
    DaemonConfig {
        spec: format!(
            "state-dir: {{state_dir}}\n\
             forges:\n  here:\n    kind: local\n    poll-interval: 1s\n    repos:\n      demo:\n        path: {}\n        branches: [main]\n{attributes}\
             builders:\n  local:\n    max-jobs: 2\n",
            repo.path().display()
        ),
    }
}

#[test]
fn hydra_jobs_flake_should_end_with_the_job_states_hydra_gives() -> Result<()> {
    let repo = GitRepo::new()?;
    let salt = salt();
    let flake = sh_flake(
        &salt,
        r#"hello = mk "hello" "echo hello > $out";
      arm = derivation { name = "hello-arm"; system = "aarch64-linux"; builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; };
      fails = mk "fails" "echo failing on purpose >&2; exit 1";"#,
        r#"hydraJobs = {
        hello.x86_64-linux = hello;
        hello.aarch64-linux = arm;
        tests."foo/bar".x86_64-linux = mk "foo-bar" "read x < ${hello}; echo $x > $out";
        tests.fails.x86_64-linux = fails;
        tests.after-fails.x86_64-linux = mk "after-fails" "cat ${fails} > $out";
        broken = throw "this job set is broken";
        unused = null;
        # Aggregates: one over a derivation and a name, one over a glob that takes in a failure.
        release = mk "release" "echo > $out" // {
          _hydraAggregate = true;
          constituents = [ hello "tests.\"foo/bar\".x86_64-linux" ];
        };
        release-broken = mk "release-broken" "echo > $out" // {
          _hydraAggregate = true;
          constituents = [ "tests.fails.*" ];
        };
      };"#,
    );
    let rev = repo.commit_flake(&flake, "hydra jobs")?;
    let d = TestDaemon::start(&spec(&repo, Some("[hydraJobs]")))?;
    let detail = d.wait_evaluation(&rev, "finished")?;
    let jobs = jobs_by_attr(&detail)?;
    let states: Vec<(&str, &str)> = jobs
        .iter()
        .map(|(attr, j)| (attr.as_str(), j["state"].as_str().unwrap_or_default()))
        .collect();
    assert_eq!(
        states,
        [
            ("hydraJobs.broken", "eval-failed"),
            ("hydraJobs.hello.aarch64-linux", "skipped"),
            ("hydraJobs.hello.x86_64-linux", "succeeded"),
            ("hydraJobs.release", "succeeded"),
            ("hydraJobs.release-broken", "dependency-failed"),
            ("hydraJobs.tests.\"foo/bar\".x86_64-linux", "succeeded"),
            (
                "hydraJobs.tests.after-fails.x86_64-linux",
                "dependency-failed"
            ),
            ("hydraJobs.tests.fails.x86_64-linux", "failed"),
        ],
        "{detail:#}"
    );
    let broken = jobs["hydraJobs.broken"]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(broken.contains("this job set is broken"), "{broken}");
    let skipped = jobs["hydraJobs.hello.aarch64-linux"]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(skipped.contains("aarch64-linux"), "{skipped}");

    // The job page's reproduce command names the job as Nix does, and Nix accepts it.
    let id = jobs["hydraJobs.tests.\"foo/bar\".x86_64-linux"]["id"].clone();
    let page = d.get_text(&format!("/jobs/{id}"))?;
    assert!(
        page.contains("#hydraJobs.tests.&#34;foo/bar&#34;.x86_64-linux"),
        "{page}"
    );
    let flake_ref = detail["flake_ref"].as_str().context("flake_ref")?;
    let drv = d.nix(&[
        "eval",
        "--raw",
        &format!("{flake_ref}#hydraJobs.tests.\"foo/bar\".x86_64-linux.name"),
    ])?;
    assert_eq!(drv.trim(), "foo-bar");
    Ok(())
}

#[test]
fn flake_with_no_matching_jobs_should_fail_with_a_hint() -> Result<()> {
    let repo = GitRepo::new()?;
    let flake = sh_flake(
        &salt(),
        "",
        r#"hydraJobs.hello.x86_64-linux = mk "hello" "echo hello > $out";
      lib = { };"#,
    );
    let rev = repo.commit_flake(&flake, "only hydraJobs")?;
    let d = TestDaemon::start(&spec(&repo, None))?;
    let detail = d.wait_evaluation(&rev, "failed")?;
    let error = detail["error"].as_str().unwrap_or_default();
    assert_eq!(
        error,
        "no jobs under packages, checks, devShells, nixosConfigurations for x86_64-linux; \
         this flake has: hydraJobs, lib — set `attributes: [hydraJobs]`"
    );
    // The evaluation page shows it too.
    let page = d.get_text(&format!("/evaluations/{}", detail["id"]))?;
    assert!(page.contains("set `attributes: [hydraJobs]`"), "{page}");
    Ok(())
}
