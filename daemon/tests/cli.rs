//! The offline CLI verbs, run as the real binary: `check`, `schema`, and usage errors.

#![allow(
    clippy::expect_used,
    reason = "test helper: allow-expect-in-tests covers only #[test] fns"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn reconix(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_reconix"))
        .args(args)
        .output()
        .expect("reconix runs")
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn check_should_accept_every_example_spec() {
    for entry in std::fs::read_dir(repo_root().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let out = reconix(&["check", path.to_str().unwrap()]);
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn check_should_print_every_error_with_its_location_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("bad.yaml");
    std::fs::write(
        &spec,
        "forges:\n  here:\n    kind: local\n    repos:\n      demo:\n        path: /srv/demo\n        branches: ['bad[']\n      other:\n        path: /srv/demo\n",
    )
    .unwrap();
    let out = reconix(&["check", spec.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.is_empty()).collect();
    assert!(lines.len() >= 2, "expected every error, got: {stderr}");
    let prefix = format!("{}:", spec.display());
    for line in &lines {
        assert!(line.starts_with(&prefix), "no FILE:LINE:COL in {line:?}");
    }
    assert!(
        stderr.contains(&format!("{}:7:", spec.display())),
        "glob error on line 7: {stderr}"
    );
}

#[test]
fn check_should_reject_unknown_keys_with_a_location() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("typo.yaml");
    std::fs::write(&spec, "listen: 127.0.0.1:8080\nstate-dirr: /x\n").unwrap();
    let out = reconix(&["check", spec.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!("{}:2:", spec.display())),
        "{stderr}"
    );
    assert!(stderr.contains("state-dirr"), "{stderr}");
}

#[test]
fn check_should_refuse_an_empty_spec_at_its_first_line() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("empty.yaml");
    std::fs::write(
        &spec,
        "# nothing here yet
",
    )
    .unwrap();
    let out = reconix(&["check", spec.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!("{}:1:1: the spec is empty", spec.display())),
        "{stderr}"
    );
}

#[test]
fn check_should_refuse_hostile_nesting_where_it_crosses_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("deep.yaml");
    // 100,000 levels of `- `: an older reconix used gigabytes and minutes on this.
    std::fs::write(&spec, "- ".repeat(100_000)).unwrap();
    let out = reconix(&["check", spec.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "{}:1:65: the spec nests deeper than 32 levels",
            spec.display()
        )),
        "{stderr}"
    );
}

#[test]
fn schema_should_print_the_checked_in_schema() {
    let out = reconix(&["schema"]);
    assert!(out.status.success());
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let file = std::fs::read_to_string(repo_root().join("docs/spec.schema.json")).unwrap();
    let checked_in: serde_json::Value = serde_json::from_str(&file).unwrap();
    assert_eq!(printed, checked_in, "docs/spec.schema.json is stale");
}

#[test]
fn status_should_fail_clearly_when_no_daemon_listens() {
    let out = reconix(&["status", "--server", "http://127.0.0.1:9"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach the daemon"), "{stderr}");
}

#[test]
fn usage_errors_should_exit_64_and_help_should_exit_0() {
    let out = reconix(&["check"]);
    assert_eq!(
        out.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage"));
    let out = reconix(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("serve"));
}

#[test]
fn builders_should_be_listed_revoked_and_admitted_in_the_state_dir() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.yaml");
    std::fs::write(&spec, format!("state-dir: {}\n", dir.path().display())).unwrap();
    let spec = spec.to_str().unwrap();
    // Before the daemon ever ran: a clear message, exit 1.
    let out = reconix(&["builders", "list", "--spec", spec]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has not run"));

    let mut db = reconix_status::StatusDb::open(
        dir.path().join("reconix.db"),
        reconix_status::OpenMode::ReadWrite,
    )
    .unwrap();
    let systems = ["x86_64-linux".to_owned()];
    db.enroll_agent(
        &reconix_status::AgentHello {
            name: "builder-1",
            key_fingerprint: "SHA256:k",
            systems: &systems,
            features: &[],
            max_jobs: 2,
        },
        reconix_spec::Timestamp::now(),
    )
    .unwrap();
    drop(db);

    let out = reconix(&["builders", "list", "--spec", spec]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        table.contains("builder-1") && table.contains("disconnected") && table.contains("0/2"),
        "{table}"
    );
    // Admitting a name that is not revoked is an error.
    let out = reconix(&["builders", "admit", "--spec", spec, "builder-1"]);
    assert_eq!(out.status.code(), Some(1));
    let out = reconix(&[
        "builders",
        "revoke",
        "--spec",
        spec,
        "builder-1",
        "--by",
        "alice",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = reconix(&["builders", "revoke", "--spec", spec, "builder-1"]);
    assert_eq!(out.status.code(), Some(1));
    let agent = || {
        let out = reconix(&["builders", "list", "--spec", spec, "--output", "json"]);
        let builders: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        builders
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == "builder-1")
            .unwrap()
            .clone()
    };
    let revoked = agent();
    assert!(revoked["revoked_at"].is_number(), "{revoked}");
    assert_eq!(
        (&revoked["state"], &revoked["revoked_by"]),
        (&"revoked".into(), &"alice".into())
    );
    let table = String::from_utf8_lossy(&reconix(&["builders", "list", "--spec", spec]).stdout)
        .into_owned();
    assert!(
        table.contains("revoked by alice") && table.contains("reconix builders admit builder-1"),
        "{table}"
    );

    // Admitted: recorded with who and when; it waits for a new key.
    let out = reconix(&[
        "builders",
        "admit",
        "--spec",
        spec,
        "builder-1",
        "--by",
        "bob",
    ]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("new key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let admitted = agent();
    assert!(admitted["admitted_at"].is_number(), "{admitted}");
    assert_eq!(
        (
            &admitted["state"],
            &admitted["admitted_by"],
            &admitted["revoked_at"]
        ),
        (&"admitted".into(), &"bob".into(), &serde_json::Value::Null)
    );
    let out = reconix(&["builders", "admit", "--spec", spec, "builder-1"]);
    assert_eq!(out.status.code(), Some(1));
}
