//! `NixCli::evaluate`: the hybrid evaluation strategy of `nix-lab.md` §3.
//!
//! 1. One cheap `nix eval` of `expr/names.nix` walks the job roots and lists the job paths,
//!    forcing each value only to weak head normal form (no derivation is instantiated). Each
//!    branch is listed under its own `tryEval`, so a `throw` in one part of the tree becomes
//!    that part's path in the list (and its own eval-failed job), never the loss of the rest.
//!    An error `tryEval` cannot catch fails the listing: the roots (per system) are then
//!    listed apart, bisecting, and a root that fails alone is one eval-failed job with its
//!    message. Only when no root can be listed is the flake broken as a whole.
//! 2. The listed attributes are evaluated by `expr/jobs.nix` on the shared evaluator pool
//!    (`crate::stream` drives it, `crate::workers` runs the workers): each under `tryEval` +
//!    `deepSeq`, reported as soon as it is evaluated (and streamed to the caller with its
//!    dependencies so far). A worker that dies costs only the attribute it was on; an attribute
//!    too fat for the memory budget even alone is its own eval-failed job.
//! 3. Each attribute `tryEval` caught is evaluated alone, without `tryEval`, for its message.
//! 4. Jobs of a walked tree for a system outside the request's are marked skipped
//!    ([`skip_reason`]); dependencies come from the `.drv` files ([`crate::deps`]), walking
//!    through skipped jobs as through any other derivation.
//! 5. The constituents of aggregate jobs are resolved against the other jobs and added to
//!    their dependencies (`crate::aggregates`).
//!
//! Every `nix eval` runs pure (the flake reference is locked) with the eval cache off: a cached
//! failure hides the real message and parallel processes contend on its SQLite database.
//! stdout is parsed only when the process exited with status 0 (`nix eval --json` streams, so a
//! failure leaves partial JSON).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::sync::Arc;
use std::time::Instant;

use reconix_spec::names::{AttrPath, StorePath, System};
use reconix_spec::{JobRoot, Recurse, Walk};
use serde_json::json;
use tokio::task::JoinSet;
use tracing::debug;

use crate::aggregates;
use crate::config::Config;
use crate::deps::{job_deps, read_derivation};
use crate::parse::eval::{AttrNames, RawDrv, parse_names};
use crate::port::{EvalEvent, EvalJob, EvalOutcome, EvalRequest, JobDrv, StreamedJob};
use crate::process::{Finished, os_args};
use crate::stream::{Slot, Streamer, Target, run_workers, skip_reason};
use crate::workers::EvalPool;
use crate::{Error, Result};

const NAMES_NIX: &str = include_str!("expr/names.nix");

/// One place `names.nix` lists jobs under: a job root, split by system when the root is per
/// system.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Unit {
    path: Vec<String>,
    walk: Walk,
    /// The system of a per-system root's unit.
    system: Option<System>,
    /// True for a job root (or a per-system root's system level): descended into whatever its
    /// marks. False for the parts an uncatchable error made the listing split off.
    top: bool,
    /// Only these `[from, to)` ranges of the value's sorted attribute names are walked (each as
    /// a part, not a root); `None` walks the value itself.
    ranges: Option<Vec<[usize; 2]>>,
    /// The value's attribute names, known once the unit was split by name.
    children: Vec<String>,
}

impl Unit {
    /// Returns the units of `roots`, per-system roots split by `systems`.
    fn of(roots: &[JobRoot], systems: &[System]) -> Vec<Self> {
        let mut units = Vec::new();
        for root in roots {
            let path = root.path.names();
            let per_system = match root.walk {
                Walk::NixosConfigurations => false,
                Walk::Category { .. } => true,
                Walk::Tree { per_system, .. } => per_system,
            };
            if per_system {
                for system in systems {
                    let mut path = path.clone();
                    path.push(system.as_str().to_owned());
                    units.push(Self {
                        path,
                        walk: root.walk,
                        system: Some(system.clone()),
                        top: true,
                        ranges: None,
                        children: Vec::new(),
                    });
                }
            } else {
                units.push(Self {
                    path: path.clone(),
                    walk: root.walk,
                    system: None,
                    top: true,
                    ranges: None,
                    children: Vec::new(),
                });
            }
        }
        units
    }

    /// Returns the unit as `names.nix` reads it.
    fn to_json(&self) -> serde_json::Value {
        let (kind, recurse) = match self.walk {
            Walk::NixosConfigurations => ("nixos", Recurse::Marked),
            Walk::Category { recurse } => ("category", recurse),
            Walk::Tree { recurse, .. } => ("tree", recurse),
        };
        json!({
            "path": self.path,
            "kind": kind,
            "recurse": recurse.as_str(),
            "top": self.top,
            "ranges": self.ranges,
        })
    }

    /// Returns the two halves of a unit whose ranges select more than one name.
    fn halves(&self) -> Option<(Self, Self)> {
        let indices: Vec<usize> = self
            .ranges
            .as_ref()?
            .iter()
            .flat_map(|[from, to]| *from..*to)
            .collect();
        if indices.len() < 2 {
            return None;
        }
        let (left, right) = indices.split_at(indices.len() / 2);
        let half = |part: &[usize]| Self {
            ranges: Some(ranges(part)),
            ..self.clone()
        };
        Some((half(left), half(right)))
    }

    /// Returns the unit of the one name a unit's ranges select: that attribute, walked as a
    /// part of the tree.
    fn only_child(&self) -> Option<Self> {
        let [[from, _]] = self.ranges.as_deref()? else {
            return None;
        };
        let mut path = self.path.clone();
        path.push(self.children.get(*from)?.clone());
        Some(Self {
            path,
            top: false,
            ranges: None,
            children: Vec::new(),
            ..self.clone()
        })
    }

    fn is_tree(&self) -> bool {
        matches!(self.walk, Walk::Tree { .. })
    }
}

impl Target {
    /// Returns the target of the listed `path`, found under the first of `units` whose path
    /// is a prefix of it; `None` for an empty path (which `names.nix` never lists).
    fn new(index: usize, path: &AttrNames, units: &[Unit]) -> Option<Self> {
        let attr = AttrPath::from_names(path).ok()?;
        let unit = units.iter().find(|u| path.starts_with(&u.path));
        let name = match (unit.map(|u| u.walk), path.as_slice()) {
            (Some(Walk::NixosConfigurations), [.., name, _, _, _, _]) => name.clone(),
            _ => path.last()?.clone(),
        };
        Some(Self {
            index,
            attr,
            name,
            system: unit.and_then(|u| u.system.clone()),
            walked: unit.is_some_and(Unit::is_tree),
        })
    }
}

/// Runs the whole evaluation (see the module docs).
pub(crate) async fn evaluate(
    cli: &Arc<Config>,
    pool: &Arc<EvalPool>,
    req: EvalRequest,
    events: tokio::sync::mpsc::UnboundedSender<EvalEvent>,
) -> Result<EvalOutcome> {
    let started = Instant::now();
    let mut calls = 0_u32;
    let ifd = req.allow_import_from_derivation;
    let mut units = Unit::of(&req.roots, &req.systems);
    let (listed, unit_errors, list_calls) = list(cli, &req.flake_ref, ifd, &mut units).await?;
    calls += list_calls;
    let all_units = units;
    let (units, names) = match listed {
        Listed::Nothing { message } => return Err(Error::FlakeEval { message }),
        Listed::All(names) => ((0..all_units.len()).collect::<Vec<_>>(), names),
        Listed::Parts(ok) => {
            // Parts were split off: list the parts that list fine once more together, so that
            // jobs.nix, which lists the same units again, sees the same list.
            calls += 1;
            let args = units_args(&req.flake_ref, &all_units, &ok);
            let finished = cli
                .run(&cli.nix, &eval_args(&names_expr(&args), ifd))
                .await?;
            if !finished.success() {
                return Err(Error::FlakeEval {
                    message: finished.message(),
                });
            }
            let names = parse_names(&finished.stdout).map_err(|e| Error::Output {
                command: finished.command.clone(),
                reason: e.to_string(),
            })?;
            (ok, names)
        }
    };
    let base = units_args(&req.flake_ref, &all_units, &units);
    let mut seen: HashSet<&AttrNames> = HashSet::new();
    // Two roots may list the same path (`hydraJobs` and `hydraJobs.tests`): it is one job.
    let targets: Vec<Target> = names
        .iter()
        .enumerate()
        .filter(|(_, path)| seen.insert(path))
        .filter_map(|(index, path)| Target::new(index, path, &all_units))
        .collect();
    let failed_units: Vec<EvalJob> = unit_errors
        .into_iter()
        .filter(|(i, _)| !seen.contains(&all_units[*i].path))
        .filter_map(|(i, message)| {
            let unit = &all_units[i];
            Some(EvalJob {
                attr: AttrPath::from_names(&unit.path).ok()?,
                name: unit.path.last()?.clone(),
                system: unit.system.clone(),
                result: Err(message),
            })
        })
        .collect();

    // 2. The attributes, on the shared worker pool, reported as they are evaluated.
    // Parts that failed to list are jobs already (eval-failed): counted and reported now.
    let _ = events.send(EvalEvent::Listed {
        attributes: targets.len() + failed_units.len(),
    });
    if !failed_units.is_empty() {
        let _ = events.send(EvalEvent::Evaluated(
            failed_units
                .iter()
                .map(|job| StreamedJob {
                    job: job.clone(),
                    buildable: false,
                })
                .collect(),
        ));
    }
    let options = nix_options(req.allow_import_from_derivation);
    let mut streamer = Streamer::new(events, req.systems.clone());
    let (slots, worker_calls) = run_workers(
        cli,
        pool,
        &req.flake_ref,
        &options,
        &names,
        &targets,
        &mut streamer,
    )
    .await?;
    calls += worker_calls;

    // 4. Dependencies between the jobs.
    // The derivations the streamer read are not read again; it is done.
    let mut read = streamer.into_read();
    let reader = cli.clone();
    let systems = req.systems.clone();
    // The walk borrows the targets and results, so they go to the blocking thread and come
    // back (not copied into one more list of 50,000 jobs).
    let (targets, mut slots, deps, features) = tokio::task::spawn_blocking(move || {
        let (deps, features) = {
            // Skipped jobs are no nodes: a job depending on one waits for the jobs behind it,
            // and Nix builds the skipped derivation as part of that job's closure.
            let nodes: Vec<(&AttrPath, &StorePath)> = targets
                .iter()
                .filter_map(|t| match slots.get(&t.index) {
                    Some(Slot::Drv(d)) => Some((t, d)),
                    _ => None,
                })
                .filter(|(t, d)| {
                    System::new(d.system.as_str())
                        .ok()
                        .and_then(|system| skip_reason(t.walked, &system, &systems))
                        .is_none()
                })
                .map(|(t, d)| (&t.attr, &d.drv_path))
                .collect();
            let job_drvs: HashSet<&StorePath> = nodes.iter().map(|(_, d)| *d).collect();
            // The required features of the job derivations (usually none), noted as the walk
            // reads them (it reads each derivation once, the jobs' own included).
            let mut features: HashMap<StorePath, Vec<String>> = HashMap::new();
            let deps = job_deps(&nodes, |p: &StorePath| {
                let (inputs, required) = match read.remove(p).and_then(|n| n.read) {
                    Some(r) => (r.inputs, r.required_features),
                    None => {
                        let drv = read_derivation(p, &reader.physical(p))?;
                        (drv.input_drvs.into_keys().collect(), drv.required_features)
                    }
                };
                if !required.is_empty() && job_drvs.contains(p) {
                    features.insert(p.clone(), required);
                }
                Ok::<_, Error>(inputs)
            })?;
            (deps, features)
        };
        Ok::<_, Error>((targets, slots, deps, features))
    })
    .await
    .map_err(Error::Task)??;
    let mut deps = deps.into_iter();

    // 5. The constituents of aggregate jobs, resolved against the other jobs.
    let mut raw_constituents = Vec::with_capacity(targets.len());
    let jobs = targets
        .into_iter()
        .map(|target| {
            let result = match slots.remove(&target.index) {
                Some(Slot::Drv(drv)) => Ok(drv),
                Some(Slot::Error(message)) => Err(message),
                Some(Slot::Caught) | None => Err("evaluation failed".to_owned()),
            };
            (target, result)
        })
        .map(|(target, result)| match result {
            Ok(mut drv) => {
                raw_constituents.push(drv.constituents.take());
                let skipped = System::new(drv.system.as_str())
                    .ok()
                    .and_then(|system| skip_reason(target.walked, &system, &req.systems));
                let deps = if skipped.is_some() {
                    Vec::new()
                } else {
                    deps.next().unwrap_or_default()
                };
                // Jobs sharing one derivation (aliases) all get its features.
                let features = features.get(&drv.drv_path).cloned().unwrap_or_default();
                job_from_drv(target, drv, deps, features, skipped)
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
        .collect::<Vec<EvalJob>>();
    let mut jobs = jobs;
    jobs.extend(failed_units);
    // Only a flake with no job at all needs its outputs named (for the hint of what to set).
    let mut flake_outputs = Vec::new();
    if jobs.is_empty() {
        calls += 1;
        let finished = cli
            .run(&cli.nix, &eval_args(&outputs_expr(&base), ifd))
            .await?;
        if finished.success() {
            flake_outputs = serde_json::from_str(&finished.stdout).map_err(|e| Error::Output {
                command: finished.command.clone(),
                reason: e.to_string(),
            })?;
        }
    }
    Ok(EvalOutcome {
        jobs: aggregates::resolve(jobs, &raw_constituents),
        duration: started.elapsed(),
        nix_calls: calls,
        flake_outputs,
    })
}

/// The arguments of `names.nix` and `jobs.nix` for the units `chosen` of `units`.
fn units_args(flake_ref: &str, units: &[Unit], chosen: &[usize]) -> serde_json::Value {
    let units: Vec<serde_json::Value> = chosen.iter().map(|&i| units[i].to_json()).collect();
    json!({ "flake": flake_ref, "units": units })
}

/// What listing the job roots gave.
#[derive(Debug)]
enum Listed {
    /// Every unit listed at once: the list.
    All(Vec<AttrNames>),
    /// Parts failed and were split off: the units (indices, in order) that list fine.
    Parts(Vec<usize>),
    /// Nothing could be listed: the flake is broken as a whole.
    Nothing { message: String },
}

/// One listing process: a chunk of units, or the attribute names of one unit whose listing
/// failed alone (with that failure's message).
#[derive(Debug)]
enum ListKey {
    Units(Vec<usize>),
    Children(usize, String),
}

/// Lists the job paths of `units` (see the module docs, step 1), adding to `units` the parts it
/// splits off. Returns the listing, the units that failed alone with their messages, and the
/// number of processes run.
async fn list(
    cli: &Arc<Config>,
    flake_ref: &str,
    ifd: bool,
    units: &mut Vec<Unit>,
) -> Result<(Listed, BTreeMap<usize, String>, u32)> {
    let mut errors: BTreeMap<usize, String> = BTreeMap::new();
    let mut ok: Vec<usize> = Vec::new();
    let mut first: Option<Vec<AttrNames>> = None;
    let all: Vec<usize> = (0..units.len()).collect();
    if all.is_empty() {
        return Ok((Listed::All(Vec::new()), errors, 0));
    }
    let chunk = |units: &[Unit], chunk: Vec<usize>| {
        let args = eval_args(&names_expr(&units_args(flake_ref, units, &chunk)), ifd);
        (ListKey::Units(chunk), args)
    };
    let queue = VecDeque::from([chunk(units, all)]);
    let calls = run_queue(cli, queue, |key, finished, queue| {
        match key {
            ListKey::Units(indices) if finished.success() => {
                if indices.len() == units.len() && ok.is_empty() && errors.is_empty() {
                    first = Some(parse_names(&finished.stdout).map_err(|e| Error::Output {
                        command: finished.command.clone(),
                        reason: e.to_string(),
                    })?);
                }
                ok.extend(indices);
            }
            ListKey::Units(indices) => {
                if let [i] = indices[..] {
                    let unit = units[i].clone();
                    if let Some((left, right)) = unit.halves() {
                        units.push(left);
                        units.push(right);
                        let n = units.len();
                        queue.push_back(chunk(units, vec![n - 2]));
                        queue.push_back(chunk(units, vec![n - 1]));
                    } else if let Some(child) = unit.only_child() {
                        units.push(child);
                        queue.push_back(chunk(units, vec![units.len() - 1]));
                    } else {
                        let args =
                            eval_args(&children_expr(&units_args(flake_ref, units, &[i])), ifd);
                        queue.push_back((ListKey::Children(i, finished.message()), args));
                    }
                } else {
                    debug!(
                        units = indices.len(),
                        "listing failed; listing its parts apart"
                    );
                    let (left, right) = indices.split_at(indices.len() / 2);
                    queue.push_back(chunk(units, left.to_vec()));
                    queue.push_back(chunk(units, right.to_vec()));
                }
            }
            ListKey::Children(i, message) => {
                let children: Vec<String> = if finished.success() {
                    serde_json::from_str(&finished.stdout).unwrap_or_default()
                } else {
                    Vec::new()
                };
                if children.is_empty() {
                    // Not a set to descend into: the value itself is what fails.
                    errors.insert(i, message);
                } else {
                    let mut split = units[i].clone();
                    split.ranges = Some(vec![[0, children.len()]]);
                    split.children = children;
                    units.push(split);
                    queue.push_back(chunk(units, vec![units.len() - 1]));
                }
            }
        }
        Ok(())
    })
    .await?;
    let listed = match first {
        Some(names) => Listed::All(names),
        None if ok.is_empty() => Listed::Nothing {
            message: errors
                .values()
                .next()
                .cloned()
                .unwrap_or_else(|| "no job root could be listed".to_owned()),
        },
        None => {
            // In tree order, whatever order the processes finished in.
            ok.sort_by(|a, b| units[*a].path.cmp(&units[*b].path).then(a.cmp(b)));
            Listed::Parts(ok)
        }
    };
    Ok((listed, errors, calls))
}

/// Returns the expression listing the attribute names of the (one) unit in `base`, failing
/// when its value is not a set.
fn children_expr(base: &serde_json::Value) -> String {
    format!(
        "{} let unit = builtins.head args.units; v = builtins.foldl' (v: n: v.${{n}}) flake unit.path; in builtins.attrNames v",
        prelude(base)
    )
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

fn job_from_drv(
    target: Target,
    drv: RawDrv,
    deps: Vec<AttrPath>,
    required_features: Vec<String>,
    skipped: Option<String>,
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
                    meta: drv.meta.map(|m| *m).unwrap_or_default(),
                    skipped,
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

/// Returns the Nix options of the evaluator workers besides the common ones: whether import
/// from derivation is allowed (`evaluation.allow-import-from-derivation`).
fn nix_options(allow_import_from_derivation: bool) -> Vec<(&'static str, &'static str)> {
    vec![(
        "allow-import-from-derivation",
        if allow_import_from_derivation {
            "true"
        } else {
            "false"
        },
    )]
}

/// The arguments of every evaluation besides the workers' (`crate::workers` passes the same
/// options). `accept-flake-config` is forced off: a flake's `nixConfig` (substituters,
/// post-build hooks, …) comes from the code under test, which for a pull request is anyone's,
/// so it must never change how Nix runs, whatever nix.conf says. `ifd` allows import from
/// derivation.
fn eval_args(expr: &str, ifd: bool) -> Vec<OsString> {
    let mut args = os_args(["eval", "--json"]);
    for (name, value) in crate::workers::COMMON_OPTIONS
        .iter()
        .chain(&nix_options(ifd))
    {
        args.extend(os_args(["--option", name, value]));
    }
    args.push("--expr".into());
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

/// Returns the expression listing the flake's top-level outputs.
fn outputs_expr(base: &serde_json::Value) -> String {
    format!(
        "{} builtins.attrNames (flake.outputs or {{ }})",
        prelude(base)
    )
}

fn names_expr(base: &serde_json::Value) -> String {
    format!("{} ({NAMES_NIX}) args flake", prelude(base))
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
        let args: Vec<String> = eval_args("1", false)
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

    fn units(attributes: &[&str], systems: &[&str]) -> Vec<Unit> {
        let repo = reconix_spec::Repo {
            attributes: attributes
                .iter()
                .map(|a| AttrPath::new(*a).unwrap())
                .collect(),
            ..reconix_spec::Repo::default()
        };
        let systems: Vec<System> = systems.iter().map(|s| System::new(*s).unwrap()).collect();
        Unit::of(&repo.job_roots(), &systems)
    }

    #[test]
    fn units_should_split_per_system_roots_by_system() {
        let u = units(
            &[
                "packages",
                "nixosConfigurations",
                "hydraJobs",
                "legacyPackages",
            ],
            &["x86_64-linux", "aarch64-linux"],
        );
        let paths: Vec<String> = u.iter().map(|u| u.path.join(".")).collect();
        assert_eq!(
            paths,
            [
                "packages.x86_64-linux",
                "packages.aarch64-linux",
                "nixosConfigurations",
                "hydraJobs",
                "legacyPackages.x86_64-linux",
                "legacyPackages.aarch64-linux",
            ]
        );
        assert_eq!(
            u.iter()
                .map(|u| u.to_json()["kind"].clone())
                .collect::<Vec<_>>(),
            ["category", "category", "nixos", "tree", "tree", "tree"]
        );
        assert_eq!(u[3].to_json()["recurse"], "all");
        assert_eq!(u[4].to_json()["recurse"], "marked");
    }

    #[test]
    fn target_should_take_name_and_system_from_the_path() {
        let u = units(
            &["packages", "nixosConfigurations", "hydraJobs"],
            &["x86_64-linux"],
        );
        let t = Target::new(0, &names(&["packages", "x86_64-linux", "hello"]), &u).unwrap();
        assert_eq!(t.attr.as_str(), "packages.x86_64-linux.hello");
        assert_eq!(
            (
                t.name.as_str(),
                t.system.as_ref().map(System::as_str),
                t.walked
            ),
            ("hello", Some("x86_64-linux"), false)
        );
        let path = [
            "nixosConfigurations",
            "demo",
            "config",
            "system",
            "build",
            "toplevel",
        ];
        let t = Target::new(1, &names(&path), &u).unwrap();
        assert_eq!(
            t.attr.as_str(),
            "nixosConfigurations.demo.config.system.build.toplevel"
        );
        assert_eq!((t.name.as_str(), t.system, t.walked), ("demo", None, false));
        let t = Target::new(2, &names(&["hydraJobs", "hello", "aarch64-linux"]), &u).unwrap();
        assert_eq!(
            (t.name.as_str(), t.system, t.walked),
            ("aarch64-linux", None, true)
        );
    }

    #[test]
    fn target_should_quote_names_that_are_not_identifiers() {
        let u = units(&["packages"], &["x86_64-linux"]);
        let t = Target::new(
            0,
            &names(&["packages", "x86_64-linux", "pkgset/nested"]),
            &u,
        )
        .unwrap();
        assert_eq!(t.attr.as_str(), r#"packages.x86_64-linux."pkgset/nested""#);
        assert_eq!(t.name, "pkgset/nested");
        let t = Target::new(0, &names(&["packages", "x86_64-linux", "a.b", ""]), &u).unwrap();
        assert_eq!(t.attr.as_str(), r#"packages.x86_64-linux."a.b"."""#);
    }

    #[test]
    fn skip_reason_should_skip_only_walked_jobs_of_systems_not_asked_for() {
        let x86 = System::new("x86_64-linux").unwrap();
        let arm = System::new("aarch64-linux").unwrap();
        assert_eq!(skip_reason(true, &x86, std::slice::from_ref(&x86)), None);
        assert_eq!(skip_reason(false, &arm, std::slice::from_ref(&x86)), None);
        let reason = skip_reason(true, &arm, std::slice::from_ref(&x86)).unwrap();
        assert!(
            reason.contains("aarch64-linux") && reason.contains("`systems`"),
            "{reason}"
        );
    }
}
