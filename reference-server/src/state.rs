//! The server's state: users, tokens, devices, rooms with their timelines and current state,
//! and the per-user streams that /sync reads. Every change is also written to a [`Batch`] that
//! the caller commits before answering. Events themselves live in the database and are read
//! through a bounded cache ([`crate::events`]); what stays in memory per event is its position
//! in its room's timeline (and a notification's position and highlight count). At start-up
//! the rooms are rebuilt from their state events alone, not by replaying history.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use mxconform_pdu::build::{NewEvent, Origin};
use mxconform_pdu::{Pdu, RoomVersion, SigningKey};
use serde_json::{json, Map, Value};

use crate::error::{ApiError, ApiResult};
use crate::events::EventCache;
use crate::store::{Batch, EventRow, Loaded, NotificationRow, Store, StoredEvent};

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Unpadded URL-safe base64 of random bytes.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the operating system's random source works");
    base64url(&buf)
}

pub fn base64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(data.len() * 4 / 3 + 2);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[derive(Clone, Debug)]
pub struct User {
    pub user_id: String,
    pub password_hash: Option<String>,
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
    pub deactivated: bool,
    /// Locked by an administrator: every request answers 401 `M_USER_LOCKED`.
    pub locked: bool,
    /// Suspended by an administrator: reading works, acting does not (403 `M_USER_SUSPENDED`).
    pub suspended: bool,
    /// Custom profile fields (any JSON), by key.
    pub fields: BTreeMap<String, Value>,
}

impl User {
    /// A new, active account, its display name its localpart.
    pub fn new(user_id: &str, password_hash: Option<String>) -> User {
        let localpart = user_id
            .trim_start_matches('@')
            .split(':')
            .next()
            .unwrap_or_default();
        User {
            user_id: user_id.to_string(),
            password_hash,
            displayname: Some(localpart.to_string()),
            avatar_url: None,
            deactivated: false,
            locked: false,
            suspended: false,
            fields: Default::default(),
        }
    }

    fn to_record(&self) -> Value {
        json!({
            "password_hash": self.password_hash,
            "displayname": self.displayname,
            "avatar_url": self.avatar_url,
            "deactivated": self.deactivated,
            "locked": self.locked,
            "suspended": self.suspended,
            "fields": self.fields,
        })
    }
}

#[derive(Clone, Debug)]
pub struct Device {
    pub display_name: Option<String>,
    pub last_seen_ts: u64,
    pub token: String,
    /// A refresh token, for clients that asked for one.
    pub refresh: Option<String>,
    /// The refresh token this one replaced: still valid until the new access or refresh
    /// token is used (a client that lost the refresh answer can retry).
    pub prev_refresh: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Event {
    pub pos: u64,
    pub event_id: String,
    pub room_id: String,
    pub sender: String,
    pub kind: String,
    pub state_key: Option<String>,
    pub content: Value,
    pub ts: u64,
    /// The sending device and transaction id, for `unsigned.transaction_id`.
    pub txn: Option<(String, String)>,
    /// The state event this one replaced, for `unsigned.prev_content`.
    pub replaces: Option<u64>,
    pub redacts: Option<String>,
    /// The redaction that removed this event's content.
    pub redacted_by: Option<u64>,
    /// The database no longer holds the original content (redacted, and its retention over).
    pub purged: bool,
    /// The rest of the signed PDU: `depth`, `prev_events`, `auth_events`, `hashes`,
    /// `signatures` (and `event_id` in room versions 1 and 2). With the fields above it is the
    /// event as signed ([`Event::pdu_json`]).
    pub rest: Box<Map<String, Value>>,
}

/// The PDU keys an [`Event`] holds as fields of its own, not in `rest`.
const PDU_FIELDS: [&str; 7] = [
    "type",
    "state_key",
    "sender",
    "content",
    "room_id",
    "origin_server_ts",
    "redacts",
];

impl Event {
    /// An event of the room at `pos` from its PDU.
    pub fn from_pdu(pos: u64, pdu: &Pdu, txn: Option<(String, String)>) -> Event {
        let rest: Map<String, Value> = pdu
            .json
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| !PDU_FIELDS.contains(&k.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        Event {
            pos,
            event_id: pdu.event_id.clone(),
            room_id: pdu.room_id.clone(),
            sender: pdu.sender.clone(),
            kind: pdu.kind.clone(),
            state_key: pdu.state_key.clone(),
            content: pdu.content().clone(),
            ts: u64::try_from(pdu.origin_server_ts).unwrap_or(0),
            txn,
            replaces: None,
            redacts: pdu.redacts.clone(),
            redacted_by: None,
            purged: false,
            rest: Box::new(rest),
        }
    }

    /// The event as a PDU of room version `v` (redacted, if it was: the hashes and signatures
    /// still verify).
    pub fn pdu_json(&self, v: &RoomVersion) -> Value {
        let mut m = (*self.rest).clone();
        m.insert("type".into(), json!(self.kind));
        if let Some(k) = &self.state_key {
            m.insert("state_key".into(), json!(k));
        }
        m.insert("sender".into(), json!(self.sender));
        m.insert("content".into(), self.content.clone());
        m.insert("origin_server_ts".into(), json!(self.ts));
        let v12_create = v.room_id_is_create && self.kind == "m.room.create" && self.is_state();
        if !v12_create {
            m.insert("room_id".into(), json!(self.room_id));
        }
        if let (Some(r), false) = (&self.redacts, v.redacts_in_content) {
            m.insert("redacts".into(), json!(r));
        }
        Value::Object(m)
    }

    /// The event as the core reads it.
    pub fn to_pdu(&self, v: &RoomVersion) -> Result<Pdu, String> {
        Pdu::from_json(v, self.pdu_json(v)).map_err(|e| format!("{}: {e}", self.event_id))
    }

    fn to_record(&self, v: &RoomVersion) -> Value {
        let mut r = json!({"pdu": self.pdu_json(v), "txn": self.txn});
        if self.purged {
            r["purged"] = json!(true);
        }
        r
    }

    /// An event from its database record: the PDU as signed, and the sending device's
    /// transaction.
    pub fn from_record(
        pos: u64,
        mut v: Value,
        version_of: impl Fn(&str) -> Option<String>,
    ) -> Result<(Event, Pdu), String> {
        let Some(json) = v.get_mut("pdu").map(Value::take) else {
            return Err(format!(
                "the event at position {pos} was stored before events were PDUs (it has no signed form); this server cannot sign it after the fact: start it with a new database"
            ));
        };
        // The room version: the create event names it; other events' rooms are known by now.
        let version = if json.get("type").and_then(Value::as_str) == Some("m.room.create") {
            json.pointer("/content/room_version")
                .and_then(Value::as_str)
                .unwrap_or("1")
                .to_string()
        } else {
            let room = json.get("room_id").and_then(Value::as_str).unwrap_or("");
            version_of(room).ok_or_else(|| {
                format!("the event at position {pos} is in an unknown room {room}")
            })?
        };
        let rv = RoomVersion::get(&version).ok_or_else(|| {
            format!("the event at position {pos} is of unknown room version {version}")
        })?;
        let pdu =
            Pdu::from_json(rv, json).map_err(|e| format!("the event at position {pos}: {e}"))?;
        let txn = v
            .get_mut("txn")
            .and_then(|t| serde_json::from_value(t.take()).ok());
        let mut ev = Event::from_pdu(pos, &pdu, txn);
        ev.purged = v.get("purged").and_then(Value::as_bool).unwrap_or(false);
        Ok((ev, pdu))
    }

    /// An event read back from the database: its record, with the state event it replaced and
    /// the redaction that redacted it (whose algorithm then applies, unless the record is
    /// already the redacted PDU). The PDU is the event as the rules read it (redacted if it was).
    pub fn from_stored(
        stored: StoredEvent,
        version_of: impl Fn(&str) -> Option<String>,
    ) -> Result<(Event, Pdu), String> {
        let pos = stored.pos;
        let (mut ev, mut pdu) = Event::from_record(pos, stored.record, &version_of)?;
        ev.replaces = stored.replaces;
        ev.redacted_by = stored.redacted_by;
        if ev.redacted_by.is_some() && !ev.purged {
            let version = version_of(&ev.room_id).unwrap_or_else(|| "1".into());
            if let Some(v) = RoomVersion::get(&version) {
                let redacted = mxconform_pdu::redact::redact(v, &ev.pdu_json(v));
                ev.content = redacted.get("content").cloned().unwrap_or(json!({}));
                pdu = Pdu::from_json(v, redacted)
                    .map_err(|e| format!("the event at position {pos}, redacted: {e}"))?;
            }
        }
        Ok((ev, pdu))
    }

    pub fn is_state(&self) -> bool {
        self.state_key.is_some()
    }
}

/// The event an event's `m.relates_to` names.
pub fn relation_target(content: &Value) -> Option<&str> {
    content
        .get("m.relates_to")
        .and_then(|r| r.get("event_id"))
        .and_then(Value::as_str)
}

#[derive(Clone, Debug, Default)]
pub struct Room {
    pub room_id: String,
    pub version: String,
    /// The creator, and from room version 12 the `additional_creators`.
    pub creators: Vec<String>,
    /// Stream positions of the room's events, oldest first.
    pub timeline: Vec<u64>,
    /// Current state: (type, state key) -> event position.
    pub state: BTreeMap<(String, String), u64>,
    /// Every state event of the room, oldest first: (position, type, state key). The state at
    /// any event is what this says up to it (state events are few beside the history).
    pub state_log: Vec<(u64, String, String)>,
    /// Membership changes per user: (position, membership), oldest first.
    pub members: HashMap<String, Vec<(u64, String)>>,
    /// History visibility changes: (position, visibility).
    pub visibility: Vec<(u64, String)>,
    pub public: bool,
    /// Each user's notifications in the room (events their push rules say notify), oldest
    /// first; their actions are in the database.
    pub notifications: HashMap<String, Vec<crate::push_rules::Notification>>,
    /// Each user's latest event in the room: sending reads everything before it.
    pub last_sent: HashMap<String, u64>,
    /// The position of the room's latest membership change.
    pub last_membership: u64,
    /// The room's forward extremities: what the next event cites as `prev_events`.
    pub extremities: Vec<Arc<Pdu>>,
    /// The current state as PDUs, which the authorization rules read.
    pub auth_state: HashMap<(String, String), Arc<Pdu>>,
}

/// A room's current state as the core's authorization rules read it.
pub struct AuthView<'a>(pub &'a HashMap<(String, String), Arc<Pdu>>);

impl mxconform_pdu::auth::AuthState for AuthView<'_> {
    fn get(&self, kind: &str, state_key: &str) -> Option<&Pdu> {
        self.0
            .get(&(kind.to_string(), state_key.to_string()))
            .map(|p| p.as_ref())
    }
}

/// What a new event of the server's own says; [`State::append`] makes the PDU.
#[derive(Debug)]
pub struct Append<'a> {
    pub room_id: &'a str,
    pub sender: &'a str,
    pub kind: &'a str,
    pub state_key: Option<&'a str>,
    pub content: Value,
    /// The sending device and its transaction id.
    pub txn: Option<(String, String)>,
    /// The event a redaction redacts.
    pub redacts: Option<String>,
}

impl<'a> Append<'a> {
    pub fn new(
        room_id: &'a str,
        sender: &'a str,
        kind: &'a str,
        state_key: Option<&'a str>,
        content: Value,
    ) -> Append<'a> {
        Append {
            room_id,
            sender,
            kind,
            state_key,
            content,
            txn: None,
            redacts: None,
        }
    }
}

impl Room {
    /// The room's version, as the core knows it.
    pub fn room_version(&self) -> &'static RoomVersion {
        RoomVersion::get(&self.version)
            .unwrap_or_else(|| RoomVersion::get("12").expect("room version 12 is known"))
    }

    pub fn membership(&self, user: &str) -> Option<&str> {
        self.members
            .get(user)
            .and_then(|l| l.last())
            .map(|(_, m)| m.as_str())
    }

    /// The membership a user had just after the event at `pos`.
    pub fn membership_at(&self, user: &str, pos: u64) -> Option<&str> {
        self.members
            .get(user)?
            .iter()
            .take_while(|(p, _)| *p <= pos)
            .last()
            .map(|(_, m)| m.as_str())
    }

    pub fn visibility_at(&self, pos: u64) -> &str {
        self.visibility
            .iter()
            .take_while(|(p, _)| *p <= pos)
            .last()
            .map_or("shared", |(_, v)| v.as_str())
    }

    /// The content of a current state event (redacted, if it was).
    pub fn state_content(&self, kind: &str, key: &str) -> Option<&Value> {
        self.auth_state
            .get(&(kind.to_string(), key.to_string()))
            .map(|p| p.content())
    }

    pub fn state_event(&self, kind: &str, key: &str) -> Option<u64> {
        self.state
            .get(&(kind.to_string(), key.to_string()))
            .copied()
    }

    pub fn joined(&self) -> impl Iterator<Item = &String> {
        self.members
            .iter()
            .filter(|(_, l)| l.last().is_some_and(|(_, m)| m == "join"))
            .map(|(u, _)| u)
    }

    /// The state just after the event at `pos`: (type, state key) -> event position.
    pub fn state_at(&self, pos: u64) -> BTreeMap<(&str, &str), u64> {
        let end = self.state_log.partition_point(|(p, _, _)| *p <= pos);
        self.state_log[..end]
            .iter()
            .map(|(p, kind, key)| ((kind.as_str(), key.as_str()), *p))
            .collect()
    }

    /// Puts a state event in the room's current state (and its membership and visibility
    /// logs); returns the user whose membership it changes.
    fn apply_state(&mut self, ev: &Event, pdu: Arc<Pdu>) -> Option<String> {
        let key = ev.state_key.as_ref()?;
        let pos = ev.pos;
        let k = (ev.kind.clone(), key.clone());
        self.state.insert(k.clone(), pos);
        self.auth_state.insert(k, pdu);
        self.state_log.push((pos, ev.kind.clone(), key.clone()));
        match ev.kind.as_str() {
            "m.room.member" => {
                let m = ev
                    .content
                    .get("membership")
                    .and_then(Value::as_str)
                    .unwrap_or("leave")
                    .to_string();
                self.members.entry(key.clone()).or_default().push((pos, m));
                self.last_membership = pos;
                Some(key.clone())
            }
            "m.room.history_visibility" => {
                let v = ev
                    .content
                    .get("history_visibility")
                    .and_then(Value::as_str)
                    .unwrap_or("shared")
                    .to_string();
                self.visibility.push((pos, v));
                None
            }
            _ => None,
        }
    }

    /// History is readable by anyone (the current history visibility is `world_readable`).
    pub fn world_readable(&self) -> bool {
        self.visibility
            .last()
            .is_some_and(|(_, v)| v == "world_readable")
    }

    /// Room versions from 12 on give creators infinite power and take room ids from the
    /// create event.
    pub fn creators_privileged(&self) -> bool {
        self.version.parse::<u32>().is_ok_and(|v| v >= 12)
    }
}

/// A read receipt: (event id, timestamp, thread id).
pub type Receipt = (String, u64, Option<String>);

#[derive(Debug, Default)]
pub struct State {
    pub server_name: String,
    /// The key this server signs its events (and later its requests) with.
    pub signing_key: Option<SigningKey>,
    /// The latest stream position handed out.
    pub pos: u64,
    pub users: HashMap<String, User>,
    /// Access token -> (user, device).
    pub tokens: HashMap<String, (String, String)>,
    pub devices: HashMap<String, BTreeMap<String, Device>>,
    pub rooms: HashMap<String, Room>,
    /// The database: every event, and the records read at start-up.
    pub store: Store,
    /// Recently used events, and those of the request under way.
    pub cache: EventCache,
    /// Positions of the events that other events relate to (`m.relates_to`): only these have
    /// aggregations to look up.
    pub related: std::collections::HashSet<u64>,
    /// Refresh token -> (user, device).
    pub refresh_tokens: HashMap<String, (String, String)>,
    /// Single-use login tokens -> (user, expiry ms); memory only, they live two minutes.
    pub login_tokens: HashMap<String, (String, u64)>,
    /// (user, room or "", type) -> (content, position).
    pub account_data: HashMap<(String, String, String), (Value, u64)>,
    /// (user, filter id) -> filter.
    pub filters: HashMap<(String, String), Value>,
    /// alias -> (room, creator).
    pub aliases: HashMap<String, (String, String)>,
    /// room -> receipt type -> user (with `\0thread` for a threaded receipt) -> receipt, and
    /// the position of the latest change: one receipt per user, type and thread.
    pub receipts: HashMap<String, (BTreeMap<String, BTreeMap<String, Receipt>>, u64)>,
    /// room -> (typing user -> expiry ms, position of the latest change).
    pub typing: HashMap<String, (BTreeMap<String, u64>, u64)>,
    /// (user, device) -> queued (position, message).
    pub to_device: HashMap<(String, String), Vec<(u64, Value)>>,
    /// Rooms a user has any membership in.
    pub user_rooms: HashMap<String, BTreeSet<String>>,
    /// (user, device) -> signed device keys.
    pub device_keys: HashMap<(String, String), Value>,
    /// (user, device) -> key id -> (upload sequence, one-time key); claims take the oldest.
    pub one_time_keys: HashMap<(String, String), BTreeMap<String, (u64, Value)>>,
    /// Fallback keys handed out by a claim (kept, but no longer "unused"); memory only.
    pub fallback_used: BTreeSet<(String, String, String)>,
    /// (user, device) -> key id -> fallback key.
    pub fallback_keys: HashMap<(String, String), BTreeMap<String, Value>>,
    /// user -> position of the latest change to their devices or keys.
    pub key_changes: HashMap<String, u64>,
    /// user -> (presence content, position).
    pub presence: HashMap<String, (Value, u64)>,
    /// user -> pushers by (app id, push key).
    pub pushers: HashMap<String, BTreeMap<(String, String), Value>>,
    /// user -> key backup versions.
    pub backups: HashMap<String, BTreeMap<u64, Backup>>,
    /// user -> cross-signing keys (`master_key`, `self_signing_key`, `user_signing_key`).
    pub cross_signing: HashMap<String, Value>,
    /// Media ids reserved by `createContent` and not yet uploaded: id -> (owner, expiry ms).
    pub pending_media: HashMap<String, (String, u64)>,
    /// Media ids uploaded while this process runs (the database knows the older ones).
    pub uploaded_media: BTreeSet<String>,
    /// Rooms application services publish in their networks' directories:
    /// instance id (`<appservice id>|<network id>`) -> room ids.
    pub appservice_rooms: BTreeMap<String, BTreeSet<String>>,
    /// How far each application service has been sent the event stream (its last
    /// acknowledged position), by service id.
    pub appservice_pos: HashMap<String, u64>,
    /// Third-party identifier validation sessions, by sid.
    pub threepid_sessions: HashMap<String, ThreepidSession>,
    /// When validation messages went to each address lately (ms), for the rate limit; not
    /// persisted.
    pub messages_sent: HashMap<String, Vec<u64>>,
    /// Third-party identifiers bound to accounts: (medium, address) -> binding.
    pub threepids: BTreeMap<(String, String), Threepid>,
    /// Redacted events whose original content the database still holds: (redaction time
    /// ms, position), oldest first; [`State::purge_redacted`] removes it after the retention.
    pub unpurged: BTreeSet<(u64, u64)>,
}

/// A validation session: a token sent to an address, for one purpose.
#[derive(Clone, Debug, PartialEq)]
pub struct ThreepidSession {
    pub client_secret: String,
    pub medium: String,
    pub address: String,
    pub token: String,
    /// `register`, `add` or `reset`.
    pub purpose: String,
    pub send_attempt: i64,
    /// When the token was submitted (ms), if it was.
    pub validated_at: Option<u64>,
    pub created_at: u64,
}

impl ThreepidSession {
    pub fn to_record(&self) -> Value {
        json!({
            "client_secret": self.client_secret, "medium": self.medium, "address": self.address,
            "token": self.token, "purpose": self.purpose, "send_attempt": self.send_attempt,
            "validated_at": self.validated_at, "created_at": self.created_at,
        })
    }

    fn from_record(v: &Value) -> Option<ThreepidSession> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        Some(ThreepidSession {
            client_secret: s("client_secret")?,
            medium: s("medium")?,
            address: s("address")?,
            token: s("token")?,
            purpose: s("purpose")?,
            send_attempt: v.get("send_attempt").and_then(Value::as_i64).unwrap_or(0),
            validated_at: v.get("validated_at").and_then(Value::as_u64),
            created_at: v.get("created_at").and_then(Value::as_u64).unwrap_or(0),
        })
    }
}

/// A third-party identifier bound to an account.
#[derive(Clone, Debug, PartialEq)]
pub struct Threepid {
    pub user_id: String,
    pub added_at: u64,
    pub validated_at: u64,
}

/// A server-side key backup version.
#[derive(Clone, Debug, Default)]
pub struct Backup {
    pub algorithm: String,
    pub auth_data: Value,
    /// (room, session) -> key data.
    pub keys: BTreeMap<(String, String), Value>,
    pub etag: u64,
    pub deleted: bool,
}

impl Backup {
    pub fn to_record(&self) -> Value {
        json!({"algorithm": self.algorithm, "auth_data": self.auth_data, "etag": self.etag, "deleted": self.deleted})
    }
}

impl State {
    /// A state for `server_name` signing with `key`, on an in-memory database.
    pub fn new(server_name: &str, key: SigningKey) -> State {
        State::with_store(server_name, key, Store::default())
    }

    /// A state for `server_name` signing with `key`, on `store`.
    pub fn with_store(server_name: &str, key: SigningKey, store: Store) -> State {
        State {
            server_name: server_name.to_string(),
            signing_key: Some(key),
            store,
            ..State::default()
        }
    }

    /// The event at a stream position: from the cache, else from the database.
    pub fn event(&self, pos: u64) -> Option<Arc<Event>> {
        if let Some(e) = self.cache.get(pos) {
            return Some(e);
        }
        let stored = match self.store.event(pos) {
            Ok(Some(s)) => s,
            Ok(None) => return None,
            Err(e) => {
                eprintln!("mxconform-server: reading event {pos}: {e}");
                return None;
            }
        };
        let (ev, _) = match Event::from_stored(stored, |room| {
            self.rooms.get(room).map(|r| r.version.clone())
        }) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("mxconform-server: reading event {pos}: {e}");
                return None;
            }
        };
        let ev = Arc::new(ev);
        self.cache.put(ev.clone());
        Some(ev)
    }

    /// The stream position of an event, by id.
    pub fn event_pos(&self, event_id: &str) -> Option<u64> {
        if let Some(p) = self.cache.pending_position(event_id) {
            return Some(p);
        }
        self.store.position_of(event_id).ok().flatten()
    }

    /// The event with this id.
    pub fn event_by_id(&self, event_id: &str) -> Option<Arc<Event>> {
        self.event_pos(event_id).and_then(|p| self.event(p))
    }

    /// The positions of the events relating to `event_id` (`m.relates_to`), oldest first.
    pub fn relations(&self, event_id: &str) -> Vec<u64> {
        let mut out = self.store.relations(event_id).unwrap_or_default();
        for e in self.cache.pending() {
            if relation_target(&e.content) == Some(event_id) {
                out.push(e.pos);
            }
        }
        out
    }

    /// The positions of the room's events that relate to another (`m.relates_to`), oldest
    /// first.
    pub fn related_in_room(&self, room_id: &str) -> Vec<u64> {
        let mut out = self.store.related_in_room(room_id).unwrap_or_default();
        for e in self.cache.pending() {
            if e.room_id == room_id && relation_target(&e.content).is_some() {
                out.push(e.pos);
            }
        }
        out
    }

    /// What a transaction id produced before (an event id, or "" for to-device sends).
    pub fn txn(&self, key: &(String, String, String)) -> Option<String> {
        let rec = format!("{}\u{0}{}\u{0}{}", key.0, key.1, key.2);
        self.store
            .record("txn", &rec)
            .ok()
            .flatten()
            .and_then(|v| v.as_str().map(str::to_string))
    }

    /// Everything written so far is in the database (called after each commit).
    pub fn committed(&self) {
        self.cache.committed(self.pos);
    }

    fn origin(&self) -> ApiResult<Origin<'_>> {
        let key = self
            .signing_key
            .as_ref()
            .ok_or_else(|| ApiError::internal("the server has no signing key"))?;
        Ok(Origin {
            server_name: &self.server_name,
            key,
        })
    }

    pub fn next_pos(&mut self, batch: &mut Batch) -> u64 {
        self.pos += 1;
        batch.put("meta", "pos", &json!(self.pos));
        self.pos
    }

    /// Rebuilds the state from what the database holds.
    pub fn restore(&mut self, loaded: Loaded) -> Result<(), String> {
        // Records first (users, rooms' metadata), then events in stream order.
        let mut rooms_meta: Vec<(String, Value)> = Vec::new();
        let mut forgotten: Vec<(String, String)> = Vec::new();
        for (kind, key, v) in loaded.records {
            let parts: Vec<&str> = key.split('\u{0}').collect();
            match kind.as_str() {
                "meta" if key == "pos" => self.pos = self.pos.max(v.as_u64().unwrap_or(0)),
                "user" => {
                    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
                    self.users.insert(
                        key.clone(),
                        User {
                            user_id: key.clone(),
                            password_hash: s("password_hash"),
                            displayname: s("displayname"),
                            avatar_url: s("avatar_url"),
                            deactivated: v
                                .get("deactivated")
                                .and_then(Value::as_bool)
                                .unwrap_or(false),
                            locked: v.get("locked").and_then(Value::as_bool).unwrap_or(false),
                            suspended: v.get("suspended").and_then(Value::as_bool).unwrap_or(false),
                            fields: v
                                .get("fields")
                                .and_then(Value::as_object)
                                .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                                .unwrap_or_default(),
                        },
                    );
                }
                "device" if parts.len() == 2 => {
                    let token = v
                        .get("token")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    if !token.is_empty() {
                        self.tokens
                            .insert(token.clone(), (parts[0].to_string(), parts[1].to_string()));
                    }
                    let refresh = v.get("refresh").and_then(Value::as_str).map(str::to_string);
                    let prev_refresh = v
                        .get("prev_refresh")
                        .and_then(Value::as_str)
                        .map(str::to_string);
                    if let Some(r) = &prev_refresh {
                        self.refresh_tokens
                            .insert(r.clone(), (parts[0].to_string(), parts[1].to_string()));
                    }
                    if let Some(r) = &refresh {
                        self.refresh_tokens
                            .insert(r.clone(), (parts[0].to_string(), parts[1].to_string()));
                    }
                    self.devices
                        .entry(parts[0].to_string())
                        .or_default()
                        .insert(
                            parts[1].to_string(),
                            Device {
                                display_name: v
                                    .get("display_name")
                                    .and_then(Value::as_str)
                                    .map(str::to_string),
                                last_seen_ts: v
                                    .get("last_seen_ts")
                                    .and_then(Value::as_u64)
                                    .unwrap_or(0),
                                token,
                                refresh,
                                prev_refresh,
                            },
                        );
                }
                "account_data" if parts.len() == 3 => {
                    let content = v.get("content").cloned().unwrap_or(json!({}));
                    let pos = v.get("pos").and_then(Value::as_u64).unwrap_or(0);
                    self.account_data.insert(
                        (parts[0].into(), parts[1].into(), parts[2].into()),
                        (content, pos),
                    );
                }
                "filter" if parts.len() == 2 => {
                    self.filters.insert((parts[0].into(), parts[1].into()), v);
                }
                "alias" => {
                    let room = v
                        .get("room_id")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    let creator = v
                        .get("creator")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    self.aliases.insert(key.clone(), (room, creator));
                }
                "room" => rooms_meta.push((key.clone(), v)),
                "forgotten" if parts.len() == 2 => {
                    forgotten.push((parts[0].to_string(), parts[1].to_string()))
                }
                "receipt" if parts.len() == 3 || parts.len() == 4 => {
                    let (room, rtype) = (parts[0], parts[1]);
                    // The inner key: the user, and the thread for a threaded receipt.
                    let user = parts[2..].join("\u{0}");
                    let pos = v.get("pos").and_then(Value::as_u64).unwrap_or(0);
                    let r: Receipt = (
                        v.get("event_id")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_string(),
                        v.get("ts").and_then(Value::as_u64).unwrap_or(0),
                        v.get("thread_id")
                            .and_then(Value::as_str)
                            .map(str::to_string),
                    );
                    let entry = self.receipts.entry(room.to_string()).or_default();
                    entry
                        .0
                        .entry(rtype.to_string())
                        .or_default()
                        .insert(user, r);
                    entry.1 = entry.1.max(pos);
                }
                "device_keys" if parts.len() == 2 => {
                    let pos = v.get("pos").and_then(Value::as_u64).unwrap_or(0);
                    if let Some(k) = v.get("keys") {
                        self.device_keys
                            .insert((parts[0].into(), parts[1].into()), k.clone());
                    }
                    let e = self.key_changes.entry(parts[0].to_string()).or_default();
                    *e = (*e).max(pos);
                }
                "as_pos" => {
                    self.appservice_pos
                        .insert(key.clone(), v.as_u64().unwrap_or(0));
                }
                "3pid_session" => {
                    if let Some(sess) = ThreepidSession::from_record(&v) {
                        self.threepid_sessions.insert(key.clone(), sess);
                    }
                }
                "threepid" if parts.len() == 2 => {
                    let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
                    if let Some(user) = v.get("user_id").and_then(Value::as_str) {
                        self.threepids.insert(
                            (parts[0].to_string(), parts[1].to_string()),
                            Threepid {
                                user_id: user.to_string(),
                                added_at: n("added_at"),
                                validated_at: n("validated_at"),
                            },
                        );
                    }
                }
                "as_room" if parts.len() == 2 => {
                    self.appservice_rooms
                        .entry(parts[0].to_string())
                        .or_default()
                        .insert(parts[1].to_string());
                }
                "key_change" => {
                    let e = self.key_changes.entry(key.clone()).or_default();
                    *e = (*e).max(v.as_u64().unwrap_or(0));
                }
                "otk" if parts.len() == 3 => {
                    let (seq, key) = match (v.get("seq").and_then(Value::as_u64), v.get("key")) {
                        (Some(seq), Some(k)) => (seq, k.clone()),
                        _ => (0, v),
                    };
                    self.one_time_keys
                        .entry((parts[0].into(), parts[1].into()))
                        .or_default()
                        .insert(parts[2].to_string(), (seq, key));
                }
                "fallback" if parts.len() == 3 => {
                    self.fallback_keys
                        .entry((parts[0].into(), parts[1].into()))
                        .or_default()
                        .insert(parts[2].to_string(), v);
                }
                "presence" => {
                    let pos = v.get("pos").and_then(Value::as_u64).unwrap_or(0);
                    self.presence.insert(
                        key.clone(),
                        (v.get("content").cloned().unwrap_or(json!({})), pos),
                    );
                }
                "cross_signing" => {
                    self.cross_signing.insert(key.clone(), v);
                }
                "pusher" if parts.len() == 3 => {
                    self.pushers
                        .entry(parts[0].into())
                        .or_default()
                        .insert((parts[1].into(), parts[2].into()), v);
                }
                "backup" if parts.len() == 2 => {
                    let version: u64 = parts[1].parse().unwrap_or(0);
                    let b = self
                        .backups
                        .entry(parts[0].into())
                        .or_default()
                        .entry(version)
                        .or_default();
                    b.algorithm = v
                        .get("algorithm")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    b.auth_data = v.get("auth_data").cloned().unwrap_or(json!({}));
                    b.etag = v.get("etag").and_then(Value::as_u64).unwrap_or(0);
                    b.deleted = v.get("deleted").and_then(Value::as_bool).unwrap_or(false);
                }
                "backup_key" if parts.len() == 4 => {
                    let version: u64 = parts[1].parse().unwrap_or(0);
                    let b = self
                        .backups
                        .entry(parts[0].into())
                        .or_default()
                        .entry(version)
                        .or_default();
                    b.keys.insert((parts[2].into(), parts[3].into()), v);
                }
                "to_device" if parts.len() == 3 => {
                    let pos: u64 = parts[2].parse().unwrap_or(0);
                    self.to_device
                        .entry((parts[0].into(), parts[1].into()))
                        .or_default()
                        .push((pos, v));
                }
                _ => {}
            }
        }
        // The rooms from their state events alone (history is not replayed).
        let mut rooms: HashMap<String, Room> = HashMap::new();
        let mut user_rooms: HashMap<String, BTreeSet<String>> = HashMap::new();
        self.store.state_events(|stored| {
            let (ev, pdu) =
                Event::from_stored(stored, |room| rooms.get(room).map(|r| r.version.clone()))?;
            if ev.kind == "m.room.create" && ev.state_key.as_deref() == Some("") {
                let version = ev
                    .content
                    .get("room_version")
                    .and_then(Value::as_str)
                    .unwrap_or("1")
                    .to_string();
                let mut room = Room {
                    room_id: ev.room_id.clone(),
                    version,
                    ..Room::default()
                };
                room.creators = creators_of(&ev);
                rooms.insert(ev.room_id.clone(), room);
            }
            if let Some(room) = rooms.get_mut(&ev.room_id) {
                if let Some(user) = room.apply_state(&ev, Arc::new(pdu)) {
                    user_rooms
                        .entry(user)
                        .or_default()
                        .insert(ev.room_id.clone());
                }
            }
            Ok(())
        })?;
        // Timelines, and each member's latest event, from one pass over the events' rows.
        let mut last = 0;
        self.store.timeline(|room_id, sender, pos| {
            last = pos;
            if let Some(room) = rooms.get_mut(room_id) {
                room.timeline.push(pos);
                match room.last_sent.get_mut(sender) {
                    Some(p) => *p = pos,
                    None => {
                        room.last_sent.insert(sender.to_string(), pos);
                    }
                }
            }
        })?;
        self.store.notifications(|user, room_id, pos, highlight| {
            if let Some(room) = rooms.get_mut(room_id) {
                let list = match room.notifications.get_mut(user) {
                    Some(l) => l,
                    None => room.notifications.entry(user.to_string()).or_default(),
                };
                let before = list.last().map_or(0, |n| n.highlights);
                list.push(crate::push_rules::Notification {
                    pos,
                    highlights: before + u32::from(highlight),
                });
            }
        })?;
        self.pos = self.pos.max(last);
        self.rooms = rooms;
        self.user_rooms = user_rooms;
        self.cache.committed(self.pos);
        // Each room's forward extremity: its latest event (the server's own history is linear).
        let ends: Vec<(String, u64)> = self
            .rooms
            .values()
            .filter_map(|r| r.timeline.last().map(|p| (r.room_id.clone(), *p)))
            .collect();
        for (room_id, pos) in ends {
            let ev = self.event(pos).ok_or_else(|| {
                format!("the latest event of {room_id} (at {pos}) cannot be read")
            })?;
            let v = self.rooms[&room_id].room_version();
            let pdu = ev.to_pdu(v)?;
            if let Some(room) = self.rooms.get_mut(&room_id) {
                room.extremities = vec![Arc::new(pdu)];
            }
        }
        self.related = self.store.related()?.into_iter().collect();
        // Redacted events whose original content is still kept.
        for (pos, by) in self.store.redacted()? {
            let purged = self.event(pos).is_none_or(|e| e.purged);
            if !purged {
                let ts = self.event(by).map_or(0, |e| e.ts);
                self.unpurged.insert((ts, pos));
            }
        }
        for (room_id, meta) in rooms_meta {
            if let Some(r) = self.rooms.get_mut(&room_id) {
                r.public = meta.get("public").and_then(Value::as_bool).unwrap_or(false);
            }
        }
        for (user, room) in forgotten {
            // Forgotten, unless the user came back to the room afterwards.
            let back = self
                .rooms
                .get(&room)
                .and_then(|r| r.membership(&user))
                .is_some_and(|m| matches!(m, "join" | "invite" | "knock"));
            if !back {
                if let Some(set) = self.user_rooms.get_mut(&user) {
                    set.remove(&room);
                }
            }
        }
        for q in self.to_device.values_mut() {
            q.sort_by_key(|(p, _)| *p);
        }
        Ok(())
    }

    /// Where the user has read the room up to: their latest read receipt (public or private),
    /// or their own latest event, whichever is later.
    pub fn read_up_to(&self, room: &Room, user: &str) -> u64 {
        let receipt = self
            .receipts
            .get(&room.room_id)
            .and_then(|(r, _)| {
                ["m.read", "m.read.private"]
                    .iter()
                    .filter_map(|t| r.get(*t))
                    .flat_map(|by| {
                        by.iter()
                            .filter(|(who, _)| who.split('\u{0}').next() == Some(user))
                    })
                    .map(|(_, (e, _, _))| self.event_pos(e).unwrap_or(0))
                    .max()
            })
            .unwrap_or(0);
        receipt.max(room.last_sent.get(user).copied().unwrap_or(0))
    }

    /// Whom `ev` notifies, with the actions of their matching push rule: the room's joined
    /// members (and the invitee of an invite) other than the sender.
    fn push_actions(&self, ev: &Event) -> Vec<(String, Value)> {
        let Some(room) = self.rooms.get(&ev.room_id) else {
            return Vec::new();
        };
        let mut users: Vec<&String> = room.joined().filter(|u| **u != ev.sender).collect();
        let invitee = (ev.kind == "m.room.member"
            && ev.content.get("membership").and_then(Value::as_str) == Some("invite"))
        .then_some(ev.state_key.as_ref())
        .flatten();
        if let Some(i) = invitee.filter(|i| **i != ev.sender && !users.contains(i)) {
            users.push(i);
        }
        users
            .into_iter()
            .filter_map(|u| {
                let actions = crate::push_rules::with_ruleset(self, u, |rules| {
                    crate::push_rules::evaluate(self, room, rules, ev, u)
                })?;
                crate::push_rules::Notification::notifies(&actions).then(|| (u.clone(), actions))
            })
            .collect()
    }

    /// Adds a new event to its room (timeline, state, membership, extremities, notifications)
    /// and to the batch (its row, its notifications, the redaction it makes).
    fn apply(&mut self, batch: &mut Batch, mut ev: Event, pdu: Pdu) {
        let pos = ev.pos;
        let pdu = Arc::new(pdu);
        let notify = self.push_actions(&ev);
        if let Some(room) = self.rooms.get_mut(&ev.room_id) {
            room.timeline.push(pos);
            // The server's own history is linear: each event extends the latest.
            room.extremities = vec![pdu.clone()];
            room.last_sent.insert(ev.sender.clone(), pos);
            for (user, actions) in notify {
                let highlight = crate::push_rules::Notification::highlight(&actions);
                let list = room.notifications.entry(user.clone()).or_default();
                let before = list.last().map_or(0, |n| n.highlights);
                list.push(crate::push_rules::Notification {
                    pos,
                    highlights: before + u32::from(highlight),
                });
                batch.notifications.push(NotificationRow {
                    user_id: user,
                    room_id: ev.room_id.clone(),
                    pos,
                    highlight,
                    actions: actions.to_string(),
                });
            }
            if let Some(key) = &ev.state_key {
                ev.replaces = room.state_event(&ev.kind, key).or(ev.replaces);
                if let Some(user) = room.apply_state(&ev, pdu.clone()) {
                    self.user_rooms
                        .entry(user)
                        .or_default()
                        .insert(ev.room_id.clone());
                }
            }
        }
        if let Some(target) = ev.redacts.clone() {
            self.redact(batch, &target, &ev);
        }
        if let Some(target) = relation_target(&ev.content).and_then(|t| self.event_pos(t)) {
            self.related.insert(target);
        }
        // The record of a new event: the PDU as built (what `to_record` would rebuild).
        let txn = serde_json::to_string(&ev.txn).unwrap_or_else(|_| "null".into());
        batch.events.push(EventRow {
            pos,
            room_id: ev.room_id.clone(),
            event_id: ev.event_id.clone(),
            sender: ev.sender.clone(),
            state_key: ev.state_key.clone(),
            relates_to: relation_target(&ev.content).map(str::to_string),
            replaces: ev.replaces,
            json: format!("{{\"pdu\":{},\"txn\":{txn}}}", pdu.json),
        });
        self.cache.put(Arc::new(ev));
    }

    /// Applies a redaction to the event it names, when that event is in the same room: the
    /// version's redaction algorithm over the whole event, and a redacted state event in the
    /// current state is read redacted by the rules from now on.
    fn redact(&mut self, batch: &mut Batch, target: &str, redaction: &Event) {
        let Some(t) = self.event_by_id(target) else {
            return;
        };
        let Some(room) = self.rooms.get_mut(&redaction.room_id) else {
            return;
        };
        if t.room_id != room.room_id {
            return;
        }
        let mut t = (*t).clone();
        t.redacted_by = Some(redaction.pos);
        if !t.purged {
            self.unpurged.insert((redaction.ts, t.pos));
        }
        let v = room.room_version();
        let redacted = mxconform_pdu::redact::redact(v, &t.pdu_json(v));
        t.content = redacted.get("content").cloned().unwrap_or(json!({}));
        if let Some(k) = &t.state_key {
            if room.state_event(&t.kind, k) == Some(t.pos) {
                if let Ok(p) = Pdu::from_json(v, redacted) {
                    room.auth_state
                        .insert((t.kind.clone(), k.clone()), Arc::new(p));
                }
            }
        }
        batch.redactions.push((t.pos, redaction.pos));
        self.cache.put(Arc::new(t));
    }

    /// Makes a new event of this server: a PDU built by the core on the room's extremities
    /// (auth events selected from the current state, depth, content hash, signature, the
    /// version's event id), authorized by the core's rules against the current state, then
    /// recorded and applied. An event the rules reject is refused with the rule.
    pub fn append(&mut self, batch: &mut Batch, mut a: Append<'_>) -> ApiResult<(u64, String)> {
        let txn = a.txn.take();
        let pdu = self.make_pdu(a)?;
        Ok(self.record_event(batch, pdu, txn))
    }

    /// Whether the authorization rules would let this event be sent now (nothing is kept):
    /// what a request that would send it checks before doing anything else.
    pub fn check_allowed(&self, a: Append<'_>) -> ApiResult<()> {
        self.make_pdu(a).map(|_| ())
    }

    /// The PDU of a new event of this server, built on the room's extremities and authorized
    /// against its current state.
    fn make_pdu(&self, a: Append<'_>) -> ApiResult<Pdu> {
        let room = self
            .rooms
            .get(a.room_id)
            .ok_or_else(|| ApiError::not_found(format!("no room {}", a.room_id)))?;
        let v = room.room_version();
        let mut new = NewEvent::new(a.kind, a.state_key, a.sender, a.content, now_ms() as i64);
        new.redacts = a.redacts;
        let prev: Vec<&Pdu> = room.extremities.iter().map(|p| p.as_ref()).collect();
        let auth = AuthView(&room.auth_state);
        let pdu = mxconform_pdu::build::build(v, a.room_id, new, &prev, &auth, self.origin()?)
            .map_err(|e| ApiError::bad_json(format!("the event cannot be made: {e}")))?;
        let server = self.server_name.as_str();
        mxconform_pdu::authorize(v, &pdu, &auth, &|s| s == server).map_err(|r| {
            ApiError::forbidden(format!("the authorization rules refuse the event: {r}"))
        })?;
        Ok(pdu)
    }

    /// Creates a room: the create event made by `creator` (for room version 12 and later the
    /// room id is the create event's reference hash; before, `!<random>:<server>`).
    pub fn create_room(
        &mut self,
        batch: &mut Batch,
        version: &str,
        creator: &str,
        content: Value,
        public: bool,
    ) -> ApiResult<String> {
        let v = RoomVersion::get(version).ok_or_else(|| {
            ApiError::unsupported_room_version(format!("room version {version} is not supported"))
        })?;
        let room_id = format!("!{}:{}", random_token(18), self.server_name);
        let empty = HashMap::new();
        // Two identical create events made in the same millisecond would be one event (and,
        // from room version 12, one room id): the later one is dated a millisecond on.
        let mut ts = now_ms() as i64;
        let pdu = loop {
            let new = NewEvent::new("m.room.create", Some(""), creator, content.clone(), ts);
            let pdu = mxconform_pdu::build::build(
                v,
                &room_id,
                new,
                &[],
                &AuthView(&empty),
                self.origin()?,
            )
            .map_err(|e| ApiError::bad_json(format!("the create event cannot be made: {e}")))?;
            if !self.rooms.contains_key(&pdu.room_id) && self.event_pos(&pdu.event_id).is_none() {
                break pdu;
            }
            ts += 1;
        };
        mxconform_pdu::authorize(v, &pdu, &AuthView(&empty), &|_| true)
            .map_err(|r| ApiError::bad_json(format!("the create event is not valid: {r}")))?;
        let room_id = pdu.room_id.clone();
        let mut room = Room {
            room_id: room_id.clone(),
            version: version.to_string(),
            public,
            ..Room::default()
        };
        room.creators = creators_of(&Event::from_pdu(0, &pdu, None));
        self.rooms.insert(room_id.clone(), room);
        self.put_room_meta(batch, &room_id);
        self.record_event(batch, pdu, None);
        Ok(room_id)
    }

    /// Rewrites the database records of events redacted at or before `cutoff_ms` without their
    /// original content (the redacted PDU, whose hashes and signatures still verify). Returns
    /// how many.
    pub fn purge_redacted(&mut self, batch: &mut Batch, cutoff_ms: u64) -> usize {
        let due: Vec<(u64, u64)> = self
            .unpurged
            .range(..=(cutoff_ms, u64::MAX))
            .copied()
            .collect();
        for key in &due {
            self.unpurged.remove(key);
            let Some(t) = self.event(key.1) else {
                continue;
            };
            let mut t = (*t).clone();
            t.purged = true;
            let v = self.rooms.get(&t.room_id).map_or_else(
                || RoomVersion::get("12").expect("known"),
                Room::room_version,
            );
            batch
                .event_updates
                .push((key.1, t.to_record(v).to_string()));
            self.cache.put(Arc::new(t));
        }
        due.len()
    }

    /// Records a PDU at the next position ([`State::apply`]).
    fn record_event(
        &mut self,
        batch: &mut Batch,
        pdu: Pdu,
        txn: Option<(String, String)>,
    ) -> (u64, String) {
        // The event's own row records its position (start-up takes the greatest), so the
        // `meta/pos` record is not rewritten for it.
        self.pos += 1;
        let pos = self.pos;
        let ev = Event::from_pdu(pos, &pdu, txn);
        let id = ev.event_id.clone();
        self.apply(batch, ev, pdu);
        (pos, id)
    }

    pub fn put_threepid_session(&mut self, batch: &mut Batch, sid: &str, s: ThreepidSession) {
        batch.put("3pid_session", sid, &s.to_record());
        self.threepid_sessions.insert(sid.to_string(), s);
    }

    /// Binds (`Some`) or unbinds (`None`) a third-party identifier.
    pub fn put_threepid(
        &mut self,
        batch: &mut Batch,
        medium: &str,
        address: &str,
        binding: Option<Threepid>,
    ) {
        let key = (medium.to_string(), address.to_string());
        let rec_key = format!("{medium}\u{0}{address}");
        match binding {
            Some(b) => {
                batch.put(
                    "threepid",
                    rec_key,
                    &json!({"user_id": b.user_id, "added_at": b.added_at, "validated_at": b.validated_at}),
                );
                self.threepids.insert(key, b);
            }
            None => {
                batch.delete("threepid", rec_key);
                self.threepids.remove(&key);
            }
        }
    }

    pub fn put_user(&mut self, batch: &mut Batch, user: User) {
        batch.put("user", user.user_id.clone(), &user.to_record());
        self.users.insert(user.user_id.clone(), user);
    }

    pub fn put_device(&mut self, batch: &mut Batch, user: &str, device_id: &str, device: Device) {
        batch.put(
            "device",
            format!("{user}\u{0}{device_id}"),
            &json!({"display_name": device.display_name, "last_seen_ts": device.last_seen_ts, "token": device.token, "refresh": device.refresh, "prev_refresh": device.prev_refresh}),
        );
        if !device.token.is_empty() {
            self.tokens.insert(
                device.token.clone(),
                (user.to_string(), device_id.to_string()),
            );
        }
        for r in device.refresh.iter().chain(device.prev_refresh.iter()) {
            self.refresh_tokens
                .insert(r.clone(), (user.to_string(), device_id.to_string()));
        }
        self.devices
            .entry(user.to_string())
            .or_default()
            .insert(device_id.to_string(), device);
    }

    /// Remembers what a transaction id produced (an event id, or "" for to-device sends), so a
    /// retry answers the same; persisted in the key format the replay reads back.
    pub fn remember_txn(
        &mut self,
        batch: &mut Batch,
        key: (String, String, String),
        result: String,
    ) {
        batch.put(
            "txn",
            format!("{}\u{0}{}\u{0}{}", key.0, key.1, key.2),
            &json!(result),
        );
    }

    /// Logs out every device of `user`, but `keep` when given.
    pub fn remove_devices(&mut self, batch: &mut Batch, user: &str, keep: Option<&str>) {
        let ids: Vec<String> = self
            .devices
            .get(user)
            .map(|d| {
                d.keys()
                    .filter(|k| Some(k.as_str()) != keep)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for d in ids {
            self.remove_device(batch, user, &d);
        }
    }

    /// The new access or refresh token of a device was used: its previous refresh token is
    /// revoked.
    pub fn settle_refresh(&mut self, batch: &mut Batch, user: &str, device_id: &str) {
        let Some(mut d) = self
            .devices
            .get(user)
            .and_then(|m| m.get(device_id))
            .cloned()
        else {
            return;
        };
        if let Some(old) = d.prev_refresh.take() {
            self.refresh_tokens.remove(&old);
            self.put_device(batch, user, device_id, d);
        }
    }

    pub fn remove_device(&mut self, batch: &mut Batch, user: &str, device_id: &str) {
        if let Some(d) = self.devices.get_mut(user).and_then(|m| m.remove(device_id)) {
            self.tokens.remove(&d.token);
            for r in d.refresh.iter().chain(d.prev_refresh.iter()) {
                self.refresh_tokens.remove(r);
            }
        }
        batch.delete("device", format!("{user}\u{0}{device_id}"));
        let key = (user.to_string(), device_id.to_string());
        if self.device_keys.remove(&key).is_some() {
            batch.delete("device_keys", format!("{user}\u{0}{device_id}"));
            self.note_key_change(batch, user);
        }
        for id in self
            .one_time_keys
            .remove(&key)
            .map(|m| m.into_keys().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            batch.delete("otk", format!("{user}\u{0}{device_id}\u{0}{id}"));
        }
        for id in self
            .fallback_keys
            .remove(&key)
            .map(|m| m.into_keys().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            batch.delete("fallback", format!("{user}\u{0}{device_id}\u{0}{id}"));
        }
    }

    /// Marks a user's devices or keys as changed (for `/keys/changes` and sync's `device_lists`).
    pub fn note_key_change(&mut self, batch: &mut Batch, user: &str) {
        let pos = self.next_pos(batch);
        batch.put("key_change", user, &json!(pos));
        self.key_changes.insert(user.to_string(), pos);
    }

    /// Whose device lists `user` should look at again after `from` (up to `to`): users whose
    /// keys changed and who share a room with them (the user included), users who came into a room with them (or
    /// into whose room they came); and who they no longer share any room with.
    pub fn device_list_changes(
        &self,
        user: &str,
        from: u64,
        to: u64,
    ) -> (Vec<String>, Vec<String>) {
        let present = |m: Option<&str>| matches!(m, Some("join" | "invite" | "knock"));
        let peers = self.room_peers(user);
        let mut changed: BTreeSet<String> = peers
            .iter()
            .filter(|u| {
                self.key_changes
                    .get(*u)
                    .is_some_and(|p| *p > from && *p <= to)
            })
            .cloned()
            .collect();
        let mut gone = BTreeSet::new();
        for room_id in self.user_rooms.get(user).into_iter().flatten() {
            let Some(room) = self.rooms.get(room_id) else {
                continue;
            };
            // No membership changed here in the span: nobody came or went.
            if room.last_membership <= from {
                continue;
            }
            let was_in = room.membership_at(user, from) == Some("join");
            let is_in = room.membership_at(user, to) == Some("join");
            for (other, _) in room.members.iter() {
                if other == user {
                    continue;
                }
                let then = room.membership_at(other, from);
                let now = room.membership_at(other, to);
                match (was_in, is_in) {
                    // Newly in the room: everyone there is new to us.
                    (false, true) if present(now) => {
                        changed.insert(other.clone());
                    }
                    (true, false) if then == Some("join") => {
                        gone.insert(other.clone());
                    }
                    (true, true) if present(now) && !present(then) => {
                        changed.insert(other.clone());
                    }
                    (true, true) if present(then) && !present(now) => {
                        gone.insert(other.clone());
                    }
                    _ => {}
                }
            }
        }
        let left: Vec<String> = gone.into_iter().filter(|u| !peers.contains(u)).collect();
        // The user's own changes are listed too: their other devices must learn of a new
        // device or new cross-signing keys.
        let changed = changed.into_iter().filter(|u| !left.contains(u)).collect();
        (changed, left)
    }

    /// Users who share a joined room with `user` (the user included).
    pub fn room_peers(&self, user: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        out.insert(user.to_string());
        for room_id in self.user_rooms.get(user).into_iter().flatten() {
            if let Some(room) = self.rooms.get(room_id) {
                if room.membership(user) == Some("join") {
                    out.extend(room.joined().cloned());
                }
            }
        }
        out
    }

    pub fn put_account_data(
        &mut self,
        batch: &mut Batch,
        user: &str,
        room: &str,
        kind: &str,
        content: Value,
    ) {
        let pos = self.next_pos(batch);
        batch.put(
            "account_data",
            format!("{user}\u{0}{room}\u{0}{kind}"),
            &json!({"content": content, "pos": pos}),
        );
        self.account_data
            .insert((user.into(), room.into(), kind.into()), (content, pos));
    }

    pub fn put_room_meta(&mut self, batch: &mut Batch, room_id: &str) {
        if let Some(r) = self.rooms.get(room_id) {
            batch.put("room", room_id, &json!({"public": r.public}));
        }
    }

    pub fn room(&self, room_id: &str) -> ApiResult<&Room> {
        self.rooms
            .get(room_id)
            .ok_or_else(|| ApiError::not_found(format!("unknown room {room_id}")))
    }

    /// Current state content of a room (redacted, if it was), or `None`.
    pub fn state_content(&self, room_id: &str, kind: &str, key: &str) -> Option<&Value> {
        self.rooms.get(room_id)?.state_content(kind, key)
    }

    /// What the room directory, room summaries and space hierarchies say about a room: its
    /// id, member count, readability, join rule, and name, topic, alias, avatar and type when set.
    pub fn room_overview(&self, room: &Room) -> Value {
        let content = |kind: &str, key: &str| {
            self.state_content(&room.room_id, kind, "")
                .and_then(|c| c.get(key))
                .cloned()
        };
        let mut v = json!({
            "room_id": room.room_id,
            "num_joined_members": room.joined().count(),
            "world_readable": content("m.room.history_visibility", "history_visibility") == Some(json!("world_readable")),
            "guest_can_join": content("m.room.guest_access", "guest_access") == Some(json!("can_join")),
            "join_rule": content("m.room.join_rules", "join_rule").unwrap_or(json!("invite")),
        });
        for (field, kind, key) in [
            ("name", "m.room.name", "name"),
            ("topic", "m.room.topic", "topic"),
            ("canonical_alias", "m.room.canonical_alias", "alias"),
            ("avatar_url", "m.room.avatar", "url"),
            ("room_type", "m.room.create", "type"),
        ] {
            if let Some(x) = content(kind, key).filter(Value::is_string) {
                v[field] = x;
            }
        }
        v
    }

    /// An event as clients see it (the ClientEvent format).
    pub fn client_event(
        &self,
        ev: &Event,
        viewer: Option<(&str, &str)>,
        with_room_id: bool,
    ) -> Value {
        let mut v = json!({
            "type": ev.kind,
            "content": ev.content,
            "sender": ev.sender,
            "event_id": ev.event_id,
            "origin_server_ts": ev.ts,
        });
        if with_room_id {
            v["room_id"] = json!(ev.room_id);
        }
        if let Some(k) = &ev.state_key {
            v["state_key"] = json!(k);
        }
        if let Some(r) = &ev.redacts {
            v["redacts"] = json!(r);
            if !v["content"].is_object() || v["content"].get("redacts").is_none() {
                v["content"]["redacts"] = json!(r);
            }
        }
        let mut unsigned = json!({"age": now_ms().saturating_sub(ev.ts)});
        if let (Some((user, device)), Some((tdev, txn))) = (viewer, &ev.txn) {
            if user == ev.sender && device == tdev {
                unsigned["transaction_id"] = json!(txn);
            }
        }
        if let Some(prev) = ev.replaces.and_then(|p| self.event(p)) {
            unsigned["prev_content"] = prev.content.clone();
            unsigned["replaces_state"] = json!(prev.event_id);
            unsigned["prev_sender"] = json!(prev.sender);
        }
        if let Some(r) = ev.redacted_by.and_then(|p| self.event(p)) {
            unsigned["redacted_because"] = self.client_event(&r, None, with_room_id);
        }
        // The reader's membership at the event, the event's own change included ("leave"
        // before they ever had one), so that clients can tell what was sent before they came.
        if let Some((user, _)) = viewer {
            let at = self
                .rooms
                .get(&ev.room_id)
                .and_then(|room| room.membership_at(user, ev.pos));
            unsigned["membership"] = json!(at.unwrap_or("leave"));
        }
        // Aggregations of the events relating to this one, for a reader (not inside another
        // aggregation: `viewer` is `None` there).
        if let Some((user, _)) = viewer {
            if let Some(a) = self.aggregations(ev, user, with_room_id) {
                unsigned["m.relations"] = a;
            }
        }
        v["unsigned"] = unsigned;
        v
    }

    /// The bundled aggregations of `ev`: its latest valid edit (`m.replace`, the whole event),
    /// its thread (`m.thread`: latest reply, count, whether `user` took part) and references.
    pub fn aggregations(&self, ev: &Event, user: &str, with_room_id: bool) -> Option<Value> {
        if ev.redacted_by.is_some() {
            return None;
        }
        if !self.related.contains(&ev.pos) {
            return None;
        }
        let children = self.relations(&ev.event_id);
        if children.is_empty() {
            return None;
        }
        let mut edit: Option<Arc<Event>> = None;
        let mut thread: Vec<Arc<Event>> = Vec::new();
        let mut references: Vec<Arc<Event>> = Vec::new();
        for c in children.iter().filter_map(|p| self.event(*p)) {
            // A redacted child has lost its relation.
            if c.redacted_by.is_some() || c.room_id != ev.room_id {
                continue;
            }
            let rel = c.content.get("m.relates_to");
            let rel_type = rel.and_then(|r| r.get("rel_type")).and_then(Value::as_str);
            match rel_type {
                // Valid edits: same sender and type, neither a state event.
                Some("m.replace")
                    if c.sender == ev.sender
                        && c.kind == ev.kind
                        && c.state_key.is_none()
                        && ev.state_key.is_none()
                        && c.content.get("m.new_content").is_some() =>
                {
                    edit = Some(c);
                }
                Some("m.thread") => thread.push(c),
                Some("m.reference") => references.push(c),
                _ => {}
            }
        }
        let mut out = serde_json::Map::new();
        if let Some(e) = edit {
            out.insert(
                "m.replace".into(),
                self.client_event(&e, None, with_room_id),
            );
        }
        if let Some(latest) = thread.last() {
            let participated = ev.sender == user || thread.iter().any(|r| r.sender == user);
            out.insert(
                "m.thread".into(),
                json!({
                    "latest_event": self.client_event(latest, None, with_room_id),
                    "count": thread.len(),
                    "current_user_participated": participated,
                }),
            );
        }
        if !references.is_empty() {
            let chunk: Vec<Value> = references
                .iter()
                .map(|r| json!({"event_id": r.event_id}))
                .collect();
            out.insert("m.reference".into(), json!({ "chunk": chunk }));
        }
        (!out.is_empty()).then_some(Value::Object(out))
    }

    /// Whether `user` may see the event at `pos` in `room` (history visibility).
    pub fn can_see(&self, room: &Room, user: &str, pos: u64) -> bool {
        // A user always sees the events that change their own membership.
        let own_membership = self
            .event(pos)
            .is_some_and(|e| e.kind == "m.room.member" && e.state_key.as_deref() == Some(user));
        if own_membership {
            return true;
        }
        let vis = room.visibility_at(pos);
        if vis == "world_readable" {
            return true;
        }
        let at = room.membership_at(user, pos);
        // Joined at the event, or just before it (the user's own leave is visible to them).
        if at == Some("join") || room.membership_at(user, pos.saturating_sub(1)) == Some("join") {
            return true;
        }
        if at == Some("invite") && matches!(vis, "invited" | "shared") {
            return true;
        }
        if vis == "shared" {
            // Members see shared history from before they joined, up to when they left.
            let Some(log) = room.members.get(user) else {
                return false;
            };
            let joined_later = log.iter().any(|(p, m)| *p >= pos && m == "join");
            let left_after = log
                .iter()
                .filter(|(p, _)| *p > pos)
                .find(|(_, m)| m != "join" && m != "invite");
            let still_in = room.membership(user) == Some("join");
            return joined_later && (still_in || left_after.is_some_and(|(p, _)| *p > pos));
        }
        false
    }

    /// The power level of a user in a room, `None` for infinite (room version 12 creators).
    pub fn power_level(&self, room: &Room, user: &str) -> Option<i64> {
        if room.creators_privileged() && room.creators.iter().any(|c| c == user) {
            return None;
        }
        let pl = room.state_content("m.room.power_levels", "");
        match pl {
            Some(content) => Some(
                content
                    .get("users")
                    .and_then(|u| u.get(user))
                    .and_then(Value::as_i64)
                    .unwrap_or_else(|| {
                        content
                            .get("users_default")
                            .and_then(Value::as_i64)
                            .unwrap_or(0)
                    }),
            ),
            None => Some(if room.creators.first().is_some_and(|c| c == user) {
                100
            } else {
                0
            }),
        }
    }

    /// The level an action needs: `ban`, `kick`, `redact`, `invite`, or an event type.
    pub fn required_level(&self, room: &Room, action: &str, state: bool) -> i64 {
        let Some(pl) = room.state_content("m.room.power_levels", "") else {
            return match action {
                "invite" => 0,
                _ if !state && !matches!(action, "ban" | "kick" | "redact") => 0,
                _ => 50,
            };
        };
        let get = |k: &str, d: i64| pl.get(k).and_then(Value::as_i64).unwrap_or(d);
        match action {
            "ban" => get("ban", 50),
            "kick" => get("kick", 50),
            "redact" => get("redact", 50),
            "invite" => get("invite", 0),
            kind => pl
                .get("events")
                .and_then(|e| e.get(kind))
                .and_then(Value::as_i64)
                .unwrap_or_else(|| {
                    if state {
                        get("state_default", 50)
                    } else {
                        get("events_default", 0)
                    }
                }),
        }
    }

    /// `level` meets `needed` (infinite power meets everything).
    pub fn meets(level: Option<i64>, needed: i64) -> bool {
        level.is_none_or(|l| l >= needed)
    }
}

/// The creators named by a create event: its sender, and `additional_creators` (v12+).
pub fn creators_of(create: &Event) -> Vec<String> {
    let mut c = vec![create.sender.clone()];
    if let Some(extra) = create
        .content
        .get("additional_creators")
        .and_then(Value::as_array)
    {
        c.extend(extra.iter().filter_map(Value::as_str).map(str::to_string));
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every event the server makes, in every room version, is a PDU a remote server
    /// accepts: signed by the server's key, its content hash and id right, its auth events
    /// authorizing it; a v12 room's id is its create event's; a redacted event still
    /// verifies; an event the rules refuse is not made.
    #[test]
    fn events_are_signed_authorized_pdus_in_every_room_version() {
        let key = SigningKey::generate(Some("t1")).unwrap();
        let verify = key.verify_key();
        let dir = std::env::temp_dir().join(format!(
            "mxconform-state-{}-{}",
            std::process::id(),
            now_ms()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("db.sqlite");
        let open = || Store::open(Some(&db), crate::store::Durability::Process).unwrap();
        let mut state = State::with_store("hs.test", key, open());
        let mut batch = Batch::default();
        let alice = "@alice:hs.test";
        for n in 1..=12 {
            let version = n.to_string();
            let v = RoomVersion::get(&version).unwrap();
            let mut create = json!({"room_version": version});
            if n < 11 {
                create["creator"] = json!(alice);
            }
            let room_id = state
                .create_room(&mut batch, &version, alice, create, false)
                .unwrap();
            let mut add = |kind: &str, key: Option<&str>, content: Value| {
                state
                    .append(&mut batch, Append::new(&room_id, alice, kind, key, content))
                    .map(|(_, id)| id)
            };
            add("m.room.member", Some(alice), json!({"membership": "join"})).unwrap();
            let mut pl = json!({"users": {}, "state_default": 50, "events_default": 0});
            if n < 12 {
                pl["users"][alice] = json!(100);
            }
            add("m.room.power_levels", Some(""), pl).unwrap();
            add(
                "m.room.join_rules",
                Some(""),
                json!({"join_rule": "invite"}),
            )
            .unwrap();
            let message = add(
                "m.room.message",
                None,
                json!({"msgtype": "m.text", "body": "hi"}),
            )
            .unwrap();
            // Someone who is not in the room cannot send to it: the core's rules say so.
            let refused = state
                .append(
                    &mut batch,
                    Append::new(
                        &room_id,
                        "@mallory:hs.test",
                        "m.room.message",
                        None,
                        json!({"body": "x"}),
                    ),
                )
                .unwrap_err();
            assert!(
                refused.message.contains("rejected by rule"),
                "v{n}: {}",
                refused.message
            );
            let mut redaction = Append::new(
                &room_id,
                alice,
                "m.room.redaction",
                None,
                json!({"redacts": message}),
            );
            redaction.redacts = Some(message.clone());
            state.append(&mut batch, redaction).unwrap();

            let room = state.rooms.get(&room_id).unwrap();
            assert_eq!(room.extremities.len(), 1);
            let events: Vec<Arc<Event>> = room
                .timeline
                .iter()
                .map(|p| state.event(*p).unwrap())
                .collect();
            let create = events[0].to_pdu(v).unwrap();
            if n >= 12 {
                assert_eq!(
                    room_id,
                    mxconform_pdu::hash::room_id_of_create(&create.event_id),
                    "v{n}"
                );
            } else {
                assert!(room_id.ends_with(":hs.test"), "v{n}: {room_id}");
            }
            let mut known: HashMap<String, Pdu> = HashMap::new();
            let mut depth = 0;
            for ev in &events {
                let pdu = ev.to_pdu(v).unwrap();
                let keys = |server: &str, key_id: &str| {
                    (server == "hs.test" && key_id == "ed25519:t1")
                        .then(|| (verify.clone(), i64::MAX))
                };
                let checked = mxconform_pdu::pdu::verify(v, &pdu, &keys);
                if ev.event_id == message {
                    // Redacted: the signature holds, the content (and so its hash) is gone.
                    assert_eq!(ev.content, json!({}), "v{n}");
                    assert_eq!(
                        checked,
                        Err(mxconform_pdu::pdu::VerifyError::ContentHash),
                        "v{n}"
                    );
                } else {
                    checked.unwrap_or_else(|e| panic!("v{n} {}: {e}", ev.kind));
                }
                if let Some(id) = mxconform_pdu::hash::event_id(v, &pdu.json) {
                    assert_eq!(id, ev.event_id, "v{n}: the id is the reference hash");
                }
                assert!(pdu.depth > depth, "v{n}: depth grows");
                depth = pdu.depth;
                let auth: Vec<Option<&Pdu>> =
                    pdu.auth_events.iter().map(|a| known.get(a)).collect();
                assert!(
                    auth.iter().all(Option::is_some),
                    "v{n}: auth events are earlier events"
                );
                mxconform_pdu::auth::authorize_by_auth_events(
                    v,
                    &pdu,
                    &auth,
                    &|_| false,
                    Some(&create),
                    &|_| true,
                )
                .unwrap_or_else(|e| panic!("v{n} {}: {e}", ev.kind));
                known.insert(ev.event_id.clone(), pdu);
            }
        }
        // Committed, then read back by a new state on the same database: the same rooms,
        // extremities, state and events (redactions applied), without replaying history.
        state.store.commit(batch).unwrap();
        state.committed();
        let store = open();
        let loaded = store.load().unwrap();
        let mut again =
            State::with_store("hs.test", SigningKey::generate(Some("t1")).unwrap(), store);
        again.restore(loaded).unwrap();
        assert_eq!(again.rooms.len(), 12);
        for (id, room) in &state.rooms {
            let r = &again.rooms[id];
            assert_eq!(r.extremities[0].event_id, room.extremities[0].event_id);
            assert_eq!(r.auth_state.len(), room.auth_state.len());
            assert_eq!(r.state, room.state);
            assert_eq!(r.timeline, room.timeline);
            assert_eq!(r.state_log, room.state_log);
            for p in &room.timeline {
                let (a, b) = (state.event(*p).unwrap(), again.event(*p).unwrap());
                assert_eq!(a.event_id, b.event_id);
                assert_eq!(a.content, b.content);
                assert_eq!(a.redacted_by, b.redacted_by);
                assert_eq!(a.replaces, b.replaces);
                assert_eq!(again.event_pos(&a.event_id), Some(*p));
            }
        }
        assert_eq!(again.pos, state.pos);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The cache stays within its bound: events evicted from it are read back from the
    /// database, the same as written; uncommitted events are never evicted.
    #[test]
    fn events_are_read_back_through_a_bounded_cache() {
        let mut state = State::new("hs.test", SigningKey::generate(None).unwrap());
        state.cache = EventCache::new(16);
        let alice = "@alice:hs.test";
        let mut batch = Batch::default();
        let room_id = state
            .create_room(
                &mut batch,
                "12",
                alice,
                json!({"room_version": "12"}),
                false,
            )
            .unwrap();
        state
            .append(
                &mut batch,
                Append::new(
                    &room_id,
                    alice,
                    "m.room.member",
                    Some(alice),
                    json!({"membership": "join"}),
                ),
            )
            .unwrap();
        let mut ids = Vec::new();
        for i in 0..100 {
            let (pos, id) = state
                .append(
                    &mut batch,
                    Append::new(
                        &room_id,
                        alice,
                        "m.room.message",
                        None,
                        json!({"body": i.to_string()}),
                    ),
                )
                .unwrap();
            ids.push((pos, id));
        }
        // Nothing is committed yet: every event is still there.
        assert!(state.cache.len() >= 102, "{}", state.cache.len());
        assert_eq!(state.event_pos(&ids[0].1), Some(ids[0].0));
        state.store.commit(std::mem::take(&mut batch)).unwrap();
        state.committed();
        for (i, (pos, id)) in ids.iter().enumerate() {
            let e = state.event(*pos).unwrap();
            assert_eq!(&e.event_id, id);
            assert_eq!(e.content["body"], json!(i.to_string()));
            assert_eq!(state.event_pos(id), Some(*pos));
            assert!(state.cache.len() <= 32, "{}", state.cache.len());
        }
    }

    /// Identical create events in the same millisecond would be one room in version 12
    /// (its id is the event's hash): each room is its own all the same.
    #[test]
    fn identical_rooms_made_at_once_are_distinct() {
        let mut state = State::new("hs.test", SigningKey::generate(None).unwrap());
        let mut batch = Batch::default();
        let mut ids = BTreeSet::new();
        for _ in 0..50 {
            let id = state
                .create_room(
                    &mut batch,
                    "12",
                    "@a:hs.test",
                    json!({"room_version": "12"}),
                    false,
                )
                .unwrap();
            assert!(ids.insert(id));
        }
        state.store.commit(batch).unwrap();
    }

    #[test]
    fn a_database_from_before_pdus_is_refused_with_the_reason() {
        let old = json!({"event_id": "$x", "room_id": "!r:hs.test", "sender": "@a:hs.test", "type": "m.room.create", "state_key": "", "content": {}});
        let err = Event::from_record(1, old, |_| None).unwrap_err();
        assert!(err.contains("before events were PDUs"), "{err}");
    }

    #[test]
    fn base64() {
        assert_eq!(base64url(b""), "");
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
        assert_eq!(random_token(32).len(), 43);
    }
}
