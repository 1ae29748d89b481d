//! The router's native push (`push.backend = "native"`): PUSH requests from access nodes for users
//! offline on every node become APNs and FCM requests to the devices bound in the GoBelieve Redis
//! (a private `redis-server`), sent to the local APNs/FCM stand-in (`push::mock`: HTTP/2 over TLS,
//! verifying the provider token and the OAuth2 grant) — exactly one per device, none for online users.
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::time::Duration;

use backend::{Backend, PushProvider, RedisOptions};
use common::{inner, TestRouter, WAIT};
use push::mock::MockProvider;
use route::{PushBackend, RouterConfig};
use testkit::RedisServer;

#[tokio::test]
async fn offline_receivers_get_one_push_per_device_and_online_ones_none() {
    let redis_server = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mock = MockProvider::start().await;
    let (ca, apns, fcm) = mock.write_credentials(dir.path(), "com.example.chat");

    // Devices bound the way the app API binds them, in GoBelieve's Redis layout.
    let b = Backend::open_redis(RedisOptions {
        url: redis_server.url(),
        ..RedisOptions::default()
    })
    .await
    .expect("redis backend");
    for uid in [2, 3] {
        b.bind_devices(
            7,
            uid,
            &[
                (PushProvider::Apns, format!("{:064x}", 0xa000 + uid)),
                (PushProvider::Gcm, format!("fcm-{uid}")),
            ],
        )
        .await
        .expect("bind");
    }

    let mut config = RouterConfig::default();
    config.push.backend = PushBackend::Native;
    config.push.native_redis_url = redis_server.url();
    config.push.native_data_dir = dir.path().join("push").display().to_string();
    config.push.native.ca_file = ca;
    config.push.native.apps = vec![push::AppPush {
        appid: 7,
        language: "en".into(),
        apns: Some(apns),
        fcm: Some(fcm),
    }];
    let r = TestRouter::start(config).await;
    let mut a = r.node().await;
    let mut n = r.node().await;
    n.subscribe(7, 2, true).await; // 2 is online on another node
    r.wait_subscriptions(&[(0, 0), (1, 0)]).await;

    a.push(
        7,
        &[2],
        &inner(proto::cmd::IM, 1, 2, "{\"text\":\"online\"}"),
    )
    .await;
    a.push(
        7,
        &[3],
        &inner(proto::cmd::IM, 1, 3, "{\"text\":\"wake up\"}"),
    )
    .await;
    let sent = mock.wait_for("apns", 1, WAIT).await;
    mock.wait_for("fcm", 1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        (mock.count("apns"), mock.count("fcm")),
        (1, 1),
        "one push per device of the offline user, none for the online one"
    );
    assert!(sent[0].authorized, "the provider token checked out");
    assert_eq!(sent[0].path, format!("/3/device/{:064x}", 0xa000 + 3));
    assert_eq!(sent[0].body["aps"]["alert"]["body"], "wake up");
    let fcm = &mock.requests_of("fcm")[0];
    assert!(fcm.authorized);
    assert_eq!(fcm.body["message"]["token"], "fcm-3");

    // The senders count into the router's own registry, on its /metrics.
    let (status, metrics) = r.get("/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "banter_push_sent_total{provider=\"apns\"} 1",
        "banter_push_sent_total{provider=\"fcm\"} 1",
        "banter_push_failed_total{provider=\"apns\"} 0",
        "banter_push_skipped_total{reason=\"no_device\"} 0",
        "banter_push_send_seconds_count{provider=\"apns\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
    }
    r.stop().await;
}
