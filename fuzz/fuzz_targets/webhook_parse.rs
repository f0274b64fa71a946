//! `reconix_forge::parse`: a webhook delivery (headers and body) into the normalised event, for
//! all three forges. Input: a forge selector byte, then `Name: value` header lines, an empty
//! line and the body (see `reconix_fuzz::split_delivery`).
//!
//! Checks: no panic; every error is a payload error (never a signature one); the result does
//! not depend on the case of header names; an accepted push or pull request carries only
//! well-formed object ids and flags consistent with them; the event serialises to JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reconix_forge::{ErrorClass, Event, Payload};
use reconix_fuzz::{forge_kind, split_delivery, upper_case_names};

fn is_object_id(sha: &str) -> bool {
    matches!(sha.len(), 40 | 64) && sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn check(event: &Event) {
    match &event.payload {
        Payload::Push(push) => {
            assert!(is_object_id(&push.before), "before {:?}", push.before);
            assert!(is_object_id(&push.after), "after {:?}", push.after);
            assert_eq!(push.deleted, push.after.bytes().all(|b| b == b'0'));
            assert_eq!(push.tag, push.git_ref.starts_with("refs/tags/"));
            assert!(event.repo.is_some(), "a push names its repository");
        }
        Payload::PullRequest(pr) => {
            if let Some(sha) = &pr.head_sha {
                assert!(is_object_id(sha), "head_sha {sha:?}");
            }
            assert!(event.repo.is_some(), "a pull request names its repository");
        }
        Payload::Ping(_) | Payload::Ignored(_) => {}
    }
    let json = serde_json::to_value(event).expect("an event serialises");
    assert!(json.get("kind").is_some());
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let kind = forge_kind(selector);
    let (headers, body) = split_delivery(rest);
    let result = reconix_forge::parse(kind, &headers, body);
    match &result {
        Ok(event) => check(event),
        Err(err) => {
            assert_eq!(err.class(), ErrorClass::Payload, "{err}");
            let _ = err.to_string();
        }
    }
    let upper = upper_case_names(rest);
    let (headers, body) = split_delivery(&upper);
    let again = reconix_forge::parse(kind, &headers, body);
    match (&result, &again) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "header name case changed the event"),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        _ => panic!("header name case changed the outcome: {result:?} vs {again:?}"),
    }
});
