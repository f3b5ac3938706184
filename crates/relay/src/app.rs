//! The relay service: HTTP API, delivery workers and the retention job, started together and
//! stopped together. Tests call [`run`] with a listener on port 0 and their own shutdown signal.

use std::{future::Future, sync::Arc};

use anyhow::Context;
use relay_store::Store;
use tokio::{net::TcpListener, sync::Notify};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    capture::{self, Capture},
    clock::{self, now_ms},
    config::Config,
    crm::{
        Crm,
        kommo::{self, KommoClient, KommoClientConfig, KommoProcessor},
    },
    delivery::{
        GraphClient, dispatcher,
        resolver::Resolver,
        sender::{self, DeliveryContext},
    },
    http::{self, AppState},
    observability,
    tenancy::{self, AdminContext, keys::Authenticator},
    vault,
};

/// Opens the store, applies migrations, and serves until `shutdown` completes.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = relay_store::connect(&config.database_url)
        .await
        .with_context(|| {
            format!(
                "cannot open the database {}",
                redact_url(&config.database_url)
            )
        })?;
    store
        .migrate()
        .await
        .context("cannot apply database migrations")?;
    run_with_store(config, store, listener, shutdown).await
}

/// Serves with an already opened and migrated store.
pub async fn run_with_store(
    config: Config,
    store: Arc<dyn Store>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if config.api_key.is_none() && config.admin_key.is_none() {
        anyhow::bail!(
            "no API key: set CAPI_RELAY_API_KEY (the default tenant's key) or CAPI_RELAY_ADMIN_KEY (to create tenant keys), or use --sandbox"
        );
    }
    let validation = config.validation_options()?;
    let graph = GraphClient::new(config.graph_config()).context("cannot build the HTTP client")?;
    let (vault, _) = vault::load_master_key(
        config.master_key.as_ref(),
        config.master_key_file.as_deref(),
    )
    .context("cannot load the master key")?;
    let vault = Arc::new(vault);
    let vault_key_for_ui = vault.derive("dashboard session cookie");
    let sealed = tenancy::seal_plaintext_tokens(store.as_ref(), &vault)
        .await
        .context("cannot seal the access tokens stored in plain text")?;
    if sealed > 0 {
        tracing::info!(
            tokens = sealed,
            key_id = vault.id(),
            "sealed access tokens stored in plain text by an older relay"
        );
    }
    let wake = Arc::new(Notify::new());
    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();

    let owner = sender::process_owner_id();
    let ctx = DeliveryContext {
        store: store.clone(),
        graph,
        config: config.delivery.clone(),
        request_timeout: config.graph_timeout,
        wake: wake.clone(),
        vault: vault.clone(),
        clock: clock::system(),
        graph_calls: Default::default(),
        resolver: Resolver::spawn(store.clone(), store.parallel_writers()),
    };
    let capture = Arc::new(Capture::new(store.clone(), &config));
    let ingestor = Arc::new(
        crate::ingest::Ingestor::new(store.clone(), validation).with_capture(capture.clone()),
    );
    if config.delivery.workers > 0 {
        tasks.spawn(dispatcher::run(
            ctx.clone(),
            owner.clone(),
            ingestor.handoff(),
            cancel.clone(),
        ));
    }
    tasks.spawn(purge_loop(store.clone(), config.clone(), cancel.clone()));
    // Webhooks stored before a crash are processed now; new ones as they arrive.
    tasks.spawn(capture::process_loop(
        capture.clone(),
        ingestor.clone(),
        cancel.clone(),
    ));
    tasks.spawn(capture::forward_loop(
        store.clone(),
        config.clone(),
        format!("{owner}-fwd"),
        cancel.clone(),
    ));
    tasks.spawn(capture::purge_loop(
        store.clone(),
        config.clone(),
        cancel.clone(),
    ));

    let crm = Arc::new(Crm {
        store: store.clone(),
        ingestor: ingestor.clone(),
    });
    let kommo = Arc::new(KommoProcessor {
        crm: crm.clone(),
        client: KommoClient::new(KommoClientConfig::default())
            .context("cannot build the Kommo HTTP client")?,
        vault: vault.clone(),
        wake: Notify::new(),
        retry_base: config.crm.retry_base,
    });
    tasks.spawn(kommo::process_loop(kommo.clone(), cancel.clone()));

    let state = AppState {
        crm,
        kommo,
        ingestor,
        capture,
        auth: Arc::new(Authenticator::new(
            store.clone(),
            config.api_key.clone(),
            config.admin_key.clone(),
        )),
        admin: AdminContext {
            store: store.clone(),
            vault,
            graph: ctx.graph.clone(),
        },
        ui: Arc::new(crate::dashboard::UiState::new(
            &vault_key_for_ui,
            !config.listen.ip().is_loopback(),
        )),
        store,
        wake,
        metrics: observability::prometheus(),
        metrics_access: Arc::new(http::ops::MetricsAccess::new(&config.metrics)),
    };
    if let Some(address) = config.metrics.listen {
        let metrics_listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address} (metrics.listen)"))?;
        let metrics_app = http::metrics_routes().with_state(state.clone());
        let stop = cancel.clone();
        tasks.spawn(async move {
            let served = axum::serve(metrics_listener, metrics_app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the metrics listener failed");
            }
        });
        tracing::info!(%address, "metrics served on their own listener");
    }
    let app = http::router(
        state,
        &config.http,
        config.max_body_bytes,
        config.webhooks.max_body_bytes,
    );
    tracing::info!(address = %listener.local_addr()?, delivery = config.delivery.workers > 0, max_in_flight = config.delivery.max_in_flight, "capi-relay serving");
    let served = http::server::serve(listener, app, &config.http, shutdown).await;

    // HTTP has stopped taking events; let workers finish the sends in flight.
    cancel.cancel();
    tasks.close();
    tasks.wait().await;
    tracing::info!("capi-relay stopped");
    served.context("the HTTP server failed")
}

/// Deletes finished events older than the retention (the deduplication window) now and then.
async fn purge_loop(store: Arc<dyn Store>, config: Config, cancel: CancellationToken) {
    loop {
        let cutoff = now_ms() - config.retention.finished_events.as_millis() as i64;
        match store.purge_finished(cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "finished events past retention purged"),
            Err(e) => tracing::warn!(error = %e, "retention purge failed"),
        }
        let now = now_ms();
        let dashboard = store
            .purge_dashboard(
                now - config.retention.stats.as_millis() as i64,
                now - config.retention.refused_events.as_millis() as i64,
                now,
            )
            .await;
        match dashboard {
            Ok(p) if p.stats_rows + p.refusals > 0 => tracing::info!(
                stats_rows = p.stats_rows,
                refusals = p.refusals,
                "dashboard counts and refused events past retention purged"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "dashboard retention purge failed"),
        }
        tokio::select! {
            () = tokio::time::sleep(config.retention.purge_interval) => {}
            () = cancel.cancelled() => break,
        }
    }
}

/// The database URL without its password or secret parameters, for messages.
pub use relay_store::redact_url;
