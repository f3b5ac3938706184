//! `capi-relay assets …`: onboarding business assets, their datasets and sealed tokens.

use std::{process::ExitCode, sync::Arc};

use clap::{Args, Subcommand};
use relay_core::Channel;
use relay_store::{AssetStatus, DEFAULT_TENANT};

use super::{DbArgs, GraphArgs, TokenArgs, VaultArgs};
use crate::{
    delivery::GraphClient,
    tenancy::{self, AdminContext, AssetSpec, OnboardRequest, cli_actor},
};

#[derive(Debug, Subcommand)]
pub enum AssetsCommand {
    /// Onboard an asset the way Meta's guide describes: create-or-get its dataset through the
    /// Dataset API, then register it with its token. Safe to run again.
    Onboard(OnboardArgs),
    /// Register (or replace) an asset with a dataset id you already have.
    Add(AddArgs),
    /// List assets with their tenant, dataset and status. Tokens are never printed.
    List(ListArgs),
    /// Replace an asset's token; a paused asset resumes and its held events are delivered.
    SetToken(SetTokenArgs),
    /// Resume a paused asset with the token it has, once its access was fixed in Meta's
    /// Business Manager (a new token is set with `set-token`, which resumes too).
    Resume(ResumeArgs),
}

#[derive(Debug, Args)]
pub struct ResumeArgs {
    #[arg(long)]
    pub asset_id: String,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct OnboardArgs {
    /// Tenant that owns the asset.
    #[arg(long, default_value = DEFAULT_TENANT)]
    pub tenant: String,
    #[arg(long, value_parser = parse_channel)]
    pub channel: Channel,
    /// WhatsApp Business Account id, Page id or Instagram account id.
    #[arg(long)]
    pub asset_id: String,
    /// Reuse this existing dataset instead of asking the Dataset API.
    #[arg(long)]
    pub dataset_id: Option<String>,
    /// Name of the dataset if Meta creates one.
    #[arg(long)]
    pub dataset_name: Option<String>,
    /// Send this asset's events as test events (shown in Events Manager's Test events tab).
    #[arg(long)]
    pub test_event_code: Option<String>,
    #[command(flatten)]
    pub token: TokenArgs,
    #[command(flatten)]
    pub graph: GraphArgs,
    #[command(flatten)]
    pub vault: VaultArgs,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// Tenant that owns the asset.
    #[arg(long, default_value = DEFAULT_TENANT)]
    pub tenant: String,
    #[arg(long, value_parser = parse_channel)]
    pub channel: Channel,
    /// WhatsApp Business Account id, Page id or Instagram account id.
    #[arg(long)]
    pub asset_id: String,
    /// Dataset that receives this asset's events.
    #[arg(long)]
    pub dataset_id: String,
    /// Send this asset's events as test events.
    #[arg(long)]
    pub test_event_code: Option<String>,
    #[command(flatten)]
    pub token: TokenArgs,
    #[command(flatten)]
    pub vault: VaultArgs,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this tenant's assets.
    #[arg(long)]
    pub tenant: Option<String>,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct SetTokenArgs {
    #[arg(long)]
    pub asset_id: String,
    #[command(flatten)]
    pub token: TokenArgs,
    #[command(flatten)]
    pub vault: VaultArgs,
    #[command(flatten)]
    pub db: DbArgs,
}

fn parse_channel(s: &str) -> Result<Channel, String> {
    s.parse()
}

pub async fn run(command: AssetsCommand) -> anyhow::Result<ExitCode> {
    let actor = cli_actor();
    match command {
        AssetsCommand::Onboard(args) => {
            let token = args.token.read()?;
            let vault = Arc::new(args.vault.load()?);
            let store = args.db.open().await?;
            let ctx = AdminContext {
                store,
                vault,
                graph: GraphClient::new(args.graph.config())?,
            };
            let request = OnboardRequest {
                tenant: args.tenant,
                channel: args.channel,
                asset_id: args.asset_id,
                token,
                dataset_id: args.dataset_id,
                dataset_name: args.dataset_name,
                test_event_code: args.test_event_code,
            };
            let report = tenancy::onboard(&ctx, request, &actor).await?;
            let a = &report.asset;
            let source = match report.dataset_source {
                "given" => "the dataset you gave",
                _ => "Meta's Dataset API (create-or-get)",
            };
            println!(
                "asset {} ({}) of tenant {} → dataset {} from {source}: active",
                a.asset_id, a.channel, a.tenant, a.dataset_id
            );
            if report.already_registered {
                println!("  the asset was already registered; its token was replaced");
            }
            if let Some(previous) = &report.previous_dataset_id {
                println!("  NOTE: the asset used dataset {previous} before");
            }
            print_test_code(a.test_event_code.as_deref());
        }
        AssetsCommand::Add(args) => {
            let token = args.token.read()?;
            let vault = args.vault.load()?;
            let store = args.db.open().await?;
            let spec = AssetSpec {
                tenant: args.tenant,
                channel: args.channel,
                asset_id: args.asset_id,
                dataset_id: args.dataset_id,
                token,
                test_event_code: args.test_event_code,
            };
            let a = tenancy::add_asset(store.as_ref(), &vault, spec, &actor, "asset.add").await?;
            println!(
                "asset {} ({}) of tenant {} → dataset {}: active",
                a.asset_id, a.channel, a.tenant, a.dataset_id
            );
            print_test_code(a.test_event_code.as_deref());
        }
        AssetsCommand::List(args) => {
            let store = args.db.open().await?;
            let assets: Vec<_> = store
                .list_assets()
                .await?
                .into_iter()
                .filter(|a| args.tenant.as_ref().is_none_or(|t| *t == a.tenant))
                .collect();
            if assets.is_empty() {
                println!("no assets; onboard one with `capi-relay assets onboard`");
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<16} {:<10} {:<20} {:<20} {:<8} notes",
                "tenant", "channel", "asset_id", "dataset_id", "status"
            );
            for a in assets {
                let status = match a.status {
                    AssetStatus::Active => "active",
                    AssetStatus::Paused => "PAUSED",
                };
                let mut notes = Vec::new();
                if let Some(code) = &a.test_event_code {
                    notes.push(format!("TEST EVENTS ({code})"));
                }
                if let Some(reason) = &a.status_reason {
                    notes.push(reason.clone());
                }
                println!(
                    "{:<16} {:<10} {:<20} {:<20} {:<8} {}",
                    a.tenant,
                    a.channel,
                    a.asset_id,
                    a.dataset_id,
                    status,
                    notes.join("; ")
                );
            }
        }
        AssetsCommand::SetToken(args) => {
            let token = args.token.read()?;
            let vault = args.vault.load()?;
            let store = args.db.open().await?;
            let a =
                tenancy::set_token(store.as_ref(), &vault, &args.asset_id, &token, None, &actor)
                    .await?;
            println!(
                "asset {} of tenant {}: token updated, deliveries resumed",
                a.asset_id, a.tenant
            );
        }
        AssetsCommand::Resume(args) => {
            let store = args.db.open().await?;
            let (a, resumed) =
                tenancy::resume_asset(store.as_ref(), &args.asset_id, None, &actor).await?;
            if resumed {
                println!(
                    "asset {} of tenant {}: deliveries resumed with its current token",
                    a.asset_id, a.tenant
                );
            } else {
                println!(
                    "asset {} of tenant {}: was not paused",
                    a.asset_id, a.tenant
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Test events are counted apart by Meta, so an active code is said loudly.
pub fn print_test_code(code: Option<&str>) {
    if let Some(code) = code {
        println!(
            "  TEST EVENTS: events are sent with test_event_code {code}; they appear only in Events Manager's Test events tab"
        );
    }
}
