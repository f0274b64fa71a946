//! Measures build throughput (wall time, and CPU time of every process involved, which other
//! load on the machine does not inflate): 200 fresh trivial derivations (a new salt per run, so nothing is
//! already built) through `NixCli::realise` with 2 concurrent callers, on channels and with one
//! process per build, against one raw `nix-store --realise` of all 200 with `max-jobs 2`.
//!
//! ```sh
//! cargo run --release -p reconix-nixcli --example realise_throughput [-- DERIVATIONS (200) [ROUNDS (3)]]
//! ```
//!
//! Each round builds a fresh set per way, in an order that rotates from round to round; with
//! several rounds it also prints the minimum and median of each way (the machine may be busy).
//!
//! It needs a working Nix (`scripts/install-nix.sh`) and writes 3 × DERIVATIONS paths per round
//! to the store.

use std::error::Error;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reconix_nixcli::{BuildMode, BuildRequest, BuildStatus, Nix, NixCli};
use reconix_spec::names::StorePath;
use tokio_util::sync::CancellationToken;

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

/// How many `realise` calls run at a time (the daemon's build slots).
const CALLERS: usize = 2;

const EXPR: &str = r#"{ salt, count }:
builtins.listToAttrs (map (i: {
  name = "d${toString i}";
  value = derivation {
    name = "trivial-${toString i}";
    system = "x86_64-linux";
    builder = "/bin/sh";
    args = [ "-c" "echo ${toString i} > $out" ];
    inherit salt;
  };
}) (builtins.genList (i: i) count))
"#;

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let count: usize = args.next().map_or(Ok(200), |a| a.parse())?;
    let rounds: usize = args.next().map_or(Ok(3), |a| a.parse())?;
    let dir = tempfile::tempdir()?;
    let expr = dir.path().join("trivial.nix");
    std::fs::write(&expr, EXPR)?;
    println!("{count} fresh trivial derivations, {CALLERS} concurrent realise callers\n");

    let mut times: [Vec<Measured>; 3] = Default::default();
    for round in 0..rounds {
        // The order rotates from round to round, so that no way is always measured first.
        for step in 0..3 {
            let way = (round + step) % 3;
            let drvs = instantiate(&expr, count)?;
            let cpu_before = children_cpu()?;
            let wall = match way {
                0 => raw_realise(&drvs)?,
                1 => realise_all(NixCli::new(), drvs, dir.path()).await?,
                _ => {
                    let nix = NixCli::new().with_build_mode(BuildMode::Process);
                    realise_all(nix, drvs, dir.path()).await?
                }
            };
            // The runner is gone, so its channels were killed: count them once reaped.
            wait_for_children().await;
            let cpu = children_cpu()?.saturating_sub(cpu_before);
            times[way].push(Measured { wall, cpu });
        }
        println!("round {}:", round + 1);
        print_times(&times, |t| t[round]);
    }
    if rounds > 1 {
        println!("minimum of {rounds} rounds:");
        print_times(&times, |t| {
            let wall = t.iter().map(|m| m.wall).min().unwrap_or_default();
            let cpu = t.iter().map(|m| m.cpu).min().unwrap_or_default();
            Measured { wall, cpu }
        });
        println!("median of {rounds} rounds:");
        print_times(&times, |t| {
            let mut wall: Vec<Duration> = t.iter().map(|m| m.wall).collect();
            let mut cpu: Vec<Duration> = t.iter().map(|m| m.cpu).collect();
            wall.sort();
            cpu.sort();
            Measured {
                wall: wall[wall.len() / 2],
                cpu: cpu[cpu.len() / 2],
            }
        });
    }
    Ok(())
}

/// The cost of building one set.
#[derive(Debug, Clone, Copy, Default)]
struct Measured {
    /// Wall time.
    wall: Duration,
    /// CPU time (user + system) of every process started for it: Nix, builders, channels.
    cpu: Duration,
}

/// Prints one line per way of building, with its ratios to the raw `nix-store --realise`.
fn print_times(times: &[Vec<Measured>; 3], pick: impl Fn(&Vec<Measured>) -> Measured) {
    let raw = pick(&times[0]);
    let names = [
        "raw: one nix-store --realise of all (max-jobs 2)",
        "realise, BuildMode::Channel",
        "realise, BuildMode::Process",
    ];
    for (name, t) in names.iter().zip(times) {
        let m = pick(t);
        println!(
            "  {name:<50} wall {:>6.2} s {:>5.2}x   cpu {:>6.2} s {:>5.2}x",
            m.wall.as_secs_f64(),
            m.wall.as_secs_f64() / raw.wall.as_secs_f64(),
            m.cpu.as_secs_f64(),
            m.cpu.as_secs_f64() / raw.cpu.as_secs_f64().max(0.01),
        );
    }
}

/// Builds all of `drvs` with one `nix-store --realise` and returns the wall time.
fn raw_realise(drvs: &[StorePath]) -> Result<Duration> {
    let started = Instant::now();
    let out = Command::new("nix-store")
        .args(["--realise", "--option", "max-jobs", "2"])
        .args(drvs.iter().map(StorePath::as_str))
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "nix-store --realise failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(started.elapsed())
}

/// Returns the CPU time of this process's reaped children (and theirs), from `/proc/self/stat`.
fn children_cpu() -> Result<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // After `pid (comm) `, field 3 (state) is index 0; cutime and cstime are fields 16 and 17.
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .ok_or("unreadable /proc/self/stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks =
        |i: usize| -> Result<u64> { Ok(fields.get(i).ok_or("short /proc/self/stat")?.parse()?) };
    // Linux reports these in USER_HZ, which is 100.
    Ok(Duration::from_millis((ticks(13)? + ticks(14)?) * 10))
}

/// Waits (up to 5 s) until this process has no children left, reaped ones included.
async fn wait_for_children() {
    let me = std::process::id().to_string();
    let has_children = || {
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                std::fs::read_to_string(e.path().join("stat")).is_ok_and(|stat| {
                    stat.rsplit_once(") ")
                        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                        == Some(me.as_str())
                })
            })
    };
    for _ in 0..500 {
        if !has_children() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Writes `count` new derivations (a new salt) and returns their paths.
fn instantiate(expr: &Path, count: usize) -> Result<Vec<StorePath>> {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let salt = format!("{nanos}-{}", std::process::id());
    let out = Command::new("nix-instantiate")
        .arg(expr)
        .args([
            "--argstr",
            "salt",
            &salt,
            "--arg",
            "count",
            &count.to_string(),
        ])
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "nix-instantiate failed (is Nix installed? scripts/install-nix.sh): {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    String::from_utf8(out.stdout)?
        .lines()
        .map(|l| Ok(StorePath::new(l.trim())?))
        .collect()
}

/// Realises every derivation with [`CALLERS`] concurrent callers and returns the wall time.
async fn realise_all(nix: NixCli, drvs: Vec<StorePath>, logs: &Path) -> Result<Duration> {
    let queue = Arc::new(Mutex::new(drvs));
    let started = Instant::now();
    let mut callers = Vec::new();
    for _ in 0..CALLERS {
        let (nix, queue, logs) = (nix.clone(), queue.clone(), logs.to_owned());
        callers.push(tokio::spawn(async move {
            loop {
                let next = queue.lock().map_err(|e| e.to_string())?.pop();
                let Some(drv) = next else {
                    return Ok::<_, Box<dyn Error + Send + Sync>>(());
                };
                let req = BuildRequest {
                    log_file: logs.join(format!("{}.log", drv.name())),
                    drv_path: drv,
                    gc_root: None,
                    timeout: None,
                    max_silent: None,
                };
                let outcome = nix.realise(req, CancellationToken::new()).await?;
                if outcome.status != BuildStatus::Succeeded {
                    return Err(format!("build failed: {outcome:?}").into());
                }
            }
        }));
    }
    for caller in callers {
        caller.await??;
    }
    Ok(started.elapsed())
}
