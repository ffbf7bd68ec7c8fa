//! Start-up: the state rebuilt from the database's records and the rooms' state events (the
//! history itself is not replayed).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::{json, Value};

use super::{creators_of, Device, Event, Receipt, Room, State, Threepid, ThreepidSession, User};
use crate::store::Loaded;

impl State {
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
            last = last.max(pos);
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
}
