//! A self-healing cluster on etcd (docs/cluster.md, *Automatic fail-over with etcd*), with a real
//! `etcd` (testkit), real `banter ims` and `banter imr` processes and an in-process access node
//! configured with nothing but the etcd endpoint and its shard names:
//!
//! * discovery: the access node finds the shard's elected leader and the router by itself; the
//!   router learns the access node's users; `banter cluster status` shows every node, the shard's
//!   leader, epoch and positions;
//! * automatic fail-over in sync mode: the leader is killed with `kill -9` while messages flow;
//!   the follower is elected, the access node switches to it, and every ACKed message is
//!   readable afterwards exactly once; the time from the kill to the next ACK is printed;
//! * the old leader, started again, rejoins as a follower of the new one (re-seeding its log
//!   first when it held records the new leader never got) and catches up;
//! * router fail-over: two routers, two access nodes; the receiver's router is killed with
//!   `kill -9`; its users move to the other router (rendezvous hashing over the live routers)
//!   and cross-node messages are pushed again; the time from the kill is printed;
//! * fencing: a leader cut off from etcd refuses appends before its lease could have expired,
//!   stops, and started again (etcd back) removes its stale key and leads a new term.
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{body_of, free_addr, im_of, Client, TestServer, APPID};
use proto::{cmd, flag, Body, Im};

const SECRET: &str = "etcd-test-secret";

/// A `banter ims` or `banter imr` process, killed with SIGKILL when dropped.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(dir: &Path, name: &str, role: &str, config: String) -> Proc {
        let cfg = dir.join(format!("{name}.toml"));
        std::fs::write(&cfg, config).unwrap();
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_banter"))
            .args([role, "--config", cfg.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc { child, log }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

struct StoreSpec {
    name: String,
    listen: SocketAddr,
    repl: SocketAddr,
    http: SocketAddr,
}

fn store_config(dir: &Path, s: &StoreSpec, etcd: &str, mode: &str) -> String {
    let data = dir.join(format!("{}-data", s.name));
    format!(
        "node_id = \"{}\"\ndata_dir = {data:?}\nlisten = \"{}\"\nreplication_listen = \"{}\"\n\
         http_listen = \"{}\"\nhttp_secret = \"{SECRET}\"\nreplication_mode = \"{mode}\"\n\
         sync_timeout_ms = 2000\nreplication_heartbeat_ms = 500\nreplication_idle_timeout_ms = 5000\n\
         etcd = [\"{etcd}\"]\netcd_prefix = \"/test\"\nshard = \"0\"\n",
        s.name, s.listen, s.repl, s.http
    )
}

fn start_store(dir: &Path, s: &StoreSpec, etcd: &str, mode: &str) -> Proc {
    Proc::spawn(dir, &s.name, "ims", store_config(dir, s, etcd, mode))
}

fn spec(name: &str) -> StoreSpec {
    StoreSpec {
        name: name.into(),
        listen: free_addr(),
        repl: free_addr(),
        http: free_addr(),
    }
}

/// The shard's leader record and epoch, once there is one.
async fn leader(etcd: &coord::Etcd) -> Option<(i64, coord::LeaderRecord)> {
    let kv = etcd.get("/test/leaders/0").await.ok()??;
    Some((kv.create_revision, serde_json::from_slice(&kv.value).ok()?))
}

async fn store_records(etcd: &coord::Etcd) -> Vec<coord::StoreRecord> {
    let (_, kvs) = etcd.get_prefix("/test/stores/0/").await.unwrap();
    kvs.iter()
        .map(|kv| serde_json::from_slice(&kv.value).unwrap())
        .collect()
}

/// Polls `f` until it returns `Some`, for at most `within`.
async fn eventually<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn cluster_status(etcd: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_banter"))
        .args(["cluster", "status", "--etcd", etcd, "--prefix", "/test"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cluster status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
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

/// Sends one message and returns its ACK status.
async fn send(s: &mut Client, text: &str) -> i8 {
    s.send_body(&Body::Im(im(text)), 0).await;
    let (ack, _) = tokio::time::timeout(Duration::from_secs(20), s.recv_until(cmd::ACK))
        .await
        .unwrap_or_else(|_| panic!("no ACK for {text}"));
    match body_of(&ack) {
        Body::Ack(a) => a.status,
        other => panic!("{other:?}"),
    }
}

/// Sends `text` (a new attempt after every refusal, as an SDK resends) until one is ACKed;
/// returns the ACKed text.
async fn send_until_acked(s: &mut Client, text: &str, acked: &mut Vec<String>) -> String {
    for attempt in 0..300 {
        let msg = format!("{text}#{attempt}");
        match send(s, &msg).await {
            0 => {
                acked.push(msg.clone());
                return msg;
            }
            70 => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("unexpected ACK status {other}"),
        }
    }
    panic!("{text} was never ACKed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_election_and_automatic_failover_in_sync_mode() {
    let etcd_server = testkit::EtcdServer::start();
    let url = etcd_server.url();
    let etcd = coord::Etcd::new(std::slice::from_ref(&url), Duration::from_secs(5)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    // three members: after the leader dies, the new leader still has a follower to confirm
    // appends (sync mode confirms nothing without one)
    let a = spec("ims-a");
    let b = spec("ims-b");
    let c = spec("ims-c");
    let _pa = start_store(dir, &a, &url, "sync");
    let (epoch1, first) =
        eventually("a first leader", Duration::from_secs(30), || leader(&etcd)).await;
    assert_eq!(first.node_id, "ims-a", "the only member wins");
    let mut procs = vec![
        (_pa, a),
        (start_store(dir, &b, &url, "sync"), b),
        (start_store(dir, &c, &url, "sync"), c),
    ];

    let router_listen = free_addr();
    let router_http = free_addr();
    let _router = Proc::spawn(
        dir,
        "imr",
        "imr",
        format!(
            "node_id = \"imr-1\"\nlisten = \"{router_listen}\"\nhttp_listen = \"{router_http}\"\n\
             http_secret = \"{SECRET}\"\n[cluster]\netcd = [\"{url}\"]\netcd_prefix = \"/test\"\n"
        ),
    );
    // the followers follow the elected leader
    eventually("the followers", Duration::from_secs(30), || async {
        let recs = store_records(&etcd).await;
        let following = recs
            .iter()
            .filter(|r| r.role == "follower" && r.epoch == epoch1)
            .count();
        (following == 2).then_some(())
    })
    .await;

    let url2 = url.clone();
    let server = TestServer::start_with(move |c| {
        c.cluster.node_id = "im-a".into();
        c.cluster.etcd = vec![url2];
        c.cluster.etcd_prefix = "/test".into();
        c.cluster.storage_shards = vec!["0".into()];
    })
    .await
    .unwrap();
    let mut s = Client::login(&server, 1, 2, false, "s").await;
    let mut r = Client::login(&server, 2, 2, false, "r").await;

    // the access node found the router by itself: the router learns the receiver is online
    eventually(
        "the router to see the receiver",
        Duration::from_secs(30),
        || async {
            let auth = format!("Bearer {SECRET}");
            let (st, body) = common::http(
                router_http,
                "GET",
                &format!("/online?appid={APPID}&uid=2"),
                &[("Authorization", auth.as_str())],
                b"",
            )
            .await;
            (st == 200 && body.contains("true")).then_some(())
        },
    )
    .await;
    let status = cluster_status(&url);
    for want in ["imr-1", "im-a", "ims-a", "ims-b", "ims-c", "leader ims-a"] {
        assert!(status.contains(want), "status lacks {want}:\n{status}");
    }

    let mut acked = Vec::new();
    for i in 0..20 {
        send_until_acked(&mut s, &format!("before {i}"), &mut acked).await;
    }

    // kill -9 the leader while a message is in flight
    s.send_body(&Body::Im(im("in flight at the kill")), 0).await;
    procs[0].0.kill9();
    let killed = Instant::now();
    let (ack, _) = tokio::time::timeout(Duration::from_secs(20), s.recv_until(cmd::ACK))
        .await
        .unwrap();
    if matches!(body_of(&ack), Body::Ack(a) if a.status == 0) {
        acked.push("in flight at the kill".into());
    }
    send_until_acked(&mut s, "first after the kill", &mut acked).await;
    let failover = killed.elapsed();
    eprintln!(
        "fail-over (sync mode, lease_ttl_secs 3): {} ms from kill -9 to the next ACK",
        failover.as_millis()
    );
    let (epoch2, second) = leader(&etcd).await.unwrap();
    assert_ne!(second.node_id, "ims-a");
    assert!(epoch2 > epoch1, "a new epoch");
    assert!(
        failover < Duration::from_secs(30),
        "fail-over took {failover:?}"
    );
    for i in 0..10 {
        send_until_acked(&mut s, &format!("after {i}"), &mut acked).await;
    }

    // every ACKed message is readable, once
    let (frames, _) = r.sync_all(0).await;
    let texts: Vec<String> = frames
        .iter()
        .filter(|f| f.cmd == cmd::IM)
        .map(|f| String::from_utf8_lossy(&im_of(f).content).into_owned())
        .collect();
    let unique: BTreeSet<&String> = texts.iter().collect();
    assert_eq!(
        unique.len(),
        texts.len(),
        "a message was delivered twice: {texts:?}"
    );
    for m in &acked {
        assert!(texts.contains(m), "ACKed message {m} lost; have {texts:?}");
    }

    // the old leader comes back: it rejoins as a follower of the new leader (re-seeding its
    // log first if it held records the new leader never got: it then stops once, and its
    // supervisor — here the test — starts it again)
    let a = procs.remove(0).1;
    let mut back = start_store(dir, &a, &url, "sync");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let recs = store_records(&etcd).await;
        let lead_end = recs
            .iter()
            .find(|r| r.node_id == second.node_id)
            .map(|r| r.log_end);
        if recs.iter().any(|r| {
            r.node_id == "ims-a"
                && r.role == "follower"
                && r.epoch == epoch2
                && Some(r.log_end) == lead_end
        }) {
            break;
        }
        if back.exited() {
            assert!(
                back.log_text().contains("diverged"),
                "the old leader stopped for another reason:\n{}",
                back.log_text()
            );
            back = start_store(dir, &a, &url, "sync");
        }
        assert!(
            Instant::now() < deadline,
            "the old leader never rejoined as a follower; log:\n{}\nrecords: {:?}",
            back.log_text(),
            store_records(&etcd).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if back.log_text().contains("re-seed") || back.log_text().contains("dropped from service") {
        eprintln!("the old leader re-seeded its diverged log");
    }
    let status = cluster_status(&url);
    assert!(
        status.contains(&format!("leader {} (epoch {epoch2})", second.node_id)),
        "{status}"
    );
    drop(back);
    server.stop().await;
}

fn start_router(dir: &Path, name: &str, url: &str) -> (Proc, SocketAddr) {
    let listen = free_addr();
    let http = free_addr();
    let p = Proc::spawn(
        dir,
        name,
        "imr",
        format!(
            "node_id = \"{name}\"\nlisten = \"{listen}\"\nhttp_listen = \"{http}\"\n\
             http_secret = \"{SECRET}\"\n[cluster]\netcd = [\"{url}\"]\netcd_prefix = \"/test\"\n"
        ),
    );
    (p, listen)
}

async fn access_node(name: &str, url: &str) -> TestServer {
    let (name, url) = (name.to_string(), url.to_string());
    TestServer::start_with(move |c| {
        c.cluster.node_id = name;
        c.cluster.etcd = vec![url];
        c.cluster.etcd_prefix = "/test".into();
        c.cluster.storage_shards = vec!["0".into()];
    })
    .await
    .unwrap()
}

/// Sends `text` from `s` and reports whether `r` gets it pushed within `within`.
async fn pushed(s: &mut Client, r: &mut Client, text: &str, within: Duration) -> bool {
    let mut ignored = Vec::new();
    assert_eq!(
        send_until_acked(s, text, &mut ignored).await,
        format!("{text}#0")
    );
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        match r.recv_timeout(left).await {
            Some(f) if f.cmd == cmd::IM && f.flag & flag::PUSH != 0 => {
                if im_of(&f).content.as_ref() == format!("{text}#0").as_bytes() {
                    return true;
                }
            }
            Some(_) => {}
            None => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_routers_users_move_to_the_live_routers() {
    let etcd_server = testkit::EtcdServer::start();
    let url = etcd_server.url();
    let etcd = coord::Etcd::new(std::slice::from_ref(&url), Duration::from_secs(5)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let _store = start_store(dir, &spec("ims-a"), &url, "async");
    eventually("a leader", Duration::from_secs(30), || leader(&etcd)).await;
    let mut routers = [
        start_router(dir, "imr-1", &url),
        start_router(dir, "imr-2", &url),
    ];
    eventually(
        "both routers registered",
        Duration::from_secs(30),
        || async {
            let (_, kvs) = etcd.get_prefix("/test/routers/").await.ok()?;
            (kvs.len() == 2).then_some(())
        },
    )
    .await;
    let node_a = access_node("im-a", &url).await;
    let node_b = access_node("im-b", &url).await;
    let mut s = Client::login(&node_a, 1, 2, false, "s").await;
    let mut r = Client::login(&node_b, 2, 2, false, "r").await;

    // the receiver's router, as every access node computes it
    let addrs: Vec<u64> = routers
        .iter()
        .map(|(_, a)| cluster::route_proto::addr_hash(&a.to_string()))
        .collect();
    let victim = cluster::route_proto::rendezvous_index(2, &addrs);

    // cross-node delivery works (both nodes have found both routers)
    let mut ok = false;
    for i in 0..60 {
        if pushed(
            &mut s,
            &mut r,
            &format!("before {i}"),
            Duration::from_millis(500),
        )
        .await
        {
            ok = true;
            break;
        }
    }
    assert!(ok, "no cross-node push before the router kill");

    routers[victim].0.kill9();
    let killed = Instant::now();
    let mut moved = false;
    for i in 0..120 {
        if pushed(
            &mut s,
            &mut r,
            &format!("after {i}"),
            Duration::from_millis(500),
        )
        .await
        {
            moved = true;
            break;
        }
    }
    assert!(moved, "the receiver's users never moved to the live router");
    eprintln!(
        "router fail-over (lease_ttl_secs 3): {} ms from kill -9 to the next cross-node push",
        killed.elapsed().as_millis()
    );
    // nothing was lost meanwhile: everything sent is stored and synced
    let (frames, _) = r.sync_all(0).await;
    let texts: BTreeSet<String> = frames
        .iter()
        .filter(|f| f.cmd == cmd::IM)
        .map(|f| String::from_utf8_lossy(&im_of(f).content).into_owned())
        .collect();
    assert!(texts.iter().any(|t| t.starts_with("after 0#")), "{texts:?}");
    let status = cluster_status(&url);
    assert!(
        !status.contains(&format!("imr-{}", victim + 1)),
        "the dead router is still listed:\n{status}"
    );
    node_a.stop().await;
    node_b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_etcd_stops_acknowledging_and_rejoins() {
    let mut etcd_server = testkit::EtcdServer::start();
    let url = etcd_server.url();
    let etcd = coord::Etcd::new(std::slice::from_ref(&url), Duration::from_secs(5)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let a = spec("ims-a");
    let mut store = start_store(dir, &a, &url, "async");
    let (epoch1, _) = eventually("a leader", Duration::from_secs(30), || leader(&etcd)).await;
    let server = access_node("im-a", &url).await;
    let mut s = Client::login(&server, 1, 2, false, "s").await;
    let mut acked = Vec::new();
    send_until_acked(&mut s, "before", &mut acked).await;

    // etcd goes away: the leader cannot renew its lease, so it must stop acknowledging before
    // etcd could have expired the lease (3 s) — and, deposed, stop
    etcd_server.kill();
    let cut = Instant::now();
    let mut first_refusal = None;
    for i in 0..300 {
        let sent = cut.elapsed();
        let status = send(&mut s, &format!("during {i}")).await;
        if status == 0 {
            assert!(
                first_refusal.is_none(),
                "an ACK after the leader had stopped acknowledging"
            );
        } else if first_refusal.is_none() {
            first_refusal = Some(sent);
        }
        if first_refusal.is_some() && store.exited() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first_refusal = first_refusal.expect("the leader kept acknowledging without etcd");
    eprintln!(
        "a leader cut off from etcd refused its first append {} ms after the cut (lease TTL 3 s)",
        first_refusal.as_millis()
    );
    assert!(
        first_refusal < Duration::from_secs(3),
        "acknowledged appends after its lease could have expired ({first_refusal:?})"
    );
    assert!(store.exited(), "the deposed leader did not stop");
    assert!(
        store.log_text().contains("no longer this shard's leader"),
        "{}",
        store.log_text()
    );

    // etcd and the node come back: the node removes its stale key, wins again, serves again
    etcd_server.restart();
    store = start_store(dir, &a, &url, "async");
    // (the key of its earlier term may still be there: etcd restarted its lease)
    let again = eventually("a new term", Duration::from_secs(60), || async {
        leader(&etcd).await.filter(|(epoch, _)| *epoch > epoch1)
    })
    .await;
    assert_eq!(again.1.node_id, "ims-a");
    send_until_acked(&mut s, "after", &mut acked).await;
    drop(store);
    server.stop().await;
}
