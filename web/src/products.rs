//! `GET /api/v1/jobs/{id}/products/{n}`: downloads the n-th build product (from 0) of a job, as
//! its build listed it in `nix-support/hydra-build-products`; for a directory product (an HTML
//! manual, say) `GET /api/v1/jobs/{id}/products/{n}/{file…}` serves the files below it, and the
//! product itself redirects to its default file (the line's fourth field) or lists the
//! directory.
//!
//! A build writes that list itself, so a product may name any path at all (`/etc/shadow`, a
//! symlink out of the store, another job's output). Only a path inside one of *that job's*
//! outputs is ever served: the path is checked as written ([`product_inside`], pure), then
//! resolved on disk with every symlink followed and checked again against the outputs' own
//! resolved locations. Anything else is refused with 403 and the reason.
//!
//! A product file is downloaded as an attachment; a file below a directory product is shown
//! inline (with the type its extension says) so a manual can be read in place, but in a
//! sandbox (`Content-Security-Policy: sandbox`, `X-Content-Type-Options: nosniff`): what a
//! build wrote never runs scripts with the pages' origin.

use std::fs::Metadata;
use std::path::{Component, Path, PathBuf};

use askama::Template;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use reconix_spec::StorePath;
use reconix_status::{BuildProduct, JobId};
use tokio_util::io::ReaderStream;

use crate::{ApiError, AppState};

/// At most this many entries of a directory are listed.
const LISTED_ENTRIES: usize = 5_000;

/// Returns the output a product path lies in, when the path, as written, is absolute, has no
/// `.` or `..` component and is one of `outputs` or below one.
pub(crate) fn product_inside<'a>(path: &str, outputs: &'a [StorePath]) -> Option<&'a StorePath> {
    let path = Path::new(path);
    let plain = path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !plain {
        return None;
    }
    outputs.iter().find(|o| path.starts_with(o.as_str()))
}

/// Returns `file` when it is a plain relative path below a directory: not empty, not
/// absolute, no `.` or `..` component.
fn plain_relative(file: &str) -> Option<&str> {
    let path = Path::new(file);
    let plain = !file.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)));
    plain.then_some(file.trim_end_matches('/'))
}

/// Returns where store path text `path` is on this machine: below `store_root` (a chroot
/// store's directory, or `/`).
fn physical(store_root: &Path, path: &str) -> PathBuf {
    store_root.join(path.trim_start_matches('/'))
}

/// The characters percent-encoded in one path segment of a link.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// Returns the URL of `file` (relative, `/`-separated) below directory product `n` of job `id`.
fn within_href(id: i64, n: usize, file: &str) -> String {
    let mut href = format!("/api/v1/jobs/{id}/products/{n}");
    for segment in file.split('/').filter(|s| !s.is_empty()) {
        href.push('/');
        href.extend(utf8_percent_encode(segment, SEGMENT));
    }
    href
}

/// A product path found on disk inside the job's outputs.
struct Found {
    /// The product as its build listed it.
    product: BuildProduct,
    /// The path as written (the product's, with `file` appended).
    written: String,
    /// Where it is, every symlink resolved.
    resolved: PathBuf,
    meta: Metadata,
}

/// Finds product `n` of job `id`, or `file` below it, on disk, and checks it lies inside the
/// job's outputs (as written and resolved).
async fn find(st: &AppState, id: i64, n: usize, file: Option<&str>) -> Result<Found, ApiError> {
    let page = st
        .status
        .call(move |db| db.job_page(JobId(id)))
        .await?
        .ok_or(ApiError::NotFound("job"))?;
    let product = page
        .products
        .get(n)
        .cloned()
        .ok_or(ApiError::NotFound("product"))?;
    let written = match file {
        None => product.path.clone(),
        Some(f) => format!("{}/{f}", product.path.trim_end_matches('/')),
    };
    let outputs: Vec<StorePath> = page.job.outputs.values().cloned().collect();
    let outside = || {
        ApiError::Forbidden(format!(
            "product {n} ({written}) is outside the outputs of job {id}"
        ))
    };
    product_inside(&written, &outputs).ok_or_else(outside)?;
    // Resolve every symlink, the outputs' too (a chroot store may sit behind one), and check
    // again: a link inside the output may point anywhere.
    let root = st.store_root();
    let resolved = tokio::fs::canonicalize(physical(&root, &written))
        .await
        .map_err(|e| match e.kind() {
            // A path through a file (`file/x`) or with a NUL is no file either: the client's.
            std::io::ErrorKind::NotFound
            | std::io::ErrorKind::NotADirectory
            | std::io::ErrorKind::InvalidInput => ApiError::NotFound("product file"),
            _ => ApiError::Internal(format!("product {written}: {e}")),
        })?;
    let mut inside = false;
    for output in &outputs {
        if let Ok(dir) = tokio::fs::canonicalize(physical(&root, output.as_str())).await
            && resolved.starts_with(&dir)
        {
            inside = true;
            break;
        }
    }
    if !inside {
        return Err(outside());
    }
    let meta = tokio::fs::metadata(&resolved)
        .await
        .map_err(|e| ApiError::Internal(format!("product {written}: {e}")))?;
    Ok(Found {
        product,
        written,
        resolved,
        meta,
    })
}

/// `GET /api/v1/jobs/{id}/products/{n}`: a file product as an attachment; a directory product
/// redirects to its default file, or is listed.
pub(crate) async fn download(
    State(st): State<AppState>,
    UrlPath((id, n)): UrlPath<(i64, usize)>,
) -> Result<Response, ApiError> {
    let found = find(&st, id, n, None).await?;
    if found.meta.is_dir() {
        if let Some(default) = found
            .product
            .default_path
            .as_deref()
            .and_then(plain_relative)
        {
            return Ok(redirect(&within_href(id, n, default)));
        }
        return listing(id, n, "", &found).await;
    }
    send_file(&found, true).await
}

/// `GET /api/v1/jobs/{id}/products/{n}/{file…}`: a file (shown inline, sandboxed) or a
/// directory (listed) below directory product `n`.
pub(crate) async fn download_within(
    State(st): State<AppState>,
    UrlPath((id, n, file)): UrlPath<(i64, usize, String)>,
) -> Result<Response, ApiError> {
    let Some(rel) = plain_relative(&file) else {
        return Err(ApiError::Forbidden(format!(
            "`{file}` is not a plain path below product {n} of job {id} (no `.`, `..` or leading `/`)"
        )));
    };
    let found = match find(&st, id, n, Some(rel)).await {
        Ok(found) => found,
        // Nothing lies below a file product: say so rather than "not found".
        Err(ApiError::NotFound(what)) => {
            if !find(&st, id, n, None).await?.meta.is_dir() {
                return Err(ApiError::BadRequest(format!(
                    "product {n} of job {id} is a file, not a directory: download it at {}",
                    within_href(id, n, "")
                )));
            }
            return Err(ApiError::NotFound(what));
        }
        Err(e) => return Err(e),
    };
    if found.meta.is_dir() {
        return listing(id, n, rel, &found).await;
    }
    send_file(&found, false).await
}

fn redirect(to: &str) -> Response {
    match HeaderValue::from_str(to) {
        Ok(location) => (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Sends a regular file: as an attachment, or inline in a sandbox.
async fn send_file(found: &Found, attachment: bool) -> Result<Response, ApiError> {
    if !found.meta.is_file() {
        return Err(ApiError::BadRequest(format!(
            "{} is neither a regular file nor a directory",
            found.written
        )));
    }
    let file = tokio::fs::File::open(&found.resolved)
        .await
        .map_err(|e| ApiError::Internal(format!("product {}: {e}", found.written)))?;
    let name = Path::new(&found.written)
        .file_name()
        .map(|n| n.to_string_lossy().replace(['"', '\\'], "_"))
        .unwrap_or_else(|| "product".to_owned());
    let length = HeaderValue::from(found.meta.len());
    let body = Body::from_stream(ReaderStream::new(file));
    if attachment {
        let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{name}\""))
            .unwrap_or_else(|_| HeaderValue::from_static("attachment"));
        return Ok((
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                ),
                (header::CONTENT_DISPOSITION, disposition),
                (header::CONTENT_LENGTH, length),
            ],
            body,
        )
            .into_response());
    }
    let kind = mime_guess::from_path(&found.written).first_or_octet_stream();
    let kind = HeaderValue::from_str(kind.essence_str())
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
    Ok((
        [
            (header::CONTENT_TYPE, kind),
            (header::CONTENT_LENGTH, length),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("sandbox"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response())
}

#[derive(Template)]
#[template(path = "product_dir.html")]
struct Listing {
    job: i64,
    product: usize,
    /// The directory, as its store path.
    path: String,
    /// The parent directory's link, below the product.
    parent: Option<String>,
    entries: Vec<Entry>,
    /// Entries beyond [`LISTED_ENTRIES`], not listed.
    more: usize,
}

struct Entry {
    name: String,
    href: String,
    dir: bool,
}

/// Lists directory `rel` (relative, empty for the product itself) of directory product `n`.
async fn listing(id: i64, n: usize, rel: &str, found: &Found) -> Result<Response, ApiError> {
    let internal =
        |e: std::io::Error| ApiError::Internal(format!("product {}: {e}", found.written));
    let mut dir = tokio::fs::read_dir(&found.resolved)
        .await
        .map_err(internal)?;
    // The entry's own type costs no `stat`; only a symlink is followed, to list a link to a
    // directory as one. Sorted in full before cutting, so the first entries are listed.
    let mut all = Vec::new();
    while let Some(entry) = dir.next_entry().await.map_err(internal)? {
        let kind = entry.file_type().await.map_err(internal)?;
        let dir = if kind.is_symlink() {
            tokio::fs::metadata(entry.path())
                .await
                .is_ok_and(|m| m.is_dir())
        } else {
            kind.is_dir()
        };
        all.push((!dir, entry.file_name().to_string_lossy().into_owned()));
    }
    all.sort_unstable();
    let more = all.len().saturating_sub(LISTED_ENTRIES);
    all.truncate(LISTED_ENTRIES);
    let entries = all
        .into_iter()
        .map(|(file, name)| {
            let below = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            Entry {
                href: within_href(id, n, &below),
                name,
                dir: !file,
            }
        })
        .collect();
    let parent = (!rel.is_empty())
        .then(|| within_href(id, n, rel.rsplit_once('/').map_or("", |(up, _)| up)));
    let page = Listing {
        job: id,
        product: n,
        path: found.written.clone(),
        parent,
        entries,
        more,
    };
    let html = page
        .render()
        .map_err(|e| ApiError::Internal(format!("listing {}: {e}", found.written)))?;
    Ok(Html(html).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(name: &str) -> StorePath {
        StorePath::new(format!("/nix/store/{}-{name}", "a".repeat(32))).unwrap()
    }

    #[test]
    fn only_plain_paths_inside_an_output_should_pass_the_written_check() {
        let outputs = [out("x"), out("x-doc")];
        let o = outputs[0].as_str();
        assert_eq!(
            product_inside(&format!("{o}/bin/x"), &outputs),
            Some(&outputs[0])
        );
        assert_eq!(product_inside(o, &outputs), Some(&outputs[0]));
        assert_eq!(
            product_inside(&format!("{}/share/doc", outputs[1].as_str()), &outputs),
            Some(&outputs[1])
        );
        for refused in [
            "/etc/passwd".to_owned(),
            format!("{o}/../../../etc/passwd"),
            format!("{o}-other/bin/x"),
            format!("{o}x/bin"),
            "relative/path".to_owned(),
            String::new(),
        ] {
            assert_eq!(product_inside(&refused, &outputs), None, "{refused}");
        }
    }

    use axum::http::{Request, StatusCode};
    use reconix_spec::{AttrPath, JobMeta, RepoKey, System, Timestamp};
    use reconix_status::{
        BuildProduct, BuildState, BuiltOutputs, JobState, NewJob, Status, StatusDb,
    };
    use tower::ServiceExt;

    use crate::router;

    const T: Timestamp = Timestamp(1_700_000_000_000);

    /// A "store" in a temporary directory with one job whose output `out` holds `bin/hello`,
    /// a manual in `share/doc` (`index.html`, `style.css`, `img/logo.png`, `up`, a symlink
    /// to the output's `bin`, and `leak`, a symlink to a file outside the output), and
    /// `leak`, another such symlink; its build lists `products` (each a path relative to the
    /// output, or absolute when it starts with `/`, then optionally a space and the default
    /// file).
    struct Store {
        _dir: tempfile::TempDir,
        st: AppState,
        job: i64,
        out: StorePath,
    }

    fn store(products: &[&str]) -> Store {
        store_with(products, JobMeta::default(), None)
    }

    fn store_with(products: &[&str], meta: JobMeta, release_name: Option<&str>) -> Store {
        let dir = tempfile::tempdir().unwrap();
        let out = out("hello");
        let phys = physical(dir.path(), out.as_str());
        std::fs::create_dir_all(phys.join("bin")).unwrap();
        std::fs::create_dir_all(phys.join("share/doc/img")).unwrap();
        std::fs::write(phys.join("bin/hello"), "#!/bin/sh\necho hello\n").unwrap();
        std::fs::write(phys.join("share/doc/index.html"), "<h1>Manual</h1>").unwrap();
        std::fs::write(phys.join("share/doc/style.css"), "h1 {}").unwrap();
        std::fs::write(phys.join("share/doc/img/logo.png"), "PNG").unwrap();
        std::fs::write(dir.path().join("secret"), "secret").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), phys.join("leak")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), phys.join("share/doc/leak")).unwrap();
        std::os::unix::fs::symlink(phys.join("bin"), phys.join("share/doc/up")).unwrap();
        let other = physical(dir.path(), self::out("other").as_str());
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("file"), "another job's").unwrap();

        let mut db = StatusDb::open_memory().unwrap();
        let repo = db.upsert_repo(&RepoKey::parse("gh/o/r").unwrap()).unwrap();
        let (eval, _) = db
            .insert_evaluation(repo, "refs/heads/main", &"a".repeat(40), "git+file:///x", T)
            .unwrap();
        let drv = StorePath::new(format!("/nix/store/{}-hello.drv", "d".repeat(32))).unwrap();
        let job = NewJob {
            attr: AttrPath::new("packages.x86_64-linux.hello").unwrap(),
            name: "hello".to_owned(),
            system: Some(System::new("x86_64-linux").unwrap()),
            drv_path: Some(drv.clone()),
            outputs: reconix_spec::Outputs::from([("out".to_owned(), out.clone())]),
            deps: Vec::new(),
            required_features: Vec::new(),
            state: JobState::Queued,
            error: None,
            meta,
            constituents: None,
        };
        db.record_evaluation_result(eval, &[job], T).unwrap();
        let built = BuiltOutputs {
            products: products
                .iter()
                .map(|p| {
                    let (p, default) = match p.split_once(' ') {
                        Some((p, default)) => (p, Some(default.to_owned())),
                        None => (*p, None),
                    };
                    BuildProduct {
                        kind: "file".to_owned(),
                        subtype: "binary-dist".to_owned(),
                        path: if p.starts_with('/') {
                            p.to_owned()
                        } else {
                            format!("{}/{p}", out.as_str())
                        },
                        default_path: default,
                    }
                })
                .collect(),
            release_name: release_name.map(str::to_owned),
            ..BuiltOutputs::default()
        };
        db.upsert_build(&drv, None, BuildState::Running, T).unwrap();
        db.finish_built(&drv, Some(0), &built, T).unwrap();
        let id = db.jobs_of_evaluation(eval).unwrap()[0].id;
        db.set_job_state(id, JobState::Succeeded, None, T).unwrap();
        let st = AppState::new(Status::new(db)).with_store_root(dir.path());
        Store {
            _dir: dir,
            st,
            job: id.0,
            out,
        }
    }

    async fn get(st: &AppState, uri: &str) -> (StatusCode, Vec<u8>, Option<String>) {
        let resp = router(st.clone())
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let disposition = resp
            .headers()
            .get(header::CONTENT_DISPOSITION)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, body.to_vec(), disposition)
    }

    #[tokio::test]
    async fn a_product_inside_the_job_s_output_should_download_as_an_attachment() {
        let s = store(&["bin/hello"]);
        let (status, body, disposition) =
            get(&s.st, &format!("/api/v1/jobs/{}/products/0", s.job)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, b"#!/bin/sh\necho hello\n");
        assert_eq!(
            disposition.as_deref(),
            Some("attachment; filename=\"hello\"")
        );
    }

    #[tokio::test]
    async fn products_outside_the_job_s_outputs_should_be_refused_with_403() {
        let other = format!("{}/file", out("other").as_str());
        let escape = "../../../secret".to_owned();
        let s = store(&["/etc/passwd", "leak", &other, &escape]);
        for n in 0..4 {
            let (status, body, _) =
                get(&s.st, &format!("/api/v1/jobs/{}/products/{n}", s.job)).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "product {n}");
            let body = String::from_utf8(body).unwrap();
            assert!(body.contains("is outside the outputs of job"), "{body}");
            assert!(!body.contains("secret\""), "{body}");
        }
        assert!(s.out.as_str().starts_with("/nix/store/"));
    }

    #[tokio::test]
    async fn missing_or_unknown_products_should_get_a_clear_404() {
        let s = store(&["bin/missing"]);
        let (status, _, _) = get(&s.st, &format!("/api/v1/jobs/{}/products/0", s.job)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, body, _) = get(&s.st, &format!("/api/v1/jobs/{}/products/1", s.job)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(
            String::from_utf8(body)
                .unwrap()
                .contains("product not found")
        );
        let (status, _, _) = get(&s.st, "/api/v1/jobs/999/products/0").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn a_directory_product_should_redirect_to_its_default_file_or_be_listed() {
        let s = store(&["share/doc index.html", "share/doc"]);
        let resp = router(s.st.clone())
            .oneshot(
                Request::get(format!("/api/v1/jobs/{}/products/0", s.job))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::SEE_OTHER);
        assert_eq!(
            resp.headers()[header::LOCATION],
            format!("/api/v1/jobs/{}/products/0/index.html", s.job).as_str()
        );
        let (status, body, _) = get(&s.st, &format!("/api/v1/jobs/{}/products/1", s.job)).await;
        assert_eq!(status, StatusCode::OK);
        let page = String::from_utf8(body).unwrap();
        let base = format!("/api/v1/jobs/{}/products/1", s.job);
        for listed in [
            format!("href=\"{base}/img\">img/</a>"),
            format!("href=\"{base}/index.html\">index.html</a>"),
            format!("href=\"{base}/style.css\">style.css</a>"),
        ] {
            assert!(page.contains(&listed), "{listed} missing: {page}");
        }
        assert!(page.find("img/").unwrap() < page.find("index.html").unwrap());
        // A link to a directory is listed as one.
        assert!(
            page.contains(&format!("href=\"{base}/up\">up/</a>")),
            "{page}"
        );
        let (status, body, _) = get(&s.st, &format!("{base}/img")).await;
        assert_eq!(status, StatusCode::OK);
        let page = String::from_utf8(body).unwrap();
        assert!(
            page.contains(&format!("href=\"{base}/img/logo.png\"")),
            "{page}"
        );
        assert!(page.contains(&format!("href=\"{base}\">../</a>")), "{page}");
    }

    #[tokio::test]
    async fn a_huge_directory_should_list_its_first_entries_in_order() {
        let s = store(&["share/doc"]);
        let big = physical(s._dir.path(), s.out.as_str()).join("share/doc/big");
        std::fs::create_dir(&big).unwrap();
        for i in (0..LISTED_ENTRIES + 2).rev() {
            std::fs::write(big.join(format!("f{i:05}")), "").unwrap();
        }
        let base = format!("/api/v1/jobs/{}/products/0/big", s.job);
        let (status, body, _) = get(&s.st, &base).await;
        assert_eq!(status, StatusCode::OK);
        let page = String::from_utf8(body).unwrap();
        let last = LISTED_ENTRIES - 1;
        for listed in [0, 1, last] {
            assert!(page.contains(&format!(">f{listed:05}</a>")), "f{listed:05}");
        }
        for cut in [last + 1, last + 2] {
            assert!(!page.contains(&format!(">f{cut:05}</a>")), "f{cut:05}");
        }
        assert!(page.contains("and 2 more entries"));
    }

    #[tokio::test]
    async fn files_below_a_directory_product_should_be_shown_inline_in_a_sandbox() {
        let s = store(&["share/doc index.html"]);
        let base = format!("/api/v1/jobs/{}/products/0", s.job);
        for (file, kind, body) in [
            ("index.html", "text/html", "<h1>Manual</h1>"),
            ("style.css", "text/css", "h1 {}"),
            ("img/logo.png", "image/png", "PNG"),
        ] {
            let resp = router(s.st.clone())
                .oneshot(
                    Request::get(format!("{base}/{file}"))
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK, "{file}");
            let headers = resp.headers().clone();
            assert_eq!(headers[header::CONTENT_TYPE], kind, "{file}");
            assert_eq!(headers[header::CONTENT_SECURITY_POLICY], "sandbox");
            assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            assert!(headers.get(header::CONTENT_DISPOSITION).is_none());
            let got = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap();
            assert_eq!(got, body.as_bytes(), "{file}");
        }
    }

    #[tokio::test]
    async fn a_path_through_a_file_should_be_a_404_not_a_server_error() {
        let s = store(&["share/doc index.html"]);
        let base = format!("/api/v1/jobs/{}/products/0", s.job);
        for path in ["index.html/x", "style.css/a/b"] {
            let resp = router(s.st.clone())
                .oneshot(
                    Request::get(format!("{base}/{path}"))
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}");
        }
    }

    #[tokio::test]
    async fn paths_below_a_directory_product_should_not_escape_the_job_s_outputs() {
        let s = store(&["share/doc", "bin/hello"]);
        let base = format!("/api/v1/jobs/{}/products/0", s.job);
        // A symlink out of the store, and one to another part of the same output (allowed).
        let (status, body, _) = get(&s.st, &format!("{base}/leak")).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(!String::from_utf8(body).unwrap().contains("secret\""));
        let (status, body, _) = get(&s.st, &format!("{base}/up/hello")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, b"#!/bin/sh\necho hello\n");
        // `..`, encoded or not, is refused before anything is read.
        for escape in [
            "..%2F..%2F..%2Fsecret",
            "img/..%2F..%2Fbin%2Fhello",
            "%2E%2E",
        ] {
            let (status, body, _) = get(&s.st, &format!("{base}/{escape}")).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{escape}");
            assert!(
                String::from_utf8(body)
                    .unwrap()
                    .contains("not a plain path"),
                "{escape}"
            );
        }
        let (status, _, _) = get(&s.st, &format!("{base}/nothing-here")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        // A file product has nothing below it.
        let (status, body, _) = get(
            &s.st,
            &format!("/api/v1/jobs/{}/products/1/anything", s.job),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(String::from_utf8(body).unwrap().contains("is a file"));
    }

    #[tokio::test]
    async fn the_api_and_the_job_page_should_list_products_release_name_and_meta() {
        let meta = JobMeta {
            description: Some("Says <hello>".to_owned()),
            homepage: Some("https://example.org/h".to_owned()),
            license: vec!["MIT".to_owned(), "GPL-3.0-only".to_owned()],
            maintainers: vec!["Alice".to_owned()],
            timeout: Some(5),
            ..JobMeta::default()
        };
        let s = store_with(&["bin/hello"], meta, Some("hello-2.12"));
        let (status, body, _) = get(&s.st, &format!("/api/v1/jobs/{}", s.job)).await;
        assert_eq!(status, StatusCode::OK);
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["meta"]["description"], "Says <hello>");
        assert_eq!(json["meta"]["license"][1], "GPL-3.0-only");
        assert_eq!(json["meta"]["timeout"], 5);
        assert_eq!(json["build"]["release_name"], "hello-2.12");
        assert_eq!(json["build"]["products"][0]["type"], "file");
        assert_eq!(json["build"]["products"][0]["subtype"], "binary-dist");
        let (status, body, _) = get(&s.st, &format!("/jobs/{}", s.job)).await;
        assert_eq!(status, StatusCode::OK);
        let page = String::from_utf8(body).unwrap();
        for shown in [
            "hello-2.12",
            "Says &#60;hello&#62;",
            "https://example.org/h",
            "MIT, GPL-3.0-only",
            "Alice",
            "timeout 5 s",
            &format!("href=\"/api/v1/jobs/{}/products/0\"", s.job),
        ] {
            assert!(page.contains(shown), "{shown} missing: {page}");
        }
    }
}
