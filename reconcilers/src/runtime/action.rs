//! What a reconcile asks for next: [`Action`], the [`Plan`] that carries it, and the default
//! error backoff.

use std::fmt;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use serde::Serialize;

/// The first delay of [`default_backoff`].
pub(super) const MIN_BACKOFF: Duration = Duration::from_secs(1);
/// The longest delay [`default_backoff`] returns.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(5 * 60);
/// Failures past this count all get [`MAX_BACKOFF`]; capping keeps the computation O(1) for a
/// key that has been failing for days.
const BACKOFF_STEPS: u32 = 32;

/// Says when the runtime should reconcile a key again.
///
/// Either after a delay ([`Action::requeue`]) or only when something asks for it: a trigger, a
/// periodic resync or a spec reload ([`Action::await_change`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Action {
    requeue_after: Option<Duration>,
}

impl Action {
    /// Returns an action that reconciles the key again after `delay`.
    #[must_use]
    pub const fn requeue(delay: Duration) -> Self {
        Self {
            requeue_after: Some(delay),
        }
    }

    /// Returns an action that leaves the key alone until it is triggered, resynced or the spec
    /// changes.
    #[must_use]
    pub const fn await_change() -> Self {
        Self {
            requeue_after: None,
        }
    }

    /// Returns the requeue delay, or `None` for [`Action::await_change`].
    #[must_use]
    pub const fn requeue_after(&self) -> Option<Duration> {
        self.requeue_after
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.requeue_after {
            Some(d) => write!(f, "requeue after {d:?}"),
            None => f.write_str("await change"),
        }
    }
}

impl Serialize for Action {
    /// Serializes as `{"requeue_after_ms": <u64 or null>}`, readable by `reconix plan --output json`.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let ms = self
            .requeue_after
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut s = serializer.serialize_struct("Action", 1)?;
        s.serialize_field("requeue_after_ms", &ms)?;
        s.end()
    }
}

/// The output of a pure `plan`: the steps that close the gap, in order, and what to do after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan<S> {
    /// Steps to apply in order; the runtime stops at the first one that fails.
    pub steps: Vec<S>,
    /// When to reconcile again once every step succeeded.
    pub then: Action,
}

/// Returns the `n`-th delay (from 1; 0 counts as 1) of a schedule that starts at `min` and
/// doubles up to `max`, without jitter: the one backoff rule of the loops and builds.
#[must_use]
pub fn doubling(n: u32, min: Duration, max: Duration) -> Duration {
    let n = n.clamp(1, BACKOFF_STEPS);
    ExponentialBuilder::new()
        .with_min_delay(min)
        .with_factor(2.0)
        .with_max_delay(max)
        .without_max_times()
        .build()
        .nth(usize::try_from(n - 1).unwrap_or(0))
        .unwrap_or(max)
}

/// Returns the backoff for the `failures`-th consecutive failure of a key.
///
/// The delay starts at 1 s and doubles up to 5 min (1 s, 2 s, 4 s, … 256 s, 300 s, 300 s, …).
/// There is no jitter, so the schedule is deterministic; `failures` of 0 is treated as 1.
#[must_use]
pub fn default_backoff(failures: u32) -> Action {
    Action::requeue(doubling(failures, MIN_BACKOFF, MAX_BACKOFF))
}

/// Returns the backoff for the `failures`-th consecutive failure of a key that met a full or
/// failing disk: 1 s doubling up to 5 s, so that the loop resumes within seconds of space
/// returning (nothing else may wake it meanwhile).
#[must_use]
pub fn storage_backoff(failures: u32) -> Action {
    Action::requeue(doubling(failures, MIN_BACKOFF, Duration::from_secs(5)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_backoff_should_double_from_one_second_up_to_five_minutes() {
        let secs: Vec<u64> = (1..=11)
            .map(|n| default_backoff(n).requeue_after().unwrap().as_secs())
            .collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(default_backoff(0), default_backoff(1));
        assert_eq!(default_backoff(u32::MAX).requeue_after(), Some(MAX_BACKOFF));
    }

    #[test]
    fn storage_backoff_should_stay_within_five_seconds() {
        let secs: Vec<u64> = (0..=6)
            .map(|n| storage_backoff(n).requeue_after().unwrap().as_secs())
            .collect();
        assert_eq!(secs, [1, 1, 2, 4, 5, 5, 5]);
    }

    #[test]
    fn action_should_display_and_serialize_its_delay() {
        let requeue = Action::requeue(Duration::from_secs(5));
        assert_eq!(requeue.to_string(), "requeue after 5s");
        assert_eq!(Action::await_change().to_string(), "await change");
        let plan = Plan {
            steps: vec!["a"],
            then: requeue,
        };
        assert_eq!(
            serde_json::to_value(&plan).unwrap(),
            serde_json::json!({"steps": ["a"], "then": {"requeue_after_ms": 5000}})
        );
        assert_eq!(
            serde_json::to_value(Action::await_change()).unwrap(),
            serde_json::json!({"requeue_after_ms": null})
        );
    }
}
