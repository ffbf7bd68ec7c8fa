//! Space hierarchies.

use std::collections::{BTreeSet, HashMap};

use mxconform_generated::client_server as cs;
use serde_json::{json, Value};

use super::{Ctx, Reply};
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

/// The parameters of a hierarchy request, and where its page starts.
#[derive(Clone)]
struct Walk {
    root: String,
    user: String,
    limit: usize,
    max_depth: usize,
    suggested_only: bool,
    skip: usize,
    /// What the token keeps of the first request (later pages may not change it).
    params: String,
}

/// What the walk learned from other servers of rooms this server is not in: each room's
/// summary (with its `children_state`), and the rooms none would tell about.
#[derive(Default)]
struct Remote {
    rooms: HashMap<String, Value>,
    unreachable: BTreeSet<String>,
}

/// A suggested child, when only those are asked for.
fn wanted(content: Option<&Value>, suggested_only: bool) -> bool {
    !suggested_only
        || content
            .and_then(|c| c.get("suggested"))
            .and_then(Value::as_bool)
            .unwrap_or(false)
}

/// The `via` servers of a child's `m.space.child` content.
fn via_of(content: Option<&Value>) -> Vec<String> {
    content
        .and_then(|c| c.get("via"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The walk, depth first (each room followed by its children's subtrees, in order): the
/// rooms, or the rooms to ask other servers about first (with their `via`). `give_up`: rooms
/// nobody was asked about are left out instead.
fn walk(
    s: &State,
    w: &Walk,
    remote: &Remote,
    give_up: bool,
) -> ApiResult<Result<Vec<Value>, Vec<(String, Vec<String>)>>> {
    let mut out = Vec::new();
    let mut ask = Vec::new();
    let mut seen = BTreeSet::new();
    let mut stack = vec![(w.root.clone(), 0usize, Vec::new())];
    while let Some((id, depth, via)) = stack.pop() {
        if !seen.insert(id.clone()) {
            continue;
        }
        let (entry, kids): (Value, Vec<(String, Vec<String>)>) =
            if let Some(room) = s.rooms.get(&id) {
                if !can_preview(room, s, &w.user) {
                    if depth == 0 {
                        return Err(ApiError::forbidden("you cannot see this space"));
                    }
                    continue;
                }
                let kids = children(room)
                    .into_iter()
                    .map(|(child, _)| {
                        let content = room.state_content("m.space.child", &child);
                        (child, content)
                    })
                    .filter(|(_, c)| wanted(*c, w.suggested_only))
                    .map(|(child, c)| (child, via_of(c)))
                    .collect();
                (hierarchy_entry(s, room), kids)
            } else if let Some(entry) = remote.rooms.get(&id) {
                // Another server's summary: its children from its `children_state`.
                let kids = entry
                    .get("children_state")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|e| e.get("type").and_then(Value::as_str) == Some("m.space.child"))
                    .filter(|e| wanted(e.get("content"), w.suggested_only))
                    .filter_map(|e| {
                        let via = via_of(e.get("content"));
                        let child = e.get("state_key").and_then(Value::as_str)?;
                        (!via.is_empty()).then(|| (child.to_string(), via))
                    })
                    .collect();
                (entry.clone(), kids)
            } else if remote.unreachable.contains(&id) || give_up {
                if depth == 0 {
                    return Err(ApiError::not_found(format!(
                        "no server would describe {id} to this one"
                    )));
                }
                continue;
            } else {
                ask.push((id, via));
                continue;
            };
        out.push(entry);
        if depth < w.max_depth {
            stack.extend(kids.into_iter().rev().map(|(c, via)| (c, depth + 1, via)));
        }
    }
    Ok(if ask.is_empty() { Ok(out) } else { Err(ask) })
}

/// The page of the walk's rooms the request asked for.
fn page(rooms: Vec<Value>, w: &Walk) -> Value {
    let total = rooms.len();
    let page: Vec<Value> = rooms.into_iter().skip(w.skip).take(w.limit).collect();
    let mut v = json!({"rooms": page});
    if w.skip + w.limit < total {
        v["next_batch"] = json!(format!("h{}_{}", w.skip + w.limit, w.params));
    }
    v
}

/// At most this many rooms are asked of other servers for one request, in at most this many
/// rounds (a round asks about the rooms the previous one revealed).
const MAX_ASKED: usize = 50;
const MAX_ROUNDS: usize = 8;

pub fn get_space_hierarchy(
    ctx: &Ctx,
    req: cs::space_hierarchy::get_space_hierarchy::Request,
) -> ApiResult<Reply> {
    let me = ctx.me()?;
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
    let w = Walk {
        root: req.room_id.to_string(),
        user: me.user_id.clone(),
        limit: req.limit.unwrap_or(50).clamp(1, 200) as usize,
        max_depth: req.max_depth.map_or(usize::MAX, |d| d.max(0) as usize),
        suggested_only,
        skip,
        params,
    };
    let federates = ctx.server.federation.is_some();
    let first = ctx
        .server
        .read(|s| walk(s, &w, &Remote::default(), !federates))?;
    let Err(_) = first else {
        return Ok(Reply::from(page(first.unwrap_or_default(), &w)));
    };
    // Rooms this server is not in: asked of the servers their parents name.
    let server = ctx
        .server
        .shared()
        .ok_or_else(|| ApiError::internal("the server is shutting down"))?;
    Ok(Reply::outbound(async move {
        let mut remote = Remote::default();
        let mut asked = 0;
        for _ in 0..MAX_ROUNDS {
            let ask = match server.read(|s| walk(s, &w, &remote, false))? {
                Ok(rooms) => return Ok(page(rooms, &w)),
                Err(ask) => ask,
            };
            for (id, via) in ask {
                asked += 1;
                if asked > MAX_ASKED {
                    break;
                }
                let answer = crate::federation::hierarchy::remote_hierarchy(
                    &server,
                    &id,
                    &via,
                    w.suggested_only,
                )
                .await;
                let Some(mut answer) = answer else {
                    remote.unreachable.insert(id);
                    continue;
                };
                // Its children's summaries come with it; those it may not show are not asked.
                if let Some(Value::Array(kids)) = answer.get_mut("children").map(Value::take) {
                    for kid in kids {
                        if let Some(kid_id) = kid.get("room_id").and_then(Value::as_str) {
                            remote.rooms.entry(kid_id.to_string()).or_insert(kid);
                        }
                    }
                }
                for gone in answer
                    .get("inaccessible_children")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                {
                    remote.unreachable.insert(gone.to_string());
                }
                let room = answer.get_mut("room").map(Value::take).unwrap_or_default();
                remote.rooms.insert(id, room);
            }
            if asked > MAX_ASKED {
                break;
            }
        }
        let rooms = server
            .read(|s| walk(s, &w, &remote, true))?
            .unwrap_or_default();
        Ok(page(rooms, &w))
    }))
}
