//! mxconform-server: a Matrix homeserver whose routes come from the generated route table.
//! [`Server::handle`] answers one HTTP request with no socket (what the tests call);
//! [`serve`] runs it on a TCP listener. Events live in an embedded SQLite database
//! ([`store`]) behind a bounded cache ([`events`]); the rest of the state is in memory
//! ([`state`]) and in the same database; every acknowledged write is committed before the
//! answer is sent.

pub mod appservice;
pub mod error;
pub mod events;
pub mod federation;
pub mod handlers;
pub mod http;
pub mod mutant;
pub mod outbound;
mod push_delivery;
pub mod router;
pub mod state;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

pub use error::{ApiError, ApiResult};
use state::State;
use store::{Batch, Durability, Store};

/// How costly password hashes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasswordCost {
    /// Argon2id with OWASP's recommended parameters (19 MiB, 2 passes).
    Standard,
    /// Argon2id at its minimum cost, for throw-away test servers only.
    Test,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub server_name: String,
    /// The database file; `None` keeps everything in memory (gone when the server stops).
    pub db: Option<PathBuf>,
    pub durability: Durability,
    pub password_cost: PasswordCost,
    /// Largest request body accepted (media uploads included).
    pub max_body: usize,
    /// Largest JSON request body accepted.
    pub max_json_body: usize,
    /// The TURN server handed to clients for VoIP; `None` answers getTurnServer with 404.
    pub turn: Option<Turn>,
    /// The URL clients reach this server at (well-known, links in mail); `None` uses the
    /// address it listens on.
    pub public_base_url: Option<String>,
    /// Registered application services.
    pub appservices: Vec<appservice::AppService>,
    /// Server administrators (user ids): they may look up, lock and suspend accounts.
    pub admins: Vec<String>,
    /// Where to send mail (e-mail validation); `None` refuses e-mail validation.
    pub mail: Option<Mail>,
    /// A CAS server for single sign-on (identity provider `cas`); `None` offers no SSO.
    pub cas: Option<Cas>,
    /// Where phone-number validation is delegated (an identity-service style SMS gateway:
    /// `<url>/_matrix/identity/api/v1/validate/msisdn/...`); `None` refuses phone numbers.
    pub msisdn_delegate: Option<String>,
    /// Whether URL previews are offered (of public addresses, and of [`Config::outbound_allow`]).
    pub url_preview: bool,
    /// Internal addresses (loopback, private, ...) that requests made on users' behalf may
    /// reach all the same: pages to preview, push gateways. Every other internal address is
    /// refused where the connection is made.
    pub outbound_allow: Vec<std::net::IpAddr>,
    /// The key the server signs with (`--signing-key FILE`); `None` uses the one kept in the
    /// database, made at the first start.
    pub signing_key: Option<mxconform_pdu::SigningKey>,
    /// How long the original content of a redacted event stays in the database (for
    /// moderators' review) before it is purged.
    pub redaction_retention: std::time::Duration,
    /// Federation: `None` answers the server-server API with 404 `M_UNRECOGNIZED` and sends
    /// nothing to other servers.
    pub federation: Option<federation::FederationConfig>,
    /// Every connection's limits (header and body read timeouts, how many at once).
    pub limits: ConnectionLimits,
    /// Authorities (PEM) trusted for outbound HTTPS and SMTP beside the system's: application
    /// services, CAS, SMS gateways, pages to preview, the mail relay.
    pub outbound_ca: Vec<String>,
    /// Tests only (`mxconform mutants`): the client-server operation, by operation id, whose
    /// requests are answered with a schema-valid success while nothing is done (see
    /// [`mutant`]). `None` (always, outside those tests) costs one comparison per request.
    pub noop_mutant: Option<String>,
}

/// What one client may hold of the server: a request's headers must arrive within
/// `header_timeout` (also how long an idle kept-alive connection waits for the next request),
/// its body within `body_timeout`; at most `max_connections` connections at once (more are
/// closed at accept, with a log line).
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    pub header_timeout: std::time::Duration,
    pub body_timeout: std::time::Duration,
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_timeout: std::time::Duration::from_secs(30),
            body_timeout: std::time::Duration::from_secs(60),
            max_connections: 4096,
        }
    }
}

/// The default [`Config::redaction_retention`]: seven days.
pub const REDACTION_RETENTION: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// A CAS server: `<server_url>/login` is where browsers log in, `<server_url>/proxyValidate`
/// where this server checks the tickets it hands back.
#[derive(Clone, Debug)]
pub struct Cas {
    pub server_url: String,
    /// The name clients show for it.
    pub display_name: String,
}

/// An SMTP relay (`host:port`), how it is reached, and the sender address.
#[derive(Clone, Debug)]
pub struct Mail {
    pub relay: String,
    pub from: String,
    pub tls: outbound::SmtpTls,
    /// User name and password, when the relay wants them.
    pub credentials: Option<(String, String)>,
}

/// A TURN server with static credentials.
#[derive(Clone, Debug)]
pub struct Turn {
    pub uris: Vec<String>,
    pub username: String,
    pub password: String,
    /// Seconds the credentials stay valid.
    pub ttl: u64,
}

impl Config {
    pub fn in_memory(server_name: &str) -> Config {
        Config {
            server_name: server_name.to_string(),
            db: None,
            durability: Durability::Process,
            password_cost: PasswordCost::Test,
            max_body: 50 * 1024 * 1024,
            max_json_body: 1024 * 1024,
            turn: None,
            public_base_url: None,
            appservices: Vec::new(),
            admins: Vec::new(),
            mail: None,
            cas: None,
            url_preview: false,
            outbound_allow: Vec::new(),
            msisdn_delegate: None,
            signing_key: None,
            redaction_retention: REDACTION_RETENTION,
            federation: None,
            limits: ConnectionLimits::default(),
            outbound_ca: Vec::new(),
            noop_mutant: None,
        }
    }
}

#[derive(Debug)]
struct Inner {
    /// The state, which owns the database.
    state: State,
}

/// A running homeserver's shared state.
#[derive(Debug)]
pub struct Server {
    inner: Mutex<Inner>,
    /// The latest committed stream position, for long-polls to wait on.
    changes: watch::Sender<u64>,
    pub router: router::Router,
    /// The server-server operations of the route table.
    pub fed_router: router::Router,
    pub federation: Option<federation::Federation>,
    pub config: Config,
    /// This server, for work it schedules for later (typing timeouts).
    me: std::sync::OnceLock<std::sync::Weak<Server>>,
    /// The URL clients reach this server at (well-known, links in mail), once it listens.
    pub base_url: std::sync::OnceLock<String>,
    /// The key this server signs with as a rooms' Policy Server (`ed25519:policy_server`),
    /// not its federation key: made at first start and kept with the data.
    pub policy_key: mxconform_pdu::SigningKey,
    /// User-interactive auth sessions (bounded, expiring).
    pub uia: Mutex<handlers::uia::UiaSessions>,
    /// HTTP(S) clients for requests to other services (not other homeservers).
    pub outbound: outbound::Clients,
}

impl Server {
    /// The URL clients reach this server at: configured, else where it listens, else (not
    /// listening: tests) `https://<server_name>`.
    pub fn public_url(&self) -> String {
        self.base_url
            .get()
            .cloned()
            .unwrap_or_else(|| format!("https://{}", self.config.server_name))
    }

    /// Opens the database (running migrations) and rebuilds the state from it.
    pub fn open(config: Config) -> Result<Arc<Server>, String> {
        if let Some(dir) = config.db.as_ref().and_then(|p| p.parent()) {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("creating {}: {e}", dir.display()))?;
            }
        }
        let store = Store::open(config.db.as_deref(), config.durability)?;
        let loaded = store.load()?;
        let stored_key = loaded
            .records
            .iter()
            .find(|(kind, key, _)| kind == "meta" && key == "signing_key")
            .map(|(_, _, v)| {
                let line = v.as_str().unwrap_or_default();
                mxconform_pdu::SigningKey::parse_file(line)
                    .map_err(|e| format!("the signing key kept in the database is unreadable: {e}"))
            })
            .transpose()?;
        let stored_policy_key = loaded
            .records
            .iter()
            .find(|(kind, key, _)| kind == "meta" && key == "policy_key")
            .map(|(_, _, v)| {
                mxconform_pdu::SigningKey::parse_file(v.as_str().unwrap_or_default()).map_err(|e| {
                    format!("the policy server key kept in the database is unreadable: {e}")
                })
            })
            .transpose()?;
        let policy_key = match &stored_policy_key {
            Some(k) => k.clone(),
            None => mxconform_pdu::SigningKey::generate(Some("policy_server"))
                .map_err(|e| format!("making a policy server key: {e}"))?,
        };
        let new_key = match (&config.signing_key, &stored_key) {
            (Some(k), _) | (None, Some(k)) => k.clone(),
            (None, None) => mxconform_pdu::SigningKey::generate(None)
                .map_err(|e| format!("making a signing key: {e}"))?,
        };
        let federation = config
            .federation
            .as_ref()
            .map(federation::Federation::new)
            .transpose()?;
        let outbound = outbound::Clients::new(&config.outbound_ca, config.outbound_allow.clone())?;
        let mut state = State::with_store(&config.server_name, new_key.clone(), store);
        state.policy_key = Some(policy_key.clone());
        state.restore(loaded)?;
        let pos = state.pos;
        let server = Arc::new(Server {
            inner: Mutex::new(Inner { state }),
            changes: watch::channel(pos).0,
            router: router::Router::new(mxconform_generated::client_server::ROUTES.iter()),
            fed_router: router::Router::new(mxconform_generated::server_server::ROUTES.iter()),
            federation,
            config,
            me: std::sync::OnceLock::new(),
            base_url: std::sync::OnceLock::new(),
            policy_key,
            uia: Mutex::default(),
            outbound,
        });
        let _ = server.me.set(Arc::downgrade(&server));
        server.purge_redacted()?;
        // A key made now is kept with the data, so that events stay verifiable across
        // restarts.
        if stored_key.is_none() && server.config.signing_key.is_none() {
            server
                .write(|state, batch| state.keep_signing_key(batch))
                .map_err(|e| e.message)?;
        }
        if stored_policy_key.is_none() {
            let line = server.policy_key.to_file_line();
            server
                .write(|_, batch| {
                    batch.put("meta", "policy_key", &serde_json::json!(line));
                    Ok(())
                })
                .map_err(|e| e.message)?;
        }
        // Each application service's own user exists from the start.
        for asv in &server.config.appservices {
            let sender = asv.sender.clone();
            server
                .write(|state, batch| {
                    if !state.users.contains_key(&sender) {
                        state.put_user(batch, state::User::new(&sender, None));
                    }
                    Ok(())
                })
                .map_err(|e| e.message)?;
        }
        Ok(server)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves state that may not match the database; the
        // handlers do not panic, but if one did, carrying on is still better than refusing
        // every later request: the database, not memory, is the record.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the state.
    pub fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.lock().state)
    }

    /// Changes the state and commits what changed before returning. A failed commit stops
    /// the process: memory must never run ahead of the database, and the next start rebuilds
    /// from what was committed.
    pub fn write<T>(&self, f: impl FnOnce(&mut State, &mut Batch) -> ApiResult<T>) -> ApiResult<T> {
        let mut inner = self.lock();
        let mut batch = Batch::default();
        let before = inner.state.pos;
        let out = f(&mut inner.state, &mut batch);
        let edus = std::mem::take(&mut inner.state.outbox);
        if batch.is_empty() {
            return out;
        }
        // The EDUs the write made, to each server they go to; those that must arrive
        // (to-device messages, device-list and signing-key updates) are kept with the write
        // until delivered.
        let routed: Vec<(String, Option<u64>, serde_json::Value)> = if self.federation.is_some() {
            let state = &mut inner.state;
            let mut routed = Vec::new();
            for (to, edu) in edus {
                for d in state.edu_destinations(&to) {
                    let seq = federation::sender::durable(&edu).then(|| {
                        state.edu_seq += 1;
                        batch.put("fed_edu", format!("{d}\u{0}{}", state.edu_seq), &edu);
                        state.edu_seq
                    });
                    routed.push((d, seq, edu.clone()));
                }
            }
            routed
        } else {
            Vec::new()
        };
        if let Err(e) = inner.state.store.commit(batch) {
            eprintln!("mxconform-server: commit failed ({}); stopping so that no unsaved change is served", e.message);
            std::process::abort();
        }
        inner.state.committed();
        let after = inner.state.pos;
        drop(inner);
        if after != before {
            self.changes.send_replace(after);
        }
        if let Some(f) = &self.federation {
            if !routed.is_empty() {
                f.sender.queue_edus(routed);
            }
            if after != before || !f.sender.idle() {
                f.sender.wake(self);
            }
        }
        out
    }

    /// Media bytes by id.
    pub fn media(&self, id: &str) -> ApiResult<Option<(Option<String>, Option<String>, Vec<u8>)>> {
        self.lock().state.store.media(id)
    }

    /// This server as shared, for work that outlives a handler's borrow (outbound requests).
    pub fn shared(&self) -> Option<Arc<Server>> {
        self.me.get().and_then(std::sync::Weak::upgrade)
    }

    /// Runs `f` on the state at `at` (on the current tokio runtime), committing what it changes.
    pub fn later(
        &self,
        at: std::time::Instant,
        f: impl FnOnce(&mut State, &mut Batch) + Send + 'static,
    ) {
        let Some(server) = self.me.get().and_then(std::sync::Weak::upgrade) else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let _ = server.write(|state, batch| {
                f(state, batch);
                Ok(())
            });
        });
    }

    /// Purges the original content of events redacted longer ago than the retention.
    pub fn purge_redacted(&self) -> Result<usize, String> {
        let retention =
            u64::try_from(self.config.redaction_retention.as_millis()).unwrap_or(u64::MAX);
        let cutoff = state::now_ms().saturating_sub(retention);
        self.write(|state, batch| Ok(state.purge_redacted(batch, cutoff)))
            .map_err(|e| e.message)
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Tells long-polls to look again (for changes outside the stream, such as typing expiry).
    pub fn nudge(&self) {
        self.changes.send_modify(|_| {});
    }
}

/// A server listening on a socket.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    pub server: Arc<Server>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting connections and waits for the accept loop to end.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// Binds `addr` and serves `server` on it until [`Running::stop`].
pub async fn serve(server: Arc<Server>, addr: SocketAddr) -> Result<Running, String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let _ = server.base_url.set(
        server
            .config
            .public_base_url
            .clone()
            .map(|u| u.trim_end_matches('/').to_string())
            .unwrap_or_else(|| format!("http://{addr}")),
    );
    // Other servers that had not taken all of this server's events are sent the rest.
    if let Some(f) = &server.federation {
        f.sender.wake(&server);
    }
    // Notifications go to the users' push gateways.
    tokio::spawn(push_delivery::deliver(Arc::downgrade(&server)));
    for asv in server.config.appservices.iter().filter(|a| a.url.is_some()) {
        tokio::spawn(appservice::push_transactions(
            Arc::downgrade(&server),
            asv.clone(),
        ));
    }
    // Redacted content is purged as its retention ends: checked at a tenth of the retention,
    // between once a second and once an hour.
    let every = (server.config.redaction_retention / 10).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(3600),
    );
    let purger = Arc::downgrade(&server);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(server) = purger.upgrade() else {
                break;
            };
            if let Err(e) = server.purge_redacted() {
                tracing::error!("purging redacted content failed: {e}");
            }
        }
    });
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    let srv = server.clone();
    let slots = Arc::new(tokio::sync::Semaphore::new(
        server.config.limits.max_connections,
    ));
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                accepted = listener.accept() => match accepted {
                    Ok((sock, peer)) => {
                        let Ok(slot) = slots.clone().try_acquire_owned() else {
                            tracing::warn!(
                                "{} connections open, the limit: closing the one from {peer}",
                                srv.config.limits.max_connections
                            );
                            drop(sock);
                            continue;
                        };
                        let _ = sock.set_nodelay(true);
                        let srv = srv.clone();
                        tokio::spawn(async move {
                            http::serve_connection(srv, sock).await;
                            drop(slot);
                        });
                    }
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
            }
        }
    });
    Ok(Running {
        addr,
        server,
        stop: Some(stop),
        task,
    })
}

/// Serves the federation API (and the rest, as on the client listener) over TLS on `addr`,
/// for other servers; stops with the returned handle's task when the server is dropped.
pub async fn serve_federation(
    server: Arc<Server>,
    addr: std::net::SocketAddr,
    tls: Arc<rustls::ServerConfig>,
) -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>), String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("listening on {addr} (federation): {e}"))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("the federation listener's address: {e}"))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let slots = Arc::new(tokio::sync::Semaphore::new(
        server.config.limits.max_connections,
    ));
    let task = tokio::spawn(async move {
        loop {
            let Ok((sock, peer)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(
                    "{} federation connections open, the limit: closing the one from {peer}",
                    server.config.limits.max_connections
                );
                continue;
            };
            let _ = sock.set_nodelay(true);
            let (acceptor, server) = (acceptor.clone(), server.clone());
            tokio::spawn(async move {
                let _slot = slot;
                // A handshake that does not finish in 10 s is dropped.
                let tls =
                    tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(sock))
                        .await;
                if let Ok(Ok(stream)) = tls {
                    http::serve_connection(server, stream).await;
                }
            });
        }
    });
    Ok((bound, task))
}

/// A TLS server configuration from a certificate chain and its private key (PEM files' text).
pub fn tls_config(cert_pem: &str, key_pem: &str) -> Result<Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    let chain: Vec<rustls::pki_types::CertificateDer<'static>> =
        rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("the certificate PEM: {e}"))?;
    if chain.is_empty() {
        return Err("the certificate PEM holds no certificate".into());
    }
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("the private key PEM: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS versions: {e}"))?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| format!("the TLS certificate and key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
