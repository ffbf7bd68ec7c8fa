//! Running one scenario against a homeserver: fresh actors, then each step with the request
//! checked, the response validated against the spec's schema before any scenario assertion,
//! expectations, captures and snapshots. Every failure is a reason, never a panic.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::client::hmac_sha1_hex;
use mxconform_generated::Route;
use serde_json::{json, Value};

use crate::client::{Body, Client, Response};
use crate::profile::{Profile, Registration};
use crate::scenario::{AuthMode, Scenario, Step, SyncUntil};
use crate::template::Vars;
use crate::validate::{self, Part};

mod accounts;
mod federation;
pub(crate) mod identity;

/// What a scenario runs against.
#[derive(Debug)]
pub struct Env {
    pub client: Client,
    pub profile: Profile,
    /// Where this profile's snapshots live: `snapshots/<profile>/`.
    pub snapshot_dir: PathBuf,
    /// Bound on a scenario that sets none.
    pub scenario_timeout: Duration,
    /// The outside world the server talks to, when the profile configures it.
    pub peers: Option<std::sync::Arc<crate::peers::Peers>>,
    /// The administrator account (user id, access token), made by the first scenario that
    /// needs it and shared by the rest of the run.
    pub admin: tokio::sync::OnceCell<Result<(String, String), String>>,
    /// Federation (fake homeservers), when the profile has `[federation]`.
    pub federation: Option<std::sync::Arc<crate::federation::Federation>>,
    /// Real homeservers federating with the server under test, by name.
    pub partners: BTreeMap<String, Partner>,
}

/// A partner homeserver: its client, and how users are made there.
#[derive(Debug)]
pub struct Partner {
    pub client: Client,
    pub config: crate::federation::PartnerConfig,
}

#[derive(Clone, Debug)]
pub struct Outcome {
    pub result: Result<(), String>,
    /// The scenario could not apply: a step marked `skip_if_unrecognized` found the server does
    /// not know the operation.
    pub skipped: Option<String>,
    /// Operations the scenario called, in the order first called.
    pub operations: Vec<String>,
    pub duration: Duration,
}

struct Run<'a> {
    env: &'a Env,
    scenario: &'a Scenario,
    vars: Vars,
    /// Access tokens by actor.
    tokens: BTreeMap<String, String>,
    /// The latest `next_batch` per actor, for `sync_until`.
    since: BTreeMap<String, String>,
    operations: Vec<String>,
    /// `sync_until` steps running in the background, by name.
    background: BTreeMap<String, tokio::task::JoinHandle<Result<SyncDone, String>>>,
    skipped: Option<String>,
    /// The scenario's `keys`, made for this run.
    keys: BTreeMap<String, mxconform_pdu::SigningKey>,
    /// The scenario's fake homeservers, by name.
    fakes: BTreeMap<String, crate::federation::fake::Fake>,
    /// The partner homeserver the current step's requests go to (None: the server under
    /// test), by the step's actor.
    on_partner: Option<String>,
}

/// What a finished `sync_until` found.
struct SyncDone {
    actor: String,
    next_batch: Option<String>,
    body: Value,
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A value unique to this run of this scenario (and to this process and moment).
fn unique_token() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
    format!(
        "{}{}{}",
        base36(nanos % 36u128.pow(8)),
        base36(u128::from(std::process::id()) % 1296),
        base36(u128::from(n))
    )
}

fn base36(mut n: u128) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut s = Vec::new();
    loop {
        s.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    s.reverse();
    String::from_utf8(s).expect("ASCII digits")
}

pub async fn run(env: &Env, scenario: &Scenario) -> Outcome {
    let started = Instant::now();
    let bound = scenario
        .timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(env.scenario_timeout);
    // An outcome decided before the steps ran.
    let ended = |result: Result<(), String>, skipped: Option<String>| Outcome {
        result,
        skipped,
        operations: Vec::new(),
        duration: started.elapsed(),
    };
    let mut run = Run {
        env,
        scenario,
        vars: Vars {
            unique: unique_token(),
            ..Vars::default()
        },
        tokens: BTreeMap::new(),
        since: BTreeMap::new(),
        operations: Vec::new(),
        background: BTreeMap::new(),
        skipped: None,
        keys: BTreeMap::new(),
        fakes: BTreeMap::new(),
        on_partner: None,
    };
    run.vars.set(
        "server_name",
        Value::String(env.profile.server_name.clone()),
    );
    for (k, v) in &scenario.bindings {
        run.vars.set(k, v.clone());
    }
    for name in &scenario.keys {
        match mxconform_pdu::SigningKey::generate(None) {
            Ok(key) => {
                let public = key.public_base64();
                run.vars.set(&format!("keys.{name}.public"), json!(public));
                run.vars.set(
                    &format!("keys.{name}.id"),
                    json!(format!("ed25519:{public}")),
                );
                // The public key as a JSON pointer segment: base64 may hold `/`.
                let ptr = public.replace('~', "~0").replace('/', "~1");
                run.vars.set(&format!("keys.{name}.ptr"), json!(ptr));
                run.keys.insert(name.clone(), key);
            }
            Err(e) => return ended(Err(format!("could not make key {name}: {e}")), None),
        }
    }
    let peer_needs: Vec<String> = scenario
        .needs
        .iter()
        .filter(|n| *n != "admin")
        .cloned()
        .collect();
    if scenario.needs.iter().any(|n| n == "admin") && env.profile.admin.is_none() {
        return ended(
            Ok(()),
            Some(format!(
                "needs an administrator account, which profile `{}` does not name",
                env.profile.name
            )),
        );
    }
    if let Some(missing) = crate::peers::Peers::missing(env.peers.as_deref(), &peer_needs) {
        return ended(
            Ok(()),
            Some(format!(
                "needs the {missing} peer, which profile `{}` does not configure",
                env.profile.name
            )),
        );
    }
    if let Some(p) = &env.peers {
        for (k, v) in p.vars(&env.profile.server_name) {
            run.vars.set(&k, v);
        }
    }
    if !scenario.servers.is_empty() {
        let Some(federation) = env.federation.clone() else {
            return ended(
                Ok(()),
                Some(format!(
                    "needs federation, which profile `{}` does not configure ([federation])",
                    env.profile.name
                )),
            );
        };
        let suite = scenario.name.split('/').nth(1).unwrap_or("");
        if let Some(suites) = env
            .profile
            .federation
            .as_ref()
            .and_then(|f| f.suites.as_ref())
            .filter(|s| scenario.name.starts_with("federation/") && !s.iter().any(|x| x == suite))
        {
            return ended(
                Ok(()),
                Some(format!(
                    "federation suite `{suite}` is not among those profile `{}` runs ({})",
                    env.profile.name,
                    suites.join(", ")
                )),
            );
        }
        if !scenario.certificates.is_empty()
            && env
                .profile
                .federation
                .as_ref()
                .is_some_and(|f| f.certificates == crate::federation::Verification::Unverified)
        {
            return ended(Ok(()), Some(format!(
                    "needs a server that verifies certificates; profile `{}` says it does not ([federation] certificates = \"unverified\")",
                    env.profile.name
                )));
        }
        if let Err(e) = run.start_fakes(&federation).await {
            return ended(Err(format!("starting the fake servers: {e}")), None);
        }
    }
    let mut result = match tokio::time::timeout(bound, run.all()).await {
        Ok(Err(StepError::Skipped(why))) => {
            run.skipped = Some(why);
            Ok(())
        }
        Ok(Err(StepError::Failed(e))) => Err(e),
        Ok(Ok(())) => Ok(()),
        Err(_) => Err(format!(
            "the scenario did not finish within {:.1} s",
            bound.as_secs_f64()
        )),
    };
    // What the server under test did wrong towards the fake servers fails the scenario.
    let violations: Vec<String> = run
        .fakes
        .iter()
        .flat_map(|(name, f)| {
            f.shared
                .inbox
                .violations()
                .into_iter()
                .map(move |v| format!("to fake server {name}: {v}"))
        })
        .collect();
    if !violations.is_empty() && run.skipped.is_none() {
        let listed = violations.join("\n  ");
        result = match result {
            Ok(()) => Err(format!("the server under test misbehaved:\n  {listed}")),
            Err(e) => Err(format!(
                "{e}\nand the server under test misbehaved:\n  {listed}"
            )),
        };
    }
    if run.skipped.is_none() {
        result = run.identity_outcome(started, result);
    }
    Outcome {
        result: if run.skipped.is_some() {
            Ok(())
        } else {
            result
        },
        skipped: run.skipped,
        operations: run.operations,
        duration: started.elapsed(),
    }
}

impl<'a> Run<'a> {
    async fn all(&mut self) -> Result<(), StepError> {
        if self.scenario.needs.iter().any(|n| n == "admin") {
            self.admin()
                .await
                .map_err(|e| format!("the administrator account: {e}"))?;
        }
        for actor in self.scenario.actors.clone() {
            self.register(&actor)
                .await
                .map_err(|e| format!("creating actor {actor}: {e}"))?;
        }
        for (partner, actors) in &self.scenario.partners {
            let Some(p) = self.env.partners.get(partner) else {
                return Err(StepError::Skipped(format!(
                    "needs the partner homeserver `{partner}`, which the profile does not name ([federation.partners.{partner}])"
                )));
            };
            self.vars.set(
                &format!("{partner}.server_name"),
                json!(p.config.server_name),
            );
            self.on_partner = Some(partner.clone());
            for actor in actors {
                let r = self.register(actor).await;
                r.map_err(|e| format!("creating actor {actor} on {partner}: {e}"))?;
            }
            self.on_partner = None;
        }
        if !self.scenario.room_versions.is_empty() {
            if let Some(missing) = self.missing_room_version().await? {
                return Err(StepError::Skipped(format!(
                    "needs room version {missing}, which the server does not offer"
                )));
            }
        }
        for (i, step) in self.scenario.steps.iter().enumerate() {
            use crate::scenario::StepKind as K;
            let actor = match &step.kind {
                K::Call(_) | K::Http(_) => step.as_actor.as_deref(),
                K::SyncUntil(s) => s.as_actor.as_deref(),
                _ => None,
            };
            self.on_partner = actor
                .and_then(|a| self.scenario.partner_of(a))
                .map(str::to_string);
            let label = match &step.kind {
                K::Call(op) => op.clone(),
                K::Http(h) => format!("{} {}", h.method, h.path),
                K::Mail(m) | K::Sms(m) => format!("message to {}", m.to),
                other => other.key().to_string(),
            };
            let r = match &step.kind {
                K::Call(_) => match self.call_step(step).await {
                    Err(StepError::Skipped(why)) => return Err(StepError::Skipped(why)),
                    Err(StepError::Failed(e)) => Err(e),
                    Ok(()) => Ok(()),
                },
                K::SyncUntil(s) => self.sync_until(step, s).await,
                K::Await(name) => self.await_background(step, name).await,
                K::Http(h) => self.http_step(step, h).await,
                K::Mail(m) | K::Sms(m) => self.mail_step(m).await,
                K::AppserviceReceives(w) => self.appservice_receives(w).await,
                K::Push(p) => self.push_step(p).await,
                K::IdentityCall(_) => self.identity_call(step).await,
                K::IdentityReceives(w) => self.identity_receives(step, w).await,
                K::FedJoin(j) => self.fed_join(step, j).await,
                K::FedInvite(f) => self.fed_invite(step, f).await,
                K::FedEdu(e) => self.fed_edu(step, e).await,
                K::FedSend(f) => self.fed_send(step, f).await,
                K::FedCall(c) => self.fed_call(step, c).await,
                K::FedAwait(a) => self.fed_await(step, a).await,
                K::FedCreateRoom(c) => self.fed_create_room(step, c).await,
                K::FedAnswer(a) => self.fed_answer(step, a).await,
                K::FedTransaction(t) => self.fed_transaction(step, t).await,
                K::Set(vars) => self.set_vars(vars),
                K::Use(u) => Err(format!("fixture {} was not expanded", u.fixture)),
            };
            r.map_err(|e| StepError::from(e).in_step(i + 1, &label))?;
        }
        Ok(())
    }

    fn set_vars(&mut self, vars: &BTreeMap<String, Value>) -> Result<(), String> {
        for (k, v) in vars {
            let v = self.vars.render(v)?;
            self.vars.set(k, v);
        }
        Ok(())
    }

    /// The client of the server the current step talks to.
    fn client(&self) -> &'a Client {
        let env: &'a Env = self.env;
        self.on_partner
            .as_ref()
            .and_then(|p| env.partners.get(p))
            .map_or(&env.client, |p| &p.client)
    }

    /// Counts an operation towards the server under test's coverage (not when a partner
    /// server was called).
    fn record(&mut self, op: &str) {
        if self.on_partner.is_some() {
            return;
        }
        if !self.operations.iter().any(|o| o == op) {
            self.operations.push(op.to_string());
        }
    }

    /// Calls an operation, validating the request (unless `invalid`) and the response.
    #[allow(clippy::too_many_arguments)]
    async fn call(
        &mut self,
        route: &'static Route,
        path: &BTreeMap<String, String>,
        query: &[(String, String)],
        body: Body,
        token: Option<&str>,
        invalid: bool,
        timeout: Option<Duration>,
    ) -> Result<Response, String> {
        if let (Body::Json(b), false) = (&body, invalid) {
            if let Some(v) = validate::validate(route.operation_id, &Part::Request, b)? {
                if let Some(first) = v.first() {
                    return Err(format!("the request breaks the spec's schema (fix the scenario, or mark the step `invalid`): {first}"));
                }
            }
        }
        self.record(route.operation_id);
        let resp = self
            .client()
            .call(route, path, query, body, token, timeout)
            .await?;
        check_schema(route, &resp)?;
        Ok(resp)
    }

    fn token_for(&self, step: &Step, actor: Option<&String>) -> Result<Option<String>, String> {
        if let Some(t) = &step.token {
            return Ok(Some(self.vars.render_text(t)?));
        }
        match step.auth {
            Some(AuthMode::None) => return Ok(None),
            Some(AuthMode::Bogus) => {
                return Ok(Some(format!("mxconform_bogus_{}", self.vars.unique)))
            }
            None => {}
        }
        let actor = actor.or_else(|| self.scenario.actors.first());
        Ok(actor.and_then(|a| self.tokens.get(a).cloned()))
    }

    fn render_params(
        &self,
        params: &BTreeMap<String, Value>,
    ) -> Result<Vec<(String, Value)>, String> {
        params
            .iter()
            .map(|(k, v)| Ok((k.clone(), self.vars.render(v)?)))
            .collect()
    }

    /// `body` with the step's `sign` signatures added, in order.
    fn signed(&self, step: &Step, mut body: Value) -> Result<Value, String> {
        for sign in &step.sign {
            let at = self.vars.render_text(&sign.at)?;
            let signer = self.vars.render_text(&sign.signer)?;
            let key = self
                .keys
                .get(&sign.key)
                .ok_or_else(|| format!("no key {}", sign.key))?;
            let key_id = match &sign.key_id {
                Some(id) => self.vars.render_text(id)?,
                None => format!("ed25519:{}", key.public_base64()),
            };
            let version = key_id
                .strip_prefix("ed25519:")
                .ok_or_else(|| format!("sign: key id {key_id:?} is not ed25519:<version>"))?;
            let key = key.with_version(version);
            let target = body
                .pointer_mut(&at)
                .ok_or_else(|| format!("sign: nothing at {at:?} in the body"))?;
            if !target.is_object() {
                return Err(format!("sign: {at:?} is not an object"));
            }
            mxconform_pdu::sign::sign_json(target, &signer, &key);
        }
        Ok(body)
    }

    async fn call_step(&mut self, step: &Step) -> Result<(), StepError> {
        let op = step.call().ok_or("no operation")?;
        let route = crate::route(op).ok_or_else(|| format!("no operation {op}"))?;
        let mut path: BTreeMap<String, String> = self
            .render_params(&step.path)?
            .into_iter()
            .map(|(k, v)| (k, text_of(&v)))
            .collect();
        // A transaction id the step does not give is a fresh one.
        if route.path_params().any(|p| p == "txnId") && !path.contains_key("txnId") {
            let fresh = self.vars.render_text("{{fresh}}")?;
            path.insert("txnId".into(), fresh);
        }
        let mut query = Vec::new();
        for (k, v) in self.render_params(&step.query)? {
            match v {
                Value::Array(items) => query.extend(items.iter().map(|i| (k.clone(), text_of(i)))),
                Value::Null => {}
                other => query.push((k, text_of(&other))),
            }
        }
        let body = match (&step.body, &step.raw_body) {
            (Some(b), _) => Body::Json(self.signed(step, self.vars.render(b)?)?),
            (None, Some(raw)) => Body::Raw {
                bytes: self.vars.render_text(raw)?.into_bytes(),
                content_type: step
                    .content_type
                    .clone()
                    .unwrap_or_else(|| "application/json".into()),
            },
            (None, None) if step.raw_body_base64.is_some() => Body::Raw {
                bytes: step
                    .raw_body_base64
                    .as_deref()
                    .and_then(crate::template::base64_decode)
                    .unwrap_or_default(),
                content_type: step
                    .content_type
                    .clone()
                    .unwrap_or_else(|| "application/octet-stream".into()),
            },
            (None, None)
                if route.request_body == mxconform_generated::BodyKind::Json && !step.invalid =>
            {
                Body::Json(json!({}))
            }
            (None, None) => Body::None,
        };
        let token = self.token_for(step, step.as_actor.as_ref())?;
        let as_mark = self
            .env
            .peers
            .as_ref()
            .map(|p| p.appservice_requests.mark());
        let deadline = step
            .eventually_ms
            .map(|ms| Instant::now() + Duration::from_millis(ms.min(60_000)));
        let resp = loop {
            let resp = self
                .call(
                    route,
                    &path,
                    &query,
                    body.clone(),
                    token.as_deref(),
                    step.invalid,
                    None,
                )
                .await?;
            let unrecognized = matches!(resp.status, 404 | 405)
                && resp.body.get("errcode").and_then(Value::as_str) == Some("M_UNRECOGNIZED");
            if step.skip_if_unrecognized && unrecognized {
                return Err(StepError::Skipped(format!(
                    "the server does not implement {op} ({} M_UNRECOGNIZED)",
                    resp.status
                )));
            }
            match crate::expect::response(&step.expect, resp.status, &resp.body, &self.vars) {
                Ok(()) => break resp,
                Err(e) => match deadline {
                    Some(d) if Instant::now() < d => {
                        tokio::time::sleep(Duration::from_millis(100)).await
                    }
                    Some(_) => {
                        return Err(StepError::Failed(format!(
                            "{e} (still, after {} ms of retries)",
                            step.eventually_ms.unwrap_or(0)
                        )))
                    }
                    None => return Err(e.into()),
                },
            }
        };
        check_headers(&step.expect, &resp, &self.vars)?;
        self.capture(step, &resp.body, &resp.headers)?;
        // A client-server operation answered by asking the application service exercised that
        // application-service operation, if the peer received (a conforming) one meanwhile.
        if let (Some(mark), Some(peers)) = (as_mark, self.env.peers.clone()) {
            for as_op in appservice_operations_behind(op) {
                if peers.appservice_requests.received_since(mark, as_op) {
                    self.record(&format!("application-service/{as_op}"));
                }
            }
        }
        if let Some(name) = &step.snapshot {
            let text = crate::snapshot::normalise(&resp.body, &self.env.profile.server_name);
            let dir = self.env.snapshot_dir.join(&self.scenario.area);
            let file = format!(
                "{}__{name}",
                self.scenario
                    .name
                    .rsplit('/')
                    .next()
                    .unwrap_or(&self.scenario.name)
            );
            crate::snapshot::assert(&dir, &file, &text)?;
        }
        Ok(())
    }

    /// A request by method and path; error answers must still have the standard shape.
    async fn http_step(&mut self, step: &Step, h: &crate::scenario::RawHttp) -> Result<(), String> {
        let path = self.vars.render_text(&h.path)?;
        if !path.starts_with('/') && !path.starts_with("http://") {
            return Err(format!(
                "the path {path:?} is neither a path nor an http:// URL"
            ));
        }
        let token = self.token_for(step, step.as_actor.as_ref())?;
        let body = match (&step.body, &step.raw_body) {
            (Some(b), _) => Body::Json(self.signed(step, self.vars.render(b)?)?),
            (None, Some(raw)) => Body::Raw {
                bytes: self.vars.render_text(raw)?.into_bytes(),
                content_type: step
                    .content_type
                    .clone()
                    .unwrap_or_else(|| "application/json".into()),
            },
            (None, None) => Body::None,
        };
        let resp = self
            .client()
            .send(
                &h.method,
                &path,
                &[],
                body,
                token.as_deref(),
                None,
                crate::client::Answers {
                    page: h.page,
                    ..Default::default()
                },
            )
            .await?;
        if resp.status >= 400 && !h.page {
            if let Some(v) = validate::error_shape(&resp.body).first() {
                return Err(format!(
                    "the {} error response has no standard error shape: {v}",
                    resp.status
                ));
            }
        }
        crate::expect::response(&step.expect, resp.status, &resp.body, &self.vars)?;
        check_headers(&step.expect, &resp, &self.vars)?;
        self.capture(step, &resp.body, &resp.headers)
    }

    /// Waits until the application service peer was sent a matching event (in a transaction
    /// that conformed to the application-service schema).
    async fn appservice_receives(
        &mut self,
        w: &crate::scenario::AppserviceReceives,
    ) -> Result<(), String> {
        let peers = self.env.peers.clone().ok_or("no peer is running")?;
        let want = self.vars.render(&w.event)?;
        let within = Duration::from_millis(w.within_ms.unwrap_or(10_000).min(60_000));
        let mark = peers.appservice_requests.mark();
        match peers
            .appservice_events
            .wait_for(|e| crate::expect::subset(&want, e), within)
            .await
        {
            Ok(_) => {
                self.record("application-service/sendTransaction");
                Ok(())
            }
            Err(e) => {
                let broken = peers.appservice_requests.violations_since(mark);
                if broken.is_empty() {
                    Err(format!("{e}; wanted {want}"))
                } else {
                    Err(format!(
                        "{e}; wanted {want}; requests the peer refused as breaking the application-service schema: {}",
                        broken.join(" | ")
                    ))
                }
            }
        }
    }

    /// Waits for a notification at the push gateway peer, checks it and captures from it.
    async fn push_step(&mut self, p: &crate::scenario::PushStep) -> Result<(), String> {
        let peers = self.env.peers.clone().ok_or("no peer is running")?;
        let pushkey = self.vars.render_text(&p.pushkey)?;
        let want = match &p.expect {
            Some(e) => self.vars.render(e)?,
            None => Value::Object(Default::default()),
        };
        let within = Duration::from_millis(p.within_ms.unwrap_or(10_000).min(60_000));
        let body = peers
            .pushes
            .take(&pushkey, |b| crate::expect::subset(&want, b), within)
            .await
            .map_err(|e| format!("{e}; wanted {want}"))?;
        self.record("push-gateway/notify");
        for pointer in &p.absent {
            if let Some(v) = body.pointer(pointer) {
                return Err(format!(
                    "the notification for {pushkey} has {v} at {pointer}, where nothing should be: {body}"
                ));
            }
        }
        for (name, pointer) in &p.capture {
            let v = body.pointer(pointer).cloned().ok_or_else(|| {
                format!("cannot capture `{name}`: nothing at {pointer} of {body}")
            })?;
            self.vars.set(name, v);
        }
        Ok(())
    }

    /// Waits for a mail at the mail peer and captures from its text.
    async fn mail_step(&mut self, m: &crate::scenario::MailStep) -> Result<(), String> {
        let peers = self.env.peers.clone().ok_or("no peer is running")?;
        let to = self.vars.render_text(&m.to)?;
        let within = Duration::from_millis(m.within_ms.unwrap_or(10_000).min(60_000));
        let mail = peers.mailbox.take(&to, within).await?;
        if let Some(headers) = &mail.headers {
            let missing = headers.missing();
            if !missing.is_empty() {
                return Err(format!(
                    "the mail to {to} lacks {} (RFC 5322 requires Date and From; every mail should carry a Message-ID)",
                    missing.join(", ")
                ));
            }
        }
        for (name, r) in &m.capture {
            let re =
                regex::Regex::new(r).map_err(|e| format!("capture `{name}`: bad regex: {e}"))?;
            let group = re.captures(&mail.text).and_then(|c| c.get(1)).ok_or_else(|| {
                let head: String = mail.text.chars().take(400).collect();
                format!("cannot capture `{name}`: the mail to {to} (from {}) does not match /{r}/: {head:?}", mail.from)
            })?;
            self.vars
                .set(name, Value::String(group.as_str().to_string()));
        }
        Ok(())
    }

    fn capture(
        &mut self,
        step: &Step,
        body: &Value,
        headers: &[(String, String)],
    ) -> Result<(), String> {
        for (name, c) in &step.capture {
            let (pointer, regex) = match c {
                crate::scenario::Capture::Mxc { mxc } => {
                    let pointer = self.vars.render_text(mxc)?;
                    let uri = body
                        .pointer(&pointer)
                        .and_then(Value::as_str)
                        .ok_or_else(|| format!("cannot capture `{name}`: no string at {pointer}"))?
                        .to_string();
                    let (server, media) = uri
                        .strip_prefix("mxc://")
                        .and_then(|r| r.split_once('/'))
                        .filter(|(s, m)| !s.is_empty() && !m.is_empty())
                        .ok_or_else(|| {
                            format!(
                                "cannot capture `{name}`: {uri:?} is not mxc://<server>/<media>"
                            )
                        })?;
                    self.vars.set(&format!("{name}.server"), json!(server));
                    self.vars.set(&format!("{name}.media_id"), json!(media));
                    self.vars.set(name, json!(uri));
                    continue;
                }
                crate::scenario::Capture::Pointer(p) => (p, None),
                crate::scenario::Capture::Match { at, regex } => (at, Some(regex)),
                crate::scenario::Capture::Header { header, regex } => {
                    let re = regex::Regex::new(regex)
                        .map_err(|e| format!("capture `{name}`: bad regex: {e}"))?;
                    let value = headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(header))
                        .map(|(_, v)| v.as_str())
                        .ok_or_else(|| format!("cannot capture `{name}`: no `{header}` header"))?;
                    let group = re.captures(value).and_then(|c| c.get(1)).ok_or_else(|| {
                        format!("cannot capture `{name}`: header `{header}: {value}` does not match /{regex}/ with a group")
                    })?;
                    self.vars
                        .set(name, Value::String(group.as_str().to_string()));
                    continue;
                }
            };
            let pointer = self.vars.render_text(pointer)?;
            let v = body
                .pointer(&pointer)
                .ok_or_else(|| format!("cannot capture `{name}`: nothing at {pointer}"))?;
            let v = match regex {
                None => v.clone(),
                Some(r) => {
                    let re = regex::Regex::new(r)
                        .map_err(|e| format!("capture `{name}`: bad regex: {e}"))?;
                    let text = v
                        .as_str()
                        .ok_or_else(|| format!("cannot capture `{name}`: {v} is not a string"))?;
                    let group = re.captures(text).and_then(|c| c.get(1)).ok_or_else(|| {
                        format!(
                            "cannot capture `{name}`: {text:?} does not match /{r}/ with a group"
                        )
                    })?;
                    Value::String(group.as_str().to_string())
                }
            };
            self.vars.set(name, v);
        }
        Ok(())
    }

    async fn sync_until(&mut self, step: &Step, s: &SyncUntil) -> Result<(), String> {
        let route = crate::route("sync").ok_or("no sync operation")?;
        let actor = s
            .as_actor
            .clone()
            .or_else(|| self.scenario.actors.first().cloned())
            .ok_or("sync_until needs an actor")?;
        let token = self
            .tokens
            .get(&actor)
            .cloned()
            .ok_or_else(|| format!("no token for {actor}"))?;
        let filter = match &s.filter {
            Some(f) => Some(self.vars.render(f)?.to_string()),
            None => None,
        };
        self.record("sync");
        if s.background.is_some() && !self.since.contains_key(&actor) {
            // Take the position now, so that what later steps do arrives in the long-poll.
            let mut query = vec![("timeout".to_string(), "0".to_string())];
            if let Some(f) = &filter {
                query.push(("filter".into(), f.clone()));
            }
            let resp = self
                .client()
                .call(
                    route,
                    &BTreeMap::new(),
                    &query,
                    Body::None,
                    Some(&token),
                    None,
                )
                .await?;
            check_schema(route, &resp)?;
            if let Some(next) = resp.body.get("next_batch").and_then(Value::as_str) {
                self.since.insert(actor.clone(), next.to_string());
            }
        }
        let job = SyncJob {
            client: self.client().clone(),
            route,
            actor: actor.clone(),
            token,
            since: self.since.get(&actor).cloned(),
            filter,
            checks: s.checks.clone(),
            vars: self.vars.clone(),
            bound: Duration::from_millis(s.timeout_ms.unwrap_or(10_000)),
            within: s.within_ms.map(Duration::from_millis),
        };
        match &s.background {
            Some(name) => {
                self.background
                    .insert(name.clone(), tokio::spawn(job.run()));
                Ok(())
            }
            None => {
                let done = job.run().await;
                self.finish_sync(step, done)
            }
        }
    }

    async fn await_background(&mut self, step: &Step, name: &str) -> Result<(), String> {
        let handle = self
            .background
            .remove(name)
            .ok_or_else(|| format!("`{name}` is not running"))?;
        let done = handle
            .await
            .map_err(|e| format!("the background sync `{name}` stopped: {e}"))?;
        // Captures on the `await` step apply to the background sync's matching response.
        self.finish_sync(step, done)
    }

    fn finish_sync(&mut self, step: &Step, done: Result<SyncDone, String>) -> Result<(), String> {
        let done = done?;
        if let Some(next) = done.next_batch {
            self.since.insert(done.actor, next);
        }
        self.capture(step, &done.body, &[])
    }
}

/// One `sync_until`, self-contained so that it can run in the background.
struct SyncJob {
    client: Client,
    route: &'static Route,
    actor: String,
    token: String,
    since: Option<String>,
    filter: Option<String>,
    checks: Vec<crate::scenario::Check>,
    vars: Vars,
    bound: Duration,
    within: Option<Duration>,
}

impl SyncJob {
    async fn run(self) -> Result<SyncDone, String> {
        let started = Instant::now();
        let deadline = started + self.bound;
        let mut since = self.since.clone();
        let mut last = String::from("no /sync response yet");
        let mut polls = 0u32;
        loop {
            let now = Instant::now();
            if now >= deadline || polls >= 200 {
                return Err(format!(
                    "checks did not hold within {:.1} s ({polls} /sync calls); last: {last}",
                    self.bound.as_secs_f64()
                ));
            }
            polls += 1;
            let wait_ms = (deadline - now).as_millis().min(5_000) as u64;
            let mut query = vec![("timeout".to_string(), wait_ms.to_string())];
            if let Some(s) = &since {
                query.push(("since".into(), s.clone()));
            }
            if let Some(f) = &self.filter {
                query.push(("filter".into(), f.clone()));
            }
            let timeout = Duration::from_millis(wait_ms) + self.client.limits.request_timeout;
            let resp = self
                .client
                .call(
                    self.route,
                    &BTreeMap::new(),
                    &query,
                    Body::None,
                    Some(&self.token),
                    Some(timeout),
                )
                .await?;
            check_schema(self.route, &resp)?;
            if resp.status != 200 {
                return Err(format!("/sync answered {}: {}", resp.status, resp.body));
            }
            let next = resp
                .body
                .get("next_batch")
                .and_then(Value::as_str)
                .map(str::to_string);
            if next.is_some() {
                since.clone_from(&next);
            }
            match self
                .checks
                .iter()
                .try_for_each(|c| crate::expect::check(c, &resp.body, &self.vars))
            {
                Ok(()) => {
                    let took = started.elapsed();
                    if let Some(w) = self.within {
                        if took > w {
                            return Err(format!(
                                "the checks held only after {} ms, more than the {} ms allowed (the long-poll did not wake up)",
                                took.as_millis(),
                                w.as_millis()
                            ));
                        }
                    }
                    return Ok(SyncDone {
                        actor: self.actor,
                        next_batch: since,
                        body: resp.body,
                    });
                }
                Err(e) => last = e,
            }
        }
    }
}

/// The response headers `expect.headers` names match their regular expressions (templated).
fn check_headers(
    expect: &crate::scenario::Expect,
    resp: &Response,
    vars: &crate::template::Vars,
) -> Result<(), String> {
    for (name, r) in &expect.headers {
        let r = vars.render_text(r)?;
        let re = regex::Regex::new(&r).map_err(|e| format!("header `{name}`: bad regex: {e}"))?;
        match resp.headers.iter().find(|(k, _)| k == name) {
            Some((_, v)) if re.is_match(v) => {}
            Some((_, v)) => return Err(format!("header `{name}: {v}` does not match /{r}/")),
            None => return Err(format!("no `{name}` header (status {})", resp.status)),
        }
    }
    Ok(())
}

fn check_schema(route: &Route, resp: &Response) -> Result<(), String> {
    // Token errors answer any operation that takes a token, whatever the operation documents
    // for 401 (user-interactive operations document only their auth flows there).
    let token_error = resp.status == 401
        && matches!(
            resp.body.get("errcode").and_then(Value::as_str),
            Some("M_MISSING_TOKEN" | "M_UNKNOWN_TOKEN")
        );
    if token_error {
        return match validate::error_shape(&resp.body).first() {
            Some(v) => Err(format!(
                "the 401 error response has no standard error shape: {v}"
            )),
            None => Ok(()),
        };
    }
    // A status the spec documents as bytes (media) or without a body (e.g. the 404 of an
    // optional well-known document) has no JSON schema to check.
    let documented_kind = route
        .responses
        .iter()
        .find(|r| r.status == resp.status)
        .map(|r| r.body);
    match documented_kind {
        Some(mxconform_generated::BodyKind::None) => return Ok(()),
        Some(mxconform_generated::BodyKind::Binary) if resp.body.is_null() => return Ok(()),
        _ => {}
    }
    match validate::validate(route.operation_id, &Part::Response(resp.status), &resp.body)? {
        Some(v) if !v.is_empty() => Err(format!(
            "the {} response breaks the spec's schema for {}: {}",
            resp.status,
            route.operation_id,
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        )),
        Some(_) => Ok(()),
        None if resp.status >= 400 => {
            let v = validate::error_shape(&resp.body);
            match v.first() {
                Some(first) => Err(format!(
                    "the {} error response has no standard error shape: {first}",
                    resp.status
                )),
                None => Ok(()),
            }
        }
        None => Ok(()),
    }
}

pub(crate) fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Operations the harness itself calls for a scenario (actor creation).
pub fn implicit_operations(
    scenario: &Scenario,
    registration: Registration,
) -> BTreeSet<&'static str> {
    let mut out = BTreeSet::new();
    if !scenario.actors.is_empty() && registration == Registration::Open {
        out.insert("register");
    }
    out
}

/// The application-service operations a homeserver makes to answer a client-server operation
/// (the third-party lookups it forwards, the ping, the alias it does not know).
fn appservice_operations_behind(op: &str) -> &'static [&'static str] {
    match op {
        "pingAppservice" => &["ping"],
        "getProtocols" | "getProtocolMetadata" => &["getProtocolMetadata"],
        "queryLocationByProtocol" => &["queryLocationByProtocol"],
        "queryUserByProtocol" => &["queryUserByProtocol"],
        "queryLocationByAlias" => &["queryLocationByAlias"],
        "queryUserByID" => &["queryUserByID"],
        "getRoomIdByAlias" | "joinRoom" => &["queryRoomByAlias"],
        "getProfile" | "getDisplayName" | "inviteUser" | "createRoom" => &["queryUserById"],
        _ => &[],
    }
}

/// Why a scenario stopped before its end.
#[derive(Debug)]
pub enum StepError {
    /// The server lacks what the scenario needs (a partner, a room version, an operation it
    /// answers `M_UNRECOGNIZED`): the scenario is skipped with this reason, not failed.
    Skipped(String),
    /// A check failed or the server misbehaved: the reason.
    Failed(String),
}

impl StepError {
    /// A failure, said as the failure of step `n` (`label`); a skip stays as it is.
    fn in_step(self, n: usize, label: &str) -> StepError {
        match self {
            StepError::Failed(e) => StepError::Failed(format!("step {n} ({label}): {e}")),
            skipped => skipped,
        }
    }
}

impl From<String> for StepError {
    fn from(e: String) -> StepError {
        StepError::Failed(e)
    }
}

impl From<&str> for StepError {
    fn from(e: &str) -> StepError {
        StepError::Failed(e.to_string())
    }
}
