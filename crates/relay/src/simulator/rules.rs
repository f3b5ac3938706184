//! What the simulated Graph API accepts in `POST /{dataset_id}/events`: Meta's documented rules
//! (spec §1.4, §2, §5.2), written independently of the relay's own validation so that the
//! simulator can catch the relay's mistakes.
//!
//! Where Meta's behaviour is undocumented (future timestamps, the exact error text of most
//! validation failures) the simulator picks a plausible answer in Meta's error shape; those
//! places say so.

use std::{borrow::Cow, collections::BTreeMap};

use serde::Deserialize;
use serde_json::{Value, value::RawValue};

/// Meta's hard limit per request.
pub const MAX_EVENTS: usize = 1_000;
const MAX_AGE_SECS: i64 = 7 * 24 * 3600;
/// Meta documents no tolerance for future times; the simulator allows small clock skew.
const FUTURE_TOLERANCE_SECS: i64 = 10 * 60;

pub use relay_core::graph_error::GraphError as MetaError;

/// An events request's top level: `data` kept as raw JSON, every other field parsed.
///
/// Events are read field by field from their raw text instead of as whole `Value` trees: the
/// simulator shares the benchmark's machine with the relay, and building trees for every event
/// cost more CPU than the relay's own delivery of them.
pub struct EventsRequest<'a> {
    /// The top-level fields but `data` (`access_token`, `test_event_code`, …).
    pub fields: Value,
    pub data: Option<&'a RawValue>,
}

/// An event that passed the rules, as it came.
pub struct CheckedEvent<'a> {
    pub raw: &'a RawValue,
    pub event_id: Option<Cow<'a, str>>,
}

/// Parses a request body; the error is serde's, for Meta's "not valid JSON" answer.
pub fn parse_request(body: &[u8]) -> Result<EventsRequest<'_>, serde_json::Error> {
    // Values the rules skip are only scanned, and a scan lets through two things a parse
    // refuses: a lone surrogate in a `\u` escape and nesting past serde_json's limit (128).
    // A body that could hold either is parsed in full first, so it gets the same error.
    if needs_full_parse(body) {
        serde_json::from_slice::<Value>(body)?;
    }
    let raw: &RawValue = serde_json::from_slice(body)?;
    if !is_object(raw) {
        return Ok(EventsRequest {
            fields: serde_json::from_str(raw.get())?,
            data: None,
        });
    }
    let mut top: BTreeMap<String, &RawValue> = serde_json::from_str(raw.get())?;
    let data = top.remove("data");
    let fields = top
        .into_iter()
        .map(|(key, value)| Ok((key, serde_json::from_str(value.get())?)))
        .collect::<Result<serde_json::Map<_, _>, serde_json::Error>>()?;
    Ok(EventsRequest {
        fields: Value::Object(fields),
        data,
    })
}

/// Checks the `data` array of an events request; returns the events on success.
pub fn check_events_request<'a>(
    request: &EventsRequest<'a>,
    now: i64,
) -> Result<Vec<CheckedEvent<'a>>, MetaError> {
    let Some(data) = request.data else {
        return Err(
            MetaError::new(400, 100, "(#100) The parameter data is required").blame(&["data"]),
        );
    };
    let Ok(data) = serde_json::from_str::<Vec<&RawValue>>(data.get()) else {
        return Err(
            MetaError::invalid("The parameter data must be an array of events.").blame(&["data"]),
        );
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
    let events: Vec<(&RawValue, Result<EventFields<'_>, MetaError>)> =
        data.into_iter().map(|raw| (raw, read_event(raw))).collect();
    // Meta rejects the whole request, before anything else, when any event is too old.
    if events
        .iter()
        .filter_map(|(_, e)| e.as_ref().ok()?.get("event_time").and_then(as_i64))
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
    events
        .into_iter()
        .map(|(raw, fields)| {
            let fields = fields?;
            check_fields(&fields, now)?;
            Ok(CheckedEvent {
                raw,
                event_id: fields.get("event_id").and_then(as_str),
            })
        })
        .collect()
}

/// One event's rules; the first broken rule rejects the request (Meta: "one invalid event
/// rejects the whole batch").
pub fn check_event(event: &RawValue, now: i64) -> Result<(), MetaError> {
    check_fields(&read_event(event)?, now)
}

/// The fields of an event the rules look at.
const EVENT_KEYS: [&str; 7] = [
    "event_name",
    "event_time",
    "event_id",
    "action_source",
    "messaging_channel",
    "user_data",
    "custom_data",
];

type EventFields<'a> = Fields<'a, { EVENT_KEYS.len() }>;

fn read_event(event: &RawValue) -> Result<EventFields<'_>, MetaError> {
    if !is_object(event) {
        return Err(MetaError::invalid("Each event must be a JSON object."));
    }
    pick(event, &EVENT_KEYS)
        .map_err(|e| MetaError::invalid(format!("The event cannot be read: {e}")))
}

/// The `user_data` keys the rules look at: the channels' ids, then the keys that must be hashed.
const USER_DATA_KEYS: [&str; 18] = [
    "whatsapp_business_account_id",
    "page_id",
    "instagram_business_account_id",
    "ig_account_id",
    "ctwa_clid",
    "page_scoped_user_id",
    "ig_sid",
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

const HASHED_KEYS: &[&str] = USER_DATA_KEYS.split_at(7).1;

/// The values of some keys of a JSON object, read by [`pick`].
struct Fields<'a, const N: usize> {
    keys: &'static [&'static str; N],
    values: [Option<&'a RawValue>; N],
}

impl<'a, const N: usize> Fields<'a, N> {
    /// The value of `key`, one of the keys picked.
    fn get(&self, key: &str) -> Option<&'a RawValue> {
        let i = self.keys.iter().position(|k| *k == key);
        debug_assert!(i.is_some(), "{key} was not picked");
        i.and_then(|i| self.values[i])
    }
}

/// The values of `keys` in a JSON object's text. As in a parsed `Value`, a repeated key keeps
/// its last value and a key given as `null` is present (`Some("null")`).
fn pick<'a, const N: usize>(
    object: &'a RawValue,
    keys: &'static [&'static str; N],
) -> Result<Fields<'a, N>, serde_json::Error> {
    use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};

    /// A key, borrowed unless it has escapes.
    #[derive(Deserialize)]
    struct Key<'a>(#[serde(borrow)] Cow<'a, str>);

    struct Picker<'k, const N: usize>(&'k [&'k str; N]);

    impl<'de, const N: usize> Visitor<'de> for Picker<'_, N> {
        type Value = [Option<&'de RawValue>; N];

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut values = [None; N];
            while let Some(Key(key)) = map.next_key()? {
                match self.0.iter().position(|k| *k == key) {
                    Some(i) => values[i] = Some(map.next_value()?),
                    None => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(values)
        }
    }

    impl<'de, const N: usize> DeserializeSeed<'de> for Picker<'_, N> {
        type Value = [Option<&'de RawValue>; N];

        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }

    let mut de = serde_json::Deserializer::from_str(object.get());
    let values = Picker(keys).deserialize(&mut de)?;
    de.end()?;
    Ok(Fields { keys, values })
}

/// Whether JSON text holds a `\u` escape in a string or nests arrays and objects 100 deep.
fn needs_full_parse(text: &[u8]) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in text {
        if in_string {
            match (escaped, b) {
                (true, b'u') => return true,
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b'[' | b'{' => {
                    depth += 1;
                    if depth >= 100 {
                        return true;
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
    }
    false
}

fn first_byte(raw: &RawValue) -> u8 {
    raw.get().as_bytes().first().copied().unwrap_or_default()
}

fn is_object(raw: &RawValue) -> bool {
    first_byte(raw) == b'{'
}

fn is_number(raw: &RawValue) -> bool {
    matches!(first_byte(raw), b'-' | b'0'..=b'9')
}

/// A JSON number as `Value::as_i64` reads it (`-0` is 0; fractions and strings are not).
fn as_i64(raw: &RawValue) -> Option<i64> {
    if !is_number(raw) {
        return None;
    }
    serde_json::from_str::<Value>(raw.get()).ok()?.as_i64()
}

/// A JSON string's text, borrowed unless it has escapes; `None` for any other JSON.
fn as_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    if first_byte(raw) != b'"' {
        return None;
    }
    serde_json::from_str::<&str>(raw.get())
        .map(Cow::Borrowed)
        .or_else(|_| serde_json::from_str::<String>(raw.get()).map(Cow::Owned))
        .ok()
}

fn check_fields(event: &EventFields<'_>, now: i64) -> Result<(), MetaError> {
    if event
        .get("event_name")
        .and_then(as_str)
        .is_none_or(|s| s.is_empty())
    {
        return Err(
            MetaError::invalid("The parameter event_name is required.").blame(&["event_name"])
        );
    }
    let Some(time) = event.get("event_time").and_then(as_i64) else {
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
    let Some(source) = event.get("action_source").and_then(as_str) else {
        return Err(
            MetaError::invalid("The parameter action_source is required.")
                .blame(&["action_source"]),
        );
    };
    let channel = event.get("messaging_channel").and_then(as_str);
    if source != "business_messaging" {
        if channel.is_some() {
            return Err(MetaError::invalid(
                "messaging_channel is only valid with action_source business_messaging.",
            )
            .blame(&["action_source"]));
        }
        return Ok(());
    }
    let (asset_key, click_key) = match channel.as_deref() {
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
    let user_data = match event.get("user_data") {
        Some(raw) if is_object(raw) => pick(raw, &USER_DATA_KEYS).map_err(|e| {
            MetaError::invalid(format!("user_data cannot be read: {e}")).blame(&["user_data"])
        })?,
        _ => return Err(insufficient_customer_information().blame(&["user_data"])),
    };
    let has_id = |key: &str| {
        user_data
            .get(key)
            .and_then(as_str)
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
    for &key in HASHED_KEYS {
        let Some(value) = user_data.get(key) else {
            continue;
        };
        let all_hashed = match first_byte(value) {
            b'"' => as_str(value).is_some_and(|s| is_sha256(&s)),
            b'[' => serde_json::from_str::<Vec<&RawValue>>(value.get()).is_ok_and(|items| {
                items
                    .iter()
                    .all(|v| as_str(v).is_some_and(|s| is_sha256(&s)))
            }),
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
    check_custom_data(event)
}

fn check_custom_data(event: &EventFields<'_>) -> Result<(), MetaError> {
    let [currency, value] = match event.get("custom_data") {
        None => [None, None],
        Some(raw) if raw.get() == "null" => [None, None],
        Some(raw) if is_object(raw) => {
            pick(raw, &["currency", "value"])
                .map_err(|e| {
                    MetaError::invalid(format!("custom_data cannot be read: {e}"))
                        .blame(&["custom_data"])
                })?
                .values
        }
        Some(_) => {
            return Err(
                MetaError::invalid("custom_data must be an object.").blame(&["custom_data"])
            );
        }
    };
    if let Some(currency) = currency {
        let valid = as_str(currency)
            .and_then(|c| iso_currency::Currency::from_code(&c.to_ascii_uppercase()))
            .is_some();
        if !valid {
            // Quoted as a parsed value prints it (escapes decoded).
            let shown = serde_json::from_str::<Value>(currency.get()).unwrap_or_default();
            return Err(
                MetaError::invalid(format!("The currency {shown} is not valid."))
                    .blame(&["custom_data", "currency"]),
            );
        }
    }
    if let Some(value) = value
        && !is_number(value)
    {
        return Err(
            MetaError::invalid("The value must be a number.").blame(&["custom_data", "value"])
        );
    }
    if event.get("event_name").and_then(as_str).as_deref() == Some("Purchase") {
        for (key, given) in [("currency", currency), ("value", value)] {
            if given.is_none() {
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const NOW: i64 = 1_800_000_000;
    const HASH: &str = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8";

    fn event() -> Value {
        json!({
            "event_name": "Purchase",
            "event_time": NOW - 60,
            "event_id": "order-1",
            "action_source": "business_messaging",
            "messaging_channel": "whatsapp",
            "user_data": {"whatsapp_business_account_id": "1", "ctwa_clid": "c", "ph": [HASH]},
            "custom_data": {"currency": "BRL", "value": 120.5},
        })
    }

    /// The verdict on a request body written as text, as a sender would put it on the wire.
    fn verdict(body: &str) -> Result<Vec<Option<String>>, (Option<i64>, String)> {
        let request = parse_request(body.as_bytes()).map_err(|e| (None, e.to_string()))?;
        check_events_request(&request, NOW)
            .map(|events| {
                events
                    .into_iter()
                    .map(|e| e.event_id.map(Cow::into_owned))
                    .collect()
            })
            .map_err(|e| {
                let user = e.user_text.map(|t| t.1).unwrap_or_default();
                (e.subcode, format!("{} {user}", e.message))
            })
    }

    fn with(change: impl FnOnce(&mut Value)) -> String {
        let mut event = event();
        change(&mut event);
        json!({"data": [event]}).to_string()
    }

    #[test]
    fn fields_are_read_from_the_raw_text_as_a_parsed_value_would_read_them() {
        assert_eq!(verdict(&with(|_| {})), Ok(vec![Some("order-1".into())]));
        // Escapes and non-ASCII text in strings are read, not compared as written.
        let escaped = with(|_| {}).replace("\"Purchase\"", r#""Purch\u0061se""#);
        assert_eq!(verdict(&escaped), Ok(vec![Some("order-1".into())]));
        let no_value = with(|e| e["custom_data"] = json!({"currency": "BRL"}))
            .replace("\"Purchase\"", r#""Purch\u0061se""#);
        assert!(
            verdict(&no_value)
                .unwrap_err()
                .1
                .contains("value is required")
        );
        let accented = with(|e| e["event_id"] = json!("pedido-ção"));
        assert_eq!(verdict(&accented), Ok(vec![Some("pedido-ção".into())]));
        // A field given as null is present but not a value of the right type.
        let null_name = with(|e| e["event_name"] = Value::Null);
        assert!(verdict(&null_name).unwrap_err().1.contains("event_name"));
        let null_currency = with(|e| e["custom_data"]["currency"] = Value::Null);
        assert!(
            verdict(&null_currency)
                .unwrap_err()
                .1
                .contains("currency null")
        );
        let null_custom = with(|e| {
            e["event_name"] = json!("Lead");
            e["custom_data"] = Value::Null;
        });
        assert!(verdict(&null_custom).is_ok());
        // Ids as numbers are not ids; hashes in arrays are checked one by one.
        let numeric_clid = with(|e| e["user_data"]["ctwa_clid"] = json!(17));
        assert_eq!(verdict(&numeric_clid).unwrap_err().0, Some(2_804_050));
        let one_unhashed = with(|e| e["user_data"]["ph"] = json!([HASH, "+5511987654321"]));
        assert_eq!(verdict(&one_unhashed).unwrap_err().0, Some(2_804_016));
        let unhashed_fn = with(|e| e["user_data"]["fn"] = json!("Maria"));
        assert_eq!(verdict(&unhashed_fn).unwrap_err().0, Some(2_804_016));
        let float_time = with(|e| e["event_time"] = json!(1.5));
        assert!(verdict(&float_time).unwrap_err().1.contains("event_time"));
        let string_value = with(|e| e["custom_data"]["value"] = json!("120.50"));
        assert!(
            verdict(&string_value)
                .unwrap_err()
                .1
                .contains("must be a number")
        );
    }

    #[test]
    fn raw_reading_refuses_and_accepts_what_a_full_parse_would() {
        // A repeated key keeps its last value.
        let repeated = with(|_| {}).replacen(
            "\"event_name\":\"Purchase\"",
            "\"event_name\":\"\",\"event_name\":\"Purchase\"",
            1,
        );
        assert_eq!(verdict(&repeated), Ok(vec![Some("order-1".into())]));
        let two_ids =
            with(|_| {}).replacen("\"event_id\":", "\"event_id\":\"first\",\"event_id\":", 1);
        assert_eq!(verdict(&two_ids), Ok(vec![Some("order-1".into())]));
        // What only a parse notices, even in a field no rule reads.
        let surrogate = with(|e| e["note"] = json!("x")).replace("\"x\"", r#""\ud800""#);
        let refused = verdict(&surrogate).unwrap_err();
        assert!(
            refused.0.is_none() && refused.1.contains("hex escape"),
            "{refused:?}"
        );
        let deep = with(|e| e["note"] = json!("x"))
            .replace("\"x\"", &format!("{}1{}", "[".repeat(200), "]".repeat(200)));
        let refused = verdict(&deep).unwrap_err();
        assert!(
            refused.0.is_none() && refused.1.contains("recursion"),
            "{refused:?}"
        );
        // Numbers as `Value::as_i64` reads them; values quoted decoded.
        let negative_zero = with(|_| {}).replacen(
            &format!("\"event_time\":{}", NOW - 60),
            "\"event_time\":-0",
            1,
        );
        assert_eq!(verdict(&negative_zero).unwrap_err().0, Some(2_804_003));
        let escaped_currency =
            with(|e| e["custom_data"]["currency"] = json!("x")).replace("\"x\"", r#""Q\u0051Q""#);
        assert!(
            verdict(&escaped_currency)
                .unwrap_err()
                .1
                .contains("currency \"QQQ\"")
        );
    }

    #[test]
    fn the_hashed_keys_are_the_eleven_meta_lists() {
        assert_eq!(HASHED_KEYS.len(), 11);
        assert_eq!((HASHED_KEYS[0], HASHED_KEYS[10]), ("em", "external_id"));
    }

    #[test]
    fn the_shape_of_the_request_is_checked_before_its_events() {
        let required = verdict(r#"{"access_token": "t"}"#).unwrap_err();
        assert!(required.1.contains("data is required"), "{required:?}");
        assert!(
            verdict("[1, 2]")
                .unwrap_err()
                .1
                .contains("data is required")
        );
        for data in [r#"{"data": null}"#, r#"{"data": {"a": 1}}"#] {
            assert!(verdict(data).unwrap_err().1.contains("must be an array"));
        }
        assert!(
            verdict(r#"{"data": []}"#)
                .unwrap_err()
                .1
                .contains("at least one")
        );
        assert!(
            verdict(r#"{"data": [[1]]}"#)
                .unwrap_err()
                .1
                .contains("JSON object")
        );
        assert!(verdict(r#"{"data": [1, 2"#).unwrap_err().0.is_none());
        // One stale event refuses the request even after an invalid one.
        let stale = json!({"data": [[1], {"event_time": NOW - 8 * 86_400}]}).to_string();
        assert_eq!(verdict(&stale).unwrap_err().0, Some(2_804_003));
        let request = parse_request(br#"{"data": [], "access_token": "t", "n": 1}"#).unwrap();
        assert_eq!(request.fields, json!({"access_token": "t", "n": 1}));
    }
}
