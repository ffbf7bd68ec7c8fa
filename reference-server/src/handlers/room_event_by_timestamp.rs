//! The event closest to a point in time.

use mxconform_generated::client_server as cs;
use serde_json::{json, Value};

use super::Ctx;
use crate::error::{ApiError, ApiResult};

pub fn get_event_by_timestamp(
    ctx: &Ctx,
    req: cs::room_event_by_timestamp::get_event_by_timestamp::Request,
) -> ApiResult<Value> {
    let me = ctx.me()?;
    let forwards = req.dir.as_str() == "f";
    let ts = req.ts.max(0) as u64;
    ctx.server.read(|s| {
        let room = s.room(req.room_id.as_str())?;
        closest_event(s, room, ts, forwards, |p| s.can_see(room, &me.user_id, p))
    })
}

/// The room's event closest to `ts` in a direction (`forwards`: at or after, else at or
/// before) among those `shown` lets through, as `{event_id, origin_server_ts}`. Events from
/// other servers need not be in time order; on a tie the one met first going that way wins
/// (the earliest in the stream forwards, the latest backwards).
pub(crate) fn closest_event(
    s: &crate::state::State,
    room: &crate::state::Room,
    ts: u64,
    forwards: bool,
    shown: impl Fn(u64) -> bool,
) -> ApiResult<Value> {
    let events = room
        .timeline
        .iter()
        .filter(|p| shown(**p))
        .filter_map(|p| s.event(*p));
    let found = if forwards {
        events.filter(|e| e.ts >= ts).min_by_key(|e| (e.ts, e.pos))
    } else {
        events.filter(|e| e.ts <= ts).max_by_key(|e| (e.ts, e.pos))
    };
    let e =
        found.ok_or_else(|| ApiError::not_found("no event in that direction from that time"))?;
    Ok(json!({"event_id": e.event_id, "origin_server_ts": e.ts}))
}
