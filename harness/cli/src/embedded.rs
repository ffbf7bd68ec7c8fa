//! Reference servers that `mxconform run` starts in memory: the server under test when no
//! `--server` is given, and partner homeservers a profile marks `embedded = true`. Each runs
//! on its own runtime thread, on free loopback ports.

use anyhow::{Context, Result};

use mxconform_harness::federation::tls::Authority;
use mxconform_harness::peers::Peers;

/// What to start.
pub struct Spec<'a> {
    /// `localhost` (reached by the harness's fake servers on the client listener only), or
    /// `localhost:<port>` with a TLS federation listener on that port (reached by name, as
    /// real homeservers reach each other).
    pub server_name: String,
    /// The authority whose certificates the server trusts when it calls other servers (and
    /// which issues its own listener's certificate).
    pub authority: Option<&'a Authority>,
    /// The harness's peers (application service, web, mail), for the server under test.
    pub peers: Option<&'a Peers>,
    pub admin: Option<&'a str>,
}

/// A running embedded server.
pub struct Embedded {
    pub url: String,
    thread: std::thread::JoinHandle<()>,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl Embedded {
    /// Stops the server and waits for its thread.
    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// A port free on 127.0.0.1 now (the server binds it moments later; a server name has to hold
/// the port before the server exists). It is taken below the range the kernel hands out itself
/// (to listeners on port 0, such as the harness's fake servers, and to outgoing connections):
/// one of those could take a port from that range between this check and the server's bind.
/// Below [`FIRST_PORT`] are the fixed ports of the test Synapses and their helpers.
pub fn free_port() -> Result<u16> {
    let low = kernel_ports_start();
    if low > FIRST_PORT + 1_000 {
        for _ in 0..200 {
            let mut r = [0u8; 2];
            getrandom::fill(&mut r).map_err(|e| anyhow::anyhow!("{e}"))?;
            let port = FIRST_PORT + u16::from_le_bytes(r) % (low - FIRST_PORT);
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).context("finding a free port")?;
    Ok(l.local_addr().context("finding a free port")?.port())
}

/// The lowest port [`free_port`] picks.
const FIRST_PORT: u16 = 20_000;

/// The first port of the range the kernel hands out itself (Linux's default when unknown).
fn kernel_ports_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// The port of a `host:port` server name, if it names one.
fn named_port(server_name: &str) -> Option<u16> {
    server_name
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
}

pub fn start(spec: Spec<'_>) -> Result<Embedded> {
    start_mutant(spec, None)
}

/// [`start`], with the no-op mutant of `mxconform mutants` when it names an operation (that
/// operation answers a made-up success and does nothing).
pub fn start_mutant(spec: Spec<'_>, noop_mutant: Option<&str>) -> Result<Embedded> {
    let mut config = mxconform_server::Config::in_memory(&spec.server_name);
    config.noop_mutant = noop_mutant.map(str::to_string);
    config.federation = spec
        .authority
        .map(|ca| mxconform_server::federation::FederationConfig {
            trust: mxconform_server::federation::Trust::Authorities(vec![ca.cert_pem.clone()]),
            dns: None,
            notaries: Vec::new(),
        });
    // The federation listener other homeservers reach by the server's name.
    let federation_tls = match (named_port(&spec.server_name), spec.authority) {
        (Some(port), Some(ca)) => {
            let (cert, key) = ca.issue_pem(&["localhost"]).map_err(anyhow::Error::msg)?;
            let tls = mxconform_server::tls_config(&cert, &key).map_err(anyhow::Error::msg)?;
            Some((std::net::SocketAddr::from(([127, 0, 0, 1], port)), tls))
        }
        _ => None,
    };
    // A made-up TURN server (nothing listens there), as the test Synapse has, so that the
    // suites can exercise getTurnServer.
    config.turn = Some(mxconform_server::Turn {
        uris: vec!["turn:127.0.0.1:3478?transport=udp".into()],
        username: "mxconform".into(),
        password: "mxconform-test-turn".into(),
        ttl: 86400,
    });
    // The profile's administrator account, once it is registered.
    config.admins = spec
        .admin
        .map(|a| format!("@{a}:{}", spec.server_name))
        .into_iter()
        .collect();
    if let Some(p) = spec.peers {
        if let Some(file) = &p.registration_file {
            config.appservices =
                crate::load_appservices(&[(file.clone(), p.appservice_url())], &spec.server_name)?;
        }
        if let Some(web) = p.web {
            // The web peer's pages may be previewed although they are on loopback.
            config.url_preview = true;
            config.outbound_allow = vec![web.ip()];
        }
        // The identity server clients name is on loopback too, with a certificate from the
        // same authority.
        if let (Some(id), Some(ca)) = (&p.identity, spec.authority) {
            config.outbound_ca.push(ca.cert_pem.clone());
            if let Ok(a) = id.name.parse::<std::net::SocketAddr>() {
                config.outbound_allow.push(a.ip());
            }
        }
        if let Some(web) = p.web_url() {
            config.msisdn_delegate = Some(web.clone());
            config.cas = Some(mxconform_server::Cas {
                server_url: format!("{web}/cas"),
                display_name: "CAS".into(),
            });
        }
        if let Some(smtp) = p.smtp {
            config.mail = Some(mxconform_server::Mail {
                relay: smtp.to_string(),
                from: "noreply@localhost".into(),
                tls: mxconform_server::outbound::SmtpTls::Opportunistic,
                credentials: None,
            });
        }
    }
    let server = mxconform_server::Server::open(config).map_err(anyhow::Error::msg)?;
    let (url_tx, url_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = url_tx.send(Err(format!(
                    "cannot start a runtime for the embedded server: {e}"
                )));
                return;
            }
        };
        rt.block_on(async move {
            let fed_server = server.clone();
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
            let running = match mxconform_server::serve(server, addr).await {
                Ok(running) => running,
                Err(e) => {
                    let _ = url_tx.send(Err(e));
                    return;
                }
            };
            let federation = match federation_tls {
                Some((addr, tls)) => {
                    match mxconform_server::serve_federation(fed_server, addr, tls).await {
                        Ok((_, task)) => Some(task),
                        Err(e) => {
                            let _ = url_tx.send(Err(e));
                            running.stop().await;
                            return;
                        }
                    }
                }
                None => None,
            };
            let _ = url_tx.send(Ok(running.url()));
            let _ = stop_rx.await;
            if let Some(task) = federation {
                task.abort();
            }
            running.stop().await;
        });
    });
    let url = url_rx
        .recv()
        .context("the embedded server thread ended early")?
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("starting the embedded server {}", spec.server_name))?;
    Ok(Embedded {
        url,
        thread,
        stop: stop_tx,
    })
}

#[cfg(test)]
mod tests {
    /// Ports for server names come from below the kernel's own range, and can be bound.
    #[test]
    fn free_ports_lie_below_the_kernels_own_range() {
        let low = super::kernel_ports_start();
        for _ in 0..20 {
            let port = super::free_port().expect("a port");
            if low > super::FIRST_PORT + 1_000 {
                assert!(
                    (super::FIRST_PORT..low).contains(&port),
                    "{port} (range from {low})"
                );
            }
            std::net::TcpListener::bind(("127.0.0.1", port)).expect("binds");
        }
    }
}
