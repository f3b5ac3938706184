//! The outbox insert on its own: `Store::insert_events` in 1,000-event groups into a fresh
//! SQLite file (or PostgreSQL schema), as the relay's group writer calls it. Then the path of
//! one busy dataset: each group handed to a sender as it is inserted and marked delivered a
//! few groups later, as Meta's answers come back. Repeatable under
//! `valgrind --tool=callgrind` as well as timed.
//!
//! Run: `cargo bench -p relay-store --bench insert [-- EVENTS [DATABASE_URL]]`

use std::time::{Duration, Instant};

use relay_store::{Attempt, HandoffOffer, InsertOutcome, NewEvent, Resolution, Store};

/// Requests in flight for the dataset: a group is marked delivered this many groups later.
const IN_FLIGHT: usize = 4;

const GROUP: usize = 1_000;

/// A payload of the size the relay stores for its bench event (~500 bytes of JSON).
fn payload(i: usize) -> String {
    format!(
        r#"{{"event_name":"Purchase","event_time":1790000000,"event_id":"b-{i}","action_source":"business_messaging","messaging_channel":"whatsapp","user_data":{{"whatsapp_business_account_id":"102290129340398","ctwa_clid":"ARAkLkA8rmlFeiCktEJQ-QTwRiyYHAFDLMNDBH0CD3qpjd0HR4irJ6LEkR7Jw{i:08}","em":["{:064x}"],"ph":["{:064x}"]}},"custom_data":{{"value":"120.50","currency":"BRL","order_id":"order-{i}"}}}}"#,
        i * 7919,
        i * 104_729
    )
}

fn event(i: usize) -> NewEvent {
    event_in("1000000000000001", "b", i)
}

fn event_in(dataset_id: &str, tag: &str, i: usize) -> NewEvent {
    NewEvent {
        tenant: "default".into(),
        dataset_id: dataset_id.into(),
        asset_id: "102290129340398".into(),
        channel: "whatsapp".into(),
        event_id: format!("{tag}-{i}").into(),
        event_name: "Purchase".into(),
        event_time: 1_790_000_000,
        payload: payload(i).into(),
        test_event_code: None,
        accepted_at_ms: 1_790_000_000_000,
        conversation_id: None,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let events: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = args
        .next()
        .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("bench.db").display()));
    let store = relay_store::connect(&url).await.expect("the store opens");
    store.migrate().await.expect("migrations run");
    let groups: Vec<Vec<NewEvent>> = (0..events)
        .collect::<Vec<_>>()
        .chunks(GROUP)
        .map(|c| c.iter().map(|&i| event(i)).collect())
        .collect();

    let started = Instant::now();
    let mut inserted = 0;
    for group in &groups {
        let outcomes = store
            .insert_events(group)
            .await
            .expect("the insert commits");
        inserted += outcomes
            .iter()
            .filter(|o| matches!(o, InsertOutcome::Inserted(_)))
            .count();
    }
    let elapsed = started.elapsed();
    assert_eq!(inserted, events, "every bench event is new");
    // A second pass: every event is now a duplicate.
    let dup_started = Instant::now();
    for group in groups.iter().take(10) {
        let outcomes = store
            .insert_events(group)
            .await
            .expect("the insert commits");
        assert!(outcomes.iter().all(|o| *o == InsertOutcome::Duplicate));
    }
    let dup_elapsed = dup_started.elapsed();
    let dups = groups.iter().take(10).map(Vec::len).sum::<usize>();
    println!(
        "insert_events: {events} new events in {:.0} ms = {:.2} µs/event ({:.0} events/s); {dups} duplicates at {:.2} µs/event",
        elapsed.as_secs_f64() * 1e3,
        elapsed.as_secs_f64() * 1e6 / events as f64,
        events as f64 / elapsed.as_secs_f64(),
        dup_elapsed.as_secs_f64() * 1e6 / dups.max(1) as f64,
    );
    handed_off_and_delivered(store.as_ref(), events).await;
}

/// `events` of a dataset with nothing else due (an offer is refused while older events wait),
/// in groups handed off as they are inserted, each group marked delivered
/// [`IN_FLIGHT`] groups later; the time of the inserts and of the resolves apart.
async fn handed_off_and_delivered(store: &dyn Store, events: usize) {
    let groups: Vec<Vec<NewEvent>> = (0..events)
        .collect::<Vec<_>>()
        .chunks(GROUP)
        .map(|c| {
            c.iter()
                .map(|&i| event_in("1000000000000002", "h", i))
                .collect()
        })
        .collect();
    let now_ms = 1_790_000_000_000;
    let attempt = Attempt {
        attempted_at_ms: now_ms,
        outcome: "delivered".into(),
        http_status: Some(200),
        fbtrace_id: Some("AbCdEf".into()),
        message: None,
        latency_ms: 120,
    };
    let delivered = Resolution::Delivered {
        delivered_at_ms: now_ms,
    };
    let (mut inserting, mut resolving) = (Duration::ZERO, Duration::ZERO);
    let mut in_flight: std::collections::VecDeque<(String, Vec<i64>)> = Default::default();
    let mut resolved = 0;
    for (n, group) in groups.iter().enumerate() {
        let offer = HandoffOffer {
            dataset_id: group[0].dataset_id.to_string(),
            owner: format!("bench-{n}"),
            limit: group.len(),
        };
        let started = Instant::now();
        let handed = store
            .insert_events_handing_off(group, std::slice::from_ref(&offer), now_ms, now_ms + 60_000)
            .await
            .expect("the insert commits");
        inserting += started.elapsed();
        let ids: Vec<i64> = handed.claims[0].iter().map(|e| e.id).collect();
        in_flight.push_back((offer.owner, ids));
        while in_flight.len() > IN_FLIGHT || (n + 1 == groups.len() && !in_flight.is_empty()) {
            let (owner, ids) = in_flight.pop_front().expect("a group in flight");
            let started = Instant::now();
            resolved += store
                .resolve(&owner, &ids, &attempt, &delivered)
                .await
                .expect("the resolve commits");
            resolving += started.elapsed();
        }
    }
    assert_eq!(
        resolved, events as u64,
        "every event was handed off and delivered"
    );
    println!(
        "handed off and delivered: {events} events, inserts {:.0} ms = {:.2} µs/event, resolves {:.0} ms = {:.2} µs/event",
        inserting.as_secs_f64() * 1e3,
        inserting.as_secs_f64() * 1e6 / events as f64,
        resolving.as_secs_f64() * 1e3,
        resolving.as_secs_f64() * 1e6 / events as f64,
    );
}
