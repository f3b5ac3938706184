//! `capi-relay bench relay`: the relay measured from the outside, as clients and Meta see it.
//!
//! The relay runs as a child `serve` process (so its peak RSS is its own) on a fresh SQLite
//! file or PostgreSQL schema; Meta is an in-process simulator; this process is the client.

use std::{
    process::{ExitCode, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Args;
use relay_store::{Asset, AssetStatus, DEFAULT_TENANT, Store};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::Semaphore,
};

use super::bench::percentile;
use crate::{
    clock::now_ms,
    simulator::{Simulator, SimulatorConfig},
    vault::MasterKey,
};

const WABA: &str = "102290129340398";
const DATASET: &str = "1000000000000001";
pub(super) const API_KEY: &str = "bench-api-key";

#[derive(Debug, Args)]
pub struct RelayBenchArgs {
    /// Events for the batch-ingest and delivery phases.
    #[arg(long, default_value_t = 100_000)]
    pub events: usize,
    /// Requests for the single-event phase.
    #[arg(long, default_value_t = 20_000)]
    pub single_requests: usize,
    /// Requests in flight at once (batch phase).
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Requests in flight at once (single-event phase).
    #[arg(long, default_value_t = 64)]
    pub single_concurrency: usize,
    /// Offered rate of the latency phase, events per second.
    #[arg(long, default_value_t = 2_000)]
    pub rate: u64,
    /// Length of the latency phase, in seconds.
    #[arg(long, default_value_t = 10)]
    pub latency_secs: u64,
    /// Also run on PostgreSQL at this URL (a fresh schema is created and dropped).
    #[arg(long, env = "CAPI_RELAY_TEST_POSTGRES_URL")]
    pub postgres_url: Option<String>,
    /// Skip SQLite (run PostgreSQL only).
    #[arg(long)]
    pub skip_sqlite: bool,
    /// Datasets (one WhatsApp asset each); more than 1 runs the partner scenario instead.
    #[arg(long, default_value_t = 1)]
    pub datasets: usize,
    /// Latency of every Graph events request (the simulator's), in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub graph_latency_ms: u64,
    #[command(flatten)]
    pub partner: super::bench_partner::PartnerArgs,
}

pub async fn run(args: RelayBenchArgs) -> anyhow::Result<ExitCode> {
    let mut ok = true;
    if !args.skip_sqlite {
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite://{}", dir.path().join("bench.db").display());
        ok &= run_backend("SQLite", &url, &args).await?;
    }
    if let Some(base) = &args.postgres_url {
        let schema = format!("bench_{:08x}", rand::random::<u32>());
        let pool = sqlx::PgPool::connect(base)
            .await
            .context("cannot reach PostgreSQL")?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&pool)
            .await?;
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
        let result = run_backend("PostgreSQL", &url, &args).await;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(&pool)
            .await?;
        ok &= result?;
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn run_backend(name: &str, url: &str, args: &RelayBenchArgs) -> anyhow::Result<bool> {
    if args.datasets > 1 {
        super::bench_partner::run_backend(name, url, args).await
    } else {
        bench_backend(name, url, args).await
    }
}

fn event(tag: &str, i: usize, now: i64) -> Value {
    json!({
        "event_name": "Purchase",
        "event_time": now,
        "event_id": format!("{tag}-{i}"),
        "messaging_channel": "whatsapp",
        "user_data": {
            "whatsapp_business_account_id": WABA,
            "ctwa_clid": format!("ARAkLkA8rmlFeiCktEJQ-QTwRiyYHAFDLMNDBH0CD3qpjd0HR4irJ6LEkR7Jw{i:08}"),
            "em": format!("customer{i}@example.com"),
            "ph": format!("+55 11 9{:04} {:04}", (i / 10_000) % 10_000, i % 10_000),
        },
        "custom_data": {"currency": "BRL", "value": "120.50", "order_id": format!("order-{i}")}
    })
}

/// `workers: 0` starts an ingest-only relay, so ingestion is measured on its own.
pub(super) async fn start_relay(
    db_url: &str,
    graph_url: &str,
    master_key: &SecretString,
    workers: usize,
) -> anyhow::Result<(Child, String)> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("CAPI_RELAY_DELIVERY__WORKERS", workers.to_string())
        .env("CAPI_RELAY_API_KEY", API_KEY)
        // Webhooks are verified (the partner scenario floods unsigned ones).
        .env("CAPI_RELAY_META_APP_SECRET", "bench-app-secret")
        .env("CAPI_RELAY_MASTER_KEY", master_key.expose_secret())
        .env("CAPI_RELAY_DATABASE_URL", db_url)
        .env("CAPI_RELAY_GRAPH_URL", graph_url)
        // The relay's own log filter, e.g. `sqlx::query=debug` for every statement's time.
        .env(
            "RUST_LOG",
            std::env::var("CAPI_RELAY_BENCH_RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();
    while let Some(line) = lines.next_line().await? {
        if let Some(rest) = line.strip_prefix("capi-relay listening on ") {
            let base = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
            // Keep reading, so the relay never writes to a closed pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Ok((child, base));
        }
    }
    anyhow::bail!("the relay exited before listening")
}

/// Peak resident set size of a process, in MiB (Linux `VmHWM`).
pub(super) fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// CPU time its live threads have used so far (Linux `/proc/PID/task/*/schedstat`, whose first
/// field is nanoseconds on a CPU).
pub(super) fn cpu_time(pid: u32) -> Option<Duration> {
    let mut nanos = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        nanos += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(nanos))
}

/// Posts `bodies` with at most `concurrency` in flight; returns (failures, per-request latency).
/// Posts each body (with the number of events in it) and reads the answer as a client
/// would: a request counts as failed unless it is a 202 that accepted every event.
/// Returns the failed requests, the events accepted, and the sorted request latencies.
async fn post_all(
    client: &reqwest::Client,
    url: &str,
    bodies: Vec<(Vec<u8>, usize)>,
    concurrency: usize,
) -> anyhow::Result<(usize, usize, Vec<Duration>)> {
    #[derive(serde::Deserialize)]
    struct Report {
        accepted: usize,
    }
    let limit = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = Vec::with_capacity(bodies.len());
    for (body, events) in bodies {
        let permit = limit.clone().acquire_owned().await?;
        let (client, url) = (client.clone(), url.to_owned());
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let response = client
                .post(url)
                .bearer_auth(API_KEY)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            let accepted = match response {
                Ok(r) if r.status().as_u16() == 202 => {
                    r.json::<Report>().await.map_or(0, |report| report.accepted)
                }
                _ => 0,
            };
            drop(permit);
            (accepted == events, accepted, started.elapsed())
        }));
    }
    let (mut failures, mut accepted) = (0, 0);
    let mut latencies = Vec::with_capacity(tasks.len());
    for task in tasks {
        let (ok, events, latency) = task.await?;
        failures += usize::from(!ok);
        accepted += events;
        latencies.push(latency);
    }
    latencies.sort();
    Ok((failures, accepted, latencies))
}

pub(super) async fn wait_drained(store: &dyn Store, timeout: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    while store.queue_stats().await?.depth > 0 {
        anyhow::ensure!(
            started.elapsed() < timeout,
            "the queue did not drain in {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn bench_backend(name: &str, db_url: &str, args: &RelayBenchArgs) -> anyhow::Result<bool> {
    let simulator = Simulator::new(SimulatorConfig {
        datasets: vec![DATASET.into()],
        max_stored_events: 200_000,
        faults: crate::simulator::Faults {
            latency_ms: args.graph_latency_ms,
            ..Default::default()
        },
        ..SimulatorConfig::default()
    });
    let sim_addr = simulator.clone().spawn("127.0.0.1:0".parse()?).await?;
    let store = relay_store::connect(db_url).await?;
    store.migrate().await?;
    let now = now_ms();
    let vault = MasterKey::generate();
    store
        .upsert_asset(&Asset {
            tenant: DEFAULT_TENANT.into(),
            channel: "whatsapp".into(),
            asset_id: WABA.into(),
            dataset_id: DATASET.into(),
            sealed_token: vault.seal(&SecretString::from("bench-token"), WABA),
            test_event_code: None,
            status: AssetStatus::Active,
            status_reason: None,
            created_at_ms: now,
            updated_at_ms: now,
        })
        .await?;
    let graph_url = format!("http://{sim_addr}");
    let master_key = vault.encode();
    let (mut ingest_only, base) = start_relay(db_url, &graph_url, &master_key, 0).await?;
    let url = format!("{base}/v1/events");
    let client = reqwest::Client::new();
    let secs = chrono::Utc::now().timestamp();
    println!(
        "== {name}: {} events, batch concurrency {}, single concurrency {}",
        args.events, args.concurrency, args.single_concurrency
    );

    // 1. Batch ingest, on an ingest-only relay so delivery does not mix in.
    let bodies: Vec<(Vec<u8>, usize)> = (0..args.events)
        .collect::<Vec<_>>()
        .chunks(1_000)
        .map(|c| {
            let events: Vec<Value> = c.iter().map(|i| event("b", *i, secs)).collect();
            serde_json::to_vec(&json!({ "data": events })).map(|body| (body, c.len()))
        })
        .collect::<Result<_, _>>()?;
    let relay_pid = ingest_only.id().unwrap_or_default();
    let cpu_before = cpu_time(relay_pid);
    let started = Instant::now();
    let (failed, ingested, _) = post_all(&client, &url, bodies, args.concurrency).await?;
    let ingest = started.elapsed();
    let ingest_rate = ingested as f64 / ingest.as_secs_f64();
    // CPU per event varies far less than events/s on a shared machine.
    let cpu_per_event = match (cpu_before, cpu_time(relay_pid)) {
        (Some(before), Some(after)) => format!(
            ", relay CPU {:.1} µs/event",
            (after - before).as_secs_f64() * 1e6 / ingested.max(1) as f64
        ),
        _ => String::new(),
    };
    println!(
        "  batch ingest:        {ingest_rate:>9.0} events/s  (1,000-event requests, {failed} failed{cpu_per_event})"
    );

    // 2. Single-event requests, still ingest-only.
    let bodies: Vec<(Vec<u8>, usize)> = (0..args.single_requests)
        .map(|i| serde_json::to_vec(&json!({"data": [event("s", i, secs)]})).map(|b| (b, 1)))
        .collect::<Result<_, _>>()?;
    let started = Instant::now();
    let (failed, accepted, latencies) =
        post_all(&client, &url, bodies, args.single_concurrency).await?;
    let single_rate = accepted as f64 / started.elapsed().as_secs_f64();
    println!(
        "  single-event:        {single_rate:>9.0} requests/s  (p50 {} ms, p99 {} ms, {failed} failed)",
        percentile(&latencies, 0.5).as_millis(),
        percentile(&latencies, 0.99).as_millis()
    );
    let ingest_rss = peak_rss_mib(ingest_only.id().unwrap_or_default());
    ingest_only.start_kill()?;
    ingest_only.wait().await?;

    // 3. Delivery of the backlog by a relay with workers.
    let started = Instant::now();
    let (mut relay, base) = start_relay(db_url, &graph_url, &master_key, 2).await?;
    let pid = relay.id().unwrap_or_default();
    let url = format!("{base}/v1/events");
    wait_drained(store.as_ref(), Duration::from_secs(600)).await?;
    let delivered = simulator_count(&simulator);
    let deliver_rate = delivered as f64 / started.elapsed().as_secs_f64();
    println!(
        "  delivered:           {deliver_rate:>9.0} events/s  ({delivered} acknowledged by the simulator, start-up included)"
    );

    simulator.reset();
    // 4. Ingest-to-Meta-ack latency at a fixed offered rate: 20 events every 1/(rate/20) s.
    let per_request = 20usize;
    let interval = Duration::from_secs_f64(per_request as f64 / args.rate as f64);
    let requests = (args.rate * args.latency_secs) as usize / per_request;
    let sent_at: Arc<std::sync::Mutex<Vec<(String, i64)>>> = Arc::default();
    let mut ticker = tokio::time::interval(interval);
    let mut tasks = Vec::with_capacity(requests);
    for r in 0..requests {
        ticker.tick().await;
        let events: Vec<Value> = (0..per_request)
            .map(|k| event("l", r * per_request + k, secs))
            .collect();
        let body = serde_json::to_vec(&json!({ "data": events }))?;
        let (client, url, sent_at) = (client.clone(), url.clone(), sent_at.clone());
        tasks.push(tokio::spawn(async move {
            let at = now_ms();
            let ok = client
                .post(url)
                .bearer_auth(API_KEY)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .is_ok_and(|r| r.status().as_u16() == 202);
            let mut sent = sent_at.lock().unwrap_or_else(|p| p.into_inner());
            for k in 0..per_request {
                sent.push((format!("l-{}", r * per_request + k), at));
            }
            ok
        }));
    }
    for task in tasks {
        task.await?;
    }
    wait_drained(store.as_ref(), Duration::from_secs(120)).await?;
    let lat = super::bench_partner::ack_latencies(&simulator, &sent_at);
    println!(
        "  ingest→Meta ack:     p50 {} ms, p99 {} ms at {} events/s offered ({} of {} events measured)",
        percentile(&lat, 0.5).as_millis(),
        percentile(&lat, 0.99).as_millis(),
        args.rate,
        lat.len(),
        requests * per_request
    );
    for (role, rss) in [
        ("ingest-only", ingest_rss),
        ("delivering", peak_rss_mib(pid)),
    ] {
        match rss {
            Some(mib) => println!(
                "  peak RSS ({role}):{:>width$.1} MiB",
                mib,
                width = 22 - role.len()
            ),
            None => println!("  peak RSS ({role}): unavailable (no /proc)"),
        }
    }
    relay.start_kill()?;
    relay.wait().await?;
    Ok(true)
}

fn simulator_count(simulator: &Simulator) -> usize {
    simulator.stats_events_accepted() as usize
}
