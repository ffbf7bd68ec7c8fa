//! This server's users joining rooms other servers host: make_join through each server the
//! client named (or the room id's, or an alias's directory answer) until one answers, the
//! template signed, send_join, and the answer checked before the room is kept: every state
//! and auth-chain event's signatures and hash (an event that fails is dropped; a hash
//! mismatch keeps the redacted event), each authorized by its own auth events, and the join
//! by the state given.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use mxconform_pdu::auth::authorize_by_auth_events;
use mxconform_pdu::build::{hash_and_sign, Origin};
use mxconform_pdu::version::EventIdFormat;
use mxconform_pdu::{Pdu, RoomVersion};
use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};
use crate::router::percent_encode;
use crate::state::now_ms;
use crate::Server;

/// Where a room of another server can be joined through: the servers the client named, then
/// the room id's server (room versions before 12 name it).
pub fn candidates(room_id: &str, via: &[String], ours: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let from_id = room_id.split_once(':').map(|(_, s)| s.to_string());
    for s in via.iter().cloned().chain(from_id) {
        if s != ours && !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// The room an alias of another server names, and the servers to join it through, from that
/// server's directory.
pub async fn resolve_alias(server: &Server, alias: &str) -> ApiResult<(String, Vec<String>)> {
    let fed = server
        .federation
        .as_ref()
        .ok_or_else(|| ApiError::not_found(format!("no room has the alias {alias}")))?;
    let host = alias
        .split_once(':')
        .map(|(_, s)| s)
        .ok_or_else(|| ApiError::invalid_param("a room alias has a server name"))?;
    let path = format!(
        "/_matrix/federation/v1/query/directory?room_alias={}",
        percent_encode(alias)
    );
    let a = fed
        .request(server, host, "GET", &path, None)
        .await
        .map_err(ApiError::connection_failed)?;
    if a.status != 200 {
        return Err(ApiError::not_found(format!(
            "no room has the alias {alias} ({host} answered {})",
            a.status
        )));
    }
    let room_id = a
        .body
        .get("room_id")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_status(format!("{host}'s directory answer has no room_id")))?
        .to_string();
    let servers = a
        .body
        .get("servers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    Ok((room_id, servers))
}

/// Joins `user` to `room_id` through the first of `servers` that lets it; the error of the
/// last one tried otherwise (a refusal keeps its status and errcode).
pub async fn join(
    server: Arc<Server>,
    user: String,
    room_id: String,
    servers: Vec<String>,
    content: Value,
) -> ApiResult<Value> {
    if servers.is_empty() {
        return Err(ApiError::not_found(format!(
            "room {room_id} is not known here, and no server to join it through was given"
        )));
    }
    let mut last = None;
    for dest in &servers {
        match join_through(&server, &user, &room_id, dest, &content).await {
            Ok(()) => return Ok(json!({"room_id": room_id})),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| ApiError::not_found("no server let the user join")))
}

/// A refusal from another server as this server's answer: its status and errcode when it gave
/// a Matrix error, else 502.
fn refused(dest: &str, op: &str, status: u16, body: &Value) -> ApiError {
    let message = format!(
        "{dest} refused {op} ({status}): {}",
        body.get("error").and_then(Value::as_str).unwrap_or("")
    );
    match (status, body.get("errcode").and_then(Value::as_str)) {
        (403, _) => ApiError::forbidden(message),
        (404, _) => ApiError::not_found(message),
        (400, Some("M_INCOMPATIBLE_ROOM_VERSION")) => ApiError::incompatible_room_version(message),
        (400, Some("M_UNABLE_TO_AUTHORISE_JOIN")) => ApiError {
            status: 400,
            errcode: "M_UNABLE_TO_AUTHORISE_JOIN",
            message,
            extra: None,
        },
        (400, Some("M_UNABLE_TO_GRANT_JOIN")) => ApiError {
            status: 400,
            errcode: "M_UNABLE_TO_GRANT_JOIN",
            message,
            extra: None,
        },
        _ => ApiError::bad_status(message),
    }
}

async fn join_through(
    server: &Arc<Server>,
    user: &str,
    room_id: &str,
    dest: &str,
    content: &Value,
) -> ApiResult<()> {
    let fed = server
        .federation
        .as_ref()
        .ok_or_else(|| ApiError::not_found("this server does not federate"))?;
    let Handshake {
        v,
        pdu: join,
        answer: mut sent,
        ..
    } = handshake(server, user, room_id, dest, "join", content).await?;
    // A resident that vouched for a restricted join gives the event back with its signature.
    let join = match sent.get("event") {
        Some(e) if e.is_object() => match Pdu::from_json(v, e.clone()) {
            Ok(p) if p.event_id == join.event_id => p,
            _ => join,
        },
        _ => join,
    };
    let mut checked: BTreeMap<String, Pdu> = BTreeMap::new();
    let mut state_ids: BTreeSet<String> = BTreeSet::new();
    let mut raw = Vec::new();
    let mut is_state = Vec::new();
    for (field, state) in [("auth_chain", false), ("state", true)] {
        if let Some(Value::Array(events)) = sent.get_mut(field).map(Value::take) {
            is_state.extend(std::iter::repeat_n(state, events.len()));
            raw.extend(events);
        }
    }
    // An event whose signatures fail is dropped; one whose hash fails kept redacted.
    for (p, state) in fed
        .verify_many(server, v, raw)
        .await
        .into_iter()
        .zip(is_state)
    {
        let Ok(p) = p else {
            continue;
        };
        if p.room_id != room_id {
            continue;
        }
        if state {
            state_ids.insert(p.event_id.clone());
        }
        checked.insert(p.event_id.clone(), p);
    }
    // Each event by its own auth events (those that fail, and those citing them, dropped).
    let mut order: Vec<&Pdu> = checked.values().collect();
    order.sort_by_key(|p| (p.depth, p.origin_server_ts));
    let create = order
        .iter()
        .find(|p| p.is("m.room.create", ""))
        .map(|p| (*p).clone())
        .ok_or_else(|| {
            ApiError::bad_status(format!("{dest}'s send_join answer has no create event"))
        })?;
    let mut accepted: std::collections::HashMap<&str, &Pdu> = std::collections::HashMap::new();
    for p in order {
        let auth: Vec<Option<&Pdu>> = p
            .auth_events
            .iter()
            .map(|id| accepted.get(id.as_str()).copied())
            .collect();
        let signed = |s: &str| p.json.get("signatures").and_then(|x| x.get(s)).is_some();
        if authorize_by_auth_events(v, p, &auth, &|_| false, Some(&create), &signed).is_ok() {
            accepted.insert(p.event_id.as_str(), p);
        }
    }
    let accepted: BTreeSet<String> = accepted.into_keys().map(str::to_string).collect();
    let (state, chain): (Vec<Pdu>, Vec<Pdu>) = checked
        .into_values()
        .filter(|p| accepted.contains(&p.event_id))
        .partition(|p| state_ids.contains(&p.event_id));
    {
        let by_key: std::collections::HashMap<(String, String), &Pdu> = state
            .iter()
            .filter_map(|p| {
                p.state_key
                    .as_ref()
                    .map(|k| ((p.kind.clone(), k.clone()), p))
            })
            .collect();
        let signed = |s: &str| join.json.get("signatures").and_then(|x| x.get(s)).is_some();
        mxconform_pdu::authorize(v, &join, &by_key, &signed).map_err(|r| {
            ApiError::forbidden(format!(
                "the join is not allowed by the state {dest} gave: {r}"
            ))
        })?;
    }
    server.write(|s, batch| {
        s.join_remote_room(batch, v, room_id, state, chain, join)
            .map(|_| ())
    })
}

/// A membership change of `user` through the resident server `dest`: the event it signs.
pub struct Handshake {
    pub v: &'static RoomVersion,
    /// The event as sent (signed by this server).
    pub event: Value,
    pub pdu: Pdu,
    /// The answer of send_join, send_leave or send_knock.
    pub answer: Value,
}

/// A join, leave or knock of `user` through `dest`: make_join / make_leave / make_knock, the
/// template checked to be that change, `extra` content added (a join's display name), signed,
/// then send_join (v2) / send_leave (v2) / send_knock.
pub async fn handshake(
    server: &Arc<Server>,
    user: &str,
    room_id: &str,
    dest: &str,
    membership: &str,
    extra: &Value,
) -> ApiResult<Handshake> {
    let fed = server
        .federation
        .as_ref()
        .ok_or_else(|| ApiError::not_found("this server does not federate"))?;
    let ours = server.config.server_name.clone();
    let key = server
        .read(|s| s.signing_key.clone())
        .ok_or_else(|| ApiError::internal("the server has no signing key"))?;
    // make_leave takes no room versions: the leaving server is in the room already.
    let (make, send, versions) = match membership {
        "join" => ("make_join", "v2/send_join", true),
        "leave" => ("make_leave", "v2/send_leave", false),
        "knock" => ("make_knock", "v1/send_knock", true),
        other => return Err(ApiError::internal(format!("no handshake for {other}"))),
    };
    let query = if versions {
        let versions: Vec<String> = mxconform_pdu::version::ALL
            .iter()
            .map(|v| format!("ver={}", v.id))
            .collect();
        format!("?{}", versions.join("&"))
    } else {
        String::new()
    };
    let path = format!(
        "/_matrix/federation/v1/{make}/{}/{}{query}",
        percent_encode(room_id),
        percent_encode(user)
    );
    let made = fed
        .client
        .request(&ours, &key, dest, "GET", &path, None)
        .await
        .map_err(ApiError::connection_failed)?;
    if made.status != 200 {
        return Err(refused(dest, make, made.status, &made.body));
    }
    let version = made
        .body
        .get("room_version")
        .and_then(Value::as_str)
        .unwrap_or("1")
        .to_string();
    let v = RoomVersion::get(&version).ok_or_else(|| {
        ApiError::unsupported_room_version(format!("{dest} offers room version {version}"))
    })?;
    let mut event = made
        .body
        .get("event")
        .filter(|e| e.is_object())
        .cloned()
        .ok_or_else(|| ApiError::bad_status(format!("{dest}'s {make} has no event")))?;
    // The template must be the change the user asked for.
    let fits = event.get("type").and_then(Value::as_str) == Some("m.room.member")
        && event.get("state_key").and_then(Value::as_str) == Some(user)
        && event.get("sender").and_then(Value::as_str) == Some(user)
        && event.pointer("/content/membership").and_then(Value::as_str) == Some(membership);
    if !fits {
        return Err(ApiError::bad_status(format!(
            "{dest}'s {make} template is not {user}'s {membership}"
        )));
    }
    if let (Some(c), Some(extra)) = (
        event.get_mut("content").and_then(Value::as_object_mut),
        extra.as_object(),
    ) {
        for (k, val) in extra {
            if k != "membership" && !c.contains_key(k) {
                c.insert(k.clone(), val.clone());
            }
        }
    }
    event["origin"] = json!(ours);
    event["origin_server_ts"] = json!(now_ms());
    if v.event_ids == EventIdFormat::Opaque {
        event["event_id"] = json!(format!("${}:{ours}", crate::state::random_token(12)));
    }
    if let Some(m) = event.as_object_mut() {
        m.remove("signatures");
        m.remove("hashes");
    }
    hash_and_sign(
        v,
        &mut event,
        Origin {
            server_name: &ours,
            key: &key,
        },
    );
    let pdu = Pdu::from_json(v, event.clone())
        .map_err(|e| ApiError::bad_status(format!("the event made from {dest}'s template: {e}")))?;
    let path = format!(
        "/_matrix/federation/{send}/{}/{}",
        percent_encode(room_id),
        percent_encode(&pdu.event_id)
    );
    let sent = fed
        .client
        .request(&ours, &key, dest, "PUT", &path, Some(&event))
        .await
        .map_err(ApiError::connection_failed)?;
    if sent.status != 200 {
        return Err(refused(dest, send, sent.status, &sent.body));
    }
    Ok(Handshake {
        v,
        event,
        pdu,
        answer: sent.body,
    })
}

/// Leaves (rejects the invite to, or withdraws the knock on) a room this server is not in,
/// through the server that invited or the one knocked through.
pub async fn leave_remote(
    server: Arc<Server>,
    user: String,
    room_id: String,
    content: Value,
) -> ApiResult<Value> {
    let via = server
        .read(|s| {
            s.remote_memberships
                .get(&user)
                .and_then(|r| r.get(&room_id))
                .map(|m| m.via.clone())
        })
        .ok_or_else(|| ApiError::not_found(format!("unknown room {room_id}")))?;
    let Handshake { event, pdu, .. } =
        handshake(&server, &user, &room_id, &via, "leave", &content).await?;
    let event_id = pdu.event_id;
    server.write(|s, batch| {
        s.put_remote_membership(
            batch,
            &user,
            &room_id,
            Some(crate::state::RemoteMembership {
                pos: 0,
                membership: "leave".into(),
                event,
                event_id,
                stripped: Vec::new(),
                via,
            }),
        );
        Ok(json!({}))
    })
}

/// Knocks on a room this server is not in, through the first of `servers` that takes it.
pub async fn knock_remote(
    server: Arc<Server>,
    user: String,
    room_id: String,
    servers: Vec<String>,
    content: Value,
) -> ApiResult<Value> {
    let mut last = None;
    for dest in &servers {
        match handshake(&server, &user, &room_id, dest, "knock", &content).await {
            Ok(Handshake {
                event, pdu, answer, ..
            }) => {
                let event_id = pdu.event_id;
                let stripped = answer
                    .get("knock_room_state")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let dest = dest.clone();
                return server.write(|s, batch| {
                    s.put_remote_membership(
                        batch,
                        &user,
                        &room_id,
                        Some(crate::state::RemoteMembership {
                            pos: 0,
                            membership: "knock".into(),
                            event,
                            event_id,
                            stripped,
                            via: dest,
                        }),
                    );
                    Ok(json!({"room_id": room_id}))
                });
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        ApiError::not_found(format!(
            "room {room_id} is not known here, and no server to knock through was given"
        ))
    }))
}

/// Asks `dest` to sign the invite of one of its users (invite v2, with the room's stripped
/// state); returns the event it gives back, once its signature checks.
pub async fn invite_remote(
    server: &Arc<Server>,
    room_id: &str,
    dest: &str,
    invite: &Pdu,
) -> ApiResult<Value> {
    let fed = server
        .federation
        .as_ref()
        .ok_or_else(|| ApiError::not_found("this server does not federate"))?;
    let ours = server.config.server_name.clone();
    let (key, v, stripped) = server.read(|s| {
        (
            s.signing_key.clone(),
            s.room_version_of(room_id),
            s.stripped_state_pdus(room_id),
        )
    });
    let key = key.ok_or_else(|| ApiError::internal("the server has no signing key"))?;
    let v = v.ok_or_else(|| ApiError::not_found(format!("unknown room {room_id}")))?;
    let path = format!(
        "/_matrix/federation/v2/invite/{}/{}",
        percent_encode(room_id),
        percent_encode(&invite.event_id)
    );
    let body = json!({"room_version": v.id, "event": invite.json, "invite_room_state": stripped});
    let a = fed
        .client
        .request(&ours, &key, dest, "PUT", &path, Some(&body))
        .await
        .map_err(ApiError::connection_failed)?;
    if a.status != 200 {
        return Err(refused(dest, "invite", a.status, &a.body));
    }
    let event = a
        .body
        .get("event")
        .filter(|e| e.is_object())
        .cloned()
        .ok_or_else(|| ApiError::bad_status(format!("{dest}'s invite answer has no event")))?;
    // The invitee's server must have signed it.
    let keys = fed
        .keys_of(server, dest)
        .await
        .map_err(|e| ApiError::bad_status(format!("the keys of {dest}: {e}")))?;
    let redacted = mxconform_pdu::redact::redact(v, &event);
    mxconform_pdu::sign::verify_signed_by(&redacted, dest, &|key_id: &str| {
        keys.key(key_id).map(|(k, _)| k.clone())
    })
    .map_err(|e| ApiError::bad_status(format!("{dest}'s signature on the invite: {e}")))?;
    Ok(event)
}

/// A signed request to another server on behalf of a client (profile, directory, keys,
/// public rooms): its JSON answer, or its refusal as this server's error.
pub async fn ask(
    server: &Server,
    dest: &str,
    method: &str,
    path_and_query: &str,
    body: Option<&Value>,
) -> ApiResult<Value> {
    let fed = server
        .federation
        .as_ref()
        .ok_or_else(|| ApiError::not_found("this server does not federate"))?;
    let a = fed
        .request(server, dest, method, path_and_query, body)
        .await
        .map_err(ApiError::connection_failed)?;
    if a.status != 200 {
        return Err(refused(dest, path_and_query, a.status, &a.body));
    }
    Ok(a.body)
}
