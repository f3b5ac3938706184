//! The contacts captured from webhooks: `GET /v1/contacts/{channel}/{asset_id}/{customer}` shows
//! one with its touches; `PUT …/customer-id` links the CRM's own id to it. Keyed by
//! (channel, asset) throughout: the caller's key must own the asset.

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use relay_core::Channel;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::{
    ApiError, AppState,
    auth::{AdminKey, TenantKey},
    body::{JsonBody, QueryParams},
    openapi::ErrorBody,
};
use crate::tenancy::keys::Scope;

fn channel(raw: &str) -> Result<Channel, ApiError> {
    raw.parse()
        .map_err(|m: String| ApiError::new(StatusCode::NOT_FOUND, "unknown_channel", m))
}

/// The asset must be the caller's; another tenant's asset looks exactly like an unknown one.
async fn owned(state: &AppState, scope: &Scope, asset_id: &str) -> Result<(), ApiError> {
    match state.store.get_asset(asset_id).await? {
        Some(asset) if scope.allows(&asset) => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("asset {asset_id} is not registered for this API key"),
        )),
    }
}

#[utoipa::path(get, path = "/v1/contacts/{channel}/{asset_id}/{customer}", operation_id = "show_contact", tag = "contacts", security(("tenant_key" = [])), params(("channel" = String, Path), ("asset_id" = String, Path), ("customer" = String, Path, description = "phone, wa_id, user id, PSID or IGSID")), responses((status = 200, description = "the contact and its touches", body = Object), (status = 404, description = "not_found", body = ErrorBody), (status = 400, description = "invalid_json / invalid_query", body = ErrorBody), (status = 401, description = "unauthorized", body = ErrorBody), (status = 403, description = "the wrong kind of key", body = ErrorBody), (status = 413, description = "body_too_large", body = ErrorBody), (status = 422, description = "invalid_body / invalid_value", body = ErrorBody), (status = 503, description = "unavailable", body = ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    TenantKey(scope): TenantKey,
    Path((channel_raw, asset_id, customer)): Path<(String, String, String)>,
) -> Result<Json<Value>, ApiError> {
    let channel = channel(&channel_raw)?;
    owned(&state, &scope, &asset_id).await?;
    let contact = state
        .capture
        .find_contact(channel, &asset_id, &customer)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no {channel} contact {customer:?} of asset {asset_id} has been captured"),
            )
        })?;
    let touches = state.capture.touches(&contact).await?;
    Ok(Json(json!({"contact": contact, "touches": touches})))
}

#[derive(Deserialize, ToSchema)]
pub struct LinkBody {
    customer_id: String,
}

#[utoipa::path(put, path = "/v1/contacts/{channel}/{asset_id}/{customer}/customer-id", tag = "contacts", security(("tenant_key" = [])), params(("channel" = String, Path), ("asset_id" = String, Path), ("customer" = String, Path)), request_body(content = LinkBody, example = json!({"customer_id": "crm-42"})), responses((status = 200, description = "the contact", body = Object), (status = 404, description = "not_found", body = ErrorBody), (status = 400, description = "invalid_json / invalid_query", body = ErrorBody), (status = 401, description = "unauthorized", body = ErrorBody), (status = 403, description = "the wrong kind of key", body = ErrorBody), (status = 413, description = "body_too_large", body = ErrorBody), (status = 422, description = "invalid_body / invalid_value", body = ErrorBody), (status = 503, description = "unavailable", body = ErrorBody)))]
pub async fn link_customer_id(
    State(state): State<AppState>,
    TenantKey(scope): TenantKey,
    Path((channel_raw, asset_id, customer)): Path<(String, String, String)>,
    body: JsonBody<LinkBody>,
) -> Result<Json<Value>, ApiError> {
    let channel = channel(&channel_raw)?;
    owned(&state, &scope, &asset_id).await?;
    let JsonBody(body) = body;
    let customer_id = body.customer_id.trim();
    if customer_id.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
            "customer_id must not be empty",
        ));
    }
    let contact = state
        .capture
        .link_customer_id(channel, &asset_id, &customer, customer_id)
        .await?;
    Ok(Json(json!({"contact": contact})))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WebhookQuery {
    state: Option<String>,
    limit: Option<i64>,
    /// Only deliveries older than this id: the `next_before` of the previous page.
    before: Option<i64>,
}

/// Most bytes of webhook bodies in one page of `GET /v1/webhooks`; a page cut short by it says
/// where the next starts (`next_before`).
pub const WEBHOOK_PAGE_BYTES: usize = 8 * 1024 * 1024;

/// `GET /v1/webhooks?state=failed`: stored deliveries, e.g. those kept because they could not
/// be understood. Admin only: one delivery may concern several tenants.
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks", security(("admin_key" = [])), params(WebhookQuery), responses((status = 200, description = "stored webhook deliveries, newest first, at most `limit` (100; up to 1,000) and at most 8 MiB of bodies; `next_before` is the `before` of the next page, null at the end", body = Object), (status = 400, description = "invalid_json / invalid_query", body = ErrorBody), (status = 401, description = "unauthorized", body = ErrorBody), (status = 403, description = "the wrong kind of key", body = ErrorBody), (status = 413, description = "body_too_large", body = ErrorBody), (status = 422, description = "invalid_body / invalid_value", body = ErrorBody), (status = 503, description = "unavailable", body = ErrorBody)))]
pub async fn list_webhooks(
    State(state): State<AppState>,
    _admin: AdminKey,
    QueryParams(q): QueryParams<WebhookQuery>,
) -> Result<Json<Value>, ApiError> {
    let page = state
        .store
        .list_webhooks_page(
            q.state.as_deref(),
            q.before,
            q.limit.unwrap_or(100).clamp(1, 1000),
            WEBHOOK_PAGE_BYTES,
        )
        .await?;
    Ok(Json(
        json!({"webhooks": page.items, "next_before": page.next_before}),
    ))
}
