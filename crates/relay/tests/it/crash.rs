//! Crash safety and scale-out with real `capi-relay serve` processes: SIGKILL mid-delivery loses
//! nothing; two relays on one database deliver every event exactly once between them.

use std::{collections::HashSet, process::Stdio, time::Duration};

use capi_relay::simulator::Faults;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

use crate::{
    app::{API_KEY, Backend, TestEnv, prepare_env, whatsapp_event},
    helpers::binary,
};

/// Starts `capi-relay serve` on a random port; returns the child and the relay's base URL.
async fn start_relay(env: &TestEnv, claim_limit: u32) -> (Child, String) {
    start_relay_logging(env, claim_limit, "warn", Stdio::inherit()).await
}

async fn start_relay_logging(
    env: &TestEnv,
    claim_limit: u32,
    log: &str,
    stderr: Stdio,
) -> (Child, String) {
    start_relay_with(env, claim_limit, log, stderr, &[]).await
}

/// `serve` with the test's settings, then `extra` environment variables (which win).
async fn start_relay_with(
    env: &TestEnv,
    claim_limit: u32,
    log: &str,
    stderr: Stdio,
    extra: &[(&str, &str)],
) -> (Child, String) {
    let mut command = Command::new(binary());
    command
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("CAPI_RELAY_API_KEY", API_KEY)
        .env("CAPI_RELAY_MASTER_KEY", env.master_key_text())
        .env("CAPI_RELAY_DATABASE_URL", &env.db.url)
        .env("CAPI_RELAY_GRAPH_URL", &env.sim_url)
        .env(
            "CAPI_RELAY_DELIVERY__RETRY_SCHEDULE",
            "20ms,40ms,80ms,160ms,300ms,500ms,500ms,500ms",
        )
        .env("CAPI_RELAY_DELIVERY__LEASE", "3s")
        .env("CAPI_RELAY_GRAPH_TIMEOUT", "1s")
        .env("CAPI_RELAY_DELIVERY__IDLE_POLL_MAX", "50ms")
        .env("CAPI_RELAY_DELIVERY__BATCH_MAX_EVENTS", "100")
        .env("CAPI_RELAY_DELIVERY__CLAIM_LIMIT", claim_limit.to_string())
        .env("RUST_LOG", log)
        .env("CAPI_RELAY_LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true);
    for (key, value) in extra {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("the binary starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let base = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.strip_prefix("capi-relay listening on ") {
                return rest.split_whitespace().next().unwrap().to_owned();
            }
        }
        panic!("serve exited before listening");
    })
    .await
    .expect("serve starts within 30 s");
    // Keep reading, so the relay never writes to a closed pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, base)
}

async fn post(base: &str, events: &[Value]) -> Value {
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/events"))
        .bearer_auth(API_KEY)
        .json(&json!({ "data": events }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    response.json().await.unwrap()
}

fn delivered(env: &TestEnv) -> Vec<String> {
    env.sim
        .accepted(None)
        .iter()
        .map(|e| e.event["event_id"].as_str().unwrap().to_owned())
        .collect()
}

async fn wait_drained(env: &TestEnv, timeout: Duration) {
    let started = std::time::Instant::now();
    while env.store.queue_stats().await.unwrap().depth > 0 {
        assert!(started.elapsed() < timeout, "the queue did not drain");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

both_backends!(
    a_relay_killed_mid_delivery_loses_nothing_after_restart,
    two_relays_on_one_database_deliver_each_event_exactly_once,
    no_log_line_holds_a_token_or_raw_pii,
);

async fn no_log_line_holds_a_token_or_raw_pii(backend: Backend) {
    let Some(env) = prepare_env(backend).await else {
        return;
    };
    // Every failure path logs something: an expired token pauses the asset, then a new one resumes it.
    env.set_token(crate::app::WABA, "EAAB-expired-secret").await;
    let log = tempfile::NamedTempFile::new().unwrap();
    let (mut relay, base) =
        start_relay_logging(&env, 100, "debug", Stdio::from(log.reopen().unwrap())).await;
    let mut event = whatsapp_event(1);
    event["user_data"]["em"] = json!("maria.secret@example.com");
    event["user_data"]["ph"] = json!("+55 11 98765-4321");
    post(&base, &[event, whatsapp_event(2)]).await;
    let started = std::time::Instant::now();
    while env
        .store
        .get_asset(crate::app::WABA)
        .await
        .unwrap()
        .unwrap()
        .status
        != relay_store::AssetStatus::Paused
    {
        assert!(started.elapsed() < Duration::from_secs(30), "never paused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.set_token(crate::app::WABA, crate::app::TOKEN).await;
    wait_drained(&env, Duration::from_secs(30)).await;
    relay.start_kill().unwrap();
    relay.wait().await.unwrap();

    let text = std::fs::read_to_string(log.path()).unwrap();
    assert!(
        text.lines().count() > 10,
        "debug logging produced lines to check"
    );
    let master_key = env.master_key_text();
    for secret in [
        API_KEY,
        master_key.as_str(),
        "EAAB-expired-secret",
        crate::app::TOKEN,
        "maria.secret@example.com",
        "98765-4321",
        "5511987654321",
    ] {
        assert!(!text.contains(secret), "a log line contains {secret:?}");
    }
}

async fn a_relay_killed_mid_delivery_loses_nothing_after_restart(backend: Backend) {
    let Some(env) = prepare_env(backend).await else {
        return;
    };
    env.sim.set_faults(Faults {
        latency_ms: 150,
        ..Faults::default()
    });
    // The default lease and Graph timeout: what a production relay recovers with.
    let defaults = [
        ("CAPI_RELAY_DELIVERY__LEASE", "10s"),
        ("CAPI_RELAY_GRAPH_TIMEOUT", "5s"),
    ];
    let claim_limit = 200;
    let (mut relay, base) =
        start_relay_with(&env, claim_limit, "warn", Stdio::inherit(), &defaults).await;
    let total = 2_000;
    for chunk in (0..total).collect::<Vec<_>>().chunks(1_000) {
        let events: Vec<Value> = chunk.iter().map(|i| whatsapp_event(*i)).collect();
        assert_eq!(post(&base, &events).await["accepted"], 1_000);
    }
    let started = std::time::Instant::now();
    while delivered(&env).len() < 300 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "delivery did not start"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    relay.start_kill().unwrap(); // SIGKILL: no graceful shutdown.
    relay.wait().await.unwrap();
    let before_restart = delivered(&env).len();
    assert!(before_restart < total, "killed mid-delivery");

    let restarted = std::time::Instant::now();
    let (_relay, _base) =
        start_relay_with(&env, claim_limit, "warn", Stdio::inherit(), &defaults).await;
    wait_drained(&env, Duration::from_secs(90)).await;
    let recovery = restarted.elapsed();
    let ids = delivered(&env);
    let unique: HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), total, "nothing accepted was lost");
    let duplicates = ids.len() - unique.len();
    eprintln!(
        "killed after {before_restart} deliveries; {duplicates} events sent twice; all delivered {recovery:?} after the restart"
    );
    // The events in flight at the kill wait out the 10 s lease, not minutes.
    assert!(
        recovery < Duration::from_secs(15),
        "the in-flight events took {recovery:?} to go out after the restart"
    );
    // Only requests in flight at the kill can be sent twice: at most one batch (100 events)
    // per request the dataset may have in flight (4).
    assert!(duplicates <= 4 * 100, "{duplicates} duplicates");
    assert_eq!(env.store.queue_stats().await.unwrap().dead, 0);
}

async fn two_relays_on_one_database_deliver_each_event_exactly_once(backend: Backend) {
    let Some(env) = prepare_env(backend).await else {
        return;
    };
    env.sim.set_faults(Faults {
        latency_ms: 20,
        ..Faults::default()
    });
    let (_a, base_a) = start_relay(&env, 300).await;
    let (_b, base_b) = start_relay(&env, 300).await;
    let total = 4_000;
    for (n, chunk) in (0..total).collect::<Vec<_>>().chunks(500).enumerate() {
        let events: Vec<Value> = chunk.iter().map(|i| whatsapp_event(*i)).collect();
        let base = if n % 2 == 0 { &base_a } else { &base_b };
        assert_eq!(post(base, &events).await["accepted"], 500);
    }
    wait_drained(&env, Duration::from_secs(90)).await;
    let ids = delivered(&env);
    let unique: HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), total);
    assert_eq!(ids.len(), total, "no event was sent by both relays");
}
