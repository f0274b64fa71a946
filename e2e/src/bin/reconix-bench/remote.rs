//! `reconix-bench remote`: remote building through reconix's own transport.
//!
//! The bench is the coordinator (`reconix_agent::coordinator`, a [`Listener`] on 127.0.0.1:0)
//! and spawns the real `reconix-agent` binary, which dials it and serves
//! `nix-store --serve --write --store REMOTE` over SSH. Builds go through
//! `reconix_nixcli::build_remote`, as the daemon's do. Both sides of every measurement use
//! chroot stores on this machine (nix-lab §5): LOCAL (the coordinator's) and a builder's store.
//!
//! - **Setup overhead**: `--remote-builds` trivial derivations per side, each with a fresh salt,
//!   instantiated into LOCAL before any clock starts. *Reused*: one agent connection for all of
//!   them; per build, the setup is `open_serve` + the serve handshake. *Fresh*: per build a new
//!   `reconix-agent` process (same state directory, so the keys are already there); the setup
//!   runs from the spawn until the coordinator accepted it, opened the channel and finished the
//!   handshake. Raw Nix: `nix-store --realise DRV --builders 'ssh://localhost?remote-store=…'`
//!   per build (Nix 2.8 runs `nix-store --serve` through `bash -c` for host `localhost`: no ssh).
//!   The three sides take turns build by build.
//! - **Closure transfer**: a chain of 8 paths of incompressible data (`head -c` of
//!   `/dev/urandom`, each path links to the previous one), built in LOCAL; per run it goes to
//!   an empty store, through reconix (the `copy_to_remote` phase of `build_remote` for a
//!   derivation that takes the chain as input: `cmdQueryValidPaths`, then each large path's
//!   NAR, written from its files in LOCAL, streamed into `cmdAddToStoreNar` over the agent's
//!   SSH channel) and through
//!   `nix copy --no-check-sigs --from LOCAL --to EMPTY` (one process, no transport at all), and
//!   through Nix's own serve protocol over pipes, `nix copy --to ssh://localhost?remote-store=…`.
//!   The same `build_remote` over the pipes of a local `nix-store --serve` (no agent, no SSH)
//!   shows what the transport adds. The four sides take turns; before each, the bench waits
//!   for an idle machine as the other benchmarks do.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use reconix_agent::coordinator::{
    AgentConn, CoordinatorKey, Limits, Listener, ServeChannel, ServeExit, ServeReader, ServeWriter,
};
use reconix_e2e::tail;
use reconix_nixcli::serve::{
    BuildSettings, RemoteBuildOutcome, RemoteBuildStatus, RemoteBuildTimings, ServeClient,
};
use reconix_nixcli::{NixCli, build_remote};
use reconix_spec::names::StorePath;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use super::report::{median, min};
use super::{cpu, ms, unique};

/// The longest any single step (a build, a handshake, a copy) may take.
const DEADLINE: Duration = Duration::from_secs(300);
/// Paths in the transferred closure.
pub(crate) const CLOSURE_PATHS: usize = 8;
/// Serve channels an agent allows at once: more than the bench ever opens, so that no setup
/// waits for the previous channel's slot to be released.
const AGENT_MAX_JOBS: &str = "4";
/// The target for the setup of a build on a reused connection (median).
pub(crate) const TARGET_SETUP_MS: f64 = 50.0;
const MIB: f64 = 1024.0 * 1024.0;
/// The sides of the transfer measurement, in the order of [`Report`]'s fields.
const TRANSFER_SIDES: [&str; 4] = [
    "reconix",
    "reconix over pipes",
    "nix copy (store to store)",
    "nix copy --to ssh://localhost",
];

/// Settings of the remote benchmark.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// Trivial builds per side for the setup overhead.
    pub(crate) builds: usize,
    /// Size of the transferred closure, in MiB.
    pub(crate) closure_mib: usize,
    /// Transfer runs per side.
    pub(crate) runs: usize,
    /// Longest wait for an idle machine before each measurement (see `settle`).
    pub(crate) idle_wait: Duration,
}

/// Samples of one side of the setup measurement, in build order.
#[derive(Debug, Clone, Default)]
pub(crate) struct Side {
    /// Transport set up (ms); empty for raw Nix, whose setup cannot be told apart.
    pub(crate) setup_ms: Vec<f64>,
    /// Setup plus `build_remote` (or the whole `nix-store --realise`), ms.
    pub(crate) total_ms: Vec<f64>,
    /// `build_remote`'s phases per build (reconix sides only).
    pub(crate) phases: Vec<RemoteBuildTimings>,
    /// Closing the channel afterwards (EOF, `nix-store` exits; fresh: plus the disconnect and
    /// the agent's exit), ms; not part of `total_ms`.
    pub(crate) close_ms: Vec<f64>,
}

/// One transfer run of one side.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Transfer {
    pub(crate) run: usize,
    pub(crate) ms: f64,
    pub(crate) other_cpu_s: f64,
}

/// What the benchmark produced.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) settings: Settings,
    pub(crate) reused: Side,
    pub(crate) fresh: Side,
    pub(crate) raw: Side,
    /// CPU seconds other processes used during the setup measurement, and how long it took.
    pub(crate) setup_other_cpu_s: f64,
    pub(crate) setup_elapsed_s: f64,
    pub(crate) closure_bytes: u64,
    pub(crate) reconix_transfer: Vec<Transfer>,
    /// The same `build_remote` over a local `nix-store --serve`'s pipes (no agent, no SSH).
    pub(crate) pipe_transfer: Vec<Transfer>,
    pub(crate) nix_copy: Vec<Transfer>,
    /// `nix copy --to ssh://localhost?remote-store=…`: Nix's own serve protocol, over pipes.
    pub(crate) nix_copy_serve: Vec<Transfer>,
    pub(crate) commands: Vec<String>,
}

/// Returns the `reconix-agent` binary: `$RECONIX_AGENT_BIN`, or the one next to this binary.
pub(crate) fn agent_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("RECONIX_AGENT_BIN") {
        return Ok(PathBuf::from(p));
    }
    let bin = std::env::current_exe()?
        .parent()
        .context("the bench binary has no directory")?
        .join("reconix-agent");
    ensure!(
        bin.exists(),
        "{} not found: build it with `cargo build --release -p reconix-agent`, or point \
         RECONIX_AGENT_BIN at a reconix-agent binary",
        bin.display()
    );
    Ok(bin)
}

/// Runs the benchmark on its own runtime.
pub(crate) fn run(settings: Settings, agent: &Path) -> Result<Report> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bench-remote")
        .build()?;
    let lab = Lab::new(agent)?;
    let result = runtime.block_on(lab.bench(settings));
    lab.remove();
    result
}

/// Nearest-rank percentile of `v` (0 < `p` ≤ 100).
pub(crate) fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s.get(rank.saturating_sub(1)).copied().unwrap_or(f64::NAN)
}

/// Awaits `f`, failing after [`DEADLINE`].
async fn within<T>(what: &str, f: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(DEADLINE, f)
        .await
        .with_context(|| format!("timed out after {DEADLINE:?} waiting for {what}"))
}

/// Runs a command that must succeed; returns its stdout.
async fn run_ok(program: &str, args: &[&str]) -> Result<String> {
    let out = within(
        program,
        Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await?
    .with_context(|| format!("spawning {program}"))?;
    ensure!(
        out.status.success(),
        "{program} {} failed ({}): {}",
        args.join(" "),
        out.status,
        tail(&String::from_utf8_lossy(&out.stderr), 20)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Makes a store tree writable (Nix leaves it read-only) and removes it.
fn remove_tree(dir: &Path) {
    let _ = std::process::Command::new("chmod")
        .arg("-R")
        .arg("u+w")
        .arg(dir)
        .stderr(Stdio::null())
        .status();
    let _ = std::fs::remove_dir_all(dir);
}

/// Returns the median of the phase `f` picks, in milliseconds.
fn phase_median(v: &[RemoteBuildTimings], f: fn(&RemoteBuildTimings) -> Duration) -> f64 {
    median(&v.iter().map(|t| ms(f(t))).collect::<Vec<_>>())
}

type Client = ServeClient<BufReader<ServeReader>, ServeWriter>;

/// An open `nix-store --serve` on an agent: the client, its exit status and the task that reads
/// its log (a channel whose log nobody reads stalls).
struct Session {
    client: Client,
    exit: ServeExit,
    log: JoinHandle<Vec<u8>>,
}

impl Session {
    /// Opens a serve channel on `conn` and performs the serve handshake.
    async fn open(conn: &AgentConn) -> Result<Self> {
        let ServeChannel {
            reader,
            writer,
            mut log,
            exit,
            ..
        } = within("a serve channel", conn.open_serve())
            .await?
            .context("opening a serve channel")?;
        let log = tokio::spawn(async move {
            let mut text = Vec::new();
            let _ = log.read_to_end(&mut text).await;
            text
        });
        let client = within(
            "the serve handshake",
            ServeClient::handshake(BufReader::new(reader), writer),
        )
        .await?
        .context("serve handshake")?;
        Ok(Self { client, exit, log })
    }

    /// Ends the channel as the daemon does: EOF on stdin, then `nix-store` exits.
    async fn close(self) -> Result<()> {
        let Self {
            client,
            mut exit,
            log,
        } = self;
        let (reader, mut writer) = client.into_inner();
        writer
            .shutdown()
            .await
            .context("closing the serve channel's stdin")?;
        let status = within("nix-store --serve to exit", exit.wait()).await?;
        drop((reader, writer));
        let log = within("the end of the serve log", log)
            .await?
            .context("the log task failed")?;
        ensure!(
            status == Some(0),
            "nix-store --serve exited with {status:?}: {}",
            tail(&String::from_utf8_lossy(&log), 20)
        );
        Ok(())
    }
}

/// The temporary directory of one benchmark: LOCAL, the builders' stores, agent state, logs.
struct Lab {
    dir: tempfile::TempDir,
    local: String,
    nix: NixCli,
    agent: PathBuf,
    agent_log: PathBuf,
}

impl Lab {
    fn new(agent: &Path) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("reconix-bench-remote")
            .tempdir()?;
        let local = dir.path().join("local").display().to_string();
        let agent_log = dir.path().join("agents.log");
        Ok(Self {
            nix: NixCli::new().with_store(&local),
            local,
            agent: agent.to_owned(),
            agent_log,
            dir,
        })
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn remove(self) {
        remove_tree(self.dir.path());
    }

    /// The last lines the agents logged, for error messages.
    fn agent_log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.agent_log).unwrap_or_default();
        tail(&super::report::strip_ansi(&log), 20)
    }

    /// Starts a `reconix-agent` with `state` as its state directory and `store` as its store.
    fn spawn_agent(&self, listener: &Listener, state: &str, store: &str) -> Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.agent_log)?;
        Command::new(&self.agent)
            .args(["--coordinator", &listener.local_addr().to_string()])
            .args(["--state-dir", &self.path(state)])
            .args(["--name", state])
            .args(["--max-jobs", AGENT_MAX_JOBS])
            .args(["--store", store])
            .args(["--heartbeat", "5"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", self.agent.display()))
    }

    /// Waits for the next agent's handshake and admits it, checking it is the one named.
    async fn accept(&self, listener: &Listener, name: &str) -> Result<AgentConn> {
        let pending = within("an agent to connect", listener.accept())
            .await
            .with_context(|| format!("agent log:\n{}", self.agent_log_tail()))?
            .with_context(|| format!("agent handshake; agent log:\n{}", self.agent_log_tail()))?;
        ensure!(
            pending.hello().name.as_str() == name,
            "expected agent {name}, got {:?}",
            pending.hello()
        );
        Ok(pending.accept())
    }

    /// Instantiates `expr` (a list of derivations) into LOCAL; returns the `.drv` paths.
    async fn instantiate(&self, file: &str, expr: &str) -> Result<Vec<StorePath>> {
        let path = self.path(file);
        std::fs::write(&path, expr)?;
        let out = run_ok("nix-instantiate", &["--store", &self.local, &path]).await?;
        out.lines()
            .map(|l| StorePath::new(l.trim()).map_err(anyhow::Error::from))
            .collect()
    }

    /// Runs `build_remote` for `drv` on `session`; fails unless it was built remotely.
    async fn build(&self, session: &mut Session, drv: &StorePath) -> Result<RemoteBuildOutcome> {
        let outcome = within(
            "a remote build",
            build_remote(
                &mut session.client,
                &self.nix,
                drv,
                &BuildSettings::default(),
                None,
            ),
        )
        .await?
        .with_context(|| format!("building {drv} remotely"))?;
        ensure!(
            outcome.status == RemoteBuildStatus::Built && outcome.times_built == 1,
            "the remote build of {drv} did not build: {outcome:?}"
        );
        Ok(outcome)
    }

    async fn bench(&self, settings: Settings) -> Result<Report> {
        std::fs::create_dir_all(self.path("coordinator"))?;
        let key = CoordinatorKey::load_or_create(self.dir.path().join("coordinator").as_path())?;
        let listener = Listener::bind(([127, 0, 0, 1], 0).into(), &key, Limits::default()).await?;
        run_ok("nix-store", &["--store", &self.local, "--init"]).await?;

        super::settle(settings.idle_wait);
        let setup_started = Instant::now();
        let c0 = cpu::sample();
        let (reused, fresh, raw, raw_command) = self.setup(&listener, settings.builds).await?;
        let setup_elapsed = setup_started.elapsed();
        let usage = super::check_foreign(c0, setup_elapsed, "remote setup");

        let (
            closure_bytes,
            [reconix_transfer, pipe_transfer, nix_copy, nix_copy_serve],
            copy_commands,
        ) = self.transfer(&listener, settings).await?;
        let mut commands = vec![raw_command];
        commands.extend(copy_commands);
        Ok(Report {
            settings,
            reused,
            fresh,
            raw,
            setup_other_cpu_s: usage.other + usage.steal,
            setup_elapsed_s: setup_elapsed.as_secs_f64(),
            closure_bytes,
            reconix_transfer,
            pipe_transfer,
            nix_copy,
            nix_copy_serve,
            commands,
        })
    }

    /// Measurement 1: setup overhead and per-build time, three sides taking turns.
    async fn setup(
        &self,
        listener: &Listener,
        builds: usize,
    ) -> Result<(Side, Side, Side, String)> {
        let salt = unique();
        let sides = ["reused", "fresh", "raw"];
        let names: Vec<String> = sides
            .iter()
            .flat_map(|s| (0..=builds).map(move |i| format!("\"trivial-{s}-{i}\"")))
            .collect();
        let expr = format!(
            "let salt = \"{salt}\"; in map (name: derivation {{ inherit name salt; \
             system = \"x86_64-linux\"; builder = \"/bin/sh\"; args = [ \"-c\" \"echo $name > $out\" ]; }}) \
             [ {} ]\n",
            names.join(" ")
        );
        progress!(
            "remote: instantiating {} trivial derivations into {}",
            names.len(),
            self.local
        );
        let drvs = self.instantiate("trivial.nix", &expr).await?;
        ensure!(drvs.len() == names.len(), "nix-instantiate gave {drvs:?}");
        let drv = |side: usize, i: usize| &drvs[side * (builds + 1) + i];

        let remote = self.path("remote");
        let raw_remote = self.path("raw-remote");
        for store in [&remote, &raw_remote] {
            run_ok("nix-store", &["--store", store, "--init"]).await?;
        }
        let _reused_agent = self.spawn_agent(listener, "agent-reused", &remote)?;
        let conn = self.accept(listener, "agent-reused").await?;
        let builders = format!("ssh://localhost?remote-store={raw_remote} x86_64-linux");

        let mut out = [Side::default(), Side::default(), Side::default()];
        // Build 0 of each side is the warm-up (first channel, first agent start, first raw
        // build), not recorded.
        for i in 0..=builds {
            for k in 0..3 {
                let side = (i + k) % 3;
                let d = drv(side, i);
                let sample = match side {
                    0 => self.reused_build(&conn, d).await?,
                    1 => self.fresh_build(listener, &remote, d).await?,
                    _ => raw_build(&self.local, &builders, d).await?,
                };
                if i > 0 {
                    let s = &mut out[side];
                    s.setup_ms.extend(sample.setup);
                    s.total_ms.push(sample.total);
                    s.phases.extend(sample.phases);
                    s.close_ms.extend(sample.close);
                }
            }
            if i > 0 && (i % 10 == 0 || i == builds) {
                progress!(
                    "remote: {i}/{builds} builds per side; setup medians so far: reused {:.1} ms, \
                     fresh {:.1} ms; per-build medians: reused {:.0} ms, fresh {:.0} ms, raw Nix {:.0} ms",
                    median(&out[0].setup_ms),
                    median(&out[1].setup_ms),
                    median(&out[0].total_ms),
                    median(&out[1].total_ms),
                    median(&out[2].total_ms),
                );
            }
        }
        conn.disconnect().await;
        let [reused, fresh, raw] = out;
        let command = format!(
            "nix-store --realise DRV --builders '{builders}' --max-jobs 0 --store {}",
            self.local
        );
        Ok((reused, fresh, raw, command))
    }

    async fn reused_build(&self, conn: &AgentConn, drv: &StorePath) -> Result<Sample> {
        let t0 = Instant::now();
        let mut session = Session::open(conn).await?;
        let setup = t0.elapsed();
        let outcome = self.build(&mut session, drv).await?;
        let total = t0.elapsed();
        let closing = Instant::now();
        session.close().await?;
        Ok(Sample {
            setup: Some(ms(setup)),
            total: ms(total),
            phases: Some(outcome.timings),
            close: Some(ms(closing.elapsed())),
        })
    }

    async fn fresh_build(
        &self,
        listener: &Listener,
        remote: &str,
        drv: &StorePath,
    ) -> Result<Sample> {
        let t0 = Instant::now();
        let mut agent = self.spawn_agent(listener, "agent-fresh", remote)?;
        let conn = self.accept(listener, "agent-fresh").await?;
        let mut session = Session::open(&conn).await?;
        let setup = t0.elapsed();
        let outcome = self.build(&mut session, drv).await?;
        let total = t0.elapsed();
        let closing = Instant::now();
        session.close().await?;
        conn.disconnect().await;
        agent.kill().await.context("stopping the agent")?;
        Ok(Sample {
            setup: Some(ms(setup)),
            total: ms(total),
            phases: Some(outcome.timings),
            close: Some(ms(closing.elapsed())),
        })
    }

    /// Measurement 2: the closure to an empty store, reconix and `nix copy` taking turns.
    async fn transfer(
        &self,
        listener: &Listener,
        settings: Settings,
    ) -> Result<(u64, [Vec<Transfer>; 4], Vec<String>)> {
        let per_path = settings.closure_mib * (1 << 20) / CLOSURE_PATHS;
        let consumers: Vec<String> = (1..=settings.runs)
            .map(|r| format!("(consumer \"{r}\")"))
            .collect();
        let expr = format!(
            r#"let
  system = "x86_64-linux";
  salt = "{salt}";
  mk = name: script: derivation {{ inherit name system salt; builder = "/bin/sh"; args = [ "-c" script ]; }};
  step = prev: i: mk "data-${{toString i}}" ("mkdir $out; head -c {per_path} /dev/urandom > $out/data"
    + (if prev == null then "" else "; ln -s ${{prev}} $out/prev"));
  chain = builtins.foldl' step null (builtins.genList (i: i) {CLOSURE_PATHS});
  consumer = run: mk "consume-${{run}}" "test -f ${{chain}}/data; echo ${{run}} > $out";
in [ chain {} ]
"#,
            consumers.join(" "),
            salt = unique(),
        );
        let drvs = self.instantiate("data.nix", &expr).await?;
        let (chain_drv, consumer_drvs) = drvs
            .split_first()
            .context("nix-instantiate printed nothing")?;
        ensure!(consumer_drvs.len() == settings.runs, "{drvs:?}");
        progress!(
            "remote: building a closure of {CLOSURE_PATHS} paths of {per_path} random bytes in {}",
            self.local
        );
        let top = run_ok(
            "nix-store",
            &["--store", &self.local, "--realise", chain_drv.as_str()],
        )
        .await?;
        let top = top.trim().to_owned();
        let closure = run_ok(
            "nix-store",
            &["--store", &self.local, "--query", "--requisites", &top],
        )
        .await?;
        let closure: Vec<&str> = closure.lines().collect();
        ensure!(
            closure.len() == CLOSURE_PATHS,
            "expected {CLOSURE_PATHS} paths, got {closure:?}"
        );
        let mut args = vec!["--store", &self.local, "--query", "--size"];
        args.extend(&closure);
        let bytes: u64 = run_ok("nix-store", &args)
            .await?
            .lines()
            .map(|l| l.trim().parse::<u64>())
            .sum::<Result<u64, _>>()
            .context("nix-store --query --size")?;
        progress!(
            "remote: closure of {} paths, {:.1} MiB of NAR",
            closure.len(),
            bytes as f64 / MIB
        );

        let mut out: [Vec<Transfer>; 4] = Default::default();
        let mut commands = Vec::new();
        for (run, consumer) in (1..=settings.runs).zip(consumer_drvs) {
            for k in 0..TRANSFER_SIDES.len() {
                let side = (run + k) % TRANSFER_SIDES.len();
                let store = self.path(&format!("xfer-{run}-{side}"));
                run_ok("nix-store", &["--store", &store, "--init"]).await?;
                super::settle(settings.idle_wait);
                let c0 = cpu::sample();
                let t = if side == 0 {
                    self.reconix_transfer(listener, &store, consumer, closure.len())
                        .await?
                } else if side == 1 {
                    self.pipe_transfer(&store, consumer, closure.len()).await?
                } else {
                    let to = if side == 2 {
                        store.clone()
                    } else {
                        format!("ssh://localhost?remote-store={store}")
                    };
                    let args = [
                        "--extra-experimental-features",
                        "nix-command",
                        "copy",
                        "--no-check-sigs",
                        "--from",
                        &self.local,
                        "--to",
                        &to,
                        &top,
                    ];
                    if run == 1 {
                        commands.push(format!("nix {}", args.join(" ")));
                    }
                    let t0 = Instant::now();
                    run_ok("nix", &args).await?;
                    let t = t0.elapsed();
                    run_ok("nix-store", &["--store", &store, "--check-validity", &top]).await?;
                    t
                };
                let name = TRANSFER_SIDES[side];
                let usage = super::check_foreign(c0, t, &format!("remote transfer ({name})"));
                progress!(
                    "remote: transfer run {run}, {name}: {:.2} s, {:.0} MiB/s",
                    t.as_secs_f64(),
                    bytes as f64 / MIB / t.as_secs_f64()
                );
                out[side].push(Transfer {
                    run,
                    ms: ms(t),
                    other_cpu_s: usage.other + usage.steal,
                });
                remove_tree(Path::new(&store));
            }
        }
        Ok((bytes, out, commands))
    }

    /// Sends the closure to a local `nix-store --serve --write --store STORE` over its pipes, as
    /// nixcli's own tests do: reconix's copy without the agent and SSH; returns
    /// `copy_to_remote`.
    async fn pipe_transfer(
        &self,
        store: &str,
        consumer: &StorePath,
        paths: usize,
    ) -> Result<Duration> {
        let mut child = Command::new("nix-store")
            .args(["--serve", "--write", "--store", store])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("spawning nix-store --serve")?;
        let (Some(stdin), Some(stdout), Some(mut stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            bail!("nix-store --serve has no pipes");
        };
        let log = tokio::spawn(async move {
            let mut text = Vec::new();
            let _ = stderr.read_to_end(&mut text).await;
            text
        });
        let mut client = within(
            "the serve handshake",
            ServeClient::handshake(BufReader::new(stdout), stdin),
        )
        .await?
        .context("serve handshake")?;
        let outcome = within(
            "a remote build",
            build_remote(
                &mut client,
                &self.nix,
                consumer,
                &BuildSettings::default(),
                None,
            ),
        )
        .await?
        .with_context(|| format!("building {consumer} over pipes"))?;
        drop(client.into_inner());
        let status = within("nix-store --serve to exit", child.wait()).await??;
        let log = within("the end of the serve log", log).await??;
        ensure!(
            status.success() && outcome.status == RemoteBuildStatus::Built,
            "nix-store --serve exited with {status}, outcome {outcome:?}: {}",
            tail(&String::from_utf8_lossy(&log), 20)
        );
        ensure!(
            outcome.copied_to_remote.len() == paths,
            "expected {paths} paths sent, sent {:?}",
            outcome.copied_to_remote
        );
        Ok(outcome.timings.copy_to_remote)
    }

    /// Sends the closure to a fresh agent whose store is `store`; returns `copy_to_remote`.
    async fn reconix_transfer(
        &self,
        listener: &Listener,
        store: &str,
        consumer: &StorePath,
        paths: usize,
    ) -> Result<Duration> {
        let mut agent = self.spawn_agent(listener, "agent-transfer", store)?;
        let conn = self.accept(listener, "agent-transfer").await?;
        let mut session = Session::open(&conn).await?;
        let outcome = self.build(&mut session, consumer).await?;
        ensure!(
            outcome.copied_to_remote.len() == paths,
            "expected {paths} paths sent, sent {:?}",
            outcome.copied_to_remote
        );
        session.close().await?;
        conn.disconnect().await;
        agent.kill().await.context("stopping the agent")?;
        Ok(outcome.timings.copy_to_remote)
    }
}

/// One build of the setup measurement.
struct Sample {
    setup: Option<f64>,
    total: f64,
    phases: Option<RemoteBuildTimings>,
    close: Option<f64>,
}

async fn raw_build(local: &str, builders: &str, drv: &StorePath) -> Result<Sample> {
    let t0 = Instant::now();
    let out = run_ok(
        "nix-store",
        &[
            "--realise",
            drv.as_str(),
            "--builders",
            builders,
            "--max-jobs",
            "0",
            "--store",
            local,
        ],
    )
    .await?;
    let total = t0.elapsed();
    if !out.trim().starts_with("/nix/store/") {
        bail!("nix-store --realise {drv} printed {out:?}");
    }
    Ok(Sample {
        setup: None,
        total: ms(total),
        phases: None,
        close: None,
    })
}

impl Side {
    fn to_json(&self) -> Value {
        json!({
            "setup_ms": self.setup_ms,
            "total_ms": self.total_ms,
            "close_ms": self.close_ms,
            "setup_median_ms": median(&self.setup_ms),
            "setup_p95_ms": percentile(&self.setup_ms, 95.0),
            "total_median_ms": median(&self.total_ms),
            "total_p95_ms": percentile(&self.total_ms, 95.0),
            "phase_medians_ms": if self.phases.is_empty() { Value::Null } else { json!({
                "inputs": phase_median(&self.phases, |t| t.inputs),
                "copy_to_remote": phase_median(&self.phases, |t| t.copy_to_remote),
                "build": phase_median(&self.phases, |t| t.build),
                "copy_back": phase_median(&self.phases, |t| t.copy_back),
            })},
        })
    }
}

fn transfer_ms(v: &[Transfer]) -> Vec<f64> {
    v.iter().map(|t| t.ms).collect()
}

impl Report {
    fn mib(&self) -> f64 {
        self.closure_bytes as f64 / MIB
    }

    /// Renders the results as Markdown.
    pub(crate) fn text(&self) -> String {
        let s = self.settings;
        let f = |v: f64| format!("{v:.1} ms");
        let mut out = format!(
            "## Remote building\n\nSetup overhead: {} trivial builds per side (fresh salts), the \
             three sides taking turns; one warm-up build each, not counted. reconix: the bench is \
             the coordinator, `reconix-agent` serves `nix-store --serve --write` on a chroot store.\n\n\
             | transport | setup measured as | builds | setup median | setup p95 | per build median | per build p95 |\n\
             |---|---|---|---|---|---|---|\n",
            s.builds
        );
        let rows: [(&str, &str, &Side); 3] = [
            (
                "reconix, reused connection",
                "`open_serve` + serve handshake",
                &self.reused,
            ),
            (
                "reconix, fresh connection",
                "spawn `reconix-agent` → accepted → `open_serve` + handshake",
                &self.fresh,
            ),
            (
                "raw Nix, `--builders ssh://localhost` (no ssh)",
                "– (one `nix-store --realise` per build)",
                &self.raw,
            ),
        ];
        for (name, what, side) in rows {
            let (sm, sp) = if side.setup_ms.is_empty() {
                ("–".to_owned(), "–".to_owned())
            } else {
                (
                    f(median(&side.setup_ms)),
                    f(percentile(&side.setup_ms, 95.0)),
                )
            };
            let _ = writeln!(
                out,
                "| {name} | {what} | {} | {sm} | {sp} | {} | {} |",
                side.total_ms.len(),
                f(median(&side.total_ms)),
                f(percentile(&side.total_ms, 95.0)),
            );
        }
        let setup = median(&self.reused.setup_ms);
        let met = if setup < TARGET_SETUP_MS {
            "met"
        } else {
            "**not met**"
        };
        let _ = writeln!(
            out,
            "\nReused-connection setup median {setup:.1} ms (target < {TARGET_SETUP_MS:.0} ms: {met}). \
             `build_remote` phase medians (reused / fresh): inputs {:.1} / {:.1} ms, copy to builder \
             {:.1} / {:.1} ms, build {:.1} / {:.1} ms, copy back {:.1} / {:.1} ms. Closing a channel \
             afterwards (not counted): {:.1} ms reused, {:.1} ms fresh (with disconnect and agent exit). \
             Other processes used {:.2} CPU s during the {:.0} s of this measurement.",
            phase_median(&self.reused.phases, |t| t.inputs),
            phase_median(&self.fresh.phases, |t| t.inputs),
            phase_median(&self.reused.phases, |t| t.copy_to_remote),
            phase_median(&self.fresh.phases, |t| t.copy_to_remote),
            phase_median(&self.reused.phases, |t| t.build),
            phase_median(&self.fresh.phases, |t| t.build),
            phase_median(&self.reused.phases, |t| t.copy_back),
            phase_median(&self.fresh.phases, |t| t.copy_back),
            median(&self.reused.close_ms),
            median(&self.fresh.close_ms),
            self.setup_other_cpu_s,
            self.setup_elapsed_s,
        );
        let _ = writeln!(
            out,
            "\nClosure transfer: {CLOSURE_PATHS} paths of random data, {:.1} MiB of NAR, into an \
             empty chroot store, {} runs per side, taking turns.\n\n\
             | transport | runs | min | median | MiB/s (best) | MiB/s (median) |\n|---|---|---|---|---|---|",
            self.mib(),
            s.runs
        );
        for (name, v) in [
            (
                "reconix (`build_remote` copy to builder: NAR from the store's files → `cmdAddToStoreNar` over the agent's SSH)",
                &self.reconix_transfer,
            ),
            (
                "reconix over pipes (the same `build_remote` to a local `nix-store --serve`: no agent, no SSH)",
                &self.pipe_transfer,
            ),
            (
                "`nix copy --no-check-sigs` (store to store, one process)",
                &self.nix_copy,
            ),
            (
                "`nix copy --no-check-sigs --to ssh://localhost?remote-store=…` (serve protocol over pipes, no ssh)",
                &self.nix_copy_serve,
            ),
        ] {
            let t = transfer_ms(v);
            let _ = writeln!(
                out,
                "| {name} | {} | {:.2} s | {:.2} s | {:.0} | {:.0} |",
                t.len(),
                min(&t) / 1000.0,
                median(&t) / 1000.0,
                self.mib() / (min(&t) / 1000.0),
                self.mib() / (median(&t) / 1000.0),
            );
        }
        let _ = writeln!(out, "\nRaw Nix commands:");
        for c in &self.commands {
            let _ = writeln!(out, "  {c}");
        }
        out
    }

    /// Renders the results as JSON.
    pub(crate) fn to_json(&self) -> Value {
        let transfer = |v: &[Transfer]| {
            let t = transfer_ms(v);
            json!({
                "runs": v.iter().map(|x| json!({
                    "run": x.run, "ms": x.ms, "other_cpu_s": x.other_cpu_s,
                })).collect::<Vec<_>>(),
                "min_ms": min(&t), "median_ms": median(&t),
                "mib_per_s_best": self.mib() / (min(&t) / 1000.0),
                "mib_per_s_median": self.mib() / (median(&t) / 1000.0),
            })
        };
        json!({
            "builds": self.settings.builds,
            "closure_mib": self.settings.closure_mib,
            "closure_paths": CLOSURE_PATHS,
            "closure_nar_bytes": self.closure_bytes,
            "runs": self.settings.runs,
            "target_reused_setup_ms": TARGET_SETUP_MS,
            "setup": {
                "reused": self.reused.to_json(),
                "fresh": self.fresh.to_json(),
                "raw_nix": self.raw.to_json(),
                "other_cpu_s": self.setup_other_cpu_s,
                "elapsed_s": self.setup_elapsed_s,
            },
            "transfer": {
                "reconix": transfer(&self.reconix_transfer),
                "reconix_over_pipes": transfer(&self.pipe_transfer),
                "nix_copy": transfer(&self.nix_copy),
                "nix_copy_ssh_localhost": transfer(&self.nix_copy_serve),
            },
            "raw_nix_commands": self.commands,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_should_use_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 95.0), 95.0);
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 95.0), 3.0);
        assert!(percentile(&[], 95.0).is_nan());
    }
}
