//! The remote-builder transport of reconix, both sides of it.
//!
//! A builder machine runs `reconix-agent` ([`agent`]): it dials out to the coordinator (the
//! reconix daemon) over TCP and then, on the socket it opened, acts as an SSH *server*. The
//! coordinator ([`coordinator`]) accepts the TCP connection and acts as the SSH *client*: it
//! authenticates with its own key, reads the agent's `hello` on the control channel
//! (subsystem `reconix-agent`, see [`protocol`]) and then opens `nix-store --serve --write` exec
//! channels on the same connection, one per build.
//!
//! Both sides identify themselves with persistent ed25519 keys ([`keys`]): the agent pins the
//! coordinator's key (given, or trusted on first use), and the coordinator checks the agent's
//! host key against its enrolment records.

pub mod agent;
pub mod coordinator;
mod error;
pub mod keys;
pub mod protocol;
mod throttle;

pub use error::{Error, Result};

/// The SSH user name the coordinator authenticates as. The agent refuses any other.
pub const SSH_USER: &str = "reconix";

/// The subsystem name of the control channel.
pub const CONTROL_SUBSYSTEM: &str = "reconix-agent";

/// The one exec command the agent runs, byte for byte.
pub const SERVE_COMMAND: &str = "nix-store --serve --write";
