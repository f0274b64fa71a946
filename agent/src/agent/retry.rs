//! When the agent dials again (pure): soon after a connection that merely dropped, ever later
//! after refusals.
//!
//! A dropped connection (coordinator restarting, network trouble) is retried after
//! [`Backoff::default`] delays, 0.5 s doubling to 30 s, so that agents are back within a second
//! of a restart. A refusal (revoked key or name, wrong token) will not go away by itself, so it
//! is retried after [`Backoff::refused`] delays, 1 s doubling to 5 min; the coordinator is not
//! asked again every second by an agent that an operator has to fix. An admitted session
//! resets both.

use std::time::Duration;

/// The delays between connection attempts of one kind: `min`, doubling up to `max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The first delay.
    pub min: Duration,
    /// The longest delay. After dropped connections, a session that lasted at least this long
    /// starts again from `min`.
    pub max: Duration,
    /// Whether to randomise delays (uniformly over the upper half), so that many agents do not
    /// dial in lockstep.
    pub jitter: bool,
}

impl Default for Backoff {
    /// After a dropped connection: 0.5 s doubling to 30 s, jittered.
    fn default() -> Self {
        Self {
            min: Duration::from_millis(500),
            max: Duration::from_secs(30),
            jitter: true,
        }
    }
}

impl Backoff {
    /// After a refusal: 1 s doubling to 5 min, jittered.
    pub fn refused() -> Self {
        Self {
            min: Duration::from_secs(1),
            max: Duration::from_secs(300),
            jitter: true,
        }
    }

    /// Returns the `n`th delay (from 1), before jitter: `min` doubled `n - 1` times, at most
    /// `max`.
    pub(crate) fn nth(&self, n: u32) -> Duration {
        let doublings = n.saturating_sub(1).min(32);
        self.min
            .saturating_mul(1u32 << doublings.min(31))
            .min(self.max)
    }

    /// Returns `delay` spread over `[delay / 2, delay]` by `u` in `[0, 1)` when jitter is on.
    pub(crate) fn jittered(&self, delay: Duration, u: f64) -> Duration {
        if self.jitter {
            delay.mul_f64(0.5 + 0.5 * u.clamp(0.0, 1.0))
        } else {
            delay
        }
    }
}

/// How one connection attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Without a verdict: the connection or the handshake failed, or the session dropped (an
    /// older coordinator also sends no verdict) after `lasted`.
    Dropped { lasted: Duration },
    /// Admitted (however long the session lasted).
    Admitted,
    /// Refused by the coordinator.
    Refused,
}

/// The reconnection policy of one agent: which delay follows which outcome.
#[derive(Debug, Clone)]
pub(crate) struct Retry {
    dropped: Backoff,
    refused: Backoff,
    /// Dropped connections since the last admission or long session.
    drops: u32,
    /// Refusals since the last admission.
    refusals: u32,
}

impl Retry {
    /// Returns a fresh policy.
    pub(crate) fn new(dropped: Backoff, refused: Backoff) -> Self {
        Self {
            dropped,
            refused,
            drops: 0,
            refusals: 0,
        }
    }

    /// Records how an attempt ended; returns the delay before the next one (before jitter)
    /// and the backoff it came from (for its jitter setting).
    pub(crate) fn next(&mut self, outcome: Outcome) -> (Duration, Backoff) {
        match outcome {
            Outcome::Refused => {
                // The coordinator answered: the connection itself is fine.
                self.drops = 0;
                self.refusals = self.refusals.saturating_add(1);
                (self.refused.nth(self.refusals), self.refused)
            }
            Outcome::Admitted => {
                self.refusals = 0;
                self.drops = 1;
                (self.dropped.nth(1), self.dropped)
            }
            Outcome::Dropped { lasted } => {
                if lasted >= self.dropped.max {
                    self.drops = 0;
                }
                self.drops = self.drops.saturating_add(1);
                (self.dropped.nth(self.drops), self.dropped)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn retry() -> Retry {
        Retry::new(Backoff::default(), Backoff::refused())
    }

    fn delays(retry: &mut Retry, outcomes: &[Outcome]) -> Vec<Duration> {
        outcomes.iter().map(|o| retry.next(*o).0).collect()
    }

    const QUICK: Outcome = Outcome::Dropped { lasted: ms(10) };

    #[test]
    fn dropped_connections_should_be_retried_within_a_second_then_back_off_to_30s() {
        let d = delays(&mut retry(), &[QUICK; 9]);
        assert_eq!(
            d,
            [
                ms(500),
                ms(1000),
                ms(2000),
                ms(4000),
                ms(8000),
                ms(16_000),
                ms(30_000),
                ms(30_000),
                ms(30_000)
            ]
        );
    }

    #[test]
    fn a_long_session_or_an_admission_should_reset_the_dropped_backoff() {
        let mut r = retry();
        delays(&mut r, &[QUICK; 5]);
        let long = Outcome::Dropped {
            lasted: Duration::from_secs(31),
        };
        assert_eq!(r.next(long).0, ms(500));
        delays(&mut r, &[QUICK; 5]);
        assert_eq!(r.next(Outcome::Admitted).0, ms(500));
        assert_eq!(r.next(QUICK).0, ms(1000));
    }

    #[test]
    fn refusals_should_back_off_from_one_second_to_five_minutes() {
        let d = delays(&mut retry(), &[Outcome::Refused; 11]);
        let secs: Vec<u64> = d.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
    }

    #[test]
    fn a_dropped_connection_between_refusals_should_not_reset_the_refusal_backoff() {
        let mut r = retry();
        delays(&mut r, &[Outcome::Refused; 4]);
        // The coordinator restarts: back quickly…
        assert_eq!(r.next(QUICK).0, ms(500));
        assert_eq!(r.next(QUICK).0, ms(1000));
        // …but still refused: the refusal delay carries on where it was.
        assert_eq!(r.next(Outcome::Refused).0, Duration::from_secs(16));
        // Only an admission resets it.
        r.next(Outcome::Admitted);
        assert_eq!(r.next(Outcome::Refused).0, Duration::from_secs(1));
    }

    #[test]
    fn a_refusal_should_reset_the_dropped_backoff() {
        let mut r = retry();
        delays(&mut r, &[QUICK; 6]);
        r.next(Outcome::Refused);
        assert_eq!(r.next(QUICK).0, ms(500));
    }

    #[test]
    fn jitter_should_spread_over_the_upper_half_and_never_exceed_the_delay() {
        let b = Backoff::refused();
        let d = Duration::from_secs(300);
        assert_eq!(b.jittered(d, 0.0), Duration::from_secs(150));
        assert_eq!(b.jittered(d, 0.5), Duration::from_secs(225));
        assert!(b.jittered(d, 0.999_999) <= d);
        assert_eq!(b.jittered(d, 7.0), d);
        let fixed = Backoff { jitter: false, ..b };
        assert_eq!(fixed.jittered(d, 0.0), d);
    }

    #[test]
    fn huge_attempt_counts_should_saturate_at_the_maximum() {
        let b = Backoff::refused();
        assert_eq!(b.nth(0), Duration::from_secs(1));
        assert_eq!(b.nth(u32::MAX), Duration::from_secs(300));
    }
}
