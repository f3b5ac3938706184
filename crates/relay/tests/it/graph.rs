//! The Graph-compatible `POST /{version}/{dataset_id}/events` from the outside: Meta's request
//! encodings and token places, Meta's answers, all-or-nothing refusals, dedup, and the asset
//! id filled from the dataset (both backends).

use std::time::Duration;

use serde_json::{Value, json};

use crate::{
    app::{
        ADMIN_KEY, API_KEY, Backend, PAGE, PAGE_DATASET, TestApp, WABA, WABA_DATASET, spawn_app,
    },
    helpers::now,
};

const WAIT: Duration = Duration::from_secs(30);
/// SHA-256 of `john_smith@gmail.com` (spec §2.8), as an SDK sends it.
const EM: &str = "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f";

both_backends!(
    a_json_request_with_a_bearer_key_is_committed_and_delivered_as_meta_expects,
    form_bodies_and_query_tokens_are_accepted_as_the_python_sdk_sends_them,
    one_invalid_event_refuses_the_whole_request_and_stores_nothing,
    a_resent_batch_is_counted_but_never_delivered_twice,
    datasets_outside_the_key_get_metas_unknown_object_error,
    an_ambiguous_whatsapp_dataset_asks_for_the_asset_id,
    tokens_and_versions_get_metas_errors,
);

async fn graph_post(app: &TestApp, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
    let mut request = app.client.post(format!("{}{path}", app.base)).json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// A WhatsApp event as Meta's SDKs build it: `ctwa_clid` alone, PII already hashed.
fn sdk_whatsapp_event(i: usize, time: i64) -> Value {
    json!({"event_name": "Purchase", "event_time": time, "event_id": format!("g-wa-{i}"),
        "action_source": "business_messaging", "messaging_channel": "whatsapp",
        "user_data": {"ctwa_clid": format!("ARAkclid{i}"), "em": [EM]},
        "custom_data": {"currency": "usd", "value": 12.5}})
}

async fn payload(app: &TestApp, event_id: &str, dataset_id: &str) -> String {
    let mut found = app
        .store
        .find_events(event_id, Some(dataset_id), None)
        .await
        .unwrap();
    assert_eq!(found.len(), 1, "{event_id} stored once");
    found.remove(0).payload
}

async fn a_json_request_with_a_bearer_key_is_committed_and_delivered_as_meta_expects(
    backend: Backend,
) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let time = now() - 60;
    let (status, body) = graph_post(
        &app,
        &format!("/v21.0/{WABA_DATASET}/events"),
        Some(API_KEY),
        &json!({"data": [sdk_whatsapp_event(1, time)], "partner_agent": "crm-x",
            "upload_tag": "t", "namespace_id": "n", "appsecret_proof": "p"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events_received"], 1, "{body}");
    assert_eq!(body["messages"], json!([]), "{body}");
    assert!(body["fbtrace_id"].as_str().is_some_and(|t| t.len() >= 11));
    // Committed before the answer: the asset id filled in, the digest kept as sent.
    let expected = format!(
        r#"{{"event_name":"Purchase","event_time":{time},"event_id":"g-wa-1","action_source":"business_messaging","messaging_channel":"whatsapp","user_data":{{"whatsapp_business_account_id":"{WABA}","ctwa_clid":"ARAkclid1","em":"{EM}"}},"custom_data":{{"currency":"USD","value":12.5}}}}"#
    );
    assert_eq!(payload(&app, "g-wa-1", WABA_DATASET).await, expected);
    app.wait_for_empty_queue(WAIT).await;
    let delivered = app.sim.accepted(Some(WABA_DATASET));
    assert_eq!(delivered.len(), 1);
    assert_eq!(
        delivered[0].event,
        serde_json::from_str::<Value>(&expected).unwrap()
    );
}

async fn form_bodies_and_query_tokens_are_accepted_as_the_python_sdk_sends_them(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let event = json!({"event_name": "LeadSubmitted", "event_time": now() - 30, "event_id": "g-ms-1",
        "action_source": "business_messaging", "messaging_channel": "messenger",
        "user_data": {"page_id": PAGE, "page_scoped_user_id": "7000000000000001", "ph": [EM],
            "external_id": ["crm-42"]}});
    // The Python SDK: form-encoded, `data` a JSON list of JSON strings, the token in the body.
    let data = serde_json::to_string(&[event.to_string()]).unwrap();
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("data", &data)
        .append_pair("access_token", API_KEY)
        .append_pair("test_event_code", "TEST123")
        .finish();
    let response = app
        .client
        .post(format!("{}/v24.0/{PAGE_DATASET}/events", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        (status, &body["events_received"]),
        (200, &json!(1)),
        "{body}"
    );
    let stored = app
        .store
        .find_events("g-ms-1", Some(PAGE_DATASET), None)
        .await
        .unwrap();
    assert_eq!(stored[0].test_event_code.as_deref(), Some("TEST123"));
    let sent: Value = serde_json::from_str(&stored[0].payload).unwrap();
    assert_eq!(
        sent["user_data"]["ph"], EM,
        "a digest is never hashed again"
    );
    // A plain external_id (the Python SDK does not hash it) is hashed here.
    assert_eq!(
        sent["user_data"]["external_id"],
        relay_core::pii::sha256_hex("crm-42")
    );

    // The token in the query, a JSON body.
    let mut second = event.clone();
    second["event_id"] = json!("g-ms-2");
    let (status, body) = graph_post(
        &app,
        &format!("/v24.0/{PAGE_DATASET}/events?access_token={API_KEY}"),
        None,
        &json!({"data": [second]}),
    )
    .await;
    assert_eq!(
        (status, &body["events_received"]),
        (200, &json!(1)),
        "{body}"
    );
    app.wait_for_empty_queue(WAIT).await;
    assert_eq!(app.sim.accepted(Some(PAGE_DATASET)).len(), 2);
    assert_eq!(
        app.sim.accepted(Some(PAGE_DATASET))[0]
            .test_event_code
            .as_deref(),
        Some("TEST123")
    );
}

async fn one_invalid_event_refuses_the_whole_request_and_stores_nothing(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let mut stale = sdk_whatsapp_event(2, now() - 8 * 24 * 3600);
    stale["event_id"] = json!("g-stale");
    let mut bad_currency = sdk_whatsapp_event(3, now() - 60);
    bad_currency["custom_data"]["currency"] = json!("XYZ");
    let (status, body) = graph_post(
        &app,
        &format!("/v21.0/{WABA_DATASET}/events"),
        Some(API_KEY),
        &json!({"data": [sdk_whatsapp_event(1, now() - 60), stale, bad_currency]}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let error = &body["error"];
    assert_eq!(error["code"], 100, "{body}");
    assert_eq!(error["error_subcode"], 2804003, "{body}");
    assert_eq!(error["is_transient"], false, "{body}");
    assert_eq!(error["type"], "OAuthException", "{body}");
    assert!(error["fbtrace_id"].as_str().is_some(), "{body}");
    let msg = error["error_user_msg"].as_str().unwrap();
    assert!(msg.contains("data[1]") && msg.contains("data[2]"), "{msg}");
    let blamed = error["error_data"]["blame_field_specs"].as_array().unwrap();
    assert!(blamed.contains(&json!(["event_time"])), "{body}");
    assert!(
        blamed.contains(&json!(["custom_data", "currency"])),
        "{body}"
    );
    // Nothing stored, not even the valid first event.
    for id in ["g-wa-1", "g-stale", "g-wa-3"] {
        let found = app.store.find_events(id, None, None).await.unwrap();
        assert!(found.is_empty(), "{id} was stored");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(app.sim.accepted(None).is_empty());
}

async fn a_resent_batch_is_counted_but_never_delivered_twice(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let time = now() - 60;
    let batch = json!({"data": [sdk_whatsapp_event(1, time), sdk_whatsapp_event(2, time)]});
    let path = format!("/v21.0/{WABA_DATASET}/events");
    let (status, first) = graph_post(&app, &path, Some(API_KEY), &batch).await;
    assert_eq!(
        (status, &first["events_received"]),
        (200, &json!(2)),
        "{first}"
    );
    app.wait_for_empty_queue(WAIT).await;
    let (status, again) = graph_post(&app, &path, Some(API_KEY), &batch).await;
    assert_eq!(
        (status, &again["events_received"]),
        (200, &json!(2)),
        "{again}"
    );
    let messages = again["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "{again}");
    assert!(messages[0].as_str().unwrap().contains("not sent again"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.wait_for_empty_queue(WAIT).await;
    assert_eq!(app.delivered_ids(), ["g-wa-1", "g-wa-2"]);
}

async fn datasets_outside_the_key_get_metas_unknown_object_error(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let other = app.add_wabas("globex", 1, 1).await;
    // Added before the first request, which loads the asset registry.
    app.add_asset("whatsapp", "333333333333", "3334445556")
        .await;
    for dataset in ["999999999", other[0].1.as_str()] {
        let (status, body) = graph_post(
            &app,
            &format!("/v21.0/{dataset}/events"),
            Some(API_KEY),
            &json!({"data": [sdk_whatsapp_event(1, now() - 60)]}),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(
            (&body["error"]["code"], &body["error"]["error_subcode"]),
            (&json!(100), &json!(33)),
            "{body}"
        );
    }
    // An event naming an asset of another dataset of the same key is refused.
    let mut elsewhere = sdk_whatsapp_event(1, now() - 60);
    elsewhere["user_data"]["whatsapp_business_account_id"] = json!(WABA);
    let (status, body) = graph_post(
        &app,
        "/v21.0/3334445556/events",
        Some(API_KEY),
        &json!({"data": [elsewhere]}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let msg = body["error"]["error_user_msg"].as_str().unwrap_or_default();
    assert!(msg.contains("not to dataset 3334445556"), "{body}");
}

async fn an_ambiguous_whatsapp_dataset_asks_for_the_asset_id(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.add_asset("whatsapp", "102290129340399", WABA_DATASET)
        .await;
    let path = format!("/v21.0/{WABA_DATASET}/events");
    let (status, body) = graph_post(
        &app,
        &path,
        Some(API_KEY),
        &json!({"data": [sdk_whatsapp_event(1, now() - 60)]}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let msg = body["error"]["error_user_msg"].as_str().unwrap();
    assert!(
        msg.contains("user_data.whatsapp_business_account_id") && msg.contains("2 whatsapp assets"),
        "{msg}"
    );
    assert_eq!(
        body["error"]["error_data"]["blame_field_specs"],
        json!([["user_data", "whatsapp_business_account_id"]])
    );
    // Naming the asset resolves it.
    let mut named = sdk_whatsapp_event(1, now() - 60);
    named["user_data"]["whatsapp_business_account_id"] = json!("102290129340399");
    let (status, body) = graph_post(&app, &path, Some(API_KEY), &json!({"data": [named]})).await;
    assert_eq!(status, 200, "{body}");
}

async fn tokens_and_versions_get_metas_errors(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let body = json!({"data": [sdk_whatsapp_event(1, now() - 60)]});
    let path = format!("/v21.0/{WABA_DATASET}/events");
    let cases = [
        (None, path.clone(), 400, 104),
        (Some("wrong-key"), path.clone(), 400, 190),
        (Some(ADMIN_KEY), path.clone(), 403, 200),
        (
            Some(API_KEY),
            format!("/21.0/{WABA_DATASET}/events"),
            400,
            2500,
        ),
    ];
    for (token, path, status, code) in cases {
        let (got, answer) = graph_post(&app, &path, token, &body).await;
        assert_eq!(
            (got, &answer["error"]["code"]),
            (status, &json!(code)),
            "{path} {answer}"
        );
        assert!(answer["error"]["fbtrace_id"].is_string(), "{answer}");
        assert!(
            !answer.to_string().contains("wrong-key"),
            "the token is never echoed"
        );
    }
    let response = app
        .client
        .post(format!("{}{path}", app.base))
        .bearer_auth(API_KEY)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["error"]["code"], 100, "{answer}");
}
