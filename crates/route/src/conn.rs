//! Access-node connections: the accept loop and one task per connection.
//!
//! The task `select!`s over its reader (frames from the node, handled inline: every action is a
//! non-blocking table update or outbox append), its writer (the outbox, coalesced into one write
//! per wake-up, each write under the write deadline), its kill switch and shutdown. Whatever ends
//! first ends the connection, and the table forgets everything the node subscribed. A malformed
//! frame closes only that connection, with a log line. Accept errors (e.g. out of file
//! descriptors) are logged and retried, never fatal (docs/compatibility.md, *Other defects*: accept
//! errors).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cluster::route_proto::{cmd, write_frame, PushRequest, RouteBody, RouteKind};
use futures_util::StreamExt;
use node::frame::{frame_reader, FrameError};
use proto::Frame;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::table::Conn;
use crate::Router;

/// Bytes coalesced into one write.
const WRITE_CHUNK: usize = 64 * 1024;

pub(crate) async fn accept_loop(
    router: Arc<Router>,
    listener: TcpListener,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let permits = Arc::new(Semaphore::new(router.config.limits.max_connections));
    let keepalive = Duration::from_secs(router.config.limits.keepalive_secs);
    node::net::accept_loop(
        &listener,
        "access nodes",
        Some(keepalive),
        &shutdown,
        |stream, peer| {
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                router.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                node::warn_throttled!(%peer, max = router.config.limits.max_connections, "too many access-node connections; refusing");
                return;
            };
            router.metrics.accepted.fetch_add(1, Ordering::Relaxed);
            let limits = &router.config.limits;
            let id = router.next_conn.fetch_add(1, Ordering::Relaxed) + 1;
            let conn = Arc::new(Conn::new(
                id,
                peer,
                (
                    limits.outbox_frames,
                    limits.outbox_bytes,
                    limits.notify_backlog,
                ),
                router.metrics.clone(),
            ));
            // Registered here, so connections are listed in accept order.
            router.table.add_conn(conn.clone());
            let r = router.clone();
            let shutdown = shutdown.clone();
            tracker.spawn(async move {
                serve(r, conn, stream, shutdown).await;
                drop(permit);
            });
        },
    )
    .await;
}

async fn serve(
    router: Arc<Router>,
    conn: Arc<Conn>,
    stream: TcpStream,
    shutdown: CancellationToken,
) {
    let (id, peer) = (conn.id, conn.peer);
    tracing::info!(conn = id, %peer, "access node connected");
    let (rd, wr) = stream.into_split();
    let why = tokio::select! {
        why = read_loop(&router, &conn, rd) => why,
        why = write_loop(&router, &conn, wr) => why,
        _ = conn.kill.cancelled() => "closed by the router",
        _ = shutdown.cancelled() => "shutdown",
    };
    router.table.remove_conn(&conn);
    tracing::info!(
        conn = id,
        %peer,
        why,
        dropped = conn.dropped.load(Ordering::Relaxed),
        "access node disconnected; its subscriptions are forgotten"
    );
}

async fn read_loop(router: &Router, conn: &Arc<Conn>, rd: OwnedReadHalf) -> &'static str {
    let mut frames = frame_reader(rd, router.config.limits.max_body);
    loop {
        match frames.next().await {
            None => return "closed by the access node",
            Some(Ok(frame)) => {
                conn.received.fetch_add(1, Ordering::Relaxed);
                if let Err(why) = handle(router, conn, frame) {
                    return why;
                }
            }
            Some(Err(FrameError::Io(e))) => {
                tracing::debug!(conn = conn.id, error = %e, "read from access node failed");
                return "read error";
            }
            Some(Err(e)) => {
                router.metrics.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(conn = conn.id, peer = %conn.peer, error = %e, "malformed frame from access node; closing its connection");
                return "malformed frame";
            }
        }
    }
}

fn handle(router: &Router, conn: &Arc<Conn>, frame: Frame) -> Result<(), &'static str> {
    let m = &router.metrics;
    if !matches!(
        frame.cmd,
        cmd::SUBSCRIBE
            | cmd::UNSUBSCRIBE
            | cmd::SUBSCRIBE_ROOM
            | cmd::UNSUBSCRIBE_ROOM
            | cmd::PUBLISH
            | cmd::PUBLISH_GROUP
            | cmd::PUBLISH_ROOM
            | cmd::PUSH
            | cmd::WATCH_PRESENCE
            | cmd::STORED_PUBLISH
            | cmd::PUBLISH_STORED
    ) {
        m.unknown_commands.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            conn = conn.id,
            cmd = frame.cmd,
            "ignoring unknown command from access node"
        );
        return Ok(());
    }
    let body = match RouteBody::decode(frame.cmd, &frame.body) {
        Ok(b) => b,
        Err(e) => {
            m.malformed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(conn = conn.id, peer = %conn.peer, error = %e, "malformed route body from access node; closing its connection");
            return Err("malformed route body");
        }
    };
    let t = &router.table;
    match body {
        RouteBody::Subscribe { appid, uid, online } => t.subscribe(conn, appid, uid, online),
        RouteBody::Unsubscribe { appid, uid } => t.unsubscribe(conn, appid, uid),
        RouteBody::SubscribeRoom { appid, room } => t.subscribe_room(conn, appid, room),
        RouteBody::UnsubscribeRoom { appid, room } => t.unsubscribe_room(conn, appid, room),
        RouteBody::Publish(msg) => {
            // Forwarded unchanged: the received body is shared by every receiving connection.
            let body: &Bytes = &frame.body;
            match msg.kind {
                RouteKind::User => {
                    m.publish_in_user.fetch_add(1, Ordering::Relaxed);
                    t.forward_user(conn.id, msg.appid, msg.receiver, frame.cmd, body);
                }
                RouteKind::Group => {
                    m.publish_in_group.fetch_add(1, Ordering::Relaxed);
                    t.forward_all(conn.id, frame.cmd, body);
                }
                RouteKind::Room => {
                    m.publish_in_room.fetch_add(1, Ordering::Relaxed);
                    t.forward_room(conn.id, msg.appid, msg.receiver, frame.cmd, body);
                }
            }
        }
        RouteBody::PublishStored { message, push } => {
            m.publish_in_stored.fetch_add(1, Ordering::Relaxed);
            t.forward_stored(conn.id, message.appid, message.receiver, &frame.body);
            if push {
                let receivers = vec![message.receiver];
                crate::push::handle(
                    router,
                    PushRequest {
                        appid: message.appid,
                        receivers,
                        inner: message.inner,
                    },
                );
            }
        }
        RouteBody::StoredPublish => {
            tracing::debug!(conn = conn.id, "access node takes stored publishes");
            conn.stored.store(true, Ordering::Release);
            conn.send_unbounded(cmd::STORED_PUBLISH, Bytes::new());
        }
        RouteBody::Push(req) => crate::push::handle(router, req),
        RouteBody::WatchPresence => {
            tracing::debug!(conn = conn.id, "access node watches remote presence");
            t.watch(conn);
        }
        // Not in the list above: the router's own frames are never accepted from a node.
        RouteBody::RemotePresence(_) | RouteBody::Peers { .. } => {}
    }
    Ok(())
}

async fn write_loop(router: &Router, conn: &Conn, mut wr: OwnedWriteHalf) -> &'static str {
    let timeout = Duration::from_millis(router.config.limits.write_timeout_ms);
    let mut batch: Vec<(u8, Bytes)> = Vec::new();
    let mut buf = BytesMut::new();
    let mut seq: i32 = 0;
    loop {
        conn.drain(&mut batch, WRITE_CHUNK);
        if batch.is_empty() {
            if buf.capacity() > 4 * WRITE_CHUNK {
                buf = BytesMut::new(); // an idle connection keeps no big buffer
            }
            conn.wake.notified().await;
            // The other tasks this worker has ready (readers of other nodes' links) run first,
            // so what they forward to this node leaves in one write.
            tokio::task::yield_now().await;
            continue;
        }
        let n = batch.len() as u64;
        for (c, body) in batch.drain(..) {
            seq = seq.wrapping_add(1);
            write_frame(&mut buf, seq, c, &body);
        }
        let started = std::time::Instant::now();
        match tokio::time::timeout(timeout, wr.write_all(&buf)).await {
            Ok(Ok(())) => {
                router.metrics.write_batch.record(n as f64);
                router
                    .metrics
                    .write_seconds
                    .record(started.elapsed().as_secs_f64());
                conn.sent.fetch_add(n, Ordering::Relaxed);
                buf.clear();
            }
            Ok(Err(e)) => {
                tracing::debug!(conn = conn.id, error = %e, "write to access node failed");
                return "write error";
            }
            Err(_) => {
                router
                    .metrics
                    .write_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(conn = conn.id, peer = %conn.peer, ?timeout, "access node does not read; disconnecting it");
                return "write deadline passed";
            }
        }
    }
}
