//! The HTTP machinery the three REST clients share: authentication header, per-request timeout,
//! bounded retries on 5xx and transport errors, rate-limit and status classification,
//! pagination, and decoding of hostile bodies into typed structs.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backon::{ExponentialBuilder, Retryable};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::{ApiError, ApiResult};

/// How many pages a list may have before the client stops following links: a guard against a
/// forge (or a hostile proxy) that links a page to itself.
const MAX_PAGES: usize = 1000;

/// The wait reported when a forge rate-limits without saying for how long.
const DEFAULT_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);

/// How a client retries transient failures and how long one request may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (at least 1).
    pub max_attempts: usize,
    /// The delay before the first retry; it doubles for each further one.
    pub min_delay: Duration,
    /// The longest delay between two attempts.
    pub max_delay: Duration,
    /// The timeout of one request, connection included.
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    /// Returns 4 attempts, 200 ms doubling up to 5 s, and a 30 s request timeout.
    fn default() -> Self {
        Self {
            max_attempts: 4,
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Which rate-limit headers a forge sends besides `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RateLimitHeaders {
    /// `X-RateLimit-Remaining: 0` with `X-RateLimit-Reset` in epoch seconds (GitHub, Gitea).
    XRateLimit,
    /// `RateLimit-Remaining: 0` with `RateLimit-Reset` in epoch seconds (GitLab).
    RateLimit,
}

/// One forge API: base URL, authenticated client and retry policy.
#[derive(Debug, Clone)]
pub(crate) struct Http {
    client: reqwest::Client,
    base: String,
    policy: RetryPolicy,
    rate_limit: RateLimitHeaders,
}

/// A successful answer: its headers (for pagination) and body.
struct Answer {
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Http {
    /// Builds a client that sends `auth_value` in `auth_header` on every request.
    pub(crate) fn new(
        base: &str,
        auth_header: HeaderName,
        auth_value: &str,
        policy: RetryPolicy,
        rate_limit: RateLimitHeaders,
    ) -> ApiResult<Self> {
        let mut value = HeaderValue::from_str(auth_value).map_err(|_| ApiError::Build {
            reason: "the token contains characters not allowed in a header".to_owned(),
        })?;
        value.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert(auth_header, value);
        headers.insert(
            reqwest::header::ACCEPT,
            HeaderValue::from_static("application/json"),
        );
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(concat!("reconix/", env!("CARGO_PKG_VERSION")))
            .timeout(policy.request_timeout)
            // A redirect to another host would carry the token there.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|err| ApiError::Build {
                reason: err.to_string(),
            })?;
        Ok(Self {
            client,
            base: base.trim_end_matches('/').to_owned(),
            policy,
            rate_limit,
        })
    }

    /// Sends a GET and decodes the JSON answer.
    pub(crate) async fn get<T: DeserializeOwned>(&self, path: &str) -> ApiResult<T> {
        let answer = self
            .send(Method::GET, path, &self.url(path), None::<&()>)
            .await?;
        decode(&Method::GET, path, &answer.body)
    }

    /// Sends a body-carrying request and decodes the JSON answer.
    pub(crate) async fn send_json<B: Serialize + Sync, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> ApiResult<T> {
        let answer = self
            .send(method.clone(), path, &self.url(path), Some(body))
            .await?;
        decode(&method, path, &answer.body)
    }

    /// Sends a body-carrying request and ignores the answer's body.
    pub(crate) async fn send_json_no_answer<B: Serialize + Sync>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> ApiResult<()> {
        self.send(method, path, &self.url(path), Some(body))
            .await
            .map(drop)
    }

    /// Sends a DELETE.
    pub(crate) async fn delete(&self, path: &str) -> ApiResult<()> {
        self.send(Method::DELETE, path, &self.url(path), None::<&()>)
            .await
            .map(drop)
    }

    /// GETs every page of a list: follows GitLab's `X-Next-Page` by setting `page` in the query,
    /// or else `Link: <…>; rel="next"` when it stays under the base URL. `path` carries the query
    /// of the first page.
    pub(crate) async fn get_all<T: DeserializeOwned>(&self, path: &str) -> ApiResult<Vec<T>> {
        let mut items = Vec::new();
        let mut url = self.url(path);
        for _ in 0..MAX_PAGES {
            let answer = self.send(Method::GET, path, &url, None::<&()>).await?;
            let page: Vec<T> = decode(&Method::GET, path, &answer.body)?;
            let empty = page.is_empty();
            items.extend(page);
            // GitLab's `X-Next-Page` first: its `Link` URLs use the instance's canonical URL,
            // which may differ from the configured api-url (another host name, http vs https).
            let next = match next_page(&answer.headers) {
                Some(page) => Some(with_page(&self.url(path), &page)),
                None => next_link(&answer.headers),
            };
            match next {
                // An empty page ends the list even if the forge links further.
                Some(_) if empty => return Ok(items),
                Some(next) if next.starts_with(&format!("{}/", self.base)) => url = next,
                Some(_) => {
                    return Err(ApiError::ForeignLink {
                        path: path.to_owned(),
                    });
                }
                None => return Ok(items),
            }
        }
        Ok(items)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends one logical request, retrying 5xx and transport errors with exponential backoff.
    async fn send<B: Serialize + Sync>(
        &self,
        method: Method,
        path: &str,
        url: &str,
        body: Option<&B>,
    ) -> ApiResult<Answer> {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.policy.min_delay)
            .with_max_delay(self.policy.max_delay)
            .with_max_times(self.policy.max_attempts.saturating_sub(1))
            .with_jitter();
        (|| self.attempt(method.clone(), path, url, body))
            .retry(backoff)
            .when(ApiError::is_transient)
            .notify(|err, delay| {
                tracing::debug!(error = %err, delay_ms = delay.as_millis(), "retrying forge call");
            })
            .await
    }

    async fn attempt<B: Serialize + Sync>(
        &self,
        method: Method,
        path: &str,
        url: &str,
        body: Option<&B>,
    ) -> ApiResult<Answer> {
        let mut request = self.client.request(method.clone(), url);
        if let Some(body) = body {
            request = request.json(body);
        }
        let transport = |source| ApiError::Transport {
            method: method.to_string(),
            path: path.to_owned(),
            source,
        };
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        let headers = response.headers().clone();
        if let Some(err) = classify(status, &headers, &method, path, self.rate_limit) {
            return Err(err);
        }
        let body = response.bytes().await.map_err(transport)?.to_vec();
        Ok(Answer { headers, body })
    }
}

/// Maps a non-success status to its error, or `None` for 2xx.
fn classify(
    status: StatusCode,
    headers: &HeaderMap,
    method: &Method,
    path: &str,
    rate_limit: RateLimitHeaders,
) -> Option<ApiError> {
    if status.is_success() {
        return None;
    }
    let method = method.to_string();
    let path = path.to_owned();
    if status == StatusCode::UNAUTHORIZED {
        return Some(ApiError::Unauthorized { method, path });
    }
    if status == StatusCode::FORBIDDEN || status == StatusCode::TOO_MANY_REQUESTS {
        if let Some(retry_after) = rate_limit_wait(headers, rate_limit, SystemTime::now()) {
            return Some(ApiError::RateLimited { retry_after });
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Some(ApiError::RateLimited {
                retry_after: DEFAULT_RATE_LIMIT_WAIT,
            });
        }
    }
    let status_code = status.as_u16();
    Some(if status == StatusCode::NOT_FOUND {
        ApiError::NotFound { method, path }
    } else if status.is_server_error() {
        ApiError::Server {
            status: status_code,
            method,
            path,
        }
    } else {
        ApiError::Refused {
            status: status_code,
            method,
            path,
        }
    })
}

/// Returns how long a rate-limited answer asks to wait: `Retry-After` (seconds, or an HTTP date
/// as RFC 9110 allows), else the reset time of an exhausted quota.
fn rate_limit_wait(
    headers: &HeaderMap,
    kind: RateLimitHeaders,
    now: SystemTime,
) -> Option<Duration> {
    if let Some(seconds) = header_u64(headers, "retry-after") {
        return Some(Duration::from_secs(seconds));
    }
    if let Some(date) = headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v.trim()).ok())
    {
        return Some(date.duration_since(now).unwrap_or(Duration::ZERO));
    }
    let (remaining, reset) = match kind {
        RateLimitHeaders::XRateLimit => ("x-ratelimit-remaining", "x-ratelimit-reset"),
        RateLimitHeaders::RateLimit => ("ratelimit-remaining", "ratelimit-reset"),
    };
    // GitLab may send RateLimit-Reset without Remaining on a 429; GitHub's 403 without
    // Remaining: 0 is a permission problem, not a rate limit.
    let exhausted = header_u64(headers, remaining) == Some(0)
        || (kind == RateLimitHeaders::RateLimit && header_u64(headers, reset).is_some());
    if !exhausted {
        return None;
    }
    let reset = header_u64(headers, reset)?;
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    Some(Duration::from_secs(reset.saturating_sub(now)))
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// Returns the `rel="next"` target of a `Link` header.
fn next_link(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(reqwest::header::LINK)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .find_map(|link| {
            let (target, params) = link.split_once(';')?;
            let is_next = params.split(';').any(|param| {
                let param = param.trim().replace(' ', "");
                param == "rel=\"next\"" || param == "rel=next"
            });
            let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
            is_next.then(|| target.to_owned())
        })
}

/// Returns GitLab's `X-Next-Page` when it names a page.
fn next_page(headers: &HeaderMap) -> Option<String> {
    let page = headers.get("x-next-page")?.to_str().ok()?.trim();
    (!page.is_empty() && page.bytes().all(|b| b.is_ascii_digit())).then(|| page.to_owned())
}

/// Returns `url` with its `page` query parameter set to `page`.
fn with_page(url: &str, page: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut params: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("page="))
        .collect();
    let page = format!("page={page}");
    params.push(&page);
    format!("{base}?{}", params.join("&"))
}

fn decode<T: DeserializeOwned>(method: &Method, path: &str, body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|source| ApiError::Decode {
        method: method.to_string(),
        path: path.to_owned(),
        source,
    })
}

/// Percent-encodes one path segment: everything but RFC 3986 unreserved characters, so that a
/// `/` in a GitLab project path becomes `%2F`.
pub(crate) fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Returns `owner/name` as two encoded path segments, for GitHub and Gitea.
pub(crate) fn repo_path(repo: &reconix_spec::RepoName) -> String {
    repo.as_str()
        .split('/')
        .map(encode_segment)
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn next_link_should_pick_rel_next_among_several() {
        let h = headers(&[(
            "link",
            "<https://api.github.com/x?page=1>; rel=\"prev\", <https://api.github.com/x?page=3>; rel=\"next\"",
        )]);
        assert_eq!(
            next_link(&h).as_deref(),
            Some("https://api.github.com/x?page=3")
        );
        assert_eq!(next_link(&headers(&[])), None);
    }

    #[test]
    fn rate_limit_wait_should_read_reset_epoch_when_quota_is_exhausted() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let h = headers(&[
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1042"),
        ]);
        assert_eq!(
            rate_limit_wait(&h, RateLimitHeaders::XRateLimit, now),
            Some(Duration::from_secs(42))
        );
        let h = headers(&[
            ("x-ratelimit-remaining", "10"),
            ("x-ratelimit-reset", "1042"),
        ]);
        assert_eq!(rate_limit_wait(&h, RateLimitHeaders::XRateLimit, now), None);
        let h = headers(&[("ratelimit-reset", "1005")]);
        assert_eq!(
            rate_limit_wait(&h, RateLimitHeaders::RateLimit, now),
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn retry_after_should_accept_seconds_and_http_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        let h = headers(&[("retry-after", "7")]);
        assert_eq!(
            rate_limit_wait(&h, RateLimitHeaders::XRateLimit, now),
            Some(Duration::from_secs(7))
        );
        // 1445412480 is Wed, 21 Oct 2015 07:28:00 GMT (RFC 9110's example date).
        let h = headers(&[("retry-after", "Wed, 21 Oct 2015 07:28:30 GMT")]);
        assert_eq!(
            rate_limit_wait(&h, RateLimitHeaders::XRateLimit, now),
            Some(Duration::from_secs(30))
        );
        let h = headers(&[("retry-after", "Wed, 21 Oct 2015 07:00:00 GMT")]);
        assert_eq!(
            rate_limit_wait(&h, RateLimitHeaders::XRateLimit, now),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn with_page_should_replace_the_page_parameter() {
        assert_eq!(
            with_page("http://h/p?per_page=100&page=1", "2"),
            "http://h/p?per_page=100&page=2"
        );
        assert_eq!(with_page("http://h/p", "2"), "http://h/p?page=2");
    }

    #[test]
    fn encode_segment_should_escape_slashes_and_keep_unreserved() {
        assert_eq!(encode_segment("group/sub/name"), "group%2Fsub%2Fname");
        assert_eq!(encode_segment("a-b_c.d~e"), "a-b_c.d~e");
    }
}
