//! What reconix refuses to read at all, checked before any YAML parser runs: a spec over
//! [`MAX_SPEC_BYTES`] and text that is not UTF-8. [`MAX_SPEC_DEPTH`] and [`MAX_SPEC_NODES`]
//! are checked by the first pass over the events (`scan.rs`).
//!
//! A spec is read by the daemon on every change, so a hostile or broken file must cost little
//! whatever its shape: the limits keep every spec, accepted or refused, at a linear cost that
//! `reconix-bench spec` measures (`docs/benchmarks.md`).

use std::io::Read;
use std::path::Path;

use crate::locate::Position;
use crate::refusal::Refusal;

/// The largest spec file reconix reads, in bytes (1 MiB).
///
/// A spec with 1,000 hosted repositories is about 150 KiB; this leaves room for seven times
/// that, and a file of this size still loads in a fraction of a second. Only this many bytes
/// (and one more, to see that there are more) are ever read from the file.
pub const MAX_SPEC_BYTES: usize = 1 << 20;

/// The deepest nesting of mappings and sequences in a spec (the top-level mapping is level 1).
///
/// The schema needs 6 (`forges.NAME.repos.NAME.branches` is a list inside four mappings); the
/// limit leaves room for complex keys and merges without letting libyaml's per-level cost grow.
pub const MAX_SPEC_DEPTH: usize = 32;

/// The most YAML nodes (keys, values and items, an alias counting as a copy of its anchor) a
/// spec may hold.
///
/// A spec with 1,000 repositories has 4,000 to 10,000. yaml_serde holds every event of the
/// document in memory and copies an alias's anchor into each typed field it fills, so this
/// bounds its memory and time, and makes a "billion laughs" of aliases a refused spec.
pub const MAX_SPEC_NODES: usize = 100_000;

/// A UTF-8 byte-order mark; editors on Windows may start a file with one.
const BOM: &str = "\u{feff}";

/// Reads at most [`MAX_SPEC_BYTES`] of `path`, checks that they are UTF-8 and returns the text
/// without a leading byte-order mark.
///
/// # Errors
/// Returns an [`std::io::Error`] when the file cannot be read, or a [`Refusal`] when it is too
/// large or not UTF-8.
pub(crate) fn read(path: &Path) -> std::io::Result<Result<String, Refusal>> {
    let mut bytes = Vec::new();
    // `take` so that a huge file (or an endless one, such as a device) is never read whole.
    std::fs::File::open(path)?
        .take(MAX_SPEC_BYTES as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok(decode(bytes))
}

/// Checks the size and the encoding of a spec's bytes.
fn decode(mut bytes: Vec<u8>) -> Result<String, Refusal> {
    check_size(&bytes)?;
    if bytes.starts_with(BOM.as_bytes()) {
        bytes.drain(..BOM.len());
    }
    String::from_utf8(bytes).map_err(|err| {
        let bytes = err.as_bytes();
        let offset = err.utf8_error().valid_up_to();
        let byte = bytes.get(offset).copied().unwrap_or_default();
        Refusal::new(
            position_at(bytes, offset),
            format!(
                "the spec is not valid UTF-8: byte 0x{byte:02x} cannot appear here \
                 (save the file as UTF-8)"
            ),
        )
    })
}

/// Checks the size of a spec given as text and returns it without a leading byte-order mark.
///
/// # Errors
/// Returns a [`Refusal`] when `text` is longer than [`MAX_SPEC_BYTES`].
pub(crate) fn check_text(text: &str) -> Result<&str, Refusal> {
    check_size(text.as_bytes())?;
    Ok(text.strip_prefix(BOM).unwrap_or(text))
}

fn check_size(bytes: &[u8]) -> Result<(), Refusal> {
    if bytes.len() <= MAX_SPEC_BYTES {
        return Ok(());
    }
    Err(Refusal::new(
        position_at(bytes, MAX_SPEC_BYTES),
        format!(
            "the spec is larger than {} MiB, the most reconix reads; the limit falls here",
            MAX_SPEC_BYTES >> 20
        ),
    ))
}

/// Returns the line and column of byte `offset` of `bytes`, counting characters (UTF-8 lead
/// bytes) for the column, as the YAML parsers do. A leading byte-order mark takes no column.
fn position_at(bytes: &[u8], offset: usize) -> Position {
    let mut before = &bytes[..offset.min(bytes.len())];
    if let Some(rest) = before.strip_prefix(BOM.as_bytes()) {
        before = rest;
    }
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |newline| newline + 1);
    let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
    let col = 1 + before[line_start..]
        .iter()
        .filter(|&&b| b & 0b1100_0000 != 0b1000_0000)
        .count();
    Position { line, col }
}
