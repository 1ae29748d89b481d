//! The HTTP API: posting, reading, summaries, metrics, and 4xx answers to bad parameters.
#![allow(clippy::unwrap_used)] // a test fails by panicking

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
        // Integers are plain decimal, as strict as GoBelieve: no spaces, no sign but `-`, not empty.
        (
            "POST",
            "/post_peer_message?appid=%207&sender=1&receiver=2",
            b"x",
            "appid",
        ),
        (
            "POST",
            "/post_peer_message?appid=7%20&sender=1&receiver=2",
            b"x",
            "appid",
        ),
        (
            "POST",
            "/post_peer_message?appid=%2B7&sender=1&receiver=2",
            b"x",
            "appid",
        ),
        (
            "POST",
            "/post_peer_message?appid=+7&sender=1&receiver=2",
            b"x",
            "appid",
        ),
        (
            "POST",
            "/post_peer_message?appid=&sender=1&receiver=2",
            b"x",
            "appid",
        ),
        (
            "POST",
            "/post_peer_message?appid=7&sender=1&receiver=2.0",
            b"x",
            "receiver",
        ),
        (
            "POST",
            "/post_peer_message?appid=7&sender=1&receiver=99999999999999999999",
            b"x",
            "receiver",
        ),
        ("POST", "/post_notification?appid=7&uid=%091", b"x", "uid"),
        (
            "POST",
            "/post_room_message?appid=7&uid=1&room=0x10",
            b"x",
            "room",
        ),
        (
            "POST",
            "/post_realtime_message?appid=7&sender=1&receiver=2%0A",
            b"x",
            "receiver",
        ),
        (
            "POST",
            "/post_group_message?appid=7&sender=1&receiver=1e3",
            b"x",
            "receiver",
        ),
        ("GET", "/load_history_message?appid=7&uid=1", b"", "last_id"),
        (
            "GET",
            "/load_history_message?appid=7&uid=1&last_id=",
            b"",
            "last_id",
        ),
        (
            "GET",
            "/load_latest_message?appid=7&uid=1&limit=1%20",
            b"",
            "limit",
        ),
        (
            "GET",
            "/get_offline_count?appid=7&uid=1&sync_key=%201",
            b"",
            "sync_key",
        ),
        ("GET", "/admin/groups?appid=7&group_id=1%20", b"", "group_id"),
        (
            "POST",
            "/post_system_message",
            b"{\"appid\":\"7\",\"receivers\":[1],\"content\":\"x\"}",
            "invalid json",
        ),
        (
            "POST",
            "/post_system_message",
            b"{\"appid\":7.0,\"receivers\":[1],\"content\":\"x\"}",
            "invalid json",
        ),
        (
            "POST",
            "/post_customer_message",
            b"{\"sender_appid\":7,\"sender\":1,\"receiver_appid\":7,\"receiver\":\" 2\",\"content\":\"x\"}",
            "invalid json",
        ),
        (
            "POST",
            "/auth/grant",
            b"{\"appid\":7,\"uid\":1e2}",
            "invalid json",
        ),
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
    // None of the refused posts stored anything.
    let (st, text) = http(
        s.http,
        "GET",
        "/load_history_message?appid=7&uid=2&last_id=0",
        &[],
        b"",
    )
    .await;
    assert_eq!(st, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 0, "{v}");
    // The first of a repeated parameter counts, as in GoBelieve.
    let (st, text) = http(
        s.http,
        "POST",
        "/post_peer_message?appid=7&sender=1&receiver=2&receiver=x",
        &[],
        b"x",
    )
    .await;
    assert_eq!(st, 200, "{text}");
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
    // The scheme is case-insensitive (RFC 9110 §11.1).
    for good in [
        "Bearer hunter2",
        "bearer hunter2",
        "BEARER hunter2",
        "Bearer  hunter2",
    ] {
        let (st, body) = http(s.http, "GET", "/summary", &[("Authorization", good)], b"").await;
        assert_eq!(st, 200, "{good:?}: {body}");
    }
    for bad in [
        "Basic hunter2",
        "Bearerhunter2",
        "hunter2",
        "Bearer hunter",
        "Bearer",
    ] {
        let (st, body) = http(s.http, "GET", "/summary", &[("Authorization", bad)], b"").await;
        assert_eq!(st, 401, "{bad:?}: {body}");
    }
    // The secret is checked before the body is read: a client that does not send it gets 401
    // at once, whatever body it announces.
    let mut t = tokio::net::TcpStream::connect(s.http).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    t.write_all(b"POST /post_peer_message?appid=7&sender=1&receiver=2 HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc")
        .await
        .unwrap();
    let mut buf = [0u8; 12];
    tokio::time::timeout(WAIT, t.read_exact(&mut buf))
        .await
        .expect("answered without the body")
        .unwrap();
    assert_eq!(&buf, b"HTTP/1.1 401");
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

#[tokio::test]
async fn oversized_bodies_get_413_with_a_json_error() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::start_with(|c| c.api.max_body = 1000)
        .await
        .unwrap();
    let check = |st: u16, body: &str| {
        assert_eq!(st, 413, "{body}");
        let v: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(v["meta"]["code"], 413);
        assert!(
            v["meta"]["message"]
                .as_str()
                .unwrap()
                .contains("api.max_body"),
            "{v}"
        );
    };
    // Writes `request` and reads the answer until the server closes the connection.
    let raw = |request: String| async move {
        let mut t = tokio::net::TcpStream::connect(s.http).await.unwrap();
        t.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(WAIT, t.read(&mut buf))
                .await
                .expect("answered and closed")
            {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        let text = String::from_utf8_lossy(&out).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").expect("an answer");
        let status: u16 = head[9..12].parse().expect("status");
        (status, body.to_string())
    };
    // Announced by Content-Length: refused before any of it is sent.
    let (st, body) =
        raw("POST /post_system_message HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n".into())
            .await;
    check(st, &body);
    // Chunked, found out while reading.
    let chunk = "x".repeat(600);
    let (st, body) = raw(format!(
        "POST /post_peer_message?appid=7&sender=1&receiver=2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    ))
    .await;
    check(st, &body);
    // Within the limit is fine.
    let (st, body) = http(
        s.http,
        "POST",
        "/post_peer_message?appid=7&sender=1&receiver=2",
        &[],
        &[b'y'; 1000],
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let (st, _) = http(s.http, "GET", "/metrics", &[], b"").await;
    assert_eq!(st, 200);
    s.stop().await;
}

#[tokio::test]
async fn group_ids_beyond_the_explicit_range_are_refused_and_automatic_ids_keep_working() {
    let s = TestServer::start().await.unwrap();
    for gid in [i64::MAX, 9_007_199_254_740_992] {
        let (st, v) = post_json(
            s.http,
            "/admin/groups",
            &serde_json::json!({"appid": APPID, "group_id": gid, "name": "big", "members": [1]}),
        )
        .await;
        assert_eq!(st, 400, "{gid}: {v}");
        assert!(
            v["meta"]["message"]
                .as_str()
                .unwrap()
                .contains("9007199254740991"),
            "{v}"
        );
    }
    let (st, v) = post_json(
        s.http,
        "/admin/groups",
        &serde_json::json!({"appid": APPID, "group_id": 9_007_199_254_740_991_i64, "name": "top", "members": [1]}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    for appid in [APPID, APPID + 1] {
        let (st, v) = post_json(
            s.http,
            "/admin/groups",
            &serde_json::json!({"appid": appid, "name": "auto", "members": [1]}),
        )
        .await;
        assert_eq!(st, 200, "{v}");
        assert!(
            v["group_id"].as_i64().unwrap() > 9_007_199_254_740_991,
            "{v}"
        );
    }
    s.stop().await;
}
