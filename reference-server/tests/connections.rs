//! The listener's limits, over real sockets: a client that never finishes its headers is
//! disconnected, a body that never finishes is answered 408, and connections beyond the cap
//! are closed at once.

use std::time::{Duration, Instant};

use mxconform_server::{Config, ConnectionLimits, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start(limits: ConnectionLimits) -> std::net::SocketAddr {
    let mut config = Config::in_memory("test.local");
    config.limits = limits;
    let server = Server::open(config).expect("the server opens");
    let running = mxconform_server::serve(server, "127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("listens");
    let addr = running.addr;
    std::mem::forget(running);
    addr
}

/// What the server sends before it closes the connection, or `None` if it keeps it open
/// for `wait`.
async fn until_closed(sock: &mut TcpStream, wait: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, sock.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
    }
}

/// A request on a connection of its own is answered 200 (and the connection closed).
async fn answered_200(addr: std::net::SocketAddr) {
    let mut sock = TcpStream::connect(addr).await.expect("connects");
    sock.write_all(
        b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("writes");
    let answer = until_closed(&mut sock, Duration::from_secs(5))
        .await
        .expect("closed");
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let addr = start(ConnectionLimits {
        header_timeout: Duration::from_millis(300),
        ..ConnectionLimits::default()
    })
    .await;
    let mut slow = TcpStream::connect(addr).await.expect("connects");
    slow.write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("writes");
    let started = Instant::now();
    let closed = until_closed(&mut slow, Duration::from_secs(5)).await;
    assert!(closed.is_some(), "the connection was still open after 5 s");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // A kept-alive connection left idle after an answer is closed after the same time.
    let mut idle = TcpStream::connect(addr).await.expect("connects");
    idle.write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("writes");
    let mut head = [0u8; 12];
    idle.read_exact(&mut head).await.expect("answered");
    let closed = until_closed(&mut idle, Duration::from_secs(5)).await;
    assert!(
        closed.is_some(),
        "an idle kept-alive connection was still open after 5 s"
    );
    // A client that finishes in time is answered on a connection of its own.
    answered_200(addr).await;
}

#[tokio::test]
async fn a_body_that_never_finishes_is_answered_408() {
    let addr = start(ConnectionLimits {
        body_timeout: Duration::from_millis(300),
        ..ConnectionLimits::default()
    })
    .await;
    let mut sock = TcpStream::connect(addr).await.expect("connects");
    sock.write_all(
        b"POST /_matrix/client/v3/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{\"user",
    )
    .await
    .expect("writes");
    let answer = until_closed(&mut sock, Duration::from_secs(5))
        .await
        .expect("answered and closed");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"errcode\""), "{text}");
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed() {
    let addr = start(ConnectionLimits {
        max_connections: 3,
        ..ConnectionLimits::default()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(addr).await.expect("connects");
        s.write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("writes");
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).await.expect("answered");
        assert_eq!(&buf, b"HTTP/1.1 200");
        held.push(s);
    }
    let mut extra = TcpStream::connect(addr)
        .await
        .expect("the kernel accepts it");
    let _ = extra
        .write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let answer = until_closed(&mut extra, Duration::from_secs(5)).await;
    assert_eq!(
        answer.as_deref(),
        Some(&b""[..]),
        "the fourth connection is closed unanswered"
    );
    // One freed, the next is served.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    answered_200(addr).await;
}
