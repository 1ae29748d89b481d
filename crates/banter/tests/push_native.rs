//! Offline push through banter's own APNs and FCM senders, end to end: IM sessions over TCP, the
//! local APNs/FCM stand-in (`push::mock`: HTTP/2 over TLS, verifying the ES256 provider token, the
//! OAuth2 grant and the FCM bearer), devices and do-not-disturb through the HTTP APIs.
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::time::{Duration, Instant};

use backend::PushProvider;
use common::*;
use proto::cmd;
use push::mock::{MockProvider, Reply};
use serde_json::json;

fn apns_token(uid: i64) -> String {
    format!("{:064x}", 0x5eed_0000 + uid)
}

async fn start(mock: &MockProvider, dir: &std::path::Path) -> TestServer {
    let (ca, apns, fcm) = mock.write_credentials(dir, "com.example.chat");
    TestServer::start_with(move |c| {
        c.push.backend = banter::config::PushBackend::Native;
        c.push.native.ca_file = ca;
        c.push.native.timeout_ms = 60_000;
        c.push.native.apps = vec![push::AppPush {
            appid: APPID,
            language: "en".into(),
            apns: Some(apns),
            fcm: Some(fcm),
        }];
    })
    .await
    .unwrap()
}

async fn bind(s: &TestServer, uid: i64) {
    let token = grant(s, uid).await;
    let (st, body) = http(
        s.http,
        "POST",
        "/v2/device/bind",
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("Content-Type", "application/json"),
        ],
        json!({"apns_device_token": apns_token(uid), "gcm_device_token": format!("fcm-{uid}")})
            .to_string()
            .as_bytes(),
    )
    .await;
    assert_eq!(st, 200, "{body}");
}

#[tokio::test]
async fn an_offline_receiver_gets_one_apns_and_one_fcm_push_and_an_online_one_none() {
    let dir = tempfile::tempdir().unwrap();
    let mock = MockProvider::start().await;
    let s = start(&mock, dir.path()).await;
    bind(&s, 2).await;
    bind(&s, 3).await;
    let mut a = Client::login(&s, 1, 2, false, "a").await;
    let mut c = Client::login(&s, 3, 2, false, "c").await;
    // 3 is online: the message is delivered, nothing is pushed.
    a.send_im(1, 3, r#"{"text":"you are online"}"#).await;
    a.recv_until(cmd::ACK).await;
    c.recv_until(cmd::IM).await;
    // 2 is offline.
    a.send_im(1, 2, r#"{"text":"wake up"}"#).await;
    a.recv_until(cmd::ACK).await;
    let apns = mock.wait_for("apns", 1, WAIT).await;
    let fcm = mock.wait_for("fcm", 1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        (mock.count("apns"), mock.count("fcm")),
        (1, 1),
        "exactly one push per device"
    );
    let r = &apns[0];
    assert!(r.authorized);
    assert_eq!(r.path, format!("/3/device/{}", apns_token(2)));
    assert_eq!(r.headers["apns-topic"], "com.example.chat");
    assert_eq!(r.body["aps"]["alert"]["title"], "user1");
    assert_eq!(r.body["aps"]["alert"]["body"], "wake up");
    assert_eq!(r.body["aps"]["badge"], 1);
    let f = &fcm[0];
    assert!(f.authorized);
    assert_eq!(f.body["message"]["token"], "fcm-2");
    assert_eq!(f.body["message"]["notification"]["body"], "wake up");
    assert_eq!(
        f.body["message"]["android"]["notification"]["notification_count"],
        1
    );
    s.stop().await;
}

#[tokio::test]
async fn do_not_disturb_from_the_sdk_endpoint_and_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let mock = MockProvider::start().await;
    let s = start(&mock, dir.path()).await;
    bind(&s, 2).await;
    let token = grant(&s, 2).await;
    let auth = format!("Bearer {token}");
    let (st, body) = http(
        s.http,
        "POST",
        "/v2/push/dnd",
        &[("Authorization", &auth)],
        br#"{"on": true}"#,
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let (st, body) = http(
        s.http,
        "GET",
        "/v2/push/dnd",
        &[("Authorization", &auth)],
        b"",
    )
    .await;
    assert_eq!(st, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v, json!({"user": true, "groups": []}));
    let (st, _) = http(
        s.http,
        "POST",
        "/v2/push/dnd",
        &[("Authorization", &auth)],
        br#"{"on": "yes"}"#,
    )
    .await;
    assert_eq!(st, 400, "a bad body is refused");
    let (st, _) = http(s.http, "POST", "/v2/push/dnd", &[], br#"{"on": true}"#).await;
    assert_eq!(st, 401);
    let mut a = Client::login(&s, 1, 2, false, "a").await;
    a.send_im(1, 2, r#"{"text":"shh"}"#).await;
    a.recv_until(cmd::ACK).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        mock.count("apns") + mock.count("fcm"),
        0,
        "nothing pushed under do-not-disturb"
    );
    // The operator turns it off again.
    let (st, _) = post_json(
        s.http,
        "/admin/push/dnd",
        &json!({"appid": APPID, "uid": 2, "on": false}),
    )
    .await;
    assert_eq!(st, 200);
    a.send_im(1, 2, r#"{"text":"now"}"#).await;
    a.recv_until(cmd::ACK).await;
    assert_eq!(mock.wait_for("apns", 1, WAIT).await.len(), 1);
    assert_eq!(mock.wait_for("fcm", 1, WAIT).await.len(), 1);
    s.stop().await;
}

/// `/metrics` of the node: counter `name` with `labels` (every other label ignored).
fn metric(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(v)))
        .map(|x| match &x.value {
            prometheus_parse::Value::Counter(v) => *v,
            other => panic!("{name} is not a counter: {other:?}"),
        })
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
    found[0]
}

/// The send-time histogram of `provider`: its buckets (upper bound, cumulative count).
fn send_buckets(scrape: &prometheus_parse::Scrape, provider: &str) -> Vec<(f64, f64)> {
    let found: Vec<Vec<(f64, f64)>> = scrape
        .samples
        .iter()
        .filter(|x| {
            x.metric == "banter_push_send_seconds" && x.labels.get("provider") == Some(provider)
        })
        .map(|x| match &x.value {
            prometheus_parse::Value::Histogram(b) => {
                b.iter().map(|b| (b.less_than, b.count)).collect()
            }
            other => panic!("banter_push_send_seconds is not a histogram: {other:?}"),
        })
        .collect();
    assert_eq!(found.len(), 1, "banter_push_send_seconds {provider}");
    found.into_iter().next().unwrap()
}

/// The push senders' metrics are on the node's `/metrics`, scraped over HTTP: sends, a retry, a
/// dead token, a receiver without devices, the FCM token fetch and the send-time histograms.
#[tokio::test]
async fn push_metrics_are_exported_on_the_nodes_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let mock = MockProvider::start().await;
    let s = start(&mock, dir.path()).await;
    bind(&s, 2).await;
    let push = s.running.as_ref().unwrap().push.clone();
    let mut a = Client::login(&s, 1, 2, false, "a").await;
    // Sent to both devices.
    a.send_im(1, 2, r#"{"text":"one"}"#).await;
    a.recv_until(cmd::ACK).await;
    assert_eq!(mock.wait_for("apns", 1, WAIT).await.len(), 1);
    assert_eq!(mock.wait_for("fcm", 1, WAIT).await.len(), 1);
    push.flush().await.unwrap();
    // APNs says the token is dead (unbound, given up); FCM is unavailable once, then accepts.
    mock.script(
        "apns",
        [Reply::Status {
            status: 410,
            body: json!({"reason": "Unregistered"}),
            retry_after: None,
        }],
    );
    mock.script(
        "fcm",
        [Reply::Status {
            status: 503,
            body: json!({"error": {"status": "UNAVAILABLE"}}),
            retry_after: Some(0),
        }],
    );
    a.send_im(1, 2, r#"{"text":"two"}"#).await;
    a.recv_until(cmd::ACK).await;
    assert_eq!(mock.wait_for("apns", 2, WAIT).await.len(), 2);
    assert_eq!(mock.wait_for("fcm", 3, WAIT).await.len(), 3);
    // Offline and without a device: skipped.
    a.send_im(1, 4, r#"{"text":"nobody listens"}"#).await;
    a.recv_until(cmd::ACK).await;
    push.flush().await.unwrap();
    assert_eq!((mock.count("apns"), mock.count("fcm")), (2, 3));

    let (status, text) = http(s.http, "GET", "/metrics", &[], b"").await;
    assert_eq!(status, 200, "{text}");
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("valid Prometheus text");
    let apns = [("provider", "apns")];
    let fcm = [("provider", "fcm")];
    assert_eq!(metric(&scrape, "banter_push_sent_total", &apns), 1.0);
    assert_eq!(metric(&scrape, "banter_push_sent_total", &fcm), 2.0);
    assert_eq!(metric(&scrape, "banter_push_failed_total", &apns), 1.0);
    assert_eq!(metric(&scrape, "banter_push_failed_total", &fcm), 0.0);
    assert_eq!(
        metric(&scrape, "banter_push_tokens_removed_total", &apns),
        1.0
    );
    assert_eq!(metric(&scrape, "banter_push_retried_total", &apns), 0.0);
    assert_eq!(metric(&scrape, "banter_push_retried_total", &fcm), 1.0);
    assert_eq!(metric(&scrape, "banter_push_oauth_tokens_total", &fcm), 1.0);
    for p in ["apns", "fcm", "intake"] {
        assert_eq!(
            metric(&scrape, "banter_push_dropped_total", &[("provider", p)]),
            0.0
        );
    }
    assert_eq!(
        metric(
            &scrape,
            "banter_push_skipped_total",
            &[("reason", "no_device")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &scrape,
            "banter_push_skipped_total",
            &[("reason", "do_not_disturb")]
        ),
        0.0
    );
    // One observation per attempt, in the latency buckets (50 µs … 10 s, then +Inf).
    for (provider, attempts) in [("apns", 2.0), ("fcm", 3.0)] {
        let buckets = send_buckets(&scrape, provider);
        let bounds: Vec<f64> = buckets.iter().map(|b| b.0).collect();
        assert_eq!(bounds.first(), Some(&0.00005), "{provider}: {bounds:?}");
        assert!(bounds.contains(&10.0), "{provider}: {bounds:?}");
        assert_eq!(
            buckets.last().unwrap().1,
            attempts,
            "{provider}: {buckets:?}"
        );
        assert!(
            buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "{provider}: cumulative {buckets:?}"
        );
    }
    assert!(
        text.contains("# TYPE banter_push_send_seconds histogram"),
        "{text}"
    );
    // The dead token is gone: the next message reaches FCM only.
    let devices = s
        .running
        .as_ref()
        .unwrap()
        .backend
        .devices(APPID, 2)
        .await
        .unwrap();
    assert_eq!(devices.len(), 1, "{devices:?}");
    assert_eq!(devices[0].provider, PushProvider::Gcm);
    s.stop().await;
}

/// Both providers hang; messages to offline users (whose pushes hang) are acknowledged and
/// messages to an online user delivered as fast as without push.
#[tokio::test]
async fn a_hanging_provider_does_not_delay_message_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let mock = MockProvider::start().await;
    mock.always("apns", Some(Reply::Hang));
    mock.always("fcm", Some(Reply::Hang));
    let s = start(&mock, dir.path()).await;
    for uid in 10..20 {
        s.running
            .as_ref()
            .unwrap()
            .backend
            .bind_devices(
                APPID,
                uid,
                &[
                    (PushProvider::Apns, apns_token(uid)),
                    (PushProvider::Gcm, format!("g{uid}")),
                ],
            )
            .await
            .unwrap();
    }
    let mut a = Client::login(&s, 1, 2, false, "a").await;
    let mut c = Client::login(&s, 3, 2, false, "c").await;
    let mut worst_ack = Duration::ZERO;
    let mut worst_delivery = Duration::ZERO;
    for i in 0..200 {
        let t = Instant::now();
        a.send_im(1, 10 + (i % 10), r#"{"text":"offline"}"#).await;
        a.recv_until(cmd::ACK).await;
        worst_ack = worst_ack.max(t.elapsed());
        let t = Instant::now();
        a.send_im(1, 3, r#"{"text":"online"}"#).await;
        c.recv_until(cmd::IM).await;
        worst_delivery = worst_delivery.max(t.elapsed());
        a.recv_until(cmd::ACK).await;
    }
    println!(
        "hanging providers: worst ACK {worst_ack:?}, worst online delivery {worst_delivery:?}"
    );
    assert!(
        mock.count("apns") > 0 && mock.count("fcm") > 0,
        "the providers were called and hang"
    );
    assert!(
        worst_ack < Duration::from_secs(2),
        "worst ACK {worst_ack:?}"
    );
    assert!(
        worst_delivery < Duration::from_secs(2),
        "worst delivery {worst_delivery:?}"
    );
    let t = Instant::now();
    s.stop().await;
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "shutdown is bounded with pushes hanging"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Child {
    child: std::process::Child,
    tcp: u16,
    http: u16,
}

async fn spawn_binary(config: &std::path::Path, data: &std::path::Path) -> Child {
    let (tcp, ws, http) = (free_port(), free_port(), free_port());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_banter"))
        .args(["serve", "--config"])
        .arg(config)
        .arg("--data")
        .arg(data)
        .env("BANTER_SERVER__TCP", format!("127.0.0.1:{tcp}"))
        .env("BANTER_SERVER__WS", format!("127.0.0.1:{ws}"))
        .env("BANTER_API__LISTEN", format!("127.0.0.1:{http}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn banter");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{http}").parse().unwrap();
    for _ in 0..400 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            let (st, _) = common::http(addr, "GET", "/healthz", &[], b"").await;
            if st == 200 {
                return Child { child, tcp, http };
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("server did not become healthy");
}

/// `kill -9` of the real binary with notifications queued behind a hanging APNs: after a restart
/// on the same data directory every device gets the message, none twice.
#[tokio::test]
async fn kill_9_with_queued_pushes_sends_them_after_restart_never_twice_per_device() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mock = MockProvider::start().await;
    mock.always("apns", Some(Reply::Hang));
    let (ca, apns, _) = mock.write_credentials(dir.path(), "com.example.chat");
    let config = format!(
        r#"
[push]
backend = "native"
[push.native]
ca_file = {ca:?}
concurrency = 2
timeout_ms = 60000
[[push.native.apps]]
appid = {APPID}
[push.native.apps.apns]
key_file = {key:?}
key_id = {kid:?}
team_id = {team:?}
topic = "com.example.chat"
endpoint = {endpoint:?}
"#,
        key = apns.key_file,
        kid = apns.key_id,
        team = apns.team_id,
        endpoint = apns.endpoint,
    );
    let config_path = dir.path().join("banter.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut first = spawn_binary(&config_path, &data).await;
    let http_addr: std::net::SocketAddr = format!("127.0.0.1:{}", first.http).parse().unwrap();
    let tcp_addr: std::net::SocketAddr = format!("127.0.0.1:{}", first.tcp).parse().unwrap();
    for uid in 10..20 {
        let (st, v) = post_json(
            http_addr,
            "/auth/grant",
            &json!({"appid": APPID, "uid": uid}),
        )
        .await;
        assert_eq!(st, 200, "{v}");
        let token = v["token"].as_str().unwrap().to_string();
        let (st, body) = http(
            http_addr,
            "POST",
            "/v2/device/bind",
            &[("Authorization", &format!("Bearer {token}"))],
            json!({"apns_device_token": apns_token(uid)})
                .to_string()
                .as_bytes(),
        )
        .await;
        assert_eq!(st, 200, "{body}");
    }
    let (st, v) = post_json(http_addr, "/auth/grant", &json!({"appid": APPID, "uid": 1})).await;
    assert_eq!(st, 200);
    let token = v["token"].as_str().unwrap().to_string();
    let mut a = Client::tcp(tcp_addr).await;
    a.auth(&token, 2, 1, "a").await;
    for uid in 10..20 {
        a.send_im(1, uid, r#"{"text":"before the crash"}"#).await;
        a.recv_until(cmd::ACK).await;
    }
    mock.wait_for("apns", 2, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(mock.count("apns"), 2, "two in flight, eight queued");
    first.child.kill().unwrap(); // SIGKILL
    first.child.wait().unwrap();
    drop(a);

    mock.always("apns", None);
    let mut second = spawn_binary(&config_path, &data).await;
    let got = mock.wait_for("apns", 10, WAIT).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut per_device = std::collections::HashMap::new();
    for r in mock.requests_of("apns") {
        *per_device.entry(r.path).or_insert(0) += 1;
    }
    assert!(got.len() >= 10);
    assert_eq!(
        per_device.len(),
        10,
        "every device got the message: {per_device:?}"
    );
    assert!(
        per_device.values().all(|&n| n == 1),
        "none twice: {per_device:?}"
    );
    second.child.kill().unwrap();
    second.child.wait().unwrap();
}
