//! The first pass over a spec's text, before any other parser sees it: one stream of
//! saphyr-parser events that refuses what could stall the daemon, and indexes key positions
//! on the way.
//!
//! yaml_serde (libyaml) is quadratic in the depth of flow nesting: for every token its scanner
//! walks the stack of possible simple keys, one per open `[` or `{`, so 40,000 levels of
//! `a: [` take 32 s (measured, `docs/benchmarks.md`). It also keeps every event of the document
//! in memory (about 300 bytes per node) and expands every alias into a typed field anew. So it
//! only ever sees text that this pass has read to the end: at most [`MAX_SPEC_DEPTH`] levels
//! deep and [`MAX_SPEC_NODES`] nodes, aliases counted as copies of their anchor. saphyr is
//! linear and streams, so the pass stops where a limit is crossed, after reading no more than
//! the text up to there. A syntax error saphyr finds is reported as such: libyaml would read on
//! past it, unchecked (but see `load.rs`, which lets libyaml word the error when it can do so
//! from the text up to the end of that line).

use std::collections::HashMap;

use saphyr_parser::{Event, Marker, Parser, ScalarStyle};

use crate::limits::{MAX_SPEC_DEPTH, MAX_SPEC_NODES};
use crate::locate::{KeyIndex, Position, Walker};
use crate::refusal::{Refusal, RefusalKind};

/// What the pass counts while it reads.
struct Counter {
    /// Open collections, each with the anchor it carries and the node count before it.
    open: Vec<Option<(usize, usize)>>,
    /// Nodes so far, an alias counting as many as its anchor holds.
    nodes: usize,
    /// The size of every anchor whose node has ended, by saphyr's anchor id.
    anchors: HashMap<usize, usize>,
    documents: usize,
    /// Whether the first document holds anything but an empty plain scalar (what `---` alone
    /// gives).
    content: bool,
}

/// Reads `text` to the end (or to the first problem) and returns where its keys are.
///
/// # Errors
/// Returns the first of: a syntax error, a collection nested deeper than [`MAX_SPEC_DEPTH`],
/// more than [`MAX_SPEC_NODES`] nodes, an alias inside its own anchor, a second document, or a
/// document without content.
pub(crate) fn scan(text: &str) -> Result<KeyIndex, Refusal> {
    let mut walker = Walker::new();
    let mut count = Counter {
        open: Vec::new(),
        nodes: 0,
        anchors: HashMap::new(),
        documents: 0,
        content: false,
    };
    // Where the last event ended: the scanner may have read further.
    let mut seen = Marker::new(0, 1, 0);
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|err| {
            let mark = *err.marker();
            if err.info() == SAPHYR_FLOW_LIMIT {
                let at = crossing(text, seen, count.open.len(), mark).unwrap_or(Position {
                    line: mark.line(),
                    col: mark.col() + 1,
                });
                return too_deep(at);
            }
            let at = Position {
                line: mark.line(),
                col: mark.col() + 1,
            };
            Refusal {
                kind: RefusalKind::Syntax,
                ..Refusal::new(at, err.info())
            }
        })?;
        count.event(&event, Position::of(span))?;
        walker.event(&event, span);
        seen = span.end;
    }
    if !count.content {
        return Err(Refusal::new(
            Position::START,
            "the spec is empty (only whitespace or comments); a spec that builds nothing \
             says `forges: {}`",
        ));
    }
    Ok(walker.finish())
}

fn too_deep(at: Position) -> Refusal {
    Refusal::new(
        at,
        format!(
            "the spec nests deeper than {MAX_SPEC_DEPTH} levels of mappings and sequences, the \
             most reconix reads (a real spec needs fewer than 10)"
        ),
    )
}

/// saphyr's error when its scanner's flow level (a `u8`) overflows: more than 255 open `[`/`{`.
const SAPHYR_FLOW_LIMIT: &str = "recursion limit exceeded";

/// Returns where the flow collection that crosses [`MAX_SPEC_DEPTH`] opens, when saphyr's
/// scanner failed at `failed` on more than 255 open `[` or `{`.
///
/// saphyr gives an event only once it knows whether the node is an implicit key, so its
/// scanner reads up to the end of the line (1024 characters at most) ahead of the events: on a
/// line of `[[[…` it fails at the 256th level before any event reaches the 33rd. Everything
/// between the end of the last event (`from`, at `depth` open collections) and `failed` is
/// tokens saphyr accepted in flow context, where a `[` or `{` outside quotes and comments
/// always opens a collection. A single-pair mapping in a flow sequence (`[a: b]`) has no
/// bracket and is not counted, so the position found may be a little late. Returns `None` if
/// the count does not get there (the caller then uses where saphyr failed).
fn crossing(text: &str, from: Marker, depth: usize, failed: Marker) -> Option<Position> {
    let (mut line, mut col, mut depth) = (from.line(), from.col() + 1, depth);
    let mut quote: Option<char> = None;
    let mut comment = false;
    let mut previous = ' ';
    let mut chars = text.chars().skip(from.index()).peekable();
    let mut index = from.index();
    while index < failed.index() {
        let c = chars.next()?;
        match (quote, c) {
            _ if comment => comment = c != '\n',
            (Some('\''), '\'') if chars.peek() == Some(&'\'') => {
                chars.next();
                index += 1;
                col += 1;
            }
            (Some('"'), '\\') => {
                chars.next();
                index += 1;
                col += 1;
            }
            (Some(open), c) if c == open => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '#') if previous.is_whitespace() => comment = true,
            (None, '[' | '{') => {
                depth += 1;
                if depth > MAX_SPEC_DEPTH {
                    return Some(Position { line, col });
                }
            }
            (None, ']' | '}') => depth = depth.saturating_sub(1),
            (None, _) => {}
        }
        if c == '\n' {
            line += 1;
            col = 1;
        } else {
            col += 1;
        }
        previous = c;
        index += 1;
    }
    None
}

impl Counter {
    fn event(&mut self, event: &Event<'_>, at: Position) -> Result<(), Refusal> {
        match event {
            Event::DocumentStart(_) => {
                self.documents += 1;
                if self.documents > 1 {
                    return Err(Refusal::new(
                        at,
                        "a second YAML document starts here; a spec is a single document",
                    ));
                }
            }
            Event::MappingStart(anchor, _) | Event::SequenceStart(anchor, _) => {
                self.content = true;
                if self.open.len() >= MAX_SPEC_DEPTH {
                    return Err(too_deep(at));
                }
                let before = self.nodes;
                self.add(1, at)?;
                self.open.push((*anchor > 0).then_some((*anchor, before)));
            }
            Event::MappingEnd | Event::SequenceEnd => {
                if let Some(Some((anchor, before))) = self.open.pop() {
                    self.anchors.insert(anchor, self.nodes - before);
                }
            }
            Event::Scalar(value, style, anchor, tag) => {
                let empty = value.is_empty() && *style == ScalarStyle::Plain && tag.is_none();
                if !empty || *anchor > 0 {
                    self.content = true;
                }
                self.add(1, at)?;
                if *anchor > 0 {
                    self.anchors.insert(*anchor, 1);
                }
            }
            Event::Alias(anchor) => {
                self.content = true;
                // saphyr names an anchor as its node starts, so an alias inside that node finds
                // it still open: expanding it would never end (libyaml recurses until serde's
                // recursion limit, copying the anchor at every level).
                let Some(&size) = self.anchors.get(anchor) else {
                    return Err(Refusal::new(
                        at,
                        "this alias refers to a node that contains it",
                    ));
                };
                self.add(size, at)?;
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
        Ok(())
    }

    /// Counts `nodes` more nodes, refusing the one that crosses [`MAX_SPEC_NODES`].
    fn add(&mut self, nodes: usize, at: Position) -> Result<(), Refusal> {
        self.nodes = self.nodes.saturating_add(nodes);
        if self.nodes > MAX_SPEC_NODES {
            return Err(Refusal::new(
                at,
                format!(
                    "the spec has more than {MAX_SPEC_NODES} YAML nodes (keys and values, an \
                     alias counting as a copy of its anchor), the most reconix reads"
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::{MAX_SPEC_BYTES, MAX_SPEC_DEPTH, MAX_SPEC_NODES, parse};

    /// Returns the only error of `text` as `LINE:COL: message`.
    #[track_caller]
    fn only_error(text: &str) -> String {
        let errors = parse(text, Path::new("/etc/reconix/spec.yaml"))
            .expect_err("spec accepted")
            .into_vec();
        assert_eq!(errors.len(), 1, "{errors:#?}");
        format!(
            "{}:{}: {}",
            errors[0].line, errors[0].col, errors[0].message
        )
    }

    #[track_caller]
    fn assert_refused(text: &str, position: &str, needle: &str) {
        let error = only_error(text);
        assert!(
            error.starts_with(&format!("{position}: ")) && error.contains(needle),
            "expected `{position}: …{needle}…`, got `{error}`"
        );
    }

    const TOO_DEEP: &str = "the spec nests deeper than 32 levels";

    #[test]
    fn deep_flow_sequences_should_be_refused_where_they_cross_the_limit() {
        // 100,000 levels: libyaml alone took over a minute on this.
        assert_refused(&"[".repeat(100_000), "1:33", TOO_DEEP);
        let closed = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_refused(&closed, "1:33", TOO_DEEP);
        // Each `a: [` inside a sequence is a sequence holding a single-pair mapping: two levels,
        // the mapping starting at its key.
        assert_refused(&"a: [".repeat(100_000), "1:65", TOO_DEEP);
    }

    #[test]
    fn a_million_flow_mappings_should_be_refused_where_they_cross_the_limit() {
        assert_refused(&"{".repeat(1_000_000), "1:33", TOO_DEEP);
    }

    #[test]
    fn deep_block_mappings_should_be_refused_where_they_cross_the_limit() {
        // `a:` on line 1, ` a:` on line 2, …: level n starts at line n, column n.
        let text: String = (0..1_000)
            .map(|i| format!("{}a:\n", " ".repeat(i)))
            .collect();
        assert_refused(&text, "33:33", TOO_DEEP);
    }

    #[test]
    fn deep_block_sequences_should_be_refused_where_they_cross_the_limit() {
        assert_refused(&"- ".repeat(100_000), "1:65", TOO_DEEP);
        let text: String = (0..1_000)
            .map(|i| format!("{}-\n", " ".repeat(i)))
            .collect();
        assert_refused(&text, "33:33", TOO_DEEP);
    }

    #[test]
    fn nesting_up_to_the_limit_should_pass_the_first_pass() {
        let text = format!(
            "{}{}",
            "[".repeat(MAX_SPEC_DEPTH),
            "]".repeat(MAX_SPEC_DEPTH)
        );
        assert_refused(&text, "1:1", "invalid type: sequence, expected struct Spec");
    }

    #[test]
    fn text_over_the_size_limit_should_be_refused_where_the_limit_falls() {
        // `k: v\n` is 5 bytes: byte MAX_SPEC_BYTES is on line MAX/5 + 1, column MAX%5 + 1.
        let text = "k: v\n".repeat(MAX_SPEC_BYTES / 5 + 10);
        let position = format!("{}:{}", MAX_SPEC_BYTES / 5 + 1, MAX_SPEC_BYTES % 5 + 1);
        assert_refused(&text, &position, "the spec is larger than 1 MiB");
        // 5,000 levels of block mappings, 25 MB: refused before any parser runs.
        let text: String = (0..5_000)
            .map(|i| format!("{}a:\n", "  ".repeat(i)))
            .collect();
        assert!(text.len() > 20_000_000);
        assert!(only_error(&text).contains("the spec is larger than 1 MiB"));
    }

    #[test]
    fn text_at_the_size_limit_should_be_read() {
        let padding = MAX_SPEC_BYTES - "{}\n".len();
        let text = format!("{}{{}}\n", "#".repeat(padding - 1) + "\n");
        assert_eq!(text.len(), MAX_SPEC_BYTES);
        assert!(parse(&text, Path::new("/etc/r/spec.yaml")).is_ok());
    }

    #[test]
    fn too_many_nodes_should_be_refused_at_the_node_that_crosses_the_limit() {
        // Two nodes per item: `[0, 0, …]` holds the sequence and its items.
        let text = format!("[{}]", vec!["0"; MAX_SPEC_NODES].join(","));
        assert_refused(
            &text,
            &format!("1:{}", 2 * MAX_SPEC_NODES),
            "the spec has more than 100000 YAML nodes",
        );
    }

    #[test]
    fn aliases_that_multiply_an_anchor_should_count_as_copies() {
        // A "billion laughs": each level repeats the one before ten times.
        let mut text = String::from("l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..9 {
            let aliases = vec![format!("*l{}", level - 1); 10].join(", ");
            text.push_str(&format!("l{level}: &l{level} [{aliases}]\n"));
        }
        // l0 holds 11 nodes, l1 111, l2 1,111, l3 11,111; with their keys, 12,348 before line
        // 5, where the eighth `*l3` (column 45) crosses 100,000.
        assert_refused(&text, "5:45", "an alias counting as a copy of its anchor");
    }

    #[test]
    fn aliases_within_the_limit_should_be_accepted() {
        let text = "forges:\n  here:\n    kind: local\n    repos:\n      \
                    a: {path: /srv/a, branches: &b [main, release/*]}\n      \
                    b: {path: /srv/b, branches: *b}\n";
        let spec = parse(text, Path::new("/etc/r/spec.yaml")).unwrap();
        let branches: Vec<_> = spec
            .repos()
            .map(|(_, _, repo)| repo.branches.clone())
            .collect();
        assert_eq!(branches[0], branches[1]);
    }

    #[test]
    fn alias_inside_its_own_anchor_should_be_refused() {
        assert_refused(
            "a: &x [1, *x]\n",
            "1:11",
            "this alias refers to a node that contains it",
        );
    }

    #[test]
    fn syntax_errors_should_keep_libyamls_words_when_it_finds_them_on_the_line() {
        assert_refused(
            "forges: [here\nlisten: x\n",
            "2:7",
            "did not find expected ',' or ']'",
        );
        assert_refused("a: b\n  c: d\n", "2:4", "mapping values are not allowed");
    }

    #[test]
    fn syntax_errors_libyaml_would_read_past_should_be_saphyrs() {
        // libyaml would read to the end of the text looking for the closing quote, and past it
        // into 100,000 levels of nesting; saphyr stops at the quote.
        let text = format!("a: \"open\nb: {}", "[".repeat(100_000));
        assert_refused(&text, "1:4", "invalid indentation in quoted scalar");
    }
}
