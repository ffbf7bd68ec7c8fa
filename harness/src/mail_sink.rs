//! The mail sink: an SMTP server that accepts every mail and keeps it in the mailbox, for
//! scenarios on e-mail validation. It offers STARTTLS when given a certificate, and parses
//! what it receives as MIME with a maintained parser (mail-parser): transfer encodings,
//! charsets and encoded words (RFC 2047) included.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::peers::{Mail, Mailbox};

/// The headers of a received mail that the harness checks.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Headers {
    pub subject: Option<String>,
    /// `Date`, as written (RFC 5322 requires it).
    pub date: Option<String>,
    /// `From`, as written (RFC 5322 requires it).
    pub from: Option<String>,
    pub message_id: Option<String>,
    /// Whether the mail arrived over TLS (after STARTTLS).
    pub tls: bool,
}

impl Headers {
    /// What RFC 5322 requires of a message and this one lacks (`Date`, `From`), and the
    /// `Message-ID` every mail should carry (RFC 5322 3.6.4).
    pub fn missing(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.date.is_none() {
            out.push("Date");
        }
        if self.from.is_none() {
            out.push("From");
        }
        if self.message_id.is_none() {
            out.push("Message-ID");
        }
        out
    }
}

/// Accepts SMTP sessions on `listener` for ever; with `tls`, STARTTLS is offered.
pub async fn accept(
    listener: TcpListener,
    mailbox: Arc<Mailbox>,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let mb = mailbox.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            // A session that stalls is dropped: the sink never waits forever.
            let _ =
                tokio::time::timeout(Duration::from_secs(60), session(sock, mb, acceptor)).await;
        });
    }
}

async fn session(
    sock: tokio::net::TcpStream,
    mailbox: Arc<Mailbox>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> std::io::Result<()> {
    let plain = BufReader::new(sock);
    let (next, plain) = dialogue(plain, &mailbox, tls.is_some(), false).await?;
    if let (Next::StartTls, Some(acceptor)) = (next, tls) {
        // Anything the client sent before the handshake is dropped (RFC 3207 4.2).
        let secure = acceptor.accept(plain.into_inner()).await?;
        dialogue(BufReader::new(secure), &mailbox, false, true).await?;
    }
    Ok(())
}

enum Next {
    Done,
    StartTls,
}

/// One SMTP dialogue, until QUIT, the end of the connection, or STARTTLS (`offer_tls`).
async fn dialogue<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: BufReader<S>,
    mailbox: &Mailbox,
    offer_tls: bool,
    secure: bool,
) -> std::io::Result<(Next, BufReader<S>)> {
    if !secure {
        s.write_all(b"220 mxconform mail sink ESMTP\r\n").await?;
    }
    let (mut from, mut to) = (String::new(), Vec::new());
    let mut line = String::new();
    loop {
        line.clear();
        if s.read_line(&mut line).await? == 0 || line.len() > 4096 {
            return Ok((Next::Done, s));
        }
        let cmd = line.trim_end().to_string();
        let upper = cmd.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            if offer_tls {
                b"250-mxconform\r\n250-8BITMIME\r\n250-STARTTLS\r\n250 SIZE 1048576\r\n"
            } else {
                b"250-mxconform\r\n250-8BITMIME\r\n250 SIZE 1048576\r\n"
            }
        } else if upper == "STARTTLS" && offer_tls {
            s.write_all(b"220 Ready to start TLS\r\n").await?;
            s.flush().await?;
            return Ok((Next::StartTls, s));
        } else if upper.starts_with("HELO") || upper.starts_with("NOOP") {
            b"250 OK\r\n"
        } else if upper.starts_with("RSET") {
            from.clear();
            to.clear();
            b"250 OK\r\n"
        } else if upper.starts_with("MAIL FROM:") {
            from = angle(&cmd["MAIL FROM:".len()..]);
            to.clear();
            b"250 OK\r\n"
        } else if upper.starts_with("RCPT TO:") {
            to.push(angle(&cmd["RCPT TO:".len()..]));
            b"250 OK\r\n"
        } else if upper == "DATA" {
            if to.is_empty() {
                b"503 RCPT first\r\n"
            } else {
                s.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                let mut data = Vec::new();
                let mut raw = Vec::new();
                loop {
                    raw.clear();
                    if s.read_until(b'\n', &mut raw).await? == 0 {
                        return Ok((Next::Done, s));
                    }
                    let content = raw.strip_suffix(b"\n").unwrap_or(&raw);
                    let content = content.strip_suffix(b"\r").unwrap_or(content);
                    if content == b"." {
                        break;
                    }
                    // Dot-stuffing undone (RFC 5321 4.5.2).
                    data.extend_from_slice(raw.strip_prefix(b".").unwrap_or(&raw));
                    if data.len() > 1 << 20 {
                        return Ok((Next::Done, s));
                    }
                }
                let (text, mut headers) = parse(&data);
                headers.tls = secure;
                mailbox.put(Mail {
                    from: std::mem::take(&mut from),
                    to: std::mem::take(&mut to),
                    text,
                    headers: Some(headers),
                });
                b"250 OK queued\r\n"
            }
        } else if upper.starts_with("QUIT") {
            s.write_all(b"221 Bye\r\n").await?;
            return Ok((Next::Done, s));
        } else {
            b"502 Command not implemented\r\n"
        };
        s.write_all(reply).await?;
    }
}

fn angle(s: &str) -> String {
    let s = s.trim();
    let inner = s
        .strip_prefix('<')
        .and_then(|x| x.split_once('>'))
        .map(|(a, _)| a)
        .unwrap_or(s);
    inner.to_string()
}

/// The readable text of a message (every text part decoded, each followed by a line break;
/// in HTML parts `&amp;` undone, as links carry it) and its headers.
pub fn parse(message: &[u8]) -> (String, Headers) {
    let Some(m) = mail_parser::MessageParser::default().parse(message) else {
        return (
            String::from_utf8_lossy(message).into_owned(),
            Headers::default(),
        );
    };
    let mut text = String::new();
    for part in &m.parts {
        match &part.body {
            mail_parser::PartType::Text(t) => {
                text.push_str(t);
            }
            mail_parser::PartType::Html(h) => {
                text.push_str(&h.replace("&amp;", "&"));
            }
            _ => continue,
        }
        if !text.ends_with('\n') {
            text.push('\n');
        }
    }
    let headers = Headers {
        subject: m.subject().map(str::to_string),
        date: m.header_raw("Date").map(|d| d.trim().to_string()),
        from: m.header_raw("From").map(|d| d.trim().to_string()),
        message_id: m.message_id().map(str::to_string),
        tls: false,
    };
    (text, headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_encodings_and_charsets_are_decoded() {
        let msg = "From: a@b\r\nContent-Type: multipart/alternative; boundary=\"XX\"\r\n\r\n--XX\r\nContent-Type: text/plain; charset=\"utf-8\"\r\nContent-Transfer-Encoding: base64\r\n\r\naHR0cDovL2gvc3VibWl0P3Rva2VuPWFi\r\nYyZzaWQ9MQ==\r\n--XX\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n<a href=3D\"http://h/x?a=3D1&amp;b=3D2\">li=\r\nnk</a>\r\n--XX--\r\n";
        let (text, _) = parse(msg.as_bytes());
        assert!(text.contains("http://h/submit?token=abc&sid=1"), "{text}");
        assert!(
            text.contains("<a href=\"http://h/x?a=1&b=2\">link</a>"),
            "{text}"
        );
        // Latin-1 body, and a subject in RFC 2047 encoded words.
        let latin = b"From: a@b\r\nSubject: =?UTF-8?B?Q2/DsWZpcm0=?= =?ISO-8859-1?Q?_caf=E9?=\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\nd\xe9j\xe0 vu\r\n";
        let (text, headers) = parse(latin);
        assert_eq!(text.trim_end(), "d\u{e9}j\u{e0} vu");
        assert_eq!(headers.subject.as_deref(), Some("Co\u{f1}firm caf\u{e9}"));
    }

    #[test]
    fn required_headers_are_reported_when_missing() {
        let (text, headers) = parse(b"Subject: x\r\n\r\nhello\r\n");
        assert_eq!(text, "hello\r\n");
        assert_eq!(headers.missing(), vec!["Date", "From", "Message-ID"]);
        let (_, headers) = parse(
            b"From: a@b\r\nDate: Sun, 6 Dec 2026 05:00:00 +0000\r\nMessage-ID: <x@y>\r\n\r\nhi\r\n",
        );
        assert!(headers.missing().is_empty(), "{headers:?}");
        assert_eq!(headers.message_id.as_deref(), Some("x@y"));
        let (text, _) = parse(b"Content-Type: image/png\r\n\r\nxx");
        assert_eq!(text, "");
    }
}
