//! Push rules: the spec's predefined ruleset for each user, and the user's own rules and
//! changes, kept as the `m.push_rules` account data (which /sync also carries).

use mxconform_generated::client_server as cs;
use serde_json::{json, Value};

use super::Ctx;
use crate::error::{ApiError, ApiResult};
use crate::state::State;

const KINDS: [&str; 5] = ["override", "content", "room", "sender", "underride"];

fn em(key: &str, pattern: &str) -> Value {
    json!({"kind": "event_match", "key": key, "pattern": pattern})
}

fn rule(id: &str, conditions: Vec<Value>, actions: Value) -> Value {
    json!({"rule_id": id, "default": true, "enabled": true, "conditions": conditions, "actions": actions})
}

/// The predefined rules, in the order the spec lists them.
pub fn default_ruleset(user_id: &str) -> Value {
    let localpart = user_id
        .trim_start_matches('@')
        .split(':')
        .next()
        .unwrap_or("");
    let sound = json!({"set_tweak": "sound", "value": "default"});
    let highlight = json!({"set_tweak": "highlight"});
    let mut master = rule(".m.rule.master", vec![], json!([]));
    master["enabled"] = json!(false);
    json!({
        "override": [
            master,
            rule(".m.rule.suppress_notices", vec![em("content.msgtype", "m.notice")], json!([])),
            rule(
                ".m.rule.invite_for_me",
                vec![em("type", "m.room.member"), em("content.membership", "invite"), em("state_key", user_id)],
                json!(["notify", sound]),
            ),
            rule(".m.rule.member_event", vec![em("type", "m.room.member")], json!([])),
            rule(
                ".m.rule.is_user_mention",
                vec![json!({"kind": "event_property_contains", "key": "content.m\\.mentions.user_ids", "value": user_id})],
                json!(["notify", sound, highlight]),
            ),
            rule(".m.rule.contains_display_name", vec![json!({"kind": "contains_display_name"})], json!(["notify", sound, highlight])),
            rule(
                ".m.rule.is_room_mention",
                vec![
                    json!({"kind": "event_property_is", "key": "content.m\\.mentions.room", "value": true}),
                    json!({"kind": "sender_notification_permission", "key": "room"}),
                ],
                json!(["notify", highlight]),
            ),
            rule(
                ".m.rule.roomnotif",
                vec![json!({"kind": "sender_notification_permission", "key": "room"}), em("content.body", "@room")],
                json!(["notify", highlight]),
            ),
            rule(".m.rule.tombstone", vec![em("type", "m.room.tombstone"), em("state_key", "")], json!(["notify", highlight])),
            rule(".m.rule.reaction", vec![em("type", "m.reaction")], json!([])),
            rule(".m.rule.room.server_acl", vec![em("type", "m.room.server_acl"), em("state_key", "")], json!([])),
            rule(
                ".m.rule.suppress_edits",
                vec![json!({"kind": "event_property_is", "key": "content.m\\.relates_to.rel_type", "value": "m.replace"})],
                json!([]),
            ),
        ],
        "content": [
            {"rule_id": ".m.rule.contains_user_name", "default": true, "enabled": true, "pattern": localpart, "actions": ["notify", sound, highlight]},
        ],
        "room": [],
        "sender": [],
        "underride": [
            rule(".m.rule.call", vec![em("type", "m.call.invite")], json!(["notify", {"set_tweak": "sound", "value": "ring"}])),
            rule(
                ".m.rule.encrypted_room_one_to_one",
                vec![json!({"kind": "room_member_count", "is": "2"}), em("type", "m.room.encrypted")],
                json!(["notify", sound]),
            ),
            rule(
                ".m.rule.room_one_to_one",
                vec![json!({"kind": "room_member_count", "is": "2"}), em("type", "m.room.message")],
                json!(["notify", sound]),
            ),
            rule(".m.rule.message", vec![em("type", "m.room.message")], json!(["notify"])),
            rule(".m.rule.encrypted", vec![em("type", "m.room.encrypted")], json!(["notify"])),
        ],
    })
}

fn ruleset(state: &State, user: &str) -> Value {
    state
        .account_data
        .get(&(user.to_string(), String::new(), "m.push_rules".to_string()))
        .and_then(|(c, _)| c.get("global").cloned())
        .unwrap_or_else(|| default_ruleset(user))
}

fn save(state: &mut State, batch: &mut crate::store::Batch, user: &str, rules: Value) {
    state.put_account_data(batch, user, "", "m.push_rules", json!({"global": rules}));
}

fn check_kind(kind: &str) -> ApiResult<()> {
    if KINDS.contains(&kind) {
        Ok(())
    } else {
        Err(ApiError::invalid_param(format!(
            "unknown push rule kind `{kind}`"
        )))
    }
}

fn find<'a>(rules: &'a Value, kind: &str, id: &str) -> ApiResult<&'a Value> {
    rules
        .get(kind)
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|r| r["rule_id"] == id))
        .ok_or_else(|| ApiError::not_found(format!("no push rule {kind}/{id}")))
}

pub fn get_push_rules(ctx: &Ctx, _req: cs::pushrules::get_push_rules::Request) -> ApiResult<Value> {
    let me = ctx.me()?;
    Ok(json!({"global": ctx.server.read(|s| ruleset(s, &me.user_id))}))
}

pub fn get_push_rules_global(
    ctx: &Ctx,
    _req: cs::pushrules::get_push_rules_global::Request,
) -> ApiResult<Value> {
    let me = ctx.me()?;
    Ok(ctx.server.read(|s| ruleset(s, &me.user_id)))
}

pub fn get_push_rule(ctx: &Ctx, req: cs::pushrules::get_push_rule::Request) -> ApiResult<Value> {
    let me = ctx.me()?;
    check_kind(req.kind.as_str())?;
    ctx.server
        .read(|s| find(&ruleset(s, &me.user_id), req.kind.as_str(), &req.rule_id).cloned())
}

pub fn delete_push_rule(
    ctx: &Ctx,
    req: cs::pushrules::delete_push_rule::Request,
) -> ApiResult<Value> {
    let me = ctx.me()?.clone();
    let kind = req.kind.as_str().to_string();
    check_kind(&kind)?;
    ctx.server.write(|state, batch| {
        let mut rules = ruleset(state, &me.user_id);
        find(&rules, &kind, &req.rule_id)?;
        if req.rule_id.starts_with('.') {
            return Err(ApiError::invalid_param(
                "server-default rules cannot be deleted",
            ));
        }
        if let Some(a) = rules[&kind].as_array_mut() {
            a.retain(|r| r["rule_id"] != req.rule_id.as_str());
        }
        save(state, batch, &me.user_id, rules);
        Ok(json!({}))
    })
}

pub fn set_push_rule(ctx: &Ctx, req: cs::pushrules::set_push_rule::Request) -> ApiResult<Value> {
    let me = ctx.me()?.clone();
    let kind = req.kind.as_str().to_string();
    check_kind(&kind)?;
    if req.rule_id.starts_with('.') {
        return Err(ApiError::invalid_param(
            "rule ids starting with `.` are reserved for server-default rules",
        ));
    }
    let b = req.body;
    let mut rule =
        json!({"rule_id": req.rule_id, "default": false, "enabled": true, "actions": b.actions});
    match kind.as_str() {
        "content" => {
            let p = b
                .pattern
                .clone()
                .ok_or_else(|| ApiError::missing_param("content rules need a `pattern`"))?;
            rule["pattern"] = json!(p);
        }
        "override" | "underride" => {
            rule["conditions"] = serde_json::to_value(b.conditions.clone().unwrap_or_default())
                .map_err(ApiError::internal)?;
        }
        _ => {}
    }
    ctx.server.write(|state, batch| {
        let mut rules = ruleset(state, &me.user_id);
        let list = rules[&kind]
            .as_array_mut()
            .ok_or_else(|| ApiError::internal("push rules lost a kind"))?;
        let old = list
            .iter()
            .position(|r| r["rule_id"] == req.rule_id.as_str());
        if let Some(i) = old {
            rule["enabled"] = list[i]["enabled"].clone();
            list.remove(i);
        }
        let anchor = |id: &String, list: &Vec<Value>| -> ApiResult<usize> {
            if id.starts_with('.') {
                return Err(ApiError::bad_json(
                    "`before` and `after` cannot name a server-default rule",
                ));
            }
            list.iter()
                .position(|r| r["rule_id"] == id.as_str())
                .ok_or_else(|| ApiError::unknown_400(format!("before/after rule not found: {id}")))
        };
        // User rules of a kind go before the server-default rules of that kind.
        let first_default = list
            .iter()
            .position(|r| r["default"] == true)
            .unwrap_or(list.len());
        let at = match (&req.before, &req.after) {
            (Some(id), _) => anchor(id, list)?,
            (None, Some(id)) => anchor(id, list)? + 1,
            (None, None) => old.unwrap_or(first_default).min(first_default),
        };
        list.insert(at, rule);
        save(state, batch, &me.user_id, rules);
        Ok(json!({}))
    })
}

pub fn is_push_rule_enabled(
    ctx: &Ctx,
    req: cs::pushrules::is_push_rule_enabled::Request,
) -> ApiResult<Value> {
    let me = ctx.me()?;
    check_kind(req.kind.as_str())?;
    ctx.server.read(|s| {
        let rules = ruleset(s, &me.user_id);
        let r = find(&rules, req.kind.as_str(), &req.rule_id)?;
        Ok(json!({"enabled": r["enabled"]}))
    })
}

fn update_rule(ctx: &Ctx, kind: &str, id: &str, field: &str, value: Value) -> ApiResult<Value> {
    let me = ctx.me()?.clone();
    check_kind(kind)?;
    ctx.server.write(|state, batch| {
        let mut rules = ruleset(state, &me.user_id);
        find(&rules, kind, id)?;
        if let Some(r) = rules[kind]
            .as_array_mut()
            .and_then(|a| a.iter_mut().find(|r| r["rule_id"] == id))
        {
            r[field] = value;
        }
        save(state, batch, &me.user_id, rules);
        Ok(json!({}))
    })
}

pub fn set_push_rule_enabled(
    ctx: &Ctx,
    req: cs::pushrules::set_push_rule_enabled::Request,
) -> ApiResult<Value> {
    update_rule(
        ctx,
        req.kind.as_str(),
        &req.rule_id,
        "enabled",
        json!(req.body.enabled),
    )
}

pub fn get_push_rule_actions(
    ctx: &Ctx,
    req: cs::pushrules::get_push_rule_actions::Request,
) -> ApiResult<Value> {
    let me = ctx.me()?;
    check_kind(req.kind.as_str())?;
    ctx.server.read(|s| {
        let rules = ruleset(s, &me.user_id);
        let r = find(&rules, req.kind.as_str(), &req.rule_id)?;
        Ok(json!({"actions": r["actions"]}))
    })
}

pub fn set_push_rule_actions(
    ctx: &Ctx,
    req: cs::pushrules::set_push_rule_actions::Request,
) -> ApiResult<Value> {
    let actions = serde_json::to_value(&req.body.actions).map_err(ApiError::internal)?;
    update_rule(ctx, req.kind.as_str(), &req.rule_id, "actions", actions)
}
