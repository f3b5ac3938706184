//! `capi-relay crm …`: stage rules, Kommo integrations, and what became of stage changes.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::{DbArgs, VaultArgs, secret_from_env};
use crate::{
    crm::{
        self,
        kommo::{self, AddKommo, KommoClient, KommoClientConfig},
        rules::{self, NewRule},
    },
    tenancy::cli_actor,
};

#[derive(Debug, Subcommand)]
pub enum CrmCommand {
    /// Stage rules: which CRM stage becomes which event.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Kommo integrations.
    #[command(subcommand)]
    Kommo(KommoCommand),
    /// Per integration: last webhook, stage changes seen / produced / skipped by reason, API health.
    Status(StatusArgs),
    /// The latest stage changes and what became of each (newest first).
    Changes(ChangesArgs),
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Add a rule: (source, pipeline, stage) → event.
    Add(RuleAddArgs),
    /// List rules.
    List(RuleListArgs),
    /// Remove a rule by its id.
    Remove(RuleRemoveArgs),
}

#[derive(Debug, Args)]
pub struct RuleAddArgs {
    #[arg(long)]
    pub tenant: String,
    /// `kommo` or `generic`.
    #[arg(long)]
    pub source: String,
    /// A pipeline id, or `any` (Kommo's 142 won / 143 lost are the same in every pipeline).
    #[arg(long)]
    pub pipeline_id: String,
    #[arg(long)]
    pub stage_id: String,
    /// A business-messaging event name: Purchase, QualifiedLead, LeadSubmitted, …
    #[arg(long)]
    pub event: String,
    /// `deal` (the deal's amount), `none`, or a fixed amount such as 49.90.
    #[arg(long, default_value = "deal")]
    pub value: String,
    /// Currency for the value; else the change's, else the integration's.
    #[arg(long)]
    pub currency: Option<String>,
    /// Fire on every entry into the stage, not once per deal.
    #[arg(long)]
    pub every_time: bool,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct RuleListArgs {
    #[arg(long)]
    pub tenant: Option<String>,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct RuleRemoveArgs {
    #[arg(long)]
    pub tenant: String,
    pub id: i64,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Subcommand)]
pub enum KommoCommand {
    /// Add a Kommo account: checks the token, seals it, prints the webhook URL to paste.
    Add(KommoAddArgs),
    /// Replace the token (after Kommo refused it); waiting webhooks are then processed.
    SetToken(KommoSetTokenArgs),
    /// Send one pipeline's stage changes to another asset of the tenant (or back, `--remove`).
    SetPipelineAsset(KommoPipelineAssetArgs),
}

#[derive(Debug, Args)]
pub struct KommoPipelineAssetArgs {
    /// The integration's id (`kommo-…`).
    #[arg(long)]
    pub integration: String,
    /// The Kommo pipeline id.
    #[arg(long)]
    pub pipeline_id: String,
    /// The tenant's asset (WABA, Page, Instagram account) this pipeline's conversions go to.
    #[arg(long, required_unless_present = "remove", conflicts_with = "remove")]
    pub asset_id: Option<String>,
    /// Remove the override: the pipeline goes to the integration's `--asset-id` again.
    #[arg(long)]
    pub remove: bool,
    #[command(flatten)]
    pub db: DbArgs,
}

/// `PIPELINE_ID=ASSET_ID`.
fn pipeline_asset(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((p, a)) if !p.trim().is_empty() && !a.trim().is_empty() => {
            Ok((p.trim().to_owned(), a.trim().to_owned()))
        }
        _ => Err(format!("{s:?} is not PIPELINE_ID=ASSET_ID")),
    }
}

#[derive(Debug, Args)]
pub struct KommoAddArgs {
    #[arg(long)]
    pub tenant: String,
    /// The account's URL, e.g. https://acme.kommo.com
    #[arg(long)]
    pub base_url: String,
    /// Environment variable holding the private integration's long-lived token.
    #[arg(long)]
    pub token_env: String,
    /// The asset (WABA, Page, Instagram account) the leads' conversions go to.
    #[arg(long)]
    pub asset_id: String,
    /// A pipeline whose conversions go to another asset of the tenant: PIPELINE_ID=ASSET_ID
    /// (repeatable).
    #[arg(long = "pipeline-asset", value_name = "PIPELINE_ID=ASSET_ID", value_parser = pipeline_asset)]
    pub pipeline_assets: Vec<(String, String)>,
    /// The account's currency, used when a rule names none.
    #[arg(long)]
    pub currency: Option<String>,
    /// This relay's public URL, to print the full webhook URL.
    #[arg(
        long,
        env = "CAPI_RELAY_PUBLIC_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub public_url: String,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub vault: VaultArgs,
}

#[derive(Debug, Args)]
pub struct KommoSetTokenArgs {
    /// The integration's id (`kommo-…`).
    #[arg(long)]
    pub id: String,
    #[arg(long)]
    pub token_env: String,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub vault: VaultArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[arg(long)]
    pub tenant: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct ChangesArgs {
    #[arg(long)]
    pub tenant: String,
    /// `generic` or an integration id.
    #[arg(long)]
    pub integration: Option<String>,
    #[arg(long, default_value_t = 20)]
    pub limit: i64,
    #[command(flatten)]
    pub db: DbArgs,
}

fn print_rule(r: &relay_store::crm::CrmRule) {
    println!(
        "{:<5} {:<10} {:<8} pipeline={:<10} stage={:<10} → {:<14} value={}{}{}",
        r.id,
        r.tenant,
        r.source,
        r.pipeline_id,
        r.stage_id,
        r.event_name,
        r.value,
        r.currency
            .as_deref()
            .map(|c| format!(" currency={c}"))
            .unwrap_or_default(),
        if r.every_time {
            " every-time"
        } else {
            " once-per-deal"
        }
    );
}

pub async fn run(command: CrmCommand) -> anyhow::Result<ExitCode> {
    let actor = cli_actor();
    match command {
        CrmCommand::Rules(RulesCommand::Add(args)) => {
            let store = args.db.open().await?;
            let rule = NewRule {
                source: args.source,
                pipeline_id: args.pipeline_id,
                stage_id: args.stage_id,
                event: args.event,
                value: Some(args.value),
                currency: args.currency,
                every_time: args.every_time,
            };
            let stored = rules::add(store.as_ref(), &args.tenant, &rule, &actor).await?;
            print_rule(&stored);
        }
        CrmCommand::Rules(RulesCommand::List(args)) => {
            let store = args.db.open().await?;
            for r in rules::list(store.as_ref(), args.tenant.as_deref()).await? {
                print_rule(&r);
            }
        }
        CrmCommand::Rules(RulesCommand::Remove(args)) => {
            let store = args.db.open().await?;
            rules::remove(store.as_ref(), &args.tenant, args.id, &actor).await?;
            println!("rule {} removed", args.id);
        }
        CrmCommand::Kommo(KommoCommand::Add(args)) => {
            let store = args.db.open().await?;
            let vault = args.vault.load()?;
            let client = KommoClient::new(KommoClientConfig::default())?;
            let added = kommo::add(
                store.as_ref(),
                &vault,
                &client,
                AddKommo {
                    tenant: args.tenant,
                    base_url: args.base_url,
                    token: secret_from_env(&args.token_env)?,
                    asset_id: args.asset_id,
                    pipeline_assets: args.pipeline_assets,
                    currency: args.currency,
                },
                &actor,
            )
            .await?;
            let i = &added.integration;
            println!(
                "Kommo integration {} added: account {} ({}), events to asset {}",
                i.id, i.account_id, i.subdomain, i.asset_id
            );
            for (pipeline, asset) in &i.pipeline_assets {
                println!("  pipeline {pipeline} → asset {asset}");
            }
            println!(
                "webhook URL (shown once; paste it in Kommo → Settings → Integrations → Web hooks, events \
                 \"lead status changed\", \"lead added\", \"lead edited\", \"lead deleted\"):"
            );
            println!(
                "  {}{}",
                args.public_url.trim_end_matches('/'),
                added.webhook_path
            );
        }
        CrmCommand::Kommo(KommoCommand::SetToken(args)) => {
            let store = args.db.open().await?;
            let vault = args.vault.load()?;
            let client = KommoClient::new(KommoClientConfig::default())?;
            let token = secret_from_env(&args.token_env)?;
            kommo::set_token(store.as_ref(), &vault, &client, &args.id, &token, &actor).await?;
            println!("token of {} replaced; the integration is active", args.id);
        }
        CrmCommand::Kommo(KommoCommand::SetPipelineAsset(args)) => {
            let store = args.db.open().await?;
            let asset = args.asset_id.as_deref().filter(|_| !args.remove);
            let i = kommo::set_pipeline_asset(
                store.as_ref(),
                &args.integration,
                &args.pipeline_id,
                asset,
                &actor,
            )
            .await?;
            match asset {
                Some(a) => println!("{}: pipeline {} → asset {a}", i.id, args.pipeline_id.trim()),
                None => println!(
                    "{}: pipeline {} → the integration's asset {}",
                    i.id,
                    args.pipeline_id.trim(),
                    i.asset_id
                ),
            }
        }
        CrmCommand::Status(args) => {
            let store = args.db.open().await?;
            crate::tenancy::get_tenant(store.as_ref(), &args.tenant).await?;
            let status = crm::status(store.as_ref(), &args.tenant).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&status)?);
                return Ok(ExitCode::SUCCESS);
            }
            for s in status {
                let outcomes: Vec<String> = s
                    .counts
                    .by_outcome
                    .iter()
                    .map(|(o, n)| format!("{o}={n}"))
                    .collect();
                println!(
                    "{} ({}) health={} seen={} repeats={} {} webhooks pending={} failed={}",
                    s.integration,
                    s.kind,
                    s.health,
                    s.counts.seen,
                    s.counts.repeats,
                    outcomes.join(" "),
                    s.counts.webhooks_pending,
                    s.counts.webhooks_failed
                );
                if let Some(d) = s.details {
                    let overrides: String = d
                        .pipeline_assets
                        .iter()
                        .map(|(p, a)| format!(" pipeline {p} → asset {a}"))
                        .collect();
                    println!(
                        "    account {} ({}) asset {}{} last webhook {} status {}{}{}",
                        d.account_id,
                        d.subdomain,
                        d.asset_id,
                        overrides,
                        d.last_webhook_at_ms
                            .map_or("never".into(), |t| t.to_string()),
                        d.status,
                        d.status_reason
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default(),
                        d.api_error
                            .map(|e| format!(" | last API error: {e}"))
                            .unwrap_or_default()
                    );
                }
            }
        }
        CrmCommand::Changes(args) => {
            let store = args.db.open().await?;
            for c in store
                .list_stage_changes(&args.tenant, args.integration.as_deref(), args.limit)
                .await?
            {
                println!(
                    "{:<20} deal={:<12} pipeline={:<10} stage={:<10} {:<15} {} {}",
                    c.integration,
                    c.deal_id,
                    c.pipeline_id,
                    c.stage_id,
                    c.outcome,
                    c.event_id.unwrap_or_default(),
                    c.detail.unwrap_or_default()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
