//! `GET /api/v1/jobs/{id}/products/{n}`: downloads the n-th build product (from 0) of a job, as
//! its build listed it in `nix-support/hydra-build-products`.
//!
//! A build writes that list itself, so a product may name any path at all (`/etc/shadow`, a
//! symlink out of the store, another job's output). Only a regular file inside one of *that
//! job's* outputs is ever served: the path is checked as written ([`product_inside`], pure),
//! then resolved on disk with every symlink followed and checked again against the outputs'
//! own resolved locations. Anything else is refused with 403 and the reason.

use std::path::{Component, Path, PathBuf};

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use reconix_spec::StorePath;
use reconix_status::JobId;
use tokio_util::io::ReaderStream;

use crate::{ApiError, AppState};

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

/// Returns where store path text `path` is on this machine: below `store_root` (a chroot
/// store's directory, or `/`).
fn physical(store_root: &Path, path: &str) -> PathBuf {
    store_root.join(path.trim_start_matches('/'))
}

/// `GET /api/v1/jobs/{id}/products/{n}`.
pub(crate) async fn download(
    State(st): State<AppState>,
    UrlPath((id, n)): UrlPath<(i64, usize)>,
) -> Result<Response, ApiError> {
    let page = st
        .status
        .call(move |db| db.job_page(JobId(id)))
        .await?
        .ok_or(ApiError::NotFound("job"))?;
    let product = page.products.get(n).ok_or(ApiError::NotFound("product"))?;
    let outputs: Vec<StorePath> = page.job.outputs.values().cloned().collect();
    let outside = || {
        ApiError::Forbidden(format!(
            "product {n} ({}) is outside the outputs of job {id}",
            product.path
        ))
    };
    product_inside(&product.path, &outputs).ok_or_else(outside)?;
    // Resolve every symlink, the outputs' too (a chroot store may sit behind one), and check
    // again: a link inside the output may point anywhere.
    let root = st.store_root();
    let resolved = tokio::fs::canonicalize(physical(&root, &product.path))
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ApiError::NotFound("product file"),
            _ => ApiError::Internal(format!("product {}: {e}", product.path)),
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
    let file = tokio::fs::File::open(&resolved)
        .await
        .map_err(|e| ApiError::Internal(format!("product {}: {e}", product.path)))?;
    let meta = file
        .metadata()
        .await
        .map_err(|e| ApiError::Internal(format!("product {}: {e}", product.path)))?;
    if !meta.is_file() {
        return Err(ApiError::BadRequest(format!(
            "product {n} ({}) is not a regular file (a directory product cannot be downloaded)",
            product.path
        )));
    }
    let name = Path::new(&product.path)
        .file_name()
        .map(|n| n.to_string_lossy().replace(['"', '\\'], "_"))
        .unwrap_or_else(|| "product".to_owned());
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{name}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"));
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (header::CONTENT_DISPOSITION, disposition),
            (header::CONTENT_LENGTH, HeaderValue::from(meta.len())),
        ],
        Body::from_stream(ReaderStream::new(file)),
    )
        .into_response())
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

    use std::collections::BTreeMap;

    use axum::http::{Request, StatusCode};
    use reconix_spec::{AttrPath, JobMeta, RepoKey, System, Timestamp};
    use reconix_status::{
        BuildProduct, BuildState, BuiltOutputs, JobState, NewJob, Status, StatusDb,
    };
    use tower::ServiceExt;

    use crate::router;

    const T: Timestamp = Timestamp(1_700_000_000_000);

    /// A "store" in a temporary directory with one job whose output `out` holds `bin/hello`,
    /// a directory `share/doc`, and `leak`, a symlink to a file outside the output; its
    /// build lists `products` (each a path relative to the output, or absolute when it
    /// starts with `/`).
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
        std::fs::create_dir_all(phys.join("share/doc")).unwrap();
        std::fs::write(phys.join("bin/hello"), "#!/bin/sh\necho hello\n").unwrap();
        std::fs::write(dir.path().join("secret"), "secret").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), phys.join("leak")).unwrap();
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
            outputs: BTreeMap::from([("out".to_owned(), out.clone())]),
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
                .map(|p| BuildProduct {
                    kind: "file".to_owned(),
                    subtype: "binary-dist".to_owned(),
                    path: if p.starts_with('/') {
                        (*p).to_owned()
                    } else {
                        format!("{}/{p}", out.as_str())
                    },
                    default_path: None,
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
    async fn a_directory_missing_or_unknown_product_should_get_a_clear_4xx() {
        let s = store(&["share/doc", "bin/missing"]);
        let (status, body, _) = get(&s.st, &format!("/api/v1/jobs/{}/products/0", s.job)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            String::from_utf8(body)
                .unwrap()
                .contains("not a regular file")
        );
        let (status, _, _) = get(&s.st, &format!("/api/v1/jobs/{}/products/1", s.job)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, body, _) = get(&s.st, &format!("/api/v1/jobs/{}/products/2", s.job)).await;
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
