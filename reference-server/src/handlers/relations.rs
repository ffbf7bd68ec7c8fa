//! Relations between events (edits, threads, references) and thread lists.

use mxconform_generated::client_server as cs;
use serde_json::{json, Value};
use std::sync::Arc;

use super::events::parse_token;
use super::Ctx;
use crate::error::{ApiError, ApiResult};
use crate::state::Event;

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
