//! Space hierarchies.

use std::collections::BTreeSet;

use mxconform_generated::client_server as cs;
use serde_json::{json, Value};

use super::Ctx;
use crate::error::{ApiError, ApiResult};
use crate::state::{Room, State};

/// A room's entry in the hierarchy: the public room fields, its type and its children.
pub(crate) fn hierarchy_entry(state: &State, room: &Room) -> Value {
    let mut v = state.room_overview(room);
    v["children_state"] = json!(children(room)
        .into_iter()
        .filter_map(|(_, p)| state.event(p))
        .map(|e| json!({"type": e.kind, "state_key": e.state_key, "content": e.content, "sender": e.sender, "origin_server_ts": e.ts}))
        .collect::<Vec<_>>());
    v
}

/// The room's `m.space.child` events with a `via` list: (child room id, event position).
pub(crate) fn children(room: &Room) -> Vec<(String, u64)> {
    room.state
        .iter()
        .filter(|((kind, _), _)| kind == "m.space.child")
        .filter(|(_, c)| {
            c.pdu
                .content()
                .get("via")
                .and_then(Value::as_array)
                .is_some_and(|v| !v.is_empty())
        })
        .map(|((_, key), c)| (key.clone(), c.pos))
        .collect()
}

fn can_preview(room: &Room, state: &State, user: &str) -> bool {
    let content = |kind: &str, key: &str| {
        state
            .state_content(&room.room_id, kind, "")
            .and_then(|c| c.get(key))
            .cloned()
    };
    matches!(room.membership(user), Some("join" | "invite"))
        || content("m.room.history_visibility", "history_visibility")
            == Some(json!("world_readable"))
        || match content("m.room.join_rules", "join_rule")
            .as_ref()
            .and_then(Value::as_str)
        {
            Some("public" | "knock" | "knock_restricted") => true,
            // Restricted rooms show to those who meet one of their conditions.
            Some("restricted") => super::rooms::restricted_allows(state, &room.room_id, user),
            _ => false,
        }
}

pub fn get_space_hierarchy(
    ctx: &Ctx,
    req: cs::space_hierarchy::get_space_hierarchy::Request,
) -> ApiResult<Value> {
    let me = ctx.me()?;
    let limit = req.limit.unwrap_or(50).clamp(1, 200) as usize;
    let max_depth = req
        .max_depth
        .map(|d| d.max(0) as usize)
        .unwrap_or(usize::MAX);
    let suggested_only = req.suggested_only.unwrap_or(false);
    // The token keeps the parameters of the first request, which later pages may not change.
    let params = format!(
        "{}.{}",
        u8::from(suggested_only),
        req.max_depth.map_or("-".to_string(), |d| d.to_string())
    );
    let skip: usize = match &req.from {
        Some(t) => {
            let (n, p) = t
                .strip_prefix('h')
                .and_then(|r| r.split_once('_'))
                .ok_or_else(|| ApiError::invalid_param("bad `from` token"))?;
            if p != params {
                return Err(ApiError::invalid_param(
                    "suggested_only and max_depth cannot change between pages",
                ));
            }
            n.parse()
                .map_err(|_| ApiError::invalid_param("bad `from` token"))?
        }
        None => 0,
    };
    ctx.server.read(|s| {
        let root = s.room(&req.room_id)?;
        if !can_preview(root, s, &me.user_id) {
            return Err(ApiError::forbidden("you cannot see this space"));
        }
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        // Depth first: each room is followed by its children's subtrees, in order.
        let mut stack = vec![(req.room_id.clone(), 0usize)];
        while let Some((id, depth)) = stack.pop() {
            if !seen.insert(id.clone()) {
                continue;
            }
            let Some(room) = s.rooms.get(&id) else {
                continue;
            };
            if !can_preview(room, s, &me.user_id) {
                continue;
            }
            out.push(hierarchy_entry(s, room));
            if depth < max_depth {
                let kids: Vec<String> = children(room)
                    .into_iter()
                    .filter(|(child, _)| {
                        !suggested_only
                            || room
                                .state_content("m.space.child", child)
                                .and_then(|c| c.get("suggested").and_then(Value::as_bool))
                                .unwrap_or(false)
                    })
                    .map(|(child, _)| child)
                    .collect();
                stack.extend(kids.into_iter().rev().map(|c| (c, depth + 1)));
            }
        }
        let total = out.len();
        let page: Vec<Value> = out.into_iter().skip(skip).take(limit).collect();
        let mut v = json!({"rooms": page});
        if skip + limit < total {
            v["next_batch"] = json!(format!("h{}_{params}", skip + limit));
        }
        Ok(v)
    })
}
