//! `capi-relay tenants …`: the client businesses of this relay.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use relay_store::AssetStatus;

use super::{DbArgs, assets::print_test_code};
use crate::tenancy::{self, cli_actor};

#[derive(Debug, Subcommand)]
pub enum TenantsCommand {
    /// Create a tenant.
    Add(AddArgs),
    /// List tenants.
    List(DbArgs),
    /// Show a tenant: its assets with their status, its API keys (never the keys themselves).
    Show(ShowArgs),
    /// Set or clear the tenant's test_event_code (Meta counts test events apart).
    SetTestCode(SetTestCodeArgs),
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// Lower-case letters, digits, '-' or '_'.
    pub name: String,
    /// Send every event of this tenant as a test event.
    #[arg(long)]
    pub test_event_code: Option<String>,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    pub name: String,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct SetTestCodeArgs {
    pub name: String,
    /// The code from Events Manager's Test events tab.
    #[arg(long, required_unless_present = "clear")]
    pub test_event_code: Option<String>,
    /// Stop sending test events.
    #[arg(long, conflicts_with = "test_event_code")]
    pub clear: bool,
    #[command(flatten)]
    pub db: DbArgs,
}

pub async fn run(command: TenantsCommand) -> anyhow::Result<ExitCode> {
    let actor = cli_actor();
    match command {
        TenantsCommand::Add(args) => {
            let store = args.db.open().await?;
            let tenant = tenancy::create_tenant(
                store.as_ref(),
                &args.name,
                args.test_event_code.as_deref(),
                &actor,
            )
            .await?;
            println!("tenant {} created", tenant.name);
            print_test_code(tenant.test_event_code.as_deref());
            println!(
                "next: `capi-relay assets onboard --tenant {} …` and `capi-relay keys create --tenant {}`",
                tenant.name, tenant.name
            );
        }
        TenantsCommand::List(db) => {
            let store = db.open().await?;
            let assets = store.list_assets().await?;
            println!("{:<20} {:>6} {:>7} notes", "tenant", "assets", "paused");
            for t in store.list_tenants().await? {
                let own: Vec<_> = assets.iter().filter(|a| a.tenant == t.name).collect();
                let paused = own
                    .iter()
                    .filter(|a| a.status == AssetStatus::Paused)
                    .count();
                let note = t
                    .test_event_code
                    .map(|c| format!("TEST EVENTS ({c})"))
                    .unwrap_or_default();
                println!("{:<20} {:>6} {:>7} {note}", t.name, own.len(), paused);
            }
        }
        TenantsCommand::Show(args) => {
            let store = args.db.open().await?;
            let o = tenancy::tenant_overview(store.as_ref(), &args.name).await?;
            println!("tenant:  {}", o.tenant.name);
            println!("health:  {}", o.health);
            print_test_code(o.tenant.test_event_code.as_deref());
            println!("assets:");
            if o.assets.is_empty() {
                println!(
                    "  none; onboard one with `capi-relay assets onboard --tenant {}`",
                    o.tenant.name
                );
            }
            for a in &o.assets {
                let status = match a.status {
                    AssetStatus::Active => "active".to_owned(),
                    AssetStatus::Paused => format!(
                        "PAUSED: {} (fix with `capi-relay assets set-token --asset-id {}`)",
                        a.status_reason.as_deref().unwrap_or("no reason recorded"),
                        a.asset_id
                    ),
                };
                println!(
                    "  {:<10} {:<20} dataset {:<20} {status}",
                    a.channel, a.asset_id, a.dataset_id
                );
                if let Some(code) = &a.test_event_code {
                    println!("             TEST EVENTS ({code})");
                }
            }
            println!("API keys:");
            for k in &o.keys {
                let state = if k.revoked_at_ms.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                let assets = k
                    .assets
                    .as_ref()
                    .map_or("all assets".to_owned(), |a| a.join(","));
                println!(
                    "  {:<18} {:<8} {:<24} {}",
                    k.id,
                    state,
                    assets,
                    k.label.as_deref().unwrap_or("")
                );
            }
        }
        TenantsCommand::SetTestCode(args) => {
            let store = args.db.open().await?;
            let code = if args.clear {
                None
            } else {
                args.test_event_code.as_deref()
            };
            tenancy::set_test_event_code(store.as_ref(), &args.name, code, &actor).await?;
            match code {
                Some(_) => print_test_code(code),
                None => println!("tenant {}: test events off", args.name),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
