//! Observability endpoints: `GET /metrics` (the OpenMetrics text format, which Prometheus
//! scrapes natively) and `GET /readyz`.
//!
//! `/metrics` serves what the daemon recorded in its [`Metrics`] registry plus gauges counted
//! from the database at scrape time. `/readyz` answers 200 once the database answers and every
//! loop registered in the registry has run (or found nothing to do) since the daemon started;
//! `/healthz` only says the process serves HTTP.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use reconix_status::{DeliveryOutcome, Metrics, OPENMETRICS_CONTENT_TYPE};
use tracing::warn;

use crate::{ApiError, AppState};

/// Returns the routes of this module.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/readyz", get(readyz))
}

async fn metrics(State(st): State<AppState>) -> Result<Response, ApiError> {
    let counts = st.status.call(|db| db.state_counts()).await?;
    let body = st
        .metrics
        .encode(&counts)
        .map_err(|err| ApiError::Internal(format!("encoding metrics: {err}")))?;
    Ok(([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], body).into_response())
}

async fn readyz(State(st): State<AppState>) -> Response {
    let healths = match st.status.call(|db| db.loops()).await {
        Ok(healths) => healths,
        Err(err) => {
            // The full error goes to the log; probes only need to know that it failed.
            warn!(error = %err, "readiness check: the status database does not answer");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: the status database does not answer\n",
            )
                .into_response();
        }
    };
    let pending = st.metrics.pending_loops(&healths);
    if pending.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: waiting for the first run of {}\n",
                pending.join(", ")
            ),
        )
            .into_response()
    }
}

/// Counts one webhook delivery to `/webhooks/{forge_name}` under the word of its answer: the
/// intake's outcome (`new-head`, `unchanged`, `coalesced`, `duplicate`, `ignored`) or why it was
/// refused (`unknown-forge`, `unauthorized`, `bad-request`, `error`).
pub(crate) fn count_delivery(
    metrics: &Metrics,
    forge_name: &str,
    delivered: &Result<DeliveryOutcome, ApiError>,
) {
    let result = match delivered {
        Ok(DeliveryOutcome::NewHead) => "new-head",
        Ok(DeliveryOutcome::Unchanged) => "unchanged",
        Ok(DeliveryOutcome::Coalesced) => "coalesced",
        Ok(DeliveryOutcome::Duplicate) => "duplicate",
        Ok(DeliveryOutcome::Ignored) => "ignored",
        // The name comes from the sender's URL: it must not become a label value.
        Err(ApiError::NoForge(_)) => {
            metrics.record_webhook_delivery(None, "unknown-forge");
            return;
        }
        Err(ApiError::Signature(_)) => "unauthorized",
        Err(ApiError::Payload(_)) => "bad-request",
        Err(_) => "error",
    };
    metrics.record_webhook_delivery(Some(forge_name), result);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::{Body, to_bytes};
    use axum::http::Request;
    use reconix_spec::{AttrPath, ForgeKind, RepoKey, StorePath, System, Timestamp};
    use reconix_status::{BuildState, BuilderKind, ForgeCallOutcome, JobState, Status, StatusDb};
    use tower::ServiceExt;

    use super::*;
    use crate::router;

    async fn get(state: &AppState, uri: &str) -> (StatusCode, Option<String>, String) {
        let res = router(state.clone())
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let code = res.status();
        let content_type = res
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = to_bytes(res.into_body(), 1 << 20).await.unwrap();
        (
            code,
            content_type,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    /// An evaluation with three jobs, two of them failed and one queued, and one queued build.
    fn seeded() -> Status {
        let mut db = StatusDb::open_memory().unwrap();
        let repo = db
            .upsert_repo(&RepoKey::parse("gh/acme/widgets").unwrap())
            .unwrap();
        let now = Timestamp::now();
        let (eval, _) = db
            .insert_evaluation(
                repo,
                "refs/heads/main",
                &"a".repeat(40),
                "git+file:///r",
                now,
            )
            .unwrap();
        let jobs: Vec<reconix_status::NewJob> = ["x", "y", "z"]
            .iter()
            .enumerate()
            .map(|(n, name)| reconix_status::NewJob {
                attr: AttrPath::new(format!("packages.x86_64-linux.{name}")).unwrap(),
                name: (*name).to_owned(),
                system: Some(System::new("x86_64-linux").unwrap()),
                drv_path: Some(StorePath::new(format!("/nix/store/{n:0>32}-{name}.drv")).unwrap()),
                outputs: reconix_spec::Outputs::new(),
                deps: Vec::new(),
                required_features: Vec::new(),
                state: JobState::Queued,
                error: None,
                constituents: None,
                meta: reconix_spec::JobMeta::default(),
            })
            .collect();
        db.record_evaluation_result(eval, &jobs, now).unwrap();
        let ids: Vec<_> = db
            .jobs_of_evaluation(eval)
            .unwrap()
            .into_iter()
            .map(|j| j.id)
            .collect();
        for id in &ids[..2] {
            db.set_job_state(*id, JobState::Failed, Some("boom"), now)
                .unwrap();
        }
        Status::new(db)
    }

    fn line(text: &str, expected: &str) -> bool {
        text.lines().any(|l| l == expected)
    }

    #[tokio::test]
    async fn metrics_should_serve_db_gauges_and_recorded_values() {
        let metrics = Metrics::new();
        metrics.register_loop("gcroots");
        metrics.record_reconcile("builds", Duration::from_millis(30), Ok(()));
        metrics.record_reconcile("builds", Duration::from_millis(70), Err("nix: boom"));
        metrics.record_build(
            BuilderKind::Agent,
            Some(BuildState::Failed),
            Duration::from_secs(90),
        );
        metrics.record_forge_call("gh", ForgeKind::Github, ForgeCallOutcome::Unauthorized);
        metrics.record_rate_limit("gh", Duration::from_secs(30));
        let state = AppState::new(seeded()).with_metrics(metrics);

        let (code, content_type, text) = get(&state, "/metrics").await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(content_type.as_deref(), Some(OPENMETRICS_CONTENT_TYPE));
        for expected in [
            r#"reconix_jobs{state="failed"} 2"#,
            r#"reconix_jobs{state="queued"} 1"#,
            r#"reconix_jobs{state="succeeded"} 0"#,
            r#"reconix_evaluations{state="building"} 1"#,
            r#"reconix_queue_depth{queue="jobs"} 1"#,
            r#"reconix_queue_depth{queue="builds"} 0"#,
            r#"reconix_loop_reconciles_total{loop="builds"} 2"#,
            r#"reconix_loop_errors_total{loop="builds"} 1"#,
            r#"reconix_loop_errors_total{loop="gcroots"} 0"#,
            r#"reconix_loop_reconcile_duration_seconds_count{loop="builds"} 2"#,
            r#"reconix_build_duration_seconds_sum{builder="agent",result="failed"} 90.0"#,
            r#"reconix_forge_api_calls_total{forge="gh",kind="github",outcome="unauthorized"} 1"#,
            r#"reconix_forge_rate_limit_waits_total{forge="gh"} 1"#,
            r#"reconix_forge_rate_limit_wait_seconds_total{forge="gh"} 30.0"#,
            "# TYPE reconix_build_duration_seconds histogram",
            "# EOF",
        ] {
            assert!(line(&text, expected), "`{expected}` missing in:\n{text}");
        }
    }

    #[tokio::test]
    async fn readyz_should_answer_503_until_every_registered_loop_has_run() {
        let metrics = Metrics::new();
        metrics.register_loop("builds");
        metrics.register_loop("heads");
        let status = Status::new(StatusDb::open_memory().unwrap());
        let state = AppState::new(status.clone()).with_metrics(metrics.clone());

        let (code, _, text) = get(&state, "/readyz").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            text,
            "not ready: waiting for the first run of builds, heads\n"
        );

        status
            .call(|db| db.record_loop_run("builds", Err("boom"), None, Timestamp::now()))
            .await
            .unwrap();
        let (code, _, text) = get(&state, "/readyz").await;
        assert_eq!(
            (code, text.as_str()),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: waiting for the first run of heads\n"
            )
        );

        // `heads` has no hosted repository to reconcile: it will never record a run.
        metrics.record_listing("heads", 0);
        let (code, _, text) = get(&state, "/readyz").await;
        assert_eq!((code, text.as_str()), (StatusCode::OK, "ready\n"));
        let (code, _, text) = get(&state, "/healthz").await;
        assert_eq!((code, text.as_str()), (StatusCode::OK, "ok\n"));
    }

    #[tokio::test]
    async fn webhook_route_should_count_each_delivery() {
        let status = Status::new(StatusDb::open_memory().unwrap());
        let state = AppState::new(status).with_metrics(Metrics::new());
        let res = router(state.clone())
            .oneshot(
                Request::post("/webhooks/nope")
                    .body(Body::from("{}"))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        let (_, _, text) = get(&state, "/metrics").await;
        let expected = r#"reconix_webhook_deliveries_total{forge="",result="unknown-forge"} 1"#;
        assert!(line(&text, expected), "`{expected}` missing in:\n{text}");
    }

    #[test]
    fn deliveries_should_be_counted_by_result_without_unknown_forge_names() {
        let metrics = Metrics::new();
        count_delivery(&metrics, "gh", &Ok(DeliveryOutcome::Duplicate));
        count_delivery(&metrics, "gh", &Ok(DeliveryOutcome::NewHead));
        count_delivery(&metrics, "nope", &Err(ApiError::NoForge("nope".to_owned())));
        count_delivery(&metrics, "gh", &Err(ApiError::Internal("x".to_owned())));
        let text = metrics
            .encode(&reconix_status::StateCounts::default())
            .unwrap();
        for expected in [
            r#"reconix_webhook_deliveries_total{forge="gh",result="duplicate"} 1"#,
            r#"reconix_webhook_deliveries_total{forge="gh",result="new-head"} 1"#,
            r#"reconix_webhook_deliveries_total{forge="gh",result="error"} 1"#,
            r#"reconix_webhook_deliveries_total{forge="",result="unknown-forge"} 1"#,
        ] {
            assert!(line(&text, expected), "`{expected}` missing in:\n{text}");
        }
        assert!(!text.contains("nope"), "{text}");
    }
}
