//! `capi-relay simulate-graph`: the Graph API simulator as a standalone server.

use std::{net::SocketAddr, process::ExitCode};

use clap::Args;

use crate::simulator::{Faults, Simulator, SimulatorConfig};

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:4010")]
    pub listen: SocketAddr,

    /// Accept only this access token (repeatable). Without any, every non-empty token works.
    #[arg(long = "access-token-env", value_name = "VAR")]
    pub access_token_envs: Vec<String>,

    /// A dataset id that exists from the start (repeatable). Others come from the Dataset API.
    #[arg(long = "dataset")]
    pub datasets: Vec<String>,

    /// Require `appsecret_proof` for the app secret in CAPI_RELAY_META_APP_SECRET.
    #[arg(long)]
    pub require_appsecret_proof: bool,

    /// Asset whose Dataset API calls fail with a permission error (repeatable).
    #[arg(long = "deny-asset")]
    pub denied_assets: Vec<String>,

    /// Share of events requests answered HTTP 503 (0.0–1.0).
    #[arg(long, default_value_t = 0.0)]
    pub fault_5xx_rate: f64,
    /// Share of events requests left unanswered until the client times out.
    #[arg(long, default_value_t = 0.0)]
    pub fault_timeout_rate: f64,
    /// Share of events requests answered with Graph code 2 (transient).
    #[arg(long, default_value_t = 0.0)]
    pub fault_transient_rate: f64,
    /// Share of events requests throttled (codes 4, 17, 613, with usage headers).
    #[arg(long, default_value_t = 0.0)]
    pub fault_throttle_rate: f64,
    /// `estimated_time_to_regain_access` (minutes) sent with throttling.
    #[arg(long, default_value_t = 1)]
    pub throttle_regain_minutes: u64,
    /// Latency added to every events request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// A random extra latency of up to this many milliseconds per events request.
    #[arg(long, default_value_t = 0)]
    pub latency_jitter_ms: u64,
    /// Datasets whose every events request is throttled (code 80004).
    #[arg(long = "throttle-dataset")]
    pub throttle_datasets: Vec<String>,
    /// Seed for the fault dice, for repeatable runs.
    #[arg(long)]
    pub seed: Option<u64>,
}

pub async fn run(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    let access_tokens = args
        .access_token_envs
        .iter()
        .map(|var| {
            std::env::var(var).map_err(|_| anyhow::anyhow!("environment variable {var} is not set"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let app_secret = if args.require_appsecret_proof {
        Some(std::env::var(super::APP_SECRET_ENV).map_err(|_| {
            anyhow::anyhow!("--require-appsecret-proof needs {}", super::APP_SECRET_ENV)
        })?)
    } else {
        None
    };
    for (name, rate) in [
        ("--fault-5xx-rate", args.fault_5xx_rate),
        ("--fault-timeout-rate", args.fault_timeout_rate),
        ("--fault-transient-rate", args.fault_transient_rate),
        ("--fault-throttle-rate", args.fault_throttle_rate),
    ] {
        anyhow::ensure!(
            (0.0..=1.0).contains(&rate),
            "{name} must be between 0 and 1"
        );
    }
    let simulator = Simulator::new(SimulatorConfig {
        access_tokens,
        datasets: args.datasets.clone(),
        app_secret,
        denied_assets: args.denied_assets,
        faults: Faults {
            server_error_rate: args.fault_5xx_rate,
            timeout_rate: args.fault_timeout_rate,
            transient_rate: args.fault_transient_rate,
            throttle_rate: args.fault_throttle_rate,
            throttle_regain_minutes: args.throttle_regain_minutes,
            latency_ms: args.latency_ms,
            latency_jitter_ms: args.latency_jitter_ms,
            throttle_datasets: args.throttle_datasets,
            timeout_hold_ms: 0,
            reject_events_containing: None,
        },
        seed: args.seed,
        ..SimulatorConfig::default()
    });
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    println!("Graph API simulator listening on http://{addr}");
    println!("  events:   POST http://{addr}/v26.0/{{dataset_id}}/events");
    println!("  datasets: POST http://{addr}/v26.0/{{asset_id}}/dataset");
    println!("  inspect:  GET  http://{addr}/__sim/events?dataset_id=ID");
    if !args.datasets.is_empty() {
        println!("  datasets ready: {}", args.datasets.join(", "));
    }
    simulator
        .serve(listener, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(ExitCode::SUCCESS)
}
