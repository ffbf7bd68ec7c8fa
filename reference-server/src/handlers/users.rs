//! The user directory.

use mxconform_generated::client_server as cs;
use serde_json::{json, Value};

use super::Ctx;
use crate::error::ApiResult;

pub fn search_user_directory(
    ctx: &Ctx,
    req: cs::users::search_user_directory::Request,
) -> ApiResult<Value> {
    let me = ctx.me()?;
    let term = req.body.search_term.to_lowercase();
    let limit = req.body.limit.unwrap_or(10).clamp(1, 100) as usize;
    ctx.server.read(|s| {
        // Users who share a room with the caller, or who are in a room anyone may see: published,
        // with a public join rule, or world-readable.
        let mut visible = s.room_peers(&me.user_id);
        let open = |r: &&crate::state::Room| {
            r.public
                || r.world_readable()
                || s.state_content(&r.room_id, "m.room.join_rules", "")
                    .and_then(|c| c.get("join_rule"))
                    .and_then(Value::as_str)
                    == Some("public")
        };
        for r in s.rooms.values().filter(open) {
            visible.extend(r.joined().map(String::as_str));
        }
        let mut hits: Vec<Value> = visible
            .iter()
            .filter_map(|u| s.users.get(*u))
            .filter(|u| !u.deactivated)
            .filter(|u| {
                u.user_id.to_lowercase().contains(&term)
                    || u.displayname
                        .as_deref()
                        .is_some_and(|d| d.to_lowercase().contains(&term))
            })
            .map(|u| {
                let mut v = json!({"user_id": u.user_id});
                if let Some(d) = &u.displayname {
                    v["display_name"] = json!(d);
                }
                if let Some(a) = &u.avatar_url {
                    v["avatar_url"] = json!(a);
                }
                v
            })
            .collect();
        let limited = hits.len() > limit;
        hits.truncate(limit);
        Ok(json!({"results": hits, "limited": limited}))
    })
}
