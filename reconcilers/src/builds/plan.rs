//! The pure plan of the `builds` loop: DAG gating, dedup by drv, capacity, cancellation.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use reconix_spec::{BuilderName, Spec, StorePath, Timestamp};
use reconix_status::{BuildState, JobState};

use crate::gcroots::root_link;
use crate::runtime::{Action, Plan};

use super::{Observed, SchedJob, Step};

fn is_bad(state: JobState) -> bool {
    matches!(
        state,
        JobState::Failed | JobState::DependencyFailed | JobState::Cancelled | JobState::EvalFailed
    )
}

/// Plans the `builds` loop (pure).
pub fn plan(key: &BuilderName, desired: &Spec, observed: &Observed, now: Timestamp) -> Plan<Step> {
    let _ = (key, now);
    let local = &desired.builders.local;
    let mut steps = Vec::new();

    let needed: BTreeSet<&StorePath> = observed.jobs.iter().map(|j| &j.drv_path).collect();
    let cancels: Vec<&StorePath> = observed
        .running
        .iter()
        .filter(|d| !needed.contains(d))
        .collect();
    steps.extend(cancels.iter().map(|d| Step::Cancel {
        drv_path: (*d).clone(),
    }));

    // drv → its waiting jobs, in first-seen (oldest evaluation first) order.
    let mut dispatch: Vec<(&StorePath, Vec<&SchedJob>)> = Vec::new();
    let mut index: HashMap<&StorePath, usize> = HashMap::new();
    for job in &observed.jobs {
        let set = |state: JobState, error: Option<String>| Step::SetJobState {
            job: job.id,
            state,
            error,
        };
        if let Some((_, dep, dep_state)) = job.deps.iter().find(|(_, _, s)| is_bad(*s)) {
            steps.push(set(
                JobState::DependencyFailed,
                Some(format!("dependency {dep} {}", dep_state.as_str())),
            ));
            continue;
        }
        if let Some(system) = &job.system
            && !local.systems.contains(system)
        {
            steps.push(set(
                JobState::Failed,
                Some(format!("no builder for system `{system}`")),
            ));
            continue;
        }
        let running_here = observed.running.contains(&job.drv_path);
        match &job.build {
            Some((BuildState::Succeeded, _)) => steps.push(set(JobState::Succeeded, None)),
            Some((BuildState::Failed | BuildState::TimedOut, error)) => {
                steps.push(set(JobState::Failed, error.clone()));
            }
            _ if running_here && job.state == JobState::Queued => {
                steps.push(set(JobState::Building, None));
            }
            _ if running_here => {}
            // Never built, queued, cancelled earlier, or `running` in a previous process.
            _ if job.deps.iter().all(|(_, _, s)| *s == JobState::Succeeded) => {
                let i = *index.entry(&job.drv_path).or_insert_with(|| {
                    dispatch.push((&job.drv_path, Vec::new()));
                    dispatch.len() - 1
                });
                dispatch[i].1.push(job);
            }
            _ => {}
        }
    }

    let busy = observed.running.len() - cancels.len();
    let free = usize::try_from(local.max_jobs)
        .unwrap_or(usize::MAX)
        .saturating_sub(busy);
    for (drv, jobs) in dispatch.into_iter().take(free) {
        let first = jobs[0];
        let (timeout, max_silent) = desired.repo(&first.repo).map_or(
            (Duration::from_secs(3 * 3600), Duration::from_secs(3600)),
            |(_, r)| (r.timeout.to_std(), r.max_silent.to_std()),
        );
        steps.push(Step::Dispatch {
            drv_path: drv.clone(),
            jobs: jobs.iter().map(|j| j.id).collect(),
            gc_root: root_link(
                &desired.state_dir,
                &first.repo,
                first.evaluation,
                &first.attr,
                "out",
            ),
            timeout,
            max_silent,
        });
    }

    steps.extend(
        observed
            .finishable
            .iter()
            .map(|&evaluation| Step::FinishEvaluation { evaluation }),
    );

    // A job that changed state can unblock its dependents or finish its evaluation: look again
    // right away. Otherwise wait for a build to end or an evaluation to arrive.
    let then = if steps.iter().any(|s| matches!(s, Step::SetJobState { .. })) {
        Action::requeue(Duration::ZERO)
    } else {
        Action::requeue(Duration::from_secs(60))
    };
    Plan { steps, then }
}
