//! The HTTP side: requests built from the route table, with a time bound on every request and
//! a cap on every response body, so that a misbehaving server fails a scenario, not the run.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mxconform_generated::{BodyKind, Route};
use serde_json::Value;

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Bound on one request, from sending to the last byte of the answer.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Largest response body read; a larger one fails the step.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            max_body: 16 * 1024 * 1024,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    pub limits: Limits,
}

#[derive(Clone, Debug)]
pub enum Body {
    None,
    Json(Value),
    Raw {
        bytes: Vec<u8>,
        content_type: String,
    },
}

/// What the spec documents of an operation's answers, as far as reading the body goes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Answers<'a> {
    /// A success answer is bytes (media), not JSON.
    pub binary: bool,
    /// Statuses the spec documents with no body; any body they come with is not checked.
    pub no_body: &'a [u16],
    /// A page for a browser (HTML): no status carries JSON to check.
    pub page: bool,
}

#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    /// The JSON body (`Null` for an empty or non-JSON body of a binary operation).
    pub body: Value,
    pub bytes: usize,
    pub content_type: Option<String>,
    /// Every response header, names in lower case.
    pub headers: Vec<(String, String)>,
    /// When the body's last byte was read (before it was parsed).
    pub arrived: Instant,
}

/// Everything but the unreserved characters of RFC 3986 (`A-Z a-z 0-9 - . _ ~`).
const NOT_UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes a path segment or query component (everything but unreserved characters).
pub fn encode_segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, NOT_UNRESERVED).to_string()
}

/// The URL path of an operation with its parameters filled in.
pub fn fill_path(route: &Route, params: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    for (i, seg) in route.path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(name) => {
                let v = params.get(name).ok_or_else(|| {
                    format!(
                        "{}: no value for path parameter `{name}`",
                        route.operation_id
                    )
                })?;
                out.push_str(&encode_segment(v));
            }
            None => out.push_str(seg),
        }
    }
    Ok(out)
}

/// Text of an HTTP-level failure, with its causes.
fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("no complete response within {:.1} s", timeout.as_secs_f64());
    }
    let mut s = if e.is_connect() {
        "cannot connect".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

impl Client {
    pub fn new(base: &str, limits: Limits) -> Result<Client, String> {
        let http = crate::http_client_builder()
            .connect_timeout(limits.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_string(),
            limits,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends one request. `Err` is a transport failure or a broken answer, as a sentence.
    #[allow(clippy::too_many_arguments)]
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        query: &[(String, String)],
        body: Body,
        token: Option<&str>,
        timeout: Option<Duration>,
        answers: Answers<'_>,
    ) -> Result<Response, String> {
        let timeout = timeout.unwrap_or(self.limits.request_timeout);
        // An absolute URL (a page a scenario follows off the server, such as a login page) is
        // used as it is; anything else is a path on the server.
        let mut url = if path.starts_with("http://") {
            path.to_string()
        } else {
            format!("{}{}", self.base, path)
        };
        for (i, (k, v)) in query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&encode_segment(k));
            url.push('=');
            url.push_str(&encode_segment(v));
        }
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|e| format!("bad method: {e}"))?;
        let mut req = self.http.request(method, &url).timeout(timeout);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req = match body {
            Body::None => req,
            Body::Json(v) => req
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&v).map_err(|e| e.to_string())?),
            Body::Raw {
                bytes,
                content_type,
            } => req.header("content-type", content_type).body(bytes),
        };
        let work = async {
            let mut resp = req.send().await.map_err(|e| describe(&e, timeout))?;
            let status = resp.status().as_u16();
            let content_type = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let headers: Vec<(String, String)> = resp
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            if let Some(len) = resp.content_length() {
                if len as usize > self.limits.max_body {
                    return Err(format!(
                        "the server announces a {len}-byte body, over the {}-byte cap",
                        self.limits.max_body
                    ));
                }
            }
            let mut buf = Vec::new();
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| format!("reading the body: {}", describe(&e, timeout)))?
            {
                buf.extend_from_slice(&chunk);
                if buf.len() > self.limits.max_body {
                    return Err(format!(
                        "the response body exceeds the {}-byte cap",
                        self.limits.max_body
                    ));
                }
            }
            let arrived = Instant::now();
            let bytes = buf.len();
            let body = if answers.binary && (200..300).contains(&status) {
                Value::Null
            } else if answers.page || answers.no_body.contains(&status) {
                // The spec documents this status without a body: whatever comes is not checked.
                serde_json::from_slice(&buf).unwrap_or(Value::Null)
            } else if buf.is_empty() {
                return Err(format!(
                    "status {status} with an empty body where JSON was expected"
                ));
            } else {
                serde_json::from_slice(&buf).map_err(|e| {
                    let head = String::from_utf8_lossy(&buf[..buf.len().min(120)]).into_owned();
                    format!("status {status} with a body that is not JSON ({e}): {head:?}")
                })?
            };
            Ok(Response {
                status,
                body,
                bytes,
                content_type,
                headers,
                arrived,
            })
        };
        // The request timeout covers sending and the whole body; this is a second, outer bound.
        match tokio::time::timeout(timeout + Duration::from_secs(1), work).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "no complete response within {:.1} s",
                timeout.as_secs_f64()
            )),
        }
    }

    /// Calls an operation of the route table.
    #[allow(clippy::too_many_arguments)]
    pub async fn call(
        &self,
        route: &Route,
        path: &BTreeMap<String, String>,
        query: &[(String, String)],
        body: Body,
        token: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<Response, String> {
        let p = fill_path(route, path)?;
        let binary = route
            .responses
            .iter()
            .any(|r| (200..300).contains(&r.status) && r.body == BodyKind::Binary);
        let no_body: Vec<u16> = route
            .responses
            .iter()
            .filter(|r| r.body == BodyKind::None)
            .map(|r| r.status)
            .collect();
        self.send(
            route.method.as_str(),
            &p,
            query,
            body,
            token,
            timeout,
            Answers {
                binary,
                no_body: &no_body,
                page: false,
            },
        )
        .await
    }
}

/// The hex HMAC-SHA1 of `parts` under `key`: Synapse's shared-secret registration (`nonce \0
/// user \0 password \0 admin|notadmin`), and the admin account's password the harness derives
/// from that secret.
pub fn hmac_sha1_hex(key: &str, parts: &[&[u8]]) -> Result<String, String> {
    use hmac::{KeyInit, Mac};
    let mut mac =
        hmac::Hmac::<sha1::Sha1>::new_from_slice(key.as_bytes()).map_err(|e| e.to_string())?;
    for p in parts {
        mac.update(p);
    }
    Ok(mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(encode_segment("!a:b.c"), "%21a%3Ab.c");
        assert_eq!(encode_segment("#x/y z"), "%23x%2Fy%20z");
        let route = crate::route("getRoomStateWithKey").expect("in the table");
        let mut p = BTreeMap::new();
        p.insert("roomId".to_string(), "!r:x".to_string());
        p.insert("eventType".to_string(), "m.room.topic".to_string());
        p.insert("stateKey".to_string(), String::new());
        assert_eq!(
            fill_path(route, &p).unwrap(),
            "/_matrix/client/v3/rooms/%21r%3Ax/state/m.room.topic/"
        );
        p.remove("roomId");
        assert!(fill_path(route, &p).unwrap_err().contains("roomId"));
    }
}
