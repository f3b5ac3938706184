//! PostgreSQL backend: several relay processes share one database and split the work.

use std::{borrow::Cow, collections::HashMap, str::FromStr, time::Duration};

use sqlx::{
    PgPool, Postgres, QueryBuilder, Row, Transaction,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
};

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

pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Transactions that touch different rows commit in parallel.
    const PARALLEL_WRITERS: usize = 4;

    const MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

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

    /// `SKIP LOCKED`: concurrent claimers, in this process or another, never wait on or take
    /// each other's rows.
    fn claim_sql() -> String {
        format!(
            "WITH due AS (SELECT id FROM events WHERE {DUE_CONDITION} ORDER BY next_attempt_at_ms, id LIMIT $2 \
             FOR UPDATE SKIP LOCKED) \
             UPDATE events SET state = 'sending', lease_owner = $3, lease_until_ms = $4, next_attempt_at_ms = $4, attempts = events.attempts + 1 \
             FROM due WHERE events.id = due.id RETURNING {}",
            CLAIM_COLUMNS
                .split(", ")
                .map(|c| format!("events.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    /// `ON CONFLICT DO NOTHING RETURNING` says which rows were taken, even when another
    /// relay instance inserts the same event at the same moment.
    async fn insert_new_events(&self, events: &[NewEvent]) -> Result<Vec<InsertOutcome>> {
        let mut inserted: HashMap<(String, String), i64> = HashMap::with_capacity(events.len());
        let mut tx = self.begin_write().await?;
        for chunk in events.chunks(INSERT_CHUNK) {
            let mut builder = QueryBuilder::<Postgres>::new(INSERT_EVENT_COLUMNS);
            builder.push_values(chunk, push_new_event);
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
        Ok(outcomes)
    }
}

impl_store!(PostgresStore, Postgres);
impl_capture_store!(PostgresStore, Postgres);
impl_crm_store!(PostgresStore, Postgres);
impl_dashboard_store!(PostgresStore, Postgres);
crate::pages::impl_page_store!(PostgresStore, Postgres);
