//! Deterministic event ids: the same conversion submitted twice gets the same id, so the
//! relay's deduplication recognises a client's retry even when the client sent no `event_id`.

use sha2::{Digest, Sha256};

use crate::MetaEvent;

/// Prefix that marks ids the relay derived rather than the client chose.
pub const DERIVED_PREFIX: &str = "cr1-";

/// Derives an id from everything that identifies the conversion: name, time, channel,
/// identity and business data. `event.event_id` is ignored.
pub fn derive(event: &MetaEvent) -> String {
    let mut keyed = event.clone();
    keyed.event_id = String::new();
    // Serialisation of these structs is deterministic: fixed field order, sorted maps.
    let canonical = serde_json::to_vec(&keyed).expect("a MetaEvent always serialises");
    let digest = Sha256::digest(&canonical);
    format!("{DERIVED_PREFIX}{}", hex::encode(&digest[..16]))
}
