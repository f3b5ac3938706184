//! The HTTP API. Handlers are thin: extract, call a service function, map the result.

mod admin;
mod auth;
mod body;
mod contacts;
mod crm;
mod dead_letters;
mod error;
mod events;
mod graph;
mod graph_request;
mod guard;
pub mod limits;
mod openapi;
pub mod ops;
pub mod server;
mod stats;
mod webhooks;

use std::sync::Arc;

use axum::{
    Router,
    extract::DefaultBodyLimit,
    middleware,
    routing::{delete, get, post, put},
};
use metrics_exporter_prometheus::PrometheusHandle;
use relay_store::Store;
use tokio::sync::Notify;
use tower_http::{
    catch_panic::CatchPanicLayer,
    trace::{DefaultOnFailure, TraceLayer},
};

pub use self::{error::ApiError, openapi::ApiDoc};

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub ingestor: Arc<crate::ingest::Ingestor>,
    /// Webhooks, contacts and touches.
    pub capture: Arc<crate::capture::Capture>,
    /// Turns bearer keys into tenant scopes or admin rights.
    pub auth: Arc<crate::tenancy::keys::Authenticator>,
    /// Store, vault and Graph client for admin actions (onboarding calls Meta).
    pub admin: crate::tenancy::AdminContext,
    /// CRM stage automation (rules, generic hook).
    pub crm: Arc<crate::crm::Crm>,
    /// The Kommo webhook processor (woken after a body is stored).
    pub kommo: Arc<crate::crm::kommo::KommoProcessor>,
    /// Wakes the delivery workers after an ingest.
    pub wake: Arc<Notify>,
    pub metrics: PrometheusHandle,
    pub metrics_access: Arc<ops::MetricsAccess>,
    /// The dashboard's cookie key and login limiter.
    pub ui: Arc<crate::dashboard::UiState>,
}

/// All routes, with the body limits, load limits (`http.*`) and request tracing.
pub fn router(
    state: AppState,
    http: &crate::config::HttpConfig,
    max_body_bytes: usize,
    max_webhook_bytes: usize,
) -> Router {
    let limits = limits::Limits::new(http, max_body_bytes, max_webhook_bytes);
    let mut api = Router::new()
        .route("/v1/events", post(events::submit))
        .route("/v1/events/{event_id}", get(events::show))
        .route("/v1/dead-letters", get(dead_letters::list))
        .route("/v1/dead-letters/replay", post(dead_letters::replay))
        .route(
            "/v1/contacts/{channel}/{asset_id}/{customer}",
            get(contacts::show),
        )
        .route(
            "/v1/contacts/{channel}/{asset_id}/{customer}/customer-id",
            put(contacts::link_customer_id),
        )
        .route("/v1/webhooks", get(contacts::list_webhooks))
        .route(
            "/v1/admin/tenants",
            post(admin::create_tenant).get(admin::list_tenants),
        )
        .route(
            "/v1/admin/tenants/{name}",
            get(admin::show_tenant).patch(admin::update_tenant),
        )
        .route(
            "/v1/admin/tenants/{name}/assets",
            post(admin::onboard_asset),
        )
        .route("/v1/admin/tenants/{name}/keys", post(admin::create_key))
        .route("/v1/admin/assets/{asset_id}/token", put(admin::set_token))
        .route(
            "/v1/admin/assets/{asset_id}/resume",
            post(admin::resume_asset),
        )
        .route("/v1/admin/keys/{id}", delete(admin::revoke_key))
        .route("/v1/admin/audit", get(admin::audit))
        .route("/v1/admin/webhooks/reprocess", post(webhooks::reprocess))
        .route(
            "/v1/crm/stage-changes",
            post(crm::stage_changes).get(crm::list_stage_changes),
        )
        .route("/v1/crm/integrations", get(crm::tenant_integrations))
        .route(
            "/v1/admin/crm/rules",
            post(crm::add_rule).get(crm::list_rules),
        )
        .route("/v1/admin/crm/rules/{id}", delete(crm::remove_rule))
        .route("/v1/admin/crm/integrations", get(crm::admin_integrations))
        .route("/v1/stats/overview", get(stats::overview))
        .route("/v1/stats/events", get(stats::events))
        .route("/v1/stats/errors", get(stats::errors))
        .route("/v1/stats/test-events", get(stats::test_events))
        .route("/v1/stats/sources", get(stats::sources))
        .route("/v1/stats/quality", get(stats::quality))
        // Meta's own endpoint, for code written against Graph (its SDKs included).
        .route("/{version}/{dataset_id}/events", post(graph::submit));
    if http.test_panic_route {
        // Not in the OpenAPI document: tests alone switch it on.
        api = api.route(limits::TEST_PANIC_PATH, get(limits::test_panic));
    }
    let api = api.layer(DefaultBodyLimit::max(max_body_bytes));
    let webhooks = Router::new()
        .route(
            "/webhooks/meta",
            get(webhooks::verify).post(webhooks::receive),
        )
        .route("/webhooks/kommo/{secret}", post(crm::kommo_webhook))
        .route_layer(middleware::from_fn_with_state(
            limits.clone(),
            limits::unauthenticated_budget,
        ))
        .layer(DefaultBodyLimit::max(max_webhook_bytes));
    let on_api_listener = state.metrics_access.on_api_listener;
    let mut routes = Router::new()
        .merge(api)
        .merge(webhooks)
        .merge(crate::dashboard::router())
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/openapi.json", get(openapi::document));
    if on_api_listener {
        routes = routes.merge(metrics_routes());
    }
    routes
        // Layers run bottom to top: trace, catch a panic, shed load, check paths and queries.
        .layer(middleware::from_fn(guard::check_path_and_query))
        .layer(middleware::from_fn_with_state(limits, limits::shed))
        .layer(CatchPanicLayer::custom(limits::panic_response))
        // The span names the route, never the URI: contact lookups carry phone numbers.
        // A 5xx is logged where it is made (store errors, panics); shedding is not an error.
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .with_state(state)
}

/// `/metrics` alone, for the API's listener or one of its own (`metrics.listen`).
pub fn metrics_routes() -> Router<AppState> {
    Router::new().route("/metrics", get(ops::metrics))
}

fn request_span(request: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", axum::extract::MatchedPath::as_str);
    tracing::debug_span!("request", method = %request.method(), route)
}
