//! API keys: made here, shown once, stored as a SHA-256 hash, and turned back into the caller's
//! scope (tenant and allowed assets) on every request.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::RngCore;
use relay_store::{ApiKeyRecord, Asset, DEFAULT_TENANT, Store, StoreError};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Every key starts with this, so leaked keys are easy to find with secret scanners.
pub const KEY_PREFIX: &str = "crk_";
/// How long a looked-up key is trusted before the database is asked again; a key revoked from
/// another process stops working within this time (at once when revoked through this process).
const KEY_CACHE_TTL: Duration = Duration::from_secs(1);
/// Valid keys cached at most (the cache is cleared when full; only valid keys enter it).
const KEY_CACHE_MAX: usize = 10_000;
/// Unknown keys remembered at most, in a cache of their own, so that a flood of made-up keys
/// can neither evict valid ones nor make a query each when repeated. When full, the oldest
/// half is dropped. Entries live `KEY_CACHE_TTL`, so a key created by another process works
/// within that time.
const UNKNOWN_KEY_CACHE_MAX: usize = 4_096;
/// The length of every key `generate` makes: the prefix and 32 bytes in unpadded base64url.
const KEY_LEN: usize = KEY_PREFIX.len() + 43;

/// What a request may touch: one tenant, optionally only some of its assets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub tenant: String,
    /// `None` means every asset of the tenant.
    pub assets: Option<Arc<[String]>>,
    /// The key's public id, for logs.
    pub key_id: String,
}

impl Scope {
    /// The scope of the single configured key (`CAPI_RELAY_API_KEY`): the default tenant.
    pub fn default_tenant() -> Scope {
        Scope {
            tenant: DEFAULT_TENANT.into(),
            assets: None,
            key_id: "config".into(),
        }
    }

    pub fn allows_asset_id(&self, tenant: &str, asset_id: &str) -> bool {
        tenant == self.tenant
            && self
                .assets
                .as_ref()
                .is_none_or(|a| a.iter().any(|x| x == asset_id))
    }

    pub fn allows(&self, asset: &Asset) -> bool {
        self.allows_asset_id(&asset.tenant, &asset.asset_id)
    }
}

/// A new key: the record to store and the key to show once.
pub struct NewKey {
    pub record: ApiKeyRecord,
    pub key: SecretString,
}

/// Makes a key for `tenant`, optionally limited to `assets`.
pub fn generate(
    tenant: &str,
    label: Option<String>,
    assets: Option<Vec<String>>,
    now_ms: i64,
) -> NewKey {
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let mut id = [0u8; 6];
    rand::rng().fill_bytes(&mut id);
    let key = SecretString::from(format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(secret)));
    NewKey {
        record: ApiKeyRecord {
            id: format!("key_{}", hex::encode(id)),
            tenant: tenant.into(),
            key_hash: hash(key.expose_secret()),
            label,
            assets,
            created_at_ms: now_ms,
            revoked_at_ms: None,
        },
        key,
    }
}

/// Hex SHA-256 of a key. Keys are 256 random bits, so a fast hash is enough: there is nothing
/// to brute-force.
pub fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Turns a presented bearer key into a scope: the configured default-tenant key, the admin key,
/// or a stored tenant key (cached briefly).
pub struct Authenticator {
    store: Arc<dyn Store>,
    default_key: Option<SecretString>,
    admin_key: Option<SecretString>,
    cache: Mutex<HashMap<String, (Instant, Scope)>>,
    /// Hashes of keys the store did not know (or knew revoked), with when it was asked.
    unknown: Mutex<HashMap<String, Instant>>,
    /// Key lookups that reached the store (for tests and metrics).
    store_lookups: std::sync::atomic::AtomicU64,
    ttl: Duration,
}

impl Authenticator {
    pub fn new(
        store: Arc<dyn Store>,
        default_key: Option<SecretString>,
        admin_key: Option<SecretString>,
    ) -> Self {
        Authenticator {
            store,
            default_key,
            admin_key,
            cache: Mutex::default(),
            unknown: Mutex::default(),
            store_lookups: Default::default(),
            ttl: KEY_CACHE_TTL,
        }
    }

    /// The same with cached lookups trusted for `ttl` (tests).
    pub fn with_cache_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How many key lookups have reached the store so far.
    pub fn store_lookups(&self) -> u64 {
        self.store_lookups
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn is_admin(&self, presented: &str) -> bool {
        self.admin_key.as_ref().is_some_and(|k| equal(presented, k))
    }

    /// The tenant scope of `presented`, or `None` if it is not a valid, unrevoked tenant key.
    pub async fn tenant_scope(&self, presented: &str) -> Result<Option<Scope>, StoreError> {
        if self
            .default_key
            .as_ref()
            .is_some_and(|k| equal(presented, k))
        {
            return Ok(Some(Scope::default_tenant()));
        }
        // Not a key this relay could have made: no need to ask the store.
        if !presented.starts_with(KEY_PREFIX)
            || presented.len() != KEY_LEN
            || !presented[KEY_PREFIX.len()..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Ok(None);
        }
        let hashed = hash(presented);
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, scope)) = cache.get(&hashed)
                && at.elapsed() < self.ttl
            {
                return Ok(Some(scope.clone()));
            }
        }
        {
            let unknown = self.unknown.lock().unwrap_or_else(|p| p.into_inner());
            if unknown
                .get(&hashed)
                .is_some_and(|at| at.elapsed() < self.ttl)
            {
                return Ok(None);
            }
        }
        self.store_lookups
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let scope = self
            .store
            .find_api_key(&hashed)
            .await?
            .filter(|k| k.revoked_at_ms.is_none())
            .map(|k| Scope {
                tenant: k.tenant,
                assets: k.assets.map(Arc::from),
                key_id: k.id,
            });
        match &scope {
            Some(scope) => {
                let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                if cache.len() >= KEY_CACHE_MAX {
                    cache.clear();
                }
                cache.insert(hashed.clone(), (Instant::now(), scope.clone()));
                self.unknown
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&hashed);
            }
            None => {
                let mut unknown = self.unknown.lock().unwrap_or_else(|p| p.into_inner());
                if unknown.len() >= UNKNOWN_KEY_CACHE_MAX {
                    unknown.retain(|_, at| at.elapsed() < self.ttl);
                }
                if unknown.len() >= UNKNOWN_KEY_CACHE_MAX {
                    // Still full of fresh entries: forget the older half (O(n) once per n/2
                    // inserts, so constant per lookup on average).
                    let mut ages: Vec<Instant> = unknown.values().copied().collect();
                    let (_, median, _) = ages.select_nth_unstable(UNKNOWN_KEY_CACHE_MAX / 2);
                    let median = *median;
                    unknown.retain(|_, at| *at > median);
                }
                unknown.insert(hashed, Instant::now());
            }
        }
        Ok(scope)
    }

    /// Drops every cached lookup (after a revocation or a new key through this process).
    pub fn forget(&self) {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.unknown
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

fn equal(presented: &str, expected: &SecretString) -> bool {
    bool::from(
        presented
            .as_bytes()
            .ct_eq(expected.expose_secret().as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_prefixed_and_stored_only_as_a_hash() {
        let a = generate("acme", None, None, 1);
        let b = generate("acme", None, None, 1);
        assert!(a.key.expose_secret().starts_with(KEY_PREFIX));
        assert_ne!(a.key.expose_secret(), b.key.expose_secret());
        assert_ne!(a.record.id, b.record.id);
        assert_eq!(a.record.key_hash, hash(a.key.expose_secret()));
        assert!(!a.record.key_hash.contains(a.key.expose_secret()));
        // 32 random bytes in unpadded base64url.
        assert_eq!(a.key.expose_secret().len(), KEY_PREFIX.len() + 43);
    }

    #[test]
    fn a_scope_allows_only_its_tenant_and_listed_assets() {
        let all = Scope {
            tenant: "acme".into(),
            assets: None,
            key_id: "k".into(),
        };
        assert!(all.allows_asset_id("acme", "1"));
        assert!(!all.allows_asset_id("globex", "1"));
        let some = Scope {
            assets: Some(Arc::from(vec!["1".to_owned()])),
            ..all
        };
        assert!(some.allows_asset_id("acme", "1"));
        assert!(!some.allows_asset_id("acme", "2"));
    }
}
