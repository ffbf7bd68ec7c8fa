//! A PDU as the algorithms see it: the event's JSON, checked against its room version's event
//! format (server-server-api "Checks performed on receipt of a PDU", step 1; pdu_v1 ... pdu_v12
//! in the spec data), with the fields the rules read pulled out once. Also the signature and
//! content-hash checks of steps 2 and 3 ("Validating hashes and signatures on received
//! events").

use serde_json::{Map, Value};

use crate::keys::VerifyKey;
use crate::sign::{self, SignatureError};
use crate::version::{EventIdFormat, RoomVersion};
use crate::{base64, canonical, hash, ids, redact};

/// The largest event, in bytes of canonical JSON (client-server-api "Size limits").
pub const MAX_EVENT_BYTES: usize = 65_536;
/// The longest `sender`, `room_id`, `type`, `state_key` and event id, in bytes.
pub const MAX_ID_BYTES: usize = 255;
/// The most `prev_events` a PDU may list.
pub const MAX_PREV_EVENTS: usize = 20;
/// The most `auth_events` a PDU may list.
pub const MAX_AUTH_EVENTS: usize = 10;

/// An event, checked against its room version's format.
#[derive(Clone, Debug, PartialEq)]
pub struct Pdu {
    pub event_id: String,
    /// The room id; for a room version 12 create event, the one it makes.
    pub room_id: String,
    pub sender: String,
    pub kind: String,
    pub state_key: Option<String>,
    pub prev_events: Vec<String>,
    pub auth_events: Vec<String>,
    pub depth: i64,
    pub origin_server_ts: i64,
    /// The event a redaction redacts: top-level `redacts` before v11, `content.redacts` from.
    pub redacts: Option<String>,
    /// The event as received (v3 on: without `event_id`).
    pub json: Value,
    /// `content.membership` when it is one of the spec's values (kept beside the content: the
    /// rules read it for every member event they look at).
    known_membership: Option<&'static str>,
}

/// An event that does not fit its room version's format, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid event at {path}: {reason}")]
pub struct FormatError {
    /// JSON pointer (`""` is the whole event).
    pub path: String,
    pub reason: String,
}

fn bad(path: &str, reason: impl Into<String>) -> FormatError {
    FormatError {
        path: path.to_string(),
        reason: reason.into(),
    }
}

impl Pdu {
    /// Reads `json` as a PDU of `version`, checking its format; the event id is computed
    /// (v3 on) or read (v1-2).
    pub fn from_json(version: &RoomVersion, json: Value) -> Result<Pdu, FormatError> {
        Pdu::read(version, json, None)
    }

    /// A PDU this process has just built and signed ([`crate::build::build`]): its values
    /// were checked for canonical JSON before signing, and signing gave its reference hash,
    /// so neither is worked out again.
    pub(crate) fn from_built(
        version: &RoomVersion,
        json: Value,
        reference: [u8; 32],
    ) -> Result<Pdu, FormatError> {
        Pdu::read(version, json, Some(reference))
    }

    fn read(
        version: &RoomVersion,
        json: Value,
        reference: Option<[u8; 32]>,
    ) -> Result<Pdu, FormatError> {
        let map = json
            .as_object()
            .ok_or_else(|| bad("", "an event is a JSON object"))?;
        if version.strict_canonical_json && reference.is_none() {
            canonical::validate(&json).map_err(|e| bad(&e.path, e.reason))?;
        }
        let text = |key: &str| -> Result<Option<&str>, FormatError> {
            match map.get(key) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(_) => Err(bad(&format!("/{key}"), "must be a string")),
            }
        };
        let required = |key: &str| -> Result<&str, FormatError> {
            text(key)?.ok_or_else(|| bad(&format!("/{key}"), "is required"))
        };
        let integer = |key: &str| -> Result<i64, FormatError> {
            map.get(key)
                .ok_or_else(|| bad(&format!("/{key}"), "is required"))?
                .as_i64()
                .ok_or_else(|| bad(&format!("/{key}"), "must be an integer"))
        };
        let kind = required("type")?;
        let sender = required("sender")?;
        if !ids::is_user_id(sender) {
            return Err(bad("/sender", format!("{sender:?} is not a user id")));
        }
        let state_key = text("state_key")?;
        let content = map
            .get("content")
            .ok_or_else(|| bad("/content", "is required"))?;
        if !content.is_object() {
            return Err(bad("/content", "must be an object"));
        }
        let origin_server_ts = integer("origin_server_ts")?;
        let depth = integer("depth")?;
        if depth < 0 || depth > version.max_depth() {
            return Err(bad(
                "/depth",
                format!("{depth} is outside 0..={}", version.max_depth()),
            ));
        }
        match map.get("hashes") {
            Some(Value::Object(h)) if h.get("sha256").is_some_and(Value::is_string) => {}
            Some(_) => return Err(bad("/hashes/sha256", "must be a string")),
            None => return Err(bad("/hashes", "is required")),
        }
        match map.get("signatures") {
            Some(Value::Object(s)) => {
                for (server, sigs) in s {
                    let ok = sigs
                        .as_object()
                        .is_some_and(|m| m.values().all(Value::is_string));
                    if !ok {
                        return Err(bad(
                            &format!("/signatures/{server}"),
                            "must map key ids to strings",
                        ));
                    }
                }
            }
            Some(_) => return Err(bad("/signatures", "must be an object")),
            None => return Err(bad("/signatures", "is required")),
        }
        if let Some(u) = map.get("unsigned") {
            if !u.is_object() {
                return Err(bad("/unsigned", "must be an object"));
            }
        }
        let prev_events = event_refs(version, map, "prev_events", MAX_PREV_EVENTS)?;
        let auth_events = event_refs(version, map, "auth_events", MAX_AUTH_EVENTS)?;
        let is_create = kind == "m.room.create" && state_key == Some("");
        let event_id = match version.event_ids {
            EventIdFormat::Opaque => {
                let id = required("event_id")?;
                if !id.starts_with('$')
                    || ids::server_of(id).is_none_or(|s| !ids::is_server_name(s))
                {
                    return Err(bad("/event_id", format!("{id:?} is not `$opaque:server`")));
                }
                id.to_string()
            }
            _ => match &reference {
                Some(r) => hash::event_id_of_reference(version, r),
                None => hash::event_id(version, &json),
            }
            .unwrap_or_default(),
        };
        let room_id = if version.room_id_is_create {
            if is_create {
                if map.contains_key("room_id") {
                    // Rule 1.2 of the v12 auth rules refuses it; the format allows it to be read.
                    required("room_id")?.to_string()
                } else {
                    hash::room_id_of_create(&event_id)
                }
            } else {
                let r = required("room_id")?;
                if !ids::is_hash_room_id(r) {
                    return Err(bad(
                        "/room_id",
                        format!("{r:?} is not `!` and a URL-safe sha256"),
                    ));
                }
                r.to_string()
            }
        } else {
            let r = required("room_id")?;
            if !ids::is_room_id_with_server(r) {
                return Err(bad("/room_id", format!("{r:?} is not `!opaque:server`")));
            }
            r.to_string()
        };
        let redacts = if version.redacts_in_content {
            match content.get("redacts") {
                Some(Value::String(s)) if kind == "m.room.redaction" => Some(s.clone()),
                _ => None,
            }
        } else {
            text("redacts")?.map(str::to_string)
        };
        for (key, value) in [
            ("sender", Some(sender)),
            ("type", Some(kind)),
            ("state_key", state_key),
            ("room_id", Some(room_id.as_str())),
            ("event_id", Some(event_id.as_str())),
        ] {
            if value.is_some_and(|v| v.len() > MAX_ID_BYTES) {
                return Err(bad(&format!("/{key}"), "is longer than 255 bytes"));
            }
        }
        let size = canonical::encode(&json).len();
        if size > MAX_EVENT_BYTES {
            return Err(bad("", format!("{size} bytes is larger than 65536")));
        }
        let known_membership = match content.get("membership").and_then(Value::as_str) {
            Some("join") => Some("join"),
            Some("invite") => Some("invite"),
            Some("leave") => Some("leave"),
            Some("ban") => Some("ban"),
            Some("knock") => Some("knock"),
            _ => None,
        };
        Ok(Pdu {
            known_membership,
            event_id,
            room_id,
            sender: sender.to_string(),
            kind: kind.to_string(),
            state_key: state_key.map(str::to_string),
            prev_events,
            auth_events,
            depth,
            origin_server_ts,
            redacts,
            json,
        })
    }

    pub fn is_state(&self) -> bool {
        self.state_key.is_some()
    }

    /// Whether this is the `(kind, state_key)` state event.
    pub fn is(&self, kind: &str, state_key: &str) -> bool {
        self.kind == kind && self.state_key.as_deref() == Some(state_key)
    }

    /// The event's `content` (an object: the format check saw to it).
    pub fn content(&self) -> &Value {
        &self.json["content"]
    }

    /// A string field of `content`.
    pub fn content_str(&self, key: &str) -> Option<&str> {
        self.content().get(key).and_then(Value::as_str)
    }

    /// `content.membership` of a member event.
    pub fn membership(&self) -> Option<&str> {
        self.known_membership
            .or_else(|| self.content_str("membership"))
    }

    /// The server of the sender.
    pub fn sender_server(&self) -> &str {
        ids::server_of(&self.sender).unwrap_or("")
    }

    /// The servers whose signatures the event needs (server-server-api "Validating hashes and
    /// signatures on received events"): the sender's; in v1-2 also the event id's; for a
    /// third-party invite, the server of the invited `mxid` instead of the sender's.
    pub fn required_signers(&self, version: &RoomVersion) -> Vec<String> {
        let mut out = Vec::new();
        let tpi_mxid = (self.kind == "m.room.member" && self.membership() == Some("invite"))
            .then(|| {
                self.content()
                    .get("third_party_invite")?
                    .get("signed")?
                    .get("mxid")?
                    .as_str()
            })
            .flatten();
        match tpi_mxid.and_then(ids::server_of) {
            Some(s) => out.push(s.to_string()),
            None => out.push(self.sender_server().to_string()),
        }
        if version.event_ids == EventIdFormat::Opaque {
            if let Some(s) = ids::server_of(&self.event_id) {
                if !out.iter().any(|o| o == s) {
                    out.push(s.to_string());
                }
            }
        }
        out
    }

    /// The content hash this event claims (`hashes.sha256`, decoded).
    pub fn claimed_content_hash(&self) -> Option<Vec<u8>> {
        base64::decode(self.json.get("hashes")?.get("sha256")?.as_str()?)
    }

    /// Whether the content hash matches the event.
    pub fn content_hash_matches(&self) -> bool {
        match (self.json.as_object(), self.claimed_content_hash()) {
            (Some(map), Some(claimed)) => hash::content_hash(map)[..] == claimed[..],
            _ => false,
        }
    }

    /// The event redacted as its version says.
    pub fn redacted(&self, version: &RoomVersion) -> Value {
        redact::redact(version, &self.json)
    }
}

/// `prev_events` or `auth_events`: event ids, or in v1-2 `[event_id, {"sha256": ...}]` pairs.
fn event_refs(
    version: &RoomVersion,
    map: &Map<String, Value>,
    key: &str,
    max: usize,
) -> Result<Vec<String>, FormatError> {
    let path = format!("/{key}");
    let items = map
        .get(key)
        .ok_or_else(|| bad(&path, "is required"))?
        .as_array()
        .ok_or_else(|| bad(&path, "must be an array"))?;
    if items.len() > max {
        return Err(bad(
            &path,
            format!("lists {} events; at most {max}", items.len()),
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let at = format!("{path}/{i}");
            let id = if version.event_ids == EventIdFormat::Opaque {
                let pair = item
                    .as_array()
                    .filter(|p| p.len() == 2)
                    .ok_or_else(|| bad(&at, "must be an [event_id, {sha256}] pair"))?;
                // pdu_v1 asks for {"sha256": <hash>}; Synapse writes {} for events it makes
                // in one batch (createRoom), so any object is taken.
                if !pair[1].is_object() {
                    return Err(bad(
                        &format!("{at}/1"),
                        "must be an object ({\"sha256\": <hash>})",
                    ));
                }
                pair[0]
                    .as_str()
                    .ok_or_else(|| bad(&format!("{at}/0"), "must be a string"))?
            } else {
                item.as_str()
                    .ok_or_else(|| bad(&at, "must be an event id"))?
            };
            if !id.starts_with('$') || id.len() > MAX_ID_BYTES {
                return Err(bad(&at, format!("{id:?} is not an event id")));
            }
            Ok(id.to_string())
        })
        .collect()
}

/// Why an event's signatures or hash did not check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("signature check failed for {server}: {error}")]
    Signature {
        server: String,
        error: SignatureError,
    },
    #[error("content hash check failed: the event's hashes.sha256 does not match its content")]
    ContentHash,
}

/// A key to check event signatures with, and until when it may be used.
pub type KeyLookup<'a> = dyn Fn(&str, &str) -> Option<(VerifyKey, i64)> + 'a;

/// Steps 2 and 3 of the checks on receipt: every server the event needs has signed its
/// redacted form with a key `keys(server, key_id)` knows (keys from v5 on must be valid at the
/// event's `origin_server_ts`; unknown and expired keys are skipped, but at least one
/// signature per server must verify), and then the content hash matches. A hash mismatch is
/// reported after the signatures pass: the receiver then keeps the redacted copy.
pub fn verify(version: &RoomVersion, pdu: &Pdu, keys: &KeyLookup<'_>) -> Result<(), VerifyError> {
    let redacted = pdu.redacted(version);
    let ts = pdu.origin_server_ts;
    for server in pdu.required_signers(version) {
        let lookup = |key_id: &str| -> Option<VerifyKey> {
            let (key, valid_until) = keys(&server, key_id)?;
            (!version.key_validity || valid_until >= ts).then_some(key)
        };
        sign::verify_signed_by(&redacted, &server, &lookup).map_err(|error| {
            VerifyError::Signature {
                server: server.clone(),
                error,
            }
        })?;
    }
    if pdu.content_hash_matches() {
        Ok(())
    } else {
        Err(VerifyError::ContentHash)
    }
}
