//! Where builds run: the daemon's own machine, and remote builders that enrol themselves.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{BuilderName, Duration, SecretFile, System, Timestamp};

/// The machines that run builds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Builders {
    /// Builds on the daemon's own machine.
    pub local: LocalBuilder,
    /// Where remote builders connect to enrol; without it, no remote builder can join.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enrollment: Option<Enrollment>,
    /// Remote builders by name (the name `local` is reserved). Each one enrols itself through
    /// `enrollment`.
    pub remote: BTreeMap<BuilderName, RemoteBuilder>,
    /// A connected agent that sends no heartbeat for this long is considered dead: it is
    /// disconnected and its running builds are requeued on other builders.
    pub heartbeat_timeout: Duration,
    /// How many more times a build is tried, on another builder when there is one, after a
    /// transient failure (connection lost, builder gone, disk full). A build that fails by
    /// itself is never retried.
    pub transient_retries: u32,
}

impl Default for Builders {
    fn default() -> Self {
        Self {
            local: LocalBuilder::default(),
            enrollment: None,
            remote: BTreeMap::new(),
            heartbeat_timeout: Duration::from_secs(30),
            transient_retries: 2,
        }
    }
}

/// The daemon's own machine as a builder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct LocalBuilder {
    /// How many builds run at once; 0 disables local building.
    pub max_jobs: u32,
    /// Systems this machine builds for.
    pub systems: Vec<System>,
    /// Nix system features it offers (`kvm`, `big-parallel`, …).
    pub features: Vec<String>,
}

impl Default for LocalBuilder {
    fn default() -> Self {
        Self {
            max_jobs: 2,
            systems: vec![System::x86_64_linux()],
            features: Vec::new(),
        }
    }
}

/// The endpoint remote builders connect to in order to enrol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Enrollment {
    /// Address to listen on for enrolling builders.
    pub listen: SocketAddr,
    /// File holding the token a builder must present to enrol. It is read again for every
    /// agent that needs it, so writing a new token rotates it without a restart (agents
    /// already enrolled authenticate with their key and are unaffected).
    pub token_file: SecretFile,
    /// How long a connection has, from the TCP accept, to finish the SSH handshake and send
    /// its hello. Slower peers are dropped.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: Duration,
    /// How many connections from one source (an IPv4 address, an IPv6 /64) may be unfinished
    /// at once. A new connection beyond it replaces the oldest one that has sent nothing (else
    /// the oldest one) of that source.
    #[serde(default = "default_max_pending_per_source")]
    pub max_pending_per_source: u32,
}

fn default_handshake_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_max_pending_per_source() -> u32 {
    16
}

impl Enrollment {
    /// Returns an enrolment endpoint on `listen` with token file `token_file` and the default
    /// limits.
    pub fn new(listen: SocketAddr, token_file: SecretFile) -> Self {
        Self {
            listen,
            token_file,
            handshake_timeout: default_handshake_timeout(),
            max_pending_per_source: default_max_pending_per_source(),
        }
    }
}

/// Limits for one named remote builder (the agent itself says what it offers).
///
/// An enrolled agent without an entry here is used with what it offers. An entry caps it:
/// only the listed systems and features are used, and at most `max-jobs` builds run on it at
/// once (0 drains it: no new builds go there).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct RemoteBuilder {
    /// Systems this builder builds for.
    pub systems: Vec<System>,
    /// Nix system features it offers (`kvm`, `big-parallel`, …).
    pub features: Vec<String>,
    /// How many builds it runs at once; 0 disables it.
    pub max_jobs: u32,
}

impl Default for RemoteBuilder {
    fn default() -> Self {
        Self {
            systems: vec![System::x86_64_linux()],
            features: Vec::new(),
            max_jobs: 1,
        }
    }
}

impl RemoteBuilder {
    /// Applies this entry's caps to what an agent offers: only the systems and features both
    /// list, and at most `max-jobs` slots.
    pub fn cap(&self, offer: &Offer) -> Offer {
        Offer {
            systems: offer
                .systems
                .iter()
                .filter(|s| self.systems.contains(s))
                .cloned()
                .collect(),
            features: offer
                .features
                .iter()
                .filter(|f| self.features.contains(f))
                .cloned()
                .collect(),
            max_jobs: offer.max_jobs.min(self.max_jobs),
        }
    }
}

/// What a builder offers: systems, features and build slots.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Offer {
    /// The systems it builds for.
    pub systems: Vec<System>,
    /// The system features it offers.
    pub features: Vec<String>,
    /// How many builds it runs at once.
    pub max_jobs: u32,
}

impl Offer {
    /// Returns whether a derivation for `system` requiring `features` may build here (slots
    /// aside).
    pub fn can_build(&self, system: &System, features: &[String]) -> bool {
        self.systems.contains(system) && features.iter().all(|f| self.features.contains(f))
    }
}

impl Builders {
    /// Returns what agent `name`, offering `offer`, may be used for: capped by its
    /// `builders.remote` entry when there is one.
    pub fn agent_offer(&self, name: &BuilderName, offer: Offer) -> Offer {
        match self.remote.get(name) {
            Some(entry) => entry.cap(&offer),
            None => offer,
        }
    }

    /// Returns what the local builder offers.
    pub fn local_offer(&self) -> Offer {
        Offer {
            systems: self.local.systems.clone(),
            features: self.local.features.clone(),
            max_jobs: self.local.max_jobs,
        }
    }

    /// Returns whether a connected agent last heard from at `last_seen` (its last heartbeat,
    /// or its connection before the first one) is alive at `now`: the one liveness rule, used
    /// by the `builders` loop (which disconnects a silent agent), by placement (which uses only
    /// alive ones) and by the builders' views.
    ///
    /// An agent is alive while it has been quiet for less than `heartbeat-timeout`; at exactly
    /// the timeout it is silent. One never heard from is silent.
    pub fn liveness(&self, now: Timestamp, last_seen: Option<Timestamp>) -> Liveness {
        let timeout = self.heartbeat_timeout.to_std();
        let Some(seen) = last_seen else {
            return Liveness::Silent { quiet: None };
        };
        let quiet = now.since(seen);
        if quiet < timeout {
            Liveness::Alive {
                left: timeout - quiet,
            }
        } else {
            Liveness::Silent { quiet: Some(quiet) }
        }
    }
}

/// Whether a connected agent is alive, as [`Builders::liveness`] decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Heard from within `heartbeat-timeout`; it turns silent once `left` has passed.
    Alive {
        /// How long until it turns silent (never zero).
        left: std::time::Duration,
    },
    /// Quiet for `heartbeat-timeout` or longer, or never heard from.
    Silent {
        /// How long it has been quiet; `None` when it was never heard from.
        quiet: Option<std::time::Duration>,
    },
}

impl Liveness {
    /// Returns whether the agent is alive.
    pub const fn is_alive(self) -> bool {
        matches!(self, Self::Alive { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sys(s: &str) -> System {
        System::new(s).unwrap()
    }

    #[test]
    fn a_remote_entry_should_cap_what_an_agent_offers() {
        let mut builders = Builders::default();
        let name = BuilderName::new("arm").unwrap();
        let offer = Offer {
            systems: vec![sys("aarch64-linux"), sys("x86_64-linux")],
            features: vec!["kvm".to_owned(), "big-parallel".to_owned()],
            max_jobs: 8,
        };
        assert_eq!(builders.agent_offer(&name, offer.clone()), offer);
        builders.remote.insert(
            name.clone(),
            RemoteBuilder {
                systems: vec![sys("aarch64-linux")],
                features: vec!["kvm".to_owned()],
                max_jobs: 2,
            },
        );
        let capped = builders.agent_offer(&name, offer);
        assert_eq!(capped.systems, [sys("aarch64-linux")]);
        assert_eq!(capped.features, ["kvm"]);
        assert_eq!(capped.max_jobs, 2);
        assert!(capped.can_build(&sys("aarch64-linux"), &["kvm".to_owned()]));
        assert!(!capped.can_build(&sys("aarch64-linux"), &["big-parallel".to_owned()]));
        assert!(!capped.can_build(&sys("x86_64-linux"), &[]));
    }

    #[test]
    fn an_agent_should_be_alive_until_exactly_the_heartbeat_timeout() {
        let builders = Builders {
            heartbeat_timeout: Duration::from_secs(10),
            ..Builders::default()
        };
        let seen = Some(Timestamp(1_000));
        let ms = std::time::Duration::from_millis;
        assert_eq!(
            builders.liveness(Timestamp(10_999), seen),
            Liveness::Alive { left: ms(1) },
            "one ms before the timeout"
        );
        assert_eq!(
            builders.liveness(Timestamp(11_000), seen),
            Liveness::Silent {
                quiet: Some(ms(10_000))
            },
            "at exactly the timeout"
        );
        assert_eq!(
            builders.liveness(Timestamp(11_001), seen),
            Liveness::Silent {
                quiet: Some(ms(10_001))
            },
            "one ms after the timeout"
        );
        assert!(builders.liveness(Timestamp(10_999), seen).is_alive());
        assert!(!builders.liveness(Timestamp(11_000), seen).is_alive());
    }

    #[test]
    fn an_agent_never_heard_from_should_be_silent() {
        let builders = Builders::default();
        assert_eq!(
            builders.liveness(Timestamp(0), None),
            Liveness::Silent { quiet: None }
        );
    }

    #[test]
    fn a_sign_of_life_from_the_future_should_count_as_just_now() {
        let builders = Builders::default();
        assert_eq!(
            builders.liveness(Timestamp(0), Some(Timestamp(5_000))),
            Liveness::Alive {
                left: std::time::Duration::from_secs(30)
            }
        );
    }
}
