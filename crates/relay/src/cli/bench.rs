//! `capi-relay bench …`: benchmarks that print their figures.

use std::{
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::{Args, Subcommand};
use relay_core::{ValidationOptions, validate_event};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::simulator::{Simulator, SimulatorConfig};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// How many events per second the Graph simulator accepts in 1,000-event requests.
    Simulator(SimulatorBenchArgs),
    /// The relay end to end (a `serve` child process against an in-process simulator): batch
    /// ingest, single-event requests, delivery, latency at a fixed rate, peak RSS.
    Relay(super::bench_relay::RelayBenchArgs),
    /// The dashboard's overview render time with many stored events (10 million by default).
    Dashboard(super::bench_dashboard::DashboardBenchArgs),
}

#[derive(Debug, Args)]
pub struct SimulatorBenchArgs {
    /// Requests to send.
    #[arg(long, default_value_t = 200)]
    pub requests: usize,
    /// Events per request (Meta's maximum is 1,000).
    #[arg(long, default_value_t = 1_000)]
    pub batch: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
}

pub async fn run(command: BenchCommand) -> anyhow::Result<ExitCode> {
    match command {
        BenchCommand::Simulator(args) => bench_simulator(args).await,
        BenchCommand::Relay(args) => super::bench_relay::run(args).await,
        BenchCommand::Dashboard(args) => super::bench_dashboard::run(args).await,
    }
}

/// Realistic validated events: WhatsApp purchases with hashed e-mail and phone.
fn sample_events(count: usize, now: i64) -> anyhow::Result<Vec<relay_core::MetaEvent>> {
    (0..count)
        .map(|i| {
            let input = json!({
                "event_name": "Purchase",
                "event_time": now - 60,
                "event_id": format!("bench-{i}"),
                "action_source": "business_messaging",
                "messaging_channel": "whatsapp",
                "user_data": {
                    "whatsapp_business_account_id": "102290129340398",
                    "ctwa_clid": format!("ARAkLkA8rmlFeiCktEJQ-QTwRiyYHAFDLMNDBH0CD3qpjd0HR4irJ6LEkR7JwFF4XvnO2E4N{i:06}"),
                    "em": format!("customer{i}@example.com"),
                    "ph": format!("+5511987{:06}", i % 1_000_000),
                },
                "custom_data": {"currency": "BRL", "value": "120.50", "order_id": format!("order-{i}")}
            });
            validate_event(&input, &ValidationOptions::default(), now)
                .map(|v| v.event)
                .map_err(|r| anyhow::anyhow!("sample event invalid: {:?}", r.errors))
        })
        .collect()
}

async fn bench_simulator(args: SimulatorBenchArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.batch >= 1 && args.batch <= 1_000,
        "--batch must be 1..=1000"
    );
    let dataset = "1000000000000001";
    let simulator = Simulator::new(SimulatorConfig {
        datasets: vec![dataset.into()],
        ..SimulatorConfig::default()
    });
    let addr = simulator
        .clone()
        .spawn("127.0.0.1:0".parse().expect("valid address"))
        .await?;
    let now = chrono::Utc::now().timestamp();
    let body = serde_json::to_vec(&json!({ "data": sample_events(args.batch, now)? }))?;
    let body = axum::body::Bytes::from(body);
    let url = format!("http://{addr}/v26.0/{dataset}/events");
    let client = reqwest::Client::new();
    let limit = Arc::new(Semaphore::new(args.concurrency.max(1)));

    println!(
        "bench simulator: {} requests x {} events, concurrency {}, request body {} KiB",
        args.requests,
        args.batch,
        args.concurrency,
        body.len() / 1024
    );
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.requests);
    for _ in 0..args.requests {
        let permit = limit.clone().acquire_owned().await?;
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            let response = client
                .post(url)
                .bearer_auth("bench-token")
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            drop(permit);
            let ok = matches!(&response, Ok(r) if r.status().is_success());
            (ok, sent.elapsed())
        }));
    }
    let mut latencies = Vec::with_capacity(tasks.len());
    let mut failures = 0;
    for task in tasks {
        let (ok, latency) = task.await.context("a bench request panicked")?;
        failures += usize::from(!ok);
        latencies.push(latency);
    }
    let elapsed = started.elapsed();
    let accepted = simulator.accepted_page(Some(dataset), 0).0;
    latencies.sort();
    let events = (args.requests - failures) * args.batch;
    println!("  failed requests:   {failures}");
    println!("  events stored:     {accepted} (of {events} acknowledged)");
    println!("  elapsed:           {:.3} s", elapsed.as_secs_f64());
    println!(
        "  accepted events/s: {:.0}",
        events as f64 / elapsed.as_secs_f64()
    );
    println!(
        "  request latency:   p50 {} ms, p99 {} ms",
        percentile(&latencies, 0.50).as_millis(),
        percentile(&latencies, 0.99).as_millis()
    );
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index]
}
