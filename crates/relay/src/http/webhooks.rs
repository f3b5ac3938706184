//! `GET|POST /webhooks/meta`: Meta's verification handshake and webhook deliveries.
//!
//! A delivery is checked against `X-Hub-Signature-256` over the raw bytes before anything is
//! parsed or stored, then stored and answered 200; parsing happens after (see `capture`).
//! Partners whose Meta callback points at their own inbox forward the body and the header
//! unchanged to this same endpoint.

use std::collections::HashMap;

use axum::{
    body::Bytes,
    extract::{Query, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};

use super::{ApiError, AppState, openapi::ErrorBody};
use crate::capture::{Received, Refused};

/// The handshake: `hub.challenge` back with 200 when `hub.verify_token` is right, else 403.
#[utoipa::path(get, path = "/webhooks/meta", tag = "webhooks", params(("hub.mode" = Option<String>, Query), ("hub.verify_token" = Option<String>, Query), ("hub.challenge" = Option<String>, Query)), responses((status = 200, description = "hub.challenge echoed", body = String, content_type = "text/plain"), (status = 403, description = "verification_failed", body = ErrorBody)))]
pub async fn verify(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let param = |k: &str| params.get(k).map(String::as_str);
    match state.capture.handshake(
        param("hub.mode"),
        param("hub.verify_token"),
        param("hub.challenge"),
    ) {
        Some(challenge) => (StatusCode::OK, challenge.to_owned()).into_response(),
        None => ApiError::new(
            StatusCode::FORBIDDEN,
            "verification_failed",
            "hub.mode must be subscribe and hub.verify_token the configured verify token",
        )
        .into_response(),
    }
}

/// A delivery: 200 once durably stored (or already stored), 401 when unsigned or forged.
#[utoipa::path(post, path = "/webhooks/meta", tag = "webhooks", request_body(content = Object, description = "Meta's webhook delivery, signed with X-Hub-Signature-256"), params(("X-Hub-Signature-256" = Option<String>, Header)), responses((status = 200, description = "durably stored", body = Object), (status = 401, description = "unsigned or forged", body = ErrorBody), (status = 413, description = "body_too_large", body = ErrorBody), (status = 503, description = "unavailable", body = ErrorBody)))]
pub async fn receive(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the webhook body is larger than webhooks.max_body_bytes",
            )
        } else {
            ApiError::from(e)
        }
    })?;
    let signature = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok());
    let waba_hint = params.get("waba_id").cloned();
    match state.capture.receive(&body, signature, waba_hint).await? {
        Ok(Received::Stored | Received::Duplicate) => {
            Ok((StatusCode::OK, "EVENT_RECEIVED").into_response())
        }
        Err(Refused::NotConfigured) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "webhooks_not_configured",
            "no Meta app secret is configured (CAPI_RELAY_META_APP_SECRET or webhooks.apps)",
        )),
        Err(Refused::BadSignature) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_signature",
            "X-Hub-Signature-256 is missing or does not match the body under any app secret",
        )),
    }
}

/// Which failed deliveries to process again: `ids`, `since_ms` (received at or after), or
/// `all: true`.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReprocessRequest {
    ids: Option<Vec<i64>>,
    since_ms: Option<i64>,
    #[serde(default)]
    all: bool,
}

/// `POST /v1/admin/webhooks/reprocess`: failed deliveries back to pending (`capture reprocess`).
#[utoipa::path(post, path = "/v1/admin/webhooks/reprocess", tag = "webhooks", security(("admin_key" = [])), request_body(content = ReprocessRequest, example = json!({"ids": [42]})), responses((status = 200, description = "{requeued, without_body}: how many were queued again, and how many matched but no longer have their raw body", body = Object), (status = 400, description = "invalid_json / invalid_query", body = ErrorBody), (status = 401, description = "unauthorized", body = ErrorBody), (status = 403, description = "the wrong kind of key", body = ErrorBody), (status = 413, description = "body_too_large", body = ErrorBody), (status = 422, description = "invalid_body / invalid_value / no_selector", body = ErrorBody), (status = 503, description = "unavailable", body = ErrorBody)))]
pub async fn reprocess(
    State(state): State<AppState>,
    _admin: super::auth::AdminKey,
    super::body::JsonBody(request): super::body::JsonBody<ReprocessRequest>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let ids = request.ids.unwrap_or_default();
    if ids.is_empty() && request.since_ms.is_none() && !request.all {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "no_selector",
            "name ids or since_ms, or pass \"all\": true to reprocess every failed delivery",
        ));
    }
    let filter = relay_store::capture::ReprocessFilter {
        ids,
        since_ms: request.since_ms,
    };
    let done = state.capture.reprocess(&filter).await?;
    Ok(axum::Json(serde_json::json!({
        "requeued": done.requeued,
        "without_body": done.without_body,
    })))
}
