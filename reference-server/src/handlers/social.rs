//! Presence, the user directory, mutual rooms, and relations and threads.

use mxconform_generated::client_server as cs;
use serde_json::{json, Value};
use std::sync::Arc;

use super::events::parse_token;
use super::{require_self, Ctx};
use crate::error::{ApiError, ApiResult};
use crate::state::{now_ms, Event, State};

pub fn set_presence(ctx: &Ctx, req: cs::presence::set_presence::Request) -> ApiResult<Value> {
    require_self(ctx, &req.user_id)?;
    let presence = req.body.presence.as_str().to_string();
    let status = req.body.status_msg.clone();
    ctx.server.write(|state, batch| {
        let pos = state.next_pos(batch);
        let mut content = json!({"presence": presence, "last_active_ts": now_ms()});
        if let Some(s) = status {
            content["status_msg"] = json!(s);
        }
        batch.put_record(
            req.user_id.clone(),
            &crate::state::records::PresenceRecord {
                content: content.clone(),
                pos,
            },
        );
        state.presence.insert(req.user_id.clone(), (content, pos));
        Ok(json!({}))
    })
}

pub fn get_presence(ctx: &Ctx, req: cs::presence::get_presence::Request) -> ApiResult<Value> {
    let me = ctx.me()?;
    ctx.server.read(|s| {
        if !s.users.contains_key(&req.user_id) {
            return Err(ApiError::not_found("no such user"));
        }
        if !s.room_peers(&me.user_id).contains(&req.user_id) {
            return Err(ApiError::forbidden("you share no room with that user"));
        }
        let (content, _) = s
            .presence
            .get(&req.user_id)
            .cloned()
            .unwrap_or((json!({"presence": "offline"}), 0));
        let mut out = json!({"presence": content["presence"]});
        if let Some(ts) = content.get("last_active_ts").and_then(Value::as_u64) {
            out["last_active_ago"] = json!(now_ms().saturating_sub(ts));
        }
        if let Some(m) = content.get("status_msg") {
            out["status_msg"] = m.clone();
        }
        out["currently_active"] = json!(content["presence"] == "online");
        Ok(out)
    })
}

/// Presence events for the sync of `user`: peers whose presence changed after `since`.
pub fn presence_events(state: &State, user: &str, since: u64) -> Vec<Value> {
    let peers = state.room_peers(user);
    let now = now_ms();
    let mut out = Vec::new();
    for p in peers {
        if let Some((c, pos)) = state.presence.get(&p) {
            if *pos > since {
                let mut content = json!({"presence": c["presence"], "currently_active": c["presence"] == "online"});
                if let Some(ts) = c.get("last_active_ts").and_then(Value::as_u64) {
                    content["last_active_ago"] = json!(now.saturating_sub(ts));
                }
                if let Some(m) = c.get("status_msg") {
                    content["status_msg"] = m.clone();
                }
                if let Some(u) = state.users.get(&p) {
                    if let Some(d) = &u.displayname {
                        content["displayname"] = json!(d);
                    }
                    if let Some(a) = &u.avatar_url {
                        content["avatar_url"] = json!(a);
                    }
                }
                out.push(json!({"type": "m.presence", "sender": p, "content": content}));
            }
        }
    }
    out
}

pub fn search_user_directory(
    ctx: &Ctx,
    req: cs::users::search_user_directory::Request,
) -> ApiResult<Value> {
    let me = ctx.me()?;
    let term = req.body.search_term.to_lowercase();
    let limit = req.body.limit.unwrap_or(10).clamp(1, 100) as usize;
    ctx.server.read(|s| {
        // Users who share a room with the caller, or who are in a room anyone may see: published,
        // with a public join rule, or world-readable.
        let mut visible = s.room_peers(&me.user_id);
        let open = |r: &&crate::state::Room| {
            r.public
                || r.world_readable()
                || s.state_content(&r.room_id, "m.room.join_rules", "")
                    .and_then(|c| c.get("join_rule"))
                    .and_then(Value::as_str)
                    == Some("public")
        };
        for r in s.rooms.values().filter(open) {
            visible.extend(r.joined().cloned());
        }
        let mut hits: Vec<Value> = visible
            .iter()
            .filter_map(|u| s.users.get(u))
            .filter(|u| !u.deactivated)
            .filter(|u| {
                u.user_id.to_lowercase().contains(&term)
                    || u.displayname
                        .as_deref()
                        .is_some_and(|d| d.to_lowercase().contains(&term))
            })
            .map(|u| {
                let mut v = json!({"user_id": u.user_id});
                if let Some(d) = &u.displayname {
                    v["display_name"] = json!(d);
                }
                if let Some(a) = &u.avatar_url {
                    v["avatar_url"] = json!(a);
                }
                v
            })
            .collect();
        let limited = hits.len() > limit;
        hits.truncate(limit);
        Ok(json!({"results": hits, "limited": limited}))
    })
}

pub fn get_mutual_rooms(
    ctx: &Ctx,
    req: cs::mutual_rooms::get_mutual_rooms::Request,
) -> ApiResult<Value> {
    let me = ctx.me()?;
    if req.user_id.as_str() == me.user_id {
        return Err(ApiError::invalid_param(
            "ask about another user, not yourself",
        ));
    }
    ctx.server.read(|s| {
        if !s.users.contains_key(req.user_id.as_str()) {
            return Err(ApiError::not_found("no such user"));
        }
        let mut rooms: Vec<&String> = s
            .user_rooms
            .get(&me.user_id)
            .into_iter()
            .flatten()
            .filter(|r| {
                s.rooms.get(*r).is_some_and(|room| {
                    room.membership(&me.user_id) == Some("join")
                        && room.membership(req.user_id.as_str()) == Some("join")
                })
            })
            .collect();
        rooms.sort();
        Ok(json!({"joined": rooms, "count": rooms.len()}))
    })
}

/// The relation an event declares: (rel_type, target event id).
fn relation(e: &Event) -> Option<(&str, &str)> {
    let r = e.content.get("m.relates_to")?;
    Some((r.get("rel_type")?.as_str()?, r.get("event_id")?.as_str()?))
}

#[allow(clippy::too_many_arguments)]
fn relating(
    ctx: &Ctx,
    recurse: Option<bool>,
    room_id: &str,
    event_id: &str,
    rel_type: Option<&str>,
    event_type: Option<&str>,
    from: Option<&str>,
    limit: Option<i64>,
    forwards: bool,
) -> ApiResult<Value> {
    let me = ctx.me()?;
    let limit = limit.unwrap_or(20).clamp(1, 100) as usize;
    let from = from.map(parse_token).transpose()?;
    ctx.server.read(|s| {
        let room = s.room(room_id)?;
        let target = s.event_pos(event_id).filter(|p| s.event(*p).is_some_and(|e| e.room_id == room_id));
        if !target.is_some_and(|p| s.can_see(room, &me.user_id, p)) {
            return Err(ApiError::not_found("no such event, or you may not see it"));
        }
        let mut matches: Vec<Arc<Event>> = s
            .relations(event_id)
            .into_iter()
            .filter_map(|p| s.event(p))
            .filter(|e| e.room_id == room.room_id)
            .filter(|e| relation(e).is_some_and(|(t, id)| id == event_id && rel_type.is_none_or(|r| r == t)))
            .filter(|e| event_type.is_none_or(|t| t == e.kind))
            .filter(|e| s.can_see(room, &me.user_id, e.pos))
            .collect();
        if !forwards {
            matches.reverse();
        }
        let start = match from {
            Some(f) => matches.iter().position(|e| if forwards { e.pos > f } else { e.pos <= f }).unwrap_or(matches.len()),
            None => 0,
        };
        let page: Vec<Arc<Event>> = matches.iter().skip(start).take(limit).cloned().collect();
        let mut out = json!({"chunk": page.iter().map(|e| s.client_event(e, Some((&me.user_id, &me.device_id)), true)).collect::<Vec<_>>()});
        if recurse.is_some() {
            // Only direct relations are followed.
            out["recursion_depth"] = json!(1);
        }
        if start + page.len() < matches.len() {
            if let Some(last) = page.last() {
                out["next_batch"] = json!(format!("t{}", if forwards { last.pos } else { last.pos.saturating_sub(1) }));
            }
        }
        Ok(out)
    })
}

pub fn get_relating_events(
    ctx: &Ctx,
    req: cs::relations::get_relating_events::Request,
) -> ApiResult<Value> {
    let fwd = req.dir.as_ref().is_some_and(|d| d.as_str() == "f");
    relating(
        ctx,
        req.recurse,
        req.room_id.as_str(),
        req.event_id.as_str(),
        None,
        None,
        req.from.as_deref(),
        req.limit,
        fwd,
    )
}

pub fn get_relating_events_with_rel_type(
    ctx: &Ctx,
    req: cs::relations::get_relating_events_with_rel_type::Request,
) -> ApiResult<Value> {
    let fwd = req.dir.as_ref().is_some_and(|d| d.as_str() == "f");
    relating(
        ctx,
        req.recurse,
        req.room_id.as_str(),
        req.event_id.as_str(),
        Some(&req.rel_type),
        None,
        req.from.as_deref(),
        req.limit,
        fwd,
    )
}

pub fn get_relating_events_with_rel_type_and_event_type(
    ctx: &Ctx,
    req: cs::relations::get_relating_events_with_rel_type_and_event_type::Request,
) -> ApiResult<Value> {
    let fwd = req.dir.as_ref().is_some_and(|d| d.as_str() == "f");
    relating(
        ctx,
        req.recurse,
        req.room_id.as_str(),
        req.event_id.as_str(),
        Some(&req.rel_type),
        Some(&req.event_type),
        req.from.as_deref(),
        req.limit,
        fwd,
    )
}

pub fn get_thread_roots(
    ctx: &Ctx,
    req: cs::threads_list::get_thread_roots::Request,
) -> ApiResult<Value> {
    let me = ctx.me()?;
    let limit = req.limit.unwrap_or(50).clamp(1, 100) as usize;
    let participated_only = req
        .include
        .as_ref()
        .is_some_and(|i| i.as_str() == "participated");
    let from = req.from.as_deref().map(parse_token).transpose()?;
    ctx.server.read(|s| {
        let room = s.rooms.get(&req.room_id).ok_or_else(|| ApiError::forbidden("no such room"))?;
        if !room.members.contains_key(&me.user_id) {
            return Err(ApiError::forbidden("you are not in this room"));
        }
        // Thread roots with their replies, newest activity first.
        let mut threads: Vec<(u64, Arc<Event>, Vec<Arc<Event>>)> = Vec::new();
        for e in s.related_in_room(&room.room_id).into_iter().filter_map(|p| s.event(p)) {
            if let Some(("m.thread", root)) = relation(&e) {
                if let Some(t) = threads.iter_mut().find(|t| t.1.event_id == root) {
                    t.0 = e.pos;
                    t.2.push(e);
                } else if let Some(r) = s.event_by_id(root) {
                    threads.push((e.pos, r, vec![e]));
                }
            }
        }
        threads.retain(|(_, root, replies)| {
            s.can_see(room, &me.user_id, root.pos)
                && (!participated_only || root.sender == me.user_id || replies.iter().any(|r| r.sender == me.user_id))
        });
        threads.sort_by(|a, b| b.0.cmp(&a.0));
        if let Some(f) = from {
            threads.retain(|t| t.0 <= f);
        }
        let more = threads.len() > limit;
        threads.truncate(limit);
        let viewer = (me.user_id.as_str(), me.device_id.as_str());
        let chunk: Vec<Value> = threads
            .iter()
            .map(|(_, root, replies)| {
                let mut v = s.client_event(root, Some(viewer), true);
                let latest = replies.last().map(|r| s.client_event(r, Some(viewer), true));
                v["unsigned"]["m.relations"] = json!({"m.thread": {
                    "latest_event": latest,
                    "count": replies.len(),
                    "current_user_participated": root.sender == me.user_id || replies.iter().any(|r| r.sender == me.user_id),
                }});
                v
            })
            .collect();
        let mut out = json!({"chunk": chunk});
        if more {
            if let Some(last) = threads.last() {
                out["next_batch"] = json!(format!("t{}", last.0.saturating_sub(1)));
            }
        }
        Ok(out)
    })
}
