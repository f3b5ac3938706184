//! Health, readiness and Prometheus metrics.

use axum::{extract::State, http::StatusCode, response::IntoResponse};

use super::AppState;
use crate::{clock::now_ms, observability};

pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn readyz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready"),
        Err(e) => {
            tracing::warn!(error = %e, "not ready");
            (StatusCode::SERVICE_UNAVAILABLE, "database unreachable")
        }
    }
}

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
