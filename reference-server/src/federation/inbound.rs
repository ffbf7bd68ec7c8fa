//! Answers to other servers: the route from the generated server-server table, the X-Matrix
//! signature checked (the origin's key fetched if not kept) before anything else, then the
//! operation. Received PDUs go through every check on receipt: format, signatures, content
//! hash (a mismatch keeps the redacted event), the auth events, the state before the event,
//! and the current state (soft failure).

use std::collections::{BTreeSet, HashMap};

use bytes::Bytes;
use http::{Request, Response};
use mxconform_generated::Auth;
use mxconform_pdu::keys::{ServerKeys, VerifyKey};
use mxconform_pdu::pdu::VerifyError;
use mxconform_pdu::{xmatrix, Pdu, RoomVersion};
use serde_json::{json, Map, Value};

use super::Federation;
use crate::error::{ApiError, ApiResult};
use crate::http::{json_response, parse_query};
use crate::state::{now_ms, Received};
use crate::Server;

/// The most PDUs and EDUs one transaction may hold.
const MAX_PDUS: usize = 50;
const MAX_EDUS: usize = 100;

/// How long this server's key document says its keys are valid.
const KEY_VALIDITY_MS: u64 = 24 * 3600 * 1000;

/// One request from another server, authenticated.
struct Call<'a> {
    server: &'a Server,
    fed: &'a Federation,
    /// The server that signed the request (operations that need no signature: empty).
    origin: String,
    params: std::collections::BTreeMap<String, String>,
    query: Vec<(String, String)>,
    body: Option<Value>,
}

impl Call<'_> {
    fn param(&self, name: &str) -> &str {
        self.params.get(name).map_or("", String::as_str)
    }

    fn query_all<'q>(&'q self, name: &'q str) -> impl Iterator<Item = &'q str> + 'q {
        self.query
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn query_one(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn body(&self) -> ApiResult<&Value> {
        self.body
            .as_ref()
            .filter(|b| b.is_object())
            .ok_or_else(|| ApiError::not_json("the body must be a JSON object"))
    }

    /// The room version of a room this server is in; 404 otherwise.
    fn room_version(&self, room_id: &str) -> ApiResult<&'static RoomVersion> {
        self.server
            .read(|s| s.room_version_of(room_id))
            .ok_or_else(|| ApiError::not_found(format!("this server is not in room {room_id}")))
    }

    /// The room's server ACL lets the origin in.
    fn acl(&self, room_id: &str) -> ApiResult<()> {
        if self
            .server
            .read(|s| s.server_allowed(room_id, &self.origin))
        {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "the server ACL of {room_id} does not allow {}",
                self.origin
            )))
        }
    }

    /// The origin has a joined member in the room (what most room reads require), and the
    /// room's server ACL lets it in.
    fn origin_in_room(&self, room_id: &str) -> ApiResult<()> {
        self.acl(room_id)?;
        let inside = self
            .server
            .read(|s| s.servers_in_room(room_id).contains(&self.origin));
        if inside {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "{} has no member in room {room_id}",
                self.origin
            )))
        }
    }
}

/// Answers a request under `/_matrix/federation/` or `/_matrix/key/`.
pub async fn handle(server: &Server, req: &Request<Bytes>) -> ApiResult<Response<Bytes>> {
    let Some(fed) = server.federation.as_ref() else {
        return Err(ApiError::unrecognized("this server does not federate"));
    };
    let matched = server
        .fed_router
        .find(req.method().as_str(), req.uri().path())?;
    let route = matched.routes[0];
    let query = parse_query(req.uri().query())?;
    let body = if req.body().is_empty() {
        None
    } else {
        Some(
            serde_json::from_slice::<Value>(req.body())
                .map_err(|_| ApiError::not_json("the body is not JSON"))?,
        )
    };
    let origin = if route.auth == Auth::Required {
        authenticate(server, fed, req, body.as_ref()).await?
    } else {
        String::new()
    };
    let call = Call {
        server,
        fed,
        origin,
        params: matched.params,
        query,
        body,
    };
    if matches!(route.operation_id, "getContent" | "getContentThumbnail") {
        return media(&call, route.operation_id == "getContentThumbnail");
    }
    let answer = match route.operation_id {
        "getServerKey" => server_key(&call),
        "getVersion" => {
            Ok(json!({"server": {"name": "mxconform", "version": env!("CARGO_PKG_VERSION")}}))
        }
        "makeJoin" => make_membership(&call, "join"),
        "makeLeave" => make_membership(&call, "leave"),
        "makeKnock" => make_membership(&call, "knock"),
        "sendJoinV2" => send_join(&call).await,
        "sendLeaveV2" => send_membership(&call, "leave").await.map(|_| json!({})),
        "sendKnock" => send_knock(&call).await,
        "sendInviteV2" => send_invite(&call, true).await,
        "sendInviteV1" => send_invite(&call, false).await,
        "sendTransaction" => send_transaction(&call).await,
        "getEvent" => get_event(&call),
        "getRoomState" => room_state(&call, false),
        "getRoomStateIds" => room_state(&call, true),
        "getEventAuth" => event_auth(&call),
        "backfillRoom" => backfill(&call),
        "getMissingPreviousEvents" => missing_events(&call),
        "bulkPerspectivesKeyQuery" => notary_bulk(&call).await,
        "perspectivesKeyQuery" => notary_one(&call).await,
        "getEventByTimestamp" => event_by_timestamp(&call),
        "getUserDevices" => user_devices(&call),
        "queryUserEncryptionKeys" => user_keys_query(&call),
        "claimUserEncryptionKeys" => user_keys_claim(&call),
        "getPublicRooms" => public_rooms_get(&call),
        "queryPublicRooms" => public_rooms_query(&call),
        "exchangeOpenIdToken" => openid_userinfo(&call),
        "getWellKnown" => Ok(json!({"m.server": well_known_server(server)})),
        "onBindThirdPartyIdentifier" => on_bind(&call).await,
        "getSpaceHierarchy" => hierarchy(&call),
        "askPolicyServerToSign" => super::policy::sign_for(server, call.body()?).await,
        "exchangeThirdPartyInvite" => exchange_third_party_invite(&call).await,
        "queryProfile" => query_profile(&call),
        "queryRoomDirectory" => query_directory(&call),
        // `/query/{queryType}` matches the named queries' paths too.
        "queryInfo" => match call.param("queryType") {
            "profile" => query_profile(&call),
            "directory" => query_directory(&call),
            other => Err(ApiError::unrecognized(format!("no query type {other}"))),
        },
        other => Err(ApiError::unrecognized(format!(
            "{other} is not implemented by this server yet"
        ))),
    }?;
    Ok(json_response(200, &answer))
}

/// Checks the request's X-Matrix signature with the origin's key; returns the origin.
async fn authenticate(
    server: &Server,
    fed: &Federation,
    req: &Request<Bytes>,
    body: Option<&Value>,
) -> ApiResult<String> {
    let header = req
        .headers()
        .get_all(http::header::AUTHORIZATION)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .find(|h| h.trim_start().starts_with("X-Matrix"))
        .ok_or_else(|| ApiError::unauthorized("the request carries no X-Matrix authorization"))?;
    let x = xmatrix::parse(header).map_err(|e| ApiError::unauthorized(e.to_string()))?;
    if x.origin == server.config.server_name {
        return Err(ApiError::unauthorized(
            "the request claims to come from this server",
        ));
    }
    let keys = fed
        .keys_of(server, &x.origin)
        .await
        .map_err(|e| ApiError::unauthorized(format!("the keys of {}: {e}", x.origin)))?;
    let (key, _) = keys.key(&x.key).ok_or_else(|| {
        ApiError::unauthorized(format!("{} publishes no key {}", x.origin, x.key))
    })?;
    let uri = req
        .uri()
        .path_and_query()
        .map_or(req.uri().path(), |p| p.as_str());
    x.verify(
        &server.config.server_name,
        req.method().as_str(),
        uri,
        body,
        key,
    )
    .map_err(|e| ApiError::unauthorized(e.to_string()))?;
    Ok(x.origin)
}

impl Federation {
    /// `server_name`'s keys: those kept while valid, else fetched from it and checked (signed
    /// by themselves, for that name). This server's own from its signing key.
    pub async fn keys_of(&self, server: &Server, server_name: &str) -> Result<ServerKeys, String> {
        self.key_document(server, server_name, 0)
            .await
            .map(|(k, _)| k)
    }

    /// `server_name`'s keys and the document that published them: kept while valid (and
    /// valid until at least `minimum_valid_until_ts`), else fetched and checked.
    pub async fn key_document(
        &self,
        server: &Server,
        server_name: &str,
        minimum_valid_until_ts: i64,
    ) -> Result<(ServerKeys, Value), String> {
        if server_name == server.config.server_name {
            let key = server
                .read(|s| s.signing_key.clone())
                .ok_or("this server has no signing key")?;
            let doc = mxconform_pdu::keys::server_key_document(
                server_name,
                &[&key],
                &[],
                (now_ms() + KEY_VALIDITY_MS) as i64,
            );
            let keys = ServerKeys {
                server_name: server_name.to_string(),
                verify_keys: vec![key.verify_key()],
                valid_until_ts: i64::MAX,
                old_verify_keys: Vec::new(),
            };
            return Ok((keys, doc));
        }
        let now = now_ms() as i64;
        if let Some(k) = self
            .keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(server_name)
            .filter(|(k, _)| k.valid_until_ts > now.max(minimum_valid_until_ts - 1))
        {
            return Ok(k.clone());
        }
        let found = match self.direct_keys(server_name).await {
            Ok(found) => found,
            Err(direct) => {
                // Not from the server itself: through the notaries this server trusts.
                let mut why = vec![direct];
                let mut found = None;
                for notary in self.notaries.iter().filter(|n| *n != server_name) {
                    match Box::pin(self.notary_keys(
                        server,
                        notary,
                        server_name,
                        minimum_valid_until_ts,
                    ))
                    .await
                    {
                        Ok(f) => {
                            found = Some(f);
                            break;
                        }
                        Err(e) => why.push(format!("notary {notary}: {e}")),
                    }
                }
                found.ok_or_else(|| why.join("; "))?
            }
        };
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(server_name.to_string(), found.clone());
        Ok(found)
    }

    /// `server_name`'s keys from the server itself (`/_matrix/key/v2/server`), self-signed.
    async fn direct_keys(&self, server_name: &str) -> Result<(ServerKeys, Value), String> {
        let a = self
            .client
            .get(server_name, "/_matrix/key/v2/server")
            .await?;
        if a.status != 200 {
            return Err(format!(
                "GET /_matrix/key/v2/server answered {}: {}",
                a.status, a.body
            ));
        }
        let keys = mxconform_pdu::keys::verify_server_key_document(&a.body, server_name)
            .map_err(|e| e.to_string())?;
        Ok((keys, a.body))
    }

    /// `server_name`'s keys through `notary` (`POST /_matrix/key/v2/query`): a document the
    /// server signed, which the notary signed too (with its own keys, fetched from it).
    async fn notary_keys(
        &self,
        server: &Server,
        notary: &str,
        server_name: &str,
        minimum_valid_until_ts: i64,
    ) -> Result<(ServerKeys, Value), String> {
        let body = json!({"server_keys": {server_name: {}}});
        let a = self
            .request(server, notary, "POST", "/_matrix/key/v2/query", Some(&body))
            .await?;
        if a.status != 200 {
            return Err(format!("/_matrix/key/v2/query answered {}", a.status));
        }
        let notary_keys = self.keys_of(server, notary).await?;
        let now = now_ms() as i64;
        let mut why = format!("no document of {server_name}");
        for doc in a
            .body
            .get("server_keys")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if doc.get("server_name").and_then(Value::as_str) != Some(server_name) {
                continue;
            }
            let checked = mxconform_pdu::keys::verify_server_key_document(doc, server_name)
                .map_err(|e| e.to_string())
                .and_then(|keys| {
                    mxconform_pdu::sign::verify_signed_by(doc, notary, &|id: &str| {
                        notary_keys.key(id).map(|(k, _)| k.clone())
                    })
                    .map_err(|e| format!("the notary's signature: {e}"))?;
                    Ok(keys)
                });
            match checked {
                Ok(keys) if keys.valid_until_ts > now.max(minimum_valid_until_ts - 1) => {
                    return Ok((keys, doc.clone()))
                }
                Ok(_) => why = format!("{server_name}'s document has expired"),
                Err(e) => why = e,
            }
        }
        Err(why)
    }

    /// Checks many PDUs at once (the state and auth chain of a send_join answer): each parsed,
    /// the keys of every server that must sign one fetched once, then signatures (step 2) and
    /// content hashes (step 3) checked on all cores. Each result is the PDU (redacted when its
    /// hash does not match) or why it fails, in the order given.
    pub async fn verify_many(
        &self,
        server: &Server,
        v: &'static RoomVersion,
        raw: Vec<Value>,
    ) -> Vec<Result<Pdu, String>> {
        let parsed = par_map(raw, move |j| {
            Pdu::from_json(v, j).map_err(|e| format!("not a valid PDU: {e}"))
        })
        .await;
        let signers: BTreeSet<String> = parsed
            .iter()
            .flatten()
            .flat_map(|p| p.required_signers(v))
            .collect();
        let mut keys: HashMap<String, Result<ServerKeys, String>> = HashMap::new();
        for s in signers {
            let k = self.keys_of(server, &s).await;
            keys.insert(s, k);
        }
        par_map(parsed, move |p| {
            let p = p?;
            let mut missing = None;
            let lookup = |s: &str, key_id: &str| -> Option<(VerifyKey, i64)> {
                match keys.get(s) {
                    Some(Ok(k)) => k.key(key_id).map(|(k, ts)| (k.clone(), ts)),
                    _ => None,
                }
            };
            for s in p.required_signers(v) {
                if let Some(Err(e)) = keys.get(&s) {
                    missing = Some(format!("the keys of {s}, which must sign it: {e}"));
                }
            }
            if let Some(why) = missing {
                return Err(why);
            }
            match mxconform_pdu::pdu::verify(v, &p, &lookup) {
                Ok(()) => Ok(p),
                Err(VerifyError::ContentHash) => {
                    Pdu::from_json(v, p.redacted(v)).map_err(|e| e.to_string())
                }
                Err(e) => Err(e.to_string()),
            }
        })
        .await
    }

    /// Checks a PDU's signatures (step 2) and content hash (step 3), fetching the keys of
    /// the servers that must have signed it. `Ok(false)`: the signatures verify but the hash
    /// does not match (the redacted event is kept).
    pub async fn verify_pdu(
        &self,
        server: &Server,
        v: &RoomVersion,
        pdu: &Pdu,
    ) -> Result<bool, String> {
        let mut keys: HashMap<String, ServerKeys> = HashMap::new();
        for s in pdu.required_signers(v) {
            let k = self
                .keys_of(server, &s)
                .await
                .map_err(|e| format!("the keys of {s}, which must sign it: {e}"))?;
            keys.insert(s, k);
        }
        let lookup = |s: &str, key_id: &str| -> Option<(VerifyKey, i64)> {
            keys.get(s)?.key(key_id).map(|(k, ts)| (k.clone(), ts))
        };
        match mxconform_pdu::pdu::verify(v, pdu, &lookup) {
            Ok(()) => Ok(true),
            Err(VerifyError::ContentHash) => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// `f` over `items` on every core (in a blocking task, off the runtime's threads), the
/// results in order; a few items are done in place.
async fn par_map<T, R, F>(items: Vec<T>, f: F) -> Vec<R>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> R + Send + Sync + 'static,
{
    const IN_PLACE: usize = 32;
    if items.len() <= IN_PLACE {
        return items.into_iter().map(f).collect();
    }
    let work = move || {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per = items.len().div_ceil(threads);
        let mut chunks: Vec<Vec<T>> = Vec::new();
        let mut items = items.into_iter();
        loop {
            let chunk: Vec<T> = items.by_ref().take(per).collect();
            if chunk.is_empty() {
                break;
            }
            chunks.push(chunk);
        }
        let f = &f;
        std::thread::scope(|scope| {
            let mut chunks = chunks.into_iter();
            let first = chunks.next();
            let others: Vec<_> = chunks
                .map(|c| scope.spawn(move || c.into_iter().map(f).collect::<Vec<R>>()))
                .collect();
            let mut out: Vec<R> = first
                .map(|c| c.into_iter().map(f).collect())
                .unwrap_or_default();
            for h in others {
                match h.join() {
                    Ok(part) => out.extend(part),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            out
        })
    };
    match tokio::task::spawn_blocking(work).await {
        Ok(out) => out,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

fn server_key(c: &Call<'_>) -> ApiResult<Value> {
    let key = c
        .server
        .read(|s| s.signing_key.clone())
        .ok_or_else(|| ApiError::internal("the server has no signing key"))?;
    Ok(mxconform_pdu::keys::server_key_document(
        &c.server.config.server_name,
        &[&key],
        &[],
        (now_ms() + KEY_VALIDITY_MS) as i64,
    ))
}

/// make_join, make_leave, make_knock: the template, for a user of the origin.
fn make_membership(c: &Call<'_>, membership: &str) -> ApiResult<Value> {
    let (room_id, user) = (c.param("roomId"), c.param("userId"));
    if user.split_once(':').map(|(_, s)| s) != Some(c.origin.as_str()) {
        return Err(ApiError::forbidden(format!(
            "{user} is not a user of {}",
            c.origin
        )));
    }
    let v = c.room_version(room_id)?;
    c.acl(room_id)?;
    if membership != "leave" {
        // Without `ver`, the asking server supports room version 1 only.
        let mut supported: Vec<&str> = c.query_all("ver").collect();
        if supported.is_empty() {
            supported.push("1");
        }
        if !supported.contains(&v.id) {
            return Err(ApiError::incompatible_room_version(format!(
                "the room is of version {}, which the asking server does not support",
                v.id
            ))
            .with_extra(json!({"room_version": v.id})));
        }
    }
    let event = c
        .server
        .read(|s| s.membership_template(room_id, user, membership, &c.origin))?;
    Ok(json!({"room_version": v.id, "event": event}))
}

/// The membership event of send_join, send_leave or send_knock, checked: the event the path
/// names, of the origin's user, with the membership the operation is for, passing every
/// check on receipt; then kept. Returns the event as kept (with this server's signature
/// added for a restricted join it vouches for) and the room version.
async fn send_membership(c: &Call<'_>, membership: &str) -> ApiResult<(Pdu, &'static RoomVersion)> {
    let (room_id, event_id) = (c.param("roomId"), c.param("eventId"));
    let v = c.room_version(room_id)?;
    c.acl(room_id)?;
    let mut json = c.body()?.clone();
    let pdu = Pdu::from_json(v, json.clone())
        .map_err(|e| ApiError::bad_json(format!("the event is not a valid PDU: {e}")))?;
    if pdu.event_id != event_id || pdu.room_id != room_id {
        return Err(ApiError::bad_json(
            "the event is not the one the path names (its id or room differs)",
        ));
    }
    if pdu.kind != "m.room.member"
        || pdu.state_key.as_deref() != Some(pdu.sender.as_str())
        || pdu.membership() != Some(membership)
    {
        return Err(ApiError::bad_json(format!(
            "the event must be the sender's own m.room.member event with membership {membership}"
        )));
    }
    if pdu.sender_server() != c.origin {
        return Err(ApiError::forbidden(format!(
            "{} is not a user of {}",
            pdu.sender, c.origin
        )));
    }
    // A restricted join this server vouches for carries its signature too.
    let via = pdu
        .content()
        .get("join_authorised_via_users_server")
        .and_then(Value::as_str)
        .map(str::to_string);
    let pdu = match via {
        Some(u) if u.ends_with(&format!(":{}", c.server.config.server_name)) => {
            countersign(c, v, &pdu, &mut json)?;
            Pdu::from_json(v, json)
                .map_err(|e| ApiError::bad_json(format!("the event is not a valid PDU: {e}")))?
        }
        _ => pdu,
    };
    let hash_ok = c
        .fed
        .verify_pdu(c.server, v, &pdu)
        .await
        .map_err(|e| ApiError::forbidden(format!("the event's signatures: {e}")))?;
    if !hash_ok {
        return Err(ApiError::bad_json(
            "the event's content hash does not match",
        ));
    }
    // A room with a Policy Server: the membership is taken to it, as any event without its
    // signature is (a joining server may not know the room has one).
    let lacking = c.server.read(|s| s.lacks_policy_signature(&pdu));
    let pdu = match lacking {
        Some((via, _)) => super::policy::ask(c.server, &via, v, &pdu).await?,
        None => pdu,
    };
    let kept = pdu.clone();
    let outcome = c
        .server
        .write(|state, batch| Ok(state.receive_pdu(batch, pdu, true)))?;
    match outcome {
        Received::Accepted(_) => {
            // The joining (leaving, knocking) server may not know who else is in the room:
            // the resident server passes its event on to the others.
            let dests: Vec<String> = c.server.read(|s| {
                s.servers_in_room(room_id)
                    .into_iter()
                    .filter(|d| *d != c.origin && *d != s.server_name)
                    .collect()
            });
            c.fed.sender.forward(c.server, dests, &kept.json);
        }
        Received::Duplicate => {}
        Received::Rejected(r) | Received::SoftFailed(r) => {
            return Err(ApiError::forbidden(format!("the event is refused: {r}")))
        }
        Received::MissingPrev(ids) => {
            return Err(ApiError::bad_json(format!(
                "the event cites prev events this server does not know: {}",
                ids.join(", ")
            )))
        }
    }
    Ok((kept, v))
}

/// Adds this server's signature (of the redacted event, as every event signature is) to
/// `json`, another server's event `pdu` as received: a restricted join it vouches for, or an
/// invite of one of its users.
fn countersign(c: &Call<'_>, v: &RoomVersion, pdu: &Pdu, json: &mut Value) -> ApiResult<()> {
    let key = c
        .server
        .read(|s| s.signing_key.clone())
        .ok_or_else(|| ApiError::internal("the server has no signing key"))?;
    let name = c.server.config.server_name.as_str();
    let mut redacted = pdu.redacted(v);
    mxconform_pdu::sign::sign_json(&mut redacted, name, &key);
    let sig = redacted["signatures"][name][key.key_id()].clone();
    json["signatures"][name] = json!({ key.key_id(): sig });
    Ok(())
}

async fn send_join(c: &Call<'_>) -> ApiResult<Value> {
    let (pdu, _v) = send_membership(c, "join").await?;
    let omit = c.query_one("omit_members") == Some("true");
    let room_id = pdu.room_id.clone();
    c.server.read(|s| {
        let state: Vec<Pdu> = s.state_before(&room_id, &pdu.event_id).unwrap_or_default();
        let ids: Vec<String> = state.iter().map(|p| p.event_id.clone()).collect();
        let chain = s.auth_chain(&room_id, &ids);
        let keep = |p: &&Pdu| {
            !omit || p.kind != "m.room.member" || p.state_key.as_deref() == Some(&pdu.sender)
        };
        let mut answer = json!({
            "origin": s.server_name,
            "state": state.iter().filter(keep).map(|p| p.json.clone()).collect::<Vec<_>>(),
            "auth_chain": chain.iter().map(|p| p.json.clone()).collect::<Vec<_>>(),
            "event": pdu.json,
            "members_omitted": omit,
        });
        if omit {
            let mut servers: Vec<String> = s.servers_in_room(&room_id).into_iter().collect();
            servers.sort();
            answer["servers_in_room"] = json!(servers);
        }
        Ok(answer)
    })
}

async fn send_knock(c: &Call<'_>) -> ApiResult<Value> {
    let (pdu, _) = send_membership(c, "knock").await?;
    Ok(c.server
        .read(|s| json!({"knock_room_state": s.stripped_state_pdus(&pdu.room_id)})))
}

/// A transaction: its PDUs, each through the checks on receipt, and its EDUs. A retried
/// transaction gets the first answer.
async fn send_transaction(c: &Call<'_>) -> ApiResult<Value> {
    let txn = c.param("txnId").to_string();
    if let Some(a) = c.fed.transaction_answer(&c.origin, &txn) {
        return Ok(a);
    }
    let body = c.body()?;
    let pdus = body
        .get("pdus")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::bad_json("a transaction needs `pdus`"))?;
    let edus: &[Value] = body
        .get("edus")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice);
    if pdus.len() > MAX_PDUS || edus.len() > MAX_EDUS {
        return Err(ApiError::bad_json(format!(
            "a transaction holds at most {MAX_PDUS} PDUs and {MAX_EDUS} EDUs"
        )));
    }
    let mut results = Map::new();
    for raw in pdus {
        if let Some((id, outcome)) = receive(c, raw).await {
            results.insert(id, outcome);
        }
    }
    for edu in edus {
        receive_edu(c, edu);
    }
    let answer = json!({"pdus": results});
    c.fed.remember_transaction(&c.origin, &txn, answer.clone());
    Ok(answer)
}

/// One PDU of a transaction: its id and the result (`{}`, or `{"error"}`); `None` for a PDU
/// of a room this server is not in (ignored: its id cannot even be computed without the
/// room's version).
async fn receive(c: &Call<'_>, raw: &Value) -> Option<(String, Value)> {
    let room_id = raw.get("room_id").and_then(Value::as_str)?;
    let (v, allowed) = c.server.read(|s| {
        (
            s.room_version_of(room_id),
            s.server_allowed(room_id, &c.origin),
        )
    });
    let v = v?;
    let pdu = match Pdu::from_json(v, raw.clone()) {
        Ok(p) => p,
        Err(e) => {
            let id = raw
                .get("event_id")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| {
                    format!(
                        "${}",
                        mxconform_pdu::base64::encode_url_safe(
                            &mxconform_pdu::hash::reference_hash(v, raw)
                        )
                    )
                });
            return Some((id, json!({"error": format!("not a valid PDU: {e}")})));
        }
    };
    let id = pdu.event_id.clone();
    if !allowed {
        return Some((
            id,
            json!({"error": format!("the server ACL of {room_id} does not allow {}", c.origin)}),
        ));
    }
    let outcome = receive_checked(c, v, pdu, true).await;
    Some((
        id,
        outcome.map_or_else(|e| json!({"error": e}), |()| json!({})),
    ))
}

/// Steps 2-6 of the checks on receipt for one PDU; a gap before it is filled from the origin
/// (get_missing_events) once.
async fn receive_checked(
    c: &Call<'_>,
    v: &'static RoomVersion,
    pdu: Pdu,
    fill_gap: bool,
) -> Result<(), String> {
    let hash_ok = c
        .fed
        .verify_pdu(c.server, v, &pdu)
        .await
        .map_err(|e| format!("signature check failed: {e}"))?;
    let (room_id, event_id) = (pdu.room_id.clone(), pdu.event_id.clone());
    // In a room with a Policy Server, an event without its signature is taken to it first
    // (it may have rotated its key); without one still, the event soft fails.
    let lacking = c.server.read(|s| s.lacks_policy_signature(&pdu));
    let pdu = match lacking {
        Some((via, _)) => super::policy::ask(c.server, &via, v, &pdu)
            .await
            .unwrap_or(pdu),
        None => pdu,
    };
    let outcome = c
        .server
        .write(|state, batch| Ok(state.receive_pdu(batch, pdu.clone(), hash_ok)))
        .map_err(|e| e.message)?;
    match outcome {
        Received::Accepted(_) => Ok(()),
        // A soft-failed event is not an error of the transaction: it is simply not shown.
        Received::Duplicate | Received::SoftFailed(_) => Ok(()),
        Received::Rejected(r) => Err(r),
        Received::MissingPrev(_) if fill_gap => {
            fetch_missing(c, v, &room_id, &event_id).await?;
            Box::pin(receive_checked(c, v, pdu, false)).await
        }
        Received::MissingPrev(ids) => {
            // A gap get_missing_events did not close: the event is received on the state its
            // server gives for it, and the rest of the gap is backfilled when a client pages
            // back to it.
            receive_on_state(c, v, pdu, hash_ok)
                .await
                .map_err(|e| format!("its prev events are unknown here ({}): {e}", ids.join(", ")))
        }
    }
}

/// Receives `pdu`, whose prev events could not be fetched, on the state before it that the
/// origin gives (`/state`): every event of that state and its auth chain checked (signatures,
/// hashes, their own auth events).
async fn receive_on_state(
    c: &Call<'_>,
    v: &'static RoomVersion,
    pdu: Pdu,
    hash_ok: bool,
) -> Result<(), String> {
    let path = format!(
        "/_matrix/federation/v1/state/{}?event_id={}",
        crate::router::percent_encode(&pdu.room_id),
        crate::router::percent_encode(&pdu.event_id)
    );
    let mut a = c
        .fed
        .request(c.server, &c.origin, "GET", &path, None)
        .await?;
    if a.status != 200 {
        return Err(format!("/state answered {}", a.status));
    }
    let mut lists = Vec::new();
    for field in ["pdus", "auth_chain"] {
        let raw = match a.body.get_mut(field).map(Value::take) {
            Some(Value::Array(events)) => events,
            _ => return Err(format!("/state answered without `{field}`")),
        };
        let checked: Vec<Pdu> = c
            .fed
            .verify_many(c.server, v, raw)
            .await
            .into_iter()
            .filter_map(Result::ok)
            .collect();
        lists.push(checked);
    }
    let chain = lists.pop().unwrap_or_default();
    let state = lists.pop().unwrap_or_default();
    let outcome = c
        .server
        .write(|s, batch| Ok(s.receive_pdu_on_state(batch, pdu, hash_ok, state, chain)))
        .map_err(|e| e.message)?;
    match outcome {
        Received::Accepted(_) | Received::Duplicate | Received::SoftFailed(_) => Ok(()),
        Received::Rejected(r) => Err(r),
        Received::MissingPrev(ids) => Err(format!("still missing {}", ids.join(", "))),
    }
}

/// Asks the origin for the events between the room's extremities and `latest`, and receives
/// them oldest first.
async fn fetch_missing(
    c: &Call<'_>,
    v: &'static RoomVersion,
    room_id: &str,
    latest: &str,
) -> Result<(), String> {
    let earliest: Vec<String> = c.server.read(|s| {
        s.rooms
            .get(room_id)
            .map(|r| r.extremities.iter().map(|e| e.event_id.clone()).collect())
            .unwrap_or_default()
    });
    let path = format!(
        "/_matrix/federation/v1/get_missing_events/{}",
        crate::router::percent_encode(room_id)
    );
    // The spec's default: a longer gap is received on the state its server gives, and the
    // rest of it backfilled when a client pages back to it.
    let body = json!({"earliest_events": earliest, "latest_events": [latest], "limit": 10});
    let a = c
        .fed
        .request(c.server, &c.origin, "POST", &path, Some(&body))
        .await?;
    if a.status != 200 {
        return Err(format!("get_missing_events answered {}", a.status));
    }
    let mut events: Vec<Pdu> = a
        .body
        .get("events")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| Pdu::from_json(v, e.clone()).ok())
        .filter(|p| p.room_id == room_id)
        .collect();
    events.sort_by_key(|p| (p.depth, p.origin_server_ts));
    for p in events {
        // Each in turn; one that fails is skipped (the event that needed it then fails).
        let _ = Box::pin(receive_checked(c, v, p, false)).await;
    }
    Ok(())
}

/// An EDU: typing, receipts, presence and to-device messages of the origin's users; others
/// are ignored.
fn receive_edu(c: &Call<'_>, edu: &Value) {
    let mut resync: Vec<String> = Vec::new();
    receive_edu_into(c, edu, &mut resync);
    if let Some(server) = c.server.shared() {
        for user in resync {
            let server = server.clone();
            let origin = c.origin.clone();
            tokio::spawn(async move { resync_devices(server, origin, user).await });
        }
    }
}

/// Fetches a user's device list from their server (`/user/devices`) and keeps it as their
/// known devices, replacing what was known.
async fn resync_devices(server: std::sync::Arc<Server>, origin: String, user: String) {
    let path = format!(
        "/_matrix/federation/v1/user/devices/{}",
        crate::router::percent_encode(&user)
    );
    let Ok(answer) = super::joins::ask(&server, &origin, "GET", &path, None).await else {
        return;
    };
    let _ = server.write(|state, batch| {
        let mut devices = std::collections::BTreeMap::new();
        for d in answer
            .get("devices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let (Some(id), Some(keys)) = (
                d.get("device_id").and_then(Value::as_str),
                d.get("keys").filter(|k| k.is_object()),
            ) else {
                continue;
            };
            let mut keys = keys.clone();
            if let Some(n) = d.get("device_display_name") {
                keys["unsigned"] = json!({"device_display_name": n});
            }
            devices.insert(id.to_string(), keys);
        }
        state.remote_devices.insert(user.clone(), devices);
        let cs = state.remote_cross_signing.entry(user.clone()).or_default();
        for k in ["master_key", "self_signing_key"] {
            if let Some(v) = answer.get(k).filter(|v| v.is_object()) {
                cs.insert(k.to_string(), v.clone());
            }
        }
        state.note_key_change(batch, &user);
        Ok(())
    });
}

fn receive_edu_into(c: &Call<'_>, edu: &Value, resync: &mut Vec<String>) {
    let kind = edu.get("edu_type").and_then(Value::as_str).unwrap_or("");
    let content = edu.get("content").cloned().unwrap_or(Value::Null);
    let ours = |user: &str| user.split_once(':').map(|(_, s)| s) == Some(c.origin.as_str());
    let _ = c.server.write(|state, batch| {
        match kind {
            "m.typing" => {
                let (Some(room), Some(user)) = (
                    content.get("room_id").and_then(Value::as_str),
                    content.get("user_id").and_then(Value::as_str),
                ) else {
                    return Ok(());
                };
                let joined = state
                    .rooms
                    .get(room)
                    .is_some_and(|r| r.membership(user) == Some("join"));
                if ours(user) && joined && state.server_allowed(room, &c.origin) {
                    let typing = content.get("typing").and_then(Value::as_bool) == Some(true);
                    state.put_typing(batch, room, user, typing.then(|| now_ms() + 30_000));
                }
            }
            "m.receipt" => {
                for (room, types) in content.as_object().into_iter().flatten() {
                    let Some(reads) = types.get("m.read").and_then(Value::as_object) else {
                        continue;
                    };
                    for (user, r) in reads {
                        let joined = state
                            .rooms
                            .get(room)
                            .is_some_and(|x| x.membership(user) == Some("join"));
                        let Some(event) = r
                            .get("event_ids")
                            .and_then(Value::as_array)
                            .and_then(|a| a.first())
                            .and_then(Value::as_str)
                        else {
                            continue;
                        };
                        if ours(user) && joined && state.server_allowed(room, &c.origin) {
                            let thread = r
                                .pointer("/data/thread_id")
                                .and_then(Value::as_str)
                                .map(str::to_string);
                            let ts = r
                                .pointer("/data/ts")
                                .and_then(Value::as_u64)
                                .unwrap_or_else(now_ms);
                            state.put_receipt_at(batch, room, "m.read", user, event, thread, ts);
                        }
                    }
                }
            }
            "m.presence" => {
                for p in content
                    .get("push")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let Some(user) = p.get("user_id").and_then(Value::as_str) else {
                        continue;
                    };
                    if ours(user) {
                        let mut c = json!({
                            "presence": p.get("presence").cloned().unwrap_or(json!("offline")),
                        });
                        if let Some(m) = p.get("status_msg") {
                            c["status_msg"] = m.clone();
                        }
                        if let Some(ago) = p.get("last_active_ago").and_then(Value::as_u64) {
                            c["last_active_ts"] = json!(now_ms().saturating_sub(ago));
                        }
                        state.put_presence(batch, user, c);
                    }
                }
            }
            "m.device_list_update" | "m.signing_key_update" => {
                let Some(user) = content.get("user_id").and_then(Value::as_str) else {
                    return Ok(());
                };
                if !ours(user) {
                    return Ok(());
                }
                if kind == "m.signing_key_update" {
                    let keys = state
                        .remote_cross_signing
                        .entry(user.to_string())
                        .or_default();
                    for k in ["master_key", "self_signing_key"] {
                        if let Some(v) = content.get(k).filter(|v| v.is_object()) {
                            keys.insert(k.to_string(), v.clone());
                        }
                    }
                } else if let Some(device) = content.get("device_id").and_then(Value::as_str) {
                    let devices = state.remote_devices.entry(user.to_string()).or_default();
                    if content.get("deleted").and_then(Value::as_bool) == Some(true) {
                        devices.remove(device);
                    } else if let Some(keys) = content.get("keys").filter(|k| k.is_object()) {
                        let mut keys = keys.clone();
                        if let Some(n) = content.get("device_display_name") {
                            keys["unsigned"] = json!({"device_display_name": n});
                        }
                        devices.insert(device.to_string(), keys);
                    } else {
                        // An update that does not carry the device's keys: the whole list
                        // is fetched again from the user's server.
                        resync.push(user.to_string());
                    }
                }
                state.note_key_change(batch, user);
            }
            "m.direct_to_device" => {
                let sender = content.get("sender").and_then(Value::as_str).unwrap_or("");
                let kind = content.get("type").and_then(Value::as_str).unwrap_or("");
                if !ours(sender) || kind.is_empty() {
                    return Ok(());
                }
                for (user, devices) in content
                    .get("messages")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                {
                    if !state.users.contains_key(user) {
                        continue;
                    }
                    for (device, body) in devices.as_object().into_iter().flatten() {
                        let msg = json!({"sender": sender, "type": kind, "content": body});
                        let targets: Vec<String> = if device == "*" {
                            state
                                .devices
                                .get(user)
                                .map(|d| d.keys().cloned().collect())
                                .unwrap_or_default()
                        } else {
                            vec![device.clone()]
                        };
                        for d in targets {
                            state.queue_to_device(batch, user, &d, msg.clone());
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(())
    });
}

fn get_event(c: &Call<'_>) -> ApiResult<Value> {
    let event_id = c.param("eventId");
    let (room_id, pdu) = c
        .server
        .read(|s| {
            let ev = s.event_by_id(event_id)?;
            let pdu = s.pdu_in(&ev.room_id, event_id)?;
            Some((ev.room_id.clone(), pdu))
        })
        .ok_or_else(|| ApiError::not_found(format!("no event {event_id}")))?;
    c.origin_in_room(&room_id)?;
    Ok(json!({
        "origin": c.server.config.server_name,
        "origin_server_ts": now_ms(),
        "pdus": [pdu.json],
    }))
}

/// The state of a room at an event (the state before it) and the auth chain of that state.
fn room_state(c: &Call<'_>, ids_only: bool) -> ApiResult<Value> {
    let room_id = c.param("roomId");
    let event_id = c
        .query_one("event_id")
        .ok_or_else(|| ApiError::missing_param("event_id is required"))?;
    c.room_version(room_id)?;
    c.origin_in_room(room_id)?;
    c.server.read(|s| {
        let state = s
            .state_before(room_id, event_id)
            .ok_or_else(|| ApiError::not_found(format!("no event {event_id} in {room_id}")))?;
        let ids: Vec<String> = state.iter().map(|p| p.event_id.clone()).collect();
        let chain = s.auth_chain(room_id, &ids);
        Ok(if ids_only {
            json!({
                "pdu_ids": ids,
                "auth_chain_ids": chain.iter().map(|p| p.event_id.clone()).collect::<Vec<_>>(),
            })
        } else {
            json!({
                "pdus": state.iter().map(|p| p.json.clone()).collect::<Vec<_>>(),
                "auth_chain": chain.iter().map(|p| p.json.clone()).collect::<Vec<_>>(),
            })
        })
    })
}

fn event_auth(c: &Call<'_>) -> ApiResult<Value> {
    let (room_id, event_id) = (c.param("roomId"), c.param("eventId"));
    c.room_version(room_id)?;
    c.origin_in_room(room_id)?;
    c.server.read(|s| {
        s.pdu_in(room_id, event_id)
            .ok_or_else(|| ApiError::not_found(format!("no event {event_id} in {room_id}")))?;
        let chain = s.auth_chain(room_id, &[event_id.to_string()]);
        Ok(json!({"auth_chain": chain.iter().map(|p| p.json.clone()).collect::<Vec<_>>()}))
    })
}

fn backfill(c: &Call<'_>) -> ApiResult<Value> {
    let room_id = c.param("roomId");
    let from: Vec<String> = c.query_all("v").map(str::to_string).collect();
    if from.is_empty() {
        return Err(ApiError::missing_param(
            "v (the events to backfill from) is required",
        ));
    }
    let limit: usize = c
        .query_one("limit")
        .ok_or_else(|| ApiError::missing_param("limit is required"))?
        .parse()
        .map_err(|_| ApiError::invalid_param("limit must be an integer"))?;
    c.room_version(room_id)?;
    c.origin_in_room(room_id)?;
    let pdus = c
        .server
        .read(|s| s.events_before(room_id, &from, limit.min(100), &BTreeSet::new(), true));
    Ok(json!({
        "origin": c.server.config.server_name,
        "origin_server_ts": now_ms(),
        "pdus": pdus.into_iter().map(|p| p.json).collect::<Vec<_>>(),
    }))
}

fn missing_events(c: &Call<'_>) -> ApiResult<Value> {
    let room_id = c.param("roomId");
    let body = c.body()?;
    let ids = |k: &str| -> ApiResult<Vec<String>> {
        body.get(k)
            .and_then(Value::as_array)
            .ok_or_else(|| ApiError::bad_json(format!("`{k}` is required")))?
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| ApiError::bad_json(format!("`{k}` holds event ids")))
            })
            .collect()
    };
    let (earliest, latest) = (ids("earliest_events")?, ids("latest_events")?);
    let limit = body
        .get("limit")
        .and_then(Value::as_u64)
        .unwrap_or(10)
        .min(100) as usize;
    let min_depth = body.get("min_depth").and_then(Value::as_i64).unwrap_or(0);
    c.room_version(room_id)?;
    c.origin_in_room(room_id)?;
    let stop: BTreeSet<String> = earliest.into_iter().collect();
    let mut pdus = c
        .server
        .read(|s| s.events_before(room_id, &latest, limit, &stop, false));
    pdus.retain(|p| p.depth >= min_depth);
    pdus.sort_by_key(|p| (p.depth, p.origin_server_ts));
    Ok(json!({"events": pdus.into_iter().map(|p| p.json).collect::<Vec<_>>()}))
}

fn query_profile(c: &Call<'_>) -> ApiResult<Value> {
    let user = c
        .query_one("user_id")
        .ok_or_else(|| ApiError::missing_param("user_id is required"))?;
    let field = c.query_one("field");
    c.server.read(|s| {
        let u = s
            .users
            .get(user)
            .filter(|u| !u.deactivated)
            .ok_or_else(|| ApiError::not_found(format!("no user {user}")))?;
        let mut out = Map::new();
        if field.is_none_or(|f| f == "displayname") {
            if let Some(d) = &u.displayname {
                out.insert("displayname".into(), json!(d));
            }
        }
        if field.is_none_or(|f| f == "avatar_url") {
            if let Some(a) = &u.avatar_url {
                out.insert("avatar_url".into(), json!(a));
            }
        }
        for (k, v) in &u.fields {
            if field.is_none_or(|f| f == k) {
                out.insert(k.clone(), v.clone());
            }
        }
        Ok(Value::Object(out))
    })
}

fn query_directory(c: &Call<'_>) -> ApiResult<Value> {
    let alias = c
        .query_one("room_alias")
        .ok_or_else(|| ApiError::missing_param("room_alias is required"))?;
    c.server.read(|s| {
        let room_id = s
            .aliases
            .get(alias)
            .map(|(room, _)| room.clone())
            .ok_or_else(|| ApiError::not_found(format!("no room alias {alias}")))?;
        let mut servers: Vec<String> = s.servers_in_room(&room_id).into_iter().collect();
        servers.sort_by_key(|x| x != &s.server_name);
        if servers.is_empty() {
            servers.push(s.server_name.clone());
        }
        Ok(json!({"room_id": room_id, "servers": servers}))
    })
}

/// The notary: the key documents of the servers asked for, as they published them, with this
/// server's signature added. A server whose keys cannot be fetched is left out.
async fn notary(c: &Call<'_>, wanted: Vec<(String, i64)>) -> ApiResult<Value> {
    let key = c
        .server
        .read(|s| s.signing_key.clone())
        .ok_or_else(|| ApiError::internal("the server has no signing key"))?;
    let mut out = Vec::new();
    for (name, min_valid) in wanted {
        if let Ok((_, mut doc)) = c.fed.key_document(c.server, &name, min_valid).await {
            mxconform_pdu::sign::sign_json(&mut doc, &c.server.config.server_name, &key);
            out.push(doc);
        }
    }
    Ok(json!({"server_keys": out}))
}

async fn notary_bulk(c: &Call<'_>) -> ApiResult<Value> {
    let servers = c
        .body()?
        .get("server_keys")
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::bad_json("`server_keys` must be an object"))?;
    let mut wanted = Vec::new();
    for (name, keys) in servers {
        let keys = keys
            .as_object()
            .ok_or_else(|| ApiError::bad_json(format!("`server_keys.{name}` must be an object")))?;
        let min = keys
            .values()
            .filter_map(|k| k.get("minimum_valid_until_ts").and_then(Value::as_i64))
            .max()
            .unwrap_or(0);
        wanted.push((name.clone(), min));
    }
    notary(c, wanted).await
}

async fn notary_one(c: &Call<'_>) -> ApiResult<Value> {
    let min = match c.query_one("minimum_valid_until_ts") {
        Some(t) => t
            .parse()
            .map_err(|_| ApiError::invalid_param("minimum_valid_until_ts must be an integer"))?,
        None => 0,
    };
    notary(c, vec![(c.param("serverName").to_string(), min)]).await
}

/// The event of a room closest to a time, in a direction (`f`: at or after, `b`: at or
/// before), among those shown.
fn event_by_timestamp(c: &Call<'_>) -> ApiResult<Value> {
    let room_id = c.param("roomId");
    let ts: u64 = c
        .query_one("ts")
        .ok_or_else(|| ApiError::missing_param("ts is required"))?
        .parse()
        .map_err(|_| ApiError::invalid_param("ts must be an integer"))?;
    let forwards = match c.query_one("dir") {
        Some("f") => true,
        Some("b") => false,
        _ => return Err(ApiError::invalid_param("dir must be f or b")),
    };
    c.room_version(room_id)?;
    c.origin_in_room(room_id)?;
    c.server.read(|s| {
        let room = s.room(room_id)?;
        crate::handlers::room_event_by_timestamp::closest_event(s, room, ts, forwards, |_| true)
    })
}

/// Where this server's federation API is, for `/.well-known/matrix/server`: the host and port
/// it is reached at.
fn well_known_server(server: &Server) -> String {
    let url = server.public_url();
    let host = url
        .split_once("://")
        .map_or(url.as_str(), |(_, rest)| rest)
        .trim_end_matches('/');
    host.to_string()
}

/// A user of this server, named by another server's request.
fn local_user<'c>(c: &'c Call<'_>, user: &'c str) -> ApiResult<&'c str> {
    if user.split_once(':').map(|(_, s)| s) != Some(c.server.config.server_name.as_str()) {
        return Err(ApiError::invalid_param(format!(
            "{user} is not a user of this server"
        )));
    }
    Ok(user)
}

fn user_devices(c: &Call<'_>) -> ApiResult<Value> {
    let user = local_user(c, c.param("userId"))?;
    Ok(c.server.read(|s| {
        let keys =
            crate::handlers::keys::device_keys_of(s, &[(user.to_string(), Vec::new())], None);
        let devices: Vec<Value> = s
            .devices
            .get(user)
            .into_iter()
            .flatten()
            // A device is listed with its keys: one that has uploaded none is not.
            .filter_map(|(id, d)| {
                let path = format!(
                    "/device_keys/{}/{}",
                    pointer_escape(user),
                    pointer_escape(id)
                );
                let mut k = keys.pointer(&path)?.clone();
                if let Some(m) = k.as_object_mut() {
                    m.remove("unsigned");
                }
                let mut e = json!({"device_id": id, "keys": k});
                if let Some(n) = &d.display_name {
                    e["device_display_name"] = json!(n);
                }
                Some(e)
            })
            .collect();
        let mut out = json!({
            "user_id": user,
            "stream_id": s.key_changes.get(user).copied().unwrap_or(0),
            "devices": devices,
        });
        for (field, from) in [
            ("master_key", "master_keys"),
            ("self_signing_key", "self_signing_keys"),
        ] {
            if let Some(k) = keys.get(from).and_then(|m| m.get(user)) {
                out[field] = k.clone();
            }
        }
        out
    }))
}

/// A JSON pointer segment for a key.
fn pointer_escape(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

fn user_keys_query(c: &Call<'_>) -> ApiResult<Value> {
    let asked = c
        .body()?
        .get("device_keys")
        .and_then(Value::as_object)
        .ok_or_else(|| ApiError::bad_json("`device_keys` must be an object"))?;
    let mut wanted = Vec::new();
    for (user, devices) in asked {
        let user = local_user(c, user)?;
        let devices: Vec<String> = devices
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d.as_str().map(str::to_string))
            .collect();
        wanted.push((user.to_string(), devices));
    }
    Ok(c.server
        .read(|s| crate::handlers::keys::device_keys_of(s, &wanted, None)))
}

fn user_keys_claim(c: &Call<'_>) -> ApiResult<Value> {
    let wanted = c
        .body()?
        .get("one_time_keys")
        .filter(|w| w.is_object())
        .cloned()
        .ok_or_else(|| ApiError::bad_json("`one_time_keys` must be an object"))?;
    for user in wanted.as_object().into_iter().flatten().map(|(u, _)| u) {
        local_user(c, user)?;
    }
    c.server.write(|state, batch| {
        Ok(json!({"one_time_keys": crate::handlers::keys::claim_one_time_keys(state, batch, &wanted)}))
    })
}

fn public_rooms_get(c: &Call<'_>) -> ApiResult<Value> {
    use crate::handlers::directory::Network;
    let limit = c
        .query_one("limit")
        .map(|l| {
            l.parse::<i64>()
                .map_err(|_| ApiError::invalid_param("limit must be an integer"))
        })
        .transpose()?;
    let network = match (
        c.query_one("third_party_instance_id"),
        c.query_one("include_all_networks"),
    ) {
        (_, Some("true")) => Network::All,
        (Some(i), _) => Network::Instance(i.to_string()),
        _ => Network::Local,
    };
    crate::handlers::directory::public_rooms(
        c.server,
        limit,
        c.query_one("since"),
        None,
        None,
        network,
    )
}

fn public_rooms_query(c: &Call<'_>) -> ApiResult<Value> {
    use crate::handlers::directory::Network;
    let b = c.body()?;
    let filter = b.get("filter").cloned().unwrap_or(Value::Null);
    let term = filter.get("generic_search_term").and_then(Value::as_str);
    let room_types = filter.get("room_types").and_then(Value::as_array).cloned();
    let network = match (
        b.get("third_party_instance_id").and_then(Value::as_str),
        b.get("include_all_networks").and_then(Value::as_bool),
    ) {
        (_, Some(true)) => Network::All,
        (Some(i), _) => Network::Instance(i.to_string()),
        _ => Network::Local,
    };
    crate::handlers::directory::public_rooms(
        c.server,
        b.get("limit").and_then(Value::as_i64),
        b.get("since").and_then(Value::as_str),
        term,
        room_types,
        network,
    )
}

fn openid_userinfo(c: &Call<'_>) -> ApiResult<Value> {
    let token = c
        .query_one("access_token")
        .ok_or_else(|| ApiError::unknown_token("access_token is required"))?;
    c.server
        .read(|s| s.openid_user(token).map(str::to_string))
        .map(|sub| json!({"sub": sub}))
        .ok_or_else(|| ApiError::unknown_token("the token is unknown or expired"))
}

/// An invite of a user of this server by a user of the origin: checked (the event the path
/// names, an invite of an existing local user by the origin's user, signed by the origin),
/// signed by this server and returned. In a room this server is in, the invite joins the
/// room like any event; otherwise the user sees it with the stripped state given.
async fn send_invite(c: &Call<'_>, v2: bool) -> ApiResult<Value> {
    let (room_id, event_id) = (c.param("roomId"), c.param("eventId"));
    let body = c.body()?;
    let local_version = c.server.read(|s| s.room_version_of(room_id));
    let (version, event, stripped) = if v2 {
        let version = body
            .get("room_version")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::bad_json("`room_version` is required"))?;
        (
            version.to_string(),
            body.get("event").cloned().unwrap_or(Value::Null),
            body.get("invite_room_state").cloned(),
        )
    } else {
        (
            local_version.map_or("1", |v| v.id).to_string(),
            body.clone(),
            body.pointer("/unsigned/invite_room_state").cloned(),
        )
    };
    let v = RoomVersion::get(&version).ok_or_else(|| {
        ApiError::incompatible_room_version(format!("room version {version} is not supported"))
            .with_extra(json!({"room_version": version}))
    })?;
    let mut json = event;
    if let Some(m) = json.as_object_mut() {
        m.remove("unsigned");
    }
    let pdu = Pdu::from_json(v, json.clone())
        .map_err(|e| ApiError::bad_json(format!("the event is not a valid PDU: {e}")))?;
    if pdu.event_id != event_id || pdu.room_id != room_id {
        return Err(ApiError::bad_json(
            "the event is not the one the path names (its id or room differs)",
        ));
    }
    let invitee = pdu.state_key.clone().unwrap_or_default();
    if pdu.kind != "m.room.member" || pdu.membership() != Some("invite") {
        return Err(ApiError::bad_json(
            "the event must be an m.room.member invite",
        ));
    }
    if pdu.sender_server() != c.origin {
        return Err(ApiError::forbidden(format!(
            "{} is not a user of {}",
            pdu.sender, c.origin
        )));
    }
    local_user(c, &invitee)?;
    let exists = c
        .server
        .read(|s| s.users.get(&invitee).is_some_and(|u| !u.deactivated));
    if !exists {
        return Err(ApiError::not_found(format!("no user {invitee}")));
    }
    c.acl(room_id)?;
    let hash_ok = c
        .fed
        .verify_pdu(c.server, v, &pdu)
        .await
        .map_err(|e| ApiError::forbidden(format!("the event's signatures: {e}")))?;
    if !hash_ok {
        return Err(ApiError::bad_json(
            "the event's content hash does not match",
        ));
    }
    countersign(c, v, &pdu, &mut json)?;
    let signed = Pdu::from_json(v, json.clone())
        .map_err(|e| ApiError::bad_json(format!("the signed event: {e}")))?;
    let stripped: Vec<Value> = stripped
        .and_then(|s| s.as_array().cloned())
        .unwrap_or_default();
    let origin = c.origin.clone();
    c.server.write(|state, batch| {
        if state.rooms.contains_key(room_id) {
            match state.receive_pdu(batch, signed, true) {
                Received::Accepted(_) | Received::Duplicate => Ok(()),
                Received::Rejected(r) | Received::SoftFailed(r) => {
                    Err(ApiError::forbidden(format!("the invite is refused: {r}")))
                }
                Received::MissingPrev(ids) => Err(ApiError::bad_json(format!(
                    "the invite cites events this server does not know: {}",
                    ids.join(", ")
                ))),
            }
        } else {
            state.put_remote_membership(
                batch,
                &invitee,
                room_id,
                Some(crate::state::RemoteMembership {
                    pos: 0,
                    membership: "invite".into(),
                    event: json.clone(),
                    event_id: event_id.to_string(),
                    stripped,
                    via: origin,
                }),
            );
            Ok(())
        }
    })?;
    Ok(if v2 {
        json!({"event": json})
    } else {
        json!([200, {"event": json}])
    })
}

/// Media of this server for another server: `multipart/mixed`, a JSON metadata part (`{}`)
/// and the bytes. A thumbnail is of an image only (the original bytes: clients scale them).
fn media(c: &Call<'_>, thumbnail: bool) -> ApiResult<Response<Bytes>> {
    let id = c.param("mediaId");
    if thumbnail {
        for dim in ["width", "height"] {
            let v: i64 = c
                .query_one(dim)
                .ok_or_else(|| ApiError::missing_param(format!("{dim} is required")))?
                .parse()
                .map_err(|_| ApiError::invalid_param(format!("{dim} must be an integer")))?;
            if v <= 0 {
                return Err(ApiError::invalid_param(format!("{dim} must be positive")));
            }
        }
    }
    let stored = if id.contains('/') {
        None
    } else {
        c.server.media(id)?
    };
    let Some((content_type, name, bytes)) = stored else {
        if c.server.read(|s| s.pending_media.contains_key(id)) {
            return Err(ApiError::not_yet_uploaded(
                "that media has not been uploaded yet",
            ));
        }
        return Err(ApiError::not_found("no such media"));
    };
    let content_type = content_type.unwrap_or_else(|| "application/octet-stream".into());
    if thumbnail && !content_type.starts_with("image/") {
        return Err(ApiError::unknown_400(
            "that media is not an image: it has no thumbnail",
        ));
    }
    let boundary = crate::state::random_token(18);
    let disposition = crate::handlers::media::disposition(&content_type, name.as_deref());
    let mut body = format!(
        "--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--{boundary}\r\nContent-Type: {content_type}\r\nContent-Disposition: {disposition}\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let mut r = Response::new(Bytes::from(body));
    if let Ok(v) = http::HeaderValue::from_str(&format!("multipart/mixed; boundary={boundary}")) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    Ok(r)
}

/// An identity server's notice that a third-party identifier is now bound to a user of this
/// server. Each pending third-party invite it carries becomes an invite: made here when the
/// inviter is a user of this server, else through the inviter's server
/// (exchange_third_party_invite).
async fn on_bind(c: &Call<'_>) -> ApiResult<Value> {
    let b = c.body()?.clone();
    for k in ["address", "medium", "mxid"] {
        if b.get(k).and_then(Value::as_str).is_none() {
            return Err(ApiError::bad_json(format!("`{k}` is required")));
        }
    }
    let mxid = b["mxid"].as_str().unwrap_or_default().to_string();
    if !c.server.read(|s| s.users.contains_key(&mxid)) {
        return Err(ApiError::not_found(format!(
            "no user {mxid} on this server"
        )));
    }
    // Each invite the identifier had waiting becomes a real one: the inviter's server is
    // asked to make it (exchange_third_party_invite), with what the identity server signed.
    let invites = b
        .get("invites")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let Some(server) = c.server.shared() else {
        return Ok(json!({}));
    };
    for invite in invites {
        let (Some(room_id), Some(sender), Some(signed)) = (
            invite.get("room_id").and_then(Value::as_str),
            invite.get("sender").and_then(Value::as_str),
            invite.get("signed").filter(|s| s.is_object()),
        ) else {
            continue;
        };
        if invite.get("mxid").and_then(Value::as_str) != Some(mxid.as_str()) {
            continue;
        }
        let Some(dest) = sender.split_once(':').map(|(_, h)| h.to_string()) else {
            continue;
        };
        if dest == c.server.config.server_name {
            // The inviter is ours: the invite is made here, as the inviter, with the display
            // name of the room's m.room.third_party_invite for the token; the rules check the
            // identity server's signature against that event's keys.
            let made = server.write(|s, batch| {
                let token = signed
                    .get("token")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let display_name = s
                    .state_content(room_id, "m.room.third_party_invite", token)
                    .and_then(|c| c.get("display_name").cloned())
                    .ok_or_else(|| {
                        ApiError::forbidden(format!(
                            "room {room_id} has no third-party invite with token {token:?}"
                        ))
                    })?;
                let content = json!({
                    "membership": "invite",
                    "third_party_invite": {"display_name": display_name, "signed": signed},
                });
                s.append(
                    batch,
                    crate::state::Append::new(
                        room_id,
                        sender,
                        "m.room.member",
                        Some(&mxid),
                        content,
                    ),
                )
            });
            if let Err(e) = made {
                tracing::warn!(
                    "a third-party invite to {room_id} for {mxid}: {}",
                    e.message
                );
            }
            continue;
        }
        let address = invite
            .get("address")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let event = json!({
            "type": "m.room.member",
            "room_id": room_id,
            "sender": sender,
            "state_key": mxid,
            "content": {
                "membership": "invite",
                "third_party_invite": {"display_name": address, "signed": signed},
            },
        });
        let path = format!(
            "/_matrix/federation/v1/exchange_third_party_invite/{}",
            crate::router::percent_encode(room_id)
        );
        // The identity server cannot act on a failure: it is the inviter's server's to report.
        if let Err(e) = super::joins::ask(&server, &dest, "PUT", &path, Some(&event)).await {
            tracing::warn!(
                "exchanging a third-party invite to {room_id} with {dest}: {}",
                e.message
            );
        }
    }
    Ok(json!({}))
}

/// `PUT /exchange_third_party_invite/{roomId}`: the invitee's server passes on an invite by
/// third-party identifier that an identity server vouched for (`third_party_invite.signed`).
/// This server, the inviter's, makes the invite as the inviter, with the display name of the
/// room's `m.room.third_party_invite` for that token; the authorization rules check the token
/// and the identity server's signature against that event's public keys. The invite goes to
/// the invitee's server (which signs it) and into the room.
async fn exchange_third_party_invite(c: &Call<'_>) -> ApiResult<Value> {
    let room_id = c.param("roomId").to_string();
    let b = c.body()?.clone();
    let field = |k: &str| {
        b.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let (sender, target) = (field("sender"), field("state_key"));
    if field("type") != "m.room.member" || field("room_id") != room_id {
        return Err(ApiError::bad_json(
            "the event must be an m.room.member event of the room in the path",
        ));
    }
    let content = b.get("content").cloned().unwrap_or_default();
    if content.get("membership").and_then(Value::as_str) != Some("invite") {
        return Err(ApiError::bad_json("the event must be an invite"));
    }
    let signed = content
        .get("third_party_invite")
        .and_then(|t| t.get("signed"))
        .filter(|s| s.is_object())
        .cloned()
        .ok_or_else(|| ApiError::bad_json("the invite has no third_party_invite.signed"))?;
    if target.split_once(':').map(|(_, h)| h) != Some(c.origin.as_str()) {
        return Err(ApiError::forbidden(format!(
            "{} may pass on invites of its own users only",
            c.origin
        )));
    }
    if sender.split_once(':').map(|(_, h)| h) != Some(c.server.config.server_name.as_str()) {
        return Err(ApiError::forbidden(format!(
            "the inviter {sender} is not a user of this server"
        )));
    }
    c.acl(&room_id)?;
    let token = signed
        .get("token")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let prepared = c.server.read(|s| {
        let display_name = s
            .state_content(&room_id, "m.room.third_party_invite", &token)
            .and_then(|c| c.get("display_name").cloned())
            .ok_or_else(|| {
                ApiError::forbidden(format!(
                    "room {room_id} has no third-party invite with token {token:?}"
                ))
            })?;
        let content = json!({
            "membership": "invite",
            "third_party_invite": {"display_name": display_name, "signed": signed},
        });
        s.prepare(crate::state::Append::new(
            &room_id,
            &sender,
            "m.room.member",
            Some(&target),
            content,
        ))
    })?;
    let server = c
        .server
        .shared()
        .ok_or_else(|| ApiError::internal("the server is shutting down"))?;
    let signed_invite =
        super::joins::invite_remote(&server, &room_id, &c.origin, prepared.pdu()).await?;
    c.server.write(|s, batch| {
        let v = s.room(&room_id)?.room_version();
        let p = prepared
            .countersigned(v, signed_invite)
            .map_err(|e| ApiError::bad_status(format!("{}'s invite answer: {e}", c.origin)))?;
        s.append_prepared(batch, p)?;
        Ok(json!({}))
    })
}

/// A space and its children for another server: rooms anyone may join or peek into (public,
/// knockable, restricted, world-readable) are summarised; children the origin could not join
/// are listed as inaccessible; children this server does not know are left out.
fn hierarchy(c: &Call<'_>) -> ApiResult<Value> {
    use crate::handlers::space_hierarchy::{children, hierarchy_entry};
    let room_id = c.param("roomId");
    let suggested_only = c.query_one("suggested_only") == Some("true");
    c.server.read(|s| {
        let open = |r: &crate::state::Room| {
            matches!(
                r.state_content("m.room.join_rules", "")
                    .and_then(|x| x.get("join_rule"))
                    .and_then(Value::as_str),
                Some("public" | "knock" | "knock_restricted" | "restricted")
            ) || r
                .state_content("m.room.history_visibility", "")
                .and_then(|x| x.get("history_visibility"))
                .and_then(Value::as_str)
                == Some("world_readable")
        };
        let root = s
            .rooms
            .get(room_id)
            .filter(|r| open(r) && s.server_allowed(room_id, &c.origin))
            .ok_or_else(|| {
                ApiError::not_found(format!("no space {room_id} visible to {}", c.origin))
            })?;
        let mut kids = Vec::new();
        let mut inaccessible = Vec::new();
        for (child, _) in children(root) {
            if suggested_only
                && root
                    .state_content("m.space.child", &child)
                    .and_then(|x| x.get("suggested"))
                    .and_then(Value::as_bool)
                    != Some(true)
            {
                continue;
            }
            match s.rooms.get(&child) {
                Some(r) if open(r) && s.server_allowed(&child, &c.origin) => {
                    kids.push(hierarchy_entry(s, r))
                }
                Some(_) => inaccessible.push(child),
                None => {}
            }
        }
        Ok(json!({
            "room": hierarchy_entry(s, root),
            "children": kids,
            "inaccessible_children": inaccessible,
        }))
    })
}
