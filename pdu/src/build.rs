//! Building a new PDU (server-server-api "PDUs", "Auth events selection", "Adding hashes and
//! signatures to outgoing events"): `auth_events` as the version selects them (v12 never cites
//! the create event), `prev_events`, `depth`, the content hash, the server's signature, and
//! the event id in the version's format.

use serde_json::{json, Map, Value};

use crate::auth::{self, AuthState};
use crate::keys::SigningKey;
use crate::pdu::{FormatError, Pdu};
use crate::version::{EventIdFormat, RoomVersion};
use sha2::Digest as _;

use crate::{base64, canonical, hash, redact};

/// What a new event says; the builder adds the graph, hashes and signature.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub kind: String,
    pub state_key: Option<String>,
    pub sender: String,
    pub content: Value,
    pub origin_server_ts: i64,
    /// For redactions before room version 11 (from v11, `content.redacts`).
    pub redacts: Option<String>,
}

impl NewEvent {
    pub fn new(
        kind: &str,
        state_key: Option<&str>,
        sender: &str,
        content: Value,
        ts: i64,
    ) -> NewEvent {
        NewEvent {
            kind: kind.to_string(),
            state_key: state_key.map(str::to_string),
            sender: sender.to_string(),
            content,
            origin_server_ts: ts,
            redacts: None,
        }
    }
}

/// The server that makes and signs an event.
#[derive(Clone, Copy, Debug)]
pub struct Origin<'a> {
    pub server_name: &'a str,
    pub key: &'a SigningKey,
}

/// Why an event could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error("could not make a random event id: {0}")]
    Random(String),
}

/// Builds, hashes and signs a new event of room `room_id` (ignored for a room version 12
/// create event, whose id makes the room id) on top of `prev` (the forward extremities),
/// citing as auth events what `state` (the state before the event) holds for the selection.
pub fn build(
    v: &RoomVersion,
    room_id: &str,
    new: NewEvent,
    prev: &[&Pdu],
    state: &dyn AuthState,
    origin: Origin<'_>,
) -> Result<Pdu, BuildError> {
    let is_create = new.kind == "m.room.create" && new.state_key.as_deref() == Some("");
    let reference = |e: &Pdu| -> Value {
        if v.event_ids == EventIdFormat::Opaque {
            let h = hash::reference_hash(v, &e.json);
            json!([e.event_id, {"sha256": base64::encode(&h)}])
        } else {
            json!(e.event_id)
        }
    };
    let auth_events: Vec<Value> = auth::auth_types(
        v,
        &new.kind,
        new.state_key.as_deref(),
        &new.sender,
        &new.content,
    )
    .iter()
    .filter_map(|(k, s)| state.get(k, s))
    .map(reference)
    .collect();
    let prev_events: Vec<Value> = prev.iter().map(|e| reference(e)).collect();
    let depth = prev
        .iter()
        .map(|e| e.depth)
        .max()
        .map_or(1, |d| d.saturating_add(1))
        .min(v.max_depth());
    let mut event = Map::new();
    event.insert("type".into(), json!(new.kind));
    if let Some(k) = &new.state_key {
        event.insert("state_key".into(), json!(k));
    }
    event.insert("sender".into(), json!(new.sender));
    event.insert("content".into(), new.content);
    event.insert("origin_server_ts".into(), json!(new.origin_server_ts));
    // `origin` is no longer part of the PDU formats, but the schemas of the invite requests
    // and templates still require it; it is the signing server's name.
    event.insert("origin".into(), json!(origin.server_name));
    event.insert("depth".into(), json!(depth));
    event.insert("prev_events".into(), Value::Array(prev_events));
    event.insert("auth_events".into(), Value::Array(auth_events));
    if !(is_create && v.room_id_is_create) {
        event.insert("room_id".into(), json!(room_id));
    }
    if let (Some(r), false) = (&new.redacts, v.redacts_in_content) {
        event.insert("redacts".into(), json!(r));
    }
    if v.event_ids == EventIdFormat::Opaque {
        let mut bytes = [0u8; 12];
        getrandom::fill(&mut bytes).map_err(|e| BuildError::Random(e.to_string()))?;
        let opaque = base64::encode_url_safe(&bytes);
        event.insert(
            "event_id".into(),
            json!(format!("${opaque}:{}", origin.server_name)),
        );
    }
    let mut event = Value::Object(event);
    if v.strict_canonical_json {
        canonical::validate(&event).map_err(|e| FormatError {
            path: e.path,
            reason: e.reason,
        })?;
    }
    let reference = hash_and_sign(v, &mut event, origin);
    Ok(Pdu::from_built(v, event, reference)?)
}

/// Adds the content hash and the origin's signature of the redacted event to `event`
/// (server-server-api "Adding hashes and signatures to outgoing events"), and returns the
/// event's reference hash, which the signed bytes give at no extra cost.
pub fn hash_and_sign(v: &RoomVersion, event: &mut Value, origin: Origin<'_>) -> [u8; 32] {
    let Some(map) = event.as_object_mut() else {
        return [0; 32];
    };
    let h = hash::content_hash(map);
    let hashes = json!({"sha256": base64::encode(&h)});
    // The signature covers the redacted event without `signatures` and `unsigned`: the same
    // bytes whose sha256 is the reference hash. `hashes` is written in place, not looked up.
    let mut bytes = String::with_capacity(512);
    redact::write_signed_part_with(v, map, Some(&hashes), &mut bytes);
    map.insert("hashes".into(), hashes);
    let signature = origin.key.sign_bytes(bytes.as_bytes());
    let reference: [u8; 32] = sha2::Sha256::digest(bytes.as_bytes()).into();
    let sigs = map.entry("signatures").or_insert_with(|| json!({}));
    if !sigs.is_object() {
        *sigs = json!({});
    }
    if let Some(sigs) = sigs.as_object_mut() {
        let mine = sigs
            .entry(origin.server_name.to_string())
            .or_insert_with(|| json!({}));
        if !mine.is_object() {
            *mine = json!({});
        }
        if let Some(mine) = mine.as_object_mut() {
            mine.insert(origin.key.key_id().to_string(), Value::String(signature));
        }
    }
    reference
}
