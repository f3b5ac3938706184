//! `/v1/admin/…`: tenants, onboarding, tokens, API keys and the audit trail, for the admin key.
//! Each handler parses, calls the tenancy service and maps the result.

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State, rejection::BytesRejection},
    http::StatusCode,
};
use relay_core::Channel;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::{
    ApiError, AppState,
    auth::AdminKey,
    body::{JsonBody, QueryParams, parse_json},
    openapi::ErrorBody,
};
use crate::tenancy::{self, AdminError, OnboardRequest};

const ACTOR: &str = "admin-api";

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::Invalid { .. } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_value",
                e.to_string(),
            ),
            AdminError::NotFound(m) => ApiError::new(StatusCode::NOT_FOUND, "not_found", m),
            AdminError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            AdminError::Meta { .. } => {
                ApiError::new(StatusCode::BAD_GATEWAY, "meta_refused", e.to_string())
            }
            AdminError::Vault(v) => {
                tracing::error!(error = %v, "vault error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error (sealing a token); see the relay's log",
                )
            }
            AdminError::Store(s) => s.into(),
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    name: String,
    test_event_code: Option<String>,
}

#[utoipa::path(post, path = "/v1/admin/tenants", tag = "admin", security(("admin_key" = [])), request_body(content = NewTenant, example = json!({"name": "acme", "test_event_code": "TEST123"})), responses((status = 201, description = "the tenant", body = Object), (status = 409, description = "conflict", body = ErrorBody), (status = 400, description = "invalid_json / invalid_query", body = ErrorBody), (status = 401, description = "unauthorized", body = ErrorBody), (status = 403, description = "the wrong kind of key", body = ErrorBody), (status = 413, description = "body_too_large", body = ErrorBody), (status = 422, description = "invalid_body / invalid_value", body = ErrorBody), (status = 503, description = "unavailable", body = ErrorBody)))]
pub async fn create_tenant(
    State(state): State<AppState>,
    _admin: AdminKey,
    JsonBody(request): JsonBody<NewTenant>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let store = state.store.as_ref();
    let tenant = tenancy::create_tenant(
        store,
        &request.name,
        request.test_event_code.as_deref(),
        ACTOR,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(json!(tenant))))
}

#[utoipa::path(get, path = "/v1/admin/tenants", tag = "admin", security(("admin_key" = [])), responses((status = 200, description = "{\"data\": [tenants]}", body = Object), (status = 400, description = "invalid_json / invalid_query", body = ErrorBody), (status = 401, description = "unauthorized", body = ErrorBody), (status = 403, description = "the wrong kind of key", body = ErrorBody), (status = 413, description = "body_too_large", body = ErrorBody), (status = 422, description = "invalid_body / invalid_value", body = ErrorBody), (status = 503, description = "unavailable", body = ErrorBody)))]
pub async fn list_tenants(
    State(state): State<AppState>,
    _admin: AdminKey,
) -> Result<Json<Value>, ApiError> {
    let tenants = state.store.list_tenants().await?;
    Ok(Json(json!({ "data": tenants })))
}

#[utoipa::path(get, path = "/v1/admin/tenants/{name}", tag = "admin", security(("admin_key" = [])), params(("name" = String, Path)), responses((status = 200, description = "the tenant, its assets and keys", body = Object), (status = 404, description = "not_found", body = ErrorBody), (status = 400, description = "invalid_json / invalid_query", body = ErrorBody), (status = 401, description = "unauthorized", body = ErrorBody), (status = 403, description = "the wrong kind of key", body = ErrorBody), (status = 413, description = "body_too_large", body = ErrorBody), (status = 422, description = "invalid_body / invalid_value", body = ErrorBody), (status = 503, description = "unavailable", body = ErrorBody)))]
pub async fn show_tenant(
    State(state): State<AppState>,
    _admin: AdminKey,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let overview = tenancy::tenant_overview(state.store.as_ref(), &name).await?;
    Ok(Json(json!(overview)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantChange {
    /// `null` clears the code.
    test_event_code: Option<String>,
}

#[utoipa::path(patch, path = "/v1/admin/tenants/{name}", tag = "admin", security(("admin_key" = [])), params(("name" = String, Path)), request_body(content = TenantChange, example = json!({"test_event_code": null})), responses((status = 200, description = "the tenant", body = Object), (status = 404, description = "not_found", body = ErrorBody), (status = 400, description = "invalid_json / invalid_query", body = ErrorBody), (status = 401, description = "unauthorized", body = ErrorBody), (status = 403, description = "the wrong kind of key", body = ErrorBody), (status = 413, description = "body_too_large", body = ErrorBody), (status = 422, description = "invalid_body / invalid_value", body = ErrorBody), (status = 503, description = "unavailable", body = ErrorBody)))]
pub async fn update_tenant(
    State(state): State<AppState>,
    _admin: AdminKey,
    Path(name): Path<String>,
    JsonBody(change): JsonBody<TenantChange>,
) -> Result<Json<Value>, ApiError> {
    let store = state.store.as_ref();
    tenancy::set_test_event_code(store, &name, change.test_event_code.as_deref(), ACTOR).await?;
    state.ingestor.forget_registry();
    Ok(Json(json!(tenancy::get_tenant(store, &name).await?)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OnboardBody {
    channel: String,
    asset_id: String,
    #[schema(value_type = String)]
    access_token: SecretString,
    dataset_id: Option<String>,
    dataset_name: Option<String>,
    test_event_code: Option<String>,
}

#[utoipa::path(post, path = "/v1/admin/tenants/{name}/assets", tag = "admin", security(("admin_key" = [])), params(("name" = String, Path)), request_body(content = OnboardBody, example = json!({"channel": "whatsapp", "asset_id": "102290129340398", "access_token": "EAAG…"})), responses((status = 201, description = "the asset with its dataset", body = Object), (status = 404, description = "not_found", body = ErrorBody), (status = 409, description = "conflict", body = ErrorBody), (status = 502, description = "meta_refused", body = ErrorBody), (status = 400, description = "invalid_json / invalid_query", body = ErrorBody), (status = 401, description = "unauthorized", body = ErrorBody), (status = 403, description = "the wrong kind of key", body = ErrorBody), (status = 413, description = "body_too_large", body = ErrorBody), (status = 422, description = "invalid_body / invalid_value", body = ErrorBody), (status = 503, description = "unavailable", body = ErrorBody)))]
pub async fn onboard_asset(
    State(state): State<AppState>,
    _admin: AdminKey,
    Path(tenant): Path<String>,
    JsonBody(body): JsonBody<OnboardBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let channel: Channel = body.channel.parse().map_err(|e: String| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
            format!("channel: {e}"),
        )
    })?;
    if body.access_token.expose_secret().trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
            "access_token: must not be empty",
        ));
    }
    let request = OnboardRequest {
        tenant,
        channel,
        asset_id: body.asset_id,
        token: body.access_token,
        dataset_id: body.dataset_id,
        dataset_name: body.dataset_name,
        test_event_code: body.test_event_code,
    };
    let report = tenancy::onboard(&state.admin, request, ACTOR).await?;
    state.ingestor.forget_registry();
    Ok((StatusCode::CREATED, Json(json!(report))))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenBody {
    #[schema(value_type = String)]
    access_token: SecretString,
}

#[utoipa::path(put, path = "/v1/admin/assets/{asset_id}/token", tag = "admin", security(("admin_key" = [])), params(("asset_id" = String, Path)), request_body(content = TokenBody, example = json!({"access_token": "EAAG…"})), responses((status = 200, description = "the asset", body = Object), (status = 404, description = "not_found", body = ErrorBody), (status = 400, description = "invalid_json / invalid_query", body = ErrorBody), (status = 401, description = "unauthorized", body = ErrorBody), (status = 403, description = "the wrong kind of key", body = ErrorBody), (status = 413, description = "body_too_large", body = ErrorBody), (status = 422, description = "invalid_body / invalid_value", body = ErrorBody), (status = 503, description = "unavailable", body = ErrorBody)))]
pub async fn set_token(
    State(state): State<AppState>,
    _admin: AdminKey,
    Path(asset_id): Path<String>,
    JsonBody(body): JsonBody<TokenBody>,
) -> Result<Json<Value>, ApiError> {
    let asset = tenancy::set_token(
        state.store.as_ref(),
        &state.admin.vault,
        &asset_id,
        &body.access_token,
        None,
        ACTOR,
    )
    .await?;
    state.wake.notify_waiters();
    Ok(Json(json!(asset)))
}

#[utoipa::path(post, path = "/v1/admin/assets/{asset_id}/resume", tag = "admin", security(("admin_key" = [])), params(("asset_id" = String, Path)), responses((status = 200, description = "the asset and whether it was paused (`resumed`); resuming an active asset changes nothing", body = Object, example = json!({"resumed": true, "asset": {"asset_id": "102290129340398", "status": "active"}})), (status = 404, description = "not_found", body = ErrorBody), (status = 400, description = "invalid_query", body = ErrorBody), (status = 401, description = "unauthorized", body = ErrorBody), (status = 403, description = "the wrong kind of key", body = ErrorBody), (status = 503, description = "unavailable", body = ErrorBody)))]
pub async fn resume_asset(
    State(state): State<AppState>,
    _admin: AdminKey,
    Path(asset_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (asset, resumed) =
        tenancy::resume_asset(state.store.as_ref(), &asset_id, None, ACTOR).await?;
    if resumed {
        state.wake.notify_waiters();
    }
    Ok(Json(json!({ "resumed": resumed, "asset": asset })))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKeyBody {
    label: Option<String>,
    assets: Option<Vec<String>>,
}

#[utoipa::path(post, path = "/v1/admin/tenants/{name}/keys", tag = "admin", security(("admin_key" = [])), params(("name" = String, Path)), request_body(content = Option<NewKeyBody>, description = "optional: no body makes an unlimited, unlabelled key", example = json!({"label": "crm", "assets": ["102290129340398"]})), responses((status = 201, description = "the key, shown once", body = Object), (status = 404, description = "not_found", body = ErrorBody), (status = 400, description = "invalid_json / invalid_query", body = ErrorBody), (status = 401, description = "unauthorized", body = ErrorBody), (status = 403, description = "the wrong kind of key", body = ErrorBody), (status = 413, description = "body_too_large", body = ErrorBody), (status = 422, description = "invalid_body / invalid_value", body = ErrorBody), (status = 503, description = "unavailable", body = ErrorBody)))]
pub async fn create_key(
    State(state): State<AppState>,
    _admin: AdminKey,
    Path(tenant): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = body?;
    let body: NewKeyBody = if body.is_empty() {
        NewKeyBody {
            label: None,
            assets: None,
        }
    } else {
        parse_json(&body)?
    };
    let new = tenancy::create_key(
        state.store.as_ref(),
        &tenant,
        body.label,
        body.assets,
        ACTOR,
    )
    .await?;
    let mut shown = json!(new.record);
    // The only time the key is ever shown.
    shown["key"] = Value::String(new.key.expose_secret().to_owned());
    Ok((StatusCode::CREATED, Json(shown)))
}

#[utoipa::path(delete, path = "/v1/admin/keys/{id}", tag = "admin", security(("admin_key" = [])), params(("id" = String, Path)), responses((status = 200, description = "the revoked key", body = Object), (status = 404, description = "not_found", body = ErrorBody), (status = 400, description = "invalid_json / invalid_query", body = ErrorBody), (status = 401, description = "unauthorized", body = ErrorBody), (status = 403, description = "the wrong kind of key", body = ErrorBody), (status = 413, description = "body_too_large", body = ErrorBody), (status = 422, description = "invalid_body / invalid_value", body = ErrorBody), (status = 503, description = "unavailable", body = ErrorBody)))]
pub async fn revoke_key(
    State(state): State<AppState>,
    _admin: AdminKey,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let key = tenancy::revoke_key(state.store.as_ref(), &id, ACTOR).await?;
    state.auth.forget();
    Ok(Json(json!(key)))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    tenant: Option<String>,
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/v1/admin/audit", tag = "admin", security(("admin_key" = [])), params(AuditQuery), responses((status = 200, description = "audit entries, newest first", body = Object), (status = 400, description = "invalid_json / invalid_query", body = ErrorBody), (status = 401, description = "unauthorized", body = ErrorBody), (status = 403, description = "the wrong kind of key", body = ErrorBody), (status = 413, description = "body_too_large", body = ErrorBody), (status = 422, description = "invalid_body / invalid_value", body = ErrorBody), (status = 503, description = "unavailable", body = ErrorBody)))]
pub async fn audit(
    State(state): State<AppState>,
    _admin: AdminKey,
    QueryParams(q): QueryParams<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1_000);
    let entries = state.store.list_audit(q.tenant.as_deref(), limit).await?;
    Ok(Json(json!({ "data": entries })))
}
