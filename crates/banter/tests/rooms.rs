//! Chat rooms: enter/leave, delivery to everyone but the sender with flag 0, isolation between rooms,
//! checked senders, speak bans, and the bounded backlog of a slow member.
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
    let s = TestServer::start_with(|c| c.server.room_backlog = 16)
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
    let (_, metrics) = http(s.http, "GET", "/metrics", &[], b"").await;
    let dropped: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("banter_room_messages_dropped_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
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
