//! banter access-side route links (`cluster::route_link::RouteLinks`) through a banter router:
//! presence, publish with prev_msgid, group and room publish, and the full resubscription after the
//! router restarts.
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
    n2.login(2, 7, 2, false);
    n2.enter_room(2, 7, 100);
    r.wait_subscriptions(&[(1, 1), (1, 1)]).await;
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
