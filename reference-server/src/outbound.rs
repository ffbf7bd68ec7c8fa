//! Requests this server makes to others: an application service's pings and third-party
//! lookups, pages to preview, mail to send. Plain HTTP/1.1 and SMTP over TCP, each bounded by a
//! timeout and a size cap, so that a peer that stalls or floods cannot hold a request forever.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Why an outbound request failed.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// No connection (refused, unresolvable, unsupported scheme).
    Connect(String),
    /// No complete answer in time.
    Timeout,
    /// A broken exchange after connecting.
    Protocol(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Connect(e) => write!(f, "cannot connect: {e}"),
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

/// `(host:port, path-and-query)` of an `http://` URL.
pub fn split_http_url(url: &str) -> Result<(String, String), Failure> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| Failure::Connect(format!("{url} is not an http:// URL")))?;
    let (host, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if host.is_empty() {
        return Err(Failure::Connect(format!("{url} names no host")));
    }
    let host = if host.contains(':') && !host.ends_with(']') {
        host.to_string()
    } else {
        format!("{host}:80")
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    Ok((host, path))
}

/// One HTTP request. `headers` are added to `Host` (and `Content-Type` for a JSON body).
pub async fn http(
    method: &str,
    url: &str,
    headers: &[(&str, String)],
    json_body: Option<&serde_json::Value>,
    timeout: Duration,
    max_body: usize,
) -> Result<Answer, Failure> {
    let (host, path) = split_http_url(url)?;
    let work = async {
        let stream = TcpStream::connect(&host)
            .await
            .map_err(|e| Failure::Connect(e.to_string()))?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| Failure::Protocol(format!("HTTP handshake: {e}")))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(&path)
            .header(hyper::header::HOST, &host);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let body = match json_body {
            Some(v) => {
                req = req.header(hyper::header::CONTENT_TYPE, "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(body))
            .map_err(|e| Failure::Protocol(format!("building the request: {e}")))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| Failure::Protocol(format!("no answer: {e}")))?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = Limited::new(resp.into_body(), max_body)
            .collect()
            .await
            .map_err(|e| Failure::Protocol(format!("reading the answer: {e}")))?
            .to_bytes();
        Ok(Answer {
            status,
            content_type,
            body,
        })
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| Failure::Timeout)?
}

/// Sends one plain-text mail over SMTP (no TLS, no auth: a relay on the local network).
pub async fn send_mail(
    relay: &str,
    from: &str,
    to: &str,
    subject: &str,
    text: &str,
    timeout: Duration,
) -> Result<(), Failure> {
    let work = async {
        let stream = TcpStream::connect(relay)
            .await
            .map_err(|e| Failure::Connect(e.to_string()))?;
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        let io = |e: std::io::Error| Failure::Protocol(format!("SMTP: {e}"));
        // Reads one (possibly multi-line) reply and checks its code class.
        async fn reply(
            r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
            want: char,
        ) -> Result<(), Failure> {
            let mut line = String::new();
            loop {
                line.clear();
                let n = r
                    .read_line(&mut line)
                    .await
                    .map_err(|e| Failure::Protocol(format!("SMTP: {e}")))?;
                if n == 0 {
                    return Err(Failure::Protocol(
                        "SMTP: the relay closed the connection".into(),
                    ));
                }
                if line.len() < 4 || line.as_bytes()[3] != b'-' {
                    break;
                }
            }
            if line.starts_with(want) {
                Ok(())
            } else {
                Err(Failure::Protocol(format!(
                    "SMTP: the relay answered {}",
                    line.trim_end()
                )))
            }
        }
        reply(&mut r, '2').await?;
        for (cmd, want) in [
            ("EHLO mxconform\r\n".to_string(), '2'),
            (format!("MAIL FROM:<{from}>\r\n"), '2'),
            (format!("RCPT TO:<{to}>\r\n"), '2'),
            ("DATA\r\n".to_string(), '3'),
        ] {
            w.write_all(cmd.as_bytes()).await.map_err(io)?;
            reply(&mut r, want).await?;
        }
        let mut data = format!(
            "From: {from}\r\nTo: {to}\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        );
        for line in text.lines() {
            // Dot-stuffing: a line starting with "." gets another.
            if line.starts_with('.') {
                data.push('.');
            }
            data.push_str(line);
            data.push_str("\r\n");
        }
        data.push_str(".\r\n");
        w.write_all(data.as_bytes()).await.map_err(io)?;
        reply(&mut r, '2').await?;
        let _ = w.write_all(b"QUIT\r\n").await;
        Ok(())
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| Failure::Timeout)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_and_path() {
        assert_eq!(
            split_http_url("http://127.0.0.1:9000/a/b?c=d").unwrap(),
            ("127.0.0.1:9000".into(), "/a/b?c=d".into())
        );
        assert_eq!(
            split_http_url("http://example.org").unwrap(),
            ("example.org:80".into(), "/".into())
        );
        assert!(split_http_url("https://example.org/").is_err());
        assert!(split_http_url("http:///x").is_err());
    }
}
