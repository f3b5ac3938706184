//! CRM routes: the generic stage-change hook and its records (`/v1/crm/…`, tenant key), stage
//! rules and integration status for the admin (`/v1/admin/crm/…`), and Kommo's webhook
//! (`/webhooks/kommo/{secret}`, no key: the URL's secret and the body's account identify it).

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State, rejection::BytesRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    ApiError, AppState, auth::AdminKey, auth::TenantKey, body::QueryParams, openapi::ErrorBody,
};
use crate::crm::{self, generic, kommo, rules};

const ACTOR: &str = "admin-api";

#[utoipa::path(post, path = "/v1/crm/stage-changes", tag = "crm", security(("tenant_key" = [])), request_body(content = Object, description = "one stage change, a list, or {\"data\": [...]}", example = json!({"deal_id": "D-1001", "pipeline_id": "sales", "stage_id": "won", "amount": "120.50", "currency": "BRL", "occurred_at": "2026-11-30T12:00:00Z", "asset_id": "102290129340398", "contact": {"phone": "+55 11 98765-4321"}})), responses((status = 200, description = "one result per change: produced, duplicate, no_rule, no_attribution, no_contact, too_old, rejected, invalid", body = Object), (status = 400, description = "invalid_json", body = ErrorBody), (status = 422, description = "invalid_body", body = ErrorBody), (status = 401, description = "unauthorized", body = ErrorBody), (status = 403, description = "the wrong kind of key", body = ErrorBody), (status = 503, description = "unavailable", body = ErrorBody)))]
pub async fn stage_changes(
    State(state): State<AppState>,
    TenantKey(scope): TenantKey,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body?;
    let request: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not JSON: {e}"),
        )
    })?;
    let items = generic::items(&request)
        .map_err(|m| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", m))?;
    // The shape is checked for the whole body, as on every JSON route; the values per change.
    if let Some(index) = items.iter().position(|item| !item.is_object()) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            format!("data[{index}]: a stage change is a JSON object"),
        ));
    }
    let mut results = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        let result = match generic::read(item) {
            Ok(change) => generic::handle(&state.crm, &scope, index, change).await?,
            Err(errors) => generic::ChangeResult {
                index,
                outcome: crm::StageOutcome::skipped("invalid", "the stage change is not valid"),
                errors,
            },
        };
        results.push(result);
    }
    let count = |o: &str| results.iter().filter(|r| r.outcome.outcome == o).count();
    Ok(Json(json!({
        "produced": count("produced"),
        "duplicates": count("duplicate"),
        "skipped": results.len() - count("produced") - count("duplicate"),
        "results": results,
    })))
}

#[derive(Deserialize)]
pub struct RecordsQuery {
    integration: Option<String>,
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/v1/crm/stage-changes", tag = "crm", security(("tenant_key" = [])), params(("integration" = Option<String>, Query, description = "generic or an integration id"), ("limit" = Option<i64>, Query)), responses((status = 200, description = "recorded stage changes, newest first", body = Object), (status = 400, description = "invalid_query", body = ErrorBody), (status = 401, description = "unauthorized", body = ErrorBody), (status = 403, description = "the wrong kind of key", body = ErrorBody), (status = 503, description = "unavailable", body = ErrorBody)))]
pub async fn list_stage_changes(
    State(state): State<AppState>,
    TenantKey(scope): TenantKey,
    QueryParams(query): QueryParams<RecordsQuery>,
) -> Result<Json<Value>, ApiError> {
    let records = state
        .store
        .list_stage_changes(
            &scope.tenant,
            query.integration.as_deref(),
            query.limit.unwrap_or(100).clamp(1, 1000),
        )
        .await?;
    Ok(Json(json!({ "data": records })))
}

#[utoipa::path(get, path = "/v1/crm/integrations", tag = "crm", security(("tenant_key" = [])), responses((status = 200, description = "per integration: health, last webhook, counts by outcome", body = Object), (status = 401, description = "unauthorized", body = ErrorBody), (status = 403, description = "the wrong kind of key", body = ErrorBody), (status = 503, description = "unavailable", body = ErrorBody)))]
pub async fn tenant_integrations(
    State(state): State<AppState>,
    TenantKey(scope): TenantKey,
) -> Result<Json<Value>, ApiError> {
    let status = crm::status(state.store.as_ref(), &scope.tenant).await?;
    Ok(Json(json!({ "data": status })))
}

#[derive(Deserialize)]
pub struct TenantQuery {
    tenant: Option<String>,
}

fn tenant_required(q: &TenantQuery) -> Result<&str, ApiError> {
    q.tenant.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "tenant: add ?tenant=NAME",
        )
    })
}

#[utoipa::path(get, path = "/v1/admin/crm/integrations", tag = "crm", security(("admin_key" = [])), params(("tenant" = String, Query)), responses((status = 400, description = "invalid_query", body = ErrorBody), (status = 200, description = "per integration: health, last webhook, counts by outcome", body = Object), (status = 404, description = "no such tenant", body = ErrorBody), (status = 422, description = "tenant missing", body = ErrorBody), (status = 401, description = "unauthorized", body = ErrorBody), (status = 403, description = "the wrong kind of key", body = ErrorBody), (status = 503, description = "unavailable", body = ErrorBody)))]
pub async fn admin_integrations(
    State(state): State<AppState>,
    _admin: AdminKey,
    QueryParams(query): QueryParams<TenantQuery>,
) -> Result<Json<Value>, ApiError> {
    let tenant = tenant_required(&query)?;
    crate::tenancy::get_tenant(state.store.as_ref(), tenant).await?;
    let status = crm::status(state.store.as_ref(), tenant).await?;
    Ok(Json(json!({ "data": status })))
}

#[derive(Deserialize)]
pub struct NewRuleBody {
    tenant: String,
    #[serde(flatten)]
    rule: Value,
}

#[utoipa::path(post, path = "/v1/admin/crm/rules", tag = "crm", security(("admin_key" = [])), request_body(content = Object, example = json!({"tenant": "default", "source": "kommo", "pipeline_id": "any", "stage_id": 142, "event": "Purchase", "value": "deal"})), responses((status = 201, description = "the stored rule", body = Object), (status = 404, description = "no such tenant", body = ErrorBody), (status = 409, description = "a rule for this stage exists", body = ErrorBody), (status = 422, description = "invalid (names the field)", body = ErrorBody), (status = 401, description = "unauthorized", body = ErrorBody), (status = 403, description = "the wrong kind of key", body = ErrorBody), (status = 503, description = "unavailable", body = ErrorBody)))]
pub async fn add_rule(
    State(state): State<AppState>,
    _admin: AdminKey,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let invalid = |e: serde_json::Error| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            format!("the body is not the expected JSON: {e}"),
        )
    };
    let body: Value = serde_json::from_slice(&body).map_err(invalid)?;
    super::body::check_strings(&body)?;
    let body: NewRuleBody = serde_json::from_value(body).map_err(invalid)?;
    let rule: rules::NewRule = serde_json::from_value(body.rule).map_err(invalid)?;
    let stored = rules::add(state.store.as_ref(), &body.tenant, &rule, ACTOR).await?;
    Ok((StatusCode::CREATED, Json(json!(stored))))
}

#[utoipa::path(get, path = "/v1/admin/crm/rules", tag = "crm", security(("admin_key" = [])), params(("tenant" = Option<String>, Query)), responses((status = 400, description = "invalid_query", body = ErrorBody), (status = 404, description = "no such tenant", body = ErrorBody), (status = 200, description = "rules, oldest first", body = Object), (status = 401, description = "unauthorized", body = ErrorBody), (status = 403, description = "the wrong kind of key", body = ErrorBody), (status = 503, description = "unavailable", body = ErrorBody)))]
pub async fn list_rules(
    State(state): State<AppState>,
    _admin: AdminKey,
    QueryParams(query): QueryParams<TenantQuery>,
) -> Result<Json<Value>, ApiError> {
    let rules = rules::list(state.store.as_ref(), query.tenant.as_deref()).await?;
    Ok(Json(json!({ "data": rules })))
}

#[utoipa::path(delete, path = "/v1/admin/crm/rules/{id}", tag = "crm", security(("admin_key" = [])), params(("id" = i64, Path), ("tenant" = String, Query)), responses((status = 400, description = "invalid_query", body = ErrorBody), (status = 204, description = "removed"), (status = 404, description = "no such rule", body = ErrorBody), (status = 401, description = "unauthorized", body = ErrorBody), (status = 403, description = "the wrong kind of key", body = ErrorBody), (status = 503, description = "unavailable", body = ErrorBody)))]
pub async fn remove_rule(
    State(state): State<AppState>,
    _admin: AdminKey,
    Path(id): Path<String>,
    QueryParams(query): QueryParams<TenantQuery>,
) -> Result<StatusCode, ApiError> {
    let tenant = tenant_required(&query)?;
    // Rule ids are integers: any other id names no rule.
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such rule"))?;
    rules::remove(state.store.as_ref(), tenant, id, ACTOR).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Kommo's webhook: 200 once the raw body is committed (or already was), 404 for an unknown
/// URL, 403 for another account's body; nothing is stored for either.
#[utoipa::path(post, path = "/webhooks/kommo/{secret}", tag = "webhooks", params(("secret" = String, Path, description = "the integration's webhook secret")), request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "Kommo's webhook body"), responses((status = 200, description = "durably stored", body = String, content_type = "text/plain"), (status = 403, description = "wrong_account: nothing stored", body = ErrorBody), (status = 404, description = "unknown_webhook", body = ErrorBody), (status = 413, description = "body_too_large", body = ErrorBody), (status = 503, description = "unavailable", body = ErrorBody)))]
pub async fn kommo_webhook(
    State(state): State<AppState>,
    Path(secret): Path<String>,
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
    // Kommo's fields are stored and then read into stage changes: a NUL would fail there for
    // good, so it is refused now.
    if let Some((field, _)) =
        form_urlencoded::parse(&body).find(|(k, v)| k.contains('\0') || v.contains('\0'))
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
            format!(
                "{}: contains a NUL character (%00), which cannot be stored",
                field
                    .replace('\0', "%00")
                    .chars()
                    .take(120)
                    .collect::<String>()
            ),
        ));
    }
    match kommo::receive(state.store.as_ref(), &secret, &body).await? {
        Ok(_) => {
            state.kommo.wake.notify_one();
            Ok((StatusCode::OK, "ok").into_response())
        }
        Err(kommo::Refused::UnknownUrl) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_webhook",
            "no Kommo integration has this webhook URL",
        )),
        Err(kommo::Refused::WrongAccount(why)) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "wrong_account",
            format!("refused, nothing stored: {why}"),
        )),
    }
}
