//! Loopback tests of the agent and the coordinator's side of the transport, with real SSH and,
//! for serve channels, a real `nix-store --serve --write` on a separate chroot store.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] functions"
)]

mod common;

mod enrollment;
mod flood;
mod garbage;
mod heartbeats;
mod pinning;
mod reconnect;
mod refusals;
mod serve;
mod verdicts;
