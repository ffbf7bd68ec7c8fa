//! Presence.

use std::collections::BTreeSet;

use mxconform_generated::client_server as cs;
use serde_json::{json, Value};

use super::{require_self, Ctx};
use crate::error::{ApiError, ApiResult};
use crate::state::{now_ms, State};

pub fn set_presence(ctx: &Ctx, req: cs::presence::set_presence::Request) -> ApiResult<Value> {
    require_self(ctx, &req.user_id)?;
    let presence = req.body.presence.as_str().to_string();
    let status = req.body.status_msg.clone();
    ctx.server.write(|state, batch| {
        let mut content = json!({"presence": presence, "last_active_ts": now_ms()});
        if let Some(s) = status {
            content["status_msg"] = json!(s);
        }
        state.put_presence(batch, &req.user_id, content);
        Ok(json!({}))
    })
}

pub fn get_presence(ctx: &Ctx, req: cs::presence::get_presence::Request) -> ApiResult<Value> {
    let me = ctx.me()?;
    ctx.server.read(|s| {
        // Another server's user is known by the rooms shared with them.
        if s.is_local(&req.user_id) && !s.users.contains_key(&req.user_id) {
            return Err(ApiError::not_found("no such user"));
        }
        if !s.room_peers(&me.user_id).contains(req.user_id.as_str()) {
            return Err(ApiError::forbidden("you share no room with that user"));
        }
        let (content, _) = s
            .presence
            .get(&req.user_id)
            .cloned()
            .unwrap_or((json!({"presence": "offline"}), 0));
        let mut out = json!({"presence": content["presence"]});
        if let Some(ts) = content.get("last_active_ts").and_then(Value::as_u64) {
            out["last_active_ago"] = json!(now_ms().saturating_sub(ts));
        }
        if let Some(m) = content.get("status_msg") {
            out["status_msg"] = m.clone();
        }
        out["currently_active"] = json!(content["presence"] == "online");
        Ok(out)
    })
}

/// Presence events for a sync: those of `peers` (the users sharing a room with the caller, the
/// caller included) whose presence changed after `since`.
pub fn presence_events(state: &State, peers: &BTreeSet<&str>, since: u64) -> Vec<Value> {
    let now = now_ms();
    let mut out = Vec::new();
    for &p in peers {
        if let Some((c, pos)) = state.presence.get(p) {
            if *pos > since {
                let mut content = json!({"presence": c["presence"], "currently_active": c["presence"] == "online"});
                if let Some(ts) = c.get("last_active_ts").and_then(Value::as_u64) {
                    content["last_active_ago"] = json!(now.saturating_sub(ts));
                }
                if let Some(m) = c.get("status_msg") {
                    content["status_msg"] = m.clone();
                }
                if let Some(u) = state.users.get(p) {
                    if let Some(d) = &u.displayname {
                        content["displayname"] = json!(d);
                    }
                    if let Some(a) = &u.avatar_url {
                        content["avatar_url"] = json!(a);
                    }
                }
                out.push(json!({"type": "m.presence", "sender": p, "content": content}));
            }
        }
    }
    out
}
