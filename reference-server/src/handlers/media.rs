//! Media: upload, and download and thumbnail through the authenticated media API (and the
//! deprecated unauthenticated one), and the config endpoint. Thumbnails are the original
//! bytes: this server does not scale images, which the spec allows for small media.

use mxconform_generated::client_server as cs;
use serde_json::{json, Value};

use super::{Ctx, Reply};
use crate::error::{ApiError, ApiResult};
use crate::state::{now_ms, random_token};

pub fn upload_content(
    ctx: &Ctx,
    req: cs::content_repo::upload_content::Request,
) -> ApiResult<Value> {
    ctx.me()?;
    let id = random_token(18);
    let content_type = ctx
        .content_type
        .clone()
        .unwrap_or_else(|| "application/octet-stream".into());
    let bytes = ctx.raw_body.to_vec();
    ctx.server.write(|state, batch| {
        state.uploaded_media.insert(id.clone());
        batch.media.push((
            id.clone(),
            Some(content_type),
            req.filename.clone(),
            bytes,
            now_ms(),
        ));
        Ok(())
    })?;
    Ok(json!({"content_uri": format!("mxc://{}/{id}", ctx.server.config.server_name)}))
}

fn download(
    ctx: &Ctx,
    server_name: &str,
    media_id: &str,
    file_name: Option<&str>,
) -> ApiResult<Reply> {
    let name_override = file_name.map(str::to_string);
    if server_name != ctx.server.config.server_name {
        return remote(ctx, server_name, media_id, name_override, None);
    }
    let stored = if media_id.contains('/') {
        None
    } else {
        ctx.server.media(media_id)?
    };
    let Some((content_type, stored_name, bytes)) = stored else {
        // Created with /create but not uploaded yet.
        if ctx.server.read(|s| s.pending_media.contains_key(media_id)) {
            return Err(ApiError::not_yet_uploaded(
                "that media has not been uploaded yet",
            ));
        }
        return Err(ApiError::not_found("no such media"));
    };
    let content_type = content_type.unwrap_or_else(|| "application/octet-stream".into());
    let name = name_override.or(stored_name);
    Ok(Reply::Bytes {
        disposition: Some(disposition(&content_type, name.as_deref())),
        status: 200,
        content_type,
        bytes,
    })
}

/// Another server's media, fetched over federation (kept once downloaded).
fn remote(
    ctx: &Ctx,
    origin: &str,
    media_id: &str,
    name_override: Option<String>,
    thumbnail: Option<(i64, i64, Option<String>)>,
) -> ApiResult<Reply> {
    let server = ctx
        .server
        .shared()
        .ok_or_else(|| ApiError::internal("the server is shutting down"))?;
    let (origin, media_id) = (origin.to_string(), media_id.to_string());
    Ok(Reply::Outbound(Box::pin(async move {
        let (content_type, name, bytes) =
            crate::federation::media::fetch(server, origin, media_id, thumbnail).await?;
        let name = name_override.or(name);
        Ok(Reply::Bytes {
            disposition: Some(disposition(&content_type, name.as_deref())),
            status: 200,
            content_type,
            bytes,
        })
    })))
}

/// `Content-Disposition` of media: inline only for types a browser cannot run as a page,
/// with the file name when there is one.
pub fn disposition(content_type: &str, name: Option<&str>) -> String {
    let inline = ["image/", "video/", "audio/", "text/plain"]
        .iter()
        .any(|p| content_type.starts_with(p))
        && content_type != "image/svg+xml";
    let kind = if inline { "inline" } else { "attachment" };
    let Some(n) = name else {
        return kind.to_string();
    };
    let clean: String = n.chars().filter(|c| !c.is_control()).collect();
    // A quoted ASCII name for every client, and for a name beyond ASCII the exact one as
    // RFC 6266 / RFC 8187 say (`filename*=UTF-8''` and percent-encoded bytes).
    let ascii: String = clean
        .chars()
        .map(|c| match c {
            '"' | '\\' => '_',
            c if c.is_ascii() => c,
            _ => '_',
        })
        .collect();
    if clean.is_ascii() && !clean.contains(['"', '\\']) {
        return format!("{kind}; filename=\"{clean}\"");
    }
    // RFC 8187's attr-char are left as they are; every other byte is percent-encoded.
    const NOT_ATTR_CHAR: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'!')
        .remove(b'#')
        .remove(b'$')
        .remove(b'&')
        .remove(b'+')
        .remove(b'-')
        .remove(b'.')
        .remove(b'^')
        .remove(b'_')
        .remove(b'`')
        .remove(b'|')
        .remove(b'~');
    let encoded = percent_encoding::utf8_percent_encode(&clean, NOT_ATTR_CHAR);
    format!("{kind}; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

pub fn get_content_authed(
    ctx: &Ctx,
    req: cs::authed_content_repo::get_content_authed::Request,
) -> ApiResult<Reply> {
    download(ctx, req.server_name.as_str(), &req.media_id, None)
}

pub fn get_content_override_name_authed(
    ctx: &Ctx,
    req: cs::authed_content_repo::get_content_override_name_authed::Request,
) -> ApiResult<Reply> {
    download(
        ctx,
        req.server_name.as_str(),
        &req.media_id,
        Some(&req.file_name),
    )
}

/// Thumbnails of this server's media are the original bytes (clients scale what they get);
/// another server's are asked of it.
fn thumbnail(ctx: &Ctx, server: &str, media_id: &str, width: i64, height: i64) -> ApiResult<Reply> {
    if width <= 0 || height <= 0 {
        return Err(ApiError::invalid_param("width and height must be positive"));
    }
    if server != ctx.server.config.server_name {
        let method = ctx
            .query
            .iter()
            .find(|(k, _)| k == "method")
            .map(|(_, v)| v.clone());
        return remote(ctx, server, media_id, None, Some((width, height, method)));
    }
    download(ctx, server, media_id, None)
}

pub fn get_content_thumbnail_authed(
    ctx: &Ctx,
    req: cs::authed_content_repo::get_content_thumbnail_authed::Request,
) -> ApiResult<Reply> {
    thumbnail(
        ctx,
        req.server_name.as_str(),
        &req.media_id,
        req.width,
        req.height,
    )
}

pub fn get_content_thumbnail(
    ctx: &Ctx,
    req: cs::content_repo::get_content_thumbnail::Request,
) -> ApiResult<Reply> {
    thumbnail(
        ctx,
        req.server_name.as_str(),
        &req.media_id,
        req.width,
        req.height,
    )
}

pub fn get_content(ctx: &Ctx, req: cs::content_repo::get_content::Request) -> ApiResult<Reply> {
    download(ctx, req.server_name.as_str(), &req.media_id, None)
}

pub fn get_content_override_name(
    ctx: &Ctx,
    req: cs::content_repo::get_content_override_name::Request,
) -> ApiResult<Reply> {
    download(
        ctx,
        req.server_name.as_str(),
        &req.media_id,
        Some(&req.file_name),
    )
}

pub fn get_config_authed(
    ctx: &Ctx,
    _req: cs::authed_content_repo::get_config_authed::Request,
) -> ApiResult<Value> {
    Ok(json!({"m.upload.size": ctx.server.config.max_body}))
}

pub fn get_config(ctx: &Ctx, _req: cs::content_repo::get_config::Request) -> ApiResult<Value> {
    Ok(json!({"m.upload.size": ctx.server.config.max_body}))
}

pub fn create_content(
    ctx: &Ctx,
    _req: cs::content_repo::create_content::Request,
) -> ApiResult<Value> {
    let me = ctx.me()?.clone();
    let id = random_token(18);
    let expires = now_ms() + 24 * 3600 * 1000;
    ctx.server.write(|state, _| {
        state.pending_media.retain(|_, (_, exp)| *exp > now_ms());
        state
            .pending_media
            .insert(id.clone(), (me.user_id.clone(), expires));
        Ok(())
    })?;
    Ok(
        json!({"content_uri": format!("mxc://{}/{id}", ctx.server.config.server_name), "unused_expires_at": expires}),
    )
}

pub fn upload_content_to_mxc(
    ctx: &Ctx,
    req: cs::content_repo::upload_content_to_mxc::Request,
) -> ApiResult<Value> {
    let me = ctx.me()?.clone();
    if req.server_name.as_str() != ctx.server.config.server_name {
        return Err(ApiError::not_found("that media id is not this server's"));
    }
    let content_type = ctx
        .content_type
        .clone()
        .unwrap_or_else(|| "application/octet-stream".into());
    let bytes = ctx.raw_body.to_vec();
    ctx.server.write(|state, batch| {
        match state.pending_media.get(&req.media_id) {
            None if state.uploaded_media.contains(&req.media_id) => {
                return Err(ApiError {
                    status: 409,
                    errcode: "M_CANNOT_OVERWRITE_MEDIA",
                    message: "that media id is already uploaded".into(),
                    extra: None,
                })
            }
            None => return Err(ApiError::not_found("no media id like that was created")),
            Some((owner, _)) if *owner != me.user_id => {
                return Err(ApiError::forbidden(
                    "that media id was created by someone else",
                ))
            }
            Some(_) => {}
        }
        state.pending_media.remove(&req.media_id);
        state.uploaded_media.insert(req.media_id.clone());
        batch.media.push((
            req.media_id.clone(),
            Some(content_type),
            req.filename.clone(),
            bytes,
            now_ms(),
        ));
        Ok(json!({}))
    })
}

#[cfg(test)]
mod disposition_tests {
    use super::disposition;

    #[test]
    fn file_names_beyond_ascii_survive_as_rfc_6266_says() {
        let d = disposition("application/pdf", Some("résumé 📄.pdf"));
        assert_eq!(
            d,
            "attachment; filename=\"r_sum_ _.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%F0%9F%93%84.pdf"
        );
        assert!(
            http::HeaderValue::from_str(&d).is_ok(),
            "a valid header value"
        );
        assert_eq!(
            disposition("image/png", Some("cat.png")),
            "inline; filename=\"cat.png\""
        );
        let quoted = disposition("text/plain", Some("a \"b\".txt"));
        assert!(quoted.contains("filename=\"a _b_.txt\""), "{quoted}");
        assert!(
            quoted.contains("filename*=UTF-8''a%20%22b%22.txt"),
            "{quoted}"
        );
    }
}
