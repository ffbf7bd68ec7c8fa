//! The database's structured records: each kind has one type, which writes it
//! ([`crate::store::Batch::put_record`]) and reads it back at start-up ([`read`]), so that a
//! field is never written under one name and read under another. (Records whose value is
//! opaque JSON kept as the client sent it, such as filters, pushers or fallback keys, are
//! written as that JSON.)

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ThreepidSession;
use crate::store::Record;

/// Reads a record of kind `R`, naming it when it is malformed.
pub fn read<R: Record>(key: &str, v: Value) -> Result<R, String> {
    serde_json::from_value(v).map_err(|e| {
        format!(
            "the record {}/{key:?} in the database is malformed: {e}",
            R::KIND
        )
    })
}

macro_rules! records {
    ($($t:ident => $kind:literal),* $(,)?) => {
        $(impl Record for $t {
            const KIND: &'static str = $kind;
        })*
    };
}

records! {
    UserRecord => "user",
    DeviceRecord => "device",
    AccountDataRecord => "account_data",
    PresenceRecord => "presence",
    AliasRecord => "alias",
    RoomRecord => "room",
    ReceiptRecord => "receipt",
    DeviceKeysRecord => "device_keys",
    ThreepidRecord => "threepid",
    OneTimeKeyRecord => "otk",
    BackupRecord => "backup",
    ThreepidSession => "3pid_session",
    BranchStateRecord => "branch_state",
    StateFixRecord => "state_fix",
    BackfillRecord => "backfill",
}

/// The state just after an event that did not extend the room's current state (`branch_state`,
/// by the event's position): (type, state key, position) of each entry.
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
pub struct BranchStateRecord {
    pub room: String,
    pub state: Vec<(String, String, u64)>,
}

/// The keys resolution set where forks met (`state_fix`, by the merging event's position):
/// (type, state key, position; 0 when the key left the state).
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
pub struct StateFixRecord {
    pub room: String,
    pub set: Vec<(String, String, u64)>,
}

/// History missing before a timeline event, and what was fetched of it (`backfill`, by the
/// anchor's position): the fetched events' positions, oldest first, and the prev events still
/// missing before them (empty once the history reaches the room's start).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Serialize)]
pub struct BackfillRecord {
    pub room: String,
    pub events: Vec<u64>,
    pub missing: Vec<String>,
}

/// An account (`user`, by user id).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Serialize)]
#[serde(default)]
pub struct UserRecord {
    pub password_hash: Option<String>,
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
    pub deactivated: bool,
    pub locked: bool,
    pub suspended: bool,
    pub fields: BTreeMap<String, Value>,
}

/// A device and its tokens (`device`, by user and device id).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Serialize)]
#[serde(default)]
pub struct DeviceRecord {
    pub display_name: Option<String>,
    pub last_seen_ts: u64,
    pub token: String,
    pub refresh: Option<String>,
    pub prev_refresh: Option<String>,
}

/// Account data (`account_data`, by user, room or "", and type) at a stream position.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Serialize)]
#[serde(default)]
pub struct AccountDataRecord {
    pub content: Value,
    pub pos: u64,
}

/// A user's presence (`presence`, by user id) at a stream position.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Serialize)]
#[serde(default)]
pub struct PresenceRecord {
    pub content: Value,
    pub pos: u64,
}

/// A room alias (`alias`, by alias).
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
pub struct AliasRecord {
    pub room_id: String,
    pub creator: String,
}

/// A room's settings that are not state (`room`, by room id).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Serialize)]
#[serde(default)]
pub struct RoomRecord {
    pub public: bool,
}

/// A receipt (`receipt`, by room, type, user and thread when threaded).
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
pub struct ReceiptRecord {
    pub event_id: String,
    pub ts: u64,
    #[serde(default)]
    pub thread_id: Option<String>,
    pub pos: u64,
}

/// A device's signed keys (`device_keys`, by user and device id) and when they changed.
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
pub struct DeviceKeysRecord {
    pub keys: Value,
    pub pos: u64,
}

/// A third-party identifier bound to an account (`threepid`, by medium and address).
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
pub struct ThreepidRecord {
    pub user_id: String,
    #[serde(default)]
    pub added_at: u64,
    #[serde(default)]
    pub validated_at: u64,
}

/// A one-time key (`otk`, by user, device and key id) and its upload sequence (claims take
/// the oldest).
#[derive(Clone, Debug, Deserialize, PartialEq, Serialize)]
pub struct OneTimeKeyRecord {
    pub seq: u64,
    pub key: Value,
}

/// A key backup version (`backup`, by user and version); its keys are `backup_key` records.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Serialize)]
#[serde(default)]
pub struct BackupRecord {
    pub algorithm: String,
    pub auth_data: Value,
    pub etag: u64,
    pub deleted: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Each record reads back what it wrote, and a malformed one is named with its kind and
    /// key.
    #[test]
    fn records_round_trip_and_malformed_ones_are_named() {
        let user = UserRecord {
            password_hash: Some("h".into()),
            displayname: Some("A".into()),
            locked: true,
            ..UserRecord::default()
        };
        let back: UserRecord = read("@a:hs", serde_json::to_value(&user).unwrap()).unwrap();
        assert_eq!(back, user);
        let otk = OneTimeKeyRecord {
            seq: 4,
            key: json!({"key": "k"}),
        };
        let back: OneTimeKeyRecord = read("k", serde_json::to_value(&otk).unwrap()).unwrap();
        assert_eq!(back, otk);
        let err = read::<AliasRecord>("#a:hs", json!({"room_id": 5})).unwrap_err();
        assert!(err.contains("alias/\"#a:hs\""), "{err}");
        // Fields written by older versions of a record may be missing: they default.
        let d: DeviceRecord = read("d", json!({"token": "t"})).unwrap();
        assert_eq!(d.token, "t");
    }
}
