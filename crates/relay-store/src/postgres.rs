//! PostgreSQL backend: several relay processes share one database and split the work.

use std::{borrow::Cow, str::FromStr, time::Duration};

use sqlx::{
    PgPool, Postgres, Transaction,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::{
    Result,
    capture::impl_capture_store,
    shared::{CLAIM_COLUMNS, DUE_CONDITION, impl_store, map_err},
};

pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
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

    async fn begin_write(&self) -> Result<Transaction<'_, Postgres>> {
        self.pool.begin().await.map_err(map_err)
    }

    /// `SKIP LOCKED`: concurrent claimers, in this process or another, never wait on or take
    /// each other's rows.
    fn claim_sql() -> String {
        format!(
            "WITH due AS (SELECT id FROM events WHERE {DUE_CONDITION} ORDER BY next_attempt_at_ms, id LIMIT $2 \
             FOR UPDATE SKIP LOCKED) \
             UPDATE events SET state = 'sending', lease_owner = $3, lease_until_ms = $4, attempts = events.attempts + 1 \
             FROM due WHERE events.id = due.id RETURNING {}",
            CLAIM_COLUMNS
                .split(", ")
                .map(|c| format!("events.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

impl_store!(PostgresStore, Postgres);
impl_capture_store!(PostgresStore, Postgres);
