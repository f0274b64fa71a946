//! `NixCli` against the real Nix on this machine, with a throwaway flake in a temporary git
//! repository. These tests never skip: without Nix they fail and say how to install it.
//!
//! Every flake carries a random salt, so each run creates new derivations instead of finding
//! outputs built by an earlier run.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers: clippy's allow-*-in-tests only covers #[test] functions"
)]

mod common;

use common::{STEP, by_attr, collect_until, commit_flake, require_nix, salt, within};

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use reconix_nixcli::{
    BuildMode, BuildRequest, BuildStatus, Error, EvalJob, EvalRequest, Nix, NixCli,
};
use reconix_spec::names::{AttrPath, StorePath, System};
use reconix_spec::{Recurse, Repo};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

/// A flake with no inputs in a fresh git repository, committed.
struct TestFlake {
    dir: TempDir,
    flake_ref: String,
    salt: String,
}

impl TestFlake {
    /// `outputs` is the outputs attribute set; it can use `system`, `salt`, `mk name script`
    /// and the packages `a`, `b` (reads a) and `c` (links b). Builders redirect per command:
    /// `exec > $out` would get them SIGKILLed by Nix (nix-lab.md).
    fn new(outputs: &str) -> Self {
        require_nix();
        let salt = salt();
        let flake = format!(
            r#"{{
  outputs = {{ self }}:
    let
      system = "x86_64-linux";
      salt = "{salt}";
      mk = name: script: derivation {{ inherit name system salt; builder = "/bin/sh"; args = [ "-c" script ]; }};
      a = mk "a" "echo building-a; echo a-content > $out";
      b = mk "b" "echo building-b; read x < ${{a}}; echo \"b-uses-$x\" > $out";
      c = mk "c" "mkdir -p $out/bin; echo c > $out/bin/c; ln -s ${{b}} $out/b-link";
    in
    {outputs};
}}
"#
        );
        Self::from_text(&flake, salt)
    }

    fn from_text(flake: &str, salt: String) -> Self {
        let (dir, flake_ref) = commit_flake(flake, "reconix-nixcli-");
        Self {
            dir,
            flake_ref,
            salt,
        }
    }

    /// Returns the request for the job roots `attributes` (as written in a spec; a name that
    /// is no path is taken as one attribute name) on x86_64-linux.
    fn request(&self, attributes: &[&str]) -> EvalRequest {
        self.request_for(attributes, &["x86_64-linux"], None)
    }

    fn request_for(
        &self,
        attributes: &[&str],
        systems: &[&str],
        recurse: Option<Recurse>,
    ) -> EvalRequest {
        let repo = Repo {
            attributes: attributes
                .iter()
                .map(|a| AttrPath::new(*a).unwrap_or_else(|_| AttrPath::from_name(a)))
                .collect(),
            recurse,
            ..Repo::default()
        };
        EvalRequest {
            flake_ref: self.flake_ref.clone(),
            systems: systems.iter().map(|s| System::new(*s).unwrap()).collect(),
            roots: repo.job_roots(),
            allow_import_from_derivation: false,
        }
    }

    async fn evaluate(&self, attributes: &[&str]) -> BTreeMap<String, EvalJob> {
        let outcome = within(NixCli::new().evaluate(self.request(attributes)))
            .await
            .unwrap();
        outcome
            .jobs
            .into_iter()
            .map(|j| (j.attr.to_string(), j))
            .collect()
    }

    /// Evaluates `packages` and returns the derivation of `packages.x86_64-linux.<name>`.
    async fn drv(&self, name: &str) -> StorePath {
        let jobs = self.evaluate(&["packages"]).await;
        let job = &jobs[&format!("packages.x86_64-linux.{name}")];
        job.result.as_ref().unwrap().drv_path.clone()
    }

    /// Evaluates `packages` once and returns the derivations of the named packages.
    async fn drvs(&self, names: &[&str]) -> Vec<StorePath> {
        let jobs = self.evaluate(&["packages"]).await;
        names
            .iter()
            .map(|name| {
                let job = &jobs[&format!("packages.x86_64-linux.{name}")];
                job.result.as_ref().unwrap().drv_path.clone()
            })
            .collect()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn build(&self, drv: &StorePath, name: &str) -> BuildRequest {
        BuildRequest {
            drv_path: drv.clone(),
            gc_root: None,
            timeout: None,
            max_silent: None,
            log_file: self.path(&format!("logs/{name}.log")),
        }
    }
}

fn deps(jobs: &BTreeMap<String, EvalJob>, attr: &str) -> Vec<String> {
    let job = jobs.get(attr).unwrap_or_else(|| panic!("no job {attr}"));
    let drv = job
        .result
        .as_ref()
        .unwrap_or_else(|e| panic!("{attr}: {e}"));
    drv.deps.iter().map(ToString::to_string).collect()
}

fn error<'a>(jobs: &'a BTreeMap<String, EvalJob>, attr: &str) -> &'a str {
    jobs[attr].result.as_ref().expect_err(attr)
}

/// Returns the pids whose command line contains `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(needle)
        {
            found.push(name);
        }
    }
    found
}

/// The variable that marks the Nix processes of one test, so that it can find them in `/proc`.
const MARK: &str = "RECONIX_TEST_MARK";

/// Returns a runner in `mode` whose Nix processes carry `MARK=<mark>` in their environment.
fn marked(mode: BuildMode, mark: &str) -> NixCli {
    NixCli::new().with_build_mode(mode).with_env(MARK, mark)
}

/// Returns the pids of the `nix-store` processes started by a runner from [`marked`].
fn nix_processes_of(mark: &str) -> Vec<String> {
    let needle = format!("{MARK}={mark}\0");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        // A zombie has an empty command line: it is gone, only not yet reaped.
        if String::from_utf8_lossy(&environ).contains(&needle) && !cmdline.is_empty() {
            found.push(name);
        }
    }
    found.sort();
    found
}

/// Returns whether the process `pid` has finished exiting (it is a zombie or gone).
fn exited(pid: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // `pid (comm) S …`: the state follows the last parenthesis.
    stat.rsplit_once(") ")
        .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X'))
}

/// Returns the names of the entries of a `gcroots/auto` directory that point at `link`.
fn registrations_of(auto: &Path, link: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(auto) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t == link))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

const DEMO: &str = r#"{
      packages.${system} = {
        inherit a b c;
        default = c;
        "it's" = a;
        "has.dot" = a;
        failing = mk "failing" "echo 'about to fail' >&2; exit 3";
        evalError = throw "intentional eval error";
        abortMe = abort "intentional abort";
        typeError = 1 + "a";
        notDrv = 42;
      };
      checks.${system} = {
        a-ok = mk "check-a" "test \"$(cat ${a})\" = a-content && touch $out";
        b-ok = mk "check-b" "grep -q b-uses ${b} && touch $out";
        fails = mk "check-fails" "echo 'check failed' >&2; false";
        needs-kvm = derivation {
          name = "needs-kvm"; inherit system salt; builder = "/bin/sh"; args = [ "-c" "touch $out" ];
          requiredSystemFeatures = [ "kvm" "big-parallel" "kvm" ];
        };
      };
      devShells.${system}.default = mk "devshell" "echo shell > $out";
      nixosConfigurations.demo = { config.system.build.toplevel = mk "nixos-system-demo" "mkdir -p $out; echo ${c} > $out/c-path"; };
    }"#;

#[tokio::test]
async fn evaluate_should_report_every_attribute_with_its_own_status_message_and_deps() {
    let flake = TestFlake::new(DEMO);
    let started = Instant::now();
    let outcome = within(NixCli::new().evaluate(flake.request(&[
        "packages",
        "checks",
        "devShells",
        "nixosConfigurations",
    ])))
    .await
    .unwrap();
    assert!(outcome.nix_calls >= 3, "bisecting needs calls: {outcome:?}");
    let jobs = by_attr(outcome);

    let p = |n: &str| format!("packages.x86_64-linux.{n}");
    let ok = [
        p("a"),
        p("b"),
        p("c"),
        p("default"),
        p("it's"),
        p("\"has.dot\""),
        p("failing"),
        "checks.x86_64-linux.a-ok".to_owned(),
        "checks.x86_64-linux.b-ok".to_owned(),
        "checks.x86_64-linux.fails".to_owned(),
        "checks.x86_64-linux.needs-kvm".to_owned(),
        "devShells.x86_64-linux.default".to_owned(),
        "nixosConfigurations.demo.config.system.build.toplevel".to_owned(),
    ];
    let failed = [p("evalError"), p("abortMe"), p("typeError"), p("notDrv")];
    let mut expected: Vec<&String> = ok.iter().chain(&failed).collect();
    expected.sort();
    // `has.dot` is a job like any other, its name quoted as Nix prints it.
    assert_eq!(jobs.keys().collect::<Vec<_>>(), expected);
    for attr in &ok {
        let job = &jobs[attr];
        let drv = job
            .result
            .as_ref()
            .unwrap_or_else(|e| panic!("{attr}: {e}"));
        assert!(
            Path::new(drv.drv_path.as_str()).exists(),
            "{attr}: .drv written"
        );
        assert_eq!(
            job.system.as_ref().map(System::as_str),
            Some("x86_64-linux")
        );
        assert!(drv.outputs.contains_key("out"), "{attr}");
    }
    assert_eq!(jobs[&p("a")].name, "a");

    // Required system features come from each job's own derivation.
    for attr in &ok {
        let features = &jobs[attr].result.as_ref().unwrap().required_features;
        if attr == "checks.x86_64-linux.needs-kvm" {
            assert_eq!(features, &["big-parallel", "kvm"], "{attr}");
        } else {
            assert!(features.is_empty(), "{attr}: {features:?}");
        }
    }

    // Each message belongs to its own attribute.
    assert!(error(&jobs, &p("evalError")).contains("intentional eval error"));
    assert!(error(&jobs, &p("abortMe")).contains("intentional abort"));
    assert_eq!(
        error(&jobs, &p("typeError")),
        "cannot add a string to an integer"
    );
    assert_eq!(error(&jobs, &p("notDrv")), "not a derivation (a int)");
    assert!(!error(&jobs, &p("abortMe")).contains("eval error"));
    assert!(!error(&jobs, &p("evalError")).contains("abort"));
    assert_eq!(jobs[&p("evalError")].name, "evalError");

    // Dependencies stop at the first job: c lists b, not a.
    assert_eq!(deps(&jobs, &p("a")), Vec::<String>::new());
    assert_eq!(deps(&jobs, &p("b")), [p("\"has.dot\""), p("a"), p("it's")]);
    assert_eq!(deps(&jobs, &p("c")), [p("b")]);
    assert_eq!(deps(&jobs, &p("default")), [p("b")]);
    assert_eq!(
        jobs[&p("default")].result.as_ref().unwrap().drv_path,
        jobs[&p("c")].result.as_ref().unwrap().drv_path
    );
    assert_eq!(deps(&jobs, "checks.x86_64-linux.b-ok"), [p("b")]);
    assert_eq!(
        deps(
            &jobs,
            "nixosConfigurations.demo.config.system.build.toplevel"
        ),
        [p("c"), p("default")]
    );
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[tokio::test]
async fn evaluate_should_fail_as_a_whole_when_the_flake_is_broken() {
    require_nix();
    let flake = TestFlake::from_text("{ outputs = { self }: { x = 1 }; }\n", salt());
    let err = within(NixCli::new().evaluate(flake.request(&["packages"])))
        .await
        .unwrap_err();
    let Error::FlakeEval { message } = err else {
        panic!("{err:?}")
    };
    assert!(message.starts_with("syntax error"), "{message}");
}

#[tokio::test]
async fn evaluate_should_refuse_an_unlocked_flake_reference() {
    let flake = TestFlake::new("{ packages.${system}.a = a; }");
    let mut req = flake.request(&["packages"]);
    req.flake_ref = format!(
        "git+file://{}?ref=refs/heads/main",
        flake.dir.path().display()
    );
    let err = within(NixCli::new().evaluate(req)).await.unwrap_err();
    assert!(
        err.to_string().contains("unlocked flake reference"),
        "{err}"
    );
}

#[tokio::test]
async fn evaluate_should_survive_quotes_and_dollars_in_its_arguments() {
    let flake = TestFlake::new("{ packages.${system}.a = a; }");
    let outcome = within(NixCli::new().evaluate(flake.request(&["it's ${x} ''", "packages"])))
        .await
        .unwrap();
    assert_eq!(outcome.jobs.len(), 1);
    assert_eq!(outcome.nix_calls, 2);
}

/// Job sets as Hydra, flake-parts and flake-utils users write them.
const JOB_SETS: &str = r#"let
      arm = "aarch64-linux";
      mkFor = sys: name: derivation { inherit name salt; system = sys; builder = "/bin/sh"; args = [ "-c" "echo ${name} > $out" ]; };
      scope = {
        hello = mk "hello" "echo hello > $out";
        lib = { id = x: x; text = "not a job"; };
        callPackage = f: f;
        override = args: args;
        overrideDerivation = f: f;
        version = "1.0";
        nested = { recurseForDerivations = true; inner = mk "inner" "echo inner > $out"; };
        unmarked = { hidden = mk "hidden" "echo hidden > $out"; };
        python3Packages = { recurseForDerivations = true; requests = mk "requests" "echo r > $out"; override = x: x; };
      };
    in {
      # Hydra: hydraJobs.<job>.<system>, nested further, with a throw and a null on the way.
      hydraJobs = {
        hello.${system} = a;
        hello.${arm} = mkFor arm "hello-arm";
        tests."foo/bar".${system} = b;
        tests.broken = throw "this test set is broken";
        tests.aborted = abort "this test aborts";
        nothing = null;
        notes = "a string";
        fn = x: x;
      };
      # flake-parts' hydraJobs.<system>.packages.<name>.
      fp.hydraJobs.${system}.packages.c = c;
      legacyPackages.${system} = scope;
      legacyPackages.${arm} = throw "no aarch64 package set";
      packages.${system} = {
        a = a;
        "pkgset/nested" = b;
        "v1.2" = c;
        set = { recurseForDerivations = true; inner = a; deeper = { recurseForDerivations = true; x = b; }; };
        plain = { d = a; };
      };
      packages.${arm} = throw "intentional: no aarch64 packages";
    }"#;

#[tokio::test]
async fn walker_should_list_hydra_jobs_as_nix_prints_their_paths_and_skip_other_systems() {
    let flake = TestFlake::new(JOB_SETS);
    let outcome = within(NixCli::new().evaluate(flake.request(&["hydraJobs", "fp.hydraJobs"])))
        .await
        .unwrap();
    let jobs = by_attr(outcome);
    assert_eq!(
        jobs.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "fp.hydraJobs.x86_64-linux.packages.c",
            "hydraJobs.fn",
            "hydraJobs.hello.aarch64-linux",
            "hydraJobs.hello.x86_64-linux",
            "hydraJobs.notes",
            "hydraJobs.tests.\"foo/bar\".x86_64-linux",
            "hydraJobs.tests.aborted",
            "hydraJobs.tests.broken",
        ],
        "null is skipped, everything else is a job"
    );
    let built = |attr: &str| {
        jobs[attr]
            .result
            .as_ref()
            .unwrap_or_else(|e| panic!("{attr}: {e}"))
    };
    assert_eq!(built("hydraJobs.hello.x86_64-linux").skipped, None);
    assert_eq!(built("fp.hydraJobs.x86_64-linux.packages.c").skipped, None);
    // A walked job's system is its derivation's; one outside `systems` is skipped, not built.
    let arm = &jobs["hydraJobs.hello.aarch64-linux"];
    assert_eq!(
        arm.system.as_ref().map(System::as_str),
        Some("aarch64-linux")
    );
    let reason = built("hydraJobs.hello.aarch64-linux")
        .skipped
        .clone()
        .unwrap();
    assert!(reason.contains("aarch64-linux"), "{reason}");
    // The job with a `/` in its name depends on the job of `a` through its quoted path.
    assert_eq!(
        deps(&jobs, "hydraJobs.tests.\"foo/bar\".x86_64-linux"),
        ["hydraJobs.hello.x86_64-linux"]
    );
    // Each failing branch costs only itself, with its own message.
    assert!(error(&jobs, "hydraJobs.tests.broken").contains("this test set is broken"));
    assert!(error(&jobs, "hydraJobs.tests.aborted").contains("this test aborts"));
    assert_eq!(
        error(&jobs, "hydraJobs.notes"),
        "not a derivation (a string)"
    );
    assert_eq!(error(&jobs, "hydraJobs.fn"), "not a derivation (a lambda)");
}

#[tokio::test]
async fn walker_should_descend_only_marked_sets_of_a_legacy_packages_scope() {
    let flake = TestFlake::new(JOB_SETS);
    let outcome = within(NixCli::new().evaluate(flake.request_for(
        &["legacyPackages"],
        &["x86_64-linux", "aarch64-linux"],
        None,
    )))
    .await
    .unwrap();
    let jobs = by_attr(outcome);
    assert_eq!(
        jobs.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "legacyPackages.aarch64-linux",
            "legacyPackages.x86_64-linux.hello",
            "legacyPackages.x86_64-linux.nested.inner",
            "legacyPackages.x86_64-linux.python3Packages.requests",
        ],
        "functions, override helpers, lib and unmarked sets are skipped silently"
    );
    assert!(error(&jobs, "legacyPackages.aarch64-linux").contains("no aarch64 package set"));
    assert!(jobs["legacyPackages.x86_64-linux.hello"].result.is_ok());

    // `recurse: all` walks every set, so the unmarked one too (and `lib`'s values fail).
    let outcome = within(NixCli::new().evaluate(flake.request_for(
        &["legacyPackages.x86_64-linux.unmarked"],
        &["x86_64-linux"],
        Some(Recurse::All),
    )))
    .await
    .unwrap();
    let attrs: Vec<String> = outcome.jobs.iter().map(|j| j.attr.to_string()).collect();
    assert_eq!(attrs, ["legacyPackages.x86_64-linux.unmarked.hidden"]);
}

#[tokio::test]
async fn categories_should_walk_marked_sets_and_keep_a_throw_under_one_system_to_itself() {
    let flake = TestFlake::new(JOB_SETS);
    let outcome = within(NixCli::new().evaluate(flake.request_for(
        &["packages"],
        &["x86_64-linux", "aarch64-linux"],
        None,
    )))
    .await
    .unwrap();
    let jobs = by_attr(outcome);
    assert_eq!(
        jobs.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "packages.aarch64-linux",
            "packages.x86_64-linux.\"pkgset/nested\"",
            "packages.x86_64-linux.\"v1.2\"",
            "packages.x86_64-linux.a",
            "packages.x86_64-linux.plain",
            "packages.x86_64-linux.set.deeper.x",
            "packages.x86_64-linux.set.inner",
        ]
    );
    for ok in [
        "packages.x86_64-linux.\"pkgset/nested\"",
        "packages.x86_64-linux.\"v1.2\"",
        "packages.x86_64-linux.set.deeper.x",
    ] {
        assert!(jobs[ok].result.is_ok(), "{ok}");
        assert_eq!(
            jobs[ok].system.as_ref().map(System::as_str),
            Some("x86_64-linux")
        );
    }
    assert!(error(&jobs, "packages.aarch64-linux").contains("intentional: no aarch64 packages"));
    assert_eq!(
        jobs["packages.aarch64-linux"]
            .system
            .as_ref()
            .map(System::as_str),
        Some("aarch64-linux")
    );
    let plain = error(&jobs, "packages.x86_64-linux.plain");
    assert!(plain.contains("recurseForDerivations = true"), "{plain}");
}

#[tokio::test]
async fn evaluation_with_no_jobs_should_name_the_flake_outputs() {
    let flake = TestFlake::new("{ hydraJobs.a = a; lib = { }; overlays = { }; }");
    let outcome = within(NixCli::new().evaluate(flake.request(&["packages", "checks"])))
        .await
        .unwrap();
    assert!(outcome.jobs.is_empty());
    assert_eq!(outcome.flake_outputs, ["hydraJobs", "lib", "overlays"]);
}

/// Runs a test body once per [`BuildMode`], as `<name>::on_channels` and `<name>::on_processes`:
/// both modes must behave the same.
macro_rules! in_both_modes {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;

            #[tokio::test]
            async fn on_channels() {
                super::$name(BuildMode::Channel).await;
            }

            #[tokio::test]
            async fn on_processes() {
                super::$name(BuildMode::Process).await;
            }
        }
    )*};
}

in_both_modes!(
    realise_should_build_root_and_log_a_derivation,
    realise_should_report_a_failing_builder_with_exit_code_100_and_its_log,
    realise_should_time_out_a_sleeping_build,
    realise_should_stop_a_cancelled_build_and_its_processes,
    realise_should_root_other_outputs_with_a_dash_suffix,
    realise_should_report_a_missing_derivation_as_an_error,
    private_store_should_evaluate_build_root_and_collect_garbage_apart_from_the_main_one,
    realise_should_keep_the_builders_colour_codes_in_the_log,
    builds_should_have_rooted_their_outputs_whenever_a_collection_runs,
);

async fn realise_should_keep_the_builders_colour_codes_in_the_log(mode: BuildMode) {
    let flake = TestFlake::new(
        r#"{ packages.${system}.red = mk "red" "printf '\\033[31mred\\033[0m plain\\n'; echo > $out"; }"#,
    );
    let drv = flake.drv("red").await;
    let req = flake.build(&drv, "red");
    let nix = NixCli::new().with_build_mode(mode);
    let outcome = within(nix.realise(req.clone(), CancellationToken::new()))
        .await
        .unwrap();
    assert_eq!(outcome.status, BuildStatus::Succeeded, "{outcome:?}");
    let log = std::fs::read_to_string(&req.log_file).unwrap();
    assert!(log.contains("\u{1b}[31mred\u{1b}[0m plain\n"), "{log:?}");
    assert!(!log.contains("@nix "), "{log}");
}

async fn realise_should_build_root_and_log_a_derivation(mode: BuildMode) {
    let flake = TestFlake::new("{ packages.${system} = { inherit a b; }; }");
    let drv = flake.drv("b").await;
    let root = flake.path("roots/deep/b");
    let req = BuildRequest {
        gc_root: Some(root.clone()),
        ..flake.build(&drv, "b")
    };
    let nix = NixCli::new().with_build_mode(mode);
    let outcome = within(nix.realise(req.clone(), CancellationToken::new()))
        .await
        .unwrap();
    assert_eq!(outcome.status, BuildStatus::Succeeded, "{outcome:?}");
    assert_eq!(
        (outcome.exit_code, outcome.message.as_deref()),
        (Some(0), None)
    );
    let out = &outcome.outputs["out"];
    assert!(Path::new(out.as_str()).exists());
    // The link points at the output, and the link is registered as an indirect root.
    assert_eq!(std::fs::read_link(&root).unwrap(), Path::new(out.as_str()));
    assert!(
        !registrations_of(Path::new("/nix/var/nix/gcroots/auto"), &root).is_empty(),
        "no indirect root for {}",
        root.display()
    );
    let log = std::fs::read_to_string(&req.log_file).unwrap();
    assert!(
        log.contains("building-a\n") && log.contains("building-b\n"),
        "{log}"
    );
    // Nix's own progress lines, rendered from its JSON log.
    assert!(log.contains("-b.drv'..."), "{log}");
}

async fn realise_should_report_a_failing_builder_with_exit_code_100_and_its_log(mode: BuildMode) {
    let flake = TestFlake::new(
        r#"{ packages.${system}.failing = mk "failing" "echo 'about to fail' >&2; echo 'error: from the builder'; exit 3"; }"#,
    );
    let drv = flake.drv("failing").await;
    let req = flake.build(&drv, "failing");
    let nix = NixCli::new().with_build_mode(mode);
    let outcome = within(nix.realise(req.clone(), CancellationToken::new()))
        .await
        .unwrap();
    assert_eq!(outcome.status, BuildStatus::Failed);
    assert_eq!(outcome.exit_code, Some(100));
    let message = outcome.message.unwrap();
    assert!(message.starts_with("builder for '/nix/store/"), "{message}");
    assert!(message.ends_with("failed with exit code 3"), "{message}");
    assert!(outcome.outputs.is_empty());
    let log = std::fs::read_to_string(&req.log_file).unwrap();
    assert!(log.contains("about to fail"), "{log}");
    assert!(log.contains("failed with exit code 3"), "{log}");
}

async fn realise_should_time_out_a_sleeping_build(mode: BuildMode) {
    let flake = TestFlake::new(
        r#"{ packages.${system}.sleeper = mk "sleeper" "echo sleeping; sleep 30; touch $out"; }"#,
    );
    let drv = flake.drv("sleeper").await;
    let req = BuildRequest {
        timeout: Some(Duration::from_secs(1)),
        ..flake.build(&drv, "sleeper")
    };
    let started = Instant::now();
    let nix = NixCli::new().with_build_mode(mode);
    let outcome = within(nix.realise(req, CancellationToken::new()))
        .await
        .unwrap();
    assert_eq!(outcome.status, BuildStatus::TimedOut, "{outcome:?}");
    assert_eq!(outcome.exit_code, Some(101));
    assert!(
        outcome
            .message
            .unwrap()
            .contains("timed out after 1 seconds")
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

async fn realise_should_stop_a_cancelled_build_and_its_processes(mode: BuildMode) {
    let flake = TestFlake::new(
        r#"{ packages.${system}.sleeper = mk "sleeper" "echo sleeping-${salt}; sleep 60; touch $out"; }"#,
    );
    let drv = flake.drv("sleeper").await;
    let req = flake.build(&drv, "sleeper");
    let nix = marked(mode, &flake.salt);
    let cancel = CancellationToken::new();
    let build = tokio::spawn({
        let (nix, req, cancel) = (nix.clone(), req.clone(), cancel.clone());
        async move { nix.realise(req, cancel).await }
    });
    // The log is written as the build runs: wait for the builder's first line.
    let deadline = Instant::now() + STEP;
    while !std::fs::read_to_string(&req.log_file).is_ok_and(|l| l.contains("sleeping-")) {
        assert!(Instant::now() < deadline, "the build never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !nix_processes_of(&flake.salt).is_empty(),
        "nix-store is running"
    );
    let cancelled_at = Instant::now();
    cancel.cancel();
    let outcome = within(build).await.unwrap().unwrap();
    assert_eq!(outcome.status, BuildStatus::Cancelled);
    assert!(cancelled_at.elapsed() < Duration::from_secs(3));
    // Neither nix-store nor the builder (whose command line holds the salt) is left.
    assert_eq!(nix_processes_of(&flake.salt), Vec::<String>::new());
    assert_eq!(processes_mentioning(drv.as_str()), Vec::<String>::new());
    assert_eq!(
        processes_mentioning(&format!("sleeping-{}", flake.salt)),
        Vec::<String>::new()
    );
    let log = std::fs::read_to_string(&req.log_file).unwrap();
    assert!(log.ends_with("reconix: build cancelled\n"), "{log}");
}

async fn realise_should_root_other_outputs_with_a_dash_suffix(mode: BuildMode) {
    let flake = TestFlake::new(
        r#"{ packages.${system}.multi = derivation {
          name = "multi"; inherit system salt; builder = "/bin/sh"; outputs = [ "out" "dev" "doc" ];
          args = [ "-c" "echo o > $out; echo d > $dev; echo doc > $doc" ];
        }; }"#,
    );
    let drv = flake.drv("multi").await;
    let root = flake.path("roots/multi");
    let req = BuildRequest {
        gc_root: Some(root.clone()),
        ..flake.build(&drv, "multi")
    };
    let nix = NixCli::new().with_build_mode(mode);
    let outcome = within(nix.realise(req, CancellationToken::new()))
        .await
        .unwrap();
    assert_eq!(outcome.status, BuildStatus::Succeeded);
    assert_eq!(outcome.outputs.len(), 3);
    for (output, link) in [("out", "multi"), ("dev", "multi-dev"), ("doc", "multi-doc")] {
        let link = flake.path(&format!("roots/{link}"));
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            Path::new(outcome.outputs[output].as_str())
        );
        assert!(
            !registrations_of(Path::new("/nix/var/nix/gcroots/auto"), &link).is_empty(),
            "{output} is not registered"
        );
    }
}

async fn realise_should_report_a_missing_derivation_as_an_error(mode: BuildMode) {
    require_nix();
    let dir = tempfile::tempdir().unwrap();
    let req = BuildRequest {
        drv_path: StorePath::new("/nix/store/00000000000000000000000000000000-missing.drv")
            .unwrap(),
        gc_root: None,
        timeout: None,
        max_silent: None,
        log_file: dir.path().join("missing.log"),
    };
    let nix = NixCli::new().with_build_mode(mode);
    let outcome = within(nix.realise(req, CancellationToken::new()))
        .await
        .unwrap();
    assert_eq!(outcome.status, BuildStatus::Error);
    assert_eq!(outcome.exit_code, Some(1));
    assert_eq!(
        outcome.message.as_deref(),
        Some(
            "cannot build missing derivation '/nix/store/00000000000000000000000000000000-missing.drv'"
        )
    );
}

async fn private_store_should_evaluate_build_root_and_collect_garbage_apart_from_the_main_one(
    mode: BuildMode,
) {
    let flake = TestFlake::new("{ packages.${system} = { inherit a b; }; }");
    let store = flake.path("store");
    let nix = NixCli::new()
        .with_store(store.as_os_str())
        .with_build_mode(mode);
    let outcome = within(nix.evaluate(flake.request(&["packages"])))
        .await
        .unwrap();
    let job = |name: &str| {
        outcome
            .jobs
            .iter()
            .find(|j| j.attr.as_str() == format!("packages.x86_64-linux.{name}"))
            .unwrap()
            .result
            .clone()
            .unwrap()
    };
    let (a, b) = (job("a"), job("b"));
    // The .drv files were written to the private store, not the main one.
    assert!(store.join(&a.drv_path.as_str()[1..]).exists());
    assert!(!Path::new(a.drv_path.as_str()).exists());

    let root = flake.path("roots/a");
    let req = BuildRequest {
        gc_root: Some(root.clone()),
        ..flake.build(&a.drv_path, "a")
    };
    let built = within(nix.realise(req, CancellationToken::new()))
        .await
        .unwrap();
    assert_eq!(built.status, BuildStatus::Succeeded, "{built:?}");
    let built_b = within(nix.realise(flake.build(&b.drv_path, "b"), CancellationToken::new()))
        .await
        .unwrap();
    assert_eq!(built_b.status, BuildStatus::Succeeded, "{built_b:?}");
    let (out_a, out_b) = (
        a.outputs.get("out").unwrap().clone(),
        b.outputs.get("out").unwrap().clone(),
    );
    assert_eq!(
        within(nix.is_valid(&[out_a.clone(), out_b.clone()]))
            .await
            .unwrap(),
        [true, true]
    );
    // The root is registered in the private store's state directory, not the main one.
    let auto = store.join("nix/var/nix/gcroots/auto");
    assert_eq!(registrations_of(&auto, &root).len(), 1);
    assert!(registrations_of(Path::new("/nix/var/nix/gcroots/auto"), &root).is_empty());

    // GC of the private store keeps the rooted output and deletes the unrooted one.
    within(nix.collect_garbage()).await.unwrap();
    assert_eq!(
        within(nix.is_valid(&[out_a.clone(), out_b.clone()]))
            .await
            .unwrap(),
        [true, false]
    );

    // Removing the link releases the root: the next GC deletes the output too, and the
    // collector drops the dangling registration.
    std::fs::remove_file(&root).unwrap();
    within(nix.collect_garbage()).await.unwrap();
    assert_eq!(
        within(nix.is_valid(&[out_a, out_b])).await.unwrap(),
        [false, false]
    );
    assert!(registrations_of(&auto, &root).is_empty());
}

/// Builds 8 derivations, two at a time, in a private store while collections run on it one
/// after another, then collects once more: every output must be valid and rooted. A build
/// that rooted its outputs after handing its channel back (whose temporary roots a collection
/// drops, `Nix::collect_garbage` closes idle channels first) or not at all loses them.
async fn builds_should_have_rooted_their_outputs_whenever_a_collection_runs(mode: BuildMode) {
    const N: usize = 8;
    let packages: String = (0..N)
        .map(|i| format!(r#"p{i} = mk "p{i}" "echo {i} > $out";"#))
        .collect();
    let flake = TestFlake::new(&format!("{{ packages.${{system}} = {{ {packages} }}; }}"));
    let store = flake.path("store");
    let nix = NixCli::new()
        .with_store(store.as_os_str())
        .with_build_mode(mode);
    let jobs = by_attr(
        within(nix.evaluate(flake.request(&["packages"])))
            .await
            .unwrap(),
    );
    let mut builds = Vec::new();
    for i in 0..N {
        let name = format!("p{i}");
        let job = jobs[&format!("packages.x86_64-linux.{name}")]
            .result
            .clone()
            .unwrap();
        // The .drv files are the test's input: rooted so that the collections keep them.
        within(nix.add_root(&flake.path(&format!("drvs/{name}")), &job.drv_path))
            .await
            .unwrap();
        let req = BuildRequest {
            gc_root: Some(flake.path(&format!("roots/{name}"))),
            ..flake.build(&job.drv_path, &name)
        };
        builds.push((req, job.outputs.get("out").unwrap().clone()));
    }

    let stop = CancellationToken::new();
    let collector = collect_until(nix.clone(), stop.clone());
    let realise = |req: &BuildRequest| within(nix.realise(req.clone(), CancellationToken::new()));
    for pair in builds.chunks(2) {
        let (first, second) = tokio::join!(realise(&pair[0].0), realise(&pair[1].0));
        for outcome in [first.unwrap(), second.unwrap()] {
            assert_eq!(outcome.status, BuildStatus::Succeeded, "{outcome:?}");
        }
    }
    stop.cancel();
    let runs = within(collector).await.unwrap();
    assert!(runs >= 1, "no collection ran alongside the builds");
    within(nix.collect_garbage()).await.unwrap();

    let outputs: Vec<StorePath> = builds.iter().map(|(_, out)| out.clone()).collect();
    assert_eq!(
        within(nix.is_valid(&outputs)).await.unwrap(),
        vec![true; N],
        "outputs collected ({runs} collections ran alongside)"
    );
    for (req, out) in &builds {
        let root = req.gc_root.as_ref().unwrap();
        assert_eq!(std::fs::read_link(root).unwrap(), Path::new(out.as_str()));
    }
}

/// Makes `path` a FIFO and reads it on a thread, 1 KiB every 2 ms, until the writer closes it.
fn slow_log_reader(path: &Path) -> std::thread::JoinHandle<String> {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let made = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(made.success(), "mkfifo {}", path.display());
    let path = path.to_owned();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut fifo = std::fs::File::open(&path).unwrap();
        let (mut text, mut chunk) = (Vec::new(), [0u8; 1024]);
        loop {
            match fifo.read(&mut chunk).unwrap() {
                0 => return String::from_utf8(text).unwrap(),
                n => text.extend_from_slice(&chunk[..n]),
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    })
}

#[tokio::test]
async fn channel_should_give_each_build_exactly_its_own_log_on_a_reused_channel() {
    // Each builder prints 12000 numbered lines (~200 KiB) on stdout and stderr up to its exit,
    // and the log file is a FIFO drained slowly: the serve process's stderr backs up, so when
    // Nix replies, the end of the build's output is still unread in the pipe. It must land in
    // this build's log, not in the next one's.
    let flake = TestFlake::new(
        r#"{ packages.${system} = let
          noisy = name: mk name "i=0; while [ $i -lt 6000 ]; do echo ${name}-out-$i; echo ${name}-err-$i >&2; i=$((i+1)); done; echo ${name} > $out";
        in { first = noisy "first"; second = noisy "second"; third = noisy "third"; }; }"#,
    );
    let drvs = flake.drvs(&["first", "second", "third"]).await;
    let nix = marked(BuildMode::Channel, &flake.salt);
    let mut serve_pids = Vec::new();
    for (drv, name) in drvs.iter().zip(["first", "second", "third"]) {
        let req = flake.build(drv, name);
        let reader = slow_log_reader(&req.log_file);
        let outcome = within(nix.realise(req.clone(), CancellationToken::new()))
            .await
            .unwrap();
        assert_eq!(outcome.status, BuildStatus::Succeeded, "{outcome:?}");
        serve_pids.push(nix_processes_of(&flake.salt));

        let log = reader.join().unwrap();
        let mut lines: Vec<&str> = log.lines().collect();
        lines.sort_unstable();
        let mut expected: Vec<String> = (0..6000)
            .flat_map(|i| [format!("{name}-out-{i}"), format!("{name}-err-{i}")])
            .chain([format!("building '{drv}'...")])
            .collect();
        expected.sort_unstable();
        assert!(
            lines == expected,
            "{name}: {} lines, foreign ones: {:?}",
            lines.len(),
            lines
                .iter()
                .filter(|l| !l.starts_with(name) && !l.starts_with("building '"))
                .take(5)
                .collect::<Vec<_>>()
        );
    }
    // One serve process built all three, with reconix's build hook instead of Nix's
    // `build-remote` (which Nix would start for every build).
    assert_eq!(serve_pids[0].len(), 1, "{serve_pids:?}");
    assert!(
        serve_pids.iter().all(|p| *p == serve_pids[0]),
        "{serve_pids:?}"
    );
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", serve_pids[0][0])).unwrap();
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let hook = args
        .windows(3)
        .find(|w| w[0] == "--option" && w[1] == "build-hook")
        .map(|w| PathBuf::from(&w[2]))
        .unwrap_or_else(|| panic!("no build hook: {args:?}"));
    assert!(hook.ends_with("decline-build-hook"), "{hook:?}");
    assert!(hook.exists());
}

#[tokio::test]
async fn channel_that_died_while_idle_should_be_replaced() {
    let flake = TestFlake::new("{ packages.${system} = { inherit a b; }; }");
    let drvs = flake.drvs(&["a", "b"]).await;
    let nix = marked(BuildMode::Channel, &flake.salt);
    let first = within(nix.realise(flake.build(&drvs[0], "a"), CancellationToken::new()))
        .await
        .unwrap();
    assert_eq!(first.status, BuildStatus::Succeeded, "{first:?}");
    let idle = nix_processes_of(&flake.salt);
    assert_eq!(idle.len(), 1, "{idle:?}");
    let killed = Command::new("kill")
        .args(["-KILL", &idle[0]])
        .status()
        .unwrap();
    assert!(killed.success());
    // Died while idle: a zombie (or gone) before the next build asks for a channel. Its
    // environment disappears earlier, while it is still closing its pipes.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !exited(&idle[0]) {
        assert!(Instant::now() < deadline, "kill -KILL did not kill");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let second = within(nix.realise(flake.build(&drvs[1], "b"), CancellationToken::new()))
        .await
        .unwrap();
    assert_eq!(second.status, BuildStatus::Succeeded, "{second:?}");
    let replaced = nix_processes_of(&flake.salt);
    assert_eq!(replaced.len(), 1, "{replaced:?}");
    assert_ne!(replaced, idle);
}

#[tokio::test]
async fn channels_should_serve_concurrent_callers_with_one_process_each() {
    let flake = TestFlake::new(
        r#"{ packages.${system} = builtins.listToAttrs (map (i: {
          name = "p${toString i}";
          value = mk "p${toString i}" "echo log-of-p${toString i}; echo ${toString i} > $out";
        }) (builtins.genList (i: i) 8)); }"#,
    );
    let names: Vec<String> = (0..8).map(|i| format!("p{i}")).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let drvs = flake.drvs(&name_refs).await;
    let nix = marked(BuildMode::Channel, &flake.salt);
    let queue = std::sync::Arc::new(std::sync::Mutex::new(
        drvs.into_iter().zip(names).collect::<Vec<_>>(),
    ));
    let mut callers = Vec::new();
    for _ in 0..2 {
        let (nix, queue) = (nix.clone(), queue.clone());
        let logs = flake.path("logs");
        callers.push(tokio::spawn(async move {
            let mut built = 0;
            loop {
                let next = queue.lock().unwrap().pop();
                let Some((drv, name)) = next else { break };
                let header = format!("building '{drv}'...\n");
                let req = BuildRequest {
                    drv_path: drv,
                    gc_root: None,
                    timeout: None,
                    max_silent: None,
                    log_file: logs.join(format!("{name}.log")),
                };
                let outcome = nix
                    .realise(req.clone(), CancellationToken::new())
                    .await
                    .unwrap();
                assert_eq!(outcome.status, BuildStatus::Succeeded, "{outcome:?}");
                let log = std::fs::read_to_string(&req.log_file).unwrap();
                assert_eq!(log, format!("{header}log-of-{name}\n"));
                built += 1;
            }
            built
        }));
    }
    let mut total = 0;
    for caller in callers {
        total += within(caller).await.unwrap();
    }
    assert_eq!(total, 8);
    let serving = nix_processes_of(&flake.salt);
    assert!(
        (1..=2).contains(&serving.len()),
        "two callers need at most two channels: {serving:?}"
    );
    // Dropping the last clone of the runner stops its channels.
    drop(nix);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !nix_processes_of(&flake.salt).is_empty() {
        assert!(Instant::now() < deadline, "channels outlived their runner");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn add_root_and_is_valid_should_work_on_built_outputs() {
    let flake = TestFlake::new("{ packages.${system}.a = a; }");
    let drv = flake.drv("a").await;
    let nix = NixCli::new();
    let out = {
        let jobs = flake.evaluate(&["packages"]).await;
        jobs["packages.x86_64-linux.a"]
            .result
            .as_ref()
            .unwrap()
            .outputs
            .get("out")
            .unwrap()
            .clone()
    };
    assert_eq!(
        within(nix.is_valid(std::slice::from_ref(&out)))
            .await
            .unwrap(),
        [false]
    );
    let outcome = within(nix.realise(flake.build(&drv, "a"), CancellationToken::new()))
        .await
        .unwrap();
    assert_eq!(outcome.status, BuildStatus::Succeeded);

    let link = flake.path("gcroots/x/y/a");
    within(nix.add_root(&link, &out)).await.unwrap();
    within(nix.add_root(&link, &out)).await.unwrap(); // idempotent
    assert_eq!(std::fs::read_link(&link).unwrap(), Path::new(out.as_str()));
    // Registered once, under reconix's own stable name (no nix-store process ran).
    let registered = registrations_of(Path::new("/nix/var/nix/gcroots/auto"), &link);
    assert_eq!(registered.len(), 1, "{registered:?}");
    assert!(registered[0].starts_with("reconix-"), "{registered:?}");

    let missing = StorePath::new("/nix/store/00000000000000000000000000000000-missing").unwrap();
    assert_eq!(
        within(nix.is_valid(&[out, missing.clone(), drv]))
            .await
            .unwrap(),
        [true, false, true]
    );
    assert!(
        within(nix.add_root(&flake.path("gcroots/m"), &missing))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn version_should_return_the_nix_version_number() {
    require_nix();
    let version = within(NixCli::new().version()).await.unwrap();
    assert!(version.starts_with("2."), "{version}");
}

#[tokio::test]
async fn build_mode_should_fall_back_to_processes_when_a_binary_cache_is_configured() {
    require_nix();
    // make test's nix.conf has no substituters: channels are safe.
    assert_eq!(
        within(NixCli::new().suitable_build_mode()).await.unwrap(),
        reconix_nixcli::BuildMode::Channel
    );
    let with_cache =
        NixCli::new().with_env("NIX_CONFIG", "substituters = file:///nonexistent-cache");
    assert_eq!(
        within(with_cache.substituters()).await.unwrap(),
        ["file:///nonexistent-cache"]
    );
    assert_eq!(
        within(with_cache.suitable_build_mode()).await.unwrap(),
        reconix_nixcli::BuildMode::Process
    );
}

#[tokio::test]
async fn closure_and_copy_to_should_size_and_sign_what_a_fresh_store_then_accepts() {
    let flake = TestFlake::new("{ packages.${system} = { inherit a b c; }; }");
    let jobs = flake.evaluate(&["packages"]).await;
    let result = |name: &str| {
        jobs[&format!("packages.x86_64-linux.{name}")]
            .result
            .clone()
            .unwrap()
    };
    let nix = NixCli::new();
    let c = result("c");
    let outcome = within(nix.realise(flake.build(&c.drv_path, "c"), CancellationToken::new()))
        .await
        .unwrap();
    assert_eq!(outcome.status, BuildStatus::Succeeded, "{outcome:?}");
    let (c_out, b_out) = (
        c.outputs.get("out").unwrap().clone(),
        result("b").outputs.get("out").unwrap().clone(),
    );

    // c links to b (b only read a while building): the closure is b and c, c refers to b.
    let closure = within(nix.closure(std::slice::from_ref(&c_out)))
        .await
        .unwrap();
    assert_eq!(
        closure.keys().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([b_out.clone(), c_out.clone()])
    );
    assert!(closure[&c_out].references.contains(&b_out));
    assert!(closure.values().all(|p| p.nar_size > 0));
    let total: u64 = closure.values().map(|p| p.nar_size).sum();
    assert_eq!(
        reconix_nixcli::closure_size(&closure, std::slice::from_ref(&c_out)),
        total
    );
    assert!(reconix_nixcli::closure_size(&closure, std::slice::from_ref(&b_out)) < total);
    // Asked on a build channel (the default mode) as `nix path-info` answers it.
    let by_process = NixCli::new().with_build_mode(BuildMode::Process);
    let shown = within(by_process.closure(std::slice::from_ref(&c_out)))
        .await
        .unwrap();
    assert_eq!(closure, shown);
    let missing = StorePath::new("/nix/store/00000000000000000000000000000000-missing").unwrap();
    assert!(
        within(nix.closure(std::slice::from_ref(&missing)))
            .await
            .is_err()
    );
    // The channel that failed on it was not given back: the next question is answered.
    let again = within(nix.closure(std::slice::from_ref(&c_out))).await;
    assert_eq!(again.unwrap(), closure);

    // A signed file:// cache: a fresh store takes c from it with the right key only.
    let key = flake.path("cache.sk");
    let out = Command::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command",
            "key",
            "generate-secret",
            "--key-name",
            "test-cache-1",
        ])
        .output()
        .unwrap();
    std::fs::write(&key, &out.stdout).unwrap();
    let public = Command::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command",
            "key",
            "convert-secret-to-public",
        ])
        .stdin(std::fs::File::open(&key).unwrap())
        .output()
        .unwrap();
    let public = String::from_utf8(public.stdout).unwrap();
    let cache = flake.path("cache");
    let url = format!("file://{}?secret-key={}", cache.display(), key.display());
    within(nix.copy_to(&url, std::slice::from_ref(&c_out), true))
        .await
        .unwrap();
    within(nix.copy_to(&url, std::slice::from_ref(&c_out), true))
        .await
        .unwrap(); // nothing left to do
    let narinfos = std::fs::read_dir(&cache)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".narinfo")
        })
        .count();
    assert_eq!(narinfos, 2);

    let substitute = |store: &str, key: &str| {
        Command::new("nix-store")
            .args([
                "--store",
                store,
                "--realise",
                c_out.as_str(),
                "--option",
                "substituters",
            ])
            .arg(format!("file://{}", cache.display()))
            .args(["--option", "trusted-public-keys", key])
            .output()
            .unwrap()
    };
    let fresh = flake.path("fresh-right");
    let ok = substitute(fresh.to_str().unwrap(), public.trim());
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let wrong = substitute(
        flake.path("fresh-wrong").to_str().unwrap(),
        "test-cache-1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    );
    assert!(!wrong.status.success());
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        stderr.contains("is not signed by any of the keys"),
        "{stderr}"
    );
}

#[tokio::test]
async fn evaluate_should_extract_meta_and_never_fail_a_job_on_a_broken_one() {
    let flake = TestFlake::new(
        r#"{ packages.${system} = {
          withMeta = (mk "with-meta" "touch $out") // { meta = {
            description = "says hello";
            homepage = [ "https://example.org/a" "https://example.org/b" ];
            license = [ { spdxId = "MIT"; shortName = "mit"; } { shortName = "bsd3"; } { fullName = "Custom"; } "WTFPL" 42 ];
            maintainers = [ { name = "Alice"; github = "alice"; } { github = "bob"; } { email = "c@example.org"; } "dave" ];
            timeout = 5; maxSilent = 2; schedulingPriority = 200;
          }; };
          single = (mk "single" "touch $out") // { meta = { license = { spdxId = "GPL-3.0-only"; }; maintainers = { name = "Erin"; }; homepage = "https://example.org/s"; }; };
          brokenFields = (mk "broken-fields" "touch $out") // { meta = { description = throw "no"; license = [ (throw "no") ]; timeout = "soon"; maxSilent = 3; }; };
          brokenMeta = (mk "broken-meta" "touch $out") // { meta = throw "no meta"; };
          noMeta = mk "no-meta" "touch $out";
        }; }"#,
    );
    let jobs = flake.evaluate(&["packages"]).await;
    let meta = |name: &str| {
        jobs[&format!("packages.x86_64-linux.{name}")]
            .result
            .as_ref()
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .meta
            .clone()
    };
    let m = meta("withMeta");
    assert_eq!(m.description.as_deref(), Some("says hello"));
    assert_eq!(m.homepage.as_deref(), Some("https://example.org/a"));
    assert_eq!(m.license, ["MIT", "bsd3", "Custom", "WTFPL"]);
    assert_eq!(m.maintainers, ["Alice", "bob", "c@example.org", "dave"]);
    assert_eq!(
        (m.timeout, m.max_silent, m.scheduling_priority),
        (Some(5), Some(2), Some(200))
    );
    let m = meta("single");
    assert_eq!(
        (m.license, m.maintainers),
        (vec!["GPL-3.0-only".to_owned()], vec!["Erin".to_owned()])
    );
    assert_eq!(m.homepage.as_deref(), Some("https://example.org/s"));
    let m = meta("brokenFields");
    assert_eq!(
        (m.description, m.timeout, m.max_silent),
        (None, None, Some(3))
    );
    assert!(m.license.is_empty());
    assert!(meta("brokenMeta").is_empty());
    assert!(meta("noMeta").is_empty());
}

in_both_modes!(realise_should_leave_failed_output_products_and_release_name_to_inspect);

/// A builder in the style of nixpkgs' `succeedOnFailure`: the check fails, the builder records
/// it in `$out/nix-support/failed` and exits 0, so Nix sees a success.
async fn realise_should_leave_failed_output_products_and_release_name_to_inspect(mode: BuildMode) {
    let flake = TestFlake::new(
        r#"{ packages.${system} = {
          tested = mk "tested" ''
            mkdir -p $out/nix-support $out/bin
            echo report > $out/report.html
            echo 'tests failed' >&2
            echo 1 > $out/nix-support/failed
            echo "file binary-dist $out/report.html" > $out/nix-support/hydra-build-products
            echo "doc manual \"$out/my docs\"" >> $out/nix-support/hydra-build-products
            echo "file source-dist /etc/passwd" >> $out/nix-support/hydra-build-products
            echo 'two words' >> $out/nix-support/hydra-build-products
            echo tested-1.0 > $out/nix-support/hydra-release-name
          '';
          fine = mk "fine" "mkdir -p $out; echo ok > $out/ok";
        }; }"#,
    );
    let drvs = flake.drvs(&["tested", "fine"]).await;
    let nix = NixCli::new().with_build_mode(mode);
    let outcome = within(nix.realise(flake.build(&drvs[0], "tested"), CancellationToken::new()))
        .await
        .unwrap();
    assert_eq!(
        outcome.status,
        BuildStatus::Succeeded,
        "Nix sees a success: {outcome:?}"
    );
    let out = outcome.outputs["out"].clone();
    let report = within(nix.inspect_outputs(std::slice::from_ref(&out)))
        .await
        .unwrap();
    assert!(report.failed);
    assert_eq!(report.release_name.as_deref(), Some("tested-1.0"));
    let products: Vec<(&str, &str, String)> = report
        .products
        .iter()
        .map(|p| (p.kind.as_str(), p.subtype.as_str(), p.path.clone()))
        .collect();
    assert_eq!(
        products,
        [
            ("file", "binary-dist", format!("{out}/report.html")),
            ("doc", "manual", format!("{out}/my docs")),
            // Listed as written: the web server refuses to serve it.
            ("file", "source-dist", "/etc/passwd".to_owned()),
        ]
    );
    assert_eq!(report.rejected_products, ["two words"]);

    let fine = within(nix.realise(flake.build(&drvs[1], "fine"), CancellationToken::new()))
        .await
        .unwrap();
    let report = within(nix.inspect_outputs(&fine.outputs.values().cloned().collect::<Vec<_>>()))
        .await
        .unwrap();
    assert_eq!(report, reconix_nixcli::OutputsReport::default());
}
