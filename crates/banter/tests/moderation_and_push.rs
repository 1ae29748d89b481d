//! Moderation (word filter, live speak bans, rate limit) and offline push (GoBelieve Redis queues and a
//! webhook), end to end.
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use proto::{cmd, flag, AckStatus, Body, Im, Rt};
use redis::AsyncCommands;
use serde_json::json;

#[tokio::test]
async fn the_word_filter_masks_banned_words_and_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let words = dir.path().join("words.txt");
    std::fs::write(&words, "# banned\nbadword\n").unwrap();
    let path = words.display().to_string();
    let s = TestServer::start_with(move |c| {
        c.moderation.words_file = path;
        c.moderation.reload_secs = 1;
    })
    .await
    .unwrap();
    let mut a = Client::login(&s, 1, 2, false, "a").await;
    let mut b = Client::login(&s, 2, 2, false, "b").await;
    a.send_body(
        &Body::Im(Im {
            sender: 1,
            receiver: 2,
            timestamp: 0,
            msgid: 1,
            content: "{\"text\":\"you badword\"}".into(),
        }),
        flag::TEXT,
    )
    .await;
    let (m, _) = b.recv_until(cmd::IM).await;
    let v: serde_json::Value = serde_json::from_slice(&im_of(&m).content).unwrap();
    assert_eq!(v["text"], "you *******");
    // Without the TEXT flag the content is untouched.
    a.send_body(
        &Body::Im(Im {
            sender: 1,
            receiver: 2,
            timestamp: 0,
            msgid: 2,
            content: "{\"text\":\"badword\"}".into(),
        }),
        0,
    )
    .await;
    let (m, _) = b.recv_until(cmd::IM).await;
    assert_eq!(&im_of(&m).content[..], b"{\"text\":\"badword\"}");
    // A new word is picked up without a restart.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    std::fs::write(&words, "badword\nnewword\n").unwrap();
    let mut masked = false;
    for i in 0..50 {
        // A new message each time (its own msgid): the same msgid and content again would be a
        // resend, stored once.
        a.send_body(
            &Body::Im(Im {
                sender: 1,
                receiver: 2,
                timestamp: 0,
                msgid: 3 + i,
                content: "{\"text\":\"newword\"}".into(),
            }),
            flag::TEXT,
        )
        .await;
        let (m, _) = b.recv_until(cmd::IM).await;
        let v: serde_json::Value = serde_json::from_slice(&im_of(&m).content).unwrap();
        if v["text"] == "*******" {
            masked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(masked, "the reloaded word list applies");
    s.stop().await;
}

#[tokio::test]
async fn the_rate_limit_refuses_with_a_status() {
    let s = TestServer::start_with(|c| c.server.rate_limit_per_sec = 5)
        .await
        .unwrap();
    let mut a = Client::login(&s, 1, 2, false, "a").await;
    for _ in 0..20 {
        a.send_im(1, 2, "x").await;
    }
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let (ack, _) = a.recv_until(cmd::ACK).await;
        let Body::Ack(x) = body_of(&ack) else {
            unreachable!()
        };
        statuses.push(x.status);
    }
    assert!(statuses.contains(&0));
    assert!(statuses.contains(&AckStatus::RATE_LIMITED));
    s.stop().await;
}

#[tokio::test]
async fn speak_bans_from_redis_pubsub_apply_to_connected_sessions() {
    let redis_server = testkit::RedisServer::start();
    let url = redis_server.url();
    let url2 = url.clone();
    let s = TestServer::start_with(move |c| {
        c.auth.backend = banter::config::AuthBackend::Redis;
        c.auth.redis_url = url2;
    })
    .await
    .unwrap();
    let mut a = Client::login(&s, 1, 2, false, "a").await;
    a.send_body(&Body::EnterRoom(9), 0).await;
    let room_im = Body::RoomIm(Rt {
        sender: 1,
        receiver: 9,
        content: "hi".into(),
    });
    let seq = a.send_body(&room_im, 0).await;
    let (ack, _) = a.recv_until(cmd::ACK).await;
    assert_eq!(body_of(&ack), Body::Ack(proto::Ack { seq, status: 0 }));
    // The app server bans the user: GoBelieve's pub/sub message.
    let client = redis::Client::open(url).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let mut refused = false;
    for _ in 0..50 {
        let _: i64 = con.publish("speak_forbidden", "7,1,1").await.unwrap();
        let seq = a.send_body(&room_im, 0).await;
        let (ack, _) = a.recv_until(cmd::ACK).await;
        if body_of(&ack)
            == Body::Ack(proto::Ack {
                seq,
                status: AckStatus::FORBIDDEN,
            })
        {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "the ban reached the connected session");
    s.stop().await;
}

#[tokio::test]
async fn offline_push_jobs_land_in_gobelieve_redis_queues() {
    let redis_server = testkit::RedisServer::start();
    let url = redis_server.url();
    let url2 = url.clone();
    let s = TestServer::start_with(move |c| {
        c.push.backend = banter::config::PushBackend::Redis;
        c.push.redis.url = url2;
    })
    .await
    .unwrap();
    let mut a = Client::login(&s, 1, 2, false, "a").await;
    // uid 2 is offline: a peer job.
    a.send_im(1, 2, "{\"text\":\"are you there\"}").await;
    a.recv_until(cmd::ACK).await;
    // A group with one online and two offline members: one group job for the offline ones.
    let (st, _) = post_json(
        s.http,
        "/admin/groups",
        &json!({"appid": APPID, "group_id": 77, "name": "g", "members": [1, 3, 4]}),
    )
    .await;
    assert_eq!(st, 200);
    let _online = Client::login(&s, 3, 2, false, "c").await;
    a.send_body(
        &Body::GroupIm(Im {
            sender: 1,
            receiver: 77,
            timestamp: 0,
            msgid: 0,
            content: "{\"text\":\"group\"}".into(),
        }),
        0,
    )
    .await;
    a.recv_until(cmd::ACK).await;
    let client = redis::Client::open(url).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let mut peer: Vec<String> = Vec::new();
    let mut group: Vec<String> = Vec::new();
    for _ in 0..100 {
        peer = con.lrange("push_queue", 0, -1).await.unwrap();
        group = con.lrange("group_push_queue", 0, -1).await.unwrap();
        if !peer.is_empty() && !group.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(peer, vec!["{\"appid\":7,\"content\":\"{\\\"text\\\":\\\"are you there\\\"}\",\"receiver\":2,\"sender\":1}".to_string()]);
    let job: serde_json::Value = serde_json::from_str(&group[0]).unwrap();
    assert_eq!(job["group_id"], 77);
    assert_eq!(job["receivers"], json!([4]));
    assert_eq!(job["sender"], 1);
    s.stop().await;
}

#[tokio::test]
async fn offline_push_jobs_are_posted_to_the_webhook() {
    let received: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/push",
        axum::routing::post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                sink.lock().unwrap().push(v);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/push", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let s = TestServer::start_with(move |c| {
        c.push.backend = banter::config::PushBackend::Webhook;
        c.push.webhook.url = hook;
        c.push.webhook.batch = 10;
    })
    .await
    .unwrap();
    let (st, _) = post_json(
        s.http,
        "/post_system_message",
        &json!({"appid": APPID, "receivers": [5, 6], "content": "sys"}),
    )
    .await;
    assert_eq!(st, 200);
    let mut jobs = Vec::new();
    for _ in 0..100 {
        jobs = received
            .lock()
            .unwrap()
            .iter()
            .flat_map(|b| b.as_array().cloned().unwrap_or_default())
            .collect::<Vec<_>>();
        if jobs.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut receivers: Vec<i64> = jobs
        .iter()
        .map(|j| j["receiver"].as_i64().unwrap())
        .collect();
    receivers.sort();
    assert_eq!(receivers, vec![5, 6]);
    assert!(
        jobs.iter()
            .all(|j| j["type"] == "system" && j["content"] == "sys"),
        "{jobs:?}"
    );
    s.stop().await;
}

/// A webhook receiver over HTTPS with a private CA: a TLS accept loop answering each HTTP/1.1 POST
/// with 200 and keeping the JSON bodies. Returns its URL, the CA file and the bodies.
async fn https_hook(dir: &std::path::Path) -> (String, String, Arc<Mutex<Vec<serde_json::Value>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let ca = dir.join("hook-ca.pem");
    std::fs::write(&ca, ck.cert.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/push", listener.local_addr().unwrap());
    let received: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let sink = received.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let sink = sink.clone();
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                loop {
                    let mut chunk = [0u8; 4096];
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    // One request at a time: head, then Content-Length bytes of body.
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if buf.len() < end + 4 + len {
                            break;
                        }
                        let body: Vec<u8> = buf[end + 4..end + 4 + len].to_vec();
                        buf.drain(..end + 4 + len);
                        sink.lock()
                            .unwrap()
                            .push(serde_json::from_slice(&body).unwrap_or_default());
                        if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
    });
    (url, ca.display().to_string(), received)
}

#[tokio::test]
async fn offline_push_jobs_are_posted_to_an_https_webhook() {
    let dir = tempfile::tempdir().unwrap();
    let (hook, ca, received) = https_hook(dir.path()).await;
    let s = TestServer::start_with(move |c| {
        c.push.backend = banter::config::PushBackend::Webhook;
        c.push.webhook.url = hook;
        c.push.webhook.ca_file = ca;
    })
    .await
    .unwrap();
    let mut a = Client::login(&s, 1, 2, false, "a").await;
    a.send_im(1, 2, "{\"text\":\"over tls\"}").await;
    a.recv_until(cmd::ACK).await;
    let mut jobs = Vec::new();
    for _ in 0..200 {
        jobs = received
            .lock()
            .unwrap()
            .iter()
            .flat_map(|b| b.as_array().cloned().unwrap_or_default())
            .collect::<Vec<_>>();
        if !jobs.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0]["type"], "peer");
    assert_eq!(jobs[0]["receiver"], 2);
    assert_eq!(jobs[0]["content"], "{\"text\":\"over tls\"}");
    s.stop().await;
}
