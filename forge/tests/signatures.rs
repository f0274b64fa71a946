//! Signature verification against the published test vectors (GitHub docs and octokit), the
//! project's computed Gitea/Forgejo vectors, and negative cases: a flipped body byte, a wrong
//! secret, a truncated or malformed signature, a missing header.

#![allow(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers: allow-unwrap/panic-in-tests covers only #[test] fns"
)]

use std::path::{Path, PathBuf};

use reconix_forge::verify::hmac_sha256_hex;
use reconix_forge::{Error, ErrorClass, Headers, gitea, github, gitlab, verify};
use reconix_spec::{ForgeKind, Secret};
use serde::Deserialize;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[derive(Deserialize)]
struct GithubVectors {
    vectors: Vec<GithubVector>,
}

#[derive(Deserialize)]
struct GithubVector {
    secret: String,
    payload: String,
    hmac_sha256_hex: String,
    x_hub_signature_256: String,
}

#[derive(Deserialize)]
struct GiteaVectors {
    vectors: Vec<GiteaVector>,
}

#[derive(Deserialize)]
struct GiteaVector {
    secret: String,
    body_file: String,
    hmac_sha256_hex: String,
}

fn github_vectors() -> Vec<GithubVector> {
    let text = std::fs::read(fixtures().join("github/signature-test-vectors.json")).unwrap();
    let vectors: GithubVectors = serde_json::from_slice(&text).unwrap();
    assert_eq!(vectors.vectors.len(), 3);
    vectors.vectors
}

/// Each Gitea vector with its body bytes.
fn gitea_vectors() -> Vec<(GiteaVector, Vec<u8>)> {
    let dir = fixtures().join("gitea");
    let text = std::fs::read(dir.join("signature-vectors.json")).unwrap();
    let vectors: GiteaVectors = serde_json::from_slice(&text).unwrap();
    assert_eq!(vectors.vectors.len(), 2);
    vectors
        .vectors
        .into_iter()
        .map(|v| {
            let body = std::fs::read(dir.join(&v.body_file)).unwrap();
            (v, body)
        })
        .collect()
}

fn flip_first_byte(body: &[u8]) -> Vec<u8> {
    let mut body = body.to_vec();
    body[0] ^= 0x01;
    body
}

#[test]
fn github_should_accept_every_published_vector() {
    for v in github_vectors() {
        let secret = Secret::new(v.secret);
        let headers = Headers::new().with("X-Hub-Signature-256", &v.x_hub_signature_256);
        github::verify(&headers, v.payload.as_bytes(), &secret).unwrap();
        verify(ForgeKind::Github, &headers, v.payload.as_bytes(), &secret).unwrap();
        assert_eq!(
            hmac_sha256_hex(&secret, v.payload.as_bytes()),
            v.hmac_sha256_hex
        );
    }
}

#[test]
fn github_should_match_the_signature_header_in_any_case() {
    for v in github_vectors() {
        let secret = Secret::new(v.secret);
        let headers = Headers::new().with("x-hub-signature-256", &v.x_hub_signature_256);
        github::verify(&headers, v.payload.as_bytes(), &secret).unwrap();
    }
}

#[test]
fn github_should_accept_uppercase_hex() {
    let v = &github_vectors()[0];
    let upper = format!("sha256={}", v.hmac_sha256_hex.to_uppercase());
    let headers = Headers::new().with("X-Hub-Signature-256", upper);
    github::verify(&headers, v.payload.as_bytes(), &Secret::new(&v.secret)).unwrap();
}

#[test]
fn github_should_reject_a_body_with_one_flipped_byte() {
    for v in github_vectors() {
        let headers = Headers::new().with("X-Hub-Signature-256", &v.x_hub_signature_256);
        let body = flip_first_byte(v.payload.as_bytes());
        let err = github::verify(&headers, &body, &Secret::new(v.secret)).unwrap_err();
        assert!(matches!(
            err,
            Error::SignatureMismatch {
                header: "X-Hub-Signature-256"
            }
        ));
        assert_eq!(err.class(), ErrorClass::Signature);
    }
}

#[test]
fn github_should_reject_a_wrong_secret() {
    for v in github_vectors() {
        let headers = Headers::new().with("X-Hub-Signature-256", &v.x_hub_signature_256);
        let secret = Secret::new(format!("{}x", v.secret));
        let err = github::verify(&headers, v.payload.as_bytes(), &secret).unwrap_err();
        assert!(matches!(err, Error::SignatureMismatch { .. }));
    }
}

#[test]
fn github_should_call_a_truncated_signature_malformed() {
    for v in github_vectors() {
        let secret = Secret::new(v.secret);
        // Even and odd lengths: an even truncation still decodes as hex, but to too few bytes.
        for cut in [1, 2, 32] {
            let sig = &v.x_hub_signature_256[..v.x_hub_signature_256.len() - cut];
            let headers = Headers::new().with("X-Hub-Signature-256", sig);
            let err = github::verify(&headers, v.payload.as_bytes(), &secret).unwrap_err();
            assert!(matches!(err, Error::MalformedSignature { .. }), "cut {cut}");
        }
    }
}

#[test]
fn github_should_call_a_signature_without_prefix_or_with_non_hex_malformed() {
    let v = &github_vectors()[0];
    let secret = Secret::new(&v.secret);
    let non_hex = format!("sha256={}", "g".repeat(64));
    for sig in [v.hmac_sha256_hex.as_str(), "sha1=abc", non_hex.as_str()] {
        let headers = Headers::new().with("X-Hub-Signature-256", sig);
        let err = github::verify(&headers, v.payload.as_bytes(), &secret).unwrap_err();
        assert!(matches!(err, Error::MalformedSignature { .. }), "{sig}");
    }
}

#[test]
fn github_should_report_a_missing_signature_header() {
    let v = &github_vectors()[0];
    // The legacy SHA-1 header alone is not enough.
    let headers = Headers::new().with("X-Hub-Signature", "sha1=00");
    let err = github::verify(&headers, v.payload.as_bytes(), &Secret::new(&v.secret)).unwrap_err();
    assert!(matches!(
        err,
        Error::MissingSignature {
            header: "X-Hub-Signature-256"
        }
    ));
}

#[test]
fn gitea_should_accept_every_computed_vector_in_either_header() {
    for (v, body) in gitea_vectors() {
        let secret = Secret::new(v.secret);
        assert_eq!(hmac_sha256_hex(&secret, &body), v.hmac_sha256_hex);
        for name in [
            "X-Gitea-Signature",
            "X-Forgejo-Signature",
            "x-forgejo-signature",
        ] {
            let headers = Headers::new().with(name, &v.hmac_sha256_hex);
            gitea::verify(&headers, &body, &secret).unwrap();
            verify(ForgeKind::Gitea, &headers, &body, &secret).unwrap();
        }
    }
}

#[test]
fn gitea_should_accept_the_github_vectors_without_prefix() {
    for v in github_vectors() {
        let headers = Headers::new().with("X-Gitea-Signature", &v.hmac_sha256_hex);
        gitea::verify(&headers, v.payload.as_bytes(), &Secret::new(v.secret)).unwrap();
    }
}

#[test]
fn gitea_should_reject_a_flipped_byte_a_wrong_secret_and_a_truncated_signature() {
    for (v, body) in gitea_vectors() {
        let secret = Secret::new(&v.secret);
        let headers = Headers::new().with("X-Forgejo-Signature", &v.hmac_sha256_hex);
        let err = gitea::verify(&headers, &flip_first_byte(&body), &secret).unwrap_err();
        assert!(matches!(
            err,
            Error::SignatureMismatch {
                header: "X-Forgejo-Signature"
            }
        ));
        let wrong = Secret::new("reconix test secreT");
        let err = gitea::verify(&headers, &body, &wrong).unwrap_err();
        assert!(matches!(err, Error::SignatureMismatch { .. }));
        for cut in [1, 2] {
            let sig = &v.hmac_sha256_hex[..64 - cut];
            let headers = Headers::new().with("X-Gitea-Signature", sig);
            let err = gitea::verify(&headers, &body, &secret).unwrap_err();
            assert!(matches!(
                err,
                Error::MalformedSignature {
                    header: "X-Gitea-Signature"
                }
            ));
        }
    }
}

#[test]
fn gitea_should_treat_an_empty_signature_header_as_missing() {
    let (v, body) = gitea_vectors().remove(0);
    // Gitea sends the header empty when the hook has no secret.
    let headers = Headers::new().with("X-Gitea-Signature", "");
    let err = gitea::verify(&headers, &body, &Secret::new(v.secret)).unwrap_err();
    assert!(matches!(err, Error::MissingSignature { .. }));
}

#[test]
fn gitlab_should_accept_the_exact_token_in_any_header_case() {
    let secret = Secret::new("reconix test secret");
    for name in ["X-Gitlab-Token", "x-gitlab-token"] {
        let headers = Headers::new().with(name, "reconix test secret");
        gitlab::verify(&headers, &secret).unwrap();
        verify(ForgeKind::Gitlab, &headers, b"{}", &secret).unwrap();
    }
}

#[test]
fn gitlab_should_reject_a_wrong_truncated_or_missing_token() {
    let secret = Secret::new("reconix test secret");
    for token in ["reconix test secreT", "reconix test secre", "x"] {
        let headers = Headers::new().with("X-Gitlab-Token", token);
        let err = gitlab::verify(&headers, &secret).unwrap_err();
        assert!(matches!(
            err,
            Error::SignatureMismatch {
                header: "X-Gitlab-Token"
            }
        ));
    }
    let err = gitlab::verify(&Headers::new(), &secret).unwrap_err();
    assert!(matches!(
        err,
        Error::MissingSignature {
            header: "X-Gitlab-Token"
        }
    ));
}

#[test]
fn errors_should_never_contain_the_secret_or_the_signature() {
    let secret = Secret::new("hunter2-super-secret");
    let sig = hmac_sha256_hex(&secret, b"body");
    let cases = [
        github::verify(
            &Headers::new().with("X-Hub-Signature-256", format!("sha256={sig}")),
            b"other",
            &secret,
        ),
        github::verify(
            &Headers::new().with("X-Hub-Signature-256", "sha256=zz"),
            b"body",
            &secret,
        ),
        github::verify(&Headers::new(), b"body", &secret),
        gitea::verify(
            &Headers::new().with("X-Gitea-Signature", &sig),
            b"other",
            &secret,
        ),
        gitlab::verify(
            &Headers::new().with("X-Gitlab-Token", "hunter2-super-secreT"),
            &secret,
        ),
    ];
    for result in cases {
        let err = result.unwrap_err();
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(!text.contains("hunter2"), "{text}");
            assert!(!text.contains(&sig), "{text}");
        }
    }
    assert_eq!(format!("{secret:?}"), "<redacted>");
}
