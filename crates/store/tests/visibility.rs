//! Readers racing the writer: a queue entry must never be visible to a reader before the log end
//! that readers see (`durable_end`) covers it, and concurrent syncs must see every queue as a
//! gapless, ordered chain.
//!
//! Regression test for a publication-order race in the sync thread: queue heads were published
//! before the log end moved past them, so a sync that picked up a new head in between failed with
//! "reference to position … beyond the log end …" (and the access layer dropped the SYNC).
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::msg;
use store::{Durability, QueueId, Store, StoreError, StoreOptions};

const QUEUES: i64 = 64;
/// Queues per message: a normal-group message goes to every member's queue.
const FAN_OUT: usize = 24;
const APPENDERS: usize = 2;
const MESSAGES_PER_APPENDER: usize = 2500;
/// Appends each appender keeps in flight, so that batches hold many messages.
const IN_FLIGHT: usize = 16;
const READERS: usize = 3;

fn queue(i: i64) -> QueueId {
    QueueId::user(1, i)
}

/// What one reader knows about a queue: the newest key it has seen and how many entries.
#[derive(Default, Clone, Copy)]
struct Seen {
    last_key: i64,
    count: u64,
}

/// Reads `q` from `seen.last_key` as a sync client would, checking that every entry continues the
/// chain the reader has seen so far (no gap, no reordering, no duplicate).
fn sync_step(s: &Store, q: QueueId, seen: &mut Seen) -> Result<(), String> {
    let page = s
        .sync(q, seen.last_key, 50)
        .map_err(|e| format!("sync of {q:?} after {}: {e}", seen.last_key))?;
    for m in &page.messages {
        if m.prev_key != seen.last_key {
            return Err(format!(
                "{q:?}: entry {} links to {} but the reader's previous entry was {} (gap or reorder)",
                m.key, m.prev_key, seen.last_key
            ));
        }
        seen.last_key = m.key;
        seen.count += 1;
    }
    if page.last_key != seen.last_key {
        return Err(format!(
            "{q:?}: page ends at {} but its last entry is {}",
            page.last_key, seen.last_key
        ));
    }
    Ok(())
}

/// Checks what a reader may see of `q` right now against the log end readers see.
fn check_visibility(s: &Store, q: QueueId, seen: &Seen) -> Result<(), String> {
    // The head is read first: whatever it is, the log end read afterwards must cover it.
    let head = s.last_key(q);
    let end = s.log_end();
    if head > 0 && head as u64 >= end {
        return Err(format!(
            "{q:?}: newest visible entry {head} is not below the log end {end}"
        ));
    }
    s.new_count(q, seen.last_key)
        .map_err(|e| format!("new_count of {q:?}: {e}"))?;
    s.latest(q, 3)
        .map_err(|e| format!("latest of {q:?}: {e}"))?;
    s.latest_peer(q, 3)
        .map_err(|e| format!("latest_peer of {q:?}: {e}"))?;
    Ok(())
}

fn run(durability: Durability, cache_bytes: usize) {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        durability,
        cache_bytes,
        // small segments: rolls happen during the run too
        segment_bytes: 4 << 20,
        ..StoreOptions::default()
    };
    let s = Arc::new(Store::open(dir.path(), opts).unwrap());
    let done = Arc::new(AtomicBool::new(false));

    let appenders: Vec<_> = (0..APPENDERS)
        .map(|a| {
            let s = s.clone();
            std::thread::spawn(move || {
                // deterministic pseudo-random member sets
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (a as u64 + 1);
                let mut expected: HashMap<QueueId, u64> = HashMap::new();
                let mut tickets = std::collections::VecDeque::new();
                for i in 0..MESSAGES_PER_APPENDER {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let first = (x % QUEUES as u64) as i64;
                    let queues: Vec<QueueId> = (0..FAN_OUT as i64)
                        .map(|k| queue((first + k * 3) % QUEUES))
                        .collect();
                    for q in &queues {
                        *expected.entry(*q).or_default() += 1;
                    }
                    let mut m = msg(&queues, &format!("appender {a} message {i}"));
                    if i % 3 == 0 {
                        m.cmd = store::CMD_GROUP_IM;
                    }
                    tickets.push_back(s.append(vec![m]));
                    if tickets.len() >= IN_FLIGHT {
                        tickets.pop_front().unwrap().wait().unwrap();
                    }
                }
                for t in tickets {
                    t.wait().unwrap();
                }
                expected
            })
        })
        .collect();

    let readers: Vec<_> = (0..READERS)
        .map(|r| {
            let s = s.clone();
            let done = done.clone();
            std::thread::spawn(move || -> Result<(u64, HashMap<QueueId, Seen>), String> {
                let mut seen: HashMap<QueueId, Seen> = HashMap::new();
                let mut rounds = 0u64;
                let mut i = r as i64;
                while !done.load(Ordering::Acquire) {
                    let q = queue(i % QUEUES);
                    i += 1;
                    let e = seen.entry(q).or_default();
                    check_visibility(&s, q, e)?;
                    sync_step(&s, q, e)?;
                    rounds += 1;
                }
                Ok((rounds, seen))
            })
        })
        .collect();

    let mut expected: HashMap<QueueId, u64> = HashMap::new();
    for a in appenders {
        for (q, n) in a.join().unwrap() {
            *expected.entry(q).or_default() += n;
        }
    }
    done.store(true, Ordering::Release);
    let mut errors = Vec::new();
    let mut finished = Vec::new();
    for r in readers {
        match r.join().unwrap() {
            Ok(v) => finished.push(v),
            Err(e) => errors.push(e),
        }
    }
    assert!(errors.is_empty(), "readers failed: {errors:#?}");
    assert!(
        finished.iter().all(|(rounds, _)| *rounds > 0),
        "a reader never ran"
    );

    // Every reader catches up from where it stopped and has then seen every entry exactly once.
    let deadline = Instant::now() + Duration::from_secs(60);
    for (_, mut seen) in finished {
        for i in 0..QUEUES {
            let q = queue(i);
            let e = seen.entry(q).or_default();
            loop {
                let before = e.last_key;
                sync_step(&s, q, e).unwrap();
                if e.last_key == before {
                    break;
                }
                assert!(Instant::now() < deadline, "catching up takes too long");
            }
            assert_eq!(e.count, expected.get(&q).copied().unwrap_or(0), "{q:?}");
            assert_eq!(e.last_key, s.last_key(q), "{q:?}");
        }
    }
    match Arc::try_unwrap(s) {
        Ok(s) => s.close().unwrap(),
        Err(_) => panic!("store still shared"),
    }
}

#[test]
fn concurrent_syncs_never_see_entries_beyond_the_log_end_durability_none() {
    // No fsync: the sync thread publishes as fast as the writer writes, the most publications
    // (and races) per second.
    run(Durability::None, 64 << 20);
}

#[test]
fn concurrent_syncs_never_see_entries_beyond_the_log_end_durability_always() {
    run(Durability::Always, 64 << 20);
}

#[test]
fn concurrent_syncs_never_see_entries_beyond_the_log_end_without_cache() {
    // Reads go to the segment files (pread) instead of the recent-write cache.
    run(Durability::None, 0);
}

#[test]
fn failed_append_is_never_visible() {
    // An append whose fsync failed was written to the file but is not durable: no reader may
    // ever see it, even though its bytes are in the segment.
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        durability: Durability::Always,
        ..StoreOptions::default()
    };
    let s = Store::open(dir.path(), opts).unwrap();
    let q = queue(1);
    let ok = s.append_blocking(vec![msg(&[q], "ok")]).unwrap()[0][0].key;
    s.inject_fsync_failure();
    let tickets: Vec<_> = (0..20)
        .map(|i| s.append(vec![msg(&[q, queue(2)], &format!("lost {i}"))]))
        .collect();
    for t in tickets {
        assert!(t.wait().is_err());
    }
    assert_eq!(s.last_key(q), ok);
    assert_eq!(s.last_key(queue(2)), 0);
    let p = s.sync(q, 0, 100).unwrap();
    assert_eq!(p.messages.len(), 1);
    assert_eq!(p.queue_last_key, ok);
    assert_eq!(s.new_count(q, 0).unwrap(), 1);
    assert!(s.sync(queue(2), 0, 100).unwrap().messages.is_empty());
    assert!(matches!(s.close(), Err(StoreError::Poisoned(_))));
}
