//! Ingestion: validates a batch of submitted events, routes each to its asset's dataset, and
//! commits the accepted ones to the outbox. A bad event never fails its neighbours; a duplicate
//! is reported and never stored twice.
//!
//! Concurrent requests are committed together by one writer task (group commit): SQLite has a
//! single writer, so one transaction for many small requests is what makes single-event
//! requests fast. Each request still gets its answer only after its events are committed.

use std::{
    borrow::Cow,
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use relay_core::{Channel, Issue, ValidationOptions, contact::Attribution, validate_event};
use relay_store::{Asset, InsertOutcome, NewEvent, Store, StoreError, dashboard::NewRefusal};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use self::group_commit::WriteJob;
use crate::delivery::handoff::Handoff;
use crate::{capture::Capture, clock::now_ms, observability, tenancy::keys::Scope};

mod group_commit;

/// The result of one submitted event.
#[derive(Debug, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum EventResult {
    Accepted {
        index: usize,
        event_id: Arc<str>,
        dataset_id: Arc<str>,
        /// Shown whenever it is set: Meta counts test events apart from real ones.
        #[serde(skip_serializing_if = "Option::is_none")]
        test_event_code: Option<Arc<str>>,
        /// The contact's touch used for a conversion by contact.
        #[serde(skip_serializing_if = "Option::is_none")]
        attribution: Option<Attribution>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        warnings: Vec<Issue>,
    },
    Duplicate {
        index: usize,
        event_id: Arc<str>,
        dataset_id: Arc<str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        attribution: Option<Attribution>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        warnings: Vec<Issue>,
    },
    Rejected {
        index: usize,
        errors: Vec<Issue>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        warnings: Vec<Issue>,
    },
}

/// The answer to `POST /v1/events`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IngestReport {
    pub accepted: usize,
    pub duplicates: usize,
    pub rejected: usize,
    /// One per event, in order: `{"status": "accepted" | "duplicate" | "rejected", "index",
    /// "event_id"?, "dataset_id"?, "errors"?, "warnings"?, …}`.
    #[schema(value_type = Vec<Object>)]
    pub results: Vec<EventResult>,
}

/// Capture hands Meta-detected conversions (`automatic_events`) over here, ingested on behalf
/// of the asset's tenant like any other event.
impl crate::capture::EventSink for Ingestor {
    async fn submit(&self, tenant: &str, event: Value) -> Result<Result<(), String>, StoreError> {
        let scope = Scope {
            tenant: tenant.to_owned(),
            assets: None,
            key_id: "automatic_events".into(),
        };
        let report = self.ingest(&[event], &scope, None).await?;
        let refused: Vec<String> = report
            .results
            .iter()
            .filter_map(|r| match r {
                EventResult::Rejected { errors, .. } => Some(
                    errors
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; "),
                ),
                _ => None,
            })
            .collect();
        Ok(if refused.is_empty() {
            Ok(())
        } else {
            Err(refused.join("; "))
        })
    }
}

/// An event that passed validation and routing, waiting for the insert.
struct Routed {
    index: usize,
    channel: &'static str,
    warnings: Vec<Issue>,
    attribution: Option<Attribution>,
    event_id: Arc<str>,
    dataset_id: Arc<str>,
    test_event_code: Option<Arc<str>>,
}

/// How long the asset registry is cached; `assets add` shows up within this time.
const ASSET_CACHE_TTL: Duration = Duration::from_secs(1);
/// A snapshot younger than this is not reloaded for an unknown asset (bounds reload storms).
const ASSET_RELOAD_MIN_AGE: Duration = Duration::from_millis(100);
/// Events validated between yields: a 1,000-event request is ~20 ms of CPU, and without yields
/// the group writer, woken for its next commit, waited behind it for a worker thread.
const YIELD_EVERY: usize = 32;

/// The ingestion service: validation options, the asset registry cache and the group writer.
pub struct Ingestor {
    store: Arc<dyn Store>,
    options: ValidationOptions,
    registry: Mutex<(Instant, Arc<Registry>)>,
    writer: mpsc::Sender<WriteJob>,
    /// Where the writer hands full requests to this process's delivery.
    handoff: Arc<Handoff>,
    /// Resolves conversions by contact; without it, `contact` is not understood.
    capture: Option<Arc<Capture>>,
}

/// The routing snapshot: registered assets by id.
#[derive(Default)]
struct Registry {
    assets: HashMap<String, Route>,
}

/// A registered asset and what its events are stored with, shared by all of them.
struct Route {
    asset: Asset,
    tenant: Arc<str>,
    dataset_id: Arc<str>,
    asset_id: Arc<str>,
    channel: Arc<str>,
    /// The asset's `test_event_code`, else its tenant's.
    test_event_code: Option<Arc<str>>,
}

impl Route {
    fn new(asset: Asset, tenant_test_codes: &HashMap<String, String>) -> Self {
        let test_event_code = asset
            .test_event_code
            .as_deref()
            .or(tenant_test_codes.get(&asset.tenant).map(String::as_str))
            .map(Arc::from);
        Route {
            tenant: asset.tenant.as_str().into(),
            dataset_id: asset.dataset_id.as_str().into(),
            asset_id: asset.asset_id.as_str().into(),
            channel: asset.channel.as_str().into(),
            test_event_code,
            asset,
        }
    }
}

impl Ingestor {
    /// Starts the group-commit writer task; it ends when the `Ingestor` is dropped.
    pub fn new(store: Arc<dyn Store>, options: ValidationOptions) -> Self {
        let (writer, jobs) = mpsc::channel(1_024);
        let handoff = Arc::new(Handoff::default());
        tokio::spawn(group_commit::run(store.clone(), jobs, handoff.clone()));
        let stale = Instant::now() - ASSET_CACHE_TTL * 2;
        Ingestor {
            store,
            options,
            registry: Mutex::new((stale, Arc::default())),
            writer,
            handoff,
            capture: None,
        }
    }

    /// Resolves conversions by contact through `capture`.
    pub fn with_capture(mut self, capture: Arc<Capture>) -> Self {
        self.capture = Some(capture);
        self
    }

    /// Where delivery in this process takes full requests from the writer
    /// ([`crate::delivery::dispatcher::run`] attaches to it).
    pub fn handoff(&self) -> Arc<Handoff> {
        self.handoff.clone()
    }

    /// Makes the next request reload assets and tenants (after an admin change here).
    pub fn forget_registry(&self) {
        let mut cached = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        cached.0 = Instant::now() - ASSET_CACHE_TTL * 2;
    }

    async fn registry(&self, force: bool) -> Result<Arc<Registry>, StoreError> {
        {
            let cached = self.registry.lock().unwrap_or_else(|p| p.into_inner());
            let age = cached.0.elapsed();
            if age < ASSET_CACHE_TTL && !(force && age >= ASSET_RELOAD_MIN_AGE) {
                return Ok(cached.1.clone());
            }
        }
        let tenant_test_codes: HashMap<String, String> = self
            .store
            .list_tenants()
            .await?
            .into_iter()
            .filter_map(|t| Some((t.name, t.test_event_code?)))
            .collect();
        let fresh = Arc::new(Registry {
            assets: self
                .store
                .list_assets()
                .await?
                .into_iter()
                .map(|a| (a.asset_id.clone(), Route::new(a, &tenant_test_codes)))
                .collect(),
        });
        *self.registry.lock().unwrap_or_else(|p| p.into_inner()) = (Instant::now(), fresh.clone());
        Ok(fresh)
    }

    async fn insert(&self, events: Vec<NewEvent>) -> Result<Vec<InsertOutcome>, StoreError> {
        let (reply, answer) = oneshot::channel();
        let unavailable = || StoreError::Unavailable("the ingest writer stopped".into());
        self.writer
            .send(WriteJob {
                lane: events.first().map(|e| e.tenant.clone()).unwrap_or_default(),
                events,
                reply,
            })
            .await
            .map_err(|_| unavailable())?;
        answer.await.map_err(|_| unavailable())?
    }

    /// Validates, routes and stores `events` for the caller's `scope`: an event for an asset
    /// outside the scope is rejected exactly like one for an unknown asset, so nothing leaks
    /// about other tenants. Returns after the accepted ones are committed.
    ///
    /// The `test_event_code` sent with an event is the request's, else its asset's, else its
    /// tenant's.
    pub async fn ingest(
        &self,
        events: &[Value],
        scope: &Scope,
        test_event_code: Option<&str>,
    ) -> Result<IngestReport, StoreError> {
        ingest(self, events, scope, test_event_code, None, false).await
    }

    /// Like [`Ingestor::ingest`], with every lookup and check, but stores nothing: an event
    /// that would be stored is reported `accepted` (a duplicate is not recognised).
    pub async fn ingest_dry_run(
        &self,
        events: &[Value],
        scope: &Scope,
    ) -> Result<IngestReport, StoreError> {
        ingest(self, events, scope, None, None, true).await
    }

    /// Ingests a request made to the Graph-compatible `/{version}/{dataset_id}/events` with
    /// Meta's semantics: every event must send to `dataset_id`, SHA-256 digests pass through as
    /// hashed, an event without its asset id gets the dataset's only asset of its channel, and
    /// one refused event refuses the whole request (nothing is stored).
    pub async fn ingest_for_dataset(
        &self,
        events: &[Value],
        scope: &Scope,
        dataset_id: &str,
        test_event_code: Option<&str>,
    ) -> Result<DatasetIngest, StoreError> {
        let owned = |registry: &Registry| {
            registry
                .assets
                .values()
                .any(|r| &*r.dataset_id == dataset_id && scope.allows(&r.asset))
        };
        if !owned(&*self.registry(false).await?) && !owned(&*self.registry(true).await?) {
            return Ok(DatasetIngest::UnknownDataset);
        }
        let report = ingest(
            self,
            events,
            scope,
            test_event_code,
            Some(dataset_id),
            false,
        )
        .await?;
        Ok(if report.rejected > 0 {
            DatasetIngest::Refused(report)
        } else {
            DatasetIngest::Committed(report)
        })
    }
}

/// The outcome of [`Ingestor::ingest_for_dataset`].
#[derive(Debug)]
pub enum DatasetIngest {
    /// No asset of the caller's scope sends to this dataset: Meta's "object does not exist".
    UnknownDataset,
    /// At least one event was refused; nothing was stored. `results` holds the refusals.
    Refused(IngestReport),
    /// Every event is committed (or was already).
    Committed(IngestReport),
}

/// Fills `user_data`'s asset id from the dataset's only asset of the event's channel, as Meta's
/// SDKs have no field for it. Returns the event unchanged when the asset id is there, the
/// channel is unknown, or there is nothing to fill with; refuses when several assets qualify.
fn fill_asset_id<'a>(
    input: &'a Value,
    registry: &Registry,
    scope: &Scope,
    dataset_id: &str,
) -> Result<Cow<'a, Value>, Issue> {
    let Some(user_data) = input.get("user_data").and_then(Value::as_object) else {
        return Ok(Cow::Borrowed(input));
    };
    let named = input
        .get("messaging_channel")
        .and_then(Value::as_str)
        .and_then(|c| c.trim().to_ascii_lowercase().parse::<Channel>().ok());
    // Without messaging_channel, the click or scoped id says which channel is meant.
    let channel = named.or_else(|| {
        let mut by_click = Channel::ALL
            .into_iter()
            .filter(|c| user_data.contains_key(c.click_field()));
        match (by_click.next(), by_click.next()) {
            (Some(only), None) => Some(only),
            _ => None,
        }
    });
    let Some(channel) = channel else {
        return Ok(Cow::Borrowed(input));
    };
    let field = channel.asset_field();
    let present = user_data.get(field).is_some_and(|v| !v.is_null())
        || (channel == Channel::Instagram && user_data.contains_key("ig_account_id"));
    if present {
        return Ok(Cow::Borrowed(input));
    }
    let mut candidates: Vec<&str> = registry
        .assets
        .values()
        .filter(|r| {
            &*r.dataset_id == dataset_id
                && r.asset.channel == channel.as_str()
                && scope.allows(&r.asset)
        })
        .map(|r| &*r.asset_id)
        .collect();
    candidates.sort_unstable();
    match candidates.as_slice() {
        [] => Ok(Cow::Borrowed(input)),
        [only] => {
            let mut event = input.clone();
            event["user_data"][field] = Value::String((*only).to_owned());
            Ok(Cow::Owned(event))
        }
        several => Err(Issue::new(
            relay_core::IssueCode::MissingField,
            format!("user_data.{field}"),
            format!(
                "is required: dataset {dataset_id} has {} {channel} assets ({}); add user_data.{field} to say which one the event is for",
                several.len(),
                several.join(", ")
            ),
        )),
    }
}

async fn ingest(
    ingestor: &Ingestor,
    events: &[Value],
    scope: &Scope,
    test_event_code: Option<&str>,
    // The Graph-compatible endpoint's dataset: see `Ingestor::ingest_for_dataset`.
    target: Option<&str>,
    dry_run: bool,
) -> Result<IngestReport, StoreError> {
    let mut graph_options = ingestor.options;
    graph_options.sha256_passes_through = true;
    let options = if target.is_some() {
        &graph_options
    } else {
        &ingestor.options
    };
    let now = now_ms();
    let request_test_code: Option<Arc<str>> = test_event_code.map(Arc::from);
    let mut registry = ingestor.registry(false).await?;

    let mut results: Vec<Option<EventResult>> = (0..events.len()).map(|_| None).collect();
    let mut routed = Vec::with_capacity(events.len());
    let mut new_events = Vec::with_capacity(events.len());
    for (index, input) in events.iter().enumerate() {
        if index % YIELD_EVERY == YIELD_EVERY - 1 {
            tokio::task::yield_now().await;
        }
        let input = match target {
            Some(dataset_id) => match fill_asset_id(input, &registry, scope, dataset_id) {
                Ok(filled) => filled,
                Err(error) => {
                    results[index] = Some(EventResult::Rejected {
                        index,
                        errors: vec![error],
                        warnings: Vec::new(),
                    });
                    continue;
                }
            },
            None => Cow::Borrowed(input),
        };
        let input = input.as_ref();
        // A conversion by contact becomes a normal event first (rewritten before validation).
        let mut event_options = *options;
        let planned = match &ingestor.capture {
            Some(capture) => match capture.plan(input) {
                Ok(None) => Ok(None),
                // A NUL is refused by validation; it must not reach a contact lookup first.
                // (Looked for only here: most events need no lookup.)
                _ if relay_core::validate::has_nul(input) => Ok(None),
                planned => planned.map(|r| r.map(|r| (capture, r))),
            },
            None => Ok(None),
        };
        let (input, attribution) = match planned {
            Ok(None) => (Cow::Borrowed(input), None),
            Ok(Some((capture, request))) => {
                if !registry.assets.contains_key(&request.asset_id) {
                    registry = ingestor.registry(true).await?;
                }
                // Checked before any lookup, so the answer says nothing of other tenants.
                let visible = registry
                    .assets
                    .get(&request.asset_id)
                    .is_some_and(|r| scope.allows(&r.asset));
                let resolved = if visible {
                    capture.resolve(input, &request, now).await?
                } else {
                    Err(Issue::new(
                        relay_core::IssueCode::UnknownAsset,
                        format!("user_data.{}", request.channel.asset_field()),
                        format!(
                            "asset {} is not registered for this API key; onboard it with `capi-relay assets onboard`",
                            request.asset_id
                        ),
                    ))
                };
                match resolved {
                    Ok((event, attribution)) => {
                        event_options.whatsapp_without_click_id = attribution.unattributed;
                        (Cow::Owned(event), Some(attribution))
                    }
                    Err(error) => {
                        results[index] = Some(EventResult::Rejected {
                            index,
                            errors: vec![error],
                            warnings: Vec::new(),
                        });
                        continue;
                    }
                }
            }
            Err(errors) => {
                results[index] = Some(EventResult::Rejected {
                    index,
                    errors,
                    warnings: Vec::new(),
                });
                continue;
            }
        };
        let valid = match validate_event(&input, &event_options, now / 1000) {
            Ok(valid) => valid,
            Err(rejected) => {
                results[index] = Some(EventResult::Rejected {
                    index,
                    errors: rejected.errors,
                    warnings: rejected.warnings,
                });
                continue;
            }
        };
        let event = valid.event;
        let channel = event.messaging_channel;
        let asset_id = event.asset_id().to_owned();
        if !registry.assets.contains_key(&asset_id) {
            // Maybe added since the snapshot was taken.
            registry = ingestor.registry(true).await?;
        }
        let visible = registry
            .assets
            .get(&asset_id)
            .filter(|r| scope.allows(&r.asset));
        let route = match visible {
            Some(route)
                if route.asset.channel == channel.as_str()
                    && target.is_none_or(|t| *route.dataset_id == *t) =>
            {
                route
            }
            found => {
                let message = match found {
                    Some(route) if route.asset.channel == channel.as_str() => format!(
                        "asset {asset_id} sends to dataset {}, not to dataset {} of the URL",
                        route.dataset_id,
                        target.unwrap_or_default()
                    ),
                    Some(route) => format!(
                        "asset {asset_id} is registered for {}, not {channel}",
                        route.asset.channel
                    ),
                    None => format!(
                        "asset {asset_id} is not registered for this API key; onboard it with `capi-relay assets onboard`"
                    ),
                };
                let error = Issue::new(
                    relay_core::IssueCode::UnknownAsset,
                    format!("user_data.{}", channel.asset_field()),
                    message,
                );
                results[index] = Some(EventResult::Rejected {
                    index,
                    errors: vec![error],
                    warnings: valid.warnings,
                });
                continue;
            }
        };
        let payload = serde_json::to_string(&event).expect("a MetaEvent always serialises");
        let test_event_code = request_test_code
            .as_ref()
            .or(route.test_event_code.as_ref())
            .cloned();
        let event_id: Arc<str> = event.event_id.into();
        let attribution_conversation = attribution
            .as_ref()
            .and_then(|a| a.conversation_id.as_deref())
            .map(Arc::from);
        routed.push(Routed {
            index,
            channel: observability::channel_label(channel.as_str()),
            warnings: valid.warnings,
            attribution,
            event_id: event_id.clone(),
            dataset_id: route.dataset_id.clone(),
            test_event_code: test_event_code.clone(),
        });
        new_events.push(NewEvent {
            tenant: route.tenant.clone(),
            dataset_id: route.dataset_id.clone(),
            asset_id: route.asset_id.clone(),
            channel: route.channel.clone(),
            event_id,
            event_name: event.event_name.into(),
            event_time: event.event_time,
            payload: payload.into(),
            test_event_code,
            accepted_at_ms: now,
            conversation_id: attribution_conversation,
        });
    }

    // Meta's semantics on the Graph-compatible endpoint: one refused event refuses the request.
    let refused = target.is_some() && results.iter().any(Option::is_some);
    if refused {
        let results: Vec<EventResult> = results.into_iter().flatten().collect();
        let rejected = results.len();
        for _ in 0..rejected {
            observability::ingested("unknown", "rejected");
        }
        return Ok(IngestReport {
            accepted: 0,
            duplicates: 0,
            rejected,
            results,
        });
    }
    let outcomes = if new_events.is_empty() {
        Vec::new()
    } else if dry_run {
        vec![InsertOutcome::Inserted(0); new_events.len()]
    } else {
        ingestor.insert(new_events).await?
    };
    for (r, outcome) in routed.into_iter().zip(outcomes) {
        let (event_id, dataset_id, test_event_code) = (r.event_id, r.dataset_id, r.test_event_code);
        results[r.index] = Some(match outcome {
            InsertOutcome::Inserted(_) => {
                observability::ingested(r.channel, "accepted");
                EventResult::Accepted {
                    index: r.index,
                    event_id,
                    dataset_id,
                    test_event_code,
                    attribution: r.attribution,
                    warnings: r.warnings,
                }
            }
            InsertOutcome::Duplicate => {
                observability::ingested(r.channel, "duplicate");
                EventResult::Duplicate {
                    index: r.index,
                    event_id,
                    dataset_id,
                    attribution: r.attribution,
                    warnings: r.warnings,
                }
            }
        });
    }
    let results: Vec<EventResult> = results
        .into_iter()
        .map(|r| r.expect("every event has a result"))
        .collect();
    let count = |f: fn(&EventResult) -> bool| results.iter().filter(|r| f(r)).count();
    let rejected = count(|r| matches!(r, EventResult::Rejected { .. }));
    if rejected > 0 {
        record_refusals(ingestor, events, &results, scope, now).await;
    }
    for _ in 0..rejected {
        observability::ingested("unknown", "rejected");
    }
    Ok(IngestReport {
        accepted: count(|r| matches!(r, EventResult::Accepted { .. })),
        duplicates: count(|r| matches!(r, EventResult::Duplicate { .. })),
        rejected,
        results,
    })
}

/// The longest stored copy of a refused event; longer ones are cut (they are kept to show what
/// was wrong, not to be replayed).
const MAX_REFUSAL_BODY: usize = 16 * 1024;

/// Keeps the refused events of a request, PII hashed, for the dashboard. A failure is logged
/// and does not fail the request: the client's answer already says what was wrong.
async fn record_refusals(
    ingestor: &Ingestor,
    events: &[Value],
    results: &[EventResult],
    scope: &Scope,
    now: i64,
) {
    let text = |v: &Value, path: &[&str]| -> Option<String> {
        let mut at = v;
        for key in path {
            at = at.get(key)?;
        }
        match at {
            Value::String(s) => Some(s.chars().take(200).collect()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    };
    let refusals: Vec<NewRefusal> = results
        .iter()
        .filter_map(|r| match r {
            EventResult::Rejected {
                index,
                errors,
                warnings,
            } => Some((*index, errors, warnings)),
            _ => None,
        })
        .map(|(index, errors, warnings)| {
            let input = &events[index];
            let asset_id = [
                "whatsapp_business_account_id",
                "page_id",
                "instagram_business_account_id",
            ]
            .iter()
            .find_map(|k| text(input, &["user_data", k]));
            let mut body = relay_core::pii::hash_pii_values(input).to_string();
            if body.len() > MAX_REFUSAL_BODY {
                let mut cut = MAX_REFUSAL_BODY;
                while !body.is_char_boundary(cut) {
                    cut -= 1;
                }
                body.truncate(cut);
                body.push_str("… (cut)");
            }
            NewRefusal {
                tenant: scope.tenant.clone(),
                received_at_ms: now,
                event_id: text(input, &["event_id"]),
                event_name: text(input, &["event_name"]),
                channel: text(input, &["messaging_channel"]),
                asset_id,
                error_code: errors
                    .first()
                    .map(|e| serde_json::to_value(e.code).ok())
                    .and_then(|v| v.and_then(|v| v.as_str().map(str::to_owned)))
                    .unwrap_or_else(|| "invalid".into()),
                errors: serde_json::json!({"errors": errors, "warnings": warnings}).to_string(),
                body,
            }
        })
        .collect();
    if let Err(e) = ingestor.store.record_refusals(&refusals).await {
        tracing::warn!(error = %e, refused = refusals.len(), "refused events could not be recorded for the dashboard");
    }
}
