//! `reconix_agent::protocol::Message::decode`: the control lines an agent sends the coordinator
//! before and after it is admitted (its hello, then heartbeats). Input: the bytes of the control
//! channel; each line is decoded as the coordinator does.
//!
//! Checks: no panic; a decoded message meets every documented bound; encoding it gives exactly
//! one line, which decodes to the same message (`decode(encode(m)) == m`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use reconix_agent::protocol::{MAX_JOBS, MAX_LIST, MAX_TOKEN, Message, PROTOCOL_VERSION};

fn check(message: &Message) {
    if let Message::Hello(hello) = message {
        assert_eq!(hello.version, PROTOCOL_VERSION);
        assert!(!hello.name.is_local());
        assert!((1..=MAX_LIST).contains(&hello.systems.len()));
        assert!(hello.features.len() <= MAX_LIST);
        assert!((1..=MAX_JOBS).contains(&hello.max_jobs));
        if let Some(token) = &hello.token {
            let token = token.expose();
            assert!(!token.is_empty() && token.len() <= MAX_TOKEN);
            assert!(!token.chars().any(char::is_control));
            assert!(format!("{hello:?}").contains("<redacted>"));
        }
    }
    let line = message.encode();
    assert_eq!(line.last(), Some(&b'\n'));
    assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
    let again = Message::decode(&line).expect("an encoded message decodes");
    assert_eq!(&again, message, "decode(encode(m)) != m");
}

fuzz_target!(|data: &[u8]| {
    for line in data.split(|&b| b == b'\n').take(16) {
        if let Ok(message) = Message::decode(line) {
            check(&message);
        }
    }
});
