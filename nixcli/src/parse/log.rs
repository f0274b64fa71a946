//! Turns `nix-store --log-format internal-json` stderr into plain log text.
//!
//! Builds run with the JSON log format so that Nix's own errors (`msg` events of level 0) can be
//! told apart from builder output: with the plain format a builder printing `error: …` (cargo
//! does) would be mistaken for Nix's message. The build log file still gets plain text: the
//! lines Nix would have printed without `--log-format`.

use serde::Deserialize;

use super::stderr::{first_error_line, strip_ansi};

/// Nix's `lvlInfo`: activities above it (`querying info about missing paths`, …) are not shown
/// by the plain logger either.
const LEVEL_INFO: u8 = 3;
/// Nix's `lvlError`.
const LEVEL_ERROR: u8 = 0;
/// Result types carrying one line of builder output: `resBuildLogLine`, `resPostBuildLogLine`.
const RESULT_LOG_LINES: [u32; 2] = [101, 107];

/// What one stderr line of `nix-store` means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogLine {
    /// Text for the log file.
    Text(String),
    /// An error from Nix: text for the log file, and the message (without `error: `).
    Error {
        /// The line(s) as Nix would print them, ANSI stripped.
        text: String,
        /// The message of its first `error:` line.
        message: String,
    },
    /// Nothing to show (progress, activity bookkeeping).
    Nothing,
}

#[derive(Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
enum Event {
    Msg {
        level: u8,
        msg: String,
    },
    Start {
        #[serde(default)]
        level: u8,
        #[serde(default)]
        text: String,
    },
    Result {
        #[serde(rename = "type")]
        kind: u32,
        #[serde(default)]
        fields: Vec<serde_json::Value>,
    },
    Stop {},
}

/// Interprets one line of `nix-store --log-format internal-json` stderr (without its newline).
///
/// Lines that are not `@nix {…}` events (stdout, or anything unexpected) are kept as text.
pub fn parse_log_line(line: &str) -> LogLine {
    let Some(json) = line.strip_prefix("@nix ") else {
        return LogLine::Text(line.to_owned());
    };
    let Ok(event) = serde_json::from_str::<Event>(json) else {
        return LogLine::Text(line.to_owned());
    };
    match event {
        Event::Msg { level, msg } => {
            let text = strip_ansi(&msg);
            match first_error_line(&text) {
                Some(message) if level == LEVEL_ERROR => LogLine::Error { text, message },
                _ => LogLine::Text(text),
            }
        }
        Event::Start { level, text } if level <= LEVEL_INFO && !text.is_empty() => {
            LogLine::Text(format!("{}...", strip_ansi(&text)))
        }
        Event::Result { kind, fields } if RESULT_LOG_LINES.contains(&kind) => {
            match fields.first().and_then(serde_json::Value::as_str) {
                Some(text) => LogLine::Text(text.to_owned()),
                None => LogLine::Nothing,
            }
        }
        Event::Start { .. } | Event::Result { .. } | Event::Stop {} => LogLine::Nothing,
    }
}

/// Translates complete `internal-json` stderr lines (each ending with a newline) into the
/// plain log text they stand for: builder output as it was printed (colour codes included, which
/// Nix's plain format strips when stderr is not a terminal), Nix's own lines as it would print
/// them, bookkeeping events dropped.
pub fn render_lines(lines: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(lines.len());
    for line in lines.split_inclusive(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        match parse_log_line(&String::from_utf8_lossy(line)) {
            LogLine::Text(text) | LogLine::Error { text, .. } => {
                out.extend_from_slice(text.as_bytes());
                out.push(b'\n');
            }
            LogLine::Nothing => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Translates a captured stderr file into (log text, first error message).
    fn translate(name: &str) -> (String, Option<String>) {
        let path = format!(
            "{}/tests/fixtures/realise/{name}.stderr",
            env!("CARGO_MANIFEST_DIR")
        );
        let mut text = String::new();
        let mut first = None;
        for line in std::fs::read_to_string(path).unwrap().lines() {
            match parse_log_line(line) {
                LogLine::Text(t) => text.push_str(&format!("{t}\n")),
                LogLine::Error { text: t, message } => {
                    text.push_str(&format!("{t}\n"));
                    first.get_or_insert(message);
                }
                LogLine::Nothing => {}
            }
        }
        (text, first)
    }

    #[test]
    fn parse_log_line_should_render_a_successful_build_as_plain_text() {
        let (text, error) = translate("success");
        assert_eq!(error, None);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "these 2 derivations will be built:");
        assert!(lines[3].starts_with("building '/nix/store/"), "{text}");
        assert!(lines[3].ends_with("-a.drv'..."), "{text}");
        assert_eq!(lines[4], "building-a");
        assert!(text.contains("building-b\n"));
        assert!(text.ends_with(
            "warning: you did not specify '--add-root'; the result might be removed by the garbage collector\n"
        ));
        assert!(!text.contains("querying info"));
    }

    #[test]
    fn parse_log_line_should_take_the_message_from_nix_not_from_the_builder() {
        let (text, error) = translate("failing");
        // The builder printed its own `error:` line first.
        assert!(text.contains("about to fail\nerror: printed by the builder\n"));
        let error = error.unwrap();
        assert!(error.starts_with("builder for '/nix/store/"), "{error}");
        assert!(
            error.ends_with("-failing.drv' failed with exit code 3"),
            "{error}"
        );
    }

    #[test]
    fn parse_log_line_should_report_the_failed_dependency_first() {
        let (text, error) = translate("dependency-failed");
        assert!(
            error
                .unwrap()
                .ends_with("-broken-dep.drv' failed with exit code 1")
        );
        assert!(text.contains("1 dependencies of derivation"));
    }

    #[test]
    fn parse_log_line_should_report_timeouts() {
        let (_, error) = translate("timeout");
        assert!(error.unwrap().ends_with("timed out after 1 seconds"));
        let (_, error) = translate("silent");
        assert!(
            error
                .unwrap()
                .ends_with("timed out after 1 seconds of silence")
        );
    }

    #[test]
    fn render_lines_should_keep_builder_colours_and_drop_bookkeeping() {
        let raw = concat!(
            "@nix {\"action\":\"start\",\"id\":1,\"level\":3,\"text\":\"building 'x.drv'\",\"type\":105}\n",
            "@nix {\"action\":\"result\",\"fields\":[0,1,0,0],\"id\":2,\"type\":105}\n",
            "@nix {\"action\":\"result\",\"fields\":[\"\\u001b[31mred\\u001b[0m plain\"],\"id\":1,\"type\":101}\n",
            "@nix {\"action\":\"msg\",\"level\":0,\"msg\":\"\\u001b[31;1merror:\\u001b[0m boom\"}\n",
            "stray\n",
        );
        assert_eq!(
            String::from_utf8(render_lines(raw.as_bytes())).unwrap(),
            "building 'x.drv'...\n\u{1b}[31mred\u{1b}[0m plain\nerror: boom\nstray\n"
        );
        assert!(render_lines(b"").is_empty());
    }

    #[test]
    fn parse_log_line_should_keep_lines_that_are_not_events() {
        assert_eq!(
            parse_log_line("/nix/store/x-b"),
            LogLine::Text("/nix/store/x-b".to_owned())
        );
        assert_eq!(
            parse_log_line("@nix {not json"),
            LogLine::Text("@nix {not json".to_owned())
        );
        assert_eq!(
            parse_log_line(r#"@nix {"action":"stop","id":1}"#),
            LogLine::Nothing
        );
        assert_eq!(
            parse_log_line(r#"@nix {"action":"result","id":1,"type":105,"fields":[1,2,0,0]}"#),
            LogLine::Nothing
        );
    }
}
