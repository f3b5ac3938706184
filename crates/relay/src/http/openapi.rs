//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]` attributes and the
//! request and answer types, served at `/openapi.json`. `tests/it/openapi.rs` fails when a
//! route of the router is missing from it.

use axum::Json;
use serde::Serialize;
use utoipa::{
    Modify, OpenApi, ToSchema,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

/// Every error of the `/v1` routes: `{"error": {"code", "message"}}` (README, "Errors").
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine code, e.g. `invalid_body`.
    #[schema(example = "invalid_body")]
    pub code: &'static str,
    /// A sentence that names the field and the reason.
    pub message: String,
}

/// Meta's success answer on the Graph-compatible endpoint.
#[derive(Serialize, ToSchema)]
pub struct GraphSuccess {
    pub events_received: usize,
    pub messages: Vec<String>,
    pub fbtrace_id: String,
}

/// Meta's error shape on the Graph-compatible endpoint.
#[derive(Serialize, ToSchema)]
pub struct GraphErrorBody {
    pub error: GraphErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct GraphErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub error_type: String,
    pub code: i64,
    pub error_subcode: Option<i64>,
    pub is_transient: bool,
    pub error_user_title: Option<String>,
    pub error_user_msg: Option<String>,
    /// `{"blame_field_specs": [["custom_data", "currency"], …]}`
    pub error_data: Option<serde_json::Map<String, serde_json::Value>>,
    pub fbtrace_id: String,
}

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let bearer = |what: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(what))
                    .build(),
            )
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "tenant_key",
            bearer("a tenant's API key (crk_…), or CAPI_RELAY_API_KEY for the default tenant"),
        );
        components.add_security_scheme("admin_key", bearer("CAPI_RELAY_ADMIN_KEY"));
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "capi-relay", description = "Relay for Meta's Conversions API for Business Messaging"),
    paths(
        super::events::submit,
        super::events::show,
        super::dead_letters::list,
        super::dead_letters::replay,
        super::contacts::show,
        super::contacts::link_customer_id,
        super::contacts::list_webhooks,
        super::admin::create_tenant,
        super::admin::list_tenants,
        super::admin::show_tenant,
        super::admin::update_tenant,
        super::admin::onboard_asset,
        super::admin::set_token,
        super::admin::resume_asset,
        super::admin::create_key,
        super::admin::revoke_key,
        super::admin::audit,
        super::stats::overview,
        super::stats::events,
        super::stats::errors,
        super::stats::test_events,
        super::stats::sources,
        super::stats::quality,
        super::graph::submit,
        super::crm::stage_changes,
        super::crm::list_stage_changes,
        super::crm::tenant_integrations,
        super::crm::admin_integrations,
        super::crm::add_rule,
        super::crm::list_rules,
        super::crm::remove_rule,
        super::crm::kommo_webhook,
        super::webhooks::verify,
        super::webhooks::receive,
        super::webhooks::reprocess,
        super::ops::healthz,
        super::ops::readyz,
        super::ops::metrics,
        document,
    ),
    modifiers(&Security)
)]
pub struct ApiDoc;

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "ops", responses((status = 200, description = "the OpenAPI 3.1 document", body = Object)))]
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
