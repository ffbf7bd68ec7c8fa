//! Where another server's federation API is (the spec's server name resolution): an IP
//! literal or an explicit port says so; else the name's `/.well-known/matrix/server`
//! delegation, then the SRV records `_matrix-fed._tcp` (and the deprecated `_matrix._tcp`) of
//! the (delegated) host, else port 8448. DNS questions go to the configured name server, else
//! the first of the system's (`/etc/resolv.conf`); packets are made and read with simple-dns.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use simple_dns::rdata::RData;
use simple_dns::{Name, Packet, PacketFlag, Question, CLASS, QTYPE, TYPE};

/// How a server is reached: the URL base (whose host is the name TLS checks the certificate
/// for), the `Host` header to send, and the host to connect to instead when an SRV record
/// names another.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    pub base: String,
    pub host_header: String,
    pub connect_to: Option<String>,
}

/// `host` and the port of `host:port` (IPv6 literals in brackets).
pub fn split_port(name: &str) -> (&str, Option<&str>) {
    match name.rfind(':') {
        Some(i)
            if !name[i..].contains(']') && name[i + 1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            (&name[..i], Some(&name[i + 1..]))
        }
        _ => (name, None),
    }
}

fn is_ip_literal(host: &str) -> bool {
    host.parse::<std::net::Ipv4Addr>().is_ok() || (host.starts_with('[') && host.ends_with(']'))
}

/// The route of a name that says where it is: an IP literal (port 8448 unless given) or a
/// host with an explicit port; `None` for a bare host name.
pub fn direct(name: &str) -> Option<Route> {
    let (host, port) = split_port(name);
    if !is_ip_literal(host) && port.is_none() {
        return None;
    }
    Some(Route {
        base: format!("https://{host}:{}", port.unwrap_or("8448")),
        host_header: name.to_string(),
        connect_to: None,
    })
}

/// The route through an SRV answer, if any: its target and port, the name kept for TLS and
/// `Host`.
fn through_srv(host: &str, srv: Option<(String, u16)>) -> Option<Route> {
    let (target, port) = srv?;
    Some(Route {
        base: format!("https://{host}:{port}"),
        host_header: host.to_string(),
        connect_to: (target != host).then_some(target),
    })
}

/// A DNS client for the few questions federation asks (SRV, A, AAAA), over UDP.
#[derive(Clone, Debug)]
pub struct Dns {
    server: SocketAddr,
    /// Addresses of hosts only when a name server was configured (tests); otherwise the
    /// system's resolver (hosts file included) finds them.
    addresses_too: bool,
}

impl Dns {
    /// The configured name server, else the system's first; `None` when there is none.
    pub fn new(configured: Option<SocketAddr>) -> Option<Dns> {
        if let Some(server) = configured {
            return Some(Dns {
                server,
                addresses_too: true,
            });
        }
        let conf = std::fs::read_to_string("/etc/resolv.conf").ok()?;
        let server = conf.lines().find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver"))
                .then(|| w.next()?.parse::<IpAddr>().ok())
                .flatten()
        })?;
        Some(Dns {
            server: SocketAddr::new(server, 53),
            addresses_too: false,
        })
    }

    /// The answers of one question: SRV (target, port, priority, weight) or addresses.
    async fn ask(&self, name: &str, qtype: TYPE) -> Result<Vec<Answer>, String> {
        let id = (rand_id() & 0xffff) as u16;
        let mut query = Packet::new_query(id);
        query.set_flags(PacketFlag::RECURSION_DESIRED);
        let qname = Name::new(name).map_err(|e| format!("{name} is not a DNS name: {e}"))?;
        query.questions.push(Question::new(
            qname,
            QTYPE::TYPE(qtype),
            CLASS::IN.into(),
            false,
        ));
        let bytes = query.build_bytes_vec().map_err(|e| e.to_string())?;
        let bind: SocketAddr = if self.server.is_ipv4() {
            "0.0.0.0:0".parse().expect("an address")
        } else {
            "[::]:0".parse().expect("an address")
        };
        let sock = tokio::net::UdpSocket::bind(bind)
            .await
            .map_err(|e| format!("DNS: {e}"))?;
        sock.connect(self.server)
            .await
            .map_err(|e| format!("DNS {}: {e}", self.server))?;
        let mut buf = vec![0u8; 4096];
        // Two tries of two seconds each.
        for _ in 0..2 {
            sock.send(&bytes).await.map_err(|e| format!("DNS: {e}"))?;
            let Ok(got) = tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf)).await
            else {
                continue;
            };
            let n = got.map_err(|e| format!("DNS: {e}"))?;
            let reply = Packet::parse(&buf[..n]).map_err(|e| format!("DNS answer: {e}"))?;
            if reply.id() != id {
                continue;
            }
            return Ok(reply
                .answers
                .iter()
                .filter_map(|rr| match &rr.rdata {
                    RData::SRV(s) => Some(Answer::Srv {
                        target: s.target.to_string().trim_end_matches('.').to_string(),
                        port: s.port,
                        priority: s.priority,
                        weight: s.weight,
                    }),
                    RData::A(a) => Some(Answer::Ip(IpAddr::from(std::net::Ipv4Addr::from(
                        a.address,
                    )))),
                    RData::AAAA(a) => Some(Answer::Ip(IpAddr::from(std::net::Ipv6Addr::from(
                        a.address,
                    )))),
                    _ => None,
                })
                .collect());
        }
        Err(format!("DNS: no answer from {} for {name}", self.server))
    }

    /// The SRV record to use for `name` (lowest priority, then greatest weight), if any; a
    /// target of "." says the service is not there.
    pub async fn srv(&self, name: &str) -> Option<(String, u16)> {
        let mut records: Vec<(u16, std::cmp::Reverse<u16>, String, u16)> = self
            .ask(name, TYPE::SRV)
            .await
            .ok()?
            .into_iter()
            .filter_map(|a| match a {
                Answer::Srv {
                    target,
                    port,
                    priority,
                    weight,
                } => Some((priority, std::cmp::Reverse(weight), target, port)),
                Answer::Ip(_) => None,
            })
            .collect();
        records.sort();
        let (_, _, target, port) = records.into_iter().next()?;
        (!target.is_empty()).then_some((target, port))
    }

    /// The addresses of a host, asked of the configured name server.
    async fn addresses(&self, host: &str) -> Vec<IpAddr> {
        let mut out = Vec::new();
        for t in [TYPE::A, TYPE::AAAA] {
            for a in self.ask(host, t).await.unwrap_or_default() {
                if let Answer::Ip(ip) = a {
                    out.push(ip);
                }
            }
        }
        out
    }
}

enum Answer {
    Srv {
        target: String,
        port: u16,
        priority: u16,
        weight: u16,
    },
    Ip(IpAddr),
}

fn rand_id() -> u32 {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    u32::from_le_bytes(b)
}

/// Host names for the HTTP client: the SRV targets routes connect to instead of the names
/// TLS checks, and host addresses through the configured name server (else the system's).
#[derive(Clone, Default)]
pub struct Resolver {
    pub connect_to: Arc<Mutex<HashMap<String, String>>>,
    pub dns: Option<Dns>,
}

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        let target = self
            .connect_to
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&host)
            .cloned()
            .unwrap_or(host);
        let dns = self.dns.clone().filter(|d| d.addresses_too);
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = match dns {
                Some(d) => d
                    .addresses(&target)
                    .await
                    .into_iter()
                    .map(|ip| SocketAddr::new(ip, 0))
                    .collect(),
                None => tokio::net::lookup_host((target.as_str(), 0))
                    .await
                    .map(|a| a.collect())
                    .unwrap_or_default(),
            };
            if addrs.is_empty() {
                return Err(format!("no address for {target}").into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Routes found, kept for an hour (`Instant` is when found).
#[derive(Default)]
pub struct Routes {
    found: Mutex<HashMap<String, (Route, Instant)>>,
}

const KEEP_ROUTE: Duration = Duration::from_secs(3600);

impl Routes {
    pub fn get(&self, name: &str) -> Option<Route> {
        let found = self.found.lock().unwrap_or_else(|p| p.into_inner());
        found
            .get(name)
            .filter(|(_, at)| at.elapsed() < KEEP_ROUTE)
            .map(|(r, _)| r.clone())
    }

    pub fn put(&self, name: &str, route: Route) {
        let mut found = self.found.lock().unwrap_or_else(|p| p.into_inner());
        found.insert(name.to_string(), (route, Instant::now()));
    }
}

/// The route of a bare host name, given its delegation (`well_known`: the `m.server` value,
/// if the host publishes one) and an SRV lookup.
pub async fn resolve_host<F, Fut>(host: &str, well_known: Option<String>, srv: F) -> Route
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Option<(String, u16)>>,
{
    let target = match well_known {
        Some(delegated) => {
            if let Some(r) = direct(&delegated) {
                return r;
            }
            delegated
        }
        None => host.to_string(),
    };
    for service in ["_matrix-fed._tcp", "_matrix._tcp"] {
        if let Some(r) = through_srv(&target, srv(format!("{service}.{target}")).await) {
            return r;
        }
    }
    Route {
        base: format!("https://{target}:8448"),
        host_header: target,
        connect_to: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_that_say_where_they_are() {
        let base = |n: &str| direct(n).map(|r| r.base);
        assert_eq!(
            base("127.0.0.1:8001").as_deref(),
            Some("https://127.0.0.1:8001")
        );
        assert_eq!(base("127.0.0.1").as_deref(), Some("https://127.0.0.1:8448"));
        assert_eq!(base("[::1]:80").as_deref(), Some("https://[::1]:80"));
        assert_eq!(base("[::1]").as_deref(), Some("https://[::1]:8448"));
        assert_eq!(
            base("example.org:443").as_deref(),
            Some("https://example.org:443")
        );
        assert_eq!(direct("example.org"), None);
        assert_eq!(
            direct("example.org:443").unwrap().host_header,
            "example.org:443"
        );
    }

    /// The spec's order for bare names: the delegation (an address or port it names used as
    /// given), then `_matrix-fed._tcp`, then `_matrix._tcp` of the (delegated) host, then 8448;
    /// through SRV, TLS and `Host` keep the host's name and the connection goes to the target.
    #[tokio::test]
    async fn bare_names_follow_delegation_then_srv_then_8448() {
        let srv_table = |answers: Vec<(&'static str, (&'static str, u16))>| {
            move |q: String| {
                let hit = answers
                    .iter()
                    .find(|(n, _)| *n == q)
                    .map(|(_, (t, p))| (t.to_string(), *p));
                async move { hit }
            }
        };
        let none = srv_table(vec![]);
        let r = resolve_host("example.org", Some("delegated.org:1234".into()), &none).await;
        assert_eq!(
            (r.base.as_str(), r.host_header.as_str()),
            ("https://delegated.org:1234", "delegated.org:1234")
        );
        let r = resolve_host("example.org", Some("10.0.0.1".into()), &none).await;
        assert_eq!(r.base, "https://10.0.0.1:8448");
        let srv = srv_table(vec![(
            "_matrix-fed._tcp.delegated.org",
            ("fed.delegated.org", 443),
        )]);
        let r = resolve_host("example.org", Some("delegated.org".into()), &srv).await;
        assert_eq!(
            r,
            Route {
                base: "https://delegated.org:443".into(),
                host_header: "delegated.org".into(),
                connect_to: Some("fed.delegated.org".into()),
            }
        );
        let legacy = srv_table(vec![(
            "_matrix._tcp.example.org",
            ("old.example.org", 8449),
        )]);
        let r = resolve_host("example.org", None, &legacy).await;
        assert_eq!(r.base, "https://example.org:8449");
        assert_eq!(r.connect_to.as_deref(), Some("old.example.org"));
        let both = srv_table(vec![
            ("_matrix._tcp.example.org", ("old.example.org", 8449)),
            ("_matrix-fed._tcp.example.org", ("new.example.org", 8450)),
        ]);
        let r = resolve_host("example.org", None, &both).await;
        assert_eq!(
            r.connect_to.as_deref(),
            Some("new.example.org"),
            "the current service first"
        );
        let r = resolve_host("example.org", None, &none).await;
        assert_eq!(
            (r.base.as_str(), r.host_header.as_str(), r.connect_to),
            ("https://example.org:8448", "example.org", None)
        );
    }
}
