//! The ims role: configuration (documented default file, unknown keys, all errors at once) and
//! two nodes started with `run` — a leader and a follower — with the HTTP API: health, metrics,
//! summary, and promotion after which the old follower accepts appends whose sync keys continue
//! the leader's queues above every key the leader handed out; the API's bearer secret and its
//! loopback-only rule without one.
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::time::Duration;

use cluster::store_client::{StorePool, StorePoolOptions};
use common::*;
use ims::service::{
    default_toml, run, PromoteError, ReplicationMode, StoreNodeConfig, StoreNodeError,
};
use store::{DurabilityMode, QueueId, Role, StoreSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

#[test]
fn default_toml_parses_to_the_default_config() {
    let parsed = StoreNodeConfig::from_toml(default_toml()).unwrap();
    assert_eq!(parsed, StoreNodeConfig::default());
    assert!(parsed.validate().is_ok());
    assert_eq!(
        StoreNodeConfig::from_toml("").unwrap(),
        StoreNodeConfig::default()
    );
    let err = StoreNodeConfig::from_toml("listne = \"x\"").unwrap_err();
    assert!(err.contains("listne"), "{err}");
    let sync =
        StoreNodeConfig::from_toml("replication_mode = \"sync\"\nfollow = \"10.0.0.1:13334\"")
            .unwrap();
    assert_eq!(sync.replication_mode, ReplicationMode::Sync);
    assert_eq!(sync.store_options().role, Role::Follower);
    assert!(StoreNodeConfig::from_toml("replication_mode = \"semi\"").is_err());
    let err = StoreNodeConfig::from_toml("[store]\ndurability = \"sometimes\"").unwrap_err();
    assert!(err.contains("durability"), "{err}");
    let bad = StoreNodeConfig {
        store: StoreSettings {
            durability: DurabilityMode::Interval,
            fsync_interval_ms: 0,
            ..StoreSettings::default()
        },
        max_frame_mb: 0,
        listen: String::new(),
        ..StoreNodeConfig::default()
    };
    let err = bad.validate().unwrap_err();
    assert!(
        err.contains("store.fsync_interval_ms")
            && err.contains("max_frame_mb")
            && err.contains("listen"),
        "{err}"
    );
}

fn node_config(dir: &std::path::Path, follow: String) -> StoreNodeConfig {
    StoreNodeConfig {
        data_dir: dir.to_path_buf(),
        listen: "127.0.0.1:0".into(),
        replication_listen: "127.0.0.1:0".into(),
        http_listen: "127.0.0.1:0".into(),
        follow,
        store: StoreSettings {
            durability: DurabilityMode::None,
            segment_mb: 1,
            cache_mb: 1,
            ..StoreSettings::default()
        },
        replication_heartbeat_ms: 100,
        replication_idle_timeout_ms: 2000,
        ..StoreNodeConfig::default()
    }
}

/// A minimal HTTP/1.1 client: (status, body).
async fn http(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    http_auth(addr, method, path, None).await
}

/// [`http`] with an `Authorization` header value.
async fn http_auth(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    authorization: Option<&str>,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\n{auth}Connection: close\r\nContent-Length: 0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotion_over_http_turns_the_follower_into_a_leader_that_continues_the_keys() {
    let dl = tempfile::tempdir().unwrap();
    let df = tempfile::tempdir().unwrap();
    let lt = CancellationToken::new();
    let leader = run(node_config(dl.path(), String::new()), lt.clone())
        .await
        .unwrap();
    let leader_repl = leader.replication_addr.unwrap();
    let ft = CancellationToken::new();
    let follower = run(node_config(df.path(), leader_repl.to_string()), ft.clone())
        .await
        .unwrap();
    assert_eq!(leader.role(), Role::Leader);
    assert_eq!(follower.role(), Role::Follower);

    let to_leader = StorePool::new(leader.listen_addr.to_string(), StorePoolOptions::default());
    let to_follower = StorePool::new(
        follower.listen_addr.to_string(),
        StorePoolOptions::default(),
    );
    let q = QueueId::user(1, 42);
    let g = QueueId::group(1, 7);
    let mut last = None;
    for i in 0..50 {
        last = Some(
            to_leader
                .append(vec![msg(&[q, g], &format!("before {i}"))])
                .await
                .unwrap(),
        );
    }
    let last = last.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || follower.store.log_end()
            == leader.store.log_end())
        .await
    );
    // the follower serves reads of what it replicated and refuses appends
    assert_eq!(to_follower.last_key(q).await.unwrap(), last[0][0].key);
    assert!(to_follower.append(vec![msg(&[q], "nope")]).await.is_err());

    let lh = leader.http_addr.unwrap();
    let fh = follower.http_addr.unwrap();
    assert_eq!(http(lh, "GET", "/healthz").await.0, 200);
    let (code, summary) = http(fh, "GET", "/summary").await;
    assert_eq!(code, 200);
    let summary: serde_json::Value = serde_json::from_str(&summary).unwrap();
    assert_eq!(summary["role"], "follower");
    assert_eq!(summary["log_end"], leader.store.log_end());
    assert_eq!(summary["following"]["leader"], leader_repl.to_string());
    let (code, metrics) = http(lh, "GET", "/metrics").await;
    assert_eq!(code, 200);
    assert!(metrics.contains("banter_ims_leader 1"), "{metrics}");
    assert!(metrics.contains("banter_ims_appends_total 50"), "{metrics}");
    assert!(
        metrics.contains("banter_ims_replication_followers 1"),
        "{metrics}"
    );
    assert!(
        eventually(Duration::from_secs(5), || leader
            .metrics_text()
            .contains("banter_ims_replication_lag_bytes 0"))
        .await
    );
    let (_, fm) = http(fh, "GET", "/metrics").await;
    assert!(fm.contains("banter_ims_leader 0"), "{fm}");
    assert!(fm.contains("banter_ims_replication_connected 1"), "{fm}");

    // a leader refuses promotion
    let (code, body) = http(lh, "POST", "/promote").await;
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("already a leader"), "{body}");
    assert_eq!(leader.promote().await, Err(PromoteError::AlreadyLeader));

    // fail-over: stop the leader, promote the follower
    lt.cancel();
    leader.wait().await.unwrap();
    let (code, body) = http(fh, "POST", "/promote").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"leader\""), "{body}");
    assert_eq!(follower.role(), Role::Leader);
    let r = to_follower
        .append(vec![msg(&[q, g], "after promotion")])
        .await
        .unwrap();
    assert_eq!(r[0][0].prev_key, last[0][0].key, "personal queue continues");
    assert_eq!(r[0][1].prev_key, last[0][1].key, "group queue continues");
    assert!(r[0][0].key > last[0][0].key);
    let page = to_follower.sync(q, last[0][0].key, 10).await.unwrap();
    assert_eq!(page.messages.len(), 1);
    assert_eq!(page.messages[0].body, "after promotion".as_bytes());
    assert_eq!(http(fh, "POST", "/promote").await.0, 409);
    assert!(follower.metrics_text().contains("banter_ims_leader 1"));
    ft.cancel();
    follower.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_errors_are_reported() {
    let d = tempfile::tempdir().unwrap();
    let t = CancellationToken::new();
    let a = run(node_config(d.path(), String::new()), t.clone())
        .await
        .unwrap();
    // same directory: locked
    let d2 = tempfile::tempdir().unwrap();
    let err = run(node_config(d.path(), String::new()), t.clone())
        .await
        .err()
        .unwrap();
    assert!(matches!(err, StoreNodeError::Open { .. }), "{err}");
    // same port: bind error naming the listener
    let mut c = node_config(d2.path(), String::new());
    c.listen = a.listen_addr.to_string();
    let err = run(c, t.clone()).await.err().unwrap();
    assert!(
        matches!(
            err,
            StoreNodeError::Bind {
                what: "store link",
                ..
            }
        ),
        "{err}"
    );
    let err = run(
        StoreNodeConfig {
            store: StoreSettings {
                durability: DurabilityMode::Interval,
                fsync_interval_ms: 0,
                ..StoreSettings::default()
            },
            ..node_config(d2.path(), String::new())
        },
        t.clone(),
    )
    .await
    .err()
    .unwrap();
    assert!(matches!(err, StoreNodeError::Config(_)), "{err}");
    t.cancel();
    a.wait().await.unwrap();
}

#[test]
fn frames_must_hold_the_largest_record() {
    let big = StoreSettings {
        max_body_bytes: 60 << 20,
        ..StoreSettings::default()
    };
    let c = StoreNodeConfig {
        store: big.clone(),
        ..StoreNodeConfig::default()
    };
    let err = c.validate().unwrap_err();
    assert!(
        err.contains("replication_max_frame_mb") && err.contains("max_frame_mb (16)"),
        "{err}"
    );
    let ok = StoreNodeConfig {
        store: big,
        max_frame_mb: 64,
        replication_max_frame_mb: 128,
        ..StoreNodeConfig::default()
    };
    assert!(ok.validate().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_needs_the_secret_and_without_one_listens_only_on_loopback() {
    let d = tempfile::tempdir().unwrap();
    let t = CancellationToken::new();
    // No secret on a non-loopback address: refused at start-up, before anything runs.
    let err = run(
        StoreNodeConfig {
            http_listen: "0.0.0.0:0".into(),
            ..node_config(d.path(), String::new())
        },
        t.clone(),
    )
    .await
    .err()
    .unwrap();
    assert!(
        matches!(&err, StoreNodeError::Config(m) if m.contains("http_secret") && m.contains("0.0.0.0:0")),
        "{err}"
    );
    // With a secret it may listen anywhere (here a follower of a leader that never answers).
    let secret = "s3cret-promote";
    let follower = run(
        StoreNodeConfig {
            http_listen: "0.0.0.0:0".into(),
            http_secret: secret.into(),
            ..node_config(d.path(), "127.0.0.1:9".into())
        },
        t.clone(),
    )
    .await
    .unwrap();
    let h = std::net::SocketAddr::from(([127, 0, 0, 1], follower.http_addr.unwrap().port()));
    // /healthz stays open for health checks; everything else needs the secret.
    assert_eq!(http(h, "GET", "/healthz").await.0, 200);
    assert_eq!(http(h, "GET", "/metrics").await.0, 401);
    let (code, body) = http(h, "POST", "/promote").await;
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("Authorization"), "{body}");
    let wrong = http_auth(h, "POST", "/promote", Some("Bearer not-the-secret")).await;
    assert_eq!(wrong.0, 401);
    let basic = http_auth(h, "POST", "/promote", Some(&format!("Basic {secret}"))).await;
    assert_eq!(basic.0, 401);
    assert_eq!(follower.role(), Role::Follower, "nothing was promoted");
    let auth = format!("BEARER {secret}");
    assert_eq!(http_auth(h, "GET", "/summary", Some(&auth)).await.0, 200);
    // the scheme is case-insensitive
    let (code, body) = http_auth(h, "POST", "/promote", Some(&format!("bearer {secret}"))).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(follower.role(), Role::Leader);
    t.cancel();
    follower.wait().await.unwrap();
}
