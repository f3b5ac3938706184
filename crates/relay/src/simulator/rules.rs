//! What the simulated Graph API accepts in `POST /{dataset_id}/events`: Meta's documented rules
//! (spec §1.4, §2, §5.2), written independently of the relay's own validation so that the
//! simulator can catch the relay's mistakes.
//!
//! Where Meta's behaviour is undocumented (future timestamps, the exact error text of most
//! validation failures) the simulator picks a plausible answer in Meta's error shape; those
//! places say so.

use serde_json::Value;

/// Meta's hard limit per request.
pub const MAX_EVENTS: usize = 1_000;
const MAX_AGE_SECS: i64 = 7 * 24 * 3600;
/// Meta documents no tolerance for future times; the simulator allows small clock skew.
const FUTURE_TOLERANCE_SECS: i64 = 10 * 60;

const HASHED_KEYS: [&str; 11] = [
    "em",
    "ph",
    "fn",
    "ln",
    "ge",
    "db",
    "ct",
    "st",
    "zp",
    "country",
    "external_id",
];

pub use relay_core::graph_error::GraphError as MetaError;

/// Checks the `data` array of an events request; returns the events on success.
pub fn check_events_request(body: &Value, now: i64) -> Result<&[Value], MetaError> {
    let data = match body.get("data") {
        Some(Value::Array(data)) => data,
        Some(_) => {
            return Err(
                MetaError::invalid("The parameter data must be an array of events.")
                    .blame(&["data"]),
            );
        }
        None => {
            return Err(
                MetaError::new(400, 100, "(#100) The parameter data is required").blame(&["data"]),
            );
        }
    };
    if data.is_empty() {
        return Err(
            MetaError::invalid("The parameter data must contain at least one event.")
                .blame(&["data"]),
        );
    }
    if data.len() > MAX_EVENTS {
        return Err(MetaError::invalid(format!(
            "You can send at most {MAX_EVENTS} events per request; this request has {}.",
            data.len()
        ))
        .blame(&["data"]));
    }
    // Meta rejects the whole request, before anything else, when any event is too old.
    if data
        .iter()
        .filter_map(|e| e.get("event_time").and_then(Value::as_i64))
        .any(|t| t < now - MAX_AGE_SECS)
    {
        return Err(MetaError::new(400, 100, "Invalid parameter")
            .with_subcode(2_804_003)
            .with_user(
                "Event Timestamp Too Old",
                "The timestamp for this event is too far in the past. Events need to be sent from \
                 your server within 7 days of when they occurred. Enter a timestamp that has \
                 occurred within the last 7 days.",
            )
            .blame(&["event_time"]));
    }
    for event in data {
        check_event(event, now)?;
    }
    Ok(data)
}

/// One event's rules; the first broken rule rejects the request (Meta: "one invalid event
/// rejects the whole batch").
pub fn check_event(event: &Value, now: i64) -> Result<(), MetaError> {
    let Some(obj) = event.as_object() else {
        return Err(MetaError::invalid("Each event must be a JSON object."));
    };
    match obj.get("event_name") {
        Some(Value::String(s)) if !s.is_empty() => {}
        _ => {
            return Err(
                MetaError::invalid("The parameter event_name is required.").blame(&["event_name"])
            );
        }
    }
    let Some(time) = obj.get("event_time").and_then(Value::as_i64) else {
        return Err(MetaError::invalid(
            "The parameter event_time is required and must be Unix seconds.",
        )
        .blame(&["event_time"]));
    };
    if time > now + FUTURE_TOLERANCE_SECS {
        // Undocumented by Meta; integrators report future-dated events failing.
        return Err(MetaError::invalid("The event_time is in the future.")
            .with_user(
                "Event Timestamp In The Future",
                "Send the time the event happened.",
            )
            .blame(&["event_time"]));
    }
    let Some(source) = obj.get("action_source").and_then(Value::as_str) else {
        return Err(
            MetaError::invalid("The parameter action_source is required.")
                .blame(&["action_source"]),
        );
    };
    let channel = obj.get("messaging_channel").and_then(Value::as_str);
    if source != "business_messaging" {
        if channel.is_some() {
            return Err(MetaError::invalid(
                "messaging_channel is only valid with action_source business_messaging.",
            )
            .blame(&["action_source"]));
        }
        return Ok(());
    }
    let (asset_key, click_key) = match channel {
        Some("whatsapp") => ("whatsapp_business_account_id", "ctwa_clid"),
        Some("messenger") => ("page_id", "page_scoped_user_id"),
        Some("instagram") => ("instagram_business_account_id", "ig_sid"),
        _ => {
            return Err(MetaError::invalid(
                "messaging_channel must be whatsapp, messenger or instagram for business_messaging events.",
            )
            .blame(&["messaging_channel"]));
        }
    };
    let Some(user_data) = obj.get("user_data").and_then(Value::as_object) else {
        return Err(insufficient_customer_information().blame(&["user_data"]));
    };
    let has_id = |key: &str| {
        user_data
            .get(key)
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
    };
    let asset_present =
        has_id(asset_key) || (asset_key.starts_with("instagram") && has_id("ig_account_id"));
    if !asset_present {
        return Err(insufficient_customer_information().blame(&["user_data", asset_key]));
    }
    if !has_id(click_key) {
        return Err(insufficient_customer_information().blame(&["user_data", click_key]));
    }
    for key in HASHED_KEYS {
        let Some(value) = user_data.get(key) else {
            continue;
        };
        let all_hashed = match value {
            Value::String(s) => is_sha256(s),
            Value::Array(items) => items.iter().all(|v| v.as_str().is_some_and(is_sha256)),
            _ => false,
        };
        if !all_hashed {
            return Err(MetaError::new(400, 100, "Invalid parameter")
                .with_subcode(2_804_016)
                .with_user(
                    "Unhashed customer information",
                    format!("The parameter user_data.{key} must be hashed with SHA-256."),
                )
                .blame(&["user_data", key]));
        }
    }
    check_custom_data(obj, obj.get("custom_data").unwrap_or(&Value::Null))
}

fn check_custom_data(
    event: &serde_json::Map<String, Value>,
    custom: &Value,
) -> Result<(), MetaError> {
    let empty = serde_json::Map::new();
    let custom = match custom {
        Value::Null => &empty,
        Value::Object(custom) => custom,
        _ => {
            return Err(
                MetaError::invalid("custom_data must be an object.").blame(&["custom_data"])
            );
        }
    };
    if let Some(currency) = custom.get("currency") {
        let valid = currency
            .as_str()
            .and_then(|c| iso_currency::Currency::from_code(&c.to_ascii_uppercase()))
            .is_some();
        if !valid {
            return Err(
                MetaError::invalid(format!("The currency {currency} is not valid."))
                    .blame(&["custom_data", "currency"]),
            );
        }
    }
    if let Some(value) = custom.get("value")
        && !value.is_number()
    {
        return Err(
            MetaError::invalid("The value must be a number.").blame(&["custom_data", "value"])
        );
    }
    if event.get("event_name").and_then(Value::as_str) == Some("Purchase") {
        for key in ["currency", "value"] {
            if !custom.contains_key(key) {
                return Err(MetaError::invalid(format!(
                    "The parameter {key} is required for the Purchase event."
                ))
                .blame(&["custom_data", key]));
            }
        }
    }
    Ok(())
}

/// No usable customer information: Meta's subcode 2804050.
fn insufficient_customer_information() -> MetaError {
    MetaError::new(400, 100, "Invalid parameter")
        .with_subcode(2_804_050)
        .with_user(
            "Insufficient customer information",
            "You haven't added sufficient customer information parameter data for this event.",
        )
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}
