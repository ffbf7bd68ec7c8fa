//! Events and rooms as a given user sees them: the client format with its unsigned data and
//! aggregations, history visibility, and power levels.

use std::sync::Arc;

use serde_json::{json, Value};

use super::{now_ms, Event, Room, State};

impl State {
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
        // History backfilled from other servers is older than its anchor: it is seen as at
        // just before the anchor (the state of the events themselves is not kept).
        let pos = room
            .backfilled_anchor
            .get(&pos)
            .map_or(pos, |anchor| anchor.saturating_sub(1));
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
