//! A fake server as the resident server of rooms it created: the membership handshakes the
//! server under test starts there (make_join and send_join v1/v2, make_leave and send_leave
//! v1/v2, make_knock and send_knock). Templates are built on the room's current state with the
//! core and checked against the rules before they are offered; what comes back is checked as
//! any PDU (format, signature, content hash) and then authorized, and a refusal names the rule.

use std::collections::HashMap;

use mxconform_pdu::build::{NewEvent, Origin};
use mxconform_pdu::version::EventIdFormat;
use mxconform_pdu::{ids, Pdu};
use serde_json::{json, Value};

use super::fake::{check_pdu, now_ms, Answer, Shared};
use super::room::RoomView;

/// The membership a handshake operation is about.
pub fn membership_of(operation: &str) -> Option<&'static str> {
    match operation {
        "makeJoin" | "sendJoinV1" | "sendJoinV2" => Some("join"),
        "makeLeave" | "sendLeaveV1" | "sendLeaveV2" => Some("leave"),
        "makeKnock" | "sendKnock" => Some("knock"),
        _ => None,
    }
}

fn error(status: u16, errcode: &str, message: String) -> Answer {
    super::fake::answer(status, json!({"errcode": errcode, "error": message}))
}

/// A user of ours who may vouch for a restricted join: joined, and allowed to invite.
fn authoriser(shared: &Shared, room: &RoomView) -> Option<String> {
    let state = room.current_state().ok()?;
    let get = |k: &str, s: &str| {
        state
            .get(&(k.to_string(), s.to_string()))
            .and_then(|id| room.events.get(id))
    };
    let pl = get("m.room.power_levels", "").map(|e| e.content());
    let level = |user: &str| -> i64 {
        let creators = room.version.room_id_is_create
            && get("m.room.create", "").is_some_and(|c| {
                c.sender == user
                    || c.content()
                        .get("additional_creators")
                        .and_then(Value::as_array)
                        .is_some_and(|a| a.iter().any(|u| u == user))
            });
        if creators {
            return i64::MAX;
        }
        pl.as_ref()
            .and_then(|p| p.get("users").and_then(|u| u.get(user)))
            .and_then(Value::as_i64)
            .or_else(|| {
                pl.as_ref()
                    .and_then(|p| p.get("users_default"))
                    .and_then(Value::as_i64)
            })
            .unwrap_or(0)
    };
    let invite = pl
        .as_ref()
        .and_then(|p| p.get("invite"))
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let suffix = format!(":{}", shared.name);
    state
        .iter()
        .filter(|((k, s), _)| k == "m.room.member" && s.ends_with(&suffix))
        .filter(|(_, id)| {
            room.events
                .get(*id)
                .is_some_and(|e| e.content().get("membership") == Some(&json!("join")))
        })
        .map(|((_, s), _)| s.clone())
        .find(|u| level(u) >= invite)
}

/// Whether the room's join rule is restricted (or knock_restricted) and the user's membership
/// is not already invite or join: then a resident must vouch for the join.
fn needs_authoriser(room: &RoomView, user: &str) -> bool {
    let Ok(state) = room.current_state() else {
        return false;
    };
    let get = |k: &str, s: &str| {
        state
            .get(&(k.to_string(), s.to_string()))
            .and_then(|id| room.events.get(id))
            .map(|e| e.content())
    };
    let rule = get("m.room.join_rules", "").and_then(|c| {
        c.get("join_rule")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    let restricted = matches!(rule.as_deref(), Some("restricted" | "knock_restricted"));
    let membership = get("m.room.member", user).and_then(|c| {
        c.get("membership")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    restricted && !matches!(membership.as_deref(), Some("join" | "invite"))
}

/// Whether `user` is joined to one of the rooms the join rules' `allow` list names, as far as
/// this fake server knows those rooms.
fn allowed_by_membership(
    shared_rooms: &HashMap<String, RoomView>,
    room: &RoomView,
    user: &str,
) -> bool {
    let Ok(state) = room.current_state() else {
        return false;
    };
    let Some(rules) = state
        .get(&("m.room.join_rules".to_string(), String::new()))
        .and_then(|id| room.events.get(id))
        .map(|e| e.content())
    else {
        return false;
    };
    rules
        .get("allow")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|a| a.get("type") == Some(&json!("m.room_membership")))
        .filter_map(|a| a.get("room_id").and_then(Value::as_str))
        .filter_map(|r| shared_rooms.get(r))
        .any(|other| {
            other.current_state().ok().is_some_and(|s| {
                s.get(&("m.room.member".to_string(), user.to_string()))
                    .and_then(|id| other.events.get(id))
                    .is_some_and(|e| e.content().get("membership") == Some(&json!("join")))
            })
        })
}

/// make_join, make_leave, make_knock: a template for `user` (of the server under test) on the
/// room's extremities, refused with the rule when the rules would refuse the event.
pub fn on_make(
    shared: &Shared,
    operation: &str,
    params: &HashMap<String, String>,
    query: &[(String, String)],
) -> Answer {
    let membership = membership_of(operation).unwrap_or("join");
    let room_id = params.get("roomId").cloned().unwrap_or_default();
    let user = params.get("userId").cloned().unwrap_or_default();
    let target = &shared.client.target.server_name;
    if ids::server_of(&user) != Some(target.as_str()) {
        return error(
            403,
            "M_FORBIDDEN",
            format!("{user} is not a user of the requesting server {target}"),
        );
    }
    let Ok(rooms) = shared.rooms.lock() else {
        return error(500, "M_UNKNOWN", "lock".into());
    };
    let Some(room) = rooms.get(&room_id) else {
        return error(
            404,
            "M_NOT_FOUND",
            format!("this server has no room {room_id}"),
        );
    };
    if membership != "leave" {
        let mut offered: Vec<&str> = query
            .iter()
            .filter(|(k, _)| k == "ver")
            .map(|(_, v)| v.as_str())
            .collect();
        if offered.is_empty() && membership == "join" {
            // No `ver`: the requesting server supports version 1 only.
            offered.push("1");
        }
        if !offered.contains(&room.version.id) {
            return super::fake::answer(
                400,
                json!({"errcode": "M_INCOMPATIBLE_ROOM_VERSION",
                    "error": format!("the room is version {}, which the request does not list", room.version.id),
                    "room_version": room.version.id}),
            );
        }
    }
    if membership == "knock" && !room.version.knocking {
        return super::fake::answer(
            400,
            json!({"errcode": "M_INCOMPATIBLE_ROOM_VERSION",
                "error": format!("room version {} has no knocking", room.version.id),
                "room_version": room.version.id}),
        );
    }
    let mut content = json!({"membership": membership});
    if membership == "join" && room.version.restricted && needs_authoriser(room, &user) {
        if !allowed_by_membership(&rooms, room, &user) {
            return error(
                400,
                "M_UNABLE_TO_GRANT_JOIN",
                format!("{user} is not joined to a room the join rules allow"),
            );
        }
        match authoriser(shared, room) {
            Some(a) => content["join_authorised_via_users_server"] = json!(a),
            None => {
                return error(
                    400,
                    "M_UNABLE_TO_AUTHORISE_JOIN",
                    "no user of this server may invite".into(),
                )
            }
        }
    }
    let origin = Origin {
        server_name: &shared.name,
        key: &shared.key,
    };
    let new = NewEvent::new("m.room.member", Some(&user), &user, content, now_ms());
    let pdu = match room.build(new, origin) {
        Ok(p) => p,
        Err(e) => return error(500, "M_UNKNOWN", format!("building the template: {e}")),
    };
    if let Err(rule) = room.authorize(&pdu) {
        return error(403, "M_FORBIDDEN", format!("the rules refuse it: {rule}"));
    }
    let mut template = pdu.json.clone();
    if let Some(m) = template.as_object_mut() {
        m.remove("hashes");
        m.remove("signatures");
        if room.version.event_ids != EventIdFormat::Opaque {
            m.remove("event_id");
        }
        m.insert("origin".into(), json!(shared.name));
    }
    super::fake::answer(
        200,
        json!({"room_version": room.version.id, "event": template}),
    )
}

/// send_join (v1, v2), send_leave (v1, v2), send_knock: the signed event, checked and
/// authorized, taken into the room; the answer each version gives.
pub async fn on_send(
    shared: &Shared,
    operation: &str,
    params: &HashMap<String, String>,
    body: Option<Value>,
) -> Answer {
    let membership = membership_of(operation).unwrap_or("join");
    let room_id = params.get("roomId").cloned().unwrap_or_default();
    let event_id = params.get("eventId").cloned().unwrap_or_default();
    let Some(version) = shared
        .rooms
        .lock()
        .ok()
        .and_then(|r| r.get(&room_id).map(|room| room.version))
    else {
        return error(
            404,
            "M_NOT_FOUND",
            format!("this server has no room {room_id}"),
        );
    };
    let Some(mut json) = body.filter(Value::is_object) else {
        return error(400, "M_BAD_JSON", "the body is not an event".into());
    };
    let pdu = match check_pdu(shared, version, &json).await {
        Ok(p) => p,
        Err(why) => {
            shared
                .inbox
                .note_violation(format!("{operation}: the event fails: {why}"));
            return error(400, "M_BAD_JSON", why);
        }
    };
    let target = &shared.client.target.server_name;
    let problem = if pdu.event_id != event_id {
        Some(format!(
            "the path names {event_id}, the event is {}",
            pdu.event_id
        ))
    } else if pdu.kind != "m.room.member" || pdu.state_key.as_deref() != Some(pdu.sender.as_str()) {
        Some(format!(
            "{} is not a membership event of its sender",
            pdu.event_id
        ))
    } else if pdu.content().get("membership") != Some(&json!(membership)) {
        Some(format!(
            "{operation} with a membership other than {membership}"
        ))
    } else if ids::server_of(&pdu.sender) != Some(target.as_str()) {
        Some(format!("{} is not a user of {target}", pdu.sender))
    } else if pdu.room_id != room_id {
        Some(format!(
            "the event is for room {}, the path names {room_id}",
            pdu.room_id
        ))
    } else {
        None
    };
    if let Some(why) = problem {
        shared.inbox.note_violation(format!("{operation}: {why}"));
        return error(400, "M_BAD_JSON", why);
    }
    // A restricted join one of our users vouched for carries our signature too.
    let vouched = pdu
        .content()
        .get("join_authorised_via_users_server")
        .and_then(Value::as_str)
        .is_some_and(|u| ids::server_of(u) == Some(shared.name.as_str()));
    let pdu = if vouched {
        let mut redacted = mxconform_pdu::redact::redact(version, &json);
        mxconform_pdu::sign::sign_json(&mut redacted, &shared.name, &shared.key);
        if let Some(sig) = redacted
            .get("signatures")
            .and_then(|s| s.get(&shared.name))
            .cloned()
        {
            json["signatures"][shared.name.clone()] = sig;
        }
        match Pdu::from_json(version, json.clone()) {
            Ok(p) => p,
            Err(e) => return error(400, "M_BAD_JSON", e.to_string()),
        }
    } else {
        pdu
    };
    let Ok(mut rooms) = shared.rooms.lock() else {
        return error(500, "M_UNKNOWN", "lock".into());
    };
    let Some(room) = rooms.get_mut(&room_id) else {
        return error(
            404,
            "M_NOT_FOUND",
            format!("this server has no room {room_id}"),
        );
    };
    if room.events.contains_key(&pdu.event_id) {
        // The same event again (a retried request): the same answer.
    } else if let Err(rule) = room.add(pdu.clone()) {
        return error(403, "M_FORBIDDEN", format!("the rules refuse it: {rule}"));
    }
    let wrap =
        |pdus: Vec<&Pdu>| -> Vec<Value> { pdus.into_iter().map(|p| p.json.clone()).collect() };
    match operation {
        "sendJoinV1" | "sendJoinV2" => {
            let before = room.state_before(&pdu.prev_events).unwrap_or_default();
            let state_ids: Vec<String> = before.into_values().collect();
            let mut roots = state_ids.clone();
            roots.extend(pdu.auth_events.iter().cloned());
            let chain = room.auth_chain(&roots);
            let state: Vec<&Pdu> = state_ids
                .iter()
                .filter_map(|i| room.events.get(i))
                .collect();
            let mut answer = json!({
                "origin": shared.name,
                "state": wrap(state),
                "auth_chain": wrap(chain),
            });
            if vouched {
                answer["event"] = json;
            }
            if operation == "sendJoinV1" {
                super::fake::answer(200, json!([200, answer]))
            } else {
                answer["members_omitted"] = json!(false);
                super::fake::answer(200, answer)
            }
        }
        "sendKnock" => {
            // Since v1.16: full PDUs of the room's version, the create event among them.
            let stripped = room.stripped_state();
            super::fake::answer(200, json!({"knock_room_state": stripped}))
        }
        "sendLeaveV1" => super::fake::answer(200, json!([200, {}])),
        _ => super::fake::answer(200, json!({})),
    }
}
