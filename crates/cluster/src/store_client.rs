//! The access side of the store link: [`StorePool`], a few pipelined connections to one store
//! node, and [`RemoteStore`], the sharded view over every store node that the access node uses
//! in place of an in-process `Store`.
//!
//! A pool keeps up to `connections` TCP connections and spreads requests over them round-robin;
//! each connection carries many requests at once (`seq` = request id, replies matched by id,
//! answered in any order). Requests leave a connection in the order they were made: a caller
//! registers and queues its frame before its first await, and the connection's writer sends
//! queued frames in that order, holding back while `max_in_flight_per_conn` requests await their
//! reply (it does not hand out permits that waiting callers would then use in wake-up order).
//! Appends all use the pool's first connection and the store node submits them in arrival order,
//! so two appends to one queue are stored in the order they were made. A request abandoned
//! (timed out, cancelled) before the writer reached it is never sent. Every request has a deadline (connect, send and reply
//! included). A connection that fails is dropped and re-dialled on demand, with exponential
//! back-off between failed dials so a dead store costs callers nothing but a fast
//! [`RemoteStoreError::Unavailable`]. Dropping a pool closes its connections once the requests
//! still using them have finished. A store's failures are logged once per episode (a line when
//! it starts failing, a summary with a count every 30 s, a line when it answers again), never
//! once per request.
//!
//! Sharding follows GoBelieve (docs/cluster.md, *Access nodes*): a user's personal queue lives on
//! `storage_addrs[|uid| mod N]`, a super group's queue on `group_storage_addrs[|gid| mod M]`
//! (which defaults to `storage_addrs`); the app id is not part of the key. `|id|` is
//! `unsigned_abs`, so `i64::MIN` does not overflow (#52).
//!
//! An append whose queues live on several stores is split: each store receives one message per
//! original message, holding only its queues, with the same body and the same idempotency key
//! (`NewMessage::key`; one is assigned here to a message without one); the parts are sent
//! concurrently and the results put back in the original queue order. The append succeeds only
//! if every part did. If one part fails, the others may already be stored (there is no
//! cross-store transaction): the caller gets the error and must treat the message as not
//! delivered; a retry with the same key completes only the missing parts — each store answers a
//! part it already holds with its original positions (`Appended::stored_before`). After a
//! `Timeout` or a lost connection the outcome of an append is unknown, and the same holds. Keys
//! go in `AppendKeyed` requests; a store that does not know them (an older banter) gets plain
//! `Append`s.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use parking_lot::{Mutex, RwLock};
use proto::Frame;
use smallvec::SmallVec;
use store::{AppendKey, Appended, NewMessage, QueueId, StoreError, StoredMessage, SyncPage};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::store_proto::{self as sp, BodyError, ErrorCode, PingInfo, Request};
use futures_util::StreamExt;
use node::backoff::Backoff as Delays;
use node::episode::{Episode, FailureLog};
use node::frame::{frame_reader, FrameError, MAX_COALESCE};

/// What went wrong talking to a store node. Says whose fault it was: the network or the node
/// being down (`Timeout`, `Unavailable`), the store itself (`Remote`, with the store's error
/// code), a peer that does not speak the protocol (`Protocol`) or our configuration (`Config`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteStoreError {
    /// No reply within the request timeout. For an append the outcome is unknown.
    #[error("store {addr} did not answer within {} ms", after.as_millis())]
    Timeout { addr: String, after: Duration },
    /// The store cannot be reached (connect failed, connection lost, or dialling is backing off
    /// after failures). For an append whose connection was lost the outcome is unknown.
    #[error("store {addr} is unavailable: {reason}")]
    Unavailable { addr: String, reason: String },
    /// The store answered with an error.
    #[error("store {addr} refused the request ({code}): {message}")]
    Remote {
        addr: String,
        code: ErrorCode,
        message: String,
    },
    /// The store's reply did not follow the protocol.
    #[error("store {addr} broke the store link protocol: {reason}")]
    Protocol { addr: String, reason: String },
    /// Invalid client configuration (e.g. no store addresses).
    #[error("invalid store client configuration: {0}")]
    Config(String),
}

impl RemoteStoreError {
    /// The store's error code, for `Remote` errors.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            RemoteStoreError::Remote { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl From<RemoteStoreError> for StoreError {
    /// Maps a remote failure onto the store's own error kinds, so code written against the
    /// in-process store keeps working: the store's refusals keep their kind; transport failures
    /// become `Io` errors naming the store's address.
    fn from(e: RemoteStoreError) -> StoreError {
        let io = |addr: &str, kind: std::io::ErrorKind, msg: String| StoreError::Io {
            op: "store link request",
            path: addr.into(),
            offset: None,
            source: std::io::Error::new(kind, msg),
        };
        match e {
            RemoteStoreError::Remote {
                addr,
                code,
                message,
            } => match code {
                ErrorCode::Poisoned => StoreError::Poisoned(message),
                ErrorCode::Overloaded => StoreError::Overloaded(message),
                ErrorCode::NotLeader => StoreError::NotLeader,
                ErrorCode::InvalidArgument => StoreError::InvalidArgument(message),
                ErrorCode::Closed => StoreError::Closed,
                _ => io(
                    &addr,
                    std::io::ErrorKind::Other,
                    format!("{code}: {message}"),
                ),
            },
            RemoteStoreError::Timeout { ref addr, .. } => {
                io(addr, std::io::ErrorKind::TimedOut, e.to_string())
            }
            RemoteStoreError::Unavailable { ref addr, .. } => {
                io(addr, std::io::ErrorKind::NotConnected, e.to_string())
            }
            RemoteStoreError::Protocol { ref addr, .. } => {
                io(addr, std::io::ErrorKind::InvalidData, e.to_string())
            }
            RemoteStoreError::Config(m) => StoreError::InvalidArgument(m),
        }
    }
}

/// How often a store that keeps failing gets a summary log line.
const FAILURE_SUMMARY_EVERY: Duration = Duration::from_secs(30);

/// Settings of a [`StorePool`] (and of every pool of a [`RemoteStore`]).
#[derive(Debug, Clone)]
pub struct StorePoolOptions {
    /// Connections per store address. Default 4.
    pub connections: usize,
    /// Deadline of one request, dialling included. Default 5 s. Keep it above the stores'
    /// `sync_timeout_ms` in `sync` replication mode, so that a store's `replication_timeout`
    /// answer arrives before the client gives up. A connection on which nothing at all was
    /// received while a request timed out is closed and re-dialled.
    pub request_timeout: Duration,
    /// Deadline of one dial. Default 2 s.
    pub connect_timeout: Duration,
    /// Largest reply body accepted. Must be at least the server's `max_frame_bytes`. Default
    /// 16 MiB.
    pub max_frame_bytes: usize,
    /// Most requests waiting for a reply on one connection. Default 1024.
    pub max_in_flight_per_conn: usize,
    /// First wait before re-dialling after a failed dial (plus jitter); doubles up to `backoff_max`.
    /// Default 100 ms.
    pub backoff_min: Duration,
    /// Longest wait between dials. Default 5 s.
    pub backoff_max: Duration,
}

impl Default for StorePoolOptions {
    fn default() -> Self {
        StorePoolOptions {
            connections: 4,
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            max_frame_bytes: crate::store_proto::DEFAULT_MAX_FRAME_BYTES,
            max_in_flight_per_conn: 1024,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// A request waiting for its reply.
struct Waiter {
    tx: oneshot::Sender<Result<Frame, RemoteStoreError>>,
    /// When it fails with `Timeout` (see [`sweep`]).
    deadline: Instant,
    /// Frames received on the connection when it was registered.
    received: u64,
}

/// Requests waiting for their reply on one connection.
struct Pending {
    waiters: HashMap<i32, Waiter>,
    /// Why the connection is dead, once it is.
    dead: Option<String>,
}

/// How many requests of one connection await their reply; the writer holds back at the limit.
struct Window {
    in_flight: AtomicUsize,
    max: usize,
    /// Signalled by the reader whenever a reply frees a place.
    freed: Notify,
}

impl Window {
    fn reply_received(&self) {
        // Saturating: a store that sends a reply nobody asked for must not wrap the count.
        let _ = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        self.freed.notify_one();
    }
}

struct Conn {
    /// Frames to send, with their request ids, in the order they were made.
    tx: mpsc::UnboundedSender<(i32, Bytes)>,
    pending: Arc<Mutex<Pending>>,
    next_seq: AtomicI32,
    dead: Arc<AtomicBool>,
    /// Frames received on this connection so far.
    received: Arc<AtomicU64>,
}

impl Conn {
    fn alive(&self) -> bool {
        !self.dead.load(Ordering::Acquire)
    }

    /// Registers a waiter under a fresh request id, failing with `Timeout` at `deadline`.
    fn register(
        &self,
        addr: &str,
        deadline: Instant,
    ) -> Result<(i32, oneshot::Receiver<Result<Frame, RemoteStoreError>>), RemoteStoreError> {
        let (tx, rx) = oneshot::channel();
        let waiter = Waiter {
            tx,
            deadline,
            received: self.received.load(Ordering::Relaxed),
        };
        let mut p = self.pending.lock();
        if let Some(why) = &p.dead {
            return Err(RemoteStoreError::Unavailable {
                addr: addr.to_string(),
                reason: why.clone(),
            });
        }
        loop {
            let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
            if let std::collections::hash_map::Entry::Vacant(v) = p.waiters.entry(seq) {
                v.insert(waiter);
                return Ok((seq, rx));
            }
        }
    }
}

/// Removes a waiter when its request ends any way other than by its reply (timeout, caller
/// cancelled).
struct WaiterGuard<'a> {
    pending: &'a Mutex<Pending>,
    seq: i32,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.pending.lock().waiters.remove(&self.seq);
    }
}

struct Backoff {
    next_attempt: Option<Instant>,
    delays: Delays,
    last_error: String,
}

/// Pipelined connections to one store node.
pub struct StorePool {
    addr: String,
    opts: StorePoolOptions,
    slots: Vec<Mutex<Option<Arc<Conn>>>>,
    rr: AtomicUsize,
    dialing: tokio::sync::Mutex<()>,
    backoff: Mutex<Backoff>,
    /// Failures of this store, logged once per episode.
    episode: Episode,
    /// The store answered `AppendKeyed` as unsupported (an older banter): appends go without
    /// keys.
    keyless: AtomicBool,
}

impl StorePool {
    /// A pool for the store at `addr` (`host:port`). Connections are dialled on first use.
    pub fn new(addr: impl Into<String>, opts: StorePoolOptions) -> StorePool {
        let n = opts.connections.max(1);
        StorePool {
            addr: addr.into(),
            slots: (0..n).map(|_| Mutex::new(None)).collect(),
            rr: AtomicUsize::new(0),
            dialing: tokio::sync::Mutex::new(()),
            backoff: Mutex::new(Backoff {
                next_attempt: None,
                delays: Delays::new(opts.backoff_min, opts.backoff_max),
                last_error: String::new(),
            }),
            episode: Episode::new(FAILURE_SUMMARY_EVERY),
            keyless: AtomicBool::new(false),
            opts,
        }
    }

    /// The store's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Connections currently open.
    pub fn open_connections(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.lock().as_ref().is_some_and(|c| c.alive()))
            .count()
    }

    fn alive_in(&self, i: usize) -> Option<Arc<Conn>> {
        self.slots[i].lock().as_ref().filter(|c| c.alive()).cloned()
    }

    /// A live connection: the next slot round-robin (slot 0 for appends, see [`Self::call`]),
    /// dialled if needed, else any live one.
    async fn conn(&self, ordered: bool) -> Result<Arc<Conn>, RemoteStoreError> {
        let n = self.slots.len();
        let i = if ordered {
            0
        } else {
            self.rr.fetch_add(1, Ordering::Relaxed) % n
        };
        if let Some(c) = self.alive_in(i) {
            return Ok(c);
        }
        let may_dial = self
            .backoff
            .lock()
            .next_attempt
            .is_none_or(|t| Instant::now() >= t);
        if may_dial {
            let _g = self.dialing.lock().await;
            if let Some(c) = self.alive_in(i) {
                return Ok(c);
            }
            let allowed = self
                .backoff
                .lock()
                .next_attempt
                .is_none_or(|t| Instant::now() >= t);
            if allowed {
                match self.dial().await {
                    Ok(c) => {
                        let mut b = self.backoff.lock();
                        b.next_attempt = None;
                        b.delays.reset();
                        drop(b);
                        *self.slots[i].lock() = Some(c.clone());
                        return Ok(c);
                    }
                    Err(why) => {
                        tracing::debug!(addr = %self.addr, error = %why, "store dial failed");
                        let mut b = self.backoff.lock();
                        b.next_attempt = Some(Instant::now() + b.delays.next_delay());
                        b.last_error = why;
                    }
                }
            }
        }
        for k in 1..n {
            if let Some(c) = self.alive_in((i + k) % n) {
                return Ok(c);
            }
        }
        let reason = {
            let b = self.backoff.lock();
            if b.last_error.is_empty() {
                "no connection".to_string()
            } else {
                format!("{} (retrying with back-off)", b.last_error)
            }
        };
        Err(RemoteStoreError::Unavailable {
            addr: self.addr.clone(),
            reason,
        })
    }

    async fn dial(&self) -> Result<Arc<Conn>, String> {
        let stream =
            match tokio::time::timeout(self.opts.connect_timeout, TcpStream::connect(&self.addr))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(format!("connect failed: {e}")),
                Err(_) => {
                    return Err(format!(
                        "connect timed out after {} ms",
                        self.opts.connect_timeout.as_millis()
                    ))
                }
            };
        node::net::set_socket_options(&stream, None);
        let (rd, wr) = stream.into_split();
        let (tx, rx) = mpsc::unbounded_channel::<(i32, Bytes)>();
        let pending = Arc::new(Mutex::new(Pending {
            waiters: HashMap::new(),
            dead: None,
        }));
        let dead = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let conn = Arc::new(Conn {
            tx,
            pending: pending.clone(),
            next_seq: AtomicI32::new(1),
            dead: dead.clone(),
            received: received.clone(),
        });
        let window = Arc::new(Window {
            in_flight: AtomicUsize::new(0),
            max: self.opts.max_in_flight_per_conn.max(1),
            freed: Notify::new(),
        });
        let max = self.opts.max_frame_bytes;
        let addr = self.addr.clone();
        let timeout = self.opts.request_timeout;
        // The task holds only the waiters, not the connection: dropping the last `Conn` drops
        // the sender, which ends the writer and with it this task and the socket.
        tokio::spawn(async move {
            let reader = async {
                let mut frames = frame_reader(rd, max);
                loop {
                    match frames.next().await.transpose() {
                        Ok(Some(f)) => {
                            received.fetch_add(1, Ordering::Relaxed);
                            window.reply_received();
                            if f.flag & sp::FLAG_REPLY == 0 {
                                return "peer sent a request frame on a client connection"
                                    .to_string();
                            }
                            let w = pending.lock().waiters.remove(&f.seq);
                            if let Some(w) = w {
                                let _ = w.tx.send(Ok(f));
                            }
                        }
                        Ok(None) => return "connection closed by the store".to_string(),
                        Err(FrameError::Io(e)) => return format!("connection lost: {e}"),
                        Err(e) => return format!("bad reply stream: {e}"),
                    }
                }
            };
            let why = tokio::select! {
                why = reader => why,
                why = sweep(&pending, &received, &addr, timeout) => why,
                w = write_requests(wr, rx, &pending, &window) => match w {
                    Ok(()) => "connection closed".to_string(),
                    Err(e) => format!("write failed: {e}"),
                },
            };
            dead.store(true, Ordering::Release);
            let waiters: Vec<Waiter> = {
                let mut p = pending.lock();
                p.dead = Some(why.clone());
                p.waiters.drain().map(|(_, w)| w).collect()
            };
            if !waiters.is_empty() {
                tracing::warn!(addr = %addr, reason = %why, requests = waiters.len(), "store connection lost with requests in flight");
            } else {
                tracing::debug!(addr = %addr, reason = %why, "store connection closed");
            }
            for w in waiters {
                let _ = w.tx.send(Err(RemoteStoreError::Unavailable {
                    addr: addr.clone(),
                    reason: why.clone(),
                }));
            }
        });
        Ok(conn)
    }

    /// Sends `req` and returns the reply body, or the store's error. The deadline covers
    /// finding (or dialling) a connection and the reply; the wait for the reply has no timer of
    /// its own: the connection's [`sweep`] fails requests past their deadline.
    async fn call(&self, req: &Request) -> Result<Bytes, RemoteStoreError> {
        let timeout = self.opts.request_timeout;
        let deadline = Instant::now() + timeout;
        let timed_out = || RemoteStoreError::Timeout {
            addr: self.addr.clone(),
            after: timeout,
        };
        // Appends all go over one connection, where the store node submits them in arrival
        // order: two appends to one queue are stored in the order they were sent.
        let ordered = matches!(req, Request::Append(_) | Request::AppendKeyed(_));
        let r = async {
            // Ready at once unless it dials: no timer is set up then.
            let conn = match tokio::time::timeout(timeout, self.conn(ordered)).await {
                Ok(c) => c?,
                Err(_) => return Err(timed_out()),
            };
            // No await from here until the frame is queued: the queue order is the call order.
            let (seq, rx) = conn.register(&self.addr, deadline)?;
            let _guard = WaiterGuard {
                pending: &conn.pending,
                seq,
            };
            let mut b = BytesMut::with_capacity(proto::HEADER_LEN + req.body_len());
            proto::Header {
                len: req.body_len(),
                seq,
                cmd: req.cmd(),
                version: sp::LINK_VERSION,
                flag: 0,
            }
            .write(&mut b);
            req.encode_body(&mut b);
            if b.len() - proto::HEADER_LEN > self.opts.max_frame_bytes {
                return Err(RemoteStoreError::Config(format!(
                    "request of {} bytes exceeds the store link frame limit of {} bytes",
                    b.len() - proto::HEADER_LEN,
                    self.opts.max_frame_bytes
                )));
            }
            conn.tx
                .send((seq, b.freeze()))
                .map_err(|_| RemoteStoreError::Unavailable {
                    addr: self.addr.clone(),
                    reason: "connection closed".into(),
                })?;
            let frame = match rx.await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(RemoteStoreError::Unavailable {
                        addr: self.addr.clone(),
                        reason: "connection closed".into(),
                    })
                }
            };
            if frame.cmd != req.cmd() {
                return Err(self.protocol(format!(
                    "reply command {} to request command {}",
                    frame.cmd,
                    req.cmd()
                )));
            }
            if frame.flag & sp::FLAG_ERROR != 0 {
                let (code, message) =
                    sp::decode_error(frame.body).map_err(|e| self.protocol(e.to_string()))?;
                return Err(RemoteStoreError::Remote {
                    addr: self.addr.clone(),
                    code,
                    message,
                });
            }
            Ok(frame.body)
        }
        .await;
        self.note(&r);
        r
    }

    fn note(&self, r: &Result<Bytes, RemoteStoreError>) {
        let failed = match r {
            Ok(_) => None,
            Err(e @ (RemoteStoreError::Timeout { .. } | RemoteStoreError::Unavailable { .. })) => {
                Some(e)
            }
            Err(e @ RemoteStoreError::Remote { code, .. }) => match code {
                ErrorCode::InvalidArgument | ErrorCode::BadRequest | ErrorCode::Unsupported => None,
                _ => Some(e),
            },
            Err(e @ RemoteStoreError::Protocol { .. }) => Some(e),
            Err(RemoteStoreError::Config(_)) => None,
        };
        match failed {
            None => {
                if let Some(r) = self.episode.success() {
                    tracing::info!(addr = %self.addr, failed_requests = r.failures, after_secs = r.after_secs, "store answers again");
                }
            }
            Some(e) => match self.episode.failure() {
                FailureLog::Started => {
                    tracing::warn!(addr = %self.addr, error = %e, "store requests are failing; further failures are counted")
                }
                FailureLog::Ongoing { failures, for_secs } => {
                    tracing::warn!(addr = %self.addr, failures, for_secs, last_error = %e, "store requests are still failing")
                }
                FailureLog::Quiet => {
                    tracing::debug!(addr = %self.addr, error = %e, "store request failed")
                }
            },
        }
    }

    fn protocol(&self, reason: String) -> RemoteStoreError {
        RemoteStoreError::Protocol {
            addr: self.addr.clone(),
            reason,
        }
    }

    fn decoded<T>(&self, r: Result<T, BodyError>) -> Result<T, RemoteStoreError> {
        r.map_err(|e| self.protocol(e.to_string()))
    }

    /// Liveness, role and log end of the store.
    pub async fn ping(&self) -> Result<PingInfo, RemoteStoreError> {
        let b = self.call(&Request::Ping).await?;
        self.decoded(sp::decode_ping(b))
    }

    /// Appends `batch` to this store (every queue must live here).
    pub async fn append(
        &self,
        batch: Vec<NewMessage>,
    ) -> Result<Vec<Vec<Appended>>, RemoteStoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let keyed = batch.iter().any(|m| m.key.is_some()) && !self.keyless.load(Ordering::Relaxed);
        let mut req = if keyed {
            Request::AppendKeyed(batch)
        } else {
            Request::Append(batch)
        };
        let mut r = self.call(&req).await;
        if let (
            Request::AppendKeyed(_),
            Err(RemoteStoreError::Remote {
                code: ErrorCode::Unsupported,
                ..
            }),
        ) = (&req, &r)
        {
            // Nothing was stored: the store did not know the command.
            if !self.keyless.swap(true, Ordering::Relaxed) {
                tracing::warn!(store = %self.addr, "this store node does not know keyed appends (an older banter): appends to it go without idempotency keys, so a retried message may be stored twice until it is upgraded");
            }
            if let Request::AppendKeyed(b) = req {
                req = Request::Append(b);
            }
            r = self.call(&req).await;
        }
        let b = r?;
        let res = if matches!(req, Request::AppendKeyed(_)) {
            self.decoded(sp::decode_appended_keyed(b))?
        } else {
            self.decoded(sp::decode_appended(b))?
        };
        let shaped = match &req {
            Request::Append(b) | Request::AppendKeyed(b) => {
                res.len() == b.len() && res.iter().zip(b).all(|(r, m)| r.len() == m.queues.len())
            }
            _ => false,
        };
        if !shaped {
            return Err(self.protocol("append reply does not match the request's shape".into()));
        }
        Ok(res)
    }

    /// `Store::sync` on this store.
    pub async fn sync(
        &self,
        queue: QueueId,
        after: i64,
        limit: usize,
    ) -> Result<SyncPage, RemoteStoreError> {
        let b = self
            .call(&Request::Sync {
                queue,
                after,
                limit: clamp_u32(limit),
            })
            .await?;
        self.decoded(sp::decode_sync_page(b))
    }

    /// `Store::sync_since` on this store.
    pub async fn sync_since(
        &self,
        queue: QueueId,
        after: i64,
        limit: usize,
        join_ts: i64,
    ) -> Result<SyncPage, RemoteStoreError> {
        let b = self
            .call(&Request::SyncSince {
                queue,
                after,
                limit: clamp_u32(limit),
                join_ts,
            })
            .await?;
        self.decoded(sp::decode_sync_page(b))
    }

    /// `Store::latest` on this store.
    pub async fn latest(
        &self,
        queue: QueueId,
        n: usize,
    ) -> Result<Vec<StoredMessage>, RemoteStoreError> {
        let b = self
            .call(&Request::Latest {
                queue,
                n: clamp_u32(n),
            })
            .await?;
        self.decoded(sp::decode_messages(b))
    }

    /// `Store::latest_peer` on this store.
    pub async fn latest_peer(
        &self,
        queue: QueueId,
        n: usize,
    ) -> Result<Vec<StoredMessage>, RemoteStoreError> {
        let b = self
            .call(&Request::LatestPeer {
                queue,
                n: clamp_u32(n),
            })
            .await?;
        self.decoded(sp::decode_messages(b))
    }

    /// `Store::new_count` on this store.
    pub async fn new_count(&self, queue: QueueId, after: i64) -> Result<u64, RemoteStoreError> {
        let b = self.call(&Request::NewCount { queue, after }).await?;
        self.decoded(sp::decode_u64(b))
    }

    /// `Store::last_key` on this store.
    pub async fn last_key(&self, queue: QueueId) -> Result<i64, RemoteStoreError> {
        let b = self.call(&Request::LastKey { queue }).await?;
        self.decoded(sp::decode_i64(b))
    }
}

/// The writer of one store connection: sends queued requests in order, as many per `write` as are
/// queued, while fewer than the window's limit await a reply. Requests whose caller has given up
/// (no waiter left) are skipped. Returns when the connection is dropped (after shutting down the
/// write side) or on the first write error.
/// How often a connection looks for requests past their deadline: a tenth of the request
/// timeout, within these bounds.
const SWEEP_MIN: Duration = Duration::from_millis(5);
const SWEEP_MAX: Duration = Duration::from_millis(250);

/// Fails a connection's requests past their deadline with `Timeout` (one timer per connection
/// instead of one per request). Returns, closing the connection, when a request timed out with
/// nothing at all received on the connection since it was made (a silent network partition):
/// later requests re-dial.
async fn sweep(
    pending: &Mutex<Pending>,
    received: &AtomicU64,
    addr: &str,
    timeout: Duration,
) -> String {
    let every = (timeout / 10).clamp(SWEEP_MIN, SWEEP_MAX);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let got = received.load(Ordering::Relaxed);
        let expired: Vec<Waiter> = pending
            .lock()
            .waiters
            .extract_if(|_, w| w.deadline <= now)
            .map(|(_, w)| w)
            .collect();
        let silent = expired.iter().any(|w| w.received == got);
        for w in expired {
            let _ = w.tx.send(Err(RemoteStoreError::Timeout {
                addr: addr.to_string(),
                after: timeout,
            }));
        }
        if silent {
            return "closed: a request timed out with no reply received on the connection"
                .to_string();
        }
    }
}

async fn write_requests<W: tokio::io::AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::UnboundedReceiver<(i32, Bytes)>,
    pending: &Mutex<Pending>,
    window: &Window,
) -> std::io::Result<()> {
    let mut buf = BytesMut::new();
    while let Some(first) = rx.recv().await {
        // Let the other tasks this worker has ready run first: sessions woken by the same
        // readiness event queue their requests too, and they leave in this one write.
        tokio::task::yield_now().await;
        let mut next = Some(first);
        while let Some((seq, frame)) = next.take() {
            while window.in_flight.load(Ordering::Acquire) >= window.max {
                if !buf.is_empty() {
                    w.write_all(&buf).await?;
                    buf.clear();
                }
                window.freed.notified().await;
            }
            if pending.lock().waiters.contains_key(&seq) {
                window.in_flight.fetch_add(1, Ordering::AcqRel);
                buf.extend_from_slice(&frame);
            }
            if buf.len() < MAX_COALESCE {
                next = rx.try_recv().ok();
            }
        }
        if !buf.is_empty() {
            w.write_all(&buf).await?;
            buf.clear();
        }
        if buf.capacity() > 4 * MAX_COALESCE {
            buf = BytesMut::new();
        }
    }
    w.shutdown().await
}

fn clamp_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The pools of one address configuration.
struct Shards {
    storage: Vec<Arc<StorePool>>,
    group: Vec<Arc<StorePool>>,
}

impl Shards {
    fn pool(&self, q: QueueId) -> &Arc<StorePool> {
        let (list, id) = match q {
            QueueId::User { uid, .. } => (&self.storage, uid),
            QueueId::Group { gid, .. } => (&self.group, gid),
        };
        // Both lists are non-empty (checked when they are set).
        &list[(id.unsigned_abs() % list.len() as u64) as usize]
    }
}

/// The sharded store as seen from an access node (docs/cluster.md, *Access nodes*). Mirrors the
/// in-process `Store`'s API with `async` methods returning [`RemoteStoreError`].
pub struct RemoteStore {
    opts: StorePoolOptions,
    shards: RwLock<Arc<Shards>>,
    /// This access node's part of the keys it assigns (random per process).
    origin: u64,
    /// Logical appends keyed so far.
    keyed: AtomicU64,
}

impl RemoteStore {
    /// A sharded store over `storage_addrs` (personal queues) and `group_storage_addrs`
    /// (super-group queues; empty = same as `storage_addrs`). Nothing is dialled yet.
    pub fn new(
        storage_addrs: Vec<String>,
        group_storage_addrs: Vec<String>,
        opts: StorePoolOptions,
    ) -> Result<RemoteStore, RemoteStoreError> {
        let shards = build_shards(&opts, &storage_addrs, &group_storage_addrs, None)?;
        Ok(RemoteStore {
            opts,
            shards: RwLock::new(Arc::new(shards)),
            origin: rand::random(),
            keyed: AtomicU64::new(0),
        })
    }

    /// Replaces the address lists (e.g. after a fail-over). Requests started afterwards use the
    /// new lists; requests in flight finish on the connections they started on. Pools of
    /// addresses present in both configurations are kept, with their connections.
    pub fn set_addrs(
        &self,
        storage_addrs: Vec<String>,
        group_storage_addrs: Vec<String>,
    ) -> Result<(), RemoteStoreError> {
        let old = self.shards.read().clone();
        let new = build_shards(&self.opts, &storage_addrs, &group_storage_addrs, Some(&old))?;
        *self.shards.write() = Arc::new(new);
        Ok(())
    }

    /// The current address lists: (storage, group storage).
    pub fn addrs(&self) -> (Vec<String>, Vec<String>) {
        let s = self.shards.read().clone();
        (
            s.storage.iter().map(|p| p.addr.clone()).collect(),
            s.group.iter().map(|p| p.addr.clone()).collect(),
        )
    }

    /// The pool holding `queue`.
    pub fn pool_for(&self, queue: QueueId) -> Arc<StorePool> {
        self.shards.read().pool(queue).clone()
    }

    /// Pings every distinct store address.
    pub async fn ping_all(&self) -> Vec<(String, Result<PingInfo, RemoteStoreError>)> {
        let s = self.shards.read().clone();
        let mut seen = std::collections::HashSet::new();
        let pools: Vec<Arc<StorePool>> = s
            .storage
            .iter()
            .chain(s.group.iter())
            .filter(|p| seen.insert(p.addr.clone()))
            .cloned()
            .collect();
        let futs = pools
            .iter()
            .map(|p| async move { (p.addr.clone(), p.ping().await) });
        futures_util::future::join_all(futs).await
    }

    /// Appends `batch`, splitting messages whose queues live on several stores (see the module
    /// docs). For each message, one [`Appended`] per queue in the message's queue order. A
    /// message without a key gets one assigned here (every part of it carries the same key).
    /// Parts refused for a passing reason (a store unreachable, not the leader, closing,
    /// overloaded) are sent again, with the same key and to the shard's current address, for up
    /// to [`APPEND_RETRY_FOR`]; parts already stored are not sent again.
    pub async fn append(
        &self,
        mut batch: Vec<NewMessage>,
    ) -> Result<Vec<Vec<Appended>>, RemoteStoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        if batch.iter().any(|m| m.queues.is_empty()) {
            return Err(RemoteStoreError::Remote {
                addr: String::new(),
                code: ErrorCode::InvalidArgument,
                message: "a message needs at least one queue".into(),
            });
        }
        for m in batch.iter_mut().filter(|m| m.key.is_none()) {
            let seq = self.keyed.fetch_add(1, Ordering::Relaxed);
            m.key = Some(AppendKey::server(self.origin, seq));
        }
        let give_up = Instant::now() + APPEND_RETRY_FOR;
        let mut delay = APPEND_RETRY_FIRST;
        // The answer, once it has to be put together from several stores' replies.
        let mut out: Option<Vec<Vec<Appended>>> = None;
        // What is not stored yet: (message index, queue indexes); `None`: everything.
        let mut pending: Option<Vec<(usize, Qis)>> = None;
        loop {
            let shards = self.shards.read().clone();
            let parts = split(&shards, &batch, pending.as_deref());
            let sharded = parts.len() > 1;
            // Inline for the usual one or two stores: no allocation for the list.
            let mut futs: SmallVec<[_; 2]> = SmallVec::with_capacity(parts.len());
            for (pool, msgs, map) in parts {
                // Boxed: a part's request is several hundred bytes of state, and inline (two of
                // them joined) this future took 3.5 KB, an allocation above the allocator's
                // per-thread cache, for every message. The part's map rides along in the box.
                futs.push(Box::pin(async move { (pool.append(msgs).await, map) }));
            }
            // One or two stores (a peer message's two queues) without join_all's allocations.
            let results = if futs.len() <= 2 {
                let mut futs = futs.into_iter();
                match (futs.next(), futs.next()) {
                    (Some(a), Some(b)) => {
                        let (a, b) = futures_util::future::join(a, b).await;
                        vec![a, b]
                    }
                    (Some(a), None) => vec![a.await],
                    _ => Vec::new(),
                }
            } else {
                futures_util::future::join_all(futs).await
            };
            let mut failed: Vec<(usize, Qis)> = Vec::new();
            let mut first_err = None;
            for (res, map) in results {
                match res {
                    // Every queue of every message on one store, in order: its reply is the answer.
                    Ok(res) if !sharded && pending.is_none() => return Ok(res),
                    Ok(res) => {
                        let out = out.get_or_insert_with(|| {
                            batch
                                .iter()
                                .map(|m| {
                                    vec![
                                        Appended {
                                            key: 0,
                                            prev_key: 0,
                                            stored_before: false,
                                        };
                                        m.queues.len()
                                    ]
                                })
                                .collect()
                        });
                        for (sub, (mi, qis)) in res.into_iter().zip(map) {
                            for (a, qi) in sub.into_iter().zip(qis) {
                                out[mi][qi] = a;
                            }
                        }
                    }
                    Err(e) => {
                        failed.extend(map);
                        first_err.get_or_insert(e);
                    }
                }
            }
            let Some(e) = first_err else {
                return Ok(out.unwrap_or_default());
            };
            if !retryable(&e) || Instant::now() + delay >= give_up {
                // Each store's failures are logged once per episode by its pool.
                if sharded {
                    tracing::debug!(error = %e, "sharded append failed on some stores; other parts may be stored, and a retry with the same key completes only the missing ones");
                }
                return Err(e);
            }
            tracing::debug!(error = %e, retry_in_ms = delay.as_millis() as u64, "append refused for a passing reason; sending the missing parts again");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(APPEND_RETRY_MAX);
            pending = Some(failed);
        }
    }

    /// `Store::sync` on the store holding `queue`.
    pub async fn sync(
        &self,
        queue: QueueId,
        after: i64,
        limit: usize,
    ) -> Result<SyncPage, RemoteStoreError> {
        self.pool_for(queue).sync(queue, after, limit).await
    }

    /// `Store::sync_since` on the store holding `queue`.
    pub async fn sync_since(
        &self,
        queue: QueueId,
        after: i64,
        limit: usize,
        join_ts: i64,
    ) -> Result<SyncPage, RemoteStoreError> {
        self.pool_for(queue)
            .sync_since(queue, after, limit, join_ts)
            .await
    }

    /// `Store::latest` on the store holding `queue`.
    pub async fn latest(
        &self,
        queue: QueueId,
        n: usize,
    ) -> Result<Vec<StoredMessage>, RemoteStoreError> {
        self.pool_for(queue).latest(queue, n).await
    }

    /// `Store::latest_peer` on the store holding `queue`.
    pub async fn latest_peer(
        &self,
        queue: QueueId,
        n: usize,
    ) -> Result<Vec<StoredMessage>, RemoteStoreError> {
        self.pool_for(queue).latest_peer(queue, n).await
    }

    /// `Store::new_count` on the store holding `queue`.
    pub async fn new_count(&self, queue: QueueId, after: i64) -> Result<u64, RemoteStoreError> {
        self.pool_for(queue).new_count(queue, after).await
    }

    /// `Store::last_key` on the store holding `queue`.
    pub async fn last_key(&self, queue: QueueId) -> Result<i64, RemoteStoreError> {
        self.pool_for(queue).last_key(queue).await
    }
}

/// How long [`RemoteStore::append`] keeps sending again the parts refused for a passing reason.
pub const APPEND_RETRY_FOR: Duration = Duration::from_secs(2);
/// First pause before such a retry (doubling up to [`APPEND_RETRY_MAX`]).
const APPEND_RETRY_FIRST: Duration = Duration::from_millis(50);
const APPEND_RETRY_MAX: Duration = Duration::from_millis(500);

/// Whether an append refused with `e` may succeed when sent again soon: the store was
/// unreachable, not (or no longer) the leader, closing or overloaded. A timeout is not retried
/// (the deadline is spent), nor a refusal of the request itself.
fn retryable(e: &RemoteStoreError) -> bool {
    match e {
        RemoteStoreError::Unavailable { .. } => true,
        RemoteStoreError::Remote { code, .. } => matches!(
            code,
            ErrorCode::NotLeader | ErrorCode::Closed | ErrorCode::Overloaded
        ),
        _ => false,
    }
}

/// One store's part of an append: the pool, its messages, and for each of them (original
/// message index, queue indexes).
/// Queue indexes of one message (nearly always one or two).
type Qis = SmallVec<[usize; 4]>;

/// Which message (index in the batch) and which of its queues each message of a part stands for.
/// Inline for one message, the usual batch.
type PartMap = SmallVec<[(usize, Qis); 1]>;

type Part = (Arc<StorePool>, Vec<NewMessage>, PartMap);

/// Splits the `pending` queues of `batch` per store: one message per store and original message,
/// holding that store's queues in their original relative order, with the same body and key.
fn split(
    shards: &Shards,
    batch: &[NewMessage],
    pending: Option<&[(usize, Qis)]>,
) -> SmallVec<[Part; 2]> {
    let mut parts: SmallVec<[Part; 2]> = SmallVec::new();
    match pending {
        None => {
            for (mi, m) in batch.iter().enumerate() {
                split_message(shards, mi, m, 0..m.queues.len(), &mut parts);
            }
        }
        Some(pending) => {
            for (mi, qis) in pending {
                split_message(shards, *mi, &batch[*mi], qis.iter().copied(), &mut parts);
            }
        }
    }
    parts
}

/// Adds the queues `qis` of message `mi` to the parts of their stores.
fn split_message(
    shards: &Shards,
    mi: usize,
    m: &NewMessage,
    qis: impl Iterator<Item = usize>,
    parts: &mut SmallVec<[Part; 2]>,
) {
    let mut per: SmallVec<[(usize, Qis); 2]> = SmallVec::new();
    for qi in qis {
        let pool = shards.pool(m.queues[qi]);
        let pi = match parts.iter().position(|p| Arc::ptr_eq(&p.0, pool)) {
            Some(pi) => pi,
            None => {
                parts.push((pool.clone(), Vec::with_capacity(1), SmallVec::new()));
                parts.len() - 1
            }
        };
        match per.iter_mut().find(|(p, _)| *p == pi) {
            Some((_, v)) => v.push(qi),
            None => per.push((pi, smallvec::smallvec![qi])),
        }
    }
    for (pi, mut qis) in per {
        qis.sort_unstable();
        let part = &mut parts[pi];
        part.1.push(NewMessage {
            key: m.key,
            queues: qis.iter().map(|&qi| m.queues[qi]).collect(),
            device_id: m.device_id,
            cmd: m.cmd,
            flag: m.flag,
            timestamp: m.timestamp,
            body: m.body.clone(),
        });
        part.2.push((mi, qis));
    }
}

fn build_shards(
    opts: &StorePoolOptions,
    storage: &[String],
    group: &[String],
    old: Option<&Shards>,
) -> Result<Shards, RemoteStoreError> {
    if storage.is_empty() {
        return Err(RemoteStoreError::Config(
            "storage_addrs must list at least one store".into(),
        ));
    }
    if let Some(a) = storage.iter().chain(group).find(|a| a.trim().is_empty()) {
        return Err(RemoteStoreError::Config(format!(
            "empty store address {a:?}"
        )));
    }
    let mut by_addr: HashMap<String, Arc<StorePool>> = HashMap::new();
    if let Some(old) = old {
        for p in old.storage.iter().chain(old.group.iter()) {
            by_addr.insert(p.addr.clone(), p.clone());
        }
    }
    let mut kept: HashMap<String, Arc<StorePool>> = HashMap::new();
    let mut pool = |a: &String| -> Arc<StorePool> {
        if let Some(p) = kept.get(a) {
            return p.clone();
        }
        let p = by_addr
            .get(a)
            .cloned()
            .unwrap_or_else(|| Arc::new(StorePool::new(a.clone(), opts.clone())));
        kept.insert(a.clone(), p.clone());
        p
    };
    let storage_pools: Vec<_> = storage.iter().map(&mut pool).collect();
    let group_pools: Vec<_> = if group.is_empty() {
        storage_pools.clone()
    } else {
        group.iter().map(&mut pool).collect()
    };
    Ok(Shards {
        storage: storage_pools,
        group: group_pools,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An append's future is boxed once per message by the access node: above about 1 KB it
    /// leaves the allocator's per-thread cache (it was 3.5 KB with both parts' requests inline).
    #[test]
    fn an_appends_future_stays_small() {
        let store = RemoteStore::new(
            vec!["127.0.0.1:1".into()],
            vec![],
            StorePoolOptions::default(),
        )
        .expect("one address");
        let append = store.append(Vec::new());
        let size = std::mem::size_of_val(&append);
        assert!(
            size <= 1024,
            "RemoteStore::append's future is {size} bytes: a part's request is inline again?"
        );
    }
}
