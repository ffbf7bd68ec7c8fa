//! Federation: the harness plays remote homeservers against the server under test. `tls`
//! makes the certificates, `client` sends signed requests to the server under test and
//! validates its answers, `fake` is a fake homeserver that checks everything sent to it, and
//! `room` is a fake server's view of a room. The steps that drive them are here: joining a
//! room of the server under test, sending it events, calling any server-server operation, and
//! waiting for what it sends.

pub mod client;
pub mod fake;
pub mod resident;
pub mod room;
pub mod tls;

use std::path::PathBuf;
use std::sync::Arc;

use mxconform_pdu::build::{NewEvent, Origin};
use mxconform_pdu::{Pdu, RoomVersion};
use serde::Deserialize;
use serde_json::{json, Value};

use client::FedClient;
use fake::{check_pdu, now_ms, Shared};
use room::RoomView;

/// The profile's `[federation]`: where the harness reaches the server under test's federation
/// API, its server name, and the certificate authority it trusts for the fake servers.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationConfig {
    /// `http://127.0.0.1:18008`: the server's federation listener (the harness needs no
    /// discovery to reach it). Absent: the server's client-server URL (one listener for
    /// both, as the embedded reference server has).
    #[serde(default)]
    pub base_url: Option<String>,
    /// The federation suites to run (`joins` runs `federation/joins/`); absent: all. The
    /// others are skipped with a reason (a server that implements part of the API so far).
    #[serde(default)]
    pub suites: Option<Vec<String>>,
    pub server_name: String,
    /// The folder with the authority (`ca.pem`, `ca.key`; made there if absent), relative to
    /// the profile's folder. The server under test must trust `ca.pem` for outbound federation
    /// (Synapse: `federation_custom_ca_list`), or not verify certificates.
    pub authority: PathBuf,
    /// Whether the server under test verifies the certificates of the servers it calls
    /// against that authority (`authority`, the default; Synapse: `federation_custom_ca_list`)
    /// or skips verification (`unverified`; Synapse: `federation_verify_certificates: false`).
    /// With `unverified`, the scenarios that require it to refuse a faulty certificate are
    /// skipped, with that reason.
    #[serde(default)]
    pub certificates: Verification,
    /// Schema violations of this server's federation answers that are known and listed, so
    /// that one wrong field does not stop every scenario that goes through the operation.
    /// Each still fails the scenario that checks that field itself (listed as a deviation).
    #[serde(default)]
    pub schema_deviations: Vec<SchemaDeviation>,
    /// Real homeservers that federate with the server under test, by the name scenarios give
    /// them (`partners: {second: [bob]}` puts actor `bob` on the partner `second`).
    #[serde(default)]
    pub partners: std::collections::BTreeMap<String, PartnerConfig>,
}

impl FederationConfig {
    /// The authority's folder: [`FederationConfig::authority`] as written, or relative to
    /// `profile_dir`, the folder of the profile that names it.
    pub fn authority_dir(&self, profile_dir: &std::path::Path) -> PathBuf {
        if self.authority.is_absolute() {
            self.authority.clone()
        } else {
            profile_dir.join(&self.authority)
        }
    }

    /// The authority, loaded from its folder (made there if absent).
    pub fn load_authority(&self, profile_dir: &std::path::Path) -> Result<tls::Authority, String> {
        tls::Authority::load_or_create(&self.authority_dir(profile_dir))
    }
}

/// How the server under test treats the certificates of the servers it calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verification {
    /// It trusts the harness's authority and verifies against it.
    #[default]
    Authority,
    /// It accepts any certificate.
    Unverified,
}

/// A second (or third) real homeserver, federating with the server under test.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartnerConfig {
    /// Its client-server API (filled in by the run for an embedded partner).
    #[serde(default)]
    pub base_url: String,
    /// Its name, by which the server under test reaches it (filled in for an embedded one).
    #[serde(default)]
    pub server_name: String,
    /// A reference server that `mxconform run` starts in memory, named `localhost:<port>`
    /// and federating over TLS on that port with a certificate from the profile's authority.
    #[serde(default)]
    pub embedded: bool,
    #[serde(default)]
    pub registration: crate::profile::Registration,
    #[serde(default)]
    pub shared_secret: Option<String>,
}

impl PartnerConfig {
    /// An embedded reference server (its URL and name come when it is started).
    pub fn embedded() -> PartnerConfig {
        PartnerConfig {
            base_url: String::new(),
            server_name: String::new(),
            embedded: true,
            registration: crate::profile::Registration::Open,
            shared_secret: None,
        }
    }
}

/// A known schema violation: in `operation`'s answers, at `at`, a message containing
/// `message`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaDeviation {
    pub operation: String,
    pub at: String,
    pub message: String,
    pub reason: String,
    pub spec: String,
}

/// Everything federation scenarios of a run share.
#[derive(Debug)]
pub struct Federation {
    pub client: Arc<FedClient>,
    pub authority: tls::Authority,
}

impl Federation {
    /// The federation of a run: `server_url` is the server's client-server URL (its
    /// federation API's too when the profile names no other).
    pub fn new(
        config: &FederationConfig,
        profile_dir: &std::path::Path,
        server_url: &str,
    ) -> Result<Federation, String> {
        let dir = config.authority_dir(profile_dir);
        Ok(Federation {
            client: Arc::new(FedClient::new(
                client::Target {
                    base_url: config
                        .base_url
                        .as_deref()
                        .unwrap_or(server_url)
                        .trim_end_matches('/')
                        .to_string(),
                    server_name: config.server_name.clone(),
                },
                config.schema_deviations.clone(),
            )?),
            authority: tls::Authority::load_or_create(&dir)?,
        })
    }
}

static TXN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A fresh transaction id.
fn txn_id() -> String {
    format!(
        "mxc{}-{}-{}",
        now_ms(),
        std::process::id(),
        TXN.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// Which handshake a membership change through the resident server takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handshake {
    Join,
    Leave,
    Knock,
}

impl Handshake {
    fn names(self) -> (&'static str, &'static str, &'static str, &'static str) {
        match self {
            Handshake::Join => ("makeJoin", "sendJoinV2", "make_join", "v2/send_join"),
            Handshake::Leave => ("makeLeave", "sendLeaveV2", "make_leave", "v2/send_leave"),
            Handshake::Knock => ("makeKnock", "sendKnock", "make_knock", "v1/send_knock"),
        }
    }
}

/// Joins `user` (of the fake server) to `room_id` of the server under test: make_join, the
/// template signed by the fake server, send_join v2; every event of the answer is checked.
/// Returns the join event's id and the room's version.
pub async fn join(shared: &Shared, user: &str, room_id: &str) -> Result<(String, String), String> {
    let (id, version, _) = handshake(shared, Handshake::Join, user, room_id).await?;
    Ok((id, version))
}

/// A membership change through the resident server (make_*, the template signed by the fake
/// server, send_*), every event of the answer checked. Returns the event's id, the room
/// version and the answer of send_*.
pub async fn handshake(
    shared: &Shared,
    kind: Handshake,
    user: &str,
    room_id: &str,
) -> Result<(String, String, Value), String> {
    let (make_op, send_op, make_path, send_path) = kind.names();
    let versions: Vec<String> = mxconform_pdu::version::ALL
        .iter()
        .map(|v| format!("ver={}", v.id))
        .collect();
    let query = if kind == Handshake::Leave {
        String::new()
    } else {
        format!("?{}", versions.join("&"))
    };
    let path = format!(
        "/_matrix/federation/v1/{make_path}/{}/{}{query}",
        crate::client::encode_segment(room_id),
        crate::client::encode_segment(user),
    );
    let made = shared
        .client
        .request(
            &shared.name,
            &shared.key,
            client::route(make_op),
            "GET",
            &path,
            None,
        )
        .await?;
    if made.status != 200 {
        return Err(format!(
            "{make_path} answered {}: {}",
            made.status, made.body
        ));
    }
    // make_leave's answer may omit the version of a room the fake server is in.
    let known_version = shared
        .rooms
        .lock()
        .ok()
        .and_then(|r| r.get(room_id).map(|v| v.version.id.to_string()));
    let version_id = match made.body.get("room_version").and_then(Value::as_str) {
        Some(v) => v.to_string(),
        None => known_version.unwrap_or_else(|| "1".into()),
    };
    let v = RoomVersion::get(&version_id)
        .ok_or_else(|| format!("{make_path} gave room version {version_id:?}, not one of 1-12"))?;
    let mut event = made
        .body
        .get("event")
        .cloned()
        .ok_or_else(|| format!("{make_path} gave no event"))?;
    if !event.is_object() {
        return Err(format!("{make_path}'s event is not an object"));
    }
    event["origin_server_ts"] = json!(now_ms());
    if v.event_ids == mxconform_pdu::version::EventIdFormat::Opaque {
        event["event_id"] = json!(format!("$m{}:{}", now_ms(), shared.name));
    }
    let origin = Origin {
        server_name: &shared.name,
        key: &shared.key,
    };
    mxconform_pdu::build::hash_and_sign(v, &mut event, origin);
    let ours = Pdu::from_json(v, event.clone()).map_err(|e| format!("our event: {e}"))?;
    let path = format!(
        "/_matrix/federation/{send_path}/{}/{}",
        crate::client::encode_segment(room_id),
        crate::client::encode_segment(&ours.event_id)
    );
    let sent = shared
        .client
        .request(
            &shared.name,
            &shared.key,
            client::route(send_op),
            "PUT",
            &path,
            Some(&event),
        )
        .await?;
    if sent.status != 200 {
        return Err(format!(
            "{send_path} answered {}: {}",
            sent.status, sent.body
        ));
    }
    if kind != Handshake::Join {
        // A leave goes into the room the fake server is in; a knock leaves it outside.
        if let Ok(mut rooms) = shared.rooms.lock() {
            if let Some(room) = rooms.get_mut(room_id) {
                room.add(ours.clone())?;
            }
        }
        return Ok((ours.event_id, version_id, sent.body));
    }
    // Every event of the answer passes the checks on receipt.
    let mut state = Vec::new();
    let mut chain = Vec::new();
    for (field, into) in [("state", &mut state), ("auth_chain", &mut chain)] {
        for e in sent
            .body
            .get(field)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            into.push(
                check_pdu(shared, v, e).await.map_err(|why| {
                    format!("send_join's {field} holds an event that fails: {why}")
                })?,
            );
        }
    }
    let mut room = RoomView::from_join(v, room_id, state, chain, ours.clone());
    // The state and auth chain are checked by their own auth events (the state before them
    // is not known to a joining server); our join by the state the server gave.
    let problems: Vec<String> = room
        .events
        .values()
        .filter(|e| e.event_id != ours.event_id)
        .filter_map(|e| room.authorize_by_auth_events(e).err())
        .collect();
    if !problems.is_empty() {
        return Err(format!(
            "send_join's answer holds events their auth events do not allow: {}",
            problems.join("; ")
        ));
    }
    room.authorize(&ours)
        .map_err(|e| format!("our join, by the state the server gave: {e}"))?;
    room.rejected.clear();
    if let Ok(mut rooms) = shared.rooms.lock() {
        rooms.insert(room_id.to_string(), room);
    }
    Ok((ours.event_id, version_id, sent.body))
}

/// Builds an event as the fake server and sends it to the server under test in a
/// transaction. `tamper` changes the signed event before it is sent (for negative tests).
/// Returns the event id and the server's result for it (`{}` when accepted).
/// How an event a fake server sends departs from the ordinary.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// Changes to the signed event (keys or JSON pointers).
    pub tamper: Option<Value>,
    /// Hash and sign again after the changes (a well-signed event with, say, wrong auth
    /// events), instead of sending it as changed.
    pub resign: bool,
    /// The event's prev events (a fork), instead of the room's extremities.
    pub prev: Option<Vec<String>>,
    /// The event's auth events, instead of the selection (then hashed and signed again).
    pub auth: Option<Vec<String>>,
    /// Keep the event in the fake server's room, unsent.
    pub hold: bool,
}

pub async fn send_event(
    shared: &Shared,
    room_id: &str,
    new: NewEvent,
    overrides: &Overrides,
    retries: u32,
) -> Result<(String, Value), String> {
    let origin = Origin {
        server_name: &shared.name,
        key: &shared.key,
    };
    let (pdu, version, auth_refs) = {
        let rooms = shared.rooms.lock().map_err(|_| "room lock")?;
        let room = rooms
            .get(room_id)
            .ok_or_else(|| format!("the fake server is not in {room_id}"))?;
        let pdu = room.build_on(new, origin, overrides.prev.as_deref())?;
        // v1-2 cite events as [id, {sha256}] pairs.
        let auth_refs: Option<Vec<Value>> = overrides.auth.as_ref().map(|ids| {
            ids.iter()
                .map(|id| match (room.version.event_ids, room.events.get(id)) {
                    (mxconform_pdu::version::EventIdFormat::Opaque, Some(e)) => json!([
                        id,
                        {"sha256": mxconform_pdu::base64::encode(&mxconform_pdu::hash::reference_hash(room.version, &e.json))}
                    ]),
                    _ => json!(id),
                })
                .collect()
        });
        (pdu, room.version, auth_refs)
    };
    let tamper = overrides.tamper.as_ref();
    let mut json = pdu.json.clone();
    if let Some(refs) = auth_refs {
        json["auth_events"] = Value::Array(refs);
    }
    if let Some(Value::Object(changes)) = tamper {
        for (k, v) in changes {
            let target = if k.starts_with('/') {
                json.pointer_mut(k)
            } else {
                json.get_mut(k)
            };
            match target {
                Some(t) => *t = v.clone(),
                None => set_pointer(&mut json, k, v.clone())?,
            }
        }
    }
    let resigned = overrides.resign || overrides.auth.is_some();
    if resigned {
        if let Some(m) = json.as_object_mut() {
            m.remove("hashes");
            m.remove("signatures");
        }
        mxconform_pdu::build::hash_and_sign(version, &mut json, origin);
    }
    let event_id = mxconform_pdu::hash::event_id(version, &json).unwrap_or(pdu.event_id.clone());
    if tamper.is_none() && !resigned {
        // An event the fake server's own view of the rules rejects is still sent (the
        // scenario may mean the server under test to reject it too); the room keeps it
        // marked rejected, so that later events do not build on it.
        let mut rooms = shared.rooms.lock().map_err(|_| "room lock")?;
        if let Some(room) = rooms.get_mut(room_id) {
            let _ = room.add(pdu);
        }
    } else if resigned {
        // A well-signed event the fake server made on purpose: it is part of the room's graph
        // (the rules may reject it, as the server under test should).
        if let Ok(p) = Pdu::from_json(version, json.clone()) {
            let mut rooms = shared.rooms.lock().map_err(|_| "room lock")?;
            if let Some(room) = rooms.get_mut(room_id) {
                let _ = room.add(p);
            }
        }
    }
    if overrides.hold {
        // Kept in the fake server's room as it is, tampered or not: the room then serves it
        // (state, auth chains, send_join answers, backfill), as a server that forged it would.
        if tamper.is_some() && !resigned {
            if let Ok(p) = Pdu::from_json(version, json.clone()) {
                let mut rooms = shared.rooms.lock().map_err(|_| "room lock")?;
                if let Some(room) = rooms.get_mut(room_id) {
                    let _ = room.add(p);
                }
            }
        }
        return Ok((event_id, json!("held")));
    }
    let body = json!({
        "origin": shared.name,
        "origin_server_ts": now_ms(),
        "pdus": [json],
        "edus": [],
    });
    let path = format!("/_matrix/federation/v1/send/{}", txn_id());
    let sent = shared
        .client
        .request(
            &shared.name,
            &shared.key,
            client::route("sendTransaction"),
            "PUT",
            &path,
            Some(&body),
        )
        .await?;
    if sent.status != 200 {
        return Err(format!("/send answered {}: {}", sent.status, sent.body));
    }
    // A retried transaction (same id, same body) is answered as the first.
    for n in 0..retries {
        let again = shared
            .client
            .request(
                &shared.name,
                &shared.key,
                client::route("sendTransaction"),
                "PUT",
                &path,
                Some(&body),
            )
            .await?;
        if again.status != sent.status || again.body != sent.body {
            return Err(format!(
                "retry {} of transaction {path} answered {} {}, not {} {} as the first time",
                n + 1,
                again.status,
                again.body,
                sent.status,
                sent.body
            ));
        }
    }
    let result = sent
        .body
        .get("pdus")
        .and_then(|p| p.get(&event_id))
        .cloned()
        .unwrap_or(Value::Null);
    Ok((event_id, result))
}

/// Where the PDUs are in an operation's answer.
fn pdu_fields(operation: &str) -> &'static [&'static str] {
    match operation {
        "getEvent" | "backfillRoom" => &["pdus"],
        "getRoomState" => &["pdus", "auth_chain"],
        "getEventAuth" => &["auth_chain"],
        "getMissingPreviousEvents" => &["events"],
        _ => &[],
    }
}

/// Checks the PDUs of an answer as a receiving server would (format, signatures, hash, and
/// authorization by their auth events where the fake server knows them); each problem is a
/// violation. Events that pass become known to the fake server's view of their room.
pub async fn check_answer(shared: &Shared, operation: &str, room_hint: Option<&str>, body: &Value) {
    let mut checked: Vec<(String, String)> = Vec::new();
    for field in pdu_fields(operation) {
        for json in body
            .get(*field)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            // A room version 12 create event has no room_id: the room asked about is its room.
            // Without a room asked about (getEvent), it is the room its id makes.
            let derived = json
                .get("room_id")
                .is_none()
                .then(|| {
                    mxconform_pdu::version::ALL
                        .iter()
                        .filter(|v| v.room_id_is_create)
                        .find_map(|v| mxconform_pdu::hash::event_id(v, json))
                        .map(|id| mxconform_pdu::hash::room_id_of_create(&id))
                })
                .flatten();
            let room_id = json
                .get("room_id")
                .and_then(Value::as_str)
                .or(room_hint)
                .or(derived.as_deref())
                .unwrap_or("");
            let version = shared
                .rooms
                .lock()
                .ok()
                .and_then(|r| r.get(room_id).map(|v| v.version));
            let Some(version) = version else {
                shared.inbox.note_violation(format!(
                    "{operation} gave a PDU of room {room_id:?}, which the fake server did not ask about"
                ));
                continue;
            };
            match check_pdu(shared, version, json).await {
                Err(why) => shared
                    .inbox
                    .note_violation(format!("{operation} gave a PDU that fails: {why}")),
                Ok(p) => {
                    checked.push((room_id.to_string(), p.event_id.clone()));
                    if let Ok(mut rooms) = shared.rooms.lock() {
                        if let Some(room) = rooms.get_mut(room_id) {
                            room.learn(p);
                        }
                    }
                }
            }
        }
    }
    // Authorization once every event of the answer is known (they cite each other).
    if let Ok(rooms) = shared.rooms.lock() {
        for (room, id) in checked {
            let Some(view) = rooms.get(&room) else {
                continue;
            };
            let Some(p) = view.events.get(&id) else {
                continue;
            };
            if p.auth_events.iter().all(|a| view.events.contains_key(a)) {
                if let Err(why) = view.authorize_by_auth_events(p) {
                    shared
                        .inbox
                        .note_violation(format!("{operation} gave a PDU the rules reject: {why}"));
                }
            }
        }
    }
}

/// The fake server invites `target` (a user of the server under test) to a room it is in:
/// the invite event is made by the fake server, sent with invite v2 for the invited server's
/// signature, checked, and then sent into the room. Returns the invite's id.
pub async fn invite(
    shared: &Shared,
    sender: &str,
    room_id: &str,
    target: &str,
    v1: bool,
) -> Result<String, String> {
    let origin = Origin {
        server_name: &shared.name,
        key: &shared.key,
    };
    let (pdu, version, stripped) = {
        let rooms = shared.rooms.lock().map_err(|_| "room lock")?;
        let room = rooms
            .get(room_id)
            .ok_or_else(|| format!("the fake server is not in {room_id}"))?;
        let new = NewEvent::new(
            "m.room.member",
            Some(target),
            sender,
            json!({"membership": "invite"}),
            now_ms(),
        );
        (
            room.build(new, origin)?,
            room.version,
            room.stripped_state(),
        )
    };
    let (op, endpoint) = if v1 {
        ("sendInviteV1", "v1")
    } else {
        ("sendInviteV2", "v2")
    };
    let path = format!(
        "/_matrix/federation/{endpoint}/invite/{}/{}",
        crate::client::encode_segment(room_id),
        crate::client::encode_segment(&pdu.event_id)
    );
    // v1 sends the event itself (the stripped state in `unsigned`); v2 wraps it.
    let body = if v1 {
        let mut e = pdu.json.clone();
        e["unsigned"] = json!({"invite_room_state": stripped});
        e
    } else {
        json!({"event": pdu.json, "room_version": version.id, "invite_room_state": stripped})
    };
    let sent = shared
        .client
        .request(
            &shared.name,
            &shared.key,
            client::route(op),
            "PUT",
            &path,
            Some(&body),
        )
        .await?;
    if sent.status != 200 {
        return Err(format!("invite answered {}: {}", sent.status, sent.body));
    }
    // v1 answers `[200, {"event": ...}]`.
    let answer = if v1 {
        sent.body.get(1).cloned().unwrap_or(Value::Null)
    } else {
        sent.body.clone()
    };
    let mut signed = answer.get("event").cloned().unwrap_or(Value::Null);
    if let Some(m) = signed.as_object_mut() {
        m.remove("unsigned");
    }
    let server = mxconform_pdu::ids::server_of(target)
        .unwrap_or("")
        .to_string();
    let returned = check_pdu(shared, version, &signed)
        .await
        .map_err(|why| format!("the invite it signed fails: {why}"))?;
    if returned.event_id != pdu.event_id {
        return Err(format!(
            "the signed invite has another id ({} for {}): it changed the event",
            returned.event_id, pdu.event_id
        ));
    }
    if mxconform_pdu::sign::signatures_of(&signed, &server).is_none() {
        return Err(format!(
            "the invite came back without a signature of {server}"
        ));
    }
    {
        let mut rooms = shared.rooms.lock().map_err(|_| "room lock")?;
        if let Some(room) = rooms.get_mut(room_id) {
            room.add(returned)?;
        }
    }
    let body =
        json!({"origin": shared.name, "origin_server_ts": now_ms(), "pdus": [signed], "edus": []});
    let path = format!("/_matrix/federation/v1/send/{}", txn_id());
    let sent = shared
        .client
        .request(
            &shared.name,
            &shared.key,
            client::route("sendTransaction"),
            "PUT",
            &path,
            Some(&body),
        )
        .await?;
    if sent.status != 200 {
        return Err(format!(
            "/send of the invite answered {}: {}",
            sent.status, sent.body
        ));
    }
    Ok(pdu.event_id)
}

/// Sets `value` at a JSON pointer (or top-level key), making the objects on the way: a
/// tamper may add a field the event did not have, nested or not.
fn set_pointer(json: &mut Value, key: &str, value: Value) -> Result<(), String> {
    let parts: Vec<String> = if let Some(p) = key.strip_prefix('/') {
        p.split('/')
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect()
    } else {
        vec![key.to_string()]
    };
    let mut at = json;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let Value::Object(m) = at else {
            return Err(format!(
                "tamper {key}: {part} is under a value that is not an object"
            ));
        };
        if last {
            m.insert(part.clone(), value);
            return Ok(());
        }
        at = m
            .entry(part.clone())
            .or_insert_with(|| Value::Object(Default::default()));
    }
    Ok(())
}

/// The JSON of an event the fake server holds in one of its rooms (made, held or learnt).
pub fn held_event(shared: &Shared, event_id: &str) -> Result<Value, String> {
    let rooms = shared.rooms.lock().map_err(|_| "room lock")?;
    rooms
        .values()
        .find_map(|r| r.events.get(event_id).map(|p| p.json.clone()))
        .ok_or_else(|| format!("{} holds no event {event_id}", shared.name))
}

/// Sends one transaction of the given PDUs (by id, from the fake server's rooms) and EDUs;
/// answers the status and body.
pub async fn send_transaction(
    shared: &Shared,
    pdu_ids: &[String],
    edus: Vec<Value>,
) -> Result<(u16, Value), String> {
    let pdus: Vec<Value> = pdu_ids
        .iter()
        .map(|id| held_event(shared, id))
        .collect::<Result<_, _>>()?;
    let body =
        json!({"origin": shared.name, "origin_server_ts": now_ms(), "pdus": pdus, "edus": edus});
    let path = format!("/_matrix/federation/v1/send/{}", txn_id());
    let sent = shared
        .client
        .request(
            &shared.name,
            &shared.key,
            client::route("sendTransaction"),
            "PUT",
            &path,
            Some(&body),
        )
        .await?;
    Ok((sent.status, sent.body))
}

/// Sends EDUs from the fake server in one transaction; an answer other than 200 is an error.
pub async fn send_edus(shared: &Shared, edus: Vec<Value>) -> Result<Value, String> {
    let (status, body) = send_transaction(shared, &[], edus).await?;
    if status != 200 {
        return Err(format!("/send answered {status}: {body}"));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::set_pointer;
    use serde_json::json;

    #[test]
    fn tamper_paths_make_the_objects_on_the_way() {
        let mut e = json!({"type": "m.room.message", "content": {"body": "x"}});
        set_pointer(&mut e, "/content/m.relates_to/rel_type", json!("m.thread")).unwrap();
        set_pointer(&mut e, "/unsigned~1x", json!(1)).unwrap();
        set_pointer(&mut e, "depth", json!(7)).unwrap();
        assert_eq!(
            e,
            json!({"type": "m.room.message", "depth": 7, "unsigned/x": 1,
                "content": {"body": "x", "m.relates_to": {"rel_type": "m.thread"}}})
        );
        let err = set_pointer(&mut e, "/type/x", json!(1)).unwrap_err();
        assert!(err.contains("not an object"), "{err}");
    }
}
