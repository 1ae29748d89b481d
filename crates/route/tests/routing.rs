//! Forwarding between fake access nodes on real sockets: publish, group publish, rooms, a stalled
//! node, malformed frames, and forgetting a closed connection.
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::time::{Duration, Instant};

use cluster::route_proto::{cmd, RouteBody, RouteKind};
use common::{im, TestRouter, WAIT};
use route::RouterConfig;

#[tokio::test]
async fn publish_reaches_only_the_other_nodes_that_subscribed_the_user() {
    let r = TestRouter::start(RouterConfig::default()).await;
    let mut a = r.node().await;
    let mut b = r.node().await;
    let mut c = r.node().await;
    b.subscribe(7, 1, false).await; // online flag does not matter for PUBLISH
    a.subscribe(7, 1, true).await; // the sender's own subscription: no echo
    c.subscribe(7, 2, true).await; // another user
    c.subscribe(8, 1, true).await; // same uid, another app
    r.wait_subscriptions(&[(1, 0), (1, 0), (2, 0)]).await;

    let sent = a
        .publish(cmd::PUBLISH, 7, 1, 42, 41, &im(5, 1, "hello"))
        .await;
    let f = b.next().await;
    assert_eq!((f.cmd, f.version, f.flag, f.seq), (cmd::PUBLISH, 0, 0, 1));
    assert_eq!(f.body, sent, "forwarded unchanged, prev_msgid included");
    match RouteBody::decode(f.cmd, &f.body).expect("valid") {
        RouteBody::Publish(m) => {
            assert_eq!((m.kind, m.msgid, m.prev_msgid), (RouteKind::User, 42, 41))
        }
        other => panic!("unexpected {other:?}"),
    }
    a.nothing().await;
    c.nothing().await;

    // A second one gets the next seq on B's connection.
    a.publish(cmd::PUBLISH, 7, 1, 43, 42, &im(5, 1, "again"))
        .await;
    assert_eq!(b.next().await.seq, 2);

    // B unsubscribes: nothing more for B.
    b.unsubscribe(7, 1).await;
    r.wait_subscriptions(&[(1, 0), (0, 0), (2, 0)]).await;
    a.publish(cmd::PUBLISH, 7, 1, 44, 43, &im(5, 1, "gone"))
        .await;
    // C publishes to user 1: A (subscribed) receives it.
    c.publish(cmd::PUBLISH, 7, 1, 45, 0, &im(6, 1, "to a"))
        .await;
    let f = a.next().await;
    match RouteBody::decode(f.cmd, &f.body).expect("valid") {
        RouteBody::Publish(m) => assert_eq!(m.msgid, 45),
        other => panic!("unexpected {other:?}"),
    }
    b.nothing().await;
    r.stop().await;
}

#[tokio::test]
async fn group_publish_reaches_every_other_node() {
    let r = TestRouter::start(RouterConfig::default()).await;
    let mut a = r.node().await;
    let mut b = r.node().await;
    let mut c = r.node().await;
    let sent = a
        .publish(cmd::PUBLISH_GROUP, 7, 300, 9, 8, &im(5, 300, "group"))
        .await;
    for n in [&mut b, &mut c] {
        let f = n.next().await;
        assert_eq!((f.cmd, &f.body), (cmd::PUBLISH_GROUP, &sent));
    }
    a.nothing().await;
    let (_, metrics) = r.get("/metrics").await;
    assert!(
        metrics.contains("banter_route_publish_in_total{kind=\"group\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("banter_route_publish_out_total 2"),
        "{metrics}"
    );
    r.stop().await;
}

#[tokio::test]
async fn rooms_reach_subscribed_nodes_until_they_leave() {
    let r = TestRouter::start(RouterConfig::default()).await;
    let mut a = r.node().await;
    let mut b = r.node().await;
    let mut c = r.node().await;
    a.subscribe_room(7, 100).await;
    b.subscribe_room(7, 100).await;
    c.subscribe_room(7, 100).await;
    c.subscribe_room(7, 100).await; // twice counts once
    b.subscribe_room(7, 101).await;
    r.wait_subscriptions(&[(0, 1), (0, 2), (0, 1)]).await;
    let sent = a
        .publish(cmd::PUBLISH_ROOM, 7, 100, 0, 0, &im(5, 100, "room"))
        .await;
    for n in [&mut b, &mut c] {
        let f = n.next().await;
        assert_eq!((f.cmd, &f.body), (cmd::PUBLISH_ROOM, &sent));
    }
    a.nothing().await;
    c.unsubscribe_room(7, 100).await;
    r.wait_subscriptions(&[(0, 1), (0, 2), (0, 0)]).await;
    a.publish(cmd::PUBLISH_ROOM, 7, 100, 0, 0, &im(5, 100, "room 2"))
        .await;
    assert_eq!(b.next().await.cmd, cmd::PUBLISH_ROOM);
    c.nothing().await;
    // Another app's room of the same id is another room.
    a.publish(cmd::PUBLISH_ROOM, 8, 100, 0, 0, &im(5, 100, "other app"))
        .await;
    b.nothing().await;
    r.stop().await;
}

#[tokio::test]
async fn a_stalled_node_does_not_stop_delivery_between_healthy_ones() {
    let mut config = RouterConfig::default();
    config.limits.outbox_frames = 64;
    config.limits.write_timeout_ms = 500;
    let r = TestRouter::start(config).await;
    let mut a = r.node().await;
    let mut b = r.node().await;
    let mut stalled = r.node().await; // never reads
    stalled.subscribe(7, 1, true).await;
    stalled.subscribe_room(7, 100).await;
    b.subscribe(7, 2, true).await;
    b.subscribe_room(7, 100).await;
    r.wait_subscriptions(&[(0, 0), (1, 1), (1, 1)]).await;

    let big = im(5, 1, &"z".repeat(30_000));
    let start = Instant::now();
    let mut got = 0;
    for i in 0..400 {
        // ~12 MB for the stalled node: far beyond socket buffers and its outbox.
        a.publish(cmd::PUBLISH, 7, 1, i, 0, &big).await;
        a.publish(cmd::PUBLISH_GROUP, 7, 300, i, 0, &big).await;
        a.publish(cmd::PUBLISH, 7, 2, i, 0, &im(5, 2, "small"))
            .await;
        // B keeps up with its own stream.
        while let Some(f) = b.next_within(Duration::from_millis(1)).await {
            if f.cmd == cmd::PUBLISH {
                got += 1;
            }
        }
    }
    while got < 400 {
        let f = b.next().await;
        if f.cmd == cmd::PUBLISH {
            got += 1;
        }
    }
    assert!(start.elapsed() < WAIT, "took {:?}", start.elapsed());
    // The stalled node is disconnected by the write deadline and its state forgotten.
    assert!(stalled.closed_within(WAIT).await);
    r.wait_subscriptions(&[(0, 0), (1, 1)]).await;
    let (_, metrics) = r.get("/metrics").await;
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0)
    };
    // The persistent messages beyond its outbox became owed notifications.
    assert!(value("banter_route_coalesced_total ") > 0, "{metrics}");
    assert_eq!(value("banter_route_write_timeouts_total "), 1, "{metrics}");
    assert_eq!(value("banter_route_connections "), 2, "{metrics}");
    // Still routing.
    a.publish(cmd::PUBLISH_ROOM, 7, 100, 0, 0, &im(5, 100, "after"))
        .await;
    assert_eq!(b.next().await.cmd, cmd::PUBLISH_ROOM);
    r.stop().await;
}

#[tokio::test]
async fn malformed_frames_close_only_that_connection() {
    let mut config = RouterConfig::default();
    config.limits.max_body = 4096;
    let r = TestRouter::start(config).await;
    let mut a = r.node().await;
    let mut b = r.node().await;
    b.subscribe(7, 1, true).await;
    r.wait_subscriptions(&[(0, 0), (1, 0)]).await;

    // Unknown commands are ignored; the connection stays.
    let mut m = r.node().await;
    m.send(99, b"what").await;
    m.subscribe(7, 9, true).await;
    r.wait_subscriptions(&[(0, 0), (1, 0), (1, 0)]).await;

    // A negative length.
    use tokio::io::AsyncWriteExt;
    m.stream
        .write_all(&[0xff, 0xff, 0xff, 0xf0, 0, 0, 0, 1, 132, 0, 0, 0])
        .await
        .expect("write");
    assert!(m.closed_within(WAIT).await);
    // Its state is forgotten.
    r.wait_subscriptions(&[(0, 0), (1, 0)]).await;

    let cases: Vec<(u8, Vec<u8>)> = vec![
        (cmd::SUBSCRIBE, vec![0; 16]), // short body
        (cmd::PUBLISH, vec![0; 41]),   // short route message
        (cmd::PUSH, vec![0, 0, 0, 0, 0, 0, 0, 7, 0xff, 0xff, 0, 0]), // count past the end
        (cmd::PUBLISH, {
            // inner frame whose header disagrees with its length
            let mut b = vec![0u8; 40];
            b.extend_from_slice(&[0, 12]);
            b.extend_from_slice(&[0, 0, 0, 9, 0, 0, 0, 0, 4, 2, 0, 0]);
            b
        }),
        (cmd::PUBLISH, vec![0; 5000]), // over max_body
    ];
    for (c, body) in cases {
        let mut m = r.node().await;
        m.send(c, &body).await;
        assert!(
            m.closed_within(WAIT).await,
            "cmd {c} body {} bytes",
            body.len()
        );
    }
    // The healthy pair never noticed.
    a.publish(cmd::PUBLISH, 7, 1, 1, 0, &im(5, 1, "fine")).await;
    assert_eq!(b.next().await.cmd, cmd::PUBLISH);
    let (_, metrics) = r.get("/metrics").await;
    assert!(
        metrics.contains("banter_route_malformed_frames_total 6"),
        "{metrics}"
    );
    assert!(
        metrics.contains("banter_route_unknown_commands_total 1"),
        "{metrics}"
    );
    r.stop().await;
}

#[tokio::test]
async fn shutdown_closes_access_connections() {
    let r = TestRouter::start(RouterConfig::default()).await;
    let mut a = r.node().await;
    let shutdown = r.shutdown.clone();
    let stop = tokio::spawn(r.stop());
    assert!(shutdown.is_cancelled() || a.closed_within(WAIT).await);
    assert!(a.closed_within(WAIT).await);
    tokio::time::timeout(WAIT, stop)
        .await
        .expect("stops")
        .expect("joins");
}

/// The highest sync key a fake access node learns for user (appid 7, uid 1) and super group 300
/// from everything it reads until the router goes quiet: IM/GROUP_IM publishes carry theirs in
/// `msgid`, owed notifications in their inner SYNC_NOTIFY / SYNC_GROUP_NOTIFY.
async fn highest_keys(node: &mut common::Node) -> (i64, i64, usize) {
    let (mut user, mut group, mut notifications) = (0, 0, 0);
    while let Some(f) = node.next_within(Duration::from_millis(500)).await {
        let Ok(RouteBody::Publish(m)) = RouteBody::decode(f.cmd, &f.body) else {
            continue;
        };
        let inner = m.inner_frame().expect("inner frame");
        let key = match proto::Body::decode(inner.cmd, inner.version, &inner.body) {
            Ok(proto::Body::SyncNotify(k)) => {
                notifications += 1;
                k
            }
            Ok(proto::Body::SyncGroupNotify(g)) => {
                notifications += 1;
                assert_eq!(g.group_id, 300);
                g.sync_key
            }
            _ => m.msgid,
        };
        match (m.kind, m.appid, m.receiver) {
            (RouteKind::User, 7, 1) => user = user.max(key),
            (RouteKind::Group, 7, 300) => group = group.max(key),
            other => panic!("unexpected receiver {other:?}"),
        }
    }
    (user, group, notifications)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_owes_receivers_a_sync_notification_instead_of_losing_messages() {
    let mut config = RouterConfig::default();
    config.limits.outbox_frames = 16;
    let r = TestRouter::start(config).await;
    let mut sender = r.node().await;
    let mut slow = r.node().await; // reads only once everything is sent
    slow.subscribe(7, 1, true).await;
    r.wait_subscriptions(&[(0, 0), (1, 0)]).await;

    let big = im(5, 1, &"z".repeat(30_000));
    for i in 1..=300 {
        // ~18 MB: far beyond the socket buffers and the 16-frame outbox.
        sender.publish(cmd::PUBLISH, 7, 1, i, i - 1, &big).await;
        sender
            .publish(cmd::PUBLISH_GROUP, 7, 300, 1000 + i, 999 + i, &big)
            .await;
        sender
            .publish(cmd::PUBLISH_ROOM, 7, 100, 0, 0, &im(5, 100, "room"))
            .await;
    }
    let (user, group, notifications) = highest_keys(&mut slow).await;
    assert_eq!(user, 300, "the newest message of the user is announced");
    assert_eq!(group, 1300, "the newest message of the group is announced");
    assert!(
        notifications > 0,
        "some messages were turned into notifications"
    );
    let (_, metrics) = r.get("/metrics").await;
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in {metrics}"))
    };
    assert!(value("banter_route_coalesced_total ") > 0, "{metrics}");
    // Nothing a client could miss was lost: the room publishes (to nobody here) owe nothing.
    assert_eq!(value("banter_route_dropped_total "), 0, "{metrics}");
}
