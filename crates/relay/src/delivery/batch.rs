//! Splitting claimed events into requests: one dataset, token and test code per request, at
//! most `max_events` events and `max_bytes` bytes of event JSON.

use relay_store::ClaimedEvent;

/// Events that can go to Meta in one request.
#[derive(Debug)]
pub struct Batch {
    pub dataset_id: String,
    pub asset_id: String,
    pub test_event_code: Option<String>,
    pub events: Vec<ClaimedEvent>,
}

/// Groups `events` (kept in claim order within each group) and cuts groups at the limits.
pub fn make_batches(events: Vec<ClaimedEvent>, max_events: usize, max_bytes: usize) -> Vec<Batch> {
    let mut groups: Vec<Batch> = Vec::new();
    for event in events {
        let group = groups.iter_mut().find(|b| {
            b.dataset_id == event.dataset_id
                && b.asset_id == event.asset_id
                && b.test_event_code == event.test_event_code
        });
        match group {
            Some(batch) => batch.events.push(event),
            None => groups.push(Batch {
                dataset_id: event.dataset_id.clone(),
                asset_id: event.asset_id.clone(),
                test_event_code: event.test_event_code.clone(),
                events: vec![event],
            }),
        }
    }
    let mut batches = Vec::new();
    for group in groups {
        let mut current: Vec<ClaimedEvent> = Vec::new();
        let mut bytes = 0;
        for event in group.events {
            let size = event.payload.len() + 1;
            if !current.is_empty() && (current.len() >= max_events || bytes + size > max_bytes) {
                batches.push(Batch {
                    events: std::mem::take(&mut current),
                    ..Batch::header(&group.dataset_id, &group.asset_id, &group.test_event_code)
                });
                bytes = 0;
            }
            bytes += size;
            current.push(event);
        }
        if !current.is_empty() {
            batches.push(Batch {
                events: current,
                ..Batch::header(&group.dataset_id, &group.asset_id, &group.test_event_code)
            });
        }
    }
    batches
}

impl Batch {
    fn header(dataset_id: &str, asset_id: &str, test_event_code: &Option<String>) -> Batch {
        Batch {
            dataset_id: dataset_id.to_owned(),
            asset_id: asset_id.to_owned(),
            test_event_code: test_event_code.clone(),
            events: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn event(id: i64, dataset: &str, payload_len: usize) -> ClaimedEvent {
        ClaimedEvent {
            id,
            dataset_id: dataset.into(),
            asset_id: format!("asset-{dataset}"),
            channel: "whatsapp".into(),
            event_id: format!("e{id}"),
            event_time: 0,
            payload: "x".repeat(payload_len),
            test_event_code: None,
            attempts: 1,
            accepted_at_ms: 0,
        }
    }

    #[test]
    fn batches_never_mix_datasets() {
        let events = vec![event(1, "a", 10), event(2, "b", 10), event(3, "a", 10)];
        let batches = make_batches(events, 1000, 1 << 20);
        assert_eq!(batches.len(), 2);
        assert_eq!(
            batches[0].events.iter().map(|e| e.id).collect::<Vec<_>>(),
            [1, 3]
        );
        assert_eq!(batches[1].dataset_id, "b");
    }

    proptest! {
        #[test]
        fn every_event_lands_in_exactly_one_batch_within_limits(
            specs in proptest::collection::vec((0usize..3, 1usize..500), 0..300),
            max_events in 1usize..50,
            max_bytes in 500usize..5_000,
        ) {
            let events: Vec<_> = specs.iter().enumerate()
                .map(|(i, (d, len))| event(i as i64, ["a", "b", "c"][*d], *len))
                .collect();
            let batches = make_batches(events, max_events, max_bytes);
            let mut seen: Vec<i64> = batches.iter().flat_map(|b| b.events.iter().map(|e| e.id)).collect();
            seen.sort();
            prop_assert_eq!(seen, (0..specs.len() as i64).collect::<Vec<_>>());
            for b in &batches {
                prop_assert!(!b.events.is_empty());
                prop_assert!(b.events.len() <= max_events);
                prop_assert!(b.events.iter().all(|e| e.dataset_id == b.dataset_id));
                let bytes: usize = b.events.iter().map(|e| e.payload.len() + 1).sum();
                // A single event larger than the cap still goes alone rather than never.
                prop_assert!(bytes <= max_bytes || b.events.len() == 1);
            }
        }
    }
}
