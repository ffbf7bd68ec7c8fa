//! The server's state: users, tokens, devices, rooms with their timelines and current state,
//! and the per-user streams that /sync reads. Every change is also written to a [`Batch`] that
//! the caller commits before answering. Events themselves live in the database and are read
//! through a bounded cache ([`crate::events`]); what stays in memory per event is its position
//! in its room's timeline (and a notification's position and highlight count). At start-up
//! the rooms are rebuilt from their state events alone, not by replaying history.
//!
//! By concern: `timeline` (events: reading them, making new ones, redaction), `room` (a room's
//! state, membership and what the directory says of it), `view` (events as a given user sees
//! them: client format, aggregations, visibility, power), `accounts` (users, devices, tokens,
//! third-party identifiers, account data), `devices` (key changes and device lists), `restore`
//! (start-up from the database).

mod accounts;
mod devices;
pub mod push;
pub mod records;
mod remote;
mod restore;
mod room;
mod timeline;
mod view;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use mxconform_pdu::build::Origin;
use mxconform_pdu::SigningKey;
use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};
use crate::events::EventCache;
use crate::store::{Batch, Store};

pub use accounts::{Backup, Device, Threepid, ThreepidSession, User};
pub use remote::{EduTarget, Received, RemoteMembership};
pub use room::{creators_of, Append, AuthView, Current, Room};
pub use timeline::{relation_target, Event, Prepared};

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Unpadded URL-safe base64 of random bytes.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the operating system's random source works");
    base64url(&buf)
}

/// URL-safe unpadded base64.
pub fn base64url(data: &[u8]) -> String {
    mxconform_pdu::base64::encode_url_safe(data)
}

/// A read receipt: (event id, timestamp, thread id).
pub type Receipt = (String, u64, Option<String>);

#[derive(Debug, Default)]
pub struct State {
    pub server_name: String,
    /// The key this server signs its events (and later its requests) with.
    pub signing_key: Option<SigningKey>,
    /// The key this server signs with as a rooms' Policy Server (set at start-up).
    pub policy_key: Option<SigningKey>,
    /// The latest stream position handed out.
    pub pos: u64,
    pub users: HashMap<String, User>,
    /// Access token -> (user, device).
    pub tokens: HashMap<String, (String, String)>,
    pub devices: HashMap<String, BTreeMap<String, Device>>,
    pub rooms: HashMap<String, Room>,
    /// The database: every event, and the records read at start-up.
    pub store: Store,
    /// Recently used events, and those of the request under way.
    pub cache: EventCache,
    /// Positions of the events that other events relate to (`m.relates_to`): only these have
    /// aggregations to look up.
    pub related: std::collections::HashSet<u64>,
    /// Refresh token -> (user, device).
    pub refresh_tokens: HashMap<String, (String, String)>,
    /// Single-use login tokens -> (user, expiry ms); memory only, they live two minutes.
    pub login_tokens: HashMap<String, (String, u64)>,
    /// OpenID tokens: token -> (user, expiry ms). In memory: they last an hour.
    pub openid_tokens: HashMap<String, (String, u64)>,
    /// Device keys of other servers' users as their device-list updates told (user -> device
    /// -> keys, with `unsigned.device_display_name`), newer than what a key query answered.
    /// In memory: a cache, refilled by the next updates.
    pub remote_devices: HashMap<String, BTreeMap<String, Value>>,
    /// Cross-signing keys of other servers' users as their signing-key updates told.
    pub remote_cross_signing: HashMap<String, BTreeMap<String, Value>>,
    /// EDUs for other servers, made by the current write and sent once it is committed.
    pub outbox: Vec<(EduTarget, Value)>,
    /// Each local user's latest device-list stream id sent to other servers (`prev_id`).
    pub device_stream_sent: HashMap<String, u64>,
    /// user -> room -> membership in a room this server is not in (remote invites, knocks).
    pub remote_memberships: HashMap<String, BTreeMap<String, RemoteMembership>>,
    /// (user, room or "", type) -> (content, position).
    pub account_data: HashMap<(String, String, String), (Value, u64)>,
    /// (user, filter id) -> filter.
    pub filters: HashMap<(String, String), Value>,
    /// alias -> (room, creator).
    pub aliases: HashMap<String, (String, String)>,
    /// room -> receipt type -> user (with `\0thread` for a threaded receipt) -> receipt, and
    /// the position of the latest change: one receipt per user, type and thread.
    pub receipts: HashMap<String, (BTreeMap<String, BTreeMap<String, Receipt>>, u64)>,
    /// room -> (typing user -> expiry ms, position of the latest change).
    pub typing: HashMap<String, (BTreeMap<String, u64>, u64)>,
    /// (user, device) -> queued (position, message).
    pub to_device: HashMap<(String, String), Vec<(u64, Value)>>,
    /// Rooms a user has any membership in.
    pub user_rooms: HashMap<String, BTreeSet<String>>,
    /// (user, device) -> signed device keys.
    pub device_keys: HashMap<(String, String), Value>,
    /// (user, device) -> key id -> (upload sequence, one-time key); claims take the oldest.
    pub one_time_keys: HashMap<(String, String), BTreeMap<String, (u64, Value)>>,
    /// Fallback keys handed out by a claim (kept, but no longer "unused"); memory only.
    pub fallback_used: BTreeSet<(String, String, String)>,
    /// (user, device) -> key id -> fallback key.
    pub fallback_keys: HashMap<(String, String), BTreeMap<String, Value>>,
    /// user -> position of the latest change to their devices or keys.
    pub key_changes: HashMap<String, u64>,
    /// user -> (presence content, position).
    pub presence: HashMap<String, (Value, u64)>,
    /// user -> pushers by (app id, push key).
    pub pushers: HashMap<String, BTreeMap<(String, String), Value>>,
    /// user -> key backup versions.
    pub backups: HashMap<String, BTreeMap<u64, Backup>>,
    /// user -> cross-signing keys (`master_key`, `self_signing_key`, `user_signing_key`).
    pub cross_signing: HashMap<String, Value>,
    /// Media ids reserved by `createContent` and not yet uploaded: id -> (owner, expiry ms).
    pub pending_media: HashMap<String, (String, u64)>,
    /// Media ids uploaded while this process runs (the database knows the older ones).
    pub uploaded_media: BTreeSet<String>,
    /// Rooms application services publish in their networks' directories:
    /// instance id (`<appservice id>|<network id>`) -> room ids.
    pub appservice_rooms: BTreeMap<String, BTreeSet<String>>,
    /// How far each application service has been sent the event stream (its last
    /// acknowledged position), by service id.
    pub appservice_pos: HashMap<String, u64>,
    /// Where delivery to push gateways has reached in the stream (`None` before the first
    /// start that delivers).
    pub push_pos: Option<u64>,
    /// This state among the states of the process, for the compiled push rules it caches.
    pub push_instance: push::Instance,
    /// How far each other server has taken this server's events (the greatest position of
    /// a transaction it accepted), by server name: deliveries resume from there after a
    /// restart.
    pub federation_acked: HashMap<String, u64>,
    /// The last sequence number of an EDU kept until delivered (`fed_edu` records).
    pub edu_seq: u64,
    /// The EDUs kept undelivered at start-up: (destination, sequence, EDU), taken by the
    /// federation sender at its first look.
    pub undelivered_edus: Vec<(String, u64, Value)>,
    /// Third-party identifier validation sessions, by sid.
    pub threepid_sessions: HashMap<String, ThreepidSession>,
    /// When validation messages went to each address lately (ms), for the rate limit; not
    /// persisted.
    pub messages_sent: HashMap<String, Vec<u64>>,
    /// Third-party identifiers bound to accounts: (medium, address) -> binding.
    pub threepids: BTreeMap<(String, String), Threepid>,
    /// The identity servers a user bound an identifier at through this server (bind3PID):
    /// (user, medium, address) -> identity servers, unbound there when the identifier or the
    /// account goes (record `id_server`).
    pub id_servers: BTreeMap<(String, String, String), BTreeSet<String>>,
    /// Redacted events whose original content the database still holds: (redaction time
    /// ms, position), oldest first; [`State::purge_redacted`] removes it after the retention.
    pub unpurged: BTreeSet<(u64, u64)>,
}

impl State {
    /// A state for `server_name` signing with `key`, on an in-memory database.
    pub fn new(server_name: &str, key: SigningKey) -> State {
        State::with_store(server_name, key, Store::default())
    }

    /// A state for `server_name` signing with `key`, on `store`.
    pub fn with_store(server_name: &str, key: SigningKey, store: Store) -> State {
        State {
            server_name: server_name.to_string(),
            signing_key: Some(key),
            policy_key: None,
            store,
            ..State::default()
        }
    }

    /// Everything written so far is in the database (called after each commit).
    pub fn committed(&self) {
        self.cache.committed(self.pos);
    }

    fn origin(&self) -> ApiResult<Origin<'_>> {
        let key = self
            .signing_key
            .as_ref()
            .ok_or_else(|| ApiError::internal("the server has no signing key"))?;
        Ok(Origin {
            server_name: &self.server_name,
            key,
        })
    }

    /// Keeps the server's signing key with the data, so that its events stay verifiable
    /// across restarts.
    pub fn keep_signing_key(&mut self, batch: &mut Batch) -> ApiResult<()> {
        let line = self.origin()?.key.to_file_line();
        batch.put("meta", "signing_key", &json!(line));
        Ok(())
    }

    /// Records how far an application service has been sent events; `persist` false moves it
    /// in memory only (a stretch with nothing for the service, found again after a restart).
    pub fn put_appservice_pos(&mut self, batch: &mut Batch, id: &str, pos: u64, persist: bool) {
        if persist {
            batch.put("as_pos", id, &json!(pos));
        }
        self.appservice_pos.insert(id.to_string(), pos);
    }

    /// Records that notifications up to `pos` were handed to the pushers.
    pub fn put_push_pos(&mut self, batch: &mut Batch, pos: u64) {
        batch.put("push_pos", "", &json!(pos));
        self.push_pos = Some(pos);
    }

    /// Records that `dest` took this server's events up to `pos`.
    pub fn put_federation_acked(&mut self, batch: &mut Batch, dest: &str, pos: u64) {
        batch.put("fed_acked", dest, &json!(pos));
        self.federation_acked.insert(dest.to_string(), pos);
    }

    pub fn next_pos(&mut self, batch: &mut Batch) -> u64 {
        self.pos += 1;
        batch.put("meta", "pos", &json!(self.pos));
        self.pos
    }
}

#[cfg(test)]
mod tests;
