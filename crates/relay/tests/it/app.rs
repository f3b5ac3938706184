//! `spawn_app`: the real relay on a random port, on a fresh SQLite file or PostgreSQL schema,
//! delivering to an in-process Graph simulator.

use std::{sync::Arc, time::Duration};

use capi_relay::{
    config::Config,
    simulator::{Simulator, SimulatorConfig},
    vault::MasterKey,
};
use relay_store::{Asset, AssetStatus, DEFAULT_TENANT, Store};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tokio::{sync::oneshot, task::JoinHandle};

use crate::helpers::{now, spawn_simulator};

pub const API_KEY: &str = "test-api-key";
pub const WABA: &str = "102290129340398";
pub const PAGE: &str = "1234567890123";
pub const WABA_DATASET: &str = "1234567890";
pub const PAGE_DATASET: &str = "2234567890";
pub const TOKEN: &str = "good-token";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database for one test: a temp SQLite file, or a fresh PostgreSQL schema.
pub struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

/// The PostgreSQL URL for tests; CI sets it and must not silently skip.
pub fn postgres_url() -> Option<String> {
    match std::env::var("CAPI_RELAY_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!(
                "CAPI_RELAY_TEST_POSTGRES_URL must be set in CI (PostgreSQL tests may not be skipped)"
            )
        }
        _ => {
            eprintln!("CAPI_RELAY_TEST_POSTGRES_URL is not set: skipping a PostgreSQL test");
            None
        }
    }
}

impl TestDb {
    pub async fn new(backend: Backend) -> Option<TestDb> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}", dir.path().join("relay.db").display());
                Some(TestDb {
                    url,
                    _dir: Some(dir),
                })
            }
            Backend::Postgres => {
                let base = postgres_url()?;
                let schema = format!("it_{:016x}", rand::random::<u64>());
                let pool = sqlx::PgPool::connect(&base)
                    .await
                    .expect("PostgreSQL is reachable");
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                    .execute(&pool)
                    .await
                    .unwrap();
                pool.close().await;
                let sep = if base.contains('?') { '&' } else { '?' };
                let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
                Some(TestDb { url, _dir: None })
            }
        }
    }
}

pub const ADMIN_KEY: &str = "test-admin-key";

/// Settings that make retries and polling fast enough for tests.
pub fn test_config(db_url: &str, graph_url: &str, master_key: &MasterKey) -> Config {
    let mut config = Config {
        database_url: db_url.into(),
        graph_url: graph_url.into(),
        graph_timeout: Duration::from_secs(2),
        api_key: Some(SecretString::from(API_KEY.to_owned())),
        admin_key: Some(SecretString::from(ADMIN_KEY.to_owned())),
        master_key: Some(master_key.encode()),
        ..Config::default()
    };
    let d = &mut config.delivery;
    d.retry_schedule = [20, 40, 80, 160, 320, 500, 500, 500, 500, 500, 500, 500]
        .map(Duration::from_millis)
        .to_vec();
    d.idle_poll_min = Duration::from_millis(5);
    d.idle_poll_max = Duration::from_millis(50);
    d.throttle_pause = Duration::from_millis(100);
    d.lease = Duration::from_secs(5);
    d.linger = Duration::from_millis(10);
    config
}

pub struct TestApp {
    pub base: String,
    pub sim: Simulator,
    pub store: Arc<dyn Store>,
    pub db: TestDb,
    pub vault: Arc<MasterKey>,
    pub sim_base: String,
    pub client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Starts a simulator (tokens limited to `TOKEN`) and the relay with a WhatsApp and a Messenger
/// asset registered. `None` when the backend is not available locally.
pub async fn spawn_app(backend: Backend) -> Option<TestApp> {
    spawn_app_with(backend, |_| {}).await
}

/// A database with the two assets and a simulator, without a relay running.
pub struct TestEnv {
    pub db: TestDb,
    pub sim: Simulator,
    pub sim_url: String,
    pub store: Arc<dyn Store>,
    /// The master key the assets' tokens are sealed with.
    pub vault: Arc<MasterKey>,
}

impl TestEnv {
    /// Stores `token` for `asset_id` as the relay would: sealed.
    pub async fn set_token(&self, asset_id: &str, token: &str) {
        set_sealed_token(&self.store, &self.vault, asset_id, token).await;
    }

    /// The master key as `CAPI_RELAY_MASTER_KEY` holds it.
    pub fn master_key_text(&self) -> String {
        self.vault.encode().expose_secret().to_owned()
    }
}

impl TestApp {
    /// Registers one more asset of the default tenant (with `TOKEN`), on a dataset the
    /// simulator knows.
    pub async fn add_asset(&self, channel: &str, asset_id: &str, dataset_id: &str) {
        self.sim.add_dataset(dataset_id);
        self.store
            .upsert_asset(&asset_with_token(
                &self.vault,
                DEFAULT_TENANT,
                channel,
                asset_id,
                dataset_id,
            ))
            .await
            .unwrap();
    }

    /// Registers `count` more WhatsApp assets, each with a dataset of its own (known to the
    /// simulator), under `tenant`; returns their (asset id, dataset id).
    pub async fn add_wabas(&self, tenant: &str, first: u64, count: u64) -> Vec<(String, String)> {
        add_wabas(&self.store, &self.sim, &self.vault, tenant, first, count).await
    }
}

async fn add_wabas(
    store: &Arc<dyn Store>,
    sim: &Simulator,
    vault: &MasterKey,
    tenant: &str,
    first: u64,
    count: u64,
) -> Vec<(String, String)> {
    {
        if tenant != DEFAULT_TENANT && store.get_tenant(tenant).await.unwrap().is_none() {
            store
                .create_tenant(&relay_store::Tenant {
                    name: tenant.into(),
                    test_event_code: None,
                    created_at_ms: 0,
                })
                .await
                .unwrap();
        }
        let mut added = Vec::new();
        for n in first..first + count {
            let (asset, dataset) = (
                format!("{}", 500_000_000_000_000 + n),
                format!("{}", 900_000_000_000_000 + n),
            );
            sim.add_dataset(&dataset);
            store
                .upsert_asset(&asset_with_token(
                    vault, tenant, "whatsapp", &asset, &dataset,
                ))
                .await
                .unwrap();
            added.push((asset, dataset));
        }
        added
    }
}

async fn set_sealed_token(store: &Arc<dyn Store>, vault: &MasterKey, asset_id: &str, token: &str) {
    let sealed = vault.seal(&SecretString::from(token.to_owned()), asset_id);
    store.set_asset_token(asset_id, &sealed, 0).await.unwrap();
}

/// An active asset with `TOKEN` sealed for it.
fn asset_with_token(
    vault: &MasterKey,
    tenant: &str,
    channel: &str,
    asset_id: &str,
    dataset_id: &str,
) -> Asset {
    Asset {
        tenant: tenant.into(),
        channel: channel.into(),
        asset_id: asset_id.into(),
        dataset_id: dataset_id.into(),
        sealed_token: vault.seal(&SecretString::from(TOKEN), asset_id),
        test_event_code: None,
        status: AssetStatus::Active,
        status_reason: None,
        created_at_ms: 0,
        updated_at_ms: 0,
    }
}

pub async fn prepare_env(backend: Backend) -> Option<TestEnv> {
    let db = TestDb::new(backend).await?;
    let (sim, sim_url) = spawn_simulator(SimulatorConfig {
        access_tokens: vec![TOKEN.into()],
        datasets: vec![WABA_DATASET.into(), PAGE_DATASET.into()],
        ..SimulatorConfig::default()
    })
    .await;
    let store = relay_store::connect(&db.url).await.unwrap();
    store.migrate().await.unwrap();
    let vault = Arc::new(MasterKey::generate());
    for (channel, asset, dataset) in [
        ("whatsapp", WABA, WABA_DATASET),
        ("messenger", PAGE, PAGE_DATASET),
    ] {
        store
            .upsert_asset(&asset_with_token(
                &vault,
                DEFAULT_TENANT,
                channel,
                asset,
                dataset,
            ))
            .await
            .unwrap();
    }
    Some(TestEnv {
        db,
        sim,
        sim_url,
        store,
        vault,
    })
}

pub async fn spawn_app_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Option<TestApp> {
    let env = prepare_env(backend).await?;
    let mut config = test_config(&env.db.url, &env.sim_url, &env.vault);
    tweak(&mut config);
    Some(spawn_app_on(env, config).await)
}

/// Starts the relay with `config` on a prepared environment (assets added beforehand).
pub async fn spawn_app_on(env: TestEnv, config: Config) -> TestApp {
    let TestEnv {
        db,
        sim,
        sim_url,
        store,
        vault,
    } = env;
    let mut app = TestApp {
        base: String::new(),
        sim,
        store,
        db,
        vault,
        sim_base: sim_url,
        client: reqwest::Client::new(),
        shutdown: None,
        handle: None,
    };
    app.start(config).await;
    app
}

impl TestApp {
    /// Stores `token` for `asset_id` as the relay would: sealed.
    pub async fn set_token(&self, asset_id: &str, token: &str) {
        set_sealed_token(&self.store, &self.vault, asset_id, token).await;
    }

    /// The master key as `CAPI_RELAY_MASTER_KEY` holds it.
    pub fn master_key_text(&self) -> String {
        self.vault.encode().expose_secret().to_owned()
    }

    /// This app's configuration (for a restart or a second instance).
    pub fn config(&self) -> Config {
        test_config(&self.db.url, &self.sim_url(), &self.vault)
    }

    pub fn sim_url(&self) -> String {
        self.sim_base.clone()
    }

    /// A request with `key` as the bearer key.
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        key: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(key);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Starts a relay process-equivalent on this app's database (another instance, or a restart).
    pub async fn start(&mut self, config: Config) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(capi_relay::app::run(config, listener, async move {
            let _ = rx.await;
        }));
        self.shutdown = Some(tx);
        self.handle = Some(handle);
    }

    /// Graceful stop; returns when in-flight sends are finished.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.unwrap().unwrap();
        }
    }

    pub async fn post_events(&self, events: &[Value]) -> (u16, Value) {
        self.post_json("/v1/events", &json!({ "data": events }))
            .await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(API_KEY)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(API_KEY)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Event ids the simulator accepted, in arrival order.
    pub fn delivered_ids(&self) -> Vec<String> {
        self.sim
            .accepted(None)
            .iter()
            .map(|e| e.event["event_id"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Waits until `check` holds, or fails after `timeout`.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        check: impl Fn(&TestApp) -> bool,
    ) {
        let started = std::time::Instant::now();
        while !check(self) {
            assert!(started.elapsed() < timeout, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the store has no event left to deliver.
    pub async fn wait_for_empty_queue(&self, timeout: Duration) {
        let started = std::time::Instant::now();
        loop {
            let stats = self.store.queue_stats().await.unwrap();
            if stats.depth == 0 {
                return;
            }
            assert!(
                started.elapsed() < timeout,
                "queue still holds {} events",
                stats.depth
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A WhatsApp purchase as a CRM submits it (plain PII, no hashing).
pub fn whatsapp_event(i: usize) -> Value {
    json!({
        "event_name": "Purchase",
        "event_time": now() - 60,
        "event_id": format!("wa-{i}"),
        "messaging_channel": "whatsapp",
        "user_data": {
            "whatsapp_business_account_id": WABA,
            "ctwa_clid": format!("ARAkLkA8rmlFeiCktEJQ-{i}"),
            "em": format!("buyer{i}@example.com")
        },
        "custom_data": {"currency": "BRL", "value": "99.90", "order_id": format!("o-{i}")}
    })
}

pub fn messenger_event(i: usize) -> Value {
    json!({
        "event_name": "LeadSubmitted",
        "event_time": now() - 30,
        "event_id": format!("ms-{i}"),
        "messaging_channel": "messenger",
        "user_data": {"page_id": PAGE, "page_scoped_user_id": format!("{}", 7_000_000_000_000_000u64 + i as u64)}
    })
}
