//! A real `banter serve` whose data directory is on a small tmpfs that fills up (the test mounts
//! it; needs root): while the disk is full, messages get ACK status 70 promptly, grants get 503, a
//! known device still logs in, and `/readyz` says why; once space is freed everything (a new
//! device's login included) works again
//! without a restart, every acknowledged message is stored (and nothing refused), and the
//! sync-key hint reported meanwhile survives a restart (the final write-behind flush works).
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::time::{Duration, Instant};

use banter::testing::test_config;
use common::*;
use proto::{cmd, AckStatus, Body};
use serde_json::Value;

const A: i64 = 1;
const B: i64 = 2;

use testkit::Tmpfs;

fn content(i: usize) -> String {
    format!("m{i}|{}", "x".repeat(2000))
}

fn tag(c: &str) -> String {
    c.split('|').next().unwrap_or_default().to_string()
}

/// Sends IM `i` from `a` to B and returns its ACK status.
async fn send(a: &mut Client, i: usize) -> i8 {
    let seq = a.send_im(A, B, &content(i)).await;
    let (f, _) = a.recv_until(cmd::ACK).await;
    match body_of(&f) {
        Body::Ack(ack) => {
            assert_eq!(ack.seq, seq);
            ack.status
        }
        other => panic!("{other:?}"),
    }
}

async fn get_json(s: &TestServer, path: &str) -> (u16, Value) {
    let (st, body) = http(s.http, "GET", path, &[], b"").await;
    (st, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// Every message in B's queue, by tag, through the HTTP API (from the start of the queue).
async fn stored_tags(s: &TestServer) -> Vec<String> {
    let mut tags = Vec::new();
    let mut last = 0;
    loop {
        let (st, v) = get_json(
            s,
            &format!("/load_history_message?appid={APPID}&uid={B}&last_id={last}"),
        )
        .await;
        assert_eq!(st, 200, "{v}");
        for m in v["data"].as_array().unwrap() {
            tags.push(tag(m["content"].as_str().unwrap()));
        }
        last = v["last_id"].as_i64().unwrap();
        if !v["has_more"].as_bool().unwrap() {
            return tags;
        }
    }
}

async fn grant_status(s: &TestServer, uid: i64) -> u16 {
    post_json(
        s.http,
        "/auth/grant",
        &serde_json::json!({"appid": APPID, "uid": uid}),
    )
    .await
    .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_survived_and_everything_resumes_once_space_is_freed() {
    let fs = Tmpfs::mount(48);
    let mut config = test_config(fs.path().join("data"));
    config.store.segment_mb = 1;
    let s = TestServer::start_config(config).await.unwrap();
    let (st, v) = get_json(&s, "/readyz").await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["status"], "ok", "{v}");

    let token_a = grant(&s, A).await;
    let token_b = grant(&s, B).await;
    let mut a = Client::tcp(s.tcp).await;
    assert_eq!(
        a.auth(&token_a, 2, proto::Platform::ANDROID, "a-phone")
            .await,
        0
    );
    let mut acked = Vec::new();
    let mut refused = Vec::new();
    for i in 0..20 {
        assert_eq!(send(&mut a, i).await, AckStatus::SUCCESS);
        acked.push(format!("m{i}"));
    }
    let mut b = Client::tcp(s.tcp).await;
    assert_eq!(b.auth(&token_b, 2, proto::Platform::WEB, "").await, 0);
    let (msgs, k1) = b.sync_all(0).await;
    assert_eq!(msgs.iter().filter(|f| f.cmd == cmd::IM).count(), 20);
    drop(b);

    fs.fill();
    // Messages are acknowledged while the store still has room of its own, then refused with
    // status 70, each promptly.
    let mut i = 20;
    let mut refusals = 0;
    while refusals < 20 {
        assert!(i < 5000, "the disk never filled up for the store");
        let t0 = Instant::now();
        let status = send(&mut a, i).await;
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "a refusal took {:?}",
            t0.elapsed()
        );
        if status == AckStatus::SUCCESS {
            assert_eq!(
                refusals, 0,
                "acknowledged after a refusal while the disk is full"
            );
            acked.push(format!("m{i}"));
        } else {
            assert_eq!(status, AckStatus::STORAGE_FAILED);
            refused.push(format!("m{i}"));
            refusals += 1;
        }
        i += 1;
    }
    // Grants fail with 503 (SQLite cannot grow its files).
    let mut grant_503 = false;
    for uid in 100..150 {
        match grant_status(&s, uid).await {
            503 => {
                grant_503 = true;
                break;
            }
            200 => {}
            other => panic!("grant answered {other}"),
        }
    }
    assert!(grant_503, "grants kept working on a full disk");
    // A device seen before still logs in (nothing to write).
    let mut c = Client::tcp(s.tcp).await;
    assert_eq!(
        c.auth(&token_a, 2, proto::Platform::ANDROID, "a-phone")
            .await,
        0
    );
    drop(c);
    // B reports how far it has read; the hint waits in memory.
    let mut b = Client::tcp(s.tcp).await;
    assert_eq!(b.auth(&token_b, 2, proto::Platform::WEB, "").await, 0);
    b.send_body(&Body::SyncKey(k1), 0).await;
    // Health: alive, not ready, and why.
    let (st, v) = get_json(&s, "/healthz").await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["store"]["state"], "recovering", "{v}");
    assert!(
        v["store"]["reasons"].to_string().contains("No space left"),
        "{v}"
    );
    assert!(v["store"]["since"].as_u64().is_some(), "{v}");
    assert_eq!(v["backend"]["state"], "failing", "{v}");
    assert!(
        v["backend"]["last_error"]["error"]
            .to_string()
            .contains("full"),
        "{v}"
    );
    assert!(v["backend"]["since"].as_u64().is_some(), "{v}");
    let (st, v) = get_json(&s, "/readyz").await;
    assert_eq!(st, 503, "{v}");
    assert_eq!(v["ready"], false, "{v}");
    drop(b);

    fs.free();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (st, v) = get_json(&s, "/readyz").await;
        if st == 200 {
            assert_eq!(v["backend"]["state"], "ok", "{v}");
            assert_ne!(v["store"]["state"], "recovering", "{v}");
            assert_eq!(v["store"]["recoveries"], 1, "{v}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready again after space was freed: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..20 {
        assert_eq!(send(&mut a, i).await, AckStatus::SUCCESS);
        acked.push(format!("m{i}"));
        i += 1;
    }
    assert_eq!(grant_status(&s, 200).await, 200);
    let mut c = Client::tcp(s.tcp).await;
    assert_eq!(
        c.auth(&token_a, 2, proto::Platform::ANDROID, "new-phone")
            .await,
        0
    );
    drop(c);
    drop(a);

    let stored = stored_tags(&s).await;
    assert_eq!(stored, acked, "exactly the acknowledged messages, in order");
    for r in &refused {
        assert!(!stored.contains(r));
    }

    // The hint reported while the disk was full was written at the latest by the final flush.
    let s = s.restart().await.unwrap();
    let (st, v) = get_json(&s, &format!("/get_offline_count?appid={APPID}&uid={B}")).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["data"]["count"], (acked.len() - 20) as u64, "{v}");
    s.stop().await;
}
