//! The embedded backend on a filesystem that fills up (a small tmpfs mounted by the test; needs
//! root): writes fail while the disk is full and its health says so, and once space is freed every
//! write works again at once — no connection is left holding SQLite's write lock ("database is
//! locked"), every grant that was answered with a token is really stored, and the write-behind
//! sync-key hints reported meanwhile reach the file.
#![allow(clippy::unwrap_used)] // a test fails by panicking

use std::path::Path;
use std::time::{Duration, Instant};

use backend::{Backend, EmbeddedOptions};

use testkit::Tmpfs;

async fn open(path: &Path) -> Backend {
    Backend::open_embedded(EmbeddedOptions {
        path: path.to_path_buf(),
        flush_interval_ms: 50,
        ..EmbeddedOptions::default()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_disk_was_full_every_write_works_again_and_nothing_answered_is_lost() {
    let fs = Tmpfs::mount(4);
    let db = fs.path().join("banter.db");
    let b = open(&db).await;
    let mut tokens = Vec::new();
    for uid in 1..=20 {
        tokens.push((uid, b.grant(7, uid, "before").await.unwrap()));
    }
    fs.fill();

    // Grants fail once SQLite cannot grow its files; the health says so.
    let name = "x".repeat(200);
    let mut failed = false;
    for uid in 1000..3000 {
        match b.grant(7, uid, &name).await {
            Ok(t) => tokens.push((uid, t)),
            Err(e) => {
                assert!(e.to_string().contains("full"), "{e}");
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "the disk never filled");
    let h = b.health();
    assert!(h.failing, "{h:?}");
    assert!(h.last_error.as_ref().unwrap().0.contains("full"), "{h:?}");
    // Hints reported now stay in memory until they can be written.
    for uid in 1..=20 {
        b.report_sync_key(7, uid, 1000 + uid);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    fs.free();
    // Every write works at once: no lock left behind by the failed ones.
    for uid in 5000..5020 {
        let t0 = Instant::now();
        let t = b
            .grant(7, uid, "after")
            .await
            .expect("grant after space is back");
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "a grant waited on a lock"
        );
        tokens.push((uid, t));
    }
    let t0 = Instant::now();
    let dev = b
        .device_id("phone-after-full", 1)
        .await
        .expect("new device");
    assert!(dev > 0 && t0.elapsed() < Duration::from_secs(2));
    b.set_notification_on(7, 1, true).await.unwrap();
    assert!(!b.health().failing, "{:?}", b.health());
    b.flush().await.expect("write-behind flush");
    drop(b);

    // Reopened: every token that was handed out authenticates; the hints were written.
    let b = open(&db).await;
    for (uid, t) in &tokens {
        let info = b.authenticate(t).await.unwrap();
        assert_eq!(info.map(|i| i.uid), Some(*uid), "token of uid {uid} lost");
    }
    for uid in 1..=20 {
        assert_eq!(b.sync_key(7, uid).await.unwrap(), 1000 + uid);
    }
    assert!(b.user_flags(7, 1).await.unwrap().notification_on);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_backend_reports_ok_again_by_itself_once_writes_work() {
    let fs = Tmpfs::mount(4);
    let b = open(&fs.path().join("banter.db")).await;
    b.grant(7, 1, "a").await.unwrap();
    fs.fill();
    let name = "y".repeat(200);
    let mut uid = 100;
    while b.grant(7, uid, &name).await.is_ok() {
        uid += 1;
        assert!(uid < 5000, "the disk never filled");
    }
    assert!(b.health().failing);
    fs.free();
    // No more calls: the background probe notices the database works again.
    let deadline = Instant::now() + Duration::from_secs(15);
    while b.health().failing {
        assert!(Instant::now() < deadline, "{:?}", b.health());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(b.health().last_error.is_some());
}
