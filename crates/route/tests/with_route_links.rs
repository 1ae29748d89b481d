//! banter access-side route links (`cluster::route_link::RouteLinks`) through a banter router:
//! presence, publish with prev_msgid, group and room publish, and the full resubscription after the
//! router restarts; remote presence: a lone node publishes nothing, a user showing up on another
//! node just after a skipped message is told to sync, and a restarted router's nodes publish
//! everything until they know again.
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::sync::Arc;
use std::time::Duration;

use cluster::route_link::{RouteLinkConfig, RouteLinks};
use cluster::route_proto::{RouteKind, RoutedMessage};
use common::{im, TestRouter, WAIT};
use route::RouterConfig;
use serde_json::json;
use tokio::sync::mpsc;

async fn recv(rx: &mut mpsc::Receiver<RoutedMessage>) -> RoutedMessage {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a routed message")
        .expect("channel open")
}

async fn none(rx: &mut mpsc::Receiver<RoutedMessage>) {
    if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
        panic!("unexpected {m:?}");
    }
}

/// Waits until `n`'s router says another node has (or has not) user `(7, uid)`.
async fn wait_remote(n: &RouteLinks, uid: i64, present: bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while n.remote_user(7, uid) != Some(present) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "remote presence of {uid} never became {present}: {:?}",
            n.stats()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until every link of `n` knows the router's remote presence.
async fn wait_known(n: &RouteLinks) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !n.stats().iter().all(|l| l.presence_known) {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", n.stats());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The router's `banter_route_publish_in_total` summed over kinds.
async fn router_publishes_in(r: &TestRouter) -> u64 {
    let (status, text) = r.get("/metrics").await;
    assert_eq!(status, 200);
    text.lines()
        .filter(|l| l.starts_with("banter_route_publish_in_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test]
async fn two_access_nodes_through_a_router_and_its_restart() {
    let r = TestRouter::start(RouterConfig::default()).await;
    let addr = r.addr.to_string();
    let cfg = RouteLinkConfig {
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        ..RouteLinkConfig::default()
    };
    let (tx1, mut rx1) = mpsc::channel(64);
    let (tx2, mut rx2) = mpsc::channel(64);
    let n1 = RouteLinks::new(vec![addr.clone()], vec![], cfg.clone(), Arc::new(tx1));
    let n2 = RouteLinks::new(vec![addr.clone()], vec![], cfg, Arc::new(tx2));
    n1.login(1, 7, 1, true);
    n1.enter_room(1, 7, 100);
    // The room first: once node 1 knows user 2 is on node 2, it knows the room is, too.
    n2.enter_room(2, 7, 100);
    n2.login(2, 7, 2, false);
    r.wait_subscriptions(&[(1, 1), (1, 1)]).await;
    // Each node publishes once its router told it the receiver is on the other node.
    wait_remote(&n1, 2, true).await;
    wait_remote(&n2, 1, true).await;
    assert_eq!(
        r.json("/online?appid=7&uid=1").await,
        json!({"online": true})
    );
    assert_eq!(
        r.json("/online?appid=7&uid=2").await,
        json!({"online": false})
    );

    // Peer publish: only the node holding the user, with msgid and prev.
    assert!(n2.publish(7, 1, 10, 9, &im(2, 1, "hi")));
    let m = recv(&mut rx1).await;
    assert_eq!(
        (m.kind, m.appid, m.receiver, m.msgid, m.prev_msgid),
        (RouteKind::User, 7, 1, 10, 9)
    );
    assert_eq!(m.inner, im(2, 1, "hi"));
    assert!(m.flags_consistent());
    none(&mut rx2).await;
    // Group and room publishes reach the other node only.
    assert!(n1.publish_group(7, 300, 11, 10, &im(1, 300, "group")));
    assert_eq!(recv(&mut rx2).await.kind, RouteKind::Group);
    assert!(n1.publish_room(7, 100, &im(1, 100, "room")));
    assert_eq!(recv(&mut rx2).await.kind, RouteKind::Room);
    none(&mut rx1).await;

    // The router restarts on the same address: both nodes resubscribe everything by themselves.
    r.stop().await;
    let r = TestRouter::start_on(RouterConfig::default(), &addr).await;
    r.wait_subscriptions(&[(1, 1), (1, 1)]).await;
    assert_eq!(
        r.json("/online?appid=7&uid=1").await,
        json!({"online": true})
    );
    wait_remote(&n2, 1, true).await;
    assert!(n2.publish(7, 1, 12, 10, &im(2, 1, "after restart")));
    assert_eq!(recv(&mut rx1).await.msgid, 12);

    // Logout on node 1: the router forgets user 1.
    n1.logout(1, 7, 1);
    n1.leave_room(1, 7, 100);
    r.wait_subscriptions_any_order(&[(0, 0), (1, 1)]).await;
    assert_eq!(
        r.json("/all_online").await,
        json!([{"appid": 7, "users": [2]}])
    );
    n1.shutdown().await;
    n2.shutdown().await;
    r.wait_subscriptions(&[]).await;
    r.stop().await;
}

/// The highest key `rx` learns for (appid 7, uid 1) within a short while: IM publishes carry theirs
/// in `msgid`, owed notifications in their inner SYNC_NOTIFY.
async fn highest_user_key(rx: &mut mpsc::Receiver<RoutedMessage>) -> (i64, usize) {
    let (mut key, mut notifications) = (0, 0);
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
        assert_eq!((m.kind, m.appid, m.receiver), (RouteKind::User, 7, 1));
        let inner = m.inner_frame().expect("inner frame");
        match proto::Body::decode(inner.cmd, inner.version, &inner.body) {
            Ok(proto::Body::SyncNotify(k)) => {
                notifications += 1;
                key = key.max(k);
            }
            _ => key = key.max(m.msgid),
        }
    }
    (key, notifications)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_beyond_a_full_link_queue_leave_one_notification_per_receiver() {
    let r = TestRouter::start(RouterConfig::default()).await;
    let addr = r.addr.to_string();
    let quick = RouteLinkConfig {
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(50),
        ..RouteLinkConfig::default()
    };
    // The publishing node redials slowly, so after the router restarts the receiving node has
    // resubscribed before the publisher's queue and owed notifications arrive.
    let slow_redial = RouteLinkConfig {
        queue_frames: 1,
        backoff_min: Duration::from_millis(1500),
        backoff_max: Duration::from_millis(1500),
        ..RouteLinkConfig::default()
    };
    let (tx1, mut rx1) = mpsc::channel(1 << 16);
    let (tx2, _rx2) = mpsc::channel(16);
    let n1 = RouteLinks::new(vec![addr.clone()], vec![], quick, Arc::new(tx1));
    let n2 = RouteLinks::new(vec![addr.clone()], vec![], slow_redial, Arc::new(tx2));
    n1.login(1, 7, 1, true);
    r.wait_subscriptions_any_order(&[(0, 0), (1, 0)]).await;
    r.stop().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while n2.stats().iter().any(|l| l.connected) {
        assert!(tokio::time::Instant::now() < deadline, "link still up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Down: one publish fits the queue, the other 999 become one owed notification.
    for i in 1..=1000 {
        assert!(n2.publish(7, 1, i, i - 1, &im(2, 1, "m")), "message {i}");
    }
    // A room message owes nothing: dropped and counted.
    assert!(!n2.publish_room(7, 100, &im(2, 100, "room")));
    let s = &n2.stats()[0];
    assert_eq!((s.queued, s.coalesced, s.owed, s.dropped), (1, 999, 1, 1));

    let r = TestRouter::start_on(RouterConfig::default(), &addr).await;
    r.wait_subscriptions_any_order(&[(0, 0), (1, 0)]).await;
    let (key, notifications) = highest_user_key(&mut rx1).await;
    assert_eq!(key, 1000, "the receiver learns of the newest message");
    assert_eq!(
        notifications, 1,
        "one notification for the 999 dropped messages"
    );
    assert_eq!(n2.stats()[0].owed, 0);
    n1.shutdown().await;
    n2.shutdown().await;
    r.stop().await;
}

#[tokio::test]
async fn remote_presence_skips_what_nobody_else_receives_and_loses_nothing() {
    let r = TestRouter::start(RouterConfig::default()).await;
    let addr = r.addr.to_string();
    let cfg = RouteLinkConfig {
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        ..RouteLinkConfig::default()
    };
    let (tx1, mut rx1) = mpsc::channel(1024);
    let (tx2, mut rx2) = mpsc::channel(1024);
    let n1 = RouteLinks::new(vec![addr.clone()], vec![], cfg.clone(), Arc::new(tx1));
    n1.login(1, 7, 1, true);
    n1.login(2, 7, 2, true);
    n1.enter_room(1, 7, 100);
    wait_known(&n1).await;
    r.wait_subscriptions(&[(2, 1)]).await;

    // A lone node: nothing reaches the router, whether the receiver is here or nowhere.
    for (uid, key) in [(2, 10), (1, 11), (3, 12)] {
        assert!(n1.publish(7, uid, key, key - 1, &im(1, uid, "local")));
    }
    assert!(n1.publish_group(7, 300, 13, 0, &im(1, 300, "group")));
    assert!(n1.publish_room(7, 100, &im(1, 100, "room")));
    let s = &n1.stats()[0];
    assert_eq!((s.skipped, s.dropped, s.remote_users), (5, 0, 0), "{s:?}");
    // Offline push and kicks are never skipped: only those reach the router.
    assert!(n1.push(7, &[3], &im(1, 3, "offline")));
    assert!(n1.publish_always(7, 2, 0, 0, &im(1, 2, "kick-like")));
    let deadline = tokio::time::Instant::now() + WAIT;
    while router_publishes_in(&r).await != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "one publish expected"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // A second node comes up and user 2 logs in there too, just after the skipped messages: node 1
    // tells that session to sync up to the newest one it skipped, and the group's members there to
    // sync the group.
    let n2 = RouteLinks::new(vec![addr.clone()], vec![], cfg, Arc::new(tx2));
    n2.login(7, 7, 2, true);
    wait_remote(&n1, 2, true).await;
    let mut user_key = 0;
    let mut group_notified = false;
    while user_key == 0 || !group_notified {
        let m = recv(&mut rx2).await;
        let inner = m.inner_frame().expect("inner frame");
        match proto::Body::decode(inner.cmd, inner.version, &inner.body).expect("body") {
            proto::Body::SyncNotify(k) if m.kind == RouteKind::User && m.receiver == 2 => {
                user_key = k
            }
            proto::Body::SyncGroupNotify(g) if m.kind == RouteKind::Group => {
                assert_eq!((g.group_id, g.sync_key), (300, 13));
                group_notified = true;
            }
            other => panic!("unexpected {m:?}: {other:?}"),
        }
    }
    assert_eq!(user_key, 10, "the newest key skipped for user 2");
    assert!(n1.stats()[0].skip_notified >= 2);

    // From now on user 2's messages go to node 2, user 1's still nowhere.
    assert!(n1.publish(7, 2, 20, 10, &im(1, 2, "remote")));
    assert_eq!(recv(&mut rx2).await.msgid, 20);
    assert!(n1.publish(7, 1, 21, 11, &im(2, 1, "local")));
    none(&mut rx2).await;

    // A user moves: logs out on node 1, logs in on node 2; a message sent at once reaches node 2
    // (as itself, or as a sync notification for it).
    n1.login(3, 7, 5, true);
    wait_remote(&n2, 5, true).await;
    n1.logout(3, 7, 5);
    n2.login(8, 7, 5, true);
    assert!(n1.publish(7, 5, 30, 0, &im(1, 5, "moved")));
    let m = recv(&mut rx2).await;
    let inner = m.inner_frame().expect("inner frame");
    let key = match proto::Body::decode(inner.cmd, inner.version, &inner.body).expect("body") {
        proto::Body::SyncNotify(k) => k,
        _ => m.msgid,
    };
    assert_eq!((m.receiver, key), (5, 30));
    none(&mut rx1).await;

    // The router restarts: until they know again, nodes publish everything; then they skip again.
    r.stop().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while n1.stats()[0].connected {
        assert!(tokio::time::Instant::now() < deadline, "link still up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(n1.remote_user(7, 2), None);
    let skipped = n1.stats()[0].skipped;
    assert!(n1.publish(7, 1, 40, 21, &im(2, 1, "while down")));
    assert_eq!(
        n1.stats()[0].skipped,
        skipped,
        "unknown: queued, not skipped"
    );
    let r = TestRouter::start_on(RouterConfig::default(), &addr).await;
    wait_known(&n1).await;
    wait_known(&n2).await;
    wait_remote(&n1, 2, true).await;
    wait_remote(&n2, 2, true).await;
    assert!(n1.publish(7, 2, 41, 20, &im(1, 2, "after restart")));
    let m = loop {
        let m = recv(&mut rx2).await;
        if m.msgid == 41 {
            break m;
        }
    };
    assert_eq!(m.receiver, 2);
    assert!(n1.publish(7, 1, 42, 40, &im(2, 1, "local again")));
    assert_eq!(n1.stats()[0].skipped, skipped + 1);
    n1.shutdown().await;
    n2.shutdown().await;
    r.stop().await;
}
