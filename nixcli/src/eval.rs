//! `NixCli::evaluate`: the hybrid evaluation strategy of `nix-lab.md` §3.
//!
//! 1. One cheap `nix eval` of `expr/names.nix` lists the job attributes (`attrNames` forces
//!    nothing). If it fails, the flake as a whole is broken.
//! 2. One bulk `nix eval` of `expr/jobs.nix` evaluates every attribute under `tryEval` +
//!    `deepSeq`, printing each derivation (and writing the `.drv` files). An error `tryEval`
//!    cannot catch (`abort`, missing attribute, type error…) fails the whole process: the
//!    attribute list is then bisected, halves running concurrently, until each failing attribute
//!    has failed alone (its stderr then holds its own message).
//! 3. Each attribute `tryEval` caught is evaluated alone, without `tryEval`, for its message.
//! 4. Dependencies come from the `.drv` files ([`crate::deps`]).
//! 5. The constituents of aggregate jobs are resolved against the other jobs and added to
//!    their dependencies (`crate::aggregates`).
//!
//! Every `nix eval` runs pure (the flake reference is locked) with the eval cache off: a cached
//! failure hides the real message and parallel processes contend on its SQLite database.
//! stdout is parsed only when the process exited with status 0 (`nix eval --json` streams, so a
//! failure leaves partial JSON).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use reconix_spec::names::{AttrPath, StorePath, System};
use serde_json::json;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::aggregates;
use crate::config::Config;
use crate::deps::job_deps;
use crate::parse::aterm::parse_derivation;
use crate::parse::eval::{AttrNames, RawDrv, RawJob, parse_jobs, parse_names};
use crate::port::{EvalJob, EvalOutcome, EvalRequest, JobDrv};
use crate::process::{Finished, os_args};
use crate::{Error, Result};

const NAMES_NIX: &str = include_str!("expr/names.nix");
const JOBS_NIX: &str = include_str!("expr/jobs.nix");

/// One job attribute, as listed by `names.nix`.
#[derive(Debug)]
struct Target {
    /// Index in the `names.nix` list (what `jobs.nix` is given).
    index: usize,
    attr: AttrPath,
    /// The attribute's own name (`hello`, or the configuration name for NixOS).
    name: String,
    /// The system in the attribute path (none for NixOS configurations).
    system: Option<System>,
}

impl Target {
    /// Returns the target, or `None` when the path cannot be an [`AttrPath`] (a name that
    /// contains a dot or a slash, or is empty).
    fn new(index: usize, path: &AttrNames) -> Option<Self> {
        if path.iter().any(|n| n.is_empty() || n.contains('.')) {
            return None;
        }
        let attr = AttrPath::new(path.join(".")).ok()?;
        let (name, system) = match path.as_slice() {
            [category, name, ..] if category == "nixosConfigurations" => (name.clone(), None),
            [_, system, name] => (name.clone(), System::new(system.as_str()).ok()),
            _ => (path.last()?.clone(), None),
        };
        Some(Self {
            index,
            attr,
            name,
            system,
        })
    }
}

/// What is known about one target while the evaluation proceeds.
#[derive(Debug)]
enum Slot {
    Drv(RawDrv),
    Error(String),
    /// `tryEval` caught an error; the message is still to be fetched.
    Caught,
}

/// Runs the whole evaluation (see the module docs).
pub(crate) async fn evaluate(cli: &Arc<Config>, req: EvalRequest) -> Result<EvalOutcome> {
    let started = Instant::now();
    let mut calls = 0_u32;
    let base = json!({
        "flake": req.flake_ref,
        "categories": req.attributes,
        "systems": req.systems,
    });

    // 1. List the attributes.
    calls += 1;
    let listed = cli.run(&cli.nix, &eval_args(&names_expr(&base))).await?;
    if !listed.success() {
        return Err(Error::FlakeEval {
            message: listed.message(),
        });
    }
    let names = parse_names(&listed.stdout).map_err(|e| Error::Output {
        command: listed.command.clone(),
        reason: e.to_string(),
    })?;
    let targets: Vec<Target> = names
        .iter()
        .enumerate()
        .filter_map(|(index, path)| {
            let target = Target::new(index, path);
            if target.is_none() {
                warn!(attr = ?path, "skipping an attribute whose name cannot be a job name");
            }
            target
        })
        .collect();

    // 2. Bulk evaluation, bisecting on uncatchable errors.
    let mut slots: BTreeMap<usize, Slot> = BTreeMap::new();
    let all: Vec<usize> = targets.iter().map(|t| t.index).collect();
    let bulk = |chunk: Vec<usize>| {
        let args = eval_args(&jobs_expr(&base, true, &chunk));
        (chunk, args)
    };
    let queue = if all.is_empty() {
        VecDeque::new()
    } else {
        VecDeque::from([bulk(all)])
    };
    calls += run_queue(cli, queue, |chunk, finished, queue| {
        if finished.success() {
            for (index, raw) in chunk.iter().zip(parse_ok_jobs(&finished, chunk.len())?) {
                slots.insert(*index, slot(raw));
            }
        } else if let [index] = chunk.as_slice() {
            // Failed alone: its stderr holds its own message.
            slots.insert(*index, Slot::Error(finished.message()));
        } else {
            debug!(attrs = chunk.len(), "bulk evaluation failed; bisecting");
            let (left, right) = chunk.split_at(chunk.len() / 2);
            queue.push_back(bulk(left.to_vec()));
            queue.push_back(bulk(right.to_vec()));
        }
        Ok(())
    })
    .await?;

    // 3. The message of each attribute tryEval caught, from evaluating it alone.
    let queue: VecDeque<(usize, Vec<OsString>)> = slots
        .iter()
        .filter(|(_, s)| matches!(s, Slot::Caught))
        .map(|(&index, _)| (index, eval_args(&jobs_expr(&base, false, &[index]))))
        .collect();
    calls += run_queue(cli, queue, |index, finished, _| {
        let resolved = if finished.success() {
            // It evaluated fine alone (the failure depended on something else): keep it.
            parse_ok_jobs(&finished, 1)?
                .pop()
                .map_or_else(|| Slot::Error(finished.message()), slot)
        } else {
            Slot::Error(finished.message())
        };
        slots.insert(index, resolved);
        Ok(())
    })
    .await?;

    // 4. Dependencies between the jobs.
    let jobs: Vec<(Target, std::result::Result<RawDrv, String>)> = targets
        .into_iter()
        .map(|t| {
            let result = match slots.remove(&t.index) {
                Some(Slot::Drv(drv)) => Ok(drv),
                Some(Slot::Error(message)) => Err(message),
                Some(Slot::Caught) | None => Err("evaluation failed".to_owned()),
            };
            (t, result)
        })
        .collect();
    let nodes: Vec<(AttrPath, StorePath)> = jobs
        .iter()
        .filter_map(|(t, r)| {
            r.as_ref()
                .ok()
                .map(|d| (t.attr.clone(), d.drv_path.clone()))
        })
        .collect();
    let reader = cli.clone();
    let (deps, features) = tokio::task::spawn_blocking(move || {
        let job_drvs: HashSet<StorePath> = nodes.iter().map(|(_, d)| d.clone()).collect();
        // The required features of the job derivations, noted as the walk reads them (it reads
        // each derivation once, the jobs' own included).
        let mut features: HashMap<StorePath, Vec<String>> = HashMap::new();
        let deps = job_deps(&nodes, |p: &StorePath| {
            let drv = read_derivation(p, &reader.physical(p))?;
            if job_drvs.contains(p) {
                features.insert(p.clone(), drv.required_features.clone());
            }
            Ok::<_, Error>(drv)
        })?;
        Ok::<_, Error>((deps, features))
    })
    .await
    .map_err(Error::Task)??;
    let mut deps = deps.into_iter();

    // 5. The constituents of aggregate jobs, resolved against the other jobs.
    let mut raw_constituents = Vec::with_capacity(jobs.len());
    let jobs = jobs
        .into_iter()
        .map(|(target, result)| match result {
            Ok(mut drv) => {
                raw_constituents.push(drv.constituents.take());
                let deps = deps.next().unwrap_or_default();
                // Jobs sharing one derivation (aliases) all get its features.
                let features = features.get(&drv.drv_path).cloned().unwrap_or_default();
                job_from_drv(target, drv, deps, features)
            }
            Err(message) => {
                raw_constituents.push(None);
                EvalJob {
                    attr: target.attr,
                    name: target.name,
                    system: target.system,
                    result: Err(message),
                }
            }
        })
        .collect();
    Ok(EvalOutcome {
        jobs: aggregates::resolve(jobs, &raw_constituents),
        duration: started.elapsed(),
        nix_calls: calls,
    })
}

/// Runs `nix` once per queued `(key, args)`, at most `eval_parallelism` at a time, handing each
/// finished process to `done`, which may queue more work. Returns how many processes ran.
async fn run_queue<K: Send + 'static>(
    cli: &Arc<Config>,
    mut queue: VecDeque<(K, Vec<OsString>)>,
    mut done: impl FnMut(K, Finished, &mut VecDeque<(K, Vec<OsString>)>) -> Result<()>,
) -> Result<u32> {
    let mut tasks = JoinSet::new();
    let mut calls = 0;
    loop {
        while tasks.len() < cli.eval_parallelism
            && let Some((key, args)) = queue.pop_front()
        {
            let cli = cli.clone();
            tasks.spawn(async move {
                let finished = cli.run(&cli.nix, &args).await;
                (key, finished)
            });
        }
        // Dropping `tasks` (on error, or when the caller drops this future) aborts the rest,
        // and `kill_on_drop` stops their processes.
        let Some(joined) = tasks.join_next().await else {
            return Ok(calls);
        };
        let (key, finished) = joined.map_err(Error::Task)?;
        calls += 1;
        done(key, finished?, &mut queue)?;
    }
}

fn slot(raw: RawJob) -> Slot {
    match raw {
        RawJob::Ok(drv) => Slot::Drv(drv),
        RawJob::Error(message) => Slot::Error(message),
        RawJob::Failed => Slot::Caught,
    }
}

fn job_from_drv(
    target: Target,
    drv: RawDrv,
    deps: Vec<AttrPath>,
    required_features: Vec<String>,
) -> EvalJob {
    // Evaluation accepts any `system` (`system = 12` gives "12"); such a job cannot be built.
    let result = match System::new(drv.system.as_str()) {
        Ok(system) => {
            return EvalJob {
                attr: target.attr,
                name: drv.name,
                system: Some(system),
                result: Ok(JobDrv {
                    drv_path: drv.drv_path,
                    outputs: drv.outputs,
                    deps,
                    required_features,
                    constituents: None,
                    meta: *drv.meta,
                }),
            };
        }
        Err(_) => Err(format!(
            "derivation {} has an invalid system `{}`",
            drv.drv_path, drv.system
        )),
    };
    EvalJob {
        attr: target.attr,
        name: drv.name,
        system: target.system,
        result,
    }
}

fn parse_ok_jobs(finished: &Finished, expected: usize) -> Result<Vec<RawJob>> {
    parse_jobs(&finished.stdout, expected).map_err(|reason| Error::Output {
        command: finished.command.clone(),
        reason,
    })
}

fn read_derivation(path: &StorePath, file: &Path) -> Result<crate::parse::aterm::Derivation> {
    let text = std::fs::read(file).map_err(|source| Error::DrvRead {
        path: path.to_string(),
        source,
    })?;
    parse_derivation(&text).map_err(|source| Error::DrvParse {
        path: path.to_string(),
        source,
    })
}

/// The arguments of every evaluation. `accept-flake-config` is forced off: a flake's `nixConfig`
/// (substituters, post-build hooks, …) comes from the code under test, which for a pull request
/// is anyone's, so it must never change how Nix runs, whatever nix.conf says.
fn eval_args(expr: &str) -> Vec<OsString> {
    let mut args = os_args([
        "eval",
        "--json",
        "--option",
        "accept-flake-config",
        "false",
        "--option",
        "eval-cache",
        "false",
        "--option",
        "pure-eval",
        "true",
        "--expr",
    ]);
    args.push(expr.into());
    args
}

/// Returns the Nix expression that parses `value` as JSON.
///
/// The JSON goes into an indented string `''…''`, whose only special sequences are `''` and
/// `${`. Escaping `'` and `$` as JSON `\u` escapes (they can only occur inside JSON strings)
/// leaves neither in the text, so no Nix escaping is needed at all.
fn from_json_expr(value: &serde_json::Value) -> String {
    let json = value
        .to_string()
        .replace('\'', "\\u0027")
        .replace('$', "\\u0024");
    format!("builtins.fromJSON ''{json}''")
}

fn prelude(args: &serde_json::Value) -> String {
    format!(
        "let args = {}; flake = builtins.getFlake args.flake; in",
        from_json_expr(args)
    )
}

fn names_expr(base: &serde_json::Value) -> String {
    format!("{} ({NAMES_NIX}) args flake", prelude(base))
}

fn jobs_expr(base: &serde_json::Value, catch: bool, indices: &[usize]) -> String {
    let mut args = base.clone();
    if let Some(object) = args.as_object_mut() {
        object.insert("catch".to_owned(), json!(catch));
        object.insert("ranges".to_owned(), json!(ranges(indices)));
    }
    format!(
        "{} ({JOBS_NIX}) args flake (({NAMES_NIX}) args flake)",
        prelude(&args)
    )
}

/// Compresses sorted indices into `[from, to)` ranges.
fn ranges(indices: &[usize]) -> Vec<[usize; 2]> {
    let mut out: Vec<[usize; 2]> = Vec::new();
    for &i in indices {
        match out.last_mut() {
            Some(last) if last[1] == i => last[1] = i + 1,
            _ => out.push([i, i + 1]),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evaluations_should_refuse_flake_config_from_the_code_under_test() {
        let args: Vec<String> = eval_args("1")
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let at = args
            .iter()
            .position(|a| a == "accept-flake-config")
            .unwrap();
        assert_eq!(
            (args[at - 1].as_str(), args[at + 1].as_str()),
            ("--option", "false")
        );
        assert!(!args.iter().any(|a| a == "--accept-flake-config"));
    }

    #[test]
    fn from_json_expr_should_leave_no_nix_string_syntax_in_the_text() {
        let value = json!({"flake": "git+file:///it's/${x}/''y''?ref=a&rev=b", "q": "\"\\"});
        let expr = from_json_expr(&value);
        let inner = expr
            .strip_prefix("builtins.fromJSON ''")
            .and_then(|s| s.strip_suffix("''"))
            .unwrap();
        assert!(!inner.contains('\'') && !inner.contains('$'), "{inner}");
        let back: serde_json::Value = serde_json::from_str(inner).unwrap();
        assert_eq!(back, value);
    }

    #[test]
    fn ranges_should_compress_consecutive_indices() {
        assert_eq!(ranges(&[]), Vec::<[usize; 2]>::new());
        assert_eq!(ranges(&[3]), [[3, 4]]);
        assert_eq!(ranges(&[0, 1, 2, 5, 6, 9]), [[0, 3], [5, 7], [9, 10]]);
    }

    fn names(path: &[&str]) -> AttrNames {
        path.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn target_should_take_name_and_system_from_the_path() {
        let t = Target::new(0, &names(&["packages", "x86_64-linux", "hello"])).unwrap();
        assert_eq!(t.attr.as_str(), "packages.x86_64-linux.hello");
        assert_eq!(
            (t.name.as_str(), t.system.as_ref().map(System::as_str)),
            ("hello", Some("x86_64-linux"))
        );
        let t = Target::new(
            1,
            &names(&[
                "nixosConfigurations",
                "demo",
                "config",
                "system",
                "build",
                "toplevel",
            ]),
        )
        .unwrap();
        assert_eq!(
            t.attr.as_str(),
            "nixosConfigurations.demo.config.system.build.toplevel"
        );
        assert_eq!((t.name.as_str(), t.system), ("demo", None));
    }

    #[test]
    fn target_should_refuse_names_that_make_ambiguous_paths() {
        assert!(Target::new(0, &names(&["packages", "x86_64-linux", "a.b"])).is_none());
        assert!(Target::new(0, &names(&["packages", "x86_64-linux", ""])).is_none());
        assert!(Target::new(0, &names(&["packages", "x86_64-linux", "a/b"])).is_none());
    }
}
