//! `/healthz` (liveness, 200 with each component's state) and `/readyz` (503 while the node cannot
//! accept messages) follow the store through a failed fsync and its recovery, without a restart,
//! and need no API secret.
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::time::{Duration, Instant};

use common::*;
use proto::{cmd, AckStatus, Body};
use serde_json::Value;

/// `ok`, or `degraded` when the machine's disk happens to be nearly full (the test cannot control
/// that); never `recovering` or `failed`.
fn accepting_state(v: &Value) -> bool {
    v["accepting"] == true && (v["state"] == "ok" || v["state"] == "degraded")
}

async fn get_json(s: &TestServer, path: &str) -> (u16, Value) {
    let (st, body) = http(s.http, "GET", path, &[], b"").await;
    (
        st,
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("{path}: not JSON: {body}")),
    )
}

async fn ack_status(c: &mut Client, receiver: i64, text: &str) -> i8 {
    let seq = c.send_im(1, receiver, text).await;
    let (f, _) = c.recv_until(cmd::ACK).await;
    match body_of(&f) {
        Body::Ack(a) => {
            assert_eq!(a.seq, seq);
            a.status
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn health_and_readiness_follow_a_store_failure_and_its_recovery() {
    let s = TestServer::start().await.unwrap();
    let (st, v) = get_json(&s, "/healthz").await;
    assert_eq!(st, 200);
    assert_ne!(v["status"], "failing", "{v}");
    assert_eq!(v["store"]["mode"], "local", "{v}");
    assert!(accepting_state(&v["store"]), "{v}");
    assert_eq!(v["store"]["recoveries"], 0, "{v}");
    assert_eq!(v["backend"]["kind"], "embedded", "{v}");
    assert_eq!(v["backend"]["state"], "ok", "{v}");
    let (st, v) = get_json(&s, "/readyz").await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["ready"], true, "{v}");

    let store = s.running.as_ref().unwrap().store.clone().unwrap();
    let mut a = Client::login(&s, 1, 2, false, "a").await;
    assert_eq!(ack_status(&mut a, 2, "before").await, AckStatus::SUCCESS);

    store.inject_fsync_failure();
    assert_eq!(
        ack_status(&mut a, 2, "lost").await,
        AckStatus::STORAGE_FAILED
    );
    let (st, v) = get_json(&s, "/readyz").await;
    assert_eq!(st, 503, "{v}");
    assert_eq!(v["ready"], false, "{v}");
    assert!(v["unready_reasons"].to_string().contains("store"), "{v}");
    let (st, v) = get_json(&s, "/healthz").await;
    assert_eq!(st, 200, "liveness stays 200: {v}");
    assert_eq!(v["status"], "failing", "{v}");
    assert_eq!(v["store"]["state"], "recovering", "{v}");
    assert_eq!(v["store"]["accepting"], false, "{v}");
    assert!(
        v["store"]["reasons"]
            .to_string()
            .contains("injected fsync failure"),
        "{v}"
    );
    assert!(v["store"]["since"].as_u64().is_some(), "{v}");
    assert!(v["store"]["last_failure"]["at"].as_u64().is_some(), "{v}");
    let t0 = Instant::now();
    assert_eq!(
        ack_status(&mut a, 2, "lost too").await,
        AckStatus::STORAGE_FAILED
    );
    assert!(t0.elapsed() < Duration::from_secs(2), "refused promptly");

    store.clear_injected_fsync_failure();
    let deadline = Instant::now() + Duration::from_secs(20);
    let v = loop {
        let (st, v) = get_json(&s, "/readyz").await;
        if st == 200 {
            break v;
        }
        assert!(Instant::now() < deadline, "never ready again: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(accepting_state(&v["store"]), "{v}");
    assert_eq!(v["store"]["recoveries"], 1, "{v}");
    assert!(v["store"]["last_failure"]["error"].is_string(), "{v}");
    assert_eq!(ack_status(&mut a, 2, "after").await, AckStatus::SUCCESS);

    let mut b = Client::login(&s, 2, 2, false, "b").await;
    let (msgs, _) = b.sync_all(0).await;
    let texts: Vec<String> = msgs
        .iter()
        .filter(|f| f.cmd == cmd::IM)
        .map(|f| String::from_utf8_lossy(&im_of(f).content).into_owned())
        .collect();
    assert_eq!(texts, ["before", "after"]);
    s.stop().await;
}

#[tokio::test]
async fn health_endpoints_need_no_api_secret() {
    let s = TestServer::start_with(|c| c.api.secret = "hunter2".into())
        .await
        .unwrap();
    let (st, _) = http(s.http, "GET", "/readyz", &[], b"").await;
    assert_eq!(st, 200);
    let (st, _) = http(s.http, "GET", "/healthz", &[], b"").await;
    assert_eq!(st, 200);
    let (st, _) = http(s.http, "GET", "/summary", &[], b"").await;
    assert_eq!(st, 401);
    s.stop().await;
}
