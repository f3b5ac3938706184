//! Stage rules: add, list, remove. The CLI and `/v1/admin/crm/rules` both call these.

use relay_core::crm::{self, Source, StageRule, ValueRule};
use relay_store::{Store, crm::CrmRule};
use serde::Deserialize;
use serde_json::json;

use crate::{
    clock::now_ms,
    tenancy::{self, AdminError, AdminResult},
};

/// A rule to add, as the CLI flags and the admin API's JSON body give it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRule {
    pub source: String,
    /// A pipeline id, or `any`.
    #[serde(deserialize_with = "id_or_any")]
    pub pipeline_id: String,
    #[serde(deserialize_with = "id_or_any")]
    pub stage_id: String,
    pub event: String,
    /// `deal` (default), `none` or an amount.
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub currency: Option<String>,
    #[serde(default)]
    pub every_time: bool,
}

/// Ids are accepted as JSON numbers or strings.
fn id_or_any<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    crm::id_text(&value).ok_or_else(|| serde::de::Error::custom("must be an id (number or string)"))
}

fn invalid(field: &'static str, message: impl Into<String>) -> AdminError {
    AdminError::Invalid {
        field,
        message: message.into(),
    }
}

/// The domain rule of a stored one.
pub fn to_core(r: &CrmRule) -> Result<StageRule, String> {
    Ok(StageRule {
        id: r.id,
        source: r.source.parse()?,
        pipeline_id: (r.pipeline_id != "any").then(|| r.pipeline_id.clone()),
        stage_id: r.stage_id.clone(),
        event_name: r.event_name.clone(),
        value: ValueRule::parse(&r.value)?,
        currency: r.currency.clone(),
        every_time: r.every_time,
    })
}

pub async fn add(
    store: &dyn Store,
    tenant: &str,
    rule: &NewRule,
    actor: &str,
) -> AdminResult<CrmRule> {
    tenancy::get_tenant(store, tenant).await?;
    let source: Source = rule.source.parse().map_err(|e| invalid("source", e))?;
    crm::check_rule(
        &rule.event,
        &rule.stage_id,
        &rule.pipeline_id,
        rule.currency.as_deref(),
    )
    .map_err(|(field, message)| invalid(field, message))?;
    let value = ValueRule::parse(rule.value.as_deref().unwrap_or("deal"))
        .map_err(|e| invalid("value", e))?;
    let pipeline_id = if rule.pipeline_id.eq_ignore_ascii_case("any") {
        "any".to_owned()
    } else {
        rule.pipeline_id.clone()
    };
    let stored = store
        .add_crm_rule(&CrmRule {
            id: 0,
            tenant: tenant.into(),
            source: source.as_str().into(),
            pipeline_id,
            stage_id: rule.stage_id.trim().into(),
            event_name: rule.event.trim().into(),
            value: value.as_text(),
            currency: rule
                .currency
                .as_ref()
                .map(|c| c.trim().to_ascii_uppercase()),
            every_time: rule.every_time,
            created_at_ms: now_ms(),
        })
        .await?;
    tenancy::audit(
        store,
        actor,
        "crm.rule.add",
        Some(tenant),
        Some(&stored.id.to_string()),
        json!(stored),
    )
    .await;
    Ok(stored)
}

pub async fn list(store: &dyn Store, tenant: Option<&str>) -> AdminResult<Vec<CrmRule>> {
    if let Some(t) = tenant {
        tenancy::get_tenant(store, t).await?;
    }
    Ok(store.list_crm_rules(tenant).await?)
}

pub async fn remove(store: &dyn Store, tenant: &str, id: i64, actor: &str) -> AdminResult<()> {
    if !store.remove_crm_rule(tenant, id).await? {
        return Err(AdminError::NotFound(format!(
            "tenant {tenant:?} has no CRM rule {id}"
        )));
    }
    tenancy::audit(
        store,
        actor,
        "crm.rule.remove",
        Some(tenant),
        Some(&id.to_string()),
        serde_json::Value::Null,
    )
    .await;
    Ok(())
}
