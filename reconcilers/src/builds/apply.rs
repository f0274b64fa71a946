//! Starting a build: record it, then run it as a task that records its result before it
//! leaves the running set (see the module docs of `builds`).

use std::path::PathBuf;
use std::time::Duration;

use reconix_nixcli::{BuildRequest, BuildStatus, Nix};
use reconix_spec::{BuilderName, StorePath, Timestamp};
use reconix_status::{BuildState, JobId, JobState};
use tracing::{info, warn};

use crate::Result;
use crate::context::{Ctx, Ports};

pub(super) async fn dispatch<P: Ports>(
    key: &BuilderName,
    cx: &Ctx<P>,
    drv_path: StorePath,
    jobs: Vec<JobId>,
    gc_root: PathBuf,
    timeout: Duration,
    max_silent: Duration,
) -> Result<()> {
    let Some(cancel) = cx.running.start(&drv_path) else {
        return Ok(());
    };
    let log_file = cx
        .state_dir()
        .join("logs")
        .join(format!("{}.log", drv_path.name()));
    let (drv, builder, log) = (drv_path.clone(), key.clone(), log_file.clone());
    let recorded = cx
        .status
        .call(move |db| {
            let now = Timestamp::now();
            // A drv whose build already succeeded or failed is never built again (applying a
            // step twice must end in the same state); the next plan moves its jobs on.
            if db.build_by_drv(&drv)?.is_some_and(|b| b.state.is_final()) {
                return Ok(false);
            }
            db.upsert_build(&drv, Some(&builder), BuildState::Running, now)?;
            // Known from the start, so the log can be read while the build runs.
            db.record_build_log(&drv, &log, 0, now)?;
            for job in &jobs {
                db.set_job_state(*job, JobState::Building, None, now)?;
            }
            Ok(true)
        })
        .await;
    match recorded {
        Ok(true) => cx.wakers.all_statuses(),
        Ok(false) => {
            cx.running.finish(&drv_path);
            cx.wakers.builds();
            return Ok(());
        }
        Err(err) => {
            cx.running.finish(&drv_path);
            return Err(err.into());
        }
    }
    info!(drv = %drv_path, "build started");
    let request = BuildRequest {
        drv_path: drv_path.clone(),
        gc_root: Some(gc_root),
        timeout: Some(timeout),
        max_silent: Some(max_silent),
        log_file,
    };
    let (nix, status, running, wakers) = (
        cx.ports.nix().clone(),
        cx.status.clone(),
        cx.running.clone(),
        cx.wakers.clone(),
    );
    tokio::spawn(async move {
        let outcome = nix.realise(request, cancel).await;
        let (state, exit_code, error) = match outcome {
            Ok(o) => {
                let state = match o.status {
                    BuildStatus::Succeeded => BuildState::Succeeded,
                    BuildStatus::Failed | BuildStatus::Error => BuildState::Failed,
                    BuildStatus::TimedOut => BuildState::TimedOut,
                    BuildStatus::Cancelled => BuildState::Cancelled,
                };
                (state, o.exit_code, o.message)
            }
            Err(err) => (BuildState::Failed, None, Some(err.to_string())),
        };
        info!(drv = %drv_path, state = state.as_str(), "build ended");
        let drv = drv_path.clone();
        // Record first, then leave the running set (see the module docs).
        let recorded = status
            .call(move |db| {
                db.finish_build(
                    &drv,
                    state,
                    exit_code,
                    error.as_deref(),
                    None,
                    Timestamp::now(),
                )
            })
            .await;
        if let Err(err) = recorded {
            warn!(drv = %drv_path, error = %err, "could not record build result; it will run again");
        }
        running.finish(&drv_path);
        wakers.builds();
        wakers.all_statuses();
        if state == BuildState::Succeeded {
            wakers.gcroots();
        }
    });
    Ok(())
}
