//! Service configuration: compiled-in defaults, then an optional TOML file, then `CAPI_RELAY_*`
//! environment variables (nested keys with `__`, e.g. `CAPI_RELAY_DELIVERY__WORKERS`), then
//! command-line flags. Validated once at start-up and shared read-only.

use std::{net::SocketAddr, path::Path, time::Duration};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use relay_core::{ValidationOptions, pii::PhoneRegion};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::delivery::{GraphConfig, graph_client};

/// Everything `capi-relay serve` needs.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct Config {
    /// Address of the HTTP API.
    pub listen: SocketAddr,
    /// `sqlite://PATH` (created on first run) or `postgres://…`.
    pub database_url: String,
    /// Bearer key of the default tenant (`CAPI_RELAY_API_KEY`): a single-business relay needs
    /// no other. Tenants get keys of their own with `capi-relay keys create`.
    #[serde(skip_serializing)]
    pub api_key: Option<SecretString>,
    /// Bearer key of the admin API `/v1/admin` (`CAPI_RELAY_ADMIN_KEY`); unset disables it.
    #[serde(skip_serializing)]
    pub admin_key: Option<SecretString>,
    /// Master key sealing the stored access tokens: base64 of 32 random bytes
    /// (`CAPI_RELAY_MASTER_KEY`). Takes precedence over `master_key_file`.
    #[serde(skip_serializing)]
    pub master_key: Option<SecretString>,
    /// File holding the master key (`CAPI_RELAY_MASTER_KEY_FILE`). When neither is set,
    /// `./capi-relay.key` is used, and created on first run.
    pub master_key_file: Option<std::path::PathBuf>,
    /// Start the bundled Graph simulator and deliver to it instead of Meta.
    pub sandbox: bool,
    /// Graph API base URL.
    pub graph_url: String,
    /// Graph API version.
    pub graph_api_version: String,
    /// Timeout of one Graph API request.
    #[serde(with = "humantime_serde")]
    pub graph_timeout: Duration,
    /// `partner_agent` sent with every request.
    pub partner_agent: Option<String>,
    /// Meta app secret, for `appsecret_proof` (`CAPI_RELAY_META_APP_SECRET`).
    #[serde(skip_serializing)]
    pub meta_app_secret: Option<SecretString>,
    /// Send event names outside Meta's 14 business-messaging names.
    pub allow_custom_event_names: bool,
    /// Region for phone numbers without a country code (e.g. `BR`).
    pub default_phone_region: Option<String>,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Connection timeouts and load limits of the HTTP listener.
    pub http: HttpConfig,
    /// Verify token of Meta's webhook handshake (`CAPI_RELAY_META_VERIFY_TOKEN`); pairs with
    /// `meta_app_secret`. More apps go in `webhooks.apps`.
    #[serde(skip_serializing)]
    pub meta_verify_token: Option<SecretString>,
    pub delivery: DeliveryConfig,
    pub retention: RetentionConfig,
    pub webhooks: WebhooksConfig,
    pub attribution: AttributionConfig,
    pub metrics: MetricsConfig,
    pub crm: CrmConfig,
}

/// Timeouts and caps of the HTTP listener: a slow or greedy client is cut off or shed (503 with
/// `Retry-After`) before it can cost other clients memory or time.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct HttpConfig {
    /// Time allowed for a request's headers, counted from the moment the connection waits for
    /// one: a slow sender of headers, and a keep-alive connection idle this long, are closed.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Time allowed for a whole request body (after that: 408 and the connection closed).
    /// 60 s reads an 8 MiB body at 140 KiB/s.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Open connections at most; more are answered 503 and closed.
    pub max_connections: usize,
    /// Requests handled at once at most (health checks excepted); more are answered 503.
    pub max_requests_in_flight: usize,
    /// Declared bytes of request bodies larger than 64 KiB read and handled at once; a body
    /// that does not fit waits up to `body_budget_wait`, then is answered 503. Parsed JSON
    /// takes several times its size, so this bounds the memory of large batches.
    pub body_budget_bytes: usize,
    /// Requests with bodies larger than 64 KiB handled at once, whatever their size. Parsing
    /// and validating a 1,000-event batch is CPU work: a few at a time keep the cores busy,
    /// more only add memory and make everyone's requests wait for a core. The rest wait up to
    /// `body_budget_wait`, unread.
    pub max_large_bodies: usize,
    /// How long a large body waits for `body_budget_bytes` and `max_large_bodies`.
    #[serde(with = "humantime_serde")]
    pub body_budget_wait: Duration,
    /// Bytes of webhook bodies (read whole before their signature can be checked) in flight
    /// at once; a webhook that does not fit is answered 503 at once (Meta retries it).
    pub unauthenticated_budget_bytes: usize,
    /// Adds `GET /v1/test/panic`, whose handler panics (tests only; not settable from a file
    /// or the environment).
    #[serde(skip)]
    pub test_panic_route: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(60),
            max_connections: 1024,
            max_requests_in_flight: 256,
            body_budget_bytes: 24 * 1024 * 1024,
            max_large_bodies: 8,
            body_budget_wait: Duration::from_secs(10),
            unauthenticated_budget_bytes: 8 * 1024 * 1024,
            test_panic_route: false,
        }
    }
}

/// Who may scrape `/metrics`, and how often a scrape reads the database.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct MetricsConfig {
    /// Serve `/metrics` on this address only (e.g. `127.0.0.1:9090`), not on `listen`.
    pub listen: Option<SocketAddr>,
    /// Bearer key a scrape must send (`CAPI_RELAY_METRICS__KEY`); unset means none.
    #[serde(skip_serializing)]
    pub key: Option<SecretString>,
    /// The queue gauges (depth, oldest event, dead letters) are read from the database at
    /// most this often, however many scrapers there are.
    #[serde(with = "humantime_serde")]
    pub queue_stats_every: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: None,
            key: None,
            queue_stats_every: Duration::from_secs(5),
        }
    }
}

/// CRM integrations (Kommo).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct CrmConfig {
    /// First wait before a Kommo webhook that met a Kommo outage is processed again (doubled
    /// per attempt, up to 10 minutes).
    #[serde(with = "humantime_serde")]
    pub retry_base: Duration,
}

impl Default for CrmConfig {
    fn default() -> Self {
        CrmConfig {
            retry_base: Duration::from_secs(5),
        }
    }
}

/// Meta webhooks received on `/webhooks/meta`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct WebhooksConfig {
    /// Further Meta apps whose webhooks this relay receives; each signature is checked against
    /// every app secret (`meta_app_secret` included).
    #[serde(skip_serializing)]
    pub apps: Vec<MetaApp>,
    /// Largest accepted webhook body, in bytes (larger: 413).
    pub max_body_bytes: usize,
    /// Relay every verified webhook, body and signature unchanged, to this URL (with retries
    /// on `delivery.retry_schedule`).
    pub forward_url: Option<String>,
    /// Timeout of one forward request.
    #[serde(with = "humantime_serde")]
    pub forward_timeout: Duration,
    /// Waits before each new try of a delivery whose processing met a database error; the
    /// number of entries is the number of retries, then the delivery is `failed` with the reason.
    #[serde(with = "duration_list")]
    pub retry_schedule: Vec<Duration>,
    /// How long a raw body (customers' numbers, names, messages) is kept once processed and
    /// forwarded, for debugging. 0: removed at once.
    #[serde(with = "humantime_serde")]
    pub raw_body_retention: Duration,
    /// How long a failed delivery's raw body is kept, so that `capture reprocess` can
    /// process it again.
    #[serde(with = "humantime_serde")]
    pub failed_body_retention: Duration,
}

/// One Meta app: its secret signs the webhooks, its verify token answers the handshake.
#[derive(Debug, Clone, Deserialize)]
pub struct MetaApp {
    pub app_secret: SecretString,
    pub verify_token: Option<SecretString>,
}

/// The attribution store filled from webhooks.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct AttributionConfig {
    /// Contacts, touches and processed webhooks older than this are deleted.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// A conversion by contact uses the latest ad touch at most this old at the event's time.
    /// 7 days: Meta's default click-through attribution window.
    #[serde(with = "humantime_serde")]
    pub max_touch_age: Duration,
}

/// Outbox workers and retries.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct DeliveryConfig {
    /// 0 makes an ingest-only instance (other instances on the same PostgreSQL database
    /// deliver); any other value runs delivery in this process. How much is sent at once is
    /// `max_in_flight` and `per_dataset_in_flight`.
    pub workers: usize,
    /// Requests to Meta in flight at once in this process, across all datasets. With Meta
    /// answering in ~300 ms, 500 busy datasets need ~150 in flight to be served every second.
    pub max_in_flight: usize,
    /// Events claimed and not yet resolved in this process: bounds memory when many datasets
    /// have deep backlogs at once.
    pub max_events_in_flight: usize,
    /// Requests in flight at once for one dataset (Meta throttles per dataset); more than one
    /// only while its backlog fills whole claims.
    pub per_dataset_in_flight: usize,
    /// How long a dataset's first due event waits for others to join its request.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Most events one claim takes from a dataset (then cut by the batch limits).
    pub claim_limit: i64,
    /// Most events in one request to Meta (Meta's maximum is 1,000).
    pub batch_max_events: usize,
    /// Most bytes of event JSON in one request.
    pub batch_max_bytes: usize,
    /// How long a claim holds its events; renewed every `lease / 5` while they are in flight.
    /// A crashed relay's events are sent again after at most this long. Four fifths of it must
    /// exceed `graph_timeout` + 1 s: a request only starts while its lease outlasts the request.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Wait before each retry; the number of entries is the number of retries.
    #[serde(with = "duration_list")]
    pub retry_schedule: Vec<Duration>,
    /// Random spread of each retry wait, as a fraction (0.2 = ±20%).
    pub retry_jitter: f64,
    /// Dataset pause when Meta throttles without saying for how long.
    #[serde(with = "humantime_serde")]
    pub throttle_pause: Duration,
    /// Events this close to Meta's 7-day limit are dead-lettered instead of sent.
    #[serde(with = "humantime_serde")]
    pub too_old_margin: Duration,
    /// Shortest and longest sleep of an idle scheduler.
    #[serde(with = "humantime_serde")]
    pub idle_poll_min: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_poll_max: Duration,
}

/// How long finished events are kept (the deduplication window).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RetentionConfig {
    /// Delivered and dead events older than this are purged. At least 8 days.
    #[serde(with = "humantime_serde")]
    pub finished_events: Duration,
    #[serde(with = "humantime_serde")]
    pub purge_interval: Duration,
    /// Events refused at ingest are kept this long for the dashboard's log (PII hashed).
    #[serde(with = "humantime_serde")]
    pub refused_events: Duration,
    /// The dashboard's counts per 5-minute bucket are kept this long (twice its longest window,
    /// so the change from the previous 30 days can be shown).
    #[serde(with = "humantime_serde")]
    pub stats: Duration,
}

/// Meta's 7-day limit plus a day: a retried submission is still recognised as a duplicate.
pub const MIN_DEDUP_WINDOW: Duration = Duration::from_secs(8 * 24 * 3600);

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: "sqlite://capi-relay.db".into(),
            api_key: None,
            admin_key: None,
            master_key: None,
            master_key_file: None,
            sandbox: false,
            graph_url: graph_client::DEFAULT_GRAPH_URL.into(),
            graph_api_version: graph_client::DEFAULT_API_VERSION.into(),
            graph_timeout: graph_client::DEFAULT_REQUEST_TIMEOUT,
            partner_agent: None,
            meta_app_secret: None,
            allow_custom_event_names: false,
            default_phone_region: None,
            max_body_bytes: 8 * 1024 * 1024,
            http: HttpConfig::default(),
            meta_verify_token: None,
            delivery: DeliveryConfig::default(),
            retention: RetentionConfig::default(),
            webhooks: WebhooksConfig::default(),
            attribution: AttributionConfig::default(),
            metrics: MetricsConfig::default(),
            crm: CrmConfig::default(),
        }
    }
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            apps: Vec::new(),
            // Meta batches up to 1,000 updates in one delivery.
            max_body_bytes: 4 * 1024 * 1024,
            forward_url: None,
            forward_timeout: Duration::from_secs(10),
            retry_schedule: [1, 10, 60, 600, 3600].map(Duration::from_secs).to_vec(),
            raw_body_retention: Duration::ZERO,
            failed_body_retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl Default for AttributionConfig {
    fn default() -> Self {
        let days = |d: u64| Duration::from_secs(d * 24 * 3600);
        AttributionConfig {
            retention: days(90),
            max_touch_age: days(7),
        }
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        let minutes = |m: u64| Duration::from_secs(60 * m);
        DeliveryConfig {
            workers: 1,
            max_in_flight: 256,
            max_events_in_flight: 32_000,
            per_dataset_in_flight: 4,
            linger: Duration::from_millis(200),
            claim_limit: relay_core::MAX_EVENTS_PER_REQUEST as i64,
            batch_max_events: relay_core::MAX_EVENTS_PER_REQUEST,
            batch_max_bytes: 4 * 1024 * 1024,
            lease: Duration::from_secs(10),
            retry_schedule: vec![
                Duration::from_secs(5),
                Duration::from_secs(30),
                minutes(2),
                minutes(10),
                minutes(30),
                minutes(60),
                minutes(180),
                minutes(360),
                minutes(720),
                minutes(720),
            ],
            retry_jitter: 0.2,
            throttle_pause: minutes(1),
            too_old_margin: minutes(30),
            idle_poll_min: Duration::from_millis(20),
            idle_poll_max: Duration::from_secs(1),
        }
    }
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            finished_events: MIN_DEDUP_WINDOW,
            purge_interval: Duration::from_secs(3600),
            refused_events: Duration::from_secs(7 * 24 * 3600),
            stats: Duration::from_secs(62 * 24 * 3600),
        }
    }
}

impl Config {
    /// Layers defaults, the optional file, the environment and `overrides` (CLI flags).
    pub fn load(file: Option<&Path>, overrides: impl Serialize) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file(path));
        }
        let config: Config = figment
            .merge(Env::prefixed("CAPI_RELAY_").split("__"))
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(|e| ConfigError(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let d = &self.delivery;
        let fail = |m: String| Err(ConfigError(m));
        if !(1..=relay_core::MAX_EVENTS_PER_REQUEST).contains(&d.batch_max_events) {
            return fail(
                "delivery.batch_max_events must be between 1 and 1000 (Meta's limit)".into(),
            );
        }
        if d.max_in_flight == 0 || d.per_dataset_in_flight == 0 || d.claim_limit < 1 {
            return fail(
                "delivery.max_in_flight, delivery.per_dataset_in_flight and delivery.claim_limit must be at least 1"
                    .into(),
            );
        }
        if d.max_events_in_flight < d.claim_limit as usize {
            return fail(
                "delivery.max_events_in_flight must be at least delivery.claim_limit".into(),
            );
        }
        // A request starts only while its lease outlasts the request and a margin; renewals
        // come every lease / 5, so four fifths of the lease must exceed both.
        if d.lease * 4 / 5 <= self.graph_timeout + crate::delivery::lease::LEASE_MARGIN {
            return fail(format!(
                "delivery.lease ({}) is too short for graph_timeout ({}): four fifths of the lease must exceed graph_timeout plus 1 s, since a request to Meta only starts while its lease outlasts it",
                humantime_serde::re::humantime::format_duration(d.lease),
                humantime_serde::re::humantime::format_duration(self.graph_timeout)
            ));
        }
        if !(0.0..=1.0).contains(&d.retry_jitter) {
            return fail("delivery.retry_jitter must be between 0 and 1".into());
        }
        if d.idle_poll_min > d.idle_poll_max {
            return fail("delivery.idle_poll_min must not exceed delivery.idle_poll_max".into());
        }
        if self.retention.finished_events < MIN_DEDUP_WINDOW {
            return fail(format!(
                "retention.finished_events must be at least 8 days (the deduplication window); got {}",
                humantime_serde::re::humantime::format_duration(self.retention.finished_events)
            ));
        }
        if self.attribution.max_touch_age > self.attribution.retention {
            return fail(
                "attribution.max_touch_age must not exceed attribution.retention (older touches are deleted)"
                    .into(),
            );
        }
        if let Some(url) = &self.webhooks.forward_url
            && reqwest::Url::parse(url).is_err()
        {
            return fail(format!(
                "webhooks.forward_url {:?} is not a URL",
                relay_store::redact_url(url)
            ));
        }
        let h = &self.http;
        if h.header_read_timeout.is_zero() || h.body_read_timeout.is_zero() {
            return fail(
                "http.header_read_timeout and http.body_read_timeout must be above 0".into(),
            );
        }
        if h.max_connections == 0 || h.max_requests_in_flight == 0 || h.max_large_bodies == 0 {
            return fail(
                "http.max_connections, http.max_requests_in_flight and http.max_large_bodies must be at least 1".into(),
            );
        }
        // A body of the largest accepted size must fit in its budget, or it could never be read.
        if h.body_budget_bytes < self.max_body_bytes {
            return fail("http.body_budget_bytes must be at least max_body_bytes".into());
        }
        if h.unauthenticated_budget_bytes < self.webhooks.max_body_bytes {
            return fail(
                "http.unauthenticated_budget_bytes must be at least webhooks.max_body_bytes".into(),
            );
        }
        self.validation_options()?;
        Ok(())
    }

    /// Every configured Meta app: `meta_app_secret` with `meta_verify_token`, then
    /// `webhooks.apps`.
    pub fn meta_apps(&self) -> Vec<MetaApp> {
        let mut apps = Vec::new();
        if let Some(secret) = &self.meta_app_secret {
            apps.push(MetaApp {
                app_secret: secret.clone(),
                verify_token: self.meta_verify_token.clone(),
            });
        }
        apps.extend(self.webhooks.apps.iter().cloned());
        apps
    }

    pub fn validation_options(&self) -> Result<ValidationOptions, ConfigError> {
        let default_phone_region = match &self.default_phone_region {
            None => None,
            Some(r) => Some(
                r.parse::<PhoneRegion>()
                    .map_err(|e| ConfigError(format!("default_phone_region: {e}")))?,
            ),
        };
        Ok(ValidationOptions {
            allow_custom_event_names: self.allow_custom_event_names,
            default_phone_region,
            ..ValidationOptions::default()
        })
    }

    pub fn graph_config(&self) -> GraphConfig {
        GraphConfig {
            base_url: self.graph_url.clone(),
            api_version: self.graph_api_version.clone(),
            request_timeout: self.graph_timeout,
            app_secret: self.meta_app_secret.clone(),
            partner_agent: self.partner_agent.clone(),
            ..GraphConfig::default()
        }
    }
}

/// A configuration problem, said in one sentence.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

/// A list of humantime durations (`["5s", "30s", "2m"]`).
mod duration_list {
    use std::time::Duration;

    use humantime_serde::re::humantime;
    use serde::{Deserialize, Deserializer, Serializer, de::Error, ser::SerializeSeq};

    pub fn serialize<S: Serializer>(list: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(list.len()))?;
        for d in list {
            seq.serialize_element(&humantime::format_duration(*d).to_string())?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Items {
            List(Vec<String>),
            Text(String),
        }
        // Environment variables give one string: "5s,30s,2m".
        let items = match Items::deserialize(d)? {
            Items::List(items) => items,
            Items::Text(text) => text.split(',').map(|s| s.trim().to_owned()).collect(),
        };
        items
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| {
                humantime::parse_duration(s).map_err(|e| D::Error::custom(format!("{s:?}: {e}")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn the_readme_example_configuration_loads() {
        let readme = include_str!("../../../README.md");
        let start = readme.find("```toml\n").expect("README has a TOML example") + 8;
        let toml = &readme[start..start + readme[start..].find("```").unwrap()];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(&path, toml).unwrap();
        let config = Config::load(Some(&path), serde_json::json!({})).unwrap();
        assert_eq!(config.delivery.retry_schedule.len(), 10);
        assert_eq!(config.retention.finished_events, MIN_DEDUP_WINDOW);
        assert_eq!(config.default_phone_region.as_deref(), Some("BR"));
        let defaults = HttpConfig::default();
        assert_eq!(
            config.http.header_read_timeout,
            defaults.header_read_timeout
        );
        assert_eq!(config.http.body_budget_bytes, defaults.body_budget_bytes);
        assert_eq!(
            config.http.unauthenticated_budget_bytes,
            defaults.unauthenticated_budget_bytes
        );
    }

    #[test]
    fn a_body_budget_smaller_than_the_largest_body_is_refused() {
        let mut config = Config::default();
        assert!(config.validate().is_ok());
        config.http.body_budget_bytes = config.max_body_bytes - 1;
        assert!(config.validate().is_err());
        let mut config = Config::default();
        config.http.unauthenticated_budget_bytes = config.webhooks.max_body_bytes - 1;
        assert!(config.validate().is_err());
        let mut config = Config::default();
        config.http.header_read_timeout = Duration::ZERO;
        assert!(config.validate().is_err());
    }

    #[test]
    fn several_meta_apps_and_the_capture_settings_load_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.toml");
        std::fs::write(
            &path,
            "meta_app_secret = \"first\"\nmeta_verify_token = \"token-1\"\n\
             [webhooks]\nforward_url = \"https://inbox.example.com/hook\"\n\
             [[webhooks.apps]]\napp_secret = \"second\"\nverify_token = \"token-2\"\n\
             [attribution]\nretention = \"30days\"\nmax_touch_age = \"1day\"\n",
        )
        .unwrap();
        let config = Config::load(Some(&path), serde_json::json!({})).unwrap();
        let apps = config.meta_apps();
        assert_eq!(apps.len(), 2);
        assert_eq!(
            apps[1].verify_token.as_ref().unwrap().expose_secret(),
            "token-2"
        );
        assert_eq!(
            config.attribution.max_touch_age,
            Duration::from_secs(86_400)
        );
        // Secrets never show in Debug output.
        assert!(!format!("{config:?}").contains("second"));

        let mut bad = config.clone();
        bad.attribution.max_touch_age = Duration::from_secs(40 * 86_400);
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("max_touch_age")
        );
        bad = config;
        bad.webhooks.forward_url = Some("not a url".into());
        assert!(bad.validate().is_err());
    }

    #[test]
    fn a_dedup_window_shorter_than_8_days_is_refused() {
        let mut config = Config::default();
        config.retention.finished_events = Duration::from_secs(86_400);
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("at least 8 days")
        );
        let mut config = Config::default();
        config.delivery.batch_max_events = 1_001;
        assert!(config.validate().is_err());
    }
}
