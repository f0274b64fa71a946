//! Finds where each key of a YAML document is, so that semantic problems (which know only a key
//! path) can be reported at a line and column, and finds duplicate mapping keys, which serde
//! would otherwise resolve silently by keeping the last one.
//!
//! The index is a tree: every key and sequence item is one entry, `(parent node, key)`, so it
//! costs one entry per node whatever the depth. It used to map each node's full key path, which
//! cloned the path per node: quadratic in the nesting depth (10,000 levels of `- ` took 58 s and
//! 2.7 GB).

use std::collections::{HashMap, HashSet};

use saphyr_parser::{Event, Span};

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Position {
    pub(crate) line: usize,
    pub(crate) col: usize,
}

impl Position {
    /// The start of the file.
    pub(crate) const START: Self = Self { line: 1, col: 1 };

    /// Returns where `span` starts.
    pub(crate) fn of(span: Span) -> Self {
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

/// Identifies a node of the document: the root is 0, every key and sequence item a new number.
type NodeId = usize;

const ROOT: NodeId = 0;

/// The position of every mapping key and sequence item of a document, by key path.
#[derive(Debug, Default)]
pub(crate) struct KeyIndex {
    /// `(parent, key or item number)` → the node and where its key (or item) is.
    children: HashMap<(NodeId, String), (NodeId, Position)>,
    root: Option<Position>,
    /// The nodes whose value is a mapping without any key (`{}`).
    empty_mappings: HashSet<NodeId>,
    pub(crate) duplicates: Vec<DuplicateKey>,
}

enum Frame {
    Mapping {
        node: NodeId,
        expecting_key: bool,
        keys: usize,
    },
    Sequence {
        node: NodeId,
        next: usize,
    },
}

/// The merge key `<<` may legitimately repeat in some YAML dialects; it is never a spec key.
const MERGE_KEY: &str = "<<";

/// Stands in the path for a key that is itself a mapping or sequence.
const COMPLEX_KEY: &str = "<complex key>";

/// Builds a [`KeyIndex`] from parser events, fed one at a time by the caller's pass over them.
pub(crate) struct Walker {
    index: KeyIndex,
    /// The node whose value the next node event is: the root, a key's value or a new item.
    current: NodeId,
    stack: Vec<Frame>,
    next_id: NodeId,
    /// Nesting depth inside a complex key, whose contents are not indexed.
    skip: usize,
}

impl KeyIndex {
    /// Returns the position of `path`, or of its nearest ancestor that is in the document (the
    /// enclosing mapping of a missing key), or 1:1.
    pub(crate) fn locate(&self, path: &[String]) -> Position {
        let mut found = self.root.unwrap_or(Position::START);
        let mut node = ROOT;
        for segment in path {
            // A lookup by `(NodeId, String)` needs an owned key; paths are short.
            match self.children.get(&(node, segment.clone())) {
                Some(&(child, pos)) => {
                    node = child;
                    found = pos;
                }
                None => break,
            }
        }
        found
    }

    /// Returns true when the top-level `key` is present and its value is written `{}`.
    pub(crate) fn is_empty_mapping(&self, key: &str) -> bool {
        self.children
            .get(&(ROOT, key.to_owned()))
            .is_some_and(|(node, _)| self.empty_mappings.contains(node))
    }
}

impl Walker {
    /// Returns a walker that has seen no event yet.
    pub(crate) fn new() -> Self {
        Self {
            index: KeyIndex::default(),
            current: ROOT,
            stack: Vec::new(),
            next_id: ROOT + 1,
            skip: 0,
        }
    }

    /// Returns the index of every event seen.
    pub(crate) fn finish(self) -> KeyIndex {
        self.index
    }

    /// Indexes one event.
    pub(crate) fn event(&mut self, event: &Event<'_>, span: Span) {
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
                let node = self.begin_node(pos);
                self.stack.push(Frame::Mapping {
                    node,
                    expecting_key: true,
                    keys: 0,
                });
            }
            Event::SequenceStart(..) => {
                let node = self.begin_node(pos);
                self.stack.push(Frame::Sequence { node, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                if let Some(Frame::Mapping { node, keys: 0, .. }) = self.stack.pop() {
                    self.index.empty_mappings.insert(node);
                }
                self.end_node();
            }
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart(_)
            | Event::DocumentEnd => {}
        }
    }

    fn fresh_id(&mut self) -> NodeId {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Records a mapping key; the value that follows belongs under it.
    fn key(&mut self, key: String, pos: Position) {
        let fresh = self.fresh_id();
        let Some(Frame::Mapping {
            node,
            expecting_key,
            keys,
        }) = self.stack.last_mut()
        else {
            return;
        };
        *expecting_key = false;
        *keys += 1;
        // A merge key or a duplicate gets a node of its own that no path reaches.
        self.current = fresh;
        if key == MERGE_KEY {
            return;
        }
        let entry = (*node, key);
        match self.index.children.get(&entry) {
            Some(&(_, first)) => self.index.duplicates.push(DuplicateKey {
                key: entry.1,
                at: pos,
                first,
            }),
            None => {
                self.index.children.insert(entry, (fresh, pos));
            }
        }
    }

    /// Called when a value node starts: sequence items and the root are located by their start.
    /// Returns the node the value is.
    fn begin_node(&mut self, pos: Position) -> NodeId {
        match self.stack.last() {
            None => {
                self.index.root.get_or_insert(pos);
                ROOT
            }
            Some(Frame::Sequence { node, next }) => {
                let key = (*node, next.to_string());
                let item = self.fresh_id();
                self.index.children.entry(key).or_insert((item, pos)).0
            }
            Some(Frame::Mapping { .. }) => self.current,
        }
    }

    /// Called when a value node ends: leaves its key or index.
    fn end_node(&mut self) {
        match self.stack.last_mut() {
            None => {}
            Some(Frame::Mapping { expecting_key, .. }) => *expecting_key = true,
            Some(Frame::Sequence { next, .. }) => *next += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use saphyr_parser::Parser;

    use super::*;

    fn build(text: &str) -> KeyIndex {
        let mut walker = Walker::new();
        for event in Parser::new_from_str(text) {
            let (event, span) = event.unwrap();
            walker.event(&event, span);
        }
        walker.finish()
    }

    fn at(index: &KeyIndex, path: &[&str]) -> (usize, usize) {
        let path: Vec<String> = path.iter().map(|s| (*s).to_owned()).collect();
        let pos = index.locate(&path);
        (pos.line, pos.col)
    }

    #[test]
    fn index_should_locate_keys_items_and_missing_keys() {
        let text = "a:\n  b: 1\n  list:\n    - x\n    - {c: 2}\nd: [1, 2]\n";
        let index = build(text);
        assert_eq!(at(&index, &[]), (1, 1));
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
        let index = build(text);
        assert_eq!(at(&index, &["k"]), (3, 1));
        assert_eq!(index.duplicates.len(), 1);
        assert_eq!(index.duplicates[0].key, "k");
        assert_eq!(index.duplicates[0].at, Position { line: 4, col: 1 });
        assert_eq!(index.duplicates[0].first, Position { line: 3, col: 1 });
    }

    #[test]
    fn index_should_find_duplicates_at_any_depth_but_not_across_mappings() {
        let text = "a:\n  x: 1\n  y: {x: 1, x: 2}\nb:\n  x: 1\n";
        let index = build(text);
        assert_eq!(index.duplicates.len(), 1);
        assert_eq!(index.duplicates[0].at, Position { line: 3, col: 13 });
        assert_eq!(at(&index, &["b", "x"]), (5, 3));
    }

    #[test]
    fn index_should_tell_an_empty_mapping_from_a_missing_or_null_one() {
        assert!(build("forges: {}\n").is_empty_mapping("forges"));
        assert!(!build("forges:\n").is_empty_mapping("forges"));
        assert!(!build("forges: {a: 1}\n").is_empty_mapping("forges"));
        assert!(!build("other: {}\n").is_empty_mapping("forges"));
        assert!(!build("a: {forges: {}}\n").is_empty_mapping("forges"));
    }

    #[test]
    fn index_of_deep_nesting_should_hold_one_entry_per_node() {
        let depth = 2_000;
        let index = build(&"- ".repeat(depth));
        assert_eq!(index.children.len(), depth);
        let path: Vec<String> = vec!["0".to_owned(); depth];
        assert_eq!(index.locate(&path).line, 1);
    }
}
