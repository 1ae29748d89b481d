//! The local route table: which authenticated sessions of which `(appid, uid)` live on this node, and
//! each session's outbox — the bounded queue through which everyone else hands it frames.
//!
//! The table is sharded (a fixed number of `RwLock<HashMap>` shards keyed by a hash of the user), so
//! logins, logouts and deliveries to different users do not contend. An outbox is a mutex-protected
//! `VecDeque` plus a `Notify`; an idle outbox holds no allocation. When a session cannot keep up (its
//! outbox exceeds the configured frame or byte bound) it is marked for disconnection: producers never
//! wait for a slow consumer.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use proto::Metadata;
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

    fn cost(&self) -> usize {
        self.body.len() + if self.meta.is_some() { 44 } else { 12 }
    }
}

#[derive(Default)]
struct Outbox {
    queue: VecDeque<Push>,
    bytes: usize,
    /// Set when the session must be closed (overflow or kick); no more frames are accepted.
    closed: Option<&'static str>,
}

/// One authenticated session as seen by others: its identity and its outbox.
pub struct SessionHandle {
    pub conn_id: u64,
    pub appid: i64,
    pub uid: i64,
    pub device_id: i64,
    pub platform: u8,
    /// Counts as online for offline-push suppression (spec §7.2).
    pub online: bool,
    outbox: Mutex<Outbox>,
    notify: Notify,
    max_frames: usize,
    max_bytes: usize,
}

impl SessionHandle {
    pub fn new(
        conn_id: u64,
        appid: i64,
        uid: i64,
        device_id: i64,
        platform: u8,
        online: bool,
        max_frames: usize,
        max_bytes: usize,
    ) -> SessionHandle {
        SessionHandle {
            conn_id,
            appid,
            uid,
            device_id,
            platform,
            online,
            outbox: Mutex::new(Outbox::default()),
            notify: Notify::new(),
            max_frames,
            max_bytes,
        }
    }

    /// Queues `push` for this session. Returns false when the session is closing (the frame is dropped
    /// with it). A full outbox closes the session.
    pub fn push(&self, push: Push) -> bool {
        let mut ob = self.outbox.lock();
        if ob.closed.is_some() {
            return false;
        }
        let cost = push.cost();
        if ob.queue.len() >= self.max_frames || ob.bytes + cost > self.max_bytes {
            ob.closed = Some("outbox full: the client does not read fast enough");
            ob.queue = VecDeque::new();
            ob.bytes = 0;
            drop(ob);
            self.notify.notify_one();
            return false;
        }
        ob.bytes += cost;
        let was_empty = ob.queue.is_empty();
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
        !ob.queue.is_empty() || ob.closed.is_some()
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
        None
    }
}

const SHARDS: usize = 64;

type UserKey = (i64, i64);

/// Sessions by user, sharded.
pub struct RouteTable {
    shards: Box<[RwLock<HashMap<UserKey, Vec<Arc<SessionHandle>>>>]>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for RouteTable {
    fn default() -> Self {
        RouteTable {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }
}

impl RouteTable {
    fn shard(&self, key: &UserKey) -> &RwLock<HashMap<UserKey, Vec<Arc<SessionHandle>>>> {
        let mut h = self.hasher.build_hasher();
        key.hash(&mut h);
        &self.shards[(h.finish() as usize) % SHARDS]
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

    /// Whether the user has a session here that counts as online.
    pub fn is_online(&self, appid: i64, uid: i64) -> bool {
        let mut online = false;
        self.for_each(appid, uid, |s| online |= s.online);
        online
    }

    /// (distinct users, sessions), optionally restricted to one app.
    pub fn counts(&self, appid: Option<i64>) -> (usize, usize) {
        let (mut users, mut sessions) = (0, 0);
        for shard in self.shards.iter() {
            for (k, v) in shard.read().iter() {
                if appid.is_none_or(|a| a == k.0) {
                    users += 1;
                    sessions += v.len();
                }
            }
        }
        (users, sessions)
    }

    /// Every session, for shutdown.
    pub fn all(&self) -> Vec<Arc<SessionHandle>> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            for v in shard.read().values() {
                out.extend(v.iter().cloned());
            }
        }
        out
    }
}
