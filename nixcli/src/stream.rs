//! Step 2 of an evaluation (see `crate::eval`): the listed attributes evaluated on the shared
//! worker pool ([`crate::workers`]), each result reported as soon as it arrives.
//!
//! [`run_workers`] splits the attributes into chunks (what is pending shared by the workers this
//! evaluation does not use yet, no more than about 5 s of evaluation and than the memory
//! estimates allow (`EvalPool::chunk_cap`), at most [`MAX_CHUNK`]), runs up to `workers` of them at
//! once, and handles how each worker ended: the attribute a worker died on is failed with its
//! message, or re-run alone when the worker was killed for memory (or by anyone else); the rest
//! of its chunk is queued again at the front. An attribute `tryEval` caught is evaluated once
//! more alone without `tryEval`, for its message.
//!
//! [`Streamer`] turns results into [`EvalEvent::Evaluated`] events every [`FLUSH_EVERY`]. A
//! job's `deps` there are the reported jobs its closure reaches first; it is *buildable* early
//! only when every other derivation in its closure is a reported job's or has valid outputs:
//! then building it cannot build, behind its back, the derivation of a job not reported yet
//! (which would blame it for that job's failure and build that job twice). Which of the
//! closure's derivations have valid outputs is asked of Nix once per derivation per evaluation.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use reconix_spec::names::{AttrPath, StorePath, System};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tokio::task::JoinSet;
use tracing::debug;

use crate::config::Config;
use crate::deps::read_derivation;
use crate::parse::eval::{AttrNames, RawDrv, RawJob};
use crate::port::{EvalEvent, EvalJob, JobDrv, StreamedJob};
use crate::process::os_args;
use crate::workers::{Chunk, Ended, EvalPool, WorkerEnd};
use crate::{Error, Result};

/// The most attributes one worker is given at once: small enough that several evaluations
/// share the workers and the last chunks balance, large enough that starting workers costs
/// little.
const MAX_CHUNK: usize = 5000;

/// How often evaluated jobs are reported.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// How many times an attribute may be in progress in a worker that was killed before it is
/// given up on.
const MAX_KILLS: u32 = 3;

/// One job attribute, as listed by `names.nix`.
#[derive(Debug)]
pub(crate) struct Target {
    /// Index in the `names.nix` list (what `jobs.nix` is given).
    pub(crate) index: usize,
    pub(crate) attr: AttrPath,
    /// The attribute's own name (`hello`, or the configuration name for NixOS).
    pub(crate) name: String,
    /// The system of its unit (none for NixOS configurations and walked trees, whose system is
    /// their derivation's).
    pub(crate) system: Option<System>,
    /// True when it was found by walking a tree: its system is its derivation's and it is
    /// skipped when that system was not asked for.
    pub(crate) walked: bool,
}

/// Returns why a job is not built, when it is not: a job of a walked tree whose derivation's
/// `system` is not one of `systems` (Hydra builds such jobs on a machine of that system; the
/// repository did not ask for it). Jobs of the categories carry their system in their path,
/// so they are never skipped here.
pub(crate) fn skip_reason(walked: bool, system: &System, systems: &[System]) -> Option<String> {
    (walked && !systems.contains(system)).then(|| {
        let asked: Vec<&str> = systems.iter().map(System::as_str).collect();
        format!(
            "skipped: its system {system} is not one of this repository's systems ({}); add it to `systems` to build it",
            asked.join(", ")
        )
    })
}

/// What is known about one target while the evaluation proceeds.
#[derive(Debug)]
pub(crate) enum Slot {
    Drv(RawDrv),
    Error(String),
    /// `tryEval` caught an error; the message is still to be fetched.
    Caught,
}

fn slot(raw: RawJob) -> Slot {
    match raw {
        RawJob::Ok(drv) => Slot::Drv(drv),
        RawJob::Error(message) => Slot::Error(message),
        RawJob::Failed => Slot::Caught,
    }
}

/// Evaluates `targets` (indices into `names`) on the pool; returns their slots and the number
/// of worker processes run.
pub(crate) async fn run_workers(
    cli: &Arc<Config>,
    pool: &Arc<EvalPool>,
    flake_ref: &str,
    options: &[(&'static str, &'static str)],
    names: &[AttrNames],
    targets: &[Target],
    streamer: &mut Streamer,
) -> Result<(BTreeMap<usize, Slot>, u32)> {
    let by_index: HashMap<usize, &Target> = targets.iter().map(|t| (t.index, t)).collect();
    let mut pending: VecDeque<usize> = targets.iter().map(|t| t.index).collect();
    let mut suspects: VecDeque<usize> = VecDeque::new();
    let mut caught: VecDeque<usize> = VecDeque::new();
    let mut kills: HashMap<usize, u32> = HashMap::new();
    let mut slots: BTreeMap<usize, Slot> = BTreeMap::new();
    let (tx, mut rx) = unbounded_channel::<(usize, RawJob)>();
    let mut tasks: JoinSet<(Chunk, Result<WorkerEnd>)> = JoinSet::new();
    let mut calls = 0_u32;
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let target = |i: usize| (i, names.get(i).cloned().unwrap_or_default());
    loop {
        while tasks.len() < pool.workers() {
            let chunk = if let Some(i) = suspects.pop_front() {
                Chunk {
                    targets: vec![target(i)],
                    catch: true,
                    alone: true,
                }
            } else if !pending.is_empty() {
                // The rest shared by the workers still free for this evaluation.
                let n = pending
                    .len()
                    .div_ceil(pool.workers() - tasks.len())
                    .min(pool.chunk_cap())
                    .clamp(1, MAX_CHUNK);
                Chunk {
                    targets: pending.drain(..n.min(pending.len())).map(target).collect(),
                    catch: true,
                    alone: false,
                }
            } else if let Some(i) = caught.pop_front() {
                Chunk {
                    targets: vec![target(i)],
                    catch: false,
                    alone: false,
                }
            } else {
                break;
            };
            let (cli, pool, tx) = (cli.clone(), pool.clone(), tx.clone());
            let flake_ref = flake_ref.to_owned();
            let options = options.to_vec();
            calls += 1;
            debug!(
                attributes = chunk.targets.len(),
                alone = chunk.alone,
                "evaluator chunk queued"
            );
            tasks.spawn(async move {
                let started = std::time::Instant::now();
                let end = pool
                    .run(&cli, &flake_ref, &options, chunk.clone(), |i, raw| {
                        let _ = tx.send((i, raw));
                    })
                    .await;
                debug!(
                    attributes = chunk.targets.len(),
                    elapsed_ms = started.elapsed().as_millis(),
                    how = ?end.as_ref().map(|e| &e.how),
                    "evaluator chunk ended"
                );
                (chunk, end)
            });
        }
        if tasks.is_empty() && rx.is_empty() {
            break;
        }
        tokio::select! {
            Some((i, raw)) = rx.recv() => receive(i, raw, &mut caught, &mut slots, streamer),
            Some(joined) = tasks.join_next() => {
                let (chunk, end) = joined.map_err(Error::Task)?;
                // Results the worker sent before it ended are handled first.
                while let Ok((i, raw)) = rx.try_recv() {
                    receive(i, raw, &mut caught, &mut slots, streamer);
                }
                let end = end?;
                let Some((&first, rest)) = end.unreported.split_first() else {
                    continue;
                };
                for &i in rest.iter().rev() {
                    pending.push_front(i);
                }
                let mut fail = |message: String| {
                    streamer.arrived(first);
                    slots.insert(first, Slot::Error(message));
                };
                match end.how {
                    Ended::Done | Ended::Restarted => pending.push_front(first),
                    Ended::Failed(message) => fail(message),
                    Ended::NotReady(message) => return Err(Error::FlakeEval { message }),
                    Ended::OverBudget { alone: true } => fail(format!(
                        "evaluation needs more than {} (evaluation.max-memory {} × evaluation.workers {}, the evaluators' budget, used by this attribute alone)",
                        bytes(pool.budget()),
                        bytes(pool.max_memory()),
                        pool.workers()
                    )),
                    Ended::Killed(status) if chunk.alone => fail(format!(
                        "the evaluator was killed ({status}) while evaluating this attribute alone"
                    )),
                    Ended::OverBudget { alone: false } | Ended::Killed(_) => {
                        let n = kills.entry(first).or_default();
                        *n += 1;
                        if *n > MAX_KILLS {
                            fail(format!("the evaluator was killed {n} times while evaluating this attribute"));
                        } else {
                            debug!(attribute = ?names.get(first), "evaluator killed; evaluating the attribute alone");
                            suspects.push_back(first);
                        }
                    }
                }
            }
            _ = flush.tick() => {
                streamer.flush(cli, &by_index, &slots).await?;
            }
        }
    }
    streamer.flush(cli, &by_index, &slots).await?;
    Ok((slots, calls))
}

/// Takes one result: kept, or, when `tryEval` caught an error, queued to be evaluated again
/// alone without it, for the message (or it succeeds then after all, and is kept).
fn receive(
    i: usize,
    raw: RawJob,
    caught: &mut VecDeque<usize>,
    slots: &mut BTreeMap<usize, Slot>,
    streamer: &mut Streamer,
) {
    match slot(raw) {
        Slot::Caught => caught.push_back(i),
        s => {
            streamer.arrived(i);
            slots.insert(i, s);
        }
    }
}

/// `2147483648` as `2 GiB`, `1536 MiB` as `1.5 GiB`.
fn bytes(n: u64) -> String {
    reconix_spec::ByteSize(n).to_string()
}

/// What the streamer keeps of a derivation it read; handed on to the final dependency walk
/// ([`Streamer::into_read`]), which then reads no derivation twice.
#[derive(Debug)]
pub(crate) struct ReadDrv {
    pub(crate) inputs: Vec<StorePath>,
    /// Its outputs, while it is no reported job's (only those are checked for validity).
    pub(crate) outputs: Vec<StorePath>,
    pub(crate) required_features: Vec<String>,
}

/// What the streamer knows of one derivation: what it read of it, and the reported jobs whose
/// derivation it is (by target index). One map for both, so each path is held once.
#[derive(Debug, Default)]
pub(crate) struct DrvNode {
    pub(crate) read: Option<ReadDrv>,
    jobs: Vec<usize>,
}

/// Reports evaluated jobs while the evaluation runs (see the module docs).
pub(crate) struct Streamer {
    events: UnboundedSender<EvalEvent>,
    /// The systems asked for (jobs of a walked tree for others are skipped).
    systems: Vec<System>,
    /// Arrived, not reported yet.
    arrived: Vec<usize>,
    /// Derivations read so far, and reported jobs' derivations.
    drvs: HashMap<StorePath, DrvNode>,
    /// Output paths known valid.
    valid: HashSet<StorePath>,
    /// Output paths known invalid (not checked again during this evaluation: a job waiting on
    /// one is simply built after the evaluation).
    invalid: HashSet<StorePath>,
}

impl Streamer {
    pub(crate) fn new(events: UnboundedSender<EvalEvent>, systems: Vec<System>) -> Self {
        Self {
            events,
            systems,
            arrived: Vec::new(),
            drvs: HashMap::new(),
            valid: HashSet::new(),
            invalid: HashSet::new(),
        }
    }

    fn arrived(&mut self, index: usize) {
        if !self.events.is_closed() {
            self.arrived.push(index);
        }
    }

    /// Reports the jobs that arrived since the last call.
    async fn flush(
        &mut self,
        cli: &Config,
        targets: &HashMap<usize, &Target>,
        slots: &BTreeMap<usize, Slot>,
    ) -> Result<()> {
        if self.arrived.is_empty() || self.events.is_closed() {
            self.arrived.clear();
            return Ok(());
        }
        let arrived = std::mem::take(&mut self.arrived);
        // Jobs of this batch first become known, so that they may depend on each other.
        let mut batch: Vec<(EvalJob, bool)> = Vec::with_capacity(arrived.len());
        for &i in &arrived {
            let (Some(target), Some(slot)) = (targets.get(&i), slots.get(&i)) else {
                continue;
            };
            let job = match slot {
                Slot::Drv(drv) => {
                    let system = System::new(drv.system.as_str()).ok();
                    let skipped = system
                        .as_ref()
                        .and_then(|s| skip_reason(target.walked, s, &self.systems));
                    if skipped.is_none() {
                        self.job_reported(&drv.drv_path, i);
                    }
                    let aggregate = drv.constituents.is_some();
                    let job = EvalJob {
                        attr: target.attr.clone(),
                        name: drv.name.clone(),
                        system,
                        result: Ok(JobDrv {
                            drv_path: drv.drv_path.clone(),
                            outputs: drv.outputs.clone(),
                            deps: Vec::new(),
                            required_features: Vec::new(),
                            skipped: skipped.clone(),
                            meta: drv.meta.as_deref().cloned().unwrap_or_default(),
                            constituents: None,
                        }),
                    };
                    (job, skipped.is_none() && !aggregate)
                }
                Slot::Error(message) => (
                    EvalJob {
                        attr: target.attr.clone(),
                        name: target.name.clone(),
                        system: target.system.clone(),
                        result: Err(message.clone()),
                    },
                    false,
                ),
                Slot::Caught => continue,
            };
            batch.push(job);
        }
        let mut unknown_of: Vec<Vec<StorePath>> = Vec::with_capacity(batch.len());
        for (job, candidate) in &mut batch {
            let Ok(drv) = job.result.as_mut() else {
                unknown_of.push(Vec::new());
                continue;
            };
            if !*candidate {
                unknown_of.push(Vec::new());
                continue;
            }
            let (deps, unknown) = self.walk(cli, targets, &drv.drv_path, &job.attr)?;
            drv.deps = deps;
            unknown_of.push(unknown);
        }
        // The outputs of the unknown derivations, checked once each.
        let mut outputs: Vec<StorePath> = unknown_of
            .iter()
            .flatten()
            .flat_map(|d| {
                self.drvs
                    .get(d)
                    .and_then(|n| n.read.as_ref())
                    .map(|r| r.outputs.clone())
                    .unwrap_or_default()
            })
            .filter(|o| !self.valid.contains(o) && !self.invalid.contains(o))
            .collect();
        outputs.sort();
        outputs.dedup();
        if !outputs.is_empty() {
            self.check_validity(cli, outputs).await?;
        }
        let streamed: Vec<StreamedJob> = batch
            .into_iter()
            .zip(unknown_of)
            .map(|((job, candidate), unknown)| {
                let buildable = candidate
                    && unknown.iter().all(|d| {
                        self.drvs
                            .get(d)
                            .and_then(|n| n.read.as_ref())
                            .is_some_and(|r| r.outputs.iter().all(|o| self.valid.contains(o)))
                    });
                StreamedJob { job, buildable }
            })
            .collect();
        let _ = self.events.send(EvalEvent::Evaluated(streamed));
        Ok(())
    }

    /// Walks the closure of `drv`, stopping at reported jobs' derivations: returns those jobs
    /// (not `attr` itself) and the other derivations passed.
    fn walk(
        &mut self,
        cli: &Config,
        targets: &HashMap<usize, &Target>,
        drv: &StorePath,
        attr: &AttrPath,
    ) -> Result<(Vec<AttrPath>, Vec<StorePath>)> {
        let mut deps: Vec<AttrPath> = Vec::new();
        let mut unknown: Vec<StorePath> = Vec::new();
        let mut seen: HashSet<StorePath> = HashSet::new();
        let mut stack: Vec<StorePath> = self.inputs(cli, drv)?;
        while let Some(d) = stack.pop() {
            if !seen.insert(d.clone()) {
                continue;
            }
            if let Some(node) = self.drvs.get(&d).filter(|n| !n.jobs.is_empty()) {
                deps.extend(
                    node.jobs
                        .iter()
                        .filter_map(|j| targets.get(j))
                        .map(|t| &t.attr)
                        .filter(|a| *a != attr)
                        .cloned(),
                );
                continue;
            }
            stack.extend(self.inputs(cli, &d)?);
            unknown.push(d);
        }
        deps.sort();
        deps.dedup();
        Ok((deps, unknown))
    }

    /// Notes that the job of target `index` has derivation `drv`.
    fn job_reported(&mut self, drv: &StorePath, index: usize) {
        let node = match self.drvs.get_mut(drv) {
            Some(node) => node,
            None => self.drvs.entry(drv.clone()).or_default(),
        };
        node.jobs.push(index);
        // A job's derivation is never asked about again: the walks stop at it.
        if let Some(read) = &mut node.read {
            read.outputs = Vec::new();
        }
    }

    fn inputs(&mut self, cli: &Config, drv: &StorePath) -> Result<Vec<StorePath>> {
        if let Some(read) = self.drvs.get(drv).and_then(|n| n.read.as_ref()) {
            return Ok(read.inputs.clone());
        }
        let parsed = read_derivation(drv, &cli.physical(drv))?;
        let inputs: Vec<StorePath> = parsed.input_drvs.into_keys().collect();
        let node = match self.drvs.get_mut(drv) {
            Some(node) => node,
            None => self.drvs.entry(drv.clone()).or_default(),
        };
        node.read = Some(ReadDrv {
            inputs: inputs.clone(),
            outputs: if node.jobs.is_empty() {
                parsed.outputs.into_values().flatten().collect()
            } else {
                Vec::new()
            },
            required_features: parsed.required_features,
        });
        Ok(inputs)
    }

    /// Ends the streaming: returns the derivations it knows, with what it read of them.
    pub(crate) fn into_read(self) -> HashMap<StorePath, DrvNode> {
        self.drvs
    }

    async fn check_validity(&mut self, cli: &Config, paths: Vec<StorePath>) -> Result<()> {
        let mut args = os_args(["--check-validity", "--print-invalid"]);
        args.extend(paths.iter().map(|p| p.as_str().into()));
        let finished = cli.run(&cli.nix_store, &args).await?;
        let invalid: HashSet<&str> = finished.stdout.lines().map(str::trim).collect();
        for p in paths {
            if finished.success() && !invalid.contains(p.as_str()) {
                self.valid.insert(p);
            } else {
                self.invalid.insert(p);
            }
        }
        Ok(())
    }
}
