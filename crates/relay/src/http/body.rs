//! The one request-body and query extractor of the JSON routes, so that the same mistake gets
//! the same status and code everywhere (README, "Errors"):
//! 400 `invalid_json` (not JSON), 422 `invalid_body` (JSON of the wrong shape, naming the
//! field), 413 `body_too_large`, 400 `invalid_query`, and 422 `invalid_value` for a string no
//! store could keep (`relay_core::storable`: a NUL character, or over-long), naming the field.

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Request},
    http::{StatusCode, request::Parts},
};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::ApiError;

/// A JSON body read into `T`, every string in it checked ([`check_strings`]).
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(request, state).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// A JSON object body whose values are left to the handler: `POST /v1/events` judges each
/// event on its own, so that one bad event never fails its neighbours.
pub struct JsonObject(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(request, state).await?;
        parse_value(&bytes).map(JsonObject)
    }
}

/// `bytes` as JSON into `T`, with the vocabulary's errors. Read as JSON first, so that a body
/// that is not JSON at all is `invalid_json` even when its first field is already wrong.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value = parse_value(bytes)?;
    check_strings(&value)?;
    T::deserialize(value).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            format!("the body is JSON but not what this route takes: {e}"),
        )
    })
}

/// 422 `invalid_value` naming the first string in `value` no store could keep.
pub fn check_strings(value: &Value) -> Result<(), ApiError> {
    match relay_core::storable::find_unstorable(value) {
        None => Ok(()),
        Some(bad) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
            bad.to_string(),
        )),
    }
}

/// `bytes` as a JSON object, with the vocabulary's errors.
fn parse_value(bytes: &[u8]) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not JSON: {e}"),
        )
    })?;
    // Serde also reads a struct from an array of its fields; no route takes that.
    if !value.is_object() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            "the body must be a JSON object",
        ));
    }
    Ok(value)
}

/// Query parameters read into `T`.
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| QueryParams(q.0))
            .map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_query",
                    format!(
                        "the query string is not what this route takes: {}",
                        e.body_text()
                    ),
                )
            })
    }
}
