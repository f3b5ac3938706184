//! Delivery at partner scale, from the outside: many datasets at once against a slow Graph,
//! leases that outlive slow requests, a lease taken over, a crashing sender, and fairness
//! between a throttled or deep dataset and everyone else.

use std::{collections::HashSet, time::Duration};

use capi_relay::{delivery::hooks, simulator::Faults};
use serde_json::{Value, json};

use crate::{
    app::{Backend, TestApp, prepare_env, spawn_app_on, test_config},
    helpers::now,
};

both_backends!(
    two_hundred_datasets_at_200_ms_are_delivered_concurrently,
    a_graph_slower_than_half_the_lease_loses_no_lease_and_sends_nothing_twice,
    a_lease_taken_over_is_counted_and_its_first_owner_sends_nothing_more,
    a_sender_panic_is_survived_and_its_events_are_retried,
    a_throttled_dataset_and_a_deep_backlog_do_not_hold_back_fresh_events,
    a_dataset_sends_its_next_request_while_its_last_answer_is_recorded,
    full_requests_go_from_ingest_straight_to_delivery_once_each,
    a_stored_payload_that_cannot_be_read_is_a_dead_letter_and_the_rest_go_out,
);

mod sqlite_only {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_other_process_can_take_the_leases_of_a_relay_delivering_from_sqlite() {
        super::no_other_process_can_take_the_leases_of_a_relay_delivering_from_sqlite().await
    }
}

fn event(asset: &str, tag: &str, i: usize) -> Value {
    json!({
        "event_name": "Purchase",
        "event_time": now() - 60,
        "event_id": format!("{tag}-{i}"),
        "messaging_channel": "whatsapp",
        "user_data": {"whatsapp_business_account_id": asset, "ctwa_clid": format!("ARAk-{tag}-{i}")},
        "custom_data": {"currency": "BRL", "value": "10.00"}
    })
}

async fn post_all(app: &TestApp, events: Vec<Value>) {
    for chunk in events.chunks(1_000) {
        let (status, body) = app.post_events(chunk).await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["accepted"], chunk.len(), "{body}");
    }
}

fn assert_no_duplicates(app: &TestApp, expected: usize) {
    let ids = app.delivered_ids();
    let unique: HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), expected, "every event delivered");
    assert_eq!(ids.len(), expected, "no event delivered twice");
    assert_eq!(app.sim.stats_duplicate_events(), 0);
}

async fn two_hundred_datasets_at_200_ms_are_delivered_concurrently(backend: Backend) {
    let Some(env) = prepare_env(backend).await else {
        return;
    };
    let config = test_config(&env.db.url, &env.sim_url, &env.vault);
    let app = spawn_app_on(env, config).await;
    let assets = app.add_wabas("default", 0, 200).await;
    app.sim.set_faults(Faults {
        latency_ms: 200,
        ..Faults::default()
    });
    let events: Vec<Value> = (0..2_000)
        .map(|i| event(&assets[i % 200].0, "many", i))
        .collect();
    let started = std::time::Instant::now();
    post_all(&app, events).await;
    app.wait_for_empty_queue(Duration::from_secs(60)).await;
    let took = started.elapsed();
    assert_no_duplicates(&app, 2_000);
    let most = app.sim.stats_max_in_flight();
    eprintln!(
        "200 datasets at 200 ms: {} requests, at most {most} in flight, {took:?}",
        app.sim.stats_requests()
    );
    assert!(most >= 32, "only {most} requests were in flight at once");
}

async fn a_graph_slower_than_half_the_lease_loses_no_lease_and_sends_nothing_twice(
    backend: Backend,
) {
    let Some(env) = prepare_env(backend).await else {
        return;
    };
    let mut config = test_config(&env.db.url, &env.sim_url, &env.vault);
    // Each request takes 3.2 s, over half the 6 s lease; a claim of 300 events goes out in
    // three sequential 100-event requests, so it lives ~10 s: longer than its first lease.
    config.graph_timeout = Duration::from_millis(3_500);
    config.delivery.lease = Duration::from_secs(6);
    config.delivery.batch_max_events = 100;
    config.delivery.claim_limit = 300;
    config.delivery.per_dataset_in_flight = 1;
    let app = spawn_app_on(env, config).await;
    let assets = app.add_wabas("default", 1_000, 10).await;
    app.sim.set_faults(Faults {
        latency_ms: 3_200,
        ..Faults::default()
    });
    let events: Vec<Value> = (0..3_000)
        .map(|i| event(&assets[i % 10].0, "slow", i))
        .collect();
    post_all(&app, events).await;
    app.wait_for_empty_queue(Duration::from_secs(60)).await;
    assert_no_duplicates(&app, 3_000);
    // A lease that ran out would have let a second claim send again: one attempt each.
    for i in (0..3_000).step_by(97) {
        let (status, body) = app.get_json(&format!("/v1/events/slow-{i}")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["attempts"].as_array().map(Vec::len), Some(1), "{body}");
    }
}

/// Runs `sql` on the test's database directly (as an operator or a fault would); rows changed.
async fn execute(backend: Backend, db_url: &str, sql: String) -> u64 {
    let sql = sqlx::AssertSqlSafe(sql);
    match backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(db_url).await.unwrap();
            sqlx::query(sql)
                .execute(&pool)
                .await
                .unwrap()
                .rows_affected()
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(db_url).await.unwrap();
            sqlx::query(sql)
                .execute(&pool)
                .await
                .unwrap()
                .rows_affected()
        }
    }
}

async fn metric(app: &TestApp, name: &str) -> f64 {
    let text = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A relay whose 300-event claims go out as three 100-event requests, one at a time, to a Meta
/// answering in `latency_ms`; and one asset of its own (number `asset`).
async fn one_claim_of_three_requests(
    backend: Backend,
    asset: u64,
    latency_ms: u64,
) -> Option<(TestApp, Vec<(String, String)>)> {
    let env = prepare_env(backend).await?;
    let mut config = test_config(&env.db.url, &env.sim_url, &env.vault);
    config.delivery.batch_max_events = 100;
    config.delivery.claim_limit = 300;
    config.delivery.per_dataset_in_flight = 1;
    let app = spawn_app_on(env, config).await;
    let assets = app.add_wabas("default", asset, 1).await;
    app.sim.set_faults(Faults {
        latency_ms,
        ..Faults::default()
    });
    Some((app, assets))
}

async fn a_lease_taken_over_is_counted_and_its_first_owner_sends_nothing_more(backend: Backend) {
    if backend == Backend::Sqlite {
        eprintln!(
            "SKIPPED on SQLite: its leases live in the one process that delivers from the database \
             file, so no other owner can take a live one (tested by \
             delivery::sqlite_only::no_other_process_can_take_the_leases_of_a_relay_delivering_from_sqlite); \
             an expired lease's old owner writing nothing is tested by the store's contract \
             (an_expired_lease_moves_to_another_owner)"
        );
        return;
    }
    let Some((app, assets)) = one_claim_of_three_requests(backend, 2_000, 1_000).await else {
        return;
    };
    let db_url = app.db.url.clone();
    let lost_before = metric(&app, "capi_relay_leases_lost_total").await;
    let events: Vec<Value> = (0..300).map(|i| event(&assets[0].0, "steal", i)).collect();
    post_all(&app, events).await;
    // The claim's first request is on its way; another owner takes the lease meanwhile.
    app.wait_until(Duration::from_secs(10), "a request in flight", |app| {
        app.sim.stats_requests() >= 1
    })
    .await;
    let far = capi_relay::clock::now_ms() + 3_600_000;
    let steal = format!(
        "UPDATE events SET lease_owner = 'thief', lease_until_ms = {far}, next_attempt_at_ms = {far} \
         WHERE state = 'sending'"
    );
    let stolen = execute(backend, &db_url, steal).await;
    assert_eq!(stolen, 300, "the whole claim was in flight");
    app.wait_until(Duration::from_secs(10), "the first answer", |app| {
        app.sim.stats_events_accepted() >= 100
    })
    .await;
    // Two more requests' worth of time: the first owner must not send the other 200.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(
        app.sim.stats_events_accepted(),
        100,
        "only the request already in flight reached Meta"
    );
    assert_eq!(app.sim.stats_requests(), 1);
    let lost = metric(&app, "capi_relay_leases_lost_total").await - lost_before;
    assert!(lost >= 100.0, "lost leases counted: {lost}");
}

/// On SQLite another process (here: another store on the same file, as `capi-relay` in a second
/// terminal would open it) cannot claim while a relay delivers, and every event goes out once.
async fn no_other_process_can_take_the_leases_of_a_relay_delivering_from_sqlite() {
    let Some((app, assets)) = one_claim_of_three_requests(Backend::Sqlite, 2_100, 500).await else {
        return;
    };
    let events: Vec<Value> = (0..300).map(|i| event(&assets[0].0, "thief", i)).collect();
    post_all(&app, events).await;
    app.wait_until(Duration::from_secs(10), "a request in flight", |app| {
        app.sim.stats_requests() >= 1
    })
    .await;
    let other = relay_store::connect(&app.db.url).await.unwrap();
    let far = capi_relay::clock::now_ms() + 3_600_000;
    let taken = other
        .claim_dataset("thief", &assets[0].1, far, far + 10_000, 1_000)
        .await;
    assert!(
        matches!(
            taken,
            Err(relay_store::StoreError::DeliveryHeldElsewhere(_))
        ),
        "{taken:?}"
    );
    app.wait_until(Duration::from_secs(20), "all delivered", |app| {
        app.sim.stats_events_accepted() >= 300
    })
    .await;
    assert_no_duplicates(&app, 300);
}

async fn a_sender_panic_is_survived_and_its_events_are_retried(backend: Backend) {
    let Some(env) = prepare_env(backend).await else {
        return;
    };
    let config = test_config(&env.db.url, &env.sim_url, &env.vault);
    let app = spawn_app_on(env, config).await;
    // A dataset of this test's own: the hook is process-wide.
    let offset = if backend == Backend::Sqlite {
        3_000
    } else {
        3_100
    };
    let assets = app.add_wabas("default", offset, 1).await;
    let (asset, dataset) = &assets[0];
    hooks::panic_next_send(dataset);
    post_all(&app, vec![event(asset, "panic", 1)]).await;
    app.wait_for_empty_queue(Duration::from_secs(20)).await;
    post_all(&app, vec![event(asset, "panic", 2)]).await;
    app.wait_for_empty_queue(Duration::from_secs(20)).await;
    assert_no_duplicates(&app, 2);
    let (_, body) = app.get_json("/v1/events/panic-1").await;
    let outcomes: Vec<&str> = body["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["outcome"].as_str())
        .collect();
    assert_eq!(outcomes, ["internal_error", "delivered"], "{body}");
    assert!(metric(&app, "capi_relay_delivery_restarts_total").await >= 1.0);
}

async fn a_throttled_dataset_and_a_deep_backlog_do_not_hold_back_fresh_events(backend: Backend) {
    let Some(env) = prepare_env(backend).await else {
        return;
    };
    let mut config = test_config(&env.db.url, &env.sim_url, &env.vault);
    // 100-event requests at 300 ms: the deep dataset's 10,000 events take seconds to drain.
    config.delivery.batch_max_events = 100;
    config.delivery.claim_limit = 100;
    let app = spawn_app_on(env, config).await;
    let assets = app.add_wabas("default", 4_000, 22).await;
    let (throttled, deep, fresh) = (&assets[0], &assets[1], &assets[2..]);
    app.sim.set_faults(Faults {
        latency_ms: 300,
        throttle_datasets: vec![throttled.1.clone()],
        ..Faults::default()
    });
    let mut backlog: Vec<Value> = (0..500).map(|i| event(&throttled.0, "thr", i)).collect();
    backlog.extend((0..10_000).map(|i| event(&deep.0, "deep", i)));
    post_all(&app, backlog).await;
    // While those are on their way, 20 other datasets get one event each.
    let started = std::time::Instant::now();
    let events: Vec<Value> = fresh
        .iter()
        .enumerate()
        .map(|(i, (asset, _))| event(asset, "fresh", i))
        .collect();
    post_all(&app, events).await;
    app.wait_until(Duration::from_secs(20), "the fresh events", |app| {
        app.delivered_ids()
            .iter()
            .filter(|id| id.starts_with("fresh-"))
            .count()
            == 20
    })
    .await;
    let waited = started.elapsed();
    let deep_done = app
        .delivered_ids()
        .iter()
        .filter(|id| id.starts_with("deep-"))
        .count();
    eprintln!(
        "fresh events delivered {waited:?} after their POST; {deep_done} of the deep backlog by then"
    );
    assert!(
        deep_done < 10_000,
        "the deep backlog was still going (else the test shows nothing)"
    );
    assert!(
        waited < Duration::from_secs(3),
        "fresh events waited {waited:?} behind a throttled dataset and a deep backlog"
    );
    assert!(
        !app.delivered_ids().iter().any(|id| id.starts_with("thr-")),
        "the throttled dataset delivered nothing"
    );
}

async fn full_requests_go_from_ingest_straight_to_delivery_once_each(backend: Backend) {
    let Some(env) = prepare_env(backend).await else {
        return;
    };
    let config = test_config(&env.db.url, &env.sim_url, &env.vault);
    let app = spawn_app_on(env, config).await;
    let assets = app.add_wabas("default", 4_000, 1).await;
    let (asset, _) = &assets[0];
    // Other tests of this process count too: the figure can only be higher than this one's.
    let before = metric(&app, "capi_relay_delivery_handed_over_events_total").await;
    let events: Vec<Value> = (0..3_000).map(|i| event(asset, "full", i)).collect();
    post_all(&app, events).await;
    app.wait_for_empty_queue(Duration::from_secs(30)).await;
    assert_no_duplicates(&app, 3_000);
    let handed = metric(&app, "capi_relay_delivery_handed_over_events_total").await - before;
    assert!(
        handed >= 1_000.0,
        "the first 1,000-event request, with nothing else due, went straight to a sender ({handed} handed over)"
    );
}

async fn a_dataset_sends_its_next_request_while_its_last_answer_is_recorded(backend: Backend) {
    let Some(env) = prepare_env(backend).await else {
        return;
    };
    let mut config = test_config(&env.db.url, &env.sim_url, &env.vault);
    config.delivery.claim_limit = 100;
    config.delivery.batch_max_events = 100;
    config.delivery.per_dataset_in_flight = 1;
    let app = spawn_app_on(env, config).await;
    let assets = app.add_wabas("default", 3_000, 1).await;
    let (asset, dataset) = &assets[0];
    // The first answer waits 3 s to be recorded, as behind a database writer busy with ingest.
    hooks::slow_next_resolve(dataset, Duration::from_secs(3));
    let events: Vec<Value> = (0..300).map(|i| event(asset, "overlap", i)).collect();
    post_all(&app, events).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while app.sim.stats_requests() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        app.sim.stats_requests() >= 2,
        "the dataset's next request waited for the last answer to be recorded"
    );
    app.wait_for_empty_queue(Duration::from_secs(30)).await;
    assert_no_duplicates(&app, 300);
    assert!(
        app.sim.stats_max_in_flight() <= 1,
        "one request in flight at a time for the dataset"
    );
}

async fn a_stored_payload_that_cannot_be_read_is_a_dead_letter_and_the_rest_go_out(
    backend: Backend,
) {
    let Some(env) = prepare_env(backend).await else {
        return;
    };
    let db_url = env.db.url.clone();
    let config = test_config(&env.db.url, &env.sim_url, &env.vault);
    let mut ingest_only = config.clone();
    ingest_only.delivery.workers = 0;
    let mut app = spawn_app_on(env, ingest_only).await;
    let assets = app.add_wabas("default", 5_000, 1).await;
    let events: Vec<Value> = (0..5).map(|i| event(&assets[0].0, "garbled", i)).collect();
    post_all(&app, events).await;
    app.stop().await;
    // A payload cut short in storage (a disk fault or a manual edit).
    let garble = match backend {
        Backend::Sqlite => {
            "UPDATE event_payloads SET payload = '{\"event_name\": ' \
             WHERE id = (SELECT id FROM events WHERE event_id = 'garbled-2')"
        }
        Backend::Postgres => {
            "UPDATE events SET payload = '{\"event_name\": ' WHERE event_id = 'garbled-2'"
        }
    };
    assert_eq!(execute(backend, &db_url, garble.into()).await, 1);

    app.start(config).await;
    app.wait_for_empty_queue(Duration::from_secs(20)).await;
    let mut sent = app.delivered_ids();
    sent.sort();
    assert_eq!(
        sent,
        ["garbled-0", "garbled-1", "garbled-3", "garbled-4"],
        "the readable events of the request went out"
    );
    let (_, body) = app.get_json("/v1/events/garbled-2").await;
    assert_eq!(body["state"], "dead", "{body}");
    assert!(
        body["dead_reason"]
            .as_str()
            .is_some_and(|r| r.contains("cannot be read as JSON")),
        "{body}"
    );
    assert_eq!(
        body["attempts"][0]["outcome"], "unreadable_payload",
        "{body}"
    );
}
