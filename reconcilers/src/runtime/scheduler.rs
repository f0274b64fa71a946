//! The per-loop work queue: which key runs next and when.
//!
//! Each key is in at most one of two places: *queued* (with one due time) or *running* (with at
//! most one pending follow-up request). That gives the runtime guarantees directly:
//! - scheduling a queued key keeps the earlier of the two times (dedupe, earliest wins);
//! - scheduling a running key only records a follow-up, so the key never runs twice at once and
//!   any number of requests during a run become exactly one run afterwards;
//! - memory is one entry per key, however often it is triggered.
//!
//! Unlike kube's scheduler this needs no `Ord` on keys: the ordered queue is keyed by
//! `(due, sequence number)` and a hash index points back into it.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use tokio::time::Instant;

/// Keys waiting for their due time plus the keys currently being reconciled.
#[derive(Debug)]
pub(crate) struct Scheduler<K> {
    /// Queued keys ordered by due time, ties in scheduling order.
    queue: BTreeMap<(Instant, u64), K>,
    /// Where each queued key sits in `queue`.
    index: HashMap<K, (Instant, u64)>,
    /// Keys being reconciled, with the earliest follow-up requested meanwhile.
    running: HashMap<K, Option<Instant>>,
    next_seq: u64,
}

impl<K: Clone + Eq + Hash> Scheduler<K> {
    /// Returns an empty scheduler.
    pub(crate) fn new() -> Self {
        Self {
            queue: BTreeMap::new(),
            index: HashMap::new(),
            running: HashMap::new(),
            next_seq: 0,
        }
    }

    /// Asks for `key` to run at `at`; an earlier request for the same key wins.
    ///
    /// A running key is not queued: the request is kept as its follow-up (see [`Self::finish`]).
    pub(crate) fn schedule(&mut self, key: K, at: Instant) {
        if let Some(follow_up) = self.running.get_mut(&key) {
            *follow_up = Some(follow_up.map_or(at, |t| t.min(at)));
            return;
        }
        match self.index.entry(key) {
            Entry::Occupied(mut entry) => {
                let (old_at, old_seq) = *entry.get();
                if at < old_at {
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    // The index and the queue change together, so the entry is always there.
                    if let Some(k) = self.queue.remove(&(old_at, old_seq)) {
                        self.queue.insert((at, seq), k);
                    }
                    entry.insert((at, seq));
                }
            }
            Entry::Vacant(entry) => {
                let seq = self.next_seq;
                self.next_seq += 1;
                self.queue.insert((at, seq), entry.key().clone());
                entry.insert((at, seq));
            }
        }
    }

    /// Returns the due time of the earliest queued key.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.queue.keys().next().map(|&(at, _)| at)
    }

    /// Removes and returns the earliest key due at or before `now`, marking it running.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<K> {
        let entry = self.queue.first_entry()?;
        if entry.key().0 > now {
            return None;
        }
        let key = entry.remove();
        self.index.remove(&key);
        self.running.insert(key.clone(), None);
        Some(key)
    }

    /// Marks `key` as no longer running and queues its next run: the earlier of `next` (what the
    /// reconcile asked for) and any follow-up requested while it ran. Returns that time.
    pub(crate) fn finish(&mut self, key: &K, next: Option<Instant>) -> Option<Instant> {
        let follow_up = self.running.remove(key).flatten();
        let at = match (next, follow_up) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(at) = at {
            self.schedule(key.clone(), at);
        }
        self.index.get(key).map(|&(at, _)| at)
    }

    /// Returns how many keys are queued (not counting running ones).
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        debug_assert_eq!(self.queue.len(), self.index.len());
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn scheduler_should_keep_the_earlier_time() {
        let t = Instant::now();
        let mut s = Scheduler::new();
        s.schedule("a", t + secs(10));
        s.schedule("a", t + secs(5));
        s.schedule("a", t + secs(20));
        assert_eq!(s.queued(), 1);
        assert_eq!(s.next_due(), Some(t + secs(5)));
        assert_eq!(s.pop_due(t + secs(4)), None);
        assert_eq!(s.pop_due(t + secs(5)), Some("a"));
        assert_eq!(s.pop_due(t + secs(100)), None);
    }

    #[test]
    fn scheduler_should_pop_due_keys_in_time_order() {
        let t = Instant::now();
        let mut s = Scheduler::new();
        s.schedule("late", t + secs(3));
        s.schedule("early", t + secs(1));
        s.schedule("same-time-second", t + secs(1));
        let popped: Vec<_> = std::iter::from_fn(|| s.pop_due(t + secs(3))).collect();
        assert_eq!(popped, ["early", "same-time-second", "late"]);
    }

    #[test]
    fn scheduler_should_turn_requests_for_a_running_key_into_one_follow_up() {
        let t = Instant::now();
        let mut s = Scheduler::new();
        s.schedule("a", t);
        assert_eq!(s.pop_due(t), Some("a"));
        s.schedule("a", t + secs(9));
        s.schedule("a", t + secs(2));
        s.schedule("a", t + secs(4));
        assert_eq!(s.queued(), 0, "a running key is never queued");
        // The reconcile asked for 60 s; the follow-up at 2 s is earlier and wins.
        assert_eq!(s.finish(&"a", Some(t + secs(60))), Some(t + secs(2)));
        assert_eq!(s.queued(), 1);
        assert_eq!(s.pop_due(t + secs(2)), Some("a"));
        assert_eq!(s.finish(&"a", None), None, "no follow-up, await change");
        assert_eq!(s.queued(), 0);
    }
}
