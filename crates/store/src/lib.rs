//! banter's message store engine (the `ims` role): one durable append-only log per store, with
//! per-user and per-super-group queues threaded through it.
//!
//! * **Log** ([`format`], `log`): segmented append-only files of CRC32C-framed records. One
//!   record per message; its body is stored once, followed by one 56-byte entry per queue it was
//!   appended to. `docs/storage-format.md` documents every byte.
//! * **Keys**: an entry's sync key is the log position of the entry itself, so keys are unique,
//!   strictly increasing within a queue (also when one message lists a queue twice) and identical
//!   on every replica.
//! * **Navigation** (`read`): each entry links to the previous entry of its queue, to the previous
//!   non-group entry (the peer-only chain) and to a skew-binary jump target, so `sync(after)`
//!   reaches any point of a queue in O(log n) reads and then reads only what it returns.
//! * **Writer** (`writer`, `syncer`): group commit in two pipelined threads. The writer drains
//!   every pending submission (`submit`), encodes them into one buffer and writes it; the sync
//!   thread issues one `fdatasync` covering everything written so far, then publishes the new
//!   entries to readers and completes every ticket. While one batch is being fsynced the next is
//!   already being encoded. Each thread owns its state; what they share is the read side
//!   (`shared`), behind methods.
//!   Segments are preallocated with zeros in the background (`prealloc`) so that an `fdatasync`
//!   does not also have to commit file-size changes.
//! * **Recovery** (`recovery`, `checkpoint`): queue heads live in memory and are checkpointed
//!   atomically in the background; start-up loads the newest valid checkpoint and replays only
//!   the log written after it. A torn tail is truncated; corruption elsewhere stops start-up.
//! * **Replication** (`replication`): followers pull the log by position; a stream switches from
//!   catch-up to live without a gap or a duplicate because it only ever reads by position. A
//!   promotion continues the log at least 1 TiB higher (a JUMP record), so no key is ever handed
//!   out twice across fail-overs; in `sync` replication a commit index bounds what readers see and
//!   unconfirmed records can be withdrawn (WITHDRAW records set their queues back).
//! * **Tools** ([`tools`]) and the **benchmark** ([`bench`]).
//! * **Migration from GoBelieve** ([`gobelieve`]): reading its `ims` data directories, the
//!   import, and the translation of GoBelieve sync keys on a client's first sync.
//!
//! The API is synchronous and thread-safe; [`AppendTicket`] can also be awaited from tokio.

#![deny(unsafe_code)]

pub mod bench;
mod checkpoint;
mod control;
mod engine;
mod error;
mod figures;
pub mod format;
pub mod gobelieve;
mod health;
mod lock;
mod log;
mod options;
mod prealloc;
mod queue;
mod read;
mod recovery;
mod replication;
mod resources;
mod resume;
pub mod settings;
mod shared;
mod submit;
mod syncer;
pub mod tools;
mod window;
mod writer;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;

pub use engine::{Store, StoreStats};
pub use error::StoreError;
pub use figures::{Figure, FigureKind};
pub use health::{StoreHealth, StoreState};
pub use log::ReplicationBatch;
pub use options::{Durability, Retention, Role, StoreHistograms, StoreOptions};
pub use replication::ReplicationStream;
pub use settings::{DurabilityMode, StoreSettings};

/// GROUP_IM command number; its content is a group message (not on the peer-only chain).
pub const CMD_GROUP_IM: u8 = 8;
/// MESSAGE_FLAG_GROUP: set by callers on group content of other commands.
pub const FLAG_GROUP: u8 = 0x04;

/// A queue: a user's personal queue or a super group's queue, within an app.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QueueId {
    User { appid: i64, uid: i64 },
    Group { appid: i64, gid: i64 },
}

impl QueueId {
    /// The personal queue of `(appid, uid)`.
    pub fn user(appid: i64, uid: i64) -> QueueId {
        QueueId::User { appid, uid }
    }

    /// The queue of super group `(appid, gid)`.
    pub fn group(appid: i64, gid: i64) -> QueueId {
        QueueId::Group { appid, gid }
    }
}

/// One message to append. Its content is stored once even when it goes to several queues.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewMessage {
    /// Queues to append to, in order. The same queue may appear more than once.
    pub queues: Vec<QueueId>,
    /// Sender's device id (0 for HTTP or system origin).
    pub device_id: i64,
    pub cmd: u8,
    pub flag: u8,
    /// Unix seconds.
    pub timestamp: i64,
    pub body: Bytes,
    /// What makes a retry of this append the same append: a store that already holds a message
    /// with this key (within its window, `docs/storage-format.md` §4.3) answers the original
    /// positions and stores nothing. `None`: every append is new.
    pub key: Option<AppendKey>,
}

/// The idempotency key of an append (`docs/storage-format.md` §4.3): 40 opaque bytes. Two kinds
/// are made here — a client's (the sender's own message id, which clients reuse when they resend
/// an unacknowledged message) and a server-assigned one (an origin and a counter, reused by the
/// appender's own retries) — but the store only compares the bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppendKey(pub [u8; APPEND_KEY_LEN]);

/// Bytes of an [`AppendKey`].
pub const APPEND_KEY_LEN: usize = 40;

impl AppendKey {
    /// Kind byte of a client-derived key.
    pub const KIND_CLIENT: u8 = 1;
    /// Kind byte of a server-assigned key.
    pub const KIND_SERVER: u8 = 2;

    /// The key of a client's message: its app, sender, the session's device id, the command,
    /// the client's own message id (non-zero) and a checksum of the content, so that a client
    /// reusing an id for other content (e.g. after a reinstall) is not taken for a retry.
    pub fn client(
        appid: i64,
        uid: i64,
        device_id: i64,
        cmd: u8,
        msgid: i32,
        content: &[u8],
    ) -> Self {
        let mut k = [0u8; APPEND_KEY_LEN];
        k[0] = Self::KIND_CLIENT;
        k[1] = cmd;
        k[4..8].copy_from_slice(&msgid.to_le_bytes());
        k[8..16].copy_from_slice(&appid.to_le_bytes());
        k[16..24].copy_from_slice(&uid.to_le_bytes());
        k[24..32].copy_from_slice(&device_id.to_le_bytes());
        k[32..36].copy_from_slice(&crc32c::crc32c(content).to_le_bytes());
        AppendKey(k)
    }

    /// A server-assigned key: `origin` names the appender (random per process), `seq` counts
    /// its logical appends.
    pub fn server(origin: u64, seq: u64) -> Self {
        let mut k = [0u8; APPEND_KEY_LEN];
        k[0] = Self::KIND_SERVER;
        k[8..16].copy_from_slice(&origin.to_le_bytes());
        k[16..24].copy_from_slice(&seq.to_le_bytes());
        AppendKey(k)
    }
}

impl std::fmt::Debug for AppendKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AppendKey(")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        f.write_str(")")
    }
}

impl NewMessage {
    /// Whether this is group content (GROUP_IM, or flagged [`FLAG_GROUP`]): such entries are not
    /// on the peer-only chain of a user queue.
    pub fn is_group_content(&self) -> bool {
        self.cmd == CMD_GROUP_IM || self.flag & FLAG_GROUP != 0
    }
}

/// Where one queue entry landed. `prev_key` is the key of the previous entry of the same queue,
/// 0 if none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub key: i64,
    pub prev_key: i64,
    /// The entry was stored by an earlier append with the same [`AppendKey`]: this append wrote
    /// nothing and `key` / `prev_key` are the original's.
    pub stored_before: bool,
}

/// One entry read back from a queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    pub key: i64,
    pub prev_key: i64,
    pub device_id: i64,
    pub cmd: u8,
    pub flag: u8,
    pub timestamp: i64,
    pub body: Bytes,
}

/// The answer to a sync.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncPage {
    /// Oldest first.
    pub messages: Vec<StoredMessage>,
    /// Key of the newest entry returned (or, for `sync_since`, examined), else `after_key`.
    pub last_key: i64,
    /// More entries follow `last_key`.
    pub has_more: bool,
    /// Newest key in the queue, 0 if the queue is empty.
    pub queue_last_key: i64,
}

/// The pending result of a submission: await it from async code or [`Ticket::wait`] from a
/// plain thread.
#[must_use = "a ticket does nothing unless waited for or awaited"]
pub struct Ticket<T> {
    rx: tokio::sync::oneshot::Receiver<Result<T, StoreError>>,
}

/// Ticket of [`Store::append`]: for each message, one [`Appended`] per queue, in order.
pub type AppendTicket = Ticket<Vec<Vec<Appended>>>;

impl<T> Ticket<T> {
    pub(crate) fn new(rx: tokio::sync::oneshot::Receiver<Result<T, StoreError>>) -> Self {
        Ticket { rx }
    }

    pub(crate) fn ready(r: Result<T, StoreError>) -> Self {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = tx.send(r);
        Ticket { rx }
    }

    /// Blocks the current thread until the result is ready.
    ///
    /// Must not be called from inside an async runtime thread (await the ticket there).
    pub fn wait(self) -> Result<T, StoreError> {
        self.rx.blocking_recv().unwrap_or(Err(StoreError::Closed))
    }

    /// The result, if it is ready.
    pub fn try_take(&mut self) -> Option<Result<T, StoreError>> {
        match self.rx.try_recv() {
            Ok(r) => Some(r),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => None,
            Err(tokio::sync::oneshot::error::TryRecvError::Closed) => Some(Err(StoreError::Closed)),
        }
    }
}

impl<T> Future for Ticket<T> {
    type Output = Result<T, StoreError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(StoreError::Closed)))
    }
}
