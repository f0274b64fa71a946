//! What a build on a serve peer ended with ([`RemoteBuildOutcome`]), and how Nix's reply to a
//! `cmdBuildPaths` reads as such an outcome.
//!
//! The build itself, which also reads and writes the local store, is `crate::build::remote`.

use std::collections::BTreeMap;
use std::time::Duration;

use reconix_spec::names::StorePath;

use super::wire::BuildResultStatus;

/// How a remote build ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteBuildStatus {
    /// The outputs were built (or were valid already) and are now valid locally.
    Built,
    /// The build failed; nothing was copied back.
    Failed {
        /// Nix's status for it. In closure mode (see `crate::build::remote`) it is derived
        /// from Nix's exit status: [`BuildResultStatus::DependencyFailed`] when an intermediate
        /// derivation failed, [`BuildResultStatus::OutputRejected`] for a hash mismatch,
        /// [`BuildResultStatus::MiscFailure`] when Nix failed for another reason than a build
        /// (store trouble, a missing system feature…), else
        /// [`BuildResultStatus::PermanentFailure`].
        status: BuildResultStatus,
        /// Nix's message without colour codes (nor, in closure mode, its `error: ` prefix),
        /// e.g. `builder for '/nix/store/…-x.drv' failed with exit code 7`.
        message: String,
    },
    /// The build (or, in closure mode, an intermediate one) exceeded `buildTimeout` or
    /// `maxSilentTime`; nothing was copied back.
    TimedOut {
        /// Nix's message, e.g. `… timed out after 2 seconds`.
        message: String,
    },
}

impl RemoteBuildStatus {
    /// Returns true when the build failed in a way that may go away if it is retried, here or
    /// on another builder (see [`BuildResultStatus::is_transient`]).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Failed { status, .. } if status.is_transient())
    }
}

/// How long each phase of a remote build took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RemoteBuildTimings {
    /// Reading the derivation and computing what the builder needs locally.
    pub inputs: Duration,
    /// Asking the builder what it lacks and sending it.
    pub copy_to_remote: Duration,
    /// The build itself, as seen from the client.
    pub build: Duration,
    /// Copying the outputs' closure back (zero when the build failed).
    pub copy_back: Duration,
}

/// What [`build_remote`](crate::build_remote) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteBuildOutcome {
    /// How the build ended.
    pub status: RemoteBuildStatus,
    /// The derivation's outputs, name → path; all valid locally when the status is
    /// [`RemoteBuildStatus::Built`].
    pub outputs: BTreeMap<String, StorePath>,
    /// The paths sent to the builder, in the order sent (references first).
    pub copied_to_remote: Vec<StorePath>,
    /// The paths copied back from the builder, in the order received: the outputs, and in
    /// closure mode the outputs of intermediate derivations they reference.
    pub copied_back: Vec<StorePath>,
    /// How many times the builder built the derivation (0 when its outputs were valid there).
    /// In closure mode Nix does not say: it is 1 when the outputs were not all on the builder
    /// (or sent to it) beforehand, else 0, and intermediate derivations are not counted.
    pub times_built: u64,
    /// Time per phase.
    pub timings: RemoteBuildTimings,
}

/// Returns the status of a failed `cmdBuildPaths`, whose reply is Nix's exit status
/// (`Worker::exitStatus`, see `crate::build::exit`) and the message of the error it threw.
pub(crate) fn build_paths_failure(status: u64, message: &str) -> RemoteBuildStatus {
    let message = message.trim();
    let message = message.strip_prefix("error:").unwrap_or(message).trim();
    let message = message.to_owned();
    if !(0x64..=0x6f).contains(&status) {
        // Not a build failure: Nix itself failed (store trouble, a system or feature the
        // builder lacks, a path it cannot find…).
        return RemoteBuildStatus::Failed {
            status: BuildResultStatus::MiscFailure,
            message,
        };
    }
    if status & 0x01 != 0 {
        return RemoteBuildStatus::TimedOut { message };
    }
    let status = if status & 0x02 != 0 {
        BuildResultStatus::OutputRejected
    } else if status & 0x08 != 0 {
        BuildResultStatus::NotDeterministic
    } else if message.contains("dependencies of derivation") {
        // Nix 2.8's message when an input derivation failed: "1 dependencies of derivation
        // '…' failed to build" (the input's own error went to the log).
        BuildResultStatus::DependencyFailed
    } else {
        BuildResultStatus::PermanentFailure
    };
    RemoteBuildStatus::Failed { status, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(status: BuildResultStatus, message: &str) -> RemoteBuildStatus {
        RemoteBuildStatus::Failed {
            status,
            message: message.to_owned(),
        }
    }

    #[test]
    fn build_paths_failure_should_map_nix_exit_statuses_and_strip_the_error_prefix() {
        let builder = "builder for '/nix/store/x.drv' failed with exit code 3";
        let cases = [
            (
                100,
                format!("error: {builder}\n"),
                failed(BuildResultStatus::PermanentFailure, builder),
            ),
            (
                100,
                "error: 1 dependencies of derivation '/nix/store/d.drv' failed to build".to_owned(),
                failed(
                    BuildResultStatus::DependencyFailed,
                    "1 dependencies of derivation '/nix/store/d.drv' failed to build",
                ),
            ),
            (
                101,
                "error: builder for '/nix/store/x.drv' timed out after 2 seconds".to_owned(),
                RemoteBuildStatus::TimedOut {
                    message: "builder for '/nix/store/x.drv' timed out after 2 seconds".to_owned(),
                },
            ),
            (
                102,
                "error: hash mismatch".to_owned(),
                failed(BuildResultStatus::OutputRejected, "hash mismatch"),
            ),
            (
                104,
                "differs".to_owned(),
                failed(BuildResultStatus::NotDeterministic, "differs"),
            ),
            (
                1,
                "error: a 'aarch64-linux' with features {} is required".to_owned(),
                failed(
                    BuildResultStatus::MiscFailure,
                    "a 'aarch64-linux' with features {} is required",
                ),
            ),
        ];
        for (status, message, expected) in cases {
            assert_eq!(build_paths_failure(status, &message), expected, "{status}");
        }
    }

    #[test]
    fn remote_build_status_should_be_transient_only_for_transient_failures() {
        assert!(failed(BuildResultStatus::MiscFailure, "store").is_transient());
        assert!(failed(BuildResultStatus::TransientFailure, "x").is_transient());
        assert!(!failed(BuildResultStatus::PermanentFailure, "x").is_transient());
        assert!(!failed(BuildResultStatus::DependencyFailed, "x").is_transient());
        assert!(!RemoteBuildStatus::Built.is_transient());
        let timed_out = RemoteBuildStatus::TimedOut {
            message: String::new(),
        };
        assert!(!timed_out.is_transient());
    }
}
