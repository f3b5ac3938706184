//! Group commit: one writer task commits the events of many concurrent requests in one
//! transaction (SQLite has a single writer; one transaction for many small requests is what
//! makes single-event requests fast). Each request still gets its answer only after its events
//! are committed.
//!
//! Fair between clients: waiting requests sit in one lane per tenant. A group takes every
//! waiting small request first, then one large request per lane in turn, so a tenant flooding
//! 1,000-event batches delays another tenant's single event by about one group, never by the
//! whole queue. A group that fails is retried request by request, so one request's bad data
//! never fails the others committed with it.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use relay_store::{InsertOutcome, NewEvent, Store, StoreError};

use crate::delivery::handoff::Handoff;
use tokio::sync::{mpsc, oneshot};

/// Most events committed in one group transaction: small enough that a single event waiting
/// behind a group of large batches waits tens of milliseconds, not hundreds.
const MAX_GROUP_EVENTS: usize = 2_000;
/// Requests this small join the next group whatever their lane.
const SMALL_JOB_EVENTS: usize = 50;

pub struct WriteJob {
    /// The fairness lane: the request's tenant.
    pub lane: Arc<str>,
    pub events: Vec<NewEvent>,
    pub reply: oneshot::Sender<Result<Vec<InsertOutcome>, StoreError>>,
}

/// Requests waiting for a group, by lane, in arrival order within each lane.
struct Lanes<J> {
    small: VecDeque<J>,
    lanes: HashMap<Arc<str>, VecDeque<J>>,
    /// Lanes with large requests waiting, in round-robin order.
    order: VecDeque<Arc<str>>,
}

/// What the lanes need to know of a request.
trait Queued {
    fn lane(&self) -> Arc<str>;
    fn size(&self) -> usize;
}

impl Queued for WriteJob {
    fn lane(&self) -> Arc<str> {
        self.lane.clone()
    }
    fn size(&self) -> usize {
        self.events.len()
    }
}

impl<J> Default for Lanes<J> {
    fn default() -> Self {
        Lanes {
            small: VecDeque::new(),
            lanes: HashMap::new(),
            order: VecDeque::new(),
        }
    }
}

impl<J: Queued> Lanes<J> {
    fn push(&mut self, job: J) {
        if job.size() <= SMALL_JOB_EVENTS {
            self.small.push_back(job);
            return;
        }
        let lane = job.lane();
        let queue = self.lanes.entry(lane.clone()).or_default();
        if queue.is_empty() {
            self.order.push_back(lane);
        }
        queue.push_back(job);
    }

    fn is_empty(&self) -> bool {
        self.small.is_empty() && self.order.is_empty()
    }

    /// The next group: every small request (up to the cap), then large ones a lane at a time.
    /// Always at least one request, so a request larger than the cap still goes alone.
    fn take_group(&mut self, max_events: usize) -> Vec<J> {
        let mut group = Vec::new();
        let mut total = 0;
        while let Some(job) = self.small.front() {
            if !group.is_empty() && total + job.size() > max_events {
                return group;
            }
            total += job.size();
            group.push(self.small.pop_front().expect("front exists"));
        }
        while let Some(lane) = self.order.pop_front() {
            let queue = self
                .lanes
                .get_mut(&lane)
                .expect("ordered lanes have queues");
            let size = queue.front().map_or(0, Queued::size);
            if !group.is_empty() && total + size > max_events {
                self.order.push_front(lane);
                break;
            }
            total += size;
            group.push(queue.pop_front().expect("ordered lanes are not empty"));
            if queue.is_empty() {
                self.lanes.remove(&lane);
            } else {
                self.order.push_back(lane);
            }
        }
        group
    }
}

/// The writer task: runs until every sender is dropped. Full requests of a dataset go
/// straight to this process's delivery through `handoff` when it has room for them.
pub async fn run(store: Arc<dyn Store>, mut jobs: mpsc::Receiver<WriteJob>, handoff: Arc<Handoff>) {
    let mut waiting: Lanes<WriteJob> = Lanes::default();
    loop {
        if waiting.is_empty() {
            match jobs.recv().await {
                Some(job) => waiting.push(job),
                None => return,
            }
        }
        while let Ok(job) = jobs.try_recv() {
            waiting.push(job);
        }
        let group = waiting.take_group(MAX_GROUP_EVENTS);
        commit(store.as_ref(), &handoff, group).await;
    }
}

async fn commit(store: &dyn Store, handoff: &Handoff, mut group: Vec<WriteJob>) {
    let sizes: Vec<usize> = group.iter().map(|j| j.events.len()).collect();
    let all: Vec<NewEvent> = group
        .iter()
        .flat_map(|j| j.events.iter().cloned())
        .collect();
    let inserted = match handoff.reserve(&all) {
        Some(reservation) => store
            .insert_events_handing_off(
                &all,
                reservation.offers(),
                reservation.now_ms,
                reservation.lease_until_ms,
            )
            .await
            .map(|handed| {
                let handed_over: usize = handed.claims.iter().map(Vec::len).sum();
                reservation.start(handed.claims);
                (handed.outcomes, handed_over)
            }),
        None => store.insert_events(&all).await.map(|o| (o, 0)),
    };
    match inserted {
        Ok((outcomes, handed_over)) => {
            let stored = outcomes
                .iter()
                .filter(|o| matches!(o, InsertOutcome::Inserted(_)))
                .count();
            if stored > handed_over {
                handoff.queued();
            }
            let mut outcomes = outcomes.into_iter();
            for (job, size) in group.into_iter().zip(sizes) {
                let _ = job.reply.send(Ok(outcomes.by_ref().take(size).collect()));
            }
        }
        Err(e) if group.len() > 1 => {
            // Nothing of the group was committed. Each request alone, so a request whose own
            // data the database refuses fails alone.
            tracing::warn!(error = %e, requests = group.len(), "group insert failed; committing its requests one by one");
            for job in group.drain(..) {
                let result = store.insert_events(&job.events).await;
                match &result {
                    Ok(outcomes)
                        if outcomes
                            .iter()
                            .any(|o| matches!(o, InsertOutcome::Inserted(_))) =>
                    {
                        handoff.queued();
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, events = job.events.len(), "request insert failed");
                    }
                }
                let _ = job.reply.send(result);
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "insert failed");
            if let Some(job) = group.pop() {
                let _ = job.reply.send(Err(e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Job(&'static str, usize);

    impl Queued for Job {
        fn lane(&self) -> Arc<str> {
            Arc::from(self.0)
        }
        fn size(&self) -> usize {
            self.1
        }
    }

    fn names(group: &[Job]) -> Vec<(&'static str, usize)> {
        group.iter().map(|j| (j.0, j.1)).collect()
    }

    #[test]
    fn a_small_request_joins_the_next_group_however_many_large_ones_wait() {
        let mut lanes = Lanes::default();
        for _ in 0..64 {
            lanes.push(Job("flood", 1_000));
        }
        lanes.push(Job("other", 1));
        let first = lanes.take_group(5_000);
        assert_eq!(first[0].0, "other", "the small request goes first");
        assert_eq!(first.len(), 5, "then large requests up to the cap");
    }

    #[test]
    fn large_requests_take_turns_by_lane() {
        let mut lanes = Lanes::default();
        for _ in 0..3 {
            lanes.push(Job("a", 1_000));
        }
        lanes.push(Job("b", 1_000));
        lanes.push(Job("c", 1_000));
        let group = lanes.take_group(3_000);
        assert_eq!(names(&group), [("a", 1_000), ("b", 1_000), ("c", 1_000)]);
        assert_eq!(
            names(&lanes.take_group(3_000)),
            [("a", 1_000), ("a", 1_000)]
        );
        assert!(lanes.is_empty());
    }

    #[test]
    fn a_request_over_the_cap_still_goes_alone() {
        let mut lanes = Lanes::default();
        lanes.push(Job("a", 9_000));
        lanes.push(Job("b", 100));
        assert_eq!(names(&lanes.take_group(5_000)), [("a", 9_000)]);
        assert_eq!(names(&lanes.take_group(5_000)), [("b", 100)]);
    }
}
