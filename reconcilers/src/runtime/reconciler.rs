//! The [`Reconciler`] trait every loop implements, and [`dry_run`] for `reconix plan`.

use std::fmt::{Debug, Display};
use std::hash::Hash;

use reconix_spec::Timestamp;
use serde::Serialize;

use super::action::{Action, Plan};
use super::policy::error_backoff;
use crate::error::ErrorKind;

/// One level-triggered loop: `observe` reads the world, `plan` (pure) decides, `apply` acts.
///
/// The runtime never tells a reconciler *why* it runs; a reconcile must converge from whatever
/// it observes. Steps must be idempotent and restart-safe: a reconcile can stop between any two
/// steps (failure, shutdown, crash) and the next one plans again from scratch.
pub trait Reconciler: Send + Sync + 'static {
    /// Returns the loop's name: its file name, table name and the `loop` field of its logs.
    const NAME: &'static str;
    /// The desired state (`reconix_spec::Spec` in production).
    type Spec: Send + Sync + 'static;
    /// What `observe` and `apply` need (ports, database handle); opaque to the runtime.
    type Context: Send + Sync + 'static;
    /// One unit of work, e.g. a `RepoKey`.
    type Key: Clone + Eq + Hash + Debug + Display + Send + Sync + 'static;
    /// What `observe` found.
    type Observed: Debug + Send;
    /// One action of a plan; printable by `reconix plan`.
    type Step: Debug + PartialEq + Serialize + Send;
    /// Why observe or apply failed; an enum so `error_policy` can tell transient from permanent.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Lists every key this loop should reconcile now (on start, on resync and on spec reload).
    ///
    /// Include keys that left the spec but still have state to clean up.
    fn keys(
        &self,
        spec: &Self::Spec,
        cx: &Self::Context,
    ) -> impl Future<Output = Result<Vec<Self::Key>, Self::Error>> + Send;

    /// Reads the observed state of `key`.
    fn observe(
        &self,
        key: &Self::Key,
        spec: &Self::Spec,
        cx: &Self::Context,
    ) -> impl Future<Output = Result<Self::Observed, Self::Error>> + Send;

    /// Returns the steps that move `observed` toward `desired`. Pure: no IO, no clock but `now`.
    fn plan(
        key: &Self::Key,
        desired: &Self::Spec,
        observed: &Self::Observed,
        now: Timestamp,
    ) -> Plan<Self::Step>;

    /// Performs one step.
    fn apply(
        &self,
        key: &Self::Key,
        step: Self::Step,
        cx: &Self::Context,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Returns `steps` as they are applied: a loop may merge steps that are far cheaper applied
    /// together (thousands of job state changes in one transaction, with one wake of the loops
    /// that follow them, instead of one each). `plan` and `reconix plan` show them unmerged.
    /// Pure; by default the steps unchanged.
    fn coalesce(steps: Vec<Self::Step>) -> Vec<Self::Step> {
        steps
    }

    /// Returns when to retry after the `failures`-th consecutive failure of a key (pure).
    ///
    /// Defaults to [`error_backoff`] for the error's [`ErrorKind`]: transient failures back
    /// off from 1 s to 5 min, a full or failing disk up to 5 s, a rejected token waits 5 min
    /// (the `forges` loop wakes the loop on resume), a rate limit until it resets, an invalid
    /// spec until it changes.
    fn error_policy(error: &Self::Error, failures: u32) -> Action {
        error_backoff(ErrorKind::of(error), failures)
    }
}

/// The plan (or the observe error) for one key, as returned by [`dry_run`].
pub type DryRunPlan<R> = (
    <R as Reconciler>::Key,
    Result<Plan<<R as Reconciler>::Step>, <R as Reconciler>::Error>,
);

/// Observes and plans every key of a loop without applying anything (`reconix plan`).
///
/// An observe error for one key is reported in its slot and does not stop the others.
///
/// # Errors
/// Returns the error of `keys()` when the keys cannot be listed.
pub async fn dry_run<R: Reconciler>(
    reconciler: &R,
    spec: &R::Spec,
    context: &R::Context,
    now: Timestamp,
) -> Result<Vec<DryRunPlan<R>>, R::Error> {
    let keys = reconciler.keys(spec, context).await?;
    let mut plans = Vec::with_capacity(keys.len());
    for key in keys {
        let plan = reconciler
            .observe(&key, spec, context)
            .await
            .map(|observed| R::plan(&key, spec, &observed, now));
        plans.push((key, plan));
    }
    Ok(plans)
}
