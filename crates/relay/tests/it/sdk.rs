//! Meta's own Business SDKs (Python `facebook-business`, Node `facebook-nodejs-business-sdk`)
//! pointed at a running relay by their base-URL setting: single events and batches on all three
//! channels, a re-sent batch, a refused request. The scripts live in `tests/sdk/{python,node}/`;
//! `.ci/run` installs their dependencies and sets `CAPI_RELAY_REQUIRE_SDK_TESTS`, which turns a
//! missing install into a failure instead of a visible skip.

use std::{path::PathBuf, time::Duration};

use relay_core::pii::sha256_hex;
use serde_json::Value;

use crate::{
    app::{API_KEY, Backend, PAGE, PAGE_DATASET, TestApp, WABA, WABA_DATASET, spawn_app},
    helpers::now,
};

const IG: &str = "17841400000000001";
const IG_DATASET: &str = "3234567890";
const WAIT: Duration = Duration::from_secs(30);

both_backends!(
    the_python_sdk_sends_through_the_relay,
    the_node_sdk_sends_through_the_relay
);

async fn the_python_sdk_sends_through_the_relay(backend: Backend) {
    let dir = sdk_dir("python");
    let python = dir.join(".venv/bin/python");
    if !available(
        &python,
        "python venv",
        "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt",
    ) {
        return;
    }
    run_sdk(backend, Sdk::Python, python, dir.join("send_events.py")).await;
}

async fn the_node_sdk_sends_through_the_relay(backend: Backend) {
    let dir = sdk_dir("node");
    if !available(
        &dir.join("node_modules/facebook-nodejs-business-sdk"),
        "node_modules",
        "npm ci",
    ) {
        return;
    }
    run_sdk(
        backend,
        Sdk::Node,
        PathBuf::from("node"),
        dir.join("send_events.js"),
    )
    .await;
}

#[derive(Clone, Copy, PartialEq)]
enum Sdk {
    Python,
    Node,
}

fn sdk_dir(lang: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sdk")
        .join(lang)
}

/// Whether `path` exists; else a visible skip locally, a failure when CI requires SDK tests.
fn available(path: &std::path::Path, what: &str, install: &str) -> bool {
    if path.exists() {
        return true;
    }
    let message = format!(
        "SKIPPED: {} is missing ({what}); install it with `{install}` in its folder",
        path.display()
    );
    if std::env::var_os("CAPI_RELAY_REQUIRE_SDK_TESTS").is_some() {
        panic!("{message} (CAPI_RELAY_REQUIRE_SDK_TESTS is set: SDK tests may not be skipped)");
    }
    eprintln!("{message}");
    false
}

async fn run_sdk(backend: Backend, sdk: Sdk, program: PathBuf, script: PathBuf) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.add_asset("instagram", IG, IG_DATASET).await;
    let now = now();
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(&program)
            .arg(&script)
            .env("RELAY_BASE", &app.base)
            .env("RELAY_KEY", API_KEY)
            .env("NOW", now.to_string())
            .env("PAGE", PAGE)
            .env("IG", IG)
            .env("WABA_DATASET", WABA_DATASET)
            .env("PAGE_DATASET", PAGE_DATASET)
            .env("IG_DATASET", IG_DATASET)
            .output(),
    )
    .await
    .expect("the SDK script finishes within 2 minutes")
    .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{} failed: {stdout}\n{}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let steps: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let step = |name: &str| {
        steps
            .iter()
            .find(|s| s["step"] == name)
            .unwrap_or_else(|| panic!("no step {name}: {stdout}"))
    };
    for (name, received) in [
        ("wa-single", 1),
        ("wa-batch", 2),
        ("wa-batch-again", 2),
        ("ms-single", 1),
        ("ms-batch", 2),
        ("ig-single", 1),
        ("ig-batch", 2),
    ] {
        let s = step(name);
        assert_eq!(s["events_received"], received, "{s}");
        assert!(
            s["fbtrace_id"].as_str().is_some_and(|t| !t.is_empty()),
            "{s}"
        );
    }
    let again = step("wa-batch-again")["messages"].to_string();
    assert!(again.contains("not sent again"), "{again}");
    // A refused request is the SDK's normal exception, with Meta's fields.
    let refused = step("refused");
    assert_eq!(refused["error"], true, "{refused}");
    assert_eq!(
        (&refused["code"], &refused["subcode"], &refused["transient"]),
        (
            &Value::from(100),
            &Value::from(2804003),
            &Value::from(false)
        ),
        "{refused}"
    );
    assert_eq!(
        refused["blame"],
        serde_json::json!([["event_time"]]),
        "{refused}"
    );

    app.wait_for_empty_queue(WAIT).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let prefix = match sdk {
        Sdk::Python => "py",
        Sdk::Node => "js",
    };
    let mut delivered = app.delivered_ids();
    delivered.sort();
    let mut expected: Vec<String> = ["wa", "ms", "ig"]
        .iter()
        .flat_map(|c| (1..=3).map(move |i| format!("{prefix}-{c}-{i}")))
        .collect();
    expected.sort();
    assert_eq!(
        delivered, expected,
        "each event delivered once; nothing refused was"
    );
    for (id, dataset) in [
        ("wa-1", WABA_DATASET),
        ("ms-1", PAGE_DATASET),
        ("ig-1", IG_DATASET),
    ] {
        let id = format!("{prefix}-{id}");
        let sent = expected_payload(sdk, &id, now);
        assert_eq!(payload(&app, &id, dataset).await, sent, "{id} as committed");
        let at_meta: Vec<_> = app
            .sim
            .accepted(Some(dataset))
            .into_iter()
            .filter(|e| e.event["event_id"] == id.as_str())
            .collect();
        assert_eq!(at_meta.len(), 1, "{id}");
        assert_eq!(
            at_meta[0].event,
            serde_json::from_str::<Value>(&sent).unwrap(),
            "{id} as Meta received it"
        );
    }
    let batch = app.sim.accepted(Some(WABA_DATASET));
    let test_codes: Vec<_> = batch
        .iter()
        .map(|e| e.test_event_code.as_deref().unwrap_or("-"))
        .collect();
    assert_eq!(test_codes.iter().filter(|c| **c == "TEST1").count(), 2);
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

/// What the relay sends for the scripts' first event of each channel: the SDK's digests
/// unchanged, the WhatsApp asset id filled in, a plain value hashed by the relay.
fn expected_payload(sdk: Sdk, id: &str, now: i64) -> String {
    let em = sha256_hex("buyer.name@example.com");
    let valery = sha256_hex("valéry");
    let crm = sha256_hex("crm-7");
    if id.ends_with("wa-1") {
        let clid = if sdk == Sdk::Python {
            "ARApy1"
        } else {
            "ARAjs1"
        };
        let ph = match sdk {
            // The Python SDK sends the phone too (digits with country code, hashed).
            Sdk::Python => format!(r#","ph":"{}""#, sha256_hex("5511987654321")),
            Sdk::Node => String::new(),
        };
        format!(
            r#"{{"event_name":"Purchase","event_time":{},"event_id":"{id}","action_source":"business_messaging","messaging_channel":"whatsapp","user_data":{{"whatsapp_business_account_id":"{WABA}","ctwa_clid":"{clid}","em":"{em}"{ph}}},"custom_data":{{"currency":"BRL","value":99.9,"order_id":"o-1"}}}}"#,
            now - 60
        )
    } else if id.ends_with("ms-1") {
        let psid = if sdk == Sdk::Python {
            7_000_000_000_000_001u64
        } else {
            7_100_000_000_000_001
        };
        format!(
            r#"{{"event_name":"LeadSubmitted","event_time":{},"event_id":"{id}","action_source":"business_messaging","messaging_channel":"messenger","user_data":{{"page_id":"{PAGE}","page_scoped_user_id":"{psid}","fn":"{valery}"}}}}"#,
            now - 30
        )
    } else {
        let igsid = if sdk == Sdk::Python {
            8_000_000_000_000_001u64
        } else {
            8_100_000_000_000_001
        };
        format!(
            r#"{{"event_name":"QualifiedLead","event_time":{},"event_id":"{id}","action_source":"business_messaging","messaging_channel":"instagram","user_data":{{"instagram_business_account_id":"{IG}","ig_sid":"{igsid}","external_id":"{crm}"}}}}"#,
            now - 20
        )
    }
}
