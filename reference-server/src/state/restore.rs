//! Start-up: the state rebuilt from the database's records and the rooms' state events (the
//! history itself is not replayed).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::Value;

use super::records::{
    read, AccountDataRecord, AliasRecord, BackfillRecord, BackupRecord, BranchStateRecord,
    DeviceKeysRecord, DeviceRecord, OneTimeKeyRecord, PresenceRecord, ReceiptRecord, RoomRecord,
    StateFixRecord, ThreepidRecord, UserRecord,
};
use super::{creators_of, Device, Event, Receipt, Room, State, Threepid, ThreepidSession, User};
use crate::store::Loaded;

impl State {
    /// Rebuilds the state from what the database holds.
    pub fn restore(&mut self, loaded: Loaded) -> Result<(), String> {
        // Records first (users, rooms' metadata), then events in stream order.
        let mut rooms_meta: Vec<(String, RoomRecord)> = Vec::new();
        let mut forgotten: Vec<(String, String)> = Vec::new();
        let mut forked: HashMap<String, Vec<String>> = HashMap::new();
        let mut hidden: BTreeSet<u64> = BTreeSet::new();
        // State events received outside the timeline: state, but not timeline events.
        let mut outliers: BTreeSet<u64> = BTreeSet::new();
        // Where forks met: the branches' states, and the keys resolution set, by position.
        let mut branches: Vec<(u64, BranchStateRecord)> = Vec::new();
        let mut fixes: BTreeMap<u64, StateFixRecord> = BTreeMap::new();
        // History fetched from other servers, by anchor: shown by /messages, not the timeline.
        let mut backfills: Vec<(u64, BackfillRecord)> = Vec::new();
        let mut backfilled: BTreeSet<u64> = BTreeSet::new();
        for (kind, key, v) in loaded.records {
            let parts: Vec<&str> = key.split('\u{0}').collect();
            let pair = |i: usize, j: usize| (parts[i].to_string(), parts[j].to_string());
            match kind.as_str() {
                "meta" if key == "pos" => self.pos = self.pos.max(v.as_u64().unwrap_or(0)),
                "user" => {
                    let r: UserRecord = read(&key, v)?;
                    self.users.insert(key.clone(), User::from_record(&key, r));
                }
                "device" if parts.len() == 2 => {
                    let r: DeviceRecord = read(&key, v)?;
                    let who = pair(0, 1);
                    if !r.token.is_empty() {
                        self.tokens.insert(r.token.clone(), who.clone());
                    }
                    for t in r.refresh.iter().chain(r.prev_refresh.iter()) {
                        self.refresh_tokens.insert(t.clone(), who.clone());
                    }
                    let device = Device {
                        display_name: r.display_name,
                        last_seen_ts: r.last_seen_ts,
                        token: r.token,
                        refresh: r.refresh,
                        prev_refresh: r.prev_refresh,
                    };
                    self.devices.entry(who.0).or_default().insert(who.1, device);
                }
                "account_data" if parts.len() == 3 => {
                    let r: AccountDataRecord = read(&key, v)?;
                    self.account_data.insert(
                        (parts[0].into(), parts[1].into(), parts[2].into()),
                        (r.content, r.pos),
                    );
                }
                "filter" if parts.len() == 2 => {
                    self.filters.insert(pair(0, 1), v);
                }
                "alias" => {
                    let r: AliasRecord = read(&key, v)?;
                    self.aliases.insert(key.clone(), (r.room_id, r.creator));
                }
                "room" => {
                    let r: RoomRecord = read(&key, v)?;
                    rooms_meta.push((key.clone(), r));
                }
                "forgotten" if parts.len() == 2 => forgotten.push(pair(0, 1)),
                "receipt" if parts.len() == 3 || parts.len() == 4 => {
                    let r: ReceiptRecord = read(&key, v)?;
                    let (room, rtype) = (parts[0], parts[1]);
                    // The inner key: the user, and the thread for a threaded receipt.
                    let user = parts[2..].join("\u{0}");
                    let receipt: Receipt = (r.event_id, r.ts, r.thread_id);
                    let entry = self.receipts.entry(room.to_string()).or_default();
                    entry
                        .0
                        .entry(rtype.to_string())
                        .or_default()
                        .insert(user, receipt);
                    entry.1 = entry.1.max(r.pos);
                }
                "device_keys" if parts.len() == 2 => {
                    let r: DeviceKeysRecord = read(&key, v)?;
                    self.device_keys.insert(pair(0, 1), r.keys);
                    let e = self.key_changes.entry(parts[0].to_string()).or_default();
                    *e = (*e).max(r.pos);
                }
                "hidden" => {
                    hidden.insert(key.parse().map_err(|_| {
                        format!("the hidden-event record {key:?} is not a position")
                    })?);
                }
                "remote_membership" if parts.len() == 2 => {
                    let m: super::RemoteMembership = serde_json::from_value(v).map_err(|e| {
                        format!("the remote membership record {key:?} is malformed: {e}")
                    })?;
                    self.remote_memberships
                        .entry(parts[0].to_string())
                        .or_default()
                        .insert(parts[1].to_string(), m);
                }
                "branch_state" | "state_fix" => {
                    let at: u64 = key
                        .parse()
                        .map_err(|_| format!("the {kind} record {key:?} is not a position"))?;
                    if kind == "state_fix" {
                        let r: StateFixRecord = read(&key, v)?;
                        fixes.insert(at, r);
                    } else {
                        let r: BranchStateRecord = read(&key, v)?;
                        branches.push((at, r));
                    }
                }
                "backfill" => {
                    let at: u64 = key
                        .parse()
                        .map_err(|_| format!("the backfill record {key:?} is not a position"))?;
                    let r: BackfillRecord = read(&key, v)?;
                    backfilled.extend(r.events.iter().copied());
                    backfills.push((at, r));
                }
                "outlier" => {
                    outliers
                        .insert(key.parse().map_err(|_| {
                            format!("the outlier record {key:?} is not a position")
                        })?);
                }
                "extremities" => {
                    let ids: Vec<String> = serde_json::from_value(v).map_err(|e| {
                        format!("the extremities record of {key} is malformed: {e}")
                    })?;
                    forked.insert(key.clone(), ids);
                }
                "fed_edu" if parts.len() == 2 => {
                    let seq: u64 = parts[1].parse().map_err(|_| {
                        format!("the kept EDU record {key:?} has no sequence number")
                    })?;
                    self.edu_seq = self.edu_seq.max(seq);
                    self.undelivered_edus.push((parts[0].to_string(), seq, v));
                }
                "fed_acked" => {
                    self.federation_acked
                        .insert(key.clone(), v.as_u64().unwrap_or(0));
                }
                "push_pos" => self.push_pos = v.as_u64(),
                "as_pos" => {
                    self.appservice_pos
                        .insert(key.clone(), v.as_u64().unwrap_or(0));
                }
                "3pid_session" => {
                    let sess: ThreepidSession = read(&key, v)?;
                    self.threepid_sessions.insert(key.clone(), sess);
                }
                "id_server" if parts.len() == 3 => {
                    let servers: BTreeSet<String> = serde_json::from_value(v)
                        .map_err(|e| format!("the id_server record {key:?} is malformed: {e}"))?;
                    self.id_servers
                        .insert((parts[0].into(), parts[1].into(), parts[2].into()), servers);
                }
                "threepid" if parts.len() == 2 => {
                    let r: ThreepidRecord = read(&key, v)?;
                    self.threepids.insert(
                        pair(0, 1),
                        Threepid {
                            user_id: r.user_id,
                            added_at: r.added_at,
                            validated_at: r.validated_at,
                        },
                    );
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
                    // Early versions kept the bare key, without its upload sequence.
                    let (seq, k) = match read::<OneTimeKeyRecord>(&key, v.clone()) {
                        Ok(r) => (r.seq, r.key),
                        Err(_) => (0, v),
                    };
                    self.one_time_keys
                        .entry(pair(0, 1))
                        .or_default()
                        .insert(parts[2].to_string(), (seq, k));
                }
                "fallback" if parts.len() == 3 => {
                    self.fallback_keys
                        .entry(pair(0, 1))
                        .or_default()
                        .insert(parts[2].to_string(), v);
                }
                "presence" => {
                    let r: PresenceRecord = read(&key, v)?;
                    self.presence.insert(key.clone(), (r.content, r.pos));
                }
                "cross_signing" => {
                    self.cross_signing.insert(key.clone(), v);
                }
                "pusher" if parts.len() == 3 => {
                    self.pushers
                        .entry(parts[0].into())
                        .or_default()
                        .insert(pair(1, 2), v);
                }
                "backup" if parts.len() == 2 => {
                    let r: BackupRecord = read(&key, v)?;
                    let b = self.backup_entry(parts[0], parts[1]);
                    b.algorithm = r.algorithm;
                    b.auth_data = r.auth_data;
                    b.etag = r.etag;
                    b.deleted = r.deleted;
                }
                "backup_key" if parts.len() == 4 => {
                    self.backup_entry(parts[0], parts[1])
                        .keys
                        .insert(pair(2, 3), v);
                }
                "to_device" if parts.len() == 3 => {
                    let pos: u64 = parts[2].parse().unwrap_or(0);
                    self.to_device.entry(pair(0, 1)).or_default().push((pos, v));
                }
                _ => {}
            }
        }
        // The rooms from their state events alone (history is not replayed).
        let mut rooms: HashMap<String, Room> = HashMap::new();
        let mut user_rooms: HashMap<String, BTreeSet<String>> = HashMap::new();
        // Every state event by position, while fixes remain to apply (they may name events
        // that are not current, or soft-failed ones).
        let mut by_pos: HashMap<u64, Arc<mxconform_pdu::Pdu>> = HashMap::new();
        let apply_fixes = |rooms: &mut HashMap<String, Room>,
                           user_rooms: &mut HashMap<String, BTreeSet<String>>,
                           by_pos: &HashMap<u64, Arc<mxconform_pdu::Pdu>>,
                           at: u64,
                           StateFixRecord { room: room_id, set }: StateFixRecord|
         -> Result<(), String> {
            let Some(room) = rooms.get_mut(&room_id) else {
                return Ok(());
            };
            let mut changes = Vec::new();
            for (kind, key, pos) in set {
                let current = if pos == 0 {
                    None
                } else {
                    let pdu = by_pos.get(&pos).cloned().ok_or_else(|| {
                        format!("the state fix at {at} names {pos}, which is not a state event")
                    })?;
                    Some(super::Current { pos, pdu })
                };
                changes.push(((kind, key), current));
            }
            for u in room.set_state(at, changes) {
                user_rooms.entry(u).or_default().insert(room_id.clone());
            }
            Ok(())
        };
        self.store.state_events(|stored| {
            while let Some(entry) = fixes.first_entry() {
                if *entry.key() >= stored.pos {
                    break;
                }
                let (at, fix) = entry.remove_entry();
                apply_fixes(&mut rooms, &mut user_rooms, &by_pos, at, fix)?;
            }
            let keep = !fixes.is_empty();
            if hidden.contains(&stored.pos) && !keep {
                return Ok(());
            }
            let (ev, pdu) =
                Event::from_stored(stored, |room| rooms.get(room).map(|r| r.version.clone()))?;
            let pdu = Arc::new(pdu);
            if keep {
                by_pos.insert(ev.pos, pdu.clone());
            }
            if hidden.contains(&ev.pos) {
                return Ok(());
            }
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
                if let Some(user) = room.apply_state(&ev, pdu) {
                    user_rooms
                        .entry(user)
                        .or_default()
                        .insert(ev.room_id.clone());
                }
            }
            Ok(())
        })?;
        for (at, fix) in std::mem::take(&mut fixes) {
            apply_fixes(&mut rooms, &mut user_rooms, &by_pos, at, fix)?;
        }
        drop(by_pos);
        for (at, r) in branches {
            if let Some(room) = rooms.get_mut(&r.room) {
                let state = r.state.into_iter().map(|(k, s, p)| ((k, s), p)).collect();
                room.branch_state.insert(at, Arc::new(state));
            }
        }
        for (anchor, r) in backfills {
            if let Some(room) = rooms.get_mut(&r.room) {
                room.keep_backfill(anchor, r.events, r.missing);
            }
        }
        // Timelines, and each member's latest event, from one pass over the events' rows.
        let mut last = 0;
        self.store.timeline(|room_id, sender, pos| {
            last = last.max(pos);
            if hidden.contains(&pos) || outliers.contains(&pos) || backfilled.contains(&pos) {
                return;
            }
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
            let v = self.rooms[&room_id].room_version();
            // A room that forked (events from other servers) has its extremities recorded.
            let recorded: Vec<String> = forked.remove(&room_id).unwrap_or_default();
            let mut pdus = Vec::new();
            if recorded.len() > 1 {
                for id in &recorded {
                    let ev = self
                        .event_by_id(id)
                        .ok_or_else(|| format!("the extremity {id} of {room_id} cannot be read"))?;
                    pdus.push(Arc::new(ev.to_pdu(v)?));
                }
            } else {
                let ev = self.event(pos).ok_or_else(|| {
                    format!("the latest event of {room_id} (at {pos}) cannot be read")
                })?;
                pdus.push(Arc::new(ev.to_pdu(v)?));
            }
            if let Some(room) = self.rooms.get_mut(&room_id) {
                room.extremities = pdus;
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
                r.public = meta.public;
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

    /// The key backup version a `backup` or `backup_key` record belongs to (by user and the
    /// version as the key spells it), made empty if it is not known yet.
    fn backup_entry(&mut self, user: &str, version: &str) -> &mut super::Backup {
        let version: u64 = version.parse().unwrap_or(0);
        self.backups
            .entry(user.into())
            .or_default()
            .entry(version)
            .or_default()
    }
}
