//! Remote builders enrolling with the real daemon and the real `reconix-agent`: a token enrols
//! an agent (heartbeats recorded), a wrong token is refused and nothing is recorded, later
//! connections need the key alone, a revoked agent is disconnected and refused until it enrols
//! again with a token.

use std::path::Path;
use std::process::Command;

use anyhow::{Result, ensure};
use reconix_e2e::{
    AgentProcess, DEADLINE, DaemonConfig, TestDaemon, enroll_addr, reconix_bin, run,
};
use serde_json::Value;

fn start_agent(coordinator: &str, dir: &Path, name: &str) -> Result<AgentProcess> {
    AgentProcess::start(coordinator, dir, name, &[])
}

fn builders(d: &TestDaemon) -> Result<Vec<Value>> {
    let out = run(Command::new(reconix_bin()?)
        .args(["builders", "list", "--output", "json", "--spec"])
        .arg(d.spec_path()))?;
    Ok(serde_json::from_str::<Value>(&out)?
        .as_array()
        .cloned()
        .unwrap_or_default())
}

fn builder(d: &TestDaemon, name: &str) -> Result<Option<Value>> {
    Ok(builders(d)?.into_iter().find(|b| b["name"] == name))
}

#[test]
fn agents_should_enrol_with_a_token_and_be_refused_when_revoked() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let token = tmp.path().join("enrollment-token");
    std::fs::write(&token, "s3cret-enrollment-token\n")?;
    let d = TestDaemon::start(&DaemonConfig {
        spec: format!(
            "state-dir: {{state_dir}}\nbuilders:\n  enrollment:\n    listen: 127.0.0.1:{{enroll_port}}\n    token-file: {}\n",
            token.display()
        ),
    })?;
    let coordinator = enroll_addr(&d)?;

    // A wrong token: refused, nothing recorded.
    let bad_dir = tmp.path().join("bad");
    std::fs::create_dir_all(&bad_dir)?;
    std::fs::write(bad_dir.join("token"), "wrong")?;
    let bad = start_agent(&coordinator, &bad_dir, "intruder")?;
    d.wait_for("the wrong token to be refused", DEADLINE, |d| {
        Ok(d.log().contains("agent refused").then_some(()))
    })?;
    ensure!(
        builder(&d, "intruder")?.is_none(),
        "a refused agent was recorded"
    );
    drop(bad);

    // The right token: enrolled, connected, heartbeats recorded.
    let a1_dir = tmp.path().join("a1");
    std::fs::create_dir_all(&a1_dir)?;
    std::fs::write(a1_dir.join("token"), "s3cret-enrollment-token")?;
    let a1 = start_agent(&coordinator, &a1_dir, "a1")?;
    let row = d.wait_for("a1 to enrol and send heartbeats", DEADLINE, |d| {
        Ok(builder(d, "a1")?
            .filter(|b| !b["connected_at"].is_null() && !b["last_heartbeat_at"].is_null()))
    })?;
    ensure!(row["revoked_at"].is_null(), "{row}");
    let fingerprint = row["key_fingerprint"].clone();

    // Later connections need the key alone.
    drop(a1);
    d.wait_for("a1 to be seen disconnected", DEADLINE, |d| {
        Ok(builder(d, "a1")?.filter(|b| b["connected_at"].is_null()))
    })?;
    std::fs::remove_file(a1_dir.join("token"))?;
    let a1 = start_agent(&coordinator, &a1_dir, "a1")?;
    d.wait_for("a1 to reconnect by key", DEADLINE, |d| {
        Ok(builder(d, "a1")?.filter(|b| !b["connected_at"].is_null()))
    })?;
    ensure!(builder(&d, "a1")?.is_some_and(|b| b["key_fingerprint"] == fingerprint));

    // Revoked: disconnected at its next heartbeat, and refused while it has no token.
    let refusals_before = d.log().matches("agent refused").count();
    let out = run(Command::new(reconix_bin()?)
        .args(["builders", "revoke", "--spec"])
        .arg(d.spec_path())
        .arg("a1"))?;
    ensure!(out.contains("revoked a1"), "{out}");
    d.wait_for(
        "the revoked agent to be refused on reconnect",
        DEADLINE,
        |d| Ok((d.log().matches("agent refused").count() > refusals_before).then_some(())),
    )?;
    ensure!(
        builder(&d, "a1")?
            .is_some_and(|b| b["connected_at"].is_null() && !b["revoked_at"].is_null()),
        "a revoked agent is still connected"
    );

    // With a token again, it enrols again.
    std::fs::write(a1_dir.join("token"), "s3cret-enrollment-token")?;
    d.wait_for("a1 to enrol again", DEADLINE, |d| {
        Ok(builder(d, "a1")?.filter(|b| b["revoked_at"].is_null() && !b["connected_at"].is_null()))
    })?;
    drop(a1);
    Ok(())
}
