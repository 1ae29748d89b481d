//! The access side of the route link against a fake router on real sockets: replay of the
//! subscription state on (re)connect, reference counting on the wire, drops on a full queue without
//! blocking, publishes handed to the handler, malformed frames, `set_addrs`, and the users handed
//! to the handler after a replay or a move.
#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use cluster::route_link::{
    Presence, RoomChange, RouteHandler, RouteLink, RouteLinkConfig, RouteLinks, UserChange,
};
use cluster::route_proto::{
    cmd, publish_stored_body, route_message_body, sync_notify_frame, write_frame, RouteBody,
    RouteKind, RoutedMessage,
};
use proto::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

fn config() -> RouteLinkConfig {
    RouteLinkConfig {
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..RouteLinkConfig::default()
    }
}

fn inner(text: &str) -> Bytes {
    let mut body = BytesMut::new();
    body.extend_from_slice(&1i64.to_be_bytes());
    body.extend_from_slice(&2i64.to_be_bytes());
    body.extend_from_slice(&[0, 0, 0, 3, 0, 0, 0, 4]);
    body.extend_from_slice(text.as_bytes());
    Frame {
        seq: 0,
        cmd: proto::cmd::IM,
        version: 2,
        flag: proto::flag::PUSH,
        body: body.freeze(),
    }
    .to_bytes()
}

struct FakeConn {
    stream: TcpStream,
    buf: BytesMut,
}

impl FakeConn {
    async fn next(&mut self) -> Option<RouteBody> {
        self.next_within(WAIT).await
    }

    async fn next_within(&mut self, d: Duration) -> Option<RouteBody> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            if let Some(f) = Frame::decode(&mut self.buf, 1 << 20).expect("valid frame") {
                assert_eq!((f.version, f.flag), (0, 0));
                match RouteBody::decode(f.cmd, &f.body).expect("valid body") {
                    // This fake router ignores it, as GoBelieve's imr does: the link then
                    // publishes everything.
                    RouteBody::WatchPresence | RouteBody::StoredPublish => continue,
                    b => return Some(b),
                }
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(_)) => {}
            }
        }
    }

    async fn take(&mut self, n: usize) -> Vec<RouteBody> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(self.next().await.expect("a frame"));
        }
        out
    }

    /// Frames up to (excluding) a PUBLISH_ROOM marker for room `marker`.
    async fn until_marker(&mut self, marker: i64) -> Vec<RouteBody> {
        let mut out = Vec::new();
        loop {
            match self.next().await.expect("a frame before the marker") {
                RouteBody::Publish(m) if m.kind == RouteKind::Room && m.receiver == marker => {
                    return out
                }
                b => out.push(b),
            }
        }
    }

    async fn send(&mut self, c: u8, body: &[u8]) {
        let mut b = BytesMut::new();
        write_frame(&mut b, 1, c, body);
        self.stream.write_all(&b).await.expect("write");
    }

    /// True when the peer closes the connection within `d`.
    async fn closed_within(&mut self, d: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let mut scratch = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut scratch)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => return false,
            }
        }
    }
}

async fn accept(l: &TcpListener) -> FakeConn {
    let (stream, _) = tokio::time::timeout(WAIT, l.accept())
        .await
        .expect("link dials")
        .expect("accept");
    FakeConn {
        stream,
        buf: BytesMut::new(),
    }
}

async fn listener() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    (l, addr)
}

fn sub(appid: i64, uid: i64, online: bool) -> RouteBody {
    RouteBody::Subscribe { appid, uid, online }
}

fn sub_room(appid: i64, room: i64) -> RouteBody {
    RouteBody::SubscribeRoom { appid, room }
}

fn set(v: Vec<RouteBody>) -> HashSet<String> {
    v.into_iter().map(|b| format!("{b:?}")).collect()
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn null_handler() -> Arc<mpsc::Sender<RoutedMessage>> {
    let (tx, rx) = mpsc::channel(16);
    std::mem::forget(rx);
    Arc::new(tx)
}

#[tokio::test]
async fn replays_state_first_and_again_after_the_router_restarts() {
    let (l, addr) = listener().await;
    let link = RouteLink::new(addr.clone(), config(), null_handler());
    // State set up before any connection: only the replay carries it.
    link.subscribe(7, 1, true);
    link.subscribe(7, 2, false);
    link.subscribe(7, 2, true);
    link.subscribe_room(7, 100);
    assert!(link.publish(7, 1, 10, 9, &inner("queued before connect")));
    let mut c = accept(&l).await;
    let replay = c.take(3).await;
    assert_eq!(
        set(replay[..2].to_vec()),
        set(vec![sub(7, 1, true), sub(7, 2, true)])
    );
    assert_eq!(replay[2], sub_room(7, 100));
    match c.next().await.expect("the queued publish") {
        RouteBody::Publish(m) => {
            assert_eq!(
                (m.kind, m.appid, m.receiver, m.msgid, m.prev_msgid),
                (RouteKind::User, 7, 1, 10, 9)
            );
            assert!(m.timestamp_ns > 0);
            assert_eq!(m.inner, inner("queued before connect"));
        }
        other => panic!("unexpected {other:?}"),
    }
    // Live changes.
    link.unsubscribe(7, 2);
    link.subscribe(7, 3, false);
    link.unsubscribe_room(7, 100);
    link.subscribe_room(7, 101);
    assert_eq!(
        c.take(4).await,
        vec![
            RouteBody::Unsubscribe { appid: 7, uid: 2 },
            sub(7, 3, false),
            RouteBody::UnsubscribeRoom {
                appid: 7,
                room: 100
            },
            sub_room(7, 101)
        ]
    );
    wait_until("connected", || link.is_connected()).await;

    // The router goes away; changes and publishes meanwhile.
    drop(c);
    drop(l);
    wait_until("link notices", || !link.is_connected()).await;
    link.subscribe(7, 4, true);
    link.unsubscribe(7, 3);
    assert!(link.publish_room(7, 101, &inner("queued while down")));
    let l = TcpListener::bind(&addr)
        .await
        .expect("rebind the same port");
    let mut c = accept(&l).await;
    let replay = c.take(3).await;
    assert_eq!(
        set(replay[..2].to_vec()),
        set(vec![sub(7, 1, true), sub(7, 4, true)])
    );
    assert_eq!(replay[2], sub_room(7, 101));
    match c.next().await.expect("the queued room publish") {
        RouteBody::Publish(m) => assert_eq!(
            (m.kind, m.receiver, m.timestamp_ns),
            (RouteKind::Room, 101, 0)
        ),
        other => panic!("unexpected {other:?}"),
    }
    let st = link.stats();
    assert_eq!((st.users, st.rooms, st.connects, st.dropped), (2, 1, 2, 0));
    link.closed().await;
    assert!(c.closed_within(WAIT).await);
}

#[test]
fn presence_transitions() {
    let p = Presence::new();
    // First connection (offline), then an online one, then another online one.
    assert_eq!(
        p.login(1, 7, 5, false),
        Some(UserChange::Subscribe { online: false })
    );
    assert_eq!(
        p.login(2, 7, 5, true),
        Some(UserChange::Subscribe { online: true })
    );
    assert_eq!(p.login(3, 7, 5, true), None);
    assert_eq!(p.user(7, 5), (3, 2));
    // Logging the same connection in again counts once.
    assert_eq!(p.login(3, 7, 5, true), None);
    assert_eq!(p.user(7, 5), (3, 2));
    assert_eq!(p.logout(2, 7, 5), None);
    // Last online connection closes while an offline one remains.
    assert_eq!(
        p.logout(3, 7, 5),
        Some(UserChange::Subscribe { online: false })
    );
    // Unknown connections change nothing.
    assert_eq!(p.logout(99, 7, 5), None);
    assert_eq!(p.logout(1, 7, 5), Some(UserChange::Unsubscribe));
    assert_eq!(p.logout(1, 7, 5), None);
    assert_eq!(p.user(7, 5), (0, 0));
    // First connection online.
    assert_eq!(
        p.login(4, 7, 6, true),
        Some(UserChange::Subscribe { online: true })
    );
    assert_eq!(p.logout(4, 7, 6), Some(UserChange::Unsubscribe));

    // Rooms, including a displaced connection (#22): conn 1 is displaced by conn 2 of the same
    // user and device; its late leave must not drop the count.
    assert_eq!(p.enter_room(1, 7, 100), Some(RoomChange::Subscribe));
    assert_eq!(p.enter_room(1, 7, 100), None);
    assert_eq!(p.enter_room(2, 7, 100), None);
    assert_eq!(p.leave_room(1, 7, 100), None);
    assert_eq!(p.leave_room(1, 7, 100), None);
    assert_eq!(p.room(7, 100), 1);
    assert_eq!(p.leave_room(2, 7, 100), Some(RoomChange::Unsubscribe));
    assert!(p.is_empty());
}

#[tokio::test]
async fn reference_counting_on_the_wire() {
    let (l, addr) = listener().await;
    let links = RouteLinks::new(vec![addr], vec![], config(), null_handler());
    let mut c = accept(&l).await;
    // Changes made while disconnected only reach the router through the replay.
    wait_until("connected", || links.stats()[0].connected).await;
    links.login(1, 7, 5, false);
    links.login(2, 7, 5, true);
    links.login(3, 7, 5, true);
    links.logout(2, 7, 5);
    links.logout(3, 7, 5);
    links.logout(1, 7, 5);
    links.enter_room(1, 7, 100);
    links.enter_room(2, 7, 100);
    links.leave_room(1, 7, 100);
    links.leave_room(1, 7, 100);
    links.leave_room(2, 7, 100);
    links.publish_room(7, -1, &inner("marker"));
    assert_eq!(
        c.until_marker(-1).await,
        vec![
            sub(7, 5, false),
            sub(7, 5, true),
            sub(7, 5, false),
            RouteBody::Unsubscribe { appid: 7, uid: 5 },
            sub_room(7, 100),
            RouteBody::UnsubscribeRoom {
                appid: 7,
                room: 100
            },
        ]
    );
    // Publishes and pushes travel unchanged; a push is split into chunks of at most 1000.
    let receivers: Vec<i64> = (1..=2500).collect();
    assert!(links.publish(7, 5, 11, 10, &inner("p")));
    assert!(links.publish_group(7, 3, 12, 0, &inner("g")));
    assert!(links.push(7, &receivers, &inner("push")));
    let frames = c.take(5).await;
    match (&frames[0], &frames[1]) {
        (RouteBody::Publish(a), RouteBody::Publish(b)) => {
            assert_eq!(
                (a.kind, a.receiver, a.msgid, a.prev_msgid),
                (RouteKind::User, 5, 11, 10)
            );
            assert_eq!((b.kind, b.receiver, b.msgid), (RouteKind::Group, 3, 12));
        }
        other => panic!("unexpected {other:?}"),
    }
    let mut got = Vec::new();
    for f in &frames[2..] {
        match f {
            RouteBody::Push(p) => {
                assert!(p.receivers.len() <= 1000);
                assert_eq!(p.inner, inner("push"));
                got.extend_from_slice(&p.receivers);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, receivers);
    links.shutdown().await;
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_without_blocking() {
    // Nobody listens: the link keeps failing to dial.
    let (l, addr) = listener().await;
    drop(l);
    let cfg = RouteLinkConfig {
        queue_frames: 8,
        ..config()
    };
    let links = RouteLinks::new(vec![addr], vec![], cfg, null_handler());
    let payload = inner(&"x".repeat(1000));
    let start = Instant::now();
    let queued = (0..10_000)
        .filter(|i| links.publish(7, *i, 0, 0, &payload))
        .count();
    // Subscription changes while disconnected only update the state.
    for uid in 0..1000 {
        links.login(uid as u64, 7, uid, true);
    }
    let elapsed = start.elapsed();
    assert_eq!(queued, 8);
    let st = &links.stats()[0];
    assert_eq!(
        (st.queued, st.dropped, st.users, st.connected),
        (8, 9_992, 1000, false)
    );
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    links.shutdown().await;
}

#[tokio::test]
async fn a_router_that_never_reads_costs_drops_not_a_stall() {
    let (l, addr) = listener().await;
    let cfg = RouteLinkConfig {
        queue_frames: 64,
        write_timeout: Duration::from_millis(300),
        ..config()
    };
    let link = RouteLink::new(addr, cfg, null_handler());
    let _stalled = accept(&l).await; // accepted, never read
    wait_until("connected", || link.is_connected()).await;
    let payload = inner(&"y".repeat(30_000));
    let start = Instant::now();
    let mut sent = 0;
    // ~60 MB offered: far beyond the socket buffers.
    for i in 0..2000 {
        if link.publish(7, i, 0, 0, &payload) {
            sent += 1;
        }
        if i % 100 == 0 {
            tokio::task::yield_now().await;
        }
    }
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(sent < 2000);
    assert!(link.stats().dropped > 0);
    // The write deadline tears the stuck connection down and the link redials.
    let mut again = accept(&l).await;
    wait_until("second connection", || link.stats().connects >= 2).await;
    link.subscribe(7, 1, true);
    // The new connection gets the (tiny) state, then whatever was still queued.
    let mut saw_sub = false;
    while let Some(b) = again.next_within(Duration::from_secs(2)).await {
        if b == sub(7, 1, true) {
            saw_sub = true;
            break;
        }
    }
    assert!(saw_sub);
    link.closed().await;
}

#[tokio::test]
async fn publishes_reach_the_handler_and_malformed_frames_close_the_link() {
    let (l, addr) = listener().await;
    let (tx, mut rx) = mpsc::channel(16);
    let link = RouteLink::new(addr, config(), Arc::new(tx));
    link.subscribe(7, 1, true);
    let mut c = accept(&l).await;
    assert_eq!(c.next().await, Some(sub(7, 1, true)));
    let body = route_message_body(7, 1, 20, 19, 123, &inner("from afar")).expect("encodes");
    c.send(cmd::PUBLISH, &body).await;
    // Other commands are ignored.
    c.send(cmd::SUBSCRIBE, &[0u8; 17]).await;
    c.send(99, b"whatever").await;
    let group = route_message_body(7, 3, 21, 0, 0, &inner("group")).expect("encodes");
    c.send(cmd::PUBLISH_GROUP, &group).await;
    let m = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("handler called")
        .expect("message");
    assert_eq!(
        (
            m.kind,
            m.appid,
            m.receiver,
            m.msgid,
            m.prev_msgid,
            m.timestamp_ns
        ),
        (RouteKind::User, 7, 1, 20, 19, 123)
    );
    assert_eq!(m.inner, inner("from afar"));
    let m = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("handler called")
        .expect("message");
    assert_eq!((m.kind, m.receiver), (RouteKind::Group, 3));

    // A route message whose inner length runs past the body: the link closes and redials.
    let mut bad = body.to_vec();
    bad.truncate(50);
    c.send(cmd::PUBLISH_ROOM, &bad).await;
    assert!(c.closed_within(WAIT).await);
    let mut c = accept(&l).await;
    assert_eq!(c.next().await, Some(sub(7, 1, true)));
    // A negative frame length, likewise.
    c.stream
        .write_all(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 132, 0, 0, 0])
        .await
        .expect("write");
    assert!(c.closed_within(WAIT).await);
    let mut c = accept(&l).await;
    assert_eq!(c.next().await, Some(sub(7, 1, true)));
    let st = link.stats();
    assert_eq!((st.malformed, st.received, st.connects), (2, 2, 3));
    link.closed().await;
}

#[tokio::test]
async fn set_addrs_adds_and_removes_routers_without_restart() {
    let (la, a) = listener().await;
    let (lb, b) = listener().await;
    let links = RouteLinks::new(vec![a.clone()], vec![], config(), null_handler());
    let mut ca = accept(&la).await;
    for uid in 1..=6 {
        links.login(uid as u64, 7, uid, uid % 2 == 0);
    }
    for room in 10..=13 {
        links.enter_room(100 + room as u64, 7, room);
    }
    links.publish_room(7, -2, &inner("marker"));
    assert_eq!(ca.until_marker(-2).await.len(), 10);

    // Add B: every user is also on every group channel (group list = route list), so B gets all
    // users; rooms with an odd id move to B (index |room| mod 2 = 1).
    links.set_addrs(vec![a.clone(), b.clone()], vec![]);
    let mut cb = accept(&lb).await;
    let mut expected: Vec<RouteBody> = (1..=6).map(|uid| sub(7, uid, uid % 2 == 0)).collect();
    expected.extend([sub_room(7, 11), sub_room(7, 13)]);
    let got = cb.take(8).await;
    assert_eq!(set(got), set(expected));
    links.publish_room(7, -2, &inner("marker")); // room -2 → index 0 → A
    assert_eq!(
        set(ca.until_marker(-2).await),
        set(vec![
            RouteBody::UnsubscribeRoom { appid: 7, room: 11 },
            RouteBody::UnsubscribeRoom { appid: 7, room: 13 }
        ])
    );
    // New sessions after the change go to both.
    links.login(50, 7, 7, true);
    assert_eq!(cb.next().await, Some(sub(7, 7, true)));
    links.publish_room(7, -2, &inner("marker"));
    assert_eq!(ca.until_marker(-2).await, vec![sub(7, 7, true)]);
    let (route, group) = links.addrs();
    assert_eq!((route.len(), group.len()), (2, 0));

    // Remove A: its link closes; B takes the even rooms.
    links.set_addrs(vec![b.clone()], vec![]);
    assert!(ca.closed_within(WAIT).await);
    assert_eq!(
        set(cb.take(2).await),
        set(vec![sub_room(7, 10), sub_room(7, 12)])
    );
    assert_eq!(links.stats().len(), 1);

    // A separate group channel: users stay on their own channel plus the group router.
    let (lg, g) = listener().await;
    links.set_addrs(vec![b.clone()], vec![g]);
    let mut cg = accept(&lg).await;
    let got = cg.take(7).await;
    assert_eq!(
        set(got),
        set((1..=7)
            .map(|uid| sub(7, uid, uid % 2 == 0 || uid == 7))
            .collect())
    );
    links.shutdown().await;
}

/// Records what the links hand to [`RouteHandler::on_resubscribed`].
#[derive(Default)]
struct Resubscribed(parking_lot::Mutex<Vec<Vec<(i64, i64)>>>);

impl RouteHandler for Resubscribed {
    fn on_publish(&self, _msg: RoutedMessage) {}

    fn on_resubscribed(&self, mut users: Vec<(i64, i64)>) {
        users.sort_unstable();
        self.0.lock().push(users);
    }
}

impl Resubscribed {
    fn take(&self) -> Vec<Vec<(i64, i64)>> {
        std::mem::take(&mut *self.0.lock())
    }
}

#[tokio::test]
async fn users_the_router_may_have_missed_publishes_for_are_handed_to_the_handler() {
    let (la, a) = listener().await;
    let (lb, b) = listener().await;
    let (lg, g) = listener().await;
    let h = Arc::new(Resubscribed::default());
    let links = RouteLinks::new(
        vec![a.clone(), b.clone()],
        vec![g.clone()],
        config(),
        h.clone(),
    );
    let mut ca = accept(&la).await;
    let mut cb = accept(&lb).await;
    let mut cg = accept(&lg).await;
    wait_until("connected", || links.stats().iter().all(|l| l.connected)).await;
    // uid 1 on its own channel B (|1| mod 2), uid 2 on A; both on the group channel G.
    links.login(1, 7, 1, true);
    links.login(2, 7, 2, true);
    assert_eq!(cb.next().await, Some(sub(7, 1, true)));
    assert_eq!(ca.next().await, Some(sub(7, 2, true)));
    assert_eq!(
        set(cg.take(2).await),
        set(vec![sub(7, 1, true), sub(7, 2, true)])
    );
    assert!(
        h.take().is_empty(),
        "links connected before anyone logged in"
    );

    // Swapping the route list moves both users to the other kept link.
    links.set_addrs(vec![b.clone(), a.clone()], vec![g.clone()]);
    assert_eq!(
        set(ca.take(2).await),
        set(vec![
            sub(7, 1, true),
            RouteBody::Unsubscribe { appid: 7, uid: 2 }
        ])
    );
    assert_eq!(
        set(cb.take(2).await),
        set(vec![
            sub(7, 2, true),
            RouteBody::Unsubscribe { appid: 7, uid: 1 }
        ])
    );
    assert_eq!(h.take(), vec![vec![(7, 1), (7, 2)]]);

    // The group router restarts: its link replays both users, then hands them over.
    drop(cg);
    let mut cg = accept(&lg).await;
    assert_eq!(
        set(cg.take(2).await),
        set(vec![sub(7, 1, true), sub(7, 2, true)])
    );
    wait_until("handed over", || !h.0.lock().is_empty()).await;
    assert_eq!(h.take(), vec![vec![(7, 1), (7, 2)]]);
    links.shutdown().await;
}

#[tokio::test]
async fn stored_publishes_are_one_frame_only_where_the_router_takes_them() {
    let (l, addr) = listener().await;
    let (tx, mut rx) = mpsc::channel(16);
    let link = RouteLink::new(addr, config(), Arc::new(tx));
    // This router ignores STORED_PUBLISH, as GoBelieve's imr does: a stored message goes as its
    // PUBLISH, the PUBLISH of its SYNC_NOTIFY and (asked for) a PUSH.
    let mut c = accept(&l).await;
    wait_until("connected", || link.is_connected()).await;
    assert!(link.publish_stored(7, 1, (10, 9), &inner("old router"), true));
    let frames = c.take(3).await;
    match &frames[..] {
        [RouteBody::Publish(m), RouteBody::Publish(n), RouteBody::Push(p)] => {
            assert_eq!((m.receiver, m.msgid, m.prev_msgid), (1, 10, 9));
            assert_eq!(m.inner, inner("old router"));
            assert_eq!((n.receiver, n.msgid, n.prev_msgid), (1, 0, 0));
            assert_eq!(n.inner, sync_notify_frame(10));
            assert_eq!((p.appid, &p.receivers[..]), (7, &[1][..]));
            assert_eq!(p.inner, inner("old router"));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(!link.stats().stored_publish);

    // Once the router answers, one PUBLISH_STORED carries all of it.
    c.send(cmd::STORED_PUBLISH, &[]).await;
    wait_until("stored publishes", || link.stats().stored_publish).await;
    assert!(link.publish_stored(7, 1, (11, 10), &inner("new router"), true));
    match c.next().await {
        Some(RouteBody::PublishStored { message, push }) => {
            assert_eq!(
                (message.receiver, message.msgid, message.prev_msgid),
                (1, 11, 10)
            );
            assert_eq!((message.inner, push), (inner("new router"), true));
        }
        other => panic!("unexpected {other:?}"),
    }

    // From the router, a PUBLISH_STORED reaches the handler as the message and its SYNC_NOTIFY.
    let body = publish_stored_body(7, 1, (20, 19), 5, &inner("from afar"), false).unwrap();
    c.send(cmd::PUBLISH_STORED, &body).await;
    let m = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (m.msgid, m.prev_msgid, &m.inner),
        (20, 19, &inner("from afar"))
    );
    let n = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((n.msgid, &n.inner), (0, &sync_notify_frame(20)));
    assert_eq!(link.stats().received, 1);

    // A new connection starts without: its router has to answer again.
    drop(c);
    let _c = accept(&l).await;
    wait_until("reconnected", || link.stats().connects == 2).await;
    assert!(!link.stats().stored_publish);
    link.closed().await;
}

#[tokio::test]
async fn stored_publishes_queued_for_a_lost_router_go_to_the_next_as_plain_publishes() {
    let (l, addr) = listener().await;
    let cfg = RouteLinkConfig {
        write_timeout: Duration::from_millis(500),
        ..config()
    };
    let link = RouteLink::new(addr, cfg, null_handler());
    let mut c = accept(&l).await;
    c.send(cmd::STORED_PUBLISH, &[]).await;
    wait_until("stored publishes", || link.stats().stored_publish).await;
    // The router stops reading: beyond the socket buffers, stored publishes wait in the queue.
    let payload = inner(&"z".repeat(30_000));
    for i in 0..400 {
        assert!(link.publish_stored(7, i, (1000 + i, 0), &payload, false));
        if i % 50 == 0 {
            tokio::task::yield_now().await;
        }
    }
    wait_until("a queue", || link.stats().queued > 0).await;
    drop(c);
    // The next router may not take them (this one does not answer): they arrive as message and
    // notification pairs.
    let mut next = accept(&l).await;
    let (mut messages, mut notifications) = (HashSet::new(), HashSet::new());
    while let Some(b) = next.next_within(Duration::from_secs(2)).await {
        match b {
            RouteBody::Publish(m) if m.msgid > 0 => {
                assert_eq!(m.msgid, 1000 + m.receiver);
                messages.insert(m.msgid);
            }
            RouteBody::Publish(n) => {
                let f = n.inner_frame().unwrap();
                assert_eq!(f.cmd, proto::cmd::SYNC_NOTIFY);
                notifications.insert(i64::from_be_bytes(f.body[..8].try_into().unwrap()));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(!messages.is_empty());
    assert_eq!(messages, notifications);
    link.closed().await;
}
