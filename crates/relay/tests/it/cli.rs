//! The binary as a user runs it: `validate` and `send` against the simulator.

use std::{io::Write, process::Output};

use capi_relay::simulator::SimulatorConfig;
use serde_json::{Value, json};

use crate::helpers::{DATASET, binary, now, spawn_simulator};

fn events_file(lines: &[Value]) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    for line in lines {
        writeln!(file, "{line}").unwrap();
    }
    file
}

/// A conversion as a CRM writes it: plain PII, RFC 3339 or Unix time, a web event name.
fn crm_event(i: usize) -> Value {
    json!({
        "event_name": "Purchase",
        "event_time": now() - 120,
        "event_id": format!("order-{i}"),
        "action_source": "business_messaging",
        "messaging_channel": "whatsapp",
        "user_data": {
            "whatsapp_business_account_id": "102290129340398",
            "ctwa_clid": format!("ARAkLkA8rmlFeiCktEJQ-{i}"),
            "ph": "+55 11 98765-4321",
            "em": " Maria@Example.com "
        },
        "custom_data": {"currency": "brl", "value": 120.50, "order_id": format!("A-{i}")}
    })
}

async fn run(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(binary());
    command.args(args).env_remove("CAPI_RELAY_META_APP_SECRET");
    for (k, v) in envs {
        command.env(k, v);
    }
    command.output().await.expect("the binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn validate_reports_errors_and_warnings_with_line_numbers() {
    let mut lead = crm_event(2);
    lead["event_name"] = json!("Lead");
    lead["user_data"]["em"] = json!("nobody-at-example");
    let mut missing_click = crm_event(3);
    missing_click["user_data"]
        .as_object_mut()
        .unwrap()
        .remove("ctwa_clid");
    let file = events_file(&[crm_event(1), lead, missing_click]);

    let output = run(&["validate", file.path().to_str().unwrap()], &[]).await;
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains("line 1: ok Purchase whatsapp event_id=order-1"),
        "{text}"
    );
    assert!(text.contains("line 2: ok LeadSubmitted whatsapp"), "{text}");
    assert!(
        text.contains("warning [event_name_mapped] event_name"),
        "{text}"
    );
    assert!(
        text.contains("warning [invalid_pii] user_data.em"),
        "{text}"
    );
    assert!(text.contains("line 3: rejected"), "{text}");
    assert!(
        text.contains("error [missing_identity] user_data.ctwa_clid"),
        "{text}"
    );
    assert!(
        text.contains("3 events: 2 valid, 1 rejected, 2 warnings"),
        "{text}"
    );
}

#[tokio::test]
async fn validate_exits_zero_when_every_event_is_valid() {
    let file = events_file(&[crm_event(1), crm_event(2)]);
    let output = run(&["validate", file.path().to_str().unwrap()], &[]).await;
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
}

#[tokio::test]
async fn send_delivers_hashed_events_in_batches_of_1000() {
    let (sim, base) = spawn_simulator(SimulatorConfig::default()).await;
    let events: Vec<Value> = (0..2500).map(crm_event).collect();
    let file = events_file(&events);
    let output = run(
        &[
            "send",
            "--graph-url",
            &base,
            "--dataset-id",
            DATASET,
            "--access-token-env",
            "MY_META_TOKEN",
            "--partner-agent",
            "acme",
            file.path().to_str().unwrap(),
        ],
        &[("MY_META_TOKEN", "EAAB-very-secret")],
    )
    .await;
    let text = stdout(&output);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        text.contains(
            "batch 1 (1000 events, lines 1-1000) attempt 1: delivered, events_received=1000"
        ),
        "{text}"
    );
    assert!(
        text.contains("batch 2 (1000 events, lines 1001-2000)"),
        "{text}"
    );
    assert!(
        text.contains(
            "batch 3 (500 events, lines 2001-2500) attempt 1: delivered, events_received=500"
        ),
        "{text}"
    );
    assert!(!text.contains("EAAB-very-secret"));

    let accepted = sim.accepted(Some(DATASET));
    assert_eq!(accepted.len(), 2500);
    let first = &accepted[0].event;
    assert_eq!(accepted[0].partner_agent.as_deref(), Some("acme"));
    assert_eq!(first["event_id"], "order-0");
    assert_eq!(first["user_data"]["ctwa_clid"], "ARAkLkA8rmlFeiCktEJQ-0");
    // SHA-256 of "5511987654321" and of "maria@example.com".
    assert_eq!(
        first["user_data"]["ph"],
        relay_core::pii::sha256_hex("5511987654321")
    );
    assert_eq!(
        first["user_data"]["em"],
        relay_core::pii::sha256_hex("maria@example.com")
    );
    assert_eq!(
        first["custom_data"],
        json!({"currency": "BRL", "value": 120.5, "order_id": "A-0"})
    );
}

#[tokio::test]
async fn send_sends_nothing_when_an_event_is_invalid_unless_told_to_skip_it() {
    let (sim, base) = spawn_simulator(SimulatorConfig::default()).await;
    let mut stale = crm_event(2);
    stale["event_time"] = json!(now() - 8 * 86_400);
    let file = events_file(&[crm_event(1), stale]);
    let path = file.path().to_str().unwrap();
    let args = [
        "send",
        "--graph-url",
        &base,
        "--dataset-id",
        DATASET,
        "--access-token-env",
        "T",
        path,
    ];
    let output = run(&args, &[("T", "tok")]).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(stdout(&output).contains("error [event_too_old] event_time"));
    assert!(stdout(&output).contains("nothing sent"));
    assert!(sim.accepted(None).is_empty());

    let mut skip = args.to_vec();
    skip.insert(1, "--skip-invalid");
    let output = run(&skip, &[("T", "tok")]).await;
    assert_eq!(output.status.code(), Some(1), "an event was not delivered");
    assert_eq!(sim.accepted(None).len(), 1);
}

#[tokio::test]
async fn send_reports_meta_errors_and_a_missing_token_variable() {
    let (_sim, base) = spawn_simulator(SimulatorConfig {
        access_tokens: vec!["right".into()],
        ..SimulatorConfig::default()
    })
    .await;
    let file = events_file(&[crm_event(1)]);
    let path = file.path().to_str().unwrap();
    let output = run(
        &[
            "send",
            "--graph-url",
            &base,
            "--dataset-id",
            DATASET,
            "--access-token-env",
            "T",
            path,
        ],
        &[("T", "wrong-token-value")],
    )
    .await;
    let text = stdout(&output);
    assert_eq!(output.status.code(), Some(1));
    assert!(text.contains("failed, permanent (auth)"), "{text}");
    assert!(text.contains("fbtrace_id="), "{text}");
    assert!(!text.contains("wrong-token-value"));

    let output = run(
        &[
            "send",
            "--graph-url",
            &base,
            "--dataset-id",
            DATASET,
            "--access-token-env",
            "NOT_SET_ANYWHERE",
            path,
        ],
        &[],
    )
    .await;
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("NOT_SET_ANYWHERE is not set"));
}

/// The README's first command, as a new user runs it in an empty directory: the sandbox starts,
/// makes its master key file, prints working keys, and an event reaches the simulator.
#[tokio::test]
async fn the_sandbox_starts_in_an_empty_directory_and_delivers_to_the_simulator() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, banner) = crate::helpers::start_sandbox(dir.path()).await;

    let key_file = dir.path().join("capi-relay.key");
    assert!(key_file.exists(), "the master key file is created");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let client = reqwest::Client::new();
    let event = json!({"data": [{
        "event_name": "Purchase", "event_time": now(), "event_id": "sandbox-1",
        "messaging_channel": "whatsapp",
        "user_data": {"whatsapp_business_account_id": "102290129340398", "ctwa_clid": "ARAkLkA8rmlFeiCktEJQ"},
        "custom_data": {"currency": "USD", "value": 42}
    }]});
    let response = client
        .post(format!("{}/v1/events", banner["relay API:"]))
        .bearer_auth(&banner["API key:"])
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let admin = client
        .get(format!("{}/v1/admin/tenants/default", banner["relay API:"]))
        .bearer_auth(&banner["admin key:"])
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 200);
    let shown: Value = admin.json().await.unwrap();
    assert_eq!(shown["assets"].as_array().unwrap().len(), 3, "{shown}");

    let started = std::time::Instant::now();
    loop {
        let received: Value = client
            .get(format!("{}/__sim/events", banner["simulator:"]))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if received.to_string().contains("sandbox-1") {
            break;
        }
        assert!(
            started.elapsed().as_secs() < 30,
            "never delivered: {received}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The database holds the demo tokens sealed only.
    drop(client);
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let db = std::fs::read(dir.path().join("capi-relay-sandbox.db")).unwrap_or_default();
    let wal = std::fs::read(dir.path().join("capi-relay-sandbox.db-wal")).unwrap_or_default();
    let needle = b"sandbox-token";
    for bytes in [db, wal] {
        assert!(!bytes.windows(needle.len()).any(|w| w == needle));
    }
}

/// Issue 12 D.11: the sandbox used to drop a configured `meta_app_secret` without a word.
#[tokio::test]
async fn the_sandbox_keeps_a_configured_app_secret_and_says_so_in_its_banner() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, banner, text) = crate::helpers::start_sandbox_with(
        dir.path(),
        &[("CAPI_RELAY_META_APP_SECRET", "my-own-app-secret")],
    )
    .await;
    let text = text.join("\n");
    assert_eq!(banner["webhook secret:"], "sandbox-app-secret", "{text}");
    assert!(
        text.contains("also accepted: your configured meta_app_secret"),
        "{text}"
    );
    assert!(!text.contains("my-own-app-secret"), "{text}");
    assert!(
        text.contains(" database:    sqlite://capi-relay-sandbox.db"),
        "{text}"
    );

    let client = reqwest::Client::new();
    let body = br#"{"object":"page","entry":[]}"#;
    for (secret, status) in [
        ("my-own-app-secret", 200),
        ("sandbox-app-secret", 200),
        ("someone-else", 401),
    ] {
        let response = client
            .post(format!("{}/webhooks/meta", banner["relay API:"]))
            .header(
                "x-hub-signature-256",
                capi_relay::capture::sign(secret, body),
            )
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{secret}");
    }
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}
