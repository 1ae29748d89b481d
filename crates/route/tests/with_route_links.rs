//! banter access-side route links (`cluster::route_link::RouteLinks`) through a banter router:
//! presence, publish with prev_msgid, group and room publish, and the full resubscription after the
//! router restarts.

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
