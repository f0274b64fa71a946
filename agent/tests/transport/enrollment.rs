//! The agent binary enrols: its hello carries the token, name and systems; SIGTERM exits 0.

use std::time::Duration;

use reconix_agent::coordinator::token_matches;

use crate::common::{Coordinator, DEADLINE};

#[tokio::test]
async fn agent_binary_should_enrol_with_its_token_and_exit_zero_on_sigterm() {
    let coordinator = Coordinator::start().await;
    let state = tempfile::tempdir().unwrap();
    let token_file = state.path().join("token");
    std::fs::write(&token_file, "enrol-me-please\n").unwrap();

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_reconix-agent"))
        .args(["--coordinator", &coordinator.addr()])
        .arg("--state-dir")
        .arg(state.path().join("state"))
        .arg("--token-file")
        .arg(&token_file)
        .args([
            "--name",
            "bin-builder",
            "--systems",
            "x86_64-linux,aarch64-linux",
        ])
        .args([
            "--features",
            "kvm,big-parallel",
            "--max-jobs",
            "3",
            "--no-jitter",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let pending = coordinator.pending().await;
    let hello = pending.hello();
    assert_eq!(hello.name.as_str(), "bin-builder");
    let systems: Vec<&str> = hello.systems.iter().map(|s| s.as_str()).collect();
    assert_eq!(systems, ["x86_64-linux", "aarch64-linux"]);
    assert_eq!(hello.features, ["kvm", "big-parallel"]);
    assert_eq!(hello.max_jobs, 3);
    let token = hello.token.as_ref().expect("the hello has a token");
    assert!(token_matches("enrol-me-please", token.expose()));
    assert!(!token_matches("enrol-me-pleasE", token.expose()));
    assert!(!format!("{pending:?}").contains("enrol-me-please"));

    // The key is persistent, 0600, and the fingerprint printed on start is the one presented.
    let key_file = state.path().join("state/agent_ed25519");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    // TOFU: the coordinator's key is now pinned.
    let pinned = std::fs::read_to_string(state.path().join("state/coordinator.pub")).unwrap();
    assert!(pinned.starts_with("ssh-ed25519 "));

    let conn = pending.accept();
    assert_eq!(conn.name().as_str(), "bin-builder");

    let pid = child.id().unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
    let mut stdout = String::new();
    tokio::io::AsyncReadExt::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout)
        .await
        .unwrap();
    assert!(
        stdout.contains(&format!("key {}", conn.fingerprint())),
        "stdout: {stdout}"
    );
    // The agent said goodbye: the coordinator sees the connection end.
    tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .unwrap();
}

#[tokio::test]
async fn agent_without_token_file_should_send_a_null_token() {
    let coordinator = Coordinator::start().await;
    let state = tempfile::tempdir().unwrap();
    let mut config = crate::common::agent_config(&coordinator, state.path());
    config.token_file = Some(state.path().join("does-not-exist"));
    let _agent = crate::common::spawn_agent(config);
    let pending = coordinator.pending().await;
    assert!(pending.hello().token.is_none());
    assert_eq!(pending.hello().name.as_str(), "builder-1");
}
