//! Peer messages end to end: online and offline receivers, the sender's other devices, the METADATA
//! fast path, sync-key persistence and ordering, over TCP and WebSocket in protocol versions 0, 1 and 2.
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use common::*;
use proto::{cmd, flag, Body};

async fn online_delivery(ws: bool, version: u8) {
    let s = TestServer::start().await.unwrap();
    let mut a = Client::login(&s, 1, version, ws, "a1").await;
    let mut a2 = Client::login(&s, 1, version, ws, "a2").await;
    let mut b = Client::login(&s, 2, version, ws, "b1").await;
    let seq = a.send_im(1, 2, "{\"text\":\"hello\"}").await;

    // Sender: METADATA then ACK, consecutive seqs; ACK echoes the request seq.
    let meta = a.recv().await.unwrap();
    assert_eq!(meta.cmd, cmd::METADATA);
    let ack = a.recv().await.unwrap();
    assert_eq!(ack.cmd, cmd::ACK);
    assert_eq!(ack.seq, meta.seq + 1);
    assert_eq!(ack.body.len(), if version >= 2 { 5 } else { 4 });
    match body_of(&ack) {
        Body::Ack(a) => assert_eq!(a.seq, seq),
        other => panic!("{other:?}"),
    }
    let Body::Metadata(sender_meta) = body_of(&meta) else {
        panic!()
    };
    assert!(sender_meta.sync_key > 0);
    assert_eq!(sender_meta.prev_sync_key, 0);

    // Receiver: METADATA + IM(PUSH) on consecutive seqs, then SYNC_NOTIFY.
    for (c, _who) in [(&mut b, "receiver"), (&mut a2, "sender's other device")] {
        let meta = c.recv().await.unwrap();
        assert_eq!(meta.cmd, cmd::METADATA);
        let im = c.recv().await.unwrap();
        assert_eq!(im.cmd, cmd::IM);
        assert_eq!(im.seq, meta.seq + 1);
        assert_eq!(im.flag & flag::PUSH, flag::PUSH);
        assert_eq!(im.flag & flag::TEXT, flag::TEXT);
        assert_eq!(im.version, version);
        let m = im_of(&im);
        assert_eq!((m.sender, m.receiver), (1, 2));
        assert_eq!(&m.content[..], b"{\"text\":\"hello\"}");
        if version >= 1 {
            assert!(m.timestamp > 1_600_000_000, "server sets the timestamp");
        }
        let Body::Metadata(md) = body_of(&meta) else {
            panic!()
        };
        let notify = c.recv().await.unwrap();
        assert_eq!(notify.cmd, cmd::SYNC_NOTIFY);
        assert_eq!(body_of(&notify), Body::SyncNotify(md.sync_key));
    }
    s.stop().await;
}

#[tokio::test]
async fn online_delivery_tcp_v1() {
    online_delivery(false, 1).await;
}

#[tokio::test]
async fn online_delivery_tcp_v2() {
    online_delivery(false, 2).await;
}

#[tokio::test]
async fn online_delivery_tcp_v0() {
    online_delivery(false, 0).await;
}

#[tokio::test]
async fn online_delivery_ws_v1() {
    online_delivery(true, 1).await;
}

#[tokio::test]
async fn online_delivery_ws_v2() {
    online_delivery(true, 2).await;
}

#[tokio::test]
async fn offline_receiver_gets_messages_by_sync_and_keys_persist() {
    let s = TestServer::start().await.unwrap();
    let mut a = Client::login(&s, 10, 2, false, "a").await;
    for i in 0..5 {
        a.send_im(10, 11, &format!("m{i}")).await;
        a.recv_until(cmd::ACK).await;
    }
    let mut b = Client::login(&s, 11, 1, false, "b").await;
    let (msgs, end) = b.sync(0).await;
    assert_eq!(msgs.len(), 5);
    for (i, f) in msgs.iter().enumerate() {
        assert_eq!(f.cmd, cmd::IM);
        assert_eq!(f.flag & flag::PUSH, 0, "synced messages never carry PUSH");
        assert_eq!(&im_of(f).content[..], format!("m{i}").as_bytes());
    }
    // Report the key, reconnect, SYNC(0) resumes from it.
    b.send_body(&Body::SyncKey(end), 0).await;
    b.send_body(&Body::Ping, 0).await;
    b.recv_until(cmd::PONG).await;
    drop(b);
    a.send_im(10, 11, "after").await;
    a.recv_until(cmd::ACK).await;
    let s = s.restart().await.unwrap();
    let mut b = Client::login(&s, 11, 1, false, "b").await;
    let (msgs, _) = b.sync(0).await;
    assert_eq!(msgs.len(), 1, "only the message after the reported key");
    assert_eq!(&im_of(&msgs[0]).content[..], b"after");
    s.stop().await;
}

#[tokio::test]
async fn sender_sees_own_messages_with_self_flag_on_sync() {
    let s = TestServer::start().await.unwrap();
    let mut a = Client::login(&s, 20, 2, false, "dev-a").await;
    a.send_im(20, 21, "x").await;
    a.recv_until(cmd::ACK).await;
    let (msgs, _) = a.sync(0).await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].flag & flag::SELF, flag::SELF);
    let mut other = Client::login(&s, 20, 2, false, "dev-b").await;
    let (msgs, _) = other.sync(0).await;
    assert_eq!(msgs[0].flag & flag::SELF, 0, "another device is not SELF");
    s.stop().await;
}

#[tokio::test]
async fn a_thousand_messages_arrive_in_order_once() {
    let s = TestServer::start().await.unwrap();
    let mut a = Client::login(&s, 30, 2, false, "a").await;
    let mut b = Client::login(&s, 31, 2, false, "b").await;
    for i in 0..1000 {
        a.send_im(30, 31, &format!("{i}")).await;
    }
    // Receiver via pushes, following the METADATA fast path.
    let mut key = 0i64;
    let mut got = Vec::new();
    let mut last_meta: Option<(i32, proto::Metadata)> = None;
    while got.len() < 1000 {
        let f = b.recv().await.expect("push");
        match f.cmd {
            cmd::METADATA => {
                let Body::Metadata(m) = body_of(&f) else {
                    unreachable!()
                };
                last_meta = Some((f.seq, m));
            }
            cmd::IM => {
                let (mseq, m) = last_meta.take().expect("METADATA precedes every push");
                assert_eq!(f.seq, mseq + 1);
                assert_eq!(
                    m.prev_sync_key, key,
                    "fast path: prev key is the receiver's current key"
                );
                key = m.sync_key;
                got.push(String::from_utf8(im_of(&f).content.to_vec()).unwrap());
            }
            _ => {}
        }
    }
    let want: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
    assert_eq!(got, want);
    // And by sync: all 1000 in order, none twice.
    let mut c = Client::login(&s, 31, 1, false, "b2").await;
    let (msgs, end) = c.sync_all(0).await;
    let synced: Vec<String> = msgs
        .iter()
        .map(|f| String::from_utf8(im_of(f).content.to_vec()).unwrap())
        .collect();
    assert_eq!(synced, want);
    assert_eq!(end, key);
    s.stop().await;
}

#[tokio::test]
async fn sync_is_batched_and_loops_until_caught_up() {
    let s = TestServer::start_with(|c| c.sync.batch_messages = 100)
        .await
        .unwrap();
    let mut a = Client::login(&s, 40, 2, false, "a").await;
    for i in 0..250 {
        a.send_im(40, 41, &format!("{i}")).await;
    }
    for _ in 0..250 {
        a.recv_until(cmd::ACK).await;
    }
    let mut b = Client::login(&s, 41, 2, false, "b").await;
    let (first, end) = b.sync(0).await;
    assert_eq!(first.len(), 100);
    // A full batch is followed by SYNC_NOTIFY(end + 1).
    let n = b.recv().await.unwrap();
    assert_eq!(body_of(&n), Body::SyncNotify(end + 1));
    let (rest, _) = b.sync_all(end).await;
    assert_eq!(first.len() + rest.len(), 250);
    s.stop().await;
}

#[tokio::test]
async fn sync_with_a_key_ahead_of_the_server_gets_the_servers_key() {
    let s = TestServer::start().await.unwrap();
    let mut a = Client::login(&s, 50, 2, false, "a").await;
    a.send_im(50, 50, "self").await;
    a.recv_until(cmd::ACK).await;
    let (msgs, newest) = a.sync(0).await;
    assert_eq!(msgs.len(), 2, "a message to oneself is in the queue twice");
    let (msgs, end) = a.sync(newest + 1_000_000).await;
    assert!(msgs.is_empty());
    assert_eq!(end, newest);
    s.stop().await;
}

#[tokio::test]
async fn rt_messages_are_delivered_with_flag_zero_and_not_stored() {
    let s = TestServer::start().await.unwrap();
    let mut a = Client::login(&s, 60, 1, false, "a").await;
    let mut b = Client::login(&s, 61, 1, true, "b").await;
    a.send_body(
        &Body::Rt(proto::Rt {
            sender: 60,
            receiver: 61,
            content: "typing".into(),
        }),
        0,
    )
    .await;
    let f = b.recv().await.unwrap();
    assert_eq!(f.cmd, cmd::RT);
    assert_eq!(f.flag, 0);
    // A spoofed RT is dropped.
    a.send_body(
        &Body::Rt(proto::Rt {
            sender: 99,
            receiver: 61,
            content: "spoof".into(),
        }),
        0,
    )
    .await;
    a.send_body(
        &Body::Rt(proto::Rt {
            sender: 60,
            receiver: 61,
            content: "real".into(),
        }),
        0,
    )
    .await;
    let f = b.recv().await.unwrap();
    assert_eq!(
        body_of(&f),
        Body::Rt(proto::Rt {
            sender: 60,
            receiver: 61,
            content: "real".into()
        })
    );
    let (msgs, _) = b.sync(0).await;
    assert!(msgs.is_empty(), "RT is not persisted");
    s.stop().await;
}

#[tokio::test]
async fn spoofed_sender_is_refused_with_a_status_in_v2_and_not_stored() {
    let s = TestServer::start().await.unwrap();
    let mut a = Client::login(&s, 70, 2, false, "a").await;
    let seq = a.send_im(71, 72, "spoof").await;
    let ack = a.recv().await.unwrap();
    assert_eq!(ack.cmd, cmd::ACK);
    assert_eq!(
        body_of(&ack),
        Body::Ack(proto::body::Ack {
            seq,
            status: proto::AckStatus::INVALID_SENDER
        })
    );
    let mut v = Client::login(&s, 72, 1, false, "v").await;
    assert!(v.sync(0).await.0.is_empty());
    // A v1 session gets no ACK at all for a refused message (an ACK would read as success).
    let mut old = Client::login(&s, 73, 1, false, "o").await;
    old.send_im(74, 72, "spoof").await;
    old.send_body(&Body::Ping, 0).await;
    assert_eq!(old.recv().await.unwrap().cmd, cmd::PONG);
    s.stop().await;
}

#[tokio::test]
async fn versions_are_chosen_per_frame() {
    // A v1 session sends a v0-encoded IM (no timestamp) in the same connection.
    let s = TestServer::start().await.unwrap();
    let mut a = Client::login(&s, 80, 1, false, "a").await;
    let im = proto::Im {
        sender: 80,
        receiver: 81,
        timestamp: 0,
        msgid: 7,
        content: "v0 body".into(),
    };
    a.send_body_v(&Body::Im(im), 0, 0).await;
    let (ack, _) = a.recv_until(cmd::ACK).await;
    assert_eq!(ack.version, 1, "replies use the session version");
    assert_eq!(ack.body.len(), 4);
    let mut b = Client::login(&s, 81, 1, false, "b").await;
    let (msgs, _) = b.sync(0).await;
    let m = im_of(&msgs[0]);
    assert_eq!(&m.content[..], b"v0 body");
    assert_eq!(m.msgid, 7);
    s.stop().await;
}

#[tokio::test]
async fn unread_count_and_sync_key_get_no_reply() {
    let s = TestServer::start().await.unwrap();
    let mut a = Client::login(&s, 90, 2, false, "a").await;
    a.send_body(&Body::UnreadCount(3), 0).await;
    a.send_body(&Body::SyncKey(12345), 0).await;
    a.send_body(&Body::Ping, 0).await;
    assert_eq!(a.recv().await.unwrap().cmd, cmd::PONG);
    s.stop().await;
}

#[tokio::test]
async fn messages_to_invalid_receivers_are_refused_and_not_stored() {
    let s = TestServer::start().await.unwrap();
    let mut a = Client::login(&s, 95, 2, false, "a").await;
    for receiver in [0, -5, i64::MIN] {
        let seq = a.send_im(95, receiver, "nowhere").await;
        let ack = a.recv().await.unwrap();
        assert_eq!(
            body_of(&ack),
            Body::Ack(proto::body::Ack {
                seq,
                status: proto::AckStatus::INVALID_RECEIVER
            }),
            "IM to {receiver}"
        );
        // A group id that is not positive names no group.
        let seq = a
            .send_body(
                &Body::GroupIm(proto::Im {
                    sender: 95,
                    receiver,
                    timestamp: 0,
                    msgid: 1,
                    content: "nowhere".into(),
                }),
                0,
            )
            .await;
        let ack = a.recv().await.unwrap();
        assert_eq!(
            body_of(&ack),
            Body::Ack(proto::body::Ack {
                seq,
                status: proto::AckStatus::GROUP_NONEXIST
            }),
            "GROUP_IM to {receiver}"
        );
    }
    // Below version 2 there is no status to tell: the message is dropped (and counted), never stored.
    let mut old = Client::login(&s, 96, 1, false, "o").await;
    old.send_im(96, 0, "nowhere").await;
    old.send_body(&Body::Ping, 0).await;
    assert_eq!(old.recv().await.unwrap().cmd, cmd::PONG);
    assert!(
        a.sync(0).await.0.is_empty(),
        "nothing in the sender's queue"
    );
    assert!(
        old.sync(0).await.0.is_empty(),
        "nothing in the sender's queue"
    );
    let refused = s
        .running
        .as_ref()
        .map(|r| access::app::Stats::get(&r.node.app.stats.messages_refused))
        .unwrap();
    assert!(refused >= 7, "refusals are counted ({refused})");
    s.stop().await;
}
