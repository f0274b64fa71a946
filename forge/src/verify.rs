//! Signature helpers shared by the forge modules: HMAC-SHA256 over the raw body (GitHub,
//! Gitea/Forgejo) and a constant-time comparison of plain tokens (GitLab).

use hmac::{Hmac, KeyInit, Mac};
use reconix_spec::Secret;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::{Error, Result};

type HmacSha256 = Hmac<Sha256>;

/// Returns the lowercase hex HMAC-SHA256 of `body` keyed with `secret`: the value Gitea and
/// Forgejo send bare, and GitHub after `sha256=`. Test servers use it to sign deliveries.
pub fn hmac_sha256_hex(secret: &Secret, body: &[u8]) -> String {
    hex::encode(mac(secret, body).finalize().into_bytes())
}

/// Checks that `signature_hex` (hex digits, either case) is the HMAC-SHA256 of `body` keyed with
/// `secret`, in constant time. `header` only names the header in errors.
///
/// # Errors
/// Returns [`Error::MalformedSignature`] when the value is not 64 hex digits (a truncated
/// signature is malformed, not merely wrong) and [`Error::SignatureMismatch`] when it differs.
pub fn check_hmac_sha256_hex(
    secret: &Secret,
    body: &[u8],
    signature_hex: &str,
    header: &'static str,
) -> Result<()> {
    let mut expected = [0_u8; 32];
    hex::decode_to_slice(signature_hex, &mut expected)
        .map_err(|_| Error::MalformedSignature { header })?;
    // `verify_slice` compares in constant time, so timing reveals nothing about the right MAC.
    mac(secret, body)
        .verify_slice(&expected)
        .map_err(|_| Error::SignatureMismatch { header })
}

/// Checks that `token` equals the secret, in time independent of where they differ (only of
/// the length). `header` only names the header in errors.
///
/// # Errors
/// Returns [`Error::SignatureMismatch`] when they differ.
pub fn check_token(secret: &Secret, token: &str, header: &'static str) -> Result<()> {
    if bool::from(secret.expose().as_bytes().ct_eq(token.as_bytes())) {
        Ok(())
    } else {
        Err(Error::SignatureMismatch { header })
    }
}

#[allow(
    clippy::expect_used,
    reason = "HMAC takes keys of any length; the error exists for fixed-size-key MACs only"
)]
fn mac(secret: &Secret, body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret.expose().as_bytes())
        .expect("HMAC-SHA256 accepts keys of any length");
    mac.update(body);
    mac
}
