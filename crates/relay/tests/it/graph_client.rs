//! The Graph client against the simulator and a capturing receiver: what goes on the wire and
//! how each answer is classified.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::HeaderMap,
    routing::{get, post},
};
use capi_relay::{
    delivery::{GraphClient, GraphConfig, PermanentKind, RetryKind, SendOutcome},
    simulator::{Faults, SimulatorConfig},
};
use hmac::{Hmac, Mac};
use secrecy::SecretString;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::helpers::{DATASET, spawn_simulator, wire_event};

fn client(base: &str) -> GraphClient {
    GraphClient::new(GraphConfig {
        base_url: base.into(),
        partner_agent: Some("acme-partner".into()),
        ..GraphConfig::default()
    })
    .unwrap()
}

fn token(t: &str) -> SecretString {
    SecretString::from(t.to_owned())
}

#[tokio::test]
async fn events_are_delivered_with_partner_agent_and_test_code() {
    let (sim, base) = spawn_simulator(SimulatorConfig::default()).await;
    let events = vec![wire_event(1), wire_event(2)];
    let report = client(&base)
        .send_events(DATASET, &token("tok"), &events, Some("TEST42"))
        .await;
    match report.outcome {
        SendOutcome::Delivered(d) => {
            assert_eq!(d.events_received, 2);
            assert!(d.fbtrace_id.is_some());
        }
        other => panic!("{other:?}"),
    }
    let accepted = sim.accepted(Some(DATASET));
    assert_eq!(accepted.len(), 2);
    assert_eq!(accepted[1].event, events[1]);
    assert_eq!(accepted[0].partner_agent.as_deref(), Some("acme-partner"));
    assert_eq!(accepted[0].test_event_code.as_deref(), Some("TEST42"));
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<(String, HeaderMap, Value)>>>);

async fn capture(
    State(c): State<Captured>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::Json<Value> {
    let body: Value = serde_json::from_slice(&body).unwrap();
    let n = body["data"].as_array().map_or(0, Vec::len);
    c.0.lock().unwrap().push((uri.to_string(), headers, body));
    axum::Json(json!({"events_received": n, "messages": [], "fbtrace_id": "cap"}))
}

#[tokio::test]
async fn the_token_travels_only_in_the_authorization_header_with_appsecret_proof() {
    let captured = Captured::default();
    let app = Router::new()
        .route("/{version}/{id}/events", post(capture))
        .with_state(captured.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let client = GraphClient::new(GraphConfig {
        base_url: format!("http://{addr}"),
        api_version: "v25.0".into(),
        app_secret: Some(SecretString::from("app-secret".to_owned())),
        ..GraphConfig::default()
    })
    .unwrap();
    client
        .send_events("777", &token("EAAB-secret-token"), &[wire_event(1)], None)
        .await;

    let calls = captured.0.lock().unwrap();
    let (uri, headers, body) = &calls[0];
    assert_eq!(uri, "/v25.0/777/events");
    assert!(!uri.contains("EAAB"));
    assert_eq!(headers["authorization"], "Bearer EAAB-secret-token");
    assert!(body.get("access_token").is_none());
    assert!(
        body.get("partner_agent").is_none(),
        "absent when not configured"
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(b"app-secret").unwrap();
    mac.update(b"EAAB-secret-token");
    assert_eq!(
        body["appsecret_proof"],
        hex::encode(mac.finalize().into_bytes())
    );
}

/// What a dataset lookup carried: the request URI and its body.
#[derive(Clone, Default)]
struct Lookups(Arc<Mutex<Vec<(String, Bytes)>>>);

async fn record_lookup(
    State(l): State<Lookups>,
    uri: axum::http::Uri,
    body: Bytes,
) -> axum::Json<Value> {
    l.0.lock().unwrap().push((uri.to_string(), body));
    axum::Json(json!({"data": []}))
}

/// Issue 12 D.11: a URL ends up in reqwest's errors (and in proxies' logs).
#[tokio::test]
async fn appsecret_proof_travels_in_the_body_never_in_a_url_or_an_error() {
    let proof = {
        let mut mac = Hmac::<Sha256>::new_from_slice(b"app-secret").unwrap();
        mac.update(b"EAAB-secret-token");
        hex::encode(mac.finalize().into_bytes())
    };
    let lookups = Lookups::default();
    let app = Router::new()
        .route("/{version}/{id}/dataset", get(record_lookup))
        .with_state(lookups.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let with_secret = |base: String| {
        GraphClient::new(GraphConfig {
            base_url: base,
            app_secret: Some(SecretString::from("app-secret".to_owned())),
            ..GraphConfig::default()
        })
        .unwrap()
    };
    let found = with_secret(format!("http://{addr}"))
        .get_dataset("777", &token("EAAB-secret-token"))
        .await
        .unwrap();
    assert_eq!(found, None);
    let calls = lookups.0.lock().unwrap().clone();
    let (uri, body) = &calls[0];
    assert!(
        !uri.contains("appsecret_proof") && !uri.contains(&proof),
        "{uri}"
    );
    let body: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(body["appsecret_proof"], proof.as_str());

    // A transport error names the URL: it holds neither the token nor the proof.
    let closed = with_secret("http://127.0.0.1:9".into());
    let error = closed
        .get_dataset("777", &token("EAAB-secret-token"))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("127.0.0.1:9"), "{error}");
    assert!(
        !error.contains(&proof) && !error.contains("EAAB"),
        "{error}"
    );

    // The simulator, like Graph, takes the proof from the body.
    let (_sim, base) = spawn_simulator(SimulatorConfig {
        app_secret: Some("app-secret".into()),
        ..SimulatorConfig::default()
    })
    .await;
    let c = with_secret(base.clone());
    let created = c
        .create_or_get_dataset("102290129340398", &token("EAAB-secret-token"), None)
        .await
        .unwrap();
    let read = c
        .get_dataset("102290129340398", &token("EAAB-secret-token"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.id, created.id);
    let refused = client(&base)
        .get_dataset("102290129340398", &token("EAAB-secret-token"))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("appsecret_proof"), "{refused}");
}

#[tokio::test]
async fn the_simulator_accepts_a_correct_appsecret_proof_and_refuses_a_missing_one() {
    let (sim, base) = spawn_simulator(SimulatorConfig {
        app_secret: Some("shh".into()),
        ..SimulatorConfig::default()
    })
    .await;
    let with_proof = GraphClient::new(GraphConfig {
        base_url: base.clone(),
        app_secret: Some(SecretString::from("shh".to_owned())),
        ..GraphConfig::default()
    })
    .unwrap();
    let report = with_proof
        .send_events(DATASET, &token("t"), &[wire_event(1)], None)
        .await;
    assert!(
        matches!(report.outcome, SendOutcome::Delivered(_)),
        "{:?}",
        report.outcome
    );
    let report = client(&base)
        .send_events(DATASET, &token("t"), &[wire_event(2)], None)
        .await;
    assert!(matches!(report.outcome, SendOutcome::Permanent { .. }));
    assert_eq!(sim.accepted(None).len(), 1);
}

#[tokio::test]
async fn each_failure_is_classified_from_the_real_answer() {
    let (sim, base) = spawn_simulator(SimulatorConfig {
        access_tokens: vec!["good".into()],
        ..SimulatorConfig::default()
    })
    .await;
    let c = client(&base);
    let events = [wire_event(1)];

    let outcome = c
        .send_events(DATASET, &token("bad"), &events, None)
        .await
        .outcome;
    assert!(
        matches!(
            outcome,
            SendOutcome::Permanent {
                kind: PermanentKind::Auth,
                ..
            }
        ),
        "{outcome:?}"
    );

    let outcome = c
        .send_events("999", &token("good"), &events, None)
        .await
        .outcome;
    assert!(matches!(
        outcome,
        SendOutcome::Permanent {
            kind: PermanentKind::MissingDataset,
            ..
        }
    ));

    let mut bad = wire_event(2);
    bad["user_data"]["em"] = json!("plain@example.com");
    let outcome = c
        .send_events(DATASET, &token("good"), &[bad], None)
        .await
        .outcome;
    match outcome {
        SendOutcome::Permanent {
            kind: PermanentKind::InvalidPayload { blamed_fields },
            detail,
        } => {
            assert_eq!(
                blamed_fields,
                vec![vec!["user_data".to_owned(), "em".to_owned()]]
            );
            assert!(detail.fbtrace_id().is_some());
        }
        other => panic!("{other:?}"),
    }

    let mut stale = wire_event(3);
    stale["event_time"] = json!(crate::helpers::now() - 8 * 86_400);
    let outcome = c
        .send_events(DATASET, &token("good"), &[stale], None)
        .await
        .outcome;
    assert!(matches!(
        outcome,
        SendOutcome::Permanent {
            kind: PermanentKind::EventTooOld,
            ..
        }
    ));

    sim.set_faults(Faults {
        throttle_rate: 1.0,
        throttle_regain_minutes: 2,
        ..Faults::default()
    });
    match c
        .send_events(DATASET, &token("good"), &events, None)
        .await
        .outcome
    {
        SendOutcome::Retryable {
            kind, wait_hint, ..
        } => {
            assert_eq!(kind, RetryKind::Throttled);
            assert_eq!(wait_hint, Some(Duration::from_secs(120)));
        }
        other => panic!("{other:?}"),
    }

    sim.set_faults(Faults {
        transient_rate: 1.0,
        ..Faults::default()
    });
    let outcome = c
        .send_events(DATASET, &token("good"), &events, None)
        .await
        .outcome;
    assert!(matches!(
        outcome,
        SendOutcome::Retryable {
            kind: RetryKind::Transient,
            ..
        }
    ));

    sim.set_faults(Faults {
        server_error_rate: 1.0,
        ..Faults::default()
    });
    let outcome = c
        .send_events(DATASET, &token("good"), &events, None)
        .await
        .outcome;
    assert!(matches!(
        outcome,
        SendOutcome::Retryable {
            kind: RetryKind::ServerError,
            ..
        }
    ));
    assert!(sim.accepted(None).is_empty());
}

#[tokio::test]
async fn no_answer_within_the_timeout_is_a_timeout() {
    let (sim, base) = spawn_simulator(SimulatorConfig {
        faults: Faults {
            timeout_rate: 1.0,
            timeout_hold_ms: 3_000,
            ..Faults::default()
        },
        ..SimulatorConfig::default()
    })
    .await;
    let c = GraphClient::new(GraphConfig {
        base_url: base,
        request_timeout: Duration::from_millis(300),
        ..GraphConfig::default()
    })
    .unwrap();
    let outcome = c
        .send_events(DATASET, &token("t"), &[wire_event(1)], None)
        .await
        .outcome;
    assert!(
        matches!(
            outcome,
            SendOutcome::Retryable {
                kind: RetryKind::Timeout,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert!(sim.accepted(None).is_empty());
}

#[tokio::test]
async fn a_closed_port_is_a_network_failure() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let outcome = client(&format!("http://{addr}"))
        .send_events(DATASET, &token("t"), &[wire_event(1)], None)
        .await
        .outcome;
    assert!(matches!(
        outcome,
        SendOutcome::Retryable {
            kind: RetryKind::Network,
            ..
        }
    ));
}

#[tokio::test]
async fn the_dataset_api_is_create_or_get_with_classified_errors() {
    let (_sim, base) = spawn_simulator(SimulatorConfig {
        access_tokens: vec!["good".into()],
        denied_assets: vec!["31337".into()],
        ..SimulatorConfig::default()
    })
    .await;
    let c = client(&base);
    assert_eq!(
        c.get_dataset("102290129340398", &token("good"))
            .await
            .unwrap(),
        None
    );
    let created = c
        .create_or_get_dataset("102290129340398", &token("good"), Some("Shop"))
        .await
        .unwrap();
    let again = c
        .create_or_get_dataset("102290129340398", &token("good"), None)
        .await
        .unwrap();
    assert_eq!(created.id, again.id);
    let read = c
        .get_dataset("102290129340398", &token("good"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.id, created.id);

    let denied = c
        .create_or_get_dataset("31337", &token("good"), None)
        .await
        .unwrap_err();
    assert!(matches!(
        denied.outcome,
        SendOutcome::Permanent {
            kind: PermanentKind::Permission,
            ..
        }
    ));
    assert!(denied.to_string().contains("permission"));
    let invalid = c
        .create_or_get_dataset("102290129340398", &token("bad"), None)
        .await
        .unwrap_err();
    assert!(matches!(
        invalid.outcome,
        SendOutcome::Permanent {
            kind: PermanentKind::Auth,
            ..
        }
    ));
    assert_eq!(invalid.graph_error().map(|e| e.code), Some(190));
}
