//! TLS for the harness's fake homeservers (server-server-api "TLS"): a certificate authority,
//! kept as PEM files so that the server under test can be told to trust it before it starts
//! (Synapse: `federation_custom_ca_list`), and a fresh leaf certificate for each fake server,
//! with the server's IP or DNS name as subject alternative name and the serverAuth usage.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// The certificate authority of a test setup.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    /// The authority's certificate, PEM (what the server under test trusts).
    pub cert_pem: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authority")
    }
}

/// The authority's certificate parameters: the same every time, so that a stored key and these
/// parameters issue certificates that chain to the stored certificate.
fn authority_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "mxconform federation test authority");
    dn.push(DnType::OrganizationName, "mxconform");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

impl Authority {
    /// The authority stored in `dir` (`ca.pem`, `ca.key`), made there first if it is not.
    pub fn load_or_create(dir: &Path) -> Result<Authority, String> {
        let cert_path = dir.join("ca.pem");
        let key_path = dir.join("ca.key");
        if cert_path.exists() && key_path.exists() {
            let read = |p: &Path| {
                std::fs::read_to_string(p).map_err(|e| format!("reading {}: {e}", p.display()))
            };
            let key = KeyPair::from_pem(&read(&key_path)?)
                .map_err(|e| format!("{} is not a key: {e}", key_path.display()))?;
            return Ok(Authority {
                issuer: Issuer::new(authority_params(), key),
                cert_pem: read(&cert_path)?,
            });
        }
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let key = KeyPair::generate().map_err(|e| format!("making the authority's key: {e}"))?;
        let params = authority_params();
        let cert = params
            .self_signed(&key)
            .map_err(|e| format!("making the authority's certificate: {e}"))?;
        let write = |p: &Path, text: &str| {
            std::fs::write(p, text).map_err(|e| format!("writing {}: {e}", p.display()))
        };
        write(&key_path, &key.serialize_pem())?;
        write(&cert_path, &cert.pem())?;
        Ok(Authority {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
        })
    }

    /// A leaf certificate for `hosts` (IP addresses or DNS names), and its private key, as PEM
    /// files a real homeserver can serve (its TLS federation listener).
    pub fn issue_pem(&self, hosts: &[&str]) -> Result<(String, String), String> {
        let key = KeyPair::generate().map_err(|e| format!("making a leaf key: {e}"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            hosts.first().copied().unwrap_or("localhost"),
        );
        params.distinguished_name = dn;
        params.subject_alt_names = hosts
            .iter()
            .map(|host| subject_alt_name(host))
            .collect::<Result<_, String>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| format!("issuing a certificate for {hosts:?}: {e}"))?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A TLS server configuration for `host` (an IP address or a DNS name), with a new leaf
    /// certificate issued by this authority.
    pub fn server_config(&self, host: &str) -> Result<Arc<rustls::ServerConfig>, String> {
        self.server_config_with(host, None)
    }

    /// A TLS server configuration for `host` with a certificate of the given fault (`None`: a
    /// good one from this authority). A server that verifies certificates must refuse each
    /// fault: another authority's certificate, an expired one, or one for another name.
    pub fn server_config_with(
        &self,
        host: &str,
        fault: Option<CertificateFault>,
    ) -> Result<Arc<rustls::ServerConfig>, String> {
        let key = KeyPair::generate().map_err(|e| format!("making a leaf key: {e}"))?;
        let named = match fault {
            Some(CertificateFault::WrongName) => WRONG_NAME,
            _ => host,
        };
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, named);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![subject_alt_name(named)?];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if fault == Some(CertificateFault::Expired) {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let cert = match fault {
            Some(CertificateFault::OtherAuthority) => {
                // An authority made for this certificate alone, which nobody trusts.
                let other_key = KeyPair::generate()
                    .map_err(|e| format!("making another authority's key: {e}"))?;
                let mut other_params = authority_params();
                let mut dn = DistinguishedName::new();
                dn.push(DnType::CommonName, "mxconform untrusted authority");
                other_params.distinguished_name = dn;
                let other = Issuer::new(other_params, other_key);
                params.signed_by(&key, &other)
            }
            _ => params.signed_by(&key, &self.issuer),
        }
        .map_err(|e| format!("issuing a certificate for {host}: {e}"))?;
        let chain = vec![cert.der().clone()];
        let private = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| format!("TLS certificate: {e}"))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The name a `wrong_name` certificate is issued for (never a fake server's name).
const WRONG_NAME: &str = "not-this-server.invalid";

/// A fault in a fake server's certificate (scenario `certificates: {<server>: <fault>}`): a
/// server under test that verifies certificates must refuse to talk to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertificateFault {
    /// Issued by an authority the server under test was never told to trust.
    OtherAuthority,
    /// From the trusted authority, but valid only in 2000.
    Expired,
    /// From the trusted authority, but for another host name.
    WrongName,
}

impl std::fmt::Display for CertificateFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CertificateFault::OtherAuthority => "a certificate from an authority it does not trust",
            CertificateFault::Expired => "an expired certificate",
            CertificateFault::WrongName => "a certificate for another host name",
        })
    }
}

/// A certificate's subject alternative name for a host: its IP address, or a DNS name.
fn subject_alt_name(host: &str) -> Result<SanType, String> {
    match host.parse::<IpAddr>() {
        Ok(ip) => Ok(SanType::IpAddress(ip)),
        Err(_) if !is_dns_name(host) => Err(format!("{host:?} is not a DNS name")),
        Err(_) => Ok(SanType::DnsName(
            host.to_string()
                .try_into()
                .map_err(|e| format!("{host:?} is not a DNS name: {e}"))?,
        )),
    }
}

/// A host name a certificate can name: dot-separated labels of letters, digits and inner
/// hyphens, 1-63 bytes each, 253 in all.
fn is_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_authority_is_kept_and_reloaded() {
        let dir = std::env::temp_dir().join(format!("mxconform-ca-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = Authority::load_or_create(&dir).unwrap();
        assert!(a.cert_pem.contains("BEGIN CERTIFICATE"));
        let b = Authority::load_or_create(&dir).unwrap();
        assert_eq!(a.cert_pem, b.cert_pem);
        b.server_config("127.0.0.1").unwrap();
        b.server_config("fake.example").unwrap();
        for fault in [
            CertificateFault::OtherAuthority,
            CertificateFault::Expired,
            CertificateFault::WrongName,
        ] {
            b.server_config_with("127.0.0.1", Some(fault)).unwrap();
        }
        let (cert, key) = b.issue_pem(&["localhost", "127.0.0.1"]).unwrap();
        assert!(cert.contains("BEGIN CERTIFICATE") && key.contains("PRIVATE KEY"));
        assert!(b.issue_pem(&["not a name"]).is_err());
        assert!(b.issue_pem(&["-bad.example"]).is_err());
        assert!(b.issue_pem(&["a..b"]).is_err());
        assert!(b.issue_pem(&["fake-1.example"]).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A client that trusts the authority completes a handshake with a good certificate and
    /// refuses each fault, so a server under test that verifies certificates can tell them.
    #[tokio::test]
    async fn a_verifying_client_refuses_each_fault() {
        use rustls::pki_types::pem::PemObject;
        let dir = std::env::temp_dir().join(format!("mxconform-ca-faults-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = Authority::load_or_create(&dir).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from_pem_slice(a.cert_pem.as_bytes()).unwrap())
            .unwrap();
        let client = Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
        );
        for (fault, want) in [
            (None, None),
            (
                Some(CertificateFault::OtherAuthority),
                Some("UnknownIssuer"),
            ),
            (Some(CertificateFault::Expired), Some("Expired")),
            (Some(CertificateFault::WrongName), Some("NotValidForName")),
        ] {
            let server = a.server_config_with("127.0.0.1", fault).unwrap();
            let (c, s) = tokio::io::duplex(64 * 1024);
            let accept = tokio::spawn(async move {
                tokio_rustls::TlsAcceptor::from(server)
                    .accept(s)
                    .await
                    .map(|_| ())
            });
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            let got = tokio_rustls::TlsConnector::from(client.clone())
                .connect(name, c)
                .await;
            match (want, got) {
                // The stream is kept until the server side has finished its handshake too.
                (None, Ok(_stream)) => assert!(accept.await.unwrap().is_ok()),
                (Some(w), Err(e)) => assert!(format!("{e:?}").contains(w), "{fault:?}: {e:?}"),
                (w, got) => panic!("{fault:?}: wanted {w:?}, got {:?}", got.map(|_| ())),
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A self-signed certificate for `host` (an IP address or a DNS name) and its private key, as
/// PEM: for a test server that others reach without verifying certificates
/// (`serve --tls-self-signed`; they run with `--federation-insecure`).
pub fn self_signed_pem(host: &str) -> Result<(String, String), String> {
    let key = KeyPair::generate().map_err(|e| format!("making a key: {e}"))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, host);
    params.distinguished_name = dn;
    params.subject_alt_names = vec![subject_alt_name(host)?];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("a self-signed certificate for {host}: {e}"))?;
    Ok((cert.pem(), key.serialize_pem()))
}
