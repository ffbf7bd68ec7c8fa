//! The rooms the caller shares with another user.

use mxconform_generated::client_server as cs;
use serde_json::{json, Value};

use super::Ctx;
use crate::error::{ApiError, ApiResult};

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
