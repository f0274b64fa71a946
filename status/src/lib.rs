//! Observed state of reconix in SQLite: migrations, typed rows, queries and the `views` read
//! models served by the JSON API and the CLI.
//!
//! All SQL of the project lives in this crate. The API is synchronous on [`StatusDb`]; async
//! callers go through [`Status::call`], which runs the closure on a blocking thread. Rows are
//! parsed into validated newtypes at the boundary, so a malformed row is an [`Error::Corrupt`]
//! naming its table and column rather than a panic further up.

mod agents;
mod builds;
pub use builds::Requeue;
mod caches;
mod db;
mod deliveries;
mod drift;
mod error;
mod evaluations;
mod forge_health;
mod gc_roots;
mod hooks;
mod jobs;
mod loops;
mod metrics;
mod mutations;
pub mod pages;
mod posted_statuses;
mod pull_requests;
mod repos;
mod retention;
mod row;
mod streaming;
mod types;
pub mod views;

#[cfg(test)]
mod testing;

pub use agents::{AgentCredentials, AgentHello, AgentRow};
pub use agents::{BuilderKind, RunningBuild, RunningJob};
pub use caches::{CacheBacklog, CachePushSummary};
pub use db::{Checkpointer, OpenMode, SCHEMA_VERSION, Status, StatusDb};
pub use deliveries::{DeliveryEffect, DeliveryOutcome, NewDelivery};
pub use drift::{DriftId, DriftRow, NewDrift};
pub use error::{Error, Result};
pub use forge_health::{ForgeHealth, ForgeHealthState};
pub use hooks::HookRow;
pub use metrics::{
    BuildPhase, ForgeCallOutcome, Metrics, OPENMETRICS_CONTENT_TYPE, STORAGE_ALARM, StateCounts,
};
pub use mutations::{CANCELLED_ERROR, Cancelled, Rebuilt, Rerun};
pub use posted_statuses::{PostedState, PostedStatus};
pub use pull_requests::{PullRequestRow, PullRequestUpdate};
pub use retention::RetentionEval;
pub use types::{
    Build, BuildId, BuildProduct, BuildState, BuiltOutputs, Constituent, Evaluation, EvaluationId,
    EvaluationState, FAILED_WITH_OUTPUT, GcRoot, Job, JobId, JobState, LoopHealth, NewConstituent,
    NewJob, NewStreamedJob, ParseStateError, RefHead, Repo, RepoId, SchedDep, SchedJob,
};
