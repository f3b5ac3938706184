//! One client never hurts another (issue 12): hostile values in every route family are a 4xx
//! naming the field while another tenant posts undisturbed; slow clients are cut off; load
//! beyond the limits is shed with 503 and `Retry-After`; a panicking handler is a 500; pages,
//! bulk replays and unknown keys are bounded.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use capi_relay::tenancy::keys::{self, Authenticator};
use relay_store::capture::NewWebhook;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{
    app::{ADMIN_KEY, API_KEY, Backend, PAGE, WABA, spawn_app, spawn_app_with},
    helpers::now,
};

both_backends!(
    hostile_values_everywhere_get_a_4xx_naming_the_field_and_never_fail_another_tenant,
    slow_clients_are_closed_after_the_header_body_and_idle_timeouts,
    load_beyond_the_limits_is_shed_with_503_and_retry_after,
    a_panicking_handler_is_answered_500_and_the_relay_keeps_serving,
    webhook_pages_are_bounded_by_bytes_and_give_a_cursor,
    a_replay_naming_100000_event_ids_is_answered,
    unknown_keys_are_remembered_apart_and_never_evict_valid_ones,
);

/// A hostile request: method, path, key, body, the status it must get, the field it must name.
type Hostile<'a> = (Method, String, &'a str, Option<Value>, u16, &'a str);

fn beta_event(asset: &str, i: usize) -> Value {
    json!({
        "event_name": "Purchase",
        "event_time": now() - 60,
        "event_id": format!("beta-{i}"),
        "messaging_channel": "whatsapp",
        "user_data": {"whatsapp_business_account_id": asset, "ctwa_clid": format!("ARAkLkA8rml-{i}")},
        "custom_data": {"currency": "BRL", "value": "1.00"}
    })
}

async fn hostile_values_everywhere_get_a_4xx_naming_the_field_and_never_fail_another_tenant(
    backend: Backend,
) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let beta_asset = app.add_wabas("beta", 1, 1).await.remove(0).0;
    let (status, key) = app
        .request(
            Method::POST,
            "/v1/admin/tenants/beta/keys",
            ADMIN_KEY,
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    let beta_key = key["key"].as_str().unwrap().to_owned();

    // Tenant beta posts single events in a loop for as long as the attack lasts.
    let stop = Arc::new(AtomicBool::new(false));
    let beta = {
        let (client, base, stop) = (app.client.clone(), app.base.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut sent, mut failures) = (0usize, Vec::new());
            while !stop.load(Ordering::Relaxed) || sent < 20 {
                let response = client
                    .post(format!("{base}/v1/events"))
                    .bearer_auth(&beta_key)
                    .json(&json!({"data": [beta_event(&beta_asset, sent)]}))
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                if status != 202 || body["accepted"] != 1 {
                    failures.push(format!("{status} {body}"));
                }
                sent += 1;
            }
            (sent, failures)
        })
    };

    let nul = "a\u{0}b";
    let long = "x".repeat(3000);
    let id_long = "9".repeat(300);
    let stage = |field: &str, value: &str| {
        let mut change = json!({"deal_id": "D-1", "pipeline_id": "sales", "stage_id": "won",
            "occurred_at": "2026-11-30T12:00:00Z", "asset_id": WABA,
            "contact": {"phone": "+55 11 98765-4321"}});
        change[field] = json!(value);
        change
    };
    let hostile: Vec<Hostile<'_>> = vec![
        (
            Method::GET,
            "/v1/events/a%00b".into(),
            API_KEY,
            None,
            404,
            "event_id",
        ),
        (
            Method::GET,
            format!("/v1/events/{id_long}"),
            API_KEY,
            None,
            404,
            "event_id",
        ),
        (
            Method::GET,
            "/v1/events/e1?dataset_id=%00".into(),
            API_KEY,
            None,
            400,
            "dataset_id",
        ),
        (
            Method::GET,
            format!("/v1/events/e1?dataset_id={long}"),
            API_KEY,
            None,
            400,
            "dataset_id",
        ),
        (
            Method::GET,
            "/v1/dead-letters?asset_id=1%002".into(),
            API_KEY,
            None,
            400,
            "asset_id",
        ),
        (
            Method::POST,
            "/v1/dead-letters/replay".into(),
            API_KEY,
            Some(json!({"event_ids": ["ok", nul]})),
            422,
            "event_ids[1]",
        ),
        (
            Method::POST,
            "/v1/dead-letters/replay".into(),
            API_KEY,
            Some(json!({"dataset_id": long})),
            422,
            "dataset_id",
        ),
        (
            Method::GET,
            format!("/v1/contacts/whatsapp/{WABA}/55%0011"),
            API_KEY,
            None,
            404,
            "customer",
        ),
        (
            Method::PUT,
            format!("/v1/contacts/whatsapp/{WABA}/5511987654321/customer-id"),
            API_KEY,
            Some(json!({"customer_id": nul})),
            422,
            "customer_id",
        ),
        (
            Method::PUT,
            format!("/v1/contacts/whatsapp/{WABA}/5511987654321/customer-id"),
            API_KEY,
            Some(json!({"customer_id": long})),
            422,
            "customer_id",
        ),
        (
            Method::GET,
            "/v1/webhooks?state=%00".into(),
            ADMIN_KEY,
            None,
            400,
            "state",
        ),
        (
            Method::POST,
            "/v1/admin/tenants".into(),
            ADMIN_KEY,
            Some(json!({"name": nul})),
            422,
            "name",
        ),
        (
            Method::POST,
            "/v1/admin/tenants".into(),
            ADMIN_KEY,
            Some(json!({"name": long})),
            422,
            "name",
        ),
        (
            Method::GET,
            "/v1/admin/tenants/%00".into(),
            ADMIN_KEY,
            None,
            404,
            "name",
        ),
        (
            Method::PATCH,
            "/v1/admin/tenants/default".into(),
            ADMIN_KEY,
            Some(json!({"test_event_code": nul})),
            422,
            "test_event_code",
        ),
        (
            Method::POST,
            "/v1/admin/tenants/default/assets".into(),
            ADMIN_KEY,
            Some(json!({"channel": "whatsapp", "asset_id": nul, "access_token": "t"})),
            422,
            "asset_id",
        ),
        (
            Method::POST,
            "/v1/admin/tenants/default/assets".into(),
            ADMIN_KEY,
            Some(
                json!({"channel": "whatsapp", "asset_id": id_long, "dataset_id": long, "access_token": "t"}),
            ),
            422,
            "dataset_id",
        ),
        (
            Method::POST,
            "/v1/admin/tenants/default/keys".into(),
            ADMIN_KEY,
            Some(json!({"label": nul})),
            422,
            "label",
        ),
        (
            Method::POST,
            "/v1/admin/tenants/default/keys".into(),
            ADMIN_KEY,
            Some(json!({"assets": [long]})),
            422,
            "assets[0]",
        ),
        (
            Method::PUT,
            "/v1/admin/assets/%00/token".into(),
            ADMIN_KEY,
            Some(json!({"access_token": "t"})),
            404,
            "asset_id",
        ),
        (
            Method::PUT,
            format!("/v1/admin/assets/{PAGE}/token"),
            ADMIN_KEY,
            Some(json!({"access_token": nul})),
            422,
            "access_token",
        ),
        (
            Method::DELETE,
            "/v1/admin/keys/%00".into(),
            ADMIN_KEY,
            None,
            404,
            "id",
        ),
        (
            Method::GET,
            "/v1/admin/audit?tenant=%00".into(),
            ADMIN_KEY,
            None,
            400,
            "tenant",
        ),
        (
            Method::GET,
            "/v1/crm/stage-changes?integration=%00".into(),
            API_KEY,
            None,
            400,
            "integration",
        ),
        (
            Method::POST,
            "/v1/admin/crm/rules".into(),
            ADMIN_KEY,
            Some(
                json!({"tenant": nul, "source": "kommo", "pipeline_id": "any", "stage_id": 142, "event": "Purchase"}),
            ),
            422,
            "tenant",
        ),
        (
            Method::GET,
            "/v1/admin/crm/rules?tenant=%00".into(),
            ADMIN_KEY,
            None,
            400,
            "tenant",
        ),
        (
            Method::DELETE,
            "/v1/admin/crm/rules/1?tenant=%00".into(),
            ADMIN_KEY,
            None,
            400,
            "tenant",
        ),
        (
            Method::GET,
            "/v1/admin/crm/integrations?tenant=%00".into(),
            ADMIN_KEY,
            None,
            400,
            "tenant",
        ),
        (
            Method::GET,
            "/v1/stats/overview?dataset=%00".into(),
            API_KEY,
            None,
            400,
            "dataset",
        ),
        (
            Method::GET,
            format!("/v1/stats/events?dataset={long}"),
            API_KEY,
            None,
            400,
            "dataset",
        ),
        (
            Method::POST,
            "/webhooks/meta?waba_id=%00".into(),
            "",
            Some(json!({})),
            400,
            "waba_id",
        ),
        (
            Method::GET,
            "/webhooks/meta?hub.challenge=%00".into(),
            "",
            None,
            400,
            "hub.challenge",
        ),
        (
            Method::POST,
            "/webhooks/kommo/%00".into(),
            "",
            None,
            404,
            "secret",
        ),
        (
            Method::POST,
            "/v26.0/1%002/events".into(),
            API_KEY,
            Some(json!({"data": [crate::app::whatsapp_event(1)]})),
            400,
            "dataset_id",
        ),
        (
            Method::POST,
            format!(
                "/v26.0/{}/events?test_event_code=%00",
                crate::app::WABA_DATASET
            ),
            API_KEY,
            Some(json!({"data": [crate::app::whatsapp_event(1)]})),
            400,
            "test_event_code",
        ),
    ];
    for (method, path, key, body, status, field) in &hostile {
        let mut request = app
            .client
            .request(method.clone(), format!("{}{path}", app.base));
        if !key.is_empty() {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        let got = response.status().as_u16();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        // Meta's shape (the Graph route) puts the detail in error_user_msg.
        let message = format!(
            "{} {}",
            answer["error"]["message"].as_str().unwrap_or_default(),
            answer["error"]["error_user_msg"]
                .as_str()
                .unwrap_or_default()
        );
        assert_eq!(got, *status, "{method} {path}: {answer}");
        assert!(
            message.contains(field),
            "{method} {path}: the answer names {field}: {answer}"
        );
    }
    // A Kommo body with a NUL in a field, and bodies whose values are judged per item.
    let kommo = app
        .client
        .post(format!("{}/webhooks/kommo/some-secret", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("leads%5Bstatus%5D%5B0%5D%5Bid%5D=1%002")
        .send()
        .await
        .unwrap();
    assert_eq!(kommo.status(), 422);
    let answer: Value = kommo.json().await.unwrap();
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("leads[status][0][id]"),
        "{answer}"
    );
    for (field, value) in [("deal_id", nul), ("stage_id", long.as_str())] {
        let (status, body) = app
            .request(
                Method::POST,
                "/v1/crm/stage-changes",
                API_KEY,
                Some(&stage(field, value)),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["results"][0]["outcome"], "invalid", "{body}");
        assert_eq!(body["results"][0]["errors"][0]["path"], field, "{body}");
    }
    let mut bad_contact = crate::app::whatsapp_event(7);
    bad_contact["event_id"] = json!(id_long);
    let (status, body) = app
        .post_events(&[crate::app::whatsapp_event(8), bad_contact])
        .await;
    assert_eq!(
        (status, body["accepted"].as_u64()),
        (202, Some(1)),
        "{body}"
    );
    assert_eq!(
        body["results"][1]["errors"][0]["path"], "event_id",
        "{body}"
    );

    stop.store(true, Ordering::Relaxed);
    let (sent, failures) = beta.await.unwrap();
    assert!(
        failures.is_empty(),
        "tenant beta saw {} failures of {sent}: {failures:?}",
        failures.len()
    );
    // Nothing hostile was stored: the relay still answers everything normally.
    let (status, tenants) = app
        .request(Method::GET, "/v1/admin/tenants", ADMIN_KEY, None)
        .await;
    assert_eq!(status, 200, "{tenants}");
    assert!(!tenants.to_string().contains("\\u0000"), "{tenants}");
}

/// Sends `head` then one byte of `trickle` every 100 ms; returns how long the relay took to
/// close the connection (`None`: still open after `give_up`) and what it answered.
async fn trickle(
    base: &str,
    head: String,
    trickle: &'static [u8],
    give_up: Duration,
) -> (Option<Duration>, String) {
    let address = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).await.unwrap();
    let started = Instant::now();
    stream.write_all(head.as_bytes()).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        if trickle.is_empty() {
            // Nothing more to send, but the write side stays open.
            std::future::pending::<()>().await;
        }
        for b in trickle.iter().cycle() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if write.write_all(&[*b]).await.is_err() {
                return;
            }
        }
    });
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(give_up, async {
        let mut buf = [0u8; 4096];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok();
    writer.abort();
    (closed, String::from_utf8_lossy(&answer).into_owned())
}

async fn slow_clients_are_closed_after_the_header_body_and_idle_timeouts(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| {
        c.http.header_read_timeout = Duration::from_millis(500);
        c.http.body_read_timeout = Duration::from_secs(1);
    })
    .await
    else {
        return;
    };
    let give_up = Duration::from_secs(5);
    // 50 connections sending their headers a byte at a time.
    let slow_headers: Vec<_> = (0..50)
        .map(|_| {
            let base = app.base.clone();
            tokio::spawn(async move {
                trickle(
                    &base,
                    "GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: ".into(),
                    b"a",
                    give_up,
                )
                .await
            })
        })
        .collect();
    // Idle keep-alive after one request.
    let idle = {
        let base = app.base.clone();
        tokio::spawn(async move {
            trickle(
                &base,
                "GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n".into(),
                b"",
                give_up,
            )
            .await
        })
    };
    // A body sent a byte at a time.
    let slow_body = {
        let base = app.base.clone();
        tokio::spawn(async move {
            let head = format!(
                "POST /v1/events HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {API_KEY}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{{"
            );
            trickle(&base, head, b" ", give_up).await
        })
    };
    // Meanwhile the relay serves others.
    let (status, _) = app.get_json("/healthz").await;
    assert_eq!(status, 200);
    for task in slow_headers {
        let (closed, _) = task.await.unwrap();
        let closed = closed.expect("a connection sending its headers slowly is closed");
        assert!(closed < Duration::from_secs(3), "closed after {closed:?}");
    }
    let (closed, answer) = idle.await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(closed.expect("an idle keep-alive connection is closed") < Duration::from_secs(3));
    let (closed, answer) = slow_body.await.unwrap();
    assert!(closed.expect("a slow body's connection is closed") < Duration::from_secs(4));
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    let (status, body) = app.post_events(&[crate::app::whatsapp_event(1)]).await;
    assert_eq!(status, 202, "{body}");
}

/// Opens a request whose body never finishes: it holds its place until the body timeout.
async fn hold(base: &str, path: &str, key: &str, length: usize) -> TcpStream {
    let mut stream = TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n\r\n{{"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

async fn expect_shed(response: reqwest::Response, what: &str) {
    assert_eq!(response.status(), 503, "{what}");
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1"),
        "{what}"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded", "{what}: {body}");
}

async fn load_beyond_the_limits_is_shed_with_503_and_retry_after(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| {
        c.http.max_requests_in_flight = 3;
        c.http.max_connections = 8;
        c.http.body_read_timeout = Duration::from_secs(20);
        c.http.header_read_timeout = Duration::from_secs(20);
        c.max_body_bytes = 256 * 1024;
        c.http.body_budget_bytes = 256 * 1024;
        c.http.body_budget_wait = Duration::from_millis(200);
        c.webhooks.max_body_bytes = 64 * 1024;
        c.http.unauthenticated_budget_bytes = 64 * 1024;
    })
    .await
    else {
        return;
    };
    let client = || {
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
    };
    let url = |path: &str| format!("{}{path}", app.base);

    // The large-body budget: one 200 KiB body in flight leaves no room for another large one,
    // but a single event passes.
    let big = hold(&app.base, "/v1/events", API_KEY, 200 * 1024).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = client()
        .post(url("/v1/events"))
        .bearer_auth(API_KEY)
        .header("content-type", "application/json")
        .body(format!(
            "{{\"data\": [], \"pad\": \"{}\"}}",
            "x".repeat(100 * 1024)
        ))
        .send()
        .await
        .unwrap();
    expect_shed(second, "a second large body").await;
    let (status, body) = app.post_events(&[crate::app::whatsapp_event(1)]).await;
    assert_eq!(status, 202, "a single event is not held back: {body}");
    // The webhook budget: one 64 KiB unsigned webhook in flight, the next is shed at once.
    let webhook = hold(&app.base, "/webhooks/meta", "", 64 * 1024).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let second = client()
        .post(url("/webhooks/meta"))
        .body("{\"object\": \"whatsapp_business_account\"}")
        .send()
        .await
        .unwrap();
    expect_shed(second, "a webhook beyond the unauthenticated budget").await;
    assert!(started.elapsed() < Duration::from_secs(2));

    // The in-flight limit: with three requests held, the fourth is shed; health checks pass.
    let third = hold(&app.base, "/v1/admin/tenants", ADMIN_KEY, 10).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    expect_shed(
        client()
            .get(url("/v1/events/x"))
            .bearer_auth(API_KEY)
            .send()
            .await
            .unwrap(),
        "a request beyond http.max_requests_in_flight",
    )
    .await;
    assert_eq!(
        client().get(url("/healthz")).send().await.unwrap().status(),
        200
    );

    // The connection limit: 3 held and 10 idle are more than 8; the next is answered 503 and
    // closed (whichever pooled connections of the client came and went).
    let mut idle = Vec::new();
    for _ in 0..10 {
        idle.push(
            TcpStream::connect(app.base.trim_start_matches("http://"))
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A client connection that closed late may have held a permit while the idle ones came, and
    // freed it since: each connection left unanswered holds one more, so within 8 more the
    // server is full whatever the timing, and the next is refused.
    let mut unanswered = Vec::new();
    let answer = loop {
        let mut over = TcpStream::connect(app.base.trim_start_matches("http://"))
            .await
            .unwrap();
        let mut answer = String::new();
        match tokio::time::timeout(Duration::from_secs(1), over.read_to_string(&mut answer)).await {
            Ok(read) => {
                read.unwrap();
                break answer;
            }
            Err(_) => {
                assert!(
                    unanswered.len() < 8,
                    "no connection over http.max_connections was refused"
                );
                unanswered.push(over);
            }
        }
    };
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.to_lowercase().contains("retry-after: 1"), "{answer}");

    // Once the held requests go, everything is served again.
    drop((big, webhook, third, idle, unanswered));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = app.post_events(&[crate::app::whatsapp_event(2)]).await;
    assert_eq!(status, 202, "{body}");
}

async fn a_panicking_handler_is_answered_500_and_the_relay_keeps_serving(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| c.http.test_panic_route = true).await else {
        return;
    };
    for _ in 0..3 {
        let (status, body) = app.get_json("/v1/test/panic").await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (500, Some("internal")),
            "{body}"
        );
    }
    let (status, body) = app.post_events(&[crate::app::whatsapp_event(1)]).await;
    assert_eq!(status, 202, "{body}");
    let (status, _) = app.get_json("/healthz").await;
    assert_eq!(status, 200);
}

async fn webhook_pages_are_bounded_by_bytes_and_give_a_cursor(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    // Five 3 MiB deliveries: 15 MiB in all, more than one 8 MiB page.
    for i in 0..5u8 {
        let body = vec![b'a' + i; 3 * 1024 * 1024];
        app.store
            .insert_webhook(&NewWebhook {
                body_sha256: format!("{i:064}"),
                body,
                signature: "sha256=x".into(),
                waba_hint: None,
                // Received now: at time 0 they were past every retention, and the relay's
                // purge could delete one between two pages.
                received_at_ms: chrono::Utc::now().timestamp_millis(),
                forward: false,
            })
            .await
            .unwrap();
    }
    let (mut seen, mut pages, mut path) = (Vec::new(), 0, "/v1/webhooks?limit=1000".to_owned());
    loop {
        let response = app
            .client
            .get(format!("{}{path}", app.base))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let bytes = response.bytes().await.unwrap();
        assert!(
            bytes.len() < 9 * 1024 * 1024,
            "a page of {} bytes",
            bytes.len()
        );
        let page: Value = serde_json::from_slice(&bytes).unwrap();
        let webhooks = page["webhooks"].as_array().unwrap();
        assert!(
            !webhooks.is_empty() && webhooks.len() <= 2,
            "{}",
            webhooks.len()
        );
        seen.extend(webhooks.iter().map(|w| w["id"].as_i64().unwrap()));
        pages += 1;
        match page["next_before"].as_i64() {
            Some(before) => path = format!("/v1/webhooks?limit=1000&before={before}"),
            None => break,
        }
        assert!(pages < 10);
    }
    let mut sorted = seen.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    sorted.dedup();
    assert_eq!(
        (seen.len(), sorted),
        (5, seen.clone()),
        "every delivery once, newest first"
    );
    assert_eq!(pages, 3);
}

async fn a_replay_naming_100000_event_ids_is_answered(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.sim.set_faults(capi_relay::simulator::Faults {
        reject_events_containing: Some("wa-3\"".into()),
        ..Default::default()
    });
    let events: Vec<Value> = (0..5).map(crate::app::whatsapp_event).collect();
    app.post_events(&events).await;
    app.wait_for_empty_queue(Duration::from_secs(30)).await;
    app.sim.set_faults(Default::default());
    let mut ids: Vec<String> = (0..100_000).map(|i| format!("unknown-{i}")).collect();
    ids[77_777] = "wa-3".into();
    let (status, body) = app
        .post_json("/v1/dead-letters/replay", &json!({ "event_ids": ids }))
        .await;
    assert_eq!(
        (status, body["replayed"].as_u64()),
        (200, Some(1)),
        "{body}"
    );
    app.wait_until(Duration::from_secs(30), "the replayed event", |a| {
        a.delivered_ids().len() == 5
    })
    .await;
}

async fn unknown_keys_are_remembered_apart_and_never_evict_valid_ones(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (status, made) = app
        .request(
            Method::POST,
            "/v1/admin/tenants/default/keys",
            ADMIN_KEY,
            None,
        )
        .await;
    assert_eq!(status, 201, "{made}");
    let valid = made["key"].as_str().unwrap().to_owned();
    let auth =
        Authenticator::new(app.store.clone(), None, None).with_cache_ttl(Duration::from_secs(600));
    assert!(auth.tenant_scope(&valid).await.unwrap().is_some());
    assert_eq!(auth.store_lookups(), 1);

    // 10,000 made-up keys shaped like real ones: each asked once, none evicts the valid key.
    let unknown: Vec<String> = (0..10_000)
        .map(|_| {
            let key = keys::generate("default", None, None, 0).key;
            secrecy::ExposeSecret::expose_secret(&key).to_owned()
        })
        .collect();
    for key in &unknown {
        assert!(auth.tenant_scope(key).await.unwrap().is_none());
    }
    assert_eq!(auth.store_lookups(), 10_001);
    assert!(auth.tenant_scope(&valid).await.unwrap().is_some());
    assert_eq!(
        auth.store_lookups(),
        10_001,
        "the valid key is still cached"
    );
    // The latest unknown keys are answered without the store; keys not shaped like a relay's
    // never reach it.
    for key in &unknown[9_000..] {
        assert!(auth.tenant_scope(key).await.unwrap().is_none());
    }
    for junk in [
        "crk_short",
        "crk_",
        "not-a-key",
        &format!("crk_{}", "é".repeat(43)),
    ] {
        assert!(auth.tenant_scope(junk).await.unwrap().is_none());
    }
    assert_eq!(auth.store_lookups(), 10_001);
}
