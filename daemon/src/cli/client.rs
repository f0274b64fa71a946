//! The JSON API client the kubectl-like verbs share (`status`, `get`, `describe`, `logs`).

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::Output;

/// Where the daemon is and how to print what it says.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ServerArgs {
    /// The daemon's base URL.
    #[arg(long, env = "RECONIX_SERVER", default_value = "http://127.0.0.1:8080")]
    pub(crate) server: String,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Table)]
    pub(crate) output: Output,
}

/// A piece of a job's log.
#[derive(Debug)]
pub(crate) struct LogChunk {
    /// The bytes from the offset asked for.
    pub(crate) bytes: Vec<u8>,
    /// Whether the job is over (the log will not grow).
    pub(crate) complete: bool,
}

/// A client of one daemon's `/api/v1`.
#[derive(Debug, Clone)]
pub(crate) struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    pub(crate) fn new(server: &str) -> Self {
        Self {
            base: server.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
        }
    }

    async fn get(&self, path: &str) -> Result<reqwest::Response> {
        let url = format!("{}/api/v1/{path}", self.base);
        let resp = self.http.get(&url).send().await.with_context(|| {
            format!(
                "cannot reach the daemon at {} (is `reconix serve` running?)",
                self.base
            )
        })?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            let reason = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .unwrap_or(body);
            bail!("{url}: HTTP {status}: {}", reason.trim());
        }
        Ok(resp)
    }

    /// GETs `/api/v1/<path>` as JSON.
    pub(crate) async fn json(&self, path: &str) -> Result<Value> {
        let url = format!("{}/api/v1/{path}", self.base);
        self.get(path)
            .await?
            .json()
            .await
            .with_context(|| format!("{url}: not JSON"))
    }

    /// GETs the log of `job` from byte `offset`.
    pub(crate) async fn log(&self, job: i64, offset: u64) -> Result<LogChunk> {
        let resp = self.get(&format!("jobs/{job}/log?offset={offset}")).await?;
        let complete = resp
            .headers()
            .get("x-reconix-log-complete")
            .is_some_and(|v| v.as_bytes() == b"true");
        let bytes = resp.bytes().await.context("reading the log")?.to_vec();
        Ok(LogChunk { bytes, complete })
    }
}

/// Prints `value` as pretty JSON, or as the table `table` renders.
pub(crate) fn print(
    output: Output,
    value: &Value,
    table: impl FnOnce(&Value) -> String,
) -> Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Table => print!("{}", table(value)),
    }
    Ok(())
}
