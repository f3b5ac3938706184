//! CRM stage automation end to end (issue #13): stage rules, the generic stage-change hook, and
//! Kommo webhooks against a local fake of Kommo's REST API — on SQLite and on PostgreSQL.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use capi_relay::{
    capture::sign,
    config::Config,
    crm::kommo::{self, AddKommo, KommoClient, KommoClientConfig},
    tenancy::AdminError,
};
use relay_store::DEFAULT_TENANT;
use reqwest::Method;
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::{
    app::{ADMIN_KEY, Backend, PAGE, TestApp, WABA, WABA_DATASET, spawn_app_with},
    helpers::now,
};

const WAIT: Duration = Duration::from_secs(30);
const APP_SECRET: &str = "test-app-secret";
const CLICK_ID: &str = "ARAkLkA8rmlFeiCktEJQ-QTwRiyYHAFDLMNDBH0CD3qpjd0HR4irJ6LEkR7JwFF4XvnO2E4Nx0-eM-GABDLOPaOdRMv-_zfUQ2a";
const WA_PHONE: &str = "+55 11 98765-4321";
const KOMMO_TOKEN: &str = "kommo-long-lived-token";
const ACCOUNT_ID: &str = "17769199";

both_backends!(
    stage_rules_are_managed_under_the_admin_api_with_errors_naming_the_field,
    the_generic_hook_produces_an_attributed_event_once_and_records_every_other_outcome,
    kommo_bodies_in_both_formats_produce_events_with_the_click_id_and_the_deal_value_once,
    forged_and_wrong_account_kommo_requests_are_refused_and_nothing_is_stored,
    a_kommo_outage_and_a_restart_delay_but_lose_nothing_and_a_rejected_token_marks_the_integration,
    a_pipeline_with_its_own_asset_sends_its_stage_changes_there_and_the_rest_to_the_integrations,
    an_import_of_10000_csv_rows_reports_each_row_and_a_rerun_sends_nothing_twice,
);

// ---------------------------------------------------------------------------------------------
// A fake of Kommo's REST API.

#[derive(Default)]
struct FakeKommo {
    leads: HashMap<String, Value>,
    contacts: HashMap<String, Value>,
    /// The next this many requests get 503.
    fail_next: u32,
    /// The next this many requests get 429.
    throttle_next: u32,
    /// The token Kommo accepts.
    token: String,
    /// Lead and contact requests, with when they arrived.
    requests: Vec<(Instant, String)>,
}

type Fake = Arc<Mutex<FakeKommo>>;

fn gate(fake: &Fake, headers: &HeaderMap, path: String) -> Option<Response> {
    let mut f = fake.lock().unwrap();
    f.requests.push((Instant::now(), path));
    if f.fail_next > 0 {
        f.fail_next -= 1;
        return Some((StatusCode::SERVICE_UNAVAILABLE, "down").into_response());
    }
    if f.throttle_next > 0 {
        f.throttle_next -= 1;
        return Some((StatusCode::TOO_MANY_REQUESTS, "slow down").into_response());
    }
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if bearer != Some(f.token.as_str()) {
        return Some(
            (
                StatusCode::UNAUTHORIZED,
                Json(json!({"title": "Unauthorized", "status": 401})),
            )
                .into_response(),
        );
    }
    None
}

async fn fake_account(State(fake): State<Fake>, headers: HeaderMap) -> Response {
    if let Some(r) = gate(&fake, &headers, "account".into()) {
        return r;
    }
    Json(json!({"id": 17769199, "name": "Acme", "subdomain": "acme", "currency": "BRL"}))
        .into_response()
}

async fn fake_lead(
    State(fake): State<Fake>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = gate(&fake, &headers, format!("lead {id}")) {
        return r;
    }
    match fake.lock().unwrap().leads.get(&id) {
        Some(lead) => Json(lead.clone()).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

async fn fake_contact(
    State(fake): State<Fake>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = gate(&fake, &headers, format!("contact {id}")) {
        return r;
    }
    match fake.lock().unwrap().contacts.get(&id) {
        Some(c) => Json(c.clone()).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

/// Leads 1001 (main contact 2001 with the captured phone, price 22500), 1002 (contact 2002 with
/// the captured phone among two, price 500), 1003 (contact 2003 whose phone never came from an
/// ad) and 1004 (no contact).
async fn spawn_fake_kommo() -> (Fake, String) {
    let mut f = FakeKommo {
        token: KOMMO_TOKEN.into(),
        ..FakeKommo::default()
    };
    let lead = |id: u64, price: u64, contacts: Value| {
        json!({"id": id, "name": "Negócio", "price": price, "status_id": 142, "pipeline_id": 9217056,
               "_embedded": {"contacts": contacts}})
    };
    f.leads.insert(
        "1001".into(),
        lead(
            1001,
            22500,
            json!([{"id": 2009, "is_main": false}, {"id": 2001, "is_main": true}]),
        ),
    );
    f.leads.insert(
        "1002".into(),
        lead(1002, 500, json!([{"id": 2002, "is_main": true}])),
    );
    f.leads.insert(
        "1003".into(),
        lead(1003, 99, json!([{"id": 2003, "is_main": true}])),
    );
    f.leads.insert("1004".into(), lead(1004, 10, json!([])));
    let contact = |id: u64, phones: &[&str]| {
        json!({"id": id, "name": "João Ninguém", "custom_fields_values": [
            {"field_id": 1, "field_name": "Email", "field_code": "EMAIL", "field_type": "multitext",
             "values": [{"value": "joao@example.com", "enum_code": "WORK"}]},
            {"field_id": 2, "field_name": "Telefone", "field_code": "PHONE", "field_type": "multitext",
             "values": phones.iter().map(|p| json!({"value": p, "enum_code": "MOB"})).collect::<Vec<_>>()}
        ]})
    };
    f.contacts.insert("2001".into(), contact(2001, &[WA_PHONE]));
    f.contacts.insert(
        "2002".into(),
        contact(2002, &["+55 11 90000-0001", "5511987654321"]),
    );
    f.contacts
        .insert("2003".into(), contact(2003, &["+55 11 90000-0000"]));
    let fake = Arc::new(Mutex::new(f));
    let router = Router::new()
        .route("/api/v4/account", get(fake_account))
        .route("/api/v4/leads/{id}", get(fake_lead))
        .route("/api/v4/contacts/{id}", get(fake_contact))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (fake, url)
}

// ---------------------------------------------------------------------------------------------
// Set-up shared by the tests.

fn crm_config(c: &mut Config) {
    c.meta_app_secret = Some(SecretString::from(APP_SECRET.to_owned()));
    c.crm.retry_base = Duration::from_millis(300);
}

/// The relay with the WhatsApp customer `WA_PHONE` captured from a click-to-WhatsApp ad.
async fn spawn(backend: Backend) -> Option<TestApp> {
    let app = spawn_app_with(backend, crm_config).await?;
    capture_click(&app, WABA, CLICK_ID).await;
    Some(app)
}

/// `WA_PHONE` writes to `waba` from a click-to-WhatsApp ad with `click_id`.
async fn capture_click(app: &TestApp, waba: &str, click_id: &str) {
    let body = std::fs::read_to_string(format!(
        "{}/tests/fixtures/webhooks/whatsapp_cloud_referral.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
    .replace(WABA, waba)
    .replace(CLICK_ID, click_id)
    .replace("wamid.HBgN", &format!("wamid.{waba}"))
    .replace("__TS_MS__", &((now() - 3600) * 1000).to_string())
    .replace("__TS__", &(now() - 3600).to_string());
    let response = app
        .client
        .post(format!("{}/webhooks/meta", app.base))
        .header("content-type", "application/json")
        .header("x-hub-signature-256", sign(APP_SECRET, body.as_bytes()))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let started = Instant::now();
    while !app
        .store
        .pending_webhooks(i64::MAX, 1)
        .await
        .unwrap()
        .is_empty()
    {
        assert!(
            started.elapsed() < WAIT,
            "the Meta webhook is still pending"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn admin(app: &TestApp, method: Method, path: &str, body: Option<&Value>) -> (u16, Value) {
    app.request(method, path, ADMIN_KEY, body).await
}

async fn add_rule(app: &TestApp, rule: &Value) -> Value {
    let (status, body) = admin(app, Method::POST, "/v1/admin/crm/rules", Some(rule)).await;
    assert_eq!(status, 201, "{body}");
    body
}

/// Delivered events (by the simulator) with this id.
fn delivered(app: &TestApp, event_id: &str) -> Vec<Value> {
    app.sim
        .accepted(None)
        .into_iter()
        .filter(|e| e.event["event_id"] == event_id)
        .map(|e| e.event)
        .collect()
}

async fn wait_delivered(app: &TestApp, event_id: &str) -> Value {
    app.wait_until(WAIT, event_id, |a| !delivered(a, event_id).is_empty())
        .await;
    delivered(app, event_id).remove(0)
}

async fn status_of(app: &TestApp, integration: &str) -> Value {
    let (status, body) = admin(
        app,
        Method::GET,
        &format!("/v1/admin/crm/integrations?tenant={DEFAULT_TENANT}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["integration"] == integration)
        .cloned()
        .unwrap_or_else(|| panic!("no status for {integration}: {body}"))
}

fn outcome_count(status: &Value, outcome: &str) -> i64 {
    status["counts"]["by_outcome"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p[0] == outcome)
        .map_or(0, |p| p[1].as_i64().unwrap())
}

// ---------------------------------------------------------------------------------------------

async fn stage_rules_are_managed_under_the_admin_api_with_errors_naming_the_field(
    backend: Backend,
) {
    let Some(mut app) = spawn_app_with(backend, crm_config).await else {
        return;
    };
    let won = add_rule(
        &app,
        &json!({"tenant": DEFAULT_TENANT, "source": "kommo", "pipeline_id": "any", "stage_id": 142,
                "event": "Purchase", "value": "deal"}),
    )
    .await;
    assert_eq!(won["pipeline_id"], "any");
    assert_eq!(won["stage_id"], "142");
    assert_eq!(won["every_time"], false);
    let fixed = add_rule(
        &app,
        &json!({"tenant": DEFAULT_TENANT, "source": "generic", "pipeline_id": 7, "stage_id": "demo",
                "event": "QualifiedLead", "value": "49.90", "currency": "usd", "every_time": true}),
    )
    .await;
    assert_eq!(fixed["value"], "49.9");
    assert_eq!(fixed["currency"], "USD");

    // The same (source, pipeline, stage) twice is a conflict; bad fields are named.
    let (status, body) = admin(
        &app,
        Method::POST,
        "/v1/admin/crm/rules",
        Some(
            &json!({"tenant": DEFAULT_TENANT, "source": "kommo", "pipeline_id": "ANY",
                     "stage_id": "142", "event": "Purchase"}),
        ),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    for (rule, field) in [
        (
            json!({"source": "hubspot", "pipeline_id": 1, "stage_id": 1, "event": "Purchase"}),
            "source",
        ),
        (
            json!({"source": "kommo", "pipeline_id": 1, "stage_id": 1, "event": "Won"}),
            "event",
        ),
        (
            json!({"source": "kommo", "pipeline_id": 1, "stage_id": 1, "event": "Purchase", "value": "lots"}),
            "value",
        ),
        (
            json!({"source": "kommo", "pipeline_id": 1, "stage_id": 1, "event": "Purchase", "currency": "QQQ"}),
            "currency",
        ),
    ] {
        let mut rule = rule;
        rule["tenant"] = json!(DEFAULT_TENANT);
        let (status, body) = admin(&app, Method::POST, "/v1/admin/crm/rules", Some(&rule)).await;
        assert_eq!(status, 422, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with(field),
            "{field}: {body}"
        );
    }
    let (status, _) = admin(
        &app,
        Method::POST,
        "/v1/admin/crm/rules",
        Some(&json!({"tenant": "nobody", "source": "kommo", "pipeline_id": 1, "stage_id": 1, "event": "Purchase"})),
    )
    .await;
    assert_eq!(status, 404);
    // A tenant key is not the admin key.
    let (status, _) = app
        .request(
            Method::GET,
            "/v1/admin/crm/rules",
            crate::app::API_KEY,
            None,
        )
        .await;
    assert_eq!(status, 403);

    let (_, list) = admin(
        &app,
        Method::GET,
        "/v1/admin/crm/rules?tenant=default",
        None,
    )
    .await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2, "{list}");
    let id = won["id"].as_i64().unwrap();
    let (status, _) = admin(
        &app,
        Method::DELETE,
        &format!("/v1/admin/crm/rules/{id}?tenant=default"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = admin(
        &app,
        Method::DELETE,
        &format!("/v1/admin/crm/rules/{id}?tenant=default"),
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (_, list) = admin(
        &app,
        Method::GET,
        "/v1/admin/crm/rules?tenant=default",
        None,
    )
    .await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list}");
    app.stop().await;
}

async fn the_generic_hook_produces_an_attributed_event_once_and_records_every_other_outcome(
    backend: Backend,
) {
    let Some(mut app) = spawn(backend).await else {
        return;
    };
    add_rule(
        &app,
        &json!({"tenant": DEFAULT_TENANT, "source": "generic", "pipeline_id": "any", "stage_id": "won",
                "event": "Purchase"}),
    )
    .await;
    add_rule(
        &app,
        &json!({"tenant": DEFAULT_TENANT, "source": "generic", "pipeline_id": "sales", "stage_id": "qualified",
                "event": "QualifiedLead", "value": "none", "every_time": true}),
    )
    .await;
    let t0 = now() - 60;
    let change = |deal: &str, stage: &str, phone: &str| {
        json!({"deal_id": deal, "pipeline_id": "sales", "stage_id": stage, "amount": "1234.50",
               "currency": "BRL", "occurred_at": t0, "asset_id": WABA,
               "contact": {"phone": phone}})
    };
    let (status, body) = app
        .post_json(
            "/v1/crm/stage-changes",
            &json!({"data": [
                change("D-1", "won", WA_PHONE),
                change("D-1", "qualified", "5511987654321"),
                change("D-2", "demo", WA_PHONE),
                change("D-3", "won", "+55 11 90000-0000"),
                {"deal_id": 4, "stage_id": "won", "asset_id": WABA, "amount": "x", "contact": {"phone": WA_PHONE}},
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().unwrap();
    let outcomes: Vec<&str> = results
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        [
            "produced",
            "produced",
            "no_rule",
            "no_attribution",
            "invalid"
        ],
        "{body}"
    );
    let mut paths: Vec<&str> = results[4]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    paths.sort_unstable();
    assert_eq!(paths, ["amount", "occurred_at"], "{body}");

    let purchase_id = results[0]["event_id"].as_str().unwrap().to_owned();
    let sent = wait_delivered(&app, &purchase_id).await;
    assert_eq!(sent["event_name"], "Purchase");
    assert_eq!(sent["user_data"]["ctwa_clid"], CLICK_ID);
    assert_eq!(sent["user_data"]["whatsapp_business_account_id"], WABA);
    assert_eq!(sent["custom_data"]["value"].to_string(), "1234.5");
    assert_eq!(sent["custom_data"]["currency"], "BRL");
    assert_eq!(sent["custom_data"]["order_id"], "D-1");
    let qualified = wait_delivered(&app, results[1]["event_id"].as_str().unwrap()).await;
    assert_eq!(qualified["event_name"], "QualifiedLead");
    assert!(
        qualified["custom_data"].get("value").is_none(),
        "{qualified}"
    );

    // The same change again (a retry) is a duplicate, never a second send; a once-per-deal rule
    // ignores a later entry into the stage, an every-time rule does not.
    let mut later = change("D-1", "qualified", WA_PHONE);
    later["occurred_at"] = json!(now() - 30);
    let mut won_again = change("D-1", "won", WA_PHONE);
    won_again["occurred_at"] = json!(now() - 30);
    let (_, body) = app
        .post_json(
            "/v1/crm/stage-changes",
            &json!([change("D-1", "won", WA_PHONE), won_again, later]),
        )
        .await;
    let outcomes: Vec<&str> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["duplicate", "duplicate", "produced"], "{body}");
    wait_delivered(&app, body["results"][2]["event_id"].as_str().unwrap()).await;
    app.wait_for_empty_queue(WAIT).await;
    assert_eq!(delivered(&app, &purchase_id).len(), 1);

    // Every outcome is visible: no silent drop.
    let (status, records) = app
        .get_json("/v1/crm/stage-changes?integration=generic")
        .await;
    assert_eq!(status, 200);
    let demo = records["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["stage_id"] == "demo")
        .expect("the unmapped stage is recorded");
    assert_eq!(demo["outcome"], "no_rule");
    assert!(
        demo["detail"].as_str().unwrap().contains("stage demo"),
        "{demo}"
    );
    let status = status_of(&app, "generic").await;
    assert_eq!(outcome_count(&status, "produced"), 3, "{status}");
    assert_eq!(outcome_count(&status, "duplicate"), 1, "{status}");
    assert_eq!(outcome_count(&status, "no_rule"), 1, "{status}");
    assert_eq!(outcome_count(&status, "no_attribution"), 1, "{status}");
    assert_eq!(status["counts"]["repeats"], 1, "{status}");

    // Another tenant's asset looks like an unknown one.
    let mut foreign = change("D-9", "won", WA_PHONE);
    foreign["asset_id"] = json!("999999999999");
    let (_, body) = app.post_json("/v1/crm/stage-changes", &foreign).await;
    assert_eq!(
        body["results"][0]["errors"][0]["code"], "unknown_asset",
        "{body}"
    );
    app.stop().await;
}

/// Adds the Kommo integration for the default tenant's WABA; returns (id, webhook path).
async fn add_kommo(app: &TestApp, kommo_url: &str) -> (String, String) {
    let client = KommoClient::new(KommoClientConfig::default()).unwrap();
    let added = kommo::add(
        app.store.as_ref(),
        &app.vault,
        &client,
        AddKommo {
            tenant: DEFAULT_TENANT.into(),
            base_url: kommo_url.into(),
            token: SecretString::from(KOMMO_TOKEN.to_owned()),
            asset_id: WABA.into(),
            pipeline_assets: Vec::new(),
            currency: Some("brl".into()),
        },
        "test",
    )
    .await
    .unwrap();
    assert_eq!(added.integration.account_id, ACCOUNT_ID);
    assert_eq!(added.integration.subdomain, "acme");
    assert_eq!(added.integration.currency.as_deref(), Some("BRL"));
    (added.integration.id, added.webhook_path)
}

async fn post_kommo(app: &TestApp, path: &str, body: &str) -> (u16, String) {
    let response = app
        .client
        .post(format!("{}{path}", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

async fn wait_kommo_processed(app: &TestApp, integration: &str) {
    let started = Instant::now();
    loop {
        let webhooks = app.store.list_crm_webhooks(integration, 100).await.unwrap();
        if webhooks.iter().all(|w| w.state != "pending") {
            return;
        }
        assert!(
            started.elapsed() < WAIT,
            "Kommo webhooks still pending: {webhooks:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Percent-encodes a form value as browsers do (space as `+`).
fn pct(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                (b as char).to_string()
            }
            b' ' => "+".to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The long account-hook format, percent-encoded brackets, several items.
fn long_body(changed_at: i64) -> String {
    let enc = |k: &str| k.replace('[', "%5B").replace(']', "%5D");
    let mut pairs: Vec<(String, String)> = Vec::new();
    for (i, (lead, price)) in [(1001, 22500), (1003, 99)].iter().enumerate() {
        for (k, v) in [
            ("id", lead.to_string()),
            ("name", "Negócio São Paulo".to_string()),
            ("status_id", "142".into()),
            ("old_status_id", "20067736".into()),
            ("pipeline_id", "9217056".into()),
            ("price", price.to_string()),
            ("last_modified", changed_at.to_string()),
            ("account_id", ACCOUNT_ID.into()),
            ("custom_fields][0][code", "UTM_SOURCE".into()),
            ("custom_fields][0][values][0][value", "facebook".into()),
        ] {
            pairs.push((enc(&format!("leads[status][{i}][{k}]")), v));
        }
    }
    pairs.push((enc("leads[update][0][id]"), "1001".into()));
    pairs.push((enc("leads[update][0][price]"), "22500".into()));
    pairs.push((enc("account[subdomain]"), "acme".into()));
    pairs.push((enc("account[id]"), ACCOUNT_ID.into()));
    pairs.push((
        enc("account[_links][self]"),
        "https://acme.kommo.com".into(),
    ));
    pairs
        .into_iter()
        .map(|(k, v)| format!("{k}={}", pct(&v)))
        .collect::<Vec<_>>()
        .join("&")
}

async fn kommo_bodies_in_both_formats_produce_events_with_the_click_id_and_the_deal_value_once(
    backend: Backend,
) {
    let Some(mut app) = spawn(backend).await else {
        return;
    };
    let (fake, kommo_url) = spawn_fake_kommo().await;
    let (integration, path) = add_kommo(&app, &kommo_url).await;
    add_rule(
        &app,
        &json!({"tenant": DEFAULT_TENANT, "source": "kommo", "pipeline_id": "any", "stage_id": 142,
                "event": "Purchase"}),
    )
    .await;
    add_rule(
        &app,
        &json!({"tenant": DEFAULT_TENANT, "source": "kommo", "pipeline_id": 9217056, "stage_id": 555,
                "event": "QualifiedLead"}),
    )
    .await;

    let long = long_body(now() - 60);
    let (status, text) = post_kommo(&app, &path, &long).await;
    assert_eq!(status, 200, "{text}");
    // The short (Digital Pipeline) format, raw brackets: no price, no time; and a lead without
    // a contact, and an unmapped stage.
    let short = format!(
        "leads[status][0][id]=1002&leads[status][0][status_id]=555&leads[status][0][pipeline_id]=9217056\
         &leads[status][0][old_status_id]=20067736&leads[status][0][old_pipeline_id]=9217056\
         &leads[status][1][id]=1004&leads[status][1][status_id]=142&leads[status][1][pipeline_id]=1\
         &leads[status][2][id]=1001&leads[status][2][status_id]=20067736&leads[status][2][pipeline_id]=9217056\
         &account[id]={ACCOUNT_ID}"
    );
    let (status, text) = post_kommo(&app, &path, &short).await;
    assert_eq!(status, 200, "{text}");
    wait_kommo_processed(&app, &integration).await;

    let (_, records) = app
        .get_json(&format!("/v1/crm/stage-changes?integration={integration}"))
        .await;
    let by_deal = |deal: &str, stage: &str| {
        records["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["deal_id"] == deal && r["stage_id"] == stage)
            .cloned()
            .unwrap_or_else(|| panic!("no record of {deal}/{stage}: {records}"))
    };
    let won = by_deal("1001", "142");
    assert_eq!(won["outcome"], "produced", "{won}");
    let sent = wait_delivered(&app, won["event_id"].as_str().unwrap()).await;
    assert_eq!(sent["event_name"], "Purchase");
    assert_eq!(sent["user_data"]["ctwa_clid"], CLICK_ID);
    assert_eq!(sent["custom_data"]["value"], json!(22500));
    assert_eq!(sent["custom_data"]["currency"], "BRL");
    assert_eq!(sent["custom_data"]["order_id"], "1001");
    // Short format: the price comes from the REST lead; the captured phone is the second one.
    let qualified = by_deal("1002", "555");
    assert_eq!(qualified["outcome"], "produced", "{qualified}");
    let sent = wait_delivered(&app, qualified["event_id"].as_str().unwrap()).await;
    assert_eq!(sent["event_name"], "QualifiedLead");
    assert_eq!(sent["user_data"]["ctwa_clid"], CLICK_ID);
    assert_eq!(sent["custom_data"]["value"], json!(500));
    assert_eq!(by_deal("1003", "142")["outcome"], "no_attribution");
    assert_eq!(by_deal("1004", "142")["outcome"], "no_contact");
    assert_eq!(by_deal("1001", "20067736")["outcome"], "no_rule");
    // What the body held but could not use is kept with the webhook.
    let webhooks = app.store.list_crm_webhooks(&integration, 10).await.unwrap();
    assert!(
        webhooks.iter().any(|w| w
            .error
            .as_deref()
            .is_some_and(|e| e.contains("leads[update][0]"))),
        "{webhooks:?}"
    );

    // A redelivery of the same body is stored once; the same change in another body (Kommo
    // reorders keys) is seen again, and neither sends anything new.
    let (status, _) = post_kommo(&app, &path, &long).await;
    assert_eq!(status, 200);
    let reordered = long.split('&').rev().collect::<Vec<_>>().join("&");
    let (status, _) = post_kommo(&app, &path, &reordered).await;
    assert_eq!(status, 200);
    wait_kommo_processed(&app, &integration).await;
    assert_eq!(
        app.store
            .list_crm_webhooks(&integration, 10)
            .await
            .unwrap()
            .len(),
        3
    );
    app.wait_for_empty_queue(WAIT).await;
    assert_eq!(delivered(&app, won["event_id"].as_str().unwrap()).len(), 1);
    assert_eq!(app.sim.accepted(None).len(), 2);

    let status = status_of(&app, &integration).await;
    assert_eq!(status["health"], "ok");
    assert_eq!(status["kind"], "kommo");
    assert_eq!(outcome_count(&status, "produced"), 2, "{status}");
    assert_eq!(outcome_count(&status, "no_attribution"), 1, "{status}");
    assert_eq!(status["counts"]["seen"], 5, "{status}");
    assert_eq!(status["counts"]["repeats"], 2, "{status}");
    assert!(status["details"]["last_webhook_at_ms"].is_i64(), "{status}");
    assert!(status["details"]["api_ok_at_ms"].is_i64(), "{status}");
    assert!(
        !status.to_string().contains(KOMMO_TOKEN),
        "the token is never shown"
    );

    // The client is paced at 7 requests/s: consecutive requests at least ~1/7 s apart.
    let requests = fake.lock().unwrap().requests.clone();
    assert!(requests.len() >= 4, "{requests:?}");
    for pair in requests.windows(2).skip(1) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            gap >= Duration::from_millis(100),
            "{gap:?} between {pair:?}"
        );
    }
    app.stop().await;
}

async fn forged_and_wrong_account_kommo_requests_are_refused_and_nothing_is_stored(
    backend: Backend,
) {
    let Some(mut app) = spawn_app_with(backend, crm_config).await else {
        return;
    };
    let (_fake, kommo_url) = spawn_fake_kommo().await;
    let (integration, path) = add_kommo(&app, &kommo_url).await;
    let body = |account: &str| {
        format!("leads[status][0][id]=1001&leads[status][0][status_id]=142&{account}")
    };
    let forged_path = format!("/webhooks/kommo/{}", "0".repeat(64));
    let (status, _) = post_kommo(&app, &forged_path, &body("account[id]=17769199")).await;
    assert_eq!(status, 404);
    for account in [
        "account[id]=1",
        "account[subdomain]=evil",
        "account[id]=17769199&account[subdomain]=evil",
        "leads[status][0][account_id]=5&account[id]=17769199",
        "",
    ] {
        let (status, text) = post_kommo(&app, &path, &body(account)).await;
        assert_eq!(status, 403, "{account}: {text}");
        assert!(text.contains("wrong_account"), "{text}");
    }
    assert!(
        app.store
            .list_crm_webhooks(&integration, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let status = status_of(&app, &integration).await;
    assert!(
        status["details"]["last_webhook_at_ms"].is_null(),
        "{status}"
    );

    // A bad token is a clear error when adding an integration.
    let client = KommoClient::new(KommoClientConfig::default()).unwrap();
    let error = kommo::add(
        app.store.as_ref(),
        &app.vault,
        &client,
        AddKommo {
            tenant: DEFAULT_TENANT.into(),
            base_url: kommo_url.clone(),
            token: SecretString::from("wrong".to_owned()),
            asset_id: WABA.into(),
            pipeline_assets: Vec::new(),
            currency: None,
        },
        "test",
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        error.starts_with("token: Kommo refused the token (HTTP 401)"),
        "{error}"
    );
    app.stop().await;
}

async fn a_kommo_outage_and_a_restart_delay_but_lose_nothing_and_a_rejected_token_marks_the_integration(
    backend: Backend,
) {
    let Some(mut app) = spawn(backend).await else {
        return;
    };
    let (fake, kommo_url) = spawn_fake_kommo().await;
    let (integration, path) = add_kommo(&app, &kommo_url).await;
    add_rule(
        &app,
        &json!({"tenant": DEFAULT_TENANT, "source": "kommo", "pipeline_id": "any", "stage_id": 142,
                "event": "Purchase"}),
    )
    .await;
    let body = format!(
        "leads[status][0][id]=1001&leads[status][0][status_id]=142&leads[status][0][pipeline_id]=9217056\
         &leads[status][0][price]=22500&leads[status][0][last_modified]={}&account[id]={ACCOUNT_ID}",
        now() - 60
    );
    // Kommo is down for a while: the body is acknowledged and waits.
    fake.lock().unwrap().fail_next = 1_000;
    let (status, _) = post_kommo(&app, &path, &body).await;
    assert_eq!(status, 200);
    app.wait_until(WAIT, "a failed try", |_| {
        fake.lock().unwrap().requests.len() >= 3
    })
    .await;
    let webhooks = app.store.list_crm_webhooks(&integration, 10).await.unwrap();
    assert_eq!(webhooks[0].state, "pending");
    // A restart in the middle of the outage.
    app.stop().await;
    {
        let mut f = fake.lock().unwrap();
        f.fail_next = 2;
        f.throttle_next = 1;
    }
    app.start(app_config(&app)).await;
    wait_kommo_processed(&app, &integration).await;
    let (_, records) = app
        .get_json(&format!("/v1/crm/stage-changes?integration={integration}"))
        .await;
    let record = &records["data"][0];
    assert_eq!(record["outcome"], "produced", "{records}");
    let sent = wait_delivered(&app, record["event_id"].as_str().unwrap()).await;
    assert_eq!(sent["user_data"]["ctwa_clid"], CLICK_ID);
    let status = status_of(&app, &integration).await;
    assert!(
        status["details"]["api_error"]
            .as_str()
            .unwrap()
            .contains("HTTP 429"),
        "{status}"
    );

    // The token is revoked in Kommo: the integration is marked with the reason, and the body
    // waits for a new token.
    fake.lock().unwrap().token = "rotated-token".into();
    let body2 = body.replace("1001", "1002");
    let (status, _) = post_kommo(&app, &path, &body2).await;
    assert_eq!(status, 200);
    let started = Instant::now();
    loop {
        let status = status_of(&app, &integration).await;
        if status["health"] == "attention" {
            assert_eq!(status["details"]["status"], "token_rejected");
            assert!(
                status["details"]["status_reason"]
                    .as_str()
                    .unwrap()
                    .contains("HTTP 401"),
                "{status}"
            );
            assert_eq!(status["counts"]["webhooks_pending"], 1, "{status}");
            break;
        }
        assert!(started.elapsed() < WAIT, "never marked: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = KommoClient::new(KommoClientConfig::default()).unwrap();
    kommo::set_token(
        app.store.as_ref(),
        &app.vault,
        &client,
        &integration,
        &SecretString::from("rotated-token".to_owned()),
        "test",
    )
    .await
    .unwrap();
    wait_kommo_processed(&app, &integration).await;
    let status = status_of(&app, &integration).await;
    assert_eq!(status["health"], "ok", "{status}");
    assert_eq!(outcome_count(&status, "produced"), 2, "{status}");
    app.stop().await;
}

async fn a_pipeline_with_its_own_asset_sends_its_stage_changes_there_and_the_rest_to_the_integrations(
    backend: Backend,
) {
    let Some(app) = spawn(backend).await else {
        return;
    };
    // A second WhatsApp account of the tenant, on its own dataset, where the same customer
    // came from another ad.
    const WABA2: &str = "102290129340777";
    const DATASET2: &str = "3234567890";
    const CLICK_ID2: &str = "ARAkLkA8rmlFeiCktEJQ-second-waba-click";
    const PIPELINE2: &str = "7001";
    app.add_asset("whatsapp", WABA2, DATASET2).await;
    capture_click(&app, WABA2, CLICK_ID2).await;
    let foreign = app.add_wabas("other", 1, 1).await.remove(0).0;
    let (_fake, kommo_url) = spawn_fake_kommo().await;
    let client = KommoClient::new(KommoClientConfig::default()).unwrap();
    let request = |pipeline_assets: Vec<(String, String)>| AddKommo {
        tenant: DEFAULT_TENANT.into(),
        base_url: kommo_url.clone(),
        token: SecretString::from(KOMMO_TOKEN.to_owned()),
        asset_id: WABA.into(),
        pipeline_assets,
        currency: Some("BRL".into()),
    };

    // Another tenant's asset, or a pipeline id Kommo never has, is refused naming the field.
    for (pipeline, asset, says) in [
        (
            PIPELINE2,
            foreign.as_str(),
            "is not an asset of tenant default",
        ),
        ("sales", WABA2, "is not a Kommo pipeline id"),
    ] {
        let refused = kommo::add(
            app.store.as_ref(),
            &app.vault,
            &client,
            request(vec![(pipeline.into(), asset.into())]),
            "test",
        )
        .await
        .unwrap_err();
        let AdminError::Invalid { field, message } = &refused else {
            panic!("{refused:?}");
        };
        assert_eq!(*field, "pipeline_asset", "{message}");
        assert!(message.contains(says), "{message}");
    }
    assert!(
        app.store
            .list_crm_integrations(None)
            .await
            .unwrap()
            .is_empty()
    );

    let added = kommo::add(
        app.store.as_ref(),
        &app.vault,
        &client,
        request(vec![(PIPELINE2.into(), WABA2.into())]),
        "test",
    )
    .await
    .unwrap();
    let integration = added.integration.id.clone();
    add_rule(
        &app,
        &json!({"tenant": DEFAULT_TENANT, "source": "kommo", "pipeline_id": "any", "stage_id": 142,
                "event": "Purchase"}),
    )
    .await;

    // One body, a won lead in each pipeline (lead 1002's contact has the phone as its second).
    let body = format!(
        "leads[status][0][id]=1001&leads[status][0][status_id]=142&leads[status][0][pipeline_id]=9217056\
         &leads[status][1][id]=1002&leads[status][1][status_id]=142&leads[status][1][pipeline_id]={PIPELINE2}\
         &account[id]={ACCOUNT_ID}"
    );
    let (status, text) = post_kommo(&app, &added.webhook_path, &body).await;
    assert_eq!(status, 200, "{text}");
    wait_kommo_processed(&app, &integration).await;
    let changes = app
        .store
        .list_stage_changes(DEFAULT_TENANT, Some(&integration), 10)
        .await
        .unwrap();
    assert_eq!(changes.len(), 2, "{changes:?}");
    for (deal, dataset, waba, click) in [
        ("1001", WABA_DATASET, WABA, CLICK_ID),
        ("1002", DATASET2, WABA2, CLICK_ID2),
    ] {
        let change = changes.iter().find(|c| c.deal_id == deal).unwrap();
        assert_eq!(change.outcome, "produced", "{change:?}");
        let event_id = change.event_id.clone().unwrap();
        wait_delivered(&app, &event_id).await;
        let at: Vec<_> = app
            .sim
            .accepted(None)
            .into_iter()
            .filter(|e| e.event["event_id"] == event_id.as_str())
            .collect();
        assert_eq!(at.len(), 1, "{at:?}");
        assert_eq!(at[0].dataset_id, dataset, "deal {deal}");
        let user = &at[0].event["user_data"];
        assert_eq!(user["whatsapp_business_account_id"], waba, "deal {deal}");
        assert_eq!(user["ctwa_clid"], click, "deal {deal}");
    }
    let status = status_of(&app, &integration).await;
    assert_eq!(
        status["details"]["pipeline_assets"],
        json!({ PIPELINE2: WABA2 }),
        "{status}"
    );

    // Changed later: another tenant's asset is refused; removing it sends the pipeline back.
    let refused = kommo::set_pipeline_asset(
        app.store.as_ref(),
        &integration,
        PIPELINE2,
        Some(&foreign),
        "test",
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&refused, AdminError::Invalid { field: "asset_id", message } if message.contains("not an asset of tenant default")),
        "{refused:?}"
    );
    let changed =
        kommo::set_pipeline_asset(app.store.as_ref(), &integration, "42", Some(PAGE), "test")
            .await
            .unwrap();
    assert_eq!(changed.pipeline_assets.len(), 2);
    kommo::set_pipeline_asset(app.store.as_ref(), &integration, PIPELINE2, None, "test")
        .await
        .unwrap();
    let again =
        kommo::set_pipeline_asset(app.store.as_ref(), &integration, PIPELINE2, None, "test")
            .await
            .unwrap_err();
    assert!(matches!(again, AdminError::NotFound(_)), "{again:?}");
    let status = status_of(&app, &integration).await;
    assert_eq!(
        status["details"]["pipeline_assets"],
        json!({ "42": PAGE }),
        "{status}"
    );
    let mut app = app;
    app.stop().await;
}

fn app_config(app: &TestApp) -> Config {
    let mut config = app.config();
    crm_config(&mut config);
    config
}

// ---------------------------------------------------------------------------------------------
// The command line: `crm …` and `import`.

async fn run_binary(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    let mut command = tokio::process::Command::new(crate::helpers::binary());
    command
        .args(args)
        .env_remove("CAPI_RELAY_META_APP_SECRET")
        .env_remove("CAPI_RELAY_DATABASE_URL");
    for (k, v) in envs {
        command.env(k, v);
    }
    command.output().await.expect("the binary runs")
}

fn text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crm_commands_add_rules_and_a_kommo_account_and_show_its_status() {
    let env = crate::app::prepare_env(Backend::Sqlite).await.unwrap();
    let (_fake, kommo_url) = spawn_fake_kommo().await;
    let key = env.master_key_text();
    let envs = [
        ("CAPI_RELAY_DATABASE_URL", env.db.url.as_str()),
        ("CAPI_RELAY_MASTER_KEY", key.as_str()),
        ("KOMMO_TOKEN", KOMMO_TOKEN),
        ("BAD_TOKEN", "nope"),
    ];
    let out = run_binary(
        &[
            "crm",
            "rules",
            "add",
            "--tenant",
            "default",
            "--source",
            "kommo",
            "--pipeline-id",
            "any",
            "--stage-id",
            "142",
            "--event",
            "Purchase",
        ],
        &envs,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let out = run_binary(
        &[
            "crm",
            "rules",
            "add",
            "--tenant",
            "default",
            "--source",
            "kommo",
            "--pipeline-id",
            "1",
            "--stage-id",
            "2",
            "--event",
            "Won",
        ],
        &envs,
    )
    .await;
    assert!(!out.status.success());
    assert!(
        text(&out).contains("event: \"Won\" is not a business-messaging event name"),
        "{}",
        text(&out)
    );
    let out = run_binary(&["crm", "rules", "list", "--tenant", "default"], &envs).await;
    assert!(
        text(&out).contains("stage=142") && text(&out).contains("Purchase"),
        "{}",
        text(&out)
    );

    let out = run_binary(
        &[
            "crm",
            "kommo",
            "add",
            "--tenant",
            "default",
            "--base-url",
            &kommo_url,
            "--token-env",
            "BAD_TOKEN",
            "--asset-id",
            WABA,
        ],
        &envs,
    )
    .await;
    assert!(!out.status.success());
    assert!(
        text(&out).contains("Kommo refused the token (HTTP 401)"),
        "{}",
        text(&out)
    );
    let out = run_binary(
        &[
            "crm",
            "kommo",
            "add",
            "--tenant",
            "default",
            "--base-url",
            &kommo_url,
            "--token-env",
            "KOMMO_TOKEN",
            "--asset-id",
            WABA,
            "--currency",
            "BRL",
            "--pipeline-asset",
            "7001",
        ],
        &envs,
    )
    .await;
    assert!(!out.status.success());
    assert!(
        text(&out).contains("--pipeline-asset")
            && text(&out).contains("is not PIPELINE_ID=ASSET_ID"),
        "{}",
        text(&out)
    );
    let out = run_binary(
        &[
            "crm",
            "kommo",
            "add",
            "--tenant",
            "default",
            "--base-url",
            &kommo_url,
            "--token-env",
            "KOMMO_TOKEN",
            "--asset-id",
            WABA,
            "--currency",
            "BRL",
            "--pipeline-asset",
            &format!("7001={PAGE}"),
            "--public-url",
            "https://relay.example",
        ],
        &envs,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let printed = text(&out);
    assert!(
        printed.contains(&format!("pipeline 7001 → asset {PAGE}")),
        "{printed}"
    );
    assert!(printed.contains("account 17769199 (acme)"), "{printed}");
    assert!(
        printed.contains("https://relay.example/webhooks/kommo/"),
        "{printed}"
    );
    assert!(!printed.contains(KOMMO_TOKEN));
    let out = run_binary(&["crm", "status", "--tenant", "default"], &envs).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("(kommo) health=ok"), "{}", text(&out));
    assert!(text(&out).contains("last webhook never"), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("asset {WABA} pipeline 7001 → asset {PAGE}")),
        "{}",
        text(&out)
    );
    let id = env.store.list_crm_integrations(None).await.unwrap()[0]
        .id
        .clone();
    let out = run_binary(
        &[
            "crm",
            "kommo",
            "set-pipeline-asset",
            "--integration",
            &id,
            "--pipeline-id",
            "7002",
            "--asset-id",
            "999",
        ],
        &envs,
    )
    .await;
    assert!(!out.status.success());
    assert!(
        text(&out).contains("asset_id: asset 999 is not an asset of tenant default"),
        "{}",
        text(&out)
    );
    let out = run_binary(
        &[
            "crm",
            "kommo",
            "set-pipeline-asset",
            "--integration",
            &id,
            "--pipeline-id",
            "7001",
            "--remove",
        ],
        &envs,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("pipeline 7001 → the integration's asset {WABA}")),
        "{}",
        text(&out)
    );
    assert!(
        env.store.list_crm_integrations(None).await.unwrap()[0]
            .pipeline_assets
            .is_empty()
    );
    // The token is stored sealed.
    let stored = env.store.list_crm_integrations(None).await.unwrap();
    assert!(stored[0].sealed_token.starts_with("enc:v1:"));
    assert!(!stored[0].sealed_token.contains(KOMMO_TOKEN));
}

/// 10,000 rows: 9,990 conversions by the captured phone, 5 older than 7 days, 3 phones never
/// seen from an ad, 2 bad values.
fn import_csv(dir: &std::path::Path) -> std::path::PathBuf {
    let mut csv =
        String::from("Order,Date,Phone,Total,Currency,Event,Channel,WABA,custom_data.order_id\n");
    let recent = chrono::DateTime::from_timestamp(now() - 60, 0)
        .unwrap()
        .to_rfc3339();
    let old = now() - 8 * 24 * 3600;
    for i in 0..10_000 {
        let (date, phone, total) = match i {
            0..5 => (old.to_string(), WA_PHONE.to_owned(), "10.00".to_owned()),
            5..8 => (
                recent.clone(),
                format!("+55 11 90000-{i:04}"),
                "10.00".into(),
            ),
            8..10 => (recent.clone(), WA_PHONE.to_owned(), "abc".into()),
            _ => (
                recent.clone(),
                WA_PHONE.to_owned(),
                format!("{}.90", i % 500),
            ),
        };
        csv.push_str(&format!(
            "{i},{date},\"{phone}\",{total},BRL,Purchase,whatsapp,{WABA},ord-{i}\n"
        ));
    }
    let path = dir.join("orders.csv");
    std::fs::write(&path, csv).unwrap();
    path
}

async fn an_import_of_10000_csv_rows_reports_each_row_and_a_rerun_sends_nothing_twice(
    backend: Backend,
) {
    let Some(mut app) = spawn(backend).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = import_csv(dir.path());
    let report = dir.path().join("report.jsonl");
    let url = app.db.url.clone();
    let envs = [("CAPI_RELAY_DATABASE_URL", url.as_str())];
    let map = "event_name=Event,event_time=Date,contact.phone=Phone,custom_data.value=Total,\
               custom_data.currency=Currency,messaging_channel=Channel,\
               user_data.whatsapp_business_account_id=WABA";
    let file_arg = file.to_str().unwrap();
    let report_arg = report.to_str().unwrap();
    let import = |extra: &'static [&'static str]| {
        let mut args = vec![
            "import", "--tenant", "default", file_arg, "--map", map, "--report", report_arg,
        ];
        args.extend_from_slice(extra);
        args
    };
    let lines = || -> Vec<Value> {
        std::fs::read_to_string(&report)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };

    let out = run_binary(&import(&["--dry-run"]), &envs).await;
    let printed = text(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "rejected rows: exit code 1\n{printed}"
    );
    assert!(printed.contains("dry run: nothing stored"), "{printed}");
    assert!(printed.contains("would_accept=9990"), "{printed}");
    assert!(
        printed.contains("too_old=5") && printed.contains("rejected=5"),
        "{printed}"
    );
    assert_eq!(
        app.store.queue_stats().await.unwrap(),
        relay_store::QueueStats::default()
    );

    let out = run_binary(&import(&[]), &envs).await;
    let printed = text(&out);
    assert!(printed.contains("accepted=9990"), "{printed}");
    for step in ["progress: 1000/10000 rows", "progress: 10000/10000 rows"] {
        assert!(printed.contains(step), "{printed}");
    }
    assert!(printed.contains("rows/s"), "{printed}");
    let report_lines = lines();
    assert_eq!(report_lines.len(), 10_000);
    assert_eq!(report_lines[0]["line"], 2);
    assert_eq!(report_lines[0]["status"], "too_old");
    assert_eq!(report_lines[5]["status"], "rejected");
    assert_eq!(
        report_lines[5]["errors"][0]["code"], "no_attribution",
        "{}",
        report_lines[5]
    );
    assert_eq!(
        report_lines[8]["errors"][0]["path"], "custom_data.value",
        "{}",
        report_lines[8]
    );
    assert_eq!(report_lines[10]["status"], "accepted");
    assert_eq!(report_lines[10]["attribution"]["ctwa_clid"], CLICK_ID);

    let out = run_binary(&import(&[]), &envs).await;
    let printed = text(&out);
    assert!(printed.contains("duplicate=9990"), "{printed}");
    assert!(!printed.contains("accepted="), "{printed}");
    assert!(lines().iter().all(|l| l["status"] != "accepted"));

    app.wait_for_empty_queue(Duration::from_secs(120)).await;
    let sent = app.sim.accepted(None);
    assert_eq!(sent.len(), 9_990);
    let one = sent
        .iter()
        .find(|e| e.event["custom_data"]["order_id"] == "ord-10")
        .unwrap();
    assert_eq!(one.event["user_data"]["ctwa_clid"], CLICK_ID);
    assert_eq!(one.event["custom_data"]["value"].to_string(), "10.9");
    app.stop().await;
}
