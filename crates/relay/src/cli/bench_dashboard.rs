//! `capi-relay bench dashboard`: the overview's render time for a tenant with many stored
//! events. Fills a database through the store's own insert and resolve paths (so the
//! maintained counts are what a real relay would have), serves it in-process, signs in, and
//! times `GET /ui?window=…` (the HTML page) and `GET /v1/stats/overview` per window.

use std::{
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Args;
use relay_store::{Attempt, NewEvent, Resolution, Store, Tenant};
use secrecy::SecretString;

use crate::{clock::now_ms, config::Config, vault::MasterKey};

#[derive(Debug, Args)]
pub struct DashboardBenchArgs {
    /// Events to store for the tenant.
    #[arg(long, default_value_t = 10_000_000)]
    pub events: usize,
    /// Datasets they are spread over.
    #[arg(long, default_value_t = 5)]
    pub datasets: usize,
    /// Days back their accept times are spread over.
    #[arg(long, default_value_t = 30)]
    pub days: i64,
    /// Share of the events delivered (through claim and resolve).
    #[arg(long, default_value_t = 0.1)]
    pub delivered_share: f64,
    /// Timed requests per window.
    #[arg(long, default_value_t = 20)]
    pub renders: usize,
    /// Database to fill (empty or new); a temporary SQLite file by default.
    #[arg(long)]
    pub database_url: Option<String>,
}

const EVENT_NAMES: [&str; 4] = ["Purchase", "LeadSubmitted", "AddToCart", "InitiateCheckout"];
const TENANT: &str = "bench";

pub async fn run(args: DashboardBenchArgs) -> anyhow::Result<ExitCode> {
    let dir = tempfile::tempdir()?;
    let url = args
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("dashboard.db").display()));
    let store = relay_store::connect(&url).await?;
    store.migrate().await?;
    store
        .create_tenant(&Tenant {
            name: TENANT.into(),
            test_event_code: None,
            created_at_ms: 0,
        })
        .await?;
    let now = now_ms();
    let fill = Instant::now();
    fill_events(store.as_ref(), &args, now).await?;
    let inserted = fill.elapsed();
    let delivering = Instant::now();
    let delivered = deliver_share(store.as_ref(), &args, now).await?;
    println!(
        "filled {} events over {} datasets and {} days in {:.1} s, delivered {} in {:.1} s ({})",
        args.events,
        args.datasets,
        args.days,
        inserted.as_secs_f64(),
        delivered,
        delivering.elapsed().as_secs_f64(),
        crate::app::redact_url(&url)
    );

    let admin = "bench-admin-key";
    let config = Config {
        database_url: url.clone(),
        admin_key: Some(SecretString::from(admin.to_owned())),
        master_key: Some(MasterKey::generate().encode()),
        ..Config::default()
    };
    let mut config = config;
    config.delivery.workers = 0;
    // Keep every filled event: the purge at start would otherwise delete the delivered ones
    // older than 8 days while the pages are timed (seconds of writes on SQLite).
    config.retention.finished_events = config
        .retention
        .finished_events
        .max(Duration::from_secs((args.days.max(0) as u64 + 2) * 86_400));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::app::run_with_store(
        config,
        store.clone(),
        listener,
        async move {
            let _ = stopped.await;
        },
    ));
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let login = client
        .post(format!("{base}/ui/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("key={admin}"))
        .send()
        .await?;
    let cookie = login
        .headers()
        .get("set-cookie")
        .and_then(|c| c.to_str().ok())
        .and_then(|c| c.split(';').next())
        .context("the sign-in set no cookie")?
        .to_owned();
    // The operator views the tenant, as a partner would open one advertiser.
    let page = client
        .get(format!("{base}/ui"))
        .header("cookie", &cookie)
        .send()
        .await?
        .text()
        .await?;
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .context("no csrf token on the page")?
        .to_owned();
    let switched = client
        .post(format!("{base}/ui/switch"))
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}&tenant={TENANT}"))
        .send()
        .await?;
    let cookie = switched
        .headers()
        .get("set-cookie")
        .and_then(|c| c.to_str().ok())
        .and_then(|c| c.split(';').next())
        .context("the switch set no cookie")?
        .to_owned();

    println!(
        "window  page        median     p95        max     (GET /ui?window=…, {} renders)",
        args.renders
    );
    for window in ["1h", "24h", "7d", "30d"] {
        let html = time(args.renders, || {
            client
                .get(format!("{base}/ui?window={window}"))
                .header("cookie", &cookie)
                .send()
        })
        .await?;
        let json = time(args.renders, || {
            client
                .get(format!(
                    "{base}/v1/stats/overview?window={window}&tenant={TENANT}"
                ))
                .bearer_auth(admin)
                .send()
        })
        .await?;
        println!("{window:<6}  html  {}", html.line());
        println!("{window:<6}  json  {}", json.line());
    }
    let _ = stop.send(());
    server.await??;
    Ok(ExitCode::SUCCESS)
}

struct Timing(Vec<Duration>);

impl Timing {
    fn line(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let at = |q: f64| self.0[((self.0.len() - 1) as f64 * q).round() as usize];
        format!(
            "{:>8.1} ms {:>8.1} ms {:>8.1} ms",
            ms(at(0.5)),
            ms(at(0.95)),
            ms(*self.0.last().unwrap())
        )
    }
}

async fn time<F, Fut>(n: usize, request: F) -> anyhow::Result<Timing>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = reqwest::Result<reqwest::Response>>,
{
    // One untimed request warms the caches, as a page a user reloads would be.
    request().await?.error_for_status()?.bytes().await?;
    let mut times = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let started = Instant::now();
        request().await?.error_for_status()?.bytes().await?;
        times.push(started.elapsed());
    }
    times.sort();
    Ok(Timing(times))
}

async fn fill_events(store: &dyn Store, args: &DashboardBenchArgs, now: i64) -> anyhow::Result<()> {
    let span = args.days * 86_400_000;
    let tenant: Arc<str> = TENANT.into();
    let channel: Arc<str> = "whatsapp".into();
    let datasets: Vec<Arc<str>> = (0..args.datasets)
        .map(|d| Arc::from(format!("90000000000{d:04}")))
        .collect();
    let assets: Vec<Arc<str>> = (0..args.datasets)
        .map(|d| Arc::from(format!("50000000000{d:04}")))
        .collect();
    let names: Vec<Arc<str>> = EVENT_NAMES.iter().map(|n| Arc::from(*n)).collect();
    let mut batch = Vec::with_capacity(5_000);
    for i in 0..args.events {
        let d = i % args.datasets.max(1);
        // Oldest first, as a relay would have stored them.
        let accepted_at_ms = now - span + (span * i as i64) / args.events.max(1) as i64;
        let event_id: Arc<str> = format!("bench-{i}").into();
        batch.push(NewEvent {
            tenant: tenant.clone(),
            dataset_id: datasets[d].clone(),
            asset_id: assets[d].clone(),
            channel: channel.clone(),
            event_name: names[i % names.len()].clone(),
            event_time: accepted_at_ms / 1000 - 60,
            payload: format!(
                r#"{{"event_name":"{}","event_time":{},"event_id":"{event_id}","action_source":"business_messaging","messaging_channel":"whatsapp","user_data":{{"whatsapp_business_account_id":"{}","ctwa_clid":"ARAk{i}"}}}}"#,
                names[i % names.len()],
                accepted_at_ms / 1000 - 60,
                assets[d]
            )
            .into(),
            event_id,
            test_event_code: None,
            accepted_at_ms,
            conversation_id: None,
        });
        if batch.len() == 5_000 {
            store.insert_events(&batch).await?;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        store.insert_events(&batch).await?;
    }
    Ok(())
}

async fn deliver_share(
    store: &dyn Store,
    args: &DashboardBenchArgs,
    now: i64,
) -> anyhow::Result<u64> {
    let target = (args.events as f64 * args.delivered_share.clamp(0.0, 1.0)) as u64;
    let mut delivered = 0u64;
    let owner = "bench-dashboard";
    'datasets: for d in 0..args.datasets {
        let dataset = format!("90000000000{d:04}");
        let share = target / args.datasets.max(1) as u64;
        let mut done = 0u64;
        while done < share {
            let claimed = store
                .claim_dataset(
                    owner,
                    &dataset,
                    now,
                    now + 600_000,
                    (share - done).min(1_000) as i64,
                )
                .await?;
            if claimed.is_empty() {
                continue 'datasets;
            }
            let ids: Vec<i64> = claimed.iter().map(|e| e.id).collect();
            let attempt = Attempt {
                attempted_at_ms: now,
                outcome: "delivered".into(),
                http_status: Some(200),
                fbtrace_id: None,
                message: None,
                latency_ms: 300,
            };
            done += store
                .resolve(
                    owner,
                    &ids,
                    &attempt,
                    &Resolution::Delivered {
                        delivered_at_ms: now,
                    },
                )
                .await?;
        }
        delivered += done;
    }
    Ok(delivered)
}
