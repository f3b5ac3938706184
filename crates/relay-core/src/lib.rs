//! The pure domain of capi-relay: business-messaging events as Meta defines them, their
//! validation, PII normalisation and hashing, and the payload sent to the Conversions API.
//!
//! Nothing here does I/O or reads a clock: callers pass `now` and options in, so every rule is
//! testable on its own. Storage lives in `relay-store`; HTTP, delivery and the CLI in `capi-relay`.

pub mod channel;
pub mod contact;
pub mod crm;
pub mod event;
pub mod event_id;
pub mod event_name;
pub mod graph_error;
pub mod issue;
pub mod kommo;
pub mod money;
pub mod pii;
pub mod storable;
pub mod validate;
pub mod webhook;

pub use channel::Channel;
pub use event::{CustomData, MetaEvent, UserData};
pub use issue::{Issue, IssueCode};
pub use validate::{Rejected, Validated, ValidationOptions, validate_event};

/// Most events Meta accepts in one `/{dataset_id}/events` request.
pub const MAX_EVENTS_PER_REQUEST: usize = 1_000;
