//! The local route table: which authenticated sessions of which `(appid, uid)` live on this node, and
//! each session's outbox — the bounded queue through which everyone else hands it frames.
//!
//! The table is sharded (a fixed number of `RwLock<HashMap>` shards keyed by a hash of the user), so
//! logins, logouts and deliveries to different users do not contend. An outbox is a mutex-protected
//! `VecDeque` plus a `Notify`; an idle outbox holds no allocation. When a session cannot keep up (its
//! outbox exceeds the configured frame or byte bound) it is marked for disconnection: producers never
//! wait for a slow consumer.
//!
//! The table also carries the timers of logged-in sessions, so that an idle session waits on nothing
//! but its outbox's notification: each session records when its client last sent a frame, and the
//! node's sweep ([`RouteTable::close_idle`], run by `session::sweep`) closes those silent for longer than
//! the idle timeout; at shutdown [`RouteTable::close_all`] closes every session, including any that logs
//! in after it.
//!
//! Room messages have their own backlog per session, allocated on a session's first room message and
//! bounded by bytes and by age ([`RoomPolicy`], docs/protocol.md §8.6): a member that falls behind
//! loses its oldest room messages (counted), and one that keeps losing them without ever catching up for
//! `lag_disconnect` is disconnected (counted). The room table ([`RoomTable`]) keeps these counts, in
//! total and per room.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backend::groups::Group;
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use proto::{cmd, Body, GroupSyncKey, Metadata};
use smallvec::SmallVec;
use tokio::sync::Notify;

/// A frame handed to a session by someone else. Bodies are shared (`Bytes`), encoded once for every
/// recipient; the session's writer adds the header with its own seq and version.
#[derive(Debug, Clone)]
pub struct Push {
    pub cmd: u8,
    pub flag: u8,
    /// Body in version 1/2 layout (IM and GROUP_IM bodies are re-laid for version 0 sessions by the writer).
    pub body: Bytes,
    /// When set, a METADATA frame is written immediately before this one, on consecutive seqs.
    pub meta: Option<Metadata>,
}

impl Push {
    pub fn plain(cmd: u8, flag: u8, body: Bytes) -> Push {
        Push {
            cmd,
            flag,
            body,
            meta: None,
        }
    }

    /// A SYNC_NOTIFY: the user's queue has entries up to `key`.
    pub fn sync_notify(key: i64) -> Push {
        Push::plain(cmd::SYNC_NOTIFY, 0, Body::SyncNotify(key).to_stored())
    }

    /// A SYNC_GROUP_NOTIFY: the super group's queue has entries up to `key`.
    pub fn group_sync_notify(group_id: i64, sync_key: i64) -> Push {
        Push::plain(
            cmd::SYNC_GROUP_NOTIFY,
            0,
            Body::SyncGroupNotify(GroupSyncKey { group_id, sync_key }).to_stored(),
        )
    }

    /// The bytes it takes on the wire (with its METADATA frame, when it has one).
    pub fn wire_len(&self) -> usize {
        proto::pushed_len(self.body.len(), self.meta.is_some())
    }
}

#[derive(Default)]
struct Outbox {
    queue: VecDeque<Push>,
    bytes: usize,
    /// Room messages: bounded separately by [`RoomPolicy`]; the oldest are dropped when it is exceeded
    /// (rooms promise no delivery). Boxed and allocated on the first room message: most sessions are
    /// never in a room.
    room: Option<Box<RoomBacklog>>,
    /// Set when the session must be closed (overflow or kick); no more frames are accepted.
    closed: Option<&'static str>,
}

impl Outbox {
    fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.room.as_ref().is_none_or(|r| r.queue.is_empty())
    }
}

/// How much room traffic a session may have queued, and when a member that is behind is disconnected.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoomPolicy {
    /// Most bytes of room messages queued for one session: their wire size plus
    /// [`ROOM_ENTRY_COST`] each (the queue's own memory per message).
    pub bytes: usize,
    /// Most time between the oldest and the newest room message queued for one session.
    pub age: Duration,
    /// A member that has lost room messages and not caught up since for this long is disconnected;
    /// `None`: never.
    pub lag_disconnect: Option<Duration>,
}

impl Default for RoomPolicy {
    fn default() -> Self {
        RoomPolicy {
            bytes: 1 << 20,
            age: Duration::from_secs(10),
            lag_disconnect: Some(Duration::from_secs(15)),
        }
    }
}

/// One queued room message and when it was queued.
struct RoomEntry {
    push: Push,
    at: Instant,
}

/// What a room backlog counts per queued message besides the frame itself: its queue entry.
pub const ROOM_ENTRY_COST: usize = std::mem::size_of::<RoomEntry>();

impl RoomEntry {
    fn cost(&self) -> usize {
        self.push.wire_len() + ROOM_ENTRY_COST
    }
}

/// A session's room messages waiting to be written.
#[derive(Default)]
struct RoomBacklog {
    queue: VecDeque<RoomEntry>,
    /// Sum of the entries' [`RoomEntry::cost`].
    bytes: usize,
    /// Room messages this session lost (dropped from this backlog), in total.
    dropped: u64,
    /// Whether a message was dropped since the session last drained its outbox.
    dropped_since_drain: bool,
    /// Since when the session has been losing room messages without catching up in between: set by
    /// the first drop, cleared when the session drains its outbox without having lost any message
    /// since the drain before.
    lagging_since: Option<Instant>,
}

impl RoomBacklog {
    fn pop_front(&mut self) {
        if let Some(e) = self.queue.pop_front() {
            self.bytes -= e.cost();
        }
    }
}

/// What delivering room messages did, summed over members (and messages).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RoomDelivery {
    /// Members that got the message queued.
    pub delivered: usize,
    /// Older messages dropped because a member's backlog was over its byte bound.
    pub dropped_bytes: u64,
    /// Older messages dropped because they were more than the backlog's age bound older than the
    /// newest.
    pub dropped_age: u64,
    /// Messages discarded with the backlogs of members disconnected for lagging (this one included).
    pub dropped_disconnect: u64,
    /// Members disconnected because they stayed behind the room for too long.
    pub disconnected: u64,
}

impl RoomDelivery {
    /// Messages any member lost.
    pub fn dropped(&self) -> u64 {
        self.dropped_bytes + self.dropped_age + self.dropped_disconnect
    }
}

/// Who a session is.
#[derive(Debug, Clone, Copy)]
pub struct SessionId {
    pub conn_id: u64,
    pub appid: i64,
    pub uid: i64,
    pub device_id: i64,
    pub platform: u8,
    pub online: bool,
    pub forbidden: bool,
    /// [`backend::token_fingerprint`] of the token the session logged in with (0 for none).
    pub token_fp: u64,
}

/// Bounds of a session's outbox (room messages: [`RoomPolicy`], kept by the room table).
#[derive(Debug, Clone, Copy)]
pub struct OutboxLimits {
    pub frames: usize,
    pub bytes: usize,
}

/// One authenticated session as seen by others: its identity and its outbox.
pub struct SessionHandle {
    pub conn_id: u64,
    pub appid: i64,
    pub uid: i64,
    pub device_id: i64,
    pub platform: u8,
    /// Counts as online for offline-push suppression (docs/protocol.md §9.9).
    pub online: bool,
    /// Speak-banned (rooms and groups); updated live.
    pub forbidden: AtomicBool,
    /// Which token the session logged in with, so revoking it can end the session.
    pub token_fp: u64,
    outbox: Mutex<Outbox>,
    notify: Notify,
    /// When the client last sent a frame ([`clock_ms`]), for the node's idle sweep.
    active_ms: AtomicU64,
    max_frames: u32,
    max_bytes: u32,
}

/// Milliseconds since the first call, on the monotonic clock: when sessions were last active.
pub fn clock_ms(at: Instant) -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    at.saturating_duration_since(start).as_millis() as u64
}

/// The close reason of a session whose outbox overflowed (a slow consumer).
pub(crate) const OUTBOX_FULL: &str = "outbox full: the client does not read fast enough";

/// The close reason of a room member that kept losing room messages without catching up
/// ([`RoomPolicy::lag_disconnect`]).
pub const ROOM_LAG: &str = "room backlog: the client stayed behind its room for too long";

/// The close reason of a session whose token was revoked or whose user the operator disconnected.
pub const KICKED: &str = "the session's token was revoked or its user disconnected by the operator";

/// The close reason of a session whose client sent nothing for `server.idle_timeout_secs`.
pub const IDLE_TIMEOUT: &str = "idle timeout";

/// The close reason of every session when the node shuts down.
pub const SHUTDOWN: &str = "server shutting down";

impl SessionHandle {
    pub fn new(id: SessionId, limits: OutboxLimits) -> SessionHandle {
        SessionHandle {
            conn_id: id.conn_id,
            appid: id.appid,
            uid: id.uid,
            device_id: id.device_id,
            platform: id.platform,
            online: id.online,
            forbidden: AtomicBool::new(id.forbidden),
            token_fp: id.token_fp,
            outbox: Mutex::new(Outbox::default()),
            notify: Notify::new(),
            active_ms: AtomicU64::new(clock_ms(Instant::now())),
            max_frames: limits.frames.min(u32::MAX as usize) as u32,
            max_bytes: limits.bytes.min(u32::MAX as usize) as u32,
        }
    }

    /// Records that the client sent a frame at `at`.
    pub fn touch(&self, at: Instant) {
        self.active_ms.store(clock_ms(at), Ordering::Relaxed);
    }

    pub fn is_forbidden(&self) -> bool {
        self.forbidden.load(Ordering::Relaxed)
    }

    /// Room messages this session lost (dropped from its room backlog).
    pub fn room_dropped(&self) -> u64 {
        self.outbox.lock().room.as_ref().map_or(0, |r| r.dropped)
    }

    /// Queues a room message queued by the room at `now`, within `policy`: older messages beyond the
    /// backlog's bounds are dropped first, and a member that has been losing messages without catching
    /// up for `policy.lag_disconnect` is closed instead ([`ROOM_LAG`]). Adds what happened to `out`.
    pub fn push_room(&self, push: Push, now: Instant, policy: &RoomPolicy, out: &mut RoomDelivery) {
        let mut ob = self.outbox.lock();
        if ob.closed.is_some() {
            return;
        }
        let was_empty = ob.is_empty();
        let r = ob.room.get_or_insert_with(Box::default);
        let entry = RoomEntry { push, at: now };
        let cost = entry.cost();
        let mut dropped = 0;
        while r
            .queue
            .front()
            .is_some_and(|e| now.saturating_duration_since(e.at) > policy.age)
        {
            r.pop_front();
            out.dropped_age += 1;
            dropped += 1;
        }
        // The newest message is always kept, even when it alone is over the bound.
        while !r.queue.is_empty() && r.bytes + cost > policy.bytes {
            r.pop_front();
            out.dropped_bytes += 1;
            dropped += 1;
        }
        if dropped > 0 {
            r.dropped += dropped;
            r.dropped_since_drain = true;
            let since = *r.lagging_since.get_or_insert(now);
            if policy
                .lag_disconnect
                .is_some_and(|limit| now.saturating_duration_since(since) >= limit)
            {
                let discarded = r.queue.len() as u64 + 1;
                r.dropped += discarded;
                r.queue = VecDeque::new();
                r.bytes = 0;
                out.dropped_disconnect += discarded;
                out.disconnected += 1;
                ob.closed = Some(ROOM_LAG);
                ob.queue = VecDeque::new();
                ob.bytes = 0;
                drop(ob);
                self.notify.notify_one();
                return;
            }
        }
        r.bytes += cost;
        r.queue.push_back(entry);
        out.delivered += 1;
        drop(ob);
        if was_empty {
            self.notify.notify_one();
        }
    }

    /// Queues `push` for this session. Returns false when the session is closing (the frame is dropped
    /// with it). A full outbox closes the session.
    pub fn push(&self, push: Push) -> bool {
        let mut ob = self.outbox.lock();
        if ob.closed.is_some() {
            return false;
        }
        let cost = push.wire_len();
        if ob.queue.len() >= self.max_frames as usize || ob.bytes + cost > self.max_bytes as usize {
            ob.closed = Some(OUTBOX_FULL);
            ob.queue = VecDeque::new();
            ob.bytes = 0;
            drop(ob);
            self.notify.notify_one();
            return false;
        }
        ob.bytes += cost;
        let was_empty = ob.is_empty();
        ob.queue.push_back(push);
        drop(ob);
        if was_empty {
            self.notify.notify_one();
        }
        true
    }

    /// Asks the session to close (e.g. token revoked, server shutting down). Returns false if it was
    /// already closing (the first reason stands).
    pub fn close(&self, reason: &'static str) -> bool {
        let mut ob = self.outbox.lock();
        let first = ob.closed.is_none();
        if first {
            ob.closed = Some(reason);
        }
        drop(ob);
        self.notify.notify_one();
        first
    }

    /// Whether frames are queued or the session must close.
    pub fn has_pending(&self) -> bool {
        let ob = self.outbox.lock();
        !ob.is_empty() || ob.closed.is_some()
    }

    /// Why the session must close, if it must.
    pub fn close_reason(&self) -> Option<&'static str> {
        self.outbox.lock().closed
    }

    /// Waits until something is queued or the session must close.
    pub async fn wait(&self) {
        self.notify.notified().await
    }

    /// Moves every queued frame into `into`; returns the close reason if the session must close.
    pub fn drain(&self, into: &mut Vec<Push>) -> Option<&'static str> {
        let mut ob = self.outbox.lock();
        if let Some(reason) = ob.closed {
            return Some(reason);
        }
        into.extend(ob.queue.drain(..));
        ob.bytes = 0;
        if ob.queue.capacity() > 64 {
            ob.queue = VecDeque::new();
        }
        if let Some(r) = ob.room.as_mut() {
            into.extend(r.queue.drain(..).map(|e| e.push));
            r.bytes = 0;
            if r.queue.capacity() > 64 {
                r.queue = VecDeque::new();
            }
            // Caught up: nothing was lost since the previous drain.
            if !r.dropped_since_drain {
                r.lagging_since = None;
            }
            r.dropped_since_drain = false;
        }
        None
    }
}

const SHARDS: usize = 64;

/// A user's sessions on this node: nearly always one, kept inline (a `Vec` would be a 48-byte
/// allocation per connected user).
type UserSessions = SmallVec<[Arc<SessionHandle>; 1]>;

type SessionMap<K> = HashMap<K, UserSessions>;

/// Values by key, in independently locked shards.
struct Shards<K, V> {
    shards: Box<[RwLock<HashMap<K, V>>]>,
    hasher: RandomState,
}

impl<K: Hash + Eq, V> Default for Shards<K, V> {
    fn default() -> Self {
        Shards {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl<K: Hash + Eq, V> Shards<K, V> {
    fn shard(&self, key: &K) -> &RwLock<HashMap<K, V>> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }
}

type UserKey = (i64, i64);

/// Sessions by user, sharded.
#[derive(Default)]
pub struct RouteTable {
    map: Shards<UserKey, UserSessions>,
    /// Set by [`RouteTable::close_all`]: sessions added later are closed as they are added.
    closed: AtomicBool,
}

impl RouteTable {
    fn shard(&self, key: &UserKey) -> &RwLock<SessionMap<UserKey>> {
        self.map.shard(key)
    }

    pub fn add(&self, s: Arc<SessionHandle>) {
        let key = (s.appid, s.uid);
        let mut shard = self.shard(&key).write();
        // Read under the shard's lock, which `close_all` takes after setting it: a session is either
        // seen by `close_all` or sees the flag here.
        if self.closed.load(Ordering::Acquire) {
            s.close(SHUTDOWN);
        }
        shard.entry(key).or_default().push(s);
    }

    /// Closes every session, now and as they are added: the node is shutting down.
    pub fn close_all(&self) {
        self.closed.store(true, Ordering::Release);
        for shard in self.map.shards.iter() {
            for s in shard.read().values().flatten() {
                s.close(SHUTDOWN);
            }
        }
    }

    /// Closes the sessions whose client sent nothing for `idle` or longer before `now`; returns how
    /// many were not already closing.
    pub fn close_idle(&self, now: Instant, idle: Duration) -> usize {
        let now = clock_ms(now);
        let idle = idle.as_millis() as u64;
        let mut n = 0;
        for shard in self.map.shards.iter() {
            for s in shard.read().values().flatten() {
                if now.saturating_sub(s.active_ms.load(Ordering::Relaxed)) >= idle
                    && s.close(IDLE_TIMEOUT)
                {
                    n += 1;
                }
            }
        }
        n
    }

    pub fn remove(&self, s: &SessionHandle) {
        let key = (s.appid, s.uid);
        let mut shard = self.shard(&key).write();
        if let Some(v) = shard.get_mut(&key) {
            v.retain(|x| x.conn_id != s.conn_id);
            if v.is_empty() {
                shard.remove(&key);
            }
        }
    }

    /// Calls `f` for every session of the user. The shard is read-locked meanwhile: `f` must not block.
    pub fn for_each(&self, appid: i64, uid: i64, mut f: impl FnMut(&Arc<SessionHandle>)) {
        let key = (appid, uid);
        if let Some(v) = self.shard(&key).read().get(&key) {
            v.iter().for_each(&mut f);
        }
    }

    /// Closes the user's sessions that logged in with the token of fingerprint `token_fp` (0: every
    /// session of the user); returns how many were asked to close.
    pub fn kick(&self, appid: i64, uid: i64, token_fp: u64, reason: &'static str) -> usize {
        let mut n = 0;
        self.for_each(appid, uid, |s| {
            if token_fp == 0 || s.token_fp == token_fp {
                s.close(reason);
                n += 1;
            }
        });
        n
    }

    /// Queues `push` for every session of the user except connection `except`; returns how many got it.
    pub fn deliver(&self, appid: i64, uid: i64, push: &Push, except: u64) -> usize {
        let mut n = 0;
        self.for_each(appid, uid, |s| {
            if s.conn_id != except && s.push(push.clone()) {
                n += 1;
            }
        });
        n
    }

    /// Queues `push` for every session of every member of `group` except connection `except`;
    /// returns how many got it.
    pub fn deliver_group(&self, group: &Group, push: &Push, except: u64) -> usize {
        group
            .members
            .keys()
            .map(|&uid| self.deliver(group.appid, uid, push, except))
            .sum()
    }

    /// Whether the user has a session here that counts as online.
    pub fn is_online(&self, appid: i64, uid: i64) -> bool {
        let mut online = false;
        self.for_each(appid, uid, |s| online |= s.online);
        online
    }

    /// (distinct users, sessions), optionally restricted to one app.
    pub fn counts(&self, appid: Option<i64>) -> (usize, usize) {
        let (mut users, mut sessions) = (0, 0);
        for shard in self.map.shards.iter() {
            for (k, v) in shard.read().iter() {
                if appid.is_none_or(|a| a == k.0) {
                    users += 1;
                    sessions += v.len();
                }
            }
        }
        (users, sessions)
    }

    /// Sets the forbidden flag of every session of the user (live `speak_forbidden` updates).
    pub fn set_forbidden(&self, appid: i64, uid: i64, forbidden: bool) {
        self.for_each(appid, uid, |s| {
            s.forbidden.store(forbidden, Ordering::Relaxed)
        });
    }

    /// Every session, for shutdown.
    pub fn all(&self) -> Vec<Arc<SessionHandle>> {
        let mut out = Vec::new();
        for shard in self.map.shards.iter() {
            for v in shard.read().values() {
                out.extend(v.iter().cloned());
            }
        }
        out
    }
}

type RoomKey = (i64, i64);

/// The connections in one room and what they lost.
#[derive(Default)]
struct Room {
    members: Vec<Arc<SessionHandle>>,
    /// Room messages members lost since the room was created (it goes when its last member leaves).
    dropped: AtomicU64,
}

/// Room messages lost by members that fell behind, since the node started (`/metrics`).
#[derive(Debug, Default)]
pub struct RoomDrops {
    pub bytes: AtomicU64,
    pub age: AtomicU64,
    pub disconnect: AtomicU64,
    /// Members disconnected for lagging.
    pub disconnected: AtomicU64,
}

/// Sessions by chat room `(appid, room_id)`, sharded. A connection is in at most one room. Also the
/// room backlog policy of every member and the counts of what members lost.
#[derive(Default)]
pub struct RoomTable {
    map: Shards<RoomKey, Room>,
    policy: RoomPolicy,
    pub drops: RoomDrops,
}

impl RoomTable {
    pub fn new(policy: RoomPolicy) -> RoomTable {
        RoomTable {
            policy,
            ..RoomTable::default()
        }
    }

    fn shard(&self, key: &RoomKey) -> &RwLock<HashMap<RoomKey, Room>> {
        self.map.shard(key)
    }

    /// Adds the session to the room. Another connection of the same user and device (device id > 0)
    /// already in the room is displaced; its id is returned so the caller can tell it.
    pub fn enter(&self, appid: i64, room: i64, s: Arc<SessionHandle>) -> Option<u64> {
        let key = (appid, room);
        let mut shard = self.shard(&key).write();
        let members = &mut shard.entry(key).or_default().members;
        let mut displaced = None;
        if s.device_id > 0 {
            if let Some(pos) = members.iter().position(|m| {
                m.uid == s.uid && m.device_id == s.device_id && m.conn_id != s.conn_id
            }) {
                displaced = Some(members.swap_remove(pos).conn_id);
            }
        }
        if !members.iter().any(|m| m.conn_id == s.conn_id) {
            members.push(s);
        }
        displaced
    }

    /// Removes connection `conn_id` from the room; true if it was there.
    pub fn leave(&self, appid: i64, room: i64, conn_id: u64) -> bool {
        let key = (appid, room);
        let mut shard = self.shard(&key).write();
        let Some(r) = shard.get_mut(&key) else {
            return false;
        };
        let before = r.members.len();
        r.members.retain(|m| m.conn_id != conn_id);
        let removed = r.members.len() != before;
        if r.members.is_empty() {
            shard.remove(&key);
        }
        removed
    }

    /// Whether connection `conn_id` is in the room.
    pub fn contains(&self, appid: i64, room: i64, conn_id: u64) -> bool {
        let key = (appid, room);
        self.shard(&key)
            .read()
            .get(&key)
            .is_some_and(|r| r.members.iter().any(|s| s.conn_id == conn_id))
    }

    /// Queues `push` for everyone in the room but connection `except`, within each member's backlog
    /// bounds ([`SessionHandle::push_room`]), and counts what members lost.
    pub fn deliver(&self, appid: i64, room: i64, push: &Push, except: u64) -> RoomDelivery {
        let key = (appid, room);
        let shard = self.shard(&key).read();
        let mut out = RoomDelivery::default();
        let Some(r) = shard.get(&key) else {
            return out;
        };
        let now = Instant::now();
        for m in &r.members {
            if m.conn_id != except {
                m.push_room(push.clone(), now, &self.policy, &mut out);
            }
        }
        let dropped = out.dropped();
        if dropped > 0 {
            r.dropped.fetch_add(dropped, Ordering::Relaxed);
            let d = &self.drops;
            d.bytes.fetch_add(out.dropped_bytes, Ordering::Relaxed);
            d.age.fetch_add(out.dropped_age, Ordering::Relaxed);
            d.disconnect
                .fetch_add(out.dropped_disconnect, Ordering::Relaxed);
            d.disconnected
                .fetch_add(out.disconnected, Ordering::Relaxed);
        }
        out
    }

    /// The `n` rooms whose members lost the most room messages (`(appid, room, lost)`, most first;
    /// rooms that lost none are left out).
    pub fn top_dropped(&self, n: usize) -> Vec<(i64, i64, u64)> {
        let mut all = Vec::new();
        for shard in self.map.shards.iter() {
            for (&(appid, room), r) in shard.read().iter() {
                let d = r.dropped.load(Ordering::Relaxed);
                if d > 0 {
                    all.push((appid, room, d));
                }
            }
        }
        all.sort_unstable_by(|a, b| b.2.cmp(&a.2).then((a.0, a.1).cmp(&(b.0, b.1))));
        all.truncate(n);
        all
    }

    /// (rooms, connections in rooms) of one app, and rooms with at least `big` connections.
    pub fn stats(&self, appid: i64, big: usize) -> (usize, usize, Vec<(i64, usize)>) {
        let (mut rooms, mut conns, mut large) = (0, 0, Vec::new());
        for shard in self.map.shards.iter() {
            for ((a, room), r) in shard.read().iter() {
                if *a == appid {
                    rooms += 1;
                    conns += r.members.len();
                    if r.members.len() >= big {
                        large.push((*room, r.members.len()));
                    }
                }
            }
        }
        (rooms, conns, large)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(conn_id: u64) -> Arc<SessionHandle> {
        Arc::new(SessionHandle::new(
            SessionId {
                conn_id,
                appid: 1,
                uid: conn_id as i64,
                device_id: 0,
                platform: 0,
                online: true,
                forbidden: false,
                token_fp: 0,
            },
            OutboxLimits {
                frames: 100,
                bytes: 1 << 20,
            },
        ))
    }

    fn msg(n: u8) -> Push {
        Push::plain(cmd::ROOM_IM, 0, Bytes::from(vec![n; 100]))
    }

    fn cost() -> usize {
        msg(0).wire_len() + ROOM_ENTRY_COST
    }

    fn drained(h: &SessionHandle) -> Vec<u8> {
        let mut v = Vec::new();
        assert_eq!(h.drain(&mut v), None);
        v.iter().map(|p| p.body[0]).collect()
    }

    #[test]
    fn the_idle_sweep_closes_only_silent_sessions() {
        let table = RouteTable::default();
        let (silent, active) = (handle(1), handle(2));
        table.add(silent.clone());
        table.add(active.clone());
        let now = Instant::now();
        silent.touch(now);
        active.touch(now + Duration::from_secs(8));
        let later = now + Duration::from_secs(10);
        assert_eq!(table.close_idle(later, Duration::from_secs(5)), 1);
        assert_eq!(silent.drain(&mut Vec::new()), Some(IDLE_TIMEOUT));
        assert_eq!(active.drain(&mut Vec::new()), None);
        // A session already closing is not counted again.
        assert_eq!(table.close_idle(later, Duration::from_secs(5)), 0);
    }

    #[test]
    fn closing_the_table_closes_sessions_present_and_added_later() {
        let table = RouteTable::default();
        let (early, kicked) = (handle(1), handle(2));
        table.add(early.clone());
        table.add(kicked.clone());
        kicked.close(KICKED);
        table.close_all();
        assert_eq!(early.close_reason(), Some(SHUTDOWN));
        // The first reason stands.
        assert_eq!(kicked.close_reason(), Some(KICKED));
        let late = handle(3);
        table.add(late.clone());
        assert_eq!(late.close_reason(), Some(SHUTDOWN));
    }

    #[test]
    fn the_byte_bound_drops_the_oldest_room_messages() {
        let h = handle(1);
        let policy = RoomPolicy {
            bytes: 3 * cost(),
            age: Duration::from_secs(60),
            lag_disconnect: None,
        };
        let now = Instant::now();
        let mut out = RoomDelivery::default();
        for n in 0..5 {
            h.push_room(msg(n), now, &policy, &mut out);
        }
        assert_eq!(out.delivered, 5);
        assert_eq!(out.dropped_bytes, 2);
        assert_eq!(drained(&h), vec![2, 3, 4]);
        assert_eq!(h.room_dropped(), 2);
    }

    #[test]
    fn the_age_bound_drops_what_is_older_than_it_relative_to_the_newest() {
        let h = handle(1);
        let policy = RoomPolicy {
            bytes: 1 << 20,
            age: Duration::from_secs(5),
            lag_disconnect: None,
        };
        let t0 = Instant::now();
        let mut out = RoomDelivery::default();
        h.push_room(msg(0), t0, &policy, &mut out);
        h.push_room(msg(1), t0 + Duration::from_secs(3), &policy, &mut out);
        h.push_room(msg(2), t0 + Duration::from_secs(6), &policy, &mut out);
        assert_eq!(out.dropped_age, 1);
        assert_eq!(drained(&h), vec![1, 2]);
    }

    #[test]
    fn a_member_losing_messages_without_catching_up_is_disconnected() {
        let h = handle(1);
        let policy = RoomPolicy {
            bytes: 2 * cost(),
            age: Duration::from_secs(60),
            lag_disconnect: Some(Duration::from_secs(10)),
        };
        let t0 = Instant::now();
        let mut out = RoomDelivery::default();
        for n in 0..3 {
            h.push_room(msg(n), t0, &policy, &mut out);
        }
        assert_eq!(out.dropped_bytes, 1);
        // Drains (so it reads), but keeps losing messages between drains: still lagging.
        assert_eq!(drained(&h).len(), 2);
        for n in 3..6 {
            h.push_room(msg(n), t0 + Duration::from_secs(5), &policy, &mut out);
        }
        assert_eq!(drained(&h).len(), 2);
        assert_eq!(h.close_reason(), None);
        for n in 6..9 {
            h.push_room(msg(n), t0 + Duration::from_secs(10), &policy, &mut out);
        }
        assert_eq!(h.close_reason(), Some(ROOM_LAG));
        assert_eq!(out.disconnected, 1);
        // 8 pushed 6 out (bytes) and came with the decision: 7, still queued, and 8 are discarded.
        assert_eq!(out.dropped_bytes, 3);
        assert_eq!(out.dropped_disconnect, 2);
        assert_eq!(out.delivered, 3 + 3 + 2);
        // 1, 2, 4 and 5 were written; the other five lost.
        assert_eq!(h.room_dropped(), 5);
        // Nothing more is accepted.
        h.push_room(msg(9), t0 + Duration::from_secs(11), &policy, &mut out);
        assert_eq!(out.delivered, 8);
    }

    #[test]
    fn a_member_that_catches_up_after_a_hiccup_stays() {
        let h = handle(1);
        let policy = RoomPolicy {
            bytes: 2 * cost(),
            age: Duration::from_secs(60),
            lag_disconnect: Some(Duration::from_secs(10)),
        };
        let t0 = Instant::now();
        let mut out = RoomDelivery::default();
        for n in 0..3 {
            h.push_room(msg(n), t0, &policy, &mut out);
        }
        assert_eq!(out.dropped_bytes, 1);
        drained(&h);
        // A drain with nothing lost since the one before: caught up.
        h.push_room(msg(3), t0 + Duration::from_secs(1), &policy, &mut out);
        drained(&h);
        for n in 4..7 {
            h.push_room(msg(n), t0 + Duration::from_secs(30), &policy, &mut out);
        }
        assert_eq!(
            h.close_reason(),
            None,
            "a new hiccup starts a new lag period"
        );
        assert_eq!(drained(&h), vec![5, 6]);
    }

    #[test]
    fn the_room_table_counts_drops_in_total_and_per_room() {
        let table = RoomTable::new(RoomPolicy {
            bytes: cost(),
            age: Duration::from_secs(60),
            lag_disconnect: None,
        });
        let (a, b, c) = (handle(1), handle(2), handle(3));
        table.enter(1, 10, a.clone());
        table.enter(1, 10, b.clone());
        table.enter(1, 20, c.clone());
        for n in 0..4 {
            let d = table.deliver(1, 10, &msg(n), 1);
            assert_eq!(d.delivered, 1);
        }
        table.deliver(1, 20, &msg(0), 0);
        table.deliver(1, 20, &msg(1), 0);
        assert_eq!(table.drops.bytes.load(Ordering::Relaxed), 4);
        assert_eq!(table.top_dropped(10), vec![(1, 10, 3), (1, 20, 1)]);
        assert_eq!(table.top_dropped(1), vec![(1, 10, 3)]);
        assert_eq!(drained(&a), Vec::<u8>::new());
        assert_eq!(drained(&b), vec![3]);
    }
}
