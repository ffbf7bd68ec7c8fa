//! The `mxconform` binary end to end: generate --check, routes, diff, and the compliance run
//! against the embedded reference server (every scenario must pass there, or be listed).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mxconform"));
    c.current_dir(repo());
    c
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mxconform-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

#[test]
fn generate_check_passes_on_a_fresh_tree() {
    let out = bin().args(["generate", "--check"]).output().expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("up to date"));
}

#[test]
fn routes_as_json() {
    let out = bin()
        .args(["routes", "--format", "json"])
        .output()
        .expect("runs");
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let list = v.as_array().expect("a list");
    assert_eq!(list.len(), 166 + 36 + 9 + 23 + 1);
    let sync = list
        .iter()
        .find(|r| r["operation_id"] == "sync")
        .expect("sync");
    for key in [
        "group",
        "operation_id",
        "method",
        "path",
        "auth",
        "rate_limited",
        "added_in",
    ] {
        assert!(sync.get(key).is_some(), "route lacks {key}");
    }
    assert_eq!(sync["path"], "/_matrix/client/v3/sync");
    assert_eq!(sync["auth"], "required");
    let implemented = bin()
        .args(["routes", "--format", "json", "--implemented"])
        .output()
        .expect("runs");
    let implemented: Value = serde_json::from_slice(&implemented.stdout).expect("JSON");
    let n = implemented.as_array().expect("a list").len();
    assert!(n > 40 && n <= 166, "{n} implemented operations");
}

#[test]
fn diff_between_two_releases() {
    let shared = repo().join("../shared/matrix-spec");
    let out = bin()
        .args(["diff", "--format", "json", "--from"])
        .arg(shared.join("v1.18"))
        .arg("--to")
        .arg(shared.join("v1.19"))
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let added: Vec<&str> = v["operations"]
        .as_array()
        .expect("operations")
        .iter()
        .filter(|o| o["change"] == "added")
        .map(|o| o["route"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(added, ["GET /_matrix/client/v1/mutual_rooms"]);
}

#[test]
fn compliance_run_against_the_embedded_reference_server() {
    let dir = temp("run");
    let (json, md, junit) = (dir.join("r.json"), dir.join("r.md"), dir.join("r.xml"));
    let out = bin()
        .args(["run", "--quiet", "--report-json"])
        .arg(&json)
        .arg("--report-md")
        .arg(&md)
        .arg("--junit")
        .arg(&junit)
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("JSON report")).expect("JSON");
    let files = count_scenarios(&repo().join("harness/scenarios"));
    let sweeps = report["areas"]["sweeps"]["scenarios"].as_u64().unwrap_or(0) as usize;
    assert!(
        sweeps > 300,
        "the route-table sweeps run as their own area ({sweeps})"
    );
    assert_eq!(
        report["totals"]["scenarios"],
        files + sweeps,
        "every scenario file is a trial"
    );
    assert_eq!(report["totals"]["failed"], 0);
    assert_eq!(report["totals"]["unexpected_passes"], 0);
    assert_eq!(report["server"]["profile"], "reference");
    assert!(
        report["coverage"]["operations_exercised"]
            .as_u64()
            .unwrap_or(0)
            >= 20
    );
    let md = std::fs::read_to_string(&md).expect("markdown report");
    assert!(
        md.contains("## Areas") && md.contains("| Membership |"),
        "{md}"
    );
    let junit = std::fs::read_to_string(&junit).expect("junit");
    assert!(junit.starts_with("<?xml"));
    // A name filter narrows the run like cargo test's.
    let out = bin()
        .args(["run", "--quiet", "membership/kick"])
        .output()
        .expect("runs");
    assert!(out.status.success());
    let list = bin().args(["run", "--list"]).output().expect("runs");
    assert!(String::from_utf8_lossy(&list.stdout).contains("membership/kick_and_ban: test"));
}

/// `run --partition 1/2` and `2/2` each run a part of the tests, the parts do not overlap, and
/// `merge` of their reports has the totals and coverage of one full run (sweeps left out of
/// all three, to keep the cost down).
#[test]
fn partitions_merge_into_the_full_run() {
    let dir = temp("partition");
    let run = |extra: &[&str], json: &Path| -> (Value, String) {
        let out = bin()
            .args(["run", "--quiet", "--no-sweeps", "--report-json"])
            .arg(json)
            .args(extra)
            .output()
            .expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "run {extra:?}:\n{stderr}");
        let text = std::fs::read_to_string(json).expect("JSON report");
        (serde_json::from_str(&text).expect("JSON"), stderr)
    };
    let names = |report: &Value| -> std::collections::BTreeSet<String> {
        report["scenarios"]
            .as_array()
            .expect("scenarios")
            .iter()
            .map(|s| s["name"].as_str().expect("a name").to_string())
            .collect()
    };
    let (p1, p2, full) = (
        dir.join("p1.json"),
        dir.join("p2.json"),
        dir.join("full.json"),
    );
    let (one, _) = run(&["--partition", "1/2"], &p1);
    let (two, _) = run(&["--partition", "2/2"], &p2);
    let (whole, whole_err) = run(&[], &full);
    assert_eq!(one["partition"], "1/2");
    assert_eq!(two["partition"], "2/2");
    assert!(whole.get("partition").is_none());
    let (a, b) = (names(&one), names(&two));
    assert!(
        !a.is_empty() && !b.is_empty(),
        "{} and {}",
        a.len(),
        b.len()
    );
    assert!(a.is_disjoint(&b), "{:?}", a.intersection(&b).next());
    assert_eq!(
        a.union(&b)
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        names(&whole)
    );

    let (md, junit, merged_json) = (dir.join("m.md"), dir.join("m.xml"), dir.join("m.json"));
    let out = bin()
        .arg("merge")
        .args([&p1, &p2])
        .arg("--report-json")
        .arg(&merged_json)
        .arg("--report-md")
        .arg(&md)
        .arg("--junit")
        .arg(&junit)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let merged: Value =
        serde_json::from_str(&std::fs::read_to_string(&merged_json).expect("merged report"))
            .expect("JSON");
    assert_eq!(merged["totals"], whole["totals"]);
    assert_eq!(merged["areas"], whole["areas"]);
    assert_eq!(merged["coverage"], whole["coverage"]);
    assert_eq!(names(&merged), names(&whole));
    assert!(whole["totals"]["passed"].as_u64().unwrap_or(0) > 0);
    // The same figures as the full run's summary line.
    let figures = whole_err
        .lines()
        .find_map(|l| l.strip_prefix("mxconform: ")?.split_once(" s: "))
        .map(|(_, f)| f.to_string())
        .expect("the run's summary line");
    assert!(stderr.contains(&figures), "{figures}\n{stderr}");
    let md = std::fs::read_to_string(&md).expect("markdown");
    assert!(
        md.contains("## Areas") && !md.contains("Partition "),
        "{md}"
    );
    assert!(std::fs::read_to_string(&junit)
        .expect("junit")
        .starts_with("<?xml"));

    // Half a split is refused, naming what is missing.
    let out = bin().arg("merge").arg(&p1).output().expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("partition 2/2 is missing"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unreachable_server_fails_clearly() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let out = bin()
        .args(["run", "--server", &format!("http://127.0.0.1:{port}")])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "cannot reach homeserver at http://127.0.0.1:{port}"
        )),
        "{err}"
    );
}

/// The trials the scenario files make: one per file, or one per combination of a file's
/// `for_each` values; folders starting with `_` hold fixtures, not scenarios.
fn count_scenarios(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .expect("scenarios")
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                let hidden = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('_'));
                if hidden {
                    0
                } else {
                    count_scenarios(&p)
                }
            } else if p.extension().is_some_and(|x| x == "yaml") {
                let text = std::fs::read_to_string(&p).expect("scenario file");
                let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("YAML");
                match doc.get("for_each").and_then(|f| f.as_mapping()) {
                    Some(lists) => lists
                        .values()
                        .map(|v| v.as_sequence().map_or(1, Vec::len))
                        .product(),
                    None => 1,
                }
            } else {
                0
            }
        })
        .sum()
}

/// Starts `mxconform serve` on a free port with an on-disk database; returns the child and URL.
fn serve(db: &Path) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let mut child = bin()
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--server-name",
            "crash.test",
            "--db",
        ])
        .arg(db)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("serve starts");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let line = lines
        .by_ref()
        .map(|l| l.expect("readable"))
        .find(|l| l.starts_with("mxconform reference server"))
        .expect("a start-up line");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("the URL in the start-up line")
        .to_string();
    // Keep draining stderr so that the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, url)
}

/// Acknowledged writes survive a SIGKILL in the middle of a send load: every event whose send
/// was answered 200 is there after a restart on the same database.
#[test]
fn no_acknowledged_event_is_lost_to_a_kill() {
    use mxconform_harness::client::{Body, Client, Limits};
    use std::sync::{Arc, Mutex};
    let dir = temp("crash");
    let db = dir.join("hs.db");
    let _ = std::fs::remove_file(&db);
    let (mut child, url) = serve(&db);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let limits = Limits {
        request_timeout: std::time::Duration::from_secs(5),
        ..Limits::default()
    };
    let client = Client::new(&url, limits).expect("client");
    let (token, room) = rt.block_on(async {
        let body = serde_json::json!({"username": "loader", "password": "pw", "auth": {"type": "m.login.dummy"}});
        let r = client.send("POST", "/_matrix/client/v3/register", &[], Body::Json(body), None, None, Default::default()).await.expect("register");
        let token = r.body["access_token"].as_str().expect("token").to_string();
        let r = client
            .send("POST", "/_matrix/client/v3/createRoom", &[], Body::Json(serde_json::json!({})), Some(&token), None, Default::default())
            .await
            .expect("createRoom");
        (token, r.body["room_id"].as_str().expect("room").to_string())
    });
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let room_path = room.replace('!', "%21").replace(':', "%3A");
    // Four concurrent senders, each bounded to 2,000 sends; the kill comes first.
    let senders: Vec<_> = (0..4)
        .map(|w| {
            let (client, token, acked, room_path) = (
                client.clone(),
                token.clone(),
                acked.clone(),
                room_path.clone(),
            );
            rt.spawn(async move {
                for i in 0..2000 {
                    let path = format!(
                        "/_matrix/client/v3/rooms/{room_path}/send/m.room.message/w{w}-{i}"
                    );
                    let body = Body::Json(
                        serde_json::json!({"msgtype": "m.text", "body": format!("{w}-{i}")}),
                    );
                    match client
                        .send(
                            "PUT",
                            &path,
                            &[],
                            body,
                            Some(&token),
                            None,
                            Default::default(),
                        )
                        .await
                    {
                        Ok(r) if r.status == 200 => acked
                            .lock()
                            .expect("lock")
                            .push(r.body["event_id"].as_str().unwrap_or("").to_string()),
                        _ => break,
                    }
                }
            })
        })
        .collect();
    // Kill once a few hundred sends are acknowledged (or after 10 s at most).
    let started = std::time::Instant::now();
    while acked.lock().expect("lock").len() < 300
        && started.elapsed() < std::time::Duration::from_secs(10)
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    for s in senders {
        let _ = rt.block_on(s);
    }
    let acked = acked.lock().expect("lock").clone();
    assert!(
        acked.len() >= 300,
        "the load ran: {} acknowledged",
        acked.len()
    );
    // Restart on the same database and look for every acknowledged event.
    let (mut child, url) = serve(&db);
    let client = Client::new(&url, limits).expect("client");
    let missing: Vec<String> = rt.block_on(async {
        let mut missing = Vec::new();
        for id in &acked {
            let path = format!(
                "/_matrix/client/v3/rooms/{room_path}/event/{}",
                id.replace('$', "%24")
            );
            match client
                .send(
                    "GET",
                    &path,
                    &[],
                    Body::None,
                    Some(&token),
                    None,
                    Default::default(),
                )
                .await
            {
                Ok(r) if r.status == 200 => {}
                other => missing.push(format!("{id}: {other:?}")),
            }
        }
        missing
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged events lost: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
}

/// A free loopback port (bound, then released for the server to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Two reference servers federate over TLS (certificates from one test authority both trust):
/// a user of the second joins a room of the first through it, and messages go both ways.
#[test]
fn two_reference_servers_federate() {
    use mxconform_harness::client::{Body, Client, Limits};
    use std::io::{BufRead, BufReader};
    let dir = temp("federation");
    let ca = dir.join("ca");
    let out = bin()
        .arg("federation-ca")
        .arg("--out")
        .arg(&ca)
        .output()
        .expect("runs");
    assert!(out.status.success());
    let start = |name: &str| {
        let (client_port, fed_port) = (free_port(), free_port());
        let server_name = format!("127.0.0.1:{fed_port}");
        let mut child = bin()
            .args(["serve", "--in-memory", "--addr"])
            .arg(format!("127.0.0.1:{client_port}"))
            .args([
                "--server-name",
                &server_name,
                "--federation-addr",
                &server_name,
            ])
            .arg("--tls-authority")
            .arg(&ca)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts: {e}"));
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let found = start_up_lines(&mut lines);
        let (first, fed) = (&found[0], &found[1]);
        assert!(first.contains(&server_name), "{first}");
        assert!(fed.contains(&format!("https://{server_name}")), "{fed}");
        std::thread::spawn(move || for _ in lines {});
        (
            child,
            format!("http://127.0.0.1:{client_port}"),
            server_name,
        )
    };
    let (mut a, url_a, name_a) = start("a");
    let (mut b, url_b, _) = start("b");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let limits = Limits {
        request_timeout: std::time::Duration::from_secs(20),
        ..Limits::default()
    };
    let result = rt.block_on(async {
        let (ca_client, cb) = (Client::new(&url_a, limits.clone())?, Client::new(&url_b, limits.clone())?);
        let call = |c: &Client, method: &'static str, path: String, body: serde_json::Value, token: Option<String>| {
            let c = c.clone();
            async move {
                let r = c
                    .send(method, &path, &[], Body::Json(body), token.as_deref(), None, Default::default())
                    .await
                    .map_err(|e| format!("{method} {path}: {e}"))?;
                if r.status != 200 {
                    return Err(format!("{method} {path}: {} {}", r.status, r.body));
                }
                Ok::<_, String>(r.body)
            }
        };
        let register = |c: &Client, user: &'static str| {
            let body = serde_json::json!({"username": user, "password": "pw", "auth": {"type": "m.login.dummy"}});
            call(c, "POST", "/_matrix/client/v3/register".into(), body, None)
        };
        let ta = register(&ca_client, "alice").await?["access_token"].as_str().unwrap_or("").to_string();
        let tb = register(&cb, "bob").await?["access_token"].as_str().unwrap_or("").to_string();
        let room = call(&ca_client, "POST", "/_matrix/client/v3/createRoom".into(), serde_json::json!({"preset": "public_chat", "name": "across"}), Some(ta.clone()))
            .await?["room_id"].as_str().unwrap_or("").to_string();
        let enc = room.replace('!', "%21").replace(':', "%3A");
        call(&cb, "POST", format!("/_matrix/client/v3/join/{enc}?via={name_a}"), serde_json::json!({}), Some(tb.clone())).await?;
        let name = call(&cb, "GET", format!("/_matrix/client/v3/rooms/{enc}/state/m.room.name/"), serde_json::Value::Null, Some(tb.clone())).await?;
        if name["name"] != "across" {
            return Err(format!("the joined room's state: {name}"));
        }
        call(&ca_client, "PUT", format!("/_matrix/client/v3/rooms/{enc}/send/m.room.message/t1"), serde_json::json!({"msgtype": "m.text", "body": "from a"}), Some(ta.clone())).await?;
        call(&cb, "PUT", format!("/_matrix/client/v3/rooms/{enc}/send/m.room.message/t1"), serde_json::json!({"msgtype": "m.text", "body": "from b"}), Some(tb.clone())).await?;
        // Each side sees both messages (delivery is asynchronous: look for up to 10 s).
        for (c, t) in [(&ca_client, &ta), (&cb, &tb)] {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                let msgs = call(c, "GET", format!("/_matrix/client/v3/rooms/{enc}/messages?dir=b&limit=50"), serde_json::Value::Null, Some(t.clone())).await?;
                let bodies: Vec<&str> = msgs["chunk"].as_array().into_iter().flatten().filter_map(|e| e["content"]["body"].as_str()).collect();
                if bodies.contains(&"from a") && bodies.contains(&"from b") {
                    break;
                }
                if std::time::Instant::now() > deadline {
                    return Err(format!("messages never arrived: {bodies:?}"));
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
        Ok(())
    });
    let _ = a.kill();
    let _ = b.kill();
    let _ = (a.wait(), b.wait());
    result.expect("the two servers federate");
}

/// A reference server federating on disk (`serve --db DIR/hs.db`) on the given ports, trusting
/// the test authority `ca` (clients reach it on `client_port`): the process, its server name.
fn start_on_disk(
    ca: &Path,
    dir: &Path,
    client_port: u16,
    fed_port: u16,
) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let server_name = format!("127.0.0.1:{fed_port}");
    let mut child = bin()
        .args(["serve", "--addr"])
        .arg(format!("127.0.0.1:{client_port}"))
        .args([
            "--server-name",
            &server_name,
            "--federation-addr",
            &server_name,
        ])
        .arg("--db")
        .arg(dir.join("hs.db"))
        .arg("--tls-authority")
        .arg(ca)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the server starts");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    for line in start_up_lines(&mut lines) {
        assert!(line.contains(&server_name), "{line}");
    }
    std::thread::spawn(move || for _ in lines {});
    (child, server_name)
}

/// A message and a to-device message sent while the other server is down, the sender itself
/// restarted before the other comes back, still reach it: the delivery queue survives the
/// restart (without it, nothing would bring the message, since no later event cites it, nor
/// the to-device message, which is not in any room).
#[test]
fn deliveries_survive_a_restart_of_both_servers() {
    let dir = temp("fed-restart");
    let ca = dir.join("ca");
    let out = bin()
        .arg("federation-ca")
        .arg("--out")
        .arg(&ca)
        .output()
        .expect("runs");
    assert!(out.status.success());
    let (dir_a, dir_b) = (dir.join("a"), dir.join("b"));
    std::fs::create_dir_all(&dir_a).expect("dir");
    std::fs::create_dir_all(&dir_b).expect("dir");
    let ports_a = (free_port(), free_port());
    let ports_b = (free_port(), free_port());
    let (mut a, name_a) = start_on_disk(&ca, &dir_a, ports_a.0, ports_a.1);
    let (mut b, name_b) = start_on_disk(&ca, &dir_b, ports_b.0, ports_b.1);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let result = rt.block_on(async {
        let ta = cs_register(ports_a.0, "alice").await?;
        let tb = cs_register(ports_b.0, "bob").await?;
        let room = cs_call(
            ports_a.0,
            "POST",
            "/_matrix/client/v3/createRoom".into(),
            serde_json::json!({"preset": "public_chat"}),
            Some(ta.clone()),
        )
        .await?["room_id"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let enc = room.replace('!', "%21").replace(':', "%3A");
        cs_call(
            ports_b.0,
            "POST",
            format!("/_matrix/client/v3/join/{enc}?via={name_a}"),
            serde_json::json!({}),
            Some(tb.clone()),
        )
        .await?;
        Ok::<_, String>((ta, tb, enc))
    });
    let (ta, tb, enc) = match result {
        Ok(x) => x,
        Err(e) => {
            let _ = (a.kill(), b.kill());
            panic!("set-up: {e}");
        }
    };
    // b goes down; a's message cannot be delivered; then a restarts, and b comes back.
    let _ = b.kill();
    let _ = b.wait();
    let sent = rt.block_on(cs_call(
        ports_a.0,
        "PUT",
        format!("/_matrix/client/v3/rooms/{enc}/send/m.room.message/t1"),
        serde_json::json!({"msgtype": "m.text", "body": "while b was down"}),
        Some(ta.clone()),
    ));
    // A to-device message too: it must arrive (EDUs of that kind are kept until delivered).
    let to_device = rt.block_on(cs_call(
        ports_a.0,
        "PUT",
        "/_matrix/client/v3/sendToDevice/org.mxconform.restart/td1".into(),
        serde_json::json!({"messages": {format!("@bob:{name_b}"): {"*": {"note": "kept"}}}}),
        Some(ta.clone()),
    ));
    let _ = a.kill();
    let _ = a.wait();
    let (mut b, _) = start_on_disk(&ca, &dir_b, ports_b.0, ports_b.1);
    let (mut a, _) = start_on_disk(&ca, &dir_a, ports_a.0, ports_a.1);
    let arrived = rt.block_on(async {
        sent?;
        to_device?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        let mut device_message = false;
        loop {
            let sync = cs_call(ports_b.0,
                "GET",
                "/_matrix/client/v3/sync?timeout=0".into(),
                serde_json::Value::Null,
                Some(tb.clone()),
            )
            .await?;
            device_message |= sync["to_device"]["events"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["type"] == "org.mxconform.restart" && e["content"]["note"] == "kept");
            let msgs = cs_call(ports_b.0,
                "GET",
                format!("/_matrix/client/v3/rooms/{enc}/messages?dir=b&limit=50"),
                serde_json::Value::Null,
                Some(tb.clone()),
            )
            .await?;
            let bodies: Vec<String> = msgs["chunk"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["content"]["body"].as_str().map(str::to_string))
                .collect();
            if bodies.iter().any(|b| b == "while b was down") && device_message {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(format!(
                    "not everything arrived: messages {bodies:?}, the to-device message: {device_message}"
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    });
    let _ = (a.kill(), b.kill());
    let _ = (a.wait(), b.wait());
    let _ = std::fs::remove_dir_all(&dir);
    arrived.expect("the queued message is delivered after the restarts");
}

/// A name server on loopback for the discovery test: `records` SRV answers (name -> target,
/// port) and A answers (name -> 127.0.0.1), nothing for other names. Answers until the test
/// ends; returns its address.
fn dns_server(srv: Vec<(String, String, u16)>, a: Vec<String>) -> std::net::SocketAddr {
    use simple_dns::rdata::{RData, A, SRV};
    use simple_dns::{Name, Packet, ResourceRecord, CLASS};
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("a UDP port");
    let addr = sock.local_addr().expect("its address");
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let Ok(query) = Packet::parse(&buf[..n]) else {
                continue;
            };
            let mut reply = Packet::new_reply(query.id());
            for q in &query.questions {
                let qname = q.qname.to_string();
                let qname = qname.trim_end_matches('.');
                reply.questions.push(q.clone());
                for (name, target, port) in srv.iter().filter(|(n, _, _)| n == qname) {
                    reply.answers.push(ResourceRecord::new(
                        Name::new_unchecked(name),
                        CLASS::IN,
                        60,
                        RData::SRV(SRV {
                            priority: 10,
                            weight: 5,
                            port: *port,
                            target: Name::new_unchecked(target),
                        }),
                    ));
                }
                let wants_a = q.qtype == simple_dns::QTYPE::TYPE(simple_dns::TYPE::A);
                for name in a.iter().filter(|n| *n == qname && wants_a) {
                    reply.answers.push(ResourceRecord::new(
                        Name::new_unchecked(name),
                        CLASS::IN,
                        60,
                        RData::A(A {
                            address: u32::from(std::net::Ipv4Addr::LOCALHOST),
                        }),
                    ));
                }
            }
            if let Ok(bytes) = reply.build_bytes_vec() {
                let _ = sock.send_to(&bytes, from);
            }
        }
    });
    addr
}

/// Server discovery through SRV: a server whose name is a bare host (no port, no delegation)
/// is found through its `_matrix-fed._tcp` record, which names another host and port; the
/// certificate is checked for the server's name, not the target's. A user of the first server
/// joins a room of the second through it, and a message comes back.
#[test]
fn a_bare_server_name_is_found_through_its_srv_record() {
    let dir = temp("fed-srv");
    let ca = dir.join("ca");
    let out = bin()
        .arg("federation-ca")
        .arg("--out")
        .arg(&ca)
        .output()
        .expect("runs");
    assert!(out.status.success());
    let b_fed = free_port();
    let dns = dns_server(
        vec![(
            "_matrix-fed._tcp.far-away.test".into(),
            "srv-target.test".into(),
            b_fed,
        )],
        vec!["srv-target.test".into()],
    );
    let spawn = |mut args: Vec<String>| {
        args.extend(["--tls-authority".to_string(), ca.display().to_string()]);
        spawn_serve(args)
    };
    let (a_port, a_fed, b_port) = (free_port(), free_port(), free_port());
    let name_a = format!("127.0.0.1:{a_fed}");
    let mut a = spawn(vec![
        "--addr".into(),
        format!("127.0.0.1:{a_port}"),
        "--server-name".into(),
        name_a.clone(),
        "--federation-addr".into(),
        name_a.clone(),
        "--dns-server".into(),
        dns.to_string(),
    ]);
    let mut b = spawn(vec![
        "--addr".into(),
        format!("127.0.0.1:{b_port}"),
        "--server-name".into(),
        "far-away.test".into(),
        "--federation-addr".into(),
        format!("127.0.0.1:{b_fed}"),
    ]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let result = rt.block_on(async {
        let ta = cs_register(a_port, "alice").await?;
        let tb = cs_register(b_port, "bob").await?;
        let room = cs_call(
            b_port,
            "POST",
            "/_matrix/client/v3/createRoom".into(),
            serde_json::json!({"preset": "public_chat", "name": "far"}),
            Some(tb.clone()),
        )
        .await?["room_id"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let enc = room.replace('!', "%21").replace(':', "%3A");
        cs_call(
            a_port,
            "POST",
            format!("/_matrix/client/v3/join/{enc}?via=far-away.test"),
            serde_json::json!({}),
            Some(ta.clone()),
        )
        .await?;
        cs_call(
            b_port,
            "PUT",
            format!("/_matrix/client/v3/rooms/{enc}/send/m.room.message/t1"),
            serde_json::json!({"msgtype": "m.text", "body": "from far away"}),
            Some(tb.clone()),
        )
        .await?;
        wait_for_message(a_port, &enc, &ta, "from far away").await
    });
    let _ = (a.kill(), b.kill());
    let _ = (a.wait(), b.wait());
    let _ = std::fs::remove_dir_all(&dir);
    result.expect("the server found through SRV federates");
}

/// `mxconform serve --in-memory` with `args`, once it has said where it listens (both lines).
fn spawn_serve(args: Vec<String>) -> std::process::Child {
    use std::io::{BufRead, BufReader};
    let mut child = bin()
        .args(["serve", "--in-memory"])
        .args(&args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the server starts");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    start_up_lines(&mut lines);
    std::thread::spawn(move || for _ in lines {});
    child
}

/// Two servers with self-made certificates (`--tls-self-signed`) federate when each accepts
/// any certificate (`--federation-insecure`): a join through the other and a message back.
#[test]
fn servers_with_self_signed_certificates_federate_insecurely() {
    let ports = [free_port(), free_port(), free_port(), free_port()];
    let name = |i: usize| format!("127.0.0.1:{}", ports[i]);
    let mut children: Vec<std::process::Child> = [(0, 1), (2, 3)]
        .iter()
        .map(|&(c, f)| {
            spawn_serve(vec![
                "--addr".into(),
                format!("127.0.0.1:{}", ports[c]),
                "--server-name".into(),
                name(f),
                "--federation-addr".into(),
                name(f),
                "--tls-self-signed".into(),
                "--federation-insecure".into(),
            ])
        })
        .collect();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let result = rt.block_on(async {
        let ta = cs_register(ports[0], "alice").await?;
        let tb = cs_register(ports[2], "bob").await?;
        let room = cs_call(
            ports[0],
            "POST",
            "/_matrix/client/v3/createRoom".into(),
            serde_json::json!({"preset": "public_chat"}),
            Some(ta.clone()),
        )
        .await?["room_id"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let enc = room.replace('!', "%21").replace(':', "%3A");
        cs_call(
            ports[2],
            "POST",
            format!("/_matrix/client/v3/join/{enc}?via={}", name(1)),
            serde_json::json!({}),
            Some(tb.clone()),
        )
        .await?;
        cs_call(
            ports[2],
            "PUT",
            format!("/_matrix/client/v3/rooms/{enc}/send/m.room.message/t1"),
            serde_json::json!({"msgtype": "m.text", "body": "self-signed"}),
            Some(tb.clone()),
        )
        .await?;
        wait_for_message(ports[0], &enc, &ta, "self-signed").await
    });
    for c in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
    result.expect("servers with self-signed certificates federate");
}

/// Keys through a notary: a server that cannot reach another one (its name resolves nowhere
/// for it) gets that server's keys from the notary it trusts (`--key-notary`), which can reach
/// it; the document must carry both the server's and the notary's signatures. Here the other
/// server's user joins a room through the first, which must check the signed requests (without
/// the notary, the first answers 401: it cannot fetch the keys).
#[test]
fn keys_come_through_a_notary_when_the_server_cannot_be_reached() {
    let dir = temp("fed-notary");
    let ca = dir.join("ca");
    let out = bin()
        .arg("federation-ca")
        .arg("--out")
        .arg(&ca)
        .output()
        .expect("runs");
    assert!(out.status.success());
    let [a_port, a_fed, n_port, n_fed, b_port, b_fed] = [0; 6].map(|_| free_port());
    // The notary finds b.test through SRV; the first server's name server knows nothing.
    let good = dns_server(
        vec![("_matrix-fed._tcp.b.test".into(), "srv-b.test".into(), b_fed)],
        vec!["srv-b.test".into()],
    );
    let empty = dns_server(Vec::new(), Vec::new());
    let ca_arg = ca.display().to_string();
    let serve = |port: u16, name: String, fed: u16, extra: Vec<String>| {
        let mut args = vec![
            "--addr".to_string(),
            format!("127.0.0.1:{port}"),
            "--server-name".into(),
            name,
            "--federation-addr".into(),
            format!("127.0.0.1:{fed}"),
            "--tls-authority".into(),
            ca_arg.clone(),
        ];
        args.extend(extra);
        spawn_serve(args)
    };
    let name_a = format!("127.0.0.1:{a_fed}");
    let name_n = format!("127.0.0.1:{n_fed}");
    let mut children = vec![
        serve(
            a_port,
            name_a.clone(),
            a_fed,
            vec![
                "--dns-server".into(),
                empty.to_string(),
                "--key-notary".into(),
                name_n.clone(),
            ],
        ),
        serve(
            n_port,
            name_n.clone(),
            n_fed,
            vec!["--dns-server".into(), good.to_string()],
        ),
        serve(b_port, "b.test".into(), b_fed, Vec::new()),
    ];
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let result = rt.block_on(async {
        let ta = cs_register(a_port, "alice").await?;
        let tb = cs_register(b_port, "bob").await?;
        let room = cs_call(
            a_port,
            "POST",
            "/_matrix/client/v3/createRoom".into(),
            serde_json::json!({"preset": "public_chat", "name": "notarised"}),
            Some(ta.clone()),
        )
        .await?["room_id"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let enc = room.replace('!', "%21").replace(':', "%3A");
        cs_call(
            b_port,
            "POST",
            format!("/_matrix/client/v3/join/{enc}?via={name_a}"),
            serde_json::json!({}),
            Some(tb.clone()),
        )
        .await?;
        let members = cs_call(
            a_port,
            "GET",
            format!("/_matrix/client/v3/rooms/{enc}/joined_members"),
            serde_json::Value::Null,
            Some(ta.clone()),
        )
        .await?;
        if members["joined"].get("@bob:b.test").is_none() {
            return Err(format!("bob is not joined on the first server: {members}"));
        }
        Ok(())
    });
    for c in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
    result.expect("the keys came through the notary");
}

/// The two start-up lines of `serve` (where it listens, where it federates), skipping the log
/// lines that may come before them.
fn start_up_lines(lines: &mut impl Iterator<Item = std::io::Result<String>>) -> Vec<String> {
    let mut found = Vec::new();
    while found.len() < 2 {
        let line = lines.next().expect("start-up lines").expect("readable");
        if line.starts_with("mxconform reference server") || line.starts_with("federation on") {
            found.push(line);
        }
    }
    found
}

/// `serve --workers N`: the request threads are chosen (any number from one, whatever the
/// machine has); none is refused with the flag's range.
#[test]
fn serve_takes_a_number_of_workers_from_one() {
    let out = bin()
        .args(["serve", "--in-memory", "--workers", "0"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--workers") && err.contains("1..="), "{err}");
    let port = free_port();
    let mut child = serve_plain(port, &["--workers".into(), "3".into()]);
    let answer = raw_http(
        port,
        b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let _ = child.kill();
    let _ = child.wait();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// `serve` logs a line per request (method, operation, user, status, duration), here as JSON.
#[test]
fn serve_logs_each_request_as_json() {
    let port = free_port();
    let args = ["--server-name", "logs.test", "--log-format", "json"].map(String::from);
    let (mut child, mut lines) = serve_logging(port, &args);
    raw_http(
        port,
        b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let line = lines.next().expect("a log line").expect("readable");
    let _ = child.kill();
    let _ = child.wait();
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["level"], "INFO", "{line}");
    assert_eq!(v["fields"]["operation"], "getVersions", "{line}");
    assert_eq!(v["fields"]["method"], "GET", "{line}");
    assert_eq!(v["fields"]["status"], 200, "{line}");
    assert!(v["fields"]["ms"].as_f64().is_some(), "{line}");
}

/// The request log line is written after the answer (`http::LoggedIo`): every answered
/// request of a kept-alive connection still gets its line, in order, the last one when the
/// connection closes.
#[test]
fn serve_logs_every_request_of_a_kept_alive_connection_in_order() {
    let port = free_port();
    let (mut child, lines) = serve_logging(port, &["--log-format".into(), "json".into()]);
    let answer = raw_http(
        port,
        b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\n\r\nGET /_matrix/client/v3/nothing-here HTTP/1.1\r\nHost: x\r\n\r\nGET /_matrix/client/v3/capabilities HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let got: Vec<serde_json::Value> = lines
        .take(3)
        .map(|l| serde_json::from_str(&l.expect("readable")).expect("a JSON line"))
        .collect();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 3, "{answer}");
    let seen: Vec<(String, u64)> = got
        .iter()
        .map(|v| {
            (
                v["fields"]["operation"].as_str().unwrap_or("").to_string(),
                v["fields"]["status"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("getVersions".to_string(), 200),
            ("-".to_string(), 404),
            ("getCapabilities".to_string(), 401),
        ]
    );
}

/// `serve --config FILE`: the file's options apply, a flag given too overrides the file, and
/// the TURN password comes from the environment (never the command line).
#[test]
fn serve_reads_a_config_file_flags_override_it_and_secrets_come_from_the_environment() {
    use std::io::{BufRead, BufReader};
    let dir = temp("config");
    let port = free_port();
    let file = dir.join("homeserver.toml");
    std::fs::write(
        &file,
        format!(
            "server_name = \"conf.test\"\naddr = \"127.0.0.1:{port}\"\nin_memory = true\nturn_uri = [\"turn:turn.conf.test:3478\"]\nturn_username = \"turnuser\"\nturn_ttl = 100\n"
        ),
    )
    .expect("writes");
    let mut child = bin()
        .arg("serve")
        .arg("--config")
        .arg(&file)
        .args(["--turn-ttl", "60"])
        .env("MXCONFORM_TURN_PASSWORD", "from-the-environment")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("serve starts");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let start = lines
        .by_ref()
        .map(|l| l.expect("readable"))
        .find(|l| l.starts_with("mxconform reference server"))
        .expect("a start-up line");
    std::thread::spawn(move || for _ in lines {});
    let request = |req: String| {
        let answer = raw_http(port, req.as_bytes());
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        serde_json::from_str::<serde_json::Value>(&body).unwrap_or(serde_json::Value::Null)
    };
    let body = r#"{"username":"u1","password":"pw-12345678","auth":{"type":"m.login.dummy"}}"#;
    let reg = request(format!(
        "POST /_matrix/client/v3/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    let token = reg["access_token"].as_str().unwrap_or("").to_string();
    let turn = request(format!(
        "GET /_matrix/client/v3/voip/turnServer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    ));
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        start.contains("conf.test") && start.contains("in memory"),
        "{start}"
    );
    assert_eq!(turn["uris"][0], "turn:turn.conf.test:3478", "{turn}");
    assert_eq!(turn["username"], "turnuser", "{turn}");
    assert_eq!(turn["password"], "from-the-environment", "{turn}");
    assert_eq!(turn["ttl"], 60, "the flag overrides the file: {turn}");
}

/// A client-server request to the server listening on `port` of 127.0.0.1: the answer of a
/// 200, else what went wrong.
async fn cs_call(
    port: u16,
    method: &'static str,
    path: String,
    body: serde_json::Value,
    token: Option<String>,
) -> Result<serde_json::Value, String> {
    use mxconform_harness::client::{Body, Client, Limits};
    let limits = Limits {
        request_timeout: std::time::Duration::from_secs(30),
        ..Limits::default()
    };
    let c = Client::new(&format!("http://127.0.0.1:{port}"), limits).map_err(|e| e.to_string())?;
    let r = c
        .send(
            method,
            &path,
            &[],
            Body::Json(body),
            token.as_deref(),
            None,
            Default::default(),
        )
        .await
        .map_err(|e| format!("{method} {path}: {e}"))?;
    if r.status != 200 {
        return Err(format!("{method} {path}: {} {}", r.status, r.body));
    }
    Ok(r.body)
}

/// Registers `user` on the server on `port`: its access token.
async fn cs_register(port: u16, user: &str) -> Result<String, String> {
    let body =
        serde_json::json!({"username": user, "password": "pw", "auth": {"type": "m.login.dummy"}});
    let answer = cs_call(
        port,
        "POST",
        "/_matrix/client/v3/register".into(),
        body,
        None,
    )
    .await?;
    Ok(answer["access_token"].as_str().unwrap_or("").to_string())
}

/// Waits (10 s at most) until `token`'s /messages of `room` (percent-encoded) on the server on
/// `port` shows a message whose body is `text`.
async fn wait_for_message(port: u16, room: &str, token: &str, text: &str) -> Result<(), String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let path = format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50");
        let msgs = cs_call(
            port,
            "GET",
            path,
            serde_json::Value::Null,
            Some(token.to_string()),
        )
        .await?;
        let bodies: Vec<&str> = msgs["chunk"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["content"]["body"].as_str())
            .collect();
        if bodies.contains(&text) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("the message never arrived: {bodies:?}"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// `mxconform serve` on 127.0.0.1:`port` with `args` (no federation), once it says it listens.
fn serve_plain(port: u16, args: &[String]) -> std::process::Child {
    let (child, lines) = serve_logging(port, args);
    std::thread::spawn(move || for _ in lines {});
    child
}

/// `mxconform serve --in-memory` on 127.0.0.1:`port` with `args`, once it says it listens,
/// and the lines it logs after that.
fn serve_logging(
    port: u16,
    args: &[String],
) -> (
    std::process::Child,
    std::io::Lines<std::io::BufReader<std::process::ChildStderr>>,
) {
    use std::io::{BufRead, BufReader};
    let mut child = bin()
        .args(["serve", "--in-memory", "--addr"])
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("serve starts");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    lines
        .by_ref()
        .map(|l| l.expect("readable"))
        .find(|l| l.starts_with("mxconform reference server"))
        .expect("a start-up line");
    (child, lines)
}

/// Writes `request` (whole HTTP/1.1 requests, the last with `Connection: close`) to a new
/// connection to 127.0.0.1:`port`; everything it answers.
fn raw_http(port: u16, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connects");
    sock.write_all(request).expect("writes");
    let mut answer = String::new();
    let _ = sock.read_to_string(&mut answer);
    answer
}

/// A server on 127.0.0.1 (TLS with `tls`, else plain) answering every request with `answer`;
/// its port and how many connections it accepted.
async fn answering(
    tls: Option<std::sync::Arc<tokio_rustls::rustls::ServerConfig>>,
    answer: String,
) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let port = listener.local_addr().expect("its address").port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = hits.clone();
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let (acceptor, answer) = (acceptor.clone(), answer.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                match acceptor {
                    Some(a) => {
                        let Ok(mut s) = a.accept(sock).await else {
                            return;
                        };
                        let _ = s.read(&mut buf).await;
                        let _ = s.write_all(answer.as_bytes()).await;
                        let _ = s.shutdown().await;
                    }
                    None => {
                        let mut s = sock;
                        let _ = s.read(&mut buf).await;
                        let _ = s.write_all(answer.as_bytes()).await;
                    }
                }
            });
        }
    });
    (port, hits)
}

/// `serve`'s requests to other services (issue 15): an application service on HTTPS with a
/// certificate of a test authority (`--outbound-ca`) is reached; e-mail goes over STARTTLS
/// (`--smtp-tls required`) with Date and Message-ID headers; a preview of a name that resolves
/// to loopback is refused where the connection is made (the page is never connected to), and
/// reached once `--outbound-allow` names the address.
#[test]
fn serve_reaches_https_services_mails_over_starttls_and_refuses_loopback_previews() {
    use std::sync::atomic::Ordering;
    let dir = temp("outbound");
    let ca = mxconform_harness::federation::tls::Authority::load_or_create(&dir.join("ca"))
        .expect("an authority");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &ca.cert_pem).expect("writes");
    let (cert, key) = ca.issue_pem(&["localhost"]).expect("a certificate");
    let tls = mxconform_server::tls_config(&cert, &key).expect("TLS");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let page = "<html><head><title>Inside</title></head></html>";
    let (as_port, as_hits, web_port, web_hits, smtp, mailbox) = rt.block_on(async {
        let (as_port, as_hits) = answering(
            Some(tls.clone()),
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}".into(),
        )
        .await;
        let (web_port, web_hits) = answering(
            None,
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            ),
        )
        .await;
        let mailbox = std::sync::Arc::new(mxconform_harness::peers::Mailbox::default());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let smtp = l.local_addr().expect("its address");
        tokio::spawn(mxconform_harness::mail_sink::accept(
            l,
            mailbox.clone(),
            Some(tls.clone()),
        ));
        (as_port, as_hits, web_port, web_hits, smtp, mailbox)
    });
    let registration = dir.join("bridge.yaml");
    std::fs::write(
        &registration,
        format!(
            "id: tls-bridge\nurl: \"https://localhost:{as_port}\"\nas_token: \"tls-as-token\"\nhs_token: \"tls-hs-token\"\nsender_localpart: \"tlsbridge\"\nnamespaces:\n  users: []\n  aliases: []\n  rooms: []\n"
        ),
    )
    .expect("writes");
    let port = free_port();
    let s = |x: &str| x.to_string();
    let mut child = serve_plain(
        port,
        &[
            s("--server-name"),
            s("out.test"),
            s("--appservice"),
            registration.display().to_string(),
            s("--outbound-ca"),
            ca_file.display().to_string(),
            s("--smtp-relay"),
            format!("localhost:{}", smtp.port()),
            s("--smtp-tls"),
            s("required"),
            s("--url-preview"),
        ],
    );
    let allowed_port = free_port();
    let mut allowed = serve_plain(
        allowed_port,
        &[
            s("--url-preview"),
            s("--outbound-allow"),
            s("127.0.0.1"),
            s("--outbound-allow"),
            s("::1"),
        ],
    );
    let preview =
        format!("/_matrix/client/v1/media/preview_url?url=http%3A%2F%2Flocalhost%3A{web_port}%2F");
    let result: Result<(), String> = rt.block_on(async {
        let ping = cs_call(
            port,
            "POST",
            "/_matrix/client/v1/appservice/tls-bridge/ping".into(),
            serde_json::json!({"transaction_id": "t1"}),
            Some("tls-as-token".into()),
        )
        .await?;
        if !ping["duration_ms"].is_u64() || as_hits.load(Ordering::SeqCst) == 0 {
            return Err(format!("the HTTPS service was not reached: {ping}"));
        }
        let token = cs_register(port, "mailer").await?;
        cs_call(
            port,
            "POST",
            "/_matrix/client/v3/account/3pid/email/requestToken".into(),
            serde_json::json!({"client_secret": "cs-1", "email": "who@example.org", "send_attempt": 1}),
            Some(token.clone()),
        )
        .await?;
        let mail = mailbox
            .take("who@example.org", std::time::Duration::from_secs(10))
            .await?;
        let headers = mail.headers.ok_or("the mail has no headers")?;
        if !headers.tls || headers.date.is_none() || !headers.missing().is_empty() {
            return Err(format!("the mail was not as expected: {headers:?}"));
        }
        if !headers
            .message_id
            .as_deref()
            .is_some_and(|m| m.ends_with("@out.test"))
        {
            return Err(format!("the Message-ID is not the server's: {headers:?}"));
        }
        match cs_call(port, "GET", preview.clone(), serde_json::Value::Null, Some(token)).await {
            Err(e) if e.contains("403") && e.contains("M_FORBIDDEN") && e.contains("127.0.0.1") => {}
            other => return Err(format!("the loopback preview was not refused: {other:?}")),
        }
        if web_hits.load(Ordering::SeqCst) != 0 {
            return Err("the refused preview connected to the page".into());
        }
        let token = cs_register(allowed_port, "viewer").await?;
        let og = cs_call(allowed_port, "GET", preview.clone(), serde_json::Value::Null, Some(token)).await?;
        if og["og:title"] != "Inside" || web_hits.load(Ordering::SeqCst) == 0 {
            return Err(format!("the allowed preview did not reach the page: {og}"));
        }
        Ok(())
    });
    let _ = (child.kill(), allowed.kill());
    let _ = (child.wait(), allowed.wait());
    let _ = std::fs::remove_dir_all(&dir);
    result.expect("outbound requests as configured");
}

/// The client-server operations that `mxconform mutants` makes no-ops: PUT, POST and DELETE
/// operations the reference server implements.
fn mutated_operations() -> Vec<&'static mxconform_generated::Route> {
    use mxconform_generated::Method;
    mxconform_generated::client_server::ROUTES
        .iter()
        .filter(|r| matches!(r.method, Method::PUT | Method::POST | Method::DELETE))
        .filter(|r| mxconform_server::handlers::IMPLEMENTED.contains(&r.operation_id))
        .collect()
}

#[test]
fn every_mutant_answer_fits_its_schema() {
    use mxconform_harness::validate::{validate, Part};
    let ops = mutated_operations();
    assert!(ops.len() > 60, "{} state-changing operations", ops.len());
    let mut wrong = Vec::new();
    let mut with_schema = 0;
    for r in &ops {
        let (status, body) = mxconform_server::mutant::answer(r, "localhost:8448", None);
        assert!((200..300).contains(&status), "{}: {status}", r.operation_id);
        match validate(r.operation_id, &Part::Response(status), &body) {
            Ok(Some(v)) if !v.is_empty() => wrong.push(format!("{}: {body} {v:?}", r.operation_id)),
            Ok(Some(_)) => with_schema += 1,
            Ok(None) => {}
            Err(e) => wrong.push(format!("{}: {e}", r.operation_id)),
        }
        // Identifiers are well-formed where the schema or the name asks for one.
        for (key, v) in body.as_object().into_iter().flatten() {
            if let (true, Some(id)) = (key.ends_with("room_id"), v.as_str()) {
                assert!(
                    mxconform_generated::ids::RoomId::parse(id).is_ok(),
                    "{}: {key} = {id}",
                    r.operation_id
                );
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "answers that break their schema:\n{}",
        wrong.join("\n")
    );
    assert_eq!(
        with_schema,
        ops.len(),
        "every success answer has a schema to fit"
    );
}

#[test]
fn a_mutant_a_scenario_catches_is_killed() {
    // setRoomTag's mutant stores no tag; tags/user_defined_tag reads the tags back.
    let out = bin()
        .args(["mutants", "--only", "setRoomTag"])
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("killed    setRoomTag: by ") && !l.contains("only by a refusal")),
        "{stdout}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[lines.len() - 2..],
        [
            "mutants: 1 killed, 0 survived",
            "untested: 0 (no scenario exercises the operation)"
        ],
        "{stdout}"
    );
    let unknown = bin()
        .args(["mutants", "--only", "getRoomTags"])
        .output()
        .expect("runs");
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("not a state-changing"));
}
