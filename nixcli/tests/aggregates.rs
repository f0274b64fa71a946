//! Aggregate jobs (Hydra's `_hydraAggregate = true; constituents = [ … ]`) evaluated by the real
//! Nix on this machine: constituents given as derivations, job names and globs, and each way
//! an aggregate can be broken. These tests never skip: without Nix they fail and say how to
//! install it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers: clippy's allow-*-in-tests only covers #[test] functions"
)]

mod common;

use common::{by_attr, commit_flake, require_nix, salt, within};

use std::collections::BTreeMap;

use reconix_nixcli::{Constituent, EvalJob, EvalRequest, Nix, NixCli};
use reconix_spec::names::{AttrPath, System};
use reconix_spec::{JobRoot, Recurse, Walk};

/// Evaluates `checks` and `packages` of a flake whose `let` defines `a`, `b`, `p`, `q`,
/// `notJob` and `agg name constituents`, with `outputs` as its outputs.
async fn evaluate(outputs: &str) -> BTreeMap<String, EvalJob> {
    require_nix();
    let salt = salt();
    let flake = format!(
        r#"{{
  outputs = {{ self }}:
    let
      system = "x86_64-linux";
      salt = "{salt}";
      mk = name: script: derivation {{ inherit name system salt; builder = "/bin/sh"; args = [ "-c" script ]; }};
      a = mk "a" "echo a > $out";
      b = mk "b" "echo b > $out";
      p = mk "p" "echo p > $out";
      q = mk "q" "echo q > $out";
      notJob = mk "not-a-job" "echo n > $out";
      agg = name: constituents: mk name "echo ${{name}} > $out" // {{ _hydraAggregate = true; inherit constituents; }};
    in
    {outputs};
}}
"#
    );
    let (_dir, flake_ref) = commit_flake(&flake, "reconix-aggregates-");
    let request = EvalRequest {
        flake_ref,
        systems: vec![System::new("x86_64-linux").unwrap()],
        roots: ["checks", "packages"]
            .into_iter()
            .map(|root| JobRoot {
                path: AttrPath::new(root).unwrap(),
                walk: Walk::Category {
                    recurse: Recurse::Marked,
                },
            })
            .collect(),
        allow_import_from_derivation: false,
    };
    by_attr(within(NixCli::new().evaluate(request)).await.unwrap())
}

fn constituents(jobs: &BTreeMap<String, EvalJob>, attr: &str) -> Vec<String> {
    let drv = jobs[attr]
        .result
        .as_ref()
        .unwrap_or_else(|e| panic!("{attr}: {e}"));
    drv.constituents
        .as_ref()
        .unwrap_or_else(|| panic!("{attr} is no aggregate"))
        .iter()
        .map(|c| match c {
            Constituent::Job(attr) => attr.to_string(),
            Constituent::Derivation(drv) => format!("drv {}", drv.name()),
        })
        .collect()
}

fn deps(jobs: &BTreeMap<String, EvalJob>, attr: &str) -> Vec<String> {
    let drv = jobs[attr].result.as_ref().unwrap();
    drv.deps.iter().map(ToString::to_string).collect()
}

fn error<'a>(jobs: &'a BTreeMap<String, EvalJob>, attr: &str) -> &'a str {
    jobs[attr].result.as_ref().expect_err(attr)
}

#[tokio::test]
async fn aggregates_should_depend_on_constituents_given_as_derivations_names_and_globs() {
    let jobs = evaluate(
        r#"{
      checks.${system} = {
        inherit a b;
        byDrv = agg "by-drv" [ a notJob ];
        byName = agg "by-name" [ "checks.x86_64-linux.b" "packages.x86_64-linux.p" ];
        byGlob = agg "by-glob" [ "packages.x86_64-linux.*" ];
        ofAggregates = agg "of-aggregates" [ "checks.x86_64-linux.by*" ];
        empty = agg "empty" [ ];
      };
      packages.${system} = { inherit p q; };
    }"#,
    )
    .await;
    let c = |name: &str| format!("checks.x86_64-linux.{name}");
    let p = |name: &str| format!("packages.x86_64-linux.{name}");

    // A derivation that is a job becomes that job; one that is not is kept, as in Hydra.
    assert_eq!(
        constituents(&jobs, &c("byDrv")),
        [c("a"), "drv not-a-job.drv".to_owned()]
    );
    assert_eq!(deps(&jobs, &c("byDrv")), [c("a")]);
    assert_eq!(constituents(&jobs, &c("byName")), [c("b"), p("p")]);
    assert_eq!(deps(&jobs, &c("byName")), [c("b"), p("p")]);
    assert_eq!(constituents(&jobs, &c("byGlob")), [p("p"), p("q")]);
    // A glob over aggregates: they are built (and must succeed) before this one.
    assert_eq!(
        constituents(&jobs, &c("ofAggregates")),
        [c("byDrv"), c("byGlob"), c("byName")]
    );
    assert!(constituents(&jobs, &c("empty")).is_empty());
    // Jobs that are no aggregates have no constituents.
    assert_eq!(jobs[&c("a")].result.as_ref().unwrap().constituents, None);
}

#[tokio::test]
async fn broken_aggregates_should_fail_alone_naming_the_culprit() {
    let jobs = evaluate(
        r#"{
      checks.${system} = {
        inherit a;
        unknown = agg "unknown" [ "checks.x86_64-linux.a" "checks.x86_64-linux.nope" ];
        emptyGlob = agg "empty-glob" [ "tests.*" ];
        loopA = agg "loop-a" [ "checks.x86_64-linux.loopB" ];
        loopB = agg "loop-b" [ "checks.x86_64-linux.loopA" ];
        itself = agg "itself" [ "checks.x86_64-linux.itself" ];
        notADrv = agg "not-a-drv" [ 42 ];
        onTheLoop = agg "on-the-loop" [ "checks.x86_64-linux.loopA" ];
      };
    }"#,
    )
    .await;
    let c = |name: &str| format!("checks.x86_64-linux.{name}");
    assert_eq!(
        error(&jobs, &c("unknown")),
        "aggregate job: constituent `checks.x86_64-linux.nope` matches no job"
    );
    assert_eq!(
        error(&jobs, &c("emptyGlob")),
        "aggregate job: constituent glob `tests.*` matches no job"
    );
    assert_eq!(
        error(&jobs, &c("loopA")),
        format!(
            "aggregate constituents form a cycle: {} -> {} -> {}",
            c("loopA"),
            c("loopB"),
            c("loopA")
        )
    );
    assert!(error(&jobs, &c("loopB")).contains("form a cycle"));
    assert!(error(&jobs, &c("itself")).contains("is the aggregate itself"));
    let message = error(&jobs, &c("notADrv"));
    assert!(
        message.contains("aggregate constituent is neither a derivation nor a job name (a int)"),
        "{message}"
    );
    // The other jobs still evaluate; an aggregate of a broken one depends on it (and is
    // therefore blocked by it, like by any failed constituent).
    assert!(jobs[&c("a")].result.is_ok());
    assert_eq!(constituents(&jobs, &c("onTheLoop")), [c("loopA")]);
}
