//! Scenario tests of the queue API: keys, links, sync paging, join time, latest, new_count,
//! the peer-only chain, reopen, retention, limits and errors.
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use common::{block_on, copy_dir, msg, msg_ts, small_opts};
use store::{
    Durability, NewMessage, QueueId, Retention, Store, StoreError, StoreOptions, CMD_GROUP_IM,
};

const A: QueueId = QueueId::User { appid: 1, uid: 10 };
const B: QueueId = QueueId::User { appid: 1, uid: 20 };
const G: QueueId = QueueId::Group { appid: 1, gid: 5 };

#[test]
fn peer_message_lands_in_both_queues_with_links() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let r = s.append_blocking(vec![msg(&[B, A], "hi")]).unwrap();
    assert_eq!(r.len(), 1);
    let (b1, a1) = (r[0][0], r[0][1]);
    assert_eq!(b1.prev_key, 0);
    assert_eq!(a1.prev_key, 0);
    assert!(a1.key > b1.key && b1.key > 0);
    let r = s.append_blocking(vec![msg(&[B, A], "again")]).unwrap();
    assert_eq!(r[0][0].prev_key, b1.key);
    assert_eq!(r[0][1].prev_key, a1.key);
    assert_eq!(s.last_key(B), r[0][0].key);

    let page = s.sync(B, 0, 100).unwrap();
    assert_eq!(page.messages.len(), 2);
    assert_eq!(page.messages[0].body.as_ref(), b"hi");
    assert_eq!(page.messages[0].device_id, 7);
    assert_eq!(page.messages[1].prev_key, b1.key);
    assert_eq!(page.last_key, r[0][0].key);
    assert!(!page.has_more);
    assert_eq!(page.queue_last_key, r[0][0].key);
}

#[test]
fn same_queue_twice_gets_distinct_increasing_keys() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let r = s.append_blocking(vec![msg(&[A, A], "to myself")]).unwrap();
    assert!(r[0][1].key > r[0][0].key);
    assert_eq!(r[0][1].prev_key, r[0][0].key);
    let page = s.sync(A, 0, 10).unwrap();
    assert_eq!(page.messages.len(), 2);
    assert_eq!(page.messages[0].body, page.messages[1].body);
}

#[test]
fn sync_pages_through_everything_without_skipping() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), small_opts()).unwrap();
    let mut keys = Vec::new();
    for i in 0..700 {
        let qs: &[QueueId] = if i % 3 == 0 { &[A, B] } else { &[A] };
        keys.push(s.append_blocking(vec![msg(qs, &format!("m{i}"))]).unwrap()[0][0].key);
    }
    for limit in [1usize, 7, 100, 5000] {
        let mut after = 0;
        let mut got = Vec::new();
        loop {
            let p = s.sync(A, after, limit).unwrap();
            assert!(p.messages.len() <= limit.min(3000));
            got.extend(p.messages.iter().map(|m| m.key));
            after = p.last_key;
            if !p.has_more {
                break;
            }
        }
        assert_eq!(got, keys, "limit {limit}");
    }
    // from the middle, and from a key that is not in the queue
    let p = s.sync(A, keys[349], 10).unwrap();
    assert_eq!(p.messages[0].key, keys[350]);
    let p = s.sync(A, keys[349] + 1, 10).unwrap();
    assert_eq!(p.messages[0].key, keys[350]);
    // ahead of the queue
    let p = s.sync(A, keys[699] + 1000, 10).unwrap();
    assert!(p.messages.is_empty());
    assert_eq!(p.last_key, keys[699] + 1000);
    assert_eq!(p.queue_last_key, keys[699]);
    // unknown queue
    let p = s.sync(QueueId::user(9, 9), 0, 10).unwrap();
    assert_eq!((p.messages.len(), p.last_key, p.queue_last_key), (0, 0, 0));
}

#[test]
fn latest_and_new_count_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        max_latest: 5,
        ..small_opts()
    };
    let s = Store::open(dir.path(), opts).unwrap();
    let mut keys = Vec::new();
    for i in 0..50 {
        keys.push(s.append_blocking(vec![msg(&[A], &format!("{i}"))]).unwrap()[0][0].key);
    }
    let l = s.latest(A, 100).unwrap();
    assert_eq!(l.iter().map(|m| m.key).collect::<Vec<_>>(), keys[45..]);
    assert_eq!(s.latest(A, 2).unwrap().len(), 2);
    assert!(s.latest(A, 0).unwrap().is_empty());
    assert_eq!(s.new_count(A, 0).unwrap(), 50);
    assert_eq!(s.new_count(A, keys[9]).unwrap(), 40);
    assert_eq!(s.new_count(A, keys[9] + 1).unwrap(), 40);
    assert_eq!(s.new_count(A, keys[49]).unwrap(), 0);
    assert_eq!(s.new_count(B, 0).unwrap(), 0);
}

#[test]
fn sync_since_never_returns_entries_before_join_time() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        max_sync_scan: 8,
        ..small_opts()
    };
    let s = Store::open(dir.path(), opts).unwrap();
    let mut keys = Vec::new();
    for i in 0..40i64 {
        let mut m = msg_ts(&[G], &format!("g{i}"), 100 + i);
        m.cmd = CMD_GROUP_IM;
        keys.push(s.append_blocking(vec![m]).unwrap()[0][0].key);
    }
    let mut after = 0;
    let mut got = Vec::new();
    for _ in 0..100 {
        let p = s.sync_since(G, after, 3, 125).unwrap();
        assert!(p.messages.len() <= 3);
        assert!(p.messages.iter().all(|m| m.timestamp >= 125));
        got.extend(p.messages.iter().map(|m| m.key));
        assert!(p.last_key > after || !p.has_more);
        after = p.last_key;
        if !p.has_more {
            break;
        }
    }
    assert_eq!(got, keys[25..]);
}

#[test]
fn peer_only_chain_skips_group_content() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), small_opts()).unwrap();
    let mut peer = Vec::new();
    for i in 0..20 {
        let mut m = msg(&[A], &format!("{i}"));
        if i % 2 == 1 {
            m.cmd = CMD_GROUP_IM;
        } else if i % 5 == 0 {
            m.flag = store::FLAG_GROUP;
        }
        let k = s.append_blocking(vec![m.clone()]).unwrap()[0][0].key;
        if !m.is_group_content() {
            peer.push(k);
        }
    }
    let l = s.latest_peer(A, 100).unwrap();
    assert_eq!(l.iter().map(|m| m.key).collect::<Vec<_>>(), peer);
}

#[test]
fn reopen_clean_and_after_crash_gives_same_answers() {
    let dir = tempfile::tempdir().unwrap();
    let crash = tempfile::tempdir().unwrap();
    let (before, keys) = {
        let s = Store::open(dir.path(), small_opts()).unwrap();
        let mut keys = Vec::new();
        for i in 0..300 {
            keys.push(
                s.append_blocking(vec![msg(&[A, B], &format!("{i}"))])
                    .unwrap()[0][0]
                    .key,
            );
            if i == 100 {
                s.checkpoint().unwrap();
            }
        }
        copy_dir(dir.path(), crash.path());
        (s.sync(A, 0, 3000).unwrap(), keys)
    };
    for d in [dir.path(), crash.path()] {
        let s = Store::open(d, small_opts()).unwrap();
        assert_eq!(s.sync(A, 0, 3000).unwrap(), before);
        assert_eq!(s.last_key(A), *keys.last().unwrap());
        // appends continue the queues
        let r = s.append_blocking(vec![msg(&[A], "after")]).unwrap();
        assert_eq!(r[0][0].prev_key, *keys.last().unwrap());
        assert_eq!(s.new_count(A, 0).unwrap(), 301);
    }
}

#[test]
fn retention_drops_old_segments_and_sync_continues_from_what_remains() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        retention: Retention {
            max_age: None,
            max_total_bytes: Some(20_000),
        },
        checkpoint_interval: std::time::Duration::from_secs(3600),
        ..small_opts()
    };
    let s = Store::open(dir.path(), opts.clone()).unwrap();
    let mut keys = Vec::new();
    for i in 0..400 {
        keys.push(
            s.append_blocking(vec![msg(&[A], &format!("message {i}"))])
                .unwrap()[0][0]
                .key,
        );
    }
    s.checkpoint().unwrap();
    let dropped = s.apply_retention().unwrap();
    assert!(dropped > 0);
    let start = s.log_start() as i64;
    let kept: Vec<i64> = keys.iter().copied().filter(|&k| k >= start).collect();
    assert!(!kept.is_empty() && kept.len() < keys.len());
    let mut after = 0;
    let mut got = Vec::new();
    loop {
        let p = s.sync(A, after, 50).unwrap();
        got.extend(p.messages.iter().map(|m| m.key));
        after = p.last_key;
        if !p.has_more {
            break;
        }
    }
    assert_eq!(got, kept);
    assert_eq!(s.new_count(A, 0).unwrap(), kept.len() as u64);
    assert_eq!(s.latest(A, 1000).unwrap().len(), kept.len().min(1000));
    drop(s);
    let s = Store::open(dir.path(), opts).unwrap();
    assert_eq!(s.log_start() as i64, start);
    assert_eq!(s.sync(A, 0, 3000).unwrap().messages.len(), kept.len());
    let r = s.append_blocking(vec![msg(&[A], "new")]).unwrap();
    assert_eq!(r[0][0].prev_key, *keys.last().unwrap());
}

#[test]
fn invalid_appends_are_rejected_and_store_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        max_body_bytes: 10,
        max_queues_per_message: 3,
        ..StoreOptions::default()
    };
    let s = Store::open(dir.path(), opts).unwrap();
    assert!(matches!(
        s.append_blocking(vec![msg(&[], "x")]),
        Err(StoreError::InvalidArgument(_))
    ));
    assert!(matches!(
        s.append_blocking(vec![msg(&[A], "this body is too long")]),
        Err(StoreError::InvalidArgument(_))
    ));
    assert!(matches!(
        s.append_blocking(vec![msg(&[A, A, A, A], "x")]),
        Err(StoreError::InvalidArgument(_))
    ));
    assert!(s.append_blocking(vec![]).unwrap().is_empty());
    assert!(matches!(
        Store::open(dir.path(), StoreOptions::default()),
        Err(StoreError::Locked(..))
    ));
    s.close().unwrap();
    assert!(matches!(
        s.append_blocking(vec![msg(&[A], "x")]),
        Err(StoreError::Closed)
    ));
}

#[test]
fn failed_fsync_poisons_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        durability: Durability::Always,
        ..StoreOptions::default()
    };
    let s = Store::open(dir.path(), opts).unwrap();
    let k = s.append_blocking(vec![msg(&[A], "ok")]).unwrap()[0][0].key;
    s.inject_fsync_failure();
    let e = s.append_blocking(vec![msg(&[A], "lost")]).unwrap_err();
    assert!(matches!(e, StoreError::Io { .. }), "{e}");
    assert!(s.is_poisoned());
    assert!(matches!(
        s.append_blocking(vec![msg(&[A], "x")]),
        Err(StoreError::Poisoned(_))
    ));
    // the unacknowledged append is invisible; reads keep working
    assert_eq!(s.last_key(A), k);
    assert_eq!(s.sync(A, 0, 10).unwrap().messages.len(), 1);
    assert!(s.close().is_err());
}

#[test]
fn append_ticket_is_awaitable_and_many_threads_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let s = std::sync::Arc::new(Store::open(dir.path(), StoreOptions::default()).unwrap());
    let r = block_on(s.append(vec![msg(&[A], "async")])).unwrap();
    assert_eq!(r[0][0].prev_key, 0);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    let q = QueueId::user(2, t);
                    s.append_blocking(vec![msg(&[q, A], &format!("{t}-{i}"))])
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let p = s.sync(A, 0, 3000).unwrap();
    assert_eq!(p.messages.len(), 201);
    assert!(p.messages.windows(2).all(|w| w[0].key < w[1].key));
    let st = s.stats();
    assert_eq!(st.messages, 201);
    assert!(st.batches <= 201);
}

#[test]
fn big_fan_out_message_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let members: Vec<QueueId> = (0..10_000).map(|u| QueueId::user(3, u)).collect();
    let body = vec![b'x'; 1000];
    let r = s
        .append_blocking(vec![NewMessage {
            key: None,
            queues: members.clone(),
            device_id: 1,
            cmd: CMD_GROUP_IM,
            flag: 0,
            timestamp: 5,
            body: body.clone().into(),
        }])
        .unwrap();
    assert_eq!(r[0].len(), 10_000);
    assert!(r[0].windows(2).all(|w| w[0].key < w[1].key));
    let end = s.log_end();
    assert_eq!(
        end as usize,
        store::format::message_record_len(1000, 10_000)
    );
    let p = s.sync(members[9_999], 0, 10).unwrap();
    assert_eq!(p.messages[0].body.as_ref(), &body[..]);
}

#[test]
fn interval_durability_acknowledges_and_persists() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        durability: Durability::Interval(std::time::Duration::from_millis(5)),
        ..StoreOptions::default()
    };
    let s = Store::open(dir.path(), opts.clone()).unwrap();
    for i in 0..50 {
        s.append_blocking(vec![msg(&[A], &format!("{i}"))]).unwrap();
    }
    drop(s);
    let s = Store::open(dir.path(), opts).unwrap();
    assert_eq!(s.new_count(A, 0).unwrap(), 50);
}
