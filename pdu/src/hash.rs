//! Content hashes, reference hashes and event ids (server-server-api "Calculating the content
//! hash for an event", "Calculating the reference hash for an event"; rooms/v3 and
//! fragments/v4-event-ids), and v12 room ids (appendices "Room IDs").

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::version::{EventIdFormat, RoomVersion};
use crate::{base64, canonical, redact};

/// The canonical JSON of `object` without the keys in `skip`, hashed with sha256.
fn hash_without(object: &Map<String, Value>, skip: &[&str]) -> [u8; 32] {
    let mut out = String::with_capacity(512);
    let mut entries: Vec<(&String, &Value)> = object
        .iter()
        .filter(|(k, _)| !skip.contains(&k.as_str()))
        .collect();
    entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    out.push('{');
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        canonical::write_string(&mut out, k);
        out.push(':');
        canonical::write_value(&mut out, v);
    }
    out.push('}');
    Sha256::digest(out.as_bytes()).into()
}

/// The content hash: sha256 of the canonical JSON of the whole event without `unsigned`,
/// `signatures` and `hashes`.
pub fn content_hash(event: &Map<String, Value>) -> [u8; 32] {
    hash_without(event, &["unsigned", "signatures", "hashes"])
}

/// The reference hash: sha256 of the canonical JSON of the redacted event without
/// `signatures` and `unsigned`.
pub fn reference_hash(version: &RoomVersion, event: &Value) -> [u8; 32] {
    match event {
        Value::Object(map) => {
            let mut out = String::with_capacity(512);
            redact::write_signed_part(version, map, &mut out);
            Sha256::digest(out.as_bytes()).into()
        }
        other => Sha256::digest(canonical::encode(other).as_bytes()).into(),
    }
}

/// The event id of `event` in `version`: its `event_id` in v1-2 (`None` when it has none),
/// else `$` and its reference hash in the version's base64.
pub fn event_id(version: &RoomVersion, event: &Value) -> Option<String> {
    match version.event_ids {
        EventIdFormat::Opaque => event.get("event_id")?.as_str().map(str::to_string),
        _ => event_id_of_reference(version, &reference_hash(version, event)),
    }
}

/// The event id a reference hash gives (v3 on); `None` in versions whose ids are opaque.
pub fn event_id_of_reference(version: &RoomVersion, reference: &[u8; 32]) -> Option<String> {
    match version.event_ids {
        EventIdFormat::Opaque => None,
        EventIdFormat::Base64 => Some(format!("${}", base64::encode(reference))),
        EventIdFormat::UrlSafe => Some(format!("${}", base64::encode_url_safe(reference))),
    }
}

/// The room id a room version 12 create event makes: its event id with `!` for `$`.
pub fn room_id_of_create(create_event_id: &str) -> String {
    format!("!{}", create_event_id.trim_start_matches('$'))
}

/// The event id of the create event of a room version 12 room, from the room id.
pub fn create_id_of_room(room_id: &str) -> String {
    format!("${}", room_id.trim_start_matches('!'))
}
