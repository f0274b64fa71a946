//! The only code in reconix that spawns `nix`: typed requests in, parsed results out.
//!
//! - [`Nix`] is the port the reconcilers are generic over; [`NixCli`] implements it by running
//!   the real `nix` / `nix-store` binaries (written against Nix 2.8), and `FakeNix` (cargo
//!   feature `testing`) is a scripted in-memory stand-in.
//! - [`parse`] holds the pure parsers: the JSON of the evaluation expressions, `error:` lines of
//!   stderr, the `.drv` ATerm format, `nix-store` exit codes and its `internal-json` log.
//! - [`deps`] turns job derivations into job-level dependencies by walking `inputDrvs`.
//! - [`serve`] is a `nix-store --serve` protocol client over any stream pair: builds run on a
//!   pool of long-lived local serve processes ([`BuildMode::Channel`], the default), because a
//!   process per build costs ~25 ms of CPU; remote builders can reuse it over SSH.
//!
//! Evaluation follows the "hybrid" strategy measured in `nix-lab.md` (§3, appendices B and C):
//! list the attribute names, evaluate them all in one `nix eval` with `tryEval`, bisect on an
//! uncatchable error, then evaluate each failed attribute alone for its own message.

mod build;
mod cli;
pub mod deps;
mod error;
mod eval;
#[cfg(feature = "testing")]
mod fake;
pub mod parse;
mod paths;
mod pool;
mod port;
mod roots;
pub mod serve;

pub use build::BuildMode;
pub use cli::NixCli;
pub use error::{Error, Result, is_storage_error, is_storage_message};
#[cfg(feature = "testing")]
pub use fake::{Call, FakeEvaluation, FakeNix};
pub use port::{
    BuildOutcome, BuildRequest, BuildStatus, EvalJob, EvalOutcome, EvalRequest, JobDrv, Nix,
    PathSize, closure_size,
};
pub use roots::TEMPORARY_ROOT_PREFIX;
pub use serve::{
    BuildResultStatus, BuildSettings, RemoteBuildOutcome, RemoteBuildStatus, ServeClient,
};
