//! The web peer: pages to preview, a CAS server, an SMS gateway and a push gateway.

use super::*;

/// The web server: `/page/<name>` is an HTML page with Open Graph tags (for URL previews);
/// `/cas/...` is a CAS server for single sign-on that logs in whoever it is told to:
/// `/cas/login?service=S&user=U` sends the browser back to `S` with a one-use ticket, which
/// `/cas/proxyValidate?ticket=T&service=S` confirms for user `U`. `/_matrix/identity/api/v1/`
/// is an SMS gateway for phone-number validation as homeservers delegate it
/// (`validate/msisdn/requestToken`, `validate/msisdn/submitToken`, `3pid/getValidated3pid`); the
/// text messages go to the mailbox, addressed to the number (`447700900123`).
#[derive(Default)]
pub(super) struct Web {
    /// Ticket -> (user, service).
    tickets: Mutex<BTreeMap<String, (String, String)>>,
    issued: std::sync::atomic::AtomicU64,
    mailbox: Arc<Mailbox>,
    /// Phone-number validation sessions by sid.
    sms: Mutex<BTreeMap<String, SmsSession>>,
    /// Notifications the push gateway was sent.
    pushes: Arc<PushLog>,
    /// Push keys starting with `flaky` that were already failed once.
    flaky_failed: Mutex<std::collections::BTreeSet<String>>,
}

/// Where the web peer's push gateway takes notifications (the push-gateway API's `notify`).
pub const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";

#[derive(Clone, Debug)]
struct SmsSession {
    client_secret: String,
    msisdn: String,
    token: String,
    send_attempt: i64,
    validated_at: Option<u64>,
}

/// The calling code of the countries the gateway knows (ISO 3166 alpha-2).
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

/// `country` + national `number` as digits in international form, without `+`.
pub fn msisdn(country: &str, number: &str) -> Option<String> {
    let code = calling_code(country)?;
    let digits: String = number.chars().filter(char::is_ascii_digit).collect();
    let national = digits.trim_start_matches('0');
    (national.len() >= 4 && national.len() <= 14).then(|| format!("{code}{national}"))
}

impl Web {
    /// A web peer whose text messages go to `mailbox` and notifications to `pushes`.
    pub(super) fn new(mailbox: Arc<Mailbox>, pushes: Arc<PushLog>) -> Web {
        Web {
            mailbox,
            pushes,
            ..Web::default()
        }
    }
}

impl Web {
    pub(super) fn answer(&self, req: Request<Bytes>) -> Answer {
        let path = req.uri().path();
        if let Some(rest) = path.strip_prefix("/_matrix/identity/api/v1/") {
            return self.sms_gateway(rest, &req);
        }
        if path == NOTIFY_PATH {
            return self.push_gateway(&req);
        }
        let query = query_pairs(req.uri().query());
        let field = |name: &str| {
            query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let page = |status: u16, ctype: &'static str, body: String| {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(ctype),
            );
            r
        };
        let html = |status: u16, body: String| page(status, "text/html; charset=utf-8", body);
        if let Some(name) = path.strip_prefix("/page/").filter(|n| valid_name(n)) {
            return html(
                200,
                format!(
                    "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">\n<title>Page {name}</title>\n\
                     <meta property=\"og:title\" content=\"Page {name}\">\n\
                     <meta property=\"og:description\" content=\"A page served to test URL previews ({name}).\">\n\
                     </head><body><p>Page {name}</p></body></html>\n"
                ),
            );
        }
        match (path, field("service"), field("user")) {
            ("/cas/login", Some(service), Some(user)) if valid_name(&user) => {
                let n = self.issued.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let ticket = format!("ST-{user}-{n}");
                if let Ok(mut t) = self.tickets.lock() {
                    if t.len() >= 1000 {
                        t.clear();
                    }
                    t.insert(ticket.clone(), (user, service.clone()));
                }
                let sep = if service.contains('?') { '&' } else { '?' };
                let mut r = html(302, String::new());
                if let Ok(v) = hyper::header::HeaderValue::from_str(&format!("{service}{sep}ticket={ticket}")) {
                    r.headers_mut().insert(hyper::header::LOCATION, v);
                }
                r
            }
            ("/cas/login", _, _) => html(200, "<!DOCTYPE html>\n<html><head><title>Log in</title></head><body><form><input name=\"user\"></form></body></html>\n".into()),
            ("/cas/proxyValidate" | "/cas/serviceValidate", Some(service), _) => {
                let found = field("ticket")
                    .and_then(|t| self.tickets.lock().ok()?.remove(&t))
                    .filter(|(_, s)| *s == service);
                let body = match found {
                    Some((user, _)) => format!("<cas:serviceResponse xmlns:cas=\"http://www.yale.edu/tp/cas\">\n<cas:authenticationSuccess>\n<cas:user>{user}</cas:user>\n</cas:authenticationSuccess>\n</cas:serviceResponse>\n"),
                    None => "<cas:serviceResponse xmlns:cas=\"http://www.yale.edu/tp/cas\">\n<cas:authenticationFailure code=\"INVALID_TICKET\">unknown ticket</cas:authenticationFailure>\n</cas:serviceResponse>\n".into(),
                };
                page(200, "text/xml; charset=utf-8", body)
            }
            _ => html(404, "<!DOCTYPE html>\n<html><body>not found</body></html>\n".into()),
        }
    }
}

impl Web {
    /// The push gateway: keeps each notification with what the schema check found, and
    /// rejects the push keys that start with `rejected` (the homeserver must then drop those
    /// pushers). The first notification for a push key starting with `flaky` is answered 500
    /// and not kept (the homeserver must retry it).
    fn push_gateway(&self, req: &Request<Bytes>) -> Answer {
        if req.method() != hyper::Method::POST {
            return json_answer(
                405,
                json!({"errcode": "M_UNRECOGNIZED", "error": "POST only"}),
            );
        }
        let body: Value = match serde_json::from_slice(req.body()) {
            Ok(v) => v,
            Err(e) => {
                return json_answer(
                    400,
                    json!({"errcode": "M_NOT_JSON", "error": format!("not JSON: {e}")}),
                )
            }
        };
        let violations = match crate::validate::validate_in(
            mxconform_generated::Group::PushGateway,
            "notify",
            &crate::validate::Part::Request,
            &body,
        ) {
            Ok(Some(v)) => v.iter().map(ToString::to_string).collect(),
            Ok(None) => vec!["the spec gives no schema for notify".into()],
            Err(e) => vec![e],
        };
        let pushed = Pushed { body, violations };
        let first_of_flaky = pushed
            .pushkeys()
            .into_iter()
            .filter(|k| k.starts_with("flaky"))
            .any(|k| {
                self.flaky_failed
                    .lock()
                    .map(|mut seen| {
                        if seen.len() >= 10_000 {
                            seen.clear();
                        }
                        seen.insert(k.to_string())
                    })
                    .unwrap_or(false)
            });
        if first_of_flaky {
            return json_answer(
                500,
                json!({"errcode": "M_UNKNOWN", "error": "a passing failure (the first for this push key)"}),
            );
        }
        let rejected: Vec<String> = pushed
            .pushkeys()
            .into_iter()
            .filter(|k| k.starts_with("rejected"))
            .map(str::to_string)
            .collect();
        self.pushes.put(pushed);
        json_answer(200, json!({"rejected": rejected}))
    }

    fn sms_gateway(&self, rest: &str, req: &Request<Bytes>) -> Answer {
        let body: Value = serde_json::from_slice(req.body()).unwrap_or(Value::Null);
        let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
        let bad = |errcode: &str, error: &str| {
            json_answer(400, json!({"errcode": errcode, "error": error}))
        };
        let Ok(mut sessions) = self.sms.lock() else {
            return json_answer(
                500,
                json!({"errcode": "M_UNKNOWN", "error": "lock poisoned"}),
            );
        };
        match (req.method().as_str(), rest) {
            ("POST", "validate/msisdn/requestToken") => {
                let (Some(secret), Some(country), Some(number)) =
                    (text("client_secret"), text("country"), text("phone_number"))
                else {
                    return bad(
                        "M_MISSING_PARAMS",
                        "client_secret, country and phone_number are required",
                    );
                };
                let Some(msisdn) = msisdn(&country, &number) else {
                    return bad("M_INVALID_PARAM", "not a phone number of a known country");
                };
                let attempt = body
                    .get("send_attempt")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                let existing = sessions
                    .iter()
                    .find(|(_, s)| s.client_secret == secret && s.msisdn == msisdn)
                    .map(|(sid, s)| (sid.clone(), s.send_attempt));
                if let Some((sid, last)) = &existing {
                    if attempt <= *last {
                        return json_answer(
                            200,
                            json!({"sid": sid, "msisdn": msisdn, "intl_fmt": format!("+{msisdn}")}),
                        );
                    }
                }
                let n = self
                    .issued
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let sid = existing.map_or_else(|| format!("sms{n}"), |(sid, _)| sid);
                let token = format!("{:06}", (n * 7919 + 104_729) % 1_000_000);
                if sessions.len() >= 1000 {
                    sessions.clear();
                }
                sessions.insert(
                    sid.clone(),
                    SmsSession {
                        client_secret: secret,
                        msisdn: msisdn.clone(),
                        token: token.clone(),
                        send_attempt: attempt,
                        validated_at: None,
                    },
                );
                self.mailbox.put(Mail {
                    from: "sms".into(),
                    to: vec![msisdn.clone()],
                    text: format!("Your validation code is {token}\n"),
                    headers: None,
                });
                json_answer(
                    200,
                    json!({"sid": sid, "msisdn": msisdn, "intl_fmt": format!("+{msisdn}")}),
                )
            }
            ("POST", "validate/msisdn/submitToken") => {
                let found = text("sid")
                    .and_then(|sid| sessions.get_mut(&sid))
                    .filter(|s| {
                        Some(&s.client_secret) == text("client_secret").as_ref()
                            && Some(&s.token) == text("token").as_ref()
                    });
                let success = match found {
                    Some(s) => {
                        s.validated_at.get_or_insert_with(|| {
                            std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .map(|d| d.as_millis() as u64)
                                .unwrap_or(0)
                        });
                        true
                    }
                    None => false,
                };
                json_answer(200, json!({"success": success}))
            }
            ("GET", "3pid/getValidated3pid") => {
                let q = query_pairs(req.uri().query());
                let field = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
                match field("sid").and_then(|sid| sessions.get(&sid)) {
                    Some(s) if Some(&s.client_secret) == field("client_secret").as_ref() => match s
                        .validated_at
                    {
                        Some(at) => json_answer(
                            200,
                            json!({"medium": "msisdn", "address": s.msisdn, "validated_at": at}),
                        ),
                        None => bad("M_SESSION_NOT_VALIDATED", "the code has not been submitted"),
                    },
                    _ => json_answer(
                        404,
                        json!({"errcode": "M_NO_VALID_SESSION", "error": "no such session"}),
                    ),
                }
            }
            _ => json_answer(
                404,
                json!({"errcode": "M_UNRECOGNIZED", "error": "not here"}),
            ),
        }
    }
}
