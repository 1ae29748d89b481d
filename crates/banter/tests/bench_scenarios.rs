//! `banter bench` scenarios run briefly against a real server: an in-process `TestServer` (durability
//! `always`) or the `banter` binary started as a child process. They check the report's JSON fields and
//! the exactly-once accounting, including runs with a deliberately withheld or duplicated message, which
//! must fail.
#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::time::Duration;

use banter::testing::TestServer;
use bench::api::BaseUrl;
use bench::client::Endpoint;
use bench::env::Env;
use bench::scenario::connections::ConnectionsOptions;
use bench::scenario::group::GroupOptions;
use bench::scenario::peer::PeerOptions;
use bench::scenario::room::RoomOptions;
use bench::scenario::Fault;
use bench::server::{ChildOptions, ChildServer, MemorySource};
use bench::tokens::TokenSource;
use bench::Report;

fn env_for(s: &TestServer, ws: bool) -> Env {
    let endpoint = if ws {
        Endpoint::Ws {
            addr: s.ws,
            url: s.ws_url(),
        }
    } else {
        Endpoint::Tcp(s.tcp)
    };
    let base = BaseUrl::from_addr(s.http);
    let mut env = Env::new(
        endpoint,
        TokenSource::Http {
            base: base.clone(),
            secret: None,
        },
    );
    env.api = Some((base, None));
    env.duration = Duration::from_secs(60);
    // Longer than the clients' 4 s sync retry, so a sync the server drops shows up late, not lost.
    env.drain_timeout = Duration::from_secs(8);
    env
}

fn json_of(r: &Report) -> serde_json::Value {
    let line = r.json_line();
    assert!(!line.contains('\n'), "one line: {line}");
    serde_json::from_str(&line).expect("the JSON line parses")
}

fn assert_message_fields(v: &serde_json::Value) {
    for k in [
        "scenario",
        "params",
        "messages_per_sec",
        "deliveries_per_sec",
        "p50_ms",
        "p99_ms",
        "p999_ms",
        "lost",
        "duplicated",
    ] {
        assert!(v.get(k).is_some(), "missing {k} in {v}");
    }
}

async fn peer_clean_run(ws: bool, version: u8) {
    let s = TestServer::start().await.unwrap();
    let mut env = env_for(&s, ws);
    env.client.version = version;
    let o = PeerOptions {
        pairs: 4,
        messages: 300,
        window: 16,
        ..PeerOptions::default()
    };
    let r = bench::scenario::peer::run(&env, &o).await.unwrap();
    let v = json_of(&r);
    assert!(r.ok, "{}", r.summary());
    assert_message_fields(&v);
    assert_eq!(v["scenario"], "peer");
    assert_eq!(v["transport"], if ws { "ws" } else { "tcp" });
    assert_eq!(v["params"]["pairs"], 4);
    assert_eq!(v["lost"], 0);
    assert_eq!(v["duplicated"], 0);
    assert_eq!(v["out_of_order"], 0);
    assert_eq!(v["deliveries"], 1200);
    assert_eq!(v["messages_sent"], 1200);
    assert_eq!(v["messages_acked"], 1200);
    assert!(v["messages_per_sec"].as_f64().unwrap() > 0.0);
    let m = r.messages.as_ref().unwrap();
    assert!(m.p50_ms <= m.p99_ms && m.p99_ms <= m.p999_ms && m.p999_ms <= m.max_ms);
    assert_eq!(m.via_push + m.via_sync, 1200);
    // The SVG of the run is well formed.
    let svg = bench::svg::render(&r);
    assert!(svg.contains("<polyline"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_exactly_once_over_tcp_v2() {
    peer_clean_run(false, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_exactly_once_over_websocket_v1() {
    peer_clean_run(true, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_at_a_target_rate() {
    let s = TestServer::start().await.unwrap();
    let env = env_for(&s, false);
    let o = PeerOptions {
        pairs: 2,
        messages: 200,
        rate: Some(400.0),
        ..PeerOptions::default()
    };
    let r = bench::scenario::peer::run(&env, &o).await.unwrap();
    assert!(r.ok, "{}", r.summary());
    // 400 messages at 400/s take about a second.
    assert!(r.duration_secs > 0.8, "{}", r.duration_secs);
    assert_eq!(r.messages.as_ref().unwrap().deliveries, 400);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_withheld_message_fails_the_run() {
    let s = TestServer::start().await.unwrap();
    let mut env = env_for(&s, false);
    env.drain_timeout = Duration::from_secs(1);
    let o = PeerOptions {
        pairs: 2,
        messages: 50,
        fault: Some(Fault::Withhold { n: 17 }),
        ..PeerOptions::default()
    };
    let r = bench::scenario::peer::run(&env, &o).await.unwrap();
    let v = json_of(&r);
    assert!(!r.ok, "a withheld message must fail the run");
    assert_eq!(v["ok"], false);
    assert_eq!(v["lost"], 1);
    assert_eq!(v["duplicated"], 0);
    assert_eq!(v["deliveries"], 99);
    assert!(
        r.failures.iter().any(|f| f.contains("lost")),
        "{:?}",
        r.failures
    );
    assert!(
        r.summary().contains("[17]"),
        "the summary names the missing message: {}",
        r.summary()
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_duplicated_message_fails_the_run() {
    let s = TestServer::start().await.unwrap();
    let mut env = env_for(&s, false);
    env.drain_timeout = Duration::from_secs(1);
    let o = PeerOptions {
        pairs: 1,
        messages: 30,
        fault: Some(Fault::Duplicate { n: 5 }),
        ..PeerOptions::default()
    };
    let r = bench::scenario::peer::run(&env, &o).await.unwrap();
    let v = json_of(&r);
    assert!(!r.ok);
    assert_eq!(v["duplicated"], 1);
    assert_eq!(v["lost"], 0);
    assert!(
        r.failures.iter().any(|f| f.contains("duplicated")),
        "{:?}",
        r.failures
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_fan_out_counts_every_delivery() {
    let s = TestServer::start().await.unwrap();
    let env = env_for(&s, false);
    let o = RoomOptions {
        rooms: 2,
        members: 6,
        senders: 2,
        messages: 100,
        window: 8,
        ..RoomOptions::default()
    };
    let r = bench::scenario::room::run(&env, &o).await.unwrap();
    let v = json_of(&r);
    assert!(r.ok, "{}", r.summary());
    assert_message_fields(&v);
    assert_eq!(v["scenario"], "room");
    // 2 rooms × 2 senders × 100 messages, each to the 5 other members.
    assert_eq!(v["messages_sent"], 400);
    assert_eq!(v["deliveries_expected"], 2000);
    assert_eq!(v["deliveries"], 2000);
    assert_eq!(v["lost"], 0);
    assert_eq!(v["duplicated"], 0);
    let m = r.messages.as_ref().unwrap();
    assert!((m.deliveries_per_sec / m.messages_per_sec - 5.0).abs() < 1e-6);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_duplicate_fails_but_loss_alone_does_not() {
    let s = TestServer::start().await.unwrap();
    let mut env = env_for(&s, false);
    env.drain_timeout = Duration::from_secs(1);
    let dup = RoomOptions {
        rooms: 1,
        members: 3,
        senders: 1,
        messages: 20,
        fault: Some(Fault::Duplicate { n: 4 }),
        ..RoomOptions::default()
    };
    let r = bench::scenario::room::run(&env, &dup).await.unwrap();
    assert!(!r.ok);
    assert_eq!(
        json_of(&r)["duplicated"],
        2,
        "both receivers saw message 4 twice"
    );
    // A withheld room message is counted as lost, but rooms promise no delivery: the run passes.
    let lossy = RoomOptions {
        fault: Some(Fault::Withhold { n: 4 }),
        ..dup
    };
    let r = bench::scenario::room::run(&env, &lossy).await.unwrap();
    assert!(r.ok, "{}", r.summary());
    assert_eq!(json_of(&r)["lost"], 2);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_held_and_measured() {
    let s = TestServer::start().await.unwrap();
    let mut env = env_for(&s, false);
    env.memory = Some(MemorySource::Summary {
        base: BaseUrl::from_addr(s.http),
        path: "/summary".into(),
        secret: None,
    });
    env.client.ping_interval = Duration::from_millis(300);
    let o = ConnectionsOptions {
        connections: 60,
        rate: None,
        hold: Duration::from_millis(1200),
        settle: Duration::from_millis(200),
    };
    let r = bench::scenario::connections::run(&env, &o).await.unwrap();
    let v = json_of(&r);
    assert!(r.ok, "{}", r.summary());
    assert_eq!(v["scenario"], "connections");
    assert_eq!(v["connections"], 60);
    assert_eq!(v["failed_connections"], 0);
    assert_eq!(v["dropped_connections"], 0);
    assert!(v["server_rss_bytes"].as_u64().unwrap() > 0, "{v}");
    assert!(
        v.get("bytes_per_connection").is_some_and(|b| b.is_number()),
        "{v}"
    );
    assert!(v["connect_per_sec"].as_f64().unwrap() > 0.0);
    // Heartbeats were sent and answered.
    assert!(v["pings"].as_u64().unwrap() >= 60, "{v}");
    assert!(v["pongs"].as_u64().unwrap() >= 60, "{v}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_fail_to_connect() {
    let s = TestServer::start().await.unwrap();
    let env = env_for(&s, false);
    let mut opts = env.connect_options(0, 5, "no-such-token".into());
    opts.connect_timeout = Duration::from_secs(5);
    match bench::Client::connect(&opts).await {
        Err(bench::ClientError::AuthRefused(1)) => {}
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a bad token must be refused"),
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_server_from_the_binary() {
    let mut opts = ChildOptions::new(env!("CARGO_BIN_EXE_banter").into());
    opts.durability = "always".into();
    let child = ChildServer::start(&opts)
        .await
        .expect("banter serve starts");
    let base = BaseUrl::from_addr(child.http);
    let mut env = Env::new(
        Endpoint::Tcp(child.tcp),
        TokenSource::Http {
            base: base.clone(),
            secret: None,
        },
    );
    env.memory = Some(MemorySource::Pid(child.pid));
    env.drain_timeout = Duration::from_secs(3);
    let r = bench::scenario::peer::run(
        &env,
        &PeerOptions {
            pairs: 2,
            messages: 100,
            ..PeerOptions::default()
        },
    )
    .await;
    let pid = child.pid;
    child.stop(Duration::from_secs(10)).await;
    let r = r.unwrap();
    assert!(r.ok, "{}", r.summary());
    assert_eq!(r.messages.as_ref().unwrap().deliveries, 200);
    assert!(
        bench::server::rss_of_pid(pid).is_none(),
        "the child is gone"
    );
}

/// Runs `banter bench ARGS…` and returns (success, stdout).
async fn banter_bench(args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_banter"))
        .arg("bench")
        .args(args)
        .env_remove("BANTER_BIN")
        .stdin(std::process::Stdio::null())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out)
        .await
        .expect("banter bench finishes")
        .expect("banter runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn last_json(stdout: &str) -> serde_json::Value {
    let line = stdout.lines().last().expect("some output");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("last line is not JSON ({e}): {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_peer_run_with_a_child_server_and_report() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report");
    let (ok, stdout) = banter_bench(&[
        "peer",
        "--pairs",
        "3",
        "--messages",
        "100",
        "--json",
        "--quiet",
        "--report",
        report.to_str().unwrap(),
    ])
    .await;
    assert!(ok, "{stdout}");
    assert!(stdout.contains("banter bench peer — OK"), "{stdout}");
    let v = last_json(&stdout);
    assert_message_fields(&v);
    assert_eq!(v["deliveries"], 300);
    assert_eq!(v["lost"], 0);
    let svg = std::fs::read_to_string(report.join("peer.svg")).unwrap();
    assert!(svg.starts_with("<?xml") && svg.contains("</svg>"));
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report.join("peer.json")).unwrap()).unwrap();
    assert_eq!(saved["deliveries"], 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_exits_non_zero_when_a_message_is_withheld() {
    let (ok, stdout) = banter_bench(&[
        "peer",
        "--pairs",
        "1",
        "--messages",
        "20",
        "--withhold",
        "3",
        "--drain-timeout",
        "1s",
        "--json",
        "--quiet",
    ])
    .await;
    assert!(!ok, "a lost message must make banter bench fail: {stdout}");
    let v = last_json(&stdout);
    assert_eq!(v["ok"], false);
    assert_eq!(v["lost"], 1);
    assert!(stdout.contains("missing from sender"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_connections_against_a_running_server() {
    let s = TestServer::start().await.unwrap();
    let addr = s.tcp.to_string();
    let http = s.http_url();
    let (ok, stdout) = banter_bench(&[
        "connections",
        "--connections",
        "40",
        "--hold",
        "500ms",
        "--settle",
        "100ms",
        "--addr",
        &addr,
        "--http",
        &http,
        "--json",
        "--quiet",
    ])
    .await;
    assert!(ok, "{stdout}");
    let v = last_json(&stdout);
    assert_eq!(v["connections"], 40);
    // Memory comes from the server's /summary (rss_bytes).
    assert!(v["server_rss_bytes"].as_u64().unwrap() > 0, "{v}");
    assert!(v["bytes_per_connection"].is_number(), "{v}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_with_gobelieve_tokens_in_redis() {
    let redis_server = testkit::RedisServer::start();
    let url = redis_server.url();
    let server_url = url.clone();
    let s = TestServer::start_with(move |c| {
        c.auth.backend = banter::config::AuthBackend::Redis;
        c.auth.redis_url = server_url;
    })
    .await
    .unwrap();
    let mut env = env_for(&s, false);
    env.tokens = TokenSource::Redis { url: url.clone() };
    let r = bench::scenario::peer::run(
        &env,
        &PeerOptions {
            pairs: 2,
            messages: 100,
            ..PeerOptions::default()
        },
    )
    .await
    .unwrap();
    assert!(r.ok, "{}", r.summary());
    assert_eq!(r.messages.as_ref().unwrap().deliveries, 200);
    // The tokens were written the way GoBelieve's API server writes them.
    let client = redis::Client::open(url).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let uid = env.uid_base;
    let token: String = redis::cmd("HGET")
        .arg(format!("users_{}_{uid}", env.appid))
        .arg("access_token")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(token.len(), 30);
    let (user_id, app_id): (i64, i64) = redis::cmd("HMGET")
        .arg(format!("access_token_{token}"))
        .arg("user_id")
        .arg("app_id")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!((user_id, app_id), (uid, env.appid));
    s.stop().await;
}

async fn group_run(super_group: bool) {
    let s = TestServer::start().await.unwrap();
    let env = env_for(&s, false);
    let o = GroupOptions {
        groups: 2,
        members: 8,
        senders: 3,
        messages: 60,
        super_group,
        window: 8,
        ..GroupOptions::default()
    };
    let r = bench::scenario::group::run(&env, &o).await.unwrap();
    let v = json_of(&r);
    assert!(r.ok, "{}", r.summary());
    assert_message_fields(&v);
    assert_eq!(v["scenario"], "group");
    assert_eq!(v["params"]["super_group"], super_group);
    // 2 groups × 3 senders × 60 messages, each to the 7 other members.
    assert_eq!(v["messages_sent"], 360);
    assert_eq!(v["deliveries_expected"], 2520);
    assert_eq!(v["deliveries"], 2520);
    assert_eq!(v["lost"], 0);
    assert_eq!(v["duplicated"], 0);
    assert_eq!(v["out_of_order"], 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normal_group_exactly_once() {
    group_run(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn super_group_exactly_once() {
    group_run(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_withheld_message_fails_the_run() {
    let s = TestServer::start().await.unwrap();
    let mut env = env_for(&s, false);
    env.drain_timeout = Duration::from_secs(1);
    let o = GroupOptions {
        groups: 1,
        members: 4,
        senders: 1,
        messages: 20,
        super_group: true,
        fault: Some(Fault::Withhold { n: 9 }),
        ..GroupOptions::default()
    };
    let r = bench::scenario::group::run(&env, &o).await.unwrap();
    assert!(!r.ok);
    assert_eq!(
        json_of(&r)["lost"],
        3,
        "each of the 3 receivers misses message 9"
    );
    s.stop().await;
}

#[tokio::test]
async fn media_uploads_and_downloads_every_byte() {
    let s = TestServer::start().await.unwrap();
    let env = env_for(&s, false);
    let o = bench::scenario::media::MediaOptions {
        clients: 4,
        images: 12,
        image_size: 20_000,
        voices: 6,
        voice_size: 50_000,
        prefix: "/v2".into(),
    };
    let r = bench::scenario::media::run(&env, &o).await.unwrap();
    assert!(r.ok, "{:?}", r.failures);
    let v = json_of(&r);
    for phase in [
        "image_upload",
        "image_download",
        "voice_upload",
        "voice_download",
    ] {
        assert!(
            v[phase]["ops_per_sec"].as_f64().is_some_and(|x| x > 0.0),
            "{v}"
        );
        assert!(
            v[phase]["mib_per_sec"].as_f64().is_some_and(|x| x > 0.0),
            "{v}"
        );
        assert_eq!(v[phase]["failed"], 0, "{v}");
    }
    assert_eq!(v["image_upload"]["ops"], 12);
    assert_eq!(v["voice_download"]["ops"], 6);
    assert_eq!(v["voice_download"]["bytes"], 6 * 50_000);
    // A server that refuses the uploads fails the run.
    let refusing = TestServer::start_with(|c| c.media.max_image_bytes = 1024)
        .await
        .unwrap();
    let r = bench::scenario::media::run(&env_for(&refusing, false), &o)
        .await
        .unwrap();
    assert!(!r.ok);
    assert!(
        r.failures.iter().any(|f| f.contains("413")),
        "{:?}",
        r.failures
    );
    s.stop().await;
    refusing.stop().await;
}
