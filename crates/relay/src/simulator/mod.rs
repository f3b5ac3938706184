//! A Graph API simulator: the Conversions API `/{dataset_id}/events` endpoint and the Dataset
//! API, answering in Meta's success and error shapes, with fault injection.
//!
//! Tests, benchmarks and `serve --sandbox` point the relay at it instead of graph.facebook.com.
//! Inspection lives under `/__sim/`: accepted events, stats, faults, tokens, datasets, reset.

pub mod rules;

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use hmac::{Hmac, Mac};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json, value::RawValue};
use sha2::Sha256;
use tokio::net::TcpListener;

use self::rules::MetaError;

/// Largest request body the simulator reads (Meta documents no limit; 1,000 events fit easily).
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Accepted events kept for `/__sim/events`, so long benchmarks do not grow without bound.
const DEFAULT_MAX_STORED_EVENTS: usize = 250_000;

/// Injected faults. Rates are probabilities per events request, checked in this order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// HTTP 503 with a non-Graph body.
    pub server_error_rate: f64,
    /// No answer until the client gives up; nothing is recorded.
    pub timeout_rate: f64,
    /// Graph code 2, `is_transient: true`.
    pub transient_rate: f64,
    /// Graph throttling codes 4, 17 or 613 with usage headers at 100%.
    pub throttle_rate: f64,
    /// `estimated_time_to_regain_access` sent with throttling, in minutes.
    pub throttle_regain_minutes: u64,
    /// Added to every events request, in milliseconds.
    pub latency_ms: u64,
    /// A random extra latency between 0 and this, in milliseconds (Meta answers in 100–600 ms).
    pub latency_jitter_ms: u64,
    /// Datasets whose every events request is throttled (code 80004, with a usage header), as
    /// Meta throttles one busy dataset and not the others.
    pub throttle_datasets: Vec<String>,
    /// How long a "timeout" holds the request, in milliseconds.
    pub timeout_hold_ms: u64,
    /// Refuse, with code 100, any request holding an event whose JSON contains this text: a
    /// stand-in for whatever Meta refuses that no local check can foresee (a "poison" event).
    pub reject_events_containing: Option<String>,
}

/// How the simulator starts.
#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    /// Tokens accepted; empty means any non-empty token is accepted.
    pub access_tokens: Vec<String>,
    /// Datasets that exist from the start (others are created through the Dataset API).
    pub datasets: Vec<String>,
    /// When set, requests must carry a valid `appsecret_proof` for this app secret.
    pub app_secret: Option<String>,
    /// Assets whose Dataset API calls fail with a permission error (code 200).
    pub denied_assets: Vec<String>,
    pub faults: Faults,
    /// Seed of the fault dice, for repeatable runs.
    pub seed: Option<u64>,
    pub max_stored_events: usize,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            access_tokens: Vec::new(),
            datasets: Vec::new(),
            app_secret: None,
            denied_assets: Vec::new(),
            faults: Faults::default(),
            seed: None,
            max_stored_events: DEFAULT_MAX_STORED_EVENTS,
        }
    }
}

/// One accepted event, as `/__sim/events` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct AcceptedEvent {
    pub dataset_id: String,
    pub received_at: i64,
    /// Unix milliseconds, for latency measurements.
    pub received_at_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_event_code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partner_agent: Option<String>,
    pub event: Value,
}

/// An accepted event as kept: its JSON as it came, parsed only when listed.
struct StoredEvent {
    dataset_id: Arc<str>,
    received_at_ms: i64,
    test_event_code: Option<String>,
    partner_agent: Option<String>,
    event: Box<RawValue>,
}

impl StoredEvent {
    fn listed(&self) -> AcceptedEvent {
        AcceptedEvent {
            dataset_id: self.dataset_id.to_string(),
            received_at: self.received_at_ms / 1000,
            received_at_ms: self.received_at_ms,
            test_event_code: self.test_event_code.clone(),
            partner_agent: self.partner_agent.clone(),
            // It parsed when it was accepted (see `rules::parse_request`); were that ever
            // untrue, the text itself is listed rather than a silent null.
            event: serde_json::from_str(self.event.get())
                .unwrap_or_else(|_| Value::String(self.event.get().to_owned())),
        }
    }
}

#[derive(Default)]
struct Data {
    tokens: HashSet<String>,
    datasets: HashSet<String>,
    /// asset id → its dataset.
    asset_datasets: HashMap<String, String>,
    denied_assets: HashSet<String>,
    accepted: Vec<StoredEvent>,
    /// The `event_id`s each dataset accepted, to count duplicates.
    seen: HashMap<String, foldhash::HashSet<String>>,
    faults: Faults,
    rng: Option<StdRng>,
}

#[derive(Default, Serialize)]
struct Stats {
    requests: AtomicU64,
    events_accepted: AtomicU64,
    rejected_requests: AtomicU64,
    injected_faults: AtomicU64,
    /// Events requests being answered now, and the most at once since the last reset.
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    /// Accepted events whose `event_id` this dataset had already accepted: what Meta would
    /// count twice, since it does not deduplicate business-messaging events.
    duplicate_events: AtomicU64,
}

/// Counts an events request in flight while it lives.
struct InFlight<'a>(&'a Stats);

impl<'a> InFlight<'a> {
    fn start(stats: &'a Stats) -> Self {
        let now = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        stats.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(stats)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Shared simulator state.
#[derive(Clone)]
pub struct Simulator {
    data: Arc<Mutex<Data>>,
    stats: Arc<Stats>,
    app_secret: Option<Arc<str>>,
    max_stored_events: usize,
    next_dataset: Arc<AtomicU64>,
}

impl Simulator {
    pub fn new(config: SimulatorConfig) -> Self {
        let data = Data {
            tokens: config.access_tokens.into_iter().collect(),
            datasets: config.datasets.into_iter().collect(),
            denied_assets: config.denied_assets.into_iter().collect(),
            faults: config.faults,
            rng: config.seed.map(StdRng::seed_from_u64),
            ..Data::default()
        };
        Simulator {
            data: Arc::new(Mutex::new(data)),
            stats: Arc::new(Stats::default()),
            app_secret: config.app_secret.map(Arc::from),
            max_stored_events: config.max_stored_events,
            next_dataset: Arc::new(AtomicU64::new(880_000_000_000_001)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Data> {
        // A panic while holding the lock cannot leave Data half-updated in a way that matters
        // for a simulator, so a poisoned lock is still usable.
        self.data.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a dataset that exists from now on.
    pub fn add_dataset(&self, id: &str) {
        self.lock().datasets.insert(id.to_owned());
    }

    /// Events accepted so far, optionally for one dataset.
    pub fn accepted(&self, dataset_id: Option<&str>) -> Vec<AcceptedEvent> {
        self.accepted_page(dataset_id, usize::MAX).1
    }

    /// How many events were accepted (optionally for one dataset), and the first `limit`; only
    /// those are parsed.
    pub fn accepted_page(
        &self,
        dataset_id: Option<&str>,
        limit: usize,
    ) -> (usize, Vec<AcceptedEvent>) {
        let data = self.lock();
        let of_dataset = |e: &&StoredEvent| dataset_id.is_none_or(|d| &*e.dataset_id == d);
        let total = data.accepted.iter().filter(of_dataset).count();
        let page = data
            .accepted
            .iter()
            .filter(of_dataset)
            .take(limit)
            .map(StoredEvent::listed)
            .collect();
        (total, page)
    }

    /// Events acknowledged since the start or the last reset (stored or not).
    pub fn stats_events_accepted(&self) -> u64 {
        self.stats.events_accepted.load(Ordering::Relaxed)
    }

    /// The most events requests answered at once since the last reset.
    pub fn stats_max_in_flight(&self) -> u64 {
        self.stats.max_in_flight.load(Ordering::SeqCst)
    }

    /// Accepted events that repeated an `event_id` already accepted for their dataset.
    pub fn stats_duplicate_events(&self) -> u64 {
        self.stats.duplicate_events.load(Ordering::SeqCst)
    }

    pub fn stats_requests(&self) -> u64 {
        self.stats.requests.load(Ordering::Relaxed)
    }

    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// Makes the Dataset API refuse `asset_id` with a permission error (code 200).
    pub fn deny_asset(&self, asset_id: &str) {
        self.lock().denied_assets.insert(asset_id.to_owned());
    }

    /// The dataset the Dataset API gave `asset_id`, if any.
    pub fn dataset_of(&self, asset_id: &str) -> Option<String> {
        self.lock().asset_datasets.get(asset_id).cloned()
    }

    /// Replaces the accepted tokens; empty accepts any.
    pub fn set_tokens(&self, tokens: Vec<String>) {
        self.lock().tokens = tokens.into_iter().collect();
    }

    /// Forgets accepted events and statistics (datasets, tokens and faults stay).
    pub fn reset(&self) {
        {
            let mut data = self.lock();
            data.accepted.clear();
            data.seen.clear();
        }
        for counter in [
            &self.stats.requests,
            &self.stats.events_accepted,
            &self.stats.rejected_requests,
            &self.stats.injected_faults,
            &self.stats.max_in_flight,
            &self.stats.duplicate_events,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
    }

    /// The HTTP routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/{version}/{object_id}/events", post(post_events))
            .route(
                "/{version}/{object_id}/dataset",
                post(post_dataset).get(get_dataset),
            )
            .route("/__sim/events", get(list_events))
            .route("/__sim/stats", get(stats))
            .route("/__sim/reset", post(reset))
            .route("/__sim/faults", get(get_faults).put(put_faults))
            .route("/__sim/tokens", axum::routing::put(put_tokens))
            .route("/__sim/datasets", post(post_sim_dataset))
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(self.clone())
    }

    /// Serves until `shutdown` completes.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }

    /// Binds `addr`, serves in the background, and returns the bound address.
    pub async fn spawn(self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        tokio::spawn(async move {
            if let Err(e) = self.serve(listener, std::future::pending()).await {
                tracing::error!(error = %e, "graph simulator stopped");
            }
        });
        Ok(bound)
    }

    fn roll(&self) -> f64 {
        let mut data = self.lock();
        match data.rng.as_mut() {
            Some(rng) => rng.random(),
            None => rand::rng().random(),
        }
    }
}

fn fbtrace_id() -> String {
    let mut rng = rand::rng();
    (0..11)
        .map(|_| {
            let i = rng.random_range(0..62);
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"[i] as char
        })
        .collect()
}

fn error_response(error: &MetaError) -> Response {
    let status = StatusCode::from_u16(error.http_status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut response = (status, Json(error.body(&fbtrace_id()))).into_response();
    response.headers_mut().insert(
        "www-authenticate",
        HeaderValue::from_static("OAuth \"Facebook Platform\" \"invalid_request\""),
    );
    response
}

/// The token from `Authorization: Bearer`, the query or the body, as Graph accepts all three.
fn request_token(
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    body: Option<&Value>,
) -> Option<String> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("OAuth "))
        })
        .map(str::to_owned)
        .or_else(|| query.get("access_token").cloned())
        .or_else(|| {
            body.and_then(|b| b.get("access_token"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .filter(|t| !t.is_empty())
}

/// Checks the token and `appsecret_proof` the way Graph does.
fn authenticate(
    sim: &Simulator,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    body: Option<&Value>,
) -> Result<(), MetaError> {
    let Some(token) = request_token(headers, query, body) else {
        return Err(MetaError::new(
            400,
            104,
            "An access token is required to request this resource.",
        ));
    };
    {
        let data = sim.lock();
        if !data.tokens.is_empty() && !data.tokens.contains(&token) {
            return Err(MetaError::new(
                400,
                190,
                "Invalid OAuth access token - Cannot parse access token",
            ));
        }
    }
    if let Some(secret) = &sim.app_secret {
        let proof = query.get("appsecret_proof").cloned().or_else(|| {
            body.and_then(|b| b.get("appsecret_proof"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
        mac.update(token.as_bytes());
        let expected = hex::encode(mac.finalize().into_bytes());
        match proof {
            Some(p) if p == expected => {}
            Some(_) => {
                return Err(MetaError::new(
                    400,
                    100,
                    "Invalid appsecret_proof provided in the API argument",
                )
                .with_type("GraphMethodException"));
            }
            None => {
                return Err(MetaError::new(
                    400,
                    100,
                    "API calls from the server require an appsecret_proof argument",
                )
                .with_type("GraphMethodException"));
            }
        }
    }
    Ok(())
}

fn check_version(version: &str) -> Result<(), MetaError> {
    let valid = version
        .strip_prefix('v')
        .and_then(|v| v.split_once('.'))
        .is_some_and(|(major, minor)| {
            !major.is_empty()
                && major.bytes().all(|b| b.is_ascii_digit())
                && minor.bytes().all(|b| b.is_ascii_digit())
        });
    if valid {
        Ok(())
    } else {
        Err(MetaError::new(
            400,
            2500,
            format!("Unknown path components: /{version}"),
        ))
    }
}

fn unknown_object(object_id: &str) -> MetaError {
    MetaError::new(
        400,
        100,
        format!(
            "Unsupported post request. Object with ID '{object_id}' does not exist, cannot be \
             loaded due to missing permissions, or does not support this operation. Please read \
             the Graph API documentation at https://developers.facebook.com/docs/graph-api"
        ),
    )
    .with_subcode(33)
    .with_type("GraphMethodException")
}

/// An injected fault, if the dice say so.
async fn injected_fault(sim: &Simulator, dataset_id: &str) -> Option<Response> {
    let faults = sim.lock().faults.clone();
    let jitter = if faults.latency_jitter_ms > 0 {
        (sim.roll() * faults.latency_jitter_ms as f64) as u64
    } else {
        0
    };
    if faults.latency_ms + jitter > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms + jitter)).await;
    }
    if faults.throttle_datasets.iter().any(|d| d == dataset_id) {
        sim.stats.injected_faults.fetch_add(1, Ordering::Relaxed);
        return Some(throttled(
            80004,
            "(#80004) There have been too many calls to this dataset.",
            faults.throttle_regain_minutes,
        ));
    }
    let roll = sim.roll();
    let mut threshold = faults.server_error_rate;
    let fault = if roll < threshold {
        Some((StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable").into_response())
    } else if roll < {
        threshold += faults.timeout_rate;
        threshold
    } {
        let hold = if faults.timeout_hold_ms > 0 {
            faults.timeout_hold_ms
        } else {
            120_000
        };
        tokio::time::sleep(Duration::from_millis(hold)).await;
        Some((StatusCode::GATEWAY_TIMEOUT, "Gateway Timeout").into_response())
    } else if roll < {
        threshold += faults.transient_rate;
        threshold
    } {
        Some(error_response(
            &MetaError::new(
                500,
                2,
                "An unexpected error has occurred. Please retry your request later.",
            )
            .transient(),
        ))
    } else if roll < {
        threshold += faults.throttle_rate;
        threshold
    } {
        let (code, message) = match (roll * 1000.0) as u64 % 3 {
            0 => (4, "(#4) Application request limit reached"),
            1 => (17, "(#17) User request limit reached"),
            _ => (
                613,
                "(#613) Calls to this api have exceeded the rate limit.",
            ),
        };
        Some(throttled(code, message, faults.throttle_regain_minutes))
    } else {
        None
    };
    if fault.is_some() {
        sim.stats.injected_faults.fetch_add(1, Ordering::Relaxed);
    }
    fault
}

/// A throttling answer with Meta's usage headers at 100%.
fn throttled(code: i64, message: &str, regain_minutes: u64) -> Response {
    let mut response = error_response(&MetaError::new(400, code, message).transient());
    let usage = json!({"call_count": 100, "total_cputime": 100, "total_time": 100}).to_string();
    let buc = json!({"0": [{"type": "ads_management", "call_count": 100, "total_cputime": 100,
        "total_time": 100, "estimated_time_to_regain_access": regain_minutes}]})
    .to_string();
    let headers = response.headers_mut();
    headers.insert(
        "x-app-usage",
        HeaderValue::from_str(&usage).expect("ascii json"),
    );
    headers.insert(
        "x-business-use-case-usage",
        HeaderValue::from_str(&buc).expect("ascii json"),
    );
    response
}

async fn post_events(
    State(sim): State<Simulator>,
    Path((version, dataset_id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    sim.stats.requests.fetch_add(1, Ordering::Relaxed);
    let _in_flight = InFlight::start(&sim.stats);
    let result = handle_events(&sim, &version, &dataset_id, &query, &headers, &body).await;
    match result {
        Ok(response) => response,
        Err(error) => {
            sim.stats.rejected_requests.fetch_add(1, Ordering::Relaxed);
            error_response(&error)
        }
    }
}

async fn handle_events(
    sim: &Simulator,
    version: &str,
    dataset_id: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, MetaError> {
    check_version(version)?;
    let request = rules::parse_request(body).map_err(|e| {
        MetaError::new(
            400,
            100,
            format!("(#100) The request body is not valid JSON: {e}"),
        )
    })?;
    authenticate(sim, headers, query, Some(&request.fields))?;
    if !sim.lock().datasets.contains(dataset_id) {
        return Err(unknown_object(dataset_id));
    }
    if let Some(fault) = injected_fault(sim, dataset_id).await {
        return Ok(fault);
    }
    let now_ms = chrono::Utc::now().timestamp_millis();
    let now = now_ms / 1000;
    let events = rules::check_events_request(&request, now)?;
    let poison = sim.lock().faults.reject_events_containing.clone();
    if let Some(marker) = poison.filter(|m| !m.is_empty())
        && events.iter().any(|e| e.raw.get().contains(&marker))
    {
        return Err(MetaError::new(400, 100, "Invalid parameter").with_user(
            "Invalid event",
            format!("An event in this request was refused (it contains {marker:?})."),
        ));
    }
    let count = events.len();
    let text = |key: &str| {
        request
            .fields
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let (test_event_code, partner_agent) = (text("test_event_code"), text("partner_agent"));
    {
        let mut data = sim.lock();
        let seen = data.seen.entry(dataset_id.to_owned()).or_default();
        let repeated = events
            .iter()
            .filter_map(|e| e.event_id.as_deref())
            .filter(|id| !seen.insert((*id).to_owned()))
            .count();
        sim.stats
            .duplicate_events
            .fetch_add(repeated as u64, Ordering::SeqCst);
        let room = sim.max_stored_events.saturating_sub(data.accepted.len());
        let dataset: Arc<str> = Arc::from(dataset_id);
        data.accepted
            .extend(events.iter().take(room).map(|event| StoredEvent {
                dataset_id: dataset.clone(),
                received_at_ms: now_ms,
                test_event_code: test_event_code.clone(),
                partner_agent: partner_agent.clone(),
                event: event.raw.to_owned(),
            }));
    }
    sim.stats
        .events_accepted
        .fetch_add(count as u64, Ordering::Relaxed);
    Ok(
        Json(json!({"events_received": count, "messages": [], "fbtrace_id": fbtrace_id()}))
            .into_response(),
    )
}

async fn post_dataset(
    State(sim): State<Simulator>,
    Path((version, asset_id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Option<Value> = serde_json::from_slice(&body).ok();
    let result = check_version(&version)
        .and_then(|()| authenticate(&sim, &headers, &query, body.as_ref()))
        .and_then(|()| dataset_asset_allowed(&sim, &asset_id))
        .map(|()| {
            let mut data = sim.lock();
            let id = match data.asset_datasets.get(&asset_id) {
                Some(id) => id.clone(),
                None => {
                    let id = sim.next_dataset.fetch_add(1, Ordering::Relaxed).to_string();
                    data.asset_datasets.insert(asset_id.clone(), id.clone());
                    data.datasets.insert(id.clone());
                    id
                }
            };
            Json(json!({ "id": id })).into_response()
        });
    result.unwrap_or_else(|e| error_response(&e))
}

async fn get_dataset(
    State(sim): State<Simulator>,
    Path((version, asset_id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // Graph reads parameters from the body too: the relay sends `appsecret_proof` there, so it
    // never sits in a URL.
    let body: Option<Value> = serde_json::from_slice(&body).ok();
    let result = check_version(&version)
        .and_then(|()| authenticate(&sim, &headers, &query, body.as_ref()))
        .and_then(|()| dataset_asset_allowed(&sim, &asset_id))
        .map(|()| {
            let data = sim.lock();
            let list: Vec<Value> = data
                .asset_datasets
                .get(&asset_id)
                .map(|id| json!({"id": id, "name": format!("Dataset for {asset_id}")}))
                .into_iter()
                .collect();
            Json(json!({ "data": list })).into_response()
        });
    result.unwrap_or_else(|e| error_response(&e))
}

fn dataset_asset_allowed(sim: &Simulator, asset_id: &str) -> Result<(), MetaError> {
    if !asset_id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(unknown_object(asset_id));
    }
    if sim.lock().denied_assets.contains(asset_id) {
        return Err(MetaError::new(
            403,
            200,
            "(#200) Requires whatsapp_business_manage_events, page_events or instagram_manage_events permission to manage the object",
        ));
    }
    Ok(())
}

#[derive(Deserialize)]
struct EventsQuery {
    dataset_id: Option<String>,
    limit: Option<usize>,
}

async fn list_events(State(sim): State<Simulator>, Query(q): Query<EventsQuery>) -> Json<Value> {
    let (total, events) = sim.accepted_page(q.dataset_id.as_deref(), q.limit.unwrap_or(usize::MAX));
    Json(json!({ "count": total, "data": events }))
}

async fn stats(State(sim): State<Simulator>) -> Json<Value> {
    let s = &sim.stats;
    Json(json!({
        "requests": s.requests.load(Ordering::Relaxed),
        "events_accepted": s.events_accepted.load(Ordering::Relaxed),
        "rejected_requests": s.rejected_requests.load(Ordering::Relaxed),
        "injected_faults": s.injected_faults.load(Ordering::Relaxed),
        "requests_in_flight": s.in_flight.load(Ordering::SeqCst),
        "max_requests_in_flight": s.max_in_flight.load(Ordering::SeqCst),
        "duplicate_events": s.duplicate_events.load(Ordering::SeqCst),
    }))
}

async fn reset(State(sim): State<Simulator>) -> StatusCode {
    sim.reset();
    StatusCode::NO_CONTENT
}

async fn get_faults(State(sim): State<Simulator>) -> Json<Faults> {
    Json(sim.lock().faults.clone())
}

async fn put_faults(State(sim): State<Simulator>, Json(faults): Json<Faults>) -> Json<Faults> {
    sim.set_faults(faults.clone());
    Json(faults)
}

#[derive(Deserialize)]
struct TokensBody {
    tokens: Vec<String>,
}

async fn put_tokens(State(sim): State<Simulator>, Json(body): Json<TokensBody>) -> StatusCode {
    sim.set_tokens(body.tokens);
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct DatasetBody {
    id: String,
}

async fn post_sim_dataset(
    State(sim): State<Simulator>,
    Json(body): Json<DatasetBody>,
) -> StatusCode {
    sim.add_dataset(&body.id);
    StatusCode::CREATED
}
