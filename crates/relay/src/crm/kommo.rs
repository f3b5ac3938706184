//! Kommo: integrations (a private integration's long-lived token, checked against
//! `GET /api/v4/account` and sealed like Meta tokens), the webhook endpoint's service (the body
//! is committed before Kommo gets its 200; a wrong account is refused and nothing stored), the
//! background processor (lead → main contact → `PHONE` → conversion by contact) and the REST
//! client (7 requests/s per integration, retries on 429/5xx, a short cache).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use rand::RngCore;
use relay_core::{
    Channel,
    crm::{Source, StageChange},
    kommo::{self, LeadStage},
    money,
};
use relay_store::{
    StoreError,
    crm::{CrmIntegration, CrmWebhookInsert, NewCrmWebhook, PendingCrmWebhook},
};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Crm, StageOutcome, no_rule_detail};
use crate::{
    clock::now_ms,
    tenancy::{self, AdminError, AdminResult, keys::Scope},
    vault::MasterKey,
};

/// Kommo allows 7 requests per second per integration.
pub const REQUESTS_PER_SECOND: u32 = 7;
/// Stored bodies processed per round.
const PROCESS_BATCH: i64 = 50;
/// How often stored bodies are looked for without a wake-up (other instances, retries due).
const PROCESS_POLL: Duration = Duration::from_millis(500);
/// Longest wait before a body that met a Kommo outage is tried again.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(600);

/// How the client talks to Kommo.
#[derive(Debug, Clone)]
pub struct KommoClientConfig {
    /// Smallest gap between two requests of one integration.
    pub min_interval: Duration,
    /// Tries per request on 429, 5xx or a transport error.
    pub attempts: u32,
    /// First wait between tries (doubled each time; Kommo's `Retry-After` wins, up to 5 s).
    pub backoff: Duration,
    /// How long an answer is reused.
    pub cache_ttl: Duration,
    pub timeout: Duration,
}

impl Default for KommoClientConfig {
    fn default() -> Self {
        KommoClientConfig {
            min_interval: Duration::from_secs(1) / REQUESTS_PER_SECOND,
            attempts: 3,
            backoff: Duration::from_millis(250),
            cache_ttl: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Why a Kommo call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KommoError {
    /// 401/403: the token is refused (expired, revoked, or lacks rights).
    #[error("Kommo refused the token (HTTP {status}): {message}")]
    TokenRejected { status: u16, message: String },
    #[error("not found in Kommo: {0}")]
    NotFound(String),
    /// 429/5xx or unreachable, after the retries: try later.
    #[error("Kommo is unavailable: {0}")]
    Unavailable(String),
    #[error("Kommo's answer is not understood: {0}")]
    Invalid(String),
}

/// The Kommo REST client, shared by every integration.
pub struct KommoClient {
    http: reqwest::Client,
    config: KommoClientConfig,
    /// Per integration: when its next request may start.
    gates: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Instant>>>>,
    cache: Mutex<HashMap<(String, String), (Instant, Value)>>,
}

impl KommoClient {
    pub fn new(config: KommoClientConfig) -> anyhow::Result<KommoClient> {
        let http = reqwest::Client::builder().timeout(config.timeout).build()?;
        Ok(KommoClient {
            http,
            config,
            gates: Mutex::new(HashMap::new()),
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Waits for the integration's next request slot.
    async fn pace(&self, key: &str) {
        let gate = self
            .gates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.to_owned())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(Instant::now())))
            .clone();
        let mut next = gate.lock().await;
        let now = Instant::now();
        if *next > now {
            tokio::time::sleep(*next - now).await;
        }
        *next = Instant::now().max(*next) + self.config.min_interval;
    }

    /// `GET {base}{path}` with the token, paced, retried and cached under `key` (the
    /// integration; an empty key is not cached).
    pub async fn get(
        &self,
        key: &str,
        base_url: &str,
        token: &SecretString,
        path: &str,
    ) -> Result<Value, KommoError> {
        let cache_key = (key.to_owned(), path.to_owned());
        if !key.is_empty() {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, value)) = cache.get(&cache_key)
                && at.elapsed() < self.config.cache_ttl
            {
                return Ok(value.clone());
            }
        }
        let url = format!("{}{path}", base_url.trim_end_matches('/'));
        let mut wait = self.config.backoff;
        let mut last = String::new();
        for attempt in 1..=self.config.attempts.max(1) {
            if attempt > 1 {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            self.pace(key).await;
            let sent = self
                .http
                .get(&url)
                .bearer_auth(token.expose_secret())
                .header("accept", "application/json")
                .send()
                .await;
            let response = match sent {
                Ok(r) => r,
                Err(e) => {
                    last = e.without_url().to_string();
                    continue;
                }
            };
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| Duration::from_secs(s.min(5)));
            let text = response.text().await.unwrap_or_default();
            match status {
                // Kommo answers 204 No Content for an id it does not have.
                204 | 404 => return Err(KommoError::NotFound(path.to_owned())),
                200..=299 => {
                    let value: Value = serde_json::from_str(&text)
                        .map_err(|e| KommoError::Invalid(format!("{path}: {e}")))?;
                    if !key.is_empty() {
                        self.cache
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(cache_key, (Instant::now(), value.clone()));
                    }
                    return Ok(value);
                }
                401 | 403 => {
                    return Err(KommoError::TokenRejected {
                        status,
                        message: short(&text),
                    });
                }
                429 | 500..=599 => {
                    last = format!("HTTP {status} {}", short(&text));
                    if let Some(after) = retry_after {
                        wait = wait.max(after);
                    }
                }
                _ => {
                    return Err(KommoError::Invalid(format!(
                        "HTTP {status} for {path}: {}",
                        short(&text)
                    )));
                }
            }
        }
        Err(KommoError::Unavailable(format!(
            "{path}: {last} (after {} tries)",
            self.config.attempts.max(1)
        )))
    }
}

/// A body excerpt for messages: Kommo's error JSON is short, but never let it be long.
fn short(text: &str) -> String {
    let t = text.trim();
    match t.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &t[..i]),
        None => t.to_owned(),
    }
}

/// What `GET /api/v4/account` says about the token's account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KommoAccount {
    pub id: String,
    pub subdomain: String,
}

pub async fn account(
    client: &KommoClient,
    base_url: &str,
    token: &SecretString,
) -> Result<KommoAccount, KommoError> {
    let value = client.get("", base_url, token, "/api/v4/account").await?;
    let id = value.get("id").and_then(relay_core::crm::id_text);
    let subdomain = value.get("subdomain").and_then(Value::as_str);
    match (id, subdomain) {
        (Some(id), Some(subdomain)) => Ok(KommoAccount {
            id,
            subdomain: subdomain.to_ascii_lowercase(),
        }),
        _ => Err(KommoError::Invalid(
            "GET /api/v4/account has no id or subdomain".into(),
        )),
    }
}

/// The associated data a Kommo token is sealed under: it opens for this integration only.
fn token_aad(integration_id: &str) -> String {
    format!("crm:{integration_id}")
}

/// The hash a webhook secret is looked up by.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The base URL: `https://acme.kommo.com` (http only for local tests and fakes).
fn check_base_url(url: &str) -> AdminResult<String> {
    let url = url.trim().trim_end_matches('/');
    let ok = (url.starts_with("https://") || url.starts_with("http://"))
        && url.len() > 8
        && !url.contains(char::is_whitespace)
        && !url.contains('?')
        && !url.contains('#');
    if ok {
        Ok(url.to_owned())
    } else {
        Err(AdminError::Invalid {
            field: "base_url",
            message: format!("{url:?} is not a Kommo account URL such as https://acme.kommo.com"),
        })
    }
}

fn kommo_admin_error(e: KommoError, base_url: &str) -> AdminError {
    match e {
        KommoError::TokenRejected { .. } => AdminError::Invalid {
            field: "token",
            message: format!(
                "{e}; create a long-lived token in the private integration's Keys and scopes tab"
            ),
        },
        other => AdminError::Invalid {
            field: "base_url",
            message: format!("cannot check the token at {base_url}: {other}"),
        },
    }
}

/// A Kommo integration to add.
pub struct AddKommo {
    pub tenant: String,
    pub base_url: String,
    pub token: SecretString,
    pub asset_id: String,
    /// (pipeline id, asset id): that pipeline's stage changes go to that asset instead.
    pub pipeline_assets: Vec<(String, String)>,
    pub currency: Option<String>,
}

/// The added integration and its webhook secret, shown once.
#[derive(Debug, Serialize)]
pub struct AddedKommo {
    pub integration: CrmIntegration,
    /// Paste `{public URL}{webhook_path}` into Kommo (Settings → Integrations → Web hooks).
    pub webhook_path: String,
}

pub async fn add(
    store: &dyn relay_store::Store,
    vault: &MasterKey,
    client: &KommoClient,
    request: AddKommo,
    actor: &str,
) -> AdminResult<AddedKommo> {
    tenancy::get_tenant(store, &request.tenant).await?;
    let base_url = check_base_url(&request.base_url)?;
    let asset = tenant_asset(store, &request.tenant, &request.asset_id, "asset_id").await?;
    let mut pipeline_assets = BTreeMap::new();
    for (pipeline, asset_id) in &request.pipeline_assets {
        let pipeline = pipeline_id(pipeline, "pipeline_asset")?;
        let asset = tenant_asset(store, &request.tenant, asset_id, "pipeline_asset").await?;
        pipeline_assets.insert(pipeline, asset.asset_id);
    }
    let currency = match &request.currency {
        Some(c) => Some(
            money::parse_currency(c)
                .map_err(|message| AdminError::Invalid {
                    field: "currency",
                    message,
                })?
                .code()
                .to_owned(),
        ),
        None => None,
    };
    let account = account(client, &base_url, &request.token)
        .await
        .map_err(|e| kommo_admin_error(e, &base_url))?;
    let mut id_bytes = [0u8; 6];
    rand::rng().fill_bytes(&mut id_bytes);
    let id = format!("kommo-{}", hex::encode(id_bytes));
    let mut secret_bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut secret_bytes);
    let secret = hex::encode(secret_bytes);
    let now = now_ms();
    let integration = CrmIntegration {
        id: id.clone(),
        tenant: request.tenant.clone(),
        kind: "kommo".into(),
        base_url,
        secret_sha256: secret_hash(&secret),
        sealed_token: vault.seal(&request.token, &token_aad(&id)),
        asset_id: asset.asset_id,
        pipeline_assets,
        currency,
        account_id: account.id,
        subdomain: account.subdomain,
        status: "active".into(),
        status_reason: None,
        api_ok_at_ms: Some(now),
        api_error: None,
        api_error_at_ms: None,
        last_webhook_at_ms: None,
        created_at_ms: now,
        updated_at_ms: now,
    };
    store.create_crm_integration(&integration).await?;
    tenancy::audit(
        store,
        actor,
        "crm.kommo.add",
        Some(&request.tenant),
        Some(&id),
        json!({"base_url": integration.base_url, "account_id": integration.account_id,
               "subdomain": integration.subdomain, "asset_id": integration.asset_id,
               "pipeline_assets": integration.pipeline_assets}),
    )
    .await;
    Ok(AddedKommo {
        integration,
        webhook_path: format!("/webhooks/kommo/{secret}"),
    })
}

/// The tenant's asset `asset_id`, else an error naming `field`.
async fn tenant_asset(
    store: &dyn relay_store::Store,
    tenant: &str,
    asset_id: &str,
    field: &'static str,
) -> AdminResult<relay_store::Asset> {
    store
        .get_asset(asset_id)
        .await?
        .filter(|a| a.tenant == tenant)
        .ok_or_else(|| AdminError::Invalid {
            field,
            message: format!(
                "asset {asset_id} is not an asset of tenant {tenant}; onboard it first"
            ),
        })
}

/// A Kommo pipeline id (digits), trimmed.
fn pipeline_id(id: &str, field: &'static str) -> AdminResult<String> {
    let id = id.trim();
    if kommo_id(id) {
        Ok(id.to_owned())
    } else {
        Err(AdminError::Invalid {
            field,
            message: format!("{id:?} is not a Kommo pipeline id (digits)"),
        })
    }
}

/// Sends a pipeline's stage changes to `asset_id` (the integration's tenant's), or with `None`
/// back to the integration's own asset.
pub async fn set_pipeline_asset(
    store: &dyn relay_store::Store,
    id: &str,
    pipeline: &str,
    asset_id: Option<&str>,
    actor: &str,
) -> AdminResult<CrmIntegration> {
    let integration = store
        .get_crm_integration(id)
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("no CRM integration {id}")))?;
    let pipeline = pipeline_id(pipeline, "pipeline_id")?;
    let asset = match asset_id {
        Some(a) => Some(
            tenant_asset(store, &integration.tenant, a, "asset_id")
                .await?
                .asset_id,
        ),
        None => None,
    };
    if !store
        .set_crm_pipeline_asset(id, &pipeline, asset.as_deref(), now_ms())
        .await?
    {
        return Err(AdminError::NotFound(format!(
            "integration {id} has no asset override for pipeline {pipeline}"
        )));
    }
    tenancy::audit(
        store,
        actor,
        "crm.kommo.pipeline_asset",
        Some(&integration.tenant),
        Some(id),
        json!({"pipeline_id": pipeline, "asset_id": asset}),
    )
    .await;
    store
        .get_crm_integration(id)
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("no CRM integration {id}")))
}

/// Replaces an integration's token (after Kommo refused the old one): checked against the same
/// account, then sealed; the integration is active again and its waiting bodies are processed.
pub async fn set_token(
    store: &dyn relay_store::Store,
    vault: &MasterKey,
    client: &KommoClient,
    id: &str,
    token: &SecretString,
    actor: &str,
) -> AdminResult<()> {
    let integration = store
        .get_crm_integration(id)
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("no CRM integration {id}")))?;
    let account = account(client, &integration.base_url, token)
        .await
        .map_err(|e| kommo_admin_error(e, &integration.base_url))?;
    if account.id != integration.account_id {
        return Err(AdminError::Invalid {
            field: "token",
            message: format!(
                "the token is for Kommo account {}, not {} (this integration's)",
                account.id, integration.account_id
            ),
        });
    }
    store
        .set_crm_integration_token(id, &vault.seal(token, &token_aad(id)), now_ms())
        .await?;
    tenancy::audit(
        store,
        actor,
        "crm.kommo.set_token",
        Some(&integration.tenant),
        Some(id),
        Value::Null,
    )
    .await;
    Ok(())
}

/// Why a webhook request is refused (nothing stored).
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// No integration has this secret.
    UnknownUrl,
    /// The body names another account, or none.
    WrongAccount(String),
}

/// What the endpoint answers a stored body with.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    Stored,
    Duplicate,
}

/// The webhook: finds the integration by its URL secret, checks the body's account, and
/// commits the raw body. Processing happens later, in [`KommoProcessor`].
pub async fn receive(
    store: &dyn relay_store::Store,
    secret: &str,
    body: &[u8],
) -> Result<Result<Received, Refused>, StoreError> {
    let Some(integration) = store
        .find_crm_integration_by_secret(&secret_hash(secret))
        .await?
    else {
        return Ok(Err(Refused::UnknownUrl));
    };
    let tree = kommo::parse_form(body);
    if let Err(why) = kommo::belongs_to(
        &kommo::body_account(&tree),
        &integration.account_id,
        &integration.subdomain,
    ) {
        tracing::warn!(integration = %integration.id, reason = %why, "Kommo webhook refused");
        return Ok(Err(Refused::WrongAccount(why)));
    }
    let inserted = store
        .insert_crm_webhook(&NewCrmWebhook {
            integration_id: integration.id,
            body: body.to_vec(),
            body_sha256: hex::encode(Sha256::digest(body)),
            received_at_ms: now_ms(),
        })
        .await?;
    Ok(Ok(match inserted {
        CrmWebhookInsert::Inserted(_) => Received::Stored,
        CrmWebhookInsert::Duplicate => Received::Duplicate,
    }))
}

/// Processes stored Kommo bodies in the background; whatever a crash left pending is
/// processed at the next start.
pub struct KommoProcessor {
    pub crm: Arc<Crm>,
    pub client: KommoClient,
    pub vault: Arc<MasterKey>,
    /// Wakes the processor after a body is stored.
    pub wake: Notify,
    /// First wait before a body that met an outage is tried again (doubled per attempt).
    pub retry_base: Duration,
}

/// Why processing a body stopped before its end; the body stays pending.
enum Stop {
    Store(StoreError),
    /// Kommo is down: try again later.
    Later(String),
    /// The token is refused: the integration is marked and waits for a new one.
    TokenRejected(String),
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Self {
        Stop::Store(e)
    }
}

/// The customer behind a lead.
struct Customer {
    phones: Vec<String>,
    price: Option<rust_decimal::Decimal>,
}

fn kommo_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 20 && id.bytes().all(|b| b.is_ascii_digit())
}

impl KommoProcessor {
    /// One round: processes due bodies. Returns how many were handled.
    pub async fn process_due(&self) -> Result<usize, StoreError> {
        let store = self.crm.store.clone();
        let due = store.due_crm_webhooks(now_ms(), PROCESS_BATCH).await?;
        let count = due.len();
        let mut integrations: HashMap<String, Option<CrmIntegration>> = HashMap::new();
        // Integrations whose token was refused during this round: their bodies wait.
        let mut refused: Vec<String> = Vec::new();
        for webhook in due {
            if refused.contains(&webhook.integration_id) {
                continue;
            }
            if !integrations.contains_key(&webhook.integration_id) {
                let found = store.get_crm_integration(&webhook.integration_id).await?;
                integrations.insert(webhook.integration_id.clone(), found);
            }
            let Some(Some(integration)) = integrations.get(&webhook.integration_id).cloned() else {
                store
                    .finish_crm_webhook(
                        webhook.id,
                        "failed",
                        Some("the integration no longer exists"),
                        now_ms(),
                    )
                    .await?;
                continue;
            };
            if integration.status != "active" {
                continue;
            }
            match self.process(&integration, &webhook).await {
                Ok(note) => {
                    store
                        .finish_crm_webhook(webhook.id, "processed", note.as_deref(), now_ms())
                        .await?
                }
                Err(Stop::Store(e)) => return Err(e),
                Err(Stop::Later(why)) => {
                    let delay = self
                        .retry_base
                        .saturating_mul(2u32.saturating_pow(webhook.attempts.clamp(0, 16) as u32))
                        .min(MAX_RETRY_DELAY);
                    tracing::warn!(integration = %integration.id, webhook = webhook.id, error = %why, retry_in_ms = delay.as_millis() as u64, "Kommo unavailable; the webhook waits");
                    store
                        .record_crm_api(&integration.id, Some(&why), now_ms())
                        .await?;
                    store
                        .retry_crm_webhook(webhook.id, now_ms() + delay.as_millis() as i64, &why)
                        .await?;
                }
                Err(Stop::TokenRejected(why)) => {
                    tracing::error!(integration = %integration.id, error = %why, "Kommo refused the token; integration marked");
                    store
                        .record_crm_api(&integration.id, Some(&why), now_ms())
                        .await?;
                    store
                        .set_crm_integration_status(
                            &integration.id,
                            "token_rejected",
                            Some(&why),
                            now_ms(),
                        )
                        .await?;
                    store.retry_crm_webhook(webhook.id, now_ms(), &why).await?;
                    refused.push(webhook.integration_id.clone());
                }
            }
        }
        Ok(count)
    }

    /// Processes one body; `Ok` carries a note of what was not used.
    async fn process(
        &self,
        integration: &CrmIntegration,
        webhook: &PendingCrmWebhook,
    ) -> Result<Option<String>, Stop> {
        let token = self
            .vault
            .open(&integration.sealed_token, &token_aad(&integration.id))
            .map_err(|e| Stop::TokenRejected(format!("the stored token does not open: {e}")))?;
        let body = kommo::read_body(&kommo::parse_form(&webhook.body));
        // The pipeline's own asset if it has one, else the integration's; looked up once each.
        let mut assets: HashMap<String, Option<relay_store::Asset>> = HashMap::new();
        let scope = Scope {
            tenant: integration.tenant.clone(),
            assets: None,
            key_id: format!("crm:{}", integration.id),
        };
        for stage in &body.stages {
            let change = StageChange {
                source: Source::Kommo,
                account: integration.account_id.clone(),
                deal_id: stage.lead_id.clone(),
                pipeline_id: stage.pipeline_id.clone(),
                stage_id: stage.status_id.clone(),
                amount: stage.price,
                currency: None,
                occurred_at: stage.changed_at.unwrap_or(webhook.received_at_ms / 1000),
                entry: None,
            };
            let asset_id = stage
                .pipeline_id
                .as_ref()
                .and_then(|p| integration.pipeline_assets.get(p))
                .unwrap_or(&integration.asset_id);
            if !assets.contains_key(asset_id) {
                let asset = self
                    .crm
                    .store
                    .get_asset(asset_id)
                    .await?
                    .filter(|a| a.tenant == integration.tenant);
                assets.insert(asset_id.clone(), asset);
            }
            let outcome = match self.crm.rule_for(&integration.tenant, &change).await? {
                None => StageOutcome::skipped("no_rule", no_rule_detail(&change)),
                Some(rule) => match &assets[asset_id] {
                    None => StageOutcome::skipped(
                        "rejected",
                        format!("asset {asset_id} of the integration is not registered"),
                    ),
                    Some(asset) => {
                        let channel: Channel = asset.channel.parse().unwrap_or(Channel::WhatsApp);
                        match self.customer(integration, &token, stage).await {
                            Ok(customer) if customer.phones.is_empty() => StageOutcome::skipped(
                                "no_contact",
                                format!("lead {}'s main contact has no PHONE", stage.lead_id),
                            ),
                            Ok(customer) => {
                                let mut change = change.clone();
                                change.amount = change.amount.or(customer.price);
                                let mut outcome = None;
                                for phone in &customer.phones {
                                    let produced = self
                                        .crm
                                        .produce(
                                            &scope,
                                            &change,
                                            &rule,
                                            (channel, &asset.asset_id),
                                            json!({ "phone": phone }),
                                            integration.currency.as_deref(),
                                        )
                                        .await?;
                                    let done = produced.outcome != "no_attribution";
                                    outcome = Some(produced);
                                    if done {
                                        break;
                                    }
                                }
                                outcome.expect("at least one phone")
                            }
                            Err(KommoError::NotFound(what)) => StageOutcome::skipped(
                                "no_contact",
                                format!("lead {}: {what} not found in Kommo", stage.lead_id),
                            ),
                            Err(KommoError::Invalid(why)) => {
                                StageOutcome::skipped("no_contact", why)
                            }
                            Err(KommoError::Unavailable(why)) => return Err(Stop::Later(why)),
                            Err(e @ KommoError::TokenRejected { .. }) => {
                                return Err(Stop::TokenRejected(e.to_string()));
                            }
                        }
                    }
                },
            };
            self.crm
                .record(&integration.tenant, &integration.id, &change, &outcome)
                .await?;
        }
        Ok((!body.unused.is_empty()).then(|| format!("not used: {}", body.unused.join("; "))))
    }

    /// Lead → main contact → its phones, through the paced, cached client.
    async fn customer(
        &self,
        integration: &CrmIntegration,
        token: &SecretString,
        stage: &LeadStage,
    ) -> Result<Customer, KommoError> {
        if !kommo_id(&stage.lead_id) {
            return Err(KommoError::Invalid(format!(
                "{:?} is not a Kommo lead id",
                stage.lead_id
            )));
        }
        let get = |path: String| async move {
            self.client
                .get(&integration.id, &integration.base_url, token, &path)
                .await
        };
        let lead = get(format!("/api/v4/leads/{}?with=contacts", stage.lead_id)).await?;
        let price = kommo::lead_price(&lead);
        let Some(contact_id) = kommo::main_contact_id(&lead).filter(|c| kommo_id(c)) else {
            let _ = self
                .crm
                .store
                .record_crm_api(&integration.id, None, now_ms())
                .await;
            return Ok(Customer {
                phones: Vec::new(),
                price,
            });
        };
        let contact = get(format!("/api/v4/contacts/{contact_id}")).await?;
        let _ = self
            .crm
            .store
            .record_crm_api(&integration.id, None, now_ms())
            .await;
        Ok(Customer {
            phones: kommo::contact_phones(&contact),
            price,
        })
    }
}

/// Processes stored bodies as they arrive, retries when due, and at start whatever is pending.
pub async fn process_loop(processor: Arc<KommoProcessor>, cancel: CancellationToken) {
    loop {
        match processor.process_due().await {
            Ok(n) if n as i64 == PROCESS_BATCH => continue,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "Kommo webhook processing failed; retrying"),
        }
        tokio::select! {
            () = processor.wake.notified() => {}
            () = tokio::time::sleep(PROCESS_POLL) => {}
            () = cancel.cancelled() => break,
        }
    }
}
