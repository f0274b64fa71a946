//! The error policy: how long a key waits after a failed reconcile, by [`ErrorKind`].
//!
//! Every loop uses it through [`Reconciler::error_policy`](super::Reconciler::error_policy)'s
//! default; a loop that needs another rule overrides that method.

use std::time::Duration;

use crate::error::ErrorKind;

use super::action::{Action, MAX_BACKOFF, MIN_BACKOFF, default_backoff, storage_backoff};

/// The longest wait for a rate limit to reset: a forge's answer beyond it is taken as wrong
/// (GitHub's and GitLab's limits reset within an hour).
const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60 * 60);

/// Returns when to reconcile a key again after its `failures`-th consecutive failure, of
/// `kind` (pure).
///
/// - transient: 1 s doubling up to 5 min ([`default_backoff`]);
/// - storage: 1 s doubling up to 5 s ([`storage_backoff`]), to resume soon after space returns;
/// - unauthorised: 5 min at once, no fast retries: the `forges` loop wakes the loops that call
///   the forge as soon as it accepts the token again;
/// - rate-limited: when the limit resets (at least 1 s, at most an hour);
/// - invalid spec: only on a change (a spec reload re-runs every key, as do triggers and the
///   periodic resync).
#[must_use]
pub fn error_backoff(kind: ErrorKind, failures: u32) -> Action {
    match kind {
        ErrorKind::Transient => default_backoff(failures),
        ErrorKind::Storage => storage_backoff(failures),
        ErrorKind::Unauthorized => Action::requeue(MAX_BACKOFF),
        ErrorKind::RateLimited { retry_after } => {
            Action::requeue(retry_after.clamp(MIN_BACKOFF, MAX_RATE_LIMIT_WAIT))
        }
        ErrorKind::InvalidSpec => Action::await_change(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(action: Action) -> Option<u64> {
        action.requeue_after().map(|d| d.as_secs())
    }

    #[test]
    fn transient_failures_should_back_off_doubling_up_to_five_minutes() {
        let waits: Vec<_> = [1, 2, 3, 10, 100]
            .map(|n| secs(error_backoff(ErrorKind::Transient, n)))
            .into();
        assert_eq!(waits, [Some(1), Some(2), Some(4), Some(300), Some(300)]);
    }

    #[test]
    fn storage_trouble_should_be_retried_within_five_seconds() {
        let waits: Vec<_> = [1, 2, 3, 4, 100]
            .map(|n| secs(error_backoff(ErrorKind::Storage, n)))
            .into();
        assert_eq!(waits, [Some(1), Some(2), Some(4), Some(5), Some(5)]);
    }

    #[test]
    fn a_rejected_token_should_not_be_retried_in_a_storm() {
        for failures in [1, 2, 50] {
            assert_eq!(
                secs(error_backoff(ErrorKind::Unauthorized, failures)),
                Some(300)
            );
        }
    }

    #[test]
    fn a_rate_limit_should_be_waited_out_until_it_resets() {
        let limited = |s| ErrorKind::RateLimited {
            retry_after: Duration::from_secs(s),
        };
        assert_eq!(secs(error_backoff(limited(90), 1)), Some(90));
        // The same wait however often it failed: the reset time is what counts.
        assert_eq!(secs(error_backoff(limited(90), 7)), Some(90));
        assert_eq!(secs(error_backoff(limited(0), 1)), Some(1));
        assert_eq!(secs(error_backoff(limited(5 * 60 * 60), 1)), Some(60 * 60));
    }

    #[test]
    fn an_invalid_spec_should_wait_for_a_change() {
        for failures in [1, 2, 50] {
            assert_eq!(
                error_backoff(ErrorKind::InvalidSpec, failures),
                Action::await_change()
            );
        }
    }
}
