//! Questions about valid store paths (`nix-store --check-validity`, `nix path-info`) and copies
//! to binary caches (`nix copy`).

use std::collections::BTreeMap;
use std::ffi::OsString;

use reconix_spec::names::StorePath;
use serde::Deserialize;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::port::PathSize;
use crate::process::{command_line, os_args};
use crate::serve::wire::ServedPathInfo;

/// How many paths one `nix path-info`, `nix copy` or `nix-store --check-validity` gets (keeps
/// argv small).
const CHUNK: usize = 1000;

/// A path as `nix path-info --json` prints it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ShownPathInfo {
    pub(crate) path: String,
    /// Only printed (false) for an invalid path.
    pub(crate) valid: Option<bool>,
    pub(crate) nar_hash: Option<String>,
    pub(crate) nar_size: Option<u64>,
    #[serde(default)]
    pub(crate) references: Vec<String>,
    pub(crate) deriver: Option<String>,
    #[serde(default)]
    pub(crate) registration_time: u64,
    #[serde(default)]
    pub(crate) ultimate: bool,
    #[serde(default)]
    pub(crate) signatures: Vec<String>,
    pub(crate) ca: Option<String>,
}

/// Returns the arguments of `nix <command…> [--recursive] <paths…>`, with the experimental
/// `nix-command` feature enabled.
pub(crate) fn nix_args(command: &[&str], paths: &[&str], recursive: bool) -> Vec<OsString> {
    let mut args = os_args(["--extra-experimental-features", "nix-command"]);
    args.extend(command.iter().map(OsString::from));
    if recursive {
        args.push("--recursive".into());
    }
    args.extend(paths.iter().map(OsString::from));
    args
}

/// Runs `nix` with `args` and parses what it prints as JSON.
pub(crate) async fn nix_json<T: serde::de::DeserializeOwned>(
    local: &Config,
    args: &[OsString],
) -> Result<T> {
    let stdout = local.run_ok(&local.nix, args).await?;
    serde_json::from_str(&stdout).map_err(|e| Error::Output {
        command: command_line(&local.nix, args),
        reason: e.to_string(),
    })
}

/// [`Nix::is_valid`](crate::Nix::is_valid) for `NixCli`.
pub(crate) async fn is_valid(config: &Config, paths: &[StorePath]) -> Result<Vec<bool>> {
    let mut invalid = std::collections::HashSet::new();
    for chunk in paths.chunks(CHUNK) {
        let mut args = os_args(["--check-validity", "--print-invalid"]);
        args.extend(chunk.iter().map(|p| OsString::from(p.as_str())));
        let stdout = config.run_ok(&config.nix_store, &args).await?;
        invalid.extend(stdout.lines().map(str::to_owned));
    }
    Ok(paths
        .iter()
        .map(|p| !invalid.contains(p.as_str()))
        .collect())
}

/// [`Nix::closure`](crate::Nix::closure) for `NixCli`.
pub(crate) async fn closure(
    cli: &Config,
    paths: &[StorePath],
) -> Result<BTreeMap<StorePath, PathSize>> {
    let mut closure = BTreeMap::new();
    for chunk in paths.chunks(CHUNK) {
        let names: Vec<&str> = chunk.iter().map(StorePath::as_str).collect();
        let args = nix_args(&["path-info", "--json"], &names, true);
        let shown: Vec<ShownPathInfo> = nix_json(cli, &args).await?;
        let bad = |reason: String| Error::Output {
            command: command_line(&cli.nix, &args),
            reason,
        };
        for p in shown {
            let (Some(nar_size), None | Some(true)) = (p.nar_size, p.valid) else {
                return Err(Error::InvalidPath { path: p.path });
            };
            let path =
                StorePath::new(p.path.as_str()).map_err(|e| bad(format!("{}: {e}", p.path)))?;
            let references = p
                .references
                .iter()
                .map(|r| StorePath::new(r.as_str()).map_err(|e| bad(format!("{r}: {e}"))))
                .collect::<Result<Vec<_>>>()?;
            closure.insert(
                path,
                PathSize {
                    nar_size,
                    references,
                },
            );
        }
    }
    Ok(closure)
}

/// Returns the closure `infos` describe (as a build channel answered `cmdQueryClosure` of
/// `roots`, then `cmdQueryPathInfos`), or `None` when it is not one: a root or a reference
/// missing, or a path that does not parse.
pub(crate) fn closure_of_infos(
    roots: &[StorePath],
    infos: Vec<ServedPathInfo>,
) -> Option<BTreeMap<StorePath, PathSize>> {
    let mut closure = BTreeMap::new();
    for info in infos {
        let references = info
            .references
            .iter()
            .map(|r| StorePath::new(r.as_str()).ok())
            .collect::<Option<Vec<_>>>()?;
        let size = PathSize {
            nar_size: info.nar_size,
            references,
        };
        closure.insert(StorePath::new(info.path.as_str()).ok()?, size);
    }
    let complete = roots.iter().all(|r| closure.contains_key(r))
        && closure
            .values()
            .all(|s| s.references.iter().all(|r| closure.contains_key(r)));
    complete.then_some(closure)
}

/// [`Nix::copy_to`](crate::Nix::copy_to) for `NixCli`.
pub(crate) async fn copy_to(
    cli: &Config,
    to: &str,
    paths: &[StorePath],
    closure: bool,
) -> Result<()> {
    for chunk in paths.chunks(CHUNK) {
        let mut args = os_args([
            "--extra-experimental-features",
            "nix-command",
            "copy",
            "--to",
            to,
            // The cache may have lost what Nix remembers it had: always ask it.
            "--option",
            "narinfo-cache-positive-ttl",
            "0",
            "--option",
            "narinfo-cache-negative-ttl",
            "0",
        ]);
        if !closure {
            args.push("--no-recursive".into());
        }
        args.extend(chunk.iter().map(|p| OsString::from(p.as_str())));
        cli.run_ok(&cli.nix, &args).await?;
    }
    Ok(())
}
