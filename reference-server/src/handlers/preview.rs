//! URL previews: this server fetches the page (plain HTTP, bounded in time and size) and
//! answers with its Open Graph data. Only servers configured for it preview, and only
//! addresses that are public or explicitly allowed: a preview must not become a way to probe
//! the server's own network.

use std::time::Duration;

use mxconform_generated::client_server as cs;
use serde_json::{json, Map, Value};

use super::{Ctx, Reply};
use crate::error::{ApiError, ApiResult};
use crate::outbound::Failure;

const PREVIEW_TIMEOUT: Duration = Duration::from_secs(10);
const PREVIEW_MAX_BODY: usize = 1 << 20;

fn preview(ctx: &Ctx, url: String) -> ApiResult<Reply> {
    ctx.me()?;
    if !ctx.server.config.url_preview {
        return Err(ApiError::unrecognized("this server does not preview URLs"));
    }
    let parsed = reqwest::Url::parse(&url)
        .map_err(|e| ApiError::invalid_param(format!("cannot preview {url}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(ApiError::invalid_param(format!(
            "cannot preview {url}: only http and https pages are previewed"
        )));
    }
    let server = ctx
        .server
        .shared()
        .ok_or_else(|| ApiError::internal("the server is stopping"))?;
    Ok(Reply::outbound(async move {
        // Only public addresses (and the allowed ones) are reached: the client checks each
        // address it connects to, redirects included.
        let answer = server
            .outbound
            .public
            .request("GET", &url, &[], None, PREVIEW_TIMEOUT, PREVIEW_MAX_BODY)
            .await
            .map_err(|e| match e {
                Failure::Refused(why) => {
                    ApiError::forbidden(format!("that address may not be previewed: {why}"))
                }
                e => ApiError::not_found(format!("cannot fetch {url}: {e}")),
            })?;
        if !(200..300).contains(&answer.status) {
            return Err(ApiError::not_found(format!(
                "fetching {url} answered {}",
                answer.status
            )));
        }
        let html = answer
            .content_type
            .as_deref()
            .is_some_and(|c| c.to_ascii_lowercase().starts_with("text/html"));
        if !html {
            return Ok(json!({}));
        }
        Ok(Value::Object(open_graph(&String::from_utf8_lossy(
            &answer.body,
        ))))
    }))
}

pub fn get_url_preview_authed(
    ctx: &Ctx,
    req: cs::authed_content_repo::get_url_preview_authed::Request,
) -> ApiResult<Reply> {
    preview(ctx, req.url)
}

pub fn get_url_preview(
    ctx: &Ctx,
    req: cs::content_repo::get_url_preview::Request,
) -> ApiResult<Reply> {
    preview(ctx, req.url)
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&amp;", "&")
}

/// The value of attribute `name` in the inside of a tag (`meta property="og:title" ...`).
fn attribute(tag: &str, name: &str) -> Option<String> {
    let lower = tag.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find(name) {
        let at = from + i;
        from = at + name.len();
        let before_ok = at == 0 || lower.as_bytes()[at - 1].is_ascii_whitespace();
        let rest = tag[from..].trim_start();
        if !before_ok || !rest.starts_with('=') {
            continue;
        }
        let rest = rest[1..].trim_start();
        let value = match rest.chars().next()? {
            q @ ('"' | '\'') => rest[1..].split(q).next()?,
            _ => rest.split(|c: char| c.is_whitespace() || c == '>').next()?,
        };
        return Some(unescape(value));
    }
    None
}

/// The `og:*` properties of a page's `<meta>` tags, with `<title>` as `og:title` when the page
/// has none.
pub fn open_graph(html: &str) -> Map<String, Value> {
    let mut out = Map::new();
    let lower = html.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find("<meta") {
        let start = from + i + "<meta".len();
        let Some(end) = lower[start..].find('>').map(|e| start + e) else {
            break;
        };
        let tag = &html[start..end];
        from = end;
        let key = attribute(tag, "property").or_else(|| attribute(tag, "name"));
        if let (Some(k), Some(v)) = (key, attribute(tag, "content")) {
            if k.starts_with("og:") && !out.contains_key(&k) {
                out.insert(k, Value::String(v));
            }
        }
    }
    if !out.contains_key("og:title") {
        if let Some(s) = lower.find("<title>") {
            let s = s + "<title>".len();
            if let Some(e) = lower[s..].find("</title>") {
                let t = unescape(html[s..s + e].trim());
                if !t.is_empty() {
                    out.insert("og:title".into(), Value::String(t));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_graph_tags_and_title_are_read() {
        let html = "<html><head><title>Fallback</title><META property=\"og:title\" content=\"A &amp; B\"><meta name='og:description' content='x y'><meta property=og:type content=website><meta charset=utf-8></head></html>";
        let og = open_graph(html);
        assert_eq!(og["og:title"], "A & B");
        assert_eq!(og["og:description"], "x y");
        assert_eq!(og["og:type"], "website");
        assert_eq!(og.len(), 3);
        assert_eq!(open_graph("<title> Only </title>")["og:title"], "Only");
        assert!(open_graph("<meta content=\"x\">").is_empty());
    }
}
