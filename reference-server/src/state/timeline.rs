//! Events: read back through the cache, made by the core as signed PDUs, authorized, recorded,
//! redacted and purged.

use std::sync::Arc;

use mxconform_pdu::build::NewEvent;
use mxconform_pdu::{Pdu, RoomVersion};
use serde_json::{json, Map, Value};

use super::{creators_of, now_ms, random_token, Append, AuthView, Room, State};
use crate::error::{ApiError, ApiResult};
use crate::store::{Batch, EventRow, NotificationRow, StoredEvent};

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

    fn to_record(&self, v: &RoomVersion) -> String {
        record_text(&self.pdu_json(v), &self.txn, self.purged)
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

/// A new event made and authorized, not yet recorded ([`State::prepare`]).
#[derive(Debug)]
pub struct Prepared {
    pdu: Pdu,
    txn: Option<(String, String)>,
}

impl Prepared {
    /// The event as made.
    pub fn pdu(&self) -> &Pdu {
        &self.pdu
    }

    /// The same event with signatures another server added (an invitee's server): refused if
    /// it is not the same event.
    pub fn countersigned(self, v: &RoomVersion, json: Value) -> Result<Prepared, String> {
        let pdu = Pdu::from_json(v, json).map_err(|e| e.to_string())?;
        let unsigned = |j: &Value| {
            let mut j = j.clone();
            if let Some(m) = j.as_object_mut() {
                m.remove("signatures");
                m.remove("unsigned");
            }
            j
        };
        if pdu.event_id != self.pdu.event_id || unsigned(&pdu.json) != unsigned(&self.pdu.json) {
            return Err("the event given back is not the event sent".into());
        }
        Ok(Prepared { pdu, txn: self.txn })
    }
}

/// An event's database record: `{"pdu", "txn", "purged"?}` (`purged` only when true).
pub(super) fn record_text(pdu: &Value, txn: &Option<(String, String)>, purged: bool) -> String {
    #[derive(serde::Serialize)]
    struct Record<'a> {
        pdu: &'a Value,
        txn: &'a Option<(String, String)>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        purged: bool,
    }
    serde_json::to_string(&Record { pdu, txn, purged }).unwrap_or_default()
}

/// The event an event's `m.relates_to` names.
pub fn relation_target(content: &Value) -> Option<&str> {
    content
        .get("m.relates_to")
        .and_then(|r| r.get("event_id"))
        .and_then(Value::as_str)
}

impl State {
    /// The event at a stream position: from the cache, else from the database.
    pub fn event(&self, pos: u64) -> Option<Arc<Event>> {
        if let Some(e) = self.cache.get(pos) {
            return Some(e);
        }
        let stored = match self.store.event(pos) {
            Ok(Some(s)) => s,
            Ok(None) => return None,
            Err(e) => {
                tracing::error!("reading event {pos}: {e}");
                return None;
            }
        };
        let (ev, _) = match Event::from_stored(stored, |room| {
            self.rooms.get(room).map(|r| r.version.clone())
        }) {
            Ok(x) => x,
            Err(e) => {
                tracing::error!("reading event {pos}: {e}");
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

    /// Whom `ev` notifies, with the actions of their matching push rule: the room's joined
    /// members (and the invitee of an invite) other than the sender.
    fn push_actions(&self, ev: &Event) -> Vec<(String, Value)> {
        let Some(room) = self.rooms.get(&ev.room_id) else {
            return Vec::new();
        };
        // Push rules are this server's users' (other servers notify their own).
        let mut users: Vec<&String> = room
            .joined()
            .filter(|u| **u != ev.sender && self.is_local(u))
            .collect();
        let invitee = (ev.kind == "m.room.member"
            && ev.content.get("membership").and_then(Value::as_str) == Some("invite"))
        .then_some(ev.state_key.as_ref())
        .flatten();
        if let Some(i) =
            invitee.filter(|i| **i != ev.sender && !users.contains(i) && self.is_local(i))
        {
            users.push(i);
        }
        users
            .into_iter()
            .filter_map(|u| {
                let actions = crate::state::push::with_ruleset(self, u, |rules| {
                    crate::state::push::evaluate(self, room, rules, ev, u)
                })?;
                crate::state::push::Notification::notifies(&actions).then(|| (u.clone(), actions))
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
            // The event extends what it cites (this server's own events cite every
            // extremity); a room that forked keeps its extremities recorded.
            let forked = room.extremities.len() > 1;
            room.extremities
                .retain(|e| !pdu.prev_events.contains(&e.event_id));
            room.extremities.push(pdu.clone());
            if forked || room.extremities.len() > 1 {
                let ids: Vec<&str> = room
                    .extremities
                    .iter()
                    .map(|e| e.event_id.as_str())
                    .collect();
                batch.put("extremities", ev.room_id.clone(), &json!(ids));
            }
            room.last_sent.insert(ev.sender.clone(), pos);
            for (user, actions) in notify {
                let highlight = crate::state::push::Notification::highlight(&actions);
                super::room::load_notifications(&self.store, room, &user);
                let mut lists = room.notifications.borrow_mut();
                let list = lists.entry(user.clone()).or_default();
                let before = list.last().map_or(0, |n| n.highlights);
                list.push(crate::state::push::Notification {
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
        let json = record_text(&pdu.json, &ev.txn, false);
        batch.events.push(EventRow {
            pos,
            room_id: ev.room_id.clone(),
            event_id: ev.event_id.clone(),
            sender: ev.sender.clone(),
            state_key: ev.state_key.clone(),
            relates_to: relation_target(&ev.content).map(str::to_string),
            replaces: ev.replaces,
            json,
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
                if let (Ok(p), Some(c)) = (
                    Pdu::from_json(v, redacted),
                    room.state.get_mut(&(t.kind.clone(), k.clone())),
                ) {
                    c.pdu = Arc::new(p);
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

    /// The event, made and authorized now, to be recorded later in the same request by
    /// [`State::append_prepared`] (a request that checks the rules first and sends the same
    /// event after its own checks builds and signs it once).
    pub fn prepare(&self, mut a: Append<'_>) -> ApiResult<Prepared> {
        let txn = a.txn.take();
        Ok(Prepared {
            pdu: self.make_pdu(a)?,
            txn,
        })
    }

    /// Records a prepared event; if the room moved on since it was prepared (its prev events
    /// are no longer the room's extremities), it is refused rather than forking the history.
    pub fn append_prepared(&mut self, batch: &mut Batch, p: Prepared) -> ApiResult<(u64, String)> {
        let current: Vec<&str> = self
            .room(&p.pdu.room_id)?
            .extremities
            .iter()
            .map(|e| e.event_id.as_str())
            .collect();
        if p.pdu.prev_events != current {
            return Err(ApiError::internal(
                "the room changed between preparing an event and sending it",
            ));
        }
        Ok(self.record_event(batch, p.pdu, p.txn))
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
        let auth = AuthView(&room.state);
        let pdu = mxconform_pdu::build::build(v, a.room_id, new, &prev, &auth, self.origin()?)
            .map_err(|e| ApiError::bad_json(format!("the event cannot be made: {e}")))?;
        let server = self.server_name.as_str();
        mxconform_pdu::authorize(v, &pdu, &auth, &|s| s == server).map_err(|r| {
            ApiError::forbidden(format!("the authorization rules refuse the event: {r}"))
        })?;
        // A room whose Policy Server is this server: it signs here (another server's is
        // asked by the handlers that send through it).
        let ours = self
            .policy_key
            .as_ref()
            .map(mxconform_pdu::SigningKey::public_base64);
        match self.policy_server_of(a.room_id) {
            Some((via, key))
                if via == server
                    && ours.as_deref() == Some(key.as_str())
                    && !pdu.is("m.room.policy", "") =>
            {
                let sig = self.policy_sign(v, &pdu)?;
                let mut json = pdu.json.clone();
                json["signatures"][server]["ed25519:policy_server"] =
                    sig[server]["ed25519:policy_server"].clone();
                Pdu::from_json(v, json)
                    .map_err(|e| ApiError::internal(format!("the signed event: {e}")))
            }
            _ => Ok(pdu),
        }
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
        let empty = std::collections::BTreeMap::new();
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
            batch.event_updates.push((key.1, t.to_record(v)));
            self.cache.put(Arc::new(t));
        }
        due.len()
    }

    /// Records a PDU at the next position ([`State::apply`]).
    pub(super) fn record_event(
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
}
