//! Policy Servers: this server as one (signing other servers' events for the rooms that name
//! it), and asking a room's Policy Server to sign an event received without its signature.

use mxconform_pdu::{Pdu, RoomVersion};
use serde_json::Value;

use crate::error::{ApiError, ApiResult};
use crate::Server;

/// A refusal to sign, as the spec words it (400 `M_FORBIDDEN`).
fn refused(message: String) -> ApiError {
    ApiError {
        status: 400,
        errcode: "M_FORBIDDEN",
        message,
        extra: None,
    }
}

/// This server's Policy Server signature on `pdu` ([`crate::state::State::policy_sign`]).
pub fn sign_locally(server: &Server, v: &RoomVersion, pdu: &Pdu) -> ApiResult<Value> {
    server.read(|s| s.policy_sign(v, pdu))
}

/// `POST /_matrix/policy/v1/sign` from `origin`: a well-formed PDU of a room this server is
/// in, signed by its sender's server (content hash included), then [`sign_locally`].
pub async fn sign_for(server: &Server, body: &Value) -> ApiResult<Value> {
    let fed = server
        .federation
        .as_ref()
        .ok_or_else(|| ApiError::unrecognized("this server does not federate"))?;
    let room_id = body
        .get("room_id")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_json("the event has no room_id"))?;
    let v = server
        .read(|s| s.room_version_of(room_id))
        .ok_or_else(|| refused(format!("this Policy Server is not in room {room_id}")))?;
    let pdu = Pdu::from_json(v, body.clone())
        .map_err(|e| ApiError::bad_json(format!("not an event of room version {}: {e}", v.id)))?;
    match fed.verify_pdu(server, v, &pdu).await {
        Ok(true) => {}
        Ok(false) => return Err(refused("the event's content hash does not match".into())),
        Err(e) => return Err(refused(format!("the event's signatures: {e}"))),
    }
    sign_locally(server, v, &pdu)
}

/// `pdu` with its room's Policy Server's signature added, asked of `via` (this server signs
/// itself); the Policy Server's refusal as it gave it.
pub async fn ask(server: &Server, via: &str, v: &RoomVersion, pdu: &Pdu) -> ApiResult<Pdu> {
    let answer = if via == server.config.server_name {
        sign_locally(server, v, pdu)?
    } else {
        let fed = server
            .federation
            .as_ref()
            .ok_or_else(|| ApiError::unrecognized("this server does not federate"))?;
        let a = fed
            .request(
                server,
                via,
                "POST",
                "/_matrix/policy/v1/sign",
                Some(&pdu.json),
            )
            .await
            .map_err(|e| ApiError::bad_status(format!("the Policy Server {via}: {e}")))?;
        if a.status != 200 {
            let errcode = a.body.get("errcode").and_then(Value::as_str).unwrap_or("");
            let message = a.body.get("error").and_then(Value::as_str).unwrap_or("");
            return Err(if errcode == "M_FORBIDDEN" {
                refused(message.to_string())
            } else {
                ApiError::bad_status(format!(
                    "the Policy Server {via} answered {}: {errcode} {message}",
                    a.status
                ))
            });
        }
        a.body
    };
    let sig = answer
        .get(via)
        .and_then(|x| x.get("ed25519:policy_server"))
        .cloned()
        .ok_or_else(|| {
            ApiError::bad_status(format!("the Policy Server {via} gave no signature"))
        })?;
    let mut json = pdu.json.clone();
    json["signatures"][via]["ed25519:policy_server"] = sig;
    Pdu::from_json(v, json).map_err(|e| ApiError::internal(format!("the signed event: {e}")))
}
