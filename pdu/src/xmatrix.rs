//! X-Matrix request authorization (server-server-api "Request Authentication"): the JSON a
//! server signs for each request (method, uri, origin, destination, content), the
//! `Authorization` header that carries the signature (built, and parsed by the RFC 9110
//! auth-param grammar, quoting and escapes included), and its verification with the
//! destination check.

use serde_json::{json, Value};

use crate::keys::{SigningKey, VerifyKey};
use crate::sign::{self, SignatureError};

/// The parameters of an `X-Matrix` authorization header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XMatrix {
    pub origin: String,
    /// Required of senders since v1.3; receivers accept its absence.
    pub destination: Option<String>,
    pub key: String,
    pub sig: String,
}

/// What is wrong with an authorization header or its signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XMatrixError {
    #[error("the Authorization scheme is not X-Matrix")]
    Scheme,
    #[error("malformed X-Matrix parameters at byte {at}: {reason}")]
    Syntax { at: usize, reason: String },
    #[error("X-Matrix parameter {0} is given twice")]
    Duplicate(String),
    #[error("X-Matrix header lacks `{0}`")]
    Missing(&'static str),
    #[error("the request is for {found:?}, not this server {expected:?}")]
    Destination { expected: String, found: String },
    #[error("the key {0} is not the one the header names")]
    WrongKey(String),
    #[error("the request signature does not verify: {0}")]
    Signature(SignatureError),
}

/// The JSON object a request's signature covers.
pub fn request_json(
    method: &str,
    uri: &str,
    origin: &str,
    destination: &str,
    content: Option<&Value>,
) -> Value {
    let mut v = json!({
        "method": method,
        "uri": uri,
        "origin": origin,
        "destination": destination,
    });
    if let Some(c) = content {
        v["content"] = c.clone();
    }
    v
}

/// The `Authorization` header value for a request from `origin` (signing with `key`) to
/// `destination`: one space after the scheme, lower-case names, quoted values, no spaces
/// around commas, as the spec asks senders to write it.
pub fn authorization(
    origin: &str,
    destination: &str,
    key: &SigningKey,
    method: &str,
    uri: &str,
    content: Option<&Value>,
) -> String {
    let mut signed = request_json(method, uri, origin, destination, content);
    sign::sign_json(&mut signed, origin, key);
    let sig = signed["signatures"][origin][key.key_id()]
        .as_str()
        .unwrap_or_default()
        .to_string();
    format!(
        "X-Matrix origin={},destination={},key={},sig={}",
        quote(origin),
        quote(destination),
        quote(key.key_id()),
        quote(&sig)
    )
}

fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses an `Authorization` header value: `X-Matrix` (any case), one or more spaces, and
/// comma-separated `name=value` pairs (names in any case, optional spaces and tabs around
/// commas, values as tokens or quoted strings with backslash escapes, colons allowed in
/// unquoted values for older servers). Unknown parameters are ignored; `sig` is also
/// accepted as `signature`.
pub fn parse(header: &str) -> Result<XMatrix, XMatrixError> {
    let bytes = header.as_bytes();
    let scheme_end = bytes.iter().position(|&b| b == b' ').unwrap_or(bytes.len());
    if !header[..scheme_end].eq_ignore_ascii_case("x-matrix") {
        return Err(XMatrixError::Scheme);
    }
    let mut i = scheme_end;
    let syntax = |at: usize, reason: &str| XMatrixError::Syntax {
        at,
        reason: reason.to_string(),
    };
    if i >= bytes.len() {
        return Err(syntax(i, "no parameters"));
    }
    while i < bytes.len() && bytes[i] == b' ' {
        i += 1;
    }
    let mut params: Vec<(String, String)> = Vec::new();
    let skip_ws = |i: &mut usize| {
        while *i < bytes.len() && (bytes[*i] == b' ' || bytes[*i] == b'\t') {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        if i >= bytes.len() {
            break;
        }
        if bytes[i] == b',' {
            // An empty list element.
            i += 1;
            continue;
        }
        let name_start = i;
        while i < bytes.len() && is_tchar(bytes[i]) {
            i += 1;
        }
        if i == name_start {
            return Err(syntax(i, "expected a parameter name"));
        }
        let name = header[name_start..i].to_ascii_lowercase();
        skip_ws(&mut i);
        if i >= bytes.len() || bytes[i] != b'=' {
            return Err(syntax(i, "expected `=` after a parameter name"));
        }
        i += 1;
        skip_ws(&mut i);
        let value = if i < bytes.len() && bytes[i] == b'"' {
            i += 1;
            let mut v = String::new();
            loop {
                let Some(c) = header[i..].chars().next() else {
                    return Err(syntax(i, "unterminated quoted value"));
                };
                i += c.len_utf8();
                match c {
                    '"' => break,
                    '\\' => {
                        let Some(e) = header[i..].chars().next() else {
                            return Err(syntax(i, "a backslash ends the header"));
                        };
                        i += e.len_utf8();
                        v.push(e);
                    }
                    c if (c as u32) < 0x20 && c != '\t' => {
                        return Err(syntax(i, "a control character in a quoted value"))
                    }
                    c => v.push(c),
                }
            }
            v
        } else {
            let start = i;
            while i < bytes.len() && (is_tchar(bytes[i]) || bytes[i] == b':') {
                i += 1;
            }
            if i == start {
                return Err(syntax(i, "expected a value (a token or a quoted string)"));
            }
            header[start..i].to_string()
        };
        let name = if name == "signature" {
            "sig".to_string()
        } else {
            name
        };
        if params.iter().any(|(n, _)| *n == name) {
            return Err(XMatrixError::Duplicate(name));
        }
        params.push((name, value));
        skip_ws(&mut i);
        if i < bytes.len() {
            if bytes[i] != b',' {
                return Err(syntax(i, "expected `,` between parameters"));
            }
            i += 1;
        }
    }
    let mut take = |name: &str| {
        params
            .iter()
            .position(|(n, _)| n == name)
            .map(|p| params.swap_remove(p).1)
    };
    Ok(XMatrix {
        origin: take("origin").ok_or(XMatrixError::Missing("origin"))?,
        destination: take("destination"),
        key: take("key").ok_or(XMatrixError::Missing("key"))?,
        sig: take("sig").ok_or(XMatrixError::Missing("sig"))?,
    })
}

impl XMatrix {
    /// Checks a received request: the destination, when given, is this server, and the
    /// signature verifies with `key` (the origin's key named by the header).
    pub fn verify(
        &self,
        our_name: &str,
        method: &str,
        uri: &str,
        content: Option<&Value>,
        key: &VerifyKey,
    ) -> Result<(), XMatrixError> {
        if let Some(d) = &self.destination {
            if d != our_name {
                return Err(XMatrixError::Destination {
                    expected: our_name.to_string(),
                    found: d.clone(),
                });
            }
        }
        if key.key_id != self.key {
            return Err(XMatrixError::WrongKey(key.key_id.clone()));
        }
        let mut signed = request_json(method, uri, &self.origin, our_name, content);
        signed["signatures"] =
            json!({ self.origin.clone(): { self.key.clone(): self.sig.clone() } });
        sign::verify_signature(&signed, &self.origin, key).map_err(XMatrixError::Signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_verification() {
        let key = SigningKey::generate(Some("k1")).unwrap();
        let body = json!({"pdus": [], "edus": []});
        let h = authorization(
            "a.org:8448",
            "b.org",
            &key,
            "PUT",
            "/_matrix/federation/v1/send/1?x=y",
            Some(&body),
        );
        assert!(h.starts_with(
            "X-Matrix origin=\"a.org:8448\",destination=\"b.org\",key=\"ed25519:k1\",sig=\""
        ));
        let x = parse(&h).unwrap();
        assert_eq!(x.origin, "a.org:8448");
        let vk = key.verify_key();
        x.verify(
            "b.org",
            "PUT",
            "/_matrix/federation/v1/send/1?x=y",
            Some(&body),
            &vk,
        )
        .unwrap();
        // Another destination, method, uri or body: refused.
        assert!(matches!(
            x.verify(
                "c.org",
                "PUT",
                "/_matrix/federation/v1/send/1?x=y",
                Some(&body),
                &vk
            ),
            Err(XMatrixError::Destination { .. })
        ));
        for (m, u, b) in [
            ("POST", "/_matrix/federation/v1/send/1?x=y", Some(&body)),
            ("PUT", "/_matrix/federation/v1/send/2?x=y", Some(&body)),
            ("PUT", "/_matrix/federation/v1/send/1?x=y", None),
        ] {
            assert!(matches!(
                x.verify("b.org", m, u, b, &vk),
                Err(XMatrixError::Signature(_))
            ));
        }
    }

    #[test]
    fn grammar() {
        let x = parse("x-matrix   ORIGIN=origin.hs.example.com ,\tDestination = \"destination.hs.example.com\",key=\"ed25519:key1\", sig=\"AB\\\"C\\\\D\", extra=\"ignored\"").unwrap();
        assert_eq!(x.origin, "origin.hs.example.com");
        assert_eq!(x.destination.as_deref(), Some("destination.hs.example.com"));
        assert_eq!(x.key, "ed25519:key1");
        assert_eq!(x.sig, "AB\"C\\D");
        // Colons unquoted (older servers), no destination (before v1.3).
        let x = parse("X-Matrix origin=localhost:8448,key=ed25519:a_b,sig=\"s\"").unwrap();
        assert_eq!(x.origin, "localhost:8448");
        assert_eq!(x.destination, None);
        for (bad, what) in [
            ("Bearer abc", "scheme"),
            ("X-Matrix", "no parameters"),
            ("X-Matrix origin=\"a\",key=\"k\"", "missing sig"),
            (
                "X-Matrix origin=\"a\",origin=\"b\",key=\"k\",sig=\"s\"",
                "duplicate",
            ),
            ("X-Matrix origin=\"a\" key=\"k\",sig=\"s\"", "no comma"),
            ("X-Matrix origin=\"a,key=\"k\",sig=\"s\"", "unterminated"),
            ("X-Matrix origin=a/b,key=\"k\",sig=\"s\"", "slash unquoted"),
            ("X-Matrix =a", "no name"),
        ] {
            assert!(parse(bad).is_err(), "{what}: {bad}");
        }
    }
}
