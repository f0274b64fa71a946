//! `reconix demo`: a sample flake repository, a spec for it, and the daemon serving it.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use reconix_status::views::EvaluationSummary;
use reconix_status::{EvaluationState, Status};

use super::serve::{Overrides, ServeOptions, runtime, serve};

const FLAKE: &str = include_str!("demo-flake.nix");

/// Runs `reconix demo`.
pub(crate) fn run(dir: &Path, listen: SocketAddr) -> Result<ExitCode> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let repo = dir.join("repo");
    create_repo(&repo)?;
    let listen = free_or_any(listen);
    let spec_path = dir.join("reconix.yaml");
    std::fs::write(&spec_path, spec(&dir, &repo, listen))?;
    println!("reconix demo");
    println!("  flake repository: {}", repo.display());
    println!("  spec:             {}", spec_path.display());
    let opts = ServeOptions {
        spec_path,
        overrides: Overrides::default(),
        nix_store: None,
        on_ready: Some(Box::new(move |addr, status| {
            println!("  status page:      http://{addr}/");
            println!("  JSON API:         http://{addr}/api/v1/evaluations");
            tokio::spawn(progress(status, repo));
        })),
    };
    runtime()?.block_on(serve(opts))
}

/// Uses `listen` when it is free, else any free port on the same address.
fn free_or_any(listen: SocketAddr) -> SocketAddr {
    if std::net::TcpListener::bind(listen).is_ok() {
        return listen;
    }
    eprintln!("  {listen} is busy; using a free port instead");
    SocketAddr::new(listen.ip(), 0)
}

fn spec(dir: &Path, repo: &Path, listen: SocketAddr) -> String {
    format!(
        "# Written by `reconix demo`. Every key not given here has a default: see docs/spec.schema.json.\n\
         state-dir: {state}\n\
         listen: {listen}\n\
         forges:\n\
         \x20 here:\n\
         \x20   kind: local          # a git repository on disk, polled\n\
         \x20   poll-interval: 2s\n\
         \x20   repos:\n\
         \x20     demo:\n\
         \x20       path: {repo}\n\
         \x20       branches: [main]\n\
         builders:\n\
         \x20 local:\n\
         \x20   max-jobs: 2\n",
        state = dir.join("state").display(),
        repo = repo.display(),
    )
}

fn git(repo: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args([
            "-c",
            "user.name=reconix demo",
            "-c",
            "user.email=demo@reconix.invalid",
        ])
        .args(args)
        .output()
        .context("running git (is it installed?)")?;
    if !out.status.success() {
        bail!(
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Creates the sample repository unless it exists (a second `make demo` reuses it).
fn create_repo(repo: &PathBuf) -> Result<()> {
    if repo.join(".git").exists() {
        return Ok(());
    }
    std::fs::create_dir_all(repo)?;
    git(repo, &["init", "-q", "-b", "main"])?;
    std::fs::write(repo.join("flake.nix"), FLAKE)?;
    git(repo, &["add", "flake.nix"])?;
    git(repo, &["commit", "-q", "-m", "demo flake"])?;
    Ok(())
}

/// Prints a live progress line until the first evaluation is fully built.
async fn progress(status: Status, repo: PathBuf) {
    let tty = std::io::stdout().is_terminal();
    let mut last = String::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let latest: Option<EvaluationSummary> = status
            .call(|db| Ok(db.evaluation_list(1)?.into_iter().next()))
            .await
            .ok()
            .flatten();
        let line = match &latest {
            None => "waiting for the first evaluation…".to_owned(),
            Some(e) => describe(e),
        };
        if line != last {
            if tty {
                print!("\r\x1b[2K{line}");
                let _ = std::io::stdout().flush();
            } else {
                println!("{line}");
            }
            last = line;
        }
        if let Some(e) = &latest
            && matches!(e.state, EvaluationState::Finished | EvaluationState::Failed)
        {
            if tty {
                println!();
            }
            println!(
                "first evaluation {}. Still serving: commit to {} to see a new evaluation; Ctrl-C stops.",
                e.state.as_str(),
                repo.display()
            );
            return;
        }
    }
}

fn describe(e: &EvaluationSummary) -> String {
    let total: u64 = e.job_counts.values().sum();
    let done: u64 = e
        .job_counts
        .iter()
        .filter(|(s, _)| !matches!(s.as_str(), "queued" | "building"))
        .map(|(_, n)| n)
        .sum();
    let parts: Vec<String> = e
        .job_counts
        .iter()
        .map(|(s, n)| format!("{n} {s}"))
        .collect();
    format!(
        "evaluation #{} ({}): {done}/{total} jobs done — {}",
        e.id,
        e.state.as_str(),
        parts.join(", ")
    )
}
