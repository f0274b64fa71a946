//! reconix reconcile loops and the generic runtime that drives them.
//!
//! [`runtime`] is a small clone of kube-runtime's `Controller`: it schedules keys, runs
//! `observe → plan → apply` for each and decides when to run them again. The loops themselves
//! (one file each) only implement [`runtime::Reconciler`]; [`registry`] is the one list of them
//! that serving and `reconix plan` walk.

pub mod runtime;

pub mod agents;
pub mod builders;
pub mod builds;
pub mod caches;
pub mod closures;
pub mod connected;
mod context;
mod error;
pub mod evaluations;
pub mod forge_clients;
pub mod forges;
pub mod gcroots;
pub mod git;
pub mod heads;
pub mod registry;
pub mod retention;
pub mod running;
pub mod s3;
pub mod statuses;
#[cfg(test)]
mod testing;
pub mod trust;
pub mod webhooks;

pub use context::{Ctx, LivePorts, Ports, WakerSet, Wakers};
pub use error::{Error, ErrorKind, Result, is_storage_trouble};
