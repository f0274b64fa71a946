//! Which unfinished connections the enrolment listener keeps when it has too many (pure).
//!
//! Every accepted connection gets a ticket, in accept order, until its handshake ends. There are
//! two limits: connections per source and connections in all. A new connection is always
//! admitted; when it would break a limit, an older one of the same source (for the per-source
//! limit) or of any source (for the total) makes room: the oldest that has *sent nothing* yet,
//! else the oldest. Real agents speak first (the SSH banner goes out right after `connect`), so
//! a flood of silent connections, even from the agent's own address, displaces only itself.
//!
//! No IO, no clock: the listener holds the values (cancellation tokens) and acts on what is
//! returned.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};

/// Where a connection comes from, as far as limits go: an IPv4 address or an IPv6 /64 (a host
/// usually owns a whole /64, so its addresses count as one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    V4(Ipv4Addr),
    V6([u8; 8]),
}

impl Source {
    /// Returns the source of a peer address (an IPv4-mapped IPv6 address counts as IPv4).
    pub(crate) fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::V4(v4),
                None => {
                    let o = v6.octets();
                    Self::V6([o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]])
                }
            },
        }
    }
}

/// How many unfinished connections the gate keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GateLimits {
    /// In all.
    pub(crate) total: usize,
    /// Per [`Source`].
    pub(crate) per_source: usize,
}

/// A connection's place in line: lower is older.
pub(crate) type Ticket = u64;

#[derive(Debug)]
struct Entry<T> {
    source: Source,
    spoke: bool,
    value: T,
}

/// The unfinished connections, oldest first, each with a value `T`.
#[derive(Debug)]
pub(crate) struct Gate<T> {
    limits: GateLimits,
    entries: BTreeMap<Ticket, Entry<T>>,
    per_source: HashMap<Source, usize>,
    next: Ticket,
}

impl<T> Gate<T> {
    /// Returns an empty gate; limits below 1 count as 1 (the newest connection always gets in).
    pub(crate) fn new(limits: GateLimits) -> Self {
        Self {
            limits: GateLimits {
                total: limits.total.max(1),
                per_source: limits.per_source.max(1),
            },
            entries: BTreeMap::new(),
            per_source: HashMap::new(),
            next: 0,
        }
    }

    /// Admits a new connection from `source`; returns its ticket and the connections it
    /// displaces (removed from the gate, oldest first), whose values the caller acts on.
    pub(crate) fn admit(&mut self, source: Source, value: T) -> (Ticket, Vec<(Ticket, T)>) {
        let mut displaced = Vec::new();
        if self.per_source.get(&source).copied().unwrap_or(0) >= self.limits.per_source
            && let Some(victim) = self.victim(Some(source))
            && let Some(value) = self.remove(victim)
        {
            displaced.push((victim, value));
        }
        if self.entries.len() >= self.limits.total
            && let Some(victim) = self.victim(None)
            && let Some(value) = self.remove(victim)
        {
            displaced.push((victim, value));
        }
        let ticket = self.next;
        self.next += 1;
        self.entries.insert(
            ticket,
            Entry {
                source,
                spoke: false,
                value,
            },
        );
        *self.per_source.entry(source).or_insert(0) += 1;
        (ticket, displaced)
    }

    /// Records that a connection has sent something: it is displaced only after every silent
    /// one.
    pub(crate) fn spoke(&mut self, ticket: Ticket) {
        if let Some(entry) = self.entries.get_mut(&ticket) {
            entry.spoke = true;
        }
    }

    /// Forgets a connection (its handshake ended, or it was displaced); returns its value when
    /// it was still here.
    pub(crate) fn remove(&mut self, ticket: Ticket) -> Option<T> {
        let entry = self.entries.remove(&ticket)?;
        if let Some(n) = self.per_source.get_mut(&entry.source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_source.remove(&entry.source);
            }
        }
        Some(entry.value)
    }

    /// Removes the oldest connection that has sent nothing (to free its file descriptor when
    /// the process has run out).
    pub(crate) fn evict_silent(&mut self) -> Option<(Ticket, T)> {
        let ticket = self
            .entries
            .iter()
            .find(|(_, e)| !e.spoke)
            .map(|(t, _)| *t)?;
        self.remove(ticket).map(|value| (ticket, value))
    }

    /// Returns how many connections are unfinished.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Returns the connection to displace: the oldest silent one of `source` (any source when
    /// `None`), else the oldest of it.
    fn victim(&self, source: Option<Source>) -> Option<Ticket> {
        let mut oldest = None;
        for (ticket, entry) in &self.entries {
            if source.is_some_and(|s| s != entry.source) {
                continue;
            }
            if !entry.spoke {
                return Some(*ticket);
            }
            oldest.get_or_insert(*ticket);
        }
        oldest
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;

    fn v4(last: u8) -> Source {
        Source::of(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)))
    }

    fn gate(total: usize, per_source: usize) -> Gate<&'static str> {
        Gate::new(GateLimits { total, per_source })
    }

    fn names(displaced: &[(Ticket, &'static str)]) -> Vec<&'static str> {
        displaced.iter().map(|(_, v)| *v).collect()
    }

    #[test]
    fn connections_within_the_limits_should_displace_nothing() {
        let mut g = gate(4, 2);
        for (source, name) in [(v4(1), "a"), (v4(1), "b"), (v4(2), "c"), (v4(3), "d")] {
            assert!(g.admit(source, name).1.is_empty());
        }
        assert_eq!(g.len(), 4);
    }

    #[test]
    fn a_full_source_should_lose_its_oldest_silent_connection_first() {
        let mut g = gate(100, 3);
        let (a, _) = g.admit(v4(1), "a");
        g.admit(v4(1), "b");
        g.admit(v4(1), "c");
        g.admit(v4(2), "other");
        // `a` spoke (an agent mid-handshake): the oldest silent one, `b`, goes instead.
        g.spoke(a);
        let (_, displaced) = g.admit(v4(1), "d");
        assert_eq!(names(&displaced), ["b"]);
        let (_, displaced) = g.admit(v4(1), "e");
        assert_eq!(names(&displaced), ["c"]);
        // Another source is never displaced for this one.
        assert_eq!(g.len(), 4);
    }

    #[test]
    fn a_source_where_everyone_spoke_should_lose_its_oldest_connection() {
        let mut g = gate(100, 2);
        let (a, _) = g.admit(v4(1), "a");
        let (b, _) = g.admit(v4(1), "b");
        g.spoke(b);
        g.spoke(a);
        let (_, displaced) = g.admit(v4(1), "c");
        assert_eq!(names(&displaced), ["a"]);
    }

    #[test]
    fn a_full_gate_should_lose_the_oldest_silent_connection_of_any_source() {
        let mut g = gate(3, 10);
        let (a, _) = g.admit(v4(1), "a");
        g.admit(v4(2), "b");
        let (c, _) = g.admit(v4(3), "c");
        g.spoke(a);
        let (d, displaced) = g.admit(v4(4), "d");
        assert_eq!(names(&displaced), ["b"]);
        g.spoke(c);
        g.spoke(d);
        // Everyone spoke: the oldest goes.
        let (_, displaced) = g.admit(v4(5), "e");
        assert_eq!(names(&displaced), ["a"]);
    }

    #[test]
    fn one_connection_may_break_both_limits_and_displace_two() {
        let mut g = gate(3, 2);
        g.admit(v4(1), "a1");
        g.admit(v4(2), "b1");
        let (a2, _) = g.admit(v4(1), "a2");
        g.spoke(a2);
        // Source 1 is full (a1 goes); then the gate is still full with b1, a2: b1 is the oldest
        // silent one.
        let (_, displaced) = g.admit(v4(1), "a3");
        assert_eq!(names(&displaced), ["a1"]);
        assert_eq!(g.len(), 3);
        let (_, displaced) = g.admit(v4(3), "c1");
        assert_eq!(names(&displaced), ["b1"]);
    }

    #[test]
    fn a_flood_of_silent_connections_should_never_displace_an_agent_that_spoke() {
        let mut g = gate(8, 4);
        g.admit(v4(1), "idle");
        let (agent, _) = g.admit(v4(1), "agent");
        g.spoke(agent);
        g.admit(v4(1), "idle");
        g.admit(v4(1), "idle");
        for _ in 0..1000 {
            let (_, displaced) = g.admit(v4(1), "idle");
            assert_eq!(names(&displaced), ["idle"]);
        }
        assert_eq!(g.remove(agent), Some("agent"));
    }

    #[test]
    fn removing_should_free_the_place_and_forget_the_ticket() {
        let mut g = gate(2, 2);
        let (a, _) = g.admit(v4(1), "a");
        g.admit(v4(1), "b");
        assert_eq!(g.remove(a), Some("a"));
        assert_eq!(g.remove(a), None);
        assert!(g.admit(v4(1), "c").1.is_empty());
        // Displaced connections are gone too: their own removal finds nothing.
        let (_, displaced) = g.admit(v4(1), "d");
        assert_eq!(displaced.len(), 1);
        assert_eq!(g.remove(displaced[0].0), None);
    }

    #[test]
    fn eviction_for_file_descriptors_should_take_only_silent_connections() {
        let mut g = gate(10, 10);
        let (a, _) = g.admit(v4(1), "a");
        g.admit(v4(2), "b");
        g.spoke(a);
        assert_eq!(g.evict_silent().map(|(_, v)| v), Some("b"));
        assert_eq!(g.evict_silent(), None);
        assert_eq!(g.len(), 1);
    }

    #[test]
    fn limits_of_zero_should_still_admit_the_newest_connection() {
        let mut g = gate(0, 0);
        assert!(g.admit(v4(1), "a").1.is_empty());
        assert_eq!(names(&g.admit(v4(1), "b").1), ["a"]);
    }

    #[test]
    fn ipv6_addresses_should_count_per_64_and_mapped_ipv4_as_ipv4() {
        let a: Ipv6Addr = "2001:db8:1:2::1".parse().unwrap();
        let b: Ipv6Addr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: Ipv6Addr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(Source::of(a.into()), Source::of(b.into()));
        assert_ne!(Source::of(a.into()), Source::of(c.into()));
        let mapped = Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped();
        assert_eq!(Source::of(mapped.into()), v4(1));
    }
}
