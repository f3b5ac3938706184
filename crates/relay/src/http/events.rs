//! `POST /v1/events` and `GET /v1/events/{event_id}`.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use relay_core::{MAX_EVENTS_PER_REQUEST, storable::MAX_STRING_BYTES};
use serde::Deserialize;
use serde_json::Value;
use utoipa::IntoParams;

use super::{
    ApiError, AppState,
    auth::TenantKey,
    body::{JsonObject, QueryParams},
    openapi::ErrorBody,
};
use crate::ingest::IngestReport;

/// The body of `POST /v1/events`, for the OpenAPI document (the handler reads it as JSON and
/// judges each event on its own, so that one bad event never fails its neighbours).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct EventsRequest {
    /// Meta's server events (README, "What an event looks like"). Any JSON value is taken: an
    /// item that is not an event is `rejected` on its own (`not_an_object`), never the request.
    #[schema(min_items = 1, max_items = 1000, value_type = Vec<serde_json::Value>)]
    data: Vec<Value>,
    test_event_code: Option<String>,
}

#[utoipa::path(post, path = "/v1/events", operation_id = "submit_events", tag = "events", security(("tenant_key" = [])), request_body(content = EventsRequest, example = json!({"data": [{"event_name": "Purchase", "event_time": 1767000000, "event_id": "wa:tenant1:order-98765", "action_source": "business_messaging", "messaging_channel": "whatsapp", "user_data": {"whatsapp_business_account_id": "102290129340398", "ctwa_clid": "ARAkLkA8rml..."}, "custom_data": {"currency": "USD", "value": 123.45, "order_id": "98765"}}]})), responses((status = 202, description = "committed; one result per event", body = IngestReport), (status = 400, description = "invalid_json / invalid_query", body = ErrorBody), (status = 401, description = "unauthorized", body = ErrorBody), (status = 403, description = "the wrong kind of key", body = ErrorBody), (status = 413, description = "body_too_large", body = ErrorBody), (status = 422, description = "invalid_body / invalid_value", body = ErrorBody), (status = 503, description = "unavailable", body = ErrorBody)))]
pub async fn submit(
    State(state): State<AppState>,
    TenantKey(scope): TenantKey,
    JsonObject(request): JsonObject,
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
    let test_event_code = match request.get("test_event_code") {
        None | Some(Value::Null) => None,
        Some(Value::String(code)) => Some(code.as_str()),
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                "test_event_code must be a string (or null)",
            ));
        }
    };
    if let Some(why) = test_event_code
        .and_then(|code| relay_core::storable::unstorable_reason(code, MAX_STRING_BYTES))
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
            format!("test_event_code: {why}"),
        ));
    }
    let report = state
        .ingestor
        .ingest(events, &scope, test_event_code)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(report)))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ShowQuery {
    dataset_id: Option<String>,
}

#[utoipa::path(get, path = "/v1/events/{event_id}", operation_id = "show_event", tag = "events", security(("tenant_key" = [])), params(("event_id" = String, Path), ShowQuery), responses((status = 200, description = "the event, its payload and attempts", body = Object), (status = 404, description = "not_found", body = ErrorBody), (status = 409, description = "ambiguous", body = ErrorBody), (status = 400, description = "invalid_json / invalid_query", body = ErrorBody), (status = 401, description = "unauthorized", body = ErrorBody), (status = 403, description = "the wrong kind of key", body = ErrorBody), (status = 413, description = "body_too_large", body = ErrorBody), (status = 422, description = "invalid_body / invalid_value", body = ErrorBody), (status = 503, description = "unavailable", body = ErrorBody)))]
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
