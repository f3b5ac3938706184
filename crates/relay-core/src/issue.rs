//! Errors and warnings about one event: a stable machine code, the JSON path of the field and a
//! sentence for humans. Clients match on the code; people read the message.

use std::fmt;

use serde::Serialize;

/// Stable machine codes. Renaming one is a breaking change for API clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IssueCode {
    /// The event is not a JSON object.
    NotAnObject,
    /// A required field is absent.
    MissingField,
    /// A field has the wrong JSON type.
    InvalidType,
    /// A field has the right type but a value Meta does not accept.
    InvalidValue,
    /// `action_source` is not `business_messaging`.
    UnsupportedActionSource,
    /// The channel's identity fields (asset id and click or scoped id) are incomplete.
    MissingIdentity,
    /// Two fields that mean the same thing disagree.
    ConflictingFields,
    /// A web event name with no business-messaging equivalent.
    WebEventName,
    /// A name that is neither a business-messaging nor a web event name.
    CustomEventName,
    /// A web event name was replaced by its business-messaging equivalent (warning).
    EventNameMapped,
    /// `event_time` is older than Meta's 7-day limit.
    EventTooOld,
    /// `event_time` is in the future beyond the allowed clock skew.
    EventInFuture,
    /// An ISO 4217 code that does not exist.
    InvalidCurrency,
    /// A PII value that could not be normalised; it was dropped (warning).
    InvalidPii,
    /// A value that looks already hashed but was not marked `pre_hashed` (warning).
    LooksPrehashed,
    /// A field that is not sent for business-messaging events; it was dropped (warning).
    FieldDropped,
    /// `messaging_channel` was absent and was inferred from the identity fields (warning).
    ChannelInferred,
    /// The event's business asset is not registered with the relay.
    UnknownAsset,
    /// A conversion by contact for which no click or scoped id could be found.
    NoAttribution,
}

impl IssueCode {
    pub fn as_str(self) -> &'static str {
        match self {
            IssueCode::NotAnObject => "not_an_object",
            IssueCode::MissingField => "missing_field",
            IssueCode::InvalidType => "invalid_type",
            IssueCode::InvalidValue => "invalid_value",
            IssueCode::UnsupportedActionSource => "unsupported_action_source",
            IssueCode::MissingIdentity => "missing_identity",
            IssueCode::ConflictingFields => "conflicting_fields",
            IssueCode::WebEventName => "web_event_name",
            IssueCode::CustomEventName => "custom_event_name",
            IssueCode::EventNameMapped => "event_name_mapped",
            IssueCode::EventTooOld => "event_too_old",
            IssueCode::EventInFuture => "event_in_future",
            IssueCode::InvalidCurrency => "invalid_currency",
            IssueCode::InvalidPii => "invalid_pii",
            IssueCode::LooksPrehashed => "looks_prehashed",
            IssueCode::FieldDropped => "field_dropped",
            IssueCode::ChannelInferred => "channel_inferred",
            IssueCode::UnknownAsset => "unknown_asset",
            IssueCode::NoAttribution => "no_attribution",
        }
    }
}

/// One error or warning about one field of one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Issue {
    pub code: IssueCode,
    /// JSON path of the field inside the event, e.g. `user_data.ctwa_clid`; empty for the event.
    pub path: String,
    pub message: String,
}

impl Issue {
    pub fn new(code: IssueCode, path: impl Into<String>, message: impl Into<String>) -> Self {
        Issue {
            code,
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "[{}] {}", self.code.as_str(), self.message)
        } else {
            write!(
                f,
                "[{}] {}: {}",
                self.code.as_str(),
                self.path,
                self.message
            )
        }
    }
}
