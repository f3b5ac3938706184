//! `POST /v1/events` and `GET /v1/events/{event_id}`.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use relay_core::MAX_EVENTS_PER_REQUEST;
use serde::Deserialize;
use serde_json::Value;

use super::{
    ApiError, AppState,
    auth::TenantKey,
    body::{JsonBody, QueryParams},
};
use crate::ingest::IngestReport;

pub async fn submit(
    State(state): State<AppState>,
    TenantKey(scope): TenantKey,
    JsonBody(request): JsonBody<Value>,
) -> Result<(StatusCode, Json<IngestReport>), ApiError> {
    let events = request
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                "the body must be {\"data\": [ ...events... ]}",
            )
        })?;
    if events.is_empty() || events.len() > MAX_EVENTS_PER_REQUEST {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "batch_size",
            format!(
                "data holds {} events; send between 1 and {MAX_EVENTS_PER_REQUEST} per request",
                events.len()
            ),
        ));
    }
    let test_event_code = request.get("test_event_code").and_then(Value::as_str);
    if test_event_code.is_some_and(|code| code.contains('\0')) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
            "test_event_code contains a NUL character (\\u0000), which cannot be stored or sent",
        ));
    }
    let report = state
        .ingestor
        .ingest(events, &scope, test_event_code)
        .await?;
    if report.accepted > 0 {
        state.wake.notify_waiters();
    }
    Ok((StatusCode::ACCEPTED, Json(report)))
}

#[derive(Deserialize)]
pub struct ShowQuery {
    dataset_id: Option<String>,
}

pub async fn show(
    State(state): State<AppState>,
    TenantKey(scope): TenantKey,
    Path(event_id): Path<String>,
    QueryParams(query): QueryParams<ShowQuery>,
) -> Result<Json<Value>, ApiError> {
    // Another tenant's event looks exactly like a missing one.
    let mut found = state
        .store
        .find_events(&event_id, query.dataset_id.as_deref(), Some(&scope.tenant))
        .await?;
    found.retain(|r| scope.allows_asset_id(&r.tenant, &r.asset_id));
    match found.len() {
        0 => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no event with event_id {event_id:?}"),
        )),
        1 => Ok(Json(record_json(found.remove(0)))),
        n => Err(ApiError::new(
            StatusCode::CONFLICT,
            "ambiguous",
            format!("event_id {event_id:?} exists in {n} datasets; add ?dataset_id="),
        )),
    }
}

/// An event record as the API shows it: the payload as JSON, not as a string.
pub fn record_json(record: relay_store::EventRecord) -> Value {
    let payload: Value = serde_json::from_str(&record.payload).unwrap_or(Value::Null);
    let mut value = serde_json::to_value(&record).expect("records serialise");
    value["payload"] = payload;
    value
}
