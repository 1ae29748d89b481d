//! The store on a real filesystem that fills up (a small tmpfs mounted by the test; needs root):
//! appends are refused promptly while there is no space, the store resumes by itself once space
//! is freed, every acknowledged append is kept and no refused one ever becomes visible; and a
//! small volume fills almost completely with messages (preallocation checks free space first and
//! never leaves an unfinished spare behind).
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use store::{Durability, NewMessage, QueueId, Store, StoreError, StoreOptions, StoreState};
use testkit::Tmpfs;

const LIMIT: Duration = Duration::from_secs(20);

fn message(i: u64, len: usize) -> NewMessage {
    let mut body = format!("m{i}|").into_bytes();
    body.resize(len, b'a' + (i % 26) as u8);
    NewMessage {
        key: None,
        queues: vec![QueueId::user(1, (i % 7) as i64 + 1), QueueId::user(1, 100)],
        device_id: 1,
        cmd: 4,
        flag: 0,
        timestamp: i as i64,
        body: Bytes::from(body),
    }
}

/// What was acknowledged and what was refused, by body.
#[derive(Default)]
struct Ledger {
    acked: HashMap<Bytes, Vec<i64>>,
    refused: Vec<Bytes>,
}

impl Ledger {
    /// Appends message `i`; returns whether it was acknowledged.
    fn append(&mut self, s: &Store, i: u64, len: usize) -> Result<(), StoreError> {
        let m = message(i, len);
        let body = m.body.clone();
        match wait_bounded(s.append(vec![m]), LIMIT) {
            Ok(r) => {
                self.acked
                    .insert(body, r[0].iter().map(|a| a.key).collect());
                Ok(())
            }
            Err(e) => {
                self.refused.push(body);
                Err(e)
            }
        }
    }

    /// Every acknowledged append is present at its key, nothing else is.
    fn check(&self, s: &Store) {
        let mut seen: HashMap<Bytes, Vec<i64>> = HashMap::new();
        for q in (1..=7)
            .map(|u| QueueId::user(1, u))
            .chain([QueueId::user(1, 100)])
        {
            let msgs = read_queue(s, q);
            for w in msgs.windows(2) {
                assert!(
                    w[0].key < w[1].key && w[1].prev_key == w[0].key,
                    "queue {q:?} chain broken"
                );
            }
            for m in msgs {
                seen.entry(m.body.clone()).or_default().push(m.key);
            }
        }
        for (body, keys) in &self.acked {
            let mut got = seen.get(body).cloned().unwrap_or_default();
            got.sort();
            let mut want = keys.clone();
            want.sort();
            assert_eq!(
                got,
                want,
                "acknowledged {:?}",
                String::from_utf8_lossy(&body[..8])
            );
        }
        for body in &self.refused {
            assert!(
                !seen.contains_key(body),
                "a refused append became visible: {:?}",
                String::from_utf8_lossy(&body[..8])
            );
        }
        assert_eq!(
            seen.len(),
            self.acked.len(),
            "only acknowledged appends are visible"
        );
    }
}

#[test]
fn a_full_disk_refuses_appends_then_the_store_resumes_by_itself_once_space_is_freed() {
    let fs = Tmpfs::mount(24);
    let dir = fs.path().join("store");
    let opts = StoreOptions {
        durability: Durability::Always,
        segment_bytes: 4 << 20,
        checkpoint_interval: Duration::from_millis(200),
        ..StoreOptions::default()
    };
    let s = Store::open(&dir, opts.clone()).unwrap();
    let mut ledger = Ledger::default();
    let mut i = 0u64;
    for _ in 0..2000 {
        ledger.append(&s, i, 900).unwrap();
        i += 1;
    }
    fs.fill();

    // Appends go on until the space the store already holds is used up; then they are refused,
    // each promptly, the first with the disk's own error.
    let mut first_error = None;
    let mut refused = 0;
    while refused < 50 {
        assert!(i < 200_000, "the store never ran out of space");
        match ledger.append(&s, i, 900) {
            Ok(()) => assert_eq!(refused, 0, "acknowledged while recovering"),
            Err(e) => {
                first_error.get_or_insert_with(|| e.to_string());
                refused += 1;
            }
        }
        i += 1;
    }
    let first_error = first_error.unwrap();
    assert!(first_error.contains("No space left"), "{first_error}");
    let h = s.health();
    assert_eq!(h.state, StoreState::Recovering, "{h:?}");
    assert!(!h.accepting);
    assert!(h.reasons.join(" ").contains("No space left"), "{h:?}");
    assert!(h.since.is_some());
    ledger.check(&s);

    fs.free();
    wait_accepting(&s, LIMIT);
    let h = s.health();
    assert!(h.accepting, "{h:?}");
    assert_eq!(h.recoveries, 1, "{h:?}");
    assert!(h.last_failure.is_some(), "{h:?}");
    for _ in 0..2000 {
        ledger
            .append(&s, i, 900)
            .expect("appends succeed once space is back");
        i += 1;
    }
    ledger.check(&s);
    s.close().unwrap();
    drop(s);

    let s = Store::open(&dir, opts).unwrap();
    ledger.check(&s);
    s.close().unwrap();
}

#[test]
fn a_small_volume_fills_almost_completely_with_messages() {
    // 64 MiB segments on a 96 MiB volume: a preallocated spare does not fit next to a half-full
    // segment, so none is written and the segments grow as they are written.
    let fs = Tmpfs::mount(96);
    let dir = fs.path().join("store");
    let s = Store::open(&dir, StoreOptions::default()).unwrap();
    let mut i = 0u64;
    let mut acked = 0u64;
    loop {
        let batch: Vec<NewMessage> = (0..64).map(|k| message(i + k, 1000)).collect();
        i += 64;
        match wait_bounded(s.append(batch), LIMIT) {
            Ok(_) => acked += 64,
            Err(e) => {
                assert!(e.to_string().contains("No space left"), "{e}");
                break;
            }
        }
        assert!(i < 1_000_000, "the volume never filled");
    }
    let log_bytes = s.log_end();
    let mut other = 0u64;
    for e in std::fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        assert_ne!(
            name, "segment.spare.tmp",
            "an unfinished spare was left behind"
        );
        if !name.ends_with(".seg") {
            other += e.metadata().unwrap().len();
        }
    }
    assert!(
        log_bytes >= 85 << 20,
        "only {} MiB of messages ({acked} acknowledged) fit on a 96 MiB volume",
        log_bytes >> 20
    );
    assert!(
        other < 1 << 20,
        "{other} bytes of files besides the segments"
    );
    drop(s);
}
