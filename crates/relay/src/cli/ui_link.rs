//! `capi-relay ui-link`: a one-time dashboard login link for a tenant, to hand to an
//! advertiser. The token is stored only as its hash and works once.

use std::{process::ExitCode, time::Duration};

use clap::Args;

use super::DbArgs;
use crate::dashboard::session;

#[derive(Debug, Args)]
pub struct UiLinkArgs {
    /// The tenant the link signs in to.
    #[arg(long)]
    pub tenant: String,
    /// The session cannot replay dead letters or change anything.
    #[arg(long)]
    pub read_only: bool,
    /// How long the link stays valid before it is used (at most 30 days).
    #[arg(long, default_value = "1h", value_parser = humantime_serde::re::humantime::parse_duration)]
    pub expires: Duration,
    /// The relay's address as the browser reaches it.
    #[arg(
        long,
        env = "CAPI_RELAY_PUBLIC_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub base_url: String,
    #[command(flatten)]
    pub db: DbArgs,
}

pub async fn run(args: UiLinkArgs) -> anyhow::Result<ExitCode> {
    if args.expires > session::MAX_LINK_TTL {
        anyhow::bail!("--expires: at most 30 days");
    }
    let store = args.db.open().await?;
    let token = session::create_link(
        store.as_ref(),
        &args.tenant,
        args.read_only,
        args.expires,
        &crate::tenancy::cli_actor(),
    )
    .await?;
    println!("{}", link_url(&args.base_url, &token));
    eprintln!(
        "one-time {}login link for tenant {}, valid for {} until used",
        if args.read_only { "read-only " } else { "" },
        args.tenant,
        humantime_serde::re::humantime::format_duration(args.expires)
    );
    Ok(ExitCode::SUCCESS)
}

/// The URL of a login link.
pub fn link_url(base_url: &str, token: &str) -> String {
    format!("{}/ui/link/{token}", base_url.trim_end_matches('/'))
}
