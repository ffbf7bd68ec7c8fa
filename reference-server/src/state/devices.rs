//! Changes to users' devices and keys, and whose device lists a user should look at again.

use std::collections::BTreeSet;

use serde_json::json;

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
}
