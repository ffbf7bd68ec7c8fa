//! `mxconform bench pdu`: the room-version core against ruma's signatures and state-res
//! crates, in the same run on the same workload. The workload is made here with the core
//! (messages to hash and sign; a room whose history forks, to authorize and resolve); the peer
//! is a small program written into target/bench/ruma-pdu and built there (ruma is never a
//! dependency of the workspace), reading the workload as JSON. Both sides do the whole job:
//! ruma takes auth chains and the conflicted subgraph as inputs, so the peer computes them as
//! a server would, inside its timing. Results are also compared: the same event ids, the same
//! authorization outcomes, the same resolved states.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use mxconform_pdu::auth::{self, AuthState};
use mxconform_pdu::build::{self, NewEvent, Origin};
use mxconform_pdu::state_res::{self, StateMap};
use mxconform_pdu::{hash, Pdu, RoomVersion, SigningKey};
use serde_json::{json, Value};

use crate::bench::Row;

const PEER_MAIN: &str = include_str!("bench_pdu_peer.rs.txt");

const PEER_TOML: &str = r#"[package]
name = "ruma-pdu-peer"
version = "0.0.0"
edition = "2021"

[dependencies]
ruma-state-res = "0.18"
ruma-signatures = "0.22"
ruma-common = "0.20"
ruma-events = "0.35"
serde_json = { version = "1", features = ["raw_value"] }

[profile.release]
debug = false

[workspace]
"#;

struct Map<'a> {
    events: &'a HashMap<String, Pdu>,
    state: &'a StateMap,
}

impl AuthState for Map<'_> {
    fn get(&self, kind: &str, state_key: &str) -> Option<&Pdu> {
        self.events
            .get(self.state.get(&(kind.to_string(), state_key.to_string()))?)
    }
}

/// A room whose history forks into two branches after a shared prefix; `n` events in all.
struct Dag {
    events: HashMap<String, Pdu>,
    order: Vec<String>,
    heads: Vec<(String, StateMap)>,
}

/// A small deterministic generator (xorshift), so both sides see the same workload each run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn make_dag(v: &'static RoomVersion, n: usize, key: &SigningKey) -> Result<Dag> {
    let origin = Origin {
        server_name: "bench.example",
        key,
    };
    let alice = "@alice:bench.example";
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ n as u64);
    let mut events: HashMap<String, Pdu> = HashMap::new();
    let mut order = Vec::new();
    let mut ts = 1_700_000_000_000i64;
    let mut room_id = "!bench:bench.example".to_string();
    // (head, state, joined users, users with power 50) per branch.
    let mut branches: Vec<(Option<String>, StateMap, Vec<String>, Vec<String>)> =
        vec![(None, StateMap::new(), Vec::new(), Vec::new())];
    let mut next_user = 0usize;
    let add = |b: &mut (Option<String>, StateMap, Vec<String>, Vec<String>),
               events: &mut HashMap<String, Pdu>,
               order: &mut Vec<String>,
               room_id: &mut String,
               new: NewEvent|
     -> Result<()> {
        let prev: Vec<&Pdu> = b.0.iter().map(|h| &events[h]).collect();
        let state = Map {
            events,
            state: &b.1,
        };
        let pdu = build::build(v, room_id, new, &prev, &state, origin)?;
        let ok = auth::authorize(v, &pdu, &state, &|_| true).is_ok();
        if !ok {
            bail!("the generator made an event the rules refuse: {}", pdu.json);
        }
        if pdu.is("m.room.create", "") {
            *room_id = pdu.room_id.clone();
        }
        if let Some(k) = &pdu.state_key {
            b.1.insert((pdu.kind.clone(), k.clone()), pdu.event_id.clone());
        }
        b.0 = Some(pdu.event_id.clone());
        order.push(pdu.event_id.clone());
        events.insert(pdu.event_id.clone(), pdu);
        Ok(())
    };
    let pl = |v: &RoomVersion, users: &[String]| {
        let mut map = serde_json::Map::new();
        if !v.room_id_is_create {
            map.insert(alice.to_string(), json!(100));
        }
        for u in users {
            map.insert(u.clone(), json!(50));
        }
        json!({"users": map, "state_default": 50, "events_default": 0, "ban": 50, "kick": 50})
    };
    {
        let b = &mut branches[0];
        ts += 1;
        add(
            b,
            &mut events,
            &mut order,
            &mut room_id,
            NewEvent::new(
                "m.room.create",
                Some(""),
                alice,
                json!({"room_version": v.id, "creator": alice}),
                ts,
            ),
        )?;
        ts += 1;
        add(
            b,
            &mut events,
            &mut order,
            &mut room_id,
            NewEvent::new(
                "m.room.member",
                Some(alice),
                alice,
                json!({"membership": "join"}),
                ts,
            ),
        )?;
        ts += 1;
        add(
            b,
            &mut events,
            &mut order,
            &mut room_id,
            NewEvent::new("m.room.power_levels", Some(""), alice, pl(v, &[]), ts),
        )?;
        ts += 1;
        add(
            b,
            &mut events,
            &mut order,
            &mut room_id,
            NewEvent::new(
                "m.room.join_rules",
                Some(""),
                alice,
                json!({"join_rule": "public"}),
                ts,
            ),
        )?;
    }
    let shared = n / 2;
    while order.len() < n {
        if order.len() == shared && branches.len() == 1 {
            let copy = branches[0].clone();
            branches.push(copy);
        }
        let which = if branches.len() == 1 {
            0
        } else {
            (rng.below(2)) as usize
        };
        let b = &mut branches[which];
        ts += 1 + rng.below(3) as i64;
        let roll = rng.below(100);
        let new = if roll < 35 || b.2.len() < 3 {
            next_user += 1;
            let u = format!("@u{next_user}:bench.example");
            b.2.push(u.clone());
            NewEvent::new(
                "m.room.member",
                Some(&u),
                &u,
                json!({"membership": "join"}),
                ts,
            )
        } else if roll < 45 {
            // Alice gives someone power 50; a room keeps at most 20 moderators (the oldest
            // steps down), so the power levels event stays the size real rooms have.
            let u = b.2[rng.below(b.2.len() as u64) as usize].clone();
            if !b.3.contains(&u) {
                b.3.push(u);
                if b.3.len() > 20 {
                    b.3.remove(0);
                }
            }
            NewEvent::new("m.room.power_levels", Some(""), alice, pl(v, &b.3), ts)
        } else if roll < 62 {
            // A topic by alice or a moderator.
            let who = if b.3.is_empty() || rng.below(2) == 0 {
                alice.to_string()
            } else {
                b.3[rng.below(b.3.len() as u64) as usize].clone()
            };
            NewEvent::new(
                "m.room.topic",
                Some(""),
                &who,
                json!({"topic": format!("topic {}", order.len())}),
                ts,
            )
        } else if roll < 67 {
            // Alice kicks or bans someone without power.
            let candidates: Vec<String> =
                b.2.iter().filter(|u| !b.3.contains(u)).cloned().collect();
            if candidates.is_empty() {
                continue;
            }
            let u = candidates[rng.below(candidates.len() as u64) as usize].clone();
            b.2.retain(|x| *x != u);
            let m = if rng.below(2) == 0 { "leave" } else { "ban" };
            NewEvent::new(
                "m.room.member",
                Some(&u),
                alice,
                json!({"membership": m}),
                ts,
            )
        } else {
            let who = b.2[rng.below(b.2.len() as u64) as usize].clone();
            NewEvent::new(
                "m.room.message",
                None,
                &who,
                json!({"msgtype": "m.text", "body": format!("message {} of a benchmark room, long enough to look like one", order.len())}),
                ts,
            )
        };
        add(b, &mut events, &mut order, &mut room_id, new)?;
    }
    let heads = branches
        .into_iter()
        .map(|(h, s, _, _)| (h.unwrap_or_default(), s))
        .collect();
    Ok(Dag {
        events,
        order,
        heads,
    })
}

fn pdu_json(p: &Pdu) -> Value {
    let mut j = p.json.clone();
    j["event_id"] = json!(p.event_id);
    j
}

fn state_json(s: &StateMap) -> Value {
    Value::Array(s.iter().map(|((k, sk), id)| json!([k, sk, id])).collect())
}

fn peer_binary(work: &Path) -> Result<std::path::PathBuf> {
    let root = work.join("ruma-pdu");
    std::fs::create_dir_all(root.join("src"))?;
    std::fs::write(root.join("Cargo.toml"), PEER_TOML)?;
    std::fs::write(root.join("src/main.rs"), PEER_MAIN)?;
    eprintln!("building the ruma peer in {} (once)", root.display());
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--quiet"])
        .current_dir(&root)
        .env("CARGO_TARGET_DIR", root.join("target"))
        .status()
        .context("running cargo for the ruma peer")?;
    if !status.success() {
        bail!("building the ruma peer failed");
    }
    Ok(root.join("target/release/ruma-pdu-peer"))
}

fn micros(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.1} µs", ns / 1e3)
    }
}

fn ratio(peer: f64, ours: f64) -> String {
    format!("{:.1}x", peer / ours)
}

pub fn pdu(work: &Path, version: &str) -> Result<Vec<Row>> {
    let v = RoomVersion::get(version).context("unknown room version")?;
    if v.state_res == mxconform_pdu::version::StateResolution::V1 {
        bail!("ruma resolves state with v2 and v2.1 only: choose room version 2-12");
    }
    let key = SigningKey::generate(Some("bench"))?;
    let origin = Origin {
        server_name: "bench.example",
        key: &key,
    };
    let build_kind = if cfg!(debug_assertions) {
        " (debug build: use --release)"
    } else {
        ""
    };
    // 1. Messages to hash, sign and name.
    let messages = 10_000usize;
    let room_id = if v.room_id_is_create {
        "!Nhcu5BS-UMnFX7hBVfVSoXiD7OgH6iRT-xyIuqDnpYQ".to_string()
    } else {
        "!bench:bench.example".to_string()
    };
    let unsigned: Vec<Value> = (0..messages)
        .map(|i| {
            let mut e = json!({
                "type": "m.room.message", "sender": format!("@u{}:bench.example", i % 97),
                "room_id": room_id, "origin_server_ts": 1_700_000_000_000i64 + i as i64,
                "depth": 10 + i, "prev_events": [format!("$prev{i}")], "auth_events": ["$create", "$power", format!("$member{}", i % 97)],
                "content": {"msgtype": "m.text", "body": format!("message {i}: the quick brown fox jumps over the lazy dog, then again and again"), "m.mentions": {}},
            });
            if v.event_ids == mxconform_pdu::version::EventIdFormat::Opaque {
                e["event_id"] = json!(format!("$m{i}:bench.example"));
            }
            e
        })
        .collect();
    // Each figure is the best of three rounds, on both sides: these machines are shared.
    let mut sign_ns = f64::INFINITY;
    let mut ids = Vec::with_capacity(messages);
    for _ in 0..3 {
        ids.clear();
        // A server signs the event it has just built: the copies are made before the clock starts.
        let mut copies: Vec<Value> = unsigned.clone();
        let t = Instant::now();
        for e in &mut copies {
            // Signing gives the reference hash too: the signed bytes are the ones it hashes.
            let reference = build::hash_and_sign(v, e, origin);
            ids.push(match v.event_ids {
                mxconform_pdu::version::EventIdFormat::Opaque => {
                    hash::event_id(v, e).unwrap_or_default()
                }
                mxconform_pdu::version::EventIdFormat::Base64 => {
                    format!("${}", mxconform_pdu::base64::encode(&reference))
                }
                mxconform_pdu::version::EventIdFormat::UrlSafe => {
                    format!("${}", mxconform_pdu::base64::encode_url_safe(&reference))
                }
            });
        }
        sign_ns = sign_ns.min(t.elapsed().as_nanos() as f64 / messages as f64);
    }

    // 2 and 3. Forked rooms.
    let sizes = [100usize, 1_000, 10_000];
    let mut dags = Vec::new();
    for &n in &sizes {
        dags.push(make_dag(v, n, &key)?);
    }
    let big = dags.last().expect("three sizes");
    let check: Vec<&String> = big.order.iter().collect();
    let auth_rounds = 3;
    let mut auth_ns = f64::INFINITY;
    let mut allowed = 0;
    for _ in 0..auth_rounds {
        let t = Instant::now();
        allowed = 0;
        for id in &check {
            let e = &big.events[*id];
            let auth: Vec<Option<&Pdu>> = e.auth_events.iter().map(|a| big.events.get(a)).collect();
            let create = big.events.get(&hash::create_id_of_room(&e.room_id));
            if auth::authorize_by_auth_events(v, e, &auth, &|_| false, create, &|_| true).is_ok() {
                allowed += 1;
            }
        }
        auth_ns = auth_ns.min(t.elapsed().as_nanos() as f64 / check.len() as f64);
    }

    let mut ours_resolve = Vec::new();
    for (dag, &n) in dags.iter().zip(&sizes) {
        let sets: Vec<StateMap> = dag.heads.iter().map(|(_, s)| s.clone()).collect();
        let runs = (20_000 / n).max(3);
        let mut resolved = StateMap::new();
        let mut ns = f64::INFINITY;
        for _ in 0..runs {
            let t = Instant::now();
            resolved = state_res::resolve(v, &sets, &dag.events)?;
            ns = ns.min(t.elapsed().as_nanos() as f64);
        }
        let conflicted = {
            let (a, b) = (&sets[0], &sets[1]);
            a.iter().filter(|(k, id)| b.get(*k) != Some(*id)).count()
                + b.keys().filter(|k| !a.contains_key(*k)).count()
        };
        ours_resolve.push((n, ns, resolved, conflicted, runs));
    }

    // The peer, on the same workload.
    let workload = json!({
        "room_version": version,
        "unsigned": unsigned,
        "auth": {"events": big.order.iter().map(|id| pdu_json(&big.events[id])).collect::<Vec<_>>(),
                 "check": check, "rounds": auth_rounds},
        "resolve": dags.iter().zip(&ours_resolve).map(|(d, (n, _, _, _, runs))| json!({
            "n": n, "runs": runs,
            "events": d.order.iter().map(|id| pdu_json(&d.events[id])).collect::<Vec<_>>(),
            "state_sets": d.heads.iter().map(|(_, s)| state_json(s)).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    // For profiling either side alone: the workload as the peer reads it.
    let workload_file = work.join("pdu-workload.json");
    std::fs::create_dir_all(work)?;
    std::fs::write(&workload_file, workload.to_string())
        .with_context(|| format!("writing {}", workload_file.display()))?;
    if let Ok(path) = std::env::var("MXCONFORM_BENCH_WORKLOAD") {
        std::fs::copy(&workload_file, &path).with_context(|| format!("writing {path}"))?;
    }
    let peer = peer_binary(work)?;
    let mut child = Command::new(&peer)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", peer.display()))?;
    {
        let mut stdin = child.stdin.take().context("peer stdin")?;
        std::io::Write::write_all(&mut stdin, workload.to_string().as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("the ruma peer failed");
    }
    let p: Value = serde_json::from_slice(&out.stdout).context("the peer's output is not JSON")?;

    let mut rows = Vec::new();
    let peer_ids: Vec<&str> = p["sign_ids"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let same_ids = v.event_ids == mxconform_pdu::version::EventIdFormat::Opaque
        || peer_ids.iter().zip(&ids).all(|(a, b)| *a == b);
    let peer_sign = p["sign_ns"].as_f64().unwrap_or(f64::NAN);
    rows.push(Row {
        name: format!("pdu: content hash + signature + event id per event (v{version}, {messages} messages; ids {}){build_kind}", if same_ids { "equal ruma's" } else { "DIFFER from ruma's" }),
        ours: micros(sign_ns),
        peer: format!("ruma-signatures 0.22: {}", micros(peer_sign)),
        ratio: ratio(peer_sign, sign_ns),
        target: "ahead".into(),
    });
    let peer_auth = p["auth_ns"].as_f64().unwrap_or(f64::NAN);
    let peer_allowed = p["auth_allowed"].as_u64().unwrap_or(0);
    rows.push(Row {
        name: format!(
            "pdu: authorization of an event against its auth events ({} events of a forked room; allowed: {allowed} ours, {peer_allowed} ruma)",
            check.len()
        ),
        ours: micros(auth_ns),
        peer: format!("ruma-state-res 0.18: {}", micros(peer_auth)),
        ratio: ratio(peer_auth, auth_ns),
        target: "ahead".into(),
    });
    if let Some(e) = p["auth_first_error"].as_str() {
        eprintln!("ruma refused an event the core allows: {e}");
    }
    let peer_res: Vec<&Value> = p["resolve"].as_array().into_iter().flatten().collect();
    let algo = if v.room_id_is_create { "v2.1" } else { "v2" };
    for ((n, ns, resolved, conflicted, _), pr) in ours_resolve.iter().zip(&peer_res) {
        let pns = pr["ns"].as_f64().unwrap_or(f64::NAN);
        let ours_state: Vec<Value> = resolved
            .iter()
            .map(|((k, s), id)| json!([k, s, id]))
            .collect();
        let agree = pr["state"].as_array().is_some_and(|s| *s == ours_state);
        rows.push(Row {
            name: format!(
                "state resolution {algo}: forked room of {n} events, {conflicted} conflicted keys (result {} ruma's)",
                if agree { "equals" } else { "DIFFERS from" }
            ),
            ours: micros(*ns),
            peer: format!("ruma-state-res 0.18: {}", micros(pns)),
            ratio: ratio(pns, *ns),
            target: "ahead".into(),
        });
    }
    if let Some(growth) = instruction_growth(&workload_file)? {
        let nlogn = (10_000f64 * 10_000f64.ln()) / (1_000f64 * 1_000f64.ln());
        rows.push(Row {
            name: format!(
                "state resolution growth from 1,000 to 10,000 events, in instructions (callgrind: {:.1}M and {:.1}M per resolution)",
                growth.0 / 1e6,
                growth.1 / 1e6
            ),
            ours: format!("{:.1}x", growth.1 / growth.0),
            peer: "-".into(),
            ratio: "-".into(),
            target: format!("<= {nlogn:.1}x (n log n)"),
        });
    }
    if ours_resolve.len() == 3 && peer_res.len() == 3 {
        let g_ours = ours_resolve[2].1 / ours_resolve[1].1;
        let g_peer = peer_res[2]["ns"].as_f64().unwrap_or(f64::NAN)
            / peer_res[1]["ns"].as_f64().unwrap_or(f64::NAN);
        let nlogn = (10_000f64 * 10_000f64.ln()) / (1_000f64 * 1_000f64.ln());
        rows.push(Row {
            name: "state resolution growth from 1,000 to 10,000 events".into(),
            ours: format!("{g_ours:.1}x"),
            peer: format!("ruma: {g_peer:.1}x"),
            ratio: "-".into(),
            target: format!("<= {nlogn:.1}x (n log n)"),
        });
    }
    Ok(rows)
}

/// Loads case `index` of a workload file and resolves it `runs` times.
pub fn resolve_once(file: &Path, index: usize, runs: usize) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let work: Value = serde_json::from_str(&text)?;
    let v =
        RoomVersion::get(work["room_version"].as_str().unwrap_or("12")).context("room version")?;
    let case = &work["resolve"][index];
    let mut events: HashMap<String, Pdu> = HashMap::new();
    for e in case["events"].as_array().into_iter().flatten() {
        let mut j = e.clone();
        if let Some(m) = j.as_object_mut() {
            if v.event_ids != mxconform_pdu::version::EventIdFormat::Opaque {
                m.remove("event_id");
            }
        }
        let p = Pdu::from_json(v, j)?;
        events.insert(p.event_id.clone(), p);
    }
    let sets: Vec<StateMap> = case["state_sets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            s.as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    let at = |i: usize| t[i].as_str().unwrap_or_default().to_string();
                    ((at(0), at(1)), at(2))
                })
                .collect()
        })
        .collect();
    for _ in 0..runs {
        state_res::resolve(v, &sets, &events)?;
    }
    Ok(())
}

/// Instructions per resolution of the 1,000- and 10,000-event cases, counted by callgrind
/// (repeatable, whatever else the machine does), when valgrind is installed: each case runs
/// once and three times, and the difference halved is one resolution.
fn instruction_growth(workload: &Path) -> Result<Option<(f64, f64)>> {
    let available = Command::new("valgrind")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !available {
        eprintln!("valgrind not found: no instruction counts");
        return Ok(None);
    }
    let me = std::env::current_exe()?;
    let count = |index: usize, runs: usize| -> Result<f64> {
        let out = Command::new("valgrind")
            .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
            .arg(&me)
            .arg("bench-resolve-once")
            .arg(workload)
            .args([index.to_string(), runs.to_string()])
            .output()
            .context("running valgrind")?;
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err
            .lines()
            .find(|l| l.contains("Collected :"))
            .with_context(|| format!("callgrind printed no count: {err}"))?;
        let n: f64 = line
            .rsplit(':')
            .next()
            .unwrap_or("")
            .trim()
            .replace(',', "")
            .parse()
            .context("callgrind's count")?;
        Ok(n)
    };
    eprintln!("counting instructions with callgrind (about a minute)");
    let per = |index| -> Result<f64> { Ok((count(index, 3)? - count(index, 1)?) / 2.0) };
    Ok(Some((per(1)?, per(2)?)))
}
