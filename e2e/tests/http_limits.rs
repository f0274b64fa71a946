//! The HTTP port under idle and slow clients: 1,100 connections that send part of a request and
//! stop, held open (re-opened when the daemon closes them) against a daemon whose open-file limit
//! is 1,024, while `/healthz` and a signed delivery must keep answering within a second; the
//! stalled connections are closed by the header and body timeouts; an announced oversized body
//! gets 413 at once; an idle kept-alive connection is closed; the daemon raises its soft
//! open-file limit to the hard one.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use reconix_e2e::{DaemonConfig, TestDaemon};
use reconix_spec::Secret;

const SECRET: &str = "a webhook secret";
const STALLED: usize = 1100;
/// The answer time the issue asks for, under attack.
const ANSWER_WITHIN: Duration = Duration::from_secs(1);
/// Generous: the daemon closes stalled connections after 2 s (the spec below); before the fix
/// they stayed open for more than 60 s.
const CLOSED_WITHIN: Duration = Duration::from_secs(20);
const DEADLINE: Duration = Duration::from_secs(180);

fn spec(secrets: &Path) -> DaemonConfig {
    let s = secrets.display();
    DaemonConfig {
        spec: format!(
            "\
state-dir: {{state_dir}}
external-url: http://127.0.0.1:{{port}}
http:
  header-timeout: 2s
  body-timeout: 2s
  idle-timeout: 2s
forges:
  gh:
    kind: github
    # Nothing listens there: the loops' API calls fail, the intake never calls the forge.
    api-url: http://127.0.0.1:9
    token-file: {s}/token
    webhook-secret-file: {s}/secret
    repos:
      acme/widgets: {{}}
"
        ),
    }
}

fn secrets() -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("token"), "a token\n")?;
    std::fs::write(dir.path().join("secret"), format!("{SECRET}\n"))?;
    Ok(dir)
}

/// Returns the soft and hard open-file limits of process `pid`.
fn nofile(pid: u32) -> Result<(u64, u64)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .context("no open-file line in /proc/PID/limits")?;
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    match numbers[..] {
        [soft, hard, ..] => Ok((soft, hard)),
        _ => bail!("unreadable limits line: {line}"),
    }
}

/// Sends `request` on a fresh connection and returns the status code, failing when the whole
/// exchange takes longer than [`ANSWER_WITHIN`].
fn answer_within(addr: &str, request: &[u8]) -> Result<(u16, Duration)> {
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr.parse()?, ANSWER_WITHIN)?;
    s.set_read_timeout(Some(ANSWER_WITHIN))?;
    s.set_write_timeout(Some(ANSWER_WITHIN))?;
    s.write_all(request)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .with_context(|| format!("no complete answer within {ANSWER_WITHIN:?}"))?;
    let took = start.elapsed();
    ensure!(
        took <= ANSWER_WITHIN,
        "answered after {took:?}, more than {ANSWER_WITHIN:?}"
    );
    let text = String::from_utf8_lossy(&buf);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status line in {text:?}"))?;
    Ok((code, took))
}

fn healthz(addr: &str) -> Vec<u8> {
    format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").into_bytes()
}

/// A signed GitHub `ping` delivery: verified, recorded as ignored, answered 202.
fn delivery(addr: &str, id: u64) -> Vec<u8> {
    let body = br#"{"zen":"Keep it logically awesome.","hook_id":1}"#;
    let hex = reconix_forge::verify::hmac_sha256_hex(&Secret::new(SECRET), body);
    let mut req = format!(
        "POST /webhooks/gh HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nX-GitHub-Event: ping\r\n\
         X-GitHub-Delivery: probe-{id}\r\nX-Hub-Signature-256: sha256={hex}\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

/// The attackers' counters.
#[derive(Default)]
struct Attack {
    /// Connections opened, re-openings included.
    opened: AtomicU64,
    /// Connections the daemon closed.
    closed: AtomicU64,
    /// The longest time a first-generation connection stayed open, in milliseconds.
    longest_first_ms: AtomicU64,
    /// First-generation connections not closed yet.
    first_open: AtomicU64,
    stop: AtomicBool,
}

/// One stalled client: half send part of a request head, half a whole head announcing a body
/// that never comes. Re-opens 100 ms after the daemon closes it, until told to stop.
async fn stall(addr: String, n: usize, attack: Arc<Attack>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stall: &[u8] = if n.is_multiple_of(2) {
        b"GET /api/v1/status HTTP/1.1\r\nHost: x\r\nUser-Agent: slow"
    } else {
        b"POST /webhooks/gh HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"
    };
    let mut first = true;
    while !attack.stop.load(Ordering::SeqCst) {
        let Ok(mut s) = tokio::net::TcpStream::connect(&addr).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let opened = Instant::now();
        attack.opened.fetch_add(1, Ordering::SeqCst);
        let _ = s.write_all(stall).await;
        let mut buf = [0u8; 4096];
        // Until the daemon closes it (EOF or reset); the test's end drops the task.
        while let Ok(n) = s.read(&mut buf).await
            && n > 0
        {}
        attack.closed.fetch_add(1, Ordering::SeqCst);
        if first {
            first = false;
            let ms = u64::try_from(opened.elapsed().as_millis()).unwrap_or(u64::MAX);
            attack.longest_first_ms.fetch_max(ms, Ordering::SeqCst);
            attack.first_open.fetch_sub(1, Ordering::SeqCst);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn the_http_port_should_keep_answering_while_1100_stalled_clients_hold_it() -> Result<()> {
    // This process holds 1,100 sockets itself.
    rlimit::increase_nofile_limit(4096).context("raising this test's open-file limit")?;
    let secrets = secrets()?;
    let d = TestDaemon::start_under(
        &spec(secrets.path()),
        &["prlimit", "--nofile=1024:1024", "--"],
    )?;
    let pid = d.pid().context("no daemon pid")?;
    ensure!(
        nofile(pid)? == (1024, 1024),
        "the daemon runs at 1,024 open files"
    );
    let addr = d.url().strip_prefix("http://").context("url")?.to_owned();
    // Answers before the attack, so a failure below is the attack's doing.
    ensure!(answer_within(&addr, &healthz(&addr))?.0 == 200);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let attack = Arc::new(Attack::default());
    attack.first_open.store(STALLED as u64, Ordering::SeqCst);
    for n in 0..STALLED {
        rt.spawn(stall(addr.clone(), n, Arc::clone(&attack)));
    }
    let start = Instant::now();
    while attack.opened.load(Ordering::SeqCst) < STALLED as u64 {
        ensure!(
            start.elapsed() < DEADLINE,
            "the stalled clients never all connected"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Probe throughout: until every first-generation connection was closed and 1,100 more
    // were opened and closed after it, at least 40 rounds.
    let mut rounds = 0u64;
    let mut slowest = Duration::ZERO;
    loop {
        let (code, took) = answer_within(&addr, &healthz(&addr))
            .with_context(|| format!("/healthz in round {rounds}; daemon log:\n{}", d.log()))?;
        ensure!(code == 200, "/healthz answered {code}");
        let (code, took2) = answer_within(&addr, &delivery(&addr, rounds))
            .with_context(|| format!("a delivery in round {rounds}; daemon log:\n{}", d.log()))?;
        ensure!(code == 202, "the delivery was answered {code}");
        slowest = slowest.max(took).max(took2);
        rounds += 1;
        let done = attack.first_open.load(Ordering::SeqCst) == 0
            && attack.closed.load(Ordering::SeqCst) >= 2 * STALLED as u64;
        if rounds >= 40 && done {
            break;
        }
        ensure!(
            start.elapsed() < DEADLINE,
            "stalled connections are not being closed: {} of the first {STALLED} still open",
            attack.first_open.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let longest = Duration::from_millis(attack.longest_first_ms.load(Ordering::SeqCst));
    eprintln!(
        "{rounds} probe rounds, slowest answer {slowest:?}; {} stalled connections opened, {} closed by the daemon, the first ones within {longest:?}",
        attack.opened.load(Ordering::SeqCst),
        attack.closed.load(Ordering::SeqCst)
    );
    ensure!(
        longest <= CLOSED_WITHIN,
        "a stalled connection stayed open for {longest:?}"
    );
    attack.stop.store(true, Ordering::SeqCst);
    rt.shutdown_timeout(Duration::from_secs(5));

    let log = d.log();
    let emfile = log.matches("Too many open files").count();
    ensure!(
        emfile <= 4,
        "the log should say `Too many open files` at most once a minute, said it {emfile} times"
    );
    Ok(())
}

#[test]
fn an_oversized_body_should_get_413_at_once_and_an_idle_connection_should_be_closed() -> Result<()>
{
    let secrets = secrets()?;
    // A soft limit below the hard one: the daemon raises it.
    let d = TestDaemon::start_under(
        &spec(secrets.path()),
        &["prlimit", "--nofile=1024:4096", "--"],
    )?;
    let pid = d.pid().context("no daemon pid")?;
    ensure!(
        nofile(pid)? == (4096, 4096),
        "the soft open-file limit is raised to the hard one"
    );
    let addr = d.url().strip_prefix("http://").context("url")?.to_owned();

    // 40 MiB announced, 2 bytes sent: the answer comes without the rest.
    let mut s = TcpStream::connect(&addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "POST /webhooks/gh HTTP/1.1\r\nHost: {addr}\r\nX-GitHub-Event: push\r\n\
         Content-Length: 41943040\r\n\r\n{{}}"
    )?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    ensure!(
        text.starts_with("HTTP/1.1 413"),
        "expected 413 at once, got {text:?}"
    );
    ensure!(
        text.contains("larger than the limit"),
        "a JSON reason: {text:?}"
    );

    // Refused deliveries (a wrong signature) from one source: one log line a minute, counted.
    for n in 0..50 {
        let mut s = TcpStream::connect(&addr)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let body = b"{}";
        write!(
            s,
            "POST /webhooks/gh HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             X-GitHub-Event: ping\r\nX-GitHub-Delivery: bad-{n}\r\n\
             X-Hub-Signature-256: sha256={}\r\nContent-Length: 2\r\n\r\n",
            "0".repeat(64)
        )?;
        s.write_all(body)?;
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        ensure!(answer.starts_with("HTTP/1.1 401"), "refused: {answer:?}");
    }
    let refusals = d.log().matches("webhook delivery refused").count();
    ensure!(
        refusals == 1,
        "50 refused deliveries from one source should log one line, logged {refusals}"
    );

    // A kept-alive connection is closed once idle for `idle-timeout` (2 s).
    let mut s = TcpStream::connect(&addr)?;
    s.set_read_timeout(Some(CLOSED_WITHIN))?;
    write!(s, "GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n")?;
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    let start = Instant::now();
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(err) => bail!("the idle connection was not closed: {err}"),
        }
    }
    let idle = start.elapsed();
    let text = String::from_utf8_lossy(&got);
    ensure!(text.starts_with("HTTP/1.1 200"), "answered first: {text:?}");
    ensure!(
        idle >= Duration::from_secs(2) && idle <= CLOSED_WITHIN,
        "closed after {idle:?} idle"
    );
    Ok(())
}
