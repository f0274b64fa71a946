//! `reconix_nixcli::serve::nar`: the streaming NAR and export-stream walkers every byte from a
//! serve peer (a remote agent's `cmdExportPaths` answer) or a local `nix store dump-path` goes
//! through. Input: a mode byte (bit 0-1: NAR, export stream accepting every path, export stream
//! accepting some), a limits byte (small limits or the defaults), then the stream.
//!
//! Checks: no panic; the walker copies exactly the bytes it read and no more (the output is
//! the input's prefix of the returned size); an export stream stopped at an unwanted path has
//! copied that path's NAR but none of its metadata, so an importer cannot register it; only
//! accepted paths are returned.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reconix_nixcli::serve::NarLimits;
use reconix_nixcli::serve::nar::{EXPORT_MAGIC, NarError, copy_export, copy_nar};
use reconix_spec::names::StorePath;

fn limits(selector: u8) -> NarLimits {
    if selector & 1 == 0 {
        NarLimits::default()
    } else {
        NarLimits {
            max_nar_size: u64::from(selector) * 64,
            max_depth: usize::from(selector >> 5) + 1,
            max_name_len: u64::from(selector >> 1),
            max_target_len: u64::from(selector >> 2),
        }
    }
}

/// Accepts about half of all paths, deterministically.
fn some(path: &StorePath) -> bool {
    path.as_str().bytes().fold(0u8, |a, b| a ^ b) & 1 == 0
}

fuzz_target!(|data: &[u8]| {
    let [mode, limit, stream @ ..] = data else {
        return;
    };
    let limits = limits(*limit);
    let mut reader = stream;
    let mut out = Vec::new();
    match mode & 3 {
        0 | 3 => {
            let result = reconix_fuzz::block_on(copy_nar(&mut reader, &mut out, &limits));
            let consumed = stream.len() - reader.len();
            if let Ok(size) = result {
                assert_eq!(size, consumed as u64, "size is what was read");
                assert!(size <= limits.max_nar_size);
                assert_eq!(out, stream[..consumed], "output is what was read");
            } else {
                assert!(stream.starts_with(&out), "output is a prefix of the input");
            }
        }
        mode => {
            let accept_all = mode == 1;
            let result = reconix_fuzz::block_on(copy_export(&mut reader, &mut out, &limits, |p| {
                accept_all || some(p)
            }));
            let consumed = stream.len() - reader.len();
            assert!(stream.starts_with(&out), "output is a prefix of the input");
            match result {
                Ok(paths) => {
                    assert_eq!(out, stream[..consumed], "output is what was read");
                    assert!(accept_all || paths.iter().all(some));
                }
                Err(NarError::UnexpectedPath { path }) => {
                    assert!(!accept_all && !some(&path));
                    // The output stops right after the NAR: the next word read was the magic
                    // that starts the held-back metadata.
                    let next = &stream[out.len()..];
                    assert!(
                        next.starts_with(&EXPORT_MAGIC.to_le_bytes()),
                        "metadata of a refused path was written"
                    );
                }
                Err(_) => {}
            }
        }
    }
});
