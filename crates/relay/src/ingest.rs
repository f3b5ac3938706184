//! Ingestion: validates a batch of submitted events, routes each to its asset's dataset, and
//! commits the accepted ones to the outbox in one transaction. A bad event never fails its
//! neighbours; a duplicate is reported and never stored twice.

use std::collections::HashMap;

use relay_core::{Issue, ValidationOptions, validate_event};
use relay_store::{Asset, InsertOutcome, NewEvent, Store, StoreError};
use serde::Serialize;
use serde_json::Value;

use crate::{delivery::worker::now_ms, observability};

/// The result of one submitted event.
#[derive(Debug, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum EventResult {
    Accepted {
        index: usize,
        event_id: String,
        dataset_id: String,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        warnings: Vec<Issue>,
    },
    Duplicate {
        index: usize,
        event_id: String,
        dataset_id: String,
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
#[derive(Debug, Serialize)]
pub struct IngestReport {
    pub accepted: usize,
    pub duplicates: usize,
    pub rejected: usize,
    pub results: Vec<EventResult>,
}

/// An event that passed validation and routing, waiting for the insert.
struct Routed {
    index: usize,
    channel: &'static str,
    warnings: Vec<Issue>,
    new: NewEvent,
}

/// Validates, routes and stores `events`. Returns after the accepted ones are committed.
pub async fn ingest(
    store: &dyn Store,
    options: &ValidationOptions,
    events: &[Value],
    test_event_code: Option<&str>,
) -> Result<IngestReport, StoreError> {
    let now = now_ms();
    let assets: HashMap<String, Asset> = store
        .list_assets()
        .await?
        .into_iter()
        .map(|a| (a.asset_id.clone(), a))
        .collect();

    let mut results: Vec<Option<EventResult>> = (0..events.len()).map(|_| None).collect();
    let mut routed = Vec::with_capacity(events.len());
    for (index, input) in events.iter().enumerate() {
        let valid = match validate_event(input, options, now / 1000) {
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
        let asset = match assets.get(&asset_id) {
            Some(asset) if asset.channel == channel.as_str() => asset,
            found => {
                let message = match found {
                    Some(asset) => format!(
                        "asset {asset_id} is registered for {}, not {channel}",
                        asset.channel
                    ),
                    None => format!(
                        "asset {asset_id} is not registered with this relay; add it with `capi-relay assets add`"
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
        routed.push(Routed {
            index,
            channel: observability::channel_label(channel.as_str()),
            warnings: valid.warnings,
            new: NewEvent {
                dataset_id: asset.dataset_id.clone(),
                asset_id,
                channel: channel.as_str().to_owned(),
                event_id: event.event_id.clone(),
                event_name: event.event_name.clone(),
                event_time: event.event_time,
                payload,
                test_event_code: test_event_code.map(str::to_owned),
                accepted_at_ms: now,
            },
        });
    }

    let new_events: Vec<NewEvent> = routed.iter().map(|r| r.new.clone()).collect();
    let outcomes = if new_events.is_empty() {
        Vec::new()
    } else {
        store.insert_events(&new_events).await?
    };
    for (r, outcome) in routed.into_iter().zip(outcomes) {
        let (event_id, dataset_id) = (r.new.event_id, r.new.dataset_id);
        results[r.index] = Some(match outcome {
            InsertOutcome::Inserted(_) => {
                observability::ingested(r.channel, "accepted");
                EventResult::Accepted {
                    index: r.index,
                    event_id,
                    dataset_id,
                    warnings: r.warnings,
                }
            }
            InsertOutcome::Duplicate => {
                observability::ingested(r.channel, "duplicate");
                EventResult::Duplicate {
                    index: r.index,
                    event_id,
                    dataset_id,
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
