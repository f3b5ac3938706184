//! Classification of Graph API answers (spec §1.6, §5.3) into one closed outcome type.
//!
//! Pure functions over status, headers and body, so every documented code has a unit test.
//! Classification reads Meta's `code`, `error_subcode` and `is_transient`, not the HTTP status,
//! which Meta does not document per error.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Everything a delivery attempt can end in.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum SendOutcome {
    /// Meta accepted every event of the request.
    Delivered(Delivered),
    /// Try the same request again later.
    Retryable {
        kind: RetryKind,
        /// Meta's hint of how long to wait (usage headers or `Retry-After`), if any.
        #[serde(skip_serializing_if = "Option::is_none", with = "opt_secs")]
        wait_hint: Option<Duration>,
        detail: ErrorDetail,
    },
    /// Sending the same request again cannot succeed.
    Permanent {
        kind: PermanentKind,
        detail: ErrorDetail,
    },
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivered {
    pub events_received: u64,
    #[serde(default)]
    pub messages: Vec<Value>,
    #[serde(default)]
    pub fbtrace_id: Option<String>,
}

/// Why a retry may help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryKind {
    /// No connection, or the connection broke.
    Network,
    /// No answer within the timeout. Meta may have accepted the events: a duplicate risk.
    Timeout,
    /// HTTP 5xx or 408 without a Graph error body.
    ServerError,
    /// Graph codes 1 and 2, or `is_transient: true`.
    Transient,
    /// Rate limits (codes 4, 17, 32, 341, 613, 80000–80014, HTTP 429): pause the dataset.
    Throttled,
    /// Code 368: temporarily blocked for policy reasons; wait long and alert.
    PolicyBlock,
}

/// Why a retry cannot help.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PermanentKind {
    /// Code 100: the payload is invalid. `blamed_fields` are Meta's `blame_field_specs`.
    InvalidPayload { blamed_fields: Vec<Vec<String>> },
    /// Code 100 / 2804003: an event is older than 7 days.
    EventTooOld,
    /// Codes 102, 104, 190: the access token is missing, invalid or expired.
    Auth,
    /// Codes 3, 10, 200–299: the token lacks a permission.
    Permission,
    /// Code 100 / 33: the dataset does not exist or the token cannot see it.
    MissingDataset,
    /// Meta answered success but counted a different number of events than were sent.
    CountMismatch { sent: u64, received: u64 },
    /// Anything else Meta refused.
    Other,
}

impl PermanentKind {
    /// A stable short name for metrics and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            PermanentKind::InvalidPayload { .. } => "invalid_payload",
            PermanentKind::EventTooOld => "event_too_old",
            PermanentKind::Auth => "auth",
            PermanentKind::Permission => "permission",
            PermanentKind::MissingDataset => "missing_dataset",
            PermanentKind::CountMismatch { .. } => "count_mismatch",
            PermanentKind::Other => "other",
        }
    }
}

/// What Meta (or the network) said, kept for attempt records and people.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ErrorDetail {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<GraphError>,
    /// One line for humans: Meta's user message if it gave one, else its message.
    pub message: String,
}

impl ErrorDetail {
    pub fn fbtrace_id(&self) -> Option<&str> {
        self.error.as_ref().and_then(|e| e.fbtrace_id.as_deref())
    }
}

/// The `error` object of a Graph API error body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GraphError {
    #[serde(default)]
    pub message: String,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
    #[serde(default)]
    pub code: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_subcode: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_transient: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_user_title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_user_msg: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_data: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fbtrace_id: Option<String>,
}

impl GraphError {
    /// `error_data.blame_field_specs`; Graph sometimes sends `error_data` as a JSON string.
    pub fn blame_field_specs(&self) -> Vec<Vec<String>> {
        let data = match &self.error_data {
            Some(Value::String(s)) => serde_json::from_str::<Value>(s).ok(),
            Some(other) => Some(other.clone()),
            None => None,
        };
        let Some(specs) = data
            .as_ref()
            .and_then(|d| d.get("blame_field_specs"))
            .and_then(Value::as_array)
        else {
            return Vec::new();
        };
        specs
            .iter()
            .map(|spec| match spec {
                Value::Array(parts) => parts.iter().map(value_text).collect(),
                other => vec![value_text(other)],
            })
            .collect()
    }
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: GraphError,
}

/// Rate-limit usage read from Meta's headers.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// Longest `estimated_time_to_regain_access` (minutes in Meta's headers).
    pub regain_access: Option<Duration>,
    /// `Retry-After`, when present.
    pub retry_after: Option<Duration>,
}

impl Usage {
    /// Reads `X-Business-Use-Case-Usage`, `X-Ad-Account-Usage` and `Retry-After`.
    pub fn from_headers<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)>) -> Usage {
        let mut usage = Usage::default();
        for (name, value) in headers {
            match name.to_ascii_lowercase().as_str() {
                "x-business-use-case-usage" => {
                    let minutes = serde_json::from_str::<Value>(value)
                        .ok()
                        .map(|v| max_number_named(&v, "estimated_time_to_regain_access"))
                        .unwrap_or_default();
                    if minutes > 0 {
                        usage.regain_access = max_duration(
                            usage.regain_access,
                            Duration::from_secs(minutes.saturating_mul(60)),
                        );
                    }
                }
                "x-ad-account-usage" => {
                    let secs = serde_json::from_str::<Value>(value)
                        .ok()
                        .map(|v| max_number_named(&v, "reset_time_duration"))
                        .unwrap_or_default();
                    if secs > 0 {
                        usage.regain_access =
                            max_duration(usage.regain_access, Duration::from_secs(secs));
                    }
                }
                "retry-after" => {
                    usage.retry_after = value.trim().parse().ok().map(Duration::from_secs);
                }
                _ => {}
            }
        }
        usage
    }

    /// The longest wait any header asks for.
    pub fn wait_hint(&self) -> Option<Duration> {
        match (self.regain_access, self.retry_after) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

fn max_duration(current: Option<Duration>, new: Duration) -> Option<Duration> {
    Some(current.map_or(new, |c| c.max(new)))
}

/// Largest integer value of `key` anywhere in a JSON document.
fn max_number_named(v: &Value, key: &str) -> u64 {
    match v {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                if k == key {
                    v.as_u64()
                        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                        .unwrap_or(0)
                } else {
                    max_number_named(v, key)
                }
            })
            .max()
            .unwrap_or(0),
        Value::Array(items) => items
            .iter()
            .map(|v| max_number_named(v, key))
            .max()
            .unwrap_or(0),
        _ => 0,
    }
}

/// Throttling codes (spec §1.6): app, user, page, application and ad-account limits, BUC limits.
fn is_throttle_code(code: i64) -> bool {
    matches!(code, 4 | 17 | 32 | 341 | 613) || (80_000..=80_014).contains(&code)
}

/// Classifies one HTTP answer to `POST /{dataset_id}/events` carrying `sent` events.
pub fn classify_events_response(status: u16, usage: Usage, body: &[u8], sent: u64) -> SendOutcome {
    if (200..300).contains(&status) {
        return match serde_json::from_slice::<Delivered>(body) {
            Ok(d) if d.events_received == sent => SendOutcome::Delivered(d),
            Ok(d) => SendOutcome::Permanent {
                kind: PermanentKind::CountMismatch {
                    sent,
                    received: d.events_received,
                },
                detail: ErrorDetail {
                    http_status: Some(status),
                    error: None,
                    message: format!(
                        "Meta counted {} events of {sent} sent (fbtrace_id {})",
                        d.events_received,
                        d.fbtrace_id.as_deref().unwrap_or("none")
                    ),
                },
            },
            Err(_) => SendOutcome::Permanent {
                kind: PermanentKind::Other,
                detail: ErrorDetail {
                    http_status: Some(status),
                    error: None,
                    message: format!(
                        "HTTP {status} with a body that is not a Conversions API answer: {}",
                        snippet(body)
                    ),
                },
            },
        };
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody { error }) => classify_graph_error(status, usage, error),
        Err(_) => classify_bare_status(status, usage, body),
    }
}

/// Classifies a Graph error object (any endpoint).
pub fn classify_graph_error(status: u16, usage: Usage, error: GraphError) -> SendOutcome {
    let message = error
        .error_user_msg
        .clone()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| error.message.clone());
    let detail = ErrorDetail {
        http_status: Some(status),
        message: format!("{message} (code {}{})", error.code, subcode_text(&error)),
        error: Some(error.clone()),
    };
    let retry = |kind, wait_hint| SendOutcome::Retryable {
        kind,
        wait_hint,
        detail: detail.clone(),
    };
    let permanent = |kind| SendOutcome::Permanent {
        kind,
        detail: detail.clone(),
    };
    match (error.code, error.error_subcode) {
        (code, _) if is_throttle_code(code) => retry(RetryKind::Throttled, usage.wait_hint()),
        (102 | 104 | 190, _) => permanent(PermanentKind::Auth),
        (368, _) => retry(RetryKind::PolicyBlock, usage.wait_hint()),
        _ if error.is_transient == Some(true) => retry(RetryKind::Transient, usage.wait_hint()),
        (1 | 2, _) => retry(RetryKind::Transient, usage.wait_hint()),
        (100, Some(33)) => permanent(PermanentKind::MissingDataset),
        (100, Some(2_804_003)) => permanent(PermanentKind::EventTooOld),
        (100, _) => permanent(PermanentKind::InvalidPayload {
            blamed_fields: error.blame_field_specs(),
        }),
        (3 | 10, _) | (200..=299, _) => permanent(PermanentKind::Permission),
        _ if status >= 500 => retry(RetryKind::ServerError, usage.wait_hint()),
        _ => permanent(PermanentKind::Other),
    }
}

fn classify_bare_status(status: u16, usage: Usage, body: &[u8]) -> SendOutcome {
    let detail = ErrorDetail {
        http_status: Some(status),
        error: None,
        message: format!("HTTP {status}: {}", snippet(body)),
    };
    match status {
        429 => SendOutcome::Retryable {
            kind: RetryKind::Throttled,
            wait_hint: usage.wait_hint(),
            detail,
        },
        408 | 500..=599 => SendOutcome::Retryable {
            kind: RetryKind::ServerError,
            wait_hint: usage.retry_after,
            detail,
        },
        _ => SendOutcome::Permanent {
            kind: PermanentKind::Other,
            detail,
        },
    }
}

fn subcode_text(error: &GraphError) -> String {
    error
        .error_subcode
        .map(|s| format!(", subcode {s}"))
        .unwrap_or_default()
}

/// The start of a body, for messages; bodies of errors can be whole HTML pages.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None if text.is_empty() => "(empty body)".into(),
        None => text.to_owned(),
    }
}

mod opt_secs {
    use std::time::Duration;

    use serde::Serializer;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_u64(d.as_secs()),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn error_body(error: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({ "error": error })).unwrap()
    }

    fn classify(status: u16, error: Value) -> SendOutcome {
        classify_events_response(status, Usage::default(), &error_body(error), 3)
    }

    fn permanent_kind(outcome: SendOutcome) -> PermanentKind {
        match outcome {
            SendOutcome::Permanent { kind, .. } => kind,
            other => panic!("expected permanent, got {other:?}"),
        }
    }

    fn retry_kind(outcome: SendOutcome) -> RetryKind {
        match outcome {
            SendOutcome::Retryable { kind, .. } => kind,
            other => panic!("expected retryable, got {other:?}"),
        }
    }

    #[test]
    fn success_with_matching_count_is_delivered() {
        let body = br#"{"events_received": 3, "messages": [], "fbtrace_id": "AbC123"}"#;
        let outcome = classify_events_response(200, Usage::default(), body, 3);
        assert_eq!(
            outcome,
            SendOutcome::Delivered(Delivered {
                events_received: 3,
                messages: vec![],
                fbtrace_id: Some("AbC123".into())
            })
        );
    }

    #[test]
    fn success_with_a_different_count_is_a_failure() {
        let body = br#"{"events_received": 2, "messages": [], "fbtrace_id": "x"}"#;
        let outcome = classify_events_response(200, Usage::default(), body, 3);
        assert_eq!(
            permanent_kind(outcome),
            PermanentKind::CountMismatch {
                sent: 3,
                received: 2
            }
        );
    }

    #[test]
    fn success_status_without_a_graph_body_is_not_delivered() {
        let outcome = classify_events_response(200, Usage::default(), b"<html>ok</html>", 3);
        assert_eq!(permanent_kind(outcome), PermanentKind::Other);
    }

    #[test]
    fn every_documented_throttle_code_is_throttled() {
        for code in [4, 17, 32, 341, 613, 80000, 80004, 80014] {
            let outcome = classify(400, json!({"code": code, "message": "limit"}));
            assert_eq!(retry_kind(outcome), RetryKind::Throttled, "code {code}");
        }
    }

    #[test]
    fn throttling_carries_the_usage_header_wait_hint() {
        let usage = Usage::from_headers([(
            "X-Business-Use-Case-Usage",
            r#"{"1234":[{"type":"ads_management","call_count":100,"total_cputime":20,"total_time":20,"estimated_time_to_regain_access":7}]}"#,
        )]);
        let outcome = classify_events_response(
            400,
            usage,
            &error_body(json!({"code": 17, "error_subcode": 2446079})),
            1,
        );
        match outcome {
            SendOutcome::Retryable {
                kind, wait_hint, ..
            } => {
                assert_eq!(kind, RetryKind::Throttled);
                assert_eq!(wait_hint, Some(Duration::from_secs(7 * 60)));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn retry_after_and_ad_account_usage_are_read() {
        let usage = Usage::from_headers([
            ("Retry-After", "30"),
            (
                "X-Ad-Account-Usage",
                r#"{"acc_id_util_pct":100,"reset_time_duration":90}"#,
            ),
        ]);
        assert_eq!(usage.wait_hint(), Some(Duration::from_secs(90)));
        let outcome = classify_events_response(429, usage, b"Too Many Requests", 1);
        assert_eq!(retry_kind(outcome), RetryKind::Throttled);
    }

    #[test]
    fn token_errors_are_auth_failures() {
        for code in [102, 104, 190] {
            let outcome = classify(
                400,
                json!({"code": code, "error_subcode": 463, "type": "OAuthException"}),
            );
            assert_eq!(permanent_kind(outcome), PermanentKind::Auth, "code {code}");
        }
    }

    #[test]
    fn permission_errors_are_permanent() {
        for code in [3, 10, 200, 294, 299] {
            let outcome = classify(403, json!({"code": code}));
            assert_eq!(
                permanent_kind(outcome),
                PermanentKind::Permission,
                "code {code}"
            );
        }
    }

    #[test]
    fn unknown_and_downtime_errors_are_transient() {
        assert_eq!(
            retry_kind(classify(500, json!({"code": 1, "error_subcode": 99}))),
            RetryKind::Transient
        );
        assert_eq!(
            retry_kind(classify(503, json!({"code": 2}))),
            RetryKind::Transient
        );
        assert_eq!(
            retry_kind(classify(400, json!({"code": 9999, "is_transient": true}))),
            RetryKind::Transient
        );
    }

    #[test]
    fn policy_blocks_wait_long() {
        assert_eq!(
            retry_kind(classify(400, json!({"code": 368}))),
            RetryKind::PolicyBlock
        );
    }

    #[test]
    fn missing_dataset_is_its_own_class() {
        let outcome = classify(
            400,
            json!({"code": 100, "error_subcode": 33, "type": "GraphMethodException"}),
        );
        assert_eq!(permanent_kind(outcome), PermanentKind::MissingDataset);
    }

    #[test]
    fn stale_events_are_their_own_class() {
        let outcome = classify(
            400,
            json!({"code": 100, "error_subcode": 2804003, "error_user_title": "Event Timestamp Too Old"}),
        );
        assert_eq!(permanent_kind(outcome), PermanentKind::EventTooOld);
    }

    #[test]
    fn invalid_payload_carries_blamed_fields_in_both_encodings() {
        let outcome = classify(
            400,
            json!({"code": 100, "error_subcode": 2804016, "is_transient": false,
                   "error_data": {"blame_field_specs": [["custom_data", "currency"]]}}),
        );
        assert_eq!(
            permanent_kind(outcome),
            PermanentKind::InvalidPayload {
                blamed_fields: vec![vec!["custom_data".into(), "currency".into()]]
            }
        );
        let outcome = classify(
            400,
            json!({"code": 100, "error_data": "{\"blame_field_specs\":[[\"user_data\"]]}"}),
        );
        assert_eq!(
            permanent_kind(outcome),
            PermanentKind::InvalidPayload {
                blamed_fields: vec![vec!["user_data".into()]]
            }
        );
    }

    #[test]
    fn bare_server_errors_retry_and_bare_client_errors_do_not() {
        let outcome = classify_events_response(502, Usage::default(), b"Bad Gateway", 1);
        assert_eq!(retry_kind(outcome), RetryKind::ServerError);
        let outcome = classify_events_response(404, Usage::default(), b"", 1);
        assert_eq!(permanent_kind(outcome), PermanentKind::Other);
    }

    #[test]
    fn the_user_message_is_preferred_for_people() {
        let outcome = classify(
            400,
            json!({"code": 100, "message": "Invalid parameter", "error_user_msg": "The currency is not valid", "fbtrace_id": "Tr4ce"}),
        );
        match outcome {
            SendOutcome::Permanent { detail, .. } => {
                assert_eq!(detail.message, "The currency is not valid (code 100)");
                assert_eq!(detail.fbtrace_id(), Some("Tr4ce"));
            }
            other => panic!("{other:?}"),
        }
    }
}
