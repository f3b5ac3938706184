//! Health, readiness and Prometheus metrics.

use axum::{extract::State, http::StatusCode, response::IntoResponse};

use super::AppState;
use crate::{clock::now_ms, observability};

#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "alive", body = String, content_type = "text/plain")))]
pub async fn healthz() -> &'static str {
    "ok"
}

#[utoipa::path(get, path = "/readyz", tag = "ops", responses((status = 200, description = "the database answers", body = String, content_type = "text/plain"), (status = 503, description = "database unreachable", body = String, content_type = "text/plain")))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready"),
        Err(e) => {
            tracing::warn!(error = %e, "not ready");
            (StatusCode::SERVICE_UNAVAILABLE, "database unreachable")
        }
    }
}

#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, description = "Prometheus text", body = String, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    match state.store.queue_stats().await {
        Ok(stats) => observability::queue(stats, now_ms()),
        Err(e) => tracing::warn!(error = %e, "queue stats unavailable for /metrics"),
    }
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
