//! An access node in cluster mode receiving messages from a router: a well-formed PUBLISH reaches
//! the user's session with its METADATA (fast path), and a PUBLISH whose flags contradict its
//! metadata (a sync key without the PUSH flag, which GoBelieve's im aborts on) is dropped with a
//! log line and counted, without harming the connection or the node.
//!
//! The router here is a plain TCP listener in the test that speaks the route protocol.
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cluster::route_proto::{RouteBody, RouteKind, RoutedMessage};
use common::{body_of, grant, http, im_of, Client, TestServer, APPID, WAIT};
use proto::{cmd, flag, Body, Frame, Im, Metadata};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The inner frame a router carries: a client frame (seq 0, version 2).
fn inner_im(sender: i64, receiver: i64, text: &str, fl: u8) -> Bytes {
    let mut b = BytesMut::new();
    Body::Im(Im {
        sender,
        receiver,
        timestamp: 0,
        msgid: 0,
        content: text.as_bytes().to_vec().into(),
    })
    .encode_frame(0, 2, fl, &mut b);
    b.freeze()
}

async fn publish(conn: &mut TcpStream, msgid: i64, prev: i64, inner: Bytes) {
    let mut out = BytesMut::new();
    RouteBody::Publish(RoutedMessage {
        kind: RouteKind::User,
        appid: APPID,
        receiver: 2,
        msgid,
        prev_msgid: prev,
        timestamp_ns: 0,
        inner,
    })
    .encode_frame(0, &mut out)
    .unwrap();
    conn.write_all(&out).await.unwrap();
}

/// Reads route frames from the access node until it subscribes `uid`.
async fn wait_subscribe(conn: &mut TcpStream, uid: i64) {
    let mut buf = BytesMut::new();
    tokio::time::timeout(WAIT, async {
        loop {
            while let Some(f) = Frame::decode(&mut buf, 1 << 20).unwrap() {
                if let Ok(RouteBody::Subscribe { uid: u, .. }) = RouteBody::decode(f.cmd, &f.body) {
                    if u == uid {
                        return;
                    }
                }
            }
            assert!(conn.read_buf(&mut buf).await.unwrap() > 0, "link closed");
        }
    })
    .await
    .expect("the access node subscribes its user");
}

/// An access node whose only router is a listener in the test, and a session of uid 2 on it once
/// the node has subscribed that user: (the router's listener, the node, the link, the client).
async fn node_with_fake_router() -> (TcpListener, TestServer, TcpStream, Client) {
    let router = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let router_addr = router.local_addr().unwrap().to_string();
    let server = TestServer::start_with(|c| {
        c.cluster.route_addrs = vec![router_addr];
    })
    .await
    .unwrap();
    let (mut link, _) = tokio::time::timeout(WAIT, router.accept())
        .await
        .expect("the access node dials its router")
        .unwrap();
    let token = grant(&server, 2).await;
    let mut c = Client::tcp(server.tcp).await;
    assert_eq!(c.auth(&token, 2, proto::Platform::ANDROID, "d2").await, 0);
    wait_subscribe(&mut link, 2).await;
    (router, server, link, c)
}

#[tokio::test]
async fn routed_messages_with_inconsistent_flags_are_dropped_and_counted() {
    let (_router, server, mut link, mut c) = node_with_fake_router().await;

    // A sync key without PUSH: inconsistent, dropped.
    publish(&mut link, 41, 40, inner_im(1, 2, "bad", flag::TEXT)).await;
    // A consistent one: delivered with its METADATA.
    publish(
        &mut link,
        42,
        41,
        inner_im(1, 2, "good", flag::TEXT | flag::PUSH),
    )
    .await;

    let meta = loop {
        let f = c.recv().await.expect("a pushed message");
        match f.cmd {
            cmd::METADATA => {
                let Body::Metadata(m) = body_of(&f) else {
                    unreachable!()
                };
                break m;
            }
            cmd::IM => panic!("IM without METADATA: {:?}", im_of(&f)),
            _ => {}
        }
    };
    assert_eq!(
        meta,
        Metadata {
            sync_key: 42,
            prev_sync_key: 41
        }
    );
    let (m, _) = c.recv_until(cmd::IM).await;
    assert_eq!(&im_of(&m).content[..], b"good");
    assert!(
        c.recv_timeout(Duration::from_millis(200)).await.is_none(),
        "nothing else arrives"
    );

    let (st, metrics) = http(server.http, "GET", "/metrics", &[], b"").await;
    assert_eq!(st, 200);
    assert!(
        metrics
            .lines()
            .any(|l| l.ends_with("routed_rejected_total 1")),
        "{metrics}"
    );
}

/// Messages stored for a user while its node was not subscribed at the router (here: the link was
/// down) could not be published to it; once the link is back and has re-subscribed, the user's
/// sessions are told their newest key and sync.
#[tokio::test]
async fn users_are_told_to_sync_once_their_router_link_has_resubscribed() {
    let (router, server, link, mut c) = node_with_fake_router().await;

    // The router goes away; meanwhile another node stores a message for uid 2 (its publish has
    // nowhere to go).
    drop(link);
    let store = server
        .running
        .as_ref()
        .and_then(|r| r.store.clone())
        .expect("embedded store");
    let stored = store
        .append(vec![store::NewMessage {
            key: None,
            queues: vec![store::QueueId::user(APPID, 2)],
            device_id: 0,
            cmd: cmd::IM,
            flag: 0,
            timestamp: 0,
            body: Body::Im(Im {
                sender: 1,
                receiver: 2,
                timestamp: 0,
                msgid: 0,
                content: Bytes::from_static(b"while the router was away"),
            })
            .to_bytes(2),
        }])
        .await
        .unwrap();
    let key = stored[0][0].key;
    assert!(
        c.recv_timeout(Duration::from_millis(300)).await.is_none(),
        "nothing can tell the client yet"
    );

    // The link comes back and replays its subscriptions: the client is told to sync.
    let (mut link, _) = tokio::time::timeout(WAIT, router.accept())
        .await
        .expect("the access node redials")
        .unwrap();
    wait_subscribe(&mut link, 2).await;
    let (notify, _) = c.recv_until(cmd::SYNC_NOTIFY).await;
    assert_eq!(body_of(&notify), Body::SyncNotify(key));
    let (all, _) = c.sync_all(0).await;
    assert!(all
        .iter()
        .any(|f| f.cmd == cmd::IM && &im_of(f).content[..] == b"while the router was away"));
}

/// Reads route frames from the access node until it publishes an inner frame of `want` to `uid`.
async fn wait_publish(conn: &mut TcpStream, uid: i64, want: u8) -> Frame {
    let mut buf = BytesMut::new();
    tokio::time::timeout(WAIT, async {
        loop {
            while let Some(f) = Frame::decode(&mut buf, 1 << 20).unwrap() {
                if let Ok(RouteBody::Publish(m)) = RouteBody::decode(f.cmd, &f.body) {
                    if m.receiver == uid {
                        if let Some(inner) = m.inner_frame().filter(|i| i.cmd == want) {
                            return inner;
                        }
                    }
                }
            }
            assert!(conn.read_buf(&mut buf).await.unwrap() > 0, "link closed");
        }
    })
    .await
    .expect("the access node publishes")
}

/// The inner frame of a KICK for sessions that logged in with token fingerprint `fp`.
fn kick_frame(fp: u64) -> Bytes {
    let mut inner = BytesMut::new();
    proto::Header {
        len: 8,
        seq: 0,
        cmd: cmd::KICK,
        version: 2,
        flag: 0,
    }
    .write(&mut inner);
    inner.extend_from_slice(&fp.to_be_bytes());
    inner.freeze()
}

#[tokio::test]
async fn a_revoked_token_ends_its_sessions_on_every_node() {
    let (_router, server, mut link, mut c) = node_with_fake_router().await;
    // A kick routed from another node for a token no session here used closes nothing.
    publish(&mut link, 0, 0, kick_frame(12345)).await;
    c.send_body(&Body::Ping, 0).await;
    assert_eq!(c.recv().await.expect("pong").cmd, cmd::PONG);
    assert!(
        !c.closed_within(Duration::from_millis(300)).await,
        "a kick for another token leaves the session alone"
    );

    // Revoking a token on this node closes its session here and tells the other nodes.
    let token = grant(&server, 2).await;
    let mut d = Client::tcp(server.tcp).await;
    assert_eq!(d.auth(&token, 2, proto::Platform::IOS, "d").await, 0);
    let (st, body) = http(
        server.http,
        "POST",
        "/auth/revoke",
        &[("Content-Type", "application/json")],
        serde_json::json!({ "token": token }).to_string().as_bytes(),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert!(d.closed_within(WAIT).await, "the revoked session ended");
    let inner = wait_publish(&mut link, 2, cmd::KICK).await;
    assert_eq!(
        &inner.body[..],
        &backend::token_fingerprint(&token).to_be_bytes()
    );
    assert!(
        !c.closed_within(Duration::from_millis(300)).await,
        "the session with another token stays"
    );

    // A kick routed from another node for a session's token closes that session here.
    let other = grant(&server, 2).await;
    let mut e = Client::tcp(server.tcp).await;
    assert_eq!(e.auth(&other, 2, proto::Platform::IOS, "e").await, 0);
    publish(
        &mut link,
        0,
        0,
        kick_frame(backend::token_fingerprint(&other)),
    )
    .await;
    assert!(
        e.closed_within(WAIT).await,
        "a routed kick ends the session"
    );
    assert!(
        !c.closed_within(Duration::from_millis(300)).await,
        "only the session with that token"
    );
}

/// The sum of the samples of metric `name` in a Prometheus text.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The next IM or SYNC_NOTIFY a client receives (other frames skipped).
async fn recv_im_or_notify(c: &mut Client) -> Frame {
    loop {
        let f = c.recv().await.expect("an IM or a SYNC_NOTIFY");
        if f.cmd == cmd::IM || f.cmd == cmd::SYNC_NOTIFY {
            return f;
        }
    }
}

/// With one access node on a banter router, which reports remote presence, deliveries between the
/// node's own users never reach the router: no PUBLISH for the receiver's or the sender's copy, no
/// PUSH (the receiver is online here). Once the receiver also has a session on a second node,
/// messages reach it there through the router, each as one PUBLISH_STORED that node B turns into
/// the message and its SYNC_NOTIFY; the first one, sent while the news of that session may still be
/// on its way, arrives either itself or as a sync notification.
#[tokio::test]
async fn a_lone_access_node_sends_its_router_nothing_for_local_deliveries() {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let rc = route::RouterConfig {
        listen: "127.0.0.1:0".into(),
        http_listen: "127.0.0.1:0".into(),
        ..Default::default()
    };
    let router = route::run(rc, shutdown.clone()).await.unwrap();
    let router_http = router.http_addr.expect("router http");
    let router_addr = router.addr.to_string();
    let a = TestServer::start_with(|c| c.cluster.route_addrs = vec![router_addr.clone()])
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, m) = http(a.http, "GET", "/metrics", &[], b"").await;
        if metric_sum(&m, "banter_route_presence_known_links") == 1.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut c1 = Client::tcp(a.tcp).await;
    assert_eq!(
        c1.auth(&grant(&a, 1).await, 2, proto::Platform::ANDROID, "d1")
            .await,
        0
    );
    let mut c2 = Client::tcp(a.tcp).await;
    assert_eq!(
        c2.auth(&grant(&a, 2).await, 2, proto::Platform::ANDROID, "d2")
            .await,
        0
    );

    for i in 0..3 {
        c1.send_im(1, 2, &format!("local {i}")).await;
        let (m, _) = c2.recv_until(cmd::IM).await;
        assert_eq!(im_of(&m).content, format!("local {i}").into_bytes());
        c1.recv_until(cmd::ACK).await;
    }
    let (_, rm) = http(router_http, "GET", "/metrics", &[], b"").await;
    assert_eq!(
        metric_sum(&rm, "banter_route_publish_in_total"),
        0.0,
        "{rm}"
    );
    assert_eq!(
        metric_sum(&rm, "banter_route_push_requests_total"),
        0.0,
        "{rm}"
    );
    let (_, am) = http(a.http, "GET", "/metrics", &[], b"").await;
    // Per message: the receiver's stored publish and the sender's copy (each would carry its
    // SYNC_NOTIFY).
    assert!(metric_sum(&am, "banter_route_skipped_total") >= 6.0, "{am}");

    // User 2 gets a session on a second node.
    let b = TestServer::start_with(|c| c.cluster.route_addrs = vec![router_addr.clone()])
        .await
        .unwrap();
    let mut c2b = Client::tcp(b.tcp).await;
    assert_eq!(
        c2b.auth(&grant(&b, 2).await, 2, proto::Platform::IOS, "d2b")
            .await,
        0
    );
    c1.send_im(1, 2, "first").await;
    let f = recv_im_or_notify(&mut c2b).await;
    if f.cmd == cmd::IM {
        assert_eq!(&im_of(&f).content[..], b"first");
    }
    c1.send_im(1, 2, "second").await;
    // The message with its METADATA, then its SYNC_NOTIFY, which node B adds itself: both came in
    // one PUBLISH_STORED.
    let mut key = 0;
    loop {
        let f = c2b.recv().await.expect("the second message");
        if let Body::Metadata(m) = body_of(&f) {
            key = m.sync_key;
        }
        if f.cmd == cmd::IM && &im_of(&f).content[..] == b"second" {
            break;
        }
    }
    assert!(key > 0, "the message came with its METADATA");
    let f = recv_im_or_notify(&mut c2b).await;
    assert_eq!(body_of(&f), Body::SyncNotify(key));
    let (_, rm) = http(router_http, "GET", "/metrics", &[], b"").await;
    assert!(
        metric_sum(&rm, "banter_route_publish_in_total{kind=\"stored\"}") >= 2.0,
        "{rm}"
    );
    // No PUBLISH of a message's SYNC_NOTIFY beside the stored publishes: the only plain PUBLISH is
    // the one notification owed for the messages skipped before B's session showed up. And no
    // PUSH: the receiver is online on node A too.
    assert!(
        metric_sum(&rm, "banter_route_publish_in_total{kind=\"user\"}") <= 1.0,
        "{rm}"
    );
    assert_eq!(
        metric_sum(&rm, "banter_route_push_requests_total"),
        0.0,
        "{rm}"
    );
    drop((a, b));
    shutdown.cancel();
    tokio::time::timeout(WAIT, router.wait())
        .await
        .expect("router stops");
}
