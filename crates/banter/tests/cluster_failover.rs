//! Store fail-over as an operator performs it (docs/cluster.md), with real `banter ims` processes
//! killed with `kill -9`, and clients that follow the protocol's rules exactly: a pushed message
//! is accepted only when its METADATA's previous key equals the client's key, and the client
//! syncs only when a SYNC_NOTIFY names a key above its own (docs/protocol.md §10.4, §11).
//!
//! One store shard (a leader and a follower) serves one access node (in-process, reconfigured as
//! a SIGHUP would). Each round reproduces the fault of issue 19: the follower is killed, a
//! message is sent (sync mode: refused with status 70 after the timeout; async mode: ACKed,
//! then lost with the leader), the leader is killed, the old follower is restarted and promoted
//! with `banter ims promote --secret`, a fresh follower is added and the access node is pointed
//! at the promoted store. Then more messages flow. After three rounds the receiver — online the
//! whole time — holds every ACKed message and none that was refused, and a fresh sync agrees.
//!
//! A second test: a SYNC that reaches a dead shard keeps its session and is answered once the
//! shard is back.
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{body_of, http, im_of, Client, TestServer};
use proto::{cmd, flag, Body, Im, Metadata};

const SECRET: &str = "failover-test-secret";

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A `banter ims` process, killed with SIGKILL when dropped.
struct StoreProc {
    child: Child,
    name: String,
    addrs: StoreAddrs,
}

#[derive(Clone, Copy)]
struct StoreAddrs {
    listen: SocketAddr,
    repl: SocketAddr,
    http: SocketAddr,
}

impl StoreAddrs {
    fn fresh() -> StoreAddrs {
        StoreAddrs {
            listen: free_addr(),
            repl: free_addr(),
            http: free_addr(),
        }
    }
}

impl StoreProc {
    /// Starts `banter ims` as `name` (its data in `dir/name-data`) and waits until it is healthy.
    async fn start(
        dir: &Path,
        name: &str,
        addrs: StoreAddrs,
        follow: Option<SocketAddr>,
        mode: &str,
    ) -> StoreProc {
        let data = dir.join(format!("{name}-data"));
        let cfg = dir.join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "node_id = \"{name}\"\ndata_dir = {data:?}\nlisten = \"{}\"\nreplication_listen = \"{}\"\n\
                 http_listen = \"{}\"\nhttp_secret = \"{SECRET}\"\nfollow = \"{}\"\n\
                 replication_mode = \"{mode}\"\nsync_timeout_ms = 2000\nreplication_heartbeat_ms = 500\n\
                 replication_idle_timeout_ms = 5000\n",
                addrs.listen,
                addrs.repl,
                addrs.http,
                follow.map(|f| f.to_string()).unwrap_or_default(),
            ),
        )
        .unwrap();
        // Appended, so that a restarted node's log follows its earlier life.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{name}.log")))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_banter"))
            .args(["ims", "--config", cfg.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let p = StoreProc {
            child,
            name: name.to_string(),
            addrs,
        };
        p.wait_healthy(dir).await;
        p
    }

    async fn wait_healthy(&self, dir: &Path) {
        for _ in 0..400 {
            if tokio::net::TcpStream::connect(self.addrs.http)
                .await
                .is_ok()
            {
                let (st, _) = http(self.addrs.http, "GET", "/healthz", &[], b"").await;
                if st == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log =
            std::fs::read_to_string(dir.join(format!("{}.log", self.name))).unwrap_or_default();
        panic!("{} did not become healthy; log:\n{log}", self.name);
    }

    /// The node's `/summary` (with the secret).
    async fn summary(&self) -> serde_json::Value {
        let auth = format!("Bearer {SECRET}");
        let (st, body) = http(
            self.addrs.http,
            "GET",
            "/summary",
            &[("Authorization", auth.as_str())],
            b"",
        )
        .await;
        assert_eq!(st, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Waits until `follower` holds everything this node has (async replication lags a little).
    async fn replicated_to(&self, follower: &StoreProc) {
        for _ in 0..400 {
            let (a, b) = (self.summary().await, follower.summary().await);
            if a["log_end"] == b["log_end"] {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{} never caught up with {}", follower.name, self.name);
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `banter ims promote` with the node's secret; returns the log end it reports.
    fn promote(&self) -> u64 {
        let out = Command::new(env!("CARGO_BIN_EXE_banter"))
            .args([
                "ims",
                "promote",
                "--http",
                &format!("http://{}", self.addrs.http),
                "--secret",
                SECRET,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promote {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["role"], "leader");
        v["log_end"].as_u64().unwrap()
    }
}

impl Drop for StoreProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Points the access node at `store`, as `storage_addrs` in its config plus a SIGHUP would.
fn point_at(server: &mut TestServer, store: SocketAddr) {
    let old = server.config.clone();
    server.config.cluster.storage_addrs = vec![store.to_string()];
    server
        .running
        .as_ref()
        .unwrap()
        .reload(&old, &server.config);
}

/// A client that follows the SDKs' rules for pushes and syncs, and remembers what it was shown.
struct RuleClient {
    c: Client,
    key: i64,
    got: Vec<String>,
    /// Keys of the messages it holds, in the order it got them.
    keys: Vec<i64>,
    last_meta: Option<(i32, Metadata)>,
}

impl RuleClient {
    fn new(c: Client) -> RuleClient {
        RuleClient {
            c,
            key: 0,
            got: Vec::new(),
            keys: Vec::new(),
            last_meta: None,
        }
    }

    fn take(&mut self, key: i64, text: String) {
        assert!(
            self.keys.last().is_none_or(|&k| k < key),
            "keys must increase: {key} after {:?}",
            self.keys.last()
        );
        self.keys.push(key);
        self.got.push(text);
    }

    /// Handles one frame; returns false when the connection ended.
    async fn handle(&mut self, f: proto::Frame) {
        match f.cmd {
            cmd::METADATA => {
                if let Body::Metadata(m) = body_of(&f) {
                    self.last_meta = Some((f.seq, m));
                }
            }
            cmd::IM if f.flag & flag::PUSH != 0 => {
                // Accept a push only right after its METADATA and only if it continues our key.
                if let Some((seq, m)) = self.last_meta.take() {
                    if seq + 1 == f.seq
                        && m.prev_sync_key != 0
                        && m.sync_key != 0
                        && m.prev_sync_key == self.key
                    {
                        self.take(m.sync_key, text_of(&f));
                        self.key = m.sync_key;
                    }
                }
            }
            cmd::SYNC_NOTIFY => {
                if let Body::SyncNotify(k) = body_of(&f) {
                    if k > self.key {
                        self.sync().await;
                    }
                }
            }
            // An owed sync answered late (see the second test): take what it carries.
            cmd::SYNC_BEGIN => self.read_sync_batch().await,
            _ => {}
        }
    }

    /// SYNC from our key until caught up (SYNC_NOTIFY after SYNC_END asks for more).
    async fn sync(&mut self) {
        self.c.send_body(&Body::Sync(self.key), 0).await;
        loop {
            let f = self.c.recv().await.expect("connection open while syncing");
            if f.cmd == cmd::SYNC_BEGIN {
                break;
            }
            // A push arriving before the batch: its SYNC_NOTIFY follows; skipping it skips
            // nothing (the sync returns it).
        }
        self.read_sync_batch().await;
    }

    async fn read_sync_batch(&mut self) {
        loop {
            let f = self.c.recv().await.expect("connection open while syncing");
            match f.cmd {
                cmd::IM if f.flag & flag::PUSH == 0 => {
                    // the stored key is not in a synced frame: the SDKs order by arrival
                    let k = self.keys.last().copied().unwrap_or(0) + 1;
                    self.keys.push(k);
                    self.got.push(text_of(&f));
                }
                cmd::SYNC_END => {
                    if let Body::SyncEnd(k) = body_of(&f) {
                        if k > self.key {
                            self.key = k;
                        }
                    }
                    return;
                }
                _ => {}
            }
        }
    }

    /// Processes frames until `text` is held or `within` passes; true if held.
    async fn wait_for(&mut self, text: &str, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while !self.got.iter().any(|g| g == text) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            match self.c.recv_timeout(left).await {
                Some(f) => Box::pin(self.handle(f)).await,
                None => {
                    if tokio::time::Instant::now() < deadline {
                        panic!("the receiver's connection was closed");
                    }
                }
            }
        }
        true
    }

    /// Processes whatever arrives for `d`.
    async fn idle(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return;
            }
            if let Some(f) = self.c.recv_timeout(left).await {
                Box::pin(self.handle(f)).await;
            }
        }
    }
}

fn text_of(f: &proto::Frame) -> String {
    String::from_utf8_lossy(&im_of(f).content).into_owned()
}

fn im(text: &str) -> Im {
    Im {
        sender: 1,
        receiver: 2,
        timestamp: 0,
        msgid: 0,
        content: text.as_bytes().to_vec().into(),
    }
}

/// Sends an IM from the sender and returns its ACK status.
async fn send(s: &mut Client, text: &str) -> i8 {
    s.send_body(&Body::Im(im(text)), 0).await;
    ack_status(s, text).await
}

/// The status of the ACK of the message just sent.
async fn ack_status(s: &mut Client, text: &str) -> i8 {
    let (ack, _) = tokio::time::timeout(Duration::from_secs(20), s.recv_until(cmd::ACK))
        .await
        .unwrap_or_else(|_| panic!("no ACK for {text}"));
    match body_of(&ack) {
        Body::Ack(a) => {
            assert_eq!(a.seq, s.seq);
            a.status
        }
        other => panic!("{other:?}"),
    }
}

struct Tally {
    acked: Vec<String>,
    refused: Vec<String>,
    /// ACKed, then lost with a leader that died before replicating it (async mode only).
    lost: Vec<String>,
}

/// Sends `text` like an SDK resending after a refusal: each attempt is a new message (distinct
/// text), until one is ACKed.
async fn send_until_acked(s: &mut Client, r: &mut RuleClient, text: &str, t: &mut Tally) {
    for attempt in 0..60 {
        let msg = format!("{text}#{attempt}");
        match send(s, &msg).await {
            0 => {
                t.acked.push(msg.clone());
                assert!(
                    r.wait_for(&msg, Duration::from_secs(15)).await,
                    "the receiver, following the push and sync rules, never got {msg}; it holds {:?}",
                    r.got
                );
                return;
            }
            70 => {
                t.refused.push(msg);
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            other => panic!("unexpected ACK status {other}"),
        }
    }
    panic!("{text} was never ACKed");
}

async fn failover_rounds(mode: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = if std::env::var_os("BANTER_KEEP_TEST_DIR").is_some() {
        tmp.keep()
    } else {
        tmp.path().to_path_buf()
    };
    let dir = dir.as_path();
    eprintln!("{mode} fail-over test directory: {}", dir.display());
    let mut leader = StoreProc::start(dir, "ims0", StoreAddrs::fresh(), None, mode).await;
    let mut follower = StoreProc::start(
        dir,
        "ims1",
        StoreAddrs::fresh(),
        Some(leader.addrs.repl),
        mode,
    )
    .await;
    let listen = leader.addrs.listen;
    let mut server = TestServer::start_with(|c| {
        c.cluster.node_id = "im".into();
        c.cluster.storage_addrs = vec![listen.to_string()];
    })
    .await
    .unwrap();
    let mut s = Client::login(&server, 1, 2, false, "s").await;
    let mut r = RuleClient::new(Client::login(&server, 2, 2, false, "r").await);
    let mut t = Tally {
        acked: Vec::new(),
        refused: Vec::new(),
        lost: Vec::new(),
    };

    // 1. m0 is ACKed and reaches the receiver.
    send_until_acked(&mut s, &mut r, "m0", &mut t).await;
    for round in 1..=3 {
        // 2. The follower (holding everything ACKed so far) is killed.
        leader.replicated_to(&follower).await;
        follower.kill9();
        // 3. A message while only the leader holds the log. The receiver syncs while it is
        //    pending (as an SDK does on reconnecting or coming to the foreground): in sync mode
        //    the leader must not return it, since no follower has confirmed it.
        let m1 = format!("round {round}: while the follower is down");
        s.send_body(&Body::Im(im(&m1)), 0).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        r.sync().await;
        if mode == "sync" {
            assert!(!r.got.contains(&m1), "sync returned an unconfirmed message");
        }
        let status = ack_status(&mut s, &m1).await;
        if mode == "sync" {
            assert_eq!(status, 70, "sync mode refuses what no follower confirmed");
            t.refused.push(m1.clone());
            // never shown: not by a push, not by a sync
            r.idle(Duration::from_millis(300)).await;
        } else {
            assert_eq!(status, 0, "async mode ACKs once durable on the leader");
            t.acked.push(m1.clone());
            t.lost.push(m1.clone());
            assert!(r.wait_for(&m1, Duration::from_secs(10)).await);
        }
        // 4. The leader is killed; the old follower is restarted, promoted, given a fresh
        //    follower, and the access node is pointed at it.
        leader.kill9();
        let old = follower.addrs;
        let name = follower.name.clone();
        drop(follower);
        let promoted = StoreProc::start(dir, &name, old, Some(leader.addrs.repl), mode).await;
        let end = promoted.promote();
        assert!(
            end >= 2 << 40,
            "the promoted log continues at a new position range ({end})"
        );
        let fresh = StoreProc::start(
            dir,
            &format!("ims{}", round + 1),
            StoreAddrs::fresh(),
            Some(promoted.addrs.repl),
            mode,
        )
        .await;
        point_at(&mut server, promoted.addrs.listen);
        leader = promoted;
        follower = fresh;
        // 5.–6. Messages after the fail-over reach the receiver by the push and sync rules.
        send_until_acked(
            &mut s,
            &mut r,
            &format!("round {round}: after, first"),
            &mut t,
        )
        .await;
        send_until_acked(
            &mut s,
            &mut r,
            &format!("round {round}: after, second"),
            &mut t,
        )
        .await;
    }

    // The receiver, online throughout, holds every ACKed message and nothing refused.
    r.idle(Duration::from_millis(500)).await;
    let held: BTreeSet<&String> = r.got.iter().collect();
    for a in &t.acked {
        assert!(
            held.contains(a),
            "ACKed {a:?} missing; the receiver holds {:?}",
            r.got
        );
    }
    for x in &t.refused {
        assert!(!held.contains(x), "refused {x:?} was delivered");
    }
    assert_eq!(
        held.len(),
        r.got.len(),
        "nothing delivered twice: {:?}",
        r.got
    );
    // A fresh device syncing from scratch gets everything that survived, in order.
    let mut fresh = Client::login(&server, 2, 2, false, "r2").await;
    let (all, end) = fresh.sync_all(0).await;
    let synced: Vec<String> = all
        .iter()
        .filter(|f| f.cmd == cmd::IM)
        .map(text_of)
        .collect();
    let survived: Vec<String> = t
        .acked
        .iter()
        .filter(|a| !t.lost.contains(a))
        .cloned()
        .collect();
    assert_eq!(synced, survived);
    assert!(end >= r.key, "the receiver's key is not beyond the store's");
    eprintln!(
        "{mode}: {} ACKed ({} lost with a leader), {} refused, receiver key {}",
        t.acked.len(),
        t.lost.len(),
        t.refused.len(),
        r.key
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_replication_failovers_lose_and_skip_nothing_acked() {
    failover_rounds("sync").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_replication_failovers_put_clients_back_on_the_new_sequence() {
    failover_rounds("async").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_to_a_down_shard_is_answered_when_it_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let addrs = StoreAddrs::fresh();
    let mut store = StoreProc::start(dir, "ims", addrs, None, "async").await;
    let listen = addrs.listen;
    let server = TestServer::start_with(|c| {
        c.cluster.storage_addrs = vec![listen.to_string()];
    })
    .await
    .unwrap();
    let mut s = Client::login(&server, 1, 2, false, "s").await;
    let mut r = RuleClient::new(Client::login(&server, 2, 2, false, "r").await);
    assert_eq!(send(&mut s, "before").await, 0);
    assert!(r.wait_for("before", Duration::from_secs(10)).await);

    store.kill9();
    // A SYNC now cannot be answered: no SYNC_END (that would claim "caught up"), no close.
    r.c.send_body(&Body::Sync(0), 0).await;
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < until {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        if let Some(f) = r.c.recv_timeout(left).await {
            assert_ne!(f.cmd, cmd::SYNC_END, "answered while the shard is down");
        }
    }
    r.c.send_body(&Body::Ping, 0).await;
    r.c.recv_until(cmd::PONG).await;
    // Meanwhile a message to the dead shard is refused, not stored.
    assert_eq!(send(&mut s, "while down").await, 70);

    // The shard comes back (same data, same address): the owed sync is answered on the same
    // connection, with everything from key 0.
    drop(store);
    let _store = StoreProc::start(dir, "ims", addrs, None, "async").await;
    let (end, before) =
        tokio::time::timeout(Duration::from_secs(30), r.c.recv_until(cmd::SYNC_END))
            .await
            .expect("the owed sync is answered once the shard is back");
    let texts: Vec<String> = before
        .iter()
        .filter(|f| f.cmd == cmd::IM && f.flag & flag::PUSH == 0)
        .map(text_of)
        .collect();
    assert_eq!(texts, vec!["before".to_string()]);
    assert!(matches!(body_of(&end), Body::SyncEnd(k) if k > 0));
    // and the node works normally again
    assert_eq!(send(&mut s, "after").await, 0);
    let (_, m) = http(server.http, "GET", "/metrics", &[], b"").await;
    let deferred = m
        .lines()
        .find(|l| {
            l.starts_with("banter_syncs_deferred_total") || l.contains("syncs_deferred_total ")
        })
        .unwrap_or_default()
        .to_string();
    assert!(!deferred.ends_with(" 0"), "{deferred}");
    server.stop().await;
}
