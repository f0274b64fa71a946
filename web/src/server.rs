//! The HTTP server loop: accepts connections, serves the router on each, and keeps idle and slow
//! clients from holding the port.
//!
//! The port faces the internet (forges must reach it) and opening a socket needs no signature,
//! so every connection is tracked in a [`Table`] with its [`Phase`] and when it entered it:
//! - a connection that has not sent a complete request head within `http.header-timeout`, a
//!   request body not complete within `http.body-timeout`, or a kept-alive connection idle for
//!   `http.idle-timeout` is closed by a sweeper;
//! - at most [`connection_cap`] connections are open (below the open-file limit, with a reserve
//!   for the database, logs, Nix and agents); a new connection beyond it takes the slot of the
//!   connection that has waited longest without a request in flight, then of the slowest request
//!   body ([`victim`]). Idle peers therefore cannot lock out `/healthz`, the API or a delivery: a
//!   fresh request is always the youngest connection and is served before its turn to be
//!   evicted could come;
//! - an `accept` that fails for want of file descriptors evicts the same way, and its warning is
//!   rate-limited.
//!
//! The tracking is done by wrapping the request and response bodies: the request body's end
//! moves a connection from `ReadingBody` to `Responding`, the response body's end (or drop) back
//! to `Idle`. A streamed response (the live log) stays `Responding` and is never timed out.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{Request, Response};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use reconix_spec::Http;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;
use tracing::{debug, warn};

use crate::ratelimit::LogLimiter;

/// Connections told to close whose tasks have not ended yet, at most, before accepting more.
const MAX_DYING: usize = 32;

/// How long in-flight requests may take to finish after shutdown was asked for.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Open files kept for everything but HTTP clients: the database and its WAL, build logs, Nix
/// build channels (three pipes each), git, forge clients and agents. A quarter of the limit, at
/// least this many.
const MIN_FD_RESERVE: u64 = 128;

/// Returns how many HTTP connections may be open at once: `max_connections`, lowered to leave a
/// quarter of the open-file limit `fd_limit` (at least [`MIN_FD_RESERVE`]) to the rest of the
/// daemon. At least 16, so a tiny limit still serves `/healthz`.
pub fn connection_cap(max_connections: u32, fd_limit: Option<u64>) -> usize {
    let wanted = u64::from(max_connections);
    let cap = match fd_limit {
        Some(limit) => wanted.min(limit.saturating_sub((limit / 4).max(MIN_FD_RESERVE))),
        None => wanted,
    };
    usize::try_from(cap.max(16)).unwrap_or(usize::MAX)
}

/// Where a connection is in its request cycle; the order is the eviction preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    /// Connected, no request yet (a request head may be on its way).
    AwaitingHead,
    /// Kept alive between requests.
    Idle,
    /// A request head arrived; its body has not ended.
    ReadingBody,
    /// The request was read; the response is being produced or sent.
    Responding,
}

/// The server's limits, taken from the spec at each accept and sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    header: Duration,
    body: Duration,
    idle: Duration,
    cap: usize,
}

impl Limits {
    pub(crate) fn new(http: &Http, fd_limit: Option<u64>) -> Self {
        Self {
            header: http.header_timeout.to_std(),
            body: http.body_timeout.to_std(),
            idle: http.idle_timeout.to_std(),
            cap: connection_cap(http.max_connections, fd_limit),
        }
    }

    /// Returns how long a connection may stay in `phase`; `None`: as long as it likes.
    pub(crate) fn allowed(&self, phase: Phase) -> Option<Duration> {
        match phase {
            Phase::AwaitingHead => Some(self.header),
            Phase::Idle => Some(self.idle),
            Phase::ReadingBody => Some(self.body),
            Phase::Responding => None,
        }
    }
}

/// Returns the connection to close for a new one: the lowest [`Phase`], and within it the one
/// that entered it first. `None` when there is none.
pub(crate) fn victim(conns: impl IntoIterator<Item = (u64, Phase, Instant)>) -> Option<u64> {
    conns
        .into_iter()
        .min_by_key(|&(id, phase, since)| (phase, since, id))
        .map(|(id, ..)| id)
}

/// Returns the connections that stayed in their phase longer than `limits` allow at `now`.
pub(crate) fn expired(
    conns: impl IntoIterator<Item = (u64, Phase, Instant)>,
    limits: &Limits,
    now: Instant,
) -> Vec<u64> {
    conns
        .into_iter()
        .filter(|&(_, phase, since)| {
            limits
                .allowed(phase)
                .is_some_and(|allowed| now.saturating_duration_since(since) > allowed)
        })
        .map(|(id, ..)| id)
        .collect()
}

#[derive(Debug)]
struct Entry {
    phase: Phase,
    since: Instant,
    kill: CancellationToken,
    /// Told to close; its task has not ended yet, so it still holds its file descriptor.
    dying: bool,
}

/// The open connections by id, and how many of them were told to close.
#[derive(Debug, Default)]
struct Conns {
    map: HashMap<u64, Entry>,
    /// Entries with `dying` set: counted apart so that admitting stays O(1) but for evictions.
    dying: usize,
}

impl Conns {
    /// The connections not told to close yet, as [`victim`] and [`expired`] take them.
    fn alive(&self) -> impl Iterator<Item = (u64, Phase, Instant)> + '_ {
        self.map
            .iter()
            .filter(|(_, e)| !e.dying)
            .map(|(id, e)| (*id, e.phase, e.since))
    }

    fn alive_count(&self) -> usize {
        self.map.len() - self.dying
    }

    /// Tells connection `id` to close; false when it is gone or already closing.
    fn kill(&mut self, id: u64) -> bool {
        match self.map.get_mut(&id) {
            Some(entry) if !entry.dying => {
                entry.dying = true;
                entry.kill.cancel();
                self.dying += 1;
                true
            }
            _ => false,
        }
    }
}

/// The open connections. A closed connection stays counted until its task has ended (and its
/// socket is closed), so the count bounds the file descriptors really in use.
#[derive(Debug, Default)]
struct Table {
    conns: Mutex<Conns>,
    next_id: std::sync::atomic::AtomicU64,
    /// Notified whenever a connection's task ends.
    freed: tokio::sync::Notify,
}

impl Table {
    fn lock(&self) -> std::sync::MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a new connection, first telling as many others to close as needed to keep
    /// fewer than `cap` alive. Returns its id, its kill switch and how many were told to close.
    fn admit(&self, cap: usize) -> (u64, CancellationToken, usize) {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let kill = CancellationToken::new();
        let mut conns = self.lock();
        let mut evicted = 0;
        while conns.alive_count() >= cap {
            let Some(victim) = victim(conns.alive()) else {
                break;
            };
            if conns.kill(victim) {
                evicted += 1;
            }
        }
        conns.map.insert(
            id,
            Entry {
                phase: Phase::AwaitingHead,
                since: Instant::now(),
                kill: kill.clone(),
                dying: false,
            },
        );
        (id, kill, evicted)
    }

    /// Tells the connection [`victim`] names to close, to free a file descriptor.
    fn evict_one(&self) -> bool {
        let mut conns = self.lock();
        victim(conns.alive()).is_some_and(|id| conns.kill(id))
    }

    /// Tells the connections that overstayed their phase to close; returns how many.
    fn sweep(&self, limits: &Limits) -> usize {
        let mut conns = self.lock();
        let late = expired(conns.alive(), limits, Instant::now());
        late.into_iter().filter(|id| conns.kill(*id)).count()
    }

    fn set(&self, id: u64, phase: Phase) {
        if let Some(entry) = self.lock().map.get_mut(&id)
            && entry.phase != phase
        {
            entry.phase = phase;
            entry.since = Instant::now();
        }
    }

    /// Forgets a connection whose task ended (its socket is closed).
    fn remove(&self, id: u64) {
        {
            let mut conns = self.lock();
            if conns.map.remove(&id).is_some_and(|entry| entry.dying) {
                conns.dying = conns.dying.saturating_sub(1);
            }
        }
        self.freed.notify_waiters();
    }

    fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Returns how many connections were told to close but still hold their socket.
    fn dying(&self) -> usize {
        self.lock().dying
    }

    /// Tells every connection to close (after the shutdown grace period).
    fn kill_all(&self) {
        let mut conns = self.lock();
        let ids: Vec<u64> = conns.map.keys().copied().collect();
        for id in ids {
            conns.kill(id);
        }
    }
}

/// One connection's handle on the table.
#[derive(Debug, Clone)]
struct Slot {
    id: u64,
    table: Arc<Table>,
}

impl Slot {
    fn set(&self, phase: Phase) {
        self.table.set(self.id, phase);
    }
}

/// A request body that moves its connection to `Responding` when it ends.
struct TrackedRequest {
    inner: Incoming,
    slot: Slot,
}

impl hyper::body::Body for TrackedRequest {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) || self.inner.is_end_stream() {
            self.slot.set(Phase::Responding);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that moves its connection to `Idle` once it is sent (or dropped).
struct TrackedResponse {
    inner: Body,
    slot: Slot,
}

impl hyper::body::Body for TrackedResponse {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TrackedResponse {
    fn drop(&mut self) {
        self.slot.set(Phase::Idle);
    }
}

/// The router behind one connection: tracks the phases and tells handlers the peer's address.
#[derive(Clone)]
struct Tracked {
    router: Router,
    slot: Slot,
    peer: SocketAddr,
}

impl Service<Request<Incoming>> for Tracked {
    type Response = Response<TrackedResponse>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let slot = self.slot.clone();
        slot.set(if hyper::body::Body::is_end_stream(req.body()) {
            Phase::Responding
        } else {
            Phase::ReadingBody
        });
        let mut req = req.map(|inner| {
            Body::new(TrackedRequest {
                inner,
                slot: slot.clone(),
            })
        });
        req.extensions_mut().insert(ConnectInfo(self.peer));
        let mut router = self.router.clone();
        Box::pin(async move {
            let response = router.call(req).await?;
            // Whatever the handler did with the body, it is done with it.
            slot.set(Phase::Responding);
            Ok(response.map(|inner| TrackedResponse { inner, slot }))
        })
    }
}

/// The listen backlog asked for: connections the kernel completes before `accept` takes them.
/// The default of Rust's standard library (128) overflows under a burst of clients while the
/// accept loop closes idle ones, and an overflowing queue drops new connections' SYNs: they
/// wait a second for the retransmission. The kernel caps it at `net.core.somaxconn`.
const BACKLOG: u32 = 4096;

/// Binds `addr` for the HTTP server with a deep listen backlog ([`BACKLOG`]).
///
/// # Errors
/// Returns the error of creating, binding or listening on the socket.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// What the server needs besides the router.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The daemon's soft open-file limit, which caps the connections ([`connection_cap`]).
    pub fd_limit: Option<u64>,
}

/// Serves `router` on `listener` until `shutdown` completes, then lets in-flight requests finish
/// for a few seconds. `limits` is asked for the current `http` settings at every accept and sweep.
///
/// # Errors
/// Never today: accept errors are logged and waited out. The signature keeps room for a fatal one.
pub(crate) async fn run(
    listener: TcpListener,
    router: Router,
    limits: impl Fn() -> Http + Send + Sync + 'static,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let table = Arc::new(Table::default());
    let current = {
        let fd_limit = config.fd_limit;
        move || Limits::new(&limits(), fd_limit)
    };
    let current = Arc::new(current);
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    tasks.spawn(sweep(
        Arc::clone(&table),
        Arc::clone(&current),
        stop.clone(),
    ));
    let accept_errors = LogLimiter::default();
    // Every wait below also ends the whole loop on shutdown: a finished future is never polled
    // again.
    tokio::pin!(shutdown);
    'accept: loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break 'accept,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let limits = current();
                let (id, kill, evicted) = table.admit(limits.cap);
                if evicted > 0 {
                    debug!(
                        evicted,
                        cap = limits.cap,
                        "connection cap reached: closed the longest-waiting"
                    );
                }
                let slot = Slot {
                    id,
                    table: Arc::clone(&table),
                };
                let service = Tracked {
                    router: router.clone(),
                    slot,
                    peer,
                };
                tasks.spawn(connection(
                    stream,
                    service,
                    Arc::clone(&table),
                    id,
                    kill,
                    stop.clone(),
                ));
                // Closed connections hold their descriptors until their tasks run: with many
                // of them pending, let them go before accepting more (new ones wait in the
                // kernel's queue meanwhile), so the open files stay near the cap.
                while table.dying() > MAX_DYING {
                    let freed = table.freed.notified();
                    if table.dying() <= MAX_DYING {
                        break;
                    }
                    // `freed` was created before the check, so an end in between is not missed.
                    tokio::select! {
                        () = &mut shutdown => break 'accept,
                        () = freed => {}
                    }
                }
            }
            Err(err) => {
                // Out of file descriptors (EMFILE/ENFILE) or a connection reset before accept:
                // free a slot if we hold idle ones, say so at most once a minute, and give the
                // system a moment rather than spinning on the same error.
                let freed = table.evict_one();
                if let Some(suppressed) = accept_errors.check("accept", std::time::Instant::now()) {
                    warn!(error = %err, freed, suppressed, open = table.len(), "cannot accept a connection");
                }
                tokio::select! {
                    () = &mut shutdown => break 'accept,
                    () = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        }
    }
    drop(listener);
    stop.cancel();
    tasks.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait())
        .await
        .is_err()
    {
        debug!(
            open = table.len(),
            "closing connections still open after the grace period"
        );
        table.kill_all();
        tasks.wait().await;
    }
    Ok(())
}

/// Closes connections that overstayed their phase, a few times per shortest limit.
async fn sweep<F: Fn() -> Limits>(table: Arc<Table>, limits: Arc<F>, stop: CancellationToken) {
    loop {
        let current = limits();
        let shortest = current.header.min(current.body).min(current.idle);
        let every = (shortest / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let closed = table.sweep(&current);
        if closed > 0 {
            debug!(
                closed,
                "closed connections that were idle or slow for too long"
            );
        }
    }
}

/// Serves one connection until it ends, is killed (evicted or timed out), or shutdown.
async fn connection(
    stream: TcpStream,
    service: Tracked,
    table: Arc<Table>,
    id: u64,
    kill: CancellationToken,
    stop: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(err) = result {
                debug!(error = %err, "connection ended with an error");
            }
        }
        () = kill.cancelled() => {}
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = conn.as_mut() => {}
                () = kill.cancelled() => {}
            }
        }
    }
    table.remove(id);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, secs: u64) -> Instant {
        base + Duration::from_secs(secs)
    }

    fn limits() -> Limits {
        Limits::new(&Http::default(), None)
    }

    #[test]
    fn the_cap_should_leave_a_quarter_of_the_file_limit_to_the_rest_of_the_daemon() {
        assert_eq!(connection_cap(1024, Some(1024)), 768);
        assert_eq!(connection_cap(1024, Some(65_536)), 1024, "the spec's cap");
        assert_eq!(connection_cap(1024, Some(256)), 128, "at least 128 kept");
        assert_eq!(connection_cap(1024, Some(100)), 16, "never below 16");
        assert_eq!(connection_cap(1024, None), 1024);
    }

    #[test]
    fn the_victim_should_be_the_longest_waiting_connection_without_a_request() {
        let t = Instant::now();
        let conns = [
            (1, Phase::Responding, at(t, 0)),
            (2, Phase::Idle, at(t, 1)),
            (3, Phase::AwaitingHead, at(t, 5)),
            (4, Phase::AwaitingHead, at(t, 3)),
            (5, Phase::ReadingBody, at(t, 0)),
        ];
        assert_eq!(victim(conns), Some(4));
        assert_eq!(
            victim(conns.into_iter().filter(|c| c.1 != Phase::AwaitingHead)),
            Some(2)
        );
        assert_eq!(
            victim(conns.into_iter().filter(|c| c.1 >= Phase::ReadingBody)),
            Some(5),
            "then the slowest body"
        );
        assert_eq!(
            victim(conns.into_iter().filter(|c| c.1 == Phase::Responding)),
            Some(1)
        );
        assert_eq!(victim([]), None);
    }

    #[test]
    fn connections_should_expire_by_their_phase_and_a_response_never() {
        let t = Instant::now();
        let l = limits();
        let conns = [
            (1, Phase::AwaitingHead, at(t, 0)),
            (2, Phase::ReadingBody, at(t, 0)),
            (3, Phase::Idle, at(t, 0)),
            (4, Phase::Responding, at(t, 0)),
        ];
        assert_eq!(
            expired(conns, &l, at(t, 5)),
            Vec::<u64>::new(),
            "at the limit"
        );
        assert_eq!(expired(conns, &l, at(t, 6)), vec![1], "header-timeout 5s");
        let mut late = expired(conns, &l, at(t, 31));
        late.sort_unstable();
        assert_eq!(late, vec![1, 2, 3], "body 10s, idle 30s; responding never");
    }

    #[tokio::test]
    async fn admitting_beyond_the_cap_should_close_the_longest_waiting_connection() {
        let table = Table::default();
        let (first, first_kill, _) = table.admit(16);
        let mut kills = vec![first_kill];
        for _ in 1..16 {
            let (id, kill, evicted) = table.admit(16);
            assert_eq!(evicted, 0);
            table.set(id, Phase::Responding);
            kills.push(kill);
        }
        let (_, newer, evicted) = table.admit(16);
        assert_eq!(evicted, 1);
        assert!(kills[0].is_cancelled(), "the only one without a request");
        assert!(kills[1..].iter().all(|k| !k.is_cancelled()));
        assert_eq!(
            (table.len(), table.dying()),
            (17, 1),
            "counted until its task ends"
        );
        let (_, _, evicted) = table.admit(16);
        assert_eq!(evicted, 1, "a dying one is not chosen again");
        assert!(newer.is_cancelled(), "then the one still without a request");
        assert!(kills[1..].iter().all(|k| !k.is_cancelled()));
        table.remove(first);
        assert_eq!((table.len(), table.dying()), (17, 1));
    }
}
