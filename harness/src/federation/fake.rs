//! A fake remote homeserver for one scenario: a fresh port on 127.0.0.1 (its server name is
//! `127.0.0.1:<port>`), a fresh ed25519 key and a TLS certificate from the run's authority.
//! It serves its key document, checks every request the server under test sends it (X-Matrix
//! origin, destination and signature with the key that server publishes; the body against the
//! server-server schema) and every PDU (format, signatures, content hash, authorization with
//! the core), answers what it models, records everything for the scenario's steps, and counts
//! a request nobody expected as a violation.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};
use mxconform_generated::Group;
use mxconform_pdu::{keys, pdu, xmatrix, Pdu, RoomVersion, SigningKey, VerifyKey};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use super::client::{self, FedClient};
use super::room::RoomView;
use crate::validate::{self, Part};

/// Something the server under test sent a fake server.
#[derive(Clone, Debug)]
pub enum Received {
    /// A request, by operation (or method and path when no operation matches).
    Request { operation: String, body: Value },
    /// A PDU of a transaction, with what checking it found (`None`: it passed).
    Pdu { pdu: Value, problem: Option<String> },
    /// An EDU of a transaction.
    Edu { edu: Value },
    /// A TLS handshake the server under test did not complete (it refused the certificate, or
    /// the connection failed), with rustls's reason.
    Handshake { error: String },
}

/// What a fake server has been sent, for steps to wait on.
#[derive(Debug, Default)]
pub struct Inbox {
    items: Mutex<Vec<Received>>,
    notify: Notify,
    violations: Mutex<Vec<String>>,
}

impl Inbox {
    fn push(&self, r: Received) {
        if let Ok(mut items) = self.items.lock() {
            items.push(r);
        }
        self.notify.notify_waiters();
    }

    fn violation(&self, v: String) {
        self.note_violation(v)
    }

    /// Records something the server under test did wrong; it fails the scenario.
    pub fn note_violation(&self, v: String) {
        if let Ok(mut list) = self.violations.lock() {
            list.push(v);
        }
    }

    /// Everything wrong the server under test did towards this fake server.
    pub fn violations(&self) -> Vec<String> {
        self.violations
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    /// Waits until `matches` finds a received item (counting from `from`), for at most
    /// `within`; returns its index and a copy.
    pub async fn wait_for(
        &self,
        from: usize,
        within: Duration,
        matches: impl Fn(&Received) -> bool,
    ) -> Option<(usize, Received)> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.notify.notified();
            if let Ok(items) = self.items.lock() {
                if let Some((i, r)) = items
                    .iter()
                    .enumerate()
                    .skip(from)
                    .find(|(_, r)| matches(r))
                {
                    return Some((i, r.clone()));
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    /// How many items have arrived.
    pub fn len(&self) -> usize {
        self.items.lock().map(|i| i.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of every item received.
    pub fn items(&self) -> Vec<Received> {
        self.items.lock().map(|i| i.clone()).unwrap_or_default()
    }
}

/// The operations a fake server answers without being asked to by a step.
const MODELLED: &[&str] = &[
    "getServerKey",
    "sendTransaction",
    "askPolicyServerToSign",
    "sendInviteV2",
    "sendInviteV1",
    "getUserDevices",
    "queryUserEncryptionKeys",
    "queryProfile",
    "getEvent",
    "getRoomState",
    "getRoomStateIds",
    "getEventAuth",
    "backfillRoom",
    "getMissingPreviousEvents",
    "makeJoin",
    "sendJoinV1",
    "sendJoinV2",
    "makeLeave",
    "sendLeaveV1",
    "sendLeaveV2",
    "makeKnock",
    "sendKnock",
];

/// An answer a scenario gave a fake server for an operation (`fed_answer`), in place of what
/// it would answer: a failing resident for fail-over, a profile, a directory entry, media.
#[derive(Clone, Debug)]
pub struct Canned {
    pub status: u16,
    pub body: Value,
    /// Raw bytes with a content type, instead of JSON (media).
    pub raw: Option<(String, Vec<u8>)>,
    /// How many more times (None: always).
    pub times: Option<u32>,
}

/// The shared state of one fake server.
#[derive(Debug)]
pub struct Shared {
    pub name: String,
    pub key: SigningKey,
    /// The key it signs with as a rooms' Policy Server (`ed25519:policy_server`).
    pub policy_key: SigningKey,
    pub inbox: Inbox,
    pub rooms: Mutex<HashMap<String, RoomView>>,
    pub client: Arc<FedClient>,
    /// Further operations a scenario allows the server under test to call.
    pub allowed: Mutex<BTreeSet<String>>,
    /// Keys of the other fake servers of the scenario, by server name.
    pub peers: Mutex<HashMap<String, VerifyKey>>,
    /// Answers a scenario set, by operation.
    pub canned: Mutex<HashMap<String, Canned>>,
    /// The fault this server's certificate has, when a scenario gave it one: any request that
    /// reaches it means the server under test accepted that certificate.
    pub certificate_fault: Option<super::tls::CertificateFault>,
}

/// A running fake server; dropping it stops it.
#[derive(Debug)]
pub struct Fake {
    pub shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Fake {
    /// Starts a fake server on a fresh port of 127.0.0.1, with a good certificate from
    /// `authority` or one with the given fault.
    pub async fn start(
        authority: &super::tls::Authority,
        client: Arc<FedClient>,
        certificate_fault: Option<super::tls::CertificateFault>,
    ) -> Result<Fake, String> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("binding a fake server: {e}"))?;
        let port = listener
            .local_addr()
            .map_err(|e| format!("a fake server's address: {e}"))?
            .port();
        let name = format!("127.0.0.1:{port}");
        let tls = authority.server_config_with("127.0.0.1", certificate_fault)?;
        let key = SigningKey::generate(None).map_err(|e| e.to_string())?;
        let policy_key = SigningKey::generate(Some("policy_server")).map_err(|e| e.to_string())?;
        let shared = Arc::new(Shared {
            name,
            key,
            policy_key,
            inbox: Inbox::default(),
            rooms: Mutex::new(HashMap::new()),
            client,
            allowed: Mutex::new(BTreeSet::new()),
            peers: Mutex::new(HashMap::new()),
            canned: Mutex::new(HashMap::new()),
            certificate_fault,
        });
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let task = tokio::spawn(serve(listener, acceptor, shared.clone()));
        Ok(Fake { shared, task })
    }
}

pub type Answer = Response<Full<Bytes>>;

pub fn answer(status: u16, v: Value) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

async fn serve(listener: TcpListener, acceptor: tokio_rustls::TlsAcceptor, shared: Arc<Shared>) {
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(sock)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        shared.inbox.push(Received::Handshake {
                            error: e.to_string(),
                        });
                        return;
                    }
                    Err(_) => {
                        shared.inbox.push(Received::Handshake {
                            error: "no handshake within 10 s".to_string(),
                        });
                        return;
                    }
                };
            let io = hyper_util::rt::TokioIo::new(tls);
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let shared = shared.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let bytes = match Limited::new(body, 4 << 20).collect().await {
                        Ok(c) => c.to_bytes(),
                        Err(_) => {
                            return Ok::<_, std::convert::Infallible>(answer(
                                413,
                                json!({"errcode": "M_TOO_LARGE", "error": "over 4 MiB"}),
                            ))
                        }
                    };
                    Ok(handle(&shared, parts, bytes).await)
                }
            });
            let _ = tokio::time::timeout(
                Duration::from_secs(120),
                hyper::server::conn::http1::Builder::new().serve_connection(io, service),
            )
            .await;
        });
    }
}

async fn handle(shared: &Shared, parts: hyper::http::request::Parts, bytes: Bytes) -> Answer {
    let method = parts.method.as_str().to_string();
    let path = parts.uri.path().to_string();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or(path.clone(), |p| p.as_str().to_string());
    let body: Option<Value> = if bytes.is_empty() {
        None
    } else {
        match serde_json::from_slice(&bytes) {
            Ok(v) => Some(v),
            Err(e) => {
                shared
                    .inbox
                    .violation(format!("{method} {path}: the body is not JSON: {e}"));
                return answer(400, json!({"errcode": "M_NOT_JSON", "error": "not JSON"}));
            }
        }
    };
    if let Some(fault) = shared.certificate_fault {
        shared.inbox.violation(format!(
            "{method} {path}: sent over a connection it accepted although this server presented {fault}"
        ));
    }
    let matched = client::match_route(&method, &path);
    let operation = matched.as_ref().map(|(r, _)| r.operation_id);
    if operation == Some("getServerKey") {
        let doc = keys::server_key_document(
            &shared.name,
            &[&shared.key],
            &[],
            now_ms() + 24 * 3600 * 1000,
        );
        return answer(200, doc);
    }
    let label = operation.map_or_else(|| format!("{method} {path}"), str::to_string);
    // Every other request: signed by the server under test, for us.
    if let Err(why) =
        check_authorization(shared, &parts, &method, &path_and_query, body.as_ref()).await
    {
        shared.inbox.violation(format!("{label}: {why}"));
        return answer(401, json!({"errcode": "M_UNAUTHORIZED", "error": why}));
    }
    if let (Some(op), Some(b)) = (operation, body.as_ref()) {
        if let Ok(Some(v)) = validate::validate_in(Group::ServerServer, op, &Part::Request, b) {
            let v = client::untolerated(op, "request", v, &shared.client.tolerated);
            if !v.is_empty() {
                shared.inbox.violation(format!(
                    "{op}: the request breaks its schema: {}",
                    v.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                ));
            }
        }
    }
    shared.inbox.push(Received::Request {
        operation: label.clone(),
        body: body.clone().unwrap_or(Value::Null),
    });
    let params: HashMap<String, String> = matched
        .map(|(_, p)| p.into_iter().collect())
        .unwrap_or_default();
    let query: Vec<(String, String)> = parts
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                crate::peers::percent_decode(k),
                crate::peers::percent_decode(v),
            )
        })
        .collect();
    let canned = shared.canned.lock().ok().and_then(|mut c| {
        let entry = c.get_mut(&label)?;
        let out = entry.clone();
        match &mut entry.times {
            Some(0) => return None,
            Some(n) => *n -= 1,
            None => {}
        }
        Some(out)
    });
    if let Some(c) = canned {
        if let Some((content_type, bytes)) = c.raw {
            let mut r = Response::new(Full::new(Bytes::from(bytes)));
            *r.status_mut() =
                hyper::StatusCode::from_u16(c.status).unwrap_or(hyper::StatusCode::OK);
            if let Ok(v) = hyper::header::HeaderValue::from_str(&content_type) {
                r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
            }
            return r;
        }
        return answer(c.status, c.body);
    }
    let allowed = shared
        .allowed
        .lock()
        .map(|a| a.contains(&label))
        .unwrap_or(false);
    match operation {
        Some("sendTransaction") => on_transaction(shared, body.unwrap_or(Value::Null)).await,
        Some("askPolicyServerToSign") => on_policy_sign(shared, body).await,
        Some("sendInviteV2") | Some("sendInviteV1") => {
            on_invite(shared, operation == Some("sendInviteV2"), &params, body)
        }
        Some("getUserDevices") => {
            let user = params.get("userId").cloned().unwrap_or_default();
            answer(200, json!({"user_id": user, "stream_id": 0, "devices": []}))
        }
        Some("queryUserEncryptionKeys") => answer(200, json!({"device_keys": {}})),
        Some("queryProfile") => answer(200, json!({})),
        Some(
            op @ ("getEvent"
            | "getRoomState"
            | "getRoomStateIds"
            | "getEventAuth"
            | "backfillRoom"
            | "getMissingPreviousEvents"),
        ) => room_data(shared, op, &params, &query, body.as_ref()),
        Some(op @ ("makeJoin" | "makeLeave" | "makeKnock")) => {
            super::resident::on_make(shared, op, &params, &query)
        }
        Some(op @ ("sendJoinV1" | "sendJoinV2" | "sendLeaveV1" | "sendLeaveV2" | "sendKnock")) => {
            super::resident::on_send(shared, op, &params, body).await
        }
        _ if allowed => answer(
            404,
            json!({"errcode": "M_NOT_FOUND", "error": "the fake server has nothing for this"}),
        ),
        _ => {
            shared.inbox.violation(format!(
                "{label}: a request this scenario did not expect (the fake server models {})",
                MODELLED.join(", ")
            ));
            answer(
                404,
                json!({"errcode": "M_UNRECOGNIZED", "error": "not expected by this scenario"}),
            )
        }
    }
}

/// The multipart/mixed answer of federation media download and thumbnail: the metadata
/// (JSON, empty), then the file. Returns the content type (with its boundary) and the bytes.
pub fn multipart_media(content_type: &str, file: &[u8]) -> (String, Vec<u8>) {
    let boundary = format!("mxconform{}", now_ms());
    let mut out = Vec::with_capacity(file.len() + 256);
    out.extend_from_slice(
        format!("--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--{boundary}\r\nContent-Type: {content_type}\r\n\r\n").as_bytes(),
    );
    out.extend_from_slice(file);
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/mixed; boundary={boundary}"), out)
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// X-Matrix on a request the server under test sent: its own name as origin, ours as
/// destination, signed with a key it publishes.
async fn check_authorization(
    shared: &Shared,
    parts: &hyper::http::request::Parts,
    method: &str,
    path_and_query: &str,
    body: Option<&Value>,
) -> Result<(), String> {
    let header = parts
        .headers
        .get(hyper::header::AUTHORIZATION)
        .ok_or("no Authorization header")?
        .to_str()
        .map_err(|_| "the Authorization header is not text")?;
    let x = xmatrix::parse(header).map_err(|e| e.to_string())?;
    let target = &shared.client.target.server_name;
    if &x.origin != target {
        return Err(format!(
            "X-Matrix origin {:?} is not the server under test ({target})",
            x.origin
        ));
    }
    if x.destination.is_none() {
        return Err("X-Matrix without destination (senders MUST send it since v1.3)".into());
    }
    let keys = shared.client.server_keys().await?;
    let key = keys
        .verify_keys
        .iter()
        .find(|k| k.key_id == x.key)
        .ok_or_else(|| format!("X-Matrix key {} is not one the server publishes", x.key))?;
    x.verify(&shared.name, method, path_and_query, body, key)
        .map_err(|e| e.to_string())
}

/// The keys events may be signed with: the server under test's, and the fake servers'.
async fn key_of(shared: &Shared, server: &str, key_id: &str) -> Option<(VerifyKey, i64)> {
    if server == shared.client.target.server_name {
        let keys = shared.client.server_keys().await.ok()?;
        return keys.key(key_id).map(|(k, until)| (k.clone(), until));
    }
    if server == shared.name {
        let k = shared.key.verify_key();
        return (k.key_id == key_id).then_some((k, i64::MAX));
    }
    let peers = shared.peers.lock().ok()?;
    peers
        .get(server)
        .filter(|k| k.key_id == key_id)
        .map(|k| (k.clone(), i64::MAX))
}

/// Checks a PDU the server under test sent, as a receiving server must: its format, the
/// signatures its version requires, its content hash, and its authorization. Returns the
/// problem found, if any.
pub async fn check_pdu(
    shared: &Shared,
    version: &'static RoomVersion,
    json: &Value,
) -> Result<Pdu, String> {
    let p = Pdu::from_json(version, json.clone()).map_err(|e| format!("format: {e}"))?;
    let mut keys = HashMap::new();
    for server in p.required_signers(version) {
        for key_id in mxconform_pdu::sign::signatures_of(&p.json, &server)
            .map(|s| s.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            if let Some(k) = key_of(shared, &server, &key_id).await {
                keys.insert((server.clone(), key_id), k);
            }
        }
    }
    let lookup =
        |server: &str, key_id: &str| keys.get(&(server.to_string(), key_id.to_string())).cloned();
    match pdu::verify(version, &p, &lookup) {
        Ok(()) => Ok(p),
        // A redacted copy fails the hash check and is handled as redacted.
        Err(pdu::VerifyError::ContentHash) => Ok(p),
        Err(e) => Err(format!("{} ({}): {e}", p.event_id, p.kind)),
    }
}

/// The fake server as a room's Policy Server: it signs the server under test's event (a PDU
/// of a room it is in, checked as every PDU it is sent) with its policy key when the room
/// names it (and that key) as its Policy Server; asking it for what the spec forbids (a room
/// that does not use it, the room's `m.room.policy` state event itself) is a violation.
async fn on_policy_sign(shared: &Shared, body: Option<Value>) -> Answer {
    let refuse = |why: String| {
        shared.inbox.violation(why.clone());
        answer(400, json!({"errcode": "M_FORBIDDEN", "error": why}))
    };
    let Some(json) = body.filter(Value::is_object) else {
        return answer(400, json!({"errcode": "M_NOT_JSON", "error": "no event"}));
    };
    let room_id = json.get("room_id").and_then(Value::as_str).unwrap_or("");
    let known = shared
        .rooms
        .lock()
        .ok()
        .and_then(|r| r.get(room_id).map(|v| (v.version, v.policy_server())));
    let Some((version, policy)) = known else {
        return refuse(format!(
            "asked to sign an event of room {room_id}, which this fake server is not in"
        ));
    };
    let pdu = match check_pdu(shared, version, &json).await {
        Ok(p) => p,
        Err(why) => return refuse(format!("asked to sign an event that fails: {why}")),
    };
    if policy != Some((shared.name.clone(), shared.policy_key.public_base64())) {
        return refuse(format!(
            "asked to sign an event of room {room_id}, whose m.room.policy does not name this server and its key"
        ));
    }
    if pdu.is("m.room.policy", "") {
        return refuse(
            "asked to sign the room's m.room.policy state event, which the spec forbids".into(),
        );
    }
    let mut redacted = mxconform_pdu::redact::redact(version, &json);
    mxconform_pdu::sign::sign_json(&mut redacted, &shared.name, &shared.policy_key);
    let sig = redacted["signatures"][&shared.name][shared.policy_key.key_id()].clone();
    answer(
        200,
        json!({ shared.name.clone(): { shared.policy_key.key_id(): sig } }),
    )
}

/// Whether `json` (an event of a room the fake server is in) carries a valid signature of the
/// room's Policy Server; `None` when the room uses none.
pub fn policy_signature_problem(shared: &Shared, json: &Value) -> Option<String> {
    let room_id = json.get("room_id").and_then(Value::as_str)?;
    let (version, (via, key)) = shared.rooms.lock().ok().and_then(|r| {
        r.get(room_id)
            .and_then(|v| Some((v.version, v.policy_server()?)))
    })?;
    let verify = mxconform_pdu::VerifyKey::from_base64("ed25519:policy_server", &key)
        .map_err(|e| format!("the room's Policy Server key is unusable: {e}"))
        .and_then(|k| {
            // As the event was sent: from room version 3 an event carries no id of its own
            // (what the inbox shows has it added).
            let mut json = json.clone();
            if version.event_ids != mxconform_pdu::version::EventIdFormat::Opaque {
                if let Some(m) = json.as_object_mut() {
                    m.remove("event_id");
                }
            }
            let redacted = mxconform_pdu::redact::redact(version, &json);
            mxconform_pdu::sign::verify_signature(&redacted, &via, &k)
                .map_err(|e| format!("no valid signature of the room's Policy Server {via}: {e}"))
        });
    verify.err()
}

async fn on_transaction(shared: &Shared, body: Value) -> Answer {
    let mut results = serde_json::Map::new();
    for json in body
        .get("pdus")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let room_id = json.get("room_id").and_then(Value::as_str).unwrap_or("");
        let version = shared
            .rooms
            .lock()
            .ok()
            .and_then(|r| r.get(room_id).map(|v| v.version));
        let Some(version) = version else {
            let why = format!("a PDU for room {room_id}, which this fake server has not joined");
            shared.inbox.violation(why.clone());
            shared.inbox.push(Received::Pdu {
                pdu: json.clone(),
                problem: Some(why),
            });
            continue;
        };
        let problem = match check_pdu(shared, version, json).await {
            Ok(p) => {
                let id = p.event_id.clone();
                let added = shared
                    .rooms
                    .lock()
                    .map_err(|_| "room lock".to_string())
                    .and_then(|mut rooms| match rooms.get_mut(room_id) {
                        Some(room) => room.add(p),
                        None => Err("room gone".into()),
                    });
                match added {
                    Ok(()) => {
                        results.insert(id, json!({}));
                        None
                    }
                    Err(why) => {
                        results.insert(id, json!({"error": why.clone()}));
                        Some(format!("rejected: {why}"))
                    }
                }
            }
            Err(why) => Some(why),
        };
        if let Some(why) = &problem {
            shared.inbox.violation(format!(
                "the server under test sent a PDU that fails: {why}"
            ));
        }
        let mut shown = json.clone();
        if let (Some(m), Ok(p)) = (shown.as_object_mut(), Pdu::from_json(version, json.clone())) {
            m.insert("event_id".into(), json!(p.event_id));
        }
        shared.inbox.push(Received::Pdu {
            pdu: shown,
            problem,
        });
    }
    for edu in body
        .get("edus")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        shared.inbox.push(Received::Edu { edu: edu.clone() });
    }
    answer(200, json!({"pdus": results}))
}

/// An invite of one of our users: the invited server signs the event and sends it back.
fn on_invite(
    shared: &Shared,
    v2: bool,
    params: &HashMap<String, String>,
    body: Option<Value>,
) -> Answer {
    let body = body.unwrap_or(Value::Null);
    let (mut event, version) = if v2 {
        let version = body
            .get("room_version")
            .and_then(Value::as_str)
            .unwrap_or("1");
        (
            body.get("event").cloned().unwrap_or(Value::Null),
            version.to_string(),
        )
    } else {
        (body.clone(), "1".to_string())
    };
    let Some(v) = RoomVersion::get(&version) else {
        return answer(
            400,
            json!({"errcode": "M_INCOMPATIBLE_ROOM_VERSION", "error": "unknown version", "room_version": version}),
        );
    };
    let target = event.get("state_key").and_then(Value::as_str).unwrap_or("");
    if !target.ends_with(&format!(":{}", shared.name)) {
        shared.inbox.violation(format!(
            "an invite of {target:?}, who is not a user of this fake server, sent here"
        ));
    }
    if let Some(id) = params.get("eventId") {
        if v.event_ids != mxconform_pdu::version::EventIdFormat::Opaque {
            let computed = mxconform_pdu::hash::event_id(v, &event).unwrap_or_default();
            if &computed != id {
                shared.inbox.violation(format!(
                    "an invite sent for event id {id} whose reference hash gives {computed}"
                ));
            }
        }
    }
    // Sign it as the invited user's server: the signature covers the redacted event.
    let mut redacted = mxconform_pdu::redact::redact(v, &event);
    mxconform_pdu::sign::sign_json(&mut redacted, &shared.name, &shared.key);
    if let Some(sig) = redacted
        .get("signatures")
        .and_then(|s| s.get(&shared.name))
        .cloned()
    {
        event["signatures"][shared.name.clone()] = sig;
    }
    if v2 {
        answer(200, json!({"event": event}))
    } else {
        answer(200, json!([200, {"event": event}]))
    }
}

/// What a fake server serves of the rooms it is in: an event, the state or state ids at an
/// event, an auth chain, history back from some events, or what lies between events.
fn room_data(
    shared: &Shared,
    op: &str,
    params: &HashMap<String, String>,
    query: &[(String, String)],
    body: Option<&Value>,
) -> Answer {
    let Ok(rooms) = shared.rooms.lock() else {
        return answer(500, json!({"errcode": "M_UNKNOWN", "error": "lock"}));
    };
    let q = |k: &str| {
        query
            .iter()
            .filter(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .collect::<Vec<_>>()
    };
    let not_found = |what: &str| {
        answer(
            404,
            json!({"errcode": "M_NOT_FOUND", "error": format!("the fake server has no {what}")}),
        )
    };
    let wrap =
        |pdus: Vec<&Pdu>| -> Vec<Value> { pdus.into_iter().map(|p| p.json.clone()).collect() };
    if op == "getEvent" {
        let id = params.get("eventId").cloned().unwrap_or_default();
        return match rooms.values().find_map(|r| r.events.get(&id)) {
            Some(e) => answer(
                200,
                json!({"origin": shared.name, "origin_server_ts": now_ms(), "pdus": [e.json]}),
            ),
            None => not_found(&format!("event {id}")),
        };
    }
    let room_id = params.get("roomId").cloned().unwrap_or_default();
    let Some(room) = rooms.get(&room_id) else {
        return not_found(&format!("room {room_id}"));
    };
    match op {
        "getRoomState" | "getRoomStateIds" => {
            let at = q("event_id").into_iter().next().unwrap_or_default();
            let Some(ids) = room.state_ids_at(&at) else {
                return not_found(&format!("event {at}"));
            };
            let chain = room.auth_chain(&ids);
            if op == "getRoomStateIds" {
                answer(
                    200,
                    json!({
                        "pdu_ids": ids,
                        "auth_chain_ids": chain.iter().map(|e| e.event_id.clone()).collect::<Vec<_>>(),
                    }),
                )
            } else {
                let pdus: Vec<&Pdu> = ids.iter().filter_map(|i| room.events.get(i)).collect();
                answer(200, json!({"pdus": wrap(pdus), "auth_chain": wrap(chain)}))
            }
        }
        "getEventAuth" => {
            let id = params.get("eventId").cloned().unwrap_or_default();
            if !room.events.contains_key(&id) {
                return not_found(&format!("event {id}"));
            }
            answer(200, json!({"auth_chain": wrap(room.auth_chain(&[id]))}))
        }
        "backfillRoom" => {
            let limit: usize = q("limit")
                .first()
                .and_then(|l| l.parse().ok())
                .unwrap_or(10)
                .min(100);
            let pdus = room.walk_back(&q("v"), &[], limit);
            answer(
                200,
                json!({"origin": shared.name, "origin_server_ts": now_ms(), "pdus": wrap(pdus)}),
            )
        }
        _ => {
            let list = |k: &str| -> Vec<String> {
                body.and_then(|b| b.get(k))
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let limit = body
                .and_then(|b| b.get("limit"))
                .and_then(Value::as_u64)
                .unwrap_or(10)
                .min(100) as usize;
            let latest = list("latest_events");
            let starts: Vec<String> = latest
                .iter()
                .filter_map(|id| room.events.get(id))
                .flat_map(|e| e.prev_events.clone())
                .collect();
            let events = room.walk_back(&starts, &list("earliest_events"), limit);
            answer(200, json!({"events": wrap(events)}))
        }
    }
}
