//! [`build_remote`]: what Nix's `build-remote` hook does, over a [`ServeClient`] to a store
//! that does not share the local one (another machine, or in tests a chroot store). The public
//! entry is `crate::cli::build_remote` (and `Nix::build_remote`); this module is the local
//! side, the Nix processes it runs on this machine; the protocol is `crate::serve`.
//!
//! 1. **Inputs** (local): read the derivation (`nix show-derivation`) and take its input
//!    sources and the outputs it uses of its input derivations. Then one of two modes:
//!    - *Derivation mode*, when every input is valid locally (the usual case: the inputs are
//!      jobs built before): the input closure is what the builder needs
//!      (`nix path-info --json --recursive`, which also gives each path's NAR size, hash and
//!      references; sorted here with references first).
//!    - *Closure mode*, when some input derivation was never built locally (an intermediate
//!      derivation that is not a job): the builder needs the closure of the `.drv` file itself
//!      (the `.drv` files and sources below it) and of every output of those derivations that
//!      *is* valid locally, so that it does not rebuild what was built already
//!      (`nix-store -qR --include-outputs <drv>`).
//! 2. **Copy to the builder**: ask which of those paths it lacks (`cmdQueryValidPaths` with
//!    `lock`, so that it keeps them while the connection lasts) and send them, references
//!    always first. Large paths (a NAR of 8 MiB or more) go one by one with
//!    `cmdAddToStoreNar` (servers from 2.5): their metadata, then the NAR, written from the
//!    path's files in the local store (or, for a store named by a URL, streamed from a local
//!    `nix store dump-path`), which the builder writes to its store as it arrives and checks
//!    against the size and hash sent. The others go in batches, a local `nix-store --export`
//!    piped into `cmdImportPaths` (whose server holds each NAR in memory and hashes it twice:
//!    fine for small paths, 3–4× slower for large ones). Both streams are walked as they go
//!    through. The serve protocol does not check signatures.
//! 3. **Build**. Derivation mode: `cmdBuildDerivation`; the `.drv` files are not copied and,
//!    like `build-remote`, the whole input closure goes in `inputSrcs`. Closure mode:
//!    `cmdBuildPaths` of `<drv>!<out1>,<out2>…`, which builds the missing intermediate
//!    derivations too; its reply is only `0` or Nix's exit status and message, from which the
//!    status is derived (see `crate::build::exit`).
//! 4. **Copy back**: the paths missing locally (in derivation mode, the outputs that were not
//!    valid locally while the builder built, which is asked meanwhile) are exported by the
//!    builder (`cmdExportPaths`,
//!    references first) and piped into a local `nix-store --import` (which, in Nix 2.8, does
//!    not check signatures either). The export stream is walked as it goes: only the paths
//!    asked for can reach the local store. Derivation mode asks for the outputs only: what
//!    they reference is an output or an input, already local. Closure mode asks the builder
//!    for the outputs' runtime closure (`cmdQueryClosure`) and copies what is missing locally,
//!    such as the outputs of intermediate derivations; every such path must be an output of a
//!    derivation in the `.drv` closure (`nix show-derivation --recursive`), so a dishonest
//!    builder cannot slip in an unrelated path.
//!
//! 5. **Roots** (with a root link): written before step 1's copy starts, when they can be
//!    written directly (a root to a path not yet valid is ignored by the collector until the
//!    path arrives); after the copy back, the outputs are checked and copied again if a
//!    collection running during the import took them anyway (Nix 2.8 does, now and then).
//!
//! The build log is the server's stderr, which belongs to the transport (the child's stderr
//! pipe, or an SSH channel's extended data), so the caller reads it there.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use reconix_spec::names::StorePath;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, BufReader};
use tokio::process::{Child, ChildStdout};
use tracing::debug;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::paths::{ShownPathInfo, is_valid, nix_args, nix_json};
use crate::process::{Finished, command_line, os_args, spawn_error, widen_pipe};
use crate::roots::{output_links, register, register_direct};
use crate::serve::remote::build_paths_failure;
use crate::serve::{
    BasicDerivation, BuildPathsReply, BuildResultStatus, BuildSettings, DerivationOutput, NarError,
    NarInfo, RemoteBuildOutcome, RemoteBuildStatus, RemoteBuildTimings, ServeClient, ServeError,
};

/// How many paths one local `nix-store --export` or `nix path-info` gets (keeps argv small).
const EXPORT_CHUNK: usize = 1000;
/// Paths whose NAR is at least this large are sent alone with `cmdAddToStoreNar`; smaller
/// ones go together, a `nix-store --export` piped into `cmdImportPaths`. Nix 2.8's
/// `cmdImportPaths` holds each NAR in memory and parses and hashes it twice (about 3.5 ms per
/// MiB more than `cmdAddToStoreNar` on the benchmark machine), which outweighs a round trip
/// per path (or, for a store named by a URL, starting a `nix store dump-path`, some 20 ms)
/// only for large paths.
const NAR_MIN_SIZE: u64 = 8 << 20;
/// The read buffer on a local `nix-store --export` or `nix store dump-path`.
const NAR_READ_BUFFER: usize = 256 << 10;
/// How many times outputs a collection took as they arrived are copied back before the build
/// is an error (see [`build_remote`]).
const COPY_BACK_ROUNDS: u32 = 3;
/// How much of a helper process's stdout or stderr is kept.
const OUTPUT_CAP: usize = 1 << 20;

/// Builds `drv_path` on the store behind `client` and copies its outputs back into `local`'s
/// store: `crate::cli::build_remote`, which documents the outcome and the errors.
pub(crate) async fn build_remote<R, W>(
    client: &mut ServeClient<R, W>,
    local: &Config,
    drv_path: &StorePath,
    settings: &BuildSettings,
    gc_root: Option<&Path>,
) -> Result<RemoteBuildOutcome>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut timings = RemoteBuildTimings::default();

    let started = Instant::now();
    let Prepared { outputs, mode } = prepare(local, drv_path).await?;
    timings.inputs = started.elapsed();
    // Rooted before anything is built or copied back (see `crate::roots::register_direct`):
    // a collection running at any moment keeps the outputs once they are valid here.
    let links = gc_root.map(|root| output_links(root, &outputs));
    let rooted_ahead = match &links {
        Some(links) => register_direct(local, links.clone()).await?,
        None => false,
    };
    let output_paths: Vec<String> = outputs.values().map(ToString::to_string).collect();

    let started = Instant::now();
    let (to_send, also_ask, infos) = match &mode {
        Mode::Derivation { closure, infos, .. } => (closure, &[][..], Some(infos)),
        // Asking for the outputs too tells whether the builder has them already.
        Mode::Closure { send, .. } => (send, output_paths.as_slice(), None),
    };
    let (copied_to_remote, valid) = send_missing(client, local, to_send, also_ask, infos).await?;
    let had_outputs = output_paths
        .iter()
        .all(|p| valid.contains(p) || to_send.contains(p));
    timings.copy_to_remote = started.elapsed();

    let started = Instant::now();
    // Derivation mode: the outputs already valid locally, asked while the builder builds.
    let mut local_outputs = HashSet::new();
    let (status, times_built) = match &mode {
        Mode::Derivation { drv, .. } => {
            let paths: Vec<StorePath> = outputs.values().cloned().collect();
            let (result, valid) = tokio::join!(
                client.build_derivation(drv_path.as_str(), drv, settings),
                is_valid(local, &paths),
            );
            let result = result.map_err(serve_error("the builder failed while building"))?;
            local_outputs = paths
                .into_iter()
                .zip(valid?)
                .filter_map(|(p, v)| v.then_some(p))
                .collect();
            let status = match result.status {
                status if status.is_success() => RemoteBuildStatus::Built,
                BuildResultStatus::TimedOut => RemoteBuildStatus::TimedOut {
                    message: result.error_msg,
                },
                status => RemoteBuildStatus::Failed {
                    status,
                    message: result.error_msg,
                },
            };
            (status, result.times_built)
        }
        Mode::Closure { target, .. } => {
            let reply = client
                .build_paths(std::slice::from_ref(target), settings)
                .await
                .map_err(serve_error("the builder failed while building"))?;
            let status = match reply {
                BuildPathsReply::Built => RemoteBuildStatus::Built,
                BuildPathsReply::Failed { status, message } => {
                    build_paths_failure(status, &message)
                }
            };
            (status, u64::from(!had_outputs))
        }
    };
    timings.build = started.elapsed();
    debug!(
        drv = %drv_path,
        mode = mode.name(),
        status = ?status,
        sent = copied_to_remote.len(),
        build_ms = millis(timings.build),
        "remote build finished"
    );

    let mut outcome = RemoteBuildOutcome {
        status,
        outputs,
        copied_to_remote,
        copied_back: Vec::new(),
        times_built,
        timings,
    };
    if outcome.status != RemoteBuildStatus::Built {
        return Ok(outcome);
    }

    let started = Instant::now();
    let mut rounds = 0;
    loop {
        let copied = match &mode {
            Mode::Derivation { .. } => {
                copy_back_outputs(client, local, &outcome.outputs, &local_outputs).await?
            }
            Mode::Closure { .. } => {
                copy_back_closure(client, local, drv_path, &outcome.outputs).await?
            }
        };
        outcome.copied_back.extend(copied);
        let Some(links) = &links else { break };
        // Nix 2.8's collector can delete a path imported while it runs even when a root to it
        // was written before (seen here about once in 15 imports under back-to-back
        // collections): the outputs are checked, and copied again while the roots exist.
        let paths: Vec<StorePath> = outcome.outputs.values().cloned().collect();
        let valid = is_valid(local, &paths).await?;
        local_outputs = paths
            .iter()
            .zip(&valid)
            .filter(|(_, v)| **v)
            .map(|(p, _)| p.clone())
            .collect();
        if let Some(gone) = paths.iter().find(|p| !local_outputs.contains(*p)) {
            rounds += 1;
            if rounds >= COPY_BACK_ROUNDS {
                return Err(Error::InvalidPath {
                    path: gone.to_string(),
                });
            }
            debug!(drv = %drv_path, output = %gone, "an output was collected as it arrived, copying it again");
            continue;
        }
        if !rooted_ahead {
            // `nix-store --add-root` needs valid paths: until it has run, a collection could
            // take an output imported just now.
            register(local, links.clone()).await?;
        }
        break;
    }
    outcome.timings.copy_back = started.elapsed();
    Ok(outcome)
}

/// What the local store says about a derivation to build remotely.
struct Prepared {
    /// Its outputs, name → path.
    outputs: BTreeMap<String, StorePath>,
    mode: Mode,
}

/// How to build it (see the module documentation).
enum Mode {
    /// Every input is valid locally: `cmdBuildDerivation` of `drv`, whose `input_srcs` is
    /// `closure`, the input closure (references first).
    /// `infos` describes the paths of `closure`.
    Derivation {
        drv: Box<BasicDerivation>,
        closure: Vec<String>,
        infos: HashMap<String, NarInfo>,
    },
    /// Some input is not: `cmdBuildPaths` of `target` (`<drv>!<outputs>`) after sending what
    /// the builder lacks of `send`, the closure of the `.drv` file and of the locally valid
    /// outputs of the derivations in it (references first).
    Closure { send: Vec<String>, target: String },
}

impl Mode {
    fn name(&self) -> &'static str {
        match self {
            Self::Derivation { .. } => "derivation",
            Self::Closure { .. } => "closure",
        }
    }
}

/// A derivation as `nix show-derivation` prints it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ShownDerivation {
    outputs: BTreeMap<String, ShownOutput>,
    input_srcs: Vec<String>,
    input_drvs: BTreeMap<String, Vec<String>>,
    system: String,
    builder: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ShownOutput {
    path: Option<String>,
    hash_algo: Option<String>,
    hash: Option<String>,
}

/// Reads the derivation and decides how to build it.
async fn prepare(local: &Config, drv_path: &StorePath) -> Result<Prepared> {
    let mut shown = show_derivations(local, &[drv_path.as_str()], false).await?;
    let top = shown
        .remove(drv_path.as_str())
        .ok_or_else(|| output_error(local, drv_path.as_str(), "the derivation is missing"))?;

    let mut outputs = BTreeMap::new();
    let mut drv_outputs = Vec::new();
    for (name, output) in top.outputs {
        let path = output.path.ok_or_else(|| {
            output_error(
                local,
                drv_path.as_str(),
                "floating CA outputs are not supported",
            )
        })?;
        let store_path = StorePath::new(&path)
            .map_err(|e| output_error(local, drv_path.as_str(), &e.to_string()))?;
        outputs.insert(name.clone(), store_path);
        drv_outputs.push(DerivationOutput {
            name,
            path,
            hash_algo: output.hash_algo.unwrap_or_default(),
            hash: output.hash.unwrap_or_default(),
        });
    }

    let mut inputs: Vec<String> = top.input_srcs;
    if !top.input_drvs.is_empty() {
        let names: Vec<&str> = top.input_drvs.keys().map(String::as_str).collect();
        let input_drvs = show_derivations(local, &names, false).await?;
        for (input, wanted) in &top.input_drvs {
            let shown = input_drvs
                .get(input)
                .ok_or_else(|| output_error(local, input, "an input derivation is missing"))?;
            for name in wanted {
                let path = shown
                    .outputs
                    .get(name)
                    .and_then(|o| o.path.clone())
                    .ok_or_else(|| {
                        output_error(local, input, "an input has no output path (floating CA)")
                    })?;
                inputs.push(path);
            }
        }
    }
    let inputs = store_paths(local, inputs)?;
    let valid = is_valid(local, &inputs).await?;

    if valid.iter().all(|v| *v) {
        let paths: Vec<&str> = inputs.iter().map(StorePath::as_str).collect();
        let (closure, infos) = if inputs.is_empty() {
            (Vec::new(), HashMap::new())
        } else if paths.iter().any(|p| is_drv(p)) {
            // `nix path-info` would take a `.drv` argument for its outputs.
            (requisites(local, &paths, false).await?, HashMap::new())
        } else {
            let infos = path_infos(local, &paths, true).await?;
            (references_first(&infos), infos)
        };
        let drv = BasicDerivation {
            outputs: drv_outputs,
            input_srcs: closure.clone(),
            platform: top.system,
            builder: top.builder,
            args: top.args,
            env: top.env.into_iter().collect(),
        };
        return Ok(Prepared {
            outputs,
            mode: Mode::Derivation {
                drv: Box::new(drv),
                closure,
                infos,
            },
        });
    }

    let send = requisites(local, &[drv_path.as_str()], true).await?;
    let names: Vec<&str> = outputs.keys().map(String::as_str).collect();
    let target = format!("{drv_path}!{}", names.join(","));
    Ok(Prepared {
        outputs,
        mode: Mode::Closure { send, target },
    })
}

/// Returns the closure of `paths` in the local store, references first; with
/// `include_outputs`, also the valid outputs of the derivations in it, and their closure.
async fn requisites(local: &Config, paths: &[&str], include_outputs: bool) -> Result<Vec<String>> {
    let mut args = os_args(["--query", "--requisites"]);
    if include_outputs {
        args.push("--include-outputs".into());
    }
    args.extend(paths.iter().map(OsString::from));
    let stdout = local.run_ok(&local.nix_store, &args).await?;
    Ok(stdout.lines().map(str::to_owned).collect())
}

fn is_drv(path: &str) -> bool {
    path.ends_with(".drv")
}

/// Returns what the local store says about `paths`, which must be valid and not `.drv` files
/// (`nix path-info` takes those for their outputs), or with `recursive` about their closure;
/// by path.
async fn path_infos(
    local: &Config,
    paths: &[&str],
    recursive: bool,
) -> Result<HashMap<String, NarInfo>> {
    let args = nix_args(&["path-info", "--json"], paths, recursive);
    let shown: Vec<ShownPathInfo> = nix_json(local, &args).await?;
    let bad = |reason: String| Error::Output {
        command: command_line(&local.nix, &args),
        reason,
    };
    let mut infos = HashMap::with_capacity(shown.len());
    for p in shown {
        let (Some(nar_hash), Some(nar_size), None | Some(true)) = (p.nar_hash, p.nar_size, p.valid)
        else {
            return Err(bad(format!("{}: not valid", p.path)));
        };
        let info = NarInfo {
            path: p.path.clone(),
            deriver: p.deriver.unwrap_or_default(),
            nar_hash,
            references: p.references,
            registration_time: p.registration_time,
            nar_size,
            ultimate: p.ultimate,
            sigs: p.signatures,
            ca: p.ca.unwrap_or_default(),
        };
        infos.insert(p.path, info);
    }
    Ok(infos)
}

/// Returns the paths of `infos` with every path after its references (those in `infos`), in
/// an order that depends only on `infos`.
fn references_first(infos: &HashMap<String, NarInfo>) -> Vec<String> {
    let mut paths: Vec<&str> = infos.keys().map(String::as_str).collect();
    paths.sort_unstable();
    let mut order = Vec::with_capacity(paths.len());
    // Paths entered (on the stack or done); a reference back to one is skipped, which only
    // happens for self-references (Nix refuses other cycles).
    let mut entered: HashSet<&str> = HashSet::with_capacity(paths.len());
    let mut stack: Vec<(&str, usize)> = Vec::new();
    for root in paths {
        if !entered.insert(root) {
            continue;
        }
        stack.push((root, 0));
        while let Some(top) = stack.last_mut() {
            let (path, next) = *top;
            top.1 += 1;
            let reference = infos
                .get(path)
                .and_then(|info| info.references.get(next))
                .map(String::as_str);
            match reference {
                Some(r) => {
                    if infos.contains_key(r) && entered.insert(r) {
                        stack.push((r, 0));
                    }
                }
                None => {
                    order.push(path.to_owned());
                    stack.pop();
                }
            }
        }
    }
    order
}

fn show_args(paths: &[&str], recursive: bool) -> Vec<OsString> {
    nix_args(&["show-derivation"], paths, recursive)
}

/// Returns the derivations `paths`, or with `recursive` also every derivation below them.
async fn show_derivations(
    local: &Config,
    paths: &[&str],
    recursive: bool,
) -> Result<BTreeMap<String, ShownDerivation>> {
    nix_json(local, &show_args(paths, recursive)).await
}

fn output_error(local: &Config, path: &str, reason: &str) -> Error {
    Error::Output {
        command: command_line(&local.nix, &show_args(&[path], false)),
        reason: format!("{path}: {reason}"),
    }
}

fn store_paths(local: &Config, paths: Vec<String>) -> Result<Vec<StorePath>> {
    paths
        .into_iter()
        .map(|p| StorePath::new(&p).map_err(|e| output_error(local, &p, &e.to_string())))
        .collect()
}

/// Sends the paths of `closure` (valid locally, references first) that the builder lacks;
/// returns the paths sent and the set of paths of `closure` and `also_ask` that the builder
/// had (it keeps a temporary root on all of them while the connection lasts). `infos`, when
/// given, describes the paths of `closure`; else they are looked up when needed.
async fn send_missing<R, W>(
    client: &mut ServeClient<R, W>,
    local: &Config,
    closure: &[String],
    also_ask: &[String],
    infos: Option<&HashMap<String, NarInfo>>,
) -> Result<(Vec<StorePath>, HashSet<String>)>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut asked: Vec<&str> = closure.iter().map(String::as_str).collect();
    asked.extend(also_ask.iter().map(String::as_str));
    let valid: HashSet<String> = if asked.is_empty() {
        HashSet::new()
    } else {
        client
            .query_valid_paths(&asked, true, false)
            .await
            .map_err(serve_error("cannot ask the builder which inputs it has"))?
            .into_iter()
            .collect()
    };
    let missing: Vec<&str> = closure
        .iter()
        .map(String::as_str)
        .filter(|p| !valid.contains(*p))
        .collect();
    if missing.is_empty() {
        return Ok((Vec::new(), valid));
    }
    let looked_up;
    let infos = match infos {
        Some(infos) => infos,
        None if client.supports_add_to_store_nar() => {
            // `.drv` files are small, and `nix path-info` would take them for their outputs.
            let files: Vec<&str> = missing.iter().copied().filter(|p| !is_drv(p)).collect();
            let mut found = HashMap::new();
            for chunk in files.chunks(EXPORT_CHUNK) {
                found.extend(path_infos(local, chunk, false).await?);
            }
            looked_up = found;
            &looked_up
        }
        None => {
            looked_up = HashMap::new();
            &looked_up
        }
    };
    let steps = plan_sends(&missing, infos, client.supports_add_to_store_nar());
    let mut copied = Vec::new();
    // The next dump is started while the current one is copied, to hide its start-up.
    let mut next_dump: Option<Dump> = None;
    for (i, step) in steps.iter().enumerate() {
        match step {
            SendStep::Export(paths) => copied.extend(export_to(client, local, paths).await?),
            SendStep::Nar(info) if local.physical_is_exact() => {
                copied.push(add_nar_from_files(client, local, info).await?);
            }
            SendStep::Nar(info) => {
                let dump = match next_dump.take() {
                    Some(dump) => dump,
                    None => Dump::spawn(local, &info.path)?,
                };
                if let Some(SendStep::Nar(next)) = steps.get(i + 1) {
                    // Only reached when the store's files cannot be read directly.
                    next_dump = Some(Dump::spawn(local, &next.path)?);
                }
                copied.push(add_nar(client, info, dump).await?);
            }
        }
    }
    Ok((copied, valid))
}

/// One way to send some of the missing paths.
#[derive(Debug, PartialEq, Eq)]
enum SendStep<'a> {
    /// A `nix-store --export` of these paths into `cmdImportPaths`.
    Export(Vec<&'a str>),
    /// A `nix store dump-path` of this path into `cmdAddToStoreNar`.
    Nar(&'a NarInfo),
}

/// Splits `missing` (references first) into steps that keep every path after its
/// references: large paths (see [`NAR_MIN_SIZE`]) alone when `add_nar` is allowed and their
/// metadata is known, the others in export batches.
fn plan_sends<'a>(
    missing: &[&'a str],
    infos: &'a HashMap<String, NarInfo>,
    add_nar: bool,
) -> Vec<SendStep<'a>> {
    let mut steps = Vec::new();
    let mut batch: Vec<&'a str> = Vec::new();
    let mut batched: HashSet<&str> = HashSet::new();
    for &path in missing {
        match infos.get(path) {
            Some(info) if add_nar && info.nar_size >= NAR_MIN_SIZE => {
                // Its references that wait in the batch must arrive first; other paths of
                // the batch can come after it.
                if info
                    .references
                    .iter()
                    .any(|r| r != path && batched.contains(r.as_str()))
                {
                    steps.push(SendStep::Export(std::mem::take(&mut batch)));
                    batched.clear();
                }
                steps.push(SendStep::Nar(info));
            }
            _ => {
                batch.push(path);
                batched.insert(path);
                if batch.len() >= EXPORT_CHUNK {
                    steps.push(SendStep::Export(std::mem::take(&mut batch)));
                    batched.clear();
                }
            }
        }
    }
    if !batch.is_empty() {
        steps.push(SendStep::Export(batch));
    }
    steps
}

/// Sends one path described by `info` with `cmdAddToStoreNar`, its NAR written from its files
/// in the local store (as `nix-store --dump` would), read a little ahead on a blocking thread
/// and written straight to the builder. Saves starting a Nix process per path; the builder
/// checks the NAR against the size and hash the local store registered.
async fn add_nar_from_files<R, W>(
    client: &mut ServeClient<R, W>,
    local: &Config,
    info: &NarInfo,
) -> Result<StorePath>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let path = StorePath::new(&info.path).map_err(|_| Error::Serve {
        message: "cannot copy the inputs to the builder".to_owned(),
        source: ServeError::Archive(NarError::BadPath {
            path: info.path.clone(),
        }),
    })?;
    let root = local.physical(&path);
    match client.add_to_store_nar_from_files(info, &root).await {
        Ok(()) => Ok(path),
        Err(ServeError::Archive(NarError::Read(source))) => Err(Error::StoreRead {
            path: info.path.clone(),
            source,
        }),
        Err(source) => Err(Error::Serve {
            message: format!("cannot copy {} to the builder", info.path),
            source,
        }),
    }
}

/// A running local `nix store dump-path` (whose stdout is one NAR) or `nix-store --export`,
/// whose stdout goes to the builder.
struct Dump {
    program: PathBuf,
    child: Child,
    stdout: ChildStdout,
    stderr: tokio::task::JoinHandle<Vec<u8>>,
    args: Vec<OsString>,
}

impl Dump {
    /// Starts `nix store dump-path path`.
    fn spawn(local: &Config, path: &str) -> Result<Self> {
        let args = nix_args(&["store", "dump-path"], &[path], false);
        Self::start(local, &local.nix, args)
    }

    /// Starts `program` with `args`, its stdout piped and its stderr read on the side.
    fn start(local: &Config, program: &Path, args: Vec<OsString>) -> Result<Self> {
        let mut child = local
            .command(program, &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| spawn_error(program, source))?;
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(no_pipes(program));
        };
        widen_pipe(&stdout);
        Ok(Self {
            program: program.to_owned(),
            child,
            stdout,
            stderr: tokio::spawn(read_capped(stderr)),
            args,
        })
    }

    /// Lets `send` read the output, then waits for the process, killing it first when `send`
    /// failed; returns what `send` returned and how the process ended.
    async fn send<T>(
        self,
        send: impl AsyncFnOnce(&mut BufReader<ChildStdout>) -> Result<T, ServeError>,
    ) -> Result<(Result<T, ServeError>, Finished)> {
        let Self {
            program,
            mut child,
            stdout,
            stderr,
            args,
        } = self;
        let mut output = BufReader::with_capacity(NAR_READ_BUFFER, stdout);
        let sent = send(&mut output).await;
        // Dropping the pipe stops a process the builder no longer reads.
        drop(output);
        if sent.is_err() {
            let _ = child.start_kill();
        }
        let finished = wait(&mut child, &program, &args, stderr).await?;
        Ok((sent, finished))
    }
}

/// Sends one path described by `info` with `cmdAddToStoreNar`, its NAR read from `dump`.
async fn add_nar<R, W>(
    client: &mut ServeClient<R, W>,
    info: &NarInfo,
    dump: Dump,
) -> Result<StorePath>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (added, finished) = dump
        .send(async |nar| client.add_to_store_nar(info, nar).await)
        .await?;
    match added {
        Ok(()) if finished.code == Some(0) => {
            StorePath::new(&info.path).map_err(|_| Error::Serve {
                message: "cannot copy the inputs to the builder".to_owned(),
                source: ServeError::Archive(NarError::BadPath {
                    path: info.path.clone(),
                }),
            })
        }
        // The dump failed on its own (it was not killed): its message says why.
        _ if finished.code.is_some_and(|c| c != 0) => Err(finished.into_error()),
        Ok(()) => Err(finished.into_error()),
        Err(source) => Err(Error::Serve {
            message: format!("cannot copy {} to the builder", info.path),
            source,
        }),
    }
}

/// Sends `paths` (valid locally, references first or already on the builder) to the builder:
/// a local `nix-store --export` piped into `cmdImportPaths`.
async fn export_to<R, W>(
    client: &mut ServeClient<R, W>,
    local: &Config,
    paths: &[&str],
) -> Result<Vec<StorePath>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut args = os_args(["--export"]);
    args.extend(paths.iter().map(OsString::from));
    let (imported, finished) = Dump::start(local, &local.nix_store, args)?
        .send(async |export| client.import_paths(export).await)
        .await?;
    match imported {
        Ok(paths) if finished.code == Some(0) => Ok(paths),
        // The export failed on its own (it was not killed): its message says why.
        _ if finished.code.is_some_and(|c| c != 0) => Err(finished.into_error()),
        Ok(_) => Err(finished.into_error()),
        Err(source) => Err(Error::Serve {
            message: "cannot copy the inputs to the builder".to_owned(),
            source,
        }),
    }
}

/// Copies the `outputs` that were not valid locally during the build (`local_outputs` are
/// those that were) from the builder into the local store; returns the paths copied.
///
/// Only the outputs are asked for, as Nix's `build-remote` does: what they reference is either
/// one of them or in the input closure, which came from the local store. Asking the builder for
/// the closure instead would let a dishonest one add any path it likes to the local store (the
/// import checks no signatures), such as the future output of another derivation.
async fn copy_back_outputs<R, W>(
    client: &mut ServeClient<R, W>,
    local: &Config,
    outputs: &BTreeMap<String, StorePath>,
    local_outputs: &HashSet<StorePath>,
) -> Result<Vec<StorePath>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let missing: Vec<&str> = outputs
        .values()
        .filter(|p| !local_outputs.contains(*p))
        .map(StorePath::as_str)
        .collect();
    import_from(client, local, &missing).await
}

/// Copies the runtime closure of `outputs` (the outputs of `drv_path`, just built in closure
/// mode) from the builder into the local store, as far as it is missing there; returns the
/// paths copied.
///
/// The builder names the closure (`cmdQueryClosure`), but the import checks no signatures, so
/// its answer is not trusted: a missing path must be an output of a derivation in `drv_path`'s
/// closure, which only the builder can have built during this build (sources and the rest
/// came from the local store).
async fn copy_back_closure<R, W>(
    client: &mut ServeClient<R, W>,
    local: &Config,
    drv_path: &StorePath,
    outputs: &BTreeMap<String, StorePath>,
) -> Result<Vec<StorePath>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let output_paths: Vec<&str> = outputs.values().map(StorePath::as_str).collect();
    let closure = client
        .query_closure(&output_paths, false)
        .await
        .map_err(serve_error(
            "cannot ask the builder for the outputs' closure",
        ))?;
    // The outputs themselves are always wanted, whatever the builder says.
    let mut wanted: Vec<StorePath> = outputs.values().cloned().collect();
    for path in closure {
        let path = StorePath::new(&path).map_err(|_| Error::Serve {
            message: "the builder sent an invalid path in the outputs' closure".to_owned(),
            source: ServeError::Archive(NarError::BadPath { path: path.clone() }),
        })?;
        if !wanted.contains(&path) {
            wanted.push(path);
        }
    }
    let valid = is_valid(local, &wanted).await?;
    let missing: Vec<StorePath> = wanted
        .into_iter()
        .zip(valid)
        .filter(|(_, v)| !v)
        .map(|(p, _)| p)
        .collect();
    let is_output = |p: &StorePath| outputs.values().any(|o| o == p);
    if missing.iter().any(|p| !is_output(p)) {
        // Only read when needed: the recursive listing of a large closure is large.
        let produced: HashSet<String> = show_derivations(local, &[drv_path.as_str()], true)
            .await?
            .into_values()
            .flat_map(|d| d.outputs.into_values().filter_map(|o| o.path))
            .collect();
        if let Some(stray) = missing.iter().find(|p| !produced.contains(p.as_str())) {
            return Err(Error::Serve {
                message: format!(
                    "the builder says the outputs reference {stray}, which no derivation of \
                     the closure produces"
                ),
                source: ServeError::Archive(NarError::UnexpectedPath {
                    path: stray.clone(),
                }),
            });
        }
    }
    let missing: Vec<&str> = missing.iter().map(StorePath::as_str).collect();
    import_from(client, local, &missing).await
}

/// Copies `missing` (paths not valid locally, whose references are valid locally or among
/// them) from the builder into the local store: its `cmdExportPaths` stream, checked to hold
/// only those paths, piped into a local `nix-store --import`. Returns the paths copied, in the
/// order received.
async fn import_from<R, W>(
    client: &mut ServeClient<R, W>,
    local: &Config,
    missing: &[&str],
) -> Result<Vec<StorePath>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if missing.is_empty() {
        return Ok(Vec::new());
    }

    let program = &local.nix_store;
    let args = os_args(["--import"]);
    let mut child = local
        .command(program, &args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| spawn_error(program, source))?;
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err(no_pipes(program));
    };
    widen_pipe(&stdin);
    // Drained so that the import never blocks on a full pipe (it prints each path).
    let stdout = tokio::spawn(read_capped(stdout));
    let stderr = tokio::spawn(read_capped(stderr));
    let exported = client.export_paths(missing, &mut stdin).await;
    // End of input: the import finishes, or drops a path whose record was cut short.
    drop(stdin);
    let finished = wait(&mut child, program, &args, stderr).await?;
    let _ = stdout.await;
    match exported {
        // The import stopped reading: its own message says why.
        Err(ServeError::Archive(NarError::Write(_))) => Err(finished.into_error()),
        Err(source) => Err(Error::Serve {
            message: "cannot copy the outputs back from the builder".to_owned(),
            source,
        }),
        Ok(_) if finished.code != Some(0) => Err(finished.into_error()),
        Ok(paths) => {
            // The import succeeded, so what it read is valid; a path the builder left out (it
            // does not have it) is not.
            match missing
                .iter()
                .find(|m| !paths.iter().any(|p| p.as_str() == **m))
            {
                Some(absent) => Err(Error::InvalidPath {
                    path: (*absent).to_owned(),
                }),
                None => Ok(paths),
            }
        }
    }
}

async fn wait(
    child: &mut Child,
    program: &Path,
    args: &[OsString],
    stderr: tokio::task::JoinHandle<Vec<u8>>,
) -> Result<Finished> {
    let status = child.wait().await.map_err(|source| Error::Spawn {
        program: program.to_owned(),
        source,
    })?;
    let stderr = stderr.await.map_err(Error::Task)?;
    Ok(Finished::new(program, args, status, &[], &stderr))
}

/// Reads `pipe` to its end, keeping the first [`OUTPUT_CAP`] bytes.
async fn read_capped<P: AsyncRead + Unpin>(mut pipe: P) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut chunk = vec![0u8; 8192];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = OUTPUT_CAP.saturating_sub(kept.len()).min(n);
                kept.extend_from_slice(&chunk[..room]);
            }
        }
    }
}

fn no_pipes(program: &Path) -> Error {
    Error::Spawn {
        program: program.to_owned(),
        source: std::io::Error::other("the child's pipes are missing"),
    }
}

fn serve_error(message: &'static str) -> impl FnOnce(ServeError) -> Error {
    move |source| Error::Serve {
        message: message.to_owned(),
        source,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Path infos named `/nix/store/<name>`, with `(name, NAR size, references)`.
    fn infos(paths: &[(&str, u64, &[&str])]) -> HashMap<String, NarInfo> {
        let store = |n: &str| format!("/nix/store/{n}");
        paths
            .iter()
            .map(|(name, size, refs)| {
                let info = NarInfo {
                    path: store(name),
                    nar_size: *size,
                    references: refs.iter().map(|r| store(r)).collect(),
                    ..NarInfo::default()
                };
                (store(name), info)
            })
            .collect()
    }

    #[test]
    fn references_first_should_put_every_path_after_its_references() {
        let infos = infos(&[
            ("a", 1, &["a"]),
            ("b", 1, &["a", "d"]),
            ("c", 1, &["b", "a", "outside"]),
            ("d", 1, &[]),
        ]);
        let order = references_first(&infos);
        let names: Vec<&str> = order.iter().map(|p| &p["/nix/store/".len()..]).collect();
        assert_eq!(names, ["a", "d", "b", "c"]);
    }

    #[test]
    fn plan_sends_should_send_large_paths_alone_after_their_batched_references() {
        const BIG: u64 = NAR_MIN_SIZE;
        let infos = infos(&[
            ("s1", 10, &[]),
            ("s2", 10, &[]),
            ("l1", BIG, &["l1", "s1"]),
            ("s3", 10, &["l1"]),
            ("l2", BIG, &["l1"]),
            ("l3", BIG, &["s3"]),
        ]);
        let missing: Vec<String> = ["s1", "s2", "l1", "s3", "l2", "l3", "unknown"]
            .iter()
            .map(|n| format!("/nix/store/{n}"))
            .collect();
        let missing: Vec<&str> = missing.iter().map(String::as_str).collect();
        let show = |steps: Vec<SendStep<'_>>| -> Vec<String> {
            steps
                .iter()
                .map(|s| match s {
                    SendStep::Export(paths) => format!("export {}", paths.join(" ")),
                    SendStep::Nar(info) => format!("nar {}", info.path),
                })
                .map(|s| s.replace("/nix/store/", ""))
                .collect()
        };
        assert_eq!(
            show(plan_sends(&missing, &infos, true)),
            [
                "export s1 s2",
                "nar l1",
                "nar l2",
                "export s3",
                "nar l3",
                "export unknown"
            ]
        );
        // An old server gets everything in one export.
        assert_eq!(
            show(plan_sends(&missing, &infos, false)),
            ["export s1 s2 l1 s3 l2 l3 unknown"]
        );
    }
}
