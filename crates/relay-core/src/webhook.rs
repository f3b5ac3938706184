//! Meta messaging webhooks, parsed into what attribution needs: who wrote to which business
//! asset, when, and through which ad (spec §4.4–§4.6). Pure: bytes in, facts out.
//!
//! Shapes understood: WhatsApp Cloud API `messages`, `automatic_events` and `user_id_update`
//! (business-scoped user id rotation; its shape is assumed, see the webhook fixtures'
//! README), the older
//! On-Premises `messages` shape (bare or in a `data[]` wrapper), Messenger `messaging`
//! (messages, `messaging_referrals`, `messaging_postbacks`) and Instagram `messaging`.
//! Unknown objects, fields and event kinds are skipped, never an error: Meta adds fields often.
//! The only errors are a body that is not a JSON object, and an On-Premises payload without a
//! WABA id to file it under.
//!
//! Each message (or automatic event, or user id change) stands alone: one with a NUL character
//! or a field over its length limit ([`MAX_ID_BYTES`], [`MAX_TEXT_BYTES`]) is left out with
//! the reason in [`Parsed::skipped`], and the others are kept. So nothing a database cannot
//! store (PostgreSQL refuses NUL in text, and index rows over ~2.7 kB) gets past here.

use serde_json::{Map, Value};

use crate::{Channel, event_name::BUSINESS_MESSAGING_EVENTS, money};

/// Unix seconds beyond this are taken for milliseconds.
const MILLIS_THRESHOLD: i64 = 100_000_000_000;

/// Longest identifier kept (ids, click ids, event names), in bytes. Meta's are far shorter
/// (a `ctwa_clid` is ~100 characters); three of these fit a PostgreSQL index row.
pub const MAX_ID_BYTES: usize = 512;
/// Longest descriptive text kept (headline, body, URLs, `ref`, `custom_data`), in bytes.
pub const MAX_TEXT_BYTES: usize = 8192;

/// Everything a webhook delivery said that attribution keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    /// Messages, referrals and postbacks from customers, in payload order.
    pub inbound: Vec<Inbound>,
    /// Meta-detected WhatsApp conversions (`automatic_events`).
    pub automatic_events: Vec<AutomaticEvent>,
    /// WhatsApp business-scoped user ids that changed (`user_id_update`).
    pub user_id_updates: Vec<UserIdUpdate>,
    /// The channel of the delivery's `object` (On-Premises payloads: WhatsApp).
    pub channel: Option<Channel>,
    /// Items left out because a field cannot be kept, each with where and why.
    pub skipped: Vec<Skipped>,
}

/// An item of a delivery left out, e.g. `entry[1].changes[0].value.messages[0]`: `ctwa_clid is
/// 1048576 bytes, over the 512-byte limit`. Never quotes the value (it may be personal data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Where in the body: a JSON path.
    pub at: String,
    pub reason: String,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.at, self.reason)
    }
}

impl Parsed {
    fn push_inbound(&mut self, at: String, inbound: Inbound) {
        let r = inbound.referral.clone().unwrap_or_default();
        let c = &inbound.customer;
        match storable(&[
            ("asset id", Some(&inbound.asset_id), MAX_ID_BYTES),
            ("message id", Some(&inbound.message_id), MAX_ID_BYTES),
            ("wa_id", c.wa_id.as_ref(), MAX_ID_BYTES),
            ("user_id", c.user_id.as_ref(), MAX_ID_BYTES),
            ("sender id", c.scoped_id.as_ref(), MAX_ID_BYTES),
            ("ctwa_clid", r.click_id.as_ref(), MAX_ID_BYTES),
            ("ad id", r.ad_id.as_ref(), MAX_ID_BYTES),
            ("source type", r.source_type.as_ref(), MAX_ID_BYTES),
            ("media type", r.media_type.as_ref(), MAX_ID_BYTES),
            ("source_url", r.source_url.as_ref(), MAX_TEXT_BYTES),
            ("headline", r.headline.as_ref(), MAX_TEXT_BYTES),
            ("body", r.body.as_ref(), MAX_TEXT_BYTES),
            ("media url", r.media_url.as_ref(), MAX_TEXT_BYTES),
            ("ref", r.ref_param.as_ref(), MAX_TEXT_BYTES),
        ]) {
            Ok(()) => self.inbound.push(inbound),
            Err(reason) => self.skipped.push(Skipped { at, reason }),
        }
    }

    fn push_automatic_event(&mut self, at: String, event: AutomaticEvent) {
        let custom = event.custom_data.as_ref().map(Value::to_string);
        let checked = storable(&[
            ("WABA id", Some(&event.waba_id), MAX_ID_BYTES),
            ("id", Some(&event.message_id), MAX_ID_BYTES),
            ("event_name", Some(&event.event_name), MAX_ID_BYTES),
            ("ctwa_clid", event.ctwa_clid.as_ref(), MAX_ID_BYTES),
            ("custom_data", custom.as_ref(), MAX_TEXT_BYTES),
        ]);
        // Serialised, a NUL inside `custom_data` is the escape `\u0000`.
        let checked = checked.and_then(|()| match custom {
            Some(c) if c.contains("\\u0000") => Err("custom_data contains a NUL character".into()),
            _ => Ok(()),
        });
        match checked {
            Ok(()) => self.automatic_events.push(event),
            Err(reason) => self.skipped.push(Skipped { at, reason }),
        }
    }

    fn push_user_id_update(&mut self, at: String, update: UserIdUpdate) {
        match storable(&[
            ("WABA id", Some(&update.waba_id), MAX_ID_BYTES),
            ("previous user id", Some(&update.previous), MAX_ID_BYTES),
            ("current user id", Some(&update.current), MAX_ID_BYTES),
        ]) {
            Ok(()) => self.user_id_updates.push(update),
            Err(reason) => self.skipped.push(Skipped { at, reason }),
        }
    }
}

/// `Err` naming the first field that holds a NUL or is longer than its limit.
fn storable(fields: &[(&str, Option<&String>, usize)]) -> Result<(), String> {
    for (name, value, limit) in fields {
        let Some(value) = value else { continue };
        if value.contains('\0') {
            return Err(format!("{name} contains a NUL character"));
        }
        if value.len() > *limit {
            return Err(format!(
                "{name} is {} bytes, over the {limit}-byte limit",
                value.len()
            ));
        }
    }
    Ok(())
}

/// A WhatsApp customer's business-scoped user id replaced by a new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserIdUpdate {
    pub waba_id: String,
    pub previous: String,
    pub current: String,
    /// Unix milliseconds, 0 when the payload has no time.
    pub timestamp_ms: i64,
}

/// The customer's identities as one webhook names them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CustomerIds {
    /// WhatsApp: the phone number in E.164 digits (may be withheld since 2026).
    pub wa_id: Option<String>,
    /// WhatsApp: the business-scoped user id (`user_id`, e.g. `US.1349…`).
    pub user_id: Option<String>,
    /// Messenger PSID or Instagram IGSID (`sender.id`).
    pub scoped_id: Option<String>,
}

impl CustomerIds {
    pub fn is_empty(&self) -> bool {
        self.wa_id.is_none() && self.user_id.is_none() && self.scoped_id.is_none()
    }
}

/// One message (or referral, or postback) from a customer to a business asset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    pub channel: Channel,
    /// WABA id, Page id or Instagram account id.
    pub asset_id: String,
    pub customer: CustomerIds,
    /// `wamid…` / `mid` — or, for referrals without a message, a stable id made from the
    /// sender and the time so a redelivery maps to the same id.
    pub message_id: String,
    /// When Meta says it happened, Unix milliseconds (0 when the payload has no time).
    pub timestamp_ms: i64,
    /// The ad (or link) the customer came from, when the payload names one.
    pub referral: Option<Referral>,
}

/// An ad or link referral. Fields are as Meta sent them; none is invented.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Referral {
    /// WhatsApp `ctwa_clid` (absent for Status ads). Never filled from `source_id`.
    pub click_id: Option<String>,
    /// WhatsApp `source_id`, Messenger/Instagram `ad_id`.
    pub ad_id: Option<String>,
    /// WhatsApp `source_type` (`ad`, `post`), Messenger/Instagram `source` (`ADS`, `SHORTLINK`).
    pub source_type: Option<String>,
    pub source_url: Option<String>,
    /// WhatsApp `headline`, Messenger/Instagram `ads_context_data.ad_title`.
    pub headline: Option<String>,
    pub body: Option<String>,
    pub media_type: Option<String>,
    /// Image or video URL of the ad.
    pub media_url: Option<String>,
    /// Messenger/Instagram `ref` parameter.
    pub ref_param: Option<String>,
}

/// A Meta-detected conversion from the WhatsApp `automatic_events` webhook field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutomaticEvent {
    pub waba_id: String,
    /// The message Meta detected it in (`id`).
    pub message_id: String,
    /// `LeadSubmitted` or `Purchase`, spelled so whatever letter case or `_` Meta used
    /// (`purchase`, `lead_submitted`); any other name as sent.
    pub event_name: String,
    /// Unix seconds.
    pub timestamp: i64,
    pub ctwa_clid: Option<String>,
    /// `{currency, value}` when Meta sent them, untouched: `value` is in thousandths, as
    /// the webhook has it ([`automatic_event_json`] converts it).
    pub custom_data: Option<Value>,
}

/// Why a signed payload cannot be used. Kept with the stored webhook for inspection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("the body is JSON but not an object")]
    NotAnObject,
    #[error(
        "an On-Premises payload carries no WABA id; post it to /webhooks/meta?waba_id=<WABA id>"
    )]
    OnPremisesWithoutWaba,
}

/// Parses one webhook body. `waba_hint` files On-Premises payloads, which carry no WABA id.
pub fn parse(body: &[u8], waba_hint: Option<&str>) -> Result<Parsed, ParseError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| ParseError::NotJson(e.to_string()))?;
    let Value::Object(root) = value else {
        return Err(ParseError::NotAnObject);
    };
    let mut parsed = Parsed::default();
    match root.get("object").and_then(Value::as_str) {
        Some("whatsapp_business_account") => {
            parsed.channel = Some(Channel::WhatsApp);
            whatsapp_cloud(&root, &mut parsed);
        }
        Some("page") => {
            parsed.channel = Some(Channel::Messenger);
            messaging(&root, Channel::Messenger, &mut parsed);
        }
        Some("instagram") => {
            parsed.channel = Some(Channel::Instagram);
            messaging(&root, Channel::Instagram, &mut parsed);
        }
        Some(_) => {}
        // No `object`: the On-Premises client's shape, bare or wrapped in `data[]`.
        None => {
            let parts: Vec<(String, &Map<String, Value>)> = match root.get("data") {
                Some(Value::Array(_)) => indexed(&root, "data")
                    .map(|(i, part)| (format!("data[{i}]."), part))
                    .collect(),
                _ => vec![(String::new(), &root)],
            };
            let has_messages = parts.iter().any(|(_, p)| p.get("messages").is_some());
            if has_messages {
                parsed.channel = Some(Channel::WhatsApp);
                let waba = waba_hint
                    .map(str::trim)
                    .filter(|w| !w.is_empty())
                    .ok_or(ParseError::OnPremisesWithoutWaba)?;
                for (at, part) in parts {
                    whatsapp_value(&at, waba, part, &mut parsed);
                }
            }
        }
    }
    Ok(parsed)
}

fn array<'a>(map: &'a Map<String, Value>, key: &str) -> impl Iterator<Item = &'a Value> {
    map.get(key).and_then(Value::as_array).into_iter().flatten()
}

fn objects<'a>(
    map: &'a Map<String, Value>,
    key: &str,
) -> impl Iterator<Item = &'a Map<String, Value>> {
    array(map, key).filter_map(Value::as_object)
}

/// The objects of an array with their index in it (for `Skipped::at`).
fn indexed<'a>(
    map: &'a Map<String, Value>,
    key: &str,
) -> impl Iterator<Item = (usize, &'a Map<String, Value>)> {
    array(map, key)
        .enumerate()
        .filter_map(|(i, v)| Some((i, v.as_object()?)))
}

/// A string or integer id, trimmed; empty is absent.
fn id(map: &Map<String, Value>, key: &str) -> Option<String> {
    match map.get(key)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn text(map: &Map<String, Value>, key: &str) -> Option<String> {
    match map.get(key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// Seconds or milliseconds, as a number or a string, into milliseconds.
fn time_ms(map: &Map<String, Value>, key: &str) -> Option<i64> {
    let raw = match map.get(key)? {
        Value::Number(n) => n.as_i64()?,
        Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    if raw <= 0 {
        return None;
    }
    Some(if raw >= MILLIS_THRESHOLD {
        raw
    } else {
        raw.saturating_mul(1000)
    })
}

fn whatsapp_cloud(root: &Map<String, Value>, parsed: &mut Parsed) {
    for (e, entry) in indexed(root, "entry") {
        let Some(waba) = id(entry, "id") else {
            continue;
        };
        for (c, change) in indexed(entry, "changes") {
            let Some(value) = change.get("value").and_then(Value::as_object) else {
                continue;
            };
            let at = format!("entry[{e}].changes[{c}].value.");
            match change.get("field").and_then(Value::as_str) {
                Some("messages") => whatsapp_value(&at, &waba, value, parsed),
                Some("automatic_events") => automatic_events(&at, &waba, value, parsed),
                _ => {}
            }
            // Wherever it comes (its own field, or inside `messages`): the shape is assumed.
            user_id_updates(&at, &waba, change, value, parsed);
        }
    }
}

/// The `value` of a Cloud API `messages` change, or one On-Premises payload: same inner shape.
/// `at` is its JSON path, for the items skipped.
fn whatsapp_value(at: &str, waba: &str, value: &Map<String, Value>, parsed: &mut Parsed) {
    let contacts: Vec<CustomerIds> = objects(value, "contacts")
        .map(|c| CustomerIds {
            wa_id: id(c, "wa_id"),
            user_id: id(c, "user_id"),
            scoped_id: None,
        })
        .collect();
    for (m, message) in indexed(value, "messages") {
        let Some(message_id) = id(message, "id") else {
            continue;
        };
        let from = id(message, "from");
        let from_user_id = id(message, "from_user_id");
        // The contact this message is from: matched by number or user id, else the only one.
        let matched = contacts
            .iter()
            .find(|c| {
                (from.is_some() && c.wa_id == from)
                    || (from_user_id.is_some() && c.user_id == from_user_id)
            })
            .or(if contacts.len() == 1 {
                contacts.first()
            } else {
                None
            });
        let mut customer = matched.cloned().unwrap_or_default();
        if customer.wa_id.is_none() {
            // `from` is the number unless it is a user id (usernames, 2026).
            customer.wa_id = from.filter(|f| f.bytes().all(|b| b.is_ascii_digit()));
        }
        if customer.user_id.is_none() {
            customer.user_id = from_user_id;
        }
        if customer.is_empty() {
            continue;
        }
        let referral = message
            .get("referral")
            .and_then(Value::as_object)
            .map(whatsapp_referral);
        parsed.push_inbound(
            format!("{at}messages[{m}]"),
            Inbound {
                channel: Channel::WhatsApp,
                asset_id: waba.to_owned(),
                customer,
                message_id,
                timestamp_ms: time_ms(message, "timestamp").unwrap_or(0),
                referral,
            },
        );
    }
}

fn whatsapp_referral(r: &Map<String, Value>) -> Referral {
    let media_type = text(r, "media_type");
    // A video ad's referral may carry an `image_url` (a still) too: the media is the video.
    let media_url = if media_type.as_deref() == Some("video") {
        text(r, "video_url").or_else(|| text(r, "image_url"))
    } else {
        text(r, "image_url").or_else(|| text(r, "video_url"))
    };
    Referral {
        // Only ever `ctwa_clid`: `source_id` is the ad, not the click.
        click_id: id(r, "ctwa_clid"),
        ad_id: id(r, "source_id"),
        source_type: text(r, "source_type"),
        source_url: text(r, "source_url"),
        headline: text(r, "headline"),
        body: text(r, "body"),
        media_type,
        media_url,
        ref_param: None,
    }
}

fn automatic_events(at: &str, waba: &str, value: &Map<String, Value>, parsed: &mut Parsed) {
    for (i, event) in indexed(value, "automatic_events") {
        let (Some(message_id), Some(event_name)) = (id(event, "id"), text(event, "event_name"))
        else {
            continue;
        };
        let Some(timestamp_ms) = time_ms(event, "timestamp") else {
            continue;
        };
        parsed.push_automatic_event(
            format!("{at}automatic_events[{i}]"),
            AutomaticEvent {
                waba_id: waba.to_owned(),
                message_id,
                event_name: automatic_event_name(&event_name),
                timestamp: timestamp_ms / 1000,
                ctwa_clid: id(event, "ctwa_clid"),
                custom_data: event.get("custom_data").filter(|v| v.is_object()).cloned(),
            },
        );
    }
}

/// The business-messaging spelling of an automatic event's name: `purchase`, `PURCHASE` and
/// `lead_submitted` are `Purchase` and `LeadSubmitted`, so the `event_id` is the one a CRM
/// sends. Any other name is kept as sent.
pub fn automatic_event_name(raw: &str) -> String {
    let squashed: String = raw
        .trim()
        .chars()
        .filter(|c| !matches!(c, '_' | '-' | ' '))
        .collect();
    BUSINESS_MESSAGING_EVENTS
        .iter()
        .find(|name| name.eq_ignore_ascii_case(&squashed))
        .map_or_else(|| raw.trim().to_owned(), |name| (*name).to_owned())
}

/// `user_id_update` items: `value.user_id_update` as a list (or one object), or the change's
/// `value` itself when the field is `user_id_update`. Each names the old and the new id as
/// `previous`/`current` (also `previous_user_id`/`current_user_id`, `old_user_id`/
/// `new_user_id`), each a string or an object with a `user_id`. Meta's shape is not in the
/// spec; this reads the plausible spellings and skips anything else.
fn user_id_updates(
    at: &str,
    waba: &str,
    change: &Map<String, Value>,
    value: &Map<String, Value>,
    parsed: &mut Parsed,
) {
    let items: Vec<(String, &Map<String, Value>)> = match value.get("user_id_update") {
        Some(Value::Array(_)) => indexed(value, "user_id_update")
            .map(|(i, item)| (format!("{at}user_id_update[{i}]"), item))
            .collect(),
        Some(Value::Object(item)) => vec![(format!("{at}user_id_update"), item)],
        _ if change.get("field").and_then(Value::as_str) == Some("user_id_update") => {
            vec![(at.trim_end_matches('.').to_owned(), value)]
        }
        _ => return,
    };
    let user_id = |item: &Map<String, Value>, keys: &[&str]| {
        keys.iter().find_map(|key| match item.get(*key)? {
            Value::Object(inner) => id(inner, "user_id").or_else(|| id(inner, "id")),
            _ => id(item, key),
        })
    };
    for (at, item) in items {
        let previous = user_id(
            item,
            &["previous", "previous_user_id", "old_user_id", "old"],
        );
        let current = user_id(item, &["current", "current_user_id", "new_user_id", "new"]);
        let (Some(previous), Some(current)) = (previous, current) else {
            continue;
        };
        if previous == current {
            continue;
        }
        parsed.push_user_id_update(
            at,
            UserIdUpdate {
                waba_id: waba.to_owned(),
                previous,
                current,
                timestamp_ms: time_ms(item, "timestamp")
                    .or_else(|| time_ms(value, "timestamp"))
                    .unwrap_or(0),
            },
        );
    }
}

/// Messenger (`object: page`) and Instagram (`object: instagram`): `entry[].messaging[]` and
/// `entry[].standby[]`.
fn messaging(root: &Map<String, Value>, channel: Channel, parsed: &mut Parsed) {
    for (e, entry) in indexed(root, "entry") {
        let entry_id = id(entry, "id");
        // `standby`: the same events, delivered while another app owns the thread (handover).
        let items = indexed(entry, "messaging")
            .map(|(i, item)| (format!("entry[{e}].messaging[{i}]"), item))
            .chain(
                indexed(entry, "standby")
                    .map(|(i, item)| (format!("entry[{e}].standby[{i}]"), item)),
            );
        for (at, item) in items {
            let sender = item.get("sender").and_then(Value::as_object);
            let recipient = item.get("recipient").and_then(Value::as_object);
            let (Some(sender), Some(asset)) = (
                sender.and_then(|s| id(s, "id")),
                recipient.and_then(|r| id(r, "id")).or(entry_id.clone()),
            ) else {
                continue;
            };
            let message = item.get("message").and_then(Value::as_object);
            let postback = item.get("postback").and_then(Value::as_object);
            let top_referral = item.get("referral").and_then(Value::as_object);
            // Echoes are the business's own messages: the sender is the asset, not a customer.
            if sender == asset
                || entry_id.as_deref() == Some(sender.as_str())
                || message.is_some_and(|m| m.get("is_echo").and_then(Value::as_bool) == Some(true))
            {
                continue;
            }
            let referral = message
                .and_then(|m| m.get("referral"))
                .or_else(|| postback.and_then(|p| p.get("referral")))
                .and_then(Value::as_object)
                .or(top_referral)
                .map(page_referral);
            if message.is_none() && postback.is_none() && top_referral.is_none() {
                // Deliveries, reads, reactions, opt-ins…: not a customer writing in.
                continue;
            }
            let timestamp_ms = time_ms(item, "timestamp").unwrap_or(0);
            let message_id = message
                .and_then(|m| id(m, "mid"))
                .or_else(|| postback.and_then(|p| id(p, "mid")))
                .unwrap_or_else(|| {
                    let kind = if postback.is_some() {
                        "postback"
                    } else {
                        "referral"
                    };
                    format!("{kind}:{sender}:{timestamp_ms}")
                });
            parsed.push_inbound(
                at,
                Inbound {
                    channel,
                    asset_id: asset,
                    customer: CustomerIds {
                        scoped_id: Some(sender),
                        ..CustomerIds::default()
                    },
                    message_id,
                    timestamp_ms,
                    referral,
                },
            );
        }
    }
}

fn page_referral(r: &Map<String, Value>) -> Referral {
    let ads = r.get("ads_context_data").and_then(Value::as_object);
    let from_ads = |key: &str| ads.and_then(|a| text(a, key));
    let (media_type, media_url) = match (from_ads("photo_url"), from_ads("video_url")) {
        (_, Some(video)) => (Some("video".to_owned()), Some(video)),
        (Some(photo), None) => (Some("image".to_owned()), Some(photo)),
        (None, None) => (None, None),
    };
    Referral {
        click_id: None,
        ad_id: id(r, "ad_id"),
        source_type: text(r, "source"),
        source_url: None,
        headline: from_ads("ad_title"),
        body: None,
        media_type,
        media_url,
        ref_param: text(r, "ref"),
    }
}

/// The `event_id` of an automatic event: `<event_name>:<message id>`. A CRM reporting the same
/// conversion for the same message sends this id, and the relay keeps only the first.
pub fn automatic_event_id(event: &AutomaticEvent) -> String {
    format!("{}:{}", event.event_name, event.message_id)
}

/// The server event re-posting an automatic event (Meta's sample: the trigger timestamp as
/// `event_time`, `messaging_outcome_data.outcome_type = automatic_events`). `None` without a
/// click id: a WhatsApp event cannot be attributed without one.
pub fn automatic_event_json(event: &AutomaticEvent) -> Option<Value> {
    let clid = event.ctwa_clid.as_ref()?;
    let mut out = serde_json::json!({
        "event_name": event.event_name,
        "event_time": event.timestamp,
        "event_id": automatic_event_id(event),
        "action_source": "business_messaging",
        "messaging_channel": "whatsapp",
        "user_data": {
            "whatsapp_business_account_id": event.waba_id,
            "ctwa_clid": clid,
        },
        "messaging_outcome_data": {"outcome_type": "automatic_events"},
    });
    if let Some(custom) = &event.custom_data {
        out["custom_data"] = unscaled_custom_data(custom);
    }
    Some(out)
}

/// Powers of ten between the webhook's `custom_data.value` and the Conversions API's: Meta's
/// `automatic_events` reference gives the amount times 1000 (`25000` for USD 25; spec §4.4).
pub const AUTOMATIC_EVENT_VALUE_DIGITS: u32 = 3;

/// `custom_data` with `value` divided by 1000, exactly (a decimal shift, never `f64`). A value
/// that is not a number is left for validation to refuse with its own message.
fn unscaled_custom_data(custom: &Value) -> Value {
    let mut out = custom.clone();
    if let Some(value) = out.get_mut("value")
        && let Ok(mut amount) = money::parse_amount(value)
        && amount
            .set_scale(amount.scale() + AUTOMATIC_EVENT_VALUE_DIGITS)
            .is_ok()
    {
        *value = Value::Number(money::amount_to_number(amount));
    }
    out
}
