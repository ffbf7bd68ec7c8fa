//! Server discovery: versions, .well-known and capabilities.

use mxconform_generated::client_server as cs;
use serde_json::{json, Value};

use super::Ctx;
use crate::error::ApiResult;

/// The spec versions this server speaks: every release up to the pinned one.
pub const VERSIONS: &[&str] = &[
    "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11",
    "v1.12", "v1.13", "v1.14", "v1.15", "v1.16", "v1.17", "v1.18", "v1.19",
];

/// Every room version of the spec: the core (mxconform-pdu) implements each one's rules.
pub const ROOM_VERSIONS: &[&str] = &[
    "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12",
];
pub const DEFAULT_ROOM_VERSION: &str = "12";

pub fn get_versions(_ctx: &Ctx, _req: cs::versions::get_versions::Request) -> ApiResult<Value> {
    Ok(json!({"versions": VERSIONS, "unstable_features": {}}))
}

pub fn get_wellknown(ctx: &Ctx, _req: cs::wellknown::get_wellknown::Request) -> ApiResult<Value> {
    Ok(json!({"m.homeserver": {"base_url": ctx.server.public_url()}}))
}

pub fn get_capabilities(
    ctx: &Ctx,
    _req: cs::capabilities::get_capabilities::Request,
) -> ApiResult<Value> {
    let available: serde_json::Map<String, Value> = ROOM_VERSIONS
        .iter()
        .map(|v| (v.to_string(), json!("stable")))
        .collect();
    Ok(json!({"capabilities": {
        "m.change_password": {"enabled": true},
        "m.room_versions": {"default": DEFAULT_ROOM_VERSION, "available": available},
        "m.set_displayname": {"enabled": true},
        "m.set_avatar_url": {"enabled": true},
        // Addresses can be added when there is a way to validate them.
        "m.3pid_changes": {"enabled": ctx.server.config.mail.is_some() || ctx.server.config.msisdn_delegate.is_some()},
        "m.get_login_token": {"enabled": true},
        "m.profile_fields": {"enabled": true},
    }}))
}

/// This server has no administrator contacts or support page configured, which the spec
/// answers with 404.
pub fn get_wellknown_support(
    _ctx: &Ctx,
    _req: cs::support::get_wellknown_support::Request,
) -> ApiResult<Value> {
    Err(crate::error::ApiError::not_found(
        "no support information is configured on this server",
    ))
}

/// This server is a Policy Server for the rooms that name it (and its key) and that one of
/// its users is in: the public key to put in their `m.room.policy`.
pub fn get_wellknown_policy(
    ctx: &Ctx,
    _req: cs::policy_server::get_wellknown_policy::Request,
) -> ApiResult<Value> {
    Ok(json!({"public_keys": {"ed25519": ctx.server.policy_key.public_base64()}}))
}

/// The configured TURN server; without one there is nothing to hand out.
pub fn get_turn_server(ctx: &Ctx, _req: cs::voip::get_turn_server::Request) -> ApiResult<Value> {
    ctx.me()?;
    let turn = ctx.server.config.turn.as_ref().ok_or_else(|| {
        crate::error::ApiError::not_found("no TURN server is configured on this server")
    })?;
    Ok(json!({
        "uris": turn.uris,
        "username": turn.username,
        "password": turn.password,
        "ttl": turn.ttl,
    }))
}
