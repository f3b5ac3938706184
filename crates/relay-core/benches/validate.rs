//! The domain's share of ingest CPU: parse a 1,000-event request body, validate and hash each
//! event, serialise the payload sent to Meta. No I/O, so it is repeatable under
//! `valgrind --tool=callgrind` (instruction counts) as well as timed.
//!
//! Run: `cargo bench -p relay-core --bench validate [-- EVENTS]`

use std::{hint::black_box, time::Instant};

use relay_core::{ValidationOptions, validate_event};
use serde_json::{Value, json};

/// The relay's allocator, so allocation costs what it costs in `serve`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NOW: i64 = 1_790_000_000;

/// The event the relay bench (`capi-relay bench relay`) sends: WhatsApp, e-mail, phone, value.
fn event(i: usize) -> Value {
    json!({
        "event_name": "Purchase",
        "event_time": NOW,
        "event_id": format!("b-{i}"),
        "messaging_channel": "whatsapp",
        "user_data": {
            "whatsapp_business_account_id": "102290129340398",
            "ctwa_clid": format!("ARAkLkA8rmlFeiCktEJQ-QTwRiyYHAFDLMNDBH0CD3qpjd0HR4irJ6LEkR7Jw{i:08}"),
            "em": format!("customer{i}@example.com"),
            "ph": format!("+55 11 9{:04} {:04}", (i / 10_000) % 10_000, i % 10_000),
        },
        "custom_data": {"currency": "BRL", "value": "120.50", "order_id": format!("order-{i}")}
    })
}

fn main() {
    let events: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20_000);
    let bodies: Vec<Vec<u8>> = (0..events)
        .collect::<Vec<_>>()
        .chunks(1_000)
        .map(|c| {
            serde_json::to_vec(&json!({"data": c.iter().map(|&i| event(i)).collect::<Vec<_>>()}))
        })
        .collect::<Result<_, _>>()
        .expect("bench events serialise");
    let options = ValidationOptions::default();

    let started = Instant::now();
    let mut payload_bytes = 0;
    for body in &bodies {
        let request: Value = serde_json::from_slice(body).expect("bench body parses");
        for input in request["data"].as_array().expect("data is an array") {
            let valid = validate_event(input, &options, NOW).expect("bench events are valid");
            payload_bytes +=
                black_box(serde_json::to_string(&valid.event).expect("serialises")).len();
        }
    }
    let elapsed = started.elapsed();
    println!(
        "parse + validate + payload: {events} events in {:.1} ms = {:.2} µs/event ({:.0} events/s on one core), {} payload bytes/event",
        elapsed.as_secs_f64() * 1e3,
        elapsed.as_secs_f64() * 1e6 / events as f64,
        events as f64 / elapsed.as_secs_f64(),
        payload_bytes / events.max(1),
    );
}
