//! The agent grants nothing but the control subsystem and the exact serve command.

use russh::ChannelMsg;
use russh::client::Msg;

use crate::common::{Coordinator, DEADLINE, agent_config, spawn_agent};

/// Returns whether the agent granted the request just sent on `channel`.
async fn granted(channel: &mut russh::Channel<Msg>) -> bool {
    let reply = async {
        loop {
            match channel.wait().await {
                Some(ChannelMsg::Success) => return true,
                Some(ChannelMsg::Failure) | None => return false,
                Some(_) => {}
            }
        }
    };
    tokio::time::timeout(DEADLINE, reply).await.unwrap()
}

#[tokio::test]
async fn agent_should_refuse_shells_other_commands_and_subsystems() {
    let coordinator = Coordinator::start().await;
    let state = tempfile::tempdir().unwrap();
    let _agent = spawn_agent(agent_config(&coordinator, state.path()));
    let conn = coordinator.pending().await.accept();

    let mut ch = conn.open_session().await.unwrap();
    ch.exec(true, "sh -c id").await.unwrap();
    assert!(!granted(&mut ch).await, "exec sh -c id was granted");
    for almost in [
        "nix-store --serve --write ",
        " nix-store --serve --write",
        "nix-store  --serve --write",
        "nix-store --serve",
        "nix-store --serve --write; id",
    ] {
        ch.exec(true, almost).await.unwrap();
        assert!(!granted(&mut ch).await, "exec {almost:?} was granted");
    }
    ch.request_shell(true).await.unwrap();
    assert!(!granted(&mut ch).await, "shell was granted");
    ch.request_pty(true, "xterm", 80, 24, 0, 0, &[])
        .await
        .unwrap();
    assert!(!granted(&mut ch).await, "pty was granted");
    ch.set_env(true, "LD_PRELOAD", "/tmp/x.so").await.unwrap();
    assert!(!granted(&mut ch).await, "env was granted");
    ch.request_subsystem(true, "sftp").await.unwrap();
    assert!(!granted(&mut ch).await, "sftp was granted");
    // A second control channel is refused as well.
    ch.request_subsystem(true, "reconix-agent").await.unwrap();
    assert!(
        !granted(&mut ch).await,
        "a second control channel was granted"
    );

    // The connection survives all that.
    assert!(!conn.is_closed());
    assert!(conn.open_session().await.is_ok());
}
