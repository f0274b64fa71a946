//! Nix's answers as rows of the status database: jobs (final or streamed), and the message of
//! an evaluation that found nothing to build.

use reconix_nixcli::{Constituent, EvalJob};
use reconix_spec::AttrPath;
use reconix_status::{JobState, NewConstituent, NewJob};

/// Returns why an evaluation that found nothing to build failed, when it did: no job at all,
/// or only `skipped` ones. The message names where reconix looked, the flake's top-level
/// outputs and the `attributes` to set, so that a flake written for Hydra (or for another
/// system) does not look green with 0 jobs.
pub fn no_jobs_message(
    repo: &reconix_spec::Repo,
    jobs: &[NewJob],
    flake_outputs: &[String],
) -> Option<String> {
    if jobs.iter().any(|j| j.state != JobState::Skipped) {
        return None;
    }
    let looked: Vec<&str> = repo.attributes.iter().map(AttrPath::as_str).collect();
    let systems: Vec<&str> = repo.systems.iter().map(|s| s.as_str()).collect();
    let mut message = format!(
        "no jobs under {} for {}",
        looked.join(", "),
        systems.join(", ")
    );
    if !jobs.is_empty() {
        message.push_str(&format!(
            " ({} skipped: built for other systems; add them to `systems`)",
            jobs.len()
        ));
    }
    let outputs: Vec<&str> = flake_outputs.iter().map(String::as_str).collect();
    if !outputs.is_empty() {
        message.push_str(&format!("; this flake has: {}", outputs.join(", ")));
    }
    // Outputs that usually hold jobs and that `attributes` does not name yet.
    let suggest: Vec<&str> = [
        "hydraJobs",
        "checks",
        "packages",
        "devShells",
        "nixosConfigurations",
        "herculesCI",
        "legacyPackages",
    ]
    .into_iter()
    .filter(|o| outputs.contains(o) && !looked.contains(o))
    .collect();
    match suggest.as_slice() {
        [] if jobs.is_empty() => {
            message.push_str(" — set `attributes` to the flake output paths that hold the jobs");
        }
        [] => {}
        _ => message.push_str(&format!(" — set `attributes: [{}]`", suggest.join(", "))),
    }
    Some(message)
}

/// Converts Nix's evaluation result into rows for the status database, consuming it (a
/// large evaluation is not held twice).
pub(super) fn new_jobs(jobs: Vec<EvalJob>) -> Vec<NewJob> {
    jobs.into_iter().map(new_job).collect()
}

/// Converts one job of an evaluation (final or streamed) into a row for the status database.
pub(super) fn new_job(j: EvalJob) -> NewJob {
    match j.result {
        Ok(drv) => NewJob {
            attr: j.attr,
            name: j.name,
            system: j.system,
            drv_path: Some(drv.drv_path),
            outputs: drv.outputs,
            deps: drv.deps,
            required_features: drv.required_features,
            state: if drv.skipped.is_some() {
                JobState::Skipped
            } else {
                JobState::Queued
            },
            error: drv.skipped,
            constituents: drv.constituents.map(|list| {
                list.into_iter()
                    .map(|c| match c {
                        Constituent::Job(attr) => NewConstituent::Job(attr),
                        Constituent::Derivation(drv) => NewConstituent::Derivation(drv),
                    })
                    .collect()
            }),
            meta: drv.meta,
        },
        Err(message) => NewJob {
            attr: j.attr,
            name: j.name,
            system: j.system,
            drv_path: None,
            outputs: reconix_spec::Outputs::new(),
            deps: Vec::<AttrPath>::new(),
            required_features: Vec::new(),
            state: JobState::EvalFailed,
            error: Some(message),
            constituents: None,
            meta: reconix_spec::JobMeta::default(),
        },
    }
}
