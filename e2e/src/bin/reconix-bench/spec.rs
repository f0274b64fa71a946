//! `reconix-bench spec`: what hostile spec files cost `reconix check`.
//!
//! The spec is read by the daemon on every change, so no file may stall it. The bench writes
//! the worst shapes found (deep flow and block nesting, huge files, alias bombs) and the
//! largest spec reconix accepts into a temporary directory, runs the real `reconix check FILE`
//! on each `--runs` times and reports the wall time (spawn to exit, measured here) and the
//! peak RSS of the process (`%M` of GNU `/usr/bin/time`, which reads it from `wait4`; without
//! it, the highest `VmHWM` seen while polling `/proc/PID/status` every millisecond, a lower
//! bound). Target per file: at most 0.1 s and 50 MB.
//!
//! Each run has a deadline (`--spec-timeout`, 120 s) and an address-space limit
//! (`--spec-mem-mib`, 4096 MiB, through `ulimit -v`), so that an older reconix, which took
//! minutes and gigabytes on some of these files, cannot take the shared machine down with it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::report::{median, min};

/// Target wall time per file.
pub(crate) const TARGET_SECS: f64 = 0.1;
/// Target peak RSS per file.
pub(crate) const TARGET_MB: f64 = 50.0;
/// GNU time, whose `%M` is the child's peak RSS from `wait4`.
const GNU_TIME: &str = "/usr/bin/time";

/// Settings of the spec benchmark.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) runs: usize,
    pub(crate) timeout: Duration,
    pub(crate) mem_mib: usize,
}

/// One generated spec file.
struct Case {
    name: &'static str,
    what: &'static str,
    text: String,
}

/// Returns `n` lines, line `i` indented by `i * indent` spaces.
fn indented(n: usize, indent: usize, line: &str) -> String {
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&" ".repeat(i * indent));
        text.push_str(line);
        text.push('\n');
    }
    text
}

fn cases() -> Vec<Case> {
    let mut flat = String::new();
    let mut i = 0;
    while flat.len() < 25_000_000 {
        let _ = writeln!(flat, "key{i}: value");
        i += 1;
    }
    // Every repo 4 nodes; 20,000 of them stay under the node limit (100,000) and the size limit.
    let repos = |n: usize| {
        let mut text = String::from("forges:\n  here:\n    kind: local\n    repos:\n");
        for i in 0..n {
            let _ = writeln!(text, "      r{i}: {{path: /srv/r{i}}}");
        }
        text
    };
    // `branches` of 10,000 items, then repos that each take it by alias: yaml_serde copies the
    // anchor into each repo (20,000 × 10,000 strings) unless the aliases are counted.
    let mut aliases = String::from("forges:\n  here:\n    kind: local\n    repos:\n");
    let _ = writeln!(
        aliases,
        "      r: {{path: /srv/r, branches: &b [{}]}}",
        vec!["main"; 10_000].join(", ")
    );
    for i in 0..20_000 {
        let _ = writeln!(aliases, "      r{i}: {{path: /srv/r{i}, branches: *b}}");
    }
    vec![
        Case {
            name: "flow-100k",
            what: "100,000 nested `[`, closed (200 KB)",
            text: "[".repeat(100_000) + &"]".repeat(100_000),
        },
        Case {
            name: "flow-20k",
            what: "20,000 nested `[`, closed (40 KB)",
            text: "[".repeat(20_000) + &"]".repeat(20_000),
        },
        Case {
            name: "flow-keys-40k",
            what: "40,000 × `a: [` (160 KB)",
            text: "a: [".repeat(40_000),
        },
        Case {
            name: "braces-1m",
            what: "1,000,000 × `{` (1 MB)",
            text: "{".repeat(1_000_000),
        },
        Case {
            name: "block-map-5000",
            what: "5,000 levels of `a:`, 2 more spaces each (25 MB)",
            text: indented(5_000, 2, "a:"),
        },
        Case {
            name: "block-seq-100k",
            what: "100,000 × `- ` on one line (200 KB)",
            text: "- ".repeat(100_000),
        },
        Case {
            name: "block-map-1000",
            what: "1,000 levels of `a:`, 1 more space each (0.5 MB)",
            text: indented(1_000, 1, "a:"),
        },
        Case {
            name: "flat-25mb",
            what: "`keyN: value` lines (25 MB)",
            text: flat,
        },
        Case {
            name: "aliases",
            what: "20,000 repos whose `branches` alias one list of 10,000 (1.0 MB)",
            text: aliases,
        },
        Case {
            name: "valid-1000",
            what: "a valid spec: 1,000 local repos (30 KB, 4,000 nodes)",
            text: repos(1_000),
        },
        Case {
            name: "valid-20000",
            what: "a valid spec: 20,000 local repos (0.6 MB, 80,000 nodes)",
            text: repos(20_000),
        },
    ]
}

/// One run of `reconix check`.
#[derive(Debug, Clone)]
struct Run {
    secs: f64,
    /// Peak RSS in MB (10^6 bytes), if measured.
    rss_mb: Option<f64>,
    /// Exit code; `None` when killed (deadline or signal).
    code: Option<i32>,
    timed_out: bool,
}

/// What one case measured.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    name: &'static str,
    what: &'static str,
    bytes: usize,
    runs: Vec<Run>,
    /// The first line `reconix check` printed (stderr, else stdout), the temp dir shown as `…`.
    first_line: String,
}

/// What the benchmark measured.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    settings: Settings,
    binary: PathBuf,
    rss_source: &'static str,
    samples: Vec<Sample>,
}

/// Returns the reconix binary: `$RECONIX_BIN`, or `reconix` next to this bench.
pub(crate) fn reconix_bin() -> Result<PathBuf> {
    match std::env::var_os("RECONIX_BIN") {
        Some(bin) => Ok(PathBuf::from(bin)),
        None => crate::sibling_reconix(),
    }
}

/// Runs every case against `reconix`.
pub(crate) fn run(settings: Settings, reconix: &Path) -> Result<Report> {
    let dir = tempfile::Builder::new()
        .prefix("reconix-bench-spec")
        .tempdir()?;
    let gnu_time = Path::new(GNU_TIME).exists();
    let mut samples = Vec::new();
    for case in cases() {
        let path = dir.path().join(format!("{}.yaml", case.name));
        std::fs::write(&path, &case.text).with_context(|| format!("writing {}", path.display()))?;
        let mut runs = Vec::new();
        let mut first_line = String::new();
        for _ in 0..settings.runs {
            let (run, line) = check(reconix, &path, dir.path(), settings, gnu_time)?;
            progress!(
                "spec: {} run {}: {:.3} s, {} MB, exit {:?}{}",
                case.name,
                runs.len() + 1,
                run.secs,
                run.rss_mb
                    .map_or_else(|| "?".to_owned(), |mb| format!("{mb:.1}")),
                run.code,
                if run.timed_out {
                    " (killed at the deadline)"
                } else {
                    ""
                }
            );
            first_line = line.replace(&dir.path().display().to_string(), "…");
            let timed_out = run.timed_out;
            runs.push(run);
            if timed_out {
                // Once is enough to know.
                break;
            }
        }
        samples.push(Sample {
            name: case.name,
            what: case.what,
            bytes: case.text.len(),
            runs,
            first_line,
        });
    }
    Ok(Report {
        settings,
        binary: reconix.to_path_buf(),
        rss_source: if gnu_time {
            "GNU time %M (wait4)"
        } else {
            "VmHWM polled every 1 ms (lower bound)"
        },
        samples,
    })
}

/// Runs `reconix check path` once under the deadline and the memory limit.
fn check(
    reconix: &Path,
    path: &Path,
    dir: &Path,
    settings: Settings,
    gnu_time: bool,
) -> Result<(Run, String)> {
    let rusage = dir.join("rusage");
    let _ = std::fs::remove_file(&rusage);
    let (out, err) = (dir.join("stdout"), dir.join("stderr"));
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"ulimit -v "$1" && shift && exec "$@""#)
        .arg("sh")
        .arg((settings.mem_mib * 1024).to_string());
    if gnu_time {
        cmd.arg(GNU_TIME).arg("-o").arg(&rusage).args(["-f", "%M"]);
    }
    cmd.arg(reconix)
        .arg("check")
        .arg(path)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out)?)
        .stderr(std::fs::File::create(&err)?);
    // Its own process group, so that the deadline kills reconix and not only `time`.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let started = Instant::now();
    let mut child = cmd.spawn().context("spawning reconix check")?;
    let pid = child.id();
    let mut hwm_kb: Option<u64> = None;
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > settings.timeout {
            timed_out = true;
            let _ = Command::new("kill")
                .args(["-KILL", &format!("-{pid}")])
                .status();
            break child.wait()?;
        }
        if !gnu_time {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let kb = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
            hwm_kb = hwm_kb.max(kb);
        }
        sleep(Duration::from_millis(1));
    };
    let secs = started.elapsed().as_secs_f64();
    let rss_kb = if gnu_time {
        // GNU time writes "Command exited with non-zero status N" before the format line.
        std::fs::read_to_string(&rusage)
            .ok()
            .and_then(|t| t.lines().last().and_then(|l| l.trim().parse::<u64>().ok()))
    } else {
        hwm_kb
    };
    let first = |file: &Path| {
        std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .next()
            .unwrap_or_default()
            .chars()
            .take(160)
            .collect::<String>()
    };
    let line = Some(first(&err))
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| first(&out));
    let run = Run {
        secs,
        rss_mb: rss_kb.map(|kb| kb as f64 * 1024.0 / 1e6),
        code: if timed_out { None } else { status.code() },
        timed_out,
    };
    Ok((run, line))
}

impl Sample {
    fn secs(&self) -> Vec<f64> {
        self.runs.iter().map(|r| r.secs).collect()
    }

    fn max_rss_mb(&self) -> Option<f64> {
        self.runs.iter().filter_map(|r| r.rss_mb).reduce(f64::max)
    }

    fn timed_out(&self) -> bool {
        self.runs.iter().any(|r| r.timed_out)
    }

    fn met(&self) -> bool {
        !self.timed_out()
            && median(&self.secs()) <= TARGET_SECS
            && self.max_rss_mb().is_some_and(|mb| mb <= TARGET_MB)
    }
}

impl Report {
    /// The results as a Markdown section.
    pub(crate) fn text(&self) -> String {
        let mut out = format!(
            "## Hostile specs\n\n`reconix check FILE` ({}), {} run(s) per file, deadline {} s, \
             address space limited to {} MiB; peak RSS from {}. Target per file: ≤ {TARGET_SECS} s \
             and ≤ {TARGET_MB} MB.\n\n\
             | file | shape | size | exit | wall min | wall median | peak RSS (max) | met | first line of output |\n\
             |---|---|---|---|---|---|---|---|---|\n",
            self.binary.display(),
            self.settings.runs,
            self.settings.timeout.as_secs(),
            self.settings.mem_mib,
            self.rss_source,
        );
        for s in &self.samples {
            let secs = s.secs();
            let exit = match s.runs.last() {
                Some(Run {
                    timed_out: true, ..
                }) => "killed".to_owned(),
                Some(Run { code: Some(c), .. }) => c.to_string(),
                _ => "signal".to_owned(),
            };
            let wall = |v: f64| {
                if s.timed_out() {
                    format!("> {} s", self.settings.timeout.as_secs())
                } else {
                    format!("{v:.3} s")
                }
            };
            let _ = writeln!(
                out,
                "| `{}` | {} | {:.2} MB | {exit} | {} | {} | {} | {} | `{}` |",
                s.name,
                s.what,
                s.bytes as f64 / 1e6,
                wall(min(&secs)),
                wall(median(&secs)),
                s.max_rss_mb()
                    .map_or_else(|| "?".to_owned(), |mb| format!("{mb:.1} MB")),
                if s.met() { "yes" } else { "**no**" },
                s.first_line.replace('|', "\\|").replace('`', "'"),
            );
        }
        out
    }

    /// The results as JSON.
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "binary": self.binary.display().to_string(),
            "runs": self.settings.runs,
            "timeout_s": self.settings.timeout.as_secs(),
            "mem_limit_mib": self.settings.mem_mib,
            "rss_source": self.rss_source,
            "target_secs": TARGET_SECS,
            "target_mb": TARGET_MB,
            "samples": self.samples.iter().map(|s| json!({
                "name": s.name, "what": s.what, "bytes": s.bytes,
                "secs": s.secs(), "max_rss_mb": s.max_rss_mb(),
                "exit": s.runs.last().and_then(|r| r.code),
                "timed_out": s.timed_out(), "met": s.met(),
                "first_line": s.first_line,
            })).collect::<Vec<_>>(),
        })
    }
}
