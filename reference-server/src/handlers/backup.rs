//! Server-side key backups: versions (create, read, update, delete) and the keys in them, by
//! session, by room and all at once. Key data is stored as given; nothing is decrypted.

use mxconform_generated::client_server as cs;
use serde_json::{json, Map, Value};

use super::Ctx;
use crate::error::{ApiError, ApiResult};
use crate::state::{Backup, State};

fn version_of(text: &str) -> ApiResult<u64> {
    text.parse()
        .map_err(|_| ApiError::not_found(format!("no backup version {text}")))
}

fn live<'s>(state: &'s State, user: &str, version: u64) -> ApiResult<&'s Backup> {
    state
        .backups
        .get(user)
        .and_then(|m| m.get(&version))
        .filter(|b| !b.deleted)
        .ok_or_else(|| ApiError::not_found(format!("no backup version {version}")))
}

fn current<'s>(state: &'s State, user: &str) -> Option<(u64, &'s Backup)> {
    state
        .backups
        .get(user)?
        .iter()
        .rev()
        .find(|(_, b)| !b.deleted)
        .map(|(v, b)| (*v, b))
}

fn describe(version: u64, b: &Backup) -> Value {
    json!({"version": version.to_string(), "algorithm": b.algorithm, "auth_data": b.auth_data, "count": b.keys.len(), "etag": b.etag.to_string()})
}

pub fn post_room_keys_version(
    ctx: &Ctx,
    req: cs::key_backup::post_room_keys_version::Request,
) -> ApiResult<Value> {
    let me = ctx.me()?.clone();
    ctx.server.write(|state, batch| {
        let version = state
            .backups
            .get(&me.user_id)
            .and_then(|m| m.keys().next_back().copied())
            .unwrap_or(0)
            + 1;
        state.put_backup(
            batch,
            &me.user_id,
            version,
            req.body.algorithm.clone(),
            Value::Object(req.body.auth_data.clone()),
            false,
        );
        Ok(json!({"version": version.to_string()}))
    })
}

pub fn get_room_keys_version_current(
    ctx: &Ctx,
    _req: cs::key_backup::get_room_keys_version_current::Request,
) -> ApiResult<Value> {
    let me = ctx.me()?;
    ctx.server.read(|s| {
        current(s, &me.user_id)
            .map(|(v, b)| describe(v, b))
            .ok_or_else(|| ApiError::not_found("no current backup version"))
    })
}

pub fn get_room_keys_version(
    ctx: &Ctx,
    req: cs::key_backup::get_room_keys_version::Request,
) -> ApiResult<Value> {
    let me = ctx.me()?;
    let v = version_of(&req.version)?;
    ctx.server
        .read(|s| live(s, &me.user_id, v).map(|b| describe(v, b)))
}

pub fn put_room_keys_version(
    ctx: &Ctx,
    req: cs::key_backup::put_room_keys_version::Request,
) -> ApiResult<Value> {
    let me = ctx.me()?.clone();
    let v = version_of(&req.version)?;
    ctx.server.write(|state, batch| {
        let b = live(state, &me.user_id, v)?;
        if b.algorithm != req.body.algorithm {
            return Err(ApiError::invalid_param(
                "the algorithm of a backup version cannot change",
            ));
        }
        if let Some(given) = &req.body.version {
            if given != &req.version {
                return Err(ApiError::invalid_param(
                    "the body's version does not match the path's",
                ));
            }
        }
        let algorithm = b.algorithm.clone();
        state.put_backup(
            batch,
            &me.user_id,
            v,
            algorithm,
            Value::Object(req.body.auth_data.clone()),
            false,
        );
        Ok(json!({}))
    })
}

pub fn delete_room_keys_version(
    ctx: &Ctx,
    req: cs::key_backup::delete_room_keys_version::Request,
) -> ApiResult<Value> {
    let me = ctx.me()?.clone();
    let v = version_of(&req.version)?;
    ctx.server.write(|state, batch| {
        // Deleting a version deleted before succeeds, as the spec asks.
        let existing = state.backups.get(&me.user_id).and_then(|m| m.get(&v));
        if existing.is_some_and(|b| b.deleted) {
            return Ok(json!({}));
        }
        let b = live(state, &me.user_id, v)?;
        let (algorithm, auth_data) = (b.algorithm.clone(), b.auth_data.clone());
        state.put_backup(batch, &me.user_id, v, algorithm, auth_data, true);
        Ok(json!({}))
    })
}

/// Stores keys into a version, keeping the better of an existing and a new key (the spec's
/// rules: verified beats unverified, then fewer first_message_index, then forwarded count).
fn put_keys(ctx: &Ctx, version: &str, keys: Vec<(String, String, Value)>) -> ApiResult<Value> {
    let me = ctx.me()?.clone();
    let v = version_of(version)?;
    ctx.server.write(|state, batch| {
        let (cur, _) =
            current(state, &me.user_id).ok_or_else(|| ApiError::not_found("no backup version"))?;
        live(state, &me.user_id, v)?;
        if cur != v {
            return Err(ApiError {
                status: 403,
                errcode: "M_WRONG_ROOM_KEYS_VERSION",
                message: "that is not the current backup version".into(),
                extra: Some(json!({"current_version": cur.to_string()})),
            });
        }
        let b = live(state, &me.user_id, v)?;
        let mut changes = Vec::new();
        for (room, session, data) in keys {
            let better = match b.keys.get(&(room.clone(), session.clone())) {
                None => true,
                Some(old) => {
                    let rank = |k: &Value| {
                        (
                            k.get("is_verified")
                                .and_then(Value::as_bool)
                                .unwrap_or(false),
                            -k.get("first_message_index")
                                .and_then(Value::as_i64)
                                .unwrap_or(i64::MAX),
                            -k.get("forwarded_count")
                                .and_then(Value::as_i64)
                                .unwrap_or(i64::MAX),
                        )
                    };
                    rank(&data) > rank(old)
                }
            };
            if better {
                changes.push((room, session, Some(data)));
            }
        }
        let b = state.put_backup_keys(batch, &me.user_id, v, changes);
        Ok(json!({"count": b.keys.len(), "etag": b.etag.to_string()}))
    })
}

pub fn put_room_key_by_session_id(
    ctx: &Ctx,
    req: cs::key_backup::put_room_key_by_session_id::Request,
) -> ApiResult<Value> {
    let data = serde_json::to_value(&req.body).map_err(ApiError::internal)?;
    put_keys(
        ctx,
        &req.version,
        vec![(req.room_id.clone(), req.session_id.clone(), data)],
    )
}

pub fn put_room_keys_by_room_id(
    ctx: &Ctx,
    req: cs::key_backup::put_room_keys_by_room_id::Request,
) -> ApiResult<Value> {
    let sessions = serde_json::to_value(&req.body.sessions).map_err(ApiError::internal)?;
    let keys = sessions
        .as_object()
        .into_iter()
        .flatten()
        .map(|(s, d)| (req.room_id.clone(), s.clone(), d.clone()))
        .collect();
    put_keys(ctx, &req.version, keys)
}

pub fn put_room_keys(ctx: &Ctx, req: cs::key_backup::put_room_keys::Request) -> ApiResult<Value> {
    let rooms = serde_json::to_value(&req.body.rooms).map_err(ApiError::internal)?;
    let mut keys = Vec::new();
    for (room, r) in rooms.as_object().into_iter().flatten() {
        for (s, d) in r
            .get("sessions")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            keys.push((room.clone(), s.clone(), d.clone()));
        }
    }
    put_keys(ctx, &req.version, keys)
}

/// The stored keys of a version, narrowed to a room and a session.
fn get_keys(
    ctx: &Ctx,
    version: &str,
    room: Option<&str>,
    session: Option<&str>,
) -> ApiResult<Value> {
    let me = ctx.me()?;
    let v = version_of(version)?;
    ctx.server.read(|s| {
        let b = live(s, &me.user_id, v)?;
        let mut rooms: Map<String, Value> = Map::new();
        for ((r, sid), data) in &b.keys {
            if room.is_some_and(|x| x != r) || session.is_some_and(|x| x != sid) {
                continue;
            }
            let entry = rooms
                .entry(r.clone())
                .or_insert_with(|| json!({"sessions": {}}));
            entry["sessions"][sid] = data.clone();
        }
        Ok(match (room, session) {
            (Some(r), Some(sid)) => rooms
                .get(r)
                .and_then(|x| x["sessions"].get(sid))
                .cloned()
                .ok_or_else(|| ApiError::not_found("no such session in the backup"))?,
            (Some(r), None) => rooms.get(r).cloned().unwrap_or(json!({"sessions": {}})),
            _ => json!({"rooms": rooms}),
        })
    })
}

pub fn get_room_key_by_session_id(
    ctx: &Ctx,
    req: cs::key_backup::get_room_key_by_session_id::Request,
) -> ApiResult<Value> {
    get_keys(ctx, &req.version, Some(&req.room_id), Some(&req.session_id))
}

pub fn get_room_keys_by_room_id(
    ctx: &Ctx,
    req: cs::key_backup::get_room_keys_by_room_id::Request,
) -> ApiResult<Value> {
    get_keys(ctx, &req.version, Some(&req.room_id), None)
}

pub fn get_room_keys(ctx: &Ctx, req: cs::key_backup::get_room_keys::Request) -> ApiResult<Value> {
    get_keys(ctx, &req.version, None, None)
}

fn delete_keys(
    ctx: &Ctx,
    version: &str,
    room: Option<&str>,
    session: Option<&str>,
) -> ApiResult<Value> {
    let me = ctx.me()?.clone();
    let v = version_of(version)?;
    ctx.server.write(|state, batch| {
        let gone: Vec<(String, String, Option<Value>)> = live(state, &me.user_id, v)?
            .keys
            .keys()
            .filter(|(r, s)| room.is_none_or(|x| x == r) && session.is_none_or(|x| x == s))
            .map(|(r, s)| (r.clone(), s.clone(), None))
            .collect();
        let b = state.put_backup_keys(batch, &me.user_id, v, gone);
        Ok(json!({"count": b.keys.len(), "etag": b.etag.to_string()}))
    })
}

pub fn delete_room_key_by_session_id(
    ctx: &Ctx,
    req: cs::key_backup::delete_room_key_by_session_id::Request,
) -> ApiResult<Value> {
    delete_keys(ctx, &req.version, Some(&req.room_id), Some(&req.session_id))
}

pub fn delete_room_keys_by_room_id(
    ctx: &Ctx,
    req: cs::key_backup::delete_room_keys_by_room_id::Request,
) -> ApiResult<Value> {
    delete_keys(ctx, &req.version, Some(&req.room_id), None)
}

pub fn delete_room_keys(
    ctx: &Ctx,
    req: cs::key_backup::delete_room_keys::Request,
) -> ApiResult<Value> {
    delete_keys(ctx, &req.version, None, None)
}
