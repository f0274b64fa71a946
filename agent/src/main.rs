//! `reconix-agent`: runs on a builder machine, dials the reconix coordinator and serves it
//! `nix-store --serve --write` over SSH (see the library's `agent` module).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use reconix_agent::agent::{Agent, AgentConfig, Backoff, hostname};
use reconix_agent::keys::parse_fingerprint;
use reconix_agent::protocol::{MAX_JOBS, check_feature};
use reconix_spec::{BuilderName, System};
use tokio_util::sync::CancellationToken;

/// Dials the reconix coordinator and builds for it.
#[derive(Debug, Parser)]
#[command(name = "reconix-agent", version)]
struct Args {
    /// The coordinator's enrolment address, HOST:PORT.
    #[arg(long, env = "RECONIX_AGENT_COORDINATOR")]
    coordinator: String,
    /// Where the agent keeps its key and the pinned coordinator key.
    #[arg(long, env = "RECONIX_AGENT_STATE_DIR")]
    state_dir: PathBuf,
    /// A file holding the enrolment token; a missing file sends no token.
    #[arg(long, env = "RECONIX_AGENT_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// The builder's name [default: the host name].
    #[arg(long, env = "RECONIX_AGENT_NAME")]
    name: Option<BuilderName>,
    /// The systems this machine builds for.
    #[arg(
        long,
        env = "RECONIX_AGENT_SYSTEMS",
        value_delimiter = ',',
        default_value = "x86_64-linux"
    )]
    systems: Vec<System>,
    /// The Nix system features it offers (kvm, big-parallel, …).
    #[arg(long, env = "RECONIX_AGENT_FEATURES", value_delimiter = ',', value_parser = parse_feature)]
    features: Vec<String>,
    /// How many builds run at once.
    #[arg(long, env = "RECONIX_AGENT_MAX_JOBS", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_JOBS)))]
    max_jobs: u32,
    /// The Nix store to build in (passed to `nix-store --store`) [default: the local store].
    #[arg(long, env = "RECONIX_AGENT_STORE")]
    store: Option<String>,
    /// The coordinator key's fingerprint (SHA256:…); without it the first key is pinned.
    #[arg(long, env = "RECONIX_AGENT_COORDINATOR_KEY")]
    coordinator_key: Option<String>,
    /// Seconds between heartbeats.
    #[arg(long, env = "RECONIX_AGENT_HEARTBEAT", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    heartbeat: u64,
    /// Do not randomise reconnection delays (0.5 s doubling to 30 s after a dropped
    /// connection, 1 s doubling to 5 min after a refusal).
    #[arg(long, env = "RECONIX_AGENT_NO_JITTER")]
    no_jitter: bool,
}

fn parse_feature(text: &str) -> Result<String, String> {
    check_feature(text)?;
    Ok(text.to_owned())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let name = match args.name {
        Some(name) => name,
        None => hostname().context("no --name given")?,
    };
    let coordinator_key = args
        .coordinator_key
        .as_deref()
        .map(parse_fingerprint)
        .transpose()?;
    let config = AgentConfig {
        token_file: args.token_file,
        systems: args.systems,
        features: args.features,
        max_jobs: args.max_jobs,
        store: args.store,
        coordinator_key,
        heartbeat: Duration::from_secs(args.heartbeat),
        backoff: Backoff {
            jitter: !args.no_jitter,
            ..Backoff::default()
        },
        refused_backoff: Backoff {
            jitter: !args.no_jitter,
            ..Backoff::refused()
        },
        ..AgentConfig::new(args.coordinator, args.state_dir, name.clone())
    };
    let agent = Agent::new(config).context("cannot start the agent")?;
    println!("reconix-agent {name}: key {}", agent.fingerprint());
    if let Some(fp) = agent.coordinator_fingerprint() {
        println!("reconix-agent {name}: accepts coordinator key {fp}");
    }

    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down");
        on_signal.cancel();
    });
    agent.run(shutdown).await?;
    Ok(())
}
