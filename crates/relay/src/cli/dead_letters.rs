//! `capi-relay dead-letters list|replay`.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use relay_store::DeadLetterFilter;

use super::DbArgs;
use crate::clock::now_ms;

#[derive(Debug, Subcommand)]
pub enum DeadLettersCommand {
    /// Dead letters, newest first, with Meta's reason.
    List(Selector),
    /// Put dead letters back in the queue. Needs --event-id, --dataset-id, --asset-id or --all.
    Replay(Selector),
}

#[derive(Debug, Args)]
pub struct Selector {
    /// Only this event (repeatable).
    #[arg(long = "event-id")]
    pub event_ids: Vec<String>,
    #[arg(long)]
    pub dataset_id: Option<String>,
    #[arg(long)]
    pub asset_id: Option<String>,
    /// Only this tenant's dead letters.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Every dead letter (replay only).
    #[arg(long)]
    pub all: bool,
    /// Most dead letters to list.
    #[arg(long, default_value_t = 100)]
    pub limit: i64,
    #[command(flatten)]
    pub db: DbArgs,
}

impl Selector {
    fn filter(&self) -> DeadLetterFilter {
        DeadLetterFilter {
            tenant: self.tenant.clone(),
            within_assets: None,
            dataset_id: self.dataset_id.clone(),
            asset_id: self.asset_id.clone(),
            event_ids: (!self.event_ids.is_empty()).then(|| self.event_ids.clone()),
            since_ms: None,
            limit: None,
        }
    }

    fn is_selective(&self) -> bool {
        !self.event_ids.is_empty()
            || self.dataset_id.is_some()
            || self.asset_id.is_some()
            || self.tenant.is_some()
    }
}

pub async fn run(command: DeadLettersCommand) -> anyhow::Result<ExitCode> {
    match command {
        DeadLettersCommand::List(selector) => {
            let store = selector.db.open().await?;
            let filter = DeadLetterFilter {
                limit: Some(selector.limit),
                ..selector.filter()
            };
            let dead = store.list_dead_letters(&filter).await?;
            println!("{} dead letters", dead.len());
            for record in dead {
                println!(
                    "{}  dataset {}  {}  attempts {}  {}",
                    record.event_id,
                    record.dataset_id,
                    record.event_name,
                    record.attempts_count,
                    record.dead_reason.unwrap_or_default()
                );
            }
        }
        DeadLettersCommand::Replay(selector) => {
            anyhow::ensure!(
                selector.is_selective() || selector.all,
                "name --event-id, --dataset-id or --asset-id, or pass --all to replay every dead letter"
            );
            let store = selector.db.open().await?;
            let replayed = store
                .replay_dead_letters(&selector.filter(), now_ms())
                .await?;
            println!("{replayed} dead letters queued again; a running relay delivers them");
        }
    }
    Ok(ExitCode::SUCCESS)
}
