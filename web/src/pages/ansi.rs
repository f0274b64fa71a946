//! Converts build-log text with ANSI escape sequences to HTML: SGR colours (30–37, 90–97),
//! bold and reset become `<span class="…">`; every other escape sequence and control character
//! is dropped; all text is HTML-escaped.
//!
//! The converter is streaming: the live log feeds it chunk by chunk, and a colour set in one
//! chunk carries over to the next (each chunk's HTML is closed on its own, so it can be appended
//! to the page as it comes).

/// The colour and weight in effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Style {
    /// The foreground colour, 0–7 normal and 8–15 bright.
    fg: Option<u8>,
    bold: bool,
}

impl Style {
    fn is_plain(self) -> bool {
        self == Self::default()
    }

    fn open(self, out: &mut String) {
        out.push_str("<span class=\"");
        let mut sep = "";
        if let Some(fg) = self.fg {
            out.push_str("ansi-fg");
            out.push_str(&fg.to_string());
            sep = " ";
        }
        if self.bold {
            out.push_str(sep);
            out.push_str("ansi-bold");
        }
        out.push_str("\">");
    }
}

/// Where the parser is inside an escape sequence.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
enum Parse {
    /// Plain text.
    #[default]
    Text,
    /// After ESC.
    Escape,
    /// Inside `ESC [`, collecting parameter bytes.
    Csi(String),
    /// Inside `ESC ]` (operating system command), until BEL or `ESC \`.
    Osc,
    /// After ESC inside an OSC: `\` ends it.
    OscEscape,
    /// After ESC and intermediate bytes (e.g. `ESC ( B`), until a final byte.
    Intermediate,
}

/// A streaming ANSI-to-HTML converter.
#[derive(Debug, Default)]
pub(crate) struct AnsiHtml {
    /// The style set by the escape sequences seen so far.
    style: Style,
    /// The style of the span currently open in the output (plain: none open).
    open: Style,
    parse: Parse,
}

impl AnsiHtml {
    /// Creates a converter in the plain style.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Converts `text` and appends the HTML to `out`, leaving no span open; an escape sequence
    /// cut at the end of `text` is completed by the next call.
    pub(crate) fn push(&mut self, text: &str, out: &mut String) {
        for c in text.chars() {
            self.char(c, out);
        }
        self.close(out);
    }

    /// Returns the HTML of a whole text.
    pub(crate) fn convert(text: &str) -> String {
        let mut out = String::with_capacity(text.len() + text.len() / 8);
        Self::new().push(text, &mut out);
        out
    }

    fn close(&mut self, out: &mut String) {
        if !self.open.is_plain() {
            out.push_str("</span>");
            self.open = Style::default();
        }
    }

    fn char(&mut self, c: char, out: &mut String) {
        match std::mem::take(&mut self.parse) {
            Parse::Text => match c {
                '\x1b' => self.parse = Parse::Escape,
                '\n' | '\t' => out.push(c),
                c if c.is_control() => {}
                c => {
                    if self.open != self.style {
                        self.close(out);
                        if !self.style.is_plain() {
                            self.style.open(out);
                            self.open = self.style;
                        }
                    }
                    match c {
                        '&' => out.push_str("&amp;"),
                        '<' => out.push_str("&lt;"),
                        '>' => out.push_str("&gt;"),
                        '"' => out.push_str("&quot;"),
                        '\'' => out.push_str("&#39;"),
                        c => out.push(c),
                    }
                }
            },
            Parse::Escape => {
                self.parse = match c {
                    '[' => Parse::Csi(String::new()),
                    ']' => Parse::Osc,
                    ' '..='/' => Parse::Intermediate,
                    // A two-character sequence (`ESC 7`, `ESC M`, …): dropped.
                    _ => Parse::Text,
                }
            }
            Parse::Csi(mut params) => match c {
                // Parameter and intermediate bytes; anything longer than a sane SGR is junk.
                ' '..='?' => {
                    if params.len() < 64 {
                        params.push(c);
                    }
                    self.parse = Parse::Csi(params);
                }
                'm' => {
                    self.sgr(&params);
                    // Close at once, so that a reset before a newline ends the span before it;
                    // a new span opens only when text follows.
                    if self.open != self.style {
                        self.close(out);
                    }
                }
                // Any other final byte (cursor movement, erase, …) or a malformed sequence.
                _ => {}
            },
            Parse::Osc => {
                self.parse = match c {
                    '\x07' => Parse::Text,
                    '\x1b' => Parse::OscEscape,
                    _ => Parse::Osc,
                }
            }
            Parse::OscEscape => self.parse = if c == '\\' { Parse::Text } else { Parse::Osc },
            Parse::Intermediate => {
                if (' '..='/').contains(&c) {
                    self.parse = Parse::Intermediate;
                }
            }
        }
    }

    /// Applies an SGR parameter list such as `1;31` (empty means reset).
    fn sgr(&mut self, params: &str) {
        let mut codes = params.split([';', ':']).map(|p| {
            if p.is_empty() {
                Some(0)
            } else {
                p.parse::<u16>().ok()
            }
        });
        while let Some(code) = codes.next() {
            match code {
                Some(0) => self.style = Style::default(),
                Some(1) => self.style.bold = true,
                Some(22) => self.style.bold = false,
                Some(n @ 30..=37) => self.style.fg = u8::try_from(n - 30).ok(),
                Some(n @ 90..=97) => self.style.fg = u8::try_from(n - 90 + 8).ok(),
                Some(39) => self.style.fg = None,
                // 256-colour and true-colour forms: skip their arguments so that they are not
                // read as codes of their own (`38;5;31` is not red).
                Some(38 | 48 | 58) => match codes.next() {
                    Some(Some(5)) => {
                        codes.next();
                    }
                    Some(Some(2)) => {
                        codes.next();
                        codes.next();
                        codes.next();
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::AnsiHtml;

    #[test]
    fn plain_text_should_only_be_escaped() {
        assert_eq!(
            AnsiHtml::convert("a <b> & \"c\" 'd'\n\tok"),
            "a &lt;b&gt; &amp; &quot;c&quot; &#39;d&#39;\n\tok"
        );
    }

    #[test]
    fn colours_bold_and_reset_should_become_spans() {
        assert_eq!(
            AnsiHtml::convert("\x1b[31merror\x1b[0m done"),
            "<span class=\"ansi-fg1\">error</span> done"
        );
        assert_eq!(
            AnsiHtml::convert("\x1b[1;92mok\x1b[22m still green\x1b[m"),
            "<span class=\"ansi-fg10 ansi-bold\">ok</span><span class=\"ansi-fg10\"> still green</span>"
        );
        assert_eq!(
            AnsiHtml::convert("\x1b[1mb\x1b[39mc"),
            "<span class=\"ansi-bold\">bc</span>",
            "a change that keeps the style opens no new span"
        );
    }

    #[test]
    fn a_style_without_text_should_emit_nothing() {
        assert_eq!(AnsiHtml::convert("\x1b[31m\x1b[0m"), "");
        assert_eq!(AnsiHtml::convert("x\x1b[33m"), "x");
    }

    #[test]
    fn other_escape_sequences_and_controls_should_be_stripped() {
        assert_eq!(
            AnsiHtml::convert(
                "a\x1b[2K\x1b[1Ab\r\x1b]0;title\x07c\x1b]8;;http://x\x1b\\d\x1b(Be\x1b7f\x08"
            ),
            "abcdef"
        );
    }

    #[test]
    fn extended_colours_should_not_be_misread_as_basic_codes() {
        assert_eq!(AnsiHtml::convert("\x1b[38;5;31mx"), "x");
        assert_eq!(AnsiHtml::convert("\x1b[38;2;1;31;3mx"), "x");
        assert_eq!(
            AnsiHtml::convert("\x1b[48;5;1;34mx"),
            "<span class=\"ansi-fg4\">x</span>"
        );
    }

    #[test]
    fn markup_inside_coloured_text_should_be_escaped() {
        assert_eq!(
            AnsiHtml::convert("\x1b[35m<script>alert(1)</script>"),
            "<span class=\"ansi-fg5\">&lt;script&gt;alert(1)&lt;/script&gt;</span>"
        );
    }

    #[test]
    fn style_and_cut_sequences_should_carry_over_between_chunks() {
        let mut a = AnsiHtml::new();
        let mut out = String::new();
        a.push("\x1b[3", &mut out);
        assert_eq!(out, "");
        a.push("2mgreen\n", &mut out);
        a.push("still\x1b[0m plain", &mut out);
        assert_eq!(
            out,
            "<span class=\"ansi-fg2\">green\n</span><span class=\"ansi-fg2\">still</span> plain"
        );
    }
}
