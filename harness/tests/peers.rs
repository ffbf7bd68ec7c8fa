//! The peers the harness plays for a homeserver: the application service checks the
//! homeserver's token and answers the bridge's lookups; the mail sink takes mail over SMTP and
//! hands it to the scenario that waits for it; the web server serves pages to preview.

use std::path::Path;
use std::time::Duration;

use mxconform_harness::peers::{Peers, PeersConfig};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn start() -> Peers {
    let config = PeersConfig {
        appservice: Some("peers/appservice.yaml".into()),
        smtp: Some("127.0.0.1:18025".into()),
        web: Some("127.0.0.1:18080".into()),
        ..PeersConfig::default()
    };
    // Free ports: tests may run beside a compliance run using the fixed ones.
    Peers::start(
        &config,
        Path::new(env!("CARGO_MANIFEST_DIR")),
        "hs.test",
        true,
    )
    .expect("the peers start")
}

async fn get(url: &str, token: Option<&str>) -> (u16, String) {
    let client = mxconform_harness::http_client_builder().build().unwrap();
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("the peer answers");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

#[tokio::test]
async fn the_application_service_checks_the_homeservers_token_and_answers_lookups() {
    let peers = start();
    let (reg, _) = peers.appservice.clone().expect("an application service");
    let base = peers.appservice_url().expect("its url");
    let proto = format!("{base}/_matrix/app/v1/thirdparty/protocol/mxtest");
    assert_eq!(get(&proto, None).await.0, 401);
    let (status, body) = get(&proto, Some("wrong")).await;
    assert_eq!(status, 403);
    assert!(body.contains("M_FORBIDDEN"), "{body}");
    let (status, body) = get(&proto, Some(&reg.hs_token)).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["location_fields"][0], "channel");

    let loc = format!("{base}/_matrix/app/v1/thirdparty/location/mxtest?channel=lobby");
    let (status, body) = get(&loc, Some(&reg.hs_token)).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v[0]["alias"], "#mxtest_lobby:hs.test");
    let back = format!("{base}/_matrix/app/v1/thirdparty/location?alias=%23mxtest_lobby%3Ahs.test");
    let (status, body) = get(&back, Some(&reg.hs_token)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"channel\":\"lobby\""), "{body}");
    let none = format!("{base}/_matrix/app/v1/thirdparty/user?userid=%40alice%3Ahs.test");
    assert_eq!(get(&none, Some(&reg.hs_token)).await.0, 404);
    let vars = peers.vars("hs.test");
    assert_eq!(vars["appservice.sender"], "@mxbridge:hs.test");
}

/// Sends one mail the way a homeserver's SMTP client does.
async fn smtp_send(addr: std::net::SocketAddr, to: &str, data: &str) -> Vec<String> {
    let sock = TcpStream::connect(addr).await.expect("connect");
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    let mut replies = Vec::new();
    let mut line = String::new();
    r.read_line(&mut line).await.expect("greeting");
    replies.push(line.clone());
    for cmd in [
        "EHLO hs.test\r\n".to_string(),
        "MAIL FROM:<noreply@hs.test>\r\n".to_string(),
        format!("RCPT TO:<{to}>\r\n"),
        "DATA\r\n".to_string(),
        format!("{data}\r\n.\r\n"),
        "QUIT\r\n".to_string(),
    ] {
        w.write_all(cmd.as_bytes()).await.expect("write");
        loop {
            line.clear();
            r.read_line(&mut line).await.expect("reply");
            replies.push(line.trim_end().to_string());
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                break;
            }
        }
    }
    replies
}

#[tokio::test]
async fn the_mail_sink_hands_each_mail_to_the_scenario_waiting_for_its_recipient() {
    let peers = start();
    let smtp = peers.smtp.expect("a mail sink");
    let mailbox = peers.mailbox.clone();
    // Waiting before the mail arrives: the wait ends when it does.
    let waiting =
        tokio::spawn(async move { mailbox.take("bob@hs.test", Duration::from_secs(10)).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let replies = smtp_send(
        smtp,
        "bob@hs.test",
        "Subject: hi\r\nContent-Type: text/plain\r\n\r\nyour token is abc123\r\n..dot-stuffed line",
    )
    .await;
    assert!(replies[0].starts_with("220"), "{replies:?}");
    assert!(replies.iter().any(|l| l.starts_with("354")), "{replies:?}");
    assert_eq!(replies.last().map(|l| &l[..3]), Some("221"), "{replies:?}");
    let mail = waiting.await.expect("joined").expect("the mail arrives");
    assert_eq!(mail.to, ["bob@hs.test"]);
    assert!(mail.text.contains("your token is abc123"), "{}", mail.text);
    assert!(mail.text.contains("\n.dot-stuffed line"), "{}", mail.text);
    // Taken means gone; a mail to someone else is not handed out.
    smtp_send(smtp, "carol@hs.test", "Subject: x\r\n\r\nfor carol").await;
    let err = peers
        .mailbox
        .take("bob@hs.test", Duration::from_millis(200))
        .await
        .expect_err("no second mail to bob");
    assert!(err.contains("no message to bob@hs.test"), "{err}");
}

#[tokio::test]
async fn the_web_server_serves_pages_with_open_graph_tags() {
    let peers = start();
    let web = peers.web_url().expect("a web server");
    let (status, body) = get(&format!("{web}/page/news"), None).await;
    assert_eq!(status, 200);
    assert!(
        body.contains("<meta property=\"og:title\" content=\"Page news\">"),
        "{body}"
    );
    assert_eq!(get(&format!("{web}/page/../etc"), None).await.0, 404);
}

fn enc(s: &str) -> String {
    mxconform_harness::client::encode_segment(s)
}

#[tokio::test]
async fn the_cas_server_issues_one_use_tickets_for_the_service_that_asked() {
    let peers = start();
    let web = peers.web_url().expect("a web server");
    let client = mxconform_harness::http_client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let service = "http://hs.test/ticket?redirectUrl=x";
    let resp = client
        .get(format!(
            "{web}/cas/login?service={}&user=carol",
            enc(service)
        ))
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.status().as_u16(), 302);
    let location = resp.headers()["location"]
        .to_str()
        .expect("text")
        .to_string();
    let ticket = location
        .strip_prefix(&format!("{service}&ticket="))
        .expect("back to the service with a ticket")
        .to_string();
    let validate = |service: &'static str| {
        let (client, web, ticket) = (client.clone(), web.clone(), ticket.clone());
        async move {
            client
                .get(format!(
                    "{web}/cas/proxyValidate?ticket={}&service={}",
                    enc(&ticket),
                    enc(service)
                ))
                .send()
                .await
                .expect("answer")
                .text()
                .await
                .expect("body")
        }
    };
    // Another service cannot use the ticket, and using it spends it.
    assert!(validate("http://other.test/")
        .await
        .contains("authenticationFailure"));
    let lost = validate(service).await;
    assert!(
        lost.contains("authenticationFailure"),
        "a ticket shown to the wrong service is gone: {lost}"
    );
    let resp = client
        .get(format!(
            "{web}/cas/login?service={}&user=carol",
            enc(service)
        ))
        .send()
        .await
        .expect("answer");
    let location = resp.headers()["location"]
        .to_str()
        .expect("text")
        .to_string();
    let ticket = location
        .rsplit("ticket=")
        .next()
        .expect("ticket")
        .to_string();
    let ok = client
        .get(format!(
            "{web}/cas/proxyValidate?ticket={}&service={}",
            enc(&ticket),
            enc(service)
        ))
        .send()
        .await
        .expect("answer")
        .text()
        .await
        .expect("body");
    assert!(ok.contains("<cas:user>carol</cas:user>"), "{ok}");
}

#[tokio::test]
async fn the_sms_gateway_texts_a_code_and_confirms_the_number_once_it_is_submitted() {
    let peers = start();
    let web = peers.web_url().expect("a web server");
    let api = format!("{web}/_matrix/identity/api/v1");
    let client = mxconform_harness::http_client_builder().build().unwrap();
    let post = |path: &str, body: Value| {
        let (client, url) = (client.clone(), format!("{api}/{path}"));
        async move {
            let resp = client
                .post(url)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .expect("answer");
            (
                resp.status().as_u16(),
                resp.json::<Value>().await.expect("JSON"),
            )
        }
    };
    let request = serde_json::json!({"client_secret": "s1", "country": "GB", "phone_number": "07700 900123", "send_attempt": 1});
    let (status, v) = post("validate/msisdn/requestToken", request.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(v["msisdn"], "447700900123");
    let sid = v["sid"].as_str().expect("sid").to_string();
    // The same attempt again is the same session, and texts nothing more.
    let (_, again) = post("validate/msisdn/requestToken", request).await;
    assert_eq!(again["sid"], sid.as_str());
    let sms = peers
        .mailbox
        .take("447700900123", Duration::from_secs(5))
        .await
        .expect("a text message");
    let code = sms
        .text
        .trim()
        .rsplit(' ')
        .next()
        .expect("code")
        .to_string();
    assert!(peers
        .mailbox
        .take("447700900123", Duration::from_millis(100))
        .await
        .is_err());
    let validated = format!("{api}/3pid/getValidated3pid?sid={sid}&client_secret=s1");
    assert_eq!(
        get(&validated, None).await.0,
        400,
        "not validated before the code is submitted"
    );
    let (_, wrong) = post(
        "validate/msisdn/submitToken",
        serde_json::json!({"sid": sid, "client_secret": "s1", "token": "000000x"}),
    )
    .await;
    assert_eq!(wrong["success"], false);
    let (_, right) = post(
        "validate/msisdn/submitToken",
        serde_json::json!({"sid": sid, "client_secret": "s1", "token": code}),
    )
    .await;
    assert_eq!(right["success"], true);
    let (status, body) = get(&validated, None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"address\":\"447700900123\""), "{body}");
    let (status, _) = post("validate/msisdn/requestToken", serde_json::json!({"client_secret": "s", "country": "ZZ", "phone_number": "1234", "send_attempt": 1})).await;
    assert_eq!(status, 400);
}
