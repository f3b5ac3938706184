//! CRM storage: stage rules, integrations (Kommo), their raw webhook bodies waiting to be
//! processed, and the record of every stage change seen. A supertrait of
//! [`Store`](crate::Store), implemented once for both backends by `impl_crm_store!`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::Serialize;

use crate::Result;

/// A stage rule as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CrmRule {
    pub id: i64,
    pub tenant: String,
    /// `kommo` or `generic`.
    pub source: String,
    /// A pipeline id, or `any`.
    pub pipeline_id: String,
    pub stage_id: String,
    pub event_name: String,
    /// `deal`, `none` or an amount.
    pub value: String,
    pub currency: Option<String>,
    pub every_time: bool,
    pub created_at_ms: i64,
}

/// A CRM integration. `sealed_token` is sealed by the relay's vault; never shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CrmIntegration {
    pub id: String,
    pub tenant: String,
    /// `kommo`.
    pub kind: String,
    pub base_url: String,
    #[serde(skip)]
    pub secret_sha256: String,
    #[serde(skip)]
    pub sealed_token: String,
    pub asset_id: String,
    /// Pipeline id → the asset its stage changes go to instead of `asset_id`.
    pub pipeline_assets: BTreeMap<String, String>,
    pub currency: Option<String>,
    pub account_id: String,
    pub subdomain: String,
    /// `active`, or `token_rejected` (processing waits until the token is replaced).
    pub status: String,
    pub status_reason: Option<String>,
    pub api_ok_at_ms: Option<i64>,
    pub api_error: Option<String>,
    pub api_error_at_ms: Option<i64>,
    pub last_webhook_at_ms: Option<i64>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// A raw webhook body to keep before answering the CRM.
#[derive(Debug, Clone)]
pub struct NewCrmWebhook {
    pub integration_id: String,
    pub body: Vec<u8>,
    pub body_sha256: String,
    pub received_at_ms: i64,
}

/// A stored CRM webhook waiting to be processed.
#[derive(Debug, Clone)]
pub struct PendingCrmWebhook {
    pub id: i64,
    pub integration_id: String,
    pub body: Vec<u8>,
    pub received_at_ms: i64,
    /// Attempts so far (not counting the coming one).
    pub attempts: i32,
}

/// A stored CRM webhook as inspection shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CrmWebhookRecord {
    pub id: i64,
    pub integration_id: String,
    pub received_at_ms: i64,
    /// `pending`, `processed` or `failed`.
    pub state: String,
    /// Why it failed or waits, or what in it was not used.
    pub error: Option<String>,
    pub attempts: i32,
    pub next_attempt_at_ms: i64,
    pub processed_at_ms: Option<i64>,
}

/// One stage change seen, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StageChangeRecord {
    pub tenant: String,
    /// `generic` or the integration's id.
    pub integration: String,
    pub deal_id: String,
    /// Empty when the CRM named none.
    pub pipeline_id: String,
    pub stage_id: String,
    pub entry_key: String,
    pub occurred_at_ms: i64,
    /// `produced`, `duplicate`, `no_rule`, `no_attribution`, `no_contact`, `rejected`, …
    pub outcome: String,
    pub event_name: Option<String>,
    pub event_id: Option<String>,
    pub detail: Option<String>,
    /// Times it was seen again after the first (redeliveries, repeats).
    pub repeats: i32,
    pub first_seen_at_ms: i64,
    pub last_seen_at_ms: i64,
}

/// Counts for one integration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StageChangeCounts {
    /// Distinct stage changes seen.
    pub seen: i64,
    /// Times one was seen again.
    pub repeats: i64,
    /// By outcome, sorted by name.
    pub by_outcome: Vec<(String, i64)>,
    /// Webhooks stored and not yet processed.
    pub webhooks_pending: i64,
    pub webhooks_failed: i64,
}

/// What storing a webhook body did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrmWebhookInsert {
    Inserted(i64),
    /// The same body for the same integration is already stored.
    Duplicate,
}

#[async_trait]
pub trait CrmStore: Send + Sync + 'static {
    /// `Conflict` when the tenant already has a rule for (source, pipeline, stage).
    async fn add_crm_rule(&self, rule: &CrmRule) -> Result<CrmRule>;
    /// Oldest first, optionally one tenant's.
    async fn list_crm_rules(&self, tenant: Option<&str>) -> Result<Vec<CrmRule>>;
    /// `false` when the tenant has no such rule.
    async fn remove_crm_rule(&self, tenant: &str, id: i64) -> Result<bool>;

    async fn create_crm_integration(&self, integration: &CrmIntegration) -> Result<()>;
    async fn get_crm_integration(&self, id: &str) -> Result<Option<CrmIntegration>>;
    async fn find_crm_integration_by_secret(
        &self,
        secret_sha256: &str,
    ) -> Result<Option<CrmIntegration>>;
    async fn list_crm_integrations(&self, tenant: Option<&str>) -> Result<Vec<CrmIntegration>>;
    /// `active` (clears the reason) or `token_rejected` with the reason.
    async fn set_crm_integration_status(
        &self,
        id: &str,
        status: &str,
        reason: Option<&str>,
        now_ms: i64,
    ) -> Result<()>;
    /// A new sealed token; the integration is active again.
    async fn set_crm_integration_token(&self, id: &str, sealed: &str, now_ms: i64) -> Result<()>;
    /// Sets (`Some`) or removes (`None`) a pipeline's asset override. `NotFound` without such an
    /// integration; `false` when removing an override that does not exist.
    async fn set_crm_pipeline_asset(
        &self,
        id: &str,
        pipeline_id: &str,
        asset_id: Option<&str>,
        now_ms: i64,
    ) -> Result<bool>;
    /// The CRM API's health: `error` `None` records a success.
    async fn record_crm_api(&self, id: &str, error: Option<&str>, now_ms: i64) -> Result<()>;

    /// Stores a body (committed when this returns) and the integration's last-webhook time.
    async fn insert_crm_webhook(&self, webhook: &NewCrmWebhook) -> Result<CrmWebhookInsert>;
    /// Pending bodies due by `now_ms` of active integrations, oldest first.
    async fn due_crm_webhooks(&self, now_ms: i64, limit: i64) -> Result<Vec<PendingCrmWebhook>>;
    /// `processed` (with a note of what was not used, if anything) or `failed` with the
    /// reason (kept, never retried). The raw body is removed: a finished body is never read
    /// again, and its sha256 still recognises a redelivery.
    async fn finish_crm_webhook(
        &self,
        id: i64,
        state: &str,
        note: Option<&str>,
        now_ms: i64,
    ) -> Result<()>;
    /// Still pending: tried again at `next_at_ms`, with the reason it waits.
    async fn retry_crm_webhook(&self, id: i64, next_at_ms: i64, error: &str) -> Result<()>;
    async fn list_crm_webhooks(
        &self,
        integration_id: &str,
        limit: i64,
    ) -> Result<Vec<CrmWebhookRecord>>;

    /// Records a stage change; seen before, it counts a repeat and keeps a `produced` outcome.
    async fn record_stage_change(&self, record: &StageChangeRecord) -> Result<()>;
    /// Newest first.
    async fn list_stage_changes(
        &self,
        tenant: &str,
        integration: Option<&str>,
        limit: i64,
    ) -> Result<Vec<StageChangeRecord>>;
    async fn stage_change_counts(
        &self,
        tenant: &str,
        integration: &str,
    ) -> Result<StageChangeCounts>;

    /// Deletes webhooks no longer pending that were received, and stage changes last seen,
    /// before `before_ms`. Returns (webhooks, stage changes).
    async fn purge_crm(&self, before_ms: i64) -> Result<(u64, u64)>;
}

/// Columns of `crm_rules` read into a [`CrmRule`].
pub const RULE_COLUMNS: &str = "id, tenant, source, pipeline_id, stage_id, event_name, value_rule, currency, every_time, created_at_ms";
/// Columns of `crm_integrations` read into a [`CrmIntegration`].
pub const INTEGRATION_COLUMNS: &str = "id, tenant, kind, base_url, secret_sha256, sealed_token, asset_id, currency, \
    account_id, subdomain, status, status_reason, api_ok_at_ms, api_error, api_error_at_ms, last_webhook_at_ms, \
    created_at_ms, updated_at_ms";
/// Columns of `crm_stage_changes` read into a [`StageChangeRecord`].
pub const STAGE_COLUMNS: &str = "tenant, integration, deal_id, pipeline_id, stage_id, entry_key, occurred_at_ms, \
    outcome, event_name, event_id, detail, repeats, first_seen_at_ms, last_seen_at_ms";

macro_rules! impl_crm_store {
    ($store:ty, $db:ty) => {
        impl $store {
            fn crm_rule_from_row(row: &<$db as sqlx::Database>::Row) -> $crate::Result<$crate::crm::CrmRule> {
                use sqlx::Row;
                Ok($crate::crm::CrmRule {
                    id: row.try_get("id")?,
                    tenant: row.try_get("tenant")?,
                    source: row.try_get("source")?,
                    pipeline_id: row.try_get("pipeline_id")?,
                    stage_id: row.try_get("stage_id")?,
                    event_name: row.try_get("event_name")?,
                    value: row.try_get("value_rule")?,
                    currency: row.try_get("currency")?,
                    every_time: row.try_get("every_time")?,
                    created_at_ms: row.try_get("created_at_ms")?,
                })
            }

            fn crm_integration_from_row(row: &<$db as sqlx::Database>::Row) -> $crate::Result<$crate::crm::CrmIntegration> {
                use sqlx::Row;
                Ok($crate::crm::CrmIntegration {
                    id: row.try_get("id")?,
                    tenant: row.try_get("tenant")?,
                    kind: row.try_get("kind")?,
                    base_url: row.try_get("base_url")?,
                    secret_sha256: row.try_get("secret_sha256")?,
                    sealed_token: row.try_get("sealed_token")?,
                    asset_id: row.try_get("asset_id")?,
                    pipeline_assets: std::collections::BTreeMap::new(),
                    currency: row.try_get("currency")?,
                    account_id: row.try_get("account_id")?,
                    subdomain: row.try_get("subdomain")?,
                    status: row.try_get("status")?,
                    status_reason: row.try_get("status_reason")?,
                    api_ok_at_ms: row.try_get("api_ok_at_ms")?,
                    api_error: row.try_get("api_error")?,
                    api_error_at_ms: row.try_get("api_error_at_ms")?,
                    last_webhook_at_ms: row.try_get("last_webhook_at_ms")?,
                    created_at_ms: row.try_get("created_at_ms")?,
                    updated_at_ms: row.try_get("updated_at_ms")?,
                })
            }

            fn stage_change_from_row(row: &<$db as sqlx::Database>::Row) -> $crate::Result<$crate::crm::StageChangeRecord> {
                use sqlx::Row;
                Ok($crate::crm::StageChangeRecord {
                    tenant: row.try_get("tenant")?,
                    integration: row.try_get("integration")?,
                    deal_id: row.try_get("deal_id")?,
                    pipeline_id: row.try_get("pipeline_id")?,
                    stage_id: row.try_get("stage_id")?,
                    entry_key: row.try_get("entry_key")?,
                    occurred_at_ms: row.try_get("occurred_at_ms")?,
                    outcome: row.try_get("outcome")?,
                    event_name: row.try_get("event_name")?,
                    event_id: row.try_get("event_id")?,
                    detail: row.try_get("detail")?,
                    repeats: row.try_get("repeats")?,
                    first_seen_at_ms: row.try_get("first_seen_at_ms")?,
                    last_seen_at_ms: row.try_get("last_seen_at_ms")?,
                })
            }

            /// Fills in the integrations' pipeline asset overrides.
            async fn load_pipeline_assets(&self, integrations: &mut [$crate::crm::CrmIntegration]) -> $crate::Result<()> {
                use sqlx::Row;
                if integrations.is_empty() {
                    return Ok(());
                }
                let mut b = sqlx::QueryBuilder::<$db>::new(
                    "SELECT integration_id, pipeline_id, asset_id FROM crm_pipeline_assets WHERE integration_id IN (",
                );
                let mut ids = b.separated(", ");
                for i in integrations.iter() {
                    ids.push_bind(i.id.clone());
                }
                b.push(")");
                let rows = b.build().fetch_all(&self.pool).await.map_err($crate::shared::map_err)?;
                for row in &rows {
                    let id: String = row.try_get("integration_id")?;
                    if let Some(i) = integrations.iter_mut().find(|i| i.id == id) {
                        i.pipeline_assets.insert(row.try_get("pipeline_id")?, row.try_get("asset_id")?);
                    }
                }
                Ok(())
            }

            async fn crm_integration_where(&self, column: &str, value: &str) -> $crate::Result<Option<$crate::crm::CrmIntegration>> {
                let sql = self.sql(&format!(
                    "SELECT {} FROM crm_integrations WHERE {column} = $1",
                    $crate::crm::INTEGRATION_COLUMNS
                ))
                .into_owned();
                let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(value)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err($crate::shared::map_err)?;
                let mut found: Vec<_> = row.as_ref().map(Self::crm_integration_from_row).transpose()?.into_iter().collect();
                self.load_pipeline_assets(&mut found).await?;
                Ok(found.pop())
            }
        }

        #[async_trait::async_trait]
        impl $crate::crm::CrmStore for $store {
            async fn add_crm_rule(&self, r: &$crate::crm::CrmRule) -> $crate::Result<$crate::crm::CrmRule> {
                let sql = self.sql(&format!(
                    "INSERT INTO crm_rules (tenant, source, pipeline_id, stage_id, event_name, value_rule, currency, every_time, created_at_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                     ON CONFLICT (tenant, source, pipeline_id, stage_id) DO NOTHING RETURNING {}",
                    $crate::crm::RULE_COLUMNS
                ))
                .into_owned();
                let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(&r.tenant)
                    .bind(&r.source)
                    .bind(&r.pipeline_id)
                    .bind(&r.stage_id)
                    .bind(&r.event_name)
                    .bind(&r.value)
                    .bind(&r.currency)
                    .bind(r.every_time)
                    .bind(r.created_at_ms)
                    .fetch_optional(self.writer())
                    .await
                    .map_err($crate::shared::map_err)?;
                match row {
                    Some(row) => Self::crm_rule_from_row(&row),
                    None => Err($crate::StoreError::Conflict(format!(
                        "tenant {} already has a {} rule for pipeline {} stage {}; remove it first",
                        r.tenant, r.source, r.pipeline_id, r.stage_id
                    ))),
                }
            }

            async fn list_crm_rules(&self, tenant: Option<&str>) -> $crate::Result<Vec<$crate::crm::CrmRule>> {
                let mut b = sqlx::QueryBuilder::<$db>::new(format!("SELECT {} FROM crm_rules", $crate::crm::RULE_COLUMNS));
                if let Some(t) = tenant {
                    b.push(" WHERE tenant = ").push_bind(t.to_owned());
                }
                b.push(" ORDER BY id");
                let rows = b.build().fetch_all(&self.pool).await.map_err($crate::shared::map_err)?;
                rows.iter().map(Self::crm_rule_from_row).collect()
            }

            async fn remove_crm_rule(&self, tenant: &str, id: i64) -> $crate::Result<bool> {
                let sql = self.sql("DELETE FROM crm_rules WHERE tenant = $1 AND id = $2");
                let done = sqlx::query(sqlx::AssertSqlSafe(sql.into_owned()))
                    .bind(tenant)
                    .bind(id)
                    .execute(self.writer())
                    .await
                    .map_err($crate::shared::map_err)?;
                Ok(done.rows_affected() > 0)
            }

            async fn create_crm_integration(&self, i: &$crate::crm::CrmIntegration) -> $crate::Result<()> {
                let sql = self.sql(
                    "INSERT INTO crm_integrations (id, tenant, kind, base_url, secret_sha256, sealed_token, asset_id, currency, \
                     account_id, subdomain, status, created_at_ms, updated_at_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                );
                let mut tx = self.begin_write().await?;
                sqlx::query(sqlx::AssertSqlSafe(sql.into_owned()))
                    .bind(&i.id)
                    .bind(&i.tenant)
                    .bind(&i.kind)
                    .bind(&i.base_url)
                    .bind(&i.secret_sha256)
                    .bind(&i.sealed_token)
                    .bind(&i.asset_id)
                    .bind(&i.currency)
                    .bind(&i.account_id)
                    .bind(&i.subdomain)
                    .bind(&i.status)
                    .bind(i.created_at_ms)
                    .bind(i.updated_at_ms)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::shared::map_err)?;
                let sql = self.sql("INSERT INTO crm_pipeline_assets (integration_id, pipeline_id, asset_id) VALUES ($1, $2, $3)");
                for (pipeline, asset) in &i.pipeline_assets {
                    sqlx::query(sqlx::AssertSqlSafe(sql.clone().into_owned()))
                        .bind(&i.id)
                        .bind(pipeline)
                        .bind(asset)
                        .execute(&mut *tx)
                        .await
                        .map_err($crate::shared::map_err)?;
                }
                tx.commit().await.map_err($crate::shared::map_err)?;
                Ok(())
            }

            async fn set_crm_pipeline_asset(&self, id: &str, pipeline_id: &str, asset_id: Option<&str>, now_ms: i64) -> $crate::Result<bool> {
                let mut tx = self.begin_write().await?;
                let sql = self.sql("UPDATE crm_integrations SET updated_at_ms = $1 WHERE id = $2");
                let found = sqlx::query(sqlx::AssertSqlSafe(sql.into_owned()))
                    .bind(now_ms)
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::shared::map_err)?;
                if found.rows_affected() == 0 {
                    return Err($crate::StoreError::NotFound(format!("no CRM integration {id}")));
                }
                let done = match asset_id {
                    Some(asset) => sqlx::query(sqlx::AssertSqlSafe(
                        self.sql(
                            "INSERT INTO crm_pipeline_assets (integration_id, pipeline_id, asset_id) VALUES ($1, $2, $3) \
                             ON CONFLICT (integration_id, pipeline_id) DO UPDATE SET asset_id = excluded.asset_id",
                        )
                        .into_owned(),
                    ))
                    .bind(id)
                    .bind(pipeline_id)
                    .bind(asset),
                    None => sqlx::query(sqlx::AssertSqlSafe(
                        self.sql("DELETE FROM crm_pipeline_assets WHERE integration_id = $1 AND pipeline_id = $2").into_owned(),
                    ))
                    .bind(id)
                    .bind(pipeline_id),
                }
                .execute(&mut *tx)
                .await
                .map_err($crate::shared::map_err)?;
                tx.commit().await.map_err($crate::shared::map_err)?;
                Ok(done.rows_affected() > 0)
            }

            async fn get_crm_integration(&self, id: &str) -> $crate::Result<Option<$crate::crm::CrmIntegration>> {
                self.crm_integration_where("id", id).await
            }

            async fn find_crm_integration_by_secret(&self, secret_sha256: &str) -> $crate::Result<Option<$crate::crm::CrmIntegration>> {
                self.crm_integration_where("secret_sha256", secret_sha256).await
            }

            async fn list_crm_integrations(&self, tenant: Option<&str>) -> $crate::Result<Vec<$crate::crm::CrmIntegration>> {
                let mut b = sqlx::QueryBuilder::<$db>::new(format!(
                    "SELECT {} FROM crm_integrations",
                    $crate::crm::INTEGRATION_COLUMNS
                ));
                if let Some(t) = tenant {
                    b.push(" WHERE tenant = ").push_bind(t.to_owned());
                }
                b.push(" ORDER BY created_at_ms, id");
                let rows = b.build().fetch_all(&self.pool).await.map_err($crate::shared::map_err)?;
                let mut found = rows.iter().map(Self::crm_integration_from_row).collect::<$crate::Result<Vec<_>>>()?;
                self.load_pipeline_assets(&mut found).await?;
                Ok(found)
            }

            async fn set_crm_integration_status(&self, id: &str, status: &str, reason: Option<&str>, now_ms: i64) -> $crate::Result<()> {
                let sql = self.sql("UPDATE crm_integrations SET status = $1, status_reason = $2, updated_at_ms = $3 WHERE id = $4");
                let done = sqlx::query(sqlx::AssertSqlSafe(sql.into_owned()))
                    .bind(status)
                    .bind(reason)
                    .bind(now_ms)
                    .bind(id)
                    .execute(self.writer())
                    .await
                    .map_err($crate::shared::map_err)?;
                if done.rows_affected() == 0 {
                    return Err($crate::StoreError::NotFound(format!("no CRM integration {id}")));
                }
                Ok(())
            }

            async fn set_crm_integration_token(&self, id: &str, sealed: &str, now_ms: i64) -> $crate::Result<()> {
                let sql = self.sql(
                    "UPDATE crm_integrations SET sealed_token = $1, status = 'active', status_reason = NULL, updated_at_ms = $2 WHERE id = $3",
                );
                let done = sqlx::query(sqlx::AssertSqlSafe(sql.into_owned()))
                    .bind(sealed)
                    .bind(now_ms)
                    .bind(id)
                    .execute(self.writer())
                    .await
                    .map_err($crate::shared::map_err)?;
                if done.rows_affected() == 0 {
                    return Err($crate::StoreError::NotFound(format!("no CRM integration {id}")));
                }
                Ok(())
            }

            async fn record_crm_api(&self, id: &str, error: Option<&str>, now_ms: i64) -> $crate::Result<()> {
                let query = match error {
                    None => sqlx::query(sqlx::AssertSqlSafe(
                        self.sql("UPDATE crm_integrations SET api_ok_at_ms = $1 WHERE id = $2").into_owned(),
                    ))
                    .bind(now_ms)
                    .bind(id),
                    Some(e) => sqlx::query(sqlx::AssertSqlSafe(
                        self.sql("UPDATE crm_integrations SET api_error_at_ms = $1, api_error = $2 WHERE id = $3").into_owned(),
                    ))
                    .bind(now_ms)
                    .bind(e.to_owned())
                    .bind(id),
                };
                query.execute(self.writer()).await.map_err($crate::shared::map_err)?;
                Ok(())
            }

            async fn insert_crm_webhook(&self, w: &$crate::crm::NewCrmWebhook) -> $crate::Result<$crate::crm::CrmWebhookInsert> {
                use sqlx::Row;
                let mut tx = self.begin_write().await?;
                let sql = self.sql(
                    "INSERT INTO crm_webhooks (integration_id, body_sha256, body, received_at_ms, next_attempt_at_ms) \
                     VALUES ($1, $2, $3, $4, $4) ON CONFLICT (integration_id, body_sha256) DO NOTHING RETURNING id",
                );
                let row = sqlx::query(sqlx::AssertSqlSafe(sql.into_owned()))
                    .bind(&w.integration_id)
                    .bind(&w.body_sha256)
                    .bind(&w.body)
                    .bind(w.received_at_ms)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err($crate::shared::map_err)?;
                let sql = self.sql("UPDATE crm_integrations SET last_webhook_at_ms = $1 WHERE id = $2");
                sqlx::query(sqlx::AssertSqlSafe(sql.into_owned()))
                    .bind(w.received_at_ms)
                    .bind(&w.integration_id)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::shared::map_err)?;
                tx.commit().await.map_err($crate::shared::map_err)?;
                Ok(match row {
                    Some(row) => $crate::crm::CrmWebhookInsert::Inserted(row.try_get("id")?),
                    None => $crate::crm::CrmWebhookInsert::Duplicate,
                })
            }

            async fn due_crm_webhooks(&self, now_ms: i64, limit: i64) -> $crate::Result<Vec<$crate::crm::PendingCrmWebhook>> {
                use sqlx::Row;
                let sql = self.sql(
                    "SELECT w.id, w.integration_id, w.body, w.received_at_ms, w.attempts FROM crm_webhooks w \
                     JOIN crm_integrations i ON i.id = w.integration_id \
                     WHERE w.state = 'pending' AND w.next_attempt_at_ms <= $1 AND i.status = 'active' \
                     ORDER BY w.next_attempt_at_ms, w.id LIMIT $2",
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql.into_owned()))
                    .bind(now_ms)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await
                    .map_err($crate::shared::map_err)?;
                rows.iter()
                    .map(|row| {
                        Ok($crate::crm::PendingCrmWebhook {
                            id: row.try_get("id")?,
                            integration_id: row.try_get("integration_id")?,
                            body: row.try_get("body")?,
                            received_at_ms: row.try_get("received_at_ms")?,
                            attempts: row.try_get("attempts")?,
                        })
                    })
                    .collect()
            }

            async fn finish_crm_webhook(&self, id: i64, state: &str, note: Option<&str>, now_ms: i64) -> $crate::Result<()> {
                let sql = self.sql(
                    // A finished body is never read again: only its sha256 stays (redeliveries).
                    "UPDATE crm_webhooks SET state = $1, error = $2, processed_at_ms = $3, attempts = attempts + 1, \
                     body = $5, body_removed_at_ms = $3 WHERE id = $4",
                );
                sqlx::query(sqlx::AssertSqlSafe(sql.into_owned()))
                    .bind(state)
                    .bind(note)
                    .bind(now_ms)
                    .bind(id)
                    .bind(Vec::<u8>::new())
                    .execute(self.writer())
                    .await
                    .map_err($crate::shared::map_err)?;
                Ok(())
            }

            async fn retry_crm_webhook(&self, id: i64, next_at_ms: i64, error: &str) -> $crate::Result<()> {
                let sql = self.sql(
                    "UPDATE crm_webhooks SET next_attempt_at_ms = $1, error = $2, attempts = attempts + 1 WHERE id = $3",
                );
                sqlx::query(sqlx::AssertSqlSafe(sql.into_owned()))
                    .bind(next_at_ms)
                    .bind(error)
                    .bind(id)
                    .execute(self.writer())
                    .await
                    .map_err($crate::shared::map_err)?;
                Ok(())
            }

            async fn list_crm_webhooks(&self, integration_id: &str, limit: i64) -> $crate::Result<Vec<$crate::crm::CrmWebhookRecord>> {
                use sqlx::Row;
                let sql = self.sql(
                    "SELECT id, integration_id, received_at_ms, state, error, attempts, next_attempt_at_ms, processed_at_ms \
                     FROM crm_webhooks WHERE integration_id = $1 ORDER BY id DESC LIMIT $2",
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql.into_owned()))
                    .bind(integration_id)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await
                    .map_err($crate::shared::map_err)?;
                rows.iter()
                    .map(|row| {
                        Ok($crate::crm::CrmWebhookRecord {
                            id: row.try_get("id")?,
                            integration_id: row.try_get("integration_id")?,
                            received_at_ms: row.try_get("received_at_ms")?,
                            state: row.try_get("state")?,
                            error: row.try_get("error")?,
                            attempts: row.try_get("attempts")?,
                            next_attempt_at_ms: row.try_get("next_attempt_at_ms")?,
                            processed_at_ms: row.try_get("processed_at_ms")?,
                        })
                    })
                    .collect()
            }

            async fn record_stage_change(&self, r: &$crate::crm::StageChangeRecord) -> $crate::Result<()> {
                // Seen again: a repeat. An outcome that produced an event stays so; anything
                // else shows the latest attempt (a contact captured since, a rule added since).
                let sql = self.sql(
                    "INSERT INTO crm_stage_changes (tenant, integration, deal_id, pipeline_id, stage_id, entry_key, occurred_at_ms, \
                     outcome, event_name, event_id, detail, first_seen_at_ms, last_seen_at_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12) \
                     ON CONFLICT (integration, deal_id, pipeline_id, stage_id, entry_key) DO UPDATE SET \
                     repeats = crm_stage_changes.repeats + 1, last_seen_at_ms = excluded.last_seen_at_ms, \
                     outcome = CASE WHEN crm_stage_changes.outcome = 'produced' THEN 'produced' ELSE excluded.outcome END, \
                     event_name = CASE WHEN crm_stage_changes.outcome = 'produced' THEN crm_stage_changes.event_name ELSE excluded.event_name END, \
                     event_id = CASE WHEN crm_stage_changes.outcome = 'produced' THEN crm_stage_changes.event_id ELSE excluded.event_id END, \
                     detail = CASE WHEN crm_stage_changes.outcome = 'produced' THEN crm_stage_changes.detail ELSE excluded.detail END",
                );
                sqlx::query(sqlx::AssertSqlSafe(sql.into_owned()))
                    .bind(&r.tenant)
                    .bind(&r.integration)
                    .bind(&r.deal_id)
                    .bind(&r.pipeline_id)
                    .bind(&r.stage_id)
                    .bind(&r.entry_key)
                    .bind(r.occurred_at_ms)
                    .bind(&r.outcome)
                    .bind(&r.event_name)
                    .bind(&r.event_id)
                    .bind(&r.detail)
                    .bind(r.last_seen_at_ms)
                    .execute(self.writer())
                    .await
                    .map_err($crate::shared::map_err)?;
                Ok(())
            }

            async fn list_stage_changes(&self, tenant: &str, integration: Option<&str>, limit: i64) -> $crate::Result<Vec<$crate::crm::StageChangeRecord>> {
                let mut b = sqlx::QueryBuilder::<$db>::new(format!(
                    "SELECT {} FROM crm_stage_changes WHERE tenant = ",
                    $crate::crm::STAGE_COLUMNS
                ));
                b.push_bind(tenant.to_owned());
                if let Some(i) = integration {
                    b.push(" AND integration = ").push_bind(i.to_owned());
                }
                b.push(" ORDER BY last_seen_at_ms DESC, id DESC LIMIT ").push_bind(limit);
                let rows = b.build().fetch_all(&self.pool).await.map_err($crate::shared::map_err)?;
                rows.iter().map(Self::stage_change_from_row).collect()
            }

            async fn stage_change_counts(&self, tenant: &str, integration: &str) -> $crate::Result<$crate::crm::StageChangeCounts> {
                use sqlx::Row;
                let sql = self.sql(
                    "SELECT outcome, COUNT(*) AS n, CAST(COALESCE(SUM(repeats), 0) AS BIGINT) AS r FROM crm_stage_changes \
                     WHERE tenant = $1 AND integration = $2 GROUP BY outcome ORDER BY outcome",
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql.into_owned()))
                    .bind(tenant)
                    .bind(integration)
                    .fetch_all(&self.pool)
                    .await
                    .map_err($crate::shared::map_err)?;
                let mut counts = $crate::crm::StageChangeCounts::default();
                for row in &rows {
                    let n: i64 = row.try_get("n")?;
                    let r: i64 = row.try_get("r")?;
                    counts.seen += n;
                    counts.repeats += r;
                    counts.by_outcome.push((row.try_get("outcome")?, n));
                }
                let sql = self.sql(
                    "SELECT state, COUNT(*) AS n FROM crm_webhooks WHERE integration_id = $1 AND state <> 'processed' GROUP BY state",
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql.into_owned()))
                    .bind(integration)
                    .fetch_all(&self.pool)
                    .await
                    .map_err($crate::shared::map_err)?;
                for row in &rows {
                    let state: String = row.try_get("state")?;
                    let n: i64 = row.try_get("n")?;
                    match state.as_str() {
                        "pending" => counts.webhooks_pending = n,
                        "failed" => counts.webhooks_failed = n,
                        _ => {}
                    }
                }
                Ok(counts)
            }

            async fn purge_crm(&self, before_ms: i64) -> $crate::Result<(u64, u64)> {
                let mut done = [0u64; 2];
                for (i, sql) in [
                    "DELETE FROM crm_webhooks WHERE state <> 'pending' AND received_at_ms < $1",
                    "DELETE FROM crm_stage_changes WHERE last_seen_at_ms < $1",
                ]
                .into_iter()
                .enumerate()
                {
                    done[i] = sqlx::query(sqlx::AssertSqlSafe(self.sql(sql).into_owned()))
                        .bind(before_ms)
                        .execute(self.writer())
                        .await
                        .map_err($crate::shared::map_err)?
                        .rows_affected();
                }
                Ok((done[0], done[1]))
            }
        }
    };
}
pub(crate) use impl_crm_store;
