//! The Graph simulator behaves as Meta documents: validation, error bodies, faults.

use std::time::Duration;

use capi_relay::simulator::{Faults, SimulatorConfig};
use serde_json::{Value, json};

use crate::helpers::{DATASET, now, post_events, spawn_simulator, wire_event};

async fn error_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    (status, body["error"].clone())
}

#[tokio::test]
async fn a_valid_request_is_acknowledged_and_listed() {
    let (sim, base) = spawn_simulator(SimulatorConfig::default()).await;
    // Made once: `wire_event` reads the clock, which may tick between two calls.
    let first = wire_event(1);
    let body = json!({"data": [first.clone(), wire_event(2)], "partner_agent": "acme", "test_event_code": "TEST123"});
    let response = post_events(&base, DATASET, Some("tok"), &body).await;
    assert_eq!(response.status(), 200);
    let ack: Value = response.json().await.unwrap();
    assert_eq!(ack["events_received"], 2);
    assert_eq!(ack["messages"], json!([]));
    assert!(ack["fbtrace_id"].as_str().is_some_and(|t| !t.is_empty()));

    let listed: Value = reqwest::get(format!("{base}/__sim/events?dataset_id={DATASET}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["count"], 2);
    assert_eq!(listed["data"][0]["event"], first);
    assert_eq!(listed["data"][0]["partner_agent"], "acme");
    assert_eq!(listed["data"][0]["test_event_code"], "TEST123");
    let page: Value = reqwest::get(format!("{base}/__sim/events?dataset_id={DATASET}&limit=1"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        page["count"], 2,
        "the count is of every event, not the page"
    );
    assert_eq!(page["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(page["data"][0]["event"], first);

    let other: Value = reqwest::get(format!("{base}/__sim/events?dataset_id=999"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(other["count"], 0);

    reqwest::Client::new()
        .post(format!("{base}/__sim/reset"))
        .send()
        .await
        .unwrap();
    assert!(sim.accepted(None).is_empty());
}

#[tokio::test]
async fn more_than_1000_events_are_refused() {
    let (sim, base) = spawn_simulator(SimulatorConfig::default()).await;
    let data: Vec<Value> = (0..1001).map(wire_event).collect();
    let (status, error) =
        error_of(post_events(&base, DATASET, Some("t"), &json!({"data": data})).await).await;
    assert_eq!(status, 400);
    assert_eq!(error["code"], 100);
    assert!(sim.accepted(None).is_empty());

    let data: Vec<Value> = (0..1000).map(wire_event).collect();
    let response = post_events(&base, DATASET, Some("t"), &json!({"data": data})).await;
    assert_eq!(response.status(), 200);
    assert_eq!(sim.accepted(None).len(), 1000);
}

#[tokio::test]
async fn one_stale_event_rejects_the_whole_request() {
    let (sim, base) = spawn_simulator(SimulatorConfig::default()).await;
    let mut stale = wire_event(2);
    stale["event_time"] = json!(now() - 8 * 24 * 3600);
    let body = json!({"data": [wire_event(1), stale, wire_event(3)]});
    let (status, error) = error_of(post_events(&base, DATASET, Some("t"), &body).await).await;
    assert_eq!(status, 400);
    assert_eq!(error["code"], 100);
    assert_eq!(error["error_subcode"], 2804003);
    assert_eq!(error["error_user_title"], "Event Timestamp Too Old");
    assert!(error["fbtrace_id"].is_string());
    assert!(
        sim.accepted(None).is_empty(),
        "no event of the request is kept"
    );
}

#[tokio::test]
async fn one_invalid_event_rejects_the_request_and_blames_its_field() {
    let (sim, base) = spawn_simulator(SimulatorConfig::default()).await;
    let mut bad = wire_event(2);
    bad["custom_data"]["currency"] = json!("XYZ");
    let body = json!({"data": [wire_event(1), bad]});
    let (_, error) = error_of(post_events(&base, DATASET, Some("t"), &body).await).await;
    assert_eq!(error["code"], 100);
    assert_eq!(
        error["error_data"]["blame_field_specs"],
        json!([["custom_data", "currency"]])
    );
    assert!(sim.accepted(None).is_empty());
}

#[tokio::test]
async fn meta_rules_per_event_are_enforced() {
    let (_sim, base) = spawn_simulator(SimulatorConfig::default()).await;
    type Mutation = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Mutation, i64, Option<i64>)> = vec![
        (
            "missing click id",
            Box::new(|e: &mut Value| {
                e["user_data"].as_object_mut().unwrap().remove("ctwa_clid");
            }),
            100,
            Some(2804050),
        ),
        (
            "unhashed email",
            Box::new(|e: &mut Value| e["user_data"]["em"] = json!("john@example.com")),
            100,
            Some(2804016),
        ),
        (
            "purchase without value",
            Box::new(|e: &mut Value| {
                e["custom_data"].as_object_mut().unwrap().remove("value");
            }),
            100,
            None,
        ),
        (
            "wrong channel",
            Box::new(|e: &mut Value| e["messaging_channel"] = json!("sms")),
            100,
            None,
        ),
        (
            "missing action source",
            Box::new(|e: &mut Value| {
                e.as_object_mut().unwrap().remove("action_source");
            }),
            100,
            None,
        ),
        (
            "future time",
            Box::new(|e: &mut Value| e["event_time"] = json!(now() + 3600)),
            100,
            None,
        ),
    ];
    for (name, mutate, code, subcode) in cases {
        let mut event = wire_event(1);
        mutate(&mut event);
        let (status, error) =
            error_of(post_events(&base, DATASET, Some("t"), &json!({"data": [event]})).await).await;
        assert_eq!(status, 400, "{name}");
        assert_eq!(error["code"], code, "{name}");
        assert_eq!(error["error_subcode"].as_i64(), subcode, "{name}");
        assert!(error["message"].is_string(), "{name}");
    }
}

#[tokio::test]
async fn unknown_dataset_and_bad_tokens_get_meta_errors() {
    let (_sim, base) = spawn_simulator(SimulatorConfig {
        access_tokens: vec!["good".into()],
        ..SimulatorConfig::default()
    })
    .await;
    let body = json!({"data": [wire_event(1)]});
    let (_, error) = error_of(post_events(&base, "42", Some("good"), &body).await).await;
    assert_eq!(
        (error["code"].as_i64(), error["error_subcode"].as_i64()),
        (Some(100), Some(33))
    );
    assert_eq!(error["type"], "GraphMethodException");

    let (_, error) = error_of(post_events(&base, DATASET, Some("bad"), &body).await).await;
    assert_eq!(error["code"], 190);
    let (_, error) = error_of(post_events(&base, DATASET, None, &body).await).await;
    assert_eq!(error["code"], 104);
    assert_eq!(
        post_events(&base, DATASET, Some("good"), &body)
            .await
            .status(),
        200
    );

    // Tokens can be changed at run time, as a revoked and reissued token would be.
    reqwest::Client::new()
        .put(format!("{base}/__sim/tokens"))
        .json(&json!({"tokens": ["new"]}))
        .send()
        .await
        .unwrap();
    let (_, error) = error_of(post_events(&base, DATASET, Some("good"), &body).await).await;
    assert_eq!(error["code"], 190);
}

#[tokio::test]
async fn throttling_answers_carry_usage_headers() {
    let (sim, base) = spawn_simulator(SimulatorConfig {
        faults: Faults {
            throttle_rate: 1.0,
            throttle_regain_minutes: 3,
            ..Faults::default()
        },
        seed: Some(7),
        ..SimulatorConfig::default()
    })
    .await;
    let response = post_events(&base, DATASET, Some("t"), &json!({"data": [wire_event(1)]})).await;
    let usage = response.headers()["x-business-use-case-usage"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(response.headers().contains_key("x-app-usage"));
    let (_, error) = error_of(response).await;
    assert!([4, 17, 613].contains(&error["code"].as_i64().unwrap()));
    let usage: Value = serde_json::from_str(&usage).unwrap();
    assert_eq!(usage["0"][0]["estimated_time_to_regain_access"], 3);
    assert!(sim.accepted(None).is_empty());
}

#[tokio::test]
async fn server_errors_and_transient_errors_can_be_injected_at_run_time() {
    let (sim, base) = spawn_simulator(SimulatorConfig::default()).await;
    let set = |faults: Value| {
        let base = base.clone();
        async move {
            let r = reqwest::Client::new()
                .put(format!("{base}/__sim/faults"))
                .json(&faults)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    };
    let body = json!({"data": [wire_event(1)]});
    set(json!({"server_error_rate": 1.0})).await;
    let response = post_events(&base, DATASET, Some("t"), &body).await;
    assert_eq!(response.status(), 503);

    set(json!({"transient_rate": 1.0})).await;
    let (status, error) = error_of(post_events(&base, DATASET, Some("t"), &body).await).await;
    assert_eq!(
        (
            status,
            error["code"].as_i64(),
            error["is_transient"].as_bool()
        ),
        (500, Some(2), Some(true))
    );

    set(json!({"latency_ms": 150})).await;
    let started = std::time::Instant::now();
    assert_eq!(
        post_events(&base, DATASET, Some("t"), &body).await.status(),
        200
    );
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(sim.accepted(None).len(), 1);
}

#[tokio::test]
async fn a_fault_rate_is_honoured_over_many_requests() {
    let (sim, base) = spawn_simulator(SimulatorConfig {
        faults: Faults {
            server_error_rate: 0.3,
            ..Faults::default()
        },
        seed: Some(42),
        ..SimulatorConfig::default()
    })
    .await;
    let mut failed = 0;
    for i in 0..200 {
        let response =
            post_events(&base, DATASET, Some("t"), &json!({"data": [wire_event(i)]})).await;
        failed += usize::from(response.status() == 503);
    }
    assert!(
        (30..=90).contains(&failed),
        "{failed} of 200 failed at a 30% rate"
    );
    assert_eq!(sim.accepted(None).len(), 200 - failed);
}

#[tokio::test]
async fn the_dataset_api_creates_once_and_then_returns_the_same_dataset() {
    let (_sim, base) = spawn_simulator(SimulatorConfig {
        denied_assets: vec!["555".into()],
        ..SimulatorConfig::default()
    })
    .await;
    let client = reqwest::Client::new();
    let create = || async {
        client
            .post(format!("{base}/v26.0/102290129340398/dataset"))
            .bearer_auth("t")
            .json(&json!({"dataset_name": "Shop"}))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let first = create().await;
    let second = create().await;
    assert!(first["id"].is_string());
    assert_eq!(first, second);

    let listed: Value = client
        .get(format!("{base}/v26.0/102290129340398/dataset"))
        .bearer_auth("t")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["data"][0]["id"], first["id"]);

    // The new dataset receives events.
    let dataset = first["id"].as_str().unwrap();
    assert_eq!(
        post_events(&base, dataset, Some("t"), &json!({"data": [wire_event(1)]}))
            .await
            .status(),
        200
    );

    let denied = client
        .post(format!("{base}/v26.0/555/dataset"))
        .bearer_auth("t")
        .send()
        .await
        .unwrap();
    let (_, error) = error_of(denied).await;
    assert_eq!(error["code"], 200);
}
