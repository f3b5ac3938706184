//! The one implementation of [`Store`](crate::Store) for both backends.
//!
//! The backends differ only in a few places (placeholder syntax, how a write transaction starts,
//! the claim query), which each backend module supplies; everything else is generated here once
//! by `impl_store!`, so the two cannot drift apart.

use sqlx::Row;

use crate::{
    ApiKeyRecord, Asset, AssetStatus, Attempt, AuditEntry, ClaimedEvent, EventRecord, EventState,
    Result, StoreError, Tenant,
};

/// Columns of `events` read into an [`EventRecord`], less the payload: each backend's
/// `RECORD_COLUMNS` adds its own `payload` (SQLite keeps payloads in a table of their own).
macro_rules! record_columns {
    () => {
        "id, tenant, dataset_id, asset_id, channel, event_id, event_name, event_time, state, \
         attempts, next_attempt_at_ms, accepted_at_ms, delivered_at_ms, dead_reason, dead_at_ms, \
         test_event_code"
    };
}
pub(crate) use record_columns;

/// Columns returned by a claim, less the payload (as for [`record_columns`]).
pub const CLAIM_COLUMNS: &str = "id, dataset_id, asset_id, channel, event_id, event_time, test_event_code, attempts, accepted_at_ms";

/// Events still to deliver: the predicate of the `events_due` partial index, written exactly so
/// in every query that should use that index.
///
/// `OR`s rather than `IN (…)`: SQLite evaluates a partial index's `IN` list through a temporary
/// table for every inserted row, which cost a third of each insert.
macro_rules! unfinished {
    () => {
        "(state = 'queued' OR state = 'retrying' OR state = 'sending')"
    };
}
/// Events delivered or dead: the predicate of the `events_finished` partial index.
macro_rules! finished {
    () => {
        "(state = 'delivered' OR state = 'dead')"
    };
}
/// Columns of `assets` read into an [`Asset`]. Named, never `*`: sqlx keeps the column list a
/// statement had when it was prepared, and a SQLite connection opened before the migrations
/// (the writer, or an idle reader) may prepare `*` against the old schema (8 columns) and
/// then step it against the new one (10): an index out of bounds inside sqlx-sqlite.
macro_rules! asset_columns {
    () => {
        "tenant, channel, asset_id, dataset_id, access_token, test_event_code, status, status_reason, created_at_ms, updated_at_ms"
    };
}
pub(crate) use {asset_columns, finished, unfinished};

/// A dataset's due events (`$1` = now, `$5` = the dataset): the predicate of the `events_due`
/// partial index, then the due time. A claimed event's due time is the end of its lease, so an
/// event whose sender died is due again when its lease runs out, with no separate reaper.
/// Values bound in one statement at most when a list of ids is matched: below SQLite's limit
/// of variables (32,766) and PostgreSQL's (65,535) with room for the other conditions.
pub const BIND_CHUNK: usize = 500;

pub const DUE_CONDITION: &str = concat!(
    unfinished!(),
    " AND dataset_id = $5 AND next_attempt_at_ms <= $1 \
    AND asset_id NOT IN (SELECT asset_id FROM assets WHERE status = 'paused')"
);

/// Each dataset with unfinished events and the earliest due time of its events that meet the
/// extra condition (a loose index scan of `events_due`, dataset_id first: one index probe per
/// dataset however many events it holds), as the CTE `due(dataset_id, due_at)`.
macro_rules! due_by_dataset {
    ($extra:literal) => {
        concat!(
            "WITH RECURSIVE ds(dataset_id) AS (\
               SELECT MIN(dataset_id) FROM events WHERE ",
            unfinished!(),
            " UNION ALL \
               SELECT (SELECT MIN(dataset_id) FROM events WHERE ",
            unfinished!(),
            " AND dataset_id > ds.dataset_id) FROM ds WHERE ds.dataset_id IS NOT NULL\
             ), due AS MATERIALIZED (\
               SELECT ds.dataset_id, (SELECT MIN(next_attempt_at_ms) FROM events WHERE ",
            unfinished!(),
            " AND events.dataset_id = ds.dataset_id",
            $extra,
            ") AS due_at FROM ds WHERE ds.dataset_id IS NOT NULL) "
        )
    };
}

/// Leaves out datasets Meta is throttling (`$1` = now) and those whose assets are all paused.
macro_rules! not_paused {
    () => {
        "dataset_id NOT IN (SELECT dataset_id FROM dataset_pauses WHERE until_ms > $1) \
         AND dataset_id NOT IN (SELECT dataset_id FROM assets GROUP BY dataset_id HAVING MIN(status) = 'paused')"
    };
}

/// The due time of a dataset's earliest unfinished event after the first `$3` (a full claim
/// less one) that meet the extra condition; NULL if it has fewer. At or before now, a full
/// claim is due.
macro_rules! full_claim_due_at {
    ($extra:literal) => {
        concat!(
            "(SELECT next_attempt_at_ms FROM events WHERE ",
            unfinished!(),
            " AND events.dataset_id = due.dataset_id",
            $extra,
            " ORDER BY next_attempt_at_ms, id LIMIT 1 OFFSET $3)"
        )
    };
}

/// Datasets with events due by `$2` (now minus the linger), or with a full claim (`$3` + 1
/// events) due by `$1` (now), and their earliest due time, skipping
/// datasets Meta is throttling and datasets whose assets are all paused. A 200,000-event
/// backlog costs what a single event does; the full-claim probe reads at most `$3` index
/// entries, and only of datasets still within the linger.
pub const DUE_DATASETS: &str = concat!(
    due_by_dataset!(""),
    "SELECT dataset_id, due_at FROM due WHERE (due_at <= $2 OR ",
    full_claim_due_at!(""),
    " <= $1) AND ",
    not_paused!(),
    " ORDER BY due_at"
);

/// [`DUE_DATASETS`] for leases held in memory (SQLite): every dataset with unfinished events,
/// with the earliest due time of those not held (`$2`, a JSON array of ids; NULL when all are
/// held) and, for those not due by `$4` (now minus the linger), when a full claim of them (`$3`
/// + 1 events) is due; the caller adds the held events' lease ends and filters.
pub const DUE_DATASETS_UNHELD: &str = concat!(
    due_by_dataset!(" AND id NOT IN (SELECT value FROM json_each($2))"),
    "SELECT dataset_id, due_at, CASE WHEN due_at > $4 THEN ",
    full_claim_due_at!(" AND id NOT IN (SELECT value FROM json_each($2))"),
    " END AS full_at FROM due WHERE ",
    not_paused!()
);

pub fn asset_from_row<R: Row>(row: &R) -> Result<Asset>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let status: String = row.try_get("status")?;
    Ok(Asset {
        tenant: row.try_get("tenant")?,
        channel: row.try_get("channel")?,
        asset_id: row.try_get("asset_id")?,
        dataset_id: row.try_get("dataset_id")?,
        sealed_token: row.try_get("access_token")?,
        test_event_code: row.try_get("test_event_code")?,
        status: if status == "paused" {
            AssetStatus::Paused
        } else {
            AssetStatus::Active
        },
        status_reason: row.try_get("status_reason")?,
        created_at_ms: row.try_get("created_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
    })
}

pub fn tenant_from_row<R: Row>(row: &R) -> Result<Tenant>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(Tenant {
        name: row.try_get("name")?,
        test_event_code: row.try_get("test_event_code")?,
        created_at_ms: row.try_get("created_at_ms")?,
    })
}

pub fn api_key_from_row<R: Row>(row: &R) -> Result<ApiKeyRecord>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<i64>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let assets: Option<String> = row.try_get("allowed_assets")?;
    let assets = match assets {
        None => None,
        Some(text) => Some(serde_json::from_str(&text).map_err(|e| {
            StoreError::Conflict(format!(
                "allowed_assets of an API key is not a JSON list: {e}"
            ))
        })?),
    };
    Ok(ApiKeyRecord {
        id: row.try_get("id")?,
        tenant: row.try_get("tenant")?,
        key_hash: row.try_get("key_hash")?,
        label: row.try_get("label")?,
        assets,
        created_at_ms: row.try_get("created_at_ms")?,
        revoked_at_ms: row.try_get("revoked_at_ms")?,
    })
}

pub fn audit_from_row<R: Row>(row: &R) -> Result<AuditEntry>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(AuditEntry {
        at_ms: row.try_get("at_ms")?,
        actor: row.try_get("actor")?,
        action: row.try_get("action")?,
        tenant: row.try_get("tenant")?,
        target: row.try_get("target")?,
        detail: row.try_get("detail")?,
    })
}

pub fn claimed_from_row<R: Row>(row: &R) -> Result<ClaimedEvent>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i32: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(ClaimedEvent {
        id: row.try_get("id")?,
        dataset_id: row.try_get("dataset_id")?,
        asset_id: row.try_get("asset_id")?,
        channel: row.try_get("channel")?,
        event_id: row.try_get("event_id")?,
        event_time: row.try_get("event_time")?,
        payload: row.try_get("payload")?,
        test_event_code: row.try_get("test_event_code")?,
        attempts: row.try_get("attempts")?,
        accepted_at_ms: row.try_get("accepted_at_ms")?,
    })
}

pub fn record_from_row<R: Row>(row: &R) -> Result<EventRecord>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<i64>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i32: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let state: String = row.try_get("state")?;
    Ok(EventRecord {
        id: row.try_get("id")?,
        tenant: row.try_get("tenant")?,
        dataset_id: row.try_get("dataset_id")?,
        asset_id: row.try_get("asset_id")?,
        channel: row.try_get("channel")?,
        event_id: row.try_get("event_id")?,
        event_name: row.try_get("event_name")?,
        event_time: row.try_get("event_time")?,
        state: EventState::parse(&state)
            .ok_or_else(|| StoreError::NotFound(format!("unknown event state {state:?}")))?,
        attempts_count: row.try_get("attempts")?,
        next_attempt_at_ms: row.try_get("next_attempt_at_ms")?,
        accepted_at_ms: row.try_get("accepted_at_ms")?,
        delivered_at_ms: row.try_get("delivered_at_ms")?,
        dead_reason: row.try_get("dead_reason")?,
        dead_at_ms: row.try_get("dead_at_ms")?,
        test_event_code: row.try_get("test_event_code")?,
        payload: row.try_get("payload")?,
        attempts: Vec::new(),
    })
}

pub fn attempt_from_row<R: Row>(row: &R) -> Result<(i64, Attempt)>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<i32>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok((
        row.try_get("event_row_id")?,
        Attempt {
            attempted_at_ms: row.try_get("attempted_at_ms")?,
            outcome: row.try_get("outcome")?,
            http_status: row.try_get("http_status")?,
            fbtrace_id: row.try_get("fbtrace_id")?,
            message: row.try_get("message")?,
            latency_ms: row.try_get("latency_ms")?,
        },
    ))
}

/// What one event's resolution adds to the stats (a release adds nothing: no attempt counted).
pub fn count_resolution(
    deltas: &mut crate::dashboard::StatDeltas,
    (tenant, dataset, channel, name): (&str, &str, &str, &str),
    accepted_at_ms: i64,
    attempted_at_ms: i64,
    resolution: &crate::Resolution,
) {
    match resolution {
        crate::Resolution::Delivered { delivered_at_ms } => {
            let c = deltas.at(tenant, dataset, channel, name, *delivered_at_ms);
            c.delivered += 1;
            c.latency[crate::dashboard::latency_bucket(delivered_at_ms - accepted_at_ms)] += 1;
            c.last_delivered_ms = c.last_delivered_ms.max(Some(*delivered_at_ms));
        }
        crate::Resolution::Retry { .. } => {
            // Counted when the attempt failed.
            deltas
                .at(tenant, dataset, channel, name, attempted_at_ms)
                .retried += 1;
        }
        crate::Resolution::Dead { dead_at_ms, .. } => {
            deltas.at(tenant, dataset, channel, name, *dead_at_ms).dead += 1;
        }
        crate::Resolution::Release { .. } => {}
    }
}

/// Maps pool exhaustion and lock timeouts to `Unavailable`.
pub fn map_err(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            StoreError::Unavailable(e.to_string())
        }
        sqlx::Error::Database(ref db) if db.message().contains("database is locked") => {
            StoreError::Unavailable(e.to_string())
        }
        other => StoreError::Database(other),
    }
}

/// The columns of one event's row, bound in this order by [`push_new_event`]; the payload is
/// not among them (each backend stores it its own way).
macro_rules! event_columns {
    () => {
        "tenant, dataset_id, asset_id, channel, event_id, event_name, event_time, test_event_code, \
         next_attempt_at_ms, accepted_at_ms, conversation_id"
    };
}
pub(crate) use event_columns;

/// Rows per multi-row insert: 500 rows × 12 columns stays under every placeholder limit.
pub const INSERT_CHUNK: usize = 500;

/// The datasets `offers` name, each once, in order.
pub fn offered_datasets(offers: &[crate::HandoffOffer]) -> Vec<&str> {
    let mut datasets: Vec<&str> = Vec::new();
    for offer in offers {
        if !datasets.contains(&offer.dataset_id.as_str()) {
            datasets.push(&offer.dataset_id);
        }
    }
    datasets
}

/// Which offer takes each event (see [`crate::HandoffOffer`]): in order, the events of the
/// `taken` datasets, but not of `paused` assets, every offer up to its limit. A repeat within
/// `events` takes no room (an event already stored does, as it is known only once inserted).
pub fn assign_offers(
    events: &[crate::NewEvent],
    offers: &[crate::HandoffOffer],
    taken: &std::collections::HashSet<&str>,
    paused: &std::collections::HashSet<String>,
) -> Vec<Option<usize>> {
    let mut room: Vec<usize> = offers.iter().map(|o| o.limit).collect();
    let mut seen: foldhash::HashSet<(&str, &str)> = foldhash::HashSet::default();
    events
        .iter()
        .map(|e| {
            let takes = taken.contains(&*e.dataset_id) && !paused.contains(&*e.asset_id);
            if !takes || !seen.insert((&e.dataset_id, &e.event_id)) {
                return None;
            }
            let at = offers
                .iter()
                .enumerate()
                .position(|(i, o)| room[i] > 0 && *o.dataset_id == *e.dataset_id)?;
            room[at] -= 1;
            Some(at)
        })
        .collect()
}

/// The claims of [`crate::HandedOff`]: each inserted event an offer took, as a claim returns it.
pub fn handed_off_claims(
    events: &[crate::NewEvent],
    outcomes: &[crate::InsertOutcome],
    assigned: &[Option<usize>],
    offers: usize,
) -> Vec<Vec<ClaimedEvent>> {
    let mut claims: Vec<Vec<ClaimedEvent>> = (0..offers).map(|_| Vec::new()).collect();
    for ((e, outcome), offer) in events.iter().zip(outcomes).zip(assigned) {
        if let (crate::InsertOutcome::Inserted(id), Some(offer)) = (outcome, offer) {
            claims[*offer].push(ClaimedEvent {
                id: *id,
                dataset_id: e.dataset_id.to_string(),
                asset_id: e.asset_id.to_string(),
                channel: e.channel.to_string(),
                event_id: e.event_id.to_string(),
                event_time: e.event_time,
                payload: e.payload.to_string(),
                test_event_code: e.test_event_code.as_deref().map(str::to_owned),
                attempts: 1,
                accepted_at_ms: e.accepted_at_ms,
            });
        }
    }
    claims
}

/// Whether an offer for dataset `$2` is refused at `$1` (now): one of the dataset's events is
/// due (`extra` leaves out those held in memory), or Meta is throttling the dataset.
pub fn handoff_refused_sql(extra: &str) -> String {
    format!(
        "SELECT (EXISTS (SELECT 1 FROM events WHERE {DUE_CONDITION}{extra}) \
         OR EXISTS (SELECT 1 FROM dataset_pauses WHERE dataset_id = $5 AND until_ms > $1)) AS refused"
    )
    .replace("$5", "$2")
}

/// The assets whose events are held back (paused): no offer takes them.
pub const PAUSED_ASSETS: &str = "SELECT asset_id FROM assets WHERE status = 'paused'";

/// Binds one event's row of a multi-row `INSERT INTO events` (see [`event_columns`]),
/// due at once: next_attempt_at_ms = accepted_at_ms.
pub fn push_new_event<DB: sqlx::Database>(
    mut row: sqlx::query_builder::Separated<'_, DB, &'static str>,
    e: &crate::NewEvent,
) where
    for<'t> std::sync::Arc<str>: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> Option<std::sync::Arc<str>>: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> i64: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    push_new_event_due(&mut row, e, e.accepted_at_ms);
}

/// [`push_new_event`], due at `next_attempt_at_ms`.
pub fn push_new_event_due<DB: sqlx::Database>(
    row: &mut sqlx::query_builder::Separated<'_, DB, &'static str>,
    e: &crate::NewEvent,
    next_attempt_at_ms: i64,
) where
    for<'t> std::sync::Arc<str>: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> Option<std::sync::Arc<str>>: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> i64: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    row.push_bind(e.tenant.clone())
        .push_bind(e.dataset_id.clone())
        .push_bind(e.asset_id.clone())
        .push_bind(e.channel.clone())
        .push_bind(e.event_id.clone())
        .push_bind(e.event_name.clone())
        .push_bind(e.event_time)
        .push_bind(e.test_event_code.clone())
        .push_bind(next_attempt_at_ms)
        .push_bind(e.accepted_at_ms)
        .push_bind(e.conversation_id.clone());
}

/// Generates `impl Store` for a backend struct with a `pool` field and the backend hooks
/// `sql(&str)`, `begin_write()`, `due_list()`, `claim_many()`, `resolve_sends()`, `renew_held()`,
/// `count_held()`, `release_held()`, `let_go_of_delivery()`, `insert_new_events()`,
/// `PARALLEL_WRITERS` and `MIGRATOR`.
macro_rules! impl_store {
    ($store:ty, $db:ty) => {
        #[async_trait::async_trait]
        impl $crate::Store for $store {
            async fn migrate(&self) -> $crate::Result<()> {
                Self::MIGRATOR.run(&self.pool).await?;
                Ok(())
            }

            fn parallel_writers(&self) -> usize {
                Self::PARALLEL_WRITERS
            }

            async fn ping(&self) -> $crate::Result<()> {
                sqlx::query("SELECT 1").execute(&self.pool).await.map_err($crate::shared::map_err)?;
                Ok(())
            }

            async fn upsert_asset(&self, a: &$crate::Asset) -> $crate::Result<()> {
                use sqlx::Row;
                // One transaction: a refused asset claims no dataset. The checks name neither
                // the other tenant nor its assets, so a tenant learns nothing about another.
                let mut tx = self.begin_write().await?;
                let sql = self.sql("SELECT tenant, channel FROM assets WHERE asset_id = $1");
                let existing = sqlx::query(sqlx::AssertSqlSafe(sql.into_owned()))
                    .bind(&a.asset_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err($crate::shared::map_err)?;
                if let Some(row) = existing {
                    let (tenant, channel): (String, String) = (row.try_get("tenant")?, row.try_get("channel")?);
                    if tenant != a.tenant {
                        return Err($crate::StoreError::Conflict(format!(
                            "asset {} belongs to another tenant", a.asset_id
                        )));
                    }
                    if channel != a.channel {
                        return Err($crate::StoreError::Conflict(format!(
                            "asset {} is already registered as a {channel} asset, not {}: one id names one \
                             asset; check the channel and the id",
                            a.asset_id, a.channel
                        )));
                    }
                }
                // The first tenant to register an asset on a dataset owns it. `ON CONFLICT DO
                // NOTHING` under the primary key: two relays registering the same new dataset
                // at once for two tenants cannot both win.
                let claim = self.sql(
                    "INSERT INTO dataset_owners (dataset_id, tenant, created_at_ms) VALUES ($1, $2, $3) \
                     ON CONFLICT (dataset_id) DO NOTHING",
                );
                sqlx::query(sqlx::AssertSqlSafe(claim.into_owned()))
                    .bind(&a.dataset_id)
                    .bind(&a.tenant)
                    .bind(a.updated_at_ms)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::shared::map_err)?;
                let sql = self.sql("SELECT tenant FROM dataset_owners WHERE dataset_id = $1");
                let owner: String = sqlx::query(sqlx::AssertSqlSafe(sql.into_owned()))
                    .bind(&a.dataset_id)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err($crate::shared::map_err)?
                    .try_get("tenant")?;
                if owner != a.tenant {
                    return Err($crate::StoreError::Conflict(format!(
                        "dataset {} belongs to another tenant: a dataset receives one tenant's events only \
                         (its event ids would collide); use a dataset of this tenant's own",
                        a.dataset_id
                    )));
                }
                // The WHERE repeats the checks above for a writer that got in between (PostgreSQL).
                let sql = self.sql(
                    "INSERT INTO assets (asset_id, channel, dataset_id, access_token, status, status_reason, created_at_ms, \
                     updated_at_ms, tenant, test_event_code) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                     ON CONFLICT (asset_id) DO UPDATE SET dataset_id = excluded.dataset_id, \
                     access_token = excluded.access_token, status = excluded.status, status_reason = excluded.status_reason, \
                     updated_at_ms = excluded.updated_at_ms, test_event_code = excluded.test_event_code \
                     WHERE assets.tenant = excluded.tenant AND assets.channel = excluded.channel",
                );
                let status = match a.status {
                    $crate::AssetStatus::Active => "active",
                    $crate::AssetStatus::Paused => "paused",
                };
                let done = sqlx::query(sqlx::AssertSqlSafe(sql.into_owned()))
                    .bind(&a.asset_id)
                    .bind(&a.channel)
                    .bind(&a.dataset_id)
                    .bind(&a.sealed_token)
                    .bind(status)
                    .bind(&a.status_reason)
                    .bind(a.created_at_ms)
                    .bind(a.updated_at_ms)
                    .bind(&a.tenant)
                    .bind(&a.test_event_code)
                    .execute(&mut *tx)
                    .await
                    .map_err($crate::shared::map_err)?;
                if done.rows_affected() == 0 {
                    return Err($crate::StoreError::Conflict(format!(
                        "asset {} was registered meanwhile by another tenant or on another channel", a.asset_id
                    )));
                }
                tx.commit().await.map_err($crate::shared::map_err)?;
                Ok(())
            }

            async fn get_asset(&self, asset_id: &str) -> $crate::Result<Option<$crate::Asset>> {
                let sql = self.sql(concat!("SELECT ", $crate::shared::asset_columns!(), " FROM assets WHERE asset_id = $1"));
                let row = sqlx::query(sqlx::AssertSqlSafe(sql.into_owned()))
                    .bind(asset_id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err($crate::shared::map_err)?;
                row.as_ref().map($crate::shared::asset_from_row).transpose()
            }

            async fn list_assets(&self) -> $crate::Result<Vec<$crate::Asset>> {
                let rows = sqlx::query(concat!("SELECT ", $crate::shared::asset_columns!(), " FROM assets ORDER BY channel, asset_id"))
                    .fetch_all(&self.pool)
                    .await
                    .map_err($crate::shared::map_err)?;
                rows.iter().map($crate::shared::asset_from_row).collect()
            }

            async fn set_asset_token(&self, asset_id: &str, token: &str, now_ms: i64) -> $crate::Result<()> {
                let sql = self.sql(
                    "UPDATE assets SET access_token = $1, status = 'active', status_reason = NULL, updated_at_ms = $2 \
                     WHERE asset_id = $3",
                );
                let done = sqlx::query(sqlx::AssertSqlSafe(sql.into_owned()))
                    .bind(token)
                    .bind(now_ms)
                    .bind(asset_id)
                    .execute(self.writer())
                    .await
                    .map_err($crate::shared::map_err)?;
                if done.rows_affected() == 0 {
                    return Err($crate::StoreError::NotFound(format!("asset {asset_id} is not registered")));
                }
                Ok(())
            }

            async fn pause_asset(&self, asset_id: &str, reason: &str, now_ms: i64) -> $crate::Result<()> {
                let sql = self.sql(
                    "UPDATE assets SET status = 'paused', status_reason = $1, updated_at_ms = $2 WHERE asset_id = $3",
                );
                sqlx::query(sqlx::AssertSqlSafe(sql.into_owned()))
                    .bind(reason)
                    .bind(now_ms)
                    .bind(asset_id)
                    .execute(self.writer())
                    .await
                    .map_err($crate::shared::map_err)?;
                Ok(())
            }

            async fn resume_asset(&self, asset_id: &str, now_ms: i64) -> $crate::Result<bool> {
                let sql = self.sql(
                    "UPDATE assets SET status = 'active', status_reason = NULL, updated_at_ms = $1 \
                     WHERE asset_id = $2 AND status = 'paused'",
                );
                let done = sqlx::query(sqlx::AssertSqlSafe(sql.into_owned()))
                    .bind(now_ms)
                    .bind(asset_id)
                    .execute(self.writer())
                    .await
                    .map_err($crate::shared::map_err)?;
                if done.rows_affected() > 0 {
                    return Ok(true);
                }
                match self.get_asset(asset_id).await? {
                    Some(_) => Ok(false),
                    None => Err($crate::StoreError::NotFound(format!("asset {asset_id} is not registered"))),
                }
            }

            async fn insert_events(&self, events: &[$crate::NewEvent]) -> $crate::Result<Vec<$crate::InsertOutcome>> {
                Ok(self.insert_new_events(events, &[], 0, 0).await?.outcomes)
            }

            async fn insert_events_handing_off(
                &self,
                events: &[$crate::NewEvent],
                offers: &[$crate::HandoffOffer],
                now_ms: i64,
                lease_until_ms: i64,
            ) -> $crate::Result<$crate::HandedOff> {
                self.insert_new_events(events, offers, now_ms, lease_until_ms).await
            }

            async fn due_datasets(
                &self,
                now_ms: i64,
                due_before_ms: i64,
                full_batch: i64,
            ) -> $crate::Result<Vec<$crate::DueDataset>> {
                self.due_list(now_ms, due_before_ms, full_batch).await
            }

            async fn claim_datasets(
                &self,
                claims: &[$crate::ClaimRequest],
                now_ms: i64,
                lease_until_ms: i64,
            ) -> $crate::Result<Vec<Vec<$crate::ClaimedEvent>>> {
                self.claim_many(claims, now_ms, lease_until_ms).await
            }

            async fn renew_leases(&self, owners: &[String], lease_until_ms: i64) -> $crate::Result<u64> {
                self.renew_held(owners, lease_until_ms).await
            }

            async fn count_leased(&self, owner: &str, ids: &[i64]) -> $crate::Result<u64> {
                self.count_held(owner, ids).await
            }

            async fn release_leases(&self, owner: &str, now_ms: i64) -> $crate::Result<u64> {
                self.release_held(owner, now_ms).await
            }

            async fn stop_delivering(&self) {
                self.let_go_of_delivery();
            }

            async fn resolve_many(&self, sends: &[$crate::ResolveRequest]) -> $crate::Result<Vec<u64>> {
                self.resolve_sends(sends).await
            }

            async fn pause_dataset(&self, dataset_id: &str, until_ms: i64) -> $crate::Result<()> {
                let pause = self.sql(
                    "INSERT INTO dataset_pauses (dataset_id, until_ms) VALUES ($1, $2) \
                     ON CONFLICT (dataset_id) DO UPDATE SET until_ms = excluded.until_ms",
                );
                // Pushing the due time keeps the held events out of every claim's index range,
                // so a large throttled backlog costs nothing while it waits.
                let hold = self.sql(
                    "UPDATE events SET next_attempt_at_ms = $2 \
                     WHERE dataset_id = $1 AND state IN ('queued', 'retrying') AND next_attempt_at_ms < $2",
                );
                let mut tx = self.begin_write().await?;
                for sql in [pause, hold] {
                    sqlx::query(sqlx::AssertSqlSafe(sql.into_owned()))
                        .bind(dataset_id)
                        .bind(until_ms)
                        .execute(&mut *tx)
                        .await
                        .map_err($crate::shared::map_err)?;
                }
                tx.commit().await.map_err($crate::shared::map_err)?;
                Ok(())
            }

            async fn find_events(&self, event_id: &str, dataset_id: Option<&str>, tenant: Option<&str>) -> $crate::Result<Vec<$crate::EventRecord>> {
                let mut b = sqlx::QueryBuilder::<$db>::new(format!("SELECT {} FROM events WHERE event_id = ", Self::RECORD_COLUMNS));
                b.push_bind(event_id);
                if let Some(d) = dataset_id {
                    b.push(" AND dataset_id = ").push_bind(d);
                }
                if let Some(t) = tenant {
                    b.push(" AND tenant = ").push_bind(t);
                }
                b.push(" ORDER BY id");
                let rows = b.build().fetch_all(&self.pool).await.map_err($crate::shared::map_err)?;
                let records = rows.iter().map($crate::shared::record_from_row).collect::<$crate::Result<Vec<_>>>()?;
                self.with_attempts(records).await
            }

            async fn recent_events(&self, limit: i64) -> $crate::Result<Vec<$crate::EventRecord>> {
                let mut b = sqlx::QueryBuilder::<$db>::new(format!("SELECT {} FROM events ORDER BY id DESC LIMIT ", Self::RECORD_COLUMNS));
                b.push_bind(limit);
                let rows = b.build().fetch_all(&self.pool).await.map_err($crate::shared::map_err)?;
                let records = rows.iter().map($crate::shared::record_from_row).collect::<$crate::Result<Vec<_>>>()?;
                self.with_attempts(records).await
            }

            async fn list_dead_letters(&self, filter: &$crate::DeadLetterFilter) -> $crate::Result<Vec<$crate::EventRecord>> {
                let mut b = sqlx::QueryBuilder::<$db>::new(format!("SELECT {} FROM events WHERE state = 'dead'", Self::RECORD_COLUMNS));
                Self::push_filter(&mut b, filter);
                b.push(" ORDER BY dead_at_ms DESC, id DESC LIMIT ").push_bind(filter.limit.unwrap_or(1000));
                let rows = b.build().fetch_all(&self.pool).await.map_err($crate::shared::map_err)?;
                let records = rows.iter().map($crate::shared::record_from_row).collect::<$crate::Result<Vec<_>>>()?;
                self.with_attempts(records).await
            }

            async fn replay_dead_letters(&self, filter: &$crate::DeadLetterFilter, now_ms: i64) -> $crate::Result<u64> {
                // Many event ids are bound a chunk at a time (each backend caps the variables
                // of one statement), all in one transaction.
                let chunks: Vec<Option<Vec<String>>> = match &filter.event_ids {
                    Some(ids) if !ids.is_empty() => ids
                        .chunks($crate::shared::BIND_CHUNK)
                        .map(|c| Some(c.to_vec()))
                        .collect(),
                    other => vec![other.clone()],
                };
                let mut tx = self.begin_write().await?;
                let mut replayed = 0;
                for event_ids in chunks {
                    let chunk = $crate::DeadLetterFilter { event_ids, ..filter.clone() };
                    let mut b = sqlx::QueryBuilder::<$db>::new("UPDATE events SET state = 'queued', attempts = 0, dead_reason = NULL, dead_at_ms = NULL, next_attempt_at_ms = ");
                    b.push_bind(now_ms).push(" WHERE state = 'dead'");
                    Self::push_filter(&mut b, &chunk);
                    let done = b.build().execute(&mut *tx).await.map_err($crate::shared::map_err)?;
                    replayed += done.rows_affected();
                }
                tx.commit().await.map_err($crate::shared::map_err)?;
                Ok(replayed)
            }

            async fn queue_stats(&self) -> $crate::Result<$crate::QueueStats> {
                use sqlx::Row;
                let row = sqlx::query(concat!(
                    "SELECT (SELECT COUNT(*) FROM events WHERE ", $crate::shared::unfinished!(), ") AS depth, ",
                    "(SELECT MIN(accepted_at_ms) FROM events WHERE ", $crate::shared::unfinished!(), ") AS oldest, ",
                    "(SELECT COUNT(*) FROM events WHERE state = 'dead') AS dead",
                ))
                .fetch_one(&self.pool)
                .await
                .map_err($crate::shared::map_err)?;
                Ok($crate::QueueStats {
                    depth: row.try_get("depth")?,
                    oldest_accepted_at_ms: row.try_get("oldest")?,
                    dead: row.try_get("dead")?,
                })
            }

            async fn purge_finished(&self, before_ms: i64) -> $crate::Result<u64> {
                let sql = self.sql(concat!("DELETE FROM events WHERE ", $crate::shared::finished!(), " AND accepted_at_ms < $1"));
                let done = sqlx::query(sqlx::AssertSqlSafe(sql.into_owned()))
                    .bind(before_ms)
                    .execute(self.writer())
                    .await
                    .map_err($crate::shared::map_err)?;
                // Attempts are kept a week longer: no event is sent more than 7 days after its
                // time, so an older attempt belongs to no event that is still to deliver.
                let attempts = self.sql("DELETE FROM send_attempts WHERE attempted_at_ms < $1");
                sqlx::query(sqlx::AssertSqlSafe(attempts.into_owned()))
                    .bind(before_ms - 7 * 24 * 3_600_000)
                    .execute(self.writer())
                    .await
                    .map_err($crate::shared::map_err)?;
                Ok(done.rows_affected())
            }

            async fn reseal_tokens(&self, changes: &[(String, String, String)]) -> $crate::Result<u64> {
                let sql = self.sql("UPDATE assets SET access_token = $1 WHERE asset_id = $2 AND access_token = $3");
                let mut tx = self.begin_write().await?;
                for (asset_id, old, new) in changes {
                    let done = sqlx::query(sqlx::AssertSqlSafe(sql.clone().into_owned()))
                        .bind(new)
                        .bind(asset_id)
                        .bind(old)
                        .execute(&mut *tx)
                        .await
                        .map_err($crate::shared::map_err)?;
                    if done.rows_affected() != 1 {
                        // Dropping the transaction rolls every change back.
                        return Err($crate::StoreError::Conflict(format!(
                            "the token of asset {asset_id} changed during the rotation; run it again"
                        )));
                    }
                }
                tx.commit().await.map_err($crate::shared::map_err)?;
                Ok(changes.len() as u64)
            }

            async fn create_tenant(&self, t: &$crate::Tenant) -> $crate::Result<bool> {
                let sql = self.sql(
                    "INSERT INTO tenants (name, test_event_code, created_at_ms) VALUES ($1, $2, $3) \
                     ON CONFLICT (name) DO NOTHING",
                );
                let done = sqlx::query(sqlx::AssertSqlSafe(sql.into_owned()))
                    .bind(&t.name)
                    .bind(&t.test_event_code)
                    .bind(t.created_at_ms)
                    .execute(self.writer())
                    .await
                    .map_err($crate::shared::map_err)?;
                Ok(done.rows_affected() == 1)
            }

            async fn get_tenant(&self, name: &str) -> $crate::Result<Option<$crate::Tenant>> {
                let sql = self.sql("SELECT name, test_event_code, created_at_ms FROM tenants WHERE name = $1");
                let row = sqlx::query(sqlx::AssertSqlSafe(sql.into_owned()))
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err($crate::shared::map_err)?;
                row.as_ref().map($crate::shared::tenant_from_row).transpose()
            }

            async fn list_tenants(&self) -> $crate::Result<Vec<$crate::Tenant>> {
                let rows = sqlx::query("SELECT name, test_event_code, created_at_ms FROM tenants ORDER BY name")
                    .fetch_all(&self.pool)
                    .await
                    .map_err($crate::shared::map_err)?;
                rows.iter().map($crate::shared::tenant_from_row).collect()
            }

            async fn set_tenant_test_event_code(&self, name: &str, code: Option<&str>) -> $crate::Result<()> {
                let sql = self.sql("UPDATE tenants SET test_event_code = $1 WHERE name = $2");
                let done = sqlx::query(sqlx::AssertSqlSafe(sql.into_owned()))
                    .bind(code)
                    .bind(name)
                    .execute(self.writer())
                    .await
                    .map_err($crate::shared::map_err)?;
                if done.rows_affected() == 0 {
                    return Err($crate::StoreError::NotFound(format!("no tenant named {name:?}")));
                }
                Ok(())
            }

            async fn create_api_key(&self, k: &$crate::ApiKeyRecord) -> $crate::Result<()> {
                let sql = self.sql(
                    "INSERT INTO api_keys (id, tenant, key_hash, label, allowed_assets, created_at_ms, revoked_at_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                );
                let assets = k.assets.as_ref().map(|a| serde_json::to_string(a).expect("strings serialise"));
                sqlx::query(sqlx::AssertSqlSafe(sql.into_owned()))
                    .bind(&k.id)
                    .bind(&k.tenant)
                    .bind(&k.key_hash)
                    .bind(&k.label)
                    .bind(assets)
                    .bind(k.created_at_ms)
                    .bind(k.revoked_at_ms)
                    .execute(self.writer())
                    .await
                    .map_err($crate::shared::map_err)?;
                Ok(())
            }

            async fn find_api_key(&self, key_hash: &str) -> $crate::Result<Option<$crate::ApiKeyRecord>> {
                let sql = self.sql("SELECT * FROM api_keys WHERE key_hash = $1");
                let row = sqlx::query(sqlx::AssertSqlSafe(sql.into_owned()))
                    .bind(key_hash)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err($crate::shared::map_err)?;
                row.as_ref().map($crate::shared::api_key_from_row).transpose()
            }

            async fn list_api_keys(&self, tenant: Option<&str>) -> $crate::Result<Vec<$crate::ApiKeyRecord>> {
                let mut b = sqlx::QueryBuilder::<$db>::new("SELECT * FROM api_keys");
                if let Some(t) = tenant {
                    b.push(" WHERE tenant = ").push_bind(t);
                }
                b.push(" ORDER BY tenant, created_at_ms, id");
                let rows = b.build().fetch_all(&self.pool).await.map_err($crate::shared::map_err)?;
                rows.iter().map($crate::shared::api_key_from_row).collect()
            }

            async fn revoke_api_key(&self, id: &str, now_ms: i64) -> $crate::Result<$crate::ApiKeyRecord> {
                let sql = self.sql(
                    "UPDATE api_keys SET revoked_at_ms = COALESCE(revoked_at_ms, $1) WHERE id = $2 RETURNING *",
                );
                let row = sqlx::query(sqlx::AssertSqlSafe(sql.into_owned()))
                    .bind(now_ms)
                    .bind(id)
                    .fetch_optional(self.writer())
                    .await
                    .map_err($crate::shared::map_err)?;
                match row {
                    Some(row) => $crate::shared::api_key_from_row(&row),
                    None => Err($crate::StoreError::NotFound(format!("no API key with id {id:?}"))),
                }
            }

            async fn append_audit(&self, e: &$crate::AuditEntry) -> $crate::Result<()> {
                let sql = self.sql(
                    "INSERT INTO audit_log (at_ms, actor, action, tenant, target, detail) VALUES ($1, $2, $3, $4, $5, $6)",
                );
                sqlx::query(sqlx::AssertSqlSafe(sql.into_owned()))
                    .bind(e.at_ms)
                    .bind(&e.actor)
                    .bind(&e.action)
                    .bind(&e.tenant)
                    .bind(&e.target)
                    .bind(&e.detail)
                    .execute(self.writer())
                    .await
                    .map_err($crate::shared::map_err)?;
                Ok(())
            }

            async fn list_audit(&self, tenant: Option<&str>, limit: i64) -> $crate::Result<Vec<$crate::AuditEntry>> {
                let mut b = sqlx::QueryBuilder::<$db>::new("SELECT * FROM audit_log");
                if let Some(t) = tenant {
                    b.push(" WHERE tenant = ").push_bind(t);
                }
                b.push(" ORDER BY id DESC LIMIT ").push_bind(limit);
                let rows = b.build().fetch_all(&self.pool).await.map_err($crate::shared::map_err)?;
                rows.iter().map($crate::shared::audit_from_row).collect()
            }
        }

        impl $store {
            fn push_filter(b: &mut sqlx::QueryBuilder<$db>, filter: &$crate::DeadLetterFilter) {
                if let Some(t) = &filter.tenant {
                    b.push(" AND tenant = ").push_bind(t.clone());
                }
                if let Some(assets) = &filter.within_assets {
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
                if let Some(d) = &filter.dataset_id {
                    b.push(" AND dataset_id = ").push_bind(d.clone());
                }
                if let Some(a) = &filter.asset_id {
                    b.push(" AND asset_id = ").push_bind(a.clone());
                }
                if let Some(since) = filter.since_ms {
                    b.push(" AND dead_at_ms >= ").push_bind(since);
                }
                if let Some(ids) = &filter.event_ids {
                    b.push(" AND event_id IN (");
                    if ids.is_empty() {
                        b.push("NULL");
                    }
                    let mut sep = b.separated(", ");
                    for id in ids {
                        sep.push_bind(id.clone());
                    }
                    b.push(")");
                }
            }

            async fn with_attempts(&self, mut records: Vec<$crate::EventRecord>) -> $crate::Result<Vec<$crate::EventRecord>> {
                if records.is_empty() {
                    return Ok(records);
                }
                // Earlier attempts from `event_attempts`, the latest from the event itself.
                let mut b = sqlx::QueryBuilder::<$db>::new(
                    "SELECT x.event_row_id, a.attempted_at_ms, a.outcome, a.http_status, a.fbtrace_id, a.message, a.latency_ms \
                     FROM (SELECT event_row_id, attempt_id FROM event_attempts WHERE event_row_id IN (",
                );
                let mut sep = b.separated(", ");
                for r in &records {
                    sep.push_bind(r.id);
                }
                b.push(") UNION SELECT id, last_attempt_id FROM events WHERE last_attempt_id IS NOT NULL AND id IN (");
                let mut sep = b.separated(", ");
                for r in &records {
                    sep.push_bind(r.id);
                }
                b.push(")) x JOIN send_attempts a ON a.id = x.attempt_id ORDER BY a.attempted_at_ms, a.id");
                let rows = b.build().fetch_all(&self.pool).await.map_err($crate::shared::map_err)?;
                for row in &rows {
                    let (event_row_id, attempt) = $crate::shared::attempt_from_row(row)?;
                    if let Some(r) = records.iter_mut().find(|r| r.id == event_row_id) {
                        r.attempts.push(attempt);
                    }
                }
                Ok(records)
            }
        }
    };
}

pub(crate) use impl_store;
