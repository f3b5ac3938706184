//! Delivery leases held in memory, for the SQLite backend. Pure bookkeeping: no I/O, and times
//! are passed in.
//!
//! A SQLite database is delivered from by one process at a time (`SqliteStore` holds a lock
//! file for it), so its leases need not be written to the database: a claim only reads its
//! events and a delivered event is written once, by its resolve. That halves the writer's work
//! per delivered event. After a crash nothing is held, so the events that were in flight are
//! due again at once.
//!
//! The table must agree with what claims read. A claim snapshots the held ids of its dataset
//! *before* it reads the due events, and a resolve forgets its ids only *after* its commit, so
//! an event being resolved is either excluded from the claim or already out of the due set.
//!
//! Leases are kept per claim (one owner, one dataset, one lease end), its events sorted by id:
//! renewing or releasing a claim is one step, and no per-event hashing is done.

use std::{collections::HashMap, sync::Arc};

/// What a resolve needs of a held event without reading its row again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldEvent {
    pub tenant: Arc<str>,
    pub dataset_id: Arc<str>,
    pub channel: Arc<str>,
    pub event_name: Arc<str>,
    pub accepted_at_ms: i64,
    /// The event names an earlier attempt, which moves to its history when it is sent again.
    pub had_attempt: bool,
}

#[derive(Debug)]
struct Held {
    id: i64,
    /// Its resolve is being committed: no claim may take it, even once the lease has ended.
    resolving: bool,
    event: HeldEvent,
}

#[derive(Debug)]
struct Claim {
    dataset_id: Arc<str>,
    until_ms: i64,
    /// Sorted by id.
    events: Vec<Held>,
}

impl Claim {
    fn find(&self, id: i64) -> Option<usize> {
        self.events.binary_search_by_key(&id, |h| h.id).ok()
    }
}

/// What [`LeaseTable::take`] did with the events a claim read.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Taken {
    /// Taken from another claim whose lease had ended (its request may have gone out: that
    /// attempt counts).
    pub taken_over: Vec<i64>,
    /// Left out: another claim holds them under a live lease, or its resolve is committing them.
    pub left_out: Vec<i64>,
}

#[derive(Debug, Default)]
pub struct LeaseTable {
    claims: HashMap<Arc<str>, Claim>,
    /// The owners of each dataset's claims.
    by_dataset: HashMap<Arc<str>, Vec<Arc<str>>>,
}

impl LeaseTable {
    /// Ids of `dataset_id` that no claim may take at `now_ms`: held under a live lease, or being
    /// resolved. Sorted.
    pub fn excluded(&self, dataset_id: &str, now_ms: i64) -> Vec<i64> {
        let mut held = Vec::new();
        for claim in self.claims_of(dataset_id) {
            let live = claim.until_ms >= now_ms;
            held.extend(
                claim
                    .events
                    .iter()
                    .filter(|h| live || h.resolving)
                    .map(|h| h.id),
            );
        }
        held.sort_unstable();
        held
    }

    /// Every held id, sorted.
    pub fn held_ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .claims
            .values()
            .flat_map(|c| c.events.iter().map(|h| h.id))
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Per dataset, the earliest end of a lease held on its events: when they are due again.
    pub fn earliest_lease_ends(&self) -> HashMap<Arc<str>, i64> {
        let mut ends: HashMap<Arc<str>, i64> = HashMap::with_capacity(self.by_dataset.len());
        for claim in self.claims.values() {
            ends.entry(claim.dataset_id.clone())
                .and_modify(|at| *at = (*at).min(claim.until_ms))
                .or_insert(claim.until_ms);
        }
        ends
    }

    /// Leases `events` (of one dataset, as a claim at `now_ms` reads them) to `owner` until
    /// `until_ms`. An event another claim holds moves to this one only if that lease has ended
    /// and its resolve is not being committed. (A live one can be read by a claim that looked at
    /// the held ids just before an insert leased its new rows and read just after its commit.)
    pub fn take(
        &mut self,
        owner: &str,
        now_ms: i64,
        until_ms: i64,
        events: Vec<(i64, HeldEvent)>,
    ) -> Taken {
        let mut taken = Taken::default();
        let Some(dataset_id) = events.first().map(|(_, e)| e.dataset_id.clone()) else {
            return taken;
        };
        let owner: Arc<str> = owner.into();
        let others: Vec<Arc<str>> = self
            .by_dataset
            .get(&dataset_id)
            .into_iter()
            .flatten()
            .filter(|o| ***o != *owner)
            .cloned()
            .collect();
        let mut mine = Vec::with_capacity(events.len());
        for (id, event) in events {
            let mut free = true;
            for other in &others {
                let Some(claim) = self.claims.get_mut(other) else {
                    continue;
                };
                if let Some(at) = claim.find(id) {
                    if claim.events[at].resolving || claim.until_ms >= now_ms {
                        taken.left_out.push(id);
                        free = false;
                    } else {
                        claim.events.remove(at);
                        taken.taken_over.push(id);
                    }
                    break;
                }
            }
            if free {
                mine.push(Held {
                    id,
                    resolving: false,
                    event,
                });
            }
        }
        for other in &others {
            self.drop_if_empty(other);
        }
        if mine.is_empty() {
            return taken;
        }
        let claim = self.claims.entry(owner.clone()).or_insert_with(|| Claim {
            dataset_id: dataset_id.clone(),
            until_ms,
            events: Vec::new(),
        });
        claim.until_ms = until_ms;
        claim.events.extend(mine);
        claim.events.sort_unstable_by_key(|h| h.id);
        let owners = self.by_dataset.entry(dataset_id).or_default();
        if !owners.contains(&owner) {
            owners.push(owner);
        }
        taken
    }

    /// Extends every lease of `owners` to `until_ms`. Returns how many events.
    pub fn renew(&mut self, owners: &[String], until_ms: i64) -> u64 {
        let mut renewed = 0;
        for owner in owners {
            if let Some(claim) = self.claims.get_mut(owner.as_str()) {
                claim.until_ms = until_ms;
                renewed += claim.events.len() as u64;
            }
        }
        renewed
    }

    /// How many of `ids` `owner` holds.
    pub fn count(&self, owner: &str, ids: &[i64]) -> u64 {
        self.claims.get(owner).map_or(0, |claim| {
            ids.iter().filter(|id| claim.find(**id).is_some()).count() as u64
        })
    }

    /// Drops every lease of `owner` that is not being resolved. Returns how many.
    pub fn release(&mut self, owner: &str) -> u64 {
        let Some(claim) = self.claims.get_mut(owner) else {
            return 0;
        };
        let before = claim.events.len();
        claim.events.retain(|h| h.resolving);
        let released = (before - claim.events.len()) as u64;
        self.drop_if_empty(owner);
        released
    }

    /// The events of `ids` that `owner` still holds, marked as being resolved so that no claim
    /// takes them until [`LeaseTable::end_resolve`]. In the order of `ids`.
    pub fn begin_resolve(&mut self, owner: &str, ids: &[i64]) -> Vec<(i64, HeldEvent)> {
        let Some(claim) = self.claims.get_mut(owner) else {
            return Vec::new();
        };
        let mut held = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(at) = claim.find(*id)
                && !claim.events[at].resolving
            {
                claim.events[at].resolving = true;
                held.push((*id, claim.events[at].event.clone()));
            }
        }
        held
    }

    /// Ends a resolve begun with [`LeaseTable::begin_resolve`] for `ids` (those it returned):
    /// committed, the leases are gone; otherwise they are held again as before.
    pub fn end_resolve(&mut self, owner: &str, ids: &[i64], committed: bool) {
        let Some(claim) = self.claims.get_mut(owner) else {
            return;
        };
        if committed {
            let mut done = ids.to_vec();
            done.sort_unstable();
            claim
                .events
                .retain(|h| !(h.resolving && done.binary_search(&h.id).is_ok()));
        } else {
            for id in ids {
                if let Some(at) = claim.find(*id) {
                    claim.events[at].resolving = false;
                }
            }
        }
        self.drop_if_empty(owner);
    }

    fn claims_of(&self, dataset_id: &str) -> impl Iterator<Item = &Claim> {
        self.by_dataset
            .get(dataset_id)
            .into_iter()
            .flatten()
            .filter_map(|owner| self.claims.get(owner))
    }

    fn drop_if_empty(&mut self, owner: &str) {
        let Some(claim) = self.claims.get(owner) else {
            return;
        };
        if !claim.events.is_empty() {
            return;
        }
        let dataset_id = claim.dataset_id.clone();
        self.claims.remove(owner);
        if let Some(owners) = self.by_dataset.get_mut(&dataset_id) {
            owners.retain(|o| &**o != owner);
            if owners.is_empty() {
                self.by_dataset.remove(&dataset_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(dataset: &str) -> HeldEvent {
        HeldEvent {
            tenant: "t".into(),
            dataset_id: dataset.into(),
            channel: "whatsapp".into(),
            event_name: "Purchase".into(),
            accepted_at_ms: 1,
            had_attempt: false,
        }
    }

    #[test]
    fn a_live_lease_is_excluded_and_an_expired_one_can_be_taken_over() {
        let mut t = LeaseTable::default();
        assert_eq!(
            t.take("a", 0, 100, vec![(2, held("d")), (1, held("d"))]),
            Taken::default()
        );
        assert_eq!(t.excluded("d", 100), vec![1, 2]);
        assert!(t.excluded("other", 100).is_empty());
        assert!(t.excluded("d", 101).is_empty(), "expired at 101");
        let taken = t.take("b", 101, 200, vec![(2, held("d"))]);
        assert_eq!(taken.taken_over, vec![2]);
        assert_eq!((t.count("a", &[1, 2]), t.count("b", &[1, 2])), (1, 1));
        assert!(t.begin_resolve("a", &[2]).is_empty(), "a no longer holds 2");
        assert_eq!(t.held_ids(), vec![1, 2]);
        assert_eq!(t.earliest_lease_ends()[&Arc::<str>::from("d")], 100);
    }

    #[test]
    fn an_event_being_resolved_stays_excluded_until_its_commit_even_when_expired() {
        let mut t = LeaseTable::default();
        t.take("a", 0, 100, vec![(1, held("d")), (2, held("d"))]);
        let resolving = t.begin_resolve("a", &[1]);
        assert_eq!(resolving.len(), 1);
        assert_eq!(t.excluded("d", 1_000), vec![1], "1 is being resolved");
        let taken = t.take("b", 1_000, 2_000, vec![(1, held("d")), (2, held("d"))]);
        assert_eq!(
            taken,
            Taken {
                taken_over: vec![2],
                left_out: vec![1]
            },
            "a claim never takes an event whose resolve is committing"
        );
        assert_eq!(
            t.release("a"),
            0,
            "a release leaves a resolving event alone"
        );
        t.end_resolve("a", &[1], false);
        assert_eq!(
            t.excluded("d", 50),
            vec![1, 2],
            "held again after a failed commit"
        );
        t.begin_resolve("a", &[1]);
        t.end_resolve("a", &[1], true);
        assert_eq!(t.held_ids(), vec![2], "gone after its commit");
        assert_eq!(t.release("b"), 1);
        assert!(t.claims.is_empty() && t.by_dataset.is_empty());
    }

    #[test]
    fn a_claim_never_takes_an_event_held_under_a_live_lease() {
        let mut t = LeaseTable::default();
        t.take("insert", 0, 100, vec![(7, held("d"))]);
        let taken = t.take("claim", 50, 150, vec![(7, held("d")), (8, held("d"))]);
        assert_eq!(
            taken,
            Taken {
                taken_over: vec![],
                left_out: vec![7]
            }
        );
        assert_eq!((t.count("insert", &[7]), t.count("claim", &[7, 8])), (1, 1));
    }

    #[test]
    fn renewals_and_releases_touch_only_their_owners() {
        let mut t = LeaseTable::default();
        t.take("a", 0, 100, vec![(1, held("d"))]);
        t.take("b", 0, 100, vec![(2, held("e"))]);
        assert_eq!(t.renew(&["a".into(), "nobody".into()], 500), 1);
        assert_eq!(t.excluded("d", 400), vec![1]);
        assert!(t.excluded("e", 400).is_empty());
        assert_eq!(t.release("b"), 1);
        assert_eq!(t.held_ids(), vec![1]);
    }
}
