//! `GET /v1/stats/…`: the numbers behind every dashboard page, as JSON, for scripts. A tenant's
//! key sees its own; the admin key sees every tenant, or one with `?tenant=`.

use axum::{
    Json,
    extract::{FromRequestParts, Query, State},
    http::{StatusCode, request::Parts},
};
use relay_store::dashboard::LogFilter;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, AppState, events::record_json, openapi::ErrorBody};
use crate::{
    clock::now_ms,
    dashboard::{
        figures::{self, LogEntry, Who, Window},
        views::{BadFilter, LOG_PAGE, LogQuery},
    },
};

/// Who is asking, from the bearer key.
pub struct StatsViewer {
    operator: bool,
    who: Who,
}

impl FromRequestParts<AppState> for StatsViewer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let presented = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "send a tenant's API key or the admin key as `Authorization: Bearer <key>`",
                )
            })?;
        if state.auth.is_admin(presented) {
            return Ok(StatsViewer {
                operator: true,
                who: Who {
                    tenant: None,
                    assets: None,
                },
            });
        }
        match state.auth.tenant_scope(presented).await? {
            Some(scope) => Ok(StatsViewer {
                operator: false,
                who: Who {
                    tenant: Some(scope.tenant),
                    assets: scope.assets.map(|a| a.to_vec()),
                },
            }),
            None => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the API key is not valid (unknown or revoked)",
            )),
        }
    }
}

#[derive(Deserialize)]
pub struct StatsQuery {
    window: Option<String>,
    dataset: Option<String>,
    /// The operator's choice of tenant; a tenant key may only name its own.
    tenant: Option<String>,
}

impl StatsViewer {
    fn who(&self, tenant: Option<&str>) -> Result<Who, ApiError> {
        match tenant.filter(|t| !t.is_empty()) {
            None => Ok(self.who.clone()),
            Some(t) if self.operator => Ok(Who {
                tenant: Some(t.to_owned()),
                assets: None,
            }),
            Some(t) if self.who.tenant.as_deref() == Some(t) => Ok(self.who.clone()),
            Some(_) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "other_tenant",
                "tenant: a tenant's key sees only its own tenant",
            )),
        }
    }
}

fn window(q: Option<&str>, default: Window) -> Result<Window, ApiError> {
    match q {
        None | Some("") => Ok(default),
        Some(w) => Window::parse(w).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_window",
                format!("window: {w:?} is not one of 1h, 24h, 7d, 30d"),
            )
        }),
    }
}

#[utoipa::path(get, path = "/v1/stats/overview", operation_id = "stats_overview", tag = "stats", security(("tenant_key" = []), ("admin_key" = [])), params(("window" = Option<String>, Query, description = "1h, 24h, 7d or 30d"), ("tenant" = Option<String>, Query, description = "the admin key: one tenant; a tenant key: only its own"), ("dataset" = Option<String>, Query, description = "one dataset")), responses((status = 200, description = "the overview: counts for the window and the previous one, latency, chart series, breakdowns, freshness", body = Object), (status = 401, description = "unauthorized", body = ErrorBody), (status = 403, description = "other_tenant: a tenant key naming another tenant", body = ErrorBody), (status = 422, description = "invalid_window / invalid_filter", body = ErrorBody), (status = 503, description = "unavailable", body = ErrorBody)))]
pub async fn overview(
    State(state): State<AppState>,
    viewer: StatsViewer,
    Query(q): Query<StatsQuery>,
) -> Result<Json<Value>, ApiError> {
    let who = viewer.who(q.tenant.as_deref())?;
    let w = window(q.window.as_deref(), Window::Day)?;
    let o = figures::overview(
        state.store.as_ref(),
        &who,
        w,
        q.dataset.as_deref(),
        now_ms(),
    )
    .await?;
    Ok(Json(json!(o)))
}

#[utoipa::path(get, path = "/v1/stats/errors", operation_id = "stats_errors", tag = "stats", security(("tenant_key" = []), ("admin_key" = [])), params(("window" = Option<String>, Query, description = "1h, 24h, 7d or 30d"), ("tenant" = Option<String>, Query, description = "the admin key: one tenant; a tenant key: only its own")), responses((status = 200, description = "refusals and dead letters grouped by reason, with explanations and fixes", body = Object), (status = 401, description = "unauthorized", body = ErrorBody), (status = 403, description = "other_tenant: a tenant key naming another tenant", body = ErrorBody), (status = 422, description = "invalid_window / invalid_filter", body = ErrorBody), (status = 503, description = "unavailable", body = ErrorBody)))]
pub async fn errors(
    State(state): State<AppState>,
    viewer: StatsViewer,
    Query(q): Query<StatsQuery>,
) -> Result<Json<Value>, ApiError> {
    let who = viewer.who(q.tenant.as_deref())?;
    let w = window(q.window.as_deref(), Window::Week)?;
    Ok(Json(json!(
        figures::errors(state.store.as_ref(), &who, w, now_ms()).await?
    )))
}

#[utoipa::path(get, path = "/v1/stats/quality", operation_id = "stats_quality", tag = "stats", security(("tenant_key" = []), ("admin_key" = [])), params(("window" = Option<String>, Query, description = "1h, 24h, 7d or 30d"), ("tenant" = Option<String>, Query, description = "the admin key: one tenant; a tenant key: only its own")), responses((status = 200, description = "attribution coverage (`attribution`), ad-started conversations later converted (`ad_started`), purchase readiness, event coverage against 75 % from CRM stage changes (`event_coverage`, `computable: false` without data), access tier progress", body = Object), (status = 401, description = "unauthorized", body = ErrorBody), (status = 403, description = "other_tenant: a tenant key naming another tenant", body = ErrorBody), (status = 422, description = "invalid_window / invalid_filter", body = ErrorBody), (status = 503, description = "unavailable", body = ErrorBody)))]
pub async fn quality(
    State(state): State<AppState>,
    viewer: StatsViewer,
    Query(q): Query<StatsQuery>,
) -> Result<Json<Value>, ApiError> {
    let who = viewer.who(q.tenant.as_deref())?;
    let w = window(q.window.as_deref(), Window::Week)?;
    Ok(Json(json!(
        figures::quality(state.store.as_ref(), &who, w, now_ms()).await?
    )))
}

#[utoipa::path(get, path = "/v1/stats/sources", operation_id = "stats_sources", tag = "stats", security(("tenant_key" = []), ("admin_key" = [])), params(("tenant" = Option<String>, Query, description = "the admin key: one tenant")), responses((status = 200, description = "assets and their status, webhook capture (admin key)", body = Object), (status = 401, description = "unauthorized", body = ErrorBody), (status = 403, description = "other_tenant: a tenant key naming another tenant", body = ErrorBody), (status = 422, description = "invalid_window / invalid_filter", body = ErrorBody), (status = 503, description = "unavailable", body = ErrorBody)))]
pub async fn sources(
    State(state): State<AppState>,
    viewer: StatsViewer,
    Query(q): Query<StatsQuery>,
) -> Result<Json<Value>, ApiError> {
    let who = viewer.who(q.tenant.as_deref())?;
    Ok(Json(json!(
        figures::sources(state.store.as_ref(), &who).await?
    )))
}

#[derive(Deserialize)]
pub struct EventsQuery {
    tenant: Option<String>,
    /// Text: numbers do not survive `serde(flatten)` in query strings.
    limit: Option<String>,
    #[serde(flatten)]
    log: LogQuery,
}

fn entry_json(e: LogEntry) -> Value {
    match e {
        LogEntry::Event(r) => {
            let mut v = record_json(r);
            v["kind"] = json!("event");
            v
        }
        LogEntry::Refused(r) => {
            let mut v = json!(r);
            v["kind"] = json!("refused");
            v["errors"] = serde_json::from_str(&r.errors).unwrap_or(Value::Null);
            v["body"] = serde_json::from_str(&r.body).unwrap_or(Value::String(r.body.clone()));
            v
        }
    }
}

/// The events log: accepted events and refusals, newest first, `next` for the next page.
#[utoipa::path(get, path = "/v1/stats/events", operation_id = "stats_events", tag = "stats", security(("tenant_key" = []), ("admin_key" = [])), params(("q" = Option<String>, Query, description = "exact event_id"), ("state" = Option<String>, Query, description = "queued, sending, retrying, delivered, dead or refused"), ("name" = Option<String>, Query, description = "event name"), ("channel" = Option<String>, Query, description = "whatsapp, messenger or instagram"), ("asset" = Option<String>, Query, description = "asset id"), ("status" = Option<String>, Query, description = "HTTP status of an attempt"), ("window" = Option<String>, Query, description = "1h, 24h, 7d or 30d back from now"), ("before" = Option<String>, Query, description = "cursor from next"), ("limit" = Option<String>, Query, description = "1 to 500, default 50"), ("tenant" = Option<String>, Query, description = "the admin key: one tenant")), responses((status = 200, description = "the events log, accepted and refused, newest first; next is the cursor of the next page", body = Object), (status = 401, description = "unauthorized", body = ErrorBody), (status = 403, description = "other_tenant: a tenant key naming another tenant", body = ErrorBody), (status = 422, description = "invalid_window / invalid_filter", body = ErrorBody), (status = 503, description = "unavailable", body = ErrorBody)))]
pub async fn events(
    State(state): State<AppState>,
    viewer: StatsViewer,
    Query(q): Query<EventsQuery>,
) -> Result<Json<Value>, ApiError> {
    let who = viewer.who(q.tenant.as_deref())?;
    let limit = match q.limit.as_deref() {
        None | Some("") => LOG_PAGE,
        Some(l) => l.parse::<i64>().map_err(|_| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_filter",
                format!("limit: {l:?} is not a number"),
            )
        })?,
    }
    .clamp(1, 500);
    let (filter, cursor) = q
        .log
        .filter(&who, now_ms(), limit)
        .map_err(|BadFilter(m)| {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_filter", m)
        })?;
    let page = figures::log_page(state.store.as_ref(), filter, cursor).await?;
    let data: Vec<Value> = page.entries.into_iter().map(entry_json).collect();
    Ok(Json(
        json!({"count": data.len(), "data": data, "next": page.next}),
    ))
}

/// Events sent with a `test_event_code`, newest first, and the codes in force.
#[utoipa::path(get, path = "/v1/stats/test-events", operation_id = "stats_test_events", tag = "stats", security(("tenant_key" = []), ("admin_key" = [])), params(("tenant" = Option<String>, Query, description = "the admin key: one tenant")), responses((status = 200, description = "events sent with a test_event_code and the codes in force", body = Object), (status = 401, description = "unauthorized", body = ErrorBody), (status = 403, description = "other_tenant: a tenant key naming another tenant", body = ErrorBody), (status = 422, description = "invalid_window / invalid_filter", body = ErrorBody), (status = 503, description = "unavailable", body = ErrorBody)))]
pub async fn test_events(
    State(state): State<AppState>,
    viewer: StatsViewer,
    Query(q): Query<StatsQuery>,
) -> Result<Json<Value>, ApiError> {
    let who = viewer.who(q.tenant.as_deref())?;
    let filter = LogFilter {
        tenant: who.tenant.clone(),
        within_assets: who.assets.clone(),
        test_only: true,
        limit: LOG_PAGE,
        ..LogFilter::default()
    };
    let events: Vec<Value> = state
        .store
        .list_log_events(&filter)
        .await?
        .into_iter()
        .map(record_json)
        .collect();
    let codes: Vec<Value> = figures::active_test_codes(state.store.as_ref(), &who)
        .await?
        .into_iter()
        .map(|(scope, code)| json!({"scope": scope, "test_event_code": code}))
        .collect();
    Ok(Json(json!({"active_codes": codes, "data": events})))
}
