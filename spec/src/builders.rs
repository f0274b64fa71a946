//! Where builds run: the daemon's own machine, and remote builders that enrol themselves.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{BuilderName, Duration, SecretFile, System};

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
    /// File holding the token a builder must present to enrol.
    pub token_file: SecretFile,
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
