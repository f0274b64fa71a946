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
mod error;
mod evaluations;
mod forges;
mod gc_roots;
mod jobs;
mod loops;
mod metrics;
mod mutations;
pub mod pages;
mod repos;
mod retention;
mod row;
mod types;
pub mod views;

#[cfg(test)]
mod testing;

pub use agents::{AgentCredentials, AgentHello, AgentRow};
pub use agents::{BuilderKind, BuilderState, BuilderView, RunningBuild, RunningJob, builder_views};
pub use caches::{CacheBacklog, CachePushSummary};
pub use db::{Checkpointer, OpenMode, SCHEMA_VERSION, Status, StatusDb};
pub use error::{Error, Result};
pub use forges::{
    DeliveryEffect, DeliveryOutcome, DriftId, DriftRow, ForgeHealth, ForgeHealthState, HookRow,
    NewDelivery, NewDrift, PostedStatus, PullRequestRow, PullRequestUpdate,
};
pub use metrics::{
    ForgeCallOutcome, Metrics, OPENMETRICS_CONTENT_TYPE, STORAGE_ALARM, StateCounts,
};
pub use mutations::{CANCELLED_ERROR, Cancelled, Rebuilt, Rerun};
pub use retention::RetentionEval;
pub use types::{
    Build, BuildId, BuildState, Evaluation, EvaluationId, EvaluationState, GcRoot, Job, JobId,
    JobState, LoopHealth, NewJob, ParseStateError, RefHead, Repo, RepoId, SchedDep, SchedJob,
};
