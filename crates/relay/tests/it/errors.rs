//! One error vocabulary: the same mistake gets the same status and code on every JSON route.

use reqwest::Method;
use serde_json::Value;

use crate::app::{ADMIN_KEY, API_KEY, Backend, PAGE, WABA, spawn_app_with};

both_backends!(the_same_mistake_gets_the_same_error_on_every_json_route);

/// Every route that reads a JSON body, with the key it needs. Add new ones here.
fn json_routes() -> Vec<(Method, String, &'static str)> {
    vec![
        (Method::POST, "/v1/events".into(), API_KEY),
        (Method::POST, "/v1/dead-letters/replay".into(), API_KEY),
        (
            Method::PUT,
            format!("/v1/contacts/whatsapp/{WABA}/5511987654321/customer-id"),
            API_KEY,
        ),
        (Method::POST, "/v1/admin/tenants".into(), ADMIN_KEY),
        (Method::PATCH, "/v1/admin/tenants/default".into(), ADMIN_KEY),
        (
            Method::POST,
            "/v1/admin/tenants/default/assets".into(),
            ADMIN_KEY,
        ),
        (
            Method::POST,
            "/v1/admin/tenants/default/keys".into(),
            ADMIN_KEY,
        ),
        (
            Method::PUT,
            format!("/v1/admin/assets/{PAGE}/token"),
            ADMIN_KEY,
        ),
    ]
}

async fn the_same_mistake_gets_the_same_error_on_every_json_route(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| c.max_body_bytes = 16 * 1024).await else {
        return;
    };
    let huge = format!("{{\"data\": \"{}\"}}", "x".repeat(32 * 1024));
    let mistakes: [(&str, String, u16, &str); 4] = [
        ("not JSON", "{\"data\": [".into(), 400, "invalid_json"),
        ("the wrong shape", "[1, 2]".into(), 422, "invalid_body"),
        // Serde reads a struct from an array of its fields (Schemathesis found it).
        (
            "an array of nulls",
            "[null, null]".into(),
            422,
            "invalid_body",
        ),
        ("too large", huge, 413, "body_too_large"),
    ];
    for (method, path, key) in json_routes() {
        for (what, body, status, code) in &mistakes {
            let response = app
                .client
                .request(method.clone(), format!("{}{path}", app.base))
                .bearer_auth(key)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            let got = response.status().as_u16();
            let answer: Value = response.json().await.unwrap_or(Value::Null);
            assert_eq!(
                (got, answer["error"]["code"].as_str()),
                (*status, Some(*code)),
                "{method} {path} with a body {what}: {answer}"
            );
            assert!(
                answer["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "{answer}"
            );
        }
    }
    // A test_event_code of the wrong type was silently ignored (Schemathesis found it).
    let (status, answer) = app
        .post_json(
            "/v1/events",
            &serde_json::json!({"data": [{}], "test_event_code": {}}),
        )
        .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (422, Some("invalid_body")),
        "{answer}"
    );
    for (path, key) in [
        ("/v1/dead-letters?limit=many", API_KEY),
        ("/v1/events/e1?dataset_id=1&dataset_id=2", API_KEY),
        ("/v1/webhooks?limit=1.5", ADMIN_KEY),
        ("/v1/admin/audit?limit=x", ADMIN_KEY),
    ] {
        let (status, answer) = app.request(Method::GET, path, key, None).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (400, Some("invalid_query")),
            "{path}: {answer}"
        );
    }
}
