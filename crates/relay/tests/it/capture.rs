//! Capture end to end (issue #4): signed Meta webhooks in every shape into contacts and touches,
//! conversions by contact delivered with the captured identity, forwarding, retention — on
//! SQLite and on PostgreSQL.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use capi_relay::{capture::sign, config::Config};
use relay_store::{
    Asset, AssetStatus, DEFAULT_TENANT,
    capture::{CaptureOptions, NewWebhook},
};
use secrecy::SecretString;
use serde_json::{Value, json};

use reqwest::Method;

use crate::{
    app::{ADMIN_KEY, Backend, PAGE, PAGE_DATASET, TOKEN, TestApp, WABA, spawn_app_with},
    helpers::now,
};

const WAIT: Duration = Duration::from_secs(30);
const APP_SECRET: &str = "test-app-secret";
const OTHER_APP_SECRET: &str = "second-app-secret";
const VERIFY_TOKEN: &str = "test-verify-token";
const IG_ACCOUNT: &str = "17841400000000001";
const CLICK_ID: &str = "ARAkLkA8rmlFeiCktEJQ-QTwRiyYHAFDLMNDBH0CD3qpjd0HR4irJ6LEkR7JwFF4XvnO2E4Nx0-eM-GABDLOPaOdRMv-_zfUQ2a";
const WA_PHONE: &str = "+55 11 98765-4321";
const WA_STATUS_PHONE: &str = "+55 11 91234-5678";

both_backends!(
    the_handshake_echoes_the_challenge_only_for_the_verify_token,
    signed_webhooks_of_every_shape_become_contacts_and_touches,
    forged_unsigned_truncated_and_oversized_webhooks_are_refused_and_nothing_is_stored,
    redeliveries_are_stored_once_and_touches_never_duplicate,
    a_signed_payload_that_cannot_be_understood_is_kept_and_acknowledged,
    a_conversion_by_phone_is_delivered_with_the_captured_click_id,
    a_crm_customer_id_linked_once_reports_conversions_from_then_on,
    contacts_are_visible_only_to_keys_that_own_the_asset,
    messenger_and_instagram_conversions_by_scoped_id_are_delivered,
    status_ad_touches_are_no_attribution_unless_the_asset_allows_the_hashed_phone,
    automatic_events_are_reported_once_for_opted_in_assets,
    automatic_events_in_other_spellings_are_unscaled_and_refusals_kept_on_the_webhook,
    a_user_id_update_lets_a_conversion_by_the_new_id_find_the_click_id,
    webhooks_stored_before_a_restart_are_processed_at_start,
    verified_webhooks_are_forwarded_upstream_with_their_signature_and_retried,
    a_forward_error_names_the_forward_url_without_its_credentials,
    retention_purges_old_attribution_data,
    one_bad_message_in_a_delivery_is_recorded_and_every_other_message_is_captured,
    a_store_error_while_processing_is_retried_until_it_passes,
    capture_reprocess_processes_a_failed_delivery_again,
    no_raw_phone_name_or_message_text_is_left_in_the_database_after_processing,
    a_debug_raw_body_retention_keeps_the_body_then_removes_it,
);

/// A fixture body with `__TS__`/`__TS_MS__` set to `at` (Unix seconds).
fn fixture_at(name: &str, at: i64) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/webhooks/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(path)
        .unwrap()
        .replace("__TS_MS__", &(at * 1000).to_string())
        .replace("__TS__", &at.to_string())
        .into_bytes()
}

fn fixture(name: &str) -> Vec<u8> {
    fixture_at(name, now() - 120)
}

fn capture_config(c: &mut Config) {
    c.meta_app_secret = Some(SecretString::from(APP_SECRET.to_owned()));
    c.meta_verify_token = Some(SecretString::from(VERIFY_TOKEN.to_owned()));
    c.webhooks.apps = vec![capi_relay::config::MetaApp {
        app_secret: SecretString::from(OTHER_APP_SECRET.to_owned()),
        verify_token: None,
    }];
    c.webhooks.max_body_bytes = 64 * 1024;
}

async fn spawn(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Option<TestApp> {
    let app = spawn_app_with(backend, |c| {
        capture_config(c);
        tweak(c);
    })
    .await?;
    app.store
        .upsert_asset(&Asset {
            tenant: DEFAULT_TENANT.into(),
            channel: "instagram".into(),
            asset_id: IG_ACCOUNT.into(),
            dataset_id: PAGE_DATASET.into(),
            sealed_token: app
                .vault
                .seal(&SecretString::from(TOKEN.to_owned()), IG_ACCOUNT),
            test_event_code: None,
            status: AssetStatus::Active,
            status_reason: None,
            created_at_ms: 0,
            updated_at_ms: 0,
        })
        .await
        .unwrap();
    Some(app)
}

impl TestApp {
    async fn post_webhook(
        &self,
        query: &str,
        body: &[u8],
        signature: Option<&str>,
    ) -> (u16, String) {
        let mut request = self
            .client
            .post(format!("{}/webhooks/meta{query}", self.base))
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(signature) = signature {
            request = request.header("x-hub-signature-256", signature);
        }
        let response = request.send().await.unwrap();
        (
            response.status().as_u16(),
            response.text().await.unwrap_or_default(),
        )
    }

    /// Posts `body` signed with the app secret, and waits until it is processed.
    async fn deliver(&self, query: &str, body: &[u8]) {
        let (status, text) = self
            .post_webhook(query, body, Some(&sign(APP_SECRET, body)))
            .await;
        assert_eq!(status, 200, "{text}");
        self.wait_processed().await;
    }

    async fn wait_processed(&self) {
        let started = std::time::Instant::now();
        while !self
            .store
            .pending_webhooks(i64::MAX, 1)
            .await
            .unwrap()
            .is_empty()
        {
            assert!(started.elapsed() < WAIT, "webhooks still pending");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn contact(&self, channel: &str, asset: &str, customer: &str) -> (u16, Value) {
        let customer = customer.replace('+', "%2B").replace(' ', "%20");
        self.get_json(&format!("/v1/contacts/{channel}/{asset}/{customer}"))
            .await
    }

    /// The delivered event with this id, waiting for it.
    async fn delivered(&self, event_id: &str) -> Value {
        self.wait_until(WAIT, event_id, |a| {
            a.delivered_ids().iter().any(|id| id == event_id)
        })
        .await;
        self.sim
            .accepted(None)
            .into_iter()
            .find(|e| e.event["event_id"] == event_id)
            .unwrap()
            .event
    }
}

fn purchase_by(contact: Value, event_id: &str) -> Value {
    json!({
        "event_name": "Purchase",
        "event_time": now() - 30,
        "event_id": event_id,
        "messaging_channel": "whatsapp",
        "contact": contact,
        "user_data": {"whatsapp_business_account_id": WABA},
        "custom_data": {"currency": "BRL", "value": "120.50"}
    })
}

async fn the_handshake_echoes_the_challenge_only_for_the_verify_token(backend: Backend) {
    let Some(mut app) = spawn(backend, |_| {}).await else {
        return;
    };
    let get = |query: String| {
        let client = app.client.clone();
        let url = format!("{}/webhooks/meta?{query}", app.base);
        async move {
            let r = client.get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status, body) = get(format!(
        "hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token={VERIFY_TOKEN}"
    ))
    .await;
    assert_eq!((status, body.as_str()), (200, "1158201444"));
    let (status, _) =
        get("hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token=wrong".into()).await;
    assert_eq!(status, 403);
    let (status, _) = get(format!(
        "hub.mode=unsubscribe&hub.challenge=1&hub.verify_token={VERIFY_TOKEN}"
    ))
    .await;
    assert_eq!(status, 403);
    app.stop().await;
}

async fn signed_webhooks_of_every_shape_become_contacts_and_touches(backend: Backend) {
    let Some(mut app) = spawn(backend, |_| {}).await else {
        return;
    };
    for name in [
        "whatsapp_cloud_referral.json",
        "whatsapp_cloud_status_ad.json",
        "whatsapp_cloud_bsuid.json",
        "messenger.json",
        "instagram.json",
    ] {
        app.deliver("", &fixture(name)).await;
    }
    app.deliver(
        &format!("?waba_id={WABA}"),
        &fixture("whatsapp_onprem.json"),
    )
    .await;

    // WhatsApp by phone (any spelling), by wa_id, and the phone is only stored hashed.
    let (status, shown) = app.contact("whatsapp", WABA, WA_PHONE).await;
    assert_eq!(status, 200, "{shown}");
    let touch = &shown["touches"][0];
    assert_eq!(touch["click_id"], CLICK_ID);
    assert_eq!(touch["ad_id"], "120226305854810726");
    assert_eq!(touch["source_type"], "ad");
    assert_eq!(touch["source_url"], "https://fb.me/3cr4Wqqkv");
    assert_eq!(touch["headline"], "Café especial");
    assert_eq!(touch["body"], "Promoção de verão: 20% de desconto");
    assert_eq!(
        shown["contact"]["phone_hash"],
        relay_core::pii::sha256_hex("5511987654321")
    );
    assert!(
        !shown.to_string().contains("5511987654321"),
        "no plaintext phone"
    );
    let conversation = shown["contact"]["conversation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(conversation.starts_with("cv1-"));
    for alias in [
        "wa_id:5511987654321",
        "5511987654321",
        conversation.as_str(),
    ] {
        let (_, again) = app.contact("whatsapp", WABA, alias).await;
        assert_eq!(again["contact"]["conversation_id"], conversation, "{alias}");
    }

    let (_, status_ad) = app.contact("whatsapp", WABA, WA_STATUS_PHONE).await;
    assert_eq!(status_ad["touches"][0]["ad_id"], "120226305854810999");
    assert!(
        status_ad["touches"][0]
            .get("click_id")
            .is_none_or(Value::is_null)
    );

    let (_, bsuid) = app
        .contact("whatsapp", WABA, "US.13491208655302741918")
        .await;
    assert_eq!(bsuid["touches"][0]["click_id"], "ARBsuidClickId-7Hq2");
    assert!(bsuid["contact"]["phone_hash"].is_null());

    let (_, onprem) = app.contact("whatsapp", WABA, "+16315551234").await;
    assert_eq!(onprem["touches"][0]["ad_id"], "1234567890");

    let (_, psid) = app.contact("messenger", PAGE, "7010000000000001").await;
    assert_eq!(psid["touches"][0]["ad_id"], "6045246247433");
    assert_eq!(psid["touches"][0]["headline"], "Café especial");
    for sender in ["7010000000000002", "7010000000000003"] {
        let (status, _) = app.contact("messenger", PAGE, sender).await;
        assert_eq!(status, 200, "{sender}");
    }
    // The page's own echo is not a customer.
    let (status, _) = app.contact("messenger", PAGE, PAGE).await;
    assert_eq!(status, 404);

    let (_, igsid) = app
        .contact("instagram", IG_ACCOUNT, "5810000000000001")
        .await;
    assert_eq!(igsid["touches"][0]["headline"], "Zapatillas únicas");
    let (_, link) = app
        .contact("instagram", IG_ACCOUNT, "5810000000000002")
        .await;
    assert_eq!(link["touches"][0]["source_type"], "SHORTLINK");

    let (status, _) = app.contact("whatsapp", WABA, "+5511900000000").await;
    assert_eq!(status, 404);
    let (status, _) = app.contact("telegram", WABA, "1").await;
    assert_eq!(status, 404);
    let unauthenticated = app
        .client
        .get(format!(
            "{}/v1/contacts/whatsapp/{WABA}/5511987654321",
            app.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status().as_u16(), 401);
    app.stop().await;
}

async fn forged_unsigned_truncated_and_oversized_webhooks_are_refused_and_nothing_is_stored(
    backend: Backend,
) {
    let Some(mut app) = spawn(backend, |_| {}).await else {
        return;
    };
    let body = fixture("whatsapp_cloud_referral.json");
    assert!(
        std::str::from_utf8(&body).unwrap().contains("Caf\\u00e9"),
        "the fixture is escaped the way Meta escapes"
    );
    let good = sign(APP_SECRET, &body);
    // The same JSON re-serialised (unescaped) no longer matches: the raw bytes are signed.
    let reserialised =
        serde_json::to_vec(&serde_json::from_slice::<Value>(&body).unwrap()).unwrap();
    let truncated = &body[..body.len() / 2];
    let mut oversized = body.clone();
    oversized.extend(std::iter::repeat_n(b' ', 70 * 1024));
    let cases: Vec<(&str, &[u8], Option<String>, u16)> = vec![
        ("unsigned", &body, None, 401),
        ("forged", &body, Some(sign("not-the-secret", &body)), 401),
        ("not hex", &body, Some("sha256=zz".into()), 401),
        (
            "sha1 only",
            &body,
            Some(format!("sha1={}", &good[7..47])),
            401,
        ),
        ("re-serialised", &reserialised, Some(good.clone()), 401),
        ("truncated", truncated, Some(good.clone()), 401),
        (
            "oversized",
            &oversized,
            Some(sign(APP_SECRET, &oversized)),
            413,
        ),
    ];
    for (what, bytes, signature, expected) in cases {
        let (status, text) = app.post_webhook("", bytes, signature.as_deref()).await;
        assert_eq!(status, expected, "{what}: {text}");
    }
    assert!(app.store.list_webhooks(None, 10).await.unwrap().is_empty());
    let (status, _) = app.contact("whatsapp", WABA, WA_PHONE).await;
    assert_eq!(status, 404);

    // Signed with the second configured app's secret: accepted.
    let (status, _) = app
        .post_webhook("", &body, Some(&sign(OTHER_APP_SECRET, &body)))
        .await;
    assert_eq!(status, 200);
    app.wait_processed().await;
    let (status, _) = app.contact("whatsapp", WABA, WA_PHONE).await;
    assert_eq!(status, 200);
    app.stop().await;
}

async fn redeliveries_are_stored_once_and_touches_never_duplicate(backend: Backend) {
    let Some(mut app) = spawn(backend, |_| {}).await else {
        return;
    };
    let at = now() - 300;
    let body = fixture_at("whatsapp_cloud_referral.json", at);
    for _ in 0..3 {
        app.deliver("", &body).await;
    }
    assert_eq!(app.store.list_webhooks(None, 10).await.unwrap().len(), 1);
    // Meta may batch the same message differently on a retry: a new body, the same message id.
    let rebatched: Vec<u8> = String::from_utf8(fixture_at("whatsapp_cloud_referral.json", at + 5))
        .unwrap()
        .replace("\n", "")
        .into_bytes();
    app.deliver("", &rebatched).await;
    assert_eq!(app.store.list_webhooks(None, 10).await.unwrap().len(), 2);
    let (_, shown) = app.contact("whatsapp", WABA, WA_PHONE).await;
    let touches = shown["touches"].as_array().unwrap();
    assert_eq!(touches.len(), 1, "{shown}");
    assert_eq!(
        touches[0]["touched_at_ms"],
        at * 1000,
        "the first touch is kept"
    );
    app.stop().await;
}

async fn a_signed_payload_that_cannot_be_understood_is_kept_and_acknowledged(backend: Backend) {
    let Some(mut app) = spawn(backend, |_| {}).await else {
        return;
    };
    for body in [&b"not json at all"[..], &fixture("whatsapp_onprem.json")] {
        let (status, _) = app
            .post_webhook("", body, Some(&sign(APP_SECRET, body)))
            .await;
        assert_eq!(status, 200, "acknowledged so Meta does not retry forever");
    }
    app.wait_processed().await;
    // One delivery may concern several tenants: only the admin key lists them.
    let (status, _) = app.get_json("/v1/webhooks?state=failed").await;
    assert_eq!(status, 403);
    let (status, failed) = app
        .request(Method::GET, "/v1/webhooks?state=failed", ADMIN_KEY, None)
        .await;
    assert_eq!(status, 200);
    let failed = failed["webhooks"].as_array().unwrap();
    assert_eq!(failed.len(), 2);
    assert!(
        failed
            .iter()
            .any(|w| w["error"].as_str().unwrap().contains("not JSON"))
    );
    assert!(
        failed
            .iter()
            .any(|w| w["error"].as_str().unwrap().contains("waba_id"))
    );
    app.stop().await;
}

async fn a_conversion_by_phone_is_delivered_with_the_captured_click_id(backend: Backend) {
    let Some(mut app) = spawn(backend, |_| {}).await else {
        return;
    };
    app.deliver("", &fixture("whatsapp_cloud_referral.json"))
        .await;
    let mut by_mobile = purchase_by(Value::Null, "by-mobile");
    by_mobile.as_object_mut().unwrap().remove("contact");
    by_mobile["user_data"]["mobile_number"] = json!("5511987654321");
    let (status, report) = app
        .post_events(&[
            purchase_by(json!({"phone": WA_PHONE}), "by-phone"),
            by_mobile,
            purchase_by(json!({"wa_id": "5511987654321"}), "by-wa-id"),
            purchase_by(json!({"phone": "+55 11 90000-0000"}), "unknown"),
        ])
        .await;
    assert_eq!(status, 202, "{report}");
    assert_eq!(report["accepted"], 3, "{report}");
    let attribution = &report["results"][0]["attribution"];
    assert_eq!(attribution["ctwa_clid"], CLICK_ID);
    assert_eq!(attribution["ad_id"], "120226305854810726");
    assert!(attribution["touch_id"].is_i64());
    assert!(attribution["touched_at_ms"].is_i64());
    let rejected = &report["results"][3];
    assert_eq!(rejected["status"], "rejected");
    assert_eq!(rejected["errors"][0]["code"], "no_attribution");
    assert_eq!(rejected["errors"][0]["path"], "user_data.ctwa_clid");

    for id in ["by-phone", "by-mobile", "by-wa-id"] {
        let sent = app.delivered(id).await;
        assert_eq!(sent["user_data"]["ctwa_clid"], CLICK_ID, "{id}");
        assert_eq!(sent["user_data"]["whatsapp_business_account_id"], WABA);
        assert_eq!(
            sent["user_data"]["ph"],
            relay_core::pii::sha256_hex("5511987654321")
        );
        assert!(sent.get("contact").is_none());
        assert!(sent["user_data"].get("mobile_number").is_none());
    }

    // An older account's wa_id lacks the ninth digit Brazilian mobiles gained; the CRM's
    // number has it. The contact is still found.
    let old_style = String::from_utf8(fixture("whatsapp_cloud_referral.json"))
        .unwrap()
        .replace("5511987654321", "552198765432")
        .replace("ARAkLkA8rmlFeiCktEJQ-QTwRiy", "OLDSTYLE-QTwRiy")
        .replace("wamid.HBgN", "wamid.OLD");
    app.deliver("", old_style.as_bytes()).await;
    let (_, report) = app
        .post_events(&[json!({
            "event_name": "Purchase", "event_time": now() - 30, "event_id": "by-ninth-digit",
            "messaging_channel": "whatsapp", "contact": {"phone": "+55 21 99876-5432"},
            "user_data": {"whatsapp_business_account_id": WABA},
            "custom_data": {"currency": "BRL", "value": "1"}
        })])
        .await;
    assert_eq!(report["accepted"], 1, "{report}");
    assert!(
        report["results"][0]["attribution"]["ctwa_clid"]
            .as_str()
            .unwrap()
            .starts_with("OLDSTYLE-")
    );

    // A conversion before the click is not attributed to it.
    let mut before = purchase_by(json!({"phone": WA_PHONE}), "before-click");
    before["event_time"] = json!(now() - 3 * 3600);
    let (_, report) = app.post_events(&[before]).await;
    assert_eq!(report["results"][0]["errors"][0]["code"], "no_attribution");
    app.stop().await;
}

async fn a_crm_customer_id_linked_once_reports_conversions_from_then_on(backend: Backend) {
    let Some(mut app) = spawn(backend, |_| {}).await else {
        return;
    };
    app.deliver("", &fixture("whatsapp_cloud_referral.json"))
        .await;
    let put = |path: String, body: Value| {
        let client = app.client.clone();
        let url = format!("{}{path}", app.base);
        async move {
            let r = client
                .put(url)
                .bearer_auth(crate::app::API_KEY)
                .json(&body)
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let path = format!("/v1/contacts/whatsapp/{WABA}/%2B5511987654321/customer-id");
    let (status, linked) = put(path.clone(), json!({"customer_id": "crm-42"})).await;
    assert_eq!(status, 200, "{linked}");
    assert_eq!(linked["contact"]["customer_id"], "crm-42");
    let (status, _) = put(
        format!("/v1/contacts/whatsapp/{WABA}/%2B5511900000000/customer-id"),
        json!({"customer_id": "crm-43"}),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = put(path, json!({"nope": 1})).await;
    assert_eq!(status, 422);

    let (_, shown) = app.contact("whatsapp", WABA, "customer:crm-42").await;
    assert_eq!(shown["touches"][0]["click_id"], CLICK_ID);
    let (_, report) = app
        .post_events(&[purchase_by(json!({"customer_id": "crm-42"}), "by-crm-id")])
        .await;
    assert_eq!(report["accepted"], 1, "{report}");
    let sent = app.delivered("by-crm-id").await;
    assert_eq!(sent["user_data"]["ctwa_clid"], CLICK_ID);
    app.stop().await;
}

async fn contacts_are_visible_only_to_keys_that_own_the_asset(backend: Backend) {
    let Some(mut app) = spawn(backend, |_| {}).await else {
        return;
    };
    app.deliver("", &fixture("whatsapp_cloud_referral.json"))
        .await;
    let (status, body) = app
        .request(
            Method::POST,
            "/v1/admin/tenants",
            ADMIN_KEY,
            Some(&json!({"name": "acme"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let mut keys = Vec::new();
    for (tenant, assets) in [("acme", Value::Null), ("default", json!([PAGE]))] {
        let (status, body) = app
            .request(
                Method::POST,
                &format!("/v1/admin/tenants/{tenant}/keys"),
                ADMIN_KEY,
                Some(&json!({"label": "crm", "assets": assets})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        keys.push(body["key"].as_str().unwrap().to_owned());
    }
    let path = format!("/v1/contacts/whatsapp/{WABA}/%2B5511987654321");
    // The owner sees the contact.
    let (status, _) = app.get_json(&path).await;
    assert_eq!(status, 200);
    for key in &keys {
        // Another tenant, or a key of the same tenant limited to other assets: as if unknown.
        let (status, body) = app.request(Method::GET, &path, key, None).await;
        assert_eq!(status, 404, "{body}");
        assert!(!body.to_string().contains("cv1-"), "{body}");
        let (status, _) = app
            .request(
                Method::PUT,
                &format!("{path}/customer-id"),
                key,
                Some(&json!({"customer_id": "stolen"})),
            )
            .await;
        assert_eq!(status, 404);
        let (_, report) = app
            .request(
                Method::POST,
                "/v1/events",
                key,
                Some(&json!({"data": [purchase_by(json!({"phone": WA_PHONE}), "other-tenant")]})),
            )
            .await;
        assert_eq!(
            report["results"][0]["errors"][0]["code"], "unknown_asset",
            "{report}"
        );
        let (status, _) = app.request(Method::GET, "/v1/webhooks", key, None).await;
        assert_eq!(status, 403);
    }
    assert!(app.delivered_ids().is_empty());
    app.stop().await;
}

async fn messenger_and_instagram_conversions_by_scoped_id_are_delivered(backend: Backend) {
    let Some(mut app) = spawn(backend, |_| {}).await else {
        return;
    };
    app.deliver("", &fixture("messenger.json")).await;
    app.deliver("", &fixture("instagram.json")).await;
    let (_, ig) = app
        .contact("instagram", IG_ACCOUNT, "5810000000000001")
        .await;
    let ig_conversation = ig["contact"]["conversation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let lead = |channel: &str, asset_field: &str, asset: &str, contact: Value, id: &str| {
        json!({
            "event_name": "LeadSubmitted", "event_time": now() - 10, "event_id": id,
            "messaging_channel": channel, "contact": contact, "user_data": {asset_field: asset}
        })
    };
    let (status, report) = app
        .post_events(&[
            lead(
                "messenger",
                "page_id",
                PAGE,
                json!({"psid": "7010000000000001"}),
                "ms-psid",
            ),
            lead(
                "instagram",
                "instagram_business_account_id",
                IG_ACCOUNT,
                json!({"conversation_id": ig_conversation}),
                "ig-conversation",
            ),
            lead(
                "instagram",
                "instagram_business_account_id",
                IG_ACCOUNT,
                json!({"igsid": "5810000000000002"}),
                "ig-igsid",
            ),
            lead(
                "messenger",
                "page_id",
                PAGE,
                json!({"conversation_id": "cv1-unknown"}),
                "ms-unknown",
            ),
        ])
        .await;
    assert_eq!(status, 202);
    assert_eq!(report["accepted"], 3, "{report}");
    assert_eq!(
        report["results"][0]["attribution"]["ad_id"],
        "6045246247433"
    );
    assert_eq!(report["results"][3]["errors"][0]["code"], "no_attribution");
    assert_eq!(
        report["results"][3]["errors"][0]["path"],
        "user_data.page_scoped_user_id"
    );

    let ms = app.delivered("ms-psid").await;
    assert_eq!(ms["user_data"]["page_id"], PAGE);
    assert_eq!(ms["user_data"]["page_scoped_user_id"], "7010000000000001");
    let ig = app.delivered("ig-conversation").await;
    assert_eq!(ig["user_data"]["instagram_business_account_id"], IG_ACCOUNT);
    assert_eq!(ig["user_data"]["ig_sid"], "5810000000000001");
    let link = app.delivered("ig-igsid").await;
    assert_eq!(link["user_data"]["ig_sid"], "5810000000000002");
    app.stop().await;
}

async fn status_ad_touches_are_no_attribution_unless_the_asset_allows_the_hashed_phone(
    backend: Backend,
) {
    let Some(mut app) = spawn(backend, |_| {}).await else {
        return;
    };
    app.deliver("", &fixture("whatsapp_cloud_status_ad.json"))
        .await;
    let (_, report) = app
        .post_events(&[purchase_by(json!({"phone": WA_STATUS_PHONE}), "status-1")])
        .await;
    let error = &report["results"][0]["errors"][0];
    assert_eq!(error["code"], "no_attribution", "{report}");
    assert_eq!(error["path"], "user_data.ctwa_clid");
    assert!(
        error["message"].as_str().unwrap().contains("Status"),
        "{error}"
    );

    app.store
        .set_capture_options(
            WABA,
            &CaptureOptions {
                allow_unattributed: true,
                automatic_events: false,
            },
            0,
        )
        .await
        .unwrap();
    let (_, report) = app
        .post_events(&[purchase_by(json!({"phone": WA_STATUS_PHONE}), "status-2")])
        .await;
    assert_eq!(report["accepted"], 1, "{report}");
    assert_eq!(report["results"][0]["attribution"]["unattributed"], true);
    // Sent with the hashed phone and no click id — never the ad's source_id in its place.
    let (_, shown) = app.get_json("/v1/events/status-2").await;
    let user_data = &shown["payload"]["user_data"];
    assert_eq!(
        user_data["ph"],
        relay_core::pii::sha256_hex("5511912345678")
    );
    assert!(user_data.get("ctwa_clid").is_none(), "{shown}");
    assert!(!shown["payload"].to_string().contains("120226305854810999"));
    app.stop().await;
}

async fn automatic_events_are_reported_once_for_opted_in_assets(backend: Backend) {
    let Some(mut app) = spawn(backend, |_| {}).await else {
        return;
    };
    // Not opted in: nothing is reported.
    let early = fixture_at("whatsapp_automatic_events.json", now() - 600);
    app.deliver("", &early).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(app.delivered_ids().is_empty());

    app.store
        .set_capture_options(
            WABA,
            &CaptureOptions {
                allow_unattributed: false,
                automatic_events: true,
            },
            0,
        )
        .await
        .unwrap();
    let at = now() - 60;
    app.deliver("", &fixture_at("whatsapp_automatic_events.json", at))
        .await;
    let purchase_id = "Purchase:wamid.HBgNNTUxMTk4NzY1NDMyMRUCABIYFlBVUkNIQVNFAA==";
    let purchase = app.delivered(purchase_id).await;
    assert_eq!(purchase["event_time"], at);
    assert_eq!(purchase["user_data"]["ctwa_clid"], CLICK_ID);
    assert_eq!(
        purchase["messaging_outcome_data"]["outcome_type"],
        "automatic_events"
    );
    assert_eq!(purchase["custom_data"]["currency"], "BRL");
    // The webhook's 120500 is thousandths: BRL 120.50 (spec §4.4).
    assert_eq!(purchase["custom_data"]["value"], json!(120.5));
    app.delivered("LeadSubmitted:wamid.HBgNNTUxMTk4NzY1NDMyMRUCABIYFkxFQURTVUJNSVRURUQA")
        .await;

    // The CRM reporting the same purchase with the documented id is a duplicate.
    let mut crm = crate::app::whatsapp_event(1);
    crm["event_id"] = json!(purchase_id);
    let (_, report) = app.post_events(&[crm]).await;
    assert_eq!(report["duplicates"], 1, "{report}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.delivered_ids().len(), 2);
    app.stop().await;
}

/// Issue 12 D.8: Meta's spelling and scale, and what the relay could not report.
async fn automatic_events_in_other_spellings_are_unscaled_and_refusals_kept_on_the_webhook(
    backend: Backend,
) {
    let Some(mut app) = spawn(backend, |_| {}).await else {
        return;
    };
    app.store
        .set_capture_options(
            WABA,
            &CaptureOptions {
                allow_unattributed: false,
                automatic_events: true,
            },
            0,
        )
        .await
        .unwrap();
    app.deliver(
        "",
        &fixture_at("whatsapp_automatic_events_variants.json", now() - 60),
    )
    .await;
    // `purchase` is Purchase, with the id a CRM sends; Meta's 25000 is USD 25.
    let purchase = app.delivered("Purchase:wamid.VARIANTPURCHASE").await;
    assert_eq!(purchase["event_name"], "Purchase");
    assert_eq!(purchase["custom_data"]["value"], json!(25));
    assert_eq!(purchase["custom_data"]["currency"], "USD");
    let lead = app.delivered("LeadSubmitted:wamid.VARIANTLEAD").await;
    assert_eq!(lead["event_name"], "LeadSubmitted");
    let mut crm = crate::app::whatsapp_event(1);
    crm["event_id"] = json!("Purchase:wamid.VARIANTPURCHASE");
    let (_, report) = app.post_events(&[crm]).await;
    assert_eq!(report["duplicates"], 1, "{report}");

    // The too-old and the refused ones are on the webhook's record, not only in the log.
    let (status, listed) = app
        .request(Method::GET, "/v1/webhooks?state=failed", ADMIN_KEY, None)
        .await;
    assert_eq!(status, 200);
    let failed = listed["webhooks"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{listed}");
    let error = failed[0]["error"].as_str().unwrap();
    assert!(
        error.contains("automatic event Purchase:wamid.VARIANTTOOOLD refused: [event_too_old]"),
        "{error}"
    );
    assert!(
        error.contains("automatic event Purchase:wamid.VARIANTBADCURRENCY refused"),
        "{error}"
    );
    assert!(
        !error.contains("VARIANTPURCHASE") && !error.contains("VARIANTLEAD"),
        "{error}"
    );
    let output = tokio::process::Command::new(crate::helpers::binary())
        .args([
            "capture",
            "webhooks",
            "--state",
            "failed",
            "--database-url",
            &app.db.url,
        ])
        .output()
        .await
        .unwrap();
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{shown}");
    assert!(
        shown.contains("Purchase:wamid.VARIANTTOOOLD refused"),
        "{shown}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.delivered_ids().len(), 2);
    app.stop().await;
}

/// Issue 12 D.10: business-scoped user ids rotate; the contact follows, and a video ad's touch
/// keeps the video.
async fn a_user_id_update_lets_a_conversion_by_the_new_id_find_the_click_id(backend: Backend) {
    const OLD_ID: &str = "US.13491208655302741918";
    const NEW_ID: &str = "US.20000000000000000042";
    let Some(mut app) = spawn(backend, |_| {}).await else {
        return;
    };
    app.deliver("", &fixture("whatsapp_cloud_bsuid.json")).await;
    let (_, before) = app
        .contact("whatsapp", WABA, &format!("user_id:{OLD_ID}"))
        .await;
    app.deliver("", &fixture("whatsapp_user_id_update.json"))
        .await;

    let (status, report) = app
        .post_events(&[purchase_by(json!({"user_id": NEW_ID}), "by-new-user-id")])
        .await;
    assert_eq!(status, 202, "{report}");
    assert_eq!(report["accepted"], 1, "{report}");
    assert_eq!(
        report["results"][0]["attribution"]["ctwa_clid"], "ARBsuidClickId-7Hq2",
        "{report}"
    );
    let sent = app.delivered("by-new-user-id").await;
    assert_eq!(sent["user_data"]["ctwa_clid"], "ARBsuidClickId-7Hq2");
    // Both ids name the one contact; the old one until retention ends.
    for id in [NEW_ID, OLD_ID] {
        let (status, shown) = app
            .contact("whatsapp", WABA, &format!("user_id:{id}"))
            .await;
        assert_eq!(status, 200, "{id}: {shown}");
        assert_eq!(
            shown["contact"]["conversation_id"], before["contact"]["conversation_id"],
            "{id}"
        );
        assert_eq!(shown["contact"]["wa_user_id"], NEW_ID);
    }

    app.deliver("", &fixture("whatsapp_cloud_video_ad.json"))
        .await;
    let (_, shown) = app.contact("whatsapp", WABA, WA_PHONE).await;
    assert_eq!(shown["touches"][0]["media_type"], "video");
    assert_eq!(
        shown["touches"][0]["media_url"],
        "https://video.xx.fbcdn.net/v/t42.1790-2/ad.mp4"
    );
    app.stop().await;
}

async fn webhooks_stored_before_a_restart_are_processed_at_start(backend: Backend) {
    let Some(mut app) = spawn(backend, |_| {}).await else {
        return;
    };
    app.stop().await;
    // As if the relay died after answering 200 and before parsing.
    let body = fixture("whatsapp_cloud_referral.json");
    app.store
        .insert_webhook(&NewWebhook {
            body_sha256: "crash-test".into(),
            signature: sign(APP_SECRET, &body),
            body,
            waba_hint: None,
            received_at_ms: now() * 1000,
            forward: false,
        })
        .await
        .unwrap();
    // Processing needs no Graph API.
    let mut config = crate::app::test_config(&app.db.url, "http://127.0.0.1:9", &app.vault);
    capture_config(&mut config);
    app.start(config).await;
    app.wait_processed().await;
    let (status, shown) = app.contact("whatsapp", WABA, WA_PHONE).await;
    assert_eq!(status, 200);
    assert_eq!(shown["touches"][0]["click_id"], CLICK_ID);
    app.stop().await;
}

async fn verified_webhooks_are_forwarded_upstream_with_their_signature_and_retried(
    backend: Backend,
) {
    /// The signature header and the body of one forward received.
    type Call = (Option<String>, Vec<u8>);
    #[derive(Clone, Default)]
    struct Upstream {
        calls: Arc<Mutex<Vec<Call>>>,
    }
    let upstream = Upstream::default();
    let seen = upstream.clone();
    let router = Router::new().route(
        "/inbox",
        post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let seen = seen.clone();
            async move {
                let mut calls = seen.calls.lock().unwrap();
                let signature = headers
                    .get("x-hub-signature-256")
                    .map(|v| v.to_str().unwrap().to_owned());
                calls.push((signature, body.to_vec()));
                // The first attempt fails: the relay must retry.
                if calls.len() == 1 {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    let Some(mut app) = spawn(backend, |c| {
        c.webhooks.forward_url = Some(format!("http://{addr}/inbox"));
    })
    .await
    else {
        return;
    };
    let body = fixture("messenger.json");
    let signature = sign(APP_SECRET, &body);
    app.deliver("", &body).await;
    app.wait_until(WAIT, "two forward attempts", |_| {
        upstream.calls.lock().unwrap().len() >= 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let calls = upstream.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2, "delivered once after one retry");
    for (header, forwarded) in &calls {
        assert_eq!(header.as_deref(), Some(signature.as_str()));
        assert_eq!(forwarded, &body, "byte for byte");
    }
    let started = std::time::Instant::now();
    loop {
        let stored = app.store.list_webhooks(None, 10).await.unwrap();
        if stored[0].forward_state.as_deref() == Some("done") {
            assert_eq!(stored[0].forward_attempts, 2);
            break;
        }
        assert!(started.elapsed() < WAIT, "forward never recorded as done");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        upstream.calls.lock().unwrap().len(),
        2,
        "not forwarded again"
    );
    app.stop().await;
}

/// Issue 12 D.11: reqwest's errors print the URL, credentials and all.
async fn a_forward_error_names_the_forward_url_without_its_credentials(backend: Backend) {
    let Some(mut app) = spawn(backend, |c| {
        c.webhooks.forward_url =
            Some("http://inbox:hunter2@127.0.0.1:9/meta?token=sekrit&tenant=a".into());
    })
    .await
    else {
        return;
    };
    app.deliver("", &fixture("messenger.json")).await;
    let started = std::time::Instant::now();
    let error = loop {
        let stored = app.store.list_webhooks(None, 1).await.unwrap();
        if let Some(error) = stored[0].forward_error.clone() {
            break error;
        }
        assert!(started.elapsed() < WAIT, "no forward attempt recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        error.contains("http://inbox:***@127.0.0.1:9/meta?token=***&tenant=a"),
        "{error}"
    );
    assert!(
        !error.contains("hunter2") && !error.contains("sekrit"),
        "{error}"
    );
    let (_, listed) = app
        .request(Method::GET, "/v1/webhooks", ADMIN_KEY, None)
        .await;
    assert!(!listed.to_string().contains("hunter2"), "{listed}");
    app.stop().await;
}

async fn retention_purges_old_attribution_data(backend: Backend) {
    let retention = |c: &mut Config| {
        c.attribution.retention = Duration::from_secs(24 * 3600);
        c.attribution.max_touch_age = Duration::from_secs(3600);
    };
    // First with the default retention (90 days): the 2-day-old data is kept.
    let Some(mut app) = spawn(backend, |_| {}).await else {
        return;
    };
    app.deliver(
        "",
        &fixture_at("whatsapp_cloud_referral.json", now() - 2 * 24 * 3600),
    )
    .await;
    app.deliver("", &fixture("messenger.json")).await;
    let (status, old) = app.contact("whatsapp", WABA, WA_PHONE).await;
    assert_eq!(status, 200, "the 2-day-old touch is stored first: {old}");
    app.stop().await;

    // Restarted with a 1-day retention: the purge at start removes it.
    let mut config = crate::app::test_config(&app.db.url, "http://127.0.0.1:9", &app.vault);
    capture_config(&mut config);
    retention(&mut config);
    config.retention.purge_interval = Duration::from_millis(100);
    app.start(config).await;
    let started = std::time::Instant::now();
    loop {
        let (status, _) = app.contact("whatsapp", WABA, WA_PHONE).await;
        if status == 404 {
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "the 2-day-old contact was not purged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, fresh) = app.contact("messenger", PAGE, "7010000000000001").await;
    assert_eq!(status, 200, "recent data is kept");
    assert_eq!(fresh["touches"].as_array().unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn the_capture_command_sets_asset_switches_and_shows_contacts() {
    let db = crate::app::TestDb::new(Backend::Sqlite).await.unwrap();
    let store = relay_store::connect(&db.url).await.unwrap();
    store.migrate().await.unwrap();
    store
        .record_sighting(&relay_store::capture::NewSighting {
            channel: "whatsapp".into(),
            asset_id: WABA.into(),
            phone_hash: Some(relay_core::pii::sha256_hex("5511987654321")),
            wa_user_id: None,
            scoped_id: None,
            conversation_id: "cv1-cli".into(),
            seen_at_ms: 1_000,
            touch: Some(relay_store::capture::NewTouch {
                message_id: "wamid.cli".into(),
                touched_at_ms: 1_000,
                click_id: Some("CLI-CLICK".into()),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let run = |args: Vec<&'static str>| {
        let url = db.url.clone();
        async move {
            tokio::process::Command::new(crate::helpers::binary())
                .args(args)
                .args(["--database-url", &url])
                .output()
                .await
                .unwrap()
        }
    };
    let out = run(vec![
        "capture",
        "options",
        "--asset-id",
        WABA,
        "--automatic-events",
        "true",
    ])
    .await;
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("automatic_events = true"));
    let options = store.capture_options(WABA).await.unwrap();
    assert!(options.automatic_events && !options.allow_unattributed);

    let out = run(vec![
        "capture",
        "show",
        "--channel",
        "whatsapp",
        "--asset-id",
        WABA,
        "+55 11 98765-4321",
    ])
    .await;
    assert!(out.status.success(), "{out:?}");
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["contact"]["conversation_id"], "cv1-cli");
    assert_eq!(shown["touches"][0]["click_id"], "CLI-CLICK");
    let missing = run(vec![
        "capture",
        "show",
        "--channel",
        "whatsapp",
        "--asset-id",
        WABA,
        "+5511900000000",
    ])
    .await;
    assert_eq!(missing.status.code(), Some(1));
}

/// The real binary at debug level: webhooks, conversions and lookups by phone leave no phone
/// number, secret or key in the logs.
#[tokio::test]
async fn no_log_line_holds_a_phone_number_or_a_webhook_secret() {
    use std::process::Stdio;

    use tokio::io::{AsyncBufReadExt, BufReader};

    let env = crate::app::prepare_env(Backend::Sqlite).await.unwrap();
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = tokio::process::Command::new(crate::helpers::binary())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("CAPI_RELAY_API_KEY", crate::app::API_KEY)
        .env("CAPI_RELAY_MASTER_KEY", env.master_key_text())
        .env("CAPI_RELAY_DATABASE_URL", &env.db.url)
        .env("CAPI_RELAY_GRAPH_URL", &env.sim_url)
        .env("CAPI_RELAY_META_APP_SECRET", APP_SECRET)
        .env("CAPI_RELAY_META_VERIFY_TOKEN", VERIFY_TOKEN)
        .env("RUST_LOG", "debug")
        .env("CAPI_RELAY_LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log.reopen().unwrap()))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.strip_prefix("capi-relay listening on ") {
                return rest.split_whitespace().next().unwrap().to_owned();
            }
        }
        panic!("serve exited before listening");
    })
    .await
    .unwrap();
    let client = reqwest::Client::new();
    let body = fixture("whatsapp_cloud_referral.json");
    let r = client
        .post(format!("{base}/webhooks/meta"))
        .header("x-hub-signature-256", sign(APP_SECRET, &body))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let started = std::time::Instant::now();
    while !env
        .store
        .pending_webhooks(i64::MAX, 1)
        .await
        .unwrap()
        .is_empty()
    {
        assert!(started.elapsed() < WAIT, "never processed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = client
        .get(format!(
            "{base}/webhooks/meta?hub.mode=subscribe&hub.challenge=7&hub.verify_token={VERIFY_TOKEN}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .get(format!(
            "{base}/v1/contacts/whatsapp/{WABA}/%2B5511987654321"
        ))
        .bearer_auth(crate::app::API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .post(format!("{base}/v1/events"))
        .bearer_auth(crate::app::API_KEY)
        .json(&json!({"data": [purchase_by(json!({"phone": WA_PHONE}), "logged")]}))
        .send()
        .await
        .unwrap();
    let report: Value = r.json().await.unwrap();
    assert_eq!(report["accepted"], 1, "{report}");
    let started = std::time::Instant::now();
    while env.sim.accepted(None).is_empty() {
        assert!(started.elapsed() < WAIT, "never delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.start_kill().unwrap();
    child.wait().await.unwrap();

    let text = std::fs::read_to_string(log.path()).unwrap();
    assert!(
        text.contains("/v1/contacts/{channel}/{asset_id}/{customer}"),
        "debug logging names the routes"
    );
    for secret in [
        APP_SECRET,
        VERIFY_TOKEN,
        crate::app::API_KEY,
        "5511987654321",
        "98765-4321",
        "98765",
    ] {
        assert!(!text.contains(secret), "a log line contains {secret:?}");
    }
}

/// The sandbox takes signed webhooks with the demo secret it prints, and a conversion by phone
/// then reaches the simulator with the captured click id.
#[tokio::test]
async fn the_sandbox_captures_webhooks_signed_with_its_demo_secret() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, banner) = crate::helpers::start_sandbox(dir.path()).await;
    let (base, key) = (&banner["relay API:"], &banner["API key:"]);

    let client = reqwest::Client::new();
    let body = fixture("whatsapp_cloud_referral.json");
    let r = client
        .post(format!("{base}/webhooks/meta"))
        .header(
            "x-hub-signature-256",
            sign(&banner["webhook secret:"], &body),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let started = std::time::Instant::now();
    let report = loop {
        let report: Value = client
            .post(format!("{base}/v1/events"))
            .bearer_auth(key)
            .json(&json!({"data": [purchase_by(json!({"phone": WA_PHONE}), "sandbox-contact")]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        // Parsing runs just after the 200: retry until the touch is there.
        if report["accepted"] == 1 || started.elapsed() > WAIT {
            break report;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(report["accepted"], 1, "{report}");
    loop {
        let received: Value = client
            .get(format!("{}/__sim/events", banner["simulator:"]))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let text = received.to_string();
        if text.contains("sandbox-contact") {
            assert!(text.contains(CLICK_ID), "{received}");
            break;
        }
        assert!(started.elapsed() < WAIT, "never delivered: {received}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}

// ---- Issue 12 A.2 and D.9: one bad message fails only itself; raw bodies kept only as needed ----

/// A Cloud API `messages` entry: `wa_id` wrote to `waba` through the ad click `clid`.
fn message_entry(waba: &str, wa_id: &str, message_id: &str, clid: &str) -> Value {
    json!({"id": waba, "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp",
        "contacts": [{"profile": {"name": "Cliente"}, "wa_id": wa_id}],
        "messages": [{"from": wa_id, "id": message_id, "timestamp": (now() - 60).to_string(),
                      "type": "text", "text": {"body": "oi"},
                      "referral": {"source_type": "ad", "source_id": "120226305854810726",
                                   "ctwa_clid": clid}}]}}]})
}

async fn one_bad_message_in_a_delivery_is_recorded_and_every_other_message_is_captured(
    backend: Backend,
) {
    let Some(mut app) = spawn(backend, |c| c.webhooks.max_body_bytes = 4 * 1024 * 1024).await
    else {
        return;
    };
    // The last entries belong to another tenant's asset.
    let other = app.add_wabas("beta", 1, 1).await.remove(0).0;
    let other = other.as_str();
    let body = json!({"object": "whatsapp_business_account", "entry": [
        message_entry(WABA, "5511900000001", "wamid.first", "ARA-FIRST"),
        // PostgreSQL cannot store a NUL in text.
        message_entry(WABA, "5511900000002", "wamid.nul", "ARA-\u{0}-NUL"),
        // Over PostgreSQL's B-tree row limit, were it indexed.
        message_entry(other, "5511900000003", "wamid.huge", &"A".repeat(1 << 20)),
        message_entry(other, "5511900000004", "wamid.last", "ARA-LAST"),
    ]});
    app.deliver("", body.to_string().as_bytes()).await;

    for (waba, phone, clid) in [
        (WABA, "5511900000001", Some("ARA-FIRST")),
        (WABA, "5511900000002", None),
        (other, "5511900000003", None),
        (other, "5511900000004", Some("ARA-LAST")),
    ] {
        let key = relay_store::capture::ContactKey::PhoneHash(relay_core::pii::sha256_hex(phone));
        let contact = app
            .store
            .find_contact("whatsapp", waba, &key)
            .await
            .unwrap();
        match clid {
            Some(clid) => {
                let contact = contact.unwrap_or_else(|| panic!("{phone} of {waba} is captured"));
                let touches = app.store.contact_touches(contact.id).await.unwrap();
                assert_eq!(touches[0].touch.click_id.as_deref(), Some(clid));
            }
            None => assert!(
                contact.is_none(),
                "{phone}: a skipped message makes no contact"
            ),
        }
    }
    let (status, listed) = app
        .request(Method::GET, "/v1/webhooks", ADMIN_KEY, None)
        .await;
    assert_eq!(status, 200, "{listed}");
    let record = &listed["webhooks"][0];
    assert_eq!(record["state"], "failed", "{record}");
    let error = record["error"].as_str().unwrap();
    assert!(
        error.contains("entry[1].changes[0].value.messages[0]: ctwa_clid contains a NUL character"),
        "{error}"
    );
    assert!(
        error.contains(
            "entry[2].changes[0].value.messages[0]: ctwa_clid is 1048576 bytes, over the 512-byte limit"
        ),
        "{error}"
    );
    assert!(
        !error.contains("AAAAAAAA"),
        "values are never quoted: {error}"
    );
    app.stop().await;
}

/// Renames a table behind the relay's back: statements on it fail until it is renamed back.
async fn rename_table(app: &TestApp, from: &str, to: &str) {
    let sql = format!("ALTER TABLE {from} RENAME TO {to}");
    if app.db.url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(&app.db.url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    } else {
        let pool = sqlx::PgPool::connect(&app.db.url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
}

impl TestApp {
    /// The newest stored delivery, once `done` holds for it.
    async fn webhook_when(
        &self,
        what: &str,
        done: impl Fn(&relay_store::capture::WebhookRecord) -> bool,
    ) -> relay_store::capture::WebhookRecord {
        let started = std::time::Instant::now();
        loop {
            if let Some(w) = self.store.list_webhooks(None, 1).await.unwrap().pop()
                && done(&w)
            {
                return w;
            }
            assert!(started.elapsed() < WAIT, "{what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn touch_click_id(&self, waba: &str, phone: &str) -> Option<String> {
        let key = relay_store::capture::ContactKey::PhoneHash(relay_core::pii::sha256_hex(phone));
        let contact = self
            .store
            .find_contact("whatsapp", waba, &key)
            .await
            .unwrap()?;
        let touches = self.store.contact_touches(contact.id).await.unwrap();
        touches.first()?.touch.click_id.clone()
    }
}

async fn a_store_error_while_processing_is_retried_until_it_passes(backend: Backend) {
    let Some(mut app) = spawn(backend, |c| {
        c.webhooks.retry_schedule = vec![Duration::from_millis(200); 100];
    })
    .await
    else {
        return;
    };
    rename_table(&app, "touches", "touches_away").await;
    let body = fixture("whatsapp_cloud_referral.json");
    let (status, _) = app
        .post_webhook("", &body, Some(&sign(APP_SECRET, &body)))
        .await;
    assert_eq!(status, 200);
    let waiting = app
        .webhook_when("the delivery is retried", |w| w.attempts >= 1)
        .await;
    assert_eq!(waiting.state, "pending");
    assert!(waiting.next_attempt_at_ms.is_some());
    let error = waiting.error.unwrap();
    assert!(
        error.contains("met a store error, retried later"),
        "{error}"
    );
    rename_table(&app, "touches_away", "touches").await;
    let done = app
        .webhook_when("the delivery is processed", |w| w.state != "pending")
        .await;
    assert_eq!(done.state, "processed", "{:?}", done.error);
    assert_eq!(
        app.touch_click_id(WABA, "5511987654321").await.as_deref(),
        Some(CLICK_ID)
    );
    app.stop().await;
}

async fn capture_reprocess_processes_a_failed_delivery_again(backend: Backend) {
    // No retries: the first store error fails the delivery.
    let Some(mut app) = spawn(backend, |c| c.webhooks.retry_schedule = Vec::new()).await else {
        return;
    };
    rename_table(&app, "touches", "touches_away").await;
    app.deliver("", &fixture("whatsapp_cloud_referral.json"))
        .await;
    let failed = app
        .webhook_when("the delivery fails", |w| w.state == "failed")
        .await;
    let error = failed.error.clone().unwrap();
    assert!(error.contains("gave up after 1 tries"), "{error}");
    assert!(
        failed.body.is_some(),
        "a failed delivery keeps its body to be reprocessed"
    );
    rename_table(&app, "touches_away", "touches").await;

    let run = |args: &[&str]| {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let url = app.db.url.clone();
        async move {
            tokio::process::Command::new(crate::helpers::binary())
                .args(args)
                .args(["--database-url", &url])
                .output()
                .await
                .unwrap()
        }
    };
    let refused = run(&["capture", "reprocess"]).await;
    assert!(!refused.status.success(), "no selector, no --all");
    let id = failed.id.to_string();
    let out = run(&["capture", "reprocess", "--id", &id]).await;
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        shown.contains("1 failed deliveries queued again"),
        "{shown}"
    );
    let done = app
        .webhook_when("the delivery is processed again", |w| {
            w.state == "processed"
        })
        .await;
    assert_eq!(done.id, failed.id);
    assert_eq!(
        app.touch_click_id(WABA, "5511987654321").await.as_deref(),
        Some(CLICK_ID)
    );

    // The admin route does the same; nothing failed is left to requeue.
    let (status, body) = app
        .request(
            Method::POST,
            "/v1/admin/webhooks/reprocess",
            ADMIN_KEY,
            Some(&json!({})),
        )
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (422, &json!("no_selector")),
        "{body}"
    );
    let (status, body) = app
        .request(
            Method::POST,
            "/v1/admin/webhooks/reprocess",
            ADMIN_KEY,
            Some(&json!({"all": true})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"requeued": 0, "without_body": 0}));
    app.stop().await;
}

/// Every text and blob value of every table, lossily decoded.
async fn every_stored_text(url: &str) -> Vec<(String, String)> {
    use sqlx::Row;
    let mut found = Vec::new();
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        for table in tables {
            let columns: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT name FROM pragma_table_info('{table}')"
            )))
            .fetch_all(&pool)
            .await
            .unwrap();
            for column in columns {
                let sql = format!(
                    "SELECT CAST(\"{column}\" AS BLOB) FROM \"{table}\" WHERE \"{column}\" IS NOT NULL"
                );
                for row in sqlx::query(sqlx::AssertSqlSafe(sql))
                    .fetch_all(&pool)
                    .await
                    .unwrap()
                {
                    let bytes: Vec<u8> = row.try_get(0).unwrap();
                    found.push((
                        format!("{table}.{column}"),
                        String::from_utf8_lossy(&bytes).into_owned(),
                    ));
                }
            }
        }
        pool.close().await;
    } else {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let columns: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT table_name::text, column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = current_schema()",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        for (table, column, data_type) in columns {
            let value = if data_type == "bytea" {
                format!("\"{column}\"")
            } else {
                format!("convert_to(\"{column}\"::text, 'UTF8')")
            };
            let sql = format!("SELECT {value} FROM \"{table}\" WHERE \"{column}\" IS NOT NULL");
            for row in sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_all(&pool)
                .await
                .unwrap()
            {
                let bytes: Vec<u8> = row.try_get(0).unwrap();
                found.push((
                    format!("{table}.{column}"),
                    String::from_utf8_lossy(&bytes).into_owned(),
                ));
            }
        }
        pool.close().await;
    }
    found
}

/// What a customer's webhook says about them in clear, as sent and as decoded.
const PERSONAL: [&str; 5] = [
    "5511987654321",
    "José Conceição",
    "Jos\\u00e9",
    "Quero saber mais",
    "vi o an",
];

async fn no_raw_phone_name_or_message_text_is_left_in_the_database_after_processing(
    backend: Backend,
) {
    let Some(mut app) = spawn(backend, |_| {}).await else {
        return;
    };
    for name in ["whatsapp_cloud_referral.json", "messenger.json"] {
        let body = fixture(name);
        let text = String::from_utf8_lossy(&body).into_owned();
        assert!(
            PERSONAL.iter().any(|p| text.contains(p)),
            "{name} holds personal data to look for"
        );
        app.deliver("", &body).await;
    }
    app.webhook_when("bodies are removed", |w| w.body.is_none())
        .await;
    let stored = app.store.list_webhooks(None, 10).await.unwrap();
    assert_eq!(stored.len(), 2);
    for w in &stored {
        assert_eq!(w.state, "processed", "{:?}", w.error);
        assert!(w.body.is_none() && w.body_removed_at_ms.is_some(), "{w:?}");
    }
    // What attribution needs is kept: the contact by hashed phone, its click id.
    assert_eq!(
        app.touch_click_id(WABA, "5511987654321").await.as_deref(),
        Some(CLICK_ID)
    );
    let texts = every_stored_text(&app.db.url).await;
    assert!(
        texts.iter().any(|(c, _)| c == "touches.click_id"),
        "the scan reads the tables"
    );
    for (column, value) in &texts {
        for personal in PERSONAL {
            assert!(
                !value.contains(personal),
                "{column} holds {personal:?}: {value}"
            );
        }
    }
    app.stop().await;
}

/// Capture's sink for automatic events, unused here.
struct NoEvents;

impl capi_relay::capture::EventSink for NoEvents {
    async fn submit(
        &self,
        _: &str,
        _: Value,
    ) -> Result<Result<(), String>, relay_store::StoreError> {
        Ok(Ok(()))
    }
}

async fn a_debug_raw_body_retention_keeps_the_body_then_removes_it(backend: Backend) {
    let Some(db) = crate::app::TestDb::new(backend).await else {
        return;
    };
    let store = relay_store::connect(&db.url).await.unwrap();
    store.migrate().await.unwrap();
    let mut config = Config::default();
    capture_config(&mut config);
    config.webhooks.raw_body_retention = Duration::from_secs(3600);
    let clock = Arc::new(capi_relay::clock::ManualClock::new(1_800_000_000_000));
    let capture =
        capi_relay::capture::Capture::new(store.clone(), &config).with_clock(clock.clone());
    let body = fixture("whatsapp_cloud_referral.json");
    capture
        .receive(&body, Some(&sign(APP_SECRET, &body)), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(capture.process_pending(&NoEvents).await.unwrap(), 1);
    let kept = || async { store.list_webhooks(None, 1).await.unwrap().remove(0) };
    let w = kept().await;
    assert_eq!(w.state, "processed");
    assert_eq!(
        w.body.as_deref().map(str::as_bytes),
        Some(&body[..]),
        "kept for debugging"
    );

    clock.advance_ms(3_600_000 - 1);
    assert_eq!(capture.remove_raw_bodies().await.unwrap(), 0);
    assert!(kept().await.body.is_some(), "still within the retention");
    clock.advance_ms(1);
    assert_eq!(capture.remove_raw_bodies().await.unwrap(), 1);
    let w = kept().await;
    assert_eq!(
        (w.body, w.body_removed_at_ms),
        (None, Some(1_800_003_600_000))
    );
    assert_eq!(w.channel.as_deref(), Some("whatsapp"));
}
