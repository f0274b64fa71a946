//! `reconix-bench`: reconix against raw Nix on generated flakes (`make bench`).
//!
//! - **eval N**: a flake of N packages (`p_i` depends on `p_(i/10)`), a fresh salt per
//!   measurement so every `.drv` is new. reconix: from the moment the daemon saw the commit (the
//!   evaluation's `created_at`) until its jobs are recorded (the daemon's `evaluation recorded`
//!   log line), plus the client-side wall clock from `git commit` until the API shows the jobs.
//!   Raw: one bulk `nix eval --json` of the `nix-lab.md` appendix B jobs expression.
//! - **build N**: the same kind of flake, trivial builds. reconix: wall clock from `git commit`
//!   until the API shows the evaluation `finished`. Raw: one `nix build --no-link` of all N
//!   attributes. Both with two builds at a time.
//! - **intake**: signed GitHub push deliveries to the real webhook route, against a trivial axum
//!   handler as the baseline (module [`intake`]); needs neither Nix nor the daemon binary.
//! - **remote**: remote building through reconix's agent transport (module [`remote`]): the
//!   setup overhead per build on a reused and on a fresh agent connection against raw Nix's
//!   `--builders ssh://localhost`, and closure transfer throughput against `nix copy`; needs Nix
//!   and the `reconix-agent` binary, not the daemon.
//! - **spec**: the real `reconix check FILE` on hostile spec files (deep nesting, huge files,
//!   alias bombs) and the largest valid one: wall time and peak RSS (module [`spec`]); needs
//!   the daemon binary, not Nix.
//!
//! Both sides use a chroot store of their own (`--nix-store DIR` / `--store DIR`), each warmed up
//! with a small flake first, and each run alternates which side goes first. Run
//! `reconix-bench --help` for the flags.

/// Prints a progress line on stderr.
macro_rules! progress {
    ($($arg:tt)*) => { eprintln!("[bench] {}", format_args!($($arg)*)) };
}

mod costs;
mod cpu;
mod flakes;
mod intake;
mod pages;
mod remote;
mod report;
mod scale;
mod spec;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use reconix_e2e::{DaemonConfig, GitRepo, TestDaemon, tail};
use serde_json::{Value, json};

use report::{Machine, Row, median};

/// How often the harness polls the API.
const API_POLL: Duration = Duration::from_millis(20);
/// How often the daemon polls the benchmark repository for new commits.
const FORGE_POLL: &str = "100ms";
/// Builds at once, for reconix (`builders.local.max-jobs`) and raw Nix (`--max-jobs`).
const MAX_JOBS: u32 = 2;
/// Packages in the warm-up flake each store sees before the measured runs.
const WARMUP_PACKAGES: usize = 10;
/// Pause after each measurement so the previous side's background work is over.
const SETTLE: Duration = Duration::from_secs(1);
/// The machine counts as idle below this many busy cores (our idle daemon polling git included).
const IDLE_CORES: f64 = 0.15;
/// The longest any single measurement may take.
const DEADLINE: Duration = Duration::from_secs(900);

const USAGE: &str = "\
usage: reconix-bench [--sizes 1000,5000] [--builds 200] [--runs 3]
                     [--only eval|evalscale|evalstream|evalingest|evalmem|build|build-busy|build-line|intake|remote|pages|spec] [--json PATH]
                     [--idle-wait 120] [--scale-attrs 20000] [--ingest-attrs 50000]
                     [--deliveries 20000] [--concurrency 16] [--remote-builds 50] [--closure-mib 256]
                     [--page-jobs 10000] [--page-requests 30] [--spec-timeout 120] [--spec-mem-mib 4096]
       reconix-bench intake [--deliveries 20000] [--concurrency 16] [--runs 3] [--json PATH]
       reconix-bench remote [--remote-builds 50] [--closure-mib 256] [--runs 3] [--json PATH]
       reconix-bench pages [--page-jobs 10000] [--page-requests 30] [--json PATH]
       reconix-bench spec [--runs 3] [--spec-timeout 120] [--spec-mem-mib 4096] [--json PATH]

Compares reconix with raw Nix on generated flakes (p_i depends on p_(i/10)), fresh salts each time:
  eval N    daemon: commit seen -> jobs recorded     raw: one bulk `nix eval --json` (appendix B)
  build N   daemon: commit -> evaluation finished    raw: one `nix build --no-link --max-jobs 2`
  evalscale --scale-attrs attributes of ~1 ms each, evaluation.workers 2: commit seen -> jobs
            recorded, against one bulk `nix eval` and against two `nix eval`s of one half each,
            started together (the raw limit of 2 workers)
  evalstream  the evalscale flake with building on (max-jobs 2): commit seen -> first job
            recorded and -> first build started, as fractions of the evaluation
  evalingest  --ingest-attrs chain packages: daemon peak RSS, last attribute evaluated -> every
            job recorded, and GET /evaluations/{id} latency at that size
  evalmem   40 attributes of ~400 MB and one of ~4 GiB, workers 2, max-memory 1 GiB: the
            evaluators' summed RSS (sampled every 50 ms) against the budget, the daemon's peak
            RSS, and the jobs (no raw comparison: Nix has no budget)
Each measurement runs --runs times; the table reports min and median. Progress goes to stderr.
Before each measurement the bench waits (at most --idle-wait seconds, 0 = not at all) until the
machine uses < 0.15 cores, and it warns when other processes used more during a measurement.
  intake    --deliveries signed GitHub pushes to POST /webhooks/{forge} over --concurrency
            connections (file-backed database): deliveries/s, p50/p99/max latency, against an
            axum handler that only reads the body (baseline); needs no Nix (`intake` = `--only intake`)
  remote    the bench as coordinator, the real reconix-agent serving a chroot store over SSH:
            --remote-builds trivial builds each on one reused connection (setup = open_serve +
            handshake) and on a fresh agent process per build, against raw Nix's
            `--builders ssh://localhost?remote-store=…` (median and p95); then a --closure-mib MiB
            closure (8 paths) sent to an empty store by build_remote (over the agent, and over a
            local nix-store --serve's pipes), against `nix copy` (store to store, and to
            ssh://localhost), --runs times (MiB/s); needs Nix and reconix-agent, not the daemon
            (`remote` = `--only remote`)
  pages     the status pages of one evaluation of --page-jobs jobs (file-backed database, the
            real router on loopback): first, middle and last page, `/` and the evaluation's JSON,
            --page-requests GETs each (min, median, p95); needs no Nix (`pages` = `--only pages`)
  spec      `reconix check FILE` on generated hostile specs (100,000 nested `[`, 25 MB of block
            nesting, a million `{`, alias bombs, …) and the largest valid one, --runs times each:
            wall time and peak RSS against 0.1 s and 50 MB; each run killed after --spec-timeout
            seconds and limited to --spec-mem-mib MiB of address space; needs no Nix
            (`spec` = `--only spec`)
The reconix binary is target/<profile>/reconix next to this one, or $RECONIX_BIN; reconix-agent
likewise, or $RECONIX_AGENT_BIN (without it the default run skips the remote benchmark).";

/// Which benchmarks to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Only {
    Eval,
    EvalScale,
    EvalStream,
    EvalIngest,
    EvalMem,
    Build,
    BuildBusy,
    BuildLine,
    Intake,
    Remote,
    Pages,
    Spec,
}

/// Command-line options.
#[derive(Debug)]
struct Opts {
    sizes: Vec<usize>,
    builds: Vec<usize>,
    runs: usize,
    only: Option<Only>,
    json: Option<PathBuf>,
    idle_wait: Duration,
    deliveries: usize,
    concurrency: usize,
    remote_builds: usize,
    closure_mib: usize,
    page_jobs: usize,
    page_requests: usize,
    spec_timeout: Duration,
    spec_mem_mib: usize,
    scale_attrs: usize,
    ingest_attrs: usize,
}

fn parse_list(flag: &str, value: Option<String>) -> Result<Vec<usize>> {
    let value = value.with_context(|| format!("{flag} needs a value"))?;
    value
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .with_context(|| format!("{flag}: `{s}` is not a positive number"))
        })
        .collect()
}

impl Opts {
    /// Parses the arguments; `None` means `--help` was asked for.
    fn parse(args: impl IntoIterator<Item = String>) -> Result<Option<Self>> {
        let mut opts = Self {
            sizes: vec![1000, 5000],
            builds: vec![200],
            runs: 3,
            only: None,
            json: None,
            idle_wait: Duration::from_secs(120),
            deliveries: 20_000,
            concurrency: 16,
            remote_builds: 50,
            closure_mib: 256,
            page_jobs: 10_000,
            page_requests: 30,
            spec_timeout: Duration::from_secs(120),
            spec_mem_mib: 4096,
            scale_attrs: 20_000,
            ingest_attrs: 50_000,
        };
        let mut args = args.into_iter().peekable();
        match args.peek().map(String::as_str) {
            Some("intake") => opts.only = Some(Only::Intake),
            Some("remote") => opts.only = Some(Only::Remote),
            Some("pages") => opts.only = Some(Only::Pages),
            Some("spec") => opts.only = Some(Only::Spec),
            _ => {}
        }
        if opts.only.is_some() {
            args.next();
        }
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
                _ => (arg.clone(), None),
            };
            let mut value = || inline.clone().or_else(|| args.next());
            match flag.as_str() {
                "-h" | "--help" => return Ok(None),
                "--sizes" => opts.sizes = parse_list("--sizes", value())?,
                "--builds" => opts.builds = parse_list("--builds", value())?,
                "--runs" => {
                    opts.runs = match parse_list("--runs", value())?.as_slice() {
                        [n] => *n,
                        _ => bail!("--runs takes one positive number"),
                    }
                }
                "--only" => {
                    opts.only = match value().as_deref() {
                        Some("eval") => Some(Only::Eval),
                        Some("evalscale") => Some(Only::EvalScale),
                        Some("evalmem") => Some(Only::EvalMem),
                        Some("evalstream") => Some(Only::EvalStream),
                        Some("evalingest") => Some(Only::EvalIngest),
                        Some("build") => Some(Only::Build),
                        Some("build-busy") => Some(Only::BuildBusy),
                        Some("build-line") => Some(Only::BuildLine),
                        Some("intake") => Some(Only::Intake),
                        Some("remote") => Some(Only::Remote),
                        Some("pages") => Some(Only::Pages),
                        Some("spec") => Some(Only::Spec),
                        other => bail!(
                            "--only takes `eval`, `evalscale`, `evalstream`, `evalingest`, `evalmem`, \
                             `build`, `build-busy`, `build-line`, `intake`, `remote`, `pages` or \
                             `spec`, not {other:?}"
                        ),
                    }
                }
                "--idle-wait" => {
                    let v = value().context("--idle-wait needs a number of seconds")?;
                    let secs = v.parse::<u64>().ok().with_context(|| {
                        format!("--idle-wait: `{v}` is not a number of seconds")
                    })?;
                    opts.idle_wait = Duration::from_secs(secs);
                }
                "--deliveries" | "--concurrency" | "--remote-builds" | "--closure-mib"
                | "--page-jobs" | "--page-requests" | "--spec-timeout" | "--spec-mem-mib"
                | "--scale-attrs" | "--ingest-attrs" => {
                    let n = match parse_list(&flag, value())?.as_slice() {
                        [n] => *n,
                        _ => bail!("{flag} takes one positive number"),
                    };
                    match flag.as_str() {
                        "--deliveries" => opts.deliveries = n,
                        "--concurrency" => opts.concurrency = n,
                        "--remote-builds" => opts.remote_builds = n,
                        "--page-jobs" => opts.page_jobs = n,
                        "--page-requests" => opts.page_requests = n,
                        "--spec-timeout" => opts.spec_timeout = Duration::from_secs(n as u64),
                        "--spec-mem-mib" => opts.spec_mem_mib = n,
                        "--scale-attrs" => opts.scale_attrs = n,
                        "--ingest-attrs" => opts.ingest_attrs = n,
                        _ => opts.closure_mib = n,
                    }
                }
                "--json" => opts.json = Some(value().context("--json needs a path")?.into()),
                other => bail!("unknown argument `{other}`\n\n{USAGE}"),
            }
        }
        Ok(Some(opts))
    }

    fn wants(&self, kind: Only) -> bool {
        self.only.is_none_or(|o| o == kind)
    }

    fn intake_settings(&self) -> intake::Settings {
        intake::Settings {
            deliveries: self.deliveries,
            concurrency: self.concurrency,
            runs: self.runs,
        }
    }

    fn pages_settings(&self) -> pages::Settings {
        pages::Settings {
            jobs: self.page_jobs,
            requests: self.page_requests,
        }
    }

    fn spec_settings(&self) -> spec::Settings {
        spec::Settings {
            runs: self.runs,
            timeout: self.spec_timeout,
            mem_mib: self.spec_mem_mib,
        }
    }

    fn remote_settings(&self) -> remote::Settings {
        remote::Settings {
            builds: self.remote_builds,
            closure_mib: self.closure_mib,
            runs: self.runs,
            idle_wait: self.idle_wait,
        }
    }
}

/// `reconix-bench intake` or `reconix-bench remote`: one benchmark alone, without the daemon.
fn run_alone(opts: &Opts, only: Only) -> Result<ExitCode> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("e2e crate has no parent")?;
    let machine = Machine::read(workspace);
    let (text, key, json) = if only == Only::Spec {
        let reconix = spec::reconix_bin()?;
        progress!("reconix binary: {}", reconix.display());
        eprint!("{}", machine.text());
        let report = spec::run(opts.spec_settings(), &reconix)?;
        (report.text(), "spec", report.to_json())
    } else if only == Only::Pages {
        eprint!("{}", machine.text());
        let report = pages::run(opts.pages_settings())?;
        (report.text(), "pages", report.to_json())
    } else if only == Only::Remote {
        reconix_e2e::require_nix()?;
        let agent = remote::agent_bin()?;
        progress!("reconix-agent binary: {}", agent.display());
        eprint!("{}", machine.text());
        let report = remote::run(opts.remote_settings(), &agent)?;
        (report.text(), "remote", report.to_json())
    } else {
        eprint!("{}", machine.text());
        let report = intake::run(opts.intake_settings())?;
        (report.text(), "intake", report.to_json())
    };
    println!("# reconix-bench results\n");
    print!("{}", machine.text());
    println!();
    print!("{text}");
    if let Some(path) = &opts.json {
        let doc = json!({ "machine": machine.to_json(), key: json });
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("[bench] wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("reconix-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<ExitCode> {
    let Some(opts) = Opts::parse(std::env::args().skip(1))? else {
        println!("{USAGE}");
        return Ok(ExitCode::SUCCESS);
    };
    if let Some(only @ (Only::Intake | Only::Remote | Only::Pages | Only::Spec)) = opts.only {
        return run_alone(&opts, only);
    }
    // The e2e harness finds the daemon through RECONIX_BIN. Setting our own environment needs
    // `unsafe` in edition 2024, so when it is unset we run ourselves again with it set.
    if std::env::var_os("RECONIX_BIN").is_none() {
        let exe = std::env::current_exe()?;
        let bin = sibling_reconix()?;
        let status = Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env("RECONIX_BIN", &bin)
            .status()
            .context("re-running reconix-bench")?;
        return Ok(ExitCode::from(
            status
                .code()
                .and_then(|c| u8::try_from(c).ok())
                .unwrap_or(1),
        ));
    }
    reconix_e2e::require_nix()?;
    let reconix = reconix_e2e::reconix_bin()?;
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("e2e crate has no parent")?;
    let machine = Machine::read(workspace);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    progress!("reconix binary: {}", reconix.display());
    progress!("load average at start: {}", load.join(" "));
    eprint!("{}", machine.text());

    let mut rows = Vec::new();
    let mut commands = serde_json::Map::new();
    let mut details = Vec::new();
    let mut notes = Vec::new();
    if opts.wants(Only::Eval) {
        for &n in &opts.sizes {
            let r = bench_eval(n, &opts)?;
            commands.insert(format!("eval {n}"), json!(r.command));
            details.push(r.details);
            notes.push(r.note);
            rows.extend(r.rows);
        }
    }
    if opts.wants(Only::EvalScale) {
        let r = scale::throughput(opts.scale_attrs, &opts)?;
        commands.insert(format!("evalscale {}", opts.scale_attrs), json!(r.command));
        details.push(r.details);
        notes.push(r.note);
        rows.extend(r.rows);
    }
    if opts.wants(Only::EvalStream) {
        let r = scale::streaming(opts.scale_attrs, &opts)?;
        details.push(r.details);
        notes.push(r.note);
    }
    if opts.wants(Only::EvalIngest) {
        let r = scale::ingest(opts.ingest_attrs, &opts)?;
        details.push(r.details);
        notes.push(r.note);
    }
    if opts.wants(Only::EvalMem) {
        let r = scale::memory(&opts)?;
        commands.insert("evalmem".to_owned(), json!(r.command));
        details.push(r.details);
        notes.push(r.note);
        rows.extend(r.rows);
    }
    let mut shapes: Vec<(flakes::Shape, usize)> = Vec::new();
    if opts.wants(Only::Build) {
        shapes.extend(opts.builds.iter().map(|&n| (flakes::Shape::Tree, n)));
    }
    if opts.wants(Only::BuildBusy) {
        shapes.push((flakes::Shape::Busy, SHAPED_BUILDS));
    }
    if opts.wants(Only::BuildLine) {
        shapes.push((flakes::Shape::Line, SHAPED_BUILDS));
    }
    for (shape, n) in shapes {
        let r = bench_build(n, &opts, shape)?;
        commands.insert(format!("{} {n}", shape.kind()), json!(r.command));
        details.push(r.details);
        notes.push(r.note);
        rows.extend(r.rows);
    }
    let intake = if opts.wants(Only::Intake) {
        Some(intake::run(opts.intake_settings())?)
    } else {
        None
    };
    let pages = if opts.wants(Only::Pages) {
        Some(pages::run(opts.pages_settings())?)
    } else {
        None
    };
    let spec = if opts.wants(Only::Spec) {
        Some(spec::run(opts.spec_settings(), &reconix)?)
    } else {
        None
    };
    // `make bench` builds the daemon and this crate; the agent may not be there.
    let remote = match remote::agent_bin() {
        _ if !opts.wants(Only::Remote) => None,
        Ok(agent) => {
            progress!("reconix-agent binary: {}", agent.display());
            Some(Ok(remote::run(opts.remote_settings(), &agent)?))
        }
        Err(e) => {
            progress!("WARNING: skipping the remote benchmark: {e:#}");
            Some(Err(e))
        }
    };

    let table = report::table(&rows);
    println!("# reconix-bench results\n");
    print!("{}", machine.text());
    println!("reconix binary: {}", reconix.display());
    println!("load average at start: {}", load.join(" "));
    println!(
        "runs: {}; daemon forge poll-interval {FORGE_POLL}; API polled every {} ms; max-jobs {MAX_JOBS}\n",
        opts.runs,
        API_POLL.as_millis()
    );
    println!("{table}");
    for note in &notes {
        println!("- {note}");
    }
    println!();
    println!("Raw Nix commands (last run of each; JOBS = the appendix B expression below):");
    for (name, cmd) in &commands {
        println!("  {name}: {}", cmd.as_str().unwrap_or_default());
    }
    println!("\nJOBS='{}'", flakes::JOBS_EXPR);
    if let Some(intake) = &intake {
        println!();
        print!("{}", intake.text());
    }
    if let Some(pages) = &pages {
        println!();
        print!("{}", pages.text());
    }
    if let Some(spec) = &spec {
        println!();
        print!("{}", spec.text());
    }
    match &remote {
        Some(Ok(remote)) => {
            println!();
            print!("{}", remote.text());
        }
        Some(Err(e)) => println!("\n## Remote building\n\nSkipped: {e:#}"),
        None => {}
    }

    if let Some(path) = &opts.json {
        let settings = json!({
            "reconix_binary": reconix.display().to_string(),
            "load_average_at_start": load,
            "runs": opts.runs, "sizes": opts.sizes, "builds": opts.builds,
            "forge_poll_interval": FORGE_POLL, "api_poll_ms": API_POLL.as_millis(),
            "max_jobs": MAX_JOBS, "warmup_packages": WARMUP_PACKAGES,
            "settle_ms": SETTLE.as_millis(), "idle_wait_s": opts.idle_wait.as_secs(),
            "idle_cores": IDLE_CORES, "jobs_expr": flakes::JOBS_EXPR,
        });
        let mut doc = report::to_json(
            &machine,
            &settings,
            &Value::Object(commands),
            &rows,
            &json!(details),
        );
        if let Some(intake) = &intake {
            doc["intake"] = intake.to_json();
        }
        if let Some(pages) = &pages {
            doc["pages"] = pages.to_json();
        }
        if let Some(spec) = &spec {
            doc["spec"] = spec.to_json();
        }
        match &remote {
            Some(Ok(remote)) => doc["remote"] = remote.to_json(),
            Some(Err(e)) => doc["remote"] = json!({ "skipped": format!("{e:#}") }),
            None => {}
        }
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        progress!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// What one benchmark produced.
struct Outcome {
    rows: Vec<Row>,
    command: String,
    details: Value,
    /// A line for the notes below the table.
    note: String,
}

/// A git checkout plus a salt counter, for one side of a benchmark.
struct Checkout {
    repo: GitRepo,
    side: &'static str,
    commits: usize,
    shape: flakes::Shape,
}

impl Checkout {
    fn new(side: &'static str) -> Result<Self> {
        Ok(Self {
            repo: GitRepo::new()?,
            side,
            commits: 0,
            shape: flakes::Shape::Tree,
        })
    }

    /// The same, committing flakes of `shape`.
    fn with_shape(mut self, shape: flakes::Shape) -> Self {
        self.shape = shape;
        self
    }

    /// Commits a flake of `n` packages of its shape with a fresh salt; returns the sha and the moment
    /// just before `git commit` started (as an instant and in ms since the epoch).
    fn commit(&mut self, n: usize) -> Result<(String, Instant, f64)> {
        self.commits += 1;
        let salt = format!("{}-{}-{}", self.side, self.commits, unique());
        std::fs::write(
            self.repo.path().join("flake.nix"),
            self.shape.flake(n, &salt),
        )?;
        self.repo.git(&["add", "-A"])?;
        let t0 = Instant::now();
        let t0_epoch = epoch_ms();
        self.repo
            .git(&["commit", "-q", "-m", &format!("{n} packages, salt {salt}")])?;
        let rev = self.repo.git(&["rev-parse", "HEAD"])?.trim().to_owned();
        Ok((rev, t0, t0_epoch))
    }

    fn flake_ref(&self, rev: &str) -> String {
        flakes::flake_ref(self.repo.path(), rev)
    }
}

/// Milliseconds since the Unix epoch.
fn epoch_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Nanoseconds since the epoch and our pid: unique per call on one machine.
fn unique() -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{n}-{}", std::process::id())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The environment the NixOS module gives the daemon (`nix/module.nix`) that changes what it
/// costs: every benchmark measures the daemon as deployed.
const DEPLOYED_ENV: &[(&str, &str)] = &[("MALLOC_ARENA_MAX", "2")];

/// Starts a daemon with `spec`, in the environment the NixOS module gives it.
fn launch(spec: String) -> Result<TestDaemon> {
    TestDaemon::start_with_env(&DaemonConfig { spec }, DEPLOYED_ENV)
}

/// Starts a daemon watching `checkout` with building limited to `max_jobs`.
fn start_daemon(checkout: &Checkout, max_jobs: u32) -> Result<TestDaemon> {
    launch(flakes::daemon_spec(
        checkout.repo.path(),
        FORGE_POLL,
        max_jobs,
    ))
}

/// Polls the evaluation list every [`API_POLL`] until the evaluation of `rev` is in a state
/// `done` accepts; returns its summary and when that was seen.
fn poll_evaluation(
    d: &TestDaemon,
    rev: &str,
    done: impl Fn(&str) -> bool,
) -> Result<(Value, Instant)> {
    poll_evaluation_every(d, rev, done, API_POLL)
}

/// [`poll_evaluation`] every `every`: for measurements taken from the daemon's own timestamps,
/// where polling often would only load the daemon being measured.
fn poll_evaluation_every(
    d: &TestDaemon,
    rev: &str,
    done: impl Fn(&str) -> bool,
    every: Duration,
) -> Result<(Value, Instant)> {
    let start = Instant::now();
    loop {
        let list = d.get_json("/api/v1/evaluations?limit=20")?;
        let seen = Instant::now();
        if let Some(e) = list
            .as_array()
            .and_then(|a| a.iter().find(|e| e["rev"] == rev))
        {
            let state = e["state"].as_str().unwrap_or_default();
            if state == "failed" || state == "superseded" {
                bail!(
                    "the evaluation of {rev} is {state}: {e}\ndaemon log:\n{}",
                    tail(&d.log(), 40)
                );
            }
            if done(state) {
                return Ok((e.clone(), seen));
            }
        }
        if start.elapsed() > DEADLINE {
            bail!(
                "timed out after {DEADLINE:?} waiting for the evaluation of {rev}; daemon log:\n{}",
                tail(&d.log(), 40)
            );
        }
        sleep(every);
    }
}

/// Returns the number of jobs per state of an evaluation summary.
fn job_count(summary: &Value, state: Option<&str>) -> u64 {
    summary["job_counts"].as_object().map_or(0, |counts| {
        counts
            .iter()
            .filter(|(s, _)| state.is_none_or(|want| want == s.as_str()))
            .filter_map(|(_, n)| n.as_u64())
            .sum()
    })
}

fn timestamp_ms(summary: &Value, field: &str) -> Result<f64> {
    summary[field]
        .as_i64()
        .map(|t| t as f64)
        .with_context(|| format!("evaluation has no {field}: {summary}"))
}

/// Finds the daemon's `evaluation recorded` line for evaluation `id`; returns its timestamp
/// (ms since the epoch) and the `elapsed_ms` it reports (the time of reconix's Nix calls).
fn recorded_line(d: &TestDaemon, id: i64) -> Result<(f64, Option<f64>)> {
    let token = format!("evaluation={id}");
    let start = Instant::now();
    loop {
        let log = report::strip_ansi(&d.log());
        let found = log.lines().find(|l| {
            l.contains("evaluation recorded") && l.split_whitespace().any(|t| t == token)
        });
        if let Some(line) = found {
            let ts = line
                .split_whitespace()
                .next()
                .and_then(report::rfc3339_ms)
                .with_context(|| format!("no timestamp on the log line `{line}`"))?;
            let elapsed = line
                .split_whitespace()
                .find_map(|t| t.strip_prefix("elapsed_ms="))
                .and_then(|v| v.parse::<f64>().ok());
            return Ok((ts, elapsed));
        }
        ensure!(
            start.elapsed() < Duration::from_secs(30),
            "no `evaluation recorded` line for evaluation {id} in the daemon log:\n{}",
            tail(&log, 40)
        );
        sleep(API_POLL);
    }
}

/// Runs `nix` with `args`, timed; fails with its stderr.
fn timed_nix(args: &[OsString], what: &str) -> Result<(Duration, String)> {
    let start = Instant::now();
    let out = Command::new("nix")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawning nix for {what}"))?;
    let elapsed = start.elapsed();
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            tail(&String::from_utf8_lossy(&out.stderr), 20)
        );
    }
    Ok((elapsed, String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// Checks a raw evaluation's output: `n` packages, each with a drvPath.
fn check_raw_eval(stdout: &str, n: usize) -> Result<()> {
    let v: Value = serde_json::from_str(stdout).context("raw nix eval printed no JSON")?;
    let packages = v["packages"].as_object().context("no packages")?;
    let ok = packages
        .values()
        .filter(|p| p["drvPath"].as_str().is_some_and(|d| d.ends_with(".drv")))
        .count();
    ensure!(ok == n, "raw nix eval gave {ok} derivations, expected {n}");
    Ok(())
}

/// Where the time of a reconix build evaluation went, from the API's server-side timestamps.
#[derive(Debug, Clone, Copy)]
struct Phases {
    /// Evaluation row created → first build started.
    before_first: f64,
    /// First build started → last build finished.
    span: f64,
    /// Last build finished → evaluation finished.
    after_last: f64,
    /// Mean of each build's `finished_at - started_at`.
    mean_build: f64,
    /// How many builds there were.
    builds: usize,
    /// Mean time from a build's end to the start of the next build to start after it: in a
    /// line of builds, the latency of dispatching a build that just became ready.
    mean_gap: f64,
}

fn build_phases(detail: &Value) -> Result<Phases> {
    let created = timestamp_ms(detail, "created_at")?;
    let finished = timestamp_ms(detail, "finished_at")?;
    let builds: Vec<(f64, f64)> = detail["jobs"]
        .as_array()
        .context("no jobs")?
        .iter()
        .filter_map(|j| {
            let b = &j["build"];
            Some((
                b["started_at"].as_i64()? as f64,
                b["finished_at"].as_i64()? as f64,
            ))
        })
        .collect();
    ensure!(!builds.is_empty(), "no build timestamps in {detail}");
    let first = builds.iter().map(|b| b.0).fold(f64::INFINITY, f64::min);
    let last = builds.iter().map(|b| b.1).fold(f64::NEG_INFINITY, f64::max);
    let total: f64 = builds.iter().map(|b| b.1 - b.0).sum();
    let mut by_start = builds.clone();
    by_start.sort_by(|a, b| a.0.total_cmp(&b.0));
    let gaps: Vec<f64> = by_start
        .windows(2)
        .map(|w| (w[1].0 - w[0].1).max(0.0))
        .collect();
    Ok(Phases {
        before_first: first - created,
        span: last - first,
        after_last: finished - last,
        mean_build: total / builds.len() as f64,
        builds: builds.len(),
        mean_gap: gaps.iter().sum::<f64>() / gaps.len().max(1) as f64,
    })
}

/// Returns the CPU others used since `start`, warning when other processes (or the hypervisor)
/// took more than a tenth of one core over the measured `elapsed` time.
fn check_foreign(start: cpu::Sample, elapsed: Duration, what: &str) -> cpu::Usage {
    let u = cpu::usage(start, cpu::sample());
    if u.other + u.steal > 0.1 * elapsed.as_secs_f64() {
        progress!(
            "WARNING: other processes used {:.2} CPU s (steal {:.2} s) during the {what} \
             measurement ({:.2} s): the machine is not idle, numbers are skewed",
            u.other,
            u.steal,
            elapsed.as_secs_f64()
        );
    }
    u
}

fn usage_json(u: cpu::Usage) -> Value {
    json!({ "other_cpu_s": u.other, "kernel_threads_cpu_s": u.kernel, "steal_s": u.steal })
}

/// Pauses after a measurement: [`SETTLE`], then until the machine is idle (at most `idle_wait`):
/// neither side may measure in the wake of the other (the daemon's follow-up work, the kernel's
/// tear-down of sandboxes) or of a neighbour.
fn settle(idle_wait: Duration) {
    sleep(SETTLE);
    if idle_wait.is_zero() {
        return;
    }
    let (waited, busy) = cpu::wait_idle(IDLE_CORES, idle_wait);
    if waited > Duration::from_secs(2) {
        let verdict = if waited >= idle_wait {
            "gave up and measure anyway"
        } else {
            "now idle"
        };
        progress!(
            "waited {:.0} s for the machine to be idle ({verdict}; last second: {busy:.2} cores busy)",
            waited.as_secs_f64()
        );
    }
}

/// A fresh chroot store directory for raw Nix.
fn raw_store() -> Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new()
        .prefix("reconix-bench-raw-store")
        .tempdir()?)
}

fn bench_eval(n: usize, opts: &Opts) -> Result<Outcome> {
    let runs = opts.runs;
    progress!(
        "eval {n}: setting up (daemon with building off, warm-up of {WARMUP_PACKAGES} packages on both sides)"
    );
    let mut ours = Checkout::new("reconix")?;
    let mut raw = Checkout::new("raw")?;
    let store_dir = raw_store()?;
    let store = store_dir.path().join("store");

    // Warm-up: each store gets a small evaluation before the measured ones.
    let (rev, _, _) = ours.commit(WARMUP_PACKAGES)?;
    // max-jobs 0: nothing is built, so no build competes with the next measurement.
    let d = start_daemon(&ours, 0)?;
    poll_evaluation(&d, &rev, |s| s != "queued" && s != "evaluating")?;
    let (rev, _, _) = raw.commit(WARMUP_PACKAGES)?;
    timed_nix(
        &flakes::raw_eval_args(&store, &raw.flake_ref(&rev)),
        "warm-up nix eval",
    )?;
    settle(opts.idle_wait);

    let (mut server, mut wall, mut nix_part, mut raw_ms) = (vec![], vec![], vec![], vec![]);
    let mut detect = Vec::new();
    let mut foreign_max = 0.0_f64;
    let mut command = String::new();
    let mut runs_detail = Vec::new();
    for run in 0..runs {
        let ours_first = run % 2 == 0;
        let mut detail = json!({ "run": run + 1, "reconix_first": ours_first });
        for side in if ours_first { [0, 1] } else { [1, 0] } {
            if side == 0 {
                let c0 = cpu::sample();
                let (rev, t0, t0_epoch) = ours.commit(n)?;
                let (summary, seen) =
                    poll_evaluation(&d, &rev, |s| s != "queued" && s != "evaluating")?;
                let foreign = check_foreign(c0, seen - t0, &format!("eval {n} reconix"));
                detail["reconix_other_load"] = usage_json(foreign);
                foreign_max = foreign_max.max(foreign.other + foreign.steal);
                let id = summary["id"].as_i64().context("evaluation id")?;
                let (recorded, elapsed) = recorded_line(&d, id)?;
                let created = timestamp_ms(&summary, "created_at")?;
                ensure!(
                    job_count(&summary, None) == n as u64
                        && job_count(&summary, Some("eval-failed")) == 0,
                    "evaluation {id} recorded the wrong jobs: {summary}"
                );
                let s = recorded - created;
                let w = ms(seen - t0);
                progress!(
                    "eval {n} run {}: reconix {:.2} s (commit seen -> recorded; nix calls + .drv parsing {:.2} s), {:.2} s commit -> API",
                    run + 1,
                    s / 1000.0,
                    elapsed.unwrap_or(f64::NAN) / 1000.0,
                    w / 1000.0
                );
                server.push(s);
                wall.push(w);
                nix_part.push(elapsed.unwrap_or(f64::NAN));
                detail["reconix_server_ms"] = json!(s);
                detail["reconix_wall_ms"] = json!(w);
                detail["reconix_nix_elapsed_ms"] = json!(elapsed);
                // From `git commit` to the daemon's evaluation row: forge polling latency.
                detail["reconix_detect_ms"] = json!(created - t0_epoch);
                detect.push(created - t0_epoch);
            } else {
                let (rev, _, _) = raw.commit(n)?;
                let flake_ref = raw.flake_ref(&rev);
                let c0 = cpu::sample();
                let (t, stdout) =
                    timed_nix(&flakes::raw_eval_args(&store, &flake_ref), "raw nix eval")?;
                let foreign = check_foreign(c0, t, &format!("eval {n} raw"));
                detail["raw_other_load"] = usage_json(foreign);
                foreign_max = foreign_max.max(foreign.other + foreign.steal);
                check_raw_eval(&stdout, n)?;
                command = flakes::raw_eval_display(&store, &flake_ref);
                progress!(
                    "eval {n} run {}: raw nix eval {:.2} s",
                    run + 1,
                    ms(t) / 1000.0
                );
                raw_ms.push(ms(t));
                detail["raw_ms"] = json!(ms(t));
            }
            settle(opts.idle_wait);
        }
        runs_detail.push(detail);
    }
    drop(d);
    let note = format!(
        "eval {n}: other processes (and steal) used at most {foreign_max:.2} CPU s during one measurement; git commit → the daemon's evaluation row (forge polling) took {:.0} ms (median); \
         its `nix` calls + `.drv` parsing took {:.2} s (median) of its {:.2} s",
        median(&detect),
        median(&nix_part) / 1000.0,
        median(&server) / 1000.0
    );
    let rows = vec![
        Row {
            kind: "eval",
            n,
            metric: "commit seen → jobs recorded (server side)",
            reconix_ms: server,
            raw_ms: raw_ms.clone(),
            target: Some(1.3),
        },
        Row {
            kind: "eval",
            n,
            metric: "git commit → jobs visible in the API (wall clock)",
            reconix_ms: wall,
            raw_ms: raw_ms.clone(),
            target: None,
        },
        Row {
            kind: "eval",
            n,
            metric: "its `nix` calls + `.drv` parsing alone (`elapsed_ms`)",
            reconix_ms: nix_part,
            raw_ms,
            target: None,
        },
    ];
    Ok(Outcome {
        rows,
        command,
        details: json!({ "benchmark": "eval", "packages": n, "runs": runs_detail }),
        note,
    })
}

/// Packages of the `build-busy` and `build-line` flakes.
const SHAPED_BUILDS: usize = 50;

fn bench_build(n: usize, opts: &Opts, shape: flakes::Shape) -> Result<Outcome> {
    let runs = opts.runs;
    let kind = shape.kind();
    progress!(
        "{kind} {n}: setting up (daemon with max-jobs {MAX_JOBS}, warm-up of {WARMUP_PACKAGES} packages on both sides)"
    );
    let mut ours = Checkout::new("reconix")?.with_shape(shape);
    let mut raw = Checkout::new("raw")?.with_shape(shape);
    let store_dir = raw_store()?;
    let store = store_dir.path().join("store");

    let (rev, _, _) = ours.commit(WARMUP_PACKAGES)?;
    let d = start_daemon(&ours, MAX_JOBS)?;
    poll_evaluation(&d, &rev, |s| s == "finished")?;
    let (rev, _, _) = raw.commit(WARMUP_PACKAGES)?;
    timed_nix(
        &flakes::raw_build_args(&store, &raw.flake_ref(&rev), WARMUP_PACKAGES, MAX_JOBS),
        "warm-up nix build",
    )?;
    settle(opts.idle_wait);

    let (mut wall, mut server, mut raw_ms) = (vec![], vec![], vec![]);
    let mut detect = Vec::new();
    let mut foreign_max = 0.0_f64;
    let mut phase_list: Vec<Phases> = Vec::new();
    let mut cost_list: Vec<costs::Costs> = Vec::new();
    let mut command = String::new();
    let mut runs_detail = Vec::new();
    for run in 0..runs {
        let ours_first = run % 2 == 0;
        let mut detail = json!({ "run": run + 1, "reconix_first": ours_first });
        let (mut ours_costs, mut raw_cpu) = (None, None);
        for side in if ours_first { [0, 1] } else { [1, 0] } {
            let before = costs::snapshot(&d)?;
            if side == 0 {
                let c0 = cpu::sample();
                let (rev, t0, t0_epoch) = ours.commit(n)?;
                // Measured by the daemon's own `finished_at`: polling the API often would load
                // the daemon being measured.
                let (summary, seen) =
                    poll_evaluation_every(&d, &rev, |s| s == "finished", scale::GENTLE_POLL)?;
                let foreign = check_foreign(c0, seen - t0, &format!("{kind} {n} reconix"));
                detail["reconix_other_load"] = usage_json(foreign);
                foreign_max = foreign_max.max(foreign.other + foreign.steal);
                ensure!(
                    job_count(&summary, Some("succeeded")) == n as u64,
                    "not every job succeeded: {summary}"
                );
                let w = timestamp_ms(&summary, "finished_at")? - t0_epoch;
                let s =
                    timestamp_ms(&summary, "finished_at")? - timestamp_ms(&summary, "created_at")?;
                progress!(
                    "{kind} {n} run {}: reconix {:.2} s commit -> finished ({:.2} s server side)",
                    run + 1,
                    w / 1000.0,
                    s / 1000.0
                );
                wall.push(w);
                server.push(s);
                detail["reconix_wall_ms"] = json!(w);
                detail["reconix_server_ms"] = json!(s);
                let detected = timestamp_ms(&summary, "created_at")? - t0_epoch;
                detail["reconix_detect_ms"] = json!(detected);
                detect.push(detected);
                let id = summary["id"].as_i64().context("evaluation id")?;
                let phases = build_phases(&d.get_json(&format!("/api/v1/evaluations/{id}"))?)?;
                progress!(
                    "{kind} {n} run {}: first build started {:.2} s after the commit was seen, \
                     builds spanned {:.2} s, {:.0} ms per build on average, {:.1} ms from a \
                     build's end to the next start",
                    run + 1,
                    phases.before_first / 1000.0,
                    phases.span / 1000.0,
                    phases.mean_build,
                    phases.mean_gap
                );
                detail["reconix_phases"] = json!({
                    "seen_to_first_build_ms": phases.before_first,
                    "first_build_to_last_build_ms": phases.span,
                    "last_build_to_finished_ms": phases.after_last,
                    "mean_build_ms": phases.mean_build,
                    "mean_gap_ms": phases.mean_gap,
                    "builds": phases.builds,
                });
                phase_list.push(phases);
            } else {
                let (rev, _, _) = raw.commit(n)?;
                let flake_ref = raw.flake_ref(&rev);
                let c0 = cpu::sample();
                let bench_cpu = costs::cpu_of("self")?;
                let (t, _) = timed_nix(
                    &flakes::raw_build_args(&store, &flake_ref, n, MAX_JOBS),
                    "raw nix build",
                )?;
                raw_cpu = Some(costs::cpu_of("self")?.children - bench_cpu.children);
                let foreign = check_foreign(c0, t, &format!("{kind} {n} raw"));
                detail["raw_other_load"] = usage_json(foreign);
                foreign_max = foreign_max.max(foreign.other + foreign.steal);
                command = flakes::raw_build_display(&store, &flake_ref, n, MAX_JOBS);
                progress!(
                    "{kind} {n} run {}: raw nix build {:.2} s",
                    run + 1,
                    ms(t) / 1000.0
                );
                raw_ms.push(ms(t));
                detail["raw_ms"] = json!(ms(t));
            }
            // Let the daemon's follow-up work (GC roots) end before the next measurement.
            settle(opts.idle_wait);
            if side == 0 {
                // After the settle: closures are measured once a build has left the running set.
                ours_costs = Some(costs::Costs::between(&before, &costs::snapshot(&d)?, n));
            }
        }
        if let Some(c) = ours_costs {
            let c = match raw_cpu {
                Some(r) => c.with_raw_cpu(r),
                None => c,
            };
            progress!("{kind} {n} run {}: costs: {}", run + 1, c.line());
            detail["costs"] = c.json();
            cost_list.push(c);
        }
        runs_detail.push(detail);
    }
    drop(d);
    let pick = |f: fn(&Phases) -> f64| median(&phase_list.iter().map(f).collect::<Vec<_>>());
    let note = format!(
        "{kind} {n} (medians): git commit → the daemon's evaluation row (forge polling) {:.0} ms; \
         evaluation row → first build started {:.2} s; first build started → last build finished \
         {:.2} s; last build → evaluation finished {:.0} ms; one build (`started_at` → \
         `finished_at`) {:.0} ms on average; other processes (and steal) used at most {foreign_max:.2} CPU s \
         during one measurement",
        median(&detect),
        pick(|p| p.before_first) / 1000.0,
        pick(|p| p.span) / 1000.0,
        pick(|p| p.after_last),
        pick(|p| p.mean_build),
    );
    // The report of the last run (each run's is in the progress lines and the JSON).
    let note = match cost_list.last() {
        Some(c) => format!("{note}\n{kind} {n}, last run's costs: {}", c.line()),
        None => note,
    };
    let rows = vec![
        Row {
            kind,
            n,
            metric: "git commit → evaluation finished (the daemon's `finished_at`)",
            reconix_ms: wall,
            raw_ms: raw_ms.clone(),
            target: Some(shape.target()),
        },
        Row {
            kind,
            n,
            metric: "commit seen → finished (server side)",
            reconix_ms: server,
            raw_ms,
            target: None,
        },
    ];
    Ok(Outcome {
        rows,
        command,
        details: json!({ "benchmark": kind, "packages": n, "runs": runs_detail }),
        note,
    })
}

/// Returns the `reconix` binary next to this bench, which `cargo build --release -p reconix -p
/// reconix-e2e --bins` (and `make bench`) put there.
///
/// # Errors
/// When it is not there, saying how to build it or to set `RECONIX_BIN`.
pub(crate) fn sibling_reconix() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .context("the bench binary has no directory")?
        .join("reconix");
    ensure!(
        bin.exists(),
        "{} not found: build it with `cargo build --release -p reconix -p reconix-e2e --bins` \
         (make bench does), or point RECONIX_BIN at a reconix binary",
        bin.display()
    );
    Ok(bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn options_should_parse_lists_and_defaults() {
        let o = Opts::parse(args(
            "--sizes 10,20 --builds=5 --runs 1 --only eval --json x.json --idle-wait 0",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(o.sizes, vec![10, 20]);
        assert_eq!(o.builds, vec![5]);
        assert_eq!(o.runs, 1);
        assert_eq!(o.only, Some(Only::Eval));
        assert_eq!(o.json, Some(PathBuf::from("x.json")));
        assert_eq!(o.idle_wait, Duration::ZERO);
        let d = Opts::parse(Vec::new()).unwrap().unwrap();
        assert_eq!(
            (d.sizes, d.builds, d.runs, d.only),
            (vec![1000, 5000], vec![200], 3, None)
        );
        assert!(Opts::parse(args("--help")).unwrap().is_none());
        let r = Opts::parse(args("remote --remote-builds 5 --closure-mib=16 --runs 2"))
            .unwrap()
            .unwrap();
        assert_eq!(
            (r.only, r.remote_builds, r.closure_mib, r.runs),
            (Some(Only::Remote), 5, 16, 2)
        );
        let r = Opts::parse(args("--only remote")).unwrap().unwrap();
        assert_eq!(
            (r.only, r.remote_builds, r.closure_mib),
            (Some(Only::Remote), 50, 256)
        );
        assert!(Opts::parse(args("--only nothing")).is_err());
        assert!(Opts::parse(args("--runs 0")).is_err());
        assert!(Opts::parse(args("--bogus")).is_err());
    }

    #[test]
    fn chain_flake_should_carry_size_and_salt() {
        let f = flakes::chain_flake(42, "s4lt");
        assert!(f.contains("42);"), "{f}");
        assert!(f.contains("salt = \"s4lt\""), "{f}");
        assert!(!f.contains("exec "), "builders must not exec-redirect");
    }
}
