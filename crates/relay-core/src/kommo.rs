//! Kommo (amoCRM) wire formats, pure: the webhook body (`application/x-www-form-urlencoded` with
//! bracketed keys such as `leads[status][0][status_id]`) parsed into a tree and read into stage
//! changes, and the REST answers (lead → main contact → `PHONE` values).

use std::str::FromStr;

use rust_decimal::Decimal;
use serde_json::{Map, Value};

use crate::crm::id_text;

/// Parses a form body into a tree: `a[b][0][c]=x` becomes `{"a": {"b": {"0": {"c": "x"}}}}`.
/// Brackets may be raw or percent-encoded (decoding comes first); `+` is a space; invalid
/// UTF-8 is replaced. `a[]=x` appends under the next free index. A key that would turn an
/// existing value into an object (or the reverse) keeps the first value.
pub fn parse_form(body: &[u8]) -> Value {
    let mut root = Map::new();
    for (key, value) in form_urlencoded::parse(body) {
        let segments = key_segments(&key);
        if segments.is_empty() {
            continue;
        }
        insert(&mut root, &segments, value.into_owned());
    }
    Value::Object(root)
}

fn key_segments(key: &str) -> Vec<String> {
    let (head, mut rest) = match key.find('[') {
        Some(i) => (&key[..i], &key[i..]),
        None => (key, ""),
    };
    let mut segments = vec![head.to_owned()];
    while let Some(stripped) = rest.strip_prefix('[') {
        let Some(end) = stripped.find(']') else {
            // An unclosed bracket: the remainder is a plain segment.
            segments.push(stripped.to_owned());
            break;
        };
        segments.push(stripped[..end].to_owned());
        rest = &stripped[end + 1..];
    }
    segments
}

fn insert(map: &mut Map<String, Value>, segments: &[String], value: String) {
    let key = if segments[0].is_empty() {
        // `a[]`: the next free index.
        (0..)
            .map(|i: usize| i.to_string())
            .find(|k| !map.contains_key(k))
            .unwrap_or_default()
    } else {
        segments[0].clone()
    };
    if segments.len() == 1 {
        map.entry(key).or_insert(Value::String(value));
        return;
    }
    let child = map.entry(key).or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(child) = child {
        insert(child, &segments[1..], value);
    }
}

/// The account a body says it comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BodyAccount {
    pub account_ids: Vec<String>,
    pub subdomains: Vec<String>,
}

/// Every account id and subdomain a body carries: `account[id]`, `account[subdomain]` and each
/// item's `account_id`.
pub fn body_account(tree: &Value) -> BodyAccount {
    let mut out = BodyAccount::default();
    if let Some(id) = tree.pointer("/account/id").and_then(id_text) {
        out.account_ids.push(id);
    }
    if let Some(s) = tree.pointer("/account/subdomain").and_then(id_text) {
        out.subdomains.push(s.to_ascii_lowercase());
    }
    for (_, actions) in entities(tree) {
        for (_, items) in actions {
            for (_, item) in indexed(items) {
                if let Some(id) = item.get("account_id").and_then(id_text)
                    && !out.account_ids.contains(&id)
                {
                    out.account_ids.push(id);
                }
            }
        }
    }
    out
}

/// Whether a body belongs to the account: everything it carries must match, and it must carry
/// at least one of the account id or subdomain.
pub fn belongs_to(account: &BodyAccount, account_id: &str, subdomain: &str) -> Result<(), String> {
    if account.account_ids.is_empty() && account.subdomains.is_empty() {
        return Err("the body names no account (account[id] or account[subdomain])".into());
    }
    if let Some(other) = account.account_ids.iter().find(|id| *id != account_id) {
        return Err(format!(
            "account id {other} is not this integration's account"
        ));
    }
    let subdomain = subdomain.to_ascii_lowercase();
    if let Some(other) = account.subdomains.iter().find(|s| **s != subdomain) {
        return Err(format!(
            "subdomain {other:?} is not this integration's account"
        ));
    }
    Ok(())
}

/// A lead entering a stage, read from `leads[status][i]` or `leads[add][i]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LeadStage {
    /// Where it was: `leads[status][0]`.
    pub at: String,
    pub lead_id: String,
    pub status_id: String,
    pub pipeline_id: Option<String>,
    /// `price`, when the body has it (the short Digital Pipeline format does not).
    pub price: Option<Decimal>,
    /// `last_modified` or `updated_at` (Unix seconds), when present.
    pub changed_at: Option<i64>,
}

/// What a body holds: stage entries, and everything else with why it was not used.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KommoBody {
    pub stages: Vec<LeadStage>,
    /// `"leads[update][0] (lead 1): not a stage change"`, …
    pub unused: Vec<String>,
}

fn entities(tree: &Value) -> Vec<(&str, Vec<(&str, &Value)>)> {
    let Some(obj) = tree.as_object() else {
        return Vec::new();
    };
    // Sorted by name, whatever order the map keeps: the same body always reads the same.
    let mut out: Vec<(&str, Vec<(&str, &Value)>)> = obj
        .iter()
        .filter(|(k, _)| *k != "account")
        .map(|(entity, actions)| {
            let mut actions: Vec<(&str, &Value)> = actions
                .as_object()
                .map(|a| a.iter().map(|(k, v)| (k.as_str(), v)).collect())
                .unwrap_or_default();
            actions.sort_by_key(|(k, _)| *k);
            (entity.as_str(), actions)
        })
        .collect();
    out.sort_by_key(|(k, _)| *k);
    out
}

/// The items under an action, in index order (`0`, `1`, … `10`).
fn indexed(items: &Value) -> Vec<(&str, &Map<String, Value>)> {
    let mut out: Vec<(&str, &Map<String, Value>)> = items
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.as_str(), v.as_object()?)))
                .collect()
        })
        .unwrap_or_default();
    out.sort_by_key(|(k, _)| (k.parse::<u64>().unwrap_or(u64::MAX), k.to_string()));
    out
}

/// Reads the stage entries of a parsed body. Lead stage changes (`leads[status]`) and new
/// leads with a stage (`leads[add]`) are used; anything else is listed with the reason.
pub fn read_body(tree: &Value) -> KommoBody {
    let mut out = KommoBody::default();
    for (entity, actions) in entities(tree) {
        if actions.is_empty() {
            out.unused
                .push(format!("{entity}: not a Kommo entity list"));
        }
        for (action, items) in actions {
            let list = indexed(items);
            if list.is_empty() {
                out.unused.push(format!("{entity}[{action}]: no items"));
            }
            for (index, item) in list {
                let at = format!("{entity}[{action}][{index}]");
                let lead_id = item.get("id").and_then(id_text);
                let is_stage = entity == "leads" && (action == "status" || action == "add");
                if !is_stage {
                    let what = lead_id
                        .map(|id| format!(" ({entity} {id})"))
                        .unwrap_or_default();
                    out.unused
                        .push(format!("{at}{what}: not a lead stage change"));
                    continue;
                }
                let Some(lead_id) = lead_id else {
                    out.unused.push(format!("{at}: no lead id"));
                    continue;
                };
                let Some(status_id) = item.get("status_id").and_then(id_text) else {
                    out.unused
                        .push(format!("{at} (lead {lead_id}): no status_id"));
                    continue;
                };
                let price = item
                    .get("price")
                    .and_then(id_text)
                    .and_then(|p| Decimal::from_str(&p).ok());
                let changed_at = ["last_modified", "updated_at", "date_create", "created_at"]
                    .iter()
                    .find_map(|k| item.get(*k).and_then(id_text)?.parse::<i64>().ok())
                    .filter(|t| *t > 0);
                out.stages.push(LeadStage {
                    at,
                    lead_id,
                    status_id,
                    pipeline_id: item.get("pipeline_id").and_then(id_text),
                    price,
                    changed_at,
                });
            }
        }
    }
    out
}

/// The main contact of a REST lead (`GET /api/v4/leads/{id}?with=contacts`): the one marked
/// `is_main`, else the first.
pub fn main_contact_id(lead: &Value) -> Option<String> {
    let contacts = lead.pointer("/_embedded/contacts")?.as_array()?;
    contacts
        .iter()
        .find(|c| c.get("is_main").and_then(Value::as_bool) == Some(true))
        .or_else(|| contacts.first())
        .and_then(|c| c.get("id").and_then(id_text))
}

/// The `price` of a REST lead.
pub fn lead_price(lead: &Value) -> Option<Decimal> {
    lead.get("price")
        .and_then(id_text)
        .and_then(|p| Decimal::from_str(&p).ok())
}

/// The phone numbers of a contact, in order: `custom_fields_values[]` entries with
/// `field_code: "PHONE"` (REST v4) or `code: "PHONE"` (the v2 layout of webhooks).
pub fn contact_phones(contact: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for key in ["custom_fields_values", "custom_fields"] {
        let fields: Vec<&Value> = match contact.get(key) {
            Some(Value::Array(a)) => a.iter().collect(),
            Some(Value::Object(m)) => m.values().collect(),
            _ => continue,
        };
        for field in fields {
            let code = field
                .get("field_code")
                .or_else(|| field.get("code"))
                .and_then(Value::as_str);
            if code != Some("PHONE") {
                continue;
            }
            let values: Vec<&Value> = match field.get("values") {
                Some(Value::Array(a)) => a.iter().collect(),
                Some(Value::Object(m)) => m.values().collect(),
                _ => Vec::new(),
            };
            for v in values {
                if let Some(phone) = v.get("value").and_then(id_text)
                    && !out.contains(&phone)
                {
                    out.push(phone);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const LONG: &str = "leads%5Bstatus%5D%5B0%5D%5Bid%5D=10701093&leads%5Bstatus%5D%5B0%5D%5Bstatus_id%5D=142\
        &leads%5Bstatus%5D%5B0%5D%5Bold_status_id%5D=20067736&leads%5Bstatus%5D%5B0%5D%5Bpipeline_id%5D=9217056\
        &leads%5Bstatus%5D%5B0%5D%5Bprice%5D=22500&leads%5Bstatus%5D%5B0%5D%5Blast_modified%5D=1539782664\
        &leads%5Bstatus%5D%5B0%5D%5Bname%5D=Caf%C3%A9+S%C3%A3o+Paulo\
        &leads%5Bstatus%5D%5B0%5D%5Bcustom_fields%5D%5B0%5D%5Bcode%5D=UTM\
        &leads%5Bstatus%5D%5B0%5D%5Bcustom_fields%5D%5B0%5D%5Bvalues%5D%5B0%5D%5Bvalue%5D=x\
        &account%5Bsubdomain%5D=acme&account%5Bid%5D=17769199&account%5B_links%5D%5Bself%5D=https%3A%2F%2Facme.amocrm.ru";

    #[test]
    fn percent_encoded_and_raw_brackets_give_the_same_tree_with_non_ascii_values() {
        let encoded = parse_form(LONG.as_bytes());
        let raw = parse_form(
            "leads[status][0][id]=10701093&leads[status][0][status_id]=142&leads[status][0][old_status_id]=20067736\
             &leads[status][0][pipeline_id]=9217056&leads[status][0][price]=22500&leads[status][0][last_modified]=1539782664\
             &leads[status][0][name]=Caf%C3%A9+S%C3%A3o+Paulo&leads[status][0][custom_fields][0][code]=UTM\
             &leads[status][0][custom_fields][0][values][0][value]=x\
             &account[subdomain]=acme&account[id]=17769199&account[_links][self]=https%3A%2F%2Facme.amocrm.ru"
                .as_bytes(),
        );
        assert_eq!(encoded, raw);
        assert_eq!(encoded["leads"]["status"]["0"]["name"], "Café São Paulo");
        assert_eq!(
            encoded["account"]["_links"]["self"],
            "https://acme.amocrm.ru"
        );
        let body = read_body(&encoded);
        assert_eq!(
            body.stages,
            vec![LeadStage {
                at: "leads[status][0]".into(),
                lead_id: "10701093".into(),
                status_id: "142".into(),
                pipeline_id: Some("9217056".into()),
                price: Some(Decimal::from(22500)),
                changed_at: Some(1539782664),
            }]
        );
        assert!(body.unused.is_empty(), "{:?}", body.unused);
    }

    #[test]
    fn several_entities_and_indices_are_all_read_in_index_order_and_the_rest_is_listed() {
        let mut body = String::new();
        for i in [0, 1, 2, 10] {
            body.push_str(&format!(
                "leads[status][{i}][id]={}&leads[status][{i}][status_id]=142&",
                100 + i
            ));
        }
        // The short (Digital Pipeline) format: no price, no times.
        body.push_str(
            "leads[add][0][id]=7&leads[add][0][status_id]=555&leads[add][0][pipeline_id]=1&",
        );
        body.push_str("leads[update][0][id]=100&leads[update][0][price]=5&");
        body.push_str(
            "contacts[update][0][id]=9&leads[status][3][status_id]=1&leads[delete][0][id]=8&",
        );
        body.push_str("account[id]=17769199");
        let read = read_body(&parse_form(body.as_bytes()));
        let ids: Vec<&str> = read.stages.iter().map(|s| s.lead_id.as_str()).collect();
        assert_eq!(ids, ["7", "100", "101", "102", "110"]);
        assert_eq!(read.stages[0].price, None);
        assert_eq!(read.stages[0].changed_at, None);
        assert_eq!(read.unused.len(), 4, "{:?}", read.unused);
        assert!(
            read.unused
                .iter()
                .any(|u| u == "leads[status][3]: no lead id")
        );
        assert!(
            read.unused
                .iter()
                .any(|u| u.starts_with("contacts[update][0] (contacts 9)"))
        );
    }

    #[test]
    fn a_body_must_name_the_integrations_account_everywhere_it_names_one() {
        let check = |body: &str| {
            belongs_to(
                &body_account(&parse_form(body.as_bytes())),
                "17769199",
                "acme",
            )
        };
        assert!(check("account[id]=17769199&account[subdomain]=ACME").is_ok());
        assert!(check("account[subdomain]=acme").is_ok());
        assert!(check("account[id]=1").is_err());
        assert!(check("account[id]=17769199&account[subdomain]=evil").is_err());
        assert!(check("leads[status][0][id]=1").is_err());
        assert!(
            check("account[id]=17769199&leads[status][0][id]=1&leads[status][0][account_id]=2")
                .is_err()
        );
    }

    #[test]
    fn odd_keys_never_panic() {
        let t = parse_form(b"a[b=1&a=2&a[c]=3&[x]=4&b[]=5&b[]=6&=7&c[d]]=8");
        assert_eq!(t["a"]["b"], "1");
        assert_eq!(t["b"]["0"], "5");
        assert_eq!(t["b"]["1"], "6");
    }

    #[test]
    fn the_main_contact_and_its_phones_are_read_from_rest_answers_in_both_layouts() {
        let lead = json!({"id": 1, "price": 1500, "_embedded": {"contacts": [
            {"id": 11, "is_main": false}, {"id": 12, "is_main": true}]}});
        assert_eq!(main_contact_id(&lead).as_deref(), Some("12"));
        assert_eq!(lead_price(&lead), Some(Decimal::from(1500)));
        let contact = json!({"id": 12, "custom_fields_values": [
            {"field_code": "EMAIL", "values": [{"value": "a@b.c"}]},
            {"field_code": "PHONE", "field_type": "multitext",
             "values": [{"value": "+55 11 98765-4321", "enum_code": "MOB"}, {"value": "+5511912345678"}]}]});
        assert_eq!(
            contact_phones(&contact),
            ["+55 11 98765-4321", "+5511912345678"]
        );
        let v2 = json!({"custom_fields": {"0": {"code": "PHONE", "values": {"0": {"value": "+1 415 555 0100", "enum": "1"}}}}});
        assert_eq!(contact_phones(&v2), ["+1 415 555 0100"]);
        assert!(main_contact_id(&json!({"id": 1})).is_none());
    }
}
