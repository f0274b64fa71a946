//! The pure plan of the `builds` loop: DAG gating, dedup by drv, placement on builders within
//! capacity, cancellation.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use reconix_spec::{BuilderName, Liveness, Offer, Spec, StorePath, System, Timestamp};
use reconix_status::{Build, BuildState, FAILED_WITH_OUTPUT, JobState, SchedDep, SchedJob};

use crate::gcroots::root_link;
use crate::runtime::{Action, Plan};

use super::{Dispatch, Observed, Placement, Step};

/// Returns whether `build` is queued but waiting for room on a full disk at `now`.
fn waiting(build: &Build, now: Timestamp) -> bool {
    build.state == BuildState::Queued && build.retry_at.is_some_and(|at| at > now)
}

/// A builder as placement sees it.
#[derive(Debug)]
struct Slot {
    name: BuilderName,
    offer: Offer,
    /// Whether it may take new builds now.
    ready: bool,
    running: u32,
}

impl Slot {
    fn free(&self) -> bool {
        self.ready && self.running < self.offer.max_jobs
    }

    /// Orders by load (running / max-jobs), then by running builds; the local builder, listed
    /// first, wins remaining ties.
    fn load_cmp(&self, other: &Self) -> Ordering {
        let mine = u64::from(self.running) * u64::from(other.offer.max_jobs.max(1));
        let theirs = u64::from(other.running) * u64::from(self.offer.max_jobs.max(1));
        mine.cmp(&theirs).then(self.running.cmp(&other.running))
    }
}

/// The builders of the spec and the observation: local first, then unrevoked agents by name.
fn slots(desired: &Spec, observed: &Observed, now: Timestamp) -> Vec<Slot> {
    let builders = &desired.builders;
    let mut running: HashMap<&BuilderName, u32> = HashMap::new();
    for builder in observed.running.values() {
        *running.entry(builder).or_default() += 1;
    }
    let local = BuilderName::local();
    let mut slots = vec![Slot {
        running: running.get(&local).copied().unwrap_or(0),
        name: local,
        offer: builders.local_offer(),
        ready: true,
    }];
    let mut agents: Vec<_> = observed.agents.iter().filter(|a| !a.revoked).collect();
    agents.sort_by(|a, b| a.name.cmp(&b.name));
    slots.extend(agents.into_iter().map(|a| Slot {
        name: a.name.clone(),
        offer: builders.agent_offer(&a.name, a.offer.clone()),
        ready: a.connected && builders.liveness(now, a.last_seen).is_alive(),
        running: running.get(&a.name).copied().unwrap_or(0),
    }));
    slots
}

/// Describes a drv's needs for messages: `x86_64-linux` or `x86_64-linux with kvm, …`.
fn needs(system: &System, features: &[String]) -> String {
    if features.is_empty() {
        format!("`{system}`")
    } else {
        format!("`{system}` with {}", features.join(", "))
    }
}

/// Returns the state (and reason) of a job whose drv's build succeeded as far as Nix goes:
/// `failed` when its outputs say the build failed (`nix-support/failed`, kept as Hydra keeps
/// it), else `succeeded`.
pub(super) fn built_job_state(build: &Build) -> (JobState, Option<String>) {
    if build.failed_with_output {
        let reason = build
            .error
            .clone()
            .unwrap_or_else(|| FAILED_WITH_OUTPUT.to_owned());
        (JobState::Failed, Some(reason))
    } else {
        (JobState::Succeeded, None)
    }
}

/// Plans the `builds` loop (pure).
pub fn plan(_key: &Placement, desired: &Spec, observed: &Observed, now: Timestamp) -> Plan<Step> {
    let mut slots = slots(desired, observed, now);
    let enrollment_open = desired.builders.enrollment.is_some();
    let mut steps = Vec::new();

    let needed: BTreeSet<&StorePath> = observed.jobs.iter().map(|j| &j.drv_path).collect();
    let cancels: Vec<(&StorePath, &BuilderName)> = observed
        .running
        .iter()
        .filter(|(d, _)| !needed.contains(d))
        .collect();
    for (drv, builder) in &cancels {
        steps.push(Step::Cancel {
            drv_path: (*drv).clone(),
        });
        // A cancelled build frees its slot now.
        if let Some(slot) = slots.iter_mut().find(|s| &s.name == *builder) {
            slot.running = slot.running.saturating_sub(1);
        }
    }

    // drv → its waiting jobs, in first-seen (oldest evaluation first) order.
    let mut dispatch: Vec<(&StorePath, Vec<&SchedJob>)> = Vec::new();
    let mut index: HashMap<&StorePath, usize> = HashMap::new();
    for job in &observed.jobs {
        let set = |state: JobState, error: Option<String>| Step::SetJobState {
            job: job.id,
            state,
            error,
        };
        if let Some(dep) = job.deps.iter().find(|d| d.blocks()) {
            steps.push(set(
                JobState::DependencyFailed,
                Some(format!("dependency {} {}", dep.attr, dep.state.as_str())),
            ));
            continue;
        }
        if !enrollment_open
            && !slots.iter().any(|s| {
                s.offer.max_jobs > 0 && s.offer.can_build(&job.system, &job.required_features)
            })
        {
            steps.push(set(
                JobState::Failed,
                Some(format!(
                    "no builder for {}",
                    needs(&job.system, &job.required_features)
                )),
            ));
            continue;
        }
        let running_here = observed.running.contains_key(&job.drv_path);
        match &job.build {
            Some(b) if b.state == BuildState::Succeeded => {
                let (state, error) = built_job_state(b);
                steps.push(set(state, error));
            }
            Some(b) if matches!(b.state, BuildState::Failed | BuildState::TimedOut) => {
                steps.push(set(JobState::Failed, b.error.clone()));
            }
            _ if running_here && job.state == JobState::Queued => {
                steps.push(set(JobState::Building, None));
            }
            _ if running_here => {}
            // Requeued after a transient failure or to wait for room: the job waits again.
            Some(b) if b.state == BuildState::Queued && job.state == JobState::Building => {
                steps.push(set(JobState::Queued, b.error.clone()));
            }
            // Waiting for room on a full disk: not before its time.
            Some(b) if waiting(b, now) => {}
            // Never built, queued, cancelled earlier, or `running` in a previous process.
            _ if job.deps.iter().all(SchedDep::is_ready) => {
                let i = *index.entry(&job.drv_path).or_insert_with(|| {
                    dispatch.push((&job.drv_path, Vec::new()));
                    dispatch.len() - 1
                });
                dispatch[i].1.push(job);
            }
            _ => {}
        }
    }

    // Higher `meta.schedulingPriority` first; the sort is stable, so equal priorities keep
    // the oldest evaluation first.
    dispatch.sort_by_key(|(_, jobs)| {
        std::cmp::Reverse(
            jobs.iter()
                .map(|j| j.meta.priority())
                .max()
                .unwrap_or_default(),
        )
    });
    for (drv, jobs) in dispatch {
        if !slots.iter().any(Slot::free) {
            break;
        }
        let first = jobs[0];
        let system = &first.system;
        let capable = |s: &&Slot| {
            s.ready && s.offer.max_jobs > 0 && s.offer.can_build(system, &first.required_features)
        };
        // After a transient failure, another builder is preferred when there is one.
        let avoid = first
            .build
            .as_ref()
            .filter(|b| b.state == BuildState::Queued && b.attempts > 0)
            .and_then(|b| b.builder.as_ref())
            .filter(|prev| slots.iter().filter(capable).any(|s| &s.name != *prev));
        let Some(slot) = slots
            .iter_mut()
            .filter(|s| s.free() && s.offer.can_build(system, &first.required_features))
            .filter(|s| avoid != Some(&s.name))
            .min_by(|a, b| a.load_cmp(b))
        else {
            continue;
        };
        slot.running += 1;
        let (timeout, max_silent) = desired.repo(&first.repo).map_or(
            (Duration::from_secs(3 * 3600), Duration::from_secs(3600)),
            |(_, r)| (r.timeout.to_std(), r.max_silent.to_std()),
        );
        // A job's `meta.timeout`/`meta.maxSilent` replace its repository's (NixOS tests set
        // them); jobs sharing the drv are built once, with the first job's.
        let (timeout, max_silent) = (
            first.meta.timeout_or(timeout),
            first.meta.max_silent_or(max_silent),
        );
        steps.push(Step::Dispatch(Dispatch {
            drv_path: drv.clone(),
            builder: slot.name.clone(),
            jobs: jobs.iter().map(|j| j.id).collect(),
            gc_root: root_link(
                &desired.state_dir,
                &first.repo,
                first.evaluation_id,
                first.attr.as_str(),
                "out",
            ),
            timeout,
            max_silent,
        }));
    }

    steps.extend(
        observed
            .finishable
            .iter()
            .map(|&evaluation| Step::FinishEvaluation { evaluation }),
    );

    // A job that changed state can unblock its dependents or finish its evaluation: look again
    // right away. Otherwise wait for a build to end, an evaluation to arrive or an agent to
    // come or go; an agent whose heartbeat is late stops being used at its deadline.
    let then = if steps.iter().any(|s| matches!(s, Step::SetJobState { .. })) {
        Action::requeue(Duration::ZERO)
    } else {
        let waited = next_retry(observed, now);
        Action::requeue(next_liveness_change(desired, observed, now).min(waited))
    };
    Plan { steps, then }
}

/// How long until the first build waiting for room may be dispatched again (a minute when none
/// waits).
fn next_retry(observed: &Observed, now: Timestamp) -> Duration {
    observed
        .jobs
        .iter()
        .filter_map(|j| j.build.as_ref())
        .filter(|b| waiting(b, now))
        .filter_map(|b| b.retry_at)
        .map(|at| at.since(now) + Duration::from_millis(1))
        .min()
        .unwrap_or(Duration::from_secs(60))
}

/// How long until a connected agent's heartbeat deadline passes (at most a minute).
fn next_liveness_change(desired: &Spec, observed: &Observed, now: Timestamp) -> Duration {
    observed
        .agents
        .iter()
        .filter(|a| a.connected && !a.revoked)
        .filter_map(|a| match desired.builders.liveness(now, a.last_seen) {
            Liveness::Alive { left } => Some(left),
            Liveness::Silent { .. } => None,
        })
        .min()
        .map_or(Duration::from_secs(60), |left| {
            left.min(Duration::from_secs(60)) + Duration::from_millis(1)
        })
}
