//! `capi-relay audit`: who did what to which tenant, newest first.

use std::process::ExitCode;

use clap::Args;

use super::DbArgs;

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only this tenant's entries.
    #[arg(long)]
    pub tenant: Option<String>,
    #[arg(long, default_value_t = 50)]
    pub limit: i64,
    #[command(flatten)]
    pub db: DbArgs,
}

pub async fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let store = args.db.open().await?;
    for e in store.list_audit(args.tenant.as_deref(), args.limit).await? {
        let at = chrono::DateTime::from_timestamp_millis(e.at_ms).map_or_else(
            || e.at_ms.to_string(),
            |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
        );
        println!(
            "{at} {:<16} {:<22} tenant={} target={} {}",
            e.actor,
            e.action,
            e.tenant.as_deref().unwrap_or("-"),
            e.target.as_deref().unwrap_or("-"),
            e.detail.as_deref().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}
