//! Sending one claim: the events of one dataset taken under one lease. Too-old events become
//! dead letters, the rest go out in batches; every answer is recorded and each event moves to
//! delivered, retrying, dead, or back to the queue of a paused asset.
//!
//! A sender never holds a database transaction across a request to Meta: claim (one short
//! transaction), send, resolve (another). A request starts only while the claim's lease
//! outlasts the request's timeout ([`Leases::may_send`]), and a resolve that finds the events
//! no longer held by this claim stops the claim: a lost lease never leads to a second send
//! from this process. A crash between Meta's answer and the resolve leaves the events leased;
//! when the lease ends another claim sends them again. That is the one window in which Meta can
//! receive a duplicate (see the README).

use std::{sync::Arc, time::Duration};

use rand::Rng;
use relay_store::{Attempt, ClaimedEvent, Resolution, Store};
use serde_json::value::RawValue;
use tokio::sync::Notify;

use super::{
    GraphClient, PermanentKind, RetryKind, SendOutcome,
    batch::{Batch, make_batches},
    hooks,
    lease::Leases,
    retry,
};
use crate::{clock::SharedClock, config::DeliveryConfig, observability, vault::MasterKey};

/// Meta refuses events older than this (spec §2.3).
const META_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// What senders need; shared by all of a process.
#[derive(Clone)]
pub struct DeliveryContext {
    pub store: Arc<dyn Store>,
    pub graph: GraphClient,
    pub config: DeliveryConfig,
    /// The Graph client's whole-request timeout: a request starts only while its lease
    /// outlasts it.
    pub request_timeout: Duration,
    /// Woken by ingestion so new events go out without waiting for the next poll.
    pub wake: Arc<Notify>,
    /// Opens the sealed access tokens.
    pub vault: Arc<MasterKey>,
    pub clock: SharedClock,
    /// Meta's answers, counted for the dashboard.
    pub graph_calls: Arc<super::graph_calls::GraphCallLog>,
    /// Records the answers, many sends to one commit.
    pub resolver: super::resolver::Resolver,
}

/// How long a dataset waits when its asset's token cannot be opened with this relay's key.
const UNSEALABLE_TOKEN_HOLD: Duration = Duration::from_secs(30);

/// Why a claim stopped before all its events were resolved.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Store(#[from] relay_store::StoreError),
    /// The claim's lease was taken over; nothing more is sent under it.
    #[error("lost the lease of {lost} events; the claim is abandoned")]
    LeaseLost { lost: u64 },
}

/// One claim: its lease owner and events.
pub struct Claim {
    pub owner: String,
    pub events: Vec<ClaimedEvent>,
    /// The claim's place among its dataset's requests in flight.
    pub request_slot: RequestSlot,
}

/// Runs its closure when dropped: as soon as a claim's last request to Meta is answered
/// (delivered), not after the answer is recorded. The dataset's next claim can then go out
/// while this one's resolve waits for the database writer, which ingest also uses.
pub struct RequestSlot(Option<Box<dyn FnOnce() + Send>>);

impl RequestSlot {
    pub fn new(on_free: impl FnOnce() + Send + 'static) -> Self {
        RequestSlot(Some(Box::new(on_free)))
    }
}

impl Drop for RequestSlot {
    fn drop(&mut self) {
        if let Some(on_free) = self.0.take() {
            on_free();
        }
    }
}

/// Sends a claim to the end. Events it could not send under a valid lease are released.
pub async fn send_claim(
    ctx: &DeliveryContext,
    leases: &Leases,
    claim: Claim,
) -> Result<(), SendError> {
    let Claim {
        owner,
        events,
        request_slot,
    } = claim;
    let mut request_slot = Some(request_slot);
    let owner = owner.as_str();
    if let Some(first) = events.first() {
        hooks::maybe_panic(&first.dataset_id);
    }
    let now = ctx.clock.now_ms();
    let cutoff_secs = (now / 1000) - (META_MAX_AGE - ctx.config.too_old_margin).as_secs() as i64;
    let (too_old, sendable): (Vec<_>, Vec<_>) =
        events.into_iter().partition(|e| e.event_time < cutoff_secs);
    if !too_old.is_empty() {
        let attempt = Attempt {
            attempted_at_ms: now,
            outcome: "too_old".into(),
            http_status: None,
            fbtrace_id: None,
            message: Some("not sent: the event would pass Meta's 7-day limit".into()),
            latency_ms: 0,
        };
        let reason = "too old: event_time is (nearly) 7 days ago, Meta would refuse it";
        dead_letter(ctx, owner, &too_old, &attempt, reason, "too_old").await?;
    }
    let batches = make_batches(
        sendable,
        ctx.config.batch_max_events,
        ctx.config.batch_max_bytes,
    );
    let mut batches = batches.into_iter().peekable();
    let mut first = true;
    while let Some(batch) = batches.next() {
        // The last batch frees the request slot once Meta has taken it.
        let slot = if batches.peek().is_none() {
            request_slot.take()
        } else {
            None
        };
        let result = deliver_batch(ctx, leases, owner, batch, first, slot).await;
        first = false;
        if let Err(e) = result {
            // Whatever this claim still holds goes back to the queue, unsent.
            let rest: Vec<i64> = batches.flat_map(|b| b.events).map(|e| e.id).collect();
            release(ctx, owner, &rest).await;
            return Err(e);
        }
    }
    Ok(())
}

async fn release(ctx: &DeliveryContext, owner: &str, ids: &[i64]) {
    if ids.is_empty() {
        return;
    }
    let now = ctx.clock.now_ms();
    let attempt = local_attempt(now, "released", "not sent: the claim stopped; queued again");
    if let Err(e) = ctx
        .resolver
        .resolve(owner, ids, &attempt, &Resolution::Release { now_ms: now })
        .await
    {
        tracing::warn!(error = %e, events = ids.len(), "cannot release events; they are sent again when their lease ends");
    }
}

/// Checks that a resolve found every event still held by this claim.
fn check_held(expected: usize, updated: u64) -> Result<(), SendError> {
    let lost = expected as u64 - updated.min(expected as u64);
    if lost > 0 {
        observability::leases_lost(lost);
        tracing::warn!(
            lost,
            "a claim's lease was taken over before its answer was recorded"
        );
        return Err(SendError::LeaseLost { lost });
    }
    Ok(())
}

async fn deliver_batch(
    ctx: &DeliveryContext,
    leases: &Leases,
    owner: &str,
    batch: Batch,
    fresh_claim: bool,
    mut request_slot: Option<RequestSlot>,
) -> Result<(), SendError> {
    let Some(asset) = ctx.store.get_asset(&batch.asset_id).await? else {
        let attempt = local_attempt(
            ctx.clock.now_ms(),
            "unknown_asset",
            "the asset was removed from the registry",
        );
        let reason = format!("asset {} is no longer registered", batch.asset_id);
        return dead_letter(
            ctx,
            owner,
            &batch.events,
            &attempt,
            &reason,
            "unknown_asset",
        )
        .await;
    };
    let token = match ctx.vault.open(&asset.sealed_token, &asset.asset_id) {
        Ok(token) => token,
        Err(e) => {
            // A relay started with the wrong master key (e.g. mid-rotation): hold the events
            // without counting an attempt; a relay with the right key delivers them.
            tracing::error!(asset_id = %asset.asset_id, error = %e, "cannot open the asset's access token");
            let now = ctx.clock.now_ms();
            let hold = now + UNSEALABLE_TOKEN_HOLD.as_millis() as i64;
            ctx.store.pause_dataset(&batch.dataset_id, hold).await?;
            let attempt = local_attempt(now, "token_unreadable", &e.to_string());
            let updated = ctx
                .resolver
                .resolve(
                    owner,
                    &ids(&batch.events),
                    &attempt,
                    &Resolution::Release { now_ms: now },
                )
                .await?;
            return check_held(batch.events.len(), updated);
        }
    };
    // Bisection stack: a refused payload is split until the bad events stand alone.
    let mut pending = vec![batch.events];
    let mut verified = fresh_claim;
    while let Some(events) = pending.pop() {
        let now = ctx.clock.now_ms();
        if !leases.may_send(owner, now, ctx.request_timeout) {
            // The lease could not be renewed in time (the database is slow or unreachable):
            // sending now could outlive it. Put the events back instead.
            let rest: Vec<i64> = pending
                .iter()
                .flatten()
                .chain(&events)
                .map(|e| e.id)
                .collect();
            tracing::warn!(
                events = rest.len(),
                "lease too short to start a request; events released"
            );
            release(ctx, owner, &rest).await;
            return Ok(());
        }
        if !verified {
            let held = ctx.store.count_leased(owner, &ids(&events)).await?;
            check_held(events.len(), held)?;
        }
        verified = false;
        // Borrowed, not copied, and read once: a request's payloads are checked as they go in.
        let Ok(payloads) = events
            .iter()
            .map(|e| serde_json::from_str::<&RawValue>(&e.payload))
            .collect::<Result<Vec<&RawValue>, _>>()
        else {
            let readable = dead_letter_unreadable(ctx, owner, events).await?;
            if !readable.is_empty() {
                pending.push(readable);
            }
            continue;
        };
        let report = {
            let _in_flight = observability::GraphInFlight::start();
            ctx.graph
                .send_events(
                    &batch.dataset_id,
                    &token,
                    &payloads,
                    batch.test_event_code.as_deref(),
                )
                .await
        };
        let now = ctx.clock.now_ms();
        let attempt = attempt_of(&report.outcome, now, report.latency);
        observability::graph_request(outcome_label(&report.outcome), report.latency);
        if attempt.http_status.is_some() {
            // Meta answered: one call towards its access tier (dashboard Quality page),
            // written with others once a second.
            ctx.graph_calls
                .record(now, matches!(report.outcome, SendOutcome::Delivered(_)));
        }
        match report.outcome {
            SendOutcome::Delivered(_) => {
                if pending.is_empty() {
                    drop(request_slot.take());
                }
                hooks::maybe_slow_resolve(&batch.dataset_id).await;
                let resolution = Resolution::Delivered {
                    delivered_at_ms: now,
                };
                let updated = ctx
                    .resolver
                    .resolve(owner, &ids(&events), &attempt, &resolution)
                    .await?;
                observability::delivery_latencies(
                    events
                        .iter()
                        .map(|e| Duration::from_millis((now - e.accepted_at_ms).max(0) as u64)),
                );
                count_by_channel(&events, observability::delivered);
                check_held(events.len(), updated)?;
            }
            SendOutcome::Retryable {
                kind,
                wait_hint,
                detail,
            } => {
                if kind == RetryKind::Throttled {
                    let pause = wait_hint
                        .unwrap_or(ctx.config.throttle_pause)
                        .max(ctx.config.throttle_pause);
                    ctx.store
                        .pause_dataset(&batch.dataset_id, now + pause.as_millis() as i64)
                        .await?;
                    tracing::warn!(dataset_id = %batch.dataset_id, pause_secs = pause.as_secs(), "Meta is throttling; dataset paused");
                }
                schedule_retry(
                    ctx,
                    owner,
                    &events,
                    &attempt,
                    kind,
                    wait_hint,
                    &detail.message,
                )
                .await?;
                // A throttled or failing dataset gets no more requests from this claim.
                let rest: Vec<i64> = pending.iter().flatten().map(|e| e.id).collect();
                release(ctx, owner, &rest).await;
                return Ok(());
            }
            SendOutcome::Permanent { kind, detail } => match kind {
                PermanentKind::Auth | PermanentKind::Permission | PermanentKind::MissingDataset => {
                    let reason = format!("{}: {}", kind.as_str(), detail.message);
                    ctx.store.pause_asset(&batch.asset_id, &reason, now).await?;
                    tracing::error!(asset_id = %batch.asset_id, reason = %reason, "asset paused; update its token or access to resume");
                    let all: Vec<i64> = pending
                        .iter()
                        .flatten()
                        .chain(&events)
                        .map(|e| e.id)
                        .collect();
                    let updated = ctx
                        .resolver
                        .resolve(owner, &all, &attempt, &Resolution::Release { now_ms: now })
                        .await?;
                    return check_held(all.len(), updated);
                }
                PermanentKind::InvalidPayload { .. } | PermanentKind::EventTooOld
                    if events.len() > 1 =>
                {
                    let mut events = events;
                    let second = events.split_off(events.len() / 2);
                    pending.push(second);
                    pending.push(events);
                }
                other => {
                    let reason = format!(
                        "Meta refused the event ({}): {}",
                        other.as_str(),
                        detail.message
                    );
                    dead_letter(ctx, owner, &events, &attempt, &reason, other.as_str()).await?;
                }
            },
        }
    }
    Ok(())
}

async fn schedule_retry(
    ctx: &DeliveryContext,
    owner: &str,
    events: &[ClaimedEvent],
    attempt: &Attempt,
    kind: RetryKind,
    hint: Option<Duration>,
    message: &str,
) -> Result<(), SendError> {
    let now = attempt.attempted_at_ms;
    // Events in one batch can have different attempt counts; group them by it.
    let mut by_attempts: Vec<(i32, Vec<&ClaimedEvent>)> = Vec::new();
    for e in events {
        match by_attempts.iter_mut().find(|(a, _)| *a == e.attempts) {
            Some((_, group)) => group.push(e),
            None => by_attempts.push((e.attempts, vec![e])),
        }
    }
    for (attempts, group) in by_attempts {
        let draw: f64 = rand::rng().random();
        let delay = retry::next_delay(
            attempts.max(0) as u32,
            &ctx.config.retry_schedule,
            ctx.config.retry_jitter,
            draw,
            hint,
        );
        let group_ids: Vec<i64> = group.iter().map(|e| e.id).collect();
        let owned: Vec<ClaimedEvent> = group.into_iter().cloned().collect();
        match delay {
            Some(delay) => {
                let resolution = Resolution::Retry {
                    next_attempt_at_ms: now + delay.as_millis() as i64,
                };
                let updated = ctx
                    .resolver
                    .resolve(owner, &group_ids, attempt, &resolution)
                    .await?;
                count_by_channel(&owned, |c, n| {
                    observability::retried(c, retry_label(kind), n)
                });
                check_held(group_ids.len(), updated)?;
            }
            None => {
                let reason = format!("gave up after {attempts} attempts; last error: {message}");
                dead_letter(ctx, owner, &owned, attempt, &reason, "retries_exhausted").await?;
            }
        }
    }
    Ok(())
}

/// A stored payload that is not JSON can never be sent: a dead letter, not a panic. Returns
/// the events whose payloads can be read.
async fn dead_letter_unreadable(
    ctx: &DeliveryContext,
    owner: &str,
    events: Vec<ClaimedEvent>,
) -> Result<Vec<ClaimedEvent>, SendError> {
    let (unreadable, readable): (Vec<_>, Vec<_>) = events
        .into_iter()
        .partition(|e| serde_json::from_str::<&RawValue>(&e.payload).is_err());
    let attempt = local_attempt(
        ctx.clock.now_ms(),
        "unreadable_payload",
        "the stored payload is not valid JSON",
    );
    let reason = "the stored payload cannot be read as JSON (database corruption or a manual edit)";
    dead_letter(
        ctx,
        owner,
        &unreadable,
        &attempt,
        reason,
        "unreadable_payload",
    )
    .await?;
    Ok(readable)
}

async fn dead_letter(
    ctx: &DeliveryContext,
    owner: &str,
    events: &[ClaimedEvent],
    attempt: &Attempt,
    reason: &str,
    label: &'static str,
) -> Result<(), SendError> {
    let resolution = Resolution::Dead {
        reason: reason.to_owned(),
        dead_at_ms: attempt.attempted_at_ms,
    };
    let updated = ctx
        .resolver
        .resolve(owner, &ids(events), attempt, &resolution)
        .await?;
    tracing::warn!(events = events.len(), reason = %reason, "events dead-lettered");
    count_by_channel(events, |c, n| observability::dead(c, label, n));
    check_held(events.len(), updated)
}

/// Puts a crashed sender's events back for a retry shortly, with the reason on record. Only
/// the events the claim still holds are touched.
pub async fn recover_after_panic(ctx: &DeliveryContext, owner: &str, event_ids: &[i64]) {
    let now = ctx.clock.now_ms();
    let attempt = local_attempt(
        now,
        "internal_error",
        "the sender stopped unexpectedly (a bug: see the relay's log); retrying",
    );
    let retry_at = now
        + ctx
            .config
            .retry_schedule
            .first()
            .map_or(5_000, |d| d.as_millis() as i64);
    let resolution = Resolution::Retry {
        next_attempt_at_ms: retry_at,
    };
    match ctx
        .resolver
        .resolve(owner, event_ids, &attempt, &resolution)
        .await
    {
        Ok(n) => tracing::warn!(
            events = n,
            "a crashed sender's events are queued for a retry"
        ),
        Err(e) => {
            tracing::error!(error = %e, "cannot requeue a crashed sender's events; they are sent again when their lease ends")
        }
    }
}

fn ids(events: &[ClaimedEvent]) -> Vec<i64> {
    events.iter().map(|e| e.id).collect()
}

fn count_by_channel(events: &[ClaimedEvent], mut record: impl FnMut(&'static str, u64)) {
    for channel in ["whatsapp", "messenger", "instagram"] {
        let n = events.iter().filter(|e| e.channel == channel).count() as u64;
        if n > 0 {
            record(channel, n);
        }
    }
}

fn local_attempt(now: i64, outcome: &str, message: &str) -> Attempt {
    Attempt {
        attempted_at_ms: now,
        outcome: outcome.into(),
        http_status: None,
        fbtrace_id: None,
        message: Some(message.into()),
        latency_ms: 0,
    }
}

/// The attempt record of one Graph answer.
fn attempt_of(outcome: &SendOutcome, now: i64, latency: Duration) -> Attempt {
    let (name, detail) = match outcome {
        SendOutcome::Delivered(d) => {
            return Attempt {
                attempted_at_ms: now,
                outcome: "delivered".into(),
                http_status: Some(200),
                fbtrace_id: d.fbtrace_id.clone(),
                message: None,
                latency_ms: latency.as_millis() as i64,
            };
        }
        SendOutcome::Retryable { kind, detail, .. } => {
            (format!("retryable:{}", retry_label(*kind)), detail)
        }
        SendOutcome::Permanent { kind, detail } => (format!("permanent:{}", kind.as_str()), detail),
    };
    Attempt {
        attempted_at_ms: now,
        outcome: name,
        http_status: detail.http_status.map(i32::from),
        fbtrace_id: detail.fbtrace_id().map(str::to_owned),
        message: Some(detail.message.clone()),
        latency_ms: latency.as_millis() as i64,
    }
}

fn outcome_label(outcome: &SendOutcome) -> &'static str {
    match outcome {
        SendOutcome::Delivered(_) => "delivered",
        SendOutcome::Retryable { .. } => "retryable",
        SendOutcome::Permanent { .. } => "permanent",
    }
}

fn retry_label(kind: RetryKind) -> &'static str {
    match kind {
        RetryKind::Network => "network",
        RetryKind::Timeout => "timeout",
        RetryKind::ServerError => "server_error",
        RetryKind::Transient => "transient",
        RetryKind::Throttled => "throttled",
        RetryKind::PolicyBlock => "policy_block",
    }
}

/// A worker-id prefix unique to this process, for lease ownership across relay instances.
pub fn process_owner_id() -> String {
    let random: u32 = rand::rng().random();
    format!("{}-{:08x}", std::process::id(), random)
}
