//! The cost report of `build N`: where reconix's time goes around each build, and the CPU
//! reconix and the processes it spawned used, next to raw Nix's.
//!
//! The phases come from the daemon's `reconix_build_phase_duration_seconds{phase}` histogram
//! and the time each loop spent reconciling from `reconix_loop_reconcile_duration_seconds{loop}`
//! (`/metrics`, sums and counts taken before and after a run); the CPU from `/proc`: the
//! daemon's own `utime + stime`, its reaped children's `cutime + cstime`, and its live
//! children's CPU with what they reaped (the long-lived `nix-store --serve` channels run the
//! builders), and the same for the bench's children around the raw `nix build`.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use reconix_e2e::TestDaemon;
use serde_json::{Value, json};

/// The phases, in the order a build goes through them.
const PHASES: [&str; 5] = ["start", "build", "outputs", "record", "closure"];

/// The kernel's clock ticks per second for `/proc/<pid>/stat` times (`USER_HZ`), asked of
/// `getconf` once.
fn ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// CPU seconds of a process: its own, and its reaped children's.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Cpu {
    pub(crate) own: f64,
    pub(crate) children: f64,
}

/// The fields of `/proc/<pid>/stat` after the command name: `[0]` is the state, `[1]` the
/// parent's pid, `[11..=14]` utime, stime, cutime and cstime in clock ticks.
fn stat_fields(pid: &str) -> Result<Vec<f64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name is in parentheses and may hold spaces: count fields after it.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc stat")?;
    Ok(rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0.0))
        .collect())
}

/// Reads `/proc/<pid>/stat` (`self` for the bench): the process's own CPU, and its children's:
/// those it reaped, and those still running (long-lived ones, like reconix's build channels,
/// whose builders they reap themselves) with everything they reaped so far.
pub(crate) fn cpu_of(pid: &str) -> Result<Cpu> {
    let fields = stat_fields(pid)?;
    let tick = ticks_per_second();
    let at = |f: &[f64], i: usize| f.get(i).copied().unwrap_or(0.0) / tick;
    let own_pid = if pid == "self" {
        std::process::id().to_string()
    } else {
        pid.to_owned()
    };
    let mut live = 0.0;
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        // A process may end between the listing and the read: skip it.
        let Ok(child) = stat_fields(&name) else {
            continue;
        };
        if child.get(1).is_some_and(|ppid| ppid.to_string() == own_pid) {
            live += at(&child, 11) + at(&child, 12) + at(&child, 13) + at(&child, 14);
        }
    }
    Ok(Cpu {
        own: at(&fields, 11) + at(&fields, 12),
        children: at(&fields, 13) + at(&fields, 14) + live,
    })
}

/// What the daemon reported and used up to one moment.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    /// Phase → (seconds, attempts).
    phases: BTreeMap<String, (f64, f64)>,
    /// Loop → (seconds reconciling, reconciles).
    loops: BTreeMap<String, (f64, f64)>,
    cpu: Cpu,
}

/// Takes the daemon's phase sums and CPU now.
pub(crate) fn snapshot(d: &TestDaemon) -> Result<Snapshot> {
    let text = d.get_text("/metrics")?;
    let pid = d.pid().context("the daemon is not running")?;
    Ok(Snapshot {
        phases: label_sums(&text, "reconix_build_phase_duration_seconds", "phase"),
        loops: label_sums(&text, "reconix_loop_reconcile_duration_seconds", "loop"),
        cpu: cpu_of(&pid.to_string())?,
    })
}

/// Reads a histogram's `<metric>_{sum,count}{<label>="…"}` from a scrape: label value →
/// (sum, count).
fn label_sums(text: &str, metric: &str, label: &str) -> BTreeMap<String, (f64, f64)> {
    let mut sums: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    let (prefix, open) = (format!("{metric}_"), format!("{{{label}=\""));
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(prefix.as_str()) else {
            continue;
        };
        let Some((kind, rest)) = rest.split_once(open.as_str()) else {
            continue;
        };
        let Some((phase, value)) = rest.split_once("\"} ") else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let entry = sums.entry(phase.to_owned()).or_default();
        match kind {
            "sum" => entry.0 = value,
            "count" => entry.1 = value,
            _ => {}
        }
    }
    sums
}

/// One run's costs: the daemon's phases and CPU between two snapshots, and raw Nix's CPU.
#[derive(Debug, Clone)]
pub(crate) struct Costs {
    builds: usize,
    phases: Vec<(&'static str, f64, f64)>,
    /// The loops that reconciled, busiest first: (loop, seconds, reconciles).
    loops: Vec<(String, f64, f64)>,
    daemon: Cpu,
    raw_cpu: Option<f64>,
}

impl Costs {
    /// The costs between `before` and `after`, for `builds` builds.
    pub(crate) fn between(before: &Snapshot, after: &Snapshot, builds: usize) -> Self {
        let phases = PHASES
            .iter()
            .map(|&p| {
                let (s0, c0) = before.phases.get(p).copied().unwrap_or_default();
                let (s1, c1) = after.phases.get(p).copied().unwrap_or_default();
                (p, s1 - s0, c1 - c0)
            })
            .collect();
        let mut loops: Vec<(String, f64, f64)> = after
            .loops
            .iter()
            .map(|(name, (s1, c1))| {
                let (s0, c0) = before.loops.get(name).copied().unwrap_or_default();
                (name.clone(), s1 - s0, c1 - c0)
            })
            .filter(|(_, _, n)| *n > 0.0)
            .collect();
        loops.sort_by(|a, b| b.1.total_cmp(&a.1));
        Self {
            builds,
            phases,
            loops,
            daemon: Cpu {
                own: after.cpu.own - before.cpu.own,
                children: after.cpu.children - before.cpu.children,
            },
            raw_cpu: None,
        }
    }

    /// Adds raw Nix's CPU for the same run (its process and everything it reaped).
    pub(crate) fn with_raw_cpu(mut self, seconds: f64) -> Self {
        self.raw_cpu = Some(seconds);
        self
    }

    /// One line: each phase in total and per build, then the CPU.
    pub(crate) fn line(&self) -> String {
        let per = |s: f64| s * 1000.0 / self.builds.max(1) as f64;
        let phases: Vec<String> = self
            .phases
            .iter()
            .map(|(p, s, n)| format!("{p} {s:.2} s ({:.1} ms/build, {n:.0}×)", per(*s)))
            .collect();
        let raw = self
            .raw_cpu
            .map_or_else(String::new, |r| format!("; raw nix CPU {r:.2} s"));
        let loops: Vec<String> = self
            .loops
            .iter()
            .map(|(l, s, n)| format!("{l} {s:.2} s ({n:.0}×)"))
            .collect();
        format!(
            "{}; loops {}; reconix CPU {:.2} s, its children {:.2} s ({:.1} ms/build together){raw}",
            phases.join(", "),
            loops.join(", "),
            self.daemon.own,
            self.daemon.children,
            per(self.daemon.own + self.daemon.children),
        )
    }

    /// The same as JSON.
    pub(crate) fn json(&self) -> Value {
        let phases: serde_json::Map<String, Value> = self
            .phases
            .iter()
            .map(|(p, s, n)| ((*p).to_owned(), json!({ "seconds": s, "attempts": n })))
            .collect();
        let loops: serde_json::Map<String, Value> = self
            .loops
            .iter()
            .map(|(l, s, n)| (l.clone(), json!({ "seconds": s, "reconciles": n })))
            .collect();
        json!({
            "builds": self.builds,
            "phases": phases,
            "loops": loops,
            "reconix_cpu_s": self.daemon.own,
            "reconix_children_cpu_s": self.daemon.children,
            "raw_nix_cpu_s": self.raw_cpu,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_sums_should_be_read_from_a_scrape() {
        let text = "# TYPE reconix_build_phase_duration_seconds histogram\n\
            reconix_build_phase_duration_seconds_sum{phase=\"record\"} 0.5\n\
            reconix_build_phase_duration_seconds_count{phase=\"record\"} 2\n\
            reconix_build_phase_duration_seconds_bucket{le=\"0.001\",phase=\"record\"} 0\n\
            reconix_build_duration_seconds_sum{builder=\"local\",result=\"succeeded\"} 9.0\n";
        let sums = label_sums(text, "reconix_build_phase_duration_seconds", "phase");
        assert_eq!(sums.len(), 1);
        assert_eq!(sums["record"], (0.5, 2.0));
    }

    #[test]
    fn the_bench_s_own_cpu_should_be_readable() {
        let cpu = cpu_of("self").unwrap();
        assert!(cpu.own >= 0.0 && cpu.children >= 0.0);
        assert!(cpu_of("0").is_err());
    }
}
