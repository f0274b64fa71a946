//! The builder's side: dial the coordinator, then serve SSH on the socket we opened.
//!
//! [`Agent::run`] dials with exponential backoff and reconnects after every disconnect until
//! it is cancelled: soon after a dropped connection, ever later after a refusal (see
//! `retry`). On each connection it is an SSH server whose host key is the agent's
//! identity (`<state-dir>/agent_ed25519`). It admits exactly one client: user
//! [`SSH_USER`](crate::SSH_USER) with publickey auth and the pinned coordinator key (given as a
//! fingerprint, or trusted on first use and stored in `<state-dir>/coordinator.pub`). On a
//! session channel it grants only two requests:
//!
//! - subsystem [`CONTROL_SUBSYSTEM`](crate::CONTROL_SUBSYSTEM): it writes the `hello` line and
//!   then a heartbeat every interval (see [`protocol`](crate::protocol));
//! - exec [`SERVE_COMMAND`](crate::SERVE_COMMAND), byte for byte: it runs
//!   `nix-store --log-format internal-json --serve --write [--store URI]` with stdin from
//!   channel data, stdout to channel data and stderr, rendered to plain text with the builder's
//!   colours kept, to extended data 1, up to `max_jobs` at once.
//!
//! Everything else (shell, pty, env, other commands and subsystems, forwarding) is refused.
//!
//! The coordinator answers the hello with its [`Verdict`](crate::protocol::Verdict) on the
//! control channel; a refusal is logged in plain words (what was refused and what an operator
//! has to do) and slows down the next attempts.

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use reconix_nixcli::parse::log::render_lines;
use reconix_spec::{BuilderName, Secret, System};
use russh::keys::{PrivateKey, PublicKey};
use russh::server::{self, Auth, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelId, ChannelMsg, Disconnect, MethodKind, MethodSet};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, info, warn};

use crate::keys::{self, Fingerprint};
use crate::protocol::{Hello, MAX_LINE, Message, PROTOCOL_VERSION, Refusal, Verdict};
use crate::{CONTROL_SUBSYSTEM, Error, Result, SERVE_COMMAND, SSH_USER};

/// The agent's key file in its state directory.
pub const AGENT_KEY_FILE: &str = "agent_ed25519";

/// The pinned coordinator public key in the agent's state directory (trust on first use).
pub const COORDINATOR_PUB_FILE: &str = "coordinator.pub";

/// How long a TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the coordinator has from the TCP connect to a successful authentication.
const AUTH_TIMEOUT: Duration = Duration::from_secs(30);

/// Session channels opened but not yet given a request, per connection. Bounds what a
/// misbehaving client can hold open.
const MAX_IDLE_CHANNELS: usize = 8;

mod retry;

pub use retry::Backoff;
use retry::{Outcome, Retry};

/// How long the control channel may take to finish after the session ended (it may still hold
/// the coordinator's verdict).
const CONTROL_DRAIN: Duration = Duration::from_secs(2);

/// What the agent needs to run; the binary fills it from its flags.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The coordinator's `HOST:PORT`.
    pub coordinator: String,
    /// Where the agent keeps its key and the pinned coordinator key.
    pub state_dir: PathBuf,
    /// The enrolment token file; a missing file means no token.
    pub token_file: Option<PathBuf>,
    /// The builder's name.
    pub name: BuilderName,
    /// The systems it builds for.
    pub systems: Vec<System>,
    /// The Nix system features it offers.
    pub features: Vec<String>,
    /// How many serve channels (builds) run at once.
    pub max_jobs: u32,
    /// The store URI passed to `nix-store --store`; `None` uses the machine's default store.
    pub store: Option<String>,
    /// The only coordinator key accepted; without it the first key seen is pinned.
    pub coordinator_key: Option<Fingerprint>,
    /// How often the control channel sends a heartbeat.
    pub heartbeat: Duration,
    /// The delays between connection attempts after a connection dropped or failed.
    pub backoff: Backoff,
    /// The delays between connection attempts after the coordinator refused the agent.
    pub refused_backoff: Backoff,
}

impl AgentConfig {
    /// Returns a configuration with the defaults: system `x86_64-linux`, no features, one job,
    /// the default store, trust on first use, heartbeats every 5 s.
    pub fn new(
        coordinator: impl Into<String>,
        state_dir: impl Into<PathBuf>,
        name: BuilderName,
    ) -> Self {
        Self {
            coordinator: coordinator.into(),
            state_dir: state_dir.into(),
            token_file: None,
            name,
            systems: vec![System::x86_64_linux()],
            features: Vec::new(),
            max_jobs: 1,
            store: None,
            coordinator_key: None,
            heartbeat: Duration::from_secs(5),
            backoff: Backoff::default(),
            refused_backoff: Backoff::refused(),
        }
    }
}

/// Returns the machine's host name as a builder name.
///
/// # Errors
/// [`Error::HostName`] when it cannot be read or is not a valid builder name.
pub fn hostname() -> Result<BuilderName> {
    let text = std::fs::read_to_string("/proc/sys/kernel/hostname").map_err(Error::HostName)?;
    BuilderName::new(text.trim())
        .map_err(|e| Error::HostName(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

/// Which coordinator key the agent accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pin {
    /// `--coordinator-key`: only this one, never written down.
    Given(Fingerprint),
    /// Pinned earlier and read from `coordinator.pub`.
    Pinned(Fingerprint),
    /// Nothing yet: the first key that authenticates gets pinned.
    Unpinned,
}

/// What every connection of one agent shares.
#[derive(Debug)]
struct Shared {
    config: AgentConfig,
    /// The agent's key's fingerprint.
    fingerprint: Fingerprint,
    pin: Mutex<Pin>,
    running: Arc<AtomicU32>,
    /// Set once the store has been opened by one process alone (see [`Shared::init_store`]).
    store_ready: tokio::sync::OnceCell<()>,
}

impl Shared {
    fn pin(&self) -> MutexGuard<'_, Pin> {
        // A panic while holding the lock cannot leave `Pin` half-updated (it is assigned
        // whole), so a poisoned lock is still usable.
        self.pin
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Returns whether `key` may try to authenticate (no pinning yet: its owner is unproven).
    fn may_offer(&self, key: &PublicKey) -> bool {
        match &*self.pin() {
            Pin::Given(fp) | Pin::Pinned(fp) => *fp == keys::fingerprint(key),
            Pin::Unpinned => true,
        }
    }

    /// Returns whether `key`, whose ownership is proven, is the coordinator's; pins it when
    /// nothing is pinned yet.
    fn admit(&self, key: &PublicKey) -> bool {
        let fp = keys::fingerprint(key);
        let mut pin = self.pin();
        match &*pin {
            Pin::Given(expected) | Pin::Pinned(expected) => *expected == fp,
            Pin::Unpinned => {
                let path = self.config.state_dir.join(COORDINATOR_PUB_FILE);
                let written = key.to_openssh().map_err(Error::Key).and_then(|text| {
                    keys::write_atomic(&path, format!("{text}\n").as_bytes(), 0o644)
                });
                match written {
                    Ok(()) => {
                        info!(fingerprint = %fp, path = %path.display(), "pinned the coordinator's key (trust on first use)");
                        *pin = Pin::Pinned(fp);
                        true
                    }
                    Err(error) => {
                        warn!(error = %error, "cannot pin the coordinator's key; refusing it");
                        false
                    }
                }
            }
        }
    }

    /// Opens the store once with one `nix-store` before the first serve process: Nix 2.8
    /// creating a fresh store from two processes at once fails one of them ("creating symlink
    /// … File exists", "SQLite database … is busy"), and the coordinator starts several
    /// builds on a new agent at once. A failure is logged and tried again at the next serve.
    async fn init_store(&self) {
        let store = self.config.store.clone();
        let _ = self
            .store_ready
            .get_or_try_init(|| async move {
                let mut cmd = Command::new("nix-store");
                cmd.arg("--check-validity");
                if let Some(store) = &store {
                    cmd.args(["--store", store]);
                }
                match cmd.stdin(Stdio::null()).output().await {
                    Ok(out) if out.status.success() => Ok(()),
                    Ok(out) => {
                        warn!(
                            stderr = %String::from_utf8_lossy(&out.stderr).trim(),
                            "cannot open the store before serving"
                        );
                        Err(())
                    }
                    Err(error) => {
                        warn!(error = %error, "cannot run nix-store to open the store");
                        Err(())
                    }
                }
            })
            .await;
    }

    /// Reserves one of `max_jobs` serve slots.
    fn try_slot(&self) -> Option<Slot> {
        let max = self.config.max_jobs;
        self.running
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(Arc::clone(&self.running)))
    }

    fn hello(&self) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            name: self.config.name.clone(),
            systems: self.config.systems.clone(),
            features: self.config.features.clone(),
            max_jobs: self.config.max_jobs,
            token: self.config.token_file.as_deref().and_then(read_token),
        }
    }
}

/// A running serve channel; releases its slot when dropped.
#[derive(Debug)]
struct Slot(Arc<AtomicU32>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Reads the token file; a missing or unreadable file means no token (after enrolment the key
/// alone identifies the agent).
fn read_token(path: &Path) -> Option<Secret> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let token = text.trim();
            (!token.is_empty()).then(|| Secret::new(token))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => {
            warn!(path = %path.display(), error = %error, "cannot read the token file; sending no token");
            None
        }
    }
}

/// A builder agent: its identity and configuration.
#[derive(Debug)]
pub struct Agent {
    shared: Arc<Shared>,
    server_config: Arc<server::Config>,
    fingerprint: Fingerprint,
}

impl Agent {
    /// Loads (or creates) the agent's key and the pinned coordinator key.
    ///
    /// # Errors
    /// When the state directory or a key file is unusable.
    pub fn new(config: AgentConfig) -> Result<Self> {
        keys::ensure_dir(&config.state_dir)?;
        let key = keys::load_or_create_key(&config.state_dir.join(AGENT_KEY_FILE))?;
        let pin = match &config.coordinator_key {
            Some(fp) => Pin::Given(*fp),
            None => {
                let path = config.state_dir.join(COORDINATOR_PUB_FILE);
                match PublicKey::read_openssh_file(&path) {
                    Ok(pinned) => Pin::Pinned(keys::fingerprint(&pinned)),
                    Err(russh::keys::ssh_key::Error::Io(std::io::ErrorKind::NotFound)) => {
                        Pin::Unpinned
                    }
                    Err(e) => return Err(Error::Key(e)),
                }
            }
        };
        let fingerprint = keys::fingerprint(key.public_key());
        Ok(Self {
            server_config: Arc::new(server_config(key)),
            shared: Arc::new(Shared {
                config,
                fingerprint,
                pin: Mutex::new(pin),
                running: Arc::new(AtomicU32::new(0)),
                store_ready: tokio::sync::OnceCell::new(),
            }),
            fingerprint,
        })
    }

    /// Returns the fingerprint of the agent's key, its identity.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// Returns the fingerprint of the coordinator key the agent accepts, if one is pinned or
    /// given.
    pub fn coordinator_fingerprint(&self) -> Option<Fingerprint> {
        match &*self.shared.pin() {
            Pin::Given(fp) | Pin::Pinned(fp) => Some(*fp),
            Pin::Unpinned => None,
        }
    }

    /// Returns how many serve channels are running now.
    pub fn running(&self) -> u32 {
        self.shared.running.load(Ordering::Acquire)
    }

    /// Dials the coordinator and serves it, reconnecting after every disconnect with
    /// exponential backoff (slower after a refusal, see `retry`), until `shutdown` is
    /// cancelled.
    ///
    /// # Errors
    /// None at present: connection failures are logged and retried. The `Result` leaves room
    /// for fatal conditions.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<()> {
        let config = &self.shared.config;
        let mut retry = Retry::new(config.backoff, config.refused_backoff);
        while !shutdown.is_cancelled() {
            let started = Instant::now();
            let verdict = VerdictSlot::default();
            match self.connect_once(&shutdown, &verdict).await {
                Ok(()) => info!("disconnected from the coordinator"),
                Err(error) => warn!(error = %error, "connection to the coordinator failed"),
            }
            let outcome = match verdict.take() {
                Some(Verdict::Refused { .. }) => Outcome::Refused,
                Some(Verdict::Admitted) => Outcome::Admitted,
                None => Outcome::Dropped {
                    lasted: started.elapsed(),
                },
            };
            let (delay, backoff) = retry.next(outcome);
            let delay = backoff.jittered(delay, rand::random::<f64>());
            if outcome == Outcome::Refused {
                warn!(retry_in = ?delay, "refused by the coordinator; trying again later");
            } else {
                debug!(delay = ?delay, "reconnecting");
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
        }
        Ok(())
    }

    /// Runs one connection to its end; the coordinator's verdict, if it sent one, lands in
    /// `verdict`.
    async fn connect_once(
        &self,
        shutdown: &CancellationToken,
        verdict: &VerdictSlot,
    ) -> Result<()> {
        let addr = &self.shared.config.coordinator;
        let connect_error = |source| Error::Connect {
            addr: addr.clone(),
            source,
        };
        let tcp = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            r = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr.as_str())) => r
                .map_err(|_| connect_error(std::io::ErrorKind::TimedOut.into()))?
                .map_err(connect_error)?,
        };
        // Small serve-protocol messages must not wait for Nagle.
        tcp.set_nodelay(true).map_err(connect_error)?;
        info!(coordinator = %addr, "connected");

        let conn = shutdown.child_token();
        let (authed_tx, authed_rx) = tokio::sync::oneshot::channel();
        // Cancelled once the control channel's task has ended, or right away with the handler
        // when it never started: a verdict the session delivered is read by then.
        let control_done = CancellationToken::new();
        let handler = ConnHandler {
            shared: Arc::clone(&self.shared),
            conn: conn.clone(),
            idle: HashMap::new(),
            control_open: false,
            authed: Some(authed_tx),
            verdict: verdict.clone(),
            control_done: Some(control_done.clone().drop_guard()),
        };
        let ssh_error = |source| Error::Ssh {
            peer: addr.clone(),
            source,
        };
        let session = tokio::time::timeout(
            AUTH_TIMEOUT,
            server::run_stream(Arc::clone(&self.server_config), tcp, handler),
        )
        .await
        .map_err(|_| connect_error(std::io::ErrorKind::TimedOut.into()))?
        .map_err(ssh_error)?;
        let ended = self.drive(session, conn, authed_rx).await;
        let _ = tokio::time::timeout(CONTROL_DRAIN, control_done.cancelled()).await;
        ended.map_err(ssh_error)
    }

    /// Runs an SSH session until it ends, the connection is cancelled (shutdown, or the
    /// coordinator closed the control channel) or the coordinator fails to authenticate.
    async fn drive(
        &self,
        session: server::RunningSession<ConnHandler>,
        conn: CancellationToken,
        authed_rx: tokio::sync::oneshot::Receiver<()>,
    ) -> Result<(), russh::Error> {
        let handle = session.handle();
        let mut session = std::pin::pin!(session);
        let auth_deadline = tokio::time::sleep(AUTH_TIMEOUT);
        let mut auth_deadline = std::pin::pin!(auth_deadline);
        let mut authed_rx = authed_rx;
        let mut authed = false;
        loop {
            tokio::select! {
                r = &mut session => return r,
                () = conn.cancelled() => {
                    // Shutdown, or the control channel closed: say goodbye, then give the
                    // session a moment to flush it.
                    let _ = handle
                        .disconnect(Disconnect::ByApplication, "agent disconnecting".into(), String::new())
                        .await;
                    let _ = tokio::time::timeout(Duration::from_secs(5), &mut session).await;
                    return Ok(());
                }
                r = &mut authed_rx, if !authed => {
                    authed = true;
                    if r.is_ok() {
                        debug!("coordinator authenticated");
                    }
                }
                () = &mut auth_deadline, if !authed => {
                    warn!("the coordinator did not authenticate in time");
                    let _ = handle
                        .disconnect(Disconnect::ByApplication, "authentication timeout".into(), String::new())
                        .await;
                    return Ok(());
                }
            }
        }
    }
}

fn server_config(key: PrivateKey) -> server::Config {
    let mut methods = MethodSet::empty();
    methods.push(MethodKind::PublicKey);
    server::Config {
        keys: vec![key],
        methods,
        // The coordinator is a program with the right key, not a person guessing passwords:
        // a short, constant rejection delay is enough.
        auth_rejection_time: Duration::from_millis(200),
        auth_rejection_time_initial: Some(Duration::ZERO),
        max_auth_attempts: 3,
        // The coordinator sends keepalives; silence for this long means it is gone.
        inactivity_timeout: Some(Duration::from_secs(90)),
        keepalive_interval: Some(Duration::from_secs(15)),
        keepalive_max: 3,
        nodelay: true,
        ..server::Config::default()
    }
}

/// The SSH server handler of one connection.
struct ConnHandler {
    shared: Arc<Shared>,
    /// Cancelled to end this connection.
    conn: CancellationToken,
    /// Session channels opened but not yet given a request.
    idle: HashMap<ChannelId, Channel<Msg>>,
    control_open: bool,
    authed: Option<tokio::sync::oneshot::Sender<()>>,
    /// Where the control channel puts the coordinator's verdict.
    verdict: VerdictSlot,
    /// Moved into the control channel's task; dropped with the handler when there is none.
    control_done: Option<DropGuard>,
}

/// The coordinator's verdict on one connection, once it has sent it.
#[derive(Debug, Clone, Default)]
struct VerdictSlot(Arc<Mutex<Option<Verdict>>>);

impl VerdictSlot {
    fn lock(&self) -> MutexGuard<'_, Option<Verdict>> {
        // Only ever assigned whole: a poisoned lock still holds a valid value.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set(&self, verdict: Verdict) {
        *self.lock() = Some(verdict);
    }

    fn take(&self) -> Option<Verdict> {
        self.lock().take()
    }
}

impl ConnHandler {
    fn refuse(
        &mut self,
        channel: ChannelId,
        what: &str,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        warn!(request = what, "refused a channel request");
        session.channel_failure(channel)
    }
}

impl server::Handler for ConnHandler {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        if user == SSH_USER && self.shared.may_offer(offer.public_key) {
            Ok(Auth::Accept)
        } else {
            Ok(Auth::reject())
        }
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if user == SSH_USER && self.shared.admit(key.public_key) {
            Ok(Auth::Accept)
        } else {
            warn!(user, fingerprint = %keys::fingerprint(key.public_key), "refused a coordinator key");
            Ok(Auth::reject())
        }
    }

    async fn auth_succeeded(&mut self, _session: &mut Session) -> Result<(), Self::Error> {
        if let Some(tx) = self.authed.take() {
            let _ = tx.send(());
        }
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.idle.len() >= MAX_IDLE_CHANNELS {
            warn!("too many idle channels; refusing another");
            // Dropping `reply` rejects the channel.
            return Ok(());
        }
        reply.accept().await;
        self.idle.insert(channel.id(), channel);
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.idle.remove(&channel);
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name != CONTROL_SUBSYSTEM || self.control_open {
            return self.refuse(channel, &format!("subsystem {name:?}"), session);
        }
        let Some(ch) = self.idle.remove(&channel) else {
            return self.refuse(channel, "subsystem on a busy channel", session);
        };
        self.control_open = true;
        session.channel_success(channel)?;
        let hello = Message::Hello(self.shared.hello()).encode();
        tokio::spawn(control(
            ch,
            hello,
            Arc::clone(&self.shared),
            self.conn.clone(),
            self.verdict.clone(),
            self.control_done.take(),
        ));
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if data != SERVE_COMMAND.as_bytes() {
            let shown = String::from_utf8_lossy(data);
            return self.refuse(channel, &format!("exec {shown:?}"), session);
        }
        let Some(slot) = self.shared.try_slot() else {
            return self.refuse(channel, "exec beyond max-jobs", session);
        };
        if !self.idle.contains_key(&channel) {
            return self.refuse(channel, "exec on a busy channel", session);
        }
        self.shared.init_store().await;
        let child = match serve_command(self.shared.config.store.as_deref()).spawn() {
            Ok(child) => child,
            Err(error) => {
                warn!(error = %error, "cannot start nix-store --serve");
                return session.channel_failure(channel);
            }
        };
        let Some(ch) = self.idle.remove(&channel) else {
            return session.channel_failure(channel);
        };
        session.channel_success(channel)?;
        debug!(channel = %channel, "serve channel started");
        tokio::spawn(serve(ch, child, slot));
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse(channel, "shell", session)
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse(channel, "pty", session)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _variable_name: &str,
        _variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse(channel, "env", session)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse(channel, "x11", session)
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse(channel, "window-change", session)
    }
}

fn serve_command(store: Option<&str>) -> Command {
    let mut cmd = Command::new("nix-store");
    // The JSON log keeps the builder's colour codes (the plain one strips them on a pipe); it is
    // rendered back to text before it leaves (`forward_log`).
    cmd.args(["--log-format", "internal-json", "--serve", "--write"]);
    if let Some(store) = store {
        cmd.args(["--store", store]);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A closed channel or a dropped connection must not leave the process behind.
        .kill_on_drop(true);
    cmd
}

/// Copies the serve process's `internal-json` stderr to `out` as the text Nix would print, line
/// by line, until either side ends.
async fn forward_log(stderr: impl AsyncRead + Unpin, out: &mut (impl AsyncWrite + Unpin)) {
    let mut lines = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match lines.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if !line.ends_with(b"\n") {
                    line.push(b'\n');
                }
                let text = render_lines(&line);
                if !text.is_empty()
                    && (out.write_all(&text).await.is_err() || out.flush().await.is_err())
                {
                    return;
                }
            }
        }
    }
}

/// Runs the control channel: the hello, then heartbeats until the channel or the connection
/// closes, noting the coordinator's verdict. Closing the control channel ends the connection.
async fn control(
    channel: Channel<Msg>,
    hello: Vec<u8>,
    shared: Arc<Shared>,
    conn: CancellationToken,
    verdict: VerdictSlot,
    _done: Option<DropGuard>,
) {
    let (mut rx, tx) = channel.split();
    if tx.data_bytes(hello).await.is_err() {
        conn.cancel();
        return;
    }
    let every = shared.config.heartbeat;
    let start = tokio::time::Instant::now() + every;
    let mut ticker = tokio::time::interval_at(start, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut incoming = Vec::new();
    loop {
        tokio::select! {
            () = conn.cancelled() => return,
            msg = rx.wait() => match msg {
                None | Some(ChannelMsg::Close) => {
                    info!("the coordinator closed the control channel");
                    conn.cancel();
                    return;
                }
                Some(ChannelMsg::Data { data }) => {
                    incoming.extend_from_slice(&data);
                    while let Some(end) = incoming.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = incoming.drain(..=end).collect();
                        match Verdict::decode(&line) {
                            Ok(v) => {
                                report(&v, &shared);
                                verdict.set(v);
                            }
                            Err(error) => debug!(error = %error, "ignored a control line from the coordinator"),
                        }
                    }
                    if incoming.len() > MAX_LINE {
                        incoming.clear();
                    }
                }
                Some(_) => {}
            },
            _ = ticker.tick() => {
                let line = Message::Heartbeat { running: shared.running.load(Ordering::Acquire) }.encode();
                if tx.data_bytes(line).await.is_err() {
                    conn.cancel();
                    return;
                }
            }
        }
    }
}

/// Logs the coordinator's verdict.
fn report(verdict: &Verdict, shared: &Shared) {
    match verdict {
        Verdict::Admitted => info!(name = %shared.config.name, "admitted by the coordinator"),
        Verdict::Refused { reason, message } => {
            let text = explain(*reason, &shared.config, shared.fingerprint);
            warn!(reason = %reason, coordinator = message.as_str(), "{text}");
        }
    }
}

/// Says in plain words what the coordinator refused and what has to happen for the agent to
/// get in.
fn explain(reason: Refusal, config: &AgentConfig, fingerprint: Fingerprint) -> String {
    let name = &config.name;
    let key = config.state_dir.join(AGENT_KEY_FILE);
    let token = config.token_file.as_deref().map_or_else(
        || "no --token-file is set".to_owned(),
        |p| format!("the token is read from {}", p.display()),
    );
    match reason {
        Refusal::KeyRevoked => format!(
            "the coordinator refused this agent's key {fingerprint}: it was revoked, and a \
             revoked key is refused for good. To come back, an operator runs `reconix builders \
             admit {name}`; then delete {} (a new key is made at start) and restart with the \
             enrollment token",
            key.display()
        ),
        Refusal::NameRevoked => format!(
            "the coordinator refused the name {name}: it was revoked, and no key may use it until \
             an operator runs `reconix builders admit {name}`"
        ),
        Refusal::BadToken => format!(
            "the coordinator refused this agent: its key is not enrolled as {name} and the \
             enrollment token is missing or wrong ({token})"
        ),
        Refusal::EnrollmentClosed => {
            "the coordinator refused this agent: it does not enrol new agents".to_owned()
        }
        Refusal::Other => "the coordinator refused this agent".to_owned(),
    }
}

/// Pumps one `nix-store --serve` process through its channel until either ends.
async fn serve(channel: Channel<Msg>, mut child: Child, slot: Slot) {
    let (mut rx, tx) = channel.split();
    let stdin = child.stdin.take();
    // Closures arrive through stdin, results leave through stdout.
    if let Some(pipe) = &stdin {
        reconix_nixcli::widen_pipe(pipe);
    }
    if let Some(pipe) = &child.stdout {
        reconix_nixcli::widen_pipe(pipe);
    }
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let exited = {
        let input = pump_input(&mut rx, stdin);
        let output = async {
            let mut out = tx.make_writer();
            let mut err = tx.make_writer_ext(Some(1));
            let copy_out = async {
                if let Some(mut stdout) = stdout {
                    let _ = tokio::io::copy(&mut stdout, &mut out).await;
                }
            };
            let copy_err = async {
                if let Some(stderr) = stderr {
                    forward_log(stderr, &mut err).await;
                }
            };
            tokio::join!(copy_out, copy_err);
            child.wait().await
        };
        tokio::select! {
            status = output => Some(status),
            () = input => None,
        }
    };
    match exited {
        Some(status) => {
            let code = status.map_or(255, exit_code);
            debug!(code, "serve process exited");
            // The process is gone: its slot is free before the coordinator hears the end of
            // the channel (the log's end), so the next build it sends at once is not refused
            // as beyond max-jobs.
            drop(slot);
            let _ = tx.eof().await;
            let _ = tx.exit_status(code).await;
            let _ = tx.close().await;
        }
        None => {
            debug!("serve channel closed by the coordinator; stopping the process");
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
}

/// Feeds channel data to the process's stdin; closes stdin on EOF; returns when the channel
/// closes.
async fn pump_input(
    rx: &mut russh::ChannelReadHalf,
    mut stdin: Option<tokio::process::ChildStdin>,
) {
    while let Some(msg) = rx.wait().await {
        match msg {
            ChannelMsg::Data { data } => {
                if let Some(pipe) = stdin.as_mut()
                    && pipe.write_all(&data).await.is_err()
                {
                    // The process is gone; its exit is reported by the output side. Keep
                    // draining so the connection does not stall.
                    stdin = None;
                }
            }
            ChannelMsg::Eof => stdin = None,
            ChannelMsg::Close => return,
            _ => {}
        }
    }
}

fn exit_code(status: ExitStatus) -> u32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => u32::try_from(code).unwrap_or(255),
        (None, Some(signal)) => 128 + u32::try_from(signal).unwrap_or(127),
        (None, None) => 255,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AgentConfig {
        let mut config = AgentConfig::new(
            "ci:7070",
            "/var/lib/reconix-agent",
            BuilderName::new("arm1").unwrap(),
        );
        config.token_file = Some(PathBuf::from("/run/secrets/enroll"));
        config
    }

    #[test]
    fn a_refusal_should_be_explained_with_what_the_operator_has_to_do() {
        let fp =
            keys::parse_fingerprint("SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").unwrap();
        let key = explain(Refusal::KeyRevoked, &config(), fp);
        assert!(
            key.contains("refused this agent's key SHA256:AAAA")
                && key.contains("revoked")
                && key.contains("reconix builders admit arm1")
                && key.contains("delete /var/lib/reconix-agent/agent_ed25519"),
            "{key}"
        );
        let name = explain(Refusal::NameRevoked, &config(), fp);
        assert!(
            name.contains("refused the name arm1") && name.contains("reconix builders admit arm1"),
            "{name}"
        );
        let token = explain(Refusal::BadToken, &config(), fp);
        assert!(
            token.contains("token is missing or wrong")
                && token.contains("read from /run/secrets/enroll"),
            "{token}"
        );
        let mut untokened = config();
        untokened.token_file = None;
        assert!(explain(Refusal::BadToken, &untokened, fp).contains("no --token-file is set"));
        assert!(explain(Refusal::EnrollmentClosed, &config(), fp).contains("does not enrol"));
        assert!(explain(Refusal::Other, &config(), fp).contains("refused this agent"));
    }
}
