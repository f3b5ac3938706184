//! Capture: the service between Meta's webhooks, the attribution store and ingestion.
//!
//! - Webhook deliveries are verified ([`verify_signature`]) and stored raw before Meta gets its
//!   200; [`Capture::process_pending`] parses them afterwards (also after a crash: whatever is
//!   still `pending` is processed at the next start). Each message stands alone: one that
//!   cannot be kept is recorded on the delivery and the others are captured; a store error
//!   leaves the delivery pending for another try ([`next_try_at_ms`]) until the tries run out.
//! - Raw bodies (customers' numbers, names, messages) are removed once processed and
//!   forwarded ([`Capture::remove_raw_bodies`]); what attribution needs is in contacts and
//!   touches.
//! - Automatic events go to ingestion through [`EventSink`], so this module never imports
//!   ingestion (which calls in here to resolve conversions by contact).
//! - [`Capture::resolve`] turns a conversion by contact into a normal event (pure rewrite in
//!   `relay_core::contact`, store lookups here).
//! - The forwarder relays verified webhooks upstream; the purge enforces retention.
//!
//! Processing is idempotent (touches are unique per message id, automatic events have derived
//! event ids), so two relays on one PostgreSQL database may process the same delivery safely.

use std::{future::Future, sync::Arc, time::Duration};

use hmac::{Hmac, Mac};
use relay_core::{
    Channel, Issue,
    contact::{self, Attribution, ContactRequest, CustomerRef, FoundContact, FoundTouch, Lookup},
    pii::PiiContext,
    webhook::{self, Inbound},
};
use relay_store::{
    Store, StoreError,
    capture::{
        Contact, ContactKey, ForwardResolution, NewSighting, NewTouch, NewWebhook, PendingWebhook,
        ReprocessFilter, Requeued, Touch, WebhookFinish, WebhookInsert,
    },
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{
    clock::{self, SharedClock, now_ms},
    config::Config,
    delivery::retry,
    observability,
};

/// Stored webhooks parsed per round.
const PROCESS_BATCH: i64 = 100;
/// How often stored webhooks are looked for without a wake-up (other instances' deliveries).
const PROCESS_POLL: Duration = Duration::from_secs(1);
/// How often the forward queue is polled.
const FORWARD_POLL: Duration = Duration::from_millis(200);
/// Forwards claimed per round.
const FORWARD_BATCH: i64 = 50;
/// How long a claimed forward is held before another worker may retry it.
const FORWARD_LEASE: Duration = Duration::from_secs(60);
/// How often raw bodies past their retention are looked for when nothing is processed.
const BODY_SWEEP: Duration = Duration::from_secs(60);

/// Where capture hands the conversions Meta detected (`automatic_events`): ingestion, seen
/// from here. Ingestion resolves conversions by contact through [`Capture`], so capture knows
/// it only by this trait and the modules depend one way.
pub trait EventSink: Send + Sync {
    /// Ingests `event` (a server event in the wire shape) for `tenant`. `Ok(Err(reason))` when
    /// it is refused; a duplicate is `Ok(Ok(()))`.
    fn submit(
        &self,
        tenant: &str,
        event: Value,
    ) -> impl Future<Output = Result<Result<(), String>, StoreError>> + Send;
}

/// When a delivery whose processing met a store error is tried next, after `tries` tries (the
/// failed one included): `now_ms` plus the `schedule` entry for that try, jittered ±20% by
/// `draw` (uniform in `[0, 1)`); `None` when the schedule is used up and the delivery fails.
pub fn next_try_at_ms(tries: u32, schedule: &[Duration], draw: f64, now_ms: i64) -> Option<i64> {
    retry::next_delay(tries, schedule, 0.2, draw, None).map(|wait| now_ms + wait.as_millis() as i64)
}

/// True when `header` (`sha256=<hex>`) is the HMAC-SHA256 of `body` under one of `secrets`.
/// The comparison is constant-time (`verify_slice`); the body is never parsed first.
pub fn verify_signature(secrets: &[SecretString], header: Option<&str>, body: &[u8]) -> bool {
    let Some(hex_digest) = header.and_then(|h| h.trim().strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_digest) else {
        return false;
    };
    secrets.iter().any(|secret| {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes()) else {
            return false;
        };
        mac.update(body);
        mac.verify_slice(&expected).is_ok()
    })
}

/// `sha256=<hex>` of `body` under `secret`, as Meta signs (for tests and tools).
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The capture service shared by the webhook handler, ingestion and the background tasks.
pub struct Capture {
    store: Arc<dyn Store>,
    secrets: Vec<SecretString>,
    verify_tokens: Vec<SecretString>,
    forward_url: Option<String>,
    pii: PiiContext,
    max_touch_age: Duration,
    /// Waits between processing tries after store errors (`webhooks.retry_schedule`).
    retry_schedule: Vec<Duration>,
    /// How long a processed (and forwarded) raw body is kept: 0 by default.
    raw_body_retention: Duration,
    /// How long a failed delivery's raw body is kept, for `capture reprocess`.
    failed_body_retention: Duration,
    clock: SharedClock,
    /// Wakes the processor after a delivery is stored or re-queued.
    pub wake: Notify,
}

/// What the webhook endpoint answers.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    Stored,
    Duplicate,
}

/// Why a webhook request is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// No app secret is configured.
    NotConfigured,
    /// Missing or wrong `X-Hub-Signature-256`.
    BadSignature,
}

impl Capture {
    pub fn new(store: Arc<dyn Store>, config: &Config) -> Capture {
        // An empty secret would let anyone sign, an empty token let anyone subscribe.
        let set = |s: &SecretString| !s.expose_secret().trim().is_empty();
        let apps: Vec<_> = config
            .meta_apps()
            .into_iter()
            .filter(|a| set(&a.app_secret))
            .collect();
        let mut verify_tokens: Vec<SecretString> = config
            .meta_verify_token
            .iter()
            .filter(|t| set(t))
            .cloned()
            .collect();
        verify_tokens.extend(
            apps.iter()
                .filter_map(|a| a.verify_token.clone())
                .filter(|t| set(t)),
        );
        let default_phone_region = config
            .validation_options()
            .ok()
            .and_then(|o| o.default_phone_region);
        Capture {
            store,
            secrets: apps.into_iter().map(|a| a.app_secret).collect(),
            verify_tokens,
            forward_url: config.webhooks.forward_url.clone(),
            // Only phones are normalised here; the year matters for dates of birth alone.
            pii: PiiContext {
                default_phone_region,
                current_year: 2100,
            },
            max_touch_age: config.attribution.max_touch_age,
            retry_schedule: config.webhooks.retry_schedule.clone(),
            raw_body_retention: config.webhooks.raw_body_retention,
            failed_body_retention: config.webhooks.failed_body_retention,
            clock: clock::system(),
            wake: Notify::new(),
        }
    }

    /// The same service reading the time from `clock` (tests).
    pub fn with_clock(mut self, clock: SharedClock) -> Capture {
        self.clock = clock;
        self
    }

    /// The handshake: `hub.challenge` back when the mode and the verify token are right.
    pub fn handshake<'q>(
        &self,
        mode: Option<&str>,
        token: Option<&str>,
        challenge: Option<&'q str>,
    ) -> Option<&'q str> {
        let token = token?;
        let known = self
            .verify_tokens
            .iter()
            .any(|t| bool::from(t.expose_secret().as_bytes().ct_eq(token.as_bytes())));
        (mode == Some("subscribe") && known).then_some(challenge?)
    }

    /// Verifies and durably stores one delivery. Parsing happens later, in the processor.
    pub async fn receive(
        &self,
        body: &[u8],
        signature: Option<&str>,
        waba_hint: Option<String>,
    ) -> Result<Result<Received, Refused>, StoreError> {
        if self.secrets.is_empty() {
            observability::webhook_received("not_configured");
            return Ok(Err(Refused::NotConfigured));
        }
        if !verify_signature(&self.secrets, signature, body) {
            observability::webhook_received("bad_signature");
            return Ok(Err(Refused::BadSignature));
        }
        let inserted = self
            .store
            .insert_webhook(&NewWebhook {
                body: body.to_vec(),
                body_sha256: hex::encode(Sha256::digest(body)),
                signature: signature.unwrap_or_default().to_owned(),
                waba_hint,
                received_at_ms: self.clock.now_ms(),
                forward: self.forward_url.is_some(),
            })
            .await?;
        Ok(Ok(match inserted {
            WebhookInsert::Inserted(_) => {
                observability::webhook_received("stored");
                self.wake.notify_one();
                Received::Stored
            }
            WebhookInsert::Duplicate => {
                observability::webhook_received("duplicate");
                Received::Duplicate
            }
        }))
    }

    /// Parses due deliveries into contacts and touches, and reports automatic events.
    /// Returns how many deliveries were handled. `Err` only when the outcome of one could not
    /// be recorded (the database is down): it stays pending and is tried again.
    pub async fn process_pending(&self, sink: &impl EventSink) -> Result<usize, StoreError> {
        let pending = self
            .store
            .pending_webhooks(self.clock.now_ms(), PROCESS_BATCH)
            .await?;
        let count = pending.len();
        for webhook in pending {
            self.process(webhook, sink).await?;
        }
        if count > 0 {
            self.remove_raw_bodies().await?;
        }
        Ok(count)
    }

    /// Sets failed deliveries back to pending and wakes the processor (`capture reprocess`).
    pub async fn reprocess(&self, filter: &ReprocessFilter) -> Result<Requeued, StoreError> {
        let requeued = self.store.requeue_failed_webhooks(filter).await?;
        if requeued.requeued > 0 {
            self.wake.notify_one();
        }
        Ok(requeued)
    }

    /// Removes the raw bodies past their retention (processed: `webhooks.raw_body_retention`;
    /// failed: `webhooks.failed_body_retention`) that are not waiting to be forwarded.
    pub async fn remove_raw_bodies(&self) -> Result<u64, StoreError> {
        remove_raw_bodies(
            self.store.as_ref(),
            self.raw_body_retention,
            self.failed_body_retention,
            self.clock.now_ms(),
        )
        .await
    }

    async fn process(&self, w: PendingWebhook, sink: &impl EventSink) -> Result<(), StoreError> {
        let parsed = match webhook::parse(&w.body, w.waba_hint.as_deref()) {
            Ok(parsed) => parsed,
            Err(e) => {
                // Signed by Meta but not understood: kept with the reason, never retried.
                tracing::warn!(webhook = w.id, error = %e, "webhook kept unprocessed");
                observability::webhook_processed("failed");
                let error = e.to_string();
                return self
                    .store
                    .finish_webhook(
                        w.id,
                        None,
                        WebhookFinish::Failed { error: &error },
                        self.clock.now_ms(),
                    )
                    .await;
            }
        };
        let mut out = ItemOutcomes {
            webhook: w.id,
            problems: parsed.skipped.iter().map(ToString::to_string).collect(),
            store_error: None,
            unavailable: false,
        };
        for skipped in &parsed.skipped {
            tracing::warn!(webhook = w.id, item = %skipped.at, reason = %skipped.reason, "webhook item skipped");
        }
        // Re-keys first: a message under the new id in the same delivery then finds the contact.
        for update in &parsed.user_id_updates {
            let at_ms = if update.timestamp_ms > 0 {
                update.timestamp_ms
            } else {
                w.received_at_ms
            };
            let rekeyed = self
                .store
                .rekey_wa_user_id(
                    Channel::WhatsApp.as_str(),
                    &update.waba_id,
                    &update.previous,
                    &update.current,
                    at_ms,
                )
                .await;
            match rekeyed {
                Ok(true) => {}
                Ok(false) => {
                    tracing::info!(waba = %update.waba_id, "user_id_update for a customer not captured")
                }
                Err(e) => out.store_failed(format!("user_id_update of WABA {}", update.waba_id), e),
            }
            if out.unavailable {
                break;
            }
        }
        for inbound in &parsed.inbound {
            if out.unavailable {
                break;
            }
            let sighting = sighting(inbound, &self.pii, w.received_at_ms);
            match self.store.record_sighting(&sighting).await {
                Ok(outcome) if outcome.touch_inserted => {
                    observability::touches_captured(inbound.channel.as_str(), 1);
                }
                Ok(_) => {}
                Err(e) => out.store_failed(format!("message {}", inbound.message_id), e),
            }
        }
        // Automatic events the relay could not report are kept on the webhook record too.
        for auto in &parsed.automatic_events {
            if out.unavailable {
                break;
            }
            let event_id = webhook::automatic_event_id(auto);
            match self.report_automatic(auto, &event_id, sink).await {
                Ok(None) => {}
                Ok(Some(problem)) => out.problems.push(problem),
                Err(e) => out.store_failed(format!("automatic event {event_id}"), e),
            }
        }
        let channel = parsed.channel.map(Channel::as_str);
        let now = self.clock.now_ms();
        let tries = w.attempts.max(0) as u32 + 1;
        let ItemOutcomes {
            mut problems,
            store_error,
            ..
        } = out;
        let retry_error;
        let error;
        let finish = match store_error {
            Some(e) => match next_try_at_ms(tries, &self.retry_schedule, rand::random(), now) {
                Some(next_at_ms) => {
                    retry_error = format!("try {tries} met a store error, retried later: {e}");
                    WebhookFinish::Retry {
                        next_at_ms,
                        error: &retry_error,
                    }
                }
                None => {
                    problems.push(format!("gave up after {tries} tries: {e}"));
                    error = problems.join(" | ");
                    WebhookFinish::Failed { error: &error }
                }
            },
            None if problems.is_empty() => WebhookFinish::Processed,
            None => {
                error = format!(
                    "processed, but not everything was captured: {}",
                    problems.join(" | ")
                );
                WebhookFinish::Failed { error: &error }
            }
        };
        self.store
            .finish_webhook(w.id, channel, finish, now)
            .await?;
        observability::webhook_processed(match finish {
            WebhookFinish::Processed => "processed",
            WebhookFinish::Failed { .. } => "failed",
            WebhookFinish::Retry { .. } => "retry",
        });
        Ok(())
    }

    /// Reports one automatic event through `sink`: `Ok(Some(why))` when it was not reported for
    /// a reason worth showing, `Ok(None)` when reported or not wanted.
    async fn report_automatic(
        &self,
        auto: &webhook::AutomaticEvent,
        event_id: &str,
        sink: &impl EventSink,
    ) -> Result<Option<String>, StoreError> {
        if !self
            .store
            .capture_options(&auto.waba_id)
            .await?
            .automatic_events
        {
            return Ok(None);
        }
        let Some(event) = webhook::automatic_event_json(auto) else {
            tracing::info!(waba = %auto.waba_id, "automatic event without a click id not reported");
            return Ok(None);
        };
        let Some(asset) = self.store.get_asset(&auto.waba_id).await? else {
            tracing::warn!(waba = %auto.waba_id, "automatic event for an unregistered asset");
            return Ok(Some(format!(
                "automatic event {event_id} not reported: asset {} is not registered",
                auto.waba_id
            )));
        };
        // Reported on behalf of the asset's own tenant.
        Ok(match sink.submit(&asset.tenant, event).await? {
            Ok(()) => None,
            Err(why) => {
                tracing::warn!(waba = %auto.waba_id, event_id = %event_id, errors = %why, "automatic event refused");
                Some(format!("automatic event {event_id} refused: {why}"))
            }
        })
    }

    /// What a submitted event asks to look up: `Ok(None)` when it names no contact.
    pub fn plan(&self, event: &Value) -> Result<Option<ContactRequest>, Vec<Issue>> {
        contact::plan(event, &self.pii)
    }

    /// Looks the contact up and rewrites the event with its channel identity, or says why it
    /// cannot be attributed. The caller has checked the asset is the caller's.
    pub async fn resolve(
        &self,
        event: &Value,
        request: &ContactRequest,
        now_ms: i64,
    ) -> Result<Result<(Value, Attribution), Issue>, StoreError> {
        let lookup = self.lookup_for(request, now_ms).await?;
        Ok(contact::rewrite(event, request, &lookup))
    }

    async fn lookup_for(
        &self,
        request: &ContactRequest,
        now_ms: i64,
    ) -> Result<Lookup, StoreError> {
        let channel = request.channel.as_str();
        let mut found = None;
        for customer in std::iter::once(&request.customer).chain(&request.alternates) {
            found = self
                .store
                .find_contact(channel, &request.asset_id, &store_key(customer))
                .await?;
            if found.is_some() {
                break;
            }
        }
        let mut lookup = Lookup::default();
        if let Some(c) = &found {
            // At or before the event (to the end of its second), and not older than the window.
            let until_ms = request
                .event_time
                .map_or(now_ms, |t| t.saturating_add(1).saturating_mul(1000) - 1);
            let since_ms = until_ms - self.max_touch_age.as_millis() as i64;
            let touches: Vec<Touch> = self
                .store
                .contact_touches(c.id)
                .await?
                .into_iter()
                .filter(|t| (since_ms..=until_ms).contains(&t.touch.touched_at_ms))
                .collect();
            let chosen = match request.channel {
                // Only a click id attributes a WhatsApp conversion; Status-ad touches have none.
                Channel::WhatsApp => touches.iter().find(|t| t.touch.click_id.is_some()),
                _ => touches.first(),
            };
            lookup.touches_without_click_id = chosen.is_none() && !touches.is_empty();
            lookup.touch = chosen.map(|t| FoundTouch {
                touch_id: t.touch_id,
                click_id: t.touch.click_id.clone(),
                ad_id: t.touch.ad_id.clone(),
                source_type: t.touch.source_type.clone(),
                touched_at_ms: t.touch.touched_at_ms,
            });
        }
        lookup.contact = found.map(|c| FoundContact {
            conversation_id: c.conversation_id,
            phone_hash: c.phone_hash,
            scoped_id: c.scoped_id,
        });
        if request.channel == Channel::WhatsApp && lookup.touch.is_none() {
            lookup.allow_unattributed = self
                .store
                .capture_options(&request.asset_id)
                .await?
                .allow_unattributed;
        }
        Ok(lookup)
    }

    /// The contact a lookup URL names, trying each reading of `customer` in turn.
    pub async fn find_contact(
        &self,
        channel: Channel,
        asset_id: &str,
        customer: &str,
    ) -> Result<Option<Contact>, StoreError> {
        for candidate in contact::lookup_candidates(channel, customer, &self.pii) {
            let key = store_key(&candidate);
            if let Some(found) = self
                .store
                .find_contact(channel.as_str(), asset_id, &key)
                .await?
            {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    pub async fn touches(&self, contact: &Contact) -> Result<Vec<Touch>, StoreError> {
        self.store.contact_touches(contact.id).await
    }

    /// Links the CRM's id to the contact `customer` names.
    pub async fn link_customer_id(
        &self,
        channel: Channel,
        asset_id: &str,
        customer: &str,
        customer_id: &str,
    ) -> Result<Contact, StoreError> {
        let found = self
            .find_contact(channel, asset_id, customer)
            .await?
            .ok_or_else(|| {
                StoreError::NotFound(format!(
                    "no {channel} contact {customer:?} of asset {asset_id} has been captured"
                ))
            })?;
        self.store
            .link_customer_id(
                channel.as_str(),
                asset_id,
                &ContactKey::ConversationId(found.conversation_id),
                customer_id,
            )
            .await
    }
}

fn store_key(customer: &CustomerRef) -> ContactKey {
    match customer.clone() {
        CustomerRef::PhoneHash(v) => ContactKey::PhoneHash(v),
        CustomerRef::WhatsAppUserId(v) => ContactKey::WaUserId(v),
        CustomerRef::ScopedId(v) => ContactKey::ScopedId(v),
        CustomerRef::ConversationId(v) => ContactKey::ConversationId(v),
        CustomerRef::CustomerId(v) => ContactKey::CustomerId(v),
    }
}

/// What became of a delivery's items while it is processed.
struct ItemOutcomes {
    webhook: i64,
    /// What was not captured, each with its reason; shown on the webhook record.
    problems: Vec<String>,
    /// The first store error that may pass: the delivery is tried again (processing is
    /// idempotent).
    store_error: Option<String>,
    /// The database is unreachable: the rest of the delivery waits for the next try.
    unavailable: bool,
}

impl ItemOutcomes {
    fn store_failed(&mut self, what: String, e: StoreError) {
        tracing::warn!(webhook = self.webhook, item = %what, error = %e, "webhook item not captured");
        match e {
            // Would repeat as it is: recorded, not retried.
            StoreError::NotFound(_) | StoreError::Conflict(_) => {
                self.problems.push(format!("{what}: {e}"));
            }
            _ => {
                self.unavailable |= matches!(e, StoreError::Unavailable(_));
                self.store_error.get_or_insert(format!("{what}: {e}"));
            }
        }
    }
}

/// Removes raw bodies past their retention at `now_ms` (see [`Capture::remove_raw_bodies`]).
async fn remove_raw_bodies(
    store: &dyn Store,
    raw_body_retention: Duration,
    failed_body_retention: Duration,
    now_ms: i64,
) -> Result<u64, StoreError> {
    let before = |d: Duration| now_ms.saturating_sub(d.as_millis() as i64);
    store
        .remove_webhook_bodies(
            before(raw_body_retention),
            before(failed_body_retention),
            now_ms,
        )
        .await
}

/// The store row for one inbound message. The phone is hashed here and nowhere kept in clear.
fn sighting(inbound: &Inbound, pii: &PiiContext, received_at_ms: i64) -> NewSighting {
    let phone_hash = inbound
        .customer
        .wa_id
        .as_deref()
        .and_then(|w| contact::wa_id_hash(w, pii));
    let first_identity = phone_hash
        .as_ref()
        .map(|h| format!("phone:{h}"))
        .or_else(|| {
            inbound
                .customer
                .user_id
                .as_ref()
                .map(|u| format!("user:{u}"))
        })
        .or_else(|| {
            inbound
                .customer
                .scoped_id
                .as_ref()
                .map(|s| format!("scoped:{s}"))
        })
        .unwrap_or_default();
    let seen_at_ms = if inbound.timestamp_ms > 0 {
        inbound.timestamp_ms
    } else {
        received_at_ms
    };
    NewSighting {
        channel: inbound.channel.as_str().to_owned(),
        asset_id: inbound.asset_id.clone(),
        phone_hash,
        wa_user_id: inbound.customer.user_id.clone(),
        scoped_id: inbound.customer.scoped_id.clone(),
        conversation_id: contact::conversation_id(
            inbound.channel,
            &inbound.asset_id,
            &first_identity,
        ),
        seen_at_ms,
        touch: inbound.referral.as_ref().map(|r| NewTouch {
            message_id: inbound.message_id.clone(),
            touched_at_ms: seen_at_ms,
            click_id: r.click_id.clone(),
            ad_id: r.ad_id.clone(),
            source_type: r.source_type.clone(),
            source_url: r.source_url.clone(),
            headline: r.headline.clone(),
            body: r.body.clone(),
            media_type: r.media_type.clone(),
            media_url: r.media_url.clone(),
            ref_param: r.ref_param.clone(),
        }),
    }
}

/// Parses stored deliveries as they arrive (and as retries fall due), and at start whatever a
/// crash left pending; removes raw bodies past their retention.
pub async fn process_loop<S: EventSink>(
    capture: Arc<Capture>,
    sink: Arc<S>,
    cancel: CancellationToken,
) {
    let mut last_sweep = tokio::time::Instant::now();
    loop {
        if last_sweep.elapsed() >= BODY_SWEEP {
            last_sweep = tokio::time::Instant::now();
            if let Err(e) = capture.remove_raw_bodies().await {
                tracing::warn!(error = %e, "cannot remove raw webhook bodies");
            }
        }
        match capture.process_pending(sink.as_ref()).await {
            Ok(0) => {}
            Ok(n) => {
                if n as i64 == PROCESS_BATCH {
                    continue;
                }
            }
            Err(e) => tracing::warn!(error = %e, "webhook processing failed; retrying"),
        }
        tokio::select! {
            () = capture.wake.notified() => {}
            () = tokio::time::sleep(PROCESS_POLL) => {}
            () = cancel.cancelled() => break,
        }
    }
}

/// Relays stored deliveries to `webhooks.forward_url` with their original signature, retrying
/// on the delivery retry schedule.
pub async fn forward_loop(
    store: Arc<dyn Store>,
    config: Config,
    owner: String,
    cancel: CancellationToken,
) {
    let Some(url) = config.webhooks.forward_url.clone() else {
        return;
    };
    let client = match reqwest::Client::builder()
        .timeout(config.webhooks.forward_timeout)
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the forwarding HTTP client");
            return;
        }
    };
    loop {
        let now = now_ms();
        let lease_until = now + FORWARD_LEASE.as_millis() as i64;
        let jobs = match store
            .claim_forwards(&owner, now, lease_until, FORWARD_BATCH)
            .await
        {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim webhook forwards");
                Vec::new()
            }
        };
        for job in &jobs {
            let sent = client
                .post(&url)
                .header("content-type", "application/json")
                .header("x-hub-signature-256", &job.signature)
                .body(job.body.clone())
                .send()
                .await;
            let (retryable, error) = match sent {
                Ok(r) if r.status().is_success() => (false, None),
                Ok(r) => {
                    let s = r.status();
                    let retryable = s.is_server_error() || s.as_u16() == 408 || s.as_u16() == 429;
                    (retryable, Some(format!("HTTP {s}")))
                }
                // reqwest's message names the URL: shown redacted (it may carry credentials).
                Err(e) => (
                    true,
                    Some(format!(
                        "{} ({})",
                        e.without_url(),
                        relay_store::redact_url(&url)
                    )),
                ),
            };
            let resolution = match error {
                None => ForwardResolution::Done,
                Some(error) if retryable => {
                    let draw: f64 = rand::random();
                    match retry::next_delay(
                        job.attempts.max(0) as u32,
                        &config.delivery.retry_schedule,
                        config.delivery.retry_jitter,
                        draw,
                        None,
                    ) {
                        Some(wait) => ForwardResolution::Retry {
                            next_at_ms: now_ms() + wait.as_millis() as i64,
                            error,
                        },
                        None => ForwardResolution::Dead { error },
                    }
                }
                Some(error) => ForwardResolution::Dead { error },
            };
            if let Err(e) = store.resolve_forward(job.id, &owner, &resolution).await {
                tracing::warn!(error = %e, "cannot record a webhook forward");
            }
        }
        if !jobs.is_empty() {
            // Forwarded: processed bodies are no longer needed.
            let w = &config.webhooks;
            let removed = remove_raw_bodies(
                store.as_ref(),
                w.raw_body_retention,
                w.failed_body_retention,
                now_ms(),
            );
            if let Err(e) = removed.await {
                tracing::warn!(error = %e, "cannot remove raw webhook bodies");
            }
            continue;
        }
        tokio::select! {
            () = tokio::time::sleep(FORWARD_POLL) => {}
            () = cancel.cancelled() => break,
        }
    }
}

/// Deletes contacts, touches, processed webhooks (Meta's and CRMs') and CRM stage-change
/// records past `attribution.retention`.
pub async fn purge_loop(store: Arc<dyn Store>, config: Config, cancel: CancellationToken) {
    loop {
        let cutoff = now_ms() - config.attribution.retention.as_millis() as i64;
        match store.purge_capture(cutoff).await {
            Ok(p) if p.contacts + p.touches + p.webhooks == 0 => {}
            Ok(p) => tracing::info!(
                contacts = p.contacts,
                touches = p.touches,
                webhooks = p.webhooks,
                "attribution data past retention purged"
            ),
            Err(e) => tracing::warn!(error = %e, "attribution purge failed"),
        }
        // CRM webhooks and stage-change records follow the same retention.
        match store.purge_crm(cutoff).await {
            Ok((0, 0)) => {}
            Ok((webhooks, changes)) => {
                tracing::info!(webhooks, changes, "CRM records past retention purged")
            }
            Err(e) => tracing::warn!(error = %e, "CRM purge failed"),
        }
        tokio::select! {
            () = tokio::time::sleep(config.retention.purge_interval) => {}
            () = cancel.cancelled() => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn secrets() -> Vec<SecretString> {
        ["first-secret", "second-secret"]
            .map(|s| SecretString::from(s.to_owned()))
            .to_vec()
    }

    #[tokio::test]
    async fn empty_secrets_and_verify_tokens_are_never_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = relay_store::connect(&url).await.unwrap();
        let config = Config {
            meta_app_secret: Some(SecretString::from(String::new())),
            meta_verify_token: Some(SecretString::from(" ".to_owned())),
            ..Config::default()
        };
        let capture = Capture::new(store, &config);
        assert_eq!(
            capture.handshake(Some("subscribe"), Some(" "), Some("1")),
            None
        );
        let refused = capture
            .receive(b"{}", Some(&sign("", b"{}")), None)
            .await
            .unwrap();
        assert_eq!(refused, Err(Refused::NotConfigured));
    }

    #[test]
    fn a_body_signed_with_any_configured_secret_verifies_and_nothing_else_does() {
        let body = br#"{"object":"page","x":"Caf\u00e9"}"#;
        for secret in ["first-secret", "second-secret"] {
            assert!(verify_signature(
                &secrets(),
                Some(&sign(secret, body)),
                body
            ));
        }
        let good = sign("first-secret", body);
        // Meta sends lower-case hex; upper case is the same digest.
        let upper = format!("sha256={}", good[7..].to_uppercase());
        assert!(verify_signature(&secrets(), Some(&upper), body));
        for header in [
            None,
            Some(sign("other", body)),
            Some(good[7..].to_owned()),
            Some("sha256=".to_owned()),
            Some(format!("sha1={}", &good[7..])),
            Some(good[..good.len() - 2].to_owned()),
        ] {
            assert!(
                !verify_signature(&secrets(), header.as_deref(), body),
                "{header:?}"
            );
        }
        assert!(!verify_signature(&[], Some(&good), body));
    }

    #[test]
    fn a_processing_retry_waits_its_schedule_entry_and_gives_up_after_the_last() {
        let schedule = [1, 10, 60].map(Duration::from_secs);
        let now = 1_000_000;
        // The middle draw is no jitter; the extremes are ±20%.
        assert_eq!(next_try_at_ms(1, &schedule, 0.5, now), Some(now + 1_000));
        assert_eq!(next_try_at_ms(2, &schedule, 0.5, now), Some(now + 10_000));
        assert_eq!(next_try_at_ms(3, &schedule, 0.0, now), Some(now + 48_000));
        assert_eq!(next_try_at_ms(3, &schedule, 1.0, now), Some(now + 72_000));
        assert_eq!(next_try_at_ms(4, &schedule, 0.5, now), None);
        assert_eq!(next_try_at_ms(1, &[], 0.5, now), None);
    }

    proptest! {
        #[test]
        fn any_change_to_the_body_breaks_the_signature(
            body in prop::collection::vec(any::<u8>(), 1..256),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let header = sign("first-secret", &body);
            prop_assert!(verify_signature(&secrets(), Some(&header), &body));
            let mut changed = body.clone();
            changed[flip.index(body.len())] ^= 1 << bit;
            prop_assert!(!verify_signature(&secrets(), Some(&header), &changed));
        }

        #[test]
        fn arbitrary_headers_never_panic_or_verify(header in ".{0,80}", body in prop::collection::vec(any::<u8>(), 0..64)) {
            prop_assert!(!verify_signature(&secrets(), Some(&header), &body));
        }
    }
}
