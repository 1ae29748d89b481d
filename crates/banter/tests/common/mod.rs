//! Test client for the end-to-end suites: a raw-frame client over TCP or WebSocket (so tests can send
//! anything, hostile input included), token helpers and a minimal HTTP/1.1 client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use proto::{cmd, Body, Frame, Im};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

pub use banter::testing::TestServer;

pub const APPID: i64 = 7;
pub const WAIT: Duration = Duration::from_secs(10);

/// A loopback address with a port free right now (for a process the test starts).
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A minimal HTTP/1.1 request; returns (status, body).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect http");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.expect("write http");
    s.write_all(body).await.expect("write http body");
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("http timeout")
        .expect("read http");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n + 2 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

pub async fn post_json(
    addr: SocketAddr,
    path: &str,
    json: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let (st, body) = http(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        json.to_string().as_bytes(),
    )
    .await;
    (
        st,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    )
}

/// Issues a token through `/auth/grant`.
pub async fn grant(server: &TestServer, uid: i64) -> String {
    let (st, v) = post_json(
        server.http,
        "/auth/grant",
        &serde_json::json!({"appid": APPID, "uid": uid, "user_name": format!("user{uid}")}),
    )
    .await;
    assert_eq!(st, 200, "grant: {v}");
    v["token"].as_str().expect("token").to_string()
}

enum Conn {
    Tcp(TcpStream, BytesMut),
    Ws(Box<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>>),
}

/// A raw protocol client.
pub struct Client {
    conn: Conn,
    pub seq: i32,
    pub version: u8,
}

impl Client {
    pub async fn tcp(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).await.expect("connect");
        s.set_nodelay(true).ok();
        Client {
            conn: Conn::Tcp(s, BytesMut::new()),
            seq: 0,
            version: 1,
        }
    }

    /// A TCP client whose socket's receive buffer is asked to be `bytes` (the kernel doubles it), so
    /// a client that does not read soon stops the server's writes.
    pub async fn tcp_with_recv_buffer(addr: SocketAddr, bytes: u32) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
        let s = socket.connect(addr).await.expect("connect");
        s.set_nodelay(true).ok();
        Client {
            conn: Conn::Tcp(s, BytesMut::new()),
            seq: 0,
            version: 1,
        }
    }

    pub async fn ws(server: &TestServer) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(server.ws_url())
            .await
            .expect("ws connect");
        Client {
            conn: Conn::Ws(Box::new(ws)),
            seq: 0,
            version: 1,
        }
    }

    /// Connects (TCP or WS) and authenticates as `uid` with protocol `version`; panics unless AUTH_STATUS 0.
    pub async fn login(
        server: &TestServer,
        uid: i64,
        version: u8,
        ws: bool,
        device: &str,
    ) -> Client {
        let token = grant(server, uid).await;
        let mut c = if ws {
            Client::ws(server).await
        } else {
            Client::tcp(server.tcp).await
        };
        let status = c
            .auth(&token, version, proto::Platform::ANDROID, device)
            .await;
        assert_eq!(status, 0, "auth of uid {uid}");
        c
    }

    /// Sends AUTH_TOKEN; returns the AUTH_STATUS, which must be the first frame.
    pub async fn auth(&mut self, token: &str, version: u8, platform: u8, device: &str) -> i32 {
        self.version = version;
        self.send_body(
            &Body::AuthToken(proto::AuthToken {
                platform_id: platform,
                token: Bytes::copy_from_slice(token.as_bytes()),
                device_id: Bytes::copy_from_slice(device.as_bytes()),
            }),
            0,
        )
        .await;
        let f = self.recv().await.expect("auth reply");
        assert_eq!(f.cmd, cmd::AUTH_STATUS, "first frame after AUTH_TOKEN");
        match Body::decode(f.cmd, f.version, &f.body).expect("auth status body") {
            Body::AuthStatus(s) => s,
            other => panic!("unexpected {other:?}"),
        }
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        match &mut self.conn {
            Conn::Tcp(s, _) => s.write_all(bytes).await.expect("write"),
            Conn::Ws(ws) => ws
                .send(Message::Binary(Bytes::copy_from_slice(bytes)))
                .await
                .expect("ws write"),
        }
    }

    /// Sends `body` with the next seq and this client's version; returns the seq used.
    pub async fn send_body(&mut self, body: &Body, flag: u8) -> i32 {
        let v = self.version;
        self.send_body_v(body, flag, v).await
    }

    pub async fn send_body_v(&mut self, body: &Body, flag: u8, version: u8) -> i32 {
        self.seq += 1;
        let mut b = BytesMut::new();
        body.encode_frame(self.seq, version, flag, &mut b);
        self.send_raw(&b).await;
        self.seq
    }

    pub async fn send_im(&mut self, sender: i64, receiver: i64, content: &str) -> i32 {
        let im = Im {
            sender,
            receiver,
            timestamp: 0,
            msgid: self.seq + 1,
            content: Bytes::copy_from_slice(content.as_bytes()),
        };
        self.send_body(&Body::Im(im), proto::flag::TEXT).await
    }

    /// The next frame, or None on close / timeout.
    pub async fn recv_timeout(&mut self, t: Duration) -> Option<Frame> {
        tokio::time::timeout(t, self.recv_inner())
            .await
            .unwrap_or_default()
    }

    pub async fn recv(&mut self) -> Option<Frame> {
        self.recv_timeout(WAIT).await
    }

    async fn recv_inner(&mut self) -> Option<Frame> {
        match &mut self.conn {
            Conn::Tcp(s, buf) => loop {
                if let Ok(Some(f)) = Frame::decode(buf, 1 << 20) {
                    return Some(f);
                }
                match s.read_buf(buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            },
            Conn::Ws(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Binary(b))) => {
                        let mut bm = BytesMut::from(&b[..]);
                        let f = Frame::decode(&mut bm, 1 << 20).ok().flatten()?;
                        assert!(bm.is_empty(), "one frame per websocket message");
                        return Some(f);
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                    Some(Ok(_)) => continue,
                }
            },
        }
    }

    /// Receives frames until one with `cmd` arrives (returning it and everything before it).
    pub async fn recv_until(&mut self, want: u8) -> (Frame, Vec<Frame>) {
        let mut before = Vec::new();
        loop {
            let f = self.recv().await.unwrap_or_else(|| {
                panic!("connection ended waiting for cmd {want}; got {before:?}")
            });
            if f.cmd == want {
                return (f, before);
            }
            before.push(f);
        }
    }

    /// True when the server closed the connection (EOF) within `t`, skipping any frames.
    pub async fn closed_within(&mut self, t: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            match tokio::time::timeout(left, self.recv_inner()).await {
                Ok(None) => return true,
                Ok(Some(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    /// Sends SYNC(key) and collects the messages up to SYNC_END; returns (messages, end key, notify after end?).
    pub async fn sync(&mut self, key: i64) -> (Vec<Frame>, i64) {
        self.send_body(&Body::Sync(key), 0).await;
        let (_begin, _) = self.recv_until(cmd::SYNC_BEGIN).await;
        let mut msgs = Vec::new();
        loop {
            let f = self.recv().await.expect("sync frames");
            if f.cmd == cmd::SYNC_END {
                let end = match Body::decode(f.cmd, f.version, &f.body).expect("end") {
                    Body::SyncEnd(k) => k,
                    _ => unreachable!(),
                };
                return (msgs, end);
            }
            msgs.push(f);
        }
    }

    /// Syncs from `key` until caught up (following SYNC_NOTIFY after a full batch); returns all messages and the final key.
    pub async fn sync_all(&mut self, mut key: i64) -> (Vec<Frame>, i64) {
        let mut all = Vec::new();
        loop {
            let (msgs, end) = self.sync(key).await;
            let n = msgs.len();
            all.extend(msgs);
            key = end;
            if n == 0 {
                return (all, key);
            }
        }
    }
}

/// Decodes an IM frame body in the frame's version.
pub fn im_of(f: &Frame) -> Im {
    match Body::decode(f.cmd, f.version, &f.body).expect("decode") {
        Body::Im(im) | Body::GroupIm(im) => im,
        other => panic!("not an IM: {other:?}"),
    }
}

pub fn body_of(f: &Frame) -> Body {
    Body::decode(f.cmd, f.version, &f.body).expect("decode")
}
