//! Server-side search of room events.

use mxconform_generated::client_server as cs;
use serde_json::{json, Value};

use super::events::parse_token;
use super::Ctx;
use crate::error::{ApiError, ApiResult};

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
