//! The coordinator's side: accept agents' TCP connections and drive them as an SSH client.
//!
//! [`Listener`] accepts connections and runs each handshake on its own task (so a silent or
//! slow peer cannot hold up the others): the SSH client handshake, publickey authentication as
//! [`SSH_USER`](crate::SSH_USER) with the [`CoordinatorKey`], the control channel and the
//! agent's `hello`, all within [`Limits::handshake_timeout`]. [`Listener::accept`] returns the
//! next finished handshake, success or failure, as a [`Pending`] agent for the caller to
//! [accept](Pending::accept) (checking the fingerprint and the token against its enrolment
//! records) or [reject](Pending::reject); either way the agent is told its [`Verdict`].
//!
//! The port is open to anyone, so unfinished connections are bounded ([`Limits`], the policy
//! in `gate`): per source and in all, the newest connection displacing the oldest silent one.
//! A connection takes a handshake slot only once it has sent something. Measured (e2e
//! `agents::an_agent_should_be_ready_at_once_while_silent_connections_flood_the_port`, 2 cores
//! shared with other builds and 2-3 CPU hogs, 20 runs): with 200 silent connections from the
//! agent's address re-opened as fast as they are dropped, an agent is `ready` 0.10-0.64 s after
//! its start; before this design, 40 s (docs/benchmarks.md).
//!
//! An [`AgentConn`] is one live connection: it opens a `nix-store --serve --write` exec channel
//! per build ([`AgentConn::open_serve`]) on the same SSH connection, and publishes the agent's
//! heartbeats.

use std::future::Future;
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
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Mutex, Semaphore, mpsc, oneshot, watch};
use tokio_util::sync::{CancellationToken, DropGuard, WaitForCancellationFutureOwned};
use tracing::{debug, info, warn};

use crate::keys::{self, Fingerprint};
use crate::protocol::{Hello, MAX_LINE, Message, Refusal, Verdict};
use crate::throttle::Throttle;
use crate::{CONTROL_SUBSYSTEM, Error, Result, SERVE_COMMAND, SSH_USER};

mod gate;

use gate::{Gate, GateLimits, Source, Ticket};

/// The coordinator's key file in its state directory.
pub const COORDINATOR_KEY_FILE: &str = "coordinator_ed25519";

/// How long opening a serve channel may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Limits on the connections that have not finished their handshake.
///
/// A connection is *unfinished* from the TCP accept until its `hello` arrives (or it fails).
/// Unfinished connections are counted per source (an IPv4 address, an IPv6 /64) and in all;
/// a new connection beyond either limit displaces the oldest unfinished one that has sent
/// nothing (else the oldest) of the same source, or of any source for the total. Only a
/// connection that has sent something takes one of the `max_handshakes` slots, so silent peers
/// cannot hold up agents, which send their SSH banner at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long a connection has from the TCP accept to a complete `hello`.
    pub handshake_timeout: Duration,
    /// Unfinished connections per source.
    pub max_pending_per_source: usize,
    /// Unfinished connections in all (each holds a file descriptor).
    pub max_pending: usize,
    /// Handshakes running at once (key exchange, authentication, hello).
    pub max_handshakes: usize,
}

impl Default for Limits {
    /// 5 s, 16 per source, 256 in all, 64 handshakes.
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(5),
            max_pending_per_source: 16,
            max_pending: 256,
            max_handshakes: 64,
        }
    }
}

/// Accepts agents' connections on a TCP address.
#[derive(Debug)]
pub struct Listener {
    local_addr: SocketAddr,
    results: Mutex<mpsc::Receiver<Result<Pending>>>,
    _stop: DropGuard,
}

impl Listener {
    /// Binds `addr` with a listen backlog of [`LISTEN_BACKLOG`] and starts accepting under
    /// `limits` (handshakes run in the background; take their results with
    /// [`accept`](Self::accept)).
    ///
    /// # Errors
    /// [`Error::Bind`] when the address cannot be bound.
    pub async fn bind(addr: SocketAddr, key: &CoordinatorKey, limits: Limits) -> Result<Self> {
        let bind_error = |source| Error::Bind { addr, source };
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(bind_error)?;
        // As std's `TcpListener::bind` does: a restarted daemon can bind again while old
        // connections linger in TIME_WAIT.
        socket.set_reuseaddr(true).map_err(bind_error)?;
        socket.bind(addr).map_err(bind_error)?;
        let tcp = socket.listen(LISTEN_BACKLOG).map_err(bind_error)?;
        Self::from_tcp(tcp, key, limits)
    }

    /// Starts accepting on an already bound listener.
    ///
    /// # Errors
    /// When the listener's address cannot be read.
    pub fn from_tcp(tcp: TcpListener, key: &CoordinatorKey, limits: Limits) -> Result<Self> {
        let local_addr = tcp.local_addr().map_err(Error::Accept)?;
        let (tx, rx) = mpsc::channel(RESULTS);
        let stop = CancellationToken::new();
        let shared = Arc::new(AcceptShared {
            key: Arc::clone(&key.key),
            config: Arc::new(client_config()),
            limits,
            gate: std::sync::Mutex::new(Gate::new(GateLimits {
                total: limits.max_pending,
                per_source: limits.max_pending_per_source,
            })),
            slots: Semaphore::new(limits.max_handshakes.max(1)),
            lingering: Arc::new(Semaphore::new(MAX_LINGERING)),
            results: tx,
        });
        tokio::spawn(accept_loop(tcp, shared, stop.clone()));
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
    /// slow, displaced by newer connections): the connection is already dropped and the
    /// listener keeps accepting, so call `accept` again. Failures are reported on a best-effort
    /// basis (dropped when the caller lags behind). [`Error::ListenerClosed`] when the listener
    /// has stopped.
    pub async fn accept(&self) -> Result<Pending> {
        let mut results = self.results.lock().await;
        results.recv().await.unwrap_or(Err(Error::ListenerClosed))
    }
}

/// The kernel's queue of connections not yet accepted (Linux caps it at
/// `net.core.somaxconn`, 4096 by default). std's and tokio's `bind` ask for 128: a flood of
/// 200 connections re-opened as fast as they are dropped overflowed that, and the kernel then
/// dropped an agent's SYN or handshake ACK too, so its `connect` took 1 s, 3 s or more (TCP's
/// retransmission delays) before the listener ever saw it. A flood larger than this backlog
/// plus `max_pending` still overflows it; only the kernel can help then (SYN cookies,
/// firewall rate limits).
pub const LISTEN_BACKLOG: u32 = 1024;

/// Finished handshakes (and failures) waiting for [`Listener::accept`].
const RESULTS: usize = 64;

/// Refused agents given time to read their refusal and hang up; beyond this many, a refused
/// agent is dropped at once (see [`Pending::reject`]).
const MAX_LINGERING: usize = 64;

/// How long a refused agent has to hang up by itself.
const LINGER: Duration = Duration::from_secs(5);

/// The shortest and longest pause after a failed `accept`.
const ACCEPT_PAUSE: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// The pause after dropping a silent connection for its file descriptor: time for its task to
/// close it. Queued connections are then accepted at up to 1000 a second (with 10 ms, an agent
/// behind 100 queued silent connections waited a second).
const EVICTED_PAUSE: Duration = Duration::from_millis(1);

/// How often a recurring listener problem (accept errors, displaced connections) is logged.
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// Linux `errno` values meaning the process or the system ran out of file descriptors (the same
/// on every Linux architecture: asm-generic/errno-base.h).
const ENFILE: i32 = 23;
const EMFILE: i32 = 24;

/// What the accept loop and the connection tasks share.
#[derive(Debug)]
struct AcceptShared {
    key: Arc<PrivateKey>,
    config: Arc<client::Config>,
    limits: Limits,
    /// The unfinished connections; each value cancels its connection's task.
    gate: std::sync::Mutex<Gate<CancellationToken>>,
    /// Handshake slots, taken once a connection has sent something.
    slots: Semaphore,
    lingering: Arc<Semaphore>,
    results: mpsc::Sender<Result<Pending>>,
}

impl AcceptShared {
    fn gate(&self) -> std::sync::MutexGuard<'_, Gate<CancellationToken>> {
        // The gate is only changed by short, non-panicking methods: a poisoned lock still
        // holds a consistent gate.
        self.gate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

async fn accept_loop(tcp: TcpListener, shared: Arc<AcceptShared>, stop: CancellationToken) {
    let mut accept_errors = Throttle::new(REPORT_EVERY);
    let mut displacements = Throttle::new(REPORT_EVERY);
    let mut pause = ACCEPT_PAUSE.0;
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            a = tcp.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                pause = ACCEPT_PAUSE.0;
                let cancel = stop.child_token();
                let (ticket, displaced) =
                    shared.gate().admit(Source::of(peer.ip()), cancel.clone());
                for (_, token) in &displaced {
                    token.cancel();
                }
                if !displaced.is_empty()
                    && let Some(held) = displacements.hit(Instant::now())
                {
                    warn!(
                        peer = %peer,
                        earlier = held,
                        "too many unfinished agent connections: dropping the oldest silent ones \
                         (builders.enrollment.max-pending-per-source)"
                    );
                }
                tokio::spawn(connection(
                    stream,
                    peer,
                    ticket,
                    cancel,
                    Arc::clone(&shared),
                ));
                // Let the new connection's task look for its first bytes before the next
                // accept can displace it: an agent that already spoke is displaced last.
                tokio::task::yield_now().await;
            }
            Err(error) => {
                if let Some(held) = accept_errors.hit(Instant::now()) {
                    warn!(error = %error, earlier = held, "accepting an agent connection failed");
                }
                // Out of file descriptors: a silent peer is the cheapest one to give up.
                let evicted = matches!(error.raw_os_error(), Some(EMFILE | ENFILE))
                    && shared
                        .gate()
                        .evict_silent()
                        .map(|(_, token)| token.cancel())
                        .is_some();
                // The failed connection stays queued, so accepting again at once would spin.
                let wait = if evicted { EVICTED_PAUSE } else { pause };
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
                if !evicted {
                    pause = (pause * 2).min(ACCEPT_PAUSE.1);
                }
            }
        }
    }
}

/// Runs one accepted connection until its handshake ends, it times out or it is displaced;
/// hands the result to [`Listener::accept`].
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    ticket: Ticket,
    cancel: CancellationToken,
    shared: Arc<AcceptShared>,
) {
    let deadline = tokio::time::Instant::now() + shared.limits.handshake_timeout;
    // Once the SSH exchange has started, the session runs on its own task and owns the
    // socket: giving up on the handshake must cut the socket too, or a peer that stalls
    // mid-handshake would keep it (and the task) for good.
    let cut = CancellationToken::new();
    let stream = Cuttable::new(stream, cut.clone());
    let armed = Arc::clone(&stream.armed);
    let result = tokio::select! {
        () = cancel.cancelled() => Err(Error::Displaced { peer }),
        r = tokio::time::timeout_at(deadline, pre_auth(stream, peer, ticket, &shared)) => {
            r.unwrap_or(Err(Error::HandshakeTimeout {
                peer,
                after: shared.limits.handshake_timeout,
            }))
        }
    };
    match result {
        Ok(pending) => {
            // Still unfinished (and displaceable) until the caller takes it.
            tokio::select! {
                () = cancel.cancelled() => {
                    debug!(peer = %peer, "dropped a finished handshake nobody took");
                    cut.cancel();
                }
                _ = shared.results.send(Ok(pending)) => {
                    // Handed over: from now on the connection ends the SSH way, and its reads
                    // and writes (builds' closures) no longer look at the cut.
                    armed.store(false, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        Err(error) => {
            cut.cancel();
            debug!(peer = %peer, error = %error, "agent handshake failed");
            // Best effort: a caller that lags behind misses failures, never agents.
            let _ = shared.results.try_send(Err(error));
        }
    }
    shared.gate().remove(ticket);
}

/// A TCP stream that fails every read and write once its token is cancelled, which ends the
/// SSH session task that owns it (and so closes the socket). Disarmed (`armed` cleared) once
/// the handshake is handed over, it is a plain stream.
struct Cuttable {
    inner: TcpStream,
    armed: Arc<std::sync::atomic::AtomicBool>,
    cut: CancellationToken,
    cutting: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Cuttable {
    fn new(inner: TcpStream, cut: CancellationToken) -> Self {
        let cutting = Box::pin(cut.clone().cancelled_owned());
        Self {
            inner,
            armed: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            cut,
            cutting,
        }
    }

    /// Returns whether the stream is cut; otherwise, while armed, arranges for `cx` to be
    /// woken when it is.
    fn is_cut(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.armed.load(std::sync::atomic::Ordering::Relaxed) {
            return false;
        }
        // A completed cancellation future must not be polled again: check the token first.
        self.cut.is_cancelled() || self.cutting.as_mut().poll(cx).is_ready()
    }

    fn cut_error() -> std::io::Error {
        std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "the handshake was given up",
        )
    }
}

impl AsyncRead for Cuttable {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.is_cut(cx) {
            return Poll::Ready(Err(Self::cut_error()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Cuttable {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.is_cut(cx) {
            return Poll::Ready(Err(Self::cut_error()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.is_cut(cx) {
            return Poll::Ready(Err(Self::cut_error()));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Waits for the peer's first bytes (holding no slot), then takes a handshake slot and runs
/// the handshake.
async fn pre_auth(
    stream: Cuttable,
    peer: SocketAddr,
    ticket: Ticket,
    shared: &AcceptShared,
) -> Result<Pending> {
    let mut first = [0u8; 1];
    let read = stream
        .inner
        .peek(&mut first)
        .await
        .map_err(|_| Error::Closed)?;
    if read == 0 {
        return Err(Error::Closed);
    }
    shared.gate().spoke(ticket);
    let _slot = shared
        .slots
        .acquire()
        .await
        .map_err(|_| Error::ListenerClosed)?;
    handshake(
        stream,
        peer,
        Arc::clone(&shared.config),
        Arc::clone(&shared.key),
        Arc::clone(&shared.lingering),
    )
    .await
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
        // them about twice as fast as russh's default ChaCha20-Poly1305 on x86_64, and
        // AES-128-GCM (10 rounds) a few percent faster than AES-256-GCM (14). Both are
        // authenticated encryption with a 128-bit tag and among OpenSSH's defaults; a 128-bit
        // key is beyond brute force (NIST approves it past 2030). The client's order wins the
        // negotiation; the others stay for agents that lack AES-GCM.
        preferred: russh::Preferred {
            cipher: std::borrow::Cow::Borrowed(&[
                russh::cipher::AES_128_GCM,
                russh::cipher::AES_256_GCM,
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
    stream: Cuttable,
    peer: SocketAddr,
    config: Arc<client::Config>,
    key: Arc<PrivateKey>,
    lingering: Arc<Semaphore>,
) -> Result<Pending> {
    let _ = stream.inner.set_nodelay(true);
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
        control: tx,
        closed,
        stop: stop.clone(),
        heartbeats: beats_rx,
    });
    tokio::spawn(supervise(Arc::clone(&inner), rx, lines, beats_tx, peer));
    let fingerprint = keys::fingerprint(&agent_key);
    Ok(Pending {
        peer,
        agent_key,
        fingerprint,
        hello,
        inner,
        lingering,
        guard: stop.drop_guard(),
    })
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
    /// The control channel's sending side: the verdict goes out on it.
    control: russh::ChannelWriteHalf<Msg>,
    /// Cancelled when the SSH session has ended.
    closed: CancellationToken,
    /// Cancelled to ask the supervisor to disconnect.
    stop: CancellationToken,
    heartbeats: watch::Receiver<Option<Heartbeat>>,
}

impl Inner {
    /// Sends a refusal and closes the control channel; then, with `linger`, waits (at most
    /// [`LINGER`]) for the agent to hang up.
    async fn refuse(&self, verdict: &Verdict, linger: bool) {
        let told = async {
            let _ = self.control.data_bytes(verdict.encode()).await;
            let _ = self.control.close().await;
        };
        let _ = tokio::time::timeout(LINGER, told).await;
        if linger {
            let _ = tokio::time::timeout(LINGER, self.closed.cancelled()).await;
        }
    }
}

/// Reads heartbeats off the control channel until the connection ends; disconnects when asked
/// to, when the control channel closes, or when the agent sends garbage.
async fn supervise(
    inner: Arc<Inner>,
    mut rx: ChannelReadHalf,
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
    lingering: Arc<Semaphore>,
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

    /// Admits the agent: the connection becomes an [`AgentConn`], and the agent is told
    /// ([`Verdict::Admitted`], sent in the background).
    pub fn accept(self) -> AgentConn {
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move {
            let _ =
                tokio::time::timeout(LINGER, inner.control.data_bytes(Verdict::Admitted.encode()))
                    .await;
        });
        AgentConn {
            peer: self.peer,
            agent_key: self.agent_key,
            fingerprint: self.fingerprint,
            hello: self.hello,
            inner: self.inner,
            _guard: self.guard,
        }
    }

    /// Refuses the agent without waiting: it is sent the refusal on the control channel (it
    /// logs `message` and backs off according to `refusal`), the channel is closed, and the
    /// agent gets a few seconds to hang up before it is disconnected. That happens in the
    /// background; when many refused agents are already lingering, it is disconnected at once
    /// (the refusal may then not reach it).
    pub fn reject(self, refusal: Refusal, message: &str) {
        debug!(peer = %self.peer, fingerprint = %self.fingerprint, %refusal, message, "rejecting agent");
        let verdict = Verdict::refused(refusal, message);
        let linger = Arc::clone(&self.lingering).try_acquire_owned().ok();
        tokio::spawn(async move {
            self.inner.refuse(&verdict, linger.is_some()).await;
            drop(linger);
            drop(self.guard);
        });
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

    /// Tells the agent it is refused from now on (e.g. its key was revoked), gives it a few
    /// seconds to hang up, then disconnects; returns when the connection has ended (or after
    /// about ten seconds).
    pub async fn refuse(&self, refusal: Refusal, message: &str) {
        self.inner
            .refuse(&Verdict::refused(refusal, message), true)
            .await;
        self.disconnect().await;
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
                after: OPEN_TIMEOUT,
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
