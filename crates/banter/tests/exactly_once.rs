//! Exactly-once appends over real sockets (docs/compatibility.md, *Storage and sync*;
//! docs/storage-format.md §4.3): a client that resends a message with the same `msgid` from the
//! same device — after a reconnect, after a store node timed out, after a store shard was down —
//! gets an ACK and the message is stored once; its content is pushed at most once.
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use banter::testing::TestServer;
use common::{body_of, free_addr, http, im_of, Client};
use proto::{cmd, Body, Im};

/// A `banter ims` process (no follower, async replication), killed when dropped.
struct StoreNode {
    child: Option<Child>,
    listen: SocketAddr,
    http: SocketAddr,
    config: std::path::PathBuf,
    log: std::path::PathBuf,
}

impl StoreNode {
    async fn start(dir: &Path, name: &str) -> StoreNode {
        let (listen, repl, http_addr) = (free_addr(), free_addr(), free_addr());
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "data_dir = {:?}\nlisten = \"{listen}\"\nreplication_listen = \"{repl}\"\nhttp_listen = \"{http_addr}\"\n",
                dir.join(format!("{name}-data"))
            ),
        )
        .unwrap();
        let mut s = StoreNode {
            child: None,
            listen,
            http: http_addr,
            config,
            log: dir.join(format!("{name}.log")),
        };
        s.spawn().await;
        s
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        self.child = Some(
            Command::new(env!("CARGO_BIN_EXE_banter"))
                .args(["ims", "--config", self.config.to_str().unwrap()])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn banter ims"),
        );
        self.wait_healthy().await;
    }

    async fn wait_healthy(&self) {
        for _ in 0..300 {
            if tokio::net::TcpStream::connect(self.http).await.is_ok() {
                let (st, _) = http(self.http, "GET", "/healthz", &[], b"").await;
                if st == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "banter ims did not become healthy: {}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id();
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(st.success(), "kill -{sig}");
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for StoreNode {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // a stopped process cannot die until it is continued
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(c.id().to_string())
                .status();
        }
        self.kill9();
    }
}

/// A counter or gauge of a node's `/metrics` (0 when absent).
async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let (st, text) = http(addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(st, 200);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn im(sender: i64, receiver: i64, msgid: i32, text: &str) -> Im {
    Im {
        sender,
        receiver,
        timestamp: 0,
        msgid,
        content: text.as_bytes().to_vec().into(),
    }
}

/// Logs in as `uid` from device `device` with protocol version 2 (ACKs carry a status).
async fn login(s: &TestServer, uid: i64, device: &str) -> Client {
    Client::login(s, uid, 2, false, device).await
}

/// Sends an IM; returns its ACK status and the METADATA sync key in front of the ACK (0 if none).
async fn send(c: &mut Client, m: Im) -> (i8, i64) {
    c.send_body(&Body::Im(m), 0).await;
    let seq = c.seq;
    let (ack, before) = tokio::time::timeout(Duration::from_secs(30), c.recv_until(cmd::ACK))
        .await
        .expect("an ACK");
    let Body::Ack(a) = body_of(&ack) else {
        panic!("not an ACK")
    };
    assert_eq!(a.seq, seq);
    let key = match before.last().map(body_of) {
        Some(Body::Metadata(m)) if a.status == 0 => m.sync_key,
        _ => 0,
    };
    (a.status, key)
}

/// How many messages with content `text` a full sync of `c`'s queue returns.
async fn stored_copies(c: &mut Client, text: &str) -> usize {
    let (msgs, _) = c.sync_all(0).await;
    msgs.iter()
        .filter(|f| f.cmd == cmd::IM && &im_of(f).content[..] == text.as_bytes())
        .count()
}

/// How many IM pushes with content `text` arrive at `c` within `t` (other frames skipped).
async fn pushes(c: &mut Client, text: &str, t: Duration) -> usize {
    let deadline = Instant::now() + t;
    let mut n = 0;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match c.recv_timeout(left).await {
            Some(f) if f.cmd == cmd::IM && &im_of(&f).content[..] == text.as_bytes() => n += 1,
            Some(_) => {}
            None => break,
        }
    }
    n
}

#[tokio::test]
async fn a_resend_after_a_reconnect_is_acked_with_the_original_key_and_stored_once() {
    let s = TestServer::start().await.unwrap();
    let mut receiver = login(&s, 2, "phone-2").await;
    let mut sender = login(&s, 1, "phone-1").await;
    let (st, key) = send(&mut sender, im(1, 2, 41, "hello once")).await;
    assert_eq!(st, 0);
    assert!(key > 0);
    assert_eq!(
        pushes(&mut receiver, "hello once", Duration::from_millis(500)).await,
        1
    );
    // The ACK was lost with the connection: the client reconnects and resends (same msgid).
    drop(sender);
    let mut sender = login(&s, 1, "phone-1").await;
    let (st, again) = send(&mut sender, im(1, 2, 41, "hello once")).await;
    assert_eq!(st, 0, "the resend is acknowledged");
    assert_eq!(again, key, "with the original sync key");
    assert_eq!(
        pushes(&mut receiver, "hello once", Duration::from_millis(500)).await,
        0,
        "the content is not pushed a second time"
    );
    assert_eq!(stored_copies(&mut receiver, "hello once").await, 1);
    assert_eq!(stored_copies(&mut sender, "hello once").await, 1);
    assert_eq!(metric(s.http, "banter_messages_repeated_total").await, 1.0);
    assert_eq!(
        metric(s.http, "banter_store_repeated_appends_total").await,
        1.0
    );

    // Not the same message: another device, another msgid, msgid 0, other content.
    let mut tablet = login(&s, 1, "tablet-1").await;
    assert_eq!(send(&mut tablet, im(1, 2, 41, "hello once")).await.0, 0);
    assert_eq!(send(&mut sender, im(1, 2, 42, "hello once")).await.0, 0);
    assert_eq!(send(&mut sender, im(1, 2, 0, "no id")).await.0, 0);
    assert_eq!(send(&mut sender, im(1, 2, 0, "no id")).await.0, 0);
    assert_eq!(send(&mut sender, im(1, 2, 41, "other text")).await.0, 0);
    assert_eq!(stored_copies(&mut receiver, "hello once").await, 3);
    assert_eq!(stored_copies(&mut receiver, "no id").await, 2);
    assert_eq!(stored_copies(&mut receiver, "other text").await, 1);
    s.stop().await;
}

#[tokio::test]
async fn a_resend_after_a_store_timeout_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = StoreNode::start(dir.path(), "ims").await;
    let s = TestServer::start_with(|c| c.cluster.storage_addrs = vec![store.listen.to_string()])
        .await
        .unwrap();
    let mut receiver = login(&s, 2, "phone-2").await;
    let mut sender = login(&s, 1, "phone-1").await;
    assert_eq!(send(&mut sender, im(1, 2, 7, "before")).await.0, 0);

    // The store node stops answering: the append reaches its socket, the access node times out
    // and refuses the message (status 70), not knowing whether it was stored.
    store.signal("STOP");
    let started = Instant::now();
    let (st, _) = send(&mut sender, im(1, 2, 8, "timed out")).await;
    assert_eq!(st, 70, "refused after the store timeout");
    assert!(started.elapsed() >= Duration::from_secs(4));
    // The store continues and stores what was waiting in its socket.
    store.signal("CONT");
    store.wait_healthy().await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The client resends after reconnecting, as SDKs do with unacknowledged messages.
    drop(sender);
    let mut sender = login(&s, 1, "phone-1").await;
    let (st, key) = send(&mut sender, im(1, 2, 8, "timed out")).await;
    assert_eq!(st, 0);
    assert!(key > 0);
    assert_eq!(
        metric(store.http, "banter_store_repeated_appends_total").await,
        1.0,
        "the store held the first attempt and answered the resend from it"
    );
    assert_eq!(
        pushes(&mut receiver, "timed out", Duration::from_millis(500)).await,
        0,
        "never pushed: the first attempt was refused, the resend only notifies"
    );
    assert_eq!(stored_copies(&mut receiver, "timed out").await, 1);
    assert_eq!(stored_copies(&mut sender, "timed out").await, 1);
    s.stop().await;
}

#[tokio::test]
async fn a_message_across_two_shards_is_refused_while_one_is_down_then_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    // uid 2 lives on shard 0 (2 mod 2), uid 3 on shard 1.
    let shard0 = StoreNode::start(dir.path(), "ims0").await;
    let mut shard1 = StoreNode::start(dir.path(), "ims1").await;
    let addrs = vec![shard0.listen.to_string(), shard1.listen.to_string()];
    let s = TestServer::start_with(|c| c.cluster.storage_addrs = addrs)
        .await
        .unwrap();
    let mut receiver = login(&s, 2, "phone-2").await;
    let mut sender = login(&s, 3, "phone-3").await;
    assert_eq!(send(&mut sender, im(3, 2, 1, "warm up")).await.0, 0);
    assert_eq!(
        pushes(&mut receiver, "warm up", Duration::from_millis(300)).await,
        1
    );

    // The sender's shard is down: the receiver's part is stored, the sender's is not.
    shard1.kill9();
    let (st, _) = send(&mut sender, im(3, 2, 2, "split")).await;
    assert_eq!(st, 70, "refused: not every part is stored");
    assert_eq!(
        metric(shard0.http, "banter_store_messages_total").await,
        2.0,
        "the receiver's part was stored"
    );
    assert_eq!(
        pushes(&mut receiver, "split", Duration::from_millis(300)).await,
        0,
        "not delivered while refused"
    );

    // The shard returns; the client resends the same message.
    shard1.spawn().await;
    let mut status = 70;
    for _ in 0..50 {
        // the access node's pool re-dials the shard with back-off
        status = send(&mut sender, im(3, 2, 2, "split")).await.0;
        if status == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(status, 0, "stored once the shard is back");
    assert_eq!(
        metric(shard0.http, "banter_store_messages_total").await,
        2.0,
        "the receiver's part was not stored again"
    );
    assert!(
        metric(shard0.http, "banter_store_repeated_appends_total").await >= 1.0,
        "the receiver's part was answered from the key window"
    );
    assert_eq!(
        pushes(&mut receiver, "split", Duration::from_millis(500)).await,
        1,
        "delivered once, when the message was complete"
    );
    assert_eq!(stored_copies(&mut receiver, "split").await, 1);
    assert_eq!(stored_copies(&mut sender, "split").await, 1);
    // and the resend again: ACKed, nothing new
    assert_eq!(send(&mut sender, im(3, 2, 2, "split")).await.0, 0);
    assert_eq!(stored_copies(&mut receiver, "split").await, 1);
    assert_eq!(stored_copies(&mut sender, "split").await, 1);
    s.stop().await;
}
