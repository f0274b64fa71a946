//! The control channel carries heartbeats.

use std::time::Duration;

use crate::common::{Coordinator, DEADLINE, agent_config, spawn_agent};

#[tokio::test]
async fn heartbeats_should_arrive_at_the_configured_interval() {
    let coordinator = Coordinator::start().await;
    let state = tempfile::tempdir().unwrap();
    let mut config = agent_config(&coordinator, state.path());
    config.heartbeat = Duration::from_millis(200);
    let _agent = spawn_agent(config);
    let conn = coordinator.pending().await.accept();
    let mut beats = conn.heartbeats();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        tokio::time::timeout(DEADLINE, beats.changed())
            .await
            .unwrap()
            .unwrap();
        let beat = (*beats.borrow_and_update()).expect("a heartbeat");
        seen.push(beat);
    }
    assert!(seen.iter().all(|b| b.running == 0));
    assert!(seen.windows(2).all(|w| w[0].at < w[1].at));
}
