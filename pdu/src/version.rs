//! Room versions 1-12 as data: each algorithm a version picks, and each rule it adds or drops
//! (rooms/v1.md ... rooms/v12.md). Everything else in this crate asks a `RoomVersion`, never a
//! version string.

/// How an event's id is made (rooms/v1 "Event IDs", rooms/v3 "Event IDs", rooms/v4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventIdFormat {
    /// v1-2: `$opaque:server`, carried in the event as `event_id`.
    Opaque,
    /// v3: `$` + the reference hash in standard unpadded base64.
    Base64,
    /// v4 on: `$` + the reference hash in URL-safe unpadded base64.
    UrlSafe,
}

/// The state resolution algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateResolution {
    /// The original algorithm (rooms/v1 "State resolution").
    V1,
    /// rooms/v2 "State resolution" (versions 2-11).
    V2,
    /// rooms/v12 "State resolution": from the empty state, with the conflicted subgraph.
    V2_1,
}

/// The redaction algorithm: which keys an event keeps when redacted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Redaction {
    /// v1-5 (fragments/v1-redactions): `m.room.aliases` keeps `aliases`.
    V1,
    /// v6-7 (fragments/v6-redactions): aliases lose their meaning.
    V6,
    /// v8 (rooms/v8 "Redactions"): join rules keep `allow`.
    V8,
    /// v9-10 (fragments/v9-redactions): members keep `join_authorised_via_users_server`.
    V9,
    /// v11-12 (fragments/v11-redactions): fewer top-level keys, create keeps everything.
    V11,
}

/// One room version: its id and the algorithms and rules it uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoomVersion {
    pub id: &'static str,
    pub event_ids: EventIdFormat,
    pub state_res: StateResolution,
    pub redaction: Redaction,
    /// v1-5: floats are accepted and truncated in power levels (fragments/v1-floaty-power-levels).
    pub float_power_levels: bool,
    /// v1-9: power levels may be strings holding integers (fragments/v1-stringy-power-levels).
    pub string_power_levels: bool,
    /// v6 on: canonical JSON is enforced (fragments/v6-canonical-json).
    pub strict_canonical_json: bool,
    /// v1-5: the `m.room.aliases` rule (rule 4 of v1-auth-rules).
    pub aliases_rule: bool,
    /// v1-2: the `m.room.redaction` rule (rule 11 of v1-auth-rules), and a signature from the
    /// server of the event id's domain.
    pub redaction_rule: bool,
    /// v5 on: a signing key must be valid at the event's `origin_server_ts`.
    pub key_validity: bool,
    /// v6 on: `notifications` in power levels is guarded like `events`.
    pub notifications_power: bool,
    /// v7 on: the `knock` membership and join rule.
    pub knocking: bool,
    /// v8 on: the `restricted` join rule and `join_authorised_via_users_server`.
    pub restricted: bool,
    /// v10 on: the `knock_restricted` join rule.
    pub knock_restricted: bool,
    /// v10 on: power level values must be integers (rule 10.1/10.2 of rooms/v10).
    pub integer_power_levels: bool,
    /// v1-10: `m.room.create` must carry `content.creator`, which names the creator.
    pub create_has_creator: bool,
    /// v11 on: `redacts` of `m.room.redaction` lives in `content`.
    pub redacts_in_content: bool,
    /// v12: the room id is the create event's id with `!`; the create event has no
    /// `room_id`, is never an auth event, and its sender and `additional_creators` have
    /// unlimited power.
    pub room_id_is_create: bool,
}

impl RoomVersion {
    /// The version with this id, if it is one of the spec's stable versions.
    pub fn get(id: &str) -> Option<&'static RoomVersion> {
        ALL.iter().find(|v| v.id == id)
    }

    /// The largest `depth` an event may have: 2^63 - 1 before canonical JSON was enforced,
    /// 2^53 - 1 from v6 (pdu_v1 / depth_v6 in the spec data).
    pub fn max_depth(&self) -> i64 {
        if self.strict_canonical_json {
            crate::canonical::MAX_SAFE_INTEGER
        } else {
            i64::MAX
        }
    }

    /// Whether `join_rule` is one this version knows.
    pub fn knows_join_rule(&self, rule: &str) -> bool {
        match rule {
            "public" | "invite" => true,
            "knock" => self.knocking,
            "restricted" => self.restricted,
            "knock_restricted" => self.knock_restricted,
            _ => false,
        }
    }
}

const fn version(n: u8) -> RoomVersion {
    RoomVersion {
        id: match n {
            1 => "1",
            2 => "2",
            3 => "3",
            4 => "4",
            5 => "5",
            6 => "6",
            7 => "7",
            8 => "8",
            9 => "9",
            10 => "10",
            11 => "11",
            _ => "12",
        },
        event_ids: match n {
            1 | 2 => EventIdFormat::Opaque,
            3 => EventIdFormat::Base64,
            _ => EventIdFormat::UrlSafe,
        },
        state_res: match n {
            1 => StateResolution::V1,
            2..=11 => StateResolution::V2,
            _ => StateResolution::V2_1,
        },
        redaction: match n {
            1..=5 => Redaction::V1,
            6 | 7 => Redaction::V6,
            8 => Redaction::V8,
            9 | 10 => Redaction::V9,
            _ => Redaction::V11,
        },
        float_power_levels: n <= 5,
        string_power_levels: n <= 9,
        strict_canonical_json: n >= 6,
        aliases_rule: n <= 5,
        redaction_rule: n <= 2,
        key_validity: n >= 5,
        notifications_power: n >= 6,
        knocking: n >= 7,
        restricted: n >= 8,
        knock_restricted: n >= 10,
        integer_power_levels: n >= 10,
        create_has_creator: n <= 10,
        redacts_in_content: n >= 11,
        room_id_is_create: n >= 12,
    }
}

/// Every stable room version, oldest first.
pub static ALL: [RoomVersion; 12] = [
    version(1),
    version(2),
    version(3),
    version(4),
    version(5),
    version(6),
    version(7),
    version(8),
    version(9),
    version(10),
    version(11),
    version(12),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_follow_the_feature_matrix() {
        // rooms/_index.md "Feature matrix": knocking 7+, restricted 8+, knock_restricted 10+,
        // additional creators 12.
        for v in &ALL {
            let n: u8 = v.id.parse().unwrap();
            assert_eq!(v.knocking, n >= 7, "{}", v.id);
            assert_eq!(v.restricted, n >= 8, "{}", v.id);
            assert_eq!(v.knock_restricted, n >= 10, "{}", v.id);
            assert_eq!(v.room_id_is_create, n == 12, "{}", v.id);
        }
        assert!(RoomVersion::get("13").is_none());
        assert!(RoomVersion::get("org.example.v1").is_none());
    }
}
