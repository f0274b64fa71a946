//! The generic reconcile-loop runtime: a small clone of kube-runtime's `Controller`.
//!
//! - [`Reconciler`]: what a loop implements (`keys`, `observe`, pure `plan`, `apply`,
//!   `error_policy`); [`error_backoff`] is the default error policy, by [`crate::ErrorKind`].
//! - [`Controller`]: runs one reconciler with its guarantees (one reconcile per key at a time,
//!   dedupe with earliest-wins, exactly one follow-up for triggers during a run, bounded
//!   concurrency, periodic resync, re-run on spec change, graceful shutdown). [`Handle`]
//!   triggers keys from outside (webhooks, other loops).
//! - [`SpecReloader`]: publishes a new spec on file change or a reload trigger (SIGHUP),
//!   keeping the old one when the new one is invalid.
//! - [`dry_run`]: observe and plan every key without applying (`reconix plan`).
//! - [`Tasks`]: the tasks spawned outside the controllers, which shutdown waits for.

mod action;
mod clock;
mod controller;
mod policy;
mod reconciler;
mod reload;
mod scheduler;
#[cfg(unix)]
mod signals;
mod tasks;
#[cfg(test)]
mod tests;

pub use action::{Action, Plan, default_backoff, doubling, storage_backoff};
pub use clock::Clock;
pub(crate) use controller::error_chain;
pub use controller::{Controller, Handle, RunReport};
pub use policy::error_backoff;
pub use reconciler::{DryRunPlan, Reconciler, dry_run};
pub use reload::SpecReloader;
#[cfg(unix)]
pub use signals::{shutdown_on_signals, sighup_stream};
pub use tasks::Tasks;
