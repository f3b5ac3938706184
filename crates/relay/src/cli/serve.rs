//! `capi-relay serve` and `capi-relay migrate`.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::Args;
use rand::Rng;
use relay_core::Channel;
use relay_store::{DEFAULT_TENANT, redact_url};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use super::DbArgs;
use crate::{
    app,
    config::Config,
    delivery::{GraphClient, GraphConfig},
    simulator::{Simulator, SimulatorConfig},
    tenancy, vault,
};

/// Database used by `--sandbox` unless one is given, so demo data stays apart.
const SANDBOX_DATABASE_URL: &str = "sqlite://capi-relay-sandbox.db";
const SANDBOX_TOKEN: &str = "sandbox-token";
/// Webhook app secret and verify token of the sandbox, unless configured: demo values only.
const SANDBOX_APP_SECRET: &str = "sandbox-app-secret";
const SANDBOX_VERIFY_TOKEN: &str = "sandbox-verify-token";
/// How long the sandbox's one-time dashboard link stays valid.
const SANDBOX_LINK_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

#[derive(Debug, Args, Serialize)]
pub struct ServeArgs {
    /// TOML configuration file (every key can also be set as a CAPI_RELAY_* variable).
    #[arg(long, env = "CAPI_RELAY_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Address of the HTTP API [default: 127.0.0.1:8080].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,

    /// sqlite://PATH or postgres://… [default: sqlite://capi-relay.db].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,

    /// Graph API base URL [default: https://graph.facebook.com].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub graph_url: Option<String>,

    /// Deliver to a bundled Graph API simulator instead of Meta; needs no credentials.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub sandbox: bool,
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut config = Config::load(args.config.as_deref(), &args)?;
    let simulator = if config.sandbox {
        Some(prepare_sandbox(&mut config).await?)
    } else {
        None
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener.local_addr()?;
    if let Some(sim_url) = &simulator {
        let store = relay_store::connect(&config.database_url).await?;
        let token = crate::dashboard::session::create_link(
            store.as_ref(),
            DEFAULT_TENANT,
            false,
            SANDBOX_LINK_TTL,
            "sandbox",
        )
        .await?;
        drop(store);
        let login = super::ui_link::link_url(&format!("http://{address}"), &token);
        print!("{}", sandbox_banner(&config, address, sim_url, &login));
    } else {
        println!(
            "capi-relay listening on http://{address} (database {})",
            redact_url(&config.database_url)
        );
    }
    app::run(config, listener, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// Starts the simulator, points delivery at it, and makes sure there is something to try.
async fn prepare_sandbox(config: &mut Config) -> anyhow::Result<String> {
    if config.database_url == Config::default().database_url {
        config.database_url = SANDBOX_DATABASE_URL.into();
    }
    let simulator = Simulator::new(SimulatorConfig::default());
    let addr = simulator.clone().spawn("127.0.0.1:0".parse()?).await?;
    let sim_url = format!("http://{addr}");
    config.graph_url = sim_url.clone();
    // A configured `meta_app_secret` is kept: webhooks signed with it still verify (and the
    // simulator ignores `appsecret_proof`). The banner says so.
    // Webhooks can be tried too: signed with a demo app secret (no Meta app involved).
    if config.webhooks.apps.is_empty() {
        config.webhooks.apps.push(crate::config::MetaApp {
            app_secret: SecretString::from(SANDBOX_APP_SECRET.to_owned()),
            verify_token: Some(SecretString::from(SANDBOX_VERIFY_TOKEN.to_owned())),
        });
    }
    if config.api_key.is_none() {
        let key: [u8; 16] = rand::rng().random();
        config.api_key = Some(SecretString::from(format!("sandbox-{}", hex::encode(key))));
    }
    if config.admin_key.is_none() {
        let key: [u8; 16] = rand::rng().random();
        config.admin_key = Some(SecretString::from(format!(
            "sandbox-admin-{}",
            hex::encode(key)
        )));
    }

    let store = relay_store::connect(&config.database_url).await?;
    store.migrate().await?;
    let graph = GraphClient::new(GraphConfig {
        base_url: sim_url.clone(),
        ..GraphConfig::default()
    })?;
    let token = SecretString::from(SANDBOX_TOKEN.to_owned());
    let mut assets = store.list_assets().await?;
    if assets.is_empty() {
        let (vault, _) = vault::load_master_key(
            config.master_key.as_ref(),
            config.master_key_file.as_deref(),
        )?;
        for (channel, asset_id) in [
            (Channel::WhatsApp, "102290129340398"),
            (Channel::Messenger, "1234567890123"),
            (Channel::Instagram, "17841400000000000"),
        ] {
            let dataset = graph
                .create_or_get_dataset(asset_id, &token, Some("capi-relay sandbox"))
                .await?;
            let spec = tenancy::AssetSpec {
                tenant: DEFAULT_TENANT.into(),
                channel,
                asset_id: asset_id.into(),
                dataset_id: dataset.id,
                token: token.clone(),
                test_event_code: None,
            };
            tenancy::add_asset(store.as_ref(), &vault, spec, "sandbox", "asset.add").await?;
        }
        assets = store.list_assets().await?;
    }
    // Datasets from earlier sandbox runs must exist in this run's simulator.
    for asset in &assets {
        simulator.add_dataset(&asset.dataset_id);
    }
    Ok(sim_url)
}

/// The sandbox's banner: where everything is, the keys, and every webhook secret in use (the
/// demo one by value, configured ones by name only). The database URL is shown redacted.
fn sandbox_banner(config: &Config, address: SocketAddr, sim_url: &str, ui_login: &str) -> String {
    let key = config
        .api_key
        .as_ref()
        .map(|k| k.expose_secret().to_owned())
        .unwrap_or_default();
    let now = chrono::Utc::now().timestamp();
    let mut b = String::new();
    let mut line = |text: String| {
        b.push_str(&text);
        b.push('\n');
    };
    line("==================================================================".into());
    line(" SANDBOX MODE: events go to the bundled Graph API simulator,".into());
    line(" NOT to Meta. Nothing you send here reaches Events Manager.".into());
    line("==================================================================".into());
    line(format!(" relay API:   http://{address}"));
    line(format!(
        " dashboard:   http://{address}/ui   (sign in with the API or admin key below)"
    ));
    line(format!(
        " login link:  {ui_login}   (one-time, default tenant, 24 h)"
    ));
    line(format!(
        " simulator:   {sim_url}  (GET {sim_url}/__sim/events)"
    ));
    line(format!(
        " database:    {}",
        redact_url(&config.database_url)
    ));
    line(format!(" API key:     {key}   (the default tenant's)"));
    if let Some(admin) = &config.admin_key {
        line(format!(
            " admin key:   {}   (/v1/admin)",
            admin.expose_secret()
        ));
    }
    line(
        " demo assets: whatsapp 102290129340398, messenger 1234567890123, instagram 17841400000000000"
            .into(),
    );
    let demo = config
        .webhooks
        .apps
        .iter()
        .any(|a| a.app_secret.expose_secret() == SANDBOX_APP_SECRET);
    let configured_apps = config
        .webhooks
        .apps
        .iter()
        .filter(|a| a.app_secret.expose_secret() != SANDBOX_APP_SECRET)
        .count();
    line(format!(" webhooks:    http://{address}/webhooks/meta"));
    if demo {
        line(format!(
            " webhook secret: {SANDBOX_APP_SECRET}   (the sandbox's demo app secret; verify token {SANDBOX_VERIFY_TOKEN})"
        ));
        line(format!(
            "   sign a body: printf %s \"$BODY\" | openssl dgst -sha256 -hmac {SANDBOX_APP_SECRET} | sed 's/^.* /sha256=/'"
        ));
    }
    if config.meta_app_secret.is_some() {
        line(
            " also accepted: your configured meta_app_secret (CAPI_RELAY_META_APP_SECRET), kept as it is, not printed"
                .into(),
        );
    }
    if configured_apps > 0 {
        line(format!(
            " also accepted: the {configured_apps} app secret(s) of webhooks.apps, not printed{}",
            if demo {
                ""
            } else {
                "; no demo secret (webhooks.apps is set)"
            }
        ));
    }
    line(String::new());
    line(" try:".into());
    line(format!(
        "  curl -s -X POST http://{address}/v1/events -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\"
    ));
    line(format!(
        "    -d '{{\"data\":[{{\"event_name\":\"Purchase\",\"event_time\":{now},\"messaging_channel\":\"whatsapp\",\"user_data\":{{\"whatsapp_business_account_id\":\"102290129340398\",\"ctwa_clid\":\"ARAkLkA8rmlFeiCktEJQ\"}},\"custom_data\":{{\"currency\":\"USD\",\"value\":42}}}}]}}'"
    ));
    line("==================================================================".into());
    b
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down: finishing the sends in flight");
}

pub async fn migrate(args: DbArgs) -> anyhow::Result<ExitCode> {
    let store = args.open().await?;
    store.migrate().await?;
    println!("migrations applied to {}", redact_url(&args.database_url));
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MetaApp;

    fn sandbox_config() -> Config {
        Config {
            api_key: Some(SecretString::from("sandbox-key".to_owned())),
            ..Config::default()
        }
    }

    #[test]
    fn the_sandbox_banner_redacts_the_database_password() {
        let config = Config {
            database_url: "postgres://relay:hunter2@db:5432/relay?password=hunter3".into(),
            ..sandbox_config()
        };
        let banner = sandbox_banner(
            &config,
            "127.0.0.1:8080".parse().unwrap(),
            "http://sim",
            "http://x/ui/link/uil_t",
        );
        assert!(
            banner.contains(" database:    postgres://relay:***@db:5432/relay?password=***"),
            "{banner}"
        );
        assert!(!banner.contains("hunter"), "{banner}");
    }

    #[test]
    fn the_sandbox_banner_names_every_webhook_secret_in_use_and_prints_only_the_demo_one() {
        let address = "127.0.0.1:8080".parse().unwrap();
        let demo = MetaApp {
            app_secret: SecretString::from(SANDBOX_APP_SECRET.to_owned()),
            verify_token: None,
        };
        let mut config = sandbox_config();
        config.webhooks.apps = vec![demo.clone()];
        let banner = sandbox_banner(&config, address, "http://sim", "http://x/ui/link/uil_t");
        assert!(
            banner.contains(&format!(" webhook secret: {SANDBOX_APP_SECRET}")),
            "{banner}"
        );
        assert!(!banner.contains("also accepted"), "{banner}");

        // A configured app secret is not dropped silently: the banner says it is kept.
        config.meta_app_secret = Some(SecretString::from("my-real-secret".to_owned()));
        let banner = sandbox_banner(&config, address, "http://sim", "http://x/ui/link/uil_t");
        assert!(
            banner.contains(&format!(" webhook secret: {SANDBOX_APP_SECRET}")),
            "{banner}"
        );
        assert!(
            banner.contains("your configured meta_app_secret"),
            "{banner}"
        );
        assert!(!banner.contains("my-real-secret"), "{banner}");

        // webhooks.apps set: no demo secret, and the banner says which secrets are used.
        config.webhooks.apps = vec![MetaApp {
            app_secret: SecretString::from("app-two".to_owned()),
            verify_token: None,
        }];
        let banner = sandbox_banner(&config, address, "http://sim", "http://x/ui/link/uil_t");
        assert!(!banner.contains(SANDBOX_APP_SECRET), "{banner}");
        assert!(
            banner.contains("the 1 app secret(s) of webhooks.apps"),
            "{banner}"
        );
        assert!(!banner.contains("app-two"), "{banner}");
    }
}
