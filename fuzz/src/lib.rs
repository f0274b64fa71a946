//! Helpers shared by the fuzz targets: how a fuzzer's byte string is cut into the inputs of
//! each entry point. `seed.py` writes the seed corpus in the same formats.

use std::future::Future;

use reconix_forge::Headers;
use reconix_spec::ForgeKind;

/// Returns the forge kind a selector byte names: GitHub, GitLab and Gitea in turn.
pub fn forge_kind(selector: u8) -> ForgeKind {
    match selector % 3 {
        0 => ForgeKind::Github,
        1 => ForgeKind::Gitlab,
        _ => ForgeKind::Gitea,
    }
}

/// Cuts a delivery written as an HTTP message without its request line: `Name: value` lines,
/// an empty line, then the body. A header line without a colon is skipped; bytes that are not
/// UTF-8 are replaced, as the web intake only passes UTF-8 header values on.
pub fn split_delivery(data: &[u8]) -> (Headers, &[u8]) {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (data, &data[data.len()..]),
    };
    let mut headers = Headers::new();
    for line in head.split(|&b| b == b'\n') {
        let line = String::from_utf8_lossy(line);
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name, value);
        }
    }
    (headers, body)
}

/// Returns the delivery with every header name in upper case (names are case-insensitive).
pub fn upper_case_names(data: &[u8]) -> Vec<u8> {
    let end = data
        .windows(2)
        .position(|w| w == b"\n\n")
        .unwrap_or(data.len());
    let mut out = data.to_vec();
    let mut in_name = true;
    for b in &mut out[..end] {
        match *b {
            b'\n' => in_name = true,
            b':' => in_name = false,
            _ if in_name => b.make_ascii_uppercase(),
            _ => {}
        }
    }
    out
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime without IO drivers can be built");
}

/// Runs a future to completion on a per-thread current-thread runtime. The inputs are byte
/// slices, so nothing ever waits on IO.
pub fn block_on<F: Future>(future: F) -> F::Output {
    RUNTIME.with(|rt| rt.block_on(future))
}
