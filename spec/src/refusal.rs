//! A spec refused before it is parsed: what is wrong and where (`limits.rs` and `scan.rs` refuse,
//! `load.rs` words the error).

use crate::locate::Position;

/// Why the text was refused, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) at: Position,
    pub(crate) message: String,
    pub(crate) kind: RefusalKind,
}

/// What a [`Refusal`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefusalKind {
    /// A limit, an empty spec or a second document: the message is final.
    Refused,
    /// A syntax error found by saphyr, which libyaml may word better (see `load.rs`).
    Syntax,
}

impl Refusal {
    /// Returns a refusal whose message is final.
    pub(crate) fn new(at: Position, message: impl Into<String>) -> Self {
        Self {
            at,
            message: message.into(),
            kind: RefusalKind::Refused,
        }
    }
}
