//! Remote builders enrolling with the real daemon and the real `reconix-agent`: a token enrols
//! an agent (heartbeats recorded), a wrong token is refused and nothing is recorded, later
//! connections need the key alone; a revoked agent is refused for good, even with its token,
//! until an operator admits its name and it comes back with a new key; a rotated token refuses
//! the old one and leaves enrolled agents alone; and neither a flood of silent connections nor
//! running out of file descriptors keeps an agent out.

use std::io::Read;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use reconix_e2e::{
    AgentProcess, DEADLINE, DaemonConfig, TestDaemon, enroll_addr, reconix_bin, run,
};
use serde_json::Value;

const TOKEN: &str = "s3cret-enrollment-token";

fn start_agent(coordinator: &str, dir: &Path, name: &str) -> Result<AgentProcess> {
    AgentProcess::start(coordinator, dir, name, &[])
}

/// Starts a daemon whose enrollment token file holds `token`; returns it with the file.
fn daemon(tmp: &Path, token: &str) -> Result<(TestDaemon, std::path::PathBuf)> {
    let file = tmp.join("enrollment-token");
    std::fs::write(&file, format!("{token}\n"))?;
    let d = TestDaemon::start(&DaemonConfig {
        spec: format!(
            "state-dir: {{state_dir}}\nbuilders:\n  enrollment:\n    listen: 127.0.0.1:{{enroll_port}}\n    token-file: {}\n",
            file.display()
        ),
    })?;
    Ok((d, file))
}

/// Creates an agent directory holding `token` (none when `None`).
fn agent_dir(tmp: &Path, name: &str, token: Option<&str>) -> Result<std::path::PathBuf> {
    let dir = tmp.join(name);
    std::fs::create_dir_all(&dir)?;
    if let Some(token) = token {
        std::fs::write(dir.join("token"), token)?;
    }
    Ok(dir)
}

fn builders(d: &TestDaemon) -> Result<Vec<Value>> {
    let out = run(Command::new(reconix_bin()?)
        .args(["builders", "list", "--output", "json", "--spec"])
        .arg(d.spec_path()))?;
    Ok(serde_json::from_str::<Value>(&out)?
        .as_array()
        .cloned()
        .unwrap_or_default())
}

fn builder(d: &TestDaemon, name: &str) -> Result<Option<Value>> {
    Ok(builders(d)?.into_iter().find(|b| b["name"] == name))
}

/// Runs `reconix builders VERB NAME --by e2e` and returns its stdout.
fn builders_verb(d: &TestDaemon, verb: &str, name: &str) -> Result<String> {
    run(Command::new(reconix_bin()?)
        .args(["builders", verb, "--by", "e2e", "--spec"])
        .arg(d.spec_path())
        .arg(name))
}

/// Returns `text` without ANSI colour codes (the agent's log is coloured).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Returns the `retry_in` delays the agent logged after refusals, in order.
fn refusal_delays(agent: &AgentProcess) -> Vec<Duration> {
    plain(&agent.log())
        .lines()
        .filter(|l| l.contains("refused by the coordinator; trying again later"))
        .filter_map(|l| {
            let value = l.split("retry_in=").nth(1)?.split_whitespace().next()?;
            parse_debug_duration(value)
        })
        .collect()
}

/// Parses a `Duration`'s `Debug` form (`1.234567s`, `850.1ms`).
fn parse_debug_duration(text: &str) -> Option<Duration> {
    let (number, scale) = if let Some(ms) = text.strip_suffix("ms") {
        (ms, 1e-3)
    } else if let Some(us) = text.strip_suffix("µs") {
        (us, 1e-6)
    } else {
        (text.strip_suffix('s')?, 1.0)
    };
    number
        .parse::<f64>()
        .ok()
        .map(|n| Duration::from_secs_f64(n * scale))
}

#[test]
fn agents_should_enrol_with_a_token_and_stay_refused_once_revoked() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (d, _) = daemon(tmp.path(), TOKEN)?;
    let coordinator = enroll_addr(&d)?;

    // A wrong token: refused, nothing recorded, and the agent says why.
    let bad = start_agent(
        &coordinator,
        &agent_dir(tmp.path(), "bad", Some("wrong"))?,
        "intruder",
    )?;
    d.wait_for("the wrong token to be refused", DEADLINE, |d| {
        Ok(d.log().contains("agent refused").then_some(()))
    })?;
    d.wait_for("the intruder to log its refusal", DEADLINE, |_| {
        Ok(plain(&bad.log())
            .contains("enrollment token is missing or wrong")
            .then_some(()))
    })?;
    ensure!(
        builder(&d, "intruder")?.is_none(),
        "a refused agent was recorded"
    );
    drop(bad);

    // The right token: enrolled, connected, heartbeats recorded.
    let a1_dir = agent_dir(tmp.path(), "a1", Some(TOKEN))?;
    let a1 = start_agent(&coordinator, &a1_dir, "a1")?;
    let row = d.wait_for("a1 to enrol and send heartbeats", DEADLINE, |d| {
        Ok(builder(d, "a1")?
            .filter(|b| !b["connected_at"].is_null() && !b["last_heartbeat_at"].is_null()))
    })?;
    ensure!(row["revoked_at"].is_null(), "{row}");
    let old_key = row["key_fingerprint"].clone();
    ensure!(plain(&a1.log()).contains("admitted by the coordinator"));

    // Later connections need the key alone.
    drop(a1);
    d.wait_for("a1 to be seen disconnected", DEADLINE, |d| {
        Ok(builder(d, "a1")?.filter(|b| b["connected_at"].is_null()))
    })?;
    std::fs::remove_file(a1_dir.join("token"))?;
    let a1 = start_agent(&coordinator, &a1_dir, "a1")?;
    d.wait_for("a1 to reconnect by key", DEADLINE, |d| {
        Ok(builder(d, "a1")?.filter(|b| !b["connected_at"].is_null()))
    })?;
    ensure!(builder(&d, "a1")?.is_some_and(|b| b["key_fingerprint"] == old_key));

    // Revoked: disconnected and told at once, and refused from then on although the agent has
    // the valid token again (it used to re-enrol with it a second later).
    std::fs::write(a1_dir.join("token"), TOKEN)?;
    let out = builders_verb(&d, "revoke", "a1")?;
    ensure!(out.contains("revoked a1"), "{out}");
    d.wait_for("a1 to be refused three times", DEADLINE, |_| {
        Ok((refusal_delays(&a1).len() >= 3).then_some(()))
    })?;
    let log = plain(&a1.log());
    ensure!(
        log.contains(&format!(
            "refused this agent's key {}",
            old_key.as_str().unwrap_or_default()
        )) && log.contains("reconix builders admit a1"),
        "the agent's log does not say its key was revoked:\n{log}"
    );
    // It backs off (1 s doubling, jittered over the upper half) instead of dialling every
    // second.
    let delays = refusal_delays(&a1);
    ensure!(
        delays[1] >= Duration::from_secs(1) && delays[2] >= Duration::from_secs(2),
        "retry delays after refusals: {delays:?}"
    );
    let row = builder(&d, "a1")?.context("a1 is gone")?;
    ensure!(
        row["state"] == "revoked" && row["connected_at"].is_null() && row["revoked_by"] == "e2e",
        "a revoked agent got back in: {row}"
    );

    // Admitted by an operator: the name may enrol again, but never with the revoked key.
    let refusals = refusal_delays(&a1).len();
    let out = builders_verb(&d, "admit", "a1")?;
    ensure!(out.contains("admitted a1"), "{out}");
    let row = builder(&d, "a1")?.context("a1 is gone")?;
    ensure!(
        row["state"] == "admitted" && row["admitted_by"] == "e2e" && row["admitted_at"].is_number(),
        "{row}"
    );
    d.wait_for(
        "the old key to be refused after the admission",
        DEADLINE,
        |_| Ok((refusal_delays(&a1).len() > refusals).then_some(())),
    )?;
    ensure!(
        builder(&d, "a1")?.is_some_and(|b| b["connected_at"].is_null()),
        "the revoked key got in after the admission"
    );

    // A new key (and the token): enrolled again.
    drop(a1);
    std::fs::remove_file(a1_dir.join("agent_ed25519"))?;
    let _a1 = start_agent(&coordinator, &a1_dir, "a1")?;
    let row = d.wait_for("a1 to enrol with a new key", DEADLINE, |d| {
        Ok(builder(d, "a1")?.filter(|b| b["state"] == "ready"))
    })?;
    ensure!(
        row["key_fingerprint"] != old_key && row["admitted_by"] == "e2e",
        "{row}"
    );
    Ok(())
}

#[test]
fn a_rotated_token_should_refuse_the_old_one_and_leave_enrolled_agents_alone() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (d, token_file) = daemon(tmp.path(), "first-token")?;
    let coordinator = enroll_addr(&d)?;
    let a1_dir = agent_dir(tmp.path(), "a1", Some("first-token"))?;
    let mut a1 = start_agent(&coordinator, &a1_dir, "a1")?;
    d.wait_for("a1 to enrol", DEADLINE, |d| {
        Ok(builder(d, "a1")?.filter(|b| b["state"] == "ready"))
    })?;

    // The operator writes a new token; no restart.
    std::fs::write(&token_file, "second-token\n")?;

    // An agent with the old token is refused…
    let a2_dir = agent_dir(tmp.path(), "a2", Some("first-token"))?;
    let a2 = start_agent(&coordinator, &a2_dir, "a2")?;
    d.wait_for("a2's old token to be refused", DEADLINE, |d| {
        Ok(d.log()
            .lines()
            .any(|l| l.contains("agent refused") && l.contains("a2"))
            .then_some(()))
    })?;
    ensure!(builder(&d, "a2")?.is_none(), "a2 was recorded");
    // …while a1, enrolled by key, stays connected and reconnects (its token file still holds
    // the old token) after a restart.
    a1.kill()?;
    d.wait_for("a1 to be seen disconnected", DEADLINE, |d| {
        Ok(builder(d, "a1")?.filter(|b| b["connected_at"].is_null()))
    })?;
    let _a1 = start_agent(&coordinator, &a1_dir, "a1")?;
    d.wait_for("a1 to reconnect by key", DEADLINE, |d| {
        Ok(builder(d, "a1")?.filter(|b| b["state"] == "ready"))
    })?;

    // The new token enrols a2.
    std::fs::write(a2_dir.join("token"), "second-token")?;
    d.wait_for("a2 to enrol with the new token", DEADLINE, |d| {
        Ok(builder(d, "a2")?.filter(|b| b["state"] == "ready"))
    })?;
    drop(a2);
    Ok(())
}

/// What a [`Flood`] saw.
#[derive(Debug, Default)]
struct FloodStats {
    /// Connections opened.
    opened: usize,
    /// Connections the daemon closed.
    closed: usize,
    /// The longest a connection lived before the daemon closed it.
    longest: Duration,
    /// The oldest connection still open when the flood stopped.
    oldest_open: Duration,
}

/// Silent TCP connections to the enrolment port, each re-opened as soon as the daemon closes
/// it.
struct Flood {
    /// Cleared to stop re-opening: each thread then waits for the daemon to close its last
    /// connection (for at most [`GIVE_UP`]).
    reopen: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    stats: Arc<Mutex<FloodStats>>,
}

/// How long a flood thread waits for the daemon to close its last connection.
const GIVE_UP: Duration = Duration::from_secs(30);

impl Flood {
    fn start(addr: &str, connections: usize) -> Result<Self> {
        let addr: std::net::SocketAddr = addr.parse()?;
        let reopen = Arc::new(AtomicBool::new(true));
        let stats = Arc::new(Mutex::new(FloodStats::default()));
        let threads = (0..connections)
            .map(|_| {
                let (reopen, stats) = (Arc::clone(&reopen), Arc::clone(&stats));
                std::thread::spawn(move || silent_connections(addr, &reopen, &stats))
            })
            .collect();
        Ok(Self {
            reopen,
            threads,
            stats,
        })
    }

    fn opened(&self) -> usize {
        self.stats.lock().map_or(0, |s| s.opened)
    }

    /// Stops re-opening and waits until the daemon has closed every connection (or each
    /// thread gave up after [`GIVE_UP`]).
    fn stop(self) -> FloodStats {
        self.reopen.store(false, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        Arc::try_unwrap(self.stats)
            .ok()
            .and_then(|m| m.into_inner().ok())
            .unwrap_or_default()
    }
}

/// One flood thread: keeps one silent connection open while `reopen`; then waits for the
/// daemon to close the last one.
fn silent_connections(addr: std::net::SocketAddr, reopen: &AtomicBool, stats: &Mutex<FloodStats>) {
    let mut buf = [0u8; 64];
    while reopen.load(Ordering::Relaxed) {
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
            continue;
        };
        let opened = Instant::now();
        if let Ok(mut st) = stats.lock() {
            st.opened += 1;
        }
        let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
        loop {
            match s.read(&mut buf) {
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if opened.elapsed() > GIVE_UP {
                        if let Ok(mut st) = stats.lock() {
                            st.oldest_open = st.oldest_open.max(opened.elapsed());
                        }
                        return;
                    }
                }
                // Whatever the daemon says (an older one sent its SSH banner at once), the peer
                // stays silent.
                Ok(n) if n > 0 => {}
                // Closed (or reset) by the daemon.
                Ok(_) | Err(_) => {
                    if let Ok(mut st) = stats.lock() {
                        st.closed += 1;
                        st.longest = st.longest.max(opened.elapsed());
                    }
                    break;
                }
            }
        }
    }
}

/// Waits until agent `name` is `ready` in the API; returns how long that took from `since`.
fn ready_after(d: &TestDaemon, name: &str, since: Instant) -> Result<Duration> {
    d.wait_for(&format!("{name} to be ready"), DEADLINE, |d| {
        let builders = d.get_json("/api/v1/builders")?;
        let ready = builders
            .as_array()
            .into_iter()
            .flatten()
            .any(|b| b["name"] == name && b["state"] == "ready");
        Ok(ready.then(|| since.elapsed()))
    })
}

/// The handshake deadline (`builders.enrollment.handshake-timeout`, default 5 s).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// How much later than its deadline a silent connection may be seen closed: the closing and
/// the flood's 100 ms read polls on a loaded machine.
const CLOSE_SLACK: Duration = Duration::from_secs(3);

/// How long an agent may take from its start to `ready` under the flood.
const READY_WITHIN: Duration = Duration::from_secs(2);

#[test]
fn an_agent_should_be_ready_at_once_while_silent_connections_flood_the_port() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (d, _) = daemon(tmp.path(), TOKEN)?;
    let coordinator = enroll_addr(&d)?;

    // 200 silent connections from the agent's own address, re-opened as the daemon drops them.
    let flood = Flood::start(&coordinator, 200)?;
    d.wait_for("every flood connection to be open", DEADLINE, |_| {
        Ok((flood.opened() >= 200).then_some(()))
    })?;
    let dir = agent_dir(tmp.path(), "a1", Some(TOKEN))?;
    let started = Instant::now();
    let a1 = start_agent(&coordinator, &dir, "a1")?;
    let waited = ready_after(&d, "a1", started)?;
    // Under the flood, connections are displaced long before their deadline; the last ones,
    // no longer displaced, must be closed at it.
    let stats = flood.stop();
    eprintln!("a1 ready {waited:?} after its start under the flood; flood: {stats:?}");
    ensure!(
        waited <= READY_WITHIN,
        "a1 took {waited:?} (more than {READY_WITHIN:?}) to be ready under the flood; flood: \
         {stats:?}; agent log:\n{}",
        plain(&a1.log())
    );
    ensure!(
        stats.closed > 0 && stats.longest <= HANDSHAKE_TIMEOUT + CLOSE_SLACK,
        "silent connections lived up to {:?}: {stats:?}",
        stats.longest
    );
    ensure!(
        stats.oldest_open.is_zero() && stats.longest >= HANDSHAKE_TIMEOUT,
        "the daemon kept a silent connection open for {:?}, or closed none at its deadline: \
         {stats:?}",
        stats.oldest_open
    );
    ensure!(
        d.get_text("/healthz")? == "ok\n",
        "the daemon stopped answering"
    );
    Ok(())
}

/// Returns the daemon's CPU time so far (user + system), from /proc.
fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // USER_HZ is 100 on Linux.
    Ok(Duration::from_millis(ticks * 10))
}

#[test]
fn the_enrolment_port_should_survive_running_out_of_file_descriptors() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (d, _) = daemon(tmp.path(), TOKEN)?;
    let coordinator = enroll_addr(&d)?;
    let pid = d.pid().context("the daemon is not running")?;
    // Leave the daemon 6 file descriptors more than it uses now: fewer than the 16 silent
    // connections per source it would keep.
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    run(Command::new("prlimit")
        .arg("--pid")
        .arg(pid.to_string())
        .arg(format!("--nofile={}:", open + 6)))?;

    let cpu_before = cpu_time(pid)?;
    let flood_started = Instant::now();
    let flood = Flood::start(&coordinator, 100)?;
    d.wait_for("the daemon to run out of file descriptors", DEADLINE, |d| {
        Ok(d.log()
            .contains("accepting an agent connection failed")
            .then_some(()))
    })?;
    let dir = agent_dir(tmp.path(), "a1", Some(TOKEN))?;
    let started = Instant::now();
    let _a1 = start_agent(&coordinator, &dir, "a1")?;
    // The API may be out of descriptors too: ask the database through the CLI.
    let waited = d.wait_for("a1 to be ready", DEADLINE, |d| {
        Ok(builder(d, "a1")?
            .filter(|b| b["state"] == "ready")
            .map(|_| started.elapsed()))
    })?;
    let stats = flood.stop();
    let busy = cpu_time(pid)?.saturating_sub(cpu_before);
    let wall = flood_started.elapsed();
    let warnings = d
        .log()
        .matches("accepting an agent connection failed")
        .count();
    eprintln!(
        "out of descriptors: a1 ready after {waited:?}; daemon CPU {busy:?} in {wall:?}; \
         {warnings} accept warnings; flood: {stats:?}"
    );
    // No spinning on the failing accept, and one warning a minute at most.
    ensure!(
        busy < wall / 2,
        "the daemon used {busy:?} of CPU in {wall:?}"
    );
    ensure!(
        warnings <= 1 + usize::try_from(wall.as_secs() / 60).unwrap_or(0),
        "{warnings} accept warnings in {wall:?}:\n{}",
        d.log()
    );
    Ok(())
}
