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
    let record_key = |k: &(String, String)| format!("{}\u{0}{}\u{0}{}", me.user_id, k.0, k.1);
    ctx.server.write(|state, batch| {
        if b.kind.is_some() && !b.append.unwrap_or(false) {
            // Without `append`, the same app id and push key leave any other user.
            for (user, theirs) in state.pushers.iter_mut().filter(|(u, _)| **u != me.user_id) {
                if theirs.remove(&key).is_some() {
                    batch.delete("pusher", format!("{user}\u{0}{}\u{0}{}", key.0, key.1));
                }
            }
        }
        let pushers = state.pushers.entry(me.user_id.clone()).or_default();
        if b.kind.is_none() {
            // `kind: null` deletes the pusher.
            pushers.remove(&key);
            batch.delete("pusher", record_key(&key));
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
        batch.put("pusher", record_key(&key), &v);
        pushers.insert(key, v);
        Ok(json!({}))
    })
}
