//! Moderation: the banned-word filter (JSON `text` only, reload on file change, a bad file keeps
//! the old filter) and live speak-ban events (Redis pub/sub, including another writer and a lost
//! subscription; embedded `set_forbidden`).
#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::time::{Duration, Instant};

use backend::{Backend, EmbeddedOptions, ForbiddenEvent, RedisOptions, WordFilter};
use redis::AsyncCommands;
use serde_json::{json, Value};
use tokio::sync::broadcast;

fn words() -> WordFilter {
    WordFilter::parse("# banned words\n\nbad\n  Spam  \n# comment bad2\n坏蛋\n").expect("parse")
}

#[test]
fn word_file_format() {
    let f = words();
    assert_eq!(f.len(), 3, "comments and blank lines are not words");
    assert_eq!(f.filter_text("nothing here"), None);
    assert_eq!(
        f.filter_text("bad2 is fine?").as_deref(),
        Some("***2 is fine?")
    );
    assert_eq!(f.filter_text("SPAM, spam").as_deref(), Some("****, ****"));
    assert_eq!(f.filter_text("你是坏蛋").as_deref(), Some("你是**"));
    // Noise between the letters does not hide a word; the noise itself stays.
    assert_eq!(f.filter_text("s-p a.m").as_deref(), Some("*-* *.*"));
    assert!(WordFilter::parse("# only comments\n\n")
        .expect("parse")
        .is_empty());
    assert_eq!(WordFilter::empty().filter_text("bad"), None);
}

#[test]
fn filter_json_text_only() {
    let f = words();
    let content = br#"{"text":"this is bad","url":"http://bad.example","n":3}"#;
    let out = f.filter_content(content).expect("filtered");
    let v: Value = serde_json::from_slice(&out).expect("still JSON");
    assert_eq!(
        v,
        json!({"text": "this is ***", "url": "http://bad.example", "n": 3}),
        "only the text field changes"
    );
    // Clean JSON, JSON without a string text, and non-JSON are untouched.
    assert_eq!(f.filter_content(br#"{"text":"all good"}"#), None);
    assert_eq!(f.filter_content(br#"{"url":"bad"}"#), None);
    assert_eq!(f.filter_content(br#"{"text":42}"#), None);
    assert_eq!(f.filter_content(br#"["bad"]"#), None);
    assert_eq!(f.filter_content(b"bad plain text"), None);
    assert_eq!(f.filter_content(&[0xff, 0xfe, b'b', b'a', b'd']), None);
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_on_change_and_bad_file_keeps_the_old_filter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("words.txt");
    std::fs::write(&path, "bad\n").expect("write");
    let shared = WordFilter::try_watch(&path, Duration::from_millis(20)).expect("watch");
    assert_eq!(shared.filter_text("bad ugly").as_deref(), Some("*** ugly"));

    std::fs::write(&path, "bad\nugly\n").expect("rewrite");
    eventually("the new word list is in force", || {
        shared.filter_text("bad ugly").as_deref() == Some("*** ****")
    })
    .await;
    assert_eq!(shared.reloads(), 1);

    // Not UTF-8: the load fails, the previous filter stays.
    std::fs::write(&path, [0xff, 0xfe, 0x00, 0x01, 0x02]).expect("corrupt");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(shared.filter_text("bad ugly").as_deref(), Some("*** ****"));
    assert_eq!(shared.reloads(), 1);
    // A removed file also keeps it.
    std::fs::remove_file(&path).expect("remove");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(shared.filter_text("ugly").as_deref(), Some("****"));
    // A fixed file is picked up again.
    std::fs::write(&path, "nasty\n").expect("fix");
    eventually("the fixed file is in force", || {
        shared.filter_text("nasty ugly").as_deref() == Some("***** ugly")
    })
    .await;
    assert_eq!(shared.reloads(), 2);
    assert_eq!(
        shared.filter_content(br#"{"text":"nasty"}"#),
        Some(br#"{"text":"*****"}"#.to_vec())
    );

    // try_watch refuses a missing file; watch starts empty and picks it up once it appears.
    let later = dir.path().join("later.txt");
    assert!(WordFilter::try_watch(&later, Duration::from_millis(20)).is_err());
    let lenient = WordFilter::watch(&later, Duration::from_millis(20));
    assert!(lenient.current().is_empty());
    std::fs::write(&later, "late\n").expect("write");
    eventually("the late file is loaded", || {
        lenient.filter_text("late").as_deref() == Some("****")
    })
    .await;
}

async fn next_event(rx: &mut broadcast::Receiver<ForbiddenEvent>) -> ForbiddenEvent {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a forbidden event in time")
        .expect("channel open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_events_embedded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = Backend::open_embedded(EmbeddedOptions {
        path: dir.path().join("backend.sqlite3"),
        ..EmbeddedOptions::default()
    })
    .await
    .expect("open");
    let mut rx = b.forbidden_events();
    b.set_forbidden(7, 1001, true).await.expect("set");
    assert_eq!(
        next_event(&mut rx).await,
        ForbiddenEvent {
            appid: 7,
            uid: 1001,
            forbidden: true
        }
    );
    b.set_forbidden(7, 1001, false).await.expect("clear");
    assert_eq!(
        next_event(&mut rx).await,
        ForbiddenEvent {
            appid: 7,
            uid: 1001,
            forbidden: false
        }
    );
    assert!(!b.user_flags(7, 1001).await.expect("flags").forbidden);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_events_from_redis_pubsub() {
    let server = testkit::RedisServer::start();
    let b = Backend::open_redis(RedisOptions {
        url: server.url(),
        ..RedisOptions::default()
    })
    .await
    .expect("open");
    let mut rx = b.forbidden_events();

    // Our own set_forbidden comes back through the channel.
    b.set_forbidden(7, 1001, true).await.expect("set");
    assert_eq!(
        next_event(&mut rx).await,
        ForbiddenEvent {
            appid: 7,
            uid: 1001,
            forbidden: true
        }
    );

    // Another writer (GoBelieve's API server); malformed payloads are skipped.
    let mut conn = redis::Client::open(server.url())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    for payload in ["garbage", "7,abc,1", "7,1002", "8,1002,0"] {
        let _: i64 = conn
            .publish("speak_forbidden", payload)
            .await
            .expect("PUBLISH");
    }
    assert_eq!(
        next_event(&mut rx).await,
        ForbiddenEvent {
            appid: 8,
            uid: 1002,
            forbidden: false
        }
    );

    // The subscription connection is killed: the subscriber reconnects and events flow again.
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut conn)
        .await
        .expect("CLIENT KILL");
    assert!(killed >= 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let receivers: i64 = conn
            .publish("speak_forbidden", "9,3,1")
            .await
            .expect("PUBLISH");
        if receivers > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the subscriber did not come back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        next_event(&mut rx).await,
        ForbiddenEvent {
            appid: 9,
            uid: 3,
            forbidden: true
        }
    );
}
