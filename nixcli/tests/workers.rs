//! The evaluator worker pool with the real Nix on this machine: attributes split across
//! workers and reassembled, errors isolated per attribute, the memory budget (kill, re-queue,
//! too fat alone), a worker killed from outside, results streamed with the DAG respected, no
//! evaluator left behind when an evaluation is dropped, and import from derivation. These
//! tests never skip: without Nix they fail and say how to install it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers: clippy's allow-*-in-tests only covers #[test] functions"
)]

mod common;

use common::{by_attr, commit_flake, require_nix, salt, within};

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reconix_nixcli::{EvalEvent, EvalJob, EvalOutcome, EvalRequest, Nix, NixCli, StreamedJob};
use reconix_spec::names::System;

const P: &str = "packages.x86_64-linux.";

/// One test at a time in one process: `our_workers` finds every evaluator of this process,
/// and plain `cargo test` runs this file's tests in one process, in parallel (nextest runs
/// each in its own).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A flake whose `let` defines `mk name script`, `spin n` (about n × 0.1 s of evaluation) and
/// `fat name n` (a derivation whose evaluation holds a list of `n` strings: about 180 bytes
/// each), with `packages` = `packages`.
fn flake(packages: &str) -> (tempfile::TempDir, String) {
    require_nix();
    let salt = salt();
    let flake = format!(
        r#"{{
  outputs = {{ self }}:
    let
      system = "x86_64-linux";
      salt = "{salt}";
      mk = name: script: derivation {{ inherit name system salt; builder = "/bin/sh"; args = [ "-c" script ]; }};
      # About n × 0.1 s of evaluation in little memory, when the derivation is instantiated
      # (listing the jobs does not force it).
      spin = n: builtins.foldl' (x: _: x + builtins.foldl' (a: b: a + b) 0 (builtins.genList (i: i) 1000000)) 0 (builtins.genList (i: i) n);
      fat = name: n: let big = builtins.genList (i: toString i) n; in builtins.deepSeq big (mk name "echo ${{toString (builtins.length big)}} > $out");
    in
    {{ packages.${{system}} = {packages}; }};
}}
"#
    );
    commit_flake(&flake, "reconix-workers-")
}

fn request(flake_ref: &str) -> EvalRequest {
    EvalRequest {
        flake_ref: flake_ref.to_owned(),
        systems: vec![System::new("x86_64-linux").unwrap()],
        roots: reconix_spec::Repo::default().job_roots(),
        allow_import_from_derivation: false,
    }
}

/// Evaluates with `nix`, collecting the events.
async fn evaluate(nix: &NixCli, flake_ref: &str) -> (EvalOutcome, Vec<EvalEvent>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let outcome = within(nix.evaluate_streaming(request(flake_ref), tx))
        .await
        .unwrap();
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    (outcome, events)
}

fn streamed(events: &[EvalEvent]) -> BTreeMap<String, StreamedJob> {
    events
        .iter()
        .filter_map(|e| match e {
            EvalEvent::Evaluated(jobs) => Some(jobs),
            EvalEvent::Listed { .. } => None,
        })
        .flatten()
        .map(|j| (j.job.attr.to_string(), j.clone()))
        .collect()
}

fn error(jobs: &BTreeMap<String, EvalJob>, name: &str) -> String {
    jobs[&format!("{P}{name}")].result.clone().unwrap_err()
}

/// Returns the pids of this test process's evaluator workers still running (their command
/// line names a chunk file `reconix-eval-<our pid>-…`).
fn our_workers() -> Vec<u32> {
    let tag = format!("reconix-eval-{}-", std::process::id());
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&tag))
        })
        .collect()
}

#[tokio::test]
async fn workers_should_split_and_reassemble_exactly_what_one_process_finds() {
    let _serial = SERIAL.lock().await;
    let packages: Vec<String> = (0..40)
        .map(|i| match i {
            7 => "t7 = throw \"no t7\";".to_owned(),
            23 => "a23 = abort \"no a23\";".to_owned(),
            31 => "n31 = 31;".to_owned(),
            _ => format!("p{i:02} = mk \"p{i:02}\" \"echo {i} > $out\";"),
        })
        .collect();
    let mut packages = format!("rec {{ {} }}", packages.join(" "));
    packages = packages.replace("echo 5 > $out", "cat ${p04} > $out");
    let (_dir, flake_ref) = flake(&packages);
    let one = NixCli::new().with_eval_workers(1, 2 << 30);
    let three = NixCli::new().with_eval_workers(3, 2 << 30);
    let (alone, _) = evaluate(&one, &flake_ref).await;
    let (split, events) = evaluate(&three, &flake_ref).await;
    let (alone_calls, split_calls) = (alone.nix_calls, split.nix_calls);
    assert_eq!(by_attr(alone), by_attr(split.clone()));
    let jobs = by_attr(split);
    assert_eq!(jobs.len(), 40);
    assert!(
        error(&jobs, "t7").contains("no t7"),
        "{}",
        error(&jobs, "t7")
    );
    assert!(
        error(&jobs, "a23").contains("no a23"),
        "{}",
        error(&jobs, "a23")
    );
    assert_eq!(error(&jobs, "n31"), "not a derivation (a int)");
    assert_eq!(
        jobs[&format!("{P}p05")].result.as_ref().unwrap().deps,
        [format!("{P}p04").parse().unwrap()]
    );
    // Every attribute was reported while the evaluation ran, after the count. (`a23`'s abort
    // stops even its listing: it is a failed part of the tree, counted and reported at once.)
    assert_eq!(events[0], EvalEvent::Listed { attributes: 40 });
    assert_eq!(streamed(&events).len(), 40);
    // Three workers start a few more processes than one (their chunks, and restarts after an
    // abort in each), not a bisection more.
    assert!(
        split_calls <= alone_calls + 10,
        "{alone_calls} {split_calls}"
    );
}

#[tokio::test]
async fn the_memory_budget_should_kill_requeue_and_fail_only_the_attribute_too_fat_alone() {
    let _serial = SERIAL.lock().await;
    // 2 workers of 250 MiB: a budget of 500 MiB. The medium attributes (~220 MB each) do not
    // fit two at once; the fat one (~1 GB) does not fit even alone.
    let (_dir, flake_ref) = flake(
        r#"{
          m1 = fat "m1" 1200000; m2 = fat "m2" 1200000; m3 = fat "m3" 1200000;
          huge = fat "huge" 6000000;
          s1 = mk "s1" "echo > $out"; s2 = mk "s2" "echo > $out";
        }"#,
    );
    let nix = NixCli::new().with_eval_workers(2, 250 << 20);
    let (outcome, _) = evaluate(&nix, &flake_ref).await;
    let jobs = by_attr(outcome);
    for name in ["m1", "m2", "m3", "s1", "s2"] {
        assert!(
            jobs[&format!("{P}{name}")].result.is_ok(),
            "{name}: {:?}",
            jobs[&format!("{P}{name}")].result
        );
    }
    let huge = error(&jobs, "huge");
    assert!(
        huge.starts_with("evaluation needs more than 500 MiB (evaluation.max-memory 250 MiB"),
        "{huge}"
    );
    // Sampled every 200 ms: the sum may pass the budget by what grows in between, no more.
    let peak = nix.eval_pool().peak_memory();
    assert!(peak < 700 << 20, "peak {peak}");
    assert!(our_workers().is_empty(), "{:?}", our_workers());
}

#[tokio::test]
async fn a_worker_killed_from_outside_should_be_recovered() {
    let _serial = SERIAL.lock().await;
    // `slow` takes about 3 s of evaluation: long enough to be found and killed.
    let (_dir, flake_ref) = flake(
        r#"{
          a = mk "a" "echo > $out";
          slow = mk "slow" "echo ${toString (spin 30)} > $out";
          z = mk "z" "echo > $out";
        }"#,
    );
    let nix = NixCli::new().with_eval_workers(1, 2 << 30);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let evaluation = tokio::spawn({
        let nix = nix.clone();
        let req = request(&flake_ref);
        async move { nix.evaluate_streaming(req, tx).await }
    });
    // Once `a` is reported, the worker is on `slow`: kill it.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut killed = false;
    while !killed {
        assert!(Instant::now() < deadline, "a was never reported");
        match tokio::time::timeout(Duration::from_secs(120), rx.recv()).await {
            Ok(Some(EvalEvent::Evaluated(jobs)))
                if jobs
                    .iter()
                    .any(|j| j.job.attr.to_string() == format!("{P}a")) =>
            {
                for pid in our_workers() {
                    std::process::Command::new("kill")
                        .args(["-9", &pid.to_string()])
                        .status()
                        .unwrap();
                    killed = true;
                }
            }
            Ok(Some(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    let outcome = within(evaluation).await.unwrap().unwrap();
    let jobs = by_attr(outcome);
    for name in ["a", "slow", "z"] {
        assert!(jobs[&format!("{P}{name}")].result.is_ok(), "{name}");
    }
}

#[tokio::test]
async fn streaming_should_never_let_a_job_build_before_a_job_in_its_closure_is_seen() {
    let _serial = SERIAL.lock().await;
    // Attributes are evaluated in name order: `a-user` needs `z-last`'s output and comes
    // first (`m-slow` in between takes a while); `c-inter` needs `inter`, no job and never
    // built; `b-leaf` needs nothing.
    let (_dir, flake_ref) = flake(
        r#"let
          z-last = mk "z-last" "echo z > $out";
          inter = mk "inter" "echo i > $out";
        in {
          inherit z-last;
          a-user = mk "a-user" "cat ${z-last} > $out";
          b-leaf = mk "b-leaf" "echo b > $out";
          c-inter = mk "c-inter" "cat ${inter} > $out";
          m-slow = builtins.seq (builtins.foldl' (x: y: x + y) 0 (builtins.genList (i: i) 3000000)) (mk "m-slow" "echo > $out");
        }"#,
    );
    let nix = NixCli::new().with_eval_workers(1, 2 << 30);
    let (outcome, events) = evaluate(&nix, &flake_ref).await;
    // The event in which each job was reported.
    let mut seen_in: BTreeMap<String, usize> = BTreeMap::new();
    for (n, e) in events.iter().enumerate() {
        if let EvalEvent::Evaluated(jobs) = e {
            for j in jobs {
                seen_in.insert(j.job.attr.to_string(), n);
            }
        }
    }
    let streamed = streamed(&events);
    assert!(streamed[&format!("{P}b-leaf")].buildable);
    assert!(streamed[&format!("{P}z-last")].buildable);
    // `inter` is no job and has no output: `c-inter` waits for the end of the evaluation.
    assert!(!streamed[&format!("{P}c-inter")].buildable);
    // `a-user` is buildable early only once `z-last` was seen, with the edge to it.
    let user = &streamed[&format!("{P}a-user")];
    if user.buildable {
        assert!(seen_in[&format!("{P}z-last")] <= seen_in[&format!("{P}a-user")]);
        assert_eq!(
            user.job.result.as_ref().unwrap().deps,
            [format!("{P}z-last").parse().unwrap()]
        );
    }
    // The final outcome has the edges.
    let jobs = by_attr(outcome);
    assert_eq!(
        jobs[&format!("{P}a-user")].result.as_ref().unwrap().deps,
        [format!("{P}z-last").parse().unwrap()]
    );
}

#[tokio::test]
async fn a_dropped_evaluation_should_leave_no_evaluator_running() {
    let _serial = SERIAL.lock().await;
    let (_dir, flake_ref) = flake(
        r#"{
          slow = mk "slow" "echo ${toString (spin 100000)} > $out";
        }"#,
    );
    let nix = NixCli::new().with_eval_workers(2, 2 << 30);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut evaluation = Box::pin(nix.evaluate_streaming(request(&flake_ref), tx));
    // Listed: the worker starts next; wait until it runs, then drop the evaluation.
    tokio::select! {
        _ = &mut evaluation => panic!("the slow attribute finished first"),
        e = rx.recv() => assert_eq!(e, Some(EvalEvent::Listed { attributes: 1 })),
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while our_workers().is_empty() {
        assert!(Instant::now() < deadline, "no worker started");
        tokio::select! {
            _ = &mut evaluation => panic!("the slow attribute finished first"),
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    drop(evaluation);
    // `slow` would take hours: only a kill ends its worker.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !our_workers().is_empty() {
        assert!(
            Instant::now() < deadline,
            "workers left: {:?}",
            our_workers()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn import_from_derivation_should_be_refused_unless_allowed() {
    let _serial = SERIAL.lock().await;
    let (_dir, flake_ref) = flake(
        r#"{
          ifd = let n = import (mk "gen" "echo '\"from-ifd\"' > $out"); in mk n "echo > $out";
          plain = mk "plain" "echo > $out";
        }"#,
    );
    let nix = NixCli::new().with_eval_workers(2, 2 << 30);
    let (outcome, _) = evaluate(&nix, &flake_ref).await;
    let jobs = by_attr(outcome);
    assert!(jobs[&format!("{P}plain")].result.is_ok());
    let ifd = error(&jobs, "ifd");
    assert!(ifd.contains("allow-import-from-derivation"), "{ifd}");
    let mut req = request(&flake_ref);
    req.allow_import_from_derivation = true;
    let jobs = by_attr(within(nix.evaluate(req)).await.unwrap());
    assert_eq!(jobs[&format!("{P}ifd")].name, "from-ifd");
}

#[tokio::test]
async fn evaluations_should_share_the_workers_chunk_by_chunk() {
    let _serial = SERIAL.lock().await;
    // One worker. `big` has 600 attributes of about 10 ms each: chunks of 100 (before the
    // time per attribute is known), then of about 5 s. `small`, started while big's first
    // chunk runs, gets the worker next and ends long before big does.
    let lite = "builtins.foldl' (a: b: a + b) 0 (builtins.genList (i: i) 100000)";
    let (_big_dir, big_ref) = flake(&format!(
        "builtins.listToAttrs (builtins.genList (i: {{ name = \"b${{toString i}}\"; value = mk \"b${{toString i}}\" \"echo ${{toString ({lite} + i)}} > $out\"; }}) 600)"
    ));
    let (_small_dir, small_ref) = flake(r#"{ only = mk "only" "echo > $out"; }"#);
    let nix = NixCli::new().with_eval_workers(1, 2 << 30);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let big = tokio::spawn({
        let nix = nix.clone();
        let req = request(&big_ref);
        async move { nix.evaluate_streaming(req, tx).await }
    });
    // Big's first chunk is running once its first job is reported.
    loop {
        match within(rx.recv()).await {
            Some(EvalEvent::Evaluated(_)) => break,
            Some(EvalEvent::Listed { .. }) => {}
            None => panic!("big ended before reporting a job"),
        }
    }
    let small = by_attr(within(nix.evaluate(request(&small_ref))).await.unwrap());
    assert!(small[&format!("{P}only")].result.is_ok());
    assert!(
        !big.is_finished(),
        "the small evaluation waited for the whole big one"
    );
    let big = by_attr(within(big).await.unwrap().unwrap());
    assert_eq!(big.len(), 600);
}

#[tokio::test]
async fn a_worker_past_max_memory_between_attributes_should_be_restarted_without_losing_one() {
    let _serial = SERIAL.lock().await;
    // Two workers of 250 MiB (a budget of 500 MiB). `slow` (about 10 s of hashing one string:
    // some 40 MB) keeps one worker busy; the ten attributes that each keep about 64 MB (on a start
    // of about 45 MB) then go to the other, which passes 250 MiB after four of them while the
    // pool stays under its budget: it is restarted between two attributes and the rest are
    // evaluated by fresh workers.
    let (_slow_dir, slow_ref) = flake(
        r#"let s = builtins.concatStringsSep "" (builtins.genList (i: "0123456789") 100000);
           in { slow = mk "slow" "echo ${toString (builtins.foldl' (a: i: a + builtins.stringLength (builtins.hashString "sha256" s)) 0 (builtins.genList (i: i) 20000))} > $out"; }"#,
    );
    // Each attribute forces its own part of one shared list: what it evaluated stays
    // reachable, so the worker's memory grows with every attribute (as with a package set).
    let (_fat_dir, fat_ref) = flake(
        r#"let parts = builtins.genList (i: builtins.genList (j: toString (i * 1000000 + j)) 400000) 10;
           in builtins.listToAttrs (builtins.genList (i: { name = "m${toString i}";
             value = builtins.deepSeq (builtins.elemAt parts i) (mk "m${toString i}" "echo ${toString i} > $out"); }) 10)"#,
    );
    let nix = NixCli::new().with_eval_workers(2, 250 << 20);
    let slow = tokio::spawn({
        let nix = nix.clone();
        let req = request(&slow_ref);
        async move { nix.evaluate(req).await }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    while our_workers().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the slow evaluation started no worker"
        );
        assert!(
            !slow.is_finished(),
            "the slow evaluation ended before it was seen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (outcome, _) = evaluate(&nix, &fat_ref).await;
    let jobs = by_attr(outcome);
    assert_eq!(jobs.len(), 10);
    for (attr, job) in &jobs {
        assert!(job.result.is_ok(), "{attr}: {:?}", job.result);
    }
    assert!(
        nix.eval_pool().restarts() >= 1,
        "no worker was restarted (peak {} MiB)",
        nix.eval_pool().peak_memory() >> 20
    );
    let slow = by_attr(within(slow).await.unwrap().unwrap());
    assert!(slow[&format!("{P}slow")].result.is_ok());
    assert!(our_workers().is_empty(), "{:?}", our_workers());
}

#[tokio::test]
async fn a_part_that_fails_to_list_should_be_counted_and_reported_at_once() {
    let _serial = SERIAL.lock().await;
    // An `abort` kills the listing process (a `throw` the walker catches, and the part is then
    // an attribute like any other): the part is split off and is an eval-failed job already.
    require_nix();
    let salt = salt();
    let (_dir, flake_ref) = commit_flake(
        &format!(
            r#"{{
  outputs = {{ self }}: {{
    packages.x86_64-linux.a = derivation {{ name = "a"; system = "x86_64-linux"; salt = "{salt}"; builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; }};
    packages.aarch64-linux = abort "no aarch64 here";
  }};
}}
"#
        ),
        "reconix-workers-",
    );
    let nix = NixCli::new().with_eval_workers(1, 2 << 30);
    let mut req = request(&flake_ref);
    req.systems.push(System::new("aarch64-linux").unwrap());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let outcome = within(nix.evaluate_streaming(req, tx)).await.unwrap();
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    // The failed part is one of the 2 attributes, and the first job reported, before any
    // worker's result.
    assert!(
        matches!(events.first(), Some(EvalEvent::Listed { attributes: 2 })),
        "{:?}",
        events.first()
    );
    let Some(EvalEvent::Evaluated(first)) = events.get(1) else {
        panic!("{:?}", events.get(1));
    };
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].job.attr.to_string(), "packages.aarch64-linux");
    assert!(!first[0].buildable);
    let error = first[0].job.result.clone().unwrap_err();
    assert!(error.contains("no aarch64 here"), "{error}");
    let streamed = streamed(&events);
    assert_eq!(streamed.len(), 2, "{:?}", streamed.keys());
    assert_eq!(outcome.jobs.len(), 2);
}
