//! Git: branch heads read with `git for-each-ref`, pull request refs moved with
//! `git update-ref`, and fetches served over smart HTTP by `git http-backend` run as a CGI.

use std::path::Path;
use std::process::Stdio;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::prelude::{BASE64_STANDARD, Engine as _};
use tokio::io::AsyncWriteExt;

use crate::Inner;
use crate::reply::plain;

/// Returns true for a smart-HTTP path such as `/owner/name.git/info/refs`.
pub(crate) fn is_git_path(path: &str) -> bool {
    path.contains(".git/")
}

/// Points `name` at `sha` in the bare repository.
pub(crate) fn update_ref(git_dir: &Path, name: &str, sha: &str) -> std::io::Result<()> {
    let output = std::process::Command::new("git")
        .arg("--git-dir")
        .arg(git_dir)
        .args(["update-ref", name, sha])
        .stdin(Stdio::null())
        .output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "git update-ref {name} {sha} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// Returns `(branch, sha)` for every `refs/heads/*`, sorted by name.
pub(crate) async fn branches(git_dir: &Path) -> std::io::Result<Vec<(String, String)>> {
    let output = tokio::process::Command::new("git")
        .arg("--git-dir")
        .arg(git_dir)
        .args([
            "for-each-ref",
            "--format=%(objectname) %(refname:strip=2)",
            "refs/heads",
        ])
        .stdin(Stdio::null())
        .output()
        .await?;
    if !output.status.success() {
        return Err(std::io::Error::other(format!(
            "git for-each-ref failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let (sha, name) = line.split_once(' ')?;
            Some((name.to_owned(), sha.to_owned()))
        })
        .collect())
}

/// Serves `GET …/info/refs?service=git-upload-pack` and `POST …/git-upload-pack`. Anonymous
/// fetches are allowed; an `Authorization` header must carry the token (Basic password or
/// Bearer). Pushes are refused.
pub(crate) async fn serve(
    inner: &Inner,
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let Some((repo, rest)) = path.split_once(".git/") else {
        return plain(StatusCode::NOT_FOUND, "not found");
    };
    let repo = repo.trim_start_matches('/');
    let (git_dir, token) = {
        let state = inner.lock();
        (
            state.repo(repo).map(|r| r.git_dir.clone()),
            state.token.clone(),
        )
    };
    if let Some(auth) = headers.get(header::AUTHORIZATION)
        && !authorized(auth, &token)
    {
        let mut response = plain(StatusCode::UNAUTHORIZED, "authentication failed");
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"fakeforge\""),
        );
        return response;
    }
    let Some(git_dir) = git_dir else {
        return plain(StatusCode::NOT_FOUND, "repository not found");
    };
    if rest.contains("receive-pack") || query.contains("git-receive-pack") {
        return plain(
            StatusCode::FORBIDDEN,
            "pushes are not supported by the fake",
        );
    }
    match http_backend(&git_dir, method, rest, query, headers, body).await {
        Ok(response) => response,
        Err(err) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("git http-backend: {err}"),
        ),
    }
}

fn authorized(value: &HeaderValue, token: &str) -> bool {
    let Ok(value) = value.to_str() else {
        return false;
    };
    if let Some(encoded) = value.strip_prefix("Basic ") {
        return BASE64_STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|pair| pair.split_once(':').map(|(_, p)| p == token))
            .unwrap_or(false);
    }
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("token "))
        .is_some_and(|t| t.trim() == token)
}

async fn http_backend(
    git_dir: &Path,
    method: &Method,
    rest: &str,
    query: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> std::io::Result<Response> {
    let root = git_dir.parent().unwrap_or(Path::new("/"));
    let dir = git_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let header_str = |name: HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let mut command = tokio::process::Command::new("git");
    command
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", format!("/{dir}/{rest}"))
        .env("REQUEST_METHOD", method.as_str())
        .env("QUERY_STRING", query)
        .env("CONTENT_TYPE", header_str(header::CONTENT_TYPE))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_ADDR", "127.0.0.1")
        .env(
            "HTTP_CONTENT_ENCODING",
            header_str(header::CONTENT_ENCODING),
        )
        .env(
            "GIT_PROTOCOL",
            header_str(HeaderName::from_static("git-protocol")),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn()?;
    let stdin = child.stdin.take();
    let writer = async move {
        if let Some(mut stdin) = stdin {
            // The backend may exit before reading everything; its answer says why.
            let _ = stdin.write_all(&body).await;
            let _ = stdin.shutdown().await;
        }
    };
    let (_, output) = tokio::join!(writer, child.wait_with_output());
    let output = output?;
    if !output.stderr.is_empty() {
        tracing::debug!(stderr = %String::from_utf8_lossy(&output.stderr), "git http-backend");
    }
    Ok(cgi_response(&output.stdout))
}

/// Turns a CGI answer (headers, blank line, body) into a response.
fn cgi_response(stdout: &[u8]) -> Response {
    let (head, body) = match find(stdout, b"\r\n\r\n") {
        Some(at) => (&stdout[..at], &stdout[at + 4..]),
        None => match find(stdout, b"\n\n") {
            Some(at) => (&stdout[..at], &stdout[at + 2..]),
            None => (stdout, &[][..]),
        },
    };
    let mut status = StatusCode::OK;
    let mut response_headers = HeaderMap::new();
    for line in String::from_utf8_lossy(head).lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or("200");
            status = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        } else if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value),
        ) {
            response_headers.append(name, value);
        }
    }
    let mut response = (status, Body::from(body.to_vec())).into_response();
    response.headers_mut().extend(response_headers);
    response
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorized_should_accept_the_token_as_basic_password_or_bearer() {
        let basic = |pair: &str| {
            HeaderValue::from_str(&format!("Basic {}", BASE64_STANDARD.encode(pair))).unwrap()
        };
        assert!(authorized(&basic("oauth2:tok"), "tok"));
        assert!(!authorized(&basic("oauth2:nope"), "tok"));
        assert!(!authorized(&HeaderValue::from_static("Basic !!"), "tok"));
        assert!(authorized(&HeaderValue::from_static("Bearer tok"), "tok"));
    }

    #[test]
    fn cgi_response_should_parse_status_and_headers() {
        let response =
            cgi_response(b"Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nnope");
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()["content-type"], "text/plain");
    }
}
