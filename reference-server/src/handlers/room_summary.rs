//! Room summaries (previews of rooms).

use mxconform_generated::client_server as cs;
use serde_json::{json, Value};

use super::rooms::resolve_room;
use super::Ctx;
use crate::error::{ApiError, ApiResult};

pub fn get_room_summary(
    ctx: &Ctx,
    req: cs::room_summary::get_room_summary::Request,
) -> ApiResult<Value> {
    let me = ctx.user.clone();
    ctx.server.read(|s| {
        let room_id = resolve_room(s, &req.room_id_or_alias)?;
        let room = s.room(&room_id)?;
        let content = |kind: &str, key: &str| {
            s.state_content(&room_id, kind, "")
                .and_then(|c| c.get(key))
                .cloned()
        };
        let join_rule = content("m.room.join_rules", "join_rule").unwrap_or(json!("invite"));
        let world = content("m.room.history_visibility", "history_visibility")
            == Some(json!("world_readable"));
        let membership = me.as_ref().and_then(|m| room.membership(&m.user_id));
        let peekable = matches!(
            join_rule.as_str(),
            Some("public" | "knock" | "knock_restricted")
        ) || world;
        if membership.is_none() && !peekable {
            return Err(ApiError::not_found("no such room, or you may not see it"));
        }
        let mut v = s.room_overview(room);
        v["room_version"] = json!(room.version);
        if let Some(m) = membership {
            v["membership"] = json!(m);
        }
        Ok(v)
    })
}
