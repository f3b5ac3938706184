//! Capture storage: webhook deliveries as received (and their forward queue), contacts per
//! (channel, asset, customer), and their ad touches. A supertrait of [`Store`](crate::Store),
//! implemented once for both backends by `impl_capture_store!`.
//!
//! Everything is keyed by `(channel, asset_id, …)` so that ownership of an asset is all a
//! tenant check needs. Phone numbers are only ever stored as SHA-256 hashes.

use async_trait::async_trait;
use serde::Serialize;

use crate::Result;

/// A verified webhook delivery to store before answering Meta.
#[derive(Debug, Clone)]
pub struct NewWebhook {
    /// The raw body, byte for byte as signed.
    pub body: Vec<u8>,
    /// Lower-case hex SHA-256 of `body`: identical redeliveries are stored once.
    pub body_sha256: String,
    /// The `X-Hub-Signature-256` header as received, for forwarding.
    pub signature: String,
    /// WABA id from the URL, for On-Premises payloads that carry none.
    pub waba_hint: Option<String>,
    pub received_at_ms: i64,
    /// Queue it for forwarding upstream.
    pub forward: bool,
}

/// What happened to a `NewWebhook` at insert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookInsert {
    Inserted(i64),
    /// The same body is already stored.
    Duplicate,
}

/// A stored webhook waiting to be parsed.
#[derive(Debug, Clone)]
pub struct PendingWebhook {
    pub id: i64,
    pub body: Vec<u8>,
    pub waba_hint: Option<String>,
    pub received_at_ms: i64,
    /// Processing tries so far (each ended by a transient error).
    pub attempts: i32,
}

/// How processing a delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookFinish<'a> {
    /// Everything in it was captured.
    Processed,
    /// Done, but something in it was not captured: `error` says what and why.
    Failed { error: &'a str },
    /// A transient error: tried again at `next_at_ms` (still `pending`).
    Retry { next_at_ms: i64, error: &'a str },
}

/// Which failed deliveries to queue again. All fields empty: every failed delivery.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReprocessFilter {
    /// Only these ids.
    pub ids: Vec<i64>,
    /// Only deliveries received at or after this time.
    pub since_ms: Option<i64>,
}

/// What `requeue_failed_webhooks` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Requeued {
    /// Failed deliveries set back to `pending`.
    pub requeued: u64,
    /// Failed deliveries that matched but whose raw body is already removed: they cannot be
    /// processed again.
    pub without_body: u64,
}

/// A stored webhook as inspection shows it.
#[derive(Debug, Clone, Serialize)]
pub struct WebhookRecord {
    pub id: i64,
    pub received_at_ms: i64,
    /// `pending`, `processed` or `failed`: signed but not understood, or understood but an
    /// automatic event in it could not be reported (refused, too old, unregistered asset);
    /// `error` says why.
    pub state: String,
    pub error: Option<String>,
    pub processed_at_ms: Option<i64>,
    /// `pending`, `sending`, `done` or `dead`; `None` when not forwarded.
    pub forward_state: Option<String>,
    pub forward_attempts: i32,
    pub forward_error: Option<String>,
    /// Processing tries that met a transient error.
    pub attempts: i32,
    /// When a pending delivery is tried again (after a transient error).
    pub next_attempt_at_ms: Option<i64>,
    /// `whatsapp`, `messenger` or `instagram`, once processed.
    pub channel: Option<String>,
    /// The raw body, lossily decoded, while it is kept: until processed (and forwarded), then
    /// for `webhooks.raw_body_retention`; a failed delivery's for `webhooks.failed_body_retention`.
    pub body: Option<String>,
    /// When the raw body was removed.
    pub body_removed_at_ms: Option<i64>,
}

/// A webhook claimed for forwarding under a lease.
#[derive(Debug, Clone)]
pub struct ForwardJob {
    pub id: i64,
    pub body: Vec<u8>,
    pub signature: String,
    /// Attempts so far, including this one.
    pub attempts: i32,
}

/// Where a forward goes after an attempt.
#[derive(Debug, Clone)]
pub enum ForwardResolution {
    Done,
    Retry { next_at_ms: i64, error: String },
    Dead { error: String },
}

/// How a customer is looked up. Each names one column of `contacts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContactKey {
    PhoneHash(String),
    WaUserId(String),
    ScopedId(String),
    ConversationId(String),
    CustomerId(String),
}

impl ContactKey {
    pub fn column(&self) -> &'static str {
        match self {
            ContactKey::PhoneHash(_) => "phone_hash",
            ContactKey::WaUserId(_) => "wa_user_id",
            ContactKey::ScopedId(_) => "scoped_id",
            ContactKey::ConversationId(_) => "conversation_id",
            ContactKey::CustomerId(_) => "customer_id",
        }
    }

    pub fn value(&self) -> &str {
        match self {
            ContactKey::PhoneHash(v)
            | ContactKey::WaUserId(v)
            | ContactKey::ScopedId(v)
            | ContactKey::ConversationId(v)
            | ContactKey::CustomerId(v) => v,
        }
    }
}

/// A customer of one business asset on one channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Contact {
    #[serde(skip)]
    pub id: i64,
    pub channel: String,
    pub asset_id: String,
    /// The relay's id for the conversation, generated once per (channel, asset, customer).
    pub conversation_id: String,
    /// SHA-256 of the E.164 digits of the phone (`wa_id`).
    pub phone_hash: Option<String>,
    /// WhatsApp business-scoped user id.
    pub wa_user_id: Option<String>,
    /// PSID or IGSID.
    pub scoped_id: Option<String>,
    /// The CRM's id, once linked.
    pub customer_id: Option<String>,
    pub first_seen_at_ms: i64,
    pub last_seen_at_ms: i64,
}

/// A customer message seen in a webhook, with its ad referral if it had one.
#[derive(Debug, Clone)]
pub struct NewSighting {
    pub channel: String,
    pub asset_id: String,
    pub phone_hash: Option<String>,
    pub wa_user_id: Option<String>,
    pub scoped_id: Option<String>,
    /// Used when the contact is new.
    pub conversation_id: String,
    pub seen_at_ms: i64,
    pub touch: Option<NewTouch>,
}

/// An ad (or link) touch. Never overwrites an earlier one: unique per message id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NewTouch {
    pub message_id: String,
    pub touched_at_ms: i64,
    pub click_id: Option<String>,
    pub ad_id: Option<String>,
    pub source_type: Option<String>,
    pub source_url: Option<String>,
    pub headline: Option<String>,
    pub body: Option<String>,
    pub media_type: Option<String>,
    pub media_url: Option<String>,
    pub ref_param: Option<String>,
}

/// A stored touch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Touch {
    pub touch_id: i64,
    #[serde(flatten)]
    pub touch: NewTouch,
    pub received_at_ms: i64,
}

/// What recording a sighting did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SightingOutcome {
    pub contact_id: i64,
    /// False when the touch's message id was already stored (a redelivery).
    pub touch_inserted: bool,
}

/// Per-asset capture switches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CaptureOptions {
    /// WhatsApp conversions by contact without a click id go out with the hashed phone only.
    pub allow_unattributed: bool,
    /// Report Meta-detected `automatic_events` to the asset's dataset.
    pub automatic_events: bool,
}

/// Rows removed by the attribution retention job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapturePurge {
    pub contacts: u64,
    /// Earlier WhatsApp user ids (`user_id_update`) that stopped resolving.
    pub user_id_aliases: u64,
    pub touches: u64,
    pub webhooks: u64,
}

#[async_trait]
pub trait CaptureStore: Send + Sync + 'static {
    /// Stores a verified delivery (committed when this returns). An identical body is
    /// `Duplicate`.
    async fn insert_webhook(&self, webhook: &NewWebhook) -> Result<WebhookInsert>;
    /// Webhooks not yet parsed and due at `now_ms` (not waiting for a retry), oldest first.
    /// `i64::MAX` lists every pending one.
    async fn pending_webhooks(&self, now_ms: i64, limit: i64) -> Result<Vec<PendingWebhook>>;
    /// Records how processing ended: processed, failed with the reason (not understood, or a
    /// message or automatic event in it not captured), or pending again for a retry (counted in
    /// `attempts`). `channel` is kept for the record once the body is removed.
    async fn finish_webhook(
        &self,
        id: i64,
        channel: Option<&str>,
        finish: WebhookFinish<'_>,
        now_ms: i64,
    ) -> Result<()>;
    /// Sets failed deliveries that `filter` selects and that still have their body back to
    /// `pending` (attempts reset), to be processed again.
    async fn requeue_failed_webhooks(&self, filter: &ReprocessFilter) -> Result<Requeued>;
    /// Removes raw bodies no longer needed: processed deliveries finished at or before
    /// `processed_before_ms`, failed ones finished at or before `failed_before_ms`, and in
    /// either case not waiting to be forwarded. Metadata, sha256 and outcome stay. Returns how
    /// many bodies were removed.
    async fn remove_webhook_bodies(
        &self,
        processed_before_ms: i64,
        failed_before_ms: i64,
        now_ms: i64,
    ) -> Result<u64>;
    /// Newest first, optionally only in `state`.
    async fn list_webhooks(&self, state: Option<&str>, limit: i64) -> Result<Vec<WebhookRecord>>;

    /// Claims forwards that are due (lease as for events).
    async fn claim_forwards(
        &self,
        owner: &str,
        now_ms: i64,
        lease_until_ms: i64,
        limit: i64,
    ) -> Result<Vec<ForwardJob>>;
    async fn resolve_forward(
        &self,
        id: i64,
        owner: &str,
        resolution: &ForwardResolution,
    ) -> Result<()>;

    /// Finds or creates the contact (by any identity it carries, filling in new ones) and
    /// stores the touch unless its message id is already stored. One transaction.
    async fn record_sighting(&self, sighting: &NewSighting) -> Result<SightingOutcome>;
    async fn find_contact(
        &self,
        channel: &str,
        asset_id: &str,
        key: &ContactKey,
    ) -> Result<Option<Contact>>;
    /// Meta's `user_id_update`: the contact known by the WhatsApp user id `previous` is keyed by
    /// `current` from now on, and `previous` keeps finding it (`find_contact`, sightings) until
    /// `purge_capture` passes `now_ms`. A contact already created under `current` (messages
    /// seen before the update) is merged into it: touches, aliases and identities it lacks.
    /// Idempotent; `false` when no contact has `previous`. One transaction.
    async fn rekey_wa_user_id(
        &self,
        channel: &str,
        asset_id: &str,
        previous: &str,
        current: &str,
        now_ms: i64,
    ) -> Result<bool>;
    /// Every touch of a contact, newest first.
    async fn contact_touches(&self, contact_id: i64) -> Result<Vec<Touch>>;
    /// Links the CRM's customer id to the contact found by `key`. `NotFound` without such a
    /// contact, `Conflict` when the id belongs to another contact of the asset.
    async fn link_customer_id(
        &self,
        channel: &str,
        asset_id: &str,
        key: &ContactKey,
        customer_id: &str,
    ) -> Result<Contact>;

    async fn capture_options(&self, asset_id: &str) -> Result<CaptureOptions>;
    async fn set_capture_options(
        &self,
        asset_id: &str,
        options: &CaptureOptions,
        now_ms: i64,
    ) -> Result<()>;

    /// Deletes touches, contacts not seen, user-id aliases replaced and finished webhooks
    /// received before `before_ms`.
    async fn purge_capture(&self, before_ms: i64) -> Result<CapturePurge>;
}

/// Columns of `contacts` read into a [`Contact`].
pub const CONTACT_COLUMNS: &str = "id, channel, asset_id, conversation_id, phone_hash, \
    wa_user_id, scoped_id, customer_id, first_seen_at_ms, last_seen_at_ms";

/// Columns of `touches` read into a [`Touch`].
pub const TOUCH_COLUMNS: &str = "id, message_id, touched_at_ms, click_id, ad_id, source_type, \
    source_url, headline, body, media_type, media_url, ref_param, received_at_ms";

macro_rules! impl_capture_store {
    ($store:ty, $db:ty) => {
        impl $store {
            fn contact_from_row(row: &<$db as sqlx::Database>::Row) -> $crate::Result<$crate::capture::Contact> {
                use sqlx::Row;
                Ok($crate::capture::Contact {
                    id: row.try_get("id")?,
                    channel: row.try_get("channel")?,
                    asset_id: row.try_get("asset_id")?,
                    conversation_id: row.try_get("conversation_id")?,
                    phone_hash: row.try_get("phone_hash")?,
                    wa_user_id: row.try_get("wa_user_id")?,
                    scoped_id: row.try_get("scoped_id")?,
                    customer_id: row.try_get("customer_id")?,
                    first_seen_at_ms: row.try_get("first_seen_at_ms")?,
                    last_seen_at_ms: row.try_get("last_seen_at_ms")?,
                })
            }

            /// The contact `sql` selects with `$1` = channel, `$2` = asset, `$3` = `value`.
            async fn contact_where(
                conn: &mut <$db as sqlx::Database>::Connection,
                sql: &str,
                channel: &str,
                asset_id: &str,
                value: &str,
            ) -> $crate::Result<Option<$crate::capture::Contact>> {
                let row = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                    .bind(channel)
                    .bind(asset_id)
                    .bind(value)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err($crate::shared::map_err)?;
                row.as_ref().map(Self::contact_from_row).transpose()
            }

            fn touch_from_row(row: &<$db as sqlx::Database>::Row) -> $crate::Result<$crate::capture::Touch> {
                use sqlx::Row;
                Ok($crate::capture::Touch {
                    touch_id: row.try_get("id")?,
                    touch: $crate::capture::NewTouch {
                        message_id: row.try_get("message_id")?,
                        touched_at_ms: row.try_get("touched_at_ms")?,
                        click_id: row.try_get("click_id")?,
                        ad_id: row.try_get("ad_id")?,
                        source_type: row.try_get("source_type")?,
                        source_url: row.try_get("source_url")?,
                        headline: row.try_get("headline")?,
                        body: row.try_get("body")?,
                        media_type: row.try_get("media_type")?,
                        media_url: row.try_get("media_url")?,
                        ref_param: row.try_get("ref_param")?,
                    },
                    received_at_ms: row.try_get("received_at_ms")?,
                })
            }
        }

        #[async_trait::async_trait]
        impl $crate::capture::CaptureStore for $store {
            async fn insert_webhook(&self, w: &$crate::capture::NewWebhook) -> $crate::Result<$crate::capture::WebhookInsert> {
                use sqlx::Row;
                let sql = self.sql(
                    "INSERT INTO webhooks (body_sha256, body, signature, waba_hint, received_at_ms, forward_state, forward_next_at_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $5) ON CONFLICT (body_sha256) DO NOTHING RETURNING id",
                );
                let row = sqlx::query(sqlx::AssertSqlSafe(sql.into_owned()))
                    .bind(&w.body_sha256)
                    .bind(&w.body)
                    .bind(&w.signature)
                    .bind(&w.waba_hint)
                    .bind(w.received_at_ms)
                    .bind(w.forward.then_some("pending"))
                    .fetch_optional(self.writer())
                    .await
                    .map_err($crate::shared::map_err)?;
                Ok(match row {
                    Some(row) => $crate::capture::WebhookInsert::Inserted(row.try_get("id")?),
                    None => $crate::capture::WebhookInsert::Duplicate,
                })
            }

            async fn pending_webhooks(&self, now_ms: i64, limit: i64) -> $crate::Result<Vec<$crate::capture::PendingWebhook>> {
                use sqlx::Row;
                let sql = self.sql(
                    "SELECT id, body, waba_hint, received_at_ms, attempts FROM webhooks WHERE state = 'pending' \
                     AND (next_attempt_at_ms IS NULL OR next_attempt_at_ms <= $1) ORDER BY id LIMIT $2",
                );
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql.into_owned()))
                    .bind(now_ms)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await
                    .map_err($crate::shared::map_err)?;
                rows.iter()
                    .map(|row| {
                        Ok($crate::capture::PendingWebhook {
                            id: row.try_get("id")?,
                            body: row.try_get("body")?,
                            waba_hint: row.try_get("waba_hint")?,
                            received_at_ms: row.try_get("received_at_ms")?,
                            attempts: row.try_get("attempts")?,
                        })
                    })
                    .collect()
            }

            async fn finish_webhook(
                &self,
                id: i64,
                channel: Option<&str>,
                finish: $crate::capture::WebhookFinish<'_>,
                now_ms: i64,
            ) -> $crate::Result<()> {
                use $crate::capture::WebhookFinish;
                let sql = match finish {
                    WebhookFinish::Processed | WebhookFinish::Failed { .. } => self.sql(
                        "UPDATE webhooks SET state = $1, error = $2, processed_at_ms = $3, \
                         channel = COALESCE($4, channel), next_attempt_at_ms = NULL WHERE id = $5",
                    ),
                    WebhookFinish::Retry { .. } => self.sql(
                        "UPDATE webhooks SET state = $1, error = $2, next_attempt_at_ms = $3, \
                         channel = COALESCE($4, channel), attempts = attempts + 1 WHERE id = $5",
                    ),
                };
                let (state, error, at) = match finish {
                    WebhookFinish::Processed => ("processed", None, now_ms),
                    WebhookFinish::Failed { error } => ("failed", Some(error), now_ms),
                    WebhookFinish::Retry { next_at_ms, error } => ("pending", Some(error), next_at_ms),
                };
                sqlx::query(sqlx::AssertSqlSafe(sql.into_owned()))
                    .bind(state)
                    .bind(error)
                    .bind(at)
                    .bind(channel)
                    .bind(id)
                    .execute(self.writer())
                    .await
                    .map_err($crate::shared::map_err)?;
                Ok(())
            }

            async fn requeue_failed_webhooks(
                &self,
                filter: &$crate::capture::ReprocessFilter,
            ) -> $crate::Result<$crate::capture::Requeued> {
                // One statement per outcome, the same selection in both.
                let select = |b: &mut sqlx::QueryBuilder<$db>| {
                    b.push(" WHERE state = 'failed'");
                    if let Some(since) = filter.since_ms {
                        b.push(" AND received_at_ms >= ").push_bind(since);
                    }
                    if !filter.ids.is_empty() {
                        b.push(" AND id IN (");
                        let mut list = b.separated(", ");
                        for id in &filter.ids {
                            list.push_bind(*id);
                        }
                        b.push(")");
                    }
                };
                let mut tx = self.begin_write().await?;
                let mut b = sqlx::QueryBuilder::<$db>::new(
                    "UPDATE webhooks SET state = 'pending', attempts = 0, next_attempt_at_ms = NULL, \
                     error = NULL, processed_at_ms = NULL",
                );
                select(&mut b);
                b.push(" AND body_removed_at_ms IS NULL");
                let requeued = b.build().execute(&mut *tx).await.map_err($crate::shared::map_err)?.rows_affected();
                let mut b = sqlx::QueryBuilder::<$db>::new("SELECT COUNT(*) FROM webhooks");
                select(&mut b);
                b.push(" AND body_removed_at_ms IS NOT NULL");
                let without_body: i64 = b
                    .build_query_scalar()
                    .fetch_one(&mut *tx)
                    .await
                    .map_err($crate::shared::map_err)?;
                tx.commit().await.map_err($crate::shared::map_err)?;
                Ok($crate::capture::Requeued { requeued, without_body: without_body as u64 })
            }

            async fn remove_webhook_bodies(
                &self,
                processed_before_ms: i64,
                failed_before_ms: i64,
                now_ms: i64,
            ) -> $crate::Result<u64> {
                let sql = self.sql(
                    "UPDATE webhooks SET body = $1, body_removed_at_ms = $2 \
                     WHERE body_removed_at_ms IS NULL \
                     AND ((state = 'processed' AND processed_at_ms <= $3) OR (state = 'failed' AND processed_at_ms <= $4)) \
                     AND (forward_state IS NULL OR forward_state IN ('done', 'dead'))",
                );
                let done = sqlx::query(sqlx::AssertSqlSafe(sql.into_owned()))
                    .bind(Vec::<u8>::new())
                    .bind(now_ms)
                    .bind(processed_before_ms)
                    .bind(failed_before_ms)
                    .execute(self.writer())
                    .await
                    .map_err($crate::shared::map_err)?;
                Ok(done.rows_affected())
            }

            async fn list_webhooks(&self, state: Option<&str>, limit: i64) -> $crate::Result<Vec<$crate::capture::WebhookRecord>> {
                // One row mapping for both listings: the page's, with no byte bound.
                let page = $crate::pages::PageStore::list_webhooks_page(self, state, None, limit, usize::MAX).await?;
                Ok(page.items)
            }

            async fn claim_forwards(
                &self,
                owner: &str,
                now_ms: i64,
                lease_until_ms: i64,
                limit: i64,
            ) -> $crate::Result<Vec<$crate::capture::ForwardJob>> {
                use sqlx::Row;
                // The due condition is repeated outside the sub-select: PostgreSQL re-checks it
                // after waiting on a row another claimer just took, so no row is claimed twice.
                let due = "((forward_state = 'pending' AND forward_next_at_ms <= $1) \
                           OR (forward_state = 'sending' AND forward_lease_until_ms < $1))";
                let sql = self.sql(&format!(
                    "UPDATE webhooks SET forward_state = 'sending', forward_lease_owner = $2, forward_lease_until_ms = $3, \
                     forward_attempts = forward_attempts + 1 \
                     WHERE id IN (SELECT id FROM webhooks WHERE {due} ORDER BY forward_next_at_ms, id LIMIT $4) AND {due} \
                     RETURNING id, body, signature, forward_attempts"
                ))
                .into_owned();
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(now_ms)
                    .bind(owner)
                    .bind(lease_until_ms)
                    .bind(limit)
                    .fetch_all(self.writer())
                    .await
                    .map_err($crate::shared::map_err)?;
                let mut jobs = rows
                    .iter()
                    .map(|row| {
                        Ok($crate::capture::ForwardJob {
                            id: row.try_get("id")?,
                            body: row.try_get("body")?,
                            signature: row.try_get("signature")?,
                            attempts: row.try_get("forward_attempts")?,
                        })
                    })
                    .collect::<$crate::Result<Vec<_>>>()?;
                jobs.sort_by_key(|j| j.id);
                Ok(jobs)
            }

            async fn resolve_forward(
                &self,
                id: i64,
                owner: &str,
                resolution: &$crate::capture::ForwardResolution,
            ) -> $crate::Result<()> {
                let (state, next_at, error) = match resolution {
                    $crate::capture::ForwardResolution::Done => ("done", None, None),
                    $crate::capture::ForwardResolution::Retry { next_at_ms, error } => ("pending", Some(*next_at_ms), Some(error.as_str())),
                    $crate::capture::ForwardResolution::Dead { error } => ("dead", None, Some(error.as_str())),
                };
                let sql = self.sql(
                    "UPDATE webhooks SET forward_state = $1, forward_next_at_ms = COALESCE($2, forward_next_at_ms), \
                     forward_error = $3, forward_lease_owner = NULL, forward_lease_until_ms = NULL \
                     WHERE id = $4 AND forward_lease_owner = $5 AND forward_state = 'sending'",
                );
                sqlx::query(sqlx::AssertSqlSafe(sql.into_owned()))
                    .bind(state)
                    .bind(next_at)
                    .bind(error)
                    .bind(id)
                    .bind(owner)
                    .execute(self.writer())
                    .await
                    .map_err($crate::shared::map_err)?;
                Ok(())
            }

            async fn record_sighting(&self, s: &$crate::capture::NewSighting) -> $crate::Result<$crate::capture::SightingOutcome> {
                use sqlx::Row;
                let mut tx = self.begin_write().await?;
                let find = self.sql(&format!(
                    "SELECT {} FROM contacts WHERE channel = $1 AND asset_id = $2 \
                     AND (phone_hash = $3 OR wa_user_id = $4 OR scoped_id = $5 \
                     OR id IN (SELECT contact_id FROM contact_user_id_aliases \
                     WHERE channel = $1 AND asset_id = $2 AND wa_user_id = $4)) ORDER BY id LIMIT 1",
                    $crate::capture::CONTACT_COLUMNS
                ))
                .into_owned();
                let mut existing = None;
                for attempt in 0..2 {
                    let row = sqlx::query(sqlx::AssertSqlSafe(find.clone()))
                        .bind(&s.channel)
                        .bind(&s.asset_id)
                        .bind(&s.phone_hash)
                        .bind(&s.wa_user_id)
                        .bind(&s.scoped_id)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err($crate::shared::map_err)?;
                    if let Some(row) = row {
                        existing = Some(Self::contact_from_row(&row)?);
                        break;
                    }
                    if attempt == 1 {
                        break;
                    }
                    let insert = self.sql(
                        "INSERT INTO contacts (channel, asset_id, conversation_id, phone_hash, wa_user_id, scoped_id, \
                         first_seen_at_ms, last_seen_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
                         ON CONFLICT DO NOTHING RETURNING id",
                    );
                    let row = sqlx::query(sqlx::AssertSqlSafe(insert.into_owned()))
                        .bind(&s.channel)
                        .bind(&s.asset_id)
                        .bind(&s.conversation_id)
                        .bind(&s.phone_hash)
                        .bind(&s.wa_user_id)
                        .bind(&s.scoped_id)
                        .bind(s.seen_at_ms)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err($crate::shared::map_err)?;
                    if row.is_some() {
                        break;
                    }
                    // Another writer created it meanwhile: read theirs.
                }
                let contact_id: i64 = match existing {
                    Some(c) => {
                        // Fill in identities this message adds (a phone after a user id, …),
                        // unless another contact already holds one: contacts are not merged.
                        let fill = |column: &str, param: &str| {
                            format!(
                                "{column} = COALESCE({column}, (SELECT {param} WHERE NOT EXISTS \
                                 (SELECT 1 FROM contacts o WHERE o.channel = $6 AND o.asset_id = $7 AND o.{column} = {param})))"
                            )
                        };
                        let update = self.sql(&format!(
                            "UPDATE contacts SET {}, {}, {}, \
                             last_seen_at_ms = CASE WHEN last_seen_at_ms < $4 THEN $4 ELSE last_seen_at_ms END \
                             WHERE id = $5",
                            fill("phone_hash", "$1"),
                            fill("wa_user_id", "$2"),
                            fill("scoped_id", "$3"),
                        ))
                        .into_owned();
                        sqlx::query(sqlx::AssertSqlSafe(update))
                            .bind(&s.phone_hash)
                            .bind(&s.wa_user_id)
                            .bind(&s.scoped_id)
                            .bind(s.seen_at_ms)
                            .bind(c.id)
                            .bind(&s.channel)
                            .bind(&s.asset_id)
                            .execute(&mut *tx)
                            .await
                            .map_err($crate::shared::map_err)?;
                        c.id
                    }
                    None => {
                        let sql = self.sql("SELECT id FROM contacts WHERE conversation_id = $1");
                        let row = sqlx::query(sqlx::AssertSqlSafe(sql.into_owned()))
                            .bind(&s.conversation_id)
                            .fetch_one(&mut *tx)
                            .await
                            .map_err($crate::shared::map_err)?;
                        row.try_get("id")?
                    }
                };
                let mut touch_inserted = false;
                if let Some(t) = &s.touch {
                    let insert = self.sql(
                        "INSERT INTO touches (contact_id, channel, asset_id, message_id, touched_at_ms, click_id, ad_id, \
                         source_type, source_url, headline, body, media_type, media_url, ref_param, received_at_ms) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
                         ON CONFLICT (channel, asset_id, message_id) DO NOTHING RETURNING id",
                    );
                    let row = sqlx::query(sqlx::AssertSqlSafe(insert.into_owned()))
                        .bind(contact_id)
                        .bind(&s.channel)
                        .bind(&s.asset_id)
                        .bind(&t.message_id)
                        .bind(t.touched_at_ms)
                        .bind(&t.click_id)
                        .bind(&t.ad_id)
                        .bind(&t.source_type)
                        .bind(&t.source_url)
                        .bind(&t.headline)
                        .bind(&t.body)
                        .bind(&t.media_type)
                        .bind(&t.media_url)
                        .bind(&t.ref_param)
                        .bind(s.seen_at_ms)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err($crate::shared::map_err)?;
                    touch_inserted = row.is_some();
                }
                tx.commit().await.map_err($crate::shared::map_err)?;
                Ok($crate::capture::SightingOutcome { contact_id, touch_inserted })
            }

            async fn find_contact(
                &self,
                channel: &str,
                asset_id: &str,
                key: &$crate::capture::ContactKey,
            ) -> $crate::Result<Option<$crate::capture::Contact>> {
                let sql = self.sql(&format!(
                    "SELECT {} FROM contacts WHERE channel = $1 AND asset_id = $2 AND {} = $3",
                    $crate::capture::CONTACT_COLUMNS,
                    key.column()
                ))
                .into_owned();
                let mut row = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(channel)
                    .bind(asset_id)
                    .bind(key.value())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err($crate::shared::map_err)?;
                if row.is_none() && matches!(key, $crate::capture::ContactKey::WaUserId(_)) {
                    // A user id the contact had before a `user_id_update`.
                    let sql = self.sql(&format!(
                        "SELECT {} FROM contacts WHERE id = (SELECT contact_id FROM contact_user_id_aliases \
                         WHERE channel = $1 AND asset_id = $2 AND wa_user_id = $3)",
                        $crate::capture::CONTACT_COLUMNS
                    ))
                    .into_owned();
                    row = sqlx::query(sqlx::AssertSqlSafe(sql))
                        .bind(channel)
                        .bind(asset_id)
                        .bind(key.value())
                        .fetch_optional(&self.pool)
                        .await
                        .map_err($crate::shared::map_err)?;
                }
                row.as_ref().map(Self::contact_from_row).transpose()
            }

            async fn rekey_wa_user_id(
                &self,
                channel: &str,
                asset_id: &str,
                previous: &str,
                current: &str,
                now_ms: i64,
            ) -> $crate::Result<bool> {
                if previous == current {
                    return Ok(false);
                }
                let mut tx = self.begin_write().await?;
                let by_id = self.sql(&format!(
                    "SELECT {} FROM contacts WHERE channel = $1 AND asset_id = $2 AND wa_user_id = $3",
                    $crate::capture::CONTACT_COLUMNS
                ))
                .into_owned();
                let by_alias = self.sql(&format!(
                    "SELECT {} FROM contacts WHERE id = (SELECT contact_id FROM contact_user_id_aliases \
                     WHERE channel = $1 AND asset_id = $2 AND wa_user_id = $3)",
                    $crate::capture::CONTACT_COLUMNS
                ))
                .into_owned();
                let Some(old) = (match Self::contact_where(&mut tx, &by_id, channel, asset_id, previous).await? {
                    Some(c) => Some(c),
                    // Already re-keyed (a redelivery), or re-keyed again since.
                    None => Self::contact_where(&mut tx, &by_alias, channel, asset_id, previous).await?,
                }) else {
                    return Ok(false);
                };
                let newer = Self::contact_where(&mut tx, &by_id, channel, asset_id, current).await?;
                let run = |sql: &str| sqlx::AssertSqlSafe(self.sql(sql).into_owned());
                if let Some(newer) = newer.filter(|n| n.id != old.id) {
                    // Messages under the new id came first and made a contact of their own:
                    // fold it into the contact with the history.
                    for moved in [
                        "UPDATE touches SET contact_id = $1 WHERE contact_id = $2",
                        "UPDATE contact_user_id_aliases SET contact_id = $1 WHERE contact_id = $2",
                    ] {
                        sqlx::query(run(moved))
                            .bind(old.id)
                            .bind(newer.id)
                            .execute(&mut *tx)
                            .await
                            .map_err($crate::shared::map_err)?;
                    }
                    sqlx::query(run("DELETE FROM contacts WHERE id = $1"))
                        .bind(newer.id)
                        .execute(&mut *tx)
                        .await
                        .map_err($crate::shared::map_err)?;
                    sqlx::query(run(
                        "UPDATE contacts SET phone_hash = COALESCE(phone_hash, $1), scoped_id = COALESCE(scoped_id, $2), \
                         customer_id = COALESCE(customer_id, $3), \
                         first_seen_at_ms = CASE WHEN first_seen_at_ms > $4 THEN $4 ELSE first_seen_at_ms END, \
                         last_seen_at_ms = CASE WHEN last_seen_at_ms < $5 THEN $5 ELSE last_seen_at_ms END \
                         WHERE id = $6",
                    ))
                    .bind(&newer.phone_hash)
                    .bind(&newer.scoped_id)
                    .bind(&newer.customer_id)
                    .bind(newer.first_seen_at_ms)
                    .bind(newer.last_seen_at_ms)
                    .bind(old.id)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::shared::map_err)?;
                }
                if let Some(replaced) = old.wa_user_id.as_deref().filter(|u| *u != current) {
                    sqlx::query(run(
                        "INSERT INTO contact_user_id_aliases (channel, asset_id, wa_user_id, contact_id, replaced_at_ms) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (channel, asset_id, wa_user_id) \
                         DO UPDATE SET contact_id = excluded.contact_id, replaced_at_ms = excluded.replaced_at_ms",
                    ))
                    .bind(channel)
                    .bind(asset_id)
                    .bind(replaced)
                    .bind(old.id)
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::shared::map_err)?;
                }
                // The current id lives in `contacts` now, never also as an alias.
                sqlx::query(run(
                    "DELETE FROM contact_user_id_aliases WHERE channel = $1 AND asset_id = $2 AND wa_user_id = $3",
                ))
                .bind(channel)
                .bind(asset_id)
                .bind(current)
                .execute(&mut *tx)
                .await
                .map_err($crate::shared::map_err)?;
                sqlx::query(run("UPDATE contacts SET wa_user_id = $1 WHERE id = $2"))
                    .bind(current)
                    .bind(old.id)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::shared::map_err)?;
                tx.commit().await.map_err($crate::shared::map_err)?;
                Ok(true)
            }

            async fn contact_touches(&self, contact_id: i64) -> $crate::Result<Vec<$crate::capture::Touch>> {
                let sql = self.sql(&format!(
                    "SELECT {} FROM touches WHERE contact_id = $1 ORDER BY touched_at_ms DESC, id DESC",
                    $crate::capture::TOUCH_COLUMNS
                ))
                .into_owned();
                let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(contact_id)
                    .fetch_all(&self.pool)
                    .await
                    .map_err($crate::shared::map_err)?;
                rows.iter().map(Self::touch_from_row).collect()
            }

            async fn link_customer_id(
                &self,
                channel: &str,
                asset_id: &str,
                key: &$crate::capture::ContactKey,
                customer_id: &str,
            ) -> $crate::Result<$crate::capture::Contact> {
                let mut tx = self.begin_write().await?;
                let find = |column: &str| {
                    self.sql(&format!(
                        "SELECT {} FROM contacts WHERE channel = $1 AND asset_id = $2 AND {column} = $3",
                        $crate::capture::CONTACT_COLUMNS
                    ))
                    .into_owned()
                };
                let row = sqlx::query(sqlx::AssertSqlSafe(find(key.column())))
                    .bind(channel)
                    .bind(asset_id)
                    .bind(key.value())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err($crate::shared::map_err)?;
                let Some(row) = row else {
                    return Err($crate::StoreError::NotFound(format!(
                        "no {channel} contact of asset {asset_id} with that {}",
                        key.column()
                    )));
                };
                let mut contact = Self::contact_from_row(&row)?;
                let other = sqlx::query(sqlx::AssertSqlSafe(find("customer_id")))
                    .bind(channel)
                    .bind(asset_id)
                    .bind(customer_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err($crate::shared::map_err)?;
                if let Some(other) = other {
                    let other = Self::contact_from_row(&other)?;
                    if other.id != contact.id {
                        return Err($crate::StoreError::Conflict(format!(
                            "customer id {customer_id:?} is already linked to conversation {}",
                            other.conversation_id
                        )));
                    }
                }
                let update = self.sql("UPDATE contacts SET customer_id = $1 WHERE id = $2");
                sqlx::query(sqlx::AssertSqlSafe(update.into_owned()))
                    .bind(customer_id)
                    .bind(contact.id)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::shared::map_err)?;
                tx.commit().await.map_err($crate::shared::map_err)?;
                contact.customer_id = Some(customer_id.to_owned());
                Ok(contact)
            }

            async fn capture_options(&self, asset_id: &str) -> $crate::Result<$crate::capture::CaptureOptions> {
                use sqlx::Row;
                let sql = self.sql("SELECT allow_unattributed, automatic_events FROM capture_options WHERE asset_id = $1");
                let row = sqlx::query(sqlx::AssertSqlSafe(sql.into_owned()))
                    .bind(asset_id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err($crate::shared::map_err)?;
                Ok(match row {
                    Some(row) => $crate::capture::CaptureOptions {
                        allow_unattributed: row.try_get("allow_unattributed")?,
                        automatic_events: row.try_get("automatic_events")?,
                    },
                    None => $crate::capture::CaptureOptions::default(),
                })
            }

            async fn set_capture_options(
                &self,
                asset_id: &str,
                options: &$crate::capture::CaptureOptions,
                now_ms: i64,
            ) -> $crate::Result<()> {
                let sql = self.sql(
                    "INSERT INTO capture_options (asset_id, allow_unattributed, automatic_events, updated_at_ms) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (asset_id) DO UPDATE SET \
                     allow_unattributed = excluded.allow_unattributed, automatic_events = excluded.automatic_events, \
                     updated_at_ms = excluded.updated_at_ms",
                );
                sqlx::query(sqlx::AssertSqlSafe(sql.into_owned()))
                    .bind(asset_id)
                    .bind(options.allow_unattributed)
                    .bind(options.automatic_events)
                    .bind(now_ms)
                    .execute(self.writer())
                    .await
                    .map_err($crate::shared::map_err)?;
                Ok(())
            }

            async fn purge_capture(&self, before_ms: i64) -> $crate::Result<$crate::capture::CapturePurge> {
                let mut tx = self.begin_write().await?;
                let mut counts = [0u64; 4];
                for (i, sql) in [
                    "DELETE FROM touches WHERE touched_at_ms < $1",
                    // An old user id stops resolving once retention has passed since it changed.
                    "DELETE FROM contact_user_id_aliases WHERE replaced_at_ms < $1",
                    "DELETE FROM contacts WHERE last_seen_at_ms < $1 \
                     AND NOT EXISTS (SELECT 1 FROM touches WHERE touches.contact_id = contacts.id)",
                    "DELETE FROM webhooks WHERE received_at_ms < $1 AND state <> 'pending' \
                     AND (forward_state IS NULL OR forward_state IN ('done', 'dead'))",
                ]
                .into_iter()
                .enumerate()
                {
                    let sql = self.sql(sql);
                    let done = sqlx::query(sqlx::AssertSqlSafe(sql.into_owned()))
                        .bind(before_ms)
                        .execute(&mut *tx)
                        .await
                        .map_err($crate::shared::map_err)?;
                    counts[i] = done.rows_affected();
                }
                tx.commit().await.map_err($crate::shared::map_err)?;
                Ok($crate::capture::CapturePurge {
                    touches: counts[0],
                    user_id_aliases: counts[1],
                    contacts: counts[2],
                    webhooks: counts[3],
                })
            }
        }
    };
}

pub(crate) use impl_capture_store;
