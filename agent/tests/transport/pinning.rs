//! The agent pins the coordinator's key: trust on first use, or a given fingerprint.

use reconix_agent::Error;
use reconix_agent::agent::COORDINATOR_PUB_FILE;
use reconix_agent::keys::parse_fingerprint;

use crate::common::{Coordinator, agent_config, spawn_agent};

#[tokio::test]
async fn agent_should_pin_the_first_coordinator_key_and_refuse_another() {
    let first = Coordinator::start().await;
    let state = tempfile::tempdir().unwrap();
    let agent = spawn_agent(agent_config(&first, state.path()));
    let pending = first.pending().await;
    assert_eq!(
        pending.agent_key_fingerprint().to_string(),
        agent.fingerprint
    );
    let pinned = std::fs::read_to_string(state.path().join(COORDINATOR_PUB_FILE)).unwrap();
    let pinned = russh::keys::PublicKey::from_openssh(pinned.trim()).unwrap();
    assert_eq!(
        reconix_agent::keys::fingerprint(&pinned),
        first.key.fingerprint()
    );
    drop(pending);
    drop(agent);

    // Same agent state, a coordinator with a different key: authentication fails.
    let second = Coordinator::start().await;
    assert_ne!(second.key.fingerprint(), first.key.fingerprint());
    let _agent = spawn_agent(agent_config(&second, state.path()));
    let result = second.next().await;
    assert!(
        matches!(result, Err(Error::AuthRejected { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn agent_with_a_given_coordinator_key_should_refuse_any_other_even_first() {
    let coordinator = Coordinator::start().await;
    let other = tempfile::tempdir().unwrap();
    let other_key =
        reconix_agent::coordinator::CoordinatorKey::load_or_create(other.path()).unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut config = agent_config(&coordinator, state.path());
    config.coordinator_key = Some(parse_fingerprint(&other_key.fingerprint().to_string()).unwrap());
    let _agent = spawn_agent(config);
    let result = coordinator.next().await;
    assert!(
        matches!(result, Err(Error::AuthRejected { .. })),
        "{result:?}"
    );
    assert!(!state.path().join(COORDINATOR_PUB_FILE).exists());
}

#[tokio::test]
async fn agent_with_the_right_coordinator_key_should_enrol() {
    let coordinator = Coordinator::start().await;
    let state = tempfile::tempdir().unwrap();
    let mut config = agent_config(&coordinator, state.path());
    config.coordinator_key = Some(coordinator.key.fingerprint());
    let _agent = spawn_agent(config);
    coordinator.pending().await;
    assert!(!state.path().join(COORDINATOR_PUB_FILE).exists());
}
