//! Per-user data: filters, account data (global and per room), tags, typing, receipts and
//! read markers.

use mxconform_generated::client_server as cs;
use serde_json::{json, Value};

use super::{require_self, Ctx};
use crate::error::{ApiError, ApiResult};
use crate::state::now_ms;

pub fn define_filter(ctx: &Ctx, req: cs::filter::define_filter::Request) -> ApiResult<Value> {
    require_self(ctx, req.user_id.as_str())?;
    let filter = serde_json::to_value(&req.body).map_err(ApiError::internal)?;
    let user = req.user_id.as_str().to_string();
    ctx.server.write(|state, batch| {
        let id = state
            .filters
            .keys()
            .filter(|(u, _)| *u == user)
            .count()
            .to_string();
        state.put_filter(batch, &user, &id, filter);
        Ok(json!({"filter_id": id}))
    })
}

pub fn get_filter(ctx: &Ctx, req: cs::filter::get_filter::Request) -> ApiResult<Value> {
    require_self(ctx, req.user_id.as_str())?;
    ctx.server.read(|s| {
        s.filters
            .get(&(req.user_id.as_str().to_string(), req.filter_id.clone()))
            .cloned()
            .ok_or_else(|| ApiError::not_found("no such filter"))
    })
}

/// Account data types the server manages itself.
fn check_type(kind: &str) -> ApiResult<()> {
    if matches!(kind, "m.fully_read" | "m.push_rules") {
        return Err(ApiError {
            status: 405,
            ..ApiError::bad_json(format!(
                "{kind} is managed by the server and cannot be set this way"
            ))
        });
    }
    Ok(())
}

pub fn set_account_data(
    ctx: &Ctx,
    req: cs::account_data::set_account_data::Request,
) -> ApiResult<Value> {
    require_self(ctx, &req.user_id)?;
    check_type(&req.type_)?;
    ctx.server.write(|state, batch| {
        state.put_account_data(batch, &req.user_id, "", &req.type_, Value::Object(req.body));
        Ok(json!({}))
    })
}

pub fn get_account_data(
    ctx: &Ctx,
    req: cs::account_data::get_account_data::Request,
) -> ApiResult<Value> {
    require_self(ctx, &req.user_id)?;
    ctx.server.read(|s| {
        let stored = s
            .account_data
            .get(&(req.user_id.clone(), String::new(), req.type_.clone()))
            .map(|(c, _)| c.clone());
        match stored {
            Some(c) => Ok(c),
            // Push rules are account data too, set or not.
            None if req.type_ == "m.push_rules" => {
                Ok(json!({"global": super::pushrules::default_ruleset(&req.user_id)}))
            }
            None => Err(ApiError::not_found("no account data of that type")),
        }
    })
}

pub fn set_account_data_per_room(
    ctx: &Ctx,
    req: cs::account_data::set_account_data_per_room::Request,
) -> ApiResult<Value> {
    require_self(ctx, &req.user_id)?;
    check_type(&req.type_)?;
    ctx.server.write(|state, batch| {
        state.room(&req.room_id)?;
        state.put_account_data(
            batch,
            &req.user_id,
            &req.room_id,
            &req.type_,
            Value::Object(req.body),
        );
        Ok(json!({}))
    })
}

pub fn get_account_data_per_room(
    ctx: &Ctx,
    req: cs::account_data::get_account_data_per_room::Request,
) -> ApiResult<Value> {
    require_self(ctx, &req.user_id)?;
    ctx.server.read(|s| {
        s.account_data
            .get(&(req.user_id.clone(), req.room_id.clone(), req.type_.clone()))
            .map(|(c, _)| c.clone())
            .ok_or_else(|| ApiError::not_found("no account data of that type"))
    })
}

fn tags_of(state: &crate::state::State, user: &str, room: &str) -> Value {
    state
        .account_data
        .get(&(user.to_string(), room.to_string(), "m.tag".to_string()))
        .map(|(c, _)| c.clone())
        .unwrap_or(json!({"tags": {}}))
}

pub fn get_room_tags(ctx: &Ctx, req: cs::tags::get_room_tags::Request) -> ApiResult<Value> {
    require_self(ctx, &req.user_id)?;
    Ok(ctx.server.read(|s| tags_of(s, &req.user_id, &req.room_id)))
}

pub fn set_room_tag(ctx: &Ctx, req: cs::tags::set_room_tag::Request) -> ApiResult<Value> {
    require_self(ctx, &req.user_id)?;
    if req.tag.len() > 255 {
        return Err(ApiError::invalid_param("tags are at most 255 bytes"));
    }
    let tag = serde_json::to_value(&req.body).map_err(ApiError::internal)?;
    ctx.server.write(|state, batch| {
        let mut tags = tags_of(state, &req.user_id, &req.room_id);
        tags["tags"][&req.tag] = tag;
        state.put_account_data(batch, &req.user_id, &req.room_id, "m.tag", tags);
        Ok(json!({}))
    })
}

pub fn delete_room_tag(ctx: &Ctx, req: cs::tags::delete_room_tag::Request) -> ApiResult<Value> {
    require_self(ctx, &req.user_id)?;
    ctx.server.write(|state, batch| {
        let mut tags = tags_of(state, &req.user_id, &req.room_id);
        if let Some(m) = tags.get_mut("tags").and_then(Value::as_object_mut) {
            m.remove(&req.tag);
        }
        state.put_account_data(batch, &req.user_id, &req.room_id, "m.tag", tags);
        Ok(json!({}))
    })
}

pub fn set_typing(ctx: &Ctx, req: cs::typing::set_typing::Request) -> ApiResult<Value> {
    require_self(ctx, req.user_id.as_str())?;
    let user = req.user_id.as_str().to_string();
    let room_id = req.room_id.as_str().to_string();
    let timeout = req.body.timeout.unwrap_or(30_000).clamp(0, 120_000) as u64;
    ctx.server.write(|state, batch| {
        if state.room(&room_id)?.membership(&user) != Some("join") {
            return Err(ApiError::forbidden("you are not in this room"));
        }
        state.put_typing(
            batch,
            &room_id,
            &user,
            req.body.typing.then(|| now_ms() + timeout),
        );
        Ok(())
    })?;
    if req.body.typing {
        // When the timeout passes, the user stops typing and syncs hear of it.
        let at = std::time::Instant::now() + std::time::Duration::from_millis(timeout);
        ctx.server.later(at, move |state, batch| {
            let now = now_ms();
            let expired = state
                .typing
                .get(&room_id)
                .is_some_and(|(t, _)| t.get(&user).is_some_and(|exp| *exp <= now));
            if expired {
                let pos = state.next_pos(batch);
                if let Some(entry) = state.typing.get_mut(&room_id) {
                    entry.0.remove(&user);
                    entry.1 = pos;
                }
            }
        });
    }
    Ok(json!({}))
}

/// Records a receipt (`m.read`, `m.read.private`) or the fully-read marker.
fn put_receipt(
    ctx: &Ctx,
    room_id: &str,
    rtype: &str,
    event_id: &str,
    thread: Option<String>,
) -> ApiResult<()> {
    let me = ctx.me()?.clone();
    ctx.server.write(|state, batch| {
        let room = state.room(room_id)?;
        if room.membership(&me.user_id) != Some("join") {
            return Err(ApiError::forbidden("you are not in this room"));
        }
        let known = state
            .event_by_id(event_id)
            .is_some_and(|e| e.room_id == room_id);
        if !known {
            return Err(ApiError::not_found("no such event in this room"));
        }
        if rtype == "m.fully_read" {
            state.put_account_data(
                batch,
                &me.user_id,
                room_id,
                "m.fully_read",
                json!({"event_id": event_id}),
            );
            return Ok(());
        }
        // One receipt per user, type and thread (unthreaded is a thread of its own).
        state.put_receipt(batch, room_id, rtype, &me.user_id, event_id, thread);
        Ok(())
    })
}

pub fn post_receipt(ctx: &Ctx, req: cs::receipts::post_receipt::Request) -> ApiResult<Value> {
    let rtype = req.receipt_type.as_str().to_string();
    if !matches!(rtype.as_str(), "m.read" | "m.read.private" | "m.fully_read") {
        return Err(ApiError::invalid_param(format!(
            "unknown receipt type {rtype}"
        )));
    }
    let thread = req.body.thread_id.clone();
    if thread.as_deref() == Some("") {
        return Err(ApiError::invalid_param("thread_id must not be empty"));
    }
    if rtype == "m.fully_read" && thread.is_some() {
        return Err(ApiError::invalid_param("m.fully_read takes no thread_id"));
    }
    // The main timeline's receipt is for an event outside every thread.
    if thread.as_deref() == Some("main") {
        let event_id = req.event_id.as_str();
        let in_thread = ctx.server.read(|s| {
            s.event_by_id(event_id).is_some_and(|e| {
                e.content
                    .get("m.relates_to")
                    .is_some_and(|r| r.get("rel_type").and_then(Value::as_str) == Some("m.thread"))
            })
        });
        if in_thread {
            return Err(ApiError::invalid_param(
                "that event is in a thread, not the main timeline",
            ));
        }
    }
    // A thread's receipt is for its root or one of its replies.
    if let Some(t) = thread.as_deref().filter(|t| *t != "main") {
        let event_id = req.event_id.as_str();
        let related = event_id == t
            || ctx.server.read(|s| {
                s.event_by_id(event_id).is_some_and(|e| {
                    e.content.get("m.relates_to").is_some_and(|r| {
                        r.get("rel_type").and_then(Value::as_str) == Some("m.thread")
                            && r.get("event_id").and_then(Value::as_str) == Some(t)
                    })
                })
            });
        if !related {
            return Err(ApiError::invalid_param(
                "the event is not part of that thread",
            ));
        }
    }
    put_receipt(
        ctx,
        req.room_id.as_str(),
        &rtype,
        req.event_id.as_str(),
        thread,
    )?;
    Ok(json!({}))
}

pub fn set_read_marker(
    ctx: &Ctx,
    req: cs::read_markers::set_read_marker::Request,
) -> ApiResult<Value> {
    let b = req.body;
    for (t, e) in [
        ("m.fully_read", &b.m_fully_read),
        ("m.read", &b.m_read),
        ("m.read.private", &b.m_read_private),
    ] {
        if let Some(e) = e {
            put_receipt(ctx, &req.room_id, t, e.as_str(), None)?;
        }
    }
    Ok(json!({}))
}
