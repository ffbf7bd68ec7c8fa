//! Application services: pings, their rooms in the directory, and the third-party lookups
//! this server forwards to the bridges that declare a protocol.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mxconform_generated::client_server as cs;
use serde_json::{json, Value};

use super::{Ctx, Reply};
use crate::appservice::AppService;
use crate::error::{ApiError, ApiResult};
use crate::outbound::Failure;
use crate::Server;

/// How long a bridge may take to answer.
const BRIDGE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most this server reads of a bridge's answer.
const BRIDGE_MAX_BODY: usize = 1 << 20;

/// `GET <service>/_matrix/app/v1/<path>` with the service's `hs_token`; the JSON answer for a
/// 2xx, `None` for anything else (a bridge that knows nothing, or is down, adds nothing).
async fn ask(
    server: &Server,
    asv: &AppService,
    path: &str,
    query: &[(String, String)],
) -> Option<Value> {
    let base = asv.url.as_deref()?.trim_end_matches('/');
    let mut url = format!("{base}/_matrix/app/v1/{path}");
    for (i, (k, v)) in query.iter().enumerate() {
        url.push(if i == 0 { '?' } else { '&' });
        url.push_str(&crate::router::percent_encode(k));
        url.push('=');
        url.push_str(&crate::router::percent_encode(v));
    }
    let answer = server
        .outbound
        .configured
        .request(
            "GET",
            &url,
            &[("authorization", asv.authorization())],
            None,
            BRIDGE_TIMEOUT,
            BRIDGE_MAX_BODY,
        )
        .await
        .ok()?;
    if !(200..300).contains(&answer.status) {
        return None;
    }
    serde_json::from_slice(&answer.body).ok()
}

/// The server, for work done after the handler returns.
fn shared(ctx: &Ctx) -> ApiResult<Arc<Server>> {
    ctx.server
        .shared()
        .ok_or_else(|| ApiError::internal("the server is stopping"))
}

fn services_for(ctx: &Ctx, protocol: Option<&str>) -> Vec<AppService> {
    ctx.server
        .config
        .appservices
        .iter()
        .filter(|a| protocol.is_none_or(|p| a.protocols.iter().any(|x| x == p)))
        .cloned()
        .collect()
}

/// A protocol's metadata, merged over the services that declare it (their instances
/// concatenated, each given its `instance_id`).
async fn protocol_metadata(
    server: &Server,
    services: &[AppService],
    protocol: &str,
) -> Option<Value> {
    let mut merged: Option<Value> = None;
    for asv in services {
        let Some(mut info) = ask(
            server,
            asv,
            &format!(
                "thirdparty/protocol/{}",
                crate::router::percent_encode(protocol)
            ),
            &[],
        )
        .await
        else {
            continue;
        };
        if !info.is_object() {
            continue;
        }
        let mut instances = info
            .get("instances")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for inst in &mut instances {
            if let Some(net) = inst
                .get("network_id")
                .and_then(Value::as_str)
                .map(str::to_string)
            {
                inst["instance_id"] = json!(format!("{}|{net}", asv.id));
            }
        }
        match &mut merged {
            None => {
                info["instances"] = json!(instances);
                merged = Some(info);
            }
            Some(m) => {
                if let Some(list) = m.get_mut("instances").and_then(Value::as_array_mut) {
                    list.extend(instances);
                }
            }
        }
    }
    merged
}

pub fn get_protocols(
    ctx: &Ctx,
    _req: cs::third_party_lookup::get_protocols::Request,
) -> ApiResult<Reply> {
    ctx.me()?;
    let services = services_for(ctx, None);
    let server = shared(ctx)?;
    Ok(Reply::outbound(async move {
        let mut protocols: Vec<String> =
            services.iter().flat_map(|a| a.protocols.clone()).collect();
        protocols.sort();
        protocols.dedup();
        let mut out = serde_json::Map::new();
        for p in protocols {
            let declaring: Vec<AppService> = services
                .iter()
                .filter(|a| a.protocols.contains(&p))
                .cloned()
                .collect();
            if let Some(info) = protocol_metadata(&server, &declaring, &p).await {
                out.insert(p, info);
            }
        }
        Ok(Value::Object(out))
    }))
}

pub fn get_protocol_metadata(
    ctx: &Ctx,
    req: cs::third_party_lookup::get_protocol_metadata::Request,
) -> ApiResult<Reply> {
    ctx.me()?;
    let services = services_for(ctx, Some(&req.protocol));
    if services.is_empty() {
        return Err(ApiError::not_found("no bridge declares that protocol"));
    }
    let server = shared(ctx)?;
    Ok(Reply::outbound(async move {
        protocol_metadata(&server, &services, &req.protocol)
            .await
            .ok_or_else(|| ApiError::not_found("no bridge answered for that protocol"))
    }))
}

/// The lookup's query as the client sent it, less the access token.
fn forwarded_query(ctx: &Ctx) -> Vec<(String, String)> {
    ctx.query
        .iter()
        .filter(|(k, _)| k != "access_token")
        .cloned()
        .collect()
}

/// Asks every service in `services` and concatenates the lists they answer; 404 when none
/// has a result.
fn lookup(
    server: Arc<Server>,
    services: Vec<AppService>,
    path: String,
    query: Vec<(String, String)>,
    none: &'static str,
) -> Reply {
    Reply::outbound(async move {
        let mut all = Vec::new();
        for asv in &services {
            if let Some(Value::Array(items)) = ask(&server, asv, &path, &query).await {
                all.extend(items.into_iter().filter(Value::is_object));
            }
        }
        if all.is_empty() {
            return Err(ApiError::not_found(none));
        }
        Ok(Value::Array(all))
    })
}

/// A lookup by a protocol's fields (`kind`: `location` or `user`), asked of the bridges that
/// declare the protocol.
fn lookup_by_protocol(
    ctx: &Ctx,
    protocol: &str,
    kind: &str,
    none: &'static str,
) -> ApiResult<Reply> {
    ctx.me()?;
    let services = services_for(ctx, Some(protocol));
    if services.is_empty() {
        return Err(ApiError::not_found("no bridge declares that protocol"));
    }
    let path = format!(
        "thirdparty/{kind}/{}",
        crate::router::percent_encode(protocol)
    );
    Ok(lookup(
        shared(ctx)?,
        services,
        path,
        forwarded_query(ctx),
        none,
    ))
}

pub fn query_location_by_protocol(
    ctx: &Ctx,
    req: cs::third_party_lookup::query_location_by_protocol::Request,
) -> ApiResult<Reply> {
    lookup_by_protocol(ctx, &req.protocol, "location", "no portal rooms were found")
}

pub fn query_user_by_protocol(
    ctx: &Ctx,
    req: cs::third_party_lookup::query_user_by_protocol::Request,
) -> ApiResult<Reply> {
    lookup_by_protocol(ctx, &req.protocol, "user", "no users were found")
}

pub fn query_location_by_alias(
    ctx: &Ctx,
    req: cs::third_party_lookup::query_location_by_alias::Request,
) -> ApiResult<Reply> {
    ctx.me()?;
    let query = vec![("alias".to_string(), req.alias.to_string())];
    Ok(lookup(
        shared(ctx)?,
        services_for(ctx, None),
        "thirdparty/location".into(),
        query,
        "no bridge knows that alias",
    ))
}

pub fn query_user_by_id(
    ctx: &Ctx,
    req: cs::third_party_lookup::query_user_by_id::Request,
) -> ApiResult<Reply> {
    ctx.me()?;
    let query = vec![("userid".to_string(), req.userid.to_string())];
    Ok(lookup(
        shared(ctx)?,
        services_for(ctx, None),
        "thirdparty/user".into(),
        query,
        "no bridge knows that user",
    ))
}

/// The calling application service, or 403.
fn calling_service<'a>(ctx: &'a Ctx) -> ApiResult<&'a AppService> {
    let id = ctx
        .me()?
        .appservice
        .clone()
        .ok_or_else(|| ApiError::forbidden("only an application service may do this"))?;
    ctx.server
        .config
        .appservices
        .iter()
        .find(|a| a.id == id)
        .ok_or_else(|| ApiError::forbidden("unknown application service"))
}

pub fn ping_appservice(
    ctx: &Ctx,
    req: cs::appservice_ping::ping_appservice::Request,
) -> ApiResult<Reply> {
    let asv = calling_service(ctx)?;
    if asv.id != req.appservice_id {
        return Err(ApiError::forbidden(
            "an application service may only ping itself",
        ));
    }
    let url = asv
        .url
        .clone()
        .ok_or_else(|| ApiError::url_not_set("the application service has no URL"))?;
    let auth = asv.authorization();
    let body = match req.body.transaction_id {
        Some(t) => json!({"transaction_id": t}),
        None => json!({}),
    };
    let server = shared(ctx)?;
    Ok(Reply::outbound(async move {
        let started = Instant::now();
        let target = format!("{}/_matrix/app/v1/ping", url.trim_end_matches('/'));
        match server
            .outbound
            .configured
            .request(
                "POST",
                &target,
                &[("authorization", auth)],
                Some(&body),
                BRIDGE_TIMEOUT,
                BRIDGE_MAX_BODY,
            )
            .await
        {
            Ok(a) if (200..300).contains(&a.status) => {
                Ok(json!({"duration_ms": started.elapsed().as_millis() as u64}))
            }
            Ok(a) => Err(
                ApiError::bad_status("the application service answered with an error").with_extra(
                    json!({
                        "status": a.status,
                        "body": String::from_utf8_lossy(&a.body[..a.body.len().min(4096)]),
                    }),
                ),
            ),
            Err(Failure::Timeout) => Err(ApiError::connection_timeout(
                "the application service did not answer in time",
            )),
            Err(e) => Err(ApiError::connection_failed(format!(
                "cannot reach the application service: {e}"
            ))),
        }
    }))
}

pub fn update_appservice_room_directory_visibility(
    ctx: &Ctx,
    req: cs::appservice_room_directory::update_appservice_room_directory_visibility::Request,
) -> ApiResult<Value> {
    let asv = calling_service(ctx)?;
    let instance = format!("{}|{}", asv.id, req.network_id);
    let room_id = req.room_id.to_string();
    let public = matches!(
        req.body.visibility,
        cs::appservice_room_directory::update_appservice_room_directory_visibility::Visibility::Public
    );
    ctx.server.write(|state, batch| {
        state.room(&room_id)?;
        state.put_appservice_room(batch, &instance, &room_id, public);
        Ok(json!({}))
    })
}
