//! The harness against small local servers: a fake homeserver that answers a few operations
//! (right or wrong on purpose), and a hostile one that hangs, trickles, sends garbage, resets
//! and announces enormous bodies. Every scenario ends within its bound with a reason; the
//! harness never panics or hangs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mxconform_harness::client::{Body, Client, Limits};
use mxconform_harness::profile::Registration;
use mxconform_harness::report::Outcome;
use mxconform_harness::{runner, scenario, Profile, RunConfig};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the fake server answers one request.
#[derive(Clone)]
enum Answer {
    Json(u16, Value),
    /// An HTML page, as a web server in front of a homeserver answers for a path it lacks.
    Html(u16),
    Hang,
    Trickle,
    Garbage,
    Reset,
    HugeAnnounced,
    HugeBody,
}

type Handler = Arc<dyn Fn(&str, &str, &Value) -> Answer + Send + Sync>;

/// Reads one HTTP/1.1 request: method, path (with query) and JSON body (or null).
async fn read_request(sock: &mut TcpStream) -> Option<(String, String, Value)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 1 << 20 {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.lines();
    let mut first = lines.next()?.split_whitespace();
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let len: usize = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or(Value::Null);
    Some((method, path, body))
}

/// Writes one complete answer; false when the connection is gone.
async fn reply(sock: &mut TcpStream, status: u16, content_type: &str, text: &str) -> bool {
    let head = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
        text.len()
    );
    sock.write_all(head.as_bytes()).await.is_ok() && sock.write_all(text.as_bytes()).await.is_ok()
}

async fn answer(mut sock: TcpStream, handler: Handler) {
    while let Some((method, path, body)) = read_request(&mut sock).await {
        match handler(&method, &path, &body) {
            Answer::Json(status, v) => {
                if !reply(&mut sock, status, "application/json", &v.to_string()).await {
                    return;
                }
            }
            Answer::Html(status) => {
                let page = "<html><body>No such resource</body></html>";
                if !reply(&mut sock, status, "text/html", page).await {
                    return;
                }
            }
            Answer::Hang => {
                tokio::time::sleep(Duration::from_secs(600)).await;
                return;
            }
            Answer::Trickle => {
                let _ = sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n").await;
                for _ in 0..600 {
                    if sock.write_all(b" ").await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                return;
            }
            Answer::Garbage => {
                let _ = sock
                    .write_all(b"\x00\x01garbage that is not HTTP\r\n\r\n")
                    .await;
                return;
            }
            Answer::Reset => {
                // A zero linger makes the close a TCP reset; it does not block with zero.
                #[allow(deprecated)]
                let _ = sock.set_linger(Some(Duration::ZERO));
                drop(sock);
                return;
            }
            Answer::HugeAnnounced => {
                let _ = sock
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 99999999999\r\n\r\n{")
                    .await;
                tokio::time::sleep(Duration::from_secs(60)).await;
                return;
            }
            Answer::HugeBody => {
                let _ = sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n").await;
                let piece = vec![b' '; 64 * 1024];
                for _ in 0..1024 {
                    let frame = format!("{:x}\r\n", piece.len());
                    if sock.write_all(frame.as_bytes()).await.is_err()
                        || sock.write_all(&piece).await.is_err()
                        || sock.write_all(b"\r\n").await.is_err()
                    {
                        return;
                    }
                }
                return;
            }
        }
    }
}

/// Starts a fake server on a free loopback port in its own runtime thread; returns its URL.
fn serve(handler: Handler) -> String {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    std_listener.set_nonblocking(true).expect("nonblocking");
    let addr = std_listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = TcpListener::from_std(std_listener).expect("listener");
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(answer(sock, handler.clone()));
            }
        });
    });
    format!("http://{addr}")
}

/// A fake homeserver: versions, open registration through the dummy stage, `createRoom`
/// (right), `getRoomIdByAlias` (breaking its schema: `servers` is not a list) and
/// `setRoomAlias` answering a 403 without `errcode`.
fn fake_homeserver() -> Handler {
    Arc::new(|method: &str, path: &str, body: &Value| {
        let p = path.split('?').next().unwrap_or(path);
        match (method, p) {
            ("GET", "/_matrix/client/versions") => {
                Answer::Json(200, json!({"versions": ["v1.11"]}))
            }
            ("POST", "/_matrix/client/v3/register") => {
                if body.get("auth").is_none() {
                    Answer::Json(
                        401,
                        json!({"session": "s1", "flows": [{"stages": ["m.login.dummy"]}], "params": {}}),
                    )
                } else {
                    let user = body["username"].as_str().unwrap_or("x");
                    Answer::Json(
                        200,
                        json!({"user_id": format!("@{user}:fake.test"), "access_token": format!("tok-{user}"), "device_id": "DEV"}),
                    )
                }
            }
            ("POST", "/_matrix/client/v3/createRoom") => {
                Answer::Json(200, json!({"room_id": "!room:fake.test"}))
            }
            ("GET", p) if p.starts_with("/_matrix/client/v3/directory/room/") => Answer::Json(
                200,
                json!({"room_id": "!room:fake.test", "servers": "not-a-list"}),
            ),
            ("PUT", p) if p.starts_with("/_matrix/client/v3/directory/room/") => {
                Answer::Json(403, json!({"error": "no errcode here"}))
            }
            ("GET", "/_matrix/client/v3/sync") => Answer::Json(200, json!({"next_batch": "n1"})),
            ("GET", "/_matrix/client/v3/capabilities") => Answer::Json(
                200,
                json!({"capabilities": {"m.room_versions": {"default": "11", "available": {"11": "stable"}}}}),
            ),
            // The spec documents this 404 without a body; joined_rooms documents no 404 at all.
            ("GET", "/.well-known/matrix/support") => Answer::Html(404),
            ("GET", "/_matrix/client/v3/joined_rooms") => Answer::Html(404),
            _ => Answer::Json(
                404,
                json!({"errcode": "M_UNRECOGNIZED", "error": "unknown"}),
            ),
        }
    })
}

fn profile(deviations: &[(&str, &str)]) -> Profile {
    let mut text = String::from("name = \"fake\"\nserver_name = \"fake.test\"\n");
    for (name, reason) in deviations {
        text.push_str(&format!("[deviations.\"{name}\"]\nreason = \"{reason}\"\nspec = \"https://spec.matrix.org/v1.19/\"\n"));
    }
    let dir = temp_dir("profile");
    let path = dir.join("fake.toml");
    std::fs::write(&path, text).expect("write profile");
    Profile::load(&path).expect("profile loads")
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "mxconform-harness-{}-{tag}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn write_scenarios(dir: &Path, files: &[(&str, &str)]) {
    for (name, text) in files {
        let p = dir.join(format!("{name}.yaml"));
        std::fs::create_dir_all(p.parent().expect("parent")).expect("dirs");
        std::fs::write(p, text).expect("write scenario");
    }
}

const SPEC: &str =
    "spec: https://spec.matrix.org/v1.19/client-server-api/#post_matrixclientv3createroom\n";

#[test]
fn scenarios_against_a_fake_server() {
    let url = serve(fake_homeserver());
    let dir = temp_dir("suite");
    write_scenarios(
        &dir,
        &[
            ("rooms/create", &format!("description: create a room\n{SPEC}actors: [alice]\nsteps:\n  - call: createRoom\n    body: {{}}\n    capture: {{room: /room_id}}\n  - call: createRoom\n    body: {{name: \"{{{{room}}}}\"}}\n    expect:\n      body: {{room_id: \"{{{{room}}}}\"}}\n")),
            ("rooms/wrong_expectation", &format!("description: expects a 404 it does not get\n{SPEC}actors: [alice]\nsteps:\n  - call: createRoom\n    expect: {{status: 404}}\n")),
            ("directory/schema_violation", &format!("description: the fake answers a schema-breaking body\n{SPEC}steps:\n  - call: getRoomIdByAlias\n    path: {{roomAlias: \"#a:fake.test\"}}\n")),
            ("directory/error_shape", &format!("description: a 403 without errcode\n{SPEC}actors: [alice]\nsteps:\n  - call: setRoomAlias\n    path: {{roomAlias: \"#a:fake.test\"}}\n    body: {{room_id: \"!r:fake.test\"}}\n    expect: {{status: 403}}\n")),
            ("directory/listed_and_failing", &format!("description: listed as a deviation and failing\n{SPEC}steps:\n  - call: getRoomIdByAlias\n    path: {{roomAlias: \"#a:fake.test\"}}\n")),
            ("rooms/listed_but_passing", &format!("description: listed as a deviation but passing\n{SPEC}actors: [alice]\nsteps:\n  - call: createRoom\n")),
            ("rooms/needs_old_version", &format!("description: needs room version 6\n{SPEC}actors: [alice]\nroom_versions: [\"6\"]\nsteps:\n  - call: createRoom\n    body: {{room_version: \"6\"}}\n")),
            ("rooms/offered_version", &format!("description: needs room version 11\n{SPEC}actors: [alice]\nroom_versions: [\"11\"]\nsteps:\n  - call: createRoom\n    body: {{room_version: \"11\"}}\n")),
            ("account/needs_admin", &format!("description: needs an administrator\n{SPEC}needs: [admin]\nsteps:\n  - call: getWhoIs\n    token: \"{{{{admin.token}}}}\"\n    path: {{userId: \"@a:fake.test\"}}\n")),
            ("account/needs_mail", &format!("description: needs the mail peer\n{SPEC}needs: [mail]\nactors: [alice]\nsteps:\n  - mail: {{to: \"a@b.test\"}}\n")),
            ("rooms/newer_than_server", &format!("description: an operation from v1.19\n{SPEC}actors: [alice]\nsteps:\n  - call: getMutualRooms\n    query: {{user_id: \"{{{{alice.user_id}}}}\"}}\n")),
            ("discovery/support_absent", &format!("description: a documented 404 without a body\n{SPEC}steps:\n  - call: getWellknownSupport\n    auth: none\n    expect: {{status: 404}}\n")),
            ("rooms/html_error", &format!("description: an undocumented 404 that is not JSON\n{SPEC}actors: [alice]\nsteps:\n  - call: getJoinedRooms\n    expect: {{status: 404}}\n")),
            ("rooms/bad_request", &format!("description: a request breaking the spec, not marked invalid\n{SPEC}actors: [alice]\nsteps:\n  - call: createRoom\n    body: {{preset: 42}}\n")),
            ("_fixtures/room", "description: a room of the first actor\nactors: [alice]\nparams: {want: ~}\nsteps:\n  - call: createRoom\n    body: {}\n    expect: {body: {room_id: \"{{want}}\"}}\n    capture: {room: /room_id}\n"),
            ("rooms/each_version", &format!("description: one scenario per version\n{SPEC}for_each: {{v: [\"11\", \"6\"]}}\nroom_versions: [\"{{{{v}}}}\"]\nsteps:\n  - use: room\n    with: {{want: \"!room:fake.test\"}}\n  - set: {{again: \"{{{{room}}}}\", label: \"v{{{{v}}}}\"}}\n  - call: createRoom\n    body: {{name: \"{{{{label}}}}\"}}\n    expect: {{body: {{room_id: \"{{{{again}}}}\"}}}}\n")),
            ("rooms/fixture_wrong_value", &format!("description: a fixture's expectation fails with the value given\n{SPEC}steps:\n  - use: room\n    with: {{want: \"!other:fake.test\"}}\n")),
        ],
    );
    let config = RunConfig {
        server_url: url.clone(),
        profile: profile(&[
            ("directory/listed_and_failing", "known"),
            ("rooms/listed_but_passing", "stale entry"),
        ]),
        scenarios_dir: dir.clone(),
        snapshots_dir: temp_dir("snapshots"),
        limits: Limits::default(),
        scenario_timeout: Duration::from_secs(20),
        sweeps: false,
        software_hint: None,
        federation: None,
        peers: None,
        args: None,
    };
    let out = mxconform_harness::run(config).expect("the run completes");
    let by_name: BTreeMap<&str, (&Outcome, &str)> = out
        .report
        .scenarios
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                (&s.outcome, s.reason.as_deref().unwrap_or("")),
            )
        })
        .collect();
    let expect = |name: &str, outcome: Outcome, reason_has: &str| {
        let (o, reason) = by_name
            .get(name)
            .unwrap_or_else(|| panic!("{name} not in the report"));
        assert_eq!(**o, outcome, "{name}: {reason}");
        assert!(
            reason.contains(reason_has),
            "{name}: reason `{reason}` lacks `{reason_has}`"
        );
    };
    expect("rooms/create", Outcome::Passed, "");
    // for_each: one scenario per value, `room_versions` naming it; a fixture's steps with its
    // parameter, its actors added; `set` variables.
    expect("rooms/each_version[11]", Outcome::Passed, "");
    expect(
        "rooms/each_version[6]",
        Outcome::Skipped,
        "needs room version 6",
    );
    assert!(!by_name.contains_key("rooms/each_version"));
    assert!(!by_name.keys().any(|n| n.starts_with("_fixtures")));
    expect(
        "rooms/fixture_wrong_value",
        Outcome::Failed,
        "!other:fake.test",
    );
    expect(
        "rooms/wrong_expectation",
        Outcome::Failed,
        "expected status One(404), got 200",
    );
    expect(
        "directory/schema_violation",
        Outcome::Failed,
        "breaks the spec's schema for getRoomIdByAlias: at /servers",
    );
    expect(
        "directory/error_shape",
        Outcome::Failed,
        "no standard error shape",
    );
    expect(
        "directory/listed_and_failing",
        Outcome::ExpectedFailure,
        "known",
    );
    expect(
        "rooms/listed_but_passing",
        Outcome::UnexpectedPass,
        "remove it from the list",
    );
    expect(
        "rooms/newer_than_server",
        Outcome::Skipped,
        "added in v1.19",
    );
    expect(
        "rooms/needs_old_version",
        Outcome::Skipped,
        "needs room version 6, which the server does not offer",
    );
    expect("rooms/offered_version", Outcome::Passed, "");
    expect(
        "account/needs_admin",
        Outcome::Skipped,
        "needs an administrator account, which profile `fake` does not name",
    );
    expect(
        "account/needs_mail",
        Outcome::Skipped,
        "needs the mail peer, which profile `fake` does not configure",
    );
    expect("discovery/support_absent", Outcome::Passed, "");
    expect(
        "rooms/html_error",
        Outcome::Failed,
        "a body that is not JSON",
    );
    expect(
        "rooms/bad_request",
        Outcome::Failed,
        "the request breaks the spec's schema",
    );
    let t = &out.report.totals;
    assert_eq!(
        (
            t.scenarios,
            t.passed,
            t.failed,
            t.expected_failures,
            t.unexpected_passes,
            t.skipped
        ),
        (17, 4, 6, 1, 1, 5)
    );
    assert!(out.conclusion.is_none());
    assert!(!out.report.success());
    // Coverage counts operations of passing scenarios only.
    assert!(out.report.coverage.operations_exercised >= 2);
    assert!(!out
        .report
        .coverage
        .uncovered
        .contains(&"createRoom".to_string()));
    assert!(out
        .report
        .coverage
        .uncovered
        .contains(&"getRoomIdByAlias".to_string()));
    // Reports render.
    let md = out.report.to_markdown();
    assert!(md.contains("| Rooms | 37% (3/8) | 5 | 0 | 3 |"), "{md}");
    let junit = out.report.to_junit();
    assert!(
        junit.contains("<testcase classname=\"rooms\" name=\"rooms/create\""),
        "{junit}"
    );
    let json: Value = serde_json::from_str(&out.report.to_json()).expect("JSON report");
    for key in ["server", "totals", "coverage", "areas", "scenarios"] {
        assert!(json.get(key).is_some(), "report lacks {key}");
    }
    let html_error = json["scenarios"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == "rooms/html_error"))
        .expect("the scenario is in the JSON report");
    assert_eq!(html_error["outcome"], "failed");
}

#[test]
fn unreachable_server_is_a_clear_error() {
    // A port that was just free: nothing listens.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = Client::new(&url, Limits::default()).expect("client");
    let err = rt
        .block_on(mxconform_harness::probe(&client))
        .expect_err("nothing listens");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("cannot reach homeserver at {url}: ")),
        "{text}"
    );
}

/// Each hostile behaviour, for `getRoomIdByAlias`; the scenario must fail with the reason
/// within its bound.
#[test]
fn hostile_server_fails_scenarios_with_reasons() {
    let cases: Vec<(&str, Answer, &str)> = vec![
        ("hang", Answer::Hang, "no complete response within"),
        ("trickle", Answer::Trickle, "no complete response within"),
        ("garbage", Answer::Garbage, "request failed"),
        ("reset", Answer::Reset, "request failed"),
        (
            "huge_announced",
            Answer::HugeAnnounced,
            "announces a 99999999999-byte body",
        ),
        ("huge_body", Answer::HugeBody, "exceeds the"),
        (
            "not_json",
            Answer::Json(200, json!("x")),
            "breaks the spec's schema",
        ),
    ];
    let limits = Limits {
        request_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(2),
        max_body: 1024 * 1024,
    };
    for (name, behaviour, reason_has) in cases {
        let b = behaviour.clone();
        let url = serve(Arc::new(move |_: &str, _: &str, _: &Value| b.clone()));
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let env = runner::Env {
            client: Client::new(&url, limits).expect("client"),
            profile: {
                let mut p = profile(&[]);
                p.registration = Registration::Open;
                p
            },
            snapshot_dir: temp_dir("snap"),
            peers: None,
            admin: Default::default(),
            federation: None,
            partners: Default::default(),
            scenario_timeout: Duration::from_secs(10),
        };
        let dir = temp_dir(name);
        write_scenarios(&dir, &[(&format!("hostile/{name}"), &format!("description: hostile {name}\n{SPEC}steps:\n  - call: getRoomIdByAlias\n    path: {{roomAlias: \"#a:x\"}}\n"))]);
        let s = scenario::load_dir(&dir).expect("loads").remove(0);
        let started = Instant::now();
        let outcome = rt.block_on(runner::run(&env, &s));
        let took = started.elapsed();
        let reason = outcome.result.expect_err(name);
        assert!(
            reason.contains(reason_has),
            "{name}: `{reason}` lacks `{reason_has}`"
        );
        assert!(took < Duration::from_secs(10), "{name} took {took:?}");
        rt.shutdown_timeout(Duration::from_millis(100));
    }
}

#[test]
fn a_scenario_bound_stops_a_slow_scenario() {
    let url = serve(Arc::new(|_: &str, _: &str, _: &Value| Answer::Hang));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let env = runner::Env {
        client: Client::new(&url, Limits::default()).expect("client"),
        profile: profile(&[]),
        snapshot_dir: temp_dir("snap"),
        peers: None,
        admin: Default::default(),
        federation: None,
        partners: Default::default(),
        scenario_timeout: Duration::from_secs(30),
    };
    let dir = temp_dir("bound");
    write_scenarios(&dir, &[("x/slow", &format!("description: slow\n{SPEC}timeout_ms: 700\nsteps:\n  - call: getRoomIdByAlias\n    path: {{roomAlias: \"#a:x\"}}\n"))]);
    let s = scenario::load_dir(&dir).expect("loads").remove(0);
    let started = Instant::now();
    let outcome = rt.block_on(runner::run(&env, &s));
    let reason = outcome.result.expect_err("bounded");
    assert!(reason.contains("did not finish within 0.7 s"), "{reason}");
    assert!(started.elapsed() < Duration::from_secs(5));
    rt.shutdown_timeout(Duration::from_millis(100));
}

#[test]
fn broken_scenario_files_are_rejected_with_the_reason() {
    let check = |text: &str, reason_has: &str| {
        let dir = temp_dir("broken");
        write_scenarios(&dir, &[("a/broken", text)]);
        let err = scenario::load_dir(&dir).expect_err(text).to_string();
        assert!(
            err.contains("scenario a/broken") && err.contains(reason_has),
            "`{err}` lacks `{reason_has}`"
        );
    };
    check(
        &format!("description: d\n{SPEC}steps:\n  - call: noSuchOperation\n"),
        "no operation `noSuchOperation`",
    );
    check(
        &format!("description: d\n{SPEC}steps:\n  - call: getRoomIdByAlias\n"),
        "needs path parameter `roomAlias`",
    );
    check(
        &format!(
            "description: d\n{SPEC}actors: [alice]\nsteps:\n  - call: createRoom\n    as: bob\n"
        ),
        "actor `bob` is not in `actors`",
    );
    check(
        &format!("description: d\n{SPEC}steps:\n  - call: createRoom\n    frobnicate: 1\n"),
        "unknown field `frobnicate`",
    );
    check(
        "description: d\nspec: not a link\nsteps:\n  - call: createRoom\n",
        "must link to the spec",
    );
    check(
        &format!("description: d\n{SPEC}actors: [alice]\nsteps:\n  - sync_until: {{checks: []}}\n"),
        "would wait for nothing",
    );
    check(
        &format!("description: d\n{SPEC}steps:\n  - use: no_such_fixture\n"),
        "fixture",
    );
    check(
        &format!("description: d\n{SPEC}steps:\n  - call: createRoom\n    with: {{a: 1}}\n"),
        "`with` gives a fixture's parameters",
    );
    check(
        &format!("description: d\n{SPEC}steps:\n  - call: createRoom\n    fed_answer: {{server: x, operation: getVersion}}\n"),
        "this one has call, fed_answer",
    );
    check(
        &format!("description: d\n{SPEC}actors: [alice]\nfor_each: {{v: []}}\nsteps:\n  - call: createRoom\n"),
        "for_each `v` has no values",
    );
    check(
        &format!(
            "description: d\n{SPEC}actors: [alice]\nsteps:\n  - call: createRoom\n    capture: {{room: /room_id}}\n"
        ),
        "capture `room` is never used",
    );
    check(
        &format!(
            "description: d\n{SPEC}actors: [alice]\nsteps:\n  - call: getTokenOwner\n    token: syt_made_up\n"
        ),
        "an access token written by hand",
    );
    check(
        &format!(
            "description: d\n{SPEC}servers: [r]\nsteps:\n  - fed_transaction: {{server: r}}\n"
        ),
        "fed_transaction sends `pdus`",
    );
    check(
        &format!("description: d\n{SPEC}servers: [r]\nsteps:\n  - fed_transaction: {{server: r, edus: [{{type: m.typing}}]}}\n"),
        "is {edu_type, content}",
    );
    check(
        &format!("description: d\n{SPEC}servers: [r]\nsteps:\n  - fed_transaction: {{server: s, edus: [{{edu_type: m.typing, content: {{}}}}]}}\n"),
        "server \"s\" is not one of the scenario's `servers`",
    );
}

#[test]
fn requests_go_where_the_route_table_says() {
    // The fake records what it receives.
    let seen: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    let url = serve(Arc::new(move |m: &str, p: &str, _: &Value| {
        log.lock().expect("log").push(format!("{m} {p}"));
        Answer::Json(200, json!({}))
    }));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let client = Client::new(&url, Limits::default()).expect("client");
    let route = mxconform_harness::route("setRoomStateWithKey").expect("in the table");
    let mut path = BTreeMap::new();
    path.insert("roomId".to_string(), "!r:x".to_string());
    path.insert("eventType".to_string(), "m.room.topic".to_string());
    path.insert("stateKey".to_string(), String::new());
    let r = rt
        .block_on(client.call(
            route,
            &path,
            &[("a b".into(), "c&d".into())],
            Body::Json(json!({"topic": "t"})),
            Some("tok"),
            None,
        ))
        .expect("answers");
    assert_eq!(r.status, 200);
    assert_eq!(
        seen.lock().expect("log").as_slice(),
        ["PUT /_matrix/client/v3/rooms/%21r%3Ax/state/m.room.topic/?a%20b=c%26d"]
    );
}

#[test]
fn sweeps_are_derived_from_the_route_table() {
    let sweeps = mxconform_harness::sweeps::client_server();
    let count = |prefix: &str| sweeps.iter().filter(|s| s.name.starts_with(prefix)).count();
    let required = mxconform_harness::routes()
        .filter(|r| r.auth == mxconform_generated::Auth::Required)
        .count();
    assert_eq!(count("sweeps/no_token/"), required);
    assert_eq!(count("sweeps/unknown_token/"), required);
    assert!(
        count("sweeps/not_json/") > 50 && count("sweeps/not_json/") == count("sweeps/bad_json/")
    );
    assert!(count("sweeps/unrecognized/unknown_path_") >= 3);
    assert!(count("sweeps/unrecognized/wrong_method_") > 10);
    for s in &sweeps {
        s.check().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.area, "sweeps");
    }
    let names: std::collections::BTreeSet<&str> = sweeps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names.len(), sweeps.len(), "sweep names are unique");
}

// ---------------------------------------------------------------------------------------
// A fake homeserver of the federation suites against a deliberately wrong server under test.

/// A TLS client that trusts the run's authority and verifies certificates against it.
fn verifying_client(ca_pem: &str) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("CA PEM"))
        .expect("root");
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Sends one HTTPS request to a fake server (trusting the run's authority), Connection: close;
/// returns the status.
async fn tls_request(
    port: u16,
    ca_pem: &str,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    body: Option<&Value>,
) -> u16 {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(verifying_client(ca_pem)));
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let mut tls = connector
        .connect(name, tcp)
        .await
        .expect("the fake's certificate chains to the authority");
    let body_text = body.map(Value::to_string).unwrap_or_default();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n", body_text.len());
    if let Some(a) = authorization {
        head.push_str(&format!("Authorization: {a}\r\n"));
    }
    if body.is_some() {
        head.push_str("Content-Type: application/json\r\n");
    }
    head.push_str("\r\n");
    tls.write_all(head.as_bytes()).await.expect("write");
    tls.write_all(body_text.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[test]
fn fake_servers_catch_a_misbehaving_homeserver() {
    use mxconform_harness::federation::{client, fake, room, tls};
    use mxconform_pdu::build::{NewEvent, Origin};
    use mxconform_pdu::{keys, xmatrix, SigningKey};

    // The "server under test": it publishes a key document at /_matrix/key/v2/server.
    let hs_key = SigningKey::generate(Some("hs")).unwrap();
    let doc = keys::server_key_document("hs.test", &[&hs_key], &[], i64::MAX / 2);
    let url = serve(Arc::new(
        move |method: &str, path: &str, _: &Value| match (method, path) {
            ("GET", "/_matrix/key/v2/server") => Answer::Json(200, doc.clone()),
            _ => Answer::Json(404, json!({"errcode": "M_UNRECOGNIZED", "error": "no"})),
        },
    ));
    let dir = temp_dir("ca");
    let authority = tls::Authority::load_or_create(&dir).unwrap();
    let ca_pem = authority.cert_pem.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let fed = Arc::new(
            client::FedClient::new(
                client::Target { base_url: url, server_name: "hs.test".into() },
                Vec::new(),
            )
            .unwrap(),
        );
        let f = fake::Fake::start(&authority, fed, None).await.unwrap();
        let name = f.shared.name.clone();
        let port: u16 = name.rsplit(':').next().unwrap().parse().unwrap();
        let signed = |method: &str, path: &str, body: Option<&Value>, dest: &str, key: &SigningKey| {
            xmatrix::authorization("hs.test", dest, key, method, path, body)
        };
        let count = || f.shared.inbox.violations().len();

        // The key document is served without authorization, and checks nothing.
        assert_eq!(tls_request(port, &ca_pem, "GET", "/_matrix/key/v2/server", None, None).await, 200);
        assert_eq!(count(), 0);
        // A correct request to a modelled operation: no violation.
        let devices = "/_matrix/federation/v1/user/devices/%40u%3A127.0.0.1";
        let auth = signed("GET", devices, None, &name, &hs_key);
        assert_eq!(tls_request(port, &ca_pem, "GET", devices, Some(&auth), None).await, 200);
        assert_eq!(count(), 0, "{:?}", f.shared.inbox.violations());
        // No Authorization; another destination; a signature by a key it does not publish.
        assert_eq!(tls_request(port, &ca_pem, "GET", devices, None, None).await, 401);
        assert_eq!(count(), 1);
        let wrong_dest = signed("GET", devices, None, "elsewhere.test", &hs_key);
        assert_eq!(tls_request(port, &ca_pem, "GET", devices, Some(&wrong_dest), None).await, 401);
        assert_eq!(count(), 2);
        let impostor = SigningKey::generate(Some("hs")).unwrap();
        let forged = signed("GET", devices, None, &name, &impostor);
        assert_eq!(tls_request(port, &ca_pem, "GET", devices, Some(&forged), None).await, 401);
        assert_eq!(count(), 3);
        // A request nobody expected.
        let dir_path = "/_matrix/federation/v1/query/directory?room_alias=%23a%3Ahs.test";
        let auth = signed("GET", dir_path, None, &name, &hs_key);
        tls_request(port, &ca_pem, "GET", dir_path, Some(&auth), None).await;
        assert_eq!(count(), 4);
        assert!(f.shared.inbox.violations()[3].contains("did not expect"));

        // A room the fake server is in, made by the server under test.
        let v = mxconform_pdu::RoomVersion::get("12").unwrap();
        let origin = Origin { server_name: "hs.test", key: &hs_key };
        let alice = "@alice:hs.test";
        let mut made: Vec<mxconform_pdu::Pdu> = Vec::new();
        let mut state: std::collections::HashMap<(String, String), mxconform_pdu::Pdu> = Default::default();
        struct St<'a>(&'a std::collections::HashMap<(String, String), mxconform_pdu::Pdu>);
        impl mxconform_pdu::auth::AuthState for St<'_> {
            fn get(&self, k: &str, s: &str) -> Option<&mxconform_pdu::Pdu> {
                self.0.get(&(k.to_string(), s.to_string()))
            }
        }
        let mut room_id = String::new();
        for (kind, key, content) in [
            ("m.room.create", Some(""), json!({"room_version": "12"})),
            ("m.room.member", Some(alice), json!({"membership": "join"})),
            ("m.room.join_rules", Some(""), json!({"join_rule": "public"})),
        ] {
            let prev: Vec<&mxconform_pdu::Pdu> = made.last().into_iter().collect();
            let p = mxconform_pdu::build::build(v, &room_id, NewEvent::new(kind, key, alice, content, 5), &prev, &St(&state), origin).unwrap();
            if kind == "m.room.create" {
                room_id = p.room_id.clone();
            }
            state.insert((p.kind.clone(), p.state_key.clone().unwrap()), p.clone());
            made.push(p);
        }
        let bob = format!("@bob:{name}");
        let join = mxconform_pdu::build::build(v, &room_id, NewEvent::new("m.room.member", Some(&bob), &bob, json!({"membership": "join"}), 6), &[made.last().unwrap()], &St(&state), Origin { server_name: &name, key: &f.shared.key }).unwrap();
        state.insert(("m.room.member".into(), bob.clone()), join.clone());
        let view = room::RoomView::from_join(v, &room_id, made.clone(), Vec::new(), join.clone());
        f.shared.rooms.lock().unwrap().insert(room_id.clone(), view);

        let send = |pdu: Value| json!({"origin": "hs.test", "origin_server_ts": 7, "pdus": [pdu], "edus": []});
        let message = mxconform_pdu::build::build(v, &room_id, NewEvent::new("m.room.message", None, alice, json!({"body": "hi"}), 8), &[&join], &St(&state), origin).unwrap();
        // A good PDU: accepted, no violation.
        let path = "/_matrix/federation/v1/send/t1";
        let body = send(message.json.clone());
        let auth = signed("PUT", path, Some(&body), &name, &hs_key);
        assert_eq!(tls_request(port, &ca_pem, "PUT", path, Some(&auth), Some(&body)).await, 200);
        assert_eq!(count(), 4, "{:?}", f.shared.inbox.violations());
        // A PDU whose signature does not verify (the sender changed after signing).
        let mut forged_pdu = message.json.clone();
        forged_pdu["origin_server_ts"] = json!(9);
        let body = send(forged_pdu);
        let path = "/_matrix/federation/v1/send/t2";
        let auth = signed("PUT", path, Some(&body), &name, &hs_key);
        tls_request(port, &ca_pem, "PUT", path, Some(&auth), Some(&body)).await;
        assert_eq!(count(), 5);
        assert!(f.shared.inbox.violations()[4].contains("signature"), "{:?}", f.shared.inbox.violations());
        // A PDU the rules reject: a message by someone not in the room, validly signed.
        let carol = "@carol:hs.test";
        let mut outsider = mxconform_pdu::build::build(v, &room_id, NewEvent::new("m.room.message", None, alice, json!({"body": "x"}), 10), &[&join], &St(&state), origin).unwrap().json;
        outsider["sender"] = json!(carol);
        if let Some(m) = outsider.as_object_mut() {
            m.remove("hashes");
            m.remove("signatures");
        }
        mxconform_pdu::build::hash_and_sign(v, &mut outsider, origin);
        let body = send(outsider);
        let path = "/_matrix/federation/v1/send/t3";
        let auth = signed("PUT", path, Some(&body), &name, &hs_key);
        tls_request(port, &ca_pem, "PUT", path, Some(&auth), Some(&body)).await;
        assert_eq!(count(), 6);
        assert!(f.shared.inbox.violations()[5].contains("rejected"), "{:?}", f.shared.inbox.violations());
        // A PDU for a room the fake server is not in.
        let mut elsewhere = message.json.clone();
        elsewhere["room_id"] = json!("!Nhcu5BS-UMnFX7hBVfVSoXiD7OgH6iRT-xyIuqDnpYQ");
        let body = send(elsewhere);
        let path = "/_matrix/federation/v1/send/t4";
        let auth = signed("PUT", path, Some(&body), &name, &hs_key);
        tls_request(port, &ca_pem, "PUT", path, Some(&auth), Some(&body)).await;
        assert_eq!(count(), 7);
        // A transaction that breaks its schema (pdus is not a list).
        let body = json!({"origin": "hs.test", "origin_server_ts": 7, "pdus": {}});
        let path = "/_matrix/federation/v1/send/t5";
        let auth = signed("PUT", path, Some(&body), &name, &hs_key);
        tls_request(port, &ca_pem, "PUT", path, Some(&auth), Some(&body)).await;
        assert!(f.shared.inbox.violations().iter().any(|v| v.contains("schema")), "{:?}", f.shared.inbox.violations());
    });
}

/// A client that accepts any certificate: what a homeserver that skips verification does.
#[derive(Debug)]
struct AcceptsAnything(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptsAnything {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A fake server with a faulty certificate: a homeserver that verifies certificates abandons
/// the handshake (recorded, no violation); one that accepts anything reaches it, and that
/// request is a violation.
#[test]
fn a_fake_with_a_faulty_certificate_catches_a_server_that_accepts_it() {
    use mxconform_harness::federation::fake::{Fake, Received};
    use mxconform_harness::federation::{client, tls};
    let dir = temp_dir("ca-faults");
    let authority = tls::Authority::load_or_create(&dir).unwrap();
    let ca_pem = authority.cert_pem.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        for fault in [
            tls::CertificateFault::OtherAuthority,
            tls::CertificateFault::Expired,
            tls::CertificateFault::WrongName,
        ] {
            let fed = Arc::new(
                client::FedClient::new(
                    client::Target {
                        base_url: "http://127.0.0.1:9".into(),
                        server_name: "hs.test".into(),
                    },
                    Vec::new(),
                )
                .unwrap(),
            );
            let f = Fake::start(&authority, fed, Some(fault)).await.unwrap();
            let port: u16 = f.shared.name.rsplit(':').next().unwrap().parse().unwrap();
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();

            // A verifying client: the handshake fails, the fake records it, nothing is wrong.
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let verifying = verifying_client(&ca_pem);
            let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let refused = tokio_rustls::TlsConnector::from(Arc::new(verifying))
                .connect(name.clone(), tcp)
                .await;
            assert!(
                refused.is_err(),
                "{fault:?}: a verifying client accepted it"
            );
            let got = f
                .shared
                .inbox
                .wait_for(0, Duration::from_secs(5), |r| {
                    matches!(r, Received::Handshake { .. })
                })
                .await;
            assert!(
                got.is_some(),
                "{fault:?}: the refused handshake was not recorded"
            );
            assert!(
                f.shared.inbox.violations().is_empty(),
                "{:?}",
                f.shared.inbox.violations()
            );

            // A client that accepts anything: its request is a violation naming the fault.
            let careless = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptsAnything(provider)))
                .with_no_client_auth();
            let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(Arc::new(careless))
                .connect(name, tcp)
                .await
                .unwrap();
            tls.write_all(
                b"GET /_matrix/key/v2/server HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
            .await
            .unwrap();
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
            let violations = f.shared.inbox.violations();
            assert_eq!(violations.len(), 1, "{fault:?}: {violations:?}");
            assert!(violations[0].contains(&fault.to_string()), "{violations:?}");
        }
    });
}

/// The profile says whether the server verifies certificates: with `authority` a scenario with
/// a faulty certificate runs (and here, the server under test never calling the fake, fails on
/// its awaited handshake); with `unverified` it is skipped with that reason.
#[test]
fn certificate_scenarios_follow_the_profiles_verification() {
    let url = serve(fake_homeserver());
    let dir = temp_dir("cert-suite");
    write_scenarios(
        &dir,
        &[(
            "federation/tls/refused",
            "description: the server refuses a faulty certificate\nspec: https://spec.matrix.org/v1.19/server-server-api/#tls\nservers: [rogue]\ncertificates: {rogue: expired}\nsteps:\n  - fed_await: {server: rogue, handshake: refused, within_ms: 200}\n",
        )],
    );
    for (verification, outcome, reason) in [
        (
            "authority",
            Outcome::Failed,
            "was not sent a refused TLS handshake",
        ),
        (
            "unverified",
            Outcome::Skipped,
            "certificates = \"unverified\"",
        ),
    ] {
        let pdir = temp_dir("cert-profile");
        let text = format!(
            "name = \"fake\"\nserver_name = \"fake.test\"\n[federation]\nbase_url = \"{url}\"\nserver_name = \"fake.test\"\nauthority = \"ca\"\ncertificates = \"{verification}\"\n"
        );
        std::fs::write(pdir.join("fake.toml"), text).unwrap();
        let profile = Profile::load(&pdir.join("fake.toml")).expect("profile loads");
        let federation = mxconform_harness::federation::Federation::new(
            profile.federation.as_ref().unwrap(),
            &pdir,
            &url,
        )
        .unwrap();
        let config = RunConfig {
            server_url: url.clone(),
            profile,
            scenarios_dir: dir.clone(),
            snapshots_dir: temp_dir("snapshots"),
            limits: Limits::default(),
            scenario_timeout: Duration::from_secs(20),
            sweeps: false,
            software_hint: None,
            federation: Some(Arc::new(federation)),
            peers: None,
            args: None,
        };
        let out = mxconform_harness::run(config).expect("the run completes");
        let s = out
            .report
            .scenarios
            .iter()
            .find(|s| s.name == "federation/tls/refused")
            .expect("in the report");
        assert_eq!(s.outcome, outcome, "{verification}: {:?}", s.reason);
        assert!(
            s.reason.as_deref().unwrap_or("").contains(reason),
            "{verification}: {:?}",
            s.reason
        );
    }
    // A profile that names another value is refused when it loads.
    let pdir = temp_dir("cert-profile-bad");
    std::fs::write(
        pdir.join("fake.toml"),
        "name = \"fake\"\nserver_name = \"fake.test\"\n[federation]\nbase_url = \"http://127.0.0.1:9\"\nserver_name = \"fake.test\"\nauthority = \"ca\"\ncertificates = \"sometimes\"\n",
    )
    .unwrap();
    assert!(Profile::load(&pdir.join("fake.toml")).is_err());
}
