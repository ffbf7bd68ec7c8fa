//! The identity-server peer: the identity-service API (v2) over HTTPS, with a certificate from
//! the run's authority, for the homeserver's binds, unbinds, lookups and third-party invites.
//!
//! Every request is matched against the identity-service route table and its body checked
//! against the spec's schema; each exchange is kept (with what the check found) for the scenario
//! it concerns, which finds its own by the Matrix users involved (the owner of the access token,
//! `mxid`, `sender`). Accounts are made from OpenID tokens that the homeserver confirms
//! (`/_matrix/federation/v1/openid/userinfo`); unbinds must carry the homeserver's X-Matrix
//! signature; validation codes and invitations are mailed to the harness's mailbox. When an
//! address with pending invitations is bound, the homeserver is told (`PUT /3pid/onbind`), its
//! answer checked against the server-server schema.
//!
//! The peer knows one homeserver: the server under test, reached directly at its federation
//! URL (the profile's `[federation]`), without discovery.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::Request;
use mxconform_generated::{Auth, BodyKind, Group, ParamLocation, Route};
use mxconform_pdu::keys::{verify_server_key_document, ServerKeys};
use mxconform_pdu::{sign, xmatrix, SigningKey};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

use super::{Inbox, Mail, Mailbox};
use crate::federation::client::FedClient;
use crate::federation::SchemaDeviation;
use crate::validate::{self, Part};

/// How long the peer waits for the homeserver (userinfo, keys, onbind).
const HOMESERVER_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of each kind the peer keeps (accounts, sessions, invitations).
const KEPT: usize = 10_000;
/// The terms of service every account must accept before using the service.
const POLICY: &str = "privacy_policy";
const POLICY_VERSION: &str = "1.0";

/// Who made a request to the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// Over HTTPS: the homeserver (nothing else is told where the peer listens).
    Homeserver,
    /// A scenario step, as the user's client (in process).
    Scenario,
}

/// One request the peer served, or made to the homeserver.
#[derive(Clone, Debug)]
pub struct Exchange {
    pub at: Instant,
    /// `identity/<operationId>` for a request it served, `server-server/<operationId>` for one
    /// it made to the homeserver.
    pub operation: String,
    /// The Matrix users it concerns, by which a scenario finds its own.
    pub users: Vec<String>,
    /// What scenarios match and capture: `{caller, method, path, query, body, origin,
    /// signed_as, status, answer}`.
    pub record: Value,
    /// How it broke the spec (the request against the schema, the homeserver's signature or
    /// answer); empty when it conforms.
    pub violations: Vec<String>,
}

/// The exchanges of the identity peer, newest last.
#[derive(Debug)]
pub struct Exchanges(Inbox<Exchange>);

impl Default for Exchanges {
    fn default() -> Exchanges {
        Exchanges(Inbox::new(10_000))
    }
}

impl Exchanges {
    fn put(&self, e: Exchange) {
        self.0.put([e]);
    }

    /// Waits until an exchange satisfies `pick` (it stays for others to find), for at most
    /// `within`; `Err` names how many exchanges there were.
    pub async fn find(
        &self,
        pick: impl Fn(&Exchange) -> bool,
        within: Duration,
    ) -> Result<Exchange, usize> {
        self.0
            .wait(within, |all| all.iter().find(|e| pick(e)).cloned())
            .await
    }

    /// The exchanges that concern one of `users`, and those since `since` that concern nobody
    /// but broke the spec (they cannot be told apart, so each scenario running then answers
    /// for them).
    pub fn concerning(&self, users: &[String], since: Instant) -> Vec<Exchange> {
        let Ok(all) = self.0.items.lock() else {
            return Vec::new();
        };
        all.iter()
            .filter(|e| {
                e.users.iter().any(|u| users.contains(u))
                    || (e.users.is_empty() && e.at >= since && !e.violations.is_empty())
            })
            .cloned()
            .collect()
    }
}

/// A request as the peer sees it.
#[derive(Clone, Debug)]
pub struct Call {
    pub caller: Caller,
    pub method: String,
    /// The path, percent-encoded as sent.
    pub path: String,
    /// The query string as sent (without `?`).
    pub query: Option<String>,
    /// Every `Authorization` header.
    pub authorization: Vec<String>,
    pub body: Bytes,
}

#[derive(Clone, Debug)]
struct Session {
    medium: String,
    address: String,
    client_secret: String,
    token: String,
    send_attempt: i64,
    validated_at: Option<u64>,
}

#[derive(Clone, Debug)]
struct Invitation {
    medium: String,
    address: String,
    room_id: String,
    sender: String,
    token: String,
    /// The ephemeral key made for it (valid until the invitation is delivered).
    key: SigningKey,
    delivered: bool,
}

/// What the peer keeps.
#[derive(Default)]
struct Books {
    /// Access token -> user.
    accounts: BTreeMap<String, String>,
    /// Users who accepted the terms.
    agreed: BTreeSet<String>,
    sessions: BTreeMap<String, Session>,
    /// (medium, address) -> (user, bound at).
    bindings: BTreeMap<(String, String), (String, u64)>,
    invitations: Vec<Invitation>,
}

/// The identity server.
pub struct Identity {
    /// `127.0.0.1:<port>`: what homeservers are given as `id_server`.
    pub name: String,
    key: SigningKey,
    pepper: String,
    books: Mutex<Books>,
    pub exchanges: Arc<Exchanges>,
    mailbox: Arc<Mailbox>,
    /// The server under test's federation API, once the run knows it.
    homeserver: OnceLock<Arc<FedClient>>,
    /// Its keys, fetched when a signature needs them.
    homeserver_keys: Mutex<Option<ServerKeys>>,
    http: reqwest::Client,
    issued: AtomicU64,
    /// The profile's known schema violations of the homeserver's requests.
    tolerated: Vec<SchemaDeviation>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("name", &self.name)
            .finish()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn random_text() -> String {
    SigningKey::generate(None)
        .map(|k| {
            k.public_base64()
                .replace(['+', '/'], "x")
                .chars()
                .take(24)
                .collect()
        })
        .unwrap_or_else(|_| now_ms().to_string())
}

/// The unpadded base64 of a key's private seed (what `sign-ed25519` is given back).
fn private_base64(key: &SigningKey) -> String {
    key.to_file_line()
        .split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .to_string()
}

/// The sha256 lookup hash of `address medium pepper` (URL-safe unpadded base64).
pub fn lookup_hash(address: &str, medium: &str, pepper: &str) -> String {
    let digest = Sha256::digest(format!("{address} {medium} {pepper}").as_bytes());
    mxconform_pdu::base64::encode_url_safe(&digest)
}

/// An address shown without giving it away (`a…@e…`).
fn redacted(address: &str) -> String {
    match address.split_once('@') {
        Some((local, domain)) => format!(
            "{}...@{}...",
            local.chars().next().unwrap_or('x'),
            domain.chars().next().unwrap_or('x')
        ),
        None => format!("{}...", address.chars().take(3).collect::<String>()),
    }
}

/// The identity-service operation a request is for: the literal paths before templated ones
/// (`/pubkey/isvalid` before `/pubkey/{keyId}`), and its decoded path parameters.
pub fn match_route(method: &str, path: &str) -> Option<(&'static Route, Vec<(String, String)>)> {
    crate::match_route_among(
        mxconform_generated::routes().filter(|r| r.group == Group::Identity),
        method,
        path,
    )
}

/// An identity-service operation by its id.
pub fn route(operation_id: &str) -> Option<&'static Route> {
    mxconform_generated::routes()
        .find(|r| r.group == Group::Identity && r.operation_id == operation_id)
}

/// Checks that a homeserver signed a request as the server-server API's request
/// authentication does, for the identity server `our_name`: an `X-Matrix` header whose origin
/// is `keys`' server, naming (if at all) `our_name` as destination, with a signature by one of
/// its keys over `{method, uri, origin, destination, content}`. The spec gives no other form
/// (matrix-spec#847), but Synapse and Sydent sign and check `destination_is` in place of
/// `destination` for identity servers; that form is accepted too. Returns the form used.
pub fn homeserver_signature(
    our_name: &str,
    keys: &ServerKeys,
    method: &str,
    uri: &str,
    authorization: &[String],
    content: &Value,
) -> Result<&'static str, String> {
    let mut problems = Vec::new();
    for header in authorization {
        let x = match xmatrix::parse(header) {
            Ok(x) => x,
            Err(xmatrix::XMatrixError::Scheme) => continue,
            Err(e) => {
                problems.push(e.to_string());
                continue;
            }
        };
        if x.origin != keys.server_name {
            problems.push(format!(
                "signed as {}, not as the homeserver {}",
                x.origin, keys.server_name
            ));
            continue;
        }
        let Some((key, _)) = keys.key(&x.key) else {
            problems.push(format!("{} publishes no key {}", keys.server_name, x.key));
            continue;
        };
        match x.verify(our_name, method, uri, Some(content), key) {
            Ok(()) => return Ok("destination"),
            Err(xmatrix::XMatrixError::Signature(_)) => {}
            Err(e) => {
                problems.push(e.to_string());
                continue;
            }
        }
        let signed = json!({
            "method": method,
            "uri": uri,
            "origin": x.origin,
            "destination_is": our_name,
            "content": content,
            "signatures": {x.origin.clone(): {x.key.clone(): x.sig.clone()}},
        });
        if sign::verify_signature(&signed, &x.origin, key).is_ok() {
            return Ok("destination_is");
        }
        problems.push(format!(
            "the signature by {} does not verify over the request (method, uri, origin, destination, content)",
            x.key
        ));
    }
    if problems.is_empty() {
        problems.push("no X-Matrix authorization".into());
    }
    Err(problems.join("; "))
}

/// An answer of the peer: status, body, the users it concerns beside the caller, and what it
/// adds to the exchange's record.
struct Answered {
    status: u16,
    body: Value,
    users: Vec<String>,
    extra: Vec<(&'static str, Value)>,
    violations: Vec<String>,
}

fn answered(status: u16, body: Value) -> Answered {
    Answered {
        status,
        body,
        users: Vec::new(),
        extra: Vec::new(),
        violations: Vec::new(),
    }
}

fn error(status: u16, errcode: &str, message: &str) -> Answered {
    answered(status, json!({"errcode": errcode, "error": message}))
}

impl Identity {
    pub fn new(name: String, mailbox: Arc<Mailbox>) -> Result<Identity, String> {
        let http = crate::http_client_builder()
            .timeout(HOMESERVER_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            // No pooled connections: the peer is called from the peers' runtime and from
            // scenarios' (in process), and a pooled connection belongs to one runtime.
            .pool_max_idle_per_host(0)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("making the identity peer's client: {e}"))?;
        Ok(Identity {
            name,
            key: SigningKey::generate(Some("0")).map_err(|e| e.to_string())?,
            pepper: random_text(),
            books: Mutex::new(Books::default()),
            exchanges: Arc::new(Exchanges::default()),
            mailbox,
            homeserver: OnceLock::new(),
            homeserver_keys: Mutex::new(None),
            http,
            issued: AtomicU64::new(0),
            tolerated: Vec::new(),
        })
    }

    /// Tells the peer where the server under test's federation API is (for OpenID tokens,
    /// signatures and onbind).
    pub fn connect(&self, homeserver: Arc<FedClient>) {
        let _ = self.homeserver.set(homeserver);
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.name)
    }

    fn key_validity_url(&self, ephemeral: bool) -> String {
        let tail = if ephemeral {
            "ephemeral/isvalid"
        } else {
            "isvalid"
        };
        format!("{}/_matrix/identity/v2/pubkey/{tail}", self.url())
    }

    fn books(&self) -> std::sync::MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Answers one request and keeps the exchange; also returns how the request broke the spec
    /// (kept with the exchange only for the homeserver's requests: a scenario's step reports
    /// its own at once).
    pub async fn answer(self: &Arc<Self>, call: Call) -> (u16, Value, Vec<String>) {
        let query = super::query_pairs(call.query.as_deref());
        let query_json: serde_json::Map<String, Value> =
            query.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        let body: Option<Value> = if call.body.is_empty() {
            None
        } else {
            serde_json::from_slice(&call.body).ok()
        };
        let uri = match &call.query {
            Some(q) => format!("{}?{q}", call.path),
            None => call.path.clone(),
        };
        let mut owner = None;
        let (operation, a) = match match_route(&call.method, &call.path) {
            None => (
                "identity/?".to_string(),
                Answered {
                    violations: vec![format!(
                        "{} {} is no identity-service operation",
                        call.method, call.path
                    )],
                    ..error(404, "M_UNRECOGNIZED", "no such operation")
                },
            ),
            Some((route, params)) => {
                let a = self
                    .serve(
                        route,
                        &params,
                        &query,
                        &call,
                        &uri,
                        body.as_ref(),
                        &mut owner,
                    )
                    .await;
                (format!("identity/{}", route.operation_id), a)
            }
        };
        let Answered {
            status,
            body: answer,
            mut users,
            extra,
            mut violations,
        } = a;
        if let Some(r) = route(operation.trim_start_matches("identity/")) {
            match validate::validate_in(
                Group::Identity,
                r.operation_id,
                &Part::Response(status),
                &answer,
            ) {
                Ok(Some(v)) if !v.is_empty() => violations.push(format!(
                    "the identity peer's own answer breaks the schema (a harness bug): {}",
                    v.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                )),
                Err(e) => violations.push(e),
                _ => {}
            }
        }
        users.extend(owner);
        users.sort();
        users.dedup();
        let mut record = json!({
            "caller": match call.caller { Caller::Homeserver => "homeserver", Caller::Scenario => "scenario" },
            "method": call.method,
            "path": call.path,
            "query": query_json,
            "body": body.clone().unwrap_or(Value::Null),
            "status": status,
            "answer": answer,
        });
        for (k, v) in extra {
            record[k] = v;
        }
        self.exchanges.put(Exchange {
            at: Instant::now(),
            operation,
            users,
            record,
            violations: match call.caller {
                Caller::Homeserver => violations.clone(),
                Caller::Scenario => Vec::new(),
            },
        });
        (status, answer, violations)
    }

    #[allow(clippy::too_many_arguments)]
    async fn serve(
        self: &Arc<Self>,
        route: &'static Route,
        params: &[(String, String)],
        query: &[(String, String)],
        call: &Call,
        uri: &str,
        body: Option<&Value>,
        owner: &mut Option<String>,
    ) -> Answered {
        let mut violations = Vec::new();
        let op = route.operation_id;
        for p in route
            .params
            .iter()
            .filter(|p| p.location == ParamLocation::Query)
        {
            if p.required && !query.iter().any(|(k, _)| k == p.name) {
                violations.push(format!(
                    "the request lacks the query parameter `{}`",
                    p.name
                ));
            }
        }
        let body = match (route.request_body, body) {
            (BodyKind::Json, Some(b)) => b.clone(),
            (BodyKind::Json, None) if !call.body.is_empty() => {
                return Answered {
                    violations: vec!["the request body is not JSON".into()],
                    ..error(400, "M_NOT_JSON", "the body is not JSON")
                };
            }
            (BodyKind::Json, None) => json!({}),
            _ => Value::Null,
        };
        if route.request_body == BodyKind::Json {
            match validate::validate_in(Group::Identity, op, &Part::Request, &body) {
                Ok(Some(v)) => violations.extend(
                    crate::federation::client::untolerated(op, "request", v, &self.tolerated)
                        .iter()
                        .map(|v| format!("the request {v}")),
                ),
                Ok(None) => {}
                Err(e) => violations.push(e),
            }
        }
        let token = call
            .authorization
            .iter()
            .find_map(|h| h.strip_prefix("Bearer "))
            .map(str::to_string)
            .or_else(|| {
                query
                    .iter()
                    .find(|(k, _)| k == "access_token")
                    .map(|(_, v)| v.clone())
            });
        *owner = token
            .as_ref()
            .and_then(|t| self.books().accounts.get(t).cloned());
        // A homeserver unbinds with its signature rather than a token.
        let needs_account = route.auth == Auth::Required && op != "unbindV2";
        if needs_account && owner.is_none() {
            let what = match token {
                None => "no access token",
                Some(_) => "unknown access token",
            };
            return Answered {
                violations,
                ..error(401, "M_UNAUTHORIZED", what)
            };
        }
        let exempt = matches!(op, "getAccount" | "logout" | "agreeToTerms");
        if needs_account && !exempt {
            let user = owner.clone().unwrap_or_default();
            if !self.books().agreed.contains(&user) {
                return Answered {
                    violations,
                    ..error(
                        403,
                        "M_TERMS_NOT_SIGNED",
                        "accept the terms of service first (GET /terms, POST /terms)",
                    )
                };
            }
        }
        let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
        let field = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let mut a = match op {
            "getVersions" => answered(
                200,
                json!({"versions": ["v1.1", "v1.2", "v1.5", "v1.10", "v1.19"]}),
            ),
            "pingV2" => answered(200, json!({})),
            "registerAccount" => self.register(&body).await,
            "getAccount" => answered(200, json!({"user_id": owner.clone().unwrap_or_default()})),
            "logout" => {
                if let Some(t) = &token {
                    self.books().accounts.remove(t);
                }
                answered(200, json!({}))
            }
            "getTerms" => answered(200, self.terms()),
            "agreeToTerms" => {
                let url = self.terms()["policies"][POLICY]["en"]["url"].clone();
                let accepts = body
                    .get("user_accepts")
                    .and_then(Value::as_array)
                    .is_some_and(|a| a.contains(&url));
                if accepts {
                    self.books()
                        .agreed
                        .insert(owner.clone().unwrap_or_default());
                }
                answered(200, json!({}))
            }
            "getHashDetails" => answered(
                200,
                json!({"algorithms": ["none", "sha256"], "lookup_pepper": self.pepper}),
            ),
            "lookupUsersV2" => self.lookup(&body),
            "emailRequestTokenV2" => self.request_token(&body, "email"),
            "msisdnRequestTokenV2" => self.request_token(&body, "msisdn"),
            "emailSubmitTokenPostV2" | "msisdnSubmitTokenPostV2" => {
                let ok = self.submit_token(text("sid"), text("client_secret"), text("token"));
                answered(200, json!({"success": ok}))
            }
            "emailSubmitTokenGetV2" | "msisdnSubmitTokenGetV2" => {
                let ok = self.submit_token(field("sid"), field("client_secret"), field("token"));
                if ok {
                    answered(200, json!({"success": true}))
                } else {
                    error(403, "M_FORBIDDEN", "unknown session or wrong token")
                }
            }
            "getValidated3pidV2" => self.validated(field("sid"), field("client_secret")),
            "bindV2" => self.bind(&body),
            "unbindV2" => self.unbind(call, uri, &body).await,
            "storeInviteV2" => self.store_invite(&body),
            "blindlySignStuffV2" => self.sign_invitation(&body),
            "getPubKeyV2" => {
                let id = params
                    .iter()
                    .find(|(k, _)| k == "keyId")
                    .map(|(_, v)| v.as_str());
                if id == Some(self.key.key_id()) {
                    answered(200, json!({"public_key": self.key.public_base64()}))
                } else {
                    error(404, "M_NOT_FOUND", "no such key")
                }
            }
            "isPubKeyValidV2" => answered(
                200,
                json!({"valid": field("public_key").as_deref() == Some(&self.key.public_base64())}),
            ),
            "isEphemeralPubKeyValidV2" => {
                let key = field("public_key").unwrap_or_default();
                let books = self.books();
                let found = books
                    .invitations
                    .iter()
                    .find(|i| i.key.public_base64() == key);
                let mut a = answered(200, json!({"valid": found.is_some_and(|i| !i.delivered)}));
                a.users.extend(found.map(|i| i.sender.clone()));
                a
            }
            _ => error(
                404,
                "M_UNRECOGNIZED",
                "the identity peer does not serve this",
            ),
        };
        a.violations.splice(0..0, violations);
        a
    }

    fn terms(&self) -> Value {
        json!({"policies": {POLICY: {
            "version": POLICY_VERSION,
            "en": {"name": "Privacy policy", "url": format!("{}/terms/{POLICY}-{POLICY_VERSION}.html", self.url())}
        }}})
    }

    /// An account for the user an OpenID token stands for, as the homeserver confirms it.
    async fn register(&self, body: &Value) -> Answered {
        let (Some(token), Some(server)) = (
            body.get("access_token").and_then(Value::as_str),
            body.get("matrix_server_name").and_then(Value::as_str),
        ) else {
            return error(
                400,
                "M_BAD_JSON",
                "access_token and matrix_server_name are required",
            );
        };
        let Some(hs) = self.homeserver.get() else {
            return error(
                403,
                "M_UNAUTHORIZED",
                "the identity peer cannot check OpenID tokens: the profile has no [federation] to reach the homeserver",
            );
        };
        if server != hs.target.server_name {
            return error(
                403,
                "M_UNAUTHORIZED",
                &format!(
                    "the identity peer knows only the homeserver {}",
                    hs.target.server_name
                ),
            );
        }
        let route = crate::federation::client::route("exchangeOpenIdToken");
        let url = format!(
            "{}/_matrix/federation/v1/openid/userinfo?access_token={}",
            hs.target.base_url,
            percent_encoding::utf8_percent_encode(token, percent_encoding::NON_ALPHANUMERIC)
        );
        let (status, answer, mut violations) =
            match self.fetch(reqwest::Method::GET, &url, None).await {
                Ok(a) => a,
                Err(e) => {
                    return Answered {
                        violations: vec![format!("the homeserver's userinfo: {e}")],
                        ..error(502, "M_UNKNOWN", "cannot reach the homeserver")
                    }
                }
            };
        let checked = crate::federation::client::Answer {
            status,
            body: answer.clone(),
        };
        if let Err(e) = crate::federation::client::check(route, &checked, &hs.tolerated) {
            violations.push(e);
        }
        let sub = answer
            .get("sub")
            .and_then(Value::as_str)
            .map(str::to_string);
        self.exchanges.put(Exchange {
            at: Instant::now(),
            operation: "server-server/exchangeOpenIdToken".into(),
            users: sub.iter().cloned().collect(),
            record: json!({"caller": "identity", "status": status, "answer": answer}),
            violations: violations.clone(),
        });
        let Some(sub) = sub.filter(|s| s.ends_with(&format!(":{server}")) && status == 200) else {
            return error(
                401,
                "M_UNAUTHORIZED",
                "the homeserver does not vouch for that token",
            );
        };
        let token = format!(
            "ist_{}_{}",
            random_text(),
            self.issued.fetch_add(1, Ordering::Relaxed)
        );
        let mut books = self.books();
        if books.accounts.len() >= KEPT {
            if let Some(first) = books.accounts.keys().next().cloned() {
                books.accounts.remove(&first);
            }
        }
        books.accounts.insert(token.clone(), sub.clone());
        let mut a = answered(200, json!({"token": token}));
        a.users.push(sub);
        a
    }

    fn lookup(&self, body: &Value) -> Answered {
        let algorithm = body.get("algorithm").and_then(Value::as_str).unwrap_or("");
        if body.get("pepper").and_then(Value::as_str) != Some(self.pepper.as_str()) {
            return error(400, "M_INVALID_PEPPER", "the pepper is not the current one")
                .with_body_field("algorithm", json!(algorithm))
                .with_body_field("lookup_pepper", json!(self.pepper));
        }
        let books = self.books();
        let key_of = |medium: &str, address: &str| match algorithm {
            "sha256" => Some(lookup_hash(address, medium, &self.pepper)),
            "none" => Some(format!("{address} {medium}")),
            _ => None,
        };
        if key_of("email", "x").is_none() {
            return error(
                400,
                "M_INVALID_PARAM",
                "the algorithm is neither sha256 nor none",
            );
        }
        let wanted: BTreeSet<&str> = body
            .get("addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let mut mappings = serde_json::Map::new();
        let mut users = Vec::new();
        for ((medium, address), (mxid, _)) in &books.bindings {
            if let Some(k) = key_of(medium, address).filter(|k| wanted.contains(k.as_str())) {
                mappings.insert(k, json!(mxid));
                users.push(mxid.clone());
            }
        }
        let mut a = answered(200, json!({"mappings": mappings}));
        a.users = users;
        a
    }

    fn request_token(&self, body: &Value, medium: &str) -> Answered {
        let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
        let Some(secret) = text("client_secret") else {
            return error(400, "M_MISSING_PARAMS", "client_secret is required");
        };
        let address = if medium == "email" {
            match text("email").filter(|e| e.contains('@')) {
                Some(e) => e.to_lowercase(),
                None => return error(400, "M_INVALID_EMAIL", "not an e-mail address"),
            }
        } else {
            match (text("country"), text("phone_number")) {
                (Some(c), Some(n)) => match super::msisdn(&c, &n) {
                    Some(m) => m,
                    None => {
                        return error(
                            400,
                            "M_INVALID_ADDRESS",
                            "not a phone number of a known country",
                        )
                    }
                },
                _ => {
                    return error(
                        400,
                        "M_MISSING_PARAMS",
                        "country and phone_number are required",
                    )
                }
            }
        };
        let attempt = body
            .get("send_attempt")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let mut books = self.books();
        let existing = books
            .sessions
            .iter()
            .find(|(_, s)| s.client_secret == secret && s.address == address && s.medium == medium)
            .map(|(sid, s)| (sid.clone(), s.send_attempt));
        if let Some((sid, last)) = &existing {
            if attempt <= *last {
                return answered(200, json!({"sid": sid}));
            }
        }
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        let sid = existing.map_or_else(|| format!("is{n}{}", random_text()), |(sid, _)| sid);
        let token = format!("{:06}", (n * 7919 + 104_729) % 1_000_000);
        if books.sessions.len() >= KEPT {
            books.sessions.clear();
        }
        books.sessions.insert(
            sid.clone(),
            Session {
                medium: medium.into(),
                address: address.clone(),
                client_secret: secret,
                token: token.clone(),
                send_attempt: attempt,
                validated_at: None,
            },
        );
        drop(books);
        self.mailbox.put(Mail {
            from: format!("identity server {}", self.name),
            to: vec![address],
            text: format!(
                "Your identity server validation code is {token}\n(session {sid} on {})\n",
                self.name
            ),
            headers: None,
        });
        answered(200, json!({"sid": sid}))
    }

    fn submit_token(
        &self,
        sid: Option<String>,
        secret: Option<String>,
        token: Option<String>,
    ) -> bool {
        let mut books = self.books();
        match sid.and_then(|sid| books.sessions.get_mut(&sid)) {
            Some(s)
                if Some(&s.client_secret) == secret.as_ref()
                    && Some(&s.token) == token.as_ref() =>
            {
                s.validated_at.get_or_insert_with(now_ms);
                true
            }
            _ => false,
        }
    }

    /// The validated session `sid` with its secret, or the error the spec gives.
    fn session(&self, sid: Option<&str>, secret: Option<&str>) -> Result<Session, Answered> {
        let books = self.books();
        match sid.and_then(|sid| books.sessions.get(sid)) {
            Some(s) if Some(s.client_secret.as_str()) == secret => {
                if s.validated_at.is_some() {
                    Ok(s.clone())
                } else {
                    Err(error(
                        400,
                        "M_SESSION_NOT_VALIDATED",
                        "the code has not been submitted",
                    ))
                }
            }
            _ => Err(error(404, "M_NO_VALID_SESSION", "no such session")),
        }
    }

    fn validated(&self, sid: Option<String>, secret: Option<String>) -> Answered {
        match self.session(sid.as_deref(), secret.as_deref()) {
            Ok(s) => answered(
                200,
                json!({"medium": s.medium, "address": s.address, "validated_at": s.validated_at}),
            ),
            Err(a) => a,
        }
    }

    /// Binds the session's address to `mxid`, answers the signed association, and tells the
    /// homeserver of the invitations the address had waiting.
    fn bind(self: &Arc<Self>, body: &Value) -> Answered {
        let text = |k: &str| body.get(k).and_then(Value::as_str);
        let session = match self.session(text("sid"), text("client_secret")) {
            Ok(s) => s,
            Err(a) => return a,
        };
        let Some(mxid) = text("mxid").map(str::to_string) else {
            return error(400, "M_MISSING_PARAMS", "mxid is required");
        };
        let ts = now_ms();
        let mut association = json!({
            "address": session.address,
            "medium": session.medium,
            "mxid": mxid,
            "not_before": ts,
            "not_after": ts + 100 * 365 * 24 * 3600 * 1000,
            "ts": ts,
        });
        sign::sign_json(&mut association, &self.name, &self.key);
        let pending: Vec<Invitation> = {
            let mut books = self.books();
            books.bindings.insert(
                (session.medium.clone(), session.address.clone()),
                (mxid.clone(), ts),
            );
            books
                .invitations
                .iter_mut()
                .filter(|i| {
                    i.medium == session.medium && i.address == session.address && !i.delivered
                })
                .map(|i| {
                    i.delivered = true;
                    i.clone()
                })
                .collect()
        };
        let mut a = answered(200, association);
        a.users.push(mxid.clone());
        if !pending.is_empty() {
            a.users.extend(pending.iter().map(|i| i.sender.clone()));
            let invites: Vec<Value> = pending
                .iter()
                .map(|i| {
                    let mut signed = json!({"mxid": mxid, "sender": i.sender, "token": i.token});
                    sign::sign_json(&mut signed, &self.name, &self.key);
                    json!({
                        "address": i.address, "medium": i.medium, "mxid": mxid,
                        "room_id": i.room_id, "sender": i.sender, "signed": signed,
                    })
                })
                .collect();
            let notice = json!({
                "address": session.address, "medium": session.medium, "mxid": mxid,
                "invites": invites,
            });
            let senders: Vec<String> = pending.iter().map(|i| i.sender.clone()).collect();
            let me = self.clone();
            tokio::spawn(async move { me.on_bind(notice, senders).await });
        }
        a
    }

    /// `PUT /_matrix/federation/v1/3pid/onbind` to the homeserver of the bound user.
    async fn on_bind(self: Arc<Self>, notice: Value, senders: Vec<String>) {
        let mxid = notice["mxid"].as_str().unwrap_or_default().to_string();
        let mut users = senders;
        users.push(mxid.clone());
        let mut violations = Vec::new();
        let (status, answer) = match self.homeserver.get() {
            Some(hs) if mxid.ends_with(&format!(":{}", hs.target.server_name)) => {
                let url = format!("{}/_matrix/federation/v1/3pid/onbind", hs.target.base_url);
                match self.fetch(reqwest::Method::PUT, &url, Some(&notice)).await {
                    Ok((status, answer, v)) => {
                        violations.extend(v);
                        let checked = crate::federation::client::Answer {
                            status,
                            body: answer.clone(),
                        };
                        let route = crate::federation::client::route("onBindThirdPartyIdentifier");
                        if let Err(e) =
                            crate::federation::client::check(route, &checked, &hs.tolerated)
                        {
                            violations.push(e);
                        }
                        if status != 200 {
                            violations.push(format!(
                                "the homeserver answered PUT /_matrix/federation/v1/3pid/onbind with {status}: {answer}"
                            ));
                        }
                        (status, answer)
                    }
                    Err(e) => {
                        violations.push(format!("the homeserver's onbind: {e}"));
                        (0, Value::Null)
                    }
                }
            }
            _ => (
                0,
                json!({"skipped": "the bound user is not on the server under test"}),
            ),
        };
        self.exchanges.put(Exchange {
            at: Instant::now(),
            operation: "server-server/onBindThirdPartyIdentifier".into(),
            users,
            record: json!({"caller": "identity", "method": "PUT", "body": notice, "status": status, "answer": answer}),
            violations,
        });
    }

    /// Removes a binding: the homeserver of `mxid` signs the request, or the caller proves the
    /// address with its validated session.
    async fn unbind(&self, call: &Call, uri: &str, body: &Value) -> Answered {
        let mxid = body
            .get("mxid")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let medium = body
            .pointer("/threepid/medium")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let address = body
            .pointer("/threepid/address")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let mut extra = Vec::new();
        let mut violations = Vec::new();
        let text = |k: &str| body.get(k).and_then(Value::as_str);
        let by_session = text("sid").is_some() && text("client_secret").is_some();
        if by_session {
            match self.session(text("sid"), text("client_secret")) {
                Ok(s) if s.medium == medium && s.address == address => {}
                Ok(_) => return error(403, "M_FORBIDDEN", "the session is for another address"),
                Err(a) => return a,
            }
        } else {
            let signed = match self.homeserver_keys().await {
                Ok(keys) => homeserver_signature(
                    &self.name,
                    &keys,
                    &call.method,
                    uri,
                    &call.authorization,
                    body,
                )
                .and_then(|form| {
                    (mxid.ends_with(&format!(":{}", keys.server_name)))
                        .then_some(form)
                        .ok_or_else(|| format!("{} does not control {mxid}", keys.server_name))
                }),
                Err(e) => Err(e),
            };
            match signed {
                Ok(form) => {
                    extra.push(("origin", json!(mxid.split_once(':').map(|(_, s)| s))));
                    extra.push(("signed_as", json!(form)));
                }
                Err(e) => {
                    // An unbind the homeserver could not sign is its failure.
                    if call.caller == Caller::Homeserver {
                        violations.push(format!(
                            "an unbind without a valid homeserver signature: {e}"
                        ));
                    }
                    let mut a = error(
                        403,
                        "M_FORBIDDEN",
                        &format!("Invalid homeserver signature: {e}"),
                    );
                    a.violations = violations;
                    a.users.push(mxid);
                    return a;
                }
            }
        }
        {
            let mut books = self.books();
            let key = (medium, address);
            if books.bindings.get(&key).is_some_and(|(m, _)| *m == mxid) {
                books.bindings.remove(&key);
            }
        }
        let mut a = answered(200, json!({}));
        a.users.push(mxid);
        a.extra = extra;
        a.violations = violations;
        a
    }

    fn store_invite(&self, body: &Value) -> Answered {
        let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
        let (Some(medium), Some(address), Some(room_id), Some(sender)) = (
            text("medium"),
            text("address"),
            text("room_id"),
            text("sender"),
        ) else {
            return error(
                400,
                "M_MISSING_PARAMS",
                "medium, address, room_id and sender are required",
            );
        };
        if medium != "email" {
            return error(
                400,
                "M_UNRECOGNIZED",
                "only e-mail addresses can be invited",
            );
        }
        let address = address.to_lowercase();
        let key = match SigningKey::generate(Some("0")) {
            Ok(k) => k,
            Err(e) => return error(500, "M_UNKNOWN", &e.to_string()),
        };
        let token = format!(
            "inv{}{}",
            self.issued.fetch_add(1, Ordering::Relaxed),
            random_text()
        );
        {
            let mut books = self.books();
            if books
                .bindings
                .contains_key(&(medium.clone(), address.clone()))
            {
                return error(
                    400,
                    "M_THREEPID_IN_USE",
                    "that address is bound to a Matrix user",
                );
            }
            if books.invitations.len() >= KEPT {
                books.invitations.remove(0);
            }
            books.invitations.push(Invitation {
                medium: medium.clone(),
                address: address.clone(),
                room_id: room_id.clone(),
                sender: sender.clone(),
                token: token.clone(),
                key: key.clone(),
                delivered: false,
            });
        }
        let inviter = text("sender_display_name").unwrap_or_else(|| sender.clone());
        let room = text("room_name").unwrap_or_else(|| room_id.clone());
        self.mailbox.put(Mail {
            from: format!("identity server {}", self.name),
            to: vec![address.clone()],
            text: format!(
                "{inviter} invited you to {room} on Matrix.\nRoom: {room_id}\nToken: {token}\nKey: {}\n",
                private_base64(&key)
            ),
            headers: None,
        });
        let mut a = answered(
            200,
            json!({
                "token": token,
                "public_keys": [
                    {"public_key": self.key.public_base64(), "key_validity_url": self.key_validity_url(false)},
                    {"public_key": key.public_base64(), "key_validity_url": self.key_validity_url(true)},
                ],
                "display_name": redacted(&address),
            }),
        );
        a.users.push(sender);
        a
    }

    /// Signs `{mxid, sender, token}` of an invitation with its ephemeral key, given back.
    fn sign_invitation(&self, body: &Value) -> Answered {
        let text = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or("");
        let (mxid, token, private) = (text("mxid"), text("token"), text("private_key"));
        let books = self.books();
        let Some(inv) = books.invitations.iter().find(|i| i.token == token) else {
            return error(404, "M_NOT_FOUND", "no invitation with that token");
        };
        let given = mxconform_pdu::base64::decode(private)
            .and_then(|seed| SigningKey::from_seed(&seed, "0").ok());
        let Some(key) = given.filter(|k| k.public_base64() == inv.key.public_base64()) else {
            return error(403, "M_FORBIDDEN", "that is not the invitation's key");
        };
        let mut signed = json!({"mxid": mxid, "sender": inv.sender, "token": token});
        sign::sign_json(&mut signed, &self.name, &key);
        let mut a = answered(200, signed);
        a.users.extend([mxid.to_string(), inv.sender.clone()]);
        a
    }

    /// The homeserver's published keys (fetched once, and again when asked for a key they
    /// lack).
    async fn homeserver_keys(&self) -> Result<ServerKeys, String> {
        if let Some(k) = self.homeserver_keys.lock().ok().and_then(|k| k.clone()) {
            return Ok(k);
        }
        let hs = self.homeserver.get().ok_or(
            "the identity peer does not know the homeserver (the profile has no [federation])",
        )?;
        let url = format!("{}/_matrix/key/v2/server", hs.target.base_url);
        let (status, doc, _) = self.fetch(reqwest::Method::GET, &url, None).await?;
        if status != 200 {
            return Err(format!("the homeserver's key document: {status} {doc}"));
        }
        let keys = verify_server_key_document(&doc, &hs.target.server_name)
            .map_err(|e| format!("the homeserver's key document: {e}"))?;
        if let Ok(mut k) = self.homeserver_keys.lock() {
            *k = Some(keys.clone());
        }
        Ok(keys)
    }

    /// A request to the homeserver: status, JSON body, and what is wrong with the answer's form.
    async fn fetch(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value, Vec<String>), String> {
        let mut req = self.http.request(method, url);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status().as_u16();
        let mut problems = Vec::new();
        let bytes = resp.bytes().await.map_err(|e| format!("{url}: {e}"))?;
        if bytes.len() > 1 << 20 {
            return Err(format!("{url}: an answer over 1 MiB"));
        }
        let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            problems.push(format!(
                "{url} answered {status} with a body that is not JSON"
            ));
            Value::String(String::from_utf8_lossy(&bytes).chars().take(200).collect())
        });
        Ok((status, body, problems))
    }
}

impl Answered {
    fn with_body_field(mut self, k: &str, v: Value) -> Answered {
        self.body[k] = v;
        self
    }
}

/// The identity peer with its port taken (bound before the peers' runtime starts, so that a
/// busy port fails the start) and its certificate.
pub struct Listening {
    pub identity: Arc<Identity>,
    listener: std::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
}

/// Takes `addr` (`127.0.0.1:0` for a free port) for an identity peer whose certificate
/// `authority` issues for 127.0.0.1; its mail goes to `mailbox`.
pub fn listen(
    addr: &str,
    authority: &crate::federation::tls::Authority,
    mailbox: Arc<Mailbox>,
    tolerated: Vec<SchemaDeviation>,
) -> Result<Listening, String> {
    let listener = std::net::TcpListener::bind(addr).map_err(|e| {
        format!("cannot listen on {addr} for the identity server: {e} (is another run using it?)")
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("the identity server's socket: {e}"))?;
    let port = listener
        .local_addr()
        .map_err(|e| format!("the identity server's address: {e}"))?
        .port();
    let tls = authority.server_config("127.0.0.1")?;
    let mut identity = Identity::new(format!("127.0.0.1:{port}"), mailbox)?;
    identity.tolerated = tolerated;
    let identity = Arc::new(identity);
    Ok(Listening {
        identity,
        listener,
        tls,
    })
}

impl Listening {
    /// Serves until the runtime stops (call on the peers' runtime).
    pub async fn serve(self) {
        match TcpListener::from_std(self.listener) {
            Ok(l) => serve(l, self.tls, self.identity).await,
            Err(e) => eprintln!("mxconform: the identity server cannot listen: {e}"),
        }
    }
}

/// Serves `identity` over HTTPS on `listener` (the certificate in `tls`), until dropped.
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, identity: Arc<Identity>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let acceptor = acceptor.clone();
        let identity = identity.clone();
        tokio::spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(sock)).await
            else {
                return;
            };
            let io = hyper_util::rt::TokioIo::new(tls);
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let identity = identity.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let bytes = match Limited::new(body, 1 << 20).collect().await {
                        Ok(c) => c.to_bytes(),
                        Err(_) => {
                            return Ok::<_, std::convert::Infallible>(super::json_answer(
                                413,
                                json!({"errcode": "M_TOO_LARGE", "error": "over 1 MiB"}),
                            ))
                        }
                    };
                    let call = Call {
                        caller: Caller::Homeserver,
                        method: parts.method.as_str().to_string(),
                        path: parts.uri.path().to_string(),
                        query: parts.uri.query().map(str::to_string),
                        authorization: parts
                            .headers
                            .get_all(hyper::header::AUTHORIZATION)
                            .iter()
                            .filter_map(|v| v.to_str().ok())
                            .map(str::to_string)
                            .collect(),
                        body: bytes,
                    };
                    let (status, answer, _) = identity.answer(call).await;
                    Ok(super::json_answer(status, answer))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_of(server: &str, key: &SigningKey) -> ServerKeys {
        let doc = mxconform_pdu::keys::server_key_document(server, &[key], &[], i64::MAX);
        verify_server_key_document(&doc, server).expect("a valid key document")
    }

    #[test]
    fn an_unbind_needs_the_homeservers_signature() {
        let hs_key = SigningKey::generate(Some("hs")).unwrap();
        let keys = keys_of("hs.test", &hs_key);
        let uri = "/_matrix/identity/v2/3pid/unbind";
        let body = json!({"mxid": "@a:hs.test", "threepid": {"medium": "email", "address": "a@example.org"}});
        let good =
            xmatrix::authorization("hs.test", "is.test:1", &hs_key, "POST", uri, Some(&body));
        assert_eq!(
            homeserver_signature("is.test:1", &keys, "POST", uri, &[good.clone()], &body),
            Ok("destination")
        );
        // Synapse's form: `destination_is` signed in place of `destination`.
        let mut synapse = json!({"method": "POST", "uri": uri, "origin": "hs.test", "destination_is": "is.test:1", "content": body});
        sign::sign_json(&mut synapse, "hs.test", &hs_key);
        let sig = synapse["signatures"]["hs.test"]["ed25519:hs"]
            .as_str()
            .unwrap()
            .to_string();
        let header = format!("X-Matrix origin=\"hs.test\",key=\"ed25519:hs\",sig=\"{sig}\",destination=\"is.test:1\"");
        assert_eq!(
            homeserver_signature("is.test:1", &keys, "POST", uri, &[header], &body),
            Ok("destination_is")
        );
        // Forged: another key under the homeserver's key id, another body, another destination,
        // another origin, or no signature at all.
        let other = SigningKey::generate(Some("hs")).unwrap();
        let forged =
            xmatrix::authorization("hs.test", "is.test:1", &other, "POST", uri, Some(&body));
        assert!(homeserver_signature("is.test:1", &keys, "POST", uri, &[forged], &body).is_err());
        let changed = json!({"mxid": "@b:hs.test", "threepid": {"medium": "email", "address": "a@example.org"}});
        assert!(
            homeserver_signature("is.test:1", &keys, "POST", uri, &[good.clone()], &changed)
                .is_err()
        );
        assert!(homeserver_signature("is.test:2", &keys, "POST", uri, &[good], &body).is_err());
        let elsewhere =
            xmatrix::authorization("evil.test", "is.test:1", &hs_key, "POST", uri, Some(&body));
        assert!(
            homeserver_signature("is.test:1", &keys, "POST", uri, &[elsewhere], &body).is_err()
        );
        assert!(
            homeserver_signature("is.test:1", &keys, "POST", uri, &["Bearer x".into()], &body)
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_forged_unbind_is_refused_and_the_binding_kept() {
        let id = Arc::new(Identity::new("is.test:1".into(), Arc::new(Mailbox::default())).unwrap());
        let hs_key = SigningKey::generate(Some("hs")).unwrap();
        *id.homeserver_keys.lock().unwrap() = Some(keys_of("hs.test", &hs_key));
        id.books().bindings.insert(
            ("email".into(), "a@example.org".into()),
            ("@a:hs.test".into(), 1),
        );
        let uri = "/_matrix/identity/v2/3pid/unbind";
        let body = json!({"mxid": "@a:hs.test", "threepid": {"medium": "email", "address": "a@example.org"}});
        let call = |auth: String| Call {
            caller: Caller::Homeserver,
            method: "POST".into(),
            path: uri.into(),
            query: None,
            authorization: vec![auth],
            body: Bytes::from(body.to_string()),
        };
        let forger = SigningKey::generate(Some("hs")).unwrap();
        let forged =
            xmatrix::authorization("hs.test", "is.test:1", &forger, "POST", uri, Some(&body));
        let (status, answer, _) = id.answer(call(forged)).await;
        assert_eq!(status, 403, "{answer}");
        assert_eq!(answer["errcode"], "M_FORBIDDEN");
        assert!(id
            .books()
            .bindings
            .contains_key(&("email".into(), "a@example.org".into())));
        let refused = id
            .exchanges
            .concerning(&["@a:hs.test".into()], Instant::now());
        assert!(
            refused[0].violations[0].contains("without a valid homeserver signature"),
            "{:?}",
            refused[0].violations
        );
        let good =
            xmatrix::authorization("hs.test", "is.test:1", &hs_key, "POST", uri, Some(&body));
        let (status, answer, _) = id.answer(call(good)).await;
        assert_eq!((status, answer), (200, json!({})));
        assert!(id.books().bindings.is_empty());
    }

    #[test]
    fn lookups_hash_as_the_spec_shows() {
        // The example of the identity service API's "Client behaviour" of hashing.
        assert_eq!(
            lookup_hash("alice@example.com", "email", "matrixrocks"),
            "4kenr7N9drpCJ4AfalmlGQVsOn3o2RHjkADUpXJWZUc"
        );
        assert_eq!(redacted("alice@example.org"), "a...@e...");
    }

    #[test]
    fn routes_match_literal_paths_first() {
        let (r, _) = match_route("GET", "/_matrix/identity/v2/pubkey/isvalid").unwrap();
        assert_eq!(r.operation_id, "isPubKeyValidV2");
        let (r, p) = match_route("GET", "/_matrix/identity/v2/pubkey/ed25519%3A0").unwrap();
        assert_eq!(r.operation_id, "getPubKeyV2");
        assert_eq!(p, [("keyId".to_string(), "ed25519:0".to_string())]);
        assert!(match_route("GET", "/_matrix/identity/api/v1/lookup").is_none());
    }
}
