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

/// The answers the router-wide layers can give on any route (`guard.rs`, `limits.rs`): 503
/// `overloaded` with `Retry-After` (not on the health checks), 408 `body_timeout` where a body
/// is read, 404 where a path parameter is, 400 `invalid_query` where a query parameter is.
struct Limits;

impl Modify for Limits {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{
            Content, Ref, RefOr, ResponseBuilder,
            header::HeaderBuilder,
            path::{Operation, ParameterIn},
            schema::{ObjectBuilder, Type},
        };
        let error = |what: &str| {
            ResponseBuilder::new().description(what).content(
                "application/json",
                Content::new(Some(Ref::from_schema_name("ErrorBody"))),
            )
        };
        let add = |op: &mut Operation, status: &str, response: ResponseBuilder| {
            op.responses
                .responses
                .entry(status.to_owned())
                .or_insert(RefOr::T(response.build()));
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            if matches!(path.as_str(), "/healthz" | "/readyz") {
                continue;
            }
            let graph = path == super::guard::GRAPH_ROUTE;
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.patch,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                // Meta's route documents its own 503; the relay's shape is only for the others.
                if !graph {
                    let retry_after = HeaderBuilder::new()
                        .schema(ObjectBuilder::new().schema_type(Type::Integer))
                        .description(Some("seconds to wait before retrying"))
                        .build();
                    const SHED: &str = "overloaded: a load limit (http.*) was reached; retry after Retry-After seconds";
                    match op.responses.responses.get_mut("503") {
                        Some(RefOr::T(existing)) => {
                            existing.description = format!("{}; or {SHED}", existing.description);
                            existing.headers.insert("Retry-After".into(), retry_after);
                        }
                        _ => add(op, "503", error(SHED).header("Retry-After", retry_after)),
                    }
                }
                let has = |place: ParameterIn| {
                    op.parameters
                        .as_ref()
                        .is_some_and(|ps| ps.iter().any(|p| p.parameter_in == place))
                };
                let (in_path, in_query) = (has(ParameterIn::Path), has(ParameterIn::Query));
                if op.request_body.is_some() && !graph {
                    add(
                        op,
                        "408",
                        error(
                            "body_timeout: the body did not arrive within http.body_read_timeout",
                        ),
                    );
                }
                if in_path && !graph {
                    add(
                        op,
                        "404",
                        error(
                            "not_found (a path parameter with a NUL character or over 256 bytes included)",
                        ),
                    );
                }
                if in_query && !graph {
                    add(
                        op,
                        "400",
                        error(
                            "invalid_query (a query value with a NUL character or over 2,048 bytes included)",
                        ),
                    );
                }
            }
        }
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
    modifiers(&Security, &Limits)
)]
pub struct ApiDoc;

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "ops", responses((status = 200, description = "the OpenAPI 3.1 document", body = Object)))]
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
