//! Push rules: the spec's predefined ruleset for each user, and the user's own rules and
//! changes, kept as the `m.push_rules` account data (which /sync also carries).

use mxconform_generated::client_server as cs;
use serde_json::{json, Value};

use super::Ctx;
use crate::error::{ApiError, ApiResult};
use crate::state::State;

const KINDS: [&str; 5] = ["override", "content", "room", "sender", "underride"];

pub use crate::state::push::{default_ruleset, ruleset};

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
        // `.m.rule.master` stays above every other rule, user rules included.
        let floor = usize::from(
            list.first()
                .is_some_and(|r| r["rule_id"] == ".m.rule.master"),
        );
        list.insert(at.max(floor), rule);
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
