//! `reconix_nixcli::serve::ServeClient`: everything the coordinator reads from a serve peer
//! (a remote agent's `nix-store --serve --write`): the handshake, then replies to
//! `cmdBuildPaths`, `cmdQueryValidPaths`, `cmdQueryClosure`, `cmdBuildDerivation` and
//! `cmdExportPaths`. Input: two bytes choosing up to four commands (one per nibble, in order;
//! a nibble past the last command ends the list), then everything the peer sends. What the
//! client writes goes to a sink.
//!
//! Checks: no panic; an export answer returns only paths that were asked for, each once.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use reconix_nixcli::serve::{BasicDerivation, BuildSettings, ServeClient};

/// The paths `cmdExportPaths` asks for; the seed corpus holds export streams of them.
const ASKED: [&str; 3] = [
    "/nix/store/00000000000000000000000000000000-a",
    "/nix/store/11111111111111111111111111111111-b",
    "/nix/store/22222222222222222222222222222222-c",
];

async fn run(commands: [u8; 4], mut peer: &[u8]) {
    let Ok(mut client) = ServeClient::handshake(&mut peer, tokio::io::sink()).await else {
        return;
    };
    let settings = BuildSettings::default();
    for command in commands {
        let ok = match command {
            0 => client.build_paths(&ASKED[..1], &settings).await.is_ok(),
            1 => client.query_valid_paths(&ASKED, true, false).await.is_ok(),
            2 => client.query_closure(&ASKED, false).await.is_ok(),
            3 => {
                let drv = BasicDerivation::default();
                client
                    .build_derivation(ASKED[0], &drv, &settings)
                    .await
                    .is_ok()
            }
            4 => match client.export_paths(&ASKED, &mut tokio::io::sink()).await {
                Ok(paths) => {
                    let mut seen = HashSet::new();
                    for path in &paths {
                        assert!(ASKED.contains(&path.as_str()), "{path} was not asked for");
                        assert!(seen.insert(path.as_str()), "{path} returned twice");
                    }
                    true
                }
                Err(_) => false,
            },
            _ => return,
        };
        // After an error the stream is out of step: the caller drops the connection.
        if !ok {
            return;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [a, b, peer @ ..] = data else {
        return;
    };
    let commands = [a & 15, a >> 4, b & 15, b >> 4];
    reconix_fuzz::block_on(run(commands, peer));
});
