//! Which datasets to claim next. Pure bookkeeping, no I/O and no clock (times are passed in):
//! requests in flight per dataset and in total, fairness between datasets, short back-offs.
//!
//! Fairness: among the due datasets, the one served longest ago goes first, so a dataset with a
//! 200,000-event backlog gets its `per_dataset` requests and every other due dataset gets its
//! turn in the same pass; a deep backlog never queues other datasets' fresh events behind it.
//! A dataset gets a second request in flight only when its last claim was full (a deep
//! backlog); otherwise its new events wait for the request in flight and go out together.

use std::collections::HashMap;

use relay_store::DueDataset;

#[derive(Debug)]
pub struct Scheduler {
    max_in_flight: usize,
    per_dataset: usize,
    total: usize,
    datasets: HashMap<String, DatasetState>,
    /// Serve counter: a dataset's `last_served` is the value when it was last picked.
    sequence: u64,
}

#[derive(Debug, Default)]
struct DatasetState {
    in_flight: usize,
    last_served: u64,
    /// `last_served` before the latest pick, restored by [`Scheduler::unpick`].
    previous_served: u64,
    /// Not picked before this time (its last claim found nothing to take).
    not_before_ms: i64,
    /// Its last claim took all it was allowed: more events are probably waiting.
    deep: bool,
}

impl Scheduler {
    pub fn new(max_in_flight: usize, per_dataset: usize) -> Self {
        Scheduler {
            max_in_flight: max_in_flight.max(1),
            per_dataset: per_dataset.max(1),
            total: 0,
            datasets: HashMap::new(),
            sequence: 0,
        }
    }

    /// Requests that may still start.
    pub fn free(&self) -> usize {
        self.max_in_flight.saturating_sub(self.total)
    }

    pub fn in_flight(&self) -> usize {
        self.total
    }

    /// Picks up to `free()` of `due` (each at most once a call) and counts them as in flight:
    /// least recently served first, then earliest due. Skips datasets at their own limit and
    /// those backing off at `now_ms`.
    pub fn pick(&mut self, due: &[DueDataset], now_ms: i64) -> Vec<String> {
        let mut candidates: Vec<(&DueDataset, u64)> = due
            .iter()
            .filter_map(|d| {
                let state = self.datasets.get(&d.dataset_id);
                let eligible = state.is_none_or(|s| {
                    let room = s.in_flight == 0 || (s.deep && s.in_flight < self.per_dataset);
                    room && s.not_before_ms <= now_ms
                });
                eligible.then(|| (d, state.map_or(0, |s| s.last_served)))
            })
            .collect();
        candidates.sort_by_key(|(d, served)| (*served, d.due_at_ms));
        candidates.dedup_by(|a, b| a.0.dataset_id == b.0.dataset_id);
        let picked: Vec<String> = candidates
            .into_iter()
            .take(self.free())
            .map(|(d, _)| d.dataset_id.clone())
            .collect();
        for id in &picked {
            self.serve(id);
        }
        picked
    }

    /// Counts a request of `dataset_id` as in flight and the dataset as served now.
    fn serve(&mut self, dataset_id: &str) {
        self.sequence += 1;
        let state = self.datasets.entry(dataset_id.to_owned()).or_default();
        state.in_flight += 1;
        state.previous_served = state.last_served;
        state.last_served = self.sequence;
        self.total += 1;
    }

    /// Counts a request for `dataset_id` as in flight, if the limits leave room for it: a full
    /// request handed over by ingest ([`super::handoff`]), which is served like a pick.
    pub fn take_slot(&mut self, dataset_id: &str) -> bool {
        if self.free() == 0 {
            return false;
        }
        if self
            .datasets
            .get(dataset_id)
            .is_some_and(|s| s.in_flight >= self.per_dataset)
        {
            return false;
        }
        self.serve(dataset_id);
        true
    }

    /// A pick that could not start (no room left in this pass): it keeps its place in the
    /// queue, as if it had not been picked.
    pub fn unpick(&mut self, dataset_id: &str) {
        if let Some(state) = self.datasets.get_mut(dataset_id)
            && state.in_flight > 0
        {
            state.in_flight -= 1;
            state.last_served = state.previous_served;
            self.total = self.total.saturating_sub(1);
        }
    }

    /// A picked dataset's claim took `full` = as many events as it was allowed.
    pub fn claimed(&mut self, dataset_id: &str, full: bool) {
        if let Some(state) = self.datasets.get_mut(dataset_id) {
            state.deep = full;
        }
    }

    /// Datasets the store found with a full claim due: deep, and no longer backing off,
    /// whatever their last claim took (one that caught up with ingest found nothing, or less
    /// than a full claim, while whole requests kept coming in).
    pub fn full_claim_due(&mut self, due: &[DueDataset]) {
        for d in due {
            if let Some(state) = self.datasets.get_mut(&d.dataset_id) {
                state.deep = true;
                state.not_before_ms = i64::MIN;
            }
        }
    }

    /// A dataset with a deep backlog has a request in flight: when it ends, the next full claim
    /// can go at once, with no linger to wait out.
    pub fn deep_in_flight(&self) -> bool {
        self.datasets.values().any(|s| s.deep && s.in_flight > 0)
    }

    /// A picked dataset's claim or send is over.
    pub fn finished(&mut self, dataset_id: &str) {
        if let Some(state) = self.datasets.get_mut(dataset_id)
            && state.in_flight > 0
        {
            state.in_flight -= 1;
            self.total = self.total.saturating_sub(1);
        }
    }

    /// Skips the dataset until `until_ms` (a claim that found nothing: its events belong to a
    /// paused asset, or another relay took them).
    pub fn back_off(&mut self, dataset_id: &str, until_ms: i64) {
        self.datasets
            .entry(dataset_id.to_owned())
            .or_default()
            .not_before_ms = until_ms;
    }

    /// Forgets idle datasets that would sort before every due dataset anyway (served longer
    /// ago than all of them), so the map stays about as large as the live datasets. A dataset
    /// served more recently is kept even while it is not due: forgetting it would put it back
    /// at the front of the queue, ahead of datasets that have been waiting (under saturation
    /// that starves them).
    pub fn prune(&mut self, due: &[DueDataset], now_ms: i64) {
        let floor = due
            .iter()
            .filter_map(|d| self.datasets.get(&d.dataset_id))
            .map(|s| s.last_served)
            .min()
            .unwrap_or(u64::MAX);
        self.datasets
            .retain(|_, s| s.in_flight > 0 || s.not_before_ms > now_ms || s.last_served >= floor);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn due(ids: &[(&str, i64)]) -> Vec<DueDataset> {
        ids.iter()
            .map(|(id, at)| DueDataset {
                dataset_id: (*id).into(),
                due_at_ms: *at,
            })
            .collect()
    }

    #[test]
    fn a_handed_over_request_counts_against_both_limits_and_goes_to_the_back_of_the_queue() {
        let mut s = Scheduler::new(3, 2);
        assert!(s.take_slot("a") && s.take_slot("a"));
        assert!(!s.take_slot("a"), "a is at its own limit");
        assert!(s.take_slot("b"));
        assert!(!s.take_slot("c"), "the process is at its limit");
        s.finished("a");
        s.finished("b");
        // Served just now: a dataset waiting since the start goes first.
        assert_eq!(s.pick(&due(&[("b", 0), ("c", 500)]), 1_000), ["c", "b"]);
    }

    #[test]
    fn a_deep_backlog_gets_its_own_limit_and_every_other_dataset_its_turn() {
        let mut s = Scheduler::new(8, 2);
        // "big" has been due far longer than the others.
        let list = due(&[("big", 0), ("a", 900), ("b", 950), ("c", 990)]);
        let first = s.pick(&list, 1_000);
        assert_eq!(first, ["big", "a", "b", "c"]);
        for id in &first {
            s.claimed(id, true);
        }
        // Next pass: each deep dataset gets its second request, big first (served first).
        let second = s.pick(&list, 1_000);
        assert_eq!(second, ["big", "a", "b", "c"]);
        assert!(
            s.pick(&list, 1_000).is_empty(),
            "every dataset at its limit"
        );
        assert!(s.deep_in_flight());
        assert_eq!(s.in_flight(), 8);
    }

    #[test]
    fn a_shallow_dataset_waits_for_its_request_in_flight() {
        let mut s = Scheduler::new(8, 4);
        let list = due(&[("a", 0)]);
        assert_eq!(s.pick(&list, 0), ["a"]);
        s.claimed("a", false);
        assert!(s.pick(&list, 0).is_empty(), "one request at a time");
        s.finished("a");
        assert_eq!(s.pick(&list, 0), ["a"]);
    }

    #[test]
    fn a_full_claim_due_makes_a_dataset_deep_and_ends_its_back_off() {
        let mut s = Scheduler::new(8, 2);
        let list = due(&[("a", 0)]);
        assert_eq!(s.pick(&list, 0), ["a"]);
        // Its claim caught up with ingest (not full), and the next one found nothing.
        s.claimed("a", false);
        s.back_off("a", 250);
        assert!(s.pick(&list, 10).is_empty());
        // Then a whole 1,000-event request came in.
        s.full_claim_due(&list);
        assert_eq!(
            s.pick(&list, 10),
            ["a"],
            "a second request for a full claim"
        );
        assert!(s.pick(&list, 10).is_empty(), "and no more than its limit");
    }

    #[test]
    fn the_least_recently_served_dataset_goes_first() {
        let mut s = Scheduler::new(1, 4);
        let list = due(&[("a", 0), ("b", 10), ("c", 20)]);
        let mut order = Vec::new();
        for _ in 0..6 {
            let picked = s.pick(&list, 100);
            assert_eq!(picked.len(), 1);
            s.finished(&picked[0]);
            order.push(picked[0].clone());
        }
        assert_eq!(order, ["a", "b", "c", "a", "b", "c"]);
    }

    #[test]
    fn a_dataset_backing_off_is_skipped_until_its_time() {
        let mut s = Scheduler::new(4, 4);
        s.back_off("a", 500);
        let list = due(&[("a", 0), ("b", 0)]);
        assert_eq!(s.pick(&list, 499), ["b"]);
        s.finished("b");
        assert_eq!(s.pick(&list, 500), ["a", "b"]);
    }

    #[test]
    fn finishing_an_unknown_dataset_changes_nothing() {
        let mut s = Scheduler::new(2, 1);
        s.finished("nobody");
        assert_eq!(s.free(), 2);
    }

    proptest! {
        #[test]
        fn limits_hold_whatever_the_order_of_picks_and_finishes(
            ops in proptest::collection::vec((0usize..6, any::<bool>()), 1..200),
            max in 1usize..10,
            per in 1usize..4,
        ) {
            let names = ["a", "b", "c", "d", "e", "f"];
            let list = due(&names.iter().map(|n| (*n, 0)).collect::<Vec<_>>());
            let mut s = Scheduler::new(max, per);
            let mut live: HashMap<String, usize> = HashMap::new();
            for (k, pick) in ops {
                if pick {
                    for id in s.pick(&list, 0) {
                        s.claimed(&id, k % 2 == 0);
                        *live.entry(id).or_default() += 1;
                    }
                } else if let Some(n) = live.get_mut(names[k]).filter(|n| **n > 0) {
                    *n -= 1;
                    s.finished(names[k]);
                }
                let total: usize = live.values().sum();
                prop_assert_eq!(total, s.in_flight());
                prop_assert!(total <= max);
                prop_assert!(live.values().all(|n| *n <= per));
            }
        }
    }

    #[test]
    fn a_dataset_idle_for_a_moment_does_not_jump_ahead_of_one_that_kept_waiting() {
        let mut s = Scheduler::new(1, 1);
        // "waiting" was served first and has had events due ever since.
        assert_eq!(s.pick(&due(&[("waiting", 0)]), 0), ["waiting"]);
        s.finished("waiting");
        assert_eq!(s.pick(&due(&[("brief", 0)]), 10), ["brief"]);
        s.finished("brief");
        // "brief" is not due when the list is read again, then is due once more.
        s.prune(&due(&[("waiting", 5)]), 20);
        let picked = s.pick(&due(&[("brief", 30), ("waiting", 5)]), 40);
        assert_eq!(
            picked,
            ["waiting"],
            "served longer ago, waiting longer: it goes first"
        );
    }

    #[test]
    fn a_pick_that_could_not_start_keeps_its_place() {
        let mut s = Scheduler::new(4, 1);
        let list = due(&[("a", 0), ("b", 1), ("c", 2)]);
        assert_eq!(s.pick(&list, 10), ["a", "b", "c"]);
        s.finished("a");
        // b and c found no room this pass.
        s.unpick("b");
        s.unpick("c");
        assert_eq!(s.in_flight(), 0);
        assert_eq!(
            s.pick(&list, 20),
            ["b", "c", "a"],
            "a was served; b and c were not"
        );
    }
}
