//! Peers that are not proper agents are dropped quickly, and the listener keeps accepting.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reconix_agent::Error;
use russh::keys::{Algorithm, PrivateKey};
use russh::server::{self, Auth, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelId};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::common::{Coordinator, agent_config, spawn_agent};

#[tokio::test]
async fn raw_bytes_should_fail_the_handshake_quickly_and_the_listener_should_keep_accepting() {
    let coordinator = Coordinator::start().await;

    // Not SSH at all, then hang up.
    let started = Instant::now();
    let mut raw = TcpStream::connect(coordinator.addr()).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    raw.shutdown().await.unwrap();
    let result = coordinator.next().await;
    assert!(result.is_err(), "{result:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop(raw);

    // An SSH banner followed by binary garbage, connection kept open.
    let started = Instant::now();
    let mut raw = TcpStream::connect(coordinator.addr()).await.unwrap();
    raw.write_all(b"SSH-2.0-fake\r\n").await.unwrap();
    raw.write_all(&[0xff; 4096]).await.unwrap();
    let result = coordinator.next().await;
    assert!(result.is_err(), "{result:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // A real agent still enrols.
    let state = tempfile::tempdir().unwrap();
    let _agent = spawn_agent(agent_config(&coordinator, state.path()));
    let pending = coordinator.pending().await;
    assert_eq!(pending.hello().name.as_str(), "builder-1");
    drop(raw);
}

#[tokio::test]
async fn a_silent_peer_should_not_block_other_agents() {
    let coordinator = Coordinator::start().await;
    // Connects and says nothing: its handshake times out in the background.
    let _silent = TcpStream::connect(coordinator.addr()).await.unwrap();
    let state = tempfile::tempdir().unwrap();
    let _agent = spawn_agent(agent_config(&coordinator, state.path()));
    let started = Instant::now();
    let pending = coordinator.pending().await;
    assert_eq!(pending.hello().name.as_str(), "builder-1");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// An SSH server that accepts anyone and answers the control subsystem with `payload`.
struct FakeAgent {
    payload: Vec<u8>,
}

impl server::Handler for FakeAgent {
    type Error = russh::Error;

    async fn auth_publickey(
        &mut self,
        _user: &str,
        _key: server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        _channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply.accept().await;
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        session.data(channel, self.payload.clone())?;
        Ok(())
    }
}

async fn fake_agent_result(
    coordinator: &Coordinator,
    payload: Vec<u8>,
) -> reconix_agent::Result<()> {
    let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap();
    let config = Arc::new(server::Config {
        keys: vec![key],
        ..server::Config::default()
    });
    let tcp = TcpStream::connect(coordinator.addr()).await.unwrap();
    let session = server::run_stream(config, tcp, FakeAgent { payload })
        .await
        .unwrap();
    let serving = tokio::spawn(session);
    let result = coordinator.next().await.map(drop);
    serving.abort();
    result
}

#[tokio::test]
async fn an_invalid_hello_should_fail_the_handshake() {
    let coordinator = Coordinator::start().await;
    let ok = r#""version":1,"name":"b1","systems":["x86_64-linux"],"features":[],"max_jobs":1,"token":null"#;
    let cases: Vec<Vec<u8>> = vec![
        b"this is not json\n".to_vec(),
        b"{\"type\":\"heartbeat\",\"running\":0}\n".to_vec(),
        format!("{{\"type\":\"hello\",{}}}\n", ok.replace("b1", "b 1")).into_bytes(),
        format!(
            "{{\"type\":\"hello\",{}}}\n",
            ok.replace("\"max_jobs\":1,", "")
        )
        .into_bytes(),
        vec![b'x'; 70 * 1024],
    ];
    for payload in cases {
        let shown = String::from_utf8_lossy(&payload[..payload.len().min(60)]).into_owned();
        let result = fake_agent_result(&coordinator, payload).await;
        assert!(
            matches!(result, Err(Error::Protocol { .. })),
            "{shown}: {result:?}"
        );
    }
    // And the well-formed one passes, proving the fake is otherwise acceptable.
    let good = format!("{{\"type\":\"hello\",{ok}}}\n").into_bytes();
    fake_agent_result(&coordinator, good).await.unwrap();
}
