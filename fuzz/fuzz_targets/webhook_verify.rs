//! `reconix_forge::verify`: the three signature schemes (GitHub `X-Hub-Signature-256`,
//! GitLab `X-Gitlab-Token`, Gitea/Forgejo `X-Gitea-Signature`/`X-Forgejo-Signature`).
//! Input: a forge selector byte, a secret length byte and that many bytes of secret, then a
//! delivery as in `webhook_parse`.
//!
//! Checks: no panic; every error is a signature error; a delivery is accepted only when its
//! header holds exactly the right value (the HMAC of the body in either case, or the token);
//! the right value is always accepted, and no longer once the body changes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reconix_forge::verify::hmac_sha256_hex;
use reconix_forge::{Error, ErrorClass, Headers, gitea, github, gitlab};
use reconix_fuzz::{forge_kind, split_delivery};
use reconix_spec::{ForgeKind, Secret};

/// The header value the forge would send for `body`, and the header that carries it.
fn signed(kind: ForgeKind, secret: &Secret, body: &[u8]) -> (&'static str, String) {
    match kind {
        ForgeKind::Github => (
            github::SIGNATURE_HEADER,
            format!("sha256={}", hmac_sha256_hex(secret, body)),
        ),
        ForgeKind::Gitlab => (gitlab::TOKEN_HEADER, secret.expose().to_owned()),
        _ => (gitea::SIGNATURE_HEADERS[0], hmac_sha256_hex(secret, body)),
    }
}

/// Returns the value `verify` would have read, as `Headers::first_of` finds it.
fn presented(kind: ForgeKind, headers: &Headers) -> Option<String> {
    let names: &[&str] = match kind {
        ForgeKind::Github => &[github::SIGNATURE_HEADER],
        ForgeKind::Gitlab => &[gitlab::TOKEN_HEADER],
        _ => &gitea::SIGNATURE_HEADERS,
    };
    names
        .iter()
        .find_map(|name| headers.first_of(&[name]))
        .map(str::to_owned)
}

fuzz_target!(|data: &[u8]| {
    let [selector, len, rest @ ..] = data else {
        return;
    };
    let kind = forge_kind(*selector);
    let len = usize::from(*len).min(rest.len());
    let (secret, delivery) = rest.split_at(len);
    let secret = Secret::new(String::from_utf8_lossy(secret));
    let (headers, body) = split_delivery(delivery);

    let (_, right) = signed(kind, &secret, body);
    match reconix_forge::verify(kind, &headers, body, &secret) {
        Ok(()) => {
            let got = presented(kind, &headers).expect("accepted without a header");
            let matches = if kind == ForgeKind::Gitlab {
                got == right
            } else {
                got.eq_ignore_ascii_case(&right) && got.starts_with(&right[..right.len() - 64])
            };
            assert!(matches, "accepted {got:?}, expected {right:?}");
        }
        Err(err) => assert_eq!(err.class(), ErrorClass::Signature, "{err}"),
    }

    // The right value is accepted, in either hex case. GitLab compares the trimmed header
    // with the secret, so only a secret without outer whitespace can ever match.
    let secret_ok = !secret.expose().is_empty() && secret.expose().trim() == secret.expose();
    if kind == ForgeKind::Gitlab && !secret_ok {
        return;
    }
    let (name, value) = signed(kind, &secret, body);
    let mut values = vec![value.clone()];
    if kind != ForgeKind::Gitlab {
        values.push(value.to_ascii_uppercase().replacen("SHA256=", "sha256=", 1));
    }
    for value in values {
        let good = Headers::new().with(name, value.as_str());
        reconix_forge::verify(kind, &good, body, &secret).expect("the right signature");
        if kind != ForgeKind::Gitlab {
            let mut other = body.to_vec();
            match other.first_mut() {
                Some(b) => *b ^= 1,
                None => other.push(0),
            }
            let err = reconix_forge::verify(kind, &good, &other, &secret)
                .expect_err("a signature of another body");
            assert!(matches!(err, Error::SignatureMismatch { .. }), "{err}");
        }
    }
});
