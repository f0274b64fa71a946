//! Extracts the error message from Nix's stderr.
//!
//! Nix prints `error: <message>` followed by optional detail (location, code excerpt, trace).
//! On a terminal, and always in `internal-json` messages, the text carries ANSI colour codes.
//! `error (ignored): …` lines report problems Nix recovered from and are never the message.

/// Returns `text` without ANSI escape sequences (CSI such as colours and `ESC [ K`, OSC, and
/// two-byte escapes) and without carriage returns.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                // CSI: parameters and intermediates, then one final byte in @..~.
                Some('[') => {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC: ends with BEL or ESC \.
                Some(']') => {
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' {
                            break;
                        }
                        if c == '\u{1b}' && chars.peek() == Some(&'\\') {
                            chars.next();
                            break;
                        }
                    }
                }
                // Any other escape is two characters long.
                _ => {}
            },
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// Returns the message of the first `error:` line of Nix's stderr, without the `error: ` prefix
/// and with ANSI codes stripped; `None` when there is none.
///
/// `error (ignored):` lines are skipped. When the `error:` line itself is empty, the message is
/// taken from the following lines: a nested `error:` line if there is one (the layout of newer
/// Nix versions, with a trace in between), otherwise the first non-blank line.
pub fn first_error_line(stderr: &str) -> Option<String> {
    let text = strip_ansi(stderr);
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(rest) = line.trim_start().strip_prefix("error:") else {
            continue;
        };
        let rest = rest.trim();
        if !rest.is_empty() {
            return Some(rest.to_owned());
        }
        let following: Vec<&str> = lines
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("error (ignored):"))
            .collect();
        let nested = following.iter().find_map(|l| {
            l.strip_prefix("error:")
                .map(str::trim)
                .filter(|m| !m.is_empty())
        });
        return nested
            .or_else(|| following.first().copied())
            .map(str::to_owned);
    }
    None
}

/// Returns the last non-blank line of `stderr` (ANSI stripped), as a fallback message for
/// failures that print no `error:` line.
pub fn last_line(stderr: &str) -> Option<String> {
    strip_ansi(stderr)
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let path = format!(
            "{}/tests/fixtures/stderr/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn strip_ansi_should_remove_colours_erase_codes_and_carriage_returns() {
        let raw = "\r\u{1b}[0m\u{1b}[K\r\u{1b}[K\u{1b}[31;1merror:\u{1b}[0m boom\u{1b}[0m\r\n";
        assert_eq!(strip_ansi(raw), "error: boom\n");
        assert_eq!(
            strip_ansi("a\u{1b}]8;;http://x\u{7}b\u{1b}]8;;\u{1b}\\c"),
            "abc"
        );
        assert_eq!(strip_ansi("plain ✓ text"), "plain ✓ text");
    }

    #[test]
    fn first_error_line_should_return_the_message_of_each_captured_eval_error() {
        let cases = [
            ("throw.txt", "intentional eval error"),
            (
                "abort.txt",
                "evaluation aborted with the following error message: 'intentional abort'",
            ),
            ("missing-attribute.txt", "attribute 'nope' missing"),
            ("type-error.txt", "cannot add a string to an integer"),
            ("assert.txt", "assertion '(1 == 2)' failed"),
            ("throw-in-dependency.txt", "inner dep threw"),
            ("multi-line-throw.txt", "first line"),
            (
                "pure-eval-read.txt",
                "access to absolute path '/etc/hostname' is forbidden in pure eval mode \
                 (use '--impure' to override)",
            ),
            (
                "unlocked-flake.txt",
                "cannot call 'getFlake' on unlocked flake reference \
                 'git+file:///tmp/reconix-nixcli-fixtures/demo?ref=refs/heads/main', \
                 at (string):1:173 (use --impure to override)",
            ),
            (
                "no-flake-nix.txt",
                "getting status of \
                 '/nix/store/65zcvvhkmn3hn7b5f7ccphxr05bx35xi-source/flake.nix': \
                 No such file or directory",
            ),
            (
                "syntax-error.txt",
                "syntax error, unexpected '}', expecting ';'",
            ),
            (
                "nixos-without-config.txt",
                "attribute 'config' missing \
                 (looking up 'nixosConfigurations.broken.config.system.build.toplevel')",
            ),
        ];
        for (file, expected) in cases {
            assert_eq!(
                first_error_line(&fixture(file)).as_deref(),
                Some(expected),
                "{file}"
            );
        }
    }

    #[test]
    fn first_error_line_should_strip_ansi_captured_from_a_terminal() {
        assert_eq!(
            first_error_line(&fixture("throw-tty.txt")).as_deref(),
            Some("thrown from env")
        );
        assert_eq!(
            first_error_line(&fixture("missing-builder-tty.txt")).as_deref(),
            Some("required attribute 'builder' missing")
        );
    }

    #[test]
    fn first_error_line_should_skip_ignored_errors() {
        assert_eq!(
            first_error_line(&fixture("ignored-then-error.txt")).as_deref(),
            Some("intentional eval error")
        );
    }

    #[test]
    fn first_error_line_should_take_the_message_from_following_lines_when_the_error_line_is_empty()
    {
        assert_eq!(
            first_error_line(&fixture("message-on-next-line.txt")).as_deref(),
            Some("intentional eval error")
        );
        assert_eq!(
            first_error_line("error:\n\n       something went wrong\n").as_deref(),
            Some("something went wrong")
        );
    }

    #[test]
    fn first_error_line_should_be_none_without_an_error_line() {
        // `throw ""` really prints nothing but a blank line in Nix 2.8.
        assert_eq!(first_error_line(&fixture("empty-throw.txt")), None);
        assert_eq!(first_error_line("warning: something\n"), None);
        assert_eq!(first_error_line("error (ignored): error: x\n"), None);
    }

    #[test]
    fn last_line_should_skip_trailing_blank_lines() {
        assert_eq!(last_line("a\nb\n\n  \n").as_deref(), Some("b"));
        assert_eq!(last_line(""), None);
    }
}
