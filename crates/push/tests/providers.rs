//! The push senders against the local APNs/FCM stand-in (`push::mock`: HTTP/2 over TLS, checking
//! the ES256 provider token, the OAuth2 JWT-bearer grant and the FCM bearer), with a real embedded
//! backend holding devices, names, unread counts and do-not-disturb settings.
#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::sync::Arc;
use std::time::{Duration, Instant};

use backend::{Backend, DndScope, EmbeddedOptions, NativePush, PushJob, PushProvider};
use push::mock::{MockProvider, Reply};
use push::{AppPush, NativeOptions, Pusher};
use serde_json::json;

const APPID: i64 = 7;
const WAIT: Duration = Duration::from_secs(10);

fn hex_token(n: u32) -> String {
    format!("{:064x}", 0xabcd_0000_u64 + u64::from(n))
}

async fn backend(dir: &std::path::Path) -> Backend {
    Backend::open_embedded(EmbeddedOptions {
        path: dir.join("backend.db"),
        ..EmbeddedOptions::default()
    })
    .await
    .unwrap()
}

fn options(mock: &MockProvider, dir: &std::path::Path) -> NativeOptions {
    let (ca, apns, fcm) = mock.write_credentials(dir, "com.example.chat");
    NativeOptions {
        ca_file: ca,
        backoff_ms: 50,
        max_backoff_ms: 2000,
        timeout_ms: 3000,
        apps: vec![AppPush {
            appid: APPID,
            language: "en".into(),
            apns: Some(apns),
            fcm: Some(fcm),
        }],
        ..NativeOptions::default()
    }
}

fn peer(sender: i64, receiver: i64, text: &str) -> PushJob {
    PushJob::Peer {
        appid: APPID,
        sender,
        receiver,
        content: json!({ "text": text }).to_string(),
    }
}

#[tokio::test]
async fn an_offline_message_reaches_each_device_once_with_token_topic_badge_and_text() {
    let dir = tempfile::tempdir().unwrap();
    let mock = MockProvider::start().await;
    let b = backend(dir.path()).await;
    b.grant(APPID, 1, "Alice").await.unwrap();
    b.bind_devices(
        APPID,
        2,
        &[
            (PushProvider::Apns, hex_token(1)),
            (PushProvider::PushKit, hex_token(2)),
            (PushProvider::Gcm, "fcm-token-2".into()),
        ],
    )
    .await
    .unwrap();
    b.set_unread(APPID, 2, 4);
    let pusher = Pusher::start(&options(&mock, dir.path()), dir.path(), b.clone())
        .await
        .unwrap();
    pusher.push(peer(1, 2, "hello there"));
    let apns = mock.wait_for("apns", 2, WAIT).await;
    let fcm = mock.wait_for("fcm", 1, WAIT).await;
    pusher.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(mock.count("apns"), 2, "one request per Apple device");
    assert_eq!(mock.count("fcm"), 1, "one request per Android device");
    assert_eq!(mock.count("token"), 1, "one OAuth token, cached");
    assert!(
        mock.requests_of("token")[0].authorized,
        "RS256 grant verified"
    );

    let alert = apns
        .iter()
        .find(|r| r.path == format!("/3/device/{}", hex_token(1)))
        .expect("alert to the apns token");
    assert!(alert.authorized, "ES256 provider token verified");
    assert_eq!(alert.version, "HTTP/2.0");
    assert_eq!(alert.headers["apns-topic"], "com.example.chat");
    assert_eq!(alert.headers["apns-push-type"], "alert");
    assert_eq!(alert.headers["apns-priority"], "10");
    assert!(alert.headers["apns-expiration"].parse::<u64>().unwrap() > 0);
    assert_eq!(alert.body["aps"]["alert"]["title"], "Alice");
    assert_eq!(alert.body["aps"]["alert"]["body"], "hello there");
    assert_eq!(
        alert.body["aps"]["badge"], 5,
        "stored unread count plus this message"
    );
    assert_eq!(alert.body["sender"], 1);
    let voip = apns
        .iter()
        .find(|r| r.path == format!("/3/device/{}", hex_token(2)))
        .expect("voip push to the pushkit token");
    assert_eq!(voip.headers["apns-topic"], "com.example.chat.voip");
    assert_eq!(voip.headers["apns-push-type"], "voip");

    let m = &fcm[0];
    assert!(m.authorized, "bearer is the issued access token");
    assert_eq!(m.body["message"]["token"], "fcm-token-2");
    assert_eq!(m.body["message"]["notification"]["title"], "Alice");
    assert_eq!(m.body["message"]["notification"]["body"], "hello there");
    assert_eq!(
        m.body["message"]["android"]["notification"]["notification_count"],
        5
    );
    assert_eq!(m.body["message"]["data"]["sender"], "1");
    assert_eq!(b.unread(APPID, 2).await.unwrap(), 5);
    let st = pusher.stats();
    assert_eq!((st.sent, st.failed, st.dropped), (3, 0, 0));
    assert_eq!(pusher.live_jobs(), 0);
}

#[tokio::test]
async fn placeholders_group_titles_and_do_not_disturb() {
    let dir = tempfile::tempdir().unwrap();
    let mock = MockProvider::start().await;
    let b = backend(dir.path()).await;
    for uid in [2, 3, 4] {
        b.bind_devices(APPID, uid, &[(PushProvider::Apns, hex_token(uid as u32))])
            .await
            .unwrap();
    }
    // 3 mutes group 50; 4 mutes everything.
    b.set_dnd(APPID, 3, DndScope::Group(50), true)
        .await
        .unwrap();
    b.set_dnd(APPID, 4, DndScope::User, true).await.unwrap();
    let pusher = Pusher::start(&options(&mock, dir.path()), dir.path(), b.clone())
        .await
        .unwrap();
    pusher.push(PushJob::Group {
        appid: APPID,
        sender: 1,
        group_id: 50,
        receivers: vec![2, 3, 4],
        content: json!({"image2": {"url": "http://x/y.png"}}).to_string(),
    });
    let got = mock.wait_for("apns", 1, WAIT).await;
    pusher.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        mock.count("apns"),
        1,
        "only the member without do-not-disturb"
    );
    assert_eq!(got[0].path, format!("/3/device/{}", hex_token(2)));
    assert_eq!(got[0].body["aps"]["alert"]["body"], "[image]");
    assert_eq!(got[0].body["group_id"], 50);
    // 3 gets peer messages; turning the group back on lets group pushes through.
    b.set_dnd(APPID, 3, DndScope::Group(50), false)
        .await
        .unwrap();
    pusher.push(peer(1, 3, "direct"));
    pusher.push(PushJob::Group {
        appid: APPID,
        sender: 1,
        group_id: 50,
        receivers: vec![3],
        content: json!({"audio": {"url": "u", "duration": 2}}).to_string(),
    });
    mock.wait_for("apns", 3, WAIT).await;
    pusher.flush().await.unwrap();
    let bodies: Vec<String> = mock.requests_of("apns")[1..]
        .iter()
        .map(|r| r.body["aps"]["alert"]["body"].as_str().unwrap().to_string())
        .collect();
    assert!(
        bodies.contains(&"direct".to_string()) && bodies.contains(&"[voice]".to_string()),
        "{bodies:?}"
    );
}

#[tokio::test]
async fn dead_tokens_are_unbound_and_not_tried_again() {
    let dir = tempfile::tempdir().unwrap();
    let mock = MockProvider::start().await;
    let b = backend(dir.path()).await;
    b.bind_devices(
        APPID,
        2,
        &[
            (PushProvider::Apns, hex_token(1)),
            (PushProvider::Gcm, "dead-fcm".into()),
        ],
    )
    .await
    .unwrap();
    mock.script(
        "apns",
        [Reply::Status {
            status: 410,
            body: json!({"reason": "Unregistered", "timestamp": 1}),
            retry_after: None,
        }],
    );
    mock.script(
        "fcm",
        [Reply::Status {
            status: 404,
            body: json!({"error": {"code": 404, "status": "NOT_FOUND", "details": [
                {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}]}}),
            retry_after: None,
        }],
    );
    let pusher = Pusher::start(&options(&mock, dir.path()), dir.path(), b.clone())
        .await
        .unwrap();
    pusher.push(peer(1, 2, "are you there"));
    mock.wait_for("apns", 1, WAIT).await;
    mock.wait_for("fcm", 1, WAIT).await;
    pusher.flush().await.unwrap();
    assert_eq!(pusher.stats().tokens_removed, 2);
    assert!(
        b.devices(APPID, 2).await.unwrap().is_empty(),
        "both tokens unbound"
    );
    pusher.push(peer(1, 2, "again"));
    pusher.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        (mock.count("apns"), mock.count("fcm")),
        (1, 1),
        "not tried again"
    );
}

#[tokio::test]
async fn unavailable_providers_are_retried_after_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let mock = MockProvider::start().await;
    let b = backend(dir.path()).await;
    b.bind_devices(
        APPID,
        2,
        &[
            (PushProvider::Apns, hex_token(1)),
            (PushProvider::Gcm, "g".into()),
        ],
    )
    .await
    .unwrap();
    mock.script(
        "apns",
        [Reply::Status {
            status: 503,
            body: json!({"reason": "ServiceUnavailable"}),
            retry_after: Some(1),
        }],
    );
    mock.script(
        "fcm",
        [Reply::Status {
            status: 429,
            body: json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED"}}),
            retry_after: Some(1),
        }],
    );
    let pusher = Pusher::start(&options(&mock, dir.path()), dir.path(), b.clone())
        .await
        .unwrap();
    pusher.push(peer(1, 2, "retry me"));
    let apns = mock.wait_for("apns", 2, WAIT).await;
    let fcm = mock.wait_for("fcm", 2, WAIT).await;
    pusher.flush().await.unwrap();
    assert_eq!((apns.len(), fcm.len()), (2, 2));
    for r in [&apns, &fcm] {
        let gap = r[1].at - r[0].at;
        assert!(
            gap >= Duration::from_millis(900),
            "Retry-After honoured: {gap:?}"
        );
    }
    let st = pusher.stats();
    assert_eq!((st.sent, st.retried, st.failed), (2, 2, 0));
    assert_eq!(b.devices(APPID, 2).await.unwrap().len(), 2, "tokens kept");
}

#[tokio::test]
async fn a_hanging_provider_never_blocks_push_calls_and_the_other_provider() {
    let dir = tempfile::tempdir().unwrap();
    let mock = MockProvider::start().await;
    let b = backend(dir.path()).await;
    for uid in 2..=41 {
        b.bind_devices(
            APPID,
            uid,
            &[
                (PushProvider::Apns, hex_token(uid as u32)),
                (PushProvider::Gcm, format!("g{uid}")),
            ],
        )
        .await
        .unwrap();
    }
    mock.always("apns", Some(Reply::Hang));
    let mut opts = options(&mock, dir.path());
    opts.concurrency = 4;
    opts.timeout_ms = 60_000;
    let pusher = Pusher::start(&opts, dir.path(), b.clone()).await.unwrap();
    let started = Instant::now();
    for uid in 2..=41 {
        pusher.push(peer(1, uid, "x"));
    }
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "push() never waits"
    );
    let fcm = mock.wait_for("fcm", 40, WAIT).await;
    assert_eq!(fcm.len(), 40, "FCM is not held up by a hanging APNs");
    assert_eq!(
        mock.count("apns"),
        4,
        "at most `concurrency` requests to the hanging provider"
    );
}

/// A crash (the runtime dies with every task) with notifications queued: after a restart on the
/// same data directory the unclaimed ones are sent, and no device gets the job twice.
#[test]
fn queued_jobs_survive_a_crash_and_no_device_gets_one_twice() {
    let dir = tempfile::tempdir().unwrap();
    let main = tokio::runtime::Runtime::new().unwrap();
    let mock = main.block_on(MockProvider::start());
    mock.always("apns", Some(Reply::Hang));
    let mut opts = options(&mock, dir.path());
    opts.concurrency = 2;
    opts.timeout_ms = 60_000;
    let path = dir.path().to_path_buf();
    {
        let crashing = tokio::runtime::Runtime::new().unwrap();
        let opts = opts.clone();
        crashing.block_on(async {
            let b = backend(&path).await;
            for uid in 2..=11 {
                b.bind_devices(APPID, uid, &[(PushProvider::Apns, hex_token(uid as u32))])
                    .await
                    .unwrap();
            }
            let pusher = Pusher::start(&opts, &path, b).await.unwrap();
            for uid in 2..=11 {
                pusher.push(peer(1, uid, "survive"));
            }
            let deadline = Instant::now() + WAIT;
            while mock.count("apns") < 2 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert_eq!(mock.count("apns"), 2, "two in flight, the rest queued");
            assert_eq!(pusher.live_jobs(), 8, "jobs with unclaimed devices");
        });
        // Every task dies where it is, like the process under kill -9.
        crashing.shutdown_background();
    }
    mock.always("apns", None);
    main.block_on(async {
        let b = backend(&path).await;
        let pusher = Pusher::start(&opts, &path, b).await.unwrap();
        mock.wait_for("apns", 10, WAIT).await;
        pusher.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut per_device = std::collections::HashMap::new();
        for r in mock.requests_of("apns") {
            *per_device.entry(r.path).or_insert(0) += 1;
        }
        assert_eq!(
            per_device.len(),
            10,
            "every device got the job: {per_device:?}"
        );
        assert!(
            per_device.values().all(|&n| n == 1),
            "none twice: {per_device:?}"
        );
        assert_eq!(pusher.live_jobs(), 0);
    });
    drop(mock);
}

#[tokio::test]
async fn bad_credentials_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mock = MockProvider::start().await;
    let b = backend(dir.path()).await;
    let mut opts = options(&mock, dir.path());
    std::fs::write(dir.path().join("bad.p8"), "not a key").unwrap();
    opts.apps[0].apns.as_mut().unwrap().key_file = dir.path().join("bad.p8").display().to_string();
    let err = Pusher::start(&opts, dir.path(), b.clone())
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("apns.key_file"), "{err}");
    let mut opts = options(&mock, dir.path());
    opts.apps[0].language = "fr".into();
    let err = Pusher::start(&opts, dir.path(), b).await.err().unwrap();
    assert!(err.to_string().contains("texts.fr"), "{err}");
    let _ = Arc::new(());
}
