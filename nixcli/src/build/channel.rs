//! [`BuildMode::Channel`](super::BuildMode::Channel): a build is one `cmdBuildPaths` on a pooled
//! `nix-store --serve --write` channel ([`super::pool`]).
//!
//! - When every input of the derivation is valid (its input sources and the outputs it uses of
//!   its input derivations, asked on the channel: the usual case, jobs build after the jobs
//!   they need), it goes as a basic derivation with `cmdBuildDerivation` instead, read whole
//!   from the `.drv`: Nix then starts no build hook (see [`super::pool`]). A derivation with an
//!   unbuilt input (an intermediate derivation that is no job) goes by `cmdBuildPaths`, which
//!   builds that input too. The result maps to the same outcomes (`nix-store --realise`'s exit
//!   statuses: 100 failed, 101 timed out, 1 for a failure that is not the builder's).
//!
//! - The command names every output of the derivation, `drv!out,dev`, read from the `.drv`
//!   (which also gives the output paths reported on success). A `.drv` that does not exist is
//!   sent as it is, so that Nix reports it in its own words (`cannot build missing derivation`).
//! - `timeout` and `max_silent` become the build settings `buildTimeout` and `maxSilentTime`
//!   (whole seconds rounded up; 0 means none).
//! - The reply maps like `nix-store --realise`'s exit code, which it carries: 0 succeeded, 100
//!   failed, 101 timed out, anything else an error ([`classify_realise_exit`]). The message is
//!   the first line of Nix's, without `error: `; the whole of it goes to the log.
//! - A channel that broke before the command was sent is replaced once; one that broke later
//!   gives an `Error` outcome (the build may have run, so it is not repeated).
//! - GC roots are written directly (`crate::roots`) while the channel's process still holds its
//!   temporary roots on the new outputs, so no collection can slip in between.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use reconix_spec::names::StorePath;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::exit::classify_realise_exit;
use super::pool::{BuildChannel, BuildCommand, BuildPool, Ended, OpenError};
use super::{Log, cancelled, known_outputs, read_derivation, read_drv_with, whole_seconds};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::parse::aterm::{BasicParts, Derivation, parse_derivation_with_parts};
use crate::parse::stderr::first_error_line;
use crate::port::{BuildOutcome, BuildRequest, BuildStatus};
use crate::process::failure_message;
use crate::roots::{output_links, register};
use crate::serve::{BasicDerivation, BuildPathsReply, BuildSettings, DerivationOutput};

/// Builds `req.drv_path` on a pooled channel (see the module docs).
pub(super) async fn realise(
    cli: &Config,
    pool: &BuildPool,
    req: &BuildRequest,
    mut log: Log,
    cancel: CancellationToken,
) -> Result<BuildOutcome> {
    let started = Instant::now();
    let read = match read_with_parts(cli, &req.drv_path).await {
        Ok(read) => Some(read),
        Err(Error::DrvRead { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => None,
        Err(err) => return Err(err),
    };
    let drv = read.as_ref().map(|(drv, _)| drv);
    let target = build_target(&req.drv_path, drv);
    let basic = match &read {
        Some((drv, parts)) => basic_derivation(cli, drv, parts).await,
        None => None,
    };
    let settings = build_settings(req);

    let mut retried = false;
    let outcome =
        loop {
            let opened = tokio::select! {
                biased;
                () = cancel.cancelled() => None,
                opened = pool.acquire(cli) => Some(opened),
            };
            let mut channel = match opened {
                None => {
                    log.text("reconix: build cancelled").await?;
                    break cancelled();
                }
                Some(Ok(channel)) => channel,
                Some(Err(OpenError::Spawn(err))) => return Err(err),
                Some(Err(err @ OpenError::Handshake { .. })) => {
                    let message = err.message();
                    if let OpenError::Handshake { stderr, .. } = &err {
                        log.bytes(stderr).await?;
                    }
                    log.text(&format!("reconix: cannot open a build channel: {message}"))
                        .await?;
                    let exit_code = match &err {
                        OpenError::Handshake { exit, .. } => exit.and_then(|e| e.code()),
                        OpenError::Spawn(_) => None,
                    };
                    break error_outcome(exit_code, message);
                }
            };

            // A channel that served builds before may have died while idle in a way not yet
            // visible when it was handed out (its pipes still open for a moment).
            let reused = channel.uses() > 0;
            let command = match &basic {
                Some((basic, inputs)) if all_valid(&mut channel, inputs).await => {
                    BuildCommand::Derivation {
                        drv_path: req.drv_path.as_str(),
                        drv: basic,
                    }
                }
                _ => BuildCommand::Paths(&target),
            };
            let ended = channel
                .build(&command, &settings, &mut log, &cancel, cli.kill_grace)
                .await?;
            match ended {
                Ended::Replied(BuildPathsReply::Built) => {
                    let outputs = match drv {
                        Some(drv) => known_outputs(drv),
                        None => known_outputs(&read_derivation(cli, &req.drv_path).await?),
                    };
                    // Rooted before the channel goes back: its temporary roots keep the outputs.
                    let rooted = match &req.gc_root {
                        Some(root) => register(cli, output_links(root, &outputs)).await,
                        None => Ok(()),
                    };
                    pool.release(channel);
                    break match rooted {
                        Ok(()) => BuildOutcome {
                            status: BuildStatus::Succeeded,
                            exit_code: Some(0),
                            message: None,
                            outputs,
                        },
                        Err(err) => {
                            let message = format!("cannot register the gc root: {}", chain(&err));
                            log.text(&format!("reconix: {message}")).await?;
                            error_outcome(None, message)
                        }
                    };
                }
                Ended::Replied(BuildPathsReply::Failed { status, message }) => {
                    pool.release(channel);
                    let text = message.trim_end();
                    log.text(text).await?;
                    let code = i32::try_from(status).ok();
                    break BuildOutcome {
                        status: classify_realise_exit(code),
                        exit_code: code,
                        message: Some(first_message(text).unwrap_or_else(|| {
                            format!("nix-store --serve reported status {status}")
                        })),
                        outputs: BTreeMap::new(),
                    };
                }
                Ended::Cancelled => {
                    log.text("reconix: build cancelled").await?;
                    break cancelled();
                }
                Ended::Broken {
                    sent: false, error, ..
                } if !retried => {
                    debug!(error = %error, "build channel was dead before the command, retrying");
                    retried = true;
                }
                // A reused channel that closed without saying anything never started the
                // build: it had died while idle. Building again is safe (Nix reuses outputs).
                Ended::Broken { error, stderr, .. } if !retried && reused && stderr.is_empty() => {
                    debug!(error = %error, "reused build channel closed silently, retrying");
                    retried = true;
                }
                Ended::Broken {
                    error,
                    exit,
                    stderr,
                    ..
                } => {
                    let message = failure_message(&stderr)
                        .unwrap_or_else(|| format!("nix-store --serve failed: {error}"));
                    log.text(&format!("reconix: the build channel broke: {error}"))
                        .await?;
                    break error_outcome(exit.and_then(|e| e.code()), message);
                }
            }
        };
    log.flush().await?;
    debug!(
        drv = %req.drv_path,
        status = ?outcome.status,
        exit_code = ?outcome.exit_code,
        duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "built on a channel"
    );
    Ok(outcome)
}

/// Reads and parses a `.drv` file with the parts a basic derivation needs.
async fn read_with_parts(cli: &Config, drv_path: &StorePath) -> Result<(Derivation, BasicParts)> {
    read_drv_with(cli, drv_path, parse_derivation_with_parts).await
}

/// Returns `drv` as a basic derivation (see the module docs) with the paths that must be valid
/// for it to build: its input sources and the outputs it uses of its input derivations, read
/// from their `.drv` files. `None` when that cannot be formed (an output without a path, an
/// input derivation that cannot be read): the build then goes by `cmdBuildPaths`.
async fn basic_derivation(
    cli: &Config,
    drv: &Derivation,
    parts: &BasicParts,
) -> Option<(BasicDerivation, Vec<String>)> {
    let mut outputs = Vec::new();
    for (name, path) in &drv.outputs {
        let (hash_algo, hash) = parts.output_hashes.get(name)?.clone();
        outputs.push(DerivationOutput {
            name: name.clone(),
            path: path.as_ref()?.to_string(),
            hash_algo,
            hash,
        });
    }
    let mut inputs: BTreeSet<String> = parts.input_srcs.iter().cloned().collect();
    for (input, names) in &drv.input_drvs {
        let input = read_derivation(cli, input).await.ok()?;
        for name in names {
            inputs.insert(input.outputs.get(name)?.as_ref()?.to_string());
        }
    }
    let inputs: Vec<String> = inputs.into_iter().collect();
    let basic = BasicDerivation {
        outputs,
        input_srcs: inputs.clone(),
        platform: drv.system.clone(),
        builder: parts.builder.clone(),
        args: parts.args.clone(),
        env: parts.env.clone(),
    };
    Some((basic, inputs))
}

/// Returns true when every path of `inputs` is valid for the channel's store (false too when
/// the question fails: the build then goes by `cmdBuildPaths`, on a channel found broken).
async fn all_valid(channel: &mut BuildChannel, inputs: &[String]) -> bool {
    if inputs.is_empty() {
        return true;
    }
    let asked: Vec<&str> = inputs.iter().map(String::as_str).collect();
    channel
        .query_valid(&asked, false)
        .await
        .is_ok_and(|valid| valid.len() == inputs.len())
}

/// Returns what `cmdBuildPaths` is asked for: `drv!out1,out2` with every output of the
/// derivation, or the bare path when the `.drv` could not be read.
fn build_target(drv_path: &StorePath, drv: Option<&Derivation>) -> String {
    match drv {
        Some(drv) if !drv.outputs.is_empty() => {
            let names: Vec<&str> = drv.outputs.keys().map(String::as_str).collect();
            format!("{drv_path}!{}", names.join(","))
        }
        _ => drv_path.to_string(),
    }
}

fn build_settings(req: &BuildRequest) -> BuildSettings {
    BuildSettings {
        max_silent_time: req.max_silent.map_or(0, whole_seconds),
        build_timeout: req.timeout.map_or(0, whole_seconds),
        max_log_size: 0,
    }
}

/// Returns the message of a failure reply (ANSI already stripped): its first `error:` line
/// without the prefix, else its first line; without the `;` Nix puts before a log tail.
fn first_message(text: &str) -> Option<String> {
    first_error_line(text)
        .or_else(|| {
            text.lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .map(str::to_owned)
        })
        .map(|m| m.trim_end_matches(';').to_owned())
}

fn error_outcome(exit_code: Option<i32>, message: String) -> BuildOutcome {
    BuildOutcome {
        status: BuildStatus::Error,
        exit_code,
        message: Some(message),
        outputs: BTreeMap::new(),
    }
}

/// Renders an error with its sources, for a one-line message.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use crate::parse::aterm::parse_derivation;

    const DRV: &str = "/nix/store/7xbvbdqxbqxqnzg56mmd7l9bbrb4c534-a.drv";

    /// Runs a command that must succeed; returns its trimmed stdout.
    fn run(program: &str, args: &[&str]) -> String {
        let out = std::process::Command::new(program)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{program} {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    #[tokio::test]
    async fn basic_derivation_should_carry_the_drv_with_its_inputs_outputs() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let file = dir.path().join("default.nix");
        std::fs::write(
            &file,
            r#"let mk = name: script: derivation { inherit name; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" script ]; };
               a = mk "a" "echo a > $out";
               b = mk "b" "cat ${a} > $out; echo \"q\" >> $out"; in { inherit a b; }"#,
        )
        .unwrap();
        let (store_arg, file_arg) = (store.to_str().unwrap(), file.to_str().unwrap());
        let drv = run(
            "nix-instantiate",
            &["--store", store_arg, file_arg, "-A", "b"],
        );
        let a_out = run(
            "nix-store",
            &[
                "--store",
                store_arg,
                "-q",
                "--outputs",
                &run(
                    "nix-instantiate",
                    &["--store", store_arg, file_arg, "-A", "a"],
                ),
            ],
        );
        let b_out = run(
            "nix-store",
            &["--store", store_arg, "-q", "--outputs", &drv],
        );
        let cli = crate::NixCli::new().with_store(store.as_os_str());
        let drv_path = StorePath::new(&drv).unwrap();
        let (parsed, parts) = read_with_parts(&cli.config, &drv_path).await.unwrap();

        let (basic, inputs) = basic_derivation(&cli.config, &parsed, &parts)
            .await
            .unwrap();

        assert_eq!(inputs, std::slice::from_ref(&a_out));
        assert_eq!(basic.input_srcs, inputs);
        assert_eq!(basic.outputs.len(), 1);
        assert_eq!(
            (
                basic.outputs[0].name.as_str(),
                basic.outputs[0].path.as_str()
            ),
            ("out", b_out.as_str())
        );
        assert_eq!(
            (basic.platform.as_str(), basic.builder.as_str()),
            ("x86_64-linux", "/bin/sh")
        );
        assert_eq!(basic.args[0], "-c");
        assert!(
            basic.args[1].contains(&format!("cat {a_out} > $out")),
            "{:?}",
            basic.args
        );
        assert!(
            basic.args[1].ends_with(r#"echo "q" >> $out"#),
            "{:?}",
            basic.args
        );
        assert!(
            basic.env.contains(&("out".to_owned(), b_out.clone())),
            "{:?}",
            basic.env
        );
        assert!(
            basic.env.windows(2).all(|w| w[0].0 < w[1].0),
            "env not in key order"
        );
    }

    #[test]
    fn build_target_should_name_every_output_or_send_the_bare_path() {
        let drv = parse_derivation(
            br#"Derive([("dev","/nix/store/7xbvbdqxbqxqnzg56mmd7l9bbrb4c534-a-dev","",""),("out","/nix/store/7xbvbdqxbqxqnzg56mmd7l9bbrb4c534-a","","")],[],[],"x86_64-linux","/bin/sh",[],[])"#,
        )
        .unwrap();
        let path = StorePath::new(DRV).unwrap();
        assert_eq!(build_target(&path, Some(&drv)), format!("{DRV}!dev,out"));
        assert_eq!(build_target(&path, None), DRV);
    }

    #[test]
    fn build_settings_should_round_limits_up_and_use_zero_for_none() {
        let req = BuildRequest {
            drv_path: StorePath::new(DRV).unwrap(),
            gc_root: None,
            timeout: Some(Duration::from_millis(1500)),
            max_silent: None,
            log_file: PathBuf::from("/logs/a.log"),
        };
        assert_eq!(
            build_settings(&req),
            BuildSettings {
                max_silent_time: 0,
                build_timeout: 2,
                max_log_size: 0
            }
        );
    }

    #[test]
    fn first_message_should_take_the_first_error_line_without_prefix_or_tail_marker() {
        assert_eq!(
            first_message("error: builder for '/nix/store/x.drv' failed with exit code 3")
                .as_deref(),
            Some("builder for '/nix/store/x.drv' failed with exit code 3")
        );
        assert_eq!(
            first_message(
                "error: builder for 'x' failed with exit code 2;\nlast 10 log lines:\n> boom"
            )
            .as_deref(),
            Some("builder for 'x' failed with exit code 2")
        );
        assert_eq!(
            first_message("\nsomething odd\n").as_deref(),
            Some("something odd")
        );
        assert_eq!(first_message(""), None);
    }

    #[test]
    fn chain_should_join_an_error_and_its_sources() {
        let err = Error::Io {
            path: PathBuf::from("/roots/a"),
            source: std::io::Error::other("disk full"),
        };
        assert_eq!(chain(&err), "cannot write /roots/a: disk full");
    }
}
