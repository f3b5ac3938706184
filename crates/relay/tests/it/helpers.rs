//! Shared test set-up: simulators on random ports, sample events, the binary.

use std::net::SocketAddr;

use capi_relay::simulator::{Simulator, SimulatorConfig};
use serde_json::{Value, json};

pub const DATASET: &str = "1234567890";

/// A simulator on a random loopback port, with `DATASET` registered.
pub async fn spawn_simulator(mut config: SimulatorConfig) -> (Simulator, String) {
    config.datasets.push(DATASET.into());
    let simulator = Simulator::new(config);
    let addr: SocketAddr = simulator
        .clone()
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator binds a random port");
    (simulator, format!("http://{addr}"))
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A valid WhatsApp purchase in Meta's wire shape (already hashed where needed).
pub fn wire_event(i: usize) -> Value {
    json!({
        "event_name": "Purchase",
        "event_time": now() - 60,
        "event_id": format!("evt-{i}"),
        "action_source": "business_messaging",
        "messaging_channel": "whatsapp",
        "user_data": {
            "whatsapp_business_account_id": "102290129340398",
            "ctwa_clid": format!("ARAkLkA8rml-{i}")
        },
        "custom_data": {"currency": "USD", "value": 10.5}
    })
}

/// Posts a raw events request to a simulator.
pub async fn post_events(
    base: &str,
    dataset: &str,
    token: Option<&str>,
    body: &Value,
) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(format!("{base}/v26.0/{dataset}/events"))
        .json(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("simulator answers")
}

/// Path of the built `capi-relay` binary.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_capi-relay")
}

/// `capi-relay serve --sandbox` in `dir`, as a new user starts it (no key or database set).
/// Returns the child and the banner's values by label (`"relay API:"`, `"API key:"`, …).
pub async fn start_sandbox(
    dir: &std::path::Path,
) -> (
    tokio::process::Child,
    std::collections::HashMap<&'static str, String>,
) {
    let (child, banner, _) = start_sandbox_with(dir, &[]).await;
    (child, banner)
}

/// `start_sandbox` with these environment variables set; also returns the banner's lines.
pub async fn start_sandbox_with(
    dir: &std::path::Path,
    envs: &[(&str, &str)],
) -> (
    tokio::process::Child,
    std::collections::HashMap<&'static str, String>,
    Vec<String>,
) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    const LABELS: [&str; 5] = [
        "relay API:",
        "simulator:",
        "API key:",
        "admin key:",
        "webhook secret:",
    ];
    let mut child = tokio::process::Command::new(binary())
        .args(["serve", "--sandbox", "--listen", "127.0.0.1:0"])
        .current_dir(dir)
        .env_remove("CAPI_RELAY_API_KEY")
        .env_remove("CAPI_RELAY_ADMIN_KEY")
        .env_remove("CAPI_RELAY_MASTER_KEY")
        .env_remove("CAPI_RELAY_DATABASE_URL")
        .env_remove("CAPI_RELAY_META_APP_SECRET")
        .envs(envs.iter().copied())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = std::collections::HashMap::new();
    let mut text = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            for label in LABELS {
                if let Some(rest) = line.trim().strip_prefix(label) {
                    banner.insert(label, rest.split_whitespace().next().unwrap().to_owned());
                }
            }
            text.push(line.clone());
            if line.trim_start().starts_with("try:") {
                return;
            }
        }
        panic!("the sandbox exited before printing its banner");
    })
    .await
    .expect("the sandbox starts within 30 s");
    // Keep reading, so the sandbox never writes to a closed pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    assert_eq!(banner.len(), LABELS.len(), "{banner:?}");
    (child, banner, text)
}
