//! Store replication over loopback sockets: catch-up then live with byte-identical logs,
//! resuming after the link is cut mid-stream, a stalled follower that does not slow the leader,
//! `sync` mode acknowledging only what a follower holds, and losing the leader mid-traffic in
//! `sync` mode without losing an acknowledged append.
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::store_client::{StorePool, StorePoolOptions};
use cluster::store_proto::ErrorCode;
use common::*;
use ims::replication::{
    follow, serve_replication, FollowOptions, ReplicationHub, ReplicationServerOptions,
    CMD_REPL_BEGIN, REPL_VERSION,
};
use ims::server::{StoreServerOptions, SyncReplication};
use store::{QueueId, Role, Store, StoreOptions};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

fn queues() -> Vec<QueueId> {
    (0..5)
        .map(|u| QueueId::user(1, u))
        .chain([QueueId::group(1, 1)])
        .collect()
}

fn repl_opts(hub: Arc<ReplicationHub>) -> ReplicationServerOptions {
    ReplicationServerOptions {
        hub,
        max_batch_bytes: 8 * 1024,
        heartbeat: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(1500),
        ..ReplicationServerOptions::default()
    }
}

fn follow_opts() -> FollowOptions {
    FollowOptions {
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        idle_timeout: Duration::from_millis(1500),
        ..FollowOptions::default()
    }
}

struct Leader {
    store: Arc<Store>,
    hub: Arc<ReplicationHub>,
    repl_addr: std::net::SocketAddr,
    token: CancellationToken,
    task: JoinHandle<()>,
}

async fn start_leader(store: Arc<Store>) -> Leader {
    let hub = ReplicationHub::new();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let repl_addr = l.local_addr().unwrap();
    let token = CancellationToken::new();
    let task = tokio::spawn(serve_replication(
        l,
        store.clone(),
        repl_opts(hub.clone()),
        token.clone(),
    ));
    Leader {
        store,
        hub,
        repl_addr,
        token,
        task,
    }
}

struct Follower {
    store: Arc<Store>,
    opts: FollowOptions,
    token: CancellationToken,
    task: JoinHandle<()>,
}

fn start_follower(store: Arc<Store>, leader: std::net::SocketAddr) -> Follower {
    let opts = follow_opts();
    let token = CancellationToken::new();
    let task = tokio::spawn(follow(
        leader.to_string(),
        store.clone(),
        opts.clone(),
        token.clone(),
    ));
    Follower {
        store,
        opts,
        token,
        task,
    }
}

impl Follower {
    async fn stop(self) -> Arc<Store> {
        self.token.cancel();
        self.task.await.unwrap();
        self.store
    }
}

fn follower_store(dir: &std::path::Path) -> Arc<Store> {
    open(
        dir,
        StoreOptions {
            segment_bytes: 50_000, // different segmentation: positions must still match
            ..opts(Role::Follower)
        },
    )
}

async fn append_some(store: &Store, from: usize, n: usize) {
    let qs = queues();
    for i in from..from + n {
        let q = qs[i % qs.len()];
        let other = qs[(i + 1) % qs.len()];
        store
            .append(vec![msg(
                &[q, other],
                &format!("message {i} {}", "x".repeat(i % 200)),
            )])
            .await
            .unwrap();
    }
}

async fn caught_up(leader: &Store, follower: &Store) -> bool {
    eventually(Duration::from_secs(10), || {
        follower.log_end() == leader.log_end()
    })
    .await
}

fn assert_identical(leader: &Store, follower: &Store) {
    assert_eq!(leader.log_end(), follower.log_end());
    let a = log_bytes(leader);
    let b = log_bytes(follower);
    assert_eq!(a.len() as u64, leader.log_end() - leader.log_start());
    assert!(a == b, "logs differ byte by byte");
    for q in queues() {
        assert_eq!(all(leader, q), all(follower, q), "queue {q:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_catches_up_then_follows_live_with_identical_logs() {
    let dl = tempfile::tempdir().unwrap();
    let df = tempfile::tempdir().unwrap();
    let leader = start_leader(open(dl.path(), opts(Role::Leader))).await;
    append_some(&leader.store, 0, 300).await;
    let follower = start_follower(follower_store(df.path()), leader.repl_addr);
    // live appends while it is catching up and after
    append_some(&leader.store, 300, 300).await;
    assert!(caught_up(&leader.store, &follower.store).await);
    assert_identical(&leader.store, &follower.store);
    // acknowledgements reach the hub
    let end = leader.store.log_end();
    assert!(eventually(Duration::from_secs(5), || leader.hub.acked() == end).await);
    assert_eq!(leader.hub.lag(end), 0);
    assert_eq!(leader.hub.followers().len(), 1);
    assert_eq!(follower.opts.status.lag(), 0);
    assert!(follower.opts.status.connected.load(Ordering::Acquire));
    // a follower restart resumes from its own log end
    let fstore = follower.stop().await;
    append_some(&leader.store, 600, 50).await;
    let follower = start_follower(fstore, leader.repl_addr);
    assert!(caught_up(&leader.store, &follower.store).await);
    assert_identical(&leader.store, &follower.store);
    follower.stop().await;
    leader.token.cancel();
    leader.task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_cut_mid_stream_resumes_without_gap_or_duplicate() {
    let dl = tempfile::tempdir().unwrap();
    let df = tempfile::tempdir().unwrap();
    let leader = start_leader(open(dl.path(), opts(Role::Leader))).await;
    append_some(&leader.store, 0, 200).await;
    let proxy = Proxy::start(leader.repl_addr).await;
    let follower = start_follower(follower_store(df.path()), proxy.addr);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let store = leader.store.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut i = 200;
            while !stop.load(Ordering::Acquire) {
                append_some(&store, i, 10).await;
                i += 10;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            i
        })
    };
    let mut cuts = 0;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        cuts += proxy.cut();
    }
    stop.store(true, Ordering::Release);
    let written = writer.await.unwrap();
    assert!(written > 250);
    assert!(cuts >= 2, "the link was cut while in use ({cuts})");
    assert!(caught_up(&leader.store, &follower.store).await);
    assert_identical(&leader.store, &follower.store);
    assert!(follower.opts.status.sessions.load(Ordering::Relaxed) >= 3);
    follower.stop().await;
    leader.token.cancel();
    leader.task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_follower_does_not_block_the_leader() {
    let dl = tempfile::tempdir().unwrap();
    let df = tempfile::tempdir().unwrap();
    let leader = start_leader(open(dl.path(), opts(Role::Leader))).await;
    // A follower that announces position 0 and then never reads a byte.
    let mut stalled = TcpStream::connect(leader.repl_addr).await.unwrap();
    stalled
        .write_all(&node::frame::encode_frame(
            1,
            CMD_REPL_BEGIN,
            REPL_VERSION,
            0,
            &[0u8; 16], // position 0, any epoch
        ))
        .await
        .unwrap();
    let healthy = start_follower(follower_store(df.path()), leader.repl_addr);
    // ~8 MiB: far more than the stalled connection's socket buffers can hold
    let body = "z".repeat(4000);
    let t = Instant::now();
    for i in 0..2000i64 {
        leader
            .store
            .append(vec![msg(&[QueueId::user(2, i % 50)], &body)])
            .await
            .unwrap();
    }
    let took = t.elapsed();
    assert!(took < Duration::from_secs(20), "appends took {took:?}");
    // the healthy follower kept up meanwhile
    assert!(caught_up(&leader.store, &healthy.store).await);
    // Its connection is stuck behind what it did not read, unless the leader already dropped it
    // for that very reason.
    let stalled_addr = stalled.local_addr().unwrap();
    if let Some(f) = leader
        .hub
        .followers()
        .into_iter()
        .find(|f| f.peer == stalled_addr)
    {
        assert!(
            f.sent < leader.store.log_end(),
            "the stalled follower cannot have been sent everything"
        );
        assert_eq!(f.acked, 0);
    }
    // it is dropped once silent for the idle timeout; the healthy one stays
    assert!(
        eventually(Duration::from_secs(5), || leader
            .hub
            .followers()
            .iter()
            .all(|f| f.peer != stalled_addr))
        .await,
        "stalled follower disconnected"
    );
    assert_eq!(
        leader.hub.followers().len(),
        1,
        "the healthy follower stays"
    );
    drop(stalled);
    healthy.stop().await;
    leader.token.cancel();
    leader.task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_mode_acknowledges_only_what_the_follower_holds() {
    let dl = tempfile::tempdir().unwrap();
    let df = tempfile::tempdir().unwrap();
    let leader = start_leader(open(dl.path(), opts(Role::Leader))).await;
    let served = serve_store(
        leader.store.clone(),
        StoreServerOptions {
            sync_replication: Some(SyncReplication {
                hub: leader.hub.clone(),
                timeout: Duration::from_millis(700),
            }),
            ..StoreServerOptions::default()
        },
    )
    .await;
    let pool = StorePool::new(served.addr.to_string(), StorePoolOptions::default());
    let follower = start_follower(follower_store(df.path()), leader.repl_addr);
    let q = QueueId::user(5, 5);
    for i in 0..20 {
        let r = pool
            .append(vec![msg(&[q], &format!("sync {i}"))])
            .await
            .unwrap();
        // acknowledged ⇒ already durable and readable on the follower
        assert_eq!(follower.store.last_key(q), r[0][0].key);
    }
    // stop the follower: appends now fail with a clear error instead of hanging
    let fstore = follower.stop().await;
    let t = Instant::now();
    let err = pool
        .append(vec![msg(&[q], "unconfirmed")])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ReplicationTimeout), "{err}");
    assert!(
        err.to_string()
            .contains("no follower acknowledged it within 700 ms"),
        "{err}"
    );
    assert!(t.elapsed() >= Duration::from_millis(650));
    assert!(t.elapsed() < Duration::from_secs(3));
    // the follower comes back, catches up and appends flow again; the refused append was
    // withdrawn, so it is delivered neither by the leader nor by the follower
    let follower = start_follower(fstore, leader.repl_addr);
    let r = pool.append(vec![msg(&[q], "again")]).await.unwrap();
    assert_eq!(follower.store.last_key(q), r[0][0].key);
    for s in [&follower.store, &leader.store] {
        let bodies: Vec<_> = all(s, q).into_iter().map(|m| m.2).collect();
        assert_eq!(bodies.len(), 21);
        assert!(!bodies.iter().any(|b| b.as_ref() == b"unconfirmed"));
    }
    follower.stop().await;
    served.stop().await;
    leader.token.cancel();
    leader.task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_leader_mid_traffic_in_sync_mode_loses_no_acknowledged_append() {
    let dl = tempfile::tempdir().unwrap();
    let df = tempfile::tempdir().unwrap();
    let lstore = open(
        dl.path(),
        StoreOptions {
            durability: store::Durability::Always,
            ..opts(Role::Leader)
        },
    );
    let leader = start_leader(lstore).await;
    let served = serve_store(
        leader.store.clone(),
        StoreServerOptions {
            sync_replication: Some(SyncReplication {
                hub: leader.hub.clone(),
                timeout: Duration::from_millis(500),
            }),
            ..StoreServerOptions::default()
        },
    )
    .await;
    let fstore = open(
        df.path(),
        StoreOptions {
            durability: store::Durability::Always,
            ..opts(Role::Follower)
        },
    );
    let follower = start_follower(fstore, leader.repl_addr);
    let pool = Arc::new(StorePool::new(
        served.addr.to_string(),
        StorePoolOptions {
            request_timeout: Duration::from_secs(2),
            ..StorePoolOptions::default()
        },
    ));
    let mut writers = Vec::new();
    for w in 0..8i64 {
        let pool = pool.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut failed = 0;
            for i in 0..10_000 {
                let q = QueueId::user(9, w);
                let body = format!("w{w} #{i}");
                match pool.append(vec![msg(&[q], &body)]).await {
                    Ok(r) => acked.push((q, r[0][0].key, body)),
                    Err(_) => {
                        failed += 1;
                        if failed > 3 {
                            break;
                        }
                    }
                }
            }
            (acked, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Lose the leader: replication and the store link go away mid-traffic.
    leader.token.cancel();
    served.token.cancel();
    leader.task.await.unwrap();
    served.task.await.unwrap();
    let mut acked = Vec::new();
    for w in writers {
        let (a, failed) = w.await.unwrap();
        assert!(
            failed > 3,
            "the writer was still running when the leader went away"
        );
        acked.extend(a);
    }
    drop(pool);
    assert!(
        acked.len() > 20,
        "traffic flowed before the loss ({})",
        acked.len()
    );
    let fstore = follower.stop().await;
    fstore.promote().await.unwrap();
    for (q, key, body) in &acked {
        let p = fstore.sync(*q, key - 1, 1).unwrap();
        assert_eq!(
            p.messages.first().map(|m| m.key),
            Some(*key),
            "acknowledged {body} missing"
        );
        assert_eq!(p.messages[0].body, body.as_bytes());
    }
    // the promoted follower continues the queues
    let q = acked[0].0;
    let last = fstore.last_key(q);
    let r = fstore
        .append(vec![msg(&[q], "after failover")])
        .await
        .unwrap();
    assert_eq!(r[0][0].prev_key, last);
    assert!(r[0][0].key > last);
}

/// Every read the store link offers, as a client would see `q` (personal) and `g` (super group).
async fn visible_bodies(pool: &StorePool, q: QueueId, g: QueueId) -> Vec<Vec<String>> {
    let text = |b: &bytes::Bytes| String::from_utf8_lossy(b).into_owned();
    let sync = pool.sync(q, 0, 100).await.unwrap();
    let since = pool.sync_since(g, 0, 100, 0).await.unwrap();
    let latest = pool.latest(q, 100).await.unwrap();
    let peer = pool.latest_peer(q, 100).await.unwrap();
    let last = pool.last_key(q).await.unwrap();
    let count = pool.new_count(q, 0).await.unwrap();
    let bodies: Vec<String> = sync.messages.iter().map(|m| text(&m.body)).collect();
    assert_eq!(count as usize, bodies.len(), "new_count agrees with sync");
    assert_eq!(
        sync.queue_last_key, last,
        "the sync page's newest key is the last key"
    );
    assert_eq!(sync.messages.last().map_or(0, |m| m.key), last);
    vec![
        bodies,
        since.messages.iter().map(|m| text(&m.body)).collect(),
        latest.iter().map(|m| text(&m.body)).collect(),
        peer.iter().map(|m| text(&m.body)).collect(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_mode_leader_never_returns_an_unconfirmed_entry() {
    let dl = tempfile::tempdir().unwrap();
    let df = tempfile::tempdir().unwrap();
    let leader = start_leader(open(dl.path(), opts(Role::Leader))).await;
    let timeout = Duration::from_secs(4);
    let served = serve_store(
        leader.store.clone(),
        StoreServerOptions {
            sync_replication: Some(SyncReplication {
                hub: leader.hub.clone(),
                timeout,
            }),
            ..StoreServerOptions::default()
        },
    )
    .await;
    let pool = Arc::new(StorePool::new(
        served.addr.to_string(),
        StorePoolOptions {
            request_timeout: Duration::from_secs(10),
            ..StorePoolOptions::default()
        },
    ));
    let (q, g) = (QueueId::user(3, 1), QueueId::group(3, 2));
    let follower = start_follower(follower_store(df.path()), leader.repl_addr);
    pool.append(vec![msg(&[q, g], "m0")]).await.unwrap();
    let one = vec![vec!["m0".to_string()]; 4];
    assert_eq!(visible_bodies(&pool, q, g).await, one);

    // The follower goes away: m1 is durable on the leader but not confirmed.
    let fstore = follower.stop().await;
    let end_before = leader.store.log_end();
    let pending = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.append(vec![msg(&[q, g], "m1")]).await })
    };
    assert!(
        eventually(Duration::from_secs(5), || leader.store.log_end()
            > end_before)
        .await
    );
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(600) {
        assert_eq!(
            visible_bodies(&pool, q, g).await,
            one,
            "an unconfirmed entry was returned"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!pending.is_finished());
    // The follower returns in time: m1 is confirmed, acknowledged, and then visible.
    let follower = start_follower(fstore, leader.repl_addr);
    pending.await.unwrap().unwrap();
    let two = vec![vec!["m0".to_string(), "m1".to_string()]; 4];
    assert_eq!(visible_bodies(&pool, q, g).await, two);

    // Gone again for longer than the timeout: m2 is refused and withdrawn.
    let fstore = follower.stop().await;
    let pending = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.append(vec![msg(&[q, g], "m2")]).await })
    };
    let t = Instant::now();
    while !pending.is_finished() {
        assert_eq!(visible_bodies(&pool, q, g).await, two);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(t.elapsed() >= timeout - Duration::from_millis(200));
    let err = pending.await.unwrap().unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ReplicationTimeout), "{err}");
    assert!(err.to_string().contains("withdrawn"), "{err}");
    // The follower returns and replicates m2 and its withdrawal: m2 is delivered nowhere.
    let follower = start_follower(fstore, leader.repl_addr);
    pool.append(vec![msg(&[q, g], "m3")]).await.unwrap();
    let three = vec![vec!["m0".to_string(), "m1".to_string(), "m3".to_string()]; 4];
    assert_eq!(visible_bodies(&pool, q, g).await, three);
    assert!(caught_up(&leader.store, &follower.store).await);
    let on_follower: Vec<_> = all(&follower.store, q)
        .into_iter()
        .map(|m| String::from_utf8_lossy(&m.2).into_owned())
        .collect();
    assert_eq!(on_follower, three[0]);
    follower.stop().await;
    served.stop().await;
    leader.token.cancel();
    leader.task.await.unwrap();
}
