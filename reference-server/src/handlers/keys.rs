//! End-to-end encryption plumbing: device keys, one-time and fallback keys (upload, query,
//! claim, changes), and to-device messages. Keys are stored and handed out as given; no
//! cryptography is verified.

use mxconform_generated::client_server as cs;
use serde_json::{json, Map, Value};

use super::events::parse_token;
use super::Ctx;
use crate::error::{ApiError, ApiResult};

fn otk_counts(state: &crate::state::State, user: &str, device: &str) -> Value {
    let mut counts: Map<String, Value> = Map::new();
    if let Some(keys) = state
        .one_time_keys
        .get(&(user.to_string(), device.to_string()))
    {
        for id in keys.keys() {
            let alg = id.split(':').next().unwrap_or("").to_string();
            let n = counts.get(&alg).and_then(Value::as_u64).unwrap_or(0) + 1;
            counts.insert(alg, json!(n));
        }
    }
    Value::Object(counts)
}

pub fn upload_keys(ctx: &Ctx, req: cs::keys::upload_keys::Request) -> ApiResult<Value> {
    let me = ctx.me()?.clone();
    let b = req.body;
    let device_keys = b
        .device_keys
        .as_ref()
        .map(|k| serde_json::to_value(k).unwrap_or_default());
    if let Some(k) = &device_keys {
        if k.get("user_id").and_then(Value::as_str) != Some(me.user_id.as_str())
            || k.get("device_id").and_then(Value::as_str) != Some(me.device_id.as_str())
        {
            return Err(ApiError::bad_json(
                "device_keys must name the caller's user and device",
            ));
        }
    }
    ctx.server.write(|state, batch| {
        let key = (me.user_id.clone(), me.device_id.clone());
        let rec = format!("{}\u{0}{}", me.user_id, me.device_id);
        if let Some(k) = device_keys {
            if state.device_keys.get(&key) != Some(&k) {
                state.device_keys.insert(key.clone(), k.clone());
                state.note_key_change(batch, &me.user_id);
                batch.put(
                    "device_keys",
                    rec.clone(),
                    &json!({"keys": k, "pos": state.pos}),
                );
            }
        }
        for (id, v) in b.one_time_keys.iter().flatten() {
            let v = serde_json::to_value(v).unwrap_or_default();
            // The stream position orders uploads, for claims in upload order.
            let seq = state.next_pos(batch);
            batch.put(
                "otk",
                format!("{rec}\u{0}{id}"),
                &json!({"seq": seq, "key": v}),
            );
            state
                .one_time_keys
                .entry(key.clone())
                .or_default()
                .insert(id.clone(), (seq, v));
        }
        if let Some(fallback) = &b.fallback_keys {
            // A new fallback key replaces the old one of its algorithm.
            for (id, v) in fallback {
                let alg = id.split(':').next().unwrap_or("").to_string();
                let old: Vec<String> = state
                    .fallback_keys
                    .get(&key)
                    .map(|m| {
                        m.keys()
                            .filter(|k| k.split(':').next() == Some(alg.as_str()))
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                for o in old {
                    batch.delete("fallback", format!("{rec}\u{0}{o}"));
                    if let Some(m) = state.fallback_keys.get_mut(&key) {
                        m.remove(&o);
                    }
                    state
                        .fallback_used
                        .remove(&(me.user_id.clone(), me.device_id.clone(), o));
                }
                let v = serde_json::to_value(v).unwrap_or_default();
                batch.put("fallback", format!("{rec}\u{0}{id}"), &v);
                state
                    .fallback_keys
                    .entry(key.clone())
                    .or_default()
                    .insert(id.clone(), v);
            }
        }
        Ok(json!({"one_time_key_counts": otk_counts(state, &me.user_id, &me.device_id)}))
    })
}

pub fn query_keys(ctx: &Ctx, req: cs::keys::query_keys::Request) -> ApiResult<Value> {
    let me = ctx.me()?;
    ctx.server.read(|state| {
        let (mut master, mut self_signing, mut user_signing) = (Map::new(), Map::new(), Map::new());
        for user in req.body.device_keys.keys() {
            if let Some(cs) = state.cross_signing.get(user.as_str()) {
                for (map, name) in [
                    (&mut master, "master_key"),
                    (&mut self_signing, "self_signing_key"),
                ] {
                    if let Some(k) = cs.get(name) {
                        map.insert(user.to_string(), k.clone());
                    }
                }
                if user.as_str() == me.user_id {
                    if let Some(k) = cs.get("user_signing_key") {
                        user_signing.insert(user.to_string(), k.clone());
                    }
                }
            }
        }
        let mut out: Map<String, Value> = Map::new();
        for (user, devices) in &req.body.device_keys {
            let mut per_user: Map<String, Value> = Map::new();
            let known = state.devices.get(user.as_str());
            for device in known.into_iter().flat_map(|d| d.keys()) {
                if !devices.is_empty() && !devices.contains(device) {
                    continue;
                }
                if let Some(k) = state.device_keys.get(&(user.to_string(), device.clone())) {
                    let mut k = k.clone();
                    if let Some(name) = known
                        .and_then(|d| d.get(device))
                        .and_then(|d| d.display_name.clone())
                    {
                        k["unsigned"] = json!({"device_display_name": name});
                    }
                    per_user.insert(device.clone(), k);
                }
            }
            out.insert(user.to_string(), Value::Object(per_user));
        }
        Ok(json!({
            "device_keys": out,
            "failures": {},
            "master_keys": master,
            "self_signing_keys": self_signing,
            "user_signing_keys": user_signing,
        }))
    })
}

pub fn claim_keys(ctx: &Ctx, req: cs::keys::claim_keys::Request) -> ApiResult<Value> {
    ctx.me()?;
    let wanted = serde_json::to_value(&req.body.one_time_keys).map_err(ApiError::internal)?;
    ctx.server.write(|state, batch| {
        let mut out: Map<String, Value> = Map::new();
        for (user, devices) in wanted.as_object().into_iter().flatten() {
            let mut per_user: Map<String, Value> = Map::new();
            for (device, alg) in devices.as_object().into_iter().flatten() {
                let alg = alg.as_str().unwrap_or("");
                let key = (user.clone(), device.clone());
                let prefix = format!("{alg}:");
                // The oldest upload first.
                let otk = state.one_time_keys.get(&key).and_then(|m| {
                    m.iter()
                        .filter(|(k, _)| k.starts_with(&prefix))
                        .min_by_key(|(_, (seq, _))| *seq)
                        .map(|(k, _)| k.clone())
                });
                let claimed = match otk {
                    Some(id) => {
                        let v = state
                            .one_time_keys
                            .get_mut(&key)
                            .and_then(|m| m.remove(&id));
                        batch.delete("otk", format!("{user}\u{0}{device}\u{0}{id}"));
                        v.map(|(_, v)| (id, v))
                    }
                    // No one-time key left: the fallback key, which stays, now used.
                    None => {
                        let fb = state.fallback_keys.get(&key).and_then(|m| {
                            m.iter()
                                .find(|(k, _)| k.starts_with(&prefix))
                                .map(|(k, v)| (k.clone(), v.clone()))
                        });
                        if let Some((id, _)) = &fb {
                            state
                                .fallback_used
                                .insert((user.clone(), device.clone(), id.clone()));
                        }
                        fb
                    }
                };
                if let Some((id, v)) = claimed {
                    per_user.insert(device.clone(), json!({ id: v }));
                }
            }
            out.insert(user.clone(), Value::Object(per_user));
        }
        Ok(json!({"one_time_keys": out, "failures": {}}))
    })
}

pub fn get_keys_changes(ctx: &Ctx, req: cs::keys::get_keys_changes::Request) -> ApiResult<Value> {
    let me = ctx.me()?;
    let from = parse_token(&req.from)?;
    let to = parse_token(&req.to)?;
    ctx.server.read(|state| {
        let (changed, left) = state.device_list_changes(&me.user_id, from, to);
        Ok(json!({"changed": changed, "left": left}))
    })
}

pub fn send_to_device(ctx: &Ctx, req: cs::to_device::send_to_device::Request) -> ApiResult<Value> {
    let me = ctx.me()?.clone();
    let messages = serde_json::to_value(&req.body.messages).map_err(ApiError::internal)?;
    ctx.server.write(|state, batch| {
        let key = (
            me.user_id.clone(),
            me.device_id.clone(),
            format!("to_device {} {}", req.event_type, req.txn_id),
        );
        if state.txns.contains_key(&key) {
            return Ok(json!({}));
        }
        for (user, devices) in messages.as_object().into_iter().flatten() {
            let targets: Vec<String> = match state.devices.get(user) {
                None => continue,
                Some(all) => devices
                    .as_object()
                    .into_iter()
                    .flatten()
                    .flat_map(|(d, _)| {
                        if d == "*" {
                            all.keys().cloned().collect::<Vec<_>>()
                        } else {
                            vec![d.clone()]
                        }
                    })
                    .collect(),
            };
            for device in targets {
                let content = devices
                    .get(&device)
                    .or_else(|| devices.get("*"))
                    .cloned()
                    .unwrap_or(json!({}));
                let pos = state.next_pos(batch);
                let msg = json!({"sender": me.user_id, "type": req.event_type, "content": content});
                batch.put("to_device", format!("{user}\u{0}{device}\u{0}{pos}"), &msg);
                state
                    .to_device
                    .entry((user.clone(), device))
                    .or_default()
                    .push((pos, msg));
            }
        }
        state.remember_txn(batch, key, String::new());
        Ok(json!({}))
    })
}
