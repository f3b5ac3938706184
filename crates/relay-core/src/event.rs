//! The event as sent to Meta: a validated, normalised server event for business messaging.
//!
//! Field order follows Meta's documentation, so a serialised event reads like Meta's samples.
//! Only `validate` builds these; everything in one is already checked and hashed.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::Value;

use crate::{Channel, money};

/// `action_source` of every business-messaging event.
pub const ACTION_SOURCE: &str = "business_messaging";

/// One server event, ready for the `data` array of `POST /{dataset_id}/events`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetaEvent {
    pub event_name: String,
    /// Unix seconds of the real conversion, kept as submitted so retries never re-stamp it.
    pub event_time: i64,
    pub event_id: String,
    pub action_source: &'static str,
    pub messaging_channel: Channel,
    pub user_data: UserData,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub custom_data: Option<CustomData>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opt_out: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_event_data: Option<OriginalEventData>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messaging_outcome_data: Option<MessagingOutcomeData>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_segmentation: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_processing_options: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_processing_options_country: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_processing_options_state: Option<i64>,
}

impl MetaEvent {
    /// The business asset the event belongs to (WABA, Page or Instagram account id).
    pub fn asset_id(&self) -> &str {
        match self.messaging_channel {
            Channel::WhatsApp => self.user_data.whatsapp_business_account_id.as_deref(),
            Channel::Messenger => self.user_data.page_id.as_deref(),
            Channel::Instagram => self.user_data.instagram_business_account_id.as_deref(),
        }
        .unwrap_or_default()
    }
}

/// One hashed value, or several (Meta accepts both).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Hashed {
    One(String),
    Many(Vec<String>),
}

impl Hashed {
    /// Builds from distinct digests in submission order; `None` when there are none.
    pub fn from_digests(mut digests: Vec<String>) -> Option<Hashed> {
        let mut seen = std::collections::HashSet::new();
        digests.retain(|d| seen.insert(d.clone()));
        match digests.len() {
            0 => None,
            1 => digests.pop().map(Hashed::One),
            _ => Some(Hashed::Many(digests)),
        }
    }

    pub fn values(&self) -> &[String] {
        match self {
            Hashed::One(v) => std::slice::from_ref(v),
            Hashed::Many(v) => v,
        }
    }
}

/// Customer information. Channel ids are never hashed; PII fields hold SHA-256 hex only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UserData {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub whatsapp_business_account_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ctwa_clid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_scoped_user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instagram_business_account_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ig_sid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub em: Option<Hashed>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ph: Option<Hashed>,
    #[serde(rename = "fn", skip_serializing_if = "Option::is_none")]
    pub first_name: Option<Hashed>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ln: Option<Hashed>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ge: Option<Hashed>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db: Option<Hashed>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ct: Option<Hashed>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub st: Option<Hashed>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zp: Option<Hashed>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<Hashed>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<Hashed>,
    /// Identifiers Meta wants unhashed (`lead_id`, `fbc`, `client_ip_address`, …), as submitted.
    #[serde(flatten)]
    pub unhashed: BTreeMap<String, String>,
}

impl UserData {
    /// The slot of a hashed PII field.
    pub fn pii_mut(&mut self, field: crate::pii::PiiField) -> &mut Option<Hashed> {
        use crate::pii::PiiField::*;
        match field {
            Email => &mut self.em,
            Phone => &mut self.ph,
            FirstName => &mut self.first_name,
            LastName => &mut self.ln,
            Gender => &mut self.ge,
            DateOfBirth => &mut self.db,
            City => &mut self.ct,
            State => &mut self.st,
            Zip => &mut self.zp,
            Country => &mut self.country,
            ExternalId => &mut self.external_id,
        }
    }
}

/// Business data about the conversion (spec §2.9).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CustomData {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    #[serde(
        serialize_with = "money::serialize_opt_amount",
        skip_serializing_if = "Option::is_none"
    )]
    pub value: Option<Decimal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_ids: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contents: Option<Vec<Content>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_category: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_items: Option<u64>,
    #[serde(
        serialize_with = "money::serialize_opt_amount",
        skip_serializing_if = "Option::is_none"
    )]
    pub predicted_ltv: Option<Decimal>,
    #[serde(
        serialize_with = "money::serialize_opt_amount",
        skip_serializing_if = "Option::is_none"
    )]
    pub net_revenue: Option<Decimal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_category: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search_string: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item_number: Option<String>,
    /// Custom properties, passed through unchanged (Meta allows any extra key).
    #[serde(flatten)]
    pub custom_properties: BTreeMap<String, Value>,
}

/// One line of `custom_data.contents`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Content {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantity: Option<u64>,
    #[serde(
        serialize_with = "money::serialize_opt_amount",
        skip_serializing_if = "Option::is_none"
    )]
    pub item_price: Option<Decimal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_category: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub brand: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
}

/// Links a delayed event to the one it follows up (Meta's `original_event_data`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OriginalEventData {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_time: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}

/// Marks a re-posted WhatsApp automatic event (`{"outcome_type": "automatic_events"}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MessagingOutcomeData {
    pub outcome_type: String,
}
