//! OpenID tokens for identity checks by third parties.

use mxconform_generated::client_server as cs;
use serde_json::{json, Value};

use super::{require_self, Ctx};
use crate::error::ApiResult;

pub fn request_open_id_token(
    ctx: &Ctx,
    req: cs::openid::request_open_id_token::Request,
) -> ApiResult<Value> {
    require_self(ctx, &req.user_id)?;
    let (token, lifetime) = ctx
        .server
        .write(|state, _| Ok(state.issue_openid_token(&req.user_id)))?;
    Ok(json!({
        "access_token": token,
        "token_type": "Bearer",
        "matrix_server_name": ctx.server.config.server_name,
        "expires_in": lifetime / 1000,
    }))
}
