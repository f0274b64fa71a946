//! `/cache` (how to use the binary caches reconix fills, with ready-to-paste snippets) and
//! `/api/v1/caches` (each cache with the state of its pushes).

use askama::Template;
use axum::Json;
use axum::extract::State;
use axum::response::Html;
use reconix_spec::{Cache, Spec};
use reconix_status::CachePushSummary;
use serde::{Deserialize, Serialize};

use super::{PageError, time};
use crate::{ApiError, AppState};

/// One cache as `/api/v1/caches` shows it: where it is, how clients trust it, and its pushes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheView {
    /// Where outputs are uploaded.
    pub push_url: String,
    /// Where clients substitute from (public-url, else push-url).
    pub substituter: String,
    /// The public key clients trust.
    pub public_key: Option<String>,
    /// `file`, `http` or `s3`.
    pub kind: String,
    /// The repositories pushed here (`None`: every repository).
    pub repos: Option<Vec<String>>,
    /// What was pushed and what is failing.
    pub pushes: CachePushSummary,
}

/// Reads the caches of `spec` with their push summaries.
async fn cache_views(
    st: &AppState,
    spec: Option<&Spec>,
) -> Result<Vec<CacheView>, reconix_status::Error> {
    let caches: Vec<Cache> = spec.map(|s| s.caches.clone()).unwrap_or_default();
    let urls: Vec<String> = caches.iter().map(|c| c.push_url.clone()).collect();
    let summaries = st
        .status
        .call(move |db| db.cache_push_summaries(&urls))
        .await?;
    Ok(caches
        .into_iter()
        .zip(summaries)
        .map(|(cache, pushes)| CacheView {
            substituter: cache.substituter_url().to_owned(),
            kind: cache.kind().map(|k| k.to_string()).unwrap_or_default(),
            repos: cache
                .repos
                .as_ref()
                .map(|r| r.iter().map(ToString::to_string).collect()),
            public_key: cache.public_key,
            push_url: cache.push_url,
            pushes,
        })
        .collect())
}

/// `GET /api/v1/caches`.
pub(crate) async fn api(State(st): State<AppState>) -> Result<Json<Vec<CacheView>>, ApiError> {
    let spec = st.spec();
    Ok(Json(cache_views(&st, spec.as_deref()).await?))
}

/// Returns the snippets for clients of `caches`: a flake's `nixConfig`, a NixOS module and
/// `nix.conf` lines.
pub(crate) fn snippets(caches: &[(String, String)]) -> Snippets {
    let quoted = |items: Vec<&str>| {
        items
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let urls = quoted(caches.iter().map(|(u, _)| u.as_str()).collect());
    let keys = quoted(caches.iter().map(|(_, k)| k.as_str()).collect());
    let plain = |items: Vec<&str>| items.join(" ");
    Snippets {
        flake: format!(
            "{{\n  nixConfig = {{\n    extra-substituters = [ {urls} ];\n    \
             extra-trusted-public-keys = [ {keys} ];\n  }};\n}}"
        ),
        nixos: format!(
            "{{\n  nix.settings = {{\n    extra-substituters = [ {urls} ];\n    \
             extra-trusted-public-keys = [ {keys} ];\n  }};\n}}"
        ),
        nix_conf: format!(
            "extra-substituters = {}\nextra-trusted-public-keys = {}",
            plain(caches.iter().map(|(u, _)| u.as_str()).collect()),
            plain(caches.iter().map(|(_, k)| k.as_str()).collect()),
        ),
    }
}

/// Ready-to-paste client configuration.
pub(crate) struct Snippets {
    pub(crate) flake: String,
    pub(crate) nixos: String,
    pub(crate) nix_conf: String,
}

struct CacheRow {
    view: CacheView,
    last_pushed: String,
    repos: String,
}

#[derive(Template)]
#[template(path = "cache.html")]
struct CachePage {
    caches: Vec<CacheRow>,
    snippets: Option<Snippets>,
}

/// `GET /cache`.
pub(super) async fn page(State(st): State<AppState>) -> Result<Html<String>, PageError> {
    let spec = st.spec();
    let views = cache_views(&st, spec.as_deref()).await?;
    let trusted: Vec<(String, String)> = views
        .iter()
        .filter_map(|v| Some((v.substituter.clone(), v.public_key.clone()?)))
        .collect();
    let snippets = (!trusted.is_empty()).then(|| snippets(&trusted));
    let caches = views
        .into_iter()
        .map(|view| CacheRow {
            last_pushed: time(view.pushes.last_pushed_at),
            repos: view
                .repos
                .as_ref()
                .map_or_else(|| "every repository".to_owned(), |r| r.join(", ")),
            view,
        })
        .collect();
    super::render(&CachePage { caches, snippets })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippets_should_list_every_cache_in_each_format() {
        let s = snippets(&[
            ("https://a.example".to_owned(), "a-1:AAAA=".to_owned()),
            ("file:///srv/b".to_owned(), "b-1:BBBB=".to_owned()),
        ]);
        assert_eq!(
            s.flake,
            "{\n  nixConfig = {\n    extra-substituters = [ \"https://a.example\" \"file:///srv/b\" ];\n    \
             extra-trusted-public-keys = [ \"a-1:AAAA=\" \"b-1:BBBB=\" ];\n  };\n}"
        );
        assert!(s.nixos.starts_with(
            "{\n  nix.settings = {\n    extra-substituters = [ \"https://a.example\""
        ));
        assert_eq!(
            s.nix_conf,
            "extra-substituters = https://a.example file:///srv/b\n\
             extra-trusted-public-keys = a-1:AAAA= b-1:BBBB="
        );
    }
}
