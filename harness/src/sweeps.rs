//! Negative sweeps derived from the route table, not written per endpoint: every operation
//! that needs a token is asked without one and with an unknown one; every operation that
//! takes a JSON body is sent one that is not JSON and one of the wrong shape; unknown paths
//! and wrong methods must get the spec's unrecognised error. Every error must carry string
//! `errcode` and `error`. They run as the `sweeps` area, like any scenario.

use std::collections::{BTreeMap, BTreeSet};

use mxconform_generated::{Auth, BodyKind, Route};
use serde_json::{json, Value};

use crate::scenario::{AuthMode, Check, Expect, RawHttp, Scenario, StatusSpec, Step, StepKind};

/// A value for a path parameter that has the right form for its name, so that the request
/// fails for the reason under test and not for a malformed identifier.
fn placeholder(name: &str) -> Value {
    json!(match name {
        "roomId" | "roomIdOrAlias" => "!mxconformsweep:{{server_name}}",
        "userId" => "{{alice.user_id}}",
        "eventId" => "$mxconformsweep",
        "roomAlias" => "#mxconformsweep:{{server_name}}",
        "serverName" => "{{server_name}}",
        "eventType" | "type" => "org.example.sweep",
        "stateKey" => "",
        "kind" => "override",
        "keyName" => "displayname",
        "receiptType" => "m.read",
        "relType" => "m.thread",
        "deviceId" => "{{alice.device_id}}",
        _ => "mxconformsweep",
    })
}

/// An error answer with this status and errcode, carrying string `errcode` and `error`.
fn error(status: u16, errcode: &str) -> Expect {
    Expect {
        status: Some(StatusSpec::One(status)),
        errcode: Some(errcode.into()),
        checks: vec![
            Check {
                at: "/errcode".into(),
                type_: Some("string".into()),
                ..Check::default()
            },
            Check {
                at: "/error".into(),
                type_: Some("string".into()),
                ..Check::default()
            },
        ],
        ..Expect::default()
    }
}

fn spec_link(route: &Route, section: &str) -> String {
    // The operation's own anchor, unless a general section says it better.
    if section.is_empty() {
        route.spec_url.to_string()
    } else {
        format!(
            "https://spec.matrix.org/{}/client-server-api/#{section}",
            crate::report::spec_version_tag()
        )
    }
}

fn sweep(
    name: String,
    description: String,
    spec: String,
    actors: Vec<String>,
    step: Step,
) -> Scenario {
    Scenario {
        description,
        spec,
        actors,
        needs: Vec::new(),
        room_versions: Vec::new(),
        timeout_ms: None,
        keys: Vec::new(),
        servers: Vec::new(),
        certificates: Default::default(),
        allow_requests: Vec::new(),
        for_each: Default::default(),
        partners: Default::default(),
        bindings: Default::default(),
        steps: vec![step],
        area: "sweeps".into(),
        name,
    }
}

/// A body sweep on a room-scoped operation runs in a room the caller created, so that the
/// body is the only thing wrong (servers may check membership before they parse the body).
fn in_own_room(mut s: Scenario) -> Scenario {
    let uses_room = s.steps[0]
        .path
        .values()
        .any(|v| v.as_str().is_some_and(|t| t.starts_with("!mxconformsweep")));
    if !uses_room {
        return s;
    }
    for v in s.steps[0].path.values_mut() {
        if v.as_str().is_some_and(|t| t.starts_with("!mxconformsweep")) {
            *v = json!("{{room}}");
        }
    }
    let create = Step {
        kind: StepKind::Call("createRoom".into()),
        body: Some(json!({})),
        capture: [(
            "room".to_string(),
            crate::scenario::Capture::Pointer("/room_id".into()),
        )]
        .into_iter()
        .collect(),
        ..Step::default()
    };
    s.steps.insert(0, create);
    s
}

fn call_step(route: &Route) -> Step {
    // Required query parameters get values of their kind, so that only the fault under test
    // is wrong with the request.
    let query = route
        .params
        .iter()
        .filter(|p| p.required && p.location == mxconform_generated::ParamLocation::Query)
        .map(|p| {
            let v = match p.kind {
                mxconform_generated::ParamKind::Integer
                | mxconform_generated::ParamKind::Number => json!(1),
                mxconform_generated::ParamKind::Boolean => json!(true),
                _ => match p.name {
                    "user_id" => json!("{{alice.user_id}}"),
                    "dir" => json!("b"),
                    _ => json!("1"),
                },
            };
            (p.name.to_string(), v)
        })
        .collect();
    Step {
        kind: StepKind::Call(route.operation_id.to_string()),
        path: route
            .path_params()
            .map(|p| (p.to_string(), placeholder(p)))
            .collect(),
        query,
        invalid: true,
        skip_if_unrecognized: true,
        ..Step::default()
    }
}

/// Every sweep for the client-server route table.
pub fn client_server() -> Vec<Scenario> {
    let mut out = Vec::new();
    for route in crate::routes() {
        let op = route.operation_id;
        if route.auth == Auth::Required {
            let mut s = call_step(route);
            s.auth = Some(AuthMode::None);
            // A body of the right kind, so that only the missing token is wrong.
            if route.request_body == BodyKind::Json {
                s.body = Some(json!({}));
            }
            s.expect = error(401, "M_MISSING_TOKEN");
            // Placeholders that name alice need her even when no token is sent.
            let names_alice = s
                .path
                .values()
                .chain(s.query.values())
                .any(|v| v.as_str().is_some_and(|t| t.contains("alice.")));
            let actors: Vec<String> = if names_alice {
                vec!["alice".into()]
            } else {
                vec![]
            };
            out.push(sweep(
                format!("sweeps/no_token/{op}"),
                format!("{op} without an access token answers 401 M_MISSING_TOKEN."),
                spec_link(route, "using-access-tokens"),
                actors.clone(),
                s,
            ));
            let mut s = call_step(route);
            s.auth = Some(AuthMode::Bogus);
            if route.request_body == BodyKind::Json {
                s.body = Some(json!({}));
            }
            s.expect = error(401, "M_UNKNOWN_TOKEN");
            out.push(sweep(
                format!("sweeps/unknown_token/{op}"),
                format!("{op} with an access token no server issued answers 401 M_UNKNOWN_TOKEN."),
                spec_link(route, "using-access-tokens"),
                actors,
                s,
            ));
        }
        // Application-service operations refuse a user's token before anything else.
        let user_token = route
            .auth_schemes
            .contains(&mxconform_generated::AuthScheme::AccessToken)
            || route.auth != Auth::Required;
        if route.request_body == BodyKind::Json && user_token {
            let actors = vec!["alice".to_string()];
            let mut s = call_step(route);
            s.raw_body = Some("{\"this is\": not JSON".into());
            s.content_type = Some("application/json".into());
            s.expect = error(400, "M_NOT_JSON");
            out.push(in_own_room(sweep(
                format!("sweeps/not_json/{op}"),
                format!("{op} with a body that is not JSON answers 400 M_NOT_JSON."),
                spec_link(route, "common-error-codes"),
                actors.clone(),
                s,
            )));
            let mut s = call_step(route);
            s.body = Some(json!([
                "mxconform",
                "an array where the spec wants an object"
            ]));
            s.expect = error(400, "M_BAD_JSON");
            out.push(in_own_room(sweep(
                format!("sweeps/bad_json/{op}"),
                format!("{op} with JSON of the wrong shape (an array for an object) answers 400 M_BAD_JSON."),
                spec_link(route, "common-error-codes"),
                actors,
                s,
            )));
        }
    }
    out.extend(unrecognized());
    out
}

/// Unknown paths under each prefix the table uses, and a method no operation has on a path.
fn unrecognized() -> Vec<Scenario> {
    let mut out = Vec::new();
    let mut prefixes: BTreeSet<String> = BTreeSet::new();
    let mut methods: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for r in crate::routes() {
        let parts: Vec<&str> = r.path.split('/').collect();
        if parts.len() > 3 && parts[1] == "_matrix" {
            prefixes.insert(parts[..4].join("/"));
        }
        methods.entry(r.path).or_default().insert(r.method.as_str());
    }
    for p in prefixes {
        let tag = p.trim_start_matches("/_matrix/").replace('/', "_");
        let step = Step {
            kind: StepKind::Http(RawHttp {
                method: "GET".into(),
                path: format!("{p}/mxconform_no_such_endpoint"),
                page: false,
            }),
            expect: error(404, "M_UNRECOGNIZED"),
            ..Step::default()
        };
        out.push(sweep(
            format!("sweeps/unrecognized/unknown_path_{tag}"),
            format!("An unknown endpoint under {p} answers 404 M_UNRECOGNIZED."),
            format!(
                "https://spec.matrix.org/{}/client-server-api/#common-error-codes",
                crate::report::spec_version_tag()
            ),
            vec!["alice".into()],
            Step {
                as_actor: Some("alice".into()),
                ..step
            },
        ));
    }
    // Paths without parameters whose route lacks DELETE (or, failing that, PATCH).
    for (path, ms) in methods {
        if path.contains('{') || !path.starts_with("/_matrix/client/") {
            continue;
        }
        let Some(wrong) = ["DELETE", "PATCH"].into_iter().find(|m| !ms.contains(m)) else {
            continue;
        };
        let tag = path
            .trim_start_matches("/_matrix/client/")
            .replace('/', "_");
        out.push(sweep(
            format!("sweeps/unrecognized/wrong_method_{tag}"),
            format!(
                "{wrong} on {path}, which the spec does not define, answers 405 M_UNRECOGNIZED."
            ),
            format!(
                "https://spec.matrix.org/{}/client-server-api/#common-error-codes",
                crate::report::spec_version_tag()
            ),
            vec!["alice".into()],
            Step {
                kind: StepKind::Http(RawHttp {
                    method: wrong.into(),
                    path: path.to_string(),
                    page: false,
                }),
                as_actor: Some("alice".into()),
                expect: error(405, "M_UNRECOGNIZED"),
                ..Step::default()
            },
        ));
    }
    out
}
