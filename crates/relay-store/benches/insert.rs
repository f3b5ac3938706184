//! The outbox insert on its own: `Store::insert_events` in 1,000-event groups into a fresh
//! SQLite file (or PostgreSQL schema), as the relay's group writer calls it. Repeatable under
//! `valgrind --tool=callgrind` as well as timed.
//!
//! Run: `cargo bench -p relay-store --bench insert [-- EVENTS [DATABASE_URL]]`

use std::time::Instant;

use relay_store::{InsertOutcome, NewEvent};

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
    NewEvent {
        tenant: "default".into(),
        dataset_id: "1000000000000001".into(),
        asset_id: "102290129340398".into(),
        channel: "whatsapp".into(),
        event_id: format!("b-{i}").into(),
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
}
