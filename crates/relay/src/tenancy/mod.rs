//! Tenancy: client businesses, their assets (onboarded through Meta's Dataset API), sealed
//! tokens, API keys and the audit trail of admin actions. The CLI and the admin HTTP API are
//! both thin layers over the functions here, so they behave the same.

pub mod keys;
mod onboard;

use std::sync::Arc;

use relay_core::Channel;
use relay_store::{ApiKeyRecord, Asset, AssetStatus, AuditEntry, Store, StoreError, Tenant};
use secrecy::SecretString;
use serde::Serialize;
use serde_json::{Value, json};

pub use self::onboard::{OnboardReport, OnboardRequest, onboard};
use crate::{
    clock::now_ms,
    vault::{MasterKey, VaultError, is_sealed},
};

/// Why an admin action failed; each variant maps to one HTTP status and one CLI message.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// Meta refused a Graph call; `hint` says what to do about it.
    #[error("Meta refused the request: {message} ({hint})")]
    Meta {
        code: Option<i64>,
        message: String,
        hint: String,
    },
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => AdminError::NotFound(m),
            StoreError::Conflict(m) => AdminError::Conflict(m),
            other => AdminError::Store(other),
        }
    }
}

pub type AdminResult<T> = Result<T, AdminError>;

/// A tenant name: lower-case letters, digits, `-` and `_`, up to 64, starting with a letter or
/// digit. Names appear in URLs and logs, so they stay plain.
pub fn check_tenant_name(name: &str) -> AdminResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(AdminError::Invalid {
            field: "name",
            message: format!(
                "{name:?} is not a tenant name: use 1–64 lower-case letters, digits, '-' or '_'"
            ),
        })
    }
}

/// Meta ids are numeric strings.
pub fn check_meta_id(field: &'static str, id: &str) -> AdminResult<()> {
    if !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(AdminError::Invalid {
            field,
            message: format!("{id:?} is not a numeric Meta id"),
        })
    }
}

fn check_test_event_code(code: Option<&str>) -> AdminResult<()> {
    match code {
        Some(c) if c.trim().is_empty() || c.len() > 64 => Err(AdminError::Invalid {
            field: "test_event_code",
            message: "must be the code shown in Events Manager's Test events tab".into(),
        }),
        _ => Ok(()),
    }
}

/// An asset as shown to people: never its token.
#[derive(Debug, Clone, Serialize)]
pub struct AssetView {
    pub tenant: String,
    pub channel: String,
    pub asset_id: String,
    pub dataset_id: String,
    pub status: AssetStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_event_code: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl From<Asset> for AssetView {
    fn from(a: Asset) -> Self {
        AssetView {
            tenant: a.tenant,
            channel: a.channel,
            asset_id: a.asset_id,
            dataset_id: a.dataset_id,
            status: a.status,
            status_reason: a.status_reason,
            test_event_code: a.test_event_code,
            created_at_ms: a.created_at_ms,
            updated_at_ms: a.updated_at_ms,
        }
    }
}

/// A tenant with its assets, keys and health, for `tenants show` and the admin API.
#[derive(Debug, Clone, Serialize)]
pub struct TenantOverview {
    #[serde(flatten)]
    pub tenant: Tenant,
    /// `ok`, or `attention` when an asset is paused (e.g. Meta refused its token).
    pub health: &'static str,
    pub assets: Vec<AssetView>,
    pub keys: Vec<ApiKeyRecord>,
}

/// Records an admin action; a failure to record is logged, never fatal to the action.
pub async fn audit(
    store: &dyn Store,
    actor: &str,
    action: &str,
    tenant: Option<&str>,
    target: Option<&str>,
    detail: Value,
) {
    let entry = AuditEntry {
        at_ms: now_ms(),
        actor: actor.into(),
        action: action.into(),
        tenant: tenant.map(str::to_owned),
        target: target.map(str::to_owned),
        detail: (!detail.is_null()).then(|| detail.to_string()),
    };
    if let Err(e) = store.append_audit(&entry).await {
        tracing::error!(error = %e, action, "cannot record the audit entry");
    }
}

pub async fn create_tenant(
    store: &dyn Store,
    name: &str,
    test_event_code: Option<&str>,
    actor: &str,
) -> AdminResult<Tenant> {
    check_tenant_name(name)?;
    check_test_event_code(test_event_code)?;
    let tenant = Tenant {
        name: name.into(),
        test_event_code: test_event_code.map(str::to_owned),
        created_at_ms: now_ms(),
    };
    if !store.create_tenant(&tenant).await? {
        return Err(AdminError::Conflict(format!(
            "a tenant named {name:?} already exists"
        )));
    }
    audit(
        store,
        actor,
        "tenant.create",
        Some(name),
        None,
        json!({ "test_event_code": test_event_code }),
    )
    .await;
    Ok(tenant)
}

pub async fn get_tenant(store: &dyn Store, name: &str) -> AdminResult<Tenant> {
    store
        .get_tenant(name)
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("no tenant named {name:?}")))
}

pub async fn tenant_overview(store: &dyn Store, name: &str) -> AdminResult<TenantOverview> {
    let tenant = get_tenant(store, name).await?;
    let assets: Vec<AssetView> = store
        .list_assets()
        .await?
        .into_iter()
        .filter(|a| a.tenant == name)
        .map(AssetView::from)
        .collect();
    let health = if assets.iter().any(|a| a.status == AssetStatus::Paused) {
        "attention"
    } else {
        "ok"
    };
    Ok(TenantOverview {
        tenant,
        health,
        assets,
        keys: store.list_api_keys(Some(name)).await?,
    })
}

pub async fn set_test_event_code(
    store: &dyn Store,
    name: &str,
    code: Option<&str>,
    actor: &str,
) -> AdminResult<()> {
    check_test_event_code(code)?;
    store.set_tenant_test_event_code(name, code).await?;
    audit(
        store,
        actor,
        "tenant.test_event_code",
        Some(name),
        None,
        json!({ "test_event_code": code }),
    )
    .await;
    Ok(())
}

/// An asset registered by hand, with a dataset id the caller already has (spec §3: an existing
/// dataset can be reused).
pub struct AssetSpec {
    pub tenant: String,
    pub channel: Channel,
    pub asset_id: String,
    pub dataset_id: String,
    pub token: SecretString,
    pub test_event_code: Option<String>,
}

/// Registers or replaces an asset of `spec.tenant`, sealing its token. `Conflict` if another
/// tenant owns the asset.
pub async fn add_asset(
    store: &dyn Store,
    vault: &MasterKey,
    spec: AssetSpec,
    actor: &str,
    action: &str,
) -> AdminResult<AssetView> {
    check_meta_id("asset_id", &spec.asset_id)?;
    check_meta_id("dataset_id", &spec.dataset_id)?;
    check_test_event_code(spec.test_event_code.as_deref())?;
    get_tenant(store, &spec.tenant).await?;
    let now = now_ms();
    let existing = store.get_asset(&spec.asset_id).await?;
    if let Some(other) = existing.as_ref().filter(|a| a.tenant != spec.tenant) {
        return Err(AdminError::Conflict(format!(
            "asset {} belongs to tenant {:?}",
            spec.asset_id, other.tenant
        )));
    }
    let asset = Asset {
        tenant: spec.tenant,
        channel: spec.channel.as_str().into(),
        sealed_token: vault.seal(&spec.token, &spec.asset_id),
        asset_id: spec.asset_id,
        dataset_id: spec.dataset_id,
        test_event_code: spec.test_event_code,
        status: AssetStatus::Active,
        status_reason: None,
        created_at_ms: existing.map_or(now, |a| a.created_at_ms),
        updated_at_ms: now,
    };
    store.upsert_asset(&asset).await?;
    audit(
        store,
        actor,
        action,
        Some(&asset.tenant),
        Some(&asset.asset_id),
        json!({
            "channel": asset.channel,
            "dataset_id": asset.dataset_id,
            "test_event_code": asset.test_event_code,
        }),
    )
    .await;
    Ok(asset.into())
}

/// Replaces an asset's token and resumes its deliveries. With `tenant`, only that tenant's
/// asset can be changed (others look absent).
pub async fn set_token(
    store: &dyn Store,
    vault: &MasterKey,
    asset_id: &str,
    token: &SecretString,
    tenant: Option<&str>,
    actor: &str,
) -> AdminResult<AssetView> {
    let not_found = || AdminError::NotFound(format!("asset {asset_id} is not registered"));
    let asset = store.get_asset(asset_id).await?.ok_or_else(not_found)?;
    if tenant.is_some_and(|t| t != asset.tenant) {
        return Err(not_found());
    }
    let was_paused = asset.status == AssetStatus::Paused;
    store
        .set_asset_token(asset_id, &vault.seal(token, asset_id), now_ms())
        .await?;
    audit(
        store,
        actor,
        "asset.set_token",
        Some(&asset.tenant),
        Some(asset_id),
        json!({ "resumed": was_paused }),
    )
    .await;
    Ok(store
        .get_asset(asset_id)
        .await?
        .ok_or_else(not_found)?
        .into())
}

/// Resumes a paused asset with the token it has: for when its access was fixed on Meta's
/// side (a permission granted again) rather than by a new token. Its held events are then
/// delivered. With `tenant`, only that tenant's asset can be resumed (others look absent).
/// Returns the asset and whether it was paused; resuming an active asset changes nothing and
/// is not audited.
pub async fn resume_asset(
    store: &dyn Store,
    asset_id: &str,
    tenant: Option<&str>,
    actor: &str,
) -> AdminResult<(AssetView, bool)> {
    let not_found = || AdminError::NotFound(format!("asset {asset_id} is not registered"));
    let asset = store.get_asset(asset_id).await?.ok_or_else(not_found)?;
    if tenant.is_some_and(|t| t != asset.tenant) {
        return Err(not_found());
    }
    let resumed = store.resume_asset(asset_id, now_ms()).await?;
    if resumed {
        audit(
            store,
            actor,
            "asset.resume",
            Some(&asset.tenant),
            Some(asset_id),
            json!({ "paused_because": asset.status_reason }),
        )
        .await;
    }
    let asset = store.get_asset(asset_id).await?.ok_or_else(not_found)?;
    Ok((asset.into(), resumed))
}

/// Makes an API key for `tenant`, optionally limited to some of its assets. The key is in the
/// result only; the store keeps its hash.
pub async fn create_key(
    store: &dyn Store,
    tenant: &str,
    label: Option<String>,
    assets: Option<Vec<String>>,
    actor: &str,
) -> AdminResult<keys::NewKey> {
    get_tenant(store, tenant).await?;
    if let Some(list) = &assets {
        if list.is_empty() {
            return Err(AdminError::Invalid {
                field: "assets",
                message: "name at least one asset, or leave it out for all of the tenant's".into(),
            });
        }
        for id in list {
            match store.get_asset(id).await? {
                Some(a) if a.tenant == tenant => {}
                _ => {
                    return Err(AdminError::Invalid {
                        field: "assets",
                        message: format!("asset {id} is not an asset of tenant {tenant:?}"),
                    });
                }
            }
        }
    }
    let new = keys::generate(tenant, label, assets, now_ms());
    store.create_api_key(&new.record).await?;
    audit(
        store,
        actor,
        "key.create",
        Some(tenant),
        Some(&new.record.id),
        json!({ "label": new.record.label, "assets": new.record.assets }),
    )
    .await;
    Ok(new)
}

pub async fn revoke_key(store: &dyn Store, id: &str, actor: &str) -> AdminResult<ApiKeyRecord> {
    let key = store.revoke_api_key(id, now_ms()).await?;
    audit(
        store,
        actor,
        "key.revoke",
        Some(&key.tenant),
        Some(id),
        Value::Null,
    )
    .await;
    Ok(key)
}

/// Seals tokens stored in plain text by relays from before encryption. Returns how many.
pub async fn seal_plaintext_tokens(store: &dyn Store, vault: &MasterKey) -> AdminResult<u64> {
    let changes: Vec<(String, String, String)> = store
        .list_assets()
        .await?
        .into_iter()
        .filter(|a| !is_sealed(&a.sealed_token))
        .map(|a| {
            let sealed = vault.seal(&SecretString::from(a.sealed_token.clone()), &a.asset_id);
            (a.asset_id, a.sealed_token, sealed)
        })
        .collect();
    if changes.is_empty() {
        return Ok(0);
    }
    Ok(store.reseal_tokens(&changes).await?)
}

/// Re-seals every token from `old` to `new` in one transaction. Fails, changing nothing, if any
/// token does not open with `old`.
pub async fn rotate_master_key(
    store: &dyn Store,
    old: &MasterKey,
    new: &MasterKey,
    actor: &str,
) -> AdminResult<u64> {
    let mut changes = Vec::new();
    for a in store.list_assets().await? {
        let token = if is_sealed(&a.sealed_token) {
            old.open(&a.sealed_token, &a.asset_id)?
        } else {
            SecretString::from(a.sealed_token.clone())
        };
        let resealed = new.seal(&token, &a.asset_id);
        changes.push((a.asset_id, a.sealed_token, resealed));
    }
    let count = store.reseal_tokens(&changes).await?;
    audit(
        store,
        actor,
        "master_key.rotate",
        None,
        None,
        json!({ "from_key_id": old.id(), "to_key_id": new.id(), "tokens": count }),
    )
    .await;
    Ok(count)
}

/// The actor name of a command-line action: the operating-system user.
pub fn cli_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}")
}

/// Shared handles of the admin functions that need more than the store.
#[derive(Clone)]
pub struct AdminContext {
    pub store: Arc<dyn Store>,
    pub vault: Arc<MasterKey>,
    pub graph: crate::delivery::GraphClient,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names_are_plain() {
        for ok in ["acme", "acme-br", "a_1", "9lives"] {
            check_tenant_name(ok).unwrap();
        }
        for bad in ["", "Acme", "-acme", "acme corp", "acmé", &"a".repeat(65)] {
            let err = check_tenant_name(bad).unwrap_err().to_string();
            assert!(err.starts_with("name: "), "{err}");
        }
    }

    #[test]
    fn meta_ids_are_numeric() {
        check_meta_id("asset_id", "102290129340398").unwrap();
        assert!(check_meta_id("asset_id", "12a").is_err());
        assert!(check_meta_id("asset_id", "").is_err());
    }
}
