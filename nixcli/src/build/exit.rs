//! Classifies the exit status of `nix-store --realise`.
//!
//! Nix 2.8 (`Worker::exitStatus`) exits with `0b1100000 | mask` when builds failed: bit 2 (a
//! build failed; set along with bits 0 and 1), bit 0 (timed out, including `--max-silent-time`),
//! bit 1 (output hash mismatch), bit 3 (`--check` found a difference). So 100 is a plain build
//! failure, 101 a timeout, 102 a hash mismatch, 104 a check mismatch. Any other non-zero code (1
//! in practice) is an error that is not a build failure: a missing `.drv`, a store problem, an
//! interrupt.

use crate::port::BuildStatus;

/// Returns the build status for an exit code of `nix-store --realise` (`None`: killed by a
/// signal).
///
/// Never returns [`BuildStatus::Cancelled`]: cancellation is known to the caller, not to Nix.
pub(crate) fn classify_realise_exit(code: Option<i32>) -> BuildStatus {
    match code {
        Some(0) => BuildStatus::Succeeded,
        Some(code) if (0x64..=0x6f).contains(&code) => {
            if code & 0x01 != 0 {
                BuildStatus::TimedOut
            } else {
                BuildStatus::Failed
            }
        }
        Some(_) | None => BuildStatus::Error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn captured_rc(name: &str) -> Option<i32> {
        let path = format!(
            "{}/tests/fixtures/realise/{name}.rc",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(path).unwrap().trim().parse().ok()
    }

    #[test]
    fn classify_realise_exit_should_map_captured_exit_codes() {
        let cases = [
            ("success", BuildStatus::Succeeded),
            ("failing", BuildStatus::Failed),
            ("dependency-failed", BuildStatus::Failed),
            ("timeout", BuildStatus::TimedOut),
            ("silent", BuildStatus::TimedOut),
        ];
        for (name, status) in cases {
            assert_eq!(classify_realise_exit(captured_rc(name)), status, "{name}");
        }
    }

    #[test]
    fn classify_realise_exit_should_map_the_other_documented_codes() {
        assert_eq!(classify_realise_exit(Some(102)), BuildStatus::Failed); // hash mismatch
        assert_eq!(classify_realise_exit(Some(103)), BuildStatus::TimedOut); // both
        assert_eq!(classify_realise_exit(Some(104)), BuildStatus::Failed); // check mismatch
        assert_eq!(classify_realise_exit(Some(1)), BuildStatus::Error); // e.g. interrupted
        assert_eq!(classify_realise_exit(Some(2)), BuildStatus::Error);
        assert_eq!(classify_realise_exit(Some(99)), BuildStatus::Error);
        assert_eq!(classify_realise_exit(None), BuildStatus::Error);
    }
}
