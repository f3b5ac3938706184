//! `/openapi.json`: served, OpenAPI 3.1, valid for a third-party validator, and complete: every
//! route registered in `src/http/` (any file, so new modules count) must be in the document.

use std::{collections::BTreeSet, path::PathBuf};

use serde_json::Value;

use crate::app::{Backend, spawn_app};

both_backends!(the_document_is_served_valid_and_lists_every_route);

async fn the_document_is_served_valid_and_lists_every_route(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let response = reqwest::get(format!("{}/openapi.json", app.base))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let doc: Value = response.json().await.unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );

    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |method| (method.clone(), path.clone()))
        })
        .collect();
    let routed = router_routes();
    assert!(routed.len() >= 20, "the route scan found {routed:?}");
    let missing: Vec<_> = routed.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "routes missing from /openapi.json (add #[utoipa::path] and list them in http/openapi.rs): {missing:?}"
    );
    let stale: Vec<_> = documented.difference(&routed).collect();
    assert!(stale.is_empty(), "documented but not routed: {stale:?}");
    // The README's example rides along.
    let example = &doc["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/json"]
        ["example"];
    assert_eq!(example["data"][0]["event_name"], "Purchase", "{example}");

    validate_with_openapi_spec_validator(&doc);
}

/// `(method, path)` of every `.route("…", get(…).post(…))` under `src/http/`, except `/ui`.
fn router_routes() -> BTreeSet<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/http");
    let mut routes = BTreeSet::new();
    let mut files = vec![dir];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut rest = text.as_str();
        while let Some(at) = rest.find(".route(") {
            rest = &rest[at + ".route(".len()..];
            // The call's text, up to its closing parenthesis.
            let mut depth = 1;
            let end = rest
                .char_indices()
                .find(|(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map_or(rest.len(), |(i, _)| i);
            let call = &rest[..end];
            let Some(path) = call.split('"').nth(1) else {
                continue;
            };
            if path.starts_with("/ui") {
                continue;
            }
            for method in ["get", "post", "put", "patch", "delete"] {
                let called = call.match_indices(&format!("{method}(")).any(|(i, _)| {
                    i == 0
                        || !call.as_bytes()[i - 1].is_ascii_alphanumeric()
                            && call.as_bytes()[i - 1] != b'_'
                });
                if called {
                    routes.insert((method.to_owned(), path.to_owned()));
                }
            }
        }
    }
    routes
}

/// openapi-spec-validator (PyPI) from the test venv; a visible skip without it locally, a
/// failure in CI.
fn validate_with_openapi_spec_validator(doc: &Value) {
    let validator = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sdk/python/.venv/bin/openapi-spec-validator");
    if !validator.exists() {
        let message = format!(
            "SKIPPED: {} is missing; install tests/sdk/python/requirements.txt into that venv",
            validator.display()
        );
        if std::env::var_os("CAPI_RELAY_REQUIRE_SDK_TESTS").is_some() {
            panic!("{message} (CAPI_RELAY_REQUIRE_SDK_TESTS is set)");
        }
        eprintln!("{message}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
    let output = std::process::Command::new(&validator)
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "openapi-spec-validator refused the document:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
