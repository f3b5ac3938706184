//! The dashboard from the outside, as a browser without JavaScript uses it: sign-in by key or
//! one-time link, every page and its JSON twin, tenant isolation, CSRF, the login limit, replay
//! of a dead letter, and no secret or raw PII on any page.

use std::time::Duration;

use capi_relay::{capture::sign, dashboard::session, simulator::Faults};
use relay_store::{DEFAULT_TENANT, EventState};
use reqwest::{Method, redirect::Policy};
use serde_json::{Value, json};

use crate::{
    app::{ADMIN_KEY, API_KEY, Backend, TOKEN, TestApp, WABA, spawn_app, spawn_app_with},
    helpers::now,
};

both_backends!(
    a_tenant_sees_its_own_events_on_every_page_and_nothing_of_another,
    a_dead_letter_is_replayed_from_its_page_with_the_csrf_token_and_audited,
    sign_in_is_rate_limited_and_cross_site_forms_are_refused,
    a_login_link_signs_in_once_and_a_read_only_session_cannot_replay,
    the_operator_sees_every_tenant_and_switches_between_them,
    revoking_a_key_ends_its_dashboard_sessions,
    a_paused_asset_is_resumed_from_the_sources_page_with_the_csrf_token_and_audited,
    the_quality_page_counts_ad_started_conversations_converted_and_crm_event_coverage,
);

const WAIT: Duration = Duration::from_secs(30);
const ACME_EMAIL: &str = "ana.secret@acme-buyer.example";
const ACME_PHONE: &str = "+5511998765432";
const GLOBEX_EVENT: &str = "globex-private-order-77";

/// A cookie-keeping client that does not follow redirects, so each answer can be checked.
struct Browser {
    client: reqwest::Client,
    base: String,
    cookie: Option<String>,
}

fn form_body(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}={}",
                v.bytes()
                    .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    })
                    .collect::<String>()
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

impl Browser {
    fn new(app: &TestApp) -> Browser {
        Browser {
            client: reqwest::Client::builder()
                .redirect(Policy::none())
                .build()
                .unwrap(),
            base: app.base.clone(),
            cookie: None,
        }
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> (u16, String, Option<String>) {
        let request = match &self.cookie {
            Some(c) => request.header("cookie", c.clone()),
            None => request,
        };
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        for value in response.headers().get_all("set-cookie") {
            let value = value.to_str().unwrap();
            if let Some(pair) = value.split(';').next()
                && pair.starts_with("capi_ui=")
            {
                assert!(value.contains("HttpOnly"), "{value}");
                assert!(value.contains("SameSite=Strict"), "{value}");
                assert!(value.contains("Path=/ui"), "{value}");
                self.cookie = (pair != "capi_ui=").then(|| pair.to_owned());
            }
        }
        let location = response
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_owned());
        (status, response.text().await.unwrap(), location)
    }

    async fn get(&mut self, path: &str) -> (u16, String) {
        let request = self.client.get(format!("{}{path}", self.base));
        let (status, body, _) = self.send(request).await;
        (status, body)
    }

    /// A same-origin form post, as the dashboard's own pages make it.
    async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> (u16, String, Option<String>) {
        let request = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("origin", self.base.clone())
            .header("sec-fetch-site", "same-origin")
            .body(form_body(fields));
        self.send(request).await
    }

    async fn login(&mut self, key: &str) {
        let (status, body, location) = self.post("/ui/login", &[("key", key)]).await;
        assert_eq!(status, 303, "{body}");
        assert_eq!(location.as_deref(), Some("/ui"));
        assert!(self.cookie.is_some(), "a session cookie is set");
    }

    /// The CSRF token of the forms on `path`.
    async fn csrf(&mut self, path: &str) -> String {
        let (status, body) = self.get(path).await;
        assert_eq!(status, 200, "{body}");
        let start = body
            .find("name=\"csrf\" value=\"")
            .expect("a form with a csrf token")
            + 19;
        body[start..start + body[start..].find('"').unwrap()].to_owned()
    }
}

impl TestApp {
    async fn new_key(&self, tenant: &str) -> (String, String) {
        let (status, body) = self
            .request(
                Method::POST,
                &format!("/v1/admin/tenants/{tenant}/keys"),
                ADMIN_KEY,
                Some(&json!({"label": "dashboard test"})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        (
            body["id"].as_str().unwrap().to_owned(),
            body["key"].as_str().unwrap().to_owned(),
        )
    }

    async fn send_with(&self, key: &str, events: &[Value]) -> Value {
        let (status, body) = self
            .request(
                Method::POST,
                "/v1/events",
                key,
                Some(&json!({"data": events})),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        body
    }

    async fn wait_for_state(&self, event_id: &str, state: EventState) -> i64 {
        let started = std::time::Instant::now();
        loop {
            let found = self.store.find_events(event_id, None, None).await.unwrap();
            if let Some(e) = found.iter().find(|e| e.state == state) {
                return e.id;
            }
            assert!(
                started.elapsed() < WAIT,
                "{event_id} never became {state:?}: {found:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn purchase(event_id: &str, waba: &str) -> Value {
    json!({
        "event_name": "Purchase",
        "event_time": now() - 60,
        "event_id": event_id,
        "messaging_channel": "whatsapp",
        "user_data": {
            "whatsapp_business_account_id": waba,
            "ctwa_clid": format!("ARAk-{event_id}"),
            "em": ACME_EMAIL,
            "ph": ACME_PHONE
        },
        "custom_data": {"currency": "BRL", "value": "99.90"}
    })
}

/// acme (one WhatsApp account) and globex (another), each with a key; acme sends two good
/// purchases, a duplicate, a refused one and a poisoned one that dies; globex sends one.
struct Scene {
    acme_key: String,
    acme_key_id: String,
    globex_key: String,
    globex_waba: String,
    globex_dataset: String,
    dead_row: i64,
    globex_row: i64,
}

async fn scene(app: &TestApp) -> Scene {
    let acme = app.add_wabas("acme", 1, 1).await.remove(0);
    let globex = app.add_wabas("globex", 2, 1).await.remove(0);
    let (acme_key_id, acme_key) = app.new_key("acme").await;
    let (_, globex_key) = app.new_key("globex").await;
    app.sim.set_faults(Faults {
        reject_events_containing: Some("poison".into()),
        ..Faults::default()
    });
    let mut refused = purchase("acme-refused-1", &acme.0);
    refused.as_object_mut().unwrap().remove("event_time");
    let report = app
        .send_with(
            &acme_key,
            &[
                purchase("acme-1", &acme.0),
                purchase("acme-2", &acme.0),
                purchase("acme-1", &acme.0),
                refused,
                purchase("acme-poison", &acme.0),
            ],
        )
        .await;
    assert_eq!(
        (
            report["accepted"].as_u64(),
            report["duplicates"].as_u64(),
            report["rejected"].as_u64()
        ),
        (Some(3), Some(1), Some(1)),
        "{report}"
    );
    app.send_with(&globex_key, &[purchase(GLOBEX_EVENT, &globex.0)])
        .await;
    app.wait_for_state("acme-1", EventState::Delivered).await;
    app.wait_for_state("acme-2", EventState::Delivered).await;
    let globex_row = app
        .wait_for_state(GLOBEX_EVENT, EventState::Delivered)
        .await;
    let dead_row = app.wait_for_state("acme-poison", EventState::Dead).await;
    Scene {
        acme_key,
        acme_key_id,
        globex_key,
        globex_waba: globex.0,
        globex_dataset: globex.1,
        dead_row,
        globex_row,
    }
}

/// Nothing on a page may be a key, a token or a raw personal value.
fn assert_no_secret(page: &str, what: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(!page.contains(s), "{what} shows {s:?}");
    }
}

async fn a_tenant_sees_its_own_events_on_every_page_and_nothing_of_another(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let s = scene(&app).await;
    let mut acme = Browser::new(&app);
    acme.login(&s.acme_key).await;

    let refused_id = {
        let (status, page) = acme.get("/ui/events?state=refused").await;
        assert_eq!(status, 200, "{page}");
        assert!(page.contains("acme-refused-1"), "{page}");
        assert!(
            page.contains("event_time"),
            "the refusal names the field: {page}"
        );
        assert!(!page.contains("acme-2"), "only refused events: {page}");
        let start = page.find("/ui/refused/").unwrap() + 12;
        page[start..start + page[start..].find('"').unwrap()].to_owned()
    };
    let mut pages = vec![
        "/ui".to_owned(),
        "/ui?window=1h".into(),
        "/ui?window=30d".into(),
        "/ui/events".into(),
        "/ui/events?q=acme-2".into(),
        "/ui/events?state=delivered&name=Purchase&channel=whatsapp&window=24h&status=200".into(),
        "/ui/errors".into(),
        "/ui/test-events".into(),
        "/ui/sources".into(),
        "/ui/quality".into(),
        format!("/ui/events/{}", s.dead_row),
        format!("/ui/refused/{refused_id}"),
    ];
    pages.extend(
        ["1h", "24h", "7d", "30d"]
            .iter()
            .map(|w| format!("/ui/errors?window={w}")),
    );
    let secrets = [
        s.acme_key.as_str(),
        s.globex_key.as_str(),
        API_KEY,
        ADMIN_KEY,
        TOKEN,
        "sealed:",
        ACME_EMAIL,
        ACME_PHONE,
        "998765432",
        GLOBEX_EVENT,
        "globex",
        s.globex_waba.as_str(),
        s.globex_dataset.as_str(),
    ];
    for path in &pages {
        let (status, page) = acme.get(path).await;
        assert_eq!(status, 200, "{path}: {page}");
        assert!(page.contains("<main>"), "{path} is a dashboard page");
        assert_no_secret(&page, path, &secrets);
    }

    // The log: search by event_id, and the filters.
    let (_, page) = acme.get("/ui/events?q=acme-2").await;
    assert!(
        page.contains("acme-2") && !page.contains("acme-poison"),
        "{page}"
    );
    let (_, page) = acme.get("/ui/events?state=dead").await;
    assert!(
        page.contains("acme-poison") && !page.contains("acme-2<"),
        "{page}"
    );
    let (status, page) = acme.get("/ui/events?status=abc").await;
    assert_eq!(status, 422, "{page}");
    assert!(page.contains("is not an HTTP status code"), "{page}");
    // The refusal keeps what was sent, PII as hashes only.
    let (_, page) = acme.get(&format!("/ui/refused/{refused_id}")).await;
    assert!(page.contains("sha256:"), "{page}");
    assert!(page.contains("missing_field"), "{page}");
    // The event page: attempts with Meta's answer and fbtrace_id, attribution, the payload.
    let (_, page) = acme.get(&format!("/ui/events/{}", s.dead_row)).await;
    assert!(
        page.contains("id=\"replay\""),
        "a dead letter can be replayed: {page}"
    );
    assert!(
        page.contains("ctwa_clid") && page.contains("ARAk-acme-poison"),
        "{page}"
    );
    assert!(page.contains("fbtrace_id"), "{page}");
    // The errors page groups the refusal and the dead letter with explanations.
    let (_, page) = acme.get("/ui/errors").await;
    assert!(
        page.contains("missing_field") && page.contains("invalid_payload"),
        "{page}"
    );
    // The overview draws a chart in SVG.
    let (_, page) = acme.get("/ui").await;
    assert!(page.contains("<svg class=\"chart\""), "{page}");

    // Another tenant's event is not found, on the page and in JSON.
    let (status, _) = acme.get(&format!("/ui/events/{}", s.globex_row)).await;
    assert_eq!(status, 404);

    // The JSON twins: the same counts, the same isolation.
    let (status, o) = app
        .request(
            Method::GET,
            "/v1/stats/overview?window=1h",
            &s.acme_key,
            None,
        )
        .await;
    assert_eq!(status, 200, "{o}");
    let c = &o["current"];
    assert_eq!(
        (
            c["received"].as_i64(),
            c["accepted"].as_i64(),
            c["duplicates"].as_i64(),
            c["rejected"].as_i64(),
            c["delivered"].as_i64(),
            c["dead"].as_i64(),
            c["with_click_id"].as_i64()
        ),
        (
            Some(5),
            Some(3),
            Some(1),
            Some(1),
            Some(2),
            Some(1),
            Some(3)
        ),
        "{o}"
    );
    assert!(o["p95"]["label"].as_str().is_some(), "{o}");
    assert!(!o.to_string().contains("globex"), "{o}");
    for path in [
        "/v1/stats/events",
        "/v1/stats/events?state=refused",
        "/v1/stats/errors?window=30d",
        "/v1/stats/test-events",
        "/v1/stats/sources",
        "/v1/stats/quality",
    ] {
        let (status, body) = app.request(Method::GET, path, &s.acme_key, None).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_no_secret(&body.to_string(), path, &secrets);
    }
    let (_, log) = app
        .request(Method::GET, "/v1/stats/events?limit=2", &s.acme_key, None)
        .await;
    assert_eq!(log["count"], 2, "{log}");
    let next = log["next"].as_str().expect("a next page");
    let (_, rest) = app
        .request(
            Method::GET,
            &format!("/v1/stats/events?before={next}"),
            &s.acme_key,
            None,
        )
        .await;
    // Four events and one refusal in all, each listed once across the pages.
    assert_eq!(rest["count"], 2, "{rest}");
    let (status, body) = app
        .request(
            Method::GET,
            "/v1/stats/overview?tenant=globex",
            &s.acme_key,
            None,
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = app
        .request(
            Method::GET,
            "/v1/stats/overview?tenant=globex&window=1h",
            ADMIN_KEY,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["current"]["delivered"], 1, "{body}");
    let (status, _) = app
        .request(Method::GET, "/v1/stats/overview", "nope", None)
        .await;
    assert_eq!(status, 401);

    // Without a session every page sends the browser to the login page.
    let mut anonymous = Browser::new(&app);
    for path in &pages {
        let request = anonymous.client.get(format!("{}{path}", app.base));
        let (status, _, location) = anonymous.send(request).await;
        assert_eq!(
            (status, location.as_deref()),
            (303, Some("/ui/login")),
            "{path}"
        );
    }
    let (status, page) = anonymous.get("/ui/login").await;
    assert_eq!(status, 200);
    assert!(page.contains("type=\"password\""), "{page}");
}

async fn a_dead_letter_is_replayed_from_its_page_with_the_csrf_token_and_audited(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let s = scene(&app).await;
    let mut acme = Browser::new(&app);
    acme.login(&s.acme_key).await;
    let page = format!("/ui/events/{}", s.dead_row);
    let replay = format!("/ui/events/{}/replay", s.dead_row);

    // Without the token, with a wrong one, or from another site: refused, nothing replayed.
    let (status, _, _) = acme.post(&replay, &[]).await;
    assert_eq!(status, 403);
    let (status, _, _) = acme.post(&replay, &[("csrf", "forged")]).await;
    assert_eq!(status, 403);
    let token = acme.csrf(&page).await;
    let request = acme
        .client
        .post(format!("{}{replay}", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", "https://evil.example")
        .body(form_body(&[("csrf", &token)]));
    let (status, _, _) = acme.send(request).await;
    assert_eq!(status, 403);
    let still = app.store.get_event_row(s.dead_row).await.unwrap().unwrap();
    assert_eq!(still.state, EventState::Dead);

    // Another tenant cannot replay it even with its own valid token.
    let mut globex = Browser::new(&app);
    globex.login(&s.globex_key).await;
    let globex_token = globex.csrf("/ui").await;
    let (status, _, _) = globex.post(&replay, &[("csrf", &globex_token)]).await;
    assert_eq!(status, 404);

    // Meta accepts it now; the replay from the page delivers it.
    app.sim.set_faults(Faults::default());
    let (status, _, location) = acme.post(&replay, &[("csrf", &token)]).await;
    assert_eq!((status, location.as_deref()), (303, Some(page.as_str())));
    app.wait_for_state("acme-poison", EventState::Delivered)
        .await;
    let (_, shown) = acme.get(&page).await;
    assert!(shown.contains(">delivered<"), "{shown}");
    let audit = app.store.list_audit(Some("acme"), 20).await.unwrap();
    let entry = audit
        .iter()
        .find(|e| e.action == "dead_letter.replay")
        .expect("the replay is audited");
    assert_eq!(entry.target.as_deref(), Some("acme-poison"));
    assert_eq!(entry.actor, format!("ui:{}", s.acme_key_id));
}

async fn sign_in_is_rate_limited_and_cross_site_forms_are_refused(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let mut b = Browser::new(&app);
    // A login form posted from another site is refused before the key is looked at.
    let request = b
        .client
        .post(format!("{}/ui/login", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", "https://evil.example")
        .body(form_body(&[("key", API_KEY)]));
    let (status, _, _) = b.send(request).await;
    assert_eq!(status, 403);
    assert!(b.cookie.is_none());
    for _ in 0..session::LOGIN_FAILURES_ALLOWED {
        let (status, page, _) = b.post("/ui/login", &[("key", "crk_guess")]).await;
        assert_eq!(status, 401, "{page}");
        assert!(!page.contains("crk_guess"), "the key tried is not echoed");
    }
    // Over the limit even the right key waits.
    let (status, page, _) = b.post("/ui/login", &[("key", API_KEY)]).await;
    assert_eq!(status, 429, "{page}");
    assert!(page.contains("Too many failed sign-ins"), "{page}");
    assert!(b.cookie.is_none());
    let (status, _, _) = b.post("/ui/link", &[("token", "uil_guess")]).await;
    assert_eq!(status, 429, "links share the limit");
}

async fn a_login_link_signs_in_once_and_a_read_only_session_cannot_replay(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let s = scene(&app).await;
    let token = session::create_link(
        app.store.as_ref(),
        "acme",
        true,
        Duration::from_secs(600),
        "test",
    )
    .await
    .unwrap();
    assert!(token.starts_with(session::LINK_PREFIX));
    let mut b = Browser::new(&app);
    // Opening the link (a mail scanner would) does not use it up.
    for _ in 0..2 {
        let (status, page) = b.get(&format!("/ui/link/{token}")).await;
        assert_eq!(status, 200);
        assert!(page.contains("Open the dashboard"), "{page}");
    }
    assert!(b.cookie.is_none());
    let (status, _, location) = b.post("/ui/link", &[("token", &token)]).await;
    assert_eq!((status, location.as_deref()), (303, Some("/ui")));
    let (status, page) = b.get(&format!("/ui/events/{}", s.dead_row)).await;
    assert_eq!(status, 200);
    assert!(page.contains("acme · read-only"), "{page}");
    assert!(!page.contains("id=\"replay\""), "{page}");
    let csrf = b.csrf("/ui").await;
    let (status, _, _) = b
        .post(
            &format!("/ui/events/{}/replay", s.dead_row),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(status, 403);
    // A second browser with the same link gets nothing.
    let mut other = Browser::new(&app);
    let (status, page, _) = other.post("/ui/link", &[("token", &token)]).await;
    assert_eq!(status, 410, "{page}");
    assert!(other.cookie.is_none());
    // An expired link does not work either, nor a link for a tenant that does not exist.
    let expired = session::create_link(app.store.as_ref(), "acme", false, Duration::ZERO, "test")
        .await
        .unwrap();
    let (status, _, _) = other.post("/ui/link", &[("token", &expired)]).await;
    assert_eq!(status, 410);
    assert!(
        session::create_link(
            app.store.as_ref(),
            "nobody",
            false,
            Duration::from_secs(60),
            "t"
        )
        .await
        .is_err()
    );
    let audit = app.store.list_audit(Some("acme"), 20).await.unwrap();
    assert!(audit.iter().any(|e| e.action == "ui.link"), "{audit:?}");
    // The audit trail never holds the link's token.
    let details: Vec<String> = app
        .store
        .list_audit(None, 100)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| e.detail)
        .collect();
    assert!(details.iter().all(|d| !d.contains(&token)), "{details:?}");
}

async fn the_operator_sees_every_tenant_and_switches_between_them(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    scene(&app).await;
    let mut op = Browser::new(&app);
    op.login(ADMIN_KEY).await;
    let (status, page) = op.get("/ui").await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("operator · all tenants"), "{page}");
    assert!(
        page.contains("Per tenant") && page.contains(">acme<") && page.contains(">globex<"),
        "{page}"
    );
    let (_, page) = op.get("/ui/events").await;
    assert!(
        page.contains(GLOBEX_EVENT) && page.contains("acme-2"),
        "{page}"
    );
    let (_, page) = op.get("/ui/sources").await;
    assert!(page.contains("Webhook capture"), "{page}");
    assert_no_secret(&page, "sources", &[ADMIN_KEY, TOKEN, "sealed:"]);

    let csrf = op.csrf("/ui").await;
    let (status, _, _) = op.post("/ui/switch", &[("tenant", "globex")]).await;
    assert_eq!(status, 403, "switching needs the csrf token");
    let (status, _, _) = op
        .post("/ui/switch", &[("csrf", &csrf), ("tenant", "globex")])
        .await;
    assert_eq!(status, 303);
    let (_, page) = op.get("/ui/events").await;
    assert!(page.contains("operator · viewing globex"), "{page}");
    assert!(
        page.contains(GLOBEX_EVENT) && !page.contains("acme-2"),
        "{page}"
    );
    let (status, _, _) = op
        .post("/ui/switch", &[("csrf", &csrf), ("tenant", "nobody")])
        .await;
    assert_eq!(status, 404);
    // A tenant cannot switch.
    let mut tenant = Browser::new(&app);
    tenant.login(API_KEY).await;
    let csrf = tenant.csrf("/ui").await;
    let (status, _, _) = tenant
        .post("/ui/switch", &[("csrf", &csrf), ("tenant", "globex")])
        .await;
    assert_eq!(status, 403);
    let (_, page) = tenant.get("/ui/events").await;
    assert!(!page.contains(GLOBEX_EVENT), "{page}");
    assert!(
        page.contains(DEFAULT_TENANT) || page.contains("No events match"),
        "{page}"
    );
}

async fn revoking_a_key_ends_its_dashboard_sessions(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.add_wabas("acme", 1, 1).await;
    let (id, key) = app.new_key("acme").await;
    let mut b = Browser::new(&app);
    b.login(&key).await;
    let (status, _) = b.get("/ui").await;
    assert_eq!(status, 200);
    let (status, body) = app
        .request(
            Method::DELETE,
            &format!("/v1/admin/keys/{id}"),
            ADMIN_KEY,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = b.get("/ui").await;
    assert_eq!(status, 303, "the session ended with its key");
    // Signing out clears the cookie.
    let mut c = Browser::new(&app);
    c.login(API_KEY).await;
    let csrf = c.csrf("/ui").await;
    let (status, _, _) = c.post("/ui/logout", &[("csrf", &csrf)]).await;
    assert_eq!(status, 303);
    assert!(c.cookie.is_none());
}

async fn a_paused_asset_is_resumed_from_the_sources_page_with_the_csrf_token_and_audited(
    backend: Backend,
) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let acme = app.add_wabas("acme", 1, 1).await.remove(0);
    let globex = app.add_wabas("globex", 2, 1).await.remove(0);
    let (acme_key_id, acme_key) = app.new_key("acme").await;
    let (_, globex_key) = app.new_key("globex").await;
    let why = "Meta refused the token: (#200) the system user lost access to the dataset";
    for asset in [&acme.0, &globex.0] {
        app.store
            .pause_asset(asset, why, now() * 1000)
            .await
            .unwrap();
    }
    // Held while paused: accepted, never sent.
    app.send_with(&acme_key, &[purchase("acme-held", &acme.0)])
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        app.sim.accepted(None).is_empty(),
        "a paused asset sends nothing"
    );

    let mut b = Browser::new(&app);
    b.login(&acme_key).await;
    let (status, page) = b.get("/ui/sources").await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(why), "the page says why: {page}");
    assert!(
        page.contains(&format!("capi-relay assets resume --asset-id {}", acme.0)),
        "{page}"
    );
    assert!(
        page.contains(&format!("id=\"resume-{}\"", acme.0)),
        "{page}"
    );
    assert!(!page.contains(&globex.0), "{page}");
    let (_, sources) = app
        .request(Method::GET, "/v1/stats/sources", &acme_key, None)
        .await;
    assert_eq!(
        sources["assets"][0]["resume_command"],
        format!("capi-relay assets resume --asset-id {}", acme.0),
        "{sources}"
    );
    let resume = format!("/ui/sources/{}/resume", acme.0);
    let paused = |app: &TestApp, asset: String| {
        let store = app.store.clone();
        async move {
            store.get_asset(&asset).await.unwrap().unwrap().status
                == relay_store::AssetStatus::Paused
        }
    };

    // No token, a forged one, another site: refused, still paused.
    let (status, _, _) = b.post(&resume, &[]).await;
    assert_eq!(status, 403);
    let (status, _, _) = b.post(&resume, &[("csrf", "forged")]).await;
    assert_eq!(status, 403);
    let token = b.csrf("/ui/sources").await;
    let request = b
        .client
        .post(format!("{}{resume}", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", "https://evil.example")
        .body(form_body(&[("csrf", &token)]));
    let (status, _, _) = b.send(request).await;
    assert_eq!(status, 403);
    assert!(paused(&app, acme.0.clone()).await);

    // Another tenant cannot resume it, even with its own valid token; nor can acme resume
    // globex's.
    let mut g = Browser::new(&app);
    g.login(&globex_key).await;
    let globex_token = g.csrf("/ui/sources").await;
    let (status, _, _) = g.post(&resume, &[("csrf", &globex_token)]).await;
    assert_eq!(status, 404);
    let (status, _, _) = b
        .post(
            &format!("/ui/sources/{}/resume", globex.0),
            &[("csrf", &token)],
        )
        .await;
    assert_eq!(status, 404);
    assert!(paused(&app, acme.0.clone()).await);
    assert!(paused(&app, globex.0.clone()).await);

    // A read-only sign-in sees no button and is refused.
    let link = session::create_link(
        app.store.as_ref(),
        "acme",
        true,
        Duration::from_secs(600),
        "t",
    )
    .await
    .unwrap();
    let mut ro = Browser::new(&app);
    let (status, _, _) = ro.post("/ui/link", &[("token", &link)]).await;
    assert_eq!(status, 303);
    let (_, page) = ro.get("/ui/sources").await;
    assert!(!page.contains("id=\"resume-"), "{page}");
    let ro_token = ro.csrf("/ui").await;
    let (status, _, _) = ro.post(&resume, &[("csrf", &ro_token)]).await;
    assert_eq!(status, 403);
    assert!(paused(&app, acme.0.clone()).await);

    // The owner resumes it: active again, the held event goes out, the audit trail has it.
    let (status, _, location) = b.post(&resume, &[("csrf", &token)]).await;
    assert_eq!((status, location.as_deref()), (303, Some("/ui/sources")));
    assert!(!paused(&app, acme.0.clone()).await);
    app.wait_for_state("acme-held", EventState::Delivered).await;
    let (_, page) = b.get("/ui/sources").await;
    assert!(!page.contains(why), "{page}");
    let audit = app.store.list_audit(Some("acme"), 20).await.unwrap();
    let entry = audit
        .iter()
        .find(|e| e.action == "asset.resume")
        .expect("the resume is audited");
    assert_eq!(entry.target.as_deref(), Some(acme.0.as_str()));
    assert_eq!(entry.actor, format!("ui:{acme_key_id}"));
    assert!(
        entry
            .detail
            .as_deref()
            .unwrap_or_default()
            .contains("lost access"),
        "{entry:?}"
    );
    assert!(
        paused(&app, globex.0.clone()).await,
        "only acme's asset resumed"
    );

    // The admin API does the same; a tenant key may not use it.
    let path = format!("/v1/admin/assets/{}/resume", globex.0);
    let (status, _) = app.request(Method::POST, &path, &globex_key, None).await;
    assert_eq!(status, 403);
    let (status, body) = app.request(Method::POST, &path, ADMIN_KEY, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["resumed"].as_bool(), body["asset"]["status"].as_str()),
        (Some(true), Some("active")),
        "{body}"
    );
    let (_, again) = app.request(Method::POST, &path, ADMIN_KEY, None).await;
    assert_eq!(again["resumed"], false, "{again}");
    let (status, _) = app
        .request(Method::POST, "/v1/admin/assets/999/resume", ADMIN_KEY, None)
        .await;
    assert_eq!(status, 404);
}

const APP_SECRET: &str = "dashboard-app-secret";
const CLICK_A: &str = "ARAk-click-of-customer-a";
const CLICK_B: &str = "ARAk-click-of-customer-b";

/// A WhatsApp message from `phone` (digits) to `WABA` an hour ago, from an ad with `click_id`
/// or (with `None`) typed by the customer; waits until the relay processed it.
async fn capture_message(app: &TestApp, phone: &str, message_id: &str, click_id: Option<&str>) {
    let text = std::fs::read_to_string(format!(
        "{}/tests/fixtures/webhooks/whatsapp_cloud_referral.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
    .replace("__TS__", &(now() - 3600).to_string());
    let mut body: Value = serde_json::from_str(&text).unwrap();
    let value = &mut body["entry"][0]["changes"][0]["value"];
    value["contacts"][0]["wa_id"] = json!(phone);
    let message = &mut value["messages"][0];
    message["from"] = json!(phone);
    message["id"] = json!(message_id);
    match click_id {
        Some(c) => message["referral"]["ctwa_clid"] = json!(c),
        None => {
            message.as_object_mut().unwrap().remove("referral");
        }
    }
    let body = body.to_string();
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
    let started = std::time::Instant::now();
    while !app
        .store
        .pending_webhooks(i64::MAX, 1)
        .await
        .unwrap()
        .is_empty()
    {
        assert!(started.elapsed() < WAIT, "the webhook is still pending");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn the_quality_page_counts_ad_started_conversations_converted_and_crm_event_coverage(
    backend: Backend,
) {
    let Some(app) = spawn_app_with(backend, |c| {
        c.meta_app_secret = Some(secrecy::SecretString::from(APP_SECRET.to_owned()));
    })
    .await
    else {
        return;
    };
    app.add_wabas("globex", 2, 1).await;
    let (_, globex_key) = app.new_key("globex").await;
    // Two conversations started from ads (A and B), one the customer started (C).
    capture_message(&app, "5511987654321", "wamid.a1", Some(CLICK_A)).await;
    capture_message(&app, "5511911112222", "wamid.b1", Some(CLICK_B)).await;
    capture_message(&app, "5511933334444", "wamid.c1", None).await;
    let (status, body) = app
        .request(
            Method::POST,
            "/v1/admin/crm/rules",
            ADMIN_KEY,
            Some(
                &json!({"tenant": DEFAULT_TENANT, "source": "generic", "pipeline_id": "any",
                         "stage_id": "won", "event": "Purchase"}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let change = |deal: &str, stage: &str, phone: &str| {
        json!({"deal_id": deal, "pipeline_id": "sales", "stage_id": stage, "amount": "10.00",
               "currency": "BRL", "occurred_at": now() - 60, "asset_id": WABA,
               "contact": {"phone": phone}})
    };
    // A wins (produced, delivered); an unknown customer wins (mapped, no attribution); a stage
    // no rule maps (not a conversion); C wins, but has no click id (mapped, no attribution).
    let (status, body) = app
        .post_json(
            "/v1/crm/stage-changes",
            &json!({"data": [
                change("D-A", "won", "+55 11 98765-4321"),
                change("D-X", "won", "+55 11 90000-0000"),
                change("D-B", "demo", "+55 11 91111-2222"),
                change("D-C", "won", "+55 11 93333-4444"),
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let outcomes: Vec<&str> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        ["produced", "no_attribution", "no_rule", "no_attribution"],
        "{body}"
    );
    let event_id = body["results"][0]["event_id"].as_str().unwrap().to_owned();
    app.wait_for_state(&event_id, EventState::Delivered).await;

    let (status, q) = app
        .request(Method::GET, "/v1/stats/quality?window=24h", API_KEY, None)
        .await;
    assert_eq!(status, 200, "{q}");
    assert_eq!(
        q["ad_started"],
        json!([{"channel": "whatsapp", "started": 2, "converted": 1, "share_pct": 50.0}]),
        "{q}"
    );
    let c = &q["event_coverage"];
    assert_eq!(
        (
            c["computable"].as_bool(),
            c["mapped"].as_i64(),
            c["delivered"].as_i64(),
            c["share_pct"].as_f64(),
            c["meets_target"].as_bool(),
            c["target_pct"].as_f64()
        ),
        (
            Some(true),
            Some(3),
            Some(1),
            Some(100.0 / 3.0),
            Some(false),
            Some(75.0)
        ),
        "{q}"
    );
    assert_eq!(c["by_event_name"][0]["event_name"], "Purchase", "{q}");
    assert!(c["how"].as_str().unwrap().contains("stage changes"), "{q}");
    let (_, o) = app
        .request(Method::GET, "/v1/stats/quality?window=24h", ADMIN_KEY, None)
        .await;
    assert_eq!(
        o["ad_started"][0]["started"], 2,
        "the operator sees every tenant: {o}"
    );

    let mut b = Browser::new(&app);
    b.login(API_KEY).await;
    let (status, page) = b.get("/ui/quality?window=24h").await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("Ad-started conversations later converted"),
        "{page}"
    );
    assert!(page.contains("50.0 %"), "{page}");
    assert!(
        page.contains("33.3 %") && page.contains("below 75 %"),
        "{page}"
    );
    assert!(
        page.contains("1 of 3 mapped stage changes delivered"),
        "{page}"
    );
    assert!(!page.contains("not computable"), "{page}");

    // Another tenant sees none of it, and is told why coverage is not computable.
    let (_, g) = app
        .request(
            Method::GET,
            "/v1/stats/quality?window=24h",
            &globex_key,
            None,
        )
        .await;
    assert_eq!(g["ad_started"], json!([]), "{g}");
    assert_eq!(g["event_coverage"]["computable"], false, "{g}");
    assert!(
        g["event_coverage"]["not_computable_because"]
            .as_str()
            .is_some(),
        "{g}"
    );
    let mut gb = Browser::new(&app);
    gb.login(&globex_key).await;
    let (_, page) = gb.get("/ui/quality?window=24h").await;
    assert!(page.contains("not computable"), "{page}");
    assert!(!page.contains("50.0 %"), "{page}");
}
