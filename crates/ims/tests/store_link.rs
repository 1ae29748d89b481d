//! The store link end to end on loopback sockets: pipelining with out-of-order replies, every
//! operation against an in-process store, sharded appends over two stores, timeouts,
//! unavailability and reconnection, frame limits, follower refusal and run-time address swaps.
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use cluster::store_client::{RemoteStore, RemoteStoreError, StorePool, StorePoolOptions};
use cluster::store_proto::{self as sp, ErrorCode, Request};
use common::*;
use ims::replication::ReplicationHub;
use ims::server::{StoreServerOptions, SyncReplication};
use node::frame::encode_frame;
use store::{QueueId, Role, StoreError};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

fn pool_opts() -> StorePoolOptions {
    StorePoolOptions {
        request_timeout: Duration::from_secs(5),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        ..StorePoolOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_out_of_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), opts(Role::Leader));
    // sync mode with no follower: the append is held for 300 ms, the ping behind it is not
    let sopts = StoreServerOptions {
        sync_replication: Some(SyncReplication {
            hub: ReplicationHub::new(),
            timeout: Duration::from_millis(300),
        }),
        ..StoreServerOptions::default()
    };
    let served = serve_store(store.clone(), sopts).await;
    let mut sock = TcpStream::connect(served.addr).await.unwrap();
    let append = Request::Append(vec![msg(&[QueueId::user(1, 1)], "slow")]);
    let mut body = BytesMut::new();
    append.encode_body(&mut body);
    let mut out = BytesMut::new();
    out.extend_from_slice(&encode_frame(
        41,
        sp::CMD_APPEND,
        sp::LINK_VERSION,
        0,
        &body,
    ));
    out.extend_from_slice(&encode_frame(42, sp::CMD_PING, sp::LINK_VERSION, 0, &[]));
    let mut lk = BytesMut::new();
    sp::put_queue(&mut lk, QueueId::user(1, 1));
    out.extend_from_slice(&encode_frame(
        43,
        sp::CMD_LAST_KEY,
        sp::LINK_VERSION,
        0,
        &lk,
    ));
    sock.write_all(&out).await.unwrap();
    let mut buf = BytesMut::new();
    let mut order = Vec::new();
    for _ in 0..3 {
        let f = read_frame(&mut sock, &mut buf, 1 << 20)
            .await
            .unwrap()
            .unwrap();
        assert_ne!(f.flag & sp::FLAG_REPLY, 0);
        order.push((f.seq, f.cmd, f.flag, f.body));
    }
    let seqs: Vec<i32> = order.iter().map(|o| o.0).collect();
    assert_eq!(
        seqs.last(),
        Some(&41),
        "the held append must be answered last: {seqs:?}"
    );
    assert!(seqs.contains(&42) && seqs.contains(&43));
    let (_, cmd, flag, body) = order.pop().unwrap();
    assert_eq!(cmd, sp::CMD_APPEND);
    assert_ne!(flag & sp::FLAG_ERROR, 0);
    let (code, message) = sp::decode_error(body).unwrap();
    assert_eq!(code, ErrorCode::ReplicationTimeout);
    assert!(message.contains("no follower acknowledged"), "{message}");
    // the append was written on the leader, then withdrawn: it is never visible
    assert!(store.log_end() > 0);
    assert_eq!(store.last_key(QueueId::user(1, 1)), 0);
    assert!(store
        .sync(QueueId::user(1, 1), 0, 10)
        .unwrap()
        .messages
        .is_empty());
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_requests_share_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), opts(Role::Leader));
    let served = serve_store(store.clone(), StoreServerOptions::default()).await;
    let pool = Arc::new(StorePool::new(
        served.addr.to_string(),
        StorePoolOptions {
            connections: 1,
            ..pool_opts()
        },
    ));
    let mut tasks = Vec::new();
    for i in 0..200i64 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let q = QueueId::user(1, i % 10);
            let r = pool
                .append(vec![msg(&[q], &format!("m{i}"))])
                .await
                .unwrap();
            let page = pool.sync(q, r[0][0].prev_key, 1).await.unwrap();
            assert_eq!(page.messages[0].key, r[0][0].key);
            assert_eq!(page.messages[0].body, format!("m{i}").as_bytes());
            r[0][0].key
        }));
    }
    let mut keys = Vec::new();
    for t in tasks {
        keys.push(t.await.unwrap());
    }
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), 200, "every append got its own key");
    assert_eq!(pool.open_connections(), 1);
    served.stop().await;
}

/// More appends outstanding than the in-flight window: those waiting for a place must still be
/// sent, and so stored, in the order they were made (a session's messages to one receiver).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_beyond_the_in_flight_window_are_stored_in_call_order() {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), opts(Role::Leader));
    let served = serve_store(store.clone(), StoreServerOptions::default()).await;
    let pool = Arc::new(StorePool::new(
        served.addr.to_string(),
        StorePoolOptions {
            max_in_flight_per_conn: 4,
            ..pool_opts()
        },
    ));
    let q = QueueId::user(1, 7);
    let other = QueueId::user(1, 8);
    const N: usize = 3000;
    let mut inflight = FuturesUnordered::new();
    for i in 0..N {
        let pool = pool.clone();
        inflight.push(async move {
            let r = pool
                .append(vec![msg(&[q], &format!("m{i}"))])
                .await
                .unwrap();
            // reads in between, on any connection of the pool
            if i % 10 == 0 {
                pool.last_key(other).await.unwrap();
            }
            r.len()
        });
    }
    let mut acked = 0;
    while let Some(n) = inflight.next().await {
        acked += n;
    }
    assert_eq!(acked, N);
    let mut bodies = Vec::new();
    let mut after = 0;
    loop {
        let page = pool.sync(q, after, 1000).await.unwrap();
        if page.messages.is_empty() {
            break;
        }
        after = page.messages.last().unwrap().key;
        bodies.extend(
            page.messages
                .iter()
                .map(|m| String::from_utf8(m.body.to_vec()).unwrap()),
        );
    }
    let expected: Vec<String> = (0..N).map(|i| format!("m{i}")).collect();
    let first_bad = bodies.iter().zip(&expected).position(|(a, b)| a != b);
    assert_eq!(bodies.len(), N);
    assert!(
        first_bad.is_none(),
        "stored out of order from index {first_bad:?}: {:?}",
        &bodies[first_bad.unwrap_or(0)..(first_bad.unwrap_or(0) + 40).min(N)]
    );
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_matches_the_in_process_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), opts(Role::Leader));
    let served = serve_store(store.clone(), StoreServerOptions::default()).await;
    let pool = StorePool::new(served.addr.to_string(), pool_opts());
    let alice = QueueId::user(7, 1);
    let bob = QueueId::user(7, 2);
    let g = QueueId::group(7, 99);
    let mut appended = Vec::new();
    for i in 0..30 {
        let mut m = msg(&[alice, bob], &format!("peer {i}"));
        m.timestamp = 1000 + i;
        let mut gm = msg(&[g, alice], &format!("group {i}"));
        gm.cmd = store::CMD_GROUP_IM;
        gm.timestamp = 1000 + i;
        let r = pool.append(vec![m, gm]).await.unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].len(), 2);
        appended.push(r);
    }
    // keys returned remotely are the store's keys
    assert_eq!(store.last_key(alice), appended[29][1][1].key);
    assert_eq!(pool.last_key(alice).await.unwrap(), store.last_key(alice));
    assert_eq!(pool.last_key(g).await.unwrap(), store.last_key(g));
    assert_eq!(pool.last_key(QueueId::user(7, 12345)).await.unwrap(), 0);
    // reads on the async worker (cache window) and on the blocking pool answer the same
    let cold = serve_store(
        store.clone(),
        StoreServerOptions {
            inline_read_window: 0,
            ..StoreServerOptions::default()
        },
    )
    .await;
    let cold_pool = StorePool::new(cold.addr.to_string(), pool_opts());
    for p in [&pool, &cold_pool] {
        for q in [alice, bob, g] {
            for after in [0, appended[10][0][0].key, store.last_key(q)] {
                for limit in [1, 7, 3000] {
                    assert_eq!(
                        p.sync(q, after, limit).await.unwrap(),
                        store.sync(q, after, limit).unwrap()
                    );
                }
                assert_eq!(
                    p.new_count(q, after).await.unwrap(),
                    store.new_count(q, after).unwrap()
                );
                assert_eq!(
                    p.sync_since(q, after, 5, 1015).await.unwrap(),
                    store.sync_since(q, after, 5, 1015).unwrap()
                );
            }
            for n in [1, 5, 100] {
                assert_eq!(p.latest(q, n).await.unwrap(), store.latest(q, n).unwrap());
                assert_eq!(
                    p.latest_peer(q, n).await.unwrap(),
                    store.latest_peer(q, n).unwrap()
                );
            }
        }
    }
    cold.stop().await;
    let ping = pool.ping().await.unwrap();
    assert!(ping.leader);
    assert_eq!(ping.log_end, store.log_end());
    // a store refusal keeps its kind
    let err = pool.append(vec![msg(&[], "no queue")]).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidArgument), "{err}");
    assert!(matches!(
        StoreError::from(err),
        StoreError::InvalidArgument(_)
    ));
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_append_splits_a_peer_message_over_two_stores() {
    let d0 = tempfile::tempdir().unwrap();
    let d1 = tempfile::tempdir().unwrap();
    let s0 = serve_store(open(d0.path(), opts(Role::Leader)), Default::default()).await;
    let s1 = serve_store(open(d1.path(), opts(Role::Leader)), Default::default()).await;
    let remote = RemoteStore::new(
        vec![s0.addr.to_string(), s1.addr.to_string()],
        vec![s1.addr.to_string()],
        pool_opts(),
    )
    .unwrap();
    // uid 4 → shard 0, uid 7 → shard 1, uid -3 → |−3| mod 2 = 1, i64::MIN → 2^63 mod 2 = 0
    let receiver = QueueId::user(1, 4);
    let sender = QueueId::user(1, 7);
    let negative = QueueId::user(1, -3);
    let min = QueueId::user(1, i64::MIN);
    let group = QueueId::group(1, 10); // group list has one store: s1
    let r = remote
        .append(vec![
            msg(&[receiver, sender], "hello"),
            msg(&[sender, min, negative, receiver], "fan"),
            msg(&[group], "group"),
        ])
        .await
        .unwrap();
    assert_eq!(r.len(), 3);
    assert_eq!(r[0].len(), 2);
    assert_eq!(r[1].len(), 4);
    // results are in the original queue order and are the owning store's keys
    assert_eq!(s0.store.last_key(receiver), r[1][3].key);
    assert_eq!(
        s0.store.sync(receiver, 0, 10).unwrap().messages[0].key,
        r[0][0].key
    );
    assert_eq!(
        s1.store.sync(sender, 0, 10).unwrap().messages[0].key,
        r[0][1].key
    );
    assert_eq!(s0.store.last_key(min), r[1][1].key);
    assert_eq!(s1.store.last_key(negative), r[1][2].key);
    assert_eq!(s1.store.last_key(group), r[2][0].key);
    assert_eq!(s0.store.last_key(sender), 0);
    assert_eq!(s1.store.last_key(receiver), 0);
    assert_eq!(s0.store.last_key(group), 0);
    // sync from each side through the sharded view
    let page = remote.sync(receiver, 0, 10).await.unwrap();
    let bodies: Vec<_> = page.messages.iter().map(|m| m.body.clone()).collect();
    assert_eq!(bodies, vec!["hello".as_bytes(), "fan".as_bytes()]);
    let page = remote.sync(sender, 0, 10).await.unwrap();
    assert_eq!(page.messages.len(), 2);
    assert_eq!(page.messages[0].body, "hello".as_bytes());
    assert_eq!(remote.new_count(sender, 0).await.unwrap(), 2);
    assert_eq!(remote.last_key(group).await.unwrap(), r[2][0].key);
    assert_eq!(
        remote.latest(min, 5).await.unwrap()[0].body,
        "fan".as_bytes()
    );
    let pings = remote.ping_all().await;
    assert_eq!(pings.len(), 2);
    assert!(pings
        .iter()
        .all(|(_, p)| p.as_ref().is_ok_and(|p| p.leader)));
    // one shard down: the append fails as a whole (the other part may be stored)
    let stopped = s1.addr;
    s1.stop().await;
    let err = remote
        .append(vec![msg(&[receiver, sender], "half")])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RemoteStoreError::Unavailable { addr, .. } if *addr == stopped.to_string()),
        "{err}"
    );
    s0.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_store_times_out_and_a_stopped_one_is_unavailable_until_back() {
    // A listener that never accepts: connects succeed (backlog), nothing is ever answered.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pool = StorePool::new(
        silent.local_addr().unwrap().to_string(),
        StorePoolOptions {
            request_timeout: Duration::from_millis(300),
            ..pool_opts()
        },
    );
    let t = Instant::now();
    let err = pool.last_key(QueueId::user(1, 1)).await.unwrap_err();
    assert!(matches!(err, RemoteStoreError::Timeout { .. }), "{err}");
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(
        err.to_string().contains("did not answer within 300 ms"),
        "{err}"
    );
    // a connection on which nothing came back is dropped, so the next request re-dials
    assert!(eventually(Duration::from_secs(2), || pool.open_connections() == 0).await);

    // A real store, stopped and restarted on the same port.
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), opts(Role::Leader));
    let served = serve_store(store.clone(), Default::default()).await;
    let addr = served.addr;
    let pool = StorePool::new(addr.to_string(), pool_opts());
    pool.append(vec![msg(&[QueueId::user(1, 1)], "before")])
        .await
        .unwrap();
    let store = served.stop().await;
    let t = Instant::now();
    let err = pool.last_key(QueueId::user(1, 1)).await.unwrap_err();
    assert!(matches!(err, RemoteStoreError::Unavailable { .. }), "{err}");
    assert!(t.elapsed() < Duration::from_secs(1), "fails fast");
    let served = serve_on(
        TcpListener::bind(addr).await.unwrap(),
        store.clone(),
        Default::default(),
    );
    // back-off is at most 100 ms here: the pool re-dials on its own
    let mut ok = false;
    for _ in 0..50 {
        if pool.last_key(QueueId::user(1, 1)).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "the pool reconnects after the store comes back");
    assert_eq!(
        pool.sync(QueueId::user(1, 1), 0, 10)
            .await
            .unwrap()
            .messages[0]
            .body,
        "before".as_bytes()
    );
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_refuses_appends_with_not_leader() {
    let dir = tempfile::tempdir().unwrap();
    let served = serve_store(open(dir.path(), opts(Role::Follower)), Default::default()).await;
    let pool = StorePool::new(served.addr.to_string(), pool_opts());
    let err = pool
        .append(vec![msg(&[QueueId::user(1, 1)], "x")])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotLeader), "{err}");
    assert!(err.to_string().contains("not_leader"), "{err}");
    assert!(matches!(StoreError::from(err), StoreError::NotLeader));
    assert!(!pool.ping().await.unwrap().leader);
    // reads still work
    assert_eq!(pool.last_key(QueueId::user(1, 1)).await.unwrap(), 0);
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_limits_cut_replies_and_close_on_oversized_requests() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), opts(Role::Leader));
    let served = serve_store(
        store.clone(),
        StoreServerOptions {
            max_frame_bytes: 4096,
            ..Default::default()
        },
    )
    .await;
    let pool = StorePool::new(served.addr.to_string(), pool_opts());
    let q = QueueId::user(1, 1);
    let body = "x".repeat(1000);
    for _ in 0..10 {
        pool.append(vec![msg(&[q], &body)]).await.unwrap();
    }
    // the 10 messages do not fit in 4 KiB: pages are cut, nothing is skipped
    let mut after = 0;
    let mut got = 0;
    loop {
        let p = pool.sync(q, after, 3000).await.unwrap();
        assert!(p.messages.len() < 10);
        got += p.messages.len();
        after = p.last_key;
        if !p.has_more {
            break;
        }
    }
    assert_eq!(got, 10);
    assert_eq!(after, store.last_key(q));
    let latest = pool.latest(q, 10).await.unwrap();
    assert!(latest.len() < 10 && !latest.is_empty());
    assert_eq!(latest.last().unwrap().key, store.last_key(q));
    // the client refuses to send a request above its own limit
    let small = StorePool::new(
        served.addr.to_string(),
        StorePoolOptions {
            max_frame_bytes: 4096,
            ..pool_opts()
        },
    );
    let err = small
        .append(vec![msg(&[q], &"y".repeat(5000))])
        .await
        .unwrap_err();
    assert!(matches!(err, RemoteStoreError::Config(_)), "{err}");
    // a raw oversized frame closes the connection before the body is read
    let mut sock = TcpStream::connect(served.addr).await.unwrap();
    let mut hdr = BytesMut::new();
    hdr.put_i32(1 << 30);
    hdr.put_i32(1);
    hdr.put_u8(sp::CMD_APPEND);
    hdr.put_u8(sp::LINK_VERSION);
    hdr.put_u16(0);
    sock.write_all(&hdr).await.unwrap();
    let mut buf = BytesMut::new();
    let r = tokio::time::timeout(
        Duration::from_secs(2),
        read_frame(&mut sock, &mut buf, 1 << 20),
    )
    .await
    .expect("server closes promptly");
    assert!(matches!(r, Ok(None) | Err(_)));
    // unknown commands and versions get an error reply, the connection stays usable
    let mut sock = TcpStream::connect(served.addr).await.unwrap();
    sock.write_all(&encode_frame(5, 175, sp::LINK_VERSION, 0, &[]))
        .await
        .unwrap();
    sock.write_all(&encode_frame(6, sp::CMD_PING, 9, 0, &[]))
        .await
        .unwrap();
    sock.write_all(&encode_frame(7, sp::CMD_SYNC, sp::LINK_VERSION, 0, &[1, 2]))
        .await
        .unwrap();
    let mut codes = Vec::new();
    for _ in 0..3 {
        let f = read_frame(&mut sock, &mut buf, 1 << 20)
            .await
            .unwrap()
            .unwrap();
        codes.push((f.seq, sp::decode_error(f.body).unwrap().0));
    }
    codes.sort_by_key(|c| c.0);
    assert_eq!(
        codes,
        vec![
            (5, ErrorCode::Unsupported),
            (6, ErrorCode::Unsupported),
            (7, ErrorCode::BadRequest)
        ]
    );
    assert_eq!(served.store.stats().messages, 10);
    served.stop().await;
}

/// A fake store that answers each ping after `delay`.
async fn slow_pinger(delay: Duration) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = BytesMut::new();
                while let Ok(Some(f)) = read_frame(&mut s, &mut buf, 1 << 20).await {
                    tokio::time::sleep(delay).await;
                    let mut body = BytesMut::new();
                    sp::encode_ping(
                        sp::PingInfo {
                            leader: true,
                            log_end: 12345,
                        },
                        &mut body,
                    );
                    let r = encode_frame(f.seq, f.cmd, sp::LINK_VERSION, sp::FLAG_REPLY, &body);
                    if s.write_all(&r).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_swap_sends_new_requests_to_the_new_store_and_lets_old_ones_finish() {
    let (slow, fake) = slow_pinger(Duration::from_millis(400)).await;
    let dir = tempfile::tempdir().unwrap();
    let b = serve_store(open(dir.path(), opts(Role::Leader)), Default::default()).await;
    let remote = Arc::new(RemoteStore::new(vec![slow.to_string()], vec![], pool_opts()).unwrap());
    let in_flight = {
        let remote = remote.clone();
        tokio::spawn(async move { remote.ping_all().await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    remote.set_addrs(vec![b.addr.to_string()], vec![]).unwrap();
    assert_eq!(
        remote.addrs(),
        (vec![b.addr.to_string()], vec![b.addr.to_string()])
    );
    let q = QueueId::user(3, 3);
    let r = remote.append(vec![msg(&[q], "after swap")]).await.unwrap();
    assert_eq!(b.store.last_key(q), r[0][0].key);
    let old = in_flight.await.unwrap();
    assert_eq!(old.len(), 1);
    assert_eq!(old[0].0, slow.to_string());
    assert_eq!(
        old[0].1.as_ref().unwrap().log_end,
        12345,
        "the in-flight request finished"
    );
    assert!(remote.set_addrs(vec![], vec![]).is_err());
    fake.abort();
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_cannot_hold_up_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), opts(Role::Leader));
    let q = QueueId::user(1, 1);
    let big = "b".repeat(64 * 1024);
    for _ in 0..16 {
        store.append(vec![msg(&[q], &big)]).await.unwrap();
    }
    let served = serve_store(
        store.clone(),
        StoreServerOptions {
            shutdown_grace: Duration::from_millis(200),
            ..StoreServerOptions::default()
        },
    )
    .await;
    // 64 requests for ~1 MiB each, and never read a reply
    let mut sock = TcpStream::connect(served.addr).await.unwrap();
    let mut body = BytesMut::new();
    Request::Sync {
        queue: q,
        after: 0,
        limit: 3000,
    }
    .encode_body(&mut body);
    let mut out = BytesMut::new();
    for seq in 0..64 {
        out.extend_from_slice(&encode_frame(seq, sp::CMD_SYNC, sp::LINK_VERSION, 0, &body));
    }
    sock.write_all(&out).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    served.token.cancel();
    tokio::time::timeout(Duration::from_secs(5), served.task)
        .await
        .expect("serve returns despite the stuck peer")
        .unwrap();
    assert!(t.elapsed() >= Duration::from_millis(150));
    drop(sock);
}
