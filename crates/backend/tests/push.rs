//! The offline-push sink against real services: a private Redis (the GoBelieve lists of
//! docs/compatibility.md, *GoBelieve's shared state*) and an axum webhook server on 127.0.0.1:0
//! that can fail on purpose.
#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use backend::{BackendError, PushJob, PushSink, RedisPushOptions, WebhookOptions};
use parking_lot::Mutex;
use redis::AsyncCommands;
use serde_json::{json, Value};

async fn raw_redis(server: &testkit::RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

fn redis_options(server: &testkit::RedisServer) -> RedisPushOptions {
    RedisPushOptions {
        url: server.url(),
        ..RedisPushOptions::default()
    }
}

async fn list(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Vec<String> {
    conn.lrange(key, 0, -1).await.expect("LRANGE")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_lists_get_the_gobelieve_json() {
    let server = testkit::RedisServer::start();
    let sink = PushSink::redis(redis_options(&server)).await.expect("sink");
    assert_eq!(sink.kind(), "redis");
    let content = r#"{"text":"hi"}"#.to_owned();
    sink.push(PushJob::Peer {
        appid: 7,
        sender: 1,
        receiver: 2,
        content: content.clone(),
    });
    sink.push(PushJob::Group {
        appid: 7,
        sender: 1,
        group_id: 3110,
        receivers: vec![3, 4],
        content: content.clone(),
    });
    sink.push(PushJob::System {
        appid: 7,
        receiver: 2,
        content: "sys".into(),
    });
    sink.push(PushJob::Customer {
        sender_appid: 7,
        sender: 1,
        receiver_appid: 8,
        receiver: 9,
        content: content.clone(),
    });
    sink.push(PushJob::Peer {
        appid: 7,
        sender: 1,
        receiver: 5,
        content: "second".into(),
    });
    sink.flush().await.expect("flush");
    assert_eq!(sink.delivered(), 5);
    assert_eq!(sink.dropped(), 0);

    let mut conn = raw_redis(&server).await;
    assert_eq!(
        list(&mut conn, "push_queue").await,
        vec![
            r#"{"appid":7,"content":"{\"text\":\"hi\"}","receiver":2,"sender":1}"#.to_owned(),
            r#"{"appid":7,"content":"second","receiver":5,"sender":1}"#.to_owned(),
        ]
    );
    assert_eq!(
        list(&mut conn, "group_push_queue").await,
        vec![r#"{"appid":7,"content":"{\"text\":\"hi\"}","group_id":3110,"receivers":[3,4],"sender":1}"#.to_owned()]
    );
    assert_eq!(
        list(&mut conn, "system_push_queue").await,
        vec![r#"{"appid":7,"content":"sys","receiver":2}"#.to_owned()]
    );
    assert_eq!(
        list(&mut conn, "customer_push_queue_v2").await,
        vec![r#"{"appid":8,"content":"{\"text\":\"hi\"}","receiver":9,"receiver_appid":8,"sender":1,"sender_appid":7}"#.to_owned()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_group_jobs_are_chunked_and_batches_bounded() {
    let server = testkit::RedisServer::start();
    let sink = PushSink::redis(RedisPushOptions {
        batch: 7,
        max_receivers_per_job: 1000,
        ..redis_options(&server)
    })
    .await
    .expect("sink");
    sink.push(PushJob::Group {
        appid: 7,
        sender: 1,
        group_id: 42,
        receivers: (1..=2500).collect(),
        content: "big".into(),
    });
    // An empty receiver list is no job at all.
    sink.push(PushJob::Group {
        appid: 7,
        sender: 1,
        group_id: 42,
        receivers: vec![],
        content: "nobody".into(),
    });
    for receiver in 0..100 {
        sink.push(PushJob::Peer {
            appid: 7,
            sender: 1,
            receiver,
            content: "x".into(),
        });
    }
    sink.flush().await.expect("flush");
    assert_eq!(sink.delivered(), 103);

    let mut conn = raw_redis(&server).await;
    let jobs: Vec<Value> = list(&mut conn, "group_push_queue")
        .await
        .iter()
        .map(|j| serde_json::from_str(j).expect("json"))
        .collect();
    let sizes: Vec<usize> = jobs
        .iter()
        .map(|j| j["receivers"].as_array().expect("receivers").len())
        .collect();
    assert_eq!(sizes, vec![1000, 1000, 500]);
    let all: Vec<i64> = jobs
        .iter()
        .flat_map(|j| j["receivers"].as_array().expect("array").clone())
        .map(|v| v.as_i64().expect("int"))
        .collect();
    assert_eq!(all, (1..=2500).collect::<Vec<i64>>());
    assert!(jobs
        .iter()
        .all(|j| j["group_id"] == 42 && j["content"] == "big" && j["sender"] == 1));
    // Jobs keep their order across batches.
    let peers: Vec<i64> = list(&mut conn, "push_queue")
        .await
        .iter()
        .map(|j| {
            serde_json::from_str::<Value>(j).expect("json")["receiver"]
                .as_i64()
                .expect("int")
        })
        .collect();
    assert_eq!(peers, (0..100).collect::<Vec<i64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_failed_batch_is_retried_not_dropped() {
    let server = testkit::RedisServer::start();
    let mut conn = raw_redis(&server).await;
    let sink = PushSink::redis(redis_options(&server)).await.expect("sink");
    // Redis refuses writes (out of memory) …
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("1")
        .query_async(&mut conn)
        .await
        .expect("CONFIG SET");
    sink.push(PushJob::System {
        appid: 7,
        receiver: 2,
        content: "later".into(),
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(sink.delivered(), 0);
    assert_eq!(sink.dropped(), 0);
    // … then recovers: the batch lands, once.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("0")
        .query_async(&mut conn)
        .await
        .expect("CONFIG SET");
    sink.flush().await.expect("flush");
    assert_eq!(sink.delivered(), 1);
    assert_eq!(sink.dropped(), 0);
    assert_eq!(
        list(&mut conn, "system_push_queue").await,
        vec![r#"{"appid":7,"content":"later","receiver":2}"#.to_owned()]
    );
}

/// A webhook server that answers `status` to the first `fail_first` requests, 200 afterwards.
#[derive(Default)]
struct Hook {
    fail_first: AtomicUsize,
    fail_status: Mutex<Option<StatusCode>>,
    /// Never answer (to fill the queue).
    stall: std::sync::atomic::AtomicBool,
    requests: AtomicUsize,
    /// Every request body, failed attempts included.
    bodies: Mutex<Vec<String>>,
    batches: Mutex<Vec<Value>>,
    auth: Mutex<Vec<Option<String>>>,
}

async fn hook_handler(
    State(hook): State<Arc<Hook>>,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    hook.requests.fetch_add(1, Ordering::SeqCst);
    hook.bodies.lock().push(body.clone());
    hook.auth.lock().push(
        headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    );
    if hook.stall.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    let failing = hook
        .fail_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        return hook
            .fail_status
            .lock()
            .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    }
    hook.batches
        .lock()
        .push(serde_json::from_str(&body).expect("webhook body is JSON"));
    StatusCode::OK
}

async fn start_hook(hook: Arc<Hook>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = Router::new()
        .route("/push", post(hook_handler))
        .with_state(hook);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

fn webhook_options(addr: SocketAddr) -> WebhookOptions {
    WebhookOptions {
        url: format!("http://{addr}/push"),
        secret: Some("s3cret".into()),
        timeout_ms: 2000,
        backoff_ms: 20,
        ..WebhookOptions::default()
    }
}

fn peer(receiver: i64) -> PushJob {
    PushJob::Peer {
        appid: 7,
        sender: 1,
        receiver,
        content: "{\"text\":\"hi\"}".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_receives_typed_batches_after_retries_once() {
    let hook = Arc::new(Hook::default());
    hook.fail_first.store(2, Ordering::SeqCst);
    let addr = start_hook(hook.clone()).await;
    let sink = PushSink::webhook(webhook_options(addr)).expect("sink");
    assert_eq!(sink.kind(), "webhook");
    sink.push(peer(2));
    sink.push(PushJob::Group {
        appid: 7,
        sender: 1,
        group_id: 3,
        receivers: vec![4, 5],
        content: "g".into(),
    });
    sink.push(PushJob::System {
        appid: 7,
        receiver: 2,
        content: "s".into(),
    });
    sink.push(PushJob::Customer {
        sender_appid: 7,
        sender: 1,
        receiver_appid: 8,
        receiver: 9,
        content: "c".into(),
    });
    sink.flush().await.expect("flush");
    assert_eq!(sink.delivered(), 4);
    assert_eq!(sink.dropped(), 0);

    let batches = hook.batches.lock().clone();
    let jobs: Vec<Value> = batches
        .iter()
        .flat_map(|b| b.as_array().expect("a JSON array").clone())
        .collect();
    assert_eq!(
        jobs,
        vec![
            json!({"type": "peer", "appid": 7, "sender": 1, "receiver": 2, "content": "{\"text\":\"hi\"}"}),
            json!({"type": "group", "appid": 7, "sender": 1, "group_id": 3, "receivers": [4, 5], "content": "g"}),
            json!({"type": "system", "appid": 7, "receiver": 2, "content": "s"}),
            json!({"type": "customer", "appid": 8, "sender_appid": 7, "sender": 1, "receiver_appid": 8, "receiver": 9, "content": "c"}),
        ],
        "every job arrives exactly once, in order"
    );
    // Two failures, then the successful attempt(s).
    assert_eq!(hook.requests.load(Ordering::SeqCst), 2 + batches.len());
    assert!(hook
        .auth
        .lock()
        .iter()
        .all(|a| a.as_deref() == Some("Bearer s3cret")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_gives_up_after_max_attempts_and_counts() {
    let hook = Arc::new(Hook::default());
    hook.fail_first.store(1000, Ordering::SeqCst);
    let addr = start_hook(hook.clone()).await;
    let sink = PushSink::webhook(WebhookOptions {
        max_attempts: 3,
        secret: None,
        ..webhook_options(addr)
    })
    .expect("sink");
    sink.push(peer(1));
    sink.push(peer(2));
    sink.flush().await.expect("flush");
    assert_eq!(sink.delivered(), 0);
    assert_eq!(sink.dropped(), 2);
    // The two jobs form one batch, or two when the sink's worker took the first before the second
    // was queued: either way every batch is attempted exactly three times.
    let bodies = hook.bodies.lock().clone();
    let mut distinct = bodies.clone();
    distinct.dedup();
    assert!(matches!(distinct.len(), 1 | 2), "{bodies:?}");
    for b in &distinct {
        assert_eq!(
            bodies.iter().filter(|x| *x == b).count(),
            3,
            "three attempts of {b}"
        );
    }
    let receivers: Vec<i64> = distinct
        .iter()
        .flat_map(|b| serde_json::from_str::<Vec<Value>>(b).expect("JSON array"))
        .map(|j| j["receiver"].as_i64().expect("receiver"))
        .collect();
    assert_eq!(receivers, vec![1, 2]);
    assert_eq!(hook.requests.load(Ordering::SeqCst), 3 * distinct.len());
    assert!(hook.auth.lock().iter().all(Option::is_none));

    // A 4xx answer is not retried.
    hook.fail_first.store(1, Ordering::SeqCst);
    *hook.fail_status.lock() = Some(StatusCode::BAD_REQUEST);
    sink.push(peer(3));
    sink.flush().await.expect("flush");
    assert_eq!(sink.dropped(), 3);
    assert_eq!(hook.requests.load(Ordering::SeqCst), 3 * distinct.len() + 1);
    // And the sink keeps working afterwards.
    sink.push(peer(4));
    sink.flush().await.expect("flush");
    assert_eq!(sink.delivered(), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn full_queue_drops_and_counts() {
    let hook = Arc::new(Hook::default());
    hook.stall.store(true, Ordering::SeqCst);
    let addr = start_hook(hook.clone()).await;
    let sink = PushSink::webhook(WebhookOptions {
        queue_capacity: 2,
        batch: 1,
        ..webhook_options(addr)
    })
    .expect("sink");
    // On this single-threaded runtime the worker cannot run between these calls: exactly two
    // fit, the rest are dropped and counted.
    for receiver in 0..10 {
        sink.push(peer(receiver));
    }
    assert_eq!(sink.dropped(), 8);
    // A group job split into 3 chunks counts 3 drops.
    sink.push(PushJob::Group {
        appid: 7,
        sender: 1,
        group_id: 3,
        receivers: (1..=2001).collect(),
        content: "g".into(),
    });
    assert_eq!(sink.dropped(), 11);
    assert_eq!(sink.delivered(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_webhook_gives_up_and_bad_options_are_refused() {
    // Nothing listens on this port: every attempt fails at once.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let sink = PushSink::webhook(WebhookOptions {
        max_attempts: 2,
        ..webhook_options(addr)
    })
    .expect("sink");
    sink.push(peer(1));
    let started = Instant::now();
    sink.flush()
        .await
        .expect("flush ends once the batch is given up");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(sink.dropped(), 1);

    for bad in [
        WebhookOptions {
            url: "ftp://example.com/push".into(),
            ..WebhookOptions::default()
        },
        WebhookOptions {
            url: "not a url".into(),
            ..WebhookOptions::default()
        },
        WebhookOptions {
            queue_capacity: 0,
            ..WebhookOptions::default()
        },
        WebhookOptions {
            max_attempts: 0,
            ..WebhookOptions::default()
        },
        WebhookOptions {
            secret: Some("bad\nsecret".into()),
            ..WebhookOptions::default()
        },
    ] {
        assert!(
            matches!(
                PushSink::webhook(bad.clone()),
                Err(BackendError::InvalidArgument(_))
            ),
            "{bad:?}"
        );
    }
    // Disabled does nothing and counts nothing.
    let off = PushSink::Disabled;
    off.push(peer(1));
    off.flush().await.expect("flush");
    assert_eq!(
        (off.delivered(), off.dropped(), off.kind()),
        (0, 0, "disabled")
    );
}
