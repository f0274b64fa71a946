//! Serve channels over SSH to a real `nix-store --serve --write` on a separate chroot store.

use std::time::{Duration, Instant};

use reconix_agent::Error;
use reconix_agent::coordinator::{AgentConn, ServeChannel, ServeReader, ServeWriter};
use reconix_nixcli::serve::ServeClient;
use tokio::io::AsyncReadExt;

use crate::common::{
    Coordinator, DEADLINE, agent_config, chroot_store, eventually, require_nix, spawn_agent,
};

/// A path that is valid in no store.
const ABSENT: &str = "/nix/store/00000000000000000000000000000000-absent";

async fn connect(
    conn: &AgentConn,
) -> (
    ServeClient<ServeReader, ServeWriter>,
    ServeReader,
    reconix_agent::coordinator::ServeExit,
) {
    let ServeChannel {
        reader,
        writer,
        log,
        exit,
        ..
    } = tokio::time::timeout(DEADLINE, conn.open_serve())
        .await
        .unwrap()
        .unwrap();
    let client = tokio::time::timeout(DEADLINE, ServeClient::handshake(reader, writer))
        .await
        .unwrap()
        .unwrap();
    (client, log, exit)
}

/// An agent with `max_jobs` serve slots on a chroot store that no process opened yet, enrolled
/// with a coordinator of its own; what the test needs is `conn`, the rest is kept alive.
struct ChrootAgent {
    conn: AgentConn,
    _agent: crate::common::RunningAgent,
    _state: tempfile::TempDir,
    _coordinator: Coordinator,
}

/// Reads a serve channel's log to its end (within [`DEADLINE`]).
async fn read_log(log: &mut ServeReader) -> String {
    let mut text = String::new();
    tokio::time::timeout(DEADLINE, log.read_to_string(&mut text))
        .await
        .unwrap()
        .unwrap();
    text
}

async fn chroot_agent(max_jobs: u32) -> ChrootAgent {
    let coordinator = Coordinator::start().await;
    let state = tempfile::tempdir().unwrap();
    let mut config = agent_config(&coordinator, state.path());
    config.store = Some(chroot_store(state.path()).display().to_string());
    config.max_jobs = max_jobs;
    let agent = spawn_agent(config);
    let conn = coordinator.pending().await.accept();
    ChrootAgent {
        conn,
        _agent: agent,
        _state: state,
        _coordinator: coordinator,
    }
}

#[tokio::test]
async fn serve_channels_should_speak_the_serve_protocol_to_a_separate_store() {
    require_nix();
    let coordinator = Coordinator::start().await;
    let state = tempfile::tempdir().unwrap();
    let store = chroot_store(state.path());
    let mut config = agent_config(&coordinator, state.path());
    config.store = Some(store.display().to_string());
    config.max_jobs = 2;
    config.heartbeat = Duration::from_millis(100);
    let _agent = spawn_agent(config);
    let conn = coordinator.pending().await.accept();
    assert_eq!(conn.hello().max_jobs, 2);

    let (mut first, _log1, _exit1) = connect(&conn).await;
    assert_eq!(first.server_version() >> 8, 2);
    let valid = first
        .query_valid_paths(&[ABSENT], false, false)
        .await
        .unwrap();
    assert!(valid.is_empty(), "{valid:?}");
    // The chroot store was created by the agent's nix-store, not the machine's store.
    assert!(
        store.join("nix/var/nix/db").exists(),
        "no chroot store at {}",
        store.display()
    );

    // Two channels at once on the same connection.
    let (mut second, _log2, _exit2) = connect(&conn).await;
    let (a, b) = tokio::join!(
        first.query_valid_paths(&[ABSENT], false, false),
        second.query_valid_paths(&[ABSENT], false, false),
    );
    assert!(a.unwrap().is_empty());
    assert!(b.unwrap().is_empty());

    // The heartbeat counts them.
    let mut beats = conn.heartbeats();
    eventually("a heartbeat with two running", async || {
        let _ = tokio::time::timeout(Duration::from_millis(500), beats.changed()).await;
        beats.borrow_and_update().is_some_and(|b| b.running == 2)
    })
    .await;

    // A third is beyond max-jobs.
    let third = conn.open_serve().await;
    assert!(matches!(third, Err(Error::Refused { .. })), "{third:?}");

    // Closing stdin ends nix-store with status 0, which frees a slot.
    let (reader, mut writer) = second.into_inner();
    tokio::io::AsyncWriteExt::shutdown(&mut writer)
        .await
        .unwrap();
    let mut exit2 = _exit2;
    let status = tokio::time::timeout(DEADLINE, exit2.wait()).await.unwrap();
    assert_eq!(status, Some(0));
    drop((reader, writer, _log2));
    eventually("a free slot", async || conn.open_serve().await.is_ok()).await;

    // Dropping a channel kills its process and frees its slot as well.
    drop((first, _log1, _exit1));
    eventually("two free slots", async || {
        let a = conn.open_serve().await;
        let b = conn.open_serve().await;
        a.is_ok() && b.is_ok()
    })
    .await;
}

#[tokio::test]
async fn the_first_channels_of_a_new_agent_should_all_open_its_fresh_store() {
    require_nix();
    // Nix 2.8 creating one store from two processes at once fails one of them; a new agent
    // gets several builds at once. Each round is a new agent with a store never opened: its
    // three serve processes are started first, then all three are spoken to at once.
    for round in 0..5 {
        let agent = chroot_agent(3).await;
        let conn = &agent.conn;
        let (a, b, c) = tokio::join!(conn.open_serve(), conn.open_serve(), conn.open_serve());
        let shake = |channel: Result<ServeChannel, Error>| async move {
            let ServeChannel {
                reader,
                writer,
                log,
                exit,
                ..
            } = channel.unwrap();
            let handshake =
                tokio::time::timeout(DEADLINE, ServeClient::handshake(reader, writer)).await;
            (handshake, log, exit)
        };
        let results = tokio::join!(shake(a), shake(b), shake(c));
        for (handshake, mut log, _exit) in [results.0, results.1, results.2] {
            let mut client = match handshake {
                Ok(Ok(client)) => client,
                other => {
                    let mut text = String::new();
                    let _ = tokio::time::timeout(DEADLINE, log.read_to_string(&mut text)).await;
                    panic!("round {round}: {:?}; log: {text}", other.map(|r| r.err()));
                }
            };
            let valid = client.query_valid_paths(&[ABSENT], false, false).await;
            assert!(
                valid.as_ref().is_ok_and(Vec::is_empty),
                "round {round}: {valid:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_slot_should_be_free_once_its_channel_s_log_has_ended() {
    require_nix();
    let agent = chroot_agent(1).await;
    let conn = &agent.conn;
    // What the builds loop does: a build ends, its log is read to the end, and the next build
    // is sent to the same agent at once. Each time the one slot must be free already (no
    // `eventually`: the log's end is the signal).
    let mut channel = conn.open_serve().await.unwrap();
    for round in 0..5 {
        let ServeChannel {
            reader,
            writer,
            mut log,
            ..
        } = channel;
        let client = tokio::time::timeout(DEADLINE, ServeClient::handshake(reader, writer))
            .await
            .unwrap()
            .unwrap();
        let (_reader, mut writer) = client.into_inner();
        tokio::io::AsyncWriteExt::shutdown(&mut writer)
            .await
            .unwrap();
        read_log(&mut log).await;
        channel = match conn.open_serve().await {
            Ok(next) => next,
            Err(err) => panic!("round {round}: the slot is not free once the log ended: {err}"),
        };
    }
}

#[tokio::test]
async fn serve_stderr_should_arrive_as_the_log() {
    require_nix();
    let agent = chroot_agent(1).await;
    let conn = &agent.conn;

    // Not the serve magic: nix-store complains on stderr and exits non-zero.
    let ServeChannel {
        mut reader,
        mut writer,
        mut log,
        mut exit,
        ..
    } = conn.open_serve().await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut writer, &1u64.to_le_bytes())
        .await
        .unwrap();
    let text = read_log(&mut log).await;
    assert!(text.contains("protocol mismatch"), "log: {text:?}");
    let mut out = Vec::new();
    tokio::time::timeout(DEADLINE, reader.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let status = tokio::time::timeout(DEADLINE, exit.wait()).await.unwrap();
    assert_eq!(status, Some(1), "log: {text:?}");
}

#[tokio::test]
async fn serve_setup_time_should_be_measured_on_reused_and_fresh_connections() {
    require_nix();
    let coordinator = Coordinator::start().await;
    let state = tempfile::tempdir().unwrap();
    let mut config = agent_config(&coordinator, state.path());
    config.store = Some(chroot_store(state.path()).display().to_string());
    // Enough slots that no round waits for the previous channel's slot to be released.
    config.max_jobs = 16;
    let agent = spawn_agent(config.clone());
    let conn = coordinator.pending().await.accept();
    // Warm up: creates the chroot store.
    drop(connect(&conn).await);

    const N: u32 = 10;
    let mut reused = Duration::ZERO;
    for _ in 0..N {
        let started = Instant::now();
        let (mut client, _log, _exit) = connect(&conn).await;
        client
            .query_valid_paths(&[ABSENT], false, false)
            .await
            .unwrap();
        reused += started.elapsed();
        drop(client);
    }
    drop(conn);
    drop(agent);

    let mut fresh = Duration::ZERO;
    for _ in 0..3 {
        let started = Instant::now();
        let agent = spawn_agent(config.clone());
        let conn = coordinator.pending().await.accept();
        let (mut client, _log, _exit) = connect(&conn).await;
        client
            .query_valid_paths(&[ABSENT], false, false)
            .await
            .unwrap();
        fresh += started.elapsed();
        drop(client);
        drop(conn);
        drop(agent);
    }
    println!(
        "serve setup (open channel + handshake + one query): reused connection {:?} avg over {N}, \
         fresh connection (dial + ssh + hello + same) {:?} avg over 3",
        reused / N,
        fresh / 3
    );
}
