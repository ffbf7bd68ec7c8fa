//! Rooms: creation (room versions 10, 11 and 12), and membership (join, invite, leave, kick,
//! ban, unban, knock, forget) under the auth rules of those versions.

use mxconform_generated::client_server as cs;
use serde_json::{json, Map, Value};

use super::discovery::{DEFAULT_ROOM_VERSION, ROOM_VERSIONS};
use super::{Ctx, Reply};
use crate::error::{ApiError, ApiResult};
use crate::state::{Append, State};
use crate::store::Batch;

/// Appends a state event after checking the auth rules for it.
pub fn send_state(
    state: &mut State,
    batch: &mut Batch,
    room_id: &str,
    sender: &str,
    kind: &str,
    key: &str,
    content: Value,
) -> ApiResult<String> {
    if kind == "m.room.member" {
        let m = content
            .get("membership")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        return change_membership(state, batch, room_id, sender, key, &m, content);
    }
    check_send(state, room_id, sender, kind, Some(key), &content)?;
    let (_, id) = state.append(
        batch,
        Append::new(room_id, sender, kind, Some(key), content),
    )?;
    Ok(id)
}

/// The aliases an `m.room.canonical_alias` event adds must exist and point to the room
/// (aliases already in the current event are not checked again, nor removed ones).
fn check_canonical_alias(state: &State, room_id: &str, content: &Value) -> ApiResult<()> {
    let current = state.state_content(room_id, "m.room.canonical_alias", "");
    let already = |a: &str| {
        current.is_some_and(|c| {
            c.get("alias").and_then(Value::as_str) == Some(a)
                || c.get("alt_aliases")
                    .and_then(Value::as_array)
                    .is_some_and(|l| l.iter().any(|x| x.as_str() == Some(a)))
        })
    };
    let mut aliases: Vec<&Value> = content
        .get("alt_aliases")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    if let Some(a) = content.get("alias").filter(|a| !a.is_null()) {
        aliases.push(a);
    }
    for a in aliases {
        let a = a
            .as_str()
            .ok_or_else(|| ApiError::invalid_param("aliases must be strings"))?;
        if mxconform_generated::ids::RoomAliasId::parse(a).is_err() {
            return Err(ApiError::invalid_param(format!("{a} is not a room alias")));
        }
        if !already(a) && state.aliases.get(a).map(|(r, _)| r.as_str()) != Some(room_id) {
            return Err(ApiError::bad_alias(format!(
                "{a} does not point to this room"
            )));
        }
    }
    Ok(())
}

/// What the spec's size limits allow: type and state key at most 255 bytes, and the whole
/// event at most 65536 bytes as federation would carry it (estimated as the fields plus room
/// for the hashes, signatures and references federation adds).
pub fn check_event_size(
    room_id: &str,
    sender: &str,
    kind: &str,
    key: Option<&str>,
    content: &Value,
) -> ApiResult<()> {
    const FIELD_MAX: usize = 255;
    const EVENT_MAX: usize = 65536;
    /// Hashes, signatures, prev/auth event ids, depth, timestamps and keys.
    const FEDERATION_OVERHEAD: usize = 1024;
    if kind.len() > FIELD_MAX {
        return Err(ApiError::too_large("the event type is over 255 bytes"));
    }
    if key.is_some_and(|k| k.len() > FIELD_MAX) {
        return Err(ApiError::too_large("the state key is over 255 bytes"));
    }
    let size = content.to_string().len()
        + kind.len()
        + key.map_or(0, str::len)
        + room_id.len()
        + sender.len()
        + FEDERATION_OVERHEAD;
    if size > EVENT_MAX {
        return Err(ApiError::too_large(format!(
            "the event would be about {size} bytes; events are at most 65536"
        )));
    }
    Ok(())
}

/// What a non-membership event from `sender` must satisfy beyond the authorization rules
/// (which [`State::append`] applies with the core): its size, and aliases that exist.
pub fn check_send(
    state: &State,
    room_id: &str,
    sender: &str,
    kind: &str,
    key: Option<&str>,
    content: &Value,
) -> ApiResult<()> {
    check_event_size(room_id, sender, kind, key, content)?;
    state.room(room_id)?;
    if kind == "m.room.canonical_alias" && key == Some("") {
        check_canonical_alias(state, room_id, content)?;
    }
    Ok(())
}

fn join_rule(state: &State, room_id: &str) -> String {
    state
        .state_content(room_id, "m.room.join_rules", "")
        .and_then(|c| c.get("join_rule"))
        .and_then(Value::as_str)
        .unwrap_or("invite")
        .to_string()
}

/// Whether a restricted room's `allow` list lets `user` join.
pub(super) fn restricted_allows(state: &State, room_id: &str, user: &str) -> bool {
    let Some(allow) = state
        .state_content(room_id, "m.room.join_rules", "")
        .and_then(|c| c.get("allow"))
        .and_then(Value::as_array)
    else {
        return false;
    };
    allow.iter().any(|a| {
        a.get("type").and_then(Value::as_str) == Some("m.room_membership")
            && a.get("room_id")
                .and_then(Value::as_str)
                .and_then(|r| state.rooms.get(r))
                .is_some_and(|r| r.membership(user) == Some("join"))
    })
}

/// Changes `target`'s membership to `new` by `sender`, under the auth rules.
pub fn change_membership(
    state: &mut State,
    batch: &mut Batch,
    room_id: &str,
    sender: &str,
    target: &str,
    new: &str,
    mut content: Value,
) -> ApiResult<String> {
    let room = state.room(room_id)?;
    let target_m = room.membership(target).map(str::to_string);
    // Who may join or change whose membership is the authorization rules' to say (the core
    // applies them in `State::append`). Here: what is not an event at all, and the member
    // who vouches for a join that only a restricted rule allows.
    let mut authorised_via: Option<String> = None;
    match new {
        "join" if sender == target => {
            let rule = join_rule(state, room_id);
            let plain = matches!(target_m.as_deref(), Some("join" | "invite")) || rule == "public";
            if !plain
                && matches!(rule.as_str(), "restricted" | "knock_restricted")
                && restricted_allows(state, room_id, target)
            {
                // A joined member who may invite, as the rules from room version 8 require.
                let needed = state.required_level(room, "invite", false);
                let mut members: Vec<&String> = room.joined().collect();
                members.sort();
                authorised_via = members
                    .into_iter()
                    .find(|m| State::meets(state.power_level(room, m), needed))
                    .cloned();
            }
        }
        "leave" if sender != target => {
            // Kicking or unbanning someone who has no membership changes nothing.
            if !matches!(
                target_m.as_deref(),
                Some("ban" | "join" | "invite" | "knock")
            ) {
                return Err(ApiError::forbidden("that user is not in the room"));
            }
        }
        "join" | "invite" | "leave" | "ban" | "knock" => {}
        other => return Err(ApiError::bad_json(format!("unknown membership `{other}`"))),
    }
    if !content.is_object() {
        content = json!({});
    }
    content["membership"] = json!(new);
    if let Some(via) = authorised_via {
        content["join_authorised_via_users_server"] = json!(via);
    }
    if matches!(new, "join" | "invite" | "knock") {
        if let Some(u) = state.users.get(target) {
            if content.get("displayname").is_none() {
                if let Some(d) = &u.displayname {
                    content["displayname"] = json!(d);
                }
            }
            if content.get("avatar_url").is_none() {
                if let Some(a) = &u.avatar_url {
                    content["avatar_url"] = json!(a);
                }
            }
        }
    }
    let (_, id) = state.append(
        batch,
        Append::new(room_id, sender, "m.room.member", Some(target), content),
    )?;
    Ok(id)
}

fn membership_content(reason: Option<&String>) -> Value {
    match reason {
        Some(r) => json!({"reason": r}),
        None => json!({}),
    }
}

/// Room id or alias -> room id.
pub fn resolve_room(state: &State, id_or_alias: &str) -> ApiResult<String> {
    if id_or_alias.starts_with('#') {
        return state
            .aliases
            .get(id_or_alias)
            .map(|(r, _)| r.clone())
            .ok_or_else(|| ApiError::not_found(format!("no room has the alias {id_or_alias}")));
    }
    if !id_or_alias.starts_with('!') {
        return Err(ApiError::invalid_param(
            "expected a room id (!...) or an alias (#...)",
        ));
    }
    Ok(id_or_alias.to_string())
}

/// A create event's content, for createRoom and upgrades alike: `base` (the client's
/// `creation_content`) with the room version, the creator before version 11, and from version
/// 12 `more_creators` added to its `additional_creators` (which must be user ids, and only
/// from version 12).
pub fn create_content(
    version: &str,
    creator: &str,
    mut base: Map<String, Value>,
    more_creators: &[String],
) -> ApiResult<Value> {
    let v: u32 = version.parse().unwrap_or(12);
    base.insert("room_version".into(), json!(version));
    if v < 11 {
        base.insert("creator".into(), json!(creator));
    } else {
        base.remove("creator");
    }
    if !more_creators.is_empty() {
        let mut extra: Vec<Value> = base
            .get("additional_creators")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for u in more_creators {
            if !extra.contains(&json!(u)) {
                extra.push(json!(u));
            }
        }
        base.insert("additional_creators".into(), Value::Array(extra));
    }
    if let Some(extra) = base.get("additional_creators") {
        let ok = extra.as_array().is_some_and(|a| {
            a.iter().all(|u| {
                u.as_str()
                    .is_some_and(|s| mxconform_generated::ids::UserId::parse(s).is_ok())
            })
        });
        if !ok || v < 12 {
            return Err(ApiError::bad_json(
                "additional_creators must be a list of user ids, from room version 12 on",
            ));
        }
    }
    Ok(Value::Object(base))
}

pub fn create_room(ctx: &Ctx, req: cs::create_room::create_room::Request) -> ApiResult<Value> {
    let me = ctx.me()?.clone();
    let b = req.body;
    let version = b
        .room_version
        .clone()
        .unwrap_or_else(|| DEFAULT_ROOM_VERSION.to_string());
    if !ROOM_VERSIONS.contains(&version.as_str()) {
        return Err(ApiError::unsupported_room_version(format!(
            "room version {version} is not supported"
        )));
    }
    let server_name = ctx.server.config.server_name.clone();
    let alias = match &b.room_alias_name {
        Some(name) => {
            if name.is_empty() || name.contains([':', '#', ' ']) {
                return Err(ApiError::invalid_param(
                    "room_alias_name must be a bare local part",
                ));
            }
            Some(format!("#{name}:{server_name}"))
        }
        None => None,
    };
    if let Some(a) = &alias {
        super::directory::check_alias_namespace(ctx, a)?;
    }
    let v: u32 = version.parse().unwrap_or(12);
    let public = matches!(b.visibility.as_ref().map(|v| v.as_str()), Some("public"));
    let preset = b
        .preset
        .as_ref()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| {
            if public {
                "public_chat".into()
            } else {
                "private_chat".into()
            }
        });
    let invites: Vec<String> = b
        .invite
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|u| u.into_string())
        .collect();
    for u in &invites {
        if u == &me.user_id {
            return Err(ApiError::invalid_param("you cannot invite yourself"));
        }
    }
    ctx.server.write(|state, batch| {
        if let Some(a) = &alias {
            if state.aliases.contains_key(a) {
                return Err(ApiError::room_in_use(format!("the alias {a} is taken")));
            }
        }
        // The create event makes the room (from version 12 its hash is the room id).
        let trusted = if v >= 12 && preset == "trusted_private_chat" { invites.as_slice() } else { &[] };
        let create = create_content(&version, &me.user_id, b.creation_content.clone().unwrap_or_default(), trusted)?;
        let room_id = state.create_room(batch, &version, &me.user_id, create, public)?;
        change_membership(state, batch, &room_id, &me.user_id, &me.user_id, "join", json!({}))?;

        // Power levels: defaults, then the preset's, then the override.
        let mut pl = json!({
            "users": {},
            "users_default": 0,
            "events": {
                "m.room.name": 50, "m.room.power_levels": 100, "m.room.history_visibility": 100,
                "m.room.canonical_alias": 50, "m.room.avatar": 50, "m.room.tombstone": if v >= 12 { 150 } else { 100 },
                "m.room.server_acl": 100, "m.room.encryption": 100,
            },
            "events_default": 0, "state_default": 50, "ban": 50, "kick": 50, "redact": 50, "invite": 0,
            "notifications": {"room": 50},
        });
        if v < 12 {
            pl["users"][&me.user_id] = json!(100);
            if preset == "trusted_private_chat" {
                for u in &invites {
                    pl["users"][u] = json!(100);
                }
            }
        }
        if let Some(o) = &b.power_level_content_override {
            for (k, val) in o {
                pl[k] = val.clone();
            }
        }
        send_state(state, batch, &room_id, &me.user_id, "m.room.power_levels", "", pl)?;
        if let Some(a) = &alias {
            state.put_alias(batch, a, Some((room_id.clone(), me.user_id.clone())));
            send_state(state, batch, &room_id, &me.user_id, "m.room.canonical_alias", "", json!({"alias": a}))?;
        }
        let (join_rule, guest) = match preset.as_str() {
            "public_chat" => ("public", "forbidden"),
            _ => ("invite", "can_join"),
        };
        send_state(state, batch, &room_id, &me.user_id, "m.room.join_rules", "", json!({"join_rule": join_rule}))?;
        send_state(state, batch, &room_id, &me.user_id, "m.room.history_visibility", "", json!({"history_visibility": "shared"}))?;
        send_state(state, batch, &room_id, &me.user_id, "m.room.guest_access", "", json!({"guest_access": guest}))?;
        for ev in b.initial_state.iter().flatten() {
            let content = serde_json::to_value(&ev.content).unwrap_or(json!({}));
            send_state(state, batch, &room_id, &me.user_id, &ev.type_, ev.state_key.as_deref().unwrap_or(""), content)?;
        }
        if let Some(n) = &b.name {
            send_state(state, batch, &room_id, &me.user_id, "m.room.name", "", json!({"name": n}))?;
        }
        if let Some(t) = &b.topic {
            let content = json!({"topic": t, "m.topic": [{"body": t, "mimetype": "text/plain"}]});
            send_state(state, batch, &room_id, &me.user_id, "m.room.topic", "", content)?;
        }
        for u in &invites {
            let mut content = json!({});
            if b.is_direct == Some(true) {
                content["is_direct"] = json!(true);
            }
            change_membership(state, batch, &room_id, &me.user_id, u, "invite", content)?;
        }
        Ok(json!({"room_id": room_id}))
    })
}

fn join(
    ctx: &Ctx,
    id_or_alias: &str,
    reason: Option<&String>,
    via: Vec<String>,
) -> ApiResult<Reply> {
    let me = ctx.me()?.clone();
    // A room this server is not in (or an alias of another server): joined over federation.
    let ours = ctx.server.config.server_name.clone();
    // A room this server knows but has left while other servers stayed is joined through
    // them too: what happened since is theirs to tell.
    let (local, others) = ctx.server.read(|s| {
        let room = resolve_room(s, id_or_alias)
            .ok()
            .filter(|r| s.rooms.contains_key(r));
        let servers = room
            .as_deref()
            .map(|r| s.servers_in_room(r))
            .unwrap_or_default();
        if servers.contains(&ours) || servers.is_empty() {
            (room, Vec::new())
        } else {
            (None, servers.into_iter().collect::<Vec<_>>())
        }
    });
    let foreign_alias = id_or_alias.starts_with('#')
        && id_or_alias.split_once(':').map(|(_, h)| h) != Some(ours.as_str());
    let remote = local.is_none()
        && ctx.server.federation.is_some()
        && (foreign_alias || id_or_alias.starts_with('!'));
    if remote {
        let server = ctx
            .server
            .shared()
            .ok_or_else(|| ApiError::internal("the server is shutting down"))?;
        let mut content = membership_content(reason);
        ctx.server.read(|s| {
            if let Some(u) = s.users.get(&me.user_id) {
                if let Some(d) = &u.displayname {
                    content["displayname"] = json!(d);
                }
                if let Some(a) = &u.avatar_url {
                    content["avatar_url"] = json!(a);
                }
            }
        });
        let target = id_or_alias.to_string();
        return Ok(Reply::outbound(async move {
            let (room_id, mut servers) = if target.starts_with('#') {
                crate::federation::joins::resolve_alias(&server, &target).await?
            } else {
                (target, Vec::new())
            };
            let mut named = via;
            named.append(&mut servers);
            named.extend(others);
            if let Some(inviter) = server.read(|s| {
                s.remote_memberships
                    .get(&me.user_id)
                    .and_then(|r| r.get(&room_id))
                    .map(|m| m.via.clone())
            }) {
                named.push(inviter);
            }
            let servers = crate::federation::joins::candidates(&room_id, &named, &ours);
            crate::federation::joins::join(server, me.user_id.clone(), room_id, servers, content)
                .await
        }));
    }
    let out = ctx.server.write(|state, batch| {
        let room_id = resolve_room(state, id_or_alias)?;
        state.room(&room_id)?;
        // Joining again when joined is allowed (a profile refresh); nothing changes then.
        if state
            .rooms
            .get(&room_id)
            .and_then(|r| r.membership(&me.user_id))
            == Some("join")
        {
            return Ok(json!({"room_id": room_id}));
        }
        change_membership(
            state,
            batch,
            &room_id,
            &me.user_id,
            &me.user_id,
            "join",
            membership_content(reason),
        )?;
        Ok(json!({"room_id": room_id}))
    })?;
    Ok(Reply::from(out))
}

pub fn join_room_by_id(ctx: &Ctx, req: cs::joining::join_room_by_id::Request) -> ApiResult<Reply> {
    join(
        ctx,
        req.room_id.as_str(),
        req.body.reason.as_ref(),
        Vec::new(),
    )
}

pub fn join_room(ctx: &Ctx, req: cs::joining::join_room::Request) -> ApiResult<Reply> {
    // `server_name`, the parameter's name before v1.12, is still honoured.
    let via = req
        .via
        .iter()
        .flatten()
        .map(|s| s.as_str().to_string())
        .chain(
            ctx.query
                .iter()
                .filter(|(k, _)| k == "server_name")
                .map(|(_, v)| v.clone()),
        )
        .collect();
    join(ctx, &req.room_id_or_alias, req.body.reason.as_ref(), via)
}

pub fn invite_user(ctx: &Ctx, req: cs::inviting::invite_user::Request) -> ApiResult<Reply> {
    let me = ctx.me()?.clone();
    let ours = ctx.server.config.server_name.clone();
    let target = req.body.user_id.as_str().to_string();
    let target_server = target.split_once(':').map(|(_, s)| s.to_string());
    if ctx.server.federation.is_some() && target_server.as_deref().is_some_and(|s| s != ours) {
        let server = ctx
            .server
            .shared()
            .ok_or_else(|| ApiError::internal("the server is shutting down"))?;
        return Ok(Reply::outbound(invite_remote_user(
            server,
            req.room_id.as_str().to_string(),
            me.user_id,
            target,
            membership_content(req.body.reason.as_ref()),
        )));
    }
    let out = ctx.server.write(|state, batch| {
        let target = req.body.user_id.as_str();
        if !state.users.contains_key(target) && target.ends_with(&format!(":{}", state.server_name))
        {
            return Err(ApiError::not_found(format!(
                "no user {target} on this server"
            )));
        }
        if state.room(req.room_id.as_str())?.membership(target) == Some("invite") {
            return Ok(json!({}));
        }
        change_membership(
            state,
            batch,
            req.room_id.as_str(),
            &me.user_id,
            target,
            "invite",
            membership_content(req.body.reason.as_ref()),
        )?;
        Ok(json!({}))
    })?;
    Ok(Reply::from(out))
}

/// Invites a user of another server: that server signs the invite first (`content` is the
/// member event's, without `membership`).
pub(crate) async fn invite_remote_user(
    server: std::sync::Arc<crate::Server>,
    room_id: String,
    sender: String,
    target: String,
    mut content: Value,
) -> ApiResult<Value> {
    let dest = target
        .split_once(':')
        .map(|(_, s)| s.to_string())
        .unwrap_or_default();
    let prepared = server.read(|state| {
        if state.room(&room_id)?.membership(&target) == Some("invite") {
            return Ok(None);
        }
        content["membership"] = json!("invite");
        state
            .prepare(Append::new(
                &room_id,
                &sender,
                "m.room.member",
                Some(&target),
                content,
            ))
            .map(Some)
    })?;
    let Some(prepared) = prepared else {
        return Ok(json!({}));
    };
    let signed =
        crate::federation::joins::invite_remote(&server, &room_id, &dest, prepared.pdu()).await?;
    server.write(|state, batch| {
        let v = state.room(&room_id)?.room_version();
        let p = prepared
            .countersigned(v, signed)
            .map_err(|e| ApiError::bad_status(format!("{dest}'s invite answer: {e}")))?;
        state.append_prepared(batch, p)?;
        Ok(json!({}))
    })
}

pub fn leave_room(ctx: &Ctx, req: cs::leaving::leave_room::Request) -> ApiResult<Reply> {
    let me = ctx.me()?.clone();
    let reason = req.body.reason.clone();
    // An invite from (or a knock through) another server, to a room this server is not in:
    // the leave goes through that server.
    let room_id = req.room_id.as_str().to_string();
    let remote = ctx.server.read(|s| {
        !s.rooms.contains_key(&room_id)
            && s.remote_memberships
                .get(&me.user_id)
                .and_then(|r| r.get(&room_id))
                .is_some_and(|m| m.membership != "leave")
    });
    if remote {
        let server = ctx
            .server
            .shared()
            .ok_or_else(|| ApiError::internal("the server is shutting down"))?;
        return Ok(Reply::outbound(crate::federation::joins::leave_remote(
            server,
            me.user_id,
            room_id,
            membership_content(reason.as_ref()),
        )));
    }
    ctx.server.write(|state, batch| {
        change_membership(
            state,
            batch,
            req.room_id.as_str(),
            &me.user_id,
            &me.user_id,
            "leave",
            membership_content(reason.as_ref()),
        )?;
        Ok(Reply::from(json!({})))
    })
}

pub fn forget_room(ctx: &Ctx, req: cs::leaving::forget_room::Request) -> ApiResult<Value> {
    let me = ctx.me()?.clone();
    ctx.server.write(|state, batch| {
        let room = state.room(req.room_id.as_str())?;
        match room.membership(&me.user_id) {
            Some("join" | "invite" | "knock") => {
                return Err(ApiError::bad_state("leave the room before forgetting it"))
            }
            None => return Err(ApiError::not_found("you were never in this room")),
            _ => {}
        }
        state.forget_room(batch, &me.user_id, req.room_id.as_str());
        Ok(json!({}))
    })
}

pub fn kick(ctx: &Ctx, req: cs::kicking::kick::Request) -> ApiResult<Value> {
    let me = ctx.me()?.clone();
    ctx.server.write(|state, batch| {
        let target = req.body.user_id.as_str();
        if state.room(req.room_id.as_str())?.membership(target) == Some("ban") {
            return Err(ApiError::forbidden(
                "that user is banned; unban them instead",
            ));
        }
        change_membership(
            state,
            batch,
            req.room_id.as_str(),
            &me.user_id,
            target,
            "leave",
            membership_content(req.body.reason.as_ref()),
        )?;
        Ok(json!({}))
    })
}

pub fn ban(ctx: &Ctx, req: cs::banning::ban::Request) -> ApiResult<Value> {
    let me = ctx.me()?.clone();
    ctx.server.write(|state, batch| {
        change_membership(
            state,
            batch,
            req.room_id.as_str(),
            &me.user_id,
            req.body.user_id.as_str(),
            "ban",
            membership_content(req.body.reason.as_ref()),
        )?;
        Ok(json!({}))
    })
}

pub fn unban(ctx: &Ctx, req: cs::banning::unban::Request) -> ApiResult<Value> {
    let me = ctx.me()?.clone();
    ctx.server.write(|state, batch| {
        let target = req.body.user_id.as_str();
        if state.room(req.room_id.as_str())?.membership(target) != Some("ban") {
            return Err(ApiError::forbidden("that user is not banned"));
        }
        change_membership(
            state,
            batch,
            req.room_id.as_str(),
            &me.user_id,
            target,
            "leave",
            membership_content(req.body.reason.as_ref()),
        )?;
        Ok(json!({}))
    })
}

pub fn knock_room(ctx: &Ctx, req: cs::knocking::knock_room::Request) -> ApiResult<Reply> {
    let me = ctx.me()?.clone();
    let ours = ctx.server.config.server_name.clone();
    let target = req.room_id_or_alias.clone();
    let local = ctx.server.read(|s| {
        resolve_room(s, &target)
            .ok()
            .filter(|r| s.rooms.contains_key(r))
    });
    if local.is_none() && ctx.server.federation.is_some() && target.starts_with('!') {
        let server = ctx
            .server
            .shared()
            .ok_or_else(|| ApiError::internal("the server is shutting down"))?;
        let via: Vec<String> = req
            .via
            .iter()
            .flatten()
            .map(|s| s.as_str().to_string())
            .collect();
        let servers = crate::federation::joins::candidates(&target, &via, &ours);
        return Ok(Reply::outbound(crate::federation::joins::knock_remote(
            server,
            me.user_id,
            target,
            servers,
            membership_content(req.body.reason.as_ref()),
        )));
    }
    ctx.server.write(|state, batch| {
        let room_id = resolve_room(state, &req.room_id_or_alias)?;
        change_membership(
            state,
            batch,
            &room_id,
            &me.user_id,
            &me.user_id,
            "knock",
            membership_content(req.body.reason.as_ref()),
        )?;
        Ok(Reply::from(json!({"room_id": room_id})))
    })
}

pub fn get_joined_rooms(
    ctx: &Ctx,
    _req: cs::list_joined_rooms::get_joined_rooms::Request,
) -> ApiResult<Value> {
    let me = ctx.me()?;
    let rooms: Vec<String> = ctx.server.read(|s| {
        s.user_rooms
            .get(&me.user_id)
            .map(|set| {
                set.iter()
                    .filter(|r| {
                        s.rooms
                            .get(*r)
                            .and_then(|room| room.membership(&me.user_id))
                            == Some("join")
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    });
    Ok(json!({"joined_rooms": rooms}))
}
