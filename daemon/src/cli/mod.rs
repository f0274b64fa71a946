//! Command-line verbs: one file each. `check`, `schema` and `plan` work offline; `status` talks to
//! a running daemon's JSON API, like kubectl.

pub(crate) mod builders;
pub(crate) mod check;
pub(crate) mod client;
pub(crate) mod demo;
pub(crate) mod get;
pub(crate) mod logging;
pub(crate) mod plan;
pub(crate) mod schema;
pub(crate) mod serve;
pub(crate) mod status;
pub(crate) mod table;
pub(crate) mod webhook;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// reconix: declarative, webhook-driven Nix CI.
#[derive(Debug, Parser)]
#[command(name = "reconix", version, about, propagate_version = true)]
pub(crate) struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty, env = "RECONIX_LOG_FORMAT")]
    pub(crate) log_format: LogFormat,
    /// More log output (-v debug, -vv trace). RUST_LOG overrides it.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable, coloured when stderr is a terminal.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// How CLI verbs print their results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// Aligned columns for people.
    Table,
    /// JSON for scripts.
    Json,
}

/// Overrides of spec values given on the command line.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SpecArgs {
    /// The spec file (YAML).
    #[arg(long, env = "RECONIX_SPEC")]
    pub(crate) spec: PathBuf,
    /// Overrides the spec's `state-dir`.
    #[arg(long)]
    pub(crate) state_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Runs the daemon: reconcile loops, JSON API and status page.
    Serve {
        #[command(flatten)]
        spec: SpecArgs,
        /// Overrides the spec's `listen` address (port 0 picks a free port).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Builds in this Nix store instead of the default one (a chroot store directory or a
        /// store URL, passed to nix as `--store`).
        #[arg(long, env = "RECONIX_NIX_STORE")]
        nix_store: Option<String>,
    },
    /// Validates a spec file: exits 0 when valid, 1 with every error on stderr otherwise.
    Check {
        /// The spec file (YAML).
        spec: PathBuf,
    },
    /// Prints the spec's JSON Schema.
    Schema {
        /// Prints the NixOS module's options generated from the schema instead
        /// (`nix/options.nix`).
        #[arg(long, conflicts_with = "markdown")]
        nixos_options: bool,
        /// Prints the configuration reference generated from the schema instead
        /// (`docs/configuration.md`).
        #[arg(long)]
        markdown: bool,
    },
    /// Prints the steps each loop would take now, and applies none.
    Plan {
        #[command(flatten)]
        spec: SpecArgs,
        /// Output format.
        #[arg(long, short, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Builds in this Nix store instead of the default one.
        #[arg(long, env = "RECONIX_NIX_STORE")]
        nix_store: Option<String>,
    },
    /// Shows loop health, forges, builders, the latest evaluations and job counts of a running
    /// daemon.
    Status {
        #[command(flatten)]
        server: client::ServerArgs,
        /// Redraws the view in place until interrupted.
        #[arg(long, short)]
        watch: bool,
        /// How often `--watch` redraws (`2s`, `500ms`).
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        interval: std::time::Duration,
    },
    /// Lists evaluations, the jobs of an evaluation, or builders of a running daemon.
    Get {
        #[command(subcommand)]
        what: get::GetCommand,
    },
    /// Shows one object of a running daemon in detail.
    Describe {
        #[command(subcommand)]
        what: get::DescribeCommand,
    },
    /// Prints a job's build log; `--follow` keeps printing until the job is over.
    Logs {
        /// The job's id.
        job: i64,
        /// Keeps printing what is appended until the job is over.
        #[arg(long, short)]
        follow: bool,
        /// The daemon's base URL.
        #[arg(long, env = "RECONIX_SERVER", default_value = "http://127.0.0.1:8080")]
        server: String,
    },
    /// Prints a shell completion script (`reconix completions bash > /etc/bash_completion.d/reconix`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Creates a sample flake repository and a spec for it, then serves it.
    Demo {
        /// Where to create the demo (default: ./reconix-demo).
        #[arg(long, default_value = "reconix-demo")]
        dir: PathBuf,
        /// The address to serve on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
    /// Lists or revokes enrolled remote builders (agents).
    Builders {
        #[command(subcommand)]
        command: builders::BuildersCommand,
    },
    /// Works with webhook deliveries offline (e.g. copied from a forge's delivery log).
    Webhook {
        #[command(subcommand)]
        command: webhook::WebhookCommand,
    },
}

/// Runs the chosen verb and returns the process exit code.
pub(crate) fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check { spec } => Ok(check::run(&spec)),
        Command::Schema {
            nixos_options,
            markdown,
        } => schema::run(nixos_options, markdown),
        Command::Serve {
            spec,
            listen,
            nix_store,
        } => serve::run(&spec, listen, nix_store),
        Command::Plan {
            spec,
            output,
            nix_store,
        } => plan::run(&spec, output, nix_store.as_deref()),
        Command::Status {
            server,
            watch,
            interval,
        } => status::run(&server, watch.then_some(interval)),
        Command::Get { what } => get::get(what),
        Command::Describe { what } => get::describe(what),
        Command::Logs {
            job,
            follow,
            server,
        } => get::logs(&server, job, follow),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "reconix", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { dir, listen } => demo::run(&dir, listen),
        Command::Webhook { command } => webhook::run(command),
        Command::Builders { command } => builders::run(command),
    }
}
