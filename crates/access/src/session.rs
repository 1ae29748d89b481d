//! One client session (docs/protocol.md §8): the connection loop only — a single task that reads
//! frames, hands each to [`handlers::dispatch`], submits the appends handlers return and completes
//! them in order, drains the session's outbox, writes everything it produced in one coalesced write
//! per wake-up, and keeps the login and owed-sync timers. What a command does is in
//! [`crate::handlers`]. Also the node's session sweep ([`sweep`]): the idle timeout of logged-in
//! sessions and the node's shutdown reach them through their handles, so an idle session's task waits on
//! no timer of its own.
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

use futures_util::future::Either;
use futures_util::stream::{FuturesOrdered, StreamExt};
use tokio::time::{sleep_until, timeout, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::app::{App, AppendResult, Stats};
use crate::handlers::{self, room, sync, Append, Conn, Reply, Step, Stored};
use crate::route::{SessionHandle, IDLE_TIMEOUT, OUTBOX_FULL, ROOM_LAG, SHUTDOWN};
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
    /// How a session ends that its handle says must close for `reason`.
    fn closed(reason: &'static str) -> End {
        match reason {
            SHUTDOWN => End::Shutdown,
            IDLE_TIMEOUT => End::Timeout(IDLE_TIMEOUT),
            r => End::Kicked(r),
        }
    }

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

/// A pending append and what completes it.
pub(crate) struct Op {
    ctx: Option<Box<Stored>>,
    fut: Pin<Box<dyn Future<Output = AppendResult> + Send>>,
    /// When the message arrived (its handler submits it at once).
    arrived: Instant,
}

impl Future for Op {
    type Output = (Box<Stored>, AppendResult, Instant);
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.fut.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(r) => match self.ctx.take() {
                Some(ctx) => Poll::Ready((ctx, r, self.arrived)),
                // Polled after completion: never resolves again (FuturesOrdered does not do this).
                None => Poll::Pending,
            },
        }
    }
}

/// The next completed append, in submission order; `None` when nothing is in flight.
async fn next_completion(
    pending: &mut Option<Box<FuturesOrdered<Op>>>,
) -> Option<(Box<Stored>, AppendResult, Instant)> {
    match pending {
        Some(p) => p.next().await,
        None => None,
    }
}

/// One connection: its state as handlers see it, what it writes, and the appends in flight.
pub(crate) struct Session {
    conn: Conn,
    out: Reply,
    /// Appends in flight, completed in submission order. Allocated only while there are some, and
    /// boxed: inline, the empty set would take 64 bytes of every idle session.
    pending: Option<Box<FuturesOrdered<Op>>>,
    /// When the client must have authenticated (set by the listener at accept).
    login_deadline: Instant,
}

/// Runs a session on `transport` until it ends, then unregisters it: spawned on `tracker` as the
/// connection's task. The client must authenticate before `login_deadline`: the listener sets it when
/// it accepts the connection, so the TLS handshake and WebSocket upgrade count against the same
/// `server.login_timeout_secs`.
///
/// `permit` (the listener's connection permit) is held until the session has ended and is dropped
/// last.
///
/// The session is set up before its future is built, so the arguments only needed for that are not
/// kept in every idle session's task, and the future is spawned as it is: wrapped in another `async`
/// block, whatever that block captured would stay in the task beside it. The session's `debug` span
/// (connection, peer, and once known the app and uid) wraps the future only when `debug` is enabled
/// for sessions: a disabled span would still take 40 bytes of every connection's task.
pub fn spawn<T: Transport, P: Send + 'static>(
    tracker: &TaskTracker,
    app: Arc<App>,
    transport: T,
    peer: SocketAddr,
    login_deadline: Instant,
    permit: P,
) {
    let conn_id = app.next_conn_id();
    Stats::inc(&app.stats.connections);
    Stats::inc(&app.stats.connections_total);
    let span = tracing::debug_span!("session", conn = conn_id, %peer, appid = tracing::field::Empty, uid = tracing::field::Empty);
    let session = run(
        Session {
            conn: Conn::new(app, conn_id),
            out: Reply::default(),
            pending: None,
            login_deadline,
        },
        transport,
        peer,
        permit,
    );
    if span.is_disabled() {
        tracker.spawn(session);
    } else {
        tracker.spawn(session.instrument(span));
    }
}

/// The session's future. Everything it needs is captured by `async move` and used in place: as an
/// `async fn` it keeps its arguments beside the locals they are moved into (288 bytes more per
/// connection, measured by `session_future_stays_small`).
#[allow(clippy::manual_async_fn)]
fn run<T: Transport, P: Send + 'static>(
    mut s: Session,
    mut transport: T,
    peer: SocketAddr,
    permit: P,
) -> impl Future<Output = ()> + Send {
    async move {
        let end = s.run_loop(&mut transport).await;
        s.finish(end, &mut transport, peer).await;
        drop(permit);
    }
}

/// What woke a waiting session besides its client and its appends.
enum Wake {
    /// Its handle: frames queued for it, or it must close.
    Notified,
    Shutdown,
    Deadline,
}

/// The wait of a session that is not logged in or is owed a sync: its handle (if any), the node's
/// shutdown, and `deadline`.
async fn wait_timed(
    handle: Option<&SessionHandle>,
    shutdown: &CancellationToken,
    deadline: Instant,
) -> Wake {
    tokio::select! {
        biased;
        _ = shutdown.cancelled() => Wake::Shutdown,
        _ = async { match handle { Some(h) => h.wait().await, None => std::future::pending().await } } => Wake::Notified,
        _ = sleep_until(deadline) => Wake::Deadline,
    }
}

/// The node's session sweep, run once per node until shutdown: closes logged-in sessions whose client
/// has been silent for `server.idle_timeout_secs` (a pass every sixteenth of the timeout, between
/// 0.1 s and 5 s apart), and at shutdown closes every session. Logged-in sessions rely on it for both
/// (see `Session::run_loop`): a pass over the route table every few seconds costs far less than a timer
/// in every connection's task.
pub(crate) async fn sweep(app: Arc<App>) {
    let idle = Duration::from_secs(app.server.idle_timeout_secs);
    let period = (idle / 16).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => break,
            _ = tick.tick() => {
                let closed = app.route.close_idle(std::time::Instant::now(), idle);
                if closed > 0 {
                    debug!(closed, "closed idle sessions");
                }
            }
        }
    }
    app.route.close_all();
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
        let app = self.conn.app.clone();
        let uid = self.conn.handle.as_ref().map(|h| h.uid);
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
            // Counted by the room table when it decided.
            End::Kicked(ROOM_LAG) => {
                let lost = self.conn.handle.as_ref().map_or(0, |h| h.room_dropped());
                info!(%peer, ?uid, reason = %end, room_messages_lost = lost, "session closed")
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
            End::Kicked(reason) => reason != OUTBOX_FULL && reason != ROOM_LAG,
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
                while let Some((then, result, arrived)) = next_completion(&mut self.pending).await {
                    self.complete(*then, result, arrived);
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
        if writable && !self.out.is_torn() && self.out.frames() > 0 {
            let _ = Box::pin(timeout(FINAL_FLUSH_LIMIT, self.flush(transport, false))).await;
        }
        room::leave_current_room(&mut self.conn);
        if let Some(h) = self.conn.handle.take() {
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
    /// The connection loop. Its locals are part of every idle session's task, so what can be read
    /// from the configuration when needed (the idle timeout, the in-flight bound) is not kept.
    async fn run_loop<T: Transport>(&mut self, t: &mut T) -> End {
        let mut last_frame = Instant::now();
        loop {
            if sync::owed_due(&self.conn) {
                // Rare, and its future is large: boxed (see `handlers::dispatch`).
                Box::pin(sync::answer_owed_syncs(&mut self.conn, &mut self.out)).await;
            }
            if let Some(h) = &self.conn.handle {
                // What others pushed to this session, taken from its outbox. Not kept between
                // wake-ups: a buffer in the session would be part of every idle session's task.
                let mut inbox = Vec::new();
                if let Some(reason) = h.drain(&mut inbox) {
                    return End::closed(reason);
                }
                self.out.emit_pushes(&mut inbox);
            }
            // Boxed: a blocked write's state (the write, its timeout, the kick and shutdown waits) is
            // the session's largest, and inline every idle session's task would carry it. One small
            // allocation per coalesced write, against about 190 bytes of every connection.
            if let Err(e) = Box::pin(self.flush(t, true)).await {
                return e;
            }
            if self.conn.handle.as_ref().is_some_and(|h| h.has_pending()) {
                // Pushed to while writing (the wake-up may have been consumed by the write): drain now.
                continue;
            }
            let handle = self.conn.handle.clone();
            // Logged in with no sync owed, the session's timers (the idle timeout) and the node's
            // shutdown reach it through its handle (see `sweep`), so an idle session waits on one
            // notification. Before login, or with a sync owed, it waits on a timer and the shutdown
            // token as well: boxed, as that wait is short-lived or rare, and inline it would be part of
            // every idle session's task.
            let wake = match &handle {
                Some(h) if self.conn.owed.is_none() => Either::Left(async {
                    h.wait().await;
                    Wake::Notified
                }),
                _ => Either::Right(Box::pin(wait_timed(
                    handle.as_deref(),
                    &self.conn.app.shutdown,
                    self.deadline(last_frame),
                ))),
            };
            // The frame is handled after the select, once its futures are gone: an idle session task
            // is as large as its largest await point, and the handler must not add to the select's.
            let frame = tokio::select! {
                biased;
                Some((then, result, arrived)) = next_completion(&mut self.pending), if self.inflight() > 0 => {
                    self.complete(*then, result, arrived);
                    continue;
                }
                w = wake => match w {
                    Wake::Notified => continue,
                    Wake::Shutdown => return End::Shutdown,
                    Wake::Deadline => {
                        if sync::owed_due(&self.conn) {
                            continue;
                        }
                        return End::Timeout(if self.conn.handle.is_some() { IDLE_TIMEOUT } else { "login timeout" });
                    }
                },
                r = t.recv(), if self.inflight() < self.conn.app.server.max_inflight.max(1) => match r {
                    Ok(Some(frame)) => frame,
                    Ok(None) => return End::ClientClosed,
                    Err(e) => return End::Recv(e),
                },
            };
            drop(handle);
            last_frame = Instant::now();
            if let Some(h) = &self.conn.handle {
                h.touch(last_frame.into_std());
            }
            Stats::inc(&self.conn.app.stats.frames_in);
            // What the frame's handler left to do, taken out of the step before anything is awaited:
            // awaited inside this match, the whole step (an append inline) would be part of the
            // session's state, and so of every idle session's task.
            let (append, sync_key) = {
                let (append, sync_key, handler) =
                    match handlers::dispatch(&mut self.conn, &mut self.out, frame) {
                        Ok(Step::Done) => continue,
                        Ok(Step::Append(append)) => (Some(append), None, None),
                        Ok(Step::Sync(key)) => (None, Some(key), None),
                        Ok(Step::Wait(handler)) => (None, None, Some(handler)),
                        Err(e) => return End::Protocol(e.0),
                    };
                match handler {
                    Some(handler) => {
                        drop(append);
                        (handler.await, None)
                    }
                    None => (append, sync_key),
                }
            };
            if let Some(append) = append {
                self.submit(append, last_frame);
            }
            if let Some(key) = sync_key {
                // Boxed: a sync's state (the sync key lookup, the store read) would otherwise be the
                // largest part of every idle session's task.
                Box::pin(sync::on_sync(&mut self.conn, &mut self.out, key)).await;
            }
        }
    }

    /// Writes everything produced so far, in one coalesced write. A client that does not read blocks
    /// the write; meanwhile a kick or (with `until_shutdown`) the node's shutdown ends it.
    async fn flush<T: Transport>(&mut self, t: &mut T, until_shutdown: bool) -> Result<(), End> {
        if self.out.frames() == 0 {
            if self.inflight() == 0 {
                self.release_buffers();
            }
            return Ok(());
        }
        Stats::add(&self.conn.app.stats.frames_out, self.out.frames() as u64);
        let wt = Duration::from_secs(self.conn.app.server.write_timeout_secs);
        // Borrowed beside the reply buffer (disjoint fields): nothing is cloned per write.
        let handle = self.conn.handle.as_ref();
        let shutdown = until_shutdown.then_some(&self.conn.app.shutdown);
        let r = {
            let (buf, ends) = self.out.parts();
            let send = timeout(wt, t.send(buf, ends));
            tokio::pin!(send);
            loop {
                // The write first: it usually completes at once, and then nothing else is polled.
                tokio::select! {
                    biased;
                    r = &mut send => break Ok(r),
                    _ = async { match shutdown { Some(s) => s.cancelled().await, None => std::future::pending().await } } => {
                        break Err(End::Shutdown);
                    }
                    _ = async { match handle { Some(h) => h.wait().await, None => std::future::pending().await } } => {
                        if let Some(reason) = handle.and_then(|h| h.close_reason()) {
                            break Err(End::closed(reason));
                        }
                    }
                }
            }
        };
        let r = match r {
            Ok(r) => r,
            // The write is abandoned part-way.
            Err(end) => {
                self.out.tear();
                return Err(end);
            }
        };
        self.out.written();
        if self.inflight() == 0 {
            self.release_buffers();
        } else {
            self.out.shrink();
        }
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(End::WriteFailed(e)),
            Err(_) => Err(End::WriteTimeout),
        }
    }

    /// When the session's timed wait ends: the login deadline (not yet logged in), the idle timeout
    /// after the client's last frame at `last_frame`, or a sync owed to the client falling due.
    fn deadline(&self, last_frame: Instant) -> Instant {
        let idle = last_frame + Duration::from_secs(self.conn.app.server.idle_timeout_secs);
        let deadline = if self.conn.handle.is_some() {
            idle
        } else {
            self.login_deadline.min(idle)
        };
        match self.conn.owed.as_ref() {
            Some(o) if o.at < deadline => o.at,
            _ => deadline,
        }
    }

    /// Appends submitted and not yet completed.
    fn inflight(&self) -> usize {
        self.pending.as_ref().map_or(0, |p| p.len())
    }

    /// Gives back the write buffer, the frame ends and the in-flight set once everything
    /// is written and nothing is in flight: a session between messages holds no buffers (they are
    /// small to allocate again; keeping them would cost every idle connection).
    fn release_buffers(&mut self) {
        self.out.release();
        self.pending = None;
    }

    /// Submits a handler's append, for a message that arrived at `arrived`; its completion runs
    /// once the store has answered, in order.
    fn submit(&mut self, append: Append, arrived: Instant) {
        let fut = self.conn.app.store.append(append.batch);
        self.pending
            .get_or_insert_with(|| Box::new(FuturesOrdered::new()))
            .push_back(Op {
                ctx: Some(append.then),
                fut,
                arrived,
            });
    }

    /// Finishes a completed append (its handler's completion) and records its arrival → durable
    /// and arrival → delivered latencies.
    fn complete(&mut self, then: Stored, result: AppendResult, arrived: Instant) {
        let ok = result.is_ok();
        if ok {
            let durable = arrived.elapsed();
            self.conn.app.metrics.durable.record(durable.as_secs_f64());
        }
        handlers::complete(&self.conn, &mut self.out, then, result);
        if ok {
            self.conn
                .app
                .metrics
                .delivered
                .record(arrived.elapsed().as_secs_f64());
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
            |(s, t, peer, p): (Session, T, SocketAddr, crate::admission::Permit)| {
                run(s, t, peer, p)
            },
        )
    }

    /// Every connection's task holds its session future for as long as it is connected, idle or not:
    /// a handler awaited inline with a large future (authentication, group messages and group sync
    /// are several KB to 18 KB) would cost that much per connection, and so would a timer or a
    /// blocked write's state. Box such waits in `Session::run_loop` (or what they await) rather than
    /// raising this bound: about 440 bytes besides the transport, so that a TCP session's task (128-byte
    /// steps, tokio's header and trailer included) is 640 bytes.
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
                future - transport <= 448,
                "the {name} session future is {future} bytes ({transport} of them the transport): \
                 something large is awaited inline in the session loop"
            );
        }
    }
}
