//! Rate-limited reporting: at most one log line per interval, counting those held back (pure:
//! the caller passes the time).

use std::time::{Duration, Instant};

/// Decides which occurrences of a recurring event get a log line.
#[derive(Debug)]
pub(crate) struct Throttle {
    every: Duration,
    last: Option<Instant>,
    held: u64,
}

impl Throttle {
    /// Returns a throttle that lets one occurrence through per `every`.
    pub(crate) const fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            held: 0,
        }
    }

    /// Records an occurrence at `now`; returns `Some(n)` when it should be reported, `n` being
    /// how many were held back since the last report.
    pub(crate) fn hit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                self.held += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_should_log_once_per_interval_and_count_the_rest() {
        let mut t = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(t.hit(t0), Some(0));
        for ms in 1..1000 {
            assert_eq!(t.hit(t0 + Duration::from_millis(ms)), None);
        }
        assert_eq!(t.hit(t0 + Duration::from_secs(10)), Some(999));
        assert_eq!(t.hit(t0 + Duration::from_secs(11)), None);
        assert_eq!(t.hit(t0 + Duration::from_secs(60)), Some(1));
    }
}
