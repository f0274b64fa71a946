//! `reconix_nixcli::parse`: what Nix prints about code under test, which a flake's author
//! controls: `.drv` files (`parse_derivation`: names, environment, `requiredSystemFeatures`),
//! build stderr in `internal-json` format (`parse_log_line`, `render_lines`, `strip_ansi`) and
//! the evaluator's JSON (`parse_names`, `parse_result`: attribute names are the author's). Input: a
//! selector byte (0 `.drv`, 1 stderr, 2 evaluation JSON), then the text.
//!
//! Checks: no panic; parsed features are sorted, unique and non-empty; text after
//! `strip_ansi` holds no escape character or carriage return (so a builder cannot rewrite the
//! log it is shown in).
#![no_main]

use libfuzzer_sys::fuzz_target;
use reconix_nixcli::parse::aterm::parse_derivation;
use reconix_nixcli::parse::eval::{parse_names, parse_result};
use reconix_nixcli::parse::log::{LogLine, parse_log_line, render_lines};
use reconix_nixcli::parse::stderr::strip_ansi;

fn clean(text: &str) {
    assert!(!text.contains(['\x1b', '\r']), "{text:?}");
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 3 {
        0 => {
            if let Ok(drv) = parse_derivation(rest) {
                let features = &drv.required_features;
                assert!(features.windows(2).all(|w| w[0] < w[1]), "{features:?}");
                assert!(features.iter().all(|f| !f.is_empty()));
            }
        }
        1 => {
            let text = String::from_utf8_lossy(rest);
            clean(&strip_ansi(&text));
            for line in text.lines().take(64) {
                if let LogLine::Error { text, message } = parse_log_line(line) {
                    clean(&text);
                    clean(&message);
                }
            }
            render_lines(rest);
        }
        _ => {
            let Ok(json) = std::str::from_utf8(rest) else {
                return;
            };
            let _ = parse_names(json);
            let _ = parse_result(json);
        }
    }
});
