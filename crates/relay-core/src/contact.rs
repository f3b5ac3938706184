//! Conversions by contact: an event may name the customer (`"contact": {"phone": …}`, a PSID,
//! a conversation id, the CRM's own customer id…) instead of the channel's click identity. The
//! relay looks the contact up in its attribution store and rewrites the event into Meta's shape
//! before validation, so validation and the payload stay exactly as for any other event.
//!
//! Pure: [`plan`] reads what to look up, the service does the lookup, [`rewrite`] applies it.

use chrono::DateTime;
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::{
    Channel, Issue, IssueCode,
    pii::{self, PiiContext, PiiField},
};

/// Prefix of the relay's conversation ids.
pub const CONVERSATION_PREFIX: &str = "cv1-";

/// How a customer is named, normalised for lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CustomerRef {
    /// SHA-256 of the E.164 digits (the phone and WhatsApp `wa_id` are never kept in clear).
    PhoneHash(String),
    /// WhatsApp business-scoped user id.
    WhatsAppUserId(String),
    /// Messenger PSID or Instagram IGSID.
    ScopedId(String),
    /// The relay's conversation id.
    ConversationId(String),
    /// The CRM's own id, linked to a contact with `PUT …/customer-id`.
    CustomerId(String),
}

/// What to look up for one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactRequest {
    pub channel: Channel,
    pub asset_id: String,
    pub customer: CustomerRef,
    /// Other readings of the same customer, tried in order when `customer` is not found
    /// (a Brazilian number with and without its ninth digit).
    pub alternates: Vec<CustomerRef>,
    /// The field it came from, for messages (`contact.phone`, `user_data.mobile_number`).
    pub source: String,
    /// The raw phone number when the contact was named by phone (sent hashed as `ph`).
    pub phone: Option<String>,
    /// The event's time (Unix seconds) if it can be read; touches after it are not used.
    pub event_time: Option<i64>,
}

/// The stored contact, as far as the rewrite needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FoundContact {
    pub conversation_id: String,
    pub phone_hash: Option<String>,
    pub scoped_id: Option<String>,
}

/// The ad touch chosen for the event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FoundTouch {
    pub touch_id: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub click_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ad_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_type: Option<String>,
    pub touched_at_ms: i64,
}

/// What the service found for a request.
#[derive(Debug, Clone, Default)]
pub struct Lookup {
    pub contact: Option<FoundContact>,
    /// The most recent touch with a click id (WhatsApp) or any ad touch (Messenger, Instagram)
    /// at or before the event and within the maximum touch age.
    pub touch: Option<FoundTouch>,
    /// WhatsApp: touches in the window exist but none has a click id (Status ads).
    pub touches_without_click_id: bool,
    /// The asset may send WhatsApp events with the hashed phone only.
    pub allow_unattributed: bool,
}

/// How the event was attributed, reported in the per-event result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attribution {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub touch_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ctwa_clid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ad_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub touched_at_ms: Option<i64>,
    /// Sent with the hashed phone only: no click id was found (asset allows it).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unattributed: bool,
}

/// The keys `contact` may hold.
const CONTACT_KEYS: [&str; 7] = [
    "phone",
    "wa_id",
    "user_id",
    "psid",
    "igsid",
    "conversation_id",
    "customer_id",
];

/// Normalises a phone number (or `wa_id`) and hashes it as Meta wants `ph`.
pub fn phone_hash(raw: &str, ctx: &PiiContext) -> Result<String, String> {
    pii::normalize(PiiField::Phone, raw, ctx).map(|n| pii::sha256_hex(&n))
}

/// Brazilian mobile numbers gained a ninth digit (2012–2016), but WhatsApp kept the ids of
/// older accounts without it: `55 11 98765-4321` may arrive as `wa_id` `551187654321`. The
/// other spelling of such a number, as E.164 digits.
pub fn brazil_ninth_digit_variant(digits: &str) -> Option<String> {
    let b = digits.as_bytes();
    if !digits.starts_with("55") || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    match b.len() {
        13 if b[4] == b'9' => Some(format!("{}{}", &digits[..4], &digits[5..])),
        12 if (b'6'..=b'9').contains(&b[4]) => Some(format!("{}9{}", &digits[..4], &digits[4..])),
        _ => None,
    }
}

/// The hash of a phone number and of its other spelling, if it has one.
fn phone_hashes(raw: &str, ctx: &PiiContext, is_wa_id: bool) -> Result<Vec<String>, String> {
    let digits = match pii::normalize(PiiField::Phone, raw, ctx) {
        Ok(d) => d,
        // A wa_id is Meta's own id: its digits stand even when the metadata does not know them.
        Err(_) if is_wa_id => raw.chars().filter(char::is_ascii_digit).collect(),
        Err(why) => return Err(why),
    };
    if digits.is_empty() {
        return Err("has no digits".into());
    }
    let mut hashes = vec![pii::sha256_hex(&digits)];
    hashes.extend(brazil_ninth_digit_variant(&digits).map(|v| pii::sha256_hex(&v)));
    Ok(hashes)
}

/// A `wa_id` is E.164 digits already; when the phone metadata does not know the number it is
/// still Meta's own id for the customer, so its digits are hashed as they are.
pub fn wa_id_hash(wa_id: &str, ctx: &PiiContext) -> Option<String> {
    let digits: String = wa_id.chars().filter(char::is_ascii_digit).collect();
    if digits.is_empty() {
        return None;
    }
    Some(phone_hash(&format!("+{digits}"), ctx).unwrap_or_else(|_| pii::sha256_hex(&digits)))
}

/// Reads the contact of an event, if it names one. `Ok(None)`: the event carries its own
/// identity and needs no lookup.
pub fn plan(event: &Value, ctx: &PiiContext) -> Result<Option<ContactRequest>, Vec<Issue>> {
    let Some(obj) = event.as_object() else {
        return Ok(None);
    };
    let user_data = obj.get("user_data").and_then(Value::as_object);
    let mobile = user_data.and_then(|u| u.get("mobile_number"));
    let contact = obj.get("contact");
    if contact.is_none() && mobile.is_none() {
        return Ok(None);
    }
    let mut errors = Vec::new();
    let channel = channel_of(obj, user_data);
    let Some(channel) = channel else {
        errors.push(Issue::new(
            IssueCode::MissingField,
            "messaging_channel",
            "is required with a contact: whatsapp, messenger or instagram",
        ));
        return Err(errors);
    };
    let asset_id = user_data.and_then(|u| {
        id_of(u, channel.asset_field()).or_else(|| {
            (channel == Channel::Instagram)
                .then(|| id_of(u, "ig_account_id"))
                .flatten()
        })
    });
    let Some(asset_id) = asset_id else {
        return Err(vec![Issue::new(
            IssueCode::MissingIdentity,
            format!("user_data.{}", channel.asset_field()),
            format!(
                "a conversion by contact needs the business asset ({}) to find the contact",
                channel.asset_field()
            ),
        )]);
    };
    // The click identity, when already present, wins: nothing to look up.
    if user_data.is_some_and(|u| id_of(u, channel.click_field()).is_some()) {
        return Ok(None);
    }

    let (key, value, source) = match contact {
        Some(Value::Object(c)) => {
            let present: Vec<(&str, &Value)> = c
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.as_str(), v))
                .collect();
            for (k, _) in &present {
                if !CONTACT_KEYS.contains(k) {
                    errors.push(Issue::new(
                        IssueCode::InvalidValue,
                        format!("contact.{k}"),
                        format!(
                            "is not a contact key; use one of {}",
                            CONTACT_KEYS.join(", ")
                        ),
                    ));
                }
            }
            let known: Vec<&(&str, &Value)> = present
                .iter()
                .filter(|(k, _)| CONTACT_KEYS.contains(k))
                .collect();
            match known.as_slice() {
                [(k, v)] => (k.to_string(), (*v).clone(), format!("contact.{k}")),
                [] => {
                    errors.push(Issue::new(
                        IssueCode::MissingField,
                        "contact",
                        format!("names no customer; give one of {}", CONTACT_KEYS.join(", ")),
                    ));
                    return Err(errors);
                }
                _ => {
                    errors.push(Issue::new(
                        IssueCode::ConflictingFields,
                        "contact",
                        "names the customer more than once; give exactly one key",
                    ));
                    return Err(errors);
                }
            }
        }
        Some(other) if !other.is_null() => {
            return Err(vec![Issue::new(
                IssueCode::InvalidType,
                "contact",
                "must be an object such as {\"phone\": \"+55 11 98765-4321\"}",
            )]);
        }
        _ => (
            "phone".to_owned(),
            mobile.cloned().unwrap_or(Value::Null),
            "user_data.mobile_number".to_owned(),
        ),
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let Some(value) = (match &value {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }) else {
        return Err(vec![Issue::new(
            IssueCode::InvalidType,
            source,
            "must be a non-empty string",
        )]);
    };
    let wrong_channel = |expected: Channel| {
        Issue::new(
            IssueCode::ConflictingFields,
            source.clone(),
            format!("names a {expected} customer but the event is for {channel}"),
        )
    };
    let mut phone = None;
    let mut alternates = Vec::new();
    let customer = match key.as_str() {
        "phone" | "wa_id" => {
            if channel != Channel::WhatsApp {
                return Err(vec![wrong_channel(Channel::WhatsApp)]);
            }
            if key == "phone" {
                phone = Some(value.clone());
            }
            let raw = if key == "wa_id" && !value.starts_with('+') {
                format!("+{value}")
            } else {
                value.clone()
            };
            match phone_hashes(&raw, ctx, key == "wa_id") {
                Ok(mut hashes) => {
                    alternates = hashes
                        .split_off(1)
                        .into_iter()
                        .map(CustomerRef::PhoneHash)
                        .collect();
                    CustomerRef::PhoneHash(hashes.remove(0))
                }
                Err(why) => {
                    return Err(vec![Issue::new(
                        IssueCode::InvalidValue,
                        source,
                        format!("is not a usable phone number: it {why}"),
                    )]);
                }
            }
        }
        "user_id" => {
            if channel != Channel::WhatsApp {
                return Err(vec![wrong_channel(Channel::WhatsApp)]);
            }
            CustomerRef::WhatsAppUserId(value)
        }
        "psid" | "igsid" => {
            let expected = if key == "psid" {
                Channel::Messenger
            } else {
                Channel::Instagram
            };
            if channel != expected {
                return Err(vec![wrong_channel(expected)]);
            }
            CustomerRef::ScopedId(value)
        }
        "conversation_id" => CustomerRef::ConversationId(value),
        _ => CustomerRef::CustomerId(value),
    };
    Ok(Some(ContactRequest {
        channel,
        asset_id,
        customer,
        alternates,
        source,
        phone,
        event_time: event_time_of(obj),
    }))
}

/// Candidate readings of a customer segment of a lookup URL, tried in order. A `kind:` prefix
/// (`phone:`, `wa_id:`, `user_id:`, `psid:`, `igsid:`, `conversation:`, `customer:`) makes it
/// exact; otherwise digits are a phone (WhatsApp) or a scoped id, `cv1-…` a conversation id,
/// `CC.…` a WhatsApp user id, and anything may be a CRM customer id.
pub fn lookup_candidates(channel: Channel, segment: &str, ctx: &PiiContext) -> Vec<CustomerRef> {
    let segment = segment.trim();
    if let Some((kind, rest)) = segment.split_once(':') {
        let rest = rest.trim().to_owned();
        let exact = match kind {
            "phone" | "wa_id" => {
                // A wa_id always carries its country code; a phone may rely on the region.
                let raw = if kind == "wa_id" && !rest.starts_with('+') {
                    format!("+{rest}")
                } else {
                    rest.clone()
                };
                let hashes = phone_hashes(&raw, ctx, kind == "wa_id").unwrap_or_default();
                if !hashes.is_empty() {
                    return hashes.into_iter().map(CustomerRef::PhoneHash).collect();
                }
                None
            }
            "user_id" => Some(CustomerRef::WhatsAppUserId(rest)),
            "psid" | "igsid" => Some(CustomerRef::ScopedId(rest)),
            "conversation" | "conversation_id" => Some(CustomerRef::ConversationId(rest)),
            "customer" | "customer_id" => Some(CustomerRef::CustomerId(rest)),
            _ => None,
        };
        if let Some(exact) = exact {
            return vec![exact];
        }
    }
    let mut candidates = Vec::new();
    if segment.starts_with(CONVERSATION_PREFIX) {
        candidates.push(CustomerRef::ConversationId(segment.to_owned()));
    }
    let phoneish = segment.starts_with('+')
        || (!segment.is_empty()
            && segment
                .chars()
                .all(|c| c.is_ascii_digit() || " -().".contains(c)));
    match channel {
        Channel::WhatsApp => {
            if phoneish {
                // Read as a phone; digits no metadata knows may still be a wa_id.
                if let Ok(hashes) = phone_hashes(segment, ctx, true) {
                    candidates.extend(hashes.into_iter().map(CustomerRef::PhoneHash));
                }
            }
            if segment.contains('.') && !phoneish {
                candidates.push(CustomerRef::WhatsAppUserId(segment.to_owned()));
            }
        }
        Channel::Messenger | Channel::Instagram => {
            if segment.bytes().all(|b| b.is_ascii_digit()) && !segment.is_empty() {
                candidates.push(CustomerRef::ScopedId(segment.to_owned()));
            }
        }
    }
    candidates.push(CustomerRef::CustomerId(segment.to_owned()));
    candidates
}

/// Rewrites the event with what the lookup found: the channel identity in `user_data`, the
/// contact fields removed. The error is the event's `no_attribution` rejection.
pub fn rewrite(
    event: &Value,
    request: &ContactRequest,
    lookup: &Lookup,
) -> Result<(Value, Attribution), Issue> {
    let mut out = event.clone();
    let obj = out.as_object_mut().expect("plan only accepts objects");
    obj.remove("contact");
    if obj.get("messaging_channel").is_none() {
        obj.insert("messaging_channel".into(), json!(request.channel.as_str()));
    }
    let user_data = obj
        .entry("user_data")
        .or_insert_with(|| Value::Object(Map::new()));
    let user_data = user_data.as_object_mut().expect("plan saw an object");
    user_data.remove("mobile_number");

    let click_path = format!("user_data.{}", request.channel.click_field());
    let no_attribution = |reason: String| {
        Issue::new(
            IssueCode::NoAttribution,
            click_path.clone(),
            format!("cannot be filled from {}: {reason}", request.source),
        )
    };
    let conversation_id = lookup.contact.as_ref().map(|c| c.conversation_id.clone());
    let mut attribution = Attribution {
        conversation_id,
        touch_id: lookup.touch.as_ref().map(|t| t.touch_id),
        ctwa_clid: None,
        ad_id: lookup.touch.as_ref().and_then(|t| t.ad_id.clone()),
        touched_at_ms: lookup.touch.as_ref().map(|t| t.touched_at_ms),
        unattributed: false,
    };
    let mut phone_hash = None;
    match request.channel {
        Channel::WhatsApp => {
            phone_hash = lookup.contact.as_ref().and_then(|c| c.phone_hash.clone());
            match lookup.touch.as_ref().and_then(|t| t.click_id.clone()) {
                Some(click) => {
                    user_data.insert("ctwa_clid".into(), json!(click));
                    attribution.ctwa_clid = Some(click);
                }
                None => {
                    let has_phone = request.phone.is_some() || phone_hash.is_some();
                    if !(lookup.allow_unattributed && has_phone) {
                        let reason = if lookup.contact.is_none() {
                            "no conversation with this customer was captured from the webhooks \
                             (the contact is unknown)"
                                .to_owned()
                        } else if lookup.touches_without_click_id {
                            "the customer's ad touches carry no click id (WhatsApp Status ads \
                             have none); the asset does not allow sending with the hashed phone only"
                                .to_owned()
                        } else {
                            "the customer has no ad touch with a click id at or before the \
                             event time within the maximum touch age"
                                .to_owned()
                        };
                        return Err(no_attribution(reason));
                    }
                    attribution.unattributed = true;
                    attribution.touch_id = None;
                    attribution.ad_id = None;
                    attribution.touched_at_ms = None;
                }
            }
        }
        Channel::Messenger | Channel::Instagram => {
            let scoped = match &request.customer {
                CustomerRef::ScopedId(id) => Some(id.clone()),
                _ => lookup.contact.as_ref().and_then(|c| c.scoped_id.clone()),
            };
            let Some(scoped) = scoped else {
                return Err(no_attribution(
                    "no conversation with this customer was captured from the webhooks \
                     (the contact is unknown)"
                        .into(),
                ));
            };
            user_data.insert(request.channel.click_field().into(), json!(scoped));
        }
    }
    // The phone also goes to Meta, hashed, as `ph` (unless the client sent its own).
    if !user_data.contains_key("ph") {
        if let Some(phone) = &request.phone {
            user_data.insert("ph".into(), json!(phone));
        } else if let Some(hash) = phone_hash {
            user_data.insert("ph".into(), json!(hash));
            mark_pre_hashed(obj, "ph");
        }
    }
    Ok((out, attribution))
}

fn mark_pre_hashed(obj: &mut Map<String, Value>, key: &str) {
    match obj.get_mut("pre_hashed") {
        Some(Value::Bool(true)) => {}
        Some(Value::Array(keys)) => {
            if !keys.iter().any(|k| k == key) {
                keys.push(json!(key));
            }
        }
        _ => {
            obj.insert("pre_hashed".into(), json!([key]));
        }
    }
}

fn id_of(map: &Map<String, Value>, key: &str) -> Option<String> {
    match map.get(key)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn channel_of(obj: &Map<String, Value>, user_data: Option<&Map<String, Value>>) -> Option<Channel> {
    if let Some(c) = obj.get("messaging_channel").and_then(Value::as_str) {
        return c.trim().to_ascii_lowercase().parse().ok();
    }
    let u = user_data?;
    let present: Vec<Channel> = Channel::ALL
        .into_iter()
        .filter(|c| {
            u.contains_key(c.asset_field())
                || (*c == Channel::Instagram && u.contains_key("ig_account_id"))
        })
        .collect();
    match present.as_slice() {
        [only] => Some(*only),
        _ => None,
    }
}

/// `event_time` as validation reads it (seconds, a string of seconds, RFC 3339).
fn event_time_of(obj: &Map<String, Value>) -> Option<i64> {
    match obj.get("event_time")? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => {
            let s = s.trim();
            s.parse()
                .ok()
                .or_else(|| DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp()))
        }
        _ => None,
    }
}

/// The relay's conversation id for a customer of an asset: derived from the identity it was
/// first seen with, so concurrent first sightings agree on it.
pub fn conversation_id(channel: Channel, asset_id: &str, first_identity: &str) -> String {
    let digest = pii::sha256_hex(&format!(
        "{}\n{asset_id}\n{first_identity}",
        channel.as_str()
    ));
    format!("{CONVERSATION_PREFIX}{}", &digest[..32])
}
