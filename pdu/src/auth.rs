//! The authorization rules of room versions 1-12 as one pure function over (room version,
//! event, the state it is checked against), answering which rule rejects an event
//! (fragments/v1-auth-rules, v3-auth-rules, v8-auth-rules; rooms/v6, v7, v10, v11 and v12
//! "Authorisation rules"), and the auth events selection (server-server-api "Auth events
//! selection").

use serde_json::Value;

use crate::keys::VerifyKey;
use crate::pdu::Pdu;
use crate::version::RoomVersion;
use crate::{hash, ids, sign, version};

/// A rule that rejects an event: a stable name (what tests and tools match on) and the rule's
/// number in the version's list, which differs between versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rule {
    CreatePrevEvents,
    CreateRoomIdDomain,
    CreateHasRoomId,
    CreateRoomVersion,
    CreateNoCreator,
    CreateAdditionalCreators,
    RoomIdNotCreate,
    AuthEventsDuplicate,
    AuthEventsUnexpected,
    AuthEventsRejected,
    AuthEventsNoCreate,
    AuthEventsRoom,
    AuthEventsMissing,
    NoCreate,
    Federate,
    AliasesNoStateKey,
    AliasesDomain,
    MemberMalformed,
    MemberAuthorisedViaSignature,
    JoinSenderNotTarget,
    JoinBanned,
    JoinRestrictedAuthoriser,
    JoinNotAllowed,
    Invite3pidBanned,
    Invite3pidNoSigned,
    Invite3pidSignedFields,
    Invite3pidMxid,
    Invite3pidNoToken,
    Invite3pidSender,
    Invite3pidSignature,
    InviteSenderNotJoined,
    InviteTargetJoinedOrBanned,
    InvitePower,
    LeaveSelfNotMember,
    LeaveSenderNotJoined,
    LeaveUnbanPower,
    LeaveKickPower,
    BanSenderNotJoined,
    BanPower,
    KnockJoinRule,
    KnockSenderNotTarget,
    KnockMembership,
    MemberUnknown,
    SenderNotJoined,
    ThirdPartyInvitePower,
    RequiredPower,
    StateKeyUser,
    PowerLevelsNotInteger,
    PowerLevelsNotIntegerMap,
    PowerLevelsUsers,
    PowerLevelsCreatorInUsers,
    PowerLevelsField,
    PowerLevelsEvents,
    PowerLevelsEventsNew,
    PowerLevelsUsersChange,
    PowerLevelsUsersNew,
    RedactionPower,
}

impl Rule {
    /// The stable name, e.g. `member.join.banned`.
    pub fn name(self) -> &'static str {
        use Rule::*;
        match self {
            CreatePrevEvents => "create.prev_events",
            CreateRoomIdDomain => "create.room_id_domain",
            CreateHasRoomId => "create.has_room_id",
            CreateRoomVersion => "create.room_version",
            CreateNoCreator => "create.no_creator",
            CreateAdditionalCreators => "create.additional_creators",
            RoomIdNotCreate => "room_id.not_create",
            AuthEventsDuplicate => "auth_events.duplicate",
            AuthEventsUnexpected => "auth_events.unexpected",
            AuthEventsRejected => "auth_events.rejected",
            AuthEventsNoCreate => "auth_events.no_create",
            AuthEventsRoom => "auth_events.room",
            AuthEventsMissing => "auth_events.missing",
            NoCreate => "state.no_create",
            Federate => "federate",
            AliasesNoStateKey => "aliases.no_state_key",
            AliasesDomain => "aliases.domain",
            MemberMalformed => "member.malformed",
            MemberAuthorisedViaSignature => "member.authorised_via.signature",
            JoinSenderNotTarget => "member.join.sender_not_target",
            JoinBanned => "member.join.banned",
            JoinRestrictedAuthoriser => "member.join.restricted_authoriser",
            JoinNotAllowed => "member.join.not_allowed",
            Invite3pidBanned => "member.invite.3pid.banned",
            Invite3pidNoSigned => "member.invite.3pid.no_signed",
            Invite3pidSignedFields => "member.invite.3pid.signed_fields",
            Invite3pidMxid => "member.invite.3pid.mxid",
            Invite3pidNoToken => "member.invite.3pid.no_token",
            Invite3pidSender => "member.invite.3pid.sender",
            Invite3pidSignature => "member.invite.3pid.signature",
            InviteSenderNotJoined => "member.invite.sender_not_joined",
            InviteTargetJoinedOrBanned => "member.invite.target_joined_or_banned",
            InvitePower => "member.invite.power",
            LeaveSelfNotMember => "member.leave.self_not_member",
            LeaveSenderNotJoined => "member.leave.sender_not_joined",
            LeaveUnbanPower => "member.leave.unban_power",
            LeaveKickPower => "member.leave.kick_power",
            BanSenderNotJoined => "member.ban.sender_not_joined",
            BanPower => "member.ban.power",
            KnockJoinRule => "member.knock.join_rule",
            KnockSenderNotTarget => "member.knock.sender_not_target",
            KnockMembership => "member.knock.membership",
            MemberUnknown => "member.unknown",
            SenderNotJoined => "sender.not_joined",
            ThirdPartyInvitePower => "third_party_invite.power",
            RequiredPower => "power.required",
            StateKeyUser => "state_key.user",
            PowerLevelsNotInteger => "power_levels.not_integer",
            PowerLevelsNotIntegerMap => "power_levels.not_integer_map",
            PowerLevelsUsers => "power_levels.users",
            PowerLevelsCreatorInUsers => "power_levels.creator_in_users",
            PowerLevelsField => "power_levels.field",
            PowerLevelsEvents => "power_levels.events",
            PowerLevelsEventsNew => "power_levels.events_new",
            PowerLevelsUsersChange => "power_levels.users_change",
            PowerLevelsUsersNew => "power_levels.users_new",
            RedactionPower => "redaction.power",
        }
    }

    /// The rule's number in `version`'s list (e.g. `5.3.3` in v12, `4.3.3` in v8).
    pub fn number(self, v: &RoomVersion) -> String {
        use Rule::*;
        let v12 = v.room_id_is_create;
        // Top-level positions.
        let create = 1;
        let auth_events = if v12 { 3 } else { 2 };
        let federate = auth_events + 1;
        let aliases = 4; // v1-5 only
        let member = if v12 || v.aliases_rule { 5 } else { 4 };
        let sender = member + 1;
        let tpi = member + 2;
        let required = member + 3;
        let state_key = member + 4;
        let pl = member + 5;
        let redaction = 11; // v1-2 only
                            // Member sub-rules: from v8, 2 is the `join_authorised_via_users_server` signature.
        let m = |sub: u32| {
            let shift = u32::from(v.restricted);
            format!("{member}.{}", sub + shift)
        };
        let join_sub = |sub: &str| format!("{}.{sub}", m(2));
        let (invite_n, leave_n, ban_n, knock_n, unknown_n) = if v.knocking {
            (3, 4, 5, 6, 7)
        } else {
            (3, 4, 5, 0, 6)
        };
        let pl_sub = |sub: u32| {
            // v10 adds two type checks before the users check; v12 one more after it.
            let shift = if v.integer_power_levels { 2 } else { 0 };
            let creators = u32::from(v12 && sub >= 2);
            format!("{pl}.{}", sub + shift + creators)
        };
        match self {
            CreatePrevEvents => format!("{create}.1"),
            CreateRoomIdDomain | CreateHasRoomId => format!("{create}.2"),
            CreateRoomVersion => format!("{create}.3"),
            CreateNoCreator | CreateAdditionalCreators => format!("{create}.4"),
            RoomIdNotCreate => "2".into(),
            AuthEventsDuplicate => format!("{auth_events}.1"),
            AuthEventsUnexpected | AuthEventsMissing => format!("{auth_events}.2"),
            AuthEventsRejected => format!("{auth_events}.3"),
            AuthEventsNoCreate | NoCreate => format!("{auth_events}.4"),
            AuthEventsRoom => format!("{auth_events}.5"),
            Federate => format!("{federate}"),
            AliasesNoStateKey => format!("{aliases}.1"),
            AliasesDomain => format!("{aliases}.2"),
            MemberMalformed => format!("{member}.1"),
            MemberAuthorisedViaSignature => format!("{member}.2.1"),
            JoinSenderNotTarget => join_sub("2"),
            JoinBanned => join_sub("3"),
            JoinRestrictedAuthoriser => join_sub("5.2"),
            JoinNotAllowed => join_sub(if v.restricted { "7" } else { "6" }),
            Invite3pidBanned => format!("{}.1.1", m(invite_n)),
            Invite3pidNoSigned => format!("{}.1.2", m(invite_n)),
            Invite3pidSignedFields => format!("{}.1.3", m(invite_n)),
            Invite3pidMxid => format!("{}.1.4", m(invite_n)),
            Invite3pidNoToken => format!("{}.1.5", m(invite_n)),
            Invite3pidSender => format!("{}.1.6", m(invite_n)),
            Invite3pidSignature => format!("{}.1.8", m(invite_n)),
            InviteSenderNotJoined => format!("{}.2", m(invite_n)),
            InviteTargetJoinedOrBanned => format!("{}.3", m(invite_n)),
            InvitePower => format!("{}.5", m(invite_n)),
            LeaveSelfNotMember => format!("{}.1", m(leave_n)),
            LeaveSenderNotJoined => format!("{}.2", m(leave_n)),
            LeaveUnbanPower => format!("{}.3", m(leave_n)),
            LeaveKickPower => format!("{}.5", m(leave_n)),
            BanSenderNotJoined => format!("{}.1", m(ban_n)),
            BanPower => format!("{}.3", m(ban_n)),
            KnockJoinRule => format!("{}.1", m(knock_n)),
            KnockSenderNotTarget => format!("{}.2", m(knock_n)),
            KnockMembership => format!("{}.4", m(knock_n)),
            MemberUnknown => m(unknown_n),
            SenderNotJoined => format!("{sender}"),
            ThirdPartyInvitePower => format!("{tpi}.1"),
            RequiredPower => format!("{required}"),
            StateKeyUser => format!("{state_key}"),
            PowerLevelsNotInteger => format!("{pl}.1"),
            PowerLevelsNotIntegerMap => format!("{pl}.2"),
            PowerLevelsUsers => pl_sub(1),
            PowerLevelsCreatorInUsers => format!("{pl}.4"),
            PowerLevelsField => pl_sub(3),
            PowerLevelsEvents => pl_sub(4),
            PowerLevelsEventsNew => pl_sub(5),
            PowerLevelsUsersChange => pl_sub(6),
            PowerLevelsUsersNew => pl_sub(7),
            RedactionPower => format!("{redaction}.3"),
        }
    }
}

/// An event the rules reject: the rule and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub rule: Rule,
    /// The rule's number in the event's room version.
    pub number: String,
    pub reason: String,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rejected by rule {} ({}): {}",
            self.number,
            self.rule.name(),
            self.reason
        )
    }
}

impl std::error::Error for Rejection {}

fn reject(v: &RoomVersion, rule: Rule, reason: impl Into<String>) -> Rejection {
    Rejection {
        rule,
        number: rule.number(v),
        reason: reason.into(),
    }
}

/// The room state an event is checked against: `(type, state_key)` -> event. For room
/// version 12 it must hold the create event too (named by the room id, never an auth event).
pub trait AuthState {
    fn get(&self, kind: &str, state_key: &str) -> Option<&Pdu>;
}

impl AuthState for std::collections::HashMap<(String, String), &Pdu> {
    fn get(&self, kind: &str, state_key: &str) -> Option<&Pdu> {
        // The map is keyed by owned strings; a lookup costs two small allocations.
        std::collections::HashMap::get(self, &(kind.to_string(), state_key.to_string())).copied()
    }
}

/// A slice of events as state (the auth events of an event, say).
pub struct EventList<'a>(pub Vec<&'a Pdu>);

impl AuthState for EventList<'_> {
    fn get(&self, kind: &str, state_key: &str) -> Option<&Pdu> {
        self.0.iter().copied().find(|e| e.is(kind, state_key))
    }
}

/// Whether the event being authorized is validly signed by a server (for
/// `join_authorised_via_users_server`); the caller holds the keys.
pub type SignedBy<'a> = dyn Fn(&str) -> bool + 'a;

/// The `(type, state_key)` pairs an event's `auth_events` should cite (server-server-api
/// "Auth events selection"; v12 never cites the create event).
pub fn auth_types(
    v: &RoomVersion,
    kind: &str,
    state_key: Option<&str>,
    sender: &str,
    content: &Value,
) -> Vec<(String, String)> {
    auth_keys(v, kind, state_key, sender, content)
        .iter()
        .map(|(k, s)| (k.to_string(), s.to_string()))
        .collect()
}

/// [`auth_types`] for `event`, borrowing from it: no string is copied.
pub fn auth_keys_of<'a>(v: &RoomVersion, event: &'a Pdu) -> AuthKeys<'a> {
    auth_keys(
        v,
        &event.kind,
        event.state_key.as_deref(),
        &event.sender,
        event.content(),
    )
}

/// At most seven `(type, state_key)` pairs, kept inline.
#[derive(Clone, Copy, Debug, Default)]
pub struct AuthKeys<'a> {
    keys: [(&'static str, &'a str); 7],
    len: usize,
}

impl<'a> AuthKeys<'a> {
    fn add(&mut self, kind: &'static str, key: &'a str) {
        if !self.iter().any(|(k, s)| k == kind && s == key) && self.len < 7 {
            self.keys[self.len] = (kind, key);
            self.len += 1;
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &'a str)> + '_ {
        self.keys[..self.len].iter().copied()
    }

    pub fn contains(&self, kind: &str, key: &str) -> bool {
        self.iter().any(|(k, s)| k == kind && s == key)
    }
}

/// The selection, borrowing the state keys from the event.
pub fn auth_keys<'a>(
    v: &RoomVersion,
    kind: &str,
    state_key: Option<&'a str>,
    sender: &'a str,
    content: &'a Value,
) -> AuthKeys<'a> {
    let mut out = AuthKeys::default();
    // Rule 1 goes by type alone: any m.room.create event cites nothing.
    if kind == "m.room.create" {
        return out;
    }
    if !v.room_id_is_create {
        out.add("m.room.create", "");
    }
    out.add("m.room.power_levels", "");
    out.add("m.room.member", sender);
    if kind == "m.room.member" {
        if let Some(target) = state_key {
            out.add("m.room.member", target);
        }
        let membership = content.get("membership").and_then(Value::as_str);
        if matches!(membership, Some("join" | "invite" | "knock")) {
            out.add("m.room.join_rules", "");
        }
        if membership == Some("invite") {
            if let Some(token) = content
                .get("third_party_invite")
                .and_then(|t| t.get("signed"))
                .and_then(|s| s.get("token"))
                .and_then(Value::as_str)
            {
                out.add("m.room.third_party_invite", token);
            }
        }
        if membership == Some("join") && v.restricted {
            if let Some(via) = content
                .get("join_authorised_via_users_server")
                .and_then(Value::as_str)
            {
                out.add("m.room.member", via);
            }
        }
    }
    out
}

/// The auth-events checks (rule 2 of v1-11, rules 2 and 3 of v12): the event's
/// `auth_events`, as found (`auth_events` in the order the event cites them, `None` where
/// one is missing), are not duplicated, are what the selection asks for, were not rejected,
/// are in the same room, and hold the create event (v1-11). In v12, `create` is the event
/// named by the room id (`None` when it is unknown or rejected).
pub fn check_auth_events(
    v: &RoomVersion,
    event: &Pdu,
    auth_events: &[Option<&Pdu>],
    rejected: &dyn Fn(&Pdu) -> bool,
    create: Option<&Pdu>,
) -> Result<(), Rejection> {
    if v.room_id_is_create {
        let ok = create.is_some_and(|c| {
            c.is("m.room.create", "") && hash::room_id_of_create(&c.event_id) == event.room_id
        });
        if !ok {
            return Err(reject(
                v,
                Rule::RoomIdNotCreate,
                format!(
                    "{} is not the id of an accepted m.room.create event",
                    event.room_id
                ),
            ));
        }
    }
    let wanted = auth_keys_of(v, event);
    let mut seen: Vec<(&str, &str)> = Vec::with_capacity(auth_events.len());
    let mut has_create = false;
    for (i, found) in auth_events.iter().enumerate() {
        let Some(a) = found else {
            return Err(reject(
                v,
                Rule::AuthEventsMissing,
                format!(
                    "auth event {} is unknown",
                    event.auth_events.get(i).map_or("?", String::as_str)
                ),
            ));
        };
        let key = (a.kind.as_str(), a.state_key.as_deref().unwrap_or(""));
        if seen.contains(&key) {
            return Err(reject(
                v,
                Rule::AuthEventsDuplicate,
                format!("two auth events for ({}, {:?})", key.0, key.1),
            ));
        }
        seen.push(key);
        if !a.is_state() || !wanted.contains(key.0, key.1) {
            return Err(reject(
                v,
                Rule::AuthEventsUnexpected,
                format!(
                    "auth event {} ({}, {:?}) is not one the selection asks for",
                    a.event_id, key.0, key.1
                ),
            ));
        }
        if rejected(a) {
            return Err(reject(
                v,
                Rule::AuthEventsRejected,
                format!("auth event {} was rejected", a.event_id),
            ));
        }
        if a.room_id != event.room_id {
            return Err(reject(
                v,
                Rule::AuthEventsRoom,
                format!("auth event {} is in room {}", a.event_id, a.room_id),
            ));
        }
        has_create |= key == ("m.room.create", "");
    }
    if !v.room_id_is_create && !has_create {
        return Err(reject(
            v,
            Rule::AuthEventsNoCreate,
            "no m.room.create event among the auth events",
        ));
    }
    Ok(())
}

/// Authorizes `event` against its own auth events: the auth-events checks, then the rules
/// with those events as the state (step 4 of the checks on receipt). `auth_events` are the
/// events the event cites, in order (`None` where unknown); `create` is the v12 create event.
pub fn authorize_by_auth_events(
    v: &RoomVersion,
    event: &Pdu,
    auth_events: &[Option<&Pdu>],
    rejected: &dyn Fn(&Pdu) -> bool,
    create: Option<&Pdu>,
    signed_by: &SignedBy<'_>,
) -> Result<(), Rejection> {
    if event.kind == "m.room.create" {
        return authorize(v, event, &EventList(Vec::new()), signed_by);
    }
    check_auth_events(v, event, auth_events, rejected, create)?;
    let mut state: Vec<&Pdu> = auth_events.iter().flatten().copied().collect();
    if v.room_id_is_create {
        state.extend(create);
    }
    authorize(v, event, &EventList(state), signed_by)
}

/// A power level: an integer, or unlimited (the creators of a room version 12 room).
pub type Power = i64;

/// The power of room version 12 creators: above any integer a power level may hold.
pub const UNLIMITED: Power = i64::MAX;

/// Reads a power level value as `v` allows: integers; in v1-9 strings holding an integer
/// (optional surrounding whitespace, sign and leading zeros); in v1-5 floats, truncated.
pub fn parse_power(v: &RoomVersion, value: &Value) -> Option<Power> {
    match value {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Some(i)
            } else if n.is_u64() {
                Some(i64::MAX - 1)
            } else if v.float_power_levels {
                let f = n.as_f64()?;
                f.is_finite()
                    .then(|| f.trunc().clamp(-9.2e18, 9.2e18) as i64)
            } else {
                None
            }
        }
        Value::String(s) if v.string_power_levels => {
            let t = s.trim();
            let (neg, digits) = match t.as_bytes().first() {
                Some(b'-') => (true, &t[1..]),
                Some(b'+') => (false, &t[1..]),
                _ => (false, t),
            };
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let digits = digits.trim_start_matches('0');
            let n: i64 = if digits.is_empty() {
                0
            } else {
                digits.parse().unwrap_or(i64::MAX - 1)
            };
            Some(if neg { -n } else { n })
        }
        _ => None,
    }
}

/// The facts about a room the rules read, gathered once per check.
struct Room<'a> {
    v: &'a RoomVersion,
    create: &'a Pdu,
    power: Option<&'a Pdu>,
}

impl Room<'_> {
    /// Whether `user` is a creator whose power is unlimited (v12).
    fn is_v12_creator(&self, user: &str) -> bool {
        self.v.room_id_is_create
            && (self.create.sender == user
                || self
                    .create
                    .content()
                    .get("additional_creators")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.iter().any(|c| c.as_str() == Some(user))))
    }

    /// The creator of v1-11 rooms: `content.creator` until v10, the sender from v11.
    fn creator(&self) -> Option<&str> {
        if self.v.create_has_creator {
            self.create.content_str("creator")
        } else {
            Some(&self.create.sender)
        }
    }

    fn field(&self, name: &str, default: Power) -> Power {
        self.power
            .and_then(|p| p.content().get(name))
            .and_then(|x| parse_power(self.v, x))
            .unwrap_or(default)
    }

    fn user_level(&self, user: &str) -> Power {
        if self.is_v12_creator(user) {
            return UNLIMITED;
        }
        match self.power {
            Some(p) => p
                .content()
                .get("users")
                .and_then(|u| u.get(user))
                .and_then(|x| parse_power(self.v, x))
                .unwrap_or_else(|| self.field("users_default", 0)),
            None => {
                if self.creator() == Some(user) {
                    100
                } else {
                    0
                }
            }
        }
    }

    fn event_level(&self, kind: &str, is_state: bool) -> Power {
        // state_default is 50 with or without a power levels event (m.room.power_levels).
        let default = if is_state {
            self.field("state_default", 50)
        } else {
            self.field("events_default", 0)
        };
        self.power
            .and_then(|p| p.content().get("events"))
            .and_then(|e| e.get(kind))
            .and_then(|x| parse_power(self.v, x))
            .unwrap_or(default)
    }
}

/// "current membership state": `content.membership` of the user's member event in `state`.
fn membership_of<'a>(state: &'a dyn AuthState, user: &str) -> Option<&'a str> {
    state.get("m.room.member", user)?.membership()
}

/// The authorization rules: whether `event` is allowed by `state` (the state before it, its
/// auth events, or the current state). For room version 12, `state` must hold the create
/// event. The auth-events checks (rule 2 of v1-11, 2-3 of v12) are [`check_auth_events`].
pub fn authorize(
    v: &RoomVersion,
    event: &Pdu,
    state: &dyn AuthState,
    signed_by: &SignedBy<'_>,
) -> Result<(), Rejection> {
    let no = |rule: Rule, reason: String| Err(reject(v, rule, reason));
    // Rule 1: m.room.create (by type, whatever the state key).
    if event.kind == "m.room.create" {
        return authorize_create(v, event);
    }
    let Some(create) = state.get("m.room.create", "") else {
        return no(
            Rule::NoCreate,
            "there is no m.room.create event in the state".into(),
        );
    };
    let room = Room {
        v,
        create,
        power: state.get("m.room.power_levels", ""),
    };
    // Rule 3 (4 in v12): m.federate.
    if create.content().get("m.federate") == Some(&Value::Bool(false))
        && event.sender_server() != create.sender_server()
    {
        return no(
            Rule::Federate,
            format!(
                "the room does not federate, and {} is not on {}",
                event.sender,
                create.sender_server()
            ),
        );
    }
    // Rule 4 of v1-5: m.room.aliases.
    if v.aliases_rule && event.kind == "m.room.aliases" {
        let Some(key) = &event.state_key else {
            return no(
                Rule::AliasesNoStateKey,
                "an aliases event needs a state_key".into(),
            );
        };
        if key != event.sender_server() {
            return no(
                Rule::AliasesDomain,
                format!("state_key {key:?} is not the sender's server"),
            );
        }
        return Ok(());
    }
    if event.kind == "m.room.member" {
        return authorize_member(&room, event, state, signed_by);
    }
    let sender_membership = membership_of(state, &event.sender);
    if sender_membership != Some("join") {
        return no(
            Rule::SenderNotJoined,
            format!(
                "{} is not joined (membership {})",
                event.sender,
                sender_membership.unwrap_or("none")
            ),
        );
    }
    let sender_level = room.user_level(&event.sender);
    if event.kind == "m.room.third_party_invite" {
        let invite = room.field("invite", 0);
        return if sender_level >= invite {
            Ok(())
        } else {
            no(
                Rule::ThirdPartyInvitePower,
                format!("power {sender_level} is below the invite level {invite}"),
            )
        };
    }
    let required = room.event_level(&event.kind, event.is_state());
    if required > sender_level {
        return no(
            Rule::RequiredPower,
            format!(
                "{} needs power {required}; {} has {}",
                event.kind,
                event.sender,
                show(sender_level)
            ),
        );
    }
    if let Some(key) = &event.state_key {
        if key.starts_with('@') && *key != event.sender {
            return no(
                Rule::StateKeyUser,
                format!("state_key {key:?} names a user other than the sender"),
            );
        }
    }
    // Rule 10 (9 in v6-11) goes by type, whatever the state key.
    if event.kind == "m.room.power_levels" {
        return authorize_power_levels(&room, event, sender_level);
    }
    if v.redaction_rule && event.kind == "m.room.redaction" {
        let redact = room.field("redact", 50);
        if sender_level >= redact {
            return Ok(());
        }
        let target = event.redacts.as_deref().and_then(ids::server_of);
        if target.is_some() && target == ids::server_of(&event.event_id) {
            return Ok(());
        }
        return no(
            Rule::RedactionPower,
            format!("power {sender_level} is below the redact level {redact}, and the redacted event is from another server"),
        );
    }
    Ok(())
}

fn show(p: Power) -> String {
    if p == UNLIMITED {
        "unlimited power (a creator)".into()
    } else {
        p.to_string()
    }
}

/// Rule 1, "If type is `m.room.create`" (v12: no `room_id`, `additional_creators`).
fn authorize_create(v: &RoomVersion, event: &Pdu) -> Result<(), Rejection> {
    let no = |rule: Rule, reason: String| Err(reject(v, rule, reason));
    if !event.prev_events.is_empty() {
        return no(
            Rule::CreatePrevEvents,
            "a create event has no prev_events".into(),
        );
    }
    if v.room_id_is_create {
        if event.json.get("room_id").is_some() {
            return no(
                Rule::CreateHasRoomId,
                "a room version 12 create event has no room_id: the room id is its hash".into(),
            );
        }
    } else if ids::server_of(&event.room_id) != Some(event.sender_server()) {
        return no(
            Rule::CreateRoomIdDomain,
            format!(
                "room {} is not on the sender's server {}",
                event.room_id,
                event.sender_server()
            ),
        );
    }
    if let Some(rv) = event.content().get("room_version") {
        if rv.as_str().and_then(version::RoomVersion::get).is_none() {
            return no(
                Rule::CreateRoomVersion,
                format!("room_version {rv} is not a known version"),
            );
        }
    }
    if v.create_has_creator && event.content().get("creator").is_none() {
        return no(Rule::CreateNoCreator, "content has no creator".into());
    }
    if v.room_id_is_create {
        if let Some(extra) = event.content().get("additional_creators") {
            let ok = extra
                .as_array()
                .is_some_and(|a| a.iter().all(|u| u.as_str().is_some_and(ids::is_user_id)));
            if !ok {
                return no(
                    Rule::CreateAdditionalCreators,
                    "additional_creators must be an array of user ids".into(),
                );
            }
        }
    }
    Ok(())
}

/// Rule 5 of v1-5 and v12, 4 of v6-11: "If type is `m.room.member`" (knocks from v7, restricted
/// joins from v8, `knock_restricted` from v10).
fn authorize_member(
    room: &Room<'_>,
    event: &Pdu,
    state: &dyn AuthState,
    signed_by: &SignedBy<'_>,
) -> Result<(), Rejection> {
    let v = room.v;
    let no = |rule: Rule, reason: String| Err(reject(v, rule, reason));
    let (Some(target), Some(membership)) = (event.state_key.as_deref(), event.membership()) else {
        return no(
            Rule::MemberMalformed,
            "a member event needs a state_key and content.membership".into(),
        );
    };
    if v.restricted {
        if let Some(via) = event.content().get("join_authorised_via_users_server") {
            let server = via.as_str().and_then(ids::server_of);
            if !server.is_some_and(signed_by) {
                return no(
                    Rule::MemberAuthorisedViaSignature,
                    format!("not validly signed by the server of join_authorised_via_users_server {via}"),
                );
            }
        }
    }
    let sender = event.sender.as_str();
    let sender_membership = membership_of(state, sender);
    let target_membership = membership_of(state, target);
    let join_rule = state
        .get("m.room.join_rules", "")
        .and_then(|e| e.content_str("join_rule"));
    match membership {
        "join" => {
            // The creator's first join, straight after the create event.
            let first = event.prev_events.len() == 1
                && event.prev_events[0] == room.create.event_id
                && room.creator() == Some(target);
            if first {
                return Ok(());
            }
            if sender != target {
                return no(
                    Rule::JoinSenderNotTarget,
                    format!("{sender} cannot join {target}"),
                );
            }
            if target_membership == Some("ban") {
                return no(Rule::JoinBanned, format!("{sender} is banned"));
            }
            let rule = join_rule.unwrap_or("");
            let invited_or_joined = matches!(target_membership, Some("invite" | "join"));
            let knock_rule = rule == "knock" && v.knocking;
            if rule == "invite" || knock_rule {
                if invited_or_joined {
                    return Ok(());
                }
            } else if (rule == "restricted" && v.restricted)
                || (rule == "knock_restricted" && v.knock_restricted)
            {
                if invited_or_joined {
                    return Ok(());
                }
                let via = event
                    .content()
                    .get("join_authorised_via_users_server")
                    .and_then(Value::as_str);
                let Some(via) = via else {
                    return no(
                        Rule::JoinRestrictedAuthoriser,
                        "a restricted join needs join_authorised_via_users_server".into(),
                    );
                };
                let can_invite = room.user_level(via) >= room.field("invite", 0);
                if membership_of(state, via) != Some("join") || !can_invite {
                    return no(
                        Rule::JoinRestrictedAuthoriser,
                        format!("{via} is not a joined member with power to invite"),
                    );
                }
                return Ok(());
            } else if rule == "public" {
                return Ok(());
            }
            no(
                Rule::JoinNotAllowed,
                format!(
                    "join rule {rule:?} does not let {sender} in (membership {})",
                    target_membership.unwrap_or("none")
                ),
            )
        }
        "invite" => {
            if let Some(tpi) = event.content().get("third_party_invite") {
                return authorize_3pid_invite(room, event, state, target, target_membership, tpi);
            }
            if sender_membership != Some("join") {
                return no(
                    Rule::InviteSenderNotJoined,
                    format!("{sender} is not joined"),
                );
            }
            if matches!(target_membership, Some("join" | "ban")) {
                return no(
                    Rule::InviteTargetJoinedOrBanned,
                    format!("{target} is {}", target_membership.unwrap_or("")),
                );
            }
            let level = room.user_level(sender);
            let invite = room.field("invite", 0);
            if level >= invite {
                Ok(())
            } else {
                no(
                    Rule::InvitePower,
                    format!("power {level} is below the invite level {invite}"),
                )
            }
        }
        "leave" => {
            if sender == target {
                let ok = matches!(sender_membership, Some("invite" | "join"))
                    || (v.knocking && sender_membership == Some("knock"));
                return if ok {
                    Ok(())
                } else {
                    no(
                        Rule::LeaveSelfNotMember,
                        format!(
                            "{sender} cannot leave from membership {}",
                            sender_membership.unwrap_or("none")
                        ),
                    )
                };
            }
            if sender_membership != Some("join") {
                return no(
                    Rule::LeaveSenderNotJoined,
                    format!("{sender} is not joined"),
                );
            }
            let level = room.user_level(sender);
            let ban = room.field("ban", 50);
            if target_membership == Some("ban") && level < ban {
                return no(
                    Rule::LeaveUnbanPower,
                    format!(
                        "unbanning needs the ban level {ban}; {sender} has {}",
                        show(level)
                    ),
                );
            }
            let kick = room.field("kick", 50);
            let target_level = room.user_level(target);
            if level >= kick && target_level < level {
                Ok(())
            } else {
                no(
                    Rule::LeaveKickPower,
                    format!(
                        "kicking needs the kick level {kick} and more power than {target} ({}); {sender} has {}",
                        show(target_level),
                        show(level)
                    ),
                )
            }
        }
        "ban" => {
            if sender_membership != Some("join") {
                return no(Rule::BanSenderNotJoined, format!("{sender} is not joined"));
            }
            let level = room.user_level(sender);
            let ban = room.field("ban", 50);
            let target_level = room.user_level(target);
            if level >= ban && target_level < level {
                Ok(())
            } else {
                no(
                    Rule::BanPower,
                    format!(
                        "banning needs the ban level {ban} and more power than {target} ({}); {sender} has {}",
                        show(target_level),
                        show(level)
                    ),
                )
            }
        }
        "knock" if v.knocking => {
            let rule = join_rule.unwrap_or("");
            if rule != "knock" && !(v.knock_restricted && rule == "knock_restricted") {
                return no(
                    Rule::KnockJoinRule,
                    format!("join rule {rule:?} does not allow knocking"),
                );
            }
            if sender != target {
                return no(
                    Rule::KnockSenderNotTarget,
                    format!("{sender} cannot knock for {target}"),
                );
            }
            if matches!(sender_membership, Some("ban" | "invite" | "join")) {
                return no(
                    Rule::KnockMembership,
                    format!("{sender} is already {}", sender_membership.unwrap_or("")),
                );
            }
            Ok(())
        }
        other => no(Rule::MemberUnknown, format!("unknown membership {other:?}")),
    }
}

/// The member rule's invite case "If `content` has a `third_party_invite` property".
fn authorize_3pid_invite(
    room: &Room<'_>,
    event: &Pdu,
    state: &dyn AuthState,
    target: &str,
    target_membership: Option<&str>,
    tpi: &Value,
) -> Result<(), Rejection> {
    let v = room.v;
    let no = |rule: Rule, reason: String| Err(reject(v, rule, reason));
    if target_membership == Some("ban") {
        return no(Rule::Invite3pidBanned, format!("{target} is banned"));
    }
    let Some(signed) = tpi.get("signed").filter(|s| s.is_object()) else {
        return no(
            Rule::Invite3pidNoSigned,
            "third_party_invite has no signed object".into(),
        );
    };
    let (Some(mxid), Some(token)) = (
        signed.get("mxid").and_then(Value::as_str),
        signed.get("token").and_then(Value::as_str),
    ) else {
        return no(
            Rule::Invite3pidSignedFields,
            "signed needs mxid and token".into(),
        );
    };
    if mxid != target {
        return no(
            Rule::Invite3pidMxid,
            format!("signed.mxid {mxid} is not {target}"),
        );
    }
    let Some(invite) = state.get("m.room.third_party_invite", token) else {
        return no(
            Rule::Invite3pidNoToken,
            format!("no m.room.third_party_invite with token {token:?}"),
        );
    };
    if invite.sender != event.sender {
        return no(
            Rule::Invite3pidSender,
            format!(
                "the third-party invite was sent by {}, not {}",
                invite.sender, event.sender
            ),
        );
    }
    let mut publics: Vec<&str> = Vec::new();
    publics.extend(invite.content_str("public_key"));
    if let Some(list) = invite
        .content()
        .get("public_keys")
        .and_then(Value::as_array)
    {
        publics.extend(list.iter().filter_map(|k| k.get("public_key")?.as_str()));
    }
    let signatures = signed.get("signatures").and_then(Value::as_object);
    for (entity, sigs) in signatures.into_iter().flatten() {
        for (key_id, _) in sigs.as_object().into_iter().flatten() {
            for public in &publics {
                let key = VerifyKey::from_base64(key_id, public).or_else(|_| {
                    let bytes = crate::base64::decode_url_safe(public).unwrap_or_default();
                    VerifyKey::from_base64(key_id, &crate::base64::encode(&bytes))
                });
                if let Ok(key) = key {
                    if sign::verify_signature(signed, entity, &key).is_ok() {
                        return Ok(());
                    }
                }
            }
        }
    }
    no(
        Rule::Invite3pidSignature,
        "no signature in signed verifies with a public key of the third-party invite".into(),
    )
}

const PL_FIELDS: [&str; 7] = [
    "users_default",
    "events_default",
    "state_default",
    "ban",
    "redact",
    "kick",
    "invite",
];

/// Rule 10 of v1-5 and v12, 9 of v6-11: "If type is `m.room.power_levels`" (integer checks
/// from v10, creators from v12).
fn authorize_power_levels(
    room: &Room<'_>,
    event: &Pdu,
    sender_level: Power,
) -> Result<(), Rejection> {
    let v = room.v;
    let no = |rule: Rule, reason: String| Err(reject(v, rule, reason));
    let content = &event.content();
    if v.integer_power_levels {
        for f in PL_FIELDS {
            if content.get(f).is_some_and(|x| x.as_i64().is_none()) {
                return no(
                    Rule::PowerLevelsNotInteger,
                    format!("{f} is not an integer"),
                );
            }
        }
        for f in ["events", "notifications"] {
            if let Some(x) = content.get(f) {
                let ok = x
                    .as_object()
                    .is_some_and(|m| m.values().all(|n| n.as_i64().is_some()));
                if !ok {
                    return no(
                        Rule::PowerLevelsNotIntegerMap,
                        format!("{f} is not an object of integers"),
                    );
                }
            }
        }
    }
    if let Some(users) = content.get("users") {
        let Some(users) = users.as_object() else {
            return no(Rule::PowerLevelsUsers, "users is not an object".into());
        };
        // Every key and value first (10.3), then the creators (10.4 of v12).
        for (user, level) in users {
            if !ids::is_user_id(user) {
                return no(
                    Rule::PowerLevelsUsers,
                    format!("users key {user:?} is not a user id"),
                );
            }
            let ok = if v.integer_power_levels {
                level.as_i64().is_some()
            } else {
                parse_power(v, level).is_some()
            };
            if !ok {
                return no(
                    Rule::PowerLevelsUsers,
                    format!("users value for {user} is not an integer"),
                );
            }
        }
        if v.room_id_is_create {
            if let Some(user) = users.keys().find(|u| room.is_v12_creator(u)) {
                return no(
                    Rule::PowerLevelsCreatorInUsers,
                    format!("{user} is a creator, whose power cannot be set"),
                );
            }
        }
    }
    let Some(old) = room.power else {
        return Ok(());
    };
    // The changes are judged by value: in v1-9 "50" and 50 are the same level. Each rejection
    // names its sub-rule: .1 for the current value, .2 for the new one (the field rule).
    let sub = |rule: Rule, n: u32, reason: String| {
        let mut r = reject(v, rule, reason);
        r.number = format!("{}.{n}", r.number);
        Err(r)
    };
    let read = |c: &Value, f: &str| c.get(f).map(|x| parse_power(v, x));
    for f in PL_FIELDS {
        let (was, now) = (read(old.content(), f), read(content, f));
        if was == now {
            continue;
        }
        for (n, which, value) in [(1, "current", was), (2, "new", now)] {
            if let Some(Some(value)) = value {
                if value > sender_level {
                    return sub(
                        Rule::PowerLevelsField,
                        n,
                        format!(
                            "changing {f}: the {which} value {value} is above the sender's power {}",
                            show(sender_level)
                        ),
                    );
                }
            }
        }
    }
    let same =
        |a: Option<&Value>, b: &Value| a.is_some_and(|a| parse_power(v, a) == parse_power(v, b));
    let maps: &[&str] = if v.notifications_power {
        &["events", "notifications"]
    } else {
        &["events"]
    };
    for m in maps {
        let empty = serde_json::Map::new();
        let was = old
            .content()
            .get(*m)
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let now = content.get(*m).and_then(Value::as_object).unwrap_or(&empty);
        for (k, old_v) in was {
            if same(now.get(k), old_v) {
                continue;
            }
            if parse_power(v, old_v).is_some_and(|x| x > sender_level) {
                return sub(
                    Rule::PowerLevelsEvents,
                    1,
                    format!(
                        "{m}.{k}: the current value is above the sender's power {}",
                        show(sender_level)
                    ),
                );
            }
        }
        for (k, new_v) in now {
            if same(was.get(k), new_v) {
                continue;
            }
            if parse_power(v, new_v).is_some_and(|x| x > sender_level) {
                return sub(
                    Rule::PowerLevelsEventsNew,
                    1,
                    format!(
                        "{m}.{k}: the new value is above the sender's power {}",
                        show(sender_level)
                    ),
                );
            }
        }
    }
    let empty = serde_json::Map::new();
    let was = old
        .content()
        .get("users")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let now = content
        .get("users")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    for (user, old_v) in was {
        if same(now.get(user), old_v) || *user == event.sender {
            continue;
        }
        if parse_power(v, old_v).is_some_and(|x| x >= sender_level) {
            return sub(
                Rule::PowerLevelsUsersChange,
                1,
                format!(
                    "{user} has power at least the sender's ({}), and cannot be changed by them",
                    show(sender_level)
                ),
            );
        }
    }
    for (user, new_v) in now {
        if same(was.get(user), new_v) {
            continue;
        }
        if parse_power(v, new_v).is_some_and(|x| x > sender_level) {
            return sub(
                Rule::PowerLevelsUsersNew,
                1,
                format!(
                    "{user}: the new value is above the sender's power {}",
                    show(sender_level)
                ),
            );
        }
    }
    Ok(())
}
