//! Model test: random sequences of appends, syncs, join-time syncs, latest and new-count
//! queries, checkpoints, clean restarts and crash restarts, checked against a plain in-memory
//! model of the queues.
#![allow(clippy::unwrap_used)] // a test fails by panicking

mod common;

use std::collections::HashMap;

use bytes::Bytes;
use proptest::prelude::*;
use store::{Durability, NewMessage, QueueId, Store, StoreOptions, StoredMessage};

const QUEUES: [QueueId; 4] = [
    QueueId::User { appid: 1, uid: 1 },
    QueueId::User { appid: 1, uid: 2 },
    QueueId::User { appid: 2, uid: 1 },
    QueueId::Group { appid: 1, gid: 1 },
];
const SCAN: usize = 6;

#[derive(Debug, Clone)]
enum After {
    Zero,
    /// The key of the n-th entry (mod len) of the queue.
    Entry(usize),
    /// One past it (not a key of the queue).
    PastEntry(usize),
    Ahead,
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<(Vec<usize>, usize, i64)>),
    Sync(usize, After, usize),
    SyncSince(usize, After, usize, i64),
    Latest(usize, usize),
    NewCount(usize, After),
    Checkpoint,
    Restart,
    CrashRestart,
}

fn after_strategy() -> impl Strategy<Value = After> {
    prop_oneof![
        Just(After::Zero),
        (0usize..64).prop_map(After::Entry),
        (0usize..64).prop_map(After::PastEntry),
        Just(After::Ahead),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let message = (
        prop::collection::vec(0usize..4, 1..4),
        0usize..300,
        0i64..20,
    );
    prop_oneof![
        6 => prop::collection::vec(message, 1..4).prop_map(Op::Append),
        3 => (0usize..4, after_strategy(), 1usize..8).prop_map(|(q, a, l)| Op::Sync(q, a, l)),
        1 => (0usize..4, after_strategy(), 1usize..5, 0i64..20)
            .prop_map(|(q, a, l, t)| Op::SyncSince(q, a, l, t)),
        1 => (0usize..4, 0usize..8).prop_map(|(q, n)| Op::Latest(q, n)),
        1 => (0usize..4, after_strategy()).prop_map(|(q, a)| Op::NewCount(q, a)),
        1 => Just(Op::Checkpoint),
        1 => Just(Op::Restart),
        1 => Just(Op::CrashRestart),
    ]
}

#[derive(Clone, Debug, PartialEq)]
struct Entry {
    key: i64,
    prev_key: i64,
    timestamp: i64,
    body: Bytes,
}

#[derive(Default)]
struct Model {
    queues: HashMap<QueueId, Vec<Entry>>,
}

impl Model {
    fn entries(&self, q: QueueId) -> &[Entry] {
        self.queues.get(&q).map_or(&[], |v| v.as_slice())
    }

    fn after_key(&self, q: QueueId, a: &After) -> i64 {
        let e = self.entries(q);
        match a {
            After::Zero => 0,
            After::Entry(n) if !e.is_empty() => e[n % e.len()].key,
            After::PastEntry(n) if !e.is_empty() => e[n % e.len()].key + 1,
            After::Ahead => e.last().map_or(0, |x| x.key) + 1_000_000,
            _ => 0,
        }
    }
}

fn same(got: &[StoredMessage], want: &[Entry]) {
    let got: Vec<_> = got
        .iter()
        .map(|m| Entry {
            key: m.key,
            prev_key: m.prev_key,
            timestamp: m.timestamp,
            body: m.body.clone(),
        })
        .collect();
    assert_eq!(got, want);
}

fn run(ops: Vec<Op>, cache: bool, durability: Durability) {
    let root = tempfile::tempdir().unwrap();
    let mut gen = 0;
    let mut dir = root.path().join("0");
    let opts = StoreOptions {
        durability,
        segment_bytes: 4096,
        cache_bytes: if cache { 1 << 20 } else { 0 },
        max_sync_limit: 5,
        max_latest: 6,
        max_sync_scan: SCAN,
        ..StoreOptions::default()
    };
    let mut store = Some(Store::open(&dir, opts.clone()).unwrap());
    let mut model = Model::default();
    let mut counter = 0u64;
    for op in ops {
        let s = store.as_ref().unwrap();
        match op {
            Op::Append(msgs) => {
                let batch: Vec<NewMessage> = msgs
                    .iter()
                    .map(|(qs, len, ts)| {
                        counter += 1;
                        let body: Vec<u8> =
                            (0..*len).map(|i| (counter as usize + i) as u8).collect();
                        NewMessage {
                            key: None,
                            queues: qs.iter().map(|&i| QUEUES[i]).collect(),
                            device_id: counter as i64,
                            cmd: 4,
                            flag: 0,
                            timestamp: *ts,
                            body: body.into(),
                        }
                    })
                    .collect();
                let res = s.append_blocking(batch.clone()).unwrap();
                assert_eq!(res.len(), batch.len());
                for (m, appended) in batch.iter().zip(res) {
                    assert_eq!(appended.len(), m.queues.len());
                    for (q, a) in m.queues.iter().zip(appended) {
                        let v = model.queues.entry(*q).or_default();
                        let prev = v.last().map_or(0, |e| e.key);
                        assert_eq!(a.prev_key, prev);
                        assert!(a.key > prev);
                        v.push(Entry {
                            key: a.key,
                            prev_key: prev,
                            timestamp: m.timestamp,
                            body: m.body.clone(),
                        });
                    }
                }
            }
            Op::Sync(qi, a, limit) => {
                let q = QUEUES[qi];
                let after = model.after_key(q, &a);
                let p = s.sync(q, after, limit).unwrap();
                let newer: Vec<Entry> = model
                    .entries(q)
                    .iter()
                    .filter(|e| e.key > after)
                    .cloned()
                    .collect();
                let n = limit.min(5).min(newer.len());
                same(&p.messages, &newer[..n]);
                assert_eq!(p.has_more, newer.len() > n);
                assert_eq!(p.last_key, if n > 0 { newer[n - 1].key } else { after });
                assert_eq!(
                    p.queue_last_key,
                    model.entries(q).last().map_or(0, |e| e.key)
                );
            }
            Op::SyncSince(qi, a, limit, join) => {
                let q = QUEUES[qi];
                let after = model.after_key(q, &a);
                let p = s.sync_since(q, after, limit, join).unwrap();
                let newer: Vec<Entry> = model
                    .entries(q)
                    .iter()
                    .filter(|e| e.key > after)
                    .cloned()
                    .collect();
                let window = &newer[..newer.len().min(limit.max(SCAN))];
                let mut keep: Vec<Entry> = window
                    .iter()
                    .filter(|e| e.timestamp >= join)
                    .cloned()
                    .collect();
                let (last, more) = if keep.len() > limit {
                    keep.truncate(limit);
                    (keep[limit - 1].key, true)
                } else {
                    (
                        window.last().map_or(after, |e| e.key),
                        newer.len() > window.len(),
                    )
                };
                same(&p.messages, &keep);
                assert_eq!((p.last_key, p.has_more), (last, more));
            }
            Op::Latest(qi, n) => {
                let q = QUEUES[qi];
                let e = model.entries(q);
                let n = n.min(6).min(e.len());
                same(&s.latest(q, n).unwrap(), &e[e.len() - n..]);
            }
            Op::NewCount(qi, a) => {
                let q = QUEUES[qi];
                let after = model.after_key(q, &a);
                let want = model.entries(q).iter().filter(|e| e.key > after).count() as u64;
                assert_eq!(s.new_count(q, after).unwrap(), want);
            }
            Op::Checkpoint => s.checkpoint().unwrap(),
            Op::Restart => {
                store.take().unwrap().close().unwrap();
                store = Some(Store::open(&dir, opts.clone()).unwrap());
            }
            Op::CrashRestart => {
                gen += 1;
                let copy = root.path().join(gen.to_string());
                common::copy_dir(&dir, &copy);
                drop(store.take());
                dir = copy;
                store = Some(Store::open(&dir, opts.clone()).unwrap());
            }
        }
        for q in QUEUES {
            let s = store.as_ref().unwrap();
            assert_eq!(s.last_key(q), model.entries(q).last().map_or(0, |e| e.key));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model(
        ops in prop::collection::vec(op_strategy(), 1..60),
        cache in any::<bool>(),
        always in any::<bool>(),
    ) {
        run(ops, cache, if always { Durability::Always } else { Durability::None });
    }
}
