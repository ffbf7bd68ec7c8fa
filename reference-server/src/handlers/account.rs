//! Accounts: registration (user-interactive, dummy stage), login, logout, whoami, password
//! change and deactivation (user-interactive, password stage), and devices.

use mxconform_generated::client_server as cs;
use serde_json::{json, Value};

use super::credentials::{hash_password, login_user, verify_password};
use super::uia::{password_uia, uia};
use super::{Ctx, Reply};
use crate::error::{ApiError, ApiResult};
use crate::state::{now_ms, random_token, Device, State, User};
use crate::store::Batch;

fn localpart_ok(l: &str) -> bool {
    !l.is_empty()
        && l.bytes().all(
            |b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'=' | b'-' | b'/' | b'+'),
        )
}

/// How long access tokens issued with a refresh token are said to last (they are not
/// expired early: a client refreshes when it likes).
const REFRESHABLE_LIFETIME_MS: u64 = 3_600_000;

/// Makes a device with a fresh access token (and a refresh token when asked for); returns
/// `((device_id, token), refresh)`.
fn new_device(
    state: &mut State,
    batch: &mut Batch,
    user: &str,
    device_id: Option<&str>,
    name: Option<String>,
    refreshable: bool,
) -> ((String, String), Option<String>) {
    let device_id = device_id
        .map(str::to_string)
        .unwrap_or_else(|| random_token(8).to_uppercase().replace(['-', '_'], "X"));
    let token = format!("mxc_{}", random_token(32));
    let refresh = refreshable.then(|| format!("mxr_{}", random_token(32)));
    // Logging in again with a known device id keeps the device (its name and keys) and gives
    // it new tokens; the old ones end.
    let existing = state
        .devices
        .get(user)
        .and_then(|d| d.get(&device_id))
        .cloned();
    let display_name = match &existing {
        Some(old) => {
            state.tokens.remove(&old.token);
            for r in old.refresh.iter().chain(old.prev_refresh.iter()) {
                state.refresh_tokens.remove(r);
            }
            old.display_name.clone()
        }
        None => name,
    };
    state.put_device(
        batch,
        user,
        &device_id,
        Device {
            display_name,
            last_seen_ts: now_ms(),
            token: token.clone(),
            refresh: refresh.clone(),
            prev_refresh: None,
        },
    );
    ((device_id, token), refresh)
}

/// The login or registration answer, with the refresh token when there is one.
fn session_json(user_id: &str, device_id: &str, token: &str, refresh: Option<String>) -> Value {
    let mut v = json!({"user_id": user_id, "access_token": token, "device_id": device_id});
    if let Some(r) = refresh {
        v["refresh_token"] = json!(r);
        v["expires_in_ms"] = json!(REFRESHABLE_LIFETIME_MS);
    }
    v
}

pub fn register(ctx: &Ctx, req: cs::registration::register::Request) -> ApiResult<Reply> {
    use cs::registration::register::Kind;
    if matches!(req.kind, Some(Kind::Guest)) {
        return Err(ApiError::forbidden("guest access is not enabled"));
    }
    let b = req.body;
    let localpart = match &b.username {
        Some(u) => u.to_lowercase(),
        None => random_token(9).to_lowercase().replace(['-', '_'], "x"),
    };
    if !localpart_ok(&localpart) {
        return Err(ApiError::invalid_username(
            "user names may hold only a-z, 0-9 and ._=-/+",
        ));
    }
    let user_id = format!("@{localpart}:{}", ctx.server.config.server_name);
    if user_id.len() > 255 {
        return Err(ApiError::invalid_username(
            "the user id would be longer than 255 bytes",
        ));
    }
    if ctx.server.read(|s| s.users.contains_key(&user_id)) {
        return Err(ApiError::user_in_use("that user name is taken"));
    }
    let as_registration =
        b.extra.get("type").and_then(Value::as_str) == Some("m.login.application_service");
    let service = ctx.user.as_ref().and_then(|u| u.appservice.as_deref());
    match (as_registration, service) {
        // An application service registers users of its namespace, without auth stages.
        (true, Some(id)) => {
            let allowed = ctx
                .server
                .config
                .appservices
                .iter()
                .any(|a| a.id == id && a.may_act_as(&user_id));
            if !allowed {
                return Err(ApiError::exclusive(
                    "that user id is outside the application service's namespaces",
                ));
            }
        }
        (true, None) => {
            return Err(ApiError::missing_token(
                "m.login.application_service needs the application service's token",
            ))
        }
        (false, _) => {
            if ctx
                .server
                .config
                .appservices
                .iter()
                .any(|a| a.claims_user(&user_id))
            {
                return Err(ApiError::exclusive(
                    "that user id belongs to an application service",
                ));
            }
            uia(
                ctx,
                b.auth
                    .as_ref()
                    .map(|a| serde_json::to_value(a).unwrap_or_default())
                    .as_ref(),
                "m.login.dummy",
                |_| Ok(()),
            )?;
        }
    }
    let hash = match &b.password {
        Some(p) => Some(hash_password(ctx.server.config.password_cost, p)?),
        None => None,
    };
    let inhibit = b.inhibit_login.unwrap_or(false);
    let out = ctx.server.write(|state, batch| {
        if state.users.contains_key(&user_id) {
            return Err(ApiError::user_in_use("that user name is taken"));
        }
        state.put_user(batch, User::new(&user_id, hash));
        if inhibit {
            return Ok(json!({"user_id": user_id}));
        }
        let ((device_id, token), refresh) = new_device(
            state,
            batch,
            &user_id,
            b.device_id.as_deref(),
            b.initial_device_display_name.clone(),
            b.refresh_token.unwrap_or(false),
        );
        Ok(session_json(&user_id, &device_id, &token, refresh))
    })?;
    Ok(Reply::Json(200, out))
}

pub fn check_username_availability(
    ctx: &Ctx,
    req: cs::registration::check_username_availability::Request,
) -> ApiResult<Value> {
    let l = req.username.to_lowercase();
    if !localpart_ok(&l) {
        return Err(ApiError::invalid_username(
            "user names may hold only a-z, 0-9 and ._=-/+",
        ));
    }
    let user_id = format!("@{l}:{}", ctx.server.config.server_name);
    if ctx.server.read(|s| s.users.contains_key(&user_id)) {
        return Err(ApiError::user_in_use("that user name is taken"));
    }
    Ok(json!({"available": true}))
}

pub fn get_login_flows(ctx: &Ctx, _req: cs::login::get_login_flows::Request) -> ApiResult<Value> {
    let mut flows = vec![
        json!({"type": "m.login.password"}),
        json!({"type": "m.login.token", "get_login_token": true}),
    ];
    if let Some(cas) = &ctx.server.config.cas {
        flows.push(json!({
            "type": "m.login.sso",
            "identity_providers": [{"id": super::sso::CAS_IDP, "name": cas.display_name}],
        }));
    }
    Ok(json!({ "flows": flows }))
}

pub fn login(ctx: &Ctx, req: cs::login::login::Request) -> ApiResult<Value> {
    let b = req.body;
    let user_id = match b.type_.as_str() {
        "m.login.password" => {
            let identifier = b
                .identifier
                .as_ref()
                .map(|i| serde_json::to_value(i).unwrap_or_default());
            let user_id = login_user(ctx, identifier.as_ref(), b.user.as_deref())?;
            let password = b
                .password
                .as_deref()
                .ok_or_else(|| ApiError::bad_json("`password` is missing"))?;
            let (hash, deactivated) = ctx
                .server
                .read(|s| {
                    s.users
                        .get(&user_id)
                        .map(|u| (u.password_hash.clone(), u.deactivated))
                })
                .unwrap_or((None, false));
            if deactivated {
                return Err(ApiError::user_deactivated("this account is deactivated"));
            }
            if !hash.is_some_and(|h| verify_password(&h, password)) {
                return Err(ApiError::forbidden("invalid user name or password"));
            }
            user_id
        }
        "m.login.token" => {
            let token = b
                .token
                .clone()
                .ok_or_else(|| ApiError::bad_json("`token` is missing"))?;
            // Single use: taken out whether or not it has expired.
            let found = ctx
                .server
                .write(|state, _| Ok(state.login_tokens.remove(&token)))?;
            match found {
                Some((user, expiry)) if expiry > now_ms() => user,
                _ => return Err(ApiError::forbidden("invalid or expired login token")),
            }
        }
        other => {
            return Err(ApiError::unknown_400(format!(
                "login type `{other}` is not supported"
            )))
        }
    };
    ctx.server.write(|state, batch| {
        // A device id may not be one of the user's cross-signing key ids.
        if let Some(wanted) = b.device_id.as_deref() {
            let clashes = state.cross_signing.get(&user_id).is_some_and(|keys| {
                keys.as_object().into_iter().flatten().any(|(_, k)| {
                    k.get("keys").and_then(Value::as_object).is_some_and(|ks| {
                        ks.keys()
                            .any(|id| id.split_once(':').is_some_and(|(_, i)| i == wanted))
                    })
                })
            });
            if clashes {
                return Err(ApiError::forbidden(
                    "that device id is one of your cross-signing keys",
                ));
            }
        }
        let ((device_id, token), refresh) = new_device(
            state,
            batch,
            &user_id,
            b.device_id.as_deref(),
            b.initial_device_display_name.clone(),
            b.refresh_token.unwrap_or(false),
        );
        let mut v = session_json(&user_id, &device_id, &token, refresh);
        v["well_known"] = json!({"m.homeserver": {"base_url": ctx.server.public_url()}});
        Ok(v)
    })
}

pub fn logout(ctx: &Ctx, _req: cs::logout::logout::Request) -> ApiResult<Value> {
    let me = ctx.me()?.clone();
    ctx.server.write(|state, batch| {
        state.remove_device(batch, &me.user_id, &me.device_id);
        Ok(json!({}))
    })
}

pub fn logout_all(ctx: &Ctx, _req: cs::logout::logout_all::Request) -> ApiResult<Value> {
    let me = ctx.me()?.clone();
    ctx.server.write(|state, batch| {
        state.remove_devices(batch, &me.user_id, None);
        Ok(json!({}))
    })
}

pub fn get_token_owner(ctx: &Ctx, _req: cs::whoami::get_token_owner::Request) -> ApiResult<Value> {
    let me = ctx.me()?;
    Ok(json!({"user_id": me.user_id, "device_id": me.device_id, "is_guest": false}))
}

pub fn change_password(
    ctx: &Ctx,
    req: cs::password_management::change_password::Request,
) -> ApiResult<Value> {
    let b = req.body;
    // Signed in: the caller's own password. Not signed in (a forgotten password): a
    // validated reset session of an address the account has.
    let (user_id, keep, spent_session) = match &ctx.user {
        Some(me) => {
            password_uia(ctx, b.auth.as_ref())?;
            (me.user_id.clone(), Some(me.device_id.clone()), None)
        }
        None => {
            let auth = b
                .auth
                .as_ref()
                .map(|a| serde_json::to_value(a).unwrap_or_default());
            let stage = match auth
                .as_ref()
                .and_then(|a| a.get("type"))
                .and_then(Value::as_str)
            {
                Some("m.login.msisdn") => "m.login.msisdn",
                _ => "m.login.email.identity",
            };
            let mut found = None;
            uia(ctx, auth.as_ref(), stage, |a| {
                found = Some(super::threepid::reset_owner(ctx, a)?);
                Ok(())
            })?;
            let (owner, sid) = found.ok_or_else(|| ApiError::internal("no reset session"))?;
            (owner, None, Some(sid))
        }
    };
    let hash = hash_password(ctx.server.config.password_cost, &b.new_password)?;
    let logout_devices = b.logout_devices.unwrap_or(true);
    ctx.server.write(|state, batch| {
        let mut user = state
            .users
            .get(&user_id)
            .cloned()
            .ok_or_else(|| ApiError::not_found("no such user"))?;
        user.password_hash = Some(hash);
        state.put_user(batch, user);
        if logout_devices {
            state.remove_devices(batch, &user_id, keep.as_deref());
        }
        if let Some(sid) = &spent_session {
            // A reset session works once.
            state.remove_threepid_session(batch, sid);
        }
        Ok(json!({}))
    })
}

pub fn deactivate_account(
    ctx: &Ctx,
    req: cs::account_deactivation::deactivate_account::Request,
) -> ApiResult<Reply> {
    let b = req.body;
    password_uia(ctx, b.auth.as_ref())?;
    let me = ctx.me()?.clone();
    // The account's identifiers, to unbind at identity servers once it is gone.
    let identifiers: Vec<(String, String)> = ctx.server.read(|s| {
        s.threepids
            .iter()
            .filter(|(_, t)| t.user_id == me.user_id)
            .map(|(k, _)| k.clone())
            .collect()
    });
    ctx.server.write(|state, batch| {
        let mut user = state
            .users
            .get(&me.user_id)
            .cloned()
            .ok_or_else(|| ApiError::not_found("no such user"))?;
        user.deactivated = true;
        user.password_hash = None;
        state.put_user(batch, user);
        state.remove_devices(batch, &me.user_id, None);
        super::threepid::forget_user(state, batch, &me.user_id);
        Ok(())
    })?;
    let server = ctx
        .server
        .shared()
        .ok_or_else(|| ApiError::internal("the server is stopping"))?;
    Ok(Reply::outbound(async move {
        let result =
            super::identity::unbind_all(server, me.user_id, b.id_server, identifiers).await;
        Ok(json!({"id_server_unbind_result": result}))
    }))
}

fn device_json(id: &str, d: &Device) -> Value {
    let mut v = json!({"device_id": id, "last_seen_ts": d.last_seen_ts});
    if let Some(n) = &d.display_name {
        v["display_name"] = json!(n);
    }
    v
}

pub fn get_devices(
    ctx: &Ctx,
    _req: cs::device_management::get_devices::Request,
) -> ApiResult<Value> {
    let me = ctx.me()?;
    let list = ctx.server.read(|s| {
        s.devices
            .get(&me.user_id)
            .map(|d| {
                d.iter()
                    .map(|(id, dev)| device_json(id, dev))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    });
    Ok(json!({"devices": list}))
}

pub fn get_device(ctx: &Ctx, req: cs::device_management::get_device::Request) -> ApiResult<Value> {
    let me = ctx.me()?;
    ctx.server.read(|s| {
        s.devices
            .get(&me.user_id)
            .and_then(|d| d.get(&req.device_id))
            .map(|dev| device_json(&req.device_id, dev))
            .ok_or_else(|| ApiError::not_found("no such device"))
    })
}

pub fn update_device(
    ctx: &Ctx,
    req: cs::device_management::update_device::Request,
) -> ApiResult<Value> {
    let me = ctx.me()?.clone();
    ctx.server.write(|state, batch| {
        let mut dev = state
            .devices
            .get(&me.user_id)
            .and_then(|d| d.get(&req.device_id))
            .cloned()
            .ok_or_else(|| ApiError::not_found("no such device"))?;
        let renamed = req.body.display_name.is_some();
        if let Some(name) = &req.body.display_name {
            dev.display_name = Some(name.clone());
        }
        state.put_device(batch, &me.user_id, &req.device_id, dev);
        if renamed {
            state.emit_device_update(&me.user_id, &req.device_id, false);
        }
        Ok(json!({}))
    })
}

pub fn delete_device(
    ctx: &Ctx,
    req: cs::device_management::delete_device::Request,
) -> ApiResult<Value> {
    let me = ctx.me()?.clone();
    if !ctx.server.read(|s| {
        s.devices
            .get(&me.user_id)
            .is_some_and(|d| d.contains_key(&req.device_id))
    }) {
        return Err(ApiError::not_found("no such device"));
    }
    password_uia(ctx, req.body.auth.as_ref())?;
    ctx.server.write(|state, batch| {
        state.remove_device(batch, &me.user_id, &req.device_id);
        Ok(json!({}))
    })
}

pub fn delete_devices(
    ctx: &Ctx,
    req: cs::device_management::delete_devices::Request,
) -> ApiResult<Value> {
    let me = ctx.me()?.clone();
    password_uia(ctx, req.body.auth.as_ref())?;
    ctx.server.write(|state, batch| {
        // Devices that do not exist are ignored, as the spec says.
        for d in &req.body.devices {
            if state
                .devices
                .get(&me.user_id)
                .is_some_and(|m| m.contains_key(d))
            {
                state.remove_device(batch, &me.user_id, d);
            }
        }
        Ok(json!({}))
    })
}

/// Registration needs no token here, so no token is a valid one.
pub fn registration_token_validity(
    _ctx: &Ctx,
    _req: cs::registration_tokens::registration_token_validity::Request,
) -> ApiResult<Value> {
    Ok(json!({"valid": false}))
}

/// Exchanges a refresh token for a new access token and a new refresh token; both old ones stop
/// working.
pub fn refresh(ctx: &Ctx, req: cs::refresh::refresh::Request) -> ApiResult<Value> {
    let old = req.body.refresh_token.clone();
    ctx.server.write(|state, batch| {
        let (user, device_id) = state
            .refresh_tokens
            .get(&old)
            .cloned()
            .ok_or_else(|| ApiError::unknown_token("unknown or already used refresh token"))?;
        let mut device = state
            .devices
            .get(&user)
            .and_then(|d| d.get(&device_id))
            .cloned()
            .ok_or_else(|| ApiError::unknown_token("that session has ended"))?;
        state.tokens.remove(&device.token);
        if device.refresh.as_deref() == Some(old.as_str()) {
            // The current refresh token: it stays valid until the new tokens are used, and
            // any earlier one ends now.
            if let Some(earlier) = device.prev_refresh.replace(old.clone()) {
                state.refresh_tokens.remove(&earlier);
            }
        } else if let Some(unused) = device.refresh.take() {
            // A retry with the previous token: the pair it got before was never used.
            state.refresh_tokens.remove(&unused);
        }
        device.token = format!("mxc_{}", random_token(32));
        let refresh = format!("mxr_{}", random_token(32));
        device.refresh = Some(refresh.clone());
        let token = device.token.clone();
        state.put_device(batch, &user, &device_id, device);
        Ok(json!({"access_token": token, "refresh_token": refresh, "expires_in_ms": REFRESHABLE_LIFETIME_MS}))
    })
}

/// A single-use token to log another device in, after the caller's password.
pub fn generate_login_token(
    ctx: &Ctx,
    req: cs::login_token::generate_login_token::Request,
) -> ApiResult<Value> {
    let me = ctx.me()?.clone();
    password_uia(ctx, req.body.auth.as_ref())?;
    let (token, lifetime) = ctx
        .server
        .write(|state, _| Ok(state.issue_login_token(&me.user_id)))?;
    Ok(json!({"login_token": token, "expires_in_ms": lifetime}))
}
