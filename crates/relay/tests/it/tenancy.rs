//! Tenants from the outside: onboarding through the Dataset API, tokens sealed at rest, master
//! key rotation, per-tenant API keys and isolation on every endpoint, token health, audit.

use std::time::Duration;

use capi_relay::{simulator::Faults, vault::MasterKey};
use reqwest::Method;
use serde_json::{Value, json};

use crate::{
    app::{ADMIN_KEY, API_KEY, Backend, TOKEN, TestApp, spawn_app},
    helpers::{binary, now},
};

const WAIT: Duration = Duration::from_secs(30);
const ACME_WABA: &str = "200000000000001";
const ACME_WABA_2: &str = "200000000000002";
const GLOBEX_PAGE: &str = "300000000000001";

both_backends!(
    onboarding_creates_or_reuses_datasets_and_explains_metas_refusals,
    tokens_are_sealed_at_rest,
    tenant_keys_reach_only_their_own_tenant_on_every_endpoint,
    a_token_error_shows_in_the_tenant_status_until_the_token_is_replaced,
    test_event_codes_come_from_the_request_the_asset_or_the_tenant,
    an_upgraded_relay_seals_plain_tokens_and_keeps_the_default_tenant,
    rotating_the_master_key_reseals_every_token,
    a_new_user_onboards_a_tenant_with_two_assets_from_the_command_line,
    a_dataset_of_one_tenant_is_refused_to_another_and_an_asset_id_to_another_channel,
);

impl TestApp {
    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.request(method, path, ADMIN_KEY, body.as_ref()).await
    }

    async fn create_tenant(&self, name: &str) {
        let (status, body) = self
            .admin(
                Method::POST,
                "/v1/admin/tenants",
                Some(json!({ "name": name })),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }

    async fn onboard(&self, tenant: &str, channel: &str, asset_id: &str, token: &str) -> Value {
        let (status, body) = self
            .admin(
                Method::POST,
                &format!("/v1/admin/tenants/{tenant}/assets"),
                Some(json!({ "channel": channel, "asset_id": asset_id, "access_token": token })),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body
    }

    async fn create_key(&self, tenant: &str, assets: Option<Vec<&str>>) -> (String, String) {
        let (status, body) = self
            .admin(
                Method::POST,
                &format!("/v1/admin/tenants/{tenant}/keys"),
                Some(json!({ "label": "crm", "assets": assets })),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        (
            body["id"].as_str().unwrap().to_owned(),
            body["key"].as_str().unwrap().to_owned(),
        )
    }

    async fn send_as(&self, key: &str, events: &[Value]) -> Value {
        let (status, body) = self
            .request(
                Method::POST,
                "/v1/events",
                key,
                Some(&json!({ "data": events })),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        body
    }
}

fn purchase(event_id: &str, asset_field: &str, asset_id: &str) -> Value {
    let (channel, identity) = match asset_field {
        "page_id" => (
            "messenger",
            json!({"page_id": asset_id, "page_scoped_user_id": "7000000000000001"}),
        ),
        _ => (
            "whatsapp",
            json!({"whatsapp_business_account_id": asset_id, "ctwa_clid": format!("ARAk-{event_id}")}),
        ),
    };
    json!({
        "event_name": "Purchase",
        "event_time": now() - 60,
        "event_id": event_id,
        "messaging_channel": channel,
        "user_data": identity,
        "custom_data": {"currency": "BRL", "value": "10.00"}
    })
}

/// Two tenants: acme with two WhatsApp accounts, globex with a Page.
async fn two_tenants(app: &TestApp) {
    app.create_tenant("acme").await;
    app.create_tenant("globex").await;
    app.onboard("acme", "whatsapp", ACME_WABA, TOKEN).await;
    app.onboard("acme", "whatsapp", ACME_WABA_2, TOKEN).await;
    app.onboard("globex", "messenger", GLOBEX_PAGE, TOKEN).await;
}

async fn onboarding_creates_or_reuses_datasets_and_explains_metas_refusals(backend: Backend) {
    let Some(mut app) = spawn_app(backend).await else {
        return;
    };
    let (status, body) = app
        .admin(
            Method::POST,
            "/v1/admin/tenants",
            Some(json!({ "name": "Acme Corp" })),
        )
        .await;
    assert_eq!(status, 422);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("name: "),
        "{body}"
    );
    app.create_tenant("acme").await;
    let (status, _) = app
        .admin(
            Method::POST,
            "/v1/admin/tenants",
            Some(json!({ "name": "acme" })),
        )
        .await;
    assert_eq!(status, 409);

    // A new asset: Meta's Dataset API creates its dataset.
    let first = app.onboard("acme", "whatsapp", ACME_WABA, TOKEN).await;
    assert_eq!(first["dataset_source"], "dataset_api");
    assert_eq!(first["already_registered"], false);
    let dataset = first["asset"]["dataset_id"].as_str().unwrap().to_owned();
    assert_eq!(app.sim.dataset_of(ACME_WABA), Some(dataset.clone()));
    assert!(first["asset"].get("access_token").is_none(), "{first}");
    // Again: Meta returns the dataset the asset has; nothing else changes.
    let again = app.onboard("acme", "whatsapp", ACME_WABA, TOKEN).await;
    assert_eq!(again["asset"]["dataset_id"], dataset.as_str());
    assert_eq!(again["already_registered"], true);
    assert!(again.get("previous_dataset_id").is_none());
    // An existing dataset can be reused by id, without the Dataset API.
    let (status, given) = app
        .admin(
            Method::POST,
            "/v1/admin/tenants/acme/assets",
            Some(json!({"channel": "whatsapp", "asset_id": ACME_WABA_2, "access_token": TOKEN, "dataset_id": dataset})),
        )
        .await;
    assert_eq!(status, 201, "{given}");
    assert_eq!(given["dataset_source"], "given");
    assert_eq!(app.sim.dataset_of(ACME_WABA_2), None);

    // Meta refuses: a missing permission, then an invalid token. Meta's words and what to do.
    app.sim.deny_asset("200000000000009");
    let (status, body) = app
        .admin(
            Method::POST,
            "/v1/admin/tenants/acme/assets",
            Some(json!({"channel": "whatsapp", "asset_id": "200000000000009", "access_token": TOKEN})),
        )
        .await;
    assert_eq!(status, 502, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("(#200)"), "{message}");
    assert!(
        message.contains("grant whatsapp_business_manage_events"),
        "{message}"
    );
    let (status, body) = app
        .admin(
            Method::POST,
            "/v1/admin/tenants/acme/assets",
            Some(json!({"channel": "messenger", "asset_id": "300000000000009", "access_token": "EAAB-wrong"})),
        )
        .await;
    assert_eq!(status, 502, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("invalid or expired"), "{message}");
    assert!(!message.contains("EAAB-wrong"), "{message}");
    assert!(
        app.store
            .get_asset("300000000000009")
            .await
            .unwrap()
            .is_none()
    );

    // An asset of one tenant cannot be onboarded by another, and unknown tenants are named.
    app.create_tenant("globex").await;
    let (status, _) = app
        .admin(
            Method::POST,
            "/v1/admin/tenants/globex/assets",
            Some(json!({"channel": "whatsapp", "asset_id": ACME_WABA, "access_token": TOKEN})),
        )
        .await;
    assert_eq!(status, 409);
    let (status, _) = app
        .admin(Method::GET, "/v1/admin/tenants/nobody", None)
        .await;
    assert_eq!(status, 404);

    // Every step is in the audit trail, without the tokens.
    let (_, audit) = app
        .admin(Method::GET, "/v1/admin/audit?tenant=acme", None)
        .await;
    let actions: Vec<&str> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "asset.onboard_failed",
            "asset.onboard_failed",
            "asset.onboard",
            "asset.onboard",
            "asset.onboard",
            "tenant.create"
        ]
    );
    assert!(audit["data"][0]["actor"] == "admin-api");
    assert!(!audit.to_string().contains(TOKEN));
    app.stop().await;
}

async fn tokens_are_sealed_at_rest(backend: Backend) {
    let Some(mut app) = spawn_app(backend).await else {
        return;
    };
    let secret = "EAAGm0PX4ZCpsBAKcSealedTokenNeverStoredPlain9";
    app.sim.set_tokens(vec![TOKEN.into(), secret.into()]);
    app.create_tenant("acme").await;
    app.onboard("acme", "whatsapp", ACME_WABA, secret).await;
    let (_, key) = app.create_key("acme", None).await;
    app.send_as(
        &key,
        &[purchase(
            "sealed-1",
            "whatsapp_business_account_id",
            ACME_WABA,
        )],
    )
    .await;
    app.wait_until(WAIT, "the delivery with the sealed token", |a| {
        a.delivered_ids() == ["sealed-1"]
    })
    .await;
    app.stop().await;

    // Every byte the database holds, searched for the token and the API key.
    let dump = match backend {
        Backend::Sqlite => {
            let path = app.db.url.strip_prefix("sqlite://").unwrap().to_owned();
            let mut bytes = Vec::new();
            for suffix in ["", "-wal", "-shm"] {
                if let Ok(b) = std::fs::read(format!("{path}{suffix}")) {
                    bytes.extend(b);
                }
            }
            bytes
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&app.db.url).await.unwrap();
            let mut text = String::new();
            for table in [
                "assets",
                "api_keys",
                "audit_log",
                "events",
                "send_attempts",
                "tenants",
            ] {
                let rows: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT t::text FROM {table} t"
                )))
                .fetch_all(&pool)
                .await
                .unwrap();
                for (row,) in rows {
                    text.push_str(&row);
                }
            }
            text.into_bytes()
        }
    };
    assert!(dump.len() > 1_000, "the dump holds the database");
    let contains = |needle: &str| dump.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(contains(ACME_WABA), "the scan reads the stored rows");
    assert!(
        !contains(secret),
        "the access token is stored in plain text"
    );
    assert!(!contains(&key), "the API key is stored in plain text");
    let stored = app.store.get_asset(ACME_WABA).await.unwrap().unwrap();
    assert!(stored.sealed_token.starts_with("enc:v1:"));
}

async fn tenant_keys_reach_only_their_own_tenant_on_every_endpoint(backend: Backend) {
    let Some(mut app) = spawn_app(backend).await else {
        return;
    };
    two_tenants(&app).await;
    let (_, acme) = app.create_key("acme", None).await;
    let (_, globex) = app.create_key("globex", None).await;
    let (_, acme_one) = app.create_key("acme", Some(vec![ACME_WABA])).await;
    // A key can only be limited to its own tenant's assets.
    let (status, body) = app
        .admin(
            Method::POST,
            "/v1/admin/tenants/acme/keys",
            Some(json!({"assets": [GLOBEX_PAGE]})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    app.sim.set_faults(Faults {
        reject_events_containing: Some("poison".into()),
        ..Faults::default()
    });

    // POST /v1/events: another tenant's asset is rejected exactly like an unknown one.
    let report = app
        .send_as(
            &globex,
            &[
                purchase("g-into-acme", "whatsapp_business_account_id", ACME_WABA),
                purchase(
                    "g-unknown",
                    "whatsapp_business_account_id",
                    "200000000000777",
                ),
                purchase("g-own", "page_id", GLOBEX_PAGE),
            ],
        )
        .await;
    let (foreign, unknown) = (&report["results"][0], &report["results"][1]);
    assert_eq!(foreign["status"], "rejected");
    assert_eq!(foreign["errors"][0]["code"], "unknown_asset");
    assert_eq!(
        foreign["errors"][0]["message"]
            .as_str()
            .unwrap()
            .replace(ACME_WABA, "X"),
        unknown["errors"][0]["message"]
            .as_str()
            .unwrap()
            .replace("200000000000777", "X"),
    );
    assert_eq!(report["results"][2]["status"], "accepted");
    // The default tenant's key sees none of the new tenants' assets.
    let report = app
        .send_as(
            API_KEY,
            &[purchase(
                "d-into-acme",
                "whatsapp_business_account_id",
                ACME_WABA,
            )],
        )
        .await;
    assert_eq!(report["results"][0]["status"], "rejected");
    // A key limited to one asset cannot use the tenant's other asset.
    let report = app
        .send_as(
            &acme_one,
            &[
                purchase("a1-own", "whatsapp_business_account_id", ACME_WABA),
                purchase("a1-other", "whatsapp_business_account_id", ACME_WABA_2),
            ],
        )
        .await;
    assert_eq!(report["results"][0]["status"], "accepted");
    assert_eq!(report["results"][1]["status"], "rejected");
    let mut poison = purchase("a-poison", "whatsapp_business_account_id", ACME_WABA_2);
    poison["custom_data"]["order_id"] = json!("poison");
    app.send_as(&acme, &[poison]).await;
    app.wait_for_empty_queue(WAIT).await;

    // GET /v1/events/{id}: another tenant's event is a 404, like a missing one.
    let get = |key: &str, path: &str| {
        let (key, path) = (key.to_owned(), path.to_owned());
        let app = &app;
        async move { app.request(Method::GET, &path, &key, None).await.0 }
    };
    assert_eq!(get(&acme, "/v1/events/a1-own").await, 200);
    assert_eq!(get(&globex, "/v1/events/a1-own").await, 404);
    assert_eq!(get(API_KEY, "/v1/events/a1-own").await, 404);
    assert_eq!(get(&acme, "/v1/events/g-own").await, 404);
    assert_eq!(get(&acme_one, "/v1/events/a-poison").await, 404);
    assert_eq!(get(&acme, "/v1/events/a-poison").await, 200);

    // Dead letters: listed and replayed only within the caller's tenant and assets.
    let list = |key: &str| {
        let key = key.to_owned();
        let app = &app;
        async move {
            let (status, body) = app
                .request(Method::GET, "/v1/dead-letters", &key, None)
                .await;
            assert_eq!(status, 200);
            body["count"].as_u64().unwrap()
        }
    };
    assert_eq!(
        (
            list(&acme).await,
            list(&globex).await,
            list(&acme_one).await
        ),
        (1, 0, 0)
    );
    assert_eq!(list(API_KEY).await, 0);
    let replay = |key: &str| {
        let key = key.to_owned();
        let app = &app;
        async move {
            let body = json!({"all": true});
            let (status, body) = app
                .request(Method::POST, "/v1/dead-letters/replay", &key, Some(&body))
                .await;
            assert_eq!(status, 200);
            body["replayed"].as_u64().unwrap()
        }
    };
    assert_eq!(replay(&globex).await, 0);
    assert_eq!(replay(&acme_one).await, 0);
    assert_eq!(replay(API_KEY).await, 0);
    assert_eq!(list(&acme).await, 1, "the others' replays left it dead");
    assert_eq!(replay(&acme).await, 1);

    // Keys and roles: tenant keys are not admin keys and the other way round.
    let (status, _) = app
        .request(Method::GET, "/v1/admin/tenants", &acme, None)
        .await;
    assert_eq!(status, 403);
    let (status, _) = app
        .request(Method::GET, "/v1/admin/tenants", API_KEY, None)
        .await;
    assert_eq!(status, 403);
    let (status, _) = app
        .request(Method::GET, "/v1/events/a1-own", ADMIN_KEY, None)
        .await;
    assert_eq!(status, 403);
    let (status, _) = app
        .request(Method::GET, "/v1/admin/tenants", "crk_made-up", None)
        .await;
    assert_eq!(status, 401);

    // A revoked key stops working at once.
    let (acme_tmp_id, acme_tmp) = app.create_key("acme", None).await;
    assert_eq!(get(&acme_tmp, "/v1/events/a1-own").await, 200);
    let (status, revoked) = app
        .admin(
            Method::DELETE,
            &format!("/v1/admin/keys/{acme_tmp_id}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{revoked}");
    assert!(revoked["revoked_at_ms"].is_i64());
    assert!(revoked.get("key_hash").is_none());
    assert_eq!(get(&acme_tmp, "/v1/events/a1-own").await, 401);
    assert_eq!(get(&acme, "/v1/events/a1-own").await, 200);

    // The tenant view lists keys without their secrets.
    let (_, shown) = app.admin(Method::GET, "/v1/admin/tenants/acme", None).await;
    assert_eq!(shown["keys"].as_array().unwrap().len(), 3);
    assert_eq!(shown["assets"].as_array().unwrap().len(), 2);
    let text = shown.to_string();
    assert!(!text.contains(&acme) && !text.contains(TOKEN) && !text.contains("key_hash"));
    app.stop().await;
}

async fn a_token_error_shows_in_the_tenant_status_until_the_token_is_replaced(backend: Backend) {
    let Some(mut app) = spawn_app(backend).await else {
        return;
    };
    two_tenants(&app).await;
    let (_, acme) = app.create_key("acme", None).await;
    app.set_token(ACME_WABA, "EAAB-expired").await;
    app.send_as(
        &acme,
        &[purchase(
            "held-1",
            "whatsapp_business_account_id",
            ACME_WABA,
        )],
    )
    .await;
    let started = std::time::Instant::now();
    let shown = loop {
        let (_, shown) = app.admin(Method::GET, "/v1/admin/tenants/acme", None).await;
        if shown["health"] == "attention" {
            break shown;
        }
        assert!(started.elapsed() < WAIT, "the asset never paused: {shown}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let paused = shown["assets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["asset_id"] == ACME_WABA)
        .unwrap();
    assert_eq!(paused["status"], "paused");
    assert!(
        paused["status_reason"].as_str().unwrap().contains("auth"),
        "{paused}"
    );
    let (_, globex) = app
        .admin(Method::GET, "/v1/admin/tenants/globex", None)
        .await;
    assert_eq!(globex["health"], "ok");
    assert!(app.delivered_ids().is_empty());

    let (status, resumed) = app
        .admin(
            Method::PUT,
            &format!("/v1/admin/assets/{ACME_WABA}/token"),
            Some(json!({ "access_token": TOKEN })),
        )
        .await;
    assert_eq!(status, 200, "{resumed}");
    assert_eq!(resumed["status"], "active");
    app.wait_until(WAIT, "the held event", |a| a.delivered_ids() == ["held-1"])
        .await;
    let (_, shown) = app.admin(Method::GET, "/v1/admin/tenants/acme", None).await;
    assert_eq!(shown["health"], "ok");
    app.stop().await;
}

async fn test_event_codes_come_from_the_request_the_asset_or_the_tenant(backend: Backend) {
    let Some(mut app) = spawn_app(backend).await else {
        return;
    };
    two_tenants(&app).await;
    let (status, _) = app
        .admin(
            Method::PATCH,
            "/v1/admin/tenants/acme",
            Some(json!({"test_event_code": "TENANT1"})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = app
        .admin(
            Method::POST,
            "/v1/admin/tenants/acme/assets",
            Some(json!({"channel": "whatsapp", "asset_id": ACME_WABA_2, "access_token": TOKEN, "test_event_code": "ASSET2"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (_, acme) = app.create_key("acme", None).await;
    let (_, globex) = app.create_key("globex", None).await;
    let report = app
        .send_as(
            &acme,
            &[
                purchase("t-tenant", "whatsapp_business_account_id", ACME_WABA),
                purchase("t-asset", "whatsapp_business_account_id", ACME_WABA_2),
            ],
        )
        .await;
    assert_eq!(report["results"][0]["test_event_code"], "TENANT1");
    assert_eq!(report["results"][1]["test_event_code"], "ASSET2");
    let (status, report) = app
        .request(
            Method::POST,
            "/v1/events",
            &acme,
            Some(&json!({"data": [purchase("t-request", "whatsapp_business_account_id", ACME_WABA)], "test_event_code": "REQ3"})),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(report["results"][0]["test_event_code"], "REQ3");
    let report = app
        .send_as(&globex, &[purchase("t-none", "page_id", GLOBEX_PAGE)])
        .await;
    assert!(
        report["results"][0].get("test_event_code").is_none(),
        "{report}"
    );

    app.wait_until(WAIT, "four deliveries", |a| a.delivered_ids().len() == 4)
        .await;
    let codes: std::collections::HashMap<String, Option<String>> = app
        .sim
        .accepted(None)
        .into_iter()
        .map(|e| {
            (
                e.event["event_id"].as_str().unwrap().to_owned(),
                e.test_event_code,
            )
        })
        .collect();
    assert_eq!(codes["t-tenant"].as_deref(), Some("TENANT1"));
    assert_eq!(codes["t-asset"].as_deref(), Some("ASSET2"));
    assert_eq!(codes["t-request"].as_deref(), Some("REQ3"));
    assert_eq!(codes["t-none"], None);
    app.stop().await;
}

async fn an_upgraded_relay_seals_plain_tokens_and_keeps_the_default_tenant(backend: Backend) {
    let Some(mut app) = spawn_app(backend).await else {
        return;
    };
    app.stop().await;
    // What a relay from before encryption left: a plain token.
    app.store
        .set_asset_token(crate::app::WABA, TOKEN, 0)
        .await
        .unwrap();
    app.start(app.config()).await;
    app.post_events(&[crate::app::whatsapp_event(1)]).await;
    app.wait_until(WAIT, "the delivery", |a| a.delivered_ids() == ["wa-1"])
        .await;
    let stored = app
        .store
        .get_asset(crate::app::WABA)
        .await
        .unwrap()
        .unwrap();
    assert!(
        stored.sealed_token.starts_with("enc:v1:"),
        "sealed at start"
    );
    assert_eq!(stored.tenant, "default");
    assert_eq!(
        app.vault
            .open(&stored.sealed_token, crate::app::WABA)
            .map(|t| secrecy::ExposeSecret::expose_secret(&t).to_owned())
            .unwrap(),
        TOKEN
    );
    app.stop().await;
}

async fn rotating_the_master_key_reseals_every_token(backend: Backend) {
    let Some(mut app) = spawn_app(backend).await else {
        return;
    };
    app.stop().await;
    let new_key = MasterKey::generate();
    let output = tokio::process::Command::new(binary())
        .args(["keys", "rotate-master", "--new-key-env", "NEW_MASTER_KEY"])
        .args(["--database-url", &app.db.url])
        .env("CAPI_RELAY_MASTER_KEY", app.master_key_text())
        .env(
            "NEW_MASTER_KEY",
            secrecy::ExposeSecret::expose_secret(&new_key.encode()),
        )
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("2 tokens re-sealed"), "{text}");
    for asset in app.store.list_assets().await.unwrap() {
        assert!(new_key.open(&asset.sealed_token, &asset.asset_id).is_ok());
        assert!(
            app.vault
                .open(&asset.sealed_token, &asset.asset_id)
                .is_err()
        );
    }
    // A relay still on the old key holds the events (no attempt burnt) instead of failing them.
    app.start(app.config()).await;
    app.post_events(&[crate::app::whatsapp_event(1)]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(app.delivered_ids().is_empty());
    let record = &app.store.find_events("wa-1", None, None).await.unwrap()[0];
    assert_ne!(record.state, relay_store::EventState::Dead);
    assert_eq!(record.attempts[0].outcome, "token_unreadable");
    app.stop().await;

    // Restarted with the new key, it delivers.
    let mut config = app.config();
    config.master_key = Some(new_key.encode());
    // Lift the 30 s hold now rather than wait it out.
    app.store
        .pause_dataset(crate::app::WABA_DATASET, 0)
        .await
        .unwrap();
    app.start(config).await;
    app.wait_until(WAIT, "the delivery with the new key", |a| {
        a.delivered_ids() == ["wa-1"]
    })
    .await;
    let (_, audit) = app.admin(Method::GET, "/v1/admin/audit", None).await;
    assert_eq!(audit["data"][0]["action"], "master_key.rotate");
    assert!(!audit.to_string().contains(&app.master_key_text()));
    app.stop().await;
}

/// The README's onboarding walk-through, run with the binary against a running relay.
async fn a_new_user_onboards_a_tenant_with_two_assets_from_the_command_line(backend: Backend) {
    let Some(mut app) = spawn_app(backend).await else {
        return;
    };
    let run = |args: Vec<&str>, env: Vec<(&str, String)>, stdin: Option<&str>| {
        let mut command = tokio::process::Command::new(binary());
        command
            .args(&args)
            .args(["--database-url", &app.db.url])
            .env("CAPI_RELAY_MASTER_KEY", app.master_key_text())
            .env("CAPI_RELAY_GRAPH_URL", app.sim_url())
            .envs(env)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let stdin = stdin.map(str::to_owned);
        let label = format!("{args:?}");
        async move {
            let mut child = command.spawn().unwrap();
            let mut pipe = child.stdin.take().unwrap();
            if let Some(text) = stdin {
                tokio::io::AsyncWriteExt::write_all(&mut pipe, text.as_bytes())
                    .await
                    .unwrap();
            }
            drop(pipe);
            let output = child.wait_with_output().await.unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(output.status.success(), "{label}: {text}");
            (String::from_utf8_lossy(&output.stdout).into_owned(), text)
        }
    };
    let (_, out) = run(vec!["tenants", "add", "acme"], vec![], None).await;
    assert!(out.contains("tenant acme created"), "{out}");
    let (_, out) = run(
        vec![
            "assets",
            "onboard",
            "--tenant",
            "acme",
            "--channel",
            "whatsapp",
            "--asset-id",
            ACME_WABA,
            "--access-token-env",
            "ACME_TOKEN",
        ],
        vec![("ACME_TOKEN", TOKEN.to_owned())],
        None,
    )
    .await;
    assert!(out.contains("Dataset API (create-or-get)"), "{out}");
    let (_, out) = run(
        vec![
            "assets",
            "onboard",
            "--tenant",
            "acme",
            "--channel",
            "messenger",
            "--asset-id",
            GLOBEX_PAGE,
            "--access-token-stdin",
            "--test-event-code",
            "TEST777",
        ],
        vec![],
        Some(&format!("{TOKEN}\n")),
    )
    .await;
    assert!(out.contains("TEST EVENTS"), "{out}");
    assert!(!out.contains(TOKEN));
    let (key, out) = run(
        vec!["keys", "create", "--tenant", "acme", "--label", "crm"],
        vec![],
        None,
    )
    .await;
    let key = key.trim().to_owned();
    assert!(key.starts_with("crk_"), "{out}");
    let (_, shown) = run(vec!["tenants", "show", "acme"], vec![], None).await;
    assert!(
        shown.contains(ACME_WABA) && shown.contains(GLOBEX_PAGE),
        "{shown}"
    );
    assert!(shown.contains("TEST EVENTS (TEST777)"), "{shown}");
    assert!(!shown.contains(&key) && !shown.contains(TOKEN), "{shown}");

    // The new key sends for both assets through the running relay.
    let report = app
        .send_as(
            &key,
            &[
                purchase("cli-wa", "whatsapp_business_account_id", ACME_WABA),
                purchase("cli-ms", "page_id", GLOBEX_PAGE),
            ],
        )
        .await;
    assert_eq!(report["accepted"], 2, "{report}");
    app.wait_until(WAIT, "both deliveries", |a| a.delivered_ids().len() == 2)
        .await;

    let (_, audit) = run(vec!["audit", "--tenant", "acme"], vec![], None).await;
    for action in ["tenant.create", "asset.onboard", "key.create"] {
        assert!(audit.contains(action), "{audit}");
    }
    assert!(audit.contains("cli:"), "{audit}");
    assert!(!audit.contains(TOKEN) && !audit.contains(&key));
    let (_, keys) = run(vec!["keys", "list", "--tenant", "acme"], vec![], None).await;
    let id = keys
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    run(vec!["keys", "revoke", &id], vec![], None).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let (status, _) = app
        .request(Method::GET, "/v1/events/cli-wa", &key, None)
        .await;
    assert_eq!(
        status, 401,
        "a key revoked from the CLI stops within a second"
    );
    app.stop().await;
}

/// Issue 12 A.3: beta registering acme's dataset would get `duplicate` for acme's event ids.
async fn a_dataset_of_one_tenant_is_refused_to_another_and_an_asset_id_to_another_channel(
    backend: Backend,
) {
    const BETA_WABA: &str = "400000000000001";
    let Some(mut app) = spawn_app(backend).await else {
        return;
    };
    app.create_tenant("acme").await;
    app.create_tenant("beta").await;
    let onboarded = app.onboard("acme", "whatsapp", ACME_WABA, TOKEN).await;
    let dataset = onboarded["asset"]["dataset_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Admin API: beta cannot register acme's dataset, and is not told whose it is.
    let (status, body) = app
        .admin(
            Method::POST,
            "/v1/admin/tenants/beta/assets",
            Some(json!({"channel": "whatsapp", "asset_id": BETA_WABA, "access_token": TOKEN, "dataset_id": dataset})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("dataset {dataset} belongs to another tenant")),
        "{message}"
    );
    assert!(!message.contains("acme"), "{message}");
    assert!(app.store.get_asset(BETA_WABA).await.unwrap().is_none());

    // The CLI refuses the same, with the same words.
    let output = tokio::process::Command::new(binary())
        .args([
            "assets",
            "add",
            "--tenant",
            "beta",
            "--channel",
            "whatsapp",
            "--asset-id",
            BETA_WABA,
            "--dataset-id",
            &dataset,
            "--access-token-env",
            "BETA_TOKEN",
            "--database-url",
            &app.db.url,
        ])
        .env("CAPI_RELAY_MASTER_KEY", app.master_key_text())
        .env("BETA_TOKEN", TOKEN)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("dataset {dataset} belongs to another tenant")),
        "{stderr}"
    );
    assert!(app.store.get_asset(BETA_WABA).await.unwrap().is_none());

    // An Instagram account with the WABA's id does not silently replace the WABA.
    let (status, body) = app
        .admin(
            Method::POST,
            "/v1/admin/tenants/acme/assets",
            Some(json!({"channel": "instagram", "asset_id": ACME_WABA, "access_token": TOKEN, "dataset_id": "990000000000001"})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!(
            "asset {ACME_WABA} is already registered as a whatsapp asset"
        )),
        "{message}"
    );
    let kept = app.store.get_asset(ACME_WABA).await.unwrap().unwrap();
    assert_eq!(
        (kept.channel.as_str(), kept.dataset_id.as_str()),
        ("whatsapp", dataset.as_str())
    );

    // With a dataset of its own, beta's event ids are its own: acme's are no oracle.
    let (status, body) = app
        .admin(
            Method::POST,
            "/v1/admin/tenants/beta/assets",
            Some(json!({"channel": "whatsapp", "asset_id": BETA_WABA, "access_token": TOKEN, "dataset_id": "990000000000002"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (_, acme_key) = app.create_key("acme", None).await;
    let (_, beta_key) = app.create_key("beta", None).await;
    let report = app
        .send_as(
            &acme_key,
            &[purchase(
                "secret-order",
                "whatsapp_business_account_id",
                ACME_WABA,
            )],
        )
        .await;
    assert_eq!(report["accepted"], 1, "{report}");
    let report = app
        .send_as(
            &beta_key,
            &[purchase(
                "secret-order",
                "whatsapp_business_account_id",
                BETA_WABA,
            )],
        )
        .await;
    assert_eq!(
        (report["accepted"].clone(), report["duplicates"].clone()),
        (json!(1), json!(0)),
        "{report}"
    );
    app.stop().await;
}
