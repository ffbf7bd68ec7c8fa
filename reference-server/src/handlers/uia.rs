//! User-interactive authentication: the sessions of a multi-stage authentication, the
//! challenges (401 with the flows and what is completed), and the password flow that guards
//! a user's own account and devices.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::credentials::{login_user, verify_password};
use super::Ctx;
use crate::error::{ApiError, ApiResult};
use crate::state::random_token;

/// User-interactive auth sessions of one server: session id -> when it started and the stages
/// completed. Each lasts `TTL`, and there are at most `MAX` (the oldest go first): a flood of
/// unauthenticated requests that each start one cannot grow memory without bound. Kept in
/// memory: a restart in the middle of a flow starts it again.
#[derive(Debug, Default)]
pub struct UiaSessions {
    live: HashMap<String, (Instant, Vec<String>)>,
}

impl UiaSessions {
    pub const MAX: usize = 10_000;
    pub const TTL: Duration = Duration::from_secs(30 * 60);

    /// A new session's id.
    pub fn start(&mut self) -> String {
        let now = Instant::now();
        self.live
            .retain(|_, (at, _)| now.duration_since(*at) < Self::TTL);
        if self.live.len() >= Self::MAX {
            let oldest = self
                .live
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(id, _)| id.clone());
            if let Some(id) = oldest {
                self.live.remove(&id);
            }
        }
        let id = random_token(16);
        self.live.insert(id.clone(), (now, Vec::new()));
        id
    }

    /// The stages a live session has completed.
    pub fn completed(&self, id: &str) -> Vec<String> {
        self.live
            .get(id)
            .filter(|(at, _)| at.elapsed() < Self::TTL)
            .map(|(_, c)| c.clone())
            .unwrap_or_default()
    }

    /// The flow is done: its session ends.
    pub fn finish(&mut self, id: &str) {
        self.live.remove(id);
    }

    /// How many sessions are held.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

/// The 401 that starts (or continues) a user-interactive flow.
pub(super) fn uia_challenge(
    ctx: &Ctx,
    stages: &[&str],
    session: &str,
    error: Option<ApiError>,
) -> ApiError {
    let completed = ctx
        .server
        .uia
        .lock()
        .map(|s| s.completed(session))
        .unwrap_or_default();
    let mut extra = json!({
        "flows": [{"stages": stages}],
        "params": {},
        "session": session,
        "completed": completed,
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
    ctx: &Ctx,
    auth: Option<&Value>,
    stage: &str,
    check: impl FnOnce(&Value) -> ApiResult<()>,
) -> ApiResult<()> {
    let Some(auth) = auth else {
        let session = ctx.server.uia.lock().map_err(ApiError::internal)?.start();
        return Err(uia_challenge(ctx, &[stage], &session, None));
    };
    let session = auth
        .get("session")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let kind = auth.get("type").and_then(Value::as_str).unwrap_or("");
    if kind != stage {
        return Err(uia_challenge(
            ctx,
            &[stage],
            &session,
            Some(ApiError::unknown_400(format!("unsupported stage `{kind}`"))),
        ));
    }
    if let Err(e) = check(auth) {
        return Err(uia_challenge(ctx, &[stage], &session, Some(e)));
    }
    if let Ok(mut s) = ctx.server.uia.lock() {
        s.finish(&session);
    }
    Ok(())
}

/// The one-stage `m.login.password` flow that guards the caller's own account and devices.
pub(super) fn password_uia<A: serde::Serialize>(ctx: &Ctx, auth: Option<&A>) -> ApiResult<()> {
    let auth = auth.map(|a| serde_json::to_value(a).unwrap_or_default());
    uia(ctx, auth.as_ref(), "m.login.password", |a| {
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

#[cfg(test)]
mod tests {
    use super::UiaSessions;

    #[test]
    fn sessions_are_bounded_and_end_with_their_flow() {
        let mut s = UiaSessions::default();
        let first = s.start();
        for _ in 0..UiaSessions::MAX + 500 {
            s.start();
        }
        assert_eq!(s.len(), UiaSessions::MAX, "never more than the bound");
        assert!(s.completed(&first).is_empty());
        assert!(!s.live.contains_key(&first), "the oldest went first");
        let last = s.start();
        assert!(s.live.contains_key(&last));
        s.finish(&last);
        assert!(!s.live.contains_key(&last));
    }
}
