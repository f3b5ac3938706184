//! Full requests handed from ingest straight to delivery.
//!
//! A group commit that brings at least half a request's worth of events for one dataset offers
//! them to this process's dispatcher before it inserts them. For each request slot the
//! dataset has free, the store leases the new rows as it inserts them, in the same
//! transaction, and a sender takes them once they are committed: no claim reads them back,
//! and on PostgreSQL no claim writes them a second time. The store refuses an offer while the
//! dataset has older events due (they go first), while Meta throttles it, and for a paused
//! asset's events; what is not handed over is queued and claimed as before.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use relay_store::{ClaimedEvent, HandoffOffer, NewEvent};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::{sync::CancellationToken, task::task_tracker::TaskTrackerToken};

use super::dispatcher::{Shared, spawn_sender};
use crate::observability;

/// The meeting point of the group commit and this process's dispatcher (none while delivery
/// is not running here: an ingest-only relay hands nothing over).
#[derive(Default)]
pub struct Handoff {
    dispatcher: Mutex<Option<(Arc<Shared>, CancellationToken)>>,
}

impl Handoff {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Arc<Shared>, CancellationToken)>> {
        self.dispatcher.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Delivery runs here until `cancel` fires.
    pub(super) fn attach(&self, shared: Arc<Shared>, cancel: CancellationToken) {
        *self.lock() = Some((shared, cancel));
    }

    /// Called before delivery waits for its senders: a reservation made before this holds a
    /// token of theirs (taken under the same lock), so the wait includes its senders.
    pub(super) fn detach(&self) {
        *self.lock() = None;
    }

    /// New events were queued (not handed over): this process's delivery looks for them now
    /// rather than at its next poll.
    pub fn queued(&self) {
        if let Some((shared, _)) = self.lock().as_ref() {
            shared.ctx.wake.notify_waiters();
        }
    }

    /// Request slots for the datasets with enough of `events` to fill at least half a
    /// request, as many as their events fill and the in-flight limits allow.
    pub fn reserve(&self, events: &[NewEvent]) -> Option<Reservation> {
        let (shared, in_flight) = {
            let attached = self.lock();
            let (shared, cancel) = attached.as_ref()?;
            if cancel.is_cancelled() {
                // Shutting down: no new request starts.
                return None;
            }
            (shared.clone(), shared.senders.token())
        };
        let config = &shared.ctx.config;
        let request = config.claim_limit.max(1) as usize;
        // Per dataset, in order of first appearance.
        let mut counts: Vec<(&str, usize)> = Vec::new();
        let mut at: HashMap<&str, usize> = HashMap::new();
        for e in events {
            let i = *at.entry(&e.dataset_id).or_insert_with(|| {
                counts.push((&e.dataset_id, 0));
                counts.len() - 1
            });
            counts[i].1 += 1;
        }
        let now_ms = shared.ctx.clock.now_ms();
        let lease_until_ms = now_ms + config.lease.as_millis() as i64;
        let mut slots = Vec::new();
        for (dataset_id, count) in counts {
            if count < request.div_ceil(2) {
                continue;
            }
            let mut left = count;
            while left > 0 {
                let limit = left.min(request);
                let Some(permits) = shared.take_request_slot(dataset_id, limit) else {
                    break;
                };
                // Registered for the heartbeat once its rows exist (see `start`).
                let owner = shared.leases.next_owner();
                slots.push(Slot {
                    offer: HandoffOffer {
                        dataset_id: dataset_id.to_owned(),
                        owner,
                        limit,
                    },
                    permits: Some(permits),
                });
                left -= limit;
            }
        }
        if slots.is_empty() {
            return None;
        }
        let offers = slots.iter().map(|s| s.offer.clone()).collect();
        Some(Reservation {
            _in_flight: in_flight,
            shared,
            slots,
            offers,
            now_ms,
            lease_until_ms,
        })
    }
}

struct Slot {
    offer: HandoffOffer,
    /// The process's request permit and the events' budget; taken by the sender.
    permits: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
}

/// Request slots held for one insert. Dropped unused (the insert failed), they are free again.
pub struct Reservation {
    shared: Arc<Shared>,
    slots: Vec<Slot>,
    offers: Vec<HandoffOffer>,
    pub now_ms: i64,
    pub lease_until_ms: i64,
    /// Shutdown waits for these senders too.
    _in_flight: TaskTrackerToken,
}

impl Reservation {
    pub fn offers(&self) -> &[HandoffOffer] {
        &self.offers
    }

    /// Starts a sender for each offer the store took (`claims`, one per offer, in order) and
    /// frees the slots of the others.
    pub fn start(mut self, claims: Vec<Vec<ClaimedEvent>>) {
        for (slot, events) in self.slots.iter_mut().zip(claims) {
            if events.is_empty() {
                continue;
            }
            let Some((permit, mut budget)) = slot.permits.take() else {
                continue;
            };
            drop(budget.split(slot.offer.limit.saturating_sub(events.len())));
            self.shared
                .leases
                .claimed(&slot.offer.owner, self.lease_until_ms);
            observability::delivery_handed_over(events.len());
            spawn_sender(
                &self.shared,
                slot.offer.dataset_id.clone(),
                slot.offer.owner.clone(),
                events,
                (permit, budget),
            );
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut freed = false;
        for slot in &mut self.slots {
            if slot.permits.take().is_some() {
                self.shared.scheduler().finished(&slot.offer.dataset_id);
                freed = true;
            }
        }
        if freed {
            self.shared.sender_done.notify_one();
        }
    }
}
