//! Running out of file descriptors while the store rolls to new segments (the process is held at
//! its open-file limit, as a flood of connections would) must not stop message storage for good:
//! appends are acknowledged or refused promptly, never left hanging, and once descriptors are
//! free again the store resumes by itself, with every acknowledged append present.
//!
//! Its own test binary with a single test: it lowers the process's descriptor limit and exhausts
//! it, which would disturb other tests running in the same process.
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::collections::HashMap;
use std::fs::File;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use store::{Durability, NewMessage, QueueId, Store, StoreOptions, StoreState};

const LIMIT: Duration = Duration::from_secs(20);
const QUEUES: i64 = 5;

fn message(i: u64) -> NewMessage {
    let mut body = format!("m{i}|").into_bytes();
    body.resize(1000, b'a' + (i % 26) as u8);
    NewMessage {
        key: None,
        queues: vec![QueueId::user(1, (i as i64 % QUEUES) + 1)],
        device_id: 1,
        cmd: 4,
        flag: 0,
        timestamp: i as i64,
        body: Bytes::from(body),
    }
}

/// Lowers the soft descriptor limit so that exhausting it is quick.
fn lower_fd_limit(to: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by reference.
    #[allow(unsafe_code)]
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = to.min(lim.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
}

/// Opens `/dev/null` until the process has no descriptor left.
fn exhaust() -> Vec<File> {
    let mut held = Vec::new();
    loop {
        match File::open("/dev/null") {
            Ok(f) => held.push(f),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "{e}");
                return held;
            }
        }
    }
}

fn check(s: &Store, acked: &HashMap<Bytes, i64>, refused: &[Bytes]) {
    let mut seen = HashMap::new();
    for u in 1..=QUEUES {
        for m in read_queue(s, QueueId::user(1, u)) {
            seen.insert(m.body, m.key);
        }
    }
    for (body, key) in acked {
        assert_eq!(
            seen.get(body),
            Some(key),
            "an acknowledged append is missing"
        );
    }
    for body in refused {
        assert!(!seen.contains_key(body), "a refused append became visible");
    }
    assert_eq!(seen.len(), acked.len());
}

#[test]
fn running_out_of_descriptors_at_a_segment_roll_does_not_stop_the_store() {
    lower_fd_limit(256);
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        durability: Durability::Always,
        // about 60 messages per segment: every few appends roll to a new segment
        segment_bytes: 64 << 10,
        preallocate: false,
        ..StoreOptions::default()
    };
    let s = Store::open(dir.path(), opts.clone()).unwrap();
    let mut acked: HashMap<Bytes, i64> = HashMap::new();
    let mut refused: Vec<Bytes> = Vec::new();
    let mut i = 0u64;
    let mut append = |s: &Store, i: u64| {
        let m = message(i);
        let body = m.body.clone();
        match wait_bounded(s.append(vec![m]), LIMIT) {
            Ok(r) => {
                acked.insert(body, r[0][0].key);
                true
            }
            Err(e) => {
                refused.push(body);
                let text = e.to_string();
                assert!(
                    text.contains("Too many open files") || text.contains("recovering"),
                    "{text}"
                );
                false
            }
        }
    };
    for _ in 0..300 {
        assert!(append(&s, i));
        i += 1;
    }

    // From here the process stays at its limit: whatever descriptor is closed is taken again at
    // once (as by a flood of connections).
    let mut held = exhaust();
    // Rolls first use the segment file opened ahead and the descriptor reserve, so at least a
    // whole segment's worth of appends (60 × 1.1 KB > 64 KiB) is still acknowledged. After that
    // the store cannot create segments and refuses appends, each one promptly, while it waits
    // for descriptors.
    let mut acked_at_limit = 0;
    let mut refusals = 0;
    for _ in 0..600 {
        if append(&s, i) {
            if refusals == 0 {
                acked_at_limit += 1;
            }
        } else {
            refusals += 1;
        }
        held.extend(exhaust());
        i += 1;
    }
    assert!(
        acked_at_limit >= 60,
        "a roll at the descriptor limit failed ({acked_at_limit} appends acknowledged)"
    );
    assert!(refusals > 0, "the store never needed a new descriptor");
    let h = s.health();
    assert_eq!(h.state, StoreState::Recovering, "{h:?}");
    assert!(h.reasons.join(" ").contains("Too many open files"), "{h:?}");

    drop(held);
    wait_accepting(&s, LIMIT);
    for _ in 0..300 {
        assert!(append(&s, i), "appends succeed once descriptors are free");
        i += 1;
    }
    let h = s.health();
    assert!(h.accepting && h.recoveries >= 1, "{h:?}");
    check(&s, &acked, &refused);
    s.close().unwrap();
    drop(s);

    let s = Store::open(dir.path(), opts).unwrap();
    check(&s, &acked, &refused);
    s.close().unwrap();
}
