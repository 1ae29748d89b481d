//! Store replication over the network: a follower store pulls the leader's log by position and
//! acknowledges what it has made durable.
//!
//! * **Leader** ([`serve_replication`]): for each follower connection, reads its start position
//!   (the follower's `log_end()`), then streams `store.subscribe(pos)`: catch-up and live are the
//!   same position-based reader, so there is no window between them (GoBelieve #40) and batches
//!   never straddle a segment roll on the follower's side because the follower writes the very
//!   same bytes at the very same positions (#41). Each connection has one batch in hand at a
//!   time (catch-up reads run on the blocking pool); a follower that does not read only blocks
//!   its own task until `write_timeout` drops it, never the store or other followers (#43).
//!   Acknowledgements from followers feed a [`ReplicationHub`], which `sync` replication mode
//!   and the lag metrics read.
//! * **Follower** ([`follow`]): dials the leader with back-off (200 ms doubling to 30 s),
//!   announces its `log_end()`, applies batches with `Store::apply_replicated` (several in the
//!   pipeline, in order; durable according to the follower's own durability mode, #42), and
//!   acknowledges each new durable position. On any failure it drains what it submitted and
//!   resumes from its own `log_end()`, so a reconnect never leaves a gap or writes a record
//!   twice. The one gap it accepts is a promoted leader's position jump: a batch that opens
//!   with a JUMP record from exactly its log end.
//!
//! The protocol is in `docs/internal-protocols.md` §"replication".

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::stream::{FuturesOrdered, StreamExt};
use parking_lot::Mutex;
use store::{ReplicationBatch, ReplicationStream, Role, Store, StoreError};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use cluster::store_proto::{self as sp, ErrorCode, Reader};
use node::backoff::Backoff;
use node::frame::{encode_frame, FrameCodec};
use tokio_util::codec::FramedRead;

/// Version byte of every replication frame (2: frames carry the leadership epoch).
pub const REPL_VERSION: u8 = 2;
/// Follower → leader, first frame: start position u64 (the follower's `log_end()`), the epoch
/// u64 it expects its leader to hold (0 = any).
pub const CMD_REPL_BEGIN: u8 = 180;
/// Leader → follower: start u64, leader_end u64, epoch u64, whole log records.
pub const CMD_REPL_BATCH: u8 = 181;
/// Leader → follower when idle: leader_end u64, epoch u64.
pub const CMD_REPL_HEARTBEAT: u8 = 182;
/// Follower → leader: durable position u64.
pub const CMD_REPL_ACK: u8 = 183;
/// Leader → follower before closing: code u16, message length u32, message.
pub const CMD_REPL_ERROR: u8 = 184;

/// Largest frame the leader reads from a follower (BEGIN is 16 bytes, ACK 8).
const LEADER_READ_LIMIT: usize = 1024;
/// Default frame body limit for batches (must exceed the largest single log record).
pub const DEFAULT_REPL_MAX_FRAME_BYTES: usize = 64 << 20;

/// Leader-side replication state: who follows and what they have acknowledged.
pub struct ReplicationHub {
    acked: watch::Sender<u64>,
    /// The leadership epoch this node holds (etcd mode), sent with every batch; 0 = static
    /// configuration.
    epoch: AtomicU64,
    followers: Mutex<HashMap<u64, FollowerEntry>>,
    next_id: AtomicU64,
    /// Batches sent to followers since start.
    pub batches_sent: AtomicU64,
    /// Log bytes sent to followers since start.
    pub bytes_sent: AtomicU64,
    /// Follower connections accepted since start.
    pub connections_total: AtomicU64,
}

struct FollowerEntry {
    peer: SocketAddr,
    acked: u64,
    sent: Arc<AtomicU64>,
    since: Instant,
}

/// One connected follower, as seen by the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowerStatus {
    pub peer: SocketAddr,
    /// Highest durable position it acknowledged.
    pub acked: u64,
    /// Position after the last batch sent to it.
    pub sent: u64,
    pub connected_for: Duration,
}

impl ReplicationHub {
    /// A hub with no follower.
    pub fn new() -> Arc<ReplicationHub> {
        Arc::new(ReplicationHub {
            acked: watch::Sender::new(0),
            epoch: AtomicU64::new(0),
            followers: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            batches_sent: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
        })
    }

    /// The leadership epoch sent with batches (0 = none: static configuration).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Sets the leadership epoch (when this node wins an election).
    pub fn set_epoch(&self, epoch: u64) {
        self.epoch.store(epoch, Ordering::Release);
    }

    /// Highest log position any follower has acknowledged as durable (monotonic).
    pub fn acked(&self) -> u64 {
        *self.acked.borrow()
    }

    /// Watch of [`ReplicationHub::acked`].
    pub fn acked_watch(&self) -> watch::Receiver<u64> {
        self.acked.subscribe()
    }

    /// The followers connected now.
    pub fn followers(&self) -> Vec<FollowerStatus> {
        self.followers
            .lock()
            .values()
            .map(|f| FollowerStatus {
                peer: f.peer,
                acked: f.acked,
                sent: f.sent.load(Ordering::Acquire),
                connected_for: f.since.elapsed(),
            })
            .collect()
    }

    /// Replication lag in bytes: `leader_end` minus the best acknowledged position of a
    /// connected follower (or, with none connected, the last acknowledged position).
    pub fn lag(&self, leader_end: u64) -> u64 {
        leader_end.saturating_sub(self.best_acked())
    }

    /// The best acknowledged position of a connected follower (or, with none connected, the
    /// last acknowledged position).
    pub fn best_acked(&self) -> u64 {
        self.followers
            .lock()
            .values()
            .map(|f| f.acked)
            .max()
            .unwrap_or_else(|| self.acked())
    }

    fn register(&self, peer: SocketAddr, pos: u64, sent: Arc<AtomicU64>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.followers.lock().insert(
            id,
            FollowerEntry {
                peer,
                acked: pos,
                sent,
                since: Instant::now(),
            },
        );
        self.bump(pos);
        id
    }

    fn ack(&self, id: u64, pos: u64) {
        if let Some(f) = self.followers.lock().get_mut(&id) {
            f.acked = f.acked.max(pos);
        }
        self.bump(pos);
    }

    fn bump(&self, pos: u64) {
        self.acked.send_if_modified(|a| {
            if pos > *a {
                *a = pos;
                true
            } else {
                false
            }
        });
    }

    fn unregister(&self, id: u64) {
        self.followers.lock().remove(&id);
    }
}

/// Leader-side settings.
#[derive(Clone)]
pub struct ReplicationServerOptions {
    /// Shared with the store server (`sync` mode) and the metrics.
    pub hub: Arc<ReplicationHub>,
    /// Largest batch sent (a single larger record is sent whole). Default 1 MiB.
    pub max_batch_bytes: usize,
    /// A heartbeat is sent after this long without a batch. Default 5 s.
    pub heartbeat: Duration,
    /// A follower that accepts no bytes for this long, or sends nothing (acks answer heartbeats)
    /// for this long, is disconnected. Default 30 s.
    pub idle_timeout: Duration,
    /// How long a new connection may take to send its start position. Default 10 s.
    pub handshake_timeout: Duration,
}

impl Default for ReplicationServerOptions {
    fn default() -> Self {
        ReplicationServerOptions {
            hub: ReplicationHub::new(),
            max_batch_bytes: 1 << 20,
            heartbeat: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves replication streams to followers on `listener` until `shutdown` is cancelled.
pub async fn serve_replication(
    listener: TcpListener,
    store: Arc<Store>,
    opts: ReplicationServerOptions,
    shutdown: CancellationToken,
) {
    let tracker = TaskTracker::new();
    let opts = Arc::new(opts);
    node::net::accept_loop(&listener, "replication", None, &shutdown, |stream, peer| {
        opts.hub.connections_total.fetch_add(1, Ordering::Relaxed);
        let store = store.clone();
        let opts = opts.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            match serve_follower(stream, peer, store, &opts, shutdown).await {
                Ok(()) => tracing::info!(%peer, "replication follower disconnected"),
                Err(e) => tracing::warn!(%peer, error = %e, "replication follower dropped"),
            }
        });
    })
    .await;
    tracker.close();
    tracker.wait().await;
}

fn u64_body(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

async fn send_error(wr: &mut OwnedWriteHalf, code: ErrorCode, message: &str) {
    let mut body = BytesMut::new();
    sp::encode_error(code, message, &mut body);
    let f = encode_frame(0, CMD_REPL_ERROR, REPL_VERSION, 0, &body);
    let _ = tokio::time::timeout(Duration::from_secs(1), wr.write_all(&f)).await;
    let _ = wr.shutdown().await;
}

async fn serve_follower(
    stream: TcpStream,
    peer: SocketAddr,
    store: Arc<Store>,
    opts: &ReplicationServerOptions,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let (rd, mut wr) = stream.into_split();
    let mut frames = FramedRead::with_capacity(rd, FrameCodec::new(LEADER_READ_LIMIT), 64);
    let first = tokio::time::timeout(opts.handshake_timeout, frames.next())
        .await
        .map_err(|_| "no start position within the handshake timeout".to_string())?
        .transpose()
        .map_err(|e| format!("handshake: {e}"))?
        .ok_or_else(|| "closed before the handshake".to_string())?;
    if first.cmd != CMD_REPL_BEGIN || first.version != REPL_VERSION {
        let why = format!(
            "expected REPL_BEGIN version {REPL_VERSION}, got command {} version {}",
            first.cmd, first.version
        );
        send_error(&mut wr, ErrorCode::BadRequest, &why).await;
        return Err(why);
    }
    let (pos, wanted_epoch) = {
        let mut r = Reader::new(first.body);
        let p = r.u64().map_err(|e| e.to_string())?;
        let e = r.u64().map_err(|e| e.to_string())?;
        r.finish().map_err(|e| e.to_string())?;
        (p, e)
    };
    let epoch = opts.hub.epoch();
    if wanted_epoch > epoch {
        // The follower knows a newer leadership than ours: we were deposed.
        let why = format!(
            "stale leader: this node holds epoch {epoch}, the follower expects epoch {wanted_epoch}"
        );
        send_error(&mut wr, ErrorCode::NotLeader, &why).await;
        return Err(why);
    }
    let mut stream = match store.subscribe(pos) {
        Ok(s) => s,
        Err(e) => {
            let why = format!("cannot replicate from position {pos}: {e}");
            send_error(&mut wr, ErrorCode::of(&e), &why).await;
            return Err(why);
        }
    };
    stream.set_max_bytes(opts.max_batch_bytes);
    tracing::info!(%peer, position = pos, leader_end = store.log_end(), "replication follower connected");
    let sent = Arc::new(AtomicU64::new(pos));
    let hub = opts.hub.clone();
    let id = hub.register(peer, pos, sent.clone());
    let conn = shutdown.child_token();
    let acks = tokio::spawn(read_acks(
        frames,
        hub.clone(),
        id,
        sent.clone(),
        opts.idle_timeout,
        conn.clone(),
    ));
    let r = stream_to(&mut wr, stream, &store, opts, &sent, &conn).await;
    conn.cancel();
    let ack_result = acks.await.unwrap_or_else(|e| Err(e.to_string()));
    hub.unregister(id);
    let _ = wr.shutdown().await;
    match (r, ack_result) {
        (Err(e), _) => Err(e),
        (Ok(()), Err(e)) => Err(e),
        (Ok(()), Ok(())) => Ok(()),
    }
}

/// Reads acknowledgements until the connection ends, is idle too long, or `conn` is cancelled.
async fn read_acks(
    mut frames: FramedRead<OwnedReadHalf, FrameCodec>,
    hub: Arc<ReplicationHub>,
    id: u64,
    sent: Arc<AtomicU64>,
    idle: Duration,
    conn: CancellationToken,
) -> Result<(), String> {
    let r = async {
        loop {
            let f = tokio::select! {
                _ = conn.cancelled() => return Ok(()),
                f = tokio::time::timeout(idle, frames.next()) => f.map(Option::transpose),
            };
            let f = match f {
                Err(_) => return Err(format!("no acknowledgement for {} ms", idle.as_millis())),
                Ok(Ok(Some(f))) => f,
                Ok(Ok(None)) => return Ok(()),
                Ok(Err(e)) => return Err(format!("reading acknowledgements: {e}")),
            };
            if f.cmd != CMD_REPL_ACK {
                return Err(format!("unexpected command {} from follower", f.cmd));
            }
            let mut r = Reader::new(f.body);
            let pos = r.u64().map_err(|e| e.to_string())?;
            r.finish().map_err(|e| e.to_string())?;
            // A follower can only hold what it was sent.
            let pos = pos.min(sent.load(Ordering::Acquire));
            hub.ack(id, pos);
        }
    }
    .await;
    conn.cancel();
    r
}

/// Sends batches (and heartbeats when idle) until `conn` is cancelled or a write fails.
async fn stream_to(
    wr: &mut OwnedWriteHalf,
    mut stream: ReplicationStream,
    store: &Arc<Store>,
    opts: &ReplicationServerOptions,
    sent: &AtomicU64,
    conn: &CancellationToken,
) -> Result<(), String> {
    loop {
        if conn.is_cancelled() {
            return Ok(());
        }
        // Catch-up reads may hit segment files: do them on the blocking pool.
        let mut batch = None;
        if stream.position() < store.log_end() {
            let (back, r) = tokio::task::spawn_blocking(move || {
                let r = stream.try_next();
                (stream, r)
            })
            .await
            .map_err(|e| format!("replication read task failed: {e}"))?;
            stream = back;
            batch = r.map_err(|e| format!("reading the log: {e}"))?;
        }
        let batch = match batch {
            Some(b) => b,
            None => {
                tokio::select! {
                    _ = conn.cancelled() => return Ok(()),
                    b = stream.next() => b.map_err(|e| format!("reading the log: {e}"))?,
                    _ = tokio::time::sleep(opts.heartbeat) => {
                        let mut body = BytesMut::with_capacity(16);
                        body.put_u64(store.log_end());
                        body.put_u64(opts.hub.epoch());
                        let f = encode_frame(0, CMD_REPL_HEARTBEAT, REPL_VERSION, 0, &body);
                        write_timed(wr, &[f], opts.idle_timeout, conn).await?;
                        continue;
                    }
                }
            }
        };
        let end = batch.end();
        let len = batch.data.len() as u64;
        let mut head = BytesMut::with_capacity(proto::HEADER_LEN + 24);
        proto::Header {
            len: 24 + batch.data.len(),
            seq: 0,
            cmd: CMD_REPL_BATCH,
            version: REPL_VERSION,
            flag: 0,
        }
        .write(&mut head);
        head.put_u64(batch.start);
        head.put_u64(store.log_end());
        head.put_u64(opts.hub.epoch());
        sent.store(end, Ordering::Release);
        write_timed(wr, &[head.freeze(), batch.data], opts.idle_timeout, conn).await?;
        opts.hub.batches_sent.fetch_add(1, Ordering::Relaxed);
        opts.hub.bytes_sent.fetch_add(len, Ordering::Relaxed);
    }
}

/// Writes `parts` in order, giving up after `timeout` without progress or when `conn` is
/// cancelled.
async fn write_timed(
    wr: &mut OwnedWriteHalf,
    parts: &[Bytes],
    timeout: Duration,
    conn: &CancellationToken,
) -> Result<(), String> {
    for p in parts {
        let mut p = p.clone();
        while !p.is_empty() {
            let n = tokio::select! {
                _ = conn.cancelled() => return Ok(()),
                r = tokio::time::timeout(timeout, wr.write_buf(&mut p)) => match r {
                    Err(_) => return Err(format!("follower accepted no data for {} ms", timeout.as_millis())),
                    Ok(Err(e)) => return Err(format!("write failed: {e}")),
                    Ok(Ok(n)) => n,
                },
            };
            if n == 0 {
                return Err("write returned 0 bytes".into());
            }
        }
    }
    Ok(())
}

/// Follower-side settings.
#[derive(Clone)]
pub struct FollowOptions {
    /// Largest batch frame accepted. Must exceed the leader's largest log record. Default 64 MiB.
    pub max_frame_bytes: usize,
    /// First wait before re-dialling (plus jitter); doubles up to `backoff_max`. Default 200 ms.
    pub backoff_min: Duration,
    /// Default 30 s.
    pub backoff_max: Duration,
    /// Dial timeout. Default 5 s.
    pub connect_timeout: Duration,
    /// Reconnect when nothing (batch or heartbeat) arrives for this long. Default 30 s (the
    /// leader's heartbeat is 5 s).
    pub idle_timeout: Duration,
    /// Batches submitted to the store and not yet durable. Default 16.
    pub max_in_flight: usize,
    /// Progress, for metrics and tests.
    pub status: Arc<FollowStatus>,
    /// The leadership epoch the leader must hold (etcd mode): a leader announcing an older one
    /// (deposed) is refused. 0 = any (static configuration).
    pub epoch: u64,
}

impl Default for FollowOptions {
    fn default() -> Self {
        FollowOptions {
            max_frame_bytes: DEFAULT_REPL_MAX_FRAME_BYTES,
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            max_in_flight: 16,
            status: Arc::default(),
            epoch: 0,
        }
    }
}

/// A follower's view of its replication.
#[derive(Debug, Default)]
pub struct FollowStatus {
    /// Connected to the leader and past the handshake.
    pub connected: AtomicBool,
    /// The leader's log end, as last reported by it.
    pub leader_end: AtomicU64,
    /// This store's durable log end after the last applied batch.
    pub applied: AtomicU64,
    /// Batches applied since start.
    pub batches: AtomicU64,
    /// Log bytes received since start.
    pub bytes: AtomicU64,
    /// Sessions started (dials that got past the handshake).
    pub sessions: AtomicU64,
    /// Why the last session ended.
    pub last_error: Mutex<String>,
    /// Set when the leader refused this log as diverged from its own (it holds records the
    /// leader's history does not): the leader's explanation. The log must be re-seeded.
    pub diverged: Mutex<Option<String>>,
}

impl FollowStatus {
    /// Bytes the follower is behind the leader (as far as it knows).
    pub fn lag(&self) -> u64 {
        self.leader_end
            .load(Ordering::Acquire)
            .saturating_sub(self.applied.load(Ordering::Acquire))
    }
}

/// How a follow session ended.
enum SessionEnd {
    /// Stop following (shutdown, or the store no longer is a follower).
    Stop,
    /// Reconnect; `progressed` says whether the session got past the handshake.
    Retry { progressed: bool, why: String },
}

/// Follows the leader at `leader_addr` (its replication listener) into `store` (opened with
/// `Role::Follower`) until `shutdown` is cancelled or the store stops being a follower
/// (promotion). Never returns early on network errors: it re-dials with back-off.
pub async fn follow(
    leader_addr: String,
    store: Arc<Store>,
    opts: FollowOptions,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(opts.backoff_min, opts.backoff_max);
    loop {
        if shutdown.is_cancelled() || store.role() != Role::Follower {
            break;
        }
        let end = session(&leader_addr, &store, &opts, &shutdown).await;
        opts.status.connected.store(false, Ordering::Release);
        let delay = match end {
            SessionEnd::Stop => break,
            SessionEnd::Retry { progressed, why } => {
                if progressed {
                    backoff.reset();
                }
                let delay = backoff.next_delay();
                tracing::warn!(leader = %leader_addr, error = %why, retry_in_ms = delay.as_millis() as u64, "replication from leader interrupted");
                *opts.status.last_error.lock() = why;
                delay
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    tracing::info!(leader = %leader_addr, "replication follower stopped");
}

async fn session(
    leader_addr: &str,
    store: &Arc<Store>,
    opts: &FollowOptions,
    shutdown: &CancellationToken,
) -> SessionEnd {
    let retry = |progressed: bool, why: String| SessionEnd::Retry { progressed, why };
    let stream = tokio::select! {
        _ = shutdown.cancelled() => return SessionEnd::Stop,
        s = tokio::time::timeout(opts.connect_timeout, TcpStream::connect(leader_addr)) => match s {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return retry(false, format!("connect failed: {e}")),
            Err(_) => return retry(false, "connect timed out".into()),
        },
    };
    node::net::set_socket_options(&stream, None);
    let (rd, mut wr) = stream.into_split();
    let mut expected = store.log_end();
    opts.status.applied.store(expected, Ordering::Release);
    let mut body = BytesMut::with_capacity(16);
    body.put_u64(expected);
    body.put_u64(opts.epoch);
    let begin = encode_frame(1, CMD_REPL_BEGIN, REPL_VERSION, 0, &body);
    if let Err(e) = wr.write_all(&begin).await {
        return retry(false, format!("sending the start position: {e}"));
    }
    let mut frames =
        FramedRead::with_capacity(rd, FrameCodec::new(opts.max_frame_bytes), 64 * 1024);
    let mut inflight: FuturesOrdered<store::Ticket<u64>> = FuturesOrdered::new();
    let mut progressed = false;
    let max_in_flight = opts.max_in_flight.max(1);
    let status = &opts.status;
    let end = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break SessionEnd::Stop,
            done = inflight.next(), if !inflight.is_empty() => {
                match done {
                    Some(Ok(durable)) => {
                        status.applied.store(durable, Ordering::Release);
                        status.batches.fetch_add(1, Ordering::Relaxed);
                        let ack = encode_frame(0, CMD_REPL_ACK, REPL_VERSION, 0, &u64_body(durable));
                        if let Err(e) = wr.write_all(&ack).await {
                            break retry(progressed, format!("sending an acknowledgement: {e}"));
                        }
                    }
                    Some(Err(StoreError::NotFollower)) => break SessionEnd::Stop,
                    Some(Err(e)) => break retry(progressed, format!("applying a batch: {e}")),
                    None => {}
                }
            }
            f = tokio::time::timeout(opts.idle_timeout, frames.next()), if inflight.len() < max_in_flight => {
                let f = match f.map(Option::transpose) {
                    Err(_) => break retry(progressed, format!("nothing from the leader for {} ms", opts.idle_timeout.as_millis())),
                    Ok(Ok(Some(f))) => f,
                    Ok(Ok(None)) => break retry(progressed, "leader closed the connection".into()),
                    Ok(Err(e)) => break retry(progressed, format!("reading from the leader: {e}")),
                };
                if !progressed {
                    progressed = true;
                    status.sessions.fetch_add(1, Ordering::Relaxed);
                    status.connected.store(true, Ordering::Release);
                    tracing::info!(leader = %leader_addr, position = expected, "replicating from leader");
                }
                match f.cmd {
                    CMD_REPL_BATCH => {
                        let mut r = Reader::new(f.body);
                        let (start, leader_end, epoch) = match (r.u64(), r.u64(), r.u64()) {
                            (Ok(s), Ok(e), Ok(ep)) => (s, e, ep),
                            _ => break retry(progressed, "short batch frame".into()),
                        };
                        if epoch < opts.epoch {
                            break retry(progressed, format!("stale leader: it sent epoch {epoch}, this follower follows epoch {}", opts.epoch));
                        }
                        let batch = ReplicationBatch { start, data: r.rest() };
                        // A batch above our end must open with a JUMP from it (the leader was
                        // promoted and continued higher up).
                        if start != expected && batch.jump_from() != Some(expected) {
                            break retry(progressed, format!("leader sent a batch at {start}, expected {expected}"));
                        }
                        expected = batch.end();
                        status.leader_end.store(leader_end.max(expected), Ordering::Release);
                        status.bytes.fetch_add(batch.data.len() as u64, Ordering::Relaxed);
                        inflight.push_back(store.apply_replicated(batch));
                    }
                    CMD_REPL_HEARTBEAT => {
                        let mut r = Reader::new(f.body);
                        if let (Ok(e), Ok(epoch)) = (r.u64(), r.u64()) {
                            if epoch < opts.epoch {
                                break retry(progressed, format!("stale leader: it sent epoch {epoch}, this follower follows epoch {}", opts.epoch));
                            }
                            status.leader_end.store(e, Ordering::Release);
                        }
                        // Answer with what is durable here, so the leader sees we are alive.
                        let durable = if inflight.is_empty() { store.log_end() } else { status.applied.load(Ordering::Acquire) };
                        let ack = encode_frame(0, CMD_REPL_ACK, REPL_VERSION, 0, &u64_body(durable));
                        if let Err(e) = wr.write_all(&ack).await {
                            break retry(progressed, format!("sending an acknowledgement: {e}"));
                        }
                    }
                    CMD_REPL_ERROR => {
                        let why = match sp::decode_error(f.body) {
                            Ok((code, msg)) => {
                                if code == ErrorCode::InvalidArgument
                                    && (msg.contains("diverged") || msg.contains("beyond this log's end"))
                                {
                                    *status.diverged.lock() = Some(msg.clone());
                                }
                                format!("leader refused ({code}): {msg}")
                            }
                            Err(e) => format!("leader refused: {e}"),
                        };
                        break retry(false, why);
                    }
                    other => break retry(progressed, format!("unexpected command {other} from the leader")),
                }
            }
        }
    };
    // Let what was submitted finish, so the next session starts at the true log end.
    while let Some(r) = inflight.next().await {
        if let Ok(d) = r {
            status.applied.store(d, Ordering::Release);
        }
    }
    let _ = wr.shutdown().await;
    end
}
