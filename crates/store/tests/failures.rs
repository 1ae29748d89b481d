//! A failed fsync does not stop the store for good: the appends it may have covered are refused
//! (never acknowledged, never visible), the store re-establishes its state from what is on disk
//! and accepts appends again once fsyncs work, without a restart.
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use store::{Durability, NewMessage, QueueId, Store, StoreError, StoreOptions, StoreState};

const LIMIT: Duration = Duration::from_secs(20);

fn message(t: u64, i: u64) -> NewMessage {
    NewMessage {
        key: None,
        queues: vec![
            QueueId::user(1, t as i64),
            QueueId::user(1, 100 + (i % 3) as i64),
        ],
        device_id: 1,
        cmd: 4,
        flag: 0,
        timestamp: i as i64,
        body: Bytes::from(format!("t{t}-{i}|{}", "x".repeat((i % 50) as usize))),
    }
}

fn all_queues() -> Vec<QueueId> {
    (0..4)
        .map(|t| QueueId::user(1, t))
        .chain((100..103).map(|u| QueueId::user(1, u)))
        .collect()
}

/// Every acknowledged append is present with the keys it was given; nothing refused is visible.
fn check(s: &Store, acked: &HashMap<Bytes, Vec<i64>>, refused: &[Bytes]) {
    let mut seen: HashMap<Bytes, Vec<i64>> = HashMap::new();
    for q in all_queues() {
        let msgs = read_queue(s, q);
        for w in msgs.windows(2) {
            assert!(w[0].key < w[1].key && w[1].prev_key == w[0].key);
        }
        assert_eq!(s.new_count(q, 0).unwrap(), msgs.len() as u64);
        for m in msgs {
            seen.entry(m.body).or_default().push(m.key);
        }
    }
    for (body, keys) in acked {
        let mut got = seen.get(body).cloned().unwrap_or_default();
        got.sort();
        let mut want = keys.clone();
        want.sort();
        assert_eq!(got, want, "acknowledged {body:?}");
    }
    for body in refused {
        assert!(!seen.contains_key(body), "refused {body:?} is visible");
    }
    assert_eq!(seen.len(), acked.len());
}

#[test]
fn after_a_failed_fsync_the_store_recovers_from_disk_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        durability: Durability::Always,
        segment_bytes: 16 << 10,
        checkpoint_interval: Duration::from_millis(50),
        checkpoint_bytes: 8 << 10,
        ..StoreOptions::default()
    };
    let s = Store::open(dir.path(), opts.clone()).unwrap();
    let mut acked = HashMap::new();
    let mut refused = Vec::new();
    for i in 0..200 {
        let m = message(i % 4, i);
        let body = m.body.clone();
        let r = s.append_blocking(vec![m]).unwrap();
        acked.insert(body, r[0].iter().map(|a| a.key).collect());
    }
    s.inject_fsync_failure();
    let m = message(0, 1000);
    refused.push(m.body.clone());
    let e = wait_bounded(s.append(vec![m]), LIMIT).unwrap_err();
    assert!(matches!(e, StoreError::Io { .. }), "{e}");
    // While fsyncs keep failing, recovery cannot finish and appends are refused at once.
    std::thread::sleep(Duration::from_millis(200));
    for i in 1001..1010 {
        let m = message(1, i);
        refused.push(m.body.clone());
        let e = wait_bounded(s.append(vec![m]), LIMIT).unwrap_err();
        assert!(matches!(e, StoreError::Poisoned(_)), "{e}");
        assert!(e.to_string().contains("recovering"), "{e}");
    }
    let h = s.health();
    assert_eq!(h.state, StoreState::Recovering, "{h:?}");
    assert!(h.recovery_attempts > 0, "{h:?}");
    check(&s, &acked, &refused);

    s.clear_injected_fsync_failure();
    wait_accepting(&s, LIMIT);
    let h = s.health();
    assert_eq!(h.recoveries, 1, "{h:?}");
    assert!(h.last_failure.is_some(), "{h:?}");
    for i in 2000..2300 {
        let m = message(i % 4, i);
        let body = m.body.clone();
        let r = s.append_blocking(vec![m]).unwrap();
        acked.insert(body, r[0].iter().map(|a| a.key).collect());
    }
    check(&s, &acked, &refused);
    // A checkpoint that failed meanwhile degraded the store until the next one succeeds.
    let deadline = std::time::Instant::now() + LIMIT;
    while s.health().state != StoreState::Ok {
        assert!(std::time::Instant::now() < deadline, "{:?}", s.health());
        std::thread::sleep(Duration::from_millis(10));
    }
    s.close().unwrap();
    drop(s);
    let s = Store::open(dir.path(), opts).unwrap();
    check(&s, &acked, &refused);
}

/// Appenders on several threads while fsyncs fail and recover again and again: every append is
/// acknowledged or refused, and exactly the acknowledged ones survive (also a reopen).
fn failures_under_load(durability: Durability) {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        durability,
        segment_bytes: 32 << 10,
        checkpoint_interval: Duration::from_millis(20),
        checkpoint_bytes: 16 << 10,
        ..StoreOptions::default()
    };
    let s = Arc::new(Store::open(dir.path(), opts.clone()).unwrap());
    let acked = Arc::new(Mutex::new(HashMap::new()));
    let refused = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let (s, acked, refused, stop) =
                (s.clone(), acked.clone(), refused.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let m = message(t, i);
                    let body = m.body.clone();
                    match wait_bounded(s.append(vec![m]), LIMIT) {
                        Ok(r) => {
                            acked
                                .lock()
                                .unwrap()
                                .insert(body, r[0].iter().map(|a| a.key).collect::<Vec<_>>());
                        }
                        Err(_) => refused.lock().unwrap().push(body),
                    }
                    i += 1;
                }
            })
        })
        .collect();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(150));
        s.inject_fsync_failure();
        std::thread::sleep(Duration::from_millis(100));
        s.clear_injected_fsync_failure();
        wait_accepting(&s, LIMIT);
    }
    std::thread::sleep(Duration::from_millis(150));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let refused = refused.lock().unwrap().clone();
    assert!(!refused.is_empty(), "no append was ever refused");
    assert!(s.health().recoveries >= 1);
    check(&s, &acked, &refused);
    s.close().unwrap();
    drop(s);
    let s = Store::open(dir.path(), opts).unwrap();
    check(&s, &acked, &refused);
}

#[test]
fn fsync_failures_under_load_lose_no_acknowledged_append_durability_always() {
    failures_under_load(Durability::Always);
}

#[test]
fn fsync_failures_under_load_lose_no_acknowledged_append_durability_interval() {
    failures_under_load(Durability::Interval(Duration::from_millis(5)));
}
