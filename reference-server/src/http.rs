//! HTTP: one connection served by hyper, and [`handle`], which turns a request into a response
//! with no socket: route lookup, authentication (before the body is looked at), body limits,
//! decoding into the generated request type, the handler, and errors as Matrix error JSON.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use mxconform_generated::{Auth, BodyKind, ParamKind, ParamLocation, Route};
use serde_json::{json, Map, Value};

use crate::error::{ApiError, ApiResult};
use crate::handlers::{self, Authed, Ctx, Reply};
use crate::Server;

pub async fn serve_connection<S>(server: Arc<Server>, sock: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // A request's log line is written once its answer has been handed to the socket, so that
    // the answer does not wait for the log.
    let pending = Arc::new(std::sync::Mutex::new(Vec::new()));
    let io = hyper_util::rt::TokioIo::new(LoggedIo {
        inner: sock,
        pending: pending.clone(),
    });
    let header_timeout = server.config.limits.header_timeout;
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (server, pending) = (server.clone(), pending.clone());
        async move {
            let (response, log) = handle_incoming(&server, req).await;
            if let Some(log) = log {
                lock_pending(&pending).push(log);
            }
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    // A client that does not finish its headers in time (or leaves a kept-alive connection
    // idle that long) is disconnected.
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true)
        .serve_connection(io, service)
        .await;
}

/// The log lines of answers not yet written to a connection.
type Pending = Arc<std::sync::Mutex<Vec<RequestLog>>>;

fn lock_pending(p: &Pending) -> std::sync::MutexGuard<'_, Vec<RequestLog>> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// A connection's socket that writes the request log lines of the answers it sends, after
/// sending them (and, when it closes, any left).
struct LoggedIo<S> {
    inner: S,
    pending: Pending,
}

impl<S> LoggedIo<S> {
    fn emit_pending(&self) {
        let lines = std::mem::take(&mut *lock_pending(&self.pending));
        for line in lines {
            line.emit();
        }
    }
}

impl<S> Drop for LoggedIo<S> {
    fn drop(&mut self) {
        self.emit_pending();
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for LoggedIo<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for LoggedIo<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if r.is_ready() {
            self.emit_pending();
        }
        r
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if r.is_ready() {
            self.emit_pending();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn handle_incoming(
    server: &Server,
    req: Request<Incoming>,
) -> (Response<Full<Bytes>>, Option<RequestLog>) {
    let (parts, body) = req.into_parts();
    // Reject a body announced larger than allowed before reading it.
    let announced = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if announced.is_some_and(|n| n > server.config.max_body) {
        return (
            to_http(error_response(&ApiError::too_large(format!(
                "request body larger than {} bytes",
                server.config.max_body
            )))),
            None,
        );
    }
    let read = tokio::time::timeout(
        server.config.limits.body_timeout,
        Limited::new(body, server.config.max_body).collect(),
    )
    .await;
    let Ok(read) = read else {
        return (
            to_http(error_response(&ApiError {
                status: 408,
                errcode: "M_UNKNOWN",
                message: format!(
                    "the request body did not arrive within {} s",
                    server.config.limits.body_timeout.as_secs()
                ),
                extra: None,
            })),
            None,
        );
    };
    let bytes = match read {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            let err = if e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                ApiError::too_large(format!(
                    "request body larger than {} bytes",
                    server.config.max_body
                ))
            } else {
                ApiError::unknown_400(format!("could not read the request body: {e}"))
            };
            return (to_http(error_response(&err)), None);
        }
    };
    let (response, log) = answer(server, Request::from_parts(parts, bytes)).await;
    (to_http(response), log)
}

fn to_http(r: Response<Bytes>) -> Response<Full<Bytes>> {
    let (parts, body) = r.into_parts();
    Response::from_parts(parts, Full::new(body))
}

fn with_cors(mut r: Response<Bytes>) -> Response<Bytes> {
    let h = r.headers_mut();
    h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    h.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("GET, POST, PUT, DELETE, OPTIONS"),
    );
    h.insert(
        "access-control-allow-headers",
        HeaderValue::from_static("X-Requested-With, Content-Type, Authorization"),
    );
    r
}

pub fn json_response(status: u16, v: &Value) -> Response<Bytes> {
    let mut r = Response::new(Bytes::from(serde_json::to_vec(v).unwrap_or_default()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    with_cors(r)
}

pub fn error_response(e: &ApiError) -> Response<Bytes> {
    json_response(e.status, &e.body())
}

/// The access token: `Authorization: Bearer`, or the `access_token` query parameter.
fn token_of(req: &Request<Bytes>, query: &[(String, String)]) -> Result<Option<String>, ApiError> {
    if let Some(h) = req.headers().get(http::header::AUTHORIZATION) {
        let text = h
            .to_str()
            .map_err(|_| ApiError::unknown_token("unreadable Authorization header"))?;
        return match text.strip_prefix("Bearer ") {
            Some(t) if !t.trim().is_empty() => Ok(Some(t.trim().to_string())),
            _ => Err(ApiError::missing_token(
                "the Authorization header is not `Bearer <token>`",
            )),
        };
    }
    Ok(query
        .iter()
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v.clone()))
}

pub(crate) fn parse_query(q: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    let Some(q) = q else { return Ok(Vec::new()) };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let dec = |s: &str| {
                crate::router::percent_decode(&s.replace('+', " ")).ok_or_else(|| {
                    ApiError::invalid_param("a query parameter is not valid percent-encoded UTF-8")
                })
            };
            Ok((dec(k)?, dec(v)?))
        })
        .collect()
}

/// What the request log says of a request besides its method, status and duration.
#[derive(Default)]
struct Seen {
    operation: Option<&'static str>,
    user: Option<String>,
}

/// Answers one request (no socket involved), and logs it: a line per request at `info`
/// (target `mxconform_server::request`), a 5xx at `warn`.
pub async fn handle(server: &Server, req: Request<Bytes>) -> Response<Bytes> {
    let (response, log) = answer(server, req).await;
    if let Some(log) = log {
        log.emit();
    }
    response
}

/// What the request log says of one answered request.
struct RequestLog {
    method: Method,
    path: String,
    operation: &'static str,
    user: Option<String>,
    status: u16,
    ms: f64,
}

impl RequestLog {
    fn emit(&self) {
        let (method, operation, status, ms) = (&self.method, self.operation, self.status, self.ms);
        let user = self.user.as_deref().unwrap_or("-");
        if status >= 500 {
            tracing::warn!(target: "mxconform_server::request", method = %method, operation, user, status, ms, "{}", self.path);
        } else {
            tracing::info!(target: "mxconform_server::request", method = %method, operation, user, status, ms, "{}", self.path);
        }
    }
}

/// Answers one request, with what its log line says (none for a CORS preflight).
async fn answer(server: &Server, req: Request<Bytes>) -> (Response<Bytes>, Option<RequestLog>) {
    if req.method() == Method::OPTIONS {
        return (json_response(200, &json!({})), None);
    }
    let started = Instant::now();
    let mut seen = Seen::default();
    let response = match handle_inner(server, &req, &mut seen).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
    let operation = seen.operation.unwrap_or_else(|| {
        if req.uri().path().starts_with("/_matrix/client/") {
            "-"
        } else {
            "other"
        }
    });
    let log = RequestLog {
        method: req.method().clone(),
        path: req.uri().path().to_string(),
        operation,
        user: seen.user,
        status: response.status().as_u16(),
        ms: started.elapsed().as_secs_f64() * 1000.0,
    };
    (response, Some(log))
}

async fn handle_inner(
    server: &Server,
    req: &Request<Bytes>,
    seen: &mut Seen,
) -> ApiResult<Response<Bytes>> {
    let path = req.uri().path();
    if let Some(answer) = outside_the_table(server, req).await {
        return answer;
    }
    if path.starts_with("/_matrix/federation/")
        || path.starts_with("/_matrix/key/")
        || path.starts_with("/_matrix/policy/")
        || path == "/.well-known/matrix/server"
    {
        seen.operation = Some("federation");
        return crate::federation::inbound::handle(server, req).await;
    }
    let matched = server.router.find(req.method().as_str(), path)?;
    let query = parse_query(req.uri().query())?;

    // Authentication before anything else is looked at.
    let route0 = matched.routes[0];
    // The log names the operation even when authentication refuses the request.
    seen.operation = Some(route0.operation_id);
    let token = token_of(req, &query)?;
    let user = match (&token, route0.auth) {
        (None, Auth::Required) => {
            return Err(ApiError::missing_token(
                "this request needs an access token",
            ))
        }
        (None, _) => None,
        // An application service's token still says who calls (it registers its users
        // through `register`, which otherwise takes no token); other tokens are ignored.
        (Some(t), Auth::None) => server
            .config
            .appservices
            .iter()
            .any(|a| a.as_token == *t)
            .then(|| authenticate(server, t, &query))
            .transpose()?,
        (Some(t), _) => Some(authenticate(server, t, &query)?),
    };

    // Two operations on one route: the body says which (the spec's trailing-space keys).
    seen.user = user.as_ref().map(|u| u.user_id.clone());
    let route = if matched.routes.len() > 1 {
        pick_route(&matched.routes, req.body(), &query)
    } else {
        route0
    };
    seen.operation = Some(route.operation_id);

    if let Some(u) = &user {
        if u.locked && !handlers::admin::OPEN_WHEN_LOCKED.contains(&route.operation_id) {
            return Err(ApiError::user_locked("this account is locked"));
        }
        if u.suspended && handlers::admin::BARRED_WHEN_SUSPENDED.contains(&route.operation_id) {
            return Err(ApiError::user_suspended("this account is suspended"));
        }
    }
    let input = decode(server, route, &matched.params, &query, req)?;
    let content_type = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let Some(handler) = handlers::dispatch(route.operation_id) else {
        return Err(ApiError::unrecognized(format!(
            "{} is not implemented by this server",
            route.operation_id
        )));
    };
    // The no-op mutant (tests only): the request is checked as the handler would decode it,
    // then answered with a made-up success, and nothing is done.
    if server.config.noop_mutant.as_deref() == Some(route.operation_id) {
        handlers::check_request(route.operation_id, &input)?;
        let (status, v) =
            crate::mutant::answer(route, &server.config.server_name, input.get("body"));
        return Ok(json_response(status, &v));
    }
    let ctx = Ctx {
        server,
        user,
        route,
        raw_body: req.body().clone(),
        content_type,
        query,
        path_params: matched.params.clone(),
        last_chance: false,
        started: Instant::now(),
    };
    // Long-polls: the handler says "nothing yet, wait until"; look again at every change.
    let mut changes = server.subscribe();
    let mut ctx = ctx;
    loop {
        changes.borrow_and_update();
        let mut reply = handler(&ctx, input.clone())?;
        if let Reply::Outbound(work) = reply {
            reply = work.await?;
        }
        match reply {
            Reply::Redirect { location } => return Ok(redirect_response(&location)),
            Reply::Outbound(_) => {
                return Err(ApiError::internal("an outbound answer gave another"));
            }
            Reply::Json(status, v) => {
                // A write that woke long-polls lets them answer first: they wait for what it
                // wrote, its own answer only confirms it (a thread that answers both answers
                // the receivers without first sending, and logging, the sender's answer).
                if changes.has_changed().unwrap_or(false) {
                    tokio::task::yield_now().await;
                }
                return Ok(json_response(status, &v));
            }
            Reply::Bytes {
                status,
                content_type,
                bytes,
                disposition,
            } => {
                let mut r = Response::new(Bytes::from(bytes));
                *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
                let ct = HeaderValue::from_str(&content_type)
                    .unwrap_or(HeaderValue::from_static("application/octet-stream"));
                r.headers_mut().insert(http::header::CONTENT_TYPE, ct);
                if let Some(d) = disposition.and_then(|d| HeaderValue::from_str(&d).ok()) {
                    r.headers_mut().insert(http::header::CONTENT_DISPOSITION, d);
                }
                return Ok(with_cors(r));
            }
            Reply::Wait { until } => {
                let now = Instant::now();
                if ctx.last_chance || until <= now {
                    ctx.last_chance = true;
                    continue;
                }
                let wait = (until - now).min(Duration::from_secs(300));
                if tokio::time::timeout(wait, changes.changed()).await.is_err() {
                    ctx.last_chance = true;
                }
            }
        }
    }
}

/// A query parameter's value, empty when absent.
fn query_value<'a>(query: &'a [(String, String)], name: &str) -> &'a str {
    query
        .iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

/// The server's own pages, which are not client-server operations: the links and
/// `submit_url`s of third-party validation, and where the CAS server sends browsers back.
async fn outside_the_table(
    server: &Server,
    req: &Request<Bytes>,
) -> Option<ApiResult<Response<Bytes>>> {
    let path = req.uri().path();
    let query = || parse_query(req.uri().query());
    if path == handlers::threepid::SUBMIT_PATH {
        return Some(submit_threepid_token(server, req));
    }
    if path == handlers::threepid::MSISDN_SUBMIT_PATH {
        return Some(
            async {
                if req.method() != Method::POST {
                    return Err(ApiError::method_not_allowed("POST the code as JSON"));
                }
                let v: Value = serde_json::from_slice(req.body())
                    .map_err(|_| ApiError::not_json("the body is not JSON"))?;
                let ok = handlers::threepid::submit_msisdn_token(server, &v).await?;
                Ok(json_response(200, &json!({"success": ok})))
            }
            .await,
        );
    }
    if path == handlers::sso::TICKET_PATH {
        return Some(
            async {
                if req.method() != Method::GET {
                    return Err(ApiError::method_not_allowed("GET"));
                }
                let q = query()?;
                let location = handlers::sso::complete_cas_login(
                    server,
                    query_value(&q, "redirectUrl"),
                    query_value(&q, "ticket"),
                )
                .await?;
                Ok(redirect_response(&location))
            }
            .await,
        );
    }
    None
}

fn redirect_response(location: &str) -> Response<Bytes> {
    let mut r = Response::new(Bytes::new());
    *r.status_mut() = StatusCode::FOUND;
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(http::header::LOCATION, v);
    }
    with_cors(r)
}

/// The validation link of a mail (GET, answered with a page) or its `submit_url` (POST of
/// `{sid, client_secret, token}`, answered with `{"success": ...}`).
fn submit_threepid_token(server: &Server, req: &Request<Bytes>) -> ApiResult<Response<Bytes>> {
    let page = |status: u16, text: &str| {
        let mut r = Response::new(Bytes::from(format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>E-mail validation</title></head><body><p>{text}</p></body></html>\n"
        )));
        *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        r
    };
    // The link itself (GET), or a confirmation form posting the link's own query.
    let by_link = req.method() == Method::GET
        || (req.method() == Method::POST && req.body().is_empty() && req.uri().query().is_some());
    if by_link {
        let q = parse_query(req.uri().query())?;
        return Ok(
            match handlers::threepid::submit_token(
                server,
                query_value(&q, "sid"),
                query_value(&q, "client_secret"),
                query_value(&q, "token"),
            ) {
                Ok(()) => page(
                    200,
                    "Your e-mail address is confirmed. You can go back to your client.",
                ),
                Err(e) => page(400, &format!("This link does not work: {}.", e.message)),
            },
        );
    }
    match *req.method() {
        Method::POST => {
            let v: Value = serde_json::from_slice(req.body())
                .map_err(|_| ApiError::not_json("the body is not JSON"))?;
            let get = |k: &str| {
                v.get(k)
                    .and_then(Value::as_str)
                    .ok_or_else(|| ApiError::missing_param(format!("`{k}` is required")))
            };
            let ok = handlers::threepid::submit_token(
                server,
                get("sid")?,
                get("client_secret")?,
                get("token")?,
            )
            .is_ok();
            Ok(json_response(200, &json!({"success": ok})))
        }
        _ => Err(ApiError::method_not_allowed("GET or POST")),
    }
}

fn authenticate(server: &Server, token: &str, query: &[(String, String)]) -> ApiResult<Authed> {
    if let Some(asv) = server
        .config
        .appservices
        .iter()
        .find(|a| a.as_token == token)
    {
        // An application service acts as its sender, or as a user of its namespace it names.
        let user_id = query
            .iter()
            .find(|(k, _)| k == "user_id")
            .map_or_else(|| asv.sender.clone(), |(_, v)| v.clone());
        if !asv.may_act_as(&user_id) {
            return Err(ApiError::forbidden(
                "the application service's namespaces do not include that user",
            ));
        }
        let account = server.read(|s| s.users.get(&user_id).map(|u| (u.locked, u.suspended)));
        if user_id != asv.sender && account.is_none() {
            return Err(ApiError::forbidden("that user is not registered"));
        }
        let (locked, suspended) = account.unwrap_or_default();
        return Ok(Authed {
            user_id,
            device_id: String::new(),
            token: token.to_string(),
            appservice: Some(asv.id.clone()),
            locked,
            suspended,
        });
    }
    let (authed, refresh_pending) = server.read(|s| {
        let (user, device) = s
            .tokens
            .get(token)
            .ok_or_else(|| ApiError::unknown_token("unknown or expired access token"))?;
        let account = s.users.get(user);
        if account.is_some_and(|u| u.deactivated) {
            return Err(ApiError::unknown_token("this account is deactivated"));
        }
        let pending = s
            .devices
            .get(user)
            .and_then(|d| d.get(device))
            .is_some_and(|d| d.prev_refresh.is_some());
        Ok((
            Authed {
                user_id: user.clone(),
                device_id: device.clone(),
                token: token.to_string(),
                appservice: None,
                locked: account.is_some_and(|u| u.locked),
                suspended: account.is_some_and(|u| u.suspended),
            },
            pending,
        ))
    })?;
    // The first use of a refreshed access token retires the refresh token it replaced.
    if refresh_pending {
        server.write(|s, batch| {
            s.settle_refresh(batch, &authed.user_id, &authed.device_id);
            Ok(())
        })?;
    }
    Ok(authed)
}

fn pick_route(
    routes: &[&'static Route],
    body: &Bytes,
    query: &[(String, String)],
) -> &'static Route {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let third_party =
        v.get("medium").is_some() || v.get("id_server").is_some() || v.get("address").is_some();
    let peek = query.iter().any(|(k, _)| k == "room_id");
    let by_id = |id: &str| routes.iter().copied().find(|r| r.operation_id == id);
    match routes[0].operation_id {
        "inviteUser" | "inviteBy3PID" if third_party => by_id("inviteBy3PID"),
        "inviteUser" | "inviteBy3PID" => by_id("inviteUser"),
        "getEvents" | "peekEvents" if peek => by_id("peekEvents"),
        "getEvents" | "peekEvents" => by_id("getEvents"),
        _ => None,
    }
    .unwrap_or(routes[0])
}

/// Path parameters whose names say which identifier they hold.
fn check_path_param(name: &str, value: &str) -> ApiResult<()> {
    use mxconform_generated::ids;
    let bad = |what: &str, e: ids::IdError| {
        ApiError::invalid_param(format!("`{name}` is not a valid {what}: {e}"))
    };
    match name {
        "roomId" => ids::RoomId::parse(value)
            .map(drop)
            .map_err(|e| bad("room id", e)),
        "userId" => ids::UserId::parse(value)
            .map(drop)
            .map_err(|e| bad("user id", e)),
        "eventId" => ids::EventId::parse(value)
            .map(drop)
            .map_err(|e| bad("event id", e)),
        "roomAlias" => ids::RoomAliasId::parse(value)
            .map(drop)
            .map_err(|e| bad("room alias", e)),
        _ => Ok(()),
    }
}

/// Builds the input object the generated request type reads: path and query parameters by
/// their wire names (typed as the route says) and the JSON body under `body`.
fn decode(
    server: &Server,
    route: &Route,
    path: &std::collections::BTreeMap<String, String>,
    query: &[(String, String)],
    req: &Request<Bytes>,
) -> ApiResult<Value> {
    let mut input = Map::new();
    for (k, v) in path {
        check_path_param(k, v)?;
        input.insert(k.clone(), Value::String(v.clone()));
    }
    for p in route
        .params
        .iter()
        .filter(|p| p.location == ParamLocation::Query)
    {
        let values: Vec<&str> = query
            .iter()
            .filter(|(k, _)| k == p.name)
            .map(|(_, v)| v.as_str())
            .collect();
        if values.is_empty() {
            if p.required {
                return Err(ApiError::missing_param(format!(
                    "missing query parameter `{}`",
                    p.name
                )));
            }
            continue;
        }
        let bad = |what: &str| {
            ApiError::invalid_param(format!("query parameter `{}` must be {what}", p.name))
        };
        let v = match p.kind {
            ParamKind::List => Value::Array(
                values
                    .iter()
                    .map(|v| Value::String(v.to_string()))
                    .collect(),
            ),
            ParamKind::Integer => {
                Value::from(values[0].parse::<i64>().map_err(|_| bad("an integer"))?)
            }
            ParamKind::Number => values[0]
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number)
                .ok_or_else(|| bad("a number"))?,
            ParamKind::Boolean => Value::Bool(match values[0] {
                "true" => true,
                "false" => false,
                _ => return Err(bad("`true` or `false`")),
            }),
            ParamKind::String => Value::String(values[0].to_string()),
        };
        input.insert(p.name.to_string(), v);
    }
    if route.request_body == BodyKind::Json {
        let body = req.body();
        if body.len() > server.config.max_json_body {
            return Err(ApiError::too_large(format!(
                "JSON body larger than {} bytes",
                server.config.max_json_body
            )));
        }
        let v: Value = if body.iter().all(u8::is_ascii_whitespace) {
            // An empty body reads as `{}`: clients send none for bodies with no required keys.
            json!({})
        } else {
            parse_json(body)?
        };
        input.insert("body".into(), v);
    }
    Ok(Value::Object(input))
}

/// Parses a JSON body with a depth bound, so that hostile nesting cannot exhaust the stack.
pub fn parse_json(body: &[u8]) -> ApiResult<Value> {
    let text =
        std::str::from_utf8(body).map_err(|_| ApiError::not_json("the body is not valid UTF-8"))?;
    let mut depth = 0usize;
    let mut max = 0usize;
    let mut in_str = false;
    let mut esc = false;
    for c in text.bytes() {
        if in_str {
            match (esc, c) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if max > 100 {
        return Err(ApiError::not_json("the body nests deeper than 100 levels"));
    }
    serde_json::from_str(text).map_err(|e| ApiError::not_json(format!("the body is not JSON: {e}")))
}
