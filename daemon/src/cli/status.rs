//! `reconix status [--watch]`: loop health, forges, builders, the latest evaluations and job
//! counts of a running daemon.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};

use super::Output;
use super::client::{Api, ServerArgs};
use super::get::{builders_table, evaluations_table};
use super::serve::runtime;
use super::table::{render, rows};

/// Runs `reconix status`; with `watch`, redraws it in place every `interval` until interrupted.
pub(crate) fn run(server: &ServerArgs, watch: Option<Duration>) -> Result<ExitCode> {
    let api = Api::new(&server.server);
    runtime()?.block_on(async {
        loop {
            let body = fetch(&api).await?;
            let text = match server.output {
                Output::Json => format!("{}\n", serde_json::to_string_pretty(&body)?),
                Output::Table => table(&body),
            };
            let Some(every) = watch else {
                print!("{text}");
                return Ok(ExitCode::SUCCESS);
            };
            // Home, clear the screen, draw: the view is redrawn in place.
            let mut out = std::io::stdout();
            write!(out, "\x1b[H\x1b[2J{text}")?;
            out.flush()?;
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
            }
        }
    })
}

/// The overview, with the forges and builders next to it.
async fn fetch(api: &Api) -> Result<Value> {
    let (mut body, forges, builders) =
        tokio::try_join!(api.json("status"), api.json("forges"), api.json("builders"))?;
    body["forges"] = forges;
    body["builders"] = builders;
    Ok(body)
}

/// Renders the overview as aligned text tables.
pub(crate) fn table(body: &Value) -> String {
    let mut out = String::new();
    if !body["storage_full_at"].is_null() {
        out.push_str(
            "ALERT: the state directory is full: builds wait and deliveries are refused (503) \
             until space returns\n\n",
        );
    }
    if let Some(err) = body["spec_error"].as_str() {
        out.push_str("ALERT: the spec file was rejected; the previous spec stays in force:\n");
        for line in err.lines() {
            out.push_str("  ");
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
    }
    out.push_str("LOOPS\n");
    out.push_str(&render(&rows(
        &body["loops"],
        &[
            ("LOOP", "name"),
            ("RUNS", "runs"),
            ("FAILURES", "consecutive_failures"),
            ("LAST ERROR", "last_error"),
        ],
    )));
    if body["forges"].as_array().is_some_and(|f| !f.is_empty()) {
        out.push_str("\nFORGES\n");
        out.push_str(&render(&rows(
            &body["forges"],
            &[
                ("FORGE", "forge"),
                ("KIND", "kind"),
                ("STATE", "state"),
                ("REASON", "reason"),
            ],
        )));
    }
    if body["builders"].is_array() {
        out.push_str("\nBUILDERS\n");
        out.push_str(&builders_table(&body["builders"]));
    }
    out.push_str("\nEVALUATIONS\n");
    out.push_str(&evaluations_table(&body["evaluations"]));
    out.push_str("\nJOBS BY STATE\n");
    let counts: Vec<Value> = body["job_counts"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(state, n)| json!({"state": state, "n": n}))
        .collect();
    out.push_str(&render(&rows(
        &Value::Array(counts),
        &[("STATE", "state"), ("JOBS", "n")],
    )));
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn table_should_show_loops_forges_builders_evaluations_and_counts() {
        let body = json!({
            "loops": [{"name": "builds", "runs": 3, "consecutive_failures": 0, "last_error": null}],
            "forges": [{"forge": "gh", "kind": "github", "state": "paused", "reason": "401"}],
            "builders": [{"name": "a1", "state": "unresponsive", "systems": ["x86_64-linux"],
                "running": 1, "max_jobs": 4, "last_heartbeat_at": 5}],
            "evaluations": [{"id": 1, "repo": "here/demo", "ref": "refs/heads/main",
                "rev": "0123456789abcdef0123", "state": "building", "job_counts": {"queued": 2}}],
            "job_counts": {"queued": 2, "succeeded": 5}
        });
        let t = super::table(&body);
        assert!(t.contains("builds"), "{t}");
        assert!(t.contains("gh") && t.contains("paused"), "{t}");
        assert!(t.contains("unresponsive") && t.contains("1/4"), "{t}");
        assert!(
            t.contains("0123456789ab ") && !t.contains("0123456789abc"),
            "{t}"
        );
        assert!(t.contains("2 queued"), "{t}");
        assert!(t.contains("succeeded  5"), "{t}");
        assert!(!t.contains("ALERT"), "{t}");
    }

    #[test]
    fn table_should_show_the_progress_of_a_running_evaluation() {
        let body = json!({"loops": [], "job_counts": {}, "evaluations": [
            {"id": 2, "repo": "here/demo", "ref": "refs/heads/main", "rev": "abc",
             "state": "evaluating", "job_counts": {"queued": 12},
             "progress": {"evaluated": 12, "attributes": 20}},
            {"id": 1, "repo": "here/demo", "ref": "refs/heads/main", "rev": "def",
             "state": "superseded", "job_counts": {},
             "progress": {"evaluated": 3, "attributes": 20}}]});
        let t = super::table(&body);
        assert!(t.contains("evaluating: 12 of 20 attributes"), "{t}");
        assert!(!t.contains("3 of 20"), "{t}");
    }

    #[test]
    fn table_should_put_a_full_state_directory_first() {
        let body = json!({"loops": [], "evaluations": [], "job_counts": {},
            "storage_full_at": 1_700_000_000_000_i64});
        let t = super::table(&body);
        assert!(t.starts_with("ALERT: the state directory is full"), "{t}");
    }
}
