//! PUBLISH_STORED on real sockets: a node that offered STORED_PUBLISH gets it as it is; a node that
//! did not (GoBelieve's im, an older banter im) gets the PUBLISH pair it stands for — the message,
//! then its SYNC_NOTIFY; and its `push` byte makes an offline-push job exactly as a PUSH would.
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use bytes::Bytes;
use cluster::route_proto::{
    cmd, publish_stored_body, route_message_body, sync_notify_frame, RouteBody, RouteKind,
};
use common::{im, inner, Node, TestRouter, WAIT};
use route::{PushBackend, RouterConfig};
use testkit::RedisServer;

/// Offers STORED_PUBLISH and waits for the router's answer.
async fn offer_stored(n: &mut Node) {
    n.send(cmd::STORED_PUBLISH, &[]).await;
    let f = n.next().await;
    assert_eq!((f.cmd, f.body.len()), (cmd::STORED_PUBLISH, 0));
}

async fn publish_stored(
    n: &mut Node,
    uid: i64,
    keys: (i64, i64),
    inner: &[u8],
    push: bool,
) -> Bytes {
    let body = publish_stored_body(7, uid, keys, 99, inner, push).unwrap();
    n.send(cmd::PUBLISH_STORED, &body).await;
    body
}

#[tokio::test]
async fn each_node_gets_a_stored_publish_in_the_form_it_takes() {
    let r = TestRouter::start(RouterConfig::default()).await;
    let mut a = r.node().await;
    let mut b = r.node().await;
    let mut legacy = r.node().await;
    offer_stored(&mut a).await;
    offer_stored(&mut b).await;
    b.subscribe(7, 1, true).await;
    legacy.subscribe(7, 1, true).await;
    a.subscribe(7, 1, true).await; // the sender's own subscription: no echo
    r.wait_subscriptions(&[(1, 0), (1, 0), (1, 0)]).await;

    let msg = im(5, 1, "hello");
    let sent = publish_stored(&mut a, 1, (42, 41), &msg, false).await;

    // B takes it as it is.
    let f = b.next().await;
    assert_eq!((f.cmd, &f.body), (cmd::PUBLISH_STORED, &sent));
    match RouteBody::decode(f.cmd, &f.body).unwrap() {
        RouteBody::PublishStored { message, push } => {
            assert_eq!(
                (
                    message.kind,
                    message.receiver,
                    message.msgid,
                    message.prev_msgid
                ),
                (RouteKind::User, 1, 42, 41)
            );
            assert_eq!((message.inner, push), (msg.clone(), false));
        }
        other => panic!("unexpected {other:?}"),
    }

    // The legacy node gets exactly what a sender without stored publishes would have sent: the
    // message's PUBLISH, then the PUBLISH of SYNC_NOTIFY(42).
    let f = legacy.next().await;
    assert_eq!(f.cmd, cmd::PUBLISH);
    assert_eq!(
        f.body,
        route_message_body(7, 1, 42, 41, 99, &msg).unwrap(),
        "the message's own PUBLISH, keys included"
    );
    let f = legacy.next().await;
    assert_eq!(f.cmd, cmd::PUBLISH);
    assert_eq!(
        f.body,
        route_message_body(7, 1, 0, 0, 99, &sync_notify_frame(42)).unwrap()
    );
    a.nothing().await;
    legacy.nothing().await;

    // A stored publish without a key is malformed: that connection (only) is closed.
    let bad = publish_stored_body(7, 1, (0, 0), 99, &msg, false).unwrap();
    a.send(cmd::PUBLISH_STORED, &bad).await;
    assert!(a.closed_within(WAIT).await);
    b.nothing().await;

    let (_, metrics) = r.get("/metrics").await;
    assert!(
        metrics.contains("banter_route_malformed_frames_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("banter_route_publish_in_total{kind=\"stored\"} 1\n"),
        "{metrics}"
    );
    r.stop().await;
}

#[tokio::test]
async fn a_stored_publish_asks_for_an_offline_push_only_with_its_push_byte() {
    let redis_server = RedisServer::start();
    let mut config = RouterConfig::default();
    config.push.backend = PushBackend::Redis;
    config.push.redis.url = redis_server.url();
    let r = TestRouter::start(config).await;
    let client = redis::Client::open(redis_server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();

    let mut a = r.node().await;
    let mut b = r.node().await;
    offer_stored(&mut a).await;
    offer_stored(&mut b).await;
    b.subscribe(7, 2, true).await; // online
    b.subscribe(7, 3, false).await; // subscribed, not online
    r.wait_subscriptions(&[(0, 0), (2, 0)]).await;

    let to_online = inner(proto::cmd::IM, 1, 2, "{\"text\":\"online\"}");
    let to_offline = inner(proto::cmd::IM, 1, 3, "{\"text\":\"hi\"}");
    let unasked = inner(proto::cmd::IM, 1, 3, "{\"text\":\"no push\"}");
    publish_stored(&mut a, 2, (10, 0), &to_online, true).await;
    publish_stored(&mut a, 3, (11, 0), &to_offline, true).await;
    publish_stored(&mut a, 3, (12, 11), &unasked, false).await;
    for key in [10, 11, 12] {
        match b.next_body().await {
            RouteBody::PublishStored { message, .. } => assert_eq!(message.msgid, key),
            other => panic!("unexpected {other:?}"),
        }
    }

    // One job: the offline receiver's, for the message that asked for it.
    let deadline = tokio::time::Instant::now() + WAIT;
    let jobs: Vec<String> = loop {
        let jobs: Vec<String> = redis::cmd("LRANGE")
            .arg("push_queue")
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .unwrap();
        if !jobs.is_empty() || tokio::time::Instant::now() > deadline {
            break jobs;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(
        jobs,
        vec![r#"{"appid":7,"content":"{\"text\":\"hi\"}","receiver":3,"sender":1}"#]
    );
    let s = r.json("/summary").await;
    assert_eq!(
        (s["push"]["requests"].as_u64(), s["push"]["jobs"].as_u64()),
        (Some(2), Some(1)),
        "{s}"
    );
    r.stop().await;
}
