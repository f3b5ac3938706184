//! `POST /v1/crm/stage-changes`: the generic stage-change hook for any CRM (and Zapier, n8n,
//! Make). One change, a JSON array of them, or `{"data": [...]}`; each is answered on its own.
//!
//! ```json
//! {"deal_id": "D-1001", "pipeline_id": "sales", "stage_id": "won", "amount": "120.50",
//!  "currency": "BRL", "occurred_at": "2026-11-30T12:00:00Z", "asset_id": "102290129340398",
//!  "contact": {"phone": "+55 11 98765-4321"}}
//! ```

use chrono::DateTime;
use relay_core::{
    Channel, Issue, IssueCode,
    crm::{Source, StageChange, id_text},
    money,
};
use serde::Serialize;
use serde_json::Value;

use super::{Crm, GENERIC, StageOutcome, no_rule_detail};
use crate::tenancy::keys::Scope;

/// Most changes in one request.
pub const MAX_CHANGES: usize = 1_000;

/// The fields a change may hold.
const FIELDS: [&str; 10] = [
    "deal_id",
    "pipeline_id",
    "stage_id",
    "amount",
    "currency",
    "occurred_at",
    "asset_id",
    "contact",
    "entry_id",
    "source",
];

/// A change read from the body.
#[derive(Debug)]
pub struct GenericChange {
    pub change: StageChange,
    pub asset_id: String,
    pub contact: Value,
}

/// The answer for one change.
#[derive(Debug, Serialize)]
pub struct ChangeResult {
    pub index: usize,
    #[serde(flatten)]
    pub outcome: StageOutcome,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<Issue>,
}

/// The list of changes in a body, or why there is none.
pub fn items(body: &Value) -> Result<Vec<&Value>, String> {
    let list: Vec<&Value> = match body {
        Value::Array(a) => a.iter().collect(),
        Value::Object(o) => match o.get("data") {
            Some(Value::Array(a)) => a.iter().collect(),
            Some(_) => return Err("data must be a list of stage changes".into()),
            None => vec![body],
        },
        _ => {
            return Err(
                "the body must be a stage change, a list of them or {\"data\": [...]}".into(),
            );
        }
    };
    if list.is_empty() || list.len() > MAX_CHANGES {
        return Err(format!(
            "the body holds {} stage changes; send between 1 and {MAX_CHANGES}",
            list.len()
        ));
    }
    Ok(list)
}

fn issue(code: IssueCode, path: &str, message: impl Into<String>) -> Issue {
    Issue::new(code, path, message)
}

/// Reads one change; every problem is reported with its field.
pub fn read(item: &Value) -> Result<GenericChange, Vec<Issue>> {
    let Some(obj) = item.as_object() else {
        return Err(vec![issue(
            IssueCode::NotAnObject,
            "",
            "a stage change is a JSON object",
        )]);
    };
    if let Some(bad) = relay_core::storable::find_unstorable(item) {
        return Err(vec![issue(IssueCode::InvalidValue, &bad.path, bad.reason)]);
    }
    let mut errors = Vec::new();
    for key in obj.keys() {
        if !FIELDS.contains(&key.as_str()) {
            errors.push(issue(
                IssueCode::InvalidValue,
                key,
                format!("is not a stage-change field ({})", FIELDS.join(", ")),
            ));
        }
    }
    let mut id = |field: &str, required: bool| -> Option<String> {
        match obj.get(field) {
            None | Some(Value::Null) if !required => None,
            None | Some(Value::Null) => {
                errors.push(issue(IssueCode::MissingField, field, "is required"));
                None
            }
            Some(v) => match id_text(v) {
                Some(s) if s.len() <= 128 && !s.contains('\0') => Some(s),
                _ => {
                    errors.push(issue(
                        IssueCode::InvalidType,
                        field,
                        "must be a non-empty string or number of at most 128 characters",
                    ));
                    None
                }
            },
        }
    };
    let deal_id = id("deal_id", true);
    let pipeline_id = id("pipeline_id", false);
    let stage_id = id("stage_id", true);
    let asset_id = id("asset_id", true);
    let entry = id("entry_id", false);
    if let Some(source) = obj.get("source").and_then(Value::as_str)
        && source != GENERIC
    {
        errors.push(issue(
            IssueCode::InvalidValue,
            "source",
            "this hook takes generic changes only; Kommo posts to its own webhook URL",
        ));
    }
    let amount = match obj.get("amount") {
        None | Some(Value::Null) => None,
        Some(v) => match money::parse_amount(v) {
            Ok(a) if a.is_sign_negative() => {
                errors.push(issue(IssueCode::InvalidValue, "amount", "is negative"));
                None
            }
            Ok(a) => Some(a),
            Err(e) => {
                errors.push(issue(IssueCode::InvalidValue, "amount", e));
                None
            }
        },
    };
    let currency = match obj.get("currency") {
        None | Some(Value::Null) => None,
        Some(Value::String(c)) => match money::parse_currency(c) {
            Ok(c) => Some(c.code().to_owned()),
            Err(e) => {
                errors.push(issue(IssueCode::InvalidCurrency, "currency", e));
                None
            }
        },
        Some(_) => {
            errors.push(issue(
                IssueCode::InvalidType,
                "currency",
                "must be an ISO 4217 code such as BRL",
            ));
            None
        }
    };
    let occurred_at = match obj.get("occurred_at") {
        None | Some(Value::Null) => {
            errors.push(issue(
                IssueCode::MissingField,
                "occurred_at",
                "is required: Unix seconds or an RFC 3339 time of the stage change",
            ));
            None
        }
        Some(v) => match occurred_at(v) {
            Ok(t) => Some(t),
            Err(e) => {
                errors.push(issue(IssueCode::InvalidValue, "occurred_at", e));
                None
            }
        },
    };
    let contact = match obj.get("contact") {
        Some(c @ Value::Object(_)) => Some(c.clone()),
        Some(_) => {
            errors.push(issue(
                IssueCode::InvalidType,
                "contact",
                "must be an object such as {\"phone\": \"+5511987654321\"}",
            ));
            None
        }
        None => {
            errors.push(issue(
                IssueCode::MissingField,
                "contact",
                "is required: phone, wa_id, user_id, psid, igsid, conversation_id or customer_id",
            ));
            None
        }
    };
    match (deal_id, stage_id, asset_id, occurred_at, contact) {
        (Some(deal_id), Some(stage_id), Some(asset_id), Some(occurred_at), Some(contact))
            if errors.is_empty() =>
        {
            Ok(GenericChange {
                change: StageChange {
                    source: Source::Generic,
                    account: GENERIC.into(),
                    deal_id,
                    pipeline_id,
                    stage_id,
                    amount,
                    currency,
                    occurred_at,
                    entry,
                },
                asset_id,
                contact,
            })
        }
        _ => Err(errors),
    }
}

/// Unix seconds (milliseconds are recognised by size) or RFC 3339.
fn occurred_at(v: &Value) -> Result<i64, String> {
    let seconds = match v {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f as i64))
            .ok_or_else(|| format!("{n} is not a time"))?,
        Value::String(s) => match s.trim().parse::<i64>() {
            Ok(n) => n,
            Err(_) => DateTime::parse_from_rfc3339(s.trim())
                .map_err(|e| format!("{s:?} is neither Unix seconds nor RFC 3339: {e}"))?
                .timestamp(),
        },
        _ => return Err("must be Unix seconds or an RFC 3339 string".into()),
    };
    let seconds = if seconds > 100_000_000_000 {
        seconds / 1000
    } else {
        seconds
    };
    if seconds <= 0 {
        return Err("must be after 1970".into());
    }
    Ok(seconds)
}

/// Handles one read change for `scope`: rule, asset, event, record.
pub async fn handle(
    crm: &Crm,
    scope: &Scope,
    index: usize,
    item: GenericChange,
) -> Result<ChangeResult, relay_store::StoreError> {
    let GenericChange {
        change,
        asset_id,
        contact,
    } = item;
    let asset = crm
        .store
        .get_asset(&asset_id)
        .await?
        .filter(|a| scope.allows_asset_id(&a.tenant, &a.asset_id));
    // Another tenant's asset looks exactly like an unknown one.
    let Some(asset) = asset else {
        return Ok(ChangeResult {
            index,
            outcome: StageOutcome::skipped(
                "rejected",
                "asset_id is not registered for this API key",
            ),
            errors: vec![issue(
                IssueCode::UnknownAsset,
                "asset_id",
                format!("asset {asset_id} is not registered for this API key"),
            )],
        });
    };
    let channel: Channel = match asset.channel.parse() {
        Ok(c) => c,
        Err(_) => {
            return Ok(ChangeResult {
                index,
                outcome: StageOutcome::skipped("rejected", "the asset's channel is unknown"),
                errors: Vec::new(),
            });
        }
    };
    let outcome = match crm.rule_for(&scope.tenant, &change).await? {
        None => StageOutcome::skipped("no_rule", no_rule_detail(&change)),
        Some(rule) => {
            crm.produce(
                scope,
                &change,
                &rule,
                (channel, &asset.asset_id),
                contact,
                None,
            )
            .await?
        }
    };
    crm.record(&scope.tenant, GENERIC, &change, &outcome)
        .await?;
    Ok(ChangeResult {
        index,
        outcome,
        errors: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn ids_may_be_numbers_or_strings_and_times_seconds_millis_or_rfc3339() {
        let base = json!({"deal_id": 1001, "pipeline_id": "sales", "stage_id": 142,
            "asset_id": "102290129340398", "occurred_at": 1763900000,
            "contact": {"phone": "+5511987654321"}, "amount": "120.50", "currency": "brl"});
        let read = read(&base).unwrap();
        assert_eq!(read.change.deal_id, "1001");
        assert_eq!(read.change.stage_id, "142");
        assert_eq!(read.change.currency.as_deref(), Some("BRL"));
        assert_eq!(read.change.amount.unwrap().to_string(), "120.50");
        for (t, want) in [
            (json!(1763900000123i64), 1763900000),
            (json!("2025-11-23T12:13:20Z"), 1763900000),
            (json!("1763900000"), 1763900000),
        ] {
            let mut b = base.clone();
            b["occurred_at"] = t;
            assert_eq!(super::read(&b).unwrap().change.occurred_at, want);
        }
    }

    #[test]
    fn every_problem_is_named_by_its_field() {
        let errors = read(&json!({"deal_id": "", "stage_id": {}, "amount": "x",
            "currency": "QQQ", "occurred_at": "yesterday", "contact": "+55", "colour": 1}))
        .unwrap_err();
        let mut paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        paths.sort_unstable();
        assert_eq!(
            paths,
            [
                "amount",
                "asset_id",
                "colour",
                "contact",
                "currency",
                "deal_id",
                "occurred_at",
                "stage_id"
            ]
        );
        assert!(items(&json!({"data": []})).is_err());
        assert_eq!(items(&json!([{}, {}])).unwrap().len(), 2);
        assert_eq!(items(&json!({"deal_id": 1})).unwrap().len(), 1);
    }
}
