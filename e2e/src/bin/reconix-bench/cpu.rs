//! How much CPU other processes used while a measurement ran: the machine may be shared, and a
//! compile or a test suite running alongside (possibly in another PID namespace, invisible to
//! `ps`) skews both sides. Linux only (`/proc`).

use std::time::{Duration, Instant};

/// Kernel clock ticks per second of `/proc` CPU times (`USER_HZ`, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// CPU time consumed so far, in clock ticks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    /// Busy time of the whole machine (every CPU; idle, iowait and steal excluded).
    machine: u64,
    /// Time the hypervisor ran something else while this VM wanted to run.
    steal: u64,
    /// This process and all its descendants, running or reaped (the daemon, its Nix processes
    /// and their builders).
    ours: u64,
    /// Kernel threads (children of `kthreadd`): block I/O, and the tear-down of the network
    /// namespaces every sandboxed build creates, on both sides.
    kernel: u64,
}

/// CPU seconds used between two samples.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Usage {
    /// By processes that are neither ours nor kernel threads.
    pub(crate) other: f64,
    /// By kernel threads.
    pub(crate) kernel: f64,
    /// Stolen by the hypervisor.
    pub(crate) steal: f64,
}

/// Takes a sample now.
pub(crate) fn sample() -> Sample {
    let (machine, steal) = machine_busy().unwrap_or((0, 0));
    let (ours, kernel) = process_times().unwrap_or((0, 0));
    Sample {
        machine,
        steal,
        ours,
        kernel,
    }
}

/// Returns what was used between `start` and `end` by others than us. Processes of ours still
/// running at `end` count as other until they are reaped, so `other` over-counts slightly.
pub(crate) fn usage(start: Sample, end: Sample) -> Usage {
    let d = |a: u64, b: u64| b.saturating_sub(a) as f64 / TICKS_PER_SEC;
    let machine = d(start.machine, end.machine);
    let ours = d(start.ours, end.ours);
    let kernel = d(start.kernel, end.kernel);
    Usage {
        other: (machine - ours - kernel).max(0.0),
        kernel,
        steal: d(start.steal, end.steal),
    }
}

/// Waits until the whole machine (our daemon included: its follow-up work after a measurement
/// must not overlap the next one) uses less than `max_cores` for a whole second, at most `limit`;
/// returns how long it waited and the cores busy in the last second (steal included).
pub(crate) fn wait_idle(max_cores: f64, limit: Duration) -> (Duration, f64) {
    let start = Instant::now();
    loop {
        let a = sample();
        std::thread::sleep(Duration::from_secs(1));
        let b = sample();
        let busy = (b.machine.saturating_sub(a.machine) + b.steal.saturating_sub(a.steal)) as f64
            / TICKS_PER_SEC;
        if busy < max_cores || start.elapsed() >= limit {
            return (start.elapsed(), busy);
        }
    }
}

/// `(busy, steal)` of the whole machine, from the first line of `/proc/stat`.
fn machine_busy() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    Some((get(0) + get(1) + get(2) + get(5) + get(6), get(7)))
}

/// `(ppid, utime + stime + cutime + cstime)` of one process.
fn proc_times(pid: &str) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state): ppid is field 4, utime..cstime are fields 14..17.
    let ppid = f.get(1)?.parse().ok()?;
    let times = f
        .get(11..15)?
        .iter()
        .filter_map(|t| t.parse::<u64>().ok())
        .sum();
    Some((ppid, times))
}

/// `(ours, kernel threads)`: this process with all its descendants (the daemon, its Nix
/// processes and their builders), and the children of `kthreadd`.
fn process_times() -> Option<(u64, u64)> {
    let me = std::process::id();
    let mut procs: Vec<(u32, u32, u64)> = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if let Some((ppid, times)) = proc_times(&pid.to_string()) {
            procs.push((pid, ppid, times));
        }
    }
    // A running descendant's time is its own; a reaped one's is in its parent's children time.
    let mut ours_set = std::collections::HashSet::from([me]);
    loop {
        let before = ours_set.len();
        for (pid, ppid, _) in &procs {
            if ours_set.contains(ppid) {
                ours_set.insert(*pid);
            }
        }
        if ours_set.len() == before {
            break;
        }
    }
    let ours = procs
        .iter()
        .filter(|(pid, _, _)| ours_set.contains(pid))
        .map(|p| p.2)
        .sum();
    let kernel = procs.iter().filter(|p| p.1 == 2).map(|p| p.2).sum();
    Some((ours, kernel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_should_read_proc() {
        let a = sample();
        assert!(a.machine > 0, "{a:?}");
        let u = usage(a, sample());
        assert!(u.other >= 0.0 && u.kernel >= 0.0 && u.steal >= 0.0);
    }
}
