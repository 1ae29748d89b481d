//! PUSH requests become GoBelieve push-queue jobs in Redis (docs/compatibility.md, *GoBelieve's
//! shared state*) for offline receivers only, with a private `redis-server`.
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::{inner, TestRouter, WAIT};
use proto::Frame;
use route::{PushBackend, RouterConfig};
use testkit::RedisServer;

async fn lrange(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Vec<String> {
    redis::cmd("LRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await
        .expect("LRANGE")
}

async fn wait_len(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
    n: usize,
) -> Vec<String> {
    let start = Instant::now();
    loop {
        let v = lrange(conn, key).await;
        if v.len() >= n {
            return v;
        }
        assert!(start.elapsed() < WAIT, "{key}: {v:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn customer(
    sender_appid: i64,
    sender: i64,
    receiver_appid: i64,
    receiver: i64,
    text: &str,
) -> bytes::Bytes {
    let mut body = BytesMut::new();
    for v in [sender_appid, sender, receiver_appid, receiver] {
        body.extend_from_slice(&v.to_be_bytes());
    }
    body.extend_from_slice(&[0, 0, 0, 9]);
    body.extend_from_slice(text.as_bytes());
    Frame {
        seq: 0,
        cmd: proto::cmd::CUSTOMER_V2,
        version: 2,
        flag: 0,
        body: body.freeze(),
    }
    .to_bytes()
}

fn system(text: &str) -> bytes::Bytes {
    Frame {
        seq: 0,
        cmd: proto::cmd::SYSTEM,
        version: 2,
        flag: 0,
        body: bytes::Bytes::copy_from_slice(text.as_bytes()),
    }
    .to_bytes()
}

#[tokio::test]
async fn push_jobs_for_offline_receivers_only() {
    let redis_server = RedisServer::start();
    let mut config = RouterConfig::default();
    config.push.backend = PushBackend::Redis;
    config.push.redis.url = redis_server.url();
    let r = TestRouter::start(config).await;
    let client = redis::Client::open(redis_server.url()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");

    let mut a = r.node().await;
    let mut b = r.node().await;
    b.subscribe(7, 2, true).await; // online
    b.subscribe(7, 3, false).await; // subscribed, not online: offline for push
    a.subscribe(7, 2, false).await; // another node without online: still online overall
    r.wait_subscriptions(&[(1, 0), (2, 0)]).await;

    // A peer IM to an online user: no job. To an offline one: a job naming the IM's receiver.
    a.push(
        7,
        &[2],
        &inner(proto::cmd::IM, 1, 2, "{\"text\":\"online\"}"),
    )
    .await;
    a.push(7, &[3], &inner(proto::cmd::IM, 1, 3, "{\"text\":\"hi\"}"))
        .await;
    // A group message: one job listing only the offline receivers.
    a.push(
        7,
        &[2, 3, 4],
        &inner(proto::cmd::GROUP_IM, 1, 3110, "{\"text\":\"group\"}"),
    )
    .await;
    // Everyone online: no group job.
    a.push(
        7,
        &[2],
        &inner(proto::cmd::GROUP_IM, 1, 3110, "{\"text\":\"nobody\"}"),
    )
    .await;
    // A system message: the first offline receiver.
    a.push(7, &[2, 5, 6], &system("{\"sys\":1}")).await;
    // A customer message: its own fields.
    a.push(8, &[20], &customer(7, 10, 8, 20, "{\"text\":\"help\"}"))
        .await;
    // A command that gets no job.
    a.push(7, &[9], &inner(proto::cmd::ROOM_IM, 1, 9, "room"))
        .await;

    let peer = wait_len(&mut conn, "push_queue", 1).await;
    assert_eq!(
        peer,
        vec![r#"{"appid":7,"content":"{\"text\":\"hi\"}","receiver":3,"sender":1}"#]
    );
    let group = wait_len(&mut conn, "group_push_queue", 1).await;
    assert_eq!(
        group,
        vec![
            r#"{"appid":7,"content":"{\"text\":\"group\"}","group_id":3110,"receivers":[3,4],"sender":1}"#
        ]
    );
    let sys = wait_len(&mut conn, "system_push_queue", 1).await;
    assert_eq!(
        sys,
        vec![r#"{"appid":7,"content":"{\"sys\":1}","receiver":5}"#]
    );
    let cust = wait_len(&mut conn, "customer_push_queue_v2", 1).await;
    assert_eq!(
        cust,
        vec![
            r#"{"appid":8,"content":"{\"text\":\"help\"}","receiver":20,"receiver_appid":8,"sender":10,"sender_appid":7}"#
        ]
    );

    // A large group arrives in chunks; every offline receiver gets into some job.
    let receivers: Vec<i64> = (100..2600).collect();
    a.push(7, &receivers, &inner(proto::cmd::GROUP_IM, 1, 3111, "big"))
        .await;
    let start = Instant::now();
    let mut listed: Vec<i64> = Vec::new();
    while listed.len() < receivers.len() {
        listed.clear();
        for job in lrange(&mut conn, "group_push_queue").await {
            let v: serde_json::Value = serde_json::from_str(&job).expect("json");
            if v["group_id"] == 3111 {
                listed.extend(
                    v["receivers"]
                        .as_array()
                        .expect("list")
                        .iter()
                        .filter_map(|x| x.as_i64()),
                );
            }
        }
        assert!(
            start.elapsed() < WAIT,
            "{} of {}",
            listed.len(),
            receivers.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    listed.sort_unstable();
    assert_eq!(listed, receivers);

    // Still exactly one peer job (the online receiver got none).
    assert_eq!(lrange(&mut conn, "push_queue").await.len(), 1);
    let s = r.json("/summary").await;
    assert_eq!(s["push"]["sink"], "redis");
    // Seven requests plus the big group in three chunks of at most 1000.
    assert_eq!(s["push"]["requests"], 7 + 3, "{s}");
    // Peer, group, system, customer, and one job per chunk of the big group.
    assert_eq!(s["push"]["jobs"], 4 + 3, "{s}");
    r.stop().await;
}

#[tokio::test]
async fn push_disabled_makes_no_jobs() {
    let redis_server = RedisServer::start();
    let r = TestRouter::start(RouterConfig::default()).await;
    let mut a = r.node().await;
    a.push(7, &[3], &inner(proto::cmd::IM, 1, 3, "x")).await;
    r.wait_summary("the request", |s| s["push"]["requests"] == 1)
        .await;
    let client = redis::Client::open(redis_server.url()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    assert!(lrange(&mut conn, "push_queue").await.is_empty());
    assert_eq!(r.json("/summary").await["push"]["jobs"], 0);
    r.stop().await;
}
