//! `GET /v1/dead-letters` and `POST /v1/dead-letters/replay`.

use axum::{Json, extract::State, http::StatusCode};
use relay_store::DeadLetterFilter;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::{
    ApiError, AppState,
    auth::TenantKey,
    body::{JsonBody, QueryParams},
    events::record_json,
    openapi::ErrorBody,
};
use crate::clock::now_ms;
use crate::tenancy::keys::Scope;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    dataset_id: Option<String>,
    asset_id: Option<String>,
    limit: Option<i64>,
    /// `next_before` of the previous page.
    before: Option<i64>,
}

/// Payload characters one page of dead letters holds at most (besides `limit` rows).
const DEAD_LETTER_PAGE_CHARS: usize = 8 << 20;

#[utoipa::path(get, path = "/v1/dead-letters", operation_id = "list_dead_letters", tag = "events", security(("tenant_key" = [])), params(ListQuery), responses((status = 200, description = "dead letters, newest first: at most `limit` (100; up to 1,000) and at most 8 MiB of payload characters; `next_before` is the `before` of the next page, null at the end", body = Object), (status = 400, description = "invalid_json / invalid_query", body = ErrorBody), (status = 401, description = "unauthorized", body = ErrorBody), (status = 403, description = "the wrong kind of key", body = ErrorBody), (status = 413, description = "body_too_large", body = ErrorBody), (status = 422, description = "invalid_body / invalid_value", body = ErrorBody), (status = 503, description = "unavailable", body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    TenantKey(scope): TenantKey,
    QueryParams(q): QueryParams<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let filter = DeadLetterFilter {
        tenant: Some(scope.tenant.clone()),
        within_assets: scope_assets(&scope),
        dataset_id: q.dataset_id,
        asset_id: q.asset_id,
        limit: Some(q.limit.unwrap_or(100).clamp(1, 1_000)),
        ..DeadLetterFilter::default()
    };
    let page = state
        .store
        .list_dead_letters_page(&filter, q.before, DEAD_LETTER_PAGE_CHARS)
        .await?;
    let data: Vec<Value> = page.items.into_iter().map(record_json).collect();
    Ok(Json(
        json!({ "count": data.len(), "data": data, "next_before": page.next_before }),
    ))
}

/// Which dead letters to replay. At least one selector, or `all: true`, is required.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    event_ids: Option<Vec<String>>,
    dataset_id: Option<String>,
    asset_id: Option<String>,
    #[serde(default)]
    all: bool,
}

#[utoipa::path(post, path = "/v1/dead-letters/replay", tag = "events", security(("tenant_key" = [])), request_body(content = ReplayRequest, example = json!({"event_ids": ["wa:tenant1:order-98765"]})), responses((status = 200, description = "how many were queued again", body = Object), (status = 400, description = "invalid_json / invalid_query", body = ErrorBody), (status = 401, description = "unauthorized", body = ErrorBody), (status = 403, description = "the wrong kind of key", body = ErrorBody), (status = 413, description = "body_too_large", body = ErrorBody), (status = 422, description = "invalid_body / invalid_value", body = ErrorBody), (status = 503, description = "unavailable", body = ErrorBody)))]
pub async fn replay(
    State(state): State<AppState>,
    TenantKey(scope): TenantKey,
    JsonBody(request): JsonBody<ReplayRequest>,
) -> Result<Json<Value>, ApiError> {
    let selective =
        request.event_ids.is_some() || request.dataset_id.is_some() || request.asset_id.is_some();
    if !selective && !request.all {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "no_selector",
            "name event_ids, a dataset_id or an asset_id, or pass \"all\": true to replay every dead letter",
        ));
    }
    let filter = DeadLetterFilter {
        tenant: Some(scope.tenant.clone()),
        within_assets: scope_assets(&scope),
        dataset_id: request.dataset_id,
        asset_id: request.asset_id,
        event_ids: request.event_ids,
        ..DeadLetterFilter::default()
    };
    let replayed = state.store.replay_dead_letters(&filter, now_ms()).await?;
    if replayed > 0 {
        state.wake.notify_waiters();
    }
    Ok(Json(json!({ "replayed": replayed })))
}

/// The asset limit of a key, as a filter.
fn scope_assets(scope: &Scope) -> Option<Vec<String>> {
    scope.assets.as_ref().map(|a| a.to_vec())
}
