//! Retention of old results (`retention`) and commit-status reporting (`statuses`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ByteSize, Duration};

/// How long evaluations, their GC roots and build logs are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Retention {
    /// Evaluations older than this lose their GC roots (the newest `keep-last` per branch are
    /// kept regardless).
    pub max_age: Duration,
    /// Oldest evaluations are released until the rooted closure fits this size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_size: Option<ByteSize>,
    /// How many of the newest evaluations of each branch are always kept.
    pub keep_last: u32,
    /// How long build logs are kept.
    pub logs: Duration,
    /// Run `nix-store --gc` after a purge released GC roots, so the store shrinks at once.
    pub collect_garbage: bool,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_age: Duration::from_days(30),
            max_size: None,
            keep_last: 3,
            logs: Duration::from_days(90),
            collect_garbage: false,
        }
    }
}

/// How build results are reported as commit statuses on forges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Statuses {
    /// Above this many jobs in one evaluation, a single summary status is reported instead of
    /// one per job.
    pub collapse_threshold: u32,
    /// Status updates of one commit are batched for this long.
    pub debounce: Duration,
    /// Prefix of every status context, as in `reconix/packages.x86_64-linux.hello`.
    pub context_prefix: String,
}

impl Default for Statuses {
    fn default() -> Self {
        Self {
            collapse_threshold: 50,
            debounce: Duration::from_secs(10),
            context_prefix: "reconix".to_owned(),
        }
    }
}
