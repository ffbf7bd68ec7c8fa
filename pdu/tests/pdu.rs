//! The room-version core checked against the spec and against Synapse: the appendix's
//! cryptographic test vectors, property tests, the authorization table
//! (`tests/auth/*.yaml`), the state resolution cases (`tests/state_res/*.yaml`), and real
//! PDUs that Synapse made in rooms of every version (`tests/data/`). The YAML formats are in
//! `tests/README.md`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use mxconform_pdu::auth;
use mxconform_pdu::build::{self, NewEvent, Origin};
use mxconform_pdu::state_res::{self, StateMap};
use mxconform_pdu::version::ALL;
use mxconform_pdu::{base64, canonical, hash, redact, Pdu, RoomVersion, SigningKey};
use serde_json::{json, Value};

fn dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(name)
}

fn yaml_files(name: &str) -> Vec<(String, serde_yaml::Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir(name))
        .unwrap_or_else(|e| panic!("tests/{name}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let v: serde_yaml::Value =
                serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), v)
        })
        .collect()
}

fn to_json(v: &serde_yaml::Value) -> Value {
    serde_json::to_value(v).expect("YAML as JSON")
}

/// `"1-12"`, `"10"`, `[1, 3]`, `"all"` -> room versions.
fn versions(spec: Option<&Value>) -> Vec<&'static RoomVersion> {
    let pick = |n: u64| &ALL[(n - 1) as usize];
    match spec {
        None => ALL.iter().collect(),
        Some(Value::String(s)) if s == "all" => ALL.iter().collect(),
        Some(Value::String(s)) => {
            let (a, b) = s.split_once('-').unwrap_or((s, s));
            (a.trim().parse::<u64>().unwrap()..=b.trim().parse::<u64>().unwrap())
                .map(pick)
                .collect()
        }
        Some(Value::Number(n)) => vec![pick(n.as_u64().unwrap())],
        Some(Value::Array(items)) => items.iter().flat_map(|i| versions(Some(i))).collect(),
        Some(other) => panic!("versions: {other}"),
    }
}

fn in_range(spec: &str, v: &RoomVersion) -> bool {
    let n: u64 = v.id.parse().unwrap();
    let (a, b) = spec.split_once('-').unwrap_or((spec, spec));
    (a.trim().parse::<u64>().unwrap()..=b.trim().parse::<u64>().unwrap()).contains(&n)
}

fn test_key() -> SigningKey {
    let seed = base64::decode("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1").unwrap();
    SigningKey::from_seed(&seed, "1").unwrap()
}

// ---------------------------------------------------------------------------------------
// appendices "Cryptographic Test Vectors": event signing.

#[test]
fn appendix_event_signing_vectors() {
    let key = test_key();
    let origin = Origin {
        server_name: "domain",
        key: &key,
    };
    let v1 = &ALL[0];
    let mut minimal = json!({
        "room_id": "!x:domain", "sender": "@a:domain", "origin": "domain",
        "origin_server_ts": 1000000, "signatures": {}, "hashes": {}, "type": "X",
        "content": {}, "prev_events": [], "auth_events": [], "depth": 3,
        "unsigned": {"age_ts": 1000000}
    });
    build::hash_and_sign(v1, &mut minimal, origin);
    assert_eq!(
        minimal,
        json!({
            "auth_events": [], "content": {}, "depth": 3,
            "hashes": {"sha256": "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"},
            "origin": "domain", "origin_server_ts": 1000000, "prev_events": [],
            "room_id": "!x:domain", "sender": "@a:domain",
            "signatures": {"domain": {"ed25519:1": "KxwGjPSDEtvnFgU00fwFz+l6d2pJM6XBIaMEn81SXPTRl16AqLAYqfIReFGZlHi5KLjAWbOoMszkwsQma+lYAg"}},
            "type": "X", "unsigned": {"age_ts": 1000000}
        })
    );
    let mut message = json!({
        "content": {"body": "Here is the message content"}, "event_id": "$0:domain",
        "origin": "domain", "origin_server_ts": 1000000, "type": "m.room.message",
        "room_id": "!r:domain", "sender": "@u:domain", "signatures": {},
        "unsigned": {"age_ts": 1000000}
    });
    build::hash_and_sign(v1, &mut message, origin);
    assert_eq!(
        message["hashes"]["sha256"],
        "onLKD1bGljeBWQhWZ1kaP9SorVmRQNdN5aM2JYU2n/g"
    );
    assert_eq!(
        message["signatures"]["domain"]["ed25519:1"],
        "Wm+VzmOUOz08Ds+0NTWb1d4CZrVsJSikkeRxh6aCcUwu6pNC78FunoD7KNWzqFn241eYHYMGCA5McEiVPdhzBA"
    );
    assert_eq!(message["unsigned"], json!({"age_ts": 1000000}));
}

// ---------------------------------------------------------------------------------------
// Rooms built event by event, for the authorization table and state resolution.

/// A room under construction: every event built, hashed and signed by the core.
struct Room {
    v: &'static RoomVersion,
    key: SigningKey,
    room_id: String,
    events: HashMap<String, Pdu>,
    /// Name -> event id.
    names: HashMap<String, String>,
    /// State after each event, by id.
    after: HashMap<String, StateMap>,
    rejected: HashMap<String, String>,
    ts: i64,
}

impl state_res::EventSource for Room {
    fn event(&self, id: &str) -> Option<&Pdu> {
        self.events.get(id)
    }
    fn rejected(&self, id: &str) -> bool {
        self.rejected.contains_key(id)
    }
}

struct MapState<'a> {
    room: &'a Room,
    state: &'a StateMap,
}

impl auth::AuthState for MapState<'_> {
    fn get(&self, kind: &str, state_key: &str) -> Option<&Pdu> {
        let id = self.state.get(&(kind.to_string(), state_key.to_string()))?;
        self.room.events.get(id)
    }
}

impl Room {
    fn new(v: &'static RoomVersion) -> Room {
        Room {
            v,
            key: SigningKey::generate(Some("t")).unwrap(),
            room_id: "!room:example.org".into(),
            events: HashMap::new(),
            names: HashMap::new(),
            after: HashMap::new(),
            rejected: HashMap::new(),
            ts: 1_000,
        }
    }

    fn id(&self, name: &str) -> String {
        self.names
            .get(name)
            .cloned()
            .unwrap_or_else(|| panic!("no event named {name}"))
    }

    /// The state before an event with these prev events: the resolution of their states.
    fn state_before(&self, prev: &[String]) -> StateMap {
        let sets: Vec<StateMap> = prev.iter().map(|p| self.after[p].clone()).collect();
        match sets.len() {
            0 => StateMap::new(),
            1 => sets.into_iter().next().unwrap(),
            _ => state_res::resolve(self.v, &sets, self).expect("resolvable"),
        }
    }

    /// Builds an event from a YAML description; `prev` defaults to `last`.
    fn add(&mut self, spec: &Value, last: Option<&str>) -> Pdu {
        let get = |k: &str| spec.get(k);
        let kind = get("type").and_then(Value::as_str).expect("type");
        let state_key = get("state_key").and_then(Value::as_str);
        let sender = get("sender").and_then(Value::as_str).expect("sender");
        let mut content = get("content").cloned().unwrap_or(json!({}));
        if kind == "m.room.create"
            && self.v.create_has_creator
            && content.get("creator").is_none()
            && get("no_creator").is_none()
        {
            content["creator"] = json!(sender);
        }
        if kind == "m.room.create"
            && content.get("room_version").is_none()
            && get("no_room_version").is_none()
        {
            content["room_version"] = json!(self.v.id);
        }
        let prev: Vec<String> = match get("prev") {
            Some(Value::Array(p)) => p.iter().map(|n| self.id(n.as_str().unwrap())).collect(),
            Some(Value::String(p)) => vec![self.id(p)],
            _ => last.map(|l| vec![l.to_string()]).unwrap_or_default(),
        };
        let before = self.state_before(&prev);
        self.ts = get("ts").and_then(Value::as_i64).unwrap_or(self.ts + 1);
        let mut new = NewEvent::new(kind, state_key, sender, content, self.ts);
        if let Some(r) = get("redacts").and_then(Value::as_str) {
            let r = self.id(r);
            if self.v.redacts_in_content {
                new.content["redacts"] = json!(r);
            } else {
                new.redacts = Some(r);
            }
        }
        let prev_pdus: Vec<&Pdu> = prev.iter().map(|p| &self.events[p]).collect();
        let origin_server = mxconform_pdu::ids::server_of(sender).unwrap().to_string();
        let origin = Origin {
            server_name: &origin_server,
            key: &self.key,
        };
        let state = MapState {
            room: self,
            state: &before,
        };
        let mut pdu = build::build(self.v, &self.room_id, new, &prev_pdus, &state, origin)
            .unwrap_or_else(|e| panic!("cannot build {spec}: {e}"));
        // The builder takes the id from the hash it signed; read back, the JSON gives the same.
        let read = Pdu::from_json(self.v, pdu.json.clone()).expect("a built event reads back");
        assert_eq!(
            (&read.event_id, &read.room_id),
            (&pdu.event_id, &pdu.room_id),
            "room version {}",
            self.v.id
        );
        // Auth events named explicitly replace the selection; `event_id` (v1-2) fixes the id,
        // for cases decided by the ids' order or sha1.
        let fixed_id = get("event_id").and_then(Value::as_str);
        if get("auth").is_some() || fixed_id.is_some() {
            let mut json = pdu.json.clone();
            if let Some(id) = fixed_id {
                assert_eq!(
                    self.v.event_ids,
                    mxconform_pdu::version::EventIdFormat::Opaque,
                    "event_id can be chosen in v1-2 only"
                );
                json["event_id"] = json!(id);
            }
            let names: &[Value] = get("auth")
                .and_then(Value::as_array)
                .map_or(&[], Vec::as_slice);
            let refs: Vec<Value> = names
                .iter()
                .map(|n| {
                    let id = self.id(n.as_str().unwrap());
                    if self.v.event_ids == mxconform_pdu::version::EventIdFormat::Opaque {
                        let h = hash::reference_hash(self.v, &self.events[&id].json);
                        json!([id, {"sha256": base64::encode(&h)}])
                    } else {
                        json!(id)
                    }
                })
                .collect();
            if get("auth").is_some() {
                json["auth_events"] = Value::Array(refs);
            }
            if let Some(m) = json.as_object_mut() {
                m.remove("hashes");
                m.remove("signatures");
            }
            build::hash_and_sign(self.v, &mut json, origin);
            pdu = Pdu::from_json(self.v, json).unwrap();
        }
        if pdu.is("m.room.create", "") && self.v.room_id_is_create {
            self.room_id = pdu.room_id.clone();
        }
        // Rejected when its own auth events or the state before it do not allow it.
        let by_auth = {
            let auth: Vec<Option<&Pdu>> =
                pdu.auth_events.iter().map(|a| self.events.get(a)).collect();
            let create = self.events.get(&hash::create_id_of_room(&pdu.room_id));
            auth::authorize_by_auth_events(
                self.v,
                &pdu,
                &auth,
                &|e| self.rejected.contains_key(&e.event_id),
                create,
                &|_| true,
            )
        };
        let by_state = auth::authorize(
            self.v,
            &pdu,
            &MapState {
                room: self,
                state: &before,
            },
            &|_| true,
        );
        let mut after = before;
        // `accepted: true`: this server took the event although the rules refuse it here (as
        // a server with another view of the room would have), so it enters the state.
        let forced = get("accepted").and_then(Value::as_bool) == Some(true);
        match by_auth
            .and(by_state)
            .or_else(|e| if forced { Ok(()) } else { Err(e) })
        {
            Ok(()) => {
                if let Some(k) = &pdu.state_key {
                    after.insert((pdu.kind.clone(), k.clone()), pdu.event_id.clone());
                }
            }
            Err(r) => {
                self.rejected.insert(pdu.event_id.clone(), r.to_string());
            }
        }
        if let Some(name) = get("id").and_then(Value::as_str) {
            self.names.insert(name.to_string(), pdu.event_id.clone());
        }
        self.after.insert(pdu.event_id.clone(), after);
        self.events.insert(pdu.event_id.clone(), pdu.clone());
        pdu
    }
}

// ---------------------------------------------------------------------------------------
// The authorization table: tests/auth/*.yaml.

/// The standard room the table's cases start from, unless they say `room: none`: alice
/// creates it, joins, sets power levels (alice 100, or the case's `power_levels`) and the
/// case's `join_rule` (default public).
fn standard_room(room: &mut Room, case: &Value) -> String {
    let alice = "@alice:example.org";
    let mut last = room.add(&json!({"id": "create", "type": "m.room.create", "state_key": "", "sender": alice, "content": case.get("create").cloned().unwrap_or(json!({}))}), None).event_id;
    last = room.add(&json!({"id": "alice_join", "type": "m.room.member", "state_key": alice, "sender": alice, "content": {"membership": "join"}}), Some(&last)).event_id;
    let pl = case.get("power_levels").cloned().unwrap_or_else(|| {
        if room.v.room_id_is_create {
            json!({"users": {}})
        } else {
            json!({"users": {alice: 100}})
        }
    });
    if !pl.is_null() {
        last = room.add(&json!({"id": "power_levels", "type": "m.room.power_levels", "state_key": "", "sender": alice, "content": pl}), Some(&last)).event_id;
    }
    let rule = case
        .get("join_rule")
        .and_then(Value::as_str)
        .unwrap_or("public");
    let mut jr = json!({"join_rule": rule});
    if let Some(allow) = case.get("allow") {
        jr["allow"] = allow.clone();
    }
    room.add(&json!({"id": "join_rules", "type": "m.room.join_rules", "state_key": "", "sender": alice, "content": jr}), Some(&last)).event_id
}

fn expected_for(expect: &Value, v: &RoomVersion) -> String {
    match expect {
        Value::String(s) => s.clone(),
        Value::Object(m) => m
            .iter()
            .find(|(range, _)| in_range(range, v))
            .map(|(_, e)| e.as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("expect names no outcome for v{}", v.id)),
        other => panic!("expect: {other}"),
    }
}

#[test]
fn authorization_table() {
    let mut failures = Vec::new();
    let mut count = 0;
    let mut rules_seen: BTreeMap<String, usize> = BTreeMap::new();
    for (file, doc) in yaml_files("auth") {
        let doc = to_json(&doc);
        for case in doc["cases"]
            .as_array()
            .unwrap_or_else(|| panic!("{file}: no cases"))
        {
            let name = case["name"].as_str().unwrap_or("?");
            for v in versions(case.get("versions")) {
                count += 1;
                let mut room = Room::new(v);
                let mut last = if case.get("room").and_then(Value::as_str) == Some("none") {
                    None
                } else {
                    let head = standard_room(&mut room, case);
                    if !room.rejected.is_empty() {
                        failures.push(format!(
                            "{file}: {name} (v{}): the standard room's own events were rejected: {:?}",
                            v.id, room.rejected
                        ));
                    }
                    Some(head)
                };
                for e in case
                    .get("state")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let built = room.add(e, last.as_deref());
                    let why = room.rejected.get(&built.event_id);
                    // `rejected: <rule>`: the event must be rejected, by that rule.
                    match (why, e.get("rejected").and_then(Value::as_str)) {
                        (Some(why), Some(rule)) if !why.contains(&format!("({rule})")) => {
                            failures.push(format!(
                                "{file}: {name} (v{}): state event {e} was rejected, not by {rule}: {why}",
                                v.id
                            ))
                        }
                        (None, Some(rule)) => failures.push(format!(
                            "{file}: {name} (v{}): state event {e} was allowed; expected {rule}",
                            v.id
                        )),
                        (Some(why), None) if e.get("may_be_rejected").is_none() => {
                            failures.push(format!(
                                "{file}: {name} (v{}): state event {e} was rejected: {why}",
                                v.id
                            ))
                        }
                        _ => {}
                    }
                    last = Some(built.event_id);
                }
                let event = room.add(&case["event"], last.as_deref());
                let before = room.state_before(&event.prev_events);
                let outcome = auth::authorize(
                    v,
                    &event,
                    &MapState {
                        room: &room,
                        state: &before,
                    },
                    &|s| {
                        case.get("signed_by")
                            .and_then(Value::as_array)
                            .is_none_or(|a| a.iter().any(|x| x.as_str() == Some(s)))
                    },
                );
                // The same outcome from the event's own auth events, unless the case is about
                // the state differing from them.
                let by_auth = {
                    let auth: Vec<Option<&Pdu>> = event
                        .auth_events
                        .iter()
                        .map(|a| room.events.get(a))
                        .collect();
                    let create = room.events.get(&hash::create_id_of_room(&event.room_id));
                    auth::authorize_by_auth_events(
                        v,
                        &event,
                        &auth,
                        &|e| room.rejected.contains_key(&e.event_id),
                        create,
                        &|s| {
                            case.get("signed_by")
                                .and_then(Value::as_array)
                                .is_none_or(|a| a.iter().any(|x| x.as_str() == Some(s)))
                        },
                    )
                };
                let got = match &outcome {
                    Ok(()) => "allow".to_string(),
                    Err(r) => r.rule.name().to_string(),
                };
                let got_auth = match &by_auth {
                    Ok(()) => "allow".to_string(),
                    Err(r) => r.rule.name().to_string(),
                };
                let want = expected_for(&case["expect"], v);
                *rules_seen.entry(want.clone()).or_default() += 1;
                if got != want {
                    failures.push(format!(
                        "{file}: {name} (v{}): expected {want}, got {}",
                        v.id,
                        outcome
                            .clone()
                            .err()
                            .map_or("allow".into(), |r| r.to_string())
                    ));
                } else if let Some(want_auth) = case.get("expect_auth") {
                    let want_auth = expected_for(want_auth, v);
                    if got_auth != want_auth {
                        failures.push(format!(
                            "{file}: {name} (v{}): by its auth events expected {want_auth}, got {}",
                            v.id,
                            by_auth
                                .clone()
                                .err()
                                .map_or("allow".into(), |r| r.to_string())
                        ));
                    }
                } else if case.get("auth_events_differ").is_none() && got_auth != want {
                    failures.push(format!(
                        "{file}: {name} (v{}): by its auth events expected {want}, got {}",
                        v.id,
                        by_auth
                            .clone()
                            .err()
                            .map_or("allow".into(), |r| r.to_string())
                    ));
                }
                if let (Err(r), Some(num)) =
                    (&outcome, case.get("number").and_then(|n| n.get(v.id)))
                {
                    if num.as_str() != Some(r.number.as_str()) {
                        failures.push(format!(
                            "{file}: {name} (v{}): rule number {} expected, got {}",
                            v.id, num, r.number
                        ));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {count} checks failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(count > 0, "no authorization cases");
    eprintln!("authorization table: {count} checks, outcomes: {rules_seen:?}");
}

// ---------------------------------------------------------------------------------------
// State resolution: tests/state_res/*.yaml.

#[test]
fn state_resolution_cases() {
    let mut failures = Vec::new();
    let mut count = 0;
    for (file, doc) in yaml_files("state_res") {
        let case = to_json(&doc);
        for v in versions(case.get("versions")) {
            count += 1;
            let mut room = Room::new(v);
            let mut last: Option<String> = None;
            for e in case["events"]
                .as_array()
                .unwrap_or_else(|| panic!("{file}: no events"))
            {
                last = Some(room.add(e, last.as_deref()).event_id);
            }
            let heads: Vec<String> = case["resolve"]
                .as_array()
                .unwrap_or_else(|| panic!("{file}: no resolve"))
                .iter()
                .map(|n| room.id(n.as_str().unwrap()))
                .collect();
            let resolved = room.state_before(&heads);
            let by_id: HashMap<&String, &String> =
                room.names.iter().map(|(n, id)| (id, n)).collect();
            for (key, want) in case["expect"]
                .as_object()
                .unwrap_or_else(|| panic!("{file}: no expect"))
            {
                let (kind, state_key) = key.split_once(' ').unwrap_or((key, ""));
                let got = resolved.get(&(kind.to_string(), state_key.to_string()));
                let got_name = got.map(|id| by_id.get(id).map_or(id.as_str(), |n| n.as_str()));
                let want_name = want.as_str();
                if got_name != want_name {
                    failures.push(format!(
                        "{file} (v{}): {key}: expected {want_name:?}, got {got_name:?}",
                        v.id
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} state resolution checks failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(count > 0, "no state resolution cases");
}

// ---------------------------------------------------------------------------------------
// Properties.

mod props {
    use super::*;
    use proptest::prelude::*;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-(1i64 << 53) + 1..(1i64 << 53)).prop_map(|n| json!(n)),
            "[a-zA-Z0-9 \u{0}-\u{1f}\"\\\\日本語é]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map("[a-z日本_]{0,5}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// The same object with its keys inserted in reverse order.
    fn reversed(v: &Value) -> Value {
        match v {
            Value::Object(m) => Value::Object(
                m.iter()
                    .rev()
                    .map(|(k, x)| (k.clone(), reversed(x)))
                    .collect(),
            ),
            Value::Array(a) => Value::Array(a.iter().map(reversed).collect()),
            other => other.clone(),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn canonical_json_is_stable_and_round_trips(v in json_value()) {
            let c = canonical::encode(&v);
            prop_assert_eq!(&canonical::encode(&reversed(&v)), &c);
            let back: Value = serde_json::from_str(&c).unwrap();
            prop_assert_eq!(&back, &v);
            prop_assert_eq!(canonical::encode(&back), c);
            prop_assert!(canonical::validate(&v).is_ok());
        }

        #[test]
        fn redaction_is_idempotent_and_keeps_signatures(content in json_value(), n in 0usize..12, kind in prop_oneof![
            Just("m.room.message"), Just("m.room.member"), Just("m.room.create"), Just("m.room.power_levels"),
            Just("m.room.join_rules"), Just("m.room.history_visibility"), Just("m.room.aliases"), Just("m.room.redaction")]) {
            let v = &ALL[n];
            let content = if content.is_object() { content } else { json!({"x": content}) };
            let key = test_key();
            let mut ev = json!({"type": kind, "state_key": "", "sender": "@a:domain", "room_id": "!r:domain",
                "content": content, "origin_server_ts": 5, "depth": 2, "prev_events": [], "auth_events": [],
                "event_id": "$e:domain", "origin": "domain"});
            build::hash_and_sign(v, &mut ev, Origin { server_name: "domain", key: &key });
            let once = redact::redact(v, &ev);
            prop_assert_eq!(&redact::redact(v, &once), &once);
            // The signature covers the redacted form, so it survives redaction.
            let vk = key.verify_key();
            prop_assert!(mxconform_pdu::sign::verify_signature(&once, "domain", &vk).is_ok());
            prop_assert!(mxconform_pdu::sign::verify_signature(&redact::redact(v, &ev), "domain", &vk).is_ok());
            // And the reference hash (the event id from v3) is the redacted form's.
            prop_assert_eq!(hash::reference_hash(v, &ev), hash::reference_hash(v, &once));
        }

        #[test]
        fn a_message_id_does_not_change_when_only_its_content_changes(a in json_value(), b in json_value(), n in 0usize..12) {
            // The reference hash covers the redacted event, and a message's content is
            // redacted away: changing only the content keeps the id and the signature, and
            // only the content hash tells (which is why receivers redact on a mismatch).
            let v = &ALL[n];
            let key = test_key();
            let room_id = if v.room_id_is_create { "!Nhcu5BS-UMnFX7hBVfVSoXiD7OgH6iRT-xyIuqDnpYQ" } else { "!r:domain" };
            let (prev, auth) = if v.event_ids == mxconform_pdu::version::EventIdFormat::Opaque { (json!([]), json!([])) } else { (json!(["$p"]), json!(["$a"])) };
            let mut ev = json!({"type": "m.room.message", "sender": "@a:domain", "room_id": room_id,
                "content": {"c": a}, "origin_server_ts": 5, "depth": 2, "prev_events": prev, "auth_events": auth,
                "event_id": "$e:domain"});
            build::hash_and_sign(v, &mut ev, Origin { server_name: "domain", key: &key });
            let mut changed = ev.clone();
            changed["content"] = json!({"c": b, "extra": true});
            prop_assert_eq!(hash::reference_hash(v, &ev), hash::reference_hash(v, &changed));
            prop_assert_eq!(hash::event_id(v, &ev), hash::event_id(v, &changed));
            let vk = key.verify_key();
            let keys = |server: &str, id: &str| (server == "domain" && id == "ed25519:1").then(|| (vk.clone(), i64::MAX));
            let original = Pdu::from_json(v, ev).unwrap();
            prop_assert!(mxconform_pdu::pdu::verify(v, &original, &keys).is_ok());
            let tampered = Pdu::from_json(v, changed).unwrap();
            prop_assert_eq!(mxconform_pdu::pdu::verify(v, &tampered, &keys), Err(mxconform_pdu::pdu::VerifyError::ContentHash));
        }
    }
}

#[test]
fn v12_room_id_is_the_create_event_id() {
    for _ in 0..20 {
        let v = &ALL[11];
        let mut room = Room::new(v);
        let create = room.add(&json!({"type": "m.room.create", "state_key": "", "sender": "@a:example.org", "content": {"additional_creators": ["@b:example.org"]}}), None);
        assert_eq!(create.room_id, format!("!{}", &create.event_id[1..]));
        assert!(create.json.get("room_id").is_none());
        let join = room.add(&json!({"type": "m.room.member", "state_key": "@a:example.org", "sender": "@a:example.org", "content": {"membership": "join"}}), Some(&create.event_id));
        assert_eq!(join.room_id, create.room_id);
        // v12 never cites the create event.
        assert!(!join.auth_events.contains(&create.event_id));
        assert!(room.rejected.is_empty(), "{:?}", room.rejected);
    }
}

// ---------------------------------------------------------------------------------------
// Real PDUs made by Synapse in rooms of every version (tests/data/, harness/synapse/pdus.py).

fn corpus(name: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(dir("data").join(name))
        .unwrap_or_else(|e| panic!("tests/data/{name}: {e}"));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn synapse_keys() -> mxconform_pdu::keys::ServerKeys {
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(dir("data").join("synapse-key.json")).unwrap(),
    )
    .unwrap();
    // Synapse's key document is signed by its own key, as the spec requires.
    mxconform_pdu::keys::verify_server_key_document(&doc, "localhost")
        .expect("Synapse's key document verifies")
}

#[test]
fn synapse_pdus_of_every_room_version() {
    let keys = synapse_keys();
    let lookup = |server: &str, key_id: &str| {
        (server == keys.server_name)
            .then(|| keys.key(key_id).map(|(k, until)| (k.clone(), until)))
            .flatten()
    };
    let records = corpus("synapse-pdus.jsonl");
    let mut failures = Vec::new();
    let mut per_version: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_id: HashMap<String, (Pdu, &'static RoomVersion)> = HashMap::new();
    for r in &records {
        let v = RoomVersion::get(r["room_version"].as_str().unwrap()).unwrap();
        let pdu = match Pdu::from_json(v, r["pdu"].clone()) {
            Ok(p) => p,
            Err(e) => {
                failures.push(format!("v{} {}: format: {e}", v.id, r["event_id"]));
                continue;
            }
        };
        *per_version.entry(v.id.to_string()).or_default() += 1;
        if pdu.event_id != r["event_id"].as_str().unwrap() {
            failures.push(format!(
                "v{}: our id {} is not Synapse's {}",
                v.id, pdu.event_id, r["event_id"]
            ));
        }
        if canonical::encode(&r["pdu"]) != r["canonical"].as_str().unwrap() {
            failures.push(format!(
                "v{} {}: canonical JSON differs",
                v.id, pdu.event_id
            ));
        }
        if canonical::encode(&redact::redact(v, &r["pdu"])) != canonical::encode(&r["redacted"]) {
            failures.push(format!(
                "v{} {}: redaction differs:\n ours {}\n syn. {}",
                v.id,
                pdu.event_id,
                canonical::encode(&redact::redact(v, &r["pdu"])),
                canonical::encode(&r["redacted"])
            ));
        }
        let reference = base64::encode(&hash::reference_hash(v, &r["pdu"]));
        if reference != r["reference_hash"].as_str().unwrap() {
            failures.push(format!(
                "v{} {}: reference hash differs",
                v.id, pdu.event_id
            ));
        }
        if let Err(e) = mxconform_pdu::pdu::verify(v, &pdu, &lookup) {
            failures.push(format!("v{} {}: {e}", v.id, pdu.event_id));
        }
        if v.room_id_is_create && pdu.is("m.room.create", "") {
            assert_eq!(
                pdu.room_id,
                format!("!{}", &pdu.event_id[1..]),
                "v12 room id"
            );
        }
        by_id.insert(pdu.event_id.clone(), (pdu, v));
    }
    // Our authorization accepts every event against its own auth events.
    let mut authorized = 0;
    for (id, (pdu, v)) in &by_id {
        let auth: Vec<Option<&Pdu>> = pdu
            .auth_events
            .iter()
            .map(|a| by_id.get(a).map(|(p, _)| p))
            .collect();
        let create = by_id
            .get(&hash::create_id_of_room(&pdu.room_id))
            .map(|(p, _)| p);
        let signed_by = |server: &str| {
            let redacted = pdu.redacted(v);
            let l = |key_id: &str| lookup(server, key_id).map(|(k, _)| k);
            mxconform_pdu::sign::verify_signed_by(&redacted, server, &l).is_ok()
        };
        match auth::authorize_by_auth_events(v, pdu, &auth, &|_| false, create, &signed_by) {
            Ok(()) => authorized += 1,
            Err(r) => failures.push(format!("v{} {id} ({}): {r}", v.id, pdu.kind)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches with Synapse:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(per_version.len(), 12, "every room version: {per_version:?}");
    assert_eq!(authorized, records.len());
}

#[test]
fn tampered_synapse_pdus_are_refused() {
    let keys = synapse_keys();
    let lookup = |server: &str, key_id: &str| {
        (server == keys.server_name)
            .then(|| keys.key(key_id).map(|(k, until)| (k.clone(), until)))
            .flatten()
    };
    let records = corpus("tampered.jsonl");
    assert!(!records.is_empty());
    for r in &records {
        let v = RoomVersion::get(r["room_version"].as_str().unwrap()).unwrap();
        let pdu = Pdu::from_json(v, r["pdu"].clone()).expect("well formed");
        let outcome = mxconform_pdu::pdu::verify(v, &pdu, &lookup);
        let want = r["expect"].as_str().unwrap();
        let ok = match (&outcome, want) {
            (Err(mxconform_pdu::pdu::VerifyError::ContentHash), "hash") => true,
            (Err(mxconform_pdu::pdu::VerifyError::Signature { .. }), "signature") => true,
            _ => false,
        };
        assert!(
            ok,
            "v{} {} ({}): expected a {want} failure, got {outcome:?}",
            v.id, r["event_id"], r["tamper"]
        );
    }
}
