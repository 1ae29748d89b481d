//! Hostile input: each bad connection is rejected or closed cleanly while a healthy client on the same
//! server keeps working.
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::*;
use proto::{cmd, Body};
use rand::{Rng, SeedableRng};

/// A logged-in pair that must keep working: a message from one reaches the other.
async fn healthy_pair_works(s: &TestServer, a: &mut Client, b: &mut Client, text: &str) {
    a.send_im(1000, 1001, text).await;
    a.recv_until(cmd::ACK).await;
    let (im, _) = b.recv_until(cmd::IM).await;
    assert_eq!(&im_of(&im).content[..], text.as_bytes());
    let _ = s;
}

fn header(len: i32, seq: i32, cmd: u8, version: u8) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(&[cmd, version, 0, 0]);
    v
}

#[tokio::test]
async fn bad_connections_are_closed_and_others_keep_working() {
    let s = TestServer::start().await.unwrap();
    let mut a = Client::login(&s, 1000, 2, false, "a").await;
    let mut b = Client::login(&s, 1001, 2, false, "b").await;

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("negative length", header(-1, 1, cmd::PING, 1)),
        ("oversized length", header(1 << 30, 1, cmd::IM, 1)),
        ("length just over the limit", header(32768, 1, cmd::IM, 1)),
        ("unknown command", header(0, 1, 200, 1)),
        ("legacy command", header(0, 1, 1, 1)),
        ("server-only command", header(8, 1, cmd::SYNC_NOTIFY, 1)),
        ("ping with a body", {
            let mut v = header(3, 1, cmd::PING, 1);
            v.extend_from_slice(b"abc");
            v
        }),
        ("short IM body", {
            let mut v = header(10, 1, cmd::IM, 1);
            v.extend_from_slice(&[0; 10]);
            v
        }),
        ("bad auth lengths", {
            let mut v = header(5, 1, cmd::AUTH_TOKEN, 1);
            v.extend_from_slice(&[2, 200, 1, 1, 1]);
            v
        }),
    ];
    for (name, bytes) in cases {
        let mut c = Client::tcp(s.tcp).await;
        c.send_raw(&bytes).await;
        assert!(
            c.closed_within(Duration::from_secs(5)).await,
            "{name}: connection not closed"
        );
        healthy_pair_works(&s, &mut a, &mut b, name).await;
    }

    // Random garbage.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for i in 0..20 {
        let mut c = Client::tcp(s.tcp).await;
        let n = rng.random_range(1..4096);
        let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
        c.send_raw(&bytes).await;
        drop(c);
        healthy_pair_works(&s, &mut a, &mut b, &format!("garbage {i}")).await;
    }

    // A truncated frame followed by EOF.
    {
        let mut c = Client::tcp(s.tcp).await;
        let mut v = header(100, 1, cmd::IM, 1);
        v.extend_from_slice(&[0; 50]);
        c.send_raw(&v).await;
        drop(c);
    }
    healthy_pair_works(&s, &mut a, &mut b, "after truncated").await;
    s.stop().await;
}

#[tokio::test]
async fn a_frame_split_into_one_byte_writes_is_decoded() {
    let s = TestServer::start().await.unwrap();
    let token = grant(&s, 5).await;
    let mut c = Client::tcp(s.tcp).await;
    let mut b = BytesMut::new();
    Body::AuthToken(proto::AuthToken {
        platform_id: 2,
        token: token.into(),
        device_id: "d".into(),
    })
    .encode_frame(1, 2, 0, &mut b);
    Body::Ping.encode_frame(2, 2, 0, &mut b);
    for byte in b.iter() {
        c.send_raw(&[*byte]).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(c.recv().await.unwrap().cmd, cmd::AUTH_STATUS);
    assert_eq!(c.recv().await.unwrap().cmd, cmd::PONG);
    s.stop().await;
}

#[tokio::test]
async fn ten_thousand_frames_in_one_write() {
    let s = TestServer::start().await.unwrap();
    let mut c = Client::login(&s, 6, 2, false, "d").await;
    let mut b = BytesMut::new();
    for i in 0..10_000 {
        Body::Ping.encode_frame(i + 2, 2, 0, &mut b);
    }
    c.send_raw(&b).await;
    for _ in 0..10_000 {
        assert_eq!(c.recv().await.expect("pong").cmd, cmd::PONG);
    }
    s.stop().await;
}

#[tokio::test]
async fn websocket_text_and_short_messages_close_the_connection() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let s = TestServer::start().await.unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(s.ws_url()).await.unwrap();
    ws.send(Message::Text("hello".into())).await.unwrap();
    let mut ws_ok = Client::login(&s, 7, 1, true, "w").await;
    use futures_util::StreamExt;
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return true,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await
    .unwrap_or(false);
    assert!(closed, "text message closes the websocket");
    // Declared length longer than the message.
    let mut c = Client::ws(&s).await;
    c.send_raw(&header(50, 1, cmd::PING, 1)).await;
    assert!(c.closed_within(Duration::from_secs(5)).await);
    ws_ok.send_body(&Body::Ping, 0).await;
    assert_eq!(ws_ok.recv().await.unwrap().cmd, cmd::PONG);
    s.stop().await;
}

#[tokio::test]
async fn a_client_that_does_not_read_is_disconnected_without_slowing_others() {
    let s = TestServer::start_with(|c| {
        c.server.outbox_frames = 64;
    })
    .await
    .unwrap();
    let mut sender = Client::login(&s, 2000, 2, false, "s").await;
    // The stuck receiver never reads.
    let mut stuck = Client::login(&s, 2001, 2, false, "stuck").await;
    let mut healthy = Client::login(&s, 2002, 2, false, "h").await;
    let big = "x".repeat(30_000);
    for _ in 0..400 {
        sender.send_im(2000, 2001, &big).await;
        sender.recv_until(cmd::ACK).await;
    }
    sender.send_im(2000, 2002, "still fine").await;
    let (im, _) = healthy.recv_until(cmd::IM).await;
    assert_eq!(&im_of(&im).content[..], b"still fine");
    assert!(
        stuck.closed_within(Duration::from_secs(20)).await,
        "stuck client was disconnected"
    );
    s.stop().await;
}

/// One client WebSocket frame, masked (with a zero key, which leaves the payload as it is) unless
/// `masked` is false.
fn ws_frame(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    let mask = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(mask | n as u8),
        n if n <= 0xffff => {
            f.push(mask | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(mask | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        f.extend_from_slice(&[0, 0, 0, 0]);
    }
    f.extend_from_slice(payload);
    f
}

/// Upgrades a raw connection to the WebSocket port, sends `bytes` and returns the status code of
/// the close frame the server answers with (None when it closes without one).
async fn close_code_for(s: &TestServer, bytes: &[u8]) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut t = tokio::net::TcpStream::connect(s.ws).await.expect("connect");
    t.write_all(
        b"GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .expect("upgrade");
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let mut b = [0u8; 1024];
        let n = tokio::time::timeout(WAIT, t.read(&mut b))
            .await
            .expect("upgrade answer")
            .expect("read");
        assert!(n > 0, "closed during the upgrade");
        buf.extend_from_slice(&b[..n]);
    };
    assert!(buf.starts_with(b"HTTP/1.1 101"));
    buf.drain(..head_end);
    t.write_all(bytes).await.expect("send");
    // Server frames are unmasked and, here, short: the close frame is 0x88, a length < 126, the code.
    loop {
        if buf.len() >= 2 {
            let len = (buf[1] & 0x7f) as usize;
            if buf.len() >= 2 + len {
                if buf[0] & 0x0f == 0x8 {
                    return (len >= 2).then(|| u16::from_be_bytes([buf[2], buf[3]]));
                }
                buf.drain(..2 + len);
                continue;
            }
        }
        let mut b = [0u8; 1024];
        match tokio::time::timeout(WAIT, t.read(&mut b))
            .await
            .expect("the server closes the connection")
        {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&b[..n]),
        }
    }
}

#[tokio::test]
async fn websocket_violations_are_closed_with_the_matching_status_code() {
    let s = TestServer::start().await.unwrap();
    let mut auth_status = header(4, 1, cmd::AUTH_STATUS, 1);
    auth_status.extend_from_slice(&[0, 0, 0, 0]);
    let mut short_im = header(3, 1, cmd::IM, 1);
    short_im.extend_from_slice(b"abc");
    let mut too_long_body = header(40_000, 1, cmd::IM, 1);
    too_long_body.resize(12 + 40_000, 0);
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        // Only binary messages carry frames: 1003 unsupported data.
        ("text message", ws_frame(0x1, b"hello", true), 1003),
        // Over the 65,536-byte message limit: 1009.
        (
            "oversize message",
            ws_frame(0x2, &vec![0u8; 70_000], true),
            1009,
        ),
        // A frame body over the IM protocol's limit, in a message within the WebSocket limit: 1009.
        (
            "oversize frame body",
            ws_frame(0x2, &too_long_body, true),
            1009,
        ),
        // WebSocket protocol violations: 1002.
        ("reserved opcode", ws_frame(0x3, b"x", true), 1002),
        (
            "unmasked client frame",
            ws_frame(0x2, &header(0, 1, cmd::PING, 1), false),
            1002,
        ),
        // IM protocol violations inside a well-formed message: 1008.
        (
            "server-only command",
            ws_frame(0x2, &auth_status, true),
            1008,
        ),
        ("undecodable body", ws_frame(0x2, &short_im, true), 1008),
        (
            "frame longer than its message",
            ws_frame(0x2, &header(50, 1, cmd::PING, 1), true),
            1008,
        ),
    ];
    for (what, bytes, want) in cases {
        assert_eq!(close_code_for(&s, &bytes).await, Some(want), "{what}");
    }
    // A well-behaved client is unaffected.
    let mut c = Client::login(&s, 7, 1, true, "w").await;
    c.send_body(&Body::Ping, 0).await;
    assert_eq!(c.recv().await.unwrap().cmd, cmd::PONG);
    s.stop().await;
}
