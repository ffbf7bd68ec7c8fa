//! Media of other servers for this server's clients: fetched over federation
//! (`/_matrix/federation/v1/media/download` and `…/thumbnail`, `multipart/mixed` answers whose
//! second part is the bytes or a `Location` to fetch them from), downloads kept in the media
//! store so that later ones are local.

use std::sync::Arc;

use crate::error::{ApiError, ApiResult};
use crate::state::now_ms;
use crate::Server;

/// Remote media as kept: content type, file name, bytes.
pub type Media = (String, Option<String>, Vec<u8>);

/// The store key of another server's media (local ids never hold a `/`).
pub fn cache_key(origin: &str, media_id: &str) -> String {
    format!("{origin}/{media_id}")
}

/// `origin`'s media `media_id`, from the store or fetched; a thumbnail (`width`, `height`,
/// `method`) is asked for each time.
pub async fn fetch(
    server: Arc<Server>,
    origin: String,
    media_id: String,
    thumbnail: Option<(i64, i64, Option<String>)>,
) -> ApiResult<Media> {
    let key = cache_key(&origin, &media_id);
    if thumbnail.is_none() {
        if let Some((ct, name, bytes)) = server.media(&key)? {
            return Ok((
                ct.unwrap_or_else(|| "application/octet-stream".into()),
                name,
                bytes,
            ));
        }
    }
    let fed = server
        .federation
        .as_ref()
        .ok_or_else(|| ApiError::not_found("this server does not federate"))?;
    let signing = server
        .read(|s| s.signing_key.clone())
        .ok_or_else(|| ApiError::internal("the server has no signing key"))?;
    let path = match &thumbnail {
        None => format!(
            "/_matrix/federation/v1/media/download/{}",
            crate::router::percent_encode(&media_id)
        ),
        Some((w, h, method)) => format!(
            "/_matrix/federation/v1/media/thumbnail/{}?width={w}&height={h}{}",
            crate::router::percent_encode(&media_id),
            method
                .as_deref()
                .map(|m| format!("&method={}", crate::router::percent_encode(m)))
                .unwrap_or_default()
        ),
    };
    let answer = fed
        .client
        .request_raw(&server.config.server_name, &signing, &origin, &path)
        .await
        .map_err(ApiError::connection_failed)?;
    match answer.status {
        200 => {}
        404 => return Err(ApiError::not_found(format!("{origin} has no such media"))),
        s => {
            return Err(ApiError::bad_status(format!(
                "{origin} answered {s} for its media"
            )))
        }
    }
    let boundary = answer
        .content_type
        .as_deref()
        .filter(|ct| ct.to_ascii_lowercase().starts_with("multipart/mixed"))
        .and_then(boundary_of)
        .ok_or_else(|| {
            ApiError::bad_status(format!(
                "{origin}'s media answer is not multipart/mixed with a boundary"
            ))
        })?;
    let parts = parse_multipart(&answer.bytes, &boundary)
        .map_err(|e| ApiError::bad_status(format!("{origin}'s media answer: {e}")))?;
    let [meta, content, ..] = parts.as_slice() else {
        return Err(ApiError::bad_status(format!(
            "{origin}'s media answer has fewer than two parts"
        )));
    };
    let _ = meta;
    let media = match header(&content.headers, "location") {
        Some(url) => {
            let got = fed
                .client
                .get_url(url)
                .await
                .map_err(ApiError::connection_failed)?;
            if got.status != 200 {
                return Err(ApiError::bad_status(format!(
                    "{url}, where {origin} said its media is, answered {}",
                    got.status
                )));
            }
            (
                got.content_type
                    .unwrap_or_else(|| "application/octet-stream".into()),
                got.disposition.as_deref().and_then(file_name),
                got.bytes,
            )
        }
        None => (
            header(&content.headers, "content-type")
                .unwrap_or("application/octet-stream")
                .to_string(),
            header(&content.headers, "content-disposition").and_then(file_name),
            content.body.to_vec(),
        ),
    };
    if thumbnail.is_none() {
        let (ct, name, bytes) = media.clone();
        server.write(|_, batch| {
            batch.media.push((key, Some(ct), name, bytes, now_ms()));
            Ok(())
        })?;
    }
    Ok(media)
}

/// One part of a multipart body.
pub struct Part<'a> {
    /// Header names in lower case, with their values.
    pub headers: Vec<(String, String)>,
    pub body: &'a [u8],
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The `boundary` parameter of a multipart content type (quoted or not).
fn boundary_of(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_string())
            .filter(|b| !b.is_empty())
    })
}

/// The parts of a multipart body (RFC 2046): between delimiter lines `--boundary`, each
/// headers, a blank line, then the body; `--boundary--` closes it.
pub fn parse_multipart<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, String> {
    let delimiter = format!("--{boundary}");
    let d = delimiter.as_bytes();
    let find = |hay: &[u8], from: usize| -> Option<usize> {
        hay.get(from..)?
            .windows(d.len())
            .position(|w| w == d)
            .map(|i| i + from)
    };
    let mut at = find(body, 0).ok_or("no delimiter line")?;
    let mut parts = Vec::new();
    loop {
        let after = at + d.len();
        if body.get(after..after + 2) == Some(b"--") {
            return Ok(parts);
        }
        // The rest of the delimiter line (transport padding), then the part.
        let line_end = body[after..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("a delimiter line without its end")?
            + after
            + 2;
        let next = find(body, line_end).ok_or("no closing delimiter")?;
        // The CRLF before a delimiter belongs to it.
        let end = if next >= 2 && &body[next - 2..next] == b"\r\n" {
            next - 2
        } else {
            next
        };
        let part = body.get(line_end..end).ok_or("a part out of bounds")?;
        let (head, content) = match part.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(i) => (&part[..i], &part[i + 4..]),
            // No headers: the part starts with the blank line.
            None if part.starts_with(b"\r\n") => (&part[..0], &part[2..]),
            None => return Err("a part without the blank line after its headers".into()),
        };
        let head = std::str::from_utf8(head).map_err(|_| "part headers are not UTF-8")?;
        let headers = head
            .split("\r\n")
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l
                    .split_once(':')
                    .ok_or_else(|| format!("the part header line {l:?} has no colon"))?;
                Ok((n.trim().to_ascii_lowercase(), v.trim().to_string()))
            })
            .collect::<Result<Vec<_>, String>>()?;
        parts.push(Part {
            headers,
            body: content,
        });
        at = next;
    }
}

/// The file name of a `Content-Disposition` (`filename*=UTF-8''…` preferred over `filename`).
pub fn file_name(disposition: &str) -> Option<String> {
    let mut plain = None;
    for p in disposition.split(';').skip(1) {
        let Some((k, v)) = p.split_once('=') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        if k == "filename*" {
            let (charset, rest) = v.split_once('\'')?;
            let (_, encoded) = rest.split_once('\'')?;
            if charset.eq_ignore_ascii_case("utf-8") {
                if let Some(n) = crate::router::percent_decode(encoded) {
                    return Some(n);
                }
            }
        } else if k == "filename" {
            plain = Some(v.trim_matches('"').to_string());
        }
    }
    plain.filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_parts_and_file_names() {
        let body = b"preamble\r\n--b1\r\nContent-Type: application/json\r\n\r\n{}\r\n--b1\r\nContent-Type: image/png\r\nContent-Disposition: inline; filename=\"red.png\"\r\n\r\n\x89PNG\r\n--b1--\r\n";
        let parts = parse_multipart(body, "b1").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].body, b"{}");
        assert_eq!(header(&parts[1].headers, "content-type"), Some("image/png"));
        assert_eq!(parts[1].body, b"\x89PNG");
        assert_eq!(
            header(&parts[1].headers, "content-disposition").and_then(file_name),
            Some("red.png".into())
        );
        assert_eq!(
            file_name("attachment; filename=x.bin; filename*=UTF-8''na%C3%AFve.txt"),
            Some("naïve.txt".into())
        );
        assert_eq!(
            boundary_of("multipart/mixed; boundary=\"q r\""),
            Some("q r".into())
        );
        // A body without its closing delimiter is refused, not read past its end.
        assert!(parse_multipart(b"--b1\r\n\r\nabc", "b1").is_err());
        assert!(parse_multipart(b"no parts", "b1").is_err());
    }
}
