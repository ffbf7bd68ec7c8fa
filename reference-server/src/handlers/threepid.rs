//! Third-party identifiers (e-mail): validation sessions whose token this server mails through
//! its relay, and the addresses bound to accounts. Binding them at identity servers, and
//! unbinding them there, is in [`super::identity`].

use std::time::Duration;

use mxconform_generated::client_server as cs;
use mxconform_generated::client_server::definitions::request_email_validation::RequestEmailValidation;
use serde_json::{json, Value};

use super::{Ctx, Reply};
use crate::error::{ApiError, ApiResult};
use crate::router::percent_encode;
use crate::state::{now_ms, random_token, Threepid, ThreepidSession};
use crate::Server;

const MAIL_TIMEOUT: Duration = Duration::from_secs(10);
/// The path of the link in validation mail (and the `submit_url` clients may POST to).
pub const SUBMIT_PATH: &str = "/_mxconform/3pid/email/submit_token";
/// Where clients submit the code of a text message (proxied to the SMS gateway).
pub const MSISDN_SUBMIT_PATH: &str = "/_mxconform/3pid/msisdn/submit_token";
/// Sessions delegated to the SMS gateway carry its sid behind this prefix.
const MSISDN_SID: &str = "msisdn-";
const GATEWAY_TIMEOUT: Duration = Duration::from_secs(10);
/// A validation session's token works this long.
const SESSION_LIFETIME_MS: u64 = 24 * 3600 * 1000;
/// At most this many validation messages to one address per window.
const MESSAGES_PER_WINDOW: usize = 5;
const MESSAGE_WINDOW_MS: u64 = 10 * 60 * 1000;

/// Before a validation message goes out: forgets expired sessions (unauthenticated callers
/// must not be able to grow the database for ever), and refuses with 429 when the address
/// had too many messages lately (nor to flood someone's inbox).
fn admit_message(
    state: &mut crate::state::State,
    batch: &mut crate::store::Batch,
    address: &str,
) -> ApiResult<()> {
    let now = now_ms();
    let expired: Vec<String> = state
        .threepid_sessions
        .iter()
        .filter(|(_, s)| s.created_at + SESSION_LIFETIME_MS < now)
        .map(|(sid, _)| sid.clone())
        .collect();
    for sid in expired {
        state.remove_threepid_session(batch, &sid);
    }
    state
        .messages_sent
        .retain(|_, times| times.last().is_some_and(|t| t + MESSAGE_WINDOW_MS > now));
    let times = state.messages_sent.entry(address.to_string()).or_default();
    times.retain(|t| t + MESSAGE_WINDOW_MS > now);
    if times.len() >= MESSAGES_PER_WINDOW {
        let wait = times[0] + MESSAGE_WINDOW_MS - now;
        return Err(ApiError {
            status: 429,
            errcode: "M_LIMIT_EXCEEDED",
            message: "too many validation messages to that address; try again later".into(),
            extra: Some(json!({"retry_after_ms": wait})),
        });
    }
    times.push(now);
    Ok(())
}

/// The spec's client secret grammar: `[0-9a-zA-Z.=_-]{1,255}`.
fn valid_client_secret(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'=' | b'_' | b'-'))
}

/// An address of the form `local@domain`, lower-cased (addresses compare without case).
fn canonical_email(s: &str) -> Option<String> {
    let (local, domain) = s.split_once('@')?;
    let ok = !local.is_empty()
        && !domain.is_empty()
        && !domain.contains('@')
        && s.len() <= 254
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>');
    ok.then(|| s.to_lowercase())
}

/// Whether a validation for `purpose` may start: `register` and `add` need an address no
/// account has, `reset` one that an account has.
fn check_purpose(
    state: &crate::state::State,
    medium: &str,
    address: &str,
    purpose: &str,
) -> ApiResult<()> {
    let bound = state
        .threepids
        .contains_key(&(medium.to_string(), address.to_string()));
    match purpose {
        "reset" if !bound => Err(ApiError::threepid_not_found("no account has that address")),
        "register" | "add" if bound => Err(ApiError::threepid_in_use(
            "an account already has that address",
        )),
        _ => Ok(()),
    }
}

/// Starts (or continues) a validation session and mails its token, for `purpose`:
/// `register` and `add` need an address no account has, `reset` one that an account has.
fn request_email_token(
    ctx: &Ctx,
    b: RequestEmailValidation,
    purpose: &'static str,
) -> ApiResult<Reply> {
    let mail = ctx.server.config.mail.clone().ok_or_else(|| {
        ApiError::threepid_medium_not_supported("this server does not send e-mail")
    })?;
    if !valid_client_secret(&b.client_secret) {
        return Err(ApiError::invalid_param(
            "client_secret must be 1-255 characters of [0-9a-zA-Z.=_-]",
        ));
    }
    let address = canonical_email(&b.email)
        .ok_or_else(|| ApiError::invalid_param("that is not an e-mail address"))?;
    let (sid, to_send) = ctx.server.write(|state, batch| {
        check_purpose(state, "email", &address, purpose)?;
        let existing = state.threepid_sessions.iter().find(|(_, s)| {
            s.client_secret == b.client_secret && s.address == address && s.purpose == purpose
        });
        if let Some((sid, s)) = existing {
            // The same attempt again: the same session, no second mail.
            if b.send_attempt <= s.send_attempt {
                return Ok((sid.clone(), None));
            }
        }
        let sid = existing.map_or_else(|| random_token(12), |(sid, _)| sid.clone());
        admit_message(state, batch, &address)?;
        let session = ThreepidSession {
            client_secret: b.client_secret.clone(),
            medium: "email".into(),
            address: address.clone(),
            token: random_token(16),
            purpose: purpose.into(),
            send_attempt: b.send_attempt,
            validated_at: None,
            created_at: now_ms(),
        };
        let token = session.token.clone();
        state.put_threepid_session(batch, &sid, session);
        Ok((sid, Some(token)))
    })?;
    let base = ctx.server.public_url();
    let submit_url = format!("{base}{SUBMIT_PATH}");
    let Some(token) = to_send else {
        return Ok(Reply::from(json!({"sid": sid, "submit_url": submit_url})));
    };
    let link = format!(
        "{submit_url}?sid={}&client_secret={}&token={}",
        percent_encode(&sid),
        percent_encode(&b.client_secret),
        percent_encode(&token)
    );
    let what = match purpose {
        "register" => "register an account with",
        "reset" => "reset the password of the account with",
        _ => "add to your account",
    };
    let text = format!(
        "Someone asked to {what} this address on {server}.\n\nTo confirm, open this link:\n{link}\n\nOr give this code to your client: {token}\n\nIf it was not you, ignore this mail.\n",
        server = ctx.server.config.server_name
    );
    let subject = format!(
        "Confirm your e-mail address on {}",
        ctx.server.config.server_name
    );
    let roots = ctx.server.config.outbound_ca.clone();
    let domain = ctx.server.config.server_name.clone();
    Ok(Reply::outbound(async move {
        crate::outbound::send_mail(
            &mail,
            &roots,
            &domain,
            &address,
            &subject,
            &text,
            MAIL_TIMEOUT,
        )
        .await
        .map_err(|e| ApiError::unknown(format!("could not send the mail: {e}")))?;
        Ok(json!({"sid": sid, "submit_url": submit_url}))
    }))
}

pub fn request_token_to_register_email(
    ctx: &Ctx,
    req: cs::registration::request_token_to_register_email::Request,
) -> ApiResult<Reply> {
    request_email_token(ctx, req.body, "register")
}

pub fn request_token_to3_pid_email(
    ctx: &Ctx,
    req: cs::administrative_contact::request_token_to3_pid_email::Request,
) -> ApiResult<Reply> {
    // The spec asks no access token here: the session is tied to the account at add3PID.
    request_email_token(ctx, req.body, "add")
}

pub fn request_token_to_reset_password_email(
    ctx: &Ctx,
    req: cs::password_management::request_token_to_reset_password_email::Request,
) -> ApiResult<Reply> {
    request_email_token(ctx, req.body, "reset")
}

/// The token from the mail, submitted by its link or to `submit_url`.
pub fn submit_token(server: &Server, sid: &str, client_secret: &str, token: &str) -> ApiResult<()> {
    server.write(|state, batch| {
        let mut s = state
            .threepid_sessions
            .get(sid)
            .filter(|s| s.client_secret == client_secret)
            .cloned()
            .ok_or_else(|| ApiError::threepid_auth_failed("unknown validation session"))?;
        if s.token != token {
            return Err(ApiError::threepid_auth_failed("wrong token"));
        }
        if s.created_at + SESSION_LIFETIME_MS < now_ms() {
            return Err(ApiError::threepid_auth_failed("the token has expired"));
        }
        if s.validated_at.is_none() {
            s.validated_at = Some(now_ms());
            state.put_threepid_session(batch, sid, s);
        }
        Ok(())
    })
}

/// The calling code of the countries this server knows (ISO 3166 alpha-2).
fn calling_code(country: &str) -> Option<&'static str> {
    Some(match country.to_ascii_uppercase().as_str() {
        "GB" => "44",
        "US" | "CA" => "1",
        "DE" => "49",
        "FR" => "33",
        "NL" => "31",
        "IE" => "353",
        _ => return None,
    })
}

/// The international form of a national number, digits only (`447700900123`).
fn canonical_msisdn(country: &str, number: &str) -> Option<String> {
    let code = calling_code(country)?;
    if number
        .chars()
        .any(|c| !(c.is_ascii_digit() || " -().".contains(c)))
    {
        return None;
    }
    let digits: String = number.chars().filter(char::is_ascii_digit).collect();
    let national = digits.trim_start_matches('0');
    (4..=14)
        .contains(&national.len())
        .then(|| format!("{code}{national}"))
}

/// Starts a phone-number validation through the SMS gateway, for `purpose` (as for e-mail).
fn request_msisdn_token(
    ctx: &Ctx,
    b: mxconform_generated::client_server::definitions::request_msisdn_validation::RequestMsisdnValidation,
    purpose: &'static str,
) -> ApiResult<Reply> {
    let gateway = ctx.server.config.msisdn_delegate.clone().ok_or_else(|| {
        ApiError::threepid_medium_not_supported("this server does not validate phone numbers")
    })?;
    if !valid_client_secret(&b.client_secret) {
        return Err(ApiError::invalid_param(
            "client_secret must be 1-255 characters of [0-9a-zA-Z.=_-]",
        ));
    }
    let msisdn = canonical_msisdn(&b.country, &b.phone_number).ok_or_else(|| {
        ApiError::invalid_param("not a phone number of a country this server knows")
    })?;
    ctx.server
        .read(|s| check_purpose(s, "msisdn", &msisdn, purpose))?;
    ctx.server
        .write(|state, batch| admit_message(state, batch, &msisdn))?;
    let server = ctx
        .server
        .shared()
        .ok_or_else(|| ApiError::internal("the server is stopping"))?;
    let body = json!({
        "client_secret": b.client_secret, "country": b.country,
        "phone_number": b.phone_number, "send_attempt": b.send_attempt,
    });
    Ok(Reply::outbound(async move {
        let url = format!(
            "{}/_matrix/identity/api/v1/validate/msisdn/requestToken",
            gateway.trim_end_matches('/')
        );
        let answer = server
            .outbound
            .configured
            .request("POST", &url, &[], Some(&body), GATEWAY_TIMEOUT, 1 << 16)
            .await
            .map_err(|e| ApiError::unknown(format!("cannot reach the SMS gateway: {e}")))?;
        let reply: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        let their_sid = reply.get("sid").and_then(Value::as_str);
        let (true, Some(their_sid)) = ((200..300).contains(&answer.status), their_sid) else {
            return Err(ApiError::unknown_400(format!(
                "the SMS gateway refused: {}",
                reply
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("no reason given")
            )));
        };
        let sid = format!("{MSISDN_SID}{their_sid}");
        server.write(|state, batch| {
            let session = ThreepidSession {
                client_secret: b.client_secret.clone(),
                medium: "msisdn".into(),
                address: msisdn.clone(),
                token: String::new(),
                purpose: purpose.into(),
                send_attempt: b.send_attempt,
                validated_at: state
                    .threepid_sessions
                    .get(&sid)
                    .and_then(|s| s.validated_at),
                created_at: now_ms(),
            };
            state.put_threepid_session(batch, &sid, session);
            Ok(())
        })?;
        let base = server.public_url();
        Ok(json!({
            "sid": sid,
            "submit_url": format!("{base}{MSISDN_SUBMIT_PATH}"),
            "msisdn": msisdn,
            "intl_fmt": format!("+{msisdn}"),
        }))
    }))
}

pub fn request_token_to_register_msisdn(
    ctx: &Ctx,
    req: cs::registration::request_token_to_register_msisdn::Request,
) -> ApiResult<Reply> {
    request_msisdn_token(ctx, req.body, "register")
}

pub fn request_token_to3_pid_msisdn(
    ctx: &Ctx,
    req: cs::administrative_contact::request_token_to3_pidmsisdn::Request,
) -> ApiResult<Reply> {
    request_msisdn_token(ctx, req.body, "add")
}

pub fn request_token_to_reset_password_msisdn(
    ctx: &Ctx,
    req: cs::password_management::request_token_to_reset_password_msisdn::Request,
) -> ApiResult<Reply> {
    request_msisdn_token(ctx, req.body, "reset")
}

/// A text message's code, posted to this server's `submit_url`: passed on to the gateway,
/// and the session marked validated when the gateway accepts it.
pub async fn submit_msisdn_token(server: &Server, body: &Value) -> ApiResult<bool> {
    let get = |k: &str| {
        body.get(k)
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::missing_param(format!("`{k}` is required")))
    };
    let (sid, client_secret, token) = (get("sid")?, get("client_secret")?, get("token")?);
    let gateway = server.config.msisdn_delegate.clone().ok_or_else(|| {
        ApiError::threepid_medium_not_supported("this server does not validate phone numbers")
    })?;
    let Some(their_sid) = sid.strip_prefix(MSISDN_SID) else {
        return Ok(false);
    };
    let known = server.read(|s| {
        s.threepid_sessions
            .get(sid)
            .is_some_and(|x| x.client_secret == client_secret)
    });
    if !known {
        return Ok(false);
    }
    let url = format!(
        "{}/_matrix/identity/api/v1/validate/msisdn/submitToken",
        gateway.trim_end_matches('/')
    );
    let sent = json!({"sid": their_sid, "client_secret": client_secret, "token": token});
    let answer = server
        .outbound
        .configured
        .request("POST", &url, &[], Some(&sent), GATEWAY_TIMEOUT, 1 << 16)
        .await
        .map_err(|e| ApiError::unknown(format!("cannot reach the SMS gateway: {e}")))?;
    let ok = serde_json::from_slice::<Value>(&answer.body)
        .ok()
        .and_then(|v| v.get("success").and_then(Value::as_bool))
        .unwrap_or(false);
    if ok {
        server.write(|state, batch| {
            if let Some(mut s) = state.threepid_sessions.get(sid).cloned() {
                if s.validated_at.is_none() {
                    s.validated_at = Some(now_ms());
                    state.put_threepid_session(batch, sid, s);
                }
            }
            Ok(())
        })?;
    }
    Ok(ok)
}

/// The account a password-reset stage (`m.login.email.identity` / `m.login.msisdn` with
/// `threepid_creds`) proves, and the session it used: a validated `reset` session of an
/// address the account has.
pub fn reset_owner(ctx: &Ctx, auth: &Value) -> ApiResult<(String, String)> {
    let creds = auth
        .get("threepid_creds")
        .or_else(|| auth.get("threepidCreds"))
        .ok_or_else(|| ApiError::missing_param("threepid_creds is required"))?;
    let get = |k: &str| creds.get(k).and_then(Value::as_str).unwrap_or("");
    let (sid, secret) = (get("sid"), get("client_secret"));
    ctx.server.read(|s| {
        let session = s
            .threepid_sessions
            .get(sid)
            .filter(|x| x.client_secret == secret && x.purpose == "reset")
            .ok_or_else(|| ApiError::threepid_auth_failed("unknown reset session"))?;
        if session.validated_at.is_none() {
            return Err(ApiError::threepid_auth_failed(
                "the address has not been validated yet",
            ));
        }
        let owner = s
            .threepids
            .get(&(session.medium.clone(), session.address.clone()))
            .ok_or_else(|| ApiError::threepid_not_found("no account has that address"))?;
        Ok((owner.user_id.clone(), sid.to_string()))
    })
}

/// Binds the address of a validated `add` session to the caller.
fn bind_session(ctx: &Ctx, sid: &str, client_secret: &str) -> ApiResult<Value> {
    let me = ctx.me()?.user_id.clone();
    ctx.server.write(|state, batch| {
        let s = state
            .threepid_sessions
            .get(sid)
            .filter(|s| s.client_secret == client_secret && s.purpose == "add")
            .cloned()
            .ok_or_else(|| ApiError::threepid_auth_failed("unknown validation session"))?;
        let validated_at = s.validated_at.ok_or_else(|| {
            ApiError::threepid_auth_failed("the address has not been validated yet")
        })?;
        let key = (s.medium.clone(), s.address.clone());
        match state.threepids.get(&key) {
            Some(b) if b.user_id == me => return Ok(json!({})),
            Some(_) => {
                return Err(ApiError::threepid_in_use(
                    "another account has that address",
                ))
            }
            None => {}
        }
        state.put_threepid(
            batch,
            &s.medium,
            &s.address,
            Some(Threepid {
                user_id: me.clone(),
                added_at: now_ms(),
                validated_at,
            }),
        );
        Ok(json!({}))
    })
}

pub fn add3_pid(ctx: &Ctx, req: cs::administrative_contact::add3_pid::Request) -> ApiResult<Value> {
    let b = req.body;
    super::uia::password_uia(ctx, b.auth.as_ref())?;
    bind_session(ctx, &b.sid, &b.client_secret)
}

pub fn post3_pi_ds(
    ctx: &Ctx,
    req: cs::administrative_contact::post3_pi_ds::Request,
) -> ApiResult<Value> {
    let c = req.body.three_pid_creds;
    bind_session(ctx, &c.sid, &c.client_secret)
}

pub fn delete3pid_from_account(
    ctx: &Ctx,
    req: cs::administrative_contact::delete3pid_from_account::Request,
) -> ApiResult<Reply> {
    use cs::administrative_contact::delete3pid_from_account::Medium;
    let me = ctx.me()?.user_id.clone();
    let b = req.body;
    let medium = match b.medium {
        Medium::Email => "email".to_string(),
        Medium::Msisdn => "msisdn".to_string(),
        Medium::Other(m) => m,
    };
    let address = if medium == "email" {
        b.address.to_lowercase()
    } else {
        b.address
    };
    ctx.server.write(|state, batch| {
        let key = (medium.clone(), address.clone());
        if state.threepids.get(&key).is_some_and(|t| t.user_id == me) {
            state.put_threepid(batch, &medium, &address, None);
        }
        Ok(())
    })?;
    // Unbound too at the identity server named, else at those it was bound at through us.
    let server = ctx
        .server
        .shared()
        .ok_or_else(|| ApiError::internal("the server is stopping"))?;
    Ok(Reply::outbound(async move {
        let result = super::identity::unbind(server, me, medium, address, b.id_server)
            .await
            .unwrap_or("no-support");
        Ok(json!({"id_server_unbind_result": result}))
    }))
}

pub fn get_account3_pi_ds(
    ctx: &Ctx,
    _req: cs::administrative_contact::get_account3_pi_ds::Request,
) -> ApiResult<Value> {
    let me = ctx.me()?.user_id.clone();
    Ok(ctx.server.read(|s| {
        let list: Vec<Value> = s
            .threepids
            .iter()
            .filter(|(_, t)| t.user_id == me)
            .map(|((medium, address), t)| {
                json!({"medium": medium, "address": address, "added_at": t.added_at, "validated_at": t.validated_at})
            })
            .collect();
        json!({"threepids": list})
    }))
}

/// Unbinds every address of a deactivated account.
pub fn forget_user(state: &mut crate::state::State, batch: &mut crate::store::Batch, user: &str) {
    let keys: Vec<(String, String)> = state
        .threepids
        .iter()
        .filter(|(_, t)| t.user_id == user)
        .map(|(k, _)| k.clone())
        .collect();
    for (m, a) in keys {
        state.put_threepid(batch, &m, &a, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_secrets_follow_their_grammars() {
        assert_eq!(
            canonical_email("Alice@Example.ORG").as_deref(),
            Some("alice@example.org")
        );
        for bad in ["alice", "@x", "a@", "a@b@c", "a b@c", "<a@b>"] {
            assert_eq!(canonical_email(bad), None, "{bad}");
        }
        assert!(valid_client_secret("abc.DEF=_-123"));
        assert!(!valid_client_secret(""));
        assert!(!valid_client_secret("no spaces"));
        assert!(!valid_client_secret(&"x".repeat(256)));
        assert_eq!(
            canonical_msisdn("GB", "07700 900123").as_deref(),
            Some("447700900123")
        );
        assert_eq!(
            canonical_msisdn("us", "(555) 010-1234").as_deref(),
            Some("15550101234")
        );
        assert_eq!(canonical_msisdn("ZZ", "123456"), None);
        assert_eq!(canonical_msisdn("GB", "12"), None);
        assert_eq!(canonical_msisdn("GB", "0770090012x"), None);
    }
}
