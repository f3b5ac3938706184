//! The relay service from the outside: ingestion, delivery, retries, isolation, pauses,
//! dead letters and operations, on SQLite and on PostgreSQL.

use std::{collections::HashSet, time::Duration};

use capi_relay::simulator::Faults;
use relay_core::{ValidationOptions, validate_event};
use serde_json::{Value, json};

use crate::{
    app::{
        API_KEY, Backend, PAGE, TOKEN, WABA, WABA_DATASET, messenger_event, spawn_app,
        spawn_app_with, whatsapp_event,
    },
    helpers::{binary, now},
};

const WAIT: Duration = Duration::from_secs(30);

both_backends!(
    accepted_events_reach_meta_with_the_exact_payload,
    duplicates_are_reported_and_never_sent_again,
    every_event_is_delivered_once_despite_30_percent_faults,
    a_poison_event_is_dead_lettered_and_its_999_neighbours_delivered,
    a_token_error_pauses_the_asset_until_the_token_is_updated,
    events_about_to_pass_the_7_day_limit_are_dead_lettered_unsent,
    dead_letters_can_be_replayed,
    bad_requests_get_clear_errors,
    graceful_shutdown_finishes_sends_in_flight,
    operations_endpoints_report_health_and_metrics,
    metrics_can_require_a_key_and_move_to_a_listener_of_their_own,
    nul_characters_are_refused_per_event_and_never_fail_other_requests,
);

async fn nul_characters_are_refused_per_event_and_never_fail_other_requests(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let mut nul_id = whatsapp_event(2);
    nul_id["event_id"] = json!("wa-\u{0}2");
    let by_contact = json!({"event_name": "Purchase", "event_time": now() - 60,
        "messaging_channel": "whatsapp", "contact": {"phone": "+55 11 9\u{0}8765-4321"},
        "user_data": {"whatsapp_business_account_id": WABA},
        "custom_data": {"currency": "BRL", "value": 1}});
    let (status, body) = app
        .post_events(&[whatsapp_event(1), nul_id, by_contact])
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], 1, "{body}");
    assert_eq!(
        body["results"][1]["errors"][0]["code"], "invalid_value",
        "{body}"
    );
    assert_eq!(
        body["results"][1]["errors"][0]["path"], "event_id",
        "{body}"
    );
    assert_eq!(body["results"][2]["status"], "rejected", "{body}");
    let (status, body) = app
        .post_json(
            "/v1/events",
            &json!({"data": [whatsapp_event(3)], "test_event_code": "T\u{0}1"}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_value")),
        "{body}"
    );

    // One client sends NUL bytes in a loop while another posts good events: none of the
    // good ones may fail.
    let attacker = {
        let (client, base) = (app.client.clone(), app.base.clone());
        tokio::spawn(async move {
            for i in 0..200 {
                let mut bad = whatsapp_event(10_000 + i);
                bad["event_id"] = json!(format!("bad-\u{0}{i}"));
                let _ = client
                    .post(format!("{base}/v1/events"))
                    .bearer_auth(API_KEY)
                    .json(&json!({"data": [bad]}))
                    .send()
                    .await;
            }
        })
    };
    for i in 0..200 {
        let (status, body) = app.post_events(&[whatsapp_event(100 + i)]).await;
        assert_eq!(
            (status, body["accepted"].as_u64()),
            (202, Some(1)),
            "{body}"
        );
    }
    attacker.await.unwrap();
    app.wait_for_empty_queue(WAIT).await;
    assert!(app.delivered_ids().iter().all(|id| !id.contains('\0')));
    assert_eq!(app.delivered_ids().len(), 201);
}

async fn accepted_events_reach_meta_with_the_exact_payload(backend: Backend) {
    let Some(mut app) = spawn_app(backend).await else {
        return;
    };
    let events = vec![whatsapp_event(1), messenger_event(2)];
    let (status, body) = app.post_events(&events).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], 2);
    assert_eq!(body["results"][0]["status"], "accepted");
    assert_eq!(body["results"][0]["event_id"], "wa-1");
    assert_eq!(body["results"][0]["dataset_id"], WABA_DATASET);

    app.wait_until(WAIT, "2 deliveries", |a| a.delivered_ids().len() == 2)
        .await;
    for input in &events {
        let expected = validate_event(input, &ValidationOptions::default(), now())
            .unwrap()
            .event;
        let expected = serde_json::to_value(&expected).unwrap();
        let got = app
            .sim
            .accepted(None)
            .into_iter()
            .find(|a| a.event["event_id"] == expected["event_id"])
            .expect("delivered");
        assert_eq!(got.event, expected);
    }
    app.wait_for_empty_queue(WAIT).await;
    let (status, shown) = app.get_json("/v1/events/wa-1").await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["state"], "delivered");
    assert_eq!(shown["dataset_id"], WABA_DATASET);
    assert_eq!(shown["attempts"][0]["outcome"], "delivered");
    assert!(shown["attempts"][0]["fbtrace_id"].is_string());
    assert_eq!(
        shown["payload"]["user_data"]["ctwa_clid"],
        "ARAkLkA8rmlFeiCktEJQ-1"
    );
    app.stop().await;
}

async fn duplicates_are_reported_and_never_sent_again(backend: Backend) {
    let Some(mut app) = spawn_app(backend).await else {
        return;
    };
    let events: Vec<Value> = (0..50).map(whatsapp_event).collect();
    let (_, first) = app.post_events(&events).await;
    assert_eq!(first["accepted"], 50);
    // The same batch again at once, and a batch that repeats an id within itself.
    let (_, again) = app.post_events(&events).await;
    assert_eq!(
        (again["accepted"].as_u64(), again["duplicates"].as_u64()),
        (Some(0), Some(50))
    );
    assert_eq!(again["results"][3]["status"], "duplicate");
    let (_, twice) = app
        .post_events(&[whatsapp_event(100), whatsapp_event(100)])
        .await;
    assert_eq!(
        (twice["accepted"].as_u64(), twice["duplicates"].as_u64()),
        (Some(1), Some(1))
    );

    app.wait_for_empty_queue(WAIT).await;
    // And again after delivery: still a duplicate, still not sent.
    let (_, late) = app.post_events(&events[..10]).await;
    assert_eq!(late["duplicates"], 10);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ids = app.delivered_ids();
    assert_eq!(ids.len(), 51);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 51);
    app.stop().await;
}

async fn every_event_is_delivered_once_despite_30_percent_faults(backend: Backend) {
    let Some(mut app) = spawn_app_with(backend, |c| {
        c.delivery.batch_max_events = 50;
        c.graph_timeout = Duration::from_millis(500);
    })
    .await
    else {
        return;
    };
    app.sim.set_faults(Faults {
        server_error_rate: 0.08,
        transient_rate: 0.08,
        throttle_rate: 0.07,
        timeout_rate: 0.07,
        timeout_hold_ms: 1_000,
        throttle_regain_minutes: 0,
        ..Faults::default()
    });
    let total = 1_000;
    for chunk in (0..total).collect::<Vec<_>>().chunks(200) {
        let events: Vec<Value> = chunk.iter().map(|i| whatsapp_event(*i)).collect();
        let (status, body) = app.post_events(&events).await;
        assert_eq!((status, body["accepted"].as_u64()), (202, Some(200)));
    }
    app.wait_for_empty_queue(Duration::from_secs(90)).await;
    let ids = app.delivered_ids();
    let unique: HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), total, "every event delivered");
    assert_eq!(ids.len(), total, "and none twice");
    let (_, dead) = app.get_json("/v1/dead-letters").await;
    assert_eq!(dead["count"], 0);
    app.stop().await;
}

async fn a_poison_event_is_dead_lettered_and_its_999_neighbours_delivered(backend: Backend) {
    let Some(mut app) = spawn_app(backend).await else {
        return;
    };
    app.sim.set_faults(Faults {
        reject_events_containing: Some("POISON".into()),
        ..Faults::default()
    });
    let mut events: Vec<Value> = (0..1000).map(whatsapp_event).collect();
    events[617]["user_data"]["ctwa_clid"] = json!("POISON-617");
    let (_, body) = app.post_events(&events).await;
    assert_eq!(body["accepted"], 1000);
    app.wait_for_empty_queue(Duration::from_secs(60)).await;

    let ids = app.delivered_ids();
    assert_eq!(ids.len(), 999);
    assert!(!ids.contains(&"wa-617".to_owned()));
    let (_, dead) = app.get_json("/v1/dead-letters").await;
    assert_eq!(dead["count"], 1, "{dead}");
    assert_eq!(dead["data"][0]["event_id"], "wa-617");
    assert!(dead["next_before"].is_null(), "one page holds it: {dead}");
    let reason = dead["data"][0]["dead_reason"].as_str().unwrap();
    assert!(
        reason.contains("An event in this request was refused"),
        "{reason}"
    );
    let (_, shown) = app.get_json("/v1/events/wa-617").await;
    assert_eq!(shown["state"], "dead");
    assert!(shown["attempts"][0]["fbtrace_id"].is_string(), "{shown}");
    app.stop().await;
}

async fn a_token_error_pauses_the_asset_until_the_token_is_updated(backend: Backend) {
    let Some(mut app) = spawn_app(backend).await else {
        return;
    };
    app.set_token(WABA, "expired-token").await;
    let events: Vec<Value> = (0..20).map(whatsapp_event).collect();
    app.post_events(&events).await;
    app.post_events(&[messenger_event(1)]).await;
    app.wait_until(WAIT, "the messenger event", |a| {
        a.delivered_ids().len() == 1
    })
    .await;
    let started = std::time::Instant::now();
    loop {
        let asset = app.store.get_asset(WABA).await.unwrap().unwrap();
        if asset.status == relay_store::AssetStatus::Paused {
            assert!(asset.status_reason.unwrap().contains("auth"));
            break;
        }
        assert!(started.elapsed() < WAIT, "the asset was never paused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The paused asset shows in `assets list`; its events wait, not dead.
    let list = tokio::process::Command::new(binary())
        .args(["assets", "list", "--database-url", &app.db.url])
        .output()
        .await
        .unwrap();
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(listed.contains("PAUSED"), "{listed}");
    assert!(!listed.contains(TOKEN) && !listed.contains("expired-token"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.delivered_ids().len(), 1);
    assert_eq!(app.store.queue_stats().await.unwrap().dead, 0);

    let set = tokio::process::Command::new(binary())
        .args([
            "assets",
            "set-token",
            "--asset-id",
            WABA,
            "--access-token-env",
            "NEW_TOKEN",
        ])
        .args(["--database-url", &app.db.url])
        .env("NEW_TOKEN", TOKEN)
        .env("CAPI_RELAY_MASTER_KEY", app.master_key_text())
        .output()
        .await
        .unwrap();
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    app.wait_until(WAIT, "the held events", |a| a.delivered_ids().len() == 21)
        .await;
    app.stop().await;
}

async fn events_about_to_pass_the_7_day_limit_are_dead_lettered_unsent(backend: Backend) {
    let Some(mut app) = spawn_app(backend).await else {
        return;
    };
    let mut old = whatsapp_event(1);
    old["event_time"] = json!(now() - 7 * 86_400 + 600);
    let (_, body) = app.post_events(&[old, whatsapp_event(2)]).await;
    assert_eq!(body["accepted"], 2, "still inside the 7 days, so accepted");
    app.wait_for_empty_queue(WAIT).await;
    assert_eq!(app.delivered_ids(), vec!["wa-2".to_owned()]);
    let (_, shown) = app.get_json("/v1/events/wa-1").await;
    assert_eq!(shown["state"], "dead");
    assert!(shown["dead_reason"].as_str().unwrap().contains("too old"));
    app.stop().await;
}

async fn dead_letters_can_be_replayed(backend: Backend) {
    let Some(mut app) = spawn_app(backend).await else {
        return;
    };
    app.sim.set_faults(Faults {
        reject_events_containing: Some("wa-3\"".into()),
        ..Faults::default()
    });
    let events: Vec<Value> = (0..5).map(whatsapp_event).collect();
    app.post_events(&events).await;
    app.wait_for_empty_queue(WAIT).await;
    assert_eq!(app.delivered_ids().len(), 4);

    let (status, body) = app.post_json("/v1/dead-letters/replay", &json!({})).await;
    assert_eq!(status, 422, "a replay needs a selector: {body}");
    app.sim.set_faults(Faults::default());
    let (status, body) = app
        .post_json("/v1/dead-letters/replay", &json!({"event_ids": ["wa-3"]}))
        .await;
    assert_eq!((status, body["replayed"].as_u64()), (200, Some(1)));
    app.wait_until(WAIT, "the replayed event", |a| a.delivered_ids().len() == 5)
        .await;
    let (_, dead) = app.get_json("/v1/dead-letters").await;
    assert_eq!(dead["count"], 0);
    app.stop().await;
}

async fn bad_requests_get_clear_errors(backend: Backend) {
    let Some(mut app) = spawn_app_with(backend, |c| c.max_body_bytes = 64 * 1024).await else {
        return;
    };
    let url = format!("{}/v1/events", app.base);
    let no_key = app
        .client
        .post(&url)
        .json(&json!({"data": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(no_key.status(), 401);
    let wrong_key = app
        .client
        .post(&url)
        .bearer_auth("nope")
        .json(&json!({"data": [whatsapp_event(1)]}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_key.status(), 401);

    let (status, body) = app.post_json("/v1/events", &json!({"events": []})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_body"))
    );
    let many: Vec<Value> = (0..1001).map(|_| json!({})).collect();
    let (status, body) = app.post_json("/v1/events", &json!({"data": many})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("batch_size"))
    );
    let big: Vec<Value> = (0..500).map(whatsapp_event).collect();
    let (status, body) = app.post_events(&big).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("body_too_large"))
    );
    let raw = app
        .client
        .post(&url)
        .bearer_auth(API_KEY)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 400);

    // A bad event and an unknown asset never fail their neighbours.
    let mut unknown = whatsapp_event(2);
    unknown["user_data"]["whatsapp_business_account_id"] = json!("999999999");
    let mut invalid = whatsapp_event(3);
    invalid["event_name"] = json!("Subscribe");
    let (status, body) = app
        .post_events(&[whatsapp_event(1), unknown, invalid])
        .await;
    assert_eq!(status, 202);
    assert_eq!(
        (body["accepted"].as_u64(), body["rejected"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(body["results"][1]["errors"][0]["code"], "unknown_asset");
    assert_eq!(
        body["results"][1]["errors"][0]["path"],
        "user_data.whatsapp_business_account_id"
    );
    assert_eq!(body["results"][2]["errors"][0]["code"], "web_event_name");
    let (status, _) = app.get_json("/v1/events/never-seen").await;
    assert_eq!(status, 404);
    app.stop().await;
}

async fn graceful_shutdown_finishes_sends_in_flight(backend: Backend) {
    let Some(mut app) = spawn_app(backend).await else {
        return;
    };
    app.sim.set_faults(Faults {
        latency_ms: 600,
        ..Faults::default()
    });
    let events: Vec<Value> = (0..100).map(whatsapp_event).collect();
    app.post_events(&events).await;
    // Wait until the request is on its way (Meta answers in 600 ms), then stop. Not the
    // event's state: on SQLite an event in flight stays `queued` in the database.
    let started = std::time::Instant::now();
    while app.sim.stats_requests() == 0 {
        assert!(started.elapsed() < WAIT);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(app.delivered_ids().len(), 0, "the answer is still to come");
    app.stop().await;
    assert_eq!(app.delivered_ids().len(), 100);
    let record = &app.store.find_events("wa-0", None, None).await.unwrap()[0];
    assert_eq!(
        record.state,
        relay_store::EventState::Delivered,
        "recorded before exit"
    );
}

async fn operations_endpoints_report_health_and_metrics(backend: Backend) {
    let Some(mut app) = spawn_app(backend).await else {
        return;
    };
    app.post_events(&[whatsapp_event(1)]).await;
    app.wait_for_empty_queue(WAIT).await;
    let get = |path: &str| app.client.get(format!("{}{path}", app.base)).send();
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    for name in [
        "capi_relay_events_ingested_total",
        "capi_relay_events_delivered_total",
        "capi_relay_queue_depth",
        "capi_relay_oldest_queued_event_age_seconds",
        "capi_relay_delivery_latency_seconds_bucket",
        "capi_relay_graph_request_duration_seconds_bucket",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    assert!(!metrics.contains(TOKEN));
    let _ = PAGE;
    app.stop().await;
}

async fn metrics_can_require_a_key_and_move_to_a_listener_of_their_own(backend: Backend) {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics_addr = free.local_addr().unwrap();
    drop(free);
    let Some(mut app) = spawn_app_with(backend, |c| {
        c.metrics.listen = Some(metrics_addr);
        c.metrics.key = Some(secrecy::SecretString::from("scrape-key".to_owned()));
    })
    .await
    else {
        return;
    };
    let api = app.client.get(format!("{}/metrics", app.base)).send().await;
    assert_eq!(api.unwrap().status(), 404, "not on the API's listener");
    let url = format!("http://{metrics_addr}/metrics");
    let scrape = |key: Option<&'static str>| {
        let request = app.client.get(&url);
        match key {
            Some(k) => request.bearer_auth(k),
            None => request,
        }
        .send()
    };
    assert_eq!(scrape(None).await.unwrap().status(), 401);
    assert_eq!(scrape(Some("wrong-key")).await.unwrap().status(), 401);
    let ok = scrape(Some("scrape-key")).await.unwrap();
    assert_eq!(ok.status(), 200);
    let text = ok.text().await.unwrap();
    assert!(text.contains("capi_relay_queue_depth"), "{text}");
    assert!(!text.contains("scrape-key"));
    app.stop().await;
}
