//! Room upgrades, the space hierarchy, cross-signing keys, and the legacy room initial sync
//! and single-event endpoints.

use std::collections::BTreeSet;

use mxconform_generated::client_server as cs;
use serde_json::{json, Value};

use super::discovery::ROOM_VERSIONS;
use super::rooms::{change_membership, send_state};
use super::Ctx;
use crate::error::{ApiError, ApiResult};
use crate::state::{Append, Room, State};

/// State carried over to an upgraded room.
const CARRIED: &[&str] = &[
    "m.room.name",
    "m.room.topic",
    "m.room.avatar",
    "m.room.join_rules",
    "m.room.history_visibility",
    "m.room.guest_access",
    "m.room.encryption",
    "m.room.server_acl",
    "m.room.power_levels",
];

pub fn upgrade_room(ctx: &Ctx, req: cs::room_upgrades::upgrade_room::Request) -> ApiResult<Value> {
    let me = ctx.me()?.clone();
    let version = req.body.new_version.clone();
    if !ROOM_VERSIONS.contains(&version.as_str()) {
        return Err(ApiError::unsupported_room_version(format!(
            "room version {version} is not supported"
        )));
    }
    ctx.server.write(|state, batch| {
        let old = state.room(&req.room_id)?.clone();
        // Upgrading ends the old room with a tombstone: the rules must allow the user that.
        let probe = json!({"body": "", "replacement_room": ""});
        state.check_allowed(Append::new(
            &old.room_id,
            &me.user_id,
            "m.room.tombstone",
            Some(""),
            probe,
        ))?;
        let v: u32 = version.parse().unwrap_or(12);
        let mut create = json!({"room_version": version, "predecessor": {"room_id": old.room_id}});
        if v < 11 {
            create["creator"] = json!(me.user_id);
        }
        if let Some(extra) = &req.body.additional_creators {
            if v < 12 {
                return Err(ApiError::bad_json(
                    "additional_creators needs room version 12 or later",
                ));
            }
            create["additional_creators"] = json!(extra);
        }
        let room_id = state.create_room(batch, &version, &me.user_id, create, false)?;
        change_membership(
            state,
            batch,
            &room_id,
            &me.user_id,
            &me.user_id,
            "join",
            json!({}),
        )?;
        for kind in CARRIED {
            if let Some(mut content) = state.state_content(&old.room_id, kind, "").cloned() {
                if *kind == "m.room.power_levels" && v >= 12 {
                    // Creators are not listed from room version 12 on.
                    if let Some(users) = content.get_mut("users").and_then(Value::as_object_mut) {
                        users.remove(&me.user_id);
                        for extra in req.body.additional_creators.iter().flatten() {
                            users.remove(extra.as_str());
                        }
                    }
                }
                send_state(state, batch, &room_id, &me.user_id, kind, "", content)?;
            }
        }
        // The old room points at the new one, and stops taking ordinary messages.
        send_state(
            state,
            batch,
            &old.room_id,
            &me.user_id,
            "m.room.tombstone",
            "",
            json!({"body": "This room has been replaced", "replacement_room": room_id}),
        )?;
        if let Some(mut pl) = state
            .state_content(&old.room_id, "m.room.power_levels", "")
            .cloned()
        {
            let needed = pl
                .get("events_default")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                .max(50);
            pl["events_default"] = json!(needed);
            pl["invite"] = json!(pl
                .get("invite")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                .max(50));
            send_state(
                state,
                batch,
                &old.room_id,
                &me.user_id,
                "m.room.power_levels",
                "",
                pl,
            )?;
        }
        // Aliases follow the room.
        let aliases: Vec<String> = state
            .aliases
            .iter()
            .filter(|(_, (r, _))| *r == old.room_id)
            .map(|(a, _)| a.clone())
            .collect();
        for a in aliases {
            if let Some(entry) = state.aliases.get_mut(&a) {
                entry.0 = room_id.clone();
                batch.put_record(
                    a.clone(),
                    &crate::state::records::AliasRecord {
                        room_id: room_id.clone(),
                        creator: entry.1.clone(),
                    },
                );
            }
        }
        Ok(json!({"replacement_room": room_id}))
    })
}

/// A room's entry in the hierarchy: the public room fields, its type and its children.
fn hierarchy_entry(state: &State, room: &Room) -> Value {
    let mut v = state.room_overview(room);
    v["children_state"] = json!(children(state, room)
        .into_iter()
        .filter_map(|(_, p)| state.event(p))
        .map(|e| json!({"type": e.kind, "state_key": e.state_key, "content": e.content, "sender": e.sender, "origin_server_ts": e.ts}))
        .collect::<Vec<_>>());
    v
}

/// The room's `m.space.child` events with a `via` list: (child room id, event position).
fn children(state: &State, room: &Room) -> Vec<(String, u64)> {
    room.state
        .iter()
        .filter(|((kind, _), _)| kind == "m.space.child")
        .filter(|(_, c)| {
            state.event(c.pos).is_some_and(|e| {
                e.content
                    .get("via")
                    .and_then(Value::as_array)
                    .is_some_and(|v| !v.is_empty())
            })
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
                let kids: Vec<String> = children(s, room)
                    .into_iter()
                    .filter(|(_, p)| {
                        !suggested_only
                            || s.event(*p)
                                .and_then(|e| e.content.get("suggested").and_then(Value::as_bool))
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
