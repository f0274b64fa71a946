//! The enrolment port under silent connections: they hold no handshake slot, the newest
//! connection displaces the oldest silent one of its source, and an agent that spoke is
//! displaced only after every silent one, so a flood from the agent's own address cannot keep
//! it out.

use std::io::Read;
use std::net::TcpStream as StdStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reconix_agent::coordinator::Limits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{Coordinator, DEADLINE, agent_config, spawn_agent};

fn limits(per_source: usize, handshake_timeout: Duration) -> Limits {
    Limits {
        handshake_timeout,
        max_pending_per_source: per_source,
        max_pending: 256,
        max_handshakes: 1,
    }
}

/// Waits until the coordinator closes `stream` (EOF or reset), failing after [`DEADLINE`].
async fn closed_by_coordinator(stream: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    let closed = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(DEADLINE, closed)
        .await
        .expect("the coordinator did not close the connection");
}

/// Returns whether the coordinator has closed `stream`, without waiting (data it sent is
/// drained).
fn is_closed(stream: &TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match stream.try_read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// Connects and sends an SSH banner, then stalls; returns once the coordinator answered (so it
/// knows the connection spoke).
async fn talker(addr: &str) -> TcpStream {
    let mut talker = TcpStream::connect(addr).await.unwrap();
    talker.write_all(b"SSH-2.0-stalling\r\n").await.unwrap();
    let mut banner = [0u8; 8];
    tokio::time::timeout(DEADLINE, talker.read_exact(&mut banner))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&banner, b"SSH-2.0-");
    talker
}

#[tokio::test]
async fn the_newest_connection_should_displace_the_oldest_silent_one_of_its_source() {
    let coordinator = Coordinator::with_limits(Limits {
        max_handshakes: 8,
        ..limits(3, Duration::from_secs(60))
    })
    .await;
    let addr = coordinator.addr();

    // A peer that spoke (and then stalls mid-handshake).
    let mut talker = talker(&addr).await;

    let mut a = TcpStream::connect(&addr).await.unwrap();
    let mut b = TcpStream::connect(&addr).await.unwrap();
    // The source is full (talker, a, b): c displaces a, the oldest silent one, not the talker.
    let mut c = TcpStream::connect(&addr).await.unwrap();
    closed_by_coordinator(&mut a).await;
    assert!(!is_closed(&b), "b went before it was its turn");
    // Then b, then c: the talker outlives every silent connection.
    let _d = TcpStream::connect(&addr).await.unwrap();
    closed_by_coordinator(&mut b).await;
    let _e = TcpStream::connect(&addr).await.unwrap();
    closed_by_coordinator(&mut c).await;
    assert!(!is_closed(&talker), "the peer that spoke was displaced");
    // Two more that speak displace d and e; with nobody silent left, the oldest goes: the
    // first talker.
    let _f = self::talker(&addr).await;
    let _g = self::talker(&addr).await;
    assert!(
        !is_closed(&talker),
        "the first talker went before the silent ones"
    );
    let _h = TcpStream::connect(&addr).await.unwrap();
    closed_by_coordinator(&mut talker).await;
}

#[tokio::test]
async fn silent_connections_should_hold_no_handshake_slot_and_be_dropped_at_the_deadline() {
    let timeout = Duration::from_secs(3);
    let coordinator = Coordinator::with_limits(limits(16, timeout)).await;
    let mut silent = Vec::new();
    for _ in 0..8 {
        silent.push((
            Instant::now(),
            TcpStream::connect(coordinator.addr()).await.unwrap(),
        ));
    }
    // One handshake slot, eight silent connections: the agent still gets in before any of
    // them times out.
    let state = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let _agent = spawn_agent(agent_config(&coordinator, state.path()));
    let pending = coordinator.next_agent().await;
    let waited = started.elapsed();
    assert!(
        waited < timeout,
        "the agent waited {waited:?}, as if silent peers held the slot"
    );
    drop(pending);
    for (opened, stream) in &mut silent {
        closed_by_coordinator(stream).await;
        let lived = opened.elapsed();
        assert!(
            lived >= timeout - Duration::from_millis(50),
            "closed after {lived:?}, before the {timeout:?} deadline"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_should_get_in_while_silent_connections_flood_its_own_address() {
    let coordinator = Coordinator::with_limits(Limits {
        max_pending_per_source: 4,
        ..Limits::default()
    })
    .await;
    let addr = coordinator.addr();
    // 100 threads keep a silent connection each open, opening another whenever the
    // coordinator drops theirs.
    let stop = Arc::new(AtomicBool::new(false));
    let dropped = Arc::new(AtomicUsize::new(0));
    let flood: Vec<_> = (0..100)
        .map(|_| {
            let (addr, stop, dropped) = (addr.clone(), Arc::clone(&stop), Arc::clone(&dropped));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut s) = StdStream::connect(&addr) else {
                        continue;
                    };
                    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
                    let mut buf = [0u8; 16];
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) => {
                                dropped.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            Err(e)
                                if e.kind() == std::io::ErrorKind::WouldBlock
                                    || e.kind() == std::io::ErrorKind::TimedOut =>
                            {
                                if stop.load(Ordering::Relaxed) {
                                    break;
                                }
                            }
                            // Whatever the coordinator says, the peer stays silent.
                            Ok(n) if n > 0 => {}
                            Ok(_) | Err(_) => {
                                dropped.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    // The flood is on: connections are being displaced.
    crate::common::eventually("the flood to fill the source", async || {
        dropped.load(Ordering::Relaxed) > 200
    })
    .await;

    let state = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let _agent = spawn_agent(agent_config(&coordinator, state.path()));
    let pending = coordinator.next_agent().await;
    let waited = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for t in flood {
        t.join().unwrap();
    }
    assert_eq!(pending.hello().name.as_str(), "builder-1");
    eprintln!(
        "agent handshake done {waited:?} after its start; {} silent connections dropped",
        dropped.load(Ordering::Relaxed)
    );
}

#[tokio::test]
async fn a_peer_that_stalls_mid_handshake_should_be_cut_at_the_deadline() {
    let timeout = Duration::from_secs(1);
    let coordinator = Coordinator::with_limits(Limits {
        max_handshakes: 8,
        ..limits(16, timeout)
    })
    .await;
    let opened = Instant::now();
    // The SSH session already runs on its own task here: giving up must close the socket.
    let mut stalled = talker(&coordinator.addr()).await;
    closed_by_coordinator(&mut stalled).await;
    assert!(opened.elapsed() >= timeout, "{:?}", opened.elapsed());
    assert!(matches!(
        coordinator.next().await,
        Err(reconix_agent::Error::HandshakeTimeout { .. })
    ));
}
