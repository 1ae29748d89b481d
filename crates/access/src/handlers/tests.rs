//! Handler tests without sockets: a node with a store, backend and group directory in a temporary
//! directory; sessions are route-table entries whose outboxes the tests read, and each handler's
//! answers are the frames its [`Reply`] queued.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use backend::push::PushSink;
use backend::Backend;
use backend::{EmbeddedGroupOptions, GroupDirectory, RelationDirectory, RelationKind};
use bytes::Bytes;
use proto::{cmd, flag, AckStatus, Body, Customer, Frame, GroupSyncKey, Im, Rt};
use store::{Durability, Store, StoreOptions};

use super::*;
use crate::app::{Routers, Services, StoreClient};
use crate::config::{ApiConfig, RelationshipsConfig, ServerConfig, SyncConfig};
use crate::route::{OutboxLimits, Push, SessionId};

const APP: i64 = 1;
const KEFU: i64 = 9;

/// A directory removed when the test ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "banter-handlers-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Node {
    app: Arc<App>,
    _dir: TempDir,
}

async fn node_with(server: ServerConfig, sync: SyncConfig) -> Node {
    node_full(server, sync, RelationshipsConfig::default()).await
}

async fn node_full(
    server: ServerConfig,
    sync: SyncConfig,
    relationships: RelationshipsConfig,
) -> Node {
    let dir = TempDir::new();
    let store = Store::open(
        dir.0.join("store"),
        StoreOptions {
            durability: Durability::None,
            segment_bytes: 1 << 20,
            preallocate: false,
            ..StoreOptions::default()
        },
    )
    .expect("store");
    let backend = Backend::open_embedded(backend::EmbeddedOptions {
        path: dir.0.join("backend.db"),
        ..Default::default()
    })
    .await
    .expect("backend");
    let groups = GroupDirectory::open_embedded(EmbeddedGroupOptions {
        path: dir.0.join("groups.db"),
        ..Default::default()
    })
    .await
    .expect("groups");
    let relations = RelationDirectory::open_embedded(&dir.0.join("relations.db"), 1000)
        .await
        .expect("relations");
    let app = App::new(
        server,
        sync,
        ApiConfig::default(),
        Services {
            routers: Routers::default(),
            store: StoreClient::Local(Arc::new(store)),
            backend,
            groups,
            relations,
            relationships,
            push: PushSink::Disabled,
            words: None,
            app_api: None,
            web: web::WebConfig::default(),
            metrics: Arc::new(crate::metrics::AccessMetrics::default()),
        },
    );
    Node { app, _dir: dir }
}

async fn node() -> Node {
    node_with(
        ServerConfig {
            kefu_appid: KEFU,
            ..ServerConfig::default()
        },
        SyncConfig::default(),
    )
    .await
}

/// A logged-in connection: its state, its reply buffer (version 2) and its route-table entry.
struct Client {
    conn: Conn,
    out: Reply,
    handle: Arc<SessionHandle>,
}

static CONN_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn login(app: &Arc<App>, appid: i64, uid: i64, device_id: i64) -> Client {
    let conn_id = CONN_IDS.fetch_add(1, Ordering::Relaxed);
    let handle = Arc::new(SessionHandle::new(
        SessionId {
            conn_id,
            appid,
            uid,
            device_id,
            platform: proto::Platform::ANDROID,
            online: true,
            forbidden: false,
            token_fp: 0,
        },
        OutboxLimits {
            frames: 1000,
            bytes: 1 << 20,
        },
    ));
    app.route.add(handle.clone());
    let mut conn = Conn::new(app.clone(), conn_id);
    conn.handle = Some(handle.clone());
    let mut out = Reply::default();
    out.set_version(2);
    Client { conn, out, handle }
}

impl Client {
    /// Sends `body` as the client would, runs the handler and, for a stored message, its
    /// append and completion; returns the frames the connection got back.
    async fn send(&mut self, seq: i32, flag: u8, body: Body) -> Vec<Frame> {
        let frame = Frame {
            seq,
            cmd: body.cmd(),
            version: self.out.version(),
            flag,
            body: body.to_bytes(self.out.version()),
        };
        let (append, sync_key) =
            match dispatch(&mut self.conn, &mut self.out, frame).expect("dispatch") {
                Step::Done => (None, None),
                Step::Append(a) => (Some(a), None),
                Step::Sync(key) => (None, Some(key)),
                Step::Wait(f) => (f.await, None),
            };
        if let Some(key) = sync_key {
            sync::on_sync(&mut self.conn, &mut self.out, key).await;
        }
        if let Some(a) = append {
            let result = self.conn.app.store.append(a.batch).await;
            complete(&self.conn, &mut self.out, *a.then, result);
        }
        self.out.take_frames()
    }

    /// What others pushed to this session.
    fn pushed(&self) -> Vec<Push> {
        let mut v = Vec::new();
        assert!(self.handle.drain(&mut v).is_none(), "session was closed");
        v
    }
}

/// An IM with a `msgid` of its own: two calls are two messages, never a resend of one.
fn im(sender: i64, receiver: i64, text: &'static str) -> Im {
    static NEXT_MSGID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(1);
    Im {
        sender,
        receiver,
        timestamp: 0,
        msgid: NEXT_MSGID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        content: Bytes::from_static(text.as_bytes()),
    }
}

/// The ACK in `frames` (the last frame), decoded.
fn ack_of(frames: &[Frame]) -> (proto::Ack, u8) {
    let f = frames.last().expect("a reply");
    assert_eq!(f.cmd, cmd::ACK, "last frame is an ACK");
    match Body::decode(f.cmd, 2, &f.body).unwrap() {
        Body::Ack(a) => (a, f.flag),
        _ => unreachable!(),
    }
}

/// Asserts that the message was refused with `status` (one ACK, no METADATA) and counted.
fn assert_refused(app: &App, frames: &[Frame], seq: i32, status: i8, before: u64) {
    assert_eq!(frames.len(), 1, "only an ACK: {frames:?}");
    let (a, _) = ack_of(frames);
    assert_eq!((a.seq, a.status), (seq, status));
    assert_eq!(Stats::get(&app.stats.messages_refused), before + 1);
}

fn refused(app: &App) -> u64 {
    Stats::get(&app.stats.messages_refused)
}

#[tokio::test]
async fn a_peer_message_is_stored_pushed_and_acked() {
    let n = node().await;
    let mut a = login(&n.app, APP, 10, 100);
    let a2 = login(&n.app, APP, 10, 101);
    let b = login(&n.app, APP, 20, 200);
    let frames = a
        .send(7, flag::TEXT | flag::PUSH, Body::Im(im(10, 20, "hi")))
        .await;
    // METADATA (the sender's copy) + ACK.
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0].cmd, cmd::METADATA);
    let (ack, _) = ack_of(&frames);
    assert_eq!((ack.seq, ack.status), (7, AckStatus::SUCCESS));
    // The receiver: METADATA-carrying IM with PUSH and the client's TEXT flag (not its PUSH), then
    // SYNC_NOTIFY.
    let pushed = b.pushed();
    assert_eq!(pushed.len(), 2);
    assert_eq!(pushed[0].cmd, cmd::IM);
    assert_eq!(pushed[0].flag, flag::TEXT | flag::PUSH);
    let meta = pushed[0].meta.expect("METADATA");
    match Body::decode(cmd::IM, 2, &pushed[0].body).unwrap() {
        Body::Im(m) => {
            assert_eq!((m.sender, m.receiver, &m.content[..]), (10, 20, &b"hi"[..]));
            assert!(m.timestamp > 0, "the server sets the timestamp");
        }
        _ => unreachable!(),
    }
    assert_eq!(pushed[1].cmd, cmd::SYNC_NOTIFY);
    assert_eq!(pushed[1].body, Body::SyncNotify(meta.sync_key).to_stored());
    // The sender's other device gets the sender's copy; the sending connection gets nothing pushed.
    assert_eq!(a2.pushed().len(), 2);
    assert!(a.pushed().is_empty());
    assert_eq!(Stats::get(&n.app.stats.messages_stored), 1);
}

#[tokio::test]
async fn peer_refusals_are_acked_with_their_status() {
    let n = node_with(
        ServerConfig {
            rate_limit_per_sec: 1,
            ..ServerConfig::default()
        },
        SyncConfig::default(),
    )
    .await;
    let mut a = login(&n.app, APP, 10, 100);
    let b = login(&n.app, APP, 20, 200);
    let before = refused(&n.app);
    let frames = a.send(1, 0, Body::Im(im(11, 20, "spoofed"))).await;
    assert_refused(&n.app, &frames, 1, AckStatus::INVALID_SENDER, before);
    let frames = a.send(2, 0, Body::Im(im(10, 0, "nobody"))).await;
    assert_refused(&n.app, &frames, 2, AckStatus::INVALID_RECEIVER, before + 1);
    // One message a second: the first passes, the next is refused.
    let frames = a.send(3, 0, Body::Im(im(10, 20, "one"))).await;
    assert_eq!(ack_of(&frames).0.status, AckStatus::SUCCESS);
    let frames = a.send(4, 0, Body::Im(im(10, 20, "two"))).await;
    assert_refused(&n.app, &frames, 4, AckStatus::RATE_LIMITED, before + 2);
    // Only the accepted message reached the receiver.
    assert_eq!(b.pushed().len(), 2);
    assert_eq!(Stats::get(&n.app.stats.messages_stored), 1);
}

async fn befriend(app: &App, a: i64, b: i64, on: bool) {
    for (x, y) in [(a, b), (b, a)] {
        app.relations
            .set(RelationKind::Friend, APP, x, y, on)
            .await
            .expect("set friend");
    }
}

fn with_checks(friendship: bool, blacklist: bool) -> RelationshipsConfig {
    RelationshipsConfig {
        friendship,
        blacklist,
        ..RelationshipsConfig::default()
    }
}

#[tokio::test]
async fn friendship_refusals_in_order_and_friends_pass() {
    let n = node_full(
        ServerConfig::default(),
        SyncConfig::default(),
        with_checks(true, false),
    )
    .await;
    let mut a = login(&n.app, APP, 10, 100);
    let b = login(&n.app, APP, 20, 200);
    let before = refused(&n.app);
    // Strangers: the pair is read from the store (the handler waits for it), then refused.
    let frames = a.send(1, 0, Body::Im(im(10, 20, "hello?"))).await;
    assert_refused(&n.app, &frames, 1, AckStatus::NOT_MY_FRIEND, before);
    // Only the receiver lists the sender: still "not my friend"; then the other way round.
    n.app
        .relations
        .set(RelationKind::Friend, APP, 20, 10, true)
        .await
        .unwrap();
    let frames = a.send(2, 0, Body::Im(im(10, 20, "hello?"))).await;
    assert_refused(&n.app, &frames, 2, AckStatus::NOT_MY_FRIEND, before + 1);
    n.app
        .relations
        .set(RelationKind::Friend, APP, 20, 10, false)
        .await
        .unwrap();
    n.app
        .relations
        .set(RelationKind::Friend, APP, 10, 20, true)
        .await
        .unwrap();
    let frames = a.send(3, 0, Body::Im(im(10, 20, "hello?"))).await;
    assert_refused(&n.app, &frames, 3, AckStatus::NOT_YOUR_FRIEND, before + 2);
    assert!(b.pushed().is_empty(), "nothing refused is delivered");
    // Friends both ways: answered from the cache without waiting, stored and delivered.
    befriend(&n.app, 10, 20, true).await;
    let frame = Frame {
        seq: 4,
        cmd: cmd::IM,
        version: 2,
        flag: 0,
        body: Body::Im(im(10, 20, "hi friend")).to_stored(),
    };
    assert!(
        matches!(
            dispatch(&mut a.conn, &mut a.out, frame),
            Ok(Step::Append(_))
        ),
        "a cached pair needs no wait"
    );
    let frames = a.send(5, 0, Body::Im(im(10, 20, "hi friend"))).await;
    assert_eq!(ack_of(&frames).0.status, AckStatus::SUCCESS);
    assert_eq!(b.pushed().len(), 2);
    // The blacklist is not checked when only friendship is on.
    n.app
        .relations
        .set(RelationKind::Blacklist, APP, 20, 10, true)
        .await
        .unwrap();
    let frames = a.send(6, 0, Body::Im(im(10, 20, "still friends"))).await;
    assert_eq!(ack_of(&frames).0.status, AckStatus::SUCCESS);
    // Other apps' relations do not count, and a forged sender is refused as such first.
    let mut other_app = login(&n.app, APP + 1, 10, 300);
    let frames = other_app.send(7, 0, Body::Im(im(10, 20, "x"))).await;
    assert_eq!(ack_of(&frames).0.status, AckStatus::NOT_MY_FRIEND);
    let frames = a.send(8, 0, Body::Im(im(11, 20, "forged"))).await;
    assert_eq!(ack_of(&frames).0.status, AckStatus::INVALID_SENDER);
}

#[tokio::test]
async fn blacklist_refuses_only_the_blocked_direction() {
    let n = node_full(
        ServerConfig::default(),
        SyncConfig::default(),
        with_checks(false, true),
    )
    .await;
    let mut a = login(&n.app, APP, 10, 100);
    let mut b = login(&n.app, APP, 20, 200);
    // No friendship needed; nobody blocked yet.
    let frames = a.send(1, 0, Body::Im(im(10, 20, "hi"))).await;
    assert_eq!(ack_of(&frames).0.status, AckStatus::SUCCESS);
    // 20 blocks 10 (the pair is cached now: the change updates it in place).
    n.app
        .relations
        .set(RelationKind::Blacklist, APP, 20, 10, true)
        .await
        .unwrap();
    let before = refused(&n.app);
    let frames = a.send(2, 0, Body::Im(im(10, 20, "hi again"))).await;
    assert_refused(&n.app, &frames, 2, AckStatus::IN_YOUR_BLACKLIST, before);
    // The blocker may still write to the one they blocked.
    let frames = b.send(3, 0, Body::Im(im(20, 10, "go away"))).await;
    assert_eq!(ack_of(&frames).0.status, AckStatus::SUCCESS);
    // Unblocked: delivered again.
    n.app
        .relations
        .set(RelationKind::Blacklist, APP, 20, 10, false)
        .await
        .unwrap();
    let frames = a.send(4, 0, Body::Im(im(10, 20, "sorry"))).await;
    assert_eq!(ack_of(&frames).0.status, AckStatus::SUCCESS);
}

#[tokio::test]
async fn friendship_then_blacklist_and_unchecked_kinds() {
    let n = node_full(
        ServerConfig {
            kefu_appid: KEFU,
            ..ServerConfig::default()
        },
        SyncConfig::default(),
        with_checks(true, true),
    )
    .await;
    let mut a = login(&n.app, APP, 10, 100);
    let b = login(&n.app, APP, 20, 200);
    befriend(&n.app, 10, 20, true).await;
    n.app
        .relations
        .set(RelationKind::Blacklist, APP, 20, 10, true)
        .await
        .unwrap();
    let frames = a.send(1, 0, Body::Im(im(10, 20, "hi"))).await;
    assert_eq!(ack_of(&frames).0.status, AckStatus::IN_YOUR_BLACKLIST);
    // Unfriended and blocked: the friendship check answers first.
    befriend(&n.app, 10, 20, false).await;
    let frames = a.send(2, 0, Body::Im(im(10, 20, "hi"))).await;
    assert_eq!(ack_of(&frames).0.status, AckStatus::NOT_MY_FRIEND);
    // RT is not subject to the checks.
    let rt = Body::Rt(Rt {
        sender: 10,
        receiver: 20,
        content: Bytes::from_static(b"typing"),
    });
    assert!(a.send(3, 0, rt).await.is_empty());
    assert_eq!(b.pushed().len(), 1, "RT delivered");
    // Server-side posts are not either.
    peer::post_peer(&n.app, APP, 10, 20, Bytes::from_static(b"from the server"))
        .await
        .expect("post");
}

#[tokio::test]
async fn refusals_are_not_acked_before_version_2() {
    let n = node().await;
    let mut a = login(&n.app, APP, 10, 100);
    a.out.set_version(1);
    let before = refused(&n.app);
    let frames = a.send(1, 0, Body::Im(im(11, 20, "spoofed"))).await;
    assert!(frames.is_empty(), "an old ACK would read as success");
    assert_eq!(refused(&n.app), before + 1);
}

#[tokio::test]
async fn a_failed_append_is_refused_as_storage_failed() {
    let n = node().await;
    let mut a = login(&n.app, APP, 10, 100);
    let b = login(&n.app, APP, 20, 200);
    let frame = Frame {
        seq: 9,
        cmd: cmd::IM,
        version: 2,
        flag: 0,
        body: Body::Im(im(10, 20, "lost")).to_stored(),
    };
    let Ok(Step::Append(append)) = dispatch(&mut a.conn, &mut a.out, frame) else {
        panic!("an IM makes an append");
    };
    let failure = crate::app::StoreFailure::Local(store::StoreError::InvalidArgument(
        "the disk is on fire".into(),
    ));
    let (refused_before, errors_before) = (refused(&n.app), Stats::get(&n.app.stats.store_errors));
    complete(&a.conn, &mut a.out, *append.then, Err(failure));
    let frames = a.out.take_frames();
    assert_refused(
        &n.app,
        &frames,
        9,
        AckStatus::STORAGE_FAILED,
        refused_before,
    );
    assert_eq!(Stats::get(&n.app.stats.store_errors), errors_before + 1);
    assert!(b.pushed().is_empty(), "nothing is delivered");
}

/// The one completion of stored messages refuses, for every family, an append the store answered
/// without the message's entries, and delivers nothing.
#[tokio::test]
async fn an_append_without_positions_is_refused_for_every_family() {
    let n = node().await;
    let gid = group(&n.app, false, &[10, 20]).await;
    let sgid = group(&n.app, true, &[10, 20]).await;
    let mut a = login(&n.app, APP, 10, 100);
    let b = login(&n.app, APP, 20, 200);
    let mut k = login(&n.app, KEFU, 10, 101);
    let cases = [
        (false, Body::Im(im(10, 20, "where did it go"))),
        (false, group_im(10, gid)),
        (false, group_im(10, sgid)),
        (true, customer(KEFU, 10, APP, 20)),
    ];
    for (i, (kefu, body)) in cases.into_iter().enumerate() {
        let client = if kefu { &mut k } else { &mut a };
        let seq = 20 + i as i32;
        let frame = Frame {
            seq,
            cmd: body.cmd(),
            version: 2,
            flag: 0,
            body: body.to_stored(),
        };
        let step = match dispatch(&mut client.conn, &mut client.out, frame) {
            Ok(Step::Append(append)) => Some(append),
            Ok(Step::Wait(handler)) => handler.await,
            _ => None,
        };
        let append = step.expect("a stored message makes an append");
        let before = refused(&n.app);
        complete(&client.conn, &mut client.out, *append.then, Ok(Vec::new()));
        let frames = client.out.take_frames();
        assert_refused(&n.app, &frames, seq, AckStatus::STORAGE_FAILED, before);
    }
    assert!(b.pushed().is_empty(), "nothing is delivered");
    assert_eq!(Stats::get(&n.app.stats.messages_stored), 0);
}

#[tokio::test]
async fn rt_is_delivered_unstored_and_spoofed_rt_dropped() {
    let n = node().await;
    let mut a = login(&n.app, APP, 10, 100);
    let b = login(&n.app, APP, 20, 200);
    let rt = |sender| {
        Body::Rt(Rt {
            sender,
            receiver: 20,
            content: Bytes::from_static(b"typing"),
        })
    };
    assert!(a.send(1, 0, rt(10)).await.is_empty(), "RT has no ACK");
    let pushed = b.pushed();
    assert_eq!(pushed.len(), 1);
    assert_eq!((pushed[0].cmd, pushed[0].flag), (cmd::RT, 0));
    let before = refused(&n.app);
    assert!(a.send(2, 0, rt(11)).await.is_empty());
    assert_eq!(refused(&n.app), before + 1);
    assert!(b.pushed().is_empty());
}

#[tokio::test]
async fn commands_wait_for_authentication() {
    let n = node().await;
    let mut c = login(&n.app, APP, 10, 100);
    c.conn.handle = None;
    // IM is ignored; PING answered.
    assert!(c.send(1, 0, Body::Im(im(10, 20, "early"))).await.is_empty());
    let frames = c.send(2, 0, Body::Ping).await;
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].cmd, cmd::PONG);
    // A server-to-client command is a protocol error.
    let frame = Frame {
        seq: 3,
        cmd: cmd::SYNC_NOTIFY,
        version: 2,
        flag: 0,
        body: Body::SyncNotify(1).to_stored(),
    };
    assert!(dispatch(&mut c.conn, &mut c.out, frame).is_err());
}

#[tokio::test]
async fn authentication_with_a_token_registers_the_session() {
    let n = node().await;
    let token = n.app.backend.grant(APP, 42, "forty-two").await.unwrap();
    let mut conn = Conn::new(n.app.clone(), 999_999);
    let mut out = Reply::default();
    let auth = |token: &str| Frame {
        seq: 1,
        cmd: cmd::AUTH_TOKEN,
        version: 2,
        flag: 0,
        body: Body::AuthToken(proto::AuthToken {
            platform_id: proto::Platform::WEB,
            token: Bytes::copy_from_slice(token.as_bytes()),
            device_id: Bytes::new(),
        })
        .to_stored(),
    };
    for (t, status) in [("not-a-token", 1), (token.as_str(), 0)] {
        match dispatch(&mut conn, &mut out, auth(t)).unwrap() {
            Step::Wait(f) => assert!(f.await.is_none()),
            _ => panic!("AUTH_TOKEN is awaited"),
        }
        let frames = out.take_frames();
        assert_eq!(frames.len(), 1);
        assert_eq!(
            Body::decode(frames[0].cmd, 2, &frames[0].body).unwrap(),
            Body::AuthStatus(status)
        );
    }
    assert_eq!(out.version(), 2);
    let h = conn.handle.as_ref().expect("logged in");
    assert_eq!((h.appid, h.uid), (APP, 42));
    assert!(n.app.route.is_online(APP, 42));
}

async fn group(app: &App, super_group: bool, members: &[i64]) -> i64 {
    app.groups
        .create(APP, None, "g", 0, super_group, members)
        .await
        .expect("group")
}

fn group_im(sender: i64, gid: i64) -> Body {
    Body::GroupIm(im(sender, gid, "to all"))
}

#[tokio::test]
async fn a_normal_group_message_reaches_every_member_queue() {
    let n = node().await;
    let gid = group(&n.app, false, &[10, 20, 30]).await;
    let mut a = login(&n.app, APP, 10, 100);
    let b = login(&n.app, APP, 20, 200);
    let mut c = login(&n.app, APP, 30, 300);
    let frames = a.send(1, 0, group_im(10, gid)).await;
    assert_eq!(frames.len(), 2);
    let (ack, ack_flag) = ack_of(&frames);
    assert_eq!((ack.seq, ack.status, ack_flag), (1, AckStatus::SUCCESS, 0));
    for member in [&b, &c] {
        let pushed = member.pushed();
        assert_eq!(pushed.len(), 2);
        assert_eq!((pushed[0].cmd, pushed[0].flag), (cmd::GROUP_IM, flag::PUSH));
        assert!(pushed[0].meta.is_some());
        assert_eq!(pushed[1].cmd, cmd::SYNC_NOTIFY);
    }
    // The message is in the member's own queue: SYNC returns it.
    let frames = c.send(2, 0, Body::Sync(0)).await;
    let cmds: Vec<u8> = frames.iter().map(|f| f.cmd).collect();
    assert_eq!(cmds, [cmd::SYNC_BEGIN, cmd::GROUP_IM, cmd::SYNC_END]);
}

#[tokio::test]
async fn group_refusals() {
    let n = node().await;
    let gid = group(&n.app, false, &[10, 20]).await;
    n.app.groups.set_mute(APP, gid, 20, true).await.unwrap();
    let mut outsider = login(&n.app, APP, 99, 990);
    let mut muted = login(&n.app, APP, 20, 200);
    let mut a = login(&n.app, APP, 10, 100);
    let before = refused(&n.app);
    let frames = outsider.send(1, 0, group_im(99, gid)).await;
    assert_refused(&n.app, &frames, 1, AckStatus::NOT_GROUP_MEMBER, before);
    let frames = muted.send(2, 0, group_im(20, gid)).await;
    assert_refused(&n.app, &frames, 2, AckStatus::GROUP_MUTED, before + 1);
    let frames = a.send(3, 0, group_im(10, gid + 1000)).await;
    assert_refused(&n.app, &frames, 3, AckStatus::GROUP_NONEXIST, before + 2);
    let frames = a.send(4, 0, group_im(10, 0)).await;
    assert_refused(&n.app, &frames, 4, AckStatus::GROUP_NONEXIST, before + 3);
    let frames = a.send(5, 0, group_im(20, gid)).await;
    assert_refused(&n.app, &frames, 5, AckStatus::INVALID_SENDER, before + 4);
    a.handle.forbidden.store(true, Ordering::Relaxed);
    let frames = a.send(6, 0, group_im(10, gid)).await;
    assert_refused(&n.app, &frames, 6, AckStatus::FORBIDDEN, before + 5);
    assert_eq!(Stats::get(&n.app.stats.messages_stored), 0);
}

#[tokio::test]
async fn a_super_group_message_goes_to_the_group_queue() {
    let n = node().await;
    let gid = group(&n.app, true, &[10, 20]).await;
    let mut a = login(&n.app, APP, 10, 100);
    let mut b = login(&n.app, APP, 20, 200);
    let frames = a.send(1, flag::TEXT, group_im(10, gid)).await;
    let (ack, ack_flag) = ack_of(&frames);
    assert_eq!(
        (ack.status, ack_flag),
        (AckStatus::SUCCESS, flag::SUPER_GROUP)
    );
    let pushed = b.pushed();
    assert_eq!(pushed.len(), 2);
    assert_eq!(
        (pushed[0].cmd, pushed[0].flag),
        (cmd::GROUP_IM, flag::TEXT | flag::PUSH | flag::SUPER_GROUP)
    );
    let key = pushed[0].meta.expect("METADATA").sync_key;
    assert_eq!(pushed[1].cmd, cmd::SYNC_GROUP_NOTIFY);
    // Not in the member's own queue; SYNC_GROUP returns it.
    let frames = b.send(2, 0, Body::Sync(0)).await;
    assert_eq!(frames.len(), 2, "SYNC_BEGIN + SYNC_END only");
    let req = GroupSyncKey {
        group_id: gid,
        sync_key: 0,
    };
    let frames = b.send(3, 0, Body::SyncGroup(req)).await;
    let cmds: Vec<u8> = frames.iter().map(|f| f.cmd).collect();
    assert_eq!(
        cmds,
        [cmd::SYNC_GROUP_BEGIN, cmd::GROUP_IM, cmd::SYNC_GROUP_END]
    );
    assert_eq!(
        Body::decode(cmd::SYNC_GROUP_END, 2, &frames[2].body).unwrap(),
        Body::SyncGroupEnd(GroupSyncKey {
            group_id: gid,
            sync_key: key
        })
    );
    // A non-member's SYNC_GROUP is answered empty.
    let mut outsider = login(&n.app, APP, 99, 990);
    let frames = outsider.send(4, 0, Body::SyncGroup(req)).await;
    let cmds: Vec<u8> = frames.iter().map(|f| f.cmd).collect();
    assert_eq!(cmds, [cmd::SYNC_GROUP_BEGIN, cmd::SYNC_GROUP_END]);
}

#[tokio::test]
async fn room_messages_reach_the_room_only() {
    let n = node().await;
    let mut a = login(&n.app, APP, 10, 100);
    let mut b = login(&n.app, APP, 20, 200);
    let c = login(&n.app, APP, 30, 300);
    let room_im = |sender| {
        Body::RoomIm(Rt {
            sender,
            receiver: 5,
            content: Bytes::from_static(b"hello room"),
        })
    };
    let before = refused(&n.app);
    let frames = a.send(1, 0, room_im(10)).await;
    assert_refused(&n.app, &frames, 1, AckStatus::NOT_ALLOWED, before);
    assert!(a.send(2, 0, Body::EnterRoom(5)).await.is_empty());
    assert!(b.send(2, 0, Body::EnterRoom(5)).await.is_empty());
    let frames = a.send(3, 0, room_im(10)).await;
    assert_eq!(ack_of(&frames).0.status, AckStatus::SUCCESS);
    let pushed = b.pushed();
    assert_eq!(pushed.len(), 1);
    assert_eq!((pushed[0].cmd, pushed[0].flag), (cmd::ROOM_IM, 0));
    assert!(c.pushed().is_empty(), "not in the room");
    let frames = a.send(4, 0, room_im(20)).await;
    assert_refused(&n.app, &frames, 4, AckStatus::INVALID_SENDER, before + 1);
    a.handle.forbidden.store(true, Ordering::Relaxed);
    let frames = a.send(5, 0, room_im(10)).await;
    assert_refused(&n.app, &frames, 5, AckStatus::FORBIDDEN, before + 2);
    // After leaving, b no longer gets the room's messages.
    assert!(b.send(6, 0, Body::LeaveRoom(5)).await.is_empty());
    a.handle.forbidden.store(false, Ordering::Relaxed);
    a.send(7, 0, room_im(10)).await;
    assert!(b.pushed().is_empty());
}

fn customer(sender_appid: i64, sender: i64, receiver_appid: i64, receiver: i64) -> Body {
    Body::Customer(Customer {
        sender_appid,
        sender,
        receiver_appid,
        receiver,
        timestamp: 0,
        content: Bytes::from_static(b"help"),
    })
}

#[tokio::test]
async fn customer_messages_cross_apps_through_the_service_app() {
    let n = node().await;
    let mut user = login(&n.app, APP, 10, 100);
    let staff = login(&n.app, KEFU, 1, 500);
    let frames = user.send(1, 0, customer(APP, 10, KEFU, 1)).await;
    assert_eq!(frames.len(), 2);
    assert_eq!(ack_of(&frames).0.status, AckStatus::SUCCESS);
    let pushed = staff.pushed();
    assert_eq!(pushed.len(), 2);
    assert_eq!(
        (pushed[0].cmd, pushed[0].flag),
        (cmd::CUSTOMER_V2, flag::PUSH)
    );
    let before = refused(&n.app);
    let frames = user.send(2, 0, customer(APP, 10, 2, 1)).await;
    assert_refused(&n.app, &frames, 2, AckStatus::NOT_ALLOWED, before);
    let frames = user.send(3, 0, customer(2, 10, KEFU, 1)).await;
    assert_refused(&n.app, &frames, 3, AckStatus::INVALID_SENDER, before + 1);
    let frames = user.send(4, 0, customer(APP, 10, KEFU, 0)).await;
    assert_refused(&n.app, &frames, 4, AckStatus::INVALID_RECEIVER, before + 2);
}

#[tokio::test]
async fn sync_pages_mark_self_and_continue_until_caught_up() {
    let n = node_with(
        ServerConfig::default(),
        SyncConfig {
            batch_messages: 2,
            ..SyncConfig::default()
        },
    )
    .await;
    let mut a = login(&n.app, APP, 10, 100);
    let mut other_device = login(&n.app, APP, 10, 101);
    let sent: Vec<Im> = (0..3).map(|_| im(10, 20, "m")).collect();
    for (i, m) in sent.iter().enumerate() {
        a.send(i as i32, 0, Body::Im(m.clone())).await;
    }
    // The sending device sees its own messages with SELF; the page is full, so SYNC_NOTIFY follows.
    let frames = a.send(10, 0, Body::Sync(0)).await;
    let cmds: Vec<u8> = frames.iter().map(|f| f.cmd).collect();
    assert_eq!(
        cmds,
        [
            cmd::SYNC_BEGIN,
            cmd::IM,
            cmd::IM,
            cmd::SYNC_END,
            cmd::SYNC_NOTIFY
        ]
    );
    assert!(frames[1..3].iter().all(|f| f.flag == flag::SELF));
    let Body::SyncEnd(end) = Body::decode(cmd::SYNC_END, 2, &frames[3].body).unwrap() else {
        unreachable!()
    };
    // The rest, after the page's end key: one message, no SYNC_NOTIFY.
    let frames = a.send(11, 0, Body::Sync(end)).await;
    let cmds: Vec<u8> = frames.iter().map(|f| f.cmd).collect();
    assert_eq!(cmds, [cmd::SYNC_BEGIN, cmd::IM, cmd::SYNC_END]);
    // Another device of the same user: no SELF. A version-0 session gets IMs without timestamps.
    other_device.out.set_version(0);
    let frames = other_device.send(12, 0, Body::Sync(0)).await;
    assert_eq!(frames[1].flag, 0);
    assert_eq!(frames[1].version, 0);
    assert_eq!(frames[1].body.len(), 20 + 1);
    match Body::decode(cmd::IM, 0, &frames[1].body).unwrap() {
        Body::Im(m) => assert_eq!((m.sender, m.receiver, m.msgid), (10, 20, sent[0].msgid)),
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn an_unanswerable_sync_is_owed_not_answered_empty() {
    let n = node().await;
    let mut a = login(&n.app, APP, 10, 100);
    let err = std::io::Error::other("shard down");
    sync::owe_sync(&mut a.conn, sync::Owed::Peer(0), &err);
    assert!(a.conn.owed.is_some());
    assert!(!sync::owed_due(&a.conn), "retried after a back-off");
    // Answering it (the store works again) clears the debt.
    sync::answer_owed_syncs(&mut a.conn, &mut a.out).await;
    let frames = a.out.take_frames();
    let cmds: Vec<u8> = frames.iter().map(|f| f.cmd).collect();
    assert_eq!(cmds, [cmd::SYNC_BEGIN, cmd::SYNC_END]);
    assert!(a.conn.owed.is_none());
    assert_eq!(Stats::get(&n.app.stats.syncs_deferred), 1);
}
