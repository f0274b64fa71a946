//! The coordinator's side: accept agents' TCP connections and drive them as an SSH client.
//!
//! [`Listener`] accepts connections and runs each handshake on its own task (so a silent or
//! slow peer cannot hold up the others): the SSH client handshake, publickey authentication as
//! [`SSH_USER`](crate::SSH_USER) with the [`CoordinatorKey`], the control channel and the
//! agent's `hello`, all within [`HANDSHAKE_TIMEOUT`]. [`Listener::accept`] returns the next
//! finished handshake, success or failure, as a [`Pending`] agent for the caller to
//! [accept](Pending::accept) (checking the fingerprint and the token against its enrolment
//! records) or [reject](Pending::reject).
//!
//! An [`AgentConn`] is one live connection: it opens a `nix-store --serve --write` exec channel
//! per build ([`AgentConn::open_serve`]) on the same SSH connection, and publishes the agent's
//! heartbeats.

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use reconix_spec::BuilderName;
use russh::client::{self, Msg};
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{Channel, ChannelMsg, ChannelReadHalf, Disconnect};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, Semaphore, mpsc, oneshot, watch};
use tokio_util::sync::{CancellationToken, DropGuard, WaitForCancellationFutureOwned};
use tracing::{debug, info, warn};

use crate::keys::{self, Fingerprint};
use crate::protocol::{Hello, MAX_LINE, Message};
use crate::{CONTROL_SUBSYSTEM, Error, Result, SERVE_COMMAND, SSH_USER};

/// The coordinator's key file in its state directory.
pub const COORDINATOR_KEY_FILE: &str = "coordinator_ed25519";

/// How long an agent has from the TCP accept to a complete `hello`.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long opening a serve channel may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes running at once; further connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 32;

/// Bytes of stdout or stderr buffered per serve channel before the channel waits for its
/// reader.
const PIPE_BUFFER: usize = 1 << 20;

/// The coordinator's persistent ed25519 key, with which it authenticates to agents.
#[derive(Clone)]
pub struct CoordinatorKey {
    key: Arc<PrivateKey>,
    fingerprint: Fingerprint,
}

impl std::fmt::Debug for CoordinatorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordinatorKey")
            .field("fingerprint", &self.fingerprint.to_string())
            .finish_non_exhaustive()
    }
}

impl CoordinatorKey {
    /// Loads `<state_dir>/coordinator_ed25519`, or creates it (mode 0600, OpenSSH format).
    ///
    /// # Errors
    /// When the directory or the file is unusable (see [`keys::load_or_create_key`]).
    pub fn load_or_create(state_dir: &Path) -> Result<Self> {
        let key = keys::load_or_create_key(&state_dir.join(COORDINATOR_KEY_FILE))?;
        Ok(Self::from_key(key))
    }

    fn from_key(key: PrivateKey) -> Self {
        let fingerprint = keys::fingerprint(key.public_key());
        Self {
            key: Arc::new(key),
            fingerprint,
        }
    }

    /// Returns the key's fingerprint, as agents pin it (`--coordinator-key`).
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// Returns the public key.
    pub fn public_key(&self) -> &PublicKey {
        self.key.public_key()
    }
}

/// Returns whether the presented enrolment token equals the expected one, comparing in time
/// independent of where they differ (only the length can leak).
pub fn token_matches(expected: &str, presented: &str) -> bool {
    expected.as_bytes().ct_eq(presented.as_bytes()).into()
}

/// The last heartbeat an agent sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// Serve channels (builds) running on the agent.
    pub running: u32,
    /// When it arrived.
    pub at: Instant,
}

/// Accepts agents' connections on a TCP address.
#[derive(Debug)]
pub struct Listener {
    local_addr: SocketAddr,
    results: Mutex<mpsc::Receiver<Result<Pending>>>,
    _stop: DropGuard,
}

impl Listener {
    /// Binds `addr` and starts accepting (handshakes run in the background; take their results
    /// with [`accept`](Self::accept)).
    ///
    /// # Errors
    /// [`Error::Bind`] when the address cannot be bound.
    pub async fn bind(addr: SocketAddr, key: &CoordinatorKey) -> Result<Self> {
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        Self::from_tcp(tcp, key)
    }

    /// Starts accepting on an already bound listener.
    ///
    /// # Errors
    /// When the listener's address cannot be read.
    pub fn from_tcp(tcp: TcpListener, key: &CoordinatorKey) -> Result<Self> {
        let local_addr = tcp.local_addr().map_err(Error::Accept)?;
        let (tx, rx) = mpsc::channel(MAX_HANDSHAKES);
        let stop = CancellationToken::new();
        let config = Arc::new(client_config());
        tokio::spawn(accept_loop(
            tcp,
            Arc::clone(&key.key),
            config,
            tx,
            stop.clone(),
        ));
        Ok(Self {
            local_addr,
            results: Mutex::new(rx),
            _stop: stop.drop_guard(),
        })
    }

    /// Returns the bound address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Returns the next finished handshake.
    ///
    /// # Errors
    /// The handshake's failure (not SSH, authentication refused, no or invalid `hello`, too
    /// slow): the connection is already dropped and the listener keeps accepting, so call
    /// `accept` again. [`Error::ListenerClosed`] when the listener has stopped.
    pub async fn accept(&self) -> Result<Pending> {
        let mut results = self.results.lock().await;
        results.recv().await.unwrap_or(Err(Error::ListenerClosed))
    }
}

async fn accept_loop(
    tcp: TcpListener,
    key: Arc<PrivateKey>,
    config: Arc<client::Config>,
    results: mpsc::Sender<Result<Pending>>,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let permit = tokio::select! {
            () = stop.cancelled() => return,
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            a = tcp.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                let (key, config, results) =
                    (Arc::clone(&key), Arc::clone(&config), results.clone());
                tokio::spawn(async move {
                    let result = handshake(stream, peer, config, key).await;
                    if let Err(error) = &result {
                        debug!(peer = %peer, error = %error, "agent handshake failed");
                    }
                    let _ = results.send(result).await;
                    drop(permit);
                });
            }
            Err(error) => {
                if results.send(Err(Error::Accept(error))).await.is_err() {
                    return;
                }
                // Out of file descriptors and the like: give the system a moment rather than
                // spinning on the same error.
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
}

fn client_config() -> client::Config {
    client::Config {
        // The agent closes connections that stay silent for 90 s; idle coordinators keep
        // them open with these, and learn of a dead agent after three unanswered ones.
        keepalive_interval: Some(Duration::from_secs(15)),
        keepalive_max: 3,
        inactivity_timeout: None,
        nodelay: true,
        // Closures cross this connection: AES-GCM (hardware-accelerated through aws-lc) moves
        // them about twice as fast as russh's default ChaCha20-Poly1305 on x86_64. The client's
        // order wins the negotiation; the others stay for agents that lack AES-GCM.
        preferred: russh::Preferred {
            cipher: std::borrow::Cow::Borrowed(&[
                russh::cipher::AES_256_GCM,
                russh::cipher::AES_128_GCM,
                russh::cipher::CHACHA20_POLY1305,
            ]),
            ..russh::Preferred::default()
        },
        ..client::Config::default()
    }
}

/// The SSH client handler: records the agent's host key and reports the end of the session.
struct ClientHandler {
    host_key: Option<oneshot::Sender<PublicKey>>,
    first_key: Option<PublicKey>,
    /// Cancels `AgentConn::closed` when the session task drops the handler, whatever ended it.
    _closed: DropGuard,
}

impl client::Handler for ClientHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            return Ok(false);
        };
        // Any key is accepted here: the caller checks it against enrolment. A re-key must
        // present the same key, though.
        if let Some(first) = &self.first_key {
            return Ok(first == key);
        }
        self.first_key = Some(key.clone());
        if let Some(tx) = self.host_key.take() {
            let _ = tx.send(key.clone());
        }
        Ok(true)
    }
}

async fn handshake(
    stream: TcpStream,
    peer: SocketAddr,
    config: Arc<client::Config>,
    key: Arc<PrivateKey>,
) -> Result<Pending> {
    let steps = async {
        let _ = stream.set_nodelay(true);
        let ssh_error = |source| Error::Ssh {
            peer: peer.to_string(),
            source,
        };
        let closed = CancellationToken::new();
        let (key_tx, mut key_rx) = oneshot::channel();
        let handler = ClientHandler {
            host_key: Some(key_tx),
            first_key: None,
            _closed: closed.clone().drop_guard(),
        };
        let mut handle = client::connect_stream(config, stream, handler)
            .await
            .map_err(ssh_error)?;
        let agent_key = key_rx.try_recv().map_err(|_| Error::NoHostKey { peer })?;
        let auth = handle
            .authenticate_publickey(SSH_USER, PrivateKeyWithHashAlg::new(key, None))
            .await
            .map_err(ssh_error)?;
        if !auth.success() {
            return Err(Error::AuthRejected { peer });
        }
        let control = handle.channel_open_session().await.map_err(ssh_error)?;
        control
            .request_subsystem(true, CONTROL_SUBSYSTEM)
            .await
            .map_err(ssh_error)?;
        let (mut rx, tx) = control.split();
        let mut lines = LineReader::default();
        wait_for_reply(
            &mut rx,
            &mut lines,
            &format!("subsystem {CONTROL_SUBSYSTEM:?}"),
            peer,
        )
        .await?;
        let protocol = |reason: String| Error::Protocol { peer, reason };
        let line = lines
            .next_line(&mut rx)
            .await
            .map_err(protocol)?
            .ok_or(Error::Closed)?;
        let hello = match Message::decode(&line).map_err(|e| protocol(error_chain(&e)))? {
            Message::Hello(hello) => hello,
            Message::Heartbeat { .. } => {
                return Err(protocol("expected hello, got heartbeat".to_owned()));
            }
        };
        let stop = CancellationToken::new();
        let (beats_tx, beats_rx) = watch::channel(None);
        let inner = Arc::new(Inner {
            handle,
            closed,
            stop: stop.clone(),
            heartbeats: beats_rx,
        });
        tokio::spawn(supervise(Arc::clone(&inner), rx, tx, lines, beats_tx, peer));
        let fingerprint = keys::fingerprint(&agent_key);
        Ok(Pending {
            peer,
            agent_key,
            fingerprint,
            hello,
            inner,
            guard: stop.drop_guard(),
        })
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, steps)
        .await
        .unwrap_or(Err(Error::HandshakeTimeout {
            peer,
            seconds: HANDSHAKE_TIMEOUT.as_secs(),
        }))
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// Waits for the answer to a channel request sent with `want_reply`; data that arrives first
/// is kept in `lines`, up to the bound of [`LineReader::push`].
async fn wait_for_reply(
    rx: &mut ChannelReadHalf,
    lines: &mut LineReader,
    what: &str,
    peer: SocketAddr,
) -> Result<()> {
    loop {
        match rx.wait().await {
            Some(ChannelMsg::Success) => return Ok(()),
            Some(ChannelMsg::Failure) => {
                return Err(Error::Refused {
                    what: what.to_owned(),
                });
            }
            Some(ChannelMsg::Data { data }) => {
                lines
                    .push(&data)
                    .map_err(|reason| Error::Protocol { peer, reason })?;
            }
            Some(ChannelMsg::Eof | ChannelMsg::Close) | None => return Err(Error::Closed),
            Some(_) => {}
        }
    }
}

/// Splits a channel's data into lines of at most [`MAX_LINE`] bytes.
#[derive(Debug, Default)]
struct LineReader {
    buf: Vec<u8>,
}

impl LineReader {
    /// Returns the next line without its newline, or `None` when the channel ends.
    async fn next_line(&mut self, rx: &mut ChannelReadHalf) -> Result<Option<Vec<u8>>, String> {
        loop {
            if let Some(line) = self.take_line()? {
                return Ok(Some(line));
            }
            match rx.wait().await {
                Some(ChannelMsg::Data { data }) => self.push(&data)?,
                Some(ChannelMsg::Eof | ChannelMsg::Close) | None => return Ok(None),
                Some(_) => {}
            }
        }
    }

    /// Appends received data, refusing to buffer more than two maximal lines. The peer may not
    /// be admitted yet: without the bound, data it sends before the subsystem reply (which
    /// `wait_for_reply` keeps) would pile up for the whole handshake timeout, on each of the
    /// concurrent handshakes. Lines are taken out before more data is read, so an honest peer
    /// never has more than a partial line and one SSH packet buffered.
    fn push(&mut self, data: &[u8]) -> Result<(), String> {
        if self.buf.len().saturating_add(data.len()) > 2 * (MAX_LINE + 1) {
            return Err(format!("more than {MAX_LINE} bytes without a newline"));
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// Removes and returns the first complete line, without its newline.
    fn take_line(&mut self) -> Result<Option<Vec<u8>>, String> {
        if let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=end).collect();
            line.pop();
            if line.len() > MAX_LINE {
                return Err(format!("line longer than {MAX_LINE} bytes"));
            }
            return Ok(Some(line));
        }
        if self.buf.len() > MAX_LINE {
            return Err(format!("line longer than {MAX_LINE} bytes"));
        }
        Ok(None)
    }
}

/// One SSH connection to an agent, shared by [`Pending`]/[`AgentConn`] and its supervisor.
struct Inner {
    handle: client::Handle<ClientHandler>,
    /// Cancelled when the SSH session has ended.
    closed: CancellationToken,
    /// Cancelled to ask the supervisor to disconnect.
    stop: CancellationToken,
    heartbeats: watch::Receiver<Option<Heartbeat>>,
}

/// Reads heartbeats off the control channel until the connection ends; disconnects when asked
/// to, when the control channel closes, or when the agent sends garbage.
async fn supervise(
    inner: Arc<Inner>,
    mut rx: ChannelReadHalf,
    _tx: russh::ChannelWriteHalf<Msg>,
    mut lines: LineReader,
    beats: watch::Sender<Option<Heartbeat>>,
    peer: SocketAddr,
) {
    let reason = loop {
        tokio::select! {
            () = inner.closed.cancelled() => return,
            () = inner.stop.cancelled() => break "disconnecting".to_owned(),
            line = lines.next_line(&mut rx) => match line {
                Ok(Some(line)) => match Message::decode(&line) {
                    Ok(Message::Heartbeat { running }) => {
                        beats.send_replace(Some(Heartbeat { running, at: Instant::now() }));
                    }
                    Ok(Message::Hello(_)) => break "a second hello".to_owned(),
                    Err(e) => break format!("invalid control message: {}", error_chain(&e)),
                },
                Ok(None) => break "the control channel closed".to_owned(),
                Err(e) => break e,
            },
        }
    };
    info!(peer = %peer, reason, "disconnecting from agent");
    let _ = inner
        .handle
        .disconnect(Disconnect::ByApplication, &reason, "")
        .await;
    // The agent answers by closing; do not wait for ever on one that does not.
    let _ = tokio::time::timeout(Duration::from_secs(5), inner.closed.cancelled()).await;
}

/// An agent that finished its handshake, awaiting the caller's decision.
///
/// Dropping it disconnects the agent, like [`reject`](Self::reject).
pub struct Pending {
    peer: SocketAddr,
    agent_key: PublicKey,
    fingerprint: Fingerprint,
    hello: Hello,
    inner: Arc<Inner>,
    guard: DropGuard,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("peer", &self.peer)
            .field("fingerprint", &self.fingerprint.to_string())
            .field("hello", &self.hello)
            .finish_non_exhaustive()
    }
}

impl Pending {
    /// Returns the agent's remote address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Returns the fingerprint of the agent's host key, its identity.
    pub fn agent_key_fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// Returns the agent's host key.
    pub fn agent_key(&self) -> &PublicKey {
        &self.agent_key
    }

    /// Returns the agent's `hello`.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// Admits the agent: the connection becomes an [`AgentConn`].
    pub fn accept(self) -> AgentConn {
        AgentConn {
            peer: self.peer,
            agent_key: self.agent_key,
            fingerprint: self.fingerprint,
            hello: self.hello,
            inner: self.inner,
            _guard: self.guard,
        }
    }

    /// Refuses the agent: disconnects with `reason` (the agent logs it) and waits, briefly,
    /// for the connection to close.
    pub async fn reject(self, reason: &str) {
        warn!(peer = %self.peer, fingerprint = %self.fingerprint, reason, "rejecting agent");
        let _ = self
            .inner
            .handle
            .disconnect(Disconnect::ByApplication, reason, "")
            .await;
        drop(self.guard);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.inner.closed.cancelled()).await;
    }
}

/// A live, admitted connection to an agent. Dropping it disconnects.
pub struct AgentConn {
    peer: SocketAddr,
    agent_key: PublicKey,
    fingerprint: Fingerprint,
    hello: Hello,
    inner: Arc<Inner>,
    _guard: DropGuard,
}

impl std::fmt::Debug for AgentConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConn")
            .field("name", &self.hello.name)
            .field("peer", &self.peer)
            .field("fingerprint", &self.fingerprint.to_string())
            .finish_non_exhaustive()
    }
}

impl AgentConn {
    /// Returns the builder's name from its `hello`.
    pub fn name(&self) -> &BuilderName {
        &self.hello.name
    }

    /// Returns the fingerprint of the agent's host key.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// Returns the agent's host key.
    pub fn agent_key(&self) -> &PublicKey {
        &self.agent_key
    }

    /// Returns the agent's `hello`.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// Returns the agent's remote address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Returns a receiver of the agent's last heartbeat (`None` until the first).
    pub fn heartbeats(&self) -> watch::Receiver<Option<Heartbeat>> {
        self.inner.heartbeats.clone()
    }

    /// Returns a future that resolves when the connection has ended, for whatever reason.
    pub fn closed(&self) -> WaitForCancellationFutureOwned {
        self.inner.closed.clone().cancelled_owned()
    }

    /// Returns whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.is_cancelled()
    }

    /// Disconnects and waits (at most a few seconds) for the connection to end.
    pub async fn disconnect(&self) {
        self.inner.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(6), self.inner.closed.cancelled()).await;
    }

    /// Opens a new exec channel `nix-store --serve --write` on this connection.
    ///
    /// # Errors
    /// [`Error::Refused`] when the agent refuses it (all of its `max_jobs` slots are busy, or
    /// `nix-store` cannot start); [`Error::Ssh`] or [`Error::Closed`] when the connection is
    /// gone.
    pub async fn open_serve(&self) -> Result<ServeChannel> {
        let open = async {
            let channel = self.open_session().await?;
            channel
                .exec(true, SERVE_COMMAND)
                .await
                .map_err(|source| self.ssh_error(source))?;
            let (mut rx, tx) = channel.split();
            let mut early = LineReader::default();
            let what = format!("exec {SERVE_COMMAND:?}");
            wait_for_reply(&mut rx, &mut early, &what, self.peer).await?;
            Ok(ServeChannel::start(rx, tx, early.buf))
        };
        tokio::time::timeout(OPEN_TIMEOUT, open)
            .await
            .unwrap_or(Err(Error::HandshakeTimeout {
                peer: self.peer,
                seconds: OPEN_TIMEOUT.as_secs(),
            }))
    }

    /// Opens a bare session channel on the connection, for tests of what the agent refuses.
    #[doc(hidden)]
    pub async fn open_session(&self) -> Result<Channel<Msg>> {
        if self.is_closed() {
            return Err(Error::Closed);
        }
        self.inner
            .handle
            .channel_open_session()
            .await
            .map_err(|source| self.ssh_error(source))
    }

    fn ssh_error(&self, source: russh::Error) -> Error {
        Error::Ssh {
            peer: self.peer.to_string(),
            source,
        }
    }
}

/// Closes the SSH channel once every part of a [`ServeChannel`] is dropped, which makes the
/// agent kill its `nix-store`.
#[derive(Debug)]
struct CloseOnDrop(CancellationToken);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// A `nix-store --serve --write` running on the agent: its stdout, stdin, stderr and exit
/// status. Pass `reader` and `writer` to
/// `reconix_nixcli::serve::ServeClient::handshake`, and read `log` concurrently (or drop it):
/// a full, unread log stalls stdout.
#[derive(Debug)]
#[non_exhaustive]
pub struct ServeChannel {
    /// The process's stdout.
    pub reader: ServeReader,
    /// The process's stdin; shutting it down sends EOF, which ends `nix-store --serve`.
    pub writer: ServeWriter,
    /// The process's stderr: the build log, as plain text.
    pub log: ServeReader,
    /// The process's exit status, once it has ended.
    pub exit: ServeExit,
}

impl ServeChannel {
    fn start(rx: ChannelReadHalf, tx: russh::ChannelWriteHalf<Msg>, early: Vec<u8>) -> Self {
        let (out_read, out_write) = tokio::io::duplex(PIPE_BUFFER);
        let (log_read, log_write) = tokio::io::duplex(PIPE_BUFFER);
        let (exit_tx, exit_rx) = watch::channel(None);
        let dropped = CancellationToken::new();
        let guard = Arc::new(CloseOnDrop(dropped.clone()));
        let writer = ServeWriter {
            inner: Box::pin(tx.make_writer()),
            _guard: Arc::clone(&guard),
        };
        tokio::spawn(demux(rx, tx, out_write, log_write, exit_tx, dropped, early));
        Self {
            reader: ServeReader {
                inner: out_read,
                _guard: Arc::clone(&guard),
            },
            writer,
            log: ServeReader {
                inner: log_read,
                _guard: guard,
            },
            exit: ServeExit { rx: exit_rx },
        }
    }
}

/// Routes a serve channel's messages: data to stdout, extended data 1 to the log, the exit
/// status to its watch. Closes the channel when every part of the [`ServeChannel`] is dropped.
async fn demux(
    mut rx: ChannelReadHalf,
    tx: russh::ChannelWriteHalf<Msg>,
    out: DuplexStream,
    log: DuplexStream,
    exit: watch::Sender<Option<u32>>,
    dropped: CancellationToken,
    early: Vec<u8>,
) {
    let mut out = Some(out);
    let mut log = Some(log);
    // A writer whose reader is gone fails; its data is then discarded.
    async fn forward(pipe: &mut Option<DuplexStream>, data: &[u8]) {
        if let Some(p) = pipe.as_mut()
            && p.write_all(data).await.is_err()
        {
            *pipe = None;
        }
    }
    if !early.is_empty() {
        forward(&mut out, &early).await;
    }
    loop {
        tokio::select! {
            () = dropped.cancelled() => {
                let _ = tx.close().await;
                return;
            }
            msg = rx.wait() => match msg {
                Some(ChannelMsg::Data { data }) => forward(&mut out, &data).await,
                Some(ChannelMsg::ExtendedData { data, ext: 1 }) => forward(&mut log, &data).await,
                Some(ChannelMsg::ExitStatus { exit_status }) => {
                    exit.send_replace(Some(exit_status));
                }
                Some(ChannelMsg::ExitSignal { .. }) => {
                    exit.send_replace(Some(255));
                }
                Some(ChannelMsg::Eof) => {
                    out = None;
                    log = None;
                }
                Some(ChannelMsg::Close) | None => return,
                Some(_) => {}
            },
        }
    }
}

/// One output stream of a serve channel (stdout or the log).
#[derive(Debug)]
pub struct ServeReader {
    inner: DuplexStream,
    _guard: Arc<CloseOnDrop>,
}

impl AsyncRead for ServeReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

/// The stdin of a serve channel.
pub struct ServeWriter {
    inner: Pin<Box<dyn AsyncWrite + Send>>,
    _guard: Arc<CloseOnDrop>,
}

impl std::fmt::Debug for ServeWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeWriter").finish_non_exhaustive()
    }
}

impl AsyncWrite for ServeWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().inner.as_mut().poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().inner.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().inner.as_mut().poll_shutdown(cx)
    }
}

/// The exit status of a serve channel's process.
#[derive(Debug, Clone)]
pub struct ServeExit {
    rx: watch::Receiver<Option<u32>>,
}

impl ServeExit {
    /// Waits for the process to end and returns its exit status (128 + n for signal n, 255
    /// when unknown), or `None` when the channel closed without one.
    pub async fn wait(&mut self) -> Option<u32> {
        let waited = self
            .rx
            .wait_for(Option::is_some)
            .await
            .map(|status| *status);
        match waited {
            Ok(status) => status,
            Err(_) => *self.rx.borrow(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_reader_should_refuse_more_than_a_line_of_data() {
        let mut lines = LineReader::default();
        lines.push(b"{\"a\":1}\n{\"b\"").unwrap();
        assert_eq!(lines.take_line().unwrap(), Some(b"{\"a\":1}".to_vec()));
        assert_eq!(lines.take_line().unwrap(), None, "a partial line waits");
        // Data without a newline, as a hostile peer sends it before the subsystem reply: cut
        // at a bound instead of buffered for the whole handshake.
        let mut lines = LineReader::default();
        let chunk = vec![b'x'; 32 * 1024];
        let pushed = (0..100).take_while(|_| lines.push(&chunk).is_ok()).count();
        assert!(pushed < 100 && lines.buf.len() <= 2 * (MAX_LINE + 1));
        let mut lines = LineReader::default();
        lines.push(&vec![b'x'; MAX_LINE + 1]).unwrap();
        assert!(lines.take_line().is_err(), "a line longer than MAX_LINE");
    }
}
