//! The only code in reconix that spawns `nix`: typed requests in, parsed results out.
//!
//! - [`Nix`] is the port the reconcilers are generic over; [`NixCli`] implements it by running
//!   the real `nix` / `nix-store` binaries (written against Nix 2.8), and `FakeNix` (cargo
//!   feature `testing`) is a scripted in-memory stand-in.
//! - [`parse`] holds the pure parsers: the JSON of the evaluation expressions, `error:` lines of
//!   stderr, the `.drv` ATerm format and Nix's `internal-json` log.
//! - [`deps`] turns job derivations into job-level dependencies by walking `inputDrvs`.
//! - [`serve`] is a `nix-store --serve` protocol client over any stream pair: builds run on a
//!   pool of long-lived local serve processes ([`BuildMode::Channel`], the default), because a
//!   process per build costs ~25 ms of CPU; remote builders use it over SSH
//!   ([`build_remote`]).
//!
//! The modules form a graph without cycles, each using only those below it:
//!
//! - `cli` ([`NixCli`], the front door) uses everything; nothing uses it.
//! - `eval`, `build` (local builds on channels or processes, its channel `pool`, remote builds
//!   and what `nix-store`'s exit status says), `roots`, `paths`, `outputs` (what outputs say in
//!   `nix-support/`) do the work; they take the
//!   settings (`config`), never `NixCli`. `build` uses `roots` and `paths`.
//! - `config` (the settings, building commands and running them) uses `process`, which holds
//!   everything about a process: arguments, `Finished`, spawn errors, the message of a failed
//!   process, stopping a process group. `fs` creates parent directories.
//! - `aggregates` (resolving the constituents of aggregate jobs, pure) uses `port` and
//!   [`parse`]; `eval` uses it.
//! - `port` ([`Nix`] and its types) and `error` use [`serve`] for its types; [`serve`] (the
//!   protocol only) and [`deps`] use only [`parse`], the pure parsers, which use nothing.
//!
//! Evaluation follows the "hybrid" strategy measured in `nix-lab.md` (§3, appendices B and C):
//! list the attribute names, evaluate them all in one `nix eval` with `tryEval`, bisect on an
//! uncatchable error, then evaluate each failed attribute alone for its own message.

mod aggregates;
mod build;
mod cli;
mod config;
pub mod deps;
mod error;
mod eval;
#[cfg(feature = "testing")]
mod fake;
mod fs;
mod outputs;
pub mod parse;
mod paths;
mod port;
mod process;
mod roots;
pub mod serve;
mod stream;
mod workers;

pub use build::BuildMode;
pub use cli::{NixCli, build_remote};
pub use error::{Error, Result, is_storage_error, is_storage_message};
#[cfg(feature = "testing")]
pub use fake::{Call, FakeEvaluation, FakeNix};
pub use parse::outputs::ProductLine;
pub use port::{
    BuildOutcome, BuildRequest, BuildStatus, Constituent, EvalEvent, EvalJob, EvalOutcome,
    EvalRequest, JobDrv, Nix, OutputsReport, PathSize, StreamedJob, closure_size,
};
pub use process::widen_pipe;
pub use roots::{TEMPORARY_ROOT_PREFIX, output_link};
pub use serve::{
    BuildResultStatus, BuildSettings, RemoteBuildOutcome, RemoteBuildStatus, RemoteBuildTimings,
    ServeClient,
};
pub use workers::EvalPool;
