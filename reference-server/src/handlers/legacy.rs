//! Deprecated endpoints the spec still describes: the old initial sync and the event stream
//! (`/events`, and peeking one room through it).

use std::time::Duration;

use mxconform_generated::client_server as cs;
use serde_json::{json, Value};

use super::events::parse_token;
use super::{Ctx, Reply};
use crate::error::{ApiError, ApiResult};
use crate::state::{Room, State};

pub fn initial_sync(ctx: &Ctx, req: cs::old_sync::initial_sync::Request) -> ApiResult<Value> {
    let me = ctx.me()?;
    let limit = req.limit.unwrap_or(10).clamp(0, 100) as usize;
    let archived = req.archived.unwrap_or(false);
    ctx.server.read(|s| {
        let viewer = (me.user_id.as_str(), me.device_id.as_str());
        let mut rooms = Vec::new();
        for room_id in s.user_rooms.get(&me.user_id).into_iter().flatten() {
            let Some(room) = s.rooms.get(room_id) else { continue };
            let Some(m) = room.membership(&me.user_id) else { continue };
            if matches!(m, "leave" | "ban") && !archived {
                continue;
            }
            let recent: Vec<u64> = room.timeline.iter().rev().filter(|p| s.can_see(room, &me.user_id, **p)).take(limit).copied().collect();
            let chunk: Vec<Value> = recent.iter().rev().filter_map(|p| s.event(*p)).map(|e| s.client_event(&e, Some(viewer), true)).collect();
            let start = recent.last().map_or(0, |p| p.saturating_sub(1));
            let mut r = json!({
                "room_id": room_id,
                "membership": m,
                "messages": {"chunk": chunk, "start": format!("t{start}"), "end": format!("t{}", s.pos)},
                "visibility": if room.public { "public" } else { "private" },
                "account_data": [],
            });
            if m == "join" {
                r["state"] = json!(room.state_positions().filter_map(|p| s.event(p)).map(|e| s.client_event(&e, Some(viewer), true)).collect::<Vec<_>>());
            }
            rooms.push(r);
        }
        let account_data: Vec<Value> = s
            .account_data
            .iter()
            .filter(|((u, r, _), _)| *u == me.user_id && r.is_empty())
            .map(|((_, _, t), (c, _))| json!({"type": t, "content": c}))
            .collect();
        Ok(json!({"end": format!("s{}", s.pos), "rooms": rooms, "presence": [], "account_data": account_data}))
    })
}

/// Events after `from` in the given rooms, for the event stream.
fn stream(s: &State, rooms: &[&Room], user: &str, device: &str, from: u64) -> Vec<Value> {
    let mut events: Vec<std::sync::Arc<crate::state::Event>> = Vec::new();
    for room in rooms {
        for p in room.timeline.iter().rev().take_while(|p| **p > from) {
            if s.can_see(room, user, *p) {
                if let Some(e) = s.event(*p) {
                    events.push(e);
                }
            }
        }
    }
    events.sort_by_key(|e| e.pos);
    events
        .into_iter()
        .map(|e| s.client_event(&e, Some((user, device)), true))
        .collect()
}

fn event_stream(
    ctx: &Ctx,
    from: Option<&str>,
    timeout: Option<i64>,
    only_room: Option<&str>,
) -> ApiResult<Reply> {
    let me = ctx.me()?;
    let from = from.map(parse_token).transpose()?;
    let timeout = timeout.unwrap_or(30_000).clamp(0, 300_000) as u64;
    let (body, empty) = ctx.server.read(|s| {
        let start = from.unwrap_or(s.pos);
        let rooms: Vec<&Room> = match only_room {
            Some(id) => {
                let room = s.room(id)?;
                let world = room.world_readable();
                if room.membership(&me.user_id) != Some("join") && !world {
                    return Err(ApiError::forbidden("you may not peek into this room"));
                }
                vec![room]
            }
            None => s
                .user_rooms
                .get(&me.user_id)
                .into_iter()
                .flatten()
                .filter_map(|r| s.rooms.get(r))
                .filter(|r| r.membership(&me.user_id) == Some("join"))
                .collect(),
        };
        let chunk = stream(s, &rooms, &me.user_id, &me.device_id, start);
        let empty = chunk.is_empty();
        Ok((
            json!({"start": format!("s{start}"), "end": format!("s{}", s.pos), "chunk": chunk}),
            empty,
        ))
    })?;
    if empty && timeout > 0 && !ctx.last_chance {
        return Ok(Reply::Wait {
            until: ctx.started + Duration::from_millis(timeout),
        });
    }
    Ok(Reply::Json(200, body))
}

pub fn get_events(ctx: &Ctx, req: cs::old_sync::get_events::Request) -> ApiResult<Reply> {
    event_stream(ctx, req.from.as_deref(), req.timeout, None)
}

pub fn peek_events(ctx: &Ctx, req: cs::peeking_events::peek_events::Request) -> ApiResult<Reply> {
    event_stream(ctx, req.from.as_deref(), req.timeout, Some(&req.room_id))
}

pub fn room_initial_sync(
    ctx: &Ctx,
    req: cs::room_initial_sync::room_initial_sync::Request,
) -> ApiResult<Value> {
    let me = ctx.me()?;
    ctx.server.read(|s| {
        let room = s.room(req.room_id.as_str())?;
        let membership = room.membership(&me.user_id);
        let world = room.world_readable();
        if membership.is_none() && !world {
            return Err(ApiError::forbidden("you are not in this room"));
        }
        let viewer = (me.user_id.as_str(), me.device_id.as_str());
        let recent: Vec<std::sync::Arc<crate::state::Event>> = room
            .timeline
            .iter()
            .rev()
            .filter(|p| s.can_see(room, &me.user_id, **p))
            .take(20)
            .filter_map(|p| s.event(*p))
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let state: Vec<Value> = room.state_positions().filter_map(|p| s.event(p)).map(|e| s.client_event(&e, Some(viewer), true)).collect();
        let start = recent.first().map_or(0, |e| e.pos.saturating_sub(1));
        let end = room.timeline.last().copied().unwrap_or(0);
        let mut v = json!({
            "room_id": room.room_id,
            "messages": {
                "chunk": recent.iter().map(|e| s.client_event(e, Some(viewer), true)).collect::<Vec<_>>(),
                "start": format!("t{start}"),
                "end": format!("t{end}"),
            },
            "state": state,
            "presence": [],
            "account_data": [],
            "visibility": if room.public { "public" } else { "private" },
        });
        if let Some(m) = membership {
            v["membership"] = json!(m);
        }
        Ok(v)
    })
}

pub fn get_one_event(ctx: &Ctx, req: cs::old_sync::get_one_event::Request) -> ApiResult<Value> {
    let me = ctx.me()?;
    ctx.server.read(|s| {
        let not_found = || ApiError::not_found("no such event, or you may not see it");
        let p = s.event_pos(req.event_id.as_str()).ok_or_else(not_found)?;
        let e = s.event(p).ok_or_else(not_found)?;
        let room = s.room(&e.room_id)?;
        if !s.can_see(room, &me.user_id, p) {
            return Err(not_found());
        }
        Ok(s.client_event(&e, Some((&me.user_id, &me.device_id)), true))
    })
}
