//! `reconix webhook inspect`: verifies and parses a delivery copied from a forge's UI, offline,
//! and prints the normalised event the daemon would act on.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Subcommand, ValueEnum};
use reconix_forge::Headers;
use reconix_spec::{ForgeKind, SecretFile};

/// Exit code of a delivery whose signature is missing or wrong (1 is a payload error).
const EXIT_SIGNATURE: u8 = 2;

/// `reconix webhook …` verbs.
#[derive(Debug, Subcommand)]
pub(crate) enum WebhookCommand {
    /// Prints a delivery's normalised event as one JSON object. Exits 1 when the payload
    /// cannot be parsed and 2 when the signature does not match.
    Inspect {
        /// The forge software that sent the delivery.
        #[arg(long, value_enum)]
        forge_kind: WebhookForge,
        /// The webhook secret (trailing newline ignored). Without it the signature is not
        /// checked.
        #[arg(long)]
        secret_file: Option<PathBuf>,
        /// A request header as `Name: value`, e.g. `X-GitHub-Event: push`; repeatable.
        #[arg(long = "header", short = 'H', value_parser = parse_header)]
        headers: Vec<(String, String)>,
        /// The raw request body, byte for byte as the forge sent it.
        body_file: PathBuf,
    },
}

/// The forge kinds that send webhooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum WebhookForge {
    /// GitHub or GitHub Enterprise Server.
    Github,
    /// GitLab.
    Gitlab,
    /// Gitea, Forgejo or Codeberg.
    Gitea,
}

impl From<WebhookForge> for ForgeKind {
    fn from(kind: WebhookForge) -> Self {
        match kind {
            WebhookForge::Github => Self::Github,
            WebhookForge::Gitlab => Self::Gitlab,
            WebhookForge::Gitea => Self::Gitea,
        }
    }
}

/// Runs a `webhook` verb and returns the process exit code.
pub(crate) fn run(command: WebhookCommand) -> anyhow::Result<ExitCode> {
    match command {
        WebhookCommand::Inspect {
            forge_kind,
            secret_file,
            headers,
            body_file,
        } => inspect(
            forge_kind.into(),
            secret_file.as_deref(),
            &headers.into_iter().collect(),
            &body_file,
        ),
    }
}

fn inspect(
    kind: ForgeKind,
    secret_file: Option<&Path>,
    headers: &Headers,
    body_file: &Path,
) -> anyhow::Result<ExitCode> {
    let body =
        std::fs::read(body_file).with_context(|| format!("cannot read {}", body_file.display()))?;
    if let Some(path) = secret_file {
        let secret = SecretFile::new(path)
            .read()
            .with_context(|| format!("cannot read the secret file {}", path.display()))?;
        if let Err(err) = reconix_forge::verify(kind, headers, &body, &secret) {
            eprintln!("error: {err}");
            return Ok(ExitCode::from(EXIT_SIGNATURE));
        }
    }
    match reconix_forge::parse(kind, headers, &body) {
        Ok(event) => {
            println!("{}", serde_json::to_string(&event)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            eprintln!("error: {:#}", anyhow::Error::new(err));
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Splits `Name: value` at the first colon.
fn parse_header(text: &str) -> Result<(String, String), String> {
    match text.split_once(':') {
        Some((name, value)) if !name.trim().is_empty() => {
            Ok((name.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!("expected `Name: value`, got {text:?}")),
    }
}
