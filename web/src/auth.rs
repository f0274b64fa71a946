//! Bearer-token authentication of the API's mutations.
//!
//! The token is read from the spec's `api-token-file` on every request, so rotating the file
//! takes effect at once, and compared in constant time. A missing or wrong token, or a daemon
//! without a token file, is answered 401 with `WWW-Authenticate: Bearer`. Neither the token
//! presented nor the expected one ever reaches a log line or a response.

use axum::Json;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use reconix_spec::Secret;
use serde_json::json;
use subtle::ConstantTimeEq;
use tracing::error;

use crate::AppState;

/// The `WWW-Authenticate` challenge of every 401 (RFC 6750).
const CHALLENGE: &str = "Bearer realm=\"reconix\"";

/// Proof that the request carried the API token; extracting it refuses the request otherwise.
///
/// Put it first among a handler's arguments, so that an unauthenticated request learns
/// nothing else (not even whether an id exists).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Authorized;

/// Why a request was refused. The messages name no secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AuthError {
    /// The daemon has no `api-token-file`: every mutation is refused.
    #[error("mutations are disabled: the daemon has no api-token-file")]
    NotConfigured,
    /// The token file could not be read or is empty (the reason is in the daemon's log).
    #[error("the API token is unavailable (see the daemon log)")]
    Unavailable,
    /// No `Authorization: Bearer` header.
    #[error("missing bearer token")]
    Missing,
    /// A bearer token that is not the configured one.
    #[error("invalid bearer token")]
    Invalid,
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let mut response = (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": self.to_string() })),
        )
            .into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(CHALLENGE),
        );
        response
    }
}

impl FromRequestParts<AppState> for Authorized {
    type Rejection = AuthError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let checked = async {
            let expected = expected_token(state).await?;
            let presented = bearer(&parts.headers).ok_or(AuthError::Missing)?;
            if token_matches(&expected, presented) {
                Ok(Self)
            } else {
                Err(AuthError::Invalid)
            }
        }
        .await;
        if let Err(reason) = &checked {
            let what = format!("{} {}: {reason}", parts.method, parts.uri.path());
            state.log_refusal(crate::peer_of(&parts.extensions), "api mutation", &what);
        }
        checked
    }
}

/// Reads the configured token: at request time, so that a rotated file is used at once.
async fn expected_token(state: &AppState) -> Result<Secret, AuthError> {
    let file = state
        .spec()
        .and_then(|spec| spec.api_token_file.clone())
        .ok_or(AuthError::NotConfigured)?;
    let text = match tokio::fs::read_to_string(file.path()).await {
        Ok(text) => text,
        Err(err) => {
            // The path and the IO error only: never the contents.
            error!(path = %file.path().display(), error = %err, "cannot read the api-token-file");
            return Err(AuthError::Unavailable);
        }
    };
    let token = text.trim();
    // An empty file must not turn an empty bearer token into a valid one.
    if token.is_empty() {
        error!(path = %file.path().display(), "the api-token-file is empty");
        return Err(AuthError::Unavailable);
    }
    Ok(Secret::new(token))
}

/// Returns the token of an `Authorization: Bearer <token>` header (the scheme is
/// case-insensitive, RFC 7235), if there is a non-empty one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Returns whether `presented` is the expected token, in time independent of where they
/// differ (only the length can leak).
fn token_matches(expected: &Secret, presented: &str) -> bool {
    expected
        .expose()
        .as_bytes()
        .ct_eq(presented.as_bytes())
        .into()
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderMap, HeaderValue, header};
    use reconix_spec::Secret;

    use super::{bearer, token_matches};

    fn with_authorization(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn bearer_should_accept_any_scheme_case_and_refuse_other_schemes() {
        for (value, want) in [
            ("Bearer abc", Some("abc")),
            ("bearer  abc ", Some("abc")),
            ("BEARER abc", Some("abc")),
            ("Bearer ", None),
            ("Bearer", None),
            ("Basic YWJjOmRlZg==", None),
            ("abc", None),
        ] {
            assert_eq!(bearer(&with_authorization(value)), want, "{value:?}");
        }
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    #[test]
    fn token_matches_should_need_the_exact_token() {
        let secret = Secret::new("s3cret");
        assert!(token_matches(&secret, "s3cret"));
        for wrong in ["s3cre", "s3cret2", "S3cret", ""] {
            assert!(!token_matches(&secret, wrong), "{wrong:?}");
        }
    }
}
