//! `POST /{version}/{dataset_id}/events`: Meta's endpoint, so that code written for Meta (its
//! Business SDKs included) switches by changing the base URL and the token. The token is a
//! capi-relay tenant API key; the answers are Meta's success and error shapes.

use axum::{
    Json,
    body::Bytes,
    extract::{Path, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode, Uri},
    response::{IntoResponse, Response},
};
use rand::Rng;
use relay_core::graph_error::GraphError;
use relay_store::StoreError;
use serde_json::json;
use tracing::Instrument;

use super::{
    AppState, graph_request, guard,
    openapi::{GraphErrorBody, GraphSuccess},
};
use crate::{
    ingest::{DatasetIngest, EventResult},
    tenancy::keys::Scope,
};

#[utoipa::path(post, path = "/{version}/{dataset_id}/events", operation_id = "submit_graph_events", tag = "graph", security(("tenant_key" = []), ()), params(("version" = String, Path, example = "v21.0"), ("dataset_id" = String, Path), ("access_token" = Option<String>, Query, description = "a capi-relay tenant API key, if not in the header or body")), request_body(content((Object = "application/json"), (Object = "application/x-www-form-urlencoded")), description = "Meta's parameters: data (events, or a JSON string of them), test_event_code, partner_agent, …", example = json!({"data": [{"event_name": "Purchase", "event_time": 1767000000, "action_source": "business_messaging", "messaging_channel": "whatsapp", "user_data": {"ctwa_clid": "ARAkLkA8rml..."}, "custom_data": {"currency": "USD", "value": 123.45}}]})), responses((status = 200, description = "committed", body = GraphSuccess, example = json!({"events_received": 1, "messages": [], "fbtrace_id": "AbC123dEf456GhI7"})), (status = 400, description = "Meta's error shape", body = GraphErrorBody), (status = 403, description = "the admin key", body = GraphErrorBody), (status = 413, description = "body too large", body = GraphErrorBody), (status = 500, description = "transient", body = GraphErrorBody), (status = 503, description = "transient", body = GraphErrorBody)))]
pub async fn submit(
    State(state): State<AppState>,
    Path((version, dataset_id)): Path<(String, String)>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let fbtrace_id = fbtrace_id();
    let span = tracing::info_span!("graph_events", %fbtrace_id, dataset_id = %dataset_id);
    let outcome = handle(&state, &version, &dataset_id, uri.query(), &headers, body)
        .instrument(span.clone())
        .await;
    let _entered = span.enter();
    match outcome {
        Ok((received, messages)) => {
            tracing::info!(received, "graph-compatible request committed");
            Json(json!({"events_received": received, "messages": messages, "fbtrace_id": fbtrace_id}))
                .into_response()
        }
        Err(error) => {
            tracing::info!(code = error.code, subcode = ?error.subcode, message = %error.message, "graph-compatible request refused");
            let status = StatusCode::from_u16(error.http_status).unwrap_or(StatusCode::BAD_REQUEST);
            (status, Json(error.body(&fbtrace_id))).into_response()
        }
    }
}

async fn handle(
    state: &AppState,
    version: &str,
    dataset_id: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(usize, Vec<String>), GraphError> {
    // The router-wide check of paths and queries answers in the relay's shape; this route
    // answers in Meta's.
    guard::check_param("dataset_id", dataset_id)
        .and_then(|()| guard::check_query(query.unwrap_or("")))
        .map_err(|e| GraphError::invalid(e.message))?;
    graph_request::check_version(version)?;
    let body = body.map_err(|e| {
        GraphError::new(
            e.status().as_u16(),
            100,
            "(#100) The request body could not be read",
        )
        .with_user("Request body", e.body_text())
    })?;
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok());
    let request = graph_request::parse(content_type, &body, query)?;
    let scope = authenticate(state, headers, request.text("access_token")).await?;
    let test_event_code = request.text("test_event_code");
    if let Some(why) = test_event_code.and_then(|code| {
        relay_core::storable::unstorable_reason(code, relay_core::storable::MAX_STRING_BYTES)
    }) {
        return Err(
            GraphError::invalid(format!("test_event_code {why}")).blame(&["test_event_code"])
        );
    }
    let outcome = state
        .ingestor
        .ingest_for_dataset(&request.events, &scope, dataset_id, test_event_code)
        .await
        .map_err(store_error)?;
    let report = match outcome {
        DatasetIngest::UnknownDataset => return Err(graph_request::unknown_object(dataset_id)),
        DatasetIngest::Refused(report) => {
            let refusals: Vec<_> = report
                .results
                .into_iter()
                .filter_map(|r| match r {
                    EventResult::Rejected { index, errors, .. } => Some((index, errors)),
                    _ => None,
                })
                .collect();
            return Err(graph_request::refused(&refusals));
        }
        DatasetIngest::Committed(report) => report,
    };
    let mut messages: Vec<String> = request
        .ignored_params()
        .map(|p| format!("parameter {p} is not one of this endpoint's; it was ignored"))
        .collect();
    for result in &report.results {
        match result {
            EventResult::Duplicate {
                index,
                event_id,
                warnings,
                ..
            } => {
                messages.push(format!(
                    "data[{index}]: event_id {event_id:?} was already accepted for this dataset; \
                     it is not sent again"
                ));
                messages.extend(warnings.iter().map(|w| format!("data[{index}]: {w}")));
            }
            EventResult::Accepted {
                index, warnings, ..
            } => messages.extend(warnings.iter().map(|w| format!("data[{index}]: {w}"))),
            EventResult::Rejected { .. } => {}
        }
    }
    Ok((report.accepted + report.duplicates, messages))
}

/// The token from `Authorization: Bearer`, else the `access_token` parameter (body or query).
async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    param: Option<&str>,
) -> Result<Scope, GraphError> {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let Some(token) = bearer.or(param) else {
        return Err(GraphError::new(
            400,
            104,
            "An access token is required to request this resource.",
        ));
    };
    match state.auth.tenant_scope(token).await.map_err(store_error)? {
        Some(scope) => Ok(scope),
        None if state.auth.is_admin(token) => Err(GraphError::new(
            403,
            200,
            "(#200) The admin key manages tenants; send events with a tenant's API key",
        )),
        None => Err(GraphError::new(
            400,
            190,
            "Invalid OAuth access token - the capi-relay API key is unknown or revoked",
        )),
    }
}

/// A database failure: transient in Meta's terms, so the SDK user's retry logic retries.
fn store_error(e: StoreError) -> GraphError {
    match e {
        StoreError::Unavailable(_) => {
            tracing::warn!(error = %e, "database unavailable");
            GraphError::new(503, 2, "Service temporarily unavailable").transient()
        }
        other => {
            tracing::error!(error = %other, "store error");
            GraphError::new(500, 1, "An unknown error occurred; nothing was lost, retry")
                .transient()
        }
    }
}

/// A relay-made trace id, in Meta's alphabet, logged with the request.
fn fbtrace_id() -> String {
    let mut rng = rand::rng();
    (0..16)
        .map(|_| {
            let i = rng.random_range(0..62);
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"[i] as char
        })
        .collect()
}
