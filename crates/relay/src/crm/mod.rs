//! CRM stage automation: a deal entering a stage becomes a business-messaging event, through
//! the tenant's stage rules and the same ingest path as `POST /v1/events` (the contact is
//! attributed from the capture store like any conversion by contact).
//!
//! - [`rules`]: rule administration (CLI and `/v1/admin/crm/rules`).
//! - [`generic`]: the JSON body of `POST /v1/crm/stage-changes`.
//! - [`kommo`]: Kommo integrations, its webhook bodies and REST client.
//!
//! Every stage change seen is recorded with what became of it, so nothing is dropped silently.

pub mod generic;
pub mod kommo;
pub mod rules;

use std::sync::Arc;

use relay_core::{
    Channel, IssueCode,
    crm::{self, StageChange, StageRule},
};
use relay_store::{Store, StoreError, crm::StageChangeRecord};
use serde::Serialize;
use serde_json::Value;

use crate::{
    clock::now_ms,
    ingest::{EventResult, Ingestor},
    tenancy::keys::Scope,
};

/// The integration name of the generic hook in records and counts.
pub const GENERIC: &str = "generic";

/// What became of one stage change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StageOutcome {
    /// `produced`, `duplicate`, `no_rule`, `no_attribution`, `no_contact`, `too_old`,
    /// `rejected`.
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl StageOutcome {
    pub fn skipped(outcome: &'static str, detail: impl Into<String>) -> StageOutcome {
        StageOutcome {
            outcome,
            event_name: None,
            event_id: None,
            detail: Some(detail.into()),
        }
    }
}

/// The CRM service shared by the HTTP handlers and the Kommo processor.
pub struct Crm {
    pub store: Arc<dyn Store>,
    pub ingestor: Arc<Ingestor>,
}

impl Crm {
    /// The tenant's rule for a change, if any. Stored rules that no longer parse are skipped
    /// with a warning.
    pub async fn rule_for(
        &self,
        tenant: &str,
        change: &StageChange,
    ) -> Result<Option<StageRule>, StoreError> {
        let rules: Vec<StageRule> = self
            .store
            .list_crm_rules(Some(tenant))
            .await?
            .into_iter()
            .filter_map(|r| match rules::to_core(&r) {
                Ok(rule) => Some(rule),
                Err(e) => {
                    tracing::warn!(rule = r.id, error = %e, "stored CRM rule not understood; skipped");
                    None
                }
            })
            .collect();
        Ok(crm::match_rule(&rules, change).cloned())
    }

    /// Sends the change's event (under `rule`, to `channel`/`asset_id`, naming the customer by
    /// `contact`) through ingest, for `scope`. Records nothing: see [`Crm::record`].
    pub async fn produce(
        &self,
        scope: &Scope,
        change: &StageChange,
        rule: &StageRule,
        (channel, asset_id): (Channel, &str),
        contact: Value,
        default_currency: Option<&str>,
    ) -> Result<StageOutcome, StoreError> {
        let event = crm::stage_event(change, rule, channel, asset_id, contact, default_currency);
        let report = self.ingestor.ingest(&[event], scope, None).await?;
        let event_id = Some(crm::stage_event_id(change, rule));
        let event_name = Some(rule.event_name.clone());
        let outcome = match report.results.into_iter().next() {
            Some(EventResult::Accepted { .. }) => StageOutcome {
                outcome: "produced",
                event_name,
                event_id,
                detail: None,
            },
            Some(EventResult::Duplicate { .. }) => StageOutcome {
                outcome: "duplicate",
                event_name,
                event_id,
                detail: Some("this stage change already produced its event".into()),
            },
            Some(EventResult::Rejected { errors, .. }) => {
                let outcome = if errors.iter().any(|e| e.code == IssueCode::NoAttribution) {
                    "no_attribution"
                } else if errors.iter().any(|e| e.code == IssueCode::EventTooOld) {
                    "too_old"
                } else {
                    "rejected"
                };
                let why: Vec<String> = errors.iter().map(ToString::to_string).collect();
                StageOutcome {
                    outcome,
                    event_name,
                    event_id,
                    detail: Some(why.join("; ")),
                }
            }
            None => StageOutcome::skipped("rejected", "ingest gave no result"),
        };
        Ok(outcome)
    }

    /// Records a stage change and its outcome (a repeat counts, a produced outcome stays).
    pub async fn record(
        &self,
        tenant: &str,
        integration: &str,
        change: &StageChange,
        outcome: &StageOutcome,
    ) -> Result<(), StoreError> {
        if outcome.outcome != "produced" && outcome.outcome != "duplicate" {
            tracing::info!(
                tenant,
                integration,
                deal = %change.deal_id,
                stage = %change.stage_id,
                outcome = outcome.outcome,
                detail = outcome.detail.as_deref().unwrap_or_default(),
                "CRM stage change produced no event"
            );
        }
        let now = now_ms();
        self.store
            .record_stage_change(&StageChangeRecord {
                tenant: tenant.into(),
                integration: integration.into(),
                deal_id: change.deal_id.clone(),
                pipeline_id: change.pipeline_id.clone().unwrap_or_default(),
                stage_id: change.stage_id.clone(),
                entry_key: change.entry_key(),
                occurred_at_ms: change.occurred_at.saturating_mul(1000),
                outcome: outcome.outcome.into(),
                event_name: outcome.event_name.clone(),
                event_id: outcome.event_id.clone(),
                detail: outcome.detail.clone(),
                repeats: 0,
                first_seen_at_ms: now,
                last_seen_at_ms: now,
            })
            .await
    }
}

/// What `no_rule` says: the stage is not mapped, and how to map it.
pub fn no_rule_detail(change: &StageChange) -> String {
    format!(
        "no {} rule for pipeline {} stage {}: add one with `capi-relay crm rules add`",
        change.source.as_str(),
        change.pipeline_id.as_deref().unwrap_or("(none)"),
        change.stage_id
    )
}

/// One integration's health and counts, for `crm status` and the JSON routes.
#[derive(Debug, Clone, Serialize)]
pub struct IntegrationStatus {
    /// `generic` or the integration's id.
    pub integration: String,
    pub tenant: String,
    /// `generic` or `kommo`.
    pub kind: String,
    /// `ok`, or `attention` when the CRM refused the token (the reason says why).
    pub health: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<relay_store::crm::CrmIntegration>,
    pub counts: relay_store::crm::StageChangeCounts,
}

/// The tenant's integrations (the generic hook first) with their counts.
pub async fn status(store: &dyn Store, tenant: &str) -> Result<Vec<IntegrationStatus>, StoreError> {
    let mut out = vec![IntegrationStatus {
        integration: GENERIC.into(),
        tenant: tenant.into(),
        kind: GENERIC.into(),
        health: "ok",
        details: None,
        counts: store.stage_change_counts(tenant, GENERIC).await?,
    }];
    for integration in store.list_crm_integrations(Some(tenant)).await? {
        out.push(IntegrationStatus {
            integration: integration.id.clone(),
            tenant: tenant.into(),
            kind: integration.kind.clone(),
            health: if integration.status == "active" {
                "ok"
            } else {
                "attention"
            },
            counts: store.stage_change_counts(tenant, &integration.id).await?,
            details: Some(integration),
        });
    }
    Ok(out)
}
