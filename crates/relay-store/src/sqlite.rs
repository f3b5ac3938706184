//! SQLite backend: one file, WAL, the embedded default.

use std::{borrow::Cow, collections::HashSet, str::FromStr, time::Duration};

use sqlx::{
    Connection, QueryBuilder, Row, Sqlite, SqliteConnection, SqlitePool, Transaction,
    migrate::Migrator,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};
use tokio::task::JoinHandle;

use crate::{
    InsertOutcome, NewEvent, Result,
    capture::impl_capture_store,
    crm::impl_crm_store,
    dashboard::{impl_dashboard_store, insert_deltas},
    shared::{
        CLAIM_COLUMNS, DUE_CONDITION, INSERT_CHUNK, INSERT_EVENT_COLUMNS, impl_store, map_err,
        push_new_event,
    },
};

/// Rows the writer's statements hand over without waiting: a claim's largest `RETURNING`.
const WRITER_ROW_BUFFER: usize = 1024;

/// How often the background task copies the WAL back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

pub struct SqliteStore {
    /// Readers: WAL lets them run beside the writer.
    pool: SqlitePool,
    /// The one connection that writes. SQLite takes one writer at a time; writers queued
    /// here are woken in turn as soon as the previous one commits, where writers on several
    /// connections would poll SQLite's lock with sleeps of up to 100 ms each.
    writer: SqlitePool,
    checkpointer: JoinHandle<()>,
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.checkpointer.abort();
    }
}

impl SqliteStore {
    /// SQLite has one writer.
    const PARALLEL_WRITERS: usize = 1;

    /// One writer at a time: no row locks to order.
    const LOCK_IN_ID_ORDER: &str = "";

    const MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

    /// Opens (and creates) the database file named by a `sqlite://` URL.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is fsynced before it returns, so an acknowledged event survives an
            // OS crash or power loss too (NORMAL would survive only a process crash).
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            // 16 MiB of page cache per connection instead of SQLite's 2 MiB: the outbox's
            // indexes outgrow 2 MiB within minutes, and every miss is a pread and a copy.
            .pragma("cache_size", "-16384")
            // SQLite's own checkpoint, run by the committing writer, only starts once the WAL
            // holds 64 MiB (not 4 MiB), and by then the background task below has copied most
            // of it: the writer finishes the tail and the WAL starts over. Copying in larger,
            // less frequent runs also writes each often-changed index page once, not many times.
            .pragma("wal_autocheckpoint", "16384")
            // After that, the WAL file shrinks back to 64 MiB.
            .pragma("journal_size_limit", "67108864")
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await
            .map_err(map_err)?;
        let options_for_checkpoints = options.clone();
        // Opened at its first write, after `migrate`: a connection opened before a migration
        // keeps the old schema in sqlx's cached statement columns, and a `SELECT *` on it then
        // reads past the end of a row (sqlx's "index out of bounds" panic).
        //
        // The writer's rows are buffered a claim's worth at a time: with sqlx's default of 50,
        // SQLite's thread stopped every 50 rows of a claim's `RETURNING` until a busy runtime
        // took them, and every writer waited with it (claims cost 3× their own time).
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(options.row_buffer_size(WRITER_ROW_BUFFER));
        let checkpointer = tokio::spawn(checkpoint_wal(pool.clone(), options_for_checkpoints));
        Ok(SqliteStore {
            pool,
            writer,
            checkpointer,
        })
    }

    /// SQLite takes `?N` where PostgreSQL takes `$N`.
    fn sql<'a>(&self, sql: &'a str) -> Cow<'a, str> {
        Cow::Owned(sql.replace('$', "?"))
    }

    /// Where single-statement writes go (see `writer`).
    fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    /// `BEGIN IMMEDIATE` takes the write lock up front, so a writer from another process (a
    /// CLI command) waits on the busy timeout instead of failing when a read transaction tries
    /// to upgrade.
    async fn begin_write(&self) -> Result<Transaction<'_, Sqlite>> {
        match self.writer.begin_with("BEGIN IMMEDIATE").await {
            // sqlx counts this connection as inside a transaction: after a full disk SQLite
            // rolled the transaction back itself and sqlx's ROLLBACK failed. It would refuse
            // every write from now on, so it is closed and the pool opens a fresh one.
            Err(sqlx::Error::InvalidSavePointStatement) => {
                tracing::error!(
                    "the SQLite writer connection was left inside a transaction; reopening it"
                );
                if let Ok(stuck) = self.writer.acquire().await {
                    let _ = stuck.close().await;
                }
                self.writer
                    .begin_with("BEGIN IMMEDIATE")
                    .await
                    .map_err(map_err)
            }
            other => other.map_err(map_err),
        }
    }

    fn claim_sql() -> String {
        format!(
            "UPDATE events SET state = 'sending', lease_owner = $3, lease_until_ms = $4, next_attempt_at_ms = $4, attempts = attempts + 1 \
             WHERE id IN (SELECT id FROM events WHERE {DUE_CONDITION} ORDER BY next_attempt_at_ms, id LIMIT $2) \
             RETURNING {CLAIM_COLUMNS}"
        )
    }

    /// `Store::claim_datasets`: a statement per pick, in one transaction.
    async fn claim_many(
        &self,
        claims: &[crate::ClaimRequest],
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<Vec<Vec<crate::ClaimedEvent>>> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        let sql = self.sql(&Self::claim_sql()).into_owned();
        let mut tx = self.begin_write().await?;
        let mut all = Vec::with_capacity(claims.len());
        for claim in claims {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(now_ms)
                .bind(claim.limit)
                .bind(claim.owner.as_str())
                .bind(lease_until_ms)
                .bind(claim.dataset_id.as_str())
                .fetch_all(&mut *tx)
                .await
                .map_err(map_err)?;
            let mut claimed = rows
                .iter()
                .map(crate::shared::claimed_from_row)
                .collect::<Result<Vec<_>>>()?;
            claimed.sort_by_key(|e| e.id);
            all.push(claimed);
        }
        tx.commit().await.map_err(map_err)?;
        Ok(all)
    }

    /// `Store::resolve_many`: statement by statement, as SQLite runs them in-process with no
    /// round trip to pay.
    async fn resolve_sends(&self, sends: &[crate::ResolveRequest]) -> Result<Vec<u64>> {
        if sends.iter().all(|s| s.ids.is_empty()) {
            return Ok(vec![0; sends.len()]);
        }
        let mut tx = self.begin_write().await?;
        let mut counts = Vec::with_capacity(sends.len());
        let mut deltas = crate::dashboard::StatDeltas::default();
        for send in sends {
            let (owner, ids, attempt, resolution) = (
                send.owner.as_str(),
                &send.ids,
                &send.attempt,
                &send.resolution,
            );
            if ids.is_empty() {
                counts.push(0);
                continue;
            }
            // One attempt row for the whole request; each event names it as its latest.
            let insert_attempt = self.sql(
                "INSERT INTO send_attempts (dataset_id, attempted_at_ms, outcome, http_status, fbtrace_id, message, latency_ms) \
                 SELECT dataset_id, $2, $3, $4, $5, $6, $7 FROM events WHERE id = $1 RETURNING id",
            );
            let attempt_id: Option<i64> =
                sqlx::query_scalar(sqlx::AssertSqlSafe(insert_attempt.into_owned()))
                    .bind(ids[0])
                    .bind(attempt.attempted_at_ms)
                    .bind(attempt.outcome.clone())
                    .bind(attempt.http_status)
                    .bind(attempt.fbtrace_id.clone())
                    .bind(attempt.message.clone())
                    .bind(attempt.latency_ms)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(crate::shared::map_err)?;
            let Some(attempt_id) = attempt_id else {
                // The events are gone (purged): nothing to resolve.
                counts.push(0);
                continue;
            };
            let mut updated = 0u64;
            for chunk in ids.chunks(1000) {
                // The attempt an event names now moves to its history (a retry, a replay):
                // a first send finds none, at the cost of a lookup.
                let mut b = QueryBuilder::<Sqlite>::new(
                    "INSERT INTO event_attempts (event_row_id, attempt_id) SELECT id, last_attempt_id FROM events \
                     WHERE last_attempt_id IS NOT NULL AND state = 'sending' AND lease_owner = ",
                );
                b.push_bind(owner).push(" AND id IN (");
                let mut sep = b.separated(", ");
                for id in chunk {
                    sep.push_bind(*id);
                }
                b.push(") ON CONFLICT DO NOTHING");
                b.build()
                    .execute(&mut *tx)
                    .await
                    .map_err(crate::shared::map_err)?;
                let mut b = QueryBuilder::<Sqlite>::new(
                    "UPDATE events SET lease_owner = NULL, lease_until_ms = NULL, last_attempt_id = ",
                );
                b.push_bind(attempt_id).push(", ");
                match resolution {
                    crate::Resolution::Delivered { delivered_at_ms } => {
                        b.push("state = 'delivered', delivered_at_ms = ")
                            .push_bind(*delivered_at_ms);
                    }
                    crate::Resolution::Retry { next_attempt_at_ms } => {
                        b.push("state = 'retrying', next_attempt_at_ms = ")
                            .push_bind(*next_attempt_at_ms);
                    }
                    crate::Resolution::Dead { reason, dead_at_ms } => {
                        b.push("state = 'dead', dead_reason = ")
                            .push_bind(reason.clone())
                            .push(", dead_at_ms = ")
                            .push_bind(*dead_at_ms);
                    }
                    crate::Resolution::Release { now_ms } => {
                        b.push("state = 'queued', attempts = attempts - 1, next_attempt_at_ms = ")
                            .push_bind(*now_ms);
                    }
                }
                b.push(" WHERE state = 'sending' AND lease_owner = ")
                    .push_bind(owner)
                    .push(" AND id IN (");
                let mut sep = b.separated(", ");
                for id in chunk {
                    sep.push_bind(*id);
                }
                b.push(") RETURNING tenant, dataset_id, channel, event_name, accepted_at_ms");
                let rows = b
                    .build()
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(crate::shared::map_err)?;
                for row in rows {
                    updated += 1;
                    let (tenant, dataset, channel, name): (String, String, String, String) = (
                        row.try_get("tenant")?,
                        row.try_get("dataset_id")?,
                        row.try_get("channel")?,
                        row.try_get("event_name")?,
                    );
                    let accepted_at: i64 = row.try_get("accepted_at_ms")?;
                    crate::shared::count_resolution(
                        &mut deltas,
                        (&tenant, &dataset, &channel, &name),
                        accepted_at,
                        attempt.attempted_at_ms,
                        resolution,
                    );
                }
            }
            if updated == 0 {
                // Every lease was lost: no attempt to record.
                let drop_attempt = self.sql("DELETE FROM send_attempts WHERE id = $1");
                sqlx::query(sqlx::AssertSqlSafe(drop_attempt.into_owned()))
                    .bind(attempt_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(crate::shared::map_err)?;
            }
            counts.push(updated);
        }
        if counts.iter().all(|&n| n == 0) {
            tx.rollback().await.map_err(crate::shared::map_err)?;
            return Ok(counts);
        }
        Self::bump_stats(&mut tx, &deltas).await?;
        tx.commit().await.map_err(crate::shared::map_err)?;
        Ok(counts)
    }

    /// `BEGIN IMMEDIATE` makes this transaction the only writer, so ids can be read from
    /// `last_insert_rowid`: AUTOINCREMENT numbers the rows of one statement consecutively.
    /// `RETURNING` would say the same, but SQLite answers it through a temporary table, which
    /// cost a quarter of each insert.
    ///
    /// Each chunk is first inserted optimistically with `INSERT OR IGNORE`: when every row
    /// went in (the common case: no duplicates) that is all, with no lookup of stored keys.
    /// Otherwise the chunk is rolled back to its savepoint and inserted the exact way.
    async fn insert_new_events(&self, events: &[NewEvent]) -> Result<Vec<InsertOutcome>> {
        let mut tx = self.begin_write().await?;
        let mut outcomes = Vec::with_capacity(events.len());
        for chunk in events.chunks(INSERT_CHUNK) {
            sqlx::query("SAVEPOINT chunk")
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            let mut insert = QueryBuilder::<Sqlite>::new(INSERT_EVENT_COLUMNS.replacen(
                "INSERT INTO",
                "INSERT OR IGNORE INTO",
                1,
            ));
            insert.push_values(chunk, push_new_event);
            let done = insert.build().execute(&mut *tx).await.map_err(map_err)?;
            if done.rows_affected() == chunk.len() as u64 {
                sqlx::query("RELEASE chunk")
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                let first = done.last_insert_rowid() - chunk.len() as i64 + 1;
                outcomes
                    .extend((0..chunk.len()).map(|k| InsertOutcome::Inserted(first + k as i64)));
            } else {
                sqlx::query("ROLLBACK TO chunk")
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                sqlx::query("RELEASE chunk")
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                outcomes.extend(insert_exactly(&mut tx, chunk).await?);
            }
        }
        Self::bump_stats(&mut tx, &insert_deltas(events, &outcomes)).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(outcomes)
    }
}

/// Looks up which keys of `chunk` are stored already, inserts the first event of each other
/// key in one statement, and says which events were inserted and which were duplicates.
async fn insert_exactly(
    tx: &mut Transaction<'_, Sqlite>,
    chunk: &[NewEvent],
) -> Result<Vec<InsertOutcome>> {
    let mut stored: HashSet<(&str, String)> = HashSet::new();
    let mut datasets: Vec<&str> = chunk.iter().map(|e| &*e.dataset_id).collect();
    datasets.sort_unstable();
    datasets.dedup();
    for dataset in datasets {
        let mut lookup =
            QueryBuilder::<Sqlite>::new("SELECT event_id FROM events WHERE dataset_id = ");
        lookup.push_bind(dataset).push(" AND event_id IN (");
        let mut list = lookup.separated(", ");
        for e in chunk.iter().filter(|e| &*e.dataset_id == dataset) {
            list.push_bind(e.event_id.clone());
        }
        lookup.push(")");
        for row in lookup.build().fetch_all(&mut **tx).await.map_err(map_err)? {
            stored.insert((dataset, row.try_get("event_id")?));
        }
    }

    // The first occurrence of a key not stored yet is inserted; any other is a duplicate.
    let mut taken: HashSet<(&str, &str)> = HashSet::with_capacity(chunk.len());
    let fresh: Vec<usize> = (0..chunk.len())
        .filter(|&i| {
            let key = (&*chunk[i].dataset_id, &*chunk[i].event_id);
            let already = stored.contains(&(key.0, key.1.to_owned()));
            !already && taken.insert(key)
        })
        .collect();
    let mut outcomes = vec![InsertOutcome::Duplicate; chunk.len()];
    if fresh.is_empty() {
        return Ok(outcomes);
    }
    let mut insert = QueryBuilder::<Sqlite>::new(INSERT_EVENT_COLUMNS);
    insert.push_values(fresh.iter().map(|&i| &chunk[i]), push_new_event);
    // No ON CONFLICT: a conflict here would mean the lookup above was wrong, and fails the
    // whole transaction rather than misreport an event.
    let done = insert.build().execute(&mut **tx).await.map_err(map_err)?;
    let first = done.last_insert_rowid() - fresh.len() as i64 + 1;
    for (offset, &i) in fresh.iter().enumerate() {
        outcomes[i] = InsertOutcome::Inserted(first + offset as i64);
    }
    Ok(outcomes)
}

/// Copies the WAL back into the database file every [`CHECKPOINT_EVERY`], beside the writer
/// rather than inside its commits; a passive checkpoint never blocks a writer. Ends when the
/// store is dropped (or the pool closed).
async fn checkpoint_wal(pool: SqlitePool, options: SqliteConnectOptions) {
    // Its own connection, not one of the pool's: a pool connection first opened while `migrate`
    // runs keeps a half-migrated schema, and its next `SELECT *` reads past the end of the row
    // (sqlx caches the columns a statement had when it was prepared).
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut connection: Option<SqliteConnection> = None;
    while !pool.is_closed() {
        tick.tick().await;
        if connection.is_none() {
            connection = SqliteConnection::connect_with(&options).await.ok();
        }
        let Some(conn) = connection.as_mut() else {
            continue;
        };
        let passive = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&mut *conn)
            .await;
        if let Err(e) = passive {
            tracing::debug!(error = %e, "WAL checkpoint skipped");
            connection = None;
        }
    }
}

impl_store!(SqliteStore, Sqlite);
impl_capture_store!(SqliteStore, Sqlite);
impl_crm_store!(SqliteStore, Sqlite);
impl_dashboard_store!(SqliteStore, Sqlite);
crate::pages::impl_page_store!(SqliteStore, Sqlite);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        Store,
        shared::{finished, unfinished},
    };

    async fn plan(store: &SqliteStore, sql: &str) -> String {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "EXPLAIN QUERY PLAN {}",
            store.sql(sql)
        )))
        .fetch_all(&store.pool)
        .await
        .unwrap();
        rows.iter()
            .map(|r| r.get::<String, _>("detail"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// A migrated store in a new directory, and the database file's path.
    async fn fresh_store() -> (tempfile::TempDir, std::path::PathBuf, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("relay.db");
        let store = SqliteStore::connect(&format!("sqlite://{}", file.display()))
            .await
            .unwrap();
        store.migrate().await.unwrap();
        (dir, file, store)
    }

    // Issue 12, C.7: an acknowledged commit must survive an OS crash, on every connection
    // (the writer's is the one that commits).
    #[tokio::test]
    async fn every_connection_commits_with_synchronous_full_in_wal_mode() {
        let (_dir, _, store) = fresh_store().await;
        for pool in [&store.writer, &store.pool] {
            let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
                .fetch_one(pool)
                .await
                .unwrap();
            assert_eq!(sync, 2, "synchronous must be FULL (2)");
            let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
                .fetch_one(pool)
                .await
                .unwrap();
            assert_eq!(mode, "wal");
        }
    }

    // The partial indexes are only used when a query repeats their predicate exactly.
    #[tokio::test]
    async fn outbox_queries_use_the_partial_indexes() {
        let (_dir, _, store) = fresh_store().await;

        let claim = plan(&store, &SqliteStore::claim_sql()).await;
        assert!(claim.contains("USING INDEX events_due"), "{claim}");
        let depth = plan(
            &store,
            concat!("SELECT COUNT(*) FROM events WHERE ", unfinished!()),
        )
        .await;
        assert!(depth.contains("events_due"), "{depth}");
        let purge = plan(
            &store,
            concat!(
                "DELETE FROM events WHERE ",
                finished!(),
                " AND accepted_at_ms < $1"
            ),
        )
        .await;
        assert!(purge.contains("USING INDEX events_finished"), "{purge}");
    }

    #[tokio::test]
    async fn the_background_checkpoint_copies_the_wal_into_the_database() {
        let (_dir, file, store) = fresh_store().await;
        let events: Vec<NewEvent> = (0..2_000)
            .map(|i| NewEvent {
                tenant: "default".into(),
                dataset_id: "d1".into(),
                asset_id: "a1".into(),
                channel: "whatsapp".into(),
                event_id: format!("e{i}").into(),
                event_name: "Purchase".into(),
                event_time: 1,
                payload: "{}".into(),
                test_event_code: None,
                accepted_at_ms: 1,
                conversation_id: None,
            })
            .collect();
        let before = std::fs::metadata(&file).unwrap().len();
        store.insert_events(&events).await.unwrap();
        // Far below SQLite's own 64 MiB threshold, so only the background task can copy the
        // rows from the WAL into the database file.
        let started = std::time::Instant::now();
        while std::fs::metadata(&file).unwrap().len() <= before {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the WAL was never checkpointed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // A full disk (here: a page limit) makes SQLite roll the transaction back itself; sqlx's own
    // ROLLBACK then fails and it goes on counting the writer as inside a transaction, which
    // refused every later write ("begin_with at non-zero transaction depth") until a restart.
    #[tokio::test]
    async fn writes_resume_after_the_database_was_full() {
        let (_dir, _, store) = fresh_store().await;
        let batch = |tag: &str| -> Vec<NewEvent> {
            (0..500)
                .map(|i| NewEvent {
                    tenant: "default".into(),
                    dataset_id: "d1".into(),
                    asset_id: "a1".into(),
                    channel: "whatsapp".into(),
                    event_id: format!("{tag}-{i}").into(),
                    event_name: "Purchase".into(),
                    event_time: 1,
                    payload: "x".repeat(2_000).into(),
                    test_event_code: None,
                    accepted_at_ms: 1,
                    conversation_id: None,
                })
                .collect()
        };
        store.insert_events(&batch("fits")).await.unwrap();
        let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
            .fetch_one(&store.writer)
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "PRAGMA max_page_count = {}",
            pages + 5
        )))
        .execute(&store.writer)
        .await
        .unwrap();
        let full = store.insert_events(&batch("too-many")).await;
        assert!(full.is_err(), "the page limit must refuse the batch");
        // The disk has room again (a fresh writer connection has no page limit).
        let after = store.insert_events(&batch("after")).await;
        assert!(after.is_ok(), "writes must resume: {after:?}");
        assert_eq!(
            store.queue_stats().await.unwrap().depth,
            1_000,
            "the refused batch left nothing behind"
        );
    }
}
