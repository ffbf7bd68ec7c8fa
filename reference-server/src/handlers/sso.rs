//! Single sign-on through a CAS server: the redirects of the client-server API, and the
//! ticket endpoint the CAS server sends the browser back to, which checks the ticket with the
//! CAS server, logs the user in (creating the account on first use) and hands the client a
//! login token (`m.login.token`) on its `redirectUrl`.

use std::time::Duration;

use mxconform_generated::client_server as cs;

use super::{Ctx, Reply};
use crate::error::{ApiError, ApiResult};
use crate::router::percent_encode;
use crate::state::User;
use crate::{Cas, Server};

/// The identity provider id of the CAS server.
pub const CAS_IDP: &str = "cas";
/// Where the CAS server sends the browser back with a ticket.
pub const TICKET_PATH: &str = "/_mxconform/sso/cas/ticket";

/// This server's ticket endpoint for a client's `redirectUrl` (the CAS `service`).
fn service_url(server: &Server, redirect_url: &str) -> String {
    let base = server.public_url();
    format!(
        "{base}{TICKET_PATH}?redirectUrl={}",
        percent_encode(redirect_url)
    )
}

fn redirect(ctx: &Ctx, cas: &Cas, redirect_url: &str) -> ApiResult<Reply> {
    if redirect_url.is_empty() {
        return Err(ApiError::missing_param("redirectUrl is required"));
    }
    let service = service_url(ctx.server, redirect_url);
    Ok(Reply::Redirect {
        location: format!(
            "{}/login?service={}",
            cas.server_url.trim_end_matches('/'),
            percent_encode(&service)
        ),
    })
}

pub fn redirect_to_sso(
    ctx: &Ctx,
    req: cs::sso_login_redirect::redirect_to_sso::Request,
) -> ApiResult<Reply> {
    let cas = ctx
        .server
        .config
        .cas
        .as_ref()
        .ok_or_else(|| ApiError::unrecognized("this server offers no single sign-on"))?;
    redirect(ctx, cas, &req.redirect_url)
}

pub fn redirect_to_id_p(
    ctx: &Ctx,
    req: cs::sso_login_redirect::redirect_to_id_p::Request,
) -> ApiResult<Reply> {
    match &ctx.server.config.cas {
        Some(cas) if req.idp_id == CAS_IDP => redirect(ctx, cas, &req.redirect_url),
        _ => Err(ApiError::not_found("no identity provider with that id")),
    }
}

/// The user a CAS `serviceResponse` names, if it is a success.
pub fn cas_user(xml: &str) -> Option<String> {
    if !xml.contains("<cas:authenticationSuccess") {
        return None;
    }
    let start = xml.find("<cas:user>")? + "<cas:user>".len();
    let end = start + xml[start..].find("</cas:user>")?;
    let user = xml[start..end].trim();
    (!user.is_empty()).then(|| user.to_string())
}

/// Where the browser goes after the CAS server accepted it: checks the ticket, and answers
/// with the `redirectUrl` carrying a login token.
pub async fn complete_cas_login(
    server: &Server,
    redirect_url: &str,
    ticket: &str,
) -> ApiResult<String> {
    let cas = server
        .config
        .cas
        .clone()
        .ok_or_else(|| ApiError::unrecognized("this server offers no single sign-on"))?;
    if redirect_url.is_empty() || ticket.is_empty() {
        return Err(ApiError::missing_param(
            "redirectUrl and ticket are required",
        ));
    }
    let check = format!(
        "{}/proxyValidate?ticket={}&service={}",
        cas.server_url.trim_end_matches('/'),
        percent_encode(ticket),
        percent_encode(&service_url(server, redirect_url))
    );
    let answer = server
        .outbound
        .configured
        .request("GET", &check, &[], None, Duration::from_secs(10), 1 << 16)
        .await
        .map_err(|e| {
            ApiError::forbidden(format!("cannot check the ticket with the CAS server: {e}"))
        })?;
    let name = cas_user(&String::from_utf8_lossy(&answer.body))
        .ok_or_else(|| ApiError::forbidden("the CAS server did not accept the ticket"))?;
    let localpart = name.to_lowercase();
    if localpart.is_empty()
        || !localpart
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._=-/".contains(&b))
    {
        return Err(ApiError::invalid_username(
            "the CAS user name is not a valid Matrix localpart",
        ));
    }
    let user_id = format!("@{localpart}:{}", server.config.server_name);
    let token = server.write(|state, batch| {
        match state.users.get(&user_id) {
            Some(u) if u.deactivated => {
                return Err(ApiError::user_deactivated("this account is deactivated"))
            }
            Some(_) => {}
            None => state.put_user(batch, User::new(&user_id, None)),
        }
        Ok(state.issue_login_token(&user_id).0)
    })?;
    let sep = if redirect_url.contains('?') { '&' } else { '?' };
    Ok(format!(
        "{redirect_url}{sep}loginToken={}",
        percent_encode(&token)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_responses_name_the_user_only_on_success() {
        let ok = "<cas:serviceResponse xmlns:cas='http://www.yale.edu/tp/cas'><cas:authenticationSuccess><cas:user> carol </cas:user></cas:authenticationSuccess></cas:serviceResponse>";
        assert_eq!(cas_user(ok).as_deref(), Some("carol"));
        let no = "<cas:serviceResponse><cas:authenticationFailure code='INVALID_TICKET'>no</cas:authenticationFailure></cas:serviceResponse>";
        assert_eq!(cas_user(no), None);
        assert_eq!(
            cas_user("<cas:authenticationSuccess><cas:user></cas:user>"),
            None
        );
    }
}
