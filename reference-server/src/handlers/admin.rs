//! Server administration: who is a user, and locking or suspending accounts. Administrators
//! are the user ids of `Config::admins`.

use mxconform_generated::client_server as cs;
use serde_json::{json, Value};

use super::Ctx;
use crate::error::{ApiError, ApiResult};

/// Whether `user_id` administers this server.
pub fn is_admin(ctx: &Ctx, user_id: &str) -> bool {
    ctx.server.config.admins.iter().any(|a| a == user_id)
}

fn require_admin(ctx: &Ctx) -> ApiResult<()> {
    let me = ctx.me()?;
    if is_admin(ctx, &me.user_id) {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "only a server administrator may do this",
        ))
    }
}

/// The target of an administrative action: a local, existing, active account.
fn target(ctx: &Ctx, user_id: &str) -> ApiResult<()> {
    let local = user_id
        .split_once(':')
        .is_some_and(|(_, server)| server == ctx.server.config.server_name);
    if !local {
        return Err(ApiError::invalid_param("that user is not on this server"));
    }
    let active = ctx
        .server
        .read(|s| s.users.get(user_id).is_some_and(|u| !u.deactivated));
    if active {
        Ok(())
    } else {
        Err(ApiError::not_found("no such user, or deactivated"))
    }
}

/// Reads (`set: None`) or sets a flag of a user's account: `locked` or `suspended`.
fn flag(ctx: &Ctx, user_id: &str, name: &'static str, set: Option<bool>) -> ApiResult<Value> {
    require_admin(ctx)?;
    target(ctx, user_id)?;
    if set.is_some() && is_admin(ctx, user_id) {
        return Err(ApiError::forbidden(
            "an administrator cannot be locked or suspended",
        ));
    }
    ctx.server.write(|state, batch| {
        let mut user = state
            .users
            .get(user_id)
            .cloned()
            .ok_or_else(|| ApiError::not_found("no such user"))?;
        let field = match name {
            "locked" => &mut user.locked,
            _ => &mut user.suspended,
        };
        if let Some(v) = set {
            if *field != v {
                *field = v;
                state.put_user(batch, user.clone());
            }
        }
        let now = if name == "locked" {
            user.locked
        } else {
            user.suspended
        };
        Ok(json!({ name: now }))
    })
}

pub fn get_admin_lock_user(
    ctx: &Ctx,
    req: cs::admin::get_admin_lock_user::Request,
) -> ApiResult<Value> {
    flag(ctx, req.user_id.as_str(), "locked", None)
}

pub fn set_admin_lock_user(
    ctx: &Ctx,
    req: cs::admin::set_admin_lock_user::Request,
) -> ApiResult<Value> {
    flag(ctx, req.user_id.as_str(), "locked", Some(req.body.locked))
}

pub fn get_admin_suspend_user(
    ctx: &Ctx,
    req: cs::admin::get_admin_suspend_user::Request,
) -> ApiResult<Value> {
    flag(ctx, req.user_id.as_str(), "suspended", None)
}

pub fn set_admin_suspend_user(
    ctx: &Ctx,
    req: cs::admin::set_admin_suspend_user::Request,
) -> ApiResult<Value> {
    flag(
        ctx,
        req.user_id.as_str(),
        "suspended",
        Some(req.body.suspended),
    )
}

/// Operations a suspended account may not use: what acts on others or adds content. Reading,
/// leaving, logging out and deactivating stay open.
pub const BARRED_WHEN_SUSPENDED: &[&str] = &[
    "sendMessage",
    "setRoomStateWithKey",
    "createRoom",
    "joinRoom",
    "joinRoomById",
    "inviteUser",
    "inviteBy3PID",
    "knockRoom",
    "kick",
    "ban",
    "unban",
    "upgradeRoom",
    "setProfileField",
    "deleteProfileField",
    "setRoomAlias",
    "deleteRoomAlias",
    "uploadContent",
    "uploadContentToMXC",
    "createContent",
    "setRoomVisibilityOnDirectory",
];

/// Operations a locked account may still use: ending its sessions.
pub const OPEN_WHEN_LOCKED: &[&str] = &["logout", "logout_all"];

pub fn get_who_is(ctx: &Ctx, req: cs::admin::get_who_is::Request) -> ApiResult<Value> {
    // About oneself, or anyone for an administrator.
    let me = ctx.me()?;
    if me.user_id != req.user_id && !super::admin::is_admin(ctx, &me.user_id) {
        return Err(ApiError::forbidden(
            "only an administrator may look up another user",
        ));
    }
    ctx.server.read(|s| {
        let mut devices = serde_json::Map::new();
        for (id, d) in s.devices.get(&req.user_id).into_iter().flatten() {
            devices.insert(
                id.clone(),
                json!({"sessions": [{"connections": [{"last_seen": d.last_seen_ts}]}]}),
            );
        }
        Ok(json!({"user_id": req.user_id, "devices": devices}))
    })
}
