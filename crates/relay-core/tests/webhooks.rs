//! Webhook parsers on Meta's shapes (the fixtures the end-to-end tests sign and send), the
//! conversion-by-contact rewrite, and properties: no input makes a parser panic.

use proptest::prelude::*;
use relay_core::{
    Channel, IssueCode, ValidationOptions,
    contact::{self, CustomerRef, FoundContact, FoundTouch, Lookup},
    pii::PiiContext,
    validate_event,
    webhook::{self, ParseError},
};
use serde_json::{Value, json};

const TS: i64 = 1_700_000_000;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../relay/tests/fixtures/webhooks/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(path)
        .unwrap()
        .replace("__TS_MS__", &(TS * 1000).to_string())
        .replace("__TS__", &TS.to_string())
        .into_bytes()
}

fn ctx() -> PiiContext {
    PiiContext {
        default_phone_region: None,
        current_year: 2026,
    }
}

#[test]
fn a_cloud_api_referral_yields_the_click_id_the_ad_and_the_customer() {
    let parsed = webhook::parse(&fixture("whatsapp_cloud_referral.json"), None).unwrap();
    assert_eq!(parsed.inbound.len(), 1);
    let m = &parsed.inbound[0];
    assert_eq!(m.channel, Channel::WhatsApp);
    assert_eq!(m.asset_id, "102290129340398");
    assert_eq!(m.customer.wa_id.as_deref(), Some("5511987654321"));
    assert_eq!(m.timestamp_ms, TS * 1000);
    let r = m.referral.as_ref().unwrap();
    assert!(
        r.click_id
            .as_deref()
            .unwrap()
            .starts_with("ARAkLkA8rmlFeiCktEJQ-")
    );
    assert_eq!(r.ad_id.as_deref(), Some("120226305854810726"));
    assert_eq!(r.source_type.as_deref(), Some("ad"));
    // Meta's escapes are decoded: `\/` and `\u00e9`.
    assert_eq!(r.source_url.as_deref(), Some("https://fb.me/3cr4Wqqkv"));
    assert_eq!(r.headline.as_deref(), Some("Café especial"));
    assert_eq!(r.media_type.as_deref(), Some("image"));
}

#[test]
fn a_status_ad_referral_has_no_click_id_and_never_borrows_the_source_id() {
    let parsed = webhook::parse(&fixture("whatsapp_cloud_status_ad.json"), None).unwrap();
    let r = parsed.inbound[0].referral.as_ref().unwrap();
    assert_eq!(r.click_id, None);
    assert_eq!(r.ad_id.as_deref(), Some("120226305854810999"));
    assert!(r.media_url.as_deref().unwrap().ends_with("ad.mp4"));
}

#[test]
fn a_2026_webhook_with_a_business_scoped_user_id_and_no_phone_is_understood() {
    let parsed = webhook::parse(&fixture("whatsapp_cloud_bsuid.json"), None).unwrap();
    let m = &parsed.inbound[0];
    assert_eq!(m.customer.wa_id, None);
    assert_eq!(
        m.customer.user_id.as_deref(),
        Some("US.13491208655302741918")
    );
    assert_eq!(
        m.referral.as_ref().unwrap().click_id.as_deref(),
        Some("ARBsuidClickId-7Hq2")
    );
}

#[test]
fn the_on_premises_shape_needs_a_waba_id_from_the_url() {
    let body = fixture("whatsapp_onprem.json");
    assert_eq!(
        webhook::parse(&body, None),
        Err(ParseError::OnPremisesWithoutWaba)
    );
    let parsed = webhook::parse(&body, Some("102290129340398")).unwrap();
    let m = &parsed.inbound[0];
    assert_eq!(m.asset_id, "102290129340398");
    assert_eq!(m.message_id, "ABGGFlA5FpafAgo6tHcNmNjXmuSf");
    assert_eq!(m.customer.wa_id.as_deref(), Some("16315551234"));
    assert_eq!(
        m.referral.as_ref().unwrap().ad_id.as_deref(),
        Some("1234567890")
    );
}

#[test]
fn automatic_events_become_server_events_with_a_message_derived_id() {
    let parsed = webhook::parse(&fixture("whatsapp_automatic_events.json"), None).unwrap();
    assert!(parsed.inbound.is_empty());
    assert_eq!(parsed.automatic_events.len(), 2);
    let purchase = &parsed.automatic_events[0];
    assert_eq!(purchase.event_name, "Purchase");
    assert_eq!(purchase.timestamp, TS);
    let event = webhook::automatic_event_json(purchase).unwrap();
    assert_eq!(
        event["event_id"],
        format!("Purchase:{}", purchase.message_id)
    );
    assert_eq!(
        event["messaging_outcome_data"]["outcome_type"],
        "automatic_events"
    );
    assert_eq!(event["custom_data"]["currency"], "BRL");
    // The webhook's 120500 is BRL 120.50 (thousandths, spec §4.4).
    assert_eq!(event["custom_data"]["value"], json!(120.5));
    let valid = validate_event(&event, &ValidationOptions::default(), TS + 60).unwrap();
    assert_eq!(valid.event.event_id, event["event_id"].as_str().unwrap());
}

/// One WhatsApp change with these `automatic_events`.
fn automatic_events_body(events: Value) -> Vec<u8> {
    json!({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398", "changes": [
        {"field": "automatic_events", "value": {"messaging_product": "whatsapp", "automatic_events": events}}
    ]}]})
    .to_string()
    .into_bytes()
}

#[test]
fn automatic_event_values_are_divided_by_1000_exactly_as_metas_example() {
    // Meta's automatic_events reference: `"value": 25000` for a USD 25 purchase.
    let values = [
        (json!(25000), json!(25)),
        (json!(120505), json!(120.505)),
        (json!(1), json!(0.001)),
        (json!("19990"), json!(19.99)),
        (json!(0.5), json!(0.0005)),
        // Not a number: left for validation to refuse with its own message.
        (json!("lots"), json!("lots")),
    ];
    for (sent, reposted) in values {
        let body = automatic_events_body(json!([{"id": "wamid.X", "event_name": "Purchase",
            "timestamp": TS, "ctwa_clid": "ARAk-1", "custom_data": {"currency": "USD", "value": sent}}]));
        let parsed = webhook::parse(&body, None).unwrap();
        // Parsing keeps what Meta sent; the re-posted event has the plain amount.
        assert_eq!(
            parsed.automatic_events[0].custom_data.as_ref().unwrap()["value"],
            sent
        );
        let event = webhook::automatic_event_json(&parsed.automatic_events[0]).unwrap();
        assert_eq!(event["custom_data"]["value"], reposted, "{sent}");
        assert_eq!(event["custom_data"]["currency"], "USD");
    }
    let body = automatic_events_body(json!([{"id": "wamid.X", "event_name": "Purchase",
        "timestamp": TS, "ctwa_clid": "ARAk-1", "custom_data": {"currency": "USD", "value": 25000}}]));
    let event =
        webhook::automatic_event_json(&webhook::parse(&body, None).unwrap().automatic_events[0])
            .unwrap();
    let valid = validate_event(&event, &ValidationOptions::default(), TS + 60).unwrap();
    assert_eq!(
        valid.event.custom_data.unwrap().value,
        Some(rust_decimal::Decimal::from(25))
    );
}

#[test]
fn automatic_event_names_in_any_spelling_give_the_event_id_a_crm_sends() {
    for (sent, name) in [
        ("purchase", "Purchase"),
        ("PURCHASE", "Purchase"),
        ("Purchase", "Purchase"),
        ("lead_submitted", "LeadSubmitted"),
        ("leadsubmitted", "LeadSubmitted"),
        ("LeadSubmitted", "LeadSubmitted"),
        ("Lead Submitted", "LeadSubmitted"),
        ("SomethingNew", "SomethingNew"),
    ] {
        let body = automatic_events_body(json!([{"id": "wamid.HBgN", "event_name": sent,
            "timestamp": TS, "ctwa_clid": "ARAk-1"}]));
        let parsed = webhook::parse(&body, None).unwrap();
        let event = webhook::automatic_event_json(&parsed.automatic_events[0]).unwrap();
        assert_eq!(event["event_name"], name, "{sent}");
        assert_eq!(event["event_id"], format!("{name}:wamid.HBgN"), "{sent}");
    }
}

#[test]
fn a_video_ad_referral_keeps_the_video_as_its_media() {
    let parsed = webhook::parse(&fixture("whatsapp_cloud_video_ad.json"), None).unwrap();
    let r = parsed.inbound[0].referral.as_ref().unwrap();
    assert_eq!(r.media_type.as_deref(), Some("video"));
    assert_eq!(
        r.media_url.as_deref(),
        Some("https://video.xx.fbcdn.net/v/t42.1790-2/ad.mp4")
    );
    // An image ad still keeps its image.
    let parsed = webhook::parse(&fixture("whatsapp_cloud_referral.json"), None).unwrap();
    let r = parsed.inbound[0].referral.as_ref().unwrap();
    assert!(r.media_url.as_deref().unwrap().ends_with("/ad.jpg"));
}

#[test]
fn a_user_id_update_names_the_previous_and_the_current_user_id() {
    let parsed = webhook::parse(&fixture("whatsapp_user_id_update.json"), None).unwrap();
    assert!(parsed.inbound.is_empty());
    assert_eq!(
        parsed.user_id_updates,
        [webhook::UserIdUpdate {
            waba_id: "102290129340398".into(),
            previous: "US.13491208655302741918".into(),
            current: "US.20000000000000000042".into(),
            timestamp_ms: TS * 1000,
        }]
    );
    // The shape is assumed (see the fixtures' README), so other plausible spellings are read.
    let change = |field: &str, value: Value| {
        let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [
            {"field": field, "value": value}]}]});
        webhook::parse(body.to_string().as_bytes(), None)
            .unwrap()
            .user_id_updates
            .into_iter()
            .map(|u| (u.previous, u.current))
            .collect::<Vec<_>>()
    };
    let pair = vec![("US.1".to_owned(), "US.2".to_owned())];
    assert_eq!(
        change(
            "user_id_update",
            json!({"user_id_update": {"previous": "US.1", "current": "US.2"}})
        ),
        pair
    );
    assert_eq!(
        change(
            "messages",
            json!({"user_id_update": [{"previous": {"user_id": "US.1"}, "current": {"user_id": "US.2"}}]})
        ),
        pair
    );
    assert_eq!(
        change(
            "user_id_update",
            json!({"previous_user_id": "US.1", "current_user_id": "US.2"})
        ),
        pair
    );
    assert_eq!(
        change(
            "user_id_update",
            json!({"user_id_update": [{"old_user_id": "US.1", "new_user_id": "US.2"}]})
        ),
        pair
    );
    // Incomplete or unchanged: nothing to do.
    assert!(
        change(
            "user_id_update",
            json!({"user_id_update": [{"previous": "US.1"}]})
        )
        .is_empty()
    );
    assert!(
        change(
            "user_id_update",
            json!({"user_id_update": [{"previous": "US.1", "current": "US.1"}]})
        )
        .is_empty()
    );
    assert!(change("messages", json!({"previous": "US.1", "current": "US.2"})).is_empty());
}

#[test]
fn messenger_messages_referrals_and_postbacks_are_read_and_echoes_skipped() {
    let parsed = webhook::parse(&fixture("messenger.json"), None).unwrap();
    let senders: Vec<_> = parsed
        .inbound
        .iter()
        .map(|m| m.customer.scoped_id.clone().unwrap())
        .collect();
    assert_eq!(
        senders,
        ["7010000000000001", "7010000000000002", "7010000000000003"]
    );
    for m in &parsed.inbound {
        assert_eq!(m.channel, Channel::Messenger);
        assert_eq!(m.asset_id, "1234567890123");
        assert_eq!(m.timestamp_ms, TS * 1000);
    }
    let first = parsed.inbound[0].referral.as_ref().unwrap();
    assert_eq!(first.ad_id.as_deref(), Some("6045246247433"));
    assert_eq!(first.headline.as_deref(), Some("Café especial"));
    assert_eq!(first.click_id, None);
    // A referral without a message gets a stable id, the same on redelivery.
    assert_eq!(
        parsed.inbound[1].message_id,
        format!("referral:7010000000000002:{}", TS * 1000)
    );
    assert_eq!(parsed.inbound[2].message_id, "m_postback3");
    assert_eq!(
        parsed.inbound[2]
            .referral
            .as_ref()
            .unwrap()
            .ad_id
            .as_deref(),
        Some("6045246247435")
    );
}

#[test]
fn messages_in_standby_are_read_like_messaging() {
    let body = br#"{"object":"page","entry":[{"id":"1234567890123","time":1700000000000,"standby":[
        {"sender":{"id":"7010000000000009"},"recipient":{"id":"1234567890123"},"timestamp":1700000000000,
         "message":{"mid":"m_standby","text":"hi","referral":{"ad_id":"99","source":"ADS","type":"OPEN_THREAD"}}}]}]}"#;
    let parsed = webhook::parse(body, None).unwrap();
    assert_eq!(parsed.inbound.len(), 1);
    assert_eq!(parsed.inbound[0].message_id, "m_standby");
    assert_eq!(
        parsed.inbound[0]
            .referral
            .as_ref()
            .unwrap()
            .ad_id
            .as_deref(),
        Some("99")
    );
}

#[test]
fn instagram_direct_ad_referrals_and_ig_me_links_are_read() {
    let parsed = webhook::parse(&fixture("instagram.json"), None).unwrap();
    assert_eq!(parsed.inbound.len(), 2);
    let ad = &parsed.inbound[0];
    assert_eq!(ad.channel, Channel::Instagram);
    assert_eq!(ad.asset_id, "17841400000000001");
    assert_eq!(ad.customer.scoped_id.as_deref(), Some("5810000000000001"));
    assert_eq!(
        ad.referral.as_ref().unwrap().headline.as_deref(),
        Some("Zapatillas únicas")
    );
    let link = parsed.inbound[1].referral.as_ref().unwrap();
    assert_eq!(link.source_type.as_deref(), Some("SHORTLINK"));
    assert_eq!(link.ad_id, None);
}

#[test]
fn unknown_objects_and_fields_are_ignored_and_garbage_is_an_error() {
    let unknown = br#"{"object":"user","entry":[{"id":"1","changes":[{"field":"feed"}]}]}"#;
    assert_eq!(webhook::parse(unknown, None).unwrap(), Default::default());
    let odd = br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{"statuses":[{"id":"x"}],"messages":[{"id":"w","from":"1555","type":"reaction","new":1}]}}]}]}"#;
    assert_eq!(webhook::parse(odd, None).unwrap().inbound.len(), 1);
    assert!(matches!(
        webhook::parse(b"{\"object\":", None),
        Err(ParseError::NotJson(_))
    ));
    assert_eq!(webhook::parse(b"[1,2]", None), Err(ParseError::NotAnObject));
}

fn conversion(contact: Value) -> Value {
    json!({
        "event_name": "Purchase",
        "event_time": TS,
        "messaging_channel": "whatsapp",
        "contact": contact,
        "user_data": {"whatsapp_business_account_id": "102290129340398"},
        "custom_data": {"currency": "BRL", "value": 10}
    })
}

#[test]
fn a_phone_contact_is_hashed_for_lookup_and_rewritten_with_the_touch_click_id() {
    let event = conversion(json!({"phone": "+55 11 98765-4321"}));
    let request = contact::plan(&event, &ctx()).unwrap().unwrap();
    let expected = relay_core::pii::sha256_hex("5511987654321");
    assert_eq!(request.customer, CustomerRef::PhoneHash(expected.clone()));
    assert_eq!(request.event_time, Some(TS));
    // The wa_id of the webhook reaches the same key.
    assert_eq!(
        contact::wa_id_hash("5511987654321", &ctx()).unwrap(),
        expected
    );

    let lookup = Lookup {
        contact: Some(FoundContact {
            conversation_id: "cv1-abc".into(),
            phone_hash: Some(expected),
            scoped_id: None,
        }),
        touch: Some(FoundTouch {
            touch_id: 7,
            click_id: Some("CLICK".into()),
            ad_id: Some("AD".into()),
            source_type: Some("ad".into()),
            touched_at_ms: (TS - 60) * 1000,
        }),
        ..Lookup::default()
    };
    let (rewritten, attribution) = contact::rewrite(&event, &request, &lookup).unwrap();
    assert!(rewritten.get("contact").is_none());
    assert_eq!(rewritten["user_data"]["ctwa_clid"], "CLICK");
    assert_eq!(attribution.touch_id, Some(7));
    assert_eq!(attribution.conversation_id.as_deref(), Some("cv1-abc"));
    let valid = validate_event(&rewritten, &ValidationOptions::default(), TS + 10).unwrap();
    assert_eq!(valid.event.user_data.ctwa_clid.as_deref(), Some("CLICK"));
    assert!(
        valid.event.user_data.ph.is_some(),
        "the phone goes hashed as ph"
    );
}

#[test]
fn mobile_number_is_read_as_the_contact_phone() {
    let mut event = conversion(Value::Null);
    event.as_object_mut().unwrap().remove("contact");
    event["user_data"]["mobile_number"] = json!("5511987654321");
    let request = contact::plan(&event, &ctx()).unwrap().unwrap();
    assert_eq!(request.source, "user_data.mobile_number");
    let (rewritten, _) = contact::rewrite(
        &event,
        &request,
        &Lookup {
            allow_unattributed: true,
            ..Lookup::default()
        },
    )
    .unwrap();
    assert!(rewritten["user_data"].get("mobile_number").is_none());
}

#[test]
fn a_whatsapp_contact_without_a_click_id_is_no_attribution_unless_the_asset_allows_it() {
    let event = conversion(json!({"conversation_id": "cv1-abc"}));
    let request = contact::plan(&event, &ctx()).unwrap().unwrap();
    let lookup = Lookup {
        contact: Some(FoundContact {
            conversation_id: "cv1-abc".into(),
            phone_hash: Some(relay_core::pii::sha256_hex("5511912345678")),
            scoped_id: None,
        }),
        touch: None,
        touches_without_click_id: true,
        allow_unattributed: false,
    };
    let issue = contact::rewrite(&event, &request, &lookup).unwrap_err();
    assert_eq!(issue.code, IssueCode::NoAttribution);
    assert_eq!(issue.path, "user_data.ctwa_clid");
    assert!(issue.message.contains("Status"), "{}", issue.message);

    let allowed = Lookup {
        allow_unattributed: true,
        ..lookup
    };
    let (rewritten, attribution) = contact::rewrite(&event, &request, &allowed).unwrap();
    assert!(attribution.unattributed);
    assert_eq!(rewritten["pre_hashed"], json!(["ph"]));
    let strict = validate_event(&rewritten, &ValidationOptions::default(), TS + 10);
    assert!(strict.is_err(), "plain validation still wants a click id");
    let opts = ValidationOptions {
        whatsapp_without_click_id: true,
        ..ValidationOptions::default()
    };
    let valid = validate_event(&rewritten, &opts, TS + 10).unwrap();
    assert_eq!(valid.event.user_data.ctwa_clid, None);
    assert!(valid.event.user_data.ph.is_some());
}

#[test]
fn messenger_and_instagram_need_only_the_scoped_id() {
    let event = json!({
        "event_name": "LeadSubmitted", "event_time": TS, "messaging_channel": "messenger",
        "contact": {"psid": "7010000000000001"}, "user_data": {"page_id": "1234567890123"}
    });
    let request = contact::plan(&event, &ctx()).unwrap().unwrap();
    let (rewritten, attribution) = contact::rewrite(&event, &request, &Lookup::default()).unwrap();
    assert_eq!(
        rewritten["user_data"]["page_scoped_user_id"],
        "7010000000000001"
    );
    assert_eq!(attribution.touch_id, None);
    validate_event(&rewritten, &ValidationOptions::default(), TS).unwrap();

    let ig = json!({
        "event_name": "LeadSubmitted", "event_time": TS, "messaging_channel": "instagram",
        "contact": {"psid": "1"}, "user_data": {"instagram_business_account_id": "17841400000000001"}
    });
    let issues = contact::plan(&ig, &ctx()).unwrap_err();
    assert_eq!(issues[0].code, IssueCode::ConflictingFields);
}

#[test]
fn contacts_are_refused_clearly_when_malformed() {
    for (contact, code) in [
        (json!({}), IssueCode::MissingField),
        (
            json!({"phone": "1", "psid": "2"}),
            IssueCode::ConflictingFields,
        ),
        (json!({"email": "x"}), IssueCode::InvalidValue),
        (json!("5511987654321"), IssueCode::InvalidType),
        (json!({"phone": "abc"}), IssueCode::InvalidValue),
    ] {
        let issues = contact::plan(&conversion(contact.clone()), &ctx()).unwrap_err();
        assert_eq!(issues[0].code, code, "{contact}");
    }
    // An event that already carries its click id needs no lookup.
    let mut own = conversion(json!({"phone": "+5511987654321"}));
    own["user_data"]["ctwa_clid"] = json!("OWN");
    assert_eq!(contact::plan(&own, &ctx()).unwrap(), None);
}

#[test]
fn lookup_segments_are_read_by_prefix_or_shape() {
    let c = ctx();
    let phone = relay_core::pii::sha256_hex("5511987654321");
    assert_eq!(
        contact::lookup_candidates(Channel::WhatsApp, "+5511987654321", &c)[0],
        CustomerRef::PhoneHash(phone.clone())
    );
    assert_eq!(
        contact::lookup_candidates(Channel::WhatsApp, "wa_id:5511987654321", &c)[0],
        CustomerRef::PhoneHash(phone)
    );
    assert_eq!(
        contact::lookup_candidates(Channel::Messenger, "7010000000000001", &c)[0],
        CustomerRef::ScopedId("7010000000000001".into())
    );
    assert_eq!(
        contact::lookup_candidates(Channel::WhatsApp, "cv1-abc", &c)[0],
        CustomerRef::ConversationId("cv1-abc".into())
    );
    assert_eq!(
        contact::lookup_candidates(Channel::WhatsApp, "customer:crm-1", &c),
        vec![CustomerRef::CustomerId("crm-1".into())]
    );
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        "[a-z0-9._ +-]{0,12}".prop_map(Value::from),
        prop_oneof![
            Just("whatsapp_business_account"),
            Just("page"),
            Just("instagram"),
            Just("messages"),
            Just("automatic_events"),
            Just("5511987654321"),
            Just("whatsapp"),
            Just("messenger"),
        ]
        .prop_map(Value::from),
    ];
    let keys = prop_oneof![
        Just("object".to_owned()),
        Just("entry".to_owned()),
        Just("changes".to_owned()),
        Just("field".to_owned()),
        Just("value".to_owned()),
        Just("messages".to_owned()),
        Just("contacts".to_owned()),
        Just("referral".to_owned()),
        Just("messaging".to_owned()),
        Just("sender".to_owned()),
        Just("recipient".to_owned()),
        Just("message".to_owned()),
        Just("postback".to_owned()),
        Just("id".to_owned()),
        Just("timestamp".to_owned()),
        Just("data".to_owned()),
        Just("automatic_events".to_owned()),
        Just("user_id_update".to_owned()),
        Just("previous".to_owned()),
        Just("current".to_owned()),
        Just("contact".to_owned()),
        Just("user_data".to_owned()),
        Just("messaging_channel".to_owned()),
        Just("phone".to_owned()),
        Just("event_time".to_owned()),
        "[a-z_]{1,8}",
    ];
    leaf.prop_recursive(5, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(keys.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parsers_never_panic_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = webhook::parse(&bytes, None);
        let _ = webhook::parse(&bytes, Some("1"));
    }

    #[test]
    fn parsers_never_panic_on_arbitrary_json(value in arb_json()) {
        let bytes = serde_json::to_vec(&value).unwrap();
        if let Ok(parsed) = webhook::parse(&bytes, Some("1")) {
            for e in &parsed.automatic_events {
                let _ = webhook::automatic_event_json(e);
            }
        }
        if let Ok(Some(request)) = contact::plan(&value, &ctx()) {
            let _ = contact::rewrite(&value, &request, &Lookup::default());
        }
    }

    #[test]
    fn fixtures_with_any_field_removed_never_panic(
        name in prop_oneof![
            Just("whatsapp_cloud_referral.json"), Just("whatsapp_onprem.json"),
            Just("whatsapp_automatic_events.json"), Just("messenger.json"), Just("instagram.json"),
            Just("whatsapp_user_id_update.json"), Just("whatsapp_automatic_events_variants.json")
        ],
        cut in 0usize..4000,
    ) {
        let body = fixture(name);
        let cut = cut.min(body.len());
        let _ = webhook::parse(&body[..cut], Some("1"));
    }

    #[test]
    fn lookup_candidates_never_panic(segment in ".{0,40}") {
        for channel in Channel::ALL {
            let _ = contact::lookup_candidates(channel, &segment, &ctx());
        }
    }
}

#[test]
fn a_brazilian_number_is_also_looked_up_without_or_with_its_ninth_digit() {
    use relay_core::contact::brazil_ninth_digit_variant as variant;
    assert_eq!(variant("5511987654321").as_deref(), Some("551187654321"));
    assert_eq!(variant("551187654321").as_deref(), Some("5511987654321"));
    // Landlines (2–5 after the area code) and other countries have no other spelling.
    assert_eq!(variant("551133334444"), None);
    assert_eq!(variant("16315551234"), None);
    assert_eq!(variant("55119876543"), None);

    let event = conversion(json!({"phone": "+55 11 98765-4321"}));
    let request = contact::plan(&event, &ctx()).unwrap().unwrap();
    assert_eq!(
        request.alternates,
        [CustomerRef::PhoneHash(relay_core::pii::sha256_hex(
            "551187654321"
        ))]
    );
    // The old-style wa_id of the webhook hashes to that alternate.
    assert_eq!(
        contact::wa_id_hash("551187654321", &ctx()).unwrap(),
        relay_core::pii::sha256_hex("551187654321")
    );
    let candidates = contact::lookup_candidates(Channel::WhatsApp, "+5511987654321", &ctx());
    assert!(
        candidates.contains(&CustomerRef::PhoneHash(relay_core::pii::sha256_hex(
            "551187654321"
        )))
    );
}

/// A Cloud API message from `wa_id` under `waba` with `ctwa_clid`.
fn cloud_message(waba: &str, wa_id: &str, message_id: &str, clid: &str) -> Value {
    json!({"id": waba, "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp",
        "contacts": [{"wa_id": wa_id}],
        "messages": [{"from": wa_id, "id": message_id, "timestamp": TS.to_string(), "type": "text",
                      "referral": {"source_type": "ad", "source_id": "1202", "ctwa_clid": clid}}]}}]})
}

#[test]
fn a_message_with_a_nul_or_an_over_long_field_is_skipped_with_the_reason_and_the_others_kept() {
    let body = json!({"object": "whatsapp_business_account", "entry": [
        cloud_message("111", "5511900000001", "wamid.good1", "ARA-good-1"),
        cloud_message("111", "5511900000002", "wamid.nul", "ARA-\u{0}-nul"),
        cloud_message("222", "5511900000003", "wamid.long", &"A".repeat(1 << 20)),
        cloud_message("222", "5511900000004", "wamid.good2", "ARA-good-2"),
        {"id": "222", "changes": [{"field": "automatic_events", "value": {"automatic_events": [
            {"id": "wamid.ae", "event_name": "purchase", "timestamp": TS, "ctwa_clid": "ARA-ae",
             "custom_data": {"currency": "USD\u{0}", "value": 25000}}]}}]},
    ]});
    let parsed = webhook::parse(body.to_string().as_bytes(), None).unwrap();
    let ids: Vec<&str> = parsed
        .inbound
        .iter()
        .map(|m| m.message_id.as_str())
        .collect();
    assert_eq!(ids, ["wamid.good1", "wamid.good2"]);
    assert!(parsed.automatic_events.is_empty());
    let skipped: Vec<String> = parsed.skipped.iter().map(ToString::to_string).collect();
    assert_eq!(
        skipped,
        [
            "entry[1].changes[0].value.messages[0]: ctwa_clid contains a NUL character",
            "entry[2].changes[0].value.messages[0]: ctwa_clid is 1048576 bytes, over the 512-byte limit",
            "entry[4].changes[0].value.automatic_events[0]: custom_data contains a NUL character",
        ]
    );
    assert_eq!(parsed.channel, Some(Channel::WhatsApp));
}

#[test]
fn messenger_items_and_user_id_updates_with_unstorable_ids_are_skipped_by_path() {
    let page = json!({"object": "page", "entry": [{"id": "9", "time": TS, "messaging": [
        {"sender": {"id": "psid\u{0}"}, "recipient": {"id": "9"}, "timestamp": TS,
         "message": {"mid": "m1", "text": "hi"}},
        {"sender": {"id": "psid2"}, "recipient": {"id": "9"}, "timestamp": TS,
         "message": {"mid": "m2", "text": "hi", "referral": {"ref": "r".repeat(9000), "source": "ADS"}}},
        {"sender": {"id": "psid3"}, "recipient": {"id": "9"}, "timestamp": TS,
         "message": {"mid": "m3", "text": "hi"}}]}]});
    let parsed = webhook::parse(page.to_string().as_bytes(), None).unwrap();
    assert_eq!(parsed.inbound.len(), 1);
    assert_eq!(parsed.inbound[0].message_id, "m3");
    let skipped: Vec<String> = parsed.skipped.iter().map(ToString::to_string).collect();
    assert_eq!(
        skipped,
        [
            "entry[0].messaging[0]: sender id contains a NUL character",
            "entry[0].messaging[1]: ref is 9000 bytes, over the 8192-byte limit",
        ]
    );

    let update = json!({"object": "whatsapp_business_account", "entry": [{"id": "111", "changes": [
        {"field": "user_id_update", "value": {"user_id_update": [
            {"previous": "US.1", "current": "US.\u{0}2"}, {"previous": "US.3", "current": "US.4"}]}}]}]});
    let parsed = webhook::parse(update.to_string().as_bytes(), None).unwrap();
    assert_eq!(parsed.user_id_updates.len(), 1);
    assert_eq!(parsed.user_id_updates[0].current, "US.4");
    assert_eq!(
        parsed.skipped[0].to_string(),
        "entry[0].changes[0].value.user_id_update[0]: current user id contains a NUL character"
    );
}
