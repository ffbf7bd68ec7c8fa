//! Smaller client-server areas: pushers and the notification list, OpenID tokens, content
//! reports, whois, third-party identifiers and protocols, jumping to a timestamp, room
//! summaries and server-side search.

use mxconform_generated::client_server as cs;
use serde_json::{json, Value};

use super::events::parse_token;
use super::rooms::resolve_room;
use super::{require_self, Ctx};
use crate::error::{ApiError, ApiResult};
use crate::state::{now_ms, random_token};

pub fn get_pushers(ctx: &Ctx, _req: cs::pusher::get_pushers::Request) -> ApiResult<Value> {
    let me = ctx.me()?;
    let list: Vec<Value> = ctx.server.read(|s| {
        s.pushers
            .get(&me.user_id)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    });
    Ok(json!({"pushers": list}))
}

pub fn post_pusher(ctx: &Ctx, req: cs::pusher::post_pusher::Request) -> ApiResult<Value> {
    let me = ctx.me()?.clone();
    let b = req.body;
    let key = (b.app_id.clone(), b.pushkey.clone());
    let record_key = |k: &(String, String)| format!("{}\u{0}{}\u{0}{}", me.user_id, k.0, k.1);
    ctx.server.write(|state, batch| {
        if b.kind.is_some() && !b.append.unwrap_or(false) {
            // Without `append`, the same app id and push key leave any other user.
            for (user, theirs) in state.pushers.iter_mut().filter(|(u, _)| **u != me.user_id) {
                if theirs.remove(&key).is_some() {
                    batch.delete("pusher", format!("{user}\u{0}{}\u{0}{}", key.0, key.1));
                }
            }
        }
        let pushers = state.pushers.entry(me.user_id.clone()).or_default();
        if b.kind.is_none() {
            // `kind: null` deletes the pusher.
            pushers.remove(&key);
            batch.delete("pusher", record_key(&key));
            return Ok(json!({}));
        }
        if b.app_display_name.is_none()
            || b.device_display_name.is_none()
            || b.lang.is_none()
            || b.data.is_none()
        {
            return Err(ApiError::missing_param(
                "a new pusher needs app_display_name, device_display_name, lang and data",
            ));
        }
        if b.kind.as_deref() == Some("http") {
            let url = b
                .data
                .as_ref()
                .and_then(|d| d.url.clone())
                .unwrap_or_default();
            if !url.starts_with("http") || !url.ends_with("/_matrix/push/v1/notify") {
                return Err(ApiError::invalid_param(
                    "an http pusher's data.url must end in /_matrix/push/v1/notify",
                ));
            }
        }
        let mut v = json!({
            "pushkey": b.pushkey, "kind": b.kind, "app_id": b.app_id,
            "app_display_name": b.app_display_name, "device_display_name": b.device_display_name,
            "lang": b.lang, "data": serde_json::to_value(&b.data).unwrap_or(json!({})),
        });
        if let Some(t) = &b.profile_tag {
            v["profile_tag"] = json!(t);
        }
        batch.put("pusher", record_key(&key), &v);
        pushers.insert(key, v);
        Ok(json!({}))
    })
}

/// Messages from others in the caller's joined rooms, newest first: what the predefined
/// `.m.rule.message` rule notifies for.
pub fn get_notifications(
    ctx: &Ctx,
    req: cs::notifications::get_notifications::Request,
) -> ApiResult<Value> {
    let me = ctx.me()?;
    let limit = req.limit.unwrap_or(20).clamp(1, 100) as usize;
    let before = req
        .from
        .as_deref()
        .map(parse_token)
        .transpose()?
        .unwrap_or(u64::MAX);
    let only_highlight = req.only.as_deref() == Some("highlight");
    ctx.server.read(|s| {
        // (notification, room, read up to): the newest first, across the joined rooms.
        let mut found = Vec::new();
        for room_id in s.user_rooms.get(&me.user_id).into_iter().flatten() {
            let Some(room) = s.rooms.get(room_id) else {
                continue;
            };
            if room.membership(&me.user_id) != Some("join") {
                continue;
            }
            let read = s.read_up_to(room, &me.user_id);
            let list = room
                .notifications
                .get(&me.user_id)
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let mut taken = 0;
            for (i, n) in list
                .iter()
                .enumerate()
                .rev()
                .filter(|(_, n)| n.pos < before)
            {
                if only_highlight && !crate::push_rules::Notification::highlights_at(list, i) {
                    continue;
                }
                if !s.can_see(room, &me.user_id, n.pos) {
                    continue;
                }
                found.push((n, read));
                taken += 1;
                if taken > limit {
                    break;
                }
            }
        }
        found.sort_by(|a, b| b.0.pos.cmp(&a.0.pos));
        let more = found.len() > limit;
        found.truncate(limit);
        let notifications: Vec<Value> = found
            .iter()
            .filter_map(|(n, read)| {
                let e = s.event(n.pos)?;
                let actions = s
                    .store
                    .notification_actions(&me.user_id, &e.room_id, n.pos)
                    .ok()
                    .flatten()?;
                Some(json!({
                    "actions": actions,
                    "event": s.client_event(&e, Some((&me.user_id, &me.device_id)), true),
                    "read": n.pos <= *read,
                    "room_id": e.room_id,
                    "ts": e.ts,
                }))
            })
            .collect();
        let mut out = json!({"notifications": notifications});
        if more {
            if let Some(last) = found.last() {
                out["next_token"] = json!(format!("t{}", last.0.pos));
            }
        }
        Ok(out)
    })
}

pub fn request_open_id_token(
    ctx: &Ctx,
    req: cs::openid::request_open_id_token::Request,
) -> ApiResult<Value> {
    require_self(ctx, &req.user_id)?;
    Ok(json!({
        "access_token": random_token(24),
        "token_type": "Bearer",
        "matrix_server_name": ctx.server.config.server_name,
        "expires_in": 3600,
    }))
}

pub fn report_room(ctx: &Ctx, req: cs::report_content::report_room::Request) -> ApiResult<Value> {
    ctx.me()?;
    ctx.server.read(|s| s.room(&req.room_id).map(drop))?;
    Ok(json!({}))
}

pub fn report_event(ctx: &Ctx, req: cs::report_content::report_event::Request) -> ApiResult<Value> {
    let me = ctx.me()?;
    ctx.server.read(|s| {
        let room = s.room(&req.room_id)?;
        // Only members report: the caller must be joined to the room.
        if room.membership(&me.user_id) != Some("join") {
            return Err(ApiError::not_found("you are not joined to that room"));
        }
        let visible = s
            .event_pos(&req.event_id)
            .filter(|p| s.event(*p).is_some_and(|e| e.room_id == req.room_id))
            .is_some_and(|p| s.can_see(room, &me.user_id, p));
        if !visible {
            return Err(ApiError::not_found("no such event, or you may not see it"));
        }
        Ok(json!({}))
    })
}

pub fn report_user(ctx: &Ctx, req: cs::report_content::report_user::Request) -> ApiResult<Value> {
    ctx.me()?;
    if !ctx
        .server
        .read(|s| s.users.contains_key(req.user_id.as_str()))
    {
        return Err(ApiError::not_found("no such user"));
    }
    Ok(json!({}))
}

pub fn get_who_is(ctx: &Ctx, req: cs::admin::get_who_is::Request) -> ApiResult<Value> {
    // About oneself, or anyone for an administrator.
    let me = ctx.me()?;
    if me.user_id != req.user_id && !super::admin::is_admin(ctx, &me.user_id) {
        return Err(ApiError::forbidden(
            "only an administrator may look up another user",
        ));
    }
    ctx.server.read(|s| {
        let mut devices = serde_json::Map::new();
        for (id, d) in s.devices.get(&req.user_id).into_iter().flatten() {
            devices.insert(
                id.clone(),
                json!({"sessions": [{"connections": [{"last_seen": d.last_seen_ts}]}]}),
            );
        }
        Ok(json!({"user_id": req.user_id, "devices": devices}))
    })
}

pub fn get_event_by_timestamp(
    ctx: &Ctx,
    req: cs::room_event_by_timestamp::get_event_by_timestamp::Request,
) -> ApiResult<Value> {
    let me = ctx.me()?;
    let forwards = req.dir.as_str() == "f";
    let ts = req.ts.max(0) as u64;
    ctx.server.read(|s| {
        let room = s.room(req.room_id.as_str())?;
        let visible = |p: &&u64| s.can_see(room, &me.user_id, **p);
        let found = if forwards {
            room.timeline
                .iter()
                .filter(visible)
                .filter_map(|p| s.event(*p))
                .find(|e| e.ts >= ts)
        } else {
            room.timeline
                .iter()
                .rev()
                .filter(visible)
                .filter_map(|p| s.event(*p))
                .find(|e| e.ts <= ts)
        };
        let e = found
            .ok_or_else(|| ApiError::not_found("no event in that direction from that time"))?;
        Ok(json!({"event_id": e.event_id, "origin_server_ts": e.ts}))
    })
}

pub fn get_room_summary(
    ctx: &Ctx,
    req: cs::room_summary::get_room_summary::Request,
) -> ApiResult<Value> {
    let me = ctx.user.clone();
    ctx.server.read(|s| {
        let room_id = resolve_room(s, &req.room_id_or_alias)?;
        let room = s.room(&room_id)?;
        let content = |kind: &str, key: &str| {
            s.state_content(&room_id, kind, "")
                .and_then(|c| c.get(key))
                .cloned()
        };
        let join_rule = content("m.room.join_rules", "join_rule").unwrap_or(json!("invite"));
        let world = content("m.room.history_visibility", "history_visibility")
            == Some(json!("world_readable"));
        let membership = me.as_ref().and_then(|m| room.membership(&m.user_id));
        let peekable = matches!(
            join_rule.as_str(),
            Some("public" | "knock" | "knock_restricted")
        ) || world;
        if membership.is_none() && !peekable {
            return Err(ApiError::not_found("no such room, or you may not see it"));
        }
        let mut v = s.room_overview(room);
        v["room_version"] = json!(room.version);
        if let Some(m) = membership {
            v["membership"] = json!(m);
        }
        Ok(v)
    })
}

/// Room event search over message bodies, names and topics in the caller's joined rooms.
/// The events around a search result the reader may see (newest first before it, oldest
/// first after it), pagination tokens around them, and the senders' profiles if asked.
fn search_context(
    s: &crate::state::State,
    room: &crate::state::Room,
    e: &crate::state::Event,
    viewer: (&str, &str),
    before_n: usize,
    after_n: usize,
    profiles: bool,
) -> Value {
    let super::events::Around {
        before,
        after,
        start,
        end,
    } = super::events::around(room, e.pos, before_n, after_n, |p| {
        s.event(p).is_some() && s.can_see(room, viewer.0, p)
    });
    let events = |ps: &[u64]| -> Vec<Value> {
        ps.iter()
            .filter_map(|p| s.event(*p))
            .map(|ev| s.client_event(&ev, Some(viewer), true))
            .collect()
    };
    let mut out = json!({
        "events_before": events(&before),
        "events_after": events(&after),
        "start": start,
        "end": end,
    });
    if profiles {
        let mut info = serde_json::Map::new();
        for p in before
            .iter()
            .chain(after.iter())
            .chain(std::iter::once(&e.pos))
        {
            let Some(sender) = s.event(*p).map(|ev| ev.sender.clone()) else {
                continue;
            };
            let member = s.state_content(&room.room_id, "m.room.member", &sender);
            let mut profile = json!({});
            for k in ["displayname", "avatar_url"] {
                if let Some(v) = member.and_then(|m| m.get(k)).filter(|v| v.is_string()) {
                    profile[k] = v.clone();
                }
            }
            info.insert(sender, profile);
        }
        out["profile_info"] = Value::Object(info);
    }
    out
}

pub fn search(ctx: &Ctx, req: cs::search::search::Request) -> ApiResult<Value> {
    let me = ctx.me()?;
    let criteria = serde_json::to_value(&req.body.search_categories).map_err(ApiError::internal)?;
    let Some(c) = criteria.get("room_events") else {
        return Ok(json!({"search_categories": {}}));
    };
    if let Some(order) = c.get("order_by") {
        if !matches!(order.as_str(), Some("recent" | "rank")) {
            return Err(ApiError::invalid_param("order_by is `recent` or `rank`"));
        }
    }
    let term = c
        .get("search_term")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_lowercase();
    let words: Vec<&str> = term.split_whitespace().collect();
    let keys: Vec<String> = super::events::strings(c.get("keys")).unwrap_or_else(|| {
        vec![
            "content.body".into(),
            "content.name".into(),
            "content.topic".into(),
        ]
    });
    let before = req
        .next_batch
        .as_deref()
        .map(parse_token)
        .transpose()?
        .unwrap_or(u64::MAX);
    let filter = c.get("filter");
    let limit = filter
        .and_then(|f| f.get("limit"))
        .and_then(Value::as_u64)
        .unwrap_or(10)
        .clamp(1, 100) as usize;
    let only_rooms = super::events::strings(filter.and_then(|f| f.get("rooms")));
    let not_rooms =
        super::events::strings(filter.and_then(|f| f.get("not_rooms"))).unwrap_or_default();
    // Events around each result, when asked for (`before_limit`/`after_limit`, default 5).
    let context = c.get("event_context").map(|e| {
        let n = |k: &str| e.get(k).and_then(Value::as_u64).unwrap_or(5).min(100) as usize;
        (
            n("before_limit"),
            n("after_limit"),
            e.get("include_profile")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        )
    });
    let group_by_room = c
        .get("groupings")
        .and_then(|g| g.get("group_by"))
        .and_then(Value::as_array)
        .is_some_and(|a| {
            a.iter()
                .any(|g| g.get("key").and_then(Value::as_str) == Some("room_id"))
        });
    ctx.server.read(|s| {
        let mut hits = Vec::new();
        for room_id in s.user_rooms.get(&me.user_id).into_iter().flatten() {
            let Some(room) = s.rooms.get(room_id) else {
                continue;
            };
            if room.membership(&me.user_id) != Some("join")
                || only_rooms.as_ref().is_some_and(|r| !r.contains(room_id))
                || not_rooms.contains(room_id)
            {
                continue;
            }
            for p in room.timeline.iter().filter(|p| **p < before) {
                let Some(e) = s.event(*p) else { continue };
                let text: String = keys
                    .iter()
                    .filter_map(|k| {
                        e.content
                            .get(k.trim_start_matches("content."))
                            .and_then(Value::as_str)
                    })
                    .collect::<Vec<_>>()
                    .join(" ")
                    .to_lowercase();
                if !words.is_empty()
                    && words.iter().all(|w| text.contains(w))
                    && s.can_see(room, &me.user_id, *p)
                {
                    hits.push(e);
                }
            }
        }
        hits.sort_by(|a, b| b.pos.cmp(&a.pos));
        let count = hits.len();
        let more = hits.len() > limit;
        hits.truncate(limit);
        let viewer = (me.user_id.as_str(), me.device_id.as_str());
        let results: Vec<Value> = hits
            .iter()
            .map(|e| {
                let mut r = json!({"rank": 1.0, "result": s.client_event(e, Some(viewer), true)});
                if let (Some((before_n, after_n, profiles)), Some(room)) =
                    (context, s.rooms.get(&e.room_id))
                {
                    r["context"] = search_context(s, room, e, viewer, before_n, after_n, profiles);
                }
                r
            })
            .collect();
        let mut room_events = json!({"results": results, "count": count, "highlights": words});
        if group_by_room {
            let mut groups = serde_json::Map::new();
            for e in &hits {
                let g = groups
                    .entry(e.room_id.clone())
                    .or_insert_with(|| json!({"results": [], "order": 0}));
                if let Some(list) = g["results"].as_array_mut() {
                    list.push(json!(e.event_id));
                }
            }
            room_events["groups"] = json!({"room_id": groups});
        }
        if more {
            if let Some(last) = hits.last() {
                room_events["next_batch"] = json!(format!("t{}", last.pos));
            }
        }
        Ok(json!({"search_categories": {"room_events": room_events}}))
    })
}

pub fn create_content(
    ctx: &Ctx,
    _req: cs::content_repo::create_content::Request,
) -> ApiResult<Value> {
    let me = ctx.me()?.clone();
    let id = random_token(18);
    let expires = now_ms() + 24 * 3600 * 1000;
    ctx.server.write(|state, _| {
        state.pending_media.retain(|_, (_, exp)| *exp > now_ms());
        state
            .pending_media
            .insert(id.clone(), (me.user_id.clone(), expires));
        Ok(())
    })?;
    Ok(
        json!({"content_uri": format!("mxc://{}/{id}", ctx.server.config.server_name), "unused_expires_at": expires}),
    )
}

pub fn upload_content_to_mxc(
    ctx: &Ctx,
    req: cs::content_repo::upload_content_to_mxc::Request,
) -> ApiResult<Value> {
    let me = ctx.me()?.clone();
    if req.server_name.as_str() != ctx.server.config.server_name {
        return Err(ApiError::not_found("that media id is not this server's"));
    }
    let content_type = ctx
        .content_type
        .clone()
        .unwrap_or_else(|| "application/octet-stream".into());
    let bytes = ctx.raw_body.to_vec();
    ctx.server.write(|state, batch| {
        match state.pending_media.get(&req.media_id) {
            None if state.uploaded_media.contains(&req.media_id) => {
                return Err(ApiError {
                    status: 409,
                    errcode: "M_CANNOT_OVERWRITE_MEDIA",
                    message: "that media id is already uploaded".into(),
                    extra: None,
                })
            }
            None => return Err(ApiError::not_found("no media id like that was created")),
            Some((owner, _)) if *owner != me.user_id => {
                return Err(ApiError::forbidden(
                    "that media id was created by someone else",
                ))
            }
            Some(_) => {}
        }
        state.pending_media.remove(&req.media_id);
        state.uploaded_media.insert(req.media_id.clone());
        batch.media.push((
            req.media_id.clone(),
            Some(content_type),
            req.filename.clone(),
            bytes,
            now_ms(),
        ));
        Ok(json!({}))
    })
}
