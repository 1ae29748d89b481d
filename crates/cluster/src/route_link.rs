//! The access side of the route link (docs/internal-protocols.md, *route link*): connections to
//! router nodes (`banter imr` or GoBelieve's `imr`), the reference counting that decides what to
//! subscribe, and the sharding of users, rooms and groups over the configured router addresses.
//!
//! * [`RouteLink`] is one connection to one router address. Every method is a plain `fn` that never
//!   blocks: frames go onto a bounded outbound queue drained by the link's task; when the queue is
//!   full a publish or push is dropped and counted (GoBelieve's im froze instead:
//!   docs/compatibility.md, *Cluster*), except that a dropped persistent message becomes a
//!   coalesced sync notification for its receiver ([`NotifyBacklog`], sent ahead of the queue as
//!   soon as the link can write), so overload costs the receiver a sync but never leaves it unaware
//!   of a stored message. The link keeps the subscription state it has announced (`(appid, uid) →
//!   online`, rooms); on every (re)connect it first replays that whole state, then sends what is
//!   queued, and hands the replayed users to [`RouteHandler::on_resubscribed`] (publishes other
//!   nodes made for them before the router had the state were dropped there; the access node tells
//!   them to sync). Subscription changes made while disconnected only update the state (the replay
//!   carries them). Should a subscription change find the queue full while connected, the link
//!   reconnects and replays instead of losing it. Reconnects back off from 200 ms, doubling to
//!   30 s, reset once a connection has held. Writes have a deadline; TCP keepalive is on.
//! * [`Presence`] counts, per `(appid, uid)`, the sessions (by connection id) and the online ones,
//!   and per `(appid, room)` the sessions in the room. Sessions enter and leave by connection id, so
//!   a session can never be counted twice or removed by someone else (docs/compatibility.md, *Other
//!   defects*: room counts).
//! * [`RouteLinks`] is what an access node holds: the links for `route_addrs` and
//!   `group_route_addrs`, one [`Presence`], and the routing: a user is subscribed
//!   on its own channel `route_addrs[|uid| mod N]` and on every group channel; a room on
//!   `route_addrs[|room| mod N]`; a super-group publish goes to `group_route_addrs[|gid| mod M]`.
//!   `|id|` is `unsigned_abs`, so `i64::MIN` does not overflow (docs/compatibility.md, *Other
//!   defects*: sharding). Links are shared by address. [`RouteLinks::set_addrs`] applies a new
//!   address list without a restart.
//!
//! **Remote presence.** On every connection a link first sends WATCH_PRESENCE (unless
//! [`RouteLinkConfig::watch_presence`] is off); a banter router then keeps the link's
//! [`RemoteView`] of which users and rooms other connections subscribe. A publish nobody else can
//! receive is then not sent at all (counted as skipped), and a stored message skipped that way is
//! owed a sync notification should its receiver show up elsewhere after all (module
//! `remote_presence`). With a router that does not answer (GoBelieve's imr) every publish is sent,
//! as before. KICK and PUSH are never skipped.
//!
//! Incoming PUBLISH / PUBLISH_GROUP / PUBLISH_ROOM are handed to a [`RouteHandler`], called on the
//! link's task: it must not block (hand the message to bounded session outboxes, or to a bounded
//! channel: [`RouteHandler`] is implemented for `tokio::sync::mpsc::Sender<RoutedMessage>`).
//! Other commands from the router are logged and ignored. A malformed frame closes the link with
//! a log line (and it reconnects); nothing a router sends can panic the node
//! (docs/compatibility.md, *Cluster*).
//!
//! Lock order: the [`RouteLinks`] topology, then a [`Presence`] shard, then a link's state. A
//! subscription change is queued on the link while the presence shard is held, so changes for
//! one user reach the router in the order they happened.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use node::backoff::Backoff;
use node::frame::{frame_reader, FrameError};
use parking_lot::{Mutex, RwLock};
use smallvec::SmallVec;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::notify_backlog::{Noted, NotifyBacklog, OWED_CHUNK};
use crate::remote_presence::RemoteView;
use crate::route_proto::{
    cmd, legacy_publishes, now_ns, pair_body, publish_stored_body, push_bodies, route_message_body,
    shard_index, subscribe_body, sync_notify_frame, write_frame, RouteBody, RouteKind,
    RoutedMessage, DEFAULT_MAX_BODY,
};

/// Settings of the route links of one access node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteLinkConfig {
    /// Frames waiting per link (publishes, pushes, subscription changes). Publishes and pushes
    /// beyond it are dropped and counted.
    pub queue_frames: usize,
    /// Receivers that can be owed a sync notification for persistent messages dropped on a full
    /// queue ([`NotifyBacklog`]); beyond it such drops are lost (counted, warned).
    pub notify_backlog: usize,
    /// Largest frame body accepted from the router, and sent to it (bigger outgoing frames are
    /// dropped and counted). GoBelieve's imr accepts 32767; banter's router 1 MiB by default.
    pub max_body: usize,
    /// Longest one write may take before the connection is considered dead and redialled.
    pub write_timeout: Duration,
    /// Longest a dial may take.
    pub connect_timeout: Duration,
    /// TCP keepalive idle time and probe interval.
    pub keepalive: Duration,
    /// First wait after a failed dial (plus jitter); doubles up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest wait between dials.
    pub backoff_max: Duration,
    /// Ask the router for remote presence (WATCH_PRESENCE) and skip publishes nobody else can
    /// receive. Harmless with a router that ignores it.
    pub watch_presence: bool,
}

impl Default for RouteLinkConfig {
    fn default() -> Self {
        RouteLinkConfig {
            queue_frames: 65_536,
            notify_backlog: 262_144,
            max_body: DEFAULT_MAX_BODY,
            write_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            keepalive: Duration::from_secs(60),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            watch_presence: true,
        }
    }
}

/// Receives the route messages a router forwards to this node. Called on the link's task, once per
/// message, in arrival order; it must not block or await.
pub trait RouteHandler: Send + Sync + 'static {
    /// A PUBLISH (`kind` User), PUBLISH_GROUP (Group) or PUBLISH_ROOM (Room) from the router.
    fn on_publish(&self, msg: RoutedMessage);

    /// A connection to a router came up and the link has written its whole subscription state,
    /// `users` (`(appid, uid)`). Until the router had that state, publishes for these users from
    /// other nodes were dropped by the router (it had no subscriber for them), so a handler that can
    /// should tell their sessions to sync. Called on the link's task: it must not block. The default
    /// does nothing (a handler that has no store to ask for the users' keys).
    fn on_resubscribed(&self, users: Vec<(i64, i64)>) {
        let _ = users;
    }

    /// A PUBLISH_STORED from the router: a stored message for a user (`msg.msgid` > 0), whose
    /// sessions are also owed its SYNC_NOTIFY, which no other frame brings. The default hands
    /// both to [`RouteHandler::on_publish`], the message first.
    fn on_stored(&self, msg: RoutedMessage) {
        let notify = msg.sync_notify();
        self.on_publish(msg);
        self.on_publish(notify);
    }
}

/// Hands each message to a bounded channel with `try_send`; a full or closed channel drops it
/// (logged at debug).
impl RouteHandler for mpsc::Sender<RoutedMessage> {
    fn on_publish(&self, msg: RoutedMessage) {
        if let Err(e) = self.try_send(msg) {
            tracing::debug!(error = %e, "routed message dropped by the handler channel");
        }
    }
}

/// A snapshot of one link's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkStats {
    /// The router address.
    pub addr: String,
    /// Whether a connection is up.
    pub connected: bool,
    /// Frames waiting to be written.
    pub queued: usize,
    /// Users this link has subscribed (what a reconnect replays).
    pub users: usize,
    /// Rooms this link has subscribed.
    pub rooms: usize,
    /// Frames written.
    pub sent: u64,
    /// Publishes received from the router.
    pub received: u64,
    /// Publishes and pushes dropped: queue full, or too large to send.
    pub dropped: u64,
    /// Persistent messages dropped on a full queue whose receivers were owed a sync notification
    /// instead (not counted in `dropped`).
    pub coalesced: u64,
    /// Receivers currently owed a sync notification.
    pub owed: usize,
    /// Connections established.
    pub connects: u64,
    /// Reconnects forced because a subscription change found the queue full.
    pub resyncs: u64,
    /// Malformed frames received (each closed the connection).
    pub malformed: u64,
    /// Whether the router's remote presence is known on the current connection.
    pub presence_known: bool,
    /// Whether the router of the current connection takes PUBLISH_STORED.
    pub stored_publish: bool,
    /// Users another connection of the router subscribes (as far as known).
    pub remote_users: usize,
    /// Publishes not sent because no other connection could receive them.
    pub skipped: u64,
    /// Sync notifications sent for skipped messages whose receivers showed up elsewhere.
    pub skip_notified: u64,
    /// Skipped messages that could not be remembered (memory full): their receivers, should they
    /// show up elsewhere within the window, learn of them only at their next sync.
    pub skip_unnoted: u64,
}

/// One queued frame.
struct Out {
    cmd: u8,
    body: Bytes,
    /// A subscription change: dropped from the queue at reconnect (the replay covers it).
    sub: bool,
}

struct LinkState {
    connected: bool,
    /// Set when a subscription change could not be queued: reconnect and replay.
    resync: bool,
    queue: VecDeque<Out>,
    users: HashMap<(i64, i64), bool>,
    rooms: HashSet<(i64, i64)>,
    /// Sync notifications owed for persistent messages dropped on a full queue.
    owed: NotifyBacklog,
    /// The router's other connections, as far as known.
    remote: RemoteView,
    /// The router of the current connection answered STORED_PUBLISH: stored messages for users go
    /// to it as one PUBLISH_STORED each.
    stored: bool,
}

impl LinkState {
    fn new(config: &RouteLinkConfig) -> LinkState {
        LinkState {
            connected: false,
            resync: false,
            queue: VecDeque::new(),
            users: HashMap::new(),
            rooms: HashSet::new(),
            owed: NotifyBacklog::new(config.notify_backlog),
            remote: RemoteView::new(config.notify_backlog),
            stored: false,
        }
    }
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    received: AtomicU64,
    dropped: AtomicU64,
    coalesced: AtomicU64,
    connects: AtomicU64,
    resyncs: AtomicU64,
    malformed: AtomicU64,
    skipped: AtomicU64,
    skip_notified: AtomicU64,
    skip_unnoted: AtomicU64,
}

struct Shared {
    addr: String,
    config: RouteLinkConfig,
    state: Mutex<LinkState>,
    wake: Notify,
    handler: Arc<dyn RouteHandler>,
    counters: Counters,
    cancel: CancellationToken,
}

impl Shared {
    /// Queue a subscription change (state already updated by the caller, lock held).
    fn queue_sub(&self, st: &mut LinkState, c: u8, body: Bytes) {
        if !st.connected || st.resync {
            return; // the replay at the next connection carries it
        }
        if st.queue.len() >= self.config.queue_frames {
            st.resync = true;
            self.counters.resyncs.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(addr = %self.addr, "route link queue full on a subscription change; reconnecting to replay the state");
        } else {
            st.queue.push_back(Out {
                cmd: c,
                body,
                sub: true,
            });
        }
        self.wake.notify_one();
    }

    /// Queue a publish or push; false (and counted) when it cannot be. `routed` describes a route
    /// message (kind, appid, receiver, msgid, inner frame): when the queue is full, its receiver is
    /// owed a sync notification instead, and that counts as queued.
    fn queue_data(&self, c: u8, body: Bytes, routed: Option<RoutedParts<'_>>) -> bool {
        if body.len() > self.config.max_body {
            self.drop_one("frame larger than max_body");
            return false;
        }
        let mut st = self.state.lock();
        if st.queue.len() >= self.config.queue_frames {
            let noted = routed.map(|(kind, appid, receiver, msgid, inner)| {
                st.owed.note_parts(kind, appid, receiver, msgid, inner)
            });
            drop(st);
            return match noted {
                Some(Noted::Owed) => {
                    let n = self.counters.coalesced.fetch_add(1, Ordering::Relaxed) + 1;
                    if n == 1 || n.checked_rem(10_000) == Some(0) {
                        tracing::warn!(addr = %self.addr, coalesced_total = n, "route link queue full; receivers of dropped messages will be sent a sync notification");
                    }
                    self.wake.notify_one();
                    true
                }
                Some(Noted::Full) => {
                    self.drop_one("queue and notification backlog full");
                    false
                }
                Some(Noted::NotNeeded) | None => {
                    self.drop_one("queue full");
                    false
                }
            };
        }
        if c == cmd::PUBLISH_STORED && !st.stored {
            // The connection this was meant for has gone since the caller looked: the next router
            // may not take it.
            st.queue.extend(legacy_frames(&body));
        } else {
            st.queue.push_back(Out {
                cmd: c,
                body,
                sub: false,
            });
        }
        drop(st);
        self.wake.notify_one();
        true
    }

    fn drop_one(&self, why: &'static str) {
        let n = self.counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if n == 1 || n.checked_rem(1000) == Some(0) {
            tracing::warn!(addr = %self.addr, dropped_total = n, why, "route frame dropped");
        }
    }
}

/// A route message's kind, appid, receiver, msgid and inner frame.
type RoutedParts<'a> = (RouteKind, i64, i64, i64, &'a [u8]);

/// One connection to one router address (see the module docs). Dropping it closes the link.
pub struct RouteLink {
    shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl RouteLink {
    /// Starts the link's task (dialling `addr`, `host:port`). Must be called inside a tokio runtime.
    pub fn new(addr: String, config: RouteLinkConfig, handler: Arc<dyn RouteHandler>) -> RouteLink {
        let state = LinkState::new(&config);
        let shared = Arc::new(Shared {
            addr,
            config,
            state: Mutex::new(state),
            wake: Notify::new(),
            handler,
            counters: Counters::default(),
            cancel: CancellationToken::new(),
        });
        let task = tokio::spawn(run_link(shared.clone()));
        RouteLink {
            shared,
            task: Mutex::new(Some(task)),
        }
    }

    /// The router address.
    pub fn addr(&self) -> &str {
        &self.shared.addr
    }

    /// Announce `(appid, uid)` with its online flag (SUBSCRIBE; overwrites the previous flag).
    /// Nothing is sent when the link already announced exactly this.
    pub fn subscribe(&self, appid: i64, uid: i64, online: bool) {
        let mut st = self.shared.state.lock();
        if st.users.insert((appid, uid), online) == Some(online) {
            return;
        }
        self.shared
            .queue_sub(&mut st, cmd::SUBSCRIBE, subscribe_body(appid, uid, online));
    }

    /// Withdraw `(appid, uid)` (UNSUBSCRIBE), if announced.
    pub fn unsubscribe(&self, appid: i64, uid: i64) {
        let mut st = self.shared.state.lock();
        if st.users.remove(&(appid, uid)).is_none() {
            return;
        }
        self.shared
            .queue_sub(&mut st, cmd::UNSUBSCRIBE, pair_body(appid, uid));
    }

    /// Announce a room (SUBSCRIBE_ROOM), if not yet announced.
    pub fn subscribe_room(&self, appid: i64, room: i64) {
        let mut st = self.shared.state.lock();
        if !st.rooms.insert((appid, room)) {
            return;
        }
        self.shared
            .queue_sub(&mut st, cmd::SUBSCRIBE_ROOM, pair_body(appid, room));
    }

    /// Withdraw a room (UNSUBSCRIBE_ROOM), if announced.
    pub fn unsubscribe_room(&self, appid: i64, room: i64) {
        let mut st = self.shared.state.lock();
        if !st.rooms.remove(&(appid, room)) {
            return;
        }
        self.shared
            .queue_sub(&mut st, cmd::UNSUBSCRIBE_ROOM, pair_body(appid, room));
    }

    /// Whether the route message can reach another node; if not, it is counted as skipped and
    /// remembered (see the module docs).
    fn wanted(&self, kind: RouteKind, appid: i64, receiver: i64, msgid: i64, inner: &[u8]) -> bool {
        self.wanted_by(kind, appid, receiver, msgid, inner)
            .is_some()
    }

    /// Whether another connection of the router may receive the message (`Some`, with whether
    /// that router takes PUBLISH_STORED), or not (`None`: the skip is counted and remembered).
    fn wanted_by(
        &self,
        kind: RouteKind,
        appid: i64,
        receiver: i64,
        msgid: i64,
        inner: &[u8],
    ) -> Option<bool> {
        let mut st = self.shared.state.lock();
        if st.remote.wants(kind, appid, receiver) {
            return Some(st.stored);
        }
        let noted = st
            .remote
            .note_skipped((kind, appid, receiver, msgid), inner, Instant::now());
        drop(st);
        let c = &self.shared.counters;
        c.skipped.fetch_add(1, Ordering::Relaxed);
        if !noted {
            let n = c.skip_unnoted.fetch_add(1, Ordering::Relaxed) + 1;
            if n == 1 || n.checked_rem(10_000) == Some(0) {
                tracing::warn!(addr = %self.shared.addr, unnoted_total = n, "too many skipped publishes to remember; a receiver showing up elsewhere meanwhile learns of them at its next sync");
            }
        }
        None
    }

    fn route_message(
        &self,
        kind: RouteKind,
        appid: i64,
        receiver: i64,
        msgid: i64,
        prev: i64,
        inner: &[u8],
    ) -> bool {
        if !self.wanted(kind, appid, receiver, msgid, inner) {
            return true;
        }
        self.send_route_message(kind, appid, receiver, msgid, prev, inner)
    }

    fn send_route_message(
        &self,
        kind: RouteKind,
        appid: i64,
        receiver: i64,
        msgid: i64,
        prev: i64,
        inner: &[u8],
    ) -> bool {
        let ts = if kind == RouteKind::Room { 0 } else { now_ns() };
        match route_message_body(appid, receiver, msgid, prev, ts, inner) {
            Ok(body) => self.shared.queue_data(
                kind.cmd(),
                body,
                Some((kind, appid, receiver, msgid, inner)),
            ),
            Err(_) => {
                self.shared.drop_one("inner frame too large");
                false
            }
        }
    }

    /// PUBLISH a message for user `uid`: `inner` is the complete frame (header and body) the
    /// receiving node hands its sessions, `msgid`/`prev` its METADATA keys (0 = none). Returns
    /// whether it was queued or skipped because no other node has the user (false: dropped and
    /// counted).
    pub fn publish(&self, appid: i64, uid: i64, msgid: i64, prev: i64, inner: &[u8]) -> bool {
        self.route_message(RouteKind::User, appid, uid, msgid, prev, inner)
    }

    /// Publishes a stored message for user `uid` (`keys`: its METADATA sync key, > 0, and
    /// previous key) together with everything that goes with it: the SYNC_NOTIFY its receiver's
    /// sessions on other nodes need, and, with `push`, the request for an offline-push job should
    /// no node have the user online. With a router that takes PUBLISH_STORED that is one frame;
    /// otherwise the PUBLISH pair and a PUSH. When no other node has the user only the PUSH is
    /// sent. Returns whether everything was queued (or skipped); false: something was dropped
    /// and counted.
    pub fn publish_stored(
        &self,
        appid: i64,
        uid: i64,
        keys: (i64, i64),
        inner: &[u8],
        push: bool,
    ) -> bool {
        let (msgid, prev) = keys;
        let pushed = |link: &RouteLink| !push || link.push(appid, &[uid], inner);
        match self.wanted_by(RouteKind::User, appid, uid, msgid, inner) {
            None => pushed(self),
            Some(true) => match publish_stored_body(appid, uid, keys, now_ns(), inner, push) {
                Ok(body) => self.shared.queue_data(
                    cmd::PUBLISH_STORED,
                    body,
                    Some((RouteKind::User, appid, uid, msgid, inner)),
                ),
                Err(_) => {
                    self.shared.drop_one("inner frame too large");
                    false
                }
            },
            Some(false) => {
                let notify = sync_notify_frame(msgid);
                let message =
                    self.send_route_message(RouteKind::User, appid, uid, msgid, prev, inner);
                let notified = self.send_route_message(RouteKind::User, appid, uid, 0, 0, &notify);
                message & notified & pushed(self)
            }
        }
    }

    /// [`RouteLink::publish`] without the remote-presence check (e.g. a KICK, which must reach a
    /// session that is just logging in elsewhere).
    pub fn publish_always(
        &self,
        appid: i64,
        uid: i64,
        msgid: i64,
        prev: i64,
        inner: &[u8],
    ) -> bool {
        self.send_route_message(RouteKind::User, appid, uid, msgid, prev, inner)
    }

    /// Whether the router says another connection subscribes user `(appid, uid)`; `None` while
    /// not known (no answer to WATCH_PRESENCE yet on this connection, or none at all).
    pub fn remote_user(&self, appid: i64, uid: i64) -> Option<bool> {
        self.shared.state.lock().remote.user(appid, uid)
    }

    /// PUBLISH_GROUP a message for super group `gid` (forwarded to every other node).
    pub fn publish_group(&self, appid: i64, gid: i64, msgid: i64, prev: i64, inner: &[u8]) -> bool {
        self.route_message(RouteKind::Group, appid, gid, msgid, prev, inner)
    }

    /// PUBLISH_ROOM a message for `room` (no metadata, no timestamp).
    pub fn publish_room(&self, appid: i64, room: i64, inner: &[u8]) -> bool {
        self.route_message(RouteKind::Room, appid, room, 0, 0, inner)
    }

    /// PUSH: ask the router to create offline-push jobs for those of `receivers` that are offline.
    /// Split into bodies of at most 1000 receivers. Returns whether every chunk was queued.
    pub fn push(&self, appid: i64, receivers: &[i64], inner: &[u8]) -> bool {
        match push_bodies(appid, receivers, inner) {
            Ok(bodies) => {
                let mut all_queued = true;
                for b in bodies {
                    all_queued &= self.shared.queue_data(cmd::PUSH, b, None);
                }
                all_queued
            }
            Err(_) => {
                self.shared.drop_one("inner frame too large");
                false
            }
        }
    }

    /// Whether a connection is up.
    pub fn is_connected(&self) -> bool {
        self.shared.state.lock().connected
    }

    /// Counters and sizes.
    pub fn stats(&self) -> LinkStats {
        let (connected, queued, users, rooms, owed, presence_known, remote_users, stored_publish) = {
            let st = self.shared.state.lock();
            (
                st.connected,
                st.queue.len(),
                st.users.len(),
                st.rooms.len(),
                st.owed.len(),
                st.remote.is_known(),
                st.remote.remote_users(),
                st.stored,
            )
        };
        let c = &self.shared.counters;
        LinkStats {
            addr: self.shared.addr.clone(),
            connected,
            queued,
            users,
            rooms,
            sent: c.sent.load(Ordering::Relaxed),
            received: c.received.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            coalesced: c.coalesced.load(Ordering::Relaxed),
            owed,
            connects: c.connects.load(Ordering::Relaxed),
            resyncs: c.resyncs.load(Ordering::Relaxed),
            malformed: c.malformed.load(Ordering::Relaxed),
            presence_known,
            stored_publish,
            remote_users,
            skipped: c.skipped.load(Ordering::Relaxed),
            skip_notified: c.skip_notified.load(Ordering::Relaxed),
            skip_unnoted: c.skip_unnoted.load(Ordering::Relaxed),
        }
    }

    /// Stop the link: what is queued is still written (within the write deadline), then the
    /// connection closes. Does not wait; see [`RouteLink::closed`].
    pub fn close(&self) {
        self.shared.cancel.cancel();
    }

    /// Close and wait until the link's task has ended.
    pub async fn closed(&self) {
        self.close();
        let task = self.task.lock().take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl Drop for RouteLink {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

/// Sleep unless cancelled; false when cancelled.
async fn pause(cancel: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// A connection that held at least this long resets the backoff.
const HELD: Duration = Duration::from_secs(1);

async fn run_link(shared: Arc<Shared>) {
    let cfg = shared.config.clone();
    let mut backoff = Backoff::new(cfg.backoff_min, cfg.backoff_max);
    let mut failures: u64 = 0;
    loop {
        if shared.cancel.is_cancelled() {
            break;
        }
        let dial = tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(&shared.addr));
        let stream = tokio::select! {
            _ = shared.cancel.cancelled() => break,
            r = dial => r,
        };
        let delay = match stream {
            Ok(Ok(stream)) => {
                failures = 0;
                node::net::set_socket_options(&stream, Some(cfg.keepalive));
                shared.counters.connects.fetch_add(1, Ordering::Relaxed);
                tracing::info!(addr = %shared.addr, "route link connected");
                let started = Instant::now();
                let why = serve(&shared, stream).await;
                {
                    let mut st = shared.state.lock();
                    st.connected = false;
                    st.resync = false;
                    st.remote.reset();
                    st.stored = false;
                }
                if shared.cancel.is_cancelled() {
                    tracing::debug!(addr = %shared.addr, why, "route link closed");
                    break;
                }
                tracing::warn!(addr = %shared.addr, why, "route link lost; redialling");
                if started.elapsed() >= HELD {
                    backoff.reset();
                    continue; // redial at once
                }
                backoff.next_delay()
            }
            Ok(Err(e)) => {
                failures += 1;
                let delay = backoff.next_delay();
                log_dial_failure(&shared.addr, failures, &e.to_string(), delay);
                delay
            }
            Err(_) => {
                failures += 1;
                let delay = backoff.next_delay();
                log_dial_failure(&shared.addr, failures, "dial timed out", delay);
                delay
            }
        };
        if !pause(&shared.cancel, delay).await {
            break;
        }
    }
    shared.state.lock().connected = false;
}

fn log_dial_failure(addr: &str, failures: u64, error: &str, backoff: Duration) {
    if failures == 1 || failures.checked_rem(20) == Some(0) {
        tracing::warn!(addr, failures, error, retry_in = ?backoff, "cannot reach router");
    } else {
        tracing::debug!(addr, failures, error, retry_in = ?backoff, "cannot reach router");
    }
}

/// Run one established connection until it fails, the router closes it, a resync is needed, or the
/// link is closed (after a final flush). Returns why it ended.
async fn serve(shared: &Arc<Shared>, stream: TcpStream) -> &'static str {
    let (rd, wr) = stream.into_split();
    let (users, rooms) = {
        let mut st = shared.state.lock();
        st.connected = true;
        st.resync = false;
        st.remote.reset();
        st.stored = false;
        st.queue.retain(|o| !o.sub);
        // Stored publishes queued for the last connection's router: the new one may not take them.
        if st.queue.iter().any(|o| o.cmd == cmd::PUBLISH_STORED) {
            let queue = std::mem::take(&mut st.queue);
            for o in queue {
                if o.cmd == cmd::PUBLISH_STORED {
                    st.queue.extend(legacy_frames(&o.body));
                } else {
                    st.queue.push_back(o);
                }
            }
        }
        let users: Vec<((i64, i64), bool)> = st.users.iter().map(|(k, v)| (*k, *v)).collect();
        let rooms: Vec<(i64, i64)> = st.rooms.iter().copied().collect();
        (users, rooms)
    };
    tokio::select! {
        why = read_loop(shared, rd) => why,
        why = write_loop(shared, wr, users, rooms) => why,
    }
}

async fn read_loop(shared: &Shared, rd: OwnedReadHalf) -> &'static str {
    let mut frames = frame_reader(rd, shared.config.max_body);
    loop {
        let frame = match frames.next().await {
            None => return "closed by the router",
            Some(Ok(frame)) => frame,
            Some(Err(FrameError::Io(e))) => {
                tracing::debug!(addr = %shared.addr, error = %e, "route link read failed");
                return "read error";
            }
            Some(Err(e)) => {
                shared.counters.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(addr = %shared.addr, error = %e, "malformed frame from router; closing the link");
                return "malformed frame";
            }
        };
        let presence = shared.config.watch_presence
            && matches!(
                frame.cmd,
                cmd::REMOTE_PRESENCE | cmd::PEERS | cmd::STORED_PUBLISH | cmd::PUBLISH_STORED
            );
        if RouteKind::from_cmd(frame.cmd).is_none() && !presence {
            tracing::debug!(addr = %shared.addr, cmd = frame.cmd, "ignoring command from router");
            continue;
        }
        match RouteBody::decode(frame.cmd, &frame.body) {
            Ok(RouteBody::Publish(m)) => {
                shared.counters.received.fetch_add(1, Ordering::Relaxed);
                shared.handler.on_publish(m);
            }
            Ok(RouteBody::PublishStored { message, .. }) => {
                shared.counters.received.fetch_add(1, Ordering::Relaxed);
                shared.handler.on_stored(message);
            }
            Ok(RouteBody::StoredPublish) => {
                tracing::debug!(addr = %shared.addr, "router takes stored publishes");
                shared.state.lock().stored = true;
            }
            Ok(RouteBody::RemotePresence(p)) => {
                let owed = shared.state.lock().remote.apply(&p);
                queue_owed(shared, owed);
            }
            Ok(RouteBody::Peers { count }) => {
                let (was_known, owed) = {
                    let mut st = shared.state.lock();
                    (st.remote.is_known(), st.remote.set_peers(count))
                };
                if !was_known {
                    tracing::debug!(addr = %shared.addr, peers = count, "remote presence known");
                }
                queue_owed(shared, owed);
            }
            Ok(_) => {}
            Err(e) => {
                shared.counters.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(addr = %shared.addr, error = %e, "malformed route message from router; closing the link");
                return "malformed route message";
            }
        }
    }
}

/// Queues the sync notifications owed for skipped messages whose receivers showed up elsewhere
/// (ahead of nothing: in order with the publishes made since).
fn queue_owed(shared: &Shared, owed: Vec<(u8, Bytes)>) {
    if owed.is_empty() {
        return;
    }
    let n = owed.len() as u64;
    {
        let mut st = shared.state.lock();
        for (c, body) in owed {
            st.queue.push_back(Out {
                cmd: c,
                body,
                sub: false,
            });
        }
    }
    shared
        .counters
        .skip_notified
        .fetch_add(n, Ordering::Relaxed);
    tracing::debug!(addr = %shared.addr, notifications = n, "skipped messages' receivers showed up elsewhere; told them to sync");
    shared.wake.notify_one();
}

/// The frames a queued PUBLISH_STORED becomes for a router that may not take it: the message's
/// PUBLISH, its SYNC_NOTIFY's PUBLISH and, if it asked for one, the PUSH.
fn legacy_frames(body: &Bytes) -> Vec<Out> {
    let Some(legacy) = legacy_publishes(body) else {
        return Vec::new();
    };
    let push = legacy
        .push
        .and_then(|p| RouteBody::Push(p).encode().ok())
        .map(|body| (cmd::PUSH, body));
    legacy
        .frames
        .into_iter()
        .chain(push)
        .map(|(c, body)| Out {
            cmd: c,
            body,
            sub: false,
        })
        .collect()
}

/// Bytes collected before a write call.
const WRITE_CHUNK: usize = 64 * 1024;

struct Writer {
    wr: OwnedWriteHalf,
    buf: BytesMut,
    seq: i32,
    frames: u64,
    timeout: Duration,
}

impl Writer {
    fn frame(&mut self, c: u8, body: &[u8]) {
        self.seq = self.seq.wrapping_add(1);
        write_frame(&mut self.buf, self.seq, c, body);
        self.frames += 1;
    }

    async fn flush(&mut self, shared: &Shared) -> Result<(), &'static str> {
        if self.buf.is_empty() {
            return Ok(());
        }
        match tokio::time::timeout(self.timeout, self.wr.write_all(&self.buf)).await {
            Ok(Ok(())) => {
                self.buf.clear();
                shared
                    .counters
                    .sent
                    .fetch_add(std::mem::take(&mut self.frames), Ordering::Relaxed);
                Ok(())
            }
            Ok(Err(e)) => {
                tracing::debug!(addr = %shared.addr, error = %e, "route link write failed");
                Err("write error")
            }
            Err(_) => Err("write deadline passed"),
        }
    }
}

async fn write_loop(
    shared: &Shared,
    wr: OwnedWriteHalf,
    users: Vec<((i64, i64), bool)>,
    rooms: Vec<(i64, i64)>,
) -> &'static str {
    let mut w = Writer {
        wr,
        buf: BytesMut::with_capacity(WRITE_CHUNK),
        seq: 0,
        frames: 0,
        timeout: shared.config.write_timeout,
    };
    // Ask for remote presence first, so the snapshot reflects the replay that follows.
    if shared.config.watch_presence {
        w.frame(cmd::WATCH_PRESENCE, &[]);
        w.frame(cmd::STORED_PUBLISH, &[]);
    }
    // The replay: the whole state first.
    let replayed: Vec<(i64, i64)> = users.iter().map(|(k, _)| *k).collect();
    for ((appid, uid), online) in users {
        w.frame(cmd::SUBSCRIBE, &subscribe_body(appid, uid, online));
        if w.buf.len() >= WRITE_CHUNK {
            if let Err(why) = w.flush(shared).await {
                return why;
            }
        }
    }
    for (appid, room) in rooms {
        w.frame(cmd::SUBSCRIBE_ROOM, &pair_body(appid, room));
        if w.buf.len() >= WRITE_CHUNK {
            if let Err(why) = w.flush(shared).await {
                return why;
            }
        }
    }
    if let Err(why) = w.flush(shared).await {
        return why;
    }
    if !replayed.is_empty() {
        shared.handler.on_resubscribed(replayed);
    }
    let mut batch: Vec<Out> = Vec::new();
    loop {
        {
            let mut st = shared.state.lock();
            if st.resync {
                return "resync after a full queue";
            }
            let mut bytes = 0;
            // Owed notifications first: they are few and small, and must not wait behind a queue
            // that stays full under overload.
            while bytes < OWED_CHUNK {
                let Some((c, body)) = st.owed.pop() else {
                    break;
                };
                bytes += body.len() + 12;
                batch.push(Out {
                    cmd: c,
                    body,
                    sub: false,
                });
            }
            while let Some(out) = st.queue.pop_front() {
                bytes += out.body.len() + 12;
                batch.push(out);
                if bytes >= WRITE_CHUNK {
                    break;
                }
            }
        }
        for out in batch.drain(..) {
            w.frame(out.cmd, &out.body);
        }
        if let Err(why) = w.flush(shared).await {
            return why;
        }
        let idle = {
            let st = shared.state.lock();
            st.queue.is_empty() && st.owed.is_empty()
        };
        if idle {
            if shared.cancel.is_cancelled() {
                let _ = w.wr.shutdown().await;
                return "closed";
            }
            tokio::select! {
                _ = shared.wake.notified() => {}
                _ = shared.cancel.cancelled() => {}
            }
            // Let the other tasks this worker has ready run first: sessions woken by the same
            // readiness event publish too, and their frames leave in this one write.
            tokio::task::yield_now().await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Presence: reference counting (docs/internal-protocols.md, *route link*)

/// A change of what the router must know about a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserChange {
    /// Send SUBSCRIBE with this online flag (first session, or the online flag changed).
    Subscribe {
        /// Whether at least one session is online.
        online: bool,
    },
    /// Send UNSUBSCRIBE (last session gone).
    Unsubscribe,
}

/// A change of what the router must know about a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomChange {
    /// First session entered: SUBSCRIBE_ROOM.
    Subscribe,
    /// Last session left: UNSUBSCRIBE_ROOM.
    Unsubscribe,
}

const SHARDS: usize = 64;

/// A user's sessions: `(connection id, online)`. Nearly every user has one session, kept inline in the
/// map entry: a `Vec` would be a 64-byte allocation per logged-in user (docs/benchmarks.md,
/// Connections).
type UserSessions = SmallVec<[(u64, bool); 1]>;
type UserShard = Mutex<HashMap<(i64, i64), UserSessions>>;
type RoomShard = Mutex<HashMap<(i64, i64), Vec<u64>>>;

/// Sessions per user and per room, by connection id (see the module docs). Sharded; cheap to call
/// from session tasks.
pub struct Presence {
    hasher: RandomState,
    users: Box<[UserShard]>,
    rooms: Box<[RoomShard]>,
}

impl Default for Presence {
    fn default() -> Self {
        Presence::new()
    }
}

fn counts(conns: &[(u64, bool)]) -> (usize, usize) {
    (conns.len(), conns.iter().filter(|(_, o)| *o).count())
}

fn user_change(before: (usize, usize), after: (usize, usize)) -> Option<UserChange> {
    match (before.0 > 0, after.0 > 0) {
        (false, true) => Some(UserChange::Subscribe {
            online: after.1 > 0,
        }),
        (true, false) => Some(UserChange::Unsubscribe),
        (true, true) if (before.1 > 0) != (after.1 > 0) => Some(UserChange::Subscribe {
            online: after.1 > 0,
        }),
        _ => None,
    }
}

impl Presence {
    /// Empty.
    pub fn new() -> Presence {
        Presence {
            hasher: RandomState::new(),
            users: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            rooms: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, key: (i64, i64)) -> usize {
        (self.hasher.hash_one(key) as usize) % SHARDS
    }

    fn update_user(
        &self,
        appid: i64,
        uid: i64,
        f: impl FnOnce(&mut UserSessions),
        emit: impl FnOnce(UserChange),
    ) -> Option<UserChange> {
        let key = (appid, uid);
        let mut shard = self.users[self.shard(key)].lock();
        let entry = shard.entry(key).or_default();
        let before = counts(entry);
        f(entry);
        let after = counts(entry);
        if entry.is_empty() {
            shard.remove(&key);
        }
        let change = user_change(before, after);
        if let Some(c) = change {
            emit(c);
        }
        change
    }

    fn update_room(
        &self,
        appid: i64,
        room: i64,
        f: impl FnOnce(&mut Vec<u64>),
        emit: impl FnOnce(RoomChange),
    ) -> Option<RoomChange> {
        let key = (appid, room);
        let mut shard = self.rooms[self.shard(key)].lock();
        let entry = shard.entry(key).or_default();
        let before = entry.len();
        f(entry);
        let after = entry.len();
        if after == 0 {
            shard.remove(&key);
        }
        let change = match (before > 0, after > 0) {
            (false, true) => Some(RoomChange::Subscribe),
            (true, false) => Some(RoomChange::Unsubscribe),
            _ => None,
        };
        if let Some(c) = change {
            emit(c);
        }
        change
    }

    /// Session `conn` of `(appid, uid)` logged in (`online`: counts as online for offline push,
    /// docs/protocol.md §9.9). Logging the same `conn` in again only updates its online flag.
    pub fn login(&self, conn: u64, appid: i64, uid: i64, online: bool) -> Option<UserChange> {
        self.login_with(conn, appid, uid, online, |_| {})
    }

    fn login_with(
        &self,
        conn: u64,
        appid: i64,
        uid: i64,
        online: bool,
        emit: impl FnOnce(UserChange),
    ) -> Option<UserChange> {
        self.update_user(
            appid,
            uid,
            |e| match e.iter_mut().find(|(c, _)| *c == conn) {
                Some(slot) => slot.1 = online,
                None => e.push((conn, online)),
            },
            emit,
        )
    }

    /// Session `conn` of `(appid, uid)` closed. Unknown connections change nothing.
    pub fn logout(&self, conn: u64, appid: i64, uid: i64) -> Option<UserChange> {
        self.logout_with(conn, appid, uid, |_| {})
    }

    fn logout_with(
        &self,
        conn: u64,
        appid: i64,
        uid: i64,
        emit: impl FnOnce(UserChange),
    ) -> Option<UserChange> {
        self.update_user(appid, uid, |e| e.retain(|(c, _)| *c != conn), emit)
    }

    /// Session `conn` entered `(appid, room)`. Entering twice counts once.
    pub fn enter_room(&self, conn: u64, appid: i64, room: i64) -> Option<RoomChange> {
        self.enter_room_with(conn, appid, room, |_| {})
    }

    fn enter_room_with(
        &self,
        conn: u64,
        appid: i64,
        room: i64,
        emit: impl FnOnce(RoomChange),
    ) -> Option<RoomChange> {
        self.update_room(
            appid,
            room,
            |e| {
                if !e.contains(&conn) {
                    e.push(conn)
                }
            },
            emit,
        )
    }

    /// Session `conn` left `(appid, room)` (or closed). A connection that is not in the room changes
    /// nothing, so a displaced session can never take a newer one's count with it
    /// (docs/compatibility.md, *Other defects*: room counts).
    pub fn leave_room(&self, conn: u64, appid: i64, room: i64) -> Option<RoomChange> {
        self.leave_room_with(conn, appid, room, |_| {})
    }

    fn leave_room_with(
        &self,
        conn: u64,
        appid: i64,
        room: i64,
        emit: impl FnOnce(RoomChange),
    ) -> Option<RoomChange> {
        self.update_room(appid, room, |e| e.retain(|c| *c != conn), emit)
    }

    /// `(sessions, online sessions)` of a user.
    pub fn user(&self, appid: i64, uid: i64) -> (usize, usize) {
        let key = (appid, uid);
        self.users[self.shard(key)]
            .lock()
            .get(&key)
            .map_or((0, 0), |e| counts(e))
    }

    /// Sessions in a room.
    pub fn room(&self, appid: i64, room: i64) -> usize {
        let key = (appid, room);
        self.rooms[self.shard(key)]
            .lock()
            .get(&key)
            .map_or(0, Vec::len)
    }

    /// `(users, rooms)` with at least one session.
    pub fn len(&self) -> (usize, usize) {
        (
            self.users.iter().map(|s| s.lock().len()).sum(),
            self.rooms.iter().map(|s| s.lock().len()).sum(),
        )
    }

    /// Whether nobody is present.
    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0)
    }

    /// Calls `f(appid, uid, online)` for every present user, one shard locked at a time.
    fn for_each_user(&self, mut f: impl FnMut(i64, i64, bool)) {
        for shard in self.users.iter() {
            let shard = shard.lock();
            for (&(appid, uid), conns) in shard.iter() {
                f(appid, uid, counts(conns).1 > 0);
            }
        }
    }

    /// Calls `f(appid, room)` for every room with a session, one shard locked at a time.
    fn for_each_room(&self, mut f: impl FnMut(i64, i64)) {
        for shard in self.rooms.iter() {
            let shard = shard.lock();
            for &(appid, room) in shard.keys() {
                f(appid, room);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// RouteLinks: the access node's set of links

struct Topology {
    route_addrs: Vec<String>,
    group_addrs: Vec<String>,
    /// By position in `route_addrs`.
    route: Vec<Arc<RouteLink>>,
    /// By position in `group_addrs` (or `route_addrs` when that is empty).
    group: Vec<Arc<RouteLink>>,
    /// `group` without repeats.
    group_distinct: Vec<Arc<RouteLink>>,
    /// Every link, without repeats.
    all: Vec<Arc<RouteLink>>,
    /// Rendezvous hashing (routers discovered through etcd) instead of `mod N`: the
    /// address hashes of `route` and `group`.
    rendezvous: Option<(Vec<u64>, Vec<u64>)>,
}

fn contains(list: &[&Arc<RouteLink>], l: &Arc<RouteLink>) -> bool {
    list.iter().any(|x| Arc::ptr_eq(x, l))
}

fn push_distinct(list: &mut Vec<Arc<RouteLink>>, l: &Arc<RouteLink>) {
    if !list.iter().any(|x| Arc::ptr_eq(x, l)) {
        list.push(l.clone());
    }
}

impl Topology {
    fn build(
        route_addrs: Vec<String>,
        group_addrs: Vec<String>,
        rendezvous: bool,
        mut link: impl FnMut(&str) -> Arc<RouteLink>,
    ) -> Topology {
        let mut all: Vec<Arc<RouteLink>> = Vec::new();
        let mut get = |addr: &str, all: &mut Vec<Arc<RouteLink>>| {
            if let Some(l) = all.iter().find(|l| l.addr() == addr) {
                return l.clone();
            }
            let l = link(addr);
            all.push(l.clone());
            l
        };
        let route: Vec<Arc<RouteLink>> = route_addrs.iter().map(|a| get(a, &mut all)).collect();
        let group: Vec<Arc<RouteLink>> = if group_addrs.is_empty() {
            route.clone()
        } else {
            group_addrs.iter().map(|a| get(a, &mut all)).collect()
        };
        let mut group_distinct = Vec::new();
        for l in &group {
            push_distinct(&mut group_distinct, l);
        }
        let hashes = rendezvous.then(|| {
            let h = |v: &[Arc<RouteLink>]| -> Vec<u64> {
                v.iter()
                    .map(|l| crate::route_proto::addr_hash(l.addr()))
                    .collect()
            };
            (h(&route), h(&group))
        });
        Topology {
            route_addrs,
            group_addrs,
            route,
            group,
            rendezvous: hashes,
            group_distinct,
            all,
        }
    }

    fn user_link(&self, uid: i64) -> Option<&Arc<RouteLink>> {
        let i = match &self.rendezvous {
            Some((h, _)) => crate::route_proto::rendezvous_index(uid, h),
            None => shard_index(uid, self.route.len()),
        };
        self.route.get(i)
    }

    /// The user's channel plus every group channel.
    fn user_links(&self, uid: i64) -> Vec<&Arc<RouteLink>> {
        let mut out: Vec<&Arc<RouteLink>> = Vec::with_capacity(1 + self.group_distinct.len());
        if let Some(l) = self.user_link(uid) {
            out.push(l);
        }
        for l in &self.group_distinct {
            if !contains(&out, l) {
                out.push(l);
            }
        }
        out
    }

    fn room_link(&self, room: i64) -> Option<&Arc<RouteLink>> {
        let i = match &self.rendezvous {
            Some((h, _)) => crate::route_proto::rendezvous_index(room, h),
            None => shard_index(room, self.route.len()),
        };
        self.route.get(i)
    }

    fn group_link(&self, gid: i64) -> Option<&Arc<RouteLink>> {
        let i = match &self.rendezvous {
            Some((_, h)) => crate::route_proto::rendezvous_index(gid, h),
            None => shard_index(gid, self.group.len()),
        };
        self.group.get(i)
    }

    fn has(&self, l: &Arc<RouteLink>) -> bool {
        self.all.iter().any(|x| Arc::ptr_eq(x, l))
    }
}

fn apply_user(links: &[&Arc<RouteLink>], appid: i64, uid: i64, change: UserChange) {
    for l in links {
        match change {
            UserChange::Subscribe { online } => l.subscribe(appid, uid, online),
            UserChange::Unsubscribe => l.unsubscribe(appid, uid),
        }
    }
}

/// The route links of an access node (see the module docs). With no `route_addrs` every method is
/// a no-op (single-node mode).
pub struct RouteLinks {
    config: RouteLinkConfig,
    handler: Arc<dyn RouteHandler>,
    presence: Presence,
    topo: RwLock<Topology>,
}

impl RouteLinks {
    /// Dial every address. `group_route_addrs` empty means "same as `route_addrs`". Must be called
    /// inside a tokio runtime.
    pub fn new(
        route_addrs: Vec<String>,
        group_route_addrs: Vec<String>,
        config: RouteLinkConfig,
        handler: Arc<dyn RouteHandler>,
    ) -> RouteLinks {
        let topo = Topology::build(route_addrs, group_route_addrs, false, |addr| {
            Arc::new(RouteLink::new(
                addr.to_owned(),
                config.clone(),
                handler.clone(),
            ))
        });
        RouteLinks {
            config,
            handler,
            presence: Presence::new(),
            topo: RwLock::new(topo),
        }
    }

    /// The reference counts.
    pub fn presence(&self) -> &Presence {
        &self.presence
    }

    /// The configured `(route_addrs, group_route_addrs)`.
    pub fn addrs(&self) -> (Vec<String>, Vec<String>) {
        let t = self.topo.read();
        (t.route_addrs.clone(), t.group_addrs.clone())
    }

    /// Whether any router is configured.
    pub fn is_enabled(&self) -> bool {
        !self.topo.read().route.is_empty()
    }

    /// Session `conn` of `(appid, uid)` logged in; `online` as in docs/protocol.md §9.9.
    pub fn login(&self, conn: u64, appid: i64, uid: i64, online: bool) {
        let topo = self.topo.read();
        self.presence.login_with(conn, appid, uid, online, |c| {
            apply_user(&topo.user_links(uid), appid, uid, c)
        });
    }

    /// Session `conn` of `(appid, uid)` closed.
    pub fn logout(&self, conn: u64, appid: i64, uid: i64) {
        let topo = self.topo.read();
        self.presence.logout_with(conn, appid, uid, |c| {
            apply_user(&topo.user_links(uid), appid, uid, c)
        });
    }

    /// Session `conn` entered a room.
    pub fn enter_room(&self, conn: u64, appid: i64, room: i64) {
        let topo = self.topo.read();
        self.presence.enter_room_with(conn, appid, room, |_| {
            if let Some(l) = topo.room_link(room) {
                l.subscribe_room(appid, room);
            }
        });
    }

    /// Session `conn` left a room (call it for the room a closing session was in, too).
    pub fn leave_room(&self, conn: u64, appid: i64, room: i64) {
        let topo = self.topo.read();
        self.presence.leave_room_with(conn, appid, room, |_| {
            if let Some(l) = topo.room_link(room) {
                l.unsubscribe_room(appid, room);
            }
        });
    }

    /// PUBLISH to other nodes' sessions of `(appid, uid)` on the user's channel. False when dropped
    /// (queue full, too large) or no router is configured.
    pub fn publish(&self, appid: i64, uid: i64, msgid: i64, prev: i64, inner: &[u8]) -> bool {
        let link = self.topo.read().user_link(uid).cloned();
        link.is_some_and(|l| l.publish(appid, uid, msgid, prev, inner))
    }

    /// A stored message for user `(appid, uid)` on the user's channel, with its SYNC_NOTIFY and
    /// (with `push`) its offline-push request: [`RouteLink::publish_stored`]. False when something
    /// was dropped or no router is configured.
    pub fn publish_stored(
        &self,
        appid: i64,
        uid: i64,
        keys: (i64, i64),
        inner: &[u8],
        push: bool,
    ) -> bool {
        let link = self.topo.read().user_link(uid).cloned();
        link.is_some_and(|l| l.publish_stored(appid, uid, keys, inner, push))
    }

    /// PUBLISH on the user's channel whether or not another node has the user (KICK).
    pub fn publish_always(
        &self,
        appid: i64,
        uid: i64,
        msgid: i64,
        prev: i64,
        inner: &[u8],
    ) -> bool {
        let link = self.topo.read().user_link(uid).cloned();
        link.is_some_and(|l| l.publish_always(appid, uid, msgid, prev, inner))
    }

    /// Whether the user's router says another node has `(appid, uid)`; `None` while not known
    /// (or no router).
    pub fn remote_user(&self, appid: i64, uid: i64) -> Option<bool> {
        let link = self.topo.read().user_link(uid).cloned();
        link.and_then(|l| l.remote_user(appid, uid))
    }

    /// PUBLISH_GROUP on the group's channel (every other node receives it).
    pub fn publish_group(&self, appid: i64, gid: i64, msgid: i64, prev: i64, inner: &[u8]) -> bool {
        let link = self.topo.read().group_link(gid).cloned();
        link.is_some_and(|l| l.publish_group(appid, gid, msgid, prev, inner))
    }

    /// PUBLISH_ROOM on the room's channel.
    pub fn publish_room(&self, appid: i64, room: i64, inner: &[u8]) -> bool {
        let link = self.topo.read().room_link(room).cloned();
        link.is_some_and(|l| l.publish_room(appid, room, inner))
    }

    /// PUSH: each receiver on its own user channel (where its online flag is known), in chunks of
    /// at most 1000. False when some chunk was dropped or no router is configured.
    pub fn push(&self, appid: i64, receivers: &[i64], inner: &[u8]) -> bool {
        let mut by_link: Vec<(Arc<RouteLink>, Vec<i64>)> = Vec::new();
        {
            let topo = self.topo.read();
            for &r in receivers {
                let Some(l) = topo.user_link(r) else {
                    return false;
                };
                match by_link.iter_mut().find(|(x, _)| Arc::ptr_eq(x, l)) {
                    Some((_, list)) => list.push(r),
                    None => by_link.push((l.clone(), vec![r])),
                }
            }
        }
        by_link
            .into_iter()
            .fold(true, |ok, (l, list)| l.push(appid, &list, inner) && ok)
    }

    /// Apply a new address configuration without a restart: links to new addresses are dialled and
    /// replay their share of the state on connect, links to removed addresses are closed (after
    /// writing what they have queued), and kept links subscribe or unsubscribe users and rooms
    /// whose channel moved. Sessions' calls wait for the few milliseconds this takes. Users newly
    /// subscribed on a kept link are handed to [`RouteHandler::on_resubscribed`] (those on new
    /// links are, when the link has connected and replayed its state).
    pub fn set_addrs(&self, route_addrs: Vec<String>, group_route_addrs: Vec<String>) {
        self.set_topology(route_addrs, group_route_addrs, false);
    }

    /// [`RouteLinks::set_addrs`] for the live routers discovered through etcd: users and rooms
    /// are spread over them by rendezvous hashing, so a router that comes or goes moves only its
    /// own share of them (re-subscribed elsewhere, and owed a sync notification).
    pub fn set_live_routers(&self, route_addrs: Vec<String>) {
        self.set_topology(route_addrs, Vec::new(), true);
    }

    fn set_topology(
        &self,
        route_addrs: Vec<String>,
        group_route_addrs: Vec<String>,
        rendezvous: bool,
    ) {
        let mut topo = self.topo.write();
        if topo.route_addrs == route_addrs
            && topo.group_addrs == group_route_addrs
            && topo.rendezvous.is_some() == rendezvous
        {
            return;
        }
        let new = Topology::build(
            route_addrs,
            group_route_addrs,
            rendezvous,
            |addr| match topo.all.iter().find(|l| l.addr() == addr) {
                Some(l) => l.clone(),
                None => Arc::new(RouteLink::new(
                    addr.to_owned(),
                    self.config.clone(),
                    self.handler.clone(),
                )),
            },
        );
        let mut moved = Vec::new();
        self.presence.for_each_user(|appid, uid, online| {
            let old_links = topo.user_links(uid);
            let new_links = new.user_links(uid);
            let mut on_kept_link = false;
            for l in &new_links {
                if !contains(&old_links, l) {
                    l.subscribe(appid, uid, online);
                    on_kept_link |= topo.has(l);
                }
            }
            if on_kept_link {
                moved.push((appid, uid));
            }
            for l in &old_links {
                if !contains(&new_links, l) && new.has(l) {
                    l.unsubscribe(appid, uid);
                }
            }
        });
        self.presence.for_each_room(|appid, room| {
            let old = topo.room_link(room);
            let new_link = new.room_link(room);
            let same = match (old, new_link) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            if same {
                return;
            }
            if let Some(l) = new_link {
                l.subscribe_room(appid, room);
            }
            if let Some(l) = old {
                if new.has(l) {
                    l.unsubscribe_room(appid, room);
                }
            }
        });
        for l in &topo.all {
            if !new.has(l) {
                tracing::info!(
                    addr = l.addr(),
                    "router removed from the configuration; closing its link"
                );
                l.close();
            }
        }
        for l in &new.all {
            if !topo.has(l) {
                tracing::info!(addr = l.addr(), "router added to the configuration");
            }
        }
        *topo = new;
        drop(topo);
        if !moved.is_empty() {
            self.handler.on_resubscribed(moved);
        }
    }

    /// Counters of every link.
    pub fn stats(&self) -> Vec<LinkStats> {
        let links: Vec<Arc<RouteLink>> = self.topo.read().all.clone();
        links.iter().map(|l| l.stats()).collect()
    }

    /// Close every link (queued frames are still written within the write deadline) and wait.
    pub async fn shutdown(&self) {
        let links: Vec<Arc<RouteLink>> = self.topo.read().all.clone();
        for l in &links {
            l.close();
        }
        for l in &links {
            l.closed().await;
        }
    }
}

impl Drop for RouteLinks {
    fn drop(&mut self) {
        for l in &self.topo.read().all {
            l.close();
        }
    }
}
