//! `/metrics` of every role, read with a Prometheus text-format parser: histograms (message latency,
//! sync sizes, HTTP durations; store appends; router writes), process metrics, build info, and the
//! store's figures (fsync and batch histograms, segments, bytes) wherever a store runs: the
//! embedded one in single-node mode and the store node's.
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use prometheus_parse::{Sample, Scrape, Value};

async fn scrape(addr: SocketAddr) -> Scrape {
    let (status, text) = http(addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(status, 200, "{text}");
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("valid Prometheus text")
}

fn find<'a>(s: &'a Scrape, name: &str) -> Vec<&'a Sample> {
    s.samples.iter().filter(|x| x.metric == name).collect()
}

fn histogram_count(s: &Scrape, name: &str) -> u64 {
    let samples = find(s, name);
    assert!(!samples.is_empty(), "no histogram {name}");
    samples
        .iter()
        .map(|x| match &x.value {
            Value::Histogram(buckets) => buckets.last().map_or(0, |b| b.count as u64),
            other => panic!("{name} is not a histogram: {other:?}"),
        })
        .sum()
}

/// The metric names the Grafana dashboard (`docs/grafana/banter-dashboard.json`) queries.
fn dashboard_metrics() -> Vec<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/grafana/banter-dashboard.json"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut names = HashSet::new();
    for panel in v["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("banter_") || word.starts_with("process_") {
                    let base = ["_bucket", "_count", "_sum"]
                        .iter()
                        .find_map(|s| word.strip_suffix(s))
                        .unwrap_or(word);
                    names.insert(base.to_string());
                }
            }
        }
    }
    let mut names: Vec<String> = names.into_iter().collect();
    names.sort();
    names
}

/// Every dashboard metric with `prefix` (and not starting with one of `except`) is in `s`.
fn dashboard_covered(s: &Scrape, prefix: &str, except: &[&str]) {
    let have: HashSet<&str> = s.samples.iter().map(|x| x.metric.as_str()).collect();
    let wanted: Vec<String> = dashboard_metrics()
        .into_iter()
        .filter(|n| n.starts_with(prefix) && !except.iter().any(|e| n.starts_with(e)))
        .collect();
    assert!(!wanted.is_empty());
    for n in wanted {
        assert!(
            have.contains(n.as_str()),
            "dashboard metric {n} is not exported"
        );
    }
}

fn common_checks(s: &Scrape, role: &str) {
    let info = find(s, "banter_build_info");
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].labels.get("role"), Some(role));
    assert_eq!(
        info[0].labels.get("version"),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert!(!find(s, "process_resident_memory_bytes").is_empty());
    assert!(!find(s, "process_open_fds").is_empty());
    // Every metric has exactly one TYPE (one registry per node).
    let names: HashSet<&str> = s.samples.iter().map(|x| x.metric.as_str()).collect();
    assert!(names.len() > 10);
}

#[tokio::test]
async fn single_node_metrics_have_histograms_and_store_figures() {
    let s = TestServer::start().await.unwrap();
    let mut a = Client::login(&s, 1, 2, false, "a").await;
    let mut b = Client::login(&s, 2, 2, false, "b").await;
    a.send_im(1, 2, "hello").await;
    b.recv_until(proto::cmd::IM).await;
    b.sync(0).await;
    let sc = scrape(s.http).await;
    common_checks(&sc, "access");
    assert!(histogram_count(&sc, "banter_message_durable_seconds") >= 1);
    assert!(histogram_count(&sc, "banter_message_delivered_seconds") >= 1);
    assert!(histogram_count(&sc, "banter_sync_messages") >= 1);
    let http = find(&sc, "banter_http_request_duration_seconds");
    assert!(
        http.iter()
            .any(|x| x.labels.get("route") == Some("/auth/grant")
                && x.labels.get("status") == Some("200")
                && x.labels.get("method") == Some("POST")),
        "{http:?}"
    );
    let fsyncs = find(&sc, "banter_store_fsyncs_total");
    match fsyncs.first().map(|x| &x.value) {
        Some(Value::Counter(v)) => assert!(*v >= 1.0),
        other => panic!("banter_store_fsyncs_total: {other:?}"),
    }
    assert!(!find(&sc, "banter_store_segments").is_empty());
    assert!(histogram_count(&sc, "banter_store_fsync_seconds") >= 1);
    assert!(histogram_count(&sc, "banter_store_batch_messages") >= 1);
    assert!(histogram_count(&sc, "banter_store_batch_bytes") >= 1);
    assert!(!find(&sc, "banter_write_behind_dropped_total").is_empty());
    assert!(!find(&sc, "banter_client_closes_total").is_empty());
    dashboard_covered(&sc, "banter_", &["banter_ims_", "banter_route_"]);
    dashboard_covered(&sc, "process_", &[]);

    // Unknown paths share one label value: the label set stays bounded.
    for i in 0..5 {
        http_get(s.http, &format!("/no/such/{i}")).await;
    }
    let sc = scrape(s.http).await;
    let unmatched: Vec<_> = find(&sc, "banter_http_request_duration_seconds")
        .into_iter()
        .filter(|x| x.labels.get("route") == Some("unmatched"))
        .collect();
    assert_eq!(unmatched.len(), 1, "{unmatched:?}");
    s.stop().await;
}

async fn http_get(addr: SocketAddr, path: &str) -> u16 {
    http(addr, "GET", path, &[], b"").await.0
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[&str], env: &[(&str, String)]) -> Killed {
    let mut c = Command::new(env!("CARGO_BIN_EXE_banter"));
    c.args(args).stdout(Stdio::null()).stderr(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("BANTER_") {
            c.env_remove(k);
        }
    }
    for (k, v) in env {
        c.env(k, v);
    }
    Killed(c.spawn().expect("spawn banter"))
}

async fn wait_http(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "{addr} never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn router_and_store_node_metrics_have_histograms() {
    let dir = tempfile::tempdir().unwrap();
    let (store, store_http) = (free_port(), free_port());
    let _ims = spawn(
        &["ims"],
        &[
            ("BANTER_DATA_DIR", dir.path().display().to_string()),
            ("BANTER_LISTEN", format!("127.0.0.1:{store}")),
            ("BANTER_REPLICATION_LISTEN", String::new()),
            ("BANTER_HTTP_LISTEN", format!("127.0.0.1:{store_http}")),
        ],
    );
    let (route, route_http) = (free_port(), free_port());
    let _imr = spawn(
        &["imr"],
        &[
            ("BANTER_LISTEN", format!("127.0.0.1:{route}")),
            ("BANTER_HTTP_LISTEN", format!("127.0.0.1:{route_http}")),
        ],
    );
    let store_http: SocketAddr = format!("127.0.0.1:{store_http}").parse().unwrap();
    let route_http: SocketAddr = format!("127.0.0.1:{route_http}").parse().unwrap();
    wait_http(store_http).await;
    wait_http(route_http).await;

    // An access node using both, so both see traffic.
    let data = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(|c| {
        c.data.dir = data.path().to_path_buf();
        c.cluster.storage_addrs = vec![format!("127.0.0.1:{store}")];
        c.cluster.route_addrs = vec![format!("127.0.0.1:{route}")];
    })
    .await
    .unwrap();
    let mut a = Client::login(&s, 1, 2, false, "a").await;
    let mut b = Client::login(&s, 2, 2, false, "b").await;
    a.send_im(1, 2, "hello").await;
    b.recv_until(proto::cmd::IM).await;

    let sc = scrape(store_http).await;
    common_checks(&sc, "store");
    assert!(histogram_count(&sc, "banter_ims_append_seconds") >= 1);
    assert!(histogram_count(&sc, "banter_ims_append_messages") >= 1);
    assert!(!find(&sc, "banter_ims_fsyncs_total").is_empty());
    // The store's own figures, as in single-node mode.
    assert!(histogram_count(&sc, "banter_store_fsync_seconds") >= 1);
    assert!(histogram_count(&sc, "banter_store_batch_messages") >= 1);
    assert!(histogram_count(&sc, "banter_store_batch_bytes") >= 1);
    assert!(!find(&sc, "banter_store_segments").is_empty());
    assert!(!find(&sc, "banter_store_log_bytes").is_empty());
    dashboard_covered(&sc, "banter_ims_", &[]);

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let sc = scrape(route_http).await;
        common_checks(&sc, "router");
        let kinds = find(&sc, "banter_route_publish_in_total");
        assert!(kinds.iter().any(|x| x.labels.get("kind") == Some("user")));
        // Registered at start (a lone access node gets no forwarded writes, so it may be empty).
        if !find(&sc, "banter_route_write_seconds").is_empty() {
            dashboard_covered(&sc, "banter_route_", &[]);
            break;
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.stop().await;
}
