//! The Graph API client: `POST /{dataset_id}/events` and the Dataset API.
//!
//! The access token travels only in the `Authorization` header and `appsecret_proof` only in
//! the JSON body, never in a URL, so neither can leak through request logs or error messages
//! (reqwest errors print the URL).

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use reqwest::{StatusCode, header::HeaderMap};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;

use super::outcome::{self, ErrorDetail, GraphError, PermanentKind, RetryKind, SendOutcome, Usage};

/// Meta's Graph API.
pub const DEFAULT_GRAPH_URL: &str = "https://graph.facebook.com";
/// Newest Graph API version at the time of writing (released 2026-07-29).
pub const DEFAULT_API_VERSION: &str = "v26.0";
/// Whole-request timeout. Meta answers most requests within 600 ms and suggests 1.5 s; 5 s
/// leaves room for a 1,000-event request on a slow link, and keeps the lease (twice this)
/// short enough that a crashed relay's events go out again within seconds.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how to reach the Graph API.
#[derive(Debug, Clone)]
pub struct GraphConfig {
    /// Base URL without version, e.g. `https://graph.facebook.com` or a simulator's address.
    pub base_url: String,
    /// API version path segment, e.g. `v26.0`.
    pub api_version: String,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// When set, every call carries `appsecret_proof` (apps with "Require App Secret").
    pub app_secret: Option<SecretString>,
    /// The partner string Meta assigned, sent with every events request.
    pub partner_agent: Option<String>,
}

impl Default for GraphConfig {
    fn default() -> Self {
        GraphConfig {
            base_url: DEFAULT_GRAPH_URL.into(),
            api_version: DEFAULT_API_VERSION.into(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            app_secret: None,
            partner_agent: None,
        }
    }
}

/// The result of one `/events` call: the outcome and how long Meta took.
#[derive(Debug, Clone)]
pub struct SendReport {
    pub outcome: SendOutcome,
    pub latency: Duration,
}

/// A dataset as the Dataset API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dataset {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
}

/// A failed Dataset API call, classified like an events call.
#[derive(Debug, Clone)]
pub struct GraphCallError {
    pub outcome: SendOutcome,
}

impl std::fmt::Display for GraphCallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.outcome {
            SendOutcome::Delivered(_) => f.write_str("unexpected success"),
            SendOutcome::Retryable { detail, kind, .. } => {
                write!(f, "temporary failure ({kind:?}): {}", detail.message)
            }
            SendOutcome::Permanent { detail, kind } => {
                write!(f, "{}: {}", kind.as_str(), detail.message)
            }
        }
    }
}

impl std::error::Error for GraphCallError {}

impl GraphCallError {
    /// Meta's error object, when it sent one.
    pub fn graph_error(&self) -> Option<&GraphError> {
        match &self.outcome {
            SendOutcome::Retryable { detail, .. } | SendOutcome::Permanent { detail, .. } => {
                detail.error.as_ref()
            }
            SendOutcome::Delivered(_) => None,
        }
    }
}

/// A cheap-to-clone client (reqwest pools connections inside).
#[derive(Debug, Clone)]
pub struct GraphClient {
    http: reqwest::Client,
    config: GraphConfig,
}

impl GraphClient {
    pub fn new(config: GraphConfig) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("capi-relay/", env!("CARGO_PKG_VERSION")))
            .timeout(config.request_timeout)
            .connect_timeout(config.connect_timeout)
            .build()?;
        Ok(GraphClient { http, config })
    }

    pub fn config(&self) -> &GraphConfig {
        &self.config
    }

    fn url(&self, object_id: &str, edge: &str) -> String {
        format!(
            "{}/{}/{}/{}",
            self.config.base_url.trim_end_matches('/'),
            self.config.api_version,
            object_id,
            edge
        )
    }

    fn appsecret_proof(&self, token: &SecretString) -> Option<String> {
        let secret = self.config.app_secret.as_ref()?;
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(token.expose_secret().as_bytes());
        Some(hex::encode(mac.finalize().into_bytes()))
    }

    /// Sends up to 1,000 events (already validated `MetaEvent`s or their stored JSON) to a
    /// dataset, and classifies Meta's answer.
    pub async fn send_events<E: Serialize>(
        &self,
        dataset_id: &str,
        token: &SecretString,
        events: &[E],
        test_event_code: Option<&str>,
    ) -> SendReport {
        let body = EventsRequest {
            data: events,
            partner_agent: self.config.partner_agent.as_deref(),
            test_event_code,
            appsecret_proof: self.appsecret_proof(token),
        };
        let started = Instant::now();
        let result = self
            .http
            .post(self.url(dataset_id, "events"))
            .bearer_auth(token.expose_secret())
            .json(&body)
            .send()
            .await;
        let outcome = match result {
            Ok(response) => {
                let status = response.status().as_u16();
                let usage = usage_from(response.headers());
                match response.bytes().await {
                    Ok(bytes) => outcome::classify_events_response(
                        status,
                        usage,
                        &bytes,
                        events.len() as u64,
                    ),
                    Err(e) => transport_failure(&e),
                }
            }
            Err(e) => transport_failure(&e),
        };
        SendReport {
            outcome,
            latency: started.elapsed(),
        }
    }

    /// `POST /{asset_id}/dataset`: creates the asset's dataset, or returns the one it has.
    pub async fn create_or_get_dataset(
        &self,
        asset_id: &str,
        token: &SecretString,
        dataset_name: Option<&str>,
    ) -> Result<Dataset, GraphCallError> {
        let mut body = serde_json::Map::new();
        if let Some(name) = dataset_name {
            body.insert("dataset_name".into(), Value::String(name.into()));
        }
        if let Some(proof) = self.appsecret_proof(token) {
            body.insert("appsecret_proof".into(), Value::String(proof));
        }
        let request = self
            .http
            .post(self.url(asset_id, "dataset"))
            .bearer_auth(token.expose_secret())
            .json(&body);
        let value = self.call(request).await?;
        serde_json::from_value::<Dataset>(value.clone()).map_err(|_| unexpected_body(&value))
    }

    /// `GET /{asset_id}/dataset`: the asset's dataset, if it has one.
    ///
    /// Meta's pages disagree on the answer's shape (spec §3), so both a bare object and a
    /// `{"data": [...]}` list are read.
    pub async fn get_dataset(
        &self,
        asset_id: &str,
        token: &SecretString,
    ) -> Result<Option<Dataset>, GraphCallError> {
        let mut request = self
            .http
            .get(self.url(asset_id, "dataset"))
            .bearer_auth(token.expose_secret())
            .query(&[("fields", "id,name")]);
        // In the body, as on every other call: a URL ends up in reqwest's errors and in logs.
        if let Some(proof) = self.appsecret_proof(token) {
            request = request.json(&serde_json::json!({ "appsecret_proof": proof }));
        }
        let value = self.call(request).await?;
        if let Some(list) = value.get("data").and_then(Value::as_array) {
            return match list.first() {
                Some(first) => serde_json::from_value(first.clone())
                    .map(Some)
                    .map_err(|_| unexpected_body(&value)),
                None => Ok(None),
            };
        }
        serde_json::from_value::<Dataset>(value.clone())
            .map(Some)
            .map_err(|_| unexpected_body(&value))
    }

    async fn call(&self, request: reqwest::RequestBuilder) -> Result<Value, GraphCallError> {
        let response = request.send().await.map_err(|e| GraphCallError {
            outcome: transport_failure(&e),
        })?;
        let status = response.status();
        let usage = usage_from(response.headers());
        let bytes = response.bytes().await.map_err(|e| GraphCallError {
            outcome: transport_failure(&e),
        })?;
        if status.is_success()
            && let Ok(value) = serde_json::from_slice::<Value>(&bytes)
        {
            return Ok(value);
        }
        let outcome = match serde_json::from_slice::<ErrorEnvelope>(&bytes) {
            Ok(envelope) => outcome::classify_graph_error(status.as_u16(), usage, envelope.error),
            Err(_) => outcome::classify_events_response(
                if status == StatusCode::OK {
                    502
                } else {
                    status.as_u16()
                },
                usage,
                &bytes,
                0,
            ),
        };
        Err(GraphCallError { outcome })
    }
}

#[derive(Serialize)]
struct EventsRequest<'a, E: Serialize> {
    data: &'a [E],
    #[serde(skip_serializing_if = "Option::is_none")]
    partner_agent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    test_event_code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    appsecret_proof: Option<String>,
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: GraphError,
}

fn usage_from(headers: &HeaderMap) -> Usage {
    Usage::from_headers(
        headers
            .iter()
            .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?))),
    )
}

fn transport_failure(e: &reqwest::Error) -> SendOutcome {
    let kind = if e.is_timeout() {
        RetryKind::Timeout
    } else {
        RetryKind::Network
    };
    // reqwest's Display includes the URL, which never holds the token or the proof.
    SendOutcome::Retryable {
        kind,
        wait_hint: None,
        detail: ErrorDetail {
            http_status: None,
            error: None,
            message: error_chain(e),
        },
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

fn unexpected_body(value: &Value) -> GraphCallError {
    GraphCallError {
        outcome: SendOutcome::Permanent {
            kind: PermanentKind::Other,
            detail: ErrorDetail {
                http_status: None,
                error: None,
                message: format!("unexpected Dataset API answer: {value}"),
            },
        },
    }
}
