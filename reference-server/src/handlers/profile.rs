//! Profiles: the whole profile and single fields (display name, avatar, custom fields), with
//! display name and avatar changes carried into the member events of joined rooms.

use mxconform_generated::client_server as cs;
use serde_json::{json, Value};

use super::{require_self, Ctx, Reply};
use crate::error::{ApiError, ApiResult};

/// A profile as JSON: display name, avatar and the custom fields.
fn profile_json(u: &crate::state::User) -> Value {
    let mut v = json!({});
    for (k, f) in &u.fields {
        v[k] = f.clone();
    }
    if let Some(d) = &u.displayname {
        v["displayname"] = json!(d);
    }
    if let Some(a) = &u.avatar_url {
        v["avatar_url"] = json!(a);
    }
    v
}

/// Largest profile (all fields, as JSON) a user may have.
const MAX_PROFILE_BYTES: usize = 64 * 1024;
/// Longest custom field name.
const MAX_KEY_BYTES: usize = 255;

/// A profile of another server's user, through a federation profile query (`field`: one).
fn remote_profile(ctx: &Ctx, user: &str, field: Option<&str>) -> Option<ApiResult<Reply>> {
    let host = user.split_once(':').map(|(_, h)| h)?;
    if host == ctx.server.config.server_name || ctx.server.federation.is_none() {
        return None;
    }
    let server = ctx.server.shared()?;
    let mut path = format!(
        "/_matrix/federation/v1/query/profile?user_id={}",
        crate::router::percent_encode(user)
    );
    if let Some(f) = field {
        path.push_str(&format!("&field={}", crate::router::percent_encode(f)));
    }
    let (host, field) = (host.to_string(), field.map(str::to_string));
    Some(Ok(Reply::outbound(async move {
        let v = crate::federation::joins::ask(&server, &host, "GET", &path, None).await?;
        match field {
            Some(f) => v
                .get(&f)
                .map(|x| json!({ f.clone(): x }))
                .ok_or_else(|| ApiError::not_found(format!("no `{f}` in this profile"))),
            None => Ok(v),
        }
    })))
}

pub fn get_user_profile(
    ctx: &Ctx,
    req: cs::profile::get_user_profile::Request,
) -> ApiResult<Reply> {
    if let Some(r) = remote_profile(ctx, req.user_id.as_str(), None) {
        return r;
    }
    ctx.server.read(|s| {
        let u = s
            .users
            .get(req.user_id.as_str())
            .filter(|u| !u.deactivated)
            .ok_or_else(|| ApiError::not_found("no such user"))?;
        Ok(Reply::from(profile_json(u)))
    })
}

pub fn get_profile_field(
    ctx: &Ctx,
    req: cs::profile::get_profile_field::Request,
) -> ApiResult<Reply> {
    if let Some(r) = remote_profile(ctx, req.user_id.as_str(), Some(req.key_name.as_str())) {
        return r;
    }
    ctx.server.read(|s| {
        let u = s
            .users
            .get(req.user_id.as_str())
            .filter(|u| !u.deactivated)
            .ok_or_else(|| ApiError::not_found("no such user"))?;
        match profile_json(u).get(req.key_name.as_str()) {
            Some(v) => Ok(Reply::from(json!({ req.key_name.clone(): v }))),
            None => Err(ApiError::not_found(format!(
                "no `{}` in this profile",
                req.key_name
            ))),
        }
    })
}

/// A custom field name: the spec's namespaced identifier grammar, at most 255 bytes.
fn check_custom_key(key: &str) -> ApiResult<()> {
    if key.len() > MAX_KEY_BYTES {
        return Err(ApiError::key_too_large("the field name is over 255 bytes"));
    }
    let ok = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && key.bytes().next().is_some_and(|b| b.is_ascii_lowercase());
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid_param(
            "a custom field name is lower-case letters, digits, `.`, `_` and `-`, starting with a letter",
        ))
    }
}

pub fn set_profile_field(
    ctx: &Ctx,
    req: cs::profile::set_profile_field::Request,
) -> ApiResult<Value> {
    require_self(ctx, req.user_id.as_str())?;
    let key = req.key_name.clone();
    let value = req
        .body
        .get(&key)
        .ok_or_else(|| ApiError::bad_json(format!("the body must hold `{key}`")))?
        .clone();
    let me = req.user_id.as_str().to_string();
    if !matches!(key.as_str(), "displayname" | "avatar_url") {
        check_custom_key(&key)?;
        return ctx.server.write(|state, batch| {
            let mut user = state
                .users
                .get(&me)
                .cloned()
                .ok_or_else(|| ApiError::not_found("no such user"))?;
            user.fields.insert(key.clone(), value.clone());
            if profile_json(&user).to_string().len() > MAX_PROFILE_BYTES {
                return Err(ApiError::profile_too_large(
                    "the profile would be over 64 KiB",
                ));
            }
            state.put_user(batch, user);
            Ok(json!({}))
        });
    }
    let value = match value {
        Value::String(s) => Some(s),
        Value::Null => None,
        _ => return Err(ApiError::bad_json(format!("`{key}` must be a string"))),
    };
    if key == "avatar_url" && value.as_deref().is_some_and(|v| !v.starts_with("mxc://")) {
        return Err(ApiError::bad_json("avatar_url must be an mxc:// URI"));
    }
    ctx.server
        .write(|state, batch| set_public_field(state, batch, &me, &key, value.clone()))
}

/// Sets (or clears) the display name or avatar, and tells others: new member events in every
/// joined room, and a presence update carrying the new values.
pub fn set_public_field(
    state: &mut crate::state::State,
    batch: &mut crate::store::Batch,
    me: &str,
    key: &str,
    value: Option<String>,
) -> ApiResult<Value> {
    let mut user = state
        .users
        .get(me)
        .cloned()
        .ok_or_else(|| ApiError::not_found("no such user"))?;
    if key == "displayname" {
        user.displayname = value.clone();
    } else {
        user.avatar_url = value.clone();
    }
    state.put_user(batch, user.clone());
    let rooms: Vec<String> = state
        .user_rooms
        .get(me)
        .map(|r| r.iter().cloned().collect())
        .unwrap_or_default();
    for room_id in rooms {
        if state.rooms.get(&room_id).and_then(|r| r.membership(me)) != Some("join") {
            continue;
        }
        let mut content = state
            .state_content(&room_id, "m.room.member", me)
            .cloned()
            .unwrap_or(json!({}));
        match &value {
            Some(v) => content[key] = json!(v),
            None => {
                if let Some(m) = content.as_object_mut() {
                    m.remove(key);
                }
            }
        }
        content["membership"] = json!("join");
        // A room whose rules refuse the change (a member who may not change their own
        // member event) keeps the old profile; the others get the new one.
        let _ = state.append(
            batch,
            crate::state::Append::new(&room_id, me, "m.room.member", Some(me), content),
        );
    }
    // The presence update of a profile change (presence events carry the display name and
    // avatar): the current presence, or online (the user is active) if none was set.
    let mut presence = state
        .presence
        .get(me)
        .map(|(c, _)| c.clone())
        .unwrap_or_else(|| json!({"presence": "online"}));
    presence["last_active_ts"] = json!(crate::state::now_ms());
    state.put_presence(batch, me, presence);
    Ok(json!({}))
}

pub fn delete_profile_field(
    ctx: &Ctx,
    req: cs::profile::delete_profile_field::Request,
) -> ApiResult<Value> {
    require_self(ctx, req.user_id.as_str())?;
    let me = req.user_id.as_str().to_string();
    let key = req.key_name.clone();
    // Deleting a field that is not there is no error: the field is gone either way.
    ctx.server.write(|state, batch| {
        let user = state
            .users
            .get(&me)
            .cloned()
            .ok_or_else(|| ApiError::not_found("no such user"))?;
        match key.as_str() {
            "displayname" | "avatar_url" => {
                let had = if key == "displayname" {
                    user.displayname.is_some()
                } else {
                    user.avatar_url.is_some()
                };
                if had {
                    set_public_field(state, batch, &me, &key, None)?;
                }
            }
            _ => {
                if user.fields.contains_key(&key) {
                    let mut user = user;
                    user.fields.remove(&key);
                    state.put_user(batch, user);
                }
            }
        }
        Ok(json!({}))
    })
}
