//! Replication: a follower catches up while the leader keeps appending, switches to live without
//! a gap or a duplicate, ends with identical positions and answers, survives its own restart,
//! refuses gaps, ignores repeats, and can be promoted.
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{block_on, msg};
use store::{QueueId, Role, Store, StoreError, StoreOptions};

fn leader_opts() -> StoreOptions {
    StoreOptions {
        segment_bytes: 8192,
        cache_bytes: 16 * 1024,
        ..common::small_opts()
    }
}

fn follower_opts() -> StoreOptions {
    StoreOptions {
        role: Role::Follower,
        segment_bytes: 5000, // different segmentation: positions must still match
        ..common::small_opts()
    }
}

fn all(s: &Store, q: QueueId) -> Vec<(i64, i64, bytes::Bytes)> {
    let mut after = 0;
    let mut out = Vec::new();
    loop {
        let p = s.sync(q, after, 3000).unwrap();
        out.extend(
            p.messages
                .iter()
                .map(|m| (m.key, m.prev_key, m.body.clone())),
        );
        after = p.last_key;
        if !p.has_more {
            return out;
        }
    }
}

fn queues() -> Vec<QueueId> {
    (0..5)
        .map(|u| QueueId::user(1, u))
        .chain([QueueId::group(1, 1)])
        .collect()
}

#[test]
fn follower_catches_up_and_follows_live_with_identical_positions() {
    let root = tempfile::tempdir().unwrap();
    let leader = Arc::new(Store::open(root.path().join("leader"), leader_opts()).unwrap());
    for i in 0..200 {
        let q = queues()[i % 6];
        leader
            .append_blocking(vec![msg(&[q, queues()[0]], &format!("pre {i}"))])
            .unwrap();
    }
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let leader = leader.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            for i in 0..600 {
                let q = queues()[i % 6];
                leader
                    .append_blocking(vec![msg(&[q], &format!("live {i}"))])
                    .unwrap();
                if i % 100 == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            done.store(true, Ordering::Release);
        })
    };
    let mut follower = Store::open(root.path().join("follower"), follower_opts()).unwrap();
    let mut stream = leader.subscribe(follower.log_end()).unwrap();
    stream.set_max_bytes(3000);
    let mut expect = follower.log_end();
    let mut restarted = false;
    loop {
        if let Some(b) = stream.next_blocking(Duration::from_millis(20)).unwrap() {
            assert_eq!(b.start, expect, "no gap, no duplicate");
            expect = b.end();
            let end = follower.apply_replicated(b).wait().unwrap();
            assert_eq!(end, expect);
            if !restarted && expect > 20_000 {
                // the follower restarts and resumes from its own end
                restarted = true;
                follower.close().unwrap();
                drop(follower);
                follower = Store::open(root.path().join("follower"), follower_opts()).unwrap();
                assert_eq!(follower.log_end(), expect);
                stream = leader.subscribe(follower.log_end()).unwrap();
            }
        } else if done.load(Ordering::Acquire) && stream.position() == leader.log_end() {
            break;
        }
    }
    writer.join().unwrap();
    assert!(restarted);
    assert_eq!(follower.log_end(), leader.log_end());
    for q in queues() {
        assert_eq!(all(&follower, q), all(&leader, q), "{q:?}");
        assert_eq!(follower.last_key(q), leader.last_key(q));
    }
    // byte-identical record streams
    let mut a = leader.subscribe(0).unwrap();
    let mut b = follower.subscribe(0).unwrap();
    let (mut da, mut db) = (Vec::new(), Vec::new());
    while let Some(x) = a.try_next().unwrap() {
        da.extend_from_slice(&x.data);
    }
    while let Some(x) = b.try_next().unwrap() {
        db.extend_from_slice(&x.data);
    }
    assert_eq!(da, db);

    // promotion: the follower continues the queues
    assert!(matches!(
        follower.append_blocking(vec![msg(&[queues()[0]], "x")]),
        Err(StoreError::NotLeader)
    ));
    let end = follower.promote().wait().unwrap();
    assert_eq!(follower.role(), Role::Leader);
    // positions continue above everything the old leader could have used
    assert!(end >= store::format::jump_target(leader.log_end()));
    let r = follower
        .append_blocking(vec![msg(&[queues()[0]], "after promotion")])
        .unwrap();
    assert_eq!(r[0][0].prev_key, leader.last_key(queues()[0]));
    assert!(r[0][0].key as u64 > end);
}

#[test]
fn repeats_are_ignored_and_gaps_refused() {
    let root = tempfile::tempdir().unwrap();
    let leader = Store::open(root.path().join("l"), leader_opts()).unwrap();
    let follower = Store::open(root.path().join("f"), follower_opts()).unwrap();
    for i in 0..10 {
        leader
            .append_blocking(vec![msg(&[queues()[1]], &format!("{i}"))])
            .unwrap();
    }
    let mut s = leader.subscribe(0).unwrap();
    s.set_max_bytes(200);
    let b1 = s.try_next().unwrap().unwrap();
    let b2 = s.try_next().unwrap().unwrap();
    assert_eq!(b2.start, b1.end());
    assert!(matches!(
        follower.apply_replicated(b2.clone()).wait(),
        Err(StoreError::ReplicationGap { .. })
    ));
    assert_eq!(
        follower.apply_replicated(b1.clone()).wait().unwrap(),
        b1.end()
    );
    assert_eq!(
        follower.apply_replicated(b1.clone()).wait().unwrap(),
        b1.end()
    );
    assert_eq!(
        follower.apply_replicated(b2.clone()).wait().unwrap(),
        b2.end()
    );
    assert!(matches!(
        leader.apply_replicated(b1).wait(),
        Err(StoreError::NotFollower)
    ));
    // a damaged batch is refused and changes nothing
    let b3 = s.try_next().unwrap().unwrap();
    let mut bad = b3.data.to_vec();
    let n = bad.len();
    bad[n - 1] ^= 1;
    let damaged = store::ReplicationBatch {
        start: b3.start,
        data: bad.into(),
    };
    assert!(follower.apply_replicated(damaged).wait().is_err());
    assert_eq!(follower.log_end(), b2.end());
    assert_eq!(
        follower.apply_replicated(b3.clone()).wait().unwrap(),
        b3.end()
    );
}

#[test]
fn async_stream_wakes_on_new_appends_and_ends_on_close() {
    let root = tempfile::tempdir().unwrap();
    let leader = Arc::new(Store::open(root.path().join("l"), leader_opts()).unwrap());
    let mut stream = leader.subscribe(0).unwrap();
    let l2 = leader.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        l2.append_blocking(vec![msg(&[queues()[2]], "wake up")])
            .unwrap();
        std::thread::sleep(Duration::from_millis(30));
        l2.close().unwrap();
    });
    let b = block_on(stream.next()).unwrap();
    assert_eq!(b.start, 0);
    assert_eq!(b.end(), leader.log_end());
    assert!(matches!(block_on(stream.next()), Err(StoreError::Closed)));
    t.join().unwrap();
}

#[test]
fn subscribing_below_the_retained_log_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        retention: store::Retention {
            max_age: None,
            max_total_bytes: Some(10_000),
        },
        ..leader_opts()
    };
    let leader = Store::open(root.path().join("l"), opts).unwrap();
    for i in 0..300 {
        leader
            .append_blocking(vec![msg(&[queues()[3]], &format!("{i:040}"))])
            .unwrap();
    }
    leader.checkpoint().unwrap();
    assert!(leader.apply_retention().unwrap() > 0);
    assert!(matches!(
        leader.subscribe(0),
        Err(StoreError::Truncated { .. })
    ));
    let mut s = leader.subscribe(leader.log_start()).unwrap();
    assert!(s.try_next().unwrap().is_some());
}
