//! Requests this server makes to others: an application service's transactions, pings and
//! third-party lookups, CAS ticket checks, SMS gateways, pages to preview, mail to send.
//! HTTP(S) through reqwest with rustls (the system's authorities and any configured ones),
//! mail through lettre; each request bounded by a timeout and a size cap, so that a peer that
//! stalls or floods cannot hold a request forever. Requests made on a user's behalf (previews)
//! reach only public addresses, checked where the connection is made ([`addresses`]).

pub mod addresses;
mod mail;

pub use mail::{send_mail, SmtpTls};

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use addresses::Reach;

/// Why an outbound request failed.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// No connection (refused, unresolvable, unsupported scheme, TLS refused).
    Connect(String),
    /// The destination is an address this client may not reach (a preview of a private one).
    Refused(String),
    /// No complete answer in time.
    Timeout,
    /// A broken exchange after connecting.
    Protocol(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Connect(e) => write!(f, "cannot connect: {e}"),
            Failure::Refused(e) => write!(f, "{e}"),
            Failure::Timeout => write!(f, "no answer in time"),
            Failure::Protocol(e) => write!(f, "{e}"),
        }
    }
}

/// An answer: status, content type and body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Bytes,
}

/// An address refused by a client's [`Reach`] (carried through reqwest's error chain).
#[derive(Debug)]
struct RefusedAddress(String);

impl std::fmt::Display for RefusedAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RefusedAddress {}

/// Where host names are looked up.
#[derive(Clone, Debug)]
pub enum Lookup {
    /// The system's resolver.
    System,
    /// These answers, and no others (tests: a name that resolves to a chosen address).
    Fixed(HashMap<String, Vec<IpAddr>>),
}

impl Lookup {
    async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        match self {
            Lookup::System => tokio::net::lookup_host((host, 0))
                .await
                .map(|a| a.map(|a| a.ip()).collect())
                .map_err(|e| format!("cannot resolve {host}: {e}")),
            Lookup::Fixed(map) => map
                .get(host)
                .cloned()
                .ok_or_else(|| format!("cannot resolve {host}: no such name")),
        }
    }
}

/// The resolver of a client: looks the name up once and hands the connection only the
/// addresses its [`Reach`] permits, so what is checked is what is connected to.
struct GuardedResolver {
    reach: Reach,
    lookup: Lookup,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        let reach = self.reach.clone();
        let lookup = self.lookup.clone();
        Box::pin(async move {
            let all = lookup.addresses(&host).await?;
            if all.is_empty() {
                return Err(format!("{host} has no address").into());
            }
            let permitted: Vec<SocketAddr> = all
                .iter()
                .filter(|ip| reach.permits(**ip))
                .map(|ip| SocketAddr::new(*ip, 0))
                .collect();
            if permitted.is_empty() {
                let list: Vec<String> = all.iter().map(IpAddr::to_string).collect();
                return Err(Box::new(RefusedAddress(format!(
                    "{host} resolves only to addresses this server may not reach ({})",
                    list.join(", ")
                )))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(permitted.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The URL, checked: http or https, a host, and (an address written in the URL itself) one
/// the reach permits.
fn checked_url(url: &str, reach: &Reach) -> Result<reqwest::Url, Failure> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| Failure::Connect(format!("{url} is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Failure::Connect(format!(
            "{url} is not an http:// or https:// URL"
        )));
    }
    check_host(&parsed, reach).map_err(|e| Failure::Refused(e.0))?;
    Ok(parsed)
}

fn check_host(url: &reqwest::Url, reach: &Reach) -> Result<(), RefusedAddress> {
    let ip = match url.host() {
        None => return Err(RefusedAddress(format!("{url} names no host"))),
        Some(url::Host::Domain(_)) => return Ok(()),
        Some(url::Host::Ipv4(v)) => IpAddr::V4(v),
        Some(url::Host::Ipv6(v)) => IpAddr::V6(v),
    };
    if reach.permits(ip) {
        Ok(())
    } else {
        Err(RefusedAddress(format!(
            "{ip} is an address this server may not reach"
        )))
    }
}

/// Checks that `url` could be requested (scheme and host), for configuration read at start.
pub fn check_configured_url(url: &str) -> Result<(), Failure> {
    checked_url(url, &Reach::Any).map(|_| ())
}

/// An HTTP(S) client with its reach.
pub struct Client {
    http: reqwest::Client,
    reach: Reach,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("reach", &self.reach)
            .finish()
    }
}

/// The largest number of redirects a preview follows.
const MAX_REDIRECTS: usize = 5;

impl Client {
    /// `roots`: authorities trusted beside the system's (PEM). Redirects are followed (each
    /// hop checked against the reach) only for clients that do not reach everything:
    /// configured destinations are called exactly where configured.
    pub fn new(reach: Reach, roots: &[String], lookup: Lookup) -> Result<Client, String> {
        // reqwest wants a process-wide provider with the rustls backend (no platform crypto).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut certs = Vec::new();
        for pem in roots {
            let found = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .map_err(|e| format!("a trusted authority's PEM: {e}"))?;
            if found.is_empty() {
                return Err("no certificate in a trusted authority's PEM".into());
            }
            certs.extend(found);
        }
        let redirects = match &reach {
            Reach::Any => reqwest::redirect::Policy::none(),
            Reach::Public { .. } => {
                let hop_reach = reach.clone();
                reqwest::redirect::Policy::custom(move |attempt| {
                    if attempt.previous().len() >= MAX_REDIRECTS {
                        return attempt.error(RefusedAddress(format!(
                            "more than {MAX_REDIRECTS} redirects"
                        )));
                    }
                    if !matches!(attempt.url().scheme(), "http" | "https") {
                        let to = attempt.url().to_string();
                        return attempt
                            .error(RefusedAddress(format!("a redirect to {to}, not http(s)")));
                    }
                    match check_host(attempt.url(), &hop_reach) {
                        Ok(()) => attempt.follow(),
                        Err(e) => attempt.error(e),
                    }
                })
            }
        };
        let http = reqwest::Client::builder()
            .tls_backend_rustls()
            .tls_certs_merge(certs)
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver {
                reach: reach.clone(),
                lookup,
            }))
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(30))
            .redirect(redirects)
            .user_agent(concat!("mxconform-server/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("making the outbound HTTP client: {e}"))?;
        Ok(Client { http, reach })
    }

    /// One request. `headers` are added to reqwest's (and `Content-Type` for a JSON body).
    pub async fn request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, String)],
        json_body: Option<&serde_json::Value>,
        timeout: Duration,
        max_body: usize,
    ) -> Result<Answer, Failure> {
        let parsed = checked_url(url, &self.reach)?;
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|e| Failure::Protocol(format!("the method {method}: {e}")))?;
        let mut req = self.http.request(method, parsed);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        if let Some(v) = json_body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(v.to_string());
        }
        let work = async {
            let mut resp = req.send().await.map_err(failure)?;
            let status = resp.status().as_u16();
            let content_type = resp
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let too_large =
                || Failure::Protocol(format!("the answer is larger than {max_body} bytes"));
            if resp.content_length().is_some_and(|n| n > max_body as u64) {
                return Err(too_large());
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(failure)? {
                if body.len() + chunk.len() > max_body {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Answer {
                status,
                content_type,
                body: Bytes::from(body),
            })
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| Failure::Timeout)?
    }
}

/// A reqwest error as a [`Failure`], with its causes (reqwest's own message is terse).
fn failure(e: reqwest::Error) -> Failure {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
    let mut causes = Vec::new();
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<RefusedAddress>() {
            return Failure::Refused(r.0.clone());
        }
        causes.push(s.to_string());
        source = s.source();
    }
    let text = if causes.is_empty() {
        e.to_string()
    } else {
        format!("{e}: {}", causes.join(": "))
    };
    if e.is_timeout() {
        Failure::Timeout
    } else if e.is_connect() || e.is_redirect() {
        Failure::Connect(text)
    } else {
        Failure::Protocol(text)
    }
}

/// The server's two clients: one for destinations the operator configured (any address), one
/// for requests on users' behalf (public addresses, and the allowed ones).
#[derive(Debug)]
pub struct Clients {
    pub configured: Client,
    pub public: Client,
}

impl Clients {
    pub fn new(roots: &[String], public_allowed: Vec<IpAddr>) -> Result<Clients, String> {
        Ok(Clients {
            configured: Client::new(Reach::Any, roots, Lookup::System)?,
            public: Client::new(
                Reach::Public {
                    allowed: public_allowed,
                },
                roots,
                Lookup::System,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server on 127.0.0.1 answering every request with `answer` (a whole HTTP response);
    /// its port, and how many connections it accepted.
    async fn web(answer: String) -> (u16, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = sock.read(&mut buf).await;
                    let _ = sock.write_all(answer.as_bytes()).await;
                });
            }
        });
        (port, accepted)
    }

    fn ok(body: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    fn public(allowed: &[&str], names: &[(&str, &str)]) -> Client {
        let lookup = Lookup::Fixed(
            names
                .iter()
                .map(|(n, ip)| (n.to_string(), vec![ip.parse().unwrap()]))
                .collect(),
        );
        let allowed = allowed.iter().map(|a| a.parse().unwrap()).collect();
        Client::new(Reach::Public { allowed }, &[], lookup).unwrap()
    }

    async fn get(client: &Client, url: &str) -> Result<Answer, Failure> {
        client
            .request("GET", url, &[], None, Duration::from_secs(5), 1 << 16)
            .await
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused_when_connecting() {
        let (port, accepted) = web(ok("inside")).await;
        let url = format!("http://inside.test:{port}/page");
        // The name resolves to 127.0.0.1, where a server listens: refused, never connected.
        let refused = get(&public(&[], &[("inside.test", "127.0.0.1")]), &url).await;
        match refused {
            Err(Failure::Refused(why)) => assert!(why.contains("127.0.0.1"), "{why}"),
            other => panic!("not refused: {other:?}"),
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 0);
        // The same request with the address allowed reaches it: the refusal was the check's.
        let allowed = public(&["127.0.0.1"], &[("inside.test", "127.0.0.1")]);
        let answer = get(&allowed, &url).await.expect("allowed");
        assert_eq!((answer.status, &answer.body[..]), (200, &b"inside"[..]));
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn internal_addresses_written_in_the_url_are_refused() {
        let (port, accepted) = web(ok("inside")).await;
        let client = public(&[], &[]);
        for host in [
            "127.0.0.1",
            "[::ffff:127.0.0.1]",
            "0.0.0.0",
            "0x7f.1",
            "[::1]",
        ] {
            let url = format!("http://{host}:{port}/");
            assert!(
                matches!(get(&client, &url).await, Err(Failure::Refused(_))),
                "{url}"
            );
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 0);
        // A fragment is not part of the host (`http://h#x` names host h).
        let answer = get(
            &public(&["127.0.0.1"], &[]),
            &format!("http://127.0.0.1:{port}#x"),
        )
        .await
        .expect("reached");
        assert_eq!(answer.status, 200);
    }

    #[tokio::test]
    async fn a_redirect_to_an_internal_address_is_refused() {
        let (inner, accepted) = web(ok("inside")).await;
        let (outer, _) = web(format!(
            "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.2:{inner}/\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ))
        .await;
        // The first hop is allowed, the second (another loopback address) is not.
        let client = public(&["127.0.0.1"], &[]);
        let hop = get(&client, &format!("http://127.0.0.1:{outer}/")).await;
        assert!(matches!(hop, Err(Failure::Refused(_))), "{hop:?}");
        assert_eq!(accepted.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn answers_larger_than_the_cap_are_refused() {
        let (port, _) = web(ok(&"x".repeat(5000))).await;
        let client = Client::new(Reach::Any, &[], Lookup::System).unwrap();
        let r = client
            .request(
                "GET",
                &format!("http://127.0.0.1:{port}/"),
                &[],
                None,
                Duration::from_secs(5),
                1000,
            )
            .await;
        assert!(
            matches!(r, Err(Failure::Protocol(ref e)) if e.contains("larger")),
            "{r:?}"
        );
    }

    #[tokio::test]
    async fn an_https_service_with_a_configured_authority_is_reached() {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let ca_issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca_issuer)
            .unwrap();
        let tls = crate::tls_config(&leaf.pem(), &leaf_key.serialize_pem()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut s) = acceptor.accept(sock).await else {
                        return;
                    };
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let _ = s.write_all(ok("{}").as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        let url = format!("https://localhost:{port}/_matrix/app/v1/ping");
        let trusting = Client::new(Reach::Any, &[ca.pem()], Lookup::System).unwrap();
        let answer = trusting
            .request(
                "POST",
                &url,
                &[],
                Some(&serde_json::json!({})),
                Duration::from_secs(5),
                1 << 16,
            )
            .await
            .expect("reached over HTTPS");
        assert_eq!((answer.status, &answer.body[..]), (200, &b"{}"[..]));
        // Without the authority the certificate is not trusted.
        let other = Client::new(Reach::Any, &[], Lookup::System).unwrap();
        let refused = other
            .request(
                "POST",
                &url,
                &[],
                Some(&serde_json::json!({})),
                Duration::from_secs(5),
                1 << 16,
            )
            .await;
        assert!(matches!(refused, Err(Failure::Connect(_))), "{refused:?}");
    }
}
