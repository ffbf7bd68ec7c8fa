//! Credentials: password hashes (argon2id), and the user a login or an authentication stage names.

use argon2::password_hash::{phc::PasswordHash, PasswordHasher, PasswordVerifier};
use serde_json::Value;

use super::Ctx;
use crate::error::{ApiError, ApiResult};
use crate::PasswordCost;

pub(super) fn argon(cost: PasswordCost) -> argon2::Argon2<'static> {
    let params = match cost {
        PasswordCost::Standard => argon2::Params::new(19 * 1024, 2, 1, None),
        PasswordCost::Test => argon2::Params::new(argon2::Params::MIN_M_COST.max(8), 1, 1, None),
    }
    .expect("argon2 parameters are valid");
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
}

/// Runs password hashing off the async workers: on a multi-threaded runtime the worker hands
/// its other tasks to the rest (`block_in_place`) while this one computes, and at most one
/// hash per core runs at a time (the others wait for a turn), so a burst of logins cannot
/// stall every request. Elsewhere (a single-threaded test runtime) it simply runs.
fn off_workers<T>(f: impl FnOnce() -> T) -> T {
    use std::sync::{Condvar, Mutex, OnceLock};
    static RUNNING: OnceLock<(Mutex<usize>, Condvar)> = OnceLock::new();
    let (count, turn) = RUNNING.get_or_init(|| (Mutex::new(0), Condvar::new()));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let bounded = || {
        let mut n = count.lock().unwrap_or_else(|p| p.into_inner());
        while *n >= cores {
            n = turn.wait(n).unwrap_or_else(|p| p.into_inner());
        }
        *n += 1;
        drop(n);
        let out = f();
        *count.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        turn.notify_one();
        out
    };
    let multi = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi {
        tokio::task::block_in_place(bounded)
    } else {
        bounded()
    }
}

pub(super) fn hash_password(cost: PasswordCost, password: &str) -> ApiResult<String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(ApiError::internal)?;
    off_workers(|| {
        argon(cost)
            .hash_password_with_salt(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(ApiError::internal)
    })
}

pub(super) fn verify_password(hash: &str, password: &str) -> bool {
    off_workers(|| {
        PasswordHash::new(hash).ok().is_some_and(|h| {
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
    })
}

/// The user id a login names, from `identifier` (`m.id.user`) or the deprecated `user`.
pub(super) fn login_user(
    ctx: &Ctx,
    identifier: Option<&Value>,
    user: Option<&str>,
) -> ApiResult<String> {
    let name = match identifier {
        Some(id) => {
            if id.get("type").and_then(Value::as_str) != Some("m.id.user") {
                return Err(ApiError::unknown_400(
                    "only m.id.user identifiers are supported",
                ));
            }
            id.get("user")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::bad_json("`identifier.user` is missing"))?
        }
        None => user.ok_or_else(|| ApiError::bad_json("no `identifier` in the login"))?,
    };
    Ok(if name.starts_with('@') {
        name.to_lowercase()
    } else {
        format!("@{}:{}", name.to_lowercase(), ctx.server.config.server_name)
    })
}
