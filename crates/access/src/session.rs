//! One client session (spec §7): a single task that reads frames, runs their handlers, drains the
//! session's outbox and writes everything it produced in one coalesced write per wake-up.
//!
//! Ordering: every frame this session sends — its own replies, sync batches and what others pushed to
//! it — goes through one writer with one per-connection seq, so METADATA is always immediately followed
//! by its message (consecutive seqs) and an ACK never overtakes the frames that logically precede it.
//!
//! Messages are stored asynchronously: a handler submits the append and the session keeps reading; the
//! completions are processed strictly in submission order (`FuturesOrdered`), so one connection's ACKs and
//! deliveries stay in the order it sent, while the store batches appends of many connections into one
//! fsync. At most `max_inflight` appends per connection are outstanding; then reading pauses.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use futures_util::stream::{FuturesOrdered, StreamExt};
use proto::{cmd, flag, AckStatus, AuthToken, Body, Frame, Header, Metadata, Platform};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::app::{App, AppendResult, Stats};
use crate::route::{OutboxLimits, Push, SessionHandle, SessionId, OUTBOX_FULL};
use crate::transport::{CloseReason, RecvError, Transport};

/// Why a session ended.
#[derive(Debug)]
pub(crate) enum End {
    ClientClosed,
    Shutdown,
    Timeout(&'static str),
    Kicked(&'static str),
    Recv(RecvError),
    Protocol(String),
    WriteFailed(std::io::Error),
    WriteTimeout,
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::ClientClosed => write!(f, "client closed the connection"),
            End::Shutdown => write!(f, "server shutting down"),
            End::Timeout(what) => write!(f, "{what}"),
            End::Kicked(why) => write!(f, "disconnected: {why}"),
            End::Recv(e) => write!(f, "{e}"),
            End::Protocol(e) => write!(f, "protocol error: {e}"),
            End::WriteFailed(e) => write!(f, "write failed: {e}"),
            End::WriteTimeout => write!(f, "write timed out"),
        }
    }
}

impl End {
    /// What the client is told when the connection closes (a WebSocket close code).
    fn close_reason(&self) -> CloseReason {
        match self {
            End::Shutdown => CloseReason::GoingAway,
            End::Recv(e) => e.close_reason(),
            End::Protocol(_) | End::Kicked(_) => CloseReason::Policy,
            End::ClientClosed | End::Timeout(_) | End::WriteFailed(_) | End::WriteTimeout => {
                CloseReason::Normal
            }
        }
    }
}

/// What a pending append was for, so its completion can be finished.
pub(crate) enum OpCtx {
    Im {
        seq: i32,
        flag: u8,
        receiver: i64,
        body: bytes::Bytes,
    },
    Customer {
        seq: i32,
        flag: u8,
        receiver_appid: i64,
        receiver: i64,
        body: bytes::Bytes,
    },
    Group {
        seq: i32,
        flag: u8,
        group: Arc<backend::groups::Group>,
        /// Member uids in the order of the append's queues (normal groups).
        uids: Vec<i64>,
        body: bytes::Bytes,
    },
}

/// A pending append and its context.
pub(crate) struct Op {
    ctx: Option<OpCtx>,
    fut: Pin<Box<dyn Future<Output = AppendResult> + Send>>,
    /// When the message arrived (its handler submits it at once).
    arrived: Instant,
    /// `banter_message_durable_seconds`.
    durable: metrics::Histogram,
}

impl Future for Op {
    type Output = (OpCtx, AppendResult, Instant);
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.fut.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(r) => match self.ctx.take() {
                Some(ctx) => {
                    if r.is_ok() {
                        self.durable.record(self.arrived.elapsed().as_secs_f64());
                    }
                    Poll::Ready((ctx, r, self.arrived))
                }
                // Polled after completion: never resolves again (FuturesOrdered does not do this).
                None => Poll::Pending,
            },
        }
    }
}

/// What is left of a frame's handling after [`Session::dispatch`].
enum Then<'a> {
    /// Handled.
    Done,
    /// SYNC with this key: awaited inline by the session loop.
    Sync(i64),
    /// A rare handler with a large future, boxed.
    Wait(Pin<Box<dyn Future<Output = ()> + Send + 'a>>),
}

/// The next completed append, in submission order; `None` when nothing is in flight.
async fn next_completion(
    pending: &mut Option<FuturesOrdered<Op>>,
) -> Option<(OpCtx, AppendResult, Instant)> {
    match pending {
        Some(p) => p.next().await,
        None => None,
    }
}

/// Per-connection token bucket.
struct RateLimit {
    per_sec: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    fn allow(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.per_sec.max(1.0));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

pub(crate) struct Session {
    pub(crate) app: Arc<App>,
    pub(crate) conn_id: u64,
    /// Set once authenticated; also this session's entry in the route table.
    pub(crate) handle: Option<Arc<SessionHandle>>,
    /// The session version: the version byte of the successful AUTH_TOKEN (0 before).
    pub(crate) version: u8,
    seq: i32,
    wbuf: BytesMut,
    ends: Vec<usize>,
    /// Appends in flight, completed in submission order. Allocated only while there are some.
    pending: Option<FuturesOrdered<Op>>,
    inbox: Vec<Push>,
    rate: Option<RateLimit>,
    /// The chat room this connection is in.
    pub(crate) room: Option<i64>,
    /// A write was abandoned part-way (kick or shutdown while the client did not read): what is on the
    /// wire ends mid-frame, so nothing more may be written.
    torn: bool,
    /// Syncs that could not be answered yet (their store shard is down): answered once due.
    pub(crate) owed: Option<Box<crate::sync::OwedSyncs>>,
}

/// Runs a session on `transport` until it ends, then unregisters it. The client must authenticate
/// before `login_deadline`: the listener sets it when it accepts the connection, so the TLS handshake
/// and WebSocket upgrade count against the same `server.login_timeout_secs`.
///
/// Not an `async fn`: the session is set up before the future is built, so the arguments only needed
/// for that (the peer address, the span's fields) are not kept in every idle session's task.
pub fn run<T: Transport>(
    app: Arc<App>,
    transport: T,
    peer: SocketAddr,
    shutdown: CancellationToken,
    login_deadline: Instant,
) -> impl Future<Output = ()> + Send {
    let conn_id = app.next_conn_id();
    Stats::inc(&app.stats.connections);
    Stats::inc(&app.stats.connections_total);
    let span = tracing::debug_span!("session", conn = conn_id, %peer, appid = tracing::field::Empty, uid = tracing::field::Empty);
    let rate = (app.server.rate_limit_per_sec > 0).then(|| RateLimit {
        per_sec: app.server.rate_limit_per_sec as f64,
        tokens: app.server.rate_limit_per_sec as f64,
        last: Instant::now(),
    });
    let mut s = Session {
        app,
        conn_id,
        handle: None,
        version: 0,
        seq: 0,
        wbuf: BytesMut::new(),
        ends: Vec::new(),
        pending: None,
        inbox: Vec::new(),
        rate,
        room: None,
        torn: false,
        owed: None,
    };
    let mut transport = transport;
    // Everything the task needs is captured by `async move` and used in place (an `async fn` would
    // keep its arguments and the locals they are moved into).
    async move {
        let end = s.run_loop(&mut transport, &shutdown, login_deadline).await;
        s.finish(end, &mut transport, peer).await;
    }
    .instrument(span)
}

/// How long a session whose connection is gone waits for the appends it submitted, so their
/// receivers are still told about them. Appends resolve well within this (the store's own timeouts are
/// shorter); the bound only keeps a wedged store from holding ended sessions forever.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);

/// How long the last write of a closing session may take: enough for a reading client to get its
/// final ACKs, short enough that a client that does not read cannot delay shutdown.
const FINAL_FLUSH_LIMIT: Duration = Duration::from_secs(1);

impl Session {
    /// Logs why the session ended, finishes its appends, unregisters it and closes the connection.
    ///
    /// Every message this connection sent before it ended is completed whatever ended it — a client
    /// that closed right after sending, a failed write, a slow consumer, a protocol error later in the
    /// stream: the store has it, so its receivers must be told. Only the sender's ACKs can be lost with
    /// the connection; they are still written when it is usable.
    ///
    /// Client disconnects (a close, a reset, a connection cut mid-frame), timeouts and protocol
    /// violations are counted apart; each line names the peer and, once authenticated, the uid.
    async fn finish<T: Transport>(&mut self, end: End, transport: &mut T, peer: SocketAddr) {
        let app = self.app.clone();
        let uid = self.handle.as_ref().map(|h| h.uid);
        match &end {
            End::Shutdown => debug!(%peer, ?uid, reason = %end, "session closed"),
            End::ClientClosed
            | End::WriteFailed(_)
            | End::Recv(RecvError::Io(_))
            | End::Recv(RecvError::Truncated) => {
                Stats::inc(&app.stats.client_closes);
                debug!(%peer, ?uid, reason = %end, "session closed by the client")
            }
            End::Timeout(_) => {
                Stats::inc(&app.stats.timeouts);
                debug!(%peer, ?uid, reason = %end, "session timed out")
            }
            End::Kicked(OUTBOX_FULL) | End::WriteTimeout => {
                Stats::inc(&app.stats.slow_consumers);
                info!(%peer, ?uid, reason = %end, "session closed")
            }
            // Closed by the server for another reason (a sync it could not answer, a revoked token):
            // counted where the reason arose.
            End::Kicked(_) => info!(%peer, ?uid, reason = %end, "session closed"),
            End::Recv(_) | End::Protocol(_) => {
                Stats::inc(&app.stats.protocol_errors);
                info!(%peer, ?uid, reason = %end, "closing connection after a protocol violation")
            }
        }
        let writable = match end {
            End::Shutdown | End::ClientClosed | End::Timeout(_) => true,
            End::Kicked(reason) => reason != OUTBOX_FULL,
            _ => false,
        };
        if self.inflight() > 0 {
            // On shutdown the node's grace period bounds this too.
            let limit = if matches!(end, End::Shutdown) {
                Duration::from_secs(5)
            } else {
                DRAIN_LIMIT
            };
            // Boxed: this happens once, and inline it would be the largest state of every session.
            let drained = Box::pin(timeout(limit, async {
                while let Some((ctx, result, arrived)) = next_completion(&mut self.pending).await {
                    self.complete(ctx, result, arrived);
                }
            }))
            .await;
            if drained.is_err() {
                warn!(
                    pending = self.inflight(),
                    "appends of a closed session did not complete in time; their receivers learn of them at their next sync"
                );
            }
        }
        if writable && !self.torn && !self.ends.is_empty() {
            let _ = Box::pin(timeout(FINAL_FLUSH_LIMIT, self.flush(transport, None))).await;
        }
        self.leave_current_room();
        if let Some(h) = self.handle.take() {
            app.route.remove(&h);
            app.links.logout(h.conn_id, h.appid, h.uid);
        }
        // A close handshake (TLS close_notify, WebSocket close frame) is a write too.
        let _ = Box::pin(timeout(
            FINAL_FLUSH_LIMIT,
            transport.close(end.close_reason()),
        ))
        .await;
        app.stats
            .connections
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Session {
    async fn run_loop<T: Transport>(
        &mut self,
        t: &mut T,
        shutdown: &CancellationToken,
        login_deadline: Instant,
    ) -> End {
        let idle = Duration::from_secs(self.app.server.idle_timeout_secs);
        let mut last_frame = Instant::now();
        let max_inflight = self.app.server.max_inflight.max(1);
        loop {
            if self.owed_due() {
                // Rare, and its future is large: boxed (see `dispatch`).
                Box::pin(self.answer_owed_syncs()).await;
            }
            if let Some(h) = &self.handle {
                if let Some(reason) = h.drain(&mut self.inbox) {
                    return End::Kicked(reason);
                }
                self.emit_inbox();
            }
            if let Err(e) = self.flush(t, Some(shutdown)).await {
                return e;
            }
            if self.handle.as_ref().is_some_and(|h| h.has_pending()) {
                // Pushed to while writing (the wake-up may have been consumed by the write): drain now.
                continue;
            }
            let deadline = if self.handle.is_some() {
                last_frame + idle
            } else {
                login_deadline.min(last_frame + idle)
            };
            // Wake up for a sync owed to the client when it is due.
            let deadline = match self.owed.as_ref() {
                Some(o) if o.at < deadline => o.at,
                _ => deadline,
            };
            let handle = self.handle.clone();
            // The frame is handled after the select, once its futures are gone: an idle session task
            // is as large as its largest await point, and the handler must not add to the select's.
            let frame = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return End::Shutdown,
                Some((ctx, result, arrived)) = next_completion(&mut self.pending), if self.inflight() > 0 => {
                    self.complete(ctx, result, arrived);
                    continue;
                }
                _ = async { match &handle { Some(h) => h.wait().await, None => std::future::pending().await } } => continue,
                r = t.recv(), if self.inflight() < max_inflight => match r {
                    Ok(Some(frame)) => frame,
                    Ok(None) => return End::ClientClosed,
                    Err(e) => return End::Recv(e),
                },
                _ = sleep_until(deadline) => {
                    if self.owed_due() {
                        continue;
                    }
                    return End::Timeout(if self.handle.is_some() { "idle timeout" } else { "login timeout" });
                }
            };
            drop(handle);
            last_frame = Instant::now();
            Stats::inc(&self.app.stats.frames_in);
            let sync_key = match self.dispatch(frame) {
                Ok(Then::Done) => continue,
                Ok(Then::Sync(key)) => key,
                Ok(Then::Wait(handler)) => {
                    handler.await;
                    continue;
                }
                Err(e) => return e,
            };
            self.on_sync(sync_key).await;
        }
    }

    /// Writes everything produced so far, in one coalesced write. A client that does not read blocks
    /// the write; meanwhile a kick or (when `shutdown` is given) the node's shutdown ends it.
    async fn flush<T: Transport>(
        &mut self,
        t: &mut T,
        shutdown: Option<&CancellationToken>,
    ) -> Result<(), End> {
        if self.ends.is_empty() {
            if self.inflight() == 0 {
                self.release_buffers();
            }
            return Ok(());
        }
        Stats::add(&self.app.stats.frames_out, self.ends.len() as u64);
        let wt = Duration::from_secs(self.app.server.write_timeout_secs);
        let handle = self.handle.clone();
        let r = {
            let send = timeout(wt, t.send(&mut self.wbuf, &self.ends));
            tokio::pin!(send);
            loop {
                tokio::select! {
                    r = &mut send => break r,
                    _ = async { match shutdown { Some(s) => s.cancelled().await, None => std::future::pending().await } } => {
                        self.torn = true;
                        return Err(End::Shutdown);
                    }
                    _ = async { match &handle { Some(h) => h.wait().await, None => std::future::pending().await } } => {
                        if let Some(reason) = handle.as_ref().and_then(|h| h.close_reason()) {
                            self.torn = true;
                            return Err(End::Kicked(reason));
                        }
                    }
                }
            }
        };
        self.ends.clear();
        if self.inflight() == 0 {
            self.release_buffers();
        } else if self.wbuf.capacity() > 64 * 1024 {
            self.wbuf = BytesMut::new();
        }
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(End::WriteFailed(e)),
            Err(_) => Err(End::WriteTimeout),
        }
    }

    /// Whether syncs owed to the client are due to be tried again.
    fn owed_due(&self) -> bool {
        self.owed.as_ref().is_some_and(|o| o.at <= Instant::now())
    }

    /// Appends submitted and not yet completed.
    fn inflight(&self) -> usize {
        self.pending.as_ref().map_or(0, |p| p.len())
    }

    /// Gives back the write buffer, the frame ends, the inbox and the in-flight set once everything
    /// is written and nothing is in flight: a session between messages holds no buffers (they are
    /// small to allocate again; keeping them would cost every idle connection).
    fn release_buffers(&mut self) {
        self.wbuf = BytesMut::new();
        self.ends = Vec::new();
        self.inbox = Vec::new();
        self.pending = None;
    }

    fn next_seq(&mut self) -> i32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Queues one frame for the client.
    pub(crate) fn emit(&mut self, body: &Body, flag: u8) {
        let seq = self.next_seq();
        body.encode_frame(seq, self.version, flag, &mut self.wbuf);
        self.ends.push(self.wbuf.len());
    }

    /// Queues METADATA then `body` on consecutive seqs.
    pub(crate) fn emit_with_meta(&mut self, meta: Metadata, body: &Body, flag: u8) {
        self.emit(&Body::Metadata(meta), 0);
        self.emit(body, flag);
    }

    /// Queues a frame whose body is already encoded in version 1/2 layout.
    pub(crate) fn emit_raw(&mut self, cmd: u8, flag: u8, body: &[u8]) {
        let seq = self.next_seq();
        let relayout =
            self.version == 0 && (cmd == cmd::IM || cmd == cmd::GROUP_IM) && body.len() >= 24;
        let len = if relayout { body.len() - 4 } else { body.len() };
        self.wbuf.reserve(proto::HEADER_LEN + len);
        Header {
            len,
            seq,
            cmd,
            version: self.version,
            flag,
        }
        .write(&mut self.wbuf);
        if relayout {
            // Version 0 has no timestamp: sender, receiver, msgid, content.
            self.wbuf.put_slice(&body[..16]);
            self.wbuf.put_slice(&body[20..]);
        } else {
            self.wbuf.put_slice(body);
        }
        self.ends.push(self.wbuf.len());
    }

    fn emit_inbox(&mut self) {
        let mut inbox = std::mem::take(&mut self.inbox);
        // Reserve once: the buffers are given back whenever the session is idle, so without this a
        // batch of pushes would grow them step by step on every wake-up.
        let (frames, bytes) = inbox.iter().fold((0, 0), |(f, b), p| match p.meta {
            Some(_) => (f + 2, b + 2 * proto::HEADER_LEN + 16 + p.body.len()),
            None => (f + 1, b + proto::HEADER_LEN + p.body.len()),
        });
        self.ends.reserve(frames);
        self.wbuf.reserve(bytes);
        for p in inbox.drain(..) {
            if let Some(meta) = p.meta {
                self.emit(&Body::Metadata(meta), 0);
            }
            self.emit_raw(p.cmd, p.flag, &p.body);
        }
        self.inbox = inbox;
        if self.inbox.capacity() > 256 {
            self.inbox = Vec::new();
        }
    }

    pub(crate) fn ack(&mut self, seq: i32, status: i8, flag: u8, meta: Option<Metadata>) {
        let body = Body::Ack(proto::body::Ack { seq, status });
        match meta {
            Some(m) => self.emit_with_meta(m, &body, flag),
            None => self.emit(&body, flag),
        }
    }

    /// Answers a message that was not accepted. Version 2+ clients learn why from the status; older
    /// ACKs carry no status, so they get no ACK at all rather than one that would read as success.
    pub(crate) fn refuse(&mut self, seq: i32, status: i8, what: &str) {
        Stats::inc(&self.app.stats.messages_refused);
        debug!(seq, status, what, "message refused");
        if self.version >= 2 {
            self.ack(seq, status, 0, None);
        }
    }

    pub(crate) fn submit(&mut self, ctx: OpCtx, batch: Vec<store::NewMessage>) {
        let fut = self.app.store.append(batch);
        self.pending
            .get_or_insert_with(FuturesOrdered::new)
            .push_back(Op {
                ctx: Some(ctx),
                fut,
                arrived: Instant::now(),
                durable: self.app.metrics.durable.clone(),
            });
    }

    /// Finishes a completed append and records its arrival → delivered latency.
    fn complete(&mut self, ctx: OpCtx, result: AppendResult, arrived: Instant) {
        let ok = result.is_ok();
        self.complete_op(ctx, result);
        if ok {
            self.app
                .metrics
                .delivered
                .record(arrived.elapsed().as_secs_f64());
        }
    }

    fn complete_op(&mut self, ctx: OpCtx, result: AppendResult) {
        match ctx {
            OpCtx::Im {
                seq,
                flag,
                receiver,
                body,
            } => self.complete_im(seq, flag, receiver, body, result),
            OpCtx::Customer {
                seq,
                flag,
                receiver_appid,
                receiver,
                body,
            } => self.complete_customer(seq, flag, receiver_appid, receiver, body, result),
            OpCtx::Group {
                seq,
                flag,
                group,
                uids,
                body,
            } => self.complete_group(seq, flag, group, uids, body, result),
        }
    }

    /// Checks the per-connection message rate; refuses the message when it is exceeded.
    pub(crate) fn rate_ok(&mut self, seq: i32) -> bool {
        if self.rate_allows() {
            return true;
        }
        self.refuse(seq, AckStatus::RATE_LIMITED, "rate limit");
        false
    }

    pub(crate) fn rate_allows(&mut self) -> bool {
        self.rate.as_mut().is_none_or(|r| r.allow())
    }

    /// Decodes a frame from the client and runs its handler if that handler never waits; otherwise
    /// returns what the session loop has to await.
    ///
    /// Memory: an idle session task is as large as the largest state of everything it awaits inline,
    /// so every handler awaited inline costs that much in every connection. Only SYNC (frequent, and
    /// small) is awaited inline; the rare handlers with large futures (authentication, group messages,
    /// group sync) are boxed: one allocation for such a frame instead of kilobytes held by every idle
    /// session. The `session_future_stays_small` test keeps this in check.
    fn dispatch(&mut self, frame: Frame) -> Result<Then<'_>, End> {
        let body = Body::decode(frame.cmd, frame.version, &frame.body)
            .map_err(|e| End::Protocol(e.to_string()))?;
        let authed = self.handle.is_some();
        match body {
            Body::Ping => self.emit(&Body::Pong, 0),
            Body::AuthToken(a) => {
                if !authed {
                    return Ok(Then::Wait(Box::pin(self.auth(a, frame.version))));
                }
            }
            Body::Ack(_) | Body::Pong | Body::Metadata(_) | Body::Deprecated { .. } => {}
            _ if !authed => {
                debug!(cmd = cmd::name(frame.cmd), "ignored before authentication");
            }
            Body::Im(im) => self.on_im(frame.seq, frame.flag, im),
            Body::Rt(rt) => self.on_rt(rt),
            Body::Sync(key) => return Ok(Then::Sync(key)),
            Body::SyncKey(key) => self.on_sync_key(key),
            Body::UnreadCount(n) => {
                if let Some(h) = &self.handle {
                    self.app.backend.set_unread(h.appid, h.uid, n);
                }
            }
            Body::GroupIm(im) => {
                return Ok(Then::Wait(Box::pin(
                    self.on_group_im(frame.seq, frame.flag, im),
                )))
            }
            Body::SyncGroup(g) => return Ok(Then::Wait(Box::pin(self.on_sync_group(g)))),
            Body::GroupSyncKey(g) => self.on_group_sync_key(g),
            Body::EnterRoom(room) => self.on_enter_room(room),
            Body::LeaveRoom(room) => self.on_leave_room(room),
            Body::RoomIm(msg) => self.on_room_im(frame.seq, msg),
            Body::Customer(c) => self.on_customer(frame.seq, frame.flag, c),
            // Server-to-client commands are not on the whitelist and never reach here.
            Body::AuthStatus(_)
            | Body::GroupNotification(_)
            | Body::System(_)
            | Body::Notification(_)
            | Body::SyncBegin(_)
            | Body::SyncEnd(_)
            | Body::SyncNotify(_)
            | Body::SyncGroupBegin(_)
            | Body::SyncGroupEnd(_)
            | Body::SyncGroupNotify(_) => {
                return Err(End::Protocol(format!(
                    "command {} is not allowed from clients",
                    frame.cmd
                )))
            }
        }
        Ok(Then::Done)
    }

    /// AUTH_TOKEN (spec §7.2). AUTH_STATUS is the first frame the client sees; a failure leaves the
    /// connection open for a retry.
    async fn auth(&mut self, a: AuthToken, version: u8) {
        let app = self.app.clone();
        let token = match std::str::from_utf8(&a.token) {
            Ok(t) if !t.is_empty() => t,
            _ => return self.auth_failed("malformed token"),
        };
        let info = match app.backend.authenticate(token).await {
            Ok(Some(info)) => info,
            Ok(None) => return self.auth_failed("unknown, expired or revoked token"),
            Err(e) => {
                Stats::inc(&app.stats.backend_errors);
                node::warn_throttled!(error = %e, "token lookup failed");
                return self.auth_failed("backend error");
            }
        };
        let flags = match app.backend.user_flags(info.appid, info.uid).await {
            Ok(f) => f,
            Err(e) => {
                Stats::inc(&app.stats.backend_errors);
                node::warn_throttled!(error = %e, "user flags lookup failed");
                return self.auth_failed("backend error");
            }
        };
        let device_id = if a.platform_id == Platform::WEB || a.device_id.is_empty() {
            0
        } else {
            match std::str::from_utf8(&a.device_id) {
                Ok(d) => match app.backend.device_id(d, a.platform_id).await {
                    Ok(id) => id,
                    Err(e) => {
                        Stats::inc(&app.stats.backend_errors);
                        node::warn_throttled!(error = %e, "device id allocation failed");
                        return self.auth_failed("backend error");
                    }
                },
                Err(_) => return self.auth_failed("malformed device id"),
            }
        };
        let online = !flags.notification_on || Platform::is_mobile(a.platform_id);
        self.version = version;
        self.emit(&Body::AuthStatus(0), 0);
        let handle = Arc::new(SessionHandle::new(
            SessionId {
                conn_id: self.conn_id,
                appid: info.appid,
                uid: info.uid,
                device_id,
                platform: a.platform_id,
                online,
                forbidden: flags.forbidden,
                token_fp: backend::token_fingerprint(token),
            },
            OutboxLimits {
                frames: app.server.outbox_frames,
                bytes: app.server.outbox_bytes,
                room_frames: app.server.room_backlog,
            },
        ));
        app.route.add(handle.clone());
        app.links.login(self.conn_id, info.appid, info.uid, online);
        self.handle = Some(handle);
        app.backend.set_unread(info.appid, info.uid, 0);
        Stats::inc(&app.stats.auth_ok);
        let span = tracing::Span::current();
        span.record("appid", info.appid);
        span.record("uid", info.uid);
        debug!(
            device_id,
            platform = a.platform_id,
            version,
            "authenticated"
        );
    }

    fn auth_failed(&mut self, why: &'static str) {
        Stats::inc(&self.app.stats.auth_failed);
        debug!(why, "authentication failed");
        self.emit(&Body::AuthStatus(1), 0);
    }

    /// Applies the sensitive-word filter to a TEXT message's content (spec §8.1 step 1).
    pub(crate) fn filter_text(&self, flags: u8, content: bytes::Bytes) -> bytes::Bytes {
        if flags & flag::TEXT == 0 {
            return content;
        }
        match self
            .app
            .words
            .as_ref()
            .and_then(|w| w.filter_content(&content))
        {
            Some(filtered) => bytes::Bytes::from(filtered),
            None => content,
        }
    }

    /// The SELF flag for a synced message (spec §9.2): sent by this user from this very device. Device 0
    /// (web clients, HTTP posts) never matches, so HTTP-originated messages are not marked SELF.
    pub(crate) fn self_flag(&self, cmd: u8, body: &[u8], device_id: i64) -> u8 {
        let Some(h) = &self.handle else { return 0 };
        if device_id == 0 || device_id != h.device_id {
            return 0;
        }
        let is_self = match cmd {
            cmd::IM | cmd::GROUP_IM => proto::body::peek_i64(body, 0) == Some(h.uid),
            cmd::CUSTOMER_V2 => {
                proto::body::peek_i64(body, 0) == Some(h.appid)
                    && proto::body::peek_i64(body, 8) == Some(h.uid)
            }
            _ => false,
        };
        if is_self {
            flag::SELF
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{StreamTransport, WsTransport};

    /// The size of the future `f` returns, without calling it.
    fn future_size<A, F: Future>(_f: impl Fn(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    fn session_future_size<T: Transport>() -> usize {
        future_size(
            |(app, t, peer, sd): (Arc<App>, T, SocketAddr, CancellationToken)| {
                run(app, t, peer, sd, Instant::now())
            },
        )
    }

    /// Every connection's task holds its session future for as long as it is connected, idle or not:
    /// a handler awaited inline with a large future (authentication, group messages and group sync
    /// are several KB to 18 KB) would cost that much per connection. Box such handlers in
    /// `Session::dispatch` (or what they await) rather than raising this bound.
    #[test]
    fn session_future_stays_small() {
        type Tls = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
        let sizes = [
            (
                "tcp",
                session_future_size::<StreamTransport<tokio::net::TcpStream>>(),
                std::mem::size_of::<StreamTransport<tokio::net::TcpStream>>(),
            ),
            (
                "tls",
                session_future_size::<StreamTransport<Tls>>(),
                std::mem::size_of::<StreamTransport<Tls>>(),
            ),
            (
                "ws",
                session_future_size::<WsTransport>(),
                std::mem::size_of::<WsTransport>(),
            ),
        ];
        for (name, future, transport) in sizes {
            eprintln!("{name}: session future {future} bytes, of which the transport {transport}");
            assert!(
                future - transport <= 1024,
                "the {name} session future is {future} bytes ({transport} of them the transport): \
                 something large is awaited inline in the session loop"
            );
        }
    }
}
