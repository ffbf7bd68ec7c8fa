//! Peers: the outside world a homeserver talks to, played on loopback so that the suites can
//! exercise operations that need it. An application service (a bridge with one third-party
//! protocol), a mail sink that speaks SMTP (for e-mail validation), and a web server (pages to
//! preview, and the login page an SSO redirect points at), and an identity server over HTTPS
//! ([`identity`]).
//!
//! The homeserver is configured to use them (the registration file and addresses are in the
//! profile's `[peers]`); scenarios say which they need with `needs:` and are skipped, with a
//! reason, on a profile that configures none.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::error::{Error, Result};

mod appservice;
pub mod identity;
mod web;

use appservice::AppService;
use web::Web;
pub use web::{msisdn, NOTIFY_PATH};

/// The profile's `[peers]`: which peers to run, and where.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeersConfig {
    /// An application-service registration file (the format homeservers read), relative to
    /// the profile; its `url` says where the harness's application service listens.
    #[serde(default)]
    pub appservice: Option<PathBuf>,
    /// Where the mail sink listens for SMTP (`127.0.0.1:18025`).
    #[serde(default)]
    pub smtp: Option<String>,
    /// Where the web server listens (`127.0.0.1:18080`).
    #[serde(default)]
    pub web: Option<String>,
    /// Where the identity server listens for HTTPS (`127.0.0.1:18090`; its certificate from
    /// the profile's `[federation]` authority): see [`identity`].
    #[serde(default)]
    pub identity: Option<String>,
    /// Known schema violations of what the homeserver sends the identity server (`operation`
    /// as `<operationId> request`), so that one wrong field does not stop every scenario that
    /// goes through the operation; the scenario that checks the field is listed as a deviation.
    #[serde(default)]
    pub schema_deviations: Vec<crate::federation::SchemaDeviation>,
}

impl PeersConfig {
    pub fn is_empty(&self) -> bool {
        self.appservice.is_none()
            && self.smtp.is_none()
            && self.web.is_none()
            && self.identity.is_none()
    }
}

/// The parts of an application-service registration the harness's service needs.
#[derive(Clone, Debug, Deserialize)]
pub struct Registration {
    pub id: String,
    pub url: String,
    pub as_token: String,
    pub hs_token: String,
    pub sender_localpart: String,
    #[serde(default)]
    pub protocols: Vec<String>,
}

impl Registration {
    pub fn load(path: &Path) -> Result<Registration> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let r: Registration = serde_yaml::from_str(&text).map_err(|e| Error::Profile {
            path: path.to_path_buf(),
            reason: format!("not an application-service registration: {e}"),
        })?;
        if r.protocols.is_empty() {
            return Err(Error::Profile {
                path: path.to_path_buf(),
                reason: "the registration declares no protocol for the bridge's lookups".into(),
            });
        }
        Ok(r)
    }

    /// `host:port` of `url` (`http://` only: the peer does not speak TLS).
    pub fn listen_addr(&self) -> std::result::Result<String, String> {
        let bad = || {
            format!(
                "the registration's url {:?} is not http://host:port",
                self.url
            )
        };
        let url = url::Url::parse(&self.url).map_err(|_| bad())?;
        let plain = url.scheme() == "http"
            && matches!(url.path(), "" | "/")
            && url.query().is_none()
            && url.fragment().is_none()
            && url.username().is_empty();
        match (plain, url.host_str(), url.port_or_known_default()) {
            (true, Some(host), Some(port)) => Ok(format!("{host}:{port}")),
            _ => Err(bad()),
        }
    }

    /// The registration with another `url`, in the YAML homeservers read.
    pub fn yaml_with_url(path: &Path, url: &str) -> Result<String> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let mut v: serde_yaml::Value = serde_yaml::from_str(&text).map_err(|e| Error::Profile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if let Some(m) = v.as_mapping_mut() {
            m.insert("url".into(), url.into());
        }
        serde_yaml::to_string(&v).map_err(|e| Error::Other(e.to_string()))
    }
}

/// One mail the sink received.
#[derive(Clone, Debug)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    /// The text of every text part, decoded (transfer encodings, charsets, HTML entities).
    pub text: String,
    /// The message's headers the harness checks (`None` for a text message, which has none).
    pub headers: Option<crate::mail_sink::Headers>,
}

/// What a peer received, for scenarios to wait on: bounded (a misbehaving server cannot
/// fill memory), and each waiter woken when something arrives.
#[derive(Debug)]
struct Inbox<T> {
    items: Mutex<Vec<T>>,
    arrived: Notify,
    cap: usize,
}

impl<T> Inbox<T> {
    fn new(cap: usize) -> Inbox<T> {
        Inbox {
            items: Mutex::new(Vec::new()),
            arrived: Notify::new(),
            cap,
        }
    }

    fn put(&self, new: impl IntoIterator<Item = T>) {
        if let Ok(mut items) = self.items.lock() {
            items.extend(new);
            let over = items.len().saturating_sub(self.cap);
            items.drain(..over);
        }
        self.arrived.notify_waiters();
    }

    /// Waits until `pick` finds something among what arrived (it may take it out), for at most
    /// `within`; `Err` names how many items did arrive.
    async fn wait<R>(
        &self,
        within: Duration,
        mut pick: impl FnMut(&mut Vec<T>) -> Option<R>,
    ) -> std::result::Result<R, usize> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let seen = {
                let Ok(mut items) = self.items.lock() else {
                    return Err(0);
                };
                if let Some(r) = pick(&mut items) {
                    return Ok(r);
                }
                items.len()
            };
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return Err(seen);
            }
        }
    }
}

/// Mails (and text messages) received and not yet taken by a scenario.
#[derive(Debug)]
pub struct Mailbox(Inbox<Mail>);

impl Default for Mailbox {
    fn default() -> Mailbox {
        Mailbox(Inbox::new(1000))
    }
}

impl Mailbox {
    pub(crate) fn put(&self, mail: Mail) {
        self.0.put([mail]);
    }

    /// Takes the first message to `to`, waiting for one until `within`.
    pub async fn take(&self, to: &str, within: Duration) -> std::result::Result<Mail, String> {
        self.0
            .wait(within, |mails| {
                let i = mails
                    .iter()
                    .position(|m| m.to.iter().any(|t| t.eq_ignore_ascii_case(to)))?;
                Some(mails.remove(i))
            })
            .await
            .map_err(|_| {
                format!(
                    "no message to {to} arrived within {:.1} s",
                    within.as_secs_f64()
                )
            })
    }
}

/// A notification the push gateway was sent: the request body, and what checking it against
/// the push-gateway API's schema found (empty when it conforms).
#[derive(Clone, Debug)]
pub struct Pushed {
    pub body: Value,
    pub violations: Vec<String>,
}

impl Pushed {
    /// The push keys of the devices the notification is for.
    pub fn pushkeys(&self) -> Vec<&str> {
        self.body
            .pointer("/notification/devices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|d| d.get("pushkey").and_then(Value::as_str))
            .collect()
    }
}

/// Notifications the push gateway received and no scenario has taken yet.
#[derive(Debug)]
pub struct PushLog(Inbox<Pushed>);

impl Default for PushLog {
    fn default() -> PushLog {
        PushLog(Inbox::new(10_000))
    }
}

impl PushLog {
    fn put(&self, pushed: Pushed) {
        self.0.put([pushed]);
    }

    /// Takes the first notification for `pushkey` that `matches`, waiting until `within`; a
    /// notification for `pushkey` that broke the schema is taken and is an error at once.
    pub async fn take(
        &self,
        pushkey: &str,
        matches: impl Fn(&Value) -> bool,
        within: Duration,
    ) -> std::result::Result<Value, String> {
        let found = self
            .0
            .wait(within, |pushed| {
                let mine = |p: &Pushed| p.pushkeys().contains(&pushkey);
                if let Some(i) = pushed
                    .iter()
                    .position(|p| mine(p) && !p.violations.is_empty())
                {
                    return Some(Err(pushed.remove(i)));
                }
                let i = pushed.iter().position(|p| mine(p) && matches(&p.body))?;
                Some(Ok(pushed.remove(i).body))
            })
            .await
            .map_err(|_| {
                format!(
                    "the push gateway was sent no such notification for {pushkey} within {:.1} s",
                    within.as_secs_f64()
                )
            })?;
        found.map_err(|bad| {
            format!(
                "the notification for {pushkey} breaks the push-gateway schema: {}; it was {}",
                bad.violations.join("; "),
                bad.body
            )
        })
    }

    /// The notifications for `pushkey` that arrived and were not taken (for a step that
    /// expects none).
    pub fn count_for(&self, pushkey: &str) -> usize {
        self.0
            .items
            .lock()
            .map(|p| p.iter().filter(|p| p.pushkeys().contains(&pushkey)).count())
            .unwrap_or(0)
    }
}

/// The requests the application service peer received: which application-service operation,
/// in arrival order, and what checking the request against that API's schema found.
#[derive(Debug, Default)]
pub struct AsRequests {
    next: std::sync::atomic::AtomicU64,
    /// (sequence number, operation id, violations), the latest 10,000.
    seen: Mutex<std::collections::VecDeque<(u64, &'static str, Vec<String>)>>,
}

impl AsRequests {
    fn put(&self, op: &'static str, violations: Vec<String>) {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut seen) = self.seen.lock() {
            if seen.len() >= 10_000 {
                seen.pop_front();
            }
            seen.push_back((n, op, violations));
        }
    }

    /// The sequence number the next request will have (a mark to look from).
    pub fn mark(&self) -> u64 {
        self.next.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether a request for `op` that conformed arrived since `mark`.
    pub fn received_since(&self, mark: u64, op: &str) -> bool {
        self.seen.lock().is_ok_and(|seen| {
            seen.iter()
                .any(|(n, o, v)| *n >= mark && *o == op && v.is_empty())
        })
    }

    /// The schema violations of requests received since `mark`, as sentences.
    pub fn violations_since(&self, mark: u64) -> Vec<String> {
        self.seen
            .lock()
            .map(|seen| {
                seen.iter()
                    .filter(|(n, _, v)| *n >= mark && !v.is_empty())
                    .map(|(_, op, v)| format!("{op}: {}", v.join("; ")))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Events the application service was sent in transactions (each transaction counted once).
#[derive(Debug)]
pub struct EventLog {
    events: Inbox<Value>,
    /// Transaction ids seen (a homeserver retries a transaction with the same id).
    txns: Mutex<std::collections::VecDeque<String>>,
}

impl Default for EventLog {
    fn default() -> EventLog {
        EventLog {
            events: Inbox::new(10_000),
            txns: Mutex::new(std::collections::VecDeque::new()),
        }
    }
}

impl EventLog {
    fn put(&self, txn: &str, events: Vec<Value>) {
        if let Ok(mut seen) = self.txns.lock() {
            if seen.iter().any(|t| t == txn) {
                return;
            }
            if seen.len() >= 10_000 {
                seen.pop_front();
            }
            seen.push_back(txn.to_string());
        }
        self.events.put(events);
    }

    /// Waits until an event the service was sent satisfies `matches`.
    pub async fn wait_for(
        &self,
        matches: impl Fn(&Value) -> bool,
        within: Duration,
    ) -> std::result::Result<Value, String> {
        self.events
            .wait(within, |events| events.iter().find(|e| matches(e)).cloned())
            .await
            .map_err(|seen| {
                format!(
                    "the application service was sent no such event within {:.1} s ({seen} events received)",
                    within.as_secs_f64()
                )
            })
    }
}

/// The running peers. Dropping it stops them.
pub struct Peers {
    pub appservice: Option<(Registration, SocketAddr)>,
    pub smtp: Option<SocketAddr>,
    pub web: Option<SocketAddr>,
    pub mailbox: Arc<Mailbox>,
    /// What the push gateway (on the web peer) was sent.
    pub pushes: Arc<PushLog>,
    /// What the application service was sent.
    pub appservice_events: Arc<EventLog>,
    /// Which application-service operations the homeserver called, and how well.
    pub appservice_requests: Arc<AsRequests>,
    /// The application service's registration file as given.
    pub registration_file: Option<PathBuf>,
    /// The identity server (HTTPS), when the profile configures one.
    pub identity: Option<Arc<identity::Identity>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field(
                "appservice",
                &self.appservice.as_ref().map(|(r, a)| (&r.id, a)),
            )
            .field("smtp", &self.smtp)
            .field("web", &self.web)
            .finish()
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Peers {
    /// Starts the configured peers on their own runtime thread. `base` is the directory the
    /// registration path is relative to; `ephemeral` binds free ports instead of the
    /// configured ones (for a server the caller configures after, like the embedded one).
    pub fn start(
        config: &PeersConfig,
        base: &Path,
        server_name: &str,
        ephemeral: bool,
    ) -> Result<Peers> {
        Peers::start_with_authority(config, base, server_name, ephemeral, None)
    }

    /// [`Peers::start`], with the certificate authority that issues the identity server's
    /// certificate (the profile's `[federation]` one, which the homeserver trusts).
    pub fn start_with_authority(
        config: &PeersConfig,
        base: &Path,
        server_name: &str,
        ephemeral: bool,
        authority: Option<&crate::federation::tls::Authority>,
    ) -> Result<Peers> {
        let registration_file = config.appservice.as_ref().map(|p| base.join(p));
        let registration = registration_file
            .as_deref()
            .map(Registration::load)
            .transpose()?;
        let want = |configured: Option<String>| -> Option<String> {
            configured.map(|a| {
                if ephemeral {
                    "127.0.0.1:0".to_string()
                } else {
                    a
                }
            })
        };
        let as_addr = match &registration {
            Some(r) => Some(want(Some(r.listen_addr().map_err(Error::Other)?)).unwrap_or_default()),
            None => None,
        };
        let smtp_addr = want(config.smtp.clone());
        let web_addr = want(config.web.clone());
        let mailbox = Arc::new(Mailbox::default());
        let pushes = Arc::new(PushLog::default());
        let push_log = pushes.clone();
        let as_events = Arc::new(EventLog::default());
        let as_log = as_events.clone();
        let as_requests = Arc::new(AsRequests::default());
        let as_requests_log = as_requests.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let mb = mailbox.clone();
        let identity = match (want(config.identity.clone()), authority) {
            (None, _) => None,
            (Some(a), Some(ca)) => Some(
                identity::listen(&a, ca, mailbox.clone(), config.schema_deviations.clone())
                    .map_err(Error::Other)?,
            ),
            // Without an authority for its certificate there is no identity server: its
            // scenarios are skipped.
            (Some(_), None) => None,
        };
        let identity_peer = identity.as_ref().map(|l| l.identity.clone());
        let reg = registration.clone();
        let server_name = server_name.to_string();
        let thread = std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("cannot start the peers' runtime: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                let bind = |addr: Option<String>, what: &'static str| async move {
                    match addr {
                        None => Ok(None),
                        Some(a) => TcpListener::bind(&a).await.map(Some).map_err(|e| {
                            format!("cannot listen on {a} for the {what}: {e} (is another run using it?)")
                        }),
                    }
                };
                let listeners = async {
                    Ok::<_, String>((
                        bind(as_addr, "application service").await?,
                        bind(smtp_addr, "mail sink").await?,
                        bind(web_addr, "web server").await?,
                    ))
                }
                .await;
                let (as_l, smtp_l, web_l) = match listeners {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let addr = |l: &Option<TcpListener>| l.as_ref().and_then(|l| l.local_addr().ok());
                let _ = ready_tx.send(Ok((addr(&as_l), addr(&smtp_l), addr(&web_l))));
                if let (Some(l), Some(r)) = (as_l, reg) {
                    let svc = Arc::new(AppService {
                        reg: r,
                        server_name: server_name.clone(),
                        log: as_log,
                        requests: as_requests_log,
                    });
                    tokio::spawn(accept_http(l, move |req| {
                        let svc = svc.clone();
                        async move { svc.answer(req).await }
                    }));
                }
                if let Some(l) = smtp_l {
                    tokio::spawn(crate::mail_sink::accept(l, mb.clone(), None));
                }
                if let Some(l) = web_l {
                    let web = Arc::new(Web::new(mb.clone(), push_log));
                    tokio::spawn(accept_http(l, move |req| {
                        let web = web.clone();
                        async move { web.answer(req) }
                    }));
                }
                if let Some(l) = identity {
                    tokio::spawn(l.serve());
                }
                let _ = stop_rx.await;
            });
        });
        let (as_bound, smtp, web) = ready_rx
            .recv()
            .map_err(|_| Error::Other("the peers' thread ended early".into()))?
            .map_err(Error::Other)?;
        Ok(Peers {
            appservice: registration.zip(as_bound),
            smtp,
            web,
            mailbox,
            pushes,
            appservice_events: as_events,
            appservice_requests: as_requests,
            registration_file,
            identity: identity_peer,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The application service's URL as it listens (differs from the registration's when
    /// started with free ports).
    pub fn appservice_url(&self) -> Option<String> {
        self.appservice.as_ref().map(|(_, a)| format!("http://{a}"))
    }

    pub fn web_url(&self) -> Option<String> {
        self.web.map(|a| format!("http://{a}"))
    }

    /// Tells the identity server where the server under test's federation API is.
    pub fn connect_homeserver(&self, homeserver: &Arc<crate::federation::client::FedClient>) {
        if let Some(i) = &self.identity {
            i.connect(homeserver.clone());
        }
    }

    /// Which of `needs` (`appservice`, `mail`, `web`, `sms`: the web peer's SMS gateway) is not
    /// running, if any.
    pub fn missing<'a>(peers: Option<&Peers>, needs: &'a [String]) -> Option<&'a str> {
        needs
            .iter()
            .find(|n| match (n.as_str(), peers) {
                (_, None) => true,
                ("appservice", Some(p)) => p.appservice.is_none(),
                ("mail", Some(p)) => p.smtp.is_none(),
                ("web" | "sms" | "push", Some(p)) => p.web.is_none(),
                ("identity", Some(p)) => p.identity.is_none(),
                _ => true,
            })
            .map(String::as_str)
    }

    /// Template values scenarios use: `appservice.*`, `web.url`.
    pub fn vars(&self, server_name: &str) -> BTreeMap<String, Value> {
        let mut v = BTreeMap::new();
        if let Some((r, _)) = &self.appservice {
            v.insert("appservice.id".into(), json!(r.id));
            v.insert("appservice.as_token".into(), json!(r.as_token));
            v.insert(
                "appservice.sender".into(),
                json!(format!("@{}:{server_name}", r.sender_localpart)),
            );
            v.insert("appservice.protocol".into(), json!(r.protocols[0]));
        }
        if let Some(i) = &self.identity {
            v.insert("identity.server".into(), json!(i.name));
        }
        if let Some(u) = self.web_url() {
            v.insert("push.url".into(), json!(format!("{u}{NOTIFY_PATH}")));
            v.insert("web.url".into(), json!(u));
        }
        v
    }
}

type Answer = Response<Full<Bytes>>;

async fn accept_http<F, Fut>(listener: TcpListener, answer: F)
where
    F: Fn(Request<Bytes>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Answer> + Send + 'static,
{
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let answer = answer.clone();
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(sock);
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let answer = answer.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let bytes = match Limited::new(body, 1 << 20).collect().await {
                        Ok(c) => c.to_bytes(),
                        Err(_) => {
                            return Ok::<_, std::convert::Infallible>(json_answer(
                                413,
                                json!({"errcode": "M_TOO_LARGE"}),
                            ))
                        }
                    };
                    Ok(answer(Request::from_parts(parts, bytes)).await)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

fn json_answer(status: u16, v: Value) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn query_pairs(q: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(q.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// `%XX` escapes decoded (malformed ones kept as written), as UTF-8 (lossily).
pub(crate) fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_keeps_malformed_escapes() {
        assert_eq!(percent_decode("%23a%3Ab"), "#a:b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
