//! Graceful shutdown is bounded by what the server controls, not by its clients: a session blocked
//! writing to a client that does not read notices the shutdown at once.
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use proto::{flag, Body, Im};

#[tokio::test]
async fn shutdown_does_not_wait_for_clients_that_do_not_read() {
    let s = TestServer::start_with(|c| {
        // Generous limits, so the stuck session neither times out nor is dropped as a slow consumer
        // during the test: only the shutdown can end it.
        c.server.write_timeout_secs = 120;
        c.server.outbox_bytes = 256 << 20;
        c.server.outbox_frames = 1 << 20;
    })
    .await
    .unwrap();
    // The receiver logs in and then never reads again.
    let _stuck = Client::login(&s, 2, 2, false, "stuck").await;
    let mut sender = Client::login(&s, 1, 2, false, "sender").await;
    let content = Bytes::from(vec![b'x'; 30_000]);
    // 600 × 30 KB pushed at the receiver is far more than loopback socket buffers hold.
    for i in 0..600 {
        let im = Im {
            sender: 1,
            receiver: 2,
            timestamp: 0,
            msgid: i,
            content: content.clone(),
        };
        sender.send_body(&Body::Im(im), flag::TEXT).await;
    }
    // Wait for the sender's ACKs: by then every push has been handed to the receiver's session.
    for _ in 0..600 {
        sender.recv_until(proto::cmd::ACK).await;
    }
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(30), s.stop())
        .await
        .expect("shutdown finished");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "shutdown took {took:?}: it waited for a client that does not read"
    );
}

#[tokio::test]
async fn shutdown_closes_idle_sessions_and_unauthenticated_connections_at_once() {
    let s = TestServer::start().await.unwrap();
    let mut idle = Client::login(&s, 1, 2, false, "idle").await;
    let mut anonymous = Client::tcp(s.tcp).await;
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(30), s.stop())
        .await
        .expect("shutdown finished");
    assert!(idle.closed_within(Duration::from_secs(2)).await);
    assert!(anonymous.closed_within(Duration::from_secs(2)).await);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
}
