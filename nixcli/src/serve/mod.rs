//! A client for `nix-store --serve`, Nix's legacy SSH protocol (version 2.7, as in Nix 2.8),
//! over any `AsyncRead` + `AsyncWrite` pair: the pipes of a local `nix-store --serve --write`
//! (the build channels of [`NixCli`](crate::NixCli)) or, later, an SSH session to a remote
//! builder.
//!
//! Only what reconix uses is implemented: the handshake, `cmdQueryValidPaths`,
//! `cmdImportPaths`, `cmdExportPaths`, `cmdBuildPaths`, `cmdQueryClosure`,
//! `cmdBuildDerivation` and `cmdAddToStoreNar` (`nix-lab.md` §5 lists the others). The server writes build logs as
//! plain text to its *stderr*, which is not part of the protocol: the caller reads it (see
//! `crate::build::pool` for how a local channel attributes it to the right build).
//!
//! [`wire`] holds the framing (pure encoders, small decoders); [`nar`] the streaming NAR and
//! export-stream walkers; `dump` writes a NAR from a store path's files; [`ServeClient`] the
//! commands; `remote` what a build on a server that does not share the local store ended with
//! ([`RemoteBuildOutcome`]).
//!
//! This module is the protocol only: it starts no process and uses no other module of the crate
//! but the pure parsers. The build on such a server, which runs local Nix commands to copy
//! closures both ways, is [`build_remote`](crate::build_remote) (`crate::build::remote`).

mod client;
pub(crate) mod dump;
pub mod nar;
pub(crate) mod remote;
pub mod wire;

pub use client::{BuildPathsReply, ServeClient};
pub use nar::{NarError, NarLimits};
pub use remote::{RemoteBuildOutcome, RemoteBuildStatus, RemoteBuildTimings};
pub use wire::{
    BasicDerivation, BuildResult, BuildResultStatus, BuildSettings, DerivationOutput, NarInfo,
};

/// Errors of the serve protocol.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The stream could not be read or written.
    #[error("serve connection failed")]
    Io(#[source] std::io::Error),
    /// The server closed the stream (it exited, or the pipe broke).
    #[error("the serve connection was closed")]
    Closed,
    /// The server did not answer the handshake with `SERVE_MAGIC_2`.
    #[error("not a nix-store --serve server: it answered {got:#x}")]
    BadMagic {
        /// What it sent instead.
        got: u64,
    },
    /// The server speaks a protocol version this client cannot (major version other than 2).
    #[error("unsupported serve protocol version {version:#x}")]
    UnsupportedVersion {
        /// The server's version.
        version: u64,
    },
    /// The server sent a string or list larger than this client accepts.
    #[error("the server sent a {what} of {len} items or bytes, more than accepted")]
    TooLong {
        /// `string` or `list`.
        what: &'static str,
        /// Its announced length.
        len: u64,
    },
    /// The server sent a store path that is not UTF-8.
    #[error("the server sent a path that is not UTF-8")]
    NotUtf8,
    /// An export stream or NAR, sent or received, is malformed, breaks a limit, or holds a
    /// path that was not asked for.
    #[error("bad export stream")]
    Archive(#[source] NarError),
    /// The server answered a command with something else than its acknowledgement.
    #[error("the server answered {command} with {got}")]
    UnexpectedReply {
        /// The command, e.g. `cmdImportPaths`.
        command: &'static str,
        /// What it sent.
        got: u64,
    },
}
