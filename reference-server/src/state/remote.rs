//! Events from other servers: the checks on receipt that need the room (the PDU's format,
//! signatures and content hash are checked before, without the state lock), where an accepted
//! PDU goes, and what other servers are told of a room: its state at an event, auth chains,
//! the events before others, membership templates.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use mxconform_pdu::auth::{authorize_by_auth_events, EventList};
use mxconform_pdu::build::NewEvent;
use mxconform_pdu::state_res::{self, StateMap};
use mxconform_pdu::{Pdu, RoomVersion};
use serde_json::{json, Value};

use super::{now_ms, AuthView, State};
use crate::error::{ApiError, ApiResult};
use crate::store::Batch;

/// A resolved state: (type, state key) -> the event's position and PDU.
type Resolved = BTreeMap<(String, String), (u64, Pdu)>;

/// What became of a PDU received from another server.
#[derive(Debug, PartialEq)]
pub enum Received {
    /// Kept, in the room's timeline at this position.
    Accepted(u64),
    /// Already known: nothing changed.
    Duplicate,
    /// Allowed by the state before it but not by the current state: not kept, not shown.
    SoftFailed(String),
    /// Refused by the authorization rules (the reason names the rule).
    Rejected(String),
    /// Some of its prev events are unknown here (their ids).
    MissingPrev(Vec<String>),
}

/// A user's membership in a room this server is not in: an invite from another server, or a
/// knock or rejected invite through one. Sync shows it; `via` is the server to go through.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RemoteMembership {
    /// The stream position of the change.
    pub pos: u64,
    pub membership: String,
    /// The member event, signed, and its id.
    pub event: Value,
    #[serde(default)]
    pub event_id: String,
    /// The room's stripped state as the other server gave it.
    pub stripped: Vec<Value>,
    pub via: String,
}

/// Whom an EDU of this server goes to.
#[derive(Clone, Debug)]
pub enum EduTarget {
    /// The other servers of a room.
    Room(String),
    /// The other servers sharing any room with a user.
    UserRooms(String),
    /// One server.
    Server(String),
}

/// Whether `pdu` carries a signature of `server` (signatures were verified before).
fn signed_by(pdu: &Pdu, server: &str) -> bool {
    pdu.json
        .get("signatures")
        .and_then(|s| s.get(server))
        .is_some_and(Value::is_object)
}

impl State {
    /// The version of a room this server is in.
    pub fn room_version_of(&self, room_id: &str) -> Option<&'static RoomVersion> {
        self.rooms.get(room_id).map(super::Room::room_version)
    }

    /// An event of `room_id` as the rules read it (redacted, if it was), by id.
    pub fn pdu_in(&self, room_id: &str, event_id: &str) -> Option<Pdu> {
        let v = self.room_version_of(room_id)?;
        let ev = self.event_by_id(event_id)?;
        if ev.room_id != room_id {
            return None;
        }
        ev.to_pdu(v).ok()
    }

    /// The auth chain of `ids`: their auth events, theirs, and so on (not `ids` themselves),
    /// oldest first.
    pub fn auth_chain(&self, room_id: &str, ids: &[String]) -> Vec<Pdu> {
        let mut seen: BTreeSet<String> = BTreeSet::new();
        let mut out: Vec<Pdu> = Vec::new();
        let mut todo: Vec<String> = ids
            .iter()
            .filter_map(|id| self.pdu_in(room_id, id))
            .flat_map(|p| p.auth_events)
            .collect();
        while let Some(id) = todo.pop() {
            if !seen.insert(id.clone()) {
                continue;
            }
            if let Some(p) = self.pdu_in(room_id, &id) {
                todo.extend(p.auth_events.iter().cloned());
                out.push(p);
            }
        }
        // From room version 12 the create event is every event's auth event without being
        // cited: a chain still holds it.
        if let Some(room) = self
            .rooms
            .get(room_id)
            .filter(|r| r.room_version().room_id_is_create)
        {
            if let Some(c) = room
                .state
                .get(&("m.room.create".to_string(), String::new()))
            {
                if !seen.contains(&c.pdu.event_id) && ids != [c.pdu.event_id.clone()] {
                    out.push((*c.pdu).clone());
                }
            }
        }
        out.sort_by_key(|p| (p.depth, p.origin_server_ts));
        out
    }

    /// The state of the room just before the event `event_id`, as PDUs, or `None` when the
    /// event is not one of the room's: the states after its prev events (resolved), else
    /// (prev events not here: the first event of a join) the stream's state before it.
    pub fn state_before(&self, room_id: &str, event_id: &str) -> Option<Vec<Pdu>> {
        let room = self.rooms.get(room_id)?;
        let pos = self.event_pos(event_id)?;
        let ev = self.event(pos).filter(|e| e.room_id == room_id)?;
        let v = room.room_version();
        if let Ok(p) = ev.to_pdu(v) {
            if !p.prev_events.is_empty()
                && p.prev_events.iter().all(|id| self.event_pos(id).is_some())
            {
                if let Ok(s) = self.state_after_events(room_id, &p.prev_events) {
                    return Some(s.into_values().map(|(_, p)| p).collect());
                }
            }
        }
        Some(
            room.state_at(pos.saturating_sub(1))
                .values()
                .filter_map(|p| self.event(*p).and_then(|e| e.to_pdu(v).ok()))
                .collect(),
        )
    }

    /// The room's current state, as PDUs.
    pub fn current_state(&self, room_id: &str) -> Vec<Arc<Pdu>> {
        self.rooms
            .get(room_id)
            .map(|r| r.state.values().map(|c| c.pdu.clone()).collect())
            .unwrap_or_default()
    }

    /// The room's state as a knocking or invited user's server sees it: the create event
    /// whole (a PDU), and the others stripped to type, state key, sender and content.
    pub fn stripped_state_pdus(&self, room_id: &str) -> Vec<Value> {
        let Some(room) = self.rooms.get(room_id) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for kind in [
            "m.room.create",
            "m.room.join_rules",
            "m.room.name",
            "m.room.canonical_alias",
            "m.room.avatar",
            "m.room.encryption",
            "m.room.topic",
        ] {
            let Some(c) = room.state.get(&(kind.to_string(), String::new())) else {
                continue;
            };
            let p = &c.pdu;
            out.push(if kind == "m.room.create" {
                p.json.clone()
            } else {
                json!({"type": p.kind, "state_key": "", "sender": p.sender, "content": p.content()})
            });
        }
        out
    }

    /// Whether the room's server ACL (`m.room.server_acl`) lets `server` take part: not an IP
    /// literal unless allowed, matching no `deny` glob and some `allow` glob (the port is not
    /// part of what is matched). No ACL: every server.
    pub fn server_allowed(&self, room_id: &str, server: &str) -> bool {
        let Some(acl) = self
            .rooms
            .get(room_id)
            .and_then(|r| r.state_content("m.room.server_acl", ""))
        else {
            return true;
        };
        let host = match server.rfind(':') {
            Some(i) if !server[i..].contains(']') => &server[..i],
            _ => server,
        };
        let globs = |k: &str| -> Vec<&str> {
            acl.get(k)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect()
        };
        let ip_literal = host.parse::<std::net::Ipv4Addr>().is_ok()
            || (host.starts_with('[') && host.ends_with(']'));
        if ip_literal && acl.get("allow_ip_literals").and_then(Value::as_bool) == Some(false) {
            return false;
        }
        if globs("deny").iter().any(|g| glob_matches(g, host)) {
            return false;
        }
        globs("allow").iter().any(|g| glob_matches(g, host))
    }

    /// The servers with a joined member in the room.
    pub fn servers_in_room(&self, room_id: &str) -> BTreeSet<String> {
        self.rooms
            .get(room_id)
            .map(|r| {
                r.joined()
                    .filter_map(|u| u.split_once(':').map(|(_, s)| s.to_string()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The events of the room before `from` (walking prev events breadth first, `from`
    /// included), at most `limit`: backfill's answer. With `stop`, the walk does not go past
    /// those events (get_missing_events).
    pub fn events_before(
        &self,
        room_id: &str,
        from: &[String],
        limit: usize,
        stop: &BTreeSet<String>,
        include_from: bool,
    ) -> Vec<Pdu> {
        let mut seen: BTreeSet<String> = stop.clone();
        let mut out = Vec::new();
        let mut queue: std::collections::VecDeque<(String, bool)> =
            from.iter().map(|id| (id.clone(), include_from)).collect();
        while let Some((id, keep)) = queue.pop_front() {
            if out.len() >= limit {
                break;
            }
            if !seen.insert(id.clone()) && keep {
                continue;
            }
            let Some(p) = self.pdu_in(room_id, &id) else {
                continue;
            };
            for prev in &p.prev_events {
                if !seen.contains(prev) {
                    queue.push_back((prev.clone(), true));
                }
            }
            if keep {
                out.push(p);
            }
        }
        out
    }

    /// The template of a membership event `user` of another server asks to make
    /// (make_join, make_leave, make_knock): the PDU as this server would build it on the
    /// room's extremities, without hashes, signatures or (room versions 1 and 2) event id, and
    /// only if the rules would allow it now.
    pub fn membership_template(
        &self,
        room_id: &str,
        user: &str,
        membership: &str,
        origin: &str,
    ) -> ApiResult<Value> {
        let room = self.room(room_id)?;
        let v = room.room_version();
        let mut content = json!({"membership": membership});
        if membership == "join" {
            let rule = room
                .state_content("m.room.join_rules", "")
                .and_then(|c| c.get("join_rule"))
                .and_then(Value::as_str)
                .unwrap_or("invite");
            let invited = matches!(room.membership(user), Some("join" | "invite"));
            if !invited && matches!(rule, "restricted" | "knock_restricted") {
                // A resident member who may invite vouches for the join (room version 8 on);
                // the joining user must be in one of the allowed rooms.
                let allow_list = room
                    .state_content("m.room.join_rules", "")
                    .and_then(|c| c.get("allow"))
                    .and_then(Value::as_array);
                let allow: &[Value] = allow_list.map_or(&[], Vec::as_slice);
                let allowed_rooms = allow
                    .iter()
                    .map(|a| a.get("room_id").and_then(Value::as_str));
                let allowed = allowed_rooms.clone().any(|r| {
                    r.and_then(|r| self.rooms.get(r))
                        .is_some_and(|r| r.membership(user) == Some("join"))
                });
                if !allowed {
                    // Where this server is in every allowed room it knows the user is in none;
                    // otherwise another server might vouch.
                    let knows_all = allow_list.is_some()
                        && allowed_rooms
                            .clone()
                            .all(|r| r.is_some_and(|r| self.rooms.contains_key(r)));
                    return Err(if knows_all {
                        ApiError::forbidden(
                            "the room is restricted and the user is in none of its allowed rooms",
                        )
                    } else {
                        ApiError {
                            status: 400,
                            errcode: "M_UNABLE_TO_AUTHORISE_JOIN",
                            message: "the room is restricted to rooms this server is not in".into(),
                            extra: None,
                        }
                    });
                }
                let needed = self.required_level(room, "invite", false);
                let mut members: Vec<&String> = room
                    .joined()
                    .filter(|m| m.ends_with(&format!(":{}", self.server_name)))
                    .collect();
                members.sort();
                let via = members
                    .into_iter()
                    .find(|m| State::meets(self.power_level(room, m), needed))
                    .ok_or_else(|| ApiError {
                        status: 400,
                        errcode: "M_UNABLE_TO_GRANT_JOIN",
                        message: "no member here may vouch for the join".into(),
                        extra: None,
                    })?;
                content["join_authorised_via_users_server"] = json!(via);
            }
        }
        let new = NewEvent::new("m.room.member", Some(user), user, content, now_ms() as i64);
        let prev: Vec<&Pdu> = room.extremities.iter().map(|p| p.as_ref()).collect();
        let auth = AuthView(&room.state);
        let pdu = mxconform_pdu::build::build(v, room_id, new, &prev, &auth, self.origin()?)
            .map_err(|e| ApiError::bad_json(format!("the event cannot be made: {e}")))?;
        mxconform_pdu::authorize(v, &pdu, &auth, &|s| s == origin || s == self.server_name)
            .map_err(|r| {
                ApiError::forbidden(format!("the authorization rules refuse the event: {r}"))
            })?;
        let mut json = pdu.json;
        if let Some(m) = json.as_object_mut() {
            m.remove("hashes");
            m.remove("signatures");
            if v.event_ids == mxconform_pdu::version::EventIdFormat::Opaque {
                m.remove("event_id");
            }
            m.insert("origin".into(), json!(origin));
        }
        Ok(json)
    }

    /// The checks on receipt that need the room (the auth events, the state before the event,
    /// the current state), then the PDU's place in the room. `hash_ok` false: the content hash
    /// did not match, and the redacted event is what is kept.
    pub fn receive_pdu(&mut self, batch: &mut Batch, pdu: Pdu, hash_ok: bool) -> Received {
        self.receive(batch, pdu, hash_ok, None)
    }

    /// A PDU whose prev events could not all be fetched (a gap get_missing_events did not
    /// close), received on the state before it that its server gave (`state`, with its auth
    /// chain `chain`): those events are checked by their own auth events and kept as the
    /// graph's (not shown, not the current state), then the PDU is received as one off the
    /// current state, and the missing history waits for backfill before it.
    pub fn receive_pdu_on_state(
        &mut self,
        batch: &mut Batch,
        pdu: Pdu,
        hash_ok: bool,
        state: Vec<Pdu>,
        chain: Vec<Pdu>,
    ) -> Received {
        let Some(room) = self.rooms.get(&pdu.room_id) else {
            return Received::Rejected(format!("this server is not in room {}", pdu.room_id));
        };
        let v = room.room_version();
        let room_id = pdu.room_id.clone();
        let state_ids: BTreeSet<String> = state.iter().map(|p| p.event_id.clone()).collect();
        let accepted = self.by_own_auth_events(&room_id, v, state.into_iter().chain(chain));
        let mut before: Resolved = BTreeMap::new();
        for p in accepted {
            let pos = match self.event_pos(&p.event_id) {
                Some(pos) => pos,
                None => {
                    self.record_hidden(batch, p.clone(), "the state of a gap");
                    self.pos
                }
            };
            if let (Some(k), true) = (&p.state_key, state_ids.contains(&p.event_id)) {
                before.insert((p.kind.clone(), k.clone()), (pos, p));
            }
        }
        if !before.contains_key(&("m.room.create".to_string(), String::new()))
            && !v.room_id_is_create
        {
            return Received::Rejected("the state its server gave has no create event".into());
        }
        let missing: Vec<String> = pdu
            .prev_events
            .iter()
            .filter(|id| self.event_pos(id).is_none())
            .cloned()
            .collect();
        let outcome = self.receive(batch, pdu, hash_ok, Some(before));
        if let Received::Accepted(pos) = outcome {
            self.keep_backfill(batch, &room_id, pos, Vec::new(), missing);
        }
        outcome
    }

    /// The events of `pdus` (another server's, of `room_id`) that the rules allow by their own
    /// auth events, each found among those allowed before it or known here; oldest first.
    fn by_own_auth_events(
        &self,
        room_id: &str,
        v: &'static RoomVersion,
        pdus: impl Iterator<Item = Pdu>,
    ) -> Vec<Pdu> {
        let mut order: Vec<Pdu> = pdus.filter(|p| p.room_id == room_id).collect();
        order.sort_by_key(|p| (p.depth, p.origin_server_ts));
        order.dedup_by(|a, b| a.event_id == b.event_id);
        let create = self.rooms.get(room_id).and_then(|r| {
            r.state
                .get(&("m.room.create".to_string(), String::new()))
                .map(|c| c.pdu.clone())
        });
        let mut allowed: HashMap<String, Pdu> = HashMap::new();
        let mut out = Vec::new();
        for p in order {
            let known: Vec<Option<Pdu>> = p
                .auth_events
                .iter()
                .map(|id| {
                    allowed
                        .get(id)
                        .cloned()
                        .or_else(|| self.pdu_in(room_id, id))
                })
                .collect();
            let auth: Vec<Option<&Pdu>> = known.iter().map(Option::as_ref).collect();
            let signed = |s: &str| signed_by(&p, s);
            if authorize_by_auth_events(v, &p, &auth, &|_| false, create.as_deref(), &signed)
                .is_ok()
            {
                allowed.insert(p.event_id.clone(), p.clone());
                out.push(p);
            }
        }
        out
    }

    /// Keeps history another server gave (`/backfill`) before the timeline event at `anchor`:
    /// each event checked by its own auth events, those new here stored outside the timeline
    /// (not the current state, never in /sync), state events this server had from a join
    /// shown in that history too; the prev events still missing before it noted. Returns how
    /// many events the history gained.
    pub fn keep_backfilled(
        &mut self,
        batch: &mut Batch,
        room_id: &str,
        anchor: u64,
        pdus: Vec<Pdu>,
    ) -> usize {
        let Some(room) = self.rooms.get(room_id) else {
            return 0;
        };
        let v = room.room_version();
        let mut items: Vec<(i64, u64, u64)> = Vec::new();
        let mut ids: Vec<Pdu> = Vec::new();
        for p in self.by_own_auth_events(room_id, v, pdus.into_iter()) {
            let (depth, ts) = (p.depth as i64, p.origin_server_ts as u64);
            match self.event_pos(&p.event_id) {
                None => {
                    self.record_backfilled(batch, p.clone());
                    items.push((depth, ts, self.pos));
                    ids.push(p);
                }
                Some(pos) => {
                    // A state event kept from a join (in the state log at its own position,
                    // not in the timeline) is history too; timeline events are shown already.
                    let room = &self.rooms[room_id];
                    let outlier = room.timeline.binary_search(&pos).is_err()
                        && !room.backfilled_anchor.contains_key(&pos)
                        && room
                            .state_log
                            .iter()
                            .any(|(at, _, _, e)| *at == pos && *e == pos);
                    if outlier {
                        items.push((depth, ts, pos));
                        ids.push(p);
                    }
                }
            }
        }
        let room = &self.rooms[room_id];
        let gained = items.len();
        items.sort();
        let mut events: Vec<u64> = items.into_iter().map(|(_, _, p)| p).collect();
        events.extend(room.backfilled.get(&anchor).into_iter().flatten().copied());
        let mut missing: Vec<String> = ids
            .iter()
            .flat_map(|p| p.prev_events.iter())
            .filter(|id| self.event_pos(id).is_none())
            .cloned()
            .collect();
        missing.sort();
        missing.dedup();
        self.keep_backfill(batch, room_id, anchor, events, missing);
        gained
    }

    /// Records the history before `anchor` and what is missing before it.
    fn keep_backfill(
        &mut self,
        batch: &mut Batch,
        room_id: &str,
        anchor: u64,
        events: Vec<u64>,
        missing: Vec<String>,
    ) {
        let record = super::records::BackfillRecord {
            room: room_id.to_string(),
            events: events.clone(),
            missing: missing.clone(),
        };
        batch.put_record(anchor.to_string(), &record);
        if let Some(room) = self.rooms.get_mut(room_id) {
            room.keep_backfill(anchor, events, missing);
        }
    }

    /// Stores an event of a room's history fetched from another server: found by id and
    /// position, but neither in the timeline nor the state (its row has no state key).
    fn record_backfilled(&mut self, batch: &mut Batch, pdu: Pdu) {
        let ev = self.record_row(batch, &pdu, false);
        self.cache.put(Arc::new(ev));
    }

    /// The row of another server's event that is not a timeline event (outlier, hidden,
    /// backfilled), at a new position; `state`: its state key is kept, so that start-up applies
    /// it to the room's state. Answers the event, for the caller to apply and cache.
    fn record_row(&mut self, batch: &mut Batch, pdu: &Pdu, state: bool) -> super::Event {
        self.pos += 1;
        let ev = super::Event::from_pdu(self.pos, pdu, None);
        batch.events.push(crate::store::EventRow {
            pos: ev.pos,
            room_id: ev.room_id.clone(),
            event_id: ev.event_id.clone(),
            sender: ev.sender.clone(),
            state_key: if state { ev.state_key.clone() } else { None },
            relates_to: None,
            replaces: None,
            json: super::timeline::record_text(&pdu.json, &None, false),
        });
        ev
    }

    /// Steps 4-6 of the checks on receipt; `given`: the state before the event, when its
    /// server gave it because its prev events could not be fetched.
    fn receive(
        &mut self,
        batch: &mut Batch,
        pdu: Pdu,
        hash_ok: bool,
        given: Option<Resolved>,
    ) -> Received {
        let Some(room) = self.rooms.get(&pdu.room_id) else {
            return Received::Rejected(format!("this server is not in room {}", pdu.room_id));
        };
        let v = room.room_version();
        if self.event_pos(&pdu.event_id).is_some() {
            return Received::Duplicate;
        }
        let pdu = if hash_ok {
            pdu
        } else {
            match Pdu::from_json(v, pdu.redacted(v)) {
                Ok(p) => p,
                Err(e) => return Received::Rejected(format!("its redacted form: {e}")),
            }
        };
        let room_id = pdu.room_id.clone();
        let signed = |s: &str| signed_by(&pdu, s);
        // Step 4: the auth events, and the rules with them as the state.
        let auth: Vec<Option<Pdu>> = pdu
            .auth_events
            .iter()
            .map(|id| self.pdu_in(&room_id, id))
            .collect();
        let create = room
            .state
            .get(&("m.room.create".to_string(), String::new()))
            .map(|c| c.pdu.clone());
        let auth_refs: Vec<Option<&Pdu>> = auth.iter().map(Option::as_ref).collect();
        if let Err(r) =
            authorize_by_auth_events(v, &pdu, &auth_refs, &|_| false, create.as_deref(), &signed)
        {
            return Received::Rejected(format!("by its auth events: {r}"));
        }
        // Step 5: the state before the event.
        let missing: Vec<String> = pdu
            .prev_events
            .iter()
            .filter(|id| self.event_pos(id).is_none())
            .cloned()
            .collect();
        if !missing.is_empty() && given.is_none() {
            return Received::MissingPrev(missing);
        }
        let extremities: BTreeSet<&str> = room
            .extremities
            .iter()
            .map(|e| e.event_id.as_str())
            .collect();
        let prevs: BTreeSet<&str> = pdu.prev_events.iter().map(String::as_str).collect();
        let on_current = prevs == extremities;
        // The state after an event off the current state, as it sees it (its own key added
        // once it has a position).
        let mut branch: Option<super::room::StatePositions> = None;
        if !on_current {
            let before = match given {
                Some(s) => s,
                None => match self.state_after_events(&room_id, &pdu.prev_events) {
                    Ok(s) => s,
                    Err(e) => return Received::Rejected(format!("the state before it: {e}")),
                },
            };
            branch = Some(before.iter().map(|(k, (p, _))| (k.clone(), *p)).collect());
            let mut state: Vec<&Pdu> = before.values().map(|(_, p)| p).collect();
            if v.room_id_is_create {
                state.extend(create.as_deref());
            }
            if let Err(r) = mxconform_pdu::authorize(v, &pdu, &EventList(state), &signed) {
                return Received::Rejected(format!("by the state before it: {r}"));
            }
        }
        // A room with a Policy Server: an event it did not sign is not recommended, and soft
        // fails (the caller asked the Policy Server before, where it could).
        if self.lacks_policy_signature(&pdu).is_some() {
            let why = "no valid signature of the room's Policy Server".to_string();
            let key = pdu.state_key.clone().map(|k| (pdu.kind.clone(), k));
            self.record_hidden(batch, pdu, &why);
            if let Some(mut after) = branch {
                let at = self.pos;
                if let Some(k) = key {
                    after.insert(k, at);
                }
                self.keep_branch_state(batch, &room_id, at, after);
            }
            return Received::SoftFailed(why);
        }
        // Step 6: the current state (soft failure).
        let room = &self.rooms[&room_id];
        if let Err(r) = mxconform_pdu::authorize(v, &pdu, &AuthView(&room.state), &signed) {
            if on_current {
                return Received::Rejected(format!("by the state before it: {r}"));
            }
            let why = format!("by the current state: {r}");
            let key = pdu.state_key.clone().map(|k| (pdu.kind.clone(), k));
            self.record_hidden(batch, pdu, &why);
            // Later events may build on it: the state after it is its branch's.
            if let Some(mut after) = branch {
                let at = self.pos;
                if let Some(k) = key {
                    after.insert(k, at);
                }
                self.keep_branch_state(batch, &room_id, at, after);
            }
            return Received::SoftFailed(why);
        }
        // A redaction by someone of another server than the redacted event's sender, without
        // the power to redact, is kept but neither applied nor shown (room versions 3 on).
        if let Some(target) = pdu
            .redacts
            .clone()
            .filter(|_| pdu.kind == "m.room.redaction")
        {
            let room = &self.rooms[&room_id];
            let allowed = match self.event_by_id(&target) {
                Some(t) if t.room_id == room_id => {
                    t.sender.split_once(':').map(|x| x.1) == Some(pdu.sender_server())
                        || State::meets(
                            self.power_level(room, &pdu.sender),
                            self.required_level(room, "redact", false),
                        )
                }
                // Unknown here: nothing to apply it to.
                _ => true,
            };
            if !allowed {
                self.record_hidden(batch, pdu, "a redaction its sender may not apply");
                return Received::SoftFailed("a redaction its sender may not apply".into());
            }
        }
        let key = pdu.state_key.clone().map(|k| (pdu.kind.clone(), k));
        let (pos, _) = self.record_event(batch, pdu, None);
        if let Some(mut after) = branch {
            if let Some(k) = key {
                after.insert(k, pos);
            }
            if let Err(e) = self.resolve_after_fork(batch, &room_id, pos, after) {
                // The event is the room's now; its state stays the stream's.
                tracing::error!("resolving the state of {room_id} at {pos}: {e}");
            }
        }
        Received::Accepted(pos)
    }

    /// The room's Policy Server, when it uses one: a valid `m.room.policy` in the current
    /// state (`via` a server name, `public_keys.ed25519` a key) whose server has a joined
    /// member. Answers the server name and its public key.
    pub fn policy_server_of(&self, room_id: &str) -> Option<(String, String)> {
        let room = self.rooms.get(room_id)?;
        let content = room.state_content("m.room.policy", "")?;
        let via = content.get("via")?.as_str()?.to_string();
        let key = content
            .get("public_keys")?
            .get("ed25519")?
            .as_str()?
            .to_string();
        let joined = room
            .joined()
            .any(|u| u.split_once(':').map(|(_, h)| h) == Some(via.as_str()));
        joined.then_some((via, key))
    }

    /// Whether the event needs, and lacks, a valid signature of its room's Policy Server
    /// (every event but the `m.room.policy` state event itself, when the room uses one).
    pub fn lacks_policy_signature(&self, pdu: &Pdu) -> Option<(String, String)> {
        let (via, key) = self.policy_server_of(&pdu.room_id)?;
        if pdu.is("m.room.policy", "") {
            return None;
        }
        let v = self.room_version_of(&pdu.room_id)?;
        let valid = mxconform_pdu::VerifyKey::from_base64("ed25519:policy_server", &key)
            .ok()
            .is_some_and(|k| {
                mxconform_pdu::sign::verify_signature(&pdu.redacted(v), &via, &k).is_ok()
            });
        (!valid).then_some((via, key))
    }

    /// This server's Policy Server signature on `pdu` (`{server name: {ed25519:policy_server:
    /// signature}}`, of the redacted event as every event signature is), when the room names
    /// this server and its key as its Policy Server, the event is not the room's
    /// `m.room.policy` state event, and the room's current state allows it; refused otherwise
    /// (400 `M_FORBIDDEN`) with the reason. The event's own signatures are the caller's to
    /// check.
    pub fn policy_sign(&self, v: &RoomVersion, pdu: &Pdu) -> ApiResult<Value> {
        let refused = |message: String| ApiError {
            status: 400,
            errcode: "M_FORBIDDEN",
            message,
            extra: None,
        };
        let key = self
            .policy_key
            .as_ref()
            .ok_or_else(|| refused("this server is not a Policy Server".into()))?;
        let name = self.server_name.as_str();
        match self.policy_server_of(&pdu.room_id) {
            Some((via, k)) if via == name && k == key.public_base64() => {}
            Some((via, _)) if via == name => {
                return Err(refused(format!(
                    "room {} names another key for this Policy Server",
                    pdu.room_id
                )))
            }
            _ => {
                return Err(refused(format!(
                    "room {} does not use this server as its Policy Server",
                    pdu.room_id
                )))
            }
        }
        if pdu.is("m.room.policy", "") {
            return Err(refused(
                "a room's m.room.policy state event is not the Policy Server's to sign".into(),
            ));
        }
        let room = self.room(&pdu.room_id)?;
        let signed = |server: &str| {
            pdu.json
                .get("signatures")
                .and_then(|x| x.get(server))
                .is_some()
        };
        mxconform_pdu::authorize(v, pdu, &AuthView(&room.state), &signed).map_err(|r| {
            refused(format!(
                "the room's current state does not allow the event: {r}"
            ))
        })?;
        let mut redacted = pdu.redacted(v);
        mxconform_pdu::sign::sign_json(&mut redacted, name, key);
        let sig = redacted["signatures"][name][key.key_id()].clone();
        Ok(json!({ name: { key.key_id(): sig } }))
    }

    /// Whether a user is one of this server's.
    pub fn is_local(&self, user: &str) -> bool {
        user.split_once(':').map(|(_, s)| s) == Some(self.server_name.as_str())
    }

    /// Queues an EDU for other servers, sent after this write commits.
    pub fn emit_edu(&mut self, to: EduTarget, edu_type: &str, content: Value) {
        self.outbox
            .push((to, json!({"edu_type": edu_type, "content": content})));
    }

    /// The servers an EDU goes to (this one left out).
    pub fn edu_destinations(&self, to: &EduTarget) -> BTreeSet<String> {
        let mut out = match to {
            EduTarget::Room(r) => self.servers_in_room(r),
            EduTarget::UserRooms(u) => self
                .user_rooms
                .get(u)
                .into_iter()
                .flatten()
                .filter(|r| {
                    self.rooms
                        .get(*r)
                        .is_some_and(|room| room.membership(u) == Some("join"))
                })
                .flat_map(|r| self.servers_in_room(r))
                .collect(),
            EduTarget::Server(s) => BTreeSet::from([s.clone()]),
        };
        out.remove(&self.server_name);
        out
    }

    /// Tells the servers sharing a room with a local user that one of their devices changed
    /// (`m.device_list_update`): `deleted`, or its current name and keys.
    pub fn emit_device_update(&mut self, user: &str, device: &str, deleted: bool) {
        if !self.is_local(user) {
            return;
        }
        let stream_id = self.pos;
        let prev = self.device_stream_sent.insert(user.to_string(), stream_id);
        let mut content = json!({
            "user_id": user,
            "device_id": device,
            "stream_id": stream_id,
            "prev_id": prev.into_iter().collect::<Vec<_>>(),
        });
        if deleted {
            content["deleted"] = json!(true);
        } else {
            if let Some(n) = self
                .devices
                .get(user)
                .and_then(|d| d.get(device))
                .and_then(|d| d.display_name.clone())
            {
                content["device_display_name"] = json!(n);
            }
            if let Some(k) = self
                .device_keys
                .get(&(user.to_string(), device.to_string()))
            {
                content["keys"] = k.clone();
            }
        }
        self.emit_edu(
            EduTarget::UserRooms(user.to_string()),
            "m.device_list_update",
            content,
        );
    }

    /// Records (`Some`) or forgets a user's membership in a room this server is not in.
    pub fn put_remote_membership(
        &mut self,
        batch: &mut Batch,
        user: &str,
        room_id: &str,
        m: Option<RemoteMembership>,
    ) {
        let key = format!("{user}\u{0}{room_id}");
        match m {
            Some(mut m) => {
                m.pos = self.next_pos(batch);
                batch.put(
                    "remote_membership",
                    key,
                    &serde_json::to_value(&m).unwrap_or(Value::Null),
                );
                self.remote_memberships
                    .entry(user.to_string())
                    .or_default()
                    .insert(room_id.to_string(), m);
            }
            None => {
                batch.delete("remote_membership", key);
                if let Some(rooms) = self.remote_memberships.get_mut(user) {
                    rooms.remove(room_id);
                }
            }
        }
    }

    /// Keeps a room of another server this server's user just joined: the state the resident
    /// server gave (checked by the caller) as the room's state before the join, the rest of the
    /// auth chain as graph-only events, then the join itself in the timeline. Returns the
    /// join's position.
    pub fn join_remote_room(
        &mut self,
        batch: &mut Batch,
        v: &'static RoomVersion,
        room_id: &str,
        mut state: Vec<Pdu>,
        chain: Vec<Pdu>,
        join: Pdu,
    ) -> ApiResult<u64> {
        let known = self.rooms.contains_key(room_id);
        let gap = join
            .prev_events
            .iter()
            .any(|id| self.event_pos(id).is_none());
        if known && !gap {
            // Known already (a user of this server is in it): the join is an ordinary event.
            return match self.receive_pdu(batch, join, true) {
                Received::Accepted(p) => Ok(p),
                Received::Duplicate => Ok(self.pos),
                Received::Rejected(r) | Received::SoftFailed(r) => {
                    Err(ApiError::forbidden(format!("the join is refused: {r}")))
                }
                Received::MissingPrev(ids) => Err(ApiError::bad_status(format!(
                    "the join cites events this server does not have: {}",
                    ids.join(", ")
                ))),
            };
        }
        state.sort_by_key(|p| (!p.is("m.room.create", ""), p.depth, p.origin_server_ts));
        if known {
            // Joined again after this server had left: the events since are not here, and the
            // state the resident gave (checked by the caller) replaces what this server last
            // saw; the join starts the room's one forward extremity. (A state event known
            // here but no longer current is not put back; only unknown ones are applied.)
            if let Some(room) = self.rooms.get_mut(room_id) {
                room.extremities.clear();
            }
        } else {
            let create = state
                .first()
                .filter(|p| p.is("m.room.create", ""))
                .ok_or_else(|| ApiError::bad_status("the room's state has no create event"))?;
            let mut room = super::Room {
                room_id: room_id.to_string(),
                version: v.id.to_string(),
                ..super::Room::default()
            };
            room.creators = super::creators_of(&super::Event::from_pdu(0, create, None));
            self.rooms.insert(room_id.to_string(), room);
            self.put_room_meta(batch, room_id);
        }
        let in_state: BTreeSet<String> = state.iter().map(|p| p.event_id.clone()).collect();
        for p in chain {
            if !in_state.contains(&p.event_id) && self.event_pos(&p.event_id).is_none() {
                self.record_hidden(batch, p, "auth chain");
            }
        }
        for p in state {
            if self.event_pos(&p.event_id).is_none() {
                self.record_outlier(batch, p);
            }
        }
        let joiner = join.sender.clone();
        let join_id = join.event_id.clone();
        let missing: Vec<String> = join
            .prev_events
            .iter()
            .filter(|id| self.event_pos(id).is_none())
            .cloned()
            .collect();
        let (pos, _) = self.record_event(batch, join, None);
        if !missing.is_empty() {
            // The history before the join is fetched when a client pages back to it.
            self.keep_backfill(batch, room_id, pos, Vec::new(), missing);
        }
        if known {
            // An extremities record of before would outlive the clearing above.
            batch.put("extremities", room_id.to_string(), &json!([join_id]));
        }
        if self
            .remote_memberships
            .get(&joiner)
            .is_some_and(|r| r.contains_key(room_id))
        {
            self.put_remote_membership(batch, &joiner, room_id, None);
        }
        Ok(pos)
    }

    /// Keeps a state event received outside the timeline (the state of a room joined over
    /// federation): part of the room's state at its position, not shown as a timeline event.
    fn record_outlier(&mut self, batch: &mut Batch, pdu: Pdu) {
        let ev = self.record_row(batch, &pdu, true);
        batch.put("outlier", ev.pos.to_string(), &json!(true));
        if let Some(room) = self.rooms.get_mut(&ev.room_id) {
            if let Some(user) = room.apply_state(&ev, Arc::new(pdu)) {
                self.user_rooms
                    .entry(user)
                    .or_default()
                    .insert(ev.room_id.clone());
            }
        }
        self.cache.put(Arc::new(ev));
    }

    /// Keeps an event that is part of the room's graph but not shown to clients nor part of
    /// its state or extremities (soft-failed, or a redaction withheld): other servers may
    /// still fetch it, and later events may cite it.
    fn record_hidden(&mut self, batch: &mut Batch, pdu: Pdu, why: &str) {
        let ev = self.record_row(batch, &pdu, false);
        batch.put("hidden", ev.pos.to_string(), &json!(why));
        self.cache.put(Arc::new(ev));
    }

    /// The state after each of `events` (each as it saw it: [`Room::state_after`]), resolved
    /// by the room version's algorithm when they differ: (type, state key) -> position and PDU.
    fn state_after_events(&self, room_id: &str, events: &[String]) -> Result<Resolved, String> {
        let room = self.room(room_id).map_err(|e| e.message)?;
        let v = room.room_version();
        let mut pdus: HashMap<String, Pdu> = HashMap::new();
        let mut positions: HashMap<String, u64> = HashMap::new();
        let mut sets: Vec<StateMap> = Vec::new();
        for id in events {
            let pos = self
                .event_pos(id)
                .ok_or_else(|| format!("event {id} is unknown"))?;
            let mut set = StateMap::new();
            for (k, p) in room.state_after(pos) {
                let ev = self
                    .event(p)
                    .ok_or_else(|| format!("the state event at {p} cannot be read"))?;
                set.insert(k, ev.event_id.clone());
                if !pdus.contains_key(&ev.event_id) {
                    positions.insert(ev.event_id.clone(), p);
                    pdus.insert(ev.event_id.clone(), ev.to_pdu(v)?);
                }
            }
            sets.push(set);
        }
        let resolved = if sets.windows(2).all(|w| w[0] == w[1]) {
            sets.pop().unwrap_or_default()
        } else {
            // Resolution reads the conflicted events' auth chains.
            let ids: Vec<String> = pdus.keys().cloned().collect();
            for p in self.auth_chain(room_id, &ids) {
                pdus.entry(p.event_id.clone()).or_insert(p);
            }
            state_res::resolve(v, &sets, &pdus).map_err(|e| e.to_string())?
        };
        Ok(resolved
            .into_iter()
            .filter_map(|(k, id)| {
                let pos = match positions.get(&id) {
                    Some(p) => *p,
                    None => self.event_pos(&id)?,
                };
                pdus.remove(&id).map(|p| (k, (pos, p)))
            })
            .collect())
    }

    /// Keeps the state just after the event at `at`, which did not extend the current state.
    fn keep_branch_state(
        &mut self,
        batch: &mut Batch,
        room_id: &str,
        at: u64,
        after: super::room::StatePositions,
    ) {
        let record = super::records::BranchStateRecord {
            room: room_id.to_string(),
            state: after
                .iter()
                .map(|((k, s), p)| (k.clone(), s.clone(), *p))
                .collect(),
        };
        batch.put_record(at.to_string(), &record);
        if let Some(room) = self.rooms.get_mut(room_id) {
            room.branch_state.insert(at, Arc::new(after));
        }
    }

    /// After an event that did not extend the current state (`at`, with the state just after
    /// it as it saw it): that state kept as its branch's, and the room's current state made
    /// the resolution of the states after its forward extremities, each key that differs from
    /// what the stream gave logged at `at`.
    fn resolve_after_fork(
        &mut self,
        batch: &mut Batch,
        room_id: &str,
        at: u64,
        after: super::room::StatePositions,
    ) -> Result<(), String> {
        self.keep_branch_state(batch, room_id, at, after);
        let extremities: Vec<String> = self
            .room(room_id)
            .map_err(|e| e.message)?
            .extremities
            .iter()
            .map(|e| e.event_id.clone())
            .collect();
        let target = self.state_after_events(room_id, &extremities)?;
        let room = self.room(room_id).map_err(|e| e.message)?;
        let mut changes: Vec<((String, String), Option<super::Current>)> = Vec::new();
        for k in room.state.keys() {
            if !target.contains_key(k) {
                changes.push((k.clone(), None));
            }
        }
        // The PDUs are as the server reads them (redacted, if they were).
        for (k, (pos, pdu)) in target {
            if room.state.get(&k).map(|c| c.pos) != Some(pos) {
                let pdu = Arc::new(pdu);
                changes.push((k, Some(super::Current { pos, pdu })));
            }
        }
        if changes.is_empty() {
            return Ok(());
        }
        let record = super::records::StateFixRecord {
            room: room_id.to_string(),
            set: changes
                .iter()
                .map(|((k, s), c)| (k.clone(), s.clone(), c.as_ref().map_or(0, |c| c.pos)))
                .collect(),
        };
        batch.put_record(at.to_string(), &record);
        let users = self
            .rooms
            .get_mut(room_id)
            .map(|r| r.set_state(at, changes))
            .unwrap_or_default();
        for u in users {
            self.user_rooms
                .entry(u)
                .or_default()
                .insert(room_id.to_string());
        }
        Ok(())
    }
}

/// A server ACL glob: `*` any run of characters, `?` one; ASCII case ignored.
fn glob_matches(glob: &str, name: &str) -> bool {
    let (g, n): (Vec<char>, Vec<char>) = (
        glob.to_ascii_lowercase().chars().collect(),
        name.to_ascii_lowercase().chars().collect(),
    );
    // Iterative matching with one backtrack point for the latest `*`.
    let (mut gi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if gi < g.len() && (g[gi] == '?' || g[gi] == n[ni]) {
            gi += 1;
            ni += 1;
        } else if gi < g.len() && g[gi] == '*' {
            star = Some((gi, ni));
            gi += 1;
        } else if let Some((sg, sn)) = star {
            gi = sg + 1;
            ni = sn + 1;
            star = Some((sg, sn + 1));
        } else {
            return false;
        }
    }
    g[gi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod acl_tests {
    use super::glob_matches;

    #[test]
    fn server_acl_globs() {
        assert!(glob_matches("*", "example.org"));
        assert!(glob_matches("*.example.org", "a.example.org"));
        assert!(!glob_matches("*.example.org", "example.org"));
        assert!(glob_matches("ex?mple.org", "EXAMPLE.org"));
        assert!(!glob_matches("ex?mple.org", "exmple.org"));
        assert!(glob_matches("a*b*c", "axxbyyc"));
        assert!(!glob_matches("a*b*c", "axxbyy"));
        assert!(glob_matches("", "") && !glob_matches("", "a"));
    }
}
