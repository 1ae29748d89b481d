//! The routing state: the access-node connections and, for each, the users (with their online
//! flag) and rooms it subscribed (docs/internal-protocols.md, *route link*), plus each connection's
//! bounded outbox.
//!
//! The state is kept inverted: `(appid, uid) → [(connection, online)]` and
//! `(appid, room) → [connection]`, each a fixed number of `RwLock<HashMap>` shards, so a publish
//! takes one shard's read lock and finds its receivers without visiting every connection, and
//! different users never contend. The connection list is copy-on-write (`Arc<Vec<…>>`) for group
//! publishes. When a connection closes, its entries are removed shard by shard.
//!
//! **Remote presence** (docs/internal-protocols.md, *route link*). A connection that sent
//! WATCH_PRESENCE is a *watcher*: [`Table::watch`] sends it a snapshot — REMOTE_PRESENCE frames
//! for every user and room some *other* connection subscribes, then PEERS with the number of other
//! connections — and from then on every change that flips "some other connection subscribes it"
//! for that watcher is sent to it as a REMOTE_PRESENCE delta, and every change of the connection
//! count as PEERS. Deltas are queued while the shard lock of the user or room is held (PEERS while
//! the connection list's lock is held), so a watcher receives the changes of one user in the order
//! they happened, and the snapshot of a shard is never overtaken by an older delta. Presence frames
//! are never dropped: they bypass the outbox bounds, and a watcher whose outbox grows past twice
//! its bounds is disconnected (it reconnects and gets a fresh snapshot).
//!
//! **Stored publishes** (docs/internal-protocols.md, *stored publishes*). A connection that sent
//! STORED_PUBLISH gets PUBLISH_STORED frames as they are; [`Table::forward_stored`] gives every other
//! connection the PUBLISH pair such a frame stands for (the message, then its SYNC_NOTIFY).
//!
//! Forwarding never waits: [`Conn::send`] appends to the connection's outbox (a mutex-protected
//! `VecDeque` plus a `Notify`) or, when the outbox is over its frame or byte bound, drops the frame.
//! A dropped persistent message (or sync notification) leaves its receiver owed one coalesced sync
//! notification ([`NotifyBacklog`]), written ahead of the outbox once the node reads again; other
//! drops (rooms, transient messages, a full backlog) are counted and warned. A node that stops
//! reading is disconnected by its writer's deadline.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use cluster::notify_backlog::{Noted, NotifyBacklog, OWED_CHUNK};
use cluster::route_proto::{cmd, legacy_publishes, presence_body, PresenceKind, MAX_PRESENCE_IDS};
use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

const SHARDS: usize = 64;

struct Outbox {
    queue: VecDeque<(u8, Bytes)>,
    bytes: usize,
    /// Sync notifications owed for persistent messages dropped on a full outbox.
    owed: NotifyBacklog,
}

/// One access-node connection as the rest of the router sees it.
pub(crate) struct Conn {
    pub id: u64,
    pub peer: SocketAddr,
    outbox: Mutex<Outbox>,
    pub wake: Notify,
    max_frames: usize,
    max_bytes: usize,
    /// Cancelled to close the connection from outside.
    pub kill: CancellationToken,
    pub users: AtomicUsize,
    pub rooms: AtomicUsize,
    pub sent: AtomicU64,
    pub dropped: AtomicU64,
    pub received: AtomicU64,
    /// Sent WATCH_PRESENCE: gets remote presence.
    pub watching: AtomicBool,
    /// Sent STORED_PUBLISH: takes PUBLISH_STORED (others get what it stands for).
    pub stored: AtomicBool,
    metrics: Arc<Metrics>,
}

impl Conn {
    pub fn new(
        id: u64,
        peer: SocketAddr,
        (max_frames, max_bytes, max_owed): (usize, usize, usize),
        metrics: Arc<Metrics>,
    ) -> Conn {
        Conn {
            id,
            peer,
            outbox: Mutex::new(Outbox {
                queue: VecDeque::new(),
                bytes: 0,
                owed: NotifyBacklog::new(max_owed),
            }),
            wake: Notify::new(),
            max_frames,
            max_bytes,
            kill: CancellationToken::new(),
            users: AtomicUsize::new(0),
            rooms: AtomicUsize::new(0),
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            received: AtomicU64::new(0),
            watching: AtomicBool::new(false),
            stored: AtomicBool::new(false),
            metrics,
        }
    }

    /// Queue a presence frame (REMOTE_PRESENCE, PEERS): never dropped, never waits. Beyond twice
    /// the outbox bounds the node is hopelessly behind: the connection is closed instead (the node
    /// reconnects, replays and gets a fresh snapshot).
    pub fn send_presence(&self, cmd: u8, body: Bytes) {
        if self.send_unbounded(cmd, body) {
            self.metrics.presence_out.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queue a control frame outside the outbox bounds (see [`Conn::send_presence`]); false when
    /// the node is too far behind and is being disconnected instead.
    pub fn send_unbounded(&self, cmd: u8, body: Bytes) -> bool {
        let mut ob = self.outbox.lock();
        let cost = body.len() + proto::HEADER_LEN;
        if ob.queue.len() >= self.max_frames.saturating_mul(2)
            || ob.bytes + cost > self.max_bytes.saturating_mul(2)
        {
            drop(ob);
            if !self.kill.is_cancelled() {
                tracing::warn!(conn = self.id, peer = %self.peer, "access node too far behind to keep its remote presence; disconnecting it");
                self.kill.cancel();
            }
            return false;
        }
        ob.bytes += cost;
        ob.queue.push_back((cmd, body));
        drop(ob);
        self.wake.notify_one();
        true
    }

    fn is_watching(&self) -> bool {
        self.watching.load(Ordering::Acquire)
    }

    /// Queue a frame for this node; never waits. When the outbox is full the frame is dropped:
    /// true if its receiver is owed a sync notification instead, false (counted) if it is lost.
    pub fn send(&self, cmd: u8, body: Bytes) -> bool {
        let mut ob = self.outbox.lock();
        let cost = body.len() + proto::HEADER_LEN;
        if ob.queue.len() >= self.max_frames || ob.bytes + cost > self.max_bytes {
            let noted = ob.owed.note_frame(cmd, &body);
            drop(ob);
            if noted == Noted::Owed {
                let n = self.metrics.coalesced.fetch_add(1, Ordering::Relaxed) + 1;
                if n == 1 || n.checked_rem(10_000) == Some(0) {
                    tracing::warn!(conn = self.id, peer = %self.peer, coalesced_total = n, "access node outbox full; receivers of dropped messages will be sent a sync notification");
                }
                self.wake.notify_one();
                return true;
            }
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            self.metrics.dropped.fetch_add(1, Ordering::Relaxed);
            if n == 1 || n.checked_rem(1000) == Some(0) {
                let why = if noted == Noted::Full {
                    "access node outbox and notification backlog full; frame dropped"
                } else {
                    "access node outbox full; frame dropped"
                };
                tracing::warn!(conn = self.id, peer = %self.peer, dropped_total = n, "{why}");
            }
            return false;
        }
        ob.bytes += cost;
        ob.queue.push_back((cmd, body));
        drop(ob);
        self.metrics.publish_out.fetch_add(1, Ordering::Relaxed);
        self.wake.notify_one();
        true
    }

    /// Move owed notifications (first, up to a small budget) and up to about `max_bytes` of queued
    /// frames into `into`.
    pub fn drain(&self, into: &mut Vec<(u8, Bytes)>, max_bytes: usize) {
        let mut ob = self.outbox.lock();
        let mut taken = 0;
        while taken < OWED_CHUNK {
            let Some((c, body)) = ob.owed.pop() else {
                break;
            };
            taken += body.len() + proto::HEADER_LEN;
            into.push((c, body));
        }
        while let Some((c, body)) = ob.queue.pop_front() {
            let cost = body.len() + proto::HEADER_LEN;
            ob.bytes = ob.bytes.saturating_sub(cost);
            taken += cost;
            into.push((c, body));
            if taken >= max_bytes {
                break;
            }
        }
        if ob.queue.is_empty() && ob.queue.capacity() > 1024 {
            ob.queue = VecDeque::new();
        }
    }

    /// Frames waiting.
    pub fn queued(&self) -> usize {
        self.outbox.lock().queue.len()
    }
}

/// REMOTE_PRESENCE frames being collected for watchers, sent in chunks by [`Deltas::flush`] while
/// the shard lock they were computed under is still held.
#[derive(Default)]
struct Deltas {
    by: HashMap<DeltaKey, (Arc<Conn>, Vec<i64>)>,
}

/// A watcher's connection id, what, whether present, and the app.
type DeltaKey = (u64, PresenceKind, bool, i64);

impl Deltas {
    fn add(&mut self, to: &Arc<Conn>, kind: PresenceKind, present: bool, appid: i64, id: i64) {
        self.by
            .entry((to.id, kind, present, appid))
            .or_insert_with(|| (to.clone(), Vec::new()))
            .1
            .push(id);
    }

    fn flush(&mut self) {
        for ((_, kind, present, appid), (to, ids)) in self.by.drain() {
            for chunk in ids.chunks(MAX_PRESENCE_IDS) {
                to.send_presence(
                    cmd::REMOTE_PRESENCE,
                    presence_body(kind, present, appid, chunk),
                );
            }
        }
    }
}

/// For every watcher but those in neither list: whether "a connection other than the watcher
/// subscribes it" differs between `before` and `after` (connection ids); if so, a delta.
fn presence_change(
    watchers: &[Arc<Conn>],
    (kind, appid, id): (PresenceKind, i64, i64),
    before: &[u64],
    after: &[u64],
    deltas: &mut Deltas,
) {
    if before.len() >= 2 && after.len() >= 2 {
        return; // another connection remains for everyone
    }
    for w in watchers {
        let was = before.iter().any(|c| *c != w.id);
        let is = after.iter().any(|c| *c != w.id);
        if was != is {
            deltas.add(w, kind, is, appid, id);
        }
    }
}

type UserShard = RwLock<HashMap<(i64, i64), Vec<(Arc<Conn>, bool)>>>;
type RoomShard = RwLock<HashMap<(i64, i64), Vec<Arc<Conn>>>>;

/// Who subscribed what, and the live connections.
pub(crate) struct Table {
    hasher: RandomState,
    users: Box<[UserShard]>,
    rooms: Box<[RoomShard]>,
    conns: RwLock<Arc<Vec<Arc<Conn>>>>,
}

impl Table {
    pub fn new() -> Table {
        Table {
            hasher: RandomState::new(),
            users: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            rooms: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            conns: RwLock::new(Arc::new(Vec::new())),
        }
    }

    fn shard(&self, key: (i64, i64)) -> usize {
        (self.hasher.hash_one(key) as usize) % SHARDS
    }

    pub fn add_conn(&self, c: Arc<Conn>) {
        let mut conns = self.conns.write();
        let mut list: Vec<Arc<Conn>> = conns.as_ref().clone();
        list.push(c);
        send_peers(&list);
        *conns = Arc::new(list);
    }

    /// The connections that watch remote presence.
    fn watchers(&self) -> Vec<Arc<Conn>> {
        self.conns
            .read()
            .iter()
            .filter(|c| c.is_watching())
            .cloned()
            .collect()
    }

    /// Remove a connection and everything it subscribed (telling watchers what others lost).
    pub fn remove_conn(&self, c: &Conn) {
        {
            let mut conns = self.conns.write();
            let list: Vec<Arc<Conn>> = conns.iter().filter(|x| x.id != c.id).cloned().collect();
            send_peers(&list);
            *conns = Arc::new(list);
        }
        let watchers = self.watchers();
        let mut deltas = Deltas::default();
        if c.users.load(Ordering::Relaxed) > 0 {
            for shard in self.users.iter() {
                let mut shard = shard.write();
                shard.retain(|&(appid, uid), v| {
                    if v.iter().any(|(x, _)| x.id == c.id) {
                        let before: Vec<u64> = v.iter().map(|(x, _)| x.id).collect();
                        v.retain(|(x, _)| x.id != c.id);
                        let after: Vec<u64> = v.iter().map(|(x, _)| x.id).collect();
                        let what = (PresenceKind::User, appid, uid);
                        presence_change(&watchers, what, &before, &after, &mut deltas);
                    }
                    !v.is_empty()
                });
                deltas.flush();
            }
        }
        if c.rooms.load(Ordering::Relaxed) > 0 {
            for shard in self.rooms.iter() {
                let mut shard = shard.write();
                shard.retain(|&(appid, room), v| {
                    if v.iter().any(|x| x.id == c.id) {
                        let before: Vec<u64> = v.iter().map(|x| x.id).collect();
                        v.retain(|x| x.id != c.id);
                        let after: Vec<u64> = v.iter().map(|x| x.id).collect();
                        let what = (PresenceKind::Room, appid, room);
                        presence_change(&watchers, what, &before, &after, &mut deltas);
                    }
                    !v.is_empty()
                });
                deltas.flush();
            }
        }
        c.users.store(0, Ordering::Relaxed);
        c.rooms.store(0, Ordering::Relaxed);
    }

    /// WATCH_PRESENCE from `c`: from now on `c` gets deltas; first the snapshot of every user and
    /// room another connection subscribes, then PEERS (see the module docs).
    pub fn watch(&self, c: &Arc<Conn>) {
        if c.watching.swap(true, Ordering::AcqRel) {
            return; // asked twice: the first snapshot and the deltas since stand
        }
        let mut deltas = Deltas::default();
        for shard in self.users.iter() {
            let shard = shard.read();
            for (&(appid, uid), v) in shard.iter() {
                if v.iter().any(|(x, _)| x.id != c.id) {
                    deltas.add(c, PresenceKind::User, true, appid, uid);
                }
            }
            deltas.flush();
        }
        for shard in self.rooms.iter() {
            let shard = shard.read();
            for (&(appid, room), v) in shard.iter() {
                if v.iter().any(|x| x.id != c.id) {
                    deltas.add(c, PresenceKind::Room, true, appid, room);
                }
            }
            deltas.flush();
        }
        let conns = self.conns.read();
        let others = conns.iter().filter(|x| x.id != c.id).count();
        c.send_presence(cmd::PEERS, peers_body(others));
    }

    pub fn conns(&self) -> Arc<Vec<Arc<Conn>>> {
        self.conns.read().clone()
    }

    /// SUBSCRIBE: set (or overwrite) the user's online flag for `c`.
    pub fn subscribe(&self, c: &Arc<Conn>, appid: i64, uid: i64, online: bool) {
        let key = (appid, uid);
        let mut shard = self.users[self.shard(key)].write();
        let entry = shard.entry(key).or_default();
        match entry.iter_mut().find(|(x, _)| x.id == c.id) {
            Some(slot) => slot.1 = online,
            None => {
                let before: Vec<u64> = entry.iter().map(|(x, _)| x.id).collect();
                entry.push((c.clone(), online));
                c.users.fetch_add(1, Ordering::Relaxed);
                let after: Vec<u64> = entry.iter().map(|(x, _)| x.id).collect();
                self.announce((PresenceKind::User, appid, uid), &before, &after);
            }
        }
    }

    /// Sends watchers the deltas of one user's or room's change (caller holds its shard lock).
    fn announce(&self, what: (PresenceKind, i64, i64), before: &[u64], after: &[u64]) {
        if before.len() >= 2 && after.len() >= 2 {
            return;
        }
        let watchers = self.watchers();
        if watchers.is_empty() {
            return;
        }
        let mut deltas = Deltas::default();
        presence_change(&watchers, what, before, after, &mut deltas);
        deltas.flush();
    }

    /// UNSUBSCRIBE.
    pub fn unsubscribe(&self, c: &Conn, appid: i64, uid: i64) {
        let key = (appid, uid);
        let mut shard = self.users[self.shard(key)].write();
        if let Some(entry) = shard.get_mut(&key) {
            let before: Vec<u64> = entry.iter().map(|(x, _)| x.id).collect();
            entry.retain(|(x, _)| x.id != c.id);
            if entry.len() < before.len() {
                c.users.fetch_sub(1, Ordering::Relaxed);
                let after: Vec<u64> = entry.iter().map(|(x, _)| x.id).collect();
                self.announce((PresenceKind::User, appid, uid), &before, &after);
            }
            if entry.is_empty() {
                shard.remove(&key);
            }
        }
    }

    pub fn subscribe_room(&self, c: &Arc<Conn>, appid: i64, room: i64) {
        let key = (appid, room);
        let mut shard = self.rooms[self.shard(key)].write();
        let entry = shard.entry(key).or_default();
        if !entry.iter().any(|x| x.id == c.id) {
            let before: Vec<u64> = entry.iter().map(|x| x.id).collect();
            entry.push(c.clone());
            c.rooms.fetch_add(1, Ordering::Relaxed);
            let after: Vec<u64> = entry.iter().map(|x| x.id).collect();
            self.announce((PresenceKind::Room, appid, room), &before, &after);
        }
    }

    pub fn unsubscribe_room(&self, c: &Conn, appid: i64, room: i64) {
        let key = (appid, room);
        let mut shard = self.rooms[self.shard(key)].write();
        if let Some(entry) = shard.get_mut(&key) {
            let before: Vec<u64> = entry.iter().map(|x| x.id).collect();
            entry.retain(|x| x.id != c.id);
            if entry.len() < before.len() {
                c.rooms.fetch_sub(1, Ordering::Relaxed);
                let after: Vec<u64> = entry.iter().map(|x| x.id).collect();
                self.announce((PresenceKind::Room, appid, room), &before, &after);
            }
            if entry.is_empty() {
                shard.remove(&key);
            }
        }
    }

    /// PUBLISH: to every other connection that subscribed the user, whatever its online flag.
    /// Returns how many connections it was queued for.
    pub fn forward_user(&self, from: u64, appid: i64, uid: i64, cmd: u8, body: &Bytes) -> usize {
        let key = (appid, uid);
        let shard = self.users[self.shard(key)].read();
        let Some(entry) = shard.get(&key) else {
            return 0;
        };
        entry
            .iter()
            .filter(|(c, _)| c.id != from)
            .filter(|(c, _)| c.send(cmd, body.clone()))
            .count()
    }

    /// PUBLISH_STORED (`body`): to every other connection that subscribed the user, as it is to
    /// those that take it, as the PUBLISH pair it stands for to the others. Returns to how many
    /// connections it went.
    pub fn forward_stored(&self, from: u64, appid: i64, uid: i64, body: &Bytes) -> usize {
        let key = (appid, uid);
        let shard = self.users[self.shard(key)].read();
        let Some(entry) = shard.get(&key) else {
            return 0;
        };
        let mut legacy = None;
        let mut sent = 0;
        for (c, _) in entry.iter().filter(|(c, _)| c.id != from) {
            let ok = if c.stored.load(Ordering::Acquire) {
                c.send(cmd::PUBLISH_STORED, body.clone())
            } else {
                match legacy.get_or_insert_with(|| legacy_publishes(body)) {
                    Some(l) => l
                        .frames
                        .iter()
                        .fold(true, |ok, (fc, fb)| c.send(*fc, fb.clone()) && ok),
                    None => false,
                }
            };
            sent += usize::from(ok);
        }
        sent
    }

    /// PUBLISH_ROOM: to every other connection that subscribed the room.
    pub fn forward_room(&self, from: u64, appid: i64, room: i64, cmd: u8, body: &Bytes) -> usize {
        let key = (appid, room);
        let shard = self.rooms[self.shard(key)].read();
        let Some(entry) = shard.get(&key) else {
            return 0;
        };
        entry
            .iter()
            .filter(|c| c.id != from)
            .filter(|c| c.send(cmd, body.clone()))
            .count()
    }

    /// PUBLISH_GROUP: to every other connection.
    pub fn forward_all(&self, from: u64, cmd: u8, body: &Bytes) -> usize {
        self.conns()
            .iter()
            .filter(|c| c.id != from)
            .filter(|c| c.send(cmd, body.clone()))
            .count()
    }

    /// Whether some connection subscribed the user with online = 1.
    pub fn is_online(&self, appid: i64, uid: i64) -> bool {
        let key = (appid, uid);
        self.users[self.shard(key)]
            .read()
            .get(&key)
            .is_some_and(|v| v.iter().any(|(_, online)| *online))
    }

    /// Every subscribed user (each once), by app; only those online somewhere when `online_only`.
    pub fn all_users(&self, online_only: bool) -> BTreeMap<i64, Vec<i64>> {
        let mut out: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
        for shard in self.users.iter() {
            for (&(appid, uid), v) in shard.read().iter() {
                if !online_only || v.iter().any(|(_, o)| *o) {
                    out.entry(appid).or_default().push(uid);
                }
            }
        }
        for users in out.values_mut() {
            users.sort_unstable();
        }
        out
    }

    /// Connections watching remote presence.
    pub fn watcher_count(&self) -> usize {
        self.conns.read().iter().filter(|c| c.is_watching()).count()
    }

    /// `(distinct users, distinct online users, distinct rooms)`.
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut users = 0;
        let mut online = 0;
        for shard in self.users.iter() {
            let s = shard.read();
            users += s.len();
            online += s.values().filter(|v| v.iter().any(|(_, o)| *o)).count();
        }
        let rooms = self.rooms.iter().map(|s| s.read().len()).sum();
        (users, online, rooms)
    }
}

fn peers_body(others: usize) -> Bytes {
    Bytes::copy_from_slice(&u32::try_from(others).unwrap_or(u32::MAX).to_be_bytes())
}

/// PEERS to every watcher of the connection list `list` (caller holds the list's write lock).
fn send_peers(list: &[Arc<Conn>]) {
    let others = list.len().saturating_sub(1);
    for c in list.iter().filter(|c| c.is_watching()) {
        c.send_presence(cmd::PEERS, peers_body(others));
    }
}
