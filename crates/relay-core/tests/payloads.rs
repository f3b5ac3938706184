//! Payloads against Meta's own examples, byte for byte, and the validation rules around them.

use proptest::prelude::*;
use relay_core::{IssueCode, ValidationOptions, validate_event};
use serde_json::{Value, json};

/// 2025-12-29T09:20:00Z, the spec's example time; validation runs an hour later.
const SPEC_TIME: i64 = 1_767_000_000;
const NOW: i64 = SPEC_TIME + 3_600;

fn sent(input: Value) -> String {
    let valid = validate_event(&input, &ValidationOptions::default(), NOW)
        .unwrap_or_else(|r| panic!("rejected: {:?}", r.errors));
    serde_json::to_string(&valid.event).unwrap()
}

fn errors(input: Value, opts: ValidationOptions) -> Vec<(IssueCode, String)> {
    match validate_event(&input, &opts, NOW) {
        Ok(v) => panic!("accepted: {:?}", v.event),
        Err(r) => r.errors.into_iter().map(|i| (i.code, i.path)).collect(),
    }
}

#[test]
fn the_spec_whatsapp_purchase_is_sent_byte_for_byte() {
    // spec §2.11, read from text so the value keeps its digits.
    let input: Value = serde_json::from_str(
        r#"{"event_name":"Purchase","event_time":1767000000,"event_id":"wa:tenant1:order-98765",
        "action_source":"business_messaging","messaging_channel":"whatsapp",
        "user_data":{"whatsapp_business_account_id":"102290129340398","ctwa_clid":"ARAkLkA8rml..."},
        "custom_data":{"currency":"USD","value":123.45,"order_id":"98765"}}"#,
    )
    .unwrap();
    assert_eq!(
        sent(input),
        r#"{"event_name":"Purchase","event_time":1767000000,"event_id":"wa:tenant1:order-98765","action_source":"business_messaging","messaging_channel":"whatsapp","user_data":{"whatsapp_business_account_id":"102290129340398","ctwa_clid":"ARAkLkA8rml..."},"custom_data":{"currency":"USD","value":123.45,"order_id":"98765"}}"#
    );
}

#[test]
fn the_onboarding_guide_samples_are_sent_byte_for_byte() {
    // Meta's onboarding guide (seed 001): ids written as JSON numbers, value 123.
    let clid = "ARAkLkA8rmlFeiCktEJQ-QTwRiyYHAFDLMNDBH0CD3qpjd0HR4irJ6LEkR7JwFF4XvnO2E4Nx0-eM-GABDLOPaOdRMv-_zfUQ2a";
    let messenger = json!({"event_name": "Purchase", "event_time": SPEC_TIME, "event_id": "m-1",
        "action_source": "business_messaging", "messaging_channel": "messenger",
        "user_data": {"page_id": 1234567890123u64, "page_scoped_user_id": 6543210987654321u64},
        "custom_data": {"currency": "USD", "value": 123}});
    assert_eq!(
        sent(messenger),
        r#"{"event_name":"Purchase","event_time":1767000000,"event_id":"m-1","action_source":"business_messaging","messaging_channel":"messenger","user_data":{"page_id":"1234567890123","page_scoped_user_id":"6543210987654321"},"custom_data":{"currency":"USD","value":123}}"#
    );
    let whatsapp = json!({"event_name": "Purchase", "event_time": SPEC_TIME, "event_id": "w-1",
        "action_source": "business_messaging", "messaging_channel": "whatsapp",
        "user_data": {"whatsapp_business_account_id": 102290129340398u64, "ctwa_clid": clid},
        "custom_data": {"currency": "USD", "value": 123}});
    assert_eq!(
        sent(whatsapp),
        format!(
            r#"{{"event_name":"Purchase","event_time":1767000000,"event_id":"w-1","action_source":"business_messaging","messaging_channel":"whatsapp","user_data":{{"whatsapp_business_account_id":"102290129340398","ctwa_clid":"{clid}"}},"custom_data":{{"currency":"USD","value":123}}}}"#
        )
    );
    let instagram = json!({"event_name": "Purchase", "event_time": SPEC_TIME, "event_id": "i-1",
        "action_source": "business_messaging", "messaging_channel": "instagram",
        "user_data": {"instagram_business_account_id": 17841400000000000u64, "ig_sid": 1234567890123456u64},
        "custom_data": {"currency": "USD", "value": 123}});
    assert_eq!(
        sent(instagram),
        r#"{"event_name":"Purchase","event_time":1767000000,"event_id":"i-1","action_source":"business_messaging","messaging_channel":"instagram","user_data":{"instagram_business_account_id":"17841400000000000","ig_sid":"1234567890123456"},"custom_data":{"currency":"USD","value":123}}"#
    );
}

#[test]
fn ig_account_id_is_sent_as_instagram_business_account_id() {
    let input = json!({"event_name": "LeadSubmitted", "event_time": SPEC_TIME, "event_id": "x",
        "messaging_channel": "instagram", "user_data": {"ig_account_id": "17841400000000000", "ig_sid": "99"}});
    assert!(sent(input).contains(
        r#""user_data":{"instagram_business_account_id":"17841400000000000","ig_sid":"99"}"#
    ));
}

#[test]
fn each_channel_names_its_missing_identity_field() {
    let cases = [
        (
            "whatsapp",
            json!({"whatsapp_business_account_id": "1"}),
            "user_data.ctwa_clid",
        ),
        (
            "whatsapp",
            json!({"ctwa_clid": "c"}),
            "user_data.whatsapp_business_account_id",
        ),
        (
            "messenger",
            json!({"page_id": "1"}),
            "user_data.page_scoped_user_id",
        ),
        (
            "instagram",
            json!({"ig_sid": "1"}),
            "user_data.instagram_business_account_id",
        ),
    ];
    for (channel, user_data, path) in cases {
        let input = json!({"event_name": "LeadSubmitted", "event_time": SPEC_TIME,
            "messaging_channel": channel, "user_data": user_data});
        let errs = errors(input, ValidationOptions::default());
        assert_eq!(
            errs,
            vec![(IssueCode::MissingIdentity, path.to_owned())],
            "{channel}"
        );
    }
}

#[test]
fn event_names_follow_business_messaging_rules() {
    let base = |name: &str| {
        json!({"event_name": name, "event_time": SPEC_TIME, "messaging_channel": "messenger",
        "user_data": {"page_id": "1", "page_scoped_user_id": "2"}})
    };
    let lead = validate_event(&base("Lead"), &ValidationOptions::default(), NOW).unwrap();
    assert_eq!(lead.event.event_name, "LeadSubmitted");
    assert_eq!(lead.warnings[0].code, IssueCode::EventNameMapped);
    for web in [
        "CompleteRegistration",
        "Subscribe",
        "StartTrial",
        "AddPaymentInfo",
    ] {
        assert_eq!(
            errors(base(web), ValidationOptions::default())[0].0,
            IssueCode::WebEventName
        );
    }
    assert_eq!(
        errors(base("DemoBooked"), ValidationOptions::default())[0].0,
        IssueCode::CustomEventName
    );
    let allow = ValidationOptions {
        allow_custom_event_names: true,
        ..Default::default()
    };
    let custom = validate_event(&base("DemoBooked"), &allow, NOW).unwrap();
    assert_eq!(
        (custom.event.event_name.as_str(), custom.warnings[0].code),
        ("DemoBooked", IssueCode::CustomEventName)
    );
}

#[test]
fn event_time_accepts_seconds_strings_and_rfc3339_within_the_window() {
    let at = |t: Value| {
        json!({"event_name": "LeadSubmitted", "event_time": t, "messaging_channel": "messenger",
        "user_data": {"page_id": "1", "page_scoped_user_id": "2"}})
    };
    let ok = |t: Value| {
        validate_event(&at(t), &ValidationOptions::default(), NOW).map(|v| v.event.event_time)
    };
    assert_eq!(ok(json!(SPEC_TIME)).unwrap(), SPEC_TIME);
    assert_eq!(ok(json!(SPEC_TIME.to_string())).unwrap(), SPEC_TIME);
    assert_eq!(ok(json!("2025-12-29T09:20:00Z")).unwrap(), SPEC_TIME);
    assert_eq!(
        ok(json!(NOW - 7 * 86_400)).unwrap(),
        NOW - 7 * 86_400,
        "exactly 7 days is still accepted"
    );
    assert_eq!(ok(json!(NOW + 240)).unwrap(), NOW + 240);
    let code = |t: Value| errors(at(t), ValidationOptions::default())[0].0;
    assert_eq!(code(json!(NOW - 7 * 86_400 - 1)), IssueCode::EventTooOld);
    assert_eq!(code(json!(NOW + 301)), IssueCode::EventInFuture);
    assert_eq!(code(json!(SPEC_TIME * 1000)), IssueCode::InvalidValue);
    assert_eq!(code(json!(1767000000.5)), IssueCode::InvalidValue);
}

#[test]
fn purchases_need_value_and_an_iso_currency() {
    let purchase = |custom: Value| {
        json!({"event_name": "Purchase", "event_time": SPEC_TIME, "messaging_channel": "messenger",
        "user_data": {"page_id": "1", "page_scoped_user_id": "2"}, "custom_data": custom})
    };
    let errs = errors(purchase(json!({})), ValidationOptions::default());
    assert!(errs.contains(&(IssueCode::MissingField, "custom_data.value".into())));
    assert!(errs.contains(&(IssueCode::MissingField, "custom_data.currency".into())));
    let errs = errors(
        purchase(json!({"value": 1, "currency": "XYZ"})),
        ValidationOptions::default(),
    );
    assert_eq!(
        errs,
        vec![(IssueCode::InvalidCurrency, "custom_data.currency".into())]
    );
    let errs = errors(
        purchase(json!({"value": "-5", "currency": "USD"})),
        ValidationOptions::default(),
    );
    assert_eq!(
        errs,
        vec![(IssueCode::InvalidValue, "custom_data.value".into())]
    );
    let typed = sent(purchase(
        json!({"value": "19.90", "currency": "brl", "num_items": 2,
        "contents": [{"id": "sku-1", "quantity": 2, "item_price": "9.95"}], "coupon": "X1"}),
    ));
    assert!(typed.contains(r#""custom_data":{"currency":"BRL","value":19.9,"contents":[{"id":"sku-1","quantity":2,"item_price":9.95}],"num_items":2,"coupon":"X1"}"#), "{typed}");
}

#[test]
fn bad_optional_pii_is_dropped_with_a_warning_and_the_event_still_goes() {
    let input = json!({"event_name": "LeadSubmitted", "event_time": SPEC_TIME, "messaging_channel": "messenger",
        "user_data": {"page_id": "1", "page_scoped_user_id": "2", "em": ["John_Smith@gmail.com", "nope", "john_smith@gmail.com"],
        "ph": "call me", "country": "US", "lead_id": "L-1", "shoe_size": 42}});
    let valid = validate_event(&input, &ValidationOptions::default(), NOW).unwrap();
    let json = serde_json::to_value(&valid.event).unwrap();
    assert_eq!(
        json["user_data"]["em"], "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f",
        "deduplicated after hashing"
    );
    assert_eq!(
        json["user_data"]["country"],
        "79adb2a2fce5c6ba215fe5f27f532d4e7edbac4b6a5e09e1ef3a08084a904621"
    );
    assert_eq!(json["user_data"]["lead_id"], "L-1", "never hashed");
    assert!(json["user_data"].get("ph").is_none() && json["user_data"].get("shoe_size").is_none());
    let warned: Vec<(IssueCode, &str)> = valid
        .warnings
        .iter()
        .map(|w| (w.code, w.path.as_str()))
        .collect();
    assert!(warned.contains(&(IssueCode::InvalidPii, "user_data.em[1]")));
    assert!(warned.contains(&(IssueCode::InvalidPii, "user_data.ph")));
    assert!(warned.contains(&(IssueCode::FieldDropped, "user_data.shoe_size")));
}

#[test]
fn pre_hashed_values_pass_through_only_when_marked() {
    let digest = "E323EC626319CA94EE8BFF2E4C87CF613BE6EA19919ED1364124E16807AB3176";
    let input = |marked: bool| {
        json!({"event_name": "LeadSubmitted", "event_time": SPEC_TIME, "messaging_channel": "messenger",
        "pre_hashed": marked, "user_data": {"page_id": "1", "page_scoped_user_id": "2", "fn": digest}})
    };
    let marked = validate_event(&input(true), &ValidationOptions::default(), NOW).unwrap();
    assert_eq!(
        serde_json::to_value(&marked.event).unwrap()["user_data"]["fn"],
        digest.to_lowercase()
    );
    let unmarked = validate_event(&input(false), &ValidationOptions::default(), NOW).unwrap();
    assert_ne!(
        serde_json::to_value(&unmarked.event).unwrap()["user_data"]["fn"],
        digest.to_lowercase()
    );
    assert_eq!(unmarked.warnings[0].code, IssueCode::LooksPrehashed);
}

#[test]
fn with_sha256_passing_through_digests_are_kept_and_plain_text_is_still_hashed() {
    // What Meta's own endpoint expects: the Business SDKs hash before sending.
    let digest = "E323EC626319CA94EE8BFF2E4C87CF613BE6EA19919ED1364124E16807AB3176";
    let input = json!({"event_name": "LeadSubmitted", "event_time": SPEC_TIME, "messaging_channel": "messenger",
        "user_data": {"page_id": "1", "page_scoped_user_id": "2", "ph": [digest], "em": "John_Smith@gmail.com"}});
    let opts = ValidationOptions {
        sha256_passes_through: true,
        ..ValidationOptions::default()
    };
    let valid = validate_event(&input, &opts, NOW).unwrap();
    let user_data = &serde_json::to_value(&valid.event).unwrap()["user_data"];
    assert_eq!(user_data["ph"], digest.to_lowercase());
    assert_eq!(
        user_data["em"],
        "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f"
    );
    assert!(valid.warnings.is_empty(), "{:?}", valid.warnings);
}

#[test]
fn a_missing_event_id_is_derived_from_the_content() {
    let input = |clid: &str| {
        json!({"event_name": "LeadSubmitted", "event_time": SPEC_TIME, "messaging_channel": "whatsapp",
        "user_data": {"whatsapp_business_account_id": "1", "ctwa_clid": clid}})
    };
    let id = |v: Value| validate_event(&v, &ValidationOptions::default(), NOW).unwrap();
    let (a, b, c) = (id(input("c1")), id(input("c1")), id(input("c2")));
    assert!(a.event_id_derived && a.event.event_id.starts_with("cr1-"));
    assert_eq!(a.event.event_id, b.event.event_id);
    assert_ne!(a.event.event_id, c.event.event_id);
}

proptest! {
    #[test]
    fn click_and_scoped_ids_are_never_hashed(clid in "[A-Za-z0-9_.-]{1,100}", psid in "[1-9][0-9]{5,17}") {
        let wa = json!({"event_name": "LeadSubmitted", "event_time": SPEC_TIME, "messaging_channel": "whatsapp",
            "user_data": {"whatsapp_business_account_id": "102290129340398", "ctwa_clid": clid.clone()}});
        let sent_wa = serde_json::to_value(validate_event(&wa, &ValidationOptions::default(), NOW).unwrap().event).unwrap();
        prop_assert_eq!(&sent_wa["user_data"]["ctwa_clid"], &json!(clid));
        let ms = json!({"event_name": "LeadSubmitted", "event_time": SPEC_TIME, "messaging_channel": "messenger",
            "user_data": {"page_id": "1", "page_scoped_user_id": psid.clone()}});
        let sent_ms = serde_json::to_value(validate_event(&ms, &ValidationOptions::default(), NOW).unwrap().event).unwrap();
        prop_assert_eq!(&sent_ms["user_data"]["page_scoped_user_id"], &json!(psid));
    }

    #[test]
    fn validation_never_panics_on_arbitrary_json(input in arbitrary_json()) {
        let _ = validate_event(&input, &ValidationOptions::default(), NOW);
    }
}

fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "\\PC{0,20}".prop_map(Value::String),
    ];
    let keys = prop_oneof![
        Just("event_name".to_owned()),
        Just("event_time".to_owned()),
        Just("user_data".to_owned()),
        Just("custom_data".to_owned()),
        Just("em".to_owned()),
        Just("ph".to_owned()),
        Just("value".to_owned()),
        Just("contents".to_owned()),
        Just("messaging_channel".to_owned()),
        Just("pre_hashed".to_owned()),
        "[a-z_]{1,12}",
    ];
    leaf.prop_recursive(4, 64, 8, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(keys.clone(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[test]
fn a_nul_character_anywhere_refuses_the_event_and_names_the_field() {
    let mut event = json!({
        "event_name": "Purchase",
        "event_time": NOW - 60,
        "event_id": "evt\u{0}1",
        "messaging_channel": "whatsapp",
        "user_data": {"whatsapp_business_account_id": "102290129340398", "ctwa_clid": "ARAk",
                      "em": ["a@example.com", "b\u{0}@example.com"]},
        "custom_data": {"currency": "USD", "value": 1, "contents": [{"id": "x\u{0}"}]}
    });
    let found = errors(event.clone(), ValidationOptions::default());
    for path in ["event_id", "user_data.em[1]", "custom_data.contents[0].id"] {
        assert!(
            found
                .iter()
                .any(|(code, p)| *code == IssueCode::InvalidValue && p == path),
            "{path} not named in {found:?}"
        );
    }
    event["event_id"] = json!("evt-1");
    event["user_data"]["em"] = json!("a@example.com");
    event["custom_data"]["contents"] = json!([{"id": "x", "quantity": 1}]);
    assert!(validate_event(&event, &ValidationOptions::default(), NOW).is_ok());
}
