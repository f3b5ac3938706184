//! `capi-relay keys …`: tenant API keys, and the master key that seals stored tokens.

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Subcommand};
use secrecy::ExposeSecret;

use super::{DbArgs, VaultArgs, secret_from_env};
use crate::{
    tenancy::{self, cli_actor},
    vault::MasterKey,
};

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create an API key for a tenant. The key is printed once; only its hash is stored.
    Create(CreateArgs),
    /// List API keys (ids, tenants, limits; never the keys).
    List(ListArgs),
    /// Revoke an API key by its id (`key_…`).
    Revoke(RevokeArgs),
    /// Print a new random master key (base64), for CAPI_RELAY_MASTER_KEY or a key file.
    GenerateMaster,
    /// Re-seal every stored token under a new master key, in one transaction.
    RotateMaster(RotateArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[arg(long)]
    pub tenant: String,
    /// A note for people (e.g. "crm production").
    #[arg(long)]
    pub label: Option<String>,
    /// Limit the key to these assets of the tenant (repeat the flag); all assets otherwise.
    #[arg(long = "asset")]
    pub assets: Vec<String>,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long)]
    pub tenant: Option<String>,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    pub id: String,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
#[group(id = "new_key", required = true, multiple = false, args = ["new_key_env", "new_key_file"])]
pub struct RotateArgs {
    /// Environment variable holding the new master key.
    #[arg(long)]
    pub new_key_env: Option<String>,
    /// File holding the new master key.
    #[arg(long)]
    pub new_key_file: Option<PathBuf>,
    /// The current key (CAPI_RELAY_MASTER_KEY / CAPI_RELAY_MASTER_KEY_FILE / ./capi-relay.key).
    #[command(flatten)]
    pub vault: VaultArgs,
    #[command(flatten)]
    pub db: DbArgs,
}

pub async fn run(command: KeysCommand) -> anyhow::Result<ExitCode> {
    let actor = cli_actor();
    match command {
        KeysCommand::Create(args) => {
            let store = args.db.open().await?;
            let assets = (!args.assets.is_empty()).then_some(args.assets);
            let new = tenancy::create_key(store.as_ref(), &args.tenant, args.label, assets, &actor)
                .await?;
            eprintln!(
                "API key {} for tenant {} (shown once; store it now):",
                new.record.id, new.record.tenant
            );
            println!("{}", new.key.expose_secret());
        }
        KeysCommand::List(args) => {
            let store = args.db.open().await?;
            println!(
                "{:<18} {:<16} {:<8} {:<24} label",
                "id", "tenant", "state", "assets"
            );
            for k in store.list_api_keys(args.tenant.as_deref()).await? {
                let state = if k.revoked_at_ms.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                let assets = k.assets.map_or("all".to_owned(), |a| a.join(","));
                println!(
                    "{:<18} {:<16} {:<8} {:<24} {}",
                    k.id,
                    k.tenant,
                    state,
                    assets,
                    k.label.unwrap_or_default()
                );
            }
        }
        KeysCommand::Revoke(args) => {
            let store = args.db.open().await?;
            let key = tenancy::revoke_key(store.as_ref(), &args.id, &actor).await?;
            println!(
                "API key {} of tenant {} revoked (running relays refuse it within a second)",
                key.id, key.tenant
            );
        }
        KeysCommand::GenerateMaster => {
            let key = MasterKey::generate();
            eprintln!(
                "new master key {} (keep it secret and backed up):",
                key.id()
            );
            println!("{}", key.encode().expose_secret());
        }
        KeysCommand::RotateMaster(args) => {
            let old = args.vault.load()?;
            let new = match (&args.new_key_env, &args.new_key_file) {
                (Some(var), _) => MasterKey::parse(secret_from_env(var)?.expose_secret())?,
                (None, Some(path)) => MasterKey::read_file(path)?,
                (None, None) => unreachable!("clap requires one of the two"),
            };
            anyhow::ensure!(
                old.id() != new.id(),
                "the new master key is the current one ({})",
                old.id()
            );
            let store = args.db.open().await?;
            let count = tenancy::rotate_master_key(store.as_ref(), &old, &new, &actor).await?;
            println!(
                "{count} tokens re-sealed from master key {} to {}. Restart every relay with the new key now: until then they cannot open the tokens and hold deliveries.",
                old.id(),
                new.id()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
