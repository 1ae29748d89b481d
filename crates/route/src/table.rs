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
//! Forwarding never waits: [`Conn::send`] appends to the connection's outbox (a mutex-protected
//! `VecDeque` plus a `Notify`) or, when the outbox is over its frame or byte bound, drops the frame.
//! A dropped persistent message (or sync notification) leaves its receiver owed one coalesced sync
//! notification ([`NotifyBacklog`]), written ahead of the outbox once the node reads again; other
//! drops (rooms, transient messages, a full backlog) are counted and warned. A node that stops
//! reading is disconnected by its writer's deadline.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use cluster::notify_backlog::{Noted, NotifyBacklog, OWED_CHUNK};
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
            metrics,
        }
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
        *conns = Arc::new(list);
    }

    /// Remove a connection and everything it subscribed.
    pub fn remove_conn(&self, c: &Conn) {
        {
            let mut conns = self.conns.write();
            let list: Vec<Arc<Conn>> = conns.iter().filter(|x| x.id != c.id).cloned().collect();
            *conns = Arc::new(list);
        }
        if c.users.load(Ordering::Relaxed) > 0 {
            for shard in self.users.iter() {
                shard.write().retain(|_, v| {
                    v.retain(|(x, _)| x.id != c.id);
                    !v.is_empty()
                });
            }
        }
        if c.rooms.load(Ordering::Relaxed) > 0 {
            for shard in self.rooms.iter() {
                shard.write().retain(|_, v| {
                    v.retain(|x| x.id != c.id);
                    !v.is_empty()
                });
            }
        }
        c.users.store(0, Ordering::Relaxed);
        c.rooms.store(0, Ordering::Relaxed);
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
                entry.push((c.clone(), online));
                c.users.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// UNSUBSCRIBE.
    pub fn unsubscribe(&self, c: &Conn, appid: i64, uid: i64) {
        let key = (appid, uid);
        let mut shard = self.users[self.shard(key)].write();
        if let Some(entry) = shard.get_mut(&key) {
            let before = entry.len();
            entry.retain(|(x, _)| x.id != c.id);
            if entry.len() < before {
                c.users.fetch_sub(1, Ordering::Relaxed);
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
            entry.push(c.clone());
            c.rooms.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn unsubscribe_room(&self, c: &Conn, appid: i64, room: i64) {
        let key = (appid, room);
        let mut shard = self.rooms[self.shard(key)].write();
        if let Some(entry) = shard.get_mut(&key) {
            let before = entry.len();
            entry.retain(|x| x.id != c.id);
            if entry.len() < before {
                c.rooms.fetch_sub(1, Ordering::Relaxed);
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
