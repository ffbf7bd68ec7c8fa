//! End-to-end encryption plumbing: device keys, one-time and fallback keys (upload, query,
//! claim, changes), cross-signing keys and signatures, and to-device messages. Device and
//! one-time keys are stored as given; cross-signing keys and the signatures uploaded for them
//! are verified (ed25519 over canonical JSON, by the room-version core) before they are kept.

use mxconform_generated::client_server as cs;
use serde_json::{json, Map, Value};

use mxconform_pdu::sign::verify_signature;
use mxconform_pdu::VerifyKey;

use super::events::parse_token;
use super::{Ctx, Reply};
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
        if let Some(k) = device_keys {
            if state.device_keys.get(&key) != Some(&k) {
                state.put_device_keys(batch, &me.user_id, &me.device_id, k);
            }
        }
        for (id, v) in b.one_time_keys.iter().flatten() {
            let v = serde_json::to_value(v).unwrap_or_default();
            state.add_one_time_key(batch, &me.user_id, &me.device_id, id, v);
        }
        if let Some(fallback) = &b.fallback_keys {
            // A new fallback key replaces the old one of its algorithm.
            for (id, v) in fallback {
                let v = serde_json::to_value(v).unwrap_or_default();
                state.put_fallback_key(batch, &me.user_id, &me.device_id, id, v);
            }
        }
        Ok(json!({"one_time_key_counts": otk_counts(state, &me.user_id, &me.device_id)}))
    })
}

/// The users of `wanted` that belong to other servers, grouped by server (empty when this
/// server does not federate: they are then simply unknown).
fn by_other_server<'a, T>(
    ctx: &Ctx,
    wanted: impl Iterator<Item = (&'a String, T)>,
) -> std::collections::BTreeMap<String, Map<String, Value>>
where
    T: serde::Serialize,
{
    let mut out: std::collections::BTreeMap<String, Map<String, Value>> = Default::default();
    if ctx.server.federation.is_none() {
        return out;
    }
    for (user, v) in wanted {
        if let Some((_, host)) = user.split_once(':') {
            if host != ctx.server.config.server_name {
                out.entry(host.to_string())
                    .or_default()
                    .insert(user.clone(), serde_json::to_value(v).unwrap_or(Value::Null));
            }
        }
    }
    out
}

/// Merges the maps under `fields` of `from` into `into`'s, and lists the servers that failed.
fn ask_servers(
    ctx: &Ctx<'_>,
    local: Value,
    remote: std::collections::BTreeMap<String, Map<String, Value>>,
    path: &'static str,
    wrap: &'static str,
    fields: &'static [&'static str],
    known: Value,
) -> ApiResult<Reply> {
    let server = ctx
        .server
        .shared()
        .ok_or_else(|| ApiError::internal("the server is shutting down"))?;
    Ok(Reply::outbound(async move {
        let mut out = local;
        for (host, users) in remote {
            let body = json!({ wrap: users });
            match crate::federation::joins::ask(&server, &host, "POST", path, Some(&body)).await {
                Ok(answer) => {
                    for f in fields {
                        if let (Some(dst), Some(src)) = (
                            out.get_mut(*f).and_then(Value::as_object_mut),
                            answer.get(*f).and_then(Value::as_object),
                        ) {
                            for (k, v) in src {
                                dst.insert(k.clone(), v.clone());
                            }
                        }
                    }
                }
                Err(e) => {
                    out["failures"][host] = json!({"errcode": e.errcode, "error": e.message});
                }
            }
        }
        // What updates told since, over what the servers answered (a user's devices one by
        // one, cross-signing keys whole).
        for f in fields {
            for (user, v) in known
                .get(*f)
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                let slot = &mut out[*f][user];
                match (slot.as_object_mut(), v.as_object(), *f == "device_keys") {
                    (Some(dst), Some(src), true) => {
                        for (d, k) in src {
                            dst.insert(d.clone(), k.clone());
                        }
                    }
                    _ => *slot = v.clone(),
                }
            }
        }
        Ok(out)
    }))
}

pub fn query_keys(ctx: &Ctx, req: cs::keys::query_keys::Request) -> ApiResult<Reply> {
    let me = ctx.me()?;
    let wanted: Vec<(String, Vec<String>)> = req
        .body
        .device_keys
        .iter()
        .map(|(u, d)| (u.to_string(), d.iter().map(|x| x.to_string()).collect()))
        .collect();
    let remote = by_other_server(ctx, wanted.iter().map(|(u, d)| (u, d)));
    let (local, known) = ctx.server.read(|state| {
        // What other servers' device-list and signing-key updates told, newer than what
        // their key query answers.
        let mut known = json!({"device_keys": {}, "master_keys": {}, "self_signing_keys": {}});
        for (user, devices) in &wanted {
            if let Some(d) = state.remote_devices.get(user) {
                let picked: Map<String, Value> = d
                    .iter()
                    .filter(|(id, _)| devices.is_empty() || devices.contains(id))
                    .map(|(id, k)| (id.clone(), k.clone()))
                    .collect();
                known["device_keys"][user] = Value::Object(picked);
            }
            if let Some(cs) = state.remote_cross_signing.get(user) {
                for (field, k) in [
                    ("master_keys", "master_key"),
                    ("self_signing_keys", "self_signing_key"),
                ] {
                    if let Some(v) = cs.get(k) {
                        known[field][user] = v.clone();
                    }
                }
            }
        }
        (device_keys_of(state, &wanted, Some(&me.user_id)), known)
    });
    if remote.is_empty() {
        return Ok(Reply::from(local));
    }
    ask_servers(
        ctx,
        local,
        remote,
        "/_matrix/federation/v1/user/keys/query",
        "device_keys",
        &["device_keys", "master_keys", "self_signing_keys"],
        known,
    )
}

/// The device and cross-signing keys of users (all their devices when the list is empty), as
/// `viewer` may see them (`None`: another server, which is shown no user-signing keys and
/// only the owners' signatures).
pub(crate) fn device_keys_of(
    state: &crate::state::State,
    wanted: &[(String, Vec<String>)],
    viewer: Option<&str>,
) -> Value {
    let viewer_name = viewer.unwrap_or("");
    let (mut master, mut self_signing, mut user_signing) = (Map::new(), Map::new(), Map::new());
    for (user, _) in wanted {
        if let Some(cs) = state.cross_signing.get(user.as_str()) {
            for (map, name) in [
                (&mut master, "master_key"),
                (&mut self_signing, "self_signing_key"),
            ] {
                if let Some(k) = cs.get(name) {
                    map.insert(user.to_string(), visible_signatures(k, user, viewer_name));
                }
            }
            if Some(user.as_str()) == viewer {
                if let Some(k) = cs.get("user_signing_key") {
                    user_signing.insert(user.to_string(), k.clone());
                }
            }
        }
    }
    let mut out: Map<String, Value> = Map::new();
    for (user, devices) in wanted {
        let mut per_user: Map<String, Value> = Map::new();
        let known = state.devices.get(user.as_str());
        for device in known.into_iter().flat_map(|d| d.keys()) {
            if !devices.is_empty() && !devices.contains(device) {
                continue;
            }
            if let Some(k) = state.device_keys.get(&(user.to_string(), device.clone())) {
                let mut k = visible_signatures(k, user, viewer_name);
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
    let mut answer = json!({
        "device_keys": out,
        "master_keys": master,
        "self_signing_keys": self_signing,
    });
    if viewer.is_some() {
        answer["failures"] = json!({});
        answer["user_signing_keys"] = Value::Object(user_signing);
    }
    answer
}

/// `key` as `viewer` may see it: signatures by its owner, and by the viewer (a signature of
/// another user's master key by one's user-signing key is for the signer alone).
fn visible_signatures(key: &Value, owner: &str, viewer: &str) -> Value {
    let mut key = key.clone();
    if let Some(sigs) = key.get_mut("signatures").and_then(Value::as_object_mut) {
        sigs.retain(|signer, _| signer == owner || signer == viewer);
    }
    key
}

pub fn claim_keys(ctx: &Ctx, req: cs::keys::claim_keys::Request) -> ApiResult<Reply> {
    ctx.me()?;
    let wanted = serde_json::to_value(&req.body.one_time_keys).map_err(ApiError::internal)?;
    let remote = by_other_server(ctx, wanted.as_object().into_iter().flatten());
    let local = ctx.server.write(|state, batch| {
        Ok(json!({"one_time_keys": claim_one_time_keys(state, batch, &wanted), "failures": {}}))
    })?;
    if remote.is_empty() {
        return Ok(Reply::from(local));
    }
    ask_servers(
        ctx,
        local,
        remote,
        "/_matrix/federation/v1/user/keys/claim",
        "one_time_keys",
        &["one_time_keys"],
        json!({}),
    )
}

/// Claims a one-time key (else the fallback key) per device asked for in `wanted` (user ->
/// device -> algorithm): user -> device -> {key id: key}.
pub(crate) fn claim_one_time_keys(
    state: &mut crate::state::State,
    batch: &mut crate::store::Batch,
    wanted: &Value,
) -> Value {
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
                    let v = state.take_one_time_key(batch, user, device, &id);
                    v.map(|v| (id, v))
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
    Value::Object(out)
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
        if state.txn(&key).is_some() {
            return Ok(json!({}));
        }
        // Users of other servers: one EDU per server.
        let mut remote: std::collections::BTreeMap<String, Map<String, Value>> =
            std::collections::BTreeMap::new();
        for (user, devices) in messages.as_object().into_iter().flatten() {
            if let Some((_, host)) = user.split_once(':').filter(|_| !state.is_local(user)) {
                remote
                    .entry(host.to_string())
                    .or_default()
                    .insert(user.clone(), devices.clone());
            }
        }
        for (host, msgs) in remote {
            state.emit_edu(
                crate::state::EduTarget::Server(host),
                "m.direct_to_device",
                json!({
                    "sender": me.user_id,
                    "type": req.event_type,
                    "message_id": crate::state::random_token(12),
                    "messages": msgs,
                }),
            );
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
                let msg = json!({"sender": me.user_id, "type": req.event_type, "content": content});
                state.queue_to_device(batch, user, &device, msg);
            }
        }
        state.remember_txn(batch, key, String::new());
        Ok(json!({}))
    })
}

/// The single ed25519 public key (unpadded base64) of a cross-signing key object, whose key
/// id is `ed25519:<that key>`.
fn cross_signing_public(key: &Value) -> Option<&str> {
    let keys = key.get("keys")?.as_object()?;
    if keys.len() != 1 {
        return None;
    }
    let (id, public) = keys.iter().next()?;
    let public = public.as_str()?;
    let bytes = mxconform_pdu::base64::decode(public)?;
    (id.strip_prefix("ed25519:") == Some(public) && bytes.len() == 32).then_some(public)
}

/// The key that checks signatures made with a cross-signing key (`None` when its bytes are
/// not a public key).
fn cross_signing_verify_key(key: &Value) -> Option<VerifyKey> {
    let public = cross_signing_public(key)?;
    VerifyKey::from_base64(&format!("ed25519:{public}"), public).ok()
}

/// `object` without `signatures` and `unsigned`: what a signature covers.
fn signed_part(object: &Value) -> Value {
    let mut v = object.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("signatures");
        m.remove("unsigned");
    }
    v
}

pub fn upload_cross_signing_keys(
    ctx: &Ctx,
    req: cs::cross_signing::upload_cross_signing_keys::Request,
) -> ApiResult<Value> {
    let me = ctx.me()?.clone();
    let b = req.body;
    let mut keys = Map::new();
    for (name, usage, k) in [
        (
            "master_key",
            "master",
            b.master_key.as_ref().map(serde_json::to_value),
        ),
        (
            "self_signing_key",
            "self_signing",
            b.self_signing_key.as_ref().map(serde_json::to_value),
        ),
        (
            "user_signing_key",
            "user_signing",
            b.user_signing_key.as_ref().map(serde_json::to_value),
        ),
    ] {
        if let Some(k) = k {
            let k = k.map_err(ApiError::internal)?;
            if k.get("user_id").and_then(Value::as_str) != Some(me.user_id.as_str()) {
                return Err(ApiError::invalid_param(format!(
                    "{name} must be the caller's"
                )));
            }
            let usages = k.get("usage").and_then(Value::as_array);
            if !usages.is_some_and(|u| u.iter().any(|x| x == usage)) {
                return Err(ApiError::invalid_param(format!(
                    "{name} must have the usage {usage:?}"
                )));
            }
            if cross_signing_public(&k).is_none() {
                return Err(ApiError::invalid_param(format!(
                    "{name} must hold one ed25519 key, under the key id ed25519:<that key>"
                )));
            }
            keys.insert(name.to_string(), k);
        }
    }
    let stored = ctx
        .server
        .read(|s| s.cross_signing.get(&me.user_id).cloned())
        .unwrap_or(json!({}));
    // Signing keys hang off a master key: the one uploaded with them, or the stored one.
    let master = keys.get("master_key").or_else(|| stored.get("master_key"));
    if master.is_none()
        && (keys.contains_key("self_signing_key") || keys.contains_key("user_signing_key"))
    {
        return Err(ApiError::missing_param(
            "no master signing key: upload one with the signing keys",
        ));
    }
    // ... and must be signed by it.
    for name in ["self_signing_key", "user_signing_key"] {
        if let (Some(k), Some(master)) = (keys.get(name), master) {
            let verified = cross_signing_verify_key(master)
                .ok_or_else(|| "the master key is not an ed25519 public key".to_string())
                .and_then(|m| verify_signature(k, &me.user_id, &m).map_err(|e| e.to_string()));
            if let Err(e) = verified {
                return Err(ApiError::invalid_signature(format!(
                    "{name} is not signed by the master key: {e}"
                )));
            }
        }
    }
    // The first master key needs no authentication, and neither does uploading exactly the
    // keys already stored (a retry); anything else replaces keys, and must be authenticated.
    let first = stored.get("master_key").is_none();
    let same = keys.iter().all(|(k, v)| stored.get(k) == Some(v));
    if !first && !same {
        super::uia::password_uia(ctx, b.auth.as_ref())?;
    }
    ctx.server.write(|state, batch| {
        let mut all = state
            .cross_signing
            .get(&me.user_id)
            .cloned()
            .unwrap_or(json!({}));
        // A new master key voids the signing keys the old one signed.
        if keys
            .get("master_key")
            .is_some_and(|m| all.get("master_key").map(signed_part) != Some(signed_part(m)))
        {
            for name in ["self_signing_key", "user_signing_key"] {
                if !keys.contains_key(name) {
                    if let Some(m) = all.as_object_mut() {
                        m.remove(name);
                    }
                }
            }
        }
        for (k, v) in keys {
            all[k] = v;
        }
        state.put_cross_signing(batch, &me.user_id, all);
        Ok(json!({}))
    })
}

/// Where an uploaded signature goes once verified.
enum Target {
    /// One of the uploader's devices, signed by their self-signing key.
    Device(String),
    /// A master key (the uploader's, signed by a device; or another user's, signed by the
    /// uploader's user-signing key).
    Master,
}

pub fn upload_cross_signing_signatures(
    ctx: &Ctx,
    req: cs::cross_signing::upload_cross_signing_signatures::Request,
) -> ApiResult<Value> {
    let me = ctx.me()?.clone();
    let body = serde_json::to_value(&req.body).map_err(ApiError::internal)?;
    ctx.server.write(|state, batch| {
        let mut failures: Map<String, Value> = Map::new();
        let mine = state
            .cross_signing
            .get(&me.user_id)
            .cloned()
            .unwrap_or(json!({}));
        for (user, objects) in body.as_object().into_iter().flatten() {
            for (key_id, object) in objects.as_object().into_iter().flatten() {
                let outcome = check_upload(state, &me.user_id, &mine, user, key_id, object);
                let (target, signatures) = match outcome {
                    Ok(found) => found,
                    Err((errcode, error)) => {
                        failures.entry(user.clone()).or_insert_with(|| json!({}))[key_id] =
                            json!({"errcode": errcode, "error": error});
                        continue;
                    }
                };
                // Keep the verified signatures on the stored object.
                let stored: Option<&mut Value> = match &target {
                    Target::Device(device) => {
                        state.device_keys.get_mut(&(user.clone(), device.clone()))
                    }
                    Target::Master => state
                        .cross_signing
                        .get_mut(user)
                        .and_then(|c| c.get_mut("master_key")),
                };
                let Some(stored) = stored else { continue };
                let sigs = stored
                    .as_object_mut()
                    .map(|m| m.entry("signatures").or_insert_with(|| json!({})));
                if let Some(Value::Object(sigs)) = sigs {
                    let per = sigs.entry(me.user_id.clone()).or_insert_with(|| json!({}));
                    for (id, sig) in signatures {
                        per[id] = sig;
                    }
                }
                // Kept again through the state, which marks the user's keys changed.
                match &target {
                    Target::Device(device) => {
                        let keys = state.device_keys[&(user.clone(), device.clone())].clone();
                        state.put_device_keys(batch, user, device, keys);
                    }
                    Target::Master => {
                        let all = state.cross_signing[user].clone();
                        state.put_cross_signing(batch, user, all);
                    }
                }
            }
        }
        Ok(json!({"failures": failures}))
    })
}

/// Checks one uploaded signed object: it must be a key the server holds, unchanged but for
/// its signatures, and carry at least one new signature by the uploader that verifies with
/// the key that may make it. Returns where it goes and the new signatures (key id ->
/// signature), or an error code and message for `failures`.
fn check_upload(
    state: &crate::state::State,
    me: &str,
    mine: &Value,
    user: &str,
    key_id: &str,
    object: &Value,
) -> Result<(Target, Vec<(String, Value)>), (&'static str, String)> {
    let not_found = |what: &str| ("M_NOT_FOUND", format!("no {what} {key_id} of {user}"));
    let (target, stored, signer): (Target, &Value, Option<VerifyKey>) = if user == me {
        if let Some(k) = state
            .device_keys
            .get(&(user.to_string(), key_id.to_string()))
        {
            // A device of mine, signed by my self-signing key.
            let ssk = mine
                .get("self_signing_key")
                .and_then(cross_signing_verify_key);
            (Target::Device(key_id.to_string()), k, ssk)
        } else {
            let master = mine
                .get("master_key")
                .filter(|m| cross_signing_public(m) == Some(key_id))
                .ok_or_else(|| not_found("device or master key"))?;
            // My master key, signed by one of my devices: which one is in the signature.
            (Target::Master, master, None)
        }
    } else {
        let theirs = state
            .cross_signing
            .get(user)
            .and_then(|c| c.get("master_key"))
            .filter(|m| cross_signing_public(m) == Some(key_id))
            .ok_or_else(|| not_found("master key"))?;
        let usk = mine
            .get("user_signing_key")
            .and_then(cross_signing_verify_key);
        (Target::Master, theirs, usk)
    };
    if signed_part(stored) != signed_part(object) {
        return Err((
            "M_INVALID_PARAM",
            format!("the signed object differs from the stored key {key_id} of {user}"),
        ));
    }
    let uploaded = object
        .get("signatures")
        .and_then(|s| s.get(me))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let known = stored.get("signatures").and_then(|s| s.get(me));
    let mut new = Vec::new();
    for (id, sig) in uploaded {
        if known.and_then(|k| k.get(&id)) == Some(&sig) {
            continue;
        }
        let key = match (&target, &signer) {
            (Target::Master, None) => {
                // A device of mine signing my master key.
                let device = id.strip_prefix("ed25519:").unwrap_or("");
                state
                    .device_keys
                    .get(&(me.to_string(), device.to_string()))
                    .and_then(|d| d.get("keys")?.get(&id)?.as_str().map(str::to_string))
                    .and_then(|public| VerifyKey::from_base64(&id, &public).ok())
            }
            (_, Some(k)) if k.key_id == id => Some(k.clone()),
            _ => None,
        };
        let Some(key) = key else {
            return Err((
                "M_INVALID_SIGNATURE",
                format!("{id} is not a key that may sign {key_id} of {user}"),
            ));
        };
        let mut one = object.clone();
        one["signatures"] = json!({ me: { id.clone(): sig.clone() } });
        if let Err(e) = verify_signature(&one, me, &key) {
            return Err(("M_INVALID_SIGNATURE", format!("{id}: {e}")));
        }
        new.push((id, sig));
    }
    if new.is_empty() {
        return Err((
            "M_INVALID_SIGNATURE",
            format!("no new signature by {me} on {key_id} of {user}"),
        ));
    }
    Ok((target, new))
}
