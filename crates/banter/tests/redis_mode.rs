//! Redis mode: tokens issued by a GoBelieve API server (`access_token_<t>` hashes), sync-key hints,
//! unread counts and device ids in GoBelieve's keys — as the original project's tests set them up.
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::time::Duration;

use common::*;
use proto::{cmd, Body, Platform};
use redis::AsyncCommands;

async fn hget(
    con: &mut redis::aio::MultiplexedConnection,
    key: &str,
    field: &str,
) -> Option<String> {
    con.hget(key, field).await.expect("hget")
}

#[tokio::test]
async fn gobelieve_tokens_and_user_state_in_redis() {
    let redis_server = testkit::RedisServer::start();
    let client = redis::Client::open(redis_server.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    // What the Python tests do for every user.
    for (uid, token) in [
        (1, "tok-one-aaaaaaaaaaaaaaaaaaaaaaaaa"),
        (2, "tok-two-bbbbbbbbbbbbbbbbbbbbbbbbb"),
    ] {
        let _: () = redis::cmd("HMSET")
            .arg(format!("access_token_{token}"))
            .arg("user_id")
            .arg(uid)
            .arg("app_id")
            .arg(APPID)
            .arg("user_name")
            .arg(format!("u{uid}"))
            .query_async(&mut con)
            .await
            .unwrap();
    }
    let url = redis_server.url();
    let s = TestServer::start_with(move |c| {
        c.auth.backend = banter::config::AuthBackend::Redis;
        c.auth.redis_url = url;
        c.auth.flush_interval_ms = 20;
    })
    .await
    .unwrap();

    let device = "same-device-for-everyone";
    let mut a = Client::tcp(s.tcp).await;
    assert_eq!(
        a.auth(
            "tok-one-aaaaaaaaaaaaaaaaaaaaaaaaa",
            1,
            Platform::ANDROID,
            device
        )
        .await,
        0
    );
    let mut b = Client::tcp(s.tcp).await;
    assert_eq!(
        b.auth(
            "tok-two-bbbbbbbbbbbbbbbbbbbbbbbbb",
            1,
            Platform::ANDROID,
            device
        )
        .await,
        0
    );
    let mut bad = Client::tcp(s.tcp).await;
    assert_eq!(
        bad.auth("not-in-redis", 1, Platform::ANDROID, device).await,
        1
    );

    // One device string on one platform maps to one device id for everybody.
    let dev: Option<i64> = con.get(format!("devices_{device}_2")).await.unwrap();
    assert!(dev.is_some_and(|d| d > 0));

    a.send_im(1, 2, "hello via redis mode").await;
    a.recv_until(cmd::ACK).await;
    let (msgs, end) = b.sync(0).await;
    assert_eq!(msgs.len(), 1);
    b.send_body(&Body::SyncKey(end), 0).await;
    b.send_body(&Body::UnreadCount(5), 0).await;
    b.send_body(&Body::Ping, 0).await;
    b.recv_until(cmd::PONG).await;

    // Write-behind reaches Redis shortly.
    let mut stored = None;
    for _ in 0..100 {
        stored = hget(&mut con, "users_7_2", "sync_key").await;
        if stored.as_deref() == Some(&end.to_string()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stored, Some(end.to_string()));
    let mut unread = None;
    for _ in 0..100 {
        unread = hget(&mut con, "users_7_2", "unread").await;
        if unread.as_deref() == Some("5") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(unread.as_deref(), Some("5"));

    // A new connection syncing from 0 resumes from the stored hint: nothing new.
    drop(b);
    let mut b2 = Client::tcp(s.tcp).await;
    assert_eq!(
        b2.auth(
            "tok-two-bbbbbbbbbbbbbbbbbbbbbbbbb",
            1,
            Platform::ANDROID,
            device
        )
        .await,
        0
    );
    let (msgs, end2) = b2.sync(0).await;
    assert!(msgs.is_empty());
    assert_eq!(end2, end);

    // The app server deleting the token revokes it at once.
    let _: () = con
        .del("access_token_tok-two-bbbbbbbbbbbbbbbbbbbbbbbbb")
        .await
        .unwrap();
    let mut b3 = Client::tcp(s.tcp).await;
    assert_eq!(
        b3.auth(
            "tok-two-bbbbbbbbbbbbbbbbbbbbbbbbb",
            1,
            Platform::ANDROID,
            device
        )
        .await,
        1
    );
    s.stop().await;
}
