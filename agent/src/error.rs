//! The crate's error type.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Errors of the agent and of the coordinator's side of the transport.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A key file could not be read, written or parsed.
    #[error("key file {path} is unusable")]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A key file is readable or writable by other users.
    #[error("key file {path} must not be accessible by other users (mode {mode:o}); chmod 600 it")]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The state directory could not be created or written.
    #[error("state directory {path} is unusable")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An SSH key could not be generated, encoded or decoded.
    #[error("ssh key error")]
    Key(#[source] russh::keys::ssh_key::Error),
    /// A fingerprint given on the command line is not of the form `SHA256:<base64>`.
    #[error("invalid key fingerprint {0:?}: expected SHA256:<base64>")]
    BadFingerprint(String),
    /// The host name cannot be used as a builder name.
    #[error("cannot use the host name as the builder name; pass --name")]
    HostName(#[source] std::io::Error),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Accepting a TCP connection failed.
    #[error("accepting a connection failed")]
    Accept(#[source] std::io::Error),
    /// The listener has stopped (its task ended).
    #[error("the listener has stopped")]
    ListenerClosed,
    /// Connecting to the coordinator failed.
    #[error("cannot connect to the coordinator at {addr}")]
    Connect {
        /// The coordinator's address as given.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The SSH layer failed (handshake, channel, transport).
    #[error("ssh connection with {peer} failed")]
    Ssh {
        /// The remote address, or a description.
        peer: String,
        /// The SSH library's error.
        #[source]
        source: russh::Error,
    },
    /// The agent did not accept the coordinator's key.
    #[error("the agent at {peer} rejected the coordinator's key")]
    AuthRejected {
        /// The remote address.
        peer: SocketAddr,
    },
    /// The agent presented a certificate or no host key.
    #[error("the agent at {peer} presented no plain host key")]
    NoHostKey {
        /// The remote address.
        peer: SocketAddr,
    },
    /// A step of the handshake took too long.
    #[error("the agent at {peer} did not finish the handshake within {after:?}")]
    HandshakeTimeout {
        /// The remote address.
        peer: SocketAddr,
        /// The limit.
        after: std::time::Duration,
    },
    /// An unfinished connection was dropped to make room for a newer one (see
    /// [`Limits`](crate::coordinator::Limits)).
    #[error(
        "the connection from {peer} was dropped for a newer one: too many unfinished connections"
    )]
    Displaced {
        /// The remote address.
        peer: SocketAddr,
    },
    /// The agent refused a channel request (exec or subsystem).
    #[error("the agent refused the {what} request")]
    Refused {
        /// What was asked, e.g. `exec "nix-store --serve --write"`.
        what: String,
    },
    /// The agent closed the connection or the channel.
    #[error("the agent closed the connection")]
    Closed,
    /// The agent's control channel sent something that is not a valid message.
    #[error("invalid control message from the agent at {peer}: {reason}")]
    Protocol {
        /// The remote address.
        peer: SocketAddr,
        /// What was wrong.
        reason: String,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
