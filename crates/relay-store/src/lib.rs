//! Storage for capi-relay behind one trait, [`Store`], with two backends chosen by URL scheme:
//! SQLite (`sqlite://file.db`, the embedded default) and PostgreSQL (`postgres://…`, for several
//! relay instances sharing one database).
//!
//! Both backends keep the same rows and the same lease state machine; only the claim query
//! differs (`UPDATE … RETURNING` on SQLite, `FOR UPDATE SKIP LOCKED` on PostgreSQL). Times are
//! Unix milliseconds (`i64`) in both, so nothing depends on a backend's date types. Every method
//! is one short transaction: no transaction is ever held across a network call.

pub mod capture;
pub mod crm;
pub mod dashboard;
mod leases;
pub mod pages;
mod postgres;
mod shared;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

pub use crate::{
    capture::CaptureStore, crm::CrmStore, dashboard::DashboardStore, pages::PageStore,
    postgres::PostgresStore, sqlite::SqliteStore,
};

/// Errors from the store. Pool and lock timeouts are `Unavailable` (HTTP 503 upstream).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
    #[error("not found: {0}")]
    NotFound(String),
    /// The change conflicts with what is stored (e.g. an asset owned by another tenant, or a
    /// customer id linked to another contact).
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// Another process delivers from this SQLite database (it holds the delivery lock file).
    #[error("another process delivers from this SQLite database (it holds {0})")]
    DeliveryHeldElsewhere(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Delivery state of an accepted event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventState {
    /// Waiting for its first send.
    Queued,
    /// Claimed by a worker (under lease).
    Sending,
    /// Meta acknowledged it.
    Delivered,
    /// A send failed; waiting for `next_attempt_at_ms`.
    Retrying,
    /// Given up: a dead letter with `dead_reason`.
    Dead,
}

impl EventState {
    pub fn as_str(self) -> &'static str {
        match self {
            EventState::Queued => "queued",
            EventState::Sending => "sending",
            EventState::Delivered => "delivered",
            EventState::Retrying => "retrying",
            EventState::Dead => "dead",
        }
    }

    pub fn parse(s: &str) -> Option<EventState> {
        Some(match s {
            "queued" => EventState::Queued,
            "sending" => EventState::Sending,
            "delivered" => EventState::Delivered,
            "retrying" => EventState::Retrying,
            "dead" => EventState::Dead,
            _ => return None,
        })
    }
}

/// Whether an asset's deliveries run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AssetStatus {
    Active,
    /// Meta refused the token or a permission: deliveries wait until the token is updated.
    Paused,
}

/// The tenant every relay has; events and assets from before tenancy belong to it.
pub const DEFAULT_TENANT: &str = "default";

/// A client business of the relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tenant {
    pub name: String,
    /// Sent as Meta's `test_event_code` with every event of the tenant, when set.
    pub test_event_code: Option<String>,
    pub created_at_ms: i64,
}

/// A tenant's API key as stored: its hash, never the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiKeyRecord {
    /// Public id, safe to show (`key_…`).
    pub id: String,
    pub tenant: String,
    /// Hex SHA-256 of the key.
    #[serde(skip)]
    pub key_hash: String,
    pub label: Option<String>,
    /// Assets the key may use; `None` means all of the tenant's.
    pub assets: Option<Vec<String>>,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

/// One admin action in the audit trail. Never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub at_ms: i64,
    /// Who: `cli:<user>` or `admin-api`.
    pub actor: String,
    /// What: `tenant.create`, `asset.onboard`, `key.revoke`, …
    pub action: String,
    pub tenant: Option<String>,
    /// The object acted on (an asset id, a key id, …).
    pub target: Option<String>,
    /// Non-secret details as JSON text.
    pub detail: Option<String>,
}

/// A business asset (WABA, Page or Instagram account) and where its events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asset {
    /// The tenant that owns the asset.
    pub tenant: String,
    /// `whatsapp`, `messenger` or `instagram`.
    pub channel: String,
    pub asset_id: String,
    pub dataset_id: String,
    /// The Graph API access token sealed with the relay's master key; the store never sees
    /// it in plain text. Never logged, printed or returned by the API.
    pub sealed_token: String,
    /// Sent as Meta's `test_event_code` with this asset's events, when set.
    pub test_event_code: Option<String>,
    pub status: AssetStatus,
    /// Why the asset is paused (Meta's message), if it is.
    pub status_reason: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// An accepted event to store in the outbox.
///
/// The text is `Arc<str>`: the insert binds it by reference count instead of copying it, and
/// the events of one asset share its ids.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub tenant: Arc<str>,
    pub dataset_id: Arc<str>,
    pub asset_id: Arc<str>,
    pub channel: Arc<str>,
    pub event_id: Arc<str>,
    pub event_name: Arc<str>,
    /// Unix seconds of the conversion (Meta's `event_time`).
    pub event_time: i64,
    /// The exact JSON sent to Meta for this event.
    pub payload: Arc<str>,
    pub test_event_code: Option<Arc<str>>,
    pub accepted_at_ms: i64,
    /// The captured conversation a conversion by contact was resolved to.
    pub conversation_id: Option<Arc<str>>,
}

/// What happened to one `NewEvent` at insert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOutcome {
    /// Stored; the row id.
    Inserted(i64),
    /// The same `event_id` for the same dataset is already stored (within retention).
    Duplicate,
}

/// An event claimed for delivery under a lease.
#[derive(Debug, Clone)]
pub struct ClaimedEvent {
    pub id: i64,
    pub dataset_id: String,
    pub asset_id: String,
    pub channel: String,
    pub event_id: String,
    pub event_time: i64,
    pub payload: String,
    pub test_event_code: Option<String>,
    /// Sends attempted so far, including the one this claim is for.
    pub attempts: i32,
    pub accepted_at_ms: i64,
}

/// A claim offered at insert: up to `limit` of the dataset's new events are leased to `owner`
/// in the insert's own transaction and go to Meta without being claimed from the queue. The
/// store takes an offer only while the dataset has nothing else due and is not throttled, and
/// never for the events of a paused asset; what it does not take is queued as usual.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandoffOffer {
    pub dataset_id: String,
    pub owner: String,
    pub limit: usize,
}

/// What [`Store::insert_events_handing_off`] did.
#[derive(Debug, Default)]
pub struct HandedOff {
    /// One per event, as [`Store::insert_events`] returns them.
    pub outcomes: Vec<InsertOutcome>,
    /// Per offer, in order, the events it took (possibly none).
    pub claims: Vec<Vec<ClaimedEvent>>,
}

/// A dataset with due events, for the delivery scheduler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueDataset {
    pub dataset_id: String,
    /// The earliest due time of its events.
    pub due_at_ms: i64,
}

/// One send attempt as recorded for each event it carried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attempt {
    pub attempted_at_ms: i64,
    /// Stable outcome name: `delivered`, `retryable:<kind>`, `permanent:<kind>`, `too_old`, …
    pub outcome: String,
    pub http_status: Option<i32>,
    pub fbtrace_id: Option<String>,
    /// Meta's message or the transport error; `None` on success.
    pub message: Option<String>,
    pub latency_ms: i64,
}

/// Where a claimed batch goes after its send.
#[derive(Debug, Clone)]
pub enum Resolution {
    Delivered {
        delivered_at_ms: i64,
    },
    /// Back to `retrying`, due at `next_attempt_at_ms`.
    Retry {
        next_attempt_at_ms: i64,
    },
    /// A dead letter with its reason.
    Dead {
        reason: String,
        dead_at_ms: i64,
    },
    /// Back to `queued`, due at `now_ms`, without counting the attempt (the asset was paused,
    /// or the send never started).
    Release {
        now_ms: i64,
    },
}

/// One claim of [`Store::claim_datasets`].
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    pub owner: String,
    pub dataset_id: String,
    pub limit: i64,
}

/// One send's answer for [`Store::resolve_many`].
#[derive(Debug, Clone)]
pub struct ResolveRequest {
    pub owner: String,
    pub ids: Vec<i64>,
    pub attempt: Attempt,
    pub resolution: Resolution,
}

/// An event with its history, for `GET /v1/events/{event_id}` and the dashboard.
#[derive(Debug, Clone, Serialize)]
pub struct EventRecord {
    pub id: i64,
    pub tenant: String,
    pub dataset_id: String,
    pub asset_id: String,
    pub channel: String,
    pub event_id: String,
    pub event_name: String,
    pub event_time: i64,
    pub state: EventState,
    pub attempts_count: i32,
    pub next_attempt_at_ms: i64,
    pub accepted_at_ms: i64,
    pub delivered_at_ms: Option<i64>,
    pub dead_reason: Option<String>,
    pub dead_at_ms: Option<i64>,
    pub test_event_code: Option<String>,
    pub payload: String,
    pub attempts: Vec<Attempt>,
}

/// Which dead letters to list or replay.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterFilter {
    /// Only this tenant's dead letters.
    pub tenant: Option<String>,
    /// Only these assets' dead letters (a key limited to some assets).
    pub within_assets: Option<Vec<String>>,
    pub dataset_id: Option<String>,
    pub asset_id: Option<String>,
    /// Only these event ids (any dataset unless `dataset_id` is set).
    pub event_ids: Option<Vec<String>>,
    /// Dead at or after this time.
    pub since_ms: Option<i64>,
    pub limit: Option<i64>,
}

/// Queue figures for metrics and readiness.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    /// Events in `queued`, `retrying` or `sending`.
    pub depth: i64,
    /// Accept time of the oldest such event.
    pub oldest_accepted_at_ms: Option<i64>,
    pub dead: i64,
}

/// The storage contract. Implementations must be safe to share between many tasks and, for
/// PostgreSQL, between many relay processes.
/// Capture (webhooks, contacts, touches), CRM storage and the dashboard's reads are
/// supertraits, so `dyn Store` has them too.
#[async_trait]
pub trait Store:
    CaptureStore + CrmStore + DashboardStore + PageStore + Send + Sync + 'static
{
    /// Applies this backend's migrations (idempotent).
    async fn migrate(&self) -> Result<()>;
    /// Cheap round trip for `/readyz`.
    async fn ping(&self) -> Result<()>;
    /// Write transactions worth running at once: 1 on SQLite (it has one writer), more on
    /// PostgreSQL, whose transactions commit in parallel.
    fn parallel_writers(&self) -> usize;

    /// Inserts or replaces an asset by `asset_id`. Replacing resumes a paused asset.
    /// `Conflict` if the asset belongs to another tenant, is registered on another channel, or
    /// names a dataset another tenant owns (the first tenant to register an asset on a dataset
    /// owns it). The messages never name the other tenant.
    async fn upsert_asset(&self, asset: &Asset) -> Result<()>;
    async fn get_asset(&self, asset_id: &str) -> Result<Option<Asset>>;
    async fn list_assets(&self) -> Result<Vec<Asset>>;
    /// Sets a new sealed token and resumes the asset. `NotFound` if it does not exist.
    async fn set_asset_token(&self, asset_id: &str, sealed_token: &str, now_ms: i64) -> Result<()>;
    /// Replaces sealed tokens in one transaction, each only if it still holds the old value
    /// (`(asset_id, old, new)`); `Conflict` and nothing changed if any was changed meanwhile.
    async fn reseal_tokens(&self, changes: &[(String, String, String)]) -> Result<u64>;
    /// Pauses the asset's deliveries with Meta's reason.
    async fn pause_asset(&self, asset_id: &str, reason: &str, now_ms: i64) -> Result<()>;
    /// Resumes a paused asset with the token it has (its access was fixed on Meta's side).
    /// `true` if it was paused; `NotFound` if it does not exist.
    async fn resume_asset(&self, asset_id: &str, now_ms: i64) -> Result<bool>;

    /// Inserts accepted events in one transaction, in order; a repeated `(dataset_id, event_id)`
    /// (already stored, or earlier in the same call) is `Duplicate`. Returns one outcome per event.
    async fn insert_events(&self, events: &[NewEvent]) -> Result<Vec<InsertOutcome>>;

    /// [`Store::insert_events`], and the inserted events of each dataset an offer names are
    /// leased to the offer's owner until `lease_until_ms`, in the same transaction, as a claim
    /// at `now_ms` would lease them (see [`HandoffOffer`] for when an offer is taken).
    async fn insert_events_handing_off(
        &self,
        events: &[NewEvent],
        offers: &[HandoffOffer],
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<HandedOff>;

    /// Datasets with events due at or before `due_before_ms` (now, minus the delivery linger),
    /// earliest first, with the earliest due time; skips datasets Meta is throttling at `now_ms`
    /// and datasets whose assets are all paused. Costs one index probe per dataset.
    /// A dataset with at least `full_batch` events due by `now_ms` is listed whatever
    /// `due_before_ms` says: a full claim has no reason to wait for the linger.
    async fn due_datasets(
        &self,
        now_ms: i64,
        due_before_ms: i64,
        full_batch: i64,
    ) -> Result<Vec<DueDataset>>;

    /// Claims up to `limit` of one dataset's due events (`queued`/`retrying` due by `now_ms`, or
    /// `sending` with a lease that ran out), skipping paused assets. Sets `sending`, the lease
    /// (the event is due again at `lease_until_ms`) and `attempts + 1`. Oldest due first. Safe
    /// under concurrent callers and processes: an event is claimed once per lease.
    async fn claim_dataset(
        &self,
        owner: &str,
        dataset_id: &str,
        now_ms: i64,
        lease_until_ms: i64,
        limit: i64,
    ) -> Result<Vec<ClaimedEvent>> {
        let claim = ClaimRequest {
            owner: owner.to_owned(),
            dataset_id: dataset_id.to_owned(),
            limit,
        };
        let mut claimed = self
            .claim_datasets(std::slice::from_ref(&claim), now_ms, lease_until_ms)
            .await?;
        Ok(claimed.pop().unwrap_or_default())
    }

    /// [`Store::claim_dataset`] for several claims in one transaction (one commit for many
    /// datasets). One list of events per claim, in order.
    async fn claim_datasets(
        &self,
        claims: &[ClaimRequest],
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<Vec<Vec<ClaimedEvent>>>;

    /// Extends the leases of every event held by one of `owners` to `lease_until_ms` (the
    /// heartbeat). Returns how many events.
    async fn renew_leases(&self, owners: &[String], lease_until_ms: i64) -> Result<u64>;

    /// How many of `ids` `owner` still holds under lease.
    async fn count_leased(&self, owner: &str, ids: &[i64]) -> Result<u64>;

    /// Puts every event `owner` holds back in the queue, due at `now_ms`, without counting the
    /// attempt (a worker that stops or failed before sending them).
    async fn release_leases(&self, owner: &str, now_ms: i64) -> Result<u64>;

    /// This process has stopped delivering (its claims are all resolved or released): a
    /// backend that allows one delivering process per database lets another take over now.
    async fn stop_delivering(&self) {}

    /// Records `attempt` for every event in `ids` (only those still leased by `owner`) and moves
    /// them as `resolution` says, clearing the lease. `Release` also undoes the attempt count.
    /// Returns how many events were updated.
    async fn resolve(
        &self,
        owner: &str,
        ids: &[i64],
        attempt: &Attempt,
        resolution: &Resolution,
    ) -> Result<u64> {
        let send = ResolveRequest {
            owner: owner.to_owned(),
            ids: ids.to_vec(),
            attempt: attempt.clone(),
            resolution: resolution.clone(),
        };
        let mut updated = self.resolve_many(std::slice::from_ref(&send)).await?;
        Ok(updated.pop().unwrap_or_default())
    }

    /// [`Store::resolve`] for several sends in one transaction (one commit for many requests'
    /// answers). How many events each send updated, in order.
    async fn resolve_many(&self, sends: &[ResolveRequest]) -> Result<Vec<u64>>;

    /// Holds a dataset's deliveries until `until_ms` (Meta's throttling).
    async fn pause_dataset(&self, dataset_id: &str, until_ms: i64) -> Result<()>;

    /// Events with this `event_id`, optionally in one dataset or tenant, with their attempts.
    async fn find_events(
        &self,
        event_id: &str,
        dataset_id: Option<&str>,
        tenant: Option<&str>,
    ) -> Result<Vec<EventRecord>>;
    /// Most recent events first, for the dashboard.
    async fn recent_events(&self, limit: i64) -> Result<Vec<EventRecord>>;

    async fn list_dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<EventRecord>>;
    /// Puts matching dead letters back in the queue (`queued`, due now, attempts reset).
    /// Returns how many.
    async fn replay_dead_letters(&self, filter: &DeadLetterFilter, now_ms: i64) -> Result<u64>;

    async fn queue_stats(&self) -> Result<QueueStats>;

    /// Deletes delivered and dead events (and their attempts) accepted before `before_ms`.
    /// Returns how many events were deleted.
    async fn purge_finished(&self, before_ms: i64) -> Result<u64>;

    /// Creates a tenant; `false` if the name is taken.
    async fn create_tenant(&self, tenant: &Tenant) -> Result<bool>;
    async fn get_tenant(&self, name: &str) -> Result<Option<Tenant>>;
    async fn list_tenants(&self) -> Result<Vec<Tenant>>;
    /// `NotFound` if the tenant does not exist.
    async fn set_tenant_test_event_code(&self, name: &str, code: Option<&str>) -> Result<()>;

    async fn create_api_key(&self, key: &ApiKeyRecord) -> Result<()>;
    /// The key with this hash, revoked or not.
    async fn find_api_key(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>>;
    async fn list_api_keys(&self, tenant: Option<&str>) -> Result<Vec<ApiKeyRecord>>;
    /// Revokes a key (idempotent). `NotFound` if there is no such key.
    async fn revoke_api_key(&self, id: &str, now_ms: i64) -> Result<ApiKeyRecord>;

    async fn append_audit(&self, entry: &AuditEntry) -> Result<()>;
    /// Newest first, optionally one tenant's.
    async fn list_audit(&self, tenant: Option<&str>, limit: i64) -> Result<Vec<AuditEntry>>;
}

/// Opens the store named by `url`: `sqlite://PATH` (created if missing) or `postgres://…`
/// (tests add `?options=-c%20search_path%3D<schema>` to get a schema of their own).
pub async fn connect(url: &str) -> Result<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PostgresStore::connect(url).await?))
    } else {
        Err(StoreError::UnsupportedUrl(redact_url(url)))
    }
}

/// Query parameter names (and libpq `key=value` words) whose values are secrets.
const SECRET_PARAMS: [&str; 14] = [
    "password",
    "passwd",
    "pass",
    "pwd",
    "sslpassword",
    "secret",
    "client_secret",
    "token",
    "access_token",
    "appsecret_proof",
    "api_key",
    "apikey",
    "key",
    "sig",
];

/// What replaces a secret.
const REDACTED: &str = "***";

/// A URL (or connection string) safe to print: the password of `scheme://user:password@host`
/// and the values of secret query parameters (`?password=`, `access_token=`, … and libpq's
/// `password=…` words) are replaced by `***`. The one place the relay redacts URLs: every
/// message, banner and error that shows a database, Graph or forward URL goes through it.
pub fn redact_url(url: &str) -> String {
    let is_secret = |name: &str| {
        let name = name.trim().to_ascii_lowercase();
        SECRET_PARAMS.contains(&name.as_str())
            || name.ends_with("password")
            || name.ends_with("secret")
    };
    let redact_pairs = |text: &str, separator: char| {
        text.split(separator)
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if is_secret(name) => format!("{name}={REDACTED}"),
                _ => pair.to_owned(),
            })
            .collect::<Vec<_>>()
            .join(&separator.to_string())
    };
    let Some(scheme_end) = url.find("://") else {
        // Not a URL: perhaps a libpq string (`host=db password=…`).
        return redact_pairs(url, ' ');
    };
    let (before_fragment, fragment) = match url.find('#') {
        Some(i) => url.split_at(i),
        None => (url, ""),
    };
    let (before_query, query) = match before_fragment.find('?') {
        Some(i) => (&before_fragment[..i], Some(&before_fragment[i + 1..])),
        None => (before_fragment, None),
    };
    let (scheme, rest) = before_query.split_at(scheme_end + 3);
    // The last `@` before the query ends the user info: a raw `@` in a password stays hidden.
    let mut out = match rest.rfind('@') {
        Some(at) => match rest[..at].split_once(':') {
            Some((user, _)) => format!("{scheme}{user}:{REDACTED}{}", &rest[at..]),
            None => before_query.to_owned(),
        },
        None => before_query.to_owned(),
    };
    if let Some(query) = query {
        out.push('?');
        out.push_str(&redact_pairs(query, '&'));
    }
    out.push_str(fragment);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_secret_parameters_are_redacted_and_nothing_else() {
        for (url, shown) in [
            (
                "postgres://relay:s3cret@db:5432/relay",
                "postgres://relay:***@db:5432/relay",
            ),
            (
                "postgresql://relay:p@ss:w0rd@db/relay?sslmode=require",
                "postgresql://relay:***@db/relay?sslmode=require",
            ),
            (
                "postgres://relay@db/relay?password=s3cret&application_name=x",
                "postgres://relay@db/relay?password=***&application_name=x",
            ),
            (
                "postgres://db/relay?user=relay&PASSWORD=s3cret&sslpassword=k3y",
                "postgres://db/relay?user=relay&PASSWORD=***&sslpassword=***",
            ),
            (
                "https://graph.example/v26.0/1/events?access_token=EAAB&appsecret_proof=abc#x",
                "https://graph.example/v26.0/1/events?access_token=***&appsecret_proof=***#x",
            ),
            (
                "host=db user=relay password=s3cret dbname=relay",
                "host=db user=relay password=*** dbname=relay",
            ),
            ("sqlite://capi-relay.db", "sqlite://capi-relay.db"),
            ("sqlite:///tmp/a@b.db", "sqlite:///tmp/a@b.db"),
            ("postgres://relay@db/relay", "postgres://relay@db/relay"),
            ("mysql://root:hunter2@db/x", "mysql://root:***@db/x"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[tokio::test]
    async fn an_unsupported_url_is_named_without_its_password() {
        let Err(e) = connect("mysql://root:hunter2@db/x?password=hunter3").await else {
            panic!("mysql is not supported");
        };
        let message = e.to_string();
        assert!(message.contains("mysql://root:***@db/x"), "{message}");
        assert!(!message.contains("hunter"), "{message}");
    }
}
