//! Health, readiness and Prometheus metrics.

use std::time::{Duration, Instant};

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

use super::AppState;
use crate::{clock::now_ms, config::MetricsConfig, observability};

/// Who may scrape, and when the queue gauges were last read from the database.
pub struct MetricsAccess {
    key: Option<SecretString>,
    every: Duration,
    /// Held while the gauges are read, so concurrent scrapers wait for one read, not many.
    read_at: tokio::sync::Mutex<Option<Instant>>,
    /// `/metrics` is on the API's listener (no `metrics.listen` of its own).
    pub on_api_listener: bool,
}

impl MetricsAccess {
    pub fn new(config: &MetricsConfig) -> Self {
        MetricsAccess {
            key: config.key.clone(),
            every: config.queue_stats_every,
            read_at: tokio::sync::Mutex::new(None),
            on_api_listener: config.listen.is_none(),
        }
    }

    fn allows(&self, headers: &HeaderMap) -> bool {
        let Some(key) = &self.key else {
            return true;
        };
        let sent = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        bool::from(sent.as_bytes().ct_eq(key.expose_secret().as_bytes()))
    }
}

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

#[utoipa::path(get, path = "/metrics", tag = "ops", responses((status = 200, description = "Prometheus text", body = String, content_type = "text/plain"), (status = 401, description = "`metrics.key` is set and the request does not carry it", body = String, content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let access = &state.metrics_access;
    if !access.allows(&headers) {
        return (StatusCode::UNAUTHORIZED, "metrics.key required").into_response();
    }
    {
        // A scrape costs a database read at most once per `queue_stats_every`, however many
        // scrapers there are; the others render the gauges as last read.
        let mut read_at = access.read_at.lock().await;
        if read_at.is_none_or(|at| at.elapsed() >= access.every) {
            match state.store.queue_stats().await {
                Ok(stats) => observability::queue(stats, now_ms()),
                Err(e) => tracing::warn!(error = %e, "queue stats unavailable for /metrics"),
            }
            *read_at = Some(Instant::now());
        }
    }
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}
