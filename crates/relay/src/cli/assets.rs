//! `capi-relay assets …`: the registry of business assets, their datasets and tokens.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use relay_core::Channel;
use relay_store::{Asset, AssetStatus};
use secrecy::ExposeSecret;

use super::{DbArgs, secret_from_env};
use crate::delivery::worker::now_ms;

#[derive(Debug, Subcommand)]
pub enum AssetsCommand {
    /// Register (or replace) an asset: its channel, dataset and access token.
    Add(AddArgs),
    /// List assets with their status. Tokens are never printed.
    List(DbArgs),
    /// Replace an asset's token; a paused asset resumes and its held events are delivered.
    SetToken(SetTokenArgs),
}

#[derive(Debug, Args)]
pub struct AddArgs {
    #[arg(long, value_parser = parse_channel)]
    pub channel: Channel,
    /// WhatsApp Business Account id, Page id or Instagram account id.
    #[arg(long)]
    pub asset_id: String,
    /// Dataset that receives this asset's events.
    #[arg(long)]
    pub dataset_id: String,
    /// Name of the environment variable holding the access token.
    #[arg(long)]
    pub access_token_env: String,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct SetTokenArgs {
    #[arg(long)]
    pub asset_id: String,
    /// Name of the environment variable holding the new access token.
    #[arg(long)]
    pub access_token_env: String,
    #[command(flatten)]
    pub db: DbArgs,
}

fn parse_channel(s: &str) -> Result<Channel, String> {
    s.parse()
}

fn numeric(what: &str, id: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()),
        "{what} {id:?} must be a numeric Meta id"
    );
    Ok(())
}

pub async fn run(command: AssetsCommand) -> anyhow::Result<ExitCode> {
    match command {
        AssetsCommand::Add(args) => {
            numeric("--asset-id", &args.asset_id)?;
            numeric("--dataset-id", &args.dataset_id)?;
            let token = secret_from_env(&args.access_token_env)?;
            let store = args.db.open().await?;
            let now = now_ms();
            let created_at_ms = store
                .get_asset(&args.asset_id)
                .await?
                .map_or(now, |a| a.created_at_ms);
            store
                .upsert_asset(&Asset {
                    channel: args.channel.as_str().into(),
                    asset_id: args.asset_id.clone(),
                    dataset_id: args.dataset_id.clone(),
                    access_token: token.expose_secret().to_owned(),
                    status: AssetStatus::Active,
                    status_reason: None,
                    created_at_ms,
                    updated_at_ms: now,
                })
                .await?;
            println!(
                "asset {} ({}) → dataset {}: active",
                args.asset_id, args.channel, args.dataset_id
            );
        }
        AssetsCommand::List(db) => {
            let store = db.open().await?;
            let assets = store.list_assets().await?;
            if assets.is_empty() {
                println!("no assets; add one with `capi-relay assets add`");
            }
            println!(
                "{:<10} {:<20} {:<20} {:<8} reason",
                "channel", "asset_id", "dataset_id", "status"
            );
            for a in assets {
                let status = match a.status {
                    AssetStatus::Active => "active",
                    AssetStatus::Paused => "PAUSED",
                };
                println!(
                    "{:<10} {:<20} {:<20} {:<8} {}",
                    a.channel,
                    a.asset_id,
                    a.dataset_id,
                    status,
                    a.status_reason.unwrap_or_default()
                );
            }
        }
        AssetsCommand::SetToken(args) => {
            let token = secret_from_env(&args.access_token_env)?;
            let store = args.db.open().await?;
            store
                .set_asset_token(&args.asset_id, token.expose_secret(), now_ms())
                .await?;
            println!("asset {}: token updated, deliveries resumed", args.asset_id);
        }
    }
    Ok(ExitCode::SUCCESS)
}
