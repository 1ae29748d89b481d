//! The HTTP API: posting, reading, summaries, metrics, and 4xx answers to bad parameters.

mod common;

use common::*;
use proto::{cmd, Body};

#[tokio::test]
async fn post_peer_message_is_stored_and_notified() {
    let s = TestServer::start().await.unwrap();
    let mut b = Client::login(&s, 2, 1, false, "b").await;
    let (st, body) = http(
        s.http,
        "POST",
        "/post_peer_message?appid=7&sender=1&receiver=2",
        &[],
        b"{\"text\":\"from server\"}",
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let (n, _) = b.recv_until(cmd::SYNC_NOTIFY).await;
    let Body::SyncNotify(k) = body_of(&n) else {
        panic!()
    };
    let (msgs, end) = b.sync(0).await;
    assert_eq!(end, k);
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].flag, 0, "HTTP messages are not SELF");

    let (st, body) = http(
        s.http,
        "GET",
        "/load_latest_message?appid=7&uid=2&limit=10",
        &[],
        b"",
    )
    .await;
    assert_eq!(st, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"][0]["content"], "{\"text\":\"from server\"}");
    assert_eq!(v["data"][0]["sender"], 1);
    assert_eq!(v["data"][0]["command"], 4);

    let (st, body) = http(
        s.http,
        "GET",
        "/load_history_message?appid=7&uid=1&last_id=0",
        &[],
        b"",
    )
    .await;
    assert_eq!(st, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 1, "sender's copy: {v}");

    let (st, body) = http(
        s.http,
        "GET",
        "/get_offline_count?appid=7&uid=2&sync_key=0",
        &[],
        b"",
    )
    .await;
    assert_eq!(st, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"]["count"], 1);
    s.stop().await;
}

#[tokio::test]
async fn system_messages_and_notifications() {
    let s = TestServer::start().await.unwrap();
    let mut u = Client::login(&s, 3, 2, false, "u").await;
    let (st, _) = post_json(
        s.http,
        "/post_system_message",
        &serde_json::json!({"appid": 7, "receivers": [3, 4], "content": "sys"}),
    )
    .await;
    assert_eq!(st, 200);
    u.recv_until(cmd::SYNC_NOTIFY).await;
    let (msgs, _) = u.sync(0).await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].cmd, cmd::SYSTEM);
    assert_eq!(&msgs[0].body[..], b"sys");

    let (st, _) = http(
        s.http,
        "POST",
        "/post_notification?appid=7&uid=3",
        &[],
        b"note",
    )
    .await;
    assert_eq!(st, 200);
    let (n, _) = u.recv_until(cmd::NOTIFICATION).await;
    assert_eq!(n.flag, 0);
    assert_eq!(&n.body[..], b"note");

    let (st, _) = http(
        s.http,
        "POST",
        "/post_realtime_message?appid=7&sender=9&receiver=3",
        &[],
        b"rt",
    )
    .await;
    assert_eq!(st, 200);
    let (rt, _) = u.recv_until(cmd::RT).await;
    assert_eq!(rt.flag, 0);
    s.stop().await;
}

#[tokio::test]
async fn bad_parameters_get_4xx_naming_the_problem() {
    let s = TestServer::start().await.unwrap();
    let cases: Vec<(&str, &str, &[u8], &str)> = vec![
        (
            "POST",
            "/post_peer_message?appid=7&sender=1",
            b"x",
            "receiver",
        ),
        (
            "POST",
            "/post_peer_message?appid=7&sender=abc&receiver=2",
            b"x",
            "sender",
        ),
        (
            "POST",
            "/post_peer_message?appid=7&sender=1&receiver=2",
            b"",
            "empty",
        ),
        (
            "POST",
            "/post_peer_message?appid=-7&sender=1&receiver=2",
            b"x",
            "appid",
        ),
        ("POST", "/post_system_message", b"not json", "invalid json"),
        (
            "POST",
            "/post_system_message",
            b"{\"appid\":7,\"receivers\":[\"a\"],\"content\":\"x\"}",
            "invalid json",
        ),
        (
            "POST",
            "/post_system_message",
            b"{\"appid\":7,\"receivers\":[],\"content\":\"x\"}",
            "receivers",
        ),
        ("POST", "/post_notification?appid=7", b"x", "uid"),
        (
            "GET",
            "/load_latest_message?appid=7&uid=1&limit=0",
            b"",
            "limit",
        ),
        ("GET", "/load_latest_message?appid=7&uid=1", b"", "limit"),
        (
            "GET",
            "/load_history_message?appid=7&uid=1&last_id=x",
            b"",
            "last_id",
        ),
        ("GET", "/get_offline_count?appid=7", b"", "uid"),
        ("POST", "/auth/grant", b"{\"appid\":7}", "invalid json"),
        ("POST", "/auth/grant", b"{\"appid\":0,\"uid\":1}", "appid"),
        ("GET", "/summary?appid=x", b"", "appid"),
    ];
    for (method, path, body, needle) in cases {
        let (st, text) = http(s.http, method, path, &[], body).await;
        assert!(
            (400..500).contains(&st),
            "{method} {path}: status {st} {text}"
        );
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: not json: {text}"));
        assert_eq!(v["meta"]["code"], st);
        let msg = v["meta"]["message"].as_str().unwrap();
        assert!(
            msg.contains(needle),
            "{path}: {msg:?} should mention {needle:?}"
        );
    }
    let big = vec![b'x'; 40_000];
    let (st, _) = http(
        s.http,
        "POST",
        "/post_peer_message?appid=7&sender=1&receiver=2",
        &[],
        &big,
    )
    .await;
    assert_eq!(st, 400, "oversized content is refused");
    let (st, _) = http(s.http, "GET", "/nope", &[], b"").await;
    assert_eq!(st, 404);
    s.stop().await;
}

#[tokio::test]
async fn summary_metrics_and_health() {
    let s = TestServer::start().await.unwrap();
    let _c = Client::login(&s, 5, 2, false, "d").await;
    let (st, body) = http(s.http, "GET", "/summary?appid=7", &[], b"").await;
    assert_eq!(st, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["client_count"], 1);
    assert_eq!(v["app_7"]["clientset_count"], 1);
    assert!(v["rss_bytes"].as_u64().unwrap() > 0);
    let (st, body) = http(s.http, "GET", "/metrics", &[], b"").await;
    assert_eq!(st, 200);
    assert!(body.contains("banter_authenticated_sessions 1"), "{body}");
    let (st, _) = http(s.http, "GET", "/healthz", &[], b"").await;
    assert_eq!(st, 200);
    s.stop().await;
}

#[tokio::test]
async fn api_secret_is_required_when_configured() {
    let s = TestServer::start_with(|c| c.api.secret = "hunter2".into())
        .await
        .unwrap();
    let (st, _) = http(s.http, "GET", "/summary", &[], b"").await;
    assert_eq!(st, 401);
    let (st, _) = http(
        s.http,
        "GET",
        "/summary",
        &[("Authorization", "Bearer wrong")],
        b"",
    )
    .await;
    assert_eq!(st, 401);
    let (st, _) = http(
        s.http,
        "GET",
        "/summary",
        &[("Authorization", "Bearer hunter2")],
        b"",
    )
    .await;
    assert_eq!(st, 200);
    let (st, _) = http(s.http, "GET", "/healthz", &[], b"").await;
    assert_eq!(st, 200);
    s.stop().await;
}

#[tokio::test]
async fn api_refuses_public_addresses_without_a_secret() {
    let r = TestServer::start_with(|c| c.api.listen = "0.0.0.0:0".into()).await;
    let e = r.err().expect("must refuse");
    assert!(e.to_string().contains("api.secret"), "{e}");
}
