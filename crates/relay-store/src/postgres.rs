//! PostgreSQL backend: several relay processes share one database and split the work.

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
    str::FromStr,
    time::Duration,
};

use sqlx::{
    PgPool, Postgres, QueryBuilder, Row, Transaction,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::{
    ClaimRequest, ClaimedEvent, HandedOff, HandoffOffer, InsertOutcome, NewEvent, Resolution,
    ResolveRequest, Result,
    capture::impl_capture_store,
    crm::impl_crm_store,
    dashboard::{impl_dashboard_store, insert_deltas},
    shared::{
        CLAIM_COLUMNS, DUE_CONDITION, DUE_DATASETS, INSERT_CHUNK, PAUSED_ASSETS, assign_offers,
        claimed_from_row, event_columns, handed_off_claims, handoff_refused_sql, impl_store,
        map_err, offered_datasets, push_new_event_due, record_columns,
    },
};

pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Transactions that touch different rows commit in parallel.
    const PARALLEL_WRITERS: usize = 4;

    /// Statements that update the rows of many claims lock them in one order (by id), so a
    /// lease renewal and a resolve running side by side cannot deadlock.
    const LOCK_IN_ID_ORDER: &str = " ORDER BY id FOR UPDATE";

    const MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

    /// The payload stays in the row here: a PostgreSQL update writes a new row version and
    /// its index entries whatever its width (a 1-byte payload saved at most 15% of a resolve),
    /// and a second table would cost every insert a heap row and an index entry more.
    const PAYLOAD: &str = "payload";
    const RECORD_COLUMNS: &str = concat!(record_columns!(), ", payload");

    pub async fn connect(url: &str) -> Result<Self> {
        let options = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(map_err)?;
        Ok(PostgresStore { pool })
    }

    fn sql<'a>(&self, sql: &'a str) -> Cow<'a, str> {
        Cow::Borrowed(sql)
    }

    /// Where single-statement writes go: PostgreSQL takes concurrent writers as they come.
    fn writer(&self) -> &PgPool {
        &self.pool
    }

    async fn begin_write(&self) -> Result<Transaction<'_, Postgres>> {
        self.pool.begin().await.map_err(map_err)
    }

    /// `Store::claim_datasets` in one statement: each pick's events are found through the
    /// `events_due` index by a lateral subquery of its own, with its own limit. `SKIP LOCKED`:
    /// concurrent claimers, in this process or another, never wait on or take each other's rows.
    async fn claim_many(
        &self,
        claims: &[ClaimRequest],
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<Vec<Vec<ClaimedEvent>>> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "WITH p AS (SELECT * FROM UNNEST($3::int[], $4::text[], $5::bigint[], $6::text[]) AS p(claim_no, dataset_id, lim, owner)), \
             due AS (SELECT d.id, p.claim_no, p.owner FROM p CROSS JOIN LATERAL \
               (SELECT id FROM events WHERE {} ORDER BY next_attempt_at_ms, id LIMIT p.lim FOR UPDATE SKIP LOCKED) d) \
             UPDATE events SET state = 'sending', lease_owner = due.owner, lease_until_ms = $2, next_attempt_at_ms = $2, \
               attempts = events.attempts + 1 \
             FROM due WHERE events.id = due.id RETURNING due.claim_no, {}",
            // The condition's one dataset parameter becomes each pick's own.
            DUE_CONDITION.replace("$5", "p.dataset_id"),
            CLAIM_COLUMNS
                .split(", ")
                .chain([Self::PAYLOAD])
                .map(|c| format!("events.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now_ms)
            .bind(lease_until_ms)
            .bind((0..claims.len() as i32).collect::<Vec<_>>())
            .bind(
                claims
                    .iter()
                    .map(|c| c.dataset_id.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(claims.iter().map(|c| c.limit).collect::<Vec<_>>())
            .bind(claims.iter().map(|c| c.owner.as_str()).collect::<Vec<_>>())
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        let mut all: Vec<Vec<ClaimedEvent>> = claims.iter().map(|_| Vec::new()).collect();
        for row in &rows {
            let claim_no = row.try_get::<i32, _>("claim_no")? as usize;
            all[claim_no].push(claimed_from_row(row)?);
        }
        for claimed in &mut all {
            claimed.sort_by_key(|e| e.id);
        }
        Ok(all)
    }

    /// `Store::resolve_many` in a fixed number of statements, whatever the number of sends:
    /// every round trip is paid while the transaction holds its row locks, so one statement
    /// per send made the group commit the bottleneck of a busy relay.
    async fn resolve_sends(&self, sends: &[ResolveRequest]) -> Result<Vec<u64>> {
        let mut counts = vec![0u64; sends.len()];
        let live: Vec<usize> = (0..sends.len())
            .filter(|&i| !sends[i].ids.is_empty())
            .collect();
        if live.is_empty() {
            return Ok(counts);
        }
        let mut tx = self.begin_write().await?;
        // One attempt row per send whose events still exist (not purged), dated by its first.
        let rows = sqlx::query(
            "WITH a AS MATERIALIZED (\
               SELECT nextval(pg_get_serial_sequence('send_attempts', 'id')) AS id, x.* \
               FROM UNNEST($1::int[], $2::bigint[], $3::bigint[], $4::text[], $5::int[], $6::text[], $7::text[], $8::bigint[]) \
                 AS x(send_no, first_id, attempted_at_ms, outcome, http_status, fbtrace_id, message, latency_ms)), \
             ins AS (\
               INSERT INTO send_attempts (id, dataset_id, attempted_at_ms, outcome, http_status, fbtrace_id, message, latency_ms) \
               SELECT a.id, e.dataset_id, a.attempted_at_ms, a.outcome, a.http_status, a.fbtrace_id, a.message, a.latency_ms \
               FROM a JOIN events e ON e.id = a.first_id RETURNING id) \
             SELECT a.send_no, a.id FROM a JOIN ins USING (id)",
        )
        .bind(live.iter().map(|&i| i as i32).collect::<Vec<_>>())
        .bind(per_send(sends, &live, |s| s.ids[0]))
        .bind(per_send(sends, &live, |s| s.attempt.attempted_at_ms))
        .bind(per_send(sends, &live, |s| s.attempt.outcome.clone()))
        .bind(per_send(sends, &live, |s| s.attempt.http_status))
        .bind(per_send(sends, &live, |s| s.attempt.fbtrace_id.clone()))
        .bind(per_send(sends, &live, |s| s.attempt.message.clone()))
        .bind(per_send(sends, &live, |s| s.attempt.latency_ms))
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        let mut attempt_of: HashMap<usize, i64> = HashMap::with_capacity(rows.len());
        for row in &rows {
            attempt_of.insert(
                row.try_get::<i32, _>("send_no")? as usize,
                row.try_get("id")?,
            );
        }
        let recorded: Vec<usize> = live
            .into_iter()
            .filter(|i| attempt_of.contains_key(i))
            .collect();
        if recorded.is_empty() {
            tx.rollback().await.map_err(map_err)?;
            return Ok(counts);
        }
        // Per send: its owner, attempt and resolution; per event: its send.
        let mut set = ResolutionColumns::default();
        for &i in &recorded {
            set.push(i, &sends[i], attempt_of[&i]);
        }
        let (event_ids, event_sends): (Vec<i64>, Vec<i32>) = recorded
            .iter()
            .flat_map(|&i| sends[i].ids.iter().map(move |id| (*id, i as i32)))
            .unzip();
        // Every row is found by primary key (`id = ANY($10)`) and locked in id order before it
        // is checked against its send's owner: joined on the owner, the planner (which cannot
        // count the rows of an UNNEST) took the lease-owner index and scanned a claim's every
        // row for each of its events (a 1,000-event answer took 1.2 s). The rows are then held
        // by this transaction, so the update needs no second check. `history` moves the attempt
        // an event named until now to its history.
        let rows = sqlx::query(
            "WITH s AS (SELECT * FROM UNNEST($1::int[], $2::text[], $3::bigint[], $4::text[], $5::bigint[], $6::bigint[], $7::text[], $8::bigint[], $9::int[]) \
               AS s(send_no, owner, attempt_id, state, delivered_at_ms, next_attempt_at_ms, dead_reason, dead_at_ms, released)), \
             t AS MATERIALIZED (SELECT ev.id, s.* FROM UNNEST($10::bigint[], $11::int[]) AS ev(id, send_no) JOIN s USING (send_no)), \
             locked AS MATERIALIZED (SELECT id, lease_owner, last_attempt_id FROM events \
               WHERE id = ANY($10) AND state = 'sending' ORDER BY id FOR UPDATE), \
             mine AS MATERIALIZED (SELECT t.*, locked.last_attempt_id AS previous_attempt_id \
               FROM t JOIN locked ON locked.id = t.id AND locked.lease_owner = t.owner), \
             history AS (\
               INSERT INTO event_attempts (event_row_id, attempt_id) \
               SELECT id, previous_attempt_id FROM mine WHERE previous_attempt_id IS NOT NULL \
               ON CONFLICT DO NOTHING) \
             UPDATE events SET lease_owner = NULL, lease_until_ms = NULL, last_attempt_id = mine.attempt_id, state = mine.state, \
               delivered_at_ms = COALESCE(mine.delivered_at_ms, events.delivered_at_ms), \
               next_attempt_at_ms = COALESCE(mine.next_attempt_at_ms, events.next_attempt_at_ms), \
               dead_reason = COALESCE(mine.dead_reason, events.dead_reason), \
               dead_at_ms = COALESCE(mine.dead_at_ms, events.dead_at_ms), \
               attempts = events.attempts - mine.released \
             FROM mine WHERE events.id = mine.id \
             RETURNING mine.send_no, events.tenant, events.dataset_id, events.channel, events.event_name, events.accepted_at_ms",
        )
        .bind(set.send_no)
        .bind(set.owner)
        .bind(set.attempt_id)
        .bind(set.state)
        .bind(set.delivered_at_ms)
        .bind(set.next_attempt_at_ms)
        .bind(set.dead_reason)
        .bind(set.dead_at_ms)
        .bind(set.released)
        .bind(event_ids)
        .bind(event_sends)
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        let mut deltas = crate::dashboard::StatDeltas::default();
        for row in &rows {
            let i = row.try_get::<i32, _>("send_no")? as usize;
            counts[i] += 1;
            let (tenant, dataset, channel, name): (String, String, String, String) = (
                row.try_get("tenant")?,
                row.try_get("dataset_id")?,
                row.try_get("channel")?,
                row.try_get("event_name")?,
            );
            crate::shared::count_resolution(
                &mut deltas,
                (&tenant, &dataset, &channel, &name),
                row.try_get("accepted_at_ms")?,
                sends[i].attempt.attempted_at_ms,
                &sends[i].resolution,
            );
        }
        if counts.iter().all(|&n| n == 0) {
            tx.rollback().await.map_err(map_err)?;
            return Ok(counts);
        }
        // A send whose every lease was lost records no attempt.
        let unused: Vec<i64> = recorded
            .iter()
            .filter(|&&i| counts[i] == 0)
            .map(|i| attempt_of[i])
            .collect();
        if !unused.is_empty() {
            sqlx::query("DELETE FROM send_attempts WHERE id = ANY($1)")
                .bind(unused)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        Self::bump_stats(&mut tx, &deltas).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(counts)
    }

    /// `Store::due_datasets`: a loose index scan of `events_due` ([`DUE_DATASETS`]).
    async fn due_list(
        &self,
        now_ms: i64,
        due_before_ms: i64,
        full_batch: i64,
    ) -> Result<Vec<crate::DueDataset>> {
        let rows = sqlx::query(DUE_DATASETS)
            .bind(now_ms)
            .bind(due_before_ms)
            .bind((full_batch - 1).max(0))
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        rows.iter()
            .map(|row| {
                Ok(crate::DueDataset {
                    dataset_id: row.try_get("dataset_id")?,
                    due_at_ms: row.try_get("due_at")?,
                })
            })
            .collect()
    }

    /// `Store::stop_delivering`: leases are rows, shared by every process; nothing to hand over.
    fn let_go_of_delivery(&self) {}

    /// `Store::renew_leases`: the rows of all the owners' claims, locked in id order.
    async fn renew_held(&self, owners: &[String], lease_until_ms: i64) -> Result<u64> {
        let mut renewed = 0;
        for chunk in owners.chunks(500) {
            let mut b = QueryBuilder::<Postgres>::new("UPDATE events SET lease_until_ms = ");
            b.push_bind(lease_until_ms)
                .push(", next_attempt_at_ms = ")
                .push_bind(lease_until_ms)
                .push(" WHERE id IN (SELECT id FROM events WHERE state = 'sending' AND lease_owner IN (");
            let mut sep = b.separated(", ");
            for owner in chunk {
                sep.push_bind(owner.clone());
            }
            b.push(")").push(Self::LOCK_IN_ID_ORDER).push(")");
            let done = b.build().execute(&self.pool).await.map_err(map_err)?;
            renewed += done.rows_affected();
        }
        Ok(renewed)
    }

    /// `Store::count_leased`.
    async fn count_held(&self, owner: &str, ids: &[i64]) -> Result<u64> {
        let held: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM events WHERE state = 'sending' AND lease_owner = $1 AND id = ANY($2)",
        )
        .bind(owner)
        .bind(ids)
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(held as u64)
    }

    /// `Store::release_leases`: back in the queue, due at `now_ms`, the attempt not counted.
    async fn release_held(&self, owner: &str, now_ms: i64) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE events SET state = 'queued', attempts = attempts - 1, next_attempt_at_ms = $2, \
             lease_owner = NULL, lease_until_ms = NULL \
             WHERE state = 'sending' AND lease_owner = $1",
        )
        .bind(owner)
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(done.rows_affected())
    }

    /// `ON CONFLICT DO NOTHING RETURNING` says which rows were taken, even when another
    /// relay instance inserts the same event at the same moment. Rows an offer takes are
    /// inserted already leased, as a claim would leave them: no second write of the row.
    async fn insert_new_events(
        &self,
        events: &[NewEvent],
        offers: &[HandoffOffer],
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<HandedOff> {
        let mut inserted: HashMap<(String, String), i64> = HashMap::with_capacity(events.len());
        let mut tx = self.begin_write().await?;
        let assigned = Self::assign(&mut tx, events, offers, now_ms).await?;
        let leased = |i: usize| assigned[i].map(|o| offers[o].owner.as_str());
        let any_leased = assigned.iter().any(Option::is_some);
        let mut at = 0;
        for chunk in events.chunks(INSERT_CHUNK) {
            let mut builder = QueryBuilder::<Postgres>::new(if any_leased {
                INSERT_LEASED_EVENT_COLUMNS
            } else {
                INSERT_EVENT_COLUMNS
            });
            let first = at;
            let mut k = 0;
            builder.push_values(chunk, |mut row, e| {
                if !any_leased {
                    push_new_event_due(&mut row, e, e.accepted_at_ms);
                    row.push_bind(e.payload.clone());
                    return;
                }
                match leased(first + k) {
                    Some(owner) => {
                        push_new_event_due(&mut row, e, lease_until_ms);
                        row.push_bind(e.payload.clone())
                            .push_bind("sending")
                            .push_bind(owner.to_owned())
                            .push_bind(Some(lease_until_ms))
                            .push_bind(1i32);
                    }
                    None => {
                        push_new_event_due(&mut row, e, e.accepted_at_ms);
                        row.push_bind(e.payload.clone())
                            .push_bind("queued")
                            .push_bind(None::<String>)
                            .push_bind(None::<i64>)
                            .push_bind(0i32);
                    }
                }
                k += 1;
            });
            at += chunk.len();
            builder.push(
                " ON CONFLICT (dataset_id, event_id) DO NOTHING RETURNING id, dataset_id, event_id",
            );
            let rows = builder.build().fetch_all(&mut *tx).await.map_err(map_err)?;
            for row in rows {
                inserted.insert(
                    (row.try_get("dataset_id")?, row.try_get("event_id")?),
                    row.try_get("id")?,
                );
            }
        }
        // The first occurrence of a key took the row; any later one is a duplicate.
        let outcomes: Vec<InsertOutcome> = events
            .iter()
            .map(
                |e| match inserted.remove(&(e.dataset_id.to_string(), e.event_id.to_string())) {
                    Some(id) => InsertOutcome::Inserted(id),
                    None => InsertOutcome::Duplicate,
                },
            )
            .collect();
        Self::bump_stats(&mut tx, &insert_deltas(events, &outcomes)).await?;
        tx.commit().await.map_err(map_err)?;
        let claims = handed_off_claims(events, &outcomes, &assigned, offers.len());
        Ok(HandedOff { outcomes, claims })
    }

    /// Which offer takes each event: checked in the insert's transaction.
    async fn assign(
        tx: &mut Transaction<'_, Postgres>,
        events: &[NewEvent],
        offers: &[HandoffOffer],
        now_ms: i64,
    ) -> Result<Vec<Option<usize>>> {
        if offers.is_empty() {
            return Ok(vec![None; events.len()]);
        }
        let refused_sql = handoff_refused_sql("");
        let mut taken: HashSet<&str> = HashSet::new();
        for dataset in offered_datasets(offers) {
            let refused: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(refused_sql.clone()))
                .bind(now_ms)
                .bind(dataset)
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

/// The columns of an inserted event, bound by `push_new_event_due` and then its payload.
const INSERT_EVENT_COLUMNS: &str = concat!("INSERT INTO events (", event_columns!(), ", payload) ");

/// [`INSERT_EVENT_COLUMNS`] with the lease columns, for rows an offer may take.
const INSERT_LEASED_EVENT_COLUMNS: &str = concat!(
    "INSERT INTO events (",
    event_columns!(),
    ", payload, state, lease_owner, lease_until_ms, attempts) "
);

/// One array parameter of a statement over many sends: `f` of each send `live` names (every
/// one of them has events).
fn per_send<T>(
    sends: &[ResolveRequest],
    live: &[usize],
    f: impl Fn(&ResolveRequest) -> T,
) -> Vec<T> {
    live.iter().map(|&i| f(&sends[i])).collect()
}

/// The columns of [`PostgresStore::resolve_sends`]' per-send array parameters: a value of
/// `None` leaves that column of the event as it is.
#[derive(Default)]
struct ResolutionColumns {
    send_no: Vec<i32>,
    owner: Vec<String>,
    attempt_id: Vec<i64>,
    state: Vec<&'static str>,
    delivered_at_ms: Vec<Option<i64>>,
    next_attempt_at_ms: Vec<Option<i64>>,
    dead_reason: Vec<Option<String>>,
    dead_at_ms: Vec<Option<i64>>,
    /// 1 when the attempt is not counted (a release).
    released: Vec<i32>,
}

impl ResolutionColumns {
    fn push(&mut self, send_no: usize, send: &ResolveRequest, attempt_id: i64) {
        self.send_no.push(send_no as i32);
        self.owner.push(send.owner.clone());
        self.attempt_id.push(attempt_id);
        let (state, delivered, next, dead, released) = match &send.resolution {
            Resolution::Delivered { delivered_at_ms } => {
                ("delivered", Some(*delivered_at_ms), None, None, 0)
            }
            Resolution::Retry { next_attempt_at_ms } => {
                ("retrying", None, Some(*next_attempt_at_ms), None, 0)
            }
            Resolution::Dead { reason, dead_at_ms } => {
                ("dead", None, None, Some((reason.clone(), *dead_at_ms)), 0)
            }
            Resolution::Release { now_ms } => ("queued", None, Some(*now_ms), None, 1),
        };
        self.state.push(state);
        self.delivered_at_ms.push(delivered);
        self.next_attempt_at_ms.push(next);
        let (reason, dead_at) = dead.unzip();
        self.dead_reason.push(reason);
        self.dead_at_ms.push(dead_at);
        self.released.push(released);
    }
}

impl_store!(PostgresStore, Postgres);
impl_capture_store!(PostgresStore, Postgres);
impl_crm_store!(PostgresStore, Postgres);
impl_dashboard_store!(PostgresStore, Postgres);
crate::pages::impl_page_store!(PostgresStore, Postgres);
