//! The reference server's dealings with the outside world, through
//! [`mxconform_server::http::handle`]: an application service's token and directory network,
//! pings that cannot reach the service, and e-mail validation through an SMTP relay; what they
//! leave behind survives a restart.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::Request;
use mxconform_server::appservice::AppService;
use mxconform_server::{http::handle, Config, Mail, Server};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

async fn call(
    server: &Server,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut b = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let body = body.map(|v| v.to_string().into_bytes()).unwrap_or_default();
    let resp = handle(server, b.body(Bytes::from(body)).expect("request")).await;
    let status = resp.status().as_u16();
    (
        status,
        serde_json::from_slice(resp.body()).unwrap_or(Value::Null),
    )
}

async fn register(server: &Server, name: &str) -> String {
    let body = json!({"username": name, "password": format!("pw-{name}")});
    let (_, first) = call(
        server,
        "POST",
        "/_matrix/client/v3/register",
        None,
        Some(body.clone()),
    )
    .await;
    let mut body = body;
    body["auth"] = json!({"type": "m.login.dummy", "session": first["session"]});
    let (s, v) = call(
        server,
        "POST",
        "/_matrix/client/v3/register",
        None,
        Some(body),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v["access_token"].as_str().expect("token").to_string()
}

/// An SMTP relay that keeps the text of each mail.
async fn smtp_sink() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let mails: Arc<Mutex<Vec<String>>> = Arc::default();
    let kept = mails.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let (r, mut w) = sock.into_split();
            let mut r = BufReader::new(r);
            let _ = w.write_all(b"220 sink\r\n").await;
            let mut line = String::new();
            let mut data: Option<String> = None;
            loop {
                line.clear();
                if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                    break;
                }
                if let Some(d) = data.as_mut() {
                    if line == ".\r\n" {
                        kept.lock().unwrap().push(data.take().unwrap_or_default());
                        let _ = w.write_all(b"250 ok\r\n").await;
                    } else {
                        d.push_str(&line);
                    }
                    continue;
                }
                let reply: &[u8] = match line.get(..4).unwrap_or("") {
                    "DATA" => {
                        data = Some(String::new());
                        b"354 go\r\n"
                    }
                    "QUIT" => b"221 bye\r\n",
                    _ => b"250 ok\r\n",
                };
                let _ = w.write_all(reply).await;
            }
        }
    });
    (addr, mails)
}

const REGISTRATION: &str = "id: bridge\nas_token: as-secret\nhs_token: hs-secret\nsender_localpart: bridgebot\nnamespaces:\n  users: [{exclusive: true, regex: '@br_.*'}]\nprotocols: [irc]\n";

#[tokio::test]
async fn appservices_and_email_validation_survive_a_restart() {
    let dir = std::env::temp_dir().join(format!("mxconform-outside-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (relay, mails) = smtp_sink().await;
    let mut config = Config::in_memory("test.local");
    config.db = Some(dir.join("hs.db"));
    let down = "id: down\nurl: http://127.0.0.1:1\nas_token: down-as\nhs_token: down-hs\nsender_localpart: downbot\n";
    config.appservices = vec![
        AppService::from_yaml(REGISTRATION, "reg", "test.local").expect("registration"),
        AppService::from_yaml(down, "down", "test.local").expect("registration"),
    ];
    config.mail = Some(Mail {
        relay,
        from: "hs@test.local".into(),
        tls: mxconform_server::outbound::SmtpTls::None,
        credentials: None,
    });

    let (room, token) = {
        let server = Server::open(config.clone()).expect("opens");
        // The service's token acts as its sender, not as users outside its namespace.
        let (s, who) = call(
            &server,
            "GET",
            "/_matrix/client/v3/account/whoami",
            Some("as-secret"),
            None,
        )
        .await;
        assert_eq!(
            (s, who["user_id"].as_str()),
            (200, Some("@bridgebot:test.local"))
        );
        let (s, v) = call(
            &server,
            "GET",
            "/_matrix/client/v3/account/whoami?user_id=%40alice%3Atest.local",
            Some("as-secret"),
            None,
        )
        .await;
        assert_eq!((s, v["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
        // A service without a URL cannot be pinged; a user cannot ping at all.
        let ping = "/_matrix/client/v1/appservice/bridge/ping";
        let (s, v) = call(&server, "POST", ping, Some("as-secret"), Some(json!({}))).await;
        assert_eq!((s, v["errcode"].as_str()), (400, Some("M_URL_NOT_SET")));
        let (s, v) = call(
            &server,
            "POST",
            "/_matrix/client/v1/appservice/down/ping",
            Some("down-as"),
            Some(json!({"transaction_id": "t"})),
        )
        .await;
        assert_eq!(
            (s, v["errcode"].as_str()),
            (502, Some("M_CONNECTION_FAILED")),
            "{v}"
        );
        let token = register(&server, "alice").await;
        let (s, _) = call(&server, "POST", ping, Some(&token), Some(json!({}))).await;
        assert_eq!(s, 403);

        let (_, room) = call(
            &server,
            "POST",
            "/_matrix/client/v3/createRoom",
            Some(&token),
            Some(json!({})),
        )
        .await;
        let room = room["room_id"].as_str().expect("room").to_string();
        let list = format!(
            "/_matrix/client/v3/directory/list/appservice/net/{}",
            room.replace('!', "%21").replace(':', "%3A")
        );
        let (s, _) = call(
            &server,
            "PUT",
            &list,
            Some("as-secret"),
            Some(json!({"visibility": "public"})),
        )
        .await;
        assert_eq!(s, 200);
        let (s, _) = call(
            &server,
            "PUT",
            &list,
            Some(&token),
            Some(json!({"visibility": "public"})),
        )
        .await;
        assert_eq!(s, 403, "only the service may publish in its network");

        // E-mail: the token goes out by mail; submitting it validates; the address is added.
        let req = json!({"client_secret": "cs1", "email": "Alice@Example.org", "send_attempt": 1});
        let (s, v) = call(
            &server,
            "POST",
            "/_matrix/client/v3/account/3pid/email/requestToken",
            None,
            Some(req),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        let sid = v["sid"].as_str().expect("sid").to_string();
        let mail = mails.lock().unwrap().pop().expect("a mail was sent");
        assert!(mail.contains("To: alice@example.org"), "{mail}");
        let code = mail
            .split("give this code to your client: ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .expect("the code is in the mail")
            .to_string();
        let submit = "/_mxconform/3pid/email/submit_token";
        let (_, v) = call(
            &server,
            "POST",
            submit,
            None,
            Some(json!({"sid": sid, "client_secret": "cs1", "token": "wrong"})),
        )
        .await;
        assert_eq!(v["success"], false);
        let (_, v) = call(
            &server,
            "POST",
            submit,
            None,
            Some(json!({"sid": sid, "client_secret": "cs1", "token": code})),
        )
        .await;
        assert_eq!(v["success"], true);
        let auth = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "pw-alice"});
        let (s, v) = call(
            &server,
            "POST",
            "/_matrix/client/v3/account/3pid/add",
            Some(&token),
            Some(json!({"sid": sid, "client_secret": "cs1", "auth": auth})),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        (room, token)
    };

    let server = Server::open(config).expect("reopens");
    let (_, v) = call(
        &server,
        "GET",
        "/_matrix/client/v3/account/3pid",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(v["threepids"][0]["address"], "alice@example.org");
    let (_, v) = call(
        &server,
        "POST",
        "/_matrix/client/v3/publicRooms",
        Some(&token),
        Some(json!({"third_party_instance_id": "bridge|net"})),
    )
    .await;
    assert_eq!(v["chunk"][0]["room_id"], room.as_str());
    let (_, v) = call(
        &server,
        "POST",
        "/_matrix/client/v3/publicRooms",
        Some(&token),
        Some(json!({})),
    )
    .await;
    assert!(
        v["chunk"].as_array().is_some_and(|c| c.is_empty()),
        "not in the server's own directory: {v}"
    );
    // An address an account has cannot register another.
    let req = json!({"client_secret": "cs2", "email": "alice@example.org", "send_attempt": 1});
    let (s, v) = call(
        &server,
        "POST",
        "/_matrix/client/v3/register/email/requestToken",
        None,
        Some(req),
    )
    .await;
    assert_eq!((s, v["errcode"].as_str()), (400, Some("M_THREEPID_IN_USE")));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn validation_messages_to_one_address_are_rate_limited() {
    let (relay, mails) = smtp_sink().await;
    let mut config = Config::in_memory("test.local");
    config.mail = Some(Mail {
        relay,
        from: "hs@test.local".into(),
        tls: mxconform_server::outbound::SmtpTls::None,
        credentials: None,
    });
    let server = Server::open(config).expect("opens");
    let path = "/_matrix/client/v3/register/email/requestToken";
    for i in 0..5 {
        let req = json!({"client_secret": format!("cs{i}"), "email": "flood@example.org", "send_attempt": 1});
        let (s, v) = call(&server, "POST", path, None, Some(req)).await;
        assert_eq!(s, 200, "{v}");
    }
    let req = json!({"client_secret": "cs9", "email": "flood@example.org", "send_attempt": 1});
    let (s, v) = call(&server, "POST", path, None, Some(req)).await;
    assert_eq!(
        (s, v["errcode"].as_str()),
        (429, Some("M_LIMIT_EXCEEDED")),
        "{v}"
    );
    assert!(v["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "{v}");
    assert_eq!(
        mails.lock().unwrap().len(),
        5,
        "the refused request sent nothing"
    );
    // Another address is not held back by the first.
    let req = json!({"client_secret": "cs1", "email": "calm@example.org", "send_attempt": 1});
    let (s, _) = call(&server, "POST", path, None, Some(req)).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn url_previews_refuse_private_addresses_unless_allowed() {
    let mut config = Config::in_memory("test.local");
    config.url_preview = true;
    let server = Server::open(config).expect("opens");
    let token = register(&server, "viewer").await;
    for url in [
        "http%3A%2F%2F127.0.0.1%3A9%2F",
        "http%3A%2F%2F10.0.0.1%2F",
        "http%3A%2F%2F%5B%3A%3A1%5D%3A9%2F",
    ] {
        let path = format!("/_matrix/client/v1/media/preview_url?url={url}");
        let (s, v) = call(&server, "GET", &path, Some(&token), None).await;
        assert_eq!(
            (s, v["errcode"].as_str()),
            (403, Some("M_FORBIDDEN")),
            "{url}: {v}"
        );
    }
    // Allowed explicitly, the address is fetched (nothing listens on port 9: not found).
    let mut config = Config::in_memory("test.local");
    config.url_preview = true;
    config.outbound_allow = vec!["127.0.0.1".parse().expect("ip")];
    let server = Server::open(config).expect("opens");
    let token = register(&server, "viewer").await;
    let (s, _) = call(
        &server,
        "GET",
        "/_matrix/client/v1/media/preview_url?url=http%3A%2F%2F127.0.0.1%3A9%2F",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(s, 404);
    // Without previews configured, the operation is not offered.
    let server = Server::open(Config::in_memory("test.local")).expect("opens");
    let token = register(&server, "viewer").await;
    let (s, v) = call(
        &server,
        "GET",
        "/_matrix/client/v1/media/preview_url?url=http%3A%2F%2Fexample.org%2F",
        Some(&token),
        None,
    )
    .await;
    assert_eq!((s, v["errcode"].as_str()), (404, Some("M_UNRECOGNIZED")));
}

/// A flood of unauthenticated registrations (each opens a user-interactive auth session)
/// leaves the server holding at most the bound of sessions, the oldest dropped first: memory
/// stays flat however many arrive.
#[tokio::test]
async fn a_flood_of_unauthenticated_registrations_holds_a_bounded_number_of_sessions() {
    use mxconform_server::handlers::uia::UiaSessions;
    let server = Server::open(Config::in_memory("test.local")).expect("opens");
    let body = json!({"username": "flood", "password": "pw-12345678"});
    let mut sessions = std::collections::HashSet::new();
    for _ in 0..UiaSessions::MAX + 200 {
        let (s, v) = call(
            &server,
            "POST",
            "/_matrix/client/v3/register",
            None,
            Some(body.clone()),
        )
        .await;
        assert_eq!(s, 401, "{v}");
        sessions.insert(v["session"].as_str().expect("a session").to_string());
    }
    assert_eq!(
        sessions.len(),
        UiaSessions::MAX + 200,
        "each flood request got a session"
    );
    let held = server.uia.lock().expect("lock").len();
    assert_eq!(held, UiaSessions::MAX);
}

/// Identity servers are named by clients: one on an internal address is refused unless the
/// address is allowed (then it is asked, and an identity server that cannot be reached is 502
/// `M_CONNECTION_FAILED`), and one that is no host name at all is refused before anything.
#[tokio::test]
async fn identity_servers_on_internal_addresses_are_refused_unless_allowed() {
    let bind = |id_server: &str| json!({"client_secret": "cs", "sid": "sid", "id_access_token": "t", "id_server": id_server});
    let server = Server::open(Config::in_memory("test.local")).expect("opens");
    let token = register(&server, "binder").await;
    for id_server in [
        "127.0.0.1:9",
        "10.0.0.1",
        "[::1]:9",
        "https://example.org",
        "a/b",
    ] {
        let (s, v) = call(
            &server,
            "POST",
            "/_matrix/client/v3/account/3pid/bind",
            Some(&token),
            Some(bind(id_server)),
        )
        .await;
        assert_eq!(
            (s, v["errcode"].as_str()),
            (400, Some("M_INVALID_PARAM")),
            "{id_server}: {v}"
        );
    }
    let (s, v) = call(
        &server,
        "POST",
        "/_matrix/client/v3/account/3pid/unbind",
        Some(&token),
        Some(json!({"medium": "email", "address": "a@example.org", "id_server": "127.0.0.1:9"})),
    )
    .await;
    assert_eq!(
        (s, v["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM")),
        "{v}"
    );
    // Without an identity server named or known, nothing is asked.
    let (s, v) = call(
        &server,
        "POST",
        "/_matrix/client/v3/account/3pid/unbind",
        Some(&token),
        Some(json!({"medium": "email", "address": "a@example.org"})),
    )
    .await;
    assert_eq!(
        (s, v),
        (200, json!({"id_server_unbind_result": "no-support"}))
    );
    let mut config = Config::in_memory("test.local");
    config.outbound_allow = vec!["127.0.0.1".parse().expect("ip")];
    let server = Server::open(config).expect("opens");
    let token = register(&server, "binder").await;
    let (s, v) = call(
        &server,
        "POST",
        "/_matrix/client/v3/account/3pid/bind",
        Some(&token),
        Some(bind("127.0.0.1:9")),
    )
    .await;
    assert_eq!(
        (s, v["errcode"].as_str()),
        (502, Some("M_CONNECTION_FAILED")),
        "{v}"
    );
}
