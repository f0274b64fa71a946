//! Finds where each key of a YAML document is, so that semantic problems (which know only a key
//! path) can be reported at a line and column, and finds duplicate mapping keys, which serde
//! would otherwise resolve silently by keeping the last one.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, Span};

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Position {
    pub(crate) line: usize,
    pub(crate) col: usize,
}

impl Position {
    fn of(span: Span) -> Self {
        Self {
            line: span.start.line(),
            col: span.start.col() + 1,
        }
    }
}

/// A mapping key given twice in one mapping.
#[derive(Debug)]
pub(crate) struct DuplicateKey {
    pub(crate) key: String,
    pub(crate) at: Position,
    pub(crate) first: Position,
}

/// The position of every mapping key and sequence item of a document, by key path.
#[derive(Debug, Default)]
pub(crate) struct KeyIndex {
    positions: HashMap<Vec<String>, Position>,
    pub(crate) duplicates: Vec<DuplicateKey>,
}

enum Frame {
    Mapping {
        keys: HashMap<String, Position>,
        expecting_key: bool,
    },
    Sequence {
        next: usize,
    },
}

/// The merge key `<<` may legitimately repeat in some YAML dialects; it is never a spec key.
const MERGE_KEY: &str = "<<";

/// Stands in the path for a key that is itself a mapping or sequence.
const COMPLEX_KEY: &str = "<complex key>";

struct Walker {
    index: KeyIndex,
    path: Vec<String>,
    stack: Vec<Frame>,
    /// Nesting depth inside a complex key, whose contents are not indexed.
    skip: usize,
}

impl KeyIndex {
    /// Indexes `text`. A syntax error ends the walk early; what was seen so far is kept, and
    /// serde reports the error itself.
    pub(crate) fn build(text: &str) -> Self {
        let mut walker = Walker {
            index: Self::default(),
            path: Vec::new(),
            stack: Vec::new(),
            skip: 0,
        };
        for event in Parser::new_from_str(text) {
            let Ok((event, span)) = event else { break };
            walker.event(&event, span);
        }
        walker.index
    }

    /// Returns the position of `path`, or of its nearest ancestor that is in the document (the
    /// enclosing mapping of a missing key), or 1:1.
    pub(crate) fn locate(&self, path: &[String]) -> Position {
        (0..=path.len())
            .rev()
            .find_map(|len| self.positions.get(&path[..len]).copied())
            .unwrap_or(Position { line: 1, col: 1 })
    }
}

impl Walker {
    fn event(&mut self, event: &Event<'_>, span: Span) {
        let pos = Position::of(span);
        if self.skip > 0 {
            match event {
                Event::MappingStart(..) | Event::SequenceStart(..) => self.skip += 1,
                Event::MappingEnd | Event::SequenceEnd => {
                    self.skip -= 1;
                    if self.skip == 0 {
                        self.key(COMPLEX_KEY.to_owned(), pos);
                    }
                }
                _ => {}
            }
            return;
        }
        let at_key = matches!(
            self.stack.last(),
            Some(Frame::Mapping {
                expecting_key: true,
                ..
            })
        );
        match event {
            Event::Scalar(value, ..) if at_key => self.key(value.to_string(), pos),
            Event::Alias(_) if at_key => self.key("*alias".to_owned(), pos),
            Event::MappingStart(..) | Event::SequenceStart(..) if at_key => self.skip = 1,
            Event::Scalar(..) | Event::Alias(_) => {
                self.begin_node(pos);
                self.end_node();
            }
            Event::MappingStart(..) => {
                self.begin_node(pos);
                self.stack.push(Frame::Mapping {
                    keys: HashMap::new(),
                    expecting_key: true,
                });
            }
            Event::SequenceStart(..) => {
                self.begin_node(pos);
                self.stack.push(Frame::Sequence { next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.end_node();
            }
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart(_)
            | Event::DocumentEnd => {}
        }
    }

    /// Records a mapping key; the value that follows belongs under it.
    fn key(&mut self, key: String, pos: Position) {
        let Some(Frame::Mapping {
            keys,
            expecting_key,
        }) = self.stack.last_mut()
        else {
            return;
        };
        *expecting_key = false;
        self.path.push(key.clone());
        if key == MERGE_KEY {
            return;
        }
        if let Some(first) = keys.get(&key) {
            self.index.duplicates.push(DuplicateKey {
                key,
                at: pos,
                first: *first,
            });
        } else {
            keys.insert(key, pos);
            self.index.positions.insert(self.path.clone(), pos);
        }
    }

    /// Called when a value node starts: sequence items and the root are located by their start.
    fn begin_node(&mut self, pos: Position) {
        match self.stack.last() {
            None => {
                self.index.positions.entry(Vec::new()).or_insert(pos);
            }
            Some(Frame::Sequence { next }) => {
                self.path.push(next.to_string());
                self.index.positions.entry(self.path.clone()).or_insert(pos);
            }
            Some(Frame::Mapping { .. }) => {}
        }
    }

    /// Called when a value node ends: leaves its key or index.
    fn end_node(&mut self) {
        match self.stack.last_mut() {
            None => {}
            Some(Frame::Mapping { expecting_key, .. }) => {
                self.path.pop();
                *expecting_key = true;
            }
            Some(Frame::Sequence { next }) => {
                self.path.pop();
                *next += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(index: &KeyIndex, path: &[&str]) -> (usize, usize) {
        let path: Vec<String> = path.iter().map(|s| (*s).to_owned()).collect();
        let pos = index.locate(&path);
        (pos.line, pos.col)
    }

    #[test]
    fn index_should_locate_keys_items_and_missing_keys() {
        let text = "a:\n  b: 1\n  list:\n    - x\n    - {c: 2}\nd: [1, 2]\n";
        let index = KeyIndex::build(text);
        assert_eq!(at(&index, &["a"]), (1, 1));
        assert_eq!(at(&index, &["a", "b"]), (2, 3));
        assert_eq!(at(&index, &["a", "list", "1"]), (5, 7));
        assert_eq!(at(&index, &["a", "list", "1", "c"]), (5, 8));
        assert_eq!(at(&index, &["d", "1"]), (6, 8));
        assert_eq!(at(&index, &["a", "missing"]), (1, 1));
        assert_eq!(at(&index, &["a", "list", "1", "missing"]), (5, 7));
        assert!(index.duplicates.is_empty());
    }

    #[test]
    fn index_should_skip_complex_keys_and_find_duplicates() {
        let text = "? [a, b]\n: 1\nk: 1\nk: 2\n";
        let index = KeyIndex::build(text);
        assert_eq!(at(&index, &["k"]), (3, 1));
        assert_eq!(index.duplicates.len(), 1);
        assert_eq!(index.duplicates[0].key, "k");
        assert_eq!(index.duplicates[0].at, Position { line: 4, col: 1 });
    }
}
