//! Pushers (the push gateways a user has registered).

use mxconform_generated::client_server as cs;
use serde_json::{json, Value};

use super::Ctx;
use crate::error::{ApiError, ApiResult};

pub fn get_pushers(ctx: &Ctx, _req: cs::pusher::get_pushers::Request) -> ApiResult<Value> {
    let me = ctx.me()?;
    let list: Vec<Value> = ctx.server.read(|s| {
        s.pushers
            .get(&me.user_id)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    });
    Ok(json!({"pushers": list}))
}

pub fn post_pusher(ctx: &Ctx, req: cs::pusher::post_pusher::Request) -> ApiResult<Value> {
    let me = ctx.me()?.clone();
    let b = req.body;
    let key = (b.app_id.clone(), b.pushkey.clone());
    ctx.server.write(|state, batch| {
        if b.kind.is_some() && !b.append.unwrap_or(false) {
            // Without `append`, the same app id and push key leave any other user.
            let others: Vec<String> = state
                .pushers
                .iter()
                .filter(|(u, theirs)| **u != me.user_id && theirs.contains_key(&key))
                .map(|(u, _)| u.clone())
                .collect();
            for user in others {
                state.put_pusher(batch, &user, &key, None);
            }
        }
        if b.kind.is_none() {
            // `kind: null` deletes the pusher.
            state.put_pusher(batch, &me.user_id, &key, None);
            return Ok(json!({}));
        }
        if b.app_display_name.is_none()
            || b.device_display_name.is_none()
            || b.lang.is_none()
            || b.data.is_none()
        {
            return Err(ApiError::missing_param(
                "a new pusher needs app_display_name, device_display_name, lang and data",
            ));
        }
        if b.kind.as_deref() == Some("http") {
            let url = b
                .data
                .as_ref()
                .and_then(|d| d.url.clone())
                .unwrap_or_default();
            if !url.starts_with("http") || !url.ends_with("/_matrix/push/v1/notify") {
                return Err(ApiError::invalid_param(
                    "an http pusher's data.url must end in /_matrix/push/v1/notify",
                ));
            }
        }
        let mut v = json!({
            "pushkey": b.pushkey, "kind": b.kind, "app_id": b.app_id,
            "app_display_name": b.app_display_name, "device_display_name": b.device_display_name,
            "lang": b.lang, "data": serde_json::to_value(&b.data).unwrap_or(json!({})),
        });
        if let Some(t) = &b.profile_tag {
            v["profile_tag"] = json!(t);
        }
        state.put_pusher(batch, &me.user_id, &key, Some(v));
        Ok(json!({}))
    })
}
