//! The application-service peer: a bridge for a made-up protocol that answers the homeserver's
//! pings, transactions and third-party lookups, each request checked against the
//! application-service API's schema.

use super::*;

/// The bridge: answers the homeserver's pings, transactions and third-party lookups for its
/// protocol. Users are `@<protocol>_<nick>:<server>`, portal rooms `#<protocol>_<channel>:<server>`.
pub(super) struct AppService {
    pub(super) reg: Registration,
    pub(super) server_name: String,
    pub(super) log: Arc<EventLog>,
    pub(super) requests: Arc<AsRequests>,
}

/// The application-service operation a request to the peer is (method and path segments after
/// `/_matrix/app/v1/`).
fn as_operation(method: &str, segs: &[&str]) -> Option<&'static str> {
    Some(match (method, segs) {
        ("POST", ["ping"]) => "ping",
        ("PUT", ["transactions", _]) => "sendTransaction",
        ("GET", ["users", _]) => "queryUserById",
        ("GET", ["rooms", _]) => "queryRoomByAlias",
        ("GET", ["thirdparty", "protocol", _]) => "getProtocolMetadata",
        ("GET", ["thirdparty", "location", _]) => "queryLocationByProtocol",
        ("GET", ["thirdparty", "user", _]) => "queryUserByProtocol",
        ("GET", ["thirdparty", "location"]) => "queryLocationByAlias",
        ("GET", ["thirdparty", "user"]) => "queryUserByID",
        _ => return None,
    })
}

impl AppService {
    pub(super) async fn answer(&self, req: Request<Bytes>) -> Answer {
        let query = query_pairs(req.uri().query());
        let token = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string)
            .or_else(|| {
                query
                    .iter()
                    .find(|(k, _)| k == "access_token")
                    .map(|(_, v)| v.clone())
            });
        match token {
            None => {
                return json_answer(
                    401,
                    json!({"errcode": "M_UNAUTHORIZED", "error": "no hs_token"}),
                )
            }
            Some(t) if t != self.reg.hs_token => {
                return json_answer(
                    403,
                    json!({"errcode": "M_FORBIDDEN", "error": "wrong hs_token"}),
                )
            }
            Some(_) => {}
        }
        let path = req.uri().path().to_string();
        let Some(rest) = path.strip_prefix("/_matrix/app/v1/") else {
            return json_answer(404, json!({"errcode": "M_UNRECOGNIZED"}));
        };
        let segs: Vec<String> = rest.split('/').map(percent_decode).collect();
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        let field = |name: &str| {
            query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let method = req.method().as_str();
        // Every request is checked against the application-service API's schema; one that
        // breaks it is refused (and logged for the scenario that waits on it).
        if let Some(op) = as_operation(method, &segs) {
            let violations = if req.body().is_empty() {
                Vec::new()
            } else {
                match serde_json::from_slice::<Value>(req.body()) {
                    Err(e) => vec![format!("the body is not JSON: {e}")],
                    Ok(body) => match crate::validate::validate_in(
                        mxconform_generated::Group::ApplicationService,
                        op,
                        &crate::validate::Part::Request,
                        &body,
                    ) {
                        Ok(found) => found
                            .unwrap_or_default()
                            .iter()
                            .map(ToString::to_string)
                            .collect(),
                        Err(e) => vec![e],
                    },
                }
            };
            let refused = !violations.is_empty();
            let text = violations.join("; ");
            self.requests.put(op, violations);
            if refused {
                return json_answer(
                    400,
                    json!({"errcode": "M_BAD_JSON", "error": format!("the request breaks the application-service schema: {text}")}),
                );
            }
        }
        let not_found = || {
            json_answer(
                404,
                json!({"errcode": "M_NOT_FOUND", "error": "no such mapping"}),
            )
        };
        match (method, segs.as_slice()) {
            // A ping whose transaction id starts with `fail` is answered with an error, so that
            // scenarios can see how the homeserver reports a service in trouble.
            ("POST", ["ping"]) => {
                let body: Value = serde_json::from_slice(req.body()).unwrap_or(Value::Null);
                let txn = body
                    .get("transaction_id")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if txn.starts_with("fail") {
                    json_answer(
                        500,
                        json!({"errcode": "M_UNKNOWN", "error": "the bridge is unwell"}),
                    )
                } else {
                    json_answer(200, json!({}))
                }
            }
            ("PUT", ["transactions", txn]) => {
                let body: Value = serde_json::from_slice(req.body()).unwrap_or(Value::Null);
                let Some(events) = body.get("events").and_then(Value::as_array) else {
                    return json_answer(
                        400,
                        json!({"errcode": "M_BAD_JSON", "error": "no events list"}),
                    );
                };
                self.log.put(txn, events.clone());
                json_answer(200, json!({}))
            }
            ("GET", ["users", _]) | ("GET", ["rooms", _]) => not_found(),
            ("GET", ["thirdparty", "protocol", p]) if self.knows(p) => {
                json_answer(200, self.protocol_metadata())
            }
            ("GET", ["thirdparty", "location", p]) if self.knows(p) => {
                match field("channel").filter(|c| valid_name(c)) {
                    Some(c) => json_answer(200, json!([self.location(p, &c)])),
                    None => not_found(),
                }
            }
            ("GET", ["thirdparty", "user", p]) if self.knows(p) => {
                match field("nick").filter(|n| valid_name(n)) {
                    Some(n) => json_answer(200, json!([self.user(p, &n)])),
                    None => not_found(),
                }
            }
            ("GET", ["thirdparty", "location"]) => {
                let found = field("alias").and_then(|a| {
                    self.reg.protocols.iter().find_map(|p| {
                        let c = a
                            .strip_prefix(&format!("#{p}_"))?
                            .strip_suffix(&format!(":{}", self.server_name))?;
                        valid_name(c).then(|| self.location(p, c))
                    })
                });
                found.map_or_else(not_found, |l| json_answer(200, json!([l])))
            }
            ("GET", ["thirdparty", "user"]) => {
                let found = field("userid").and_then(|u| {
                    self.reg.protocols.iter().find_map(|p| {
                        let n = u
                            .strip_prefix(&format!("@{p}_"))?
                            .strip_suffix(&format!(":{}", self.server_name))?;
                        valid_name(n).then(|| self.user(p, n))
                    })
                });
                found.map_or_else(not_found, |u| json_answer(200, json!([u])))
            }
            ("GET", ["thirdparty", ..]) => not_found(),
            _ => json_answer(404, json!({"errcode": "M_UNRECOGNIZED"})),
        }
    }

    fn knows(&self, protocol: &str) -> bool {
        self.reg.protocols.iter().any(|p| p == protocol)
    }

    fn protocol_metadata(&self) -> Value {
        json!({
            "user_fields": ["nick"],
            "location_fields": ["channel"],
            "icon": format!("mxc://{}/bridge-icon", self.server_name),
            "field_types": {
                "nick": {"regexp": "[a-z0-9]+", "placeholder": "alice"},
                "channel": {"regexp": "[a-z0-9]+", "placeholder": "lobby"}
            },
            "instances": [{
                "desc": "Test network",
                "icon": format!("mxc://{}/network-icon", self.server_name),
                "fields": {"network": "testnet"},
                "network_id": "testnet"
            }]
        })
    }

    fn location(&self, protocol: &str, channel: &str) -> Value {
        json!({
            "alias": format!("#{protocol}_{channel}:{}", self.server_name),
            "protocol": protocol,
            "fields": {"channel": channel}
        })
    }

    fn user(&self, protocol: &str, nick: &str) -> Value {
        json!({
            "userid": format!("@{protocol}_{nick}:{}", self.server_name),
            "protocol": protocol,
            "fields": {"nick": nick}
        })
    }
}
