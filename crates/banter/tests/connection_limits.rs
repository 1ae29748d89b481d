//! Unauthenticated clients cannot exhaust the server: every socket on the client and API ports is
//! counted from accept against its limit, and one that does not get on with it (silent, half an
//! upgrade request, half a request head, half a body) is closed on time.
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use access::app::Stats;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Sockets of each test: within the 20,000-descriptor budget (both ends are in this process).
const SOCKETS: usize = 1000;

/// Slack for a loaded 2-core machine on top of a timeout before a socket must be closed.
const SLACK: Duration = Duration::from_secs(5);

fn stats(s: &TestServer) -> &Stats {
    &s.running.as_ref().expect("running").node.app.stats
}

async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads until the server closes the connection (EOF or reset); returns what was read and when the
/// connection ended. Panics if it is still open at `deadline`.
async fn read_to_close(mut s: TcpStream, deadline: Instant, what: &str) -> (Vec<u8>, Instant) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => panic!("{what}: still open at the deadline"),
            Ok(Ok(0)) | Ok(Err(_)) => return (out, Instant::now()),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

const UPGRADE: &str = "GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// Sends a complete upgrade request and reads the 101 answer (and nothing after it).
async fn upgrade(s: &mut TcpStream) {
    s.write_all(UPGRADE.as_bytes())
        .await
        .expect("write upgrade");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut b))
            .await
            .expect("upgrade answer in time")
            .expect("read upgrade answer");
        assert_eq!(n, 1, "closed during the upgrade: {head:?}");
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_half_upgraded_websocket_sockets_are_counted_and_closed_at_the_login_timeout() {
    const LOGIN: Duration = Duration::from_secs(5);
    let s = TestServer::start_with(|c| {
        c.server.max_connections = SOCKETS;
        c.server.login_timeout_secs = LOGIN.as_secs();
    })
    .await
    .unwrap();
    // A fifth silent, a fifth upgraded without ever authenticating, the rest stopping in the middle
    // of the upgrade request (in the request line, in the headers, before the final empty line).
    let mut socks = Vec::with_capacity(SOCKETS);
    for i in 0..SOCKETS {
        let mut t = TcpStream::connect(s.ws).await.expect("connect");
        let opened = Instant::now();
        match i % 5 {
            0 => {}
            1 => upgrade(&mut t).await,
            2 => t.write_all(b"GET /w").await.expect("write"),
            3 => t
                .write_all(b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgr")
                .await
                .expect("write"),
            _ => t
                .write_all(&UPGRADE.as_bytes()[..UPGRADE.len() - 2])
                .await
                .expect("write"),
        }
        socks.push((opened, t));
    }
    wait_for("every socket to hold a permit", || {
        stats(&s).client_sockets.load(Ordering::Relaxed) == SOCKETS as u64
    })
    .await;

    // The limit is reached: one more WebSocket connection is refused with a 503 (or at least not
    // upgraded), and so is one on the TCP port (shared limit), at once.
    let refused_before = stats(&s).connections_rejected.load(Ordering::Relaxed);
    let mut extra = TcpStream::connect(s.ws).await.expect("connect");
    let _ = extra.write_all(UPGRADE.as_bytes()).await;
    let (answer, _) = read_to_close(extra, Instant::now() + SLACK, "refused ws").await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 503"),
        "{answer}"
    );
    let mut extra_tcp = Client::tcp(s.tcp).await;
    assert!(
        extra_tcp.closed_within(SLACK).await,
        "a TCP connection beyond the limit is closed"
    );
    assert!(stats(&s).connections_rejected.load(Ordering::Relaxed) >= refused_before + 2);

    // Every one of them is closed by its login deadline.
    let mut closing = JoinSet::new();
    for (opened, t) in socks {
        closing.spawn(async move {
            let (_, closed) = read_to_close(t, opened + LOGIN + SLACK, "idle ws socket").await;
            closed - opened
        });
    }
    let mut longest = Duration::ZERO;
    while let Some(lived) = closing.join_next().await {
        longest = longest.max(lived.expect("socket task"));
    }
    eprintln!("{SOCKETS} websocket-port sockets closed; the longest lived {longest:?} (login timeout {LOGIN:?})");
    wait_for("the permits to be released", || {
        stats(&s).client_sockets.load(Ordering::Relaxed) == 0
    })
    .await;
    // And the port serves clients again.
    let mut c = Client::login(&s, 1, 1, true, "after").await;
    c.send_body(&proto::Body::Ping, 0).await;
    assert_eq!(c.recv().await.expect("pong").cmd, proto::cmd::PONG);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_half_requests_and_half_bodies_on_the_api_port_are_counted_and_closed() {
    const HEADER: Duration = Duration::from_secs(4);
    const BODY: Duration = Duration::from_secs(4);
    let s = TestServer::start_with(|c| {
        c.api.max_connections = SOCKETS;
        c.api.header_timeout_secs = HEADER.as_secs();
        c.api.body_timeout_secs = BODY.as_secs();
    })
    .await
    .unwrap();
    let post = "POST /post_peer_message?appid=7&sender=1&receiver=2 HTTP/1.1\r\nHost: x\r\n";
    let mut socks = Vec::with_capacity(SOCKETS);
    for i in 0..SOCKETS {
        let mut t = TcpStream::connect(s.http).await.expect("connect");
        let opened = Instant::now();
        match i % 5 {
            0 | 1 => {}
            2 => t.write_all(post.as_bytes()).await.expect("write"),
            // Headers complete, 10 of 100 body bytes.
            _ => t
                .write_all(format!("{post}Content-Length: 100\r\n\r\n0123456789").as_bytes())
                .await
                .expect("write"),
        }
        socks.push((i % 5 >= 3, opened, t));
    }
    wait_for("every API connection to be counted", || {
        stats(&s).api_connections.load(Ordering::Relaxed) == SOCKETS as u64
    })
    .await;

    // One more connection gets a 503 with a JSON error.
    let mut extra = TcpStream::connect(s.http).await.expect("connect");
    extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let (answer, _) = read_to_close(extra, Instant::now() + SLACK, "refused api").await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    let json = answer.split_once("\r\n\r\n").expect("a body").1;
    let v: serde_json::Value = serde_json::from_str(json).expect("json");
    assert_eq!(v["meta"]["code"], 503, "{v}");
    assert!(
        v["meta"]["message"]
            .as_str()
            .unwrap()
            .contains("api.max_connections"),
        "{v}"
    );
    assert_eq!(
        stats(&s).api_connections_rejected.load(Ordering::Relaxed),
        1
    );

    // Silent sockets and half request heads are closed at the header timeout; half bodies get a 408
    // with a JSON error at the body timeout.
    let mut closing = JoinSet::new();
    for (half_body, opened, t) in socks {
        closing.spawn(async move {
            let limit = if half_body { BODY } else { HEADER };
            let (answer, closed) =
                read_to_close(t, opened + limit + SLACK, "idle api socket").await;
            let answer = String::from_utf8_lossy(&answer).into_owned();
            if half_body {
                assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
                let v: serde_json::Value =
                    serde_json::from_str(answer.split_once("\r\n\r\n").expect("body").1)
                        .expect("json");
                assert_eq!(v["meta"]["code"], 408, "{v}");
            }
            closed - opened
        });
    }
    let mut longest = Duration::ZERO;
    while let Some(lived) = closing.join_next().await {
        longest = longest.max(lived.expect("socket task"));
    }
    eprintln!("{SOCKETS} API sockets closed; the longest lived {longest:?}");
    wait_for("the API permits to be released", || {
        stats(&s).api_connections.load(Ordering::Relaxed) == 0
    })
    .await;
    assert_eq!(
        stats(&s).api_bodies_refused.load(Ordering::Relaxed),
        (SOCKETS * 2 / 5) as u64
    );
    // Nothing was posted, and the API answers again.
    let (st, body) = http(
        s.http,
        "GET",
        "/load_history_message?appid=7&uid=2&last_id=0",
        &[],
        b"",
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 0, "{v}");
    s.stop().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_at_the_header_timeout() {
    let s = TestServer::start_with(|c| c.api.header_timeout_secs = 2)
        .await
        .unwrap();
    let mut t = TcpStream::connect(s.http).await.expect("connect");
    let started = Instant::now();
    t.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let (answer, closed) =
        read_to_close(t, started + Duration::from_secs(2) + SLACK, "keep-alive").await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        closed - started >= Duration::from_millis(1900),
        "{:?}",
        closed - started
    );
    s.stop().await;
}
