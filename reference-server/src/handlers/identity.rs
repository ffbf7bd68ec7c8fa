//! The homeserver's side of the identity-service API: binding an identifier at the identity
//! server a client names (bind3PID) and unbinding it there (unbind3pidFromAccount, and the
//! unbinds of delete3pidFromAccount and deactivateAccount, at the identity servers it was bound
//! at through this server when the client names none), and invites by e-mail address
//! (inviteBy3PID): a hashed lookup first, then an invite of the user found, or an invitation
//! the identity server keeps (store-invite) and the room's `m.room.third_party_invite`.
//!
//! Identity servers are named by clients, so they are reached as other addresses users give
//! are: over HTTPS through the outbound `public` client (public addresses and the allowed ones,
//! `--outbound-allow`; the system's authorities and `--outbound-ca`), outside the state lock.
//! An unbind carries this server's X-Matrix signature, with the identity server as destination.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use mxconform_generated::client_server as cs;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{Ctx, Reply};
use crate::error::{ApiError, ApiResult};
use crate::outbound::Failure;
use crate::state::{Append, State};
use crate::store::Batch;
use crate::Server;

const TIMEOUT: Duration = Duration::from_secs(10);
const MAX_ANSWER: usize = 1 << 20;
const UNBIND_PATH: &str = "/_matrix/identity/v2/3pid/unbind";

/// An identity server's name as clients give it: a host (name, IPv4, or bracketed IPv6) and an
/// optional port; no scheme, path or credentials.
fn valid_id_server(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        && url::Url::parse(&format!("https://{s}/"))
            .is_ok_and(|u| u.host_str().is_some() && u.path() == "/" && u.username().is_empty())
}

fn checked_id_server(s: &str) -> ApiResult<String> {
    if valid_id_server(s) {
        Ok(s.to_string())
    } else {
        Err(ApiError::invalid_param(
            "id_server must be a host name with an optional port",
        ))
    }
}

/// The sha256 lookup hash of an identifier (identity-service-api "Client behaviour" of the
/// hashed lookup): `address medium pepper`, URL-safe unpadded base64.
fn lookup_hash(address: &str, medium: &str, pepper: &str) -> String {
    let digest = Sha256::digest(format!("{address} {medium} {pepper}").as_bytes());
    mxconform_pdu::base64::encode_url_safe(&digest)
}

/// An identity server's answer.
struct Answer {
    status: u16,
    body: Value,
}

impl Answer {
    fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// A Matrix error of the identity server, passed on to the client (its code when it is one
    /// the identity-service API gives, else `M_UNKNOWN`).
    fn passed_on(&self) -> ApiError {
        let errcode = self
            .body
            .get("errcode")
            .and_then(Value::as_str)
            .and_then(|c| ERRCODES.iter().find(|k| **k == c).copied())
            .unwrap_or("M_UNKNOWN");
        let message = self
            .body
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("no reason given");
        ApiError {
            status: if (400..500).contains(&self.status) {
                self.status
            } else {
                502
            },
            errcode,
            message: format!("the identity server refused: {message}"),
            extra: None,
        }
    }

    /// A Matrix error (as opposed to a server that does not know the operation at all).
    fn is_matrix_error(&self) -> bool {
        self.body.get("errcode").and_then(Value::as_str).is_some()
    }
}

/// The identity-service API's error codes, passed on as they are.
const ERRCODES: &[&str] = &[
    "M_FORBIDDEN",
    "M_UNAUTHORIZED",
    "M_TERMS_NOT_SIGNED",
    "M_NOT_FOUND",
    "M_INVALID_PARAM",
    "M_MISSING_PARAMS",
    "M_INVALID_PEPPER",
    "M_SESSION_NOT_VALIDATED",
    "M_NO_VALID_SESSION",
    "M_THREEPID_IN_USE",
    "M_UNRECOGNIZED",
    "M_BAD_JSON",
    "M_NOT_JSON",
    "M_INVALID_EMAIL",
    "M_LIMIT_EXCEEDED",
];

/// One request to an identity server.
async fn ask(
    server: &Server,
    method: &str,
    id_server: &str,
    path: &str,
    headers: &[(&str, String)],
    body: Option<&Value>,
) -> ApiResult<Answer> {
    let url = format!("https://{id_server}{path}");
    let answer = server
        .outbound
        .public
        .request(method, &url, headers, body, TIMEOUT, MAX_ANSWER)
        .await
        .map_err(|e| match e {
            Failure::Timeout => ApiError::connection_timeout(format!(
                "the identity server {id_server} did not answer in time"
            )),
            Failure::Refused(why) => {
                ApiError::invalid_param(format!("id_server {id_server} cannot be used: {why}"))
            }
            other => ApiError::connection_failed(format!(
                "cannot reach the identity server {id_server}: {other}"
            )),
        })?;
    Ok(Answer {
        status: answer.status,
        body: serde_json::from_slice(&answer.body).unwrap_or(Value::Null),
    })
}

fn bearer(token: &str) -> Vec<(&'static str, String)> {
    vec![("Authorization", format!("Bearer {token}"))]
}

fn medium_of(m: &cs::administrative_contact::unbind3pid_from_account::Medium) -> String {
    use cs::administrative_contact::unbind3pid_from_account::Medium;
    match m {
        Medium::Email => "email".into(),
        Medium::Msisdn => "msisdn".into(),
        Medium::Other(o) => o.clone(),
    }
}

/// Remembers (or forgets) that `user` bound `medium`/`address` at `id_server`.
fn note_binding(
    state: &mut State,
    batch: &mut Batch,
    user: &str,
    medium: &str,
    address: &str,
    id_server: &str,
    bound: bool,
) {
    let key = (user.to_string(), medium.to_string(), address.to_string());
    let servers = state.id_servers.entry(key.clone()).or_default();
    if bound {
        servers.insert(id_server.to_string());
    } else {
        servers.remove(id_server);
    }
    let rec_key = format!("{user}\u{0}{medium}\u{0}{address}");
    if servers.is_empty() {
        state.id_servers.remove(&key);
        batch.delete("id_server", rec_key);
    } else {
        batch.put("id_server", rec_key, &json!(servers));
    }
}

/// `POST /account/3pid/bind`: the identity server binds the address its session validated to
/// the caller; this server remembers where, to unbind it there later.
pub fn bind3_pid(
    ctx: &Ctx,
    req: cs::administrative_contact::bind3_pid::Request,
) -> ApiResult<Reply> {
    let me = ctx.me()?.user_id.clone();
    let b = req.body;
    let id_server = checked_id_server(&b.id_server)?;
    let server = ctx
        .server
        .shared()
        .ok_or_else(|| ApiError::internal("the server is stopping"))?;
    Ok(Reply::outbound(async move {
        let body = json!({"sid": b.sid, "client_secret": b.client_secret, "mxid": me});
        let answer = ask(
            &server,
            "POST",
            &id_server,
            "/_matrix/identity/v2/3pid/bind",
            &bearer(&b.id_access_token),
            Some(&body),
        )
        .await?;
        if !answer.ok() {
            return Err(answer.passed_on());
        }
        let text = |k: &str| answer.body.get(k).and_then(Value::as_str);
        let (Some(medium), Some(address)) = (text("medium"), text("address")) else {
            return Err(ApiError::bad_status(
                "the identity server's association names no medium and address",
            ));
        };
        if text("mxid") != Some(me.as_str()) {
            return Err(ApiError::bad_status(
                "the identity server bound the address to someone else",
            ));
        }
        server.write(|state, batch| {
            note_binding(state, batch, &me, medium, address, &id_server, true);
            Ok(json!({}))
        })
    }))
}

/// Unbinds an identifier of `user` at `id_server`, or at every identity server it was bound at
/// through this server: `success` when each one unbound it, `no-support` when there was none
/// to ask or one does not offer unbinding. An identity server's Matrix error is passed on.
pub async fn unbind(
    server: Arc<Server>,
    user: String,
    medium: String,
    address: String,
    id_server: Option<String>,
) -> ApiResult<&'static str> {
    let servers: BTreeSet<String> = match id_server {
        Some(s) => [checked_id_server(&s)?].into(),
        None => server.read(|s| {
            s.id_servers
                .get(&(user.clone(), medium.clone(), address.clone()))
                .cloned()
                .unwrap_or_default()
        }),
    };
    if servers.is_empty() {
        return Ok("no-support");
    }
    let key = server
        .read(|s| s.signing_key.clone())
        .ok_or_else(|| ApiError::internal("the server has no signing key"))?;
    let body = json!({"mxid": user, "threepid": {"medium": medium, "address": address}});
    let mut result = "success";
    for id_server in servers {
        let auth = mxconform_pdu::xmatrix::authorization(
            &server.config.server_name,
            &id_server,
            &key,
            "POST",
            UNBIND_PATH,
            Some(&body),
        );
        let answer = ask(
            &server,
            "POST",
            &id_server,
            UNBIND_PATH,
            &[("Authorization", auth)],
            Some(&body),
        )
        .await?;
        if !answer.ok() {
            // Without a Matrix error, 400, 404 and 501 say the server does not unbind.
            if answer.is_matrix_error() || !matches!(answer.status, 400 | 404 | 501) {
                return Err(answer.passed_on());
            }
            result = "no-support";
        }
        server.write(|state, batch| {
            note_binding(state, batch, &user, &medium, &address, &id_server, false);
            Ok(())
        })?;
    }
    Ok(result)
}

/// Unbinds the identifiers `user` bound through this server, for deactivation (with
/// `id_server` named, there, together with the account's own `identifiers`): `success` when
/// every one was unbound (or there was none), `no-support` when one could not be.
pub async fn unbind_all(
    server: Arc<Server>,
    user: String,
    id_server: Option<String>,
    identifiers: Vec<(String, String)>,
) -> &'static str {
    let mut all: BTreeSet<(String, String)> = server.read(|s| {
        s.id_servers
            .keys()
            .filter(|(u, _, _)| *u == user)
            .map(|(_, m, a)| (m.clone(), a.clone()))
            .collect()
    });
    if id_server.is_some() {
        all.extend(identifiers);
    }
    let mut result = "success";
    for (medium, address) in all {
        let r = unbind(
            server.clone(),
            user.clone(),
            medium,
            address,
            id_server.clone(),
        )
        .await;
        if r != Ok("success") {
            result = "no-support";
        }
    }
    result
}

/// `POST /account/3pid/unbind`.
pub fn unbind3pid_from_account(
    ctx: &Ctx,
    req: cs::administrative_contact::unbind3pid_from_account::Request,
) -> ApiResult<Reply> {
    let me = ctx.me()?.user_id.clone();
    let b = req.body;
    let medium = medium_of(&b.medium);
    let address = if medium == "email" {
        b.address.to_lowercase()
    } else {
        b.address
    };
    let server = ctx
        .server
        .shared()
        .ok_or_else(|| ApiError::internal("the server is stopping"))?;
    Ok(Reply::outbound(async move {
        let result = unbind(server, me, medium, address, b.id_server).await?;
        Ok(json!({"id_server_unbind_result": result}))
    }))
}

/// What the identity server is told of the room and the inviter (for the invitation's mail).
fn invitation_details(state: &State, room_id: &str, sender: &str) -> ApiResult<Value> {
    let room = state.room(room_id)?;
    let mut d = json!({"room_id": room_id, "sender": sender});
    let mut put = |k: &str, v: Option<&Value>| {
        if let Some(v) = v.filter(|v| v.is_string()) {
            d[k] = v.clone();
        }
    };
    // (parameter, state event type, content field); the state key is empty for each.
    for (key, kind, field) in [
        ("room_alias", "m.room.canonical_alias", "alias"),
        ("room_avatar_url", "m.room.avatar", "url"),
        ("room_join_rules", "m.room.join_rules", "join_rule"),
        ("room_name", "m.room.name", "name"),
        ("room_type", "m.room.create", "type"),
    ] {
        put(key, room.state_content(kind, "").and_then(|c| c.get(field)));
    }
    let me = state.users.get(sender);
    let name = me.and_then(|u| u.displayname.clone()).map(Value::String);
    let avatar = me.and_then(|u| u.avatar_url.clone()).map(Value::String);
    put("sender_display_name", name.as_ref());
    put("sender_avatar_url", avatar.as_ref());
    Ok(d)
}

/// The spec's token grammar: `[0-9a-zA-Z.=_-]{1,255}`.
fn valid_token(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 255
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".=_-".contains(&b))
}

/// `POST /rooms/{roomId}/invite` with `id_server`, `id_access_token`, `medium`, `address`.
pub fn invite_by3_pid(
    ctx: &Ctx,
    req: cs::third_party_membership::invite_by3_pid::Request,
) -> ApiResult<Reply> {
    let me = ctx.me()?.user_id.clone();
    let room_id = req.room_id.as_str().to_string();
    let b = req.body;
    let id_server = checked_id_server(&b.id_server)?;
    let medium = b.medium.clone();
    let address = if medium == "email" {
        b.address.to_lowercase()
    } else {
        b.address.clone()
    };
    // The inviter must be allowed to invite before the identity server hears of it.
    let mut details = ctx.server.read(|state| {
        if state.room(&room_id)?.membership(&me) != Some("join") {
            return Err(ApiError::forbidden("you are not in this room"));
        }
        state.check_allowed(Append::new(
            &room_id,
            &me,
            "m.room.third_party_invite",
            Some("probe"),
            json!({"display_name": "probe", "key_validity_url": "https://probe/", "public_key": "probe"}),
        ))?;
        invitation_details(state, &room_id, &me)
    })?;
    details["medium"] = json!(medium);
    details["address"] = json!(address);
    let server = ctx
        .server
        .shared()
        .ok_or_else(|| ApiError::internal("the server is stopping"))?;
    let auth = bearer(&b.id_access_token);
    Ok(Reply::outbound(async move {
        let hashing = ask(
            &server,
            "GET",
            &id_server,
            "/_matrix/identity/v2/hash_details",
            &auth,
            None,
        )
        .await?;
        if !hashing.ok() {
            return Err(hashing.passed_on());
        }
        let pepper = hashing
            .body
            .get("lookup_pepper")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let offers = |a: &str| {
            hashing
                .body
                .get("algorithms")
                .and_then(Value::as_array)
                .is_some_and(|l| l.iter().any(|x| x == a))
        };
        let (algorithm, wanted) = if offers("sha256") {
            ("sha256", lookup_hash(&address, &medium, &pepper))
        } else if offers("none") {
            ("none", format!("{address} {medium}"))
        } else {
            return Err(ApiError::bad_status(
                "the identity server offers no lookup this server can make (sha256 or none)",
            ));
        };
        let found = ask(
            &server,
            "POST",
            &id_server,
            "/_matrix/identity/v2/lookup",
            &auth,
            Some(&json!({"addresses": [wanted], "algorithm": algorithm, "pepper": pepper})),
        )
        .await?;
        if !found.ok() {
            return Err(found.passed_on());
        }
        let mxid = found
            .body
            .get("mappings")
            .and_then(|m| m.get(&wanted))
            .and_then(Value::as_str)
            .map(str::to_string);
        if let Some(target) = mxid {
            // A user has the address: an invite as any other.
            let ours = target
                .split_once(':')
                .is_some_and(|(_, s)| s == server.config.server_name);
            if !ours && server.federation.is_some() {
                return super::rooms::invite_remote_user(server, room_id, me, target, json!({}))
                    .await;
            }
            return server.write(|state, batch| {
                if state.room(&room_id)?.membership(&target) != Some("invite") {
                    super::rooms::change_membership(
                        state,
                        batch,
                        &room_id,
                        &me,
                        &target,
                        "invite",
                        json!({}),
                    )?;
                }
                Ok(json!({}))
            });
        }
        // Nobody has it yet: the identity server keeps the invitation and mails the address.
        let stored = ask(
            &server,
            "POST",
            &id_server,
            "/_matrix/identity/v2/store-invite",
            &auth,
            Some(&details),
        )
        .await?;
        if !stored.ok() {
            return Err(stored.passed_on());
        }
        let token = stored
            .body
            .get("token")
            .and_then(Value::as_str)
            .filter(|t| valid_token(t))
            .ok_or_else(|| ApiError::bad_status("the identity server's token is not a valid one"))?
            .to_string();
        let keys: Vec<Value> = stored
            .body
            .get("public_keys")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|k| k.get("public_key").is_some_and(Value::is_string))
            .cloned()
            .collect();
        let Some(first) = keys.first().cloned() else {
            return Err(ApiError::bad_status(
                "the identity server gave no public key for the invitation",
            ));
        };
        let display_name = stored
            .body
            .get("display_name")
            .and_then(Value::as_str)
            .unwrap_or("an invited user")
            .to_string();
        let mut content = json!({
            "display_name": display_name,
            "public_key": first["public_key"],
            "public_keys": keys,
        });
        if let Some(url) = first.get("key_validity_url").filter(|u| u.is_string()) {
            content["key_validity_url"] = url.clone();
        }
        server.write(|state, batch| {
            state.append(
                batch,
                Append::new(
                    &room_id,
                    &me,
                    "m.room.third_party_invite",
                    Some(&token),
                    content,
                ),
            )?;
            Ok(json!({}))
        })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_servers_and_tokens_follow_their_grammars() {
        for good in [
            "example.org",
            "127.0.0.1:18090",
            "[::1]:443",
            "id.example.org:8090",
        ] {
            assert!(valid_id_server(good), "{good}");
        }
        for bad in [
            "",
            "https://example.org",
            "example.org/path",
            "user@example.org",
            "exa mple.org",
        ] {
            assert!(!valid_id_server(bad), "{bad}");
        }
        assert!(valid_token("abc.DEF=_-1"));
        assert!(!valid_token("a b"));
        // The identity service API's example of a hashed lookup.
        assert_eq!(
            lookup_hash("alice@example.com", "email", "matrixrocks"),
            "4kenr7N9drpCJ4AfalmlGQVsOn3o2RHjkADUpXJWZUc"
        );
    }
}
