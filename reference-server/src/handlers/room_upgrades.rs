//! Room upgrades.

use mxconform_generated::client_server as cs;
use serde_json::{json, Value};

use super::discovery::ROOM_VERSIONS;
use super::rooms::{change_membership, create_content, send_state};
use super::Ctx;
use crate::error::{ApiError, ApiResult};
use crate::state::Append;

/// State carried over to an upgraded room.
const CARRIED: &[&str] = &[
    "m.room.name",
    "m.room.topic",
    "m.room.avatar",
    "m.room.join_rules",
    "m.room.history_visibility",
    "m.room.guest_access",
    "m.room.encryption",
    "m.room.server_acl",
    "m.room.power_levels",
];

pub fn upgrade_room(ctx: &Ctx, req: cs::room_upgrades::upgrade_room::Request) -> ApiResult<Value> {
    let me = ctx.me()?.clone();
    let version = req.body.new_version.clone();
    if !ROOM_VERSIONS.contains(&version.as_str()) {
        return Err(ApiError::unsupported_room_version(format!(
            "room version {version} is not supported"
        )));
    }
    ctx.server.write(|state, batch| {
        let old = state.room(&req.room_id)?.clone();
        // Upgrading ends the old room with a tombstone: the rules must allow the user that.
        let probe = json!({"body": "", "replacement_room": ""});
        state.check_allowed(Append::new(
            &old.room_id,
            &me.user_id,
            "m.room.tombstone",
            Some(""),
            probe,
        ))?;
        let v: u32 = version.parse().unwrap_or(12);
        let mut base = serde_json::Map::new();
        base.insert("predecessor".into(), json!({"room_id": old.room_id}));
        let extra: Vec<String> = req
            .body
            .additional_creators
            .iter()
            .flatten()
            .map(|u| u.to_string())
            .collect();
        if req.body.additional_creators.is_some() && v < 12 {
            return Err(ApiError::bad_json(
                "additional_creators needs room version 12 or later",
            ));
        }
        let create = create_content(&version, &me.user_id, base, &extra)?;
        let room_id = state.create_room(batch, &version, &me.user_id, create, false)?;
        change_membership(
            state,
            batch,
            &room_id,
            &me.user_id,
            &me.user_id,
            "join",
            json!({}),
        )?;
        for kind in CARRIED {
            if let Some(mut content) = state.state_content(&old.room_id, kind, "").cloned() {
                if *kind == "m.room.power_levels" && v >= 12 {
                    // Creators are not listed from room version 12 on.
                    if let Some(users) = content.get_mut("users").and_then(Value::as_object_mut) {
                        users.remove(&me.user_id);
                        for extra in req.body.additional_creators.iter().flatten() {
                            users.remove(extra.as_str());
                        }
                    }
                }
                send_state(state, batch, &room_id, &me.user_id, kind, "", content)?;
            }
        }
        // The old room points at the new one, and stops taking ordinary messages.
        send_state(
            state,
            batch,
            &old.room_id,
            &me.user_id,
            "m.room.tombstone",
            "",
            json!({"body": "This room has been replaced", "replacement_room": room_id}),
        )?;
        if let Some(mut pl) = state
            .state_content(&old.room_id, "m.room.power_levels", "")
            .cloned()
        {
            let needed = pl
                .get("events_default")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                .max(50);
            pl["events_default"] = json!(needed);
            pl["invite"] = json!(pl
                .get("invite")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                .max(50));
            send_state(
                state,
                batch,
                &old.room_id,
                &me.user_id,
                "m.room.power_levels",
                "",
                pl,
            )?;
        }
        // Aliases follow the room.
        let aliases: Vec<String> = state
            .aliases
            .iter()
            .filter(|(_, (r, _))| *r == old.room_id)
            .map(|(a, _)| a.clone())
            .collect();
        for a in aliases {
            if let Some((_, creator)) = state.aliases.get(&a).cloned() {
                state.put_alias(batch, &a, Some((room_id.clone(), creator)));
            }
        }
        Ok(json!({"replacement_room": room_id}))
    })
}
