//! What Meta's `POST /{version}/{dataset_id}/events` accepts, read the way Meta reads it: a JSON
//! body or form-encoded parameters (`data` then a JSON string, as the Python SDK sends), any
//! parameter also in the query string, and each event an object or a JSON string of one.

use relay_core::{Issue, IssueCode, MAX_EVENTS_PER_REQUEST, graph_error::GraphError};
use serde_json::{Map, Value};

/// Request parameters Meta's endpoint documents; others are reported as ignored.
const KNOWN_PARAMS: [&str; 10] = [
    "data",
    "access_token",
    "appsecret_proof",
    "test_event_code",
    "partner_agent",
    "namespace_id",
    "upload_id",
    "upload_tag",
    "upload_source",
    // Sent by some HTTP clients with every Graph call.
    "format",
];

/// A parsed request: its parameters and its events.
pub struct GraphRequest {
    pub params: Map<String, Value>,
    pub events: Vec<Value>,
}

impl GraphRequest {
    /// A text parameter (`test_event_code`, `access_token`, …).
    pub fn text(&self, key: &str) -> Option<&str> {
        self.params
            .get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }

    /// Parameters that are not Meta's, named in the answer's `messages`.
    pub fn ignored_params(&self) -> impl Iterator<Item = &str> {
        self.params
            .keys()
            .map(String::as_str)
            .filter(|k| !KNOWN_PARAMS.contains(k))
    }
}

/// `v21.0`-style versions, as Graph spells them.
pub fn check_version(version: &str) -> Result<(), GraphError> {
    let valid = version
        .strip_prefix('v')
        .and_then(|v| v.split_once('.'))
        .is_some_and(|(major, minor)| {
            !major.is_empty()
                && !minor.is_empty()
                && major.bytes().all(|b| b.is_ascii_digit())
                && minor.bytes().all(|b| b.is_ascii_digit())
        });
    if valid {
        Ok(())
    } else {
        Err(GraphError::new(
            400,
            2500,
            format!("Unknown path components: /{version}"),
        ))
    }
}

/// Meta's answer for a dataset the token cannot reach (or that does not exist).
pub fn unknown_object(object_id: &str) -> GraphError {
    GraphError::new(
        400,
        100,
        format!(
            "Unsupported post request. Object with ID '{object_id}' does not exist, cannot be \
             loaded due to missing permissions, or does not support this operation"
        ),
    )
    .with_subcode(33)
}

/// Reads the body (by its content type) and the query into parameters and events.
pub fn parse(
    content_type: Option<&str>,
    body: &[u8],
    query: Option<&str>,
) -> Result<GraphRequest, GraphError> {
    let mime = content_type
        .and_then(|c| c.split(';').next())
        .map(|c| c.trim().to_ascii_lowercase());
    let mut params = if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        match mime.as_deref() {
            Some("application/x-www-form-urlencoded") => form_params(body),
            Some("application/json") | None => json_params(body)?,
            Some(other) if other.ends_with("+json") => json_params(body)?,
            Some(other) => {
                return Err(GraphError::invalid(format!(
                    "the body's Content-Type {other:?} is not supported: send application/json or \
                     application/x-www-form-urlencoded"
                )));
            }
        }
    };
    // Graph reads any parameter from the query string too; the body wins.
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        params
            .entry(key.into_owned())
            .or_insert(Value::String(value.into_owned()));
    }
    let events = events(&params)?;
    Ok(GraphRequest { params, events })
}

fn form_params(body: &[u8]) -> Map<String, Value> {
    form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
        .collect()
}

fn json_params(body: &[u8]) -> Result<Map<String, Value>, GraphError> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(params)) => Ok(params),
        Ok(_) => Err(GraphError::invalid(
            "the body must be a JSON object such as {\"data\": [ ...events... ]}",
        )),
        Err(e) => Err(GraphError::invalid(format!(
            "the body is not valid JSON: {e}"
        ))),
    }
}

fn events(params: &Map<String, Value>) -> Result<Vec<Value>, GraphError> {
    let data = match params.get("data") {
        None | Some(Value::Null) => {
            return Err(
                GraphError::new(400, 100, "(#100) The parameter data is required").blame(&["data"]),
            );
        }
        // Form bodies (and some JSON clients) send `data` as a JSON string.
        Some(Value::String(text)) => serde_json::from_str(text).map_err(|e| {
            GraphError::invalid(format!("data is not a JSON array of events: {e}")).blame(&["data"])
        })?,
        Some(other) => other.clone(),
    };
    let Value::Array(items) = data else {
        return Err(
            GraphError::invalid("The parameter data must be an array of events.").blame(&["data"]),
        );
    };
    if items.is_empty() || items.len() > MAX_EVENTS_PER_REQUEST {
        return Err(GraphError::invalid(format!(
            "data holds {} events; send between 1 and {MAX_EVENTS_PER_REQUEST} per request",
            items.len()
        ))
        .blame(&["data"]));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item {
            // The Python SDK sends each event as a JSON string.
            Value::String(text) => serde_json::from_str(&text).map_err(|e| {
                GraphError::invalid(format!("data[{i}] is a string but not a JSON event: {e}"))
                    .blame(&["data"])
            }),
            other => Ok(other),
        })
        .collect()
}

/// Meta's answer when events are refused: code 100 (subcode 2804003 for a stale event, as Meta
/// answers), every reason in `error_user_msg`, every field in `blame_field_specs`.
pub fn refused(refusals: &[(usize, Vec<Issue>)]) -> GraphError {
    let issues = || {
        refusals
            .iter()
            .flat_map(|(i, e)| e.iter().map(move |e| (*i, e)))
    };
    let count = refusals.len();
    let mut text: Vec<String> = issues()
        .take(20)
        .map(|(i, e)| format!("data[{i}]: {e}"))
        .collect();
    let total = issues().count();
    if total > text.len() {
        text.push(format!("... and {} more", total - text.len()));
    }
    let mut error = GraphError::new(400, 100, "(#100) Invalid parameter").with_user(
        if count == 1 {
            "Invalid event".to_owned()
        } else {
            format!("{count} invalid events")
        },
        format!(
            "Nothing in this request was accepted (one invalid event refuses the request, as \
             Meta does). {}",
            text.join("; ")
        ),
    );
    if issues().any(|(_, e)| e.code == IssueCode::EventTooOld) {
        error = error.with_subcode(2804003);
    }
    let mut blamed: Vec<Vec<&str>> = Vec::new();
    for (_, issue) in issues() {
        let path: Vec<&str> = issue.path.split('.').filter(|p| !p.is_empty()).collect();
        if !path.is_empty() && !blamed.contains(&path) {
            blamed.push(path);
        }
    }
    for path in blamed {
        error = error.blame(&path);
    }
    error
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn form_bodies_carry_data_as_a_json_string_of_json_strings() {
        let data = serde_json::to_string(&[json!({"event_name": "Purchase"}).to_string()]).unwrap();
        let body: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("data", &data)
            .append_pair("access_token", "k")
            .finish();
        let request = parse(
            Some("application/x-www-form-urlencoded"),
            body.as_bytes(),
            Some("test_event_code=T1&access_token=ignored"),
        )
        .unwrap();
        assert_eq!(request.events, vec![json!({"event_name": "Purchase"})]);
        assert_eq!(request.text("access_token"), Some("k"));
        assert_eq!(request.text("test_event_code"), Some("T1"));
    }

    #[test]
    fn versions_and_bad_bodies_get_meta_errors() {
        assert!(check_version("v21.0").is_ok());
        for bad in ["21.0", "v21", "v.1", "vx.0", "v1.0a"] {
            assert_eq!(check_version(bad).unwrap_err().code, 2500, "{bad}");
        }
        let err = |ct: &str, body: &str| parse(Some(ct), body.as_bytes(), None).err().unwrap();
        assert_eq!(err("application/json", "{").code, 100);
        assert_eq!(err("application/json", "{}").blame_field_specs, [["data"]]);
        assert_eq!(err("application/json", r#"{"data": []}"#).code, 100);
        assert_eq!(err("application/json", r#"{"data": ["{"]}"#).code, 100);
        assert_eq!(err("text/plain", "data=1").code, 100);
    }

    #[test]
    fn refusals_name_every_field_and_the_stale_event_subcode() {
        let error = refused(&[
            (
                0,
                vec![Issue::new(
                    IssueCode::EventTooOld,
                    "event_time",
                    "is more than 7 days old",
                )],
            ),
            (
                2,
                vec![Issue::new(
                    IssueCode::InvalidCurrency,
                    "custom_data.currency",
                    "XYZ is not ISO 4217",
                )],
            ),
        ]);
        assert_eq!((error.code, error.subcode), (100, Some(2804003)));
        assert_eq!(
            error.blame_field_specs,
            [vec!["event_time"], vec!["custom_data", "currency"]]
        );
        let (title, msg) = *error.user_text.unwrap();
        assert_eq!(title, "2 invalid events");
        assert!(msg.contains("data[2]: [invalid_currency] custom_data.currency"));
    }
}
