//! Room summaries (previews of rooms), of rooms this server is not in too (over federation).

use mxconform_generated::client_server as cs;
use serde_json::{json, Value};

use super::rooms::resolve_room;
use super::{Ctx, Reply};
use crate::error::{ApiError, ApiResult};

pub fn get_room_summary(
    ctx: &Ctx,
    req: cs::room_summary::get_room_summary::Request,
) -> ApiResult<Reply> {
    let me = ctx.user.clone();
    let target = &req.room_id_or_alias;
    let ours = ctx.server.config.server_name.clone();
    let via: Vec<String> = req.via.iter().flatten().map(|s| s.to_string()).collect();
    // A room this server knows is summarised from its state; another server's alias or room
    // is asked of that server (an alias of this server that names nothing is simply unknown).
    let remote_alias =
        target.starts_with('#') && target.split_once(':').map(|(_, s)| s) != Some(ours.as_str());
    let local = ctx.server.read(|s| {
        let room_id = match resolve_room(s, target) {
            Ok(id) => id,
            Err(_) if remote_alias && ctx.server.federation.is_some() => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(room) = s.rooms.get(&room_id) else {
            return Ok(Some(Err(room_id)));
        };
        let content = |kind: &str, key: &str| {
            s.state_content(&room_id, kind, "")
                .and_then(|c| c.get(key))
                .cloned()
        };
        let join_rule = content("m.room.join_rules", "join_rule").unwrap_or(json!("invite"));
        let world = content("m.room.history_visibility", "history_visibility")
            == Some(json!("world_readable"));
        let membership = me.as_ref().and_then(|m| room.membership(&m.user_id));
        let peekable = matches!(
            join_rule.as_str(),
            Some("public" | "knock" | "knock_restricted")
        ) || world;
        if membership.is_none() && !peekable {
            return Err(ApiError::not_found("no such room, or you may not see it"));
        }
        let mut v = s.room_overview(room);
        v["room_version"] = json!(room.version);
        if let Some(m) = membership {
            v["membership"] = json!(m);
        }
        Ok(Some(Ok(v)))
    })?;
    let room_id = match local {
        Some(Ok(v)) => return Ok(Reply::from(v)),
        Some(Err(room_id)) => Some(room_id),
        None => None,
    };
    if ctx.server.federation.is_none() {
        return Err(ApiError::not_found("no such room, or you may not see it"));
    }
    let server = ctx
        .server
        .shared()
        .ok_or_else(|| ApiError::internal("the server is shutting down"))?;
    let alias = target.clone();
    Ok(Reply::outbound(async move {
        let (room_id, mut via) = match room_id {
            Some(id) => (id, via),
            None => {
                let (id, servers) =
                    crate::federation::joins::resolve_alias(&server, &alias).await?;
                (id, via.into_iter().chain(servers).collect())
            }
        };
        via.dedup();
        let answer =
            crate::federation::hierarchy::remote_hierarchy(&server, &room_id, &via, false).await;
        let Some(Value::Object(mut room)) =
            answer.and_then(|mut a| a.get_mut("room").map(Value::take))
        else {
            return Err(ApiError::not_found(format!(
                "no server would describe {room_id} to this one"
            )));
        };
        room.remove("children_state");
        // An invite or knock this server keeps for the user says their membership.
        if let Some(user) = &me {
            let membership = server.read(|s| {
                s.remote_memberships
                    .get(&user.user_id)
                    .and_then(|r| r.get(&room_id))
                    .map(|m| m.membership.clone())
            });
            if let Some(m) = membership {
                room.insert("membership".into(), json!(m));
            }
        }
        Ok(Value::Object(room))
    }))
}
