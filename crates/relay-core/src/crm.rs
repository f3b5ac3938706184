//! CRM stage automation, pure: per-tenant stage rules, matching a stage change to a rule, its
//! event id, and the conversion-by-contact event it becomes. The service looks the rules up,
//! finds the contact and sends the event through the normal ingest path.

use std::str::FromStr;

use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::{
    Channel,
    event_name::{self, EventNameKind},
    money,
};

/// Prefix of event ids derived from a stage change.
pub const STAGE_EVENT_PREFIX: &str = "crm1-";

/// Which CRM a rule listens to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Kommo,
    Generic,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Kommo => "kommo",
            Source::Generic => "generic",
        }
    }
}

impl FromStr for Source {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "kommo" => Ok(Source::Kommo),
            "generic" => Ok(Source::Generic),
            other => Err(format!("{other:?} is not a source: use kommo or generic")),
        }
    }
}

/// How a rule fills `custom_data.value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueRule {
    /// The deal's amount (Kommo's `price`).
    Deal,
    /// No value.
    None,
    /// A fixed amount.
    Fixed(Decimal),
}

impl ValueRule {
    /// `deal`, `none` or a decimal amount.
    pub fn parse(text: &str) -> Result<ValueRule, String> {
        match text.trim() {
            "deal" => Ok(ValueRule::Deal),
            "none" => Ok(ValueRule::None),
            other => {
                let amount = money::parse_amount(&Value::String(other.to_owned()))
                    .map_err(|e| format!("{e}: use deal, none or an amount such as 49.90"))?;
                if amount.is_sign_negative() {
                    return Err(format!("{other:?} is negative"));
                }
                Ok(ValueRule::Fixed(amount))
            }
        }
    }

    /// The stored spelling (`deal`, `none` or the amount).
    pub fn as_text(&self) -> String {
        match self {
            ValueRule::Deal => "deal".into(),
            ValueRule::None => "none".into(),
            ValueRule::Fixed(d) => d.normalize().to_string(),
        }
    }
}

/// Normalises an id given as a JSON number or string (`"any"` stays `any` for pipelines).
pub fn id_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A stage rule: `(source, pipeline, stage) → event`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageRule {
    pub id: i64,
    pub source: Source,
    /// `None` = any pipeline (Kommo's 142 won / 143 lost are the same id in every pipeline).
    pub pipeline_id: Option<String>,
    pub stage_id: String,
    pub event_name: String,
    pub value: ValueRule,
    /// Overrides the deal's or the integration's currency.
    pub currency: Option<String>,
    /// Fire on every entry into the stage, not once per deal.
    pub every_time: bool,
}

/// Checks a rule's fields before it is stored; the error names the field.
pub fn check_rule(
    event_name: &str,
    stage_id: &str,
    pipeline_id: &str,
    currency: Option<&str>,
) -> Result<(), (&'static str, String)> {
    let name = event_name.trim();
    if name.is_empty() {
        return Err(("event", "is empty".into()));
    }
    match event_name::classify(name) {
        EventNameKind::BusinessMessaging(_) | EventNameKind::Equivalent { .. } => {}
        EventNameKind::WebOnly(n) | EventNameKind::Custom(n) => {
            return Err((
                "event",
                format!(
                    "{n:?} is not a business-messaging event name ({})",
                    event_name::BUSINESS_MESSAGING_EVENTS.join(", ")
                ),
            ));
        }
    }
    for (field, id) in [("stage_id", stage_id), ("pipeline_id", pipeline_id)] {
        if id.trim().is_empty() || id.len() > 64 || id.contains('\0') {
            return Err((field, format!("{id:?} is not an id (1–64 characters)")));
        }
    }
    if let Some(c) = currency {
        money::parse_currency(c).map_err(|e| ("currency", e))?;
    }
    Ok(())
}

/// A deal entering a stage, as any CRM reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct StageChange {
    pub source: Source,
    /// Namespace of the deal ids (the Kommo account id, or `generic`), part of the event id.
    pub account: String,
    pub deal_id: String,
    pub pipeline_id: Option<String>,
    pub stage_id: String,
    pub amount: Option<Decimal>,
    pub currency: Option<String>,
    /// Unix seconds of the stage change.
    pub occurred_at: i64,
    /// What tells two entries into the same stage apart (the time, unless the CRM names one).
    pub entry: Option<String>,
}

impl StageChange {
    /// The entry key: the CRM's, else the time.
    pub fn entry_key(&self) -> String {
        self.entry
            .clone()
            .unwrap_or_else(|| self.occurred_at.to_string())
    }
}

/// The rule for a change: a rule naming its pipeline wins over one for any pipeline.
pub fn match_rule<'a>(rules: &'a [StageRule], change: &StageChange) -> Option<&'a StageRule> {
    let candidates = rules
        .iter()
        .filter(|r| r.source == change.source && r.stage_id == change.stage_id);
    let mut any = None;
    for rule in candidates {
        match &rule.pipeline_id {
            Some(p) if Some(p) == change.pipeline_id.as_ref() => return Some(rule),
            Some(_) => {}
            None => any = any.or(Some(rule)),
        }
    }
    any
}

/// The event id of a change under a rule: from (source, account, deal, stage), plus the entry
/// for an every-time rule. A redelivery or a repeat gets the same id, so it is a duplicate.
pub fn stage_event_id(change: &StageChange, rule: &StageRule) -> String {
    let mut h = Sha256::new();
    for part in [
        change.source.as_str(),
        &change.account,
        &change.deal_id,
        &change.stage_id,
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    if rule.every_time {
        h.update(b"entry\0");
        h.update(change.entry_key().as_bytes());
    }
    format!("{STAGE_EVENT_PREFIX}{}", hex::encode(&h.finalize()[..16]))
}

/// The conversion-by-contact event for a change: `contact` names the customer
/// (`{"phone": …}`, `{"psid": …}`, …); the asset and channel are where the events go.
/// `default_currency` is the integration's. Ingest resolves the contact and validates.
pub fn stage_event(
    change: &StageChange,
    rule: &StageRule,
    channel: Channel,
    asset_id: &str,
    contact: Value,
    default_currency: Option<&str>,
) -> Value {
    let mut custom = Map::new();
    let value = match &rule.value {
        ValueRule::Deal => change.amount,
        ValueRule::None => None,
        ValueRule::Fixed(d) => Some(*d),
    };
    if let Some(v) = value {
        custom.insert(
            "value".into(),
            Value::Number(money::amount_to_number(v.normalize())),
        );
        let currency = rule
            .currency
            .as_deref()
            .or(change.currency.as_deref())
            .or(default_currency);
        if let Some(c) = currency {
            custom.insert("currency".into(), Value::String(c.to_ascii_uppercase()));
        }
    }
    custom.insert("order_id".into(), Value::String(change.deal_id.clone()));
    let mut user_data = Map::new();
    user_data.insert(
        channel.asset_field().into(),
        Value::String(asset_id.to_owned()),
    );
    json!({
        "event_name": rule.event_name,
        "event_time": change.occurred_at,
        "event_id": stage_event_id(change, rule),
        "messaging_channel": channel.as_str(),
        "contact": contact,
        "user_data": user_data,
        "custom_data": custom,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(id: i64, pipeline: Option<&str>, stage: &str) -> StageRule {
        StageRule {
            id,
            source: Source::Kommo,
            pipeline_id: pipeline.map(Into::into),
            stage_id: stage.into(),
            event_name: "Purchase".into(),
            value: ValueRule::Deal,
            currency: None,
            every_time: false,
        }
    }

    fn change(pipeline: &str, stage: &str) -> StageChange {
        StageChange {
            source: Source::Kommo,
            account: "17769199".into(),
            deal_id: "10701093".into(),
            pipeline_id: Some(pipeline.into()),
            stage_id: stage.into(),
            amount: Some(Decimal::from_str("22500").unwrap()),
            currency: None,
            occurred_at: 1_763_900_000,
            entry: None,
        }
    }

    #[test]
    fn a_rule_for_the_pipeline_wins_over_any_and_other_stages_or_sources_never_match() {
        let rules = vec![
            rule(1, None, "142"),
            rule(2, Some("9217056"), "142"),
            rule(3, Some("1"), "143"),
        ];
        assert_eq!(match_rule(&rules, &change("9217056", "142")).unwrap().id, 2);
        assert_eq!(match_rule(&rules, &change("555", "142")).unwrap().id, 1);
        assert!(match_rule(&rules, &change("555", "143")).is_none());
        assert!(match_rule(&rules, &change("1", "20067736")).is_none());
        let mut generic = change("9217056", "142");
        generic.source = Source::Generic;
        assert!(match_rule(&rules, &generic).is_none());
    }

    #[test]
    fn once_per_deal_ids_ignore_the_entry_and_every_time_ids_do_not() {
        let once = rule(1, None, "142");
        let mut every = once.clone();
        every.every_time = true;
        let first = change("1", "142");
        let mut later = first.clone();
        later.occurred_at += 3600;
        later.pipeline_id = Some("2".into());
        assert_eq!(stage_event_id(&first, &once), stage_event_id(&later, &once));
        assert_ne!(
            stage_event_id(&first, &every),
            stage_event_id(&later, &every)
        );
        let mut other_deal = first.clone();
        other_deal.deal_id = "10701094".into();
        assert_ne!(
            stage_event_id(&first, &once),
            stage_event_id(&other_deal, &once)
        );
        let mut other_account = first.clone();
        other_account.account = "1".into();
        assert_ne!(
            stage_event_id(&first, &once),
            stage_event_id(&other_account, &once)
        );
        assert!(stage_event_id(&first, &once).starts_with(STAGE_EVENT_PREFIX));
    }

    #[test]
    fn values_come_from_the_deal_a_fixed_amount_or_nowhere_with_the_rules_currency_first() {
        let c = change("1", "142");
        let contact = json!({"phone": "+5511987654321"});
        let mut r = rule(1, None, "142");
        let e = stage_event(
            &c,
            &r,
            Channel::WhatsApp,
            "102",
            contact.clone(),
            Some("brl"),
        );
        assert_eq!(e["custom_data"]["value"], json!(22500));
        assert_eq!(e["custom_data"]["currency"], "BRL");
        assert_eq!(e["custom_data"]["order_id"], "10701093");
        assert_eq!(e["user_data"]["whatsapp_business_account_id"], "102");
        assert_eq!(e["contact"], contact);
        assert_eq!(e["event_time"], 1_763_900_000);
        r.value = ValueRule::parse("49.90").unwrap();
        r.currency = Some("usd".into());
        let e = stage_event(
            &c,
            &r,
            Channel::Messenger,
            "7",
            contact.clone(),
            Some("BRL"),
        );
        assert_eq!(e["custom_data"]["value"].to_string(), "49.9");
        assert_eq!(e["custom_data"]["currency"], "USD");
        assert_eq!(e["user_data"]["page_id"], "7");
        r.value = ValueRule::None;
        let e = stage_event(&c, &r, Channel::WhatsApp, "102", contact, Some("BRL"));
        assert!(e["custom_data"].get("value").is_none());
        assert!(e["custom_data"].get("currency").is_none());
    }

    #[test]
    fn rule_fields_are_checked_and_the_error_names_the_field() {
        assert!(check_rule("Purchase", "142", "any", Some("BRL")).is_ok());
        assert!(check_rule("QualifiedLead", "20067736", "9217056", None).is_ok());
        assert_eq!(
            check_rule("Won!", "142", "any", None).unwrap_err().0,
            "event"
        );
        assert_eq!(
            check_rule("Purchase", " ", "any", None).unwrap_err().0,
            "stage_id"
        );
        assert_eq!(
            check_rule("Purchase", "142", "any", Some("QQQ"))
                .unwrap_err()
                .0,
            "currency"
        );
        assert!(ValueRule::parse("-1").is_err());
        assert!(ValueRule::parse("lots").is_err());
        assert_eq!(ValueRule::parse("10.50").unwrap().as_text(), "10.5");
        assert_eq!(ValueRule::parse("deal").unwrap(), ValueRule::Deal);
    }
}
