//! `reconix builders list|revoke`: the enrolled remote builders, read from (and revoked in) the
//! state directory's database. A running daemon notices a revocation on the agent's next
//! connection or heartbeat and drops it.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use reconix_spec::Timestamp;
use reconix_status::{AgentRow, OpenMode, StatusDb};

use super::serve::load_spec_or_report;
use super::{Output, SpecArgs};

/// `reconix builders …` verbs.
#[derive(Debug, Subcommand)]
pub(crate) enum BuildersCommand {
    /// Lists the enrolled agents with their state, offer, load and last heartbeat.
    List {
        #[command(flatten)]
        spec: SpecArgs,
        /// Output format.
        #[arg(long, short, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Revokes an agent's key: it is refused until it enrols again with a token.
    Revoke {
        #[command(flatten)]
        spec: SpecArgs,
        /// The agent's name.
        name: String,
    },
}

/// Runs a `reconix builders` verb.
pub(crate) fn run(command: BuildersCommand) -> Result<ExitCode> {
    match command {
        BuildersCommand::List { spec, output } => {
            let Some(db) = open(&spec, OpenMode::ReadOnly)? else {
                return Ok(ExitCode::FAILURE);
            };
            let agents = db.agents()?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&agents)?),
                Output::Table => print!("{}", table(&agents, Timestamp::now())),
            }
            Ok(ExitCode::SUCCESS)
        }
        BuildersCommand::Revoke { spec, name } => {
            let Some(mut db) = open(&spec, OpenMode::ReadWrite)? else {
                return Ok(ExitCode::FAILURE);
            };
            if db.revoke_agent(&name, Timestamp::now())? {
                println!("revoked {name}: it must enrol again with a token");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("no enrolled, unrevoked agent named {name}");
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

/// Opens the database of the spec's state directory; `None` (with a message) when the spec is
/// invalid or the daemon never ran there.
fn open(args: &SpecArgs, mode: OpenMode) -> Result<Option<StatusDb>> {
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
    Ok(Some(
        StatusDb::open(&path, mode).with_context(|| format!("opening {}", path.display()))?,
    ))
}

/// Renders agents as aligned columns.
fn table(agents: &[AgentRow], now: Timestamp) -> String {
    let ago = |t: Option<Timestamp>| {
        t.map_or_else(
            || "-".to_owned(),
            |t| format!("{}s ago", now.since(t).as_secs()),
        )
    };
    let mut rows = vec![[
        "NAME".to_owned(),
        "STATE".to_owned(),
        "SYSTEMS".to_owned(),
        "FEATURES".to_owned(),
        "LOAD".to_owned(),
        "HEARTBEAT".to_owned(),
        "KEY".to_owned(),
    ]];
    for a in agents {
        let state = if a.revoked_at.is_some() {
            "revoked"
        } else if a.connected_at.is_some() {
            "connected"
        } else {
            "disconnected"
        };
        rows.push([
            a.name.clone(),
            state.to_owned(),
            a.systems.join(","),
            a.features.join(","),
            format!("{}/{}", a.running, a.max_jobs),
            ago(a.last_heartbeat_at),
            a.key_fingerprint.clone(),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_should_show_state_load_and_heartbeat_age() {
        let row = AgentRow {
            name: "arm1".to_owned(),
            key_fingerprint: "SHA256:abc".to_owned(),
            systems: vec!["aarch64-linux".to_owned()],
            features: vec!["big-parallel".to_owned()],
            max_jobs: 2,
            enrolled_at: Timestamp(0),
            revoked_at: None,
            connected_at: Some(Timestamp(0)),
            last_heartbeat_at: Some(Timestamp(5_000)),
            running: 1,
        };
        let mut revoked = row.clone();
        revoked.name = "old".to_owned();
        revoked.revoked_at = Some(Timestamp(1));
        let out = table(&[row, revoked], Timestamp(12_000));
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("NAME"), "{out}");
        assert!(
            lines[1].contains("connected")
                && lines[1].contains("1/2")
                && lines[1].contains("7s ago"),
            "{out}"
        );
        assert!(lines[2].contains("revoked"), "{out}");
    }
}
