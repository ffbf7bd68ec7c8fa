//! The room directory: aliases (create, resolve, delete, list), a room's visibility in the
//! public list, and the public room list itself (GET, and POST with a filter).

use mxconform_generated::client_server as cs;
use serde_json::{json, Value};

use super::{Ctx, Reply};
use crate::error::{ApiError, ApiResult};
use crate::state::{Append, State};

fn own_server(ctx: &Ctx, alias: &str) -> ApiResult<()> {
    let server = alias.split_once(':').map(|(_, s)| s).unwrap_or("");
    if server != ctx.server.config.server_name {
        return Err(ApiError::invalid_param(format!(
            "{alias} is not an alias on this server"
        )));
    }
    Ok(())
}

/// An alias in an application service's exclusive namespace is that service's alone.
pub fn check_alias_namespace(ctx: &Ctx, alias: &str) -> ApiResult<()> {
    let caller = ctx.user.as_ref().and_then(|u| u.appservice.as_deref());
    let owner = ctx
        .server
        .config
        .appservices
        .iter()
        .find(|a| a.claims_alias(alias));
    match owner {
        Some(a) if caller != Some(a.id.as_str()) => Err(ApiError::exclusive(
            "that alias is reserved by an application service",
        )),
        _ => Ok(()),
    }
}

/// Whether `user` may change how the room is named (its aliases, its place in the directory):
/// whether the authorization rules would let them send its `m.room.canonical_alias` event.
fn may_name_room(state: &State, room_id: &str, user: &str) -> bool {
    let current = state
        .state_content(room_id, "m.room.canonical_alias", "")
        .cloned()
        .unwrap_or(json!({}));
    state
        .check_allowed(Append::new(
            room_id,
            user,
            "m.room.canonical_alias",
            Some(""),
            current,
        ))
        .is_ok()
}

pub fn set_room_alias(ctx: &Ctx, req: cs::directory::set_room_alias::Request) -> ApiResult<Value> {
    let me = ctx.me()?.clone();
    let alias = req.room_alias.as_str().to_string();
    own_server(ctx, &alias)?;
    check_alias_namespace(ctx, &alias)?;
    ctx.server.write(|state, batch| {
        let room = state.room(req.body.room_id.as_str())?;
        if room.membership(&me.user_id) != Some("join") {
            return Err(ApiError::forbidden("you are not in that room"));
        }
        if state.aliases.contains_key(&alias) {
            return Err(ApiError {
                status: 409,
                ..ApiError::unknown(format!("the alias {alias} already exists"))
            });
        }
        let target = (room.room_id.clone(), me.user_id.clone());
        state.put_alias(batch, &alias, Some(target));
        Ok(json!({}))
    })
}

pub fn get_room_id_by_alias(
    ctx: &Ctx,
    req: cs::directory::get_room_id_by_alias::Request,
) -> ApiResult<Reply> {
    let alias = req.room_alias.as_str();
    let server = ctx.server.config.server_name.clone();
    // An alias of another server: that server's directory says.
    let host = alias.split_once(':').map(|(_, h)| h).unwrap_or("");
    if host != server && ctx.server.federation.is_some() {
        let shared = ctx
            .server
            .shared()
            .ok_or_else(|| ApiError::internal("the server is shutting down"))?;
        let alias = alias.to_string();
        return Ok(Reply::outbound(async move {
            let (room_id, servers) =
                crate::federation::joins::resolve_alias(&shared, &alias).await?;
            Ok(json!({"room_id": room_id, "servers": servers}))
        }));
    }
    let known = ctx
        .server
        .read(|s| s.aliases.get(alias).map(|(room, _)| room.clone()));
    if let Some(room) = known {
        return Ok(Reply::from(json!({"room_id": room, "servers": [server]})));
    }
    let none = move |alias: &str| ApiError::not_found(format!("no room has the alias {alias}"));
    // An alias in an application service's namespace: the service is asked whether it exists
    // (it may make the room now), then the directory is read again.
    let Some(asv) = ctx
        .server
        .config
        .appservices
        .iter()
        .find(|a| a.url.is_some() && a.alias_in_namespace(alias))
        .cloned()
    else {
        return Err(none(alias));
    };
    let shared = ctx
        .server
        .shared()
        .ok_or_else(|| ApiError::internal("the server is shutting down"))?;
    let alias = alias.to_string();
    Ok(Reply::outbound(async move {
        let url = format!(
            "{}/_matrix/app/v1/rooms/{}",
            asv.url.as_deref().unwrap_or_default().trim_end_matches('/'),
            crate::router::percent_encode(&alias)
        );
        let answer = shared
            .outbound
            .configured
            .request(
                "GET",
                &url,
                &[("authorization", asv.authorization())],
                None,
                std::time::Duration::from_secs(10),
                1 << 16,
            )
            .await;
        if !matches!(answer, Ok(ref a) if (200..300).contains(&a.status)) {
            return Err(none(&alias));
        }
        let room = shared
            .read(|s| s.aliases.get(&alias).map(|(room, _)| room.clone()))
            .ok_or_else(|| none(&alias))?;
        Ok(json!({"room_id": room, "servers": [server]}))
    }))
}

pub fn delete_room_alias(
    ctx: &Ctx,
    req: cs::directory::delete_room_alias::Request,
) -> ApiResult<Value> {
    let me = ctx.me()?.clone();
    let alias = req.room_alias.as_str().to_string();
    ctx.server.write(|state, batch| {
        let (room_id, creator) = state
            .aliases
            .get(&alias)
            .cloned()
            .ok_or_else(|| ApiError::not_found("no such alias"))?;
        let allowed = creator == me.user_id || may_name_room(state, &room_id, &me.user_id);
        if !allowed {
            return Err(ApiError::forbidden(
                "only the alias's creator or a room moderator may delete it",
            ));
        }
        state.put_alias(batch, &alias, None);
        Ok(json!({}))
    })
}

pub fn get_local_aliases(
    ctx: &Ctx,
    req: cs::directory::get_local_aliases::Request,
) -> ApiResult<Value> {
    let me = ctx.me()?;
    ctx.server.read(|s| {
        let room = s.room(req.room_id.as_str())?;
        let world = room.world_readable();
        if room.membership(&me.user_id) != Some("join") && !world {
            return Err(ApiError::forbidden("you are not in this room"));
        }
        let mut aliases: Vec<&String> = s
            .aliases
            .iter()
            .filter(|(_, (r, _))| *r == room.room_id)
            .map(|(a, _)| a)
            .collect();
        aliases.sort();
        Ok(json!({"aliases": aliases}))
    })
}

pub fn get_room_visibility_on_directory(
    ctx: &Ctx,
    req: cs::list_public_rooms::get_room_visibility_on_directory::Request,
) -> ApiResult<Value> {
    ctx.server.read(|s| {
        let room = s.room(req.room_id.as_str())?;
        Ok(json!({"visibility": if room.public { "public" } else { "private" }}))
    })
}

pub fn set_room_visibility_on_directory(
    ctx: &Ctx,
    req: cs::list_public_rooms::set_room_visibility_on_directory::Request,
) -> ApiResult<Value> {
    let me = ctx.me()?.clone();
    let public = req.body.visibility.as_ref().map(|v| v.as_str() == "public");
    ctx.server.write(|state, batch| {
        state.room(req.room_id.as_str())?;
        if !may_name_room(state, req.room_id.as_str(), &me.user_id) {
            return Err(ApiError::forbidden(
                "only a room moderator may change its directory visibility",
            ));
        }
        if let Some(p) = public {
            if let Some(r) = state.rooms.get_mut(req.room_id.as_str()) {
                r.public = p;
            }
            state.put_room_meta(batch, req.room_id.as_str());
        }
        Ok(json!({}))
    })
}

/// Which directory to list: this server's, an application service network's
/// (`third_party_instance_id`), or all of them (`include_all_networks`).
pub(crate) enum Network {
    Local,
    Instance(String),
    All,
}

/// A page of the room directory (client-server and server-server alike).
pub(crate) fn public_rooms(
    server: &crate::Server,
    limit: Option<i64>,
    since: Option<&str>,
    term: Option<&str>,
    room_types: Option<Vec<Value>>,
    network: Network,
) -> ApiResult<Value> {
    // Tokens name the room a page ends (`n`) or starts (`p`) at by its place in the order
    // (most members first, then room id), so pages stay put while rooms come and go.
    let cursor: Option<(bool, u64, String)> = match since {
        Some(t) => {
            let bad = || ApiError::invalid_param("bad `since` token");
            let forward = match t.chars().next() {
                Some('n') => true,
                Some('p') => false,
                _ => return Err(bad()),
            };
            let (members, room) = t[1..].split_once('|').ok_or_else(bad)?;
            Some((
                forward,
                members.parse().map_err(|_| bad())?,
                room.to_string(),
            ))
        }
        None => None,
    };
    let limit = limit.map(|l| l.clamp(1, 500) as usize);
    let term = term.map(str::to_lowercase);
    server.read(|s| {
        let listed = |r: &crate::state::Room| match &network {
            Network::Local => r.public,
            Network::Instance(i) => s
                .appservice_rooms
                .get(i)
                .is_some_and(|set| set.contains(&r.room_id)),
            Network::All => {
                r.public
                    || s.appservice_rooms
                        .values()
                        .any(|set| set.contains(&r.room_id))
            }
        };
        let mut rooms: Vec<Value> = s
            .rooms
            .values()
            .filter(|r| listed(r))
            .map(|r| s.room_overview(r))
            .collect();
        if let Some(types) = &room_types {
            // `null` in the list stands for rooms without a type.
            rooms.retain(|c| types.contains(c.get("room_type").unwrap_or(&Value::Null)));
        }
        if let Some(t) = &term {
            rooms.retain(|c| {
                ["name", "topic", "canonical_alias"].iter().any(|f| {
                    c.get(*f)
                        .and_then(Value::as_str)
                        .is_some_and(|v| v.to_lowercase().contains(t.as_str()))
                })
            });
        }
        let key = |c: &Value| {
            (
                std::cmp::Reverse(c["num_joined_members"].as_u64().unwrap_or(0)),
                c["room_id"].as_str().unwrap_or("").to_string(),
            )
        };
        rooms.sort_by_key(|c| key(c));
        let total = rooms.len();
        let (start, end) = match &cursor {
            None => (0, limit.map_or(total, |l| l.min(total))),
            Some((forward, members, room)) => {
                let at = (std::cmp::Reverse(*members), room.clone());
                if *forward {
                    let start = rooms.partition_point(|c| key(c) <= at);
                    (start, limit.map_or(total, |l| (start + l).min(total)))
                } else {
                    let end = rooms.partition_point(|c| key(c) < at);
                    (limit.map_or(0, |l| end.saturating_sub(l)), end)
                }
            }
        };
        let token = |c: &Value, dir: char| {
            format!(
                "{dir}{}|{}",
                c["num_joined_members"].as_u64().unwrap_or(0),
                c["room_id"].as_str().unwrap_or("")
            )
        };
        let mut out = json!({"total_room_count_estimate": total});
        if end < total && end > start {
            out["next_batch"] = json!(token(&rooms[end - 1], 'n'));
        }
        if start > 0 && start < total {
            out["prev_batch"] = json!(token(&rooms[start], 'p'));
        }
        let page: Vec<Value> = rooms.drain(start..end).collect();
        out["chunk"] = json!(page);
        Ok(out)
    })
}

/// Whether a room-directory request names another server (`server`), and that server.
fn other_directory(
    ctx: &Ctx,
    server: Option<&str>,
) -> Option<(std::sync::Arc<crate::Server>, String)> {
    let s = server.filter(|s| *s != ctx.server.config.server_name)?;
    ctx.server.federation.as_ref()?;
    Some((ctx.server.shared()?, s.to_string()))
}

pub fn get_public_rooms(
    ctx: &Ctx,
    req: cs::list_public_rooms::get_public_rooms::Request,
) -> ApiResult<Reply> {
    if let Some((shared, dest)) = other_directory(ctx, req.server.as_ref().map(|s| s.as_str())) {
        let mut q = Vec::new();
        if let Some(l) = req.limit {
            q.push(format!("limit={l}"));
        }
        if let Some(s) = &req.since {
            q.push(format!("since={}", crate::router::percent_encode(s)));
        }
        let path = format!("/_matrix/federation/v1/publicRooms?{}", q.join("&"));
        return Ok(Reply::outbound(async move {
            crate::federation::joins::ask(&shared, &dest, "GET", &path, None).await
        }));
    }
    public_rooms(
        ctx.server,
        req.limit,
        req.since.as_deref(),
        None,
        None,
        Network::Local,
    )
    .map(Reply::from)
}

pub fn query_public_rooms(
    ctx: &Ctx,
    req: cs::list_public_rooms::query_public_rooms::Request,
) -> ApiResult<Reply> {
    if let Some((shared, dest)) = other_directory(ctx, req.server.as_ref().map(|s| s.as_str())) {
        let body = serde_json::to_value(&req.body).map_err(ApiError::internal)?;
        return Ok(Reply::outbound(async move {
            crate::federation::joins::ask(
                &shared,
                &dest,
                "POST",
                "/_matrix/federation/v1/publicRooms",
                Some(&body),
            )
            .await
        }));
    }
    let b = req.body;
    let term = b
        .filter
        .as_ref()
        .and_then(|f| f.generic_search_term.clone());
    let filter = serde_json::to_value(&b.filter).unwrap_or(Value::Null);
    let room_types = filter.get("room_types").and_then(Value::as_array).cloned();
    let network = match (&b.third_party_instance_id, b.include_all_networks) {
        (_, Some(true)) => Network::All,
        (Some(i), _) => Network::Instance(i.clone()),
        _ => Network::Local,
    };
    public_rooms(
        ctx.server,
        b.limit,
        b.since.as_deref(),
        term.as_deref(),
        room_types,
        network,
    )
    .map(Reply::from)
}
