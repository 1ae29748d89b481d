//! Helpers for router tests: a router on 127.0.0.1:0, fake access nodes speaking the route protocol
//! on raw sockets, and a tiny HTTP client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use cluster::route_proto::{
    cmd, pair_body, push_bodies, route_message_body, subscribe_body, write_frame, RouteBody,
};
use proto::Frame;
use route::{RouterConfig, RunningRouter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestRouter {
    pub running: Option<RunningRouter>,
    pub addr: SocketAddr,
    pub http: SocketAddr,
    pub shutdown: CancellationToken,
}

impl TestRouter {
    pub async fn start(config: RouterConfig) -> TestRouter {
        TestRouter::start_on(config, "127.0.0.1:0").await
    }

    /// Starts on a given access-node address (e.g. the port of a router that was stopped).
    pub async fn start_on(mut config: RouterConfig, listen: &str) -> TestRouter {
        config.listen = listen.into();
        config.http_listen = "127.0.0.1:0".into();
        let shutdown = CancellationToken::new();
        let running = route::run(config, shutdown.clone())
            .await
            .expect("router starts");
        let addr = running.addr;
        let http = running.http_addr.expect("http enabled");
        TestRouter {
            running: Some(running),
            addr,
            http,
            shutdown,
        }
    }

    /// Connects a fake access node and waits until the router has registered it.
    pub async fn node(&self) -> Node {
        let before = self.json("/summary").await["connections"]
            .as_array()
            .map_or(0, Vec::len);
        let stream = TcpStream::connect(self.addr).await.expect("connect");
        self.wait_summary("the connection", |s| {
            s["connections"].as_array().map_or(0, Vec::len) > before
        })
        .await;
        Node {
            stream,
            buf: BytesMut::new(),
            seq: 0,
        }
    }

    pub async fn get(&self, path_query: &str) -> (u16, String) {
        http_get(self.http, path_query).await
    }

    pub async fn json(&self, path_query: &str) -> serde_json::Value {
        let (status, body) = self.get(path_query).await;
        assert_eq!(status, 200, "{path_query}: {body}");
        serde_json::from_str(&body).expect("json")
    }

    /// Wait until `f(/summary)` holds.
    pub async fn wait_summary(&self, what: &str, f: impl Fn(&serde_json::Value) -> bool) {
        let start = Instant::now();
        loop {
            let s = self.json("/summary").await;
            if f(&s) {
                return;
            }
            assert!(start.elapsed() < WAIT, "timed out waiting for {what}: {s}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Wait until the router holds exactly these per-connection (users, rooms) counts (in
    /// connection order).
    pub async fn wait_subscriptions(&self, expected: &[(u64, u64)]) {
        self.wait_subscriptions_by(expected, false).await
    }

    /// Like `wait_subscriptions`, in whatever connection order.
    pub async fn wait_subscriptions_any_order(&self, expected: &[(u64, u64)]) {
        self.wait_subscriptions_by(expected, true).await
    }

    async fn wait_subscriptions_by(&self, expected: &[(u64, u64)], any_order: bool) {
        let mut expected = expected.to_vec();
        if any_order {
            expected.sort_unstable();
        }
        self.wait_summary("subscriptions", |s| {
            let got: Vec<(u64, u64)> = s["connections"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|c| {
                            (
                                c["users"].as_u64().unwrap_or(0),
                                c["rooms"].as_u64().unwrap_or(0),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let mut got = got;
            if any_order {
                got.sort_unstable();
            }
            got == expected
        })
        .await;
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(r) = self.running.take() {
            tokio::time::timeout(WAIT, r.wait())
                .await
                .expect("router stops");
        }
    }
}

pub async fn http_get(addr: SocketAddr, path_query: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("http connect");
    let req = format!("GET {path_query} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("http write");
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("http answer")
        .expect("http read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    // Bodies may be chunked; our answers are small and sent with a length, but handle chunks.
    let body = if text
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&body)
    } else {
        body
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A fake access node.
pub struct Node {
    pub stream: TcpStream,
    buf: BytesMut,
    seq: i32,
}

/// An inner IM frame as a client would receive it.
pub fn im(sender: i64, receiver: i64, text: &str) -> Bytes {
    inner(proto::cmd::IM, sender, receiver, text)
}

pub fn inner(c: u8, sender: i64, receiver: i64, text: &str) -> Bytes {
    let mut body = BytesMut::new();
    body.extend_from_slice(&sender.to_be_bytes());
    body.extend_from_slice(&receiver.to_be_bytes());
    body.extend_from_slice(&[0, 0, 0, 3, 0, 0, 0, 4]);
    body.extend_from_slice(text.as_bytes());
    Frame {
        seq: 0,
        cmd: c,
        version: 2,
        flag: proto::flag::PUSH,
        body: body.freeze(),
    }
    .to_bytes()
}

impl Node {
    pub async fn send(&mut self, c: u8, body: &[u8]) {
        self.seq += 1;
        let mut b = BytesMut::new();
        write_frame(&mut b, self.seq, c, body);
        self.stream.write_all(&b).await.expect("write");
    }

    pub async fn subscribe(&mut self, appid: i64, uid: i64, online: bool) {
        self.send(cmd::SUBSCRIBE, &subscribe_body(appid, uid, online))
            .await;
    }

    pub async fn unsubscribe(&mut self, appid: i64, uid: i64) {
        self.send(cmd::UNSUBSCRIBE, &pair_body(appid, uid)).await;
    }

    pub async fn subscribe_room(&mut self, appid: i64, room: i64) {
        self.send(cmd::SUBSCRIBE_ROOM, &pair_body(appid, room))
            .await;
    }

    pub async fn unsubscribe_room(&mut self, appid: i64, room: i64) {
        self.send(cmd::UNSUBSCRIBE_ROOM, &pair_body(appid, room))
            .await;
    }

    /// PUBLISH / PUBLISH_GROUP / PUBLISH_ROOM; returns the body sent.
    pub async fn publish(
        &mut self,
        c: u8,
        appid: i64,
        receiver: i64,
        msgid: i64,
        prev: i64,
        inner: &[u8],
    ) -> Bytes {
        let body = route_message_body(appid, receiver, msgid, prev, 0, inner).expect("encodes");
        self.send(c, &body).await;
        body
    }

    pub async fn push(&mut self, appid: i64, receivers: &[i64], inner: &[u8]) {
        for body in push_bodies(appid, receivers, inner).expect("encodes") {
            self.send(cmd::PUSH, &body).await;
        }
    }

    /// The next frame within `d`, or None on timeout or close.
    pub async fn next_within(&mut self, d: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            if let Some(f) = Frame::decode(&mut self.buf, 1 << 20).expect("valid frame") {
                return Some(f);
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(_)) => {}
            }
        }
    }

    pub async fn next(&mut self) -> Frame {
        self.next_within(WAIT).await.expect("a frame")
    }

    /// Asserts nothing arrives within a short while.
    pub async fn nothing(&mut self) {
        if let Some(f) = self.next_within(Duration::from_millis(200)).await {
            panic!("unexpected frame {f:?}");
        }
    }

    pub async fn next_body(&mut self) -> RouteBody {
        let f = self.next().await;
        RouteBody::decode(f.cmd, &f.body).expect("valid route body")
    }

    /// True when the router closes this connection within `d`.
    pub async fn closed_within(&mut self, d: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let mut scratch = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut scratch)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => return false,
            }
        }
    }
}
