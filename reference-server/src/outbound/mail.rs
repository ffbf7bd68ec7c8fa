//! Mail this server sends (e-mail validation), through lettre's SMTP client: STARTTLS when the
//! relay offers it (or required, or TLS from the first byte), authentication when configured,
//! `Date` and `Message-ID` headers, dot-stuffing and line lengths handled by the crate.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::Failure;
use crate::Mail;

/// How the connection to the relay is protected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SmtpTls {
    /// Plain text (a relay on the local network).
    None,
    /// STARTTLS if the relay offers it, else plain text.
    #[default]
    Opportunistic,
    /// STARTTLS, or the mail is not sent.
    Required,
    /// TLS from the first byte (port 465).
    Wrapper,
}

/// Sends one plain-text (UTF-8) mail through `mail`'s relay. `roots`: authorities trusted for
/// the relay's certificate beside the system's (PEM); `domain`: the Message-ID's right side.
pub async fn send_mail(
    mail: &Mail,
    roots: &[String],
    domain: &str,
    to: &str,
    subject: &str,
    text: &str,
    timeout: Duration,
) -> Result<(), Failure> {
    let (host, port) = match mail.relay.rsplit_once(':') {
        Some((h, p)) => (
            h.trim_start_matches('[').trim_end_matches(']'),
            p.parse::<u16>()
                .map_err(|_| Failure::Connect(format!("{}: not host:port", mail.relay)))?,
        ),
        None => (
            mail.relay.as_str(),
            if mail.tls == SmtpTls::Wrapper {
                465
            } else {
                25
            },
        ),
    };
    let tls = if mail.tls == SmtpTls::None {
        Tls::None
    } else {
        let mut params = TlsParameters::builder(host.to_string());
        for pem in roots {
            let cert = Certificate::from_pem(pem.as_bytes())
                .map_err(|e| Failure::Connect(format!("a trusted authority's PEM: {e}")))?;
            params = params.add_root_certificate(cert);
        }
        let params = params
            .build_rustls()
            .map_err(|e| Failure::Connect(format!("TLS set-up: {e}")))?;
        match mail.tls {
            SmtpTls::Opportunistic => Tls::Opportunistic(params),
            SmtpTls::Required => Tls::Required(params),
            _ => Tls::Wrapper(params),
        }
    };
    let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
        .port(port)
        .tls(tls)
        .hello_name(lettre::transport::smtp::extension::ClientId::Domain(
            domain.to_string(),
        ))
        .timeout(Some(timeout));
    if let Some((user, password)) = &mail.credentials {
        transport = transport.credentials(Credentials::new(user.clone(), password.clone()));
    }
    let transport = transport.build();
    let message = Message::builder()
        .from(
            mail.from
                .parse()
                .map_err(|e| Failure::Protocol(format!("the sender {}: {e}", mail.from)))?,
        )
        .to(to
            .parse()
            .map_err(|e| Failure::Protocol(format!("the recipient {to}: {e}")))?)
        .subject(subject)
        .message_id(Some(format!(
            "<{}@{domain}>",
            crate::state::random_token(18)
        )))
        .header(ContentType::TEXT_PLAIN)
        .body(text.to_string())
        .map_err(|e| Failure::Protocol(format!("building the mail: {e}")))?;
    let sent = tokio::time::timeout(timeout, transport.send(message))
        .await
        .map_err(|_| Failure::Timeout)?;
    sent.map(|_| ()).map_err(|e| {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        if e.is_transient() || e.is_permanent() {
            Failure::Protocol(format!("SMTP: the relay refused: {text}"))
        } else {
            Failure::Connect(format!("SMTP: {text}"))
        }
    })
}
