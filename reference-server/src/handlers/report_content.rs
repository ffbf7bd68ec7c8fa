//! Reports of rooms, events and users to the server administrators.

use mxconform_generated::client_server as cs;
use serde_json::{json, Value};

use super::Ctx;
use crate::error::{ApiError, ApiResult};

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
