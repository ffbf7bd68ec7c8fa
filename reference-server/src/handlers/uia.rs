//! User-interactive authentication: the sessions of a multi-stage authentication, the
//! challenges (401 with the flows and what is completed), and the password flow that guards
//! a user's own account and devices.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::OnceLock;

use serde_json::{json, Value};

use super::credentials::{login_user, verify_password};
use super::Ctx;
use crate::error::{ApiError, ApiResult};
use crate::state::random_token;

/// User-interactive auth sessions: session id -> completed stages. Kept in memory: a server
/// restart in the middle of a flow starts it again.
pub(super) fn sessions() -> &'static Mutex<HashMap<String, Vec<String>>> {
    static S: OnceLock<Mutex<HashMap<String, Vec<String>>>> = OnceLock::new();
    S.get_or_init(Mutex::default)
}

/// The 401 that starts (or continues) a user-interactive flow.
pub(super) fn uia_challenge(stages: &[&str], session: &str, error: Option<ApiError>) -> ApiError {
    let mut extra = json!({
        "flows": [{"stages": stages}],
        "params": {},
        "session": session,
        "completed": sessions().lock().ok().and_then(|s| s.get(session).cloned()).unwrap_or_default(),
    });
    let (errcode, message) = match error {
        Some(e) => (e.errcode, e.message),
        None => (
            "M_FORBIDDEN",
            "additional authentication is required".to_string(),
        ),
    };
    if errcode != "M_FORBIDDEN" || extra["completed"].as_array().is_some_and(|c| !c.is_empty()) {
        extra["errcode"] = json!(errcode);
        extra["error"] = json!(message);
    }
    ApiError {
        status: 401,
        errcode,
        message,
        extra: Some(extra),
    }
}

/// Runs a one-stage user-interactive flow: `Ok(())` once `auth` completes `stage`.
pub(super) fn uia(
    auth: Option<&Value>,
    stage: &str,
    check: impl FnOnce(&Value) -> ApiResult<()>,
) -> ApiResult<()> {
    let Some(auth) = auth else {
        let session = random_token(16);
        sessions()
            .lock()
            .map_err(ApiError::internal)?
            .insert(session.clone(), Vec::new());
        return Err(uia_challenge(&[stage], &session, None));
    };
    let session = auth
        .get("session")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let kind = auth.get("type").and_then(Value::as_str).unwrap_or("");
    if kind != stage {
        return Err(uia_challenge(
            &[stage],
            &session,
            Some(ApiError::unknown_400(format!("unsupported stage `{kind}`"))),
        ));
    }
    if let Err(e) = check(auth) {
        return Err(uia_challenge(&[stage], &session, Some(e)));
    }
    if let Ok(mut s) = sessions().lock() {
        s.remove(&session);
    }
    Ok(())
}

/// The one-stage `m.login.password` flow that guards the caller's own account and devices.
pub(super) fn password_uia<A: serde::Serialize>(ctx: &Ctx, auth: Option<&A>) -> ApiResult<()> {
    let auth = auth.map(|a| serde_json::to_value(a).unwrap_or_default());
    uia(auth.as_ref(), "m.login.password", |a| {
        check_own_password(ctx, a)
    })
}

/// The `m.login.password` stage: the caller's own password.
pub(super) fn check_own_password(ctx: &Ctx, auth: &Value) -> ApiResult<()> {
    let me = ctx.me()?;
    let named = login_user(
        ctx,
        auth.get("identifier"),
        auth.get("user").and_then(Value::as_str),
    )?;
    if named != me.user_id {
        return Err(ApiError::forbidden(
            "the password stage must name the caller",
        ));
    }
    let password = auth.get("password").and_then(Value::as_str).unwrap_or("");
    let hash = ctx.server.read(|s| {
        s.users
            .get(&me.user_id)
            .and_then(|u| u.password_hash.clone())
    });
    if hash.is_some_and(|h| verify_password(&h, password)) {
        Ok(())
    } else {
        Err(ApiError::forbidden("invalid password"))
    }
}
