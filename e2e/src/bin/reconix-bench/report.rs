//! Statistics, machine facts, the results table and its JSON form.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

/// One compared quantity: reconix's samples against raw Nix's, one pair per run.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    /// `eval` or `build`.
    pub(crate) kind: &'static str,
    /// Number of packages in the flake.
    pub(crate) n: usize,
    /// What the reconix samples measure.
    pub(crate) metric: &'static str,
    /// reconix, milliseconds, in run order.
    pub(crate) reconix_ms: Vec<f64>,
    /// raw Nix, milliseconds, in run order.
    pub(crate) raw_ms: Vec<f64>,
    /// The target ratio (median / median), when this row is the one the target is judged on.
    pub(crate) target: Option<f64>,
}

impl Row {
    fn ratio(&self) -> f64 {
        median(&self.reconix_ms) / median(&self.raw_ms)
    }

    fn ratio_min(&self) -> f64 {
        min(&self.reconix_ms) / min(&self.raw_ms)
    }

    fn met(&self) -> Option<bool> {
        self.target.map(|t| self.ratio() <= t)
    }

    fn label(&self) -> String {
        format!("{} {}", self.kind, self.n)
    }
}

/// Returns the smallest sample.
pub(crate) fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

/// Returns the median (the mean of the middle two for an even count).
pub(crate) fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => f64::midpoint(s[n / 2 - 1], s[n / 2]),
    }
}

fn secs(ms: f64) -> String {
    format!("{:.2} s", ms / 1000.0)
}

/// Facts about the machine the numbers were taken on.
#[derive(Debug, Clone)]
pub(crate) struct Machine {
    pub(crate) date: String,
    pub(crate) nproc: String,
    pub(crate) cpu: String,
    pub(crate) memory: String,
    pub(crate) kernel: String,
    pub(crate) nix: String,
    pub(crate) reconix_rev: String,
}

fn output(cmd: &mut Command) -> String {
    cmd.output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}

impl Machine {
    /// Reads the facts off this machine; `workspace` is the reconix checkout (for its revision).
    pub(crate) fn read(workspace: &Path) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".to_owned(), |(_, m)| m.trim().to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or_else(
                || "unknown".to_owned(),
                |kb| format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0),
            );
        let rev = output(Command::new("git").arg("-C").arg(workspace).args([
            "rev-parse",
            "--short=12",
            "HEAD",
        ]));
        let dirty = !output(Command::new("git").arg("-C").arg(workspace).args([
            "status",
            "--porcelain",
            "--untracked-files=no",
        ]))
        .is_empty();
        Self {
            date: output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])),
            nproc: output(&mut Command::new("nproc")),
            cpu,
            memory,
            kernel: output(Command::new("uname").args(["-srm"])),
            nix: output(Command::new("nix").arg("--version")),
            reconix_rev: if dirty {
                format!("{rev} + uncommitted changes")
            } else {
                rev
            },
        }
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "date": self.date, "nproc": self.nproc, "cpu": self.cpu, "memory": self.memory,
            "kernel": self.kernel, "nix": self.nix, "reconix_rev": self.reconix_rev,
        })
    }

    /// Renders the facts as text lines.
    pub(crate) fn text(&self) -> String {
        format!(
            "date:    {}\nmachine: {} cores ({}), {} RAM, {}\nnix:     {}\nreconix: {} (this checkout)\n",
            self.date, self.nproc, self.cpu, self.memory, self.kernel, self.nix, self.reconix_rev
        )
    }
}

/// Renders the rows as a Markdown table.
pub(crate) fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| benchmark | reconix measured as | runs | reconix min | reconix median | raw Nix min | raw Nix median | ratio (median) | ratio (min) | target | met |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let (target, met) = match (r.target, r.met()) {
            (Some(t), Some(true)) => (format!("≤ {t:.2}×"), "yes"),
            (Some(t), _) => (format!("≤ {t:.2}×"), "**no**"),
            (None, _) => ("–".to_owned(), "–"),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {:.2}× | {:.2}× | {target} | {met} |",
            r.label(),
            r.metric,
            r.reconix_ms.len(),
            secs(min(&r.reconix_ms)),
            secs(median(&r.reconix_ms)),
            secs(min(&r.raw_ms)),
            secs(median(&r.raw_ms)),
            r.ratio(),
            r.ratio_min(),
        );
    }
    out
}

/// Renders the whole report as JSON.
pub(crate) fn to_json(
    machine: &Machine,
    settings: &Value,
    commands: &Value,
    rows: &[Row],
    extra: &Value,
) -> Value {
    let results: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "benchmark": r.kind, "packages": r.n, "reconix_metric": r.metric,
                "reconix_ms": r.reconix_ms, "raw_ms": r.raw_ms,
                "reconix_min_ms": min(&r.reconix_ms), "reconix_median_ms": median(&r.reconix_ms),
                "raw_min_ms": min(&r.raw_ms), "raw_median_ms": median(&r.raw_ms),
                "ratio_median": r.ratio(), "ratio_min": r.ratio_min(),
                "target_ratio": r.target, "target_met": r.met(),
            })
        })
        .collect();
    json!({
        "machine": machine.to_json(),
        "settings": settings,
        "raw_nix_commands": commands,
        "results": results,
        "details": extra,
    })
}

/// Parses an RFC 3339 timestamp (`2026-11-22T10:00:00.123456Z`, or with a `±HH:MM` offset) into
/// milliseconds since the Unix epoch.
pub(crate) fn rfc3339_ms(s: &str) -> Option<f64> {
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(str::parse::<i64>);
    let (y, mo, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (clock, offset_min) = if let Some(c) = time.strip_suffix('Z') {
        (c, 0)
    } else {
        let at = time.rfind(['+', '-'])?;
        let (c, off) = time.split_at(at);
        let sign = if off.starts_with('-') { -1 } else { 1 };
        let (oh, om) = off[1..].split_once(':')?;
        (
            c,
            sign * (oh.parse::<i64>().ok()? * 60 + om.parse::<i64>().ok()?),
        )
    };
    let mut t = clock.split(':');
    let (h, mi) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec = t.next()?.parse::<f64>().ok()?;
    let days = days_from_civil(y, mo, day);
    let whole = ((days * 24 + h) * 60 + mi - offset_min) * 60;
    Some((whole as f64 + sec) * 1000.0)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Removes ANSI escape sequences (the daemon's log is coloured).
pub(crate) fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_should_parse_utc_and_offsets() {
        assert_eq!(rfc3339_ms("1970-01-01T00:00:01.5Z"), Some(1500.0));
        assert_eq!(rfc3339_ms("2000-03-01T00:00:00Z"), Some(951_868_800_000.0));
        assert_eq!(rfc3339_ms("1970-01-01T01:00:00+01:00"), Some(0.0));
        assert_eq!(rfc3339_ms("nonsense"), None);
    }

    #[test]
    fn median_should_average_the_middle_pair() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(min(&[4.0, 1.0]), 1.0);
    }

    #[test]
    fn strip_ansi_should_remove_colour_codes() {
        assert_eq!(strip_ansi("\x1b[2mevaluation\x1b[0m=3"), "evaluation=3");
    }
}
