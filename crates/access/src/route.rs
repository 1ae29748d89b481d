//! The local route table: which authenticated sessions of which `(appid, uid)` live on this node, and
//! each session's outbox — the bounded queue through which everyone else hands it frames.
//!
//! The table is sharded (a fixed number of `RwLock<HashMap>` shards keyed by a hash of the user), so
//! logins, logouts and deliveries to different users do not contend. An outbox is a mutex-protected
//! `VecDeque` plus a `Notify`; an idle outbox holds no allocation. When a session cannot keep up (its
//! outbox exceeds the configured frame or byte bound) it is marked for disconnection: producers never
//! wait for a slow consumer.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use backend::groups::Group;
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use proto::{cmd, Body, GroupSyncKey, Metadata};
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
    /// Room messages: bounded separately; the oldest is dropped when full (rooms promise no delivery).
    room: VecDeque<Push>,
    /// Set when the session must be closed (overflow or kick); no more frames are accepted.
    closed: Option<&'static str>,
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

/// Bounds of a session's outbox.
#[derive(Debug, Clone, Copy)]
pub struct OutboxLimits {
    pub frames: usize,
    pub bytes: usize,
    pub room_frames: usize,
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
    max_frames: usize,
    max_bytes: usize,
    max_room: usize,
    room_dropped: AtomicU64,
}

/// The close reason of a session whose outbox overflowed (a slow consumer).
pub(crate) const OUTBOX_FULL: &str = "outbox full: the client does not read fast enough";

/// The close reason of a session whose token was revoked or whose user the operator disconnected.
pub const KICKED: &str = "the session's token was revoked or its user disconnected by the operator";

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
            max_frames: limits.frames,
            max_bytes: limits.bytes,
            max_room: limits.room_frames,
            room_dropped: AtomicU64::new(0),
        }
    }

    pub fn is_forbidden(&self) -> bool {
        self.forbidden.load(Ordering::Relaxed)
    }

    /// Room messages dropped because this session's room backlog was full.
    pub fn room_dropped(&self) -> u64 {
        self.room_dropped.load(Ordering::Relaxed)
    }

    /// Queues a room message. A slow member's room backlog is bounded: when full, its oldest room message
    /// is dropped (and counted) instead of growing or stalling the room. Returns (queued, dropped one).
    pub fn push_room(&self, push: Push) -> (bool, bool) {
        let mut ob = self.outbox.lock();
        if ob.closed.is_some() {
            return (false, false);
        }
        let was_empty = ob.queue.is_empty() && ob.room.is_empty();
        let mut dropped = false;
        if ob.room.len() >= self.max_room {
            ob.room.pop_front();
            self.room_dropped.fetch_add(1, Ordering::Relaxed);
            dropped = true;
        }
        ob.room.push_back(push);
        drop(ob);
        if was_empty {
            self.notify.notify_one();
        }
        (true, dropped)
    }

    /// Queues `push` for this session. Returns false when the session is closing (the frame is dropped
    /// with it). A full outbox closes the session.
    pub fn push(&self, push: Push) -> bool {
        let mut ob = self.outbox.lock();
        if ob.closed.is_some() {
            return false;
        }
        let cost = push.wire_len();
        if ob.queue.len() >= self.max_frames || ob.bytes + cost > self.max_bytes {
            ob.closed = Some(OUTBOX_FULL);
            ob.queue = VecDeque::new();
            ob.bytes = 0;
            drop(ob);
            self.notify.notify_one();
            return false;
        }
        ob.bytes += cost;
        let was_empty = ob.queue.is_empty() && ob.room.is_empty();
        ob.queue.push_back(push);
        drop(ob);
        if was_empty {
            self.notify.notify_one();
        }
        true
    }

    /// Asks the session to close (e.g. token revoked, server shutting down).
    pub fn close(&self, reason: &'static str) {
        let mut ob = self.outbox.lock();
        if ob.closed.is_none() {
            ob.closed = Some(reason);
        }
        drop(ob);
        self.notify.notify_one();
    }

    /// Whether frames are queued or the session must close.
    pub fn has_pending(&self) -> bool {
        let ob = self.outbox.lock();
        !ob.queue.is_empty() || !ob.room.is_empty() || ob.closed.is_some()
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
        into.extend(ob.room.drain(..));
        ob.bytes = 0;
        if ob.queue.capacity() > 64 {
            ob.queue = VecDeque::new();
        }
        if ob.room.capacity() > 64 {
            ob.room = VecDeque::new();
        }
        None
    }
}

const SHARDS: usize = 64;

type SessionMap<K> = HashMap<K, Vec<Arc<SessionHandle>>>;

/// Sessions by key, in independently locked shards.
struct Shards<K> {
    shards: Box<[RwLock<SessionMap<K>>]>,
    hasher: RandomState,
}

impl<K: Hash + Eq> Default for Shards<K> {
    fn default() -> Self {
        Shards {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl<K: Hash + Eq> Shards<K> {
    fn shard(&self, key: &K) -> &RwLock<SessionMap<K>> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }
}

type UserKey = (i64, i64);

/// Sessions by user, sharded.
#[derive(Default)]
pub struct RouteTable {
    map: Shards<UserKey>,
}

impl RouteTable {
    fn shard(&self, key: &UserKey) -> &RwLock<SessionMap<UserKey>> {
        self.map.shard(key)
    }

    pub fn add(&self, s: Arc<SessionHandle>) {
        let key = (s.appid, s.uid);
        self.shard(&key).write().entry(key).or_default().push(s);
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

/// Sessions by chat room `(appid, room_id)`, sharded. A connection is in at most one room.
#[derive(Default)]
pub struct RoomTable {
    map: Shards<RoomKey>,
}

impl RoomTable {
    fn shard(&self, key: &RoomKey) -> &RwLock<SessionMap<RoomKey>> {
        self.map.shard(key)
    }

    /// Adds the session to the room. Another connection of the same user and device (device id > 0)
    /// already in the room is displaced; its id is returned so the caller can tell it.
    pub fn enter(&self, appid: i64, room: i64, s: Arc<SessionHandle>) -> Option<u64> {
        let key = (appid, room);
        let mut shard = self.shard(&key).write();
        let members = shard.entry(key).or_default();
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
        let Some(members) = shard.get_mut(&key) else {
            return false;
        };
        let before = members.len();
        members.retain(|m| m.conn_id != conn_id);
        let removed = members.len() != before;
        if members.is_empty() {
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
            .is_some_and(|m| m.iter().any(|s| s.conn_id == conn_id))
    }

    /// Queues `push` for everyone in the room but connection `except`; returns (how many got it, how many
    /// slow members dropped an older room message for it).
    pub fn deliver(&self, appid: i64, room: i64, push: &Push, except: u64) -> (usize, usize) {
        let key = (appid, room);
        let shard = self.shard(&key).read();
        let Some(members) = shard.get(&key) else {
            return (0, 0);
        };
        let (mut n, mut dropped) = (0, 0);
        for m in members {
            if m.conn_id != except {
                let (queued, d) = m.push_room(push.clone());
                n += queued as usize;
                dropped += d as usize;
            }
        }
        (n, dropped)
    }

    /// (rooms, connections in rooms) of one app, and rooms with at least `big` connections.
    pub fn stats(&self, appid: i64, big: usize) -> (usize, usize, Vec<(i64, usize)>) {
        let (mut rooms, mut conns, mut large) = (0, 0, Vec::new());
        for shard in self.map.shards.iter() {
            for ((a, room), members) in shard.read().iter() {
                if *a == appid {
                    rooms += 1;
                    conns += members.len();
                    if members.len() >= big {
                        large.push((*room, members.len()));
                    }
                }
            }
        }
        (rooms, conns, large)
    }
}
