//! `capi-relay capture …`: per-asset capture switches, the contacts and webhooks captured, and
//! failed deliveries queued again.

use std::{process::ExitCode, time::Duration};

use clap::{Args, Subcommand};
use relay_core::Channel;
use relay_store::capture::ReprocessFilter;

use super::DbArgs;
use crate::{capture::Capture, clock::now_ms, config::Config};

#[derive(Debug, Subcommand)]
pub enum CaptureCommand {
    /// Show or change an asset's capture switches.
    Options(OptionsArgs),
    /// Show a captured contact and its ad touches.
    Show(ShowArgs),
    /// List stored webhook deliveries, newest first.
    Webhooks(WebhooksArgs),
    /// Queue failed webhook deliveries again; a running relay processes them at once. Needs
    /// --id, --since or --all.
    Reprocess(ReprocessArgs),
}

#[derive(Debug, Args)]
pub struct ReprocessArgs {
    /// Only this delivery (repeatable; ids as `capture webhooks` lists them).
    #[arg(long = "id")]
    pub ids: Vec<i64>,
    /// Only deliveries received within this long before now (e.g. `2h`, `3days`).
    #[arg(long, value_parser = humantime_serde::re::humantime::parse_duration)]
    pub since: Option<Duration>,
    /// Every failed delivery.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct OptionsArgs {
    #[arg(long)]
    pub asset_id: String,
    /// Send WhatsApp conversions by contact without a click id with the hashed phone only.
    #[arg(long)]
    pub allow_unattributed: Option<bool>,
    /// Report Meta-detected automatic events (WhatsApp) to the asset's dataset.
    #[arg(long)]
    pub automatic_events: Option<bool>,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[arg(long, value_parser = |s: &str| s.parse::<Channel>())]
    pub channel: Channel,
    #[arg(long)]
    pub asset_id: String,
    /// Phone, wa_id, user id, PSID, IGSID, conversation id or customer id (or `kind:value`).
    pub customer: String,
    /// Region for a phone number written without a country code.
    #[arg(long, env = "CAPI_RELAY_DEFAULT_PHONE_REGION")]
    pub default_phone_region: Option<String>,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct WebhooksArgs {
    /// Only `pending`, `processed` or `failed` (not understood, or an automatic event in it
    /// refused or too old: the error says which).
    #[arg(long)]
    pub state: Option<String>,
    #[arg(long, default_value_t = 20)]
    pub limit: i64,
    #[command(flatten)]
    pub db: DbArgs,
}

pub async fn run(command: CaptureCommand) -> anyhow::Result<ExitCode> {
    match command {
        CaptureCommand::Options(args) => {
            let store = args.db.open().await?;
            let mut options = store.capture_options(&args.asset_id).await?;
            if args.allow_unattributed.is_some() || args.automatic_events.is_some() {
                options.allow_unattributed = args
                    .allow_unattributed
                    .unwrap_or(options.allow_unattributed);
                options.automatic_events =
                    args.automatic_events.unwrap_or(options.automatic_events);
                store
                    .set_capture_options(&args.asset_id, &options, now_ms())
                    .await?;
            }
            println!(
                "asset {}: allow_unattributed = {}, automatic_events = {}",
                args.asset_id, options.allow_unattributed, options.automatic_events
            );
        }
        CaptureCommand::Show(args) => {
            let store = args.db.open().await?;
            let config = Config {
                default_phone_region: args.default_phone_region,
                ..Config::default()
            };
            config.validate()?;
            let capture = Capture::new(store, &config);
            let Some(contact) = capture
                .find_contact(args.channel, &args.asset_id, &args.customer)
                .await?
            else {
                println!("no such contact");
                return Ok(ExitCode::from(1));
            };
            let touches = capture.touches(&contact).await?;
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &serde_json::json!({"contact": contact, "touches": touches})
                )?
            );
        }
        CaptureCommand::Reprocess(args) => {
            anyhow::ensure!(
                !args.ids.is_empty() || args.since.is_some() || args.all,
                "name --id or --since, or pass --all to reprocess every failed delivery"
            );
            let store = args.db.open().await?;
            let filter = ReprocessFilter {
                ids: args.ids,
                since_ms: args
                    .since
                    .map(|d| now_ms().saturating_sub(d.as_millis() as i64)),
            };
            let done = store.requeue_failed_webhooks(&filter).await?;
            println!(
                "{} failed deliveries queued again; a running relay processes them",
                done.requeued
            );
            if done.without_body > 0 {
                println!(
                    "{} more cannot be: their raw body was removed after webhooks.failed_body_retention",
                    done.without_body
                );
            }
        }
        CaptureCommand::Webhooks(args) => {
            let store = args.db.open().await?;
            for w in store
                .list_webhooks(args.state.as_deref(), args.limit)
                .await?
            {
                println!(
                    "{:<8} {:<14} {:<10} tries={:<2} forward={:<8} {}",
                    w.id,
                    w.received_at_ms,
                    w.state,
                    w.attempts,
                    w.forward_state.unwrap_or_else(|| "-".into()),
                    w.error.unwrap_or_default()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
