//! Accounts: users, devices and their tokens, transaction ids, third-party identifiers and
//! account data.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::records::{AccountDataRecord, BackupRecord, DeviceRecord, ThreepidRecord, UserRecord};
use super::State;
use crate::store::Batch;

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

    fn to_record(&self) -> UserRecord {
        UserRecord {
            password_hash: self.password_hash.clone(),
            displayname: self.displayname.clone(),
            avatar_url: self.avatar_url.clone(),
            deactivated: self.deactivated,
            locked: self.locked,
            suspended: self.suspended,
            fields: self.fields.clone(),
        }
    }

    /// The account a `user` record describes.
    pub(super) fn from_record(user_id: &str, r: UserRecord) -> User {
        User {
            user_id: user_id.to_string(),
            password_hash: r.password_hash,
            displayname: r.displayname,
            avatar_url: r.avatar_url,
            deactivated: r.deactivated,
            locked: r.locked,
            suspended: r.suspended,
            fields: r.fields,
        }
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

/// A validation session: a token sent to an address, for one purpose (also its record,
/// `3pid_session`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ThreepidSession {
    pub client_secret: String,
    pub medium: String,
    pub address: String,
    pub token: String,
    /// `register`, `add` or `reset`.
    pub purpose: String,
    #[serde(default)]
    pub send_attempt: i64,
    /// When the token was submitted (ms), if it was.
    #[serde(default)]
    pub validated_at: Option<u64>,
    #[serde(default)]
    pub created_at: u64,
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

/// The record key of one session's key in a backup version.
fn backup_key_record(user: &str, version: u64, room: &str, session: &str) -> String {
    format!("{user}\u{0}{version}\u{0}{room}\u{0}{session}")
}

impl Backup {
    pub fn to_record(&self) -> BackupRecord {
        BackupRecord {
            algorithm: self.algorithm.clone(),
            auth_data: self.auth_data.clone(),
            etag: self.etag,
            deleted: self.deleted,
        }
    }
}

impl State {
    /// What a transaction id produced before (an event id, or "" for to-device sends).
    pub fn txn(&self, key: &(String, String, String)) -> Option<String> {
        let rec = format!("{}\u{0}{}\u{0}{}", key.0, key.1, key.2);
        self.store
            .record("txn", &rec)
            .ok()
            .flatten()
            .and_then(|v| v.as_str().map(str::to_string))
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

    /// Creates or changes a key backup version's description (algorithm, auth data, deleted);
    /// the keys it holds stay, except that a deleted version holds none.
    pub fn put_backup(
        &mut self,
        batch: &mut Batch,
        user: &str,
        version: u64,
        algorithm: String,
        auth_data: Value,
        deleted: bool,
    ) {
        let b = self
            .backups
            .entry(user.to_string())
            .or_default()
            .entry(version)
            .or_default();
        b.algorithm = algorithm;
        b.auth_data = auth_data;
        b.deleted = deleted;
        if deleted {
            for (room, session) in std::mem::take(&mut b.keys).keys() {
                batch.delete(
                    "backup_key",
                    backup_key_record(user, version, room, session),
                );
            }
        }
        batch.put_record(format!("{user}\u{0}{version}"), &b.to_record());
    }

    /// Changes the keys of a backup version: `Some` stores a session's key, `None` deletes it.
    /// The version's etag moves on once per call. Returns the version as it now is.
    pub fn put_backup_keys(
        &mut self,
        batch: &mut Batch,
        user: &str,
        version: u64,
        changes: Vec<(String, String, Option<Value>)>,
    ) -> &Backup {
        let b = self
            .backups
            .entry(user.to_string())
            .or_default()
            .entry(version)
            .or_default();
        for (room, session, data) in changes {
            let rec = backup_key_record(user, version, &room, &session);
            match data {
                Some(data) => {
                    batch.put("backup_key", rec, &data);
                    b.keys.insert((room, session), data);
                }
                None => {
                    batch.delete("backup_key", rec);
                    b.keys.remove(&(room, session));
                }
            }
        }
        b.etag += 1;
        batch.put_record(format!("{user}\u{0}{version}"), &b.to_record());
        b
    }

    pub fn put_threepid_session(&mut self, batch: &mut Batch, sid: &str, s: ThreepidSession) {
        batch.put_record(sid, &s);
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
                batch.put_record(
                    rec_key,
                    &ThreepidRecord {
                        user_id: b.user_id.clone(),
                        added_at: b.added_at,
                        validated_at: b.validated_at,
                    },
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
        batch.put_record(user.user_id.clone(), &user.to_record());
        self.users.insert(user.user_id.clone(), user);
    }

    pub fn put_device(&mut self, batch: &mut Batch, user: &str, device_id: &str, device: Device) {
        batch.put_record(
            format!("{user}\u{0}{device_id}"),
            &DeviceRecord {
                display_name: device.display_name.clone(),
                last_seen_ts: device.last_seen_ts,
                token: device.token.clone(),
                refresh: device.refresh.clone(),
                prev_refresh: device.prev_refresh.clone(),
            },
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
        self.emit_device_update(user, device_id, true);
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

    pub fn put_account_data(
        &mut self,
        batch: &mut Batch,
        user: &str,
        room: &str,
        kind: &str,
        content: Value,
    ) {
        let pos = self.next_pos(batch);
        batch.put_record(
            format!("{user}\u{0}{room}\u{0}{kind}"),
            &AccountDataRecord {
                content: content.clone(),
                pos,
            },
        );
        self.account_data
            .insert((user.into(), room.into(), kind.into()), (content, pos));
    }

    /// A short-lived token for `m.login.token` (also what single sign-on hands the client):
    /// the token and its lifetime in ms. Expired tokens are dropped here.
    pub fn issue_login_token(&mut self, user_id: &str) -> (String, u64) {
        let token = super::random_token(24);
        let lifetime = 120_000;
        let now = super::now_ms();
        self.login_tokens.retain(|_, (_, exp)| *exp > now);
        self.login_tokens
            .insert(token.clone(), (user_id.to_string(), now + lifetime));
        (token, lifetime)
    }

    /// An OpenID token for `user_id`, which other servers exchange for the user's id; returns
    /// it and its lifetime in ms.
    pub fn issue_openid_token(&mut self, user_id: &str) -> (String, u64) {
        let token = super::random_token(24);
        let lifetime = 3_600_000;
        let now = super::now_ms();
        self.openid_tokens.retain(|_, (_, exp)| *exp > now);
        self.openid_tokens
            .insert(token.clone(), (user_id.to_string(), now + lifetime));
        (token, lifetime)
    }

    /// The user an unexpired OpenID token was issued to.
    pub fn openid_user(&self, token: &str) -> Option<&str> {
        self.openid_tokens
            .get(token)
            .filter(|(_, exp)| *exp > super::now_ms())
            .map(|(u, _)| u.as_str())
    }

    /// Sets a user's presence content, at the next stream position.
    pub fn put_presence(&mut self, batch: &mut Batch, user: &str, content: Value) {
        let pos = self.next_pos(batch);
        batch.put_record(
            user,
            &super::records::PresenceRecord {
                content: content.clone(),
                pos,
            },
        );
        if self.is_local(user) {
            let mut push = json!({
                "user_id": user,
                "presence": content.get("presence").cloned().unwrap_or(json!("offline")),
                "last_active_ago": 0,
            });
            for k in ["status_msg", "currently_active"] {
                if let Some(v) = content.get(k) {
                    push[k] = v.clone();
                }
            }
            self.emit_edu(
                super::EduTarget::UserRooms(user.to_string()),
                "m.presence",
                json!({"push": [push]}),
            );
        }
        self.presence.insert(user.to_string(), (content, pos));
    }

    /// Ends a third-party validation session.
    pub fn remove_threepid_session(&mut self, batch: &mut Batch, sid: &str) {
        self.threepid_sessions.remove(sid);
        batch.delete("3pid_session", sid);
    }

    /// Keeps a filter.
    pub fn put_filter(&mut self, batch: &mut Batch, user: &str, id: &str, filter: Value) {
        batch.put("filter", format!("{user}\u{0}{id}"), &filter);
        self.filters
            .insert((user.to_string(), id.to_string()), filter);
    }

    /// Sets (`Some`) or removes a user's pusher, by app id and push key.
    pub fn put_pusher(
        &mut self,
        batch: &mut Batch,
        user: &str,
        key: &(String, String),
        pusher: Option<Value>,
    ) {
        let rec = format!("{user}\u{0}{}\u{0}{}", key.0, key.1);
        // The push position moves in memory only while no pusher exists (`push_delivery`);
        // it is written down before the first one arrives.
        if let (Some(at), true) = (self.push_pos, pusher.is_some()) {
            self.put_push_pos(batch, at);
        }
        let pushers = self.pushers.entry(user.to_string()).or_default();
        match pusher {
            Some(p) => {
                batch.put("pusher", rec, &p);
                pushers.insert(key.clone(), p);
            }
            None => {
                if pushers.remove(key).is_some() {
                    batch.delete("pusher", rec);
                }
            }
        }
    }

    /// A user forgets a room they left: it is no longer theirs to list.
    pub fn forget_room(&mut self, batch: &mut Batch, user: &str, room_id: &str) {
        if let Some(set) = self.user_rooms.get_mut(user) {
            set.remove(room_id);
        }
        batch.put("forgotten", format!("{user}\u{0}{room_id}"), &json!(true));
    }
}
