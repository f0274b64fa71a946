//! End to end with real Nix: what a build's outputs say (Hydra's `nix-support/` conventions)
//! and what a job's `meta` says (its `timeout` and `maxSilent` stop builds), through the daemon, the database and the API.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use reconix_e2e::{
    DEADLINE, GitRepo, TestDaemon, http_request, jobs_by_attr, links_below, local_spec, salt,
    sh_flake,
};

const P: &str = "packages.x86_64-linux.";

#[test]
fn outputs_that_say_failed_products_and_meta_limits_should_take_effect_through_the_daemon()
-> Result<()> {
    let repo = GitRepo::new()?;
    // `tested` is written the way nixpkgs' `succeedOnFailure` leaves a failed check: the
    // builder exits 0 and records the failure in `$out/nix-support/failed`.
    let tested = r#"tested = mk "tested" ''
        mkdir -p $out/nix-support
        echo report > $out/report.html
        echo 'tests failed' >&2
        echo 1 > $out/nix-support/failed
        echo "file binary-dist $out/report.html" > $out/nix-support/hydra-build-products
        echo "file source-dist /etc/passwd" >> $out/nix-support/hydra-build-products
        mkdir -p $out/share/doc/manual
        echo '<h1>manual</h1>' > $out/share/doc/manual/index.html
        echo "doc manual $out/share/doc/manual index.html" >> $out/nix-support/hydra-build-products
        echo tested-1.0 > $out/nix-support/hydra-release-name
      '';"#;
    let outputs = r#"packages.x86_64-linux = {
        inherit tested;
        usesTested = mk "uses-tested" "cat ${tested}/report.html > $out";
        hasMeta = (mk "has-meta" "touch $out") // { meta = {
          description = "has meta"; license = { spdxId = "MIT"; }; maintainers = [ { github = "alice"; } ];
        }; };
        slowWithMeta = (mk "slow-with-meta" "echo slow-start; sleep 120; touch $out") // { meta.timeout = 2; };
        silentWithMeta = (mk "silent-with-meta" "echo silent-start; sleep 120; touch $out") // { meta.maxSilent = 2; };
      };"#;
    let rev = repo.commit_flake(&sh_flake(&salt(), tested, outputs), "outcomes")?;
    // The repository's timeout and max-silent are the defaults (hours): only `meta.timeout`
    // and `meta.maxSilent` can stop the sleepers within the test's time.
    let d = TestDaemon::start(&local_spec(repo.path(), 2))?;
    let started = Instant::now();
    let detail = d.wait_evaluation(&rev, "finished")?;
    assert!(
        started.elapsed() < Duration::from_secs(100),
        "a sleeper ran past its meta.timeout or meta.maxSilent"
    );
    let jobs = jobs_by_attr(&detail)?;
    let job = |name: &str| -> Result<serde_json::Value> {
        let id = jobs
            .get(&format!("{P}{name}"))
            .with_context(|| format!("no job {name}: {detail:#}"))?["id"]
            .clone();
        d.get_json(&format!("/api/v1/jobs/{id}"))
    };

    // 5. Failed with output: the job fails with the reason, its build succeeded for Nix.
    let t = job("tested")?;
    assert_eq!(t["state"], "failed", "{t:#}");
    assert_eq!(
        t["error"], "failed with output (nix-support/failed)",
        "{t:#}"
    );
    assert_eq!(t["build"]["state"], "succeeded", "{t:#}");
    assert_eq!(t["build"]["failed_with_output"], true, "{t:#}");
    // ... and its dependents are not gated by it: the output exists.
    let u = job("usesTested")?;
    assert_eq!(u["state"], "succeeded", "{u:#}");
    // ... and its output is kept: rooted like a success.
    let out = t["outputs"]["out"]
        .as_str()
        .context("tested has no output")?
        .to_owned();
    let rooted = d.wait_for("tested's output rooted", DEADLINE, |_| {
        let links = links_below(&d.state_dir().join("gcroots"))?;
        Ok(links
            .iter()
            .any(|l| std::fs::read_link(l).is_ok_and(|t| t == Path::new(&out)))
            .then_some(()))
    });
    assert!(rooted.is_ok(), "{rooted:?}");

    // 8. Products and the release name.
    assert_eq!(t["build"]["release_name"], "tested-1.0", "{t:#}");
    let products = t["build"]["products"].as_array().context("no products")?;
    assert_eq!(products.len(), 3, "{t:#}");
    assert_eq!(products[0]["path"], format!("{out}/report.html"));
    let id = &t["id"];
    let (code, body) = http_request(
        "GET",
        &format!("{}/api/v1/jobs/{id}/products/0", d.url()),
        None,
    )?;
    assert_eq!((code, body.as_str()), (200, "report\n"));
    let (code, body) = http_request(
        "GET",
        &format!("{}/api/v1/jobs/{id}/products/1", d.url()),
        None,
    )?;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("outside the outputs"), "{body}");
    assert!(!body.contains("root:"), "{body}");
    // A directory product (a manual) redirects to its default file, shown inline.
    let (code, body) = http_request(
        "GET",
        &format!("{}/api/v1/jobs/{id}/products/2", d.url()),
        None,
    )?;
    assert_eq!(code, 303, "{body}");
    let (code, body) = http_request(
        "GET",
        &format!("{}/api/v1/jobs/{id}/products/2/index.html", d.url()),
        None,
    )?;
    assert_eq!((code, body.as_str()), (200, "<h1>manual</h1>\n"));
    let page = d.get_text(&format!("/jobs/{id}"))?;
    assert!(
        page.contains("tested-1.0") && page.contains("Build products"),
        "{page}"
    );

    // 7. Meta: shown, and `meta.timeout` stopped a build the repository would let run.
    let m = job("hasMeta")?;
    assert_eq!(m["meta"]["description"], "has meta", "{m:#}");
    assert_eq!(m["meta"]["license"][0], "MIT", "{m:#}");
    assert_eq!(m["meta"]["maintainers"][0], "alice", "{m:#}");
    let s = job("slowWithMeta")?;
    assert_eq!(s["state"], "failed", "{s:#}");
    assert_eq!(s["build"]["state"], "timed-out", "{s:#}");
    assert_eq!(s["meta"]["timeout"], 2, "{s:#}");
    let s = job("silentWithMeta")?;
    assert_eq!(s["state"], "failed", "{s:#}");
    assert_eq!(s["build"]["state"], "timed-out", "{s:#}");
    assert_eq!(s["meta"]["maxSilent"], 2, "{s:#}");
    let log = d.get_text(&format!("/api/v1/jobs/{}/log", s["id"]))?;
    assert!(log.contains("of silence"), "{log}");
    Ok(())
}
