//! The `capi-relay` command line. Each subcommand lives in its own module and returns an exit
//! code; errors that stop a command are printed once, here.

mod assets;
mod audit;
mod bench;
mod bench_dashboard;
mod bench_partner;
mod bench_relay;
mod capture;
mod crm;
mod dead_letters;
mod import;
mod keys;
mod send;
mod serve;
mod simulate;
mod tenants;
mod ui_link;
mod validate;

use std::{process::ExitCode, sync::Arc, time::Duration};

use clap::{Args, Parser, Subcommand};
use relay_core::{ValidationOptions, pii::PhoneRegion};
use secrecy::SecretString;

use crate::{
    delivery::{GraphConfig, graph_client},
    telemetry::{self, LogFormat},
};

/// Relay conversions from click-to-WhatsApp, Messenger and Instagram chats to Meta's
/// Conversions API for Business Messaging.
#[derive(Debug, Parser)]
#[command(name = "capi-relay", version, propagate_version = true)]
pub struct Cli {
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty, env = "CAPI_RELAY_LOG_FORMAT")]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay: HTTP API, durable outbox and delivery workers.
    Serve(serve::ServeArgs),
    /// Apply database migrations (serve also applies them at start).
    Migrate(DbArgs),
    /// Manage tenants: the client businesses of this relay.
    #[command(subcommand)]
    Tenants(tenants::TenantsCommand),
    /// Manage business assets (WABA, Page, Instagram account): onboarding, datasets, tokens.
    #[command(subcommand)]
    Assets(assets::AssetsCommand),
    /// Tenant API keys and the master key that seals the stored tokens.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Show the audit trail of admin actions.
    Audit(audit::AuditArgs),
    /// List or replay dead letters.
    #[command(subcommand)]
    DeadLetters(dead_letters::DeadLettersCommand),
    /// Webhook capture: per-asset switches, captured contacts and stored webhooks.
    #[command(subcommand)]
    Capture(capture::CaptureCommand),
    /// CRM stage automation: stage rules, Kommo, what became of stage changes.
    #[command(subcommand)]
    Crm(crm::CrmCommand),
    /// Backfill conversions from a CSV or JSON Lines file into the outbox (through the same
    /// validation and deduplication as the API); a per-row report file.
    Import(import::ImportArgs),
    /// Check events offline: every error and warning, with line numbers. Exit code 1 on errors.
    Validate(validate::ValidateArgs),
    /// Validate events and send them to a dataset, 1,000 per request; print Meta's answers.
    Send(send::SendArgs),
    /// Run the Graph API simulator (Meta's /events and Dataset API, with fault injection).
    SimulateGraph(simulate::SimulateArgs),
    /// Print a one-time dashboard login link for a tenant (to hand to an advertiser).
    UiLink(ui_link::UiLinkArgs),
    /// Measure performance and print the figures.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// Options that change what validation accepts; shared by every command that validates.
#[derive(Debug, Clone, Args)]
pub struct ValidationArgs {
    /// Send event names other than Meta's 14 business-messaging names (with a warning).
    #[arg(long, env = "CAPI_RELAY_ALLOW_CUSTOM_EVENT_NAMES")]
    pub allow_custom_event_names: bool,

    /// Region (ISO 3166 alpha-2, e.g. BR) for phone numbers written without a country code.
    #[arg(long, env = "CAPI_RELAY_DEFAULT_PHONE_REGION")]
    pub default_phone_region: Option<PhoneRegion>,
}

impl ValidationArgs {
    pub fn options(&self) -> ValidationOptions {
        ValidationOptions {
            allow_custom_event_names: self.allow_custom_event_names,
            default_phone_region: self.default_phone_region,
            ..ValidationOptions::default()
        }
    }
}

/// The database of commands that read or change the relay's state.
#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// sqlite://PATH or postgres://…
    #[arg(
        long,
        env = "CAPI_RELAY_DATABASE_URL",
        default_value = "sqlite://capi-relay.db"
    )]
    pub database_url: String,
}

impl DbArgs {
    /// Opens the database and applies migrations.
    pub async fn open(&self) -> anyhow::Result<Arc<dyn relay_store::Store>> {
        let store = relay_store::connect(&self.database_url).await?;
        store.migrate().await?;
        Ok(store)
    }
}

/// Where the master key is, for commands that seal or open access tokens.
#[derive(Debug, Clone, Args)]
pub struct VaultArgs {
    /// File holding the master key (base64 of 32 bytes). CAPI_RELAY_MASTER_KEY, if set, is used
    /// instead; with neither, ./capi-relay.key (created on first use).
    #[arg(long, env = "CAPI_RELAY_MASTER_KEY_FILE")]
    pub master_key_file: Option<std::path::PathBuf>,
}

impl VaultArgs {
    pub fn load(&self) -> anyhow::Result<crate::vault::MasterKey> {
        let inline = secret_from_env(crate::vault::MASTER_KEY_ENV).ok();
        let (key, _) =
            crate::vault::load_master_key(inline.as_ref(), self.master_key_file.as_deref())?;
        Ok(key)
    }
}

/// Where an access token comes from: never a command-line argument, which other users of the
/// machine can read in the process list and which shells keep in their history.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct TokenArgs {
    /// Name of the environment variable holding the access token.
    #[arg(long)]
    pub access_token_env: Option<String>,
    /// File holding the access token.
    #[arg(long)]
    pub access_token_file: Option<std::path::PathBuf>,
    /// Read the access token from standard input.
    #[arg(long)]
    pub access_token_stdin: bool,
}

impl TokenArgs {
    pub fn read(&self) -> anyhow::Result<SecretString> {
        let text = if let Some(var) = &self.access_token_env {
            return secret_from_env(var);
        } else if let Some(path) = &self.access_token_file {
            std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?
        } else {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
            text
        };
        let token = text.trim();
        anyhow::ensure!(!token.is_empty(), "the access token is empty");
        Ok(SecretString::from(token.to_owned()))
    }
}

/// Where the Graph API is; shared by every command that calls Meta.
#[derive(Debug, Clone, Args)]
pub struct GraphArgs {
    /// Graph API base URL (the simulator's address for tests and sandbox runs).
    #[arg(long, env = "CAPI_RELAY_GRAPH_URL", default_value = graph_client::DEFAULT_GRAPH_URL)]
    pub graph_url: String,

    /// Graph API version.
    #[arg(long, env = "CAPI_RELAY_GRAPH_API_VERSION", default_value = graph_client::DEFAULT_API_VERSION)]
    pub graph_api_version: String,

    /// Partner string Meta assigned to you, sent as `partner_agent`.
    #[arg(long, env = "CAPI_RELAY_PARTNER_AGENT")]
    pub partner_agent: Option<String>,

    /// Seconds to wait for Meta's answer to one request.
    #[arg(long, default_value_t = 30)]
    pub graph_timeout_secs: u64,
}

/// Environment variable holding the Meta app secret (for `appsecret_proof` and webhooks).
pub const APP_SECRET_ENV: &str = "CAPI_RELAY_META_APP_SECRET";

impl GraphArgs {
    pub fn config(&self) -> GraphConfig {
        GraphConfig {
            base_url: self.graph_url.clone(),
            api_version: self.graph_api_version.clone(),
            request_timeout: Duration::from_secs(self.graph_timeout_secs),
            partner_agent: self.partner_agent.clone(),
            app_secret: secret_from_env(APP_SECRET_ENV).ok(),
            ..GraphConfig::default()
        }
    }
}

/// Reads a secret from the named environment variable; the error names the variable only.
pub fn secret_from_env(var: &str) -> anyhow::Result<SecretString> {
    match std::env::var(var) {
        Ok(value) if !value.trim().is_empty() => Ok(SecretString::from(value.trim().to_owned())),
        Ok(_) => anyhow::bail!("environment variable {var} is empty"),
        Err(_) => anyhow::bail!("environment variable {var} is not set"),
    }
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format, "info");
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::serve(args).await,
            Command::Migrate(args) => serve::migrate(args).await,
            Command::Tenants(command) => tenants::run(command).await,
            Command::Assets(command) => assets::run(command).await,
            Command::Keys(command) => keys::run(command).await,
            Command::Audit(args) => audit::run(args).await,
            Command::DeadLetters(command) => dead_letters::run(command).await,
            Command::Capture(command) => capture::run(command).await,
            Command::Crm(command) => crm::run(command).await,
            Command::Import(args) => import::run(args).await,
            Command::Validate(args) => validate::run(args),
            Command::Send(args) => send::run(args).await,
            Command::SimulateGraph(args) => simulate::run(args).await,
            Command::UiLink(args) => ui_link::run(args).await,
            Command::Bench(command) => bench::run(command).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
