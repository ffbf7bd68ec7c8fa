//! The reference server through [`mxconform_server::http::handle`], with no socket: request
//! decoding and errors, the main flows per area, and a restart on the same database.

use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use mxconform_server::{http::handle, Config, Server};
use serde_json::{json, Value};

struct Client {
    server: Arc<Server>,
}

impl Client {
    fn new(config: Config) -> Client {
        Client {
            server: Server::open(config).expect("the server opens"),
        }
    }

    async fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (u16, Value) {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        let req = b
            .body(Bytes::from(body.unwrap_or_default()))
            .expect("request");
        let resp = handle(&self.server, req).await;
        let status = resp.status().as_u16();
        let v = serde_json::from_slice(resp.body()).unwrap_or(Value::Null);
        (status, v)
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.raw(
            method,
            path,
            token,
            body.map(|b| b.to_string().into_bytes()),
        )
        .await
    }

    async fn ok(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Value {
        let (s, v) = self.call(method, path, token, body).await;
        assert_eq!(s, 200, "{method} {path}: {v}");
        v
    }

    /// Registers through the dummy stage; returns (user id, token).
    async fn register(&self, name: &str) -> (String, String) {
        let body = json!({"username": name, "password": format!("pw-{name}")});
        let (s, first) = self
            .call(
                "POST",
                "/_matrix/client/v3/register",
                None,
                Some(body.clone()),
            )
            .await;
        assert_eq!(s, 401, "{first}");
        let mut body = body;
        body["auth"] = json!({"type": "m.login.dummy", "session": first["session"]});
        let v = self
            .ok("POST", "/_matrix/client/v3/register", None, Some(body))
            .await;
        (
            v["user_id"].as_str().unwrap().to_string(),
            v["access_token"].as_str().unwrap().to_string(),
        )
    }
}

fn room_path(room: &str, rest: &str) -> String {
    format!(
        "/_matrix/client/v3/rooms/{}/{rest}",
        room.replace('!', "%21").replace(':', "%3A")
    )
}

#[tokio::test]
async fn errors_are_matrix_errors() {
    let c = Client::new(Config::in_memory("test.local"));
    let (_, token) = c.register("alice").await;
    let check = |got: (u16, Value), status: u16, code: &str| {
        assert_eq!(got.0, status, "{}", got.1);
        assert_eq!(got.1["errcode"], code, "{}", got.1);
        assert!(got.1["error"].is_string(), "{}", got.1);
    };
    check(
        c.call("GET", "/_matrix/client/v3/nowhere", None, None)
            .await,
        404,
        "M_UNRECOGNIZED",
    );
    check(
        c.call("DELETE", "/_matrix/client/versions", None, None)
            .await,
        405,
        "M_UNRECOGNIZED",
    );
    check(
        c.call("GET", "/_matrix/client/v3/account/whoami", None, None)
            .await,
        401,
        "M_MISSING_TOKEN",
    );
    // Optional features that are not configured answer 404 with a reason.
    check(
        c.call(
            "GET",
            "/_matrix/client/v3/voip/turnServer",
            Some(&token),
            None,
        )
        .await,
        404,
        "M_NOT_FOUND",
    );
    check(
        c.call("GET", "/.well-known/matrix/support", None, None)
            .await,
        404,
        "M_NOT_FOUND",
    );
    check(
        c.call(
            "GET",
            "/_matrix/client/v3/account/whoami",
            Some("nope"),
            None,
        )
        .await,
        401,
        "M_UNKNOWN_TOKEN",
    );
    // The token is checked before the body is looked at.
    check(
        c.raw(
            "POST",
            "/_matrix/client/v3/createRoom",
            None,
            Some(b"{not json".to_vec()),
        )
        .await,
        401,
        "M_MISSING_TOKEN",
    );
    check(
        c.raw(
            "POST",
            "/_matrix/client/v3/createRoom",
            Some(&token),
            Some(b"{not json".to_vec()),
        )
        .await,
        400,
        "M_NOT_JSON",
    );
    check(
        c.raw(
            "POST",
            "/_matrix/client/v3/createRoom",
            Some(&token),
            Some(vec![0xff, 0xfe]),
        )
        .await,
        400,
        "M_NOT_JSON",
    );
    check(
        c.call(
            "POST",
            "/_matrix/client/v3/createRoom",
            Some(&token),
            Some(json!({"preset": 42})),
        )
        .await,
        400,
        "M_BAD_JSON",
    );
    check(
        c.call(
            "POST",
            "/_matrix/client/v3/createRoom",
            Some(&token),
            Some(json!({"room_version": "13"})),
        )
        .await,
        400,
        "M_UNSUPPORTED_ROOM_VERSION",
    );
    check(
        c.call("GET", "/_matrix/client/v3/register/available", None, None)
            .await,
        400,
        "M_MISSING_PARAM",
    );
    check(
        c.call(
            "GET",
            "/_matrix/client/v3/rooms/not-a-room/state",
            Some(&token),
            None,
        )
        .await,
        400,
        "M_INVALID_PARAM",
    );
    // The spec documents only 403 for a room one is not in, known or not.
    check(
        c.call(
            "GET",
            "/_matrix/client/v3/rooms/!nope:test.local/state",
            Some(&token),
            None,
        )
        .await,
        403,
        "M_FORBIDDEN",
    );
    check(
        c.call(
            "GET",
            "/_matrix/client/v3/rooms/!nope:test.local/event/$x",
            Some(&token),
            None,
        )
        .await,
        404,
        "M_NOT_FOUND",
    );
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    check(
        c.raw(
            "POST",
            "/_matrix/client/v3/createRoom",
            Some(&token),
            Some(deep.into_bytes()),
        )
        .await,
        400,
        "M_NOT_JSON",
    );
    let huge = vec![b' '; 2 * 1024 * 1024];
    check(
        c.raw(
            "POST",
            "/_matrix/client/v3/createRoom",
            Some(&token),
            Some(huge),
        )
        .await,
        413,
        "M_TOO_LARGE",
    );
    // An operation of the table the server does not implement.
    check(
        c.call(
            "GET",
            "/_matrix/client/v1/media/preview_url?url=https%3A%2F%2Fexample.org",
            Some(&token),
            None,
        )
        .await,
        404,
        "M_UNRECOGNIZED",
    );
}

#[tokio::test]
async fn rooms_messages_and_sync() {
    let c = Client::new(Config::in_memory("test.local"));
    let (alice, at) = c.register("alice").await;
    let (bob, bt) = c.register("bob").await;
    for version in [
        "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12",
    ] {
        let room = c
            .ok(
                "POST",
                "/_matrix/client/v3/createRoom",
                Some(&at),
                Some(json!({"room_version": version, "preset": "public_chat", "name": "R"})),
            )
            .await;
        let room = room["room_id"].as_str().unwrap().to_string();
        assert_eq!(
            room.contains(':'),
            version != "12",
            "room {room} of version {version}"
        );
        c.ok(
            "POST",
            &room_path(&room, "join"),
            Some(&bt),
            Some(json!({})),
        )
        .await;
        let send = c
            .ok(
                "PUT",
                &room_path(&room, "send/m.room.message/t1"),
                Some(&bt),
                Some(json!({"msgtype": "m.text", "body": "hi"})),
            )
            .await;
        let again = c
            .ok(
                "PUT",
                &room_path(&room, "send/m.room.message/t1"),
                Some(&bt),
                Some(json!({"msgtype": "m.text", "body": "hi"})),
            )
            .await;
        assert_eq!(send["event_id"], again["event_id"]);
        let msgs = c
            .ok(
                "GET",
                &format!("{}?dir=b&limit=3", room_path(&room, "messages")),
                Some(&at),
                None,
            )
            .await;
        assert_eq!(msgs["chunk"][0]["event_id"], send["event_id"], "{msgs}");
        assert!(msgs["end"].is_string(), "more history is there: {msgs}");
        // Power levels: bob (0) cannot set the room name (50); from v12 alice is a creator.
        let (s, _) = c
            .call(
                "PUT",
                &room_path(&room, "state/m.room.name/"),
                Some(&bt),
                Some(json!({"name": "x"})),
            )
            .await;
        assert_eq!(s, 403);
        c.ok(
            "PUT",
            &room_path(&room, "state/m.room.name/"),
            Some(&at),
            Some(json!({"name": "y"})),
        )
        .await;
        let pl = c
            .ok(
                "GET",
                &room_path(&room, "state/m.room.power_levels/"),
                Some(&at),
                None,
            )
            .await;
        assert_eq!(pl["users"].get(&alice).is_some(), version != "12", "{pl}");
    }
    let sync = c
        .ok("GET", "/_matrix/client/v3/sync", Some(&bt), None)
        .await;
    assert_eq!(
        sync["rooms"]["join"].as_object().unwrap().len(),
        12,
        "{sync}"
    );
    let _ = bob;
}

#[tokio::test]
async fn sync_long_poll_wakes_on_a_new_event() {
    let c = Arc::new(Client::new(Config::in_memory("test.local")));
    let (_, at) = c.register("alice").await;
    let room = c
        .ok(
            "POST",
            "/_matrix/client/v3/createRoom",
            Some(&at),
            Some(json!({})),
        )
        .await["room_id"]
        .as_str()
        .unwrap()
        .to_string();
    let since = c
        .ok("GET", "/_matrix/client/v3/sync", Some(&at), None)
        .await["next_batch"]
        .as_str()
        .unwrap()
        .to_string();
    let waiter = {
        let c = c.clone();
        let at = at.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let v = c
                .ok(
                    "GET",
                    &format!("/_matrix/client/v3/sync?since={since}&timeout=20000"),
                    Some(&at),
                    None,
                )
                .await;
            (v, started.elapsed())
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    c.ok(
        "PUT",
        &room_path(&room, "send/m.room.message/w1"),
        Some(&at),
        Some(json!({"msgtype": "m.text", "body": "wake"})),
    )
    .await;
    let (v, took) = waiter.await.unwrap();
    let events = &v["rooms"]["join"][&room]["timeline"]["events"];
    assert_eq!(events[0]["content"]["body"], "wake", "{v}");
    // Woken by the send, not by the 20 s timeout.
    assert!(took < std::time::Duration::from_secs(10), "took {took:?}");
}

#[tokio::test]
async fn everything_survives_a_restart() {
    let dir = std::env::temp_dir().join(format!("mxconform-server-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = Config::in_memory("test.local");
    config.db = Some(dir.join("hs.db"));
    let (room, token, event_id, key_id) = {
        let c = Client::new(config.clone());
        let (_, token) = c.register("alice").await;
        let room = c
            .ok(
                "POST",
                "/_matrix/client/v3/createRoom",
                Some(&token),
                Some(json!({"name": "Kept", "room_alias_name": "kept"})),
            )
            .await;
        let room = room["room_id"].as_str().unwrap().to_string();
        let ev = c
            .ok(
                "PUT",
                &room_path(&room, "send/m.room.message/t1"),
                Some(&token),
                Some(json!({"msgtype": "m.text", "body": "kept"})),
            )
            .await;
        c.ok(
            "PUT",
            "/_matrix/client/v3/user/@alice:test.local/account_data/org.example",
            Some(&token),
            Some(json!({"k": "v"})),
        )
        .await;
        // Records of every structured kind: presence, a receipt, device and one-time keys,
        // a key backup version.
        c.ok(
            "PUT",
            "/_matrix/client/v3/presence/@alice:test.local/status",
            Some(&token),
            Some(json!({"presence": "unavailable", "status_msg": "away"})),
        )
        .await;
        c.ok(
            "POST",
            &room_path(
                &room,
                &format!("receipt/m.read/{}", ev["event_id"].as_str().unwrap()),
            ),
            Some(&token),
            Some(json!({})),
        )
        .await;
        let device = c.server.read(|s| s.tokens[&token].1.clone());
        c.ok(
            "POST",
            "/_matrix/client/v3/keys/upload",
            Some(&token),
            Some(json!({
                "device_keys": {"user_id": "@alice:test.local", "device_id": device, "algorithms": ["m.olm.v1.curve25519-aes-sha2"], "keys": {format!("curve25519:{device}"): "Y3VydmU", format!("ed25519:{device}"): "ZWQ"}, "signatures": {}},
                "one_time_keys": {"curve25519:AAAA": "b3Rr"},
            })),
        )
        .await;
        c.ok(
            "POST",
            "/_matrix/client/v3/room_keys/version",
            Some(&token),
            Some(json!({"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": {"public_key": "cHVi"}})),
        )
        .await;
        let key_id = c
            .server
            .read(|s| s.signing_key.as_ref().map(|k| k.key_id().to_string()));
        (
            room,
            token,
            ev["event_id"].as_str().unwrap().to_string(),
            key_id,
        )
    };
    let c = Client::new(config);
    // The signing key made at the first start is kept with the data.
    assert!(key_id.is_some());
    assert_eq!(
        c.server
            .read(|s| s.signing_key.as_ref().map(|k| k.key_id().to_string())),
        key_id
    );
    // The token, the room's state and history, the alias, account data and the transaction.
    let who = c
        .ok(
            "GET",
            "/_matrix/client/v3/account/whoami",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(who["user_id"], "@alice:test.local");
    let name = c
        .ok(
            "GET",
            &room_path(&room, "state/m.room.name/"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(name["name"], "Kept");
    let alias = c
        .ok(
            "GET",
            "/_matrix/client/v3/directory/room/%23kept:test.local",
            None,
            None,
        )
        .await;
    assert_eq!(alias["room_id"], room.as_str());
    let ad = c
        .ok(
            "GET",
            "/_matrix/client/v3/user/@alice:test.local/account_data/org.example",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(ad["k"], "v");
    let again = c
        .ok(
            "PUT",
            &room_path(&room, "send/m.room.message/t1"),
            Some(&token),
            Some(json!({"msgtype": "m.text", "body": "kept"})),
        )
        .await;
    assert_eq!(again["event_id"], event_id.as_str());
    let msgs = c
        .ok(
            "GET",
            &format!("{}?dir=b&limit=1", room_path(&room, "messages")),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(msgs["chunk"][0]["content"]["body"], "kept");
    // New writes continue the stream after the old ones.
    let ev2 = c
        .ok(
            "PUT",
            &room_path(&room, "send/m.room.message/t2"),
            Some(&token),
            Some(json!({"msgtype": "m.text", "body": "new"})),
        )
        .await;
    assert_ne!(ev2["event_id"], event_id.as_str());
    let msgs = c
        .ok(
            "GET",
            &format!("{}?dir=b&limit=2", room_path(&room, "messages")),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(msgs["chunk"][0]["content"]["body"], "new");
    assert_eq!(msgs["chunk"][1]["content"]["body"], "kept");
    let presence = c
        .ok(
            "GET",
            "/_matrix/client/v3/presence/@alice:test.local/status",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(
        (
            presence["presence"].as_str(),
            presence["status_msg"].as_str()
        ),
        (Some("unavailable"), Some("away"))
    );
    let keys = c
        .ok(
            "POST",
            "/_matrix/client/v3/keys/query",
            Some(&token),
            Some(json!({"device_keys": {"@alice:test.local": []}})),
        )
        .await;
    assert_eq!(
        keys["device_keys"]["@alice:test.local"]
            .as_object()
            .map(|m| m.len()),
        Some(1)
    );
    let counts = c
        .ok(
            "POST",
            "/_matrix/client/v3/keys/upload",
            Some(&token),
            Some(json!({})),
        )
        .await;
    assert_eq!(counts["one_time_key_counts"]["curve25519"], 1);
    let backup = c
        .ok(
            "GET",
            "/_matrix/client/v3/room_keys/version",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(backup["auth_data"]["public_key"], "cHVi");
    c.server.read(|s| {
        let read = &s.receipts[&room].0["m.read"];
        assert_eq!(
            read.values().next().map(|r| r.0.as_str()),
            Some(event_id.as_str())
        );
    });
    // The new event extends the history from before the restart, signed with the same key.
    c.server.read(|s| {
        let new = s.event_by_id(ev2["event_id"].as_str().unwrap()).unwrap();
        let v = s.rooms[&room].room_version();
        let pdu = new.to_pdu(v).unwrap();
        assert_eq!(pdu.prev_events, vec![event_id.clone()]);
        let key = s.signing_key.as_ref().unwrap();
        let keys = |server: &str, id: &str| {
            (server == "test.local" && id == key.key_id()).then(|| (key.verify_key(), i64::MAX))
        };
        mxconform_pdu::pdu::verify(v, &pdu, &keys).unwrap();
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn history_visibility_and_membership_rules() {
    let c = Client::new(Config::in_memory("test.local"));
    let (_, at) = c.register("alice").await;
    let (_, bt) = c.register("bob").await;
    let room = c
        .ok(
            "POST",
            "/_matrix/client/v3/createRoom",
            Some(&at),
            Some(json!({"preset": "public_chat"})),
        )
        .await["room_id"]
        .as_str()
        .unwrap()
        .to_string();
    c.ok(
        "PUT",
        &room_path(&room, "state/m.room.history_visibility/"),
        Some(&at),
        Some(json!({"history_visibility": "joined"})),
    )
    .await;
    let before = c
        .ok(
            "PUT",
            &room_path(&room, "send/m.room.message/a1"),
            Some(&at),
            Some(json!({"msgtype": "m.text", "body": "before"})),
        )
        .await;
    // A non-member cannot read the room.
    let (s, _) = c
        .call(
            "GET",
            &format!("{}?dir=b", room_path(&room, "messages")),
            Some(&bt),
            None,
        )
        .await;
    assert_eq!(s, 403);
    c.ok(
        "POST",
        &room_path(&room, "join"),
        Some(&bt),
        Some(json!({})),
    )
    .await;
    let after = c
        .ok(
            "PUT",
            &room_path(&room, "send/m.room.message/a2"),
            Some(&at),
            Some(json!({"msgtype": "m.text", "body": "after"})),
        )
        .await;
    let msgs = c
        .ok(
            "GET",
            &format!("{}?dir=b&limit=50", room_path(&room, "messages")),
            Some(&bt),
            None,
        )
        .await;
    let ids: Vec<&Value> = msgs["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["event_id"])
        .collect();
    assert!(ids.contains(&&after["event_id"]), "{msgs}");
    assert!(
        !ids.contains(&&before["event_id"]),
        "joined visibility hides earlier events: {msgs}"
    );
    let (s, _) = c
        .call(
            "GET",
            &room_path(
                &room,
                &format!("event/{}", before["event_id"].as_str().unwrap()),
            ),
            Some(&bt),
            None,
        )
        .await;
    assert_eq!(s, 404);
    // Banned users cannot rejoin.
    c.ok(
        "POST",
        &room_path(&room, "ban"),
        Some(&at),
        Some(json!({"user_id": "@bob:test.local"})),
    )
    .await;
    let (s, _) = c
        .call(
            "POST",
            &room_path(&room, "join"),
            Some(&bt),
            Some(json!({})),
        )
        .await;
    assert_eq!(s, 403);
}

#[tokio::test]
async fn keys_to_device_media_and_push_rules() {
    let c = Client::new(Config::in_memory("test.local"));
    let (alice, at) = c.register("alice").await;
    let (bob, bt) = c.register("bob").await;
    let who = c
        .ok("GET", "/_matrix/client/v3/account/whoami", Some(&at), None)
        .await;
    let device = who["device_id"].as_str().unwrap().to_string();

    // Keys: upload, query, claim (one-time, then the fallback key), changes.
    let keys = json!({
        "device_keys": {"user_id": alice, "device_id": device, "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
            "keys": {format!("curve25519:{device}"): "k"}, "signatures": {}},
        "one_time_keys": {"signed_curve25519:A": {"key": "otk", "signatures": {}}},
        "fallback_keys": {"signed_curve25519:F": {"key": "fb", "fallback": true, "signatures": {}}},
    });
    let up = c
        .ok(
            "POST",
            "/_matrix/client/v3/keys/upload",
            Some(&at),
            Some(keys),
        )
        .await;
    assert_eq!(up["one_time_key_counts"]["signed_curve25519"], 1);
    let q = c
        .ok(
            "POST",
            "/_matrix/client/v3/keys/query",
            Some(&bt),
            Some(json!({"device_keys": {&alice: []}})),
        )
        .await;
    assert_eq!(
        q["device_keys"][&alice][&device]["keys"][format!("curve25519:{device}")],
        "k"
    );
    let claim = json!({"one_time_keys": {&alice: {&device: "signed_curve25519"}}});
    let first = c
        .ok(
            "POST",
            "/_matrix/client/v3/keys/claim",
            Some(&bt),
            Some(claim.clone()),
        )
        .await;
    assert_eq!(
        first["one_time_keys"][&alice][&device]["signed_curve25519:A"]["key"],
        "otk"
    );
    let second = c
        .ok(
            "POST",
            "/_matrix/client/v3/keys/claim",
            Some(&bt),
            Some(claim),
        )
        .await;
    assert_eq!(
        second["one_time_keys"][&alice][&device]["signed_curve25519:F"]["key"], "fb",
        "{second}"
    );
    let (s, _) = c.call("POST", "/_matrix/client/v3/keys/upload", Some(&bt), Some(json!({"device_keys": {"user_id": alice, "device_id": "X", "algorithms": [], "keys": {}, "signatures": {}}}))).await;
    assert_eq!(s, 400, "device keys must be the caller's own");

    // To-device: delivered once, gone after the next sync acknowledges it.
    let bob_device = c
        .ok("GET", "/_matrix/client/v3/account/whoami", Some(&bt), None)
        .await["device_id"]
        .as_str()
        .unwrap()
        .to_string();
    c.ok(
        "PUT",
        "/_matrix/client/v3/sendToDevice/org.example/t1",
        Some(&at),
        Some(json!({"messages": {&bob: {&bob_device: {"n": 1}}}})),
    )
    .await;
    let s1 = c
        .ok("GET", "/_matrix/client/v3/sync", Some(&bt), None)
        .await;
    assert_eq!(s1["to_device"]["events"][0]["content"]["n"], 1, "{s1}");
    let next = s1["next_batch"].as_str().unwrap();
    let s2 = c
        .ok(
            "GET",
            &format!("/_matrix/client/v3/sync?since={next}"),
            Some(&bt),
            None,
        )
        .await;
    assert_eq!(s2["to_device"]["events"].as_array().unwrap().len(), 0);

    // Media: upload bytes, download them back with their type.
    let req = Request::builder()
        .method("POST")
        .uri("/_matrix/media/v3/upload?filename=a.txt")
        .header("authorization", format!("Bearer {at}"))
        .header("content-type", "text/plain")
        .body(Bytes::from_static(b"hello bytes"))
        .unwrap();
    let resp = handle(&c.server, req).await;
    let v: Value = serde_json::from_slice(resp.body()).unwrap();
    let uri = v["content_uri"].as_str().unwrap().to_string();
    let media_path = uri.trim_start_matches("mxc://");
    let req = Request::builder()
        .uri(format!("/_matrix/client/v1/media/download/{media_path}"))
        .header("authorization", format!("Bearer {bt}"))
        .body(Bytes::new())
        .unwrap();
    let resp = handle(&c.server, req).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/plain");
    assert_eq!(resp.body().as_ref(), b"hello bytes");

    // Push rules: the predefined set, a user rule placed before the defaults but after master.
    let rules = c
        .ok("GET", "/_matrix/client/v3/pushrules/", Some(&at), None)
        .await;
    assert_eq!(rules["global"]["override"][0]["rule_id"], ".m.rule.master");
    c.ok(
        "PUT",
        "/_matrix/client/v3/pushrules/global/override/mine",
        Some(&at),
        Some(json!({"actions": ["notify"], "conditions": []})),
    )
    .await;
    let rules = c
        .ok(
            "GET",
            "/_matrix/client/v3/pushrules/global/",
            Some(&at),
            None,
        )
        .await;
    // User rules go before the server defaults, except .m.rule.master, which stays first.
    assert_eq!(rules["override"][0]["rule_id"], ".m.rule.master");
    assert_eq!(rules["override"][1]["rule_id"], "mine");
    let (s, _) = c
        .call(
            "DELETE",
            "/_matrix/client/v3/pushrules/global/override/.m.rule.master",
            Some(&at),
            None,
        )
        .await;
    assert_eq!(s, 400);
    let (s, _) = c
        .call(
            "PUT",
            "/_matrix/client/v3/pushrules/global/override/.mine",
            Some(&at),
            Some(json!({"actions": []})),
        )
        .await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn account_data_directory_and_profile() {
    let c = Client::new(Config::in_memory("test.local"));
    let (alice, at) = c.register("alice").await;
    let (_, bt) = c.register("bob").await;
    let base = format!("/_matrix/client/v3/user/{alice}");
    c.ok(
        "PUT",
        &format!("{base}/account_data/org.x"),
        Some(&at),
        Some(json!({"a": 1})),
    )
    .await;
    let (s, _) = c
        .call(
            "GET",
            &format!("{base}/account_data/org.x"),
            Some(&bt),
            None,
        )
        .await;
    assert_eq!(s, 403, "another user's account data is private");
    let (s, v) = c
        .call(
            "PUT",
            &format!("{base}/account_data/m.fully_read"),
            Some(&at),
            Some(json!({})),
        )
        .await;
    assert_eq!(
        (s, v["errcode"].as_str()),
        (405, Some("M_BAD_JSON")),
        "server-managed types are refused"
    );
    let room = c
        .ok(
            "POST",
            "/_matrix/client/v3/createRoom",
            Some(&at),
            Some(json!({"visibility": "public", "preset": "public_chat", "name": "Dir"})),
        )
        .await;
    let room = room["room_id"].as_str().unwrap().to_string();
    let public = c
        .ok("GET", "/_matrix/client/v3/publicRooms", None, None)
        .await;
    assert_eq!(public["chunk"][0]["room_id"], room.as_str());
    c.ok(
        "PUT",
        "/_matrix/client/v3/directory/room/%23a:test.local",
        Some(&at),
        Some(json!({"room_id": room})),
    )
    .await;
    let (s, _) = c
        .call(
            "PUT",
            "/_matrix/client/v3/directory/room/%23a:test.local",
            Some(&at),
            Some(json!({"room_id": room})),
        )
        .await;
    assert_eq!(s, 409);
    let (s, _) = c
        .call(
            "DELETE",
            "/_matrix/client/v3/directory/room/%23a:test.local",
            Some(&bt),
            None,
        )
        .await;
    assert_eq!(s, 403, "only the creator or a moderator deletes an alias");
    c.ok(
        "PUT",
        &format!("/_matrix/client/v3/profile/{alice}/displayname"),
        Some(&at),
        Some(json!({"displayname": "Al"})),
    )
    .await;
    let member = c
        .ok(
            "GET",
            &room_path(&room, &format!("state/m.room.member/{alice}")),
            Some(&at),
            None,
        )
        .await;
    assert_eq!(member["displayname"], "Al");
    let (s, _) = c
        .call(
            "PUT",
            &format!("/_matrix/client/v3/profile/{alice}/displayname"),
            Some(&bt),
            Some(json!({"displayname": "x"})),
        )
        .await;
    assert_eq!(s, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_of_one_transaction_make_one_event() {
    let c = Arc::new(Client::new(Config::in_memory("test.local")));
    let (_, at) = c.register("alice").await;
    let room = c
        .ok(
            "POST",
            "/_matrix/client/v3/createRoom",
            Some(&at),
            Some(json!({})),
        )
        .await["room_id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (c, at, room) = (c.clone(), at.clone(), room.clone());
        tasks.push(tokio::spawn(async move {
            c.ok(
                "PUT",
                &room_path(&room, "send/m.room.message/same-txn"),
                Some(&at),
                Some(json!({"msgtype": "m.text", "body": "once"})),
            )
            .await["event_id"]
                .as_str()
                .unwrap()
                .to_string()
        }));
    }
    let mut ids = std::collections::BTreeSet::new();
    for t in tasks {
        ids.insert(t.await.unwrap());
    }
    assert_eq!(ids.len(), 1, "one event id for every retry: {ids:?}");
    let msgs = c
        .ok(
            "GET",
            &format!("{}?dir=b&limit=100", room_path(&room, "messages")),
            Some(&at),
            None,
        )
        .await;
    let sent = msgs["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .count();
    assert_eq!(sent, 1, "exactly one event in the room: {msgs}");
}

mod fuzz {
    //! Request decoding under arbitrary input: every operation's path with mutated parameters,
    //! query strings and bodies. The server must answer every one with a response (never a
    //! panic), never a 5xx, and every error as Matrix error JSON.
    use super::*;
    use proptest::prelude::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            Just("%FF%FE".to_string()),
            Just("%".to_string()),
            Just("!room:test.local".to_string()),
            Just("@alice:test.local".to_string()),
            Just("$event".to_string()),
            Just("#alias:test.local".to_string()),
            "[a-zA-Z0-9%:!@#$._~-]{0,40}",
            "\\PC{0,20}",
        ]
    }

    fn body() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(Vec::new()),
            Just(b"{}".to_vec()),
            Just(b"[]".to_vec()),
            Just(b"null".to_vec()),
            Just(vec![0xff, 0x00, 0xfe]),
            Just(format!("{}{}", "{\"a\":".repeat(150), "}".repeat(150)).into_bytes()),
            proptest::collection::vec(any::<u8>(), 0..200),
            "\\PC{0,200}".prop_map(String::into_bytes),
            (any::<u32>(), "[a-z_]{1,12}", any::<i64>()).prop_map(|(n, k, v)| format!(
                "{{\"{k}\": {v}, \"n{n}\": [{{}}, \"x\", null]}}"
            )
            .into_bytes()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]
        #[test]
        fn any_request_gets_a_matrix_answer(
            route in 0usize..mxconform_generated::client_server::ROUTES.len(),
            params in proptest::collection::vec(segment(), 6),
            query in "[a-z_=&%0-9]{0,40}",
            body in body(),
            with_token in any::<bool>(),
        ) {
            thread_local! {
                static SETUP: (Client, String) = {
                    let c = Client::new(Config::in_memory("test.local"));
                    let token = rt().block_on(c.register("alice")).1;
                    (c, token)
                };
            }
            let r = &mxconform_generated::client_server::ROUTES[route];
            let mut i = 0;
            let path: String = r.path.split('/').map(|seg| {
                if seg.starts_with('{') { i += 1; params[i - 1].clone() } else { seg.to_string() }
            }).collect::<Vec<_>>().join("/");
            // Long-polls get `timeout=0` first (the first value counts), or a random timeout
            // would keep the case waiting for nothing.
            let query = if matches!(r.operation_id, "sync" | "getEvents" | "peekEvents") { format!("timeout=0&{query}") } else { query.clone() };
            let uri = if query.is_empty() { path.clone() } else { format!("{path}?{query}") };
            SETUP.with(|(c, token)| {
                let mut b = Request::builder().method(r.method.as_str()).uri(uri.as_str());
                if with_token {
                    b = b.header("authorization", format!("Bearer {token}"));
                }
                // A URI the http crate refuses cannot reach the server at all.
                let Ok(req) = b.body(Bytes::from(body.clone())) else { return Ok(()) };
                let resp = rt().block_on(handle(&c.server, req));
                let status = resp.status().as_u16();
                prop_assert!(status < 500, "{} {uri} answered {status}: {:?}", r.method.as_str(), resp.body());
                if status >= 400 {
                    let v: Value = serde_json::from_slice(resp.body()).unwrap_or(Value::Null);
                    prop_assert!(v["errcode"].is_string() && v["error"].is_string(), "{} {uri}: {v}", r.method.as_str());
                }
                Ok(())
            })?;
        }
    }
}

#[tokio::test]
async fn public_room_pages_hold_still_while_rooms_come_and_go() {
    let c = Client::new(Config::in_memory("test.local"));
    let (_, token) = c.register("pager").await;
    let mut rooms = Vec::new();
    for i in 0..3 {
        let r = c
            .ok(
                "POST",
                "/_matrix/client/v3/createRoom",
                Some(&token),
                Some(json!({"visibility": "public", "name": format!("r{i}")})),
            )
            .await;
        rooms.push(r["room_id"].as_str().unwrap().to_string());
    }
    let page = |since: Option<String>| {
        let c = &c;
        async move {
            let q = since.map_or(String::new(), |s| format!("&since={s}"));
            c.ok(
                "GET",
                &format!("/_matrix/client/v3/publicRooms?limit=1{q}"),
                None,
                None,
            )
            .await
        }
    };
    let p1 = page(None).await;
    assert!(p1.get("prev_batch").is_none(), "{p1}");
    // A room published between two pages moves nothing already seen onto the next page.
    c.ok(
        "POST",
        "/_matrix/client/v3/createRoom",
        Some(&token),
        Some(json!({"visibility": "public", "name": "late"})),
    )
    .await;
    let p2 = page(p1["next_batch"].as_str().map(str::to_string)).await;
    assert_ne!(p2["chunk"][0]["room_id"], p1["chunk"][0]["room_id"]);
    let back = page(p2["prev_batch"].as_str().map(str::to_string)).await;
    assert_eq!(
        back["chunk"][0]["room_id"], p1["chunk"][0]["room_id"],
        "{back}"
    );
    let (s, v) = c
        .call(
            "GET",
            "/_matrix/client/v3/publicRooms?since=bogus",
            None,
            None,
        )
        .await;
    assert_eq!((s, v["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));
}

#[tokio::test]
async fn redacted_content_is_purged_from_the_database_after_the_retention() {
    let dir = std::env::temp_dir().join(format!("mxconform-server-purge-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let db = dir.join("hs.db");
    let mut config = Config::in_memory("test.local");
    config.db = Some(db.clone());
    let stored = |needle: &str| -> usize {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.query_row(
            "SELECT count(*) FROM events WHERE json LIKE ?1",
            [format!("%{needle}%")],
            |r| r.get::<_, i64>(0),
        )
        .unwrap() as usize
    };
    let (room, token, event_id) = {
        let c = Client::new(config.clone());
        let (_, token) = c.register("alice").await;
        let room = c
            .ok(
                "POST",
                "/_matrix/client/v3/createRoom",
                Some(&token),
                Some(json!({})),
            )
            .await;
        let room = room["room_id"].as_str().unwrap().to_string();
        let ev = c
            .ok(
                "PUT",
                &room_path(&room, "send/m.room.message/t1"),
                Some(&token),
                Some(json!({"msgtype": "m.text", "body": "secret-purge-me"})),
            )
            .await;
        let id = ev["event_id"].as_str().unwrap().to_string();
        c.ok(
            "PUT",
            &room_path(&room, &format!("redact/{id}/r1")),
            Some(&token),
            Some(json!({})),
        )
        .await;
        (room, token, id)
    };
    // Within the retention (seven days by default) the original stays for review.
    drop(Client::new(config.clone()));
    assert_eq!(stored("secret-purge-me"), 1);
    // After it, the record holds the redacted event only; the event still verifies and is
    // still served redacted.
    // The server holds its database exclusively: the file is read once it has stopped.
    config.redaction_retention = std::time::Duration::ZERO;
    drop(Client::new(config.clone()));
    assert_eq!(stored("secret-purge-me"), 0);
    assert_eq!(
        stored("\"purged\":true"),
        1,
        "the redacted event's record, rewritten"
    );
    assert_eq!(stored("m.room.redaction"), 1, "the redaction remains");
    let c = Client::new(config);
    let ev = c
        .ok(
            "GET",
            &room_path(&room, &format!("event/{event_id}")),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(ev["content"], json!({}));
    c.server.read(|s| {
        let e = s.event_by_id(&event_id).unwrap();
        assert!(e.purged);
        let v = s.rooms[&room].room_version();
        let key = s.signing_key.as_ref().unwrap();
        let keys = |server: &str, id: &str| {
            (server == "test.local" && id == key.key_id()).then(|| (key.verify_key(), i64::MAX))
        };
        // Signatures hold; the content hash no longer matches, as for any redacted event.
        assert_eq!(
            mxconform_pdu::pdu::verify(v, &e.to_pdu(v).unwrap(), &keys),
            Err(mxconform_pdu::pdu::VerifyError::ContentHash)
        );
    });
    let _ = std::fs::remove_dir_all(&dir);
}
