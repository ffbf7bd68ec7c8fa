//! The scenario format: YAML files under `scenarios/<area>/`, read into these types and
//! checked against the route table when loaded, so that a typo fails before any request.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// One scenario file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// What the scenario shows, in a sentence.
    pub description: String,
    /// The spec section it checks (a link).
    pub spec: String,
    /// Users created fresh for this scenario (unique names), by the name steps use.
    #[serde(default)]
    pub actors: Vec<String>,
    /// Peers the scenario needs (`appservice`, `mail`, `web`); without them it is skipped.
    #[serde(default)]
    pub needs: Vec<String>,
    /// Room versions the scenario creates rooms of: skipped (with the reason) when the
    /// server's capabilities do not list one of them as available. Servers need not offer
    /// every version.
    #[serde(default)]
    pub room_versions: Vec<String>,
    /// Bound on the whole scenario, in milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// ed25519 keys made fresh for each run, by name: `{{keys.<name>.public}}` is the public
    /// key (unpadded base64), `{{keys.<name>.id}}` is `ed25519:<public key>` (and
    /// `{{keys.<name>.ptr}}` the public key escaped for a JSON pointer: base64 may hold `/`), and steps sign parts
    /// of their bodies with them (`sign`).
    #[serde(default)]
    pub keys: Vec<String>,
    /// Fake remote homeservers started for this scenario (fresh port, key and certificate
    /// each), by name: `{{<name>.server_name}}`. Scenarios with servers need the profile's
    /// `[federation]`; without it they are skipped.
    #[serde(default)]
    pub servers: Vec<String>,
    /// Fake servers that present a faulty certificate, by name: `other_authority`, `expired`,
    /// `wrong_name`. The server under test must refuse to talk to them (any request that
    /// reaches one fails the scenario); with a profile whose server does not verify
    /// certificates (`[federation] certificates = "unverified"`) the scenario is skipped.
    #[serde(default)]
    pub certificates: BTreeMap<String, crate::federation::tls::CertificateFault>,
    /// Actors on real partner homeservers of the profile (`[federation.partners]`), by
    /// partner: `{second: [bob]}`. Their steps go to that server; `{{second.server_name}}` is
    /// its name. Without the partner in the profile, the scenario is skipped.
    #[serde(default)]
    pub partners: BTreeMap<String, Vec<String>>,
    /// Server-server operations the server under test may call on the fake servers beyond
    /// those they model (a request nobody expected fails the scenario).
    #[serde(default)]
    pub allow_requests: Vec<String>,
    /// One scenario per value (per combination, with several names): `{{<name>}}` is the
    /// value in that scenario, which is named `<file>[<value>,...]`.
    #[serde(default)]
    pub for_each: BTreeMap<String, Vec<Value>>,
    pub steps: Vec<Step>,

    /// Filled in by the loader: the values of `for_each` for this scenario.
    #[serde(skip)]
    pub bindings: BTreeMap<String, Value>,

    /// Filled in by the loader: the path under `scenarios/` without `.yaml`.
    #[serde(skip)]
    pub name: String,
    /// Filled in by the loader: the first folder under `scenarios/`.
    #[serde(skip)]
    pub area: String,
}

/// One step: one kind (an operation call, a `/sync` long-poll, a federation action ...) and
/// what goes with it.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(try_from = "RawStep")]
pub struct Step {
    pub kind: StepKind,
    /// The actor whose access token is sent (default: the first actor).
    pub as_actor: Option<String>,
    /// `none`: send no token; `bogus`: send a token no server issued.
    pub auth: Option<AuthMode>,
    /// Send this access token (templated: a captured token), instead of the actor's.
    pub token: Option<String>,
    pub path: BTreeMap<String, Value>,
    pub query: BTreeMap<String, Value>,
    pub body: Option<Value>,
    /// A body sent as it is (for deliberately broken requests, and media).
    pub raw_body: Option<String>,
    /// A binary body, as standard base64 (an image to upload).
    pub raw_body_base64: Option<String>,
    pub content_type: Option<String>,
    /// The request is wrong on purpose: do not validate it against the spec.
    pub invalid: bool,
    pub expect: Expect,
    /// Values to keep for later steps: name -> JSON pointer into the response body, or
    /// `{at: pointer, regex: "...(group)..."}` to keep the first group of a match.
    pub capture: BTreeMap<String, Capture>,
    /// Keep the normalised response as an insta snapshot with this name.
    pub snapshot: Option<String>,
    /// Objects in the body to sign before sending, in order (after templating): each is
    /// signed as the JSON signing appendix says, by one of the scenario's `keys`.
    pub sign: Vec<SignSpec>,
    /// For state a server may apply in the background (user directory, profile propagation):
    /// repeat the call every 100 ms until the expectation holds, for at most this long.
    pub eventually_ms: Option<u64>,
    /// When the server answers `M_UNRECOGNIZED` (it lacks the operation), the scenario is
    /// skipped, not failed (the negative sweeps use this).
    pub skip_if_unrecognized: bool,
}

/// What a step does.
#[derive(Clone, Debug)]
pub enum StepKind {
    /// A client-server operation, by operation id.
    Call(String),
    SyncUntil(SyncUntil),
    /// Waits for a background `sync_until` by name.
    Await(String),
    Http(RawHttp),
    Mail(MailStep),
    Sms(MailStep),
    AppserviceReceives(AppserviceReceives),
    Push(PushStep),
    /// An identity-service operation the scenario calls on the identity peer, as a client.
    IdentityCall(String),
    IdentityReceives(IdentityReceives),
    FedJoin(FedJoin),
    FedInvite(FedInvite),
    FedSend(FedSend),
    FedEdu(FedEdu),
    FedCall(FedCall),
    FedAwait(FedAwait),
    FedCreateRoom(FedCreateRoom),
    FedAnswer(FedAnswer),
    FedTransaction(FedTransaction),
    /// Sets template variables (values templated) for later steps.
    Set(BTreeMap<String, Value>),
    /// A fixture's steps, in place of this one (expanded when the file loads; never run).
    Use(UseFixture),
}

/// `use: <fixture>`, with `with: {param: value}`: the steps of
/// `scenarios/_fixtures/<fixture>.yaml`, its parameters set first.
#[derive(Clone, Debug)]
pub struct UseFixture {
    pub fixture: String,
    pub with: BTreeMap<String, Value>,
}

impl Default for StepKind {
    /// An empty call, which the checks refuse: a base for building steps in code.
    fn default() -> StepKind {
        StepKind::Call(String::new())
    }
}

impl StepKind {
    /// The key that names the kind in a scenario file.
    pub fn key(&self) -> &'static str {
        match self {
            StepKind::Call(_) => "call",
            StepKind::SyncUntil(_) => "sync_until",
            StepKind::Await(_) => "await",
            StepKind::Http(_) => "http",
            StepKind::Mail(_) => "mail",
            StepKind::Sms(_) => "sms",
            StepKind::AppserviceReceives(_) => "appservice_receives",
            StepKind::Push(_) => "push",
            StepKind::IdentityCall(_) => "identity_call",
            StepKind::IdentityReceives(_) => "identity_receives",
            StepKind::FedJoin(_) => "fed_join",
            StepKind::FedInvite(_) => "fed_invite",
            StepKind::FedSend(_) => "fed_send",
            StepKind::FedEdu(_) => "fed_edu",
            StepKind::FedCall(_) => "fed_call",
            StepKind::FedAwait(_) => "fed_await",
            StepKind::FedCreateRoom(_) => "fed_create_room",
            StepKind::FedAnswer(_) => "fed_answer",
            StepKind::FedTransaction(_) => "fed_transaction",
            StepKind::Set(_) => "set",
            StepKind::Use(_) => "use",
        }
    }

    /// The fake server a federation step acts as, or waits on.
    pub fn server(&self) -> Option<&str> {
        match self {
            StepKind::FedJoin(x) => Some(&x.server),
            StepKind::FedInvite(x) => Some(&x.server),
            StepKind::FedSend(x) => Some(&x.server),
            StepKind::FedEdu(x) => Some(&x.server),
            StepKind::FedCall(x) => Some(&x.server),
            StepKind::FedAwait(x) => Some(&x.server),
            StepKind::FedCreateRoom(x) => Some(&x.server),
            StepKind::FedAnswer(x) => Some(&x.server),
            StepKind::FedTransaction(x) => Some(&x.server),
            _ => None,
        }
    }
}

impl Step {
    /// The operation of a `call` step.
    pub fn call(&self) -> Option<&str> {
        match &self.kind {
            StepKind::Call(op) => Some(op),
            _ => None,
        }
    }

    /// The long-poll of a `sync_until` step.
    pub fn sync_until(&self) -> Option<&SyncUntil> {
        match &self.kind {
            StepKind::SyncUntil(s) => Some(s),
            _ => None,
        }
    }
}

impl TryFrom<RawStep> for Step {
    type Error = String;

    fn try_from(r: RawStep) -> std::result::Result<Step, String> {
        let mut kinds: Vec<StepKind> = Vec::new();
        kinds.extend(r.call.map(StepKind::Call));
        kinds.extend(r.sync_until.map(StepKind::SyncUntil));
        kinds.extend(r.await_.map(StepKind::Await));
        kinds.extend(r.http.map(StepKind::Http));
        kinds.extend(r.mail.map(StepKind::Mail));
        kinds.extend(r.sms.map(StepKind::Sms));
        kinds.extend(r.appservice_receives.map(StepKind::AppserviceReceives));
        kinds.extend(r.push.map(StepKind::Push));
        kinds.extend(r.identity_call.map(StepKind::IdentityCall));
        kinds.extend(r.identity_receives.map(StepKind::IdentityReceives));
        kinds.extend(r.fed_join.map(StepKind::FedJoin));
        kinds.extend(r.fed_invite.map(StepKind::FedInvite));
        kinds.extend(r.fed_send.map(StepKind::FedSend));
        kinds.extend(r.fed_edu.map(StepKind::FedEdu));
        kinds.extend(r.fed_call.map(StepKind::FedCall));
        kinds.extend(r.fed_await.map(StepKind::FedAwait));
        kinds.extend(r.fed_create_room.map(StepKind::FedCreateRoom));
        kinds.extend(r.fed_answer.map(StepKind::FedAnswer));
        kinds.extend(r.fed_transaction.map(StepKind::FedTransaction));
        kinds.extend(r.set.map(StepKind::Set));
        kinds.extend(r.use_.map(|fixture| {
            StepKind::Use(UseFixture {
                fixture,
                with: r.with.clone().unwrap_or_default(),
            })
        }));
        if r.with.is_some() && !matches!(kinds.last(), Some(StepKind::Use(_))) {
            return Err("`with` gives a fixture's parameters: it goes with `use`".into());
        }
        if kinds.len() != 1 {
            let given: Vec<&str> = kinds.iter().map(StepKind::key).collect();
            return Err(format!(
                "a step has exactly one of `call`, `sync_until`, `await`, `http`, `mail`, `sms`, `appservice_receives`, `fed_join`, `fed_invite`, `fed_send`, `fed_edu`, `fed_call`, `fed_await`, `fed_create_room`, `fed_answer`, `fed_transaction`, `set` and `use`; this one has {}",
                if given.is_empty() { "none".to_string() } else { given.join(", ") }
            ));
        }
        let kind = kinds.remove(0);
        Ok(Step {
            kind,
            as_actor: r.as_actor,
            auth: r.auth,
            token: r.token,
            path: r.path,
            query: r.query,
            body: r.body,
            raw_body: r.raw_body,
            raw_body_base64: r.raw_body_base64,
            content_type: r.content_type,
            invalid: r.invalid,
            expect: r.expect,
            capture: r.capture,
            snapshot: r.snapshot,
            sign: r.sign,
            eventually_ms: r.eventually_ms,
            skip_if_unrecognized: r.skip_if_unrecognized,
        })
    }
}

/// A step as written: every kind is a field, and exactly one must be given ([`Step`] holds
/// it as a [`StepKind`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    /// A spec operation id; the harness builds the URL from the route table.
    #[serde(default)]
    pub call: Option<String>,
    /// Long-poll `/sync` as `as` until the checks hold.
    #[serde(default)]
    pub sync_until: Option<SyncUntil>,
    /// Wait for a `sync_until` started in the background, and fail with its reason.
    #[serde(default, rename = "await")]
    pub await_: Option<String>,
    /// A request outside the route table (unknown paths, wrong methods), sent as given.
    #[serde(default)]
    pub http: Option<RawHttp>,
    /// Wait for a mail to the mail peer and capture from its text.
    #[serde(default)]
    pub mail: Option<MailStep>,
    /// Wait until the application service peer has been sent an event containing `event`.
    #[serde(default)]
    pub appservice_receives: Option<AppserviceReceives>,
    /// Wait until the push gateway peer has been sent a notification for `pushkey` whose body
    /// contains `expect` (each request checked against the push-gateway schema).
    #[serde(default)]
    pub push: Option<PushStep>,
    /// Call an identity-service operation (by operation id) on the identity peer, as the
    /// user's client: `path`, `query`, `body`, `token` (the identity server's), `expect` and
    /// `capture` as for `call`.
    #[serde(default)]
    pub identity_call: Option<String>,
    /// Wait until the identity peer was sent (or sent the homeserver) an operation whose
    /// exchange contains `match`.
    #[serde(default)]
    pub identity_receives: Option<IdentityReceives>,
    /// Wait for a text message to a phone number (`447700900123`) at the SMS gateway peer.
    #[serde(default)]
    pub sms: Option<MailStep>,
    /// A fake server joins one of its users to a room of the server under test (make_join,
    /// send_join v2; every event of the answer checked). Captures read `{event_id,
    /// room_version}`.
    #[serde(default)]
    pub fed_join: Option<FedJoin>,
    /// A fake server sends EDUs. Captures read the transaction's answer.
    #[serde(default)]
    pub fed_edu: Option<FedEdu>,
    /// A fake server invites a user of the server under test. Captures read `{event_id}`.
    #[serde(default)]
    pub fed_invite: Option<FedInvite>,
    /// A fake server makes an event in a room it joined and sends it in a transaction.
    /// Captures and `expect` read `{event_id, result}` (`result` is the server's answer for
    /// the PDU: `{}` when accepted).
    #[serde(default)]
    pub fed_send: Option<FedSend>,
    /// A fake server calls a server-server operation of the server under test, signed.
    #[serde(default)]
    pub fed_call: Option<FedCall>,
    /// Waits until a fake server is sent a PDU, an EDU or a request matching the given
    /// subset. Captures read the PDU (with its `event_id`), the EDU, or `{body}`.
    #[serde(default)]
    pub fed_await: Option<FedAwait>,
    /// A fake server creates a room it is resident in (the server under test may then join
    /// it through make_join and send_join). Captures read `{room_id, room_version}`.
    #[serde(default)]
    pub fed_create_room: Option<FedCreateRoom>,
    /// Sets a fake server's answer to an operation the server under test calls on it.
    #[serde(default)]
    pub fed_answer: Option<FedAnswer>,
    /// A fake server sends one transaction of several PDUs (made with `fed_send: {hold:
    /// true}`) and EDUs. `expect` and captures read the answer.
    #[serde(default)]
    pub fed_transaction: Option<FedTransaction>,
    /// Sets template variables for later steps.
    #[serde(default)]
    pub set: Option<BTreeMap<String, Value>>,
    /// A fixture of `scenarios/_fixtures/`, whose steps take this step's place.
    #[serde(default, rename = "use")]
    pub use_: Option<String>,
    /// The fixture's parameters.
    #[serde(default)]
    pub with: Option<BTreeMap<String, Value>>,
    /// The actor whose access token is sent (default: the first actor).
    #[serde(default, rename = "as")]
    pub as_actor: Option<String>,
    /// `none`: send no token; `bogus`: send a token no server issued.
    #[serde(default)]
    pub auth: Option<AuthMode>,
    /// Send this access token (templated: a captured token), instead of the actor's.
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub path: BTreeMap<String, Value>,
    #[serde(default)]
    pub query: BTreeMap<String, Value>,
    #[serde(default)]
    pub body: Option<Value>,
    /// A body sent as it is (for deliberately broken requests, and media).
    #[serde(default)]
    pub raw_body: Option<String>,
    /// A binary body, as standard base64 (an image to upload).
    #[serde(default)]
    pub raw_body_base64: Option<String>,
    #[serde(default)]
    pub content_type: Option<String>,
    /// The request is wrong on purpose: do not validate it against the spec.
    #[serde(default)]
    pub invalid: bool,
    #[serde(default)]
    pub expect: Expect,
    /// Values to keep for later steps: name -> JSON pointer into the response body, or
    /// `{at: pointer, regex: "...(group)..."}` to keep the first group of a match.
    #[serde(default)]
    pub capture: BTreeMap<String, Capture>,
    /// Keep the normalised response as an insta snapshot with this name.
    #[serde(default)]
    pub snapshot: Option<String>,
    /// Objects in the body to sign before sending, in order (after templating): each is
    /// signed as the JSON signing appendix says, by one of the scenario's `keys`.
    #[serde(default)]
    pub sign: Vec<SignSpec>,
    /// For state a server may apply in the background (user directory, profile propagation):
    /// repeat the call every 100 ms until the expectation holds, for at most this long.
    #[serde(default)]
    pub eventually_ms: Option<u64>,
    /// When the server answers `M_UNRECOGNIZED` (it lacks the operation), the scenario is
    /// skipped, not failed (the negative sweeps use this).
    #[serde(default)]
    pub skip_if_unrecognized: bool,
}

/// `fed_join`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FedJoin {
    /// One of the scenario's `servers`.
    pub server: String,
    /// The joining user's localpart, on that server.
    pub user: String,
    /// The room id (templated).
    pub room: String,
    /// `join` (default: make_join, send_join v2), `leave` (make_leave, send_leave v2) or
    /// `knock` (make_knock, send_knock).
    #[serde(default)]
    pub membership: Option<String>,
}

/// `fed_invite`: the fake server invites a user of the server under test to a room it is in
/// (invite v2 for the invited server's signature, then the event sent into the room).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FedInvite {
    pub server: String,
    /// The inviting user's localpart, on the fake server.
    pub sender: String,
    pub room: String,
    /// The invited user (templated).
    pub target: String,
    /// Use invite v1 (`PUT /_matrix/federation/v1/invite`) instead of v2.
    #[serde(default)]
    pub v1: bool,
}

/// `fed_send`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FedSend {
    pub server: String,
    pub room: String,
    /// The sender's localpart on the fake server.
    pub sender: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub state_key: Option<String>,
    #[serde(default)]
    pub content: Value,
    /// Changes to the signed event before it is sent (top-level keys, or JSON pointers),
    /// for events the server must refuse.
    #[serde(default)]
    pub tamper: Option<Value>,
    /// Sends the same transaction (same id, same body) this many more times; each answer
    /// must equal the first.
    #[serde(default)]
    pub retries: u32,
    /// Hash and sign again after `tamper` (a validly signed event with changed fields).
    #[serde(default)]
    pub resign: bool,
    /// The event's prev events (templated ids): a fork of the room's history.
    #[serde(default)]
    pub prev: Option<Vec<String>>,
    /// The event's auth events (templated ids), instead of the selection.
    #[serde(default)]
    pub auth: Option<Vec<String>>,
    /// Make the event and keep it in the fake server's room without sending it: a gap the
    /// server under test must fetch when a later event cites it.
    #[serde(default)]
    pub hold: bool,
}

/// `fed_transaction`: one transaction of held PDUs, by event id, and EDUs.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FedTransaction {
    pub server: String,
    /// Event ids (templated) of events the fake server holds, in the order sent.
    #[serde(default)]
    pub pdus: Vec<String>,
    /// EDUs, each `{edu_type, content}` (templated).
    #[serde(default)]
    pub edus: Vec<Value>,
}

/// `fed_edu`: a fake server sends EDUs in a transaction.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FedEdu {
    pub server: String,
    /// The EDU's type (`m.typing`, `m.receipt`, `m.presence`, `m.direct_to_device`, ...).
    pub edu_type: String,
    /// Its content (templated).
    pub content: Value,
}

/// `fed_call`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FedCall {
    pub server: String,
    /// A server-server operation id.
    pub call: String,
    #[serde(default)]
    pub path: BTreeMap<String, Value>,
    #[serde(default)]
    pub query: BTreeMap<String, Value>,
    #[serde(default)]
    pub body: Option<Value>,
}

/// `fed_await`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FedAwait {
    pub server: String,
    /// A PDU containing this (subset match).
    #[serde(default)]
    pub pdu: Option<Value>,
    /// An EDU containing this.
    #[serde(default)]
    pub edu: Option<Value>,
    /// A request for this operation.
    #[serde(default)]
    pub request: Option<String>,
    /// `refused`: a TLS handshake the server under test abandoned (what it says of a
    /// certificate it does not accept).
    #[serde(default)]
    pub handshake: Option<String>,
    /// What must not have arrived before (or with) what the step waits for: the sentinel
    /// pattern (send X, then Y; require Y without X).
    #[serde(default)]
    pub without: Option<Value>,
    /// How long to wait (default 10 s).
    #[serde(default)]
    pub within_ms: Option<u64>,
    /// The awaited PDU must carry a valid signature of its room's Policy Server (the key its
    /// `m.room.policy` names, as the fake server sees the room).
    #[serde(default)]
    pub policy_signed: Option<bool>,
}

/// `fed_create_room`: a fake server creates a room it is resident in.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FedCreateRoom {
    pub server: String,
    /// The creator's localpart, on the fake server.
    pub creator: String,
    /// The room version (templated): `1` ... `12`.
    pub version: String,
    /// The join rule (default `public`): `public`, `invite`, `knock`, `restricted`,
    /// `knock_restricted`.
    #[serde(default)]
    pub join_rule: Option<String>,
    /// The create event's `type` (`m.space` for a space).
    #[serde(default)]
    pub room_type: Option<String>,
    /// For restricted rules: the rooms (templated ids) whose members may join.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Further state, in order, after the create event, the creator's join, the power levels
    /// and the join rules.
    #[serde(default)]
    pub state: Vec<FedState>,
}

/// A state event of a room a fake server creates.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FedState {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub state_key: String,
    /// The sender's localpart on the fake server (default: the creator).
    #[serde(default)]
    pub sender: Option<String>,
    pub content: Value,
}

/// `fed_answer`: what a fake server answers when the server under test calls `operation`
/// on it (instead of what it models, or where it models nothing). A JSON answer of a
/// success status must follow the operation's response schema (unless the step says
/// `invalid: true`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FedAnswer {
    pub server: String,
    /// A server-server operation id.
    pub operation: String,
    /// Default 200.
    #[serde(default)]
    pub status: Option<u16>,
    /// The JSON answer (templated).
    #[serde(default)]
    pub body: Option<Value>,
    /// For media downloads and thumbnails: the file (standard base64) and its type, sent as
    /// the multipart answer federation media has (metadata, then the file).
    #[serde(default)]
    pub media: Option<FedMedia>,
    /// Answer this many times, then fall back (default: every time).
    #[serde(default)]
    pub times: Option<u32>,
}

/// A file a fake server serves.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FedMedia {
    pub content_type: String,
    pub base64: String,
}

/// A signature to add to an object of a step's body.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignSpec {
    /// JSON pointer (templated) of the object in the body.
    pub at: String,
    /// One of the scenario's `keys`.
    pub key: String,
    /// The entity signing (templated): a user id, or a server name.
    #[serde(rename = "as")]
    pub signer: String,
    /// The signing key id (templated); default `ed25519:<public key>`.
    #[serde(default)]
    pub key_id: Option<String>,
}

/// A request by method and path (templated), not by operation.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    pub method: String,
    pub path: String,
    /// The answer is a page for a browser (HTML), not Matrix JSON: its body is not checked.
    #[serde(default)]
    pub page: bool,
}

/// Waits (default 10 s) until the application service has been sent, in a transaction, an
/// event that contains `event` (templated; subset match).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppserviceReceives {
    pub event: Value,
    #[serde(default)]
    pub within_ms: Option<u64>,
}

/// Waits until the identity peer has an exchange of `operation` (an identity-service operation
/// id, or `server-server/<operationId>` for what it sent the homeserver) whose record
/// (`{caller, method, path, query, body, origin, signed_as, status, answer}`) contains `match`
/// (templated); the step's `expect.checks` and `capture` read the record. Exchanges stay for
/// later steps.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityReceives {
    pub operation: String,
    #[serde(default, rename = "match")]
    pub matches: Option<Value>,
    #[serde(default)]
    pub within_ms: Option<u64>,
}

/// Waits for a notification for `pushkey` (templated) at the push gateway peer whose request
/// body contains `expect` (templated; a subset, as responses are matched) and has nothing at
/// the `absent` JSON pointers; `capture` keeps values of the body by JSON pointer. The
/// notification is taken, so the next step waits for the next one.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushStep {
    pub pushkey: String,
    #[serde(default)]
    pub expect: Option<Value>,
    #[serde(default)]
    pub absent: Vec<String>,
    #[serde(default)]
    pub within_ms: Option<u64>,
    #[serde(default)]
    pub capture: BTreeMap<String, String>,
}

/// Waits for a mail to `to` (templated) at the mail peer; `capture` keeps the first group of
/// each regular expression matched against the mail's decoded text.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailStep {
    pub to: String,
    #[serde(default)]
    pub within_ms: Option<u64>,
    #[serde(default)]
    pub capture: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Capture {
    Pointer(String),
    Match {
        at: String,
        regex: String,
    },
    /// The first group of `regex` in a response header (a redirect's `location`).
    Header {
        header: String,
        regex: String,
    },
    /// An `mxc://server/media` URI at a pointer: the capture holds the URI, and
    /// `<name>.server` and `<name>.media_id` its parts.
    Mxc {
        mxc: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    None,
    Bogus,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncUntil {
    #[serde(default, rename = "as")]
    pub as_actor: Option<String>,
    /// Bound on the whole wait (default 10 s).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// An inline filter (JSON), sent as the `filter` query parameter.
    #[serde(default)]
    pub filter: Option<Value>,
    /// Checks that must all hold on one `/sync` response.
    pub checks: Vec<Check>,
    /// Run in the background under this name while later steps go on; an `await` step with
    /// the name waits for it. The caller's sync position is taken before later steps run.
    #[serde(default)]
    pub background: Option<String>,
    /// The checks must hold within this many milliseconds of the start (for wake-up tests:
    /// less than a long-poll's timeout).
    #[serde(default)]
    pub within_ms: Option<u64>,
}

/// What a response must look like. With no `status`, any 2xx passes.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    #[serde(default)]
    pub status: Option<StatusSpec>,
    #[serde(default)]
    pub errcode: Option<String>,
    /// The body contains this (objects by key, arrays element by element in any order).
    #[serde(default)]
    pub body: Option<Value>,
    #[serde(default)]
    pub checks: Vec<Check>,
    /// Response headers (lower-case names) and a regular expression each must match
    /// (a redirect's `location`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum StatusSpec {
    One(u16),
    Any(Vec<u16>),
}

impl StatusSpec {
    pub fn allows(&self, status: u16) -> bool {
        match self {
            StatusSpec::One(s) => *s == status,
            StatusSpec::Any(list) => list.contains(&status),
        }
    }
}

/// A check on the value at a JSON pointer (`at`, templated).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub at: String,
    #[serde(default)]
    pub exists: Option<bool>,
    #[serde(default)]
    pub absent: Option<bool>,
    #[serde(default)]
    pub equals: Option<Value>,
    /// The value contains this (see [`Expect::body`]).
    #[serde(default)]
    pub subset: Option<Value>,
    /// An array with an element that contains this.
    #[serde(default)]
    pub contains: Option<Value>,
    /// No element of the array contains this.
    #[serde(default)]
    pub lacks: Option<Value>,
    /// The length of an array, object or string.
    #[serde(default)]
    pub length: Option<usize>,
    #[serde(default)]
    pub min_length: Option<usize>,
    /// A string matching this regular expression.
    #[serde(default)]
    pub regex: Option<String>,
    /// The JSON type: string, number, integer, boolean, object, array, null.
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    /// A value other than this.
    #[serde(default)]
    pub not_equals: Option<Value>,
    /// A number at least this (templated: a captured number, `{{now_ms}}`).
    #[serde(default)]
    pub at_least: Option<Value>,
    /// A number at most this.
    #[serde(default)]
    pub at_most: Option<Value>,
}

/// Reads every `*.yaml` under `dir` (sorted), naming each by its path; folders whose name
/// starts with `_` hold fixtures, not scenarios. A file with `for_each` gives one scenario per
/// value.
pub fn load_dir(dir: &Path) -> Result<Vec<Scenario>> {
    let mut files = Vec::new();
    collect(dir, &mut files)?;
    files.sort();
    let mut out = Vec::new();
    for f in &files {
        out.extend(load_file(dir, f)?.expand_for_each()?);
    }
    Ok(out)
}

/// A fixture: steps many scenarios share (`use: <name>` in a scenario), with the actors,
/// servers and keys they need and default values for their parameters.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    pub description: String,
    #[serde(default)]
    pub actors: Vec<String>,
    #[serde(default)]
    pub servers: Vec<String>,
    #[serde(default)]
    pub keys: Vec<String>,
    /// Parameters and their defaults (`~`: the scenario must give it).
    #[serde(default)]
    pub params: BTreeMap<String, Value>,
    pub steps: Vec<Step>,
}

impl Scenario {
    /// Puts each `use` step's fixture steps in its place, after a `set` of its parameters,
    /// and adds the actors, servers and keys the fixture needs.
    fn expand_fixtures(&mut self, root: &Path) -> Result<()> {
        if !self
            .steps
            .iter()
            .any(|s| matches!(s.kind, StepKind::Use(_)))
        {
            return Ok(());
        }
        let fail = |reason: String| Error::Scenario {
            name: self.name.clone(),
            reason,
        };
        let mut steps = Vec::new();
        for (i, step) in std::mem::take(&mut self.steps).into_iter().enumerate() {
            let StepKind::Use(u) = &step.kind else {
                steps.push(step);
                continue;
            };
            let ok_name = !u.fixture.is_empty()
                && u.fixture
                    .split('/')
                    .all(|p| !p.is_empty() && p != ".." && p != ".");
            if !ok_name {
                return Err(fail(format!(
                    "step {}: fixture name {:?}",
                    i + 1,
                    u.fixture
                )));
            }
            let file = root.join("_fixtures").join(format!("{}.yaml", u.fixture));
            let text = std::fs::read_to_string(&file)
                .map_err(|e| fail(format!("step {}: fixture {}: {e}", i + 1, file.display())))?;
            let fixture: Fixture = serde_yaml::from_str(&text)
                .map_err(|e| fail(format!("step {}: fixture {}: {e}", i + 1, u.fixture)))?;
            if fixture
                .steps
                .iter()
                .any(|s| matches!(s.kind, StepKind::Use(_)))
            {
                return Err(fail(format!(
                    "fixture {} uses another fixture (one level only)",
                    u.fixture
                )));
            }
            let mut params = BTreeMap::new();
            for (k, default) in &fixture.params {
                match u.with.get(k).or((!default.is_null()).then_some(default)) {
                    Some(v) => {
                        params.insert(k.clone(), v.clone());
                    }
                    None => {
                        return Err(fail(format!(
                            "step {}: fixture {} needs `with: {{{k}: ...}}`",
                            i + 1,
                            u.fixture
                        )))
                    }
                }
            }
            if let Some(k) = u.with.keys().find(|k| !fixture.params.contains_key(*k)) {
                return Err(fail(format!(
                    "step {}: fixture {} has no parameter `{k}`",
                    i + 1,
                    u.fixture
                )));
            }
            for (list, add) in [
                (&mut self.actors, &fixture.actors),
                (&mut self.servers, &fixture.servers),
                (&mut self.keys, &fixture.keys),
            ] {
                for a in add {
                    if !list.contains(a) {
                        list.push(a.clone());
                    }
                }
            }
            if !params.is_empty() {
                steps.push(Step {
                    kind: StepKind::Set(params),
                    ..Step::default()
                });
            }
            steps.extend(fixture.steps);
        }
        self.steps = steps;
        Ok(())
    }

    /// One scenario per combination of the `for_each` values.
    fn expand_for_each(self) -> Result<Vec<Scenario>> {
        if self.for_each.is_empty() {
            return Ok(vec![self]);
        }
        let mut combos: Vec<BTreeMap<String, Value>> = vec![BTreeMap::new()];
        for (name, values) in &self.for_each {
            if values.is_empty() {
                return Err(Error::Scenario {
                    name: self.name.clone(),
                    reason: format!("for_each `{name}` has no values"),
                });
            }
            combos = combos
                .into_iter()
                .flat_map(|c| {
                    values.iter().map(move |v| {
                        let mut c = c.clone();
                        c.insert(name.clone(), v.clone());
                        c
                    })
                })
                .collect();
        }
        Ok(combos
            .into_iter()
            .map(|bindings| {
                let mut s = self.clone();
                let label: Vec<String> = bindings.values().map(crate::runner::text_of).collect();
                s.name = format!("{}[{}]", self.name, label.join(","));
                // `room_versions` may name the value: the skip-if-unavailable check sees it.
                for v in &mut s.room_versions {
                    for (k, val) in &bindings {
                        *v = v.replace(&format!("{{{{{k}}}}}"), &crate::runner::text_of(val));
                    }
                }
                s.bindings = bindings;
                s.for_each.clear();
                s
            })
            .collect())
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::Io {
        path: dir.to_path_buf(),
        source: e,
    })?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('_'))
            {
                continue;
            }
            collect(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    Ok(())
}

pub fn load_file(root: &Path, file: &Path) -> Result<Scenario> {
    let rel = file.strip_prefix(root).unwrap_or(file);
    let name = rel.with_extension("").to_string_lossy().replace('\\', "/");
    let text = std::fs::read_to_string(file).map_err(|e| Error::Io {
        path: file.to_path_buf(),
        source: e,
    })?;
    let mut s: Scenario = serde_yaml::from_str(&text).map_err(|e| Error::Scenario {
        name: name.clone(),
        reason: e.to_string(),
    })?;
    s.area = name.split('/').next().unwrap_or("misc").to_string();
    s.name = name;
    s.lint(&text)?;
    s.expand_fixtures(root)?;
    s.check()?;
    Ok(s)
}

impl Scenario {
    /// What a scenario writer gets wrong without noticing: a capture nobody uses, and an access
    /// token written out by hand (a made-up token belongs in `auth: bogus`; a real one comes
    /// from an actor or a capture).
    fn lint(&self, text: &str) -> Result<()> {
        let fail = |reason: String| {
            Err(Error::Scenario {
                name: self.name.clone(),
                reason,
            })
        };
        for step in &self.steps {
            // A mail or SMS capture is also the check that the text matches its pattern: only
            // response captures must be used.
            for name in step.capture.keys() {
                let used = text.contains(&format!("{{{{{name}}}}}"))
                    || text.contains(&format!("{{{{{name}."));
                if !used {
                    return fail(format!(
                        "capture `{name}` is never used: drop it, or check what it holds"
                    ));
                }
            }
            if let Some(t) = &step.token {
                if !t.contains("{{") {
                    return fail(format!(
                        "an access token written by hand ({t:?}): use an actor's, a captured one, or `auth: bogus`"
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Scenario {
    /// Structural checks that need no server: each step is one kind, operations exist,
    /// path parameters are given, actors are declared.
    pub fn check(&self) -> Result<()> {
        let fail = |reason: String| {
            Err(Error::Scenario {
                name: self.name.clone(),
                reason,
            })
        };
        if self.steps.is_empty() {
            return fail("no steps".into());
        }
        if !self.spec.starts_with("https://spec.matrix.org/") {
            return fail(format!(
                "`spec` must link to the spec (https://spec.matrix.org/...), not {:?}",
                self.spec
            ));
        }
        for n in &self.needs {
            if !matches!(
                n.as_str(),
                "appservice" | "mail" | "web" | "sms" | "push" | "identity" | "admin"
            ) {
                return fail(format!(
                    "`needs` names peers (appservice, mail, web, sms, push, identity) or admin; not {n:?}"
                ));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for k in &self.keys {
            if !names.insert(k)
                || k.is_empty()
                || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return fail(format!("`keys` names must be distinct words, not {k:?}"));
            }
        }
        for (i, step) in self.steps.iter().enumerate() {
            for sign in &step.sign {
                if !self.keys.contains(&sign.key) {
                    return fail(format!(
                        "step {}: `sign` uses key {:?}, which `keys` does not declare",
                        i + 1,
                        sign.key
                    ));
                }
                let fed_body = matches!(&step.kind, StepKind::FedCall(c) if c.body.is_some());
                if step.body.is_none() && !fed_body {
                    return fail(format!("step {}: `sign` needs a JSON `body`", i + 1));
                }
            }
        }
        for (i, step) in self.steps.iter().enumerate() {
            if let Some(server) = step.kind.server() {
                if !self.servers.iter().any(|s| s == server) {
                    return fail(format!(
                        "step {}: server {server:?} is not one of the scenario's `servers`",
                        i + 1
                    ));
                }
            }
            match &step.kind {
                StepKind::FedJoin(j)
                    if !matches!(
                        j.membership.as_deref(),
                        None | Some("join" | "leave" | "knock")
                    ) =>
                {
                    return fail(format!(
                        "step {}: fed_join's membership is join, leave or knock",
                        i + 1
                    ));
                }
                StepKind::FedCall(c) if crate::federation::client::route(&c.call).is_none() => {
                    return fail(format!(
                        "step {}: `{}` is not a server-server operation",
                        i + 1,
                        c.call
                    ));
                }
                StepKind::FedTransaction(t) => {
                    if t.pdus.is_empty() && t.edus.is_empty() {
                        return fail(format!(
                            "step {}: fed_transaction sends `pdus` (held event ids), `edus`, or both",
                            i + 1
                        ));
                    }
                    for e in &t.edus {
                        let ok = e.get("edu_type").is_some_and(Value::is_string)
                            && e.get("content").is_some()
                            && e.as_object().is_some_and(|o| o.len() == 2);
                        if !ok {
                            return fail(format!(
                                "step {}: each of fed_transaction's `edus` is {{edu_type, content}}, not {e}",
                                i + 1
                            ));
                        }
                    }
                }
                StepKind::FedAnswer(a) => {
                    if crate::federation::client::route(&a.operation).is_none() {
                        return fail(format!(
                            "step {}: `{}` is not a server-server operation",
                            i + 1,
                            a.operation
                        ));
                    }
                    if a.body.is_some() && a.media.is_some() {
                        return fail(format!(
                            "step {}: fed_answer gives a `body` or `media`, not both",
                            i + 1
                        ));
                    }
                    if let Some(m) = &a.media {
                        if crate::template::base64_decode(&m.base64).is_none() {
                            return fail(format!(
                                "step {}: `media.base64` is not valid base64",
                                i + 1
                            ));
                        }
                    }
                }
                StepKind::FedCreateRoom(c) => {
                    let rules = [
                        "public",
                        "invite",
                        "knock",
                        "restricted",
                        "knock_restricted",
                    ];
                    if let Some(r) = &c.join_rule {
                        if !rules.contains(&r.as_str()) {
                            return fail(format!(
                                "step {}: join_rule {r:?} is not one of {}",
                                i + 1,
                                rules.join(", ")
                            ));
                        }
                    }
                }
                StepKind::FedAwait(a) => {
                    if [
                        a.pdu.is_some(),
                        a.edu.is_some(),
                        a.request.is_some(),
                        a.handshake.is_some(),
                    ]
                    .iter()
                    .filter(|x| **x)
                    .count()
                        != 1
                    {
                        return fail(format!(
                            "step {}: fed_await waits for one of pdu, edu, request or handshake",
                            i + 1
                        ));
                    }
                    if a.handshake.as_deref().is_some_and(|h| h != "refused") {
                        return fail(format!(
                            "step {}: fed_await's handshake can only be `refused`",
                            i + 1
                        ));
                    }
                }
                _ => {}
            }
        }
        if let Some(name) = self.certificates.keys().find(|n| !self.servers.contains(n)) {
            return fail(format!(
                "`certificates` names {name:?}, which is not one of the scenario's `servers`"
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for p in self.partners.keys() {
            if self.servers.contains(p) || self.actors.contains(p) {
                return fail(format!(
                    "partner `{p}` is also named as a fake server or an actor"
                ));
            }
        }
        for a in self.actors.iter().chain(self.partners.values().flatten()) {
            if !seen.insert(a)
                || a.is_empty()
                || !a
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            {
                return fail(format!("actor names must be unique lowercase words: {a:?}"));
            }
        }
        let reserved = |name: &str| {
            matches!(
                name,
                "unique" | "unique_digits" | "fresh" | "now_ms" | "server_name"
            ) || name.contains('.')
                || name.is_empty()
        };
        for name in self.for_each.keys().chain(self.bindings.keys()) {
            if reserved(name) {
                return fail(format!(
                    "`for_each` cannot name `{name}` (a template name of the harness's own)"
                ));
            }
        }
        for (i, step) in self.steps.iter().enumerate() {
            let n = i + 1;
            if let StepKind::Set(vars) = &step.kind {
                if let Some(name) = vars.keys().find(|k| reserved(k)) {
                    return fail(format!("step {n}: `set` cannot set `{name}` (a template name of the harness's own)"));
                }
                continue;
            }
            if let StepKind::Use(u) = &step.kind {
                return fail(format!("step {n}: fixture {} was not expanded", u.fixture));
            }
            for name in step.capture.keys() {
                if matches!(
                    name.as_str(),
                    "unique" | "unique_digits" | "fresh" | "now_ms" | "server_name"
                ) || name.contains('.')
                {
                    return fail(format!("step {n}: `{name}` cannot be a capture name (it is a template name of the harness's own)"));
                }
            }
            let who = step
                .as_actor
                .as_ref()
                .or(step.sync_until().and_then(|s| s.as_actor.as_ref()));
            if let Some(a) = who {
                if !self.actors.contains(a) && self.partner_of(a).is_none() {
                    return fail(format!("step {n}: actor `{a}` is not in `actors`"));
                }
            }
            if step.eventually_ms.is_some()
                && !matches!(step.kind, StepKind::Call(_) | StepKind::FedCall(_))
            {
                return fail(format!(
                    "step {n}: `eventually_ms` repeats a `call` or a `fed_call`, not a `{}` step",
                    step.kind.key()
                ));
            }
            if step.kind.server().is_some() {
                continue;
            }
            if let Some(why) = crate::runner::identity::lint(self, step) {
                return fail(format!("step {n}: {why}"));
            }
            if matches!(
                step.kind,
                StepKind::IdentityCall(_) | StepKind::IdentityReceives(_)
            ) {
                continue;
            }
            if let StepKind::Push(p) = &step.kind {
                if !self.needs.iter().any(|x| x == "push") {
                    return fail(format!("step {n}: a `push` step needs `needs: [push]`"));
                }
                for pointer in &p.absent {
                    if !pointer.starts_with('/') {
                        return fail(format!(
                            "step {n}: `absent` of a push step holds JSON pointers: {pointer:?}"
                        ));
                    }
                }
                for (name, pointer) in &p.capture {
                    if !pointer.starts_with('/') {
                        return fail(format!(
                            "step {n}: capture `{name}` of a push step is a JSON pointer: {pointer:?}"
                        ));
                    }
                }
                continue;
            }
            if let StepKind::AppserviceReceives(_) = &step.kind {
                if !self.needs.iter().any(|x| x == "appservice") {
                    return fail(format!(
                        "step {n}: an `appservice_receives` step needs `needs: [appservice]`"
                    ));
                }
                continue;
            }
            let message = match &step.kind {
                StepKind::Mail(m) => Some((m, "mail")),
                StepKind::Sms(m) => Some((m, "sms")),
                _ => None,
            };
            if let Some((m, need)) = message {
                if !self.needs.iter().any(|x| x == need) {
                    return fail(format!("step {n}: a `{need}` step needs `needs: [{need}]`"));
                }
                for (name, r) in &m.capture {
                    if matches!(
                        name.as_str(),
                        "unique" | "unique_digits" | "fresh" | "server_name"
                    ) || name.contains('.')
                    {
                        return fail(format!("step {n}: `{name}` cannot be a capture name"));
                    }
                    match regex::Regex::new(r) {
                        Ok(re) if re.captures_len() >= 2 => {}
                        _ => {
                            return fail(format!(
                            "step {n}: capture `{name}` needs a valid regex with a group: {r:?}"
                        ))
                        }
                    }
                }
                continue;
            }
            for (name, r) in &step.expect.headers {
                let templated = r.contains("{{");
                if name.to_ascii_lowercase() != *name
                    || (!templated && regex::Regex::new(r).is_err())
                {
                    return fail(format!("step {n}: header checks need lower-case names and valid regexes ({name}: {r:?})"));
                }
            }
            if let StepKind::Http(h) = &step.kind {
                let path_ok = h.path.starts_with('/')
                    || h.path.starts_with("{{")
                    || h.path.starts_with("http://");
                if !path_ok || !h.method.chars().all(|c| c.is_ascii_uppercase()) {
                    return fail(format!(
                        "step {n}: `http` needs an upper-case method and a path starting with / (or a captured path)"
                    ));
                }
                continue;
            }
            if let StepKind::Await(name) = &step.kind {
                let started = self.steps[..i]
                    .iter()
                    .any(|s| s.sync_until().and_then(|x| x.background.as_ref()) == Some(name));
                if !started {
                    return fail(format!(
                        "step {n}: nothing named `{name}` was started in the background before"
                    ));
                }
                continue;
            }
            match &step.kind {
                StepKind::Call(op) => {
                    let Some(route) = crate::route(op) else {
                        return fail(format!(
                            "step {n}: no operation `{op}` in the client-server route table"
                        ));
                    };
                    for p in route.path_params() {
                        // A transaction id not given is a fresh one.
                        if !step.path.contains_key(p) && p != "txnId" {
                            return fail(format!("step {n}: `{op}` needs path parameter `{p}`"));
                        }
                    }
                    for k in step.path.keys() {
                        if !route.path_params().any(|p| p == k) {
                            return fail(format!("step {n}: `{op}` has no path parameter `{k}`"));
                        }
                    }
                    let bodies = usize::from(step.body.is_some())
                        + usize::from(step.raw_body.is_some())
                        + usize::from(step.raw_body_base64.is_some());
                    if bodies > 1 {
                        return fail(format!(
                            "step {n}: give one of `body`, `raw_body` and `raw_body_base64`"
                        ));
                    }
                    if let Some(b) = &step.raw_body_base64 {
                        if crate::template::base64_decode(b).is_none() {
                            return fail(format!(
                                "step {n}: `raw_body_base64` is not valid base64"
                            ));
                        }
                    }
                    if step.as_actor.is_none()
                        && step.auth.is_none()
                        && step.token.is_none()
                        && route.auth == mxconform_generated::Auth::Required
                        && self.actors.is_empty()
                    {
                        return fail(format!(
                            "step {n}: `{op}` needs a token but the scenario has no actors"
                        ));
                    }
                }
                StepKind::SyncUntil(s) => {
                    if self.actors.is_empty() {
                        return fail(format!("step {n}: sync_until needs an actor"));
                    }
                    if s.checks.is_empty() {
                        return fail(format!(
                            "step {n}: sync_until without checks would wait for nothing"
                        ));
                    }
                }
                _ => {}
            }
            for check in step
                .expect
                .checks
                .iter()
                .chain(step.sync_until().into_iter().flat_map(|s| &s.checks))
            {
                if let Some(r) = check.regex.as_ref().filter(|r| !r.contains("{{")) {
                    if regex::Regex::new(r).is_err() {
                        return fail(format!("step {n}: invalid regex {r:?}"));
                    }
                }
            }
        }
        Ok(())
    }

    /// The partner server an actor lives on (None: the server under test).
    pub fn partner_of(&self, actor: &str) -> Option<&str> {
        self.partners
            .iter()
            .find(|(_, actors)| actors.iter().any(|a| a == actor))
            .map(|(p, _)| p.as_str())
    }

    /// Every operation the scenario calls (with the ones the harness calls for it).
    pub fn operations(&self) -> Vec<&str> {
        let mut ops: Vec<&str> = self.steps.iter().filter_map(Step::call).collect();
        if self.steps.iter().any(|s| s.sync_until().is_some()) {
            ops.push("sync");
        }
        ops.sort_unstable();
        ops.dedup();
        ops
    }
}
