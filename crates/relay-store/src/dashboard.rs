//! Dashboard storage: maintained counts per 5-minute bucket (so the overview never counts the
//! outbox), events refused at ingest, the events log, one-time login links and the relay's
//! recent Graph calls. A supertrait of [`Store`](crate::Store), implemented once for both
//! backends by `impl_dashboard_store!`.
//!
//! Counts are changed in the same transaction as the events they count: inserts bump
//! `accepted`/`duplicates`, `resolve` bumps `delivered`/`retried`/`dead` and the latency
//! histogram, [`DashboardStore::record_refusals`] bumps `rejected`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::Serialize;

use crate::{EventRecord, Result};

/// Width of one stats bucket.
pub const STATS_BUCKET_MS: i64 = 300_000;

/// Upper bounds of the latency histogram's buckets (the last bucket is everything above).
pub const LATENCY_BOUNDS_MS: [i64; 10] = [
    250, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000, 300_000, 3_600_000,
];
/// Buckets of the latency histogram.
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// The histogram bucket of an ingest→ack time.
pub fn latency_bucket(ms: i64) -> usize {
    LATENCY_BOUNDS_MS
        .iter()
        .position(|&b| ms <= b)
        .unwrap_or(LATENCY_BOUNDS_MS.len())
}

/// Width of one bucket of `event_stats_hourly`.
pub const HOURLY_BUCKET_MS: i64 = 3_600_000;

/// The stats table to read for `[from_ms, to_ms)` in steps of `step_ms`: the hourly sums when
/// everything falls on whole hours (the same numbers, 12 times fewer rows), else the 5-minute
/// buckets.
pub fn stats_table(from_ms: i64, to_ms: i64, step_ms: i64) -> &'static str {
    let whole = |ms: i64| ms.rem_euclid(HOURLY_BUCKET_MS) == 0;
    if whole(from_ms) && whole(to_ms) && whole(step_ms) {
        "event_stats_hourly"
    } else {
        "event_stats"
    }
}

/// The start of the stats bucket holding `ms`.
pub fn bucket_of(ms: i64) -> i64 {
    ms.div_euclid(STATS_BUCKET_MS) * STATS_BUCKET_MS
}

/// Counts of one stats bucket, or summed over many.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StatCounts {
    pub accepted: i64,
    pub duplicates: i64,
    pub rejected: i64,
    pub delivered: i64,
    /// Send attempts that failed and were scheduled again (attempts, not events).
    pub retried: i64,
    pub dead: i64,
    /// Accepted events that carried a click id (`ctwa_clid`).
    pub with_click_id: i64,
    /// Accepted events sent with a `test_event_code`.
    pub test_events: i64,
    pub last_received_ms: Option<i64>,
    pub last_delivered_ms: Option<i64>,
    /// Delivered events per latency bucket (see [`LATENCY_BOUNDS_MS`]).
    pub latency: [i64; LATENCY_BUCKETS],
}

impl StatCounts {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &StatCounts) {
        self.accepted += other.accepted;
        self.duplicates += other.duplicates;
        self.rejected += other.rejected;
        self.delivered += other.delivered;
        self.retried += other.retried;
        self.dead += other.dead;
        self.with_click_id += other.with_click_id;
        self.test_events += other.test_events;
        self.last_received_ms = self.last_received_ms.max(other.last_received_ms);
        self.last_delivered_ms = self.last_delivered_ms.max(other.last_delivered_ms);
        for (a, b) in self.latency.iter_mut().zip(other.latency) {
            *a += b;
        }
    }

    /// Everything submitted: accepted, duplicates and rejected.
    pub fn received(&self) -> i64 {
        self.accepted + self.duplicates + self.rejected
    }
}

/// The key of a stats row: tenant, dataset, channel, event name and bucket start.
pub type StatKey = (String, String, String, String, i64);

/// Changes to stats rows, summed per key before they are written (one upsert per row).
#[derive(Debug, Default)]
pub struct StatDeltas(pub BTreeMap<StatKey, StatCounts>);

impl StatDeltas {
    /// The counts of the row for these values and the bucket of `at_ms`.
    pub fn at(
        &mut self,
        tenant: &str,
        dataset_id: &str,
        channel: &str,
        event_name: &str,
        at_ms: i64,
    ) -> &mut StatCounts {
        self.0
            .entry((
                tenant.to_owned(),
                dataset_id.to_owned(),
                channel.to_owned(),
                event_name.to_owned(),
                bucket_of(at_ms),
            ))
            .or_default()
    }
}

/// What an insert adds to the stats: each inserted event is `accepted`, each repeat a
/// `duplicate`, in the bucket of its accept time.
pub fn insert_deltas(events: &[crate::NewEvent], outcomes: &[crate::InsertOutcome]) -> StatDeltas {
    let mut deltas = StatDeltas::default();
    for (e, outcome) in events.iter().zip(outcomes) {
        let c = deltas.at(
            &e.tenant,
            &e.dataset_id,
            &e.channel,
            &e.event_name,
            e.accepted_at_ms,
        );
        match outcome {
            crate::InsertOutcome::Inserted(_) => {
                c.accepted += 1;
                // The payload is the relay's own serialisation: the key appears only as a field.
                if e.payload.contains("\"ctwa_clid\"") {
                    c.with_click_id += 1;
                }
                if e.test_event_code.is_some() {
                    c.test_events += 1;
                }
            }
            crate::InsertOutcome::Duplicate => c.duplicates += 1,
        }
        c.last_received_ms = c.last_received_ms.max(Some(e.accepted_at_ms));
    }
    deltas
}

/// Which stats to read.
#[derive(Debug, Clone, Default)]
pub struct StatsFilter {
    /// One tenant's; `None` for every tenant (the operator).
    pub tenant: Option<String>,
    /// Only these datasets (`Some(vec![])` matches none).
    pub datasets: Option<Vec<String>>,
    /// Buckets starting at or after this time…
    pub from_ms: i64,
    /// …and before this one.
    pub to_ms: i64,
}

/// Counts summed per tenant, dataset, channel and event name over a window.
#[derive(Debug, Clone, Serialize)]
pub struct StatsRow {
    pub tenant: String,
    pub dataset_id: String,
    pub channel: String,
    pub event_name: String,
    #[serde(flatten)]
    pub counts: StatCounts,
}

/// One point of the delivered-vs-failed chart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SeriesPoint {
    pub bucket_ms: i64,
    pub accepted: i64,
    pub delivered: i64,
    /// Failed attempts scheduled again plus events dead-lettered.
    pub failed: i64,
}

/// An event refused at ingest, to record.
#[derive(Debug, Clone)]
pub struct NewRefusal {
    pub tenant: String,
    pub received_at_ms: i64,
    pub event_id: Option<String>,
    pub event_name: Option<String>,
    pub channel: Option<String>,
    pub asset_id: Option<String>,
    /// The first error's code, for grouping.
    pub error_code: String,
    /// Every error and warning as JSON.
    pub errors: String,
    /// What the client sent, as JSON with every PII value replaced by its SHA-256.
    pub body: String,
}

/// A recorded refusal.
#[derive(Debug, Clone, Serialize)]
pub struct RefusalRecord {
    pub id: i64,
    pub tenant: String,
    pub received_at_ms: i64,
    pub event_id: Option<String>,
    pub event_name: Option<String>,
    pub channel: Option<String>,
    pub asset_id: Option<String>,
    pub error_code: String,
    pub errors: String,
    pub body: String,
}

/// Which entries of the events log to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    /// One tenant's; `None` for every tenant (the operator).
    pub tenant: Option<String>,
    /// Only these assets (a key limited to some assets).
    pub within_assets: Option<Vec<String>>,
    /// Exactly this `event_id`.
    pub event_id: Option<String>,
    /// An event state (`queued`, …, `dead`).
    pub state: Option<String>,
    pub event_name: Option<String>,
    pub channel: Option<String>,
    pub asset_id: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Only events with an attempt answered with this HTTP status.
    pub http_status: Option<i32>,
    /// Only events sent with a `test_event_code`.
    pub test_only: bool,
    /// Only rows before `(time, id)` in newest-first order: `time < t`, or `time = t` and
    /// `id < id` (pagination).
    pub before: Option<(i64, i64)>,
    pub limit: i64,
}

/// Refusals or dead letters that share a reason.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorGroup {
    /// The error code (refusals) or dead reason (dead letters).
    pub reason: String,
    pub count: i64,
    pub last_at_ms: i64,
    /// The newest row's id (refusal id or event row id).
    pub sample_id: i64,
}

/// A one-time dashboard login link, as stored (the token only as its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UiLink {
    pub token_hash: String,
    pub tenant: String,
    pub read_only: bool,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
}

/// The relay's Graph calls, for Meta's Marketing API access tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GraphCallStats {
    /// Successful calls since the requested time.
    pub ok_since: i64,
    pub failed_since: i64,
    /// The latest calls looked at (at most the requested number)…
    pub recent: i64,
    /// …and how many of them failed.
    pub recent_failed: i64,
}

/// Conversations of one channel that an ad started in a window, and how many converted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdConversations {
    pub channel: String,
    /// Contacts first seen in the window whose first message carried an ad referral (a click
    /// id or an ad id).
    pub started: i64,
    /// Of those, the ones with a conversion by contact that Meta accepted (delivered).
    pub converted: i64,
}

/// CRM stage changes that a rule maps to a conversion, and how many reached Meta.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CrmCoverage {
    /// The rule's event name; empty when none was recorded (e.g. the deal had no contact).
    pub event_name: String,
    /// Stage changes first seen in the window with any outcome but `no_rule`.
    pub mapped: i64,
    /// Of those, the ones whose event Meta accepted (delivered).
    pub delivered: i64,
}

/// What a dashboard purge deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DashboardPurge {
    pub stats_rows: u64,
    pub refusals: u64,
}

#[async_trait]
pub trait DashboardStore: Send + Sync + 'static {
    /// Counts per tenant, dataset, channel and event name over the filter's window.
    async fn stats_totals(&self, filter: &StatsFilter) -> Result<Vec<StatsRow>>;
    /// Like [`stats_totals`](Self::stats_totals) with only `last_received_ms` and
    /// `last_delivered_ms` (other counts 0): cheaper over long windows.
    async fn stats_last_seen(&self, filter: &StatsFilter) -> Result<Vec<StatsRow>>;
    /// Delivered, failed and accepted per `step_ms` over the window, oldest first.
    async fn stats_series(&self, filter: &StatsFilter, step_ms: i64) -> Result<Vec<SeriesPoint>>;

    /// Records refusals and counts them (one transaction).
    async fn record_refusals(&self, refusals: &[NewRefusal]) -> Result<()>;
    async fn get_refusal(&self, id: i64) -> Result<Option<RefusalRecord>>;
    /// Refusals matching the filter, newest first (state, status and test filters match none).
    async fn list_refusals(&self, filter: &LogFilter) -> Result<Vec<RefusalRecord>>;
    /// Events matching the filter, newest accepted first, with their attempts.
    async fn list_log_events(&self, filter: &LogFilter) -> Result<Vec<EventRecord>>;
    /// An event by its row id, with its attempts.
    async fn get_event_row(&self, id: i64) -> Result<Option<EventRecord>>;

    /// Refusals grouped by error code and dead letters grouped by reason, matching the
    /// filter's tenant, assets and `since_ms` (other fields are ignored).
    async fn error_groups(&self, filter: &LogFilter) -> Result<(Vec<ErrorGroup>, Vec<ErrorGroup>)>;

    /// Ad-started conversations per channel (see [`AdConversations`]), for the filter's tenant,
    /// assets and `[since_ms, until_ms)` (other fields are ignored). One index range per asset
    /// and one index probe per conversation.
    async fn ad_conversations(&self, filter: &LogFilter) -> Result<Vec<AdConversations>>;
    /// CRM event coverage per event name (see [`CrmCoverage`]), for the filter's tenant and
    /// `[since_ms, until_ms)` (other fields are ignored).
    async fn crm_coverage(&self, filter: &LogFilter) -> Result<Vec<CrmCoverage>>;

    async fn create_ui_link(&self, link: &UiLink) -> Result<()>;
    /// Marks the link used and returns it, if it exists, is unused and has not expired; a
    /// second call with the same hash finds nothing.
    async fn consume_ui_link(&self, token_hash: &str, now_ms: i64) -> Result<Option<UiLink>>;

    /// Records Graph calls for events, `(at_ms, answered_ok)` each, in one transaction.
    async fn record_graph_calls(&self, calls: &[(i64, bool)]) -> Result<()>;
    /// Calls since `since_ms` (per day, so from the start of its UTC day) and the latest `recent`.
    async fn graph_call_stats(&self, since_ms: i64, recent: i64) -> Result<GraphCallStats>;

    /// Deletes stats buckets before `stats_before_ms`, refusals received before
    /// `refusals_before_ms`, expired links and all but the latest Graph calls.
    async fn purge_dashboard(
        &self,
        stats_before_ms: i64,
        refusals_before_ms: i64,
        now_ms: i64,
    ) -> Result<DashboardPurge>;
}

/// Columns of `refused_events`.
pub const REFUSAL_COLUMNS: &str = "id, tenant, received_at_ms, event_id, event_name, channel, \
    asset_id, error_code, errors, body";

/// The summed columns of `event_stats`, as a SELECT list (casts: PostgreSQL's SUM of BIGINT is
/// NUMERIC).
pub const STATS_SUMS: &str = "CAST(SUM(accepted) AS BIGINT) AS accepted, \
    CAST(SUM(duplicates) AS BIGINT) AS duplicates, CAST(SUM(rejected) AS BIGINT) AS rejected, \
    CAST(SUM(delivered) AS BIGINT) AS delivered, CAST(SUM(retried) AS BIGINT) AS retried, \
    CAST(SUM(dead) AS BIGINT) AS dead, CAST(SUM(with_click_id) AS BIGINT) AS with_click_id, \
    CAST(SUM(test_events) AS BIGINT) AS test_events, MAX(last_received_ms) AS last_received_ms, \
    MAX(last_delivered_ms) AS last_delivered_ms, \
    CAST(SUM(lat_0) AS BIGINT) AS lat_0, CAST(SUM(lat_1) AS BIGINT) AS lat_1, \
    CAST(SUM(lat_2) AS BIGINT) AS lat_2, CAST(SUM(lat_3) AS BIGINT) AS lat_3, \
    CAST(SUM(lat_4) AS BIGINT) AS lat_4, CAST(SUM(lat_5) AS BIGINT) AS lat_5, \
    CAST(SUM(lat_6) AS BIGINT) AS lat_6, CAST(SUM(lat_7) AS BIGINT) AS lat_7, \
    CAST(SUM(lat_8) AS BIGINT) AS lat_8, CAST(SUM(lat_9) AS BIGINT) AS lat_9, \
    CAST(SUM(lat_10) AS BIGINT) AS lat_10";

/// [`STATS_SUMS`]'s columns with only the latest times computed.
pub const STATS_LAST_SEEN: &str = "MAX(last_received_ms) AS last_received_ms, \
    MAX(last_delivered_ms) AS last_delivered_ms";

/// The upsert of stats rows; values follow in [`push_stat_row`]'s order.
pub const STATS_UPSERT: &str = "INSERT INTO event_stats (tenant, dataset_id, channel, event_name, \
    bucket_ms, accepted, duplicates, rejected, delivered, retried, dead, with_click_id, test_events, \
    last_received_ms, last_delivered_ms, lat_0, lat_1, lat_2, lat_3, lat_4, lat_5, lat_6, lat_7, \
    lat_8, lat_9, lat_10) ";

/// What an upsert adds to an existing row.
pub const STATS_ON_CONFLICT: &str = " ON CONFLICT (tenant, bucket_ms, dataset_id, channel, event_name) \
    DO UPDATE SET accepted = event_stats.accepted + excluded.accepted, \
    duplicates = event_stats.duplicates + excluded.duplicates, \
    rejected = event_stats.rejected + excluded.rejected, \
    delivered = event_stats.delivered + excluded.delivered, \
    retried = event_stats.retried + excluded.retried, \
    dead = event_stats.dead + excluded.dead, \
    with_click_id = event_stats.with_click_id + excluded.with_click_id, \
    test_events = event_stats.test_events + excluded.test_events, \
    last_received_ms = CASE WHEN event_stats.last_received_ms IS NULL \
      OR excluded.last_received_ms > event_stats.last_received_ms \
      THEN excluded.last_received_ms ELSE event_stats.last_received_ms END, \
    last_delivered_ms = CASE WHEN event_stats.last_delivered_ms IS NULL \
      OR excluded.last_delivered_ms > event_stats.last_delivered_ms \
      THEN excluded.last_delivered_ms ELSE event_stats.last_delivered_ms END, \
    lat_0 = event_stats.lat_0 + excluded.lat_0, lat_1 = event_stats.lat_1 + excluded.lat_1, \
    lat_2 = event_stats.lat_2 + excluded.lat_2, lat_3 = event_stats.lat_3 + excluded.lat_3, \
    lat_4 = event_stats.lat_4 + excluded.lat_4, lat_5 = event_stats.lat_5 + excluded.lat_5, \
    lat_6 = event_stats.lat_6 + excluded.lat_6, lat_7 = event_stats.lat_7 + excluded.lat_7, \
    lat_8 = event_stats.lat_8 + excluded.lat_8, lat_9 = event_stats.lat_9 + excluded.lat_9, \
    lat_10 = event_stats.lat_10 + excluded.lat_10";

/// Stats rows per upsert statement: 26 values each stays under every placeholder limit.
pub const STATS_CHUNK: usize = 200;

/// Binds one stats row of [`STATS_UPSERT`].
pub fn push_stat_row<DB: sqlx::Database>(
    mut row: sqlx::query_builder::Separated<'_, DB, &'static str>,
    (key, c): (&StatKey, &StatCounts),
) where
    for<'t> String: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> i64: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> Option<i64>: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    row.push_bind(key.0.clone())
        .push_bind(key.1.clone())
        .push_bind(key.2.clone())
        .push_bind(key.3.clone())
        .push_bind(key.4)
        .push_bind(c.accepted)
        .push_bind(c.duplicates)
        .push_bind(c.rejected)
        .push_bind(c.delivered)
        .push_bind(c.retried)
        .push_bind(c.dead)
        .push_bind(c.with_click_id)
        .push_bind(c.test_events)
        .push_bind(c.last_received_ms)
        .push_bind(c.last_delivered_ms);
    for n in c.latency {
        row.push_bind(n);
    }
}

/// Reads the summed columns of [`STATS_SUMS`].
pub fn counts_from_row<R: sqlx::Row>(row: &R) -> Result<StatCounts>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    Option<i64>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    // Columns left out of the SELECT (see STATS_LAST_SEEN) read as 0.
    let n = |name: &str| -> Result<i64> {
        match row.try_get::<Option<i64>, _>(name) {
            Ok(v) => Ok(v.unwrap_or(0)),
            Err(sqlx::Error::ColumnNotFound(_)) => Ok(0),
            Err(e) => Err(e.into()),
        }
    };
    let mut latency = [0i64; LATENCY_BUCKETS];
    for (i, slot) in latency.iter_mut().enumerate() {
        *slot = n(&format!("lat_{i}"))?;
    }
    Ok(StatCounts {
        accepted: n("accepted")?,
        duplicates: n("duplicates")?,
        rejected: n("rejected")?,
        delivered: n("delivered")?,
        retried: n("retried")?,
        dead: n("dead")?,
        with_click_id: n("with_click_id")?,
        test_events: n("test_events")?,
        last_received_ms: row.try_get("last_received_ms")?,
        last_delivered_ms: row.try_get("last_delivered_ms")?,
        latency,
    })
}

pub fn refusal_from_row<R: sqlx::Row>(row: &R) -> Result<RefusalRecord>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(RefusalRecord {
        id: row.try_get("id")?,
        tenant: row.try_get("tenant")?,
        received_at_ms: row.try_get("received_at_ms")?,
        event_id: row.try_get("event_id")?,
        event_name: row.try_get("event_name")?,
        channel: row.try_get("channel")?,
        asset_id: row.try_get("asset_id")?,
        error_code: row.try_get("error_code")?,
        errors: row.try_get("errors")?,
        body: row.try_get("body")?,
    })
}

pub fn group_from_row<R: sqlx::Row>(row: &R) -> Result<ErrorGroup>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    Option<String>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(ErrorGroup {
        reason: row
            .try_get::<Option<String>, _>("reason")?
            .unwrap_or_default(),
        count: row.try_get("n")?,
        last_at_ms: row.try_get("last_at")?,
        sample_id: row.try_get("sample")?,
    })
}

/// Graph calls kept for the "last 500" error rate (the rest is pruned).
pub const GRAPH_CALLS_KEPT: i64 = 2_000;
/// One UTC day.
pub const DAY_MS: i64 = 86_400_000;

macro_rules! impl_dashboard_store {
    ($store:ty, $db:ty) => {
        impl $store {
            /// Adds `deltas` to the stats rows, in key order (so concurrent writers lock rows
            /// in the same order and cannot deadlock).
            pub(crate) async fn bump_stats(
                tx: &mut sqlx::Transaction<'_, $db>,
                deltas: &$crate::dashboard::StatDeltas,
            ) -> $crate::Result<()> {
                // The same deltas summed per hour, for event_stats_hourly.
                let mut hourly = $crate::dashboard::StatDeltas::default();
                for ((tenant, dataset, channel, name, bucket), c) in &deltas.0 {
                    let hour = bucket.div_euclid($crate::dashboard::HOURLY_BUCKET_MS)
                        * $crate::dashboard::HOURLY_BUCKET_MS;
                    hourly
                        .0
                        .entry((tenant.clone(), dataset.clone(), channel.clone(), name.clone(), hour))
                        .or_default()
                        .add(c);
                }
                for (table, rows) in [("event_stats", deltas), ("event_stats_hourly", &hourly)] {
                    let upsert = $crate::dashboard::STATS_UPSERT.replace("event_stats", table);
                    let on_conflict = $crate::dashboard::STATS_ON_CONFLICT.replace("event_stats", table);
                    let rows: Vec<_> = rows.0.iter().collect();
                    for chunk in rows.chunks($crate::dashboard::STATS_CHUNK) {
                        let mut b = sqlx::QueryBuilder::<$db>::new(upsert.clone());
                        b.push_values(chunk.iter().copied(), $crate::dashboard::push_stat_row);
                        b.push(on_conflict.clone());
                        b.build().execute(&mut **tx).await.map_err($crate::shared::map_err)?;
                    }
                }
                Ok(())
            }

            fn push_log_filter(
                b: &mut sqlx::QueryBuilder<$db>,
                f: &$crate::dashboard::LogFilter,
                time_column: &'static str,
            ) {
                if let Some(t) = &f.tenant {
                    b.push(" AND tenant = ").push_bind(t.clone());
                }
                if let Some(assets) = &f.within_assets {
                    b.push(" AND asset_id IN (");
                    if assets.is_empty() {
                        b.push("NULL");
                    }
                    let mut sep = b.separated(", ");
                    for a in assets {
                        sep.push_bind(a.clone());
                    }
                    b.push(")");
                }
                if let Some(v) = &f.event_id {
                    b.push(" AND event_id = ").push_bind(v.clone());
                }
                if let Some(v) = &f.event_name {
                    b.push(" AND event_name = ").push_bind(v.clone());
                }
                if let Some(v) = &f.channel {
                    b.push(" AND channel = ").push_bind(v.clone());
                }
                if let Some(v) = &f.asset_id {
                    b.push(" AND asset_id = ").push_bind(v.clone());
                }
                if let Some(v) = f.since_ms {
                    b.push(format!(" AND {time_column} >= ")).push_bind(v);
                }
                if let Some(v) = f.until_ms {
                    b.push(format!(" AND {time_column} < ")).push_bind(v);
                }
                if let Some((t, id)) = f.before {
                    b.push(format!(" AND ({time_column} < "))
                        .push_bind(t)
                        .push(format!(" OR ({time_column} = "))
                        .push_bind(t)
                        .push(" AND id < ")
                        .push_bind(id)
                        .push("))");
                }
            }

            pub(crate) async fn stats_rows(&self, f: &$crate::dashboard::StatsFilter, columns: &str) -> $crate::Result<Vec<$crate::dashboard::StatsRow>> {
                use sqlx::Row;
                let table = $crate::dashboard::stats_table(f.from_ms, f.to_ms, $crate::dashboard::HOURLY_BUCKET_MS);
                let mut b = sqlx::QueryBuilder::<$db>::new(format!(
                    "SELECT tenant, dataset_id, channel, event_name, {columns} FROM {table} WHERE bucket_ms >= "
                ));
                b.push_bind(f.from_ms).push(" AND bucket_ms < ").push_bind(f.to_ms);
                if let Some(t) = &f.tenant {
                    b.push(" AND tenant = ").push_bind(t.clone());
                }
                if let Some(datasets) = &f.datasets {
                    b.push(" AND dataset_id IN (");
                    if datasets.is_empty() {
                        b.push("NULL");
                    }
                    let mut sep = b.separated(", ");
                    for d in datasets {
                        sep.push_bind(d.clone());
                    }
                    b.push(")");
                }
                b.push(" GROUP BY tenant, dataset_id, channel, event_name ORDER BY tenant, dataset_id, channel, event_name");
                let rows = b.build().fetch_all(&self.pool).await.map_err($crate::shared::map_err)?;
                rows.iter()
                    .map(|row| {
                        Ok($crate::dashboard::StatsRow {
                            tenant: row.try_get("tenant")?,
                            dataset_id: row.try_get("dataset_id")?,
                            channel: row.try_get("channel")?,
                            event_name: row.try_get("event_name")?,
                            counts: $crate::dashboard::counts_from_row(row)?,
                        })
                    })
                    .collect()
            }
        }

        #[async_trait::async_trait]
        impl $crate::dashboard::DashboardStore for $store {
            async fn stats_totals(&self, f: &$crate::dashboard::StatsFilter) -> $crate::Result<Vec<$crate::dashboard::StatsRow>> {
                self.stats_rows(f, $crate::dashboard::STATS_SUMS).await
            }

            async fn stats_last_seen(&self, f: &$crate::dashboard::StatsFilter) -> $crate::Result<Vec<$crate::dashboard::StatsRow>> {
                self.stats_rows(f, $crate::dashboard::STATS_LAST_SEEN).await
            }

            async fn stats_series(&self, f: &$crate::dashboard::StatsFilter, step_ms: i64) -> $crate::Result<Vec<$crate::dashboard::SeriesPoint>> {
                use sqlx::Row;
                let step = step_ms.max($crate::dashboard::STATS_BUCKET_MS);
                let table = $crate::dashboard::stats_table(f.from_ms, f.to_ms, step);
                let mut b = sqlx::QueryBuilder::<$db>::new("SELECT (bucket_ms / ");
                b.push_bind(step).push(") * ").push_bind(step).push(format!(
                    " AS t, CAST(SUM(accepted) AS BIGINT) AS accepted, CAST(SUM(delivered) AS BIGINT) AS delivered, \
                     CAST(SUM(retried + dead) AS BIGINT) AS failed FROM {table} WHERE bucket_ms >= ",
                ));
                b.push_bind(f.from_ms).push(" AND bucket_ms < ").push_bind(f.to_ms);
                if let Some(t) = &f.tenant {
                    b.push(" AND tenant = ").push_bind(t.clone());
                }
                if let Some(datasets) = &f.datasets {
                    b.push(" AND dataset_id IN (");
                    if datasets.is_empty() {
                        b.push("NULL");
                    }
                    let mut sep = b.separated(", ");
                    for d in datasets {
                        sep.push_bind(d.clone());
                    }
                    b.push(")");
                }
                b.push(" GROUP BY t ORDER BY t");
                let rows = b.build().fetch_all(&self.pool).await.map_err($crate::shared::map_err)?;
                rows.iter()
                    .map(|row| {
                        Ok($crate::dashboard::SeriesPoint {
                            bucket_ms: row.try_get("t")?,
                            accepted: row.try_get::<Option<i64>, _>("accepted")?.unwrap_or(0),
                            delivered: row.try_get::<Option<i64>, _>("delivered")?.unwrap_or(0),
                            failed: row.try_get::<Option<i64>, _>("failed")?.unwrap_or(0),
                        })
                    })
                    .collect()
            }

            async fn record_refusals(&self, refusals: &[$crate::dashboard::NewRefusal]) -> $crate::Result<()> {
                if refusals.is_empty() {
                    return Ok(());
                }
                let mut deltas = $crate::dashboard::StatDeltas::default();
                for r in refusals {
                    let c = deltas.at(
                        &r.tenant,
                        "",
                        r.channel.as_deref().unwrap_or(""),
                        r.event_name.as_deref().unwrap_or(""),
                        r.received_at_ms,
                    );
                    c.rejected += 1;
                    c.last_received_ms = c.last_received_ms.max(Some(r.received_at_ms));
                }
                let mut tx = self.begin_write().await?;
                for chunk in refusals.chunks(500) {
                    let mut b = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO refused_events (tenant, received_at_ms, event_id, event_name, channel, asset_id, error_code, errors, body) ",
                    );
                    b.push_values(chunk, |mut row, r| {
                        row.push_bind(r.tenant.clone())
                            .push_bind(r.received_at_ms)
                            .push_bind(r.event_id.clone())
                            .push_bind(r.event_name.clone())
                            .push_bind(r.channel.clone())
                            .push_bind(r.asset_id.clone())
                            .push_bind(r.error_code.clone())
                            .push_bind(r.errors.clone())
                            .push_bind(r.body.clone());
                    });
                    b.build().execute(&mut *tx).await.map_err($crate::shared::map_err)?;
                }
                Self::bump_stats(&mut tx, &deltas).await?;
                tx.commit().await.map_err($crate::shared::map_err)?;
                Ok(())
            }

            async fn get_refusal(&self, id: i64) -> $crate::Result<Option<$crate::dashboard::RefusalRecord>> {
                let mut b = sqlx::QueryBuilder::<$db>::new(format!(
                    "SELECT {} FROM refused_events WHERE id = ",
                    $crate::dashboard::REFUSAL_COLUMNS
                ));
                b.push_bind(id);
                let row = b.build().fetch_optional(&self.pool).await.map_err($crate::shared::map_err)?;
                row.as_ref().map($crate::dashboard::refusal_from_row).transpose()
            }

            async fn list_refusals(&self, f: &$crate::dashboard::LogFilter) -> $crate::Result<Vec<$crate::dashboard::RefusalRecord>> {
                let excluded = f.state.as_deref().is_some_and(|s| s != "refused")
                    || f.http_status.is_some()
                    || f.test_only;
                if excluded {
                    return Ok(Vec::new());
                }
                let mut b = sqlx::QueryBuilder::<$db>::new(format!(
                    "SELECT {} FROM refused_events WHERE 1 = 1",
                    $crate::dashboard::REFUSAL_COLUMNS
                ));
                Self::push_log_filter(&mut b, f, "received_at_ms");
                b.push(" ORDER BY received_at_ms DESC, id DESC LIMIT ").push_bind(f.limit);
                let rows = b.build().fetch_all(&self.pool).await.map_err($crate::shared::map_err)?;
                rows.iter().map($crate::dashboard::refusal_from_row).collect()
            }

            async fn list_log_events(&self, f: &$crate::dashboard::LogFilter) -> $crate::Result<Vec<$crate::EventRecord>> {
                if f.state.as_deref() == Some("refused") {
                    return Ok(Vec::new());
                }
                let mut b = sqlx::QueryBuilder::<$db>::new(format!(
                    "SELECT {} FROM events WHERE 1 = 1",
                    Self::RECORD_COLUMNS
                ));
                Self::push_log_filter(&mut b, f, "accepted_at_ms");
                if let Some(s) = &f.state {
                    b.push(" AND state = ").push_bind(s.clone());
                }
                if f.test_only {
                    b.push(" AND test_event_code IS NOT NULL");
                }
                if let Some(status) = f.http_status {
                    b.push(" AND EXISTS (SELECT 1 FROM send_attempts a WHERE a.http_status = ")
                        .push_bind(status)
                        .push(" AND (a.id = events.last_attempt_id OR a.id IN (SELECT attempt_id FROM event_attempts WHERE event_row_id = events.id)))");
                }
                b.push(" ORDER BY accepted_at_ms DESC, id DESC LIMIT ").push_bind(f.limit);
                let rows = b.build().fetch_all(&self.pool).await.map_err($crate::shared::map_err)?;
                let records = rows.iter().map($crate::shared::record_from_row).collect::<$crate::Result<Vec<_>>>()?;
                self.with_attempts(records).await
            }

            async fn get_event_row(&self, id: i64) -> $crate::Result<Option<$crate::EventRecord>> {
                let mut b = sqlx::QueryBuilder::<$db>::new(format!(
                    "SELECT {} FROM events WHERE id = ",
                    Self::RECORD_COLUMNS
                ));
                b.push_bind(id);
                let row = b.build().fetch_optional(&self.pool).await.map_err($crate::shared::map_err)?;
                let Some(row) = row else { return Ok(None) };
                let record = $crate::shared::record_from_row(&row)?;
                Ok(self.with_attempts(vec![record]).await?.pop())
            }

            async fn error_groups(
                &self,
                f: &$crate::dashboard::LogFilter,
            ) -> $crate::Result<(Vec<$crate::dashboard::ErrorGroup>, Vec<$crate::dashboard::ErrorGroup>)> {
                let scope = $crate::dashboard::LogFilter {
                    tenant: f.tenant.clone(),
                    within_assets: f.within_assets.clone(),
                    since_ms: f.since_ms,
                    ..Default::default()
                };
                let mut b = sqlx::QueryBuilder::<$db>::new(
                    "SELECT error_code AS reason, COUNT(*) AS n, MAX(received_at_ms) AS last_at, MAX(id) AS sample \
                     FROM refused_events WHERE 1 = 1",
                );
                Self::push_log_filter(&mut b, &scope, "received_at_ms");
                b.push(" GROUP BY error_code ORDER BY n DESC");
                let rows = b.build().fetch_all(&self.pool).await.map_err($crate::shared::map_err)?;
                let refused = rows.iter().map($crate::dashboard::group_from_row).collect::<$crate::Result<Vec<_>>>()?;
                let mut b = sqlx::QueryBuilder::<$db>::new(
                    "SELECT dead_reason AS reason, COUNT(*) AS n, MAX(dead_at_ms) AS last_at, MAX(id) AS sample \
                     FROM events WHERE state = 'dead'",
                );
                Self::push_log_filter(&mut b, &scope, "dead_at_ms");
                b.push(" GROUP BY dead_reason ORDER BY n DESC LIMIT 500");
                let rows = b.build().fetch_all(&self.pool).await.map_err($crate::shared::map_err)?;
                let dead = rows.iter().map($crate::dashboard::group_from_row).collect::<$crate::Result<Vec<_>>>()?;
                Ok((refused, dead))
            }

            async fn ad_conversations(&self, f: &$crate::dashboard::LogFilter) -> $crate::Result<Vec<$crate::dashboard::AdConversations>> {
                use sqlx::Row;
                // A conversation counts as ad-started when a touch with a click or ad id came
                // no later than its first message; converted when a conversion by contact for it
                // was delivered afterwards.
                let mut b = sqlx::QueryBuilder::<$db>::new(
                    "SELECT c.channel AS channel, CAST(COUNT(*) AS BIGINT) AS started, \
                     CAST(COALESCE(SUM(CASE WHEN EXISTS (SELECT 1 FROM events e WHERE e.conversation_id = c.conversation_id \
                     AND e.state = 'delivered' AND e.accepted_at_ms >= c.first_seen_at_ms) THEN 1 ELSE 0 END), 0) AS BIGINT) AS converted \
                     FROM contacts c JOIN assets a ON a.asset_id = c.asset_id WHERE c.first_seen_at_ms >= ",
                );
                b.push_bind(f.since_ms.unwrap_or(i64::MIN));
                b.push(" AND c.first_seen_at_ms < ").push_bind(f.until_ms.unwrap_or(i64::MAX));
                if let Some(t) = &f.tenant {
                    b.push(" AND a.tenant = ").push_bind(t.clone());
                }
                if let Some(assets) = &f.within_assets {
                    b.push(" AND c.asset_id IN (");
                    if assets.is_empty() {
                        b.push("NULL");
                    }
                    let mut sep = b.separated(", ");
                    for a in assets {
                        sep.push_bind(a.clone());
                    }
                    b.push(")");
                }
                b.push(
                    " AND EXISTS (SELECT 1 FROM touches t WHERE t.contact_id = c.id AND t.touched_at_ms <= c.first_seen_at_ms \
                     AND (t.click_id IS NOT NULL OR t.ad_id IS NOT NULL)) GROUP BY c.channel ORDER BY c.channel",
                );
                let rows = b.build().fetch_all(&self.pool).await.map_err($crate::shared::map_err)?;
                rows.iter()
                    .map(|row| {
                        Ok($crate::dashboard::AdConversations {
                            channel: row.try_get("channel")?,
                            started: row.try_get("started")?,
                            converted: row.try_get("converted")?,
                        })
                    })
                    .collect()
            }

            async fn crm_coverage(&self, f: &$crate::dashboard::LogFilter) -> $crate::Result<Vec<$crate::dashboard::CrmCoverage>> {
                use sqlx::Row;
                let mut b = sqlx::QueryBuilder::<$db>::new(
                    "SELECT s.event_name AS event_name, CAST(COUNT(*) AS BIGINT) AS mapped, \
                     CAST(COALESCE(SUM(CASE WHEN s.event_id IS NOT NULL AND EXISTS (SELECT 1 FROM events e \
                     WHERE e.event_id = s.event_id AND e.tenant = s.tenant AND e.state = 'delivered') THEN 1 ELSE 0 END), 0) AS BIGINT) AS delivered \
                     FROM crm_stage_changes s WHERE s.outcome <> 'no_rule' AND s.first_seen_at_ms >= ",
                );
                b.push_bind(f.since_ms.unwrap_or(i64::MIN));
                b.push(" AND s.first_seen_at_ms < ").push_bind(f.until_ms.unwrap_or(i64::MAX));
                if let Some(t) = &f.tenant {
                    b.push(" AND s.tenant = ").push_bind(t.clone());
                }
                b.push(" GROUP BY s.event_name ORDER BY s.event_name");
                let rows = b.build().fetch_all(&self.pool).await.map_err($crate::shared::map_err)?;
                rows.iter()
                    .map(|row| {
                        Ok($crate::dashboard::CrmCoverage {
                            event_name: row.try_get::<Option<String>, _>("event_name")?.unwrap_or_default(),
                            mapped: row.try_get("mapped")?,
                            delivered: row.try_get("delivered")?,
                        })
                    })
                    .collect()
            }

            async fn create_ui_link(&self, l: &$crate::dashboard::UiLink) -> $crate::Result<()> {
                let sql = self.sql(
                    "INSERT INTO ui_links (token_hash, tenant, read_only, created_at_ms, expires_at_ms) VALUES ($1, $2, $3, $4, $5)",
                );
                sqlx::query(sqlx::AssertSqlSafe(sql.into_owned()))
                    .bind(&l.token_hash)
                    .bind(&l.tenant)
                    .bind(l.read_only)
                    .bind(l.created_at_ms)
                    .bind(l.expires_at_ms)
                    .execute(self.writer())
                    .await
                    .map_err($crate::shared::map_err)?;
                Ok(())
            }

            async fn consume_ui_link(&self, token_hash: &str, now_ms: i64) -> $crate::Result<Option<$crate::dashboard::UiLink>> {
                use sqlx::Row;
                // One statement: two browsers opening the link at once cannot both get in.
                let sql = self.sql(
                    "UPDATE ui_links SET used_at_ms = $1 WHERE token_hash = $2 AND used_at_ms IS NULL \
                     AND expires_at_ms > $1 RETURNING token_hash, tenant, read_only, created_at_ms, expires_at_ms",
                );
                let row = sqlx::query(sqlx::AssertSqlSafe(sql.into_owned()))
                    .bind(now_ms)
                    .bind(token_hash)
                    .fetch_optional(self.writer())
                    .await
                    .map_err($crate::shared::map_err)?;
                row.map(|row| {
                    Ok($crate::dashboard::UiLink {
                        token_hash: row.try_get("token_hash")?,
                        tenant: row.try_get("tenant")?,
                        read_only: row.try_get("read_only")?,
                        created_at_ms: row.try_get("created_at_ms")?,
                        expires_at_ms: row.try_get("expires_at_ms")?,
                    })
                })
                .transpose()
            }

            async fn record_graph_calls(&self, calls: &[(i64, bool)]) -> $crate::Result<()> {
                if calls.is_empty() {
                    return Ok(());
                }
                let mut per_day: std::collections::BTreeMap<i64, (i64, i64)> = Default::default();
                for (at_ms, ok) in calls {
                    let day = at_ms.div_euclid($crate::dashboard::DAY_MS) * $crate::dashboard::DAY_MS;
                    let counts = per_day.entry(day).or_default();
                    if *ok { counts.0 += 1 } else { counts.1 += 1 }
                }
                let upsert = self.sql(
                    "INSERT INTO graph_call_days (day_ms, ok, failed) VALUES ($1, $2, $3) \
                     ON CONFLICT (day_ms) DO UPDATE SET ok = graph_call_days.ok + excluded.ok, \
                     failed = graph_call_days.failed + excluded.failed",
                );
                let mut tx = self.begin_write().await?;
                for chunk in calls.chunks(1000) {
                    let mut b = sqlx::QueryBuilder::<$db>::new("INSERT INTO graph_calls (at_ms, ok) ");
                    b.push_values(chunk, |mut row, (at_ms, ok)| {
                        row.push_bind(*at_ms).push_bind(*ok);
                    });
                    b.build().execute(&mut *tx).await.map_err($crate::shared::map_err)?;
                }
                for (day, (ok, failed)) in per_day {
                    sqlx::query(sqlx::AssertSqlSafe(upsert.to_string()))
                        .bind(day)
                        .bind(ok)
                        .bind(failed)
                        .execute(&mut *tx)
                        .await
                        .map_err($crate::shared::map_err)?;
                }
                tx.commit().await.map_err($crate::shared::map_err)?;
                Ok(())
            }

            async fn graph_call_stats(&self, since_ms: i64, recent: i64) -> $crate::Result<$crate::dashboard::GraphCallStats> {
                use sqlx::Row;
                let day = since_ms.div_euclid($crate::dashboard::DAY_MS) * $crate::dashboard::DAY_MS;
                let days = self.sql(
                    "SELECT CAST(COALESCE(SUM(ok), 0) AS BIGINT) AS ok, CAST(COALESCE(SUM(failed), 0) AS BIGINT) AS failed \
                     FROM graph_call_days WHERE day_ms >= $1",
                );
                let row = sqlx::query(sqlx::AssertSqlSafe(days.into_owned()))
                    .bind(day)
                    .fetch_one(&self.pool)
                    .await
                    .map_err($crate::shared::map_err)?;
                let (ok_since, failed_since): (i64, i64) = (row.try_get("ok")?, row.try_get("failed")?);
                let last = self.sql(
                    "SELECT CAST(COUNT(*) AS BIGINT) AS n, CAST(COALESCE(SUM(CASE WHEN ok THEN 0 ELSE 1 END), 0) AS BIGINT) AS failed \
                     FROM (SELECT ok FROM graph_calls ORDER BY id DESC LIMIT $1) latest",
                );
                let row = sqlx::query(sqlx::AssertSqlSafe(last.into_owned()))
                    .bind(recent)
                    .fetch_one(&self.pool)
                    .await
                    .map_err($crate::shared::map_err)?;
                Ok($crate::dashboard::GraphCallStats {
                    ok_since,
                    failed_since,
                    recent: row.try_get("n")?,
                    recent_failed: row.try_get("failed")?,
                })
            }

            async fn purge_dashboard(
                &self,
                stats_before_ms: i64,
                refusals_before_ms: i64,
                now_ms: i64,
            ) -> $crate::Result<$crate::dashboard::DashboardPurge> {
                let stats = self.sql("DELETE FROM event_stats WHERE bucket_ms < $1");
                let stats_rows = sqlx::query(sqlx::AssertSqlSafe(stats.into_owned()))
                    .bind(stats_before_ms)
                    .execute(self.writer())
                    .await
                    .map_err($crate::shared::map_err)?
                    .rows_affected();
                // Whole hours only: an hour still partly kept in event_stats stays.
                let hourly = self.sql("DELETE FROM event_stats_hourly WHERE bucket_ms < $1");
                sqlx::query(sqlx::AssertSqlSafe(hourly.into_owned()))
                    .bind(stats_before_ms.div_euclid($crate::dashboard::HOURLY_BUCKET_MS) * $crate::dashboard::HOURLY_BUCKET_MS)
                    .execute(self.writer())
                    .await
                    .map_err($crate::shared::map_err)?;
                let refused = self.sql("DELETE FROM refused_events WHERE received_at_ms < $1");
                let refusals = sqlx::query(sqlx::AssertSqlSafe(refused.into_owned()))
                    .bind(refusals_before_ms)
                    .execute(self.writer())
                    .await
                    .map_err($crate::shared::map_err)?
                    .rows_affected();
                let links = self.sql("DELETE FROM ui_links WHERE expires_at_ms < $1");
                sqlx::query(sqlx::AssertSqlSafe(links.into_owned()))
                    .bind(now_ms)
                    .execute(self.writer())
                    .await
                    .map_err($crate::shared::map_err)?;
                let calls = self.sql(
                    "DELETE FROM graph_calls WHERE id <= (SELECT MAX(id) FROM graph_calls) - $1",
                );
                sqlx::query(sqlx::AssertSqlSafe(calls.into_owned()))
                    .bind($crate::dashboard::GRAPH_CALLS_KEPT)
                    .execute(self.writer())
                    .await
                    .map_err($crate::shared::map_err)?;
                let days = self.sql("DELETE FROM graph_call_days WHERE day_ms < $1");
                sqlx::query(sqlx::AssertSqlSafe(days.into_owned()))
                    .bind(now_ms - 60 * $crate::dashboard::DAY_MS)
                    .execute(self.writer())
                    .await
                    .map_err($crate::shared::map_err)?;
                Ok($crate::dashboard::DashboardPurge { stats_rows, refusals })
            }
        }
    };
}

pub(crate) use impl_dashboard_store;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_cover_every_time() {
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(250), 0);
        assert_eq!(latency_bucket(251), 1);
        assert_eq!(latency_bucket(3_600_000), 9);
        assert_eq!(latency_bucket(i64::MAX), 10);
    }

    #[test]
    fn buckets_start_on_five_minutes() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(299_999), 0);
        assert_eq!(bucket_of(300_000), 300_000);
        assert_eq!(bucket_of(-1), -300_000);
    }
}
