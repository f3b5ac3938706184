//! `capi-relay bench relay --datasets N --graph-latency-ms L`: the partner scenario. Many
//! datasets, a Graph that answers in hundreds of milliseconds, and the tenants that get in each
//! other's way: a deep backlog, a throttled dataset, a client flooding batches.
//!
//! Phases, each on the same relay (a `serve` child with its default delivery settings):
//! 1. burst: `--burst-events` in 1,000-event requests over every dataset; how long after the
//!    last 202 the last event reached Meta, and how many went twice;
//! 2. steady: `--rate` events/s for `--steady-secs` over every dataset; ingest→ack p50/p99, the
//!    queue at the end, the most requests in flight;
//! 3. noisy neighbours: the same load while one dataset is throttled (code 80004) and another
//!    tenant has `--backlog` events queued; the other tenants' p50/p99;
//! 4. flood: one tenant posts 1,000-event batches on `--flood-connections` connections for
//!    `--flood-secs`; another tenant's single-event POST latency;
//!    also the relay's peak RSS during the flood;
//! 7. big bodies: the same with 8 MB bodies (1,000 events padded to 8 KB each);
//! 8. webhooks: unsigned 4 MiB webhooks on `--flood-connections` connections (read whole before
//!    their signature can be checked); the relay's peak RSS and another tenant's latency;
//! 6. scrape: `--scrapers` clients read `/metrics` in a loop for `--flood-secs` while another
//!    tenant's `--backlog` events wait on a throttled dataset; another tenant's single-event POST
//!    latency, and scrapes per second;
//! 5. one dataset, Meta answering at once: `--single-dataset-events` alone on an ingest-only
//!    relay, then through a delivering relay from the first POST to the last ack, in pairs.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use clap::Args;
use relay_store::{Asset, AssetStatus, DEFAULT_TENANT, Store, Tenant};
use secrecy::SecretString;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use super::{
    bench::percentile,
    bench_relay::{API_KEY, RelayBenchArgs, cpu_time, peak_rss_mib, start_relay, wait_drained},
};
use crate::{
    clock::now_ms,
    simulator::{Faults, Simulator, SimulatorConfig},
    tenancy::keys,
    vault::MasterKey,
};

/// The partner scenario's phases, run in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    OneDataset,
    Burst,
    Steady,
    Noisy,
    Flood,
    BigBodies,
    Webhooks,
    Scrape,
}

#[derive(Debug, Args)]
pub struct PartnerArgs {
    /// Partner scenario: the phases to run (comma-separated; all by default).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub phases: Vec<Phase>,
    /// Partner scenario: events of the burst phase.
    #[arg(long, default_value_t = 20_000)]
    pub burst_events: usize,
    /// Partner scenario: length of the steady and noisy phases, in seconds.
    #[arg(long, default_value_t = 60)]
    pub steady_secs: u64,
    /// Partner scenario: events queued by the deep-backlog tenant.
    #[arg(long, default_value_t = 200_000)]
    pub backlog: usize,
    /// Partner scenario: connections of the flooding tenant.
    #[arg(long, default_value_t = 64)]
    pub flood_connections: usize,
    /// Partner scenario: length of the flood, in seconds.
    #[arg(long, default_value_t = 10)]
    pub flood_secs: u64,
    /// Partner scenario: concurrent `/metrics` scrapers of the scrape phase.
    #[arg(long, default_value_t = 32)]
    pub scrapers: usize,
    /// Partner scenario: events of the one-dataset phase.
    #[arg(long, default_value_t = 50_000)]
    pub single_dataset_events: usize,
    /// Partner scenario: runs of the one-dataset phase, alone and delivering (the medians are
    /// compared: one run moves by ±0.2× on a 2-core machine).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub single_dataset_runs: u32,
}

impl PartnerArgs {
    fn runs(&self, phase: Phase) -> bool {
        self.phases.is_empty() || self.phases.contains(&phase)
    }
}

// Shaped like generated keys (43 characters after the prefix): others are refused unasked.
const BULK_KEY: &str = "crk_bench-bulk-key00000000000000000000000000000";
const OTHER_KEY: &str = "crk_bench-other-key0000000000000000000000000000";

fn waba(n: usize) -> String {
    format!("{}", 500_000_000_000_000u64 + n as u64)
}

fn dataset(n: usize) -> String {
    format!("{}", 900_000_000_000_000u64 + n as u64)
}

fn event(asset: &str, id: &str, now: i64) -> Value {
    json!({
        "event_name": "Purchase",
        "event_time": now,
        "event_id": id,
        "messaging_channel": "whatsapp",
        "user_data": {
            "whatsapp_business_account_id": asset,
            "ctwa_clid": format!("ARAkLkA8rmlFeiCktEJQ-{id}"),
            "ph": "+55 11 98765 4321",
        },
        "custom_data": {"currency": "BRL", "value": "120.50"}
    })
}

/// Assets 0..n for the default tenant; n is the bulk tenant's, n+1 the other tenant's, n+2
/// and n+3 the one-dataset phase's.
async fn register(
    store: &dyn Store,
    simulator: &Simulator,
    vault: &MasterKey,
    n: usize,
) -> anyhow::Result<()> {
    let now = now_ms();
    for (tenant, key) in [("bulk", BULK_KEY), ("other", OTHER_KEY)] {
        store
            .create_tenant(&Tenant {
                name: tenant.into(),
                test_event_code: None,
                created_at_ms: now,
            })
            .await?;
        let mut record = keys::generate(tenant, None, None, now).record;
        record.key_hash = keys::hash(key);
        store.create_api_key(&record).await?;
    }
    for i in 0..n + 4 {
        let tenant = match i {
            i if i == n => "bulk",
            i if i == n + 1 => "other",
            _ => DEFAULT_TENANT,
        };
        simulator.add_dataset(&dataset(i));
        store
            .upsert_asset(&Asset {
                tenant: tenant.into(),
                channel: "whatsapp".into(),
                asset_id: waba(i),
                dataset_id: dataset(i),
                sealed_token: vault.seal(&SecretString::from("bench-token"), &waba(i)),
                test_event_code: None,
                status: AssetStatus::Active,
                status_reason: None,
                created_at_ms: now,
                updated_at_ms: now,
            })
            .await?;
    }
    Ok(())
}

/// Posts `{"data": events}` and says whether all were accepted.
async fn post(client: &reqwest::Client, url: &str, key: &str, events: Vec<Value>) -> bool {
    let n = events.len();
    let response = client
        .post(url)
        .bearer_auth(key)
        .json(&json!({ "data": events }))
        .send()
        .await;
    match response {
        Ok(r) if r.status().as_u16() == 202 => r
            .json::<Value>()
            .await
            .is_ok_and(|b| b["accepted"].as_u64() == Some(n as u64)),
        _ => false,
    }
}

/// Another tenant's single-event POSTs, one every 20 ms from `start` until `stop_at`: their
/// latencies, sorted, and how many were sent. On a thread and runtime of its own, with its own
/// connections, like a client on another machine: the flood's tasks building 1,000-event
/// bodies in this process must not delay the probe's own polls and be counted as the relay's.
fn probe_singles(
    url: String,
    asset: String,
    tag: String,
    start: Instant,
    stop_at: Instant,
) -> tokio::task::JoinHandle<(Vec<Duration>, usize)> {
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the probe");
        runtime.block_on(async move {
            let client = reqwest::Client::new();
            let secs = chrono::Utc::now().timestamp();
            let (mut latencies, mut sent) = (Vec::new(), 0usize);
            tokio::time::sleep_until(start.into()).await;
            while Instant::now() < stop_at {
                let started = Instant::now();
                let event = event(&asset, &format!("{tag}-{sent}"), secs);
                if post(&client, &url, OTHER_KEY, vec![event]).await {
                    latencies.push(started.elapsed());
                }
                sent += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            latencies.sort();
            (latencies, sent)
        })
    });
    tokio::task::spawn_blocking(move || thread.join().expect("the probe thread"))
}

/// Ids sent at a time, to match against the simulator's receive times.
pub(super) type SentAt = Arc<Mutex<Vec<(String, i64)>>>;

/// Offers `rate` events/s for `secs` over datasets `0..datasets`, 20 events a request; returns
/// when every request is answered.
async fn offer_load(
    client: &reqwest::Client,
    url: &str,
    tag: &str,
    datasets: usize,
    rate: u64,
    secs: u64,
) -> anyhow::Result<(SentAt, usize)> {
    let per_request = 20usize;
    let interval = Duration::from_secs_f64(per_request as f64 / rate.max(1) as f64);
    let requests = (rate * secs) as usize / per_request;
    let sent: SentAt = Arc::default();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let secs_now = chrono::Utc::now().timestamp();
    let mut tasks = Vec::with_capacity(requests);
    for r in 0..requests {
        ticker.tick().await;
        let ids: Vec<String> = (0..per_request)
            .map(|k| format!("{tag}-{}", r * per_request + k))
            .collect();
        let events: Vec<Value> = ids
            .iter()
            .enumerate()
            .map(|(k, id)| event(&waba((r * per_request + k) % datasets), id, secs_now))
            .collect();
        let (client, url, sent) = (client.clone(), url.to_owned(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let at = now_ms();
            let ok = post(&client, &url, API_KEY, events).await;
            let mut sent = sent.lock().unwrap_or_else(|p| p.into_inner());
            sent.extend(ids.into_iter().map(|id| (id, at)));
            ok
        }));
    }
    let mut failed = 0;
    for task in tasks {
        failed += usize::from(!task.await?);
    }
    Ok((sent, failed))
}

/// Ingest→Meta-ack latencies of `sent`, sorted, and how many reached Meta.
pub(super) fn ack_latencies(simulator: &Simulator, sent: &SentAt) -> Vec<Duration> {
    let received: HashMap<String, i64> = simulator
        .accepted(None)
        .into_iter()
        .filter_map(|a| Some((a.event["event_id"].as_str()?.to_owned(), a.received_at_ms)))
        .collect();
    let mut lat: Vec<Duration> = sent
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter_map(|(id, at)| {
            received
                .get(id)
                .map(|r| Duration::from_millis((r - at).max(0) as u64))
        })
        .collect();
    lat.sort();
    lat
}

async fn wait_accepted(simulator: &Simulator, count: u64, timeout: Duration) -> Option<Instant> {
    let started = Instant::now();
    while simulator.stats_events_accepted() < count {
        if started.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Some(Instant::now())
}

/// The relay's `capi_relay_delivery_handed_over_events_total` (0 if it cannot be read).
async fn handed_over(client: &reqwest::Client, base: &str) -> u64 {
    let Ok(answer) = client.get(format!("{base}/metrics")).send().await else {
        return 0;
    };
    let text = answer.text().await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("capi_relay_delivery_handed_over_events_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

pub async fn run_backend(name: &str, db_url: &str, args: &RelayBenchArgs) -> anyhow::Result<bool> {
    let p = &args.partner;
    let n = args.datasets;
    let latency = args.graph_latency_ms;
    let simulator = Simulator::new(SimulatorConfig {
        max_stored_events: 2_000_000,
        ..SimulatorConfig::default()
    });
    let sim_addr = simulator.clone().spawn("127.0.0.1:0".parse()?).await?;
    let graph_url = format!("http://{sim_addr}");
    let store = relay_store::connect(db_url).await?;
    store.migrate().await?;
    let vault = MasterKey::generate();
    register(store.as_ref(), &simulator, &vault, n).await?;
    let master_key = vault.encode();
    let client = reqwest::Client::new();
    println!("== {name}: partner scenario, {n} datasets, Graph latency {latency} ms");
    let mut ok = true;

    let secs = chrono::Utc::now().timestamp();
    let single_bodies = |tag: &str, asset: usize| -> Vec<Vec<Value>> {
        (0..p.single_dataset_events)
            .collect::<Vec<_>>()
            .chunks(1_000)
            .map(|c| {
                c.iter()
                    .map(|i| event(&waba(asset), &format!("{tag}-{i}"), secs))
                    .collect()
            })
            .collect()
    };
    // 5. One dataset, Meta answering at once: each run is a pair, ingest alone on an ingest-only
    // relay and then the same through a delivering relay, each a fresh process. Pairs keep the
    // two measurements close in time: this machine's speed drifts by tens of percent within
    // minutes, so all the runs alone first and all the runs delivering after them would compare
    // two speeds of the machine as much as two relays.
    let mut alone = Vec::new();
    let mut delivering = Vec::new();
    let runs = if p.runs(Phase::OneDataset) {
        p.single_dataset_runs
    } else {
        0
    };
    for run in 0..runs {
        let (mut ingest_only, base) = start_relay(db_url, &graph_url, &master_key, 0).await?;
        let url = format!("{base}/v1/events");
        let alone_cpu = CpuMeter::start(ingest_only.id().unwrap_or_default());
        let started = Instant::now();
        let bodies = single_bodies(&format!("alone{run}"), n + 2);
        post_concurrently(&client, &url, API_KEY, bodies, 4).await?;
        let alone_took = started.elapsed();
        let alone_cpu = alone_cpu.read();
        ingest_only.start_kill()?;
        ingest_only.wait().await?;
        alone.push(alone_took);

        let (mut relay, base) = start_relay(db_url, &graph_url, &master_key, 1).await?;
        let url = format!("{base}/v1/events");
        // The ingest-alone events go to Meta first, outside the measurement.
        wait_drained(store.as_ref(), Duration::from_secs(300)).await?;
        simulator.reset();
        let handed_before = handed_over(&client, &base).await;
        let cpu = CpuMeter::start(relay.id().unwrap_or_default());
        let started = Instant::now();
        let bodies = single_bodies(&format!("one{run}"), n + 3);
        post_concurrently(&client, &url, API_KEY, bodies, 4).await?;
        let ingested = started.elapsed();
        let done = wait_accepted(
            &simulator,
            p.single_dataset_events as u64,
            Duration::from_secs(300),
        )
        .await;
        let Some(at) = done else {
            ok = false;
            println!("  one dataset, 0 ms:   NOT all delivered within 300 s");
            break;
        };
        let total = at - started;
        delivering.push(total);
        println!(
            "  one dataset, run {}:   first POST → last ack {} ms; ingest alone {} ms ({:.2}×), ingest while delivering {} ms",
            run + 1,
            ms(total),
            ms(alone_took),
            total.as_secs_f64() / alone_took.as_secs_f64(),
            ms(ingested)
        );
        println!(
            "                        CPU: relay {} ms and bench (clients, simulator) {} ms alone; relay {} ms and bench {} ms delivering; {} events handed from ingest straight to a sender",
            alone_cpu.0,
            alone_cpu.1,
            cpu.read().0,
            cpu.read().1,
            handed_over(&client, &base).await - handed_before,
        );
        wait_drained(store.as_ref(), Duration::from_secs(300)).await?;
        relay.start_kill()?;
        relay.wait().await?;
    }
    if !delivering.is_empty() && delivering.len() == alone.len() {
        alone.sort();
        delivering.sort();
        let (alone, total) = (percentile(&alone, 0.5), percentile(&delivering, 0.5));
        println!(
            "  one dataset, 0 ms:   first POST → last ack {} ms; ingest alone {} ms ({:.2}×; target ≤ 1.5×; medians of {} runs)",
            ms(total),
            ms(alone),
            total.as_secs_f64() / alone.as_secs_f64(),
            delivering.len()
        );
    }

    let (mut relay, base) = start_relay(db_url, &graph_url, &master_key, 1).await?;
    let pid = relay.id().unwrap_or_default();
    let url = format!("{base}/v1/events");
    wait_drained(store.as_ref(), Duration::from_secs(300)).await?;

    simulator.set_faults(Faults {
        latency_ms: latency,
        ..Faults::default()
    });

    if p.runs(Phase::Burst) {
        // 1. Burst over every dataset.
        simulator.reset();
        let bodies: Vec<Vec<Value>> = (0..p.burst_events)
            .collect::<Vec<_>>()
            .chunks(1_000)
            .map(|c| {
                c.iter()
                    .map(|i| event(&waba(i % n), &format!("burst-{i}"), secs))
                    .collect()
            })
            .collect();
        let started = Instant::now();
        let failed = post_concurrently(&client, &url, API_KEY, bodies, 4).await?;
        let last_202 = Instant::now();
        let done = wait_accepted(&simulator, p.burst_events as u64, Duration::from_secs(600)).await;
        match done {
            Some(at) => println!(
                "  burst:                {} events over {n} datasets: last delivered {} ms after the last 202 (ingest {} ms, {failed} failed requests, {} sent twice, at most {} requests in flight; target ≤ 10 s)",
                p.burst_events,
                ms(at - last_202),
                ms(last_202 - started),
                simulator.stats_duplicate_events(),
                simulator.stats_max_in_flight()
            ),
            None => {
                ok = false;
                println!("  burst: NOT all delivered within 600 s");
            }
        }
        wait_drained(store.as_ref(), Duration::from_secs(600)).await?;
    }

    let mut baseline_p99: Option<Duration> = None;
    if p.runs(Phase::Steady) {
        // 2. Steady load, with the queue sampled half-way and at the end.
        simulator.reset();
        let sampler = {
            let store = store.clone();
            let half = Duration::from_secs(p.steady_secs) / 2;
            tokio::spawn(async move {
                tokio::time::sleep(half).await;
                store.queue_stats().await.map(|s| s.depth).unwrap_or(-1)
            })
        };
        let (sent, failed) =
            offer_load(&client, &url, "steady", n, args.rate, p.steady_secs).await?;
        let depth_at_end = store.queue_stats().await?.depth;
        let depth_half_way = sampler.await?;
        let steady_rss = peak_rss_mib(pid);
        wait_drained(store.as_ref(), Duration::from_secs(600)).await?;
        let lat = ack_latencies(&simulator, &sent);
        let steady_p99 = percentile(&lat, 0.99);
        baseline_p99 = Some(steady_p99);
        println!(
            "  steady:               {} events/s for {} s: ingest→ack p50 {} ms, p99 {} ms (target ≤ 2,000), queue half-way {depth_half_way} and at the end {depth_at_end}, at most {} requests in flight, {failed} failed requests, {} sent twice, peak RSS so far {:.1} MiB (target ≤ 200)",
            args.rate,
            p.steady_secs,
            ms(percentile(&lat, 0.5)),
            ms(steady_p99),
            simulator.stats_max_in_flight(),
            simulator.stats_duplicate_events(),
            steady_rss.unwrap_or(f64::NAN)
        );
    }

    if p.runs(Phase::Noisy) {
        // 3. Noisy neighbours: a deep backlog for the bulk tenant, one throttled dataset.
        simulator.reset();
        simulator.set_faults(Faults {
            latency_ms: latency,
            throttle_datasets: vec![dataset(0)],
            ..Faults::default()
        });
        let backlog: Vec<Vec<Value>> = (0..p.backlog)
            .collect::<Vec<_>>()
            .chunks(1_000)
            .map(|c| {
                c.iter()
                    .map(|i| event(&waba(n), &format!("backlog-{i}"), secs))
                    .collect()
            })
            .collect();
        post_concurrently(&client, &url, BULK_KEY, backlog, 4).await?;
        let queued = store.queue_stats().await?.depth;
        let (sent, failed) =
            offer_load(&client, &url, "noisy", n, args.rate, p.steady_secs).await?;
        let lat: Vec<Duration> = {
            // Dataset 0 is throttled on purpose: its events wait, the others are measured.
            // Event `noisy-{i}` went to dataset `i % n`.
            let on_throttled = |id: &str| {
                id.rsplit('-')
                    .next()
                    .and_then(|i| i.parse::<usize>().ok())
                    .is_some_and(|i| i % n == 0)
            };
            let mut sent_others = sent.lock().unwrap_or_else(|p| p.into_inner()).clone();
            sent_others.retain(|(id, _)| !on_throttled(id));
            ack_latencies(&simulator, &Arc::new(Mutex::new(sent_others)))
        };
        let noisy_p99 = percentile(&lat, 0.99);
        let ratio = match baseline_p99 {
            Some(steady) => format!(
                "{:.2}× the steady p99; target ≤ 2×",
                noisy_p99.as_secs_f64() / steady.as_secs_f64().max(0.001)
            ),
            None => "no steady phase to compare with".into(),
        };
        println!(
            "  noisy neighbours:     {queued} events queued for another tenant, dataset 0 throttled: the others' ingest→ack p50 {} ms, p99 {} ms ({ratio}), {failed} failed requests",
            ms(percentile(&lat, 0.5)),
            ms(noisy_p99),
        );
        simulator.set_faults(Faults {
            latency_ms: latency,
            ..Faults::default()
        });
        wait_drained(store.as_ref(), Duration::from_secs(900)).await?;
    }

    if p.runs(Phase::Flood) {
        // 4. Flood: 1,000-event batches on many connections vs another tenant's single events.
        simulator.reset();
        reset_peak_rss(pid);
        let stop_at = Instant::now() + Duration::from_secs(p.flood_secs);
        let mut flooders = Vec::new();
        for c in 0..p.flood_connections {
            let (client, url) = (client.clone(), url.clone());
            flooders.push(tokio::spawn(async move {
                let mut r = 0usize;
                while Instant::now() < stop_at {
                    let events: Vec<Value> = (0..1_000)
                        .map(|k| event(&waba(0), &format!("flood-{c}-{r}-{k}"), secs))
                        .collect();
                    post(&client, &url, BULK_KEY, events).await;
                    r += 1;
                }
            }));
        }
        let prober = probe_singles(
            url.clone(),
            waba(n + 1),
            "single".into(),
            Instant::now() + Duration::from_millis(500),
            stop_at,
        );
        for f in flooders {
            f.await?;
        }
        let (singles, s) = prober.await?;
        println!(
            "  flood:                {} connections of 1,000-event batches: another tenant's single-event POST p50 {} ms, p99 {} ms (target ≤ 500), {} of {s} accepted; relay peak RSS {} (target < 300 MiB)",
            p.flood_connections,
            ms(percentile(&singles, 0.5)),
            ms(percentile(&singles, 0.99)),
            singles.len(),
            rss_text(pid)
        );
    }

    for (phase, what) in [
        (Phase::BigBodies, "8 MB bodies"),
        (Phase::Webhooks, "unsigned 4 MiB webhooks"),
    ] {
        if !p.runs(phase) {
            continue;
        }
        // 7 and 8. Large bodies, authenticated or not, vs another tenant's single events.
        simulator.reset();
        let webhook = phase == Phase::Webhooks;
        let body = if webhook {
            let mut body = br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[]}],"pad":""#.to_vec();
            body.resize(4 * 1024 * 1024 - 64, b'x');
            body.extend_from_slice(b"\"}");
            body
        } else {
            let pad = "x".repeat(7_800);
            let events: Vec<Value> = (0..1_000)
                .map(|k| {
                    let mut e = event(&waba(0), &format!("big-{k}"), secs);
                    e["custom_data"]["content_name"] = json!(pad);
                    e
                })
                .collect();
            serde_json::to_vec(&json!({ "data": events }))?
        };
        // Built once; each clone shares the bytes.
        let body = axum::body::Bytes::from(body);
        let target = if webhook {
            format!("{base}/webhooks/meta")
        } else {
            url.clone()
        };
        reset_peak_rss(pid);
        let stop_at = Instant::now() + Duration::from_secs(p.flood_secs);
        let statuses: Arc<Mutex<HashMap<u16, usize>>> = Arc::default();
        let mut flooders = Vec::new();
        for _ in 0..p.flood_connections {
            let (client, target, body, statuses) = (
                client.clone(),
                target.clone(),
                body.clone(),
                statuses.clone(),
            );
            flooders.push(tokio::spawn(async move {
                while Instant::now() < stop_at {
                    let mut request = client
                        .post(&target)
                        .header("content-type", "application/json")
                        .body(body.clone());
                    if webhook {
                        request = request.header("x-hub-signature-256", "sha256=00");
                    } else {
                        request = request.bearer_auth(BULK_KEY);
                    }
                    let status = match request.send().await {
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let _ = r.bytes().await;
                            status
                        }
                        Err(_) => 0,
                    };
                    *statuses
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(status)
                        .or_default() += 1;
                    if status == 503 {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }));
        }
        // The other tenant has connections of its own (not ones the flood's 503s close).
        let prober = probe_singles(
            url.clone(),
            waba(n + 1),
            format!("single-{what}"),
            Instant::now() + Duration::from_millis(500),
            stop_at,
        );
        for f in flooders {
            f.await?;
        }
        let (singles, sent) = prober.await?;
        let mut statuses: Vec<(u16, usize)> = statuses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect();
        statuses.sort();
        println!(
            "  {what}: {} connections for {} s: relay peak RSS {} (target < 300 MiB); another tenant's single-event POST p50 {} ms, p99 {} ms, {} of {sent} accepted; the flood's answers (status, count; 0 = connection error) {statuses:?}",
            p.flood_connections,
            p.flood_secs,
            rss_text(pid),
            ms(percentile(&singles, 0.5)),
            ms(percentile(&singles, 0.99)),
            singles.len(),
        );
        wait_drained(store.as_ref(), Duration::from_secs(600)).await?;
    }

    if p.runs(Phase::Scrape) {
        // 6. Scrapers against a deep queue (a Meta outage's backlog), another tenant posting.
        simulator.reset();
        simulator.set_faults(Faults {
            latency_ms: latency,
            throttle_datasets: vec![dataset(n)],
            ..Faults::default()
        });
        let backlog: Vec<Vec<Value>> = (0..p.backlog)
            .collect::<Vec<_>>()
            .chunks(1_000)
            .map(|c| {
                c.iter()
                    .map(|i| event(&waba(n), &format!("scrape-backlog-{i}"), secs))
                    .collect()
            })
            .collect();
        post_concurrently(&client, &url, BULK_KEY, backlog, 4).await?;
        let queued = store.queue_stats().await?.depth;
        let stop_at = Instant::now() + Duration::from_secs(p.flood_secs);
        let metrics_url = format!("{base}/metrics");
        let mut scrapers = Vec::new();
        for _ in 0..p.scrapers {
            let (client, metrics_url) = (client.clone(), metrics_url.clone());
            scrapers.push(tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < stop_at {
                    if let Ok(r) = client.get(&metrics_url).send().await {
                        let ok = r.status().is_success();
                        if r.bytes().await.is_ok() && ok {
                            done += 1;
                        }
                    }
                }
                done
            }));
        }
        let prober = probe_singles(
            url.clone(),
            waba(n + 1),
            "scrape-single".into(),
            Instant::now(),
            stop_at,
        );
        let (singles, s) = prober.await?;
        let mut scrapes = 0u64;
        for scraper in scrapers {
            scrapes += scraper.await?;
        }
        println!(
            "  scrape:               {} scrapers of /metrics ({:.0} scrapes/s) with {queued} events queued: another tenant's single-event POST p50 {} ms, p99 {} ms, {} of {s} accepted",
            p.scrapers,
            scrapes as f64 / p.flood_secs as f64,
            ms(percentile(&singles, 0.5)),
            ms(percentile(&singles, 0.99)),
            singles.len()
        );
        simulator.set_faults(Faults {
            latency_ms: latency,
            ..Faults::default()
        });
        wait_drained(store.as_ref(), Duration::from_secs(900)).await?;
    }

    match peak_rss_mib(pid) {
        Some(mib) => println!(
            "  peak RSS (whole run):  {mib:.1} MiB (the flood holds 64 × 1,000-event bodies at once)"
        ),
        None => println!("  peak RSS: unavailable (no /proc)"),
    }
    relay.start_kill()?;
    relay.wait().await?;
    Ok(ok)
}

/// Restarts the peak-RSS count of `pid` (Linux: writing 5 to `clear_refs` resets `VmHWM`).
fn reset_peak_rss(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

fn rss_text(pid: u32) -> String {
    peak_rss_mib(pid).map_or("unavailable (no /proc)".into(), |m| format!("{m:.1} MiB"))
}

/// CPU used since `start` by the relay child and by this process (clients and simulator), in ms.
struct CpuMeter {
    pid: u32,
    relay: Option<Duration>,
    bench: Option<Duration>,
}

impl CpuMeter {
    fn start(pid: u32) -> Self {
        CpuMeter {
            pid,
            relay: cpu_time(pid),
            bench: cpu_time(std::process::id()),
        }
    }

    fn read(&self) -> (String, String) {
        let since = |before: Option<Duration>, now: Option<Duration>| match (before, now) {
            (Some(b), Some(n)) => format!("{}", (n.saturating_sub(b)).as_millis()),
            _ => "?".into(),
        };
        (
            since(self.relay, cpu_time(self.pid)),
            since(self.bench, cpu_time(std::process::id())),
        )
    }
}

/// Posts every body with at most `concurrency` in flight; returns the failed requests.
async fn post_concurrently(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    bodies: Vec<Vec<Value>>,
    concurrency: usize,
) -> anyhow::Result<usize> {
    let limit = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = Vec::with_capacity(bodies.len());
    for events in bodies {
        let permit = limit.clone().acquire_owned().await?;
        let (client, url, key) = (client.clone(), url.to_owned(), key.to_owned());
        tasks.push(tokio::spawn(async move {
            let ok = post(&client, &url, &key, events).await;
            drop(permit);
            ok
        }));
    }
    let mut failed = 0;
    for task in tasks {
        failed += usize::from(!task.await?);
    }
    Ok(failed)
}
