//! Rate-limited logging: one line per key (a client's address, an error kind) per minute, with a
//! count of what was left out, so a client cannot flood the log.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a key stays quiet after a logged line.
const WINDOW: Duration = Duration::from_secs(60);

/// Keys remembered at most; beyond that, the quietest are forgotten and new ones share one key
/// (a peer with many addresses cannot grow the map without bound).
const MAX_KEYS: usize = 1024;

/// The key every event shares once [`MAX_KEYS`] are in use.
const OVERFLOW: &str = "<other sources>";

#[derive(Debug, Clone, Copy)]
struct Window {
    logged_at: Instant,
    suppressed: u64,
}

/// Decides which events are logged: the first of each key, then one per minute.
#[derive(Debug, Default)]
pub(crate) struct LogLimiter {
    windows: Mutex<HashMap<String, Window>>,
}

impl LogLimiter {
    /// Records an event of `key` at `now`. Returns `Some(n)` when it should be logged, `n` being
    /// how many events of that key were left out since its last logged line; `None` otherwise.
    pub(crate) fn check(&self, key: &str, now: Instant) -> Option<u64> {
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        if !windows.contains_key(key) && windows.len() >= MAX_KEYS {
            windows.retain(|_, w| now.saturating_duration_since(w.logged_at) < WINDOW);
        }
        let key = if windows.contains_key(key) || windows.len() < MAX_KEYS {
            key
        } else {
            OVERFLOW
        };
        match windows.get_mut(key) {
            Some(w) if now.saturating_duration_since(w.logged_at) < WINDOW => {
                w.suppressed += 1;
                None
            }
            Some(w) => {
                let suppressed = w.suppressed;
                *w = Window {
                    logged_at: now,
                    suppressed: 0,
                };
                Some(suppressed)
            }
            None => {
                windows.insert(
                    key.to_owned(),
                    Window {
                        logged_at: now,
                        suppressed: 0,
                    },
                );
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_should_log_once_a_minute_with_the_count_it_left_out() {
        let limiter = LogLimiter::default();
        let t = Instant::now();
        assert_eq!(limiter.check("10.0.0.1", t), Some(0));
        for s in 1..60 {
            assert_eq!(limiter.check("10.0.0.1", t + Duration::from_secs(s)), None);
        }
        assert_eq!(
            limiter.check("10.0.0.2", t),
            Some(0),
            "another source logs at once"
        );
        assert_eq!(limiter.check("10.0.0.1", t + WINDOW), Some(59));
        assert_eq!(limiter.check("10.0.0.1", t + WINDOW), None);
    }

    #[test]
    fn many_sources_should_share_one_key_beyond_the_limit() {
        let limiter = LogLimiter::default();
        let t = Instant::now();
        for n in 0..MAX_KEYS {
            assert_eq!(limiter.check(&n.to_string(), t), Some(0));
        }
        assert_eq!(
            limiter.check("new-1", t),
            Some(0),
            "the overflow key's first line"
        );
        assert_eq!(limiter.check("new-2", t), None, "shares it");
        let len = limiter.windows.lock().map(|w| w.len()).unwrap_or_default();
        assert_eq!(len, MAX_KEYS + 1);
        // A minute later the old keys are forgotten and new ones get their own line again.
        assert_eq!(limiter.check("new-3", t + WINDOW), Some(0));
    }
}
