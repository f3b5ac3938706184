//! The one error type of the request path: a status, a stable code and a sentence.
//! 4xx bodies explain; 5xx bodies are generic and the cause is logged.

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use relay_store::StoreError;

use super::openapi::{ErrorBody, ErrorDetail};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => {
                tracing::warn!(error = %e, "database unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the database is busy or unreachable; retry shortly",
                )
            }
            StoreError::NotFound(what) => ApiError::new(StatusCode::NOT_FOUND, "not_found", what),
            StoreError::Conflict(what) => ApiError::new(StatusCode::CONFLICT, "conflict", what),
            other => {
                tracing::error!(error = %other, "store error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; nothing was lost, retry the request",
                )
            }
        }
    }
}

impl From<axum::extract::rejection::BytesRejection> for ApiError {
    fn from(e: axum::extract::rejection::BytesRejection) -> Self {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is larger than max_body_bytes; send at most 1,000 events per request",
            )
        } else if e.body_text().contains(super::limits::BODY_TIMEOUT_MESSAGE) {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                super::limits::BODY_TIMEOUT_MESSAGE,
            )
        } else {
            ApiError::new(e.status(), "unreadable_body", e.body_text())
        }
    }
}
