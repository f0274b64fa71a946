//! Where builds run: the daemon's own machine, and remote builders that enrol themselves.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{BuilderName, SecretFile, System};

/// The machines that run builds.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
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

/// A named remote builder.
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
