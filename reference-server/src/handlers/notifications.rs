//! The notifications list.

use mxconform_generated::client_server as cs;
use serde_json::{json, Value};

use super::events::parse_token;
use super::Ctx;
use crate::error::ApiResult;

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
            let list = s.notifications(room, &me.user_id);
            let list = &*list;
            let mut taken = 0;
            for (i, n) in list
                .iter()
                .enumerate()
                .rev()
                .filter(|(_, n)| n.pos < before)
            {
                if only_highlight && !crate::state::push::Notification::highlights_at(list, i) {
                    continue;
                }
                if !s.can_see(room, &me.user_id, n.pos) {
                    continue;
                }
                found.push((*n, read));
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
