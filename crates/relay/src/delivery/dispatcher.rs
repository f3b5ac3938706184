//! The delivery loop of one process: finds the datasets with due events, claims each picked
//! dataset's events under a lease of the claim's own (all picks of a pass in one transaction),
//! and hands each claim to a sender task.
//!
//! - Up to `max_in_flight` claims (and `max_events_in_flight` events) are in flight at once, at
//!   most `per_dataset_in_flight` of one dataset; the [`Scheduler`] picks the least recently
//!   served due dataset first. A delivered claim stops counting against these limits once Meta
//!   has answered; its events count against `max_events_in_flight` until the answer is
//!   recorded.
//! - A dataset's first due event waits `linger` for others to join its request.
//! - A heartbeat renews the leases of the claims in flight ([`Leases`]).
//! - Supervised: a database error backs off and goes on; a panicking sender's events are put
//!   back for a retry; a panicking loop is restarted with backoff. Senders live apart from the
//!   loop, so a restart never cuts a request short.
//!
//! On shutdown no new claim starts; the claims in flight finish and are recorded.

use std::{
    pin::pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use relay_store::{ClaimRequest, ClaimedEvent, DueDataset};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    handoff::Handoff,
    lease::Leases,
    scheduler::Scheduler,
    sender::{self, Claim, DeliveryContext, RequestSlot, SendError},
};
use crate::observability;

/// How long a list of due datasets is reused before it is read again.
const DUE_LIST_TTL_MS: i64 = 50;
/// How long a dataset whose claim found nothing is skipped.
const EMPTY_CLAIM_BACKOFF_MS: i64 = 250;
/// Longest wait after repeated database errors or restarts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A pick with its permits, waiting for the pass's one claim transaction.
struct Ready {
    claim: ClaimRequest,
    permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
}

pub(super) struct Shared {
    pub(super) ctx: DeliveryContext,
    pub(super) leases: Arc<Leases>,
    scheduler: Mutex<Scheduler>,
    permits: Arc<Semaphore>,
    /// One permit per event claimed and not yet resolved.
    event_budget: Arc<Semaphore>,
    /// Signalled by each sender that ends.
    pub(super) sender_done: Notify,
    pub(super) senders: TaskTracker,
}

impl Shared {
    pub(super) fn scheduler(&self) -> std::sync::MutexGuard<'_, Scheduler> {
        self.scheduler.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request slot of `dataset_id` with room for `events`, now, or none: for a request
    /// handed over by ingest.
    pub(super) fn take_request_slot(
        &self,
        dataset_id: &str,
        events: usize,
    ) -> Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        let budget = self
            .event_budget
            .clone()
            .try_acquire_many_owned(u32::try_from(events).ok()?)
            .ok()?;
        self.scheduler()
            .take_slot(dataset_id)
            .then_some((permit, budget))
    }
}

/// Runs delivery for this process until `cancel` fires, then lets the claims in flight finish.
/// Takes the full requests ingest hands over through `handoff` while it runs.
pub async fn run(
    ctx: DeliveryContext,
    process_owner: String,
    handoff: Arc<Handoff>,
    cancel: CancellationToken,
) {
    let config = &ctx.config;
    let shared = Arc::new(Shared {
        scheduler: Mutex::new(Scheduler::new(
            config.max_in_flight,
            config.per_dataset_in_flight,
        )),
        permits: Arc::new(Semaphore::new(config.max_in_flight)),
        event_budget: Arc::new(Semaphore::new(config.max_events_in_flight)),
        leases: Arc::new(Leases::new(process_owner)),
        sender_done: Notify::new(),
        senders: TaskTracker::new(),
        ctx,
    });
    handoff.attach(shared.clone(), cancel.clone());
    let stop_heartbeat = CancellationToken::new();
    let heartbeat = tokio::spawn(heartbeat(shared.clone(), stop_heartbeat.clone()));
    let graph_calls = tokio::spawn(super::graph_calls::flush_loop(
        shared.ctx.graph_calls.clone(),
        shared.ctx.store.clone(),
        stop_heartbeat.clone(),
    ));

    let mut restarts = 0u32;
    loop {
        let incarnation = tokio::spawn(dispatch(shared.clone(), cancel.clone()));
        match incarnation.await {
            Ok(()) => break,
            Err(e) => {
                restarts += 1;
                observability::delivery_restart("panic");
                tracing::error!(error = %e, restarts, "the delivery loop crashed; restarting");
                tokio::select! {
                    () = tokio::time::sleep(backoff(restarts)) => {}
                    () = cancel.cancelled() => break,
                }
            }
        }
    }
    handoff.detach();
    shared.senders.close();
    shared.senders.wait().await;
    stop_heartbeat.cancel();
    let _ = heartbeat.await;
    let _ = graph_calls.await;
    // Claims a crash left registered (none normally): their events go back now, not at lease end.
    let now = shared.ctx.clock.now_ms();
    for owner in shared.leases.live_owners() {
        if let Err(e) = shared.ctx.store.release_leases(&owner, now).await {
            tracing::warn!(error = %e, "cannot release leases at shutdown; they end by themselves");
        }
    }
    shared.ctx.store.stop_delivering().await;
    tracing::debug!("delivery stopped");
}

fn backoff(failures: u32) -> Duration {
    (Duration::from_millis(100) * 2u32.saturating_pow(failures.min(10))).min(MAX_BACKOFF)
}

async fn dispatch(shared: Arc<Shared>, cancel: CancellationToken) {
    let ctx = &shared.ctx;
    let config = &ctx.config;
    let linger_ms = config.linger.as_millis() as i64;
    let lease_ms = config.lease.as_millis() as i64;
    let mut due: Vec<DueDataset> = Vec::new();
    let mut fetched_at = i64::MIN;
    let mut idle = config.idle_poll_min;
    let mut failures = 0u32;
    // A wake-up found a full claim due and skipped the linger; if the pass after it could start
    // nothing (the dataset is at its limit), the next wake-up sleeps, so the look is not repeated
    // at every ingest commit.
    let mut skipped_linger = false;
    loop {
        // Listening before looking, so a wake-up during the look is not lost.
        let mut woken = pin!(ctx.wake.notified());
        woken.as_mut().enable();
        if cancel.is_cancelled() {
            return;
        }
        let now = ctx.clock.now_ms();
        let mut started = 0usize;
        let mut failed = false;
        if shared.scheduler().free() > 0 {
            if due.is_empty() || now - fetched_at >= DUE_LIST_TTL_MS {
                // A dataset's first due event waits the linger for others to join its request,
                // unless a full claim of its events is due already.
                match ctx
                    .store
                    .due_datasets(now, now - linger_ms, config.claim_limit)
                    .await
                {
                    Ok(list) => {
                        due = list;
                        fetched_at = now;
                        shared.scheduler().prune(&due, now);
                    }
                    Err(e) => {
                        failed = true;
                        database_error(&e, failures);
                    }
                }
            }
            let picks = if failed {
                Vec::new()
            } else {
                shared.scheduler().pick(&due, now)
            };
            // The event budget is shared out among this pass's picks, so every pick gets a
            // claim; a dataset with more due comes back as deep for more.
            let available = shared.event_budget.available_permits() as i64;
            let share = (available / picks.len().max(1) as i64).clamp(1, config.claim_limit);
            let mut picks = picks.into_iter();
            let mut ready: Vec<Ready> = Vec::new();
            while let Some(dataset_id) = picks.next() {
                let room = share.min(shared.event_budget.available_permits() as i64);
                let permits = shared.permits.clone().try_acquire_owned().ok().zip(
                    (room > 0)
                        .then(|| {
                            shared
                                .event_budget
                                .clone()
                                .try_acquire_many_owned(room as u32)
                                .ok()
                        })
                        .flatten(),
                );
                let Some(permits) = permits else {
                    // Enough in flight: this and the rest of the picks wait for the next pass,
                    // keeping their place in the queue.
                    let mut scheduler = shared.scheduler();
                    scheduler.unpick(&dataset_id);
                    for rest in picks.by_ref() {
                        scheduler.unpick(&rest);
                    }
                    break;
                };
                ready.push(Ready {
                    claim: ClaimRequest {
                        owner: shared.leases.next_owner(),
                        dataset_id,
                        limit: room,
                    },
                    permits,
                });
            }
            if !ready.is_empty() {
                // Every pick of this pass in one transaction: one commit, not one per dataset.
                let now = ctx.clock.now_ms();
                let until = now + lease_ms;
                for r in &ready {
                    shared.leases.claimed(&r.claim.owner, until);
                }
                let requests: Vec<ClaimRequest> = ready.iter().map(|r| r.claim.clone()).collect();
                match ctx.store.claim_datasets(&requests, now, until).await {
                    Ok(lists) => {
                        for (r, events) in ready.into_iter().zip(lists) {
                            let Ready {
                                claim,
                                permits: (permit, budget),
                            } = r;
                            let (owner, dataset_id, room) =
                                (claim.owner, claim.dataset_id, claim.limit);
                            if events.is_empty() {
                                shared.leases.forget(&owner);
                                let mut scheduler = shared.scheduler();
                                scheduler.finished(&dataset_id);
                                scheduler.back_off(&dataset_id, now + EMPTY_CLAIM_BACKOFF_MS);
                                due.retain(|d| d.dataset_id != dataset_id);
                                continue;
                            }
                            let full = events.len() as i64 >= room;
                            shared.scheduler().claimed(&dataset_id, full);
                            if !full {
                                // All of its due events are taken: not due until read again.
                                due.retain(|d| d.dataset_id != dataset_id);
                            }
                            let mut budget = budget;
                            drop(budget.split(room as usize - events.len()));
                            started += 1;
                            spawn_sender(&shared, dataset_id, owner, events, (permit, budget));
                        }
                    }
                    Err(e) => {
                        for r in ready {
                            shared.leases.forget(&r.claim.owner);
                            shared.scheduler().finished(&r.claim.dataset_id);
                        }
                        failed = true;
                        database_error(&e, failures);
                    }
                }
            }
        }
        if failed {
            failures += 1;
            tokio::select! {
                () = tokio::time::sleep(backoff(failures)) => {}
                () = cancel.cancelled() => return,
            }
            continue;
        }
        failures = 0;
        if started > 0 {
            skipped_linger = false;
            idle = config.idle_poll_min;
            continue;
        }
        let free = shared.scheduler().free() > 0;
        tokio::select! {
            // A sender that ends makes room: worth a pass if something waits for room (with
            // nothing due at the last look and room left, there is none; the poll goes on).
            () = shared.sender_done.notified(), if !free || !due.is_empty() => {}
            () = woken => {
                // New events: give the ones right behind them the linger to join one request.
                // A deep backlog waits for no linger: a sender of it that ends makes room for
                // its next full claim at once (sleeping through that left it idle).
                // A full claim due already (a 1,000-event request came in) waits for none.
                // With a deep backlog in flight, the sender that ends next wakes the loop: no
                // need to look (a look costs a query at every ingest commit).
                let deep = shared.scheduler().deep_in_flight();
                let full = !deep
                    && !skipped_linger
                    && match ctx
                        .store
                        .due_datasets(ctx.clock.now_ms(), i64::MIN, config.claim_limit)
                        .await
                    {
                        Ok(list) => {
                            shared.scheduler().full_claim_due(&list);
                            !list.is_empty()
                        }
                        Err(_) => false,
                    };
                skipped_linger = full;
                if !full {
                    tokio::select! {
                        () = tokio::time::sleep(config.linger) => {}
                        () = shared.sender_done.notified(), if deep => {}
                        () = cancel.cancelled() => return,
                    }
                }
                idle = config.idle_poll_min;
                due.clear();
            }
            () = tokio::time::sleep(idle), if free => {
                idle = (idle * 2).min(config.idle_poll_max);
                due.clear();
            }
            () = cancel.cancelled() => return,
        }
    }
}

fn database_error(e: &relay_store::StoreError, failures: u32) {
    if let relay_store::StoreError::DeliveryHeldElsewhere(_) = e {
        // A second relay on one SQLite database stands by; said once, not at every try.
        if failures == 0 {
            tracing::info!(error = %e, "this relay stands by for delivery: it takes over when that process stops (several delivering relays need PostgreSQL)");
        }
        return;
    }
    observability::delivery_error("database");
    tracing::warn!(error = %e, failures = failures + 1, "delivery cannot reach the database; backing off");
}

pub(super) fn spawn_sender(
    shared: &Arc<Shared>,
    dataset_id: String,
    owner: String,
    events: Vec<ClaimedEvent>,
    (permit, budget): (OwnedSemaphorePermit, OwnedSemaphorePermit),
) {
    // The dataset's request slot and the process's: free once Meta has answered. The event
    // budget stays taken until the answer is recorded, so memory stays bounded.
    let request_slot = {
        let (shared, dataset_id) = (shared.clone(), dataset_id.clone());
        RequestSlot::new(move || {
            shared.scheduler().finished(&dataset_id);
            drop(permit);
            shared.sender_done.notify_one();
        })
    };
    let claim = Claim {
        owner,
        events,
        request_slot,
    };
    let shared2 = shared.clone();
    shared.senders.spawn(async move {
        let shared = shared2;
        let owner = claim.owner.clone();
        let ids: Vec<i64> = claim.events.iter().map(|e| e.id).collect();
        let (ctx, leases) = (shared.ctx.clone(), shared.leases.clone());
        let sent = tokio::spawn(async move { sender::send_claim(&ctx, &leases, claim).await });
        match sent.await {
            Ok(Ok(())) | Ok(Err(SendError::LeaseLost { .. })) => {}
            Ok(Err(SendError::Store(e))) => {
                observability::delivery_error("database");
                tracing::warn!(dataset_id = %dataset_id, error = %e, "a send could not be recorded; its events are sent again when their lease ends");
            }
            Err(e) => {
                observability::delivery_restart("sender_panic");
                tracing::error!(dataset_id = %dataset_id, error = %e, "a sender crashed; its events are retried");
                sender::recover_after_panic(&shared.ctx, &owner, &ids).await;
            }
        }
        shared.leases.forget(&owner);
        drop(budget);
        shared.sender_done.notify_one();
    });
}

/// Renews the leases of the claims in flight every `lease / 5`.
async fn heartbeat(shared: Arc<Shared>, stop: CancellationToken) {
    let ctx = &shared.ctx;
    let every = ctx.config.lease / 5;
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = stop.cancelled() => return,
        }
        let owners = shared.leases.live_owners();
        if owners.is_empty() {
            continue;
        }
        let until = ctx.clock.now_ms() + ctx.config.lease.as_millis() as i64;
        match ctx.store.renew_leases(&owners, until).await {
            Ok(_) => shared.leases.renewed(&owners, until),
            Err(e) => {
                observability::lease_renewal_failed();
                tracing::warn!(error = %e, claims = owners.len(), "cannot renew leases; senders stop starting requests before they run out");
            }
        }
    }
}
