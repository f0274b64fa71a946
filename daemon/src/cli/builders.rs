//! `reconix builders list|revoke|admit`: the builders (the local one and the enrolled agents)
//! with their state, load and running builds, read from (and revoked or admitted in) the state
//! directory's database. A running daemon notices a revocation on the agent's next connection
//! or heartbeat, tells the agent and drops it; the agent's key stays refused for good and its
//! name until `admit`. Both verbs record who ran them (`--by`, else the OS user).

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use reconix_spec::{Spec, Timestamp};
use reconix_status::{OpenMode, StatusDb};
use reconix_web::{BuilderState, BuilderView, builder_views};

use super::serve::load_spec_or_report;
use super::{Output, SpecArgs};

/// How many job attributes the RUNNING column shows before `+N more`.
const RUNNING_SHOWN: usize = 2;
/// How many characters of one attribute the RUNNING column shows.
const ATTR_WIDTH: usize = 48;

/// `reconix builders …` verbs.
#[derive(Debug, Subcommand)]
pub(crate) enum BuildersCommand {
    /// Lists the builders (local and enrolled agents) with their state, offer, load, running
    /// jobs and last heartbeat.
    List {
        #[command(flatten)]
        spec: SpecArgs,
        /// Output format.
        #[arg(long, short, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Revokes an agent: its key is refused for good (whatever token comes with it), and its
    /// name until `reconix builders admit NAME`.
    Revoke {
        #[command(flatten)]
        spec: SpecArgs,
        /// The agent's name.
        name: String,
        /// Who revokes it, as recorded [default: the OS user, else `operator`].
        #[arg(long)]
        by: Option<String>,
    },
    /// Admits a revoked agent's name again: an agent may enrol under it with the token and a
    /// new key (its revoked key stays refused).
    Admit {
        #[command(flatten)]
        spec: SpecArgs,
        /// The agent's name.
        name: String,
        /// Who admits it, as recorded [default: the OS user, else `operator`].
        #[arg(long)]
        by: Option<String>,
    },
}

/// Returns who runs this command, as recorded: `by` when given, else the OS user name
/// (`$USER`, `$LOGNAME`), else `operator`.
fn operator(by: Option<String>) -> String {
    by.or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("LOGNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "operator".to_owned())
}

/// Runs a `reconix builders` verb.
pub(crate) fn run(command: BuildersCommand) -> Result<ExitCode> {
    match command {
        BuildersCommand::List { spec, output } => {
            let Some((spec, db)) = open(&spec, OpenMode::ReadOnly)? else {
                return Ok(ExitCode::FAILURE);
            };
            let now = Timestamp::now();
            let views = builder_views(&spec.builders, db.agents()?, db.running_builds()?, now);
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&views)?),
                Output::Table => print!("{}", table(&views, now)),
            }
            Ok(ExitCode::SUCCESS)
        }
        BuildersCommand::Revoke { spec, name, by } => {
            let Some((_, mut db)) = open(&spec, OpenMode::ReadWrite)? else {
                return Ok(ExitCode::FAILURE);
            };
            if db.revoke_agent(&name, Timestamp::now(), &operator(by))? {
                println!(
                    "revoked {name}: its key is refused for good, and the name until \
                     `reconix builders admit {name}`"
                );
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("no enrolled, unrevoked agent named {name}");
                Ok(ExitCode::FAILURE)
            }
        }
        BuildersCommand::Admit { spec, name, by } => {
            let Some((_, mut db)) = open(&spec, OpenMode::ReadWrite)? else {
                return Ok(ExitCode::FAILURE);
            };
            if db.admit_agent(&name, Timestamp::now(), &operator(by))? {
                println!(
                    "admitted {name}: it may enrol again with the enrollment token and a new key \
                     (its revoked key stays refused)"
                );
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("no revoked agent named {name}");
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

/// Loads the spec and opens the database of its state directory; `None` (with a message) when
/// the spec is invalid or the daemon never ran there.
fn open(args: &SpecArgs, mode: OpenMode) -> Result<Option<(Spec, StatusDb)>> {
    let Some(spec) = load_spec_or_report(args) else {
        return Ok(None);
    };
    let path = spec.state_dir.join("reconix.db");
    if !path.exists() {
        eprintln!(
            "no database at {}: the daemon has not run with this state directory",
            path.display()
        );
        return Ok(None);
    }
    let db = StatusDb::open(&path, mode).with_context(|| format!("opening {}", path.display()))?;
    Ok(Some((spec, db)))
}

/// Returns `text` cut to `max` characters, ending in `…` when cut.
fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Names what runs on a builder: the attributes of the jobs waiting on its builds (a build no
/// job waits on by its drv name), the first few only.
fn running_cell(view: &BuilderView) -> String {
    let mut names: Vec<String> = Vec::new();
    for build in &view.running_builds {
        if build.jobs.is_empty() {
            names.push(build.drv_path.name().to_owned());
        }
        for job in &build.jobs {
            if !names.iter().any(|n| n == job.attr.as_str()) {
                names.push(job.attr.to_string());
            }
        }
    }
    if names.is_empty() {
        return "-".to_owned();
    }
    let more = names.len().saturating_sub(RUNNING_SHOWN);
    let mut cell = names
        .iter()
        .take(RUNNING_SHOWN)
        .map(|n| truncate(n, ATTR_WIDTH))
        .collect::<Vec<_>>()
        .join(",");
    if more > 0 {
        cell.push_str(&format!(" +{more} more"));
    }
    cell
}

/// Renders builders as aligned columns.
fn table(views: &[BuilderView], now: Timestamp) -> String {
    let ago = |t: Option<Timestamp>| {
        t.map_or_else(
            || "-".to_owned(),
            |t| format!("{}s ago", now.since(t).as_secs()),
        )
    };
    let or_dash = |s: String| if s.is_empty() { "-".to_owned() } else { s };
    let mut rows = vec![
        [
            "NAME",
            "STATE",
            "SYSTEMS",
            "FEATURES",
            "LOAD",
            "RUNNING",
            "HEARTBEAT",
            "KEY",
            "NOTE",
        ]
        .map(str::to_owned),
    ];
    for v in views {
        rows.push([
            v.name.clone(),
            v.state.to_string(),
            or_dash(v.systems.join(",")),
            or_dash(v.features.join(",")),
            format!("{}/{}", v.running, v.max_jobs),
            running_cell(v),
            ago(v.last_heartbeat_at),
            v.key_fingerprint.clone().unwrap_or_else(|| "-".to_owned()),
            note(v, now),
        ]);
    }
    super::table::render(&rows)
}

/// Says what a revoked or re-admitted agent is waiting for, and who did it when.
fn note(view: &BuilderView, now: Timestamp) -> String {
    let by_when = |by: &Option<String>, at: Option<Timestamp>| {
        let by = by.as_deref().unwrap_or("operator");
        at.map_or_else(
            || format!("by {by}"),
            |t| format!("by {by} {}s ago", now.since(t).as_secs()),
        )
    };
    match view.state {
        BuilderState::Revoked => format!(
            "revoked {}; `reconix builders admit {}` to let it enrol with a new key",
            by_when(&view.revoked_by, view.revoked_at),
            view.name
        ),
        BuilderState::Admitted => format!(
            "admitted {}; waits for a new key and the token",
            by_when(&view.admitted_by, view.admitted_at)
        ),
        BuilderState::Ready
        | BuilderState::Disabled
        | BuilderState::Unresponsive
        | BuilderState::Disconnected => "-".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use reconix_spec::{AttrPath, BuilderName, Builders, Offer, StorePath, System};
    use reconix_status::{AgentRow, EvaluationId, JobId, RunningBuild, RunningJob};

    use super::*;

    fn drv(n: u32) -> StorePath {
        StorePath::new(format!("/nix/store/{n:0>32}-job-{n}.drv")).unwrap()
    }

    fn build(n: u32, attrs: &[&str]) -> RunningBuild {
        RunningBuild {
            drv_path: drv(n),
            started_at: Some(Timestamp(1_000)),
            attempts: 1,
            jobs: attrs
                .iter()
                .enumerate()
                .map(|(i, a)| RunningJob {
                    id: JobId(i64::from(n) * 10 + i64::try_from(i).unwrap()),
                    evaluation_id: EvaluationId(1),
                    attr: AttrPath::new(*a).unwrap(),
                })
                .collect(),
        }
    }

    fn views() -> Vec<BuilderView> {
        let row = AgentRow {
            name: BuilderName::new("arm1").unwrap(),
            key_fingerprint: "SHA256:abc".to_owned(),
            offer: Offer {
                systems: vec![System::new("aarch64-linux").unwrap()],
                features: vec!["big-parallel".to_owned()],
                max_jobs: 2,
            },
            enrolled_at: Timestamp(0),
            revoked_at: None,
            connected_at: Some(Timestamp(0)),
            last_heartbeat_at: Some(Timestamp(5_000)),
            running: 1,
            revoked_by: None,
            admitted_at: None,
            admitted_by: None,
            key_revoked: false,
        };
        let mut revoked = row.clone();
        revoked.name = BuilderName::new("old").unwrap();
        revoked.revoked_at = Some(Timestamp(1));
        revoked.revoked_by = Some("alice".to_owned());
        revoked.key_revoked = true;
        let mut admitted = row.clone();
        admitted.name = BuilderName::new("older").unwrap();
        admitted.connected_at = None;
        admitted.admitted_at = Some(Timestamp(2_000));
        admitted.admitted_by = Some("bob".to_owned());
        admitted.key_revoked = true;
        let long = format!("checks.x86_64-linux.{}", "x".repeat(80));
        let running = BTreeMap::from([
            (
                "arm1".to_owned(),
                vec![build(1, &["packages.aarch64-linux.hello"])],
            ),
            (
                "local".to_owned(),
                vec![
                    build(2, &[&long, "packages.x86_64-linux.a"]),
                    build(3, &["packages.x86_64-linux.b"]),
                    build(4, &[]),
                ],
            ),
        ]);
        builder_views(
            &Builders::default(),
            vec![row, revoked, admitted],
            running,
            Timestamp(12_000),
        )
    }

    #[test]
    fn the_table_should_show_state_load_running_jobs_and_heartbeat_age() {
        let out = table(&views(), Timestamp(12_000));
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[0].starts_with("NAME") && lines[0].contains("RUNNING"),
            "{out}"
        );
        // Local: over its 2 slots, long attributes cut, the rest counted.
        assert!(
            lines[1].starts_with("local")
                && lines[1].contains("ready")
                && lines[1].contains("3/2")
                && lines[1].contains("checks.x86_64-linux.xxx")
                && lines[1].contains("…,packages.x86_64-linux.a +2 more")
                && !lines[1].contains(&"x".repeat(60)),
            "{out}"
        );
        assert!(
            lines[2].starts_with("arm1")
                && lines[2].contains("ready")
                && lines[2].contains("1/2")
                && lines[2].contains("packages.aarch64-linux.hello")
                && lines[2].contains("7s ago")
                && lines[2].contains("SHA256:abc"),
            "{out}"
        );
        assert!(
            lines[3].starts_with("old")
                && lines[3].contains("revoked")
                && lines[3].contains("revoked by alice 11s ago; `reconix builders admit old`"),
            "{out}"
        );
        assert!(
            lines[4].starts_with("older")
                && lines[4].contains(" admitted ")
                && lines[4].contains("admitted by bob 10s ago; waits for a new key"),
            "{out}"
        );
        assert!(lines[1].trim_end().ends_with('-'), "{out}");
    }

    #[test]
    fn the_operator_should_be_the_given_name_else_the_os_user_else_operator() {
        assert_eq!(operator(Some("alice".to_owned())), "alice");
        assert_eq!(operator(Some("  ".to_owned())), "operator");
        // `$USER` is set in most environments; whichever it is, a name comes out.
        assert!(!operator(None).is_empty());
    }

    #[test]
    fn a_build_no_job_waits_on_should_be_named_by_its_drv() {
        let out = table(&views(), Timestamp(12_000));
        let local: Vec<BuilderView> = views().into_iter().take(1).collect();
        let mut only_orphan = local[0].clone();
        only_orphan.running_builds.retain(|b| b.jobs.is_empty());
        assert_eq!(running_cell(&only_orphan), "job-4.drv", "{out}");
        only_orphan.running_builds.clear();
        assert_eq!(running_cell(&only_orphan), "-");
    }
}
