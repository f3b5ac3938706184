//! Bearer-key authentication as extractors: [`TenantKey`] for the event API (a tenant's key, or
//! the single configured key of the default tenant) and [`AdminKey`] for `/v1/admin`.

use axum::{extract::FromRequestParts, http::StatusCode, http::request::Parts};

use super::{ApiError, AppState};
use crate::tenancy::keys::Scope;

/// The caller's tenant scope, from a valid tenant API key.
pub struct TenantKey(pub Scope);

/// Proof that the request carried the admin key.
pub struct AdminKey;

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send the API key as `Authorization: Bearer <key>`",
            )
        })
}

fn invalid() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "the API key is not valid (unknown or revoked)",
    )
}

impl FromRequestParts<AppState> for TenantKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let presented = bearer(parts)?;
        match state.auth.tenant_scope(presented).await? {
            Some(scope) => Ok(TenantKey(scope)),
            None if state.auth.is_admin(presented) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "admin_key",
                "the admin key manages tenants; send events with a tenant's API key",
            )),
            None => Err(invalid()),
        }
    }
}

impl FromRequestParts<AppState> for AdminKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let presented = bearer(parts)?;
        if state.auth.is_admin(presented) {
            return Ok(AdminKey);
        }
        if state.auth.tenant_scope(presented).await?.is_some() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "not_admin",
                "this endpoint needs the admin key (CAPI_RELAY_ADMIN_KEY), not a tenant key",
            ));
        }
        Err(invalid())
    }
}
