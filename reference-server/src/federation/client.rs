//! This server's requests to other servers: where a server name is reached
//! ([`super::discovery`]), HTTPS with the configured trust, X-Matrix signed, bounded in time
//! and size.

use std::sync::Arc;
use std::time::Duration;

use mxconform_pdu::{xmatrix, SigningKey};
use serde_json::Value;

use super::Trust;

/// The largest answer read from another server (a send_join of a big room is large).
const MAX_ANSWER: usize = 64 << 20;

use super::discovery::{self, Dns, Resolver, Route, Routes};

/// HTTPS to other servers.
pub struct Client {
    http: reqwest::Client,
    routes: Routes,
    resolver: Resolver,
}

/// An answer of another server.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Client {
    /// `dns`: the name server to ask (SRV records, and host addresses), else the system's.
    pub fn new(trust: &Trust, dns: Option<std::net::SocketAddr>) -> Result<Client, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS set-up: {e}"))?;
        let tls = match trust {
            Trust::Authorities(pems) => {
                use rustls::pki_types::pem::PemObject;
                let mut roots = rustls::RootCertStore::empty();
                for pem in pems {
                    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
                        let cert = cert.map_err(|e| format!("a trusted authority's PEM: {e}"))?;
                        roots
                            .add(cert)
                            .map_err(|e| format!("a trusted authority's certificate: {e}"))?;
                    }
                }
                if roots.is_empty() {
                    return Err("no certificate among the trusted authorities given".into());
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            Trust::Insecure => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
                .with_no_client_auth(),
        };
        // reqwest wants a process-wide provider even with a configured one (other clients of
        // the process, built without TLS settings, use it).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let resolver = Resolver {
            connect_to: Arc::default(),
            dns: Dns::new(dns),
        };
        let http = reqwest::Client::builder()
            .dns_resolver(Arc::new(resolver.clone()))
            .tls_backend_preconfigured(tls)
            .timeout(Duration::from_secs(20))
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("making the federation client: {e}"))?;
        Ok(Client {
            http,
            routes: Routes::default(),
            resolver,
        })
    }

    /// Where `server_name`'s federation API is, and how it is reached.
    pub async fn route(&self, server_name: &str) -> Route {
        if let Some(direct) = discovery::direct(server_name) {
            return direct;
        }
        if let Some(known) = self.routes.get(server_name) {
            return known;
        }
        // A bare host name: its delegation, if it publishes one, then SRV, else port 8448.
        let url = format!("https://{server_name}/.well-known/matrix/server");
        let well_known = match self
            .fetch(reqwest::Method::GET, &url, None, None, None)
            .await
        {
            Ok(a) if a.status == 200 => a
                .body
                .get("m.server")
                .and_then(Value::as_str)
                .map(str::to_string),
            _ => None,
        };
        let dns = self.resolver.dns.clone();
        let route = discovery::resolve_host(server_name, well_known, |q| {
            let dns = dns.clone();
            async move {
                match dns {
                    Some(d) => d.srv(&q).await,
                    None => None,
                }
            }
        })
        .await;
        if let Some(target) = &route.connect_to {
            let host = discovery::split_port(route.base.trim_start_matches("https://")).0;
            self.resolver
                .connect_to
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(host.to_string(), target.clone());
        }
        self.routes.put(server_name, route.clone());
        route
    }

    /// A request without authorization (key documents).
    pub async fn get(&self, destination: &str, path: &str) -> Result<Answer, String> {
        let route = self.route(destination).await;
        let url = format!("{}{path}", route.base);
        self.fetch(
            reqwest::Method::GET,
            &url,
            None,
            None,
            Some(&route.host_header),
        )
        .await
    }

    /// A request to `destination`, signed with X-Matrix as `origin` with `key`.
    pub async fn request(
        &self,
        origin: &str,
        key: &SigningKey,
        destination: &str,
        method: &str,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> Result<Answer, String> {
        let auth = xmatrix::authorization(origin, destination, key, method, path_and_query, body);
        let m = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|_| format!("{method} is not a method"))?;
        let route = self.route(destination).await;
        let url = format!("{}{path_and_query}", route.base);
        self.fetch(m, &url, body, Some(&auth), Some(&route.host_header))
            .await
    }

    async fn fetch(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
        auth: Option<&str>,
        host: Option<&str>,
    ) -> Result<Answer, String> {
        let raw = self
            .fetch_raw(method.clone(), url, body, auth, host)
            .await?;
        let body = if raw.bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&raw.bytes).map_err(|e| {
                format!(
                    "{method} {url}: the answer ({}) is not JSON: {e}",
                    raw.status
                )
            })?
        };
        Ok(Answer {
            status: raw.status,
            body,
        })
    }

    /// A signed request whose answer is not JSON (media).
    pub async fn request_raw(
        &self,
        origin: &str,
        key: &SigningKey,
        destination: &str,
        path_and_query: &str,
    ) -> Result<RawAnswer, String> {
        let auth = xmatrix::authorization(origin, destination, key, "GET", path_and_query, None);
        let route = self.route(destination).await;
        let url = format!("{}{path_and_query}", route.base);
        self.fetch_raw(
            reqwest::Method::GET,
            &url,
            None,
            Some(&auth),
            Some(&route.host_header),
        )
        .await
    }

    /// A plain GET of a URL another server named (where its media is).
    pub async fn get_url(&self, url: &str) -> Result<RawAnswer, String> {
        if !url.starts_with("https://") {
            return Err(format!("{url} is not an https URL"));
        }
        self.fetch_raw(reqwest::Method::GET, url, None, None, None)
            .await
    }

    /// `host`: the `Host` header, where it is not the URL's host and port (through SRV).
    async fn fetch_raw(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
        auth: Option<&str>,
        host: Option<&str>,
    ) -> Result<RawAnswer, String> {
        let mut req = self.http.request(method.clone(), url);
        if let Some(h) = host {
            req = req.header(reqwest::header::HOST, h);
        }
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("{method} {url}: {}", error_chain(&e)))?;
        let status = resp.status().as_u16();
        if resp
            .content_length()
            .is_some_and(|n| n as usize > MAX_ANSWER)
        {
            return Err(format!(
                "{method} {url}: the answer is larger than {MAX_ANSWER} bytes"
            ));
        }
        let header = |name: reqwest::header::HeaderName| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let content_type = header(reqwest::header::CONTENT_TYPE);
        let location = header(reqwest::header::LOCATION);
        let disposition = header(reqwest::header::CONTENT_DISPOSITION);
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| format!("{method} {url}: reading the answer: {}", error_chain(&e)))?;
        if bytes.len() > MAX_ANSWER {
            return Err(format!(
                "{method} {url}: the answer is larger than {MAX_ANSWER} bytes"
            ));
        }
        Ok(RawAnswer {
            status,
            content_type,
            location,
            disposition,
            bytes: bytes.to_vec(),
        })
    }
}

/// An answer as bytes, with the headers media needs.
#[derive(Debug)]
pub struct RawAnswer {
    pub status: u16,
    pub content_type: Option<String>,
    pub location: Option<String>,
    pub disposition: Option<String>,
    pub bytes: Vec<u8>,
}

/// The causes of an error, joined (reqwest hides the TLS reason a level down).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

/// Accepts any certificate (`Trust::Insecure`); the handshake's signatures are still checked.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
