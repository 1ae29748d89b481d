//! Exactly-once appends (`docs/storage-format.md` §4.3): a keyed append retried while its key is
//! remembered is answered with the original positions and stores nothing — within one batch,
//! across batches, after a restart (the window is rebuilt from the log), on a promoted follower
//! (rebuilt from the replicated stream) — and a withdrawn append is stored again when retried.
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use common::msg;
use store::{AppendKey, Appended, NewMessage, QueueId, Role, Store, StoreOptions};

fn keyed(queues: &[QueueId], body: &str, key: u64) -> NewMessage {
    NewMessage {
        key: Some(AppendKey::server(42, key)),
        ..msg(queues, body)
    }
}

fn bodies(s: &Store, q: QueueId) -> Vec<String> {
    let page = s.sync(q, 0, 1000).unwrap();
    page.messages
        .iter()
        .map(|m| String::from_utf8(m.body.to_vec()).unwrap())
        .collect()
}

fn append(s: &Store, m: NewMessage) -> Vec<Appended> {
    s.append_blocking(vec![m]).unwrap().remove(0)
}

fn fresh(r: &[Appended]) -> bool {
    r.iter().all(|a| !a.stored_before)
}

fn pair() -> (QueueId, QueueId) {
    (QueueId::user(1, 10), QueueId::user(1, 20))
}

/// A follower store in `dir` with `segment_bytes` segments.
fn open_follower(dir: &std::path::Path, segment_bytes: u64) -> Store {
    let opts = StoreOptions {
        role: Role::Follower,
        segment_bytes,
        ..common::small_opts()
    };
    Store::open(dir, opts).unwrap()
}

/// Applies everything `leader` holds to `follower`, in batches of at most `max_bytes`.
fn replicate_all(leader: &Store, follower: &Store, max_bytes: usize) {
    let mut stream = leader.subscribe(0).unwrap();
    stream.set_max_bytes(max_bytes);
    while let Some(b) = stream.try_next().unwrap() {
        follower.apply_replicated(b).wait().unwrap();
    }
    assert_eq!(follower.log_end(), leader.log_end());
}

#[test]
fn a_retry_is_answered_with_the_original_positions_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), common::small_opts()).unwrap();
    let (r, w) = pair();
    let first = append(&s, keyed(&[r, w], "hello", 1));
    assert!(fresh(&first));
    append(&s, keyed(&[r, w], "other", 2));
    let end = s.log_end();
    let again = append(&s, keyed(&[r, w], "hello", 1));
    assert_eq!(s.log_end(), end, "a retry writes nothing");
    assert!(again.iter().all(|a| a.stored_before));
    let strip = |v: &[Appended]| v.iter().map(|a| (a.key, a.prev_key)).collect::<Vec<_>>();
    assert_eq!(strip(&again), strip(&first));
    assert_eq!(bodies(&s, r), vec!["hello", "other"]);
    assert_eq!(bodies(&s, w), vec!["hello", "other"]);
    assert_eq!(s.stats().repeated, 1);
    // Unkeyed appends are always new.
    append(&s, msg(&[r], "plain"));
    append(&s, msg(&[r], "plain"));
    assert_eq!(bodies(&s, r), vec!["hello", "other", "plain", "plain"]);
}

#[test]
fn a_retry_in_the_same_batch_is_answered_after_the_original_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let (r, w) = pair();
    // Three submissions before any is written: the writer takes them as one batch (or two);
    // either way the copies are answered with the first one's positions.
    let t1 = s.append(vec![keyed(&[r, w], "once", 7)]);
    let t2 = s.append(vec![keyed(&[r, w], "once", 7), keyed(&[r], "two", 8)]);
    let t3 = s.append(vec![keyed(&[r, w], "once", 7)]);
    let a1 = t1.wait().unwrap().remove(0);
    let mut b = t2.wait().unwrap();
    let a3 = t3.wait().unwrap().remove(0);
    let a2 = b.remove(0);
    assert!(fresh(&a1));
    assert!(fresh(&b[0]), "a new key in the same submission is stored");
    for a in [&a2, &a3] {
        assert!(a.iter().all(|e| e.stored_before));
        assert_eq!(a[0].key, a1[0].key);
        assert_eq!(a[1].key, a1[1].key);
    }
    assert_eq!(bodies(&s, r), vec!["once", "two"]);
    assert_eq!(bodies(&s, w), vec!["once"]);
}

#[test]
fn the_same_key_for_other_queues_or_another_command_is_a_new_message() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path(), common::small_opts()).unwrap();
    let (r, w) = pair();
    let other = QueueId::user(1, 30);
    append(&s, keyed(&[r, w], "to r", 3));
    let b = append(&s, keyed(&[other, w], "to other", 3));
    assert!(fresh(&b), "other receivers: not the same message");
    let mut m = keyed(&[other, w], "to other", 3);
    m.cmd = 8;
    assert!(
        fresh(&append(&s, m)),
        "another command: not the same message"
    );
    assert_eq!(bodies(&s, w), vec!["to r", "to other", "to other"]);
}

#[test]
fn client_keys_tell_content_and_devices_apart() {
    let k = |device, msgid, content: &[u8]| AppendKey::client(1, 2, device, 4, msgid, content);
    assert_eq!(k(3, 9, b"hi"), k(3, 9, b"hi"));
    assert_ne!(k(3, 9, b"hi"), k(3, 9, b"ho"));
    assert_ne!(k(3, 9, b"hi"), k(4, 9, b"hi"));
    assert_ne!(k(3, 9, b"hi"), k(3, 10, b"hi"));
    assert_ne!(k(3, 9, b"hi"), AppendKey::client(1, 2, 3, 8, 9, b"hi"));
}

#[test]
fn the_window_survives_a_restart_with_or_without_a_final_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (r, w) = pair();
    let first;
    {
        let s = Store::open(dir.path(), common::small_opts()).unwrap();
        // Many segments (4 KiB each): the window is rebuilt across them.
        for i in 0..100 {
            append(&s, keyed(&[r], &format!("filler {i:03}"), 1000 + i));
        }
        first = append(&s, keyed(&[r, w], "kept", 1));
        s.close().unwrap();
    }
    {
        let s = Store::open(dir.path(), common::small_opts()).unwrap();
        let again = append(&s, keyed(&[r, w], "kept", 1));
        assert!(again.iter().all(|a| a.stored_before));
        assert_eq!(again[0].key, first[0].key);
        assert!(append(&s, keyed(&[r], "filler 000", 1000))[0].stored_before);
        append(&s, keyed(&[w], "after", 2));
        s.close_without_checkpoint().unwrap();
    }
    let s = Store::open(dir.path(), common::small_opts()).unwrap();
    assert!(append(&s, keyed(&[w], "after", 2))[0].stored_before);
    assert!(append(&s, keyed(&[r, w], "kept", 1))[0].stored_before);
    assert_eq!(bodies(&s, w), vec!["kept", "after"]);
    assert_eq!(bodies(&s, r).len(), 101);
}

#[test]
fn the_window_is_bounded_by_keys_and_by_log_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let q = QueueId::user(1, 1);
    let opts = StoreOptions {
        dedupe_keys: 3,
        ..common::small_opts()
    };
    {
        let s = Store::open(dir.path(), opts.clone()).unwrap();
        for i in 0..5 {
            append(&s, keyed(&[q], &format!("m{i}"), i));
        }
        assert!(
            fresh(&append(&s, keyed(&[q], "m0", 0))),
            "forgotten: stored again"
        );
        assert!(append(&s, keyed(&[q], "m4", 4))[0].stored_before);
        s.close().unwrap();
    }
    // Reopened with a window of 300 log bytes: only the newest record's key is within it.
    let opts = StoreOptions {
        dedupe_log_bytes: 300,
        ..common::small_opts()
    };
    let s = Store::open(dir.path(), opts).unwrap();
    assert!(append(&s, keyed(&[q], "m0", 0))[0].stored_before, "newest");
    assert!(fresh(&append(&s, keyed(&[q], "m3", 3))), "beyond 300 bytes");
    let none = StoreOptions {
        dedupe_keys: 0,
        ..common::small_opts()
    };
    drop(s);
    let s = Store::open(dir.path(), none).unwrap();
    assert!(fresh(&append(&s, keyed(&[q], "m3", 3))), "no window at all");
}

#[test]
fn a_withdrawn_append_is_stored_again_when_retried_also_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (r, w) = pair();
    {
        let s = Store::open(dir.path(), common::small_opts()).unwrap();
        s.enable_commit_visibility();
        let a = append(&s, keyed(&[r, w], "confirmed", 1));
        s.raise_visible_limit(s.log_end());
        let from = s.visible_limit();
        append(&s, keyed(&[r, w], "withdrawn", 2));
        s.withdraw_unconfirmed(from).wait().unwrap();
        s.raise_visible_limit(s.log_end());
        let retried = append(&s, keyed(&[r, w], "withdrawn", 2));
        assert!(fresh(&retried), "the retry stores it");
        assert_eq!(retried[0].prev_key, a[0].key);
        assert!(append(&s, keyed(&[r, w], "confirmed", 1))[0].stored_before);
        s.raise_visible_limit(s.log_end());
        assert_eq!(bodies(&s, r), vec!["confirmed", "withdrawn"]);
        s.close_without_checkpoint().unwrap();
    }
    // Replayed: the WITHDRAW record forgets the first copy's key, the second copy's is kept.
    let s = Store::open(dir.path(), common::small_opts()).unwrap();
    assert!(append(&s, keyed(&[r, w], "withdrawn", 2))[0].stored_before);
    assert_eq!(bodies(&s, w), vec!["confirmed", "withdrawn"]);
}

#[test]
fn a_promoted_follower_knows_the_keys_its_leader_stored() {
    let root = tempfile::tempdir().unwrap();
    let leader = Store::open(root.path().join("l"), common::small_opts()).unwrap();
    let follower = open_follower(&root.path().join("f"), 5000);
    let (r, w) = pair();
    let mut originals = Vec::new();
    for i in 0..20 {
        originals.push(append(&leader, keyed(&[r, w], &format!("m{i}"), i)));
    }
    replicate_all(&leader, &follower, 700); // several batches
    follower.promote().wait().unwrap();
    for (i, orig) in originals.iter().enumerate() {
        let again = append(&follower, keyed(&[r, w], &format!("m{i}"), i as u64));
        assert!(again[0].stored_before, "m{i}");
        assert_eq!(again[0].key, orig[0].key);
        assert_eq!(again[1].prev_key, orig[1].prev_key);
    }
    assert_eq!(bodies(&follower, r).len(), 20);
}

/// The kinds of the whole records in a replication batch, in order.
fn record_kinds(data: &[u8]) -> Vec<u8> {
    let mut kinds = Vec::new();
    let mut off = 0;
    while off < data.len() {
        match store::format::check_record(&data[off..]) {
            store::format::RecordCheck::Valid { len, kind } => {
                kinds.push(kind);
                off += len;
            }
            other => panic!("batch holds a broken record at {off}: {other:?}"),
        }
    }
    kinds
}

#[test]
fn no_batch_and_no_segment_separates_a_message_from_its_key() {
    let root = tempfile::tempdir().unwrap();
    // small segments: the leader rolls many times, the follower at other places
    let leader = Store::open(
        root.path().join("l"),
        StoreOptions {
            segment_bytes: 4096,
            ..common::small_opts()
        },
    )
    .unwrap();
    let (r, w) = pair();
    for i in 0..60u64 {
        let body = "x".repeat(1 + (i as usize * 397) % 1500);
        append(&leader, keyed(&[r, w], &body, i));
    }
    for max in [1, 60, 100, 150, 333, 700, 1600, 5000] {
        let follower = open_follower(&root.path().join(format!("f{max}")), 5000);
        let mut stream = leader.subscribe(0).unwrap();
        stream.set_max_bytes(max);
        let mut batches = 0;
        while let Some(b) = stream.try_next().unwrap() {
            let kinds = record_kinds(&b.data);
            assert_eq!(
                kinds.last(),
                Some(&store::format::RECORD_KEY),
                "max {max}: a batch of {kinds:?} ends with a message whose key is not in it"
            );
            follower.apply_replicated(b).wait().unwrap();
            batches += 1;
        }
        assert!(batches > 1 || max >= 5000, "max {max}: {batches} batches");
        assert_eq!(follower.log_end(), leader.log_end());
        // The follower's own segments (it streams once promoted) keep each pair together too.
        let mut from_follower = follower.subscribe(0).unwrap();
        from_follower.set_max_bytes(1);
        while let Some(b) = from_follower.try_next().unwrap() {
            assert_eq!(
                record_kinds(&b.data),
                [store::format::RECORD_MESSAGE, store::format::RECORD_KEY]
            );
        }
    }
}

#[test]
fn a_promoted_follower_still_knows_its_leaders_keys_after_its_own_appends_and_a_restart() {
    // A promotion makes positions jump by a terabyte: the window's byte bound must count the
    // log's bytes, not positions, or the first append after the promotion forgets every key
    // the old leader stored (the clients' resends after a fail-over are exactly those).
    let root = tempfile::tempdir().unwrap();
    let leader = Store::open(root.path().join("l"), common::small_opts()).unwrap();
    let fdir = root.path().join("f");
    let follower = open_follower(&fdir, common::small_opts().segment_bytes);
    let (r, w) = pair();
    let mut originals = Vec::new();
    for i in 0..10 {
        originals.push(append(&leader, keyed(&[r, w], &format!("m{i}"), i)));
    }
    replicate_all(&leader, &follower, 1 << 20);
    follower.promote().wait().unwrap();
    // new messages first, then the resends of the old leader's
    for i in 100..105 {
        assert!(fresh(&append(
            &follower,
            keyed(&[r, w], &format!("n{i}"), i)
        )));
    }
    let check = |s: &Store| {
        for (i, orig) in originals.iter().enumerate() {
            let again = append(s, keyed(&[r, w], &format!("m{i}"), i as u64));
            assert!(again[0].stored_before, "m{i} stored again");
            assert_eq!(again[0].key, orig[0].key);
        }
        assert_eq!(bodies(s, r).len(), 15);
    };
    check(&follower);
    // and after a restart, rebuilt from the log (across its JUMP)
    follower.close().unwrap();
    drop(follower);
    let reopened = Store::open(&fdir, common::small_opts()).unwrap();
    check(&reopened);
}
