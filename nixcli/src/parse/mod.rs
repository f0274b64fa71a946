//! Pure parsers for what Nix prints and writes: no IO, no async, no panics.
//!
//! Each is tested on real output captured from Nix 2.8 (`tests/fixtures/`).

pub mod aterm;
pub mod eval;
pub mod log;
pub mod outputs;
pub mod stderr;
