//! Chat rooms: enter/leave, delivery to everyone but the sender with flag 0, isolation between rooms,
//! checked senders, speak bans, the bounded backlog of a slow member, and the disconnection of a member
//! that never reads.
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::time::Duration;

use common::*;
use proto::{cmd, AckStatus, Body, Rt};

fn room_im(sender: i64, room: i64, text: &str) -> Body {
    Body::RoomIm(Rt {
        sender,
        receiver: room,
        content: text.as_bytes().to_vec().into(),
    })
}

#[tokio::test]
async fn room_messages_reach_the_room_only() {
    let s = TestServer::start().await.unwrap();
    let mut a = Client::login(&s, 1, 2, false, "a").await;
    let mut b = Client::login(&s, 2, 1, true, "b").await;
    let mut other = Client::login(&s, 3, 2, false, "c").await;
    for (c, room) in [(&mut a, 100), (&mut b, 100), (&mut other, 200)] {
        c.send_body(&Body::EnterRoom(room), 0).await;
    }
    // Make sure the enters are processed before sending.
    for c in [&mut a, &mut b, &mut other] {
        c.send_body(&Body::Ping, 0).await;
        c.recv_until(cmd::PONG).await;
    }
    let seq = a.send_body(&room_im(1, 100, "hi room"), 0).await;
    let (ack, _) = a.recv_until(cmd::ACK).await;
    assert_eq!(body_of(&ack), Body::Ack(proto::Ack { seq, status: 0 }));
    let (m, _) = b.recv_until(cmd::ROOM_IM).await;
    assert_eq!(m.flag, 0);
    assert_eq!(body_of(&m), room_im(1, 100, "hi room"));
    // The other room sees nothing; the sender does not get its own message back.
    assert!(other
        .recv_timeout(Duration::from_millis(300))
        .await
        .is_none());
    a.send_body(&Body::Ping, 0).await;
    assert_eq!(a.recv().await.unwrap().cmd, cmd::PONG);

    // After LEAVE_ROOM, b gets nothing more; entering another room leaves the first.
    b.send_body(&Body::LeaveRoom(100), 0).await;
    b.send_body(&Body::Ping, 0).await;
    b.recv_until(cmd::PONG).await;
    a.send_body(&room_im(1, 100, "bye"), 0).await;
    a.recv_until(cmd::ACK).await;
    assert!(b.recv_timeout(Duration::from_millis(300)).await.is_none());

    // HTTP posts reach everyone in the room.
    let (st, _) = http(
        s.http,
        "POST",
        "/post_room_message?appid=7&uid=9&room=200",
        &[],
        b"from api",
    )
    .await;
    assert_eq!(st, 200);
    let (m, _) = other.recv_until(cmd::ROOM_IM).await;
    assert_eq!(body_of(&m), room_im(9, 200, "from api"));
    s.stop().await;
}

#[tokio::test]
async fn room_refusals_are_answered() {
    let s = TestServer::start().await.unwrap();
    let mut a = Client::login(&s, 1, 2, false, "a").await;
    // Not in the room.
    let seq = a.send_body(&room_im(1, 100, "x"), 0).await;
    let (ack, _) = a.recv_until(cmd::ACK).await;
    assert_eq!(
        body_of(&ack),
        Body::Ack(proto::Ack {
            seq,
            status: AckStatus::NOT_ALLOWED
        })
    );
    // Spoofed sender.
    a.send_body(&Body::EnterRoom(100), 0).await;
    let seq = a.send_body(&room_im(99, 100, "x"), 0).await;
    let (ack, _) = a.recv_until(cmd::ACK).await;
    assert_eq!(
        body_of(&ack),
        Body::Ack(proto::Ack {
            seq,
            status: AckStatus::INVALID_SENDER
        })
    );
    s.stop().await;
}

#[tokio::test]
async fn a_slow_member_drops_its_oldest_room_messages_and_the_room_keeps_going() {
    // About 16 of the 30 KB messages; never disconnected for lagging.
    let s = TestServer::start_with(|c| {
        c.server.room_backlog_bytes = 16 * 30_100;
        c.server.room_lag_disconnect_secs = 0;
    })
    .await
    .unwrap();
    let mut sender = Client::login(&s, 1, 2, false, "s").await;
    let mut slow = Client::login(&s, 2, 2, false, "slow").await;
    let mut fast = Client::login(&s, 3, 2, false, "fast").await;
    for c in [&mut sender, &mut slow, &mut fast] {
        c.send_body(&Body::EnterRoom(5), 0).await;
        c.send_body(&Body::Ping, 0).await;
        c.recv_until(cmd::PONG).await;
    }
    let big = "y".repeat(30_000);
    let n = 600;
    // The fast member reads as messages arrive and gets every one of them, in order.
    let fast_reader = tokio::spawn(async move {
        for i in 0..n {
            let (m, _) = fast.recv_until(cmd::ROOM_IM).await;
            let Body::RoomIm(rt) = body_of(&m) else {
                unreachable!()
            };
            assert!(
                rt.content.starts_with(format!("{i}:").as_bytes()),
                "message {i}"
            );
        }
    });
    for i in 0..n {
        sender
            .send_body(&room_im(1, 5, &format!("{i}:{big}")), 0)
            .await;
        sender.recv_until(cmd::ACK).await;
    }
    fast_reader.await.unwrap();
    // The slow member is still connected and receives a bounded, ordered tail of the messages.
    let mut got = Vec::new();
    while let Some(f) = slow.recv_timeout(Duration::from_millis(500)).await {
        if let Body::RoomIm(rt) = body_of(&f) {
            let text = String::from_utf8_lossy(&rt.content).into_owned();
            got.push(text.split(':').next().unwrap().parse::<usize>().unwrap());
        }
    }
    assert!(!got.is_empty());
    assert!(
        got.len() < n,
        "the slow member's backlog was bounded ({} of {n})",
        got.len()
    );
    let dropped = metric(&s, "banter_room_messages_dropped_total{cause=\"bytes\"}").await;
    assert_eq!(
        dropped as usize,
        n - got.len(),
        "every missing message was counted as dropped"
    );
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order");
    assert_eq!(*got.last().unwrap(), n - 1, "the newest arrives");
    slow.send_body(&Body::Ping, 0).await;
    assert_eq!(slow.recv_until(cmd::PONG).await.0.cmd, cmd::PONG);
    s.stop().await;
}

/// The value of the `/metrics` series `series` (name and labels as rendered), 0 when absent.
async fn metric(s: &TestServer, series: &str) -> u64 {
    let (_, metrics) = http(s.http, "GET", "/metrics", &[], b"").await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn a_member_that_never_reads_is_disconnected_and_the_others_get_everything() {
    let s = TestServer::start_with(|c| {
        c.server.room_backlog_bytes = 256 << 10;
        c.server.room_backlog_secs = 60;
        c.server.room_lag_disconnect_secs = 2;
    })
    .await
    .unwrap();
    let mut sender = Client::login(&s, 1, 2, false, "s").await;
    // A small receive buffer, so what the kernel holds for it is soon full.
    let mut stuck = Client::tcp_with_recv_buffer(s.tcp, 8192).await;
    let token = grant(&s, 2).await;
    let status = stuck
        .auth(&token, 2, proto::Platform::ANDROID, "stuck")
        .await;
    assert_eq!(status, 0);
    let mut reader = Client::login(&s, 3, 2, false, "reader").await;
    let mut ws_reader = Client::login(&s, 4, 2, true, "ws").await;
    for c in [&mut sender, &mut stuck, &mut reader, &mut ws_reader] {
        c.send_body(&Body::EnterRoom(7), 0).await;
        c.send_body(&Body::Ping, 0).await;
        c.recv_until(cmd::PONG).await;
    }
    // The readers check they get every message, in order, up to the last one ("end").
    let read_all = |mut c: Client| {
        tokio::spawn(async move {
            let mut next = 0usize;
            loop {
                let (m, _) = c.recv_until(cmd::ROOM_IM).await;
                let Body::RoomIm(rt) = body_of(&m) else {
                    unreachable!()
                };
                let text = String::from_utf8_lossy(&rt.content).into_owned();
                let head = text.split(':').next().unwrap();
                if head == "end" {
                    return (c, next);
                }
                assert_eq!(head.parse::<usize>().unwrap(), next, "in order, none lost");
                next += 1;
            }
        })
    };
    let (r1, r2) = (read_all(reader), read_all(ws_reader));
    // Send until the member that does not read has been disconnected (its socket buffers fill, then
    // its backlog, then it loses messages for two seconds): bounded in count and time.
    let big = "z".repeat(4_000);
    let mut sent = 0;
    let started = tokio::time::Instant::now();
    while metric(&s, "banter_room_lag_disconnects_total").await == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30) && sent < 20_000,
            "the member that never reads was not disconnected ({sent} messages sent)"
        );
        for _ in 0..10 {
            sender
                .send_body(&room_im(1, 7, &format!("{sent}:{big}")), 0)
                .await;
            sender.recv_until(cmd::ACK).await;
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sender.send_body(&room_im(1, 7, "end:"), 0).await;
    sender.recv_until(cmd::ACK).await;
    let (mut reader, got) = r1.await.unwrap();
    assert_eq!(got, sent, "the TCP reader got every message");
    let (_, got) = r2.await.unwrap();
    assert_eq!(got, sent, "the WebSocket reader got every message");
    // The member that never read was closed (after what its socket still held).
    assert!(stuck.closed_within(Duration::from_secs(10)).await);
    assert_eq!(metric(&s, "banter_room_lag_disconnects_total").await, 1);
    let bytes = metric(&s, "banter_room_messages_dropped_total{cause=\"bytes\"}").await;
    let gone = metric(
        &s,
        "banter_room_messages_dropped_total{cause=\"disconnect\"}",
    )
    .await;
    assert!(
        bytes > 0 && gone > 0,
        "dropped {bytes} for size, {gone} on disconnect"
    );
    let per_room: u64 = {
        let (_, metrics) = http(s.http, "GET", "/metrics", &[], b"").await;
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("banter_room_top_dropped_messages{") && l.contains("room=\"7\"")
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    assert_eq!(per_room, bytes + gone, "the room's own count");
    // The room goes on for the others.
    sender.send_body(&room_im(1, 7, "after"), 0).await;
    let (m, _) = reader.recv_until(cmd::ROOM_IM).await;
    assert_eq!(body_of(&m), room_im(1, 7, "after"));
    s.stop().await;
}
