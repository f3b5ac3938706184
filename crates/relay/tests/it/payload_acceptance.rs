//! Property: every event the relay's validation accepts is an event the simulated Meta
//! accepts. The two sides are written independently, so this catches drift in either.

use capi_relay::simulator::rules;
use proptest::prelude::*;
use relay_core::{ValidationOptions, validate_event};
use serde_json::{Value, json};

const NOW: i64 = 1_795_000_000;

fn channel_user_data() -> impl Strategy<Value = (String, Value)> {
    let id = "[1-9][0-9]{5,16}";
    let clid = "[A-Za-z0-9_-]{1,120}";
    prop_oneof![
        (id, clid).prop_map(|(a, c)| (
            "whatsapp".to_owned(),
            json!({"whatsapp_business_account_id": a, "ctwa_clid": c})
        )),
        (id, id).prop_map(|(a, c)| (
            "messenger".to_owned(),
            json!({"page_id": a, "page_scoped_user_id": c})
        )),
        (id, id).prop_map(|(a, c)| (
            "instagram".to_owned(),
            json!({"ig_account_id": a, "ig_sid": c})
        )),
    ]
}

fn optional_pii() -> impl Strategy<Value = Vec<(&'static str, String)>> {
    proptest::collection::vec(
        prop_oneof![
            "[a-z]{1,8}@[a-z]{1,8}\\.(com|br)".prop_map(|v| ("em", v)),
            "\\PC{0,12}".prop_map(|v| ("em", v)),
            "\\+?[0-9 ()-]{4,18}".prop_map(|v| ("ph", v)),
            "\\PC{0,12}".prop_map(|v| ("fn", v)),
            "\\PC{0,12}".prop_map(|v| ("ct", v)),
            "[A-Za-z]{2,3}".prop_map(|v| ("country", v)),
            "[0-9/.-]{6,10}".prop_map(|v| ("db", v)),
            "\\PC{0,6}".prop_map(|v| ("ge", v)),
            "\\PC{0,10}".prop_map(|v| ("zp", v)),
            "\\PC{0,10}".prop_map(|v| ("external_id", v)),
        ],
        0..5,
    )
}

fn event_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("Purchase".to_owned()),
        Just("LeadSubmitted".to_owned()),
        Just("Lead".to_owned()),
        Just("QualifiedLead".to_owned()),
        Just("OrderShipped".to_owned()),
        Just("Subscribe".to_owned()),
        "[A-Za-z]{1,20}",
    ]
}

fn custom_data() -> impl Strategy<Value = Option<Value>> {
    proptest::option::of(
        (
            proptest::option::of(prop_oneof![
                Just("USD"),
                Just("brl"),
                Just("EUR"),
                Just("XYZ"),
                Just("usd ")
            ]),
            proptest::option::of(prop_oneof![
                (0u32..1_000_000, 0u32..100).prop_map(|(a, b)| json!(format!("{a}.{b:02}"))),
                (0u32..100_000).prop_map(|a| json!(a)),
                Just(json!("-1")),
                Just(json!(true)),
            ]),
        )
            .prop_map(|(currency, value)| {
                let mut cd = serde_json::Map::new();
                if let Some(c) = currency {
                    cd.insert("currency".into(), json!(c));
                }
                if let Some(v) = value {
                    cd.insert("value".into(), v);
                }
                Value::Object(cd)
            }),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_accepted_event_is_accepted_by_the_simulated_meta(
        (channel, mut user_data) in channel_user_data(),
        pii in optional_pii(),
        name in event_name(),
        age in -600i64..(8 * 86_400),
        custom in custom_data(),
        allow_custom in any::<bool>(),
    ) {
        for (key, value) in pii {
            user_data[key] = json!(value);
        }
        let mut event = json!({
            "event_name": name,
            "event_time": NOW - age,
            "messaging_channel": channel,
            "user_data": user_data,
        });
        if let Some(custom) = custom {
            event["custom_data"] = custom;
        }
        let options = ValidationOptions {
            allow_custom_event_names: allow_custom,
            default_phone_region: Some("BR".parse().unwrap()),
            ..ValidationOptions::default()
        };
        if let Ok(valid) = validate_event(&event, &options, NOW) {
            let wire = serde_json::to_value(&valid.event).unwrap();
            let body = json!({"data": [wire.clone()]}).to_string();
            let request = rules::parse_request(body.as_bytes()).unwrap();
            let verdict = rules::check_events_request(&request, NOW).map(|_| ());
            prop_assert!(verdict.is_ok(), "relay accepted {event} as {wire} but Meta would say {:?}", verdict.err());
        }
    }
}
