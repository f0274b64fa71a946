//! How flakes are evaluated (`evaluation`): how many evaluator processes run at once, how much
//! memory they may use together, and how long one evaluation may take.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{ByteSize, Duration};

/// The evaluator processes, shared by every evaluation of every repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Evaluation {
    /// Evaluator processes at once, across all evaluations (they share them fairly). Default:
    /// the number of cores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<u32>,
    /// Memory one evaluator process may use: a worker that passes it between two attributes
    /// is restarted, and `workers × max-memory` is the budget for all evaluator processes
    /// together. When the budget is exceeded anyway the largest worker is stopped and its
    /// attributes are evaluated again; an attribute that does not fit even alone is an
    /// eval-failed job.
    pub max_memory: ByteSize,
    /// An evaluation still running after this ends `failed`, keeping the jobs it had found.
    /// A repository may override it (`eval-timeout`).
    pub timeout: Duration,
    /// Whether evaluation may build derivations to import their outputs (import from
    /// derivation). When false, an attribute that needs it is an eval-failed job with Nix's
    /// message.
    pub allow_import_from_derivation: bool,
}

impl Default for Evaluation {
    fn default() -> Self {
        Self {
            workers: None,
            max_memory: ByteSize(2 << 30),
            timeout: Duration::from_secs(60 * 60),
            allow_import_from_derivation: false,
        }
    }
}

impl Evaluation {
    /// Returns how many evaluator processes run at once: `workers`, or the number of cores.
    pub fn workers_or_cores(&self) -> u32 {
        self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        })
    }

    /// Returns the memory budget of all evaluator processes together: `workers × max-memory`.
    pub fn budget(&self) -> ByteSize {
        ByteSize(
            self.max_memory
                .0
                .saturating_mul(u64::from(self.workers_or_cores())),
        )
    }
}
