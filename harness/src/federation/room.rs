//! A fake homeserver's view of a room it takes part in: every event it knows, the state after
//! each, its forward extremities and what it rejected; events it makes are built on them with
//! the room-version core, and events it receives are checked before they count.

use std::collections::HashMap;

use mxconform_pdu::auth::{self, AuthState};
use mxconform_pdu::build::{self, NewEvent, Origin};
use mxconform_pdu::state_res::{self, EventSource, StateMap};
use mxconform_pdu::{hash, Pdu, RoomVersion};

/// One room as a fake server sees it.
#[derive(Debug)]
pub struct RoomView {
    pub version: &'static RoomVersion,
    pub room_id: String,
    pub events: HashMap<String, Pdu>,
    /// The state after each accepted event.
    after: HashMap<String, StateMap>,
    /// Events that head the room's history (no known child).
    pub extremities: Vec<String>,
    /// Rejected events, with the rule that rejected them.
    pub rejected: HashMap<String, String>,
}

impl EventSource for RoomView {
    fn event(&self, id: &str) -> Option<&Pdu> {
        self.events.get(id)
    }
    fn rejected(&self, id: &str) -> bool {
        self.rejected.contains_key(id)
    }
}

/// A state map read as the state the rules check against.
pub struct StateOf<'a> {
    pub room: &'a RoomView,
    pub state: &'a StateMap,
}

impl AuthState for StateOf<'_> {
    fn get(&self, kind: &str, state_key: &str) -> Option<&Pdu> {
        let id = self.state.get(&(kind.to_string(), state_key.to_string()))?;
        self.room.events.get(id)
    }
}

impl RoomView {
    /// The room after a join: the state before the join (from the join response), the auth
    /// chain, and the join itself.
    pub fn from_join(
        version: &'static RoomVersion,
        room_id: &str,
        state: Vec<Pdu>,
        auth_chain: Vec<Pdu>,
        join: Pdu,
    ) -> RoomView {
        let mut room = RoomView {
            version,
            room_id: room_id.to_string(),
            events: HashMap::new(),
            after: HashMap::new(),
            extremities: Vec::new(),
            rejected: HashMap::new(),
        };
        let mut before = StateMap::new();
        for e in auth_chain.into_iter().chain(state.iter().cloned()) {
            room.events.insert(e.event_id.clone(), e);
        }
        for e in &state {
            if let Some(k) = &e.state_key {
                before.insert((e.kind.clone(), k.clone()), e.event_id.clone());
            }
        }
        // The answer's state is the state before the join: the resolved state after its prev
        // events, which is all a joining server knows of them.
        for prev in &join.prev_events {
            room.after.insert(prev.clone(), before.clone());
        }
        let mut after = before;
        if let Some(k) = &join.state_key {
            after.insert((join.kind.clone(), k.clone()), join.event_id.clone());
        }
        room.after.insert(join.event_id.clone(), after);
        room.extremities = vec![join.event_id.clone()];
        room.events.insert(join.event_id.clone(), join);
        room
    }

    /// A room the fake server creates, in `version`: `creator` (a user of `origin`) makes the
    /// create event, joins, and sends the power levels (the creator at 100; from version 12
    /// creators need no entry), then each of `state` in order (join rules, history visibility,
    /// names, further members ...). A room id before version 12 is `!<random>:<server>`; from
    /// 12 it is the create event's reference hash.
    pub fn create(
        version: &'static RoomVersion,
        origin: Origin<'_>,
        creator: &str,
        room_type: Option<&str>,
        state: Vec<NewEvent>,
        ts: i64,
    ) -> Result<RoomView, String> {
        static ROOMS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = ROOMS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let room_id = format!("!r{ts}x{n}:{}", origin.server_name);
        let mut room = RoomView {
            version,
            room_id,
            events: HashMap::new(),
            after: HashMap::new(),
            extremities: Vec::new(),
            rejected: HashMap::new(),
        };
        let mut create_content = serde_json::json!({"room_version": version.id});
        if !version.room_id_is_create {
            create_content["creator"] = serde_json::json!(creator);
        }
        if let Some(t) = room_type {
            create_content["type"] = serde_json::json!(t);
        }
        let mut users = serde_json::Map::new();
        if !version.room_id_is_create {
            users.insert(creator.to_string(), serde_json::json!(100));
        }
        let first = [
            NewEvent::new("m.room.create", Some(""), creator, create_content, ts),
            NewEvent::new(
                "m.room.member",
                Some(creator),
                creator,
                serde_json::json!({"membership": "join"}),
                ts + 1,
            ),
            NewEvent::new(
                "m.room.power_levels",
                Some(""),
                creator,
                serde_json::json!({"users": users, "users_default": 0, "events_default": 0,
                    "state_default": 50, "ban": 50, "kick": 50, "redact": 50, "invite": 0}),
                ts + 2,
            ),
        ];
        for (n, new) in first.into_iter().chain(state).enumerate() {
            let what = format!("{} ({:?})", new.kind, new.state_key);
            let mut new = new;
            new.origin_server_ts = ts + n as i64;
            let pdu = room.build(new, origin)?;
            if n == 0 {
                room.room_id = pdu.room_id.clone();
            }
            room.add(pdu)
                .map_err(|e| format!("creating the room, event {n} {what}: {e}"))?;
        }
        Ok(room)
    }

    /// The state before an event with these prev events: the resolution of their states.
    pub fn state_before(&self, prev: &[String]) -> Result<StateMap, String> {
        let sets: Vec<StateMap> = prev
            .iter()
            .filter_map(|p| self.after.get(p).cloned())
            .collect();
        if prev.is_empty() {
            // The create event: nothing before it.
            return Ok(StateMap::new());
        }
        match sets.len() {
            0 => Err(format!(
                "none of the prev events {prev:?} has a state known to this server"
            )),
            1 => Ok(sets.into_iter().next().unwrap_or_default()),
            _ => state_res::resolve(self.version, &sets, self).map_err(|e| e.to_string()),
        }
    }

    /// The room's current state: the resolution of its extremities' states.
    pub fn current_state(&self) -> Result<StateMap, String> {
        self.state_before(&self.extremities)
    }

    /// The state an invite or knock carries to identify the room: the current create, join
    /// rules, name, avatar, topic, canonical alias and encryption events, as full PDUs
    /// (the spec requires the create event, formatted as the room version says, from v1.16).
    /// The room's Policy Server as its current state names it: (server name, public key).
    pub fn policy_server(&self) -> Option<(String, String)> {
        let state = self.current_state().ok()?;
        let id = state.get(&("m.room.policy".to_string(), String::new()))?;
        let content = self.events.get(id)?.content();
        let via = content.get("via")?.as_str()?.to_string();
        let key = content
            .get("public_keys")?
            .get("ed25519")?
            .as_str()?
            .to_string();
        Some((via, key))
    }

    pub fn stripped_state(&self) -> Vec<serde_json::Value> {
        const TYPES: [&str; 7] = [
            "m.room.create",
            "m.room.join_rules",
            "m.room.name",
            "m.room.avatar",
            "m.room.topic",
            "m.room.canonical_alias",
            "m.room.encryption",
        ];
        let state = self.current_state().unwrap_or_default();
        TYPES
            .iter()
            .filter_map(|t| state.get(&(t.to_string(), String::new())))
            .filter_map(|id| self.events.get(id))
            .map(|p| p.json.clone())
            .collect()
    }

    /// Keeps an event the fake server fetched (state, history): known, without changing the
    /// room's extremities or state.
    pub fn learn(&mut self, pdu: Pdu) {
        self.events.entry(pdu.event_id.clone()).or_insert(pdu);
    }

    /// A new event on the extremities, as `origin` makes it.
    pub fn build(&self, new: NewEvent, origin: Origin<'_>) -> Result<Pdu, String> {
        self.build_on(new, origin, None)
    }

    /// A new event on `prev` (default: the extremities), with the state before it as its auth
    /// events: how a fake server forks the room's history.
    pub fn build_on(
        &self,
        new: NewEvent,
        origin: Origin<'_>,
        prev: Option<&[String]>,
    ) -> Result<Pdu, String> {
        let prev_ids: Vec<String> =
            prev.map_or_else(|| self.extremities.clone(), <[String]>::to_vec);
        let state = self.state_before(&prev_ids)?;
        let prev: Vec<&Pdu> = prev_ids
            .iter()
            .map(|id| {
                self.events
                    .get(id)
                    .ok_or_else(|| format!("prev event {id} is not known to the fake server"))
            })
            .collect::<Result<_, _>>()?;
        build::build(
            self.version,
            &self.room_id,
            new,
            &prev,
            &StateOf {
                room: self,
                state: &state,
            },
            origin,
        )
        .map_err(|e| e.to_string())
    }

    /// Takes an event into the room: authorized by its auth events and by the state before
    /// it (the rule that refuses it, otherwise). A rejected event is kept, marked rejected.
    pub fn add(&mut self, pdu: Pdu) -> Result<(), String> {
        let id = pdu.event_id.clone();
        let outcome = self.authorize(&pdu);
        let before = self.state_before(&pdu.prev_events).unwrap_or_default();
        let mut after = before;
        if outcome.is_ok() {
            if let Some(k) = &pdu.state_key {
                after.insert((pdu.kind.clone(), k.clone()), id.clone());
            }
        } else if let Err(why) = &outcome {
            self.rejected.insert(id.clone(), why.clone());
        }
        // A rejected event leaves the extremities as they were: new events build on what
        // the room accepted.
        if outcome.is_ok() {
            self.extremities.retain(|e| !pdu.prev_events.contains(e));
            self.extremities.push(id.clone());
        }
        self.after.insert(id.clone(), after);
        self.events.insert(id, pdu);
        outcome
    }

    /// Step 4 of the checks on receipt: by the event's auth events.
    pub fn authorize_by_auth_events(&self, pdu: &Pdu) -> Result<(), String> {
        let auth: Vec<Option<&Pdu>> = pdu.auth_events.iter().map(|a| self.events.get(a)).collect();
        let create = self.events.get(&hash::create_id_of_room(&pdu.room_id));
        auth::authorize_by_auth_events(
            self.version,
            pdu,
            &auth,
            &|e| self.rejected.contains_key(&e.event_id),
            create,
            &|_| true,
        )
        .map_err(|r| format!("{} ({}) by its auth events: {r}", pdu.event_id, pdu.kind))
    }

    /// The checks of steps 4 and 5 on receipt: by the event's auth events, then by the state
    /// before it.
    pub fn authorize(&self, pdu: &Pdu) -> Result<(), String> {
        let auth: Vec<Option<&Pdu>> = pdu.auth_events.iter().map(|a| self.events.get(a)).collect();
        let create = self.events.get(&hash::create_id_of_room(&pdu.room_id));
        auth::authorize_by_auth_events(
            self.version,
            pdu,
            &auth,
            &|e| self.rejected.contains_key(&e.event_id),
            create,
            &|_| true,
        )
        .map_err(|r| format!("{} by its auth events: {r}", pdu.event_id))?;
        let before = self.state_before(&pdu.prev_events)?;
        auth::authorize(
            self.version,
            pdu,
            &StateOf {
                room: self,
                state: &before,
            },
            &|_| true,
        )
        .map_err(|r| format!("{} by the state before it: {r}", pdu.event_id))
    }
}

impl RoomView {
    /// The auth chain of `ids` (their auth events, recursively), oldest first by depth.
    pub fn auth_chain(&self, ids: &[String]) -> Vec<&Pdu> {
        let mut seen = std::collections::HashSet::new();
        let mut stack: Vec<&str> = ids
            .iter()
            .filter_map(|id| self.events.get(id))
            .flat_map(|e| e.auth_events.iter().map(String::as_str))
            .collect();
        let mut out = Vec::new();
        while let Some(id) = stack.pop() {
            if !seen.insert(id) {
                continue;
            }
            if let Some(e) = self.events.get(id) {
                stack.extend(e.auth_events.iter().map(String::as_str));
                out.push(e);
            }
        }
        out.sort_by_key(|e| e.depth);
        out
    }

    /// The state before `event_id`, as event ids.
    pub fn state_ids_at(&self, event_id: &str) -> Option<Vec<String>> {
        let e = self.events.get(event_id)?;
        let before = self.state_before(&e.prev_events).ok()?;
        Some(before.into_values().collect())
    }

    /// Walks `prev_events` back from `from` (included), breadth first, stopping at `stop`
    /// (excluded) and after `limit` events.
    pub fn walk_back(&self, from: &[String], stop: &[String], limit: usize) -> Vec<&Pdu> {
        let mut out = Vec::new();
        let mut seen: std::collections::HashSet<&str> = stop.iter().map(String::as_str).collect();
        let mut queue: std::collections::VecDeque<&str> = from.iter().map(String::as_str).collect();
        while let Some(id) = queue.pop_front() {
            if out.len() >= limit || !seen.insert(id) {
                continue;
            }
            if let Some(e) = self.events.get(id) {
                out.push(e);
                queue.extend(e.prev_events.iter().map(String::as_str));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mxconform_pdu::SigningKey;

    #[test]
    fn a_rejected_event_leaves_the_extremities_and_state_as_they_were() {
        let key = SigningKey::generate(Some("k")).unwrap();
        let origin = Origin {
            server_name: "fake.test",
            key: &key,
        };
        let v = RoomVersion::get("10").unwrap();
        let mut room = RoomView::create(v, origin, "@a:fake.test", None, Vec::new(), 1000).unwrap();
        let before = room.extremities.clone();
        let state = room.current_state().unwrap();
        assert_eq!(before.len(), 1);
        // A user who never joined cannot send: the rules reject it.
        let stranger = NewEvent::new(
            "m.room.topic",
            Some(""),
            "@stranger:fake.test",
            serde_json::json!({"topic": "x"}),
            2000,
        );
        let pdu = room.build(stranger, origin).unwrap();
        let id = pdu.event_id.clone();
        assert!(room.add(pdu).is_err());
        assert!(room.rejected.contains_key(&id));
        assert_eq!(room.extremities, before, "built on what the room accepted");
        assert_eq!(room.current_state().unwrap(), state);
        // The next event builds on the accepted extremity, not on the rejected one.
        let next = NewEvent::new(
            "m.room.topic",
            Some(""),
            "@a:fake.test",
            serde_json::json!({"topic": "y"}),
            3000,
        );
        let pdu = room.build(next, origin).unwrap();
        assert_eq!(pdu.prev_events, before);
        room.add(pdu).unwrap();
        assert_eq!(room.extremities.len(), 1);
    }

    #[test]
    fn stripped_state_carries_the_create_event_as_a_full_pdu() {
        let key = SigningKey::generate(Some("k")).unwrap();
        let origin = Origin {
            server_name: "fake.test",
            key: &key,
        };
        let v = RoomVersion::get("12").unwrap();
        let join_rules = NewEvent::new(
            "m.room.join_rules",
            Some(""),
            "@a:fake.test",
            serde_json::json!({"join_rule": "public"}),
            0,
        );
        let room =
            RoomView::create(v, origin, "@a:fake.test", None, vec![join_rules], 1000).unwrap();
        let stripped = room.stripped_state();
        let kinds: Vec<&str> = stripped
            .iter()
            .filter_map(|e| e.get("type").and_then(serde_json::Value::as_str))
            .collect();
        assert_eq!(kinds, ["m.room.create", "m.room.join_rules"]);
        assert!(stripped[0].get("signatures").is_some() && stripped[0].get("hashes").is_some());
    }
}
