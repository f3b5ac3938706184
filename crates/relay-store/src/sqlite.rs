//! SQLite backend: one file, WAL, the embedded default.

use std::{borrow::Cow, collections::HashSet, path::PathBuf, str::FromStr, time::Duration};

use sqlx::{
    Connection, QueryBuilder, Row, Sqlite, SqliteConnection, SqlitePool, Transaction,
    migrate::Migrator,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};
use tokio::task::JoinHandle;

use crate::{
    HandedOff, HandoffOffer, InsertOutcome, NewEvent, Result,
    capture::impl_capture_store,
    crm::impl_crm_store,
    dashboard::{impl_dashboard_store, insert_deltas},
    leases::{HeldEvent, LeaseTable},
    shared::{
        CLAIM_COLUMNS, DUE_CONDITION, DUE_DATASETS_UNHELD, INSERT_CHUNK, PAUSED_ASSETS,
        assign_offers, event_columns, handed_off_claims, handoff_refused_sql, impl_store, map_err,
        offered_datasets, push_new_event, record_columns,
    },
};

/// Rows a statement hands over without waiting for the runtime to take them: a claim's
/// largest read. With sqlx's default of 50, SQLite's thread stopped every 50 rows of a claim
/// until a busy runtime took them (a claim's read cost 19 µs an event instead of 2).
const ROW_BUFFER: usize = 1024;

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
    /// Delivery's leases: in this process's memory (see `leases.rs`).
    leases: std::sync::Mutex<LeaseTable>,
    /// Claims run one at a time.
    claiming: tokio::sync::Mutex<()>,
    /// The lock file beside the database (none for an in-memory one), and its handle once held.
    delivery_lock_path: Option<PathBuf>,
    delivery_lock: std::sync::Mutex<Option<std::fs::File>>,
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.checkpointer.abort();
    }
}

/// [`SqliteStore::PAYLOAD`], as a literal for `concat!`.
macro_rules! payload_of_event {
    () => {
        "COALESCE((SELECT payload FROM event_payloads WHERE event_payloads.id = events.id), '')"
    };
}

impl SqliteStore {
    /// SQLite has one writer.
    const PARALLEL_WRITERS: usize = 1;

    const MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

    /// Payloads live in `event_payloads`, written once: SQLite rewrites a whole row when one
    /// column changes, and the payloads made up most of the pages a resolve rewrote. A missing
    /// payload reads as '', which the sender dead-letters as unreadable.
    const PAYLOAD: &str = payload_of_event!();
    const RECORD_COLUMNS: &str =
        concat!(record_columns!(), ", ", payload_of_event!(), " AS payload");

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
            .connect_with(options.clone().row_buffer_size(ROW_BUFFER))
            .await
            .map_err(map_err)?;
        let options_for_checkpoints = options.clone();
        let filename = options.get_filename().to_owned();
        // Opened at its first write, after `migrate`: a connection opened before a migration
        // keeps the old schema in sqlx's cached statement columns, and a `SELECT *` on it then
        // reads past the end of a row (sqlx's "index out of bounds" panic).
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(options.row_buffer_size(ROW_BUFFER));
        let checkpointer = tokio::spawn(checkpoint_wal(pool.clone(), options_for_checkpoints));
        let in_memory = filename.as_os_str().is_empty()
            || filename.to_string_lossy().contains(":memory:")
            || url.contains("mode=memory");
        let delivery_lock_path = (!in_memory).then(|| {
            let mut name = filename.as_os_str().to_owned();
            name.push("-delivery.lock");
            PathBuf::from(name)
        });
        Ok(SqliteStore {
            pool,
            writer,
            checkpointer,
            leases: std::sync::Mutex::new(LeaseTable::default()),
            claiming: tokio::sync::Mutex::new(()),
            delivery_lock_path,
            delivery_lock: std::sync::Mutex::new(None),
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

    /// A claim's read: the dataset's due events, oldest first, less the ids held in memory
    /// (`$6`, a JSON array). `$3` and `$4` are unused: `DUE_CONDITION` numbers the dataset `$5`.
    fn claim_sql() -> String {
        format!(
            "SELECT {CLAIM_COLUMNS}, {} AS payload, tenant, event_name, \
             last_attempt_id IS NOT NULL AS had_attempt \
             FROM events WHERE {DUE_CONDITION} AND id NOT IN (SELECT value FROM json_each($6)) \
             ORDER BY next_attempt_at_ms, id LIMIT $2",
            Self::PAYLOAD
        )
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, LeaseTable> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the delivery lock file on the first claim and keeps it while the store lives: one
    /// process delivers from a SQLite database, as its leases live in that process's memory.
    /// The OS drops the lock when the process ends, `kill -9` included.
    fn hold_delivery_lock(&self) -> Result<()> {
        let Some(path) = &self.delivery_lock_path else {
            return Ok(());
        };
        let mut held = self.delivery_lock.lock().unwrap_or_else(|p| p.into_inner());
        if held.is_some() {
            return Ok(());
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| {
                crate::StoreError::Unavailable(format!("cannot open {}: {e}", path.display()))
            })?;
        match file.try_lock() {
            Ok(()) => {
                *held = Some(file);
                Ok(())
            }
            Err(std::fs::TryLockError::WouldBlock) => Err(
                crate::StoreError::DeliveryHeldElsewhere(path.display().to_string()),
            ),
            Err(std::fs::TryLockError::Error(e)) => Err(crate::StoreError::Unavailable(format!(
                "cannot lock {}: {e}",
                path.display()
            ))),
        }
    }

    /// `Store::stop_delivering`: forgets the leases left (a release puts events back by just
    /// that) and unlocks the lock file, so another process, or this one restarted, delivers.
    fn let_go_of_delivery(&self) {
        *self.leases() = LeaseTable::default();
        let mut held = self.delivery_lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(file) = held.take() {
            let _ = file.unlock();
        }
    }

    /// `Store::claim_datasets`: a read per pick, on a reader connection, and leases in memory.
    /// Claims run one at a time, so two never read the same free events.
    async fn claim_many(
        &self,
        claims: &[crate::ClaimRequest],
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<Vec<Vec<crate::ClaimedEvent>>> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        self.hold_delivery_lock()?;
        let _one_at_a_time = self.claiming.lock().await;
        let claimed = self.read_claims(claims, now_ms, lease_until_ms).await;
        if claimed.is_err() {
            let mut leases = self.leases();
            for claim in claims {
                leases.release(&claim.owner);
            }
        }
        claimed
    }

    async fn read_claims(
        &self,
        claims: &[crate::ClaimRequest],
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<Vec<Vec<crate::ClaimedEvent>>> {
        let sql = self.sql(&Self::claim_sql()).into_owned();
        let mut all = Vec::with_capacity(claims.len());
        for claim in claims {
            // Snapshotted before the read: a resolve forgets its ids only after its commit.
            let excluded = self.leases().excluded(&claim.dataset_id, now_ms);
            let excluded = serde_json::to_string(&excluded).unwrap_or_else(|_| "[]".into());
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(now_ms)
                .bind(claim.limit)
                .bind(claim.owner.as_str())
                .bind(lease_until_ms)
                .bind(claim.dataset_id.as_str())
                .bind(excluded)
                .fetch_all(&self.pool)
                .await
                .map_err(map_err)?;
            let mut events = Vec::with_capacity(rows.len());
            let mut held = Vec::with_capacity(rows.len());
            for row in &rows {
                let mut event = crate::shared::claimed_from_row(row)?;
                // This claim's attempt, counted in the database when it is resolved.
                event.attempts += 1;
                held.push((
                    event.id,
                    HeldEvent {
                        tenant: row.try_get::<String, _>("tenant")?.into(),
                        dataset_id: event.dataset_id.as_str().into(),
                        channel: event.channel.as_str().into(),
                        event_name: row.try_get::<String, _>("event_name")?.into(),
                        accepted_at_ms: event.accepted_at_ms,
                        had_attempt: row.try_get("had_attempt")?,
                    },
                ));
                events.push(event);
            }
            let taken = self
                .leases()
                .take(&claim.owner, now_ms, lease_until_ms, held);
            // Another claim's resolve is committing these: they are not this claim's to send.
            events.retain(|e| !taken.left_out.contains(&e.id));
            if !taken.taken_over.is_empty() {
                // Their lease ran out under another claim, whose request may have gone out: that
                // attempt is counted now, as a claim in the database would have counted it.
                let mut b = QueryBuilder::<Sqlite>::new(
                    "UPDATE events SET attempts = attempts + 1 WHERE id IN (",
                );
                let mut sep = b.separated(", ");
                for id in &taken.taken_over {
                    sep.push_bind(*id);
                }
                b.push(")");
                b.build().execute(&self.writer).await.map_err(map_err)?;
                for event in events
                    .iter_mut()
                    .filter(|e| taken.taken_over.contains(&e.id))
                {
                    event.attempts += 1;
                }
            }
            all.push(events);
        }
        Ok(all)
    }

    /// `Store::due_datasets`: the database's due times of the events not held, and the lease
    /// ends of those held (a held event is due again when its lease ends, as on PostgreSQL).
    async fn due_list(
        &self,
        now_ms: i64,
        due_before_ms: i64,
        full_batch: i64,
    ) -> Result<Vec<crate::DueDataset>> {
        let (held_ids, held_due) = {
            let leases = self.leases();
            (leases.held_ids(), leases.earliest_lease_ends())
        };
        let held_ids = serde_json::to_string(&held_ids).unwrap_or_else(|_| "[]".into());
        let rows = sqlx::query(sqlx::AssertSqlSafe(
            self.sql(DUE_DATASETS_UNHELD).into_owned(),
        ))
        .bind(now_ms)
        .bind(held_ids)
        .bind((full_batch - 1).max(0))
        .bind(due_before_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        let mut due = Vec::with_capacity(rows.len());
        for row in &rows {
            let dataset_id: String = row.try_get("dataset_id")?;
            let unheld: Option<i64> = row.try_get("due_at")?;
            let held = held_due.get(dataset_id.as_str()).copied();
            let due_at = match (unheld, held) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(at) => at,
                    None => continue,
                },
            };
            let full_at: Option<i64> = row.try_get("full_at")?;
            if due_at <= due_before_ms || full_at.is_some_and(|at| at <= now_ms) {
                due.push(crate::DueDataset {
                    dataset_id,
                    due_at_ms: due_at,
                });
            }
        }
        due.sort_by_key(|d| d.due_at_ms);
        Ok(due)
    }

    /// `Store::renew_leases`: in memory.
    async fn renew_held(&self, owners: &[String], lease_until_ms: i64) -> Result<u64> {
        Ok(self.leases().renew(owners, lease_until_ms))
    }

    /// `Store::count_leased`: in memory.
    async fn count_held(&self, owner: &str, ids: &[i64]) -> Result<u64> {
        Ok(self.leases().count(owner, ids))
    }

    /// `Store::release_leases`: the events were never marked in the database, so forgetting
    /// the leases puts them back, due as they were, with no attempt counted.
    async fn release_held(&self, owner: &str, _now_ms: i64) -> Result<u64> {
        Ok(self.leases().release(owner))
    }

    /// `Store::resolve_many`: the events each send's owner still holds are marked as being
    /// resolved, written in one transaction, and forgotten once it has committed (held again if
    /// it failed).
    async fn resolve_sends(&self, sends: &[crate::ResolveRequest]) -> Result<Vec<u64>> {
        let held: Vec<Vec<(i64, HeldEvent)>> = {
            let mut leases = self.leases();
            sends
                .iter()
                .map(|s| leases.begin_resolve(&s.owner, &s.ids))
                .collect()
        };
        let result = self.write_resolutions(sends, &held).await;
        let mut leases = self.leases();
        for (send, held) in sends.iter().zip(&held) {
            let ids: Vec<i64> = held.iter().map(|(id, _)| *id).collect();
            leases.end_resolve(&send.owner, &ids, result.is_ok());
        }
        result
    }

    async fn write_resolutions(
        &self,
        sends: &[crate::ResolveRequest],
        held: &[Vec<(i64, HeldEvent)>],
    ) -> Result<Vec<u64>> {
        if held.iter().all(|h| h.is_empty()) {
            return Ok(vec![0; sends.len()]);
        }
        let mut tx = self.begin_write().await?;
        let mut counts = Vec::with_capacity(sends.len());
        let mut deltas = crate::dashboard::StatDeltas::default();
        for (send, held) in sends.iter().zip(held) {
            let (attempt, resolution) = (&send.attempt, &send.resolution);
            let Some((_, first)) = held.first() else {
                counts.push(0);
                continue;
            };
            // One attempt row for the whole request; each event names it as its latest.
            let attempt_id = sqlx::query(
                "INSERT INTO send_attempts (dataset_id, attempted_at_ms, outcome, http_status, fbtrace_id, message, latency_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .bind(&*first.dataset_id)
            .bind(attempt.attempted_at_ms)
            .bind(attempt.outcome.clone())
            .bind(attempt.http_status)
            .bind(attempt.fbtrace_id.clone())
            .bind(attempt.message.clone())
            .bind(attempt.latency_ms)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .last_insert_rowid();
            let mut updated = 0u64;
            for chunk in held.chunks(1000) {
                let ids: Vec<i64> = chunk.iter().map(|(id, _)| *id).collect();
                // The attempt an event names now moves to its history (a retry, a replay).
                let again: Vec<i64> = chunk
                    .iter()
                    .filter(|(_, e)| e.had_attempt)
                    .map(|(id, _)| *id)
                    .collect();
                if !again.is_empty() {
                    let mut b = QueryBuilder::<Sqlite>::new(
                        "INSERT INTO event_attempts (event_row_id, attempt_id) SELECT id, last_attempt_id FROM events \
                         WHERE last_attempt_id IS NOT NULL AND id IN (",
                    );
                    let mut sep = b.separated(", ");
                    for id in &again {
                        sep.push_bind(*id);
                    }
                    b.push(") ON CONFLICT DO NOTHING");
                    b.build().execute(&mut *tx).await.map_err(map_err)?;
                }
                let done = resolution_update(attempt_id, resolution, &ids)
                    .build()
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                let written: Vec<&(i64, HeldEvent)> = if done.rows_affected() == ids.len() as u64 {
                    chunk.iter().collect()
                } else {
                    // Some rows left the queue meanwhile (removed, or finished by another
                    // process): count only the events this attempt now names.
                    let mut b = QueryBuilder::<Sqlite>::new(
                        "SELECT id FROM events WHERE last_attempt_id = ",
                    );
                    b.push_bind(attempt_id).push(" AND id IN (");
                    let mut sep = b.separated(", ");
                    for id in &ids {
                        sep.push_bind(*id);
                    }
                    b.push(")");
                    let mine: std::collections::HashSet<i64> = b
                        .build_query_scalar::<i64>()
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(map_err)?
                        .into_iter()
                        .collect();
                    chunk.iter().filter(|(id, _)| mine.contains(id)).collect()
                };
                for (_, e) in written {
                    updated += 1;
                    crate::shared::count_resolution(
                        &mut deltas,
                        (&e.tenant, &e.dataset_id, &e.channel, &e.event_name),
                        e.accepted_at_ms,
                        attempt.attempted_at_ms,
                        resolution,
                    );
                }
            }
            if updated == 0 {
                // None of its events could be written: no attempt to record.
                sqlx::query("DELETE FROM send_attempts WHERE id = ?1")
                    .bind(attempt_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
            }
            counts.push(updated);
        }
        if counts.iter().all(|&n| n == 0) {
            tx.rollback().await.map_err(map_err)?;
            return Ok(counts);
        }
        Self::bump_stats(&mut tx, &deltas).await?;
        tx.commit().await.map_err(map_err)?;
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
    ///
    /// Rows an offer takes are leased in memory before the commit makes them visible, so no
    /// claim sends them too (see [`LeaseTable::take`]).
    async fn insert_new_events(
        &self,
        events: &[NewEvent],
        offers: &[HandoffOffer],
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<HandedOff> {
        // Only the process that delivers from this database may lease.
        let offers = if !offers.is_empty() && self.hold_delivery_lock().is_ok() {
            offers
        } else {
            &[]
        };
        let mut tx = self.begin_write().await?;
        let assigned = self.assign(&mut tx, events, offers, now_ms).await?;
        let mut outcomes = Vec::with_capacity(events.len());
        for chunk in events.chunks(INSERT_CHUNK) {
            sqlx::query("SAVEPOINT chunk")
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            let mut insert = QueryBuilder::<Sqlite>::new(concat!(
                "INSERT OR IGNORE INTO events (",
                event_columns!(),
                ") "
            ));
            insert.push_values(chunk, push_new_event);
            let done = insert.build().execute(&mut *tx).await.map_err(map_err)?;
            if done.rows_affected() == chunk.len() as u64 {
                sqlx::query("RELEASE chunk")
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                let first = done.last_insert_rowid() - chunk.len() as i64 + 1;
                insert_payloads(&mut tx, chunk.iter().zip(first..)).await?;
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
        let claims = handed_off_claims(events, &outcomes, &assigned, offers.len());
        let mut held: Vec<Vec<(i64, HeldEvent)>> = offers.iter().map(|_| Vec::new()).collect();
        for ((e, outcome), offer) in events.iter().zip(&outcomes).zip(&assigned) {
            if let (InsertOutcome::Inserted(id), Some(offer)) = (outcome, offer) {
                held[*offer].push((
                    *id,
                    HeldEvent {
                        tenant: e.tenant.clone(),
                        dataset_id: e.dataset_id.clone(),
                        channel: e.channel.clone(),
                        event_name: e.event_name.clone(),
                        accepted_at_ms: e.accepted_at_ms,
                        had_attempt: false,
                    },
                ));
            }
        }
        {
            let mut leases = self.leases();
            for (offer, held) in offers.iter().zip(held) {
                leases.take(&offer.owner, now_ms, lease_until_ms, held);
            }
        }
        if let Err(e) = tx.commit().await {
            let mut leases = self.leases();
            for offer in offers {
                leases.release(&offer.owner);
            }
            return Err(map_err(e));
        }
        Ok(HandedOff { outcomes, claims })
    }

    /// Which offer takes each event: checked in the insert's transaction, held events left
    /// out of the dataset's due ones.
    async fn assign(
        &self,
        tx: &mut Transaction<'_, Sqlite>,
        events: &[NewEvent],
        offers: &[HandoffOffer],
        now_ms: i64,
    ) -> Result<Vec<Option<usize>>> {
        if offers.is_empty() {
            return Ok(vec![None; events.len()]);
        }
        let refused_sql = self
            .sql(&handoff_refused_sql(
                " AND id NOT IN (SELECT value FROM json_each($3))",
            ))
            .into_owned();
        let mut taken: HashSet<&str> = HashSet::new();
        for dataset in offered_datasets(offers) {
            let excluded = self.leases().excluded(dataset, now_ms);
            let refused: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(refused_sql.clone()))
                .bind(now_ms)
                .bind(dataset)
                .bind(serde_json::to_string(&excluded).unwrap_or_else(|_| "[]".into()))
                .fetch_one(&mut **tx)
                .await
                .map_err(map_err)?;
            if !refused {
                taken.insert(dataset);
            }
        }
        let paused = sqlx::query_scalar(PAUSED_ASSETS)
            .fetch_all(&mut **tx)
            .await
            .map_err(map_err)?;
        Ok(assign_offers(
            events,
            offers,
            &taken,
            &HashSet::from_iter(paused),
        ))
    }
}

/// The update that moves resolved events on and names their attempt. A send's attempt is
/// counted here (its claim did not write); a release puts the events back uncounted. Events
/// still in the queue only: one finished meanwhile is left as it is.
fn resolution_update(
    attempt_id: i64,
    resolution: &crate::Resolution,
    ids: &[i64],
) -> QueryBuilder<Sqlite> {
    let mut b = QueryBuilder::<Sqlite>::new(
        "UPDATE events SET lease_owner = NULL, lease_until_ms = NULL, last_attempt_id = ",
    );
    b.push_bind(attempt_id).push(", ");
    match resolution {
        crate::Resolution::Delivered { delivered_at_ms } => {
            b.push("attempts = attempts + 1, state = 'delivered', delivered_at_ms = ")
                .push_bind(*delivered_at_ms);
        }
        crate::Resolution::Retry { next_attempt_at_ms } => {
            b.push("attempts = attempts + 1, state = 'retrying', next_attempt_at_ms = ")
                .push_bind(*next_attempt_at_ms);
        }
        crate::Resolution::Dead { reason, dead_at_ms } => {
            b.push("attempts = attempts + 1, state = 'dead', dead_reason = ")
                .push_bind(reason.clone())
                .push(", dead_at_ms = ")
                .push_bind(*dead_at_ms);
        }
        crate::Resolution::Release { now_ms } => {
            b.push("state = 'queued', next_attempt_at_ms = ")
                .push_bind(*now_ms);
        }
    }
    b.push(concat!(
        " WHERE ",
        crate::shared::unfinished!(),
        " AND id IN ("
    ));
    let mut sep = b.separated(", ");
    for id in ids {
        sep.push_bind(*id);
    }
    b.push(")");
    b
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
    let mut insert =
        QueryBuilder::<Sqlite>::new(concat!("INSERT INTO events (", event_columns!(), ") "));
    insert.push_values(fresh.iter().map(|&i| &chunk[i]), push_new_event);
    // No ON CONFLICT: a conflict here would mean the lookup above was wrong, and fails the
    // whole transaction rather than misreport an event.
    let done = insert.build().execute(&mut **tx).await.map_err(map_err)?;
    let first = done.last_insert_rowid() - fresh.len() as i64 + 1;
    for (offset, &i) in fresh.iter().enumerate() {
        outcomes[i] = InsertOutcome::Inserted(first + offset as i64);
    }
    insert_payloads(tx, fresh.iter().map(|&i| &chunk[i]).zip(first..)).await?;
    Ok(outcomes)
}

/// The payloads of events just inserted, each under its event's row id.
async fn insert_payloads<'e>(
    tx: &mut Transaction<'_, Sqlite>,
    rows: impl Iterator<Item = (&'e NewEvent, i64)>,
) -> Result<()> {
    let mut insert = QueryBuilder::<Sqlite>::new("INSERT INTO event_payloads (id, payload) ");
    insert.push_values(rows, |mut row, (e, id)| {
        row.push_bind(id).push_bind(e.payload.clone());
    });
    insert.build().execute(&mut **tx).await.map_err(map_err)?;
    Ok(())
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

    /// `n` events of dataset d1, ids `{tag}-{i}`, each with `payload`.
    fn queued(tag: &str, n: usize, payload: &str) -> Vec<NewEvent> {
        (0..n)
            .map(|i| NewEvent {
                tenant: "default".into(),
                dataset_id: "d1".into(),
                asset_id: "a1".into(),
                channel: "whatsapp".into(),
                event_id: format!("{tag}-{i}").into(),
                event_name: "Purchase".into(),
                event_time: 1,
                payload: payload.into(),
                test_event_code: None,
                accepted_at_ms: 1,
                conversation_id: None,
            })
            .collect()
    }

    // Leases live in the delivering process, so a second one on the same file must not claim.
    #[tokio::test]
    async fn a_second_store_on_the_file_cannot_claim_until_the_first_is_gone() {
        let (_dir, file, first) = fresh_store().await;
        first.insert_events(&queued("e", 3, "{}")).await.unwrap();
        let url = format!("sqlite://{}", file.display());
        let second = SqliteStore::connect(&url).await.unwrap();
        assert_eq!(
            first
                .claim_dataset("a", "d1", 10, 10_000, 2)
                .await
                .unwrap()
                .len(),
            2
        );
        let refused = second.claim_dataset("b", "d1", 10, 10_000, 10).await;
        assert!(
            matches!(refused, Err(crate::StoreError::DeliveryHeldElsewhere(ref f)) if f.ends_with("relay.db-delivery.lock")),
            "{refused:?}"
        );
        drop(first);
        // The first process is gone (a crash included): its leases went with it, and every
        // event is due at once, its unsent attempt not counted.
        let taken = second
            .claim_dataset("b", "d1", 10, 10_000, 10)
            .await
            .unwrap();
        assert_eq!(taken.len(), 3);
        assert!(taken.iter().all(|e| e.attempts == 1));
    }

    // A claim reads while the writer commits: an event whose resolve is being committed must
    // not be read as free, nor one just resolved.
    #[tokio::test]
    async fn claims_racing_resolves_never_take_an_event_twice() {
        let (_dir, _, store) = fresh_store().await;
        let store = std::sync::Arc::new(store);
        store
            .insert_events(&queued("e", 2_000, "{}"))
            .await
            .unwrap();
        let mut sent = Vec::new();
        let mut resolving = tokio::task::JoinSet::new();
        for round in 0.. {
            let owner = format!("o{round}");
            let events = store
                .claim_dataset(&owner, "d1", 10, 10_000, 100)
                .await
                .unwrap();
            if events.is_empty() {
                // Nothing free now: wait for a resolve in flight, or stop when none is.
                if resolving.join_next().await.is_none() {
                    break;
                }
                continue;
            }
            let ids: Vec<i64> = events.iter().map(|e| e.id).collect();
            sent.extend(ids.iter().copied());
            let store = store.clone();
            resolving.spawn(async move {
                let attempt = crate::Attempt {
                    attempted_at_ms: 20,
                    outcome: "delivered".into(),
                    http_status: Some(200),
                    fbtrace_id: None,
                    message: None,
                    latency_ms: 1,
                };
                let done = store
                    .resolve(
                        &owner,
                        &ids,
                        &attempt,
                        &crate::Resolution::Delivered {
                            delivered_at_ms: 20,
                        },
                    )
                    .await
                    .unwrap();
                assert_eq!(done, ids.len() as u64);
            });
        }
        let unique: HashSet<i64> = sent.iter().copied().collect();
        assert_eq!(unique.len(), sent.len(), "an event was claimed twice");
        assert_eq!(sent.len(), 2_000);
        assert_eq!(store.queue_stats().await.unwrap().depth, 0);
    }

    #[tokio::test]
    async fn the_background_checkpoint_copies_the_wal_into_the_database() {
        let (_dir, file, store) = fresh_store().await;
        let events = queued("e", 2_000, "{}");
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
        let payload = "x".repeat(2_000);
        let batch = |tag: &str| queued(tag, 500, &payload);
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

    // A database from before payloads had a table of their own keeps every payload, and a
    // purged event takes its payload with it.
    #[tokio::test]
    async fn payloads_move_to_their_own_table_and_leave_with_their_events() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("relay.db").display());
        let store = SqliteStore::connect(&url).await.unwrap();
        let mut before = SqliteStore::MIGRATOR;
        before.migrations = before
            .migrations
            .iter()
            .filter(|m| m.version < 20261208000001)
            .cloned()
            .collect::<Vec<_>>()
            .into();
        before.run(&store.pool).await.unwrap();
        for (event_id, state, payload) in [
            (
                "old-sent",
                "delivered",
                r#"{"event_id":"old-sent","é":"ü"}"#,
            ),
            ("old-queued", "queued", r#"{"event_id":"old-queued"}"#),
        ] {
            sqlx::query(
                "INSERT INTO events (tenant, dataset_id, asset_id, channel, event_id, event_name, \
                 event_time, payload, state, next_attempt_at_ms, accepted_at_ms) \
                 VALUES ('default', 'd1', 'a1', 'whatsapp', ?1, 'Purchase', 1, ?2, ?3, 1, 1)",
            )
            .bind(event_id)
            .bind(payload)
            .bind(state)
            .execute(&store.pool)
            .await
            .unwrap();
        }
        drop(store);

        let store = SqliteStore::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        store
            .insert_events(&queued("new", 2, r#"{"n":1}"#))
            .await
            .unwrap();
        let payload = |id: &'static str| {
            let store = &store;
            async move {
                store.find_events(id, None, None).await.unwrap()[0]
                    .payload
                    .clone()
            }
        };
        assert_eq!(
            payload("old-sent").await,
            r#"{"event_id":"old-sent","é":"ü"}"#
        );
        assert_eq!(payload("old-queued").await, r#"{"event_id":"old-queued"}"#);
        assert_eq!(payload("new-1").await, r#"{"n":1}"#);

        assert_eq!(store.purge_finished(2).await.unwrap(), 1, "old-sent only");
        let left: Vec<i64> = sqlx::query_scalar("SELECT id FROM event_payloads ORDER BY id")
            .fetch_all(&store.pool)
            .await
            .unwrap();
        let events: Vec<i64> = sqlx::query_scalar("SELECT id FROM events ORDER BY id")
            .fetch_all(&store.pool)
            .await
            .unwrap();
        assert_eq!(left, events, "one payload per event, none orphaned");
        assert_eq!(events.len(), 3);
    }
}
