//! Profiles: the whole profile and single fields (display name, avatar, custom fields), with
//! display name and avatar changes carried into the member events of joined rooms.

use mxconform_generated::client_server as cs;
use serde_json::{json, Value};

use super::{require_self, Ctx};
use crate::error::{ApiError, ApiResult};

pub fn get_user_profile(
    ctx: &Ctx,
    req: cs::profile::get_user_profile::Request,
) -> ApiResult<Value> {
    ctx.server.read(|s| {
        let u = s
            .users
            .get(req.user_id.as_str())
            .filter(|u| !u.deactivated)
            .ok_or_else(|| ApiError::not_found("no such user"))?;
        let mut v = json!({});
        if let Some(d) = &u.displayname {
            v["displayname"] = json!(d);
        }
        if let Some(a) = &u.avatar_url {
            v["avatar_url"] = json!(a);
        }
        Ok(v)
    })
}

pub fn get_profile_field(
    ctx: &Ctx,
    req: cs::profile::get_profile_field::Request,
) -> ApiResult<Value> {
    ctx.server.read(|s| {
        let u = s
            .users
            .get(req.user_id.as_str())
            .filter(|u| !u.deactivated)
            .ok_or_else(|| ApiError::not_found("no such user"))?;
        let value = match req.key_name.as_str() {
            "displayname" => u.displayname.clone(),
            "avatar_url" => u.avatar_url.clone(),
            _ => None,
        };
        match value {
            Some(v) => Ok(json!({ req.key_name.clone(): v })),
            None => Err(ApiError::not_found(format!(
                "no `{}` in this profile",
                req.key_name
            ))),
        }
    })
}

pub fn set_profile_field(
    ctx: &Ctx,
    req: cs::profile::set_profile_field::Request,
) -> ApiResult<Value> {
    require_self(ctx, req.user_id.as_str())?;
    let key = req.key_name.clone();
    if !matches!(key.as_str(), "displayname" | "avatar_url") {
        return Err(ApiError::forbidden(format!(
            "this server keeps only displayname and avatar_url, not `{key}`"
        )));
    }
    let value = req
        .body
        .get(&key)
        .ok_or_else(|| ApiError::bad_json(format!("the body must hold `{key}`")))?;
    let value = match value {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        _ => return Err(ApiError::bad_json(format!("`{key}` must be a string"))),
    };
    if key == "avatar_url" && value.as_deref().is_some_and(|v| !v.starts_with("mxc://")) {
        return Err(ApiError::bad_json("avatar_url must be an mxc:// URI"));
    }
    let me = req.user_id.as_str().to_string();
    ctx.server.write(|state, batch| {
        let mut user = state
            .users
            .get(&me)
            .cloned()
            .ok_or_else(|| ApiError::not_found("no such user"))?;
        if key == "displayname" {
            user.displayname = value.clone();
        } else {
            user.avatar_url = value.clone();
        }
        state.put_user(batch, user);
        // New member events in every joined room.
        let rooms: Vec<String> = state
            .user_rooms
            .get(&me)
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default();
        for room_id in rooms {
            if state.rooms.get(&room_id).and_then(|r| r.membership(&me)) != Some("join") {
                continue;
            }
            let mut content = state
                .state_content(&room_id, "m.room.member", &me)
                .cloned()
                .unwrap_or(json!({}));
            match &value {
                Some(v) => content[&key] = json!(v),
                None => {
                    if let Some(m) = content.as_object_mut() {
                        m.remove(&key);
                    }
                }
            }
            content["membership"] = json!("join");
            state.append(
                batch,
                &room_id,
                &me,
                "m.room.member",
                Some(&me),
                content,
                None,
                None,
                None,
            );
        }
        Ok(json!({}))
    })
}
