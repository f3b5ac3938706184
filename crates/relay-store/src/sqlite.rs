//! SQLite backend: one file, WAL, the embedded default.

use std::{borrow::Cow, str::FromStr, time::Duration};

use sqlx::{
    Sqlite, SqlitePool, Transaction,
    migrate::Migrator,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

use crate::{
    Result,
    capture::impl_capture_store,
    shared::{CLAIM_COLUMNS, DUE_CONDITION, impl_store, map_err},
};

pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    const MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

    /// Opens (and creates) the database file named by a `sqlite://` URL.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // In WAL mode NORMAL is durable against process crashes; only an OS crash can lose
            // the last commits.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            // 16 MiB of page cache per connection instead of SQLite's 2 MiB: the outbox's
            // indexes outgrow 2 MiB within minutes, and every miss is a pread and a copy.
            .pragma("cache_size", "-16384")
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(map_err)?;
        Ok(SqliteStore { pool })
    }

    /// SQLite takes `?N` where PostgreSQL takes `$N`.
    fn sql<'a>(&self, sql: &'a str) -> Cow<'a, str> {
        Cow::Owned(sql.replace('$', "?"))
    }

    /// `BEGIN IMMEDIATE` takes the write lock up front, so concurrent writers wait on the busy
    /// timeout instead of failing when a read transaction tries to upgrade.
    async fn begin_write(&self) -> Result<Transaction<'_, Sqlite>> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(map_err)
    }

    fn claim_sql() -> String {
        format!(
            "UPDATE events SET state = 'sending', lease_owner = $3, lease_until_ms = $4, attempts = attempts + 1 \
             WHERE id IN (SELECT id FROM events WHERE {DUE_CONDITION} ORDER BY next_attempt_at_ms, id LIMIT $2) \
             RETURNING {CLAIM_COLUMNS}"
        )
    }
}

impl_store!(SqliteStore, Sqlite);
impl_capture_store!(SqliteStore, Sqlite);
