//! The agent dials again after any disconnect.

use reconix_agent::protocol::Refusal;

use crate::common::{Coordinator, agent_config, spawn_agent};

#[tokio::test]
async fn agent_should_reconnect_after_the_coordinator_disconnects() {
    let coordinator = Coordinator::start().await;
    let state = tempfile::tempdir().unwrap();
    let agent = spawn_agent(agent_config(&coordinator, state.path()));
    let conn = coordinator.pending().await.accept();
    conn.disconnect().await;
    assert!(conn.is_closed());

    let again = coordinator.pending().await;
    assert_eq!(again.agent_key_fingerprint().to_string(), agent.fingerprint);

    // A rejected agent comes back too (with backoff), and so does one whose Pending is dropped.
    again.reject(Refusal::BadToken, "not today");
    let third = coordinator.pending().await;
    drop(third);
    coordinator.pending().await;
}

#[tokio::test]
async fn agent_should_keep_dialing_until_the_coordinator_is_up() {
    // Reserve a port, release it, start the agent against it, then bind it.
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let dir = tempfile::tempdir().unwrap();
    let key = reconix_agent::coordinator::CoordinatorKey::load_or_create(dir.path()).unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut config = reconix_agent::agent::AgentConfig::new(
        addr.to_string(),
        state.path(),
        reconix_spec::BuilderName::new("late").unwrap(),
    );
    config.backoff.jitter = false;
    config.backoff.min = std::time::Duration::from_millis(50);
    config.backoff.max = std::time::Duration::from_millis(200);
    let _agent = spawn_agent(config);
    let listener = reconix_agent::coordinator::Listener::bind(addr, &key, Default::default())
        .await
        .unwrap();
    let pending = tokio::time::timeout(crate::common::DEADLINE, listener.accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pending.hello().name.as_str(), "late");
}
