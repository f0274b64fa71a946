//! `reconix get evaluations|jobs|builders`, `reconix describe evaluation ID` and
//! `reconix logs JOB [--follow]`: what a running daemon's API says, as tables or JSON.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::Subcommand;
use serde_json::Value;

use super::client::{Api, ServerArgs, print};
use super::serve::runtime;
use super::table::{render, rows};

/// What `reconix get` lists.
#[derive(Debug, Subcommand)]
pub(crate) enum GetCommand {
    /// The newest evaluations.
    Evaluations {
        #[command(flatten)]
        server: ServerArgs,
        /// How many at most.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// The jobs of an evaluation.
    Jobs {
        #[command(flatten)]
        server: ServerArgs,
        /// The evaluation.
        #[arg(long, short)]
        evaluation: i64,
        /// Only jobs in this state (`failed`, `building`, …).
        #[arg(long)]
        state: Option<String>,
        /// How many at most.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// The local builder and the enrolled agents, with state, load and running jobs.
    Builders {
        #[command(flatten)]
        server: ServerArgs,
    },
}

/// What `reconix describe` shows.
#[derive(Debug, Subcommand)]
pub(crate) enum DescribeCommand {
    /// One evaluation: where it comes from, its state and every job.
    Evaluation {
        #[command(flatten)]
        server: ServerArgs,
        /// The evaluation's id.
        id: i64,
    },
}

/// Runs `reconix get …`.
pub(crate) fn get(command: GetCommand) -> Result<ExitCode> {
    let (server, path, table): (ServerArgs, String, fn(&Value) -> String) = match command {
        GetCommand::Evaluations { server, limit } => (
            server,
            format!("evaluations?limit={limit}"),
            evaluations_table,
        ),
        GetCommand::Jobs {
            server,
            evaluation,
            state,
            limit,
        } => {
            let state = state.map(|s| format!("&state={s}")).unwrap_or_default();
            (
                server,
                format!("jobs?evaluation={evaluation}&limit={limit}{state}"),
                jobs_table,
            )
        }
        GetCommand::Builders { server } => (server, "builders".to_owned(), builders_table),
    };
    let api = Api::new(&server.server);
    let value = runtime()?.block_on(api.json(&path))?;
    print(server.output, &value, table)?;
    Ok(ExitCode::SUCCESS)
}

/// Runs `reconix describe …`.
pub(crate) fn describe(command: DescribeCommand) -> Result<ExitCode> {
    let DescribeCommand::Evaluation { server, id } = command;
    let api = Api::new(&server.server);
    let value = runtime()?.block_on(api.json(&format!("evaluations/{id}")))?;
    print(server.output, &value, describe_evaluation)?;
    Ok(ExitCode::SUCCESS)
}

/// Runs `reconix logs JOB [--follow]`: prints the log; with `--follow`, keeps printing what is
/// appended until the job is over.
pub(crate) fn logs(server: &str, job: i64, follow: bool) -> Result<ExitCode> {
    let api = Api::new(server);
    runtime()?.block_on(async {
        let mut offset = 0u64;
        let mut out = std::io::stdout();
        loop {
            let chunk = api.log(job, offset).await?;
            out.write_all(&chunk.bytes)?;
            out.flush()?;
            offset += chunk.bytes.len() as u64;
            if !follow || chunk.complete {
                return Ok(ExitCode::SUCCESS);
            }
            if chunk.bytes.is_empty() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    })
}

fn short_rev(v: &mut Value) {
    if let Some(rev) = v["rev"].as_str() {
        v["rev"] = Value::String(rev.chars().take(12).collect());
    }
}

fn job_counts(v: &Value) -> String {
    v["job_counts"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, n)| format!("{n} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// The evaluations table (also used by `reconix status`).
pub(crate) fn evaluations_table(list: &Value) -> String {
    let mut list = list.clone();
    for e in list.as_array_mut().into_iter().flatten() {
        e["jobs"] = Value::String(job_counts(e));
        if let Some(progress) = progress(e) {
            e["state"] = Value::String(progress);
        }
        short_rev(e);
    }
    render(&rows(
        &list,
        &[
            ("ID", "id"),
            ("REPO", "repo"),
            ("REF", "ref"),
            ("REV", "rev"),
            ("STATE", "state"),
            ("JOBS", "jobs"),
        ],
    ))
}

/// Returns "evaluating: N of M attributes" for an evaluation still evaluating whose attributes
/// are listed (the API's `progress`), as its status page says.
fn progress(e: &Value) -> Option<String> {
    let p = e.get("progress").filter(|_| e["state"] == "evaluating")?;
    Some(format!(
        "evaluating: {} of {} attributes",
        p["evaluated"].as_u64()?,
        p["attributes"].as_u64()?
    ))
}

fn jobs_table(jobs: &Value) -> String {
    render(&rows(
        jobs,
        &[
            ("ID", "id"),
            ("ATTR", "attr"),
            ("STATE", "state"),
            ("BUILDER", "build.builder"),
            ("ATTEMPTS", "build.attempts"),
            ("ERROR", "error"),
        ],
    ))
}

/// The builders table (also used by `reconix status`).
pub(crate) fn builders_table(builders: &Value) -> String {
    let mut builders = builders.clone();
    for b in builders.as_array_mut().into_iter().flatten() {
        b["load"] = Value::String(format!("{}/{}", b["running"], b["max_jobs"]));
        b["systems"] = Value::String(join(&b["systems"]));
    }
    render(&rows(
        &builders,
        &[
            ("NAME", "name"),
            ("STATE", "state"),
            ("SYSTEMS", "systems"),
            ("LOAD", "load"),
            ("LAST HEARTBEAT", "last_heartbeat_at"),
        ],
    ))
}

fn join(list: &Value) -> String {
    list.as_array()
        .map(|l| {
            l.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn describe_evaluation(e: &Value) -> String {
    let field = |name: &str, v: &Value| format!("{name:<13}{}\n", super::table::cell(v));
    let mut out = String::new();
    out.push_str(&field("Evaluation:", &e["id"]));
    out.push_str(&field("Repository:", &e["repo"]));
    out.push_str(&field("Ref:", &e["ref"]));
    out.push_str(&field("Rev:", &e["rev"]));
    out.push_str(&field("Flake:", &e["flake_ref"]));
    out.push_str(&field("State:", &e["state"]));
    if !e["error"].is_null() {
        out.push_str(&field("Error:", &e["error"]));
    }
    if !e["superseded_by"].is_null() {
        out.push_str(&field("Superseded by:", &e["superseded_by"]));
    }
    out.push_str(&format!("{:<13}{}\n\nJobs:\n", "Jobs:", job_counts(e)));
    out.push_str(&jobs_table(&e["jobs"]));
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn describe_should_show_the_origin_state_and_every_job() {
        let e = json!({
            "id": 7, "repo": "here/demo", "ref": "refs/heads/main",
            "rev": "0123456789abcdef", "flake_ref": "git+file:///srv/demo?rev=0123",
            "state": "finished", "error": null, "superseded_by": null,
            "job_counts": {"failed": 1, "succeeded": 1},
            "jobs": [
                {"id": 1, "attr": "packages.x86_64-linux.a", "state": "succeeded",
                 "build": {"builder": "a1", "attempts": 2}, "error": null},
                {"id": 2, "attr": "packages.x86_64-linux.b", "state": "failed",
                 "build": null, "error": "builder failed"}
            ]
        });
        let out = describe_evaluation(&e);
        assert!(out.contains("Evaluation:  7"), "{out}");
        assert!(out.contains("1 failed, 1 succeeded"), "{out}");
        let a = out.lines().find(|l| l.contains(".a")).unwrap();
        assert!(a.contains("a1") && a.contains('2'), "{out}");
        let b = out.lines().find(|l| l.contains(".b")).unwrap();
        assert!(b.contains("builder failed"), "{out}");
        assert!(!out.contains("Error:"), "{out}");
    }

    #[test]
    fn builders_table_should_show_load_as_running_over_slots() {
        let out = builders_table(&json!([
            {"name": "local", "state": "ready", "systems": ["x86_64-linux"], "running": 1,
             "max_jobs": 2, "last_heartbeat_at": null}
        ]));
        assert!(out.lines().nth(1).unwrap().contains("1/2"), "{out}");
    }
}
