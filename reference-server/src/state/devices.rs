//! Changes to users' devices and keys, and whose device lists a user should look at again.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use super::State;
use crate::store::Batch;

impl State {
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
        self.device_list_changes_among(user, &self.room_peers(user), from, to)
    }

    /// [`State::device_list_changes`] with the user's room peers already known.
    pub fn device_list_changes_among(
        &self,
        user: &str,
        peers: &BTreeSet<&str>,
        from: u64,
        to: u64,
    ) -> (Vec<String>, Vec<String>) {
        let present = |m: Option<&str>| matches!(m, Some("join" | "invite" | "knock"));
        let mut changed: BTreeSet<String> = peers
            .iter()
            .filter(|u| {
                self.key_changes
                    .get(**u)
                    .is_some_and(|p| *p > from && *p <= to)
            })
            .map(|u| u.to_string())
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
        let left: Vec<String> = gone
            .into_iter()
            .filter(|u| !peers.contains(u.as_str()))
            .collect();
        // The user's own changes are listed too: their other devices must learn of a new
        // device or new cross-signing keys.
        let changed = changed.into_iter().filter(|u| !left.contains(u)).collect();
        (changed, left)
    }

    /// Users who share a joined room with `user` (the user included).
    pub fn room_peers<'a>(&'a self, user: &'a str) -> BTreeSet<&'a str> {
        let mut out = BTreeSet::new();
        out.insert(user);
        for room_id in self.user_rooms.get(user).into_iter().flatten() {
            if let Some(room) = self.rooms.get(room_id) {
                if room.membership(user) == Some("join") {
                    out.extend(room.joined().map(String::as_str));
                }
            }
        }
        out
    }

    /// Keeps a device's signed keys and marks the user's keys changed.
    pub fn put_device_keys(&mut self, batch: &mut Batch, user: &str, device: &str, keys: Value) {
        self.device_keys
            .insert((user.to_string(), device.to_string()), keys.clone());
        self.note_key_change(batch, user);
        self.emit_device_update(user, device, false);
        batch.put_record(
            format!("{user}\u{0}{device}"),
            &super::records::DeviceKeysRecord {
                keys,
                pos: self.pos,
            },
        );
    }

    /// Keeps a user's cross-signing keys (`master_key`, `self_signing_key`,
    /// `user_signing_key`) and marks the user's keys changed.
    pub fn put_cross_signing(&mut self, batch: &mut Batch, user: &str, all: Value) {
        batch.put("cross_signing", user, &all);
        if self.is_local(user) {
            // Other servers are told of the master and self-signing keys (never the
            // user-signing key, which is the user's own business).
            let mut content = json!({"user_id": user});
            for k in ["master_key", "self_signing_key"] {
                if let Some(v) = all.get(k) {
                    content[k] = v.clone();
                }
            }
            self.emit_edu(
                super::EduTarget::UserRooms(user.to_string()),
                "m.signing_key_update",
                content,
            );
        }
        self.cross_signing.insert(user.to_string(), all);
        self.note_key_change(batch, user);
    }

    /// Adds a one-time key, in upload order (claims take the oldest).
    pub fn add_one_time_key(
        &mut self,
        batch: &mut Batch,
        user: &str,
        device: &str,
        id: &str,
        key: Value,
    ) {
        let seq = self.next_pos(batch);
        batch.put_record(
            format!("{user}\u{0}{device}\u{0}{id}"),
            &super::records::OneTimeKeyRecord {
                seq,
                key: key.clone(),
            },
        );
        self.one_time_keys
            .entry((user.to_string(), device.to_string()))
            .or_default()
            .insert(id.to_string(), (seq, key));
    }

    /// Takes a one-time key out (a claim).
    pub fn take_one_time_key(
        &mut self,
        batch: &mut Batch,
        user: &str,
        device: &str,
        id: &str,
    ) -> Option<Value> {
        let v = self
            .one_time_keys
            .get_mut(&(user.to_string(), device.to_string()))
            .and_then(|m| m.remove(id));
        batch.delete("otk", format!("{user}\u{0}{device}\u{0}{id}"));
        v.map(|(_, k)| k)
    }

    /// Sets a fallback key, replacing the device's fallback key of the same algorithm.
    pub fn put_fallback_key(
        &mut self,
        batch: &mut Batch,
        user: &str,
        device: &str,
        id: &str,
        key: Value,
    ) {
        let dev = (user.to_string(), device.to_string());
        let alg = id.split(':').next().unwrap_or("");
        let old: Vec<String> = self
            .fallback_keys
            .get(&dev)
            .map(|m| {
                m.keys()
                    .filter(|k| k.split(':').next() == Some(alg))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for o in old {
            batch.delete("fallback", format!("{user}\u{0}{device}\u{0}{o}"));
            if let Some(m) = self.fallback_keys.get_mut(&dev) {
                m.remove(&o);
            }
            self.fallback_used
                .remove(&(user.to_string(), device.to_string(), o));
        }
        batch.put("fallback", format!("{user}\u{0}{device}\u{0}{id}"), &key);
        self.fallback_keys
            .entry(dev)
            .or_default()
            .insert(id.to_string(), key);
    }

    /// Queues a to-device message for a device, at the next stream position.
    pub fn queue_to_device(&mut self, batch: &mut Batch, user: &str, device: &str, msg: Value) {
        let pos = self.next_pos(batch);
        batch.put("to_device", format!("{user}\u{0}{device}\u{0}{pos}"), &msg);
        self.to_device
            .entry((user.to_string(), device.to_string()))
            .or_default()
            .push((pos, msg));
    }

    /// Drops a device's to-device messages up to `upto` (the device has received them).
    pub fn ack_to_device(&mut self, batch: &mut Batch, user: &str, device: &str, upto: u64) {
        if let Some(q) = self
            .to_device
            .get_mut(&(user.to_string(), device.to_string()))
        {
            for (p, _) in q.iter().filter(|(p, _)| *p <= upto) {
                batch.delete("to_device", format!("{user}\u{0}{device}\u{0}{p}"));
            }
            q.retain(|(p, _)| *p > upto);
        }
    }
}
