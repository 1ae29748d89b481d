//! Cluster mode with real processes on loopback: 2 access nodes (`banter im`), 1 router (`banter imr`),
//! 2 store nodes each with a follower (`banter ims`, synchronous replication), plus real Redis (tokens,
//! sync keys, group stream) and MariaDB (GoBelieve's group tables).
//!
//! One scenario, in order: cross-node peer / normal-group / super-group / room traffic with the SDK fast
//! path; the router killed and restarted mid-traffic; a store leader killed with `kill -9` mid-traffic,
//! its follower promoted and the access nodes pointed at it by SIGHUP; a third access node joining.
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{body_of, free_addr, http, im_of, post_json, Client, APPID};
use proto::{cmd, flag, Body, GroupSyncKey, Im, Metadata, Rt};
use serde_json::json;

/// A child process killed when dropped.
struct Proc {
    child: Child,
    name: String,
}

impl Proc {
    fn spawn(name: &str, dir: &Path, args: &[&str]) -> Proc {
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_banter"))
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc {
            child,
            name: name.to_string(),
        }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{sig} {}", self.name);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

async fn wait_healthy(name: &str, http_addr: SocketAddr, dir: &Path) {
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(http_addr).await.is_ok() {
            let (st, _) = http(http_addr, "GET", "/healthz", &[], b"").await;
            if st == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
    panic!("{name} did not become healthy; log:\n{log}");
}

struct StoreAddrs {
    listen: SocketAddr,
    repl: SocketAddr,
    http: SocketAddr,
}

/// Starts `banter ims` as `name` with [`store_config`].
fn spawn_store(dir: &Path, name: &str, a: &StoreAddrs, follow: Option<SocketAddr>) -> Proc {
    let cfg = store_config(dir, name, a, follow);
    Proc::spawn(name, dir, &["ims", "--config", cfg.to_str().unwrap()])
}

fn store_config(dir: &Path, name: &str, a: &StoreAddrs, follow: Option<SocketAddr>) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let follow = follow.map(|f| f.to_string()).unwrap_or_default();
    std::fs::write(
        &path,
        format!(
            "data_dir = {:?}\nlisten = \"{}\"\nreplication_listen = \"{}\"\nhttp_listen = \"{}\"\nfollow = \"{follow}\"\nreplication_mode = \"sync\"\nsync_timeout_ms = 3000\n",
            dir.join(format!("{name}-data")),
            a.listen,
            a.repl,
            a.http
        ),
    )
    .unwrap();
    path
}

struct AccessAddrs {
    tcp: SocketAddr,
    http: SocketAddr,
}

#[allow(clippy::too_many_arguments)]
fn access_config(
    dir: &Path,
    name: &str,
    a: &AccessAddrs,
    router: SocketAddr,
    stores: &[SocketAddr],
    redis: &str,
    mysql: &str,
) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let stores: Vec<String> = stores.iter().map(|s| format!("\"{s}\"")).collect();
    std::fs::write(
        &path,
        format!(
            r#"[data]
dir = {data:?}
[server]
tcp = "{tcp}"
ws = ""
[api]
listen = "{http}"
[auth]
backend = "redis"
redis_url = "{redis}"
flush_interval_ms = 50
[groups]
backend = "mysql"
[groups.mysql]
url = "{mysql}"
redis_url = "{redis}"
[cluster]
node_id = "{name}"
route_addrs = ["{router}"]
storage_addrs = [{stores}]
"#,
            data = dir.join(format!("{name}-data")),
            tcp = a.tcp,
            http = a.http,
            stores = stores.join(", "),
        ),
    )
    .unwrap();
    path
}

/// `GET /admin/cluster` of an access node, once `ready` holds (within 10 s).
async fn cluster_view(
    http_addr: SocketAddr,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (st, body) = http(http_addr, "GET", "/admin/cluster", &[], b"").await;
        assert_eq!(st, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        if ready(&v) {
            assert_eq!(v["mode"], "cluster", "{v}");
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the node view never showed the expected state: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn token(con: &mut redis::aio::MultiplexedConnection, uid: i64) -> String {
    let t = format!("cluster-token-{uid}-xxxxxxxxxxxxxxxx");
    let _: () = redis::cmd("HSET")
        .arg(format!("access_token_{t}"))
        .arg("user_id")
        .arg(uid)
        .arg("app_id")
        .arg(APPID)
        .query_async(con)
        .await
        .unwrap();
    t
}

async fn login(con: &mut redis::aio::MultiplexedConnection, addr: SocketAddr, uid: i64) -> Client {
    let t = token(con, uid).await;
    let mut c = Client::tcp(addr).await;
    assert_eq!(
        c.auth(&t, 2, proto::Platform::ANDROID, &format!("dev{uid}"))
            .await,
        0,
        "login {uid}"
    );
    c
}

/// Receives a pushed message: returns (METADATA, message). Skips unrelated frames.
async fn recv_push(c: &mut Client, want: u8) -> (Metadata, proto::Frame) {
    let mut last_meta: Option<(i32, Metadata)> = None;
    loop {
        let f = c
            .recv()
            .await
            .unwrap_or_else(|| panic!("waiting for cmd {want}"));
        if f.cmd == cmd::METADATA {
            let Body::Metadata(m) = body_of(&f) else {
                unreachable!()
            };
            last_meta = Some((f.seq, m));
        } else if f.cmd == want {
            let (seq, m) = last_meta.expect("METADATA before the push");
            assert_eq!(f.seq, seq + 1, "METADATA directly precedes its message");
            return (m, f);
        }
    }
}

fn im(sender: i64, receiver: i64, text: &str) -> Im {
    Im {
        sender,
        receiver,
        timestamp: 0,
        msgid: 0,
        content: text.as_bytes().to_vec().into(),
    }
}

/// Sends until the message is delivered across nodes (routes need a moment to (re)subscribe).
async fn eventually_delivered(
    a: &mut Client,
    b: &mut Client,
    sender: i64,
    receiver: i64,
    text: &str,
) {
    for attempt in 0..100 {
        let t = format!("{text}#{attempt}");
        a.send_body(&Body::Im(im(sender, receiver, &t)), 0).await;
        a.recv_until(cmd::ACK).await;
        if let Some(f) = b.recv_timeout(Duration::from_millis(200)).await {
            if f.cmd == cmd::METADATA || f.cmd == cmd::IM || f.cmd == cmd::SYNC_NOTIFY {
                // Drain what follows.
                while b.recv_timeout(Duration::from_millis(100)).await.is_some() {}
                return;
            }
        }
    }
    panic!("{text}: never delivered across nodes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_survives_router_and_store_failures() {
    // BANTER_KEEP_TEST_DIR=1 keeps the directory (configs, data and one log per process) for a post-mortem.
    let mut dir = Some(tempfile::tempdir().unwrap());
    let d: PathBuf = if std::env::var_os("BANTER_KEEP_TEST_DIR").is_some() {
        dir.take().unwrap().keep()
    } else {
        dir.as_ref().unwrap().path().to_path_buf()
    };
    let d = d.as_path();
    let t0 = std::time::Instant::now();
    let stage = |name: &str| eprintln!("[{:>7.2?}] {name}", t0.elapsed());
    eprintln!("cluster test directory: {}", d.display());
    let redis_server = testkit::RedisServer::start();
    let mariadb = testkit::MariaDb::start();
    let redis_url = redis_server.url();
    let mysql_url = mariadb.url();
    let client = redis::Client::open(redis_url.clone()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();

    // Stores: two leaders, each with a follower.
    stage("Stores");
    let s: Vec<StoreAddrs> = (0..4)
        .map(|_| StoreAddrs {
            listen: free_addr(),
            repl: free_addr(),
            http: free_addr(),
        })
        .collect();
    let mut leader1 = spawn_store(d, "ims1", &s[0], None);
    let _leader2 = spawn_store(d, "ims2", &s[1], None);
    let _follower1 = spawn_store(d, "ims1f", &s[2], Some(s[0].repl));
    let _follower2 = spawn_store(d, "ims2f", &s[3], Some(s[1].repl));
    for (name, a) in [
        ("ims1", &s[0]),
        ("ims2", &s[1]),
        ("ims1f", &s[2]),
        ("ims2f", &s[3]),
    ] {
        wait_healthy(name, a.http, d).await;
    }

    // Router.
    stage("Router");
    let router = free_addr();
    let router_http = free_addr();
    let router_cfg = d.join("imr.toml");
    std::fs::write(
        &router_cfg,
        format!("listen = \"{router}\"\nhttp_listen = \"{router_http}\"\n[push]\nbackend = \"redis\"\n[push.redis]\nurl = \"{redis_url}\"\n"),
    )
    .unwrap();
    let mut imr = Proc::spawn("imr", d, &["imr", "--config", router_cfg.to_str().unwrap()]);
    wait_healthy("imr", router_http, d).await;

    // Two access nodes.
    stage("Two access nodes");
    let stores = [s[0].listen, s[1].listen];
    let acc: Vec<AccessAddrs> = (0..3)
        .map(|_| AccessAddrs {
            tcp: free_addr(),
            http: free_addr(),
        })
        .collect();
    let cfg_a = access_config(d, "im_a", &acc[0], router, &stores, &redis_url, &mysql_url);
    let cfg_b = access_config(d, "im_b", &acc[1], router, &stores, &redis_url, &mysql_url);
    let im_a = Proc::spawn("im_a", d, &["im", "--config", cfg_a.to_str().unwrap()]);
    let im_b = Proc::spawn("im_b", d, &["im", "--config", cfg_b.to_str().unwrap()]);
    wait_healthy("im_a", acc[0].http, d).await;
    wait_healthy("im_b", acc[1].http, d).await;

    // The admin console's node view: A's router link and both store leaders.
    stage("The admin console's node view");
    let view = cluster_view(acc[0].http, |v| v["routers"][0]["connected"] == true).await;
    assert_eq!(view["routers"][0]["addr"], router.to_string(), "{view}");
    let listed: Vec<&str> = view["stores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|st| {
            assert_eq!(st["reachable"], true, "{view}");
            assert_eq!(st["leader"], true, "{view}");
            st["addr"].as_str().unwrap()
        })
        .collect();
    assert_eq!(listed, [s[0].listen.to_string(), s[1].listen.to_string()]);

    // --- Cross-node traffic. uid 1 on A, uid 2 on B (uid 2's queue lives on store 1: 2 mod 2 = 0).
    stage("Cross-node traffic");
    let mut u1 = login(&mut con, acc[0].tcp, 1).await;
    let mut u2 = login(&mut con, acc[1].tcp, 2).await;
    eventually_delivered(&mut u1, &mut u2, 1, 2, "warm-up").await;
    let (_, k_before) = u2.sync_all(0).await;
    // The fast path works across nodes: METADATA carries the previous key of u2's queue.
    stage("The fast path works across nodes");
    let mut key = k_before;
    for i in 0..5 {
        u1.send_body(&Body::Im(im(1, 2, &format!("peer {i}"))), flag::TEXT)
            .await;
        u1.recv_until(cmd::ACK).await;
        let (meta, m) = recv_push(&mut u2, cmd::IM).await;
        assert_eq!(
            meta.prev_sync_key, key,
            "prev key travels through the router"
        );
        assert_eq!(&im_of(&m).content[..], format!("peer {i}").as_bytes());
        key = meta.sync_key;
    }

    // Normal group (GoBelieve MySQL tables, created through A, seen by B through the stream).
    stage("Normal group (GoBelieve MySQL tables, created through A, seen by B through the stream)");
    let (st, v) = post_json(
        acc[0].http,
        "/admin/groups",
        &json!({"appid": APPID, "group_id": 3110, "name": "n", "members": [1, 2]}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    u1.send_body(&Body::GroupIm(im(1, 3110, "normal group")), 0)
        .await;
    let (ack, _) = u1.recv_until(cmd::ACK).await;
    assert_eq!(
        body_of(&ack),
        Body::Ack(proto::Ack {
            seq: u1.seq,
            status: 0
        })
    );
    let (_, m) = recv_push(&mut u2, cmd::GROUP_IM).await;
    assert_eq!(&im_of(&m).content[..], b"normal group");

    // Super group: one PUBLISH_GROUP, B resolves the members.
    stage("Super group");
    let (st, _) = post_json(
        acc[0].http,
        "/admin/groups",
        &json!({"appid": APPID, "group_id": 3111, "name": "s", "super": true, "members": [1, 2]}),
    )
    .await;
    assert_eq!(st, 200);
    u1.send_body(&Body::GroupIm(im(1, 3111, "super group")), 0)
        .await;
    let (ack, _) = u1.recv_until(cmd::ACK).await;
    assert_eq!(ack.flag, flag::SUPER_GROUP);
    let (gmeta, m) = recv_push(&mut u2, cmd::GROUP_IM).await;
    assert_eq!(m.flag & flag::SUPER_GROUP, flag::SUPER_GROUP);
    assert!(gmeta.sync_key > 0);
    u2.send_body(
        &Body::SyncGroup(GroupSyncKey {
            group_id: 3111,
            sync_key: 0,
        }),
        0,
    )
    .await;
    let (end, before) = u2.recv_until(cmd::SYNC_GROUP_END).await;
    assert!(
        before.iter().any(|f| f.cmd == cmd::GROUP_IM),
        "super-group sync across nodes"
    );
    assert_eq!(
        body_of(&end),
        Body::SyncGroupEnd(GroupSyncKey {
            group_id: 3111,
            sync_key: gmeta.sync_key
        })
    );

    // Rooms.
    stage("Rooms");
    u1.send_body(&Body::EnterRoom(77), 0).await;
    u2.send_body(&Body::EnterRoom(77), 0).await;
    let mut got_room = false;
    for _ in 0..50 {
        u1.send_body(
            &Body::RoomIm(Rt {
                sender: 1,
                receiver: 77,
                content: "room".into(),
            }),
            0,
        )
        .await;
        u1.recv_until(cmd::ACK).await;
        if let Some(f) = u2.recv_timeout(Duration::from_millis(200)).await {
            if f.cmd == cmd::ROOM_IM {
                got_room = true;
                break;
            }
        }
    }
    assert!(got_room, "room message across nodes");
    while u2.recv_timeout(Duration::from_millis(200)).await.is_some() {}

    // --- The router dies mid-traffic: local users keep working, nothing persisted is lost.
    stage("The router dies mid-traffic");
    let mut u3 = login(&mut con, acc[0].tcp, 3).await;
    imr.kill9();
    let view = cluster_view(acc[0].http, |v| v["routers"][0]["connected"] == false).await;
    assert_eq!(view["mode"], "cluster", "{view}");
    for i in 0..20 {
        u1.send_body(&Body::Im(im(1, 3, &format!("local {i}"))), 0)
            .await;
        let (ack, _) = u1.recv_until(cmd::ACK).await;
        assert_eq!(
            body_of(&ack),
            Body::Ack(proto::Ack {
                seq: u1.seq,
                status: 0
            }),
            "A serves local users without a router"
        );
        let (_, m) = recv_push(&mut u3, cmd::IM).await;
        assert_eq!(&im_of(&m).content[..], format!("local {i}").as_bytes());
        // Cross-node messages are still stored (and synced later).
        u1.send_body(&Body::Im(im(1, 2, &format!("while down {i}"))), 0)
            .await;
        u1.recv_until(cmd::ACK).await;
    }
    let _imr2 = Proc::spawn(
        "imr2",
        d,
        &["imr", "--config", router_cfg.to_str().unwrap()],
    );
    wait_healthy("imr2", router_http, d).await;
    while u2.recv_timeout(Duration::from_millis(200)).await.is_some() {}
    eventually_delivered(&mut u1, &mut u2, 1, 2, "after router restart").await;
    let (all, _) = u2.sync_all(key).await;
    let texts: Vec<String> = all
        .iter()
        .filter(|f| f.cmd == cmd::IM)
        .map(|f| String::from_utf8_lossy(&im_of(f).content).into_owned())
        .collect();
    for i in 0..20 {
        assert!(
            texts.contains(&format!("while down {i}")),
            "message {i} sent while the router was down"
        );
    }

    // --- Store leader 1 (holding uid 2's queue) is killed mid-traffic.
    stage("Store leader 1 (holding uid 2's queue) is killed mid-traffic");
    let mut acked = Vec::new();
    let acked_count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = acked_count.clone();
    let sender = tokio::spawn(async move {
        // Refusals after the kill come after the access node's own retries (up to 2 s each): a
        // few of them show the shard is down, so the sender stops after ten.
        let mut refused = 0;
        for i in 0..400 {
            if refused == 10 {
                break;
            }
            let text = format!("durable {i}");
            u1.send_body(&Body::Im(im(1, 2, &text)), 0).await;
            let Some((ack, _)) =
                tokio::time::timeout(Duration::from_secs(10), u1.recv_until(cmd::ACK))
                    .await
                    .ok()
            else {
                break;
            };
            if let Body::Ack(a) = body_of(&ack) {
                if a.status == 0 {
                    acked.push(text);
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                } else {
                    refused += 1;
                }
            }
        }
        (u1, acked)
    });
    // Kill once traffic is flowing (some appends confirmed), whatever the machine's speed.
    while acked_count.load(std::sync::atomic::Ordering::Relaxed) < 50 && !sender.is_finished() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    leader1.kill9();
    let (mut u1, acked) = sender.await.unwrap();
    eprintln!(
        "{} of 400 messages acknowledged around the kill",
        acked.len()
    );
    assert!(
        !acked.is_empty() && acked.len() < 400,
        "the kill hit mid-traffic: some messages acknowledged, some refused ({})",
        acked.len()
    );
    // Promote the follower and point the access nodes at it.
    stage("Promote the follower and point the access nodes at it");
    let out = Command::new(env!("CARGO_BIN_EXE_banter"))
        .args(["ims", "promote", "--http", &format!("http://{}", s[2].http)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promote: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The promoted node replicates synchronously too, so it needs a follower of its own before it
    // confirms appends: a fresh store node (empty data directory) follows it from position 0.
    let s1g = StoreAddrs {
        listen: free_addr(),
        repl: free_addr(),
        http: free_addr(),
    };
    let _follower1g = spawn_store(d, "ims1g", &s1g, Some(s[2].repl));
    wait_healthy("ims1g", s1g.http, d).await;
    let new_stores = [s[2].listen, s[1].listen];
    access_config(
        d,
        "im_a",
        &acc[0],
        router,
        &new_stores,
        &redis_url,
        &mysql_url,
    );
    access_config(
        d,
        "im_b",
        &acc[1],
        router,
        &new_stores,
        &redis_url,
        &mysql_url,
    );
    im_a.signal("HUP");
    im_b.signal("HUP");
    // Every acknowledged message is on the promoted follower.
    stage("Every acknowledged message is on the promoted follower");
    let mut synced = Vec::new();
    for _ in 0..100 {
        let mut fresh = login(&mut con, acc[1].tcp, 2).await;
        let (msgs, _) = fresh.sync_all(key).await;
        synced = msgs
            .iter()
            .filter(|f| f.cmd == cmd::IM)
            .map(|f| String::from_utf8_lossy(&im_of(f).content).into_owned())
            .collect();
        if acked.iter().all(|a| synced.contains(a)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for a in &acked {
        assert!(
            synced.contains(a),
            "acknowledged {a:?} is on the promoted follower"
        );
    }
    // New messages work after the fail-over.
    stage("New messages work after the fail-over");
    let mut u2 = login(&mut con, acc[1].tcp, 2).await;
    u2.sync_all(0).await;
    eventually_delivered(&mut u1, &mut u2, 1, 2, "after fail-over").await;

    // --- A third access node joins without restarting the others.
    stage("A third access node joins without restarting the others");
    let cfg_c = access_config(
        d,
        "im_c",
        &acc[2],
        router,
        &new_stores,
        &redis_url,
        &mysql_url,
    );
    let _im_c = Proc::spawn("im_c", d, &["im", "--config", cfg_c.to_str().unwrap()]);
    wait_healthy("im_c", acc[2].http, d).await;
    let mut u5 = login(&mut con, acc[2].tcp, 5).await;
    eventually_delivered(&mut u1, &mut u5, 1, 5, "to the new node").await;

    // The router answers online status.
    stage("The router answers online status");
    let (st, body) = http(router_http, "GET", "/online?appid=7&uid=5", &[], b"").await;
    assert_eq!(st, 200);
    assert!(body.contains("true"), "{body}");

    // Every line of an access node's log names the node.
    let log = std::fs::read_to_string(d.join("im_a.log")).unwrap();
    assert!(
        log.lines()
            .filter(|l| !l.trim().is_empty())
            .all(|l| l.starts_with("node=im_a ")),
        "node ids in logs"
    );
}
