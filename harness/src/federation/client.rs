//! The requests a fake homeserver sends to the server under test: signed with X-Matrix by the
//! fake server's key, bounded in time and size, and their answers validated against the
//! server-server schemas. Also the server under test's published keys, fetched once, checked
//! (self-signed, for its own name) and kept for verifying what it sends.

use std::time::Duration;

use mxconform_generated::{Group, Route};
use mxconform_pdu::keys::{verify_server_key_document, ServerKeys};
use mxconform_pdu::{xmatrix, SigningKey};
use serde_json::Value;
use tokio::sync::OnceCell;

use crate::validate::{self, Part};

/// Where the server under test serves federation, and its name.
#[derive(Clone, Debug)]
pub struct Target {
    /// `http://127.0.0.1:18008`: the harness reaches the federation API here directly (no
    /// discovery).
    pub base_url: String,
    pub server_name: String,
}

/// An answer of the server under test.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

/// The largest answer read (a send_join of a big room is large).
const MAX_BODY: usize = 32 << 20;

/// Federation requests to the server under test.
#[derive(Debug)]
pub struct FedClient {
    http: reqwest::Client,
    pub target: Target,
    keys: OnceCell<ServerKeys>,
    /// The profile's known schema violations, not held against the server's answers.
    /// The profile's known schema violations, not held against the server's answers (nor
    /// its requests to the fake servers).
    pub tolerated: Vec<super::SchemaDeviation>,
}

/// The server-server operations.
pub fn routes() -> impl Iterator<Item = &'static Route> {
    mxconform_generated::server_server::ROUTES.iter()
}

/// A server-server operation by its id.
pub fn route(operation_id: &str) -> Option<&'static Route> {
    routes().find(|r| r.operation_id == operation_id)
}

/// The server-server operation a request is for, and its path parameters (decoded).
pub fn match_route(method: &str, path: &str) -> Option<(&'static Route, Vec<(String, String)>)> {
    crate::match_route_among(routes(), method, path)
}

impl FedClient {
    pub fn new(
        target: Target,
        tolerated: Vec<super::SchemaDeviation>,
    ) -> Result<FedClient, String> {
        let http = crate::http_client_builder()
            .timeout(Duration::from_secs(20))
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("making the federation client: {e}"))?;
        Ok(FedClient {
            http,
            target,
            keys: OnceCell::new(),
            tolerated,
        })
    }

    /// The server under test's keys, from `/_matrix/key/v2/server`, checked.
    pub async fn server_keys(&self) -> Result<&ServerKeys, String> {
        self.keys
            .get_or_try_init(|| async {
                let url = format!("{}/_matrix/key/v2/server", self.target.base_url);
                let answer = self.fetch(reqwest::Method::GET, &url, None, None).await?;
                if answer.status != 200 {
                    return Err(format!(
                        "GET /_matrix/key/v2/server answered {}: {}",
                        answer.status, answer.body
                    ));
                }
                check(route("getServerKey"), &answer, &self.tolerated)?;
                verify_server_key_document(&answer.body, &self.target.server_name)
                    .map_err(|e| format!("the server's key document: {e}"))
            })
            .await
    }

    /// Sends `method path_and_query` with `body` as `origin`, signed with `key`, and returns
    /// the answer; the answer is validated against `operation`'s schema when it has one.
    pub async fn request(
        &self,
        origin: &str,
        key: &SigningKey,
        operation: Option<&'static Route>,
        method: &str,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> Result<Answer, String> {
        let auth = xmatrix::authorization(
            origin,
            &self.target.server_name,
            key,
            method,
            path_and_query,
            body,
        );
        let m = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|_| format!("{method} is not a method"))?;
        let url = format!("{}{path_and_query}", self.target.base_url);
        let answer = self.fetch(m, &url, body, Some(&auth)).await?;
        check(operation, &answer, &self.tolerated)?;
        Ok(answer)
    }

    async fn fetch(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
        auth: Option<&str>,
    ) -> Result<Answer, String> {
        let mut req = self.http.request(method.clone(), url);
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        if let Some(b) = body {
            req = req
                .header("Content-Type", "application/json")
                .body(b.to_string());
        }
        let mut resp = req
            .send()
            .await
            .map_err(|e| format!("{method} {url}: {e}"))?;
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let mut bytes = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("{method} {url}: reading the answer: {e}"))?
        {
            bytes.extend_from_slice(&chunk);
            if bytes.len() > MAX_BODY {
                return Err(format!(
                    "{method} {url}: the answer is over {MAX_BODY} bytes"
                ));
            }
        }
        // Federation media answers are multipart/mixed: metadata (JSON), then the content.
        if let Some(boundary) = content_type
            .strip_prefix("multipart/mixed")
            .and_then(|rest| {
                rest.split(';')
                    .find_map(|p| p.trim().strip_prefix("boundary="))
            })
        {
            let body = multipart(&bytes, boundary.trim_matches('"')).map_err(|e| {
                format!("{method} {url} answered {status} with a broken multipart/mixed body: {e}")
            })?;
            return Ok(Answer { status, body });
        }
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| {
                format!(
                    "{method} {url} answered {status} with something not JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
                )
            })?
        };
        Ok(Answer { status, body })
    }
}

/// Validates an answer against its operation's schema for its status; an undocumented error
/// status must still be a standard error.
pub fn check(
    operation: Option<&'static Route>,
    answer: &Answer,
    tolerated: &[super::SchemaDeviation],
) -> Result<(), String> {
    let Some(op) = operation else { return Ok(()) };
    let found = validate::validate_in(
        Group::ServerServer,
        op.operation_id,
        &Part::Response(answer.status),
        &answer.body,
    )?
    .map(|v| untolerated(op.operation_id, "answer", v, tolerated));
    match found {
        Some(v) if !v.is_empty() => Err(format!(
            "{} answered {} against its schema: {}",
            op.operation_id,
            answer.status,
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        )),
        Some(_) => Ok(()),
        None if answer.status >= 400 => {
            if answer.body.get("errcode").and_then(Value::as_str).is_some() {
                Ok(())
            } else {
                Err(format!(
                    "{} answered {} without a standard error body: {}",
                    op.operation_id, answer.status, answer.body
                ))
            }
        }
        None => Ok(()),
    }
}

/// The violations a profile does not list as known. `part` is `answer` or `request`; a listed
/// deviation names its operation as `<operationId>` (answers) or `<operationId> request`.
pub fn untolerated(
    operation: &str,
    part: &str,
    found: Vec<validate::Violation>,
    tolerated: &[super::SchemaDeviation],
) -> Vec<validate::Violation> {
    let name = if part == "request" {
        format!("{operation} request")
    } else {
        operation.to_string()
    };
    found
        .into_iter()
        .filter(|x| {
            !tolerated
                .iter()
                .any(|t| t.operation == name && t.at == x.pointer && x.message.contains(&t.message))
        })
        .collect()
}

/// Reads a `multipart/mixed` federation media answer (server-server-api "Content
/// Repository"): the first part is JSON metadata, the second the content or a `Location` to
/// fetch it from. Summarised as `{metadata, content_type, size}` or `{metadata, location}`.
pub fn multipart(bytes: &[u8], boundary: &str) -> Result<Value, String> {
    let delimiter = format!("--{boundary}");
    let text_pos = |hay: &[u8], needle: &[u8], from: usize| {
        hay[from..]
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|p| p + from)
    };
    let mut parts: Vec<(String, &[u8])> = Vec::new();
    let mut at = text_pos(bytes, delimiter.as_bytes(), 0).ok_or("no first boundary")?;
    loop {
        let start = at + delimiter.len();
        if bytes[start..].starts_with(b"--") {
            break;
        }
        let head_end = text_pos(bytes, b"\r\n\r\n", start)
            .ok_or("a part without a blank line after its headers")?;
        let headers = String::from_utf8_lossy(&bytes[start..head_end]).to_string();
        let next = text_pos(bytes, format!("\r\n{delimiter}").as_bytes(), head_end + 4)
            .ok_or("a part without a closing boundary")?;
        parts.push((headers, &bytes[head_end + 4..next]));
        at = next + 2;
        if parts.len() > 8 {
            return Err("more than 8 parts".into());
        }
    }
    let header = |h: &str, name: &str| {
        h.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let [(meta_headers, meta), (content_headers, content)] = &parts[..] else {
        return Err(format!("{} parts, not 2", parts.len()));
    };
    if !header(meta_headers, "content-type").is_some_and(|t| t.starts_with("application/json")) {
        return Err("the first part is not application/json".into());
    }
    let metadata: Value =
        serde_json::from_slice(meta).map_err(|e| format!("the metadata is not JSON: {e}"))?;
    let mut out = serde_json::json!({"metadata": metadata});
    if let Some(location) = header(content_headers, "location") {
        out["location"] = Value::String(location);
    } else {
        out["content_type"] =
            Value::String(header(content_headers, "content-type").unwrap_or_default());
        out["size"] = Value::from(content.len());
    }
    Ok(out)
}
