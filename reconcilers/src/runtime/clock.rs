//! The wall clock the runtime hands to `plan` as `now`.
//!
//! Tokio's paused time does not move `SystemTime`, so tests inject [`Clock::tokio_at`], which
//! derives wall time from a fixed base plus tokio's monotonic clock.

use reconix_spec::Timestamp;
use tokio::time::Instant;

/// Tells the runtime what time it is, for `plan`'s `now` argument and [`RunReport`] times.
///
/// [`RunReport`]: super::RunReport
#[derive(Debug, Clone, Copy)]
pub struct Clock(Source);

#[derive(Debug, Clone, Copy)]
enum Source {
    System,
    Tokio { base: Timestamp, start: Instant },
}

impl Clock {
    /// Returns the real wall clock ([`Timestamp::now`]).
    #[must_use]
    pub fn system() -> Self {
        Self(Source::System)
    }

    /// Returns a clock that reads `base` now and then advances with tokio's clock, so it follows
    /// `tokio::time::pause`/`advance` in tests.
    #[must_use]
    pub fn tokio_at(base: Timestamp) -> Self {
        Self(Source::Tokio {
            base,
            start: Instant::now(),
        })
    }

    /// Returns the current time according to this clock.
    #[must_use]
    pub fn now(&self) -> Timestamp {
        match self.0 {
            Source::System => Timestamp::now(),
            Source::Tokio { base, start } => base.plus(start.elapsed()),
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_should_follow_paused_time() {
        let clock = Clock::tokio_at(Timestamp(1_000));
        assert_eq!(clock.now(), Timestamp(1_000));
        tokio::time::advance(Duration::from_millis(2_500)).await;
        assert_eq!(clock.now(), Timestamp(3_500));
    }
}
