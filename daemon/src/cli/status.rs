//! `reconix status`: loop health, the latest evaluations and job counts of a running daemon.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::Output;
use super::serve::runtime;

/// Runs `reconix status` against the daemon at `server`.
pub(crate) fn run(server: &str, output: Output) -> Result<ExitCode> {
    let url = format!("{}/api/v1/status", server.trim_end_matches('/'));
    let body: Value = runtime()?.block_on(async {
        let resp = reqwest::get(&url).await.with_context(|| {
            format!("cannot reach the daemon at {server} (is `reconix serve` running?)")
        })?;
        if !resp.status().is_success() {
            bail!("{url}: HTTP {}", resp.status());
        }
        resp.json()
            .await
            .with_context(|| format!("{url}: not JSON"))
    })?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&body)?),
        Output::Table => print!("{}", table(&body)),
    }
    Ok(ExitCode::SUCCESS)
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        v => v.to_string(),
    }
}

/// Renders the overview as aligned text tables.
pub(crate) fn table(body: &Value) -> String {
    let mut out = String::new();
    let rows = |items: &Value, cols: &[(&str, &str)]| -> Vec<Vec<String>> {
        let mut rows = vec![
            cols.iter()
                .map(|(h, _)| (*h).to_owned())
                .collect::<Vec<_>>(),
        ];
        for item in items.as_array().map(Vec::as_slice).unwrap_or_default() {
            rows.push(cols.iter().map(|(_, f)| s(&item[*f])).collect());
        }
        rows
    };
    let render = |rows: Vec<Vec<String>>| -> String {
        let widths: Vec<usize> = (0..rows[0].len())
            .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
            .collect();
        rows.iter()
            .map(|r| {
                let cells: Vec<String> = r
                    .iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect();
                format!("{}\n", cells.join("  ").trim_end())
            })
            .collect()
    };
    out.push_str("LOOPS\n");
    out.push_str(&render(rows(
        &body["loops"],
        &[
            ("LOOP", "name"),
            ("RUNS", "runs"),
            ("FAILURES", "consecutive_failures"),
            ("LAST ERROR", "last_error"),
        ],
    )));
    out.push_str("\nEVALUATIONS\n");
    let mut evals = body["evaluations"].clone();
    if let Some(list) = evals.as_array_mut() {
        for e in list {
            let counts = e["job_counts"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{v} {k}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            e["jobs"] = Value::String(counts);
            if let Some(rev) = e["rev"].as_str() {
                e["rev"] = Value::String(rev.chars().take(12).collect());
            }
        }
    }
    out.push_str(&render(rows(
        &evals,
        &[
            ("ID", "id"),
            ("REPO", "repo"),
            ("REF", "ref"),
            ("REV", "rev"),
            ("STATE", "state"),
            ("JOBS", "jobs"),
        ],
    )));
    out.push_str("\nJOBS BY STATE\n");
    if let Some(counts) = body["job_counts"].as_object() {
        for (state, n) in counts {
            out.push_str(&format!("{state:<18} {n}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn table_should_show_loops_evaluations_and_counts() {
        let body = json!({
            "loops": [{"name": "builds", "runs": 3, "consecutive_failures": 0, "last_error": null}],
            "evaluations": [{"id": 1, "repo": "here/demo", "ref": "refs/heads/main",
                "rev": "0123456789abcdef0123", "state": "building", "job_counts": {"queued": 2}}],
            "job_counts": {"queued": 2, "succeeded": 5}
        });
        let t = super::table(&body);
        assert!(t.contains("builds"), "{t}");
        assert!(
            t.contains("0123456789ab ") || t.contains("0123456789ab"),
            "{t}"
        );
        assert!(t.contains("2 queued"), "{t}");
        assert!(t.contains("succeeded"), "{t}");
    }
}
