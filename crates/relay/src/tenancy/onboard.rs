//! Onboarding an asset as Meta's guide describes: create-or-get the asset's dataset through the
//! Dataset API (`POST /{asset_id}/dataset`, spec §3), then register the asset with its sealed
//! token. Re-running it is idempotent: Meta returns the dataset the asset already has.

use relay_core::Channel;
use secrecy::SecretString;
use serde::Serialize;
use serde_json::json;

use super::{AdminContext, AdminError, AdminResult, AssetSpec, AssetView, add_asset, audit};
use crate::delivery::{PermanentKind, SendOutcome, graph_client::GraphCallError};

pub struct OnboardRequest {
    pub tenant: String,
    pub channel: Channel,
    pub asset_id: String,
    pub token: SecretString,
    /// Reuse this dataset instead of asking the Dataset API.
    pub dataset_id: Option<String>,
    /// Name for a dataset Meta creates.
    pub dataset_name: Option<String>,
    pub test_event_code: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct OnboardReport {
    pub asset: AssetView,
    /// `dataset_api` (Meta's create-or-get) or `given` (a dataset id supplied by hand).
    pub dataset_source: &'static str,
    /// The dataset the asset had in this relay before, if any and different.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_dataset_id: Option<String>,
    /// Whether the asset was already registered.
    pub already_registered: bool,
}

pub async fn onboard(
    ctx: &AdminContext,
    request: OnboardRequest,
    actor: &str,
) -> AdminResult<OnboardReport> {
    let store = ctx.store.as_ref();
    super::check_meta_id("asset_id", &request.asset_id)?;
    super::get_tenant(store, &request.tenant).await?;
    let existing = store.get_asset(&request.asset_id).await?;
    if let Some(other) = existing.as_ref().filter(|a| a.tenant != request.tenant) {
        return Err(AdminError::Conflict(format!(
            "asset {} belongs to tenant {:?}",
            request.asset_id, other.tenant
        )));
    }
    let (dataset_id, dataset_source) = match request.dataset_id {
        Some(id) => (id, "given"),
        None => {
            let name = request
                .dataset_name
                .clone()
                .unwrap_or_else(|| format!("capi-relay {} {}", request.tenant, request.asset_id));
            match ctx
                .graph
                .create_or_get_dataset(&request.asset_id, &request.token, Some(&name))
                .await
            {
                Ok(dataset) => (dataset.id, "dataset_api"),
                Err(e) => {
                    let error = meta_error(&e, request.channel);
                    audit(
                        store,
                        actor,
                        "asset.onboard_failed",
                        Some(&request.tenant),
                        Some(&request.asset_id),
                        json!({ "error": error.to_string() }),
                    )
                    .await;
                    return Err(error);
                }
            }
        }
    };
    let previous_dataset_id = existing
        .as_ref()
        .map(|a| a.dataset_id.clone())
        .filter(|d| *d != dataset_id);
    let asset = add_asset(
        store,
        &ctx.vault,
        AssetSpec {
            tenant: request.tenant,
            channel: request.channel,
            asset_id: request.asset_id,
            dataset_id,
            token: request.token,
            test_event_code: request.test_event_code,
        },
        actor,
        "asset.onboard",
    )
    .await?;
    Ok(OnboardReport {
        asset,
        dataset_source,
        previous_dataset_id,
        already_registered: existing.is_some(),
    })
}

/// Meta's refusal with what to do about it.
fn meta_error(e: &GraphCallError, channel: Channel) -> AdminError {
    let graph = e.graph_error();
    let code = graph.map(|g| g.code);
    let message = graph.map_or_else(|| e.to_string(), |g| g.message.clone());
    let permission = match channel {
        Channel::WhatsApp => "whatsapp_business_manage_events",
        Channel::Messenger => "page_events",
        Channel::Instagram => "instagram_manage_events",
    };
    let hint = match &e.outcome {
        SendOutcome::Permanent {
            kind: PermanentKind::Auth,
            ..
        } => "the access token is invalid or expired: create a new token (a System User token of the business that owns the asset) and onboard again".to_owned(),
        SendOutcome::Permanent {
            kind: PermanentKind::Permission,
            ..
        } => format!(
            "the token lacks a permission: grant {permission} (and business_management) to the token's user for this asset, then onboard again"
        ),
        SendOutcome::Permanent { .. } => format!(
            "check the asset id: it must be the {} id the token can manage",
            match channel {
                Channel::WhatsApp => "WhatsApp Business Account",
                Channel::Messenger => "Facebook Page",
                Channel::Instagram => "Instagram professional account",
            }
        ),
        SendOutcome::Retryable { .. } => {
            "Meta is unreachable, busy or throttling: nothing was changed; try again shortly".into()
        }
        SendOutcome::Delivered(_) => "unexpected answer from Meta".into(),
    };
    AdminError::Meta {
        code,
        message,
        hint,
    }
}
