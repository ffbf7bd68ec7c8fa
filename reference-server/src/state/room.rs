//! A room: its current state and the state log, memberships, history visibility, and what
//! the room directory says of it.

use std::cell::{Ref, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use mxconform_pdu::{Pdu, RoomVersion};
use serde_json::{json, Value};

use super::{Event, State};
use crate::error::{ApiError, ApiResult};
use crate::store::Batch;

#[derive(Clone, Debug, Default)]
pub struct Room {
    pub room_id: String,
    pub version: String,
    /// The creator, and from room version 12 the `additional_creators`.
    pub creators: Vec<String>,
    /// Stream positions of the room's events, oldest first.
    pub timeline: Vec<u64>,
    /// Current state: (type, state key) -> the event's position and its PDU (redacted, if it
    /// was), which the authorization rules read.
    pub state: BTreeMap<(String, String), Current>,
    /// How the room's current state changed, oldest first: (from position, type, state key,
    /// the event's position; 0: the key left the state). A state event logs itself; where
    /// forks meet, resolution logs each key it sets otherwise than the stream did, at the
    /// merging event. The state at any point of the stream is what this says up to it (state
    /// events are few beside the history).
    pub state_log: Vec<(u64, String, String, u64)>,
    /// The state just after each event that did not extend the current state (an event of
    /// another server on a fork, or a soft-failed one): (type, state key) -> position. Other
    /// events' state is the stream's at them ([`Room::state_at`]). Forks are rare: this holds
    /// one map per forking event, not per event.
    pub branch_state: HashMap<u64, Arc<StatePositions>>,
    /// Membership changes per user: (position, membership), oldest first.
    pub members: HashMap<String, Vec<(u64, String)>>,
    /// History visibility changes: (position, visibility).
    pub visibility: Vec<(u64, String)>,
    pub public: bool,
    /// Each user's notifications in the room (events their push rules say notify), oldest
    /// first, for the users whose lists were read since the start ([`State::notifications`]
    /// reads a list from the database on first use); their actions stay in the database.
    pub notifications: RefCell<HashMap<String, Vec<crate::state::push::Notification>>>,
    /// Each user's latest event in the room: sending reads everything before it.
    pub last_sent: HashMap<String, u64>,
    /// The position of the room's latest membership change.
    pub last_membership: u64,
    /// The room's forward extremities: what the next event cites as `prev_events`.
    pub extremities: Vec<Arc<Pdu>>,
    /// History fetched from other servers (`/backfill`): each timeline event before which
    /// history was missing (the anchor: a remote join, or the earliest event of a gap) -> the
    /// fetched events' positions, oldest first. They are not in `timeline`, so /sync never
    /// shows them; /messages shows them just before their anchor.
    pub backfilled: BTreeMap<u64, Vec<u64>>,
    /// Each backfilled event's anchor, by position.
    pub backfilled_anchor: HashMap<u64, u64>,
    /// Where history still has a hole: anchor -> the prev events not here, of the anchor or
    /// of the oldest events backfilled before it. /messages backfills when it reaches one.
    pub backward: BTreeMap<u64, Vec<String>>,
}

/// A state as positions: (type, state key) -> the event's position.
pub type StatePositions = BTreeMap<(String, String), u64>;

/// One entry of a room's current state.
#[derive(Clone, Debug)]
pub struct Current {
    pub pos: u64,
    pub pdu: Arc<Pdu>,
}

/// The same event, read the same (redacted or not).
impl PartialEq for Current {
    fn eq(&self, other: &Current) -> bool {
        self.pos == other.pos
            && self.pdu.event_id == other.pdu.event_id
            && self.pdu.content() == other.pdu.content()
    }
}

/// A room's current state as the core's authorization rules read it.
pub struct AuthView<'a>(pub &'a BTreeMap<(String, String), Current>);

impl mxconform_pdu::auth::AuthState for AuthView<'_> {
    fn get(&self, kind: &str, state_key: &str) -> Option<&Pdu> {
        self.0
            .get(&(kind.to_string(), state_key.to_string()))
            .map(|c| c.pdu.as_ref())
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
        self.state
            .get(&(kind.to_string(), key.to_string()))
            .map(|c| c.pdu.content())
    }

    /// The positions of the current state events.
    pub fn state_positions(&self) -> impl Iterator<Item = u64> + '_ {
        self.state.values().map(|c| c.pos)
    }

    pub fn state_event(&self, kind: &str, key: &str) -> Option<u64> {
        self.state
            .get(&(kind.to_string(), key.to_string()))
            .map(|c| c.pos)
    }

    pub fn joined(&self) -> impl Iterator<Item = &String> {
        self.members
            .iter()
            .filter(|(_, l)| l.last().is_some_and(|(_, m)| m == "join"))
            .map(|(u, _)| u)
    }

    /// The state just after the event at `pos`: (type, state key) -> event position.
    pub fn state_at(&self, pos: u64) -> BTreeMap<(&str, &str), u64> {
        let end = self.state_log.partition_point(|(p, _, _, _)| *p <= pos);
        let mut out: BTreeMap<(&str, &str), u64> = self.state_log[..end]
            .iter()
            .map(|(_, kind, key, e)| ((kind.as_str(), key.as_str()), *e))
            .collect();
        out.retain(|_, e| *e != 0);
        out
    }

    /// Sets the history backfilled before `anchor` (positions, oldest first) and the prev
    /// events still missing before it (none: the history is whole).
    pub fn keep_backfill(&mut self, anchor: u64, events: Vec<u64>, missing: Vec<String>) {
        for p in &events {
            self.backfilled_anchor.insert(*p, anchor);
        }
        if events.is_empty() {
            self.backfilled.remove(&anchor);
        } else {
            self.backfilled.insert(anchor, events);
        }
        if missing.is_empty() {
            self.backward.remove(&anchor);
        } else {
            self.backward.insert(anchor, missing);
        }
    }

    /// The changes of the state logged after `from`, up to and including `until`.
    pub fn state_changes(
        &self,
        from: u64,
        until: u64,
    ) -> impl Iterator<Item = &(u64, String, String, u64)> {
        let lo = self.state_log.partition_point(|(p, _, _, _)| *p <= from);
        let hi = self.state_log.partition_point(|(p, _, _, _)| *p <= until);
        self.state_log[lo..hi.max(lo)].iter()
    }

    /// The state just after the event at `pos` as the event saw it: its branch's, when it
    /// forked, else the stream's.
    pub fn state_after(&self, pos: u64) -> StatePositions {
        match self.branch_state.get(&pos) {
            Some(s) => (**s).clone(),
            None => self
                .state_at(pos)
                .into_iter()
                .map(|((k, s), e)| ((k.to_string(), s.to_string()), e))
                .collect(),
        }
    }

    /// Sets keys of the current state from `at` on, as resolution decided where forks met
    /// (`None`: the key leaves the state); memberships and visibility follow. Returns the
    /// users whose membership it changes.
    pub(super) fn set_state(
        &mut self,
        at: u64,
        changes: Vec<((String, String), Option<Current>)>,
    ) -> Vec<String> {
        let mut users = Vec::new();
        for ((kind, key), current) in changes {
            let pos = current.as_ref().map_or(0, |c| c.pos);
            let content = current.as_ref().map(|c| c.pdu.content().clone());
            users.extend(self.log_change(at, &kind, &key, content.as_ref()));
            self.state_log.push((at, kind.clone(), key.clone(), pos));
            match current {
                Some(c) => {
                    self.state.insert((kind, key), c);
                }
                None => {
                    self.state.remove(&(kind, key));
                }
            }
        }
        users
    }

    /// Logs what a change of the state at `at` means for memberships and history visibility
    /// (`content` `None`: the key left the state); returns the user whose membership it sets.
    fn log_change(
        &mut self,
        at: u64,
        kind: &str,
        key: &str,
        content: Option<&Value>,
    ) -> Option<String> {
        let field = |name: &str, default: &str| {
            content
                .and_then(|c| c.get(name))
                .and_then(Value::as_str)
                .unwrap_or(default)
                .to_string()
        };
        match kind {
            "m.room.member" => {
                let m = field("membership", "leave");
                self.members
                    .entry(key.to_string())
                    .or_default()
                    .push((at, m));
                self.last_membership = at;
                Some(key.to_string())
            }
            "m.room.history_visibility" => {
                let v = field("history_visibility", "shared");
                self.visibility.push((at, v));
                None
            }
            _ => None,
        }
    }

    /// Puts a state event in the room's current state (and its membership and visibility
    /// logs); returns the user whose membership it changes.
    pub(super) fn apply_state(&mut self, ev: &Event, pdu: Arc<Pdu>) -> Option<String> {
        let key = ev.state_key.as_ref()?;
        let pos = ev.pos;
        let k = (ev.kind.clone(), key.clone());
        self.state.insert(k, Current { pos, pdu });
        self.state_log
            .push((pos, ev.kind.clone(), key.clone(), pos));
        self.log_change(pos, &ev.kind, key, Some(&ev.content))
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

impl State {
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

    pub fn put_room_meta(&mut self, batch: &mut Batch, room_id: &str) {
        if let Some(r) = self.rooms.get(room_id) {
            batch.put_record(room_id, &super::records::RoomRecord { public: r.public });
        }
    }

    /// A user's unread notifications in a room, and how many of them highlight: those after
    /// where they have read up to.
    pub fn unread(&self, room: &Room, user: &str) -> (usize, u32) {
        let read = self.read_up_to(room, user);
        let list = self.notifications(room, user);
        let i = list.partition_point(|n| n.pos <= read);
        let before = if i == 0 { 0 } else { list[i - 1].highlights };
        let total = list.last().map_or(0, |n| n.highlights);
        (list.len() - i, total - before)
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

    /// Points an alias at a room (`Some`: room and creator) or removes it (`None`).
    pub fn put_alias(&mut self, batch: &mut Batch, alias: &str, target: Option<(String, String)>) {
        match target {
            Some((room_id, creator)) => {
                batch.put_record(
                    alias,
                    &super::records::AliasRecord {
                        room_id: room_id.clone(),
                        creator: creator.clone(),
                    },
                );
                self.aliases.insert(alias.to_string(), (room_id, creator));
            }
            None => {
                batch.delete("alias", alias);
                self.aliases.remove(alias);
            }
        }
    }

    /// Starts (`until`: when it stops by itself, in ms) or stops a user's typing in a room.
    pub fn put_typing(&mut self, batch: &mut Batch, room_id: &str, user: &str, until: Option<u64>) {
        let pos = self.next_pos(batch);
        let entry = self.typing.entry(room_id.to_string()).or_default();
        match until {
            Some(t) => {
                entry.0.insert(user.to_string(), t);
            }
            None => {
                entry.0.remove(user);
            }
        }
        entry.1 = pos;
        if self.is_local(user) {
            self.emit_edu(
                super::EduTarget::Room(room_id.to_string()),
                "m.typing",
                json!({"room_id": room_id, "user_id": user, "typing": until.is_some()}),
            );
        }
    }

    /// A user's receipt of a type in a room (for a thread, or unthreaded), at the next stream
    /// position: one per user, type and thread.
    pub fn put_receipt(
        &mut self,
        batch: &mut Batch,
        room_id: &str,
        rtype: &str,
        user: &str,
        event_id: &str,
        thread: Option<String>,
    ) {
        let ts = super::now_ms();
        self.put_receipt_at(batch, room_id, rtype, user, event_id, thread, ts);
    }

    /// A receipt as [`State::put_receipt`], made at `ts` (another server's receipt keeps its
    /// time).
    #[allow(clippy::too_many_arguments)]
    pub fn put_receipt_at(
        &mut self,
        batch: &mut Batch,
        room_id: &str,
        rtype: &str,
        user: &str,
        event_id: &str,
        thread: Option<String>,
        ts: u64,
    ) {
        let pos = self.next_pos(batch);
        let who = match &thread {
            Some(t) => format!("{user}\u{0}{t}"),
            None => user.to_string(),
        };
        batch.put_record(
            format!("{room_id}\u{0}{rtype}\u{0}{who}"),
            &super::records::ReceiptRecord {
                event_id: event_id.to_string(),
                ts,
                thread_id: thread.clone(),
                pos,
            },
        );
        let entry = self.receipts.entry(room_id.to_string()).or_default();
        entry
            .0
            .entry(rtype.to_string())
            .or_default()
            .insert(who, (event_id.to_string(), ts, thread.clone()));
        entry.1 = pos;
        // Public read receipts of this server's users go to the room's other servers.
        if rtype == "m.read" && self.is_local(user) {
            let mut data = json!({"ts": ts});
            if let Some(t) = thread {
                data["thread_id"] = json!(t);
            }
            self.emit_edu(
                super::EduTarget::Room(room_id.to_string()),
                "m.receipt",
                json!({ room_id: {"m.read": { user: {"event_ids": [event_id], "data": data}}}}),
            );
        }
    }

    /// Lists a room in (`true`) or removes it from an application service network's
    /// directory.
    pub fn put_appservice_room(
        &mut self,
        batch: &mut Batch,
        instance: &str,
        room_id: &str,
        listed: bool,
    ) {
        let key = format!("{instance}\u{0}{room_id}");
        if listed {
            batch.put("as_room", key, &json!(true));
            self.appservice_rooms
                .entry(instance.to_string())
                .or_default()
                .insert(room_id.to_string());
        } else {
            batch.delete("as_room", key);
            if let Some(set) = self.appservice_rooms.get_mut(instance) {
                set.remove(room_id);
            }
        }
    }

    /// A user's notifications in a room, oldest first (read from the database the first time).
    pub fn notifications<'a>(
        &self,
        room: &'a Room,
        user: &str,
    ) -> Ref<'a, [crate::state::push::Notification]> {
        load_notifications(&self.store, room, user);
        Ref::map(room.notifications.borrow(), |m| {
            m.get(user).map(Vec::as_slice).unwrap_or(&[])
        })
    }
}

/// Reads a user's notifications in a room from the database, unless they were read already.
pub(super) fn load_notifications(store: &crate::store::Store, room: &Room, user: &str) {
    if room.notifications.borrow().contains_key(user) {
        return;
    }
    let mut list = Vec::new();
    let mut highlights = 0;
    for (pos, highlight) in store
        .notification_list(user, &room.room_id)
        .unwrap_or_default()
    {
        highlights += u32::from(highlight);
        list.push(crate::state::push::Notification { pos, highlights });
    }
    room.notifications
        .borrow_mut()
        .insert(user.to_string(), list);
}
