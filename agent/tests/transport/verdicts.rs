//! The coordinator's verdict reaches the agent: a refusal slows its next attempts down (1×, 2×
//! the refusal delay), while a connection that merely dropped is dialled again at once.

use std::time::{Duration, Instant};

use reconix_agent::agent::Backoff;
use reconix_agent::protocol::Refusal;

use crate::common::{Coordinator, agent_config, spawn_agent};

#[tokio::test]
async fn a_refused_agent_should_back_off_and_a_dropped_one_should_come_back_at_once() {
    let coordinator = Coordinator::start().await;
    let state = tempfile::tempdir().unwrap();
    let refused = Duration::from_millis(800);
    let mut config = agent_config(&coordinator, state.path());
    config.refused_backoff = Backoff {
        min: refused,
        max: Duration::from_secs(60),
        jitter: false,
    };
    let _agent = spawn_agent(config);

    coordinator
        .pending()
        .await
        .reject(Refusal::KeyRevoked, "this agent's key was revoked");
    let first = Instant::now();
    let again = coordinator.pending().await;
    let waited = first.elapsed();
    assert!(waited >= refused, "dialled again after {waited:?}");

    again.reject(Refusal::KeyRevoked, "still revoked");
    let second = Instant::now();
    let third = coordinator.pending().await;
    let waited = second.elapsed();
    assert!(waited >= refused * 2, "dialled again after {waited:?}");

    // No verdict (the coordinator went away, say): back within the quick reconnect delay
    // (50 ms here), long before the next refusal delay (3.2 s) would have allowed.
    drop(third);
    let dropped = Instant::now();
    let fourth = coordinator.pending().await;
    let waited = dropped.elapsed();
    assert!(waited < refused * 4, "dialled again after {waited:?}");

    // Admitted, then disconnected: back at once too.
    let conn = fourth.accept();
    conn.disconnect().await;
    coordinator.pending().await;
}
