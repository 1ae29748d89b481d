//! The push senders with the GoBelieve Redis backend (a real `redis-server`): devices bound in
//! Redis, the sender's `name` field of `users_<appid>_<uid>`, the `unread` field as badge, and
//! do-not-disturb in `push_dnd_<appid>_<uid>`; a dead token is removed from Redis.
#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::time::Duration;

use backend::{Backend, DndScope, NativePush, PushJob, PushProvider, RedisOptions};
use push::mock::{MockProvider, Reply};
use push::{AppPush, NativeOptions, Pusher};
use redis::AsyncCommands;
use serde_json::json;

const APPID: i64 = 7;
const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn pushes_with_devices_names_badges_and_do_not_disturb_from_redis() {
    let redis_server = testkit::RedisServer::start();
    let url = redis_server.url();
    let b = Backend::open_redis(RedisOptions {
        url: url.clone(),
        ..RedisOptions::default()
    })
    .await
    .unwrap();
    let mut con = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // What GoBelieve's API server writes.
    let _: () = con.hset("users_7_1", "name", "Bob").await.unwrap();
    let _: () = con.hset("users_7_2", "unread", 9).await.unwrap();
    b.bind_devices(
        APPID,
        2,
        &[
            (PushProvider::Apns, format!("{:064x}", 2)),
            (PushProvider::Gcm, "g2".into()),
        ],
    )
    .await
    .unwrap();
    b.bind_devices(APPID, 3, &[(PushProvider::Apns, format!("{:064x}", 3))])
        .await
        .unwrap();
    b.set_dnd(APPID, 3, DndScope::User, true).await.unwrap();
    let fields: Vec<String> = con.hkeys("push_dnd_7_3").await.unwrap();
    assert_eq!(fields, vec!["user".to_string()]);

    let dir = tempfile::tempdir().unwrap();
    let mock = MockProvider::start().await;
    let (ca, apns, fcm) = mock.write_credentials(dir.path(), "com.example.chat");
    mock.script(
        "fcm",
        [Reply::Status {
            status: 400,
            body: json!({"error": {"code": 400, "status": "INVALID_ARGUMENT"}}),
            retry_after: None,
        }],
    );
    let opts = NativeOptions {
        ca_file: ca,
        apps: vec![AppPush {
            appid: APPID,
            language: "zh".into(),
            apns: Some(apns),
            fcm: Some(fcm),
        }],
        ..NativeOptions::default()
    };
    let pusher = Pusher::start(&opts, dir.path(), b.clone()).await.unwrap();
    for receiver in [2, 3] {
        pusher.push(PushJob::Peer {
            appid: APPID,
            sender: 1,
            receiver,
            content: json!({"file": {"url": "u"}}).to_string(),
        });
    }
    let apns = mock.wait_for("apns", 1, WAIT).await;
    mock.wait_for("fcm", 1, WAIT).await;
    pusher.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(mock.count("apns"), 1, "user 3 is under do-not-disturb");
    assert_eq!(apns[0].body["aps"]["alert"]["title"], "Bob");
    assert_eq!(apns[0].body["aps"]["alert"]["body"], "[文件]");
    assert_eq!(apns[0].body["aps"]["badge"], 10);
    // The FCM token was refused as invalid: gone from Redis, the APNs one kept.
    let devices = b.devices(APPID, 2).await.unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].provider, PushProvider::Apns);
    let gcm: Option<String> = con.hget("users_7_2", "gcm_device_token").await.unwrap();
    assert_eq!(gcm, None);
}
