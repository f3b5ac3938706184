//! Validation: turns one submitted event (Meta's server-event JSON, plus a few conveniences)
//! into a [`MetaEvent`] Meta will accept, or into errors that name each bad field.
//!
//! Rules: a bad required field is an error; a bad optional PII value is dropped with a warning;
//! a field that is not sent for business messaging is dropped with a warning. Nothing is dropped
//! silently.

use std::{collections::BTreeMap, fmt};

use chrono::{DateTime, Datelike};
use serde_json::{Map, Value};

use crate::{
    Channel, Issue, IssueCode,
    event::{
        ACTION_SOURCE, Content, CustomData, Hashed, MessagingOutcomeData, MetaEvent,
        OriginalEventData, UserData,
    },
    event_id,
    event_name::{self, EventNameKind},
    money::{self, json_type},
    pii::{self, PiiContext, PiiField},
};

/// Meta refuses a whole request when one event is older than this.
pub const MAX_EVENT_AGE_SECS: i64 = 7 * 24 * 3600;
/// Clock skew tolerated for events stamped slightly in the future.
pub const MAX_FUTURE_SKEW_SECS: i64 = 5 * 60;
/// Longest `event_id` accepted; longer ids are more likely a mistake than a key.
pub const MAX_EVENT_ID_LEN: usize = 256;
/// Unix seconds beyond this are taken for milliseconds (year 5138 in seconds).
const MILLIS_THRESHOLD: i64 = 100_000_000_000;

/// Settings that change what validation accepts.
#[derive(Debug, Clone, Copy, Default)]
pub struct ValidationOptions {
    /// Send names other than the 14 business-messaging names instead of rejecting them.
    pub allow_custom_event_names: bool,
    /// Region for phone numbers written without a country code.
    pub default_phone_region: Option<crate::pii::PhoneRegion>,
    /// Accept WhatsApp events without `ctwa_clid` when they carry a hashed phone (`ph`): set
    /// per event for assets that allow unattributed conversions by contact.
    pub whatsapp_without_click_id: bool,
    /// Take a PII value that is already a SHA-256 hex digest as hashed, without `pre_hashed`:
    /// Meta's own endpoint (and so every Business SDK) sends PII hashed that way.
    pub sha256_passes_through: bool,
}

/// An event that passed: what to send, and what was changed or dropped on the way.
#[derive(Debug, Clone)]
pub struct Validated {
    pub event: MetaEvent,
    pub warnings: Vec<Issue>,
    /// True when the client sent no `event_id` and the relay derived one.
    pub event_id_derived: bool,
}

/// An event that cannot be sent, with every reason found.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub errors: Vec<Issue>,
    pub warnings: Vec<Issue>,
}

/// Top-level keys of Meta's server event that business-messaging events may carry.
const EVENT_KEYS: [&str; 15] = [
    "event_name",
    "event_time",
    "event_id",
    "action_source",
    "messaging_channel",
    "user_data",
    "custom_data",
    "opt_out",
    "original_event_data",
    "messaging_outcome_data",
    "customer_segmentation",
    "data_processing_options",
    "data_processing_options_country",
    "data_processing_options_state",
    // capi-relay's own: which user_data values the caller already hashed.
    "pre_hashed",
];

/// Server-event keys that only mean something for website or app events.
const WEB_APP_ONLY_KEYS: [&str; 4] = ["event_source_url", "referrer_url", "app_data", "extinfo"];

/// `user_data` identifiers Meta wants unhashed, passed through as submitted.
const UNHASHED_USER_DATA_KEYS: [&str; 7] = [
    "client_ip_address",
    "client_user_agent",
    "fbc",
    "fbp",
    "subscription_id",
    "fb_login_id",
    "lead_id",
];

const CUSTOMER_SEGMENTS: [&str; 9] = [
    "new_customer_to_business",
    "new_customer_to_business_line",
    "new_customer_to_product_area",
    "new_customer_to_medium",
    "existing_customer_to_business",
    "existing_customer_to_business_line",
    "existing_customer_to_product_area",
    "existing_customer_to_medium",
    "customer_in_loyalty_program",
];

const DELIVERY_CATEGORIES: [&str; 3] = ["in_store", "curbside", "home_delivery"];

/// Validates and normalises one event. `now_unix` is the current time in Unix seconds.
/// Whether any string (value or key) under `value` holds a NUL character, which no store can
/// keep: such an event is only validated (and refused), never looked up or stored.
pub fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(fields) => fields.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// Reports every string (value or key) under `value` that holds a NUL character.
fn find_nul(value: &Value, path: &mut String, check: &mut Check) {
    const MESSAGE: &str = "contains a NUL character (\\u0000), which cannot be stored or sent";
    match value {
        Value::String(text) if text.contains('\0') => {
            check.error(IssueCode::InvalidValue, path.as_str(), MESSAGE);
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                find_nul(item, path, check);
                path.truncate(len);
            }
        }
        Value::Object(fields) => {
            for (key, item) in fields {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&key.replace('\0', "\\u0000"));
                if key.contains('\0') {
                    check.error(IssueCode::InvalidValue, path.as_str(), MESSAGE);
                } else {
                    find_nul(item, path, check);
                }
                path.truncate(len);
            }
        }
        _ => {}
    }
}

pub fn validate_event(
    input: &Value,
    opts: &ValidationOptions,
    now_unix: i64,
) -> Result<Validated, Rejected> {
    let mut check = Check::default();
    let Some(obj) = input.as_object() else {
        check.error(
            IssueCode::NotAnObject,
            "",
            format!("an event must be a JSON object, got {}", json_type(input)),
        );
        return Err(check.into_rejected());
    };

    // PostgreSQL text cannot hold U+0000, and Meta has no use for it: refused per event, by
    // path, before anything reaches a store (one bad event never fails a commit group).
    find_nul(input, &mut String::new(), &mut check);

    for key in obj.keys() {
        if WEB_APP_ONLY_KEYS.contains(&key.as_str()) {
            check.warn(
                IssueCode::FieldDropped,
                key,
                "is for website or app events and is not sent for business messaging",
            );
        } else if !EVENT_KEYS.contains(&key.as_str()) {
            check.warn(
                IssueCode::FieldDropped,
                key,
                "is not a server-event field; it was not sent",
            );
        }
    }

    let event_name = check_event_name(obj, opts, &mut check);
    let event_time = check_event_time(obj, now_unix, &mut check);
    check_action_source(obj, &mut check);
    let pre_hashed = check_pre_hashed(obj, &mut check);
    let current_year = DateTime::from_timestamp(now_unix, 0).map_or(2100, |t| t.year());
    let pii_ctx = PiiContext {
        default_phone_region: opts.default_phone_region,
        current_year,
    };
    let (channel, user_data) = check_user_data(obj, &pre_hashed, &pii_ctx, opts, &mut check);
    let custom_data = obj
        .get("custom_data")
        .and_then(|v| check_custom_data(v, &mut check));
    if event_name.as_deref() == Some("Purchase") {
        // Only absent fields: a present but invalid one already has its own error.
        let submitted = |key: &str| {
            obj.get("custom_data")
                .and_then(|c| c.get(key))
                .is_some_and(|v| !v.is_null())
        };
        if !submitted("value") {
            check.error(
                IssueCode::MissingField,
                "custom_data.value",
                "is required for Purchase events (the amount of the sale)",
            );
        }
        if !submitted("currency") {
            check.error(
                IssueCode::MissingField,
                "custom_data.currency",
                "is required for Purchase events (an ISO 4217 code such as USD)",
            );
        }
    }
    let extras = check_extras(obj, &mut check);

    if !check.errors.is_empty() {
        return Err(check.into_rejected());
    }
    let (Some(event_name), Some(event_time), Some(channel), Some(user_data)) =
        (event_name, event_time, channel, user_data)
    else {
        unreachable!("every missing required field records an error");
    };
    let mut event = MetaEvent {
        event_name,
        event_time,
        event_id: String::new(),
        action_source: ACTION_SOURCE,
        messaging_channel: channel,
        user_data,
        custom_data,
        opt_out: extras.opt_out,
        original_event_data: extras.original_event_data,
        messaging_outcome_data: extras.messaging_outcome_data,
        customer_segmentation: extras.customer_segmentation,
        data_processing_options: extras.data_processing_options,
        data_processing_options_country: extras.data_processing_options_country,
        data_processing_options_state: extras.data_processing_options_state,
    };
    let event_id_derived = extras.event_id.is_none();
    event.event_id = match extras.event_id {
        Some(id) => id,
        None => event_id::derive(&event),
    };
    Ok(Validated {
        event,
        warnings: check.warnings,
        event_id_derived,
    })
}

#[derive(Default)]
struct Check {
    errors: Vec<Issue>,
    warnings: Vec<Issue>,
}

impl Check {
    // Paths are `Display` so that callers format them only when an issue is reported.
    fn error(&mut self, code: IssueCode, path: impl fmt::Display, message: impl Into<String>) {
        self.errors
            .push(Issue::new(code, path.to_string(), message));
    }

    fn warn(&mut self, code: IssueCode, path: impl fmt::Display, message: impl Into<String>) {
        self.warnings
            .push(Issue::new(code, path.to_string(), message));
    }

    fn into_rejected(self) -> Rejected {
        Rejected {
            errors: self.errors,
            warnings: self.warnings,
        }
    }

    fn wrong_type(&mut self, path: impl fmt::Display, expected: &str, got: &Value) {
        self.error(
            IssueCode::InvalidType,
            path,
            format!("must be {expected}, got {}", json_type(got)),
        );
    }
}

fn check_event_name(
    obj: &Map<String, Value>,
    opts: &ValidationOptions,
    check: &mut Check,
) -> Option<String> {
    let raw = match obj.get("event_name") {
        None | Some(Value::Null) => {
            check.error(
                IssueCode::MissingField,
                "event_name",
                "is required (e.g. Purchase, LeadSubmitted)",
            );
            return None;
        }
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim(),
        Some(Value::String(_)) => {
            check.error(IssueCode::InvalidValue, "event_name", "is empty");
            return None;
        }
        Some(other) => {
            check.wrong_type("event_name", "a string", other);
            return None;
        }
    };
    match event_name::classify(raw) {
        EventNameKind::BusinessMessaging(name) => Some(name.to_owned()),
        EventNameKind::Equivalent { submitted, sent_as } => {
            check.warn(
                IssueCode::EventNameMapped,
                "event_name",
                format!(
                    "{submitted:?} is sent to Meta as {sent_as:?}, its business-messaging name"
                ),
            );
            Some(sent_as.to_owned())
        }
        EventNameKind::WebOnly(name) | EventNameKind::Custom(name)
            if opts.allow_custom_event_names =>
        {
            check.warn(
                IssueCode::CustomEventName,
                "event_name",
                format!(
                    "{name:?} is not a business-messaging event name; it is sent as a custom event, \
                     which Meta may not use for ad optimisation"
                ),
            );
            Some(name)
        }
        EventNameKind::WebOnly(name) => {
            check.error(
                IssueCode::WebEventName,
                "event_name",
                format!(
                    "{name:?} is a website event with no business-messaging equivalent; Meta accepts {}",
                    event_name::BUSINESS_MESSAGING_EVENTS.join(", ")
                ),
            );
            None
        }
        EventNameKind::Custom(name) => {
            check.error(
                IssueCode::CustomEventName,
                "event_name",
                format!(
                    "{name:?} is not a business-messaging event name; use one of {} \
                     (custom names can be allowed in the configuration)",
                    event_name::BUSINESS_MESSAGING_EVENTS.join(", ")
                ),
            );
            None
        }
    }
}

fn check_event_time(obj: &Map<String, Value>, now: i64, check: &mut Check) -> Option<i64> {
    let time = match obj.get("event_time") {
        None | Some(Value::Null) => {
            check.error(
                IssueCode::MissingField,
                "event_time",
                "is required: Unix seconds (or an RFC 3339 time) of the conversion",
            );
            return None;
        }
        Some(Value::Number(n)) => match n.as_i64() {
            Some(t) => t,
            None => {
                check.error(
                    IssueCode::InvalidValue,
                    "event_time",
                    format!("{n} is not a whole number of Unix seconds"),
                );
                return None;
            }
        },
        Some(Value::String(s)) => {
            let s = s.trim();
            if let Ok(t) = s.parse::<i64>() {
                t
            } else if let Ok(t) = DateTime::parse_from_rfc3339(s) {
                t.timestamp()
            } else {
                check.error(
                    IssueCode::InvalidValue,
                    "event_time",
                    format!("{s:?} is neither Unix seconds nor an RFC 3339 time"),
                );
                return None;
            }
        }
        Some(other) => {
            check.wrong_type("event_time", "Unix seconds or an RFC 3339 string", other);
            return None;
        }
    };
    if time >= MILLIS_THRESHOLD {
        check.error(
            IssueCode::InvalidValue,
            "event_time",
            format!("{time} looks like milliseconds; Meta wants Unix seconds"),
        );
        return None;
    }
    if time < now - MAX_EVENT_AGE_SECS {
        check.error(
            IssueCode::EventTooOld,
            "event_time",
            format!(
                "is {} old; Meta refuses events older than 7 days (and the whole request with them)",
                human_duration(now - time)
            ),
        );
        return None;
    }
    if time > now + MAX_FUTURE_SKEW_SECS {
        check.error(
            IssueCode::EventInFuture,
            "event_time",
            format!(
                "is {} in the future; Meta wants the time the conversion happened",
                human_duration(time - now)
            ),
        );
        return None;
    }
    Some(time)
}

fn human_duration(secs: i64) -> String {
    match secs {
        s if s >= 86_400 => format!("{}d {}h", s / 86_400, (s % 86_400) / 3_600),
        s if s >= 3_600 => format!("{}h {}m", s / 3_600, (s % 3_600) / 60),
        s if s >= 60 => format!("{}m {}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

fn check_action_source(obj: &Map<String, Value>, check: &mut Check) {
    match obj.get("action_source") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == ACTION_SOURCE => {}
        Some(Value::String(s)) => check.error(
            IssueCode::UnsupportedActionSource,
            "action_source",
            format!(
                "{s:?} is not business_messaging; capi-relay sends click-to-message conversions only"
            ),
        ),
        Some(other) => check.wrong_type("action_source", "the string business_messaging", other),
    }
}

/// Which PII fields the caller already hashed: `true` for all, or a list of keys.
#[derive(Default)]
struct PreHashed(Vec<PiiField>);

impl PreHashed {
    fn contains(&self, field: PiiField) -> bool {
        self.0.contains(&field)
    }
}

fn check_pre_hashed(obj: &Map<String, Value>, check: &mut Check) -> PreHashed {
    match obj.get("pre_hashed") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => PreHashed::default(),
        Some(Value::Bool(true)) => PreHashed(PiiField::ALL.to_vec()),
        Some(Value::Array(keys)) => {
            let mut fields = Vec::new();
            for (i, key) in keys.iter().enumerate() {
                match key.as_str().and_then(PiiField::from_key) {
                    Some(f) => fields.push(f),
                    None => check.error(
                        IssueCode::InvalidValue,
                        format_args!("pre_hashed[{i}]"),
                        format!("{key} is not a hashed user_data key (em, ph, fn, ln, ge, db, ct, st, zp, country, external_id)"),
                    ),
                }
            }
            PreHashed(fields)
        }
        Some(other) => {
            check.wrong_type("pre_hashed", "true or a list of user_data keys", other);
            PreHashed::default()
        }
    }
}

/// An id given as a string or a JSON integer (Meta's samples show both).
fn id_value(
    map: &Map<String, Value>,
    key: &str,
    path: impl fmt::Display,
    check: &mut Check,
) -> Option<String> {
    match map.get(key)? {
        Value::Null => None,
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::String(_) => {
            check.error(IssueCode::InvalidValue, path, "is empty");
            None
        }
        Value::Number(n) if n.as_u64().is_some() => Some(n.to_string()),
        other => {
            check.wrong_type(path, "a string id", other);
            None
        }
    }
}

fn numeric_id(
    map: &Map<String, Value>,
    key: &str,
    what: &str,
    check: &mut Check,
) -> Option<String> {
    let id = id_value(map, key, format_args!("user_data.{key}"), check)?;
    if id.bytes().all(|b| b.is_ascii_digit()) {
        Some(id)
    } else {
        check.error(
            IssueCode::InvalidValue,
            format_args!("user_data.{key}"),
            format!("{id:?} is not a {what}: Meta ids are digits only"),
        );
        None
    }
}

fn check_user_data(
    obj: &Map<String, Value>,
    pre_hashed: &PreHashed,
    pii_ctx: &PiiContext,
    opts: &ValidationOptions,
    check: &mut Check,
) -> (Option<Channel>, Option<UserData>) {
    let ud = match obj.get("user_data") {
        Some(Value::Object(ud)) => ud,
        None | Some(Value::Null) => {
            check.error(
                IssueCode::MissingField,
                "user_data",
                "is required: it carries the channel identity (e.g. whatsapp_business_account_id and ctwa_clid)",
            );
            return (None, None);
        }
        Some(other) => {
            check.wrong_type("user_data", "an object", other);
            return (None, None);
        }
    };

    let mut data = UserData {
        whatsapp_business_account_id: numeric_id(
            ud,
            "whatsapp_business_account_id",
            "WhatsApp Business Account id",
            check,
        ),
        ctwa_clid: id_value(ud, "ctwa_clid", "user_data.ctwa_clid", check),
        page_id: numeric_id(ud, "page_id", "Page id", check),
        page_scoped_user_id: numeric_id(
            ud,
            "page_scoped_user_id",
            "page-scoped user id (PSID)",
            check,
        ),
        instagram_business_account_id: numeric_id(
            ud,
            "instagram_business_account_id",
            "Instagram account id",
            check,
        ),
        ig_sid: numeric_id(ud, "ig_sid", "Instagram-scoped id (IGSID)", check),
        ..UserData::default()
    };
    // Meta's customer-information page calls the Instagram account `ig_account_id`.
    if let Some(alias) = numeric_id(ud, "ig_account_id", "Instagram account id", check) {
        match &data.instagram_business_account_id {
            Some(id) if *id != alias => check.error(
                IssueCode::ConflictingFields,
                "user_data.ig_account_id",
                format!(
                    "{alias:?} differs from instagram_business_account_id {id:?}; send one of them"
                ),
            ),
            _ => data.instagram_business_account_id = Some(alias),
        }
    }

    let channel = resolve_channel(obj, &data, check);
    if let Some(channel) = channel {
        let phone_only = opts.whatsapp_without_click_id
            && channel == Channel::WhatsApp
            && ud.get("ph").is_some_and(|v| !v.is_null());
        require_identity(channel, &mut data, phone_only, check);
    }

    for (key, value) in ud {
        if let Some(field) = PiiField::from_key(key) {
            let hashed = if pre_hashed.contains(field) {
                Prehash::Marked
            } else if opts.sha256_passes_through {
                Prehash::Sha256PassesThrough
            } else {
                Prehash::No
            };
            let digests = hash_pii_values(field, value, hashed, pii_ctx, check);
            *data.pii_mut(field) = Hashed::from_digests(digests);
        } else if UNHASHED_USER_DATA_KEYS.contains(&key.as_str()) {
            if let Some(v) = id_value(ud, key, format_args!("user_data.{key}"), check) {
                data.unhashed.insert(key.clone(), v);
            }
        } else if !is_identity_key(key) {
            check.warn(
                IssueCode::FieldDropped,
                format_args!("user_data.{key}"),
                "is not a customer-information field Meta accepts for business messaging; it was not sent",
            );
        }
    }
    (channel, Some(data))
}

fn is_identity_key(key: &str) -> bool {
    key == "ig_account_id"
        || Channel::ALL
            .iter()
            .any(|c| c.asset_field() == key || c.click_field() == key)
}

fn resolve_channel(
    obj: &Map<String, Value>,
    data: &UserData,
    check: &mut Check,
) -> Option<Channel> {
    match obj.get("messaging_channel") {
        Some(Value::String(s)) => match s.trim().to_ascii_lowercase().parse::<Channel>() {
            Ok(c) => Some(c),
            Err(message) => {
                check.error(IssueCode::InvalidValue, "messaging_channel", message);
                None
            }
        },
        None | Some(Value::Null) => {
            let present: Vec<Channel> = Channel::ALL
                .into_iter()
                .filter(|c| asset_and_click(*c, data).iter().any(Option::is_some))
                .collect();
            if let [only] = present.as_slice() {
                check.warn(
                    IssueCode::ChannelInferred,
                    "messaging_channel",
                    format!("was missing; {only} was inferred from user_data"),
                );
                Some(*only)
            } else {
                check.error(
                    IssueCode::MissingField,
                    "messaging_channel",
                    "is required: whatsapp, messenger or instagram",
                );
                None
            }
        }
        Some(other) => {
            check.wrong_type("messaging_channel", "a string", other);
            None
        }
    }
}

fn asset_and_click(channel: Channel, data: &UserData) -> [Option<&String>; 2] {
    match channel {
        Channel::WhatsApp => [
            data.whatsapp_business_account_id.as_ref(),
            data.ctwa_clid.as_ref(),
        ],
        Channel::Messenger => [data.page_id.as_ref(), data.page_scoped_user_id.as_ref()],
        Channel::Instagram => [
            data.instagram_business_account_id.as_ref(),
            data.ig_sid.as_ref(),
        ],
    }
}

/// Checks the channel's id pair and drops ids of other channels (they would confuse matching).
fn require_identity(channel: Channel, data: &mut UserData, phone_only: bool, check: &mut Check) {
    let [asset, click] = asset_and_click(channel, data);
    let (asset_missing, click_missing) = (asset.is_none(), click.is_none() && !phone_only);
    let describe = |field: &str| match field {
        "whatsapp_business_account_id" => "the WhatsApp Business Account id",
        "ctwa_clid" => "the click id from the message's ad referral",
        "page_id" => "the Facebook Page id",
        "page_scoped_user_id" => "the customer's page-scoped id (PSID)",
        "instagram_business_account_id" => "the Instagram account id",
        _ => "the customer's Instagram-scoped id (IGSID)",
    };
    for (missing, field) in [
        (asset_missing, channel.asset_field()),
        (click_missing, channel.click_field()),
    ] {
        if missing {
            check.error(
                IssueCode::MissingIdentity,
                format_args!("user_data.{field}"),
                format!("{channel} events need {} ({field})", describe(field)),
            );
        }
    }
    for other in Channel::ALL.into_iter().filter(|c| *c != channel) {
        for field in [other.asset_field(), other.click_field()] {
            let slot = match field {
                "whatsapp_business_account_id" => &mut data.whatsapp_business_account_id,
                "ctwa_clid" => &mut data.ctwa_clid,
                "page_id" => &mut data.page_id,
                "page_scoped_user_id" => &mut data.page_scoped_user_id,
                "instagram_business_account_id" => &mut data.instagram_business_account_id,
                _ => &mut data.ig_sid,
            };
            if slot.take().is_some() {
                check.warn(
                    IssueCode::FieldDropped,
                    format_args!("user_data.{field}"),
                    format!("belongs to {other} events, not {channel}; it was not sent"),
                );
            }
        }
    }
}

/// Whether a field's values may already be hashed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Prehash {
    /// Plain text: normalised and hashed.
    No,
    /// Marked `pre_hashed`: every value must be a digest.
    Marked,
    /// A value that is a SHA-256 digest is taken as one; any other value is plain text.
    Sha256PassesThrough,
}

/// Normalises and hashes every value of one PII field; bad values become warnings.
fn hash_pii_values(
    field: PiiField,
    value: &Value,
    pre_hashed: Prehash,
    ctx: &PiiContext,
    check: &mut Check,
) -> Vec<String> {
    let key = field.key();
    let (items, listed) = match value {
        Value::Array(items) => (items.as_slice(), true),
        single => (std::slice::from_ref(single), false),
    };
    let mut digests = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let path = PiiPath {
            key,
            index: listed.then_some(index),
        };
        let raw = match item {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Null => continue,
            other => {
                check.warn(
                    IssueCode::InvalidPii,
                    path,
                    format!(
                        "must be a string, got {}; the value was not sent",
                        json_type(other)
                    ),
                );
                continue;
            }
        };
        if pre_hashed == Prehash::Sha256PassesThrough && pii::looks_like_sha256(raw.trim()) {
            digests.push(raw.trim().to_ascii_lowercase());
            continue;
        }
        if pre_hashed == Prehash::Marked {
            let digest = raw.trim().to_ascii_lowercase();
            if pii::looks_like_sha256(&digest) {
                digests.push(digest);
            } else {
                check.warn(
                    IssueCode::InvalidPii,
                    path,
                    "is marked pre_hashed but is not a SHA-256 hex digest; the value was not sent",
                );
            }
            continue;
        }
        if pii::looks_like_sha256(raw.trim()) {
            check.warn(
                IssueCode::LooksPrehashed,
                path,
                "looks like a SHA-256 digest but is not marked pre_hashed, so it is treated as plain text; \
                 add \"pre_hashed\": true (or a list of keys) to the event if it is already hashed",
            );
        }
        match pii::normalize(field, &raw, ctx) {
            Ok(normalized) => digests.push(pii::sha256_hex(&normalized)),
            Err(reason) => check.warn(
                IssueCode::InvalidPii,
                path,
                format!("{reason}; the value was not sent"),
            ),
        }
    }
    digests
}

/// `user_data.{key}` or `user_data.{key}[{index}]`, written only when an issue is reported.
#[derive(Clone, Copy)]
struct PiiPath {
    key: &'static str,
    index: Option<usize>,
}

impl fmt::Display for PiiPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.index {
            Some(i) => write!(f, "user_data.{}[{i}]", self.key),
            None => write!(f, "user_data.{}", self.key),
        }
    }
}

fn string_field(
    map: &Map<String, Value>,
    key: &str,
    path: impl fmt::Display,
    check: &mut Check,
) -> Option<String> {
    match map.get(key)? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        other => {
            check.wrong_type(path, "a string", other);
            None
        }
    }
}

fn count_field(
    map: &Map<String, Value>,
    key: &str,
    path: impl fmt::Display,
    check: &mut Check,
) -> Option<u64> {
    match map.get(key)? {
        Value::Null => None,
        Value::Number(n) if n.as_u64().is_some() => n.as_u64(),
        Value::String(s) if s.trim().parse::<u64>().is_ok() => s.trim().parse().ok(),
        other => {
            check.error(
                IssueCode::InvalidValue,
                path,
                format!("must be a whole number ≥ 0, got {other}"),
            );
            None
        }
    }
}

fn amount_field(
    map: &Map<String, Value>,
    key: &str,
    path: impl fmt::Display,
    check: &mut Check,
) -> Option<rust_decimal::Decimal> {
    let value = map.get(key).filter(|v| !v.is_null())?;
    match money::parse_amount(value) {
        Ok(amount) if amount.is_sign_negative() && !amount.is_zero() => {
            check.error(
                IssueCode::InvalidValue,
                path,
                format!("{amount} is negative"),
            );
            None
        }
        Ok(amount) => Some(amount),
        Err(reason) => {
            check.error(IssueCode::InvalidValue, path, reason);
            None
        }
    }
}

fn check_custom_data(value: &Value, check: &mut Check) -> Option<CustomData> {
    let cd = match value {
        Value::Null => return None,
        Value::Object(cd) => cd,
        other => {
            check.wrong_type("custom_data", "an object", other);
            return None;
        }
    };
    let mut out = CustomData {
        value: amount_field(cd, "value", "custom_data.value", check),
        predicted_ltv: amount_field(cd, "predicted_ltv", "custom_data.predicted_ltv", check),
        net_revenue: amount_field(cd, "net_revenue", "custom_data.net_revenue", check),
        num_items: count_field(cd, "num_items", "custom_data.num_items", check),
        ..CustomData::default()
    };
    if let Some(code) = string_field(cd, "currency", "custom_data.currency", check) {
        match money::parse_currency(&code) {
            Ok(currency) => out.currency = Some(currency.code().to_owned()),
            Err(reason) => check.error(IssueCode::InvalidCurrency, "custom_data.currency", reason),
        }
    }
    let has_amount =
        out.value.is_some() || out.predicted_ltv.is_some() || out.net_revenue.is_some();
    if has_amount && out.currency.is_none() && !cd.contains_key("currency") {
        check.error(
            IssueCode::MissingField,
            "custom_data.currency",
            "is required with a monetary value (an ISO 4217 code such as USD)",
        );
    }
    for (key, slot) in [
        ("content_type", &mut out.content_type),
        ("content_name", &mut out.content_name),
        ("content_category", &mut out.content_category),
        ("order_id", &mut out.order_id),
        ("status", &mut out.status),
        ("search_string", &mut out.search_string),
        ("item_number", &mut out.item_number),
    ] {
        *slot = string_field(cd, key, format_args!("custom_data.{key}"), check);
    }
    if let Some(category) = string_field(
        cd,
        "delivery_category",
        "custom_data.delivery_category",
        check,
    ) {
        if DELIVERY_CATEGORIES.contains(&category.as_str()) {
            out.delivery_category = Some(category);
        } else {
            check.error(
                IssueCode::InvalidValue,
                "custom_data.delivery_category",
                format!(
                    "{category:?} must be one of {}",
                    DELIVERY_CATEGORIES.join(", ")
                ),
            );
        }
    }
    match cd.get("content_ids") {
        None | Some(Value::Null) => {}
        Some(Value::Array(ids)) => {
            let mut list = Vec::new();
            for (i, id) in ids.iter().enumerate() {
                match id {
                    Value::String(s) => list.push(s.clone()),
                    Value::Number(n) => list.push(n.to_string()),
                    other => check.wrong_type(
                        format_args!("custom_data.content_ids[{i}]"),
                        "a string",
                        other,
                    ),
                }
            }
            out.content_ids = Some(list);
        }
        Some(other) => check.wrong_type("custom_data.content_ids", "an array of strings", other),
    }
    match cd.get("contents") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            let contents = items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| {
                    check_content(item, format_args!("custom_data.contents[{i}]"), check)
                })
                .collect();
            out.contents = Some(contents);
        }
        Some(other) => check.wrong_type("custom_data.contents", "an array of objects", other),
    }
    const TYPED: [&str; 15] = [
        "value",
        "currency",
        "content_ids",
        "contents",
        "content_type",
        "content_name",
        "content_category",
        "order_id",
        "num_items",
        "predicted_ltv",
        "net_revenue",
        "delivery_category",
        "status",
        "search_string",
        "item_number",
    ];
    out.custom_properties = cd
        .iter()
        .filter(|(k, _)| !TYPED.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect::<BTreeMap<_, _>>();
    Some(out)
}

fn check_content(
    item: &Value,
    path: impl fmt::Display + Copy,
    check: &mut Check,
) -> Option<Content> {
    let Value::Object(map) = item else {
        check.wrong_type(path, "an object", item);
        return None;
    };
    let id = string_field(map, "id", format_args!("{path}.id"), check);
    if id.is_none() {
        check.error(
            IssueCode::MissingField,
            format_args!("{path}.id"),
            "is required for each content",
        );
    }
    let mut content = Content {
        id: id.unwrap_or_default(),
        quantity: count_field(map, "quantity", format_args!("{path}.quantity"), check),
        item_price: amount_field(map, "item_price", format_args!("{path}.item_price"), check),
        ..Content::default()
    };
    for (key, slot) in [
        ("delivery_category", &mut content.delivery_category),
        ("title", &mut content.title),
        ("description", &mut content.description),
        ("brand", &mut content.brand),
        ("category", &mut content.category),
    ] {
        *slot = string_field(map, key, format_args!("{path}.{key}"), check);
    }
    Some(content)
}

/// The optional event-level fields.
#[derive(Default)]
struct Extras {
    event_id: Option<String>,
    opt_out: Option<bool>,
    original_event_data: Option<OriginalEventData>,
    messaging_outcome_data: Option<MessagingOutcomeData>,
    customer_segmentation: Option<String>,
    data_processing_options: Option<Vec<String>>,
    data_processing_options_country: Option<i64>,
    data_processing_options_state: Option<i64>,
}

fn check_extras(obj: &Map<String, Value>, check: &mut Check) -> Extras {
    let mut extras = Extras {
        event_id: id_value(obj, "event_id", "event_id", check),
        ..Extras::default()
    };
    if let Some(id) = &extras.event_id
        && id.len() > MAX_EVENT_ID_LEN
    {
        check.error(
            IssueCode::InvalidValue,
            "event_id",
            format!(
                "is {} characters long; at most {MAX_EVENT_ID_LEN} are accepted",
                id.len()
            ),
        );
    }
    match obj.get("opt_out") {
        None | Some(Value::Null) => {}
        Some(Value::Bool(b)) => extras.opt_out = Some(*b),
        Some(other) => check.wrong_type("opt_out", "a boolean", other),
    }
    match obj.get("original_event_data") {
        None | Some(Value::Null) => {}
        Some(Value::Object(o)) => {
            extras.original_event_data = Some(OriginalEventData {
                event_name: string_field(o, "event_name", "original_event_data.event_name", check),
                event_time: match o.get("event_time") {
                    None | Some(Value::Null) => None,
                    Some(Value::Number(n)) if n.as_i64().is_some() => n.as_i64(),
                    Some(other) => {
                        check.wrong_type("original_event_data.event_time", "Unix seconds", other);
                        None
                    }
                },
                order_id: string_field(o, "order_id", "original_event_data.order_id", check),
                event_id: string_field(o, "event_id", "original_event_data.event_id", check),
            });
        }
        Some(other) => check.wrong_type("original_event_data", "an object", other),
    }
    match obj.get("messaging_outcome_data") {
        None | Some(Value::Null) => {}
        Some(Value::Object(o)) => match o.get("outcome_type") {
            Some(Value::String(t)) => {
                extras.messaging_outcome_data = Some(MessagingOutcomeData {
                    outcome_type: t.clone(),
                })
            }
            _ => check.error(
                IssueCode::MissingField,
                "messaging_outcome_data.outcome_type",
                "is required (e.g. automatic_events)",
            ),
        },
        Some(other) => check.wrong_type("messaging_outcome_data", "an object", other),
    }
    if let Some(segment) =
        string_field(obj, "customer_segmentation", "customer_segmentation", check)
    {
        if CUSTOMER_SEGMENTS.contains(&segment.as_str()) {
            extras.customer_segmentation = Some(segment);
        } else {
            check.error(
                IssueCode::InvalidValue,
                "customer_segmentation",
                format!(
                    "{segment:?} must be one of {}",
                    CUSTOMER_SEGMENTS.join(", ")
                ),
            );
        }
    }
    check_data_processing(obj, &mut extras, check);
    extras
}

/// Limited Data Use (spec §2.10).
fn check_data_processing(obj: &Map<String, Value>, extras: &mut Extras, check: &mut Check) {
    match obj.get("data_processing_options") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            let mut options = Vec::new();
            for (i, item) in items.iter().enumerate() {
                match item.as_str() {
                    Some("LDU") => options.push("LDU".to_owned()),
                    _ => check.error(
                        IssueCode::InvalidValue,
                        format_args!("data_processing_options[{i}]"),
                        format!("{item} is not accepted; the only option is \"LDU\""),
                    ),
                }
            }
            extras.data_processing_options = Some(options);
        }
        Some(other) => check.wrong_type("data_processing_options", "an array", other),
    }
    let int_in = |key: &str, allowed: &[i64], check: &mut Check| match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_i64().is_some_and(|v| allowed.contains(&v)) => n.as_i64(),
        Some(other) => {
            check.error(
                IssueCode::InvalidValue,
                key,
                format!("{other} must be one of {allowed:?}"),
            );
            None
        }
    };
    extras.data_processing_options_country =
        int_in("data_processing_options_country", &[0, 1], check);
    extras.data_processing_options_state =
        int_in("data_processing_options_state", &[0, 1000], check);
    let ldu = extras
        .data_processing_options
        .as_ref()
        .is_some_and(|o| !o.is_empty());
    if ldu && extras.data_processing_options_country.is_none() {
        check.error(
            IssueCode::MissingField,
            "data_processing_options_country",
            "is required with LDU (1 for the USA, 0 to let Meta geolocate)",
        );
    }
    if extras.data_processing_options_country.is_some()
        && extras.data_processing_options_state.is_none()
    {
        check.error(
            IssueCode::MissingField,
            "data_processing_options_state",
            "is required when data_processing_options_country is set (1000 for California, 0 to geolocate)",
        );
    }
}
