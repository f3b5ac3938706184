//! Every path parameter and query value is checked here, after routing and before any handler
//! or store sees it: a NUL character (which PostgreSQL cannot store and Meta would refuse) or an
//! over-long value is the client's mistake and will repeat, so it is a 4xx naming the field,
//! never a 5xx "retry". JSON bodies get the same check in [`super::body`].

use axum::{
    extract::{MatchedPath, Request},
    http::StatusCode,
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::ApiError;

/// Meta's endpoint (`graph.rs`; the router names it literally, for the OpenAPI route scan).
pub const GRAPH_ROUTE: &str = "/{version}/{dataset_id}/events";

/// Longest path parameter, in bytes (ids, names, a phone number, a webhook secret). Event ids
/// are at most 256 characters too (`relay_core::MAX_EVENT_ID_LEN`).
pub const MAX_PATH_PARAM_BYTES: usize = 256;
/// Longest query value, in bytes (cursors, ids; Graph's `access_token`).
pub const MAX_QUERY_VALUE_BYTES: usize = 2048;

/// Refuses a request whose path parameters or query values cannot be right: 404 `not_found`
/// for a path parameter (nothing by that name can exist), 400 `invalid_query` for a query
/// value. Unmatched requests pass (they are a 404 anyway), and so does Meta's own route,
/// which checks the same in its handler to answer in Meta's error shape.
pub async fn check_path_and_query(request: Request, next: Next) -> Response {
    match request.extensions().get::<MatchedPath>() {
        None => return next.run(request).await,
        Some(template) if template.as_str() == GRAPH_ROUTE => return next.run(request).await,
        Some(template) => {
            if let Err(e) = check_path(template.as_str(), request.uri().path()) {
                return e.into_response();
            }
        }
    }
    if let Some(query) = request.uri().query()
        && let Err(e) = check_query(query)
    {
        return e.into_response();
    }
    next.run(request).await
}

fn check_path(template: &str, path: &str) -> Result<(), ApiError> {
    for (name, raw) in template.split('/').zip(path.split('/')) {
        let Some(name) = name.strip_prefix('{').and_then(|n| n.strip_suffix('}')) else {
            continue;
        };
        let name = name.trim_start_matches('*');
        let decoded: Vec<u8> = percent_decode(raw);
        let why = if decoded.contains(&0) {
            "contains a NUL character (%00)".to_owned()
        } else if decoded.len() > MAX_PATH_PARAM_BYTES {
            format!(
                "is {} bytes long; at most {MAX_PATH_PARAM_BYTES} are accepted",
                decoded.len()
            )
        } else {
            continue;
        };
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("the path parameter {name} {why}, so nothing by that name exists"),
        ));
    }
    Ok(())
}

/// One decoded path parameter, for a route that answers in its own shape (Graph's).
pub fn check_param(name: &str, value: &str) -> Result<(), ApiError> {
    check_path(&format!("{{{name}}}"), &value.replace('\0', "%00"))
}

pub fn check_query(query: &str) -> Result<(), ApiError> {
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        let why = if key.contains('\0') || value.contains('\0') {
            "contains a NUL character (%00)".to_owned()
        } else if key.len() > MAX_QUERY_VALUE_BYTES || value.len() > MAX_QUERY_VALUE_BYTES {
            format!(
                "is {} bytes long; at most {MAX_QUERY_VALUE_BYTES} are accepted",
                key.len().max(value.len())
            )
        } else {
            continue;
        };
        let mut name: String = key.chars().filter(|c| *c != '\0').take(64).collect();
        if name.is_empty() {
            name = "(unnamed)".into();
        }
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("the query parameter {name:?} {why}"),
        ));
    }
    Ok(())
}

/// `%XX` decoded (an invalid escape stays as it is), as the router's `Path` extractor reads it.
fn percent_decode(raw: &str) -> Vec<u8> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_parameters_with_nul_or_too_long_are_named() {
        assert!(check_path("/v1/events/{event_id}", "/v1/events/ok").is_ok());
        let e = check_path("/v1/events/{event_id}", "/v1/events/a%00b").unwrap_err();
        assert_eq!((e.status, e.code), (StatusCode::NOT_FOUND, "not_found"));
        assert!(e.message.contains("event_id"), "{}", e.message);
        let long = format!("/v1/admin/tenants/{}", "x".repeat(257));
        let e = check_path("/v1/admin/tenants/{name}", &long).unwrap_err();
        assert!(e.message.contains("name") && e.message.contains("257"));
        // A literal segment is never checked; %2 at the end is not an escape.
        assert!(check_path("/v1/x/{id}", "/v1/x/ab%2").is_ok());
    }

    #[test]
    fn query_values_with_nul_or_too_long_are_named() {
        assert!(check_query("dataset_id=1&limit=5").is_ok());
        let e = check_query("limit=5&dataset_id=%00").unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, "invalid_query")
        );
        assert!(e.message.contains("\"dataset_id\""), "{}", e.message);
        let e = check_query(&format!("cursor={}", "a".repeat(3000))).unwrap_err();
        assert!(e.message.contains("cursor") && e.message.contains("3000"));
    }
}
