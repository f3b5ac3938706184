//! Outbox workers: claim due events by lease, send them in batches, record every attempt, and
//! move each event to delivered, retrying, dead, or back to the queue of a paused asset.
//!
//! A worker never holds a database transaction across a request to Meta: claim (one short
//! transaction), send, resolve (another). A crash between Meta's answer and the resolve leaves
//! the events leased; when the lease expires another worker sends them again. That is the one
//! window in which Meta can receive a duplicate (see the README).

use std::{sync::Arc, time::Duration};

use rand::Rng;
use relay_store::{Attempt, ClaimedEvent, Resolution, Store};
use serde_json::value::RawValue;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{
    GraphClient, PermanentKind, RetryKind, SendOutcome,
    batch::{Batch, make_batches},
    retry,
};
use crate::{config::DeliveryConfig, observability, vault::MasterKey};

/// Meta refuses events older than this (spec §2.3).
const META_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// What a worker needs; shared by all workers of a process.
#[derive(Clone)]
pub struct DeliveryContext {
    pub store: Arc<dyn Store>,
    pub graph: GraphClient,
    pub config: DeliveryConfig,
    /// Woken by ingestion so new events go out without waiting for the next poll.
    pub wake: Arc<Notify>,
    /// Opens the sealed access tokens.
    pub vault: Arc<MasterKey>,
}

/// How long a dataset waits when its asset's token cannot be opened with this relay's key.
const UNSEALABLE_TOKEN_HOLD: Duration = Duration::from_secs(30);

/// Runs one worker until `cancel` fires; the round in progress is finished first.
pub async fn run_worker(ctx: DeliveryContext, owner: String, cancel: CancellationToken) {
    let mut idle = ctx.config.idle_poll_min;
    loop {
        if cancel.is_cancelled() {
            break;
        }
        match run_round(&ctx, &owner).await {
            Ok(0) => {
                tokio::select! {
                    () = ctx.wake.notified() => idle = ctx.config.idle_poll_min,
                    () = tokio::time::sleep(idle) => idle = (idle * 2).min(ctx.config.idle_poll_max),
                    () = cancel.cancelled() => break,
                }
            }
            Ok(_) => idle = ctx.config.idle_poll_min,
            Err(e) => {
                tracing::warn!(worker = %owner, error = %e, "delivery round failed; backing off");
                tokio::select! {
                    () = tokio::time::sleep(ctx.config.idle_poll_max) => {}
                    () = cancel.cancelled() => break,
                }
            }
        }
    }
    tracing::debug!(worker = %owner, "delivery worker stopped");
}

/// Claims and processes one round; returns how many events it claimed.
pub async fn run_round(ctx: &DeliveryContext, owner: &str) -> relay_store::Result<usize> {
    let now = now_ms();
    let lease_until = now + ctx.config.lease.as_millis() as i64;
    let claimed = ctx
        .store
        .claim_due(owner, now, lease_until, ctx.config.claim_limit)
        .await?;
    let count = claimed.len();
    if count == 0 {
        return Ok(0);
    }
    let cutoff_secs = (now / 1000) - (META_MAX_AGE - ctx.config.too_old_margin).as_secs() as i64;
    let (too_old, sendable): (Vec<_>, Vec<_>) = claimed
        .into_iter()
        .partition(|e| e.event_time < cutoff_secs);
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
    for batch in batches {
        deliver_batch(ctx, owner, batch).await?;
    }
    Ok(count)
}

async fn deliver_batch(
    ctx: &DeliveryContext,
    owner: &str,
    batch: Batch,
) -> relay_store::Result<()> {
    let Some(asset) = ctx.store.get_asset(&batch.asset_id).await? else {
        let attempt = local_attempt("unknown_asset", "the asset was removed from the registry");
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
            let hold = now_ms() + UNSEALABLE_TOKEN_HOLD.as_millis() as i64;
            ctx.store.pause_dataset(&batch.dataset_id, hold).await?;
            let attempt = local_attempt("token_unreadable", &e.to_string());
            ctx.store
                .resolve(owner, &ids(&batch.events), &attempt, &Resolution::Release)
                .await?;
            return Ok(());
        }
    };
    // Bisection stack: a refused payload is split until the bad events stand alone.
    let mut pending = vec![batch.events];
    while let Some(events) = pending.pop() {
        let payloads: Vec<Box<RawValue>> = events
            .iter()
            .map(|e| RawValue::from_string(e.payload.clone()))
            .collect::<Result<_, _>>()
            .expect("stored payloads are the JSON the relay wrote");
        let report = ctx
            .graph
            .send_events(
                &batch.dataset_id,
                &token,
                &payloads,
                batch.test_event_code.as_deref(),
            )
            .await;
        let now = now_ms();
        let attempt = attempt_of(&report.outcome, now, report.latency);
        observability::graph_request(outcome_label(&report.outcome), report.latency);
        match report.outcome {
            SendOutcome::Delivered(_) => {
                let resolution = Resolution::Delivered {
                    delivered_at_ms: now,
                };
                ctx.store
                    .resolve(owner, &ids(&events), &attempt, &resolution)
                    .await?;
                for e in &events {
                    observability::delivery_latency(Duration::from_millis(
                        (now - e.accepted_at_ms).max(0) as u64,
                    ));
                }
                count_by_channel(&events, observability::delivered);
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
            }
            SendOutcome::Permanent { kind, detail } => match kind {
                PermanentKind::Auth | PermanentKind::Permission | PermanentKind::MissingDataset => {
                    let reason = format!("{}: {}", kind.as_str(), detail.message);
                    ctx.store.pause_asset(&batch.asset_id, &reason, now).await?;
                    tracing::error!(asset_id = %batch.asset_id, reason = %reason, "asset paused; update its token or access to resume");
                    ctx.store
                        .resolve(owner, &ids(&events), &attempt, &Resolution::Release)
                        .await?;
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
) -> relay_store::Result<()> {
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
                ctx.store
                    .resolve(owner, &group_ids, attempt, &resolution)
                    .await?;
                count_by_channel(&owned, |c, n| {
                    observability::retried(c, retry_label(kind), n)
                });
            }
            None => {
                let reason = format!("gave up after {attempts} attempts; last error: {message}");
                dead_letter(ctx, owner, &owned, attempt, &reason, "retries_exhausted").await?;
            }
        }
    }
    Ok(())
}

async fn dead_letter(
    ctx: &DeliveryContext,
    owner: &str,
    events: &[ClaimedEvent],
    attempt: &Attempt,
    reason: &str,
    label: &'static str,
) -> relay_store::Result<()> {
    let resolution = Resolution::Dead {
        reason: reason.to_owned(),
        dead_at_ms: attempt.attempted_at_ms,
    };
    ctx.store
        .resolve(owner, &ids(events), attempt, &resolution)
        .await?;
    tracing::warn!(events = events.len(), reason = %reason, "events dead-lettered");
    count_by_channel(events, |c, n| observability::dead(c, label, n));
    Ok(())
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

fn local_attempt(outcome: &str, message: &str) -> Attempt {
    Attempt {
        attempted_at_ms: now_ms(),
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

/// Wall-clock Unix milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A worker-id prefix unique to this process, for lease ownership across relay instances.
pub fn process_owner_id() -> String {
    let random: u32 = rand::rng().random();
    format!("{}-{:08x}", std::process::id(), random)
}
